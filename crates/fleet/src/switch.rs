//! The switch of a Kiln net: an Ethernet learning switch over unix datagram sockets. Each VM on
//! the net has a NIC whose QEMU backend (`-netdev dgram`) sends every frame as one datagram from
//! the VM's own socket to the switch's; the switch learns which socket each source MAC lives
//! behind and forwards by destination MAC (broadcast, multicast and unknown destinations go to
//! every other port); a member whose socket queue is full has its frames held and sent as it
//! drains. Nothing here is an IP stack: the switch only moves frames between the
//! sockets of the net's members, so a VM not on the net has no way in.
//!
//! Why not `vde_switch` (Debian's vde2): QEMU's `vde` netdev connects once, and after the switch
//! process is restarted its VMs stay disconnected for good (measured: `port/allprint` on the
//! new switch lists no ports). With datagrams addressed by path, a restarted switch bound to the
//! same path gets the VMs' next frames with nothing to reconnect.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Where frames go: the learning table and the ports (VM sockets) seen.
#[derive(Debug, Default)]
pub struct Table {
    macs: HashMap<[u8; 6], PathBuf>,
    ports: BTreeSet<PathBuf>,
}

/// The shortest frame carried (two MAC addresses and the EtherType).
pub const MIN_FRAME: usize = 14;

impl Table {
    /// A frame from `from`: learn its source, and say where it goes (never back to `from`).
    pub fn route(&mut self, frame: &[u8], from: &Path) -> Vec<PathBuf> {
        if frame.len() < MIN_FRAME {
            return vec![];
        }
        if !self.ports.contains(from) {
            self.ports.insert(from.to_path_buf());
        }
        let mut src = [0u8; 6];
        src.copy_from_slice(&frame[6..12]);
        // A multicast source is not an address anyone lives at.
        if src[0] & 1 == 0 && self.macs.get(&src).map(PathBuf::as_path) != Some(from) {
            self.macs.insert(src, from.to_path_buf());
        }
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&frame[..6]);
        match self.macs.get(&dst) {
            Some(p) if dst[0] & 1 == 0 => {
                if p.as_path() == from {
                    vec![]
                } else {
                    vec![p.clone()]
                }
            }
            _ => self
                .ports
                .iter()
                .filter(|p| p.as_path() != from)
                .cloned()
                .collect(),
        }
    }

    /// The VM behind `port` is gone: forget it and the addresses learned there.
    pub fn forget(&mut self, port: &Path) {
        self.ports.remove(port);
        self.macs.retain(|_, p| p.as_path() != port);
    }

    /// A port known before it sends (a member, when a restarted switch starts): broadcasts
    /// reach it, so its peers' ARP finds it again.
    pub fn add_port(&mut self, port: PathBuf) {
        self.ports.insert(port);
    }

    /// The ports known.
    pub fn ports(&self) -> usize {
        self.ports.len()
    }
}

/// Frames held for one member whose socket queue is full (the kernel keeps only
/// `net.unix.max_dgram_qlen` datagrams, 10 by default): past this many, new ones are dropped.
pub const BACKLOG_MAX: usize = 512;

/// What sending one frame to a member came to.
enum Sent {
    Done,
    Full,
    Gone,
}

fn send(sock: &UnixDatagram, frame: &[u8], to: &Path) -> Sent {
    match sock.send_to(frame, to) {
        Ok(_) => Sent::Done,
        Err(e) => match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::ENOBUFS) => Sent::Full,
            Some(libc::ECONNREFUSED) | Some(libc::ENOENT) => Sent::Gone,
            // Anything else (a frame too big for the socket): that frame is lost, as on a wire.
            _ => Sent::Done,
        },
    }
}

/// Move frames on `sock` until `stop` is raised (checked every half second); `seed` are the
/// members known before they send. A member whose queue is full gets its frames held (up to
/// [`BACKLOG_MAX`], in order) and sent as it drains, so a burst is not lost and one stuck VM
/// never holds up the others; a member whose socket is gone is forgotten.
pub fn serve(sock: &UnixDatagram, stop: &AtomicBool, seed: Vec<PathBuf>) -> std::io::Result<()> {
    sock.set_nonblocking(true)?;
    let mut table = Table::default();
    for p in seed {
        table.add_port(p);
    }
    let mut held: HashMap<PathBuf, VecDeque<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        flush(sock, &mut held, &mut table);
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // With frames held, look again soon: a receiving queue gives no wake-up here.
                wait_readable(sock, if held.is_empty() { 500 } else { 1 });
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let Some(from) = from.as_pathname() else {
            continue;
        };
        for to in table.route(&buf[..n], from) {
            if let Some(q) = held.get_mut(&to) {
                if q.len() < BACKLOG_MAX {
                    q.push_back(buf[..n].to_vec());
                }
                continue;
            }
            match send(sock, &buf[..n], &to) {
                Sent::Done => {}
                Sent::Full => {
                    held.entry(to).or_default().push_back(buf[..n].to_vec());
                }
                Sent::Gone => {
                    tracing::info!(port = %to.display(), "a member left");
                    table.forget(&to);
                }
            }
        }
    }
    Ok(())
}

/// Send what is held, in order, while the members take it.
fn flush(sock: &UnixDatagram, held: &mut HashMap<PathBuf, VecDeque<Vec<u8>>>, table: &mut Table) {
    held.retain(|to, q| {
        while let Some(f) = q.front() {
            match send(sock, f, to) {
                Sent::Done => {
                    q.pop_front();
                }
                Sent::Full => return true,
                Sent::Gone => {
                    table.forget(to);
                    return false;
                }
            }
        }
        false
    });
}

fn wait_readable(sock: &UnixDatagram, ms: i32) {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00, 1, 2, 3]);
        f
    }

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const C: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
    const ALL: [u8; 6] = [0xff; 6];

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn floods_until_it_learns_then_forwards_to_one_port() {
        let mut t = Table::default();
        assert!(t.route(&frame(ALL, A), &p("/a")).is_empty(), "alone");
        assert_eq!(t.route(&frame(ALL, B), &p("/b")), [p("/a")]);
        assert_eq!(t.route(&frame(ALL, C), &p("/c")), [p("/a"), p("/b")]);
        // A's address is known: only A gets it.
        assert_eq!(t.route(&frame(A, C), &p("/c")), [p("/a")]);
        // An unknown unicast address floods.
        let unknown = [2, 9, 9, 9, 9, 9];
        assert_eq!(t.route(&frame(unknown, A), &p("/a")), [p("/b"), p("/c")]);
        // Multicast floods even when a port once used that address as source.
        let multi = [0x33, 0x33, 0, 0, 0, 1];
        assert_eq!(t.route(&frame(multi, A), &p("/a")), [p("/b"), p("/c")]);
        assert_eq!(t.ports(), 3);
    }

    #[test]
    fn never_back_to_the_sender_and_short_frames_go_nowhere() {
        let mut t = Table::default();
        t.route(&frame(ALL, A), &p("/a"));
        t.route(&frame(ALL, B), &p("/b"));
        assert!(t.route(&frame(A, A), &p("/a")).is_empty());
        assert!(t.route(&[1, 2, 3], &p("/a")).is_empty());
    }

    #[test]
    fn a_moved_address_follows_and_a_forgotten_port_gets_nothing() {
        let mut t = Table::default();
        t.route(&frame(ALL, A), &p("/a"));
        t.route(&frame(ALL, B), &p("/b"));
        t.route(&frame(ALL, C), &p("/c"));
        // A restarted VM comes back on another socket with the same MAC.
        t.route(&frame(ALL, A), &p("/a2"));
        assert_eq!(t.route(&frame(A, B), &p("/b")), [p("/a2")]);
        t.forget(&p("/a2"));
        t.forget(&p("/a"));
        assert_eq!(
            t.route(&frame(A, B), &p("/b")),
            [p("/c")],
            "unknown again: floods"
        );
    }

    /// A switch serving in a thread on a socket in a temp folder; its members bind beside it.
    struct Running {
        dir: tempfile::TempDir,
        path: PathBuf,
        stop: std::sync::Arc<AtomicBool>,
        thread: std::thread::JoinHandle<std::io::Result<()>>,
    }

    impl Running {
        fn start() -> Running {
            let dir = tempfile::tempdir().expect("tmp");
            let path = dir.path().join("sw");
            let sw = UnixDatagram::bind(&path).expect("bind");
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            let s2 = stop.clone();
            let thread = std::thread::spawn(move || serve(&sw, &s2, vec![]));
            Running {
                dir,
                path,
                stop,
                thread,
            }
        }

        /// A member's socket `name`, its reads bounded by `secs`.
        fn member(&self, name: &str, secs: u64) -> UnixDatagram {
            let m = UnixDatagram::bind(self.dir.path().join(name)).expect("member");
            m.set_read_timeout(Some(std::time::Duration::from_secs(secs)))
                .expect("timeout");
            m
        }

        fn finish(self) {
            self.stop.store(true, Ordering::Relaxed);
            self.thread.join().expect("join").expect("served");
        }
    }

    #[test]
    fn a_burst_to_a_slow_member_is_held_and_delivered_in_order() {
        let sw = Running::start();
        let sw_path = sw.path.clone();
        let a = sw.member("a", 10);
        let b = sw.member("b", 10);
        let mut buf = [0u8; 100];
        // b makes itself known; a learns nothing it needs (unknown destinations flood to b).
        b.send_to(&frame(ALL, B), &sw_path).expect("hello");
        // 200 frames while b reads nothing: far more than a unix socket queues (10 here).
        for i in 0..200u8 {
            let mut f = frame(B, A);
            f.push(i);
            a.send_to(&f, &sw_path).expect("send");
        }
        for i in 0..200u8 {
            let n = b.recv(&mut buf).expect("every frame arrives");
            assert_eq!(buf[n - 1], i, "in order");
        }
        sw.finish();
    }

    #[test]
    fn serves_real_sockets_and_drops_a_member_that_is_gone() {
        let sw = Running::start();
        let sw_path = sw.path.clone();
        let a = sw.member("a", 5);
        let b = sw.member("b", 5);
        let mut buf = [0u8; 100];
        a.send_to(&frame(ALL, A), &sw_path).expect("send");
        b.send_to(&frame(ALL, B), &sw_path).expect("send");
        let n = a.recv(&mut buf).expect("a hears b");
        assert_eq!(&buf[6..12], &B, "{n}");
        b.send_to(&frame(A, B), &sw_path).expect("send");
        a.recv(&mut buf).expect("a hears b again");
        drop(a);
        std::fs::remove_file(sw.dir.path().join("a")).expect("rm");
        // A frame for the departed member is dropped; the switch goes on serving b.
        b.send_to(&frame(A, B), &sw_path).expect("send");
        let c = sw.member("c", 5);
        c.send_to(&frame(ALL, C), &sw_path).expect("send");
        b.recv(&mut buf).expect("b hears c");
        assert_eq!(&buf[6..12], &C);
        sw.finish();
    }
}
