//! Run-time extras the host asks for on the kernel command line: host
//! folders to mount (`kiln.share=TAG:PATH[:virtiofs|9p]`), named
//! virtio-console ports to wait for and link under `/dev/virtio-ports/`
//! (`kiln.vport=NAME`, as udev would), a read-only root (`kiln.ro`), and the
//! tmpfs overlay over a read-only compressed root (erofs, squashfs).
//! Failures are warnings: the service still starts.

use crate::{report, sys};

/// A parsed `kiln.share` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share<'a> {
    /// The mount tag.
    pub tag: &'a str,
    /// Absolute mount point in the guest.
    pub path: &'a str,
    /// `virtiofs` (default) or `9p`.
    pub fstype: &'a str,
}

/// Parse `TAG:PATH[:FSTYPE]`.
pub fn parse_share(v: &str) -> Option<Share<'_>> {
    let (tag, rest) = v.split_once(':')?;
    let (path, fstype) = match rest.rsplit_once(':') {
        Some((p, t)) if t == "virtiofs" || t == "9p" => (p, t),
        _ => (rest, "virtiofs"),
    };
    (!tag.is_empty() && path.starts_with('/')).then_some(Share { tag, path, fstype })
}

fn warn(parts: &[&str]) {
    let mut l = report::Line::new().s("warning: ");
    for p in parts {
        l = l.s(p);
    }
    sys::emit(&l.finish());
}

/// Mount every share; a failure is a warning naming the tag and the error.
pub fn mount_shares(values: &[String]) {
    for v in values {
        let Some(sh) = parse_share(v) else {
            warn(&[
                "kiln.share: cannot parse \"",
                v,
                "\" (TAG:/PATH[:virtiofs|9p])",
            ]);
            continue;
        };
        let _ = std::fs::create_dir_all(sh.path);
        let data = if sh.fstype == "9p" {
            "trans=virtio,version=9p2000.L"
        } else {
            ""
        };
        if let Err(e) = sys::mount(sh.tag, sh.path, sh.fstype, 0, data) {
            warn(&["share ", sh.tag, " on ", sh.path, ": ", &sys::strerror(e)]);
        }
    }
}

/// Given `(device, name)` pairs of the virtio ports, the links to make:
/// `(target, link)` for each wanted name present.
pub fn port_links(ports: &[(String, String)], wanted: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for w in wanted {
        if let Some((dev, _)) = ports.iter().find(|(_, n)| n.trim() == w) {
            let mut target = String::from("../");
            target.push_str(dev);
            let mut link = String::from("/dev/virtio-ports/");
            link.push_str(w);
            out.push((target, link));
        }
    }
    out
}

fn scan_ports() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/class/virtio-ports") {
        for e in dir.flatten() {
            let dev = e.file_name().to_string_lossy().into_owned();
            let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
            out.push((dev, name));
        }
    }
    out
}

/// Wait (up to `timeout_ms`) until every wanted port has a name, then link them.
pub fn link_vports(wanted: &[String], timeout_ms: u64) {
    if wanted.is_empty() {
        return;
    }
    let deadline = sys::boottime_ms() + timeout_ms;
    let links = loop {
        let links = port_links(&scan_ports(), wanted);
        if links.len() == wanted.len() || sys::boottime_ms() >= deadline {
            break links;
        }
        sys::sleep_ms(5);
    };
    let _ = std::fs::create_dir_all("/dev/virtio-ports");
    for (target, link) in &links {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    for w in wanted {
        if !links.iter().any(|(_, l)| l.ends_with(w.as_str())) {
            warn(&["virtio port ", w, " did not appear"]);
        }
    }
}

/// Make `/` read-only (a read-only bind remount works for the initramfs root).
pub fn readonly_root() {
    let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
    if let Err(e) = sys::mount("none", "/", "", flags, "") {
        warn(&["read-only root: ", &sys::strerror(e)]);
    }
}

/// The folder a read-only compressed root (`format = "erofs" | "squashfs"`) is built with:
/// its tmpfs holds the overlay's writable layer and the overlay's mount point.
pub const OVERLAY_DIR: &str = "/.kiln-rw";

/// If `/` is a read-only root built with [`OVERLAY_DIR`], lay a tmpfs overlay over it and make
/// the overlay the root, so the service can write (writes live in RAM and end with the VM).
/// Runs first, before anything is mounted on the old root. `Ok(false)`: nothing to do.
pub fn overlay_root() -> Result<bool, String> {
    if sys::writable("/") || !std::path::Path::new(OVERLAY_DIR).is_dir() {
        return Ok(false);
    }
    let fail = |what: &str, e: sys::Errno| {
        let mut m = String::from(what);
        m.push_str(": ");
        m.push_str(&sys::strerror(e));
        m
    };
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    sys::mount("tmpfs", OVERLAY_DIR, "tmpfs", flags, "mode=0755")
        .map_err(|e| fail("tmpfs on /.kiln-rw", e))?;
    for d in ["upper", "work", "root"] {
        let mut p = String::from(OVERLAY_DIR);
        p.push('/');
        p.push_str(d);
        std::fs::create_dir(&p).map_err(|e| {
            let mut m = p.clone();
            m.push_str(": ");
            m.push_str(&sys::io_error_text(&e));
            m
        })?;
    }
    sys::mount(
        "overlay",
        "/.kiln-rw/root",
        "overlay",
        0,
        "lowerdir=/,upperdir=/.kiln-rw/upper,workdir=/.kiln-rw/work",
    )
    .map_err(|e| fail("overlay", e))?;
    // switch_root's dance: move the overlay onto / and make it this process's root.
    std::env::set_current_dir("/.kiln-rw/root").map_err(|e| sys::io_error_text(&e))?;
    sys::mount(".", "/", "", libc::MS_MOVE, "").map_err(|e| fail("move overlay to /", e))?;
    std::os::unix::fs::chroot(".").map_err(|e| sys::io_error_text(&e))?;
    std::env::set_current_dir("/").map_err(|e| sys::io_error_text(&e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares() {
        assert_eq!(
            parse_share("s0:/mnt/a"),
            Some(Share {
                tag: "s0",
                path: "/mnt/a",
                fstype: "virtiofs"
            })
        );
        assert_eq!(parse_share("s1:/b:9p").map(|s| s.fstype), Some("9p"));
        assert_eq!(parse_share("s1:/b:c").map(|s| s.path), Some("/b:c"));
        assert_eq!(parse_share("s0:relative"), None);
        assert_eq!(parse_share(":/x"), None);
        assert_eq!(parse_share("nocolon"), None);
    }

    #[test]
    fn links() {
        let ports = vec![
            ("vport0p1".to_string(), "org.kiln.control\n".to_string()),
            ("vport0p2".to_string(), "data\n".to_string()),
        ];
        assert_eq!(
            port_links(&ports, &["data".to_string(), "missing".to_string()]),
            vec![(
                "../vport0p2".to_string(),
                "/dev/virtio-ports/data".to_string()
            )]
        );
    }
}
