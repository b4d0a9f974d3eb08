//! Unit tests: building small `.deb` files by hand, unpacking, index, corruption.
#![allow(clippy::unwrap_used)]

use super::*;
use std::os::unix::fs::PermissionsExt;

/// What to put in a test data.tar.
enum Item<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDev(&'a str),
    Fifo(&'a str),
    /// A raw name written into the header without validation (for `..`).
    RawFile(&'a [u8], &'a [u8]),
}

fn tar_bytes(items: &[Item]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for item in items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match item {
            Item::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            Item::File(p, mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Item::Symlink(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            Item::HardLink(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            Item::CharDev(p) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o600);
                h.set_size(0);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            Item::Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_mode(0o600);
                h.set_size(0);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            Item::RawFile(name, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                let old = h.as_old_mut();
                old.name[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn compress(data: &[u8], kind: &str) -> Vec<u8> {
    match kind {
        "xz" => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "zst" => zstd::encode_all(data, 3).unwrap(),
        "gz" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        _ => data.to_vec(),
    }
}

/// Build a .deb (ar: debian-binary, control.tar.gz, data.tar.<kind>).
fn build_deb(path: &Path, package: &str, version: &str, items: &[Item], kind: &str) {
    let control = format!(
        "Package: {package}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@example.org>\nDescription: test\n"
    );
    let control_tar = tar_bytes(&[
        Item::Dir("./", 0o755),
        Item::File("./control", 0o644, control.as_bytes()),
    ]);
    let control_gz = compress(&control_tar, "gz");
    let data = compress(&tar_bytes(items), kind);
    let data_name = if kind.is_empty() {
        "data.tar".to_string()
    } else {
        format!("data.tar.{kind}")
    };

    let mut ar = ar::Builder::new(fs::File::create(path).unwrap());
    ar.append(
        &ar::Header::new(b"debian-binary".to_vec(), 4),
        &b"2.0\n"[..],
    )
    .unwrap();
    ar.append(
        &ar::Header::new(b"control.tar.gz".to_vec(), control_gz.len() as u64),
        &control_gz[..],
    )
    .unwrap();
    ar.append(
        &ar::Header::new(data_name.into_bytes(), data.len() as u64),
        &data[..],
    )
    .unwrap();
}

fn sample_items() -> Vec<Item<'static>> {
    vec![
        Item::Dir("./", 0o755),
        Item::Dir("./usr/", 0o755),
        Item::Dir("./usr/bin/", 0o755),
        Item::File("./usr/bin/hello", 0o4755, b"#!/bin/sh\necho hi\n"),
        Item::File("./usr/bin/data", 0o640, b"data"),
        Item::Symlink("./usr/bin/hi", "hello"),
        Item::HardLink("./usr/bin/hello2", "./usr/bin/hello"),
        Item::Dir("./dev/", 0o755),
        Item::CharDev("./dev/null"),
        Item::Fifo("./dev/fifo"),
        Item::Dir("./ro/", 0o555),
        Item::File("./ro/file", 0o444, b"ro"),
        // Parent directory not listed before the file.
        Item::File("./etc/deep/conf", 0o644, b"x=1\n"),
    ]
}

/// A cache whose apt programs do not exist: any apt call fails with NoApt.
fn offline_cache(root: &Path) -> Cache {
    Cache::new(root.to_path_buf())
        .with_apt_programs("/nonexistent/apt-get", "/nonexistent/apt-cache")
}

fn deb_for(path: &Path) -> Deb {
    let control = read_control(path).unwrap();
    Deb {
        package: control.package,
        version: control.version,
        sha256: sha256_file(path).unwrap(),
        path: path.to_path_buf(),
    }
}

#[test]
fn unpack_handmade_deb_all_compressions() {
    for kind in ["xz", "zst", "gz", ""] {
        let tmp = tempfile::tempdir().unwrap();
        let deb_path = tmp.path().join("hello.deb");
        build_deb(&deb_path, "hello", "1:2.0-1", &sample_items(), kind);
        let cache = offline_cache(&tmp.path().join("cache"));
        let deb = deb_for(&deb_path);
        assert_eq!(deb.package, "hello");
        assert_eq!(deb.version, "1:2.0-1");

        let dir = cache.unpack(&deb).unwrap();
        assert_eq!(dir, tmp.path().join("cache/unpacked").join(&deb.sha256));
        let hello = dir.join("usr/bin/hello");
        assert_eq!(fs::read(&hello).unwrap(), b"#!/bin/sh\necho hi\n");
        // setuid stripped, rest kept.
        assert_eq!(
            fs::metadata(&hello).unwrap().permissions().mode() & 0o7777,
            0o755,
            "{kind}"
        );
        assert_eq!(
            fs::metadata(dir.join("usr/bin/data"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o640
        );
        assert_eq!(
            fs::read_link(dir.join("usr/bin/hi")).unwrap(),
            Path::new("hello")
        );
        assert_eq!(
            fs::read(dir.join("usr/bin/hello2")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert!(
            fs::symlink_metadata(dir.join("dev/null")).is_err(),
            "device skipped"
        );
        assert!(
            fs::symlink_metadata(dir.join("dev/fifo")).is_err(),
            "fifo skipped"
        );
        assert_eq!(fs::read(dir.join("etc/deep/conf")).unwrap(), b"x=1\n");
        assert_eq!(fs::read(dir.join("ro/file")).unwrap(), b"ro");
        assert!(dir.join(UNPACK_MARKER).is_file());

        // Second unpack reuses the tree (a file we add survives).
        fs::write(dir.join("sentinel"), b"").unwrap();
        assert_eq!(cache.unpack(&deb).unwrap(), dir);
        assert!(dir.join("sentinel").exists());

        // Without the marker, the tree is redone.
        fs::remove_file(dir.join(UNPACK_MARKER)).unwrap();
        assert_eq!(cache.unpack(&deb).unwrap(), dir);
        assert!(!dir.join("sentinel").exists());

        // Discarding works even with read-only directories inside.
        cache.discard_unpacked(&deb).unwrap();
        assert!(!dir.exists());
    }
}

#[test]
fn unpack_refuses_parent_dir_escape() {
    let tmp = tempfile::tempdir().unwrap();
    let deb_path = tmp.path().join("evil.deb");
    build_deb(
        &deb_path,
        "evil",
        "1",
        &[
            Item::Dir("./", 0o755),
            Item::RawFile(b"./../escaped", b"boom"),
        ],
        "gz",
    );
    let cache = offline_cache(&tmp.path().join("cache"));
    let err = cache.unpack(&deb_for(&deb_path)).unwrap_err();
    assert!(matches!(err, DebError::UnsafePath { .. }), "{err}");
    assert!(!tmp.path().join("cache/unpacked/escaped").exists());
    assert!(!tmp.path().join("escaped").exists());
}

#[test]
fn unpack_refuses_writing_through_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let deb_path = tmp.path().join("evil.deb");
    let target = outside.to_str().unwrap().to_string();
    build_deb(
        &deb_path,
        "evil",
        "1",
        &[
            Item::Dir("./", 0o755),
            Item::Symlink("./link", &target),
            Item::File("./link/pwned", 0o644, b"boom"),
        ],
        "gz",
    );
    let cache = offline_cache(&tmp.path().join("cache"));
    let err = cache.unpack(&deb_for(&deb_path)).unwrap_err();
    assert!(matches!(err, DebError::UnsafePath { .. }), "{err}");
    assert!(!outside.join("pwned").exists());
}

#[test]
fn not_a_deb_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("junk.deb");
    fs::write(&path, b"this is not an ar archive").unwrap();
    let err = read_control(&path).unwrap_err();
    assert!(matches!(err, DebError::NotADeb { .. }), "{err}");
    assert!(err.to_string().contains("junk.deb"));
}

/// Put a deb into the cache as `fetch` would after a download.
fn seed(cache: &Cache, name: &str, deb_src: &Path) -> Deb {
    let sha = sha256_file(deb_src).unwrap();
    fs::create_dir_all(cache.debs_dir()).unwrap();
    let dest = cache.deb_path(&sha);
    fs::copy(deb_src, &dest).unwrap();
    let control = read_control(&dest).unwrap();
    let deb = Deb {
        package: control.package,
        version: control.version,
        sha256: sha,
        path: dest,
    };
    cache.write_index(name, &deb).unwrap();
    deb
}

#[test]
fn index_round_trip_and_offline_reuse() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("hello.deb");
    build_deb(&src, "hello-real", "1.2-3", &sample_items(), "xz");
    let cache = offline_cache(&tmp.path().join("cache"));
    assert_eq!(cache.read_index("hello").unwrap(), None);
    let deb = seed(&cache, "hello", &src);
    assert_eq!(
        cache.read_index("hello").unwrap(),
        Some(IndexEntry {
            package: "hello-real".into(),
            version: "1.2-3".into(),
            sha256: deb.sha256.clone(),
        })
    );
    // apt programs don't exist: this only works if the cache is used.
    let fetched = cache.fetch("hello", false).unwrap();
    assert_eq!(fetched, deb);
    // Overwriting the index is atomic and leaves no temp files behind.
    cache.write_index("hello", &deb).unwrap();
    let leftovers: Vec<_> = fs::read_dir(cache.index_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("hello")]);
}

#[test]
fn corrupt_cached_deb_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("hello.deb");
    build_deb(&src, "hello", "1", &sample_items(), "gz");
    let cache = offline_cache(&tmp.path().join("cache"));
    let deb = seed(&cache, "hello", &src);
    let mut bytes = fs::read(&deb.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&deb.path, &bytes).unwrap();

    let err = cache.fetch("hello", false).unwrap_err();
    match &err {
        DebError::Corrupt {
            path,
            expected,
            actual,
        } => {
            assert_eq!(path, &deb.path);
            assert_eq!(expected, &deb.sha256);
            assert_ne!(actual, expected);
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("corrupt") && msg.contains("--refresh") && msg.contains(&deb.sha256),
        "{msg}"
    );
}

#[test]
fn missing_apt_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = offline_cache(tmp.path());
    let err = cache.fetch("hello", false).unwrap_err();
    assert!(matches!(err, DebError::NoApt { .. }), "{err}");
    assert!(err.to_string().contains("install apt"), "{err}");
    // Kernel meta packages ask apt-cache first.
    let err = cache.fetch("linux-image-cloud-amd64", false).unwrap_err();
    assert!(matches!(err, DebError::NoApt { .. }), "{err}");
}

#[test]
fn invalid_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = offline_cache(tmp.path());
    for bad in ["../etc/passwd", "Foo", "a", "x y", ""] {
        assert!(
            matches!(cache.fetch(bad, false), Err(DebError::InvalidName(_))),
            "{bad}"
        );
    }
}

#[test]
fn default_root_ends_in_kiln() {
    let root = Cache::default_root();
    assert!(
        root.ends_with("kiln") || root.ends_with(".kiln-cache"),
        "{}",
        root.display()
    );
}

#[test]
fn the_source_tarball_sits_beside_the_binary_package_on_the_mirror() {
    let listing = "'http://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1%3a1.35.0-4%2bdeb12u1%2bb1_amd64.deb' busybox-static_1.35.0-4+deb12u1+b1_amd64.deb 1002628 SHA256:ab\n";
    assert_eq!(
        super::orig_url(listing, "busybox_1.35.0.orig.tar.bz2").as_deref(),
        Some("http://deb.debian.org/debian/pool/main/b/busybox/busybox_1.35.0.orig.tar.bz2")
    );
    assert_eq!(super::orig_url("nothing printed\n", "x.tar.bz2"), None);
    assert_eq!(
        super::orig_url("'http://m/a.dsc' a 1 SHA256:x\n", "x"),
        None
    );
}
