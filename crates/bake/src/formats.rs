//! Root formats besides the initramfs and the raw ext4 disk (`[image] format`): erofs and
//! squashfs (compressed, read-only, on virtio-blk, shared by any number of VMs; kiln-init lays a
//! tmpfs overlay over them), qcow2 (the ext4 disk in QEMU's format) and iso (the initramfs plus
//! a hybrid ISO that boots it on a PC, with a kernel that has PCI). Each is written by
//! Debian's tool for it through `kiln_image`, reproducibly and without root.

use std::path::{Path, PathBuf};

use crate::manifest::{InitramfsInfo, PcInfo};
use crate::{io, BuildError};

/// The empty folder a read-only root carries for kiln-init's overlay (`kiln-init`'s
/// `extras::OVERLAY_DIR`).
pub const OVERLAY_DIR: &str = ".kiln-rw";

/// The bzImage's file name in an image folder with a PC boot (`format = "iso"`).
pub const PC_KERNEL_FILE: &str = "bzImage";

/// The ISO's file name in an image folder (`format = "iso"`).
pub const ISO_FILE: &str = "kiln.iso";

/// The kernel command line an image boots with on a PC: the serial console on COM1 and
/// kiln-init's reboot as the end of the VM, then the recipe's own arguments.
pub fn pc_cmdline(recipe_args: &str) -> String {
    let mut c = String::from("console=ttyS0,115200 panic=-1 quiet reboot=t");
    let extra = recipe_args.trim();
    if !extra.is_empty() {
        c.push(' ');
        c.push_str(extra);
    }
    c
}

/// Write `staging` as an erofs or squashfs root (`format`) into `image_dir`.
pub(crate) fn pack_read_only(
    format: &str,
    staging: &Path,
    image_dir: &Path,
    uuid: &str,
    owners: &kiln_image::Owners,
) -> Result<InitramfsInfo, BuildError> {
    let dir = staging.join(OVERLAY_DIR);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mtime = kiln_image::source_date_epoch().unwrap_or(0);
    let file = format!("root.{format}");
    let dest = image_dir.join(&file);
    let stats = if format == "erofs" {
        if let Some((path, (uid, gid))) = owners.iter().next() {
            tracing::warn!(
                "erofs cannot keep owners with Debian's mkfs.erofs 1.5: {} paths the base image \
                 gives to other users (the first: /{} {uid}:{gid}) are root's in this image; \
                 [image] format = \"squashfs\" keeps them",
                owners.len(),
                path.display()
            );
        }
        kiln_image::write_erofs(staging, mtime, uuid, &dest)?
    } else {
        kiln_image::write_squashfs(staging, mtime, owners, &dest)?
    };
    Ok(InitramfsInfo {
        file,
        format: format.into(),
        compression: if format == "erofs" { "lz4hc" } else { "zstd" }.into(),
        size: stats.size_bytes,
        uncompressed_size: stats.used_bytes,
        entries: stats.entries,
        sha256: stats.sha256,
    })
}

/// Turn the raw ext4 disk `disk` (in `image_dir`) into compressed qcow2, removing the raw one.
pub(crate) fn to_qcow2(disk: InitramfsInfo, image_dir: &Path) -> Result<InitramfsInfo, BuildError> {
    let raw = image_dir.join(&disk.file);
    let file = "root.qcow2".to_string();
    let stats = kiln_image::write_qcow2(&raw, &image_dir.join(&file))?;
    std::fs::remove_file(&raw).map_err(io(&raw))?;
    Ok(InitramfsInfo {
        file,
        format: "qcow2".into(),
        compression: "zlib".into(),
        size: stats.size_bytes,
        sha256: stats.sha256,
        ..disk
    })
}

/// The bzImage of `kernel`: the tiny kernel's sits beside its PVH vmlinux in the cache, a
/// Debian or user kernel is one already. `None` when the file is not a bzImage (a bare ELF).
pub fn bzimage_of(kernel: &kiln_kernel::Kernel) -> Option<PathBuf> {
    let sibling = kernel.image.with_file_name("bzImage");
    [sibling, kernel.image.clone()]
        .into_iter()
        .find(|p| is_bzimage(p))
}

/// Whether `path` is a Linux bzImage ("HdrS" at 0x202).
fn is_bzimage(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut magic = [0u8; 4];
    f.seek(SeekFrom::Start(0x202)).is_ok() && f.read_exact(&mut magic).is_ok() && &magic == b"HdrS"
}

/// Put the PC kernel beside the initramfs in `image_dir` and write the hybrid ISO of both.
pub(crate) fn pack_iso(
    kernel: &kiln_kernel::Kernel,
    location: &str,
    name: &str,
    recipe_args: &str,
    root: &InitramfsInfo,
    image_dir: &Path,
) -> Result<PcInfo, BuildError> {
    let bz = bzimage_of(kernel).ok_or_else(|| BuildError::BadKernel {
        location: location.to_string(),
        message: format!(
            "{} is not a bzImage, and format = \"iso\" boots a bzImage with ISOLINUX; use kernel = \"tiny\" or \"debian\", or a bzImage file",
            kernel.image.display()
        ),
    })?;
    let dest = image_dir.join(PC_KERNEL_FILE);
    if std::fs::hard_link(&bz, &dest).is_err() {
        std::fs::copy(&bz, &dest).map_err(io(&bz))?;
    }
    let kernel_size = std::fs::metadata(&dest).map_err(io(&dest))?.len();
    let cmdline = pc_cmdline(recipe_args);
    let opts = kiln_image::IsoOptions {
        kernel: dest,
        initrd: image_dir.join(&root.file),
        cmdline: cmdline.clone(),
        label: format!("KILN_{name}"),
        mtime: kiln_image::source_date_epoch().unwrap_or(0),
    };
    let stats = kiln_image::write_iso(&opts, &image_dir.join(ISO_FILE))?;
    Ok(PcInfo {
        kernel: PC_KERNEL_FILE.into(),
        kernel_size,
        cmdline,
        iso: ISO_FILE.into(),
        iso_size: stats.size_bytes,
        iso_sha256: stats.sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pc_command_line_has_the_serial_console_and_the_recipes_args() {
        assert_eq!(
            pc_cmdline(""),
            "console=ttyS0,115200 panic=-1 quiet reboot=t"
        );
        assert!(pc_cmdline(" foo=1 ").ends_with("reboot=t foo=1"));
    }

    #[test]
    fn only_a_file_with_the_setup_header_is_a_bzimage() {
        let d = tempfile::tempdir().expect("tmp");
        let elf = d.path().join("vmlinux");
        std::fs::write(&elf, b"\x7fELF and more bytes than 0x206 ...").expect("w");
        assert!(!is_bzimage(&elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bzp = d.path().join("bzImage");
        std::fs::write(&bzp, &bz).expect("w");
        assert!(is_bzimage(&bzp));
        let k = kiln_kernel::Kernel {
            image: elf,
            version: None,
            modules_dir: None,
            sha256: String::new(),
            description: String::new(),
            size: 0,
            patches: Vec::new(),
            hz: None,
        };
        assert_eq!(bzimage_of(&k), Some(bzp));
    }
}
