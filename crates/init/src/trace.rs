//! The file access tracer for `kiln trace`: on when the image has `/etc/kiln/trace`.
//!
//! fanotify (`FAN_CLASS_NOTIF`) marks the filesystem of `/` (falling back to the mount) for
//! `FAN_OPEN | FAN_OPEN_EXEC | FAN_ACCESS` on files and folders, so it sees every open, exec,
//! `dlopen` and read by any process, before or after rc starts. A thread reads the events,
//! resolves each event's descriptor with `readlink /proc/self/fd/N`, and prints every path the
//! first time it is seen:
//!
//! ```text
//! kiln: tracer on (fanotify, filesystem of /)
//! kiln: trace /usr/sbin/nginx
//! kiln: warning: trace: fanotify unavailable: REASON    (then nothing is traced)
//! ```
//!
//! Paths are real paths (symlinks resolved); the host adds the symlinks that lead to them.
//! `/proc`, `/sys`, `/dev`, `/tmp` and `/run` are other filesystems and are not traced.

use crate::{report, sys};
use std::collections::HashSet;

/// The file that turns the tracer on.
pub const MARKER: &str = "/etc/kiln/trace";

/// Start the tracer thread when the image asks for it. Never fatal.
pub fn start() {
    if std::fs::symlink_metadata(MARKER).is_err() {
        return;
    }
    // SAFETY: plain system call with constant arguments.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint,
        )
    };
    if fd < 0 {
        unavailable(&sys::strerror(sys::errno()));
        return;
    }
    let mask = libc::FAN_OPEN | libc::FAN_OPEN_EXEC | libc::FAN_ACCESS | libc::FAN_ONDIR;
    let mut how = "filesystem of /";
    if mark(fd, libc::FAN_MARK_FILESYSTEM, mask).is_err() {
        how = "mount of /";
        if let Err(e) = mark(fd, libc::FAN_MARK_MOUNT, mask) {
            unavailable(&sys::strerror(e));
            sys::close(fd);
            return;
        }
    }
    sys::emit(
        &report::Line::new()
            .s("tracer on (fanotify, ")
            .s(how)
            .s(")")
            .finish(),
    );
    let spawned = std::thread::Builder::new()
        .name("trace".into())
        .spawn(move || read_events(fd));
    if spawned.is_err() {
        unavailable("cannot start the tracer thread");
    }
}

fn unavailable(reason: &str) {
    sys::emit(
        &report::Line::new()
            .s("warning: trace: fanotify unavailable: ")
            .s(reason)
            .finish(),
    );
}

fn mark(fd: i32, how: libc::c_uint, mask: u64) -> Result<(), i32> {
    // SAFETY: the path is a NUL-terminated literal; fd is our fanotify descriptor.
    let r = unsafe {
        libc::fanotify_mark(
            fd,
            libc::FAN_MARK_ADD | how,
            mask,
            libc::AT_FDCWD,
            c"/".as_ptr(),
        )
    };
    if r < 0 {
        Err(sys::errno())
    } else {
        Ok(())
    }
}

/// The path to print for a resolved descriptor, or `None` to skip it.
pub fn printable(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.ends_with(" (deleted)") {
        return None;
    }
    Some(path.replace('\n', "?"))
}

fn read_events(fd: i32) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut buf = vec![0u8; 16 * 1024];
    let meta_len = std::mem::size_of::<libc::fanotify_event_metadata>();
    loop {
        // SAFETY: buf is a live, writable buffer of the given length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            if sys::errno() == libc::EINTR {
                continue;
            }
            return;
        }
        let n = n as usize;
        let mut off = 0;
        while off + meta_len <= n {
            // SAFETY: at least meta_len bytes are available at off; read_unaligned copes
            // with any alignment.
            let m: libc::fanotify_event_metadata =
                unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            if (m.event_len as usize) < meta_len {
                break;
            }
            if m.fd >= 0 {
                let link = format!("/proc/self/fd/{}", m.fd);
                if let Ok(p) = std::fs::read_link(&link) {
                    if let Some(p) = p.to_str().and_then(printable) {
                        if seen.insert(p.clone()) {
                            sys::emit(&report::Line::new().s("trace ").s(&p).finish());
                        }
                    }
                }
                sys::close(m.fd);
            }
            off += m.event_len as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_live_absolute_paths_are_printed() {
        assert_eq!(
            printable("/usr/sbin/nginx").as_deref(),
            Some("/usr/sbin/nginx")
        );
        assert_eq!(printable("/var/log/x.log (deleted)"), None);
        assert_eq!(printable("pipe:[1234]"), None);
        assert_eq!(printable("/a\nb").as_deref(), Some("/a?b"));
    }
}
