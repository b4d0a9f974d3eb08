//! The newc ("070701") cpio format as the Linux initramfs unpacker reads it:
//! a streaming [`Writer`] generic over [`std::io::Write`] and an in-memory
//! reader, [`read_archive`], used by tests and by `kiln` to inspect images.
//!
//! The writer stores every entry with uid/gid 0 (or the owner set with
//! [`Writer::set_owner`]), one fixed mtime, inode
//! numbers assigned sequentially from 1 and `nlink` 1 (2 for directories), so
//! the kernel never hard-links two entries together. [`Writer::finish`] writes
//! the `TRAILER!!!` entry and pads the archive to a multiple of 512 bytes.

use std::io::{self, Read, Write};

use crate::ImageError;

/// Magic of a newc archive header (no checksums).
pub const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Magic of the "crc" variant of newc, accepted by the reader only.
pub const NEWC_CRC_MAGIC: &[u8; 6] = b"070702";
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Size of a newc header (magic + 13 eight-digit hex fields).
pub const HEADER_LEN: usize = 110;
/// Longest path (and symlink target) in bytes the kernel accepts (PATH_MAX minus the NUL).
pub const MAX_PATH_LEN: usize = 4095;
/// The finished archive is padded with NULs to a multiple of this size.
pub const BLOCK_SIZE: u64 = 512;

/// Mask of the file-type bits of a mode.
pub const S_IFMT: u32 = 0o170_000;
/// File type: socket.
pub const S_IFSOCK: u32 = 0o140_000;
/// File type: symbolic link.
pub const S_IFLNK: u32 = 0o120_000;
/// File type: regular file.
pub const S_IFREG: u32 = 0o100_000;
/// File type: block device.
pub const S_IFBLK: u32 = 0o060_000;
/// File type: directory.
pub const S_IFDIR: u32 = 0o040_000;
/// File type: character device.
pub const S_IFCHR: u32 = 0o020_000;
/// File type: fifo.
pub const S_IFIFO: u32 = 0o010_000;
/// Mask of the permission bits (including setuid, setgid and sticky).
pub const PERM_MASK: u32 = 0o7777;

const COPY_BUF_LEN: usize = 64 * 1024;

/// Kind of a device node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// Character device (`S_IFCHR`).
    Char,
    /// Block device (`S_IFBLK`).
    Block,
}

impl DeviceKind {
    fn type_bits(self) -> u32 {
        match self {
            DeviceKind::Char => S_IFCHR,
            DeviceKind::Block => S_IFBLK,
        }
    }
}

/// Streaming newc writer.
///
/// Paths are written exactly as given (no normalisation); pass them relative,
/// e.g. `"dev/console"`, parents before children. Every `mode` argument is
/// taken as permission bits: file-type bits in it are ignored and replaced by
/// the type of the entry being added. After any error the archive is
/// incomplete and must be discarded.
#[derive(Debug)]
pub struct Writer<W: Write> {
    inner: W,
    next_ino: u32,
    mtime: u32,
    written: u64,
    entries: usize,
    buf: Vec<u8>,
    owner: (u32, u32),
}

impl<W: Write> Writer<W> {
    /// A writer that stores every entry with mtime 0.
    pub fn new(inner: W) -> Self {
        Writer {
            inner,
            next_ino: 1,
            mtime: 0,
            written: 0,
            entries: 0,
            buf: Vec::new(),
            owner: (0, 0),
        }
    }

    /// Use `mtime` (seconds since the epoch) for every entry written from now on.
    pub fn with_mtime(mut self, mtime: u32) -> Self {
        self.mtime = mtime;
        self
    }

    /// Store the entries added from now on as owned by `uid:gid` (root's, 0:0, by default).
    pub fn set_owner(&mut self, uid: u32, gid: u32) {
        self.owner = (uid, gid);
    }

    /// Number of archive bytes written so far (after [`finish`](Self::finish):
    /// the whole archive, trailer and padding included).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Number of entries written so far, not counting the trailer.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Add a directory.
    pub fn add_dir(&mut self, path: impl AsRef<[u8]>, mode: u32) -> Result<(), ImageError> {
        let path = path.as_ref();
        check_path(path)?;
        let ino = self.take_ino();
        self.write_header(path, ino, S_IFDIR | (mode & PERM_MASK), 2, 0, (0, 0))?;
        self.entries += 1;
        Ok(())
    }

    /// Add a regular file whose content is in memory.
    pub fn add_file(
        &mut self,
        path: impl AsRef<[u8]>,
        mode: u32,
        data: &[u8],
    ) -> Result<(), ImageError> {
        self.add_file_reader(path, mode, data.len() as u64, data)
    }

    /// Add a regular file of exactly `len` bytes read from `reader` (extra
    /// bytes the reader could deliver are not read). Fails with
    /// [`ImageError::ShortEntryData`] if the reader ends early and with
    /// [`ImageError::ReadEntryData`] if it fails.
    pub fn add_file_reader<R: Read>(
        &mut self,
        path: impl AsRef<[u8]>,
        mode: u32,
        len: u64,
        mut reader: R,
    ) -> Result<(), ImageError> {
        let path = path.as_ref();
        check_path(path)?;
        let size = u32::try_from(len).map_err(|_| ImageError::FileTooLarge {
            path: lossy(path),
            size: len,
        })?;
        let ino = self.take_ino();
        self.write_header(path, ino, S_IFREG | (mode & PERM_MASK), 1, size, (0, 0))?;

        let mut buf = std::mem::take(&mut self.buf);
        if buf.len() < COPY_BUF_LEN {
            buf.resize(COPY_BUF_LEN, 0);
        }
        let mut remaining = len;
        let result = loop {
            if remaining == 0 {
                break Ok(());
            }
            let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
            match reader.read(&mut buf[..want]) {
                Ok(0) => {
                    break Err(ImageError::ShortEntryData {
                        path: lossy(path),
                        expected: len,
                        actual: len - remaining,
                    })
                }
                Ok(n) => {
                    if let Err(e) = self.write_raw(&buf[..n]) {
                        break Err(e);
                    }
                    remaining -= n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    break Err(ImageError::ReadEntryData {
                        path: lossy(path),
                        error: source,
                    })
                }
            }
        };
        self.buf = buf;
        result?;
        self.write_padding(len)?;
        self.entries += 1;
        Ok(())
    }

    /// Add a symbolic link pointing at `target` (stored as the entry's data).
    pub fn add_symlink(
        &mut self,
        path: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
    ) -> Result<(), ImageError> {
        let path = path.as_ref();
        let target = target.as_ref();
        check_path(path)?;
        check_symlink_target(target)?;
        let ino = self.take_ino();
        // check_symlink_target bounds the length well below u32::MAX.
        let size = target.len() as u32;
        self.write_header(path, ino, S_IFLNK | 0o777, 1, size, (0, 0))?;
        self.write_raw(target)?;
        self.write_padding(u64::from(size))?;
        self.entries += 1;
        Ok(())
    }

    /// Add a device node (no root privileges are needed to archive one).
    pub fn add_device(
        &mut self,
        path: impl AsRef<[u8]>,
        kind: DeviceKind,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), ImageError> {
        let path = path.as_ref();
        check_path(path)?;
        let ino = self.take_ino();
        let mode = kind.type_bits() | (mode & PERM_MASK);
        self.write_header(path, ino, mode, 1, 0, (major, minor))?;
        self.entries += 1;
        Ok(())
    }

    /// Write the `TRAILER!!!` entry, pad the archive with NULs to a multiple
    /// of [`BLOCK_SIZE`] bytes, flush and return the inner writer.
    pub fn finish(mut self) -> Result<W, ImageError> {
        self.owner = (0, 0);
        self.write_header(TRAILER.as_bytes(), 0, 0, 1, 0, (0, 0))?;
        let rem = self.written % BLOCK_SIZE;
        if rem != 0 {
            let pad = [0u8; BLOCK_SIZE as usize];
            // rem < BLOCK_SIZE, so this fits.
            self.write_raw(&pad[..(BLOCK_SIZE - rem) as usize])?;
        }
        self.inner
            .flush()
            .map_err(|source| ImageError::WriteArchive { error: source })?;
        Ok(self.inner)
    }

    fn take_ino(&mut self) -> u32 {
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1).max(1);
        ino
    }

    fn write_raw(&mut self, data: &[u8]) -> Result<(), ImageError> {
        self.inner
            .write_all(data)
            .map_err(|source| ImageError::WriteArchive { error: source })?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn write_padding(&mut self, len: u64) -> Result<(), ImageError> {
        let pad = pad4(len);
        if pad > 0 {
            self.write_raw(&[0u8; 4][..pad])?;
        }
        Ok(())
    }

    fn write_header(
        &mut self,
        name: &[u8],
        ino: u32,
        mode: u32,
        nlink: u32,
        filesize: u32,
        rdev: (u32, u32),
    ) -> Result<(), ImageError> {
        // check_path bounds the name length, so namesize fits in u32.
        let namesize = name.len() as u32 + 1;
        let fields: [u32; 13] = [
            ino,
            mode,
            self.owner.0,
            self.owner.1,
            nlink,
            self.mtime,
            filesize,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            namesize,
            0, // check
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        header.extend_from_slice(NEWC_MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        header.extend_from_slice(name);
        header.push(0);
        let pad = pad4(header.len() as u64);
        header.extend_from_slice(&[0u8; 4][..pad]);
        self.write_raw(&header)
    }
}

/// Bytes of NUL padding needed after `len` bytes to reach a multiple of 4.
fn pad4(len: u64) -> usize {
    ((4 - len % 4) % 4) as usize
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Check that `path` can be stored as an archive name.
pub(crate) fn check_path(path: &[u8]) -> Result<(), ImageError> {
    if path.is_empty() {
        return Err(ImageError::InvalidPath {
            path: String::new(),
            reason: "empty path",
        });
    }
    if path.contains(&0) {
        return Err(ImageError::InvalidPath {
            path: lossy(path),
            reason: "contains a NUL byte",
        });
    }
    if path == TRAILER.as_bytes() {
        return Err(ImageError::InvalidPath {
            path: lossy(path),
            reason: "the name TRAILER!!! is reserved for the end-of-archive marker",
        });
    }
    if path.len() > MAX_PATH_LEN {
        return Err(ImageError::PathTooLong {
            path: lossy(path),
            len: path.len(),
            max: MAX_PATH_LEN,
        });
    }
    Ok(())
}

/// Check that `target` can be stored as a symlink target.
pub(crate) fn check_symlink_target(target: &[u8]) -> Result<(), ImageError> {
    if target.is_empty() {
        return Err(ImageError::InvalidPath {
            path: String::new(),
            reason: "empty symlink target",
        });
    }
    if target.contains(&0) {
        return Err(ImageError::InvalidPath {
            path: lossy(target),
            reason: "symlink target contains a NUL byte",
        });
    }
    if target.len() > MAX_PATH_LEN {
        return Err(ImageError::PathTooLong {
            path: lossy(target),
            len: target.len(),
            max: MAX_PATH_LEN,
        });
    }
    Ok(())
}

/// One entry of a newc archive, as returned by [`read_archive`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path as stored (lossily converted to UTF-8), e.g. `"dev/console"`.
    pub path: String,
    /// Full mode: file-type bits ([`S_IFMT`]) and permission bits ([`PERM_MASK`]).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// Inode number.
    pub ino: u32,
    /// Major number of the device the file lived on.
    pub dev_major: u32,
    /// Minor number of the device the file lived on.
    pub dev_minor: u32,
    /// Major number of a device node (0 for other entries).
    pub rdev_major: u32,
    /// Minor number of a device node (0 for other entries).
    pub rdev_minor: u32,
    /// File content, or the target of a symlink.
    pub data: Vec<u8>,
}

impl Entry {
    /// The file-type bits of [`mode`](Self::mode).
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }

    /// The permission bits of [`mode`](Self::mode).
    pub fn permissions(&self) -> u32 {
        self.mode & PERM_MASK
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type() == S_IFDIR
    }

    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.file_type() == S_IFREG
    }

    /// Whether this is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.file_type() == S_IFLNK
    }

    /// Whether this is a character device.
    pub fn is_char_device(&self) -> bool {
        self.file_type() == S_IFCHR
    }

    /// Whether this is a block device.
    pub fn is_block_device(&self) -> bool {
        self.file_type() == S_IFBLK
    }

    /// The target of a symlink (lossily converted to UTF-8), `None` for other entries.
    pub fn symlink_target(&self) -> Option<String> {
        self.is_symlink().then(|| lossy(&self.data))
    }
}

/// Parse an uncompressed newc archive (use [`crate::decompress`] first for a
/// compressed image). Entries are returned in archive order, without the
/// trailer. Several archives concatenated (each with its trailer, separated
/// by NUL padding) are read as one list, as the kernel does.
pub fn read_archive(data: &[u8]) -> Result<Vec<Entry>, ImageError> {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    let mut archives = 0usize;
    loop {
        if archives > 0 {
            // Skip the padding after a trailer; anything else must start a new archive.
            while pos < data.len() && data[pos] == 0 {
                pos += 1;
            }
            if pos == data.len() {
                return Ok(entries);
            }
        }
        read_one_archive(data, &mut pos, &mut entries)?;
        archives += 1;
    }
}

fn malformed(offset: usize, reason: impl Into<String>) -> ImageError {
    ImageError::Malformed {
        offset,
        reason: reason.into(),
    }
}

fn parse_hex(field: &[u8], offset: usize) -> Result<u32, ImageError> {
    let s = std::str::from_utf8(field)
        .ok()
        .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()));
    s.and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or_else(|| {
            malformed(
                offset,
                format!(
                    "header field {:?} is not 8 hex digits",
                    String::from_utf8_lossy(field)
                ),
            )
        })
}

/// `pos + len`, checked against the end of `data`.
fn advance(data: &[u8], pos: usize, len: usize, what: &str) -> Result<usize, ImageError> {
    pos.checked_add(len)
        .filter(|&end| end <= data.len())
        .ok_or_else(|| {
            malformed(
                pos,
                format!("truncated archive: {what} needs {len} bytes, the data ends first"),
            )
        })
}

fn read_one_archive(
    data: &[u8],
    pos: &mut usize,
    entries: &mut Vec<Entry>,
) -> Result<(), ImageError> {
    loop {
        let start = *pos;
        if start == data.len() {
            return Err(malformed(
                start,
                "truncated archive: no TRAILER!!! entry before the end of the data",
            ));
        }
        let header_end = advance(data, start, HEADER_LEN, "a header")?;
        let header = &data[start..header_end];
        let magic = &header[..6];
        if magic != NEWC_MAGIC && magic != NEWC_CRC_MAGIC {
            return Err(malformed(
                start,
                format!(
                    "bad magic {:?}, expected \"070701\" (only the newc format is supported)",
                    String::from_utf8_lossy(magic)
                ),
            ));
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let off = 6 + i * 8;
            *v = parse_hex(&header[off..off + 8], start + off)?;
        }
        let [ino, mode, uid, gid, nlink, mtime, filesize, dev_major, dev_minor, rdev_major, rdev_minor, namesize, _check] =
            f;

        let namesize = namesize as usize;
        if namesize == 0 {
            return Err(malformed(start, "entry has an empty name (namesize 0)"));
        }
        let name_end = advance(data, header_end, namesize, "the entry name")?;
        let raw_name = &data[header_end..name_end];
        let name = match raw_name.split_last() {
            Some((0, name)) => name,
            _ => return Err(malformed(header_end, "entry name is not NUL-terminated")),
        };
        let data_start = advance(
            data,
            name_end,
            pad4((HEADER_LEN + namesize) as u64),
            "name padding",
        )?;
        let filesize = filesize as usize;
        let data_end = advance(data, data_start, filesize, "the entry data")?;
        let next = advance(data, data_end, pad4(filesize as u64), "data padding")?;
        *pos = next;

        if name == TRAILER.as_bytes() {
            return Ok(());
        }
        entries.push(Entry {
            path: lossy(name),
            mode,
            uid,
            gid,
            nlink,
            mtime: u64::from(mtime),
            ino,
            dev_major,
            dev_minor,
            rdev_major,
            rdev_minor,
            data: data[data_start..data_end].to_vec(),
        });
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).with_mtime(1234);
        w.add_dir("dev", 0o755).expect("dir");
        w.add_device("dev/console", DeviceKind::Char, 0o600, 5, 1)
            .expect("dev");
        w.add_file("init", 0o100_755, b"#!/bin/sh\n").expect("file");
        w.add_symlink("sh", "/bin/busybox").expect("symlink");
        w.add_file_reader("big", 0o644, 5, &b"hello world"[..])
            .expect("reader");
        assert_eq!(w.entries(), 5);
        w.finish().expect("finish")
    }

    #[test]
    fn layout_and_round_trip() {
        let data = build();
        assert_eq!(data.len() % 512, 0);
        assert_eq!(&data[..6], b"070701");
        let trailer_pos = data
            .windows(TRAILER.len())
            .position(|w| w == TRAILER.as_bytes())
            .expect("trailer present");
        assert!(data[trailer_pos + TRAILER.len()..]
            .iter()
            .skip(1)
            .all(|&b| b == 0));

        let entries = read_archive(&data).expect("read");
        let names: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "init", "sh", "big"]);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.ino as usize, i + 1);
            assert_eq!(e.mtime, 1234);
            assert_eq!((e.uid, e.gid), (0, 0));
        }
        assert_eq!(entries[0].mode, S_IFDIR | 0o755);
        assert_eq!(entries[0].nlink, 2);
        assert_eq!(entries[1].mode, S_IFCHR | 0o600);
        assert_eq!((entries[1].rdev_major, entries[1].rdev_minor), (5, 1));
        assert_eq!(entries[2].mode, S_IFREG | 0o755);
        assert_eq!(entries[2].data, b"#!/bin/sh\n");
        assert_eq!(entries[3].symlink_target().as_deref(), Some("/bin/busybox"));
        assert_eq!(entries[4].data, b"hello");
    }

    #[test]
    fn every_header_is_aligned() {
        let data = build();
        let mut pos = 0;
        loop {
            assert_eq!(pos % 4, 0, "header at {pos} not 4-aligned");
            assert_eq!(&data[pos..pos + 6], b"070701");
            let field = |i: usize| {
                let off = pos + 6 + i * 8;
                u32::from_str_radix(std::str::from_utf8(&data[off..off + 8]).expect("ascii"), 16)
                    .expect("hex") as usize
            };
            let (filesize, namesize) = (field(6), field(11));
            let name = &data[pos + HEADER_LEN..pos + HEADER_LEN + namesize - 1];
            let data_start = (pos + HEADER_LEN + namesize).div_ceil(4) * 4;
            if name == TRAILER.as_bytes() {
                break;
            }
            pos = (data_start + filesize).div_ceil(4) * 4;
        }
    }

    #[test]
    fn short_reader_is_an_error() {
        let mut w = Writer::new(Vec::new());
        let err = w
            .add_file_reader("x", 0o644, 10, &b"abc"[..])
            .expect_err("short");
        assert!(matches!(
            err,
            ImageError::ShortEntryData {
                expected: 10,
                actual: 3,
                ..
            }
        ));
    }

    #[test]
    fn bad_paths_are_rejected() {
        let mut w = Writer::new(Vec::new());
        assert!(matches!(
            w.add_dir("", 0o755),
            Err(ImageError::InvalidPath { .. })
        ));
        assert!(matches!(
            w.add_dir(b"a\0b", 0o755),
            Err(ImageError::InvalidPath { .. })
        ));
        let long = "a".repeat(MAX_PATH_LEN + 1);
        let err = w.add_dir(&long, 0o755).expect_err("too long");
        assert!(
            err.to_string().contains("path too long in archive"),
            "{err}"
        );
        assert!(w.add_dir("a".repeat(MAX_PATH_LEN), 0o755).is_ok());
        assert!(matches!(
            w.add_symlink("l", ""),
            Err(ImageError::InvalidPath { .. })
        ));
    }

    #[test]
    fn reader_rejects_garbage_and_truncation() {
        let data = build();
        assert!(matches!(
            read_archive(b"hello world"),
            Err(ImageError::Malformed { .. })
        ));
        assert!(read_archive(&data[..data.len() / 2]).is_err());
        // Without the trailer.
        let trailer_pos = data
            .windows(TRAILER.len())
            .position(|w| w == TRAILER.as_bytes())
            .expect("trailer");
        let cut = trailer_pos - HEADER_LEN;
        let err = read_archive(&data[..cut]).expect_err("no trailer");
        assert!(err.to_string().contains("TRAILER"), "{err}");
        assert!(read_archive(&[]).is_err());
    }

    #[test]
    fn concatenated_archives_are_read() {
        let mut data = build();
        let mut w = Writer::new(Vec::new());
        w.add_file("second", 0o644, b"2").expect("file");
        data.extend(w.finish().expect("finish"));
        let entries = read_archive(&data).expect("read");
        assert_eq!(entries.len(), 6);
        assert_eq!(entries[5].path, "second");
    }
}
