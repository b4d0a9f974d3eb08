//! The crate's one error type, [`OciError`], and the split between the user's
//! mistakes (a bad reference, an unknown tag, a tampered blob) and the
//! machine's trouble (a registry that is down, a full disk).

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong fetching or unpacking an image.
///
/// Every message names what it was about: the reference, the registry URL,
/// the file or the path inside a layer.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The image reference could not be parsed.
    #[error("bad image reference {reference:?}: {why}")]
    BadReference {
        /// The text as given.
        reference: String,
        /// What is wrong with it.
        why: String,
    },
    /// The registry or the layout does not know this tag or manifest.
    #[error("{reference}: manifest unknown ({why})")]
    ManifestUnknown {
        /// The reference asked for.
        reference: String,
        /// What the source said (status, or the tags it has).
        why: String,
    },
    /// The registry wants credentials and none were found (or they were refused).
    #[error("{registry}: authentication required for {reference} ({why}); log in with `docker login {registry}` or `skopeo login {registry}`")]
    AuthRequired {
        /// The registry host.
        registry: String,
        /// The reference being pulled.
        reference: String,
        /// Why: no credentials, or credentials refused.
        why: String,
    },
    /// An image index without a linux/amd64 manifest.
    #[error("{reference}: no linux/amd64 image; it has {}", if .available.is_empty() { "no platforms listed".to_string() } else { .available.join(", ") })]
    NoPlatform {
        /// The reference pulled.
        reference: String,
        /// The platforms the index offers (`os/arch[/variant]`).
        available: Vec<String>,
    },
    /// A single-platform image built for something other than linux/amd64.
    #[error("{reference}: image is {platform}; Kiln runs linux/amd64")]
    WrongPlatform {
        /// The reference pulled.
        reference: String,
        /// `os/arch` from the image config.
        platform: String,
    },
    /// Content whose sha256 is not the digest it was fetched by.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The blob (and where it came from).
        what: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// A digest in an unsupported algorithm or form.
    #[error("bad digest {digest:?}: {why}")]
    BadDigest {
        /// The digest as found.
        digest: String,
        /// Why it is refused.
        why: String,
    },
    /// A manifest, index or config that is not what it claims to be.
    #[error("{what}: {why}")]
    BadImage {
        /// The document (and where it came from).
        what: String,
        /// What is wrong with it.
        why: String,
    },
    /// A layer entry that would land outside the destination, or cannot be made.
    #[error("layer {layer}: refusing entry {path:?}: {why}")]
    BadLayerPath {
        /// The layer blob file.
        layer: PathBuf,
        /// The path inside the layer.
        path: String,
        /// Why it is refused.
        why: String,
    },
    /// Docker's `config.json` could not be understood.
    #[error("docker config {path}: {why}")]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The image config has neither an entrypoint nor a cmd: nothing to run.
    #[error(
        "{reference}: the image has no Entrypoint and no Cmd, so there is nothing to run; \
         write a recipe with `from = \"{reference}\"` and an etc/rc"
    )]
    NoCommand {
        /// The reference pulled.
        reference: String,
    },
    /// The registry could not be reached, or answered with an unexpected status.
    #[error("{url}: {why}")]
    Registry {
        /// The URL asked.
        url: String,
        /// The transport error or the status with the registry's message.
        why: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl OciError {
    /// True when the user can fix this by changing their input (reference,
    /// credentials, image), false for trouble on this machine or the network.
    pub fn is_user_error(&self) -> bool {
        match self {
            OciError::BadReference { .. }
            | OciError::ManifestUnknown { .. }
            | OciError::AuthRequired { .. }
            | OciError::NoPlatform { .. }
            | OciError::WrongPlatform { .. }
            | OciError::DigestMismatch { .. }
            | OciError::BadDigest { .. }
            | OciError::BadImage { .. }
            | OciError::BadLayerPath { .. }
            | OciError::DockerConfig { .. }
            | OciError::NoCommand { .. } => true,
            OciError::Registry { .. } | OciError::Io { .. } => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        OciError::Io {
            path: path.into(),
            source,
        }
    }
}
