//! The QEMU command line for a microVM, built from a [`VmSpec`] (pure: no processes here).
//!
//! The machine is QEMU's `microvm`: direct kernel boot, no firmware option ROMs, no PCI,
//! virtio-mmio devices, the serial console on a unix socket, a virtio-serial control port for
//! kiln-init, and QMP on a unix socket.

use crate::accel::Accel;
use kiln_recipe::{PortForward, Protocol};
use std::path::PathBuf;

/// The name of the virtio-serial port kiln-init listens on for `poweroff`.
pub const CONTROL_PORT_NAME: &str = "org.kiln.control";

/// Guest networking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetSpec {
    /// QEMU user networking with these host → guest forwards.
    User {
        /// The forwards.
        forwards: Vec<PortForward>,
    },
    /// No network device.
    None,
}

/// Everything needed to start one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// VM name (QEMU `-name`).
    pub name: String,
    /// Kernel image (bzImage or PVH vmlinux).
    pub kernel: PathBuf,
    /// Initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// The whole kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Accelerator.
    pub accel: Accel,
    /// Networking.
    pub net: NetSpec,
    /// Serial console socket (QEMU listens).
    pub console_socket: PathBuf,
    /// QEMU waits for a console client before starting the guest (foreground runs).
    pub console_wait: bool,
    /// Console log file written by QEMU itself (detached runs).
    pub console_log: Option<PathBuf>,
    /// Control channel socket (virtio-serial port `org.kiln.control`).
    pub control_socket: PathBuf,
    /// QMP socket.
    pub qmp_socket: PathBuf,
    /// Extra arguments appended verbatim.
    pub extra_args: Vec<String>,
}

/// `hostfwd=` value for one forward.
pub fn hostfwd(f: &PortForward) -> String {
    let proto = match f.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    format!(
        "hostfwd={proto}:{}:{}-:{}",
        f.host_addr, f.host_port, f.guest_port
    )
}

/// QEMU's argv (without the binary itself).
pub fn argv(spec: &VmSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &format!("kiln-{}", spec.name)]);
    push(&["-M", "microvm,x-option-roms=off,isa-serial=on"]);
    match spec.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg"]),
    }
    push(&[
        "-m",
        &spec.memory_mib.to_string(),
        "-smp",
        &spec.cpus.to_string(),
    ]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&["-kernel", &spec.kernel.to_string_lossy()]);
    if let Some(initrd) = &spec.initrd {
        push(&["-initrd", &initrd.to_string_lossy()]);
    }
    push(&["-append", &spec.cmdline]);

    let mut con = format!(
        "socket,id=con0,path={},server=on,wait={}",
        spec.console_socket.to_string_lossy(),
        if spec.console_wait { "on" } else { "off" }
    );
    if let Some(log) = &spec.console_log {
        con.push_str(&format!(",logfile={},logappend=on", log.to_string_lossy()));
    }
    push(&["-chardev", &con, "-serial", "chardev:con0"]);

    match &spec.net {
        NetSpec::User { forwards } => {
            let mut netdev = String::from("user,id=net0");
            for f in forwards {
                netdev.push(',');
                netdev.push_str(&hostfwd(f));
            }
            push(&[
                "-netdev",
                &netdev,
                "-device",
                "virtio-net-device,netdev=net0",
            ]);
        }
        NetSpec::None => {}
    }
    push(&["-device", "virtio-rng-device"]);
    push(&[
        "-device",
        "virtio-serial-device",
        "-chardev",
        &format!(
            "socket,id=ctl0,path={},server=on,wait=off",
            spec.control_socket.to_string_lossy()
        ),
        "-device",
        &format!("virtserialport,chardev=ctl0,name={CONTROL_PORT_NAME}"),
    ]);
    push(&[
        "-qmp",
        &format!(
            "unix:{},server=on,wait=off",
            spec.qmp_socket.to_string_lossy()
        ),
    ]);
    a.extend(spec.extra_args.iter().cloned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "httpd".into(),
            kernel: "/c/vmlinuz".into(),
            initrd: Some("/c/initramfs.cpio.zst".into()),
            cmdline: "console=ttyS0 panic=-1".into(),
            cpus: 2,
            memory_mib: 96,
            accel: Accel::Tcg,
            net: NetSpec::User {
                forwards: vec![
                    "8080:80".parse().expect("p"),
                    "0.0.0.0:5353:53/udp".parse().expect("p"),
                ],
            },
            console_socket: "/r/console.sock".into(),
            console_wait: true,
            console_log: Some("/r/console.log".into()),
            control_socket: "/r/control.sock".into(),
            qmp_socket: "/r/qmp.sock".into(),
            extra_args: vec![],
        }
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn builds_microvm_direct_boot() {
        let a = argv(&spec());
        assert_eq!(after(&a, "-M"), ["microvm,x-option-roms=off,isa-serial=on"]);
        assert_eq!(after(&a, "-accel"), ["tcg"]);
        assert_eq!(after(&a, "-m"), ["96"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        assert_eq!(after(&a, "-kernel"), ["/c/vmlinuz"]);
        assert_eq!(after(&a, "-initrd"), ["/c/initramfs.cpio.zst"]);
        assert_eq!(after(&a, "-append"), ["console=ttyS0 panic=-1"]);
        assert!(a.contains(&"-nodefaults".to_string()) && a.contains(&"-no-reboot".to_string()));
        assert_eq!(
            after(&a, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:0.0.0.0:5353-:53"]
        );
        let chardevs = after(&a, "-chardev");
        assert_eq!(
            chardevs[0],
            "socket,id=con0,path=/r/console.sock,server=on,wait=on,logfile=/r/console.log,logappend=on"
        );
        assert!(chardevs[1].starts_with("socket,id=ctl0,path=/r/control.sock,server=on,wait=off"));
        assert!(after(&a, "-device").contains(&"virtserialport,chardev=ctl0,name=org.kiln.control"));
        assert_eq!(after(&a, "-qmp"), ["unix:/r/qmp.sock,server=on,wait=off"]);
        assert!(
            !a.iter().any(|s| s.contains("pci")),
            "no PCI on microvm: {a:?}"
        );
    }

    #[test]
    fn kvm_uses_host_cpu_and_no_net_has_no_nic() {
        let mut s = spec();
        s.accel = Accel::Kvm;
        s.net = NetSpec::None;
        s.initrd = None;
        let a = argv(&s);
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert_eq!(after(&a, "-cpu"), ["host"]);
        assert!(after(&a, "-netdev").is_empty());
        assert!(after(&a, "-initrd").is_empty());
    }
}
