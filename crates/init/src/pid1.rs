//! PID 1 duties: the signals init listens for, reaping, the shutdown
//! sequence, and the panic hook that turns any panic into a power-off.
//!
//! Shutdown: `kill(-1, SIGTERM)`, reap until no children are left or 2 s have
//! passed, `kill(-1, SIGKILL)`, `sync()`, print `kiln: powering off` (or
//! `kiln: rebooting`), `reboot(RB_POWER_OFF)` (skipped without ACPI, where it
//! would hang in a kernel halt), then `reboot(RB_AUTOBOOT)` (QEMU runs with
//! `-no-reboot`), and finally `pause()` forever.

use crate::{report, sys};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Signals handled synchronously by the main loop (blocked in every thread):
/// `SIGCHLD` for reaping, and busybox's `halt` (`SIGUSR1`), `poweroff`
/// (`SIGUSR2`), `reboot` (`SIGTERM`) conventions plus `SIGPWR`.
pub const SIGNALS: [i32; 5] = [
    libc::SIGCHLD,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTERM,
    libc::SIGPWR,
];

/// How the VM should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `reboot(RB_POWER_OFF)`.
    PowerOff,
    /// `reboot(RB_AUTOBOOT)`.
    Reboot,
}

/// What a signal received by PID 1 asks for (`None` for `SIGCHLD`).
pub fn action_for_signal(sig: i32) -> Option<Action> {
    match sig {
        libc::SIGUSR1 | libc::SIGUSR2 | libc::SIGPWR => Some(Action::PowerOff),
        libc::SIGTERM => Some(Action::Reboot),
        _ => None,
    }
}

/// Grace period between SIGTERM and SIGKILL.
const GRACE_MS: u64 = 2000;

static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// Whether `reboot(RB_POWER_OFF)` can actually power off. Without ACPI
/// (microvm with `acpi=off`) the kernel turns a power-off into a halt that
/// never returns and leaves the VM hanging, so reboot instead: QEMU runs with
/// `-no-reboot`, so that ends it too.
fn can_power_off() -> bool {
    std::path::Path::new("/sys/firmware/acpi").exists()
}

/// The final, unconditional step: sync and ask the kernel to end the VM.
fn halt(action: Action) -> ! {
    sys::sync();
    if action == Action::PowerOff && can_power_off() {
        sys::reboot(libc::RB_POWER_OFF);
    }
    sys::reboot(libc::RB_AUTOBOOT);
    sys::pause_forever()
}

/// Terminate every process, then power off or reboot. Never returns. A second
/// concurrent call (e.g. a panic during shutdown) skips straight to the end.
pub fn shutdown(action: Action) -> ! {
    if SHUTTING_DOWN.swap(true, Ordering::SeqCst) {
        halt(action);
    }
    let _ = sys::kill(-1, libc::SIGTERM);
    let chld = sys::sigset(&[libc::SIGCHLD]);
    let deadline = sys::boottime_ms() + GRACE_MS;
    'wait: loop {
        loop {
            match sys::reap_one() {
                sys::Reaped::Child(..) => continue,
                sys::Reaped::NoChildren => break 'wait,
                sys::Reaped::Running => break,
            }
        }
        let now = sys::boottime_ms();
        if now >= deadline {
            break;
        }
        // SIGCHLD is blocked in every thread of init, so this wakes on the
        // next child exit; the cap guards against a lost wake-up.
        sys::wait_signal(&chld, Some((deadline - now).min(50)));
    }
    let _ = sys::kill(-1, libc::SIGKILL);
    sys::sync();
    sys::emit(match action {
        Action::PowerOff => "kiln: powering off\n",
        Action::Reboot => "kiln: rebooting\n",
    });
    halt(action)
}

/// Children that a thread other than the main loop waits for (`/etc/rc.resume`
/// during a thaw): `(pid, raw wait status once reaped)`. The main loop reaps
/// every child with `waitpid(-1)`, so it hands a watched child's status over
/// through [`note_reaped`] rather than dropping it.
static WATCHED: Mutex<Vec<(i32, Option<i32>)>> = Mutex::new(Vec::new());

/// Signalled whenever a watched child's status is kept.
static REAPED: Condvar = Condvar::new();

fn watched() -> MutexGuard<'static, Vec<(i32, Option<i32>)>> {
    WATCHED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Spawn `cmd` and watch it: its exit status is kept for [`wait_watched`]
/// whichever thread reaps it. The lock is held across the spawn, so a child
/// that exits at once is still recognised when the main loop reaps it.
pub fn spawn_watched(cmd: &mut std::process::Command) -> std::io::Result<i32> {
    let mut w = watched();
    let pid = cmd.spawn()?.id() as i32;
    w.push((pid, None));
    Ok(pid)
}

/// Start a child with `fork` (which returns its pid and anything else) and watch it, the
/// lock held across the fork as in [`spawn_watched`].
pub fn fork_watched<T>(
    fork: impl FnOnce() -> sys::SysResult<(i32, T)>,
) -> sys::SysResult<(i32, T)> {
    let mut w = watched();
    let (pid, rest) = fork()?;
    w.push((pid, None));
    Ok((pid, rest))
}

/// Called by the main loop for every child it reaps (other than rc):
/// whether `pid` is watched (its status is then kept for the waiter).
pub fn note_reaped(pid: i32, status: i32) -> bool {
    match watched().iter_mut().find(|(p, _)| *p == pid) {
        Some(entry) => {
            entry.1 = Some(status);
            REAPED.notify_all();
            true
        }
        None => false,
    }
}

/// The status of a watched child that has been reaped, forgetting it.
fn take_reaped(pid: i32) -> Option<i32> {
    let mut w = watched();
    let i = w.iter().position(|&(p, s)| p == pid && s.is_some())?;
    w.swap_remove(i).1
}

/// Wait up to `timeout_ms` for the watched child `pid` to exit: its raw wait
/// status (and it is forgotten), or `None` if it is still running. Sleeps until a
/// child is reaped (checking at least every 100 ms, in case a wake-up is lost).
pub fn wait_watched(pid: i32, timeout_ms: u64) -> Option<i32> {
    let deadline = sys::boottime_ms() + timeout_ms;
    loop {
        // Reap it here if the main loop has not yet.
        if let Some(status) = sys::try_reap(pid) {
            note_reaped(pid, status);
        }
        if let Some(status) = take_reaped(pid) {
            return Some(status);
        }
        let now = sys::boottime_ms();
        if now >= deadline {
            return None;
        }
        let w = watched();
        if w.iter().any(|&(p, s)| p == pid && s.is_some()) {
            continue;
        }
        let wait = std::time::Duration::from_millis((deadline - now).min(100));
        let _ = REAPED.wait_timeout(w, wait);
    }
}

/// Stop watching `pid` (given up on); the main loop reaps it as any orphan.
pub fn forget(pid: i32) {
    watched().retain(|&(p, _)| p != pid);
}

/// Install the panic hook: print `kiln: init panicked: MESSAGE` and power off.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let mut line = report::Line::new().s("init panicked: ").s(msg);
        if let Some(loc) = info.location() {
            line = line.s(" at ").s(loc.file()).s(":").n(i64::from(loc.line()));
        }
        sys::emit(&line.finish());
        shutdown(Action::PowerOff);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_actions() {
        assert_eq!(action_for_signal(libc::SIGUSR2), Some(Action::PowerOff));
        assert_eq!(action_for_signal(libc::SIGUSR1), Some(Action::PowerOff));
        assert_eq!(action_for_signal(libc::SIGPWR), Some(Action::PowerOff));
        assert_eq!(action_for_signal(libc::SIGTERM), Some(Action::Reboot));
        assert_eq!(action_for_signal(libc::SIGCHLD), None);
    }

    #[test]
    fn watched_children_statuses_are_handed_over() {
        // Fake pids (negative: never real) exercise the hand-over.
        assert!(!note_reaped(-7, 0));
        watched().push((-7, None));
        assert_eq!(take_reaped(-7), None);
        assert!(note_reaped(-7, 3 << 8));
        assert_eq!(wait_watched(-7, 0), Some(3 << 8));
        assert_eq!(take_reaped(-7), None);
        watched().push((-8, None));
        forget(-8);
        assert!(!note_reaped(-8, 0));
        assert_eq!(wait_watched(-8, 0), None);
    }

    #[test]
    fn a_watched_child_is_waited_for() {
        let pid = spawn_watched(std::process::Command::new("/bin/sh").args(["-c", "exit 5"]))
            .expect("spawn sh");
        let status = wait_watched(pid, 5000).expect("sh exits");
        assert_eq!(report::exit_code(status), 5);
    }
}
