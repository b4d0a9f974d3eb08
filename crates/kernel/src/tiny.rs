//! `kiln kernel build`: a tiny Linux kernel built from source for microVMs.
//!
//! [`build_tiny`] takes a kernel source (Debian's `linux-source-6.1` package
//! by default), runs `make tinyconfig`, applies Kiln's base fragment
//! ([`BASE_FRAGMENT`]) and the caller's extra fragments, checks with
//! [`check_config`] that Kconfig kept every requested value, applies Kiln's
//! kernel patches ([`PATCHES`], to copies in the object folder: the source
//! stays untouched), compiles `bzImage` out of tree, and stores a stripped PVH `vmlinux` (the boot
//! image: QEMU starts it directly, no decompression) and the `bzImage` in a
//! cache entry keyed by the source and the fragments.
//!
//! Cache layout under `cache_root`:
//! - `src/linux-<version>/`: the unpacked source, once per source
//!   (complete when it holds `.kiln-unpacked`).
//! - `kernels/tiny-<hash16>/`: `vmlinux`, `bzImage`, `.config`, `build.log`,
//!   `kernel.json`. Built in a `.tmp-*` folder beside it and renamed into place,
//!   so an entry either is complete or does not exist.
//! - `kernels/tiny-<hash16>.failed.log`: the log of the last failed build.
//!
//! Booting such a kernel needs different machine options and kernel
//! arguments than Debian's kernel: see [`TINY_MACHINE_OPTIONS`] and
//! `kiln_vm::cmdline::tiny_kernel_args`.

mod fragment;
mod make;
mod patch;
mod source;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use fragment::{
    check_config, check_known, effective_options, fragment_options, kconfig_symbols, merge_config,
    parse_dot_config, parse_fragment, FragmentOption, Mismatch, OptionValue,
};
pub use make::on_path;
pub use patch::{
    Patch, LAPIC_TIMER_PERIOD_PATCH, PAGE_REPORTING_ORDER_PATCH, PATCHES, SMALL_RINGS_PATCH,
};

/// Kiln's base fragment, applied on top of `make tinyconfig`.
pub const BASE_FRAGMENT: &str = include_str!("../fragments/kiln-base.config");
/// The name the base fragment has in messages and `kernel.json`.
pub const BASE_FRAGMENT_NAME: &str = "kiln-base.config";

/// Fragments Kiln adds to the base for a recipe's needs, built into the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// ext4, erofs, squashfs and overlayfs built in: roots on virtio-blk (disk images and
    /// read-only compressed ones).
    Roots,
    /// PCI and virtio-pci: the kernel of a bootable ISO or a netbooted PC.
    Pc,
}

impl Builtin {
    /// The fragment's file name (in `crates/kernel/fragments/`).
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Roots => "roots.config",
            Builtin::Pc => "pc.config",
        }
    }

    /// The fragment's text.
    pub fn text(self) -> &'static str {
        match self {
            Builtin::Roots => include_str!("../fragments/roots.config"),
            Builtin::Pc => include_str!("../fragments/pc.config"),
        }
    }
}
/// An example recipe fragment: UFS (BSD FFS) read support.
pub const UFS_FRAGMENT: &str = include_str!("../fragments/ufs.config");

/// Part of every cache key: bump it when the base fragment's meaning or the
/// build steps change in a way the fragment text does not show.
pub const FRAGMENT_VERSION: u32 = 1;

/// The Debian package whose tarball is the default source.
pub const DEFAULT_SOURCE_PACKAGE: &str = "linux-source-6.1";

/// Compile units (`CC` lines, host tools included) assumed for the progress
/// percentage before any build has recorded a real count (a base-fragment
/// build of 6.1 has about 970).
pub const DEFAULT_CC_ESTIMATE: u64 = 970;

/// `-M microvm,...` options a tiny kernel needs besides Kiln's usual
/// `x-option-roms=off,isa-serial=on`: no ACPI, so QEMU lists the virtio-mmio
/// devices on the kernel command line (`virtio_mmio.device=`). Keep
/// `pit`, `pic` and `rtc` at their defaults: without the PIT the kernel
/// panics ("IO-APIC + timer doesn't work"), without the PIC the serial
/// console stops, without the RTC the guest has no wall-clock time.
pub const TINY_MACHINE_OPTIONS: &str = "acpi=off";

/// Errors from building or listing tiny kernels.
#[derive(Debug, thiserror::Error)]
pub enum TinyError {
    /// The Debian source package is not installed.
    #[error("kernel source {path} is missing: install it with `apt-get install {package}`")]
    SourceNotInstalled {
        /// The package name.
        package: String,
        /// Where its tarball should be.
        path: PathBuf,
    },
    /// A source path does not exist or is not a kernel tree.
    #[error("{path} is not a Linux source tree ({reason}): pass an unpacked kernel source folder or a linux-*.tar.* tarball")]
    NotASourceTree {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tools needed to build a kernel is not installed.
    #[error("building a kernel needs {missing} on PATH: install them with `apt-get install build-essential flex bison bc libelf-dev xz-utils`")]
    MissingTools {
        /// The missing commands, comma-separated.
        missing: String,
    },
    /// A fragment line is not Kconfig syntax.
    #[error("{fragment}:{line}: `{text}`: {reason}")]
    BadFragment {
        /// The fragment's name.
        fragment: String,
        /// 1-based line.
        line: usize,
        /// The line.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// A fragment names an option that no Kconfig file defines.
    #[error("{fragment}:{line}: the kernel has no option {option} (no Kconfig file defines it): check the spelling, or whether it was renamed or removed in this kernel version")]
    UnknownOption {
        /// `CONFIG_NAME`.
        option: String,
        /// The fragment's name.
        fragment: String,
        /// 1-based line.
        line: usize,
    },
    /// `make olddefconfig` dropped or changed requested options.
    #[error("the kernel configuration did not keep what the fragments ask for (usually a missing dependency: add the options it `depends on` to the fragment):\n{}", list(.mismatches))]
    NotApplied {
        /// Every option that ended up different.
        mismatches: Vec<Mismatch>,
    },
    /// A `make` step failed.
    #[error("`make {step}` failed (exit {status}); the full log is {log}:\n{tail}")]
    BuildFailed {
        /// The make target.
        step: String,
        /// How make ended.
        status: String,
        /// The saved log.
        log: PathBuf,
        /// The last lines of output.
        tail: String,
    },
    /// A built image is not what it should be.
    #[error("the built kernel {path} is unusable: {reason}")]
    BadOutput {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// One of Kiln's kernel patches is malformed or does not apply to the source.
    #[error("kernel patch {patch}: {reason}; build from the Debian source Kiln expects (linux-source-6.1) or a tree of the same version")]
    BadPatch {
        /// The patch's name.
        patch: String,
        /// What is wrong.
        reason: String,
    },
    /// A fragment file the user named cannot be read.
    #[error("cannot read the kernel config fragment {path}: {error}; check the path you passed")]
    FragmentUnreadable {
        /// The fragment file.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// A filesystem or process operation failed.
    // The OS error is in the message, not a `source` (it would be printed twice with causes).
    #[error("cannot {action} {path}: {error}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
}

impl TinyError {
    /// Whether the error is the user's input (a fragment, an option, a source tree they named).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            TinyError::BadFragment { .. }
                | TinyError::UnknownOption { .. }
                | TinyError::NotApplied { .. }
                | TinyError::NotASourceTree { .. }
                | TinyError::FragmentUnreadable { .. }
                | TinyError::BadPatch { .. }
        )
    }
}

fn list(m: &[Mismatch]) -> String {
    m.iter()
        .map(|m| format!("  {m}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TinyError {
    let path = path.to_path_buf();
    move |error| TinyError::Io {
        action,
        path,
        error,
    }
}

/// Where the kernel source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TinySource {
    /// A Debian `linux-source-*` package's tarball,
    /// `/usr/src/<package>.tar.xz` (install it with apt).
    Debian {
        /// Package name, e.g. `linux-source-6.1`.
        package: String,
    },
    /// A kernel source tarball (`linux-*.tar.xz`, one top-level folder).
    Tarball(PathBuf),
    /// An unpacked, clean kernel source tree (built out of tree, never
    /// modified). Its identity is its path, version and newest file mtime.
    Tree(PathBuf),
}

impl Default for TinySource {
    fn default() -> Self {
        TinySource::Debian {
            package: DEFAULT_SOURCE_PACKAGE.to_string(),
        }
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyOptions {
    /// The kernel source.
    pub source: TinySource,
    /// Kiln's own fragments applied after the base fragment, in order.
    pub builtin: Vec<Builtin>,
    /// Fragments applied after the base and built-in fragments, in order (later wins).
    pub extra_fragments: Vec<PathBuf>,
    /// `make -j`; 0 means the number of available CPUs.
    pub jobs: usize,
    /// Kiln's cache folder (`src/` and `kernels/` go under it).
    pub cache_root: PathBuf,
}

impl TinyOptions {
    /// Defaults: Debian's `linux-source-6.1`, no extra fragments, one job per CPU.
    pub fn new(cache_root: impl Into<PathBuf>) -> Self {
        TinyOptions {
            source: TinySource::default(),
            builtin: Vec::new(),
            extra_fragments: Vec::new(),
            jobs: default_jobs(),
            cache_root: cache_root.into(),
        }
    }
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Progress reported by [`build_tiny`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TinyProgress {
    /// The kernel was already built: nothing to do.
    Cached {
        /// The cache entry.
        dir: PathBuf,
    },
    /// Another process is building the same kernel: waiting for it (then `Cached`).
    Waiting {
        /// The lock file it holds.
        lock: PathBuf,
    },
    /// Unpacking the source tarball (once per source; tens of seconds).
    Unpacking {
        /// The tarball.
        tarball: PathBuf,
        /// Where it goes.
        dest: PathBuf,
    },
    /// Configuring: `tinyconfig`, `fragments`, `olddefconfig`, `check`, `patches`.
    Configuring {
        /// The step.
        step: &'static str,
    },
    /// Compiling. Sent for every compiled file.
    Compiling {
        /// `CC` lines seen so far.
        units: u64,
        /// Expected total (a previous build's count, or [`DEFAULT_CC_ESTIMATE`]).
        expected: u64,
        /// `units / expected`, capped at 99 until the build ends.
        percent: u8,
        /// The file being compiled, e.g. `kernel/fork.o`.
        current: String,
    },
    /// Stripping and storing the images.
    Finishing,
    /// Built and stored.
    Done {
        /// The cache entry.
        dir: PathBuf,
        /// Wall-clock build time in seconds.
        seconds: u64,
    },
}

/// A built tiny kernel in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyKernel {
    /// Stripped, uncompressed ELF with the PVH entry note: the boot image.
    pub vmlinux: PathBuf,
    /// The compressed bzImage (for bootloaders and size comparisons).
    pub bzimage: PathBuf,
    /// sha256 cache key (hex) over the source identity, the fragments and
    /// [`FRAGMENT_VERSION`]; the folder name holds its first 16 digits.
    pub config_hash: String,
    /// Kernel release (`uname -r`), e.g. `6.1.192-kiln-tiny`.
    pub version: String,
    /// Size of `vmlinux` in bytes.
    pub size_vmlinux: u64,
    /// Size of `bzImage` in bytes.
    pub size_bzimage: u64,
    /// The cache entry folder.
    pub dir: PathBuf,
    /// The fragments it was built from, in order (the base first).
    pub fragments: Vec<String>,
    /// Seconds since the epoch when the build finished.
    pub built_at: u64,
    /// Wall-clock seconds the build took.
    pub build_seconds: u64,
    /// `CONFIG_HZ` (100 with the base fragment).
    pub hz: u32,
    /// The names of Kiln's patches it was built with.
    pub patches: Vec<String>,
}

/// `kernel.json` in a cache entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    kiln_fragment_version: u32,
    version: String,
    config_hash: String,
    source: String,
    fragments: Vec<FragmentRecord>,
    #[serde(default)]
    patches: Vec<FragmentRecord>,
    size_vmlinux: u64,
    size_bzimage: u64,
    cc_lines: u64,
    build_seconds: u64,
    built_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FragmentRecord {
    name: String,
    sha256: String,
}

impl FragmentRecord {
    /// A fragment or patch as kernel.json records it: its name and the sha256 of its text.
    fn of(name: &str, text: &str) -> FragmentRecord {
        FragmentRecord {
            name: name.to_string(),
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        }
    }
}

const RECORD: &str = "kernel.json";

/// A fragment's name (as shown to users) and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Name in messages.
    pub name: String,
    /// Its text.
    pub text: String,
}

/// The base fragment followed by the extra fragment files, read.
pub fn load_fragments(extra: &[PathBuf]) -> Result<Vec<Fragment>, TinyError> {
    let mut out = vec![Fragment {
        name: BASE_FRAGMENT_NAME.to_string(),
        text: BASE_FRAGMENT.to_string(),
    }];
    for path in extra {
        let text =
            std::fs::read_to_string(path).map_err(|error| TinyError::FragmentUnreadable {
                path: path.clone(),
                error,
            })?;
        out.push(Fragment {
            name: path.display().to_string(),
            text,
        });
    }
    Ok(out)
}

/// The cache key: sha256 hex over the source identity, every fragment's
/// content (in order), Kiln's patches and [`FRAGMENT_VERSION`]. Fragment
/// names do not count: moving a fragment file does not rebuild.
pub fn cache_key(source_identity: &str, fragments: &[Fragment]) -> String {
    let mut h = Sha256::new();
    h.update(format!("kiln-tiny-kernel v{FRAGMENT_VERSION}\n").as_bytes());
    h.update(format!("source {} {source_identity}\n", source_identity.len()).as_bytes());
    for f in fragments {
        h.update(format!("fragment {}\n", f.text.len()).as_bytes());
        h.update(f.text.as_bytes());
    }
    for p in PATCHES {
        h.update(format!("patch {}\n", p.text.len()).as_bytes());
        h.update(p.text.as_bytes());
    }
    hex::encode(h.finalize())
}

fn entry_dir(cache_root: &Path, hash: &str) -> PathBuf {
    cache_root
        .join("kernels")
        .join(format!("tiny-{}", &hash[..16]))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Take the build lock of cache key `hash` (a file beside the entries), waiting if another
/// process holds it; released when the returned file is dropped (or the process dies).
fn lock_key(
    kernels: &Path,
    hash: &str,
    progress: &dyn Fn(TinyProgress),
) -> Result<std::fs::File, TinyError> {
    let path = kernels.join(format!(".tiny-{}.lock", &hash[..16]));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open the build lock", &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            progress(TinyProgress::Waiting { lock: path.clone() });
            file.lock().map_err(io_err("take the build lock", &path))?;
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(io_err("take the build lock", &path)(e));
        }
    }
    Ok(file)
}

/// Build (or find in the cache) the tiny kernel `opts` describe.
///
/// Needs `make`, `gcc`, `flex`, `bison`, `bc`, `tar`, `xz` and `strip`; a
/// 6.1 build takes a few minutes on 2 cores. See the module docs for the cache
/// layout. Errors name the failing step and keep the log.
pub fn build_tiny(
    opts: &TinyOptions,
    progress: &dyn Fn(TinyProgress),
) -> Result<TinyKernel, TinyError> {
    let mut fragments = load_fragments(&opts.extra_fragments)?;
    let builtin = opts.builtin.iter().map(|b| Fragment {
        name: b.name().to_string(),
        text: b.text().to_string(),
    });
    fragments.splice(1..1, builtin);
    let mut requested = Vec::new();
    for f in &fragments {
        requested.extend(parse_fragment(&f.name, &f.text)?);
    }
    let cache_root =
        std::path::absolute(&opts.cache_root).map_err(io_err("resolve", &opts.cache_root))?;
    let src = source::Source::resolve(&opts.source)?;
    let hash = cache_key(&src.identity, &fragments);
    let dir = entry_dir(&cache_root, &hash);
    if let Some(k) = read_entry(&dir) {
        progress(TinyProgress::Cached { dir: dir.clone() });
        return Ok(k);
    }
    let kernels = cache_root.join("kernels");
    std::fs::create_dir_all(&kernels).map_err(io_err("create", &kernels))?;
    // One build per key at a time: concurrent `kiln build`s of recipes on the same kernel
    // wait for the first instead of compiling it twice on the same cores.
    let _lock = lock_key(&kernels, &hash, progress)?;
    if let Some(k) = read_entry(&dir) {
        progress(TinyProgress::Cached { dir: dir.clone() });
        return Ok(k);
    }
    make::check_tools()?;

    let started = Instant::now();
    let tree = src.prepare(&cache_root, progress)?;
    let known = kconfig_symbols(&tree)?;
    check_known(&requested, &known)?;

    source::remove_stale_temps(&kernels);
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".tmp-tiny-{}-", &hash[..16]))
        .tempdir_in(&kernels)
        .map_err(io_err("create a build folder in", &kernels))?;
    let failed_log = kernels.join(format!("tiny-{}.failed.log", &hash[..16]));
    let jobs = if opts.jobs == 0 {
        default_jobs()
    } else {
        opts.jobs
    };
    let mut run = make::Make::new(&tree, tmp.path(), jobs, &failed_log)?;

    progress(TinyProgress::Configuring { step: "tinyconfig" });
    run.run(&["tinyconfig"], None)?;
    progress(TinyProgress::Configuring { step: "fragments" });
    let dot_config = run.obj.join(".config");
    let base = std::fs::read_to_string(&dot_config).map_err(io_err("read", &dot_config))?;
    std::fs::write(&dot_config, merge_config(&base, &requested))
        .map_err(io_err("write", &dot_config))?;
    progress(TinyProgress::Configuring {
        step: "olddefconfig",
    });
    run.run(&["olddefconfig"], None)?;
    progress(TinyProgress::Configuring { step: "check" });
    let final_config = std::fs::read_to_string(&dot_config).map_err(io_err("read", &dot_config))?;
    check_config(&requested, &final_config, &known)?;

    progress(TinyProgress::Configuring { step: "patches" });
    for p in PATCHES {
        patch::apply(&tree, &run.obj, p)?;
    }

    let expected = previous_cc_lines(&kernels).unwrap_or(DEFAULT_CC_ESTIMATE);
    let cc_lines = run.run(&["bzImage"], Some((expected, progress)))?;

    progress(TinyProgress::Finishing);
    let out = tmp.path();
    let vmlinux = out.join("vmlinux");
    let bzimage = out.join("bzImage");
    run.strip(&run.obj.join("vmlinux"), &vmlinux)?;
    let bz_src = run.obj.join("arch/x86/boot/bzImage");
    std::fs::copy(&bz_src, &bzimage).map_err(io_err("copy", &bz_src))?;
    std::fs::write(out.join(".config"), &final_config).map_err(io_err("write", out))?;
    check_pvh(&vmlinux)?;
    crate::inspect_kernel(&bzimage).map_err(|e| TinyError::BadOutput {
        path: bzimage.clone(),
        reason: e.to_string(),
    })?;
    let release = run.obj.join("include/config/kernel.release");
    let version = std::fs::read_to_string(&release)
        .map_err(io_err("read", &release))?
        .trim()
        .to_string();
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(io_err("stat", p))
    };
    let record = Record {
        kiln_fragment_version: FRAGMENT_VERSION,
        version,
        config_hash: hash.clone(),
        source: src.identity.clone(),
        fragments: fragments
            .iter()
            .map(|f| FragmentRecord::of(&f.name, &f.text))
            .collect(),
        patches: PATCHES
            .iter()
            .map(|p| FragmentRecord::of(p.name, p.text))
            .collect(),
        size_vmlinux: size(&vmlinux)?,
        size_bzimage: size(&bzimage)?,
        cc_lines,
        build_seconds: started.elapsed().as_secs(),
        built_at: now_secs(),
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|e| io_err("encode", out)(e.into()))?;
    std::fs::write(out.join(RECORD), json).map_err(io_err("write", out))?;
    // The object tree is hundreds of MB and keyed by nothing: drop it.
    let obj = run.obj.clone();
    drop(run);
    std::fs::remove_dir_all(&obj).map_err(io_err("remove", &obj))?;

    let staged = tmp.keep();
    match std::fs::rename(&staged, &dir) {
        Ok(()) => {}
        Err(e) => {
            // Another build of the same key won the race: use its result.
            let _ = std::fs::remove_dir_all(&staged);
            if read_entry(&dir).is_none() {
                return Err(io_err("move the built kernel to", &dir)(e));
            }
        }
    }
    let _ = std::fs::remove_file(&failed_log);
    let kernel = read_entry(&dir).ok_or_else(|| TinyError::BadOutput {
        path: dir.join(RECORD),
        reason: "the cache entry just written cannot be read back".into(),
    })?;
    progress(TinyProgress::Done {
        dir,
        seconds: started.elapsed().as_secs(),
    });
    Ok(kernel)
}

/// Check that an ELF has the PVH entry note (Xen note type 18,
/// `XEN_ELFNOTE_PHYS32_ENTRY`), which QEMU needs to boot it directly.
pub fn check_pvh(vmlinux: &Path) -> Result<(), TinyError> {
    let bytes = std::fs::read(vmlinux).map_err(io_err("read", vmlinux))?;
    let bad = |reason: String| TinyError::BadOutput {
        path: vmlinux.to_path_buf(),
        reason,
    };
    goblin::elf::Elf::parse(&bytes).map_err(|e| bad(format!("not an ELF file: {e}")))?;
    if crate::pvh::has_pvh_note(&bytes) {
        Ok(())
    } else {
        Err(bad(
            "it has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): the configuration lacks CONFIG_PVH".into(),
        ))
    }
}

fn read_record(dir: &Path) -> Option<Record> {
    let bytes = std::fs::read(dir.join(RECORD)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn read_entry(dir: &Path) -> Option<TinyKernel> {
    let r = read_record(dir)?;
    let vmlinux = dir.join("vmlinux");
    let bzimage = dir.join("bzImage");
    if !vmlinux.is_file() || !bzimage.is_file() {
        return None;
    }
    Some(TinyKernel {
        vmlinux,
        bzimage,
        config_hash: r.config_hash,
        version: r.version,
        size_vmlinux: r.size_vmlinux,
        size_bzimage: r.size_bzimage,
        dir: dir.to_path_buf(),
        fragments: r.fragments.into_iter().map(|f| f.name).collect(),
        built_at: r.built_at,
        build_seconds: r.build_seconds,
        hz: std::fs::read_to_string(dir.join(".config"))
            .ok()
            .and_then(|c| match parse_dot_config(&c).get("HZ") {
                Some(OptionValue::Value(v)) => v.parse().ok(),
                _ => None,
            })
            .unwrap_or(100),
        patches: r.patches.into_iter().map(|p| p.name).collect(),
    })
}

/// The `CC` count of the newest previous build (for the progress estimate).
fn previous_cc_lines(kernels: &Path) -> Option<u64> {
    std::fs::read_dir(kernels)
        .ok()?
        .flatten()
        .filter_map(|e| read_record(&e.path()))
        .filter(|r| r.cc_lines > 0)
        .max_by_key(|r| r.built_at)
        .map(|r| r.cc_lines)
}

/// The tiny kernels in the cache, newest first. Incomplete or foreign
/// folders are skipped.
pub fn list_tiny(cache_root: &Path) -> Vec<TinyKernel> {
    let Ok(rd) = std::fs::read_dir(cache_root.join("kernels")) else {
        return Vec::new();
    };
    let mut out: Vec<TinyKernel> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tiny-"))
        .filter_map(|e| read_entry(&e.path()))
        .collect();
    out.sort_by(|a, b| b.built_at.cmp(&a.built_at).then(a.dir.cmp(&b.dir)));
    out
}

#[cfg(test)]
mod tests;
