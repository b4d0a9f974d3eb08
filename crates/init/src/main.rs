//! `kiln-init`: the guest's PID 1, installed in every Kiln image as `/init`.
//!
//! It owns everything between the kernel handing over and the VM ending:
//! mounting the pseudo filesystems, loading the image's kernel modules,
//! configuring loopback and the static IPv4 network, setting the hostname,
//! listening on the host control channel (power-off, reboot, and the freeze and
//! thaw of templates and their clones), serving the exec channel (`kiln exec`,
//! `kiln cp`: [`exec`]), running the rc script as the service,
//! reporting readiness on the serial console, reaping orphans, and powering
//! the VM off when the service exits (or on request, or on a panic).
//!
//! Console protocol (one `write(2)` per line on stdout = `/dev/console`):
//!
//! ```text
//! kiln: warning: ...                                  (non-fatal problems)
//! kiln: error: cannot run /etc/rc: REASON
//! kiln: ready in N ms
//! kiln: timeline init=A modules=B net=C rc=D ready=E
//! kiln: rc exited with status N
//! kiln: shutdown requested | kiln: reboot requested
//! kiln: powering off | kiln: rebooting
//! kiln: frozen                                        (after `freeze`)
//! kiln: rc.resume exited with status N                (during `thaw`)
//! kiln: thawed in N ms                                (after `thaw`)
//! kiln: error: freeze: ... | kiln: error: thaw: ...
//! kiln: init panicked: MESSAGE at FILE:LINE
//! ```
//!
//! The control commands and the lines they produce are described in
//! [`control`].
//!
//! Build (static, size-optimised; output
//! `target/x86_64-unknown-linux-musl/init/kiln-init`):
//!
//! ```text
//! cargo build -p kiln-init --profile init --target x86_64-unknown-linux-musl
//! ```
//!
//! glibc fallback (also static; output under `target/x86_64-unknown-linux-gnu/init/`):
//!
//! ```text
//! RUSTFLAGS='-C target-feature=+crt-static' cargo build -p kiln-init --profile init --target x86_64-unknown-linux-gnu
//! ```
//!
//! The crate uses `#![no_main]`: std's runtime start-up is skipped, notably
//! its "reopen closed fds 0-2 on /dev/null, abort if that fails", which would
//! kill PID 1 in an initramfs without `/dev/null`.

#![cfg_attr(not(test), no_main)]

mod cmdline;
mod config;
mod control;
mod exec;
mod extras;
mod modules;
mod net;
mod pid1;
mod report;
mod snapshot;
mod sys;
mod tcp;
mod trace;

use config::{Config, Ready};
use report::Timeline;

/// Filesystems mounted at boot: (source, target, type, flags, data).
const MOUNTS: &[(&str, &str, &str, libc::c_ulong, &str)] = &[
    (
        "proc",
        "/proc",
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    ),
    (
        "sysfs",
        "/sys",
        "sysfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    ),
    ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=0620,ptmxmode=0666",
    ),
    (
        "shm",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    ),
    (
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    ),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    ),
];

/// Symlinks devtmpfs does not provide.
const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

/// Search path given to rc (and to `kiln exec` commands).
const PATH: &str = "/sbin:/bin:/usr/sbin:/usr/bin";

/// How long to wait for the network interface to appear.
const IFACE_TIMEOUT_MS: u64 = 2000;

/// How often to poll /proc/net/tcp{,6} for `ready=tcp:PORT`.
const TCP_POLL_MS: u64 = 2;

fn warn(msg: &str) {
    sys::emit(&report::warning(msg));
}

fn warn2(a: &str, b: &str) {
    sys::emit(&report::Line::new().s("warning: ").s(a).s(b).finish());
}

/// Step 1: mount the pseudo filesystems (failures are warnings). Returns
/// whether devtmpfs was mounted on /dev.
fn mount_all() -> bool {
    let mut devtmpfs = false;
    for &(source, target, fstype, flags, data) in MOUNTS {
        let _ = std::fs::create_dir_all(target);
        match sys::mount(source, target, fstype, flags, data) {
            Ok(()) => devtmpfs |= target == "/dev",
            Err(libc::EBUSY) => {}
            Err(e) => sys::emit(
                &report::Line::new()
                    .s("warning: mount ")
                    .s(target)
                    .s(": ")
                    .s(&sys::strerror(e))
                    .finish(),
            ),
        }
    }
    for &(target, link) in DEV_LINKS {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    devtmpfs
}

/// Point fds 0-2 at `/dev/console`. Closed descriptors are always reopened;
/// if devtmpfs was just mounted, all three are re-pointed at its console node
/// so `ttyname(3)` (and `tty`) resolve them, rather than at the initramfs node
/// now hidden under the mount.
fn setup_console(reopen_all: bool) {
    if !reopen_all && (0..3).all(sys::fd_is_open) {
        return;
    }
    let Ok(fd) = sys::open("/dev/console", libc::O_RDWR | libc::O_NOCTTY) else {
        return;
    };
    for target in 0..3 {
        if reopen_all || !sys::fd_is_open(target) {
            // dup2 clears O_CLOEXEC on the new descriptor.
            let _ = sys::dup2(fd, target);
        }
    }
    if fd > 2 {
        sys::close(fd);
    }
    // If open() returned 0-2 itself, that descriptor still has O_CLOEXEC.
    for target in 0..3 {
        sys::clear_cloexec(target);
    }
}

/// Step 2: init.conf (defaults if missing) plus `kiln.*` overrides (also
/// returned, for the run-time extras: shares, ports, read-only root).
fn load_config(words: &[&str]) -> (Config, cmdline::Overrides) {
    let (mut cfg, warnings) = match std::fs::read_to_string(config::PATH) {
        Ok(text) => config::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Config::default(), Vec::new()),
        Err(e) => {
            warn2("cannot read /etc/kiln/init.conf: ", &sys::io_error_text(&e));
            (Config::default(), Vec::new())
        }
    };
    for w in &warnings {
        warn(w);
    }
    let (overrides, unknown) = cmdline::overrides(words);
    for u in unknown {
        warn2("kernel command line: unknown parameter ", u);
    }
    for w in config::apply_overrides(&mut cfg, &overrides) {
        warn(&w);
    }
    (cfg, overrides)
}

/// Step 4: loopback, the interface, resolver files, and the gateway ARP poke.
/// Returns the interface's address if it was configured.
fn network(cfg: &Config, lan_args: &[String]) -> Option<std::net::Ipv4Addr> {
    if let Err(e) = net::loopback_up() {
        warn2("network: lo: ", &e);
    }
    let mut lans = Vec::new();
    for v in lan_args {
        match net::parse_lan(v) {
            Some(l) => lans.push(l),
            None => warn2("kernel command line: invalid kiln.lan value ", v),
        }
    }
    // The NICs on Kiln nets are found by MAC; the user NIC is eth0 unless a net's took it.
    let ifaces = if lans.is_empty() {
        Vec::new()
    } else {
        net::wait_for_lans(&lans, IFACE_TIMEOUT_MS)
    };
    let mut configured = None;
    let user = cfg.net.as_ref().map(|n| {
        let mut n = n.clone();
        n.iface = net::user_iface(&n.iface, &ifaces, &lans);
        n
    });
    if let Some(n) = &user {
        if !net::wait_for_iface(&n.iface, IFACE_TIMEOUT_MS) {
            let mut msg = String::from("network: ");
            msg.push_str(&n.iface);
            warn2(&msg, " did not appear within 2 s");
        } else {
            match net::up(n) {
                Ok(()) => configured = Some(n.addr),
                Err(e) => {
                    let mut msg = String::from("network: ");
                    msg.push_str(&n.iface);
                    msg.push_str(": ");
                    warn2(&msg, &e);
                }
            }
        }
    }
    for l in &lans {
        match ifaces.iter().find(|(_, m)| *m == l.mac) {
            Some((iface, _)) => {
                if let Err(e) = net::lan_up(iface, l) {
                    let mut msg = String::from("network: ");
                    msg.push_str(iface);
                    msg.push_str(": ");
                    warn2(&msg, &e);
                }
            }
            None => warn2("network: no NIC with MAC ", &l.mac),
        }
    }
    let _ = std::fs::create_dir_all("/etc");
    if !sys::writable("/etc") {
        return configured;
    }
    if configured.is_some() && !cfg.dns.is_empty() {
        let _ = std::fs::remove_file("/etc/resolv.conf");
        let _ = std::fs::write("/etc/resolv.conf", net::resolv_conf(&cfg.dns));
    }
    net::write_if_missing("/etc/hosts", &net::hosts(&cfg.hostname, configured));
    // The VM's name, as a thaw writes it for a clone (`kiln exec NAME -- cat /etc/hostname`).
    let mut name = cfg.hostname.clone();
    name.push('\n');
    if let Err(e) = std::fs::write("/etc/hostname", name) {
        warn2("/etc/hostname: ", &sys::io_error_text(&e));
    }
    net::write_if_missing("/etc/nsswitch.conf", net::NSSWITCH);
    configured
}

/// `/bin/sh SCRIPT` from `/` with rc's environment (HOME, PATH, TERM and the
/// image's `env=` settings); used for rc and for `/etc/rc.resume`.
pub(crate) fn shell(script: &str, env: &[(String, String)]) -> std::process::Command {
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg(script)
        .current_dir("/")
        .env_clear()
        .env("HOME", "/")
        .env("PATH", PATH)
        .env("TERM", "linux");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Step 7: start `/bin/sh RC` in its own session with the console as its
/// controlling terminal. Returns its pid, or the reason it could not start.
fn spawn_rc(cfg: &Config) -> Result<i32, String> {
    use std::os::unix::process::CommandExt;

    if let Err(e) = std::fs::metadata("/bin/sh") {
        let mut s = String::from("/bin/sh: ");
        s.push_str(&sys::io_error_text(&e));
        return Err(s);
    }
    if let Err(e) = std::fs::metadata(&cfg.rc) {
        return Err(sys::io_error_text(&e));
    }
    let mut cmd = shell(&cfg.rc, &cfg.env);
    if let Some((uid, gid)) = cfg.user {
        // Supplementary groups are dropped with the change (std's setgroups(0)).
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: the closure only makes async-signal-safe system calls
    // (sigprocmask, setsid, ioctl) and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            sys::unblock_all_signals();
            sys::become_session_leader_with_ctty();
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => Ok(child.id() as i32),
        Err(e) => Err(sys::io_error_text(&e)),
    }
}

/// Whether something listens on TCP `port` (IPv4 or IPv6).
fn tcp_listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|path| {
        std::fs::read_to_string(path)
            .map(|t| tcp::has_listener(&t, port))
            .unwrap_or(false)
    })
}

/// Print the readiness and timeline lines.
fn announce_ready(tl: &mut Timeline) {
    tl.ready = sys::boottime_ms();
    sys::emit(&report::ready(tl.ready));
    sys::emit(&report::timeline(tl));
}

/// Steps 8 and 9: wait for readiness while reaping, then keep reaping until
/// rc exits or a shutdown is requested.
fn supervise(ready: Ready, rc_pid: i32, mut tl: Timeline) -> ! {
    let signals = sys::sigset(&pid1::SIGNALS);
    let mut is_ready = false;
    if ready == Ready::None {
        announce_ready(&mut tl);
        is_ready = true;
    }
    loop {
        let mut rc_status = None;
        while let sys::Reaped::Child(pid, status) = sys::reap_one() {
            if pid == rc_pid {
                rc_status = Some(report::exit_code(status));
            } else {
                // A thaw's rc.resume hands over here; other orphans are dropped.
                pid1::note_reaped(pid, status);
            }
        }
        if let Some(code) = rc_status {
            if !is_ready && ready == Ready::Exit && code == 0 {
                announce_ready(&mut tl);
            }
            sys::emit(&report::rc_exited(code));
            pid1::shutdown(pid1::Action::PowerOff);
        }
        let mut timeout = None;
        if let (false, Ready::Tcp(port)) = (is_ready, ready) {
            if tcp_listening(port) {
                announce_ready(&mut tl);
                is_ready = true;
            } else {
                timeout = Some(TCP_POLL_MS);
            }
        }
        if let Some(action) = sys::wait_signal(&signals, timeout).and_then(pid1::action_for_signal)
        {
            sys::emit(match action {
                pid1::Action::PowerOff => "kiln: shutdown requested\n",
                pid1::Action::Reboot => "kiln: reboot requested\n",
            });
            pid1::shutdown(action);
        }
    }
}

/// The boot sequence; never returns.
fn boot() -> ! {
    let mut tl = Timeline {
        init: sys::boottime_ms(),
        ..Timeline::default()
    };
    // Before any thread exists, so every thread inherits the mask and the
    // main loop can collect these with sigtimedwait.
    sys::block_signals(&pid1::SIGNALS);

    let overlay = extras::overlay_root();
    let devtmpfs = mount_all();
    setup_console(devtmpfs);
    if let Err(e) = overlay {
        warn2("overlay on the read-only root: ", &e);
    }

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let words = cmdline::words(&cmdline);
    let (cfg, extra) = load_config(&words);

    modules::load_all(&cfg.modules, &words);
    tl.modules = sys::boottime_ms();

    let addr = network(&cfg, &extra.lans);
    tl.net = sys::boottime_ms();

    if !extra.shares.is_empty() {
        modules::load_all(&cfg.share_modules, &words);
    }
    extras::mount_shares(&extra.shares);
    extras::link_vports(&extra.vports, IFACE_TIMEOUT_MS);
    if extra.readonly_root {
        extras::readonly_root();
    }

    if let Err(e) = sys::sethostname(&cfg.hostname) {
        warn2("sethostname: ", &sys::strerror(e));
    }

    trace::start();
    control::spawn(snapshot::Guest {
        addr,
        env: cfg.env.clone(),
    });
    exec::spawn(cfg.env.clone());

    let rc_pid = match spawn_rc(&cfg) {
        Ok(pid) => pid,
        Err(reason) => {
            let mut msg = String::from("cannot run ");
            msg.push_str(&cfg.rc);
            msg.push_str(": ");
            msg.push_str(&reason);
            sys::emit(&report::error(&msg));
            sys::emit(&report::rc_exited(127));
            pid1::shutdown(pid1::Action::PowerOff);
        }
    };
    tl.rc = sys::boottime_ms();

    supervise(cfg.ready, rc_pid, tl)
}

/// C entry point (the crate is `no_main`): install the panic hook, refuse to
/// run as anything but PID 1 (shutdown does `kill(-1, ...)`), then boot.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    pid1::install_panic_hook();
    if sys::getpid() != 1 {
        sys::write_all(
            2,
            b"kiln-init: must run as PID 1 (it is the guest's /init)\n",
        );
        return 1;
    }
    boot()
}
