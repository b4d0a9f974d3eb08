//! Direct PVH boot of a bzImage's payload.
//!
//! A bzImage carries the kernel ELF compressed behind a real-mode setup stub; under TCG the
//! stub's decompression costs a large part of the boot. A kernel built with CONFIG_PVH (Debian's
//! cloud kernel is) can instead be booted as the uncompressed ELF through its PVH entry point,
//! which QEMU loads directly. This module extracts that ELF once, on the host.

use crate::KernelError;
use std::io::Read;
use std::path::{Path, PathBuf};

const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Xen ELF note type of the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The compressed payload of a bzImage (boot protocol ≥ 2.08), or None.
pub fn bzimage_payload(bz: &[u8]) -> Option<&[u8]> {
    if bz.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let version = u16::from_le_bytes(bz.get(0x206..0x208)?.try_into().ok()?);
    if version < 0x208 {
        return None;
    }
    let setup_sects = match *bz.get(0x1f1)? {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + le32(bz, 0x248)? as usize;
    let len = le32(bz, 0x24c)? as usize;
    bz.get(start..start.checked_add(len)?)
}

/// Decompress a kernel payload by its magic: gzip, xz, zstd or LZ4 (legacy frames).
pub fn decompress_payload(p: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    if p.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(p).read_to_end(&mut out).ok()?;
    } else if p.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        liblzma::read::XzDecoder::new(p)
            .read_to_end(&mut out)
            .ok()?;
    } else if p.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        // The kernel appends its size after the frame; stop at the frame's end.
        let mut d = zstd::stream::read::Decoder::new(p).ok()?.single_frame();
        d.read_to_end(&mut out).ok()?;
    } else if le32(p, 0) == Some(LZ4_LEGACY_MAGIC) {
        let mut i = 4;
        while let Some(n) = le32(p, i) {
            i += 4;
            if n == LZ4_LEGACY_MAGIC {
                continue;
            }
            let Some(block) = p.get(i..i + n as usize) else {
                break;
            };
            match lz4_flex::block::decompress(block, 8 << 20) {
                Ok(b) => out.extend_from_slice(&b),
                // The trailing size word is not a block: the stream has ended.
                Err(_) => break,
            }
            i += n as usize;
        }
    } else {
        return None;
    }
    Some(out)
}

/// Whether an ELF kernel has a PVH entry point note.
pub fn has_pvh_note(elf: &[u8]) -> bool {
    let Ok(obj) = goblin::elf::Elf::parse(elf) else {
        return false;
    };
    if let Some(notes) = obj.iter_note_headers(elf) {
        for n in notes.flatten() {
            if n.name == "Xen" && n.n_type == XEN_ELFNOTE_PHYS32_ENTRY {
                return true;
            }
        }
    }
    false
}

/// The PVH-bootable ELF inside a bzImage, if the kernel supports PVH and the payload's
/// compression is one we read.
pub fn extract_pvh(bz: &[u8]) -> Option<Vec<u8>> {
    let elf = decompress_payload(bzimage_payload(bz)?)?;
    (elf.starts_with(b"\x7fELF") && has_pvh_note(&elf)).then_some(elf)
}

/// The file to boot `kernel` from through its PVH entry: the kernel itself when it is already
/// a PVH ELF (a vmlinux, like the tiny kernel's), else the ELF inside the bzImage, extracted
/// into `dest` (atomically, once). `None` when the kernel cannot be booted that way.
pub fn ensure_pvh(kernel: &Path, dest: &Path) -> Result<Option<PathBuf>, KernelError> {
    if dest.is_file() {
        return Ok(Some(dest.to_path_buf()));
    }
    let bytes = std::fs::read(kernel).map_err(crate::io_err("read", kernel))?;
    if bytes.starts_with(b"\x7fELF") {
        return Ok(has_pvh_note(&bytes).then(|| kernel.to_path_buf()));
    }
    let Some(elf) = extract_pvh(&bytes) else {
        return Ok(None);
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(crate::io_err("create", dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(crate::io_err("create", dir))?;
    std::io::Write::write_all(&mut tmp, &elf).map_err(crate::io_err("write", dest))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(crate::io_err("chmod", dest))?;
    tmp.persist(dest)
        .map_err(|e| crate::io_err("rename", dest)(e.error))?;
    Ok(Some(dest.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_elf_without_a_pvh_note_is_not_booted_through_pvh() {
        let d = tempfile::tempdir().expect("tmp");
        let dest = d.path().join("x.vmlinux");
        // Any ELF without the Xen note: a host executable.
        let got = ensure_pvh(Path::new("/bin/true"), &dest).expect("reads");
        assert_eq!(got, None);
        assert!(!dest.exists(), "nothing extracted");
        let junk = d.path().join("junk");
        std::fs::write(&junk, b"not a kernel").expect("w");
        assert_eq!(ensure_pvh(&junk, &dest).expect("reads"), None);
    }

    #[test]
    fn non_bzimage_has_no_payload() {
        assert!(bzimage_payload(b"not a kernel").is_none());
        assert!(extract_pvh(&[0u8; 4096]).is_none());
    }

    #[test]
    fn lz4_legacy_round_trip() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let block = lz4_flex::block::compress(&data);
        let mut framed = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        framed.extend_from_slice(&(block.len() as u32).to_le_bytes());
        framed.extend_from_slice(&block);
        framed.extend_from_slice(&(data.len() as u32).to_le_bytes()); // kernel's trailing size
        assert_eq!(decompress_payload(&framed).expect("decodes"), data);
    }

    #[test]
    fn gzip_payload_decodes_and_plain_elf_without_note_is_not_pvh() {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b"\x7fELF-not-really").expect("w");
        let gz = e.finish().expect("gz");
        assert_eq!(decompress_payload(&gz).expect("gz"), b"\x7fELF-not-really");
        assert!(!has_pvh_note(b"\x7fELF-not-really"));
    }
}
