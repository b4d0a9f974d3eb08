//! `kiln exec` and `kiln cp` in the guest: the exec channel, a virtio-serial port named
//! `org.kiln.exec` carrying [`kiln_wire`] frames from and to the VM's keeper.
//!
//! One thread reads frames. `Open` starts a command (looked up in rc's PATH; a command that
//! is not there ends at once with `Error` "NAME: command not found" and exit 127, one that
//! cannot run with 126) in a session of its own, with pipes or a fresh pseudo-terminal as its
//! stdin, stdout and stderr and rc's environment (HOME, PATH, TERM, the image's `env=`) plus
//! the request's. Per session, a thread feeds stdin from a small queue (the reader waits at
//! most 3 s for a command that does not read it, then drops the rest of its input and says so
//! on its stderr), a thread per output pipe (one for a terminal)
//! sends `Stdout`/`Stderr`, and a waiter sends `Exit` once the command has ended and its
//! output is sent. `Resize` sets the terminal's size (the kernel sends `SIGWINCH`); `Close`
//! (the client went away) kills the session's process group. `Get` sends a regular file
//! (`Mode`, content, `Exit 0`); `Put` writes one beside its destination and renames it into
//! place with the requested mode once its input ends. Writes to the port are whole frames
//! under one lock.
//!
//! Children are watched ([`crate::pid1::fork_watched`]): the main loop, which reaps every
//! child, hands their statuses over to the waiters.

use crate::{control, pid1, report, sys};
use kiln_wire::{Frame, Open, Status};
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// How long to look for the port after start.
const FIND_TIMEOUT_MS: u64 = 2000;

/// Stack of each session thread (they only copy bytes).
const STACK: usize = 64 * 1024;

/// Chunks of input queued per session before the reader waits for the command.
const STDIN_QUEUE: usize = 8;

/// How long the frame reader waits for a session's command to take its input.
const STDIN_STALL_MS: u64 = 3000;

/// How long the waiter waits for output after the command exited (a background process
/// that kept the pipes open would hold the `Exit` back forever).
const DRAIN_MS: u64 = 1000;

/// The port: whole frames written under one lock.
struct Port {
    fd: i32,
    write: Mutex<()>,
}

impl Port {
    fn send(&self, f: &Frame) {
        let bytes = kiln_wire::encode(f);
        let _g = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        sys::write_all(self.fd, &bytes);
    }

    /// `Error` then `Exit(code)`.
    fn fail(&self, id: u32, code: i32, message: String) {
        self.send(&Frame::Error { id, message });
        self.send(&Frame::Exit {
            id,
            status: Status::Exited(code),
        });
    }
}

/// A running session, as the reader sees it.
struct Session {
    /// Its input queue (dropped at `StdinEof`).
    stdin: Option<SyncSender<Vec<u8>>>,
    /// Its terminal's master side (for `Resize`).
    tty: Option<i32>,
    /// Its process (group leader), if it is a command.
    pid: Option<i32>,
    /// Raised by `Close`.
    cancel: Arc<AtomicBool>,
}

/// Everything the threads share.
struct Exec {
    port: Port,
    sessions: Mutex<HashMap<u32, Session>>,
    /// rc's environment (the image's `env=` settings).
    env: Vec<(String, String)>,
}

impl Exec {
    fn sessions(&self) -> MutexGuard<'_, HashMap<u32, Session>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a name in the guest's filesystem is, for the command lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Nothing there.
    Missing,
    /// A folder.
    Dir,
    /// A file we may not execute.
    NotExecutable,
    /// A file we may execute.
    Executable,
}

fn probe(path: &str) -> Probe {
    match std::fs::metadata(path) {
        Err(_) => Probe::Missing,
        Ok(m) if m.is_dir() => Probe::Dir,
        Ok(_) if sys::executable(path) => Probe::Executable,
        Ok(_) => Probe::NotExecutable,
    }
}

/// Why a command cannot be started: the exit code and the message.
pub type Refusal = (i32, String);

/// Find `prog` as a shell would: a name with a `/` as is, else the first executable file of
/// that name in `path_var`'s folders. 127 if there is none, 126 if it cannot be executed.
pub fn resolve(
    prog: &str,
    path_var: &str,
    probe: impl Fn(&str) -> Probe,
) -> Result<String, Refusal> {
    let refuse = |code: i32, p: &str, why: &str| {
        let mut m = String::from(p);
        m.push_str(": ");
        m.push_str(why);
        Err((code, m))
    };
    if prog.is_empty() {
        return refuse(127, "''", "command not found");
    }
    if prog.contains('/') {
        return match probe(prog) {
            Probe::Executable => Ok(String::from(prog)),
            Probe::Missing => refuse(127, prog, "no such file or directory"),
            Probe::Dir => refuse(126, prog, "is a directory"),
            Probe::NotExecutable => refuse(126, prog, "permission denied"),
        };
    }
    let mut denied = None;
    for dir in path_var.split(':') {
        let mut candidate = String::from(if dir.is_empty() { "." } else { dir });
        candidate.push('/');
        candidate.push_str(prog);
        match probe(&candidate) {
            Probe::Executable => return Ok(candidate),
            Probe::NotExecutable if denied.is_none() => denied = Some(candidate),
            _ => {}
        }
    }
    match denied {
        Some(p) => refuse(126, &p, "permission denied"),
        None => refuse(127, prog, "command not found"),
    }
}

/// The command's environment: rc's (HOME, PATH, TERM, the image's settings), then the
/// request's `KEY=VALUE` settings (a later key replaces an earlier one).
pub fn environment(image: &[(String, String)], request: &[String]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        (String::from("HOME"), String::from("/")),
        (String::from("PATH"), String::from(crate::PATH)),
        (String::from("TERM"), String::from("linux")),
    ];
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(key, _)| key == k) {
        Some(e) => e.1 = String::from(v),
        None => env.push((String::from(k), String::from(v))),
    };
    for (k, v) in image {
        set(k, v);
    }
    for kv in request {
        if let Some((k, v)) = kv.split_once('=') {
            if !k.is_empty() {
                set(k, v);
            }
        }
    }
    env
}

fn c(s: &str) -> Result<CString, Refusal> {
    CString::new(s).map_err(|_| (126, String::from("an argument contains a NUL byte")))
}

/// Start the exec channel's thread; `env` is rc's environment from the image. If the port
/// never appears (an older host), the thread exits silently.
pub fn spawn(env: Vec<(String, String)>) {
    let _ = std::thread::Builder::new()
        .name(String::from("exec"))
        .stack_size(128 * 1024)
        .spawn(move || serve(env));
}

fn serve(env: Vec<(String, String)>) {
    let deadline = sys::boottime_ms() + FIND_TIMEOUT_MS;
    let dev = loop {
        let ports = control::scan_ports();
        if let Some(dev) = control::find_named(&ports, kiln_wire::PORT_NAME) {
            break String::from(dev);
        }
        if sys::boottime_ms() >= deadline {
            return;
        }
        sys::sleep_ms(10);
    };
    let Ok(fd) = control::open_port(&dev) else {
        return;
    };
    let exec = Arc::new(Exec {
        port: Port {
            fd,
            write: Mutex::new(()),
        },
        sessions: Mutex::new(HashMap::new()),
        env,
    });
    let mut decoder = kiln_wire::Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let waiter = sys::PortWaiter::new(fd);
    loop {
        let n = match sys::read(fd, &mut buf) {
            Ok(n) => n,
            Err(libc::EAGAIN) => {
                sys::wait_for_host(waiter.as_ref(), 100);
                continue;
            }
            Err(_) => return,
        };
        if n == 0 {
            // The host side is not connected (virtio-console reports EOF until it is): a
            // frame cut short will not be finished. Sleep until it connects.
            decoder.clear();
            sys::wait_for_host(waiter.as_ref(), 100);
            continue;
        }
        decoder.push(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => handle(&exec, f),
                Ok(None) => break,
                Err(e) => {
                    sys::emit(
                        &report::Line::new()
                            .s("warning: exec: ")
                            .s(&e.to_string())
                            .s(" (input dropped)")
                            .finish(),
                    );
                    decoder.clear();
                    break;
                }
            }
        }
    }
}

fn handle(exec: &Arc<Exec>, f: Frame) {
    match f {
        Frame::Open { id, open } => {
            if let Err((code, msg)) = start_command(exec, id, &open) {
                exec.port.fail(id, code, msg);
            }
        }
        Frame::Get { id, path } => get(exec, id, &path),
        Frame::Put { id, path, mode } => put(exec, id, &path, mode),
        Frame::Stdin { id, data } => {
            // Never block while holding the sessions' lock, nor for long at all: this thread
            // reads every session's frames. A command that leaves its input unread past
            // STDIN_STALL_MS loses the rest of it (and is told on its stderr), so the other
            // sessions, and a `Close` of this one, still get through.
            let tx = exec.sessions().get(&id).and_then(|s| s.stdin.clone());
            if let Some(tx) = tx {
                if !offer(&tx, data) {
                    if let Some(s) = exec.sessions().get_mut(&id) {
                        s.stdin = None;
                    }
                    exec.port.send(&Frame::Stderr {
                        id,
                        data: b"kiln exec: the command did not read its input; the rest of it was dropped\n"
                            .to_vec(),
                    });
                }
            }
        }
        Frame::StdinEof { id } => {
            if let Some(s) = exec.sessions().get_mut(&id) {
                s.stdin = None;
            }
        }
        Frame::Resize { id, rows, cols } => {
            if let Some(fd) = exec.sessions().get(&id).and_then(|s| s.tty) {
                let _ = sys::set_winsize(fd, rows, cols);
            }
        }
        Frame::Close { id } => {
            if let Some(s) = exec.sessions().get_mut(&id) {
                s.stdin = None;
                s.cancel.store(true, Ordering::SeqCst);
                if let Some(pid) = s.pid {
                    let _ = sys::kill(-pid, libc::SIGKILL);
                    let _ = sys::kill(pid, libc::SIGKILL);
                }
            }
        }
        // Guest → host frames have no business here.
        _ => {}
    }
}

/// Queue `data` for a session's input, waiting at most [`STDIN_STALL_MS`] for room; false
/// when the command did not make room (or its input is gone).
fn offer(tx: &SyncSender<Vec<u8>>, mut data: Vec<u8>) -> bool {
    let deadline = sys::boottime_ms() + STDIN_STALL_MS;
    loop {
        match tx.try_send(data) {
            Ok(()) => return true,
            Err(mpsc::TrySendError::Disconnected(_)) => return true,
            Err(mpsc::TrySendError::Full(d)) => {
                if sys::boottime_ms() >= deadline {
                    return false;
                }
                data = d;
                sys::sleep_ms(5);
            }
        }
    }
}

/// Run `f` in a session thread.
fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> bool {
    std::thread::Builder::new()
        .name(String::from(name))
        .stack_size(STACK)
        .spawn(f)
        .is_ok()
}

/// Copy `fd` to the port as `Stdout` (or `Stderr`) frames of stream `id` until its end (or a
/// terminal's `EIO` once its last user is gone). The errno of a failed read, if any.
fn pump(port: &Port, fd: i32, id: u32, stderr: bool) -> Option<sys::Errno> {
    let mut buf = vec![0u8; kiln_wire::CHUNK];
    loop {
        match sys::read(fd, &mut buf) {
            Ok(0) => return None,
            Ok(n) => {
                let data = buf[..n].to_vec();
                port.send(&if stderr {
                    Frame::Stderr { id, data }
                } else {
                    Frame::Stdout { id, data }
                });
            }
            Err(libc::EIO) => return None,
            Err(e) => return Some(e),
        }
    }
}

/// Feed a session's queued input to `fd`, closing it at the input's end.
fn feed(rx: Receiver<Vec<u8>>, fd: i32) {
    let mut broken = false;
    for data in rx {
        if !broken && sys::write_all_checked(fd, &data).is_err() {
            // The command closed its stdin: drop the rest.
            broken = true;
        }
    }
    sys::close(fd);
}

fn close_all(fds: &[i32]) {
    for &fd in fds {
        sys::close(fd);
    }
}

fn start_command(exec: &Arc<Exec>, id: u32, open: &Open) -> Result<(), Refusal> {
    let Some(prog) = open.argv.first() else {
        return Err((127, String::from("no command given")));
    };
    let env = environment(&exec.env, &open.env);
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(crate::PATH);
    let path = resolve(prog, path_var, probe)?;
    let cwd = if open.cwd.is_empty() {
        "/"
    } else {
        open.cwd.as_str()
    };
    if probe(cwd) != Probe::Dir {
        let mut m = String::from(cwd);
        m.push_str(": no such directory (the working folder)");
        return Err((126, m));
    }
    let mut envp = Vec::new();
    for (k, v) in &env {
        let mut kv = k.clone();
        kv.push('=');
        kv.push_str(v);
        envp.push(c(&kv)?);
    }
    let setup = |stdio: [i32; 3]| -> Result<sys::ExecSetup, Refusal> {
        Ok(sys::ExecSetup {
            path: c(&path)?,
            argv: open.argv.iter().map(|a| c(a)).collect::<Result<_, _>>()?,
            envp: envp.clone(),
            cwd: c(cwd)?,
            stdio,
            tty: open.tty,
        })
    };
    let os_refusal = |what: &str, e: sys::Errno| {
        let mut m = String::from(what);
        m.push_str(": ");
        m.push_str(&sys::strerror(e));
        (126, m)
    };
    // The parent's ends: (stdin writer, stdout reader, stderr reader or -1, terminal or -1);
    // the child's ends are closed once it has them.
    let (ours, theirs): ([i32; 4], Vec<i32>) = if open.tty {
        let (m, s) = sys::openpty(open.rows.max(1), open.cols.max(1))
            .map_err(|e| os_refusal("cannot open a terminal", e))?;
        let input = match sys::dup(m) {
            Ok(fd) => fd,
            Err(e) => {
                close_all(&[m, s]);
                return Err(os_refusal("cannot open a terminal", e));
            }
        };
        ([input, m, -1, m], vec![s, s, s])
    } else {
        let mut fds = Vec::new();
        for _ in 0..3 {
            match sys::pipe() {
                Ok(p) => fds.push(p),
                Err(e) => {
                    for (r, w) in fds {
                        close_all(&[r, w]);
                    }
                    return Err(os_refusal("cannot make pipes", e));
                }
            }
        }
        let (i, o, e) = (fds[0], fds[1], fds[2]);
        ([i.1, o.0, e.0, -1], vec![i.0, o.1, e.1])
    };
    let cleanup = |ours: &[i32; 4], theirs: &[i32]| {
        let mut all: Vec<i32> = ours.iter().copied().filter(|&fd| fd >= 0).collect();
        all.extend(theirs.iter().copied());
        all.sort_unstable();
        all.dedup();
        close_all(&all);
    };
    let s = match setup([theirs[0], theirs[1], theirs[2]]) {
        Ok(s) => s,
        Err(r) => {
            cleanup(&ours, &theirs);
            return Err(r);
        }
    };
    let forked = pid1::fork_watched(|| sys::fork_exec(&s));
    let mut child_fds = theirs;
    child_fds.sort_unstable();
    child_fds.dedup();
    close_all(&child_fds);
    let (pid, err_r) = match forked {
        Ok(p) => p,
        Err(e) => {
            cleanup(&ours, &[]);
            return Err(os_refusal("cannot start the command", e));
        }
    };
    if let Some(e) = sys::exec_result(err_r) {
        let _ = pid1::wait_watched(pid, 5000);
        cleanup(&ours, &[]);
        let code = if e == libc::ENOENT { 127 } else { 126 };
        return Err((code, os_refusal(prog, e).1));
    }
    let [input, out, err, tty] = ours;
    let (tx, rx) = mpsc::sync_channel(STDIN_QUEUE);
    let cancel = Arc::new(AtomicBool::new(false));
    exec.sessions().insert(
        id,
        Session {
            stdin: Some(tx),
            tty: (tty >= 0).then_some(tty),
            pid: Some(pid),
            cancel,
        },
    );
    if !thread("exec-in", move || feed(rx, input)) {
        sys::close(input);
    }
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut pumps = 0;
    for (fd, stderr) in [(out, false), (err, true)] {
        if fd < 0 {
            continue;
        }
        let (ex, done) = (exec.clone(), done_tx.clone());
        // A terminal's master is closed by the waiter, after the session is forgotten.
        let owned = fd != tty;
        let started = thread("exec-out", move || {
            pump(&ex.port, fd, id, stderr);
            if owned {
                sys::close(fd);
            }
            let _ = done.send(());
        });
        if started {
            pumps += 1;
        } else if owned {
            sys::close(fd);
        }
    }
    drop(done_tx);
    let ex = exec.clone();
    let waiter = move || {
        let status = loop {
            if let Some(s) = pid1::wait_watched(pid, 60_000) {
                break s;
            }
        };
        let until = sys::boottime_ms() + DRAIN_MS;
        for _ in 0..pumps {
            let left = until.saturating_sub(sys::boottime_ms());
            if done_rx
                .recv_timeout(std::time::Duration::from_millis(left))
                .is_err()
            {
                break;
            }
        }
        ex.sessions().remove(&id);
        if tty >= 0 {
            sys::close(tty);
        }
        ex.port.send(&Frame::Exit {
            id,
            status: wait_status(status),
        });
    };
    if !thread("exec-wait", waiter) {
        // Without a waiter nobody reports the end: end it now.
        let _ = sys::kill(-pid, libc::SIGKILL);
        exec.sessions().remove(&id);
        return Err((126, String::from("cannot start a thread for the command")));
    }
    Ok(())
}

/// A raw wait status as the wire says it.
pub fn wait_status(status: i32) -> Status {
    if libc::WIFSIGNALED(status) {
        Status::Signaled(libc::WTERMSIG(status))
    } else {
        Status::Exited(libc::WEXITSTATUS(status))
    }
}

fn path_error(path: &str, why: &str) -> String {
    let mut m = String::from(path);
    m.push_str(": ");
    m.push_str(why);
    m
}

/// `Get`: send the regular file at `path`.
fn get(exec: &Arc<Exec>, id: u32, path: &str) {
    let fd = match sys::open(path, libc::O_RDONLY) {
        Ok(fd) => fd,
        Err(e) => return exec.port.fail(id, 1, path_error(path, &sys::strerror(e))),
    };
    match sys::fstat_mode(fd) {
        Ok(m) if m & libc::S_IFMT == libc::S_IFREG => {
            exec.port.send(&Frame::Mode {
                id,
                mode: m & 0o7777,
            });
        }
        Ok(m) if m & libc::S_IFMT == libc::S_IFDIR => {
            sys::close(fd);
            return exec.port.fail(
                id,
                1,
                path_error(path, "is a directory (kiln cp copies single files)"),
            );
        }
        Ok(_) => {
            sys::close(fd);
            return exec
                .port
                .fail(id, 1, path_error(path, "not a regular file"));
        }
        Err(e) => {
            sys::close(fd);
            return exec.port.fail(id, 1, path_error(path, &sys::strerror(e)));
        }
    }
    let ex = exec.clone();
    let p = String::from(path);
    let started = thread("exec-get", move || {
        let failed = pump(&ex.port, fd, id, false);
        sys::close(fd);
        match failed {
            None => ex.port.send(&Frame::Exit {
                id,
                status: Status::Exited(0),
            }),
            Some(e) => ex.port.fail(id, 1, path_error(&p, &sys::strerror(e))),
        }
    });
    if !started {
        sys::close(fd);
        exec.port.fail(id, 1, String::from("cannot start a thread"));
    }
}

/// Where a `Put` writes before it renames: a hidden name beside `path`.
pub fn temp_name(path: &str, id: u32) -> String {
    let (dir, base) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let mut t = String::from(dir);
    t.push('.');
    t.push_str(base);
    t.push_str(".kiln-");
    report::push_num(&mut t, i64::from(id));
    t
}

/// `Put`: write the input that follows to `path` with `mode`.
fn put(exec: &Arc<Exec>, id: u32, path: &str, mode: u32) {
    if path.is_empty() || path.ends_with('/') || probe(path) == Probe::Dir {
        return exec.port.fail(
            id,
            1,
            path_error(path, "is a directory (give the file's path)"),
        );
    }
    let tmp = temp_name(path, id);
    let fd = match sys::create(&tmp, libc::O_WRONLY | libc::O_EXCL, 0o600) {
        Ok(fd) => fd,
        Err(e) => return exec.port.fail(id, 1, path_error(path, &sys::strerror(e))),
    };
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(STDIN_QUEUE);
    let cancel = Arc::new(AtomicBool::new(false));
    exec.sessions().insert(
        id,
        Session {
            stdin: Some(tx),
            tty: None,
            pid: None,
            cancel: cancel.clone(),
        },
    );
    let ex = exec.clone();
    let p = String::from(path);
    let t = tmp.clone();
    let started = thread("exec-put", move || {
        let mut failed = None;
        for data in rx {
            if failed.is_none() {
                failed = sys::write_all_checked(fd, &data).err();
            }
        }
        ex.sessions().remove(&id);
        let result = match failed {
            Some(e) => Err(e),
            None if cancel.load(Ordering::SeqCst) => Err(libc::ECANCELED),
            None => sys::fchmod(fd, mode & 0o7777),
        };
        sys::close(fd);
        match result.and_then(|()| sys::rename(&t, &p)) {
            Ok(()) => ex.port.send(&Frame::Exit {
                id,
                status: Status::Exited(0),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&t);
                ex.port.fail(id, 1, path_error(&p, &sys::strerror(e)));
            }
        }
    });
    if !started {
        exec.sessions().remove(&id);
        sys::close(fd);
        let _ = std::fs::remove_file(&tmp);
        exec.port.fail(id, 1, String::from("cannot start a thread"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(exec: &'static [&'static str], other: &'static [&'static str]) -> impl Fn(&str) -> Probe {
        move |p: &str| {
            if exec.contains(&p) {
                Probe::Executable
            } else if other.contains(&p) {
                Probe::NotExecutable
            } else if p == "/bin" {
                Probe::Dir
            } else {
                Probe::Missing
            }
        }
    }

    #[test]
    fn commands_are_found_as_a_shell_finds_them() {
        let probe = fs(&["/bin/cat", "/usr/bin/cat", "/sbin/x"], &["/bin/data"]);
        let path = "/sbin:/bin:/usr/bin";
        assert_eq!(resolve("cat", path, &probe), Ok("/bin/cat".into()));
        assert_eq!(resolve("x", path, &probe), Ok("/sbin/x".into()));
        assert_eq!(
            resolve("/usr/bin/cat", path, &probe),
            Ok("/usr/bin/cat".into())
        );
        assert_eq!(
            resolve("nosuch", path, &probe),
            Err((127, "nosuch: command not found".into()))
        );
        assert_eq!(
            resolve("/nosuch", path, &probe),
            Err((127, "/nosuch: no such file or directory".into()))
        );
        assert_eq!(
            resolve("data", path, &probe),
            Err((126, "/bin/data: permission denied".into()))
        );
        assert_eq!(
            resolve("/bin", path, &probe),
            Err((126, "/bin: is a directory".into()))
        );
        assert_eq!(resolve("", path, &probe).map_err(|e| e.0), Err(127));
        // An empty PATH entry is the working folder.
        let probe = fs(&["./tool"], &[]);
        assert_eq!(resolve("tool", "/bin::", &probe), Ok("./tool".into()));
    }

    #[test]
    fn the_environment_is_rcs_plus_the_requests() {
        let image = vec![("LANG".to_string(), "C".to_string())];
        let env = environment(
            &image,
            &[
                "TERM=xterm".into(),
                "A=b=c".into(),
                "=x".into(),
                "junk".into(),
            ],
        );
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("HOME"), Some("/"));
        assert_eq!(get("PATH"), Some(crate::PATH));
        assert_eq!(get("TERM"), Some("xterm"));
        assert_eq!(get("LANG"), Some("C"));
        assert_eq!(get("A"), Some("b=c"));
        assert_eq!(env.len(), 5);
    }

    #[test]
    fn wait_statuses_and_temp_names() {
        assert_eq!(wait_status(3 << 8), Status::Exited(3));
        assert_eq!(wait_status(9), Status::Signaled(9));
        assert_eq!(temp_name("/tmp/a.txt", 7), "/tmp/.a.txt.kiln-7");
        assert_eq!(temp_name("a", 1), ".a.kiln-1");
    }

    #[test]
    fn a_forked_command_runs_and_reports_its_output_and_status() {
        let (out_r, out_w) = sys::pipe().expect("pipe");
        let (in_r, in_w) = sys::pipe().expect("pipe");
        let s = sys::ExecSetup {
            path: CString::new("/bin/sh").expect("c"),
            argv: ["sh", "-c", "cat; echo done; exit 3"]
                .iter()
                .map(|a| CString::new(*a).expect("c"))
                .collect(),
            envp: vec![CString::new("PATH=/bin:/usr/bin").expect("c")],
            cwd: CString::new("/").expect("c"),
            stdio: [in_r, out_w, out_w],
            tty: false,
        };
        let (pid, err_r) = pid1::fork_watched(|| sys::fork_exec(&s)).expect("fork");
        close_all(&[in_r, out_w]);
        assert_eq!(sys::exec_result(err_r), None);
        sys::write_all(in_w, b"input\n");
        sys::close(in_w);
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = sys::read(out_r, &mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        sys::close(out_r);
        assert_eq!(out, b"input\ndone\n");
        let status = pid1::wait_watched(pid, 5000).expect("exit");
        assert_eq!(wait_status(status), Status::Exited(3));
        // A program that is not there is reported through the pipe.
        let s = sys::ExecSetup {
            path: CString::new("/nonexistent/prog").expect("c"),
            argv: vec![CString::new("prog").expect("c")],
            envp: vec![],
            cwd: CString::new("/").expect("c"),
            stdio: [0, 1, 2],
            tty: false,
        };
        let (pid, err_r) = pid1::fork_watched(|| sys::fork_exec(&s)).expect("fork");
        assert_eq!(sys::exec_result(err_r), Some(libc::ENOENT));
        assert!(pid1::wait_watched(pid, 5000).is_some());
    }
}
