//! Integration tests against the host's real apt (skipped when apt is absent).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kiln_debpkg::{Cache, DebError};

fn have_apt() -> bool {
    let ok = std::process::Command::new("apt-get")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("note: apt-get is not installed; skipping a test that needs apt");
    }
    ok
}

#[test]
fn downloads_and_unpacks_busybox_static() {
    if !have_apt() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().to_path_buf());
    let deb = cache.fetch("busybox-static", false).unwrap();
    assert_eq!(deb.package, "busybox-static");
    assert!(!deb.version.is_empty());
    assert_eq!(
        deb.path,
        tmp.path().join("debs").join(format!("{}.deb", deb.sha256))
    );
    assert!(tmp.path().join("debs/index/busybox-static").is_file());

    let dir = cache.unpack(&deb).unwrap();
    let busybox = dir.join("bin/busybox");
    let busybox = if busybox.exists() {
        busybox
    } else {
        dir.join("usr/bin/busybox")
    };
    let meta = std::fs::metadata(&busybox).unwrap();
    assert!(
        meta.permissions().mode() & 0o111 != 0,
        "busybox is executable"
    );
    assert_eq!(&std::fs::read(&busybox).unwrap()[..4], b"\x7fELF");

    // Second fetch is served from the cache, even with apt unavailable.
    let offline = Cache::new(tmp.path().to_path_buf())
        .with_apt_programs("/nonexistent/apt-get", "/nonexistent/apt-cache");
    assert_eq!(offline.fetch("busybox-static", false).unwrap(), deb);
    // refresh goes to apt again.
    assert!(matches!(
        offline.fetch("busybox-static", true),
        Err(DebError::NoApt { .. })
    ));
    // A real refresh downloads again and yields the same content.
    assert_eq!(cache.fetch("busybox-static", true).unwrap(), deb);
    assert!(Path::new(&deb.path).is_file());
}

#[test]
fn unknown_package_is_reported() {
    if !have_apt() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().to_path_buf());
    let err = cache
        .fetch("kiln-no-such-package-xyzzy", false)
        .unwrap_err();
    assert!(matches!(err, DebError::UnknownPackage { .. }), "{err}");
    assert!(
        err.to_string().contains("kiln-no-such-package-xyzzy"),
        "{err}"
    );
}

#[test]
fn package_set_resolves_dependencies_privately_and_is_reused_offline() {
    if !have_apt() {
        return;
    }
    let status_before = std::fs::metadata("/var/lib/dpkg/status")
        .ok()
        .map(|m| (m.len(), m.modified().ok()));
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().to_path_buf());
    let set = cache
        .fetch_set(&["dropbear-bin".to_string()], false)
        .unwrap();
    let names: Vec<&str> = set.debs.iter().map(|d| d.package.as_str()).collect();
    // The closure of an empty system: the package itself and its libraries, libc included.
    for want in ["dropbear-bin", "libc6", "libtomcrypt1", "zlib1g"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for d in &set.debs {
        assert_eq!(kiln_debpkg::sha256_file(&d.path).unwrap(), d.sha256);
    }
    assert!(tmp.path().join("apt/status").is_file());
    // The private status lists only the packages treated as installed, never the host's.
    let status = std::fs::read_to_string(tmp.path().join("apt/status")).unwrap();
    assert!(status.contains("Package: debconf\n"), "{status}");
    assert!(!status.contains("Package: libc6\n"), "{status}");
    // The host's package database was not touched.
    let status_after = std::fs::metadata("/var/lib/dpkg/status")
        .ok()
        .map(|m| (m.len(), m.modified().ok()));
    assert_eq!(status_before, status_after);
    // Reused without apt.
    let offline = Cache::new(tmp.path().to_path_buf())
        .with_apt_programs("/nonexistent/apt-get", "/nonexistent/apt-cache");
    assert_eq!(
        offline
            .fetch_set(&["dropbear-bin".to_string()], false)
            .unwrap(),
        set
    );
}

#[test]
fn unknown_package_in_a_set_is_named() {
    if !have_apt() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().to_path_buf());
    let err = cache
        .fetch_set(
            &[
                "busybox-static".to_string(),
                "kiln-no-such-package".to_string(),
            ],
            false,
        )
        .unwrap_err();
    match &err {
        DebError::UnknownPackage { package, .. } => assert_eq!(package, "kiln-no-such-package"),
        other => panic!("unexpected error: {other}"),
    }
    assert!(!tmp.path().join("sets").exists());
}
