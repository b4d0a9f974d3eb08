//! What Kiln's own builds share: the cache entry (a folder renamed into place
//! under a per-key lock, with a JSON record), the build log and its failed
//! steps, and musl-gcc's view of the kernel headers.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_kernel::tiny::on_path;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{io_err, UserlandError};

/// The tools every build runs.
pub(crate) const TOOLS: &[&str] = &["musl-gcc", "make", "tar", "bzip2", "strip", "sh"];

/// A program Kiln built, in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The static, stripped binary.
    pub binary: PathBuf,
    /// `kiln busybox 1.35.0 musl <hash16>`: what images record as its origin.
    pub identity: String,
    /// The cache key.
    pub hash: String,
    /// The binary's size in bytes.
    pub size: u64,
}

/// The record beside each cached binary.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    pub version: String,
    pub tarball_sha256: String,
    pub hash: String,
    /// What the build turned on (busybox's symbols, dropbear's options).
    pub symbols: Vec<String>,
    pub size: u64,
}

/// One kind of build: its name, its source, its cache folder's prefix and the binary it
/// leaves.
pub(crate) struct Product {
    /// `busybox`, `dropbear`, `sftp-server`: names cache folders' parents, logs and identities.
    pub name: &'static str,
    /// The entry folder's prefix (`bb`, `db`, `sf`).
    pub tag: &'static str,
    /// The binary's file name in the entry.
    pub binary: &'static str,
    /// The source version, for the record and the identity.
    pub version: &'static str,
    /// Debian's source tarball.
    pub tarball: &'static str,
    /// Its sha256: a download that differs is refused.
    pub tarball_sha256: &'static str,
    /// The binary package whose mirror directory holds the tarball.
    pub mirror_package: &'static str,
    /// Bumped when the build steps change in a way the key's parts do not show.
    pub build_version: u32,
    /// Tools it needs besides [`TOOLS`].
    pub tools: &'static [&'static str],
}

impl Product {
    /// The cache key: sha256 over `kiln-<name> v<build_version>`, the tarball's sha256 and
    /// `parts` (what the build turns on), each as given.
    pub fn key(&self, parts: impl IntoIterator<Item = impl AsRef<[u8]>>) -> String {
        let mut h = Sha256::new();
        h.update(
            format!(
                "kiln-{} v{}\n{}\n",
                self.name, self.build_version, self.tarball_sha256
            )
            .as_bytes(),
        );
        for p in parts {
            h.update(p.as_ref());
        }
        hex::encode(h.finalize())
    }

    /// The cache entry's folder name for `hash`: `bb-<hash16>`.
    fn entry_name(&self, hash: &str) -> String {
        format!("{}-{}", self.tag, &hash[..16])
    }

    /// The cache entry for `hash` under `cache_root`.
    fn entry(&self, cache_root: &Path, hash: &str) -> PathBuf {
        cache_root.join(self.name).join(self.entry_name(hash))
    }

    /// The record's file name: `busybox.json`.
    fn record(&self) -> String {
        format!("{}.json", self.name)
    }

    /// A complete entry: its record reads and the binary has the recorded size.
    fn read(&self, dir: &Path) -> Option<Built> {
        let r: Record =
            serde_json::from_slice(&std::fs::read(dir.join(self.record())).ok()?).ok()?;
        let binary = dir.join(self.binary);
        let size = std::fs::metadata(&binary).ok()?.len();
        (size == r.size).then(|| Built {
            binary,
            identity: format!("kiln {} {} musl {}", self.name, r.version, &r.hash[..16]),
            hash: r.hash,
            size,
        })
    }

    /// The cached build for `hash`, or a new one: the source tarball is fetched (by `debs`)
    /// and unpacked into [`Workspace::src`], then `build` leaves the stripped binary at
    /// [`Workspace::output`]. The entry is written to a temp folder and renamed into place
    /// under a per-key lock, so it is complete or absent. `progress` hears the source step.
    pub fn cached(
        &self,
        cache_root: &Path,
        debs: &kiln_debpkg::Cache,
        progress: &dyn Fn(&str),
        hash: &str,
        symbols: Vec<String>,
        build: impl FnOnce(&mut Workspace) -> Result<(), UserlandError>,
    ) -> Result<Built, UserlandError> {
        let dir = self.entry(cache_root, hash);
        if let Some(b) = self.read(&dir) {
            return Ok(b);
        }
        let missing: Vec<&str> = TOOLS
            .iter()
            .chain(self.tools)
            .copied()
            .filter(|t| !on_path(t))
            .collect();
        if !missing.is_empty() {
            return Err(UserlandError::MissingTools {
                what: self.name,
                missing: missing.join(", "),
            });
        }
        let root = cache_root.join(self.name);
        std::fs::create_dir_all(&root).map_err(io_err("create", &root))?;
        let key = self.entry_name(hash);
        let lock = lock_file(&root, &key)?;
        lock.lock()
            .map_err(io_err("take the build lock", &lock_path(&root, &key)))?;
        if let Some(b) = self.read(&dir) {
            return Ok(b);
        }
        // Holding the key's lock, any build folder of this key is a killed build's.
        sweep_killed(&root, &key);
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".tmp-{key}-"))
            .tempdir_in(&root)
            .map_err(io_err("create a build folder in", &root))?;
        let log_path = tmp.path().join("build.log");
        let mut ws = Workspace {
            src: tmp.path().join("src"),
            kinc: tmp.path().join("kinc"),
            output: tmp.path().join(self.binary),
            step: Step {
                what: self.name,
                log: File::create(&log_path).map_err(io_err("create", &log_path))?,
                log_path,
                failed_log: root.join(format!("{key}.failed.log")),
            },
        };
        std::fs::create_dir_all(&ws.src).map_err(io_err("create", &ws.src))?;
        // musl-gcc sees only musl's headers: give it the kernel's (and nothing of glibc's).
        std::fs::create_dir_all(&ws.kinc).map_err(io_err("create", &ws.kinc))?;
        for (name, target) in [
            ("linux", "/usr/include/linux"),
            ("asm", "/usr/include/x86_64-linux-gnu/asm"),
            ("asm-generic", "/usr/include/asm-generic"),
        ] {
            std::os::unix::fs::symlink(target, ws.kinc.join(name))
                .map_err(io_err("link", &ws.kinc))?;
        }
        progress(&format!("{}: source", self.name));
        let tarball = debs.fetch_orig(self.mirror_package, self.tarball, self.tarball_sha256)?;
        ws.unpack(&tarball)?;
        build(&mut ws)?;
        for dir in [&ws.src, &ws.kinc] {
            std::fs::remove_dir_all(dir).map_err(io_err("remove", dir))?;
        }
        let size = std::fs::metadata(&ws.output)
            .map_err(io_err("stat", &ws.output))?
            .len();
        let record = Record {
            version: self.version.into(),
            tarball_sha256: self.tarball_sha256.into(),
            hash: hash.to_string(),
            symbols,
            size,
        };
        let rec = tmp.path().join(self.record());
        let json =
            serde_json::to_vec_pretty(&record).map_err(|e| io_err("encode", &rec)(e.into()))?;
        std::fs::write(&rec, json).map_err(io_err("write", &rec))?;
        let failed_log = ws.step.failed_log.clone();
        drop(ws);
        let staged = tmp.keep();
        if let Err(e) = std::fs::rename(&staged, &dir) {
            let _ = std::fs::remove_dir_all(&staged);
            if self.read(&dir).is_none() {
                return Err(io_err("move the build to", &dir)(e));
            }
        }
        let _ = std::fs::remove_file(&failed_log);
        self.read(&dir).ok_or_else(|| UserlandError::Io {
            action: "read back",
            path: dir.join(self.record()),
            error: io::Error::other("the cache entry just written is incomplete"),
        })
    }
}

/// The lock file of the cache entry `key` in `root`.
fn lock_path(root: &Path, key: &str) -> PathBuf {
    root.join(format!(".{key}.lock"))
}

/// Open (creating) the lock file of the cache entry `key` in `root`.
fn lock_file(root: &Path, key: &str) -> Result<File, UserlandError> {
    let path = lock_path(root, key);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open the build lock", &path))
}

/// Remove the build folders of `key` a killed build left in `root` (the caller holds the lock).
fn sweep_killed(root: &Path, key: &str) {
    let prefix = format!(".tmp-{key}-");
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A build in the cache, as [`crate::cached_builds`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBuild {
    /// `busybox`, `dropbear`, `sftp-server`.
    pub program: &'static str,
    /// The entry's folder, or the log of a build that failed (`KEY.failed.log`).
    pub path: PathBuf,
    /// What images record as the binary's origin ([`Built::identity`]); `None` for a failed
    /// build's log or an incomplete entry.
    pub identity: Option<String>,
    key: String,
}

impl Product {
    /// The builds of this program in `cache_root`: complete entries, incomplete ones (a killed
    /// build's folder included: [`remove_build`] spares one whose build still runs) and the
    /// logs of failed builds.
    pub(crate) fn cached_builds(&self, cache_root: &Path) -> Vec<CachedBuild> {
        let root = cache_root.join(self.name);
        let mut out = Vec::new();
        let entry_prefix = format!("{}-", self.tag);
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let (key, identity) = if let Some(key) = name.strip_suffix(".failed.log") {
                (key.to_string(), None)
            } else if name.starts_with(&entry_prefix) && path.is_dir() {
                (name.clone(), self.read(&path).map(|b| b.identity))
            } else if let Some(rest) = name.strip_prefix(".tmp-") {
                // `.tmp-KEY-RANDOM`: a killed build's folder, unless its build still runs.
                match rest.rsplit_once('-') {
                    Some((key, _)) => (key.to_string(), None),
                    None => continue,
                }
            } else {
                continue;
            };
            out.push(CachedBuild {
                program: self.name,
                path,
                identity,
                key,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

/// Remove `build` from the cache unless a build of its key runs now: `Ok(false)` then.
pub fn remove_build(cache_root: &Path, build: &CachedBuild) -> Result<bool, UserlandError> {
    let root = cache_root.join(build.program);
    let lock = lock_file(&root, &build.key)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(io_err("take the build lock", &lock_path(&root, &build.key))(e))
        }
    }
    let p = &build.path;
    if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
    .map_err(io_err("remove", p))?;
    Ok(true)
}

/// One build's folders and log.
pub(crate) struct Workspace {
    /// The unpacked source.
    pub src: PathBuf,
    /// The kernel headers, for `-I`.
    pub kinc: PathBuf,
    /// Where the stripped binary goes.
    pub output: PathBuf,
    /// Runs the steps into the log.
    pub step: Step,
}

impl Workspace {
    /// Unpack a source tarball (tar finds its compression) into `src`, without its top folder.
    fn unpack(&mut self, tarball: &Path) -> Result<(), UserlandError> {
        self.step.run(
            "unpack",
            Command::new("tar")
                .arg("-xf")
                .arg(tarball)
                .arg("-C")
                .arg(&self.src)
                .arg("--strip-components=1"),
        )
    }

    /// `make` in `src` with musl-gcc, the build's environment pinned.
    pub fn make(&self, args: &[&str]) -> Command {
        let mut c = Command::new("make");
        c.current_dir(&self.src)
            .args(args)
            .arg("CC=musl-gcc")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("LC_ALL", "C")
            .env_remove("MAKEFLAGS")
            .env_remove("MAKELEVEL");
        c
    }

    /// `./configure ARGS` in `src` for a static musl build, the kernel headers on the path.
    pub fn configure(&self, args: &[&str]) -> Command {
        let mut c = Command::new("./configure");
        c.current_dir(&self.src)
            .args(args)
            .env("CC", "musl-gcc")
            .env("CFLAGS", format!("-Os -I{}", self.kinc.display()))
            .env("LDFLAGS", "-static")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("LC_ALL", "C");
        c
    }

    /// Strip `built` (a path in `src`) into [`Workspace::output`].
    pub fn strip(&mut self, built: &str) -> Result<(), UserlandError> {
        let from = self.src.join(built);
        let to = self.output.clone();
        self.step.run(
            "strip",
            Command::new("strip")
                .arg("--strip-all")
                .arg("-o")
                .arg(&to)
                .arg(&from),
        )
    }
}

/// One build's log and how its steps fail.
pub(crate) struct Step {
    what: &'static str,
    log: File,
    log_path: PathBuf,
    failed_log: PathBuf,
}

impl Step {
    /// Run `cmd`, its output into the log; a failure carries the log's tail.
    pub fn run(&mut self, name: &str, cmd: &mut Command) -> Result<(), UserlandError> {
        self.run_with_input(name, cmd.stdin(Stdio::null()), "")
    }

    /// [`Step::run`], writing `input` to the command's stdin (set it to piped).
    pub fn run_with_input(
        &mut self,
        name: &str,
        cmd: &mut Command,
        input: &str,
    ) -> Result<(), UserlandError> {
        let _ = writeln!(self.log, "### {name}");
        let log_out = self
            .log
            .try_clone()
            .map_err(io_err("open", &self.log_path))?;
        let log_err = self
            .log
            .try_clone()
            .map_err(io_err("open", &self.log_path))?;
        let mut child = cmd
            .stdout(log_out)
            .stderr(log_err)
            .spawn()
            .map_err(io_err("run", Path::new(name)))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A closed pipe only means it asked fewer questions.
            let _ = stdin.write_all(input.as_bytes());
        }
        let status = child.wait().map_err(io_err("wait for", Path::new(name)))?;
        if status.success() {
            return Ok(());
        }
        let _ = self.log.flush();
        let log = match std::fs::copy(&self.log_path, &self.failed_log) {
            Ok(_) => self.failed_log.clone(),
            Err(_) => self.log_path.clone(),
        };
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        Err(UserlandError::BuildFailed {
            what: self.what,
            step: name.to_string(),
            status: status.to_string(),
            tail: lines[lines.len().saturating_sub(25)..].join("\n"),
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::busybox::BUSYBOX;

    /// A complete busybox entry for `hash` in `cache`.
    fn entry(cache: &Path, hash: &str) -> PathBuf {
        let dir = BUSYBOX.entry(cache, hash);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(BUSYBOX.binary), b"\x7fELF").expect("binary");
        let r = Record {
            version: BUSYBOX.version.into(),
            tarball_sha256: BUSYBOX.tarball_sha256.into(),
            hash: hash.into(),
            symbols: vec![],
            size: 4,
        };
        std::fs::write(
            dir.join(BUSYBOX.record()),
            serde_json::to_vec(&r).expect("json"),
        )
        .expect("record");
        dir
    }

    #[test]
    fn builds_are_listed_and_removed_unless_their_build_runs() {
        let d = tempfile::tempdir().expect("tmp");
        let cache = d.path();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let complete = entry(cache, &a);
        let incomplete = entry(cache, &b);
        std::fs::remove_file(incomplete.join(BUSYBOX.binary)).expect("rm");
        let root = cache.join(BUSYBOX.name);
        let failed = root.join("bb-cccccccccccccccc.failed.log");
        std::fs::write(&failed, "log").expect("log");
        // A build of key d runs: its lock is held and its folder is in use.
        let running = root.join(".tmp-bb-dddddddddddddddd-XyZ123");
        std::fs::create_dir(&running).expect("mkdir");
        let held = lock_file(&root, "bb-dddddddddddddddd").expect("lock");
        held.lock().expect("lock");

        let builds = crate::cached_builds(cache);
        let listed: Vec<(&Path, Option<&str>)> = builds
            .iter()
            .map(|b| (b.path.as_path(), b.identity.as_deref()))
            .collect();
        let identity = format!("kiln busybox {} musl {}", BUSYBOX.version, &a[..16]);
        assert_eq!(
            listed,
            [
                (running.as_path(), None),
                (complete.as_path(), Some(identity.as_str())),
                (incomplete.as_path(), None),
                (failed.as_path(), None),
            ]
        );
        for b in &builds {
            let removed = remove_build(cache, b).expect("remove");
            assert_eq!(removed, b.path != running, "{}", b.path.display());
        }
        assert!(running.is_dir() && !complete.exists() && !failed.exists());
        // Once its build is gone, a killed build's folder is swept under the key's lock.
        drop(held);
        let lock = lock_file(&root, "bb-dddddddddddddddd").expect("lock");
        lock.lock().expect("lock");
        sweep_killed(&root, "bb-dddddddddddddddd");
        assert!(!running.exists());
    }
}
