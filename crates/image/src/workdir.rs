//! A build's temporary folder beside its output (`.NAME.tmp-XXXXXX`), locked while its builder
//! lives: an flock on `.lock` inside it, held until the folder is dropped. A build that is
//! killed (Ctrl-C, SIGKILL, a crash) leaves its folder behind, unlocked; the next build of the
//! same output sweeps those folders and only those, never one a live build holds.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The lock file inside a work folder.
const LOCK: &str = ".lock";

/// A folder without a lock file (made by an older Kiln, or by a builder killed between making
/// the folder and locking it) counts as stale once it is this old.
const LOCKLESS_STALE_AFTER: Duration = Duration::from_secs(3600);

/// A temporary folder beside an output, locked while alive; removed when dropped.
#[derive(Debug)]
pub struct WorkDir {
    // Field order matters: the folder is removed before the lock is let go.
    dir: tempfile::TempDir,
    _lock: File,
}

impl WorkDir {
    /// Sweep the stale work folders of `out` (see [`sweep_stale`]), then make and lock a new
    /// one beside it (the parent folder is created if missing).
    pub fn beside(out: &Path) -> io::Result<WorkDir> {
        let parent = parent_of(out);
        fs::create_dir_all(&parent)?;
        sweep_stale(out);
        let dir = tempfile::Builder::new()
            .prefix(&prefix_of(out))
            .tempdir_in(&parent)?;
        // Locked before it gets its final name, so a sweeper never sees an unlocked `.lock` of
        // a live build.
        let fresh = dir.path().join(".lock.new");
        let lock = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&fresh)?;
        try_lock(&lock)?;
        fs::rename(&fresh, dir.path().join(LOCK))?;
        Ok(WorkDir { dir, _lock: lock })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Remove the work folders of `out` (`.NAME.tmp-*` beside it) whose builder is gone: their lock
/// is free (or, without a lock file, they are over an hour old). Best effort; returns the
/// folders removed.
pub fn sweep_stale(out: &Path) -> Vec<PathBuf> {
    let prefix = prefix_of(out);
    let Ok(entries) = fs::read_dir(parent_of(out)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name
            .as_encoded_bytes()
            .starts_with(prefix.as_encoded_bytes())
        {
            continue;
        }
        let path = entry.path();
        // Never follow a symlink: only real folders are ours to remove.
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            _ => continue,
        }
        // The lock, held while removing so no other sweeper works on the folder meanwhile.
        let held = match File::open(path.join(LOCK)) {
            Ok(lock) => match try_lock(&lock) {
                Ok(()) => Some(lock),
                Err(_) => continue,
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let old = fs::symlink_metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > LOCKLESS_STALE_AFTER);
                if !old {
                    continue;
                }
                None
            }
            Err(_) => continue,
        };
        if remove_tree(&path).is_ok() {
            removed.push(path);
        }
        drop(held);
    }
    removed
}

/// `.NAME.tmp-`: the prefix of `out`'s work folders.
fn prefix_of(out: &Path) -> OsString {
    let mut p = OsString::from(".");
    p.push(out.file_name().unwrap_or_default());
    p.push(".tmp-");
    p
}

fn parent_of(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// An exclusive flock, without waiting.
fn try_lock(f: &File) -> io::Result<()> {
    // SAFETY: flock(2) on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Remove a tree, making its folders writable first if a plain removal fails (a build hook may
/// have left read-only folders).
fn remove_tree(path: &Path) -> io::Result<()> {
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o700));
        }
    }
    fs::remove_dir_all(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn stale_folders_are_swept_live_ones_kept() {
        let d = tempfile::tempdir().expect("tmp");
        let out = d.path().join("img");
        // A live build of the same output, one of another output, and one whose builder died
        // (its lock file is there, nobody holds it), with a read-only folder inside.
        let live = WorkDir::beside(&out).expect("work");
        let other = WorkDir::beside(&d.path().join("img2")).expect("work");
        let dead = d.path().join(".img.tmp-dead01");
        fs::create_dir_all(dead.join("root/ro/x")).expect("mkdir");
        fs::write(dead.join(LOCK), "").expect("lock");
        fs::set_permissions(dead.join("root/ro"), fs::Permissions::from_mode(0o500))
            .expect("chmod");
        // A young folder without a lock (a builder between mkdir and lock): kept.
        let young = d.path().join(".img.tmp-young1");
        fs::create_dir(&young).expect("mkdir");
        // Not ours: a file with the prefix, and a symlink to a folder.
        fs::write(d.path().join(".img.tmp-file"), "").expect("w");
        let elsewhere = tempfile::tempdir().expect("tmp");
        fs::write(elsewhere.path().join(LOCK), "").expect("w");
        std::os::unix::fs::symlink(elsewhere.path(), d.path().join(".img.tmp-link")).expect("ln");

        let next = WorkDir::beside(&out).expect("work");
        assert!(!dead.exists(), "the dead build's folder is swept");
        assert!(live.path().is_dir() && other.path().is_dir() && young.is_dir());
        assert!(elsewhere.path().join(LOCK).exists());
        assert!(d.path().join(".img.tmp-file").exists());
        assert_eq!(
            sweep_stale(&out),
            Vec::<PathBuf>::new(),
            "nothing else is stale"
        );

        // Dropped: removed, and its lock let go with it.
        let (live_path, next_path) = (live.path().to_path_buf(), next.path().to_path_buf());
        drop(live);
        drop(next);
        assert!(!live_path.exists() && !next_path.exists());
        let left = names(d.path());
        assert!(
            left.iter().all(|n| !n.starts_with(".img.tmp-")
                || n == ".img.tmp-file"
                || n == ".img.tmp-link"
                || n == ".img.tmp-young1"),
            "{left:?}"
        );
        drop(other);
    }

    #[test]
    fn a_build_killed_with_its_folder_locked_is_swept_once_it_is_gone() {
        let d = tempfile::tempdir().expect("tmp");
        let out = d.path().join("img");
        // Another process holds the folder's lock as a builder does, and is killed.
        let work = d.path().join(".img.tmp-child1");
        fs::create_dir(&work).expect("mkdir");
        fs::write(work.join(LOCK), "").expect("w");
        let mut child = std::process::Command::new("flock")
            .arg("--no-fork")
            .arg(work.join(LOCK))
            .args(["sleep", "60"])
            .spawn()
            .expect("flock(1)");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // Until it holds the lock (a lock we get is let go when the file is dropped).
        while try_lock(&File::open(work.join(LOCK)).expect("open")).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "flock(1) never took the lock"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(sweep_stale(&out), Vec::<PathBuf>::new(), "held: kept");
        assert!(work.exists());
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert_eq!(sweep_stale(&out), vec![work.clone()], "its builder is gone");
        assert!(!work.exists());
    }
}
