//! The guest kernel and its modules.
//!
//! This crate owns getting a bootable kernel ([`provision`]: a Debian
//! `linux-image-*` package through [`kiln_debpkg`], or a file the user
//! supplies), validating kernel files (bzImage or x86-64 `vmlinux`),
//! detecting tampering with a cached kernel, and computing which kernel
//! modules a guest needs ([`module_closure`], in load order) and how to read
//! them ([`read_module`], decompressing `.ko.xz`/`.ko.zst`/`.ko.gz`).

mod image;
mod modules;
pub mod pvh;
pub mod tiny;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use kiln_debpkg::{Cache, DebError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use image::{inspect_kernel, ImageFormat, KernelImageInfo};
pub use modules::{guest_rel_path, module_closure, module_index, read_module, Module, ModuleIndex};

/// The Debian kernel package used when a recipe names none.
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// Virtio modules every microvm guest needs.
pub const BASE_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_net",
    "virtio_blk",
    "virtio_console",
    "virtio_rng",
];

/// Modules for shared folders (`kiln run --share`): virtiofs, as Debian's cloud kernel has no
/// 9p. They are in every image but kiln-init loads them only when a share is mounted.
pub const SHARE_MODULES: &[&str] = &["fuse", "virtiofs"];

/// Errors from provisioning kernels and resolving modules.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Fetching or unpacking the kernel package failed.
    #[error(transparent)]
    Deb(#[from] DebError),
    /// A kernel file the user named does not exist.
    #[error("kernel file {path} does not exist: check the kernel path you passed")]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// A file is not a Linux kernel image.
    #[error(
        "{path} is not a Linux kernel image ({reason}): pass an x86 bzImage (arch/x86/boot/bzImage, /boot/vmlinuz-*) or an uncompressed x86-64 vmlinux"
    )]
    NotAKernel {
        /// The offending file.
        path: PathBuf,
        /// What it looks like instead.
        reason: String,
    },
    /// A kernel image is shorter than its own header says.
    #[error("{path} is truncated: its header needs at least {expected} bytes but the file has {actual}; copy or build the kernel again")]
    Truncated {
        /// The offending file.
        path: PathBuf,
        /// Minimum size according to the header.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// A cached kernel no longer matches the sha256 recorded when it was unpacked.
    #[error(
        "cached kernel {path} is corrupt (sha256 {actual}, expected {expected}): delete {tree} or run with --refresh"
    )]
    Corrupt {
        /// The kernel image.
        path: PathBuf,
        /// The unpacked package tree holding it.
        tree: PathBuf,
        /// The recorded sha256.
        expected: String,
        /// The sha256 of the file now.
        actual: String,
    },
    /// A Debian package that was expected to hold a kernel does not.
    #[error("package {package} has no boot/vmlinuz-* in {tree}: name a linux-image-* package")]
    NoKernelInPackage {
        /// The package name.
        package: String,
        /// Where it was unpacked.
        tree: PathBuf,
    },
    /// A modules directory is missing or unusable.
    #[error(
        "modules directory {path} is unusable: {reason}; pass a lib/modules/VERSION directory"
    )]
    ModulesDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A wanted module is neither a loadable module nor built in.
    #[error(
        "kernel {version} has no module `{name}` (neither a .ko file nor built in): check the name in kiln.toml or use another kernel"
    )]
    UnknownModule {
        /// The requested name.
        name: String,
        /// The kernel version (modules directory name).
        version: String,
    },
    /// A module depends on a module that is not there.
    #[error("module `{module}` of kernel {version} depends on `{dependency}`, which is missing from the modules directory; the module tree is incomplete")]
    MissingDependency {
        /// The module with the dependency.
        module: String,
        /// The missing dependency.
        dependency: String,
        /// The kernel version.
        version: String,
    },
    /// A module file cannot be read or parsed.
    #[error("kernel module {path} is unreadable: {reason}; the module tree may be corrupt (delete it or run with --refresh)")]
    BadModule {
        /// The module file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A filesystem operation failed.
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

pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> KernelError {
    let path = path.to_path_buf();
    move |error| KernelError::Io {
        action,
        path,
        error,
    }
}

/// Where the kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// A Debian kernel package (default [`DEFAULT_KERNEL_PACKAGE`]); meta
    /// packages resolve to the real `linux-image-*` package.
    Debian {
        /// Package name.
        package: String,
    },
    /// A kernel file the user supplies (bzImage or vmlinux); modules optional.
    Path {
        /// The kernel file.
        kernel: PathBuf,
        /// A `lib/modules/VERSION` directory matching the kernel.
        modules: Option<PathBuf>,
    },
}

impl Default for KernelSource {
    fn default() -> Self {
        KernelSource::Debian {
            package: DEFAULT_KERNEL_PACKAGE.to_string(),
        }
    }
}

/// A validated kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The kernel image (in the cache for Debian kernels, the user's file otherwise).
    pub image: PathBuf,
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64`, when known.
    pub version: Option<String>,
    /// `.../lib/modules/VERSION`, when modules are available.
    pub modules_dir: Option<PathBuf>,
    /// Lowercase hex sha256 of the image.
    pub sha256: String,
    /// Human-readable origin, e.g. `debian linux-image-6.1.0-56-cloud-amd64 6.1.192-2`.
    pub description: String,
    /// Image size in bytes.
    pub size: u64,
    /// Kiln's kernel patches built into it ([`tiny::PATCHES`] names; empty for other kernels).
    pub patches: Vec<String>,
    /// `CONFIG_HZ`, when known (tiny kernels): the guest's delay-loop rate follows from it.
    pub hz: Option<u32>,
}

/// What we remember about a kernel unpacked from a Debian package.
#[derive(Debug, Serialize, Deserialize)]
struct KernelRecord {
    /// Image path relative to the unpacked tree.
    image: String,
    sha256: String,
}

/// Provide the kernel described by `source`.
///
/// For Debian packages: fetch (cached, verified) and unpack through `cache`,
/// find `boot/vmlinuz-VERSION` and `lib/modules/VERSION`, and check the
/// image against the sha256 recorded the first time (a mismatch is
/// [`KernelError::Corrupt`]; `refresh` re-downloads and re-unpacks). For a
/// path: validate the file and the optional modules directory.
pub fn provision(
    cache: &Cache,
    source: &KernelSource,
    refresh: bool,
) -> Result<Kernel, KernelError> {
    match source {
        KernelSource::Debian { package } => provision_debian(cache, package, refresh),
        KernelSource::Path { kernel, modules } => provision_path(kernel, modules.as_deref()),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn read_kernel_file(path: &Path) -> Result<Vec<u8>, KernelError> {
    fs::read(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            KernelError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            io_err("read", path)(e)
        }
    })
}

fn provision_debian(cache: &Cache, package: &str, refresh: bool) -> Result<Kernel, KernelError> {
    let deb = cache.fetch(package, refresh)?;
    let tree = cache.unpack(&deb)?;
    let boot = tree.join("boot");
    let mut images: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(rd) = fs::read_dir(&boot) {
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(version) = name.strip_prefix("vmlinuz-") {
                images.push((version.to_string(), entry.path()));
            }
        }
    }
    images.sort();
    let Some((version, image)) = images.into_iter().next() else {
        return Err(KernelError::NoKernelInPackage {
            package: deb.package.clone(),
            tree,
        });
    };

    let bytes = read_kernel_file(&image)?;
    let sha256 = sha256_hex(&bytes);
    let record_path = tree.with_extension("kernel.json");
    let image_rel = format!("boot/vmlinuz-{version}");
    let record: Option<KernelRecord> = fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match record {
        Some(r) if !refresh && r.image == image_rel => {
            if r.sha256 != sha256 {
                return Err(KernelError::Corrupt {
                    path: image,
                    tree,
                    expected: r.sha256,
                    actual: sha256,
                });
            }
        }
        _ => {
            inspect_bytes(&image, &bytes)?;
            let record = KernelRecord {
                image: image_rel.clone(),
                sha256: sha256.clone(),
            };
            let json = serde_json::to_vec_pretty(&record)
                .map_err(|e| io_err("encode", &record_path)(e.into()))?;
            write_atomic(&record_path, &json)?;
        }
    }
    // Validate every time (cheap): a record only proves the bytes are unchanged.
    inspect_bytes(&image, &bytes)?;

    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| tree.join(d).join(&version))
        .find(|d| d.is_dir());
    Ok(Kernel {
        size: bytes.len() as u64,
        description: format!("debian {} {}", deb.package, deb.version),
        image,
        version: Some(version),
        modules_dir,
        sha256,
        patches: Vec::new(),
        hz: None,
    })
}

fn inspect_bytes(path: &Path, bytes: &[u8]) -> Result<KernelImageInfo, KernelError> {
    image::inspect_bytes(path, bytes)
}

fn provision_path(kernel: &Path, modules: Option<&Path>) -> Result<Kernel, KernelError> {
    let kernel = std::path::absolute(kernel).map_err(io_err("resolve", kernel))?;
    let bytes = read_kernel_file(&kernel)?;
    let info = inspect_bytes(&kernel, &bytes)?;
    let modules_dir = match modules {
        None => None,
        Some(dir) => {
            let dir = std::path::absolute(dir).map_err(io_err("resolve", dir))?;
            if !dir.is_dir() {
                return Err(KernelError::ModulesDir {
                    path: dir,
                    reason: "it is not a directory".into(),
                });
            }
            Some(dir)
        }
    };
    let dir_version = modules_dir
        .as_ref()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    if let (Some(k), Some(m)) = (&info.version, &dir_version) {
        if k != m {
            tracing::warn!(
                kernel = %kernel.display(), kernel_version = %k, modules_version = %m,
                "the modules directory name does not match the kernel release; modules may fail to load"
            );
        }
    }
    let version = info.version.clone().or(dir_version);
    let description = match &version {
        Some(v) => format!("file {} ({v})", kernel.display()),
        None => format!("file {}", kernel.display()),
    };
    Ok(Kernel {
        size: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
        image: kernel,
        version,
        modules_dir,
        description,
        patches: Vec::new(),
        hz: None,
    })
}

/// Write `data` to `path` atomically (temp file in the same dir, then rename).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), KernelError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err("create a temp file in", dir))?;
    tmp.write_all(data).map_err(io_err("write", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| io_err("write", path)(e.error))?;
    Ok(())
}
