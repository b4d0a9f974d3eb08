//! `kiln run`: boot an image in the foreground (console on the terminal, Ctrl-] stops) or
//! detached under a supervisor (see `supervise`), after the admission checks that keep VMs from
//! stepping on each other (unique names, host ports, one writer per disk). Also `--dry-run`
//! for the other backends, and the planning shared with `kiln bench` and the supervisor:
//! a merged [`VmConfig`] plus an image become a QEMU [`VmSpec`].

use crate::state::{self, VmRecord, VmState};
use crate::vmconfig::{self, Network, VmConfig};
use crate::{backends, dirs, term, BadInput};
use anyhow::{bail, Context, Result};
use clap::Args;
use kiln_build::ImageManifest;
use kiln_recipe::{PortForward, Ready, Recipe};
use kiln_vm::runner::{self, ConsoleMsg, RunPaths};
use kiln_vm::{
    accel, cmdline, ports, Accel, AccelChoice, ConsoleEvent, DriveSpec, LineParser, NetSpec,
    ShareKind, ShareSpec, VmSpec, VportSpec,
};
use sha2::Digest;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options of `kiln run`. Every VM setting is also a key of `-f vm.toml` (same name, `_` for `-`).
#[derive(Args, Debug)]
pub struct RunArgs {
    /// A recipe folder (built first if stale) or an image folder from `kiln build`.
    #[arg(required_unless_present = "file")]
    pub target: Option<PathBuf>,
    /// A VM config file (vm.toml); flags given as well win over its keys.
    #[arg(short = 'f', long = "file", value_name = "VM.TOML")]
    pub file: Option<PathBuf>,
    /// Forward a host port: [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp] (repeatable; replaces the recipe's ports).
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    pub ports: Vec<PortForward>,
    /// Virtual CPUs (default: the recipe's).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory in MiB (default: the recipe's).
    #[arg(long, short = 'm')]
    pub memory: Option<u32>,
    /// VM name (default: the recipe's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Run in the background under a supervisor; return once the guest is ready.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Accelerator: auto (probe KVM, fall back to TCG), kvm, tcg.
    #[arg(long, default_value = "auto")]
    pub accel: AccelChoice,
    /// Seconds to wait for readiness (default: the recipe's ready_timeout).
    #[arg(long)]
    pub ready_timeout: Option<u64>,
    /// Extra kernel arguments.
    #[arg(long)]
    pub append: Option<String>,
    /// A second drive (raw image, virtio-blk): PATH[:ro].
    #[arg(long)]
    pub drive: Option<String>,
    /// Serve the serial console over TCP too: [ADDR:]PORT (detached VMs).
    #[arg(long, value_name = "[ADDR:]PORT")]
    pub serial_tcp: Option<String>,
    /// virtio-console ports as host unix sockets: a count, or comma-separated names.
    #[arg(long, value_name = "N|NAMES")]
    pub vports: Option<String>,
    /// Share a host folder with the guest: HOSTDIR:GUESTPATH[:ro].
    #[arg(long)]
    pub share: Option<String>,
    /// How the share reaches the guest: 9p (default with the tiny kernel) or virtiofs (default
    /// with Debian's kernel, which has no 9p).
    #[arg(long)]
    pub share_fs: Option<String>,
    /// Networking: user (default), none, bridge:BRIDGE, tap:TAPIF (the last two need root).
    #[arg(long)]
    pub network: Option<String>,
    /// Make the guest's root read-only before the service starts.
    #[arg(long)]
    pub readonly_root: bool,
    /// Don't lock the drive (neither QEMU's image lock nor Kiln's one-writer check).
    #[arg(long)]
    pub no_lock: bool,
    /// Restart policy of a detached VM: no, on-failure, always (exponential backoff).
    #[arg(long)]
    pub restart: Option<String>,
    /// Hypervisor: qemu (default), or firecracker / bhyve with --dry-run (configs on paper).
    #[arg(long, default_value = "qemu")]
    pub backend: String,
    /// Print what would be run (QEMU argv, Firecracker JSON, bhyve command line) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Show the kernel's boot messages (drops `quiet`).
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Print the boot timeline (host and guest phases) once ready.
    #[arg(long)]
    pub timings: bool,
    /// Do not show the console (foreground runs): only kiln's own lines.
    #[arg(long)]
    pub no_console: bool,
}

impl RunArgs {
    /// The options `kiln bench` boots with: one forward, no console, defaults otherwise.
    pub(crate) fn for_bench(
        image: &Path,
        host_port: u16,
        guest_port: u16,
        accel: AccelChoice,
        memory: Option<u32>,
    ) -> RunArgs {
        RunArgs {
            target: Some(image.to_path_buf()),
            file: None,
            ports: vec![PortForward {
                host_addr: std::net::Ipv4Addr::LOCALHOST,
                host_port,
                guest_port,
                protocol: kiln_recipe::Protocol::Tcp,
            }],
            cpus: None,
            memory,
            name: Some(format!("bench{host_port}")),
            detach: false,
            accel,
            ready_timeout: None,
            append: None,
            drive: None,
            serial_tcp: None,
            vports: None,
            share: None,
            share_fs: None,
            network: None,
            readonly_root: false,
            no_lock: false,
            restart: None,
            backend: "qemu".into(),
            dry_run: false,
            verbose: false,
            timings: false,
            no_console: true,
        }
    }

    /// The flags as a config (only what was given).
    fn flags_config(&self) -> Result<VmConfig> {
        Ok(VmConfig {
            image: self.target.as_ref().map(|t| t.display().to_string()),
            name: self.name.clone(),
            cpus: self.cpus,
            memory: self.memory,
            append: self.append.clone(),
            drive: self.drive.clone(),
            ports: self.ports.iter().map(|p| p.to_string()).collect(),
            serial_tcp: self.serial_tcp.clone(),
            vports: self
                .vports
                .as_deref()
                .map(vmconfig::parse_vports_flag)
                .transpose()
                .map_err(BadInput)?,
            share: self.share.clone(),
            share_fs: self.share_fs.clone(),
            network: self.network.clone(),
            readonly_root: self.readonly_root,
            no_lock: self.no_lock,
            restart: self.restart.clone(),
            ready_timeout: self.ready_timeout,
            accel: (self.accel != AccelChoice::Auto).then(|| {
                match self.accel {
                    AccelChoice::Kvm => "kvm",
                    _ => "tcg",
                }
                .to_string()
            }),
        })
    }

    /// The file's config with the flags on top, checked.
    pub(crate) fn config(&self) -> Result<VmConfig> {
        let base = match &self.file {
            Some(f) => VmConfig::load(f)?,
            None => VmConfig::default(),
        };
        let cfg = base.overlay(self.flags_config()?);
        cfg.validate()
            .map_err(|(key, msg)| BadInput(format!("--{}: {msg}", key.replace('_', "-"))))?;
        if cfg.image.is_none() {
            return Err(BadInput(
                "no image: give a recipe or image folder, or `image` in the config file".into(),
            )
            .into());
        }
        Ok(cfg)
    }
}

/// Resolve TARGET to an image folder, building a recipe if needed.
pub(crate) fn image_for(target: &Path) -> Result<(PathBuf, ImageManifest)> {
    if target.join(kiln_build::MANIFEST).is_file() {
        let m = kiln_build::load_image(target)?;
        return Ok((target.to_path_buf(), m));
    }
    if !target.join("kiln.toml").is_file() && !target.exists() {
        return Err(BadInput(format!(
            "{}: no such recipe or image folder",
            target.display()
        ))
        .into());
    }
    let recipe = Recipe::load(target)?;
    let key = hex::encode(&sha2::Sha256::digest(recipe.dir.as_os_str().as_encoded_bytes())[..6]);
    let out = dirs::cache_root()
        .join("images")
        .join(format!("{}-{key}", recipe.config.name));
    let report = crate::build_recipe(&recipe, &out, false, false)?;
    if !report.reused {
        eprintln!(
            "kiln: built {} in {:.2} s ({})",
            recipe.config.name,
            report.elapsed.as_secs_f64(),
            crate::root_summary(&report.manifest.initramfs, report.manifest.files.len())
        );
    }
    Ok((out, report.manifest))
}

/// Everything needed to start one VM, resolved.
pub(crate) struct Plan {
    pub(crate) name: String,
    pub(crate) spec: VmSpec,
    pub(crate) ready_timeout: Duration,
    pub(crate) ports: Vec<PortForward>,
    pub(crate) run_dir: PathBuf,
    /// The drive's canonical path and whether it is written to.
    pub(crate) drive: Option<(PathBuf, bool)>,
    pub(crate) serial_tcp: Option<std::net::SocketAddr>,
    pub(crate) config: VmConfig,
    /// The guest OS: "linux", "netbsd" or "freebsd".
    pub(crate) guest: String,
    /// Count the VM ready as soon as QEMU runs: a BSD guest (no kiln-init) with `ready = "none"`,
    /// whose rc may never print a ready line.
    pub(crate) ready_at_launch: bool,
}

impl Plan {
    /// The record of this VM about to start: no processes yet, nothing ended.
    pub(crate) fn record(&self, image_dir: &Path, accel: Accel) -> VmRecord {
        VmRecord {
            name: self.name.clone(),
            state: VmState::Starting,
            pid: 0,
            pid_start: None,
            supervisor_pid: 0,
            supervisor_start: None,
            boot_id: kiln_vm::runner::boot_id(),
            image: image_dir.display().to_string(),
            ports: self.ports.iter().map(|p| p.to_string()).collect(),
            cpus: self.spec.cpus,
            memory: self.spec.memory_mib,
            accel: accel.to_string(),
            started: state::now(),
            ready_ms: None,
            restarts: 0,
            exit_code: None,
            signal: None,
            stopped: None,
            error: None,
            tail: None,
            config: self.config.clone(),
            foreground: false,
        }
    }
}

/// The QEMU console socket of a supervised VM (the supervisor's viewer socket is console.sock).
pub(crate) fn supervised_paths(dir: &Path) -> RunPaths {
    let mut p = RunPaths::in_dir(dir);
    p.console_socket = dir.join("qemu-console.sock");
    p
}

/// Plan from `kiln run`'s flags alone (kept for `kiln bench`).
pub(crate) fn plan(
    a: &RunArgs,
    image_dir: &Path,
    m: &ImageManifest,
    run_dir: &Path,
    accel: Accel,
) -> Result<Plan> {
    let cfg = a.flags_config()?;
    plan_config(&cfg, image_dir, m, run_dir, accel, a.detach, a.verbose)
}

/// Plan a VM from its merged config and image.
pub(crate) fn plan_config(
    cfg: &VmConfig,
    image_dir: &Path,
    m: &ImageManifest,
    run_dir: &Path,
    accel: Accel,
    supervised: bool,
    verbose: bool,
) -> Result<Plan> {
    let name = cfg.name.clone().unwrap_or_else(|| m.name.clone());
    vmconfig::check_name(&name).map_err(BadInput)?;
    let bad = |e: String| BadInput(e);
    let ports: Vec<PortForward> = if cfg.ports.is_empty() {
        m.boot
            .ports
            .iter()
            .map(|p| p.parse().map_err(bad))
            .collect::<Result<_, _>>()?
    } else {
        cfg.ports
            .iter()
            .map(|p| p.parse().map_err(bad))
            .collect::<Result<_, _>>()?
    };
    let _: Ready = m.boot.ready.parse().map_err(BadInput)?;
    let bsd = m.boot.is_bsd();
    if bsd {
        // No kiln-init in the guest to mount shares, open ports or remount the root.
        for (given, what) in [
            (cfg.share.is_some(), "--share"),
            (cfg.vports.is_some(), "--vports"),
            (cfg.readonly_root, "--readonly-root"),
        ] {
            if given {
                return Err(BadInput(format!(
                    "{what}: not available for a {} guest (it is kiln-init's work, and a BSD guest runs its own init)",
                    m.boot.guest
                ))
                .into());
            }
        }
    }
    let mut extra = m.boot.cmdline.clone();
    let paths = if supervised {
        supervised_paths(run_dir)
    } else {
        RunPaths::in_dir(run_dir)
    };
    let network = if m.boot.network == "none" && cfg.network.is_none() {
        Network::None
    } else {
        cfg.network_choice()
    };
    let net = match &network {
        Network::User => NetSpec::User {
            forwards: ports.clone(),
        },
        Network::None => NetSpec::None,
        Network::Bridge(b) => NetSpec::Bridge { bridge: b.clone() },
        Network::Tap(t) => NetSpec::Tap { ifname: t.clone() },
    };
    if network == Network::None {
        extra.push_str(" kiln.net=none");
    }
    let mut drives = vec![];
    let mut drive = None;
    if let Some(d) = &cfg.drive {
        let (path, readonly) = vmconfig::parse_drive(d).map_err(BadInput)?;
        let path = std::fs::canonicalize(&path)
            .map_err(|e| BadInput(format!("drive {}: {e}", path.display())))?;
        drive = Some((path.clone(), !readonly));
        drives.push(DriveSpec {
            path,
            readonly,
            lock: !cfg.no_lock,
            snapshot: false,
        });
    }
    if m.initramfs.is_disk() {
        // The root disk comes first (/dev/vda); writes go to an overlay QEMU drops, so any
        // number of VMs boot the same image and each starts from the image as built.
        drives.insert(
            0,
            DriveSpec {
                path: image_dir.join(&m.initramfs.file),
                readonly: false,
                lock: true,
                snapshot: true,
            },
        );
        if !bsd {
            extra.insert_str(0, "root=/dev/vda rootfstype=ext4 rootwait rw init=/init ");
        }
    }
    let mut shares = vec![];
    if let Some(s) = &cfg.share {
        let sh = vmconfig::parse_share(s).map_err(BadInput)?;
        let host = std::fs::canonicalize(&sh.host)
            .map_err(|e| BadInput(format!("share {}: {e}", sh.host.display())))?;
        if !host.is_dir() {
            return Err(BadInput(format!("share {}: not a folder", host.display())).into());
        }
        // The tiny kernel has 9p and no virtiofs; Debian's cloud kernel the other way round.
        let tiny = m.boot.is_tiny_kernel();
        let nine = match cfg.share_fs.as_deref() {
            Some("9p") => true,
            Some("virtiofs") if tiny => {
                return Err(BadInput(
                    "share_fs = \"virtiofs\": the tiny kernel has no virtiofs; use share_fs = \"9p\" (the default with it) or boot Debian's kernel (kernel = \"debian\")".into(),
                )
                .into());
            }
            Some(_) => false,
            None => tiny,
        };
        if sh.readonly && !nine {
            return Err(BadInput(
                "a read-only share needs share_fs = \"9p\" (QEMU 7.2's virtiofsd has no read-only mode)".into(),
            )
            .into());
        }
        extra.push_str(&format!(
            " kiln.share=share0:{}:{}",
            sh.guest,
            if nine { "9p" } else { "virtiofs" }
        ));
        shares.push(ShareSpec {
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
        });
    }
    let mut vports = vec![];
    if let Some(v) = &cfg.vports {
        for n in vmconfig::vport_names(v).map_err(BadInput)? {
            extra.push_str(&format!(" kiln.vport={n}"));
            vports.push(VportSpec {
                socket: run_dir.join(format!("vport-{n}.sock")),
                name: n,
            });
        }
    }
    if cfg.readonly_root {
        extra.push_str(" kiln.ro");
    }
    if let Some(x) = &cfg.append {
        extra.push(' ');
        extra.push_str(x);
    }
    let serial_tcp = cfg
        .serial_tcp
        .as_deref()
        .map(vmconfig::parse_serial_tcp)
        .transpose()
        .map_err(BadInput)?;
    if m.boot.is_tiny_kernel() {
        // No ACPI to power off with: kiln-init reboots, the triple fault ends QEMU (-no-reboot).
        // Under TCG, skip the APIC timer calibration (~0.25 s; the tiny kernel keeps its clock
        // on the PIT; Debian's kernel, with ACPI, would lose it: docs/kernel.md).
        let args = if accel == kiln_vm::Accel::Tcg {
            "reboot=t noapictimer "
        } else {
            "reboot=t "
        };
        extra.insert_str(0, args);
    }
    let spec = VmSpec {
        name: name.clone(),
        kernel: image_dir.join(&m.kernel.file),
        initrd: (!m.initramfs.is_disk()).then(|| image_dir.join(&m.initramfs.file)),
        cmdline: if bsd {
            bsd_cmdline(&m.boot.guest, &m.boot.cmdline, cfg.append.as_deref())
        } else {
            cmdline::compose(accel, cmdline::host_tsc_khz(), verbose, &extra)
        },
        cpus: cfg.cpus.unwrap_or(m.boot.cpus),
        memory_mib: cfg.memory.unwrap_or(m.boot.memory),
        accel,
        net,
        console_socket: paths.console_socket.clone(),
        // QEMU waits for its one console client (kiln, or the supervisor) so no output is lost.
        console_wait: true,
        console_log: None,
        control_socket: paths.control_socket.clone(),
        qmp_socket: paths.qmp_socket.clone(),
        drives,
        shares,
        vports,
        // The tiny kernel has no ACPI; NetBSD boots on microvm without it, as smolBSD does.
        acpi: !m.boot.is_tiny_kernel() && !bsd,
        extra_args: vec![],
    };
    Ok(Plan {
        name,
        spec,
        ready_timeout: Duration::from_secs(
            cfg.ready_timeout.unwrap_or(m.boot.ready_timeout as u64),
        ),
        ports,
        run_dir: run_dir.to_path_buf(),
        drive,
        serial_tcp,
        config: cfg.clone(),
        guest: m.boot.guest.clone(),
        ready_at_launch: bsd && m.boot.ready.parse::<Ready>() == Ok(Ready::None),
    })
}

/// Bridge and tap networking need root: refuse early, before anything is built or started.
fn check_network_privilege(cfg: &VmConfig) -> Result<()> {
    if matches!(cfg.network_choice(), Network::Bridge(_) | Network::Tap(_)) {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(BadInput(format!(
                "network `{}` needs root: QEMU must open a tap device (and qemu-bridge-helper must be allowed the bridge in /etc/qemu/bridge.conf); run as root, or use network = \"user\" with port forwards",
                cfg.network.as_deref().unwrap_or_default()
            ))
            .into());
        }
    }
    Ok(())
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

/// `kiln run`.
pub fn run(a: RunArgs) -> Result<ExitCode> {
    let mut cfg = a.config()?;
    if !a.dry_run {
        check_network_privilege(&cfg)?;
    }
    if a.backend != "qemu" && !a.dry_run {
        return Err(BadInput(format!(
            "--backend {}: only QEMU runs VMs here; other backends are on paper: add --dry-run to print the {}",
            a.backend,
            if a.backend == "bhyve" { "bhyve command line" } else { "Firecracker config" }
        ))
        .into());
    }
    if cfg.serial_tcp.is_some() && !a.detach && !a.dry_run {
        return Err(BadInput(
            "--serial-tcp serves the console of a detached VM: add --detach (a foreground run has the terminal)".into(),
        )
        .into());
    }
    if !a.detach && cfg.restart_policy() != vmconfig::Restart::No && !a.dry_run {
        return Err(BadInput("--restart applies to detached VMs: add --detach".into()).into());
    }
    let target = PathBuf::from(cfg.image.clone().unwrap_or_default());
    let (image_dir, manifest) = image_for(&target)?;
    if manifest.boot.guest == "freebsd" && a.backend != "bhyve" {
        return Err(BadInput(format!(
            "{}: a FreeBSD guest boots under bhyve (its loader reads the kernel from the disk): `kiln run {} --backend bhyve --dry-run` prints the commands for a FreeBSD host",
            manifest.name,
            target.display()
        ))
        .into());
    }
    let image_dir = std::fs::canonicalize(&image_dir).unwrap_or(image_dir);
    cfg.image = Some(image_dir.display().to_string());
    let name = cfg.name.clone().unwrap_or_else(|| manifest.name.clone());
    cfg.name = Some(name.clone());
    let accel_choice: AccelChoice = cfg
        .accel
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(BadInput)?
        .unwrap_or(a.accel);

    if a.dry_run {
        let run_dir = dirs::state_root().join("vms").join(&name);
        let accel = match accel_choice {
            AccelChoice::Kvm => Accel::Kvm,
            _ => Accel::Tcg,
        };
        let p = plan_config(
            &cfg, &image_dir, &manifest, &run_dir, accel, a.detach, a.verbose,
        )?;
        print!("{}", backends::render(&a.backend, &p)?);
        return Ok(ExitCode::SUCCESS);
    }

    let qemu = kiln_vm::check_qemu()?;
    let probe = accel::choose(
        accel_choice,
        &qemu,
        &image_dir.join(&manifest.kernel.file),
        &dirs::cache_root(),
    );
    if let Some(line) = probe.fallback_line() {
        eprintln!("{line}");
    }
    if a.detach {
        return crate::supervise::start_detached(
            cfg,
            &image_dir,
            &manifest,
            probe.accel,
            a.verbose,
        );
    }
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let run_dir = base
        .join("kiln")
        .join(format!("{name}-{}", std::process::id()));
    let plan = plan_config(
        &cfg,
        &image_dir,
        &manifest,
        &run_dir,
        probe.accel,
        false,
        a.verbose,
    )?;
    ports::check_free(&plan.ports)?;
    let reg = Registration::admit(&plan, &image_dir, probe.accel)?;
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    for v in &plan.spec.vports {
        eprintln!("kiln: virtio port {} on {}", v.name, v.socket.display());
    }
    let r = foreground(&a, &plan, &qemu, &reg);
    let _ = std::fs::remove_dir_all(&run_dir);
    r
}

/// A flag raised by SIGINT, SIGTERM or SIGHUP: the signals that ask a VM's keeper (a
/// foreground `kiln run` or a supervisor) to stop it.
pub(crate) fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    Ok(stop)
}

/// A foreground VM's record in the state folder, so `kiln ps` lists it, `kiln stop` stops it
/// (SIGTERM to this kiln) and its name and ports are held like a detached VM's. Removed when
/// the run ends (dropped).
pub(crate) struct Registration {
    root: PathBuf,
    name: String,
}

impl Registration {
    /// Admit the VM (name and ports free among live VMs) and write its record.
    fn admit(plan: &Plan, image_dir: &Path, accel: Accel) -> Result<Registration> {
        let root = dirs::state_root();
        let _lock = state::StateLock::acquire(&root)?;
        admit(&root, plan)?;
        let me = std::process::id();
        let mut rec = plan.record(image_dir, accel);
        rec.supervisor_pid = me;
        rec.supervisor_start = kiln_vm::runner::pid_start_time(me);
        rec.foreground = true;
        state::write(&root, &rec)?;
        Ok(Registration {
            root,
            name: plan.name.clone(),
        })
    }

    /// How long a stop may wait for the guest to power off: what `kiln stop --timeout` asked
    /// (10 s when the stop came from the terminal), nothing for `kiln kill`.
    fn stop_grace(&self) -> Duration {
        crate::supervise::stop_request(&state::vm_dir(&self.root, &self.name))
            .unwrap_or(Duration::ZERO)
    }

    /// Change the record (QEMU's pid once spawned, readiness).
    fn update(&self, f: impl FnOnce(&mut VmRecord)) {
        if let Ok(mut rec) = state::read_raw(&self.root, &self.name) {
            f(&mut rec);
            let _ = state::write(&self.root, &rec);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = state::remove(&self.root, &self.name);
    }
}

/// Refuse a new VM whose name, host ports or writable disk another live VM holds. Call with
/// the state lock held.
pub(crate) fn admit(state_root: &Path, plan: &Plan) -> Result<()> {
    for r in state::list(state_root) {
        if !state::is_live(&r) {
            continue;
        }
        if r.name == plan.name {
            return Err(BadInput(format!(
                "a VM named `{}` is already {} (supervisor pid {}); stop it with `kiln stop {0}` or pick another --name",
                plan.name, r.state, r.supervisor_pid
            ))
            .into());
        }
        let theirs: Vec<PortForward> = r.ports.iter().filter_map(|p| p.parse().ok()).collect();
        for mine in &plan.ports {
            let clash = theirs.iter().any(|t| {
                t.host_port == mine.host_port
                    && t.protocol == mine.protocol
                    && (t.host_addr == mine.host_addr
                        || t.host_addr.is_unspecified()
                        || mine.host_addr.is_unspecified())
            });
            if clash {
                return Err(kiln_vm::VmError::PortInUse {
                    addr: mine.host_addr.to_string(),
                    port: mine.host_port,
                    proto: match mine.protocol {
                        kiln_recipe::Protocol::Tcp => "tcp",
                        kiln_recipe::Protocol::Udp => "udp",
                    },
                    by: format!(", by VM `{}`", r.name),
                }
                .into());
            }
        }
        if let (Some((mine, my_rw)), Some(theirs)) = (&plan.drive, &r.config.drive) {
            let Ok((their_path, their_ro)) = vmconfig::parse_drive(theirs) else {
                continue;
            };
            let their_path = std::fs::canonicalize(&their_path).unwrap_or(their_path);
            let unlocked = plan.config.no_lock || r.config.no_lock;
            if &their_path == mine && (*my_rw || !their_ro) && !unlocked {
                return Err(BadInput(format!(
                    "disk {} is in use by VM `{}`{}; two VMs never open the same writable disk: attach it read-only (`{}:ro`), or pass --no-lock if the guests coordinate",
                    mine.display(),
                    r.name,
                    if their_ro { " (read-only)" } else { " (writable)" },
                    mine.display()
                ))
                .into());
            }
        }
    }
    ports::check_free(&plan.ports)?;
    Ok(())
}

fn foreground(a: &RunArgs, plan: &Plan, qemu: &Path, reg: &Registration) -> Result<ExitCode> {
    let paths = RunPaths::in_dir(&plan.run_dir);
    let mut vm = runner::spawn(qemu, &plan.spec, &paths, false)?;
    let launched = vm.started;
    let qemu_pid = vm.pid();
    reg.update(|r| {
        r.pid = qemu_pid;
        r.pid_start = kiln_vm::runner::pid_start_time(qemu_pid);
        r.state = VmState::Running;
    });
    let console = vm.connect_console()?;
    let writer = console.try_clone().context("cloning the console socket")?;
    let parser = Arc::new(Mutex::new(LineParser::new(40)));
    let sink: Option<Box<dyn Write + Send>> = if a.no_console {
        None
    } else {
        Some(Box::new(std::io::stdout()))
    };
    let events = runner::read_console(console, sink, parser.clone());

    let stop = stop_on_signals()?;
    let raw = term::RawMode::enter();
    if raw.is_tty() {
        eprint!(
            "kiln: console of {} attached; Ctrl-] stops the VM\r\n",
            plan.name
        );
    }
    // Piped input is forwarded too, so `echo cmd | kiln run recipes/rescue` works.
    let stop_on_escape = stop.clone();
    term::forward_stdin(writer, move || {
        stop_on_escape.store(true, Ordering::Relaxed)
    });

    let deadline = launched + plan.ready_timeout;
    let mut ready_at: Option<(Instant, u64)> = None;

    let mut first_byte = None::<Instant>;
    let mut rc_status: Option<i32> = None;
    let mut stopping = false;
    let nl = if raw.is_tty() { "\r\n" } else { "\n" };
    if plan.ready_at_launch {
        ready_at = Some((launched, 0));
        reg.update(|r| r.ready_ms = Some(0));
        eprint!(
            "kiln: {} started ({} guest, ready = \"none\": no readiness check){nl}",
            plan.name, plan.guest
        );
    }
    loop {
        if stop.load(Ordering::Relaxed) && !stopping {
            stopping = true;
            eprint!("kiln: stopping {}{nl}", plan.name);
            let outcome = vm.stop(reg.stop_grace());
            tracing::debug!(?outcome, "stopped");
        }
        match events.recv_timeout(Duration::from_millis(20)) {
            Ok(ConsoleMsg::Event(ev)) => {
                first_byte.get_or_insert_with(Instant::now);
                match ev {
                    ConsoleEvent::Ready { guest_ms } => {
                        let now = Instant::now();
                        ready_at = Some((now, guest_ms));
                        reg.update(|r| r.ready_ms = Some(guest_ms));
                        eprint!(
                            "kiln: {} ready: guest {} ms, launch to ready {:.0} ms ({}){nl}",
                            plan.name,
                            guest_ms,
                            (now - launched).as_secs_f64() * 1000.0,
                            plan.spec.accel
                        );
                    }
                    ConsoleEvent::Timeline(phases) if a.timings => {
                        let list: Vec<String> =
                            phases.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        eprint!("kiln: timeline (guest ms) {}{nl}", list.join(" "));
                    }
                    ConsoleEvent::RcExited { status } => rc_status = Some(status),
                    ConsoleEvent::InitError(m) => eprint!("kiln: guest init: {m}{nl}"),
                    _ => {}
                }
            }
            Ok(ConsoleMsg::Closed) => {
                // The console closes when QEMU exits; wait for the process itself.
                let _ = vm.wait_exit(Duration::from_secs(5));
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if ready_at.is_none() && !stopping && Instant::now() > deadline {
            vm.stop(Duration::from_secs(3));
            drop(raw);
            let tail = parser.lock().map(|p| p.tail()).unwrap_or_default();
            return Err(kiln_vm::VmError::NotReady {
                seconds: plan.ready_timeout.as_secs(),
                tail,
            }
            .into());
        }
        if vm.try_wait().is_some() && !stopping {
            // Drain what is left of the console, then finish.
            let _ = events.recv_timeout(Duration::from_millis(200));
            break;
        }
    }
    drop(raw);
    let status = vm.wait_exit(Duration::from_secs(5));
    if a.timings {
        if let Some((t, g)) = ready_at {
            eprintln!(
                "kiln: host timeline: first console output {:.0} ms, ready seen {:.0} ms (guest {g} ms)",
                first_byte.map(|f| (f - launched).as_secs_f64() * 1000.0).unwrap_or(0.0),
                (t - launched).as_secs_f64() * 1000.0
            );
        }
    }
    if let Some(s) = rc_status {
        return Ok(ExitCode::from(s.clamp(0, 255) as u8));
    }
    if stopping {
        return Ok(ExitCode::SUCCESS);
    }
    if ready_at.is_none() {
        // QEMU ended on its own before the guest was ready and without etc/rc's status: a
        // kernel panic, an init that could not start, a guest that ran out of memory.
        let tail = parser.lock().map(|p| p.tail()).unwrap_or_default();
        bail!(kiln_vm::VmError::QemuExited {
            status: format!(
                "the guest stopped before it was ready ({})",
                status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "still running".into())
            ),
            output: format!("{}{tail}", vm.qemu_stderr())
        })
    }
    match status {
        Some(s) if s.success() => Ok(ExitCode::SUCCESS),
        Some(s) => {
            let tail = parser.lock().map(|p| p.tail()).unwrap_or_default();
            bail!(kiln_vm::VmError::QemuExited {
                status: s.to_string(),
                output: format!("{}{tail}", vm.qemu_stderr())
            })
        }
        None => Ok(ExitCode::from(1)),
    }
}

/// Whether `r` counts as failed for exit codes and listings.
pub(crate) fn describe(r: &VmRecord) -> String {
    match r.state {
        VmState::Exited => match (r.exit_code, &r.stopped) {
            (_, Some(how)) => format!("exited (stopped: {how})"),
            (Some(c), None) => format!("exited ({c})"),
            (None, None) => "exited".into(),
        },
        VmState::Crashed => match r.signal {
            Some(s) => format!("crashed (signal {s})"),
            None => "crashed".into(),
        },
        s => s.to_string(),
    }
}
