//! `kiln-image` owns the last step of a Kiln build: turning a staging
//! directory (the guest root tree on disk) into a reproducible, compressed
//! newc cpio initramfs for QEMU microvm, written atomically.
//!
//! * [`write_initramfs`] walks the staging tree, merges [`ExtraEntry`]s (device
//!   nodes and other entries an unprivileged build cannot create), and writes
//!   the compressed image with fixed ownership (0:0 unless [`Owners`] says otherwise), a fixed mtime and
//!   sequential inode numbers, so identical inputs give byte-identical images.
//! * [`cpio`] is the newc writer and reader (the reader is used to inspect images).
//! * [`Compression`], [`compress`] and [`decompress`] handle gzip, xz (CRC32,
//!   LZMA2 only) and zstd in the forms the kernel can unpack.
//! * [`atomic_write`] is the temp-file + fsync + rename helper other crates use too;
//!   [`exchange`] swaps two paths in one step (a new image folder for the old one).
//! * [`write_disk`] makes an ext4 disk image of the tree instead (`format = "disk"`).
//! * [`write_erofs`] makes a read-only lz4hc erofs root of the tree (`format = "erofs"`).
//! * [`write_squashfs`] makes a read-only zstd squashfs root of the tree (`format = "squashfs"`).
//! * [`write_qcow2`] converts a raw disk image to compressed qcow2 (`format = "qcow2"`).
//! * [`write_iso`] makes a hybrid ISO that ISOLINUX boots, kernel and initrd on it (`format = "iso"`).
//! * [`WorkDir`] is a build's temporary folder beside its output, locked while its builder
//!   lives, so later builds sweep only the folders of builders that are gone.

mod atomic;
mod compress;
pub mod cpio;
mod disk;
mod error;
mod initramfs;
pub mod iso;
pub mod rofs;
mod tree;
mod workdir;

pub use atomic::{atomic_write, exchange};
pub use compress::{compress, decompress, Compression};
pub use disk::{default_size_mib, minimum_size_mib, write_disk, DiskFs, DiskOptions, DiskStats};
pub use error::ImageError;
pub use initramfs::{
    source_date_epoch, write_initramfs, BuildOptions, ExtraEntry, ExtraKind, ImageStats,
    DEFAULT_DIR_MODE, SOURCE_DATE_EPOCH,
};
pub use iso::{write_iso, IsoOptions};
pub use rofs::{write_erofs, write_qcow2, write_squashfs};
pub use workdir::{sweep_stale, WorkDir};

/// Owners (uid, gid) other than root's, by path relative to the staging root. A build without
/// root cannot give its staged files to other users, so the writers store these instead: the
/// initramfs, the ext4 disk and squashfs do; erofs cannot ([`write_erofs`]).
pub type Owners = std::collections::BTreeMap<std::path::PathBuf, (u32, u32)>;
