//! Kernel image validation: x86 bzImage boot-protocol header or x86-64 ELF vmlinux.

use std::path::{Path, PathBuf};

use crate::KernelError;

/// The on-disk format of a kernel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// An x86 bzImage (boot protocol header "HdrS" at 0x202).
    BzImage,
    /// An uncompressed x86-64 ELF `vmlinux`.
    Vmlinux,
}

/// What [`inspect_kernel`] found out about a kernel file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImageInfo {
    /// bzImage or vmlinux.
    pub format: ImageFormat,
    /// Kernel release from the image (bzImage header string or the
    /// "Linux version" banner of a vmlinux), when present.
    pub version: Option<String>,
}

/// Read and validate a kernel file.
pub fn inspect_kernel(path: &Path) -> Result<KernelImageInfo, KernelError> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            KernelError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            crate::io_err("read", path)(e)
        }
    })?;
    inspect_bytes(path, &bytes)
}

fn not_a_kernel(path: &Path, reason: impl Into<String>) -> KernelError {
    KernelError::NotAKernel {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn truncated(path: &Path, expected: u64, actual: usize) -> KernelError {
    KernelError::Truncated {
        path: PathBuf::from(path),
        expected,
        actual: actual as u64,
    }
}

fn le16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Describe non-kernel content for the error message.
fn looks_like(bytes: &[u8]) -> String {
    if bytes.starts_with(b"#!") {
        return "it looks like a script".into();
    }
    let head = &bytes[..bytes.len().min(4096)];
    if std::str::from_utf8(head)
        .is_ok_and(|s| s.chars().all(|c| !c.is_control() || c.is_whitespace()))
    {
        return "it looks like a text file".into();
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return "it is gzip-compressed; decompress it or pass the bzImage".into();
    }
    "no bzImage header (HdrS at 0x202) and no ELF header".into()
}

/// Validate kernel bytes read from `path`.
pub(crate) fn inspect_bytes(path: &Path, bytes: &[u8]) -> Result<KernelImageInfo, KernelError> {
    if bytes.is_empty() {
        return Err(not_a_kernel(path, "the file is empty"));
    }
    if bytes.starts_with(b"\x7fELF") {
        return inspect_elf(path, bytes);
    }
    if bytes.get(0x202..0x206) == Some(b"HdrS") {
        return inspect_bzimage(path, bytes);
    }
    if bytes.len() < 0x206 && bytes.get(0x1fe..0x200) == Some(&[0x55, 0xaa]) {
        // A boot sector cut before the setup header.
        return Err(truncated(path, 0x206, bytes.len()));
    }
    Err(not_a_kernel(path, looks_like(bytes)))
}

fn inspect_bzimage(path: &Path, bytes: &[u8]) -> Result<KernelImageInfo, KernelError> {
    let header_err = || not_a_kernel(path, "the bzImage setup header is incomplete");
    let setup_sects = match *bytes.get(0x1f1).ok_or_else(header_err)? {
        0 => 4u64,
        n => u64::from(n),
    };
    let syssize = u64::from(le32(bytes, 0x1f4).ok_or_else(header_err)?);
    let expected = (setup_sects + 1) * 512 + syssize * 16;
    if (bytes.len() as u64) < expected {
        return Err(truncated(path, expected, bytes.len()));
    }
    let protocol = le16(bytes, 0x206).ok_or_else(header_err)?;
    let version = if protocol >= 0x200 {
        le16(bytes, 0x20e)
            .filter(|&p| p != 0)
            .and_then(|p| {
                let start = usize::from(p) + 0x200;
                let rest = bytes.get(start..)?;
                let end = rest.iter().take(256).position(|&b| b == 0 || b == b' ')?;
                std::str::from_utf8(&rest[..end]).ok().map(str::to_string)
            })
            .filter(|v| !v.is_empty())
    } else {
        None
    };
    Ok(KernelImageInfo {
        format: ImageFormat::BzImage,
        version,
    })
}

fn inspect_elf(path: &Path, bytes: &[u8]) -> Result<KernelImageInfo, KernelError> {
    use goblin::container::{Container, Ctx, Endian};
    use goblin::elf::{header, program_header};

    let hdr =
        goblin::elf::Elf::parse_header(bytes).map_err(|_| truncated(path, 64, bytes.len()))?;
    if hdr.e_ident[header::EI_CLASS] != header::ELFCLASS64 || hdr.e_machine != header::EM_X86_64 {
        return Err(not_a_kernel(
            path,
            format!(
                "it is an ELF file for {} ({}-bit), not an x86-64 vmlinux",
                header::machine_to_str(hdr.e_machine),
                if hdr.e_ident[header::EI_CLASS] == header::ELFCLASS64 {
                    64
                } else {
                    32
                }
            ),
        ));
    }
    if hdr.e_type != header::ET_EXEC {
        return Err(not_a_kernel(
            path,
            format!(
                "it is an ELF {} file, not an executable vmlinux",
                header::et_to_str(hdr.e_type)
            ),
        ));
    }
    let ctx = Ctx::new(Container::Big, Endian::Little);
    let ph_end = hdr.e_phoff + u64::from(hdr.e_phnum) * u64::from(hdr.e_phentsize);
    if ph_end > bytes.len() as u64 {
        return Err(truncated(path, ph_end, bytes.len()));
    }
    let phdrs = program_header::ProgramHeader::parse(
        bytes,
        hdr.e_phoff as usize,
        usize::from(hdr.e_phnum),
        ctx,
    )
    .map_err(|e| not_a_kernel(path, format!("bad ELF program headers: {e}")))?;
    let mut needed = ph_end;
    let mut loads = 0;
    for ph in &phdrs {
        if ph.p_type == program_header::PT_LOAD {
            loads += 1;
            needed = needed.max(ph.p_offset.saturating_add(ph.p_filesz));
        }
    }
    let sh_end = hdr.e_shoff + u64::from(hdr.e_shnum) * u64::from(hdr.e_shentsize);
    needed = needed.max(sh_end);
    if needed > bytes.len() as u64 {
        return Err(truncated(path, needed, bytes.len()));
    }
    if loads == 0 {
        return Err(not_a_kernel(path, "the ELF file has no loadable segments"));
    }
    let version = find_banner(bytes);
    Ok(KernelImageInfo {
        format: ImageFormat::Vmlinux,
        version,
    })
}

/// The release from a "Linux version X (" banner inside an uncompressed kernel.
fn find_banner(bytes: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"Linux version ";
    let mut start = 0;
    while let Some(pos) = bytes[start..]
        .windows(NEEDLE.len())
        .position(|w| w == NEEDLE)
    {
        let at = start + pos + NEEDLE.len();
        let rest = &bytes[at..bytes.len().min(at + 128)];
        if let Some(end) = rest.iter().position(|&b| b == b' ') {
            let word = &rest[..end];
            // Skip format strings such as "Linux version %s".
            if !word.is_empty()
                && word[0].is_ascii_digit()
                && word.iter().all(|b| b.is_ascii_graphic())
            {
                return std::str::from_utf8(word).ok().map(str::to_string);
            }
        }
        start = at;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fake_bzimage(version: &str, setup_sects: u8, syssize: u32) -> Vec<u8> {
        let total = (usize::from(setup_sects) + 1) * 512 + syssize as usize * 16;
        let mut b = vec![0u8; total];
        b[0x1f1] = setup_sects;
        b[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        b[0x1fe] = 0x55;
        b[0x1ff] = 0xaa;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        let ptr = 0x400u16; // string at 0x600
        b[0x20e..0x210].copy_from_slice(&ptr.to_le_bytes());
        let s = format!("{version} (builder@example) #1 SMP\0");
        b[0x600..0x600 + s.len()].copy_from_slice(s.as_bytes());
        b
    }

    #[test]
    fn bzimage_header_is_parsed() {
        let b = fake_bzimage("6.6.1-test", 4, 100);
        let info = inspect_bytes(Path::new("bz"), &b).unwrap();
        assert_eq!(info.format, ImageFormat::BzImage);
        assert_eq!(info.version.as_deref(), Some("6.6.1-test"));
    }

    #[test]
    fn truncated_bzimage_is_refused() {
        let b = fake_bzimage("6.6.1-test", 4, 100);
        let err = inspect_bytes(Path::new("/k/bz"), &b[..b.len() - 1]).unwrap_err();
        assert!(matches!(err, KernelError::Truncated { .. }), "{err}");
        assert!(err.to_string().contains("/k/bz"));
        let err = inspect_bytes(Path::new("/k/bz"), &b[..0x200]).unwrap_err();
        assert!(matches!(err, KernelError::Truncated { .. }), "{err}");
    }

    #[test]
    fn text_and_empty_are_refused() {
        let err = inspect_bytes(Path::new("/k/readme"), b"hello\nworld\n").unwrap_err();
        assert!(err.to_string().contains("text file"), "{err}");
        let err = inspect_bytes(Path::new("/k/empty"), b"").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = inspect_bytes(Path::new("/k/s"), b"#!/bin/sh\n").unwrap_err();
        assert!(err.to_string().contains("script"), "{err}");
    }

    #[test]
    fn banner_found() {
        let mut b = b"xxLinux version %s (%s)\0....Linux version 6.1.0-9-amd64 (x) #1".to_vec();
        b.extend_from_slice(&[0; 10]);
        assert_eq!(find_banner(&b).as_deref(), Some("6.1.0-9-amd64"));
    }
}
