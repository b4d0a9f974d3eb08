//! VMs kept by the process that started them: a foreground `kiln run`, `kiln bench`,
//! `kiln trace`. They go through the same admission as detached VMs (name, ports and disk
//! held), are recorded (listed by `ps`, stoppable by name: `kiln stop` sends this process
//! SIGTERM and leaves a stop request), run in the VM's folder of the state folder, and are
//! forgotten (record and sockets) when the [`Foreground`] is dropped.

use crate::error::{FleetError, Result};
use crate::fleet::{Fleet, Prepared};
use crate::plan::{self, Plan};
use crate::record::VmState;
use crate::store::Store;
use crate::watch::{Ended, Seen, Session, Until, Watched};
use kiln_vm::{Accel, ConsoleEvent};
use std::io::Write;
use std::sync::atomic::AtomicBool;

/// A recorded foreground VM; removed from the state folder when dropped.
struct Registration {
    store: Store,
    name: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self.store.remove(&self.name);
    }
}

/// A running foreground VM: its plan and its watched QEMU.
pub struct Foreground {
    /// The QEMU run (dropped first: QEMU never outlives it).
    pub session: Session,
    /// What was started.
    pub plan: Plan,
    reg: Registration,
}

impl Fleet {
    /// Admit and record `p` as kept by this process, start QEMU and attach its console
    /// (copied to `sink`).
    pub fn launch_foreground(
        &self,
        p: &Prepared,
        accel: Accel,
        verbose: bool,
        sink: Option<Box<dyn Write + Send>>,
    ) -> Result<Foreground> {
        let me = std::process::id();
        let (plan, ()) = self.admit(p, accel, false, verbose, |rec| {
            rec.supervisor_pid = me;
            rec.supervisor_start = self.host().process_start(me);
            rec.foreground = true;
            Ok(())
        })?;
        let reg = Registration {
            store: self.store().clone(),
            name: plan.name.clone(),
        };
        let mut session = Session::start(&plan, &plan::run_paths(&plan.run_dir, false), sink)?;
        session.join_nets(self, &plan);
        let pid = session.vm.pid();
        self.store().update(&plan.name, |r| {
            r.pid = pid;
            r.pid_start = kiln_vm::runner::pid_start_time(pid);
        });
        let fg = Foreground { session, plan, reg };
        if fg.plan.ready_at_launch {
            fg.mark_ready(0);
        }
        Ok(fg)
    }
}

impl Foreground {
    fn mark_ready(&self, guest_ms: u64) {
        self.reg.store.update(&self.reg.name, |r| {
            r.state = VmState::Running;
            r.ready_ms = Some(guest_ms);
        });
    }

    /// [`Session::watch`], with readiness recorded.
    pub fn watch(
        &mut self,
        until: Until,
        stop: &AtomicBool,
        on: &mut dyn FnMut(Seen<'_>),
    ) -> Watched {
        let (store, name) = (self.reg.store.clone(), self.reg.name.clone());
        let mut with_record = |seen: Seen<'_>| {
            match &seen {
                Seen::Console(
                    ConsoleEvent::Ready { guest_ms } | ConsoleEvent::Thawed { ms: guest_ms },
                ) => store.update(&name, |r| {
                    r.state = VmState::Running;
                    r.ready_ms = Some(*guest_ms);
                }),
                Seen::Stopping => store.update(&name, |r| r.state = VmState::Stopping),
                _ => {}
            }
            on(seen);
        };
        self.session.watch(until, stop, &mut with_record)
    }

    /// The exit code a foreground run ends with: etc/rc's status when the guest reported it,
    /// 0 after a requested stop, else QEMU's; an error when the guest never became ready or
    /// QEMU failed.
    pub fn exit_code(&mut self, end: &Ended) -> Result<u8> {
        if let Some(s) = end.rc_status {
            return Ok(s.clamp(0, 255) as u8);
        }
        if end.stopped.is_some() {
            return Ok(0);
        }
        if end.not_ready {
            return Err(kiln_vm::VmError::NotReady {
                seconds: end.ready_timeout.as_secs(),
                tail: end.tail.clone(),
            }
            .into());
        }
        let qemu_failed = |status: String| -> FleetError {
            kiln_vm::VmError::QemuExited {
                status,
                output: format!("{}{}", self.session.vm.qemu_stderr(), end.tail),
            }
            .into()
        };
        if end.ready.is_none() {
            // QEMU ended on its own before the guest was ready and without etc/rc's status: a
            // kernel panic, an init that could not start, a guest that ran out of memory.
            return Err(qemu_failed(format!(
                "the guest stopped before it was ready ({})",
                end.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "still running".into())
            )));
        }
        match end.status {
            Some(s) if s.success() => Ok(0),
            Some(s) => Err(qemu_failed(s.to_string())),
            None => Ok(1),
        }
    }
}
