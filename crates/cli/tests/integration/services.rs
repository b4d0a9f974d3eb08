//! Real services from Debian packages (recipes/nginx, sshd, redis) reached with real clients
//! (curl, the OpenSSH client, redis-cli), `kiln trace`, and the refusals of packages and indexes.

use super::*;
use kiln_test_support::{curl, free_port, wait_until, KillOnDrop};
use std::process::{Command, Stdio};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(120);

/// Build a recipe folder into a temp image folder; returns (temp dir, image dir, manifest json).
fn build(recipe_dir: &Path) -> (tempfile::TempDir, PathBuf, serde_json::Value) {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("img");
    let mut c = kiln(d.path());
    c.arg("build").arg(recipe_dir).arg("-o").arg(&out);
    let o = run(c);
    assert!(
        o.status.success(),
        "kiln build {}:\n{}",
        recipe_dir.display(),
        text(&o)
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest"))
            .expect("json");
    (d, out, m)
}

/// `kiln run --no-console` in the foreground, killed (and QEMU with it) when dropped.
fn boot(state: &Path, image: &Path, forward: &str) -> KillOnDrop {
    let mut c = kiln(state);
    c.args(["run", "--no-console", "-p", forward])
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    KillOnDrop(c.spawn().expect("spawn kiln run"))
}

fn size_of(m: &serde_json::Value) -> u64 {
    m["initramfs"]["size"].as_u64().expect("size")
}

fn paths(m: &serde_json::Value) -> Vec<String> {
    m["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_string())
        .collect()
}

#[test]
fn nginx_serves_its_page_and_debians() {
    let (d, image, m) = build(&recipe("nginx"));
    assert!(
        size_of(&m) <= 6_000_000,
        "nginx image {} bytes > 6 MB",
        size_of(&m)
    );
    let files = paths(&m);
    assert!(files.iter().any(|p| p == "/usr/sbin/nginx"));
    let nginx = m["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"] == "/usr/sbin/nginx")
        .expect("nginx");
    assert!(
        nginx["source"]
            .as_str()
            .expect("source")
            .starts_with("package nginx "),
        "{nginx}"
    );
    assert!(
        nginx["reason"]
            .as_str()
            .expect("reason")
            .contains("files.txt:"),
        "{nginx}"
    );
    assert!(!files.iter().any(|p| p.starts_with("/usr/share/doc")));
    let port = free_port();
    let _vm = boot(d.path(), &image, &format!("{port}:80"));
    let (code, body) = wait_until("nginx's page", BOOT, Duration::from_millis(200), || {
        curl(&format!("http://127.0.0.1:{port}/"), 1.0).filter(|(c, _)| *c == 200)
    });
    assert_eq!(code, 200);
    assert!(body.contains("Hello from nginx"), "{body}");
    let (code, body) = curl(&format!("http://127.0.0.1:{port}/debian.html"), 5.0).expect("answer");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Welcome to nginx"), "{body}");
}

#[test]
fn openssh_client_logs_into_sshd_with_a_key() {
    let r = scratch_recipe("sshd");
    let keys = tempfile::tempdir().expect("tmp");
    let key = keys.path().join("id");
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen (apt-get install openssh-client)");
    assert!(o.status.success(), "{}", text(&o));
    let ssh_dir = r.path().join("files/root/.ssh");
    std::fs::create_dir_all(&ssh_dir).expect("mkdir");
    std::fs::copy(key.with_extension("pub"), ssh_dir.join("authorized_keys")).expect("copy");

    let (d, image, m) = build(r.path());
    // Kiln's own dropbear (static, its crypto bundled) and sftp-server: no shared library.
    assert!(
        size_of(&m) <= 1_000_000,
        "sshd image {} bytes > 1.0 MB",
        size_of(&m)
    );
    let files = paths(&m);
    let source = |path: &str| {
        m["files"]
            .as_array()
            .expect("files")
            .iter()
            .find(|f| f["path"] == path)
            .and_then(|f| f["source"].as_str())
            .map(str::to_string)
    };
    for program in [
        "/usr/sbin/dropbear",
        "/usr/sbin/dropbearmulti",
        "/usr/bin/scp",
    ] {
        let from = source(program).unwrap_or_else(|| panic!("{program} not in the image"));
        assert!(
            from.starts_with("kiln dropbear 2022.83 musl "),
            "{program}: {from}"
        );
    }
    let from = source("/usr/lib/sftp-server").expect("/usr/lib/sftp-server not in the image");
    assert!(from.starts_with("kiln sftp-server 9.2p1 musl "), "{from}");
    assert!(
        !files.iter().any(|p| p.contains(".so")),
        "a shared library is in the image: {files:?}"
    );
    assert!(
        !files.iter().any(|p| p.starts_with("/etc/dropbear/")),
        "host keys must not be baked into the image: {files:?}"
    );
    let port = free_port();
    let _vm = boot(d.path(), &image, &format!("{port}:22"));
    let ssh = || {
        let o = Command::new("ssh")
            .args([
                "-q",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=5",
                "-i",
            ])
            .arg(&key)
            .args(["-p", &port.to_string(), "root@127.0.0.1", "uname -a"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let out = wait_until("ssh uname -a", BOOT, Duration::from_millis(500), ssh);
    assert!(out.starts_with("Linux sshd "), "{out}");
    // Files go both ways with scp: SFTP (OpenSSH's default) and the legacy protocol (-O).
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let local = keys.path().join("payload.bin");
    std::fs::write(&local, &payload).expect("write payload");
    let scp = |legacy: bool, from: &str, to: &str| {
        let mut c = Command::new("scp");
        c.args([
            "-q",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
        ])
        .args(["-P", &port.to_string(), "-i"])
        .arg(&key);
        if legacy {
            c.arg("-O");
        }
        let o = c
            .args([from, to])
            .stdin(Stdio::null())
            .output()
            .expect("scp");
        assert!(
            o.status.success(),
            "scp {}{from} {to}: {}",
            if legacy { "-O " } else { "" },
            text(&o)
        );
    };
    for (legacy, name) in [(false, "sftp"), (true, "legacy")] {
        let remote = format!("root@127.0.0.1:/root/{name}.bin");
        scp(legacy, &local.display().to_string(), &remote);
        let back = keys.path().join(format!("{name}-back.bin"));
        scp(legacy, &remote, &back.display().to_string());
        assert!(
            std::fs::read(&back).expect("copied back") == payload,
            "{name}: the bytes copied back differ from those copied in"
        );
    }
    // A key that is not authorized is refused.
    let other = keys.path().join("other");
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .output()
        .expect("ssh-keygen");
    assert!(o.status.success());
    let o = Command::new("ssh")
        .args([
            "-q",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-i"])
        .arg(&other)
        .args(["-p", &port.to_string(), "root@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("ssh");
    assert!(!o.status.success(), "an unknown key logged in");
}

fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let o = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn redis_up(port: u16) {
    wait_until("redis PONG", BOOT, Duration::from_millis(300), || {
        redis_cli(port, &["PING"]).filter(|s| s == "PONG")
    });
}

#[test]
fn redis_cli_ping_set_get_round_trip() {
    let (d, image, m) = build(&recipe("redis"));
    assert!(paths(&m).iter().any(|p| p == "/usr/bin/redis-check-rdb"));
    let port = free_port();
    let _vm = boot(d.path(), &image, &format!("{port}:6379"));
    redis_up(port);
    assert_eq!(
        redis_cli(port, &["SET", "kiln", "fired"]).as_deref(),
        Some("OK")
    );
    assert_eq!(redis_cli(port, &["GET", "kiln"]).as_deref(), Some("fired"));
}

/// recipes/redis with `--drive`: the first boot formats the drive and keeps its data there, a
/// graceful stop saves it, and the next VM on the same drive reads it back.
#[test]
fn redis_data_on_a_second_drive_outlives_the_vm() {
    let (d, image, _) = build(&recipe("redis"));
    let drive = d.path().join("data.img");
    std::fs::File::create(&drive)
        .and_then(|f| f.set_len(32 << 20))
        .expect("drive");
    let start = |port: u16| {
        let mut c = kiln(d.path());
        c.args([
            "run",
            "--no-console",
            "-p",
            &format!("{port}:6379"),
            "--drive",
        ])
        .arg(&drive)
        .arg(&image)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        KillOnDrop(c.spawn().expect("spawn kiln run"))
    };
    let port = free_port();
    let mut vm = start(port);
    redis_up(port);
    assert_eq!(
        redis_cli(port, &["SET", "kept", "on-disk"]).as_deref(),
        Some("OK")
    );
    vm.signal(libc::SIGTERM);
    let status = vm
        .wait_timeout(Duration::from_secs(60))
        .expect("kiln run exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    drop(vm);
    let head = std::fs::read(&drive).expect("drive");
    assert_eq!(
        &head[1024 + 0x38..1024 + 0x3a],
        &[0x53, 0xef],
        "the guest formatted the drive as ext2"
    );

    let port = free_port();
    let _vm = start(port);
    redis_up(port);
    assert_eq!(
        redis_cli(port, &["GET", "kept"]).as_deref(),
        Some("on-disk"),
        "the second VM reads what the first wrote"
    );
}

fn trace_cmd(
    state: &Path,
    recipe_dir: &Path,
    port: u16,
    extra: &[&str],
    workload: &str,
) -> Command {
    let mut c = kiln(state);
    c.arg("trace")
        .arg(recipe_dir)
        .args(["-p", &format!("{port}:80")])
        .args(extra)
        .arg("--")
        .arg(workload);
    c
}

#[test]
fn trace_of_nginx_writes_an_index_whose_image_is_smaller_and_passes() {
    let r = scratch_recipe("nginx");
    let index = r.path().join("files.txt");
    std::fs::write(&index, "/usr/sbin/nginx\n").expect("reset index");
    let d = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let workload = format!(
        "curl -sf --retry 20 --retry-connrefused --retry-delay 1 -m 10 http://127.0.0.1:{port}/debian.html"
    );
    // The trace VM is named after the kiln process; the test next to this one traces nginx
    // too, so only this run's pid tells its QEMU apart.
    let child = trace_cmd(d.path(), r.path(), port, &[], &workload)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kiln trace");
    let vm = format!("kiln-trace-nginx-{} ", child.id());
    let o = child.wait_with_output().expect("wait for kiln trace");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("trace accepted"), "{t}");
    let written = std::fs::read_to_string(&index).expect("index");
    for want in [
        "/usr/sbin/nginx",
        "/usr/share/nginx/html/index.html",
        "/etc/nginx/mime.types",
    ] {
        assert!(
            written.lines().any(|l| l == want),
            "{want} not in the index:\n{written}"
        );
    }
    let (full, min) = trace_sizes(&t);
    assert!(min.0 < full.0, "the minimal image is smaller: {t}");
    assert!(min.1 < full.1, "minimal image has fewer files: {t}");
    assert!(
        kiln_test_support::qemu_pids_with(&vm).is_empty(),
        "QEMU left running"
    );
}

#[test]
fn trace_is_rejected_when_the_minimal_image_fails_and_names_the_file() {
    let r = scratch_recipe("nginx");
    let index = r.path().join("files.txt");
    let before = std::fs::read_to_string(&index).expect("index");
    let d = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let workload = format!(
        "curl -sf --retry 20 --retry-connrefused --retry-delay 1 -m 10 http://127.0.0.1:{port}/debian.html"
    );
    // Leaving out the page the workload fetches makes the minimal image fail.
    let o = run(trace_cmd(
        d.path(),
        r.path(),
        port,
        &["--exclude", "/usr/share/nginx/html/*"],
        &workload,
    ));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("trace rejected"), "{t}");
    assert!(
        t.contains("/usr/share/nginx/html/index.html"),
        "the missing file is named: {t}"
    );
    assert_eq!(
        std::fs::read_to_string(&index).expect("index"),
        before,
        "index changed"
    );
    let left: Vec<_> = std::fs::read_dir(r.path())
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("candidate"))
        .collect();
    assert!(left.is_empty(), "candidate index left behind");
}

fn refused(recipe_dir: &Path, env: &[(&str, &Path)]) -> (Option<i32>, String, tempfile::TempDir) {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("img");
    let mut c = kiln(d.path());
    for (k, v) in env {
        c.env(k, v);
    }
    c.arg("build").arg(recipe_dir).arg("-o").arg(&out);
    let o = run(c);
    assert!(!out.exists(), "a partial image was left");
    (o.status.code(), text(&o), d)
}

fn edit(r: &tempfile::TempDir, file: &str, f: impl FnOnce(String) -> String) {
    let p = r.path().join(file);
    let t = std::fs::read_to_string(&p).expect("read");
    std::fs::write(&p, f(t)).expect("write");
}

#[test]
fn unknown_package_is_refused_by_name() {
    let r = scratch_recipe("nginx");
    edit(&r, "kiln.toml", |t| {
        t.replace(
            "packages = [\"nginx\"]",
            "packages = [\"nginx\", \"kiln-no-such-package\"]",
        )
    });
    let (code, t, _d) = refused(r.path(), &[]);
    assert_eq!(code, Some(2), "{t}");
    assert!(
        t.contains("unknown Debian package `kiln-no-such-package`"),
        "{t}"
    );
}

#[test]
fn index_line_matching_nothing_is_named_with_its_line() {
    let r = scratch_recipe("nginx");
    edit(&r, "files.txt", |t| {
        format!("{t}/usr/sbin/kiln-not-there-*\n")
    });
    let lines = std::fs::read_to_string(r.path().join("files.txt"))
        .expect("read")
        .lines()
        .count();
    let (code, t, _d) = refused(r.path(), &[]);
    assert_eq!(code, Some(2), "{t}");
    assert!(
        t.contains(&format!("files.txt:{lines}")) && t.contains("/usr/sbin/kiln-not-there-*"),
        "{t}"
    );
    assert!(t.contains("matches no file"), "{t}");
}

#[test]
fn failed_download_is_clear_and_leaves_the_cache_usable() {
    // A fresh cache, a kernel from a file and no busybox: the only downloads are the packages.
    let kernel_img = httpd_image();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kernel_img.join("manifest.json")).expect("m"))
            .expect("json");
    let kernel = kernel_img.join(m["kernel"]["file"].as_str().expect("kernel file"));
    let r = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(r.path().join("etc")).expect("mkdir");
    std::fs::write(r.path().join("etc/rc"), "exec true\n").expect("rc");
    std::fs::write(
        r.path().join("kiln.toml"),
        format!(
            "name = \"dl\"\nkernel = \"{}\"\npackages = [\"dropbear-bin\"]\n[root]\nbusybox = false\n",
            kernel.display()
        ),
    )
    .expect("toml");
    let cache = tempfile::tempdir().expect("cache");
    let apt_conf = cache.path().join("apt-offline.conf");
    std::fs::write(
        &apt_conf,
        "Acquire::http::Proxy \"http://127.0.0.1:9\";\nAcquire::Retries \"0\";\n",
    )
    .expect("apt conf");
    let (code, t, _d) = refused(
        r.path(),
        &[("KILN_CACHE_DIR", cache.path()), ("APT_CONFIG", &apt_conf)],
    );
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("downloading") && t.contains("dropbear-bin"),
        "{t}"
    );
    assert!(t.contains("cache was left unchanged"), "{t}");
    let debs: Vec<_> = std::fs::read_dir(cache.path().join("debs"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(debs.is_empty(), "download leftovers in the cache: {debs:?}");

    // The same cache works once the mirror is reachable.
    let d = tempfile::tempdir().expect("tmp");
    let mut c = kiln(d.path());
    c.env("KILN_CACHE_DIR", cache.path())
        .arg("build")
        .arg(r.path())
        .arg("-o")
        .arg(d.path().join("img"));
    run_ok(c);
    assert!(d.path().join("img/manifest.json").is_file());
}
