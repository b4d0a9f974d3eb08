//! Kernel sources: identity for the cache key, and unpacking a tarball once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{io_err, TinyError, TinyProgress, TinySource};

/// Marker written last into an unpacked tree; holds the source identity.
pub(crate) const UNPACKED_MARKER: &str = ".kiln-unpacked";

/// Temp folders older than this are leftovers of killed builds.
const STALE_AFTER: Duration = Duration::from_secs(12 * 3600);

pub(crate) enum Origin {
    Tarball { path: PathBuf, label: String },
    Tree(PathBuf),
}

pub(crate) struct Source {
    /// What the cache key is computed from.
    pub identity: String,
    origin: Origin,
}

fn mtime_ns(m: &std::fs::Metadata) -> u128 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

/// `dpkg-query`'s version of an installed package, if any.
fn debian_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output()
        .ok()?;
    let v = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !v.is_empty()).then_some(v)
}

/// `VERSION.PATCHLEVEL.SUBLEVEL` from a source tree's top Makefile.
pub(crate) fn makefile_version(tree: &Path) -> Option<String> {
    let text = std::fs::read_to_string(tree.join("Makefile")).ok()?;
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    Some(format!(
        "{}.{}.{}{}",
        get("VERSION")?,
        get("PATCHLEVEL")?,
        get("SUBLEVEL")?,
        get("EXTRAVERSION").unwrap_or_default()
    ))
}

fn tarball_identity(path: &Path) -> Result<String, TinyError> {
    let meta = std::fs::metadata(path).map_err(io_err("read", path))?;
    Ok(format!(
        "tarball {} size={} mtime={}",
        path.display(),
        meta.len(),
        mtime_ns(&meta)
    ))
}

fn tree_identity(tree: &Path) -> Result<String, TinyError> {
    let not_tree = |reason: &str| TinyError::NotASourceTree {
        path: tree.to_path_buf(),
        reason: reason.to_string(),
    };
    let version = makefile_version(tree)
        .ok_or_else(|| not_tree("no top-level Makefile with VERSION/PATCHLEVEL/SUBLEVEL"))?;
    if !tree.join("Kconfig").is_file() || !tree.join("arch/x86").is_dir() {
        return Err(not_tree("no Kconfig or arch/x86"));
    }
    if tree.join(".config").exists() || tree.join("include/config").exists() {
        return Err(not_tree(
            "it has been configured or built in place, so out-of-tree builds refuse it; run `make mrproper` in it",
        ));
    }
    // Any edit changes the newest mtime or the file count.
    let (mut newest, mut files) = (0u128, 0u64);
    for e in walkdir::WalkDir::new(tree)
        .into_iter()
        .filter_entry(|e| e.file_name() != ".git")
        .flatten()
    {
        if let Ok(m) = e.metadata() {
            newest = newest.max(mtime_ns(&m));
            files += 1;
        }
    }
    Ok(format!(
        "tree {} version={version} files={files} newest={newest}",
        tree.display()
    ))
}

impl Source {
    pub(crate) fn resolve(source: &TinySource) -> Result<Source, TinyError> {
        match source {
            TinySource::Debian { package } => {
                let path = PathBuf::from(format!("/usr/src/{package}.tar.xz"));
                if !path.is_file() {
                    return Err(TinyError::SourceNotInstalled {
                        package: package.clone(),
                        path,
                    });
                }
                let file_id = tarball_identity(&path)?;
                let (identity, label) = match debian_version(package) {
                    Some(v) => (format!("debian {package} {v} {file_id}"), v),
                    None => (
                        format!("debian {package} {file_id}"),
                        format!("{package}-{}", short_hash(&file_id)),
                    ),
                };
                Ok(Source {
                    identity,
                    origin: Origin::Tarball { path, label },
                })
            }
            TinySource::Tarball(p) => {
                let path = std::path::absolute(p).map_err(io_err("resolve", p))?;
                if !path.is_file() {
                    return Err(TinyError::NotASourceTree {
                        path,
                        reason: "no such file".into(),
                    });
                }
                let identity = tarball_identity(&path)?;
                let stem = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let stem = stem.split(".tar").next().unwrap_or("source").to_string();
                let stem = stem.strip_prefix("linux-").unwrap_or(&stem).to_string();
                let label = format!("{stem}-{}", short_hash(&identity));
                Ok(Source {
                    identity,
                    origin: Origin::Tarball { path, label },
                })
            }
            TinySource::Tree(p) => {
                let tree = std::path::absolute(p).map_err(io_err("resolve", p))?;
                if !tree.is_dir() {
                    return Err(TinyError::NotASourceTree {
                        path: tree,
                        reason: "no such folder".into(),
                    });
                }
                Ok(Source {
                    identity: tree_identity(&tree)?,
                    origin: Origin::Tree(tree),
                })
            }
        }
    }

    /// The source tree to build from: a tree as is, a tarball unpacked once
    /// into `<cache_root>/src/linux-<label>/`.
    pub(crate) fn prepare(
        &self,
        cache_root: &Path,
        progress: &dyn Fn(TinyProgress),
    ) -> Result<PathBuf, TinyError> {
        match &self.origin {
            Origin::Tree(t) => Ok(t.clone()),
            Origin::Tarball { path, label } => unpack_once(
                path,
                &cache_root.join("src"),
                label,
                &self.identity,
                progress,
            ),
        }
    }
}

fn is_unpacked(dir: &Path, identity: &str) -> bool {
    std::fs::read_to_string(dir.join(UNPACKED_MARKER)).is_ok_and(|m| m.trim() == identity)
}

fn unpack_once(
    tarball: &Path,
    src_root: &Path,
    label: &str,
    identity: &str,
    progress: &dyn Fn(TinyProgress),
) -> Result<PathBuf, TinyError> {
    let dest = src_root.join(format!("linux-{label}"));
    if is_unpacked(&dest, identity) {
        return Ok(dest);
    }
    std::fs::create_dir_all(src_root).map_err(io_err("create", src_root))?;
    remove_stale_temps(src_root);
    progress(TinyProgress::Unpacking {
        tarball: tarball.to_path_buf(),
        dest: dest.clone(),
    });
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".tmp-linux-{label}-"))
        .tempdir_in(src_root)
        .map_err(io_err("create a folder in", src_root))?;
    let out = Command::new("tar")
        .arg("-xf")
        .arg(tarball)
        .arg("--strip-components=1")
        .arg("--no-same-owner")
        .arg("-C")
        .arg(tmp.path())
        .output()
        .map_err(io_err("run tar to unpack", tarball))?;
    if !out.status.success() {
        return Err(TinyError::NotASourceTree {
            path: tarball.to_path_buf(),
            reason: format!(
                "tar failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    if makefile_version(tmp.path()).is_none() || !tmp.path().join("Kconfig").is_file() {
        return Err(TinyError::NotASourceTree {
            path: tarball.to_path_buf(),
            reason: "the tarball has no top-level folder with a kernel Makefile and Kconfig".into(),
        });
    }
    let marker = tmp.path().join(UNPACKED_MARKER);
    std::fs::write(&marker, format!("{identity}\n")).map_err(io_err("write", &marker))?;
    if dest.exists() {
        // An interrupted or outdated unpack (no or another marker).
        if is_unpacked(&dest, identity) {
            return Ok(dest);
        }
        std::fs::remove_dir_all(&dest).map_err(io_err("remove the stale source", &dest))?;
    }
    let staged = tmp.keep();
    if let Err(e) = std::fs::rename(&staged, &dest) {
        let _ = std::fs::remove_dir_all(&staged);
        // A concurrent unpack finished first.
        if !is_unpacked(&dest, identity) {
            return Err(io_err("move the unpacked source to", &dest)(e));
        }
    }
    Ok(dest)
}

/// Remove `.tmp-*` folders in `dir` left by builds that were killed.
pub(crate) fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if old {
            tracing::info!(path = %e.path().display(), "removing a stale temporary folder");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
