//! A VM's settings, declared once: [`VmConfig`] is at the same time `kiln run`'s flags (clap),
//! the keys of `vm.toml`, the web API's create request and the `config` stored in a VM's
//! record (serde). Each value is parsed into its type where it enters (a flag, a file, a JSON
//! body) and never goes back through a string inside Kiln. Values serialise to the strings
//! users write, so records written by earlier versions load unchanged.

use crate::as_str;
use crate::error::FleetError;
use clap::Args;
use kiln_recipe::PortForward;
use kiln_vm::AccelChoice;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Every VM setting. All optional; the image's recipe supplies the defaults. The doc comments
/// are the flags' help and the keys' documentation alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Args)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// A recipe folder or image folder (in vm.toml relative to the file's folder; on the
    /// command line the positional TARGET).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// VM name (default: the recipe's name); unique among VMs.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Virtual CPUs, 1–64 (default: the recipe's).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory in MiB, 16–65536 (default: the recipe's).
    #[arg(long, short = 'm')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    /// Extra kernel arguments.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub append: Option<String>,
    /// A second drive (raw image, virtio-blk): PATH[:ro].
    #[arg(long)]
    #[serde(
        default,
        with = "as_str::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub drive: Option<Drive>,
    /// Forward a host port: [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp] (repeatable; replaces the
    /// recipe's ports).
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    #[serde(default, with = "as_str::vec", skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortForward>,
    /// Serve the serial console over TCP too: [ADDR:]PORT (detached VMs).
    #[arg(long, value_name = "[ADDR:]PORT")]
    #[serde(
        default,
        with = "as_str::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub serial_tcp: Option<SerialTcp>,
    /// virtio-console ports as host unix sockets: a count, or comma-separated names.
    #[arg(long, value_name = "N|NAMES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vports: Option<Vports>,
    /// Share a host folder with the guest: HOSTDIR:GUESTPATH[:ro].
    #[arg(long)]
    #[serde(
        default,
        with = "as_str::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub share: Option<Share>,
    /// How the share reaches the guest: 9p (default with the tiny kernel) or virtiofs (default
    /// with Debian's kernel, which has no 9p).
    #[arg(long)]
    #[serde(
        default,
        with = "as_str::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub share_fs: Option<ShareFs>,
    /// Networking: user (default), none, bridge:BRIDGE, tap:TAPIF (the last two need root).
    #[arg(long)]
    #[serde(
        default,
        with = "as_str::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub network: Option<Network>,
    /// Join a Kiln net (repeatable; `kiln net create NET` first): a NIC on it with an address
    /// from its subnet, and its other members reachable by name.
    #[arg(long = "net", value_name = "NET")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<String>,
    /// Make the guest's root read-only before the service starts.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly_root: bool,
    /// Don't lock the drive (neither QEMU's image lock nor Kiln's one-writer check).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_lock: bool,
    /// Restart policy of a detached VM: no, on-failure, always (exponential backoff).
    #[arg(long)]
    #[serde(
        default,
        with = "as_str::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub restart: Option<Restart>,
    /// Seconds to wait for readiness, 1–3600 (default: the recipe's ready_timeout).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_timeout: Option<u64>,
    /// Accelerator: auto (probe KVM, fall back to TCG), kvm, tcg.
    #[arg(long)]
    #[serde(
        default,
        with = "as_str::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub accel: Option<AccelChoice>,
    /// Start from a template or snapshot: an image folder with a template, or a folder from
    /// `kiln snapshot` (a clone: fresh entropy, name and clock before its network comes up).
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
    /// Boot cold even when the image has a fresh template.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub cold: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `vports = 2` or `vports = ["data", "log"]` (`--vports 2`, `--vports data,log`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Vports {
    /// That many ports, named port1…portN.
    Count(u32),
    /// Named ports.
    Names(Vec<String>),
}

impl FromStr for Vports {
    type Err = String;
    fn from_str(s: &str) -> Result<Vports, String> {
        if let Ok(n) = s.parse() {
            return Ok(Vports::Count(n));
        }
        Ok(Vports::Names(s.split(',').map(str::to_string).collect()))
    }
}

impl Vports {
    /// The port names, checked.
    pub fn names(&self) -> Result<Vec<String>, String> {
        let names: Vec<String> = match self {
            Vports::Count(n) if *n <= 16 => (1..=*n).map(|i| format!("port{i}")).collect(),
            Vports::Count(n) => return Err(format!("vports {n}: at most 16")),
            Vports::Names(n) => n.clone(),
        };
        for n in &names {
            let ok = !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                // Kiln's own ports: the control and exec channels.
                && n != "org.kiln.control"
                && n != kiln_wire::PORT_NAME;
            if !ok {
                return Err(format!("vport name `{n}`: use 1–64 of a-z A-Z 0-9 - _ ."));
            }
        }
        Ok(names)
    }
}

/// A second drive: `PATH[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// The raw image.
    pub path: PathBuf,
    /// Attached read-only.
    pub readonly: bool,
}

impl FromStr for Drive {
    type Err = String;
    fn from_str(s: &str) -> Result<Drive, String> {
        let (p, readonly) = match s.strip_suffix(":ro") {
            Some(p) => (p, true),
            None => (s.strip_suffix(":rw").unwrap_or(s), false),
        };
        if p.is_empty() {
            return Err(format!("drive `{s}`: expected PATH[:ro]"));
        }
        Ok(Drive {
            path: PathBuf::from(p),
            readonly,
        })
    }
}

impl fmt::Display for Drive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display().to_string();
        f.write_str(&path)?;
        write_mode(f, &path, self.readonly)
    }
}

/// A shared folder: `HOSTDIR:GUESTPATH[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Host folder.
    pub host: PathBuf,
    /// Mount point in the guest.
    pub guest: String,
    /// Read-only.
    pub readonly: bool,
}

impl FromStr for Share {
    type Err = String;
    fn from_str(s: &str) -> Result<Share, String> {
        let usage =
            || format!("share `{s}`: expected HOSTDIR:GUESTPATH[:ro], e.g. ./data:/mnt/data");
        let (rest, readonly) = match s.strip_suffix(":ro") {
            Some(r) => (r, true),
            None => (s.strip_suffix(":rw").unwrap_or(s), false),
        };
        let (host, guest) = rest.rsplit_once(':').ok_or_else(usage)?;
        if host.is_empty() || !guest.starts_with('/') || guest.contains(char::is_whitespace) {
            return Err(usage());
        }
        Ok(Share {
            host: PathBuf::from(host),
            guest: guest.to_string(),
            readonly,
        })
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host.display(), self.guest)?;
        write_mode(f, &self.guest, self.readonly)
    }
}

/// The `:ro` suffix of a drive or share; `:rw` where the text before it ends in a mode of its
/// own (the file `data:ro`, writable, is `data:ro:rw`), so that it reads back the same.
fn write_mode(f: &mut fmt::Formatter<'_>, before: &str, readonly: bool) -> fmt::Result {
    if readonly {
        f.write_str(":ro")
    } else if before.ends_with(":ro") || before.ends_with(":rw") {
        f.write_str(":rw")
    } else {
        Ok(())
    }
}

/// How a share reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareFs {
    /// virtio-9p (in QEMU; the tiny kernel's).
    NineP,
    /// virtiofs (virtiofsd; Debian's kernel).
    Virtiofs,
}

impl FromStr for ShareFs {
    type Err = String;
    fn from_str(s: &str) -> Result<ShareFs, String> {
        match s {
            "9p" => Ok(ShareFs::NineP),
            "virtiofs" => Ok(ShareFs::Virtiofs),
            o => Err(format!("share_fs `{o}`: expected virtiofs or 9p")),
        }
    }
}

impl fmt::Display for ShareFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShareFs::NineP => "9p",
            ShareFs::Virtiofs => "virtiofs",
        })
    }
}

/// Guest networking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// QEMU user networking (slirp) with port forwards.
    User,
    /// No NIC.
    None,
    /// Tap on a host bridge.
    Bridge(String),
    /// A tap device.
    Tap(String),
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Network, String> {
        match s.split_once(':') {
            None if s == "user" => Ok(Network::User),
            None if s == "none" => Ok(Network::None),
            Some(("bridge", b)) if valid_ifname(b) => Ok(Network::Bridge(b.into())),
            Some(("tap", t)) if valid_ifname(t) => Ok(Network::Tap(t.into())),
            _ => Err(format!(
                "network `{s}`: expected user, none, bridge:BRIDGE or tap:TAPIF"
            )),
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Network::User => f.write_str("user"),
            Network::None => f.write_str("none"),
            Network::Bridge(b) => write!(f, "bridge:{b}"),
            Network::Tap(t) => write!(f, "tap:{t}"),
        }
    }
}

/// Restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    /// Never.
    #[default]
    No,
    /// When the VM crashed or exited non-zero (after it had been ready).
    OnFailure,
    /// Whenever it ends (except `kiln stop`/`kill`; never a VM that did not become ready).
    Always,
}

impl FromStr for Restart {
    type Err = String;
    fn from_str(s: &str) -> Result<Restart, String> {
        match s {
            "no" => Ok(Restart::No),
            "on-failure" => Ok(Restart::OnFailure),
            "always" => Ok(Restart::Always),
            _ => Err(format!("restart `{s}`: expected no, on-failure or always")),
        }
    }
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Restart::No => "no",
            Restart::OnFailure => "on-failure",
            Restart::Always => "always",
        })
    }
}

/// Serial console over TCP: `PORT` (on 127.0.0.1) or `ADDR:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialTcp(pub SocketAddr);

impl FromStr for SerialTcp {
    type Err = String;
    fn from_str(s: &str) -> Result<SerialTcp, String> {
        if let Ok(p) = s.parse::<u16>() {
            return Ok(SerialTcp(SocketAddr::from(([127, 0, 0, 1], p))));
        }
        s.parse()
            .map(SerialTcp)
            .map_err(|_| format!("serial_tcp `{s}`: expected PORT or ADDR:PORT"))
    }
}

impl fmt::Display for SerialTcp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Check a VM (or net) name: 1–63 of a-z 0-9 - _, starting with a letter or digit.
pub use kiln_recipe::check_name;

impl VmConfig {
    /// Check the values whose type admits more than Kiln does (ranges, names); Err is
    /// (key, message).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(n) = &self.name {
            check_name(n).map_err(|m| ("name", m))?;
        }
        if let Some(n) = self.cpus.filter(|n| !(1..=64).contains(n)) {
            return Err(("cpus", format!("cpus {n}: expected 1–64")));
        }
        if let Some(n) = self.memory.filter(|n| !(16..=65536).contains(n)) {
            return Err(("memory", format!("memory {n}: expected 16–65536 (MiB)")));
        }
        if let Some(v) = &self.vports {
            v.names().map_err(|m| ("vports", m))?;
        }
        for n in &self.nets {
            check_name(n).map_err(|m| ("nets", format!("net {m}")))?;
        }
        if let Some(t) = self.ready_timeout.filter(|t| !(1..=3600).contains(t)) {
            return Err((
                "ready_timeout",
                format!("ready_timeout {t}: expected 1–3600 (seconds)"),
            ));
        }
        Ok(())
    }

    /// Read and check a vm.toml. Errors read `FILE:LINE: key `KEY`: message`.
    pub fn load(path: &Path) -> Result<VmConfig, FleetError> {
        let bad = |m: String| FleetError::BadInput(m);
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let mut cfg: VmConfig = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            let key = key_on_line(&text, line)
                .map(|k| format!("key `{k}`: "))
                .unwrap_or_default();
            bad(format!(
                "{}:{line}: {key}{}",
                path.display(),
                e.message().trim()
            ))
        })?;
        if let Err((key, msg)) = cfg.validate() {
            let line = line_of_key(&text, key).unwrap_or(1);
            return Err(bad(format!(
                "{}:{line}: key `{key}`: {msg}",
                path.display()
            )));
        }
        // Relative paths in the file are relative to the file's folder.
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        cfg.image = cfg
            .image
            .as_deref()
            .map(|i| rel(Path::new(i)).display().to_string());
        if let Some(d) = cfg.drive.as_mut() {
            d.path = rel(&d.path);
        }
        if let Some(s) = cfg.share.as_mut() {
            s.host = rel(&s.host);
        }
        cfg.from = cfg.from.as_deref().map(rel);
        Ok(cfg)
    }

    /// `self` with every value set in `over` replacing ours.
    pub fn overlay(mut self, over: VmConfig) -> VmConfig {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(
            image,
            name,
            cpus,
            memory,
            append,
            drive,
            serial_tcp,
            vports,
            share,
            share_fs,
            network,
            restart,
            ready_timeout,
            accel,
            from
        );
        if !over.ports.is_empty() {
            self.ports = over.ports;
        }
        if !over.nets.is_empty() {
            self.nets = over.nets;
        }
        self.readonly_root |= over.readonly_root;
        self.no_lock |= over.no_lock;
        self.cold |= over.cold;
        self
    }

    /// The restart policy (default `no`).
    pub fn restart_policy(&self) -> Restart {
        self.restart.unwrap_or_default()
    }

    /// The network choice (default `user`).
    pub fn network_choice(&self) -> Network {
        self.network.clone().unwrap_or(Network::User)
    }

    /// The accelerator asked for (default `auto`).
    pub fn accel_choice(&self) -> AccelChoice {
        self.accel.unwrap_or_default()
    }
}

/// The key assigned on `line` (1-based), if the line is `key = …`.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let (k, _) = l.split_once('=')?;
    let k = k.trim().trim_matches('"');
    (!k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then(|| k.to_string())
}

/// The first line that assigns `key`.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.split_once('=')
                .is_some_and(|(k, _)| k.trim().trim_matches('"') == key)
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<VmConfig, String> {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("vm.toml");
        std::fs::write(&p, text).expect("write");
        VmConfig::load(&p).map_err(|e| e.to_string().replace(&d.path().display().to_string(), "D"))
    }

    #[test]
    fn drives_and_shares_whose_names_end_in_a_mode_read_back_the_same() {
        for (text, shown) in [
            ("data:ro:rw", "data:ro:rw"),
            ("data:rw:rw", "data:rw:rw"),
            ("data:ro:ro", "data:ro:ro"),
            ("data:rw", "data"),
            ("data", "data"),
        ] {
            let d: Drive = text.parse().expect(text);
            assert_eq!(d.to_string(), shown, "{text}");
            assert_eq!(shown.parse::<Drive>().expect(shown), d, "{text}");
        }
        let writable: Drive = "data:ro:rw".parse().expect("drive");
        assert_eq!(writable.path, PathBuf::from("data:ro"));
        assert!(!writable.readonly);
        for text in ["h:/mnt/x:ro", "h:/mnt/x", "a:b:/mnt/x"] {
            let sh: Share = text.parse().expect(text);
            assert_eq!(sh.to_string(), text);
            assert_eq!(sh.to_string().parse::<Share>().expect(text), sh);
        }
        let sh: Share = "h:/mnt/x:rw".parse().expect("share");
        assert_eq!((sh.guest.as_str(), sh.readonly), ("/mnt/x", false));
    }

    #[test]
    fn full_file_parses_into_types_and_resolves_relative_paths() {
        let c = load_text(
            "image = \"img\"\nname = \"web\"\ncpus = 2\nmemory = 96\nappend = \"loglevel=7\"\n\
             drive = \"data.img:ro\"\nports = [\"8080:80\", \"0.0.0.0:5353:53/udp\"]\n\
             serial_tcp = \"4444\"\nvports = [\"data\"]\nshare = \"sh:/mnt/sh\"\nshare_fs = \"9p\"\n\
             network = \"none\"\nreadonly_root = true\nno_lock = true\nrestart = \"on-failure\"\n\
             ready_timeout = 20\naccel = \"tcg\"\n",
        )
        .expect("parses");
        assert!(c
            .image
            .as_deref()
            .is_some_and(|i| i.starts_with('/') && i.ends_with("/img")));
        let d = c.drive.expect("drive");
        assert!(d.path.is_absolute() && d.path.ends_with("data.img") && d.readonly);
        let s = c.share.expect("share");
        assert!(s.host.is_absolute() && s.guest == "/mnt/sh" && !s.readonly);
        assert_eq!(c.restart, Some(Restart::OnFailure));
        assert_eq!(c.network, Some(Network::None));
        assert_eq!(c.share_fs, Some(ShareFs::NineP));
        assert_eq!(c.accel, Some(AccelChoice::Tcg));
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[1].guest_port, 53);
        assert_eq!(
            c.serial_tcp,
            Some(SerialTcp(SocketAddr::from(([127, 0, 0, 1], 4444))))
        );
        assert_eq!(
            c.vports.as_ref().map(Vports::names),
            Some(Ok(vec!["data".to_string()]))
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = load_text("name = \"a\"\nmemroy = 64\n").expect_err("unknown key");
        assert!(
            e.starts_with("D/vm.toml:2: key `memroy`: unknown field `memroy`"),
            "{e}"
        );
        let e = load_text("name = \"a\"\n\ncpus = \"two\"\n").expect_err("type");
        assert!(
            e.starts_with("D/vm.toml:3: key `cpus`: invalid type"),
            "{e}"
        );
        let e = load_text("ports = [\"8080:80\"]\nrestart = \"sometimes\"\n").expect_err("value");
        assert_eq!(
            e,
            "D/vm.toml:2: key `restart`: restart `sometimes`: expected no, on-failure or always"
        );
        let e = load_text("ports = [\"80800:80\"]\n").expect_err("port");
        assert!(
            e.starts_with("D/vm.toml:1: key `ports`: port forward"),
            "{e}"
        );
        let e = load_text("cpus = 1\nmemory = 8\n").expect_err("range");
        assert_eq!(
            e,
            "D/vm.toml:2: key `memory`: memory 8: expected 16–65536 (MiB)"
        );
        let e = load_text("vports = 17\n").expect_err("vports");
        assert_eq!(e, "D/vm.toml:1: key `vports`: vports 17: at most 16");
    }

    #[test]
    fn values_parse_and_print_back_as_written() {
        for s in ["/d.img:ro", "/d.img"] {
            assert_eq!(s.parse::<Drive>().expect("drive").to_string(), s);
        }
        assert_eq!(
            "/d.img:rw".parse::<Drive>(),
            Ok(Drive {
                path: "/d.img".into(),
                readonly: false
            })
        );
        for s in ["user", "none", "bridge:br0", "tap:tap-1"] {
            assert_eq!(s.parse::<Network>().expect("net").to_string(), s);
        }
        assert!("bridge:".parse::<Network>().is_err());
        assert!("/x:relative".parse::<Share>().is_err());
        assert_eq!(
            "/srv/x:/mnt/x:ro".parse::<Share>().map(|s| s.to_string()),
            Ok("/srv/x:/mnt/x:ro".into())
        );
        for s in ["no", "on-failure", "always"] {
            assert_eq!(s.parse::<Restart>().expect("restart").to_string(), s);
        }
        assert_eq!(
            Vports::Count(2).names(),
            Ok(vec!["port1".to_string(), "port2".to_string()])
        );
        assert_eq!(
            "a,b".parse::<Vports>(),
            Ok(Vports::Names(vec!["a".into(), "b".into()]))
        );
        assert!(Vports::Names(vec!["a b".into()]).names().is_err());
        assert!(Vports::Names(vec!["org.kiln.control".into()])
            .names()
            .is_err());
        assert!(Vports::Names(vec!["org.kiln.exec".into()]).names().is_err());
        assert!(check_name("Web").is_err() && check_name("web-1").is_ok());
        assert!("nope:1".parse::<SerialTcp>().is_err());
    }

    #[test]
    fn flags_overlay_file() {
        let file = VmConfig {
            memory: Some(64),
            ports: vec!["1:2".parse().expect("port")],
            readonly_root: true,
            ..VmConfig::default()
        };
        let flags = VmConfig {
            memory: Some(96),
            ..VmConfig::default()
        };
        let m = file.overlay(flags);
        assert_eq!(m.memory, Some(96));
        assert_eq!(m.ports.len(), 1);
        assert!(m.readonly_root);
    }

    #[test]
    fn the_spec_round_trips_through_toml_and_json() {
        let c = load_text(
            "name = \"web\"\ndrive = \"/data.img\"\nports = [\"8080:80\"]\nvports = 2\n\
             share = \"/srv:/mnt/srv:ro\"\nrestart = \"always\"\nnetwork = \"tap:tap0\"\n\
             serial_tcp = \"0.0.0.0:4444\"\naccel = \"kvm\"\nshare_fs = \"virtiofs\"\n",
        )
        .expect("parses");
        let json = serde_json::to_string(&c).expect("json");
        assert!(
            json.contains("\"ports\":[\"127.0.0.1:8080:80/tcp\"]"),
            "{json}"
        );
        let back: VmConfig = serde_json::from_str(&json).expect("back");
        assert_eq!(back, c);
        let toml_text = toml::to_string(&c).expect("toml");
        let back: VmConfig = toml::from_str(&toml_text).expect("toml back");
        assert_eq!(back, c);
    }

    #[test]
    fn flags_parse_into_the_same_types() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            vm: VmConfig,
        }
        let t = T::try_parse_from([
            "t",
            "-p",
            "8080:80",
            "--drive",
            "/d:ro",
            "--vports",
            "a,b",
            "--restart",
            "on-failure",
            "--accel",
            "tcg",
            "--share",
            "/s:/mnt/s",
        ])
        .expect("flags");
        assert_eq!(t.vm.ports[0].host_port, 8080);
        assert!(t.vm.drive.as_ref().is_some_and(|d| d.readonly));
        assert_eq!(t.vm.restart, Some(Restart::OnFailure));
        assert_eq!(t.vm.accel, Some(AccelChoice::Tcg));
        assert_eq!(
            t.vm.vports,
            Some(Vports::Names(vec!["a".into(), "b".into()]))
        );
        let e = T::try_parse_from(["t", "--restart", "sometimes"])
            .err()
            .expect("refused");
        assert!(
            e.to_string().contains("expected no, on-failure or always"),
            "{e}"
        );
    }
}
