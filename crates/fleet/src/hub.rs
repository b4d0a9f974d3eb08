//! The serial console of a detached VM, shared: QEMU's console socket takes one client (the
//! supervisor); the supervisor appends everything to `console.log`, keeps the last few KB, and
//! serves any number of viewers on its own unix socket (and optionally TCP, startnb.sh's `-t`).
//! Each new viewer first gets the recent history; what any viewer types goes to the guest.

use crate::error::{FleetError, Result};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// History replayed to a new viewer.
const HISTORY: usize = 16 * 1024;

type Viewer = (u64, Box<dyn Write + Send>);

#[derive(Default)]
struct Inner {
    viewers: Mutex<Vec<Viewer>>,
    guest: Mutex<Option<UnixStream>>,
    history: Mutex<VecDeque<u8>>,
    log: Mutex<Option<std::fs::File>>,
    next_id: AtomicU64,
}

/// The fan-out point between one guest console and many viewers.
#[derive(Clone, Default)]
pub struct Hub(Arc<Inner>);

impl Hub {
    /// A hub appending to `log`.
    pub fn new(log: &Path) -> Result<Hub> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(FleetError::io("opening", log))?;
        let hub = Hub::default();
        if let Ok(mut l) = hub.0.log.lock() {
            *l = Some(f);
        }
        Ok(hub)
    }

    /// The guest console to forward viewer input to (None between restarts).
    pub fn set_guest(&self, s: Option<UnixStream>) {
        if let Ok(mut g) = self.0.guest.lock() {
            *g = s;
        }
    }

    /// Console output: to the log, the history and every viewer (a viewer that cannot take
    /// it within a second is dropped).
    pub fn output(&self, bytes: &[u8]) {
        if let Ok(mut l) = self.0.log.lock() {
            if let Some(f) = l.as_mut() {
                let _ = f.write_all(bytes);
            }
        }
        if let Ok(mut h) = self.0.history.lock() {
            h.extend(bytes);
            let over = h.len().saturating_sub(HISTORY);
            h.drain(..over);
        }
        if let Ok(mut v) = self.0.viewers.lock() {
            v.retain_mut(|(_, w)| w.write_all(bytes).and_then(|_| w.flush()).is_ok());
        }
    }

    /// A note of the supervisor's own, in the log and to viewers (not parsed as guest output).
    pub fn note(&self, text: &str) {
        self.output(format!("\r\n[kiln supervisor] {text}\r\n").as_bytes());
    }

    fn add_viewer(&self, mut writer: Box<dyn Write + Send>, mut reader: Box<dyn Read + Send>) {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let history: Vec<u8> = self
            .0
            .history
            .lock()
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default();
        if writer.write_all(&history).is_err() {
            return;
        }
        if let Ok(mut v) = self.0.viewers.lock() {
            v.push((id, writer));
        }
        let hub = self.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut g) = hub.0.guest.lock() {
                    if let Some(s) = g.as_mut() {
                        let _ = s.write_all(&buf[..n]);
                    }
                }
            }
            if let Ok(mut v) = hub.0.viewers.lock() {
                v.retain(|(i, _)| *i != id);
            }
        });
    }

    /// Serve viewers on a unix socket.
    pub fn serve_unix(&self, path: &Path) -> Result<()> {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).map_err(FleetError::io("binding", path))?;
        self.accept_viewers(move || l.accept().map(|(s, _)| s));
        Ok(())
    }

    /// Serve viewers on TCP (startnb.sh's "serial over TCP").
    pub fn serve_tcp(&self, addr: SocketAddr) -> Result<()> {
        let l = TcpListener::bind(addr)
            .map_err(|e| FleetError::BadInput(format!("serial_tcp {addr}: {e}")))?;
        self.accept_viewers(move || l.accept().map(|(s, _)| s));
        Ok(())
    }

    /// Take each connection `accept` yields as a viewer, in a thread of its own.
    fn accept_viewers<S: Stream>(
        &self,
        mut accept: impl FnMut() -> std::io::Result<S> + Send + 'static,
    ) {
        let hub = self.clone();
        std::thread::spawn(move || loop {
            let Ok(s) = accept() else { return };
            if let Some((w, r)) = s.halves() {
                hub.add_viewer(w, r);
            }
        });
    }

    /// A `Write` that feeds [`Hub::output`] (for the console reader thread).
    pub fn sink(&self) -> HubSink {
        HubSink(self.clone())
    }
}

/// A viewer's connection: unix or TCP.
trait Stream: Read + Write + Send + Sized + 'static {
    fn set_timeout(&self, t: Duration) -> std::io::Result<()>;
    fn clone_stream(&self) -> std::io::Result<Self>;
    /// Its writing half (a slow viewer is dropped after a second) and reading half.
    fn halves(self) -> Option<(Box<dyn Write + Send>, Box<dyn Read + Send>)> {
        let _ = self.set_timeout(Duration::from_secs(1));
        let r = self.clone_stream().ok()?;
        Some((Box::new(self), Box::new(r)))
    }
}

impl Stream for UnixStream {
    fn set_timeout(&self, t: Duration) -> std::io::Result<()> {
        self.set_write_timeout(Some(t))
    }
    fn clone_stream(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
}

impl Stream for std::net::TcpStream {
    fn set_timeout(&self, t: Duration) -> std::io::Result<()> {
        self.set_write_timeout(Some(t))
    }
    fn clone_stream(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
}

/// See [`Hub::sink`].
pub struct HubSink(Hub);

impl Write for HubSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.output(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_get_history_and_output_and_their_input_reaches_the_guest() {
        let d = tempfile::tempdir().expect("tmp");
        let hub = Hub::new(&d.path().join("console.log")).expect("hub");
        let sock = d.path().join("console.sock");
        hub.serve_unix(&sock).expect("serve");
        let (guest_host_side, mut guest) = UnixStream::pair().expect("pair");
        hub.set_guest(Some(guest_host_side));
        hub.output(b"early line\n");
        let mut a = UnixStream::connect(&sock).expect("a");
        let mut b = UnixStream::connect(&sock).expect("b");
        a.set_read_timeout(Some(Duration::from_secs(5))).expect("t");
        b.set_read_timeout(Some(Duration::from_secs(5))).expect("t");
        let mut buf = [0u8; 11];
        a.read_exact(&mut buf).expect("history a");
        assert_eq!(&buf, b"early line\n");
        b.read_exact(&mut buf).expect("history b");
        // Both are registered once their history arrived; later output reaches both.
        kiln_test_support::wait_until(
            "two viewers",
            Duration::from_secs(5),
            Duration::from_millis(5),
            || (hub.0.viewers.lock().map(|v| v.len()).unwrap_or(0) == 2).then_some(()),
        );
        hub.output(b"later\n");
        let mut buf = [0u8; 6];
        a.read_exact(&mut buf).expect("a");
        assert_eq!(&buf, b"later\n");
        b.read_exact(&mut buf).expect("b");
        assert_eq!(&buf, b"later\n");
        a.write_all(b"typed\n").expect("type");
        guest
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("t");
        let mut got = [0u8; 6];
        guest.read_exact(&mut got).expect("guest input");
        assert_eq!(&got, b"typed\n");
        let log = std::fs::read_to_string(d.path().join("console.log")).expect("log");
        assert_eq!(log, "early line\nlater\n");
    }
}
