//! A tiny in-process registry (one thread, `Connection: close`) that wants a
//! Bearer token from its token endpoint, which wants Basic credentials: the
//! client's auth dance, the 404s and the manifest digest check.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::thread;

use base64::Engine as _;
use serde_json::json;

use super::*;

struct Fake {
    port: u16,
    manifest_digest: String,
}

/// Serves `t:1` (one layer) behind Bearer auth; `user:pw` gets the token.
fn start() -> Fake {
    start_with(Auth::Bearer)
}

/// How the fake wants to be spoken to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// A token from `/token`, which wants Basic `user:pw`.
    Bearer,
    /// Basic `user:pw` on every request.
    Basic,
}

fn start_with(mode: Auth) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let layer = gzip(&tar_bytes(&[E::File(
        "hello",
        b"from the fake registry",
        0o644,
    )]));
    let config = config_json("amd64", &["/hello"]);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": image::DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": Digest::of(&config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": Digest::of(&layer).to_string(), "size": layer.len()}]
    }))
    .unwrap();
    let manifest_digest = Digest::of(&manifest).to_string();
    let mut routes: BTreeMap<String, (Vec<u8>, &str)> = BTreeMap::new();
    routes.insert(
        "/v2/t/manifests/1".into(),
        (manifest.clone(), image::DOCKER_MANIFEST),
    );
    routes.insert(
        format!("/v2/t/manifests/{manifest_digest}"),
        (manifest.clone(), image::DOCKER_MANIFEST),
    );
    // A digest whose content is not that digest.
    routes.insert(
        format!("/v2/t/manifests/sha256:{}", "0".repeat(64)),
        (manifest, image::DOCKER_MANIFEST),
    );
    routes.insert(
        format!("/v2/t/blobs/{}", Digest::of(&config)),
        (config, "application/octet-stream"),
    );
    routes.insert(
        format!("/v2/t/blobs/{}", Digest::of(&layer)),
        (layer, "application/octet-stream"),
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:pw")
    );
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut auth = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("authorization") {
                        auth = v.trim().to_string();
                    }
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let (status, headers, body): (&str, String, Vec<u8>) = if path.starts_with("/token") {
                if auth == basic {
                    (
                        "200 OK",
                        "Content-Type: application/json\r\n".into(),
                        br#"{"token":"T0K3N"}"#.to_vec(),
                    )
                } else {
                    (
                        "401 Unauthorized",
                        String::new(),
                        br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#
                            .to_vec(),
                    )
                }
            } else if mode == Auth::Basic && auth != basic {
                let challenge = "WWW-Authenticate: Basic realm=\"fake\"\r\n".to_string();
                ("401 Unauthorized", challenge, Vec::new())
            } else if mode == Auth::Bearer && auth != "Bearer T0K3N" {
                let challenge = format!(
                    "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\",scope=\"repository:t:pull\"\r\n"
                );
                (
                    "401 Unauthorized",
                    challenge,
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                        .to_vec(),
                )
            } else if let Some((body, ct)) = routes.get(&path) {
                ("200 OK", format!("Content-Type: {ct}\r\n"), body.clone())
            } else {
                (
                    "404 Not Found",
                    String::new(),
                    br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
                        .to_vec(),
                )
            };
            let head = format!(
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    Fake {
        port,
        manifest_digest,
    }
}

fn with_config(cache: &Path, config: Option<&str>) -> PullOptions {
    let path = cache.join("docker-config.json");
    if let Some(c) = config {
        fs::create_dir_all(cache).unwrap();
        fs::write(&path, c).unwrap();
    }
    PullOptions {
        cache: cache.to_path_buf(),
        insecure: true,
        docker_config: Some(path),
    }
}

#[test]
fn bearer_token_from_basic_credentials() {
    let fake = start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let creds = format!(
        r#"{{"auths":{{"127.0.0.1:{}":{{"auth":"dXNlcjpwdw=="}}}}}}"#,
        fake.port
    );
    let opts = with_config(&cache, Some(&creds));
    let seen = std::cell::RefCell::new(Vec::new());
    let progress =
        |what: &str, done: u64, total: u64| seen.borrow_mut().push((what.to_string(), done, total));
    let src: Source = format!("127.0.0.1:{}/t:1", fake.port).parse().unwrap();
    let pulled = pull(&src, &opts, &progress).unwrap();
    assert_eq!(pulled.manifest_digest, fake.manifest_digest);
    assert_eq!(pulled.config.entrypoint, vec!["/hello"]);
    assert!(
        seen.borrow()
            .iter()
            .any(|(w, d, t)| w.starts_with("layer 1/1") && d == t && *t > 0),
        "{:?}",
        seen.borrow()
    );
    let dest = tmp.path().join("root");
    unpack(&pulled.layers, &dest).unwrap();
    assert_eq!(
        fs::read(dest.join("hello")).unwrap(),
        b"from the fake registry"
    );

    // By digest, verified.
    let src: Source = format!("127.0.0.1:{}/t@{}", fake.port, fake.manifest_digest)
        .parse()
        .unwrap();
    assert_eq!(
        pull(&src, &opts, &no_progress).unwrap().manifest_digest,
        fake.manifest_digest
    );
    let src: Source = format!("127.0.0.1:{}/t@sha256:{}", fake.port, "0".repeat(64))
        .parse()
        .unwrap();
    let e = pull(&src, &opts, &no_progress).unwrap_err();
    assert!(
        e.is_user_error() && matches!(e, OciError::DigestMismatch { .. }),
        "{e}"
    );

    // Unknown tag.
    let src: Source = format!("127.0.0.1:{}/t:2", fake.port).parse().unwrap();
    let e = pull(&src, &opts, &no_progress).unwrap_err();
    assert!(
        e.is_user_error() && matches!(e, OciError::ManifestUnknown { .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("t:2") && e.to_string().contains("MANIFEST_UNKNOWN"),
        "{e}"
    );
}

#[test]
fn auth_required_without_or_with_wrong_credentials() {
    let fake = start();
    let tmp = tempfile::tempdir().unwrap();
    let src: Source = format!("127.0.0.1:{}/t:1", fake.port).parse().unwrap();
    let e = pull(
        &src,
        &with_config(&tmp.path().join("a"), None),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        e.is_user_error() && matches!(e, OciError::AuthRequired { .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains(&format!("127.0.0.1:{}", fake.port)),
        "{e}"
    );
    let wrong = format!(
        r#"{{"auths":{{"127.0.0.1:{}":{{"auth":"dXNlcjpubw=="}}}}}}"#,
        fake.port
    );
    let e = pull(
        &src,
        &with_config(&tmp.path().join("b"), Some(&wrong)),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        e.is_user_error() && e.to_string().contains("refused"),
        "{e}"
    );
}

#[test]
fn registry_down_is_a_clear_machine_error() {
    let port = kiln_test_support::free_port();
    let tmp = tempfile::tempdir().unwrap();
    let src: Source = format!("127.0.0.1:{port}/t:1").parse().unwrap();
    let e = pull(&src, &with_config(tmp.path(), None), &no_progress).unwrap_err();
    assert!(!e.is_user_error(), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("http://127.0.0.1:{port}/v2/t/manifests/1")),
        "{e}"
    );
}

#[test]
fn https_by_default_names_the_url() {
    // The fake speaks plain HTTP: without `insecure` the client insists on TLS and says where.
    let fake = start();
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = with_config(tmp.path(), None);
    opts.insecure = false;
    let src: Source = format!("127.0.0.1:{}/t:1", fake.port).parse().unwrap();
    let e = pull(&src, &opts, &no_progress).unwrap_err();
    assert!(!e.is_user_error(), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("https://127.0.0.1:{}/v2/t/manifests/1", fake.port)),
        "{e}"
    );
}

#[test]
fn basic_auth_from_docker_config() {
    let fake = start_with(Auth::Basic);
    let tmp = tempfile::tempdir().unwrap();
    let src: Source = format!("127.0.0.1:{}/t:1", fake.port).parse().unwrap();
    let e = pull(
        &src,
        &with_config(&tmp.path().join("a"), None),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        e.is_user_error() && matches!(e, OciError::AuthRequired { .. }),
        "{e}"
    );
    let creds = format!(
        r#"{{"auths":{{"http://127.0.0.1:{}":{{"auth":"dXNlcjpwdw=="}}}}}}"#,
        fake.port
    );
    let pulled = pull(
        &src,
        &with_config(&tmp.path().join("b"), Some(&creds)),
        &no_progress,
    )
    .unwrap();
    assert_eq!(pulled.manifest_digest, fake.manifest_digest);
    assert_eq!(pulled.layers.len(), 1);
}
