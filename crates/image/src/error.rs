//! The crate's error type, [`ImageError`]: every message names the path or
//! entry involved and, where possible, what the user should do about it.

use std::io;
use std::path::PathBuf;

use crate::Compression;

/// Everything that can go wrong while building, compressing, decompressing or
/// reading an initramfs image, or making a disk, read-only root, qcow2 or ISO image.
///
/// An underlying I/O error is part of the message (the `error` fields), not a
/// `source`: printed with its causes, the error would otherwise say it twice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The staging directory does not exist, is not a directory or cannot be accessed.
    #[error("staging directory {path} is not usable: {error}; create it (or fix the path) before building the image")]
    StagingDir {
        /// The staging directory.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },

    /// Listing a directory of the staging tree failed.
    #[error("cannot walk staging directory at {path}: {error}; check its permissions")]
    Walk {
        /// The path that could not be listed or inspected.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },

    /// A file (or symlink) of the staging tree could not be read.
    #[error("cannot read staging file {path}: {error}")]
    ReadStaging {
        /// The staged file.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },

    /// A staged file changed size between the walk and the moment it was archived.
    #[error("staging file {path} changed while the image was being built (expected {expected} bytes, found {actual}); do not modify the staging tree during a build")]
    StagingChanged {
        /// The staged file.
        path: PathBuf,
        /// The size recorded in the archive header.
        expected: u64,
        /// The number of bytes actually available.
        actual: u64,
    },

    /// The staging tree holds a file type that cannot go into the image.
    #[error("unsupported file type ({kind}) at {path}: remove it in a hook")]
    UnsupportedFileType {
        /// The offending staged path.
        path: PathBuf,
        /// Human-readable file type, e.g. "fifo" or "socket".
        kind: &'static str,
    },

    /// A path (or symlink target) is longer than the kernel's unpacker accepts.
    #[error("path too long in archive: {path} is {len} bytes, the kernel accepts at most {max}; shorten it")]
    PathTooLong {
        /// The archive path (lossily converted to UTF-8).
        path: String,
        /// Its length in bytes.
        len: usize,
        /// The maximum accepted length in bytes.
        max: usize,
    },

    /// A path (or symlink target) cannot be stored in the archive.
    #[error("invalid path {path:?} in archive: {reason}")]
    InvalidPath {
        /// The path as given (lossily converted to UTF-8).
        path: String,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// A file does not fit in the 32-bit size field of the newc format.
    #[error("file too large for a newc cpio archive: {path} is {size} bytes (the format limit is 4 GiB - 1); remove it from the image")]
    FileTooLarge {
        /// The archive path.
        path: String,
        /// Its size in bytes.
        size: u64,
    },

    /// An extra entry cannot be placed where it was asked to go.
    #[error("extra entry {path} conflicts with the image tree: {reason}")]
    ExtraConflict {
        /// The extra entry's (normalised) path.
        path: String,
        /// What it conflicts with and how to fix it.
        reason: String,
    },

    /// The requested mtime does not fit the 32-bit newc field.
    #[error("mtime {mtime} does not fit in the 32-bit newc mtime field; use (or set SOURCE_DATE_EPOCH to) a value below 4294967296")]
    MtimeOutOfRange {
        /// The rejected mtime.
        mtime: u64,
    },

    /// A compression level outside the range the compressor accepts.
    #[error("invalid {compression} compression level {level}: use {min}..={max}, or leave it unset for the default")]
    InvalidLevel {
        /// The compression the level was meant for.
        compression: Compression,
        /// The rejected level.
        level: i32,
        /// The lowest accepted level.
        min: i32,
        /// The highest accepted level.
        max: i32,
    },

    /// A compression name that [`Compression::from_str`](std::str::FromStr) does not know.
    #[error("unknown compression {0:?}: expected one of none, gzip, xz, zstd")]
    UnknownCompression(String),

    /// The compressor could not be initialised.
    #[error("cannot set up {compression} compression: {error}")]
    Compressor {
        /// The compression that failed.
        compression: Compression,
        /// The underlying error.
        error: io::Error,
    },

    /// The reader given to [`cpio::Writer::add_file_reader`](crate::cpio::Writer::add_file_reader) failed.
    #[error("cannot read data for archive entry {path}: {error}")]
    ReadEntryData {
        /// The archive path.
        path: String,
        /// The underlying error.
        error: io::Error,
    },

    /// The reader given to [`cpio::Writer::add_file_reader`](crate::cpio::Writer::add_file_reader) ended early.
    #[error("short data for archive entry {path}: expected {expected} bytes, the reader ended after {actual}")]
    ShortEntryData {
        /// The archive path.
        path: String,
        /// The length announced in the header.
        expected: u64,
        /// The number of bytes the reader delivered.
        actual: u64,
    },

    /// Writing to the archive's output failed (generic writer, path unknown).
    #[error("cannot write the archive: {error}; check free space and permissions of the output")]
    WriteArchive {
        /// The underlying error.
        error: io::Error,
    },

    /// Writing the image file failed.
    #[error(
        "cannot write image {path}: {error}; check free space and permissions of its directory"
    )]
    Write {
        /// The destination image.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },

    /// A cpio archive being read is not valid newc.
    #[error("malformed cpio archive at byte {offset}: {reason}")]
    Malformed {
        /// Byte offset (in the uncompressed archive) where the problem was found.
        offset: usize,
        /// What is wrong.
        reason: String,
    },

    /// Decompressing an image failed.
    #[error("cannot decompress {compression} image: {error}; the file is corrupt or truncated, rebuild it")]
    Decompress {
        /// The detected compression.
        compression: Compression,
        /// The underlying error.
        error: io::Error,
    },

    /// The data is neither gzip, xz, zstd nor a newc archive.
    #[error("unrecognised image format (starts with {magic}): expected gzip, xz, zstd or a newc cpio archive")]
    UnknownFormat {
        /// Hex dump of the first bytes.
        magic: String,
    },

    /// A program the build needs is not installed.
    #[error("cannot run {tool}: {error}; install Debian's {package} (scripts/setup.sh does)")]
    Tool {
        /// The program.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
        /// The underlying error.
        error: io::Error,
    },

    /// mke2fs failed.
    #[error("cannot make the disk image {path}: {detail}")]
    Mkfs {
        /// The destination image.
        path: PathBuf,
        /// mke2fs's message and exit status.
        detail: String,
    },

    /// A program that makes an image (mkfs.erofs, mksquashfs, qemu-img, xorriso) failed.
    #[error("{tool} failed to make {path}: {detail}")]
    ToolFailed {
        /// The program.
        tool: &'static str,
        /// The destination image.
        path: PathBuf,
        /// The tail of what the program said, and its exit status.
        detail: String,
    },

    /// A file a Debian package provides (a boot loader part) cannot be read.
    #[error("cannot read {path}: {error}; install Debian's {package} (scripts/setup.sh does)")]
    PackageFile {
        /// The file.
        path: PathBuf,
        /// The Debian package that has it.
        package: &'static str,
        /// The underlying error.
        error: io::Error,
    },

    /// A file to put on an ISO image (the kernel or the initrd) cannot be read.
    #[error("cannot read {path} for the ISO image: {error}")]
    IsoInput {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },

    /// A kernel command line that cannot go into a boot loader's config.
    #[error("kernel command line {cmdline:?} {reason}")]
    InvalidCmdline {
        /// The command line given.
        cmdline: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A filesystem UUID that is not in the 8-4-4-4-12 hex form.
    #[error("invalid filesystem UUID {uuid:?}: expected 8-4-4-4-12 hex digits, e.g. 6b696c6e-0000-4000-8000-000000000001")]
    InvalidUuid {
        /// The UUID given.
        uuid: String,
    },

    /// A timestamp later than an image format can record.
    #[error("mtime {mtime} is too late for a {format} image (at most {max}); use (or set SOURCE_DATE_EPOCH to) an earlier time")]
    TimeOutOfRange {
        /// The image format.
        format: &'static str,
        /// The rejected time.
        mtime: u64,
        /// The latest time the format records.
        max: u64,
    },

    /// The disk image size asked for cannot hold the root.
    #[error("image.size_mib = {size_mib} is too small for this root: it needs at least {needed_mib} MiB; raise size_mib or leave it out (Kiln then sizes the disk)")]
    DiskTooSmall {
        /// The size asked for.
        size_mib: u64,
        /// The least that fits.
        needed_mib: u64,
    },
}
