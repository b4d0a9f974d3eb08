//! Detached VMs: [`Fleet::start_detached`] admits the VM under the state lock, writes its
//! record and starts its supervisor (the program given to the fleet, run as
//! `PROGRAM __supervise NAME` in its own session), then waits until the record says ready or
//! failed. [`Fleet::supervise`] is that supervisor: QEMU's parent (QEMU has PDEATHSIG), it
//! watches each run with [`crate::watch`], logs and serves the console ([`Hub`]), records how
//! QEMU ended, applies [`crate::restart::decide`], and carries out stops.

use crate::error::{FleetError, Result};
use crate::fleet::{Fleet, Prepared};
use crate::hub::Hub;
use crate::plan::{self, PlanOptions};
use crate::record::{VmRecord, VmState};
use crate::restart::{decide, Backoff, Decision, RunSummary, BACKOFF_START};
use crate::store::{PID_FILE, STOP_REQUEST};
use crate::watch::{stop_on_signals, Ended, Seen, Session, Until, Watched};
use kiln_vm::{Accel, ConsoleEvent};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How much longer than the guest's readiness deadline `start_detached` waits (QEMU's start).
const START_MARGIN: Duration = Duration::from_secs(10);

/// A detached VM that became ready.
#[derive(Debug, Clone)]
pub struct Started {
    /// Its record at readiness.
    pub record: VmRecord,
    /// The virtio ports' host sockets (name, path).
    pub vports: Vec<(String, std::path::PathBuf)>,
    /// From the call to readiness.
    pub elapsed: Duration,
    /// Why the image's template was not used, if it has one.
    pub cold_reason: Option<String>,
    /// It started from a saved state.
    pub restored: bool,
}

fn backoff_start() -> Duration {
    std::env::var("KILN_RESTART_BACKOFF_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(BACKOFF_START)
}

impl Fleet {
    /// Start `p` detached and wait until it is ready; a VM that fails first is an error with
    /// the reason and the console's last lines.
    pub fn start_detached(&self, p: &Prepared, accel: Accel, verbose: bool) -> Result<Started> {
        let t0 = Instant::now();
        let name = p.name().to_string();
        let dir = self.store().vm_dir(&name);
        let (plan, ()) = self
            .admit(p, accel, true, verbose, |rec| {
                let mut argv = self.supervisor.clone();
                argv.push(name.clone().into());
                let env = [
                    ("KILN_STATE_DIR", self.store().root().as_os_str().to_owned()),
                    ("KILN_CACHE_DIR", self.cache_root().as_os_str().to_owned()),
                    ("KILN_VERBOSE_BOOT", if verbose { "1" } else { "0" }.into()),
                ];
                let child = self
                    .host()
                    .spawn_supervisor(&argv, &env, &dir.join("supervisor.log"))
                    .map_err(|e| FleetError::Other(format!("starting the VM's supervisor: {e}")))?;
                rec.supervisor_pid = child.pid();
                rec.supervisor_start = self.host().process_start(child.pid());
                Ok(child)
            })
            .map(|(plan, child)| {
                // The record is written: let the supervisor go (it waits on its stdin till then).
                child.release();
                (plan, ())
            })?;
        let vports = plan
            .spec
            .vports
            .iter()
            .map(|v| (v.name.clone(), v.socket.clone()))
            .collect();
        let record = self.wait_started(&name, plan.ready_timeout + START_MARGIN)?;
        Ok(Started {
            record,
            vports,
            elapsed: t0.elapsed(),
            cold_reason: plan.cold_reason.clone(),
            restored: plan.restore.is_some(),
        })
    }

    /// Start VM `name` again from its stored spec (a stopped, exited, crashed or failed VM).
    pub fn start(&self, name: &str, progress: &dyn kiln_bake::Progress) -> Result<Started> {
        let rec = self.store().read(name)?;
        if rec.is_live(self.host()) {
            return Err(FleetError::BadInput(format!(
                "{name} is already {}",
                rec.state
            )));
        }
        let mut cfg = rec.config.clone();
        cfg.image.get_or_insert(rec.image.clone());
        cfg.name = Some(name.to_string());
        let p = self.prepare(cfg, progress)?;
        let accel = self.probe_accel(&p)?.accel;
        self.start_detached(&p, accel, false)
    }

    /// Wait until `name`'s record says ready, or that it ended, or `wait` passes.
    fn wait_started(&self, name: &str, wait: Duration) -> Result<VmRecord> {
        let deadline = Instant::now() + wait;
        loop {
            let r = self.store().read_raw(name)?;
            if r.state == VmState::Running {
                return Ok(r);
            }
            if !r.state.is_active() || !r.supervisor_alive(self.host()) {
                let r = self.store().read(name)?;
                return Err(FleetError::NotStarted {
                    name: name.to_string(),
                    status: r.status(),
                    reason: r
                        .error
                        .clone()
                        .unwrap_or_else(|| "the VM ended before it was ready".into()),
                    tail: r.tail.clone().unwrap_or_default(),
                });
            }
            if Instant::now() > deadline {
                return Err(FleetError::Other(format!(
                    "{name} is not ready after {} s (state {}, {} restarts); it is still supervised: see `kiln logs {name}`, stop it with `kiln stop {name}`",
                    wait.as_secs(),
                    r.state,
                    r.restarts
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The supervisor of VM `name` (the hidden `kiln __supervise NAME`): runs QEMU, restarts
    /// it as the policy says, and returns when the VM has ended for good.
    pub fn supervise(&self, name: &str) -> Result<()> {
        // Wait until the starter has written the record (it closes our stdin then).
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let store = self.store();
        let dir = store.vm_dir(name);
        let mut rec = store.read_raw(name)?;
        let _ = std::fs::write(dir.join(PID_FILE), format!("{}\n", std::process::id()));
        let stop = stop_on_signals()
            .map_err(|e| FleetError::Other(format!("installing signal handlers: {e}")))?;
        let paths = plan::run_paths(&dir, true);
        let hub = Hub::new(&paths.console_log)?;
        hub.serve_unix(&dir.join("console.sock"))?;
        if let Some(addr) = rec.config.serial_tcp {
            hub.serve_tcp(addr.0)?;
        }
        let verbose = std::env::var("KILN_VERBOSE_BOOT").is_ok_and(|v| v == "1");
        let policy = rec.config.restart_policy();
        let mut backoff = Backoff::new(backoff_start());
        loop {
            let end = match self.run_once(&mut rec, &hub, &stop, verbose) {
                Ok(e) => e,
                Err(e) => {
                    rec.state = VmState::Failed;
                    rec.pid = 0;
                    rec.error = Some(e.to_string());
                    store.write(&rec)?;
                    break;
                }
            };
            let summary = record_end(&mut rec, &end);
            match decide(policy, &summary, &mut backoff) {
                Decision::End { state, error } => {
                    rec.state = state;
                    if let Some(how) = end.stopped {
                        rec.stopped = Some(format!("{how:?}"));
                    }
                    if error.is_some() {
                        rec.error = error;
                        rec.tail = Some(end.tail);
                    }
                    store.write(&rec)?;
                    break;
                }
                Decision::Restart { delay, error } => {
                    if summary.signal.is_some() || summary.exit_code != Some(0) {
                        rec.tail = Some(end.tail);
                        rec.error = Some(error.clone());
                    }
                    rec.restarts += 1;
                    rec.state = VmState::Restarting;
                    store.write(&rec)?;
                    hub.note(&format!(
                        "{error}; restart {} in {} ms ({policy})",
                        rec.restarts,
                        delay.as_millis()
                    ));
                    if wait_or_stop(delay, &stop) {
                        rec.state = VmState::Exited;
                        rec.stopped = Some("while waiting to restart".into());
                        store.write(&rec)?;
                        break;
                    }
                }
            }
        }
        for f in [
            "console.sock",
            "qemu-console.sock",
            "control.sock",
            "exec.sock",
            "exec-qemu.sock",
            "qmp.sock",
            PID_FILE,
            STOP_REQUEST,
        ] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        Ok(())
    }

    /// One QEMU run: plan from the record's spec, spawn (from this, the main thread:
    /// PDEATHSIG follows the spawning thread), watch until it ends.
    fn run_once(
        &self,
        rec: &mut VmRecord,
        hub: &Hub,
        stop: &AtomicBool,
        verbose: bool,
    ) -> Result<Ended> {
        let store = self.store();
        let image = plan::resolve_image(
            std::path::Path::new(&rec.image),
            self.cache_root(),
            &kiln_bake::Quiet,
        )?;
        let dir = store.vm_dir(&rec.name);
        let plan = plan::plan(
            &rec.config,
            &image,
            &PlanOptions {
                run_dir: dir.clone(),
                accel: rec.accel,
                supervised: true,
                verbose,
                lans: self.lease_lans(&rec.name, &rec.config.nets)?,
                cache_root: self.cache_root().to_path_buf(),
                on_paper: false,
            },
        )?;
        let mut session = Session::start(
            &plan,
            &plan::run_paths(&dir, true),
            Some(Box::new(hub.sink())),
        )?;
        session.join_nets(self, &plan);
        rec.state = VmState::Starting;
        rec.pid = session.vm.pid();
        rec.pid_start = kiln_vm::runner::pid_start_time(session.vm.pid());
        rec.started = self.host().now();
        rec.ready_ms = None;
        store.write(rec)?;
        hub.set_guest(session.console_input());
        if plan.ready_at_launch {
            rec.state = VmState::Running;
            rec.ready_ms = Some(0);
            store.write(rec)?;
        }
        let mut failed_write = None;
        let mut on = |seen: Seen<'_>| {
            let change = match seen {
                Seen::Stopping => Some((VmState::Stopping, None)),
                Seen::Console(
                    ConsoleEvent::Ready { guest_ms } | ConsoleEvent::Thawed { ms: guest_ms },
                ) if rec.state != VmState::Stopping => Some((VmState::Running, Some(*guest_ms))),
                _ => None,
            };
            if let Some((state, ready_ms)) = change {
                rec.state = state;
                if ready_ms.is_some() {
                    rec.ready_ms = ready_ms;
                }
                if let Err(e) = store.write(rec) {
                    failed_write = Some(e);
                }
            }
        };
        let Watched::Ended(end) = session.watch(Until::End, stop, &mut on) else {
            return Err(FleetError::Other("the watch ended before QEMU".into()));
        };
        hub.set_guest(None);
        if let Some(e) = failed_write {
            return Err(e);
        }
        Ok(end)
    }
}

/// Put how QEMU ended into the record; the summary the restart decision takes.
fn record_end(rec: &mut VmRecord, end: &Ended) -> RunSummary {
    let code = end.status.and_then(|s| s.code());
    let signal = end.status.and_then(|s| s.signal());
    rec.pid = 0;
    rec.pid_start = None;
    rec.exit_code = end.rc_status.or(code);
    rec.signal = if end.rc_status.is_some() {
        None
    } else {
        signal
    };
    RunSummary {
        ready: end.ready.is_some(),
        ready_timeout: end.ready_timeout,
        not_ready: end.not_ready,
        stopped: end.stopped.is_some(),
        exit_code: rec.exit_code,
        signal: rec.signal,
        ran: end.ran,
    }
}

/// Wait `delay`, or less if a stop is asked for; whether it was.
fn wait_or_stop(delay: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + delay;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.load(Ordering::Relaxed)
}
