//! Port forwards: `[hostaddr:]hostport:guestport[/tcp|/udp]`, as in kiln.toml `ports` and
//! `kiln run -p`.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Transport protocol of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

/// One host → guest port forward.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct PortForward {
    /// Host address to listen on (default 127.0.0.1).
    pub host_addr: Ipv4Addr,
    /// Host port.
    pub host_port: u16,
    /// Guest port.
    pub guest_port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl FromStr for PortForward {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || {
            format!("port forward `{s}`: expected [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp], e.g. 8080:80")
        };
        let (spec, protocol) = match s.rsplit_once('/') {
            Some((a, "tcp")) => (a, Protocol::Tcp),
            Some((a, "udp")) => (a, Protocol::Udp),
            Some((_, p)) => {
                return Err(format!(
                    "port forward `{s}`: unknown protocol `{p}` (tcp or udp)"
                ))
            }
            None => (s, Protocol::Tcp),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (addr, hp, gp) = match parts.as_slice() {
            [h, g] => (None, *h, *g),
            [a, h, g] => (Some(*a), *h, *g),
            _ => return Err(usage()),
        };
        let host_addr = match addr {
            None | Some("") => Ipv4Addr::LOCALHOST,
            Some(a) => a
                .parse()
                .map_err(|_| format!("port forward `{s}`: `{a}` is not an IPv4 address"))?,
        };
        let port = |p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("port forward `{s}`: `{p}` is not a port (1–65535)")),
            }
        };
        Ok(PortForward {
            host_addr,
            host_port: port(hp)?,
            guest_port: port(gp)?,
            protocol,
        })
    }
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(
            f,
            "{}:{}:{}/{}",
            self.host_addr, self.host_port, self.guest_port, proto
        )
    }
}

impl<'de> Deserialize<'de> for PortForward {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
