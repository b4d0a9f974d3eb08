//! manifest.json: what an image folder holds and how to boot it.

use kiln_recipe::Config;
use kiln_rootfs::FileEntry;
use serde::{Deserialize, Serialize};

/// The whole manifest of an image folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// The Kiln version that built it.
    pub kiln_version: String,
    /// The recipe's name.
    pub name: String,
    /// The recipe's description.
    #[serde(default)]
    pub description: String,
    /// Hash of every build input; equal fingerprints mean the image is up to date.
    pub fingerprint: String,
    /// The recipe folder it was built from.
    pub recipe: String,
    /// The kernel.
    pub kernel: KernelInfo,
    /// The root image: an initramfs, or an ext4 disk image (`format = "disk"`).
    pub initramfs: InitramfsInfo,
    /// How to boot it.
    pub boot: BootConfig,
    /// Kernel modules in the image, in load order.
    pub modules: Vec<String>,
    /// Every path in the root filesystem.
    pub files: Vec<FileEntry>,
    /// Debian packages the root was assembled from (`name version`), when the recipe has
    /// `packages`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// Dependencies left out, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_packages: Vec<String>,
    /// The `from` image the root starts from (`REF@DIGEST`, its files' source), if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub base: String,
    /// How the package (and `from` image) files were chosen: "all", "index FILE", or "all,
    /// traced".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selection: String,
    /// A PC's boot files (`format = "iso"`): the bzImage a boot loader or iPXE loads with the
    /// initramfs, and the hybrid ISO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pc: Option<PcInfo>,
}

/// What boots the image on a PC (QEMU's `pc` machine, bhyve, a BIOS machine): the same
/// initramfs with a kernel that has PCI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcInfo {
    /// The bzImage's file name in the image folder.
    pub kernel: String,
    /// Its size in bytes.
    pub kernel_size: u64,
    /// The whole kernel command line for a PC (serial console on ttyS0).
    pub cmdline: String,
    /// The hybrid ISO's file name in the image folder.
    pub iso: String,
    /// Its size in bytes.
    pub iso_size: u64,
    /// Its sha256 (lowercase hex).
    pub iso_sha256: String,
}

/// The kernel of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// File name in the image folder.
    pub file: String,
    /// How it boots: "pvh" (uncompressed ELF, PVH entry) or "bzimage".
    pub boot: String,
    /// Size of the file in the image folder.
    pub file_size: u64,
    /// Where it came from.
    pub description: String,
    /// Kernel release, when known.
    pub version: Option<String>,
    /// sha256 of the kernel as shipped.
    pub sha256: String,
    /// Size in bytes of the kernel as shipped (the compressed bzImage).
    pub size: u64,
    /// Kiln's kernel patches built into a tiny kernel (`kiln_kernel::tiny::PATCHES` names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<String>,
    /// The kernel's `CONFIG_HZ`, when known (tiny kernels): with the TSC rate it gives `lpj=`,
    /// which spares each extra vCPU its delay-loop calibration under TCG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hz: Option<u32>,
}

impl KernelInfo {
    /// Whether the kernel honours `page_reporting.page_reporting_order=` (Kiln's
    /// `page-reporting-order-param` patch), so free page reporting works in a small guest.
    pub fn takes_page_reporting_order(&self) -> bool {
        self.has_patch(kiln_kernel::tiny::PAGE_REPORTING_ORDER_PATCH)
    }

    /// Whether the kernel takes `lapic_timer_period=` (Kiln's `x86-lapic-timer-period` patch),
    /// so it can run its APIC timer without calibrating it.
    pub fn takes_lapic_timer_period(&self) -> bool {
        self.has_patch(kiln_kernel::tiny::LAPIC_TIMER_PERIOD_PATCH)
    }

    /// Whether the guest sizes its virtqueues down (Kiln's `virtio-mmio-max-ring` patch), so
    /// a virtio-console port's receive buffers cost half a MiB instead of four.
    pub fn has_small_rings(&self) -> bool {
        self.has_patch(kiln_kernel::tiny::SMALL_RINGS_PATCH)
    }

    /// Whether Kiln's kernel patch `name` (a `kiln_kernel::tiny::PATCHES` name) is built in.
    pub fn has_patch(&self, name: &str) -> bool {
        self.patches.iter().any(|p| p == name)
    }
}

/// The root image of an image folder (the name stays `initramfs` in manifest.json: most images
/// are one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitramfsInfo {
    /// File name in the image folder.
    pub file: String,
    /// "initramfs" (loaded with the kernel; also "iso", whose ISO is in [`PcInfo`]), "disk" or
    /// "qcow2" (ext4 on the first virtio-blk drive), "erofs" or "squashfs" (read-only, on the
    /// first virtio-blk drive, with a tmpfs overlay).
    #[serde(default = "initramfs_format")]
    pub format: String,
    /// zstd, xz, gzip or none (always none for a disk).
    pub compression: String,
    /// Compressed size (a disk: its size).
    pub size: u64,
    /// cpio size before compression (a disk: the bytes its files use).
    pub uncompressed_size: u64,
    /// Archive entries (a disk: files, folders and links).
    pub entries: usize,
    /// sha256 of the file.
    pub sha256: String,
}

fn initramfs_format() -> String {
    "initramfs".into()
}

impl InitramfsInfo {
    /// Whether the root is a filesystem image on the first drive rather than an initramfs.
    pub fn is_disk(&self) -> bool {
        matches!(
            self.format.as_str(),
            "disk" | "qcow2" | "erofs" | "squashfs"
        )
    }

    /// Whether the root is a read-only compressed filesystem (erofs or squashfs).
    pub fn is_read_only(&self) -> bool {
        matches!(self.format.as_str(), "erofs" | "squashfs")
    }

    /// The filesystem the kernel mounts as root (`rootfstype=`), for a root on a drive.
    pub fn root_fstype(&self) -> &'static str {
        match self.format.as_str() {
            "erofs" => "erofs",
            "squashfs" => "squashfs",
            _ => "ext4",
        }
    }

    /// QEMU's format of the root drive: `qcow2` or `raw`.
    pub fn drive_format(&self) -> &'static str {
        if self.format == "qcow2" {
            "qcow2"
        } else {
            "raw"
        }
    }
}

/// Boot settings carried from the recipe (overridable on `kiln run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootConfig {
    /// Extra kernel arguments.
    pub cmdline: String,
    /// vCPUs.
    pub cpus: u32,
    /// MiB.
    pub memory: u32,
    /// Default forwards, `[addr:]host:guest[/proto]`.
    pub ports: Vec<String>,
    /// Readiness check as in kiln.toml.
    pub ready: String,
    /// Seconds.
    pub ready_timeout: u32,
    /// "user" or "none".
    pub network: String,
    /// Kiln nets the VM joins by default (`[network] nets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<String>,
    /// Which kernel: "debian", "tiny" (built by `kiln kernel build`: no ACPI, no modules) or
    /// "file".
    #[serde(default)]
    pub kernel_kind: String,
    /// The guest OS: "linux" (kiln-init), "netbsd" or "freebsd" (their own init and rc).
    #[serde(default = "linux")]
    pub guest: String,
    /// The recipe asks for a template (`[template] at = "ready"`): `kiln build` and `kiln run`
    /// make one when the image has none.
    #[serde(default)]
    pub template: bool,
}

fn linux() -> String {
    "linux".into()
}

impl BootConfig {
    /// Whether the guest is a BSD (no kiln-init: no control port, readiness from its rc).
    pub fn is_bsd(&self) -> bool {
        self.guest != "linux"
    }

    /// Whether the image boots Kiln's tiny kernel (machine without ACPI, `reboot=t`).
    pub fn is_tiny_kernel(&self) -> bool {
        self.kernel_kind == "tiny"
    }

    /// The boot settings of a recipe.
    pub fn from_recipe(cfg: &Config) -> BootConfig {
        BootConfig {
            cmdline: cfg.cmdline.clone(),
            cpus: cfg.cpus,
            memory: cfg.memory,
            ports: cfg.ports.iter().map(|p| p.to_string()).collect(),
            ready: cfg.ready.as_conf(),
            ready_timeout: cfg.ready_timeout,
            network: cfg.network.mode.clone(),
            nets: cfg.network.nets.clone(),
            guest: cfg.guest.name().into(),
            template: cfg.template.is_some(),
            kernel_kind: match cfg.kernel {
                kiln_recipe::KernelChoice::Debian(_) => "debian",
                kiln_recipe::KernelChoice::Tiny => "tiny",
                kiln_recipe::KernelChoice::File(_) => "file",
            }
            .into(),
        }
    }
}

#[cfg(test)]
mod kernel_info_tests {
    use super::KernelInfo;

    #[test]
    fn small_rings_come_from_kilns_patch_only() {
        let mut k = KernelInfo {
            file: "vmlinux".into(),
            boot: "pvh".into(),
            file_size: 1,
            description: String::new(),
            version: None,
            sha256: String::new(),
            size: 1,
            patches: vec![],
            hz: None,
        };
        assert!(!k.has_small_rings());
        k.patches = vec!["x86-page-aligned-sections.patch".into()];
        assert!(!k.has_small_rings());
        k.patches.push(kiln_kernel::tiny::SMALL_RINGS_PATCH.into());
        assert!(k.has_small_rings());
        let json = serde_json::to_string(&KernelInfo {
            patches: vec![],
            ..k
        })
        .expect("json");
        assert!(
            !json.contains("patches"),
            "older manifests stay as they were: {json}"
        );
    }
}
