//! `kiln`: the command line. Thin glue over the library crates: it parses flags, picks
//! folders, shows progress, and maps errors to exit codes (2 for bad input, 1 for failures).

mod bench;
mod cache;
mod dirs;
mod exec;
mod export;
mod kernel;
mod net;
mod netboot;
mod run;
mod serve;
mod systemd;
mod term;
mod trace;
mod vms;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use kiln_bake::{BuildError, Progress};
use kiln_recipe::Recipe;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Kiln bakes tiny single-purpose virtual machines and boots them in well under a second.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build a recipe into an image folder (kernel + compressed initramfs + manifest.json).
    Build(BuildArgs),
    /// Boot a recipe (built first if stale) or an image folder.
    Run(Box<run::RunArgs>),
    /// Hand a VM (or a recipe/image with run's settings) to another engine: a libvirt domain,
    /// a Nomad job, a KubeVirt VirtualMachineInstance or a Flintlock MicroVM spec.
    Export(Box<export::ExportArgs>),
    /// Convert another tool's service folder into a Kiln recipe.
    #[command(subcommand)]
    Import(ImportCmd),
    /// Build or list Kiln's tiny kernels.
    #[command(subcommand)]
    Kernel(kernel::KernelCmd),
    /// Print shell completions (bash, zsh, fish, elvish, powershell), generated from the flags.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from the flags: `kiln man | man -l -`, or
    /// `kiln man run` for a subcommand's.
    Man {
        /// A subcommand (`run`, `build`, …); none for kiln(1).
        subcommand: Option<String>,
    },
    /// Show the cache (images, kernels, downloads), or prune what no VM or recipe needs.
    Cache {
        #[command(subcommand)]
        cmd: Option<cache::CacheCmd>,
    },
    /// Boot a recipe N times and measure each phase, optionally beside a plain baseline.
    Bench(bench::BenchArgs),
    /// Save a running detached VM (it keeps running unless --stop); `kiln run --from DIR`
    /// starts clones of it.
    Snapshot {
        /// The VM's name.
        name: String,
        /// Where to save it (default: content-addressed in the cache).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Stop the VM once saved.
        #[arg(long)]
        stop: bool,
    },
    /// Stop VMs: ask each guest's init to power off, then quit QEMU, then kill it.
    Stop {
        /// VM names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Seconds to wait for a graceful power-off.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Stop VMs now (QEMU gets SIGKILL).
    Kill {
        /// VM names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove the records of ended VMs (-f: kill running ones first).
    Rm {
        /// VM names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Kill a running VM first.
        #[arg(short, long)]
        force: bool,
    },
    /// Print a detached VM's console log (-f: follow it).
    Logs {
        /// The VM's name.
        name: String,
        /// Keep printing new output until the VM ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Attach to a detached VM's serial console (Ctrl-] detaches; several viewers may attach).
    Console {
        /// The VM's name.
        name: String,
    },
    /// Run a command in a running VM through its kiln-init (`kiln exec web -- cat /etc/hostname`):
    /// stdin (-i), stdout and stderr streamed, a terminal with -t; exits with the command's code.
    Exec(exec::ExecArgs),
    /// Copy one file between the host and a running VM, its mode kept:
    /// `kiln cp NAME:PATH HOSTPATH` or `kiln cp HOSTPATH NAME:PATH`.
    Cp {
        /// The file to copy: NAME:PATH (in VM NAME) or a host path.
        src: String,
        /// Where to: a host path (a folder takes the file's name) or NAME:PATH (ending in `/`:
        /// the file's name in that folder).
        dest: String,
    },
    /// Start a VM at host boot: install a systemd unit running its saved config.
    Enable {
        /// The VM's name (its record holds the config).
        name: String,
        /// Print the unit and config instead of installing them.
        #[arg(long)]
        print: bool,
    },
    /// Remove the systemd unit written by `kiln enable`.
    Disable {
        /// The VM's name.
        name: String,
    },
    /// List VMs: detached ones and foreground `kiln run`s.
    Ps {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the web console and HTTP API (127.0.0.1:7070 by default; every request needs the token).
    Serve(serve::ServeArgs),
    /// Trace which package files a workload uses, write the index, and check the minimal image.
    Trace(trace::TraceArgs),
    /// A built image's manifest summary (or the whole manifest with --json), or a VM's record.
    Inspect {
        /// Image folder, or the name of a VM.
        image: PathBuf,
        /// Print the whole manifest.
        #[arg(long)]
        json: bool,
    },
    /// (internal) The supervisor of a detached VM.
    #[command(name = "__supervise", hide = true)]
    Supervise {
        /// The VM's name.
        name: String,
    },
    /// Send an image folder to a registry as a Kiln OCI artifact (blobs it has are skipped).
    Push {
        /// The image folder (`kiln build -o DIR`).
        image: PathBuf,
        /// Where: HOST[:PORT]/REPO[:TAG] (plain HTTP for a registry on loopback).
        reference: String,
    },
    /// Fetch a Kiln image from a registry into an image folder, every blob verified.
    Pull {
        /// HOST[:PORT]/REPO[:TAG] or REPO@sha256:DIGEST.
        reference: String,
        /// The image folder to write (default: out/NAME).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Private networks between VMs: create, ls, rm.
    #[command(subcommand)]
    Net(net::NetCmd),
    /// Boot an image (`[image] format = "iso"`) on a PC from the network: its kernel and
    /// initramfs served over TFTP (and HTTP) with an iPXE script.
    Netboot(netboot::NetbootArgs),
    /// (internal) The switch of a Kiln net.
    #[command(name = "__net", hide = true)]
    NetSwitch {
        /// The net's name.
        name: String,
    },
}

#[derive(Args, Debug)]
struct BuildArgs {
    /// The recipe folder, a Dockerfile (or a folder with one and no kiln.toml), or an OCI image (HOST[:PORT]/REPO[:TAG], oci:DIR[:TAG], docker-archive:FILE).
    recipe: PathBuf,
    /// Output image folder (default: out/NAME).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Re-download cached packages.
    #[arg(long)]
    refresh: bool,
    /// Rebuild even when the image is up to date.
    #[arg(long)]
    force: bool,
    /// Use this kernel instead of the recipe's: "debian", "debian:PACKAGE", "tiny" or a path.
    #[arg(long)]
    kernel: Option<String>,
    /// Also make a template: boot the image once to its ready point and save it, so `kiln run`
    /// starts clones of it in a fraction of a cold boot.
    #[arg(long)]
    template: bool,
}

/// An error that means "the user's input is wrong" (exit code 2).
#[derive(Debug)]
pub struct BadInput(pub String);
impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for BadInput {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Warnings reach the user unless KILN_LOG says otherwise (e.g. `KILN_LOG=error`).
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing_subscriber::filter::LevelFilter::WARN.into())
        .with_env_var("KILN_LOG")
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// `kiln import`: service folders of other tools.
#[derive(Subcommand, Debug)]
enum ImportCmd {
    /// A smolBSD service folder (service/NAME: etc/rc, postinst/, options.mk, and the tree's
    /// common/) as a recipe for a NetBSD guest (or a Linux one); every options.mk line is mapped
    /// or reported.
    Smolbsd {
        /// The service folder.
        service: PathBuf,
        /// The recipe folder to create (must not exist).
        #[arg(short, long, value_name = "RECIPE")]
        output: PathBuf,
        /// The guest: `netbsd` (the sets and kernel you supply) or `linux` (Kiln's tiny kernel,
        /// busybox and kiln-init in place of NetBSD's; builds and boots here).
        #[arg(long, value_enum, default_value = "netbsd")]
        guest: ImportGuest,
    },
}

/// `kiln import smolbsd --guest`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ImportGuest {
    /// NetBSD.
    Netbsd,
    /// Linux.
    Linux,
}

fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        let user = if let Some(f) = cause.downcast_ref::<kiln_fleet::FleetError>() {
            f.is_user_error()
        } else if let Some(b) = cause.downcast_ref::<BuildError>() {
            b.is_user_error()
        } else if let Some(t) = cause.downcast_ref::<kiln_kernel::tiny::TinyError>() {
            t.is_user_error()
        } else {
            cause.downcast_ref::<BadInput>().is_some()
                || cause.downcast_ref::<kiln_recipe::RecipeError>().is_some()
                || cause
                    .downcast_ref::<kiln_recipe::smolbsd::ImportError>()
                    .is_some_and(|e| e.is_user_error())
                || matches!(
                    cause.downcast_ref::<kiln_serve::token::TokenError>(),
                    Some(kiln_serve::token::TokenError::Unusable { .. })
                )
                || matches!(
                    cause.downcast_ref::<kiln_vm::VmError>(),
                    Some(kiln_vm::VmError::PortInUse { .. })
                )
        };
        if user {
            return 2;
        }
    }
    1
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Build(a) => {
            let text = a.recipe.to_string_lossy().into_owned();
            let recipe_dir = if !a.recipe.exists() && kiln_oci::is_image_reference(&text) {
                // An OCI image: the recipe Kiln makes from it (docs/oci.md).
                kiln_bake::oci::recipe_for(&text, &dirs::cache_root())?
            } else if let Some(made) =
                kiln_bake::dockerfile::recipe_of(&a.recipe, &dirs::cache_root())?
            {
                // A Dockerfile: the recipe Kiln makes from it (docs/dockerfile.md).
                made
            } else {
                a.recipe.clone()
            };
            let mut recipe = Recipe::load(&recipe_dir)?;
            if let Some(k) = &a.kernel {
                recipe.config.kernel = kiln_recipe::KernelChoice::parse_override(k)
                    .map_err(|e| BadInput(format!("--kernel: {e}")))?;
            }
            let out = a
                .output
                .unwrap_or_else(|| PathBuf::from("out").join(&recipe.config.name));
            let report = build_recipe(&recipe, &out, a.refresh, a.force)?;
            print_build_summary(&report);
            let has_one = matches!(kiln_fleet::template::of_image(&report.out_dir), Ok(Some(_)));
            if a.template || (report.manifest.boot.template && !has_one) {
                run::make_template(&dirs::fleet()?, &report.out_dir, &report.manifest)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(a) => run::run(*a),
        Command::Export(a) => export::export(*a).map(|()| ExitCode::SUCCESS),
        Command::Import(ImportCmd::Smolbsd {
            service,
            output,
            guest,
        }) => {
            let guest = match guest {
                ImportGuest::Netbsd => kiln_recipe::smolbsd::Guest::NetBsd,
                ImportGuest::Linux => kiln_recipe::smolbsd::Guest::Linux,
            };
            let r = kiln_recipe::smolbsd::import(&service, &output, guest)?;
            eprintln!(
                "kiln: imported {} into {}",
                service.display(),
                output.display()
            );
            for m in &r.mapped {
                eprintln!("  mapped: {m}");
            }
            for m in &r.not_mapped {
                eprintln!("  not mapped: {m}");
            }
            if !r.to_supply.is_empty() {
                eprintln!(
                    "kiln: put these in {} before `kiln build`: {}",
                    output.display(),
                    r.to_supply.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(a) => bench::bench(a),
        Command::Kernel(k) => kernel::run(k),
        Command::Cache { cmd } => cache::run(cmd),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "kiln", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { subcommand } => {
            let top = <Cli as clap::CommandFactory>::command();
            let page = match &subcommand {
                None => top,
                Some(name) => {
                    let Some(sub) = top.find_subcommand(name).cloned() else {
                        let names: Vec<String> = top
                            .get_subcommands()
                            .filter(|c| !c.is_hide_set())
                            .map(|c| c.get_name().to_string())
                            .collect();
                        return Err(BadInput(format!(
                            "man: no subcommand `{name}`; one of: {}",
                            names.join(", ")
                        ))
                        .into());
                    };
                    sub.display_name(format!("kiln-{name}"))
                        .version(env!("CARGO_PKG_VERSION"))
                }
            };
            match clap_mangen::Man::new(page).render(&mut std::io::stdout()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                r => r.context("writing the man page")?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot { name, output, stop } => {
            let s = dirs::fleet()?.snapshot(&name, output.as_deref(), stop)?;
            eprintln!(
                "kiln: saved {name} in {} ms: {} ({}); start it with `kiln run --from {}`",
                s.meta.save_ms,
                s.dir.display(),
                human(s.meta.stored_bytes),
                s.dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop { names, timeout } => vms::stop(&names, Some(timeout)),
        Command::Kill { names } => vms::stop(&names, None),
        Command::Rm { names, force } => vms::rm(&names, force),
        Command::Logs { name, follow } => vms::logs(&name, follow),
        Command::Console { name } => vms::console(&name),
        Command::Exec(a) => exec::exec(a),
        Command::Cp { src, dest } => exec::cp(&src, &dest),
        Command::Enable { name, print } => systemd::enable(&name, print),
        Command::Disable { name } => systemd::disable(&name),
        Command::Supervise { name } => {
            dirs::fleet()?.supervise(&name)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ps { json } => vms::ps(json),
        Command::Net(cmd) => net::net(cmd),
        Command::Netboot(a) => netboot::netboot(a),
        Command::Push { image, reference } => {
            let p = kiln_bake::travel::push_image(
                &image,
                &reference,
                &dirs::cache_root(),
                &|_, _, _| {},
            )?;
            eprintln!(
                "kiln: pushed {} to {reference} ({}): {} blobs sent ({}), {} already there",
                image.display(),
                p.digest,
                p.sent,
                human(p.bytes_sent),
                p.skipped
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Pull { reference, output } => {
            let out = output
                .unwrap_or_else(|| PathBuf::from("out").join(kiln_bake::oci::name_for(&reference)));
            match kiln_bake::travel::pull_image(&reference, &out, &dirs::cache_root(), &|_, _, _| {})? {
                Some(m) => {
                    eprintln!("kiln: pulled {reference} ({}) into {}", m.name, out.display());
                    Ok(ExitCode::SUCCESS)
                }
                None => Err(BadInput(format!(
                    "{reference} is not a Kiln image (a container image? `kiln run {reference}` or `kiln build {reference}` makes a microVM of it)"
                ))
                .into()),
            }
        }
        Command::NetSwitch { name } => {
            dirs::fleet()?.run_switch(&name)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(a) => serve::serve(a),
        Command::Trace(a) => trace::trace(a),
        Command::Inspect { image, .. }
            if !image.join(kiln_bake::MANIFEST).exists()
                && dirs::fleet()?.store().exists(&image.to_string_lossy()) =>
        {
            vms::inspect(&image.to_string_lossy())
        }
        Command::Inspect { image, json } => {
            let m = kiln_bake::load_image(&image)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                println!("{} ({} files)", m.name, m.files.len());
                println!(
                    "kernel     {} ({})",
                    kernel_summary(&m.kernel),
                    m.kernel.description
                );
                if m.initramfs.is_disk() {
                    println!(
                        "disk       {} {} ({} used, {} entries)",
                        human(m.initramfs.size),
                        if m.initramfs.format == "disk" {
                            "ext4"
                        } else {
                            m.initramfs.format.as_str()
                        },
                        human(m.initramfs.uncompressed_size),
                        m.initramfs.entries
                    );
                } else {
                    println!(
                        "initramfs  {} {} ({} uncompressed, {} entries)",
                        human(m.initramfs.size),
                        m.initramfs.compression,
                        human(m.initramfs.uncompressed_size),
                        m.initramfs.entries
                    );
                }
                if let Some(pc) = &m.pc {
                    println!(
                        "iso        {} {} (PC kernel {}, {})",
                        pc.iso,
                        human(pc.iso_size),
                        pc.kernel,
                        human(pc.kernel_size)
                    );
                }
                println!("modules    {}", m.modules.join(" "));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Human-readable size.
pub fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.2} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} kB", bytes as f64 / 1e3)
    }
}

/// A spinner on stderr showing a build's phases.
pub(crate) struct Spinner(indicatif::ProgressBar);

impl Spinner {
    /// Start spinning.
    pub(crate) fn new() -> Spinner {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        pb.set_prefix("building");
        pb.enable_steady_tick(std::time::Duration::from_millis(100));
        Spinner(pb)
    }
}

impl Progress for Spinner {
    fn phase(&self, name: &str) {
        self.0.set_message(name.to_string());
    }
    fn log(&self, line: &str) {
        self.0.println(format!("  | {line}"));
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Build a recipe into `out`, with a spinner.
pub fn build_recipe(
    recipe: &Recipe,
    out: &Path,
    refresh: bool,
    force: bool,
) -> Result<kiln_bake::BuildReport> {
    let spinner = Spinner::new();
    let r =
        kiln_fleet::plan::build_recipe(recipe, out, &dirs::cache_root(), refresh, force, &spinner)
            .with_context(|| format!("building {}", recipe.dir.display()));
    drop(spinner);
    r
}

fn print_build_summary(r: &kiln_bake::BuildReport) {
    let m = &r.manifest;
    eprintln!(
        "kiln: {} {} in {:.2} s: {}",
        m.name,
        if r.reused { "up to date" } else { "built" },
        r.elapsed.as_secs_f64(),
        r.out_dir.display()
    );
    eprintln!(
        "  {}  kernel {}",
        root_summary(&m.initramfs, m.files.len()),
        kernel_summary(&m.kernel)
    );
}

/// What the image folder's kernel file is, and its size as shipped when that differs (a
/// bzImage unpacked to its uncompressed vmlinux for PVH boot).
pub fn kernel_summary(k: &kiln_bake::manifest::KernelInfo) -> String {
    if k.file_size == k.size {
        format!("{} {}", human(k.file_size), k.file)
    } else {
        format!(
            "{} {} ({}, {} as shipped)",
            human(k.file_size),
            k.file,
            if k.boot == "pvh" {
                "uncompressed for PVH boot"
            } else {
                "as booted"
            },
            human(k.size)
        )
    }
}

/// `initramfs 1.50 MB (zstd, 299 files)` or `disk 12.58 MB (ext4, 2.60 MB used, 299 files)`.
pub fn root_summary(r: &kiln_bake::manifest::InitramfsInfo, files: usize) -> String {
    if r.is_disk() {
        format!(
            "disk {} ({}, {} used, {files} files)",
            human(r.size),
            if r.format == "disk" {
                "ext4"
            } else {
                r.format.as_str()
            },
            human(r.uncompressed_size)
        )
    } else {
        format!(
            "initramfs {} ({}, {files} files)",
            human(r.size),
            r.compression
        )
    }
}
