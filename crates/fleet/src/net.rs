//! Kiln nets: private Ethernet segments between VMs, without root. A net is a folder under the
//! state folder (`nets/NAME/`: `net.json` with its subnet and its switch's pid, `leases.json`
//! with each VM's address, the switch's socket and log) and a switch process Kiln starts and
//! keeps (`PROGRAM __net NAME`, [`crate::switch`]): started by `kiln net create`, started again by
//! whoever finds it dead (a member's keeper looks twice a second, `kiln net ls` and every start
//! of a member look too), stopped and removed with the net.
//!
//! A VM joins with `--net NAME` (repeatable): a NIC on the switch, an address from the subnet
//! that stays the VM name's while the lease lives (the first free one from a hash of the name),
//! and its peers by name: each member's keeper pushes the current members' names and addresses
//! to kiln-init (`hosts` on the control channel) whenever they change, and kiln-init rewrites
//! `/etc/hosts`.

use crate::error::{FleetError, Result};
use crate::fleet::Fleet;
use crate::host::same_process;
use crate::store::{lock_file, write_json};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The nets' folder under the state folder.
pub const NETS_DIR: &str = "nets";
/// The switch's socket in a net's folder.
pub const SWITCH_SOCKET: &str = "switch.sock";
const NET_FILE: &str = "net.json";
const LEASES: &str = "leases.json";
const SWITCH_LOG: &str = "switch.log";
const SWITCH_LOCK: &str = ".switch-lock";
/// How long a started switch has to bind its socket.
const SWITCH_START: Duration = Duration::from_secs(5);
/// How often a member's keeper checks its nets' switches and members.
pub const MEMBER_POLL: Duration = Duration::from_millis(500);
/// The longest path a unix socket can have (`sun_path` less its NUL).
const SUN_PATH_MAX: usize = 107;

/// An IPv4 subnet, `A.B.C.D/N` with the host bits zero, N from 16 to 29.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Subnet {
    fn mask(self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// Whether `ip` is inside.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether the two share any address.
    pub fn overlaps(self, other: Subnet) -> bool {
        let m = self.mask() & other.mask();
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }

    /// The addresses given to VMs: all but the network address, the first host address (kept
    /// for the host's side of a net) and the broadcast address.
    pub fn vm_addresses(self) -> std::ops::RangeInclusive<u32> {
        let base = u32::from(self.addr);
        (base + 2)..=(base | !self.mask()) - 1
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Subnet, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("subnet `{s}`: expected A.B.C.D/N, e.g. 10.88.0.0/24"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("subnet `{s}`: `{a}` is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| (16..=29).contains(p))
            .ok_or_else(|| format!("subnet `{s}`: the prefix must be 16 to 29"))?;
        let net = Subnet { addr, prefix };
        let network = Ipv4Addr::from(u32::from(addr) & net.mask());
        if network != addr {
            return Err(format!(
                "subnet `{s}`: host bits are set; did you mean {network}/{prefix}?"
            ));
        }
        Ok(net)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Subnet, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A net as stored (`nets/NAME/net.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetRecord {
    /// Its name.
    pub name: String,
    /// Its subnet.
    pub subnet: Subnet,
    /// When it was made (Unix seconds).
    pub created: u64,
    /// The switch's pid (0: never started).
    pub switch_pid: u32,
    /// The switch's start time, to tell it from a later process with its pid.
    pub switch_start: Option<u64>,
    /// The host boot the pid belongs to.
    pub boot_id: String,
    /// How many times the switch was found dead and started again.
    pub restarts: u32,
}

/// A net as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetRow {
    /// Its name.
    pub name: String,
    /// Its subnet.
    pub subnet: Subnet,
    /// The switch's pid, when it runs.
    pub switch_pid: Option<u32>,
    /// Restarts of its switch.
    pub restarts: u32,
    /// The running VMs on it, with their addresses.
    pub members: Vec<NetMember>,
}

/// A VM on a net.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetMember {
    /// The VM's name.
    pub name: String,
    /// Its address on the net.
    pub addr: Ipv4Addr,
}

/// A VM's NIC on a net, as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lan {
    /// The net.
    pub net: String,
    /// The VM's address on it.
    pub addr: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The NIC's MAC address.
    pub mac: String,
    /// The net's switch socket.
    pub switch: PathBuf,
}

impl Lan {
    /// The kernel argument that tells kiln-init to configure this NIC.
    pub fn kernel_arg(&self) -> String {
        format!("kiln.lan={},{}/{}", self.mac, self.addr, self.prefix)
    }
}

fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The MAC of VM `vm`'s NIC on `net`: locally administered, the same at every start.
pub fn mac_for(vm: &str, net: &str) -> String {
    let h = fnv1a(&[vm, net]).to_be_bytes();
    format!("02:6b:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3])
}

/// The address for `vm` in `subnet`: its lease if it has one, else the first free address from
/// a hash of its name on; leases of VMs not in `live` give way when nothing else is free.
pub fn allocate(
    leases: &mut BTreeMap<String, Ipv4Addr>,
    subnet: Subnet,
    vm: &str,
    live: &BTreeSet<String>,
) -> std::result::Result<Ipv4Addr, String> {
    if let Some(&a) = leases.get(vm) {
        if subnet.vm_addresses().contains(&u32::from(a)) {
            return Ok(a);
        }
    }
    leases.remove(vm);
    let range = subnet.vm_addresses();
    let count = u64::from(range.end() - range.start() + 1);
    let first = fnv1a(&[vm]) % count;
    for round in 0..2 {
        if round == 1 {
            leases.retain(|name, _| live.contains(name));
        }
        let taken: BTreeSet<u32> = leases.values().map(|&a| u32::from(a)).collect();
        for i in 0..count {
            let a = range.start() + ((first + i) % count) as u32;
            if !taken.contains(&a) {
                let ip = Ipv4Addr::from(a);
                leases.insert(vm.to_string(), ip);
                return Ok(ip);
            }
        }
    }
    Err(format!(
        "all {count} addresses of {subnet} are held by running VMs; make a net with a larger \
         --subnet"
    ))
}

/// The `hosts` control command for a member: its peers' names and addresses, sorted by name
/// (a peer on two of its nets is named once, on the first).
pub fn hosts_command(peers: &BTreeMap<String, Ipv4Addr>) -> String {
    let mut line = String::from("hosts");
    for (name, addr) in peers {
        line.push_str(&format!(" {name}={addr}"));
    }
    line.push('\n');
    line
}

fn no_net(name: &str) -> FleetError {
    FleetError::BadInput(format!(
        "no net named `{name}`: make it with `kiln net create {name}` (see `kiln net ls`)"
    ))
}

fn check_socket_path(p: &Path) -> Result<()> {
    if p.as_os_str().len() > SUN_PATH_MAX {
        return Err(FleetError::BadInput(format!(
            "{}: a unix socket path may be at most {SUN_PATH_MAX} bytes; use a shorter \
             KILN_STATE_DIR",
            p.display()
        )));
    }
    Ok(())
}

impl Fleet {
    /// The folder of net `name`.
    pub fn net_dir(&self, name: &str) -> PathBuf {
        self.store().root().join(NETS_DIR).join(name)
    }

    /// Net `name` as stored.
    pub fn net_record(&self, name: &str) -> Result<NetRecord> {
        if crate::config::check_name(name).is_err() {
            return Err(no_net(name));
        }
        let path = self.net_dir(name).join(NET_FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(no_net(name)),
            Err(e) => return Err(FleetError::io("reading", &path)(e)),
        };
        serde_json::from_slice(&data).map_err(|e| {
            FleetError::Other(format!(
                "{}: not a net Kiln can read ({e}); remove its folder",
                path.display()
            ))
        })
    }

    fn net_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.store().root().join(NETS_DIR))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| crate::config::check_name(n).is_ok())
            .collect();
        names.sort();
        names
    }

    /// Make net `name` (on `subnet`, or the first free 10.88.N.0/24) and start its switch.
    pub fn net_create(&self, name: &str, subnet: Option<Subnet>) -> Result<NetRow> {
        crate::config::check_name(name).map_err(|m| FleetError::BadInput(format!("net {m}")))?;
        let slirp = Subnet {
            addr: Ipv4Addr::new(10, 0, 2, 0),
            prefix: 24,
        };
        if let Some(s) = subnet.filter(|s| s.overlaps(slirp)) {
            return Err(FleetError::BadInput(format!(
                "--subnet {s} overlaps {slirp}, the user network every VM's eth0 is on; \
                 choose another"
            )));
        }
        let _lock = self.store().lock()?;
        let dir = self.net_dir(name);
        check_socket_path(&dir.join(SWITCH_SOCKET))?;
        if dir.join(NET_FILE).exists() {
            return Err(FleetError::BadInput(format!(
                "a net named `{name}` exists (remove it first with `kiln net rm {name}`)"
            )));
        }
        let others: Vec<NetRecord> = self
            .net_names()
            .iter()
            .filter_map(|n| self.net_record(n).ok())
            .collect();
        let subnet = match subnet {
            Some(s) => {
                if let Some(o) = others.iter().find(|o| o.subnet.overlaps(s)) {
                    return Err(FleetError::BadInput(format!(
                        "--subnet {s} overlaps net `{}` ({}); choose another",
                        o.name, o.subnet
                    )));
                }
                s
            }
            None => (0..=255u8)
                .map(|n| Subnet {
                    addr: Ipv4Addr::new(10, 88, n, 0),
                    prefix: 24,
                })
                .find(|s| !s.overlaps(slirp) && !others.iter().any(|o| o.subnet.overlaps(*s)))
                .ok_or_else(|| {
                    FleetError::BadInput("10.88.0.0/16 is used up: give --subnet".into())
                })?,
        };
        std::fs::create_dir_all(&dir).map_err(FleetError::io("creating", &dir))?;
        let rec = NetRecord {
            name: name.to_string(),
            subnet,
            created: self.host().now(),
            switch_pid: 0,
            switch_start: None,
            boot_id: String::new(),
            restarts: 0,
        };
        let made = write_json(&dir.join(NET_FILE), &rec).and_then(|()| self.net_ensure(name));
        if let Err(e) = made {
            // No half-made net: a folder without a running switch would only confuse `ls`.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        self.net_row(name, &self.store().list())
    }

    /// Start net `name`'s switch unless it runs; its record after.
    pub fn net_ensure(&self, name: &str) -> Result<NetRecord> {
        let dir = self.net_dir(name);
        let _lock = lock_file(&dir.join(SWITCH_LOCK)).map_err(|e| match self.net_record(name) {
            Err(no) => no,
            Ok(_) => e,
        })?;
        let mut rec = self.net_record(name)?;
        let sock = dir.join(SWITCH_SOCKET);
        let host = self.host();
        if same_process(host, &rec.boot_id, rec.switch_pid, rec.switch_start) && sock.exists() {
            return Ok(rec);
        }
        if rec.switch_pid != 0 {
            // A switch that lives on without its socket is no switch.
            if same_process(host, &rec.boot_id, rec.switch_pid, rec.switch_start) {
                host.signal(rec.switch_pid, libc::SIGKILL);
            }
            rec.restarts += 1;
            tracing::warn!(net = name, "the switch was not running; starting it again");
        }
        let _ = std::fs::remove_file(&sock);
        let mut argv = self.supervisor.clone();
        argv.pop();
        argv.push("__net".into());
        argv.push(name.into());
        let env = [("KILN_STATE_DIR", self.store().root().as_os_str().to_owned())];
        let child = host
            .spawn_supervisor(&argv, &env, &dir.join(SWITCH_LOG))
            .map_err(|e| FleetError::Other(format!("starting the switch of net {name}: {e}")))?;
        rec.switch_pid = child.pid();
        rec.switch_start = host.process_start(rec.switch_pid);
        rec.boot_id = host.boot_id();
        child.release();
        write_json(&dir.join(NET_FILE), &rec)?;
        let deadline = Instant::now() + SWITCH_START;
        while !sock.exists() {
            if Instant::now() > deadline || host.process_start(rec.switch_pid).is_none() {
                let log = std::fs::read_to_string(dir.join(SWITCH_LOG)).unwrap_or_default();
                return Err(FleetError::Other(format!(
                    "the switch of net {name} did not start: {}",
                    log.trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(rec)
    }

    /// Run net `name`'s switch until SIGTERM (the body of `kiln __net NAME`).
    pub fn run_switch(&self, name: &str) -> Result<()> {
        let rec = self.net_record(name)?;
        let sock = self.net_dir(name).join(SWITCH_SOCKET);
        let _ = std::fs::remove_file(&sock);
        let s = std::os::unix::net::UnixDatagram::bind(&sock)
            .map_err(FleetError::io("binding", &sock))?;
        let stop = crate::watch::stop_on_signals()
            .map_err(|e| FleetError::Other(format!("signal handlers: {e}")))?;
        // The members' sockets, so a restarted switch reaches VMs that stay silent.
        let seed: Vec<PathBuf> = self
            .store()
            .list()
            .into_iter()
            .filter(|r| r.state.is_active())
            .filter_map(|r| {
                let i = r.config.nets.iter().position(|n| n == name)?;
                Some(self.store().vm_dir(&r.name).join(format!("lan{i}.sock")))
            })
            .filter(|p| p.exists())
            .collect();
        tracing::info!(net = name, subnet = %rec.subnet, members = seed.len(), "switch running");
        let served =
            crate::switch::serve(&s, &stop, seed).map_err(FleetError::io("serving", &sock));
        let _ = std::fs::remove_file(&sock);
        served
    }

    /// The active VMs on net `name` with their leased addresses (from `records`).
    fn members(
        &self,
        name: &str,
        records: &[crate::VmRecord],
    ) -> Result<BTreeMap<String, Ipv4Addr>> {
        let leases = self.leases(name)?;
        Ok(records
            .iter()
            .filter(|r| r.state.is_active() && r.config.nets.iter().any(|n| n == name))
            .filter_map(|r| leases.get(&r.name).map(|a| (r.name.clone(), *a)))
            .collect())
    }

    fn leases(&self, name: &str) -> Result<BTreeMap<String, Ipv4Addr>> {
        let path = self.net_dir(name).join(LEASES);
        match std::fs::read(&path) {
            Ok(d) => serde_json::from_slice(&d).map_err(|e| {
                FleetError::Other(format!("{}: {e}; remove the file", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(FleetError::io("reading", &path)(e)),
        }
    }

    fn net_row(&self, name: &str, records: &[crate::VmRecord]) -> Result<NetRow> {
        let rec = self.net_record(name)?;
        let running = same_process(self.host(), &rec.boot_id, rec.switch_pid, rec.switch_start);
        Ok(NetRow {
            name: rec.name,
            subnet: rec.subnet,
            switch_pid: running.then_some(rec.switch_pid),
            restarts: rec.restarts,
            members: self
                .members(name, records)?
                .into_iter()
                .map(|(name, addr)| NetMember { name, addr })
                .collect(),
        })
    }

    /// Every net, its switch started again if it had died.
    pub fn nets(&self) -> Vec<NetRow> {
        let records = self.store().list();
        self.net_names()
            .iter()
            .filter_map(|n| {
                if let Err(e) = self.net_ensure(n) {
                    tracing::warn!(net = %n, "{e}");
                }
                self.net_row(n, &records).ok()
            })
            .collect()
    }

    /// Stop net `name`'s switch and forget the net; refused while a VM is on it.
    pub fn net_rm(&self, name: &str) -> Result<()> {
        self.net_record(name)?;
        let _lock = self.store().lock()?;
        let rec = self.net_record(name)?;
        let users: Vec<String> = self
            .store()
            .list()
            .into_iter()
            .filter(|r| r.state.is_active() && r.config.nets.iter().any(|n| n == name))
            .map(|r| r.name)
            .collect();
        if !users.is_empty() {
            return Err(FleetError::BadInput(format!(
                "net `{name}` is in use by {}: stop them first (`kiln stop {}`)",
                users.join(", "),
                users.join(" ")
            )));
        }
        let dir = self.net_dir(name);
        let _switch = lock_file(&dir.join(SWITCH_LOCK))?;
        let host = self.host();
        if same_process(host, &rec.boot_id, rec.switch_pid, rec.switch_start) {
            host.signal(rec.switch_pid, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while host.process_start(rec.switch_pid).is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if host.process_start(rec.switch_pid).is_some() {
                host.signal(rec.switch_pid, libc::SIGKILL);
            }
        }
        std::fs::remove_dir_all(&dir).map_err(FleetError::io("removing", &dir))
    }

    /// The NICs of VM `vm` on `nets` (under the state lock, at admission): each net's switch
    /// running, an address leased.
    pub(crate) fn lease_lans(&self, vm: &str, nets: &[String]) -> Result<Vec<Lan>> {
        self.lans(vm, nets, true)
    }

    /// The NICs VM `vm` would have on `nets` (for `--dry-run`): nothing started or leased.
    pub(crate) fn peek_lans(&self, vm: &str, nets: &[String]) -> Result<Vec<Lan>> {
        self.lans(vm, nets, false)
    }

    fn lans(&self, vm: &str, nets: &[String], lease: bool) -> Result<Vec<Lan>> {
        let mut seen = BTreeSet::new();
        let records = self.store().list();
        let mut lans = Vec::new();
        for net in nets {
            if !seen.insert(net.as_str()) {
                return Err(FleetError::BadInput(format!("--net {net} is given twice")));
            }
            let rec = if lease {
                self.net_ensure(net)?
            } else {
                self.net_record(net)?
            };
            let path = self.net_dir(net).join(LEASES);
            let mut leases = self.leases(net)?;
            let live: BTreeSet<String> = self.members(net, &records)?.into_keys().collect();
            let addr = allocate(&mut leases, rec.subnet, vm, &live)
                .map_err(|m| FleetError::BadInput(format!("net {net}: {m}")))?;
            if lease {
                write_json(&path, &leases)?;
            }
            lans.push(Lan {
                net: net.clone(),
                addr,
                prefix: rec.subnet.prefix,
                mac: mac_for(vm, net),
                switch: self.net_dir(net).join(SWITCH_SOCKET),
            });
        }
        Ok(lans)
    }

    /// VM `vm`'s peers on `nets`, by name.
    pub fn peers(&self, vm: &str, nets: &[String]) -> BTreeMap<String, Ipv4Addr> {
        let records = self.store().list();
        let mut peers = BTreeMap::new();
        for net in nets {
            for (name, addr) in self.members(net, &records).unwrap_or_default() {
                if name != vm {
                    peers.entry(name).or_insert(addr);
                }
            }
        }
        peers
    }
}

/// A member's keeper's companion: keeps its nets' switches running and the guest's
/// `/etc/hosts` current (once `ready` is raised), until dropped.
pub(crate) struct Member {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Member {
    pub(crate) fn start(
        fleet: Fleet,
        vm: String,
        nets: Vec<String>,
        control: PathBuf,
        ready: Arc<AtomicBool>,
    ) -> Member {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("net-member".into())
            .spawn(move || {
                let mut sent = String::new();
                while !s.load(Ordering::Relaxed) {
                    for net in &nets {
                        if let Err(e) = fleet.net_ensure(net) {
                            tracing::warn!(net = %net, "{e}");
                        }
                    }
                    if ready.load(Ordering::Relaxed) {
                        let line = hosts_command(&fleet.peers(&vm, &nets));
                        if line != sent && crate::template::send_control(&control, &line).is_ok() {
                            sent = line;
                        }
                    }
                    let until = Instant::now() + MEMBER_POLL;
                    while Instant::now() < until && !s.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
            .ok();
        Member { stop, thread }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sn(s: &str) -> Subnet {
        s.parse().expect(s)
    }

    #[test]
    fn subnets_parse_with_reasons() {
        assert_eq!(sn("10.88.0.0/24").to_string(), "10.88.0.0/24");
        for (bad, why) in [
            ("10.88.0.0", "expected A.B.C.D/N"),
            ("10.88.0/24", "not an IPv4 address"),
            ("10.88.0.0/30", "16 to 29"),
            ("10.0.0.0/8", "16 to 29"),
            ("10.88.0.7/24", "did you mean 10.88.0.0/24"),
        ] {
            let e = bad.parse::<Subnet>().expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(sn("10.88.0.0/16").overlaps(sn("10.88.5.0/24")));
        assert!(!sn("10.88.0.0/24").overlaps(sn("10.88.1.0/24")));
        let r = sn("10.88.0.0/29").vm_addresses();
        assert_eq!(
            (Ipv4Addr::from(*r.start()), Ipv4Addr::from(*r.end())),
            (Ipv4Addr::new(10, 88, 0, 2), Ipv4Addr::new(10, 88, 0, 6))
        );
    }

    #[test]
    fn addresses_are_stable_per_name_and_unique() {
        let s = sn("10.88.0.0/24");
        let mut leases = BTreeMap::new();
        let none = BTreeSet::new();
        let a = allocate(&mut leases, s, "web", &none).expect("web");
        let b = allocate(&mut leases, s, "db", &none).expect("db");
        assert_ne!(a, b);
        assert!(s.contains(a) && s.contains(b));
        assert_eq!(allocate(&mut leases, s, "web", &none), Ok(a), "kept");
        // The same name in a fresh table lands on the same address.
        let mut fresh = BTreeMap::new();
        assert_eq!(allocate(&mut fresh, s, "web", &none), Ok(a));
    }

    #[test]
    fn a_full_net_reuses_leases_of_stopped_vms_and_refuses_when_all_run() {
        let s = sn("10.88.0.0/29"); // 5 addresses
        let mut leases = BTreeMap::new();
        let mut live = BTreeSet::new();
        for i in 0..5 {
            let n = format!("vm{i}");
            allocate(&mut leases, s, &n, &live).expect("fits");
            live.insert(n);
        }
        let addrs: BTreeSet<_> = leases.values().collect();
        assert_eq!(addrs.len(), 5, "all distinct");
        let e = allocate(&mut leases, s, "late", &live).expect_err("full");
        assert!(e.contains("larger --subnet"), "{e}");
        live.remove("vm3");
        let freed = leases["vm3"];
        assert_eq!(allocate(&mut leases, s, "late", &live), Ok(freed));
        assert!(!leases.contains_key("vm3"));
    }

    #[test]
    fn macs_are_local_unicast_and_differ_per_net() {
        let m = mac_for("web", "back");
        assert!(m.starts_with("02:6b:"), "{m}");
        assert_eq!(m, mac_for("web", "back"));
        assert_ne!(m, mac_for("web", "front"));
        assert_ne!(m, mac_for("db", "back"));
    }

    #[test]
    fn the_hosts_command_names_each_peer_once() {
        let mut p = BTreeMap::new();
        p.insert("db".to_string(), Ipv4Addr::new(10, 88, 0, 9));
        p.insert("api".to_string(), Ipv4Addr::new(10, 88, 0, 4));
        assert_eq!(hosts_command(&p), "hosts api=10.88.0.4 db=10.88.0.9\n");
        assert_eq!(hosts_command(&BTreeMap::new()), "hosts\n");
    }
}
