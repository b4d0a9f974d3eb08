//! Unit tests: references, the verified cache, layouts and `docker save`
//! tarballs built here with the tar crate, the platform choice, unpacking
//! (whiteouts, opaque folders, refused paths, devices), and the registry
//! client's auth against a tiny in-process HTTP server.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;

// ---------- builders ----------

enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
    Fifo(&'a str),
}

/// A header whose name is written raw (so `..` and absolute paths can be made).
fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h
}

fn tar_bytes(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::File(p, data, mode) => {
                let mut h = header(p, tar::EntryType::Regular, data.len() as u64, *mode);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            E::Dir(p, mode) => {
                let mut h = header(p, tar::EntryType::Directory, 0, *mode);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Symlink(p, t) | E::Hardlink(p, t) => {
                let kind = if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                let mut h = header(p, kind, 0, 0o777);
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Char(p) => {
                let mut h = header(p, tar::EntryType::Char, 0, 0o666);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Fifo(p) => {
                let mut h = header(p, tar::EntryType::Fifo, 0, 0o644);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn write_layer(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

fn unpack_layers(
    layers: &[Vec<u8>],
) -> (tempfile::TempDir, PathBuf, Result<UnpackReport, OciError>) {
    let tmp = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| write_layer(tmp.path(), &format!("layer{i}"), l))
        .collect();
    let dest = tmp.path().join("root");
    let r = unpack(&paths, &dest);
    (tmp, dest, r)
}

fn config_json(arch: &str, entrypoint: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": {"Entrypoint": entrypoint, "Cmd": ["-x"], "Env": ["PATH=/bin"],
                   "WorkingDir": "/srv", "User": "1000", "ExposedPorts": {"80/tcp": {}, "53/udp": {}}},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap()
}

/// An OCI layout under construction.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    fn blob(&self, bytes: &[u8]) -> (String, u64) {
        let d = Digest::of(bytes);
        fs::write(self.dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        (d.to_string(), bytes.len() as u64)
    }

    /// An image manifest with `config` and one gzip layer per tar; returns its descriptor JSON.
    fn image(&self, config: &[u8], layers: &[Vec<u8>]) -> serde_json::Value {
        let (cd, cs) = self.blob(config);
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| {
                let gz = gzip(l);
                let (d, s) = self.blob(&gz);
                json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s})
            })
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": image::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": layers
        }))
        .unwrap();
        let (d, s) = self.blob(&manifest);
        json!({"mediaType": image::OCI_MANIFEST, "digest": d, "size": s})
    }

    fn index(&self, manifests: Vec<serde_json::Value>) {
        let index =
            json!({"schemaVersion": 2, "mediaType": image::OCI_INDEX, "manifests": manifests});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

fn tagged(mut desc: serde_json::Value, tag: &str) -> serde_json::Value {
    desc["annotations"] = json!({ image::REF_NAME: tag });
    desc
}

fn opts(cache: &Path) -> PullOptions {
    PullOptions {
        cache: cache.to_path_buf(),
        insecure: true,
        docker_config: Some(cache.join("no-docker-config.json")),
    }
}

fn no_progress(_: &str, _: u64, _: u64) {}

fn cache_files(cache: &Path) -> Vec<String> {
    match fs::read_dir(cache.join("blobs/sha256")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

// ---------- references ----------

#[test]
fn references_parse() {
    let r: Reference = "localhost:5000/app:1".parse().unwrap();
    assert_eq!(
        (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
        ("localhost:5000", "app", Some("1"))
    );
    let r: Reference = "registry.example/ns/app".parse().unwrap();
    assert_eq!(
        (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
        ("registry.example", "ns/app", Some("latest"))
    );
    let hex = "a".repeat(64);
    let r: Reference = format!("localhost:5000/app@sha256:{hex}").parse().unwrap();
    assert_eq!(r.tag, None);
    assert_eq!(r.digest.as_deref(), Some(format!("sha256:{hex}").as_str()));
    assert_eq!(r.manifest_ref(), format!("sha256:{hex}"));
    let r: Reference = "debian:12".parse().unwrap();
    assert_eq!(
        (r.registry.as_str(), r.repository.as_str(), r.api_host()),
        ("docker.io", "library/debian", "registry-1.docker.io")
    );
    assert_eq!(r.to_string(), "docker.io/library/debian:12");

    for bad in [
        "",
        "localhost:5000/App:1",
        "localhost:5000/app:bad tag",
        "localhost:5000/app@sha256:abc",
        "localhost:5000/app@md5:abcd",
        "localhost:99999/app",
        "localhost:5000/",
        "localhost:5000/a//b",
    ] {
        let e = bad.parse::<Reference>().unwrap_err();
        assert!(e.is_user_error(), "{bad}: {e}");
        assert!(matches!(e, OciError::BadReference { .. }), "{bad}: {e}");
    }
}

#[test]
fn sources_parse() {
    assert_eq!(
        "oci:/tmp/lay:1".parse::<Source>().unwrap(),
        Source::Layout {
            dir: "/tmp/lay".into(),
            tag: Some("1".into())
        }
    );
    assert_eq!(
        "oci:lay".parse::<Source>().unwrap(),
        Source::Layout {
            dir: "lay".into(),
            tag: None
        }
    );
    assert_eq!(
        "oci:./a/b".parse::<Source>().unwrap(),
        Source::Layout {
            dir: "./a/b".into(),
            tag: None
        }
    );
    assert_eq!(
        "docker-archive:/x/img.tar".parse::<Source>().unwrap(),
        Source::DockerArchive("/x/img.tar".into())
    );
    assert!(matches!(
        "localhost:5000/app:1".parse::<Source>().unwrap(),
        Source::Registry(_)
    ));
    assert!("oci:".parse::<Source>().unwrap_err().is_user_error());
    assert!("docker-archive:"
        .parse::<Source>()
        .unwrap_err()
        .is_user_error());
    assert_eq!(
        "oci:/tmp/lay:1".parse::<Source>().unwrap().to_string(),
        "oci:/tmp/lay:1"
    );
}

#[test]
fn image_references_told_from_folders() {
    for yes in [
        "oci:lay",
        "docker-archive:x.tar",
        "localhost/app",
        "localhost:5000/app:1",
        "registry.example/ns/app",
        "127.0.0.1:5000/t:1",
    ] {
        assert!(is_image_reference(yes), "{yes}");
    }
    for no in [
        "recipes/httpd",
        "./recipes/httpd",
        "../x/y",
        "/abs/path",
        "out",
        "app.v2",
        "debian:12",
        "",
    ] {
        assert!(!is_image_reference(no), "{no}");
    }
}

// ---------- documents ----------

#[test]
fn config_parsed() {
    let (c, _) = parse_config("c", &config_json("amd64", &["/bin/app"])).unwrap();
    assert_eq!(c.entrypoint, vec!["/bin/app"]);
    assert_eq!(c.cmd, vec!["-x"]);
    assert_eq!(c.env, vec!["PATH=/bin"]);
    assert_eq!(c.working_dir.as_deref(), Some("/srv"));
    assert_eq!(c.user.as_deref(), Some("1000"));
    assert_eq!(
        c.exposed_ports,
        vec![(53, "udp".to_string()), (80, "tcp".to_string())]
    );
    assert_eq!(c.argv("r").unwrap(), vec!["/bin/app", "-x"]);

    let bare = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":null}}"#;
    let (c, _) = parse_config("c", bare).unwrap();
    let e = c.argv("ref").unwrap_err();
    assert!(
        e.is_user_error() && matches!(e, OciError::NoCommand { .. }),
        "{e}"
    );
    let e = parse_config("c", br#"{"config":{"ExposedPorts":{"http/tcp":{}}}}"#).unwrap_err();
    assert!(e.is_user_error(), "{e}");
}

fn platform_desc(arch: &str, variant: Option<&str>) -> Descriptor {
    Descriptor {
        media_type: image::OCI_MANIFEST.to_string(),
        digest: format!("sha256:{}", hex::encode([arch.len() as u8; 32])),
        size: 1,
        platform: Some(Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }),
        annotations: Default::default(),
    }
}

#[test]
fn index_platform_choice() {
    let mut unknown = platform_desc("unknown", None);
    unknown.platform = Some(Platform {
        os: "unknown".into(),
        architecture: "unknown".into(),
        variant: None,
    });
    let list = vec![
        platform_desc("arm64", Some("v8")),
        unknown.clone(),
        platform_desc("amd64", None),
    ];
    let chosen = choose_platform("r", &list).unwrap();
    assert_eq!(chosen.platform.unwrap().architecture, "amd64");

    let e = choose_platform(
        "localhost:5000/app:1",
        &[
            platform_desc("arm64", Some("v8")),
            platform_desc("s390x", None),
            unknown,
        ],
    )
    .unwrap_err();
    assert!(e.is_user_error());
    let msg = e.to_string();
    assert!(
        msg.contains("linux/arm64/v8")
            && msg.contains("linux/s390x")
            && msg.contains("localhost:5000/app:1"),
        "{msg}"
    );
    assert!(!msg.contains("unknown"), "{msg}");
}

#[test]
fn schema1_and_foreign_layers_refused() {
    let e = parse_document("m", br#"{"schemaVersion":1,"name":"x"}"#, None).unwrap_err();
    assert!(
        e.is_user_error() && e.to_string().contains("schemaVersion 1"),
        "{e}"
    );
    let m = json!({"schemaVersion":2,"mediaType":image::DOCKER_MANIFEST,
        "config":{"digest":"sha256:00","size":1},
        "layers":[{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"sha256:00","size":1}]});
    let e = parse_document("m", &serde_json::to_vec(&m).unwrap(), None).unwrap_err();
    assert!(e.to_string().contains("foreign"), "{e}");
}

// ---------- cache ----------

#[test]
fn digest_mismatch_leaves_nothing_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(tmp.path());
    let wrong = Digest::of(b"something else");
    let e = cache
        .store(
            &wrong,
            Some(5),
            "http://r/blob",
            "layer",
            &mut &b"hello"[..],
            &no_progress,
        )
        .unwrap_err();
    assert!(
        e.is_user_error() && matches!(e, OciError::DigestMismatch { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("http://r/blob"), "{e}");
    assert!(
        cache_files(tmp.path()).is_empty(),
        "{:?}",
        cache_files(tmp.path())
    );

    // A right one lands; a corrupted cached one is dropped on lookup.
    let right = Digest::of(b"hello");
    let p = cache
        .store(&right, Some(5), "w", "l", &mut &b"hello"[..], &no_progress)
        .unwrap();
    assert_eq!(cache.lookup(&right).unwrap(), Some(p.clone()));
    fs::write(&p, b"tampered").unwrap();
    assert_eq!(cache.lookup(&right).unwrap(), None);
    assert!(!p.exists());
}

// ---------- layouts ----------

#[test]
fn layout_tag_selection() {
    let tmp = tempfile::tempdir().unwrap();
    let lay = Layout::new(&tmp.path().join("lay"));
    let one = lay.image(
        &config_json("amd64", &["/one"]),
        &[tar_bytes(&[E::File("one", b"1", 0o644)])],
    );
    let two = lay.image(
        &config_json("amd64", &["/two"]),
        &[tar_bytes(&[E::File("two", b"2", 0o644)])],
    );
    lay.index(vec![tagged(one.clone(), "1"), tagged(two, "2")]);
    let cache = tmp.path().join("cache");

    let src: Source = format!("oci:{}:2", lay.dir.display()).parse().unwrap();
    let pulled = pull(&src, &opts(&cache), &no_progress).unwrap();
    assert_eq!(pulled.config.entrypoint, vec!["/two"]);
    assert_eq!(pulled.layers.len(), 1);
    assert!(pulled.layers[0].starts_with(&cache));
    assert!(pulled.reference.ends_with(":2"));
    let dest = tmp.path().join("root");
    unpack(&pulled.layers, &dest).unwrap();
    assert_eq!(fs::read(dest.join("two")).unwrap(), b"2");

    // Unknown tag: a user error naming the tags there are.
    let src: Source = format!("oci:{}:3", lay.dir.display()).parse().unwrap();
    let e = pull(&src, &opts(&cache), &no_progress).unwrap_err();
    assert!(e.is_user_error() && e.to_string().contains("1, 2"), "{e}");
    // No tag with two manifests: refused, naming them.
    let src: Source = format!("oci:{}", lay.dir.display()).parse().unwrap();
    let e = pull(&src, &opts(&cache), &no_progress).unwrap_err();
    assert!(e.is_user_error() && e.to_string().contains("1, 2"), "{e}");
    // No tag with one manifest: that one.
    lay.index(vec![one]);
    let pulled = pull(&src, &opts(&cache), &no_progress).unwrap();
    assert_eq!(pulled.config.entrypoint, vec!["/one"]);
    // Not a layout at all.
    let src: Source = format!("oci:{}", tmp.path().join("nothing").display())
        .parse()
        .unwrap();
    let e = pull(&src, &opts(&cache), &no_progress).unwrap_err();
    assert!(
        e.is_user_error() && e.to_string().contains("index.json"),
        "{e}"
    );
}

#[test]
fn layout_index_chooses_amd64_and_refuses_arm64_only() {
    let tmp = tempfile::tempdir().unwrap();
    let lay = Layout::new(&tmp.path().join("lay"));
    let mut amd = lay.image(
        &config_json("amd64", &["/amd"]),
        &[tar_bytes(&[E::File("a", b"a", 0o644)])],
    );
    let mut arm = lay.image(
        &config_json("arm64", &["/arm"]),
        &[tar_bytes(&[E::File("b", b"b", 0o644)])],
    );
    amd["platform"] = json!({"os": "linux", "architecture": "amd64"});
    arm["platform"] = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    let index = |ms: Vec<serde_json::Value>| {
        let bytes = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": image::OCI_INDEX, "manifests": ms}),
        )
        .unwrap();
        let (d, s) = lay.blob(&bytes);
        json!({"mediaType": image::OCI_INDEX, "digest": d, "size": s})
    };
    let both = index(vec![arm.clone(), amd.clone()]);
    let arm_only = index(vec![arm]);
    lay.index(vec![tagged(both, "multi"), tagged(arm_only, "arm")]);
    let cache = tmp.path().join("cache");

    let src: Source = format!("oci:{}:multi", lay.dir.display()).parse().unwrap();
    let pulled = pull(&src, &opts(&cache), &no_progress).unwrap();
    assert_eq!(pulled.config.entrypoint, vec!["/amd"]);
    assert_eq!(pulled.manifest_digest, amd["digest"].as_str().unwrap());

    let src: Source = format!("oci:{}:arm", lay.dir.display()).parse().unwrap();
    let e = pull(&src, &opts(&cache), &no_progress).unwrap_err();
    assert!(
        e.is_user_error() && matches!(e, OciError::NoPlatform { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("linux/arm64/v8"), "{e}");

    // A single-platform arm64 image is refused too.
    let arm_single = lay.image(&config_json("arm64", &["/arm"]), &[]);
    lay.index(vec![arm_single]);
    let src: Source = format!("oci:{}", lay.dir.display()).parse().unwrap();
    let e = pull(&src, &opts(&cache), &no_progress).unwrap_err();
    assert!(
        e.is_user_error() && e.to_string().contains("linux/arm64"),
        "{e}"
    );
}

#[test]
fn layout_tampered_blob_is_not_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let lay = Layout::new(&tmp.path().join("lay"));
    let desc = lay.image(
        &config_json("amd64", &["/x"]),
        &[tar_bytes(&[E::File("x", b"x", 0o644)])],
    );
    lay.index(vec![desc]);
    // Corrupt the layer blob (the largest gzip blob that is not JSON).
    let blobs = lay.dir.join("blobs/sha256");
    let layer = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| fs::read(p).unwrap().starts_with(&[0x1f, 0x8b]))
        .unwrap();
    let mut bytes = fs::read(&layer).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xff;
    fs::write(&layer, bytes).unwrap();
    let cache = tmp.path().join("cache");
    let src: Source = format!("oci:{}", lay.dir.display()).parse().unwrap();
    let e = pull(&src, &opts(&cache), &no_progress).unwrap_err();
    assert!(
        e.is_user_error() && matches!(e, OciError::DigestMismatch { .. }),
        "{e}"
    );
    let layer_name = layer.file_name().unwrap().to_string_lossy().into_owned();
    let cached = cache_files(&cache);
    assert!(!cached.contains(&layer_name), "{cached:?}");
    assert!(cached.iter().all(|f| !f.starts_with(".tmp")), "{cached:?}");
}

#[test]
fn cached_blobs_are_not_fetched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let lay = Layout::new(&tmp.path().join("lay"));
    let desc = lay.image(
        &config_json("amd64", &["/x"]),
        &[tar_bytes(&[E::File("x", b"x", 0o644)])],
    );
    lay.index(vec![desc]);
    let cache = tmp.path().join("cache");
    let src: Source = format!("oci:{}", lay.dir.display()).parse().unwrap();
    let first = pull(&src, &opts(&cache), &no_progress).unwrap();
    // The layout's layer blob goes away; the cached copy serves the second pull.
    let hex = first.layers[0].file_name().unwrap().to_owned();
    fs::remove_file(lay.dir.join("blobs/sha256").join(hex)).unwrap();
    let second = pull(&src, &opts(&cache), &no_progress).unwrap();
    assert_eq!(first.layers, second.layers);
}

// ---------- docker save ----------

fn docker_archive(path: &Path, layer: &[u8], diff_id: &str) {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    }))
    .unwrap();
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let manifest = serde_json::to_vec(
        &json!([{"Config": config_name, "RepoTags": ["app:1"], "Layers": ["abc123/layer.tar"]}]),
    )
    .unwrap();
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    // Layers first and manifest last, as `docker save` may order them.
    for (name, data) in [
        ("abc123/layer.tar", layer),
        (config_name.as_str(), &config[..]),
        ("manifest.json", &manifest[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn docker_archive_pulls_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = tar_bytes(&[E::File("etc/motd", b"hi", 0o644)]);
    let file = tmp.path().join("img.tar");
    docker_archive(&file, &layer, &Digest::of(&layer).to_string());
    let cache = tmp.path().join("cache");
    let src: Source = format!("docker-archive:{}", file.display())
        .parse()
        .unwrap();
    let pulled = pull(&src, &opts(&cache), &no_progress).unwrap();
    assert_eq!(pulled.config.cmd, vec!["/bin/sh"]);
    assert_eq!(
        pulled.layers,
        vec![cache.join("blobs/sha256").join(Digest::of(&layer).hex())]
    );
    let dest = tmp.path().join("root");
    unpack(&pulled.layers, &dest).unwrap();
    assert_eq!(fs::read(dest.join("etc/motd")).unwrap(), b"hi");

    // A layer that is not what the config's diff_ids say: refused, not cached.
    let cache2 = tmp.path().join("cache2");
    docker_archive(&file, &layer, &Digest::of(b"other").to_string());
    let e = pull(&src, &opts(&cache2), &no_progress).unwrap_err();
    assert!(
        e.is_user_error() && matches!(e, OciError::DigestMismatch { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("abc123/layer.tar"), "{e}");
    assert!(!cache_files(&cache2).contains(&Digest::of(&layer).hex().to_string()));
}

// ---------- unpack ----------

#[test]
fn unpack_files_links_modes_and_compressions() {
    let l0 = tar_bytes(&[
        E::Dir("usr/", 0o755),
        E::Dir("usr/bin/", 0o755),
        E::File("usr/bin/app", b"#!/bin/sh\n", 0o755),
        E::File("etc/conf", b"a=1", 0o600),
        E::Symlink("bin", "usr/bin"),
        E::Hardlink("usr/bin/app2", "usr/bin/app"),
    ]);
    let l1 = tar_bytes(&[
        E::File("etc/conf", b"a=2", 0o640),
        E::Dir("ro/", 0o555),
        E::File("ro/inside", b"x", 0o444),
    ]);
    let l2 = tar_bytes(&[E::File("bin/viasymlink", b"through", 0o644)]);
    let (_tmp, dest, r) = unpack_layers(&[gzip(&l0), zstd::encode_all(&l1[..], 3).unwrap(), l2]);
    let report = r.unwrap();
    assert_eq!(report.files, 7);
    assert!(report.skipped.is_empty());
    let mode = |p: &str| {
        fs::symlink_metadata(dest.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("usr/bin/app"), 0o755);
    assert_eq!(mode("etc/conf"), 0o640);
    assert_eq!(fs::read(dest.join("etc/conf")).unwrap(), b"a=2");
    assert_eq!(
        fs::read_link(dest.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    let ino = |p: &str| fs::metadata(dest.join(p)).unwrap().ino();
    assert_eq!(ino("usr/bin/app"), ino("usr/bin/app2"));
    assert_eq!(mode("ro"), 0o555);
    assert_eq!(fs::read(dest.join("ro/inside")).unwrap(), b"x");
    // Written through the in-tree symlink into its target.
    assert_eq!(
        fs::read(dest.join("usr/bin/viasymlink")).unwrap(),
        b"through"
    );
    // Restore write so the temp dir can be removed.
    fs::set_permissions(dest.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn whiteouts_delete_lower_entries() {
    let l0 = tar_bytes(&[
        E::File("a/keep", b"k", 0o644),
        E::File("a/gone", b"g", 0o644),
        E::File("d/x/y", b"y", 0o644),
    ]);
    let l1 = tar_bytes(&[
        E::File("a/.wh.gone", b"", 0o644),
        E::File(".wh.d", b"", 0o644),
        E::File("a/new", b"n", 0o644),
    ]);
    let (_tmp, dest, r) = unpack_layers(&[l0, l1]);
    r.unwrap();
    assert!(dest.join("a/keep").exists());
    assert!(!dest.join("a/gone").exists());
    assert!(!dest.join("a/.wh.gone").exists());
    assert!(!dest.join("d").exists());
    assert!(dest.join("a/new").exists());
}

/// A layer of (path, type, uid, gid) entries, files holding one byte; links point at `t`.
fn owned_tar(entries: &[(&str, tar::EntryType, u64, u64)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, kind, uid, gid) in entries {
        let size = u64::from(*kind == tar::EntryType::Regular);
        let mut h = header(p, *kind, size, 0o755);
        if *kind == tar::EntryType::Link {
            h.as_old_mut().linkname[..1].copy_from_slice(b"t");
        }
        h.set_uid(*uid);
        h.set_gid(*gid);
        h.set_cksum();
        b.append(&h, &b"x"[..size as usize]).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn owners_other_than_roots_are_reported_and_follow_the_layers() {
    use tar::EntryType::{Directory as D, Link as L, Regular as F};
    let l0 = owned_tar(&[
        ("app/", D, 1001, 1001),
        ("app/data", F, 1001, 1002),
        ("app/gone", F, 7, 7),
        ("d/", D, 5, 5),
        ("d/x", F, 5, 5),
        ("t", F, 8, 9),
        ("hard", L, 0, 0),
        ("mine", F, 0, 0),
    ]);
    let l1 = owned_tar(&[
        ("app/.wh.gone", F, 0, 0),
        (".wh.d", F, 0, 0),
        ("app/data", F, 0, 0),
        ("new", F, 42, 43),
    ]);
    let (_tmp, dest, r) = unpack_layers(&[l0, l1]);
    let owners = r.unwrap().owners;
    let want: BTreeMap<PathBuf, (u32, u32)> = [
        ("app", (1001, 1001)),
        ("hard", (8, 9)),
        ("new", (42, 43)),
        ("t", (8, 9)),
    ]
    .into_iter()
    .map(|(p, o)| (PathBuf::from(p), o))
    .collect();
    assert_eq!(owners, want);
    // Unpacked without root, every file is the unpacking user's.
    let me = fs::metadata(&dest).unwrap().uid();
    assert_eq!(fs::metadata(dest.join("new")).unwrap().uid(), me);
}

#[test]
fn opaque_dir_empties_lower_content_only() {
    let l0 = tar_bytes(&[
        E::File("o/old1", b"1", 0o644),
        E::File("o/sub/old2", b"2", 0o644),
        E::File("other/stay", b"s", 0o644),
    ]);
    // Same-layer entries before and after the opaque marker survive it.
    let l1 = tar_bytes(&[
        E::Dir("o/", 0o755),
        E::File("o/new1", b"n", 0o644),
        E::File("o/sub/new2", b"n", 0o644),
        E::File("o/.wh..wh..opq", b"", 0o644),
        E::File("o/new3", b"n", 0o644),
    ]);
    let (_tmp, dest, r) = unpack_layers(&[l0, l1]);
    r.unwrap();
    assert!(!dest.join("o/old1").exists());
    assert!(!dest.join("o/sub/old2").exists());
    assert!(dest.join("o/new1").exists());
    assert!(dest.join("o/sub/new2").exists());
    assert!(dest.join("o/new3").exists());
    assert!(!dest.join("o/.wh..wh..opq").exists());
    assert!(dest.join("other/stay").exists());
}

#[test]
fn bad_paths_refused_naming_them() {
    let outside = tempfile::tempdir().unwrap();
    let out = outside.path().to_string_lossy().into_owned();
    let abs_target = format!("{out}/pwned");
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (
            vec![tar_bytes(&[E::File("/etc/evil", b"x", 0o644)])],
            "/etc/evil",
        ),
        (
            vec![tar_bytes(&[E::File("../evil", b"x", 0o644)])],
            "../evil",
        ),
        (
            vec![tar_bytes(&[E::File("a/../../evil", b"x", 0o644)])],
            "a/../../evil",
        ),
        // A symlink climbing out, then a write through it (same layer and next layer).
        (
            vec![tar_bytes(&[
                E::Symlink("esc", "../../../../../../.."),
                E::File("esc/tmp/evil", b"x", 0o644),
            ])],
            "esc/tmp/evil",
        ),
        (
            vec![
                tar_bytes(&[E::Symlink("abs", &out)]),
                tar_bytes(&[E::File("abs/pwned", b"x", 0o644)]),
            ],
            "abs/pwned",
        ),
        (
            vec![tar_bytes(&[E::Hardlink("hl", "../../etc/passwd")])],
            "hl",
        ),
    ];
    for (layers, path) in cases {
        let (_tmp, _dest, r) = unpack_layers(&layers);
        let e = r.unwrap_err();
        assert!(
            e.is_user_error() && matches!(e, OciError::BadLayerPath { .. }),
            "{path}: {e}"
        );
        assert!(e.to_string().contains(path), "{path}: {e}");
    }
    assert!(!Path::new(&abs_target).exists());
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn final_symlinks_are_replaced_not_followed() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"original").unwrap();
    let l0 = tar_bytes(&[
        E::Symlink("f", &victim.to_string_lossy()),
        E::Symlink("d", &outside.path().to_string_lossy()),
    ]);
    let l1 = tar_bytes(&[E::File("f", b"new", 0o644), E::Dir("d/", 0o755)]);
    let (_tmp, dest, r) = unpack_layers(&[l0, l1]);
    r.unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"original");
    assert_eq!(fs::read(dest.join("f")).unwrap(), b"new");
    assert!(fs::symlink_metadata(dest.join("d")).unwrap().is_dir());
}

#[test]
fn folder_entry_through_an_inner_symlink_replaces_a_file() {
    let l0 = tar_bytes(&[
        E::Dir("usr/lib/", 0o755),
        E::Symlink("lib", "usr/lib"),
        E::File("usr/lib/x", b"file", 0o644),
    ]);
    let l1 = tar_bytes(&[E::Dir("lib/x/", 0o750), E::File("lib/x/y", b"y", 0o644)]);
    let (_tmp, dest, r) = unpack_layers(&[l0, l1]);
    r.unwrap();
    assert_eq!(fs::read(dest.join("usr/lib/x/y")).unwrap(), b"y");
    assert_eq!(
        fs::metadata(dest.join("usr/lib/x"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o750
    );
}

#[test]
fn files_and_dirs_replace_each_other() {
    let l0 = tar_bytes(&[E::File("x/inner", b"i", 0o644), E::File("y", b"y", 0o644)]);
    let l1 = tar_bytes(&[
        E::File("x", b"now a file", 0o644),
        E::Dir("y/", 0o700),
        E::File("y/z", b"z", 0o644),
    ]);
    let (_tmp, dest, r) = unpack_layers(&[l0, l1]);
    r.unwrap();
    assert_eq!(fs::read(dest.join("x")).unwrap(), b"now a file");
    assert_eq!(fs::read(dest.join("y/z")).unwrap(), b"z");
}

#[test]
fn devices_and_fifos_skipped_and_reported() {
    let l0 = tar_bytes(&[
        E::Char("dev/null"),
        E::Fifo("run/pipe"),
        E::File("ok", b"", 0o644),
    ]);
    let (_tmp, dest, r) = unpack_layers(&[l0]);
    let report = r.unwrap();
    assert_eq!(report.files, 1);
    let paths: Vec<&str> = report.skipped.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, vec!["dev/null", "run/pipe"]);
    assert!(
        report.skipped[0].1.contains("character device 1:3"),
        "{:?}",
        report.skipped
    );
    assert!(!dest.join("dev/null").exists());
}

// ---------- registry auth ----------

#[test]
fn challenges_parse() {
    assert_eq!(
        parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:ns/app:pull""#
        ),
        Some(Challenge::Bearer {
            realm: "https://auth.example/token".into(),
            service: Some("registry.example".into()),
            scope: Some("repository:ns/app:pull".into()),
        })
    );
    assert_eq!(
        parse_challenge(r#"Basic realm="Registry Realm""#),
        Some(Challenge::Basic)
    );
    assert_eq!(parse_challenge("Negotiate"), None);
}

#[test]
fn docker_config_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("config.json");
    fs::write(
        &p,
        br#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="},"localhost:5000":{"auth":"dTpwQHNzOndvcmQ="}}}"#,
    )
    .unwrap();
    let c = docker_credentials(&p, "localhost:5000").unwrap().unwrap();
    assert_eq!(
        (c.username.as_str(), c.password.as_str()),
        ("u", "p@ss:word")
    );
    let c = docker_credentials(&p, "docker.io").unwrap().unwrap();
    assert_eq!(
        (c.username.as_str(), c.password.as_str()),
        ("hub", "secret")
    );
    assert_eq!(docker_credentials(&p, "other.example").unwrap(), None);
    assert_eq!(
        docker_credentials(&tmp.path().join("none.json"), "x").unwrap(),
        None
    );
    fs::write(&p, br#"{"auths":{"x":{"auth":"!!!"}}}"#).unwrap();
    let e = docker_credentials(&p, "x").unwrap_err();
    assert!(
        e.is_user_error() && e.to_string().contains("config.json"),
        "{e}"
    );
}

mod fake_registry;
