//! The recipe model: a service folder (`kiln.toml`, `etc/rc`, `files/`, `postinst/*.sh`,
//! `common/`) read, validated and turned into typed values.
//!
//! Every other crate starts from a [`Recipe`]. Errors name the file, the line and the key, and
//! say what to do; the CLI maps them to exit code 2.

mod config;
mod port;
pub mod smolbsd;

pub use config::{
    check_name, hidden_by_mount, hidden_message, split_file_spec, toml_string, Compression, Config,
    Guest, ImageFormat, KernelChoice, Network, Ready, Root, DEFAULT_HOOK_TIMEOUT, ENV_TOTAL_MAX,
    ENV_VALUE_MAX, FORMATS, GUEST_MOUNTS, KERNEL_CMDLINE_MAX, KILN_CMDLINE_RESERVE,
    MAX_HOOK_TIMEOUT,
};
pub use port::{PortForward, Protocol};

use std::path::{Path, PathBuf};

/// Why a recipe could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The folder has no kiln.toml.
    #[error("{}: missing: a recipe folder needs a kiln.toml (see docs/recipe.md)", .0.display())]
    MissingConfig(PathBuf),
    /// The folder has no kiln.toml but is a smolBSD service (etc/rc with options.mk, postinst/
    /// or the tree's common/).
    #[error("{}: a smolBSD service folder, not a Kiln recipe (no kiln.toml): convert it with `kiln import smolbsd {} -o RECIPE` (add `--guest linux` to run it on Linux here; docs/bsd.md)", .0.display(), .0.display())]
    SmolbsdService(PathBuf),
    /// The recipe path is not a folder.
    #[error("{}: not a recipe folder (expected a folder holding kiln.toml)", .0.display())]
    NotAFolder(PathBuf),
    /// kiln.toml is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        /// The kiln.toml path.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, from the parser or our own validation.
        message: String,
    },
    /// A file the recipe needs is missing.
    #[error("{}: missing: {what}", .path.display())]
    MissingFile {
        /// The missing path.
        path: PathBuf,
        /// What it is for and what to do.
        what: String,
    },
    /// A file of the recipe folder is not usable as it is.
    #[error("{}: {message}", .path.display())]
    Refused {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// The recipe folder could not be read.
    // The OS error is part of the message, not a `source`: printed with its causes, the error
    // would otherwise say it twice.
    #[error("{}: {error}", .path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
}

/// A recipe folder, parsed and checked.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The recipe folder (absolute).
    pub dir: PathBuf,
    /// The parsed kiln.toml.
    pub config: Config,
    /// The raw text of kiln.toml (kept to turn spans into line numbers).
    source_text: String,
}

impl Recipe {
    /// Read and validate the recipe folder `dir`.
    pub fn load(dir: &Path) -> Result<Recipe, RecipeError> {
        let meta = std::fs::metadata(dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                RecipeError::MissingFile {
                    path: dir.to_path_buf(),
                    what: "no such recipe folder".into(),
                }
            } else {
                RecipeError::Io {
                    path: dir.to_path_buf(),
                    error: e,
                }
            }
        })?;
        if !meta.is_dir() {
            return Err(RecipeError::NotAFolder(dir.to_path_buf()));
        }
        let dir = std::fs::canonicalize(dir).map_err(|e| RecipeError::Io {
            path: dir.to_path_buf(),
            error: e,
        })?;
        let toml_path = dir.join("kiln.toml");
        let text = match std::fs::read_to_string(&toml_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let smolbsd = dir.join("etc/rc").is_file()
                    && ["options.mk", "postinst", "../common"]
                        .iter()
                        .any(|p| dir.join(p).exists());
                return Err(if smolbsd {
                    RecipeError::SmolbsdService(dir)
                } else {
                    RecipeError::MissingConfig(dir)
                });
            }
            Err(e) => {
                return Err(RecipeError::Io {
                    path: toml_path,
                    error: e,
                })
            }
        };
        let config = Config::parse(&text).map_err(|(span, message)| {
            let (line, column) = span.map(|s| line_col(&text, s.start)).unwrap_or((1, 1));
            RecipeError::Parse {
                file: toml_path.clone(),
                line,
                column,
                message,
            }
        })?;
        let recipe = Recipe {
            dir,
            config,
            source_text: text,
        };
        recipe.check_files()?;
        Ok(recipe)
    }

    /// The path of kiln.toml.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("kiln.toml")
    }

    /// The 1-based line of kiln.toml at byte offset `offset`.
    pub fn line_of(&self, offset: usize) -> usize {
        line_col(&self.source_text, offset).0
    }

    /// `kiln.toml:LINE` for a spanned value, for error messages of later stages.
    pub fn locate(&self, span: std::ops::Range<usize>) -> String {
        format!(
            "{}:{}",
            self.config_path().display(),
            self.line_of(span.start)
        )
    }

    /// `kiln.toml:LINE` of the first line setting `key` (line 1 when it is not set).
    pub fn locate_key(&self, key: &str) -> String {
        self.locate(config::find_key(&self.source_text, key).unwrap_or(0..0))
    }

    /// The entry script, `etc/rc`.
    pub fn rc_path(&self) -> PathBuf {
        self.dir.join("etc/rc")
    }

    /// The overlay tree, `files/` (may not exist).
    pub fn files_dir(&self) -> PathBuf {
        self.dir.join("files")
    }

    /// Scripts installed under /etc/include, `common/` (may not exist).
    pub fn common_dir(&self) -> PathBuf {
        self.dir.join("common")
    }

    /// The index file named by `index`, if any.
    pub fn index_path(&self) -> Option<PathBuf> {
        self.config
            .index
            .as_ref()
            .map(|i| self.resolve(i.get_ref()))
    }

    /// Build-time hooks, `postinst/*.sh`, sorted by name.
    pub fn hooks(&self) -> Result<Vec<PathBuf>, RecipeError> {
        let dir = self.dir.join("postinst");
        let mut hooks = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(hooks),
            Err(e) => {
                return Err(RecipeError::Io {
                    path: dir,
                    error: e,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(|e| RecipeError::Io {
                path: dir.clone(),
                error: e,
            })?;
            let p = entry.path();
            if p.extension().is_some_and(|x| x == "sh") && p.is_file() {
                hooks.push(p);
            }
        }
        hooks.sort();
        Ok(hooks)
    }

    fn check_files(&self) -> Result<(), RecipeError> {
        self.check_rc()?;
        if let KernelChoice::File(p) = &self.config.kernel {
            let path = self.resolve(p.get_ref());
            if !path.is_file() {
                let what = if self.config.guest.is_bsd() {
                    format!(
                        "the {} kernel named by `kernel` at {}; put the kernel file there (Kiln \
                         cannot download BSD kernels; docs/bsd.md says where to get one)",
                        self.config.guest.name(),
                        self.locate(p.span())
                    )
                } else {
                    format!(
                        "kernel file named by `kernel` at {}; give an existing bzImage/vmlinux, \
                         \"tiny\" or \"debian\"",
                        self.locate(p.span())
                    )
                };
                return Err(RecipeError::MissingFile { path, what });
            }
        }
        for set in &self.config.sets {
            let path = self.resolve(set.get_ref());
            if !path.is_file() {
                return Err(RecipeError::MissingFile {
                    path,
                    what: format!(
                        "the set named in `sets` at {}; put the {} set there (a .tgz/.txz/.tar \
                         from the release's sets or dist folder)",
                        self.locate(set.span()),
                        self.config.guest.name()
                    ),
                });
            }
        }
        if let Some(i) = &self.config.index {
            let path = self.resolve(i.get_ref());
            if !path.is_file() {
                return Err(RecipeError::MissingFile {
                    path,
                    what: format!(
                        "the index named by `index` at {}; create it (one file or glob per line), \
                         generate it with `kiln trace`, or remove the key to keep every file of the packages",
                        self.locate(i.span())
                    ),
                });
            }
        }
        for f in &self.config.kernel_fragments {
            let path = self.resolve(f.get_ref());
            if !path.is_file() {
                return Err(RecipeError::MissingFile {
                    path,
                    what: format!(
                        "the kernel config fragment named in `kernel_fragments` at {}; create it \
                         (lines like CONFIG_UFS_FS=y) or remove it from the list",
                        self.locate(f.span())
                    ),
                });
            }
        }
        for dir in [self.files_dir(), self.common_dir()] {
            let Some(meta) = self.in_recipe(&dir)? else {
                continue;
            };
            if !meta.is_dir() {
                return Err(RecipeError::Refused {
                    path: dir,
                    message: "not a folder; expected a folder (or leave it out)".into(),
                });
            }
            self.check_tree(&dir, dir == self.files_dir())?;
        }
        Ok(())
    }

    /// `etc/rc`: a file of the recipe (a symlink only within the recipe folder).
    fn check_rc(&self) -> Result<(), RecipeError> {
        let rc = self.rc_path();
        let missing = || RecipeError::MissingFile {
            path: rc.clone(),
            what: "every recipe needs an entry script etc/rc, run by kiln-init after basic \
                   setup (for example `exec httpd -f -p 80 -h /var/www`)"
                .into(),
        };
        let Some(meta) = self.in_recipe(&rc)? else {
            return Err(missing());
        };
        if meta.is_dir() {
            return Err(RecipeError::Refused {
                path: rc,
                message: "is a folder; etc/rc must be the entry script (a file), for example \
                          `exec httpd -f -p 80 -h /var/www`"
                    .into(),
            });
        }
        if !meta.is_file() {
            return Err(RecipeError::Refused {
                path: rc,
                message: format!(
                    "is a {}, not a file; etc/rc must be the entry script (a file)",
                    special_kind(&meta)
                ),
            });
        }
        Ok(())
    }

    /// The metadata of `path` (followed), `None` when nothing is there; refused when it (or a
    /// folder on the way) is a symlink leading out of the recipe folder, nowhere, or in a loop.
    /// Kiln takes the recipe's own files only: a link out would put a host file's bytes in the
    /// image (and out of the fingerprint). Symlinks *inside* files/ and common/ are copied as
    /// links, never followed.
    fn in_recipe(&self, path: &Path) -> Result<Option<std::fs::Metadata>, RecipeError> {
        let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        match std::fs::canonicalize(path) {
            Ok(real) if !real.starts_with(&self.dir) => Err(RecipeError::Refused {
                path: path.to_path_buf(),
                message: format!(
                    "leads out of the recipe folder (to {}); Kiln takes a recipe's files from its \
                     folder only (symlinks inside files/ are copied as links, never followed): \
                     copy it into the recipe",
                    real.display()
                ),
            }),
            Ok(real) => std::fs::metadata(&real)
                .map(Some)
                .map_err(|e| RecipeError::Io {
                    path: path.to_path_buf(),
                    error: e,
                }),
            Err(e) if e.raw_os_error() == Some(ELOOP) => Err(RecipeError::Refused {
                path: path.to_path_buf(),
                message: "is a symlink loop (too many levels of symbolic links); fix or remove it"
                    .into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && link => {
                let target = std::fs::read_link(path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                Err(RecipeError::Refused {
                    path: path.to_path_buf(),
                    message: format!(
                        "is a symlink to {target}, which does not exist; fix or remove it"
                    ),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(RecipeError::Refused {
                path: path.to_path_buf(),
                message: "a folder on its way is a file; fix the recipe's layout".into(),
            }),
            Err(e) => Err(RecipeError::Io {
                path: path.to_path_buf(),
                error: e,
            }),
        }
    }

    /// Every entry of `files/` or `common/` (symlinks not followed): no FIFO, socket or device
    /// node; and for `files/` of a Linux guest, nothing where kiln-init mounts a fresh
    /// filesystem at boot.
    fn check_tree(&self, dir: &Path, overlay: bool) -> Result<(), RecipeError> {
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            let entries = std::fs::read_dir(&d).map_err(|e| RecipeError::Io {
                path: d.clone(),
                error: e,
            })?;
            let mut entries: Vec<_> =
                entries
                    .collect::<Result<_, _>>()
                    .map_err(|e| RecipeError::Io {
                        path: d.clone(),
                        error: e,
                    })?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let path = entry.path();
                let meta = std::fs::symlink_metadata(&path).map_err(|e| RecipeError::Io {
                    path: path.clone(),
                    error: e,
                })?;
                let ft = meta.file_type();
                if !(ft.is_file() || ft.is_dir() || ft.is_symlink()) {
                    return Err(RecipeError::Refused {
                        path,
                        message: format!(
                            "is a {}; a recipe's files must be regular files, folders or \
                             symlinks: remove it (make device nodes and FIFOs at boot, in etc/rc)",
                            special_kind(&meta)
                        ),
                    });
                }
                if overlay && !self.config.guest.is_bsd() {
                    let rel = path.strip_prefix(dir).unwrap_or(&path);
                    let guest = Path::new("/").join(rel).display().to_string();
                    if let Some(m) = hidden_by_mount(&guest) {
                        return Err(RecipeError::Refused {
                            path,
                            message: hidden_message(&guest, m),
                        });
                    }
                }
                if ft.is_dir() {
                    todo.push(path);
                }
            }
        }
        Ok(())
    }

    /// A path from kiln.toml resolved against the recipe folder (absolute paths stay).
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

/// ELOOP on Linux: "too many levels of symbolic links".
const ELOOP: i32 = 40;

/// What a file that is neither a regular file, a folder nor a symlink is.
fn special_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_fifo() {
        "FIFO (named pipe)"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device node"
    } else if ft.is_char_device() {
        "character device node"
    } else if ft.is_dir() {
        "folder"
    } else {
        "special file"
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, column)
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests;
