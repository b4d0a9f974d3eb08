//! Booting real VMs under QEMU (TCG here) and talking to them with real clients.

use super::*;
use kiln_test_support::{curl, free_port, qemu_pids_with, wait_until, KillOnDrop};
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(90);

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", free_port())
}

/// `kiln run` an httpd image in the foreground, wait for its page over the forwarded port, check
/// one QEMU serves it, SIGTERM kiln, and check it exits 0 leaving no QEMU. Returns kiln's stderr.
fn serve_then_sigterm(state: &Path, image: &Path, name: &str, extra: &[&str]) -> String {
    let port = free_port();
    let mut c = kiln(state);
    c.args([
        "run",
        "--no-console",
        "--name",
        name,
        "-p",
        &format!("{port}:80"),
    ])
    .args(extra)
    .arg(image)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = KillOnDrop(c.spawn().expect("spawn kiln run"));
    let url = format!("http://127.0.0.1:{port}/");
    let (_, body) = wait_until(
        "HTTP 200 from the guest",
        BOOT,
        Duration::from_millis(100),
        || curl(&url, 0.5).filter(|(c, _)| *c == 200),
    );
    assert!(body.contains("Hello from a Kiln microVM"), "{body}");
    let pids = qemu_pids_with(&format!("kiln-{name}"));
    assert_eq!(pids.len(), 1, "one QEMU for the VM: {pids:?}");
    child.signal(libc::SIGTERM);
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .expect("kiln run exits after SIGTERM");
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert!(status.success(), "exit {status:?}:\n{err}");
    assert!(
        qemu_pids_with(&format!("kiln-{name}")).is_empty(),
        "QEMU left running"
    );
    err
}

#[test]
fn foreground_run_serves_http_and_stops_cleanly_on_sigterm() {
    let d = tempfile::tempdir().expect("tmp");
    let name = unique("fg");
    let err = serve_then_sigterm(d.path(), httpd_image(), &name, &[]);
    assert!(err.contains(&format!("kiln: {name} ready: guest")), "{err}");
    assert!(err.contains("(tcg)") || err.contains("(kvm)"), "{err}");
    assert!(
        qemu_pids_with(&format!("kiln-{name}")).is_empty(),
        "QEMU left running"
    );
}

#[test]
fn detached_vm_is_listed_reached_and_stopped() {
    let d = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let name = unique("bg");
    let mut c = kiln(d.path());
    c.args([
        "run",
        "--detach",
        "--name",
        &name,
        "-p",
        &format!("{port}:80"),
    ])
    .arg(httpd_image());
    let o = run_ok(c);
    assert!(text(&o).contains("ready: guest"), "{}", text(&o));
    // Ready means the port listens in the guest; the first request may still need a retry
    // while slirp learns the route.
    let url = format!("http://127.0.0.1:{port}/");
    wait_until(
        "HTTP 200",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || curl(&url, 0.5).filter(|(c, _)| *c == 200),
    );
    let mut c = kiln(d.path());
    c.args(["ps", "--json"]);
    let o = run(c);
    let ps: serde_json::Value = serde_json::from_slice(&o.stdout).expect("ps json");
    let row = ps
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["name"] == name.as_str())
        .expect("listed");
    assert_eq!(row["state"], "running");
    let pid = row["pid"].as_u64().expect("pid") as u32;

    let mut c = kiln(d.path());
    c.args(["stop", &name]);
    let o = run_ok(c);
    assert!(
        text(&o).contains("Graceful"),
        "init should power off on request: {}",
        text(&o)
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || !kiln_vm::runner::pid_alive(pid)
    );
    assert!(
        qemu_pids_with(&format!("kiln-{name}")).is_empty(),
        "QEMU left running"
    );
    // The record stays (state exited) until `kiln rm`.
    let mut c = kiln(d.path());
    c.args(["rm", &name]);
    run_ok(c);
    let log_dir = d.path().join("vms").join(&name);
    assert!(
        !log_dir.exists(),
        "stale record left at {}",
        log_dir.display()
    );
    let mut c = kiln(d.path());
    c.args(["stop", &name]);
    let o = run(c);
    assert_eq!(
        o.status.code(),
        Some(2),
        "stopping an unknown VM: {}",
        text(&o)
    );
}

#[test]
fn exit_status_follows_rc() {
    let r = scratch_recipe("httpd");
    std::fs::write(
        r.path().join("etc/rc"),
        "#!/bin/sh\necho rc-ran-here\nexit 3\n",
    )
    .expect("w");
    let t = std::fs::read_to_string(r.path().join("kiln.toml")).expect("r");
    std::fs::write(
        r.path().join("kiln.toml"),
        t.replace("ready = \"tcp:80\"", "ready = \"exit\""),
    )
    .expect("w");
    let d = tempfile::tempdir().expect("tmp");
    let name = unique("rc");
    let mut c = kiln(d.path());
    c.args(["run", "--name", &name, "-p", &format!("{}:80", free_port())])
        .arg(r.path());
    let o = run(c);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(
        t.contains("rc-ran-here") && t.contains("kiln: rc exited with status 3"),
        "{t}"
    );
    assert!(qemu_pids_with(&format!("kiln-{name}")).is_empty());
}

#[test]
fn a_guest_that_never_gets_ready_is_stopped_and_reported() {
    let r = scratch_recipe("httpd");
    let t = std::fs::read_to_string(r.path().join("kiln.toml")).expect("r");
    std::fs::write(
        r.path().join("kiln.toml"),
        t.replace("ready = \"tcp:80\"", "ready = \"tcp:81\""),
    )
    .expect("w");
    let d = tempfile::tempdir().expect("tmp");
    let name = unique("nr");
    let mut c = kiln(d.path());
    c.args([
        "run",
        "--no-console",
        "--ready-timeout",
        "12",
        "--name",
        &name,
        "-p",
        &format!("{}:80", free_port()),
    ])
    .arg(r.path());
    let o = run(c);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("did not become ready within 12 s") && t.contains("Last console lines"),
        "{t}"
    );
    assert!(
        qemu_pids_with(&format!("kiln-{name}")).is_empty(),
        "QEMU left running"
    );
}

#[test]
fn rescue_shell_runs_commands_from_stdin() {
    let d = tempfile::tempdir().expect("tmp");
    let name = unique("rescue");
    let mut c = kiln(d.path());
    c.args(["run", "--name", &name]).arg(recipe("rescue"));
    let (status, out) = console_session(c, "rescue# ", b"echo answer-$((6*7))\nexit 0\n", BOOT);
    assert!(status.success(), "{status:?}\n{out}");
    assert!(out.contains("answer-42"), "{out}");
    assert!(qemu_pids_with(&format!("kiln-{name}")).is_empty());
}

/// Kiln's tiny kernel, the default: built from linux-source (minutes from a clean cache;
/// cached after), at most 2 MB as a bzImage, boots recipes/httpd in 32 MiB and serves the page;
/// a fragment naming an option the kernel does not have is refused with its name, file and line.
#[test]
fn tiny_kernel_builds_and_serves_httpd_in_32_mib() {
    let d = tempfile::tempdir().expect("tmp");
    let mut c = kiln(d.path());
    c.args(["kernel", "build"]);
    let o = run(c);
    assert!(
        o.status.success(),
        "kiln kernel build failed:\n{}",
        text(&o)
    );
    let listed = {
        let mut c = kiln(d.path());
        c.args(["kernel", "list"]);
        text(&run(c))
    };
    assert!(listed.contains("-kiln-tiny"), "{listed}");

    let img = httpd_image();
    let m = manifest(img);
    assert_eq!(m["boot"]["kernel_kind"], "tiny", "the default kernel");
    let bz = m["kernel"]["size"].as_u64().expect("size");
    assert!(
        bz <= 2_000_000,
        "tiny kernel bzImage is {bz} bytes; the target is <= 2 MB"
    );
    assert!(
        m["modules"].as_array().expect("modules").is_empty(),
        "everything is built in"
    );

    serve_then_sigterm(d.path(), img, &unique("tiny"), &["--memory", "32"]);

    let frag = d.path().join("bad.config");
    std::fs::write(&frag, "# a typo\nCONFIG_VIRTIO_NETT=y\n").expect("w");
    let mut c = kiln(d.path());
    c.args(["kernel", "build", "--fragment"]).arg(&frag);
    let o = run(c);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("CONFIG_VIRTIO_NETT") && t.contains("bad.config:2"),
        "{t}"
    );
}

/// Debian's cloud kernel (`kernel = "debian"`): its virtio modules are in the image with their
/// dependencies first, and it boots with ACPI and serves the page.
#[test]
fn debian_kernel_loads_its_modules_and_serves_httpd() {
    let img = httpd_debian_image();
    let m = manifest(img);
    assert_eq!(m["boot"]["kernel_kind"], "debian");
    assert_eq!(
        m["kernel"]["boot"], "pvh",
        "Debian's cloud kernel boots through PVH"
    );
    let modules: Vec<&str> = m["modules"]
        .as_array()
        .expect("modules")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for needed in ["virtio_mmio", "virtio_net", "virtio_console"] {
        assert!(
            modules.contains(&needed),
            "{needed} missing from {modules:?}"
        );
    }
    let pos = |n: &str| modules.iter().position(|m| *m == n).expect("module");
    assert!(
        pos("net_failover") < pos("virtio_net"),
        "dependencies load first: {modules:?}"
    );
    let d = tempfile::tempdir().expect("tmp");
    serve_then_sigterm(d.path(), img, &unique("deb"), &[]);
}

/// `[image] format = "disk"`: the root is an ext4 image on the first virtio-blk drive, owned by
/// root though built without root, writable in the guest through an overlay that leaves the
/// image as built; a second drive comes after it.
#[test]
fn disk_image_boots_its_root_from_virtio_blk() {
    let r = scratch_recipe("httpd");
    let toml = r.path().join("kiln.toml");
    let t = std::fs::read_to_string(&toml).expect("r");
    std::fs::write(
        &toml,
        t.replace("ready = \"tcp:80\"", "ready = \"exit\"")
            .replace("compression = \"zstd\"", "format = \"disk\""),
    )
    .expect("w");
    std::fs::write(
        r.path().join("etc/rc"),
        "#!/bin/sh\n\
         grep ' / ' /proc/mounts | cut -d' ' -f1-3 | sed 's/^/root-mount: /'\n\
         echo \"rc-owner: $(stat -c %u:%g /etc/rc)\"\n\
         [ -e /etc/marker ] && echo marker-was-there\n\
         echo x > /etc/marker && echo root-writable\n\
         echo \"first-drive-sectors: $(cat /sys/block/vda/size)\"\n\
         echo \"second-drive-sectors: $(cat /sys/block/vdb/size)\"\n",
    )
    .expect("w");
    let (d, m) = build_ok(r.path());
    let img = d.path().join("img");
    assert_eq!(m["initramfs"]["format"], "disk");
    let disk = img.join(m["initramfs"]["file"].as_str().expect("file"));
    let hash = || {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&disk).expect("disk")))
    };
    let built = hash();
    assert_eq!(built, m["initramfs"]["sha256"].as_str().expect("sha"));
    let data = d.path().join("data.img");
    std::fs::write(&data, vec![0u8; 1 << 20]).expect("data");
    for _ in 0..2 {
        let mut c = kiln(d.path());
        // No network: the recipe's default forward (8080) may be taken by another test.
        c.args([
            "run",
            "--network",
            "none",
            "--name",
            &unique("disk"),
            "--drive",
        ])
        .arg(&data)
        .arg(&img);
        let o = run(c);
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        assert!(t.contains("root-mount: /dev/root / ext4"), "{t}");
        let sectors = std::fs::metadata(&disk).expect("stat").len() / 512;
        assert!(
            t.contains(&format!("first-drive-sectors: {sectors}")),
            "the root disk is vda: {t}"
        );
        assert!(t.contains("rc-owner: 0:0"), "{t}");
        assert!(t.contains("root-writable"), "{t}");
        assert!(
            !t.contains("marker-was-there"),
            "a write survived the VM: {t}"
        );
        assert!(t.contains("second-drive-sectors: 2048"), "{t}");
    }
    assert_eq!(hash(), built, "the image changed under the VMs");
}
