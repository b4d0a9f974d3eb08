//! `kiln kernel build` and `kiln kernel list`: Kiln's tiny kernel, built from Debian's
//! linux-source with Kiln's fragments (and any the user adds), cached by their hash.

use crate::{dirs, human};
use anyhow::Result;
use clap::Subcommand;
use kiln_kernel::tiny::{self, TinyOptions, TinyProgress, TinySource};
use std::path::PathBuf;
use std::process::ExitCode;

/// `kiln kernel …`.
#[derive(Subcommand, Debug)]
pub enum KernelCmd {
    /// Build the tiny kernel (or find it in the cache) and print where it is.
    Build {
        /// An extra config fragment (repeatable), e.g. crates/kernel/fragments/ufs.config.
        #[arg(long = "fragment", short = 'f')]
        fragments: Vec<PathBuf>,
        /// One of Kiln's own fragments (repeatable): `roots` (erofs, squashfs, overlayfs:
        /// what `format = "erofs" | "squashfs"` adds) or `pc` (PCI and virtio-pci: what
        /// `format = "iso"` and `kiln netboot` add).
        #[arg(long = "with", value_enum)]
        with: Vec<BuiltinArg>,
        /// A kernel source tree to build instead of Debian's linux-source-6.1.
        #[arg(long)]
        source: Option<PathBuf>,
        /// Parallel jobs (default: the number of cores).
        #[arg(short = 'j', long)]
        jobs: Option<usize>,
    },
    /// List the cached tiny kernels with their sizes and config hash.
    List,
}

/// Kiln's built-in fragments as `--with` names them.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum BuiltinArg {
    /// ext4, erofs, squashfs and overlayfs.
    Roots,
    /// PCI and virtio-pci.
    Pc,
}

impl From<BuiltinArg> for tiny::Builtin {
    fn from(b: BuiltinArg) -> Self {
        match b {
            BuiltinArg::Roots => tiny::Builtin::Roots,
            BuiltinArg::Pc => tiny::Builtin::Pc,
        }
    }
}

/// Run a `kiln kernel` command.
pub fn run(cmd: KernelCmd) -> Result<ExitCode> {
    match cmd {
        KernelCmd::Build {
            fragments,
            with,
            source,
            jobs,
        } => {
            let mut opts = TinyOptions::new(dirs::cache_root());
            opts.builtin = with.into_iter().map(Into::into).collect();
            opts.extra_fragments = fragments;
            if let Some(s) = source {
                opts.source = TinySource::Tree(s);
            }
            if let Some(j) = jobs {
                opts.jobs = j.max(1);
            }
            let bar = indicatif::ProgressBar::new(100);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos:>3}% {msg} [{elapsed}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix("kernel");
            // Without a terminal (CI logs) the bar is hidden: say each phase on a line instead.
            let lines = !std::io::IsTerminal::is_terminal(&std::io::stderr());
            let last_tenth = std::cell::Cell::new(u8::MAX);
            let say = |m: &str| {
                if lines {
                    eprintln!("kernel: {m}");
                }
            };
            let k = tiny::build_tiny(&opts, &|p| match p {
                TinyProgress::Waiting { .. } => {
                    say("waiting for another build of this kernel");
                    bar.set_message("waiting for another build of this kernel")
                }
                TinyProgress::Unpacking { .. } => {
                    say("unpacking linux-source");
                    bar.set_message("unpacking linux-source")
                }
                TinyProgress::Configuring { step } => {
                    say(step);
                    bar.set_message(step.to_string())
                }
                TinyProgress::Compiling {
                    percent, current, ..
                } => {
                    if percent / 10 != last_tenth.get() {
                        last_tenth.set(percent / 10);
                        say(&format!("compiling {percent}% ({current})"));
                    }
                    bar.set_position(percent as u64);
                    bar.set_message(current);
                }
                TinyProgress::Finishing => {
                    say("stripping");
                    bar.set_message("stripping")
                }
                _ => {}
            })?;
            bar.finish_and_clear();
            println!(
                "{}  {}  vmlinux {}  bzImage {}  config {}",
                k.version,
                k.dir.display(),
                human(k.size_vmlinux),
                human(k.size_bzimage),
                &k.config_hash[..16]
            );
            Ok(ExitCode::SUCCESS)
        }
        KernelCmd::List => {
            let list = tiny::list_tiny(&dirs::cache_root());
            if list.is_empty() {
                eprintln!("kiln: no tiny kernel cached yet; build one with `kiln kernel build`");
            }
            for k in list {
                println!(
                    "{:<22} bzImage {:>9}  vmlinux {:>9}  config {}  fragments {}",
                    k.version,
                    human(k.size_bzimage),
                    human(k.size_vmlinux),
                    &k.config_hash[..16],
                    k.fragments.join(",")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
