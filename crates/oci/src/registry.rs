//! A small synchronous client for the OCI Distribution API: manifests and
//! blobs over HTTPS (plain HTTP when the caller allows it), Bearer-token auth
//! from the registry's `WWW-Authenticate` challenge, and Basic credentials
//! from Docker's `config.json` `auths`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use crate::image::{MANIFEST_ACCEPT, MAX_DOCUMENT};
use crate::{OciError, Reference};

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

/// The default Docker config file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The host an `auths` key names: `https://host/v1/` and `host` alike.
fn auth_key_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn hub_alias(host: &str) -> &str {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io",
        other => other,
    }
}

/// The credentials for `registry` in a Docker config file; `None` when the
/// file does not exist or has no entry. A file that is not JSON, or an `auth`
/// that is not base64 `user:password`, is refused naming the file.
pub fn docker_credentials(path: &Path, registry: &str) -> Result<Option<Credentials>, OciError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OciError::io(path, e)),
    };
    let bad = |why: String| OciError::DockerConfig {
        path: path.to_path_buf(),
        why,
    };
    let config: DockerConfig =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let want = hub_alias(registry);
    let Some((key, entry)) = config
        .auths
        .iter()
        .find(|(k, _)| hub_alias(auth_key_host(k)) == want)
    else {
        return Ok(None);
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| bad(format!("auths.{key:?}.auth is not base64: {e}")))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| bad(format!("auths.{key:?}.auth is not UTF-8")))?;
        let (user, pass) = text
            .split_once(':')
            .ok_or_else(|| bad(format!("auths.{key:?}.auth is not user:password")))?;
        return Ok(Some(Credentials {
            username: user.to_string(),
            password: pass.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(None),
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm=…,service=…,scope=…`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter, if given.
        service: Option<String>,
        /// The `scope` parameter, if given.
        scope: Option<String>,
    },
    /// `Basic realm=…`.
    Basic,
}

/// Parses a `WWW-Authenticate` header value.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            match after.find(',') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        };
        params.insert(key, value.to_string());
        s = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

/// One registry repository, with the auth it has earned so far.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    reference: Reference,
    credentials: Option<Credentials>,
    authorization: Option<String>,
}

/// What a request sends.
#[derive(Clone, Copy)]
enum Body<'a> {
    None,
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// A response body with what the registry said about it.
pub struct Fetched {
    /// The URL it came from.
    pub url: String,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Content-Length`.
    pub length: Option<u64>,
    /// The body.
    pub body: Box<dyn Read + Send + Sync + 'static>,
}

impl Client {
    /// A client for `reference`'s repository; `insecure` speaks plain HTTP.
    pub fn new(
        reference: &Reference,
        insecure: bool,
        credentials: Option<Credentials>,
    ) -> Result<Client, OciError> {
        let scheme = if insecure { "http" } else { "https" };
        let base = format!("{scheme}://{}", reference.api_host());
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(15))
            .timeout_read(Duration::from_secs(120))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")));
        if !insecure {
            let tls = native_tls::TlsConnector::new().map_err(|e| OciError::Registry {
                url: base.clone(),
                why: format!("setting up TLS: {e}"),
            })?;
            builder = builder.tls_connector(Arc::new(tls));
        }
        Ok(Client {
            agent: builder.build(),
            base,
            reference: reference.clone(),
            credentials,
            authorization: None,
        })
    }

    /// The manifest (or index) `reference` names (a tag or a digest): its bytes and media type.
    pub fn manifest(
        &mut self,
        reference: &str,
    ) -> Result<(Vec<u8>, Option<String>, String), OciError> {
        let path = format!("/v2/{}/manifests/{reference}", self.reference.repository);
        let fetched = self.get(&path, Some(MANIFEST_ACCEPT), reference)?;
        let url = fetched.url.clone();
        let content_type = fetched.content_type.clone();
        let mut bytes = Vec::new();
        fetched
            .body
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| OciError::Registry {
                url: url.clone(),
                why: format!("reading the manifest: {e}"),
            })?;
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(OciError::BadImage {
                what: url,
                why: format!("manifest larger than {MAX_DOCUMENT} bytes"),
            });
        }
        Ok((bytes, content_type, url))
    }

    /// A blob's body, streaming.
    pub fn blob(&mut self, digest: &str) -> Result<Fetched, OciError> {
        let path = format!("/v2/{}/blobs/{digest}", self.reference.repository);
        self.get(&path, None, digest)
    }

    fn get(&mut self, path: &str, accept: Option<&str>, what: &str) -> Result<Fetched, OciError> {
        let url = format!("{}{path}", self.base);
        let mut tried_auth = false;
        loop {
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            if let Some(auth) = &self.authorization {
                req = req.set("Authorization", auth);
            }
            match req.call() {
                Ok(resp) => {
                    let content_type = resp.header("Content-Type").map(str::to_string);
                    let length = resp.header("Content-Length").and_then(|l| l.parse().ok());
                    let url = resp.get_url().to_string();
                    return Ok(Fetched {
                        url,
                        content_type,
                        length,
                        body: resp.into_reader(),
                    });
                }
                Err(ureq::Error::Status(401, resp)) if !tried_auth => {
                    tried_auth = true;
                    let challenge = resp.header("WWW-Authenticate").map(str::to_string);
                    self.authenticate(&url, challenge.as_deref())?;
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let body = registry_message(resp);
                    return Err(self.status_error(&url, code, &body, what));
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(OciError::Registry {
                        url,
                        why: format!("cannot reach the registry: {}", transport(&t)),
                    })
                }
            }
        }
    }

    /// Whether the repository has blob `digest` already (`HEAD`): a push skips it.
    pub fn has_blob(&mut self, digest: &str) -> Result<bool, OciError> {
        let path = format!("/v2/{}/blobs/{digest}", self.reference.repository);
        match self.send("HEAD", &path, &[], Body::None, digest) {
            Ok(_) => Ok(true),
            Err(OciError::ManifestUnknown { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Upload the file `path` as blob `digest` (one `POST` for the session, one `PUT` with
    /// the bytes).
    pub fn push_blob(&mut self, digest: &str, path: &Path) -> Result<(), OciError> {
        let start = format!("/v2/{}/blobs/uploads/", self.reference.repository);
        let resp = self.send("POST", &start, &[], Body::None, digest)?;
        let location = resp
            .header("Location")
            .ok_or_else(|| OciError::Registry {
                url: format!("{}{start}", self.base),
                why: "the upload session has no Location".into(),
            })?
            .to_string();
        let url = if location.starts_with("http://") || location.starts_with("https://") {
            location
        } else {
            format!("{}{location}", self.base)
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let put = format!("{url}{sep}digest={digest}");
        self.send_url(
            "PUT",
            &put,
            &[("Content-Type", "application/octet-stream")],
            Body::File(path),
            digest,
        )?;
        Ok(())
    }

    /// Put a manifest under `tag`; the digest the registry gives it.
    pub fn put_manifest(
        &mut self,
        tag: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<String, OciError> {
        let path = format!("/v2/{}/manifests/{tag}", self.reference.repository);
        let resp = self.send(
            "PUT",
            &path,
            &[("Content-Type", media_type)],
            Body::Bytes(bytes),
            tag,
        )?;
        Ok(resp
            .header("Docker-Content-Digest")
            .map(str::to_string)
            .unwrap_or_else(|| crate::Digest::of(bytes).to_string()))
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
        what: &str,
    ) -> Result<ureq::Response, OciError> {
        let url = format!("{}{path}", self.base);
        self.send_url(method, &url, headers, body, what)
    }

    /// One request with the auth retry of [`Client::get`]; the body is sent again after it.
    fn send_url(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
        what: &str,
    ) -> Result<ureq::Response, OciError> {
        let mut tried_auth = false;
        loop {
            let mut req = self.agent.request(method, url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(auth) = &self.authorization {
                req = req.set("Authorization", auth);
            }
            let sent = match body {
                Body::None => req.call(),
                Body::Bytes(b) => req.send_bytes(b),
                Body::File(p) => {
                    let f = std::fs::File::open(p).map_err(|e| OciError::io(p, e))?;
                    let len = f.metadata().map_err(|e| OciError::io(p, e))?.len();
                    req.set("Content-Length", &len.to_string()).send(f)
                }
            };
            match sent {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(401, resp)) if !tried_auth => {
                    tried_auth = true;
                    let challenge = resp.header("WWW-Authenticate").map(str::to_string);
                    self.authenticate(url, challenge.as_deref())?;
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let body = registry_message(resp);
                    return Err(self.status_error(url, code, &body, what));
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(OciError::Registry {
                        url: url.to_string(),
                        why: format!("cannot reach the registry: {}", transport(&t)),
                    })
                }
            }
        }
    }

    fn status_error(&self, url: &str, code: u16, body: &str, what: &str) -> OciError {
        let registry = self.reference.registry.clone();
        let reference = self.reference.to_string();
        match code {
            401 | 403 => OciError::AuthRequired {
                registry,
                reference,
                why: if self.credentials.is_some() {
                    format!("credentials refused (HTTP {code}{body})")
                } else {
                    format!("no credentials in the Docker config (HTTP {code}{body})")
                },
            },
            404 => OciError::ManifestUnknown {
                reference: if what.starts_with("sha256:") && what != self.reference.manifest_ref() {
                    format!("{reference} ({what})")
                } else {
                    reference
                },
                why: format!("{url}: HTTP 404{body}"),
            },
            _ => OciError::Registry {
                url: url.to_string(),
                why: format!("HTTP {code}{body}"),
            },
        }
    }

    fn authenticate(&mut self, url: &str, challenge: Option<&str>) -> Result<(), OciError> {
        let registry = self.reference.registry.clone();
        let reference = self.reference.to_string();
        let auth_required = |why: String| OciError::AuthRequired {
            registry: registry.clone(),
            reference: reference.clone(),
            why,
        };
        match challenge.and_then(parse_challenge) {
            Some(Challenge::Basic) => {
                let creds = self.credentials.as_ref().ok_or_else(|| {
                    auth_required("no credentials in the Docker config".to_string())
                })?;
                self.authorization = Some(basic(creds));
                Ok(())
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = scope
                    .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
                let mut req = self.agent.get(&realm).query("scope", &scope);
                if let Some(s) = &service {
                    req = req.query("service", s);
                }
                if let Some(creds) = &self.credentials {
                    req = req.set("Authorization", &basic(creds));
                }
                let resp = match req.call() {
                    Ok(r) => r,
                    Err(ureq::Error::Status(code @ (401 | 403), resp)) => {
                        let body = registry_message(resp);
                        return Err(auth_required(if self.credentials.is_some() {
                            format!(
                                "token service {realm} refused the credentials (HTTP {code}{body})"
                            )
                        } else {
                            format!("token service {realm} wants credentials (HTTP {code}{body})")
                        }));
                    }
                    Err(ureq::Error::Status(code, resp)) => {
                        let body = registry_message(resp);
                        return Err(OciError::Registry {
                            url: realm,
                            why: format!("token service: HTTP {code}{body}"),
                        });
                    }
                    Err(ureq::Error::Transport(t)) => {
                        return Err(OciError::Registry {
                            url: realm,
                            why: format!("cannot reach the token service: {}", transport(&t)),
                        })
                    }
                };
                #[derive(Deserialize)]
                struct Token {
                    #[serde(default)]
                    token: Option<String>,
                    #[serde(default)]
                    access_token: Option<String>,
                }
                let mut body = Vec::new();
                resp.into_reader()
                    .take(MAX_DOCUMENT)
                    .read_to_end(&mut body)
                    .map_err(|e| OciError::Registry {
                        url: realm.clone(),
                        why: format!("reading the token: {e}"),
                    })?;
                let token: Token =
                    serde_json::from_slice(&body).map_err(|e| OciError::Registry {
                        url: realm.clone(),
                        why: format!("token service answered something that is not a token: {e}"),
                    })?;
                let token = token
                    .token
                    .or(token.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| OciError::Registry {
                        url: realm.clone(),
                        why: "token service answered without a token".to_string(),
                    })?;
                self.authorization = Some(format!("Bearer {token}"));
                Ok(())
            }
            None => Err(OciError::Registry {
                url: url.to_string(),
                why: format!(
                    "HTTP 401 with an authentication challenge Kiln does not understand: {:?}",
                    challenge.unwrap_or("(none)")
                ),
            }),
        }
    }
}

/// A transport error without the URL (the caller names it once).
fn transport(t: &ureq::Transport) -> String {
    let mut s = t.kind().to_string();
    if let Some(m) = t.message() {
        s.push_str(": ");
        s.push_str(m);
    }
    if let Some(source) = std::error::Error::source(t) {
        s.push_str(": ");
        s.push_str(&source.to_string());
    }
    s
}

fn basic(creds: &Credentials) -> String {
    let raw = format!("{}:{}", creds.username, creds.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The registry's error messages from an error response, as `: CODE message; …`.
fn registry_message(resp: ureq::Response) -> String {
    #[derive(Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ErrorEntry>,
    }
    #[derive(Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let mut body = Vec::new();
    if resp
        .into_reader()
        .take(64 * 1024)
        .read_to_end(&mut body)
        .is_err()
    {
        return String::new();
    }
    match serde_json::from_slice::<Errors>(&body) {
        Ok(e) if !e.errors.is_empty() => {
            let parts: Vec<String> = e
                .errors
                .iter()
                .map(|x| format!("{} {}", x.code, x.message).trim().to_string())
                .collect();
            format!(": {}", parts.join("; "))
        }
        _ => String::new(),
    }
}
