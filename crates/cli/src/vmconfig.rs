//! A VM's run-time configuration: the keys of `vm.toml` (`kiln run -f vm.toml`), which are also
//! `kiln run`'s flags under the same names (`memory` ↔ `--memory`, `serial_tcp` ↔ `--serial-tcp`).
//! Flags win over the file. The merged config is stored in the VM's record, so restarts and
//! `kiln enable` reuse it. Errors in a file name the file, the line and the key.

use crate::BadInput;
use kiln_recipe::PortForward;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Every key of vm.toml. All optional; the image's recipe supplies the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// A recipe folder or image folder (relative to the file's folder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// VM name (unique among VMs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// vCPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// MiB of RAM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    /// Extra kernel arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub append: Option<String>,
    /// Second drive: `PATH[:ro]` (raw image, virtio-blk, /dev/vda in the guest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drive: Option<String>,
    /// Port forwards `[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]` (replace the recipe's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Serial console over TCP: `[ADDR:]PORT` (127.0.0.1 by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_tcp: Option<String>,
    /// virtio-console ports as host unix sockets: a count (`2`: port1, port2) or names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vports: Option<Vports>,
    /// Host folder shared with the guest: `HOSTDIR:GUESTPATH[:ro]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    /// How the share reaches the guest: `9p` (the default with the tiny kernel) or `virtiofs`
    /// (the default with Debian's kernel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_fs: Option<String>,
    /// `user` (default), `none`, `bridge:BRIDGE`, `tap:TAPIF` (the last two need root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Remount the guest's root read-only before the service starts.
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly_root: bool,
    /// Don't lock the drive (QEMU's lock and Kiln's one-writer check).
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_lock: bool,
    /// Restart policy of a detached VM: `no`, `on-failure`, `always`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// Seconds the guest has to become ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_timeout: Option<u64>,
    /// Accelerator: auto, kvm, tcg.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `vports = 2` or `vports = ["data", "log"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Vports {
    /// That many ports, named port1…portN.
    Count(u32),
    /// Named ports.
    Names(Vec<String>),
}

/// Guest networking choice.
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

/// Restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Restart {
    /// Never.
    No,
    /// When the VM crashed or exited non-zero.
    OnFailure,
    /// Whenever it ends (except `kiln stop`/`kill`).
    Always,
}

/// A shared folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Host folder (absolute).
    pub host: PathBuf,
    /// Mount point in the guest.
    pub guest: String,
    /// Read-only.
    pub readonly: bool,
}

/// Parse `--drive`/`drive`.
pub fn parse_drive(s: &str) -> Result<(PathBuf, bool), String> {
    let (p, ro) = match s.strip_suffix(":ro") {
        Some(p) => (p, true),
        None => (s.strip_suffix(":rw").unwrap_or(s), false),
    };
    if p.is_empty() {
        return Err(format!("drive `{s}`: expected PATH[:ro]"));
    }
    Ok((PathBuf::from(p), ro))
}

/// Parse `--share`/`share`.
pub fn parse_share(s: &str) -> Result<Share, String> {
    let usage = || format!("share `{s}`: expected HOSTDIR:GUESTPATH[:ro], e.g. ./data:/mnt/data");
    let (rest, readonly) = match s.strip_suffix(":ro") {
        Some(r) => (r, true),
        None => (s, false),
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

/// Parse `--network`/`network`.
pub fn parse_network(s: &str) -> Result<Network, String> {
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

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Parse `--restart`/`restart`.
pub fn parse_restart(s: &str) -> Result<Restart, String> {
    match s {
        "no" => Ok(Restart::No),
        "on-failure" => Ok(Restart::OnFailure),
        "always" => Ok(Restart::Always),
        _ => Err(format!("restart `{s}`: expected no, on-failure or always")),
    }
}

/// Parse `--serial-tcp`/`serial_tcp`: `PORT` or `ADDR:PORT`.
pub fn parse_serial_tcp(s: &str) -> Result<SocketAddr, String> {
    if let Ok(p) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], p)));
    }
    s.parse()
        .map_err(|_| format!("serial_tcp `{s}`: expected PORT or ADDR:PORT"))
}

/// Parse `--vports`: a count or a comma-separated list of names.
pub fn parse_vports_flag(s: &str) -> Result<Vports, String> {
    if let Ok(n) = s.parse() {
        return Ok(Vports::Count(n));
    }
    Ok(Vports::Names(s.split(',').map(str::to_string).collect()))
}

/// The port names of a `vports` value.
pub fn vport_names(v: &Vports) -> Result<Vec<String>, String> {
    let names: Vec<String> = match v {
        Vports::Count(n) if *n <= 16 => (1..=*n).map(|i| format!("port{i}")).collect(),
        Vports::Count(n) => return Err(format!("vports {n}: at most 16")),
        Vports::Names(n) => n.clone(),
    };
    for n in &names {
        let ok = !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && n != "org.kiln.control";
        if !ok {
            return Err(format!("vport name `{n}`: use 1–64 of a-z A-Z 0-9 - _ ."));
        }
    }
    Ok(names)
}

/// Check one key's value; Err is the message (without location).
fn check_key(c: &VmConfig, key: &str) -> Result<(), String> {
    match key {
        "name" => c.name.as_deref().map(check_name).transpose().map(drop),
        "cpus" => match c.cpus {
            Some(n) if !(1..=64).contains(&n) => Err(format!("cpus {n}: expected 1–64")),
            _ => Ok(()),
        },
        "memory" => match c.memory {
            Some(n) if !(16..=65536).contains(&n) => {
                Err(format!("memory {n}: expected 16–65536 (MiB)"))
            }
            _ => Ok(()),
        },
        "drive" => c.drive.as_deref().map(parse_drive).transpose().map(drop),
        "ports" => c
            .ports
            .iter()
            .try_for_each(|p| p.parse::<PortForward>().map(drop)),
        "serial_tcp" => c
            .serial_tcp
            .as_deref()
            .map(parse_serial_tcp)
            .transpose()
            .map(drop),
        "vports" => c.vports.as_ref().map(vport_names).transpose().map(drop),
        "share" => c.share.as_deref().map(parse_share).transpose().map(drop),
        "share_fs" => match c.share_fs.as_deref() {
            None | Some("virtiofs") | Some("9p") => Ok(()),
            Some(o) => Err(format!("share_fs `{o}`: expected virtiofs or 9p")),
        },
        "network" => c
            .network
            .as_deref()
            .map(parse_network)
            .transpose()
            .map(drop),
        "restart" => c
            .restart
            .as_deref()
            .map(parse_restart)
            .transpose()
            .map(drop),
        "accel" => c
            .accel
            .as_deref()
            .map(|a| a.parse::<kiln_vm::AccelChoice>())
            .transpose()
            .map(drop),
        _ => Ok(()),
    }
}

/// The keys checked by [`VmConfig::validate`], in file order of importance.
const CHECKED: &[&str] = &[
    "name",
    "cpus",
    "memory",
    "drive",
    "ports",
    "serial_tcp",
    "vports",
    "share",
    "share_fs",
    "network",
    "restart",
    "accel",
];

/// Check a VM name: 1–63 of a-z 0-9 - _, starting with a letter or digit.
pub fn check_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name `{n}`: use 1–63 of a-z 0-9 - _, starting with a letter or digit"
        ))
    }
}

impl VmConfig {
    /// Check every value (flags or file alike); Err names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for key in CHECKED {
            check_key(self, key).map_err(|m| (key.to_string(), m))?;
        }
        Ok(())
    }

    /// Read and check a vm.toml. Errors read `FILE:LINE: key `KEY`: message`.
    pub fn load(path: &Path) -> Result<VmConfig, BadInput> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BadInput(format!("{}: {e}", path.display())))?;
        let mut cfg: VmConfig = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            let key = key_on_line(&text, line)
                .map(|k| format!("key `{k}`: "))
                .unwrap_or_default();
            BadInput(format!(
                "{}:{line}: {key}{}",
                path.display(),
                e.message().trim()
            ))
        })?;
        if let Err((key, msg)) = cfg.validate() {
            let line = line_of_key(&text, &key).unwrap_or(1);
            return Err(BadInput(format!(
                "{}:{line}: key `{key}`: {msg}",
                path.display()
            )));
        }
        // Relative paths in the file are relative to the file's folder.
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: &str| -> String {
            if Path::new(p).is_absolute() {
                p.to_string()
            } else {
                base.join(p).display().to_string()
            }
        };
        cfg.image = cfg.image.as_deref().map(rel);
        cfg.drive = cfg.drive.as_deref().map(rel);
        cfg.share = cfg.share.as_deref().map(rel);
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
            accel
        );
        if !over.ports.is_empty() {
            self.ports = over.ports;
        }
        self.readonly_root |= over.readonly_root;
        self.no_lock |= over.no_lock;
        self
    }

    /// The restart policy (default `no`).
    pub fn restart_policy(&self) -> Restart {
        self.restart
            .as_deref()
            .and_then(|r| parse_restart(r).ok())
            .unwrap_or(Restart::No)
    }

    /// The network choice (default `user`).
    pub fn network_choice(&self) -> Network {
        self.network
            .as_deref()
            .and_then(|n| parse_network(n).ok())
            .unwrap_or(Network::User)
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
        VmConfig::load(&p).map_err(|e| e.0.replace(&d.path().display().to_string(), "D"))
    }

    #[test]
    fn full_file_parses_and_resolves_relative_paths() {
        let c = load_text(
            "image = \"img\"\nname = \"web\"\ncpus = 2\nmemory = 96\nappend = \"loglevel=7\"\n\
             drive = \"data.img:ro\"\nports = [\"8080:80\", \"0.0.0.0:5353:53/udp\"]\n\
             serial_tcp = 4444\nvports = [\"data\"]\nshare = \"sh:/mnt/sh\"\nshare_fs = \"9p\"\n\
             network = \"none\"\nreadonly_root = true\nno_lock = true\nrestart = \"on-failure\"\n\
             ready_timeout = 20\naccel = \"tcg\"\n"
                .replace("serial_tcp = 4444", "serial_tcp = \"4444\"")
                .as_str(),
        )
        .expect("parses");
        let abs = |v: &Option<String>, end: &str| {
            v.as_deref()
                .is_some_and(|p| p.starts_with('/') && p.ends_with(end))
        };
        assert!(abs(&c.image, "/img"), "{:?}", c.image);
        assert!(abs(&c.drive, "/data.img:ro"), "{:?}", c.drive);
        assert!(abs(&c.share, "/sh:/mnt/sh"), "{:?}", c.share);
        assert_eq!(c.restart_policy(), Restart::OnFailure);
        assert_eq!(c.network_choice(), Network::None);
        assert_eq!(
            vport_names(c.vports.as_ref().expect("vports")),
            Ok(vec!["data".to_string()])
        );
        assert_eq!(
            parse_serial_tcp("4444"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 4444)))
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
    }

    #[test]
    fn values() {
        assert_eq!(parse_drive("/d.img:ro"), Ok(("/d.img".into(), true)));
        assert_eq!(parse_drive("/d.img"), Ok(("/d.img".into(), false)));
        assert_eq!(
            parse_network("bridge:br0"),
            Ok(Network::Bridge("br0".into()))
        );
        assert!(parse_network("bridge:").is_err());
        assert!(parse_share("/x:relative").is_err());
        assert_eq!(
            parse_share("/srv/x:/mnt/x:ro").map(|s| (s.guest, s.readonly)),
            Ok(("/mnt/x".to_string(), true))
        );
        assert_eq!(
            vport_names(&Vports::Count(2)),
            Ok(vec!["port1".to_string(), "port2".to_string()])
        );
        assert!(vport_names(&Vports::Names(vec!["a b".into()])).is_err());
        assert!(check_name("Web").is_err() && check_name("web-1").is_ok());
    }

    #[test]
    fn flags_overlay_file() {
        let file = VmConfig {
            memory: Some(64),
            ports: vec!["1:2".into()],
            readonly_root: true,
            ..VmConfig::default()
        };
        let flags = VmConfig {
            memory: Some(96),
            ..VmConfig::default()
        };
        let m = file.overlay(flags);
        assert_eq!(m.memory, Some(96));
        assert_eq!(m.ports, vec!["1:2".to_string()]);
        assert!(m.readonly_root);
    }
}
