//! What the fleet remembers of a VM ([`VmRecord`], `vms/NAME/record.json`), where it is in
//! its life ([`VmState`]), the pure reconciliation of a record with the processes that really
//! exist, and the row `kiln ps` and the web table show ([`Row`]).

use crate::as_str;
use crate::config::VmConfig;
use crate::host::{same_process, Host};
use kiln_recipe::PortForward;
use kiln_vm::Accel;
use serde::{Deserialize, Serialize};

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
    /// Never became ready, or could not start.
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

    /// The lowercase name (`running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Restarting => "restarting",
            VmState::Stopping => "stopping",
            VmState::Exited => "exited",
            VmState::Crashed => "crashed",
            VmState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What we remember about a VM (detached, or a foreground `kiln run`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The supervisor's pid (a foreground run's: that `kiln run`).
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
    #[serde(with = "as_str::vec")]
    pub ports: Vec<PortForward>,
    /// vCPUs.
    pub cpus: u32,
    /// MiB.
    pub memory: u32,
    /// The accelerator.
    pub accel: Accel,
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
    /// The whole VM spec (image resolved, paths absolute), reused by restarts, a start from
    /// the web and `kiln enable`.
    #[serde(default)]
    pub config: VmConfig,
    /// Run in the foreground by `kiln run` (the "supervisor" is that kiln; the console is its
    /// terminal, there is no console log); the record goes when that run ends.
    #[serde(default)]
    pub foreground: bool,
}

impl VmRecord {
    /// Whether the record's supervisor is alive.
    pub fn supervisor_alive(&self, host: &dyn Host) -> bool {
        same_process(
            host,
            &self.boot_id,
            self.supervisor_pid,
            self.supervisor_start,
        )
    }

    /// Whether the record's QEMU is alive.
    pub fn qemu_alive(&self, host: &dyn Host) -> bool {
        same_process(host, &self.boot_id, self.pid, self.pid_start)
    }

    /// Whether the VM holds its name, ports and disk: active, and its supervisor lives.
    pub fn is_live(&self, host: &dyn Host) -> bool {
        self.state.is_active() && self.supervisor_alive(host)
    }

    /// Fix a record whose supervisor is gone: an active state becomes `crashed`, so no ghost
    /// VM is listed. Returns whether it changed.
    pub fn reconcile(&mut self, host: &dyn Host) -> bool {
        if !self.state.is_active() || self.supervisor_alive(host) {
            return false;
        }
        if self.qemu_alive(host) {
            // Cannot happen with Kiln's supervisor (QEMU dies with it), but never hide a VM.
            return false;
        }
        self.error = Some(if self.boot_id != host.boot_id() {
            "the host rebooted while the VM ran".into()
        } else {
            "its supervisor and QEMU are gone (killed?)".into()
        });
        self.state = VmState::Crashed;
        self.pid = 0;
        self.signal = None;
        self.exit_code = None;
        true
    }

    /// The state as listed: `exited (0)`, `exited (stopped: Graceful)`, `crashed (signal 9)`.
    pub fn status(&self) -> String {
        match self.state {
            VmState::Exited => match (self.exit_code, &self.stopped) {
                (_, Some(how)) => format!("exited (stopped: {how})"),
                (Some(c), None) => format!("exited ({c})"),
                (None, None) => "exited".into(),
            },
            VmState::Crashed => match self.signal {
                Some(s) => format!("crashed (signal {s})"),
                None => "crashed".into(),
            },
            s => s.to_string(),
        }
    }
}

/// One VM as `kiln ps --json` and the web table list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Unique name.
    pub name: String,
    /// The state.
    pub state: VmState,
    /// The state with its detail (`exited (0)`).
    pub status: String,
    /// QEMU's pid while it runs.
    pub pid: Option<u32>,
    /// The supervisor's pid while the VM is active.
    pub supervisor_pid: Option<u32>,
    /// Seconds since the current QEMU started.
    pub uptime_s: u64,
    /// vCPUs.
    pub cpus: u32,
    /// MiB.
    pub memory: u32,
    /// Port forwards.
    #[serde(with = "as_str::vec")]
    pub ports: Vec<PortForward>,
    /// The image folder.
    pub image: String,
    /// The accelerator.
    pub accel: Accel,
    /// Times restarted.
    pub restarts: u32,
    /// The restart policy.
    pub restart: String,
    /// Exit code, once ended.
    pub exit_code: Option<i32>,
    /// The signal that killed QEMU.
    pub signal: Option<i32>,
    /// Guest uptime at readiness, ms.
    pub ready_ms: Option<u64>,
    /// Why it failed or crashed.
    pub error: Option<String>,
    /// A foreground `kiln run`.
    pub foreground: bool,
}

impl Row {
    /// The row of `r` at Unix time `now`.
    pub fn of(r: &VmRecord, now: u64) -> Row {
        let active = r.state.is_active();
        let running = active && r.pid != 0;
        Row {
            name: r.name.clone(),
            state: r.state,
            status: r.status(),
            pid: running.then_some(r.pid),
            supervisor_pid: active.then_some(r.supervisor_pid),
            uptime_s: if running {
                now.saturating_sub(r.started)
            } else {
                0
            },
            cpus: r.cpus,
            memory: r.memory,
            ports: r.ports.clone(),
            image: r.image.clone(),
            accel: r.accel,
            restarts: r.restarts,
            restart: r.config.restart_policy().to_string(),
            exit_code: r.exit_code,
            signal: r.signal,
            ready_ms: r.ready_ms,
            error: r.error.clone(),
            foreground: r.foreground,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::host::FakeHost;

    /// A running record supervised by pid 100 (started at 10), QEMU pid 200 (started at 20).
    pub(crate) fn rec(name: &str) -> VmRecord {
        VmRecord {
            name: name.into(),
            state: VmState::Running,
            pid: 200,
            pid_start: Some(20),
            supervisor_pid: 100,
            supervisor_start: Some(10),
            boot_id: "boot-1".into(),
            image: "/img".into(),
            ports: vec![],
            cpus: 1,
            memory: 64,
            accel: Accel::Tcg,
            started: 900,
            ready_ms: Some(500),
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
    fn a_record_whose_supervisor_and_qemu_are_gone_is_crashed() {
        let h = FakeHost::new();
        let mut r = rec("ghost");
        assert!(r.reconcile(&h));
        assert_eq!(r.state, VmState::Crashed);
        assert_eq!(r.pid, 0);
        assert!(r.error.as_deref().unwrap_or("").contains("gone"));
        assert!(!r.reconcile(&h), "once");
    }

    #[test]
    fn a_live_supervisor_keeps_the_record_as_it_is() {
        let h = FakeHost::new().with_process(100, 10).with_process(200, 20);
        let mut r = rec("web");
        assert!(!r.reconcile(&h));
        assert_eq!(r.state, VmState::Running);
        assert!(r.is_live(&h));
    }

    #[test]
    fn a_reused_supervisor_pid_does_not_keep_a_vm_alive() {
        // Pid 100 lives, but it is another process (started later).
        let h = FakeHost::new().with_process(100, 11);
        let mut r = rec("web");
        assert!(!r.supervisor_alive(&h));
        assert!(r.reconcile(&h));
        assert_eq!(r.state, VmState::Crashed);
    }

    #[test]
    fn after_a_reboot_the_record_says_so() {
        let h = FakeHost::new().with_process(100, 10);
        h.reboot();
        let mut r = rec("web");
        assert!(r.reconcile(&h));
        assert!(r.error.as_deref().unwrap_or("").contains("rebooted"));
    }

    #[test]
    fn a_lingering_qemu_is_never_hidden() {
        let h = FakeHost::new().with_process(200, 20);
        let mut r = rec("web");
        assert!(!r.reconcile(&h));
        assert_eq!(r.state, VmState::Running);
        assert!(!r.is_live(&h), "it holds nothing without its supervisor");
    }

    #[test]
    fn ended_records_are_left_alone() {
        let h = FakeHost::new();
        for s in [VmState::Exited, VmState::Failed, VmState::Crashed] {
            let mut r = rec("x");
            r.state = s;
            assert!(!r.reconcile(&h));
            assert_eq!(r.state, s);
        }
    }

    #[test]
    fn status_and_row() {
        let mut r = rec("web");
        r.ports = vec!["8080:80".parse().expect("port")];
        let row = Row::of(&r, 1000);
        assert_eq!(row.pid, Some(200));
        assert_eq!(row.uptime_s, 100);
        assert_eq!(row.restart, "no");
        let json = serde_json::to_value(&row).expect("json");
        assert_eq!(json["ports"][0], "127.0.0.1:8080:80/tcp");
        assert_eq!(json["state"], "running");
        r.state = VmState::Exited;
        r.exit_code = Some(3);
        assert_eq!(r.status(), "exited (3)");
        r.stopped = Some("Graceful".into());
        assert_eq!(r.status(), "exited (stopped: Graceful)");
        assert_eq!(Row::of(&r, 1000).pid, None);
        r.state = VmState::Crashed;
        r.signal = Some(9);
        assert_eq!(r.status(), "crashed (signal 9)");
    }

    /// A record as the previous version (kiln 0.1, before kiln-fleet) wrote it.
    pub(crate) const OLD_RECORD: &str = r#"{
  "name": "web",
  "state": "exited",
  "pid": 0,
  "pid_start": null,
  "supervisor_pid": 4242,
  "supervisor_start": 777,
  "boot_id": "boot-1",
  "image": "/root/.cache/kiln/images/httpd-0a1b2c3d4e5f",
  "ports": ["127.0.0.1:8080:80/tcp"],
  "cpus": 1,
  "memory": 32,
  "accel": "tcg",
  "started": 1790000000,
  "ready_ms": 812,
  "restarts": 2,
  "exit_code": 0,
  "signal": null,
  "stopped": "Graceful",
  "error": null,
  "tail": null,
  "config": {
    "image": "/root/.cache/kiln/images/httpd-0a1b2c3d4e5f",
    "name": "web",
    "drive": "/srv/data.img:ro",
    "ports": ["127.0.0.1:8080:80/tcp"],
    "serial_tcp": "127.0.0.1:4444",
    "vports": ["data"],
    "share": "/srv/www:/www:ro",
    "share_fs": "9p",
    "network": "user",
    "no_lock": true,
    "restart": "on-failure",
    "ready_timeout": 20,
    "accel": "tcg"
  },
  "foreground": false
}"#;

    #[test]
    fn records_of_the_previous_version_load_typed() {
        let r: VmRecord = serde_json::from_str(OLD_RECORD).expect("old record");
        assert_eq!(r.state, VmState::Exited);
        assert_eq!(r.ports[0].host_port, 8080);
        assert_eq!(r.accel, Accel::Tcg);
        let c = &r.config;
        assert_eq!(c.restart, Some(crate::config::Restart::OnFailure));
        assert!(c.drive.as_ref().is_some_and(|d| d.readonly));
        assert!(c
            .share
            .as_ref()
            .is_some_and(|s| s.readonly && s.guest == "/www"));
        assert_eq!(
            c.vports,
            Some(crate::config::Vports::Names(vec!["data".into()]))
        );
        // And write back the same text values.
        let back = serde_json::to_value(&r).expect("json");
        let old: serde_json::Value = serde_json::from_str(OLD_RECORD).expect("json");
        assert_eq!(back, old);
    }
}
