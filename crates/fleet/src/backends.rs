//! Other hypervisors, on paper: `kiln run --backend firecracker|bhyve --dry-run` renders the
//! same VM config as a Firecracker `--config-file` JSON or a bhyve command line (loader, tap,
//! nmdm console, virtio-blk/net). `--backend qemu --dry-run` prints QEMU's argv. Neither
//! Firecracker nor bhyve runs here: these outputs are covered by golden tests only.

use crate::error::{FleetError, Result};
use crate::plan::Plan;
use kiln_vm::{cmdline, Accel, NetSpec};
use std::fmt::Write as _;
use std::path::PathBuf;

/// The backend-neutral facts of a VM.
#[derive(Debug, Clone)]
pub struct BackendVm {
    /// VM name.
    pub name: String,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel arguments (without TCG-only settings).
    pub cmdline: String,
    /// vCPUs.
    pub cpus: u32,
    /// MiB.
    pub memory: u32,
    /// Networking.
    pub net: NetSpec,
    /// Extra drive: path, read-only.
    pub drives: Vec<(PathBuf, bool)>,
    /// Shares: tag, host folder, read-only.
    pub shares: Vec<(String, PathBuf, bool)>,
    /// virtio-console ports: name, host socket.
    pub vports: Vec<(String, PathBuf)>,
    /// The guest OS: "linux", "netbsd" or "freebsd".
    pub guest: String,
}

impl BackendVm {
    /// From a planned QEMU VM.
    pub fn from_plan(p: &Plan) -> BackendVm {
        // The plan's command line was composed for QEMU; recompose without TCG's tsc setting.
        let extra: Vec<&str> = p
            .spec
            .cmdline
            .split(' ')
            .filter(|w| {
                !cmdline::BASE.split(' ').any(|b| b == *w) && !cmdline::is_host_clock_arg(w)
            })
            .collect();
        BackendVm {
            name: p.name.clone(),
            kernel: p.spec.kernel.clone(),
            initrd: p.image_initrd.clone(),
            // A BSD guest's arguments are its own, not Kiln's Linux set.
            cmdline: if p.guest == "linux" {
                cmdline::compose(Accel::Kvm, None, false, &extra.join(" "))
            } else {
                p.spec.cmdline.clone()
            },
            guest: p.guest.clone(),
            cpus: p.spec.cpus,
            memory: p.spec.memory_mib,
            net: p.spec.net.clone(),
            drives: p
                .spec
                .drives
                .iter()
                .map(|d| (d.path.clone(), d.readonly))
                .collect(),
            shares: p
                .spec
                .shares
                .iter()
                .map(|s| (s.tag.clone(), s.host_dir.clone(), s.readonly))
                .collect(),
            vports: p
                .spec
                .vports
                .iter()
                .map(|v| (v.name.clone(), v.socket.clone()))
                .collect(),
        }
    }
}

/// Render `plan` for `backend`: the text, and notes on what the backend does differently.
pub fn render(backend: &str, plan: &Plan) -> Result<(String, Vec<String>)> {
    let vm = BackendVm::from_plan(plan);
    match backend {
        "qemu" => {
            let mut out = String::from(&*kiln_vm::qemu_binary());
            for a in kiln_vm::qemu::argv(&plan.spec) {
                out.push_str(" \\\n  ");
                out.push_str(&shell_quote(&a));
            }
            out.push('\n');
            Ok((out, vec![]))
        }
        "firecracker" => Ok((firecracker(&vm), firecracker_notes(&vm))),
        "bhyve" => Ok((bhyve(&vm), vec![])),
        other => Err(FleetError::BadInput(format!(
            "--backend {other}: expected qemu, firecracker or bhyve"
        ))),
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=.,:/@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// What the Firecracker config cannot carry (printed on stderr).
pub fn firecracker_notes(vm: &BackendVm) -> Vec<String> {
    let mut n = vec![];
    if let NetSpec::User { forwards } = &vm.net {
        if !forwards.is_empty() {
            n.push("no user networking: the forwards need DNAT rules to the guest on the tap device (tap0 assumed)".into());
        }
    }
    if !vm.shares.is_empty() {
        n.push("no virtiofs/9p: the shared folder is left out".into());
    }
    if !vm.vports.is_empty() {
        n.push("no virtio-console ports: use vsock instead; the ports are left out".into());
    }
    n
}

/// Firecracker's `--config-file` JSON (`firecracker --no-api --config-file vm.json`).
pub fn firecracker(vm: &BackendVm) -> String {
    let mut drives = vec![];
    for (i, (path, ro)) in vm.drives.iter().enumerate() {
        drives.push(serde_json::json!({
            "drive_id": format!("drive{i}"),
            "path_on_host": path,
            "is_root_device": false,
            "is_read_only": ro,
        }));
    }
    let ifaces = match &vm.net {
        NetSpec::None => vec![],
        NetSpec::Tap { ifname } => vec![iface(ifname)],
        NetSpec::Bridge { .. } | NetSpec::User { .. } => vec![iface("tap0")],
    };
    let mut boot = serde_json::json!({
        "kernel_image_path": vm.kernel,
        "boot_args": if vm.guest == "linux" {
            format!("{} reboot=k pci=off", vm.cmdline)
        } else {
            vm.cmdline.clone()
        },
    });
    if let Some(i) = &vm.initrd {
        boot["initrd_path"] = serde_json::json!(i);
    }
    let v = serde_json::json!({
        "boot-source": boot,
        "drives": drives,
        "machine-config": {
            "vcpu_count": vm.cpus,
            "mem_size_mib": vm.memory,
            "smt": false,
        },
        "network-interfaces": ifaces,
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

fn iface(tap: &str) -> serde_json::Value {
    serde_json::json!({
        "iface_id": "eth0",
        "guest_mac": "06:00:0a:00:02:0f",
        "host_dev_name": tap,
    })
}

/// The start of a bhyve script: header, modules, the tap (and bridge) set up, and the user-net
/// forwards as pf hints. Returns the script so far and the tap device, if any.
fn bhyve_prelude(vm: &BackendVm, what: &str) -> (String, Option<String>) {
    let tap = match &vm.net {
        NetSpec::Tap { ifname } => Some(ifname.clone()),
        NetSpec::None => None,
        _ => Some("tap0".to_string()),
    };
    let mut s = String::new();
    let _ = writeln!(s, "#!/bin/sh");
    let _ = writeln!(
        s,
        "# bhyve for {what} `{}`, written by `kiln run --backend bhyve --dry-run`; not tested on a real bhyve host.",
        vm.name
    );
    let _ = writeln!(s, "set -e");
    let _ = writeln!(s, "kldload -n vmm nmdm if_tap if_bridge");
    if let Some(t) = &tap {
        let _ = writeln!(s, "ifconfig {t} create 2>/dev/null || true");
        let _ = writeln!(s, "sysctl net.link.tap.up_on_open=1");
        if let NetSpec::Bridge { bridge } = &vm.net {
            let _ = writeln!(s, "ifconfig {bridge} addm {t} up");
        }
        if let NetSpec::User { forwards } = &vm.net {
            for f in forwards {
                let _ = writeln!(
                    s,
                    "# forward {f}: e.g. pf `rdr pass on $ext_if proto {} to port {} -> 10.0.2.15 port {}` (guest address from the recipe)",
                    match f.protocol {
                        kiln_recipe::Protocol::Tcp => "tcp",
                        kiln_recipe::Protocol::Udp => "udp",
                    },
                    f.host_port,
                    f.guest_port
                );
            }
        }
    }
    (s, tap)
}

/// bhyve's machine arguments, the NIC and the disks (path, read-only); the next free slot.
fn bhyve_devices(
    vm: &BackendVm,
    tap: Option<&str>,
    disks: &[(String, bool)],
) -> (Vec<String>, usize) {
    let mut args: Vec<String> = vec![
        "-A -H -P".into(),
        format!("-c {}", vm.cpus),
        format!("-m {}M", vm.memory),
        "-s 0:0,hostbridge".into(),
        "-s 1:0,lpc".into(),
    ];
    let mut slot = 2;
    if let Some(t) = tap {
        args.push(format!("-s {slot}:0,virtio-net,{t}"));
        slot += 1;
    }
    for (path, ro) in disks {
        args.push(format!(
            "-s {slot}:0,virtio-blk,{path}{}",
            if *ro { ",ro" } else { "" }
        ));
        slot += 1;
    }
    (args, slot)
}

/// The `bhyve …` call, one argument a line, with the console on the VM's nmdm pair.
fn write_bhyve_call(s: &mut String, mut args: Vec<String>, vmname: &str) {
    args.push(format!("-l com1,/dev/nmdm-{vmname}.0A"));
    let _ = writeln!(s, "bhyve \\");
    for a in &args {
        let _ = writeln!(s, "  {a} \\");
    }
    let _ = writeln!(s, "  {vmname} &");
}

/// A bhyve script for a Linux guest: grub-bhyve loads the kernel and initramfs from the host
/// (bhyveload boots FreeBSD kernels only; the UEFI bootrom alternative is spelled out in a
/// comment), then bhyve with virtio devices and the console on an nmdm pair.
pub fn bhyve(vm: &BackendVm) -> String {
    if vm.guest == "freebsd" {
        return bhyve_freebsd(vm);
    }
    let vmname = format!("kiln-{}", vm.name);
    let (mut s, tap) = bhyve_prelude(vm, "VM");
    let _ = writeln!(
        s,
        "# Loader: grub-bhyve (pkg install grub2-bhyve) reads the kernel and initramfs from the host;"
    );
    let _ = writeln!(
        s,
        "# it needs a bzImage (for UEFI instead: drop this step and add `-l bootrom,/usr/local/share/uefi-firmware/BHYVE_UEFI.fd`)."
    );
    let _ = writeln!(s, "printf '(host) /\\n' > /tmp/{vmname}.map");
    let mut grub = format!("linux (host){} {}\\n", vm.kernel.display(), vm.cmdline);
    if let Some(i) = &vm.initrd {
        let _ = write!(grub, "initrd (host){}\\n", i.display());
    }
    grub.push_str("boot\\n");
    let _ = writeln!(
        s,
        "printf '{grub}' | grub-bhyve -m /tmp/{vmname}.map -r host -M {}M {vmname}",
        vm.memory
    );
    let drives: Vec<(String, bool)> = vm
        .drives
        .iter()
        .map(|(p, ro)| (p.display().to_string(), *ro))
        .collect();
    let (mut args, mut slot) = bhyve_devices(vm, tap.as_deref(), &drives);
    for (tag, dir, ro) in &vm.shares {
        args.push(format!(
            "-s {slot}:0,virtio-9p,{tag}={}{}",
            dir.display(),
            if *ro { ",ro" } else { "" }
        ));
        slot += 1;
    }
    args.push(format!("-s {slot}:0,virtio-rnd"));
    slot += 1;
    let mut console =
        format!("-s {slot}:0,virtio-console,org.kiln.control=/var/run/{vmname}.control");
    for (name, sock) in &vm.vports {
        let _ = write!(console, ",{name}={}", sock.display());
    }
    args.push(console);
    write_bhyve_call(&mut s, args, &vmname);
    let _ = writeln!(
        s,
        "# console: cu -l /dev/nmdm-{vmname}.0B    graceful stop: echo poweroff | nc -U /var/run/{vmname}.control"
    );
    let _ = writeln!(s, "wait; bhyvectl --destroy --vm={vmname}");
    if !vm.shares.is_empty() {
        let _ = writeln!(
            s,
            "# the share uses virtio-9p: the guest kernel needs 9p (Debian's cloud kernel has none)"
        );
    }
    s
}

/// A bhyve script for a FreeBSD guest, as the handbook and microbhyve boot one: bhyveload
/// reads the loader and kernel from the FFS root disk (a copy, so the image stays as built),
/// then bhyve with virtio-blk/net and the console on an nmdm pair.
fn bhyve_freebsd(vm: &BackendVm) -> String {
    let vmname = format!("kiln-{}", vm.name);
    let (mut s, tap) = bhyve_prelude(vm, "FreeBSD VM");
    let mut disks = vec![];
    for (i, (path, ro)) in vm.drives.iter().enumerate() {
        if i == 0 {
            let copy = format!("/var/tmp/{vmname}.ffs");
            let _ = writeln!(
                s,
                "# The root disk: a copy, so every boot starts from the image as built."
            );
            let _ = writeln!(s, "cp {} {copy}", path.display());
            disks.push((copy, false));
        } else {
            disks.push((path.display().to_string(), *ro));
        }
    }
    let root = disks.first().map(|d| d.0.clone()).unwrap_or_default();
    let _ = writeln!(s, "bhyvectl --destroy --vm={vmname} 2>/dev/null || true");
    let env = if vm.cmdline.is_empty() {
        String::new()
    } else {
        format!(" -e {}", shell_quote(&format!("boot_flags={}", vm.cmdline)))
    };
    let _ = writeln!(
        s,
        "bhyveload -c /dev/nmdm-{vmname}.0A -m {}M -d {root} -e vfs.root.mountfrom=ufs:/dev/vtbd0{env} {vmname}",
        vm.memory
    );
    let (mut args, slot) = bhyve_devices(vm, tap.as_deref(), &disks);
    args.push(format!("-s {slot}:0,virtio-rnd"));
    write_bhyve_call(&mut s, args, &vmname);
    let _ = writeln!(
        s,
        "# console: cu -l /dev/nmdm-{vmname}.0B    stop: bhyvectl --force-poweroff --vm={vmname}"
    );
    let _ = writeln!(
        s,
        "wait; bhyvectl --destroy --vm={vmname}; rm -f /var/tmp/{vmname}.ffs"
    );
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    /// A VM with one of everything, for the golden files of every renderer.
    pub(crate) fn golden_vm() -> BackendVm {
        BackendVm {
            name: "web".into(),
            kernel: "/img/vmlinux".into(),
            initrd: Some("/img/initramfs.cpio.zst".into()),
            cmdline: "console=ttyS0 panic=-1 quiet kiln.vport=data".into(),
            cpus: 2,
            memory: 96,
            net: NetSpec::User {
                forwards: vec!["8080:80".parse().expect("p")],
            },
            drives: vec![("/data/web.img".into(), false)],
            shares: vec![("share0".into(), "/srv/www".into(), true)],
            vports: vec![(
                "data".into(),
                "/var/lib/kiln/vms/web/vport-data.sock".into(),
            )],
            guest: "linux".into(),
        }
    }

    fn freebsd_vm() -> BackendVm {
        BackendVm {
            name: "jump".into(),
            kernel: "/img/kernel".into(),
            initrd: None,
            cmdline: String::new(),
            cpus: 1,
            memory: 128,
            net: NetSpec::User {
                forwards: vec!["2222:22".parse().expect("p")],
            },
            drives: vec![
                ("/img/root.ffs".into(), false),
                ("/data/jump.img".into(), true),
            ],
            shares: vec![],
            vports: vec![],
            guest: "freebsd".into(),
        }
    }

    #[test]
    fn bhyve_freebsd_golden() {
        let out = bhyve(&freebsd_vm());
        golden("bhyve-freebsd.sh", &out);
        assert!(out.contains("cp /img/root.ffs /var/tmp/kiln-jump.ffs"));
        assert!(out.contains(
            "bhyveload -c /dev/nmdm-kiln-jump.0A -m 128M -d /var/tmp/kiln-jump.ffs -e vfs.root.mountfrom=ufs:/dev/vtbd0 kiln-jump"
        ));
        assert!(out.contains("-s 3:0,virtio-blk,/var/tmp/kiln-jump.ffs"));
        assert!(out.contains("-s 4:0,virtio-blk,/data/jump.img,ro"));
        assert!(
            !out.contains("grub-bhyve"),
            "FreeBSD loads through bhyveload"
        );
    }

    #[test]
    fn firecracker_keeps_a_netbsd_guests_arguments() {
        let mut vm = freebsd_vm();
        vm.guest = "netbsd".into();
        vm.cmdline = "console=com root=ld0a -z".into();
        let v: serde_json::Value = serde_json::from_str(&firecracker(&vm)).expect("json");
        assert_eq!(v["boot-source"]["boot_args"], "console=com root=ld0a -z");
    }

    /// Compare `got` with `tests/golden/FILE` (`KILN_UPDATE_GOLDEN=1` writes it).
    pub(crate) fn golden(file: &str, got: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(file);
        if std::env::var_os("KILN_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, got).expect("write golden");
        }
        let want =
            std::fs::read_to_string(&path).expect("golden file (KILN_UPDATE_GOLDEN=1 writes it)");
        assert_eq!(
            got,
            want,
            "{} differs (KILN_UPDATE_GOLDEN=1 to accept)",
            path.display()
        );
    }

    #[test]
    fn firecracker_golden() {
        let vm = golden_vm();
        let out = firecracker(&vm);
        golden("firecracker.json", &out);
        let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(v["machine-config"]["vcpu_count"], 2);
        assert_eq!(v["boot-source"]["initrd_path"], "/img/initramfs.cpio.zst");
        assert_eq!(firecracker_notes(&vm).len(), 3);
    }

    #[test]
    fn bhyve_golden() {
        let out = bhyve(&golden_vm());
        golden("bhyve.sh", &out);
        assert!(out.contains("-s 2:0,virtio-net,tap0"));
        assert!(out.contains("-l com1,/dev/nmdm-kiln-web.0A"));
        assert!(out.contains("grub-bhyve -m /tmp/kiln-web.map -r host -M 96M kiln-web"));
    }
}
