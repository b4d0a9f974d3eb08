//! Operations on VMs by name: list, get, stop (graceful with a grace time, or a kill),
//! remove, where a VM's console and log are, and `exec`/`cp` through its exec channel. A stop goes through the VM's keeper (its
//! supervisor, or the foreground `kiln run`): a stop request in its folder, then SIGTERM, then
//! a wait; a keeper that does not answer is killed (QEMU dies with it).

use crate::error::{FleetError, Result};
use crate::fleet::Fleet;
use crate::plan::run_paths;
use crate::record::{Row, VmRecord};
use crate::watch::write_stop_request;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a keeper has, beyond the grace time, to end after a stop request.
const KEEPER_SLACK: Duration = Duration::from_secs(20);

/// What a stop did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running (its status).
    NotRunning(String),
    /// It was stopped: how (Graceful, Quit, Killed, ...) and how long it took.
    Done {
        /// How.
        how: String,
        /// How long.
        took: Duration,
    },
}

impl Fleet {
    /// Every VM, reconciled, sorted by name.
    pub fn list(&self) -> Vec<VmRecord> {
        self.store().list()
    }

    /// Every VM as listed.
    pub fn rows(&self) -> Vec<Row> {
        let now = self.host().now();
        self.list().iter().map(|r| Row::of(r, now)).collect()
    }

    /// VM `name`'s record, reconciled.
    pub fn get(&self, name: &str) -> Result<VmRecord> {
        self.store().read(name)
    }

    /// Stop VM `name`: `grace` for the guest to power off, `None` to kill it now.
    pub fn stop(&self, name: &str, grace: Option<Duration>) -> Result<Stopped> {
        let rec = self.get(name)?;
        if !rec.state.is_active() {
            return Ok(Stopped::NotRunning(rec.status()));
        }
        let t = Instant::now();
        let how = self.stop_record(&rec, grace)?;
        Ok(Stopped::Done {
            how,
            took: t.elapsed(),
        })
    }

    fn stop_record(&self, rec: &VmRecord, grace: Option<Duration>) -> Result<String> {
        let host = self.host();
        let dir = self.store().vm_dir(&rec.name);
        if !rec.supervisor_alive(host) {
            // Not kept (reconciled away, or a record from before supervisors): stop QEMU directly.
            if rec.qemu_alive(host) {
                let o = kiln_vm::runner::stop_pid(
                    rec.pid,
                    &run_paths(&dir, !rec.foreground),
                    grace.unwrap_or(Duration::ZERO),
                );
                return Ok(format!("{o:?}"));
            }
            return Ok("AlreadyExited".into());
        }
        // A full disk must not keep a VM running: without a request the keeper still takes
        // SIGTERM as a graceful stop (its default time), and a kill goes to it directly (QEMU
        // dies with its keeper).
        let unwritten = write_stop_request(&dir, grace).err();
        let sig = match (&unwritten, grace) {
            (Some(_), None) => libc::SIGKILL,
            _ => libc::SIGTERM,
        };
        host.signal(rec.supervisor_pid, sig);
        // Without the request the keeper cannot record how the VM ended either.
        let note = |how: String| match &unwritten {
            Some(e) => format!(
                "by a signal to its keeper: no stop request could be written in {} ({e}), \
                 so its record may say crashed",
                dir.display()
            ),
            None => how,
        };
        let deadline = Instant::now() + grace.unwrap_or(Duration::ZERO) + KEEPER_SLACK;
        while rec.supervisor_alive(host) {
            if Instant::now() > deadline {
                host.signal(rec.supervisor_pid, libc::SIGKILL);
                let _ = self.store().read(&rec.name);
                return Ok(note("Killed (its keeper did not answer)".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // A foreground run removes its record as it ends.
        let Ok(after) = self.store().read(&rec.name) else {
            return Ok(note("Graceful (the foreground run ended)".into()));
        };
        Ok(note(
            after.stopped.clone().unwrap_or_else(|| after.status()),
        ))
    }

    /// Forget VM `name` (record, sockets, logs); `force` kills a running one first. An
    /// unreadable record is removed too.
    pub fn remove(&self, name: &str, force: bool) -> Result<()> {
        match self.get(name) {
            Ok(rec) => {
                if rec.is_live(self.host()) || rec.qemu_alive(self.host()) {
                    if !force {
                        return Err(FleetError::BadInput(format!(
                            "{name} is {}: stop it first (`kiln stop {name}`), or `kiln rm -f {name}` to kill and remove it",
                            rec.state
                        )));
                    }
                    self.stop_record(&rec, None)?;
                }
            }
            Err(FleetError::BadRecord { .. }) => {}
            Err(e) => return Err(e),
        }
        self.store().remove(name)
    }

    /// The socket VM `name`'s console is served on, if it is a live detached VM.
    pub fn console_socket(&self, name: &str) -> Result<PathBuf> {
        let rec = self.get(name)?;
        refuse_foreground(&rec, self.host())?;
        if !rec.is_live(self.host()) {
            return Err(FleetError::BadInput(format!(
                "{name} is not running ({}); `kiln logs {name}` shows its console log",
                rec.status()
            )));
        }
        Ok(self.store().vm_dir(name).join("console.sock"))
    }

    /// VM `name`'s console log (it may not exist yet) and its record.
    pub fn console_log(&self, name: &str) -> Result<(PathBuf, VmRecord)> {
        let rec = self.get(name)?;
        refuse_foreground(&rec, self.host())?;
        Ok((self.store().vm_dir(name).join("console.log"), rec))
    }
}

impl Fleet {
    /// The exec channel of VM `name`: it must be running (ready) and its guest must have
    /// kiln-init (BSD guests have none).
    pub fn exec_socket(&self, name: &str) -> Result<PathBuf> {
        let rec = self.get(name)?;
        if !rec.is_live(self.host()) || rec.state != crate::record::VmState::Running {
            return Err(FleetError::BadInput(format!(
                "{name} is not running ({}): `kiln exec` and `kiln cp` need a running VM",
                rec.status()
            )));
        }
        let sock = self.store().vm_dir(name).join(crate::exec::EXEC_SOCKET);
        if !sock.exists() {
            return Err(FleetError::BadInput(format!(
                "{name} has no exec channel: its guest has no kiln-init (a BSD guest), it has less than {} MiB of memory on a kernel without Kiln's small virtio rings (the channel's buffers do not fit; start it with --memory {} or more, or rebuild the image with kernel = \"tiny\"), or it was started by an older kiln (restart it)",
                crate::plan::EXEC_MIN_MEMORY_MIB,
                crate::plan::EXEC_MIN_MEMORY_MIB
            )));
        }
        Ok(sock)
    }

    /// Start a command in running VM `name` (see [`crate::exec`]).
    pub fn exec(
        &self,
        name: &str,
        req: &crate::exec::ExecRequest,
    ) -> Result<crate::exec::ExecSession> {
        let sock = self.exec_socket(name)?;
        crate::exec::ExecSession::start(name, &sock, req)
    }

    /// Copy the regular file `path` out of running VM `name` into `out`; its mode. A file
    /// the guest cannot send is the user's error (its message says why).
    pub fn copy_from_vm(
        &self,
        name: &str,
        path: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<u32> {
        let sock = self.exec_socket(name)?;
        crate::exec::copy_from(name, &sock, path, out)
    }

    /// Copy `input` into running VM `name` as the file `path` with permission bits `mode`.
    pub fn copy_to_vm(
        &self,
        name: &str,
        path: &str,
        mode: u32,
        input: &mut dyn std::io::Read,
    ) -> Result<()> {
        let sock = self.exec_socket(name)?;
        crate::exec::copy_to(name, &sock, path, mode, input)
    }
}

/// A foreground VM's console is the terminal of its `kiln run`: no log, no socket to attach.
fn refuse_foreground(rec: &VmRecord, host: &dyn crate::host::Host) -> Result<()> {
    if rec.foreground {
        if !rec.supervisor_alive(host) {
            return Err(FleetError::BadInput(format!(
                "{} ran in the foreground of `kiln run` (pid {}, gone): its console went to that terminal and no log was kept; `kiln rm {}` removes its record",
                rec.name, rec.supervisor_pid, rec.name
            )));
        }
        return Err(FleetError::BadInput(format!(
            "{} runs in the foreground of `kiln run` (pid {}): its console is that terminal; start it with `kiln run -d` for logs and `kiln console`",
            rec.name, rec.supervisor_pid
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;
    use crate::record::tests::rec;
    use crate::record::VmState;
    use std::sync::Arc;

    fn fleet(host: Arc<FakeHost>) -> (tempfile::TempDir, Fleet) {
        let d = tempfile::tempdir().expect("tmp");
        let f = Fleet::with_host(
            d.path().join("state"),
            d.path().join("cache"),
            host,
            vec!["kiln".into(), "__supervise".into()],
        );
        (d, f)
    }

    #[test]
    fn logs_of_a_foreground_vm_say_whether_its_run_is_alive() {
        let h = Arc::new(FakeHost::new().with_process(100, 10));
        let (_d, f) = fleet(h.clone());
        let mut r = rec("web");
        r.foreground = true;
        f.store().write(&r).expect("w");
        let e = f.console_log("web").expect_err("refused").to_string();
        assert!(
            e.contains("runs in the foreground") && e.contains("pid 100"),
            "{e}"
        );
        // Its `kiln run` was killed: the record stays (crashed) until removed.
        h.end_process(100);
        let e = f.console_log("web").expect_err("refused").to_string();
        assert!(
            e.contains("ran in the foreground") && e.contains("kiln rm web"),
            "{e}"
        );
        let e = f.console_socket("web").expect_err("refused").to_string();
        assert!(e.contains("(pid 100, gone)"), "{e}");
    }

    #[test]
    fn stopping_an_ended_vm_says_so_and_signals_nobody() {
        let h = Arc::new(FakeHost::new());
        let (_d, f) = fleet(h.clone());
        let mut r = rec("web");
        r.state = VmState::Exited;
        r.exit_code = Some(0);
        f.store().write(&r).expect("w");
        assert_eq!(
            f.stop("web", None).expect("stop"),
            Stopped::NotRunning("exited (0)".into())
        );
        assert!(h.signals_sent().is_empty());
    }

    #[test]
    fn a_stop_leaves_a_request_and_signals_the_keeper() {
        let h = Arc::new(FakeHost::new().with_process(100, 10));
        let (_d, f) = fleet(h.clone());
        f.store().write(&rec("web")).expect("w");
        // The keeper ends as soon as it is signalled: end it from another thread.
        let h2 = h.clone();
        let t = std::thread::spawn(move || {
            kiln_test_support::wait_until(
                "the stop signal",
                Duration::from_secs(5),
                Duration::from_millis(2),
                || (!h2.signals_sent().is_empty()).then_some(()),
            );
            h2.end_process(100);
        });
        let got = f.stop("web", Some(Duration::from_secs(3))).expect("stop");
        t.join().expect("thread");
        assert!(matches!(got, Stopped::Done { .. }), "{got:?}");
        assert_eq!(h.signals_sent(), vec![(100, libc::SIGTERM)]);
        assert_eq!(
            crate::watch::stop_request(&f.store().vm_dir("web")),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn removing_a_live_vm_needs_force_and_an_unknown_one_is_refused() {
        let h = Arc::new(FakeHost::new().with_process(100, 10));
        let (_d, f) = fleet(h);
        f.store().write(&rec("web")).expect("w");
        let e = f.remove("web", false).expect_err("live");
        assert!(
            e.is_user_error() && e.to_string().contains("kiln rm -f web"),
            "{e}"
        );
        assert!(matches!(
            f.remove("nope", false),
            Err(FleetError::NoSuchVm(_))
        ));
    }

    #[test]
    fn an_unreadable_record_can_be_removed() {
        let h = Arc::new(FakeHost::new());
        let (_d, f) = fleet(h);
        let dir = f.store().vm_dir("bad");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("record.json"), "not json").expect("w");
        f.remove("bad", false).expect("removed");
        assert!(!dir.exists());
    }

    #[test]
    fn consoles_of_foreground_and_ended_vms_are_refused() {
        let h = Arc::new(FakeHost::new().with_process(100, 10));
        let (_d, f) = fleet(h);
        let mut fg = rec("fg");
        fg.foreground = true;
        f.store().write(&fg).expect("w");
        assert!(f
            .console_socket("fg")
            .expect_err("fg")
            .to_string()
            .contains("foreground"));
        assert!(f.console_log("fg").is_err());
        let mut ended = rec("old");
        ended.state = VmState::Exited;
        f.store().write(&ended).expect("w");
        assert!(f
            .console_socket("old")
            .expect_err("ended")
            .to_string()
            .contains("not running"));
        assert!(f.console_log("old").is_ok());
        f.store().write(&rec("web")).expect("w");
        assert!(f
            .console_socket("web")
            .expect("live")
            .ends_with("vms/web/console.sock"));
    }

    #[test]
    fn rows_list_every_vm() {
        let h = Arc::new(FakeHost::new().with_process(100, 10));
        let (_d, f) = fleet(h);
        f.store().write(&rec("b")).expect("w");
        f.store().write(&rec("a")).expect("w");
        let rows = f.rows();
        assert_eq!(
            rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(rows[0].uptime_s, 100);
    }
}
