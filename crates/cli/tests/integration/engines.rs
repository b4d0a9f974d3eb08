//! Hand-off to other engines (issue 15): `kiln export --to libvirt` run for real under a
//! private libvirtd (its own folders, as an unprivileged user, killed on drop), the other
//! engines' documents from a running VM's settings, and the refusals.

use super::lifecycle::Fleet;
use super::*;
use kiln_test_support::{curl, free_port, wait_until, KillOnDrop};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// A libvirtd of this test's own: `qemu:///session` of uid 65534 in a temp folder (never the
/// host's daemon), killed on drop.
struct Libvirtd {
    dir: tempfile::TempDir,
    _daemon: KillOnDrop,
}

const NOBODY: &str = "65534";

impl Libvirtd {
    fn env(&self, c: &mut Command) {
        c.env_clear()
            .env("HOME", self.dir.path().join("home"))
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    }

    /// Start it, or say why not (returns None: the test prints the reason and skips).
    fn start() -> Option<Libvirtd> {
        if !is_root() {
            eprintln!("skipped: running libvirtd as another user needs root");
            return None;
        }
        for tool in ["libvirtd", "virsh", "setpriv"] {
            if kiln_vm::find_in_path(tool).is_none() {
                eprintln!("skipped: no {tool} on PATH (scripts/setup.sh installs it)");
                return None;
            }
        }
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        for d in ["home", "run"] {
            let p = dir.path().join(d);
            std::fs::create_dir(&p).expect("mkdir");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).expect("chmod");
            let st = Command::new("chown")
                .args([&format!("{NOBODY}:{NOBODY}"), &p.display().to_string()])
                .status()
                .expect("chown");
            assert!(st.success());
        }
        // QEMU's output straight to a file: no virtlogd, which libvirtd would spawn and leave
        // running after the test.
        let conf = dir.path().join("home/.config/libvirt");
        std::fs::create_dir_all(&conf).expect("mkdir");
        std::fs::write(conf.join("qemu.conf"), "stdio_handler = \"file\"\n").expect("qemu.conf");
        let st = Command::new("chown")
            .args([
                "-R",
                &format!("{NOBODY}:{NOBODY}"),
                &dir.path().join("home/.config").display().to_string(),
            ])
            .status()
            .expect("chown");
        assert!(st.success());
        let mut c = as_nobody("libvirtd");
        c.stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("libvirtd.log")).expect("log"));
        let mut l = Libvirtd {
            _daemon: KillOnDrop(Command::new("true").spawn().expect("placeholder")),
            dir,
        };
        l.env(&mut c);
        l._daemon = KillOnDrop(c.spawn().expect("libvirtd"));
        let sock = l.dir.path().join("run/libvirt/libvirt-sock");
        wait_until(
            "libvirtd's socket",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || sock.exists().then_some(()),
        );
        Some(l)
    }

    fn virsh(&self, args: &[&str]) -> Output {
        let mut c = as_nobody("virsh");
        self.env(&mut c);
        c.args(["-c", "qemu:///session"]).args(args);
        run(c)
    }
}

fn as_nobody(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
        program,
    ]);
    c
}

#[test]
fn a_libvirt_export_runs_under_libvirtd_and_serves() {
    let Some(lv) = Libvirtd::start() else {
        return;
    };
    let f = Fleet::new();
    // An image folder the unprivileged libvirtd (and its QEMU) can read.
    let img = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(img.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = img.path().join("httpd");
    f.ok(&[
        "build",
        &recipe("httpd").display().to_string(),
        "-o",
        &out.display().to_string(),
    ]);
    let port = free_port();
    let xml = img.path().join("httpd.xml");
    let o = f.ok(&[
        "export",
        "--to",
        "libvirt",
        &out.display().to_string(),
        "--name",
        "lvweb",
        "-p",
        &format!("{port}:80"),
        "-o",
        &xml.display().to_string(),
    ]);
    assert!(text(&o).contains("virsh destroy"), "{}", text(&o));
    std::fs::set_permissions(&xml, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    if kiln_vm::find_in_path("virt-xml-validate").is_some()
        && kiln_vm::find_in_path("xmllint").is_some()
    {
        let v = Command::new("virt-xml-validate")
            .arg(&xml)
            .arg("domain")
            .output()
            .expect("virt-xml-validate");
        assert!(v.status.success(), "{}", text(&v));
    }
    let x = xml.display().to_string();
    let o = lv.virsh(&["define", &x]);
    assert!(o.status.success(), "virsh define: {}", text(&o));
    let o = lv.virsh(&["start", "kiln-lvweb"]);
    assert!(o.status.success(), "virsh start: {}", text(&o));
    let url = format!("http://127.0.0.1:{port}/");
    let (_, body) = wait_until(
        "the libvirt domain's httpd",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || curl(&url, 2.0).filter(|(c, _)| *c == 200),
    );
    assert!(body.contains("Kiln"), "{body}");
    let o = lv.virsh(&["domstate", "kiln-lvweb"]);
    assert!(text(&o).contains("running"), "{}", text(&o));
    for args in [["destroy", "kiln-lvweb"], ["undefine", "kiln-lvweb"]] {
        let o = lv.virsh(&args);
        assert!(o.status.success(), "virsh {args:?}: {}", text(&o));
    }
    let o = lv.virsh(&["list", "--all", "--name"]);
    assert!(!text(&o).contains("kiln-lvweb"), "{}", text(&o));
    assert!(
        curl(&url, 1.0).is_none(),
        "the domain's port still answers after destroy"
    );
}

#[test]
fn a_running_vm_exports_its_own_settings_and_bad_requests_are_refused() {
    let mut f = Fleet::new();
    let name = f.name("exp");
    let port = free_port();
    f.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &format!("{port}:80"),
        "--memory",
        "72",
        &recipe("httpd").display().to_string(),
    ]);
    let o = f.ok(&["export", "--to", "nomad", &name]);
    let job = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(job.contains(&format!("job \"kiln-{name}\"")), "{job}");
    assert!(job.contains(&format!("static = {port}")), "{job}");
    assert!(
        job.contains(&format!("hostfwd=tcp:127.0.0.1:{port}-:80")),
        "{job}"
    );
    let o = f.ok(&["export", "--to", "kubevirt", &name]);
    assert!(text(&o).contains("guest: 72Mi"), "{}", text(&o));
    let o = f.ok(&["export", "--to", "flintlock", &name]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["microvm"]["memory_in_mb"], 72);

    // Refusals: an unknown engine, an unknown VM, a BSD guest is covered by the unit tests.
    let o = f.run(&["export", "--to", "vmware", &name]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("libvirt, nomad, kubevirt, flintlock"),
        "{}",
        text(&o)
    );
    let o = f.run(&["export", "--to", "libvirt", "no-such-vm-kiln"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no-such-vm-kiln"), "{}", text(&o));
    // -o into a folder that does not exist: refused, nothing written.
    let d = tempfile::tempdir().expect("tmp");
    let bad = d.path().join("nope/dom.xml");
    let o = f.run(&[
        "export",
        "--to",
        "libvirt",
        &name,
        "-o",
        &bad.display().to_string(),
    ]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(std::fs::read_dir(d.path()).expect("ls").next().is_none());
}
