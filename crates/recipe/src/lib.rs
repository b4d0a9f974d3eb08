//! The recipe model: a service folder (`kiln.toml`, `etc/rc`, `files/`, `postinst/*.sh`,
//! `common/`) read, validated and turned into typed values.
//!
//! Every other crate starts from a [`Recipe`]. Errors name the file, the line and the key, and
//! say what to do; the CLI maps them to exit code 2.

mod config;
mod port;

pub use config::{
    split_file_spec, Compression, Config, Guest, ImageFormat, KernelChoice, Network, Ready, Root,
};
pub use port::{PortForward, Protocol};

use std::path::{Path, PathBuf};

/// Why a recipe could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The folder has no kiln.toml.
    #[error("{}: missing: a recipe folder needs a kiln.toml (see docs/recipe.md)", .0.display())]
    MissingConfig(PathBuf),
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
    /// The recipe folder could not be read.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
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
                    source: e,
                }
            }
        })?;
        if !meta.is_dir() {
            return Err(RecipeError::NotAFolder(dir.to_path_buf()));
        }
        let dir = std::fs::canonicalize(dir).map_err(|e| RecipeError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let toml_path = dir.join("kiln.toml");
        let text = match std::fs::read_to_string(&toml_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RecipeError::MissingConfig(dir))
            }
            Err(e) => {
                return Err(RecipeError::Io {
                    path: toml_path,
                    source: e,
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
                    source: e,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(|e| RecipeError::Io {
                path: dir.clone(),
                source: e,
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
        let rc = self.rc_path();
        if !rc.is_file() {
            return Err(RecipeError::MissingFile {
                path: rc,
                what: "every recipe needs an entry script etc/rc, run by kiln-init after basic \
                       setup (for example `exec httpd -f -p 80 -h /var/www`)"
                    .into(),
            });
        }
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
        for dir in [self.files_dir(), self.common_dir()] {
            if dir.exists() && !dir.is_dir() {
                return Err(RecipeError::MissingFile {
                    path: dir,
                    what: "expected a folder".into(),
                });
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

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, column)
}

#[cfg(test)]
mod tests;
