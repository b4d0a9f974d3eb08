//! `kiln run`: the flags (one [`VmConfig`], declared in kiln-fleet) and `-f vm.toml` merged,
//! then one call into the fleet: detached ([`Fleet::start_detached`]), in the foreground with
//! the terminal as the console ([`Fleet::launch_foreground`]), or on paper (`--dry-run`).

use crate::{dirs, term, BadInput};
use anyhow::Result;
use clap::Args;
use kiln_fleet::watch::{stop_on_signals, Seen, Until, Watched};
use kiln_fleet::{Fleet, Prepared, Restart, VmConfig};
use kiln_vm::{Accel, ConsoleEvent};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Options of `kiln run`. Every VM setting is also a key of `-f vm.toml` (same name, `_` for `-`).
#[derive(Args, Debug)]
pub struct RunArgs {
    /// A recipe folder (built first if stale), a Dockerfile (or a folder with one), an OCI image, or an image folder from `kiln build`.
    #[arg(required_unless_present_any = ["file", "from"])]
    pub target: Option<PathBuf>,
    /// A VM config file (vm.toml); flags given as well win over its keys.
    #[arg(short = 'f', long = "file", value_name = "VM.TOML")]
    pub file: Option<PathBuf>,
    /// The VM's settings.
    #[command(flatten)]
    pub vm: VmConfig,
    /// Run in the background under a supervisor; return once the guest is ready.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Start this many VMs (detached), named NAME-1…NAME-N, each host port one higher than the
    /// previous VM's.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
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
    /// The file's spec with the flags on top.
    fn config(&self) -> Result<VmConfig> {
        let base = match &self.file {
            Some(f) => VmConfig::load(f)?,
            None => VmConfig::default(),
        };
        let mut flags = self.vm.clone();
        flags.image = self.target.as_ref().map(|t| t.display().to_string());
        Ok(base.overlay(flags))
    }

    /// The refusals that depend on how the VM is run, before anything is built.
    fn check(&self, cfg: &VmConfig) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        kiln_fleet::plan::check_network_privilege(cfg)?;
        if self.backend != "qemu" {
            return Err(BadInput(format!(
                "--backend {}: only QEMU runs VMs here; other backends are on paper: add --dry-run to print the {}",
                self.backend,
                if self.backend == "bhyve" { "bhyve command line" } else { "Firecracker config" }
            ))
            .into());
        }
        if cfg.serial_tcp.is_some() && !self.detach {
            return Err(BadInput(
                "--serial-tcp serves the console of a detached VM: add --detach (a foreground run has the terminal)".into(),
            )
            .into());
        }
        if self.count > 1 && !self.detach {
            return Err(BadInput("--count starts detached VMs: add --detach".into()).into());
        }
        if !self.detach && cfg.restart_policy() != Restart::No {
            return Err(BadInput("--restart applies to detached VMs: add --detach".into()).into());
        }
        Ok(())
    }
}

/// Check and resolve a spec (building its recipe under a spinner); says when it built.
pub fn prepare(fleet: &Fleet, cfg: VmConfig) -> Result<Prepared> {
    let spinner = crate::Spinner::new();
    let p = fleet.prepare(cfg, &spinner);
    drop(spinner);
    let p = p?;
    if let Some(r) = &p.image.built {
        eprintln!(
            "kiln: built {} in {:.2} s ({})",
            r.manifest.name,
            r.elapsed.as_secs_f64(),
            crate::root_summary(&r.manifest.initramfs, r.manifest.files.len())
        );
    }
    Ok(p)
}

/// The accelerator for `p`, saying in one line when KVM was not usable.
pub fn accel(fleet: &Fleet, p: &Prepared) -> Result<Accel> {
    let probe = fleet.probe_accel(p)?;
    if let Some(line) = probe.fallback_line() {
        eprintln!("{line}");
    }
    Ok(probe.accel)
}

/// `kiln run`.
pub fn run(a: RunArgs) -> Result<ExitCode> {
    let fleet = dirs::fleet()?;
    let cfg = a.config()?;
    a.check(&cfg)?;
    let p = prepare(&fleet, cfg)?;
    let m = &p.image.manifest;
    if m.boot.guest == "freebsd" && a.backend != "bhyve" {
        return Err(BadInput(format!(
            "{}: a FreeBSD guest boots under bhyve (its loader reads the kernel from the disk): `kiln run {} --backend bhyve --dry-run` prints the commands for a FreeBSD host",
            m.name,
            a.target.as_ref().map(|t| t.display().to_string()).unwrap_or_default()
        ))
        .into());
    }
    if a.dry_run {
        let plan = fleet.plan_dry(&p, a.detach, a.verbose)?;
        let (text, notes) = kiln_fleet::backends::render(&a.backend, &plan)?;
        for n in notes {
            eprintln!("kiln: {}: {n}", a.backend);
        }
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let accel = accel(&fleet, &p)?;
    if a.detach {
        for i in 0..a.count {
            detached(&fleet, &a, &numbered(&p, i, a.count), accel)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    foreground(&fleet, &a, &p, accel)
}

/// The `i`th of `count` VMs: `NAME-(i+1)`, host ports `i` higher.
fn numbered(p: &Prepared, i: u32, count: u32) -> Prepared {
    let mut p = p.clone();
    if count > 1 {
        p.config.name = Some(format!("{}-{}", p.name(), i + 1));
        if p.config.ports.is_empty() {
            p.config.ports = p
                .image
                .manifest
                .boot
                .ports
                .iter()
                .filter_map(|f| f.parse().ok())
                .collect();
        }
        for f in &mut p.config.ports {
            f.host_port = f.host_port.saturating_add(i as u16);
        }
    }
    p
}

/// Start one detached VM and say so.
fn detached(fleet: &Fleet, a: &RunArgs, p: &Prepared, accel: Accel) -> Result<()> {
    {
        let s = fleet.start_detached(p, accel, a.verbose)?;
        if let Some(why) = &s.cold_reason {
            eprintln!("kiln: {why}");
        }
        let (name, r) = (&s.record.name, &s.record);
        eprintln!(
            "kiln: {name} ready: guest {} ms, launch to ready {:.0} ms ({accel}); pid {}; console `kiln console {name}`, log `kiln logs {name}`; stop with `kiln stop {name}`",
            r.ready_ms.unwrap_or(0),
            s.elapsed.as_secs_f64() * 1000.0,
            r.pid
        );
        for (n, sock) in &s.vports {
            eprintln!("kiln: virtio port {n} on {}", sock.display());
        }
    }
    Ok(())
}

/// `kiln build --template`: boot the built image once and save its template.
pub fn make_template(
    fleet: &Fleet,
    dir: &std::path::Path,
    m: &kiln_bake::ImageManifest,
) -> Result<()> {
    let image = kiln_fleet::Image {
        dir: std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
        manifest: m.clone(),
        built: None,
    };
    let p = Prepared {
        config: VmConfig::default(),
        image,
    };
    let accel = accel(fleet, &p)?;
    let t = Instant::now();
    let s = fleet.make_template(&p.image, accel)?;
    eprintln!(
        "kiln: template of {} made in {:.1} s (saved in {} ms): {} stored in {}",
        m.name,
        t.elapsed().as_secs_f64(),
        s.meta.save_ms,
        crate::human(s.meta.stored_bytes),
        s.dir.display()
    );
    Ok(())
}

/// A foreground run: the console on the terminal, stdin to the guest, Ctrl-] or a signal stops.
fn foreground(fleet: &Fleet, a: &RunArgs, p: &Prepared, accel: Accel) -> Result<ExitCode> {
    let sink = (!a.no_console).then(|| Box::new(std::io::stdout()) as Box<dyn Write + Send>);
    let mut fg = fleet.launch_foreground(p, accel, a.verbose, sink)?;
    if let Some(why) = &fg.plan.cold_reason {
        eprintln!("kiln: {why}");
    }
    for v in &fg.plan.spec.vports {
        eprintln!("kiln: virtio port {} on {}", v.name, v.socket.display());
    }
    let stop = stop_on_signals()?;
    let raw = term::RawMode::enter();
    let name = fg.plan.name.clone();
    if raw.is_tty() {
        eprint!("kiln: console of {name} attached; Ctrl-] stops the VM\r\n");
    }
    // Piped input is forwarded too, so `echo cmd | kiln run recipes/rescue` works.
    if let Some(input) = fg.session.console_input() {
        let on_escape = stop.clone();
        term::forward_stdin(input, move || on_escape.store(true, Ordering::Relaxed));
    }
    let nl = if raw.is_tty() { "\r\n" } else { "\n" };
    let launched = fg.session.launched();
    if fg.plan.ready_at_launch {
        eprint!(
            "kiln: {name} started ({} guest, ready = \"none\": no readiness check){nl}",
            fg.plan.guest
        );
    }
    let mut first_output = None::<Instant>;
    let mut on = |seen: Seen<'_>| match seen {
        Seen::Console(ev) => {
            first_output.get_or_insert_with(Instant::now);
            match ev {
                ConsoleEvent::Ready { guest_ms } => eprint!(
                    "kiln: {name} ready: guest {guest_ms} ms, launch to ready {:.0} ms ({accel}){nl}",
                    launched.elapsed().as_secs_f64() * 1000.0
                ),
                ConsoleEvent::Timeline(phases) if a.timings => {
                    let list: Vec<String> = phases.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    eprint!("kiln: timeline (guest ms) {}{nl}", list.join(" "));
                }
                ConsoleEvent::InitError(m) => eprint!("kiln: guest init: {m}{nl}"),
                _ => {}
            }
        }
        Seen::Stopping => eprint!("kiln: stopping {name}{nl}"),
        Seen::NotReady => {}
    };
    let Watched::Ended(end) = fg.watch(Until::End, &stop, &mut on) else {
        anyhow::bail!("the VM's watch ended before the VM");
    };
    drop(raw);
    if let (true, Some((t, g))) = (a.timings, end.ready) {
        eprintln!(
            "kiln: host timeline: first console output {:.0} ms, ready seen {:.0} ms (guest {g} ms)",
            first_output.map(|f| (f - launched).as_secs_f64() * 1000.0).unwrap_or(0.0),
            (t - launched).as_secs_f64() * 1000.0
        );
    }
    Ok(ExitCode::from(fg.exit_code(&end)?))
}
