//! Faults at every step (issue 16): each test kills or breaks one step of a build or of a VM's
//! life — `kill -9` of `kiln build`, of `kiln run -d`, of a foreground `kiln run`, of the
//! supervisor, of QEMU, of `kiln stop`; a full disk; a read-only state folder — and then checks
//! that nothing is lost:
//! - no half image: an `-o OUT` folder is the old image or the new one, whole, and the next
//!   build leaves no `.OUT.tmp-*` beside it;
//! - no orphan: no QEMU (`qemu_pids_with`), supervisor or build hook outlives what it served;
//! - `kiln ps --json` tells the truth: a dead VM is `crashed`/`exited`, never a ghost `running`;
//! - the next command works: a new `kiln run` of the same name (and port) succeeds.
//!
//! Each kill happens at a known point, reached by waiting for a marker the step itself writes
//! (a build hook's file, a QEMU wrapper's file, a file the guest writes on a share, a signal
//! pending on a frozen supervisor), never by sleeping. RELIABILITY.md has the matrix.

use super::lifecycle::{http_ok, Fleet};
use super::*;
use kiln_test_support::{free_port, qemu_pids_with, wait_until, KillOnDrop};
use serde_json::Value;
use sha2::Digest;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

/// A boot under TCG on a loaded two-core machine.
const BOOT: Duration = Duration::from_secs(120);
/// How often a marker is polled.
const POLL: Duration = Duration::from_millis(5);

// ---- processes -------------------------------------------------------------------------------

fn signal(pid: u32, sig: i32) {
    assert!(pid > 1, "refusing to signal pid {pid}");
    // SAFETY: kill(2) on a process this test started (or one of the VMs it started).
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

/// Live processes (not this one) whose command line contains every one of `needles`.
fn pids_with(needles: &[&str]) -> Vec<u32> {
    let me = std::process::id();
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if pid != me && needles.iter().all(|n| cmd.contains(n)) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// No QEMU of VM `name` and no supervisor of it are left (waits for them to finish dying).
fn assert_no_orphans(name: &str) {
    wait_until(
        &format!("no QEMU and no supervisor of {name}"),
        Duration::from_secs(20),
        Duration::from_millis(20),
        || {
            (qemu_pids_with(&format!("kiln-{name} ")).is_empty()
                && pids_with(&[&format!("__supervise {name} ")]).is_empty())
            .then_some(())
        },
    );
}

/// No process whose command line holds `needle` is left (`what`: for the message); waits for
/// the ones dying (a sandbox's processes go with its namespace, a moment after bwrap).
fn assert_none_with(needle: &str, what: &str) {
    let left =
        kiln_test_support::poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
            pids_with(&[needle]).is_empty().then_some(())
        });
    if left.is_none() {
        let cmds: Vec<String> = pids_with(&[needle])
            .iter()
            .map(|p| {
                let c = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                format!("{p}: {}", String::from_utf8_lossy(&c).replace('\0', " "))
            })
            .collect();
        panic!("{what} outlived its build: {cmds:#?}");
    }
}

/// Start `c` with stdin, stdout and stderr closed; killed when dropped.
fn spawn_quiet(mut c: Command) -> KillOnDrop {
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    KillOnDrop(c.spawn().expect("spawn"))
}

/// kill -9 and reap.
fn kill9(child: &mut KillOnDrop) {
    child.signal(libc::SIGKILL);
    child
        .wait_timeout(Duration::from_secs(10))
        .expect("the killed process is reaped");
}

fn wait_file(what: &str, path: &Path, timeout: Duration) {
    wait_until(what, timeout, POLL, || path.exists().then_some(()));
}

/// Whether signal `sig` is pending on process `pid` (sent and not yet taken: it is stopped).
fn pending(pid: u32, sig: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().any(|l| {
        l.strip_prefix("ShdPnd:")
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & (1 << (sig - 1)) != 0)
    })
}

/// A Command that runs `program args… kiln` with the environment [`kiln`] gives kiln.
fn under(program: &OsStr, args: &[&OsStr], state: &Path) -> Command {
    let k = kiln(state);
    let mut c = Command::new(program);
    for (key, val) in k.get_envs() {
        match val {
            Some(v) => c.env(key, v),
            None => c.env_remove(key),
        };
    }
    if let Some(d) = k.get_current_dir() {
        c.current_dir(d);
    }
    c.args(args).arg(k.get_program());
    c
}

// ---- images and caches -----------------------------------------------------------------------

/// The image folder `dir` is whole: the manifest reads, the root image has the manifest's size
/// and SHA-256, the kernel the manifest's size. Returns the manifest's fingerprint.
fn whole_image(dir: &Path) -> String {
    assert!(
        dir.join("manifest.json").is_file(),
        "{} is not an image folder (gone, or half of one): {:?}",
        dir.display(),
        std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    let m = manifest(dir);
    let root = dir.join(m["initramfs"]["file"].as_str().expect("root image"));
    let data = std::fs::read(&root).expect("read the root image");
    assert_eq!(Some(data.len() as u64), m["initramfs"]["size"].as_u64());
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&data)),
        m["initramfs"]["sha256"].as_str().expect("sha256")
    );
    let kernel = dir.join(m["kernel"]["file"].as_str().expect("kernel"));
    let len = std::fs::metadata(&kernel).expect("the kernel").len();
    assert_eq!(Some(len), m["kernel"]["file_size"].as_u64());
    m["fingerprint"].as_str().expect("fingerprint").to_string()
}

/// The work folders builds of `out` left beside it (`.OUT.tmp-*`).
fn work_dirs(out: &Path) -> Vec<PathBuf> {
    let prefix = format!(".{}.tmp-", out.file_name().expect("name").to_string_lossy());
    std::fs::read_dir(out.parent().expect("parent"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Wait for a build's work folder in `parent` whose name starts with `prefix` to hold `rel`.
fn wait_in_work_dir(parent: &Path, prefix: &str, rel: &str) {
    wait_until(
        &format!("{prefix}*/{rel} in {}", parent.display()),
        Duration::from_secs(120),
        POLL,
        || {
            std::fs::read_dir(parent)
                .ok()?
                .flatten()
                .find(|e| {
                    e.file_name().to_string_lossy().starts_with(prefix)
                        && e.path().join(rel).exists()
                })
                .map(drop)
        },
    );
}

/// The shared download cache, as kiln finds it.
fn shared_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_CACHE_DIR") {
        return p.into();
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("kiln");
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/kiln")
}

/// Make `dir` a cache of its own whose `parts` are the shared cache's (symlinks): the kernel
/// and the downloads are not made again, and what a build writes besides lands in `dir`.
fn linked_cache(dir: &Path, parts: &[&str]) {
    // The shared cache holds the tiny kernel and busybox once recipes/httpd is built.
    httpd_image();
    let shared = shared_cache();
    for p in parts {
        let src = shared.join(p);
        if src.exists() {
            std::os::unix::fs::symlink(&src, dir.join(p)).expect("symlink");
        }
    }
}

const LINKED: &[&str] = &[
    "kernels",
    "src",
    "debs",
    "apt",
    "sysroots",
    "unpacked",
    "pvh",
    "accel-probe.json",
];

/// recipes/httpd with a postinst hook that writes `hook-waiting` into the staging tree, then
/// waits until the recipe folder holds `go`: a build stopped at a known point.
fn gated_recipe() -> tempfile::TempDir {
    let r = scratch_recipe("httpd");
    std::fs::create_dir_all(r.path().join("postinst")).expect("mkdir");
    std::fs::write(
        r.path().join("postinst/10-gate.sh"),
        "touch ./hook-waiting\n\
         while [ ! -e \"$KILN_RECIPE/go\" ]; do sleep 0.05; done\n\
         rm -f ./hook-waiting\n",
    )
    .expect("hook");
    r
}

fn set_page(recipe: &Path, text: &str) {
    std::fs::write(recipe.join("files/var/www/index.html"), text).expect("page");
}

/// recipes/httpd whose etc/rc writes `booted` on the share at /mnt/gate, then waits for `go`
/// there before it starts httpd: a guest held between boot and ready. Built once.
fn share_gated_image() -> &'static Path {
    static IMAGE: std::sync::OnceLock<(tempfile::TempDir, tempfile::TempDir, PathBuf)> =
        std::sync::OnceLock::new();
    let (_, _, img) = IMAGE.get_or_init(|| {
        let r = scratch_recipe("httpd");
        std::fs::write(
            r.path().join("etc/rc"),
            "#!/bin/sh\n. /etc/include/basicrc\n\
             echo booted > /mnt/gate/booted\n\
             while [ ! -e /mnt/gate/go ]; do sleep 0.1; done\n\
             exec httpd -f -p 80 -h /var/www\n",
        )
        .expect("rc");
        // build_ok builds into `img` in the folder it returns.
        let (out, _) = build_ok(r.path());
        let img = out.path().join("img");
        (r, out, img)
    });
    img
}

// ---- mounts (root) ---------------------------------------------------------------------------

/// Root, or a printed reason why the test is skipped.
fn is_root(test: &str) -> bool {
    let root = super::is_root();
    if !root {
        eprintln!("skipped {test}: it mounts file systems (a small tmpfs, a read-only bind), which needs root");
    }
    root
}

/// A tmpfs mounted on a folder for one test; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `size` on `at`, or None (with the reason printed) if it cannot be.
    fn mount(at: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        let o = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("mount");
        if !o.status.success() {
            eprintln!(
                "skipped {test}: cannot mount a tmpfs on {}: {}",
                at.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }

    fn remount(&self, opts: &str) {
        let o = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .output()
            .expect("mount");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// A folder made read-only for whoever opens it from now on: bound on itself, the binding
/// remounted read-only (files already open for writing, through the mount below, stay so).
/// Unmounting the binding makes it writable again.
struct ReadOnlyBind(Option<PathBuf>);

impl ReadOnlyBind {
    fn new(at: &Path) -> ReadOnlyBind {
        let mount = |args: &[&OsStr]| {
            let o = Command::new("mount").args(args).output().expect("mount");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        mount(&[OsStr::new("--bind"), at.as_os_str(), at.as_os_str()]);
        let bound = ReadOnlyBind(Some(at.to_path_buf()));
        mount(&[
            OsStr::new("-o"),
            OsStr::new("remount,bind,ro"),
            at.as_os_str(),
        ]);
        bound
    }

    fn release(&mut self) {
        if let Some(p) = self.0.take() {
            let o = Command::new("umount").arg(&p).output().expect("umount");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the filesystem of `dir` with a file; returns it (remove it to give the space back).
fn fill(dir: &Path) -> PathBuf {
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).expect("filler");
    for size in [1 << 16, 4096, 1] {
        let chunk = vec![0u8; size];
        while f.write_all(&chunk).is_ok() {}
    }
    p
}

fn vm_dir(f: &Fleet, name: &str) -> PathBuf {
    f.state.path().join("vms").join(name)
}

/// The files in VM `name`'s folder.
fn vm_files(f: &Fleet, name: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(vm_dir(f, name))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn row_state(r: &Value) -> &str {
    r["state"].as_str().unwrap_or("?")
}

/// `kiln run -d --name NAME -p PORT:80 IMAGE` (with `extra` flags), which must succeed.
fn run_d(f: &Fleet, name: &str, port: u16, image: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = f.kiln();
    c.args(["run", "-d", "--name", name, "-p", &format!("{port}:80")])
        .args(extra)
        .arg(image);
    run_ok(c)
}

/// The next command works: VM `name` runs again on `port` and serves; then it is removed and
/// nothing of it is left.
fn next_run_works(f: &Fleet, name: &str, port: u16) {
    run_d(f, name, port, httpd_image(), &[]);
    http_ok(port);
    f.ok(&["rm", "-f", name]);
    f.assert_clean();
}

// ---- build -----------------------------------------------------------------------------------

/// kill -9 of `kiln build` while its postinst hook runs: without an old image, no image; with
/// one, the old image, whole; the hook dies with the build; the next build sweeps the work
/// folder and swaps the new image in.
#[test]
fn build_killed_in_its_hook_keeps_the_old_image_and_the_next_build_sweeps() {
    httpd_image();
    let r = gated_recipe();
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("img");
    let build = || {
        let mut c = kiln(d.path());
        c.arg("build").arg(r.path()).arg("-o").arg(&out);
        c
    };
    let kill_in_hook = || {
        let mut b = spawn_quiet(build());
        wait_in_work_dir(d.path(), ".img.tmp-", "root/hook-waiting");
        kill9(&mut b);
        assert_none_with(r.path().to_str().expect("utf8"), "the build's hook");
    };

    // A first build, killed: no image at all rather than part of one.
    kill_in_hook();
    assert!(!out.exists(), "a killed first build left {}", out.display());
    assert_eq!(work_dirs(&out).len(), 1, "the dead build's work folder");

    // The old image (the gate open); the dead build's folder is swept.
    std::fs::write(r.path().join("go"), "").expect("go");
    run_ok(build());
    let old = whole_image(&out);
    assert!(work_dirs(&out).is_empty(), "{:?}", work_dirs(&out));

    // A new build of a changed recipe, killed in its hook: the old image, whole.
    set_page(r.path(), "<p>new page</p>\n");
    std::fs::remove_file(r.path().join("go")).expect("rm go");
    kill_in_hook();
    assert_eq!(whole_image(&out), old, "the old image changed");
    assert_eq!(work_dirs(&out).len(), 1);

    // The next build works, sweeps, and swaps the new image in.
    std::fs::write(r.path().join("go"), "").expect("go");
    let o = run_ok(build());
    let new = whole_image(&out);
    assert_ne!(new, old, "{}", text(&o));
    assert!(work_dirs(&out).is_empty(), "{:?}", work_dirs(&out));
}

/// kill -9 of `kiln build` inside the swap into place: the build is held (strace delays the
/// first rename that touches OUT) and killed there. OUT must still be a whole image.
#[test]
fn build_killed_inside_the_swap_into_place_leaves_a_whole_image() {
    let Some(strace) = kiln_vm::find_in_path("strace") else {
        eprintln!("skipped build_killed_inside_the_swap_into_place: no strace on PATH");
        return;
    };
    httpd_image();
    let r = scratch_recipe("httpd");
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("img");
    let mut c = kiln(d.path());
    c.arg("build").arg(r.path()).arg("-o").arg(&out);
    run_ok(c);
    let old = whole_image(&out);

    set_page(r.path(), "<p>swapped page</p>\n");
    let log = d.path().join("strace.log");
    let renames = "rename,renameat,renameat2";
    let trace = format!("trace={renames}");
    let inject = format!("inject={renames}:delay_exit=10000000:when=1");
    let mut c = under(
        strace.as_os_str(),
        &[
            OsStr::new("-f"),
            OsStr::new("-qq"),
            OsStr::new("-o"),
            log.as_os_str(),
            OsStr::new("-P"),
            out.as_os_str(),
            OsStr::new("-e"),
            OsStr::new(&trace),
            OsStr::new("-e"),
            OsStr::new(&inject),
            OsStr::new("--"),
        ],
        d.path(),
    );
    c.arg("build").arg(r.path()).arg("-o").arg(&out);
    let mut st = spawn_quiet(c);
    wait_until(
        "the swap's first rename, held",
        Duration::from_secs(120),
        POLL,
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("DELAYED"))
        },
    );
    // kiln is strace's child.
    let sp = st.0.id();
    let children = std::fs::read_to_string(format!("/proc/{sp}/task/{sp}/children"))
        .expect("strace's children");
    let kiln_pid: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("kiln under strace");
    signal(kiln_pid, libc::SIGKILL);
    st.wait_timeout(Duration::from_secs(20))
        .expect("strace ends with its tracee");
    let held = std::fs::read_to_string(&log).unwrap_or_default();
    let got = whole_image(&out);
    eprintln!(
        "build killed in the swap ({}): OUT is the {} image",
        held.lines()
            .find(|l| l.contains("DELAYED"))
            .unwrap_or("")
            .trim(),
        if got == old { "old" } else { "new" }
    );

    let mut c = kiln(d.path());
    c.arg("build").arg(r.path()).arg("-o").arg(&out);
    run_ok(c);
    whole_image(&out);
    assert!(work_dirs(&out).is_empty(), "{:?}", work_dirs(&out));
}

// ---- kiln run -d -----------------------------------------------------------------------------

/// kill -9 of `kiln run -d` while it builds its recipe (before anything is admitted): no record,
/// no image in the cache (only the dead build's work folder), no QEMU, no hook; the same run
/// again works and sweeps the work folder.
#[test]
fn run_d_killed_while_building_its_recipe_leaves_no_record_and_no_image() {
    let r = gated_recipe();
    let cache = tempfile::tempdir().expect("cache");
    linked_cache(cache.path(), LINKED);
    let images = cache.path().join("images");
    let mut f = Fleet::new();
    let name = f.name("fbuild");
    let port = free_port();
    let start = || {
        let mut c = f.kiln();
        c.env("KILN_CACHE_DIR", cache.path())
            .args(["run", "-d", "--name", &name, "-p", &format!("{port}:80")])
            .arg(r.path());
        c
    };
    let mut k = spawn_quiet(start());
    wait_in_work_dir(&images, ".httpd-", "root/hook-waiting");
    kill9(&mut k);
    assert!(f.row(&name).is_none(), "{:?}", f.ps());
    assert!(!vm_dir(&f, &name).exists());
    assert_no_orphans(&name);
    assert_none_with(r.path().to_str().expect("utf8"), "the build's hook");
    let listing = |hidden: bool| -> Vec<String> {
        std::fs::read_dir(&images)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.') == hidden)
            .collect()
    };
    assert!(listing(false).is_empty(), "an image: {:?}", listing(false));
    assert_eq!(listing(true).len(), 1, "the dead build's work folder");

    std::fs::write(r.path().join("go"), "").expect("go");
    run_ok(start());
    http_ok(port);
    assert!(listing(true).is_empty(), "not swept: {:?}", listing(true));
    let built = listing(false);
    assert_eq!(built.len(), 1, "{built:?}");
    whole_image(&images.join(&built[0]));
    f.ok(&["rm", "-f", &name]);
    f.assert_clean();
}

/// kill -9 of `kiln run -d` after it released the supervisor, before QEMU started (a QEMU
/// wrapper holds the start): the VM is not lost — its supervisor brings it up — and `ps` says
/// `starting`, then `running`, as it is.
#[test]
fn run_d_killed_before_qemu_starts_leaves_a_vm_its_supervisor_brings_up() {
    let mut f = Fleet::new();
    let name = f.name("fpre");
    let port = free_port();
    let gate = tempfile::tempdir().expect("gate");
    let wrapper = gate.path().join("qemu-system-x86_64");
    let real = kiln_vm::check_qemu().expect("QEMU");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" kiln-{name} \"*)\n  : > '{g}/qemu-waiting'\n  while [ ! -e '{g}/go' ]; do sleep 0.02; done ;;\nesac\nexec '{q}' \"$@\"\n",
            g = gate.path().display(),
            q = real.display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut c = f.kiln();
    c.env("KILN_QEMU", &wrapper)
        .args(["run", "-d", "--accel", "tcg", "--name", &name])
        .args(["-p", &format!("{port}:80")])
        .arg(httpd_image());
    let mut k = spawn_quiet(c);
    wait_file(
        "the supervisor starting QEMU",
        &gate.path().join("qemu-waiting"),
        BOOT,
    );
    kill9(&mut k);
    let r = f.row(&name).expect("the VM is listed");
    assert_eq!(row_state(&r), "starting", "{r}");
    assert!(r["pid"].is_null(), "no QEMU yet: {r}");
    let sup = r["supervisor_pid"].as_u64().expect("supervisor") as u32;
    assert!(alive(sup), "its supervisor lives on");

    std::fs::write(gate.path().join("go"), "").expect("go");
    let r = wait_until("running", BOOT, Duration::from_millis(50), || {
        f.row(&name).filter(|r| row_state(r) == "running")
    });
    http_ok(port);
    let pids = qemu_pids_with(&format!("kiln-{name} "));
    assert_eq!(pids, vec![r["pid"].as_u64().expect("pid") as u32]);
    let o = f.ok(&["stop", &name]);
    assert!(text(&o).contains("Graceful"), "{}", text(&o));
    assert_no_orphans(&name);
    assert_eq!(row_state(&f.row(&name).expect("row")), "exited");
    next_run_works(&f, &name, port);
}

/// kill -9 of `kiln run -d` after the guest is ready (the starter frozen before it saw
/// readiness, then killed): the VM runs on under its supervisor, listed as `running`.
#[test]
fn run_d_killed_after_ready_leaves_the_vm_running_and_listed() {
    let mut f = Fleet::new();
    let name = f.name("fready");
    let port = free_port();
    let mut c = f.kiln();
    c.args(["run", "-d", "--name", &name, "-p", &format!("{port}:80")])
        .arg(httpd_image());
    let mut k = spawn_quiet(c);
    // The supervisor writes its pid file once released: the starter is only waiting now.
    wait_file(
        "the supervisor released",
        &vm_dir(&f, &name).join("supervisor.pid"),
        BOOT,
    );
    k.signal(libc::SIGSTOP);
    let r = wait_until("ready", BOOT, Duration::from_millis(50), || {
        f.row(&name).filter(|r| row_state(r) == "running")
    });
    assert!(k.0.try_wait().expect("wait").is_none(), "the starter lives");
    kill9(&mut k);
    let pid = r["pid"].as_u64().expect("pid") as u32;
    assert!(alive(pid));
    http_ok(port);
    assert_eq!(row_state(&f.row(&name).expect("row")), "running");
    // The name is held by the live VM: a second start is refused, not a ghost's doing.
    let mut c = f.kiln();
    c.args([
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &format!("{}:80", free_port()),
    ])
    .arg(httpd_image());
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    f.ok(&["stop", &name]);
    assert_no_orphans(&name);
    next_run_works(&f, &name, port);
}

// ---- foreground kiln run ---------------------------------------------------------------------

/// kill -9 of a foreground `kiln run` during boot (the guest booted, not ready): QEMU dies with
/// it, the record left says `crashed`, and `kiln rm` removes record and sockets.
#[test]
fn foreground_run_killed_during_boot_is_crashed_and_rm_cleans_it() {
    let image = share_gated_image();
    let mut f = Fleet::new();
    let name = f.name("ffgboot");
    let port = free_port();
    let share = tempfile::tempdir().expect("share");
    let mut c = f.kiln();
    c.args(["run", "--name", &name, "-p", &format!("{port}:80")])
        .arg("--share")
        .arg(format!("{}:/mnt/gate", share.path().display()))
        .arg(image);
    let mut k = spawn_quiet(c);
    wait_file("the guest booted", &share.path().join("booted"), BOOT);
    let r = f.row(&name).expect("listed");
    assert_eq!(row_state(&r), "starting", "{r}");
    assert_eq!(r["foreground"], true);
    let qemu = r["pid"].as_u64().expect("QEMU pid") as u32;
    kill9(&mut k);
    wait_until(
        "QEMU dies with its kiln run",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || (!alive(qemu)).then_some(()),
    );
    let r = f.row(&name).expect("the record stays");
    assert_eq!(row_state(&r), "crashed", "{r}");
    assert!(r["pid"].is_null(), "{r}");
    let left = vm_files(&f, &name);
    assert!(
        left.contains(&"record.json".to_string()) && left.iter().any(|f| f.ends_with(".sock")),
        "{left:?}"
    );
    f.ok(&["rm", &name]);
    assert!(
        !vm_dir(&f, &name).exists(),
        "rm left {:?}",
        vm_files(&f, &name)
    );
    assert!(f.ps().is_empty());
    assert_no_orphans(&name);
    next_run_works(&f, &name, port);
}

/// kill -9 of a foreground `kiln run` after ready: QEMU dies with it, `ps` says `crashed`,
/// and the dead run's record and sockets do not block its name or port.
#[test]
fn foreground_run_killed_after_ready_does_not_block_its_name() {
    let mut f = Fleet::new();
    let name = f.name("ffgready");
    let port = free_port();
    let mut c = f.kiln();
    c.args(["run", "--name", &name, "-p", &format!("{port}:80")])
        .arg(httpd_image());
    let mut k = spawn_quiet(c);
    let r = wait_until("running", BOOT, Duration::from_millis(50), || {
        f.row(&name).filter(|r| row_state(r) == "running")
    });
    http_ok(port);
    let qemu = r["pid"].as_u64().expect("pid") as u32;
    kill9(&mut k);
    wait_until(
        "QEMU dies with its kiln run",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || (!alive(qemu)).then_some(()),
    );
    let r = f.row(&name).expect("the record stays");
    assert_eq!(row_state(&r), "crashed", "{r}");
    let left = vm_files(&f, &name);
    assert!(left.iter().any(|f| f.ends_with(".sock")), "{left:?}");
    next_run_works(&f, &name, port);
}

// ---- supervisor, QEMU, stop ------------------------------------------------------------------

/// kill -9 of the supervisor (`kiln __supervise`), with `--restart always`: QEMU dies with it,
/// nothing restarts it behind `ps`'s back, and `ps` says `crashed`.
#[test]
fn supervisor_killed_takes_qemu_with_it_and_is_crashed() {
    let mut f = Fleet::new();
    let name = f.name("fsup");
    let port = free_port();
    run_d(&f, &name, port, httpd_image(), &["--restart", "always"]);
    let r = f.row(&name).expect("row");
    let (sup, qemu) = (
        r["supervisor_pid"].as_u64().expect("sup") as u32,
        r["pid"].as_u64().expect("pid") as u32,
    );
    signal(sup, libc::SIGKILL);
    wait_until(
        "QEMU dies with its supervisor",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || (!alive(qemu)).then_some(()),
    );
    assert_no_orphans(&name);
    let r = f.row(&name).expect("row");
    assert_eq!(row_state(&r), "crashed", "{r}");
    assert_eq!(r["restarts"], 0, "{r}");
    assert!(r["pid"].is_null() && r["supervisor_pid"].is_null(), "{r}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("supervisor and QEMU are gone")),
        "{r}"
    );
    next_run_works(&f, &name, port);
}

/// QEMU killed (SIGKILL) without a restart policy: `crashed (signal 9)`, the supervisor ends
/// and removes the sockets, and the name and port are free again.
#[test]
fn qemu_killed_without_restart_policy_is_crashed() {
    let mut f = Fleet::new();
    let name = f.name("fqemu");
    let port = free_port();
    run_d(&f, &name, port, httpd_image(), &[]);
    let qemu = f.row(&name).expect("row")["pid"].as_u64().expect("pid") as u32;
    signal(qemu, libc::SIGKILL);
    let r = wait_until(
        "crashed",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || f.row(&name).filter(|r| row_state(r) == "crashed"),
    );
    assert_eq!(r["signal"], 9, "{r}");
    assert_no_orphans(&name);
    let left = vm_files(&f, &name);
    assert!(!left.iter().any(|f| f.ends_with(".sock")), "{left:?}");
    next_run_works(&f, &name, port);
}

/// QEMU killed with `--restart on-failure`: restarted once, serving, one QEMU; a stop ends it.
#[test]
fn qemu_killed_with_restart_policy_comes_back_once() {
    let mut f = Fleet::new();
    let name = f.name("frestart");
    let port = free_port();
    run_d(&f, &name, port, httpd_image(), &["--restart", "on-failure"]);
    let first = f.row(&name).expect("row")["pid"].as_u64().expect("pid") as u32;
    signal(first, libc::SIGKILL);
    let r = wait_until("restarted", BOOT, Duration::from_millis(50), || {
        f.row(&name)
            .filter(|r| row_state(r) == "running" && r["restarts"] == 1 && r["pid"] != first)
    });
    http_ok(port);
    assert_eq!(
        qemu_pids_with(&format!("kiln-{name} ")),
        vec![r["pid"].as_u64().expect("pid") as u32]
    );
    let o = f.ok(&["stop", &name]);
    assert!(text(&o).contains("Graceful"), "{}", text(&o));
    assert_no_orphans(&name);
    let r = f.row(&name).expect("row");
    assert_eq!(row_state(&r), "exited", "{r}");
    f.ok(&["rm", &name]);
    f.assert_clean();
}

/// kill -9 of `kiln stop` midway: its request written and its SIGTERM sent (pending on the
/// supervisor, frozen for the purpose), then killed. The supervisor finishes the stop alone.
#[test]
fn stop_killed_midway_is_finished_by_the_supervisor() {
    let mut f = Fleet::new();
    let name = f.name("fstop");
    let port = free_port();
    run_d(&f, &name, port, httpd_image(), &[]);
    let sup = f.row(&name).expect("row")["supervisor_pid"]
        .as_u64()
        .expect("sup") as u32;
    signal(sup, libc::SIGSTOP);
    let mut c = f.kiln();
    c.args(["stop", &name, "--timeout", "20"]);
    let mut stop = spawn_quiet(c);
    wait_until(
        "the stop request written and SIGTERM pending",
        Duration::from_secs(20),
        POLL,
        || {
            (vm_dir(&f, &name).join("stop-request").exists() && pending(sup, libc::SIGTERM))
                .then_some(())
        },
    );
    kill9(&mut stop);
    // While it is frozen the VM is still what ps says: running.
    assert_eq!(row_state(&f.row(&name).expect("row")), "running");
    signal(sup, libc::SIGCONT);
    let r = wait_until(
        "exited",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || f.row(&name).filter(|r| row_state(r) == "exited"),
    );
    assert_eq!(r["status"], "exited (stopped: Graceful)", "{r}");
    assert_no_orphans(&name);
    assert!(
        !vm_dir(&f, &name).join("stop-request").exists(),
        "{:?}",
        vm_files(&f, &name)
    );
    next_run_works(&f, &name, port);
}

// ---- disk full -------------------------------------------------------------------------------

/// The cache on a full disk (a 2 MiB tmpfs, then one filled up): the build fails with a clear
/// error and leaves no image, no work folder and no half-unpacked package; with an old image,
/// it stays whole; builds work once there is space again.
#[test]
fn full_cache_disk_fails_the_build_cleanly_and_builds_work_with_space_back() {
    const TEST: &str = "full_cache_disk";
    if !is_root(TEST) {
        return;
    }
    httpd_image();
    let r = scratch_recipe("httpd");
    let d = tempfile::tempdir().expect("tmp");
    let cache = d.path().join("cache");
    std::fs::create_dir(&cache).expect("mkdir");
    let Some(mnt) = Tmpfs::mount(&cache, "2m", TEST) else {
        return;
    };
    // The kernel and the .debs are shared; the unpacked busybox, the image and the build's
    // work folder are written to the small disk.
    linked_cache(&cache, &["kernels", "src", "debs", "apt", "sysroots"]);
    let out = cache.join("img");
    let build = || {
        let mut c = kiln(d.path());
        c.env("KILN_CACHE_DIR", &cache)
            .arg("build")
            .arg(r.path())
            .arg("-o")
            .arg(&out);
        run(c)
    };
    let unpack_debris = || -> Vec<String> {
        std::fs::read_dir(cache.join("unpacked"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.path().join(".kiln-unpacked").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };

    let o = build();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("No space left on device"), "{}", text(&o));
    eprintln!("full cache, first build: {}", text(&o).trim());
    assert!(!out.exists());
    assert!(work_dirs(&out).is_empty(), "{:?}", work_dirs(&out));
    assert!(unpack_debris().is_empty(), "{:?}", unpack_debris());

    mnt.remount("size=64m");
    let o = build();
    assert!(o.status.success(), "{}", text(&o));
    let old = whole_image(&out);

    set_page(r.path(), "<p>no room for this page</p>\n");
    let filler = fill(&cache);
    let o = build();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("No space left on device"), "{}", text(&o));
    eprintln!("full cache, second build: {}", text(&o).trim());
    assert_eq!(whole_image(&out), old, "the old image changed");
    assert!(work_dirs(&out).is_empty(), "{:?}", work_dirs(&out));
    assert!(unpack_debris().is_empty(), "{:?}", unpack_debris());

    std::fs::remove_file(filler).expect("rm filler");
    let o = build();
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(whole_image(&out), old);
    assert!(work_dirs(&out).is_empty(), "{:?}", work_dirs(&out));
    drop(mnt);
}

/// The state folder on a full disk: `kiln run -d` fails with a clear error, records nothing,
/// starts nothing; it works once there is space. A disk that fills while a VM runs: `kiln stop`
/// is refused (it cannot leave its request), the VM runs on as `ps` says, and stops once there
/// is space.
#[test]
fn full_state_disk_refuses_run_d_cleanly_and_runs_work_with_space_back() {
    const TEST: &str = "full_state_disk";
    if !is_root(TEST) {
        return;
    }
    let mut f = Fleet::new();
    let Some(mnt) = Tmpfs::mount(f.state.path(), "2m", TEST) else {
        return;
    };
    let name = f.name("ffull");
    let port = free_port();
    let filler = fill(f.state.path());
    let mut c = f.kiln();
    c.args(["run", "-d", "--name", &name, "-p", &format!("{port}:80")])
        .arg(httpd_image());
    let o = run(c);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("No space left on device"), "{}", text(&o));
    eprintln!("full state disk, run -d: {}", text(&o).trim());
    assert!(f.ps().is_empty());
    assert_no_orphans(&name);
    assert!(
        !vm_dir(&f, &name).exists(),
        "a failed start left a VM folder: {:?}",
        vm_files(&f, &name)
    );

    std::fs::remove_file(&filler).expect("rm filler");
    run_d(&f, &name, port, httpd_image(), &[]);
    http_ok(port);

    // The disk fills while the VM runs: a stop cannot leave its request, so it stops the VM
    // by signal and says so; nothing of it runs on, ps does not call it running; with space
    // back the name runs again.
    let filler = fill(f.state.path());
    let o = f.ok(&["stop", &name]);
    eprintln!("full state disk, stop: {}", text(&o).trim());
    assert!(
        text(&o).contains("by a signal to its keeper"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("No space left on device"), "{}", text(&o));
    assert_no_orphans(&name);
    assert_ne!(row_state(&f.row(&name).expect("row")), "running");
    std::fs::remove_file(&filler).expect("rm filler");
    next_run_works(&f, &name, port);
    drop(mnt);
}

// ---- read-only state -------------------------------------------------------------------------

/// The state folder read-only (bound read-only on itself; and chmod 0555 for a user who is not
/// root): starting is refused with a clear error, a stop is done by signal and says so, `ps`
/// tells the truth — even of
/// a QEMU that dies meanwhile, whose supervisor cannot record it — and all works once writable.
#[test]
fn read_only_state_refuses_changes_clearly_and_ps_tells_the_truth() {
    const TEST: &str = "read_only_state";
    if !is_root(TEST) {
        return;
    }
    let mut f = Fleet::new();
    let a = f.name("frofs");
    let b = f.name("frofsb");
    let port = free_port();
    run_d(&f, &a, port, httpd_image(), &[]);
    let mut ro = ReadOnlyBind::new(f.state.path());
    assert_eq!(row_state(&f.row(&a).expect("row")), "running");

    let mut c = f.kiln();
    c.args([
        "run",
        "-d",
        "--name",
        &b,
        "-p",
        &format!("{}:80", free_port()),
    ])
    .arg(httpd_image());
    let o = run(c);
    assert!(!o.status.success());
    assert!(text(&o).contains("Read-only file system"), "{}", text(&o));
    eprintln!("read-only state, run -d: {}", text(&o).trim());
    assert_no_orphans(&b);

    // QEMU dies while the record cannot be written: ps still shows no ghost.
    let qemu = f.row(&a).expect("row")["pid"].as_u64().expect("pid") as u32;
    signal(qemu, libc::SIGKILL);
    assert_no_orphans(&a);
    let r = f.row(&a).expect("row");
    assert_eq!(row_state(&r), "crashed", "{r}");
    ro.release();
    run_d(&f, &a, port, httpd_image(), &[]);
    http_ok(port);

    // A stop cannot leave its request: it stops the VM by a signal to its keeper, says so,
    // and nothing of the VM runs on; ps does not call it running.
    let mut ro = ReadOnlyBind::new(f.state.path());
    let o = f.ok(&["stop", &a]);
    eprintln!("read-only state, stop: {}", text(&o).trim());
    assert!(
        text(&o).contains("by a signal to its keeper"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("Read-only file system"), "{}", text(&o));
    assert_no_orphans(&a);
    assert_ne!(row_state(&f.row(&a).expect("row")), "running");

    ro.release();
    next_run_works(&f, &a, port);

    // chmod 0555, for a user who is not root (root is not stopped by modes).
    let nobody = 65534;
    let d = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let image = d.path().join("img");
    let st = Command::new("cp")
        .arg("-a")
        .arg(httpd_image())
        .arg(&image)
        .status()
        .expect("cp");
    assert!(st.success());
    let (state, cache) = (d.path().join("state"), d.path().join("cache"));
    for dir in [&state, &cache] {
        std::fs::create_dir(dir).expect("mkdir");
        std::os::unix::fs::chown(dir, Some(nobody), Some(nobody)).expect("chown");
    }
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let as_nobody = |args: &[&str]| {
        let mut c = kiln(&state);
        c.env("KILN_CACHE_DIR", &cache)
            .env("HOME", &cache)
            .args(args);
        std::os::unix::process::CommandExt::uid(&mut c, nobody);
        std::os::unix::process::CommandExt::gid(&mut c, nobody);
        run(c)
    };
    let c_name = format!("frochmod{}", free_port());
    let o = as_nobody(&[
        "run",
        "-d",
        "--accel",
        "tcg",
        "--network",
        "none",
        "--name",
        &c_name,
        image.to_str().expect("utf8"),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("Permission denied") && text(&o).contains(&state.display().to_string()),
        "{}",
        text(&o)
    );
    eprintln!(
        "state chmod 0555 (uid {nobody}), run -d: {}",
        text(&o).trim()
    );
    assert_no_orphans(&c_name);
    let o = as_nobody(&["ps", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
}
