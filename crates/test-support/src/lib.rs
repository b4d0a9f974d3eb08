//! Helpers for tests that boot real VMs: waiting on a condition with a deadline (never a bare
//! sleep), child processes that are killed when the test ends however it ends, free ports,
//! and finding QEMU processes left behind.

pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Poll `check` every `every` until it returns Some, or panic with `what` after `timeout`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// Like [`wait_until`] but returns None on timeout instead of panicking.
pub fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves nothing.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Send a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with our own child's pid.
        unsafe {
            libc::kill(self.0.id() as i32, sig);
        }
    }

    /// Wait for exit up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, Duration::from_millis(20), || {
            self.0.try_wait().ok().flatten()
        })
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1, never the same one twice in a test
/// process (the kernel may hand a just-released ephemeral port out again, and two VMs of one
/// test would then ask for the same host port).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Pids of QEMU processes whose command line contains `needle`.
pub fn qemu_pids_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("qemu-system") && cmd.contains(needle) {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = state
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            if !zombie {
                pids.push(pid);
            }
        }
    }
    pids
}

/// HTTP GET with curl (a real client): (status code, body), or None if no answer.
pub fn curl(url: &str, max_time: f64) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            &max_time.to_string(),
            "-w",
            "\n%{http_code}",
            url,
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (code != 0).then(|| (code, body.to_string()))
}

/// The workspace root (two levels above a crate's manifest folder).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(Path::parent)
        .expect("workspace root")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_value_and_poll_times_out() {
        let mut n = 0;
        let v = wait_until(
            "n to reach 3",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                (n >= 3).then_some(n)
            },
        );
        assert_eq!(v, 3);
        assert_eq!(
            poll_until(
                Duration::from_millis(30),
                Duration::from_millis(5),
                || None::<()>
            ),
            None
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len());
    }

    #[test]
    fn kill_on_drop_kills() {
        let c = KillOnDrop(
            Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("spawn sleep"),
        );
        let pid = c.0.id();
        drop(c);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists() || {
                let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                s.contains(") Z")
            }
        );
    }
}
