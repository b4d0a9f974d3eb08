//! The rootfs mounts of a create request (an overlay of the snapshotter's layers, or a bind
//! mount), done with mount(2) here: the `containerd-shim` crate's helper forks and waits for
//! the child through its reaper, which this shim turns off (QEMU is its child, waited for by
//! kiln-fleet).

use std::ffi::CString;
use std::path::Path;

/// A mount failed.
#[derive(Debug, thiserror::Error)]
#[error("mounting {source_} ({fs_type}) on {target}: {error}")]
pub struct MountError {
    source_: String,
    fs_type: String,
    target: String,
    error: std::io::Error,
}

/// mount(2) flags for the options that are flags; the rest is the filesystem's data.
fn split_options(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in options {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match o.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "relatime" => (libc::MS_RELATIME, 0),
            "noatime" => (libc::MS_NOATIME, 0),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            _ => {
                data.push(o.as_str());
                continue;
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, data.join(","))
}

/// Mount `source` (of `fs_type`, with containerd's `options`) on `target`.
pub fn mount(
    fs_type: &str,
    source: &str,
    options: &[String],
    target: &Path,
) -> Result<(), MountError> {
    let err = |error: std::io::Error| MountError {
        source_: source.to_string(),
        fs_type: fs_type.to_string(),
        target: target.display().to_string(),
        error,
    };
    let (flags, data) = split_options(options);
    let bad = |_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    let c_source = CString::new(source).map_err(bad)?;
    let c_target = CString::new(target.as_os_str().as_encoded_bytes()).map_err(bad)?;
    let c_type = CString::new(if fs_type.is_empty() { "none" } else { fs_type }).map_err(bad)?;
    let c_data = CString::new(data).map_err(bad)?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c_target.as_ptr(),
            c_type.as_ptr(),
            flags,
            c_data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Unmount `path` if something is mounted there (lazily: a reader may linger).
pub fn unmount(path: &Path) {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_split_from_the_filesystems_data() {
        let o: Vec<String> = ["index=off", "ro", "lowerdir=/a:/b", "rbind", "nosuid"]
            .into_iter()
            .map(String::from)
            .collect();
        let (flags, data) = split_options(&o);
        assert_eq!(
            flags,
            libc::MS_RDONLY | libc::MS_BIND | libc::MS_REC | libc::MS_NOSUID
        );
        assert_eq!(data, "index=off,lowerdir=/a:/b");
    }
}
