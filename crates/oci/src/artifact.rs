//! Kiln image folders as OCI artifacts (`kiln push`, `kiln pull`): an image manifest whose
//! `artifactType` is [`ARTIFACT_TYPE`], whose config is the folder's `manifest.json`
//! ([`CONFIG_MEDIA_TYPE`]), and whose layers are the folder's files, each named by its
//! `org.opencontainers.image.title` annotation (docs/oci.md lists the media types). A push
//! sends only the blobs the registry lacks; a pull verifies every blob into the cache.

use crate::cache::{BlobCache, Digest};
use crate::registry::{default_docker_config, docker_credentials, Client};
use crate::{OciError, PullOptions, Reference};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The artifact type of a Kiln image.
pub const ARTIFACT_TYPE: &str = "application/vnd.kiln.image.v1";
/// The config blob: the image folder's manifest.json.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.image.manifest.v1+json";
/// The OCI image manifest media type the artifact is written as.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The annotation naming a layer's file in the image folder.
pub const TITLE: &str = "org.opencontainers.image.title";

/// One file of an image folder as a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Its media type.
    pub media_type: String,
    /// The bytes to send (push), or the verified blob in the cache (pull).
    pub path: PathBuf,
    /// Its annotations; [`TITLE`] is the file's name in the folder.
    pub annotations: BTreeMap<String, String>,
}

impl Part {
    /// The file's name in the image folder.
    pub fn title(&self) -> &str {
        self.annotations
            .get(TITLE)
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The manifest's digest.
    pub digest: String,
    /// Blobs sent.
    pub sent: usize,
    /// Blobs the registry had already.
    pub skipped: usize,
    /// Bytes sent.
    pub bytes_sent: u64,
}

/// A pulled artifact: its config and parts, verified into the cache.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The config blob (manifest.json's bytes).
    pub config: PathBuf,
    /// The parts, in manifest order.
    pub parts: Vec<Part>,
    /// The manifest's digest.
    pub manifest_digest: String,
}

fn client(reference: &Reference, opts: &PullOptions) -> Result<Client, OciError> {
    let config_path = opts.docker_config.clone().or_else(default_docker_config);
    let credentials = match &config_path {
        Some(p) => docker_credentials(p, &reference.registry)?,
        None => None,
    };
    Client::new(reference, opts.insecure, credentials)
}

/// The artifact manifest for `config` and `layers` (descriptors as JSON values), byte-stable.
fn manifest_bytes(
    config: serde_json::Value,
    layers: Vec<serde_json::Value>,
    name: &str,
) -> Vec<u8> {
    let m = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": config,
        "layers": layers,
        "annotations": { TITLE: name },
    });
    serde_json::to_vec(&m).unwrap_or_default()
}

/// Push the image folder's `config` (manifest.json) and `parts` to `reference` (its tag, or
/// `latest`); blobs the registry has are not sent again.
pub fn push(
    reference: &Reference,
    opts: &PullOptions,
    name: &str,
    config: &Path,
    parts: &[Part],
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Pushed, OciError> {
    let mut c = client(reference, opts)?;
    let mut pushed = Pushed {
        digest: String::new(),
        sent: 0,
        skipped: 0,
        bytes_sent: 0,
    };
    let mut send = |path: &Path, label: &str| -> Result<(Digest, u64), OciError> {
        let (d, size) = Digest::of_file(path)?;
        if c.has_blob(&d.to_string())? {
            pushed.skipped += 1;
        } else {
            progress(label, 0, size);
            c.push_blob(&d.to_string(), path)?;
            progress(label, size, size);
            pushed.sent += 1;
            pushed.bytes_sent += size;
        }
        Ok((d, size))
    };
    let (cd, csize) = send(config, "manifest.json")?;
    let mut layers = Vec::new();
    for p in parts {
        let (d, size) = send(&p.path, p.title())?;
        layers.push(json!({
            "mediaType": p.media_type,
            "digest": d.to_string(),
            "size": size,
            "annotations": p.annotations,
        }));
    }
    let config = json!({"mediaType": CONFIG_MEDIA_TYPE, "digest": cd.to_string(), "size": csize});
    let bytes = manifest_bytes(config, layers, name);
    let tag = reference.tag.clone().unwrap_or_else(|| "latest".into());
    pushed.digest = c.put_manifest(&tag, &bytes, MANIFEST_MEDIA_TYPE)?;
    Ok(pushed)
}

/// Pull `reference` if it is a Kiln image (`None` for anything else, e.g. a container image),
/// every blob verified into the cache.
pub fn pull(
    reference: &Reference,
    opts: &PullOptions,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Option<Artifact>, OciError> {
    let mut c = client(reference, opts)?;
    let (bytes, _, url) = c.manifest(reference.manifest_ref())?;
    let digest = match &reference.digest {
        Some(d) => {
            let d = Digest::parse_oci(d)?;
            crate::cache::verify_bytes(&url, &d, &bytes)?;
            d
        }
        None => Digest::of(&bytes),
    };
    let doc: crate::image::Document = match serde_json::from_slice(&bytes) {
        Ok(d) => d,
        Err(_) => return Ok(None),
    };
    let Some(config) = doc.config.filter(|c| c.media_type == CONFIG_MEDIA_TYPE) else {
        return Ok(None);
    };
    let cache = BlobCache::new(&opts.cache);
    let mut fetch = |d: &crate::Descriptor, label: &str| -> Result<PathBuf, OciError> {
        let dg = Digest::parse_oci(&d.digest)?;
        if let Some(p) = cache.lookup(&dg)? {
            return Ok(p);
        }
        let mut f = c.blob(&d.digest)?;
        let size = (d.size > 0).then_some(d.size).or(f.length);
        cache.store(&dg, size, &f.url, label, &mut f.body, progress)
    };
    let config_path = fetch(&config, "manifest.json")?;
    let mut parts = Vec::new();
    for l in doc.layers.unwrap_or_default() {
        let title = l.annotations.get(TITLE).cloned().unwrap_or_default();
        if title.is_empty() || title.contains('/') || title.starts_with('.') {
            return Err(OciError::BadImage {
                what: url.clone(),
                why: format!(
                    "layer {} has no usable file name ({TITLE}: {title:?})",
                    l.digest
                ),
            });
        }
        let path = fetch(&l, &title)?;
        parts.push(Part {
            media_type: l.media_type.clone(),
            path,
            annotations: l.annotations.clone(),
        });
    }
    Ok(Some(Artifact {
        config: config_path,
        parts,
        manifest_digest: digest.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_is_stable_and_names_the_artifact() {
        let a = manifest_bytes(
            json!({"digest": "sha256:00"}),
            vec![json!({"size": 1})],
            "web",
        );
        let b = manifest_bytes(
            json!({"digest": "sha256:00"}),
            vec![json!({"size": 1})],
            "web",
        );
        assert_eq!(a, b);
        let v: serde_json::Value = serde_json::from_slice(&a).expect("json");
        assert_eq!(v["artifactType"], ARTIFACT_TYPE);
        assert_eq!(v["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(v["annotations"][TITLE], "web");
    }
}
