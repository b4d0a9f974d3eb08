//! Real OCI parts for tests: Debian's `docker-registry` on a free loopback port with its storage
//! in a temp folder (stopped when dropped), and test images made with `umoci` from the host's
//! static busybox, copied into the registry with `skopeo`.

use crate::{free_port, poll_until, KillOnDrop};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A registry serving on `127.0.0.1:port`, killed when dropped.
pub struct Registry {
    /// Its port.
    pub port: u16,
    _child: KillOnDrop,
    _dir: tempfile::TempDir,
}

/// Whether the OCI tools the tests use are installed (scripts/setup.sh installs them).
pub fn tools_missing() -> Option<&'static str> {
    ["docker-registry", "skopeo", "umoci"]
        .into_iter()
        .find(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
        })
}

impl Registry {
    /// Start one and wait until `/v2/` answers.
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tmp");
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("storage").display()
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
            .spawn()
            .expect("start docker-registry");
        let r = Registry {
            port,
            _child: KillOnDrop(child),
            _dir: dir,
        };
        let url = format!("http://127.0.0.1:{port}/v2/");
        poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
            crate::curl(&url, 1.0).filter(|(c, _)| *c == 200)
        })
        .expect("docker-registry answers /v2/");
        r
    }

    /// `127.0.0.1:PORT/NAME`.
    pub fn reference(&self, name: &str) -> String {
        format!("127.0.0.1:{}/{name}", self.port)
    }

    /// Copy the OCI layout image `layout:tag` into this registry as `name` (skopeo, plain HTTP).
    pub fn push_layout(&self, layout: &Path, tag: &str, name: &str) {
        run(Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{}", self.reference(name)),
        ]));
    }
}

fn run(c: &mut Command) -> String {
    let o = c.stdin(Stdio::null()).output().expect("run");
    assert!(
        o.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// An OCI layout at `dir` holding `httpd:1`: two layers made with umoci from the host's static
/// busybox. Layer 1: busybox with `sh` and `httpd` links, /www/index.html, /www/secret.html,
/// /data/old.txt and 256 kB of noise nothing reads (/opt/unused.bin); layer 2 deletes secret.html (a whiteout) and replaces /data with a folder
/// holding only new.txt (whiteouts for its old files), both owned by www (33:33). Entrypoint `/bin/httpd -f -p 80 -h /www`, Env
/// `GREETING=hello from OCI`, WorkingDir `/www`, ExposedPorts 80/tcp.
pub fn httpd_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let image = format!("{}:1", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &image])
        .arg(&bundle));
    let root = bundle.join("rootfs");
    for d in ["bin", "www", "data", "etc"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox");
    for l in ["sh", "httpd", "cat", "ls", "env", "pwd", "wget"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(l)).expect("link");
    }
    std::fs::write(
        root.join("www/index.html"),
        "<h1>Hello from an OCI image</h1>\n",
    )
    .expect("w");
    std::fs::write(root.join("www/secret.html"), "secret\n").expect("w");
    // A file the service never reads (incompressible, so a trace's slimmer image shows it).
    std::fs::create_dir_all(root.join("opt")).expect("mkdir");
    let mut x: u32 = 1;
    let noise: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(root.join("opt/unused.bin"), noise).expect("w");
    std::fs::write(root.join("data/old.txt"), "old\n").expect("w");
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/www:/bin/sh\n",
    )
    .expect("w");
    std::fs::write(root.join("etc/group"), "root:x:0:\nwww:x:33:\n").expect("w");
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    // Layer 2: a whiteout, and /data replaced (umoci writes an opaque folder or whiteouts).
    // Unpacked as root, not --rootless: a rootless bundle maps every owner to root on repack.
    std::fs::remove_dir_all(&bundle).expect("rm bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let root = bundle.join("rootfs");
    std::fs::remove_file(root.join("www/secret.html")).expect("rm");
    std::fs::remove_dir_all(root.join("data")).expect("rm data");
    std::fs::create_dir_all(root.join("data")).expect("mkdir");
    std::fs::write(root.join("data/new.txt"), "new\n").expect("w");
    // /data is www's, as an image's data folder often is its service user's (the tests run as
    // root, so the layer records the owner).
    for p in ["data", "data/new.txt"] {
        std::os::unix::fs::chown(root.join(p), Some(33), Some(33)).expect("chown (needs root)");
    }
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/bin/httpd",
        "--config.cmd",
        "-f",
        "--config.cmd",
        "-p",
        "--config.cmd",
        "80",
        "--config.cmd",
        "-h",
        "--config.cmd",
        "/www",
        "--config.env",
        "GREETING=hello from OCI",
        "--config.env",
        "PATH=/bin",
        "--config.workingdir",
        "/www",
        "--config.exposedports",
        "80/tcp",
    ]));
    layout
}

/// Tag `hello` in an [`httpd_layout`]: the same layers, with the command `sh -c 'echo hello from
/// $GREETING in $(pwd); exit 3'` and no exposed port (a container that prints and exits 3).
pub fn tag_hello(layout: &Path) {
    run(Command::new("umoci").args([
        "config",
        "--image",
        &format!("{}:1", layout.display()),
        "--tag",
        "hello",
        "--clear=config.cmd",
        "--clear=config.exposedports",
        "--config.entrypoint",
        "/bin/sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo hello from $GREETING in $(pwd); exit 3",
    ]));
}
