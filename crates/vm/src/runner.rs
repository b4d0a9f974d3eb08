//! Launching QEMU, attaching to the console, waiting for readiness, and stopping.
//!
//! A foreground QEMU dies with its `kiln` (PR_SET_PDEATHSIG), so a killed `kiln run` never
//! leaves a VM behind; a detached one gets its own session and is stopped through the control
//! channel, QMP, then a signal, in that order.

use crate::console::{ConsoleEvent, LineParser};
use crate::qemu::{self, NetSpec, VmSpec};
use crate::qmp::Qmp;
use crate::VmError;
use kiln_recipe::{PortForward, Protocol};
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// The files of one running VM, all in one folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    /// The folder.
    pub dir: PathBuf,
    /// Serial console socket.
    pub console_socket: PathBuf,
    /// Control channel socket.
    pub control_socket: PathBuf,
    /// Exec channel socket (QEMU's end; the keeper relays it on `exec.sock`).
    pub exec_socket: PathBuf,
    /// QMP socket.
    pub qmp_socket: PathBuf,
    /// Console log.
    pub console_log: PathBuf,
    /// QEMU's own stderr.
    pub qemu_log: PathBuf,
}

impl RunPaths {
    /// The standard layout inside `dir`.
    pub fn in_dir(dir: &Path) -> RunPaths {
        RunPaths {
            dir: dir.to_path_buf(),
            console_socket: dir.join("console.sock"),
            control_socket: dir.join("control.sock"),
            exec_socket: dir.join("exec-qemu.sock"),
            qmp_socket: dir.join("qmp.sock"),
            console_log: dir.join("console.log"),
            qemu_log: dir.join("qemu.log"),
        }
    }
}

/// A QEMU process we started.
#[derive(Debug)]
pub struct Launched {
    /// The process.
    pub child: Child,
    /// Its files.
    pub paths: RunPaths,
    /// When it was spawned.
    pub started: Instant,
    /// Helper processes that live and die with this VM (virtiofsd).
    pub helpers: Vec<Child>,
    /// Kiln's listeners on the published TCP ports, in front of QEMU's user-mode forwards
    /// ([`crate::front`]); they live and die with this VM too.
    pub front: Option<crate::front::Front>,
}

/// The virtiofsd binary: `$KILN_VIRTIOFSD`, QEMU 7.2's `/usr/lib/qemu/virtiofsd`
/// (Debian's qemu-system-common), or `virtiofsd` on PATH.
pub fn virtiofsd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_VIRTIOFSD") {
        return Some(PathBuf::from(p));
    }
    for p in ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"] {
        if Path::new(p).is_file() {
            return Some(PathBuf::from(p));
        }
    }
    crate::find_in_path("virtiofsd")
}

/// Start one virtiofsd for `share` and wait (up to 5 s) for its socket.
fn spawn_virtiofsd(
    share: &crate::ShareSpec,
    socket: &Path,
    dir: &Path,
    index: usize,
    detach: bool,
) -> Result<Child, VmError> {
    let bin = virtiofsd_binary().ok_or(VmError::NoVirtiofsd)?;
    let _ = std::fs::remove_file(socket);
    let log_path = dir.join(format!("virtiofsd-{index}.log"));
    let log = File::create(&log_path).map_err(VmError::io(&log_path))?;
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("--socket-path={}", socket.display()))
        .arg("-o")
        .arg(format!("source={}", share.host_dir.display()))
        .args(["-o", "cache=auto"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    set_lifetime(&mut cmd, detach);
    let mut child = cmd.spawn().map_err(|e| VmError::Io {
        path: bin.clone(),
        error: e,
    })?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(VmError::QemuExited {
                status: format!("virtiofsd {status}"),
                output: std::fs::read_to_string(&log_path).unwrap_or_default(),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(VmError::QemuExited {
                status: "virtiofsd did not create its socket within 5 s".into(),
                output: std::fs::read_to_string(&log_path).unwrap_or_default(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(child)
}

/// `detach`: own session (survives us); otherwise SIGKILL when the spawning thread exits.
fn set_lifetime(cmd: &mut Command, detach: bool) {
    // SAFETY: only async-signal-safe calls (prctl, setsid) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if detach {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// How a stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The guest powered off by itself after the control-channel request.
    Graceful,
    /// QEMU quit on a QMP request.
    Quit,
    /// QEMU had to be killed.
    Killed,
    /// It had already exited.
    AlreadyExited,
}

/// Start QEMU for `spec` (and virtiofsd for its virtiofs shares first). `detach`: own session,
/// survives us; otherwise dies with us (PR_SET_PDEATHSIG: with the *thread* that spawned it,
/// so spawn from a thread that lives as long as the VM should).
pub fn spawn(
    qemu_bin: &Path,
    spec: &VmSpec,
    paths: &RunPaths,
    detach: bool,
) -> Result<Launched, VmError> {
    std::fs::create_dir_all(&paths.dir).map_err(VmError::io(&paths.dir))?;
    for s in [
        &paths.console_socket,
        &paths.control_socket,
        &paths.exec_socket,
        &paths.qmp_socket,
    ] {
        let _ = std::fs::remove_file(s);
    }
    for p in &spec.vports {
        let _ = std::fs::remove_file(&p.socket);
    }
    for l in &spec.lans {
        let _ = std::fs::remove_file(&l.local);
    }
    // The published TCP ports are Kiln's (a real backlog); slirp's forwards move to private
    // loopback ports behind them.
    let (front, fronted);
    let spec = match &spec.net {
        NetSpec::User { forwards } if forwards.iter().any(|f| f.protocol == Protocol::Tcp) => {
            let (f, for_qemu) = crate::front::start(forwards).map_err(front_error(forwards))?;
            front = Some(f);
            fronted = VmSpec {
                net: NetSpec::User { forwards: for_qemu },
                ..spec.clone()
            };
            &fronted
        }
        _ => {
            front = None;
            spec
        }
    };
    let mut helpers = Vec::new();
    for (i, share) in spec.shares.iter().enumerate() {
        if let crate::ShareKind::Virtiofs { socket } = &share.kind {
            match spawn_virtiofsd(share, socket, &paths.dir, i, detach) {
                Ok(c) => helpers.push(c),
                Err(e) => {
                    kill_all(&mut helpers);
                    return Err(e);
                }
            }
        }
    }
    let stderr = File::create(&paths.qemu_log).map_err(VmError::io(&paths.qemu_log))?;
    let mut cmd = Command::new(qemu_bin);
    cmd.args(qemu::argv(spec))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    set_lifetime(&mut cmd, detach);
    let child = cmd.spawn().map_err(|e| {
        kill_all(&mut helpers);
        if e.kind() == std::io::ErrorKind::NotFound {
            VmError::NoQemu {
                binary: qemu_bin.display().to_string(),
            }
        } else {
            VmError::Io {
                path: qemu_bin.to_path_buf(),
                error: e,
            }
        }
    })?;
    Ok(Launched {
        child,
        paths: paths.clone(),
        started: Instant::now(),
        helpers,
        front,
    })
}

/// A published port the front could not take: in use (someone bound it since admission
/// checked), or another error on it.
fn front_error(forwards: &[PortForward]) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |e| {
        let taken = forwards
            .iter()
            .filter(|f| f.protocol == Protocol::Tcp)
            .find(|f| TcpListener::bind((f.host_addr, f.host_port)).is_err());
        match (e.kind(), taken) {
            (std::io::ErrorKind::AddrInUse, Some(f)) => VmError::PortInUse {
                addr: f.host_addr.to_string(),
                port: f.host_port,
                proto: "tcp",
                by: String::new(),
            },
            _ => VmError::Io {
                path: PathBuf::from("published ports"),
                error: e,
            },
        }
    }
}

fn kill_all(children: &mut Vec<Child>) {
    for c in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
    children.clear();
}

impl Launched {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// QEMU's stderr so far (for error reports).
    pub fn qemu_stderr(&self) -> String {
        std::fs::read_to_string(&self.paths.qemu_log).unwrap_or_default()
    }

    fn exited_error(&mut self, status: ExitStatus, console_tail: &str) -> VmError {
        VmError::QemuExited {
            status: status.to_string(),
            output: format!("{}{}", self.qemu_stderr(), console_tail),
        }
    }

    /// Connect to the console socket once QEMU has created it (deadline 10 s).
    pub fn connect_console(&mut self) -> Result<UnixStream, VmError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(&self.paths.console_socket) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Err(self.exited_error(status, ""));
                    }
                    if Instant::now() > deadline {
                        return Err(VmError::Io {
                            path: self.paths.console_socket.clone(),
                            error: e,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }

    /// Exit status if QEMU has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stop the VM: control-channel `poweroff`, wait up to `grace`; then QMP `quit`; then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> StopOutcome {
        if self.try_wait().is_some() {
            return StopOutcome::AlreadyExited;
        }
        if request_poweroff(&self.paths.control_socket).is_ok() && self.wait_exit(grace).is_some() {
            return StopOutcome::Graceful;
        }
        if let Ok(mut q) = Qmp::connect(&self.paths.qmp_socket) {
            let _ = q.quit();
            if self.wait_exit(Duration::from_secs(3)).is_some() {
                return StopOutcome::Quit;
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        StopOutcome::Killed
    }

    /// Stop the helper processes (virtiofsd) and close the published ports; call once QEMU
    /// has exited.
    pub fn reap_helpers(&mut self) {
        kill_all(&mut self.helpers);
        self.front = None;
    }

    /// Wait for QEMU to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Launched {
    /// A VM we launched in the foreground never outlives us.
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        kill_all(&mut self.helpers);
    }
}

/// Stop a VM we only know by pid and paths (a detached one): control-channel `poweroff`, wait
/// up to `grace`; then QMP `quit`; then SIGKILL.
pub fn stop_pid(pid: u32, paths: &RunPaths, grace: Duration) -> StopOutcome {
    let wait = |t: Duration| {
        let deadline = Instant::now() + t;
        while pid_alive(pid) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    };
    if !pid_alive(pid) {
        return StopOutcome::AlreadyExited;
    }
    if request_poweroff(&paths.control_socket).is_ok() && wait(grace) {
        return StopOutcome::Graceful;
    }
    if let Ok(mut q) = Qmp::connect(&paths.qmp_socket) {
        let _ = q.quit();
        if wait(Duration::from_secs(3)) {
            return StopOutcome::Quit;
        }
    }
    // SAFETY: kill(2) on a pid we verified alive; no memory is involved.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    wait(Duration::from_secs(5));
    StopOutcome::Killed
}

/// Ask kiln-init to power off through the control channel.
pub fn request_poweroff(control_socket: &Path) -> std::io::Result<()> {
    let mut s = UnixStream::connect(control_socket)?;
    s.write_all(b"poweroff\n")?;
    s.flush()
}

/// What the console reader thread reports.
#[derive(Debug)]
pub enum ConsoleMsg {
    /// A `kiln:` event.
    Event(ConsoleEvent),
    /// The console closed (QEMU exited).
    Closed,
}

/// Read the console in a thread: copy bytes to `sink` (the terminal, or nothing), keep the tail
/// in `parser`, and send events.
pub fn read_console(
    mut stream: UnixStream,
    mut sink: Option<Box<dyn Write + Send>>,
    parser: std::sync::Arc<std::sync::Mutex<LineParser>>,
) -> Receiver<ConsoleMsg> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(ConsoleMsg::Closed);
                    return;
                }
                Ok(n) => {
                    if let Some(out) = sink.as_mut() {
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                    let events = match parser.lock() {
                        Ok(mut p) => p.feed(&buf[..n]),
                        Err(_) => vec![],
                    };
                    for e in events {
                        if tx.send(ConsoleMsg::Event(e)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    rx
}

/// Follow a console log file written by QEMU until `kiln: ready` appears, QEMU (pid) exits, or
/// the deadline passes. Returns the ready event's guest uptime.
pub fn wait_ready_in_log(log: &Path, pid: u32, deadline: Instant) -> Result<u64, VmError> {
    let mut parser = LineParser::new(40);
    let mut offset = 0usize;
    loop {
        if let Ok(data) = std::fs::read(log) {
            if data.len() > offset {
                for e in parser.feed(&data[offset..]) {
                    match e {
                        ConsoleEvent::Ready { guest_ms } => return Ok(guest_ms),
                        ConsoleEvent::RcExited { status } if status != 0 => {
                            return Err(VmError::QemuExited {
                                status: format!("etc/rc exited with status {status}"),
                                output: parser.tail(),
                            })
                        }
                        _ => {}
                    }
                }
                offset = data.len();
            }
        }
        if !pid_alive(pid) {
            return Err(VmError::QemuExited {
                status: "exited".into(),
                output: parser.tail(),
            });
        }
        if Instant::now() >= deadline {
            return Err(VmError::NotReady {
                seconds: 0,
                tail: parser.tail(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The start time of process `pid` (clock ticks since boot, field 22 of /proc/PID/stat), so a
/// recorded pid can be told apart from a later process that reused it.
pub fn pid_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This host boot's id (changes at every reboot).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether a process exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // state is the field after the parenthesised command name
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_layout() {
        let p = RunPaths::in_dir(Path::new("/run/kiln/vms/a"));
        assert_eq!(p.qmp_socket, Path::new("/run/kiln/vms/a/qmp.sock"));
        assert_eq!(p.console_log, Path::new("/run/kiln/vms/a/console.log"));
    }

    #[test]
    fn pid_alive_sees_self_and_not_a_reaped_child() {
        assert!(pid_alive(std::process::id()));
        let mut c = Command::new("true").spawn().expect("spawn true");
        let pid = c.id();
        c.wait().expect("wait");
        assert!(!pid_alive(pid));
    }

    #[test]
    fn start_time_identifies_a_process() {
        let me = std::process::id();
        let t = pid_start_time(me).expect("own start time");
        assert_eq!(pid_start_time(me), Some(t));
        assert!(!boot_id().is_empty());
    }

    #[test]
    fn missing_qemu_binary_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let paths = RunPaths::in_dir(dir.path());
        let spec = VmSpec {
            name: "t".into(),
            kernel: "/k".into(),
            initrd: None,
            cmdline: String::new(),
            cpus: 1,
            memory_mib: 64,
            accel: crate::Accel::Tcg,
            net: crate::NetSpec::None,
            lans: vec![],
            console_socket: paths.console_socket.clone(),
            console_wait: false,
            console_log: None,
            control_socket: paths.control_socket.clone(),
            exec_socket: None,
            qmp_socket: paths.qmp_socket.clone(),
            drives: vec![],
            shares: vec![],
            vports: vec![],
            acpi: true,
            ram: Default::default(),
            incoming: None,
            free_page_reporting: false,
            extra_args: vec![],
        };
        let e = spawn(
            Path::new("/nonexistent/qemu-system-x86_64"),
            &spec,
            &paths,
            false,
        )
        .expect_err("no qemu");
        assert!(e.to_string().contains("install QEMU"), "{e}");
    }
}
