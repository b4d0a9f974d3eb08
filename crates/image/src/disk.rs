//! Disk images of a staging tree (`[image] format = "disk"`): ext4 for Linux roots too big to
//! keep in RAM, FFS (FFSv1/UFS1) for BSD guests. e2fsprogs' `mke2fs -d` or NetBSD's `makefs -t ffs`
//! copies the tree into a fresh filesystem; no root is needed: a non-root builder runs it in a
//! user namespace where it is uid 0 (`unshare --map-root-user`), so every file is owned by root
//! in the guest, as in the initramfs, but for the ext4 paths of [`DiskOptions::owners`], which
//! `debugfs` gives their owners afterwards. For ext4, timestamps, the UUID and the directory hash seed
//! are fixed, so the same tree gives the same image; FFS images differ in the superblock's
//! random filesystem id only.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::ImageError;

/// The filesystem of a disk image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskFs {
    /// ext4 without a journal (Linux guests).
    #[default]
    Ext4,
    /// FFSv1 / UFS1, little-endian (NetBSD and FreeBSD guests). Debian's makefs (2019) puts
    /// even an FFSv2 superblock at 8 KiB, where FreeBSD and Linux do not look for one; FFSv1's
    /// belongs there, and every BSD (and Linux's `ufstype=44bsd`) reads it.
    Ffs,
}

impl DiskFs {
    /// `ext4` or `ffs`.
    pub fn name(self) -> &'static str {
        match self {
            DiskFs::Ext4 => "ext4",
            DiskFs::Ffs => "ffs",
        }
    }
}

/// How to make the disk image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// The filesystem.
    pub fs: DiskFs,
    /// Size in MiB; `None`: the tree plus a quarter and 8 MiB of room.
    pub size_mib: Option<u32>,
    /// mtime (seconds since the epoch) of every file, and the filesystem's own times.
    pub mtime: u64,
    /// Filesystem UUID (also the directory hash seed), e.g. derived from the build fingerprint.
    pub uuid: String,
    /// Paths owned by someone other than root (ext4 only: BSD roots come from sets, all root's).
    pub owners: crate::Owners,
}

/// What [`write_disk`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskStats {
    /// Files, directories and links in the tree, root included.
    pub entries: usize,
    /// Bytes the tree needs on disk (4 KiB blocks).
    pub used_bytes: u64,
    /// Size of the disk image.
    pub size_bytes: u64,
    /// Lowercase hex SHA-256 of the image.
    pub sha256: String,
}

const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;

/// The size in MiB a tree of `used_bytes` in `inodes` entries gets by default.
pub fn default_size_mib(used_bytes: u64, inodes: usize) -> u64 {
    let with_inodes = used_bytes + inodes as u64 * 256;
    (with_inodes + with_inodes / 4).div_ceil(MIB) + 8
}

/// The smallest size in MiB that holds a tree of `used_bytes` in `inodes` entries.
pub fn minimum_size_mib(used_bytes: u64, inodes: usize) -> u64 {
    (used_bytes + inodes as u64 * 256).div_ceil(MIB) + 2
}

/// Write `staging` as an ext4 image (no journal, reserved blocks 0) at `dest`, atomically.
/// The staged files' timestamps are set to `opts.mtime` first.
pub fn write_disk(
    staging: &Path,
    opts: &DiskOptions,
    dest: &Path,
) -> Result<DiskStats, ImageError> {
    let (paths, used) = normalise_tree(staging, opts.mtime)?;
    let entries = paths.len();
    let minimum = minimum_size_mib(used, entries);
    let size_mib = match opts.size_mib {
        Some(s) if (s as u64) < minimum => {
            return Err(ImageError::DiskTooSmall {
                size_mib: s as u64,
                needed_mib: minimum,
            });
        }
        Some(s) => s as u64,
        None => default_size_mib(used, entries),
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    let write_err = |source: io::Error| ImageError::Write {
        path: dest.to_path_buf(),
        error: source,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-disk-")
        .tempfile_in(dir)
        .map_err(write_err)?;
    if opts.fs == DiskFs::Ffs {
        make_ffs(staging, opts.mtime, size_mib, tmp.path(), dest)?;
        return finish(tmp, dest, entries, used);
    }
    let mut cmd = as_root("mke2fs");
    cmd.args([
        "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
    ])
    .args(["-O", "^has_journal", "-L", "kiln-root", "-U", &opts.uuid])
    .arg("-E")
    .arg(format!("hash_seed={},root_owner=0:0", opts.uuid))
    .arg("-d")
    .arg(staging)
    .arg(tmp.path())
    .arg(format!("{size_mib}M"))
    .env("E2FSPROGS_FAKE_TIME", fake_time(opts.mtime))
    .env("LC_ALL", "C");
    let out = cmd.output().map_err(|source| ImageError::Tool {
        tool: "mke2fs",
        package: "e2fsprogs",
        error: source,
    })?;
    if !out.status.success() {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if detail.contains("Could not allocate") || detail.contains("No space left") {
            return Err(ImageError::DiskTooSmall {
                size_mib,
                needed_mib: size_mib + size_mib / 4 + 8,
            });
        }
        return Err(ImageError::Mkfs {
            path: dest.to_path_buf(),
            detail: format!("{} ({})", detail, out.status),
        });
    }
    // mke2fs copies each file's ctime, which no one can set: fix it afterwards, and give the
    // paths of other owners theirs.
    let mut script = String::new();
    for p in &paths {
        script.push_str(&format!("sif \"/{p}\" ctime @{}\n", opts.mtime));
        if let Some((uid, gid)) = opts.owners.get(Path::new(p)) {
            script.push_str(&format!("sif \"/{p}\" uid {uid}\nsif \"/{p}\" gid {gid}\n"));
        }
    }
    let script_file = d_script(dir, &script).map_err(write_err)?;
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(script_file.path())
        .arg(tmp.path())
        .env("E2FSPROGS_FAKE_TIME", fake_time(opts.mtime))
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| ImageError::Tool {
            tool: "debugfs",
            package: "e2fsprogs",
            error: source,
        })?;
    let complaints: Vec<&str> = std::str::from_utf8(&out.stderr)
        .unwrap_or("")
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !out.status.success() || !complaints.is_empty() {
        return Err(ImageError::Mkfs {
            path: dest.to_path_buf(),
            detail: format!("debugfs: {} ({})", complaints.join("; "), out.status),
        });
    }
    finish(tmp, dest, entries, used)
}

/// e2fsprogs' clock for the filesystem's own times (creation, last write, inodes' crtime).
/// 0 would mean "not set" to e2fsprogs, which then takes the real time, and the image would
/// differ from build to build: the epoch itself becomes its first second.
fn fake_time(mtime: u64) -> String {
    mtime.max(1).to_string()
}

/// `program`, run as uid 0: directly when we are root, else in a user namespace mapping us to
/// root (so the files it reads look root's and are stored so).
fn as_root(program: &str) -> Command {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        Command::new(program)
    } else {
        let mut c = Command::new("unshare");
        c.args(["--map-root-user", program]);
        c
    }
}

fn make_ffs(
    staging: &Path,
    mtime: u64,
    size_mib: u64,
    image: &Path,
    dest: &Path,
) -> Result<(), ImageError> {
    let out = as_root("makefs")
        .args(["-t", "ffs", "-B", "le", "-o", "version=1"])
        .arg("-T")
        .arg(mtime.to_string())
        .arg("-s")
        .arg(format!("{size_mib}m"))
        .arg(image)
        .arg(staging)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| ImageError::Tool {
            tool: "makefs",
            package: "makefs",
            error: source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if detail.contains("larger than the maxsize") || detail.contains("No space") {
        return Err(ImageError::DiskTooSmall {
            size_mib,
            needed_mib: size_mib + size_mib / 4 + 8,
        });
    }
    Err(ImageError::Mkfs {
        path: dest.to_path_buf(),
        detail: format!("makefs: {detail} ({})", out.status),
    })
}

/// Sync, hash and move the finished image into place.
fn finish(
    tmp: tempfile::NamedTempFile,
    dest: &Path,
    entries: usize,
    used: u64,
) -> Result<DiskStats, ImageError> {
    let write_err = |source: io::Error| ImageError::Write {
        path: dest.to_path_buf(),
        error: source,
    };
    tmp.as_file().sync_all().map_err(write_err)?;
    let mut hasher = Sha256::new();
    let mut f = std::fs::File::open(tmp.path()).map_err(write_err)?;
    let size_bytes = io::copy(&mut f, &mut hasher).map_err(write_err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(write_err)?;
    tmp.persist(dest).map_err(|e| write_err(e.error))?;
    Ok(DiskStats {
        entries,
        used_bytes: used,
        size_bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

fn d_script(dir: &Path, text: &str) -> io::Result<tempfile::NamedTempFile> {
    let mut f = tempfile::Builder::new()
        .prefix(".tmp-debugfs-")
        .tempfile_in(dir)?;
    io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(f)
}

/// Set every entry's atime and mtime to `mtime` (links themselves, not their targets); the
/// entries' paths relative to `staging` (root as ""), and the bytes they need.
fn normalise_tree(staging: &Path, mtime: u64) -> Result<(Vec<String>, u64), ImageError> {
    crate::tree::require_dir(staging, std::fs::symlink_metadata(staging))?;
    let mut paths = Vec::new();
    let mut used = 0u64;
    // Deepest first, so setting a directory's time is not undone by writing into it.
    for e in crate::tree::walk(staging, true) {
        let e = e?;
        let m = crate::tree::metadata(&e)?;
        let rel = e.path().strip_prefix(staging).unwrap_or(e.path());
        let rel = rel.to_str().filter(|r| !r.contains(['"', '\n']));
        let Some(rel) = rel else {
            return Err(ImageError::InvalidPath {
                path: e.path().to_string_lossy().into_owned(),
                reason: "a disk image path must be UTF-8 without double quotes or newlines",
            });
        };
        paths.push(rel.to_string());
        used += if m.is_file() {
            m.len().div_ceil(BLOCK) * BLOCK
        } else if m.is_dir() || (m.file_type().is_symlink() && m.len() > 59) {
            // A folder's block; a link target too long to live in the inode.
            BLOCK
        } else {
            0
        };
        set_times(e.path(), mtime)?;
    }
    Ok((paths, used))
}

fn set_times(path: &Path, mtime: u64) -> Result<(), ImageError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        ImageError::InvalidPath {
            path: path.to_string_lossy().into_owned(),
            reason: "contains a NUL byte",
        }
    })?;
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: a valid C string and two timespecs; the call does not keep the pointers.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(ImageError::ReadStaging {
            path: PathBuf::from(path),
            error: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_size_leaves_room_and_minimum_is_smaller() {
        assert_eq!(default_size_mib(0, 0), 8);
        let used = 40 * MIB;
        assert_eq!(default_size_mib(used, 0), 50 + 8);
        assert!(minimum_size_mib(used, 1000) < default_size_mib(used, 1000));
        assert_eq!(minimum_size_mib(used, 0), 42);
    }

    #[test]
    fn a_tree_becomes_an_ext4_image_and_a_too_small_size_is_refused() {
        if Command::new("mke2fs").arg("-V").output().is_err() {
            panic!("mke2fs (e2fsprogs) is missing: run scripts/setup.sh");
        }
        let d = tempfile::tempdir().expect("tmp");
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).expect("mkdir");
        std::fs::write(tree.join("etc/rc"), "echo hi\n").expect("w");
        std::fs::write(tree.join("big"), vec![7u8; 3 << 20]).expect("w");
        std::os::unix::fs::symlink("etc/rc", tree.join("rc")).expect("ln");
        let opts = DiskOptions {
            fs: DiskFs::Ext4,
            size_mib: None,
            mtime: 1_700_000_000,
            uuid: "6b696c6e-0000-4000-8000-000000000001".into(),
            owners: [("etc".into(), (1001, 70_000)), ("rc".into(), (5, 6))]
                .into_iter()
                .collect(),
        };
        let a = write_disk(&tree, &opts, &d.path().join("a.img")).expect("disk");
        for (path, want) in [("/etc", "1001 70000"), ("/rc", "5 6"), ("/etc/rc", "0 0")] {
            let o = Command::new("debugfs")
                .args(["-R", &format!("stat {path}")])
                .arg(d.path().join("a.img"))
                .output()
                .expect("debugfs");
            let text = String::from_utf8_lossy(&o.stdout);
            // "User:  1001   Group: 70000   Project: ..."
            let line = text
                .lines()
                .find(|l| l.contains("User:"))
                .expect("owner line");
            let ids: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(format!("{} {}", ids[1], ids[3]), want, "{path}: {line}");
        }
        assert_eq!(a.entries, 5, "root, etc, etc/rc, big, rc");
        assert_eq!(a.size_bytes, default_size_mib(a.used_bytes, 5) * MIB);
        let img = std::fs::read(d.path().join("a.img")).expect("read");
        assert_eq!(
            &img[1024 + 0x38..1024 + 0x3a],
            &[0x53, 0xef],
            "ext superblock magic"
        );
        assert_eq!(&img[1024 + 0x78..1024 + 0x80], b"kiln-roo", "volume label");
        let m = std::fs::symlink_metadata(tree.join("rc")).expect("stat");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(m.mtime(), 1_700_000_000, "link times normalised");

        let b = write_disk(&tree, &opts, &d.path().join("b.img")).expect("disk");
        assert_eq!(a.sha256, b.sha256, "same tree, same image");

        let small = DiskOptions {
            size_mib: Some(2),
            ..opts
        };
        let err = write_disk(&tree, &small, &d.path().join("c.img")).expect_err("too small");
        assert!(
            matches!(err, ImageError::DiskTooSmall { size_mib: 2, .. }),
            "{err}"
        );
        assert!(!d.path().join("c.img").exists());
        let left: Vec<_> = std::fs::read_dir(d.path())
            .expect("ls")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(left.is_empty(), "temp files left");
    }

    /// With no SOURCE_DATE_EPOCH the times are 0, which e2fsprogs reads as "no fake time": the
    /// filesystem's own times must still be fixed, not the clock's.
    #[test]
    fn an_epoch_of_zero_still_fixes_the_filesystems_own_times() {
        let d = tempfile::tempdir().expect("tmp");
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).expect("mkdir");
        std::fs::write(tree.join("etc/rc"), "echo hi\n").expect("w");
        let opts = DiskOptions {
            fs: DiskFs::Ext4,
            size_mib: None,
            mtime: 0,
            uuid: "6b696c6e-0000-4000-8000-000000000002".into(),
            owners: Default::default(),
        };
        write_disk(&tree, &opts, &d.path().join("a.img")).expect("disk");
        let img = std::fs::read(d.path().join("a.img")).expect("read");
        let le32 =
            |at: usize| u32::from_le_bytes(img[1024 + at..1024 + at + 4].try_into().expect("4"));
        assert_eq!(le32(0x108), 1, "s_mkfs_time");
        assert_eq!(le32(0x30), 1, "s_wtime");
    }

    #[test]
    fn a_tree_becomes_an_ffs_image() {
        let d = tempfile::tempdir().expect("tmp");
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).expect("mkdir");
        std::fs::write(tree.join("etc/rc"), "echo hi\n").expect("w");
        let opts = DiskOptions {
            fs: DiskFs::Ffs,
            size_mib: None,
            mtime: 1_700_000_000,
            uuid: String::new(),
            owners: Default::default(),
        };
        let st = write_disk(&tree, &opts, &d.path().join("root.ffs")).expect("makefs");
        assert_eq!(st.entries, 3);
        let img = std::fs::read(d.path().join("root.ffs")).expect("read");
        // UFS1's superblock sits at 8 KiB; its magic 0x011954 is at offset 1372 in it.
        assert_eq!(
            &img[8192 + 1372..8192 + 1376],
            &0x0001_1954u32.to_le_bytes(),
            "UFS1 magic"
        );
        let small = DiskOptions {
            size_mib: Some(1),
            ..opts
        };
        std::fs::write(tree.join("big"), vec![3u8; 3 << 20]).expect("w");
        let err = write_disk(&tree, &small, &d.path().join("small.ffs")).expect_err("small");
        assert!(matches!(err, ImageError::DiskTooSmall { .. }), "{err}");
    }
}
