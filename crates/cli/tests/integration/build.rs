//! Building recipes: the image folder, its manifest, size, and reproducibility.

use super::*;
use std::time::Duration;

#[test]
fn httpd_image_has_kernel_initramfs_and_explained_manifest() {
    let out = httpd_image();
    let m = manifest(out);
    let initramfs = out.join(m["initramfs"]["file"].as_str().expect("file"));
    let size = std::fs::metadata(&initramfs).expect("initramfs").len();
    assert_eq!(size, m["initramfs"]["size"].as_u64().expect("size"));
    assert!(
        size <= 3_000_000,
        "httpd initramfs is {size} bytes; the target is <= 3 MB"
    );
    let kernel = out.join(m["kernel"]["file"].as_str().expect("kernel file"));
    assert!(kernel.is_file(), "{}", kernel.display());
    assert_eq!(
        m["kernel"]["boot"], "pvh",
        "the tiny kernel boots through PVH"
    );
    let files = m["files"].as_array().expect("files");
    let find = |p: &str| {
        files
            .iter()
            .find(|f| f["path"] == p)
            .unwrap_or_else(|| panic!("{p} not in manifest"))
    };
    assert_eq!(find("/init")["reason"], "kiln-init, the guest's PID 1");
    assert_eq!(find("/usr/bin/busybox")["kind"], "file");
    assert_eq!(find("/bin")["kind"], "symlink");
    assert!(find("/var/www/index.html")["reason"]
        .as_str()
        .expect("r")
        .contains("files/"));
}

#[test]
fn same_recipe_builds_byte_identical_images() {
    let d = tempfile::tempdir().expect("tmp");
    let mut hashes = vec![];
    for out in ["a", "b"] {
        let mut c = kiln(d.path());
        c.arg("build")
            .arg(recipe("httpd"))
            .arg("-o")
            .arg(d.path().join(out))
            .arg("--force");
        run_ok(c);
        let m = manifest(&d.path().join(out));
        hashes.push(m["initramfs"]["sha256"].as_str().expect("sha").to_string());
        let bytes = std::fs::read(
            d.path()
                .join(out)
                .join(m["initramfs"]["file"].as_str().expect("f")),
        )
        .expect("read");
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            hashes[hashes.len() - 1]
        );
    }
    assert_eq!(hashes[0], hashes[1]);
}

#[test]
fn unchanged_recipe_is_not_rebuilt_and_a_change_is_picked_up() {
    let r = scratch_recipe("httpd");
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("img");
    let build = || {
        let mut c = kiln(d.path());
        c.arg("build").arg(r.path()).arg("-o").arg(&out);
        run(c)
    };
    let o = build();
    assert!(o.status.success(), "{}", text(&o));
    let o = build();
    assert!(text(&o).contains("up to date"), "{}", text(&o));
    std::fs::write(r.path().join("files/var/www/index.html"), "changed\n").expect("w");
    let o = build();
    assert!(text(&o).contains("httpd built"), "{}", text(&o));
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary build folders left: {leftovers:?}"
    );
    let _ = Duration::ZERO;
}

#[test]
fn listed_binaries_bring_their_library_closure() {
    let r = scratch_recipe("httpd");
    let toml = std::fs::read_to_string(r.path().join("kiln.toml")).expect("read");
    std::fs::write(
        r.path().join("kiln.toml"),
        with_root_key(&toml, "binaries = [\"/usr/bin/curl\"]"),
    )
    .expect("write");
    let (_d, m) = build_ok(r.path());
    let files = m["files"].as_array().expect("files");
    let libc = files
        .iter()
        .find(|f| {
            f["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/libc.so.6"))
        })
        .expect("libc.so.6 in the image");
    assert!(
        libc["reason"]
            .as_str()
            .expect("reason")
            .contains("needed by"),
        "{libc}"
    );
    assert!(files.iter().any(|f| f["path"]
        .as_str()
        .is_some_and(|p| p.contains("libcurl.so.4"))));
}
