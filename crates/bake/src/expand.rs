//! The initramfs a VM boots from: the image's compressed archive, or the same archive expanded
//! once on the host into the cache.
//!
//! Images keep their initramfs compressed (small on disk, in registries and in transfers), but
//! the guest kernel's decompressor is slow under TCG: recipes/httpd's 535 kB zstd archive cost
//! about 60 ms to unpack in the guest, and the first HTTP answer came ~100 ms later than from
//! the same archive uncompressed (BENCHMARKS.md). Expanding it on the host takes a few
//! milliseconds, once per archive. A guest with little memory relative to the archive keeps the
//! compressed one: the kernel holds the whole loaded archive and the files it unpacks at once.

use std::path::{Path, PathBuf};

use crate::manifest::InitramfsInfo;
use crate::{io, BuildError};

/// The cache folder (under the cache root) holding expanded archives, named `<sha256>.cpio`
/// after the compressed file.
pub const EXPANDED_DIR: &str = "initrd";

/// The largest expanded archive, as a fraction of guest memory (1/`MEMORY_FRACTION`), that a
/// VM boots from: at boot the guest holds the loaded archive and the unpacked files together.
pub const MEMORY_FRACTION: u64 = 8;

/// Whether a VM with `memory_mib` boots `info`'s archive expanded: a compressed initramfs
/// loaded with the kernel (not a root on a drive; not `none`) whose expanded size fits [`MEMORY_FRACTION`] of the memory.
pub fn boots_expanded(info: &InitramfsInfo, memory_mib: u32) -> bool {
    matches!(info.format.as_str(), "initramfs" | "iso")
        && info.compression != "none"
        && info.uncompressed_size > 0
        && info.uncompressed_size.saturating_mul(MEMORY_FRACTION) <= u64::from(memory_mib) << 20
}

/// The initramfs a VM with `memory_mib` of guest memory boots from `image_dir`: the expanded
/// copy's path in `<cache_root>/initrd/` when [`boots_expanded`], else the image's own file.
/// Nothing is read or written (a plan on paper names it); [`boot_initramfs`] makes it.
pub fn boot_initramfs_path(
    image_dir: &Path,
    info: &InitramfsInfo,
    cache_root: &Path,
    memory_mib: u32,
) -> PathBuf {
    if !boots_expanded(info, memory_mib) || !is_sha256(&info.sha256) {
        return image_dir.join(&info.file);
    }
    cache_root
        .join(EXPANDED_DIR)
        .join(format!("{}.cpio", info.sha256))
}

/// [`boot_initramfs_path`], the expanded copy made now if missing (atomically). An archive
/// that does not expand to the manifest's size is refused.
pub fn boot_initramfs(
    image_dir: &Path,
    info: &InitramfsInfo,
    cache_root: &Path,
    memory_mib: u32,
) -> Result<PathBuf, BuildError> {
    let file = image_dir.join(&info.file);
    let dest = boot_initramfs_path(image_dir, info, cache_root, memory_mib);
    if dest == file {
        return Ok(file);
    }
    let dir = cache_root.join(EXPANDED_DIR);
    if std::fs::metadata(&dest).is_ok_and(|m| m.len() == info.uncompressed_size) {
        return Ok(dest);
    }
    let data = std::fs::read(&file).map_err(io(&file))?;
    let cpio = kiln_image::decompress(&data).map_err(|e| BuildError::BadImage {
        path: file.clone(),
        message: format!("cannot expand the initramfs: {e}; rebuild the image"),
    })?;
    if cpio.len() as u64 != info.uncompressed_size {
        return Err(BuildError::BadImage {
            path: file,
            message: format!(
                "the initramfs expands to {} bytes, the manifest says {}; rebuild the image",
                cpio.len(),
                info.uncompressed_size
            ),
        });
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    kiln_image::atomic_write(&dest, &cpio).map_err(|e| BuildError::BadImage {
        path: dest.clone(),
        message: e.to_string(),
    })?;
    Ok(dest)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(compression: &str, file: &str, sha: &str, size: u64) -> InitramfsInfo {
        InitramfsInfo {
            file: file.into(),
            format: "initramfs".into(),
            compression: compression.into(),
            size: 0,
            uncompressed_size: size,
            entries: 1,
            sha256: sha.into(),
        }
    }

    #[test]
    fn only_compressed_archives_that_fit_memory_are_expanded() {
        let sha = "a".repeat(64);
        let mib = 1 << 20;
        assert!(boots_expanded(&info("zstd", "i", &sha, mib), 16));
        assert!(boots_expanded(&info("gzip", "i", &sha, 2 * mib), 16));
        assert!(!boots_expanded(&info("zstd", "i", &sha, 2 * mib + 1), 16));
        assert!(!boots_expanded(&info("none", "i", &sha, mib), 512));
        let mut disk = info("zstd", "i", &sha, mib);
        disk.format = "disk".into();
        assert!(!boots_expanded(&disk, 512));
    }

    #[test]
    fn expands_once_into_the_cache_and_refuses_a_wrong_size() {
        let d = tempfile::tempdir().expect("tmp");
        let (img, cache) = (d.path().join("img"), d.path().join("cache"));
        std::fs::create_dir_all(&img).expect("mkdir");
        let cpio = b"070701 pretend archive".repeat(100);
        let z = kiln_image::compress(&cpio, kiln_image::Compression::Zstd, None).expect("z");
        std::fs::write(img.join("initramfs.cpio.zst"), &z).expect("w");
        let sha = "b".repeat(64);
        let i = info("zstd", "initramfs.cpio.zst", &sha, cpio.len() as u64);

        let got = boot_initramfs(&img, &i, &cache, 64).expect("expand");
        assert_eq!(got, cache.join(EXPANDED_DIR).join(format!("{sha}.cpio")));
        assert_eq!(std::fs::read(&got).expect("r"), cpio);
        // Too little memory: the image's own file.
        assert_eq!(
            boot_initramfs(&img, &i, &cache, 0).expect("small"),
            img.join("initramfs.cpio.zst")
        );
        // The cached copy is used as it is (same size): no second decompression.
        std::fs::write(img.join("initramfs.cpio.zst"), b"junk").expect("w");
        assert_eq!(boot_initramfs(&img, &i, &cache, 64).expect("cached"), got);

        let other = info("zstd", "initramfs.cpio.zst", &"c".repeat(64), 5);
        let err = boot_initramfs(&img, &other, &cache, 64).expect_err("junk");
        assert!(err.to_string().contains("rebuild the image"), "{err}");
        std::fs::write(img.join("initramfs.cpio.zst"), &z).expect("w");
        let err = boot_initramfs(&img, &other, &cache, 64).expect_err("size");
        assert!(err.to_string().contains("manifest says 5"), "{err}");
        let leftovers: Vec<_> = std::fs::read_dir(cache.join(EXPANDED_DIR))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}
