//! The image documents: manifests and indexes (OCI and Docker v2 media
//! types), the choice of linux/amd64 from an index, layer media types, and the
//! image config reduced to what Kiln runs ([`ImageConfig`]).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::OciError;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The Accept header for manifest requests: every manifest and index type Kiln reads.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest, index or config Kiln reads into memory.
pub const MAX_DOCUMENT: u64 = 8 * 1024 * 1024;

/// Annotation naming a manifest's tag in an OCI layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    /// The media type (may be empty in hand-made layouts).
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// The platform (index entries).
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations (a layout's tag lives here).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A platform in an index entry.
#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    /// `linux`, …
    #[serde(default)]
    pub os: String,
    /// `amd64`, `arm64`, …
    #[serde(default)]
    pub architecture: String,
    /// `v8`, …
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    fn name(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// A manifest or an index, told apart by its media type or its fields.
#[derive(Debug, Clone, Deserialize)]
pub struct Document {
    /// 2 for every type Kiln reads.
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: u32,
    /// The media type, when the document states it.
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    /// A manifest's config.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// A manifest's layers, bottom first.
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    /// An index's manifests.
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

/// A parsed manifest document: an index to choose from, or an image manifest.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// An index or manifest list.
    Index(Vec<Descriptor>),
    /// An image manifest: config and layers.
    Manifest {
        /// The config blob.
        config: Descriptor,
        /// The layers, bottom first.
        layers: Vec<Descriptor>,
    },
}

/// Parses a manifest or index; `content_type` is the transport's media type, if any.
pub fn parse_document(
    what: &str,
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<Parsed, OciError> {
    let bad = |why: String| OciError::BadImage {
        what: what.to_string(),
        why,
    };
    let doc: Document =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest or index: {e}")))?;
    if doc.schema_version != 2 {
        return Err(bad(format!(
            "schemaVersion {} is not supported (Docker schema 1 images must be re-pushed)",
            doc.schema_version
        )));
    }
    let media = doc
        .media_type
        .clone()
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let is_index = match media.as_str() {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        _ => doc.manifests.is_some(),
    };
    if is_index {
        return Ok(Parsed::Index(doc.manifests.unwrap_or_default()));
    }
    let config = doc
        .config
        .ok_or_else(|| bad("manifest has no config".to_string()))?;
    let layers = doc.layers.unwrap_or_default();
    for layer in &layers {
        layer_kind(what, &layer.media_type)?;
    }
    Ok(Parsed::Manifest { config, layers })
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Plain tar.
    Tar,
    /// gzip-compressed tar.
    Gzip,
    /// zstd-compressed tar.
    Zstd,
    /// Unknown from the media type (empty): found from the content when unpacking.
    Sniff,
}

/// The kind of a layer media type; refuses anything that is not a Linux tar layer.
pub fn layer_kind(what: &str, media_type: &str) -> Result<LayerKind, OciError> {
    Ok(match media_type {
        "application/vnd.oci.image.layer.v1.tar" => LayerKind::Tar,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => LayerKind::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd" => LayerKind::Zstd,
        "" | "application/vnd.docker.image.rootfs.diff.tar" => LayerKind::Sniff,
        other => {
            return Err(OciError::BadImage {
                what: what.to_string(),
                why: format!(
                    "layer media type {other:?} is not supported (tar, tar+gzip or tar+zstd)"
                ),
            })
        }
    })
}

/// Picks the linux/amd64 manifest from an index (attestations and other
/// `unknown` entries aside), or refuses naming the platforms it has.
pub fn choose_platform(reference: &str, manifests: &[Descriptor]) -> Result<Descriptor, OciError> {
    let mut available: Vec<String> = Vec::new();
    for d in manifests {
        match &d.platform {
            Some(p) if p.os == "linux" && p.architecture == "amd64" => return Ok(d.clone()),
            Some(p) if p.os != "unknown" => {
                let name = p.name();
                if !available.contains(&name) {
                    available.push(name);
                }
            }
            _ => {}
        }
    }
    Err(OciError::NoPlatform {
        reference: reference.to_string(),
        available,
    })
}

/// What Kiln needs from an image's config to run it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd` (arguments to the entrypoint, or the command when there is none).
    pub cmd: Vec<String>,
    /// `Env`, `KEY=VALUE` each.
    pub env: Vec<String>,
    /// `WorkingDir`, when set and not empty.
    pub working_dir: Option<String>,
    /// `User`, when set and not empty.
    pub user: Option<String>,
    /// `ExposedPorts` as (port, `"tcp"`|`"udp"`), sorted.
    pub exposed_ports: Vec<(u16, String)>,
    /// `os`.
    pub os: String,
    /// `architecture`.
    pub architecture: String,
}

impl ImageConfig {
    /// The command line the image runs: entrypoint then cmd; refused when both are empty.
    pub fn argv(&self, reference: &str) -> Result<Vec<String>, OciError> {
        let argv: Vec<String> = self.entrypoint.iter().chain(&self.cmd).cloned().collect();
        if argv.is_empty() {
            return Err(OciError::NoCommand {
                reference: reference.to_string(),
            });
        }
        Ok(argv)
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RunConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Parses an image config blob into an [`ImageConfig`] and its `rootfs.diff_ids`.
pub fn parse_config(what: &str, bytes: &[u8]) -> Result<(ImageConfig, Vec<String>), OciError> {
    let bad = |why: String| OciError::BadImage {
        what: what.to_string(),
        why,
    };
    let file: ConfigFile =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not an image config: {e}")))?;
    let run = file.config.unwrap_or_default();
    let mut exposed_ports = Vec::new();
    for key in run.exposed_ports.unwrap_or_default().keys() {
        let (port, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let port: u16 = port
            .parse()
            .map_err(|_| bad(format!("exposed port {key:?} is not PORT[/tcp|udp]")))?;
        let proto = proto.to_ascii_lowercase();
        if proto != "tcp" && proto != "udp" {
            return Err(bad(format!(
                "exposed port {key:?}: protocol must be tcp or udp"
            )));
        }
        exposed_ports.push((port, proto));
    }
    exposed_ports.sort();
    exposed_ports.dedup();
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok((
        ImageConfig {
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            working_dir: non_empty(run.working_dir),
            user: non_empty(run.user),
            exposed_ports,
            os: file.os,
            architecture: file.architecture,
        },
        file.rootfs.map(|r| r.diff_ids).unwrap_or_default(),
    ))
}
