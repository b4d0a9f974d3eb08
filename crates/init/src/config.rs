//! `/etc/kiln/init.conf`: the settings the host bakes into the image, their
//! defaults, and how kernel command-line overrides are applied on top.
//!
//! Format: one `key=value` per line; blank lines are ignored; `#` starts a
//! comment at the beginning of a line or after whitespace, except on `env=`
//! lines, whose value is taken as it is (`#` and spaces included). Unknown
//! keys and malformed values produce warnings (the setting keeps its
//! default) and are never fatal.
//!
//! ```text
//! hostname=httpd
//! module=/lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/virtio/virtio_ring.ko  # repeatable
//! net=eth0 10.0.2.15/24 10.0.2.2     # IFACE ADDR/PREFIX [GATEWAY] | none
//! dns=10.0.2.3                       # one or more addresses | none
//! ready=tcp:80                       # tcp:PORT | exit | none
//! rc=/etc/rc
//! user=1000:1000                     # UID:GID rc runs as (default: root)
//! # env (repeatable): the value runs to the end of the line, `#` included
//! env=FOO=bar
//! ```

use crate::cmdline::Overrides;
use std::net::{IpAddr, Ipv4Addr};

/// Path of the config file inside the guest.
pub const PATH: &str = "/etc/kiln/init.conf";

/// Static IPv4 configuration of the primary interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Interface name, e.g. `eth0`.
    pub iface: String,
    /// Guest address.
    pub addr: Ipv4Addr,
    /// Prefix length (0..=32).
    pub prefix: u8,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
}

impl Default for NetConfig {
    /// QEMU user networking: `eth0 10.0.2.15/24 10.0.2.2`.
    fn default() -> Self {
        NetConfig {
            iface: String::from("eth0"),
            addr: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
        }
    }
}

impl NetConfig {
    /// The netmask for [`NetConfig::prefix`].
    pub fn netmask(&self) -> Ipv4Addr {
        prefix_to_netmask(self.prefix)
    }
}

/// Netmask of a prefix length (lengths above 32 are treated as 32).
pub fn prefix_to_netmask(prefix: u8) -> Ipv4Addr {
    let p = u32::from(prefix.min(32));
    let bits = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    Ipv4Addr::from(bits)
}

/// When the VM counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// As soon as rc has been started.
    None,
    /// When rc exits with status 0.
    Exit,
    /// When a TCP socket listens on this port (IPv4 or IPv6).
    Tcp(u16),
}

/// Everything init.conf can set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Hostname to set.
    pub hostname: String,
    /// Kernel module files to load, in order.
    pub modules: Vec<String>,
    /// Module files loaded only when a shared folder is to be mounted (fuse, virtiofs): they
    /// cost boot time (over 100 ms under TCG) that VMs without shares need not pay.
    pub share_modules: Vec<String>,
    /// Primary interface configuration, or `None` for `net=none`.
    pub net: Option<NetConfig>,
    /// DNS servers for /etc/resolv.conf (validated IP addresses).
    pub dns: Vec<String>,
    /// Readiness condition.
    pub ready: Ready,
    /// Path of the rc script run by `/bin/sh`.
    pub rc: String,
    /// Extra environment for rc, in file order.
    pub env: Vec<(String, String)>,
    /// The user and group rc runs as (an OCI image's `User`); root when unset.
    pub user: Option<(u32, u32)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: String::from("kiln"),
            modules: Vec::new(),
            share_modules: Vec::new(),
            net: Some(NetConfig::default()),
            dns: vec![String::from("10.0.2.3")],
            ready: Ready::None,
            rc: String::from("/etc/rc"),
            env: Vec::new(),
            user: None,
        }
    }
}

/// Strip a trailing comment: `#` at the start or preceded by whitespace.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// Parse `ADDR/PREFIX`.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let addr = a.parse().ok()?;
    let prefix: u8 = p.parse().ok()?;
    (prefix <= 32).then_some((addr, prefix))
}

fn valid_iface(s: &str) -> bool {
    !s.is_empty() && s.len() < 16 && !s.contains(['/', ' ', '\0']) && s != "." && s != ".."
}

/// Whether `s` can be the hostname: 1 to 64 bytes, no whitespace or NUL.
pub fn valid_hostname(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && !s.contains(|c: char| c.is_whitespace() || c == '\0')
}

/// Parse a `net=` value: `none` → `Ok(None)`.
pub fn parse_net(value: &str) -> Result<Option<NetConfig>, ()> {
    let fields: Vec<&str> = value.split_whitespace().collect();
    match fields.as_slice() {
        ["none"] => Ok(None),
        [iface, cidr, rest @ ..] if rest.len() <= 1 && valid_iface(iface) => {
            let (addr, prefix) = parse_cidr(cidr).ok_or(())?;
            let gateway = match rest.first() {
                Some(g) => Some(g.parse().map_err(|_| ())?),
                None => None,
            };
            Ok(Some(NetConfig {
                iface: String::from(*iface),
                addr,
                prefix,
                gateway,
            }))
        }
        _ => Err(()),
    }
}

/// Parse a DNS server list (whitespace or comma separated); `none` → empty.
pub fn parse_dns(value: &str) -> Result<Vec<String>, ()> {
    let items: Vec<&str> = value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect();
    if items == ["none"] {
        return Ok(Vec::new());
    }
    if items.is_empty() || items.iter().any(|s| s.parse::<IpAddr>().is_err()) {
        return Err(());
    }
    Ok(items.into_iter().map(String::from).collect())
}

/// Parse a `ready=` value.
pub fn parse_ready(value: &str) -> Result<Ready, ()> {
    match value {
        "none" => Ok(Ready::None),
        "exit" => Ok(Ready::Exit),
        _ => {
            let port: u16 = value
                .strip_prefix("tcp:")
                .ok_or(())?
                .parse()
                .map_err(|_| ())?;
            if port == 0 {
                return Err(());
            }
            Ok(Ready::Tcp(port))
        }
    }
}

fn bad_value(warnings: &mut Vec<String>, line_no: usize, key: &str, value: &str) {
    let mut w = String::from("init.conf line ");
    crate::report::push_num(&mut w, line_no as i64);
    w.push_str(": invalid ");
    w.push_str(key);
    w.push_str(" value \"");
    w.push_str(value);
    w.push('"');
    warnings.push(w);
}

/// Parse init.conf text on top of the defaults. Returns the config and
/// warning messages (without the `kiln: warning: ` prefix).
pub fn parse(text: &str) -> (Config, Vec<String>) {
    let mut cfg = Config::default();
    let mut warnings = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        // An env line is taken as it is: `#` and spaces belong to the value (Kiln writes no
        // comment on one), e.g. `env=GREETING=hello #1 `.
        let verbatim = raw.trim_start().strip_prefix("env=");
        let line = match verbatim {
            Some(_) => raw.trim_start(),
            None => strip_comment(raw).trim(),
        };
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            let mut w = String::from("init.conf line ");
            crate::report::push_num(&mut w, line_no as i64);
            w.push_str(": expected key=value, got \"");
            w.push_str(line);
            w.push('"');
            warnings.push(w);
            continue;
        };
        let (key, value) = match verbatim {
            Some(v) => ("env", v.strip_suffix('\r').unwrap_or(v)),
            None => (key.trim(), value.trim()),
        };
        let ok = match key {
            "hostname" if valid_hostname(value) => {
                cfg.hostname = String::from(value);
                true
            }
            "module" if !value.is_empty() => {
                cfg.modules.push(String::from(value));
                true
            }
            "share_module" if !value.is_empty() => {
                cfg.share_modules.push(String::from(value));
                true
            }
            "net" => parse_net(value).map(|n| cfg.net = n).is_ok(),
            "dns" => parse_dns(value).map(|d| cfg.dns = d).is_ok(),
            "ready" => parse_ready(value).map(|r| cfg.ready = r).is_ok(),
            "rc" if value.starts_with('/') => {
                cfg.rc = String::from(value);
                true
            }
            "env" => match value.split_once('=') {
                Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
                    cfg.env.push((String::from(k), String::from(v)));
                    true
                }
                _ => false,
            },
            "user" => match value.split_once(':').map(|(u, g)| (u.parse(), g.parse())) {
                Some((Ok(u), Ok(g))) => {
                    cfg.user = Some((u, g));
                    true
                }
                _ => false,
            },
            "hostname" | "module" | "share_module" | "rc" => false,
            _ => {
                let mut w = String::from("init.conf line ");
                crate::report::push_num(&mut w, line_no as i64);
                w.push_str(": unknown key \"");
                w.push_str(key);
                w.push('"');
                warnings.push(w);
                continue;
            }
        };
        if !ok {
            bad_value(&mut warnings, line_no, key, value);
        }
    }
    (cfg, warnings)
}

/// Apply kernel command-line overrides. `kiln.ip`/`kiln.gw` and
/// `kiln.net=IFACE` enable networking (starting from the default interface
/// settings) even if init.conf said `net=none`; `kiln.net=none` always wins.
/// Returns warnings for malformed values (which are then ignored).
pub fn apply_overrides(cfg: &mut Config, o: &Overrides) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut bad = |key: &str, value: &str| {
        let mut w = String::from("kernel command line: invalid kiln.");
        w.push_str(key);
        w.push_str(" value \"");
        w.push_str(value);
        w.push('"');
        warnings.push(w);
    };
    if let Some(ip) = &o.ip {
        match parse_cidr(ip) {
            Some((addr, prefix)) => {
                let n = cfg.net.get_or_insert_with(NetConfig::default);
                n.addr = addr;
                n.prefix = prefix;
            }
            None => bad("ip", ip),
        }
    }
    if let Some(gw) = &o.gw {
        if gw == "none" {
            if let Some(n) = cfg.net.as_mut() {
                n.gateway = None;
            }
        } else {
            match gw.parse() {
                Ok(g) => cfg.net.get_or_insert_with(NetConfig::default).gateway = Some(g),
                Err(_) => bad("gw", gw),
            }
        }
    }
    if let Some(dns) = &o.dns {
        match parse_dns(dns) {
            Ok(d) => cfg.dns = d,
            Err(()) => bad("dns", dns),
        }
    }
    if let Some(h) = &o.hostname {
        if valid_hostname(h) {
            cfg.hostname = h.clone();
        } else {
            bad("hostname", h);
        }
    }
    if let Some(net) = &o.net {
        if net == "none" {
            cfg.net = None;
        } else if valid_iface(net) {
            cfg.net.get_or_insert_with(NetConfig::default).iface = net.clone();
        } else {
            bad("net", net);
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::{overrides, words};

    #[test]
    fn share_modules_are_kept_apart_from_boot_modules() {
        let (cfg, w) =
            parse("module=/m/virtio.ko\nshare_module=/m/fuse.ko\nshare_module=/m/virtiofs.ko\n");
        assert!(w.is_empty());
        assert_eq!(cfg.modules, ["/m/virtio.ko"]);
        assert_eq!(cfg.share_modules, ["/m/fuse.ko", "/m/virtiofs.ko"]);
    }

    #[test]
    fn env_values_are_taken_as_they_are() {
        let (cfg, w) = parse(
            "env=GREETING=hello #1 \nenv=A= two  spaces\r\n  env=B=x#y\nhostname=h # a comment\n",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            cfg.env,
            [
                ("GREETING".to_string(), "hello #1 ".to_string()),
                ("A".to_string(), " two  spaces".to_string()),
                ("B".to_string(), "x#y".to_string()),
            ]
        );
        assert_eq!(cfg.hostname, "h");
    }

    #[test]
    fn rc_runs_as_a_numeric_user_and_group() {
        let (cfg, w) = parse("user=1000:100\n");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(cfg.user, Some((1000, 100)));
        for bad in ["user=www\n", "user=1000\n", "user=1:x\n", "user=-1:0\n"] {
            let (cfg, w) = parse(bad);
            assert_eq!(cfg.user, None, "{bad}");
            assert_eq!(w.len(), 1, "{bad}: {w:?}");
        }
    }

    #[test]
    fn defaults_when_empty() {
        let (cfg, w) = parse("");
        assert!(w.is_empty());
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.hostname, "kiln");
        assert_eq!(cfg.net, Some(NetConfig::default()));
        assert_eq!(cfg.dns, vec!["10.0.2.3"]);
        assert_eq!(cfg.ready, Ready::None);
        assert_eq!(cfg.rc, "/etc/rc");
    }

    #[test]
    fn full_example() {
        let text = "\
# written by kiln
hostname=httpd
module=/lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/virtio/virtio_ring.ko   # repeatable, load order
module=/lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/virtio/virtio.ko

net=eth1 192.168.7.2/16 192.168.0.1     # or: net=none
dns=10.0.2.3
ready=tcp:80                        # tcp:PORT | exit | none
rc=/etc/rc.kiln
env=FOO=bar
env=URL=http://x/#frag
env=EMPTY=
";
        let (cfg, w) = parse(text);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(cfg.hostname, "httpd");
        assert_eq!(
            cfg.modules,
            vec![
                "/lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/virtio/virtio_ring.ko",
                "/lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/virtio/virtio.ko"
            ]
        );
        assert_eq!(
            cfg.net,
            Some(NetConfig {
                iface: "eth1".into(),
                addr: Ipv4Addr::new(192, 168, 7, 2),
                prefix: 16,
                gateway: Some(Ipv4Addr::new(192, 168, 0, 1)),
            })
        );
        assert_eq!(cfg.ready, Ready::Tcp(80));
        assert_eq!(cfg.rc, "/etc/rc.kiln");
        assert_eq!(
            cfg.env,
            vec![
                ("FOO".into(), "bar".into()),
                ("URL".into(), "http://x/#frag".into()),
                ("EMPTY".into(), String::new())
            ]
        );
    }

    #[test]
    fn net_none_and_no_gateway() {
        let (cfg, w) = parse("net=none\ndns=none\nready=exit\n");
        assert!(w.is_empty());
        assert_eq!(cfg.net, None);
        assert!(cfg.dns.is_empty());
        assert_eq!(cfg.ready, Ready::Exit);
        let (cfg, _) = parse("net=eth0 10.0.0.5/8");
        assert_eq!(cfg.net.as_ref().and_then(|n| n.gateway), None);
    }

    #[test]
    fn warnings_are_not_fatal() {
        let (cfg, w) = parse(
            "colour=blue\nhostname=ok\nready=tcp:http\nnet=eth0 10.0.2.15 10.0.2.2\njunk\nenv=novalue\ndns=not-an-ip\nrc=relative\n",
        );
        assert_eq!(cfg.hostname, "ok");
        assert_eq!(cfg.ready, Ready::None);
        assert_eq!(cfg.net, Some(NetConfig::default()));
        assert_eq!(cfg.dns, vec!["10.0.2.3"]);
        assert_eq!(cfg.rc, "/etc/rc");
        assert!(cfg.env.is_empty());
        assert_eq!(
            w,
            vec![
                "init.conf line 1: unknown key \"colour\"",
                "init.conf line 3: invalid ready value \"tcp:http\"",
                "init.conf line 4: invalid net value \"eth0 10.0.2.15 10.0.2.2\"",
                "init.conf line 5: expected key=value, got \"junk\"",
                "init.conf line 6: invalid env value \"novalue\"",
                "init.conf line 7: invalid dns value \"not-an-ip\"",
                "init.conf line 8: invalid rc value \"relative\"",
            ]
        );
    }

    #[test]
    fn ready_values() {
        assert_eq!(parse_ready("tcp:8080"), Ok(Ready::Tcp(8080)));
        assert_eq!(parse_ready("tcp:0"), Err(()));
        assert_eq!(parse_ready("tcp:70000"), Err(()));
        assert_eq!(parse_ready("udp:53"), Err(()));
    }

    #[test]
    fn netmasks() {
        assert_eq!(prefix_to_netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_to_netmask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(prefix_to_netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(prefix_to_netmask(8), Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(prefix_to_netmask(20), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(parse_cidr("10.0.2.15/33"), None);
    }

    #[test]
    fn dns_lists() {
        assert_eq!(
            parse_dns("1.1.1.1, 2606:4700::1111"),
            Ok(vec!["1.1.1.1".to_string(), "2606:4700::1111".to_string()])
        );
        assert_eq!(parse_dns(""), Err(()));
    }

    #[test]
    fn cmdline_overrides() {
        let (mut cfg, _) = parse("hostname=a\nnet=none\n");
        let (o, _) = overrides(&words(
            "console=ttyS0 kiln.ip=10.1.0.9/16 kiln.gw=10.1.0.1 kiln.dns=9.9.9.9 kiln.hostname=b",
        ));
        assert!(apply_overrides(&mut cfg, &o).is_empty());
        assert_eq!(cfg.hostname, "b");
        assert_eq!(cfg.dns, vec!["9.9.9.9"]);
        assert_eq!(
            cfg.net,
            Some(NetConfig {
                iface: "eth0".into(),
                addr: Ipv4Addr::new(10, 1, 0, 9),
                prefix: 16,
                gateway: Some(Ipv4Addr::new(10, 1, 0, 1)),
            })
        );
    }

    #[test]
    fn cmdline_net_none_wins() {
        let mut cfg = Config::default();
        let (o, _) = overrides(&words("kiln.net=none kiln.ip=10.1.0.9/16"));
        assert!(apply_overrides(&mut cfg, &o).is_empty());
        assert_eq!(cfg.net, None);
    }

    #[test]
    fn cmdline_bad_values_warn() {
        let mut cfg = Config::default();
        let (o, _) = overrides(&words("kiln.ip=10.1.0.9 kiln.gw=x kiln.net=a/b"));
        let w = apply_overrides(&mut cfg, &o);
        assert_eq!(w.len(), 3);
        assert_eq!(
            w[0],
            "kernel command line: invalid kiln.ip value \"10.1.0.9\""
        );
        assert_eq!(cfg, Config::default());
    }
}
