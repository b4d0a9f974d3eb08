//! The typed contents of `kiln.toml`: every key, its default, and its validation.
//!
//! Unknown keys are refused (`deny_unknown_fields`) so a typo never goes unnoticed; values that
//! need checking beyond their type carry their span so errors can name the line.

use crate::port::PortForward;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::ops::Range;
use toml::Spanned;

/// The kernel's command-line buffer on x86-64 (`COMMAND_LINE_SIZE`), in bytes.
pub const KERNEL_CMDLINE_MAX: usize = 2048;
/// The part of the kernel command line kept for Kiln's own arguments (console, panic and timer
/// settings, the root disk, `kiln.*` settings for shares, ports and the network): a recipe's
/// `cmdline` may use the rest.
pub const KILN_CMDLINE_RESERVE: usize = 512;
/// The longest `[env]` value, in bytes.
pub const ENV_VALUE_MAX: usize = 32 * 1024;
/// The most bytes the whole `[env]` may take (`NAME=value` and a terminator for each).
pub const ENV_TOTAL_MAX: usize = 64 * 1024;
/// `hook_timeout` when kiln.toml does not say (seconds).
pub const DEFAULT_HOOK_TIMEOUT: u32 = 300;
/// The largest `hook_timeout` (seconds): a day.
pub const MAX_HOOK_TIMEOUT: u32 = 86_400;

/// The folders kiln-init mounts a fresh filesystem on at boot (its `MOUNTS`, crates/init), with
/// that filesystem: whatever an image has below them is hidden in the guest.
pub const GUEST_MOUNTS: &[(&str, &str)] = &[
    ("/dev", "devtmpfs"),
    ("/proc", "proc"),
    ("/sys", "sysfs"),
    ("/tmp", "tmpfs"),
    ("/run", "tmpfs"),
];

/// The mount (folder, filesystem) of [`GUEST_MOUNTS`] that hides guest path `guest` from the
/// guest, if any. Lexical (`.` and `..` resolved), with Kiln's `/var/run -> ../run` link.
pub fn hidden_by_mount(guest: &str) -> Option<(&'static str, &'static str)> {
    let mut comps: Vec<&str> = Vec::new();
    for c in guest.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                comps.pop();
            }
            c => comps.push(c),
        }
    }
    if comps.len() >= 2 && comps[0] == "var" && comps[1] == "run" {
        comps.remove(0);
    }
    if comps.len() < 2 {
        return None;
    }
    GUEST_MOUNTS
        .iter()
        .find(|(m, _)| m[1..] == *comps[0])
        .copied()
}

/// Why a file at guest path `guest` under `mount` (a [`GUEST_MOUNTS`] entry) is refused.
pub fn hidden_message(guest: &str, (mount, fs): (&str, &str)) -> String {
    format!(
        "{guest} would be hidden in the guest: kiln-init mounts a fresh {fs} on {mount} at boot, \
         over whatever the image has there; install it elsewhere (for example under /etc or \
         /usr/share) and copy it into {mount} from etc/rc if the service needs it there"
    )
}

/// The whole of kiln.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The service name: lowercase letters, digits, `-` and `_`, at most 63 characters.
    #[serde(deserialize_with = "de_name")]
    pub name: String,
    /// Free text shown by `kiln ps` and the web console.
    #[serde(default)]
    pub description: String,
    /// An OCI image the root starts from (`localhost:5000/app:1`, `oci:DIR[:TAG]`,
    /// `docker-archive:FILE`): its files first, everything the recipe adds on top.
    #[serde(default)]
    pub from: Option<Spanned<String>>,
    /// Who etc/rc runs as: a user of the root's /etc/passwd, `USER:GROUP`, or `UID[:GID]`
    /// (default root).
    #[serde(default)]
    pub user: Option<Spanned<String>>,
    /// The guest's operating system: Linux (default: Kiln's init, busybox, the host's
    /// binaries) or a BSD made from sets and a kernel the user supplies.
    #[serde(default)]
    pub guest: Guest,
    /// BSD guests: the sets (tarballs relative to the recipe: `.tgz`, `.txz`, `.tar`) unpacked
    /// in order to make the root, e.g. `["sets/base.tgz", "sets/etc.tgz"]`.
    #[serde(default)]
    pub sets: Vec<Spanned<String>>,
    /// Which kernel boots the VM.
    #[serde(default)]
    pub kernel: KernelChoice,
    /// Extra kernel command-line arguments, appended after Kiln's own.
    #[serde(default)]
    pub cmdline: String,
    /// Kernel config fragments (paths relative to the recipe) added to the tiny kernel's, e.g.
    /// `["kernel/ufs.config"]`; only with `kernel = "tiny"`.
    #[serde(default)]
    pub kernel_fragments: Vec<Spanned<String>>,
    /// Virtual CPUs (1–64).
    #[serde(default = "default_cpus", deserialize_with = "de_cpus")]
    pub cpus: u32,
    /// Guest memory in MiB (16–65536).
    #[serde(default = "default_memory", deserialize_with = "de_memory")]
    pub memory: u32,
    /// Port forwards used by `kiln run` when no `-p` is given.
    #[serde(default)]
    pub ports: Vec<PortForward>,
    /// When the service counts as ready: `"tcp:PORT"`, `"exit"` or `"none"`.
    #[serde(default)]
    pub ready: Ready,
    /// Seconds the host waits for readiness before stopping the VM and reporting failure.
    #[serde(default = "default_ready_timeout", deserialize_with = "de_timeout")]
    pub ready_timeout: u32,
    /// Seconds each `postinst` hook may run before it is killed and the build fails (1–86400).
    #[serde(default = "default_hook_timeout", deserialize_with = "de_hook_timeout")]
    pub hook_timeout: u32,
    /// How the image is packed.
    #[serde(default)]
    pub image: ImageFormat,
    /// `[template] at = "ready"`: keep a template of the image, saved at its ready point, so
    /// `kiln run` starts clones of it (docs/templates.md).
    #[serde(default)]
    pub template: Option<Template>,
    /// What goes in the root filesystem.
    #[serde(default)]
    pub root: Root,
    /// Guest network settings.
    #[serde(default)]
    pub network: Network,
    /// Environment variables given to etc/rc.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Debian packages whose files (with their dependencies') are available to the root
    /// assembly; maintainer scripts are not run.
    #[serde(default)]
    pub packages: Vec<Spanned<String>>,
    /// The index of files to keep from the packages (one per line, globs, `#` comments),
    /// relative to the recipe folder. Without it every file of the packages is kept.
    #[serde(default)]
    pub index: Option<Spanned<String>>,
}

impl Config {
    /// What a BSD guest cannot have, and what it must.
    fn validate_guest(&self, text: &str) -> Result<(), (Option<Range<usize>>, String)> {
        let g = self.guest.name();
        if !self.guest.is_bsd() {
            if let Some(s) = self.sets.first() {
                return Err((
                    Some(s.span()),
                    "sets: only a BSD guest is made from sets; set guest = \"netbsd\" or \"freebsd\"".into(),
                ));
            }
            return Ok(());
        }
        if self.sets.is_empty() {
            return Err((
                find_key(text, "guest"),
                format!("guest = \"{g}\": list the sets its root is made of, e.g. sets = [\"sets/base.tgz\", \"sets/etc.tgz\"]"),
            ));
        }
        if !matches!(self.kernel, KernelChoice::File(_)) {
            return Err((
                find_key(text, "kernel").or_else(|| find_key(text, "guest")),
                format!("guest = \"{g}\" boots a {g} kernel you supply: kernel = \"path/to/the/kernel\" (for NetBSD a PVH-capable one such as netbsd-SMOL)"),
            ));
        }
        let linux_only = [
            ("packages", !self.packages.is_empty()),
            ("index", self.index.is_some()),
            ("binaries", !self.root.binaries.is_empty()),
            ("modules", !self.root.modules.is_empty()),
            (
                "busybox",
                self.root.busybox && find_key(text, "busybox").is_some(),
            ),
            ("applets", self.root.applets.is_some()),
            ("dropbear", self.root.dropbear),
        ];
        if let Some((key, _)) = linux_only.iter().find(|(_, set)| *set) {
            return Err((
                find_key(text, key),
                format!("{key}: a {g} guest has no Linux userland; its programs come from the sets (remove {key})"),
            ));
        }
        if self.image.format != "disk" && find_key(text, "format").is_some() {
            return Err((
                find_key(text, "format"),
                format!("image.format: a {g} guest's root is an FFS disk image; set format = \"disk\" or leave it out"),
            ));
        }
        Ok(())
    }

    /// The package names of `packages`, in file order.
    pub fn package_names(&self) -> Vec<String> {
        self.packages.iter().map(|p| p.get_ref().clone()).collect()
    }
}

/// `guest = "linux" | "netbsd" | "freebsd"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Guest {
    /// Linux with kiln-init as PID 1.
    #[default]
    Linux,
    /// NetBSD from sets: its own init runs /etc/rc; booted on QEMU microvm through PVH.
    Netbsd,
    /// FreeBSD from sets: its own init and rc; booted by bhyve (`--backend bhyve`).
    Freebsd,
}

impl Guest {
    /// `linux`, `netbsd` or `freebsd`.
    pub fn name(self) -> &'static str {
        match self {
            Guest::Linux => "linux",
            Guest::Netbsd => "netbsd",
            Guest::Freebsd => "freebsd",
        }
    }

    /// NetBSD or FreeBSD.
    pub fn is_bsd(self) -> bool {
        self != Guest::Linux
    }
}

/// `kernel = "debian" | "debian:PACKAGE" | "tiny" | "PATH"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelChoice {
    /// A Debian kernel package (`linux-image-cloud-amd64` for `"debian"`).
    Debian(String),
    /// Kiln's tiny kernel (the default), built from Debian's linux-source with Kiln's
    /// fragments (plus the recipe's `kernel_fragments`) by `kiln kernel build`, cached.
    Tiny,
    /// A kernel file, relative to the recipe folder or absolute (span kept for errors).
    File(Spanned<String>),
}

/// The Debian kernel package `kernel = "debian"` means.
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// The tiny kernel is the default: it boots httpd in 0.39x the time of Debian's kernel with a
/// busybox initramfs, in 32 MiB, from a 1.8 MB bzImage (BENCHMARKS.md).
impl Default for KernelChoice {
    fn default() -> Self {
        KernelChoice::Tiny
    }
}

impl KernelChoice {
    /// Parse a command-line override (`kiln build --kernel tiny`), with the same rules as the
    /// `kernel` key.
    pub fn parse_override(s: &str) -> Result<KernelChoice, String> {
        #[derive(Deserialize)]
        struct One {
            kernel: KernelChoice,
        }
        let doc = format!("kernel = {}", toml_string(s));
        toml::from_str::<One>(&doc)
            .map(|o| o.kernel)
            .map_err(|e| e.message().to_string())
    }
}

/// `s` as a TOML basic string, written by hand: toml's own string writer overflows a counter
/// on long runs of quotes (found by `make fuzz`; a panic in debug builds).
pub fn toml_string(s: &str) -> String {
    let mut quoted = String::with_capacity(s.len() + 2);
    quoted.push('"');
    for c in s.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

impl<'de> Deserialize<'de> for KernelChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Spanned<String> = Spanned::deserialize(d)?;
        let v = s.get_ref().trim();
        if v == "debian" {
            return Ok(KernelChoice::Debian(DEFAULT_KERNEL_PACKAGE.into()));
        }
        if v == "tiny" {
            return Ok(KernelChoice::Tiny);
        }
        if let Some(pkg) = v.strip_prefix("debian:") {
            if pkg.is_empty()
                || !pkg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-+.".contains(c))
            {
                return Err(serde::de::Error::custom(format!(
                    "kernel: `{v}` is not a Debian package name (expected debian:linux-image-…)"
                )));
            }
            return Ok(KernelChoice::Debian(pkg.into()));
        }
        if v.is_empty() {
            return Err(serde::de::Error::custom(
                "kernel: empty; use \"debian\" or the path of a bzImage/vmlinux",
            ));
        }
        Ok(KernelChoice::File(s))
    }
}

/// The readiness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ready {
    /// A TCP port listening inside the guest.
    Tcp(u16),
    /// etc/rc exiting with status 0.
    Exit,
    /// Ready as soon as etc/rc starts.
    #[default]
    None,
}

impl Ready {
    /// The form written to init.conf and kiln.toml.
    pub fn as_conf(&self) -> String {
        match self {
            Ready::Tcp(p) => format!("tcp:{p}"),
            Ready::Exit => "exit".into(),
            Ready::None => "none".into(),
        }
    }
}

impl std::str::FromStr for Ready {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exit" => Ok(Ready::Exit),
            "none" => Ok(Ready::None),
            _ => {
                let port = s.strip_prefix("tcp:").ok_or_else(|| {
                    format!("ready: `{s}` is not one of \"tcp:PORT\", \"exit\", \"none\"")
                })?;
                match port.parse::<u16>() {
                    Ok(p) if p > 0 => Ok(Ready::Tcp(p)),
                    _ => Err(format!("ready: `{port}` is not a TCP port (1–65535)")),
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for Ready {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[template]`: when the image's template is saved.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// The point it is saved at: `"ready"` (the only one: once the readiness check passed).
    #[serde(deserialize_with = "de_template_at")]
    pub at: String,
}

fn de_template_at<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s == "ready" {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "at = \"{s}\": a template is saved when the guest is ready: use at = \"ready\""
        )))
    }
}

/// The root formats `[image] format` takes.
pub const FORMATS: &[&str] = &["initramfs", "disk", "erofs", "squashfs", "qcow2", "iso"];

/// `[image]`: how the root filesystem is packed.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageFormat {
    /// `"initramfs"` (default: the root unpacked into RAM), `"disk"` (an ext4 disk image,
    /// the root on virtio-blk, for roots too big to keep in RAM), `"erofs"` or `"squashfs"`
    /// (a compressed read-only root on virtio-blk that many VMs share, writes going to a tmpfs
    /// overlay), `"qcow2"` (the ext4 disk as qcow2) or `"iso"` (the initramfs, plus a hybrid
    /// ISO that boots it on a PC).
    #[serde(default = "default_format", deserialize_with = "de_format")]
    pub format: String,
    /// `zstd` (default), `xz` (CRC32, as the kernel needs), `gzip` or `none`; initramfs only.
    #[serde(default)]
    pub compression: Compression,
    /// Size of the disk image in MiB (`format = "disk"`); default: the root plus a quarter
    /// and 8 MiB of room.
    #[serde(default, deserialize_with = "de_size_mib")]
    pub size_mib: Option<u32>,
}

impl ImageFormat {
    /// The root is a filesystem image on the first virtio-blk drive (no initramfs).
    pub fn root_on_drive(&self) -> bool {
        matches!(
            self.format.as_str(),
            "disk" | "erofs" | "squashfs" | "qcow2"
        )
    }

    /// The root is a read-only compressed filesystem the kernel mounts itself.
    pub fn read_only_root(&self) -> bool {
        matches!(self.format.as_str(), "erofs" | "squashfs")
    }

    /// The image has a size (`size_mib`): an ext4 disk, raw or qcow2.
    pub fn sized(&self) -> bool {
        matches!(self.format.as_str(), "disk" | "qcow2")
    }
}

impl Default for ImageFormat {
    fn default() -> Self {
        ImageFormat {
            format: default_format(),
            compression: Compression::default(),
            size_mib: None,
        }
    }
}

/// Initramfs compression.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd: fast to decompress, the default.
    #[default]
    Zstd,
    /// xz with CRC32 check: smallest.
    Xz,
    /// gzip.
    Gzip,
    /// Uncompressed.
    None,
}

impl Compression {
    /// The name used in kiln.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        }
    }
}

/// `[root]`: what goes in the root filesystem besides etc/rc, files/ and common/.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Root {
    /// Install busybox (from Debian's busybox-static) and its applet links.
    #[serde(default = "yes")]
    pub busybox: bool,
    /// Build Kiln's own small busybox (static, musl) with its core applets and these
    /// (applet names, or `CONFIG_*` options) instead of installing Debian's with all 269.
    #[serde(default)]
    pub applets: Option<Vec<Spanned<String>>>,
    /// Install Kiln's own dropbear (static, musl, key login only): `/usr/sbin/dropbear`,
    /// `/usr/bin/dropbearkey` and `/usr/bin/scp`, without Debian's shared crypto libraries.
    #[serde(default)]
    pub dropbear: bool,
    /// Host executables copied with their shared-library closure.
    #[serde(default)]
    pub binaries: Vec<Spanned<String>>,
    /// Host files copied as they are: `"/etc/foo"` or `"/host/path:/guest/path"`.
    #[serde(default)]
    pub files: Vec<Spanned<String>>,
    /// Kernel modules to load besides the virtio set (Debian's kernel; the tiny kernel has
    /// everything built in).
    #[serde(default)]
    pub modules: Vec<Spanned<String>>,
}

impl Default for Root {
    fn default() -> Self {
        Root {
            busybox: true,
            applets: None,
            dropbear: false,
            binaries: vec![],
            files: vec![],
            modules: vec![],
        }
    }
}

/// Check a VM or net name: 1–63 of a-z 0-9 - _, starting with a letter or digit.
pub fn check_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name `{n}`: use 1–63 of a-z 0-9 - _, starting with a letter or digit"
        ))
    }
}

/// `[network]`: the guest side of the network.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// `"user"` (QEMU user networking, the default) or `"none"`.
    #[serde(default = "default_net_mode", deserialize_with = "de_net_mode")]
    pub mode: String,
    /// Guest address with prefix.
    #[serde(default = "default_address")]
    pub address: String,
    /// Default gateway.
    #[serde(default = "default_gateway")]
    pub gateway: String,
    /// DNS server.
    #[serde(default = "default_dns")]
    pub dns: String,
    /// Kiln nets the VM joins unless `kiln run --net` says otherwise (`kiln net create` them).
    #[serde(default)]
    pub nets: Vec<String>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            mode: default_net_mode(),
            address: default_address(),
            gateway: default_gateway(),
            dns: default_dns(),
            nets: Vec::new(),
        }
    }
}

impl Config {
    /// Parse kiln.toml text; on error, the span (if known) and the message.
    pub fn parse(text: &str) -> Result<Config, (Option<Range<usize>>, String)> {
        if text.starts_with('\u{feff}') {
            return Err((
                Some(0..3),
                "kiln.toml starts with a UTF-8 byte-order mark (bytes EF BB BF); remove the \
                 byte-order mark (save the file as UTF-8 without BOM)"
                    .into(),
            ));
        }
        let mut cfg: Config =
            toml::from_str(text).map_err(|e| (e.span(), e.message().to_string()))?;
        cfg.validate(text)?;
        if cfg.guest.is_bsd() {
            cfg.image.format = "disk".into();
        }
        Ok(cfg)
    }

    fn validate(&self, text: &str) -> Result<(), (Option<Range<usize>>, String)> {
        self.validate_guest(text)?;
        if self.root.applets.is_some() && !self.root.busybox {
            return Err((
                find_key(text, "applets"),
                "root.applets lists the applets of Kiln's own busybox, but busybox = false installs none: remove one of the two".into(),
            ));
        }
        // A BSD guest's root is always a disk (docs/bsd.md: `[image] size_mib` alone).
        if self.image.size_mib.is_some() && !self.image.sized() && !self.guest.is_bsd() {
            return Err((
                find_key(text, "size_mib"),
                format!(
                    "image.size_mib: only a disk image has a size (format = \"{}\" is as big as its files); remove size_mib, or set format = \"disk\" or \"qcow2\"",
                    self.image.format
                ),
            ));
        }
        if let (true, KernelChoice::Debian(pkg)) = (self.image.read_only_root(), &self.kernel) {
            return Err((
                find_key(text, "format"),
                format!(
                    "image.format: Debian's kernel ({pkg}) has {} only as a module, and a root on {} is mounted before any module can load; use kernel = \"tiny\" (Kiln builds {} into it) or format = \"initramfs\"",
                    self.image.format, self.image.format, self.image.format
                ),
            ));
        }
        if self.image.root_on_drive() && find_key(text, "compression").is_some() {
            return Err((
                find_key(text, "compression"),
                format!(
                    "image.compression: format = \"{}\" is not an initramfs; remove compression (Kiln packs erofs with lz4hc, squashfs with zstd, qcow2 with zlib)",
                    self.image.format
                ),
            ));
        }
        if self.network.mode == "user" {
            let at = |key: &str, m: String| (find_key(text, key), format!("network.{key}: {m}"));
            check_cidr(&self.network.address).map_err(|m| at("address", m))?;
            check_ip(&self.network.gateway).map_err(|m| at("gateway", m))?;
            check_ip(&self.network.dns).map_err(|m| at("dns", m))?;
        }
        for n in &self.network.nets {
            check_name(n)
                .map_err(|m| (find_key(text, "nets"), format!("network.nets: net {m}")))?;
        }
        if let (Some(f), false) = (
            self.kernel_fragments.first(),
            self.kernel == KernelChoice::Tiny,
        ) {
            return Err((
                Some(f.span()),
                "kernel_fragments: only the tiny kernel takes fragments; set kernel = \"tiny\""
                    .into(),
            ));
        }
        for b in &self.root.binaries {
            if !b.get_ref().starts_with('/') {
                return Err((
                    Some(b.span()),
                    format!(
                        "root.binaries: `{}` must be an absolute host path (for example /usr/bin/curl)",
                        b.get_ref()
                    ),
                ));
            }
        }
        for f in &self.root.files {
            let (src, dst) = split_file_spec(f.get_ref());
            if !src.starts_with('/') || !dst.starts_with('/') {
                return Err((
                    Some(f.span()),
                    format!(
                        "root.files: `{}` must be an absolute host path, or HOST:GUEST with both absolute",
                        f.get_ref()
                    ),
                ));
            }
        }
        for p in &self.packages {
            let name = p.get_ref();
            let ok = name.len() >= 2
                && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if !ok {
                return Err((
                    Some(p.span()),
                    format!(
                        "packages: `{name}` is not a Debian package name (lowercase letters, digits, `+`, `-`, `.`; for example \"nginx-light\")"
                    ),
                ));
            }
        }
        if let Some(i) = &self.index {
            if i.get_ref().trim().is_empty() {
                return Err((
                    Some(i.span()),
                    "index: empty; give a file in the recipe folder, e.g. \"files.txt\"".into(),
                ));
            }
            if self.packages.is_empty() && self.from.is_none() {
                return Err((
                    Some(i.span()),
                    "index: selects files from `packages` or the `from` image, but the recipe has neither".into(),
                ));
            }
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.chars().any(|c| c.is_whitespace()) {
                return Err((
                    find_key(text, k),
                    format!("env: `{k}` is not a valid variable name"),
                ));
            }
        }
        self.validate_sizes(text)?;
        if !self.guest.is_bsd() {
            self.validate_hidden()?;
        }
        Ok(())
    }

    /// The unbounded values: `cmdline` against the kernel's buffer, `[env]` against a limit.
    fn validate_sizes(&self, text: &str) -> Result<(), (Option<Range<usize>>, String)> {
        let cmdline_max = KERNEL_CMDLINE_MAX - KILN_CMDLINE_RESERVE;
        if self.cmdline.len() > cmdline_max {
            return Err((
                find_key(text, "cmdline"),
                format!(
                    "cmdline: {} bytes is too long: the kernel takes a command line of at most \
                     {KERNEL_CMDLINE_MAX} bytes, and Kiln keeps {KILN_CMDLINE_RESERVE} of them for \
                     its own arguments, so a recipe's cmdline may have at most {cmdline_max} bytes",
                    self.cmdline.len()
                ),
            ));
        }
        if self.cmdline.chars().any(|c| c.is_control()) {
            return Err((
                find_key(text, "cmdline"),
                "cmdline: contains a control character (a newline?); kernel arguments are one \
                 line, separated by spaces"
                    .into(),
            ));
        }
        let mut total = 0;
        for (k, v) in &self.env {
            if v.len() > ENV_VALUE_MAX {
                return Err((
                    find_key(text, k),
                    format!(
                        "env.{k}: the value is {} bytes; at most {ENV_VALUE_MAX} bytes (32 KiB) \
                         per variable: put bigger data in a file under files/",
                        v.len()
                    ),
                ));
            }
            if v.contains(['\n', '\0']) {
                return Err((
                    find_key(text, k),
                    format!(
                        "env.{k}: the value contains a newline or NUL byte; kiln-init's \
                         configuration holds one variable per line (put multi-line data in a \
                         file under files/)"
                    ),
                ));
            }
            total += k.len() + 1 + v.len() + 1;
        }
        if total > ENV_TOTAL_MAX {
            return Err((
                find_table(text, "env").or_else(|| find_key(text, "env")),
                format!(
                    "env: {total} bytes in all (NAME=value and a terminator for each variable); \
                     at most {ENV_TOTAL_MAX} bytes (64 KiB): put bigger data in files under files/"
                ),
            ));
        }
        Ok(())
    }

    /// `root.files` the recipe puts where kiln-init mounts a fresh filesystem at boot (for
    /// `root.binaries`, the build checks the paths they are staged at).
    fn validate_hidden(&self) -> Result<(), (Option<Range<usize>>, String)> {
        for f in &self.root.files {
            let (_, dst) = split_file_spec(f.get_ref());
            if let Some(m) = hidden_by_mount(dst) {
                return Err((
                    Some(f.span()),
                    format!("root.files: `{}`: {}", f.get_ref(), hidden_message(dst, m)),
                ));
            }
        }
        Ok(())
    }
}

/// Split a `root.files` entry into (host path, guest path).
pub fn split_file_spec(s: &str) -> (&str, &str) {
    match s.split_once(':') {
        Some((a, b)) => (a, b),
        None => (s, s),
    }
}

/// The span of the first line that assigns `key` (for errors found after parsing).
pub(crate) fn find_key(text: &str, key: &str) -> Option<Range<usize>> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let t = t.strip_prefix('"').unwrap_or(t);
        if let Some(rest) = t.strip_prefix(key) {
            let rest = rest.strip_prefix('"').unwrap_or(rest).trim_start();
            if rest.starts_with('=') {
                let start = offset + (line.len() - line.trim_start().len());
                return Some(start..start + key.len());
            }
        }
        offset += line.len();
    }
    None
}

/// The span of a `[table]` header line (for errors about a whole table).
fn find_table(text: &str, table: &str) -> Option<Range<usize>> {
    let header = format!("[{table}]");
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.split('#').next().unwrap_or("").trim() == header {
            let start = offset + (line.len() - t.len());
            return Some(start..start + header.len());
        }
        offset += line.len();
    }
    None
}

fn check_ip(s: &str) -> Result<(), String> {
    s.parse::<std::net::Ipv4Addr>()
        .map(|_| ())
        .map_err(|_| format!("`{s}` is not an IPv4 address"))
}

fn check_cidr(s: &str) -> Result<(), String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` needs a prefix length, like 10.0.2.15/24"))?;
    check_ip(ip)?;
    match prefix.parse::<u8>() {
        Ok(p) if p <= 32 => Ok(()),
        _ => Err(format!("`{prefix}` is not a prefix length (0–32)")),
    }
}

fn yes() -> bool {
    true
}
fn default_cpus() -> u32 {
    1
}
fn default_memory() -> u32 {
    128
}
fn default_ready_timeout() -> u32 {
    30
}
fn default_hook_timeout() -> u32 {
    DEFAULT_HOOK_TIMEOUT
}
fn default_format() -> String {
    "initramfs".into()
}
fn default_net_mode() -> String {
    "user".into()
}
fn default_address() -> String {
    "10.0.2.15/24".into()
}
fn default_gateway() -> String {
    "10.0.2.2".into()
}
fn default_dns() -> String {
    "10.0.2.3".into()
}

fn de_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "name: `{s}` must be 1–63 lowercase letters, digits, `-` or `_`, starting with a letter or digit"
        )))
    }
}

fn de_range<'de, D: Deserializer<'de>>(d: D, key: &str, lo: i64, hi: i64) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    if v < lo || v > hi {
        return Err(serde::de::Error::custom(format!(
            "{key}: {v} is out of range ({lo}–{hi})"
        )));
    }
    Ok(v as u32)
}

fn de_cpus<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    de_range(d, "cpus", 1, 64)
}
fn de_memory<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    de_range(d, "memory (MiB)", 16, 65536)
}
fn de_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    de_range(d, "ready_timeout (seconds)", 1, 3600)
}
fn de_hook_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    de_range(d, "hook_timeout (seconds)", 1, MAX_HOOK_TIMEOUT.into())
}

fn de_format<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if FORMATS.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "image.format: `{s}` is not a root format; use one of {}",
            FORMATS
                .iter()
                .map(|f| format!("\"{f}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

fn de_size_mib<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    de_range(d, "image.size_mib", 8, 65536).map(Some)
}

fn de_net_mode<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s == "user" || s == "none" {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "network.mode: `{s}` is not one of \"user\", \"none\""
        )))
    }
}
