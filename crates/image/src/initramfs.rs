//! Building the initramfs: walk a staging directory, merge the extra entries
//! (device nodes and the like that an unprivileged build cannot create on
//! disk), write a reproducible newc archive through the chosen compressor into
//! a temporary file and rename it into place only once everything succeeded.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use walkdir::WalkDir;

use crate::compress::Encoder;
use crate::cpio::{self, DeviceKind, PERM_MASK};
use crate::{atomic, Compression, ImageError};

/// Name of the environment variable holding the reproducible-build timestamp.
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";

/// Mode of the archive root (`.`) and of directories added implicitly as
/// ancestors of extra entries.
pub const DEFAULT_DIR_MODE: u32 = 0o755;

const BUF_LEN: usize = 256 * 1024;

/// An entry that does not exist in the staging tree but must be in the
/// archive (so no root is needed to build), e.g. `/dev/console` char 5:1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraEntry {
    /// Path inside the image, relative (e.g. `"dev/console"`); a leading `/`
    /// and `.` components are ignored, `..` is rejected. `"."` (or `"/"`)
    /// with kind [`ExtraKind::Dir`] sets the mode of the image root.
    pub path: String,
    /// What the entry is.
    pub kind: ExtraKind,
    /// Permission bits (file-type bits are ignored; unused for symlinks).
    pub mode: u32,
}

/// The kind (and payload) of an [`ExtraEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtraKind {
    /// A directory.
    Dir,
    /// A character device node.
    CharDev {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A block device node.
    BlockDev {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A symbolic link.
    Symlink {
        /// Where the link points.
        target: String,
    },
    /// A regular file with the given content.
    File {
        /// The file's content.
        data: Vec<u8>,
    },
}

impl ExtraEntry {
    /// A directory entry.
    pub fn dir(path: impl Into<String>, mode: u32) -> Self {
        ExtraEntry {
            path: path.into(),
            kind: ExtraKind::Dir,
            mode,
        }
    }

    /// A character device entry, e.g. `char_dev("dev/console", 0o600, 5, 1)`.
    pub fn char_dev(path: impl Into<String>, mode: u32, major: u32, minor: u32) -> Self {
        ExtraEntry {
            path: path.into(),
            kind: ExtraKind::CharDev { major, minor },
            mode,
        }
    }

    /// A block device entry.
    pub fn block_dev(path: impl Into<String>, mode: u32, major: u32, minor: u32) -> Self {
        ExtraEntry {
            path: path.into(),
            kind: ExtraKind::BlockDev { major, minor },
            mode,
        }
    }

    /// A symlink entry (mode 0777, as symlinks always have).
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        ExtraEntry {
            path: path.into(),
            kind: ExtraKind::Symlink {
                target: target.into(),
            },
            mode: 0o777,
        }
    }

    /// A regular file entry.
    pub fn file(path: impl Into<String>, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        ExtraEntry {
            path: path.into(),
            kind: ExtraKind::File { data: data.into() },
            mode,
        }
    }
}

/// How to build the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOptions {
    /// Compression of the output.
    pub compression: Compression,
    /// Compression level; `None` for the default of
    /// [`Compression::default_level`] (gzip 9, xz 6, zstd 9).
    pub level: Option<i32>,
    /// Fixed mtime (seconds since the epoch) for every entry; must fit in 32 bits.
    pub mtime: u64,
    /// Staged paths owned by someone other than root (0:0, every other entry's owner).
    pub owners: crate::Owners,
}

impl BuildOptions {
    /// Default level and mtime 0.
    pub fn new(compression: Compression) -> Self {
        BuildOptions {
            compression,
            level: None,
            mtime: 0,
            owners: crate::Owners::new(),
        }
    }

    /// Default level; mtime from `SOURCE_DATE_EPOCH` if set and valid, else 0.
    /// See [`source_date_epoch`].
    pub fn from_env(compression: Compression) -> Self {
        BuildOptions {
            mtime: source_date_epoch().unwrap_or(0),
            ..BuildOptions::new(compression)
        }
    }
}

/// `SOURCE_DATE_EPOCH` as seconds, if set to a valid value: a decimal integer
/// (surrounding whitespace allowed) that fits in the 32-bit newc mtime field.
pub fn source_date_epoch() -> Option<u64> {
    parse_source_date_epoch(&std::env::var(SOURCE_DATE_EPOCH).ok()?)
}

fn parse_source_date_epoch(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u32>().ok().map(u64::from)
}

/// What [`write_initramfs`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageStats {
    /// Number of archive entries, root (`.`) included, trailer excluded.
    pub entries: usize,
    /// Size of the uncompressed cpio archive (trailer and padding included).
    pub uncompressed_bytes: u64,
    /// Size of the image file written.
    pub compressed_bytes: u64,
    /// Lowercase hex SHA-256 of the image file written.
    pub sha256: String,
}

/// One archive entry, before it is written.
#[derive(Debug)]
enum Node<'a> {
    Dir {
        perm: u32,
    },
    Staged {
        source: PathBuf,
        perm: u32,
    },
    Data {
        perm: u32,
        data: &'a [u8],
    },
    Symlink {
        target: Vec<u8>,
    },
    Device {
        kind: DeviceKind,
        perm: u32,
        major: u32,
        minor: u32,
    },
}

impl Node<'_> {
    fn describe(&self) -> &'static str {
        match self {
            Node::Dir { .. } => "directory",
            Node::Staged { .. } | Node::Data { .. } => "regular file",
            Node::Symlink { .. } => "symlink",
            Node::Device {
                kind: DeviceKind::Char,
                ..
            } => "character device",
            Node::Device {
                kind: DeviceKind::Block,
                ..
            } => "block device",
        }
    }
}

/// Everything that goes into the archive: root mode plus entries keyed by
/// path bytes (so iteration is sorted and parents precede their contents).
struct Tree<'a> {
    root_perm: u32,
    nodes: BTreeMap<Vec<u8>, Node<'a>>,
}

/// Walk `staging` (sorted by path bytes, directories before their contents),
/// add `extra` entries (an extra entry overrides a staged one at the same
/// path; missing ancestors are added as directories with mode 0755), write a
/// newc cpio with uid/gid 0 (except the paths of `opts.owners`), the fixed `opts.mtime`, inode numbers assigned
/// sequentially from 1 (nlink 1 for files, 2 for dirs; hard links are stored
/// as separate files), modes taken from the staged file's type + permission
/// bits and symlinks stored as symlinks, then compress it into a temporary
/// file in `dest`'s directory and rename that to `dest` only on success: on
/// any error (including while walking) no partial or temporary file is left.
///
/// The archive starts with a `.` entry (mode 0755 unless an extra entry sets
/// it) so the guest's `/` does not inherit the rootfs default mode; the
/// staging directory's own mode and ownership are not used. Regular files,
/// directories, symlinks and device nodes may be staged; fifos and sockets
/// are rejected with [`ImageError::UnsupportedFileType`].
pub fn write_initramfs(
    staging: &Path,
    extra: &[ExtraEntry],
    opts: &BuildOptions,
    dest: &Path,
) -> Result<ImageStats, ImageError> {
    let mtime =
        u32::try_from(opts.mtime).map_err(|_| ImageError::MtimeOutOfRange { mtime: opts.mtime })?;
    opts.compression.effective_level(opts.level)?;

    let mut tree = Tree {
        root_perm: DEFAULT_DIR_MODE,
        nodes: BTreeMap::new(),
    };
    collect_staging(staging, &mut tree)?;
    for e in extra {
        add_extra(&mut tree, e)?;
    }

    let write_err = |source: io::Error| ImageError::Write {
        path: dest.to_path_buf(),
        error: source,
    };
    let tmp = atomic::temp_beside(dest).map_err(write_err)?;

    let stats = encode(&tree, mtime, opts, tmp.as_file()).map_err(|e| at_dest(e, dest))?;
    atomic::persist(tmp, dest).map_err(write_err)?;
    Ok(stats)
}

/// Write the archive for `tree`, compressed, into `file`. Output errors are
/// reported as [`ImageError::WriteArchive`].
fn encode(
    tree: &Tree<'_>,
    mtime: u32,
    opts: &BuildOptions,
    file: &File,
) -> Result<ImageStats, ImageError> {
    let write_err = |source: io::Error| ImageError::WriteArchive { error: source };

    let file_out = Tally::new(BufWriter::with_capacity(BUF_LEN, file), true);
    let encoder = Encoder::new(file_out, opts.compression, opts.level)?;
    let archive_out = Tally::new(BufWriter::with_capacity(BUF_LEN, encoder), false);
    let mut writer = cpio::Writer::new(archive_out).with_mtime(mtime);

    write_tree(&mut writer, tree, &opts.owners)?;
    let entries = writer.entries();

    let archive_out = writer.finish()?;
    let uncompressed_bytes = archive_out.count;
    let encoder = archive_out
        .inner
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    let file_out = encoder.finish().map_err(write_err)?;
    file_out
        .inner
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    let sha256 = file_out
        .hasher
        .map(|h| hex::encode(h.finalize()))
        .unwrap_or_default();

    Ok(ImageStats {
        entries,
        uncompressed_bytes,
        compressed_bytes: file_out.count,
        sha256,
    })
}

/// Attribute a generic archive-write failure to the image file.
fn at_dest(err: ImageError, dest: &Path) -> ImageError {
    match err {
        ImageError::WriteArchive { error: source } => ImageError::Write {
            path: dest.to_path_buf(),
            error: source,
        },
        other => other,
    }
}

fn collect_staging(staging: &Path, tree: &mut Tree<'_>) -> Result<(), ImageError> {
    let staging_err = |source: io::Error| ImageError::StagingDir {
        path: staging.to_path_buf(),
        error: source,
    };
    let meta = fs::metadata(staging).map_err(staging_err)?;
    if !meta.is_dir() {
        return Err(staging_err(io::Error::other("not a directory")));
    }

    for entry in WalkDir::new(staging).follow_links(false).min_depth(1) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(staging).to_path_buf();
            let msg = e.to_string();
            let source = e.into_io_error().unwrap_or_else(|| io::Error::other(msg));
            ImageError::Walk {
                path,
                error: source,
            }
        })?;
        let path = entry.path();
        let rel = path.strip_prefix(staging).map_err(|_| ImageError::Walk {
            path: path.to_path_buf(),
            error: io::Error::other("entry is outside the staging directory"),
        })?;
        let key = rel.as_os_str().as_bytes().to_vec();
        cpio::check_path(&key)?;

        let meta = entry.metadata().map_err(|e| {
            let msg = e.to_string();
            ImageError::Walk {
                path: path.to_path_buf(),
                error: e.into_io_error().unwrap_or_else(|| io::Error::other(msg)),
            }
        })?;
        let perm = meta.mode() & PERM_MASK;
        let ft = meta.file_type();
        let node = if ft.is_dir() {
            Node::Dir { perm }
        } else if ft.is_file() {
            if meta.len() > u64::from(u32::MAX) {
                return Err(ImageError::FileTooLarge {
                    path: path.display().to_string(),
                    size: meta.len(),
                });
            }
            Node::Staged {
                source: path.to_path_buf(),
                perm,
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(|source| ImageError::ReadStaging {
                path: path.to_path_buf(),
                error: source,
            })?;
            let target = target.into_os_string().into_vec();
            cpio::check_symlink_target(&target)?;
            Node::Symlink { target }
        } else if ft.is_char_device() || ft.is_block_device() {
            let (major, minor) = split_dev(meta.rdev());
            let kind = if ft.is_char_device() {
                DeviceKind::Char
            } else {
                DeviceKind::Block
            };
            Node::Device {
                kind,
                perm,
                major,
                minor,
            }
        } else {
            let kind = if ft.is_fifo() {
                "fifo"
            } else if ft.is_socket() {
                "socket"
            } else {
                "unknown"
            };
            return Err(ImageError::UnsupportedFileType {
                path: path.to_path_buf(),
                kind,
            });
        };
        tree.nodes.insert(key, node);
    }
    Ok(())
}

/// Split a Linux `dev_t` (glibc/musl encoding) into major and minor numbers.
fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    // Both masks keep at most 32 bits.
    (major as u32, minor as u32)
}

/// Normalise an extra entry's path: strip `/` and `.` components, reject `..`.
/// Returns an empty string for the root.
fn normalize_extra(path: &str) -> Result<String, ImageError> {
    let mut parts = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                return Err(ImageError::InvalidPath {
                    path: path.to_owned(),
                    reason: "'..' is not allowed in an extra entry path",
                })
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn has_children(nodes: &BTreeMap<Vec<u8>, Node<'_>>, key: &[u8]) -> bool {
    let mut prefix = key.to_vec();
    prefix.push(b'/');
    nodes
        .range(prefix.clone()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(&prefix))
}

fn add_extra<'a>(tree: &mut Tree<'a>, extra: &'a ExtraEntry) -> Result<(), ImageError> {
    let path = normalize_extra(&extra.path)?;
    let perm = extra.mode & PERM_MASK;
    if path.is_empty() {
        return match extra.kind {
            ExtraKind::Dir => {
                tree.root_perm = perm;
                Ok(())
            }
            _ => Err(ImageError::InvalidPath {
                path: extra.path.clone(),
                reason: "refers to the image root, which can only be a directory",
            }),
        };
    }
    cpio::check_path(path.as_bytes())?;

    let node = match &extra.kind {
        ExtraKind::Dir => Node::Dir { perm },
        ExtraKind::CharDev { major, minor } => Node::Device {
            kind: DeviceKind::Char,
            perm,
            major: *major,
            minor: *minor,
        },
        ExtraKind::BlockDev { major, minor } => Node::Device {
            kind: DeviceKind::Block,
            perm,
            major: *major,
            minor: *minor,
        },
        ExtraKind::Symlink { target } => {
            cpio::check_symlink_target(target.as_bytes())?;
            Node::Symlink {
                target: target.as_bytes().to_vec(),
            }
        }
        ExtraKind::File { data } => {
            if u32::try_from(data.len()).is_err() {
                return Err(ImageError::FileTooLarge {
                    path,
                    size: data.len() as u64,
                });
            }
            Node::Data { perm, data }
        }
    };

    for (i, _) in path.match_indices('/') {
        let ancestor = &path[..i];
        match tree.nodes.get(ancestor.as_bytes()) {
            Some(Node::Dir { .. }) => {}
            Some(other) => {
                return Err(ImageError::ExtraConflict {
                    reason: format!(
                        "its parent {ancestor} is a {} in the image, not a directory; \
                         use the path the link resolves to, or replace {ancestor} with a directory",
                        other.describe()
                    ),
                    path,
                })
            }
            None => {
                tree.nodes.insert(
                    ancestor.as_bytes().to_vec(),
                    Node::Dir {
                        perm: DEFAULT_DIR_MODE,
                    },
                );
            }
        }
    }

    let key = path.into_bytes();
    if !matches!(node, Node::Dir { .. }) && has_children(&tree.nodes, &key) {
        let path = String::from_utf8_lossy(&key).into_owned();
        return Err(ImageError::ExtraConflict {
            reason: format!(
                "the image has entries below {path}; a {} cannot replace a non-empty directory \
                 (remove the staged directory in a hook or pick another path)",
                node.describe()
            ),
            path,
        });
    }
    tree.nodes.insert(key, node);
    Ok(())
}

fn write_tree<W: Write>(
    w: &mut cpio::Writer<W>,
    tree: &Tree<'_>,
    owners: &crate::Owners,
) -> Result<(), ImageError> {
    w.add_dir(".", tree.root_perm)?;
    for (path, node) in &tree.nodes {
        let (uid, gid) = owners
            .get(Path::new(OsStr::from_bytes(path)))
            .copied()
            .unwrap_or((0, 0));
        w.set_owner(uid, gid);
        match node {
            Node::Dir { perm } => w.add_dir(path, *perm)?,
            Node::Data { perm, data } => w.add_file(path, *perm, data)?,
            Node::Symlink { target } => w.add_symlink(path, target)?,
            Node::Device {
                kind,
                perm,
                major,
                minor,
            } => w.add_device(path, *kind, *perm, *major, *minor)?,
            Node::Staged { source, perm } => add_staged(w, path, source, *perm)?,
        }
    }
    Ok(())
}

fn add_staged<W: Write>(
    w: &mut cpio::Writer<W>,
    path: &[u8],
    source: &Path,
    perm: u32,
) -> Result<(), ImageError> {
    let read_err = |e: io::Error| ImageError::ReadStaging {
        path: source.to_path_buf(),
        error: e,
    };
    let mut file = File::open(source).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(io::Error::other(
            "it is no longer a regular file; do not modify the staging tree during a build",
        )));
    }
    let len = meta.len();
    w.add_file_reader(path, perm, len, &mut file)
        .map_err(|e| match e {
            ImageError::ReadEntryData { error: e, .. } => read_err(e),
            ImageError::ShortEntryData {
                expected, actual, ..
            } => ImageError::StagingChanged {
                path: source.to_path_buf(),
                expected,
                actual,
            },
            ImageError::FileTooLarge { size, .. } => ImageError::FileTooLarge {
                path: source.display().to_string(),
                size,
            },
            other => other,
        })?;
    let now = file.metadata().map_err(read_err)?.len();
    if now != len {
        return Err(ImageError::StagingChanged {
            path: source.to_path_buf(),
            expected: len,
            actual: now,
        });
    }
    Ok(())
}

/// A writer that counts the bytes passing through and optionally hashes them.
struct Tally<W> {
    inner: W,
    count: u64,
    hasher: Option<Sha256>,
}

impl<W> Tally<W> {
    fn new(inner: W, hash: bool) -> Self {
        Tally {
            inner,
            count: 0,
            hasher: hash.then(Sha256::new),
        }
    }
}

impl<W: Write> Write for Tally<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc's `makedev`.
    fn makedev(major: u64, minor: u64) -> u64 {
        ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
    }

    #[test]
    fn dev_numbers_split() {
        assert_eq!(split_dev(0x0501), (5, 1));
        for (major, minor) in [
            (5, 1),
            (259, 65536),
            (4095, 255),
            (0xfffff, 0xfffff),
            (0, 0),
        ] {
            assert_eq!(
                split_dev(makedev(u64::from(major), u64::from(minor))),
                (major, minor)
            );
        }
    }

    #[test]
    fn extra_paths_normalise() {
        assert_eq!(normalize_extra("/dev//console").expect("ok"), "dev/console");
        assert_eq!(normalize_extra("./a/./b/").expect("ok"), "a/b");
        assert_eq!(normalize_extra("/").expect("ok"), "");
        assert!(normalize_extra("a/../b").is_err());
    }

    #[test]
    fn source_date_epoch_parsing() {
        assert_eq!(parse_source_date_epoch("1700000000"), Some(1_700_000_000));
        assert_eq!(parse_source_date_epoch(" 12\n"), Some(12));
        assert_eq!(parse_source_date_epoch("0"), Some(0));
        assert_eq!(parse_source_date_epoch(""), None);
        assert_eq!(parse_source_date_epoch("-5"), None);
        assert_eq!(parse_source_date_epoch("+5"), None);
        assert_eq!(parse_source_date_epoch("12abc"), None);
        assert_eq!(parse_source_date_epoch("4294967296"), None);
        assert_eq!(parse_source_date_epoch("4294967295"), Some(4_294_967_295));
    }
}
