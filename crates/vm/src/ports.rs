//! Host port checks: a forward whose host port is taken is refused before QEMU starts.

use crate::VmError;
use kiln_recipe::{PortForward, Protocol};
use std::net::{SocketAddrV4, TcpListener, UdpSocket};

/// Check that every forward's host port can be bound now.
pub fn check_free(forwards: &[PortForward]) -> Result<(), VmError> {
    for f in forwards {
        let addr = SocketAddrV4::new(f.host_addr, f.host_port);
        let free = match f.protocol {
            Protocol::Tcp => TcpListener::bind(addr).is_ok(),
            Protocol::Udp => UdpSocket::bind(addr).is_ok(),
        };
        if !free {
            return Err(VmError::PortInUse {
                addr: f.host_addr.to_string(),
                port: f.host_port,
                proto: match f.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                },
                by: String::new(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_port_is_refused_and_free_port_passes() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let f: PortForward = format!("{port}:80").parse().expect("parse");
        let e = check_free(std::slice::from_ref(&f)).expect_err("taken");
        assert!(
            e.to_string()
                .contains(&format!("127.0.0.1:{port}/tcp is already in use")),
            "{e}"
        );
        drop(l);
        check_free(&[f]).expect("free again");
    }
}
