//! Kiln's own listeners in front of QEMU's user-mode TCP port forwards.
//!
//! libslirp listens on a forward's host port with a backlog of 1 (`listen(s, 1)`), and accepts
//! only when QEMU's main loop gets round to it: a burst of new connections (a benchmark, a
//! browser, a health checker) overflows the queue, the host drops the handshakes
//! (`ListenOverflows`), and clients stall for seconds or are reset while the guest is idle.
//!
//! So for every TCP forward Kiln listens on the published port itself, with a real backlog
//! ([`BACKLOG`]), and hands the connections to slirp's forward — moved to a private loopback
//! port — one at a time, at the pace slirp takes them. It also keeps at most [`WINDOW`]
//! connections in the guest's own listen queue at once (handed over, nothing heard back yet):
//! a guest service with a short queue (busybox httpd listens with 9) would drop the rest of a
//! burst, and slirp retries a dropped handshake only after seconds. UDP forwards stay with
//! slirp (no listen queue there).
//!
//! The front lives in the VM's keeper (threads of the process that spawned QEMU) and goes with
//! the [`Front`] value, which [`crate::runner::Launched`] holds.

use kiln_recipe::{PortForward, Protocol};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The listen backlog of a published port (the kernel caps it at `net.core.somaxconn`).
pub const BACKLOG: i32 = 1024;

/// Connections of one forward handed to the guest and not yet answered (a first byte back,
/// or [`WINDOW_HOLD`] gone by), at most: below the shortest listen queue a guest service is
/// likely to have (busybox httpd's 9).
pub const WINDOW: usize = 8;

/// How long a handed-over connection counts against [`WINDOW`] while the guest says nothing
/// (a protocol where the client speaks first, and a client that has not yet).
const WINDOW_HOLD: Duration = Duration::from_millis(300);

/// How long one hand-over to slirp may wait for its handshake before it is tried again
/// (doubling up to [`HANDOVER_TRY_MAX`]): on loopback a handshake with room in the queue
/// completes within the connect call, and when slirp's one-deep queue is full the kernel
/// drops the SYN — its own retry would come only after a second.
const HANDOVER_TRY: Duration = Duration::from_millis(5);
const HANDOVER_TRY_MAX: Duration = Duration::from_millis(80);

/// How long a connection waits for slirp's port at all (QEMU starting, or gone).
const HANDOVER_DEADLINE: Duration = Duration::from_secs(30);

/// Stack of a splicing thread, which holds its copy buffer ([`COPY_BUFFER`]) on it: memory
/// that goes back to the system when the connection ends.
const THREAD_STACK: usize = 64 * 1024;
const COPY_BUFFER: usize = 16 * 1024;

/// The front of one VM's TCP forwards: listeners, their accept threads, live connections.
#[derive(Debug)]
pub struct Front {
    shared: Arc<Shared>,
    listeners: Vec<Arc<TcpListener>>,
    acceptors: Vec<JoinHandle<()>>,
    /// `(published, private)` per TCP forward.
    pub routes: Vec<(SocketAddrV4, SocketAddrV4)>,
}

/// A live connection's two ends: the client's and slirp's.
type Splice = (Arc<TcpStream>, Arc<TcpStream>);

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// Held while a connection is handed to slirp: one in flight keeps slirp's queue from
    /// overflowing.
    handover: Mutex<()>,
    /// Live connections (both ends), shut down when the front goes.
    live: Mutex<HashMap<u64, Splice>>,
    next_id: AtomicU64,
}

/// One forward: slirp's private port and the guest's window.
#[derive(Debug)]
struct Route {
    private: SocketAddrV4,
    waiting: Mutex<usize>,
    freed: Condvar,
}

/// Put fronts on `forwards`' TCP forwards: bind each published port (backlog [`BACKLOG`]),
/// pick a free private loopback port for slirp, and start accepting. Returns the front and
/// the forwards QEMU is to be given (TCP ones moved to their private ports; UDP ones as they
/// were). A published port that cannot be bound is `AddrInUse` (or the bind's error).
pub fn start(forwards: &[PortForward]) -> io::Result<(Front, Vec<PortForward>)> {
    raise_fd_limit();
    let shared = Arc::new(Shared::default());
    let mut front = Front {
        shared: shared.clone(),
        listeners: vec![],
        acceptors: vec![],
        routes: vec![],
    };
    let mut for_qemu = Vec::with_capacity(forwards.len());
    for f in forwards {
        if f.protocol != Protocol::Tcp {
            for_qemu.push(f.clone());
            continue;
        }
        let published = SocketAddrV4::new(f.host_addr, f.host_port);
        let listener = Arc::new(listen(published, BACKLOG)?);
        let private = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_loopback_port()?);
        for_qemu.push(PortForward {
            host_addr: *private.ip(),
            host_port: private.port(),
            guest_port: f.guest_port,
            protocol: Protocol::Tcp,
        });
        let route = Arc::new(Route {
            private,
            waiting: Mutex::new(0),
            freed: Condvar::new(),
        });
        let (l, s) = (listener.clone(), shared.clone());
        let acceptor = std::thread::Builder::new()
            .name(format!("front-{}", f.host_port))
            .spawn(move || accept_loop(&l, &route, &s))?;
        front.listeners.push(listener);
        front.acceptors.push(acceptor);
        front.routes.push((published, private));
    }
    Ok((front, for_qemu))
}

impl Front {
    /// Connections being forwarded now.
    pub fn live(&self) -> usize {
        lock(&self.shared.live).len()
    }
}

impl Drop for Front {
    /// Stop accepting, cut the live connections, and wait for the accept threads.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for l in &self.listeners {
            // SAFETY: shutdown(2) on a socket we own; it wakes the thread blocked in accept.
            unsafe {
                libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR);
            }
        }
        for (a, b) in lock(&self.shared.live).values() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        for t in self.acceptors.drain(..) {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Two descriptors per live connection: lift the soft limit on open files to the hard one
/// (the default soft 1024 would end a burst at about 500 connections).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A TCP listener on `addr` with `backlog` (std's is fixed), SO_REUSEADDR as QEMU sets it.
fn listen(addr: SocketAddrV4, backlog: i32) -> io::Result<TcpListener> {
    // SAFETY: plain socket calls on a descriptor we own; it is closed on every error path
    // (through the TcpListener that owns it from its creation on).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::listen(fd, backlog) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(listener)
    }
}

/// A loopback port free now (the kernel's pick), for slirp to bind next.
fn free_loopback_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn spawn_conn(f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("front-conn".into())
        .stack_size(THREAD_STACK)
        .spawn(f)
}

fn accept_loop(listener: &TcpListener, route: &Arc<Route>, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((client, _)) => {
                let (r, s) = (route.clone(), shared.clone());
                if spawn_conn(move || serve(client, &r, &s)).is_err() {
                    // Out of threads: this connection is closed, the next may fare better.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and the like: back off instead of spinning; the queue holds the rest.
                tracing::debug!("front accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A place in a route's window, given back once (first byte from the guest, a quiet
/// [`WINDOW_HOLD`], or the connection's end).
struct Place<'a> {
    route: &'a Route,
    held: bool,
}

impl Place<'_> {
    fn take<'a>(route: &'a Route, shared: &Shared) -> Option<Place<'a>> {
        let mut waiting = lock(&route.waiting);
        while *waiting >= WINDOW {
            if shared.stop.load(Ordering::SeqCst) {
                return None;
            }
            waiting = route
                .freed
                .wait_timeout(waiting, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        *waiting += 1;
        Some(Place { route, held: true })
    }

    fn give_back(&mut self) {
        if std::mem::take(&mut self.held) {
            *lock(&self.route.waiting) -= 1;
            self.route.freed.notify_one();
        }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Hand `client` to slirp's private port and copy both ways until both sides are done.
fn serve(client: TcpStream, route: &Route, shared: &Arc<Shared>) {
    let Some(mut place) = Place::take(route, shared) else {
        return;
    };
    let Some(guest) = hand_over(route.private, shared) else {
        return; // dropping `client` closes it
    };
    let _ = client.set_nodelay(true);
    let _ = guest.set_nodelay(true);
    let (client, guest) = (Arc::new(client), Arc::new(guest));
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    lock(&shared.live).insert(id, (client.clone(), guest.clone()));
    if shared.stop.load(Ordering::SeqCst) {
        // The front went while we connected: it may not have seen this one.
        let _ = client.shutdown(Shutdown::Both);
        let _ = guest.shutdown(Shutdown::Both);
    }
    let (c, g) = (client.clone(), guest.clone());
    let upstream = spawn_conn(move || pipe(&c, &g, None)).ok();
    if upstream.is_none() {
        let _ = client.shutdown(Shutdown::Both);
        let _ = guest.shutdown(Shutdown::Both);
    }
    pipe(&guest, &client, Some(&mut place));
    drop(place);
    if let Some(t) = upstream {
        let _ = t.join();
    }
    lock(&shared.live).remove(&id);
}

/// Connect to slirp's forward, one connection at a time; `None` when the front stops or the
/// port stays closed (QEMU gone) past the deadline.
fn hand_over(private: SocketAddrV4, shared: &Shared) -> Option<TcpStream> {
    let _one = lock(&shared.handover);
    let deadline = Instant::now() + HANDOVER_DEADLINE;
    let addr = SocketAddr::V4(private);
    let mut wait = HANDOVER_TRY;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return None;
        }
        match TcpStream::connect_timeout(&addr, wait) {
            Ok(s) => return Some(s),
            Err(e) => {
                if Instant::now() >= deadline {
                    tracing::debug!("front: {private}: {e}");
                    return None;
                }
                if e.kind() != io::ErrorKind::TimedOut {
                    // Refused: QEMU has not bound it yet (or has gone).
                    std::thread::sleep(Duration::from_millis(20));
                }
                wait = (wait * 2).min(HANDOVER_TRY_MAX);
            }
        }
    }
}

/// Copy `from` → `to` until end of stream, then pass the end on (half-close); on an error
/// both directions are cut. With a window `place`, it is given back at the first byte (or
/// after [`WINDOW_HOLD`] of silence).
fn pipe(from: &TcpStream, to: &TcpStream, mut place: Option<&mut Place<'_>>) {
    let mut buf = [0u8; COPY_BUFFER];
    let (mut r, mut w) = (from, to);
    if place.is_some() {
        let _ = from.set_read_timeout(Some(WINDOW_HOLD));
    }
    loop {
        let got = r.read(&mut buf);
        if let Some(p) = place.take() {
            p.give_back();
            let _ = from.set_read_timeout(None);
        }
        match got {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if w.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// A stand-in for slirp: listens with a backlog of 1 and accepts slowly, echoing a line
    /// back per connection.
    fn slow_echo_server(port: u16, delay: Duration) -> JoinHandle<()> {
        let l = listen(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), 1).expect("listen");
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                std::thread::sleep(delay);
                std::thread::spawn(move || {
                    let mut r = io::BufReader::new(c.try_clone().expect("clone"));
                    let mut line = String::new();
                    if r.read_line(&mut line).is_ok() {
                        let mut w = c;
                        let _ = w.write_all(format!("echo {line}").as_bytes());
                    }
                });
            }
        })
    }

    fn fwd(s: &str) -> PortForward {
        s.parse().expect("forward")
    }

    #[test]
    fn tcp_forwards_move_to_private_ports_and_udp_stays() {
        let published = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = published.local_addr().expect("addr").port();
        drop(published);
        let (front, qemu) =
            start(&[fwd(&format!("{port}:80")), fwd("5353:53/udp")]).expect("start");
        assert_eq!(qemu.len(), 2);
        assert_eq!(qemu[0].host_addr, Ipv4Addr::LOCALHOST);
        assert_ne!(qemu[0].host_port, port);
        assert_eq!(qemu[0].guest_port, 80);
        assert_eq!(qemu[1], fwd("5353:53/udp"));
        assert_eq!(front.routes.len(), 1);
        // The published port is ours now, with a real backlog.
        assert!(TcpListener::bind(("127.0.0.1", port)).is_err());
        drop(front);
        TcpListener::bind(("127.0.0.1", port)).expect("free again once the front is gone");
    }

    #[test]
    fn a_burst_of_connections_all_get_through_a_one_deep_queue() {
        let published = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = published.local_addr().expect("addr").port();
        drop(published);
        let (front, qemu) = start(&[fwd(&format!("{port}:80"))]).expect("start");
        let _server = slow_echo_server(qemu[0].host_port, Duration::from_millis(2));
        let t0 = Instant::now();
        let clients: Vec<_> = (0..200)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                    c.write_all(format!("hello {i}\n").as_bytes())
                        .expect("write");
                    let mut got = String::new();
                    c.read_to_string(&mut got).expect("read");
                    got
                })
            })
            .collect();
        for (i, c) in clients.into_iter().enumerate() {
            assert_eq!(c.join().expect("client"), format!("echo hello {i}\n"));
        }
        // A dropped handshake would have cost a second (the kernel's SYN retry) or more.
        eprintln!("200 connections through the front in {:?}", t0.elapsed());
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
        drop(front);
    }

    #[test]
    fn a_silent_guest_gets_at_most_a_window_of_connections_at_once() {
        let published = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = published.local_addr().expect("addr").port();
        drop(published);
        let (front, qemu) = start(&[fwd(&format!("{port}:80"))]).expect("start");
        // A guest that accepts and says nothing.
        let l = TcpListener::bind(("127.0.0.1", qemu[0].host_port)).expect("bind private");
        let accepted = Arc::new(Mutex::new(vec![]));
        let a = accepted.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                lock(&a).push(c);
            }
        });
        let _clients: Vec<TcpStream> = (0..WINDOW + 4)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        kiln_wait(|| lock(&accepted).len() == WINDOW);
        std::thread::sleep(WINDOW_HOLD / 3);
        assert_eq!(lock(&accepted).len(), WINDOW, "no more before the hold");
        // Past the hold, quiet connections stop counting and the rest go through.
        kiln_wait(|| lock(&accepted).len() == WINDOW + 4);
        drop(front);
    }

    #[test]
    fn half_close_passes_through_and_the_front_cuts_live_connections() {
        let published = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = published.local_addr().expect("addr").port();
        drop(published);
        let (front, qemu) = start(&[fwd(&format!("{port}:80"))]).expect("start");
        // A server that reads to end of stream, then answers with the byte count.
        let l = TcpListener::bind(("127.0.0.1", qemu[0].host_port)).expect("bind private");
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let mut all = vec![];
                let _ = c.read_to_end(&mut all);
                let _ = c.write_all(all.len().to_string().as_bytes());
            }
        });
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.write_all(&[7u8; 300_000]).expect("write");
        c.shutdown(Shutdown::Write).expect("half-close");
        let mut got = String::new();
        c.read_to_string(&mut got).expect("read");
        assert_eq!(got, "300000");

        let mut idle = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        kiln_wait(|| front.live() == 1);
        drop(front);
        idle.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 1];
        match idle.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("the front's drop should cut a live connection: {other:?}"),
        }
    }

    fn kiln_wait(f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
