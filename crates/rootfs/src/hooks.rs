//! Build-time hooks (`postinst/*.sh`), confined with bubblewrap.
//!
//! Each hook runs with the staging folder as its working directory, in new user, mount, PID,
//! network and IPC namespaces, with no capabilities, the host's / mounted read-only, a private
//! /tmp, and only the staging folder writable. A hook named `*.chroot.sh` runs inside the root
//! instead: the staging folder is its `/` (the host is not visible at all), it runs as uid 0 of
//! its namespace with the root's own `/bin/sh` (a Dockerfile's RUN). If that sandbox cannot be
//! set up the build is refused: hooks are never run unconfined.

use crate::RootfsError;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The bubblewrap binary (`$KILN_BWRAP` or `bwrap` on PATH).
pub fn bwrap_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("KILN_BWRAP") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("bwrap"))
        .find(|p| p.is_file())
}

/// The suffix of a hook that runs inside the root ([`in_root_command`]).
pub const IN_ROOT_SUFFIX: &str = ".chroot.sh";

/// Where an in-root hook's script is mounted (on the sandbox's private /tmp, so nothing is
/// made in the root for it).
const IN_ROOT_SCRIPT: &str = "/tmp/.kiln-hook.sh";

/// The sandboxed command for one hook (in the root when its name ends in [`IN_ROOT_SUFFIX`]).
pub fn sandbox_command(bwrap: &Path, staging: &Path, recipe_dir: &Path, hook: &Path) -> Command {
    if hook
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(IN_ROOT_SUFFIX))
    {
        return in_root_command(bwrap, staging, hook);
    }
    let mut c = sandbox(bwrap, staging, recipe_dir);
    c.args(["--", "/bin/sh", "-e"]).arg(hook);
    c
}

/// `hook` run inside the root being built: new namespaces, no capabilities, the staging folder
/// as `/` (writable; nothing of the host's visible), fresh /dev, /proc and /tmp, uid and gid 0
/// of the namespace, the root's own `/bin/sh -e`, a clean environment.
pub fn in_root_command(bwrap: &Path, staging: &Path, hook: &Path) -> Command {
    let mut c = confined(bwrap);
    c.args(["--uid", "0", "--gid", "0"])
        .arg("--bind")
        .arg(staging)
        .arg("/")
        .args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"])
        .arg("--ro-bind")
        .arg(hook)
        .arg(IN_ROOT_SCRIPT)
        .args(["--chdir", "/", "--clearenv"])
        .args([
            "--setenv",
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ])
        .args(["--setenv", "HOME", "/root", "--setenv", "LC_ALL", "C"])
        .args(["--", "/bin/sh", "-e", IN_ROOT_SCRIPT]);
    c
}

/// bubblewrap set up for build-time work on `staging`: new namespaces, no capabilities, the
/// host read-only, `recipe_dir` read-only, only `staging` writable, a clean environment. The
/// caller appends `--` and the program.
pub fn sandbox(bwrap: &Path, staging: &Path, recipe_dir: &Path) -> Command {
    let mut c = confined(bwrap);
    c.args([
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
    ])
    .arg("--ro-bind")
    .arg(recipe_dir)
    .arg(recipe_dir)
    .arg("--bind")
    .arg(staging)
    .arg(staging)
    .arg("--chdir")
    .arg(staging)
    .arg("--clearenv")
    .args([
        "--setenv",
        "PATH",
        "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
    ])
    .args(["--setenv", "HOME", "/tmp", "--setenv", "LC_ALL", "C"])
    .arg("--setenv")
    .arg("KILN_STAGING")
    .arg(staging)
    .arg("--setenv")
    .arg("KILN_RECIPE")
    .arg(recipe_dir);
    c
}

/// bubblewrap with what every build-time sandbox has: new user, mount, PID, network, IPC and
/// UTS namespaces, its own session, no capabilities, gone with its parent. Callers add mounts.
fn confined(bwrap: &Path) -> Command {
    let mut c = Command::new(bwrap);
    c.args([
        "--die-with-parent",
        "--new-session",
        "--unshare-all",
        "--cap-drop",
        "ALL",
    ]);
    c
}

/// Find bubblewrap, or refuse.
pub fn find_sandbox() -> Result<PathBuf, RootfsError> {
    bwrap_binary()
        .ok_or_else(|| RootfsError::NoSandbox("bubblewrap (bwrap) is not installed".into()))
}

/// Check that the sandbox can be set up here (runs an empty script inside it).
pub fn check_sandbox(bwrap: &Path, staging: &Path, recipe_dir: &Path) -> Result<(), RootfsError> {
    let mut c = sandbox_command(bwrap, staging, recipe_dir, Path::new("/dev/null"));
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| RootfsError::NoSandbox(format!("{}: {e}", bwrap.display())))?;
    if !out.status.success() {
        return Err(RootfsError::NoSandbox(format!(
            "{} failed: {}",
            bwrap.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Run every hook in order; stop at the first failure. `log` receives each hook's output. A hook
/// still running after `timeout` is killed with its whole sandbox and the build fails.
pub fn run_hooks(
    hooks: &[PathBuf],
    staging: &Path,
    recipe_dir: &Path,
    timeout: Duration,
    log: &mut dyn FnMut(&str),
) -> Result<(), RootfsError> {
    if hooks.is_empty() {
        return Ok(());
    }
    let bwrap = find_sandbox()?;
    check_sandbox(&bwrap, staging, recipe_dir)?;
    for hook in hooks {
        let mut cmd = sandbox_command(&bwrap, staging, recipe_dir, hook);
        // Its own process group, so a hook past its time can be killed with all it started
        // (bubblewrap's PID namespace ends with it too).
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| RootfsError::NoSandbox(format!("{}: {e}", bwrap.display())))?;
        // Read both pipes in threads so neither can fill up and block the hook, and so a hook
        // that never ends cannot block the build.
        let (tx, rx) = mpsc::channel();
        let readers = [
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        ];
        for (i, r) in readers.into_iter().enumerate() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut bytes);
                }
                let _ = tx.send((i, String::from_utf8_lossy(&bytes).into_owned()));
            });
        }
        drop(tx);
        let status =
            wait_until(&mut child, Instant::now() + timeout).map_err(RootfsError::io(hook))?;
        let mut parts = [String::new(), String::new()];
        // The sandbox is gone (ended or killed): its pipes close at once; never wait long.
        let until = Instant::now() + Duration::from_secs(5);
        for _ in 0..2 {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, text)) => parts[i] = text,
                Err(_) => break,
            }
        }
        let combined = format!("{}{}", parts[0], parts[1]);
        for line in combined.lines() {
            log(line);
        }
        let lines: Vec<&str> = combined.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        match status {
            None => {
                return Err(RootfsError::HookTimedOut {
                    hook: hook.clone(),
                    limit: timeout.as_secs(),
                    output: tail,
                })
            }
            Some(status) if !status.success() => {
                return Err(RootfsError::HookFailed {
                    hook: hook.clone(),
                    status: status.to_string(),
                    output: tail,
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Wait for `child` until `deadline`; past it, kill its process group and return `None`.
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            // The child is not reaped yet, so its pid (the group's id) is still ours.
            if let Ok(pgid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) with a negative pid signals that process group; no memory
                // is involved.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn sandbox_available() -> bool {
        let d = tempfile::tempdir().expect("tmp");
        find_sandbox()
            .and_then(|b| check_sandbox(&b, d.path(), d.path()))
            .is_ok()
    }

    #[test]
    fn hook_writes_staging_but_not_host() {
        assert!(
            sandbox_available(),
            "bubblewrap must be installed for the test suite (make setup)"
        );
        let recipe = tempfile::tempdir().expect("tmp");
        let staging = tempfile::tempdir().expect("tmp");
        // /var/tmp: visible (read-only) inside the sandbox, unlike /tmp which the sandbox
        // replaces, so the write really meets the read-only host.
        let host_dir = tempfile::tempdir_in("/var/tmp").expect("tmp");
        let victim = host_dir.path().join("victim.txt");
        fs::write(&victim, "original").expect("write");
        let hook = recipe.path().join("10-evil.sh");
        fs::write(
            &hook,
            format!(
                "echo inside > ./made-by-hook\necho pwned > {}\n",
                victim.display()
            ),
        )
        .expect("write hook");
        let mut lines = Vec::new();
        let e = run_hooks(
            std::slice::from_ref(&hook),
            staging.path(),
            recipe.path(),
            Duration::from_secs(60),
            &mut |l| lines.push(l.to_string()),
        )
        .expect_err("writing outside staging must fail");
        assert!(matches!(e, RootfsError::HookFailed { .. }), "{e}");
        assert!(
            e.to_string().contains("10-evil.sh") && e.to_string().contains("Read-only file system"),
            "{e}"
        );
        assert_eq!(fs::read_to_string(&victim).expect("read"), "original");
        assert_eq!(
            fs::read_to_string(staging.path().join("made-by-hook")).expect("read"),
            "inside\n"
        );
    }

    #[test]
    fn an_in_root_hook_runs_inside_the_root_and_sees_nothing_of_the_host() {
        let recipe = tempfile::tempdir().expect("tmp");
        let staging = tempfile::tempdir().expect("tmp");
        let bin = staging.path().join("bin");
        fs::create_dir_all(&bin).expect("mkdir");
        fs::copy("/bin/busybox", bin.join("busybox")).expect("static busybox (busybox-static)");
        std::os::unix::fs::symlink("busybox", bin.join("sh")).expect("ln");
        let host_dir = tempfile::tempdir_in("/var/tmp").expect("tmp");
        let host_file = host_dir.path().join("secret");
        fs::write(&host_file, "host").expect("w");
        let hook = recipe.path().join(format!("10-run{IN_ROOT_SUFFIX}"));
        fs::write(
            &hook,
            format!(
                "echo \"uid=$(busybox id -u) cwd=$(pwd)\" > /made\n\
                 [ -e {} ] || echo host-hidden >> /made\n",
                host_file.display()
            ),
        )
        .expect("w");
        run_hooks(
            &[hook],
            staging.path(),
            recipe.path(),
            Duration::from_secs(60),
            &mut |_| {},
        )
        .expect("in-root hook");
        assert_eq!(
            fs::read_to_string(staging.path().join("made")).expect("read"),
            "uid=0 cwd=/\nhost-hidden\n"
        );
        let script_left = walkdir::WalkDir::new(staging.path())
            .into_iter()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("kiln-hook"));
        assert!(!script_left, "the hook's script was left in the root");
    }

    #[test]
    fn hook_cannot_write_the_recipe() {
        let recipe = tempfile::tempdir().expect("tmp");
        let staging = tempfile::tempdir().expect("tmp");
        let hook = recipe.path().join("a.sh");
        fs::write(&hook, "touch \"$KILN_RECIPE/x\"\n").expect("w");
        let e = run_hooks(
            &[hook],
            staging.path(),
            recipe.path(),
            Duration::from_secs(60),
            &mut |_| {},
        )
        .expect_err("must fail");
        assert!(e.to_string().contains("Read-only file system"), "{e}");
        assert!(!recipe.path().join("x").exists());
    }

    #[test]
    fn failing_hook_reports_its_output() {
        let recipe = tempfile::tempdir().expect("tmp");
        let staging = tempfile::tempdir().expect("tmp");
        let hook = recipe.path().join("b.sh");
        fs::write(&hook, "echo about to fail\nfalse\necho not reached\n").expect("w");
        let e = run_hooks(
            &[hook],
            staging.path(),
            recipe.path(),
            Duration::from_secs(60),
            &mut |_| {},
        )
        .expect_err("must fail");
        let s = e.to_string();
        assert!(
            s.contains("about to fail") && !s.contains("not reached"),
            "{s}"
        );
    }

    /// Processes whose command line contains `needle`.
    fn processes_with(needle: &str) -> Vec<String> {
        fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(needle))
            .collect()
    }

    #[test]
    fn hook_past_its_time_limit_is_killed_with_its_sandbox() {
        let recipe = tempfile::tempdir().expect("tmp");
        let staging = tempfile::tempdir().expect("tmp");
        let hook = recipe.path().join("20-forever.sh");
        // A marker only this test's sleeps carry; one in the background holds the output pipe.
        let marker = format!("7{}.25", std::process::id());
        fs::write(
            &hook,
            format!("echo started\nsleep {marker} &\nsleep {marker}\n"),
        )
        .expect("w");
        let started = Instant::now();
        let e = run_hooks(
            std::slice::from_ref(&hook),
            staging.path(),
            recipe.path(),
            Duration::from_secs(2),
            &mut |_| {},
        )
        .expect_err("must time out");
        let took = started.elapsed();
        assert!(
            matches!(e, RootfsError::HookTimedOut { limit: 2, .. }),
            "{e}"
        );
        let s = e.to_string();
        assert!(
            s.contains("20-forever.sh") && s.contains("time limit of 2 s") && s.contains("started"),
            "{s}"
        );
        assert!(took < Duration::from_secs(10), "took {took:?}");
        // Killed with everything it started.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !processes_with(&marker).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(processes_with(&marker), Vec::<String>::new());
    }

    #[test]
    fn unusable_sandbox_refuses() {
        let d = tempfile::tempdir().expect("tmp");
        let e = check_sandbox(Path::new("/nonexistent/bwrap"), d.path(), d.path())
            .expect_err("must refuse");
        assert!(
            e.to_string()
                .contains("refuses to run postinst hooks unconfined"),
            "{e}"
        );
    }
}
