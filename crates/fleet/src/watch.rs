//! The one loop that watches a running VM, whoever keeps it (a foreground `kiln run`, a
//! supervisor, `kiln bench`, `kiln trace`): it reads the console's `kiln:` events, enforces the
//! readiness deadline, carries out a stop request (graceful with a grace time, or a kill), and
//! on QEMU's end drains what is left of the console.

use crate::error::FleetError;
use crate::plan::Plan;
use crate::store::STOP_REQUEST;
use crate::template::{self, Restore};
use kiln_vm::runner::{self, ConsoleMsg, Launched};
use kiln_vm::{ConsoleEvent, LineParser, StopOutcome};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a stop request asks: a graceful stop's grace time, or `None` to kill now. Written to
/// the VM's folder by `kiln stop`/`kill` before its keeper gets SIGTERM; a stop without a
/// request (Ctrl-], a terminal's signal) is graceful with 10 s.
pub fn stop_request(dir: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(dir.join(STOP_REQUEST)).unwrap_or_default();
    let mut words = text.split_whitespace();
    match words.next() {
        Some("kill") => None,
        _ => Some(Duration::from_secs(
            words.next().and_then(|w| w.parse().ok()).unwrap_or(10),
        )),
    }
}

/// Write a stop request into `dir` (`None`: kill).
pub fn write_stop_request(dir: &Path, grace: Option<Duration>) -> std::io::Result<()> {
    let req = match grace {
        Some(t) => format!("graceful {}\n", t.as_secs()),
        None => "kill\n".into(),
    };
    kiln_image::atomic_write(&dir.join(STOP_REQUEST), req.as_bytes())
}

/// A flag raised by SIGINT, SIGTERM or SIGHUP: the signals that ask a VM's keeper to stop it.
pub fn stop_on_signals() -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// What the watcher reports as it goes.
#[derive(Debug)]
pub enum Seen<'a> {
    /// A `kiln:` line from the guest.
    Console(&'a ConsoleEvent),
    /// A stop was asked for and is being carried out.
    Stopping,
    /// The readiness deadline passed; the VM is being stopped.
    NotReady,
}

/// Watch until the guest is ready (the VM keeps running) or until QEMU ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Return at readiness.
    Ready,
    /// Return when QEMU has ended.
    End,
}

/// How one QEMU run ended.
#[derive(Debug, Default)]
pub struct Ended {
    /// When the guest became ready (host instant, guest ms), if it did.
    pub ready: Option<(Instant, u64)>,
    /// The deadline passed before readiness (the VM was stopped for it).
    pub not_ready: bool,
    /// etc/rc's exit status, as the guest reported it.
    pub rc_status: Option<i32>,
    /// QEMU's exit status.
    pub status: Option<ExitStatus>,
    /// How a requested stop went.
    pub stopped: Option<StopOutcome>,
    /// The console's last lines.
    pub tail: String,
    /// How long QEMU ran.
    pub ran: Duration,
    /// The readiness deadline it had.
    pub ready_timeout: Duration,
}

/// What [`Session::watch`] returns.
#[derive(Debug)]
pub enum Watched {
    /// The guest is ready (only with [`Until::Ready`]); the VM runs on.
    Ready,
    /// QEMU ended.
    Ended(Ended),
}

/// One running QEMU and its console.
pub struct Session {
    /// The QEMU process.
    pub vm: Launched,
    events: Receiver<ConsoleMsg>,
    parser: Arc<Mutex<LineParser>>,
    deadline: Instant,
    ready_timeout: Duration,
    stop_dir: PathBuf,
    console: Option<std::os::unix::net::UnixStream>,
    end: Ended,
    closed: bool,
    /// A restored guest's QMP connection, kept to bring its link up once it is thawed.
    link_pending: Option<kiln_vm::qmp::Qmp>,
    /// The exec channel's relay (`exec.sock`), while QEMU runs.
    exec: Option<crate::exec::Relay>,
    /// Raised when the guest is ready (the nets' companion starts pushing names then).
    ready_flag: Arc<AtomicBool>,
    /// Keeps the VM's nets' switches up and its `/etc/hosts` current, while QEMU runs.
    member: Option<crate::net::Member>,
}

impl Session {
    /// Spawn QEMU for `plan` (files in `paths`), attach its console (copied to `sink`), and when
    /// the plan restores a saved state, restore it and give the guest its identity (thaw).
    pub fn start(
        plan: &Plan,
        paths: &kiln_vm::RunPaths,
        sink: Option<Box<dyn Write + Send>>,
    ) -> Result<Session, FleetError> {
        let qemu = kiln_vm::check_qemu()?;
        let vm = runner::spawn(&qemu, &plan.spec, paths, false)?;
        let mut s = Session::attach(
            vm,
            sink,
            plan.ready_timeout,
            plan.ready_at_launch,
            &plan.run_dir,
        )?;
        if let Some(sock) = &plan.spec.exec_socket {
            s.exec = Some(crate::exec::Relay::start(
                sock.clone(),
                paths.dir.join(crate::exec::EXEC_SOCKET),
                Duration::from_secs(10),
            ));
        }
        if let Some(r) = &plan.restore {
            s.resume(r, &plan.name, plan.spec.net != kiln_vm::NetSpec::None)?;
        }
        Ok(s)
    }

    /// Keep `plan`'s nets for as long as this session runs: their switches running, the
    /// guest's peers pushed to it by name once it is ready.
    pub(crate) fn join_nets(&mut self, fleet: &crate::Fleet, plan: &Plan) {
        if plan.config.nets.is_empty() {
            return;
        }
        self.member = Some(crate::net::Member::start(
            fleet.clone(),
            plan.name.clone(),
            plan.config.nets.clone(),
            plan.spec.control_socket.clone(),
            self.ready_flag.clone(),
        ));
    }

    /// The clone has its own entropy and name: now it may be reached.
    fn link_up(&mut self) {
        if let Some(mut q) = self.link_pending.take() {
            if let Err(e) = q.set_link(kiln_vm::qemu::NETDEV_ID, true) {
                tracing::warn!("bringing the restored guest's link up: {e}");
            }
            tracing::debug!(ms = self.vm.started.elapsed().as_millis() as u64, "link up");
        }
    }

    /// Restore the saved state into this waiting QEMU and give the guest its identity (thaw):
    /// fresh entropy, `hostname`, the host's clock. Its link (saved down) comes up when the
    /// guest says it is thawed ([`Session::watch`]).
    fn resume(&mut self, r: &Restore, hostname: &str, nic: bool) -> Result<(), FleetError> {
        let paths = self.vm.paths.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut q = loop {
            match kiln_vm::qmp::Qmp::connect(&paths.qmp_socket) {
                Ok(q) => break q,
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => {
                    if let Some(s) = self.vm.try_wait() {
                        return Err(FleetError::Other(format!(
                            "QEMU exited before the restore ({s}): {}",
                            self.vm.qemu_stderr()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        tracing::debug!(
            ms = self.vm.started.elapsed().as_millis() as u64,
            "QMP connected"
        );
        q.restore(&r.uri(), r.ram.is_some(), Duration::from_secs(60))?;
        tracing::debug!(
            ms = self.vm.started.elapsed().as_millis() as u64,
            "restored, running"
        );
        template::send_control(
            &paths.control_socket,
            &template::thaw_line(&template::fresh_seed()?, hostname),
        )?;
        tracing::debug!(
            ms = self.vm.started.elapsed().as_millis() as u64,
            "thaw sent"
        );
        if nic {
            self.link_pending = Some(q);
        }
        Ok(())
    }

    /// Attach to `vm`'s console (copied to `sink`), with `ready_timeout` from launch; stop
    /// requests are read from `stop_dir`. `ready_at_launch` counts the guest ready at once.
    pub fn attach(
        mut vm: Launched,
        sink: Option<Box<dyn Write + Send>>,
        ready_timeout: Duration,
        ready_at_launch: bool,
        stop_dir: &Path,
    ) -> Result<Session, kiln_vm::VmError> {
        let console = vm.connect_console()?;
        let input = console.try_clone().ok();
        let parser = Arc::new(Mutex::new(LineParser::new(40)));
        let events = runner::read_console(console, sink, parser.clone());
        let mut end = Ended::default();
        if ready_at_launch {
            end.ready = Some((vm.started, 0));
        }
        Ok(Session {
            deadline: vm.started + ready_timeout,
            vm,
            events,
            parser,
            ready_timeout,
            stop_dir: stop_dir.to_path_buf(),
            console: input,
            end,
            closed: false,
            link_pending: None,
            exec: None,
            ready_flag: Arc::new(AtomicBool::new(ready_at_launch)),
            member: None,
        })
    }

    /// A handle to type into the guest's console.
    pub fn console_input(&self) -> Option<std::os::unix::net::UnixStream> {
        self.console.as_ref().and_then(|c| c.try_clone().ok())
    }

    /// When QEMU was launched.
    pub fn launched(&self) -> Instant {
        self.vm.started
    }

    /// The readiness deadline given.
    pub fn ready_timeout(&self) -> Duration {
        self.ready_timeout
    }

    /// When the guest became ready, if it has.
    pub fn ready(&self) -> Option<(Instant, u64)> {
        self.end.ready
    }

    /// The console's last lines.
    pub fn tail(&self) -> String {
        self.parser.lock().map(|p| p.tail()).unwrap_or_default()
    }

    /// Wait up to `timeout` for the next `kiln:` event (for what follows readiness, such as the
    /// timeline line).
    pub fn next_event(&mut self, timeout: Duration) -> Option<ConsoleEvent> {
        match self.events.recv_timeout(timeout) {
            Ok(ConsoleMsg::Event(e)) => Some(e),
            Ok(ConsoleMsg::Closed) => {
                self.closed = true;
                None
            }
            Err(_) => None,
        }
    }

    fn carry_out_stop(&mut self) -> StopOutcome {
        match stop_request(&self.stop_dir) {
            Some(grace) => self.vm.stop(grace),
            None => {
                let _ = self.vm.child.kill();
                let _ = self.vm.child.wait();
                StopOutcome::Killed
            }
        }
    }

    /// The loop: events, deadline, stop, end. `on` sees every event as it happens.
    pub fn watch(
        &mut self,
        until: Until,
        stop: &AtomicBool,
        on: &mut dyn FnMut(Seen<'_>),
    ) -> Watched {
        loop {
            if stop.load(Ordering::Relaxed) && self.end.stopped.is_none() {
                on(Seen::Stopping);
                self.end.stopped = Some(self.carry_out_stop());
            }
            match self.events.recv_timeout(Duration::from_millis(20)) {
                Ok(ConsoleMsg::Event(ev)) => {
                    match &ev {
                        ConsoleEvent::Ready { guest_ms }
                        | ConsoleEvent::Thawed { ms: guest_ms }
                            if self.end.ready.is_none() =>
                        {
                            self.link_up();
                            self.end.ready = Some((Instant::now(), *guest_ms));
                            self.ready_flag.store(true, Ordering::Relaxed);
                        }
                        ConsoleEvent::Thawed { .. } => self.link_up(),
                        ConsoleEvent::RcExited { status } => self.end.rc_status = Some(*status),
                        _ => {}
                    }
                    on(Seen::Console(&ev));
                    if until == Until::Ready
                        && self.end.ready.is_some()
                        && matches!(ev, ConsoleEvent::Ready { .. } | ConsoleEvent::Thawed { .. })
                    {
                        return Watched::Ready;
                    }
                }
                Ok(ConsoleMsg::Closed) | Err(RecvTimeoutError::Disconnected) => self.closed = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if until == Until::Ready && self.end.ready.is_some() && self.end.stopped.is_none() {
                // Ready at launch.
                return Watched::Ready;
            }
            if self.end.ready.is_none()
                && self.end.stopped.is_none()
                && !self.end.not_ready
                && Instant::now() > self.deadline
            {
                self.end.not_ready = true;
                on(Seen::NotReady);
                self.vm.stop(Duration::from_secs(3));
            }
            if let Some(s) = self.vm.try_wait() {
                self.end.status = Some(s);
                self.drain(on);
                return Watched::Ended(self.finish());
            }
            if self.closed {
                self.end.status = self.vm.wait_exit(Duration::from_secs(5));
                if self.end.status.is_none() {
                    // The console closed but QEMU lingers: end it.
                    self.vm.stop(Duration::from_secs(1));
                    self.end.status = self.vm.try_wait();
                }
                return Watched::Ended(self.finish());
            }
        }
    }

    /// Stop the VM now (graceful with `grace`, then QMP quit, then a kill) and wait for its end.
    pub fn stop(&mut self, grace: Duration) -> Ended {
        let outcome = self.vm.stop(grace);
        self.end.stopped = Some(outcome);
        self.end.status = self.vm.try_wait();
        let mut ignore = |_: Seen<'_>| {};
        self.drain(&mut ignore);
        self.finish()
    }

    /// Read what is left of the console (bounded), so the tail and rc's status are complete.
    fn drain(&mut self, on: &mut dyn FnMut(Seen<'_>)) {
        let until = Instant::now() + Duration::from_millis(500);
        while !self.closed && Instant::now() < until {
            match self.events.recv_timeout(Duration::from_millis(20)) {
                Ok(ConsoleMsg::Event(ev)) => {
                    if let ConsoleEvent::RcExited { status } = ev {
                        self.end.rc_status = Some(status);
                    }
                    on(Seen::Console(&ev));
                }
                Ok(ConsoleMsg::Closed) | Err(RecvTimeoutError::Disconnected) => self.closed = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn finish(&mut self) -> Ended {
        if let Some(r) = self.exec.take() {
            r.shutdown();
        }
        self.member = None;
        self.vm.reap_helpers();
        let mut end = std::mem::take(&mut self.end);
        end.ran = self.vm.started.elapsed();
        end.ready_timeout = self.ready_timeout;
        end.tail = self.tail();
        // A later watch (there is none after an end) starts clean but keeps readiness.
        self.end.ready = end.ready;
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_requests_read_back() {
        let d = tempfile::tempdir().expect("tmp");
        assert_eq!(
            stop_request(d.path()),
            Some(Duration::from_secs(10)),
            "none: graceful 10 s"
        );
        write_stop_request(d.path(), Some(Duration::from_secs(3))).expect("w");
        assert_eq!(stop_request(d.path()), Some(Duration::from_secs(3)));
        write_stop_request(d.path(), None).expect("w");
        assert_eq!(stop_request(d.path()), None);
    }
}
