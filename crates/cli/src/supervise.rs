//! Detached VMs: `kiln run --detach` admits the VM (under the state lock), writes its record and
//! starts a supervisor — `kiln` re-executing itself as the hidden `__supervise NAME`, in its own
//! session — then waits until the record says ready or failed.
//!
//! The supervisor owns QEMU as its child (QEMU has PDEATHSIG: it never outlives the
//! supervisor). It records QEMU's real end (exit code, or the signal that killed it; etc/rc's
//! status when the guest reported one), parses the console (`kiln: ready in N ms` → running;
//! no ready line by the deadline → failed with the console's last lines), appends the console
//! to `console.log`, serves it to viewers ([`crate::console::Hub`]), applies the restart policy
//! with exponential backoff, and performs stops: on SIGTERM it reads `stop-request`
//! (`graceful SECONDS` or `kill`) and stops the guest through kiln-init's control channel,
//! then QMP `quit`, then SIGKILL.

use crate::console::Hub;
use crate::run::{admit, plan_config, supervised_paths};
use crate::state::{self, StateLock, VmRecord, VmState};
use crate::vmconfig::{Restart, VmConfig};
use crate::{dirs, BadInput};
use anyhow::{Context, Result};
use kiln_build::ImageManifest;
use kiln_vm::runner::{self, ConsoleMsg, RunPaths};
use kiln_vm::{Accel, ConsoleEvent, LineParser, StopOutcome};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The first restart waits this long; each further one doubles it, up to [`BACKOFF_MAX`].
/// `KILN_RESTART_BACKOFF_MS` overrides the first delay.
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A VM that ran this long resets the backoff.
const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// The file a stop request is written to before the supervisor gets SIGTERM.
pub const STOP_REQUEST: &str = "stop-request";
/// The supervisor's pid file (for systemd's PIDFile=).
pub const PID_FILE: &str = "supervisor.pid";

fn backoff_start() -> Duration {
    std::env::var("KILN_RESTART_BACKOFF_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(BACKOFF_START)
}

/// `kiln run --detach`: admit, record, start the supervisor, wait for ready or failed.
pub fn start_detached(
    cfg: VmConfig,
    image_dir: &Path,
    m: &ImageManifest,
    accel: Accel,
    verbose: bool,
) -> Result<ExitCode> {
    let state_root = dirs::state_root();
    let name = cfg.name.clone().unwrap_or_else(|| m.name.clone());
    let dir = state::vm_dir(&state_root, &name);
    let t0 = Instant::now();
    let lock = StateLock::acquire(&state_root)?;
    let plan = plan_config(&cfg, image_dir, m, &dir, accel, true, verbose)?;
    admit(&state_root, &plan)?;
    // A record left by an ended VM of the same name is replaced.
    state::remove(&state_root, &name)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rec = plan.record(image_dir, accel);
    let exe = std::env::current_exe().context("finding the kiln binary")?;
    let log = std::fs::File::create(dir.join("supervisor.log"))
        .with_context(|| format!("creating {}", dir.join("supervisor.log").display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("__supervise")
        .arg(&name)
        .env("KILN_STATE_DIR", &state_root)
        .env("KILN_VERBOSE_BOOT", if verbose { "1" } else { "0" })
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log);
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
    let mut child = cmd.spawn().context("starting the VM's supervisor")?;
    rec.supervisor_pid = child.id();
    rec.supervisor_start = runner::pid_start_time(child.id());
    state::write(&state_root, &rec)?;
    // The record is complete: let the supervisor go (it waits for stdin to close).
    drop(child.stdin.take());
    drop(lock);

    let wait = plan.ready_timeout + Duration::from_secs(30);
    let deadline = Instant::now() + wait;
    loop {
        let r = state::read_raw(&state_root, &name)?;
        let alive = state::supervisor_alive(&r);
        match r.state {
            VmState::Running => {
                eprintln!(
                    "kiln: {name} ready: guest {} ms, launch to ready {:.0} ms ({accel}); pid {}; console `kiln console {name}`, log `kiln logs {name}`; stop with `kiln stop {name}`",
                    r.ready_ms.unwrap_or(0),
                    t0.elapsed().as_secs_f64() * 1000.0,
                    r.pid
                );
                for v in &plan.spec.vports {
                    eprintln!("kiln: virtio port {} on {}", v.name, v.socket.display());
                }
                // The supervisor is not our child to wait for: it lives on. Reap nothing.
                std::mem::forget(child);
                return Ok(ExitCode::SUCCESS);
            }
            s if !s.is_active() || !alive => {
                let _ = child.try_wait();
                let r = state::read(&state_root, &name)?;
                let tail = r.tail.clone().unwrap_or_default();
                anyhow::bail!(
                    "{name} {}: {}{}",
                    crate::run::describe(&r),
                    r.error
                        .clone()
                        .unwrap_or_else(|| "the VM ended before it was ready".into()),
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!("\nLast console lines:\n{tail}")
                    }
                );
            }
            _ => {}
        }
        if Instant::now() > deadline {
            std::mem::forget(child);
            anyhow::bail!(
                "{name} is not ready after {} s (state {}, {} restarts); it is still supervised: see `kiln logs {name}`, stop it with `kiln stop {name}`",
                wait.as_secs(),
                r.state,
                r.restarts
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How one QEMU run ended.
struct RunEnd {
    ready: bool,
    not_ready: bool,
    rc_status: Option<i32>,
    status: Option<std::process::ExitStatus>,
    stopped: Option<StopOutcome>,
    tail: String,
    ran: Duration,
    ready_timeout: Duration,
}

/// The hidden `kiln __supervise NAME`.
pub fn supervise(name: &str) -> Result<ExitCode> {
    // Wait until `kiln run` has written the record (it closes our stdin then).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    let root = dirs::state_root();
    let dir = state::vm_dir(&root, name);
    let mut rec = state::read_raw(&root, name)?;
    let _ = std::fs::write(dir.join(PID_FILE), format!("{}\n", std::process::id()));
    let stop = crate::run::stop_on_signals()?;
    let paths = supervised_paths(&dir);
    let hub = Hub::new(&paths.console_log)?;
    hub.serve_unix(&dir.join("console.sock"))?;
    let verbose = std::env::var("KILN_VERBOSE_BOOT").is_ok_and(|v| v == "1");
    let accel = if rec.accel == "kvm" {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let policy = rec.config.restart_policy();
    let mut backoff = backoff_start();
    let mut first = true;
    loop {
        let end = match run_once(
            &mut rec, &root, &dir, &paths, &hub, &stop, accel, verbose, first,
        ) {
            Ok(e) => e,
            Err(e) => {
                rec.state = VmState::Failed;
                rec.pid = 0;
                rec.error = Some(format!("{e:#}"));
                state::write(&root, &rec)?;
                break;
            }
        };
        first = false;
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
        if let Some(how) = end.stopped {
            rec.state = VmState::Exited;
            rec.stopped = Some(format!("{how:?}"));
            state::write(&root, &rec)?;
            break;
        }
        if end.not_ready {
            rec.state = VmState::Failed;
            rec.error = Some(format!(
                "the guest did not become ready within {} s; it was stopped",
                end.ready_timeout.as_secs()
            ));
            rec.tail = Some(end.tail);
            state::write(&root, &rec)?;
            break;
        }
        let crashed = rec.signal.is_some();
        let failure = crashed || rec.exit_code != Some(0);
        let again = match policy {
            Restart::No => false,
            Restart::OnFailure => failure,
            Restart::Always => true,
        };
        if failure {
            rec.tail = Some(end.tail);
            rec.error = Some(if crashed {
                format!("QEMU was killed by signal {}", rec.signal.unwrap_or(0))
            } else {
                format!("exited with status {}", rec.exit_code.unwrap_or(-1))
            });
        }
        if !again {
            rec.state = if crashed {
                VmState::Crashed
            } else {
                VmState::Exited
            };
            state::write(&root, &rec)?;
            break;
        }
        if end.ran > BACKOFF_RESET || (end.ready && end.ran > backoff * 4) {
            backoff = backoff_start();
        }
        rec.restarts += 1;
        rec.state = VmState::Restarting;
        state::write(&root, &rec)?;
        hub.note(&format!(
            "{}; restart {} in {} ms ({policy:?})",
            rec.error.clone().unwrap_or_else(|| "VM ended".into()),
            rec.restarts,
            backoff.as_millis()
        ));
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if stop.load(Ordering::Relaxed) {
            rec.state = VmState::Exited;
            rec.stopped = Some("while waiting to restart".into());
            state::write(&root, &rec)?;
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    for s in [
        "console.sock",
        "qemu-console.sock",
        "control.sock",
        "qmp.sock",
    ] {
        let _ = std::fs::remove_file(dir.join(s));
    }
    let _ = std::fs::remove_file(dir.join(PID_FILE));
    let _ = std::fs::remove_file(dir.join(STOP_REQUEST));
    Ok(ExitCode::SUCCESS)
}

/// What `kiln stop`/`kiln kill` asked for: a graceful stop's grace, or `None` to kill.
pub(crate) fn stop_request(dir: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(dir.join(STOP_REQUEST)).unwrap_or_default();
    let mut words = text.split_whitespace();
    match words.next() {
        Some("kill") => None,
        _ => Some(Duration::from_secs(
            words.next().and_then(|w| w.parse().ok()).unwrap_or(10),
        )),
    }
}

/// One QEMU run: spawn (from this, the main thread: PDEATHSIG follows the spawning thread),
/// attach the console, watch for ready / deadline / stop, and wait for the end.
#[allow(clippy::too_many_arguments)]
fn run_once(
    rec: &mut VmRecord,
    root: &Path,
    dir: &Path,
    paths: &RunPaths,
    hub: &Hub,
    stop: &AtomicBool,
    accel: Accel,
    verbose: bool,
    first: bool,
) -> Result<RunEnd> {
    let image_dir = Path::new(&rec.image);
    let m = kiln_build::load_image(image_dir)?;
    let plan = plan_config(&rec.config, image_dir, &m, dir, accel, true, verbose)?;
    if first {
        if let Some(addr) = plan.serial_tcp {
            hub.serve_tcp(addr)?;
        }
    }
    let qemu = kiln_vm::check_qemu()?;
    let mut vm = runner::spawn(&qemu, &plan.spec, paths, false)?;
    rec.state = VmState::Starting;
    rec.pid = vm.pid();
    rec.pid_start = runner::pid_start_time(vm.pid());
    rec.started = state::now();
    rec.ready_ms = None;
    state::write(root, rec)?;
    let console = vm.connect_console()?;
    hub.set_guest(console.try_clone().ok());
    let parser = Arc::new(Mutex::new(LineParser::new(40)));
    let sink: Box<dyn Write + Send> = Box::new(hub.sink());
    let events = runner::read_console(console, Some(sink), parser.clone());
    let deadline = vm.started + plan.ready_timeout;
    let mut end = RunEnd {
        ready: false,
        not_ready: false,
        rc_status: None,
        status: None,
        stopped: None,
        tail: String::new(),
        ran: Duration::ZERO,
        ready_timeout: plan.ready_timeout,
    };
    if plan.ready_at_launch {
        end.ready = true;
        rec.state = VmState::Running;
        rec.ready_ms = Some(0);
        state::write(root, rec)?;
    }
    let mut closed = false;
    loop {
        if stop.load(Ordering::Relaxed) && end.stopped.is_none() {
            rec.state = VmState::Stopping;
            state::write(root, rec)?;
            end.stopped = Some(match stop_request(dir) {
                Some(grace) => vm.stop(grace),
                None => {
                    let _ = vm.child.kill();
                    let _ = vm.child.wait();
                    StopOutcome::Killed
                }
            });
        }
        match events.recv_timeout(Duration::from_millis(20)) {
            Ok(ConsoleMsg::Event(ConsoleEvent::Ready { guest_ms })) => {
                end.ready = true;
                if end.stopped.is_none() {
                    rec.state = VmState::Running;
                    rec.ready_ms = Some(guest_ms);
                    state::write(root, rec)?;
                }
            }
            Ok(ConsoleMsg::Event(ConsoleEvent::RcExited { status })) => {
                end.rc_status = Some(status)
            }
            Ok(ConsoleMsg::Event(_)) => {}
            Ok(ConsoleMsg::Closed) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                closed = true;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if !end.ready && end.stopped.is_none() && !end.not_ready && Instant::now() > deadline {
            end.not_ready = true;
            vm.stop(Duration::from_secs(3));
        }
        if let Some(s) = vm.try_wait() {
            end.status = Some(s);
            // Drain what is left of the console (bounded), so the log has the last lines.
            let drain_until = Instant::now() + Duration::from_millis(500);
            while !closed && Instant::now() < drain_until {
                match events.recv_timeout(Duration::from_millis(20)) {
                    Ok(ConsoleMsg::Event(ConsoleEvent::RcExited { status })) => {
                        end.rc_status = Some(status)
                    }
                    Ok(ConsoleMsg::Closed) => closed = true,
                    _ => {}
                }
            }
            break;
        }
        if closed {
            end.status = vm.wait_exit(Duration::from_secs(5));
            if end.status.is_none() {
                // The console closed but QEMU lingers: end it.
                vm.stop(Duration::from_secs(1));
                end.status = vm.try_wait();
            }
            break;
        }
    }
    end.ran = vm.started.elapsed();
    vm.reap_helpers();
    hub.set_guest(None);
    end.tail = parser.lock().map(|p| p.tail()).unwrap_or_default();
    Ok(end)
}

/// Ask the supervisor of `rec` to stop its VM (`timeout` None: kill at once) and wait for it.
/// Returns how the stop went, as the supervisor recorded it.
pub fn request_stop(root: &Path, rec: &VmRecord, timeout: Option<u64>) -> Result<String> {
    let dir = state::vm_dir(root, &rec.name);
    if !state::supervisor_alive(rec) {
        // Not supervised (reconciled away, or the record predates supervisors): stop QEMU directly.
        if state::qemu_alive(rec) {
            let o = runner::stop_pid(
                rec.pid,
                &supervised_paths(&dir),
                Duration::from_secs(timeout.unwrap_or(0)),
            );
            return Ok(format!("{o:?}"));
        }
        return Ok("AlreadyExited".into());
    }
    let req = match timeout {
        Some(t) => format!("graceful {t}\n"),
        None => "kill\n".into(),
    };
    kiln_image::atomic_write(&dir.join(STOP_REQUEST), req.as_bytes())
        .with_context(|| format!("writing {}", dir.join(STOP_REQUEST).display()))?;
    // SAFETY: kill(2) on the supervisor we verified (pid + start time) is alive.
    unsafe {
        libc::kill(rec.supervisor_pid as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(timeout.unwrap_or(0) + 20);
    while state::supervisor_alive(rec) {
        if Instant::now() > deadline {
            // SAFETY: as above; QEMU dies with its supervisor (PDEATHSIG).
            unsafe {
                libc::kill(rec.supervisor_pid as libc::pid_t, libc::SIGKILL);
            }
            let _ = state::read(root, &rec.name);
            return Ok("Killed (the supervisor did not answer)".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // A foreground run removes its record as it ends.
    let Ok(after) = state::read(root, &rec.name) else {
        return Ok("Graceful (the foreground run ended)".into());
    };
    Ok(after
        .stopped
        .clone()
        .unwrap_or_else(|| crate::run::describe(&after)))
}

/// Refuse with exit code 2 when there is no such VM.
pub fn must_read(root: &Path, name: &str) -> Result<VmRecord> {
    state::read(root, name).map_err(|e| BadInput(e.to_string()).into())
}
