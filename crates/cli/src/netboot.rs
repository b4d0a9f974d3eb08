//! `kiln netboot IMAGE`: serve an image's PC kernel and initramfs with an iPXE script (kiln-bake's
//! `netboot`) and boot a `pc` VM from the network (kiln-vm's `pc`), docs/netboot.md.

use crate::{dirs, BadInput};
use anyhow::Result;
use clap::Args;
use kiln_bake::netboot::{self, HttpServer, NetbootError, Tftpd};
use kiln_recipe::PortForward;
use kiln_vm::{AccelChoice, PcBoot, PcSerial, PcSpec};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The host's loopback as a guest on QEMU's user network sees it.
const SLIRP_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

/// `kiln netboot`.
#[derive(Args, Debug)]
pub struct NetbootArgs {
    /// The image folder (`kiln build` of a recipe with `[image] format = "iso"`).
    image: PathBuf,
    /// Serve with in.tftpd (tftpd-hpa) on ADDR[:PORT] (port 69 by default) instead of QEMU's
    /// built-in TFTP; the local VM, unless --no-vm, boots from that server.
    #[arg(long, value_name = "ADDR[:PORT]")]
    listen: Option<String>,
    /// Serve the folder over HTTP on ADDR:PORT (with --listen or alone; no root needed); the
    /// local VM then boots over HTTP.
    #[arg(long, value_name = "ADDR:PORT")]
    http: Option<String>,
    /// Forward a host port to the VM: [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp] (repeatable;
    /// default: the image's ports).
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    ports: Vec<PortForward>,
    /// The VM's memory in MiB (default: the image's).
    #[arg(long, value_name = "MIB")]
    memory: Option<u32>,
    /// More kernel arguments for the script, e.g. `kiln.ip=192.168.1.50/24 kiln.gw=192.168.1.1`
    /// for a PC on a real network (the image's own network settings are QEMU's 10.0.2.15/24).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    append: Option<String>,
    /// Only serve (with --listen or --http) until interrupted; boot no VM here.
    #[arg(long)]
    no_vm: bool,
    /// Accelerator: auto (probe KVM, fall back to TCG), kvm, tcg.
    #[arg(long, default_value = "auto")]
    accel: AccelChoice,
}

/// Errors the user can fix (exit code 2) become [`BadInput`], the rest stay as they are.
fn netboot_err(e: NetbootError) -> anyhow::Error {
    if e.is_user_error() {
        BadInput(e.to_string()).into()
    } else {
        e.into()
    }
}

/// `ADDR[:PORT]` (IPv4, or `[IPv6]:PORT`), `default_port` when the port is left out.
fn parse_addr(flag: &str, s: &str, default_port: Option<u16>) -> Result<SocketAddr, BadInput> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    match (s.parse::<IpAddr>(), default_port) {
        (Ok(ip), Some(port)) => Ok(SocketAddr::new(ip, port)),
        _ => Err(BadInput(format!(
            "{flag} `{s}`: expected {}, e.g. 192.168.1.10{}",
            if default_port.is_some() {
                "ADDR[:PORT]"
            } else {
                "ADDR:PORT"
            },
            if default_port.is_some() { "" } else { ":8069" }
        ))),
    }
}

/// The address a guest on QEMU's user network reaches `addr` at: the host's loopback and
/// "any" are 10.0.2.2, other addresses are routed to as they are.
fn guest_view(addr: SocketAddr) -> String {
    let ip = addr.ip();
    let host = if ip.is_loopback() || ip.is_unspecified() {
        IpAddr::V4(SLIRP_HOST)
    } else {
        ip
    };
    SocketAddr::new(host, addr.port()).to_string()
}

/// Carry out `kiln netboot`.
pub fn netboot(a: NetbootArgs) -> Result<ExitCode> {
    let listen = a
        .listen
        .as_deref()
        .map(|s| parse_addr("--listen", s, Some(69)))
        .transpose()?;
    let http = a
        .http
        .as_deref()
        .map(|s| parse_addr("--http", s, None))
        .transpose()?;
    if a.no_vm && listen.is_none() && http.is_none() {
        return Err(BadInput(
            "--no-vm serves for other machines: give --listen ADDR[:PORT] (TFTP) or --http ADDR:PORT"
                .into(),
        )
        .into());
    }
    let m = kiln_bake::load_image(&a.image).map_err(|e| netboot_err(e.into()))?;
    netboot::pc_info(&a.image, &m).map_err(netboot_err)?;
    let forwards: Vec<PortForward> = if a.ports.is_empty() {
        m.boot
            .ports
            .iter()
            .map(|p| p.parse().map_err(BadInput))
            .collect::<Result<_, _>>()?
    } else {
        a.ports.clone()
    };

    // The serving folder: Kiln's own, gone when we are.
    let folder = netboot::serving_folder(&dirs::cache_root().join("netboot"), &m.name)
        .map_err(netboot_err)?;
    let served = netboot::prepare(
        &a.image,
        &m,
        folder.path(),
        a.append.as_deref().unwrap_or(""),
    )
    .map_err(netboot_err)?;

    let stop = kiln_fleet::watch::stop_on_signals()?;

    let mut tftpd: Option<Tftpd> = None;
    let mut httpd: Option<HttpServer> = None;
    let mut bootfile = None;
    if let Some(addr) = listen {
        let t = Tftpd::start(&served.dir, addr).map_err(netboot_err)?;
        println!("tftp://{}/{}", t.addr(), netboot::SCRIPT);
        bootfile = Some(format!(
            "tftp://{}/{}",
            guest_view(t.addr()),
            netboot::SCRIPT
        ));
        tftpd = Some(t);
    }
    if let Some(addr) = http {
        let h = HttpServer::start(&served.dir, addr).map_err(netboot_err)?;
        println!("http://{}/{}", h.addr(), netboot::SCRIPT);
        bootfile = Some(format!(
            "http://{}/{}",
            guest_view(h.addr()),
            netboot::SCRIPT
        ));
        httpd = Some(h);
    }
    // Without a server of ours, QEMU's built-in TFTP serves the folder.
    let boot = match bootfile {
        Some(bootfile) => PcBoot::Net {
            tftp_dir: None,
            bootfile,
        },
        None => PcBoot::Net {
            tftp_dir: Some(served.dir.clone()),
            bootfile: netboot::SCRIPT.into(),
        },
    };
    eprintln!(
        "kiln: serving {} ({}, {}, {}) with kernel arguments: {}",
        served.dir.display(),
        netboot::SCRIPT,
        netboot::KERNEL,
        netboot::INITRD,
        served.cmdline
    );

    if a.no_vm {
        eprintln!("kiln: serving until interrupted (Ctrl-C)");
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("kiln: stopped");
        return Ok(ExitCode::SUCCESS);
    }

    let qemu = kiln_vm::check_qemu()?;
    kiln_vm::ports::check_free(&forwards)?;
    let probe = kiln_vm::accel::choose(
        a.accel,
        &qemu,
        &a.image.join(&m.kernel.file),
        &dirs::cache_root(),
    );
    if let Some(line) = probe.fallback_line() {
        eprintln!("{line}");
    }
    let spec = PcSpec {
        name: m.name.clone(),
        memory_mib: a.memory.unwrap_or(m.boot.memory),
        cpus: m.boot.cpus,
        accel: probe.accel,
        boot,
        forwards,
        serial: PcSerial::Stdio,
    };
    if let PcBoot::Net { bootfile, .. } = &spec.boot {
        eprintln!(
            "kiln: booting a PC from the network ({bootfile}); the console follows, Ctrl-C stops it"
        );
    }
    let mut child = kiln_vm::pc::spawn(&qemu, &spec)?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if stop.load(Ordering::SeqCst) {
            // SIGTERM first: QEMU puts the terminal back as it was; SIGKILL after 5 s.
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while child.try_wait()?.is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop((tftpd, httpd));
    match status {
        None => {
            eprintln!("kiln: stopped the VM");
            Ok(ExitCode::SUCCESS)
        }
        Some(s) if s.success() => Ok(ExitCode::SUCCESS),
        Some(s) => Err(anyhow::anyhow!("QEMU ended with {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_addr("--listen", "127.0.0.1", Some(69)).expect("a"),
            "127.0.0.1:69".parse().expect("a")
        );
        assert_eq!(
            parse_addr("--listen", "10.1.2.3:6969", Some(69)).expect("a"),
            "10.1.2.3:6969".parse().expect("a")
        );
        assert!(parse_addr("--http", "127.0.0.1", None).is_err());
        let e = parse_addr("--listen", "lan0", Some(69)).expect_err("bad");
        assert!(e.0.contains("ADDR[:PORT]"), "{}", e.0);
    }

    #[test]
    fn the_guest_sees_the_hosts_loopback_at_10_0_2_2() {
        assert_eq!(
            guest_view("127.0.0.1:6969".parse().expect("a")),
            "10.0.2.2:6969"
        );
        assert_eq!(guest_view("0.0.0.0:69".parse().expect("a")), "10.0.2.2:69");
        assert_eq!(
            guest_view("192.168.1.5:69".parse().expect("a")),
            "192.168.1.5:69"
        );
    }
}
