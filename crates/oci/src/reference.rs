//! Image references: `HOST[:PORT]/NAME[:TAG][@sha256:HEX]` parsed and checked,
//! the `oci:`/`docker-archive:` source prefixes, and the test that tells a
//! reference from a recipe folder's path.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::{Digest, OciError};

/// The registry a reference without a host names (Docker Hub).
pub const DOCKER_HUB: &str = "docker.io";

/// A registry image reference, e.g. `localhost:5000/app:1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` for Docker Hub).
    pub registry: String,
    /// The repository path, e.g. `ns/app` (`library/NAME` on Docker Hub).
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// The manifest digest (`sha256:<64 hex>`), when pinned.
    pub digest: Option<String>,
}

impl Reference {
    /// What to ask the registry's manifests endpoint for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The host to talk to (Docker Hub's API host for `docker.io`).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn bad(reference: &str, why: impl Into<String>) -> OciError {
    OciError::BadReference {
        reference: reference.to_string(),
        why: why.into(),
    }
}

/// Whether `first` (the text before the first `/`) is a registry host.
fn is_host(first: &str) -> bool {
    !first.is_empty()
        && first != "."
        && first != ".."
        && (first.contains('.') || first.contains(':') || first == "localhost")
        && first
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
}

fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok = match port {
        Some(p) => p.parse::<u16>().is_ok_and(|n| n > 0),
        None => true,
    };
    name_ok && port_ok
}

fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    !c.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && c.chars().all(|ch| {
            ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
        })
}

fn valid_tag(t: &str) -> bool {
    let mut chars = t.chars();
    t.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl FromStr for Reference {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, OciError> {
        if s.is_empty() {
            return Err(bad(s, "empty"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let digest = Digest::parse(d).map_err(|e| bad(s, e))?;
                (n, Some(digest.to_string()))
            }
            None => (s, None),
        };
        let (name, tag) = match name_tag.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (name_tag, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(bad(
                    s,
                    format!("tag {t:?} must be letters, digits, '_', '.', '-' (at most 128)"),
                ));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if is_host(first) => {
                if !valid_host(first) {
                    return Err(bad(
                        s,
                        format!("registry host {first:?} is not a host[:port]"),
                    ));
                }
                (first.to_string(), rest.to_string())
            }
            Some(_) => (DOCKER_HUB.to_string(), name.to_string()),
            None => (DOCKER_HUB.to_string(), format!("library/{name}")),
        };
        if repository.is_empty() {
            return Err(bad(s, "no repository name"));
        }
        if let Some(c) = repository.split('/').find(|c| !valid_component(c)) {
            return Err(bad(
                s,
                format!("repository component {c:?} must be lowercase letters, digits and '.', '_', '-' between them"),
            ));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A registry, over the OCI Distribution API.
    Registry(Reference),
    /// An OCI image layout folder (`index.json`, `blobs/`), with the tag to take.
    Layout {
        /// The layout folder.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to take; the only manifest when absent.
        tag: Option<String>,
    },
    /// A `docker save` tarball.
    DockerArchive(PathBuf),
}

impl FromStr for Source {
    type Err = OciError;

    /// `oci:DIR[:TAG]`, `docker-archive:FILE`, else a registry reference.
    fn from_str(s: &str) -> Result<Self, OciError> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !d.is_empty() => (d, Some(t)),
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(bad(s, "oci: needs a layout folder, as in oci:DIR[:TAG]"));
            }
            if let Some(t) = tag {
                if t.is_empty() {
                    return Err(bad(s, "empty tag after the layout folder"));
                }
            }
            return Ok(Source::Layout {
                dir: PathBuf::from(dir),
                tag: tag.map(str::to_string),
            });
        }
        if let Some(file) = s.strip_prefix("docker-archive:") {
            if file.is_empty() {
                return Err(bad(
                    s,
                    "docker-archive: needs a file, as in docker-archive:FILE",
                ));
            }
            return Ok(Source::DockerArchive(PathBuf::from(file)));
        }
        Ok(Source::Registry(s.parse()?))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Registry(r) => write!(f, "{r}"),
            Source::Layout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            Source::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            Source::DockerArchive(p) => write!(f, "docker-archive:{}", p.display()),
        }
    }
}

/// True for `oci:…`/`docker-archive:…` and for strings whose first path
/// component is a registry host (has a `.` or a `:`, or is `localhost`), so
/// `localhost:5000/app` and `registry.example/ns/app` are references while
/// `recipes/httpd`, `./app` and `/abs/path` are folder paths.
pub fn is_image_reference(s: &str) -> bool {
    if s.starts_with("oci:") || s.starts_with("docker-archive:") {
        return true;
    }
    match s.split_once('/') {
        Some((first, rest)) => is_host(first) && !rest.is_empty(),
        None => false,
    }
}
