//! Debian packages into a content-addressed cache, without root.
//!
//! This crate owns everything Kiln knows about `.deb` files: resolving a
//! package name (including kernel meta packages such as
//! `linux-image-cloud-amd64`), downloading it with `apt-get download` (which
//! needs no root), storing it under `<root>/debs/<sha256>.deb`, remembering
//! which name maps to which file in `<root>/debs/index/<name>`, verifying the
//! cached file on every reuse, and unpacking its `data.tar.*` member into
//! `<root>/unpacked/<sha256>/` with a pure-Rust ar + tar reader (no `dpkg`).
//!
//! Layout of the cache root:
//!
//! ```text
//! <root>/debs/<sha256>.deb          downloaded packages, named by content
//! <root>/debs/index/<name>          name -> (package, version, sha256)
//! <root>/unpacked/<sha256>/         unpacked data.tar of that package
//! <root>/unpacked/<sha256>/.kiln-unpacked   completion marker
//! ```
//!
//! Source tarballs (`<package>_<version>.orig.tar.*`) come from the same
//! mirror as a binary package of that source ([`Cache::fetch_orig`]), checked
//! against a sha256 the caller pins, into `<root>/orig/<file>`.
//!
//! Every write is atomic (temp file or temp dir in the same directory, then
//! `rename`), so concurrent Kiln processes sharing one cache are safe.

mod set;

pub use set::{parse_simulation, PackageSet, SCRIPT_ONLY};

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Name of the completion marker written inside an unpacked tree.
pub const UNPACK_MARKER: &str = ".kiln-unpacked";
/// The cache folder (under the cache root) of the source tarballs [`Cache::fetch_orig`] keeps.
pub const ORIG_DIR: &str = "orig";

/// Errors from fetching, verifying or unpacking Debian packages.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    /// `apt-get`/`apt-cache` could not be started.
    #[error(
        "`{program}` was not found: install apt (a Debian or Ubuntu host) or pass a local kernel/binary instead of a Debian package"
    )]
    NoApt {
        /// The program that could not be run.
        program: String,
    },
    /// apt does not know the package.
    #[error(
        "unknown Debian package `{package}`: check the name (try `apt-cache search {package}`) or run `apt-get update`; apt said: {stderr}"
    )]
    UnknownPackage {
        /// The requested package name.
        package: String,
        /// apt's standard error output.
        stderr: String,
    },
    /// apt failed for another reason (network, lock, ...).
    #[error("`{command}` failed for package `{package}` ({status}); apt said: {stderr}")]
    Apt {
        /// The requested package name.
        package: String,
        /// The command line that failed.
        command: String,
        /// Exit status description.
        status: String,
        /// apt's standard error output.
        stderr: String,
    },
    /// A cached `.deb` does not match the sha256 it is stored under.
    #[error(
        "cached package {path} is corrupt (its sha256 is {actual}, expected {expected}): delete the file or run with --refresh"
    )]
    Corrupt {
        /// The cached file.
        path: PathBuf,
        /// The sha256 recorded in the index.
        expected: String,
        /// The sha256 of the file on disk.
        actual: String,
    },
    /// A file is not a usable Debian package.
    #[error("{path} is not a valid Debian package: {reason}; delete it or run with --refresh")]
    NotADeb {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A package contains a path that would escape the unpack directory.
    #[error("{deb} contains an unsafe path `{entry}` ({reason}); refusing to unpack it")]
    UnsafePath {
        /// The package file.
        deb: PathBuf,
        /// The archive entry.
        entry: String,
        /// Why it is unsafe.
        reason: String,
    },
    /// Downloading resolved packages failed; nothing was added to the cache.
    #[error(
        "downloading {} failed ({status}); the cache was left unchanged, so retry when the mirror is reachable (check the network, proxy and /etc/apt/sources.list); apt said: {stderr}",
        .packages.join(", ")
    )]
    Download {
        /// The packages apt could not fetch.
        packages: Vec<String>,
        /// Exit status description.
        status: String,
        /// apt's standard error output.
        stderr: String,
    },
    /// A source tarball could not be downloaded, or is not the pinned one.
    #[error("cannot fetch the source tarball {url}: {reason}; retry when the mirror is reachable, or put the file at {dest} yourself")]
    Orig {
        /// Where it was fetched from.
        url: String,
        /// Where it goes in the cache.
        dest: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A package name that apt would never accept (and that could not be stored safely).
    #[error("`{0}` is not a valid Debian package name (expected lowercase letters, digits, `+`, `-`, `.`)")]
    InvalidName(String),
    /// A filesystem operation failed.
    // The OS error is in the message, not a `source` (it would be printed twice with causes).
    #[error("cannot {action} {path}: {error}")]
    Io {
        /// What was being done ("read", "create", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DebError {
    let path = path.to_path_buf();
    move |error| DebError::Io {
        action,
        path,
        error,
    }
}

/// A Debian package stored in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deb {
    /// The real package name (from its control file), e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// The package version, e.g. `6.1.192-2` or `1:1.35.0-4+deb12u1+b1`.
    pub version: String,
    /// Lowercase hex sha256 of the `.deb` file.
    pub sha256: String,
    /// Location of the `.deb` in the cache (`<root>/debs/<sha256>.deb`).
    pub path: PathBuf,
}

/// One line of `<root>/debs/index/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IndexEntry {
    package: String,
    version: String,
    sha256: String,
}

/// A content-addressed cache of Debian packages.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    apt_get: PathBuf,
    apt_cache: PathBuf,
}

impl Cache {
    /// A cache rooted at `root` (created on first use).
    pub fn new(root: PathBuf) -> Self {
        Cache {
            root,
            apt_get: PathBuf::from("apt-get"),
            apt_cache: PathBuf::from("apt-cache"),
        }
    }

    /// Use other `apt-get` / `apt-cache` programs (for tests, or hosts where
    /// apt lives outside `$PATH`).
    pub fn with_apt_programs(
        mut self,
        apt_get: impl Into<PathBuf>,
        apt_cache: impl Into<PathBuf>,
    ) -> Self {
        self.apt_get = apt_get.into();
        self.apt_cache = apt_cache.into();
        self
    }

    /// `$XDG_CACHE_HOME/kiln`, else `$HOME/.cache/kiln` (else `./.kiln-cache`
    /// when neither variable is set).
    pub fn default_root() -> PathBuf {
        let nonempty = |v: &str| {
            std::env::var_os(v)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        if let Some(xdg) = nonempty("XDG_CACHE_HOME") {
            return xdg.join("kiln");
        }
        if let Some(home) = nonempty("HOME") {
            return home.join(".cache").join("kiln");
        }
        PathBuf::from(".kiln-cache")
    }

    /// The cache root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn debs_dir(&self) -> PathBuf {
        self.root.join("debs")
    }

    fn index_dir(&self) -> PathBuf {
        self.root.join("debs").join("index")
    }

    fn deb_path(&self, sha256: &str) -> PathBuf {
        self.debs_dir().join(format!("{sha256}.deb"))
    }

    /// Where [`Cache::unpack`] puts (or has put) the contents of `deb`.
    pub fn unpacked_dir(&self, deb: &Deb) -> PathBuf {
        self.root.join("unpacked").join(&deb.sha256)
    }

    /// Resolve `package`, download it unless the cache already holds a
    /// verified copy, and return it.
    ///
    /// A kernel meta package (`linux-image-cloud-amd64`) resolves to the real
    /// `linux-image-*` package it depends on. If the index names a cached
    /// file that exists, it is verified (sha256) and reused without running
    /// apt, so rebuilds work offline; a file that fails verification is an
    /// error ([`DebError::Corrupt`]). `refresh` forces a new download (which
    /// also repairs a corrupt cache entry and discards its unpacked tree).
    pub fn fetch(&self, package: &str, refresh: bool) -> Result<Deb, DebError> {
        validate_name(package)?;
        if !refresh {
            if let Some(entry) = self.read_index(package)? {
                let path = self.deb_path(&entry.sha256);
                if path.is_file() {
                    let actual = sha256_file(&path)?;
                    if actual != entry.sha256 {
                        return Err(DebError::Corrupt {
                            path,
                            expected: entry.sha256,
                            actual,
                        });
                    }
                    tracing::debug!(package, path = %path.display(), "reusing cached package");
                    return Ok(Deb {
                        package: entry.package,
                        version: entry.version,
                        sha256: entry.sha256,
                        path,
                    });
                }
                tracing::debug!(package, "index names a missing file; downloading again");
            }
        }

        let real = self.resolve(package)?;
        let deb = self.download(package, &real)?;
        if refresh {
            self.discard_unpacked(&deb)?;
        }
        self.write_index(package, &deb)?;
        if real != package {
            self.write_index(&real, &deb)?;
        }
        Ok(deb)
    }

    /// Follow kernel meta packages (`linux-image-cloud-amd64` ->
    /// `linux-image-6.1.0-56-cloud-amd64`); other names are returned as is.
    fn resolve(&self, package: &str) -> Result<String, DebError> {
        let mut name = package.to_string();
        for _ in 0..4 {
            if !name.starts_with("linux-image-") {
                break;
            }
            let out = self.run_apt(
                &self.apt_cache,
                &[
                    "depends",
                    "--no-recommends",
                    "--no-suggests",
                    "--no-conflicts",
                    "--no-breaks",
                    "--no-replaces",
                    "--no-enhances",
                    &name,
                ],
                package,
                None,
            )?;
            let next = out.lines().find_map(|line| {
                let line = line.trim_start_matches([' ', '|']);
                let dep = line.strip_prefix("Depends:")?.trim();
                // `<name>` marks a purely virtual package: not downloadable.
                (dep.starts_with("linux-image-") && dep != name).then(|| dep.to_string())
            });
            match next {
                Some(dep) => {
                    tracing::debug!(from = %name, to = %dep, "meta package resolved");
                    name = dep;
                }
                None => break,
            }
        }
        Ok(name)
    }

    /// Run an apt program; map "not installed" and "unknown package".
    fn run_apt(
        &self,
        program: &Path,
        args: &[&str],
        package: &str,
        cwd: Option<&Path>,
    ) -> Result<String, DebError> {
        let mut cmd = Command::new(program);
        cmd.args(args).env("LC_ALL", "C");
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let command = format!("{} {}", program.display(), args.join(" "));
        tracing::debug!(%command, "running apt");
        let out = cmd.output().map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                DebError::NoApt {
                    program: program.display().to_string(),
                }
            } else {
                DebError::Io {
                    action: "run",
                    path: program.to_path_buf(),
                    error: e,
                }
            }
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !out.status.success() {
            let unknown = [
                "Unable to locate package",
                "has no candidate",
                "has no installation candidate",
                "No packages found",
            ]
            .iter()
            .any(|m| stderr.contains(m));
            if unknown {
                return Err(DebError::UnknownPackage {
                    package: package.to_string(),
                    stderr,
                });
            }
            return Err(DebError::Apt {
                package: package.to_string(),
                command,
                status: out.status.to_string(),
                stderr,
            });
        }
        if !stderr.is_empty() {
            // As root apt warns that the `_apt` sandbox cannot write the temp dir: harmless.
            tracing::debug!(%command, %stderr, "apt stderr");
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The source tarball `file` (e.g. `busybox_1.35.0.orig.tar.bz2`) of the source package
    /// that builds `binary_package`, from the mirror apt would fetch that package from
    /// (`apt-get download --print-uris`), kept only when its sha256 is `sha256`. Cached in
    /// `<root>/orig/<file>` (checked again on every reuse).
    pub fn fetch_orig(
        &self,
        binary_package: &str,
        file: &str,
        sha256: &str,
    ) -> Result<PathBuf, DebError> {
        validate_name(binary_package)?;
        let dir = self.root.join(ORIG_DIR);
        let dest = dir.join(file);
        let plain = Path::new(file).components().count() == 1
            && !file.starts_with('.')
            && !file.contains('/');
        if !plain {
            return Err(DebError::Orig {
                url: file.to_string(),
                dest,
                reason: "not a plain file name".into(),
            });
        }
        if dest.is_file() && sha256_file(&dest)? == sha256 {
            return Ok(dest);
        }
        let listing = self.run_apt(
            &self.apt_get,
            &["download", "--print-uris", "-q", binary_package],
            binary_package,
            None,
        )?;
        let url = orig_url(&listing, file).ok_or_else(|| DebError::Orig {
            url: format!("(the mirror of {binary_package})"),
            dest: dest.clone(),
            reason: format!(
                "`apt-get download --print-uris {binary_package}` printed no URL: {listing}"
            ),
        })?;
        let bad = |reason: String| DebError::Orig {
            url: url.clone(),
            dest: dest.clone(),
            reason,
        };
        let tls = native_tls::TlsConnector::new().map_err(|e| bad(format!("TLS: {e}")))?;
        let agent = ureq::AgentBuilder::new()
            .tls_connector(std::sync::Arc::new(tls))
            .timeout_connect(std::time::Duration::from_secs(30))
            .timeout_read(std::time::Duration::from_secs(60))
            .build();
        tracing::info!(%url, "fetching a source tarball");
        let resp = agent.get(&url).call().map_err(|e| bad(e.to_string()))?;
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".download-")
            .tempfile_in(&dir)
            .map_err(io_err("create a temp file in", &dir))?;
        io::copy(&mut resp.into_reader(), tmp.as_file_mut())
            .map_err(|e| bad(format!("the download broke off: {e}")))?;
        let actual = sha256_file(tmp.path())?;
        if actual != sha256 {
            return Err(bad(format!(
                "its sha256 is {actual}, not the pinned {sha256}"
            )));
        }
        tmp.persist(&dest)
            .map_err(|e| io_err("move a download to", &dest)(e.error))?;
        Ok(dest)
    }

    /// `apt-get download` into a temp dir, hash, move into place.
    fn download(&self, requested: &str, real: &str) -> Result<Deb, DebError> {
        let debs = self.debs_dir();
        fs::create_dir_all(&debs).map_err(io_err("create", &debs))?;
        let tmp = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(&debs)
            .map_err(io_err("create a temp dir in", &debs))?;
        self.run_apt(
            &self.apt_get,
            &["download", "-q", real],
            requested,
            Some(tmp.path()),
        )?;

        let mut found = Vec::new();
        for entry in fs::read_dir(tmp.path()).map_err(io_err("list", tmp.path()))? {
            let entry = entry.map_err(io_err("list", tmp.path()))?;
            if entry.path().extension() == Some(OsStr::new("deb")) {
                found.push(entry.path());
            }
        }
        found.sort();
        let Some(file) = found.into_iter().next() else {
            return Err(DebError::Apt {
                package: requested.to_string(),
                command: format!("{} download {real}", self.apt_get.display()),
                status: "exit status 0".into(),
                stderr: "apt-get reported success but wrote no .deb file".into(),
            });
        };
        let sha256 = sha256_file(&file)?;
        let control = read_control(&file)?;
        let dest = self.deb_path(&sha256);
        fs::rename(&file, &dest).map_err(io_err("move a download to", &dest))?;
        tracing::info!(package = %control.package, version = %control.version, path = %dest.display(), "downloaded");
        Ok(Deb {
            package: control.package,
            version: control.version,
            sha256,
            path: dest,
        })
    }

    fn read_index(&self, name: &str) -> Result<Option<IndexEntry>, DebError> {
        let path = self.index_dir().join(name);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().to_string())
        };
        match (field("package"), field("version"), field("sha256")) {
            (Some(package), Some(version), Some(sha256)) if is_sha256(&sha256) => {
                Ok(Some(IndexEntry {
                    package,
                    version,
                    sha256,
                }))
            }
            _ => {
                tracing::warn!(path = %path.display(), "ignoring unreadable cache index entry");
                Ok(None)
            }
        }
    }

    fn write_index(&self, name: &str, deb: &Deb) -> Result<(), DebError> {
        let dir = self.index_dir();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let text = format!(
            "package={}\nversion={}\nsha256={}\n",
            deb.package, deb.version, deb.sha256
        );
        write_atomic(&dir.join(name), text.as_bytes())
    }

    /// Remove the unpacked tree of `deb` if present (atomically: rename away, then delete).
    fn discard_unpacked(&self, deb: &Deb) -> Result<(), DebError> {
        let dir = self.unpacked_dir(deb);
        if fs::symlink_metadata(&dir).is_err() {
            return Ok(());
        }
        let parent = self.root.join("unpacked");
        let trash = tempfile::Builder::new()
            .prefix(".discard-")
            .tempdir_in(&parent)
            .map_err(io_err("create a temp dir in", &parent))?;
        let target = trash.path().join("old");
        fs::rename(&dir, &target).map_err(io_err("move away", &dir))?;
        make_writable(&target);
        trash.close().map_err(io_err("remove", &target))
    }

    /// Unpack the `data.tar.{xz,zst,gz}` member of `deb` into
    /// `<root>/unpacked/<sha256>/` and return that directory.
    ///
    /// Reuses a previous unpack (recognized by its completion marker).
    /// Only regular files, directories, symlinks and hard links are created;
    /// permissions are kept without setuid/setgid/sticky bits (directories
    /// also get `u+rwx` so the cache can always be cleaned); device nodes and
    /// FIFOs are skipped. Runs without root.
    pub fn unpack(&self, deb: &Deb) -> Result<PathBuf, DebError> {
        let dest = self.unpacked_dir(deb);
        if dest.join(UNPACK_MARKER).is_file() {
            return Ok(dest);
        }
        if fs::symlink_metadata(&dest).is_ok() {
            // A tree without marker was never completed by us: start over.
            self.discard_unpacked(deb)?;
        }
        let parent = self.root.join("unpacked");
        fs::create_dir_all(&parent).map_err(io_err("create", &parent))?;
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&parent)
            .map_err(io_err("create a temp dir in", &parent))?;
        let tree = tmp.path().join("tree");
        fs::create_dir(&tree).map_err(io_err("create", &tree))?;
        with_member(&deb.path, "data.tar", |reader| {
            extract_tar(&deb.path, reader, &tree)
        })?;
        let marker = format!(
            "package={}\nversion={}\nsha256={}\n",
            deb.package, deb.version, deb.sha256
        );
        let marker_path = tree.join(UNPACK_MARKER);
        fs::write(&marker_path, marker).map_err(io_err("write", &marker_path))?;
        match fs::rename(&tree, &dest) {
            Ok(()) => {}
            Err(_) if dest.join(UNPACK_MARKER).is_file() => {
                // Another process finished first; ours is dropped with `tmp`.
                make_writable(&tree);
            }
            Err(e) => return Err(io_err("move into place", &dest)(e)),
        }
        drop(tmp);
        tracing::debug!(package = %deb.package, dir = %dest.display(), "unpacked");
        Ok(dest)
    }
}

/// Ensure every directory under `dir` is owner-writable so it can be removed.
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(meta) = fs::symlink_metadata(&d) {
            if meta.is_dir() {
                let mode = meta.permissions().mode();
                if mode & 0o700 != 0o700 {
                    let _ = fs::set_permissions(&d, fs::Permissions::from_mode(mode | 0o700));
                }
                if let Ok(rd) = fs::read_dir(&d) {
                    stack.extend(rd.flatten().map(|e| e.path()));
                }
            }
        }
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn validate_name(name: &str) -> Result<(), DebError> {
    let ok = name.len() >= 2
        && name.len() <= 200
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(DebError::InvalidName(name.to_string()))
    }
}

/// Write `data` to `path` atomically (temp file in the same dir, then rename).
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), DebError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err("create a temp file in", dir))?;
    tmp.write_all(data).map_err(io_err("write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err("sync", path))?;
    tmp.persist(path)
        .map_err(|e| io_err("write", path)(e.error))?;
    Ok(())
}

/// The URL of `file` beside the first `.deb` in `apt-get download --print-uris` output
/// (`'http://mirror/pool/main/b/busybox/busybox-static_…_amd64.deb' name size SHA256:…`).
fn orig_url(listing: &str, file: &str) -> Option<String> {
    let url = listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix('\''))
        .filter_map(|l| l.split_once('\'').map(|(u, _)| u))
        .find(|u| u.ends_with(".deb"))?;
    let (dir, _) = url.rsplit_once('/')?;
    Some(format!("{dir}/{file}"))
}

/// Lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, DebError> {
    let mut file = fs::File::open(path).map_err(io_err("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Package and version from a control file.
#[derive(Debug)]
struct Control {
    package: String,
    version: String,
}

fn read_control(deb: &Path) -> Result<Control, DebError> {
    let fields = read_control_fields(deb)?;
    match (fields.get("Package"), fields.get("Version")) {
        (Some(package), Some(version)) => Ok(Control {
            package: package.clone(),
            version: version.clone(),
        }),
        _ => Err(not_a_deb(
            deb,
            "control file lacks Package or Version".into(),
        )),
    }
}

/// The single-line fields of a package's control file.
fn read_control_fields(deb: &Path) -> Result<BTreeMap<String, String>, DebError> {
    let text = with_member(deb, "control.tar", |reader| {
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|e| not_a_deb(deb, format!("control.tar: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| not_a_deb(deb, format!("control.tar: {e}")))?;
            let path = entry
                .path()
                .map_err(|e| not_a_deb(deb, format!("control.tar: {e}")))?;
            if path
                .components()
                .filter(|c| !matches!(c, Component::CurDir))
                .eq([Component::Normal(OsStr::new("control"))])
            {
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .map_err(|e| not_a_deb(deb, format!("control file: {e}")))?;
                return Ok(text);
            }
        }
        Err(not_a_deb(deb, "control.tar has no control file".into()))
    })?;
    let mut fields = BTreeMap::new();
    for line in text.lines().take_while(|l| !l.trim().is_empty()) {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    Ok(fields)
}

fn not_a_deb(path: &Path, reason: String) -> DebError {
    DebError::NotADeb {
        path: path.to_path_buf(),
        reason,
    }
}

/// Find the ar member whose name starts with `prefix` (`data.tar`,
/// `control.tar`) and hand its decompressed stream to `f`.
fn with_member<T>(
    deb: &Path,
    prefix: &str,
    f: impl FnOnce(&mut dyn Read) -> Result<T, DebError>,
) -> Result<T, DebError> {
    let file = fs::File::open(deb).map_err(io_err("open", deb))?;
    let mut archive = ar::Archive::new(BufReader::new(file));
    while let Some(entry) = archive.next_entry() {
        let entry = entry.map_err(|e| not_a_deb(deb, format!("bad ar archive: {e}")))?;
        let name = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_string();
        let Some(suffix) = name.strip_prefix(prefix) else {
            continue;
        };
        let mut reader: Box<dyn Read + '_> = match suffix {
            "" => Box::new(entry),
            ".xz" => Box::new(liblzma::read::XzDecoder::new_multi_decoder(entry)),
            ".zst" => Box::new(
                zstd::stream::read::Decoder::new(entry)
                    .map_err(|e| not_a_deb(deb, format!("{name}: {e}")))?,
            ),
            ".gz" => Box::new(flate2::read::MultiGzDecoder::new(entry)),
            other => {
                return Err(not_a_deb(
                    deb,
                    format!("member {name} uses an unsupported compression `{other}`"),
                ))
            }
        };
        return f(&mut reader);
    }
    Err(not_a_deb(deb, format!("it has no {prefix}.* member")))
}

/// Turn an archive path into a safe relative path (no `..`, no root).
fn safe_relative(deb: &Path, raw: &Path) -> Result<PathBuf, DebError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::RootDir => {} // tolerate absolute names: relative to the tree
            Component::ParentDir | Component::Prefix(_) => {
                return Err(DebError::UnsafePath {
                    deb: deb.to_path_buf(),
                    entry: raw.display().to_string(),
                    reason: "it contains `..`".into(),
                })
            }
        }
    }
    Ok(out)
}

/// Create the parent directories of `rel` under `root`, refusing to go
/// through symlinks (which could point outside the tree).
fn ensure_parents(
    deb: &Path,
    root: &Path,
    rel: &Path,
    made: &mut HashSet<PathBuf>,
) -> Result<(), DebError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut cur = PathBuf::new();
    for c in parent.components() {
        cur.push(c);
        if made.contains(&cur) {
            continue;
        }
        let full = root.join(&cur);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(DebError::UnsafePath {
                    deb: deb.to_path_buf(),
                    entry: rel.display().to_string(),
                    reason: format!("it goes through the symlink {}", cur.display()),
                })
            }
            Ok(_) => {
                return Err(DebError::UnsafePath {
                    deb: deb.to_path_buf(),
                    entry: rel.display().to_string(),
                    reason: format!("{} is not a directory", cur.display()),
                })
            }
            Err(_) => fs::create_dir(&full).map_err(io_err("create", &full))?,
        }
        made.insert(cur.clone());
    }
    Ok(())
}

/// Remove whatever non-directory sits at `path` (so we never write through a symlink).
fn clear_slot(path: &Path) -> Result<(), DebError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("replace", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("replace", path)),
        Err(_) => Ok(()),
    }
}

fn extract_tar(deb: &Path, reader: &mut dyn Read, root: &Path) -> Result<(), DebError> {
    use std::os::unix::fs::PermissionsExt;
    use tar::EntryType;

    let bad = |e: io::Error| not_a_deb(deb, format!("data.tar: {e}"));
    let mut archive = tar::Archive::new(reader);
    let mut made: HashSet<PathBuf> = HashSet::new();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.into_owned();
        let rel = safe_relative(deb, &raw)?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let kind = entry.header().entry_type();
        if rel.as_os_str().is_empty() {
            continue; // "./" itself
        }
        let full = root.join(&rel);
        match kind {
            EntryType::Directory => {
                ensure_parents(deb, root, &rel, &mut made)?;
                match fs::symlink_metadata(&full) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        clear_slot(&full)?;
                        fs::create_dir(&full).map_err(io_err("create", &full))?;
                    }
                    Err(_) => fs::create_dir(&full).map_err(io_err("create", &full))?,
                }
                made.insert(rel.clone());
                dir_modes.push((full, mode | 0o700));
            }
            EntryType::Regular | EntryType::Continuous => {
                ensure_parents(deb, root, &rel, &mut made)?;
                clear_slot(&full)?;
                let mut out = fs::File::create(&full).map_err(io_err("create", &full))?;
                io::copy(&mut entry, &mut out)
                    .map_err(|e| not_a_deb(deb, format!("{}: {e}", rel.display())))?;
                if let Ok(mtime) = entry.header().mtime() {
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                    let _ = out.set_modified(t);
                }
                drop(out);
                fs::set_permissions(&full, fs::Permissions::from_mode(mode))
                    .map_err(io_err("chmod", &full))?;
            }
            EntryType::Symlink => {
                let Some(target) = entry.link_name().map_err(bad)? else {
                    return Err(not_a_deb(
                        deb,
                        format!("symlink {} has no target", rel.display()),
                    ));
                };
                ensure_parents(deb, root, &rel, &mut made)?;
                clear_slot(&full)?;
                std::os::unix::fs::symlink(&target, &full)
                    .map_err(io_err("create symlink", &full))?;
            }
            EntryType::Link => {
                let Some(target) = entry.link_name().map_err(bad)? else {
                    return Err(not_a_deb(
                        deb,
                        format!("hard link {} has no target", rel.display()),
                    ));
                };
                let target_rel = safe_relative(deb, &target)?;
                let source = root.join(&target_rel);
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(DebError::UnsafePath {
                            deb: deb.to_path_buf(),
                            entry: rel.display().to_string(),
                            reason: format!(
                                "hard link to {}, which is not a regular file unpacked before it",
                                target_rel.display()
                            ),
                        })
                    }
                }
                ensure_parents(deb, root, &rel, &mut made)?;
                clear_slot(&full)?;
                if fs::hard_link(&source, &full).is_err() {
                    fs::copy(&source, &full).map_err(io_err("copy", &full))?;
                }
            }
            other => {
                tracing::debug!(entry = %rel.display(), kind = ?other, "skipping special file");
            }
        }
    }
    // Directory modes last, deepest first, so read-only dirs don't block writes.
    dir_modes.sort_by(|a, b| b.0.cmp(&a.0));
    for (dir, mode) in dir_modes {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", &dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
