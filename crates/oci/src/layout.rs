//! OCI image layout folders as a source: `index.json` read, the manifest
//! chosen by its `org.opencontainers.image.ref.name` tag (or the only one),
//! blobs read from `blobs/sha256/<hex>` and streamed through the verified cache.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::cache::verify_bytes;
use crate::image::{parse_document, Parsed, REF_NAME};
use crate::{
    choose_platform, read_document, resolve, BlobCache, BlobSource, Descriptor, Digest, OciError,
    Pulled, Source,
};

struct LayoutStore<'a> {
    dir: &'a Path,
}

impl LayoutStore<'_> {
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(digest.hex())
    }
}

impl BlobSource for LayoutStore<'_> {
    fn document(&mut self, digest: &Digest) -> Result<(Vec<u8>, Option<String>, String), OciError> {
        let path = self.blob_path(digest);
        let bytes = read_document(&path)?;
        Ok((bytes, None, path.display().to_string()))
    }

    fn blob(
        &mut self,
        d: &Descriptor,
        digest: &Digest,
        label: &str,
        cache: &BlobCache,
        progress: &dyn Fn(&str, u64, u64),
    ) -> Result<PathBuf, OciError> {
        let path = self.blob_path(digest);
        let mut file = File::open(&path).map_err(|e| OciError::io(&path, e))?;
        let size = (d.size > 0).then_some(d.size);
        cache.store(
            digest,
            size,
            &path.display().to_string(),
            label,
            &mut file,
            progress,
        )
    }
}

fn tag_of(d: &Descriptor) -> Option<&str> {
    d.annotations.get(REF_NAME).map(String::as_str)
}

/// Pulls from the layout folder `dir`, taking `tag` (or the only manifest).
pub(crate) fn pull(
    src: &Source,
    dir: &Path,
    tag: Option<&str>,
    cache: &BlobCache,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Pulled, OciError> {
    let reference = src.to_string();
    let index_path = dir.join("index.json");
    if !index_path.is_file() {
        return Err(OciError::BadImage {
            what: dir.display().to_string(),
            why: "not an OCI image layout (no index.json)".to_string(),
        });
    }
    let index_bytes = read_document(&index_path)?;
    let manifests = match parse_document(
        &index_path.display().to_string(),
        &index_bytes,
        Some(crate::image::OCI_INDEX),
    )? {
        Parsed::Index(m) => m,
        Parsed::Manifest { .. } => {
            return Err(OciError::BadImage {
                what: index_path.display().to_string(),
                why: "is a manifest, not an index".to_string(),
            })
        }
    };
    let tags = || {
        let mut t: Vec<&str> = manifests.iter().filter_map(tag_of).collect();
        t.sort_unstable();
        t.dedup();
        if t.is_empty() {
            "no tags".to_string()
        } else {
            format!("tags: {}", t.join(", "))
        }
    };
    let candidates: Vec<Descriptor> = match tag {
        Some(t) => manifests
            .iter()
            .filter(|d| tag_of(d) == Some(t))
            .cloned()
            .collect(),
        None => manifests.clone(),
    };
    let chosen = match candidates.len() {
        0 if manifests.is_empty() => {
            return Err(OciError::ManifestUnknown {
                reference,
                why: format!("{} lists no manifests", index_path.display()),
            })
        }
        0 => {
            return Err(OciError::ManifestUnknown {
                reference,
                why: format!("no such tag in {}; it has {}", index_path.display(), tags()),
            })
        }
        1 => candidates[0].clone(),
        _ if candidates.iter().all(|d| d.platform.is_some()) => {
            choose_platform(&reference, &candidates)?
        }
        _ => {
            return Err(OciError::ManifestUnknown {
                reference,
                why: format!(
                    "{} holds {} manifests; name one as oci:DIR:TAG ({})",
                    index_path.display(),
                    candidates.len(),
                    tags()
                ),
            })
        }
    };
    let digest = Digest::parse_oci(&chosen.digest)?;
    let mut store = LayoutStore { dir };
    let (bytes, _, name) = store.document(&digest)?;
    verify_bytes(&name, &digest, &bytes)?;
    let media = Some(chosen.media_type.clone()).filter(|m| !m.is_empty());
    resolve(
        &reference, &mut store, bytes, media, digest, cache, progress,
    )
}
