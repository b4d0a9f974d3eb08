//! OCI and Docker images fetched into a verified blob cache and unpacked into
//! a folder, without root, for `kiln run IMAGE` / `kiln build IMAGE`.
//!
//! This crate owns image references and sources ([`Source`]: a registry, an
//! OCI layout folder, a `docker save` tarball), the registry client
//! (`registry`: the OCI Distribution API, Bearer tokens, Basic credentials
//! from Docker's `config.json`), the content-addressed blob cache (`cache`:
//! `CACHE/blobs/sha256/<hex>`, every blob hashed as it streams in and renamed
//! into place only when it matches), the image documents (`image`: manifests,
//! indexes, the linux/amd64 choice, [`ImageConfig`]) and the unpacker
//! (`unpack`: layers in order, whiteouts, nothing written outside the
//! destination).
//!
//! Why a hand-written client on `ureq` rather than `oci-client`
//! (`oci-distribution`): that crate is async on tokio + reqwest, which would
//! add the hyper/reqwest stack (dozens of crates not in the lockfile) to a
//! pipeline that is synchronous everywhere else, and it knows nothing of OCI
//! layouts or `docker save` tarballs, so the cache, the verification and the
//! platform choice would be ours anyway. The Distribution API Kiln needs —
//! two GETs and a token request — is small; `ureq` 2 was already in the
//! lockfile, with `native-tls` (the system's OpenSSL and trust store) for
//! HTTPS.
//!
//! ```text
//! pull(Source) ─► manifest / index ─► linux/amd64 manifest ─► config + layers
//!                                        (each verified into CACHE/blobs/sha256/<hex>)
//! unpack(layers, dest) ─► dest/… (whiteouts applied, devices skipped and reported)
//! ```

mod archive;
pub mod artifact;
mod cache;
mod error;
mod image;
mod layout;
mod reference;
mod registry;
mod unpack;

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

pub use cache::{BlobCache, Digest};
pub use error::OciError;
pub use image::{
    choose_platform, parse_config, parse_document, Descriptor, ImageConfig, LayerKind, Parsed,
    Platform,
};
pub use reference::{is_image_reference, Reference, Source, DOCKER_HUB};
pub use registry::{
    default_docker_config, docker_credentials, parse_challenge, Challenge, Credentials,
};
pub use unpack::{unpack, UnpackReport};

use cache::verify_bytes;
use image::MAX_DOCUMENT;

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The blob cache root (e.g. `CACHE/oci`); blobs live in `blobs/sha256/<hex>` under it.
    pub cache: PathBuf,
    /// Plain HTTP to the registry (for loopback registries); HTTPS otherwise.
    pub insecure: bool,
    /// Docker's `config.json` for credentials; `None` means
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
}

/// A pulled image: its config and its layer blobs in the cache.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// What Kiln runs.
    pub config: ImageConfig,
    /// The layer blob files in the cache, bottom layer first (compressed as
    /// stored; [`unpack`] finds the compression from the content).
    pub layers: Vec<PathBuf>,
    /// The digest of the image manifest used (the linux/amd64 one when the
    /// source was an index); for a legacy `docker save` tarball, which has no
    /// manifest blob, the config's digest (Docker's image ID).
    pub manifest_digest: String,
    /// The source as text (`HOST/REPO:TAG[@DIGEST]`, `oci:DIR[:TAG]`, `docker-archive:FILE`).
    pub reference: String,
}

/// Fetches the image `src` names into the cache `opts.cache`, verifying every
/// blob; blobs already cached (and still matching) are not fetched again.
/// `progress(what, done, total)` is called as blobs stream (`total` is 0 when unknown).
///
/// Refuses (as user errors) an index without linux/amd64, an image for
/// another platform, and an image with neither entrypoint nor cmd.
pub fn pull(
    src: &Source,
    opts: &PullOptions,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Pulled, OciError> {
    let cache = BlobCache::new(&opts.cache);
    match src {
        Source::Registry(r) => pull_registry(r, opts, &cache, progress),
        Source::Layout { dir, tag } => layout::pull(src, dir, tag.as_deref(), &cache, progress),
        Source::DockerArchive(file) => archive::pull(src, file, &cache, progress),
    }
}

fn pull_registry(
    r: &Reference,
    opts: &PullOptions,
    cache: &BlobCache,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Pulled, OciError> {
    let config_path = opts.docker_config.clone().or_else(default_docker_config);
    let credentials = match &config_path {
        Some(p) => docker_credentials(p, &r.registry)?,
        None => None,
    };
    let mut client = registry::Client::new(r, opts.insecure, credentials)?;
    let (bytes, content_type, url) = client.manifest(r.manifest_ref())?;
    let digest = match &r.digest {
        Some(d) => {
            let d = Digest::parse_oci(d)?;
            verify_bytes(&url, &d, &bytes)?;
            d
        }
        None => Digest::of(&bytes),
    };
    let mut store = RegistryStore {
        client: &mut client,
    };
    resolve(
        &r.to_string(),
        &mut store,
        bytes,
        content_type,
        digest,
        cache,
        progress,
    )
}

/// Where manifests and blobs of one source come from.
pub(crate) trait BlobSource {
    /// A manifest or index by digest: its bytes (verified by the caller), its
    /// media type if the source says, and a name for errors.
    fn document(&mut self, digest: &Digest) -> Result<(Vec<u8>, Option<String>, String), OciError>;
    /// Streams a blob into the cache (the cache verifies it).
    fn blob(
        &mut self,
        d: &Descriptor,
        digest: &Digest,
        label: &str,
        cache: &BlobCache,
        progress: &dyn Fn(&str, u64, u64),
    ) -> Result<PathBuf, OciError>;
}

struct RegistryStore<'a> {
    client: &'a mut registry::Client,
}

impl BlobSource for RegistryStore<'_> {
    fn document(&mut self, digest: &Digest) -> Result<(Vec<u8>, Option<String>, String), OciError> {
        self.client.manifest(&digest.to_string())
    }

    fn blob(
        &mut self,
        d: &Descriptor,
        digest: &Digest,
        label: &str,
        cache: &BlobCache,
        progress: &dyn Fn(&str, u64, u64),
    ) -> Result<PathBuf, OciError> {
        let mut fetched = self.client.blob(&digest.to_string())?;
        let size = if d.size > 0 {
            Some(d.size)
        } else {
            fetched.length
        };
        cache.store(
            digest,
            size,
            &fetched.url,
            label,
            &mut fetched.body,
            progress,
        )
    }
}

fn short(digest: &Digest) -> String {
    format!("sha256:{}", &digest.hex()[..12])
}

/// From a first manifest or index down to the image: indexes resolved to
/// linux/amd64, then the config and the layers into the cache.
pub(crate) fn resolve(
    reference: &str,
    source: &mut dyn BlobSource,
    mut bytes: Vec<u8>,
    mut content_type: Option<String>,
    mut digest: Digest,
    cache: &BlobCache,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Pulled, OciError> {
    for _ in 0..4 {
        let what = format!("{reference} manifest {digest}");
        match parse_document(&what, &bytes, content_type.as_deref())? {
            Parsed::Index(manifests) => {
                let chosen = choose_platform(reference, &manifests)?;
                digest = Digest::parse_oci(&chosen.digest)?;
                let (b, ct, name) = source.document(&digest)?;
                verify_bytes(&name, &digest, &b)?;
                bytes = b;
                content_type =
                    ct.or_else(|| Some(chosen.media_type.clone()).filter(|m| !m.is_empty()));
            }
            Parsed::Manifest { config, layers } => {
                return fetch_image(reference, source, &config, &layers, digest, cache, progress);
            }
        }
    }
    Err(OciError::BadImage {
        what: reference.to_string(),
        why: "image indexes nested more than 4 deep".to_string(),
    })
}

fn fetch_image(
    reference: &str,
    source: &mut dyn BlobSource,
    config: &Descriptor,
    layers: &[Descriptor],
    manifest_digest: Digest,
    cache: &BlobCache,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Pulled, OciError> {
    let config_digest = Digest::parse_oci(&config.digest)?;
    let label = format!("config {}", short(&config_digest));
    let config_path = match cache.lookup(&config_digest)? {
        Some(p) => p,
        None => source.blob(config, &config_digest, &label, cache, progress)?,
    };
    let config_bytes = read_document(&config_path)?;
    let (image_config, _) = parse_config(
        &format!("{reference} config {config_digest}"),
        &config_bytes,
    )?;
    check_image(reference, &image_config)?;
    let mut paths = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let digest = Digest::parse_oci(&layer.digest)?;
        let label = format!("layer {}/{} {}", i + 1, layers.len(), short(&digest));
        let path = match cache.lookup(&digest)? {
            Some(p) => {
                progress(&label, layer.size, layer.size);
                p
            }
            None => source.blob(layer, &digest, &label, cache, progress)?,
        };
        paths.push(path);
    }
    Ok(Pulled {
        config: image_config,
        layers: paths,
        manifest_digest: manifest_digest.to_string(),
        reference: reference.to_string(),
    })
}

/// Refuses an image for another platform. (One with nothing to run may still be a recipe's
/// `from`: [`ImageConfig::argv`] refuses it where a command is needed.)
pub(crate) fn check_image(reference: &str, config: &ImageConfig) -> Result<(), OciError> {
    let known = !config.os.is_empty() || !config.architecture.is_empty();
    if known && (config.os != "linux" || config.architecture != "amd64") {
        return Err(OciError::WrongPlatform {
            reference: reference.to_string(),
            platform: format!("{}/{}", config.os, config.architecture),
        });
    }
    Ok(())
}

/// Reads a small JSON document from a file, refusing one larger than [`MAX_DOCUMENT`].
pub(crate) fn read_document(path: &std::path::Path) -> Result<Vec<u8>, OciError> {
    let file = File::open(path).map_err(|e| OciError::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| OciError::io(path, e))?;
    if bytes.len() as u64 > MAX_DOCUMENT {
        return Err(OciError::BadImage {
            what: path.display().to_string(),
            why: format!("larger than {MAX_DOCUMENT} bytes"),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
