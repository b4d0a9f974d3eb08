//! `kiln exec` and `kiln cp` on the host: the keeper's relay of a VM's exec channel, and the
//! typed client the CLI and the web server use.
//!
//! QEMU's end of the exec port (`exec-qemu.sock`, a chardev socket) takes one client: the VM's
//! keeper (the supervisor of a detached VM, or the process of a foreground one) connects to
//! it ([`Relay`], started by [`crate::watch::Session`]) and serves `exec.sock` in the VM's
//! folder. Each connection to `exec.sock` is one session: its first frame starts it (`Open`,
//! `Get` or `Put`), the relay gives it a stream id of its own on the guest side and passes
//! frames both ways; when the client goes away before the session's `Exit`, the guest is told
//! to `Close` it (the command is killed). After `Exit` the relay closes the connection. The
//! frames are [`kiln_wire`]'s.
//!
//! Clients: [`ExecSession`] (from [`crate::Fleet::exec`]) streams a command's output as
//! [`ExecEvent`]s and takes input, window sizes and the end of input through
//! [`ExecInput`]; [`ExecSession::collect`] runs one to its end with a given input (the web
//! API); [`copy_from`] and [`copy_to`] move one file.

use crate::error::{FleetError, Result};
use kiln_wire::{Frame, Open, Status};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The relay's socket in the VM's folder.
pub const EXEC_SOCKET: &str = "exec.sock";

/// Frames queued for a client before the guest's reader waits for it (a client that does not
/// read its output holds every session of the VM back, rather than filling the keeper's
/// memory).
const CLIENT_QUEUE: usize = 64;

/// What a command is, as a client asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecRequest {
    /// The program and its arguments (looked up in the guest's PATH, as rc's).
    pub argv: Vec<String>,
    /// `KEY=VALUE` settings on top of rc's environment.
    pub env: Vec<String>,
    /// The working folder in the guest (`None`: `/`).
    pub cwd: Option<String>,
    /// A terminal of this size (rows, columns) instead of pipes.
    pub tty: Option<(u16, u16)>,
}

impl ExecRequest {
    fn open(&self) -> Open {
        let (rows, cols) = self.tty.unwrap_or((0, 0));
        Open {
            argv: self.argv.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone().unwrap_or_default(),
            tty: self.tty.is_some(),
            rows,
            cols,
        }
    }
}

/// What a running command reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Output (a terminal's whole output).
    Stdout(Vec<u8>),
    /// Error output.
    Stderr(Vec<u8>),
    /// A message from kiln-init for the user (e.g. `nosuch: command not found`); `Exit`
    /// follows.
    Error(String),
    /// The command ended (nothing follows).
    Exit(Status),
}

/// The relay of one VM's exec channel, kept by its keeper. Dropping it stops serving
/// `exec.sock` (and removes it, if it is still this relay's).
#[derive(Debug)]
pub struct Relay {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `exec.sock`.
    listen: PathBuf,
    /// The socket file's inode once bound (a later relay's file is not ours to remove).
    ino: Mutex<Option<u64>>,
    /// The writing half of QEMU's socket.
    guest: Mutex<Option<UnixStream>>,
    /// The sessions' clients by guest-side stream id.
    clients: Mutex<HashMap<u32, SyncSender<Frame>>>,
    next_id: AtomicU32,
    closed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Relay {
    /// Connect to QEMU's exec socket `qemu_socket` (waiting for QEMU to create it, up to
    /// `wait`) and serve clients on `listen`, in background threads: the keeper is not held
    /// up. A VM whose exec channel cannot be reached simply has no `exec.sock`.
    pub fn start(qemu_socket: PathBuf, listen: PathBuf, wait: Duration) -> Relay {
        let inner = Arc::new(Inner {
            listen,
            ino: Mutex::new(None),
            guest: Mutex::new(None),
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            closed: AtomicBool::new(false),
        });
        let i = inner.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + wait;
            let stream = loop {
                if i.closed.load(Ordering::SeqCst) {
                    return;
                }
                match UnixStream::connect(&qemu_socket) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => {
                        tracing::warn!("exec channel {}: {e}", qemu_socket.display());
                        return;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            };
            if let Err(e) = i.serve(stream) {
                tracing::warn!("exec channel: {e}");
            }
        });
        Relay { inner }
    }

    /// Stop serving: no new clients, `exec.sock` removed, QEMU's socket let go.
    pub fn shutdown(&self) {
        self.inner.shut();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.inner.shut();
    }
}

impl Inner {
    fn shut(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(ino) = *lock(&self.ino) {
            // Wake the accept loop, then remove the socket if it is still ours.
            let _ = UnixStream::connect(&self.listen);
            if std::fs::metadata(&self.listen).is_ok_and(|m| m.ino() == ino) {
                let _ = std::fs::remove_file(&self.listen);
            }
        }
        if let Some(g) = lock(&self.guest).as_ref() {
            let _ = g.shutdown(std::net::Shutdown::Both);
        }
        lock(&self.clients).clear();
    }

    fn to_guest(&self, f: &Frame) -> std::io::Result<()> {
        match lock(&self.guest).as_mut() {
            Some(g) => kiln_wire::write_frame(g, f),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    /// Bind `exec.sock`, accept clients in a thread, and pass the guest's frames to them
    /// until QEMU's socket ends.
    fn serve(self: &Arc<Self>, stream: UnixStream) -> std::io::Result<()> {
        let mut reader = stream.try_clone()?;
        *lock(&self.guest) = Some(stream);
        let _ = std::fs::remove_file(&self.listen);
        let listener = UnixListener::bind(&self.listen)?;
        *lock(&self.ino) = std::fs::metadata(&self.listen).ok().map(|m| m.ino());
        if self.closed.load(Ordering::SeqCst) {
            // Shut down while connecting: undo.
            self.closed.store(false, Ordering::SeqCst);
            self.shut();
            return Ok(());
        }
        let me = self.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if me.closed.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(c) = conn {
                    let m = me.clone();
                    std::thread::spawn(move || m.client(c));
                }
            }
        });
        loop {
            match kiln_wire::read_frame(&mut reader) {
                Ok(Some(f)) => {
                    let id = f.id();
                    let end = matches!(f, Frame::Exit { .. });
                    let tx = if end {
                        lock(&self.clients).remove(&id)
                    } else {
                        lock(&self.clients).get(&id).cloned()
                    };
                    if let Some(tx) = tx {
                        if tx.send(f).is_err() {
                            lock(&self.clients).remove(&id);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.shut();
                    return Err(e);
                }
            }
        }
        // QEMU is gone: every client's connection closes without an `Exit`.
        self.shut();
        Ok(())
    }

    /// One client's connection: its first frame starts a session on a fresh stream id.
    fn client(self: Arc<Self>, conn: UnixStream) {
        let Ok(mut out) = conn.try_clone() else {
            return;
        };
        let mut input = conn;
        let mut first = match kiln_wire::read_frame(&mut input) {
            Ok(Some(f)) if f.is_start() => f,
            _ => return,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel::<Frame>(CLIENT_QUEUE);
        lock(&self.clients).insert(id, tx);
        std::thread::spawn(move || {
            for mut f in rx {
                f.set_id(0);
                if kiln_wire::write_frame(&mut out, &f).is_err() {
                    break;
                }
            }
            // The session ended (or the VM did): the client sees the end of the stream.
            let _ = out.shutdown(std::net::Shutdown::Both);
        });
        first.set_id(id);
        if self.to_guest(&first).is_err() {
            lock(&self.clients).remove(&id);
            return;
        }
        loop {
            match kiln_wire::read_frame(&mut input) {
                Ok(Some(mut f)) if !f.is_start() => {
                    f.set_id(id);
                    if self.to_guest(&f).is_err() {
                        break;
                    }
                }
                // Gone, or talking nonsense: the session ends.
                _ => break,
            }
        }
        // Still running: the guest kills it.
        if lock(&self.clients).remove(&id).is_some() {
            let _ = self.to_guest(&Frame::Close { id });
        }
    }
}

/// The client's end of one session.
#[derive(Debug)]
pub struct ExecSession {
    vm: String,
    reader: UnixStream,
    input: ExecInput,
    done: bool,
}

/// What a session is told: input, its end, a terminal's size. Cheap to clone; frames are
/// written whole under a lock.
#[derive(Debug, Clone)]
pub struct ExecInput(Arc<Mutex<UnixStream>>);

impl ExecInput {
    fn send(&self, f: &Frame) -> std::io::Result<()> {
        kiln_wire::write_frame(&mut *lock(&self.0), f)
    }

    /// Input for the command (in chunks the wire takes).
    pub fn stdin(&self, data: &[u8]) -> std::io::Result<()> {
        for chunk in data.chunks(kiln_wire::CHUNK) {
            self.send(&Frame::Stdin {
                id: 0,
                data: chunk.to_vec(),
            })?;
        }
        Ok(())
    }

    /// The input ended (a command reading it sees its end).
    pub fn close_stdin(&self) -> std::io::Result<()> {
        self.send(&Frame::StdinEof { id: 0 })
    }

    /// The terminal's new size.
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        self.send(&Frame::Resize { id: 0, rows, cols })
    }
}

/// A command's whole result ([`ExecSession::collect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its output (cut at the limit given).
    pub stdout: Vec<u8>,
    /// Its error output (cut at the limit given), after any message of kiln-init's.
    pub stderr: Vec<u8>,
    /// How it ended; `None` if it was still running at the deadline (it was killed).
    pub status: Option<Status>,
    /// Output beyond the limit was dropped.
    pub truncated: bool,
}

impl ExecSession {
    /// Connect to `socket` (a VM's `exec.sock`) and send `start`.
    fn connect(vm: &str, socket: &Path, start: &Frame) -> Result<ExecSession> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            FleetError::Other(format!(
                "cannot reach the exec channel of {vm} ({}: {e}); is it still running?",
                socket.display()
            ))
        })?;
        let reader = stream
            .try_clone()
            .map_err(FleetError::io("connecting to", socket))?;
        let s = ExecSession {
            vm: vm.to_string(),
            reader,
            input: ExecInput(Arc::new(Mutex::new(stream))),
            done: false,
        };
        s.input
            .send(start)
            .map_err(FleetError::io("writing to", socket))?;
        Ok(s)
    }

    /// Start `req` through the relay at `socket` (VM `vm`, for messages).
    pub fn start(vm: &str, socket: &Path, req: &ExecRequest) -> Result<ExecSession> {
        if req.argv.is_empty() {
            return Err(FleetError::BadInput(
                "exec: no command given (kiln exec NAME -- CMD ARGS...)".into(),
            ));
        }
        ExecSession::connect(
            vm,
            socket,
            &Frame::Open {
                id: 0,
                open: req.open(),
            },
        )
    }

    /// A handle to give the command input (usable from another thread).
    pub fn input(&self) -> ExecInput {
        self.input.clone()
    }

    /// The next event; after `Exit`, `Ok(None)`. A connection that ends before `Exit` is an
    /// error (the VM stopped).
    pub fn next_event(&mut self) -> Result<Option<ExecEvent>> {
        if self.done {
            return Ok(None);
        }
        let lost = |why: String| {
            FleetError::Other(format!(
                "the exec channel of {} closed before the command ended ({why}); did the VM stop?",
                self.vm
            ))
        };
        loop {
            let f = match kiln_wire::read_frame(&mut self.reader) {
                Ok(Some(f)) => f,
                Ok(None) => return Err(lost("end of stream".into())),
                Err(e) => return Err(lost(e.to_string())),
            };
            return Ok(Some(match f {
                Frame::Stdout { data, .. } => ExecEvent::Stdout(data),
                Frame::Stderr { data, .. } => ExecEvent::Stderr(data),
                Frame::Error { message, .. } => ExecEvent::Error(message),
                Frame::Exit { status, .. } => {
                    self.done = true;
                    ExecEvent::Exit(status)
                }
                _ => continue,
            }));
        }
    }

    /// Run the command to its end with `stdin` as its whole input, keeping at most `limit`
    /// bytes of each output; past `timeout` it is killed (`status` None).
    pub fn collect(
        mut self,
        stdin: Vec<u8>,
        limit: usize,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let input = self.input();
        std::thread::spawn(move || {
            let _ = input.stdin(&stdin).and_then(|()| input.close_stdin());
        });
        let deadline = Instant::now() + timeout;
        let mut out = ExecOutput {
            stdout: vec![],
            stderr: vec![],
            status: None,
            truncated: false,
        };
        let keep = |buf: &mut Vec<u8>, data: &[u8], truncated: &mut bool| {
            let room = limit.saturating_sub(buf.len());
            if data.len() > room {
                *truncated = true;
            }
            buf.extend_from_slice(&data[..data.len().min(room)]);
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Dropping the connection makes the relay close the session: it is killed.
                let _ = self.reader.shutdown(std::net::Shutdown::Both);
                return Ok(out);
            }
            let _ = self.reader.set_read_timeout(Some(left));
            match self.next_event() {
                Ok(Some(ExecEvent::Stdout(d))) => keep(&mut out.stdout, &d, &mut out.truncated),
                Ok(Some(ExecEvent::Stderr(d))) => keep(&mut out.stderr, &d, &mut out.truncated),
                Ok(Some(ExecEvent::Error(m))) => {
                    let line = format!("kiln exec: {m}\n");
                    keep(&mut out.stderr, line.as_bytes(), &mut out.truncated)
                }
                Ok(Some(ExecEvent::Exit(s))) => {
                    out.status = Some(s);
                    return Ok(out);
                }
                Ok(None) => return Ok(out),
                Err(_) if Instant::now() >= deadline => {
                    let _ = self.reader.shutdown(std::net::Shutdown::Both);
                    return Ok(out);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A file transfer's failure as the guest said it (`PATH: No such file or directory`): the
/// user's to fix.
fn transfer_error(vm: &str, message: String) -> FleetError {
    FleetError::BadInput(format!("{vm}:{message}"))
}

/// Copy the regular file `path` out of VM `vm` (relay `socket`) into `out`; its mode.
pub fn copy_from(vm: &str, socket: &Path, path: &str, out: &mut dyn Write) -> Result<u32> {
    let mut s = ExecSession::connect(
        vm,
        socket,
        &Frame::Get {
            id: 0,
            path: path.to_string(),
        },
    )?;
    let mut mode = None;
    let mut error = None;
    loop {
        let f = match kiln_wire::read_frame(&mut s.reader) {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(FleetError::Other(format!(
                    "{vm}: the copy of {path} was cut short; did the VM stop?"
                )))
            }
            Err(e) => {
                return Err(FleetError::Other(format!(
                    "{vm}: the copy of {path} failed: {e}"
                )))
            }
        };
        match f {
            Frame::Mode { mode: m, .. } => mode = Some(m),
            Frame::Stdout { data, .. } => out
                .write_all(&data)
                .map_err(|e| FleetError::Other(format!("writing the copy of {vm}:{path}: {e}")))?,
            Frame::Error { message, .. } => error = Some(message),
            Frame::Exit { status, .. } => {
                return match (status, error, mode) {
                    (Status::Exited(0), None, Some(m)) => Ok(m),
                    (_, Some(m), _) => Err(transfer_error(vm, m)),
                    (st, None, _) => Err(FleetError::Other(format!(
                        "{vm}:{path}: the copy failed (status {})",
                        st.code()
                    ))),
                };
            }
            _ => {}
        }
    }
}

/// Copy `input` into VM `vm` (relay `socket`) as the file `path` with permission bits `mode`
/// (written beside it and renamed into place when complete).
pub fn copy_to(vm: &str, socket: &Path, path: &str, mode: u32, input: &mut dyn Read) -> Result<()> {
    let s = ExecSession::connect(
        vm,
        socket,
        &Frame::Put {
            id: 0,
            path: path.to_string(),
            mode,
        },
    )?;
    // The guest may refuse at once (no such folder): read its answer beside the upload.
    let mut reader = s
        .reader
        .try_clone()
        .map_err(|e| FleetError::Other(format!("{vm}: {e}")))?;
    let answer = std::thread::spawn(move || {
        let mut error = None;
        loop {
            match kiln_wire::read_frame(&mut reader) {
                Ok(Some(Frame::Error { message, .. })) => error = Some(message),
                Ok(Some(Frame::Exit { status, .. })) => return Ok((status, error)),
                Ok(Some(_)) => {}
                Ok(None) => return Err("the connection ended".to_string()),
                Err(e) => return Err(e.to_string()),
            }
        }
    });
    let input_stream = s.input();
    let mut buf = vec![0u8; kiln_wire::CHUNK];
    let mut sent = Ok(());
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Do not leave a partial file: going away makes the guest drop it.
                let _ = s.reader.shutdown(std::net::Shutdown::Both);
                let _ = answer.join();
                return Err(FleetError::Other(format!("reading the file to copy: {e}")));
            }
        };
        if let Err(e) = input_stream.stdin(&buf[..n]) {
            // Refused already: the answer says why.
            sent = Err(e);
            break;
        }
    }
    if sent.is_ok() {
        sent = input_stream.close_stdin();
    }
    match answer.join() {
        Ok(Ok((Status::Exited(0), None))) => Ok(()),
        Ok(Ok((_, Some(m)))) => Err(transfer_error(vm, m)),
        Ok(Ok((st, None))) => Err(FleetError::Other(format!(
            "{vm}:{path}: the copy failed (status {})",
            st.code()
        ))),
        Ok(Err(why)) => Err(FleetError::Other(format!(
            "{vm}:{path}: the copy was cut short ({why}{}); did the VM stop?",
            sent.err().map(|e| format!(", {e}")).unwrap_or_default()
        ))),
        Err(_) => Err(FleetError::Other("the copy's reader panicked".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake guest on the far end of QEMU's socket: answers `Open` by echoing its input as
    /// output (upper-cased on stderr), `Exit` with the argv's length; `Get` with a file.
    fn fake_guest(listener: UnixListener) {
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("relay connects");
            let mut r = conn.try_clone().expect("clone");
            let w = Arc::new(Mutex::new(conn));
            let send = |f: Frame| kiln_wire::write_frame(&mut *lock(&w), &f).expect("send");
            let mut argc = HashMap::new();
            while let Ok(Some(f)) = kiln_wire::read_frame(&mut r) {
                match f {
                    Frame::Open { id, open } => {
                        if open.argv[0] == "nosuch" {
                            send(Frame::Error {
                                id,
                                message: "nosuch: command not found".into(),
                            });
                            send(Frame::Exit {
                                id,
                                status: Status::Exited(127),
                            });
                        } else {
                            argc.insert(id, open.argv.len() as i32);
                        }
                    }
                    Frame::Stdin { id, data } => {
                        send(Frame::Stdout {
                            id,
                            data: data.clone(),
                        });
                        send(Frame::Stderr {
                            id,
                            data: data.to_ascii_uppercase(),
                        });
                    }
                    Frame::StdinEof { id } => send(Frame::Exit {
                        id,
                        status: Status::Exited(argc[&id]),
                    }),
                    Frame::Get { id, path } => {
                        send(Frame::Mode { id, mode: 0o640 });
                        send(Frame::Stdout {
                            id,
                            data: path.into_bytes(),
                        });
                        send(Frame::Exit {
                            id,
                            status: Status::Exited(0),
                        });
                    }
                    _ => {}
                }
            }
        });
    }

    #[test]
    fn the_relay_serves_several_sessions_at_once() {
        let d = tempfile::tempdir().expect("tmp");
        let qemu = d.path().join("exec-qemu.sock");
        fake_guest(UnixListener::bind(&qemu).expect("bind"));
        let sock = d.path().join(EXEC_SOCKET);
        let relay = Relay::start(qemu, sock.clone(), Duration::from_secs(5));
        kiln_test_support::wait_until(
            "exec.sock",
            Duration::from_secs(5),
            Duration::from_millis(5),
            || sock.exists().then_some(()),
        );
        let req = |argv: &[&str]| ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..ExecRequest::default()
        };
        let a = ExecSession::start("vm", &sock, &req(&["a"])).expect("a");
        let b = ExecSession::start("vm", &sock, &req(&["b", "c", "d"])).expect("b");
        let out_b = b
            .collect(b"two".to_vec(), 1 << 20, Duration::from_secs(10))
            .expect("b runs");
        let out_a = a
            .collect(b"one".to_vec(), 2, Duration::from_secs(10))
            .expect("a runs");
        assert_eq!(out_b.stdout, b"two");
        assert_eq!(out_b.stderr, b"TWO");
        assert_eq!(out_b.status, Some(Status::Exited(3)));
        assert!(!out_b.truncated);
        assert_eq!(out_a.stdout, b"on");
        assert!(out_a.truncated);
        assert_eq!(out_a.status, Some(Status::Exited(1)));
        let mut s = ExecSession::start("vm", &sock, &req(&["nosuch"])).expect("start");
        assert_eq!(
            s.next_event().expect("e"),
            Some(ExecEvent::Error("nosuch: command not found".into()))
        );
        assert_eq!(
            s.next_event().expect("e"),
            Some(ExecEvent::Exit(Status::Exited(127)))
        );
        assert_eq!(s.next_event().expect("e"), None);
        let mut file = Vec::new();
        assert_eq!(
            copy_from("vm", &sock, "/etc/x", &mut file).expect("get"),
            0o640
        );
        assert_eq!(file, b"/etc/x");
        assert!(ExecSession::start("vm", &sock, &req(&[])).is_err());
        drop(relay);
        assert!(!sock.exists(), "the relay's socket goes with it");
    }
}
