//! `containerd-shim-kiln-v2` under a real containerd: Debian's containerd 1.6 started by the
//! test with its own config, root, state folder and socket in a temp folder (never the
//! host's), the built shim first on its PATH; images from a real registry on loopback
//! (`kiln_test_support::registry`), pulled with `ctr images pull --plain-http`, run with
//! `ctr run --runtime io.containerd.kiln.v2`. Needs root (mounts, containerd): skipped with
//! the reason otherwise.

use kiln_test_support::registry::{httpd_layout, tag_hello, tools_missing, Registry};
use kiln_test_support::{curl, free_port, poll_until, wait_until, workspace_root, KillOnDrop};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const RUNTIME: &str = "io.containerd.kiln.v2";

fn skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: containerd and the shim's rootfs mounts need root");
        return true;
    }
    let missing = ["containerd", "ctr"].into_iter().find(|t| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if let Some(t) = missing.or_else(tools_missing) {
        eprintln!("skipped: {t} is not installed (scripts/setup.sh installs it)");
        return true;
    }
    false
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A containerd of the test's own; its containers are killed and removed, then it is killed,
/// when dropped.
struct Containerd {
    dir: tempfile::TempDir,
    ids: std::cell::RefCell<Vec<String>>,
    child: Option<KillOnDrop>,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [debug]\n  address = \"{debug}\"\n",
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = d.join("containerd.sock").display(),
                debug = d.join("debug.sock").display(),
            ),
        )
        .expect("config");
        let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-kiln-v2"));
        let shim_dir = shim.parent().expect("shim folder");
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let init = std::env::var_os("KILN_INIT")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target/guest/kiln-init"));
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("KILN_STATE_DIR", d.join("kiln"))
            .env("XDG_RUNTIME_DIR", d.join("kiln"))
            .env("KILN_INIT", init)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("containerd.log")).expect("log"))
            .spawn()
            .expect("start containerd");
        let c = Containerd {
            dir,
            ids: Default::default(),
            child: Some(KillOnDrop(child)),
        };
        wait_until(
            "containerd's socket",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || c.ctr(&["version"]).status.success().then_some(()),
        );
        c
    }

    /// `ctr` against this containerd, ended after 5 minutes if it hangs.
    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["300", "ctr", "--address"])
            .arg(self.dir.path().join("containerd.sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?}: {}\ncontainerd's log:\n{}",
            text(&o),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn log(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Remember a container to clean up.
    fn owns(&self, id: &str) {
        self.ids.borrow_mut().push(id.into());
    }

    /// The task's status in `ctr task ls` (RUNNING, STOPPED, ...).
    fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ok(&["task", "ls"]);
        out.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.first() == Some(&id))
            .and_then(|w| w.get(2).map(|s| s.to_string()))
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in self.ids.borrow().iter() {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            let _ = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
                self.ctr(&["task", "rm", id])
                    .status
                    .success()
                    .then_some(())
                    .or_else(|| {
                        let o = self.ctr(&["task", "ls"]);
                        (!String::from_utf8_lossy(&o.stdout).contains(id.as_str())).then_some(())
                    })
            });
            let _ = self.ctr(&["container", "rm", id]);
        }
        drop(self.child.take());
    }
}

/// The registry with `httpd:1` and `hello:1` (the same image with entrypoint `/bin/sh -c "echo
/// hello from $GREETING in $(pwd); exit 3"`).
fn images(tmp: &Path) -> Registry {
    let reg = Registry::start();
    let layout = httpd_layout(tmp);
    reg.push_layout(&layout, "1", "httpd:1");
    tag_hello(&layout);
    reg.push_layout(&layout, "hello", "hello:1");
    reg
}

#[test]
fn ctr_runs_containers_as_kiln_microvms() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let reg = images(tmp.path());
    let c = Containerd::start();
    let hello = reg.reference("hello:1");
    let httpd = reg.reference("httpd:1");
    c.ok(&["images", "pull", "--plain-http", &hello]);
    c.ok(&["images", "pull", "--plain-http", &httpd]);

    // The image's entrypoint: its output, and its exit code as ctr's.
    c.owns("t1");
    let started = std::time::Instant::now();
    let o = c.ctr(&["run", "--rm", "--runtime", RUNTIME, &hello, "t1"]);
    eprintln!(
        "ctr run --rm hello:1 t1: {:?} in {:.2} s\n{}",
        o.status.code(),
        started.elapsed().as_secs_f64(),
        text(&o)
    );
    assert_eq!(o.status.code(), Some(3), "{}\n{}", text(&o), c.log());
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        out.trim_end(),
        "hello from hello from OCI in /www",
        "only the service's output: {out}"
    );

    // Args given to ctr replace the image's; exit 0.
    c.owns("t2");
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        &hello,
        "t2",
        "/bin/sh",
        "-c",
        "echo args from ctr; exit 0",
    ]);
    eprintln!(
        "ctr run --rm hello:1 t2 sh -c ...: {:?}\n{}",
        o.status.code(),
        text(&o)
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o), c.log());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim_end(),
        "args from ctr"
    );

    // A long-running httpd, detached, its port published by annotation; killed, it stops.
    c.owns("web");
    let port = free_port();
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &format!("org.kiln.ports={port}:80"),
        &httpd,
        "web",
    ]);
    let url = format!("http://127.0.0.1:{port}/");
    let (_, body) = wait_until(
        "the container's httpd",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || curl(&url, 2.0).filter(|(code, _)| *code == 200),
    );
    assert!(body.contains("Hello from an OCI image"), "{body}");
    assert_eq!(c.task_status("web").as_deref(), Some("RUNNING"));
    let pids = c.ok(&["task", "ps", "web"]);
    eprintln!("ctr task ps web:\n{pids}");
    c.ok(&["task", "kill", "web"]);
    wait_until(
        "ctr task ls to show web STOPPED",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || (c.task_status("web").as_deref() == Some("STOPPED")).then_some(()),
    );
    eprintln!("ctr task ls:\n{}", c.ok(&["task", "ls"]));
    assert!(curl(&url, 1.0).is_none(), "the VM is gone");
    c.ok(&["task", "rm", "web"]);
    c.ok(&["container", "rm", "web"]);
    // Nothing of Kiln's is left: the VMs' records went with them.
    let vms = std::fs::read_dir(c.dir().join("kiln/vms"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(vms, 0, "no VM records left");
}
