//! Planning: a recipe or image folder becomes an image ([`resolve_image`], building a recipe
//! when stale), and a [`VmConfig`] plus that image become one [`Plan`] — the resolved spec
//! (name, ports, drive, deadline) and the QEMU [`VmSpec`]. Each concern is a named step:
//! forwards, network, drives, share, vports, kernel arguments.

use crate::config::{check_name, Network, ShareFs, VmConfig};
use crate::error::{FleetError, Result};
use crate::template::{self, Restore, Signature};
use kiln_bake::{ImageManifest, Progress};
use kiln_recipe::{PortForward, Ready, Recipe};
use kiln_vm::runner::RunPaths;
use kiln_vm::{
    cmdline, Accel, DriveFormat, DriveSpec, NetSpec, ShareKind, ShareSpec, VmSpec, VportSpec,
};
use sha2::Digest;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn bad(m: impl Into<String>) -> FleetError {
    FleetError::BadInput(m.into())
}

/// A resolved image folder and its manifest.
#[derive(Debug, Clone)]
pub struct Image {
    /// The folder (canonical).
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: ImageManifest,
    /// Whether a recipe was built (not reused) to get it, and how long it took.
    pub built: Option<kiln_bake::BuildReport>,
}

/// Resolve `target` (an image folder, or a recipe folder built into the cache's `images/`
/// when stale) to an image.
pub fn resolve_image(target: &Path, cache_root: &Path, progress: &dyn Progress) -> Result<Image> {
    if target.join(kiln_bake::MANIFEST).is_file() {
        let manifest = kiln_bake::load_image(target)?;
        let dir = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
        return Ok(Image {
            dir,
            manifest,
            built: None,
        });
    }
    let text = target.to_string_lossy();
    let made;
    let target = if !target.exists() && kiln_oci::is_image_reference(&text) {
        progress.phase("OCI image");
        // A Kiln image pushed with `kiln push`: pulled into the cache as it is.
        if matches!(text.parse(), Ok(kiln_oci::Source::Registry(_))) {
            let key = hex::encode(&sha2::Sha256::digest(text.as_bytes())[..6]);
            let out = cache_root
                .join("images")
                .join(format!("{}-pulled-{key}", kiln_bake::oci::name_for(&text)));
            if let Some(manifest) =
                kiln_bake::travel::pull_image(&text, &out, cache_root, &|_, _, _| {})?
            {
                let dir = std::fs::canonicalize(&out).unwrap_or(out);
                return Ok(Image {
                    dir,
                    manifest,
                    built: None,
                });
            }
        }
        // An OCI container image: a recipe made from it (cached per image digest), built like
        // any other.
        made = kiln_bake::oci::recipe_for(&text, cache_root)?;
        made.as_path()
    } else if let Some(dir) = kiln_bake::dockerfile::recipe_of(target, cache_root)? {
        // A Dockerfile: a recipe made from it (cached per file, context and base image).
        made = dir;
        made.as_path()
    } else {
        target
    };
    if !target.join("kiln.toml").is_file() && !target.exists() {
        return Err(bad(format!(
            "{}: no such recipe or image folder (nor an OCI image reference: \
             HOST[:PORT]/REPO[:TAG], oci:DIR[:TAG] or docker-archive:FILE)",
            target.display()
        )));
    }
    let recipe = Recipe::load(target)?;
    let out = recipe_image_dir(&recipe, cache_root);
    let report = build_recipe(&recipe, &out, cache_root, false, false, progress)?;
    let dir = std::fs::canonicalize(&out).unwrap_or(out);
    Ok(Image {
        dir,
        manifest: report.manifest.clone(),
        built: (!report.reused).then_some(report),
    })
}

/// Where `kiln run` builds a recipe: `CACHE/images/NAME-HASH` (the hash of its folder).
pub fn recipe_image_dir(recipe: &Recipe, cache_root: &Path) -> PathBuf {
    let key = hex::encode(&sha2::Sha256::digest(recipe.dir.as_os_str().as_encoded_bytes())[..6]);
    cache_root
        .join("images")
        .join(format!("{}-{key}", recipe.config.name))
}

/// Build `recipe` into `out` (the one build path of `kiln build`, `kiln run` and the web).
pub fn build_recipe(
    recipe: &Recipe,
    out: &Path,
    cache_root: &Path,
    refresh: bool,
    force: bool,
    progress: &dyn Progress,
) -> Result<kiln_bake::BuildReport> {
    let opts = kiln_bake::BuildOptions {
        out_dir: out.to_path_buf(),
        cache_root: cache_root.to_path_buf(),
        init_binary: kiln_bake::find_init()?,
        refresh,
        force,
    };
    Ok(kiln_bake::build(recipe, &opts, progress)?)
}

/// Everything needed to start one VM, resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The VM's name.
    pub name: String,
    /// QEMU's part.
    pub spec: VmSpec,
    /// How long the guest has to become ready.
    pub ready_timeout: Duration,
    /// The forwards in effect (the config's, or the recipe's).
    pub ports: Vec<PortForward>,
    /// The VM's folder (sockets, logs).
    pub run_dir: PathBuf,
    /// The drive's canonical path and whether it is written to.
    pub drive: Option<(PathBuf, bool)>,
    /// The serial console over TCP.
    pub serial_tcp: Option<SocketAddr>,
    /// The spec as stored (name set, image and paths absolute).
    pub config: VmConfig,
    /// The guest OS: "linux", "netbsd" or "freebsd".
    pub guest: String,
    /// Count the VM ready as soon as QEMU runs: a BSD guest (no kiln-init) with
    /// `ready = "none"`, whose rc may never print a ready line.
    pub ready_at_launch: bool,
    /// Start from this saved state (a clone of a template, or a snapshot) instead of booting.
    pub restore: Option<Restore>,
    /// Why the image's template is not used (said in one line), when it has one.
    pub cold_reason: Option<String>,
    /// The image's own initramfs file, which exports name (`spec.initrd` may be its expanded
    /// copy in the cache, which `kiln cache prune` may remove).
    pub image_initrd: Option<PathBuf>,
}

/// The file layout of a VM's folder: a supervised VM's QEMU console is `qemu-console.sock`
/// (the supervisor's viewer socket is `console.sock`).
pub fn run_paths(dir: &Path, supervised: bool) -> RunPaths {
    let mut p = RunPaths::in_dir(dir);
    if supervised {
        p.console_socket = dir.join("qemu-console.sock");
    }
    p
}

/// The least memory (MiB) of a VM that gets the exec channel (`kiln exec`, `kiln cp`) when its
/// kernel uses the 1024-entry rings QEMU's virtio-mmio offers (Debian's kernel, a user's): the
/// guest's virtio-console driver fills the port's receive queue with 4 MiB at boot, and
/// recipes/httpd in 32 MiB ran out of memory unpacking its initramfs with it (measured: 36 MiB
/// failed, 40 MiB booted). Kiln's tiny kernel caps rings at 128 entries
/// ([`kiln_bake::manifest::KernelInfo::has_small_rings`]): every VM gets the channel.
pub const EXEC_MIN_MEMORY_MIB: u32 = 48;

/// What planning needs besides the config and image.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The VM's folder.
    pub run_dir: PathBuf,
    /// The accelerator chosen.
    pub accel: Accel,
    /// Under a supervisor (detached).
    pub supervised: bool,
    /// Show the kernel's messages.
    pub verbose: bool,
    /// The NICs on Kiln nets, leased ([`crate::Fleet::lease_lans`]); one per `nets` entry.
    pub lans: Vec<crate::net::Lan>,
    /// The cache, where a compressed initramfs is expanded for boot
    /// ([`kiln_bake::expand::boot_initramfs`]).
    pub cache_root: PathBuf,
    /// A plan on paper (`--dry-run`): files it would make (the expanded initramfs) are named,
    /// not made.
    pub on_paper: bool,
}

/// Plan a VM from its spec and image.
pub fn plan(cfg: &VmConfig, image: &Image, o: &PlanOptions) -> Result<Plan> {
    let m = &image.manifest;
    let name = cfg.name.clone().unwrap_or_else(|| m.name.clone());
    check_name(&name).map_err(bad)?;
    let _: Ready = m.boot.ready.parse().map_err(bad)?;
    let bsd = m.boot.is_bsd();
    if bsd {
        refuse_init_features(cfg, &m.boot.guest)?;
    }
    let ports = forwards(cfg, m)?;
    let paths = run_paths(&o.run_dir, o.supervised);
    let mut config = cfg.clone();
    config.name = Some(name.clone());
    config.image = Some(image.dir.display().to_string());
    let mut args = KernelArgs(m.boot.cmdline.clone());
    let network = network(cfg, m);
    if network == Network::None {
        args.push("kiln.net=none");
    }
    let net = match network {
        Network::User => NetSpec::User {
            forwards: ports.clone(),
        },
        Network::None => NetSpec::None,
        Network::Bridge(bridge) => NetSpec::Bridge { bridge },
        Network::Tap(ifname) => NetSpec::Tap { ifname },
    };
    if o.lans.len() != cfg.nets.len() {
        return Err(FleetError::Other(format!(
            "{name}: {} nets asked for, {} leased",
            cfg.nets.len(),
            o.lans.len()
        )));
    }
    let lans = o
        .lans
        .iter()
        .enumerate()
        .map(|(i, l)| {
            args.push(&l.kernel_arg());
            kiln_vm::LanSpec {
                mac: l.mac.clone(),
                local: o.run_dir.join(format!("lan{i}.sock")),
                switch: l.switch.clone(),
            }
        })
        .collect();
    let (drives, drive) = drives(&mut config, image, bsd, &mut args)?;
    let shares = share(&mut config, m, &o.run_dir, &mut args)?;
    let vports = vports(cfg, &o.run_dir, &mut args)?;
    if cfg.readonly_root {
        args.push("kiln.ro");
    }
    if !bsd {
        // The guest's hostname is the VM's name (a clone's thaw gives it the same).
        args.push(&format!("kiln.hostname={name}"));
    }
    if let Some(x) = &cfg.append {
        args.push(x);
    }
    let tiny = m.boot.is_tiny_kernel();
    let tsc_khz = cmdline::host_tsc_khz();
    if tiny {
        // Only for the tiny kernel: Debian's, with ACPI, would lose its clock without the APIC
        // timer (docs/kernel.md).
        args.prepend(&cmdline::tiny_kernel_args(
            o.accel,
            tsc_khz,
            cmdline::TinyKernel {
                hz: m.kernel.hz,
                lapic_timer_period: m.kernel.takes_lapic_timer_period(),
                page_reporting_order: m.kernel.takes_page_reporting_order(),
            },
        ));
    }
    let memory_mib = cfg.memory.unwrap_or(m.boot.memory);
    let image_initrd = (!m.initramfs.is_disk()).then(|| image.dir.join(&m.initramfs.file));
    // Under TCG the guest's decompressor is slow: boot the archive expanded on the host.
    let initrd = match &image_initrd {
        Some(_) if !bsd && o.on_paper => Some(kiln_bake::expand::boot_initramfs_path(
            &image.dir,
            &m.initramfs,
            &o.cache_root,
            memory_mib,
        )),
        Some(_) if !bsd => Some(kiln_bake::expand::boot_initramfs(
            &image.dir,
            &m.initramfs,
            &o.cache_root,
            memory_mib,
        )?),
        other => other.clone(),
    };
    let mut spec = VmSpec {
        name: name.clone(),
        kernel: image.dir.join(&m.kernel.file),
        initrd,
        cmdline: if bsd {
            bsd_cmdline(&m.boot.guest, &m.boot.cmdline, cfg.append.as_deref())
        } else {
            cmdline::compose(o.accel, tsc_khz, o.verbose, &args.0)
        },
        cpus: cfg.cpus.unwrap_or(m.boot.cpus),
        memory_mib,
        accel: o.accel,
        net,
        lans,
        console_socket: paths.console_socket.clone(),
        // QEMU waits for its one console client (kiln, or the supervisor) so no output is lost.
        console_wait: true,
        console_log: None,
        control_socket: paths.control_socket.clone(),
        // BSD guests have no kiln-init to serve `kiln exec`; small VMs on a kernel with
        // full-size rings have no room for the port's buffers.
        exec_socket: (!bsd
            && (m.kernel.has_small_rings()
                || cfg.memory.unwrap_or(m.boot.memory) >= EXEC_MIN_MEMORY_MIB))
            .then(|| paths.exec_socket.clone()),
        qmp_socket: paths.qmp_socket.clone(),
        drives,
        shares,
        vports,
        // The tiny kernel has no ACPI; NetBSD boots on microvm without it, as smolBSD does.
        acpi: !tiny && !bsd,
        ram: Default::default(),
        incoming: None,
        // Linux guests: Kiln's tiny kernel has the driver, Debian's a module.
        free_page_reporting: !bsd,
        extra_args: vec![],
    };
    let (restore, cold_reason) = warm_start(cfg, image, &mut spec)?;
    Ok(Plan {
        name,
        spec,
        ready_timeout: Duration::from_secs(
            cfg.ready_timeout.unwrap_or(m.boot.ready_timeout as u64),
        ),
        ports,
        run_dir: o.run_dir.clone(),
        drive,
        serial_tcp: cfg.serial_tcp.map(|s| s.0),
        config,
        guest: m.boot.guest.clone(),
        ready_at_launch: bsd && m.boot.ready.parse::<Ready>() == Ok(Ready::None),
        restore,
        cold_reason,
        image_initrd,
    })
}

/// Where the VM starts from: `from` (refused when it cannot be restored), the image's template
/// when it is fresh, or a cold boot (with the reason when a template was passed over).
fn warm_start(
    cfg: &VmConfig,
    image: &Image,
    spec: &mut VmSpec,
) -> Result<(Option<Restore>, Option<String>)> {
    let saved = match &cfg.from {
        Some(dir) => Some(template::find(dir)?),
        None if cfg.cold => None,
        None => match template::of_image(&image.dir) {
            Ok(s) => s,
            Err(why) => {
                return Ok((
                    None,
                    Some(format!(
                        "the template of {} is not used: {why}",
                        image.manifest.name
                    )),
                ))
            }
        },
    };
    let Some(saved) = saved else {
        return Ok((None, None));
    };
    let why = if !spec.shares.is_empty() {
        Some(
            "a shared folder (9p or virtiofs) cannot be restored into: its state lives on the host"
                .to_string(),
        )
    } else if !spec.lans.is_empty() {
        Some("a VM on a Kiln net boots cold (the template has no NIC on it)".to_string())
    } else {
        saved.meta.signature.differs(&Signature::of(spec, image))
    };
    if let Some(why) = why {
        if let Some(dir) = &cfg.from {
            return Err(bad(format!(
                "--from {}: cannot restore: {why}",
                dir.display()
            )));
        }
        return Ok((
            None,
            Some(format!(
                "the template of {} is not used: {why}; booting cold",
                image.manifest.name
            )),
        ));
    }
    let r = saved.restore()?;
    if let Some(ram) = &r.ram {
        spec.ram = kiln_vm::RamBacking::File {
            path: ram.clone(),
            shared: false,
        };
    }
    spec.incoming = Some(r.uri());
    Ok((Some(r), None))
}

/// The kernel arguments being composed.
struct KernelArgs(String);

impl KernelArgs {
    fn push(&mut self, a: &str) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        self.0.push_str(a);
    }
    fn prepend(&mut self, a: &str) {
        self.0 = if self.0.is_empty() {
            a.to_string()
        } else {
            format!("{a} {}", self.0)
        };
    }
}

/// A BSD guest has no kiln-init to mount shares, open ports or remount the root.
fn refuse_init_features(cfg: &VmConfig, guest: &str) -> Result<()> {
    for (given, what) in [
        (cfg.share.is_some(), "--share"),
        (cfg.vports.is_some(), "--vports"),
        (cfg.readonly_root, "--readonly-root"),
        (!cfg.nets.is_empty(), "--net"),
    ] {
        if given {
            return Err(bad(format!(
                "{what}: not available for a {guest} guest (it is kiln-init's work, and a BSD guest runs its own init)"
            )));
        }
    }
    Ok(())
}

/// The config's forwards, or the recipe's.
fn forwards(cfg: &VmConfig, m: &ImageManifest) -> Result<Vec<PortForward>> {
    if !cfg.ports.is_empty() {
        return Ok(cfg.ports.clone());
    }
    m.boot
        .ports
        .iter()
        .map(|p| p.parse().map_err(bad))
        .collect()
}

/// The config's network, `none` when the recipe has none and the config does not say.
fn network(cfg: &VmConfig, m: &ImageManifest) -> Network {
    if m.boot.network == "none" && cfg.network.is_none() {
        Network::None
    } else {
        cfg.network_choice()
    }
}

type Drives = (Vec<DriveSpec>, Option<(PathBuf, bool)>);

/// The root disk (a disk image, first) and the config's second drive (canonicalised in
/// `config`).
fn drives(
    config: &mut VmConfig,
    image: &Image,
    bsd: bool,
    args: &mut KernelArgs,
) -> Result<Drives> {
    let m = &image.manifest;
    let mut drives = vec![];
    let mut drive = None;
    if let Some(d) = config.drive.as_mut() {
        let path = std::fs::canonicalize(&d.path)
            .map_err(|e| bad(format!("drive {}: {e}", d.path.display())))?;
        d.path = path.clone();
        drive = Some((path.clone(), !d.readonly));
        drives.push(DriveSpec {
            path,
            readonly: d.readonly,
            lock: !config.no_lock,
            snapshot: false,
            format: DriveFormat::Raw,
        });
    }
    if m.initramfs.is_disk() {
        // The root disk comes first (/dev/vda); writes go to an overlay QEMU drops (ext4) or
        // to kiln-init's tmpfs overlay (erofs, squashfs: the drive is read-only), so any number
        // of VMs boot the same image and each starts from the image as built.
        let ro = m.initramfs.is_read_only();
        drives.insert(
            0,
            DriveSpec {
                path: image.dir.join(&m.initramfs.file),
                readonly: ro,
                lock: true,
                snapshot: !ro,
                format: if m.initramfs.drive_format() == "qcow2" {
                    DriveFormat::Qcow2
                } else {
                    DriveFormat::Raw
                },
            },
        );
        if !bsd {
            args.prepend(&format!(
                "root=/dev/vda rootfstype={} rootwait {} init=/init",
                m.initramfs.root_fstype(),
                if ro { "ro" } else { "rw" }
            ));
        }
    }
    Ok((drives, drive))
}

/// The shared folder: 9p with the tiny kernel, virtiofs with Debian's (canonicalised in
/// `config`).
fn share(
    config: &mut VmConfig,
    m: &ImageManifest,
    run_dir: &Path,
    args: &mut KernelArgs,
) -> Result<Vec<ShareSpec>> {
    let Some(sh) = config.share.as_mut() else {
        return Ok(vec![]);
    };
    let host = std::fs::canonicalize(&sh.host)
        .map_err(|e| bad(format!("share {}: {e}", sh.host.display())))?;
    if !host.is_dir() {
        return Err(bad(format!("share {}: not a folder", host.display())));
    }
    sh.host = host.clone();
    // The tiny kernel has 9p and no virtiofs; Debian's cloud kernel the other way round.
    let tiny = m.boot.is_tiny_kernel();
    let nine = match config.share_fs {
        Some(ShareFs::NineP) => true,
        Some(ShareFs::Virtiofs) if tiny => {
            return Err(bad(
                "share_fs = \"virtiofs\": the tiny kernel has no virtiofs; use share_fs = \"9p\" (the default with it) or boot Debian's kernel (kernel = \"debian\")",
            ));
        }
        Some(ShareFs::Virtiofs) => false,
        None => tiny,
    };
    if sh.readonly && !nine {
        return Err(bad(
            "a read-only share needs share_fs = \"9p\" (QEMU 7.2's virtiofsd has no read-only mode)",
        ));
    }
    args.push(&format!(
        "kiln.share=share0:{}:{}",
        sh.guest,
        if nine { "9p" } else { "virtiofs" }
    ));
    Ok(vec![ShareSpec {
        tag: "share0".into(),
        host_dir: host,
        readonly: sh.readonly,
        kind: if nine {
            ShareKind::NineP
        } else {
            ShareKind::Virtiofs {
                socket: run_dir.join("virtiofs-0.sock"),
            }
        },
    }])
}

/// virtio-console ports as unix sockets in the VM's folder.
fn vports(cfg: &VmConfig, run_dir: &Path, args: &mut KernelArgs) -> Result<Vec<VportSpec>> {
    let Some(v) = &cfg.vports else {
        return Ok(vec![]);
    };
    let mut out = vec![];
    for n in v.names().map_err(bad)? {
        args.push(&format!("kiln.vport={n}"));
        out.push(VportSpec {
            socket: run_dir.join(format!("vport-{n}.sock")),
            name: n,
        });
    }
    Ok(out)
}

/// A BSD guest's kernel arguments: NetBSD's (smolBSD's startnb.sh: serial console, root on the
/// first virtio-blk disk, `-z` for a quiet boot), then the recipe's and `--append`'s.
pub fn bsd_cmdline(guest: &str, recipe: &str, append: Option<&str>) -> String {
    let base = if guest == "netbsd" {
        "console=com root=ld0a -z"
    } else {
        ""
    };
    [base, recipe, append.unwrap_or("")]
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Bridge and tap networking need root: refuse early, before anything is built or started.
pub fn check_network_privilege(cfg: &VmConfig) -> Result<()> {
    if let n @ (Network::Bridge(_) | Network::Tap(_)) = cfg.network_choice() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(bad(format!(
                "network `{n}` needs root: QEMU must open a tap device (and qemu-bridge-helper must be allowed the bridge in /etc/qemu/bridge.conf); run as root, or use network = \"user\" with port forwards"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_args_compose_in_order() {
        let mut a = KernelArgs(String::new());
        a.push("kiln.ro");
        a.prepend("reboot=t");
        a.push("x=1");
        assert_eq!(a.0, "reboot=t kiln.ro x=1");
    }

    #[test]
    fn bsd_command_lines() {
        assert_eq!(
            bsd_cmdline("netbsd", " -v ", Some("x")),
            "console=com root=ld0a -z -v x"
        );
        assert_eq!(bsd_cmdline("freebsd", "", None), "");
    }

    #[test]
    fn a_bsd_guest_refuses_what_kiln_init_does() {
        let cfg = VmConfig {
            readonly_root: true,
            ..VmConfig::default()
        };
        let e = refuse_init_features(&cfg, "netbsd").expect_err("refused");
        assert!(e.to_string().contains("--readonly-root"), "{e}");
        assert!(e.is_user_error());
        refuse_init_features(&VmConfig::default(), "netbsd").expect("nothing asked");
    }
}
