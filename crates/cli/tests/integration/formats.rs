//! Root formats (issue 18, part 1): erofs and squashfs roots shared read-only by three VMs at
//! once, each writing to its own tmpfs overlay; qcow2; a hybrid ISO booted on QEMU's `pc`
//! machine from the CD-ROM. Each format is built twice, byte-identically.

use super::lifecycle::{page, Fleet};
use super::*;
use kiln_test_support::{curl, free_port, wait_until, KillOnDrop};
use std::time::Duration;

/// recipes/httpd with `[image] format = FORMAT`.
fn httpd_as(format: &str) -> tempfile::TempDir {
    let r = scratch_recipe("httpd");
    let toml = r.path().join("kiln.toml");
    let t = std::fs::read_to_string(&toml).expect("r");
    std::fs::write(
        &toml,
        t.replace("compression = \"zstd\"", &format!("format = \"{format}\"")),
    )
    .expect("w");
    r
}

/// Build `recipe` into two folders; the root image (and the ISO, if any) must be the same
/// bytes both times. The first folder and its manifest.
fn build_twice(recipe: &Path) -> (tempfile::TempDir, serde_json::Value) {
    let (a, ma) = build_ok(recipe);
    let (_b, mb) = build_ok(recipe);
    assert_eq!(
        ma["initramfs"]["sha256"], mb["initramfs"]["sha256"],
        "two builds of the same recipe differ"
    );
    assert_eq!(ma["pc"], mb["pc"], "two ISO builds differ");
    (a, ma)
}

fn sha(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).expect("read")))
}

/// Three VMs boot one erofs (then squashfs) image at once: each serves, each sees its root as
/// an overlay over the read-only image and writes to it without the others seeing the write,
/// and the image file is unchanged afterwards.
#[test]
fn read_only_roots_are_shared_by_three_vms() {
    for format in ["erofs", "squashfs"] {
        let r = httpd_as(format);
        let (d, m) = build_twice(r.path());
        assert_eq!(m["initramfs"]["format"], format);
        let img = d.path().join("img");
        let root = img.join(m["initramfs"]["file"].as_str().expect("file"));
        let built = sha(&root);
        let mut f = Fleet::new();
        let mut vms = vec![];
        for _ in 0..3 {
            let (name, port) =
                f.run_detached(&format!("{format}-"), img.to_str().expect("utf-8"), 80, &[]);
            vms.push((name, port));
        }
        for (i, (name, port)) in vms.iter().enumerate() {
            assert!(page(*port, "").contains("Hello from a Kiln microVM"));
            let o = f.ok(&[
                "exec",
                name,
                "--",
                "sh",
                "-c",
                &format!(
                    "grep -E ' / (overlay|{format}) ' /proc/mounts | cut -d' ' -f3 | tr '\\n' ' '; \
                     [ -e /etc/written ] && echo seen-another; echo vm{i} > /etc/written && cat /etc/written"
                ),
            ]);
            let out = text(&o);
            assert!(out.contains("overlay"), "root is not an overlay: {out}");
            assert!(out.contains(&format!("vm{i}")), "root not writable: {out}");
            assert!(!out.contains("seen-another"), "a write crossed VMs: {out}");
        }
        let qemu_args = std::fs::read_to_string(format!(
            "/proc/{}/cmdline",
            kiln_test_support::qemu_pids_with(&format!("kiln-{} ", vms[0].0))[0]
        ))
        .expect("cmdline")
        .replace('\0', " ");
        assert!(
            qemu_args.contains("readonly=on")
                && qemu_args.contains(&format!("rootfstype={format}")),
            "{qemu_args}"
        );
        for (name, _) in &vms {
            f.ok(&["rm", "-f", name]);
        }
        assert_eq!(sha(&root), built, "the shared image changed");
    }
}

/// qcow2: the ext4 root in QEMU's format boots and serves; it and the raw ext4 disk it is made
/// from are the same bytes build after build.
#[test]
fn a_qcow2_root_boots_and_serves() {
    build_twice(httpd_as("disk").path());
    let r = httpd_as("qcow2");
    let (d, m) = build_twice(r.path());
    let img = d.path().join("img");
    let file = img.join(m["initramfs"]["file"].as_str().expect("file"));
    let head = std::fs::read(&file).expect("read");
    assert_eq!(&head[..4], b"QFI\xfb", "not a qcow2 file");
    let mut f = Fleet::new();
    let (_, port) = f.run_detached("qcow-", img.to_str().expect("utf-8"), 80, &[]);
    assert!(page(port, "").contains("Hello from a Kiln microVM"));
}

/// `format = "iso"`: a hybrid ISO (ISOLINUX, the bzImage of a kernel with PCI, the initramfs)
/// boots on QEMU's `pc` machine from the CD-ROM, with virtio-net-pci, and serves; the same
/// image still runs as a microVM.
#[test]
fn an_iso_boots_on_a_pc_from_the_cdrom() {
    let r = httpd_as("iso");
    let (d, m) = build_twice(r.path());
    let img = d.path().join("img");
    let iso = img.join(m["pc"]["iso"].as_str().expect("pc.iso"));
    let bytes = std::fs::read(&iso).expect("iso");
    assert_eq!(
        &bytes[510..512],
        &[0x55, 0xaa],
        "no hybrid MBR (USB stick boot)"
    );
    assert_eq!(
        &bytes[0x8001..0x8006],
        b"CD001",
        "no ISO 9660 volume descriptor"
    );
    let port = free_port();
    let log = d.path().join("pc-console.log");
    let mut qemu = std::process::Command::new("qemu-system-x86_64");
    qemu.args(["-M", "pc", "-accel", "tcg", "-m", "128", "-nodefaults"])
        .args(["-no-user-config", "-display", "none", "-no-reboot"])
        .arg("-cdrom")
        .arg(&iso)
        .args(["-boot", "d", "-serial"])
        .arg(format!("file:{}", log.display()))
        .args([
            "-netdev",
            &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80"),
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _vm = KillOnDrop(qemu.spawn().expect("qemu-system-x86_64"));
    let url = format!("http://127.0.0.1:{port}/");
    let body = wait_until(
        &format!("{url} from the ISO on -M pc"),
        Duration::from_secs(180),
        Duration::from_millis(500),
        || curl(&url, 2.0).filter(|(c, _)| *c == 200),
    )
    .1;
    assert!(body.contains("Hello from a Kiln microVM"), "{body}");
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(console.contains("kiln: ready"), "{console}");

    let mut f = Fleet::new();
    let (_, port) = f.run_detached("isovm-", img.to_str().expect("utf-8"), 80, &[]);
    assert!(page(port, "").contains("Hello from a Kiln microVM"));
}
