//! Records of detached VMs in the state folder: one folder per VM (`vms/NAME/`) holding
//! `record.json` (written atomically), the sockets, `console.log` and the supervisor's log.
//!
//! While a VM's supervisor lives, only it writes the record. A record whose supervisor is gone
//! (killed, or the host rebooted: the boot id differs) is *reconciled* by whoever reads it:
//! an active state becomes `crashed`, so `kiln ps` never shows a ghost "running" VM. Pids are
//! checked together with their start time, so a reused pid is not mistaken for the VM.

use crate::vmconfig::VmConfig;
use anyhow::{bail, Context, Result};
use kiln_vm::runner;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// QEMU is starting; not ready yet.
    Starting,
    /// Ready (the guest's readiness check passed).
    Running,
    /// Waiting out the restart backoff.
    Restarting,
    /// A stop was requested and is under way.
    Stopping,
    /// Ended: stopped, or the guest powered off (see exit_code).
    Exited,
    /// QEMU died from a signal, or the supervisor vanished.
    Crashed,
    /// Never became ready in time, or could not start.
    Failed,
}

impl VmState {
    /// Whether a supervisor should be looking after this VM.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Restarting | VmState::Stopping
        )
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// What we remember about a detached VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    /// Unique name.
    pub name: String,
    /// State.
    pub state: VmState,
    /// QEMU's pid (0 when none runs).
    pub pid: u32,
    /// QEMU's start time (clock ticks since boot), to tell a reused pid apart.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// The supervisor's pid.
    #[serde(default)]
    pub supervisor_pid: u32,
    /// The supervisor's start time.
    #[serde(default)]
    pub supervisor_start: Option<u64>,
    /// The host boot the pids belong to.
    #[serde(default)]
    pub boot_id: String,
    /// The image folder it boots.
    pub image: String,
    /// Port forwards.
    pub ports: Vec<String>,
    /// vCPUs.
    pub cpus: u32,
    /// MiB.
    pub memory: u32,
    /// kvm or tcg.
    pub accel: String,
    /// Unix time the current QEMU was started.
    pub started: u64,
    /// Guest uptime at readiness, ms.
    pub ready_ms: Option<u64>,
    /// Times the restart policy restarted it.
    #[serde(default)]
    pub restarts: u32,
    /// Exit code (etc/rc's status when the guest reported it, else QEMU's).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that killed QEMU.
    #[serde(default)]
    pub signal: Option<i32>,
    /// How a requested stop went (Graceful, Quit, Killed).
    #[serde(default)]
    pub stopped: Option<String>,
    /// Why it failed or crashed.
    #[serde(default)]
    pub error: Option<String>,
    /// The console's last lines when it failed or crashed.
    #[serde(default)]
    pub tail: Option<String>,
    /// The whole VM config (image resolved), reused by restarts and `kiln enable`.
    #[serde(default)]
    pub config: VmConfig,
    /// Run in the foreground by `kiln run` (the "supervisor" is that kiln; the console is its
    /// terminal, there is no console log); the record goes when that run ends.
    #[serde(default)]
    pub foreground: bool,
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The folder of VM `name`.
pub fn vm_dir(state: &Path, name: &str) -> PathBuf {
    state.join("vms").join(name)
}

/// Write the record atomically.
pub fn write(state: &Path, rec: &VmRecord) -> Result<()> {
    let dir = vm_dir(state, &rec.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_vec_pretty(rec)?;
    kiln_image::atomic_write(&dir.join("record.json"), &json)
        .with_context(|| format!("writing {}", dir.join("record.json").display()))
}

/// Read VM `name`'s record as stored.
pub fn read_raw(state: &Path, name: &str) -> Result<VmRecord> {
    let path = vm_dir(state, name).join("record.json");
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no VM named `{name}` (see `kiln ps`)")
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_slice(&data).with_context(|| format!("{} is not a VM record", path.display()))
}

/// Read VM `name`'s record, reconciled with the processes that really exist.
pub fn read(state: &Path, name: &str) -> Result<VmRecord> {
    let mut rec = read_raw(state, name)?;
    if reconcile(&mut rec) {
        let _ = write(state, &rec);
    }
    Ok(rec)
}

fn same_process(boot: &str, pid: u32, start: Option<u64>) -> bool {
    pid != 0
        && boot == runner::boot_id()
        && runner::pid_alive(pid)
        && (start.is_none() || runner::pid_start_time(pid) == start)
}

/// Whether the record's supervisor is alive.
pub fn supervisor_alive(rec: &VmRecord) -> bool {
    same_process(&rec.boot_id, rec.supervisor_pid, rec.supervisor_start)
}

/// Whether the record's QEMU is alive.
pub fn qemu_alive(rec: &VmRecord) -> bool {
    same_process(&rec.boot_id, rec.pid, rec.pid_start)
}

/// Whether the VM holds its name, ports and disk: its supervisor lives.
pub fn is_live(rec: &VmRecord) -> bool {
    rec.state.is_active() && supervisor_alive(rec)
}

/// Fix a record whose supervisor is gone. Returns whether it changed.
pub fn reconcile(rec: &mut VmRecord) -> bool {
    if !rec.state.is_active() || supervisor_alive(rec) {
        return false;
    }
    if qemu_alive(rec) {
        // Cannot happen with Kiln's supervisor (QEMU dies with it), but never hide a VM.
        return false;
    }
    rec.error = Some(if rec.boot_id != runner::boot_id() {
        "the host rebooted while the VM ran".into()
    } else {
        "its supervisor and QEMU are gone (killed?)".into()
    });
    rec.state = VmState::Crashed;
    rec.pid = 0;
    rec.signal = None;
    rec.exit_code = None;
    true
}

/// Every record, reconciled, sorted by name.
pub fn list(state: &Path) -> Vec<VmRecord> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(state.join("vms")) {
        for e in entries.flatten() {
            if let Some(name) = e.file_name().to_str() {
                if let Ok(r) = read(state, name) {
                    out.push(r);
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Remove VM `name`'s folder.
pub fn remove(state: &Path, name: &str) -> Result<()> {
    let dir = vm_dir(state, name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// An exclusive lock on the state folder, held while a new VM is admitted (name, ports and
/// disk checked, record written), so concurrent `kiln run -d` cannot both take a name.
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Block until the lock is ours.
    pub fn acquire(state: &Path) -> Result<StateLock> {
        std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
        let path = state.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(StateLock { _file: f })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str) -> VmRecord {
        VmRecord {
            name: name.into(),
            state: VmState::Running,
            pid: 0,
            pid_start: None,
            supervisor_pid: 0,
            supervisor_start: None,
            boot_id: runner::boot_id(),
            image: "/img".into(),
            ports: vec![],
            cpus: 1,
            memory: 64,
            accel: "tcg".into(),
            started: now(),
            ready_ms: None,
            restarts: 0,
            exit_code: None,
            signal: None,
            stopped: None,
            error: None,
            tail: None,
            config: VmConfig::default(),
            foreground: false,
        }
    }

    #[test]
    fn ghost_running_record_is_reconciled_to_crashed() {
        let d = tempfile::tempdir().expect("tmp");
        let mut c = std::process::Command::new("true").spawn().expect("spawn");
        let dead = c.id();
        c.wait().expect("wait");
        let mut r = rec("ghost");
        r.supervisor_pid = dead;
        r.pid = dead;
        write(d.path(), &r).expect("write");
        let got = read(d.path(), "ghost").expect("read");
        assert_eq!(got.state, VmState::Crashed);
        assert!(got.error.as_deref().unwrap_or("").contains("gone"));
        // The reconciliation was written back.
        assert_eq!(
            read_raw(d.path(), "ghost").expect("raw").state,
            VmState::Crashed
        );
    }

    #[test]
    fn live_supervisor_keeps_running_and_reused_pid_does_not() {
        let d = tempfile::tempdir().expect("tmp");
        let me = std::process::id();
        let mut r = rec("alive");
        r.supervisor_pid = me;
        r.supervisor_start = runner::pid_start_time(me);
        write(d.path(), &r).expect("write");
        assert_eq!(
            read(d.path(), "alive").expect("read").state,
            VmState::Running
        );
        assert!(is_live(&r));
        r.supervisor_start = r.supervisor_start.map(|t| t + 1);
        assert!(
            !supervisor_alive(&r),
            "a different start time is another process"
        );
        r.supervisor_start = runner::pid_start_time(me);
        r.boot_id = "another-boot".into();
        assert!(reconcile(&mut r));
        assert_eq!(r.state, VmState::Crashed);
        assert!(r.error.as_deref().unwrap_or("").contains("rebooted"));
    }

    #[test]
    fn list_and_remove() {
        let d = tempfile::tempdir().expect("tmp");
        let mut a = rec("b");
        a.state = VmState::Exited;
        write(d.path(), &a).expect("w");
        a.name = "a".into();
        write(d.path(), &a).expect("w");
        let names: Vec<String> = list(d.path()).into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["a", "b"]);
        remove(d.path(), "a").expect("rm");
        assert!(read(d.path(), "a").is_err());
        let _l = StateLock::acquire(d.path()).expect("lock");
    }
}
