//! The QEMU command line for a PC: the `pc` machine (SeaBIOS, PCI) that boots a Kiln image the
//! way a real machine does, from the network through iPXE (`kiln netboot`) or from a CD-ROM (an
//! `[image] format = "iso"` image's hybrid ISO). Pure argv building plus one spawn helper.
//!
//! The microVM path ([`crate::qemu`]) boots the kernel directly; here the firmware does: SeaBIOS
//! runs the iPXE option ROM of the virtio-net-pci NIC (Debian's ipxe-qemu), which asks QEMU's
//! DHCP for its boot file, or boots the CD's El Torito image.

use crate::accel::Accel;
use crate::qemu::{hostfwd, opt_escape};
use crate::VmError;
use kiln_recipe::PortForward;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How the PC boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcBoot {
    /// From the network: iPXE asks QEMU's DHCP (user networking) for `bootfile`.
    Net {
        /// Serve this folder with QEMU's built-in TFTP server (`tftp=`), at 10.0.2.2 for the
        /// guest; None when `bootfile` is a URL of another server.
        tftp_dir: Option<PathBuf>,
        /// The DHCP boot file: a name in `tftp_dir` (`boot.ipxe`), or a URL iPXE fetches
        /// (`tftp://10.0.2.2:6969/boot.ipxe`, `http://…/boot.ipxe`).
        bootfile: String,
    },
    /// From this ISO image on the IDE CD-ROM.
    Cdrom(PathBuf),
}

/// Where the PC's serial port (ttyS0) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcSerial {
    /// QEMU's stdin/stdout (Ctrl-C still signals QEMU and its parent).
    Stdio,
    /// Appended to a file.
    File(PathBuf),
}

/// A PC to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcSpec {
    /// The VM's name (QEMU `-name kiln-NAME`).
    pub name: String,
    /// Memory in MiB (iPXE, the kernel and the unpacked initramfs all need room).
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// KVM or TCG.
    pub accel: Accel,
    /// Network or CD-ROM.
    pub boot: PcBoot,
    /// Host → guest forwards on the user network (`hostfwd=`).
    pub forwards: Vec<PortForward>,
    /// The serial console.
    pub serial: PcSerial,
}

/// The id of the PC's user-network backend.
pub const PC_NETDEV_ID: &str = "n0";

/// QEMU's argv for `spec` (without the binary). The guest reboots into a QEMU exit
/// (`-no-reboot`): kiln-init's power-off on a kernel without ACPI is a reboot.
pub fn argv(spec: &PcSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &format!("kiln-{}", spec.name)]);
    // No display: SeaBIOS and iPXE print on the serial port instead (`etc/sercon-port`).
    push(&["-M", "pc,graphics=off", "-nodefaults", "-no-user-config"]);
    match spec.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", crate::qemu::TCG_ACCEL]),
    }
    push(&[
        "-m",
        &spec.memory_mib.to_string(),
        "-smp",
        &spec.cpus.to_string(),
        "-display",
        "none",
        "-no-reboot",
    ]);
    let serial = match &spec.serial {
        PcSerial::Stdio => "stdio".to_string(),
        PcSerial::File(p) => format!("file:{}", p.to_string_lossy()),
    };
    push(&["-serial", &serial]);
    let mut netdev = format!("user,id={PC_NETDEV_ID}");
    if let PcBoot::Net { tftp_dir, bootfile } = &spec.boot {
        if let Some(dir) = tftp_dir {
            netdev.push_str(&format!(",tftp={}", opt_escape(&dir.to_string_lossy())));
        }
        netdev.push_str(&format!(",bootfile={}", opt_escape(bootfile)));
    }
    for f in &spec.forwards {
        netdev.push(',');
        netdev.push_str(&hostfwd(f));
    }
    push(&[
        "-netdev",
        &netdev,
        "-device",
        &format!("virtio-net-pci,netdev={PC_NETDEV_ID}"),
    ]);
    match &spec.boot {
        PcBoot::Net { .. } => push(&["-boot", "n"]),
        PcBoot::Cdrom(iso) => push(&["-cdrom", &iso.to_string_lossy(), "-boot", "d"]),
    }
    a
}

/// Start QEMU for `spec`: stdin closed unless the serial console is on stdio, stdout and
/// stderr inherited. It dies with the calling thread (PR_SET_PDEATHSIG), so spawn from the
/// thread that keeps the VM.
pub fn spawn(qemu_bin: &Path, spec: &PcSpec) -> Result<Child, VmError> {
    let mut cmd = Command::new(qemu_bin);
    cmd.args(argv(spec));
    if spec.serial != PcSerial::Stdio {
        cmd.stdin(Stdio::null());
    }
    // SAFETY: only prctl, async-signal-safe, runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            VmError::NoQemu {
                binary: qemu_bin.to_string_lossy().into_owned(),
            }
        } else {
            VmError::Io {
                path: qemu_bin.to_path_buf(),
                error: e,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::tests::after;

    fn spec(boot: PcBoot) -> PcSpec {
        PcSpec {
            name: "httpd".into(),
            memory_mib: 128,
            cpus: 1,
            accel: Accel::Tcg,
            boot,
            forwards: vec!["127.0.0.1:8080:80".parse().expect("p")],
            serial: PcSerial::Stdio,
        }
    }

    #[test]
    fn netboot_from_qemus_tftp() {
        let a = argv(&spec(PcBoot::Net {
            tftp_dir: Some("/c/net,boot".into()),
            bootfile: "boot.ipxe".into(),
        }));
        assert_eq!(after(&a, "-M"), ["pc,graphics=off"]);
        assert_eq!(after(&a, "-accel"), ["tcg,tb-size=12"]);
        assert_eq!(after(&a, "-m"), ["128"]);
        assert_eq!(after(&a, "-serial"), ["stdio"]);
        assert_eq!(after(&a, "-display"), ["none"]);
        for flag in ["-nodefaults", "-no-user-config", "-no-reboot"] {
            assert!(a.iter().any(|x| x == flag), "{flag} in {a:?}");
        }
        assert_eq!(
            after(&a, "-netdev"),
            ["user,id=n0,tftp=/c/net,,boot,bootfile=boot.ipxe,hostfwd=tcp:127.0.0.1:8080-:80"]
        );
        assert_eq!(after(&a, "-device"), ["virtio-net-pci,netdev=n0"]);
        assert_eq!(after(&a, "-boot"), ["n"]);
        assert!(after(&a, "-cdrom").is_empty() && after(&a, "-kernel").is_empty());
    }

    #[test]
    fn netboot_from_a_url_has_no_tftp_folder() {
        let mut s = spec(PcBoot::Net {
            tftp_dir: None,
            bootfile: "tftp://10.0.2.2:6969/boot.ipxe".into(),
        });
        s.forwards.clear();
        s.serial = PcSerial::File("/r/console.log".into());
        s.accel = Accel::Kvm;
        let a = argv(&s);
        assert_eq!(
            after(&a, "-netdev"),
            ["user,id=n0,bootfile=tftp://10.0.2.2:6969/boot.ipxe"]
        );
        assert_eq!(after(&a, "-serial"), ["file:/r/console.log"]);
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert_eq!(after(&a, "-cpu"), ["host"]);
    }

    #[test]
    fn cdrom_boot() {
        let a = argv(&spec(PcBoot::Cdrom("/img/httpd.iso".into())));
        assert_eq!(after(&a, "-cdrom"), ["/img/httpd.iso"]);
        assert_eq!(after(&a, "-boot"), ["d"]);
        assert_eq!(
            after(&a, "-netdev"),
            ["user,id=n0,hostfwd=tcp:127.0.0.1:8080-:80"]
        );
    }
}
