//! Atomic file replacement: write into a temporary file in the destination's
//! directory, fsync it, then rename it over the destination. A failure at any
//! point removes the temporary file and leaves the destination untouched.

use std::ffi::OsString;
use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Mode given to a newly created destination (an existing one keeps its mode).
const NEW_FILE_MODE: u32 = 0o644;

/// Write `data` to `dest` atomically: a temporary file in the same directory
/// is written, fsynced and renamed over `dest`, then the directory is fsynced.
/// On error no temporary file is left behind and `dest` is unchanged. A new
/// file gets mode 0644; replacing an existing file keeps that file's mode.
pub fn atomic_write(dest: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = temp_beside(dest)?;
    tmp.write_all(data)?;
    persist(tmp, dest)
}

/// Directory `dest` lives in (`.` for a bare file name).
fn parent_dir(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Create a temporary file next to `dest`, named `.<name>.<random>.tmp`; it is
/// deleted when dropped unless [`persist`]ed.
pub(crate) fn temp_beside(dest: &Path) -> io::Result<NamedTempFile> {
    let name = dest.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", dest.display()),
        )
    })?;
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(parent_dir(dest))
}

/// fsync `tmp`, give it its final mode, rename it to `dest` and fsync the directory.
pub(crate) fn persist(tmp: NamedTempFile, dest: &Path) -> io::Result<()> {
    let mode = match fs::metadata(dest) {
        Ok(meta) if meta.is_file() => meta.permissions().mode() & 0o7777,
        _ => NEW_FILE_MODE,
    };
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    // Make the rename itself durable. Some filesystems refuse to fsync a
    // directory; the data is already in place, so that is not an error.
    if let Ok(dir) = File::open(parent_dir(dest)) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Exchange `a` and `b`, two existing paths on one filesystem, in one step (renameat2 with
/// RENAME_EXCHANGE): there is no moment at which either name is missing, so a process killed
/// meanwhile leaves each name on the old entry or the new one. An error of kind
/// [`io::ErrorKind::Unsupported`] when the filesystem or kernel cannot exchange.
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two NUL-terminated paths that outlive the call, which only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
            Err(io::Error::new(io::ErrorKind::Unsupported, e))
        }
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("out.bin");
        atomic_write(&dest, b"one").expect("write");
        assert_eq!(fs::read(&dest).expect("read"), b"one");
        let mode = fs::metadata(&dest).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        fs::set_permissions(&dest, Permissions::from_mode(0o600)).expect("chmod");
        atomic_write(&dest, b"two").expect("write");
        assert_eq!(fs::read(&dest).expect("read"), b"two");
        let mode = fs::metadata(&dest).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [OsString::from("out.bin")]);
    }

    #[test]
    fn failure_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Destination is an existing non-empty directory: the rename fails.
        let dest = dir.path().join("sub");
        fs::create_dir(&dest).expect("mkdir");
        fs::write(dest.join("keep"), b"k").expect("write");
        assert!(atomic_write(&dest, b"data").is_err());
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [OsString::from("sub")]);
        // Missing parent directory.
        assert!(atomic_write(&dir.path().join("nope/x"), b"data").is_err());
    }

    #[test]
    fn exchange_swaps_two_folders_in_one_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).expect("mkdir");
        fs::create_dir(&b).expect("mkdir");
        fs::write(a.join("new"), b"n").expect("write");
        fs::write(b.join("old"), b"o").expect("write");
        match exchange(&a, &b) {
            Ok(()) => {
                assert!(b.join("new").is_file() && a.join("old").is_file());
            }
            // A filesystem that cannot exchange (the caller falls back to two renames).
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}"),
        }
        assert!(exchange(&a, &dir.path().join("missing")).is_err());
    }
}
