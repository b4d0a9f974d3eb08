//! Network bring-up: loopback, the static IPv4 interface via the classic
//! `SIOCSIF*`/`SIOCADDRT` ioctls, the resolver files in /etc, and the ARP
//! "poke" that makes QEMU's slirp learn the guest MAC before the host's first
//! forwarded connection arrives.
//!
//! The file contents ([`resolv_conf`], [`hosts`]) are pure and unit-tested;
//! the ioctl layer is deliberately small.

use crate::config::NetConfig;
use crate::{report, sys};
use std::net::Ipv4Addr;

/// Content written to /etc/nsswitch.conf when it is missing.
pub const NSSWITCH: &str = "hosts: files dns\n";

/// /etc/resolv.conf for the given servers.
pub fn resolv_conf(dns: &[String]) -> String {
    let mut s = String::new();
    for d in dns {
        s.push_str("nameserver ");
        s.push_str(d);
        s.push('\n');
    }
    s
}

fn push_ipv4(s: &mut String, a: Ipv4Addr) {
    for (i, o) in a.octets().iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        report::push_num(s, i64::from(*o));
    }
}

/// /etc/hosts: localhost for both families, and the hostname on the guest
/// address (or 127.0.1.1 without networking).
pub fn hosts(hostname: &str, addr: Option<Ipv4Addr>) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    push_ipv4(&mut s, addr.unwrap_or(Ipv4Addr::new(127, 0, 1, 1)));
    s.push('\t');
    s.push_str(hostname);
    s.push('\n');
    s
}

/// A NIC on a Kiln net: found by its MAC, given a static address (no route:
/// the net is one segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lan {
    /// The MAC, lowercase `aa:bb:cc:dd:ee:ff` as sysfs writes it.
    pub mac: String,
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

/// Parse a `kiln.lan=MAC,ADDR/PREFIX` value.
pub fn parse_lan(v: &str) -> Option<Lan> {
    let (mac, cidr) = v.split_once(',')?;
    let mac = mac.to_ascii_lowercase();
    let ok = mac.len() == 17
        && mac.split(':').count() == 6
        && mac
            .split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
    let (addr, prefix) = crate::config::parse_cidr(cidr)?;
    ok.then_some(Lan { mac, addr, prefix })
}

/// The netmask of a prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

/// The interfaces (not `lo`) with their MACs, from sysfs.
pub fn ifaces() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "lo" {
            continue;
        }
        let mac = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
        out.push((name, mac.trim().to_ascii_lowercase()));
    }
    out.sort();
    out
}

/// Which interface is the user NIC when `wanted` (eth0) may have gone to a
/// net's NIC: `wanted` unless its MAC is a lan's, else the first interface
/// that is not a lan's.
pub fn user_iface(wanted: &str, ifaces: &[(String, String)], lans: &[Lan]) -> String {
    let is_lan = |mac: &str| lans.iter().any(|l| l.mac == mac);
    match ifaces.iter().find(|(n, _)| n == wanted) {
        Some((_, mac)) if is_lan(mac) => ifaces
            .iter()
            .find(|(_, m)| !is_lan(m))
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| String::from(wanted)),
        _ => String::from(wanted),
    }
}

/// Wait (up to `timeout_ms`) until every lan's NIC exists; the interfaces then.
pub fn wait_for_lans(lans: &[Lan], timeout_ms: u64) -> Vec<(String, String)> {
    let deadline = sys::boottime_ms() + timeout_ms;
    loop {
        let found = ifaces();
        let all = lans.iter().all(|l| found.iter().any(|(_, m)| *m == l.mac));
        if all || sys::boottime_ms() >= deadline {
            return found;
        }
        sys::sleep_ms(5);
    }
}

/// Bring a lan's NIC (`iface`) up with its address.
pub fn lan_up(iface: &str, lan: &Lan) -> Result<(), String> {
    let s = Sock::new().map_err(sys::strerror)?;
    iface_up(&s, iface, lan.addr, netmask(lan.prefix))
}

/// `/etc/hosts` with the peers on Kiln nets after init's own lines.
pub fn hosts_with_peers(
    hostname: &str,
    addr: Option<Ipv4Addr>,
    peers: &[(String, Ipv4Addr)],
) -> String {
    let mut s = hosts(hostname, addr);
    if !peers.is_empty() {
        s.push_str("# Kiln nets (kept current by kiln-init)\n");
    }
    for (name, a) in peers {
        push_ipv4(&mut s, *a);
        s.push('\t');
        s.push_str(name);
        s.push('\n');
    }
    s
}

/// `struct ifreq`: 16-byte name plus a 24-byte union (sockaddr or flags).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
    // struct ifreq is pointer-aligned (40 bytes on 64-bit); keep ours at least as big.
    _align: [usize; 0],
}

impl IfReq {
    fn new(iface: &str) -> IfReq {
        let mut name = [0u8; 16];
        let n = iface.len().min(15);
        name[..n].copy_from_slice(&iface.as_bytes()[..n]);
        IfReq {
            name,
            data: [0; 24],
            _align: [],
        }
    }

    fn with_addr(iface: &str, addr: Ipv4Addr) -> IfReq {
        let mut r = IfReq::new(iface);
        r.data[..16].copy_from_slice(&sockaddr_in(addr));
        r
    }

    fn flags(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_flags(&mut self, f: i16) {
        self.data[..2].copy_from_slice(&f.to_ne_bytes());
    }
}

/// A `struct sockaddr_in` (port 0) as raw bytes.
fn sockaddr_in(addr: Ipv4Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    b[4..8].copy_from_slice(&addr.octets());
    b
}

/// The kernel's `struct rtentry` (net/route.h); repr(C) yields its layout.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: [u8; 16],
    rt_gateway: [u8; 16],
    rt_genmask: [u8; 16],
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// An AF_INET datagram socket, closed on drop.
struct Sock(i32);

impl Sock {
    fn new() -> sys::SysResult<Sock> {
        // SAFETY: plain socket creation.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            Err(sys::errno())
        } else {
            Ok(Sock(fd))
        }
    }

    /// Issue an ioctl whose argument is `*arg`.
    fn ioctl<T>(&self, req: libc::c_ulong, arg: &mut T) -> sys::SysResult<()> {
        // SAFETY: every request used here reads/writes a struct of type T
        // (ifreq or rtentry) that lives for the duration of the call.
        let rc = unsafe { libc::ioctl(self.0, req as _, arg as *mut T) };
        if rc < 0 {
            Err(sys::errno())
        } else {
            Ok(())
        }
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        sys::close(self.0);
    }
}

fn step(what: &'static str, r: sys::SysResult<()>) -> Result<(), String> {
    r.map_err(|e| {
        let mut s = String::from(what);
        s.push_str(": ");
        s.push_str(&sys::strerror(e));
        s
    })
}

/// Assign `addr`/`netmask` to `iface` and set it UP.
fn iface_up(s: &Sock, iface: &str, addr: Ipv4Addr, netmask: Ipv4Addr) -> Result<(), String> {
    step(
        "SIOCSIFADDR",
        s.ioctl(libc::SIOCSIFADDR as _, &mut IfReq::with_addr(iface, addr)),
    )?;
    step(
        "SIOCSIFNETMASK",
        s.ioctl(
            libc::SIOCSIFNETMASK as _,
            &mut IfReq::with_addr(iface, netmask),
        ),
    )?;
    let mut r = IfReq::new(iface);
    step("SIOCGIFFLAGS", s.ioctl(libc::SIOCGIFFLAGS as _, &mut r))?;
    r.set_flags(r.flags() | (libc::IFF_UP | libc::IFF_RUNNING) as i16);
    step("SIOCSIFFLAGS", s.ioctl(libc::SIOCSIFFLAGS as _, &mut r))
}

/// Bring up `lo` as 127.0.0.1/8.
pub fn loopback_up() -> Result<(), String> {
    let s = Sock::new().map_err(sys::strerror)?;
    iface_up(
        &s,
        "lo",
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(255, 0, 0, 0),
    )
}

/// Wait (polling every 5 ms, up to `timeout_ms`) for `/sys/class/net/IFACE`.
pub fn wait_for_iface(iface: &str, timeout_ms: u64) -> bool {
    let mut path = String::from("/sys/class/net/");
    path.push_str(iface);
    let deadline = sys::boottime_ms() + timeout_ms;
    loop {
        if std::path::Path::new(&path).exists() {
            return true;
        }
        if sys::boottime_ms() >= deadline {
            return false;
        }
        sys::sleep_ms(5);
    }
}

/// Bring the interface up: address, netmask, UP, the default route, then the
/// gateway poke (at boot; a clone keeps its template's configuration). Re-running
/// it on a configured interface is harmless (same address and netmask are
/// no-ops; an existing default route is accepted).
pub fn up(net: &NetConfig) -> Result<(), String> {
    configure(net)?;
    if let Some(gw) = net.gateway {
        poke_gateway(gw);
    }
    Ok(())
}

/// Configure the interface (address, netmask, UP) and the default route.
fn configure(net: &NetConfig) -> Result<(), String> {
    let s = Sock::new().map_err(sys::strerror)?;
    iface_up(&s, &net.iface, net.addr, net.netmask())?;
    if let Some(gw) = net.gateway {
        let mut dev = [0 as libc::c_char; 16];
        for (d, b) in dev.iter_mut().zip(net.iface.bytes().take(15)) {
            *d = b as libc::c_char;
        }
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr_in(gw),
            rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev.as_mut_ptr(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        match s.ioctl(libc::SIOCADDRT as _, &mut rt) {
            Ok(()) | Err(libc::EEXIST) => {}
            Err(e) => step("SIOCADDRT", Err(e))?,
        }
    }
    Ok(())
}

/// Send one empty UDP datagram to `gw`:9 (discard) so the guest ARPs for the
/// gateway right away. Errors are ignored: this is only an optimisation.
fn poke_gateway(gw: Ipv4Addr) {
    let Ok(s) = Sock::new() else { return };
    let mut sa = sockaddr_in(gw);
    sa[2..4].copy_from_slice(&9u16.to_be_bytes());
    // SAFETY: sa is a 16-byte sockaddr_in; the payload is empty.
    unsafe {
        libc::sendto(
            s.0,
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            sa.as_ptr().cast(),
            sa.len() as libc::socklen_t,
        )
    };
}

/// Write `content` to `path` unless it already exists. Errors are ignored.
pub fn write_if_missing(path: &str, content: &str) {
    if !std::path::Path::new(path).exists() {
        let _ = std::fs::write(path, content);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv() {
        assert_eq!(
            resolv_conf(&["10.0.2.3".into(), "fd00::3".into()]),
            "nameserver 10.0.2.3\nnameserver fd00::3\n"
        );
        assert_eq!(resolv_conf(&[]), "");
    }

    #[test]
    fn lans_parse_and_the_user_nic_is_not_taken_for_one() {
        let l = parse_lan("02:6B:00:00:00:01,10.88.0.5/24").expect("lan");
        assert_eq!(l.mac, "02:6b:00:00:00:01");
        assert_eq!(l.addr, Ipv4Addr::new(10, 88, 0, 5));
        assert_eq!(netmask(l.prefix), Ipv4Addr::new(255, 255, 255, 0));
        for bad in [
            "02:6b:00:00:00:01",
            "02:6b:00:00:01,10.88.0.5/24",
            "zz:6b:00:00:00:01,1.2.3.4/8",
            "02:6b:00:00:00:01,10.88.0.5/40",
        ] {
            assert_eq!(parse_lan(bad), None, "{bad}");
        }
        let ifs = vec![
            ("eth0".to_string(), "02:6b:00:00:00:01".to_string()),
            ("eth1".to_string(), "52:54:00:12:34:56".to_string()),
        ];
        assert_eq!(user_iface("eth0", &ifs, std::slice::from_ref(&l)), "eth1");
        assert_eq!(user_iface("eth0", &ifs, &[]), "eth0");
        let peers = vec![("db".to_string(), Ipv4Addr::new(10, 88, 0, 9))];
        let h = hosts_with_peers("web", None, &peers);
        assert!(h.starts_with(&hosts("web", None)), "{h}");
        assert!(h.ends_with("10.88.0.9\tdb\n"), "{h}");
        assert_eq!(hosts_with_peers("web", None, &[]), hosts("web", None));
    }

    #[test]
    fn hosts_file() {
        assert_eq!(
            hosts("httpd", Some(Ipv4Addr::new(10, 0, 2, 15))),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.0.2.15\thttpd\n"
        );
        assert!(hosts("kiln", None).ends_with("127.0.1.1\tkiln\n"));
    }

    #[test]
    fn struct_layouts() {
        assert_eq!(sockaddr_in(Ipv4Addr::new(10, 0, 2, 2))[4..8], [10, 0, 2, 2]);
        if cfg!(target_pointer_width = "64") {
            assert_eq!(std::mem::size_of::<IfReq>(), 40);
            assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        }
        let mut r = IfReq::new("a-very-long-interface-name");
        assert_eq!(&r.name[..15], b"a-very-long-int");
        assert_eq!(r.name[15], 0);
        r.set_flags(0x1043);
        assert_eq!(r.flags(), 0x1043);
    }
}
