//! Many detached VMs managed like services (issue 3): concurrent starts, `ps`, forwarded ports,
//! graceful stops seen on the guest console, a SIGKILLed QEMU reported as crashed, a restart
//! policy bringing a crashing service back, a shared folder, a virtio-console port, a read-only
//! root, and each refusal. Every test cleans up through [`Fleet`]'s Drop (`kiln rm -f`, then a
//! SIGKILL of any QEMU left with the VM's name) and asserts that nothing is left.

use super::*;
use kiln_test_support::{curl, free_port, qemu_pids_with, wait_until, KillOnDrop};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

/// VMs started by one test in its own state folder; removed (and their QEMU killed) on drop.
pub(crate) struct Fleet {
    pub(crate) state: tempfile::TempDir,
    names: Vec<String>,
}

impl Fleet {
    pub(crate) fn new() -> Fleet {
        Fleet {
            state: tempfile::tempdir().expect("tmp"),
            names: vec![],
        }
    }

    pub(crate) fn kiln(&self) -> std::process::Command {
        let mut c = kiln(self.state.path());
        c.env("KILN_RESTART_BACKOFF_MS", "300");
        c
    }

    pub(crate) fn name(&mut self, prefix: &str) -> String {
        let n = format!("{prefix}{}", free_port());
        self.names.push(n.clone());
        n
    }

    /// `kiln run -d` of `target` (an image folder, a recipe or a reference) as a VM named
    /// `prefix…`, with guest port `guest` published on a free host port and `extra` flags
    /// before the target; the ready timeout is generous for a loaded machine. Its name and
    /// the host port.
    pub(crate) fn run_detached(
        &mut self,
        prefix: &str,
        target: &str,
        guest: u16,
        extra: &[&str],
    ) -> (String, u16) {
        let name = self.name(prefix);
        let port = free_port();
        let publish = format!("{port}:{guest}");
        let mut a = vec![
            "run",
            "-d",
            "--ready-timeout",
            "150",
            "-p",
            &publish,
            "--name",
            &name,
        ];
        a.extend_from_slice(extra);
        a.push(target);
        self.ok(&a);
        (name, port)
    }

    pub(crate) fn run(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.kiln();
        c.args(args);
        run(c)
    }

    /// [`Fleet::run`], which must succeed.
    pub(crate) fn ok(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.kiln();
        c.args(args);
        run_ok(c)
    }

    pub(crate) fn ps(&self) -> Vec<Value> {
        let o = self.ok(&["ps", "--json"]);
        serde_json::from_slice::<Value>(&o.stdout)
            .expect("ps --json")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn row(&self, name: &str) -> Option<Value> {
        self.ps().into_iter().find(|r| r["name"] == name)
    }

    pub(crate) fn console_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.state.path().join("vms").join(name).join("console.log"))
            .unwrap_or_default()
    }

    /// After `kiln rm` of every VM: no QEMU, no supervisor, no record.
    pub(crate) fn assert_clean(&self) {
        for n in &self.names {
            assert!(
                qemu_pids_with(&format!("kiln-{n} ")).is_empty(),
                "QEMU of {n} left running"
            );
        }
        let left: Vec<String> = std::fs::read_dir(self.state.path().join("vms"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "stale records: {left:?}");
        assert!(self.ps().is_empty());
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for n in &self.names {
            let mut c = self.kiln();
            c.args(["rm", "-f", n]);
            let _ = c.stdin(Stdio::null()).output();
            for pid in qemu_pids_with(&format!("kiln-{n} ")) {
                // SAFETY: kill(2) on a QEMU this test started.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
}

/// The body of `http://127.0.0.1:PORT/PATH` once it answers 200 (within 60 s).
pub(crate) fn page(port: u16, path: &str) -> String {
    let url = format!("http://127.0.0.1:{port}/{path}");
    wait_until(
        &url,
        Duration::from_secs(60),
        Duration::from_millis(100),
        || curl(&url, 2.0).filter(|(c, _)| *c == 200),
    )
    .1
}

pub(crate) fn http_ok(port: u16) {
    let url = format!("http://127.0.0.1:{port}/");
    wait_until(
        "HTTP 200",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || curl(&url, 1.0).filter(|(c, _)| *c == 200),
    );
}

#[test]
fn five_detached_vms_run_at_once_and_stop_gracefully() {
    let mut f = Fleet::new();
    let disk = f.state.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let vms: Vec<(String, u16)> = (0..5).map(|_| (f.name("five"), free_port())).collect();
    // All five start at once; the first also has a writable second drive.
    let mut starts: Vec<KillOnDrop> = vms
        .iter()
        .enumerate()
        .map(|(i, (name, port))| {
            let mut c = f.kiln();
            c.args(["run", "-d", "--ready-timeout", "150", "--name", name])
                .args(["-p", &format!("{port}:80")])
                .args(["--memory", "96"]);
            if i == 0 {
                c.arg("--drive").arg(&disk);
            }
            c.arg(httpd_image())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            KillOnDrop(c.spawn().expect("spawn kiln run -d"))
        })
        .collect();
    for s in &mut starts {
        let st = s.wait_timeout(BOOT).expect("kiln run -d returns");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut s.0.stderr.take().expect("stderr"), &mut err)
            .expect("read");
        assert!(st.success(), "{err}");
        assert!(err.contains("ready: guest"), "{err}");
    }
    let rows = f.ps();
    for (name, port) in &vms {
        let r = rows
            .iter()
            .find(|r| r["name"] == name.as_str())
            .expect("listed");
        assert_eq!(r["state"], "running", "{r}");
        assert!(r["pid"].as_u64().is_some_and(|p| p > 0), "{r}");
        assert_eq!(r["memory"], 96);
        assert_eq!(r["ports"][0], format!("127.0.0.1:{port}:80/tcp"));
        assert_eq!(r["restarts"], 0);
        http_ok(*port);
    }
    let o = f.run(&["ps"]);
    assert!(
        text(&o).contains("NAME") && text(&o).contains(&vms[0].0),
        "{}",
        text(&o)
    );

    // Refusals while they run: same name, a port another VM forwards, the same writable disk.
    let (first, first_port) = (&vms[0].0, vms[0].1);
    let mut c = f.kiln();
    c.args([
        "run",
        "-d",
        "--name",
        first,
        "-p",
        &format!("{}:80", free_port()),
    ])
    .arg(httpd_image());
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("a VM named `{first}` is already running")),
        "{}",
        text(&o)
    );
    let other = f.name("other");
    let mut c = f.kiln();
    c.args([
        "run",
        "-d",
        "--name",
        &other,
        "-p",
        &format!("{first_port}:80"),
    ])
    .arg(httpd_image());
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "host port 127.0.0.1:{first_port}/tcp is already in use, by VM `{first}`"
        )),
        "{}",
        text(&o)
    );
    let mut c = f.kiln();
    c.args([
        "run",
        "-d",
        "--name",
        &other,
        "-p",
        &format!("{}:80", free_port()),
    ])
    .arg("--drive")
    .arg(&disk)
    .arg(httpd_image());
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("is in use by VM `{first}`")),
        "{}",
        text(&o)
    );
    assert!(qemu_pids_with(&format!("kiln-{other} ")).is_empty());

    // Graceful stops, all five; the guest console shows init's clean shutdown.
    for (name, _) in &vms {
        let o = f.ok(&["stop", name, "--timeout", "30"]);
        assert!(text(&o).contains("(Graceful)"), "{}", text(&o));
        let log = f.console_log(name);
        assert!(
            log.contains("kiln: shutdown requested") && log.contains("kiln: powering off"),
            "{log}"
        );
        let r = f.row(name).expect("still listed after stop");
        assert_eq!(r["state"], "exited", "{r}");
        assert!(r["pid"].is_null(), "{r}");
        assert!(qemu_pids_with(&format!("kiln-{name} ")).is_empty());
    }
    let names: Vec<&str> = vms.iter().map(|(n, _)| n.as_str()).collect();
    let mut args = vec!["rm"];
    args.extend(&names);
    f.ok(&args);
    f.assert_clean();
}

#[test]
fn a_sigkilled_qemu_is_crashed_and_a_lost_supervisor_is_no_ghost() {
    let mut f = Fleet::new();
    let a = f.name("crash");
    let b = f.name("ghost");
    for n in [&a, &b] {
        let mut c = f.kiln();
        c.args([
            "run",
            "-d",
            "--name",
            n,
            "-p",
            &format!("{}:80", free_port()),
        ])
        .arg(httpd_image());
        run_ok(c);
    }
    let pid = f.row(&a).expect("row")["pid"].as_u64().expect("pid") as i32;
    // SAFETY: kill(2) on the QEMU of a VM this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let r = wait_until(
        "ps shows crashed",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || f.row(&a).filter(|r| r["state"] == "crashed"),
    );
    assert_eq!(r["signal"], 9, "{r}");
    assert!(f.run(&["ps"]).stdout.windows(7).any(|w| w == b"crashed"));

    // Kill the supervisor itself: QEMU dies with it, and ps reconciles the record.
    let sup = f.row(&b).expect("row")["supervisor_pid"]
        .as_u64()
        .expect("pid") as i32;
    // SAFETY: as above.
    unsafe { libc::kill(sup, libc::SIGKILL) };
    wait_until(
        "QEMU gone with its supervisor",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            qemu_pids_with(&format!("kiln-{b} "))
                .is_empty()
                .then_some(())
        },
    );
    let r = wait_until(
        "no ghost",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || f.row(&b).filter(|r| r["state"] != "running"),
    );
    assert_eq!(r["state"], "crashed", "{r}");
    let o = f.run(&["inspect", &b]);
    assert!(
        text(&o).contains("supervisor and QEMU are gone"),
        "{}",
        text(&o)
    );
    f.ok(&["rm", &a, &b]);
    f.assert_clean();
}

#[test]
fn restart_policy_brings_a_crashing_service_back() {
    let r = scratch_recipe("httpd");
    // The service serves for a while, then crashes (exit 1); on-failure restarts the VM.
    std::fs::write(
        r.path().join("etc/rc"),
        "#!/bin/sh\n. /etc/include/basicrc\nhttpd -p 80 -h /var/www\nsleep 6\necho service-crashing\nexit 1\n",
    )
    .expect("rc");
    let mut f = Fleet::new();
    let name = f.name("restart");
    let port = free_port();
    let mut c = f.kiln();
    c.args(["run", "-d", "--restart", "on-failure", "--name", &name])
        .args(["-p", &format!("{port}:80")])
        .arg(r.path());
    run_ok(c);
    let row = wait_until("a restart", BOOT, Duration::from_millis(100), || {
        f.row(&name)
            .filter(|r| r["restarts"].as_u64().unwrap_or(0) >= 1 && r["state"] == "running")
    });
    assert_eq!(row["restart"], "on-failure");
    http_ok(port);
    let log = f.console_log(&name);
    assert!(
        log.contains("service-crashing") && log.contains("restart 1"),
        "{log}"
    );
    f.ok(&["rm", "-f", &name]);
    f.assert_clean();
}

/// The share is 9p on the tiny kernel (the default) and virtiofs on Debian's kernel.
#[test]
fn shared_folder_virtio_port_and_read_only_root() {
    share_port_and_ro_root(None, "9p");
}

#[test]
fn shared_folder_is_virtiofs_on_debians_kernel() {
    share_port_and_ro_root(Some("debian"), "virtiofs");
}

fn share_port_and_ro_root(kernel: Option<&str>, fstype: &str) {
    let r = scratch_recipe("httpd");
    if let Some(k) = kernel {
        let toml = r.path().join("kiln.toml");
        let t = std::fs::read_to_string(&toml).expect("read");
        std::fs::write(&toml, format!("kernel = \"{k}\"\n{t}")).expect("write");
    }
    std::fs::write(
        r.path().join("etc/rc"),
        "#!/bin/sh\n. /etc/include/basicrc\n\
         grep ' /mnt/host ' /proc/mounts > /mnt/host/mounts.txt\n\
         cp /mnt/host/greeting.txt /mnt/host/from-guest.txt\n\
         if touch /root-write-test 2>/dev/null; then echo rw > /mnt/host/root.txt; else echo ro > /mnt/host/root.txt; fi\n\
         ( exec 3<>/dev/virtio-ports/data; while ! read -r line <&3; do sleep 0.2; done; echo \"guest got: $line\" >&3; sleep 60 ) &\n\
         exec httpd -f -p 80 -h /var/www\n",
    )
    .expect("rc");
    let mut f = Fleet::new();
    let share = tempfile::tempdir().expect("share");
    std::fs::write(share.path().join("greeting.txt"), "hello from the host\n").expect("w");
    let name = f.name("share");
    let mut c = f.kiln();
    c.args([
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &format!("{}:80", free_port()),
    ])
    .arg("--share")
    .arg(format!("{}:/mnt/host", share.path().display()))
    .args(["--vports", "data", "--readonly-root"])
    .arg(r.path());
    run_ok(c);
    let got = wait_until(
        "the guest copied the file",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            std::fs::read_to_string(share.path().join("from-guest.txt"))
                .ok()
                .filter(|s| !s.is_empty())
        },
    );
    assert_eq!(got, "hello from the host\n");
    let mounts = std::fs::read_to_string(share.path().join("mounts.txt")).expect("mounts.txt");
    assert_eq!(
        mounts.split_whitespace().nth(2),
        Some(fstype),
        "share mounted as {fstype}: {mounts}"
    );
    let root = std::fs::read_to_string(share.path().join("root.txt")).expect("root.txt");
    assert_eq!(root.trim(), "ro", "the root should be read-only");

    let sock = f
        .state
        .path()
        .join("vms")
        .join(&name)
        .join("vport-data.sock");
    let mut s = UnixStream::connect(&sock).expect("vport socket");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(b"ping\n").expect("write");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("a line back");
    assert_eq!(line.trim_end(), "guest got: ping");

    f.ok(&["stop", &name]);
    let vfs = std::process::Command::new("pgrep")
        .args([
            "-f",
            &format!("{}", f.state.path().join("vms").join(&name).display()),
        ])
        .output()
        .expect("pgrep");
    assert!(
        vfs.stdout.is_empty(),
        "a helper (virtiofsd) left: {}",
        String::from_utf8_lossy(&vfs.stdout)
    );
    f.ok(&["rm", &name]);
    f.assert_clean();
}

#[test]
fn console_is_shared_and_logs_replay_it() {
    let mut f = Fleet::new();
    let name = f.name("con");
    let serial = free_port();
    let mut c = f.kiln();
    c.args([
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &format!("{}:80", free_port()),
    ])
    .args(["--serial-tcp", &serial.to_string()])
    .arg(httpd_image());
    run_ok(c);
    // Serial over TCP (startnb.sh -t): another viewer of the same console.
    let tcp = std::net::TcpStream::connect(("127.0.0.1", serial)).expect("serial over TCP");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("t");
    let mut r = BufReader::new(tcp);
    wait_until(
        "the ready line over TCP",
        Duration::from_secs(10),
        Duration::from_millis(1),
        || {
            let mut l = String::new();
            r.read_line(&mut l).ok()?;
            l.contains("kiln: ready in").then_some(())
        },
    );
    let sock = f.state.path().join("vms").join(&name).join("console.sock");
    let viewers: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&sock).expect("viewer"))
        .collect();
    for v in viewers {
        v.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("t");
        let mut r = BufReader::new(v);
        let seen = wait_until(
            "history with the ready line",
            Duration::from_secs(10),
            Duration::from_millis(1),
            || {
                let mut l = String::new();
                r.read_line(&mut l).ok()?;
                l.contains("kiln: ready in").then_some(l)
            },
        );
        assert!(seen.contains("ms"));
    }
    let o = f.run(&["logs", &name]);
    assert!(text(&o).contains("kiln: ready in"), "{}", text(&o));
    // `kiln console` with piped input: Ctrl-] detaches and the VM keeps running.
    let mut c = f.kiln();
    c.args(["console", &name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(c.spawn().expect("console"));
    child
        .0
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"\x1d")
        .expect("detach key");
    let st = child
        .wait_timeout(Duration::from_secs(10))
        .expect("console detaches");
    assert!(st.success());
    assert_eq!(f.row(&name).expect("row")["state"], "running");
    let o = f.run(&["kill", &name]);
    assert!(
        o.status.success() && text(&o).contains("killed"),
        "{}",
        text(&o)
    );
    f.ok(&["rm", &name]);
    f.assert_clean();
}

#[test]
fn refusals_without_a_vm() {
    let f = Fleet::new();
    // Stop of an unknown VM.
    let o = f.run(&["stop", "nosuchvm"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no VM named `nosuchvm`"), "{}", text(&o));
    // A malformed config file: file, line and key.
    let cfg = f.state.path().join("vm.toml");
    std::fs::write(&cfg, "name = \"web\"\ncpus = 1\nmemroy = 64\n").expect("w");
    let o = f.run(&["run", "-f", cfg.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "{}:3: key `memroy`: unknown field `memroy`",
            cfg.display()
        )),
        "{}",
        text(&o)
    );
    std::fs::write(&cfg, "name = \"web\"\nrestart = \"sometimes\"\n").expect("w");
    let o = f.run(&["run", "-f", cfg.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("vm.toml:2: key `restart`"),
        "{}",
        text(&o)
    );
    // virtiofs asked of the tiny kernel, which has only 9p.
    let share = tempfile::tempdir().expect("share");
    let mut c = f.kiln();
    c.args(["run", "--share-fs", "virtiofs", "--share"])
        .arg(format!("{}:/mnt/x", share.path().display()))
        .arg(httpd_image());
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("the tiny kernel has no virtiofs"),
        "{}",
        text(&o)
    );
    assert!(f.ps().is_empty());
    // Bridge networking without root (as the nobody user).
    let mut c = f.kiln();
    c.args(["run", "--network", "bridge:br0", "/nonexistent-image"]);
    std::os::unix::process::CommandExt::uid(&mut c, 65534);
    std::os::unix::process::CommandExt::gid(&mut c, 65534);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("network `bridge:br0` needs root"),
        "{}",
        text(&o)
    );
}

#[test]
fn dry_runs_render_other_backends_from_a_config_file() {
    let f = Fleet::new();
    let cfg = f.state.path().join("vm.toml");
    std::fs::write(
        &cfg,
        format!(
            "image = \"{}\"\nname = \"paper\"\ncpus = 2\nmemory = 96\nports = [\"8080:80\"]\nnetwork = \"tap:tap3\"\n",
            httpd_image().display()
        ),
    )
    .expect("w");
    let o = f.run(&[
        "run",
        "-f",
        cfg.to_str().expect("utf8"),
        "--backend",
        "firecracker",
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("firecracker JSON");
    assert_eq!(v["machine-config"]["vcpu_count"], 2);
    assert_eq!(v["network-interfaces"][0]["host_dev_name"], "tap3");
    assert!(v["boot-source"]["kernel_image_path"]
        .as_str()
        .unwrap_or("")
        .starts_with(&httpd_image().display().to_string()));
    // An export names the image's own (compressed) initramfs; QEMU boots it expanded.
    assert!(
        v["boot-source"]["initrd_path"]
            .as_str()
            .is_some_and(|p| p.starts_with(&httpd_image().display().to_string())),
        "{v}"
    );
    // On paper the expanded archive is named, not made: a cache of its own stays empty.
    let cache = tempfile::tempdir().expect("cache");
    let mut c = f.kiln();
    c.env("KILN_CACHE_DIR", cache.path()).args([
        "run",
        "-f",
        cfg.to_str().expect("utf8"),
        "--dry-run",
    ]);
    let o = run(c);
    assert!(o.status.success(), "{}", text(&o));
    let argv = String::from_utf8_lossy(&o.stdout).into_owned();
    let initrd = argv
        .split_whitespace()
        .filter(|w| *w != "\\")
        .skip_while(|w| *w != "-initrd")
        .nth(1)
        .unwrap_or_else(|| panic!("no -initrd: {argv}"));
    let expanded = cache.path().join("initrd");
    assert!(
        initrd.starts_with(&expanded.display().to_string()) && initrd.ends_with(".cpio"),
        "{argv}"
    );
    assert!(!expanded.exists(), "a dry run wrote {initrd}");
    let o = f.run(&[
        "run",
        "-f",
        cfg.to_str().expect("utf8"),
        "--backend",
        "bhyve",
        "--dry-run",
        "--memory",
        "64",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("-s 2:0,virtio-net,tap3") && out.contains("-m 64M"),
        "{out}"
    );
    let o = f.run(&[
        "run",
        "-f",
        cfg.to_str().expect("utf8"),
        "--backend",
        "bhyve",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(qemu_pids_with("kiln-paper ").is_empty());
}

/// `kiln cache prune` drops a recipe's older images but keeps its newest and any a VM record
/// points at, and PVH kernels and expanded initramfs archives no kept image uses; `--dry-run`
/// removes nothing; `--builds` drops Kiln's own program builds no kept image holds.
#[test]
fn cache_prune_keeps_the_newest_and_the_used_images() {
    let cache = tempfile::tempdir().expect("cache");
    let images = cache.path().join("images");
    std::fs::create_dir_all(&images).expect("mkdir");
    let copy = |name: &str| {
        let dest = images.join(name);
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(httpd_image())
            .arg(&dest)
            .status()
            .expect("cp");
        assert!(st.success());
        dest
    };
    // Oldest first: used-by-a-VM, then an older build, then the newest.
    let used = copy("httpd-used");
    let old = copy("httpd-old");
    let newest = copy("httpd-newest");
    let touch = |dir: &Path, secs_ago: u64| {
        let f = std::fs::File::options()
            .write(true)
            .open(dir.join("manifest.json"))
            .expect("open");
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(secs_ago))
            .expect("mtime");
    };
    touch(&used, 3000);
    touch(&old, 2000);
    touch(&newest, 1000);
    let pvh = cache.path().join("pvh");
    std::fs::create_dir_all(&pvh).expect("mkdir");
    std::fs::write(pvh.join("feedface.vmlinux"), vec![0u8; 4096]).expect("w");
    let expanded = cache.path().join("initrd");
    std::fs::create_dir_all(&expanded).expect("mkdir");
    std::fs::write(expanded.join("feedface.cpio"), vec![0u8; 4096]).expect("w");
    // Kiln's own builds and their source tarballs are listed with the rest.
    for (dir, file) in [
        ("busybox/bb-feedface", "busybox"),
        ("dropbear/db-feedface", "dropbearmulti"),
        ("orig", "x.orig.tar.bz2"),
    ] {
        std::fs::create_dir_all(cache.path().join(dir)).expect("mkdir");
        std::fs::write(cache.path().join(dir).join(file), vec![0u8; 4096]).expect("w");
    }
    // The busybox build the images hold (a stand-in with its identity) and a failed build's log.
    let manifest_json = manifest(&used);
    let identity = manifest_json["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["source"].as_str())
        .find(|s| s.starts_with("kiln busybox "))
        .expect("the image holds Kiln's busybox")
        .to_string();
    let hash16 = identity.rsplit(' ').next().expect("hash").to_string();
    let held = cache.path().join(format!("busybox/bb-{hash16}"));
    std::fs::create_dir_all(&held).expect("mkdir");
    std::fs::write(held.join("busybox"), b"stand-in").expect("w");
    std::fs::write(
        held.join("busybox.json"),
        serde_json::json!({
            "version": identity.split(' ').nth(2).expect("version"),
            "tarball_sha256": "", "hash": format!("{hash16}{}", "0".repeat(48)),
            "symbols": [], "size": 8,
        })
        .to_string(),
    )
    .expect("record");
    let failed = cache.path().join("busybox/bb-0123456789abcdef.failed.log");
    std::fs::write(&failed, "make: *** failed").expect("w");

    let mut f = Fleet::new();
    let name = f.name("cached");
    let cmd = |f: &Fleet, args: &[&str]| {
        let mut c = f.kiln();
        c.env("KILN_CACHE_DIR", cache.path()).args(args);
        run(c)
    };
    let o = cmd(
        &f,
        &[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            &name,
            used.to_str().expect("utf8"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));

    let o = cmd(&f, &["cache"]);
    let listing = text(&o);
    assert!(o.status.success(), "{listing}");
    assert!(listing.contains(&format!("used by {name}")), "{listing}");
    assert!(listing.contains("the newest image of httpd"), "{listing}");
    for what in ["busybox (built)", "dropbear (built)", "source tarballs"] {
        assert!(
            listing.lines().any(|l| l.starts_with(what)),
            "{what}: {listing}"
        );
    }
    // The VM booted its initramfs expanded into the cache (httpd's archive is compressed).
    let manifest = manifest(&used);
    let sha = manifest["initramfs"]["sha256"]
        .as_str()
        .expect("sha")
        .to_string();
    let booted = expanded.join(format!("{sha}.cpio"));
    assert_eq!(
        std::fs::metadata(&booted).map(|m| m.len()).ok(),
        manifest["initramfs"]["uncompressed_size"].as_u64(),
        "{listing}"
    );

    let o = cmd(&f, &["cache", "prune", "--dry-run"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("would remove image") && t.contains("httpd-old"),
        "{t}"
    );
    assert!(old.is_dir(), "--dry-run removed something");

    let o = cmd(&f, &["cache", "prune"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(!old.exists(), "the older image stays: {t}");
    assert!(used.is_dir() && newest.is_dir(), "a kept image went: {t}");
    assert!(!pvh.join("feedface.vmlinux").exists(), "{t}");
    assert!(!expanded.join("feedface.cpio").exists(), "{t}");
    assert!(
        booted.is_file(),
        "a kept image's expanded initramfs went: {t}"
    );
    assert!(t.contains("kept 2 images"), "{t}");
    assert!(
        held.is_dir() && failed.is_file(),
        "builds go only with --builds: {t}"
    );

    let o = cmd(&f, &["cache", "prune", "--builds"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        held.join("busybox").is_file(),
        "a kept image's build went: {t}"
    );
    for gone in ["busybox/bb-feedface", "dropbear/db-feedface"] {
        assert!(!cache.path().join(gone).exists(), "{gone}: {t}");
    }
    assert!(!failed.exists(), "{t}");
    assert!(t.contains("unfinished or failed busybox build"), "{t}");

    // The VM booted from the kept image still stops cleanly.
    f.ok(&["stop", &name]);
    f.ok(&["rm", &name]);
    f.assert_clean();
}

/// A foreground `kiln run` is a VM like the others: `ps` lists it, its name is held, `kiln stop`
/// ends it gracefully (the run exits 0) and `kiln kill` without waiting for the guest, and its
/// record goes with it. Its console is the terminal, so `logs` points at `kiln run -d`.
#[test]
fn a_foreground_run_is_listed_held_and_stopped_by_name() {
    let mut f = Fleet::new();
    let name = f.name("fg");
    let port = free_port();
    // The guest console goes to stdout: kiln-init says `powering off` on a graceful stop only.
    let start = |f: &Fleet| {
        let mut c = f.kiln();
        c.args(["run", "--name", &name, "-p", &format!("{port}:80")])
            .arg(httpd_image())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        KillOnDrop(c.spawn().expect("spawn kiln run"))
    };
    let finish = |child: &mut KillOnDrop| {
        let status = child
            .wait_timeout(Duration::from_secs(30))
            .expect("kiln run ends when stopped by name");
        let mut out = String::new();
        child
            .0
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read");
        (status, out)
    };
    let mut child = start(&f);
    let row = wait_until(
        "the foreground VM running in ps",
        BOOT,
        Duration::from_millis(100),
        || {
            f.row(&name)
                .filter(|r| r["state"] == "running" && r["pid"].is_u64())
        },
    );
    assert_eq!(row["foreground"], true, "{row}");
    http_ok(port);

    let o = f.run(&[
        "run",
        "--name",
        &name,
        "-p",
        &format!("{}:80", free_port()),
        httpd_image().to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("a VM named `{name}` is already")),
        "{}",
        text(&o)
    );
    let o = f.run(&["logs", &name]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("runs in the foreground"), "{}", text(&o));

    f.ok(&["stop", &name]);
    let (status, out) = finish(&mut child);
    assert!(status.success(), "{status:?}");
    assert!(out.contains("kiln: powering off"), "graceful: {out}");
    assert!(f.row(&name).is_none(), "the record outlived the run");

    let mut child = start(&f);
    http_ok(port);
    f.ok(&["kill", &name]);
    let (_, out) = finish(&mut child);
    assert!(
        !out.contains("kiln: powering off"),
        "killed, not powered off: {out}"
    );
    assert!(f.row(&name).is_none(), "the record outlived the run");
    f.assert_clean();
}
