//! Against a real registry: Debian's `docker-registry` on a free loopback port (its own config,
//! storage in a temp folder, killed when the test ends), an image made with `umoci` (two layers:
//! busybox and files, then a whiteout and a replaced folder) and copied in with `skopeo`; pulled
//! over plain HTTP and unpacked. Also the same image as an OCI layout and as a `docker save`
//! style tarball written by skopeo, a missing tag, and a port nothing listens on.
//!
//! Skipped, saying why, only when docker-registry, skopeo or umoci is not installed
//! (scripts/setup.sh installs them).

#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use kiln_oci::{pull, unpack, OciError, PullOptions, Pulled, Source};
use kiln_test_support::registry::{httpd_layout, tools_missing, Registry};

fn skip() -> bool {
    if let Some(tool) = tools_missing() {
        eprintln!("skipping: {tool} is not installed (scripts/setup.sh installs docker-registry, skopeo and umoci)");
        return true;
    }
    false
}

fn opts(cache: &Path) -> PullOptions {
    PullOptions {
        cache: cache.to_path_buf(),
        insecure: true,
        // Never the host's own credentials.
        docker_config: Some(cache.join("no-such-docker-config.json")),
    }
}

/// The image `httpd_layout` makes, unpacked: config and files as it wrote them.
fn check_image(pulled: &Pulled, dest: &Path) {
    let c = &pulled.config;
    assert_eq!(c.entrypoint, vec!["/bin/httpd"]);
    assert_eq!(c.cmd, vec!["-f", "-p", "80", "-h", "/www"]);
    assert!(
        c.env.contains(&"GREETING=hello from OCI".to_string()),
        "{:?}",
        c.env
    );
    assert_eq!(c.working_dir.as_deref(), Some("/www"));
    assert_eq!(c.exposed_ports, vec![(80, "tcp".to_string())]);
    assert_eq!((c.os.as_str(), c.architecture.as_str()), ("linux", "amd64"));
    assert_eq!(pulled.layers.len(), 2, "{:?}", pulled.layers);
    assert!(
        pulled.manifest_digest.starts_with("sha256:"),
        "{}",
        pulled.manifest_digest
    );

    let report = unpack(&pulled.layers, dest).unwrap();
    assert!(report.files >= 10, "{report:?}");
    let busybox = fs::metadata(dest.join("bin/busybox")).unwrap();
    assert_eq!(busybox.len(), fs::metadata("/bin/busybox").unwrap().len());
    assert_eq!(busybox.permissions().mode() & 0o111, 0o111);
    assert_eq!(
        fs::read_link(dest.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_to_string(dest.join("www/index.html")).unwrap(),
        "<h1>Hello from an OCI image</h1>\n"
    );
    // Layer 2's whiteouts.
    assert!(!dest.join("www/secret.html").exists());
    assert!(!dest.join("data/old.txt").exists());
    assert_eq!(
        fs::read_to_string(dest.join("data/new.txt")).unwrap(),
        "new\n"
    );
    assert!(fs::read_dir(dest).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".wh.")));
}

#[test]
fn pulls_and_unpacks_from_a_real_registry() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = httpd_layout(tmp.path());
    let registry = Registry::start();
    registry.push_layout(&layout, "1", "t:1");
    let cache = tmp.path().join("cache");

    let seen = RefCell::new(Vec::new());
    let progress =
        |what: &str, done: u64, total: u64| seen.borrow_mut().push((what.to_string(), done, total));
    let src: Source = registry.reference("t:1").parse().unwrap();
    let pulled = pull(&src, &opts(&cache), &progress).unwrap();
    assert_eq!(pulled.reference, registry.reference("t:1"));
    for layer in &pulled.layers {
        assert!(
            layer.starts_with(cache.join("blobs/sha256")),
            "{}",
            layer.display()
        );
    }
    assert!(
        seen.borrow()
            .iter()
            .any(|(w, d, t)| w.starts_with("layer 2/2") && d == t && *t > 0),
        "{:?}",
        seen.borrow()
    );
    check_image(&pulled, &tmp.path().join("root"));

    // Pinned by digest: the same image, its manifest verified.
    let pinned: Source = format!("{}@{}", registry.reference("t"), pulled.manifest_digest)
        .parse()
        .unwrap();
    let again = pull(&pinned, &opts(&cache), &|_, _, _| {}).unwrap();
    assert_eq!(again.manifest_digest, pulled.manifest_digest);
    assert_eq!(again.layers, pulled.layers);
}

#[test]
fn the_same_image_from_a_layout_and_a_docker_archive() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = httpd_layout(tmp.path());
    let cache = tmp.path().join("cache");
    let src: Source = format!("oci:{}:1", layout.display()).parse().unwrap();
    let pulled = pull(&src, &opts(&cache), &|_, _, _| {}).unwrap();
    check_image(&pulled, &tmp.path().join("from-layout"));

    let archive = tmp.path().join("image.tar");
    let out = Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker-archive:{}:t:1", archive.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let src: Source = format!("docker-archive:{}", archive.display())
        .parse()
        .unwrap();
    let pulled = pull(&src, &opts(&tmp.path().join("cache2")), &|_, _, _| {}).unwrap();
    check_image(&pulled, &tmp.path().join("from-archive"));
}

#[test]
fn missing_tag_is_a_user_error() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = httpd_layout(tmp.path());
    let registry = Registry::start();
    registry.push_layout(&layout, "1", "t:1");
    let src: Source = registry.reference("t:nope").parse().unwrap();
    let e = pull(&src, &opts(&tmp.path().join("cache")), &|_, _, _| {}).unwrap_err();
    assert!(
        e.is_user_error() && matches!(e, OciError::ManifestUnknown { .. }),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains(&registry.reference("t:nope")), "{msg}");
    // Nothing cached for an image that was not there.
    assert!(!tmp.path().join("cache/blobs").exists());
}

#[test]
fn a_registry_that_is_not_there_is_a_clear_error() {
    // Needs no tools: nothing listens on this port.
    let port = kiln_test_support::free_port();
    let tmp = tempfile::tempdir().unwrap();
    let src: Source = format!("127.0.0.1:{port}/t:1").parse().unwrap();
    let e = pull(&src, &opts(tmp.path()), &|_, _, _| {}).unwrap_err();
    assert!(!e.is_user_error(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("http://127.0.0.1:{port}/v2/t/manifests/1")),
        "{msg}"
    );
    assert!(msg.contains("cannot reach the registry"), "{msg}");
}
