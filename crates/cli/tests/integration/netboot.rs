//! `kiln netboot` (issue 18, part 2): an image built with `[image] format = "iso"` boots on
//! QEMU's `pc` machine from the network — iPXE in the NIC's option ROM fetches `boot.ipxe`, the
//! PC kernel and the initramfs from QEMU's built-in TFTP or from Kiln's in.tftpd and HTTP
//! servers — and serves its page; images without a PC kernel are refused.

use super::*;
use kiln_test_support::{curl, free_port, qemu_pids_with, wait_until, KillOnDrop};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// iPXE, the kernel and kiln-init under TCG on two cores: 10–40 s, with room to spare.
const NETBOOT: Duration = Duration::from_secs(150);

/// recipes/httpd with `[image] format = "iso"`, built once per test run.
fn httpd_pc_image() -> &'static Path {
    static IMAGE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, out) = IMAGE.get_or_init(|| {
        let recipe = scratch_recipe("httpd");
        let toml = recipe.path().join("kiln.toml");
        let old = std::fs::read_to_string(&toml).expect("kiln.toml");
        let new = if old.contains("\n[image]\n") {
            old.replacen("\n[image]\n", "\n[image]\nformat = \"iso\"\n", 1)
        } else {
            format!("{old}\n[image]\nformat = \"iso\"\n")
        };
        std::fs::write(&toml, new).expect("write kiln.toml");
        let d = tempfile::tempdir().expect("tmp");
        let out = d.path().join("httpd-pc");
        let mut c = kiln(d.path());
        c.arg("build").arg(recipe.path()).arg("-o").arg(&out);
        let o = run(c);
        assert!(
            o.status.success(),
            "kiln build of recipes/httpd with format = \"iso\" failed:\n{}",
            text(&o)
        );
        (d, out)
    });
    out
}

/// `kiln netboot` with `args` in the background, its output in files under `state`.
fn spawn_netboot(state: &Path, args: &[&str]) -> KillOnDrop {
    let mut c = kiln(state);
    c.arg("netboot")
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(state.join("stdout")).expect("stdout file"))
        .stderr(std::fs::File::create(state.join("stderr")).expect("stderr file"));
    KillOnDrop(c.spawn().expect("spawn kiln netboot"))
}

fn output_of(state: &Path) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        std::fs::read_to_string(state.join("stdout")).unwrap_or_default(),
        std::fs::read_to_string(state.join("stderr")).unwrap_or_default()
    )
}

/// Wait for the guest's page on `port`, failing with kiln's output when `child` ends first.
fn wait_page(child: &mut KillOnDrop, state: &Path, port: u16) -> (Duration, String) {
    let t0 = Instant::now();
    let url = format!("http://127.0.0.1:{port}/");
    let body = wait_until(
        "HTTP 200 from the netbooted guest",
        NETBOOT,
        Duration::from_millis(250),
        || {
            if let Ok(Some(s)) = child.0.try_wait() {
                panic!(
                    "kiln netboot ended ({s}) before the page:\n{}",
                    output_of(state)
                );
            }
            curl(&url, 1.0).filter(|(c, _)| *c == 200)
        },
    )
    .1;
    (t0.elapsed(), body)
}

/// SIGTERM kiln; it must exit 0 and leave no QEMU whose command line has `needle`.
fn stop(mut child: KillOnDrop, state: &Path, needle: &str) {
    child.signal(libc::SIGTERM);
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .expect("kiln netboot exits after SIGTERM");
    assert!(status.success(), "exit {status:?}:\n{}", output_of(state));
    assert!(qemu_pids_with(needle).is_empty(), "QEMU left running");
}

#[test]
fn netboots_from_qemus_tftp_and_serves_http() {
    let image = httpd_pc_image();
    let d = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let t0 = Instant::now();
    let mut child = spawn_netboot(
        d.path(),
        &[
            &image.to_string_lossy(),
            "-p",
            &format!("127.0.0.1:{port}:80"),
        ],
    );
    let (_, body) = wait_page(&mut child, d.path(), port);
    eprintln!(
        "netboot (QEMU's TFTP): HTTP 200 {} ms after `kiln netboot` started",
        t0.elapsed().as_millis()
    );
    assert!(body.contains("Hello from a Kiln microVM"), "{body}");
    let needle = format!("hostfwd=tcp:127.0.0.1:{port}-:80");
    assert_eq!(qemu_pids_with(&needle).len(), 1, "one QEMU");
    let out = output_of(d.path());
    assert!(out.contains("iPXE"), "iPXE on the console:\n{out}");
    stop(child, d.path(), &needle);
}

#[test]
fn netboots_from_kilns_tftp_and_http_servers() {
    let image = httpd_pc_image();
    let d = tempfile::tempdir().expect("tmp");
    let (tftp, http, port) = (free_port(), free_port(), free_port());
    // in.tftpd only starts as root; without root, HTTP alone is tested.
    let root = is_root();
    if !root {
        eprintln!("not root: in.tftpd cannot start, testing kiln netboot --http alone");
    }
    let mut args = vec![
        image.to_string_lossy().into_owned(),
        "--http".into(),
        format!("127.0.0.1:{http}"),
        "-p".into(),
        format!("127.0.0.1:{port}:80"),
    ];
    if root {
        args.extend(["--listen".into(), format!("127.0.0.1:{tftp}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let mut child = spawn_netboot(d.path(), &args);
    // Both servers are up once their URLs are printed.
    let (tftp_url, http_url) = (
        format!("tftp://127.0.0.1:{tftp}/boot.ipxe"),
        format!("http://127.0.0.1:{http}/boot.ipxe"),
    );
    wait_until(
        "the servers' URLs on stdout",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            if let Ok(Some(s)) = child.0.try_wait() {
                panic!("kiln netboot ended ({s}):\n{}", output_of(d.path()));
            }
            let out = std::fs::read_to_string(d.path().join("stdout")).unwrap_or_default();
            ((out.contains(&tftp_url) || !root) && out.contains(&http_url)).then_some(())
        },
    );
    // The script over TFTP (in.tftpd), as a real client fetches it.
    if root {
        let o = std::process::Command::new("curl")
            .args(["-s", "--max-time", "10", &tftp_url])
            .output()
            .expect("curl");
        assert!(o.status.success(), "curl {tftp_url}: {o:?}");
        let script = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(script.starts_with("#!ipxe\n"), "{script}");
        assert!(
            script.contains("kernel vmlinuz initrd=initrd console=ttyS0"),
            "{script}"
        );
        assert!(script.contains("\ninitrd initrd\nboot\n"), "{script}");
    }
    // The initramfs over HTTP, byte for byte the image's.
    let m = manifest(image);
    let want =
        std::fs::read(image.join(m["initramfs"]["file"].as_str().expect("file"))).expect("read");
    let got = std::process::Command::new("curl")
        .args(["-s", "--fail", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{http}/initrd"))
        .output()
        .expect("curl");
    assert!(got.status.success(), "{}", output_of(d.path()));
    assert!(
        got.stdout == want,
        "the initrd served differs from the image's"
    );
    // The local PC booted through that server.
    let (_, body) = wait_page(&mut child, d.path(), port);
    eprintln!(
        "netboot (kiln's HTTP): HTTP 200 {} ms after `kiln netboot` started",
        t0.elapsed().as_millis()
    );
    assert!(body.contains("Hello from a Kiln microVM"), "{body}");
    let out = output_of(d.path());
    assert!(
        out.contains(&format!("http://10.0.2.2:{http}/boot.ipxe")),
        "{out}"
    );
    stop(child, d.path(), &format!("10.0.2.2:{http}/boot.ipxe"));
}

#[test]
fn netboot_refuses_images_without_a_pc_kernel_and_bad_addresses() {
    let d = tempfile::tempdir().expect("tmp");
    let bad = |args: &[&str], want: &str| {
        let mut c = kiln(d.path());
        c.arg("netboot").args(args);
        let o = run(c);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains(want), "{args:?}: expected {want:?} in:\n{t}");
    };
    let plain = httpd_image().to_string_lossy().into_owned();
    bad(&[&plain], "format = \"iso\"");
    bad(&[&plain], "no PCI");
    let empty = tempfile::tempdir().expect("tmp");
    bad(&[&empty.path().to_string_lossy()], "image folder");
    bad(&[&plain, "--listen", "not-an-address"], "--listen");
    bad(&[&plain, "--listen", "127.0.0.1:99999"], "--listen");
}
