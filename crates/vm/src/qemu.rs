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

/// The name of the virtio-serial port of the exec channel (`kiln exec`, `kiln cp`).
pub const EXEC_PORT_NAME: &str = kiln_wire::PORT_NAME;

/// The id of the guest's network backend (`-netdev …,id=net0`), for QMP `set_link`.
pub const NETDEV_ID: &str = "net0";

/// Guest networking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetSpec {
    /// QEMU user networking (slirp) with these host → guest forwards. [`argv`] renders them
    /// as given (`hostfwd=`); [`crate::runner::spawn`] first puts Kiln's own listeners on the
    /// TCP ones' host ports ([`crate::front`]: slirp listens with a backlog of 1) and hands
    /// QEMU private loopback ports behind them.
    User {
        /// The forwards.
        forwards: Vec<PortForward>,
    },
    /// A tap device attached to a host bridge by qemu-bridge-helper (root only).
    Bridge {
        /// The host bridge, e.g. `br0`.
        bridge: String,
    },
    /// An existing (or QEMU-created) tap device, no scripts (root only).
    Tap {
        /// The tap interface, e.g. `tap0`.
        ifname: String,
    },
    /// No network device.
    None,
}

/// QEMU's TCG with a 12 MiB translation cache: QEMU 7.2's default lets the cache grow to
/// 1 GiB, and an idle httpd VM kept ~27 MB of it touched. At 16 MiB, 20 idle VMs cost the host
/// 70 MB each instead of 81 (MemAvailable); with the smaller kernel and busybox, 12 MiB costs
/// 40 MB against 44 at 16, with the same boot time; 8 MiB costs ~100 ms of boot in
/// retranslation (BENCHMARKS.md, issue 17).
pub const TCG_ACCEL: &str = "tcg,tb-size=12";

/// The balloon of [`VmSpec::free_page_reporting`]: it only takes the pages the guest reports
/// free, it is never inflated.
pub const BALLOON_DEVICE: &str = "virtio-balloon-device,free-page-reporting=on";

/// An extra virtio-blk drive (startnb.sh `-l drive2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    /// The disk image on the host (raw).
    pub path: PathBuf,
    /// Attach it read-only.
    pub readonly: bool,
    /// Let QEMU take its image lock (off: startnb.sh `-s`, "don't lock the image").
    pub lock: bool,
    /// Writes go to a temporary overlay QEMU drops at exit, the image stays as built (the
    /// root disk of a `format = "disk"` image, which many VMs may boot at once).
    pub snapshot: bool,
    /// The image's format: raw (default) or qcow2.
    pub format: DriveFormat,
}

/// The on-disk format of a drive image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DriveFormat {
    /// A plain image.
    #[default]
    Raw,
    /// QEMU's copy-on-write format.
    Qcow2,
}

impl DriveFormat {
    /// QEMU's name for it (`format=`).
    pub fn as_str(self) -> &'static str {
        match self {
            DriveFormat::Raw => "raw",
            DriveFormat::Qcow2 => "qcow2",
        }
    }
}

/// How a host folder reaches the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareKind {
    /// vhost-user-fs served by virtiofsd on this socket (works with Debian's cloud kernel).
    Virtiofs {
        /// virtiofsd's socket.
        socket: PathBuf,
    },
    /// virtio-9p served by QEMU itself (needs 9p in the guest kernel).
    NineP,
}

/// A host folder shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// The mount tag the guest mounts.
    pub tag: String,
    /// The host folder.
    pub host_dir: PathBuf,
    /// Read-only (9p only; virtiofsd of QEMU 7.2 has no read-only mode).
    pub readonly: bool,
    /// virtiofs or 9p.
    pub kind: ShareKind,
}

/// A virtio-console port exposed as a host unix socket (startnb.sh `-n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VportSpec {
    /// The port name the guest sees (`/sys/class/virtio-ports/*/name`).
    pub name: String,
    /// The host socket (QEMU listens).
    pub socket: PathBuf,
}

/// A second (third, …) NIC on a Kiln private net: a virtio-net device whose frames travel as
/// unix datagrams between the VM's own socket and the net's switch (`-netdev dgram`). QEMU sends
/// to the switch's path on every frame, so a restarted switch gets the VM's traffic again with
/// nothing to reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanSpec {
    /// The NIC's MAC address (`02:…`, locally administered).
    pub mac: String,
    /// The VM's end (QEMU binds it).
    pub local: PathBuf,
    /// The switch's socket.
    pub switch: PathBuf,
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
    /// NICs on Kiln's private nets, after `net`.
    pub lans: Vec<LanSpec>,
    /// Serial console socket (QEMU listens).
    pub console_socket: PathBuf,
    /// QEMU waits for a console client before starting the guest (foreground runs).
    pub console_wait: bool,
    /// Console log file written by QEMU itself (detached runs).
    pub console_log: Option<PathBuf>,
    /// Control channel socket (virtio-serial port `org.kiln.control`).
    pub control_socket: PathBuf,
    /// Exec channel socket (virtio-serial port `org.kiln.exec`, served by kiln-init); none for
    /// guests without kiln-init (BSD).
    pub exec_socket: Option<PathBuf>,
    /// QMP socket.
    pub qmp_socket: PathBuf,
    /// Extra drives (virtio-blk, `/dev/vda` onwards).
    pub drives: Vec<DriveSpec>,
    /// Shared host folders.
    pub shares: Vec<ShareSpec>,
    /// Extra virtio-console ports.
    pub vports: Vec<VportSpec>,
    /// ACPI on the microvm machine. Debian's kernel needs it (its virtio-mmio devices and
    /// power-off come from ACPI); the tiny kernel has none and gets the devices on its command
    /// line instead (`acpi=off` makes QEMU add `virtio_mmio.device=` arguments).
    pub acpi: bool,
    /// Where guest RAM lives.
    pub ram: RamBacking,
    /// Restore from this migration URI at start: QEMU waits (`-S -incoming defer`) for the
    /// keeper to set the migration capabilities over QMP, restore, and `cont`.
    pub incoming: Option<String>,
    /// A virtio-balloon device with free page reporting: the guest hands the pages it frees
    /// back to the host (QEMU drops them), so an idle VM keeps only what it uses.
    pub free_page_reporting: bool,
    /// Extra arguments appended verbatim.
    pub extra_args: Vec<String>,
}

/// Where guest RAM lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RamBacking {
    /// Anonymous memory (a plain VM).
    #[default]
    Anonymous,
    /// A file mapped as guest RAM: `shared` for a template being made (the guest's pages land
    /// in the file), private (copy-on-write) for a clone of it.
    File {
        /// The RAM file.
        path: PathBuf,
        /// Map it shared (writes reach the file) or private.
        shared: bool,
    },
}

impl VmSpec {
    /// Whether guest RAM must be a shared memfd (vhost-user devices need it).
    pub fn needs_shared_memory(&self) -> bool {
        self.shares
            .iter()
            .any(|s| matches!(s.kind, ShareKind::Virtiofs { .. }))
    }
}

/// Escape a value for QEMU's `key=value,...` option syntax (commas are doubled).
pub fn opt_escape(s: &str) -> String {
    s.replace(',', ",,")
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

/// The guest's NIC and its backend (`net0`, virtio-net on the microvm bus): user networking
/// with its forwards, a bridge, or a tap; nothing for [`NetSpec::None`].
pub fn net_args(net: &NetSpec) -> Vec<String> {
    let netdev = match net {
        NetSpec::User { forwards } => {
            let mut netdev = format!("user,id={NETDEV_ID}");
            for f in forwards {
                netdev.push(',');
                netdev.push_str(&hostfwd(f));
            }
            netdev
        }
        NetSpec::Bridge { bridge } => format!("bridge,id={NETDEV_ID},br={}", opt_escape(bridge)),
        NetSpec::Tap { ifname } => format!(
            "tap,id={NETDEV_ID},ifname={},script=no,downscript=no",
            opt_escape(ifname)
        ),
        NetSpec::None => return vec![],
    };
    vec![
        "-netdev".into(),
        netdev,
        "-device".into(),
        format!("virtio-net-device,netdev={NETDEV_ID}"),
    ]
}

/// The NICs on private nets (`lan0`, `lan1`, …): datagram netdevs to the nets' switches.
pub fn lan_args(lans: &[LanSpec]) -> Vec<String> {
    let mut a = Vec::new();
    for (i, l) in lans.iter().enumerate() {
        a.push("-netdev".into());
        a.push(format!(
            "dgram,id=lan{i},local.type=unix,local.path={},remote.type=unix,remote.path={}",
            opt_escape(&l.local.to_string_lossy()),
            opt_escape(&l.switch.to_string_lossy())
        ));
        a.push("-device".into());
        a.push(format!(
            "virtio-net-device,netdev=lan{i},mac={}",
            opt_escape(&l.mac)
        ));
    }
    a
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A 9p share, the `i`th: the host folder `dir` as `tag` in the guest.
pub fn nine_p_args(i: usize, tag: &str, dir: &std::path::Path, readonly: bool) -> Vec<String> {
    vec![
        "-fsdev".into(),
        format!(
            "local,id=fs{i},path={},security_model=none{}",
            opt_escape(&dir.to_string_lossy()),
            if readonly { ",readonly=on" } else { "" }
        ),
        "-device".into(),
        format!("virtio-9p-device,fsdev=fs{i},mount_tag={}", opt_escape(tag)),
    ]
}

/// QEMU's argv (without the binary itself).
pub fn argv(spec: &VmSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &format!("kiln-{}", spec.name)]);
    let shared_mem = spec.needs_shared_memory();
    let machine = if spec.acpi {
        "microvm,x-option-roms=off,isa-serial=on"
    } else {
        "microvm,x-option-roms=off,isa-serial=on,acpi=off"
    };
    if let RamBacking::File { path, shared } = &spec.ram {
        push(&["-M", &format!("{machine},memory-backend=ram0")]);
        push(&[
            "-object",
            &format!(
                "memory-backend-file,id=ram0,size={}M,mem-path={},share={}",
                spec.memory_mib,
                opt_escape(&path.to_string_lossy()),
                if *shared { "on" } else { "off" }
            ),
        ]);
    } else if shared_mem {
        push(&["-M", &format!("{machine},memory-backend=mem")]);
        push(&[
            "-object",
            &format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                spec.memory_mib
            ),
            // virtiofsd refuses legacy virtio devices; the guest would hang on first access.
            "-global",
            "virtio-mmio.force-legacy=false",
        ]);
    } else {
        push(&["-M", machine]);
    }
    match spec.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", TCG_ACCEL]),
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
    if spec.incoming.is_some() {
        push(&["-S", "-incoming", "defer"]);
    }

    let mut con = format!(
        "socket,id=con0,path={},server=on,wait={}",
        spec.console_socket.to_string_lossy(),
        if spec.console_wait { "on" } else { "off" }
    );
    if let Some(log) = &spec.console_log {
        con.push_str(&format!(",logfile={},logappend=on", log.to_string_lossy()));
    }
    push(&["-chardev", &con, "-serial", "chardev:con0"]);

    push(&as_strs(&net_args(&spec.net)));
    push(&as_strs(&lan_args(&spec.lans)));
    for (i, d) in spec.drives.iter().enumerate() {
        let mut drive = format!(
            "file={},if=none,id=drive{i},format={}",
            opt_escape(&d.path.to_string_lossy()),
            d.format.as_str()
        );
        if d.readonly {
            drive.push_str(",readonly=on");
        }
        if !d.lock {
            drive.push_str(",file.locking=off");
        }
        if d.snapshot {
            drive.push_str(",snapshot=on");
        }
        push(&[
            "-drive",
            &drive,
            "-device",
            &format!("virtio-blk-device,drive=drive{i}"),
        ]);
    }
    for (i, sh) in spec.shares.iter().enumerate() {
        match &sh.kind {
            ShareKind::Virtiofs { socket } => push(&[
                "-chardev",
                &format!(
                    "socket,id=fs{i},path={}",
                    opt_escape(&socket.to_string_lossy())
                ),
                "-device",
                &format!(
                    "vhost-user-fs-device,chardev=fs{i},tag={}",
                    opt_escape(&sh.tag)
                ),
            ]),
            ShareKind::NineP => push(&as_strs(&nine_p_args(
                i,
                &sh.tag,
                &sh.host_dir,
                sh.readonly,
            ))),
        }
    }
    push(&["-device", "virtio-rng-device"]);
    if spec.free_page_reporting {
        push(&["-device", BALLOON_DEVICE]);
    }
    // Only as many ports as we use: the default (31) makes the guest driver allocate buffers
    // for all of them, which alone ran a 32 MiB guest out of memory.
    // Port 0 is reserved for a virtconsole; ours start at 1.
    let max_ports = format!(
        "virtio-serial-device,max_ports={}",
        2 + usize::from(spec.exec_socket.is_some()) + spec.vports.len()
    );
    push(&[
        "-device",
        &max_ports,
        "-chardev",
        &format!(
            "socket,id=ctl0,path={},server=on,wait=off",
            spec.control_socket.to_string_lossy()
        ),
        "-device",
        &format!("virtserialport,chardev=ctl0,name={CONTROL_PORT_NAME}"),
    ]);
    if let Some(sock) = &spec.exec_socket {
        push(&[
            "-chardev",
            &format!(
                "socket,id=exec0,path={},server=on,wait=off",
                opt_escape(&sock.to_string_lossy())
            ),
            "-device",
            &format!("virtserialport,chardev=exec0,name={EXEC_PORT_NAME}"),
        ]);
    }
    for (i, p) in spec.vports.iter().enumerate() {
        push(&[
            "-chardev",
            &format!(
                "socket,id=vp{i},path={},server=on,wait=off",
                opt_escape(&p.socket.to_string_lossy())
            ),
            "-device",
            &format!("virtserialport,chardev=vp{i},name={}", opt_escape(&p.name)),
        ]);
    }
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
pub(crate) mod tests {
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
            lans: vec![],
            console_socket: "/r/console.sock".into(),
            console_wait: true,
            console_log: Some("/r/console.log".into()),
            control_socket: "/r/control.sock".into(),
            exec_socket: Some("/r/exec-qemu.sock".into()),
            qmp_socket: "/r/qmp.sock".into(),
            drives: vec![],
            shares: vec![],
            vports: vec![],
            acpi: true,
            ram: Default::default(),
            incoming: None,
            free_page_reporting: false,
            extra_args: vec![],
        }
    }

    /// The values that follow each `flag` in an argv (shared with the `pc` tests).
    pub(crate) fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn private_net_nics_follow_the_user_nic_as_datagram_netdevs() {
        let mut s = spec();
        s.lans = vec![
            LanSpec {
                mac: "02:6b:00:00:00:01".into(),
                local: "/r/lan0.sock".into(),
                switch: "/s/nets/a,b/switch.sock".into(),
            },
            LanSpec {
                mac: "02:6b:00:00:00:02".into(),
                local: "/r/lan1.sock".into(),
                switch: "/s/nets/c/switch.sock".into(),
            },
        ];
        let a = argv(&s);
        let netdevs = after(&a, "-netdev");
        assert_eq!(netdevs.len(), 3, "{netdevs:?}");
        assert!(netdevs[0].starts_with("user,id=net0"), "{netdevs:?}");
        assert_eq!(
            netdevs[1],
            "dgram,id=lan0,local.type=unix,local.path=/r/lan0.sock,\
             remote.type=unix,remote.path=/s/nets/a,,b/switch.sock"
        );
        assert!(netdevs[2].starts_with("dgram,id=lan1,"), "{netdevs:?}");
        let devices = after(&a, "-device");
        assert!(devices.contains(&"virtio-net-device,netdev=lan1,mac=02:6b:00:00:00:02"));
    }

    #[test]
    fn builds_microvm_direct_boot() {
        let a = argv(&spec());
        assert_eq!(after(&a, "-M"), ["microvm,x-option-roms=off,isa-serial=on"]);
        assert_eq!(after(&a, "-accel"), ["tcg,tb-size=12"]);
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
        assert_eq!(
            chardevs[2],
            "socket,id=exec0,path=/r/exec-qemu.sock,server=on,wait=off"
        );
        assert!(after(&a, "-device").contains(&"virtserialport,chardev=exec0,name=org.kiln.exec"));
        assert_eq!(after(&a, "-qmp"), ["unix:/r/qmp.sock,server=on,wait=off"]);
        assert!(
            !a.iter().any(|s| s.contains("pci")),
            "no PCI on microvm: {a:?}"
        );
    }

    #[test]
    fn serial_ports_are_capped_to_those_used() {
        let mut s = spec();
        assert!(after(&argv(&s), "-device").contains(&"virtio-serial-device,max_ports=3"));
        s.vports = vec![VportSpec {
            name: "data".into(),
            socket: "/r/v.sock".into(),
        }];
        assert!(after(&argv(&s), "-device").contains(&"virtio-serial-device,max_ports=4"));
        // A guest without kiln-init (BSD) has no exec port.
        s.exec_socket = None;
        let a = argv(&s);
        assert!(after(&a, "-device").contains(&"virtio-serial-device,max_ports=3"));
        assert!(!a.iter().any(|x| x.contains("org.kiln.exec")));
    }

    #[test]
    fn free_page_reporting_adds_a_balloon_that_reports() {
        let mut s = spec();
        assert!(!argv(&s).iter().any(|a| a.contains("balloon")));
        s.free_page_reporting = true;
        assert!(
            after(&argv(&s), "-device").contains(&"virtio-balloon-device,free-page-reporting=on")
        );
    }

    #[test]
    fn tiny_kernel_runs_without_acpi() {
        let mut s = spec();
        s.acpi = false;
        assert_eq!(
            after(&argv(&s), "-M"),
            ["microvm,x-option-roms=off,isa-serial=on,acpi=off"]
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

    #[test]
    fn drives_shares_vports_and_tap() {
        let mut s = spec();
        s.drives = vec![
            DriveSpec {
                path: "/d/data,1.img".into(),
                readonly: false,
                lock: false,
                snapshot: false,
                format: DriveFormat::Raw,
            },
            DriveSpec {
                path: "/i/root.ext4".into(),
                readonly: false,
                lock: true,
                snapshot: true,
                format: DriveFormat::Raw,
            },
        ];
        s.shares = vec![
            ShareSpec {
                tag: "share0".into(),
                host_dir: "/srv/x".into(),
                readonly: false,
                kind: ShareKind::Virtiofs {
                    socket: "/r/fs0.sock".into(),
                },
            },
            ShareSpec {
                tag: "nine".into(),
                host_dir: "/srv/y".into(),
                readonly: true,
                kind: ShareKind::NineP,
            },
        ];
        s.vports = vec![VportSpec {
            name: "data".into(),
            socket: "/r/vport-data.sock".into(),
        }];
        s.net = NetSpec::Tap {
            ifname: "tap0".into(),
        };
        let a = argv(&s);
        assert_eq!(
            after(&a, "-M"),
            ["microvm,x-option-roms=off,isa-serial=on,memory-backend=mem"]
        );
        assert_eq!(
            after(&a, "-object"),
            ["memory-backend-memfd,id=mem,size=96M,share=on"]
        );
        assert_eq!(after(&a, "-global"), ["virtio-mmio.force-legacy=false"]);
        assert_eq!(
            after(&a, "-drive"),
            [
                "file=/d/data,,1.img,if=none,id=drive0,format=raw,file.locking=off",
                "file=/i/root.ext4,if=none,id=drive1,format=raw,snapshot=on"
            ]
        );
        let dev = after(&a, "-device");
        assert!(dev.contains(&"virtio-blk-device,drive=drive0"), "{dev:?}");
        assert!(dev.contains(&"virtio-blk-device,drive=drive1"), "{dev:?}");
        assert!(dev.contains(&"vhost-user-fs-device,chardev=fs0,tag=share0"));
        assert!(dev.contains(&"virtio-9p-device,fsdev=fs1,mount_tag=nine"));
        assert!(dev.contains(&"virtserialport,chardev=vp0,name=data"));
        assert_eq!(
            after(&a, "-fsdev"),
            ["local,id=fs1,path=/srv/y,security_model=none,readonly=on"]
        );
        let ch = after(&a, "-chardev");
        assert!(ch.contains(&"socket,id=fs0,path=/r/fs0.sock"), "{ch:?}");
        assert!(ch.contains(&"socket,id=vp0,path=/r/vport-data.sock,server=on,wait=off"));
        assert_eq!(
            after(&a, "-netdev"),
            ["tap,id=net0,ifname=tap0,script=no,downscript=no"]
        );
        s.net = NetSpec::Bridge {
            bridge: "br0".into(),
        };
        s.shares.clear();
        let a = argv(&s);
        assert_eq!(after(&a, "-netdev"), ["bridge,id=net0,br=br0"]);
        assert!(
            after(&a, "-global").is_empty(),
            "modern virtio only with virtiofs"
        );
    }
}
