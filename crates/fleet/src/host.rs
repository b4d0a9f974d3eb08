//! The host's side effects the fleet's decisions depend on, behind one small trait ([`Host`]):
//! process liveness and start times, the boot id, host port probes, the clock, signals, and
//! starting a supervisor. [`RealHost`] asks the kernel; [`FakeHost`] is scripted and records
//! what was asked of it, so admission, reconciliation and restart decisions have unit tests
//! that boot nothing (youki's pattern).

use kiln_recipe::PortForward;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::Path;
use std::sync::Mutex;

/// A started supervisor: its pid, and the gate it waits on until its record is complete.
pub trait SupervisorChild: Send {
    /// The supervisor's pid.
    fn pid(&self) -> u32;
    /// Let the supervisor go (it waits until its record is written).
    fn release(self: Box<Self>);
}

/// What the fleet asks of the host.
pub trait Host: Send + Sync {
    /// This host boot's id (changes at every reboot).
    fn boot_id(&self) -> String;
    /// The start time of a live process (clock ticks since boot), or None if there is none.
    fn process_start(&self, pid: u32) -> Option<u64>;
    /// Whether `forward`'s host port can be bound now.
    fn port_free(&self, forward: &PortForward) -> bool;
    /// Unix time, seconds.
    fn now(&self) -> u64;
    /// Send `signal` to `pid`; false if it could not be delivered.
    fn signal(&self, pid: u32, signal: i32) -> bool;
    /// Start `argv` as a supervisor in its own session, its stderr to `log`, with `env` set;
    /// it waits on its stdin until released.
    fn spawn_supervisor(
        &self,
        argv: &[OsString],
        env: &[(&str, OsString)],
        log: &Path,
    ) -> std::io::Result<Box<dyn SupervisorChild>>;
}

/// Whether `pid` (started at `start`, on boot `boot`) is the same live process.
pub fn same_process(host: &dyn Host, boot: &str, pid: u32, start: Option<u64>) -> bool {
    if pid == 0 || boot != host.boot_id() {
        return false;
    }
    match host.process_start(pid) {
        Some(t) => start.is_none() || start == Some(t),
        None => false,
    }
}

/// The real host: /proc, bind(2), kill(2), fork+exec.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealHost;

struct RealChild(std::process::Child);

impl SupervisorChild for RealChild {
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn release(self: Box<Self>) {
        let mut c = self.0;
        // Closing stdin lets it go; the supervisor lives on and is nobody's child to reap.
        drop(c.stdin.take());
        std::mem::forget(c);
    }
}

impl Host for RealHost {
    fn boot_id(&self) -> String {
        kiln_vm::runner::boot_id()
    }

    fn process_start(&self, pid: u32) -> Option<u64> {
        if !kiln_vm::runner::pid_alive(pid) {
            return None;
        }
        kiln_vm::runner::pid_start_time(pid)
    }

    fn port_free(&self, forward: &PortForward) -> bool {
        kiln_vm::ports::check_free(std::slice::from_ref(forward)).is_ok()
    }

    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn signal(&self, pid: u32, signal: i32) -> bool {
        if pid == 0 {
            return false;
        }
        // SAFETY: kill(2) has no memory preconditions; callers check the pid's identity.
        unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
    }

    fn spawn_supervisor(
        &self,
        argv: &[OsString],
        env: &[(&str, OsString)],
        log: &Path,
    ) -> std::io::Result<Box<dyn SupervisorChild>> {
        use std::os::unix::process::CommandExt;
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty supervisor command"))?;
        let log = std::fs::File::create(log)?;
        let mut cmd = std::process::Command::new(prog);
        cmd.args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: setsid is async-signal-safe; the supervisor gets its own session so a
        // terminal's hangup or Ctrl-C does not reach it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(Box::new(RealChild(cmd.spawn()?)))
    }
}

/// A scripted host for unit tests: processes, ports and the clock are what the test says, and
/// every signal and supervisor start is recorded.
#[derive(Debug, Default)]
pub struct FakeHost {
    /// The boot id.
    pub boot: Mutex<String>,
    /// Live processes: pid → start time.
    pub processes: Mutex<HashMap<u32, u64>>,
    /// Host ports held by something outside Kiln.
    pub taken_ports: Mutex<HashSet<u16>>,
    /// The clock.
    pub clock: Mutex<u64>,
    /// Signals sent: (pid, signal).
    pub signals: Mutex<Vec<(u32, i32)>>,
    /// Supervisors started: their argv.
    pub spawned: Mutex<Vec<Vec<OsString>>>,
    /// The pid the next supervisor gets.
    pub next_pid: Mutex<u32>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeHost {
    /// A host on boot `boot-1` at time 1000 with no processes.
    pub fn new() -> FakeHost {
        let h = FakeHost::default();
        *lock(&h.boot) = "boot-1".into();
        *lock(&h.clock) = 1000;
        *lock(&h.next_pid) = 5000;
        h
    }

    /// A live process `pid` started at `start`.
    pub fn with_process(self, pid: u32, start: u64) -> FakeHost {
        lock(&self.processes).insert(pid, start);
        self
    }

    /// End process `pid`.
    pub fn end_process(&self, pid: u32) {
        lock(&self.processes).remove(&pid);
    }

    /// Something outside Kiln holds host port `port`.
    pub fn take_port(&self, port: u16) {
        lock(&self.taken_ports).insert(port);
    }

    /// The host rebooted.
    pub fn reboot(&self) {
        *lock(&self.boot) = "boot-2".into();
        lock(&self.processes).clear();
    }

    /// The signals sent so far.
    pub fn signals_sent(&self) -> Vec<(u32, i32)> {
        lock(&self.signals).clone()
    }

    /// The supervisors started so far.
    pub fn supervisors_started(&self) -> Vec<Vec<OsString>> {
        lock(&self.spawned).clone()
    }
}

struct FakeChild(u32);

impl SupervisorChild for FakeChild {
    fn pid(&self) -> u32 {
        self.0
    }
    fn release(self: Box<Self>) {}
}

impl Host for FakeHost {
    fn boot_id(&self) -> String {
        lock(&self.boot).clone()
    }
    fn process_start(&self, pid: u32) -> Option<u64> {
        lock(&self.processes).get(&pid).copied()
    }
    fn port_free(&self, forward: &PortForward) -> bool {
        !lock(&self.taken_ports).contains(&forward.host_port)
    }
    fn now(&self) -> u64 {
        *lock(&self.clock)
    }
    fn signal(&self, pid: u32, signal: i32) -> bool {
        lock(&self.signals).push((pid, signal));
        lock(&self.processes).contains_key(&pid)
    }
    fn spawn_supervisor(
        &self,
        argv: &[OsString],
        _env: &[(&str, OsString)],
        _log: &Path,
    ) -> std::io::Result<Box<dyn SupervisorChild>> {
        lock(&self.spawned).push(argv.to_vec());
        let mut next = lock(&self.next_pid);
        let pid = *next;
        *next += 1;
        lock(&self.processes).insert(pid, 7);
        Ok(Box::new(FakeChild(pid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_process_needs_boot_pid_and_start_time() {
        let h = FakeHost::new().with_process(42, 900);
        assert!(same_process(&h, "boot-1", 42, Some(900)));
        assert!(same_process(&h, "boot-1", 42, None));
        assert!(!same_process(&h, "boot-1", 42, Some(901)), "reused pid");
        assert!(!same_process(&h, "boot-0", 42, Some(900)), "other boot");
        assert!(!same_process(&h, "boot-1", 0, None), "no pid");
        h.end_process(42);
        assert!(!same_process(&h, "boot-1", 42, Some(900)), "gone");
    }

    #[test]
    fn the_real_host_knows_this_process() {
        let h = RealHost;
        let me = std::process::id();
        let start = h.process_start(me);
        assert!(start.is_some());
        assert!(same_process(&h, &h.boot_id(), me, start));
        assert!(h.now() > 1_600_000_000);
    }
}
