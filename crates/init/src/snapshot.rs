//! Templates and copy-on-write clones: what `freeze` and `thaw` on the
//! control channel do (the protocol is described in [`crate::control`]).
//!
//! A template is a VM saved at its ready point; every clone restored from it
//! starts with the template's memory, so the same kernel CRNG state, clock,
//! hostname and network. The host takes the network link down (QMP
//! `set_link`) before it sends `freeze`, and a clone's link comes up only
//! after `thaw` has given it fresh entropy, the host's clock and its own name
//! and `/etc/rc.resume` has renewed whatever else the services derived from
//! them (`kiln: thawed`). The interface itself stays configured throughout,
//! so nothing in the guest has to set it up again.

use crate::control::Thaw;
use crate::{net, pid1, report, sys};
use std::net::Ipv4Addr;

/// Script run (if present and executable) during a thaw, before the link
/// comes back.
pub const RC_RESUME: &str = "/etc/rc.resume";

/// How long a thaw waits for [`RC_RESUME`] before killing it.
const RC_RESUME_TIMEOUT_MS: u64 = 10_000;

/// What freeze and thaw need to know about the guest as booted.
#[derive(Debug, Clone, Default)]
pub struct Guest {
    /// The address the interface got at boot, if it was configured (as in the
    /// `/etc/hosts` init generated).
    pub addr: Option<Ipv4Addr>,
    /// rc's extra environment (given to rc.resume too).
    pub env: Vec<(String, String)>,
}

fn error(parts: &[&str]) {
    let mut l = report::Line::new().s("error: ");
    for p in parts {
        l = l.s(p);
    }
    sys::emit(&l.finish());
}

fn warning(parts: &[&str]) {
    let mut l = report::Line::new().s("warning: ");
    for p in parts {
        l = l.s(p);
    }
    sys::emit(&l.finish());
}

/// `freeze`: sync, `kiln: frozen`. The host has already taken the link down.
pub fn freeze() {
    sys::sync();
    sys::emit(&report::frozen());
}

/// `thaw`: entropy, clock, hostname, rc.resume, `kiln: thawed in N ms` (N
/// from `received_ns`, the `CLOCK_BOOTTIME` arrival of the command), on which
/// the host brings the link up.
pub fn thaw(guest: &Guest, t: &Thaw, received_ns: u64) {
    // 1. Entropy. Without it the clone would share the template's CRNG state
    // with every other clone: leave it unreachable.
    if let Err(e) = sys::add_entropy(&t.seed) {
        error(&[
            "thaw: RNDADDENTROPY: ",
            &sys::strerror(e),
            " (thaw abandoned: the host keeps the link down)",
        ]);
        return;
    }
    if let Err(e) = sys::reseed_crng() {
        error(&["thaw: RNDRESEEDCRNG: ", &sys::strerror(e)]);
    }
    let at = || sys::boottime_ns().saturating_sub(received_ns) / 1_000_000;
    let entropy = at();

    // 2. The wall clock, as the host's plus the time since the command came.
    let since = sys::boottime_ns().saturating_sub(received_ns);
    if let Err(e) = sys::set_realtime_ns(t.unix_nanos.saturating_add(since)) {
        error(&["thaw: clock_settime: ", &sys::strerror(e)]);
    }

    let clock = at();

    // 3. The name: the kernel's at once; its files before rc.resume (which may read them),
    // else after `thawed` (they are no secret, and the clone answers sooner).
    let old = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    if let Err(e) = sys::sethostname(&t.hostname) {
        error(&["thaw: sethostname: ", &sys::strerror(e)]);
    }
    let name = at();
    let resume_present = std::path::Path::new(RC_RESUME).exists();
    if resume_present {
        write_identity(guest, old.trim_end(), &t.hostname);
    }

    // 4. The image's own renewal.
    run_rc_resume(&guest.env);
    let resume = at();

    // 5. Done: the host brings the link up when it sees this line.
    let ms = at();
    sys::emit(&report::thawed(ms));
    if !resume_present {
        write_identity(guest, old.trim_end(), &t.hostname);
    }
    let files = at();
    sys::emit(&report::thaw_timeline(&[
        ("entropy", entropy),
        ("clock", clock),
        ("name", name),
        ("resume", resume),
        ("files", files),
    ]));
}

/// The `/etc/hosts` to write when the hostname changes from `old` to `new`:
/// only if `current` is exactly what init generated at boot for `old`.
pub fn renamed_hosts(
    current: &str,
    old: &str,
    new: &str,
    addr: Option<Ipv4Addr>,
) -> Option<String> {
    (old != new && current == net::hosts(old, addr)).then(|| net::hosts(new, addr))
}

/// `/etc/hostname`, and init's own `/etc/hosts` (renamed from `old`).
fn write_identity(guest: &Guest, old: &str, hostname: &str) {
    let mut content = String::from(hostname);
    content.push('\n');
    if let Err(e) = std::fs::write("/etc/hostname", content) {
        warning(&["thaw: /etc/hostname: ", &sys::io_error_text(&e)]);
        return;
    }
    let Ok(current) = std::fs::read_to_string("/etc/hosts") else {
        return;
    };
    if let Some(hosts) = renamed_hosts(&current, old, hostname, guest.addr) {
        if let Err(e) = std::fs::write("/etc/hosts", hosts) {
            warning(&["thaw: /etc/hosts: ", &sys::io_error_text(&e)]);
        }
    }
}

/// Whether `mode` (from `stat`) is an executable regular file.
pub fn runnable(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFREG && mode & 0o111 != 0
}

/// Run [`RC_RESUME`] if present and executable; report its status.
fn run_rc_resume(env: &[(String, String)]) {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    let mode = match std::fs::metadata(RC_RESUME) {
        Ok(m) => m.permissions().mode(),
        Err(_) => return,
    };
    if !runnable(mode) {
        warning(&["thaw: ", RC_RESUME, " is not an executable file; not run"]);
        return;
    }
    let mut cmd = crate::shell(RC_RESUME, env);
    // Its own process group (no terminal), so a timeout can kill all of it.
    cmd.process_group(0);
    let pid = match pid1::spawn_watched(&mut cmd) {
        Ok(pid) => pid,
        Err(e) => {
            error(&[
                "thaw: cannot run ",
                RC_RESUME,
                ": ",
                &sys::io_error_text(&e),
            ]);
            return;
        }
    };
    let status = match pid1::wait_watched(pid, RC_RESUME_TIMEOUT_MS) {
        Some(status) => status,
        None => {
            error(&["thaw: ", RC_RESUME, " still running after 10 s; killed"]);
            let _ = sys::kill(-pid, libc::SIGKILL);
            match pid1::wait_watched(pid, 1000) {
                Some(status) => status,
                None => {
                    pid1::forget(pid);
                    return;
                }
            }
        }
    };
    sys::emit(&report::rc_resume_exited(report::exit_code(status)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_init_generated_hosts_files_are_renamed() {
        let addr = Some(Ipv4Addr::new(10, 0, 2, 15));
        let booted = net::hosts("web", addr);
        assert_eq!(
            renamed_hosts(&booted, "web", "web-7", addr),
            Some(net::hosts("web-7", addr))
        );
        assert!(renamed_hosts(&booted, "web", "web-7", addr)
            .expect("renamed")
            .ends_with("10.0.2.15\tweb-7\n"));
        // The image's own file, a file edited since, or the same name: untouched.
        assert_eq!(
            renamed_hosts("127.0.0.1 localhost\n", "web", "x", addr),
            None
        );
        let edited = booted.clone() + "10.0.2.2\tgw\n";
        assert_eq!(renamed_hosts(&edited, "web", "x", addr), None);
        assert_eq!(renamed_hosts(&booted, "web", "web", addr), None);
        // Without networking the name sits on 127.0.1.1.
        let local = net::hosts("kiln", None);
        assert!(renamed_hosts(&local, "kiln", "c1", None)
            .expect("renamed")
            .ends_with("127.0.1.1\tc1\n"));
    }

    #[test]
    fn only_executable_files_run() {
        assert!(runnable(libc::S_IFREG | 0o755));
        assert!(runnable(libc::S_IFREG | 0o100));
        assert!(!runnable(libc::S_IFREG | 0o644));
        assert!(!runnable(libc::S_IFDIR | 0o755));
    }
}
