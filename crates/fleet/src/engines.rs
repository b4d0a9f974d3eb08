//! Hand-off to the engines people already run: `kiln export --to libvirt|nomad|kubevirt|flintlock`
//! renders one planned VM (the same [`BackendVm`] facts as `--backend firecracker|bhyve`) as a
//! libvirt domain, a Nomad job for the qemu driver, a KubeVirt VirtualMachineInstance booting
//! the kernel directly, or a Flintlock MicroVM spec. The libvirt domain is run for real by the
//! tests (a private libvirtd); the others are checked by golden tests.
//!
//! QEMU's microvm machine has no PCI bus, so devices libvirt would model as PCI (the NIC,
//! drives, shares) are passed to QEMU as they are (`<qemu:commandline>`), exactly as `kiln run`
//! gives them.

use crate::backends::BackendVm;
use crate::error::{FleetError, Result};
use crate::plan::Plan;
use kiln_vm::{Accel, NetSpec};
use std::fmt::Write as _;
use std::str::FromStr;

/// Where a VM is handed off to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// A libvirt domain (XML), for `virsh define`.
    Libvirt,
    /// A Nomad job (HCL) using the qemu task driver.
    Nomad,
    /// A KubeVirt VirtualMachineInstance (YAML) with `kernelBoot`.
    Kubevirt,
    /// A Flintlock `CreateMicroVMRequest` (JSON).
    Flintlock,
}

impl Engine {
    /// Every engine, as written on the command line.
    pub const ALL: [&'static str; 4] = ["libvirt", "nomad", "kubevirt", "flintlock"];
}

impl FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Engine, String> {
        match s {
            "libvirt" => Ok(Engine::Libvirt),
            "nomad" => Ok(Engine::Nomad),
            "kubevirt" => Ok(Engine::Kubevirt),
            "flintlock" => Ok(Engine::Flintlock),
            other => Err(format!(
                "unknown engine `{other}`: expected one of {}",
                Engine::ALL.join(", ")
            )),
        }
    }
}

/// An exported VM: the document, and notes on what the engine does differently.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The text to hand to the engine.
    pub text: String,
    /// One line each, for the user (stderr).
    pub notes: Vec<String>,
}

/// What the engines are given: the VM's facts, the accelerator it was planned for (libvirt and
/// Nomad run QEMU with it), and what it was made from.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// The backend-neutral facts (its `cmdline` is the KVM one).
    pub vm: BackendVm,
    /// The accelerator of the plan.
    pub accel: Accel,
    /// The kernel command line QEMU boots with under `accel`: the plan's own under TCG (it
    /// carries the TSC frequency that keeps TCG boots from hanging), the KVM one otherwise.
    pub cmdline: String,
    /// QEMU, as an absolute path (libvirt wants one).
    pub emulator: String,
    /// The recipe or image folder it was planned from.
    pub source: String,
}

impl Handoff {
    /// From a plan (as `kiln run --dry-run` makes one).
    pub fn from_plan(plan: &Plan) -> Handoff {
        let vm = BackendVm::from_plan(plan);
        let cmdline = match plan.spec.accel {
            Accel::Tcg => plan.spec.cmdline.clone(),
            Accel::Kvm => vm.cmdline.clone(),
        };
        Handoff {
            vm,
            accel: plan.spec.accel,
            cmdline,
            emulator: kiln_vm::find_in_path(&kiln_vm::qemu_binary())
                .map(|p| p.display().to_string())
                .unwrap_or_else(kiln_vm::qemu_binary),
            source: plan.config.image.clone().unwrap_or_default(),
        }
    }
}

/// Render `plan` for `engine`. A BSD guest is refused: its kernel is not Linux and the engines'
/// direct kernel boot paths are Linux ones.
pub fn export(engine: Engine, plan: &Plan) -> Result<Exported> {
    if plan.guest != "linux" {
        return Err(FleetError::BadInput(format!(
            "{}: a {} guest cannot be exported (the engines boot a Linux kernel directly); `kiln run --backend bhyve --dry-run` prints its bhyve commands",
            plan.name, plan.guest
        )));
    }
    if !plan.config.nets.is_empty() {
        return Err(FleetError::BadInput(format!(
            "{}: Kiln nets ({}) live on this host's switches and do not travel to {}; export it \
             without --net (or without the recipe's [network] nets: pass --net on another net \
             there)",
            plan.name,
            plan.config.nets.join(", "),
            format!("{engine:?}").to_lowercase()
        )));
    }
    let h = Handoff::from_plan(plan);
    Ok(match engine {
        Engine::Libvirt => libvirt(&h),
        Engine::Nomad => nomad(&h),
        Engine::Kubevirt => kubevirt(&h),
        Engine::Flintlock => flintlock(&h),
    })
}

/// XML text escaping (element text and attribute values).
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The QEMU arguments for the devices libvirt cannot model on microvm: the NIC with its
/// forwards, extra drives, 9p shares, virtio-console ports, the RNG.
fn device_args(vm: &BackendVm) -> Vec<String> {
    use kiln_vm::qemu::{net_args, nine_p_args, opt_escape};
    let mut a = net_args(&vm.net);
    for (i, (path, ro)) in vm.drives.iter().enumerate() {
        a.extend([
            "-drive".into(),
            format!(
                "file={},if=none,id=drive{i},format=raw{}",
                opt_escape(&path.to_string_lossy()),
                if *ro { ",readonly=on" } else { "" }
            ),
            "-device".into(),
            format!("virtio-blk-device,drive=drive{i}"),
        ]);
    }
    for (i, (tag, dir, ro)) in vm.shares.iter().enumerate() {
        a.extend(nine_p_args(i, tag, dir, *ro));
    }
    if !vm.vports.is_empty() {
        a.extend(["-device".into(), "virtio-serial-device".into()]);
        for (i, (name, sock)) in vm.vports.iter().enumerate() {
            a.extend([
                "-chardev".into(),
                format!(
                    "socket,id=vport{i},path={},server=on,wait=off",
                    opt_escape(&sock.to_string_lossy())
                ),
                "-device".into(),
                format!("virtserialport,chardev=vport{i},name={}", opt_escape(name)),
            ]);
        }
    }
    a.extend(["-device".into(), "virtio-rng-device".into()]);
    // As `kiln run` gives it: the idle guest's free pages go back to the host.
    a.extend(["-device".into(), kiln_vm::qemu::BALLOON_DEVICE.into()]);
    a
}

/// A libvirt domain: microvm, direct kernel boot, a serial console (`virsh console`), and the
/// devices as `kiln run` gives them.
pub fn libvirt(h: &Handoff) -> Exported {
    let vm = &h.vm;
    let kind = match h.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "qemu",
    };
    let mut x = String::new();
    let _ = writeln!(
        x,
        "<domain type='{kind}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
    );
    let _ = writeln!(x, "  <name>kiln-{}</name>", xml(&vm.name));
    let _ = writeln!(
        x,
        "  <description>Made by kiln export from {}</description>",
        xml(&h.source)
    );
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", vm.memory);
    let _ = writeln!(x, "  <vcpu>{}</vcpu>", vm.cpus);
    x.push_str("  <os>\n    <type arch='x86_64' machine='microvm'>hvm</type>\n");
    let _ = writeln!(
        x,
        "    <kernel>{}</kernel>",
        xml(&vm.kernel.to_string_lossy())
    );
    if let Some(i) = &vm.initrd {
        let _ = writeln!(x, "    <initrd>{}</initrd>", xml(&i.to_string_lossy()));
    }
    let _ = writeln!(x, "    <cmdline>{}</cmdline>", xml(&h.cmdline));
    x.push_str("  </os>\n");
    // The guest powers off when its service ends; a reboot request ends it too (as -no-reboot).
    x.push_str("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>\n");
    x.push_str("  <devices>\n");
    let _ = writeln!(x, "    <emulator>{}</emulator>", xml(&h.emulator));
    x.push_str("    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n");
    x.push_str(
        "    <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>\n",
    );
    // No PCI on microvm: nothing libvirt adds by default that would need it.
    x.push_str("    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n");
    x.push_str("  </devices>\n");
    x.push_str("  <qemu:commandline>\n");
    for a in device_args(vm) {
        let _ = writeln!(x, "    <qemu:arg value='{}'/>", xml(&a));
    }
    x.push_str("  </qemu:commandline>\n</domain>\n");
    let mut notes = vec![
        "`virsh shutdown` needs ACPI, which microvm does not have here: stop the domain with `virsh destroy` (the guest's own poweroff also ends it)".to_string(),
    ];
    if matches!(vm.net, NetSpec::User { .. }) {
        notes.push(
            "the NIC and its port forwards are passed to QEMU as they are (<qemu:commandline>): libvirt marks the domain `custom-argv`".into(),
        );
    }
    Exported { text: x, notes }
}

/// HCL string quoting (as JSON's).
fn hcl(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A Nomad job: the qemu task driver boots the kernel directly; the image folder's files are
/// fetched as artifacts from where the user publishes them.
pub fn nomad(h: &Handoff) -> Exported {
    let vm = &h.vm;
    let name = format!("kiln-{}", vm.name);
    let kernel = file_name(&vm.kernel);
    let mut x = String::new();
    let _ = writeln!(x, "job {} {{", hcl(&name));
    x.push_str("  datacenters = [\"dc1\"]\n  type        = \"service\"\n\n");
    let _ = writeln!(x, "  group {} {{", hcl(&vm.name));
    let tcp: Vec<_> = forwards(vm)
        .into_iter()
        .filter(|f| f.protocol == kiln_recipe::Protocol::Tcp)
        .collect();
    if !tcp.is_empty() {
        x.push_str("    network {\n");
        for f in &tcp {
            let _ = writeln!(
                x,
                "      port \"p{}\" {{\n        static = {}\n        to     = {}\n      }}",
                f.guest_port, f.host_port, f.guest_port
            );
        }
        x.push_str("    }\n\n");
    }
    let _ = writeln!(x, "    task {} {{", hcl(&vm.name));
    x.push_str("      driver = \"qemu\"\n\n");
    x.push_str("      # Publish the image folder (e.g. on a web server) and point these at it.\n");
    let _ = writeln!(
        x,
        "      artifact {{\n        source      = {}\n        destination = \"local/\"\n      }}",
        hcl(&format!("https://artifacts.example/{}/{kernel}", vm.name))
    );
    if let Some(i) = &vm.initrd {
        let _ = writeln!(
            x,
            "      artifact {{\n        source      = {}\n        destination = \"local/\"\n      }}",
            hcl(&format!(
                "https://artifacts.example/{}/{}",
                vm.name,
                file_name(i)
            ))
        );
    }
    x.push_str("\n      config {\n");
    // The driver needs a disk image; a root on the initramfs leaves it unused.
    x.push_str("        image_path   = \"local/empty.img\"\n");
    let _ = writeln!(
        x,
        "        accelerator  = {}",
        hcl(match h.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    );
    x.push_str("        machine_type = \"microvm\"\n");
    let mut args = vec![
        "-kernel".to_string(),
        format!("local/{kernel}"),
        "-append".into(),
        h.cmdline.clone(),
        "-smp".into(),
        vm.cpus.to_string(),
    ];
    if let Some(i) = &vm.initrd {
        args.push("-initrd".into());
        args.push(format!("local/{}", file_name(i)));
    }
    args.extend(device_args(vm));
    x.push_str("        args = [\n");
    for a in &args {
        let _ = writeln!(x, "          {},", hcl(a));
    }
    x.push_str("        ]\n      }\n\n");
    let _ = writeln!(
        x,
        "      resources {{\n        cpu    = {}\n        memory = {}\n      }}",
        500 * vm.cpus,
        vm.memory + 64
    );
    x.push_str("    }\n  }\n}\n");
    let notes = vec![
        "Nomad's qemu driver always attaches `image_path` as a drive: give it any small file (`truncate -s 1M empty.img`); the root is the initramfs".to_string(),
        "the artifact URLs are placeholders: publish the image folder's kernel and initramfs and put their URLs in".into(),
        "the published ports are QEMU's own forwards (in `args`); the group's `network` block reserves them on the node".into(),
    ];
    Exported { text: x, notes }
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn forwards(vm: &BackendVm) -> Vec<kiln_recipe::PortForward> {
    match &vm.net {
        NetSpec::User { forwards } => forwards.clone(),
        _ => vec![],
    }
}

/// A KubeVirt VirtualMachineInstance booting the kernel and initramfs from a container image
/// (`kernelBoot`), with the published TCP ports on its pod network.
pub fn kubevirt(h: &Handoff) -> Exported {
    let vm = &h.vm;
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let kernel = file_name(&vm.kernel);
    let image = format!("registry.example/kiln-{}-boot:latest", vm.name);
    let mut x = String::new();
    x.push_str("apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n");
    let _ = writeln!(x, "  name: {}", q(&format!("kiln-{}", vm.name)));
    x.push_str("  labels:\n    app.kubernetes.io/managed-by: kiln\n");
    x.push_str("spec:\n  domain:\n");
    let _ = writeln!(x, "    cpu:\n      cores: {}", vm.cpus);
    let _ = writeln!(x, "    memory:\n      guest: {}Mi", vm.memory);
    let _ = writeln!(
        x,
        "    resources:\n      requests:\n        memory: {}Mi",
        vm.memory
    );
    x.push_str("    firmware:\n      kernelBoot:\n        container:\n");
    let _ = writeln!(x, "          image: {}", q(&image));
    let _ = writeln!(x, "          kernelPath: {}", q(&format!("/boot/{kernel}")));
    if let Some(i) = &vm.initrd {
        let _ = writeln!(
            x,
            "          initrdPath: {}",
            q(&format!("/boot/{}", file_name(i)))
        );
    }
    x.push_str("          imagePullPolicy: IfNotPresent\n");
    // KubeVirt runs its VMs with KVM: the KVM command line.
    let _ = writeln!(x, "        kernelArgs: {}", q(&vm.cmdline));
    x.push_str(
        "    devices:\n      interfaces:\n        - name: default\n          masquerade: {}\n",
    );
    let tcp: Vec<_> = forwards(vm)
        .into_iter()
        .filter(|f| f.protocol == kiln_recipe::Protocol::Tcp)
        .collect();
    if !tcp.is_empty() {
        x.push_str("          ports:\n");
        for f in &tcp {
            let _ = writeln!(x, "            - port: {}", f.guest_port);
        }
    }
    x.push_str("  networks:\n    - name: default\n      pod: {}\n");
    let mut notes = vec![format!(
        "kernelBoot reads the kernel and initramfs from a container image: build {image} FROM scratch with the image folder's {kernel}{} copied into /boot/",
        vm.initrd
            .as_ref()
            .map(|i| format!(" and {}", file_name(i)))
            .unwrap_or_default()
    )];
    if !vm.drives.is_empty() || !vm.shares.is_empty() || !vm.vports.is_empty() {
        notes.push("drives, shares and virtio-console ports are not carried over: give them as KubeVirt volumes".into());
    }
    Exported { text: x, notes }
}

/// A Flintlock `CreateMicroVMRequest` (its gRPC gateway's JSON): kernel and initramfs from an
/// OCI image, the published TCP ports noted (Flintlock attaches macvtap/tap interfaces).
pub fn flintlock(h: &Handoff) -> Exported {
    let vm = &h.vm;
    let image = format!("registry.example/kiln-{}-boot:latest", vm.name);
    let kernel = file_name(&vm.kernel);
    let mut microvm = serde_json::json!({
        "id": vm.name,
        "namespace": "kiln",
        "labels": { "managed-by": "kiln" },
        "vcpu": vm.cpus,
        "memory_in_mb": vm.memory,
        "kernel": {
            "image": image,
            "filename": format!("boot/{kernel}"),
            "add_network_config": true,
            // Flintlock's providers (Firecracker, Cloud Hypervisor) run with KVM.
            "cmdline": cmdline_map(&vm.cmdline),
        },
        "interfaces": [ { "device_id": "eth0", "type": "MACVTAP" } ],
    });
    if let Some(i) = &vm.initrd {
        microvm["initrd"] = serde_json::json!({
            "image": image,
            "filename": format!("boot/{}", file_name(i)),
        });
    }
    let doc = serde_json::json!({ "microvm": microvm });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    let mut notes = vec![format!(
        "Flintlock reads the kernel and initramfs from an OCI image: build {image} with them under /boot/"
    )];
    if !forwards(vm).is_empty() {
        notes.push("Flintlock gives the guest a macvtap/tap interface on the host's network: its ports are reached at the guest's own address, not forwarded".into());
    }
    Exported { text, notes }
}

/// `a=b c d=e` as Flintlock's cmdline map (a flag without `=` maps to "").
fn cmdline_map(line: &str) -> serde_json::Map<String, serde_json::Value> {
    line.split_whitespace()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), serde_json::Value::String(v.to_string())),
            None => (w.to_string(), serde_json::Value::String(String::new())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::tests::{golden, golden_vm};

    fn handoff(accel: Accel) -> Handoff {
        let mut vm = golden_vm();
        if let NetSpec::User { forwards } = &mut vm.net {
            forwards.push("5353:53/udp".parse().expect("p"));
        }
        Handoff {
            cmdline: match accel {
                Accel::Kvm => vm.cmdline.clone(),
                Accel::Tcg => format!("{} tsc_early_khz=2596000", vm.cmdline),
            },
            vm,
            accel,
            emulator: "/usr/bin/qemu-system-x86_64".into(),
            source: "/img".into(),
        }
    }

    #[test]
    fn libvirt_golden() {
        let out = libvirt(&handoff(Accel::Kvm));
        golden("libvirt.xml", &out.text);
        let x = &out.text;
        assert!(x.starts_with("<domain type='kvm'"));
        assert!(x.contains("<type arch='x86_64' machine='microvm'>hvm</type>"));
        assert!(x.contains("<memory unit='MiB'>96</memory>") && x.contains("<vcpu>2</vcpu>"));
        assert!(x.contains("<qemu:arg value='user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53'/>"));
        assert!(x.contains("virtio-blk-device,drive=drive0") && x.contains("mount_tag=share0"));
        assert!(x.contains("<qemu:arg value='virtio-balloon-device,free-page-reporting=on'/>"));
        assert!(x.contains("<emulator>/usr/bin/qemu-system-x86_64</emulator>"));
        // Under TCG: domain type qemu and the command line with the TSC frequency.
        let tcg = libvirt(&handoff(Accel::Tcg)).text;
        assert!(tcg.starts_with("<domain type='qemu'"));
        assert!(tcg.contains("tsc_early_khz=2596000</cmdline>"));
    }

    #[test]
    fn libvirt_escapes_what_xml_would_misread() {
        let mut h = handoff(Accel::Kvm);
        h.vm.name = "a&b".into();
        h.vm.kernel = "/img/it's <here>".into();
        h.cmdline = "x=\"1\"".into();
        let x = libvirt(&h).text;
        assert!(x.contains("<name>kiln-a&amp;b</name>"), "{x}");
        assert!(
            x.contains("<kernel>/img/it&apos;s &lt;here&gt;</kernel>"),
            "{x}"
        );
        assert!(x.contains("<cmdline>x=&quot;1&quot;</cmdline>"), "{x}");
    }

    #[test]
    fn nomad_golden() {
        let out = nomad(&handoff(Accel::Kvm));
        golden("nomad.hcl", &out.text);
        let x = &out.text;
        assert!(x.contains("job \"kiln-web\""));
        assert!(x.contains("driver = \"qemu\"") && x.contains("machine_type = \"microvm\""));
        assert!(
            x.contains("static = 8080") && !x.contains("static = 5353"),
            "TCP ports only"
        );
        assert!(x.contains("\"-initrd\",\n          \"local/initramfs.cpio.zst\","));
        // Every `{` is closed.
        assert_eq!(x.matches('{').count(), x.matches('}').count());
    }

    #[test]
    fn kubevirt_golden() {
        let out = kubevirt(&handoff(Accel::Tcg));
        golden("kubevirt.yaml", &out.text);
        let x = &out.text;
        assert!(x.contains("kind: VirtualMachineInstance"));
        assert!(x.contains("kernelPath: \"/boot/vmlinux\""));
        assert!(x.contains("initrdPath: \"/boot/initramfs.cpio.zst\""));
        // KubeVirt runs KVM: the KVM command line even from a TCG plan.
        assert!(x.contains("kernelArgs: \"console=ttyS0 panic=-1 quiet kiln.vport=data\""));
        assert!(x.contains("- port: 80") && !x.contains("port: 53"));
        assert!(out.notes.iter().any(|n| n.contains("KubeVirt volumes")));
        // No tabs (YAML refuses them for indentation).
        assert!(!x.contains('\t'));
    }

    #[test]
    fn flintlock_golden() {
        let out = flintlock(&handoff(Accel::Kvm));
        golden("flintlock.json", &out.text);
        let v: serde_json::Value = serde_json::from_str(&out.text).expect("JSON");
        let m = &v["microvm"];
        assert_eq!(m["vcpu"], 2);
        assert_eq!(m["memory_in_mb"], 96);
        assert_eq!(m["kernel"]["filename"], "boot/vmlinux");
        assert_eq!(m["kernel"]["cmdline"]["console"], "ttyS0");
        assert_eq!(m["kernel"]["cmdline"]["quiet"], "");
        assert_eq!(m["initrd"]["filename"], "boot/initramfs.cpio.zst");
    }

    #[test]
    fn engines_parse_and_unknown_ones_are_named() {
        for e in Engine::ALL {
            assert!(e.parse::<Engine>().is_ok(), "{e}");
        }
        let err = "vmware".parse::<Engine>().expect_err("refused");
        assert!(err.contains("vmware") && err.contains("libvirt, nomad, kubevirt, flintlock"));
    }
}
