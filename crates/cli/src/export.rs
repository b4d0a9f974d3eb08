//! `kiln export --to ENGINE`: a VM (by name) or a recipe/image with `kiln run`'s settings,
//! planned as for a run and handed to [`kiln_fleet::engines::export`]; the document goes to
//! stdout or `-o FILE` (written whole, then renamed into place), the engine's notes to stderr.

use crate::{dirs, run};
use anyhow::{Context, Result};
use clap::Args;
use kiln_fleet::engines::{self, Engine};
use kiln_fleet::VmConfig;
use kiln_vm::{Accel, AccelChoice};
use std::path::PathBuf;

/// Options of `kiln export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The engine: libvirt (domain XML), nomad (job, qemu driver), kubevirt
    /// (VirtualMachineInstance with kernelBoot) or flintlock (MicroVM spec).
    #[arg(long, value_name = "ENGINE", value_parser = parse_engine)]
    pub to: Engine,
    /// A VM's name (its settings), or a recipe folder or image folder (with the settings given
    /// here, as for `kiln run`).
    #[arg(required_unless_present = "file")]
    pub target: Option<String>,
    /// A VM config file (vm.toml); flags given as well win over its keys.
    #[arg(short = 'f', long = "file", value_name = "VM.TOML")]
    pub file: Option<PathBuf>,
    /// Write the document here instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The VM's settings.
    #[command(flatten)]
    pub vm: VmConfig,
}

fn parse_engine(s: &str) -> std::result::Result<Engine, String> {
    s.parse()
}

/// `kiln export`.
pub fn export(a: ExportArgs) -> Result<()> {
    let fleet = dirs::fleet()?;
    let base = match &a.file {
        Some(f) => VmConfig::load(f)?,
        None => VmConfig::default(),
    };
    // A name of a VM Kiln knows: its stored settings (flags given here still win).
    let known = a
        .target
        .as_deref()
        .filter(|t| !t.contains('/') && !std::path::Path::new(t).exists())
        .map(|name| fleet.get(name))
        .transpose()?;
    let mut flags = a.vm.clone();
    let cfg = match known {
        Some(rec) => {
            flags.name.get_or_insert(rec.name.clone());
            rec.config.clone().overlay(flags)
        }
        None => {
            flags.image = a.target.clone();
            base.overlay(flags)
        }
    };
    let mut p = run::prepare(&fleet, cfg)?;
    // `auto` is what this host would use (KVM, or TCG saying why), as for `kiln run`.
    if p.config.accel_choice() == AccelChoice::Auto {
        p.config.accel = Some(match run::accel(&fleet, &p)? {
            Accel::Kvm => AccelChoice::Kvm,
            Accel::Tcg => AccelChoice::Tcg,
        });
    }
    let plan = fleet.plan_dry(&p, true, false)?;
    let out = engines::export(a.to, &plan)?;
    for n in &out.notes {
        eprintln!("kiln: export: {n}");
    }
    match &a.output {
        Some(path) => kiln_image::atomic_write(path, out.text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{}", out.text),
    }
    Ok(())
}
