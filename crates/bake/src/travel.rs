//! Image folders that travel through a registry (`kiln push DIR REF`, `kiln pull REF`, `kiln run
//! REF` of a pushed image): the folder as a Kiln OCI artifact (kiln-oci's `artifact`). What
//! travels is small: the kernel goes zstd-compressed (the folder's PVH `vmlinux` is 16 MB
//! uncompressed, a few MB compressed) and is expanded once into the cache on pull, where every
//! image folder pulled with it hard-links it; the root goes as it is (an initramfs is already
//! compressed) or zstd-compressed (a disk). Templates do not travel (they are made again where
//! the image runs). A pull is verified blob by blob and swapped into place whole, so the
//! result is byte for byte the folder pushed.

use crate::{io, load_image, manifest::ImageManifest, BuildError, MANIFEST};
use kiln_oci::artifact::{self, Part, Pushed, TITLE};
use kiln_oci::Source;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A zstd-compressed kernel file.
pub const KERNEL_ZSTD: &str = "application/vnd.kiln.kernel.v1+zstd";
/// A root image as it is in the folder (an initramfs: compressed already).
pub const ROOT: &str = "application/vnd.kiln.root.v1";
/// A zstd-compressed root disk image.
pub const ROOT_ZSTD: &str = "application/vnd.kiln.root.v1+zstd";
/// Media type of a PC boot file as it is (`format = "iso"`: the bzImage and the ISO).
pub const PC_FILE: &str = "application/vnd.kiln.pc.v1";
/// The annotation holding a compressed part's uncompressed digest.
pub const UNCOMPRESSED: &str = "org.kiln.uncompressed.digest";

fn registry_ref(reference: &str) -> Result<kiln_oci::Reference, BuildError> {
    match reference.parse::<Source>()? {
        Source::Registry(r) => Ok(r),
        _ => Err(BuildError::BadImage {
            path: PathBuf::from(reference),
            message: "push and pull go to a registry (HOST[:PORT]/REPO[:TAG])".into(),
        }),
    }
}

fn sha256_file(path: &Path) -> Result<String, BuildError> {
    Ok(format!("sha256:{}", kiln_debpkg::sha256_file(path)?))
}

/// `src` zstd-compressed into the cache (`oci/compressed/<hex>.zst`, made once per content);
/// (its path, `src`'s digest).
fn compressed(src: &Path, cache_root: &Path) -> Result<(PathBuf, String), BuildError> {
    let digest = sha256_file(src)?;
    let dir = crate::oci::cache_dir(cache_root).join("compressed");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let out = dir.join(format!("{}.zst", digest.trim_start_matches("sha256:")));
    if !out.is_file() {
        let mut input = std::fs::File::open(src).map_err(io(src))?;
        let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io(&dir))?;
        let mut enc = zstd::Encoder::new(tmp.as_file(), 12).map_err(io(&out))?;
        std::io::copy(&mut input, &mut enc).map_err(io(src))?;
        enc.finish().map_err(io(&out))?;
        tmp.persist(&out).map_err(|e| io(&out)(e.error))?;
    }
    Ok((out, digest))
}

/// Push image folder `dir` to `reference`.
pub fn push_image(
    dir: &Path,
    reference: &str,
    cache_root: &Path,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Pushed, BuildError> {
    let m = load_image(dir)?;
    let r = registry_ref(reference)?;
    let part = |media: &str, path: PathBuf, title: &str, raw: Option<String>| {
        let mut annotations = BTreeMap::from([(TITLE.to_string(), title.to_string())]);
        if let Some(d) = raw {
            annotations.insert(UNCOMPRESSED.to_string(), d);
        }
        Part {
            media_type: media.into(),
            path,
            annotations,
        }
    };
    let (kz, kd) = compressed(&dir.join(&m.kernel.file), cache_root)?;
    let mut parts = vec![part(KERNEL_ZSTD, kz, &m.kernel.file, Some(kd))];
    let root = dir.join(&m.initramfs.file);
    if m.initramfs.format == "initramfs" {
        parts.push(part(ROOT, root, &m.initramfs.file, None));
    } else {
        let (rz, rd) = compressed(&root, cache_root)?;
        parts.push(part(ROOT_ZSTD, rz, &m.initramfs.file, Some(rd)));
    }
    if let Some(pc) = &m.pc {
        for f in [&pc.kernel, &pc.iso] {
            parts.push(part(PC_FILE, dir.join(f), f, None));
        }
    }
    let opts = crate::oci::pull_options(cache_root, crate::oci::insecure_for(reference));
    Ok(artifact::push(
        &r,
        &opts,
        &m.name,
        &dir.join(MANIFEST),
        &parts,
        progress,
    )?)
}

/// A compressed part expanded once into the cache (`oci/expanded/<hex>`), verified.
fn expanded(part: &Part, cache_root: &Path) -> Result<PathBuf, BuildError> {
    let want = part
        .annotations
        .get(UNCOMPRESSED)
        .cloned()
        .unwrap_or_default();
    let hexd = want.strip_prefix("sha256:").unwrap_or("");
    if hexd.len() != 64 || !hexd.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BuildError::BadImage {
            path: part.path.clone(),
            message: format!("{}: no {UNCOMPRESSED} annotation", part.title()),
        });
    }
    let dir = crate::oci::cache_dir(cache_root).join("expanded");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let out = dir.join(hexd);
    if out.is_file() && sha256_file(&out)? == want {
        return Ok(out);
    }
    let input = std::fs::File::open(&part.path).map_err(io(&part.path))?;
    let mut dec = zstd::Decoder::new(input).map_err(io(&part.path))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io(&dir))?;
    std::io::copy(&mut dec, &mut tmp).map_err(io(&part.path))?;
    tmp.flush().map_err(io(&out))?;
    let got = sha256_file(tmp.path())?;
    if got != want {
        return Err(BuildError::BadImage {
            path: part.path.clone(),
            message: format!("{} expands to {got}, not {want}", part.title()),
        });
    }
    // Readable like the files of a built image folder (a temp file is the owner's alone).
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io(&out))?;
    tmp.persist(&out).map_err(|e| io(&out)(e.error))?;
    Ok(out)
}

fn link_or_copy(from: &Path, to: &Path) -> Result<(), BuildError> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(io(from))?;
    }
    Ok(())
}

/// Pull `reference` into image folder `out` if it is a Kiln image (`None` for anything else);
/// the folder is swapped into place whole.
pub fn pull_image(
    reference: &str,
    out: &Path,
    cache_root: &Path,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Option<ImageManifest>, BuildError> {
    let r = registry_ref(reference)?;
    let opts = crate::oci::pull_options(cache_root, crate::oci::insecure_for(reference));
    let Some(a) = artifact::pull(&r, &opts, progress)? else {
        return Ok(None);
    };
    let (work, _, image_dir) = crate::workspace(out)?;
    std::fs::copy(&a.config, image_dir.join(MANIFEST)).map_err(io(&a.config))?;
    for p in &a.parts {
        let dest = image_dir.join(p.title());
        match p.media_type.as_str() {
            KERNEL_ZSTD | ROOT_ZSTD => link_or_copy(&expanded(p, cache_root)?, &dest)?,
            ROOT | PC_FILE => link_or_copy(&p.path, &dest)?,
            other => {
                return Err(BuildError::BadImage {
                    path: PathBuf::from(reference),
                    message: format!("{}: unknown part type {other}", p.title()),
                })
            }
        }
    }
    let m = load_image(&image_dir)?;
    crate::swap_into_place(work, &image_dir, out)?;
    Ok(Some(m))
}
