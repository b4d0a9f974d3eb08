//! Read-only root images of a staging tree (`[image] format = "erofs" | "squashfs"`) and the
//! qcow2 form of a raw disk image (`format = "qcow2"`). Debian's tools do the work:
//! `mkfs.erofs` (erofs-utils, lz4hc), `mksquashfs` (squashfs-tools, zstd) and `qemu-img`
//! (qemu-utils). None needs root: every file is stored as owned by root (squashfs gives the
//! paths of [`crate::Owners`] theirs; mkfs.erofs 1.5 has no way to), and every timestamp
//! (and the erofs UUID) is fixed, so the same tree gives the same bytes whatever its files'
//! own times. Each tool writes into a [`WorkDir`] beside the destination, which is renamed
//! into place only when the tool succeeded; on any failure the folder is removed and the
//! destination is left as it was.
//!
//! This module also holds what the ISO writer ([`crate::iso`]) shares: [`ImageStats`], the
//! tool runner and the work-folder handling.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{ImageError, Owners, WorkDir};

/// What a read-only root / qcow2 / ISO writer produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageStats {
    /// Files, directories, links (and any other entries) of the tree, root included; 0 for
    /// qcow2 and ISO images.
    pub entries: usize,
    /// Apparent bytes of the tree's regular files; for qcow2 the raw image's size, for an ISO
    /// the bytes of the files staged on it (boot loader, config, kernel, initrd).
    pub used_bytes: u64,
    /// Size of the image written.
    pub size_bytes: u64,
    /// Lowercase hex SHA-256 of the image written.
    pub sha256: String,
}

/// A program a writer runs, and the Debian package that has it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tool {
    pub(crate) program: &'static str,
    pub(crate) package: &'static str,
}

const MKFS_EROFS: Tool = Tool {
    program: "mkfs.erofs",
    package: "erofs-utils",
};
const MKSQUASHFS: Tool = Tool {
    program: "mksquashfs",
    package: "squashfs-tools",
};
const QEMU_IMG: Tool = Tool {
    program: "qemu-img",
    package: "qemu-utils",
};

/// The latest time squashfs (and Kiln's ISO) can record: its timestamps are 32-bit unsigned.
pub(crate) const MAX_TIME_32: u64 = u32::MAX as u64;

/// How many lines of a failing tool's stderr go into the error.
const TAIL_LINES: usize = 20;
/// ... and at most how many bytes.
const TAIL_BYTES: usize = 2000;

/// Write `staging` as an erofs image (lz4hc, no xattrs, every file root's, every timestamp
/// `mtime`, filesystem UUID `uuid`) at `dest`, atomically. The staging tree is not modified.
/// Debian 12's mkfs.erofs (1.5) sets owners only all at once, so owners other than root's
/// cannot be kept: the caller says so.
pub fn write_erofs(
    staging: &Path,
    mtime: u64,
    uuid: &str,
    dest: &Path,
) -> Result<ImageStats, ImageError> {
    erofs_with(MKFS_EROFS, staging, mtime, uuid, dest)
}

fn erofs_with(
    tool: Tool,
    staging: &Path,
    mtime: u64,
    uuid: &str,
    dest: &Path,
) -> Result<ImageStats, ImageError> {
    if !valid_uuid(uuid) {
        return Err(ImageError::InvalidUuid {
            uuid: uuid.to_string(),
        });
    }
    let (entries, used) = scan_tree(staging)?;
    let work = work_beside(dest)?;
    let image = work.path().join("root.erofs");
    let mut cmd = Command::new(tool.program);
    // Xattrs stay out, as in squashfs and the initramfs: a builder's SELinux labels or
    // user.* attributes would otherwise make the image depend on the machine.
    cmd.args(["--quiet", "-zlz4hc", "-x-1", "--all-root"])
        .arg(format!("-T{mtime}"))
        .arg(format!("-U{uuid}"))
        .arg(plain_arg(&image))
        .arg(plain_arg(staging));
    run(tool, cmd, work.path(), dest)?;
    finish(&image, dest, entries, used)
}

/// Write `staging` as a squashfs image (zstd, no xattrs, every file root's but the paths of
/// `owners`, every timestamp and the filesystem's own `mtime`) at `dest`, atomically. The
/// staging tree is not modified.
pub fn write_squashfs(
    staging: &Path,
    mtime: u64,
    owners: &Owners,
    dest: &Path,
) -> Result<ImageStats, ImageError> {
    squashfs_with(MKSQUASHFS, staging, mtime, owners, dest)
}

fn squashfs_with(
    tool: Tool,
    staging: &Path,
    mtime: u64,
    owners: &Owners,
    dest: &Path,
) -> Result<ImageStats, ImageError> {
    if mtime > MAX_TIME_32 {
        return Err(ImageError::TimeOutOfRange {
            format: "squashfs",
            mtime,
            max: MAX_TIME_32,
        });
    }
    let (entries, used) = scan_tree(staging)?;
    let work = work_beside(dest)?;
    let image = work.path().join("root.squashfs");
    let mut cmd = Command::new(tool.program);
    cmd.arg(plain_arg(staging))
        .arg(plain_arg(&image))
        .args(["-quiet", "-no-progress", "-noappend", "-reproducible"])
        .args(["-comp", "zstd", "-no-xattrs"])
        .arg("-mkfs-time")
        .arg(mtime.to_string())
        .arg("-all-time")
        .arg(mtime.to_string());
    if owners.is_empty() {
        cmd.arg("-all-root");
    } else {
        // -all-root would win over the pseudo file: instead every entry is given its owner
        // (root's unless `owners` names another) and its own mode.
        let pseudo = work.path().join("owners.pseudo");
        std::fs::write(&pseudo, owner_definitions(staging, owners)?).map_err(|error| {
            ImageError::Write {
                path: pseudo.clone(),
                error,
            }
        })?;
        cmd.args(["-root-uid", "0", "-root-gid", "0", "-pf"])
            .arg(plain_arg(&pseudo));
    }
    run(tool, cmd, work.path(), dest)?;
    finish(&image, dest, entries, used)
}

/// mksquashfs pseudo definitions (`"path" m MODE UID GID`) for every entry under `staging` but
/// the root.
fn owner_definitions(staging: &Path, owners: &Owners) -> Result<String, ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = String::new();
    for e in crate::tree::walk(staging, false).skip(1) {
        let e = e?;
        let rel = e.path().strip_prefix(staging).unwrap_or(e.path());
        let Some(name) = rel.to_str().filter(|r| !r.contains('\n')) else {
            return Err(ImageError::InvalidPath {
                path: e.path().to_string_lossy().into_owned(),
                reason: "a squashfs path with owners must be UTF-8 without newlines",
            });
        };
        let mode = crate::tree::metadata(&e)?.permissions().mode() & 0o7777;
        let (uid, gid) = owners.get(rel).copied().unwrap_or((0, 0));
        let quoted = name.replace('\\', "\\\\").replace('"', "\\\"");
        out.push_str(&format!("\"{quoted}\" m {mode:o} {uid} {gid}\n"));
    }
    Ok(out)
}

/// Convert the raw disk image `raw` (e.g. the ext4 image [`write_disk`](crate::write_disk)
/// made) to a compressed qcow2 image at `dest`, atomically. qemu-img writes the clusters in
/// order, so the same raw image gives the same qcow2 bytes.
pub fn write_qcow2(raw: &Path, dest: &Path) -> Result<ImageStats, ImageError> {
    qcow2_with(QEMU_IMG, raw, dest)
}

fn qcow2_with(tool: Tool, raw: &Path, dest: &Path) -> Result<ImageStats, ImageError> {
    let meta = std::fs::metadata(raw).map_err(|error| ImageError::ReadStaging {
        path: raw.to_path_buf(),
        error,
    })?;
    if !meta.is_file() {
        return Err(ImageError::ReadStaging {
            path: raw.to_path_buf(),
            error: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    let work = work_beside(dest)?;
    let image = work.path().join("disk.qcow2");
    let mut cmd = Command::new(tool.program);
    // `-f raw`: never probe the input's format (a raw image holding a qcow2 header would
    // otherwise be read as one).
    cmd.args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(plain_arg(raw))
        .arg(plain_arg(&image));
    run(tool, cmd, work.path(), dest)?;
    finish(&image, dest, 0, meta.len())
}

/// Whether `uuid` is in the 8-4-4-4-12 hex form mkfs.erofs accepts.
fn valid_uuid(uuid: &str) -> bool {
    let groups: Vec<&str> = uuid.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Check that `staging` is a directory and count its entries (root included) and the
/// apparent bytes of its regular files. Links are not followed.
pub(crate) fn scan_tree(staging: &Path) -> Result<(usize, u64), ImageError> {
    crate::tree::require_dir(staging, std::fs::metadata(staging))?;
    let mut entries = 0;
    let mut used = 0u64;
    for e in crate::tree::walk(staging, false) {
        let e = e?;
        entries += 1;
        if e.file_type().is_file() {
            used += crate::tree::metadata(&e)?.len();
        }
    }
    Ok((entries, used))
}

/// A locked work folder beside `dest` (`.NAME.tmp-*`, swept by later builds if this one is
/// killed), removed when dropped.
pub(crate) fn work_beside(dest: &Path) -> Result<WorkDir, ImageError> {
    if dest.file_name().is_none() {
        return Err(ImageError::Write {
            path: dest.to_path_buf(),
            error: io::Error::new(io::ErrorKind::InvalidInput, "does not name a file"),
        });
    }
    WorkDir::beside(dest).map_err(|error| ImageError::Write {
        path: dest.to_path_buf(),
        error,
    })
}

/// A path as a program argument that cannot be taken for an option (`-x` becomes `./-x`).
pub(crate) fn plain_arg(path: &Path) -> OsString {
    if path.as_os_str().as_encoded_bytes().starts_with(b"-") {
        Path::new(".").join(path).into_os_string()
    } else {
        path.as_os_str().to_os_string()
    }
}

/// Run `cmd` (the program of `tool`) in the C locale with temporary files in `work`; a
/// program that is missing or fails becomes an error naming it (and, when missing, its
/// Debian package) and, when it failed, the tail of what it said.
pub(crate) fn run(
    tool: Tool,
    mut cmd: Command,
    work: &Path,
    dest: &Path,
) -> Result<(), ImageError> {
    // mksquashfs refuses SOURCE_DATE_EPOCH beside its own time options and mkfs.erofs would
    // clamp rather than fix times by it: the callers pass the times they mean explicitly.
    if cmd.get_envs().all(|(k, _)| k != "SOURCE_DATE_EPOCH") {
        cmd.env_remove("SOURCE_DATE_EPOCH");
    }
    cmd.env("LC_ALL", "C").env("TMPDIR", work);
    let out = cmd.output().map_err(|error| ImageError::Tool {
        tool: tool.program,
        package: tool.package,
        error,
    })?;
    if out.status.success() {
        return Ok(());
    }
    let said = if out.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        &out.stderr
    } else {
        &out.stdout
    };
    Err(ImageError::ToolFailed {
        tool: tool.program,
        path: dest.to_path_buf(),
        detail: format!("{} ({})", tail(&String::from_utf8_lossy(said)), out.status),
    })
}

/// The last lines of a tool's message, without a usage text it printed after its error.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| {
            let l = l.trim_start().to_ascii_lowercase();
            !(l.starts_with("usage:") || l.starts_with("syntax:"))
        })
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let mut s = lines[lines.len().saturating_sub(TAIL_LINES)..].join("; ");
    if s.len() > TAIL_BYTES {
        let mut cut = s.len() - TAIL_BYTES;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s = format!("...{}", &s[cut..]);
    }
    if s.is_empty() {
        s = "no message".to_string();
    }
    s
}

/// fsync and hash `image` (a file in the work folder beside `dest`), give it mode 0644 and
/// rename it to `dest`, then fsync the destination's folder.
pub(crate) fn finish(
    image: &Path,
    dest: &Path,
    entries: usize,
    used_bytes: u64,
) -> Result<ImageStats, ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let write_err = |error: io::Error| ImageError::Write {
        path: dest.to_path_buf(),
        error,
    };
    let mut f = std::fs::File::open(image).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    let mut hasher = Sha256::new();
    let size_bytes = io::copy(&mut f, &mut hasher).map_err(write_err)?;
    std::fs::set_permissions(image, std::fs::Permissions::from_mode(0o644)).map_err(write_err)?;
    std::fs::rename(image, dest).map_err(write_err)?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Make the rename durable; a filesystem that cannot fsync a folder is not an error.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(ImageStats {
        entries,
        used_bytes,
        size_bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    const T: u64 = 1_700_000_000;
    const UUID: &str = "6b696c6e-0000-4000-8000-000000000001";

    /// Fail (not skip) when a tool the writers need is missing: CI installs them.
    pub(crate) fn need(program: &str, package: &str) {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "{program} is missing: install {package} (scripts/setup.sh does)"
        );
    }

    /// Set the times of a path (not following links).
    pub(crate) fn touch(path: &Path, secs: u64) {
        let out = Command::new("touch")
            .args(["-h", "-d"])
            .arg(format!("@{secs}"))
            .arg(path)
            .output()
            .expect("touch");
        assert!(out.status.success(), "touch {}", path.display());
    }

    /// Names of the entries in `dir`.
    pub(crate) fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A small root tree, its entries made in an order and with times given by `variant`.
    fn tree(at: &Path, variant: u64) {
        std::fs::create_dir_all(at).expect("mkdir");
        let mut steps: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| {
                std::fs::create_dir_all(at.join("etc")).expect("mkdir");
                std::fs::write(at.join("etc/rc"), "echo hi\n").expect("w");
                std::fs::write(at.join("etc/hostname"), "kiln\n").expect("w");
            }),
            Box::new(|| {
                std::fs::create_dir_all(at.join("bin")).expect("mkdir");
                let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
                std::fs::write(at.join("bin/big"), text).expect("w");
                let tool = at.join("bin/tool");
                std::fs::write(&tool, [0x7f, b'E', b'L', b'F', 2, 1, 1]).expect("w");
                std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
            }),
            Box::new(|| std::os::unix::fs::symlink("etc/rc", at.join("rc")).expect("ln")),
            Box::new(|| std::fs::create_dir_all(at.join("var/empty")).expect("mkdir")),
        ];
        if variant % 2 == 1 {
            steps.reverse();
        }
        for s in steps {
            s();
        }
        std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for e in walkdir::WalkDir::new(at).contents_first(true) {
            let e = e.expect("walk");
            touch(
                e.path(),
                1_000_000_000 + variant * 12_345 + e.depth() as u64,
            );
        }
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            // As root, make a file someone else's, to see --all-root at work.
            std::os::unix::fs::lchown(at.join("etc/rc"), Some(1234), Some(1234)).expect("chown");
        }
    }

    /// Entries in the tree above: root, etc, etc/rc, etc/hostname, bin, bin/big, bin/tool,
    /// rc, var, var/empty.
    const ENTRIES: usize = 10;

    fn no_leftovers(dir: &Path, keep: &[&str]) {
        let left: Vec<String> = names(dir)
            .into_iter()
            .filter(|n| !keep.contains(&n.as_str()))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn erofs_is_reproducible_root_owned_and_readable() {
        need("mkfs.erofs", "erofs-utils");
        need("fsck.erofs", "erofs-utils");
        need("dump.erofs", "erofs-utils");
        let d = tempfile::tempdir().expect("tmp");
        tree(&d.path().join("t1"), 0);
        tree(&d.path().join("t2"), 1);
        let out = d.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        let a = write_erofs(&d.path().join("t1"), T, UUID, &out.join("a.erofs")).expect("erofs");
        let b = write_erofs(&d.path().join("t2"), T, UUID, &out.join("b.erofs")).expect("erofs");
        assert_eq!(
            a.sha256, b.sha256,
            "same tree, other times and order: same image"
        );
        assert_eq!(a.entries, ENTRIES);
        assert_eq!(a.used_bytes, b.used_bytes);
        assert!(a.used_bytes > 100_000, "{}", a.used_bytes);
        let size = std::fs::metadata(out.join("a.erofs")).expect("stat").len();
        assert_eq!(a.size_bytes, size);
        let mode = std::fs::metadata(out.join("a.erofs"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        eprintln!("erofs: {a:?}");
        no_leftovers(&out, &["a.erofs", "b.erofs"]);

        let other = write_erofs(
            &d.path().join("t1"),
            T,
            "6b696c6e-0000-4000-8000-000000000002",
            &out.join("c.erofs"),
        )
        .expect("erofs");
        assert_ne!(other.sha256, a.sha256, "the UUID is in the image");

        let dump = Command::new("dump.erofs")
            .arg("--path=/etc/rc")
            .arg(out.join("a.erofs"))
            .output()
            .expect("dump.erofs");
        let dump = String::from_utf8_lossy(&dump.stdout);
        assert!(dump.contains("Uid: 0   Gid: 0"), "{dump}");
        assert!(dump.contains("2023-11-14 22:13:20"), "fixed mtime: {dump}");
        let x = d.path().join("x");
        let fsck = Command::new("fsck.erofs")
            .arg(format!("--extract={}", x.display()))
            .arg(out.join("a.erofs"))
            .output()
            .expect("fsck.erofs");
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stderr)
        );
        assert_eq!(std::fs::read(x.join("etc/rc")).expect("read"), b"echo hi\n");
        assert_eq!(
            std::fs::read(x.join("bin/big")).expect("read"),
            std::fs::read(d.path().join("t1/bin/big")).expect("read")
        );
        assert_eq!(
            std::fs::read_link(x.join("rc")).expect("link"),
            Path::new("etc/rc")
        );
        assert!(x.join("var/empty").is_dir());
    }

    #[test]
    fn squashfs_is_reproducible_root_owned_and_readable() {
        need("mksquashfs", "squashfs-tools");
        need("unsquashfs", "squashfs-tools");
        let d = tempfile::tempdir().expect("tmp");
        tree(&d.path().join("t1"), 0);
        tree(&d.path().join("t2"), 1);
        let out = d.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        let a = write_squashfs(&d.path().join("t1"), T, &Owners::new(), &out.join("a.sqfs"))
            .expect("squashfs");
        let b = write_squashfs(&d.path().join("t2"), T, &Owners::new(), &out.join("b.sqfs"))
            .expect("squashfs");
        assert_eq!(
            a.sha256, b.sha256,
            "same tree, other times and order: same image"
        );
        assert_eq!(a.entries, ENTRIES);
        assert_eq!(
            a.size_bytes,
            std::fs::metadata(out.join("a.sqfs")).expect("stat").len()
        );
        eprintln!("squashfs: {a:?}");
        no_leftovers(&out, &["a.sqfs", "b.sqfs"]);
        let img = std::fs::read(out.join("a.sqfs")).expect("read");
        assert_eq!(&img[..4], b"hsqs", "squashfs magic");
        // Compression id (superblock offset 20, little-endian u16): 6 is zstd.
        assert_eq!(u16::from_le_bytes([img[20], img[21]]), 6, "zstd");

        let ls = Command::new("unsquashfs")
            .args(["-lln", "-d", "/r"])
            .arg(out.join("a.sqfs"))
            .output()
            .expect("unsquashfs");
        assert!(
            ls.status.success(),
            "{}",
            String::from_utf8_lossy(&ls.stderr)
        );
        let ls = String::from_utf8_lossy(&ls.stdout);
        let rc = ls
            .lines()
            .find(|l| l.ends_with("/r/etc/rc"))
            .expect("etc/rc listed");
        assert!(rc.starts_with("-rw-r--r-- 0/0 "), "{rc}");
        assert!(rc.contains("2023-11-14"), "fixed mtime: {rc}");
        assert!(ls.lines().any(|l| l.ends_with("/r/rc -> etc/rc")), "{ls}");
        let cat = Command::new("unsquashfs")
            .arg("-cat")
            .arg(out.join("a.sqfs"))
            .arg("etc/rc")
            .output()
            .expect("unsquashfs");
        assert_eq!(cat.stdout, b"echo hi\n");

        let err = write_squashfs(
            &d.path().join("t1"),
            1 << 32,
            &Owners::new(),
            &out.join("c.sqfs"),
        )
        .expect_err("time too late");
        assert!(matches!(err, ImageError::TimeOutOfRange { .. }), "{err}");

        // Owners other than root's, on a folder, a symlink and a file whose name needs quoting;
        // every other entry stays root's with its own mode.
        let t2 = d.path().join("t2");
        std::fs::write(t2.join("bin/we\"ird \\name"), "x").expect("w");
        let owners: Owners = [
            ("bin", (1001, 1002)),
            ("rc", (5, 6)),
            ("bin/we\"ird \\name", (3, 4)),
        ]
        .into_iter()
        .map(|(p, o)| (p.into(), o))
        .collect();
        let o1 = write_squashfs(&t2, T, &owners, &out.join("o1.sqfs")).expect("squashfs");
        let o2 = write_squashfs(&t2, T, &owners, &out.join("o2.sqfs")).expect("squashfs");
        assert_eq!(o1.sha256, o2.sha256, "owners keep the image reproducible");
        let ls = Command::new("unsquashfs")
            .args(["-lln", "-d", "/r"])
            .arg(out.join("o1.sqfs"))
            .output()
            .expect("unsquashfs");
        let ls = String::from_utf8_lossy(&ls.stdout);
        let line = |end: &str| -> String {
            ls.lines()
                .find(|l| l.ends_with(end))
                .unwrap_or_else(|| panic!("{end} not listed: {ls}"))
                .to_string()
        };
        for (end, start) in [
            ("/r", "drwxr-xr-x 0/0 "),
            ("/r/bin", "drwxr-xr-x 1001/1002 "),
            ("/r/bin/tool", "-rwxr-xr-x 0/0 "),
            ("/r/bin/we\"ird \\name", "-rw-r--r-- 3/4 "),
            ("/r/rc -> etc/rc", "lrwxrwxrwx 5/6 "),
            ("/r/etc/rc", "-rw-r--r-- 0/0 "),
        ] {
            let l = line(end);
            assert!(l.starts_with(start), "{end}: {l}");
        }
        std::fs::write(t2.join("bin/new\nline"), "x").expect("w");
        let err = write_squashfs(&t2, T, &owners, &out.join("o3.sqfs")).expect_err("newline");
        assert!(matches!(err, ImageError::InvalidPath { .. }), "{err}");
    }

    #[test]
    fn qcow2_is_reproducible_and_holds_the_raw_image() {
        need("qemu-img", "qemu-utils");
        let d = tempfile::tempdir().expect("tmp");
        let raw = d.path().join("disk.raw");
        // 8 MiB, mostly zeros, with text and incompressible bytes in places.
        let mut data = vec![0u8; 8 << 20];
        let text: Vec<u8> = (0..50_000)
            .flat_map(|i| format!("{i},").into_bytes())
            .collect();
        data[1 << 20..(1 << 20) + text.len()].copy_from_slice(&text);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for b in &mut data[5 << 20..6 << 20] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(&raw, &data).expect("w");
        let a = write_qcow2(&raw, &d.path().join("a.qcow2")).expect("qcow2");
        let b = write_qcow2(&raw, &d.path().join("b.qcow2")).expect("qcow2");
        assert_eq!(a.sha256, b.sha256, "same raw image, same qcow2");
        assert_eq!((a.entries, a.used_bytes), (0, 8 << 20));
        assert!(a.size_bytes < 3 << 20, "compressed: {}", a.size_bytes);
        eprintln!("qcow2: {a:?}");
        let img = std::fs::read(d.path().join("a.qcow2")).expect("read");
        assert_eq!(&img[..4], b"QFI\xfb", "qcow2 magic");
        let cmp = Command::new("qemu-img")
            .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
            .arg(&raw)
            .arg(d.path().join("a.qcow2"))
            .status()
            .expect("qemu-img compare");
        assert!(cmp.success(), "qcow2 holds the raw image");
        no_leftovers(d.path(), &["disk.raw", "a.qcow2", "b.qcow2"]);

        let err = write_qcow2(&d.path().join("nope.raw"), &d.path().join("c.qcow2"))
            .expect_err("missing raw");
        assert!(err.to_string().contains("nope.raw"), "{err}");
    }

    #[test]
    fn refusals_name_the_path_the_tool_and_its_package_and_leave_nothing() {
        let d = tempfile::tempdir().expect("tmp");
        let missing = d.path().join("no-such-staging");
        for err in [
            write_erofs(&missing, T, UUID, &d.path().join("a.erofs")).expect_err("missing"),
            write_squashfs(&missing, T, &Owners::new(), &d.path().join("a.sqfs"))
                .expect_err("missing"),
        ] {
            assert!(matches!(err, ImageError::StagingDir { .. }), "{err}");
            assert!(err.to_string().contains("no-such-staging"), "{err}");
        }
        let file = d.path().join("file");
        std::fs::write(&file, "x").expect("w");
        let err = write_squashfs(&file, T, &Owners::new(), &d.path().join("a.sqfs"))
            .expect_err("not a dir");
        assert!(matches!(err, ImageError::StagingDir { .. }), "{err}");

        let err = write_erofs(d.path(), T, "not-a-uuid", &d.path().join("a.erofs"))
            .expect_err("bad uuid");
        assert!(err.to_string().contains("not-a-uuid"), "{err}");

        let staging = d.path().join("tree");
        std::fs::create_dir(&staging).expect("mkdir");
        let gone = Tool {
            program: "mkfs.erofs-kiln-missing",
            package: "erofs-utils",
        };
        let err = erofs_with(gone, &staging, T, UUID, &d.path().join("a.erofs")).expect_err("tool");
        let msg = err.to_string();
        assert!(
            msg.contains("mkfs.erofs-kiln-missing") && msg.contains("erofs-utils"),
            "{msg}"
        );
        let gone = Tool {
            program: "qemu-img-kiln-missing",
            package: "qemu-utils",
        };
        let err = qcow2_with(gone, &file, &d.path().join("a.qcow2")).expect_err("tool");
        assert!(
            err.to_string().contains("install Debian's qemu-utils"),
            "{err}"
        );

        // A failing tool: the error says so, the old image is kept.
        std::fs::write(d.path().join("keep.qcow2"), "old").expect("w");
        let fails = Tool {
            program: "false",
            package: "coreutils",
        };
        let err = qcow2_with(fails, &file, &d.path().join("keep.qcow2")).expect_err("fails");
        assert!(matches!(err, ImageError::ToolFailed { .. }), "{err}");
        assert_eq!(
            std::fs::read(d.path().join("keep.qcow2")).expect("r"),
            b"old"
        );
        no_leftovers(d.path(), &["file", "tree", "keep.qcow2"]);
    }

    #[test]
    fn a_failing_tool_reports_its_stderr_tail() {
        need("mksquashfs", "squashfs-tools");
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(d.path().join("tree")).expect("mkdir");
        // mksquashfs on a source that is not there: it says so on stderr and fails.
        let mut cmd = Command::new("mksquashfs");
        cmd.arg(d.path().join("kiln-no-such-source"))
            .arg(d.path().join("x"));
        let err = run(MKSQUASHFS, cmd, d.path(), &d.path().join("x")).expect_err("fails");
        let msg = err.to_string();
        assert!(msg.starts_with("mksquashfs failed to make "), "{msg}");
        assert!(msg.contains("kiln-no-such-source"), "{msg}");
        assert!(msg.contains("exit status: 1"), "{msg}");
    }

    #[test]
    fn tails_are_short_and_drop_usage_texts() {
        assert_eq!(
            tail("<E> erofs: invalid UUID x\nusage: [options]\n -a b\n"),
            "<E> erofs: invalid UUID x"
        );
        let long: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&long);
        assert!(t.starts_with("line 80; ") && t.ends_with("line 99"), "{t}");
        assert!(tail(&"x".repeat(5000)).len() <= TAIL_BYTES + 3);
        assert_eq!(tail("\n \n"), "no message");
        assert_eq!(tail("SYNTAX:mksquashfs source1\n-tar\n"), "no message");
        assert!(valid_uuid(UUID) && !valid_uuid("6b696c6e00004000800000000000000001"));
        assert_eq!(plain_arg(Path::new("-x")), OsString::from("./-x"));
        assert_eq!(plain_arg(Path::new("/a/-x")), OsString::from("/a/-x"));
    }
}
