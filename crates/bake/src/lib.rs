//! The recipe → image pipeline: provision the kernel and busybox, assemble the staging tree,
//! run the hooks, pack the initramfs, and write the image folder (kernel, initramfs,
//! manifest.json) atomically.
//!
//! An image folder is only ever seen complete: it is built beside its destination under a
//! temporary name and renamed into place. A build whose inputs have not changed (same
//! fingerprint) reuses the existing folder.

mod bsd;
pub mod dockerfile;
pub mod expand;
mod fingerprint;
pub mod formats;
mod hidden;
pub mod manifest;
pub mod netboot;
pub mod oci;
mod packages;
pub mod travel;
mod workdir;

pub use packages::{Variant, TRACE_MARKER};

pub use manifest::{BootConfig, ImageManifest, InitramfsInfo, KernelInfo};

use kiln_debpkg::Cache;
use kiln_image::WorkDir;
use kiln_kernel::{KernelSource, BASE_MODULES, SHARE_MODULES};
use kiln_recipe::{KernelChoice, Recipe};
use kiln_rootfs::elf::{NodeKind, Resolver};
use kiln_rootfs::index::{IndexError, IndexLine};
use kiln_rootfs::{RootfsError, Staging};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The name of the manifest in an image folder.
pub const MANIFEST: &str = "manifest.json";
/// The kernel's file name in an image folder (a bzImage).
pub const KERNEL_FILE: &str = "vmlinuz";
/// The kernel's file name in an image folder when it boots through PVH (uncompressed ELF).
pub const PVH_KERNEL_FILE: &str = "vmlinux";
/// The root disk image's file name in an image folder (`format = "disk"`).
pub const DISK_FILE: &str = "root.ext4";
/// A BSD guest's root disk image's file name.
pub const FFS_DISK_FILE: &str = "root.ffs";
/// A BSD guest's kernel's file name in an image folder (the user's file, as given).
pub const BSD_KERNEL_FILE: &str = "kernel";
/// The Debian package busybox comes from.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Errors of the build pipeline.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The recipe is invalid.
    #[error(transparent)]
    Recipe(#[from] kiln_recipe::RecipeError),
    /// A Debian package could not be had.
    #[error(transparent)]
    Package(#[from] kiln_debpkg::DebError),
    /// The kernel could not be provisioned.
    #[error(transparent)]
    Kernel(#[from] kiln_kernel::KernelError),
    /// The tiny kernel could not be built.
    #[error(transparent)]
    Tiny(#[from] kiln_kernel::tiny::TinyError),
    /// One of Kiln's own programs could not be built for the recipe's `[root]` key (`applets`
    /// for busybox, `dropbear` for dropbear and sftp-server).
    #[error("{file}: root.{key}: {error}")]
    Userland {
        /// The recipe's kiln.toml.
        file: PathBuf,
        /// The `[root]` key that asked for it.
        key: &'static str,
        /// What went wrong.
        error: Box<kiln_userland::UserlandError>,
    },
    /// Root filesystem assembly failed.
    #[error(transparent)]
    Rootfs(#[from] kiln_rootfs::RootfsError),
    /// Packing failed.
    #[error(transparent)]
    Image(#[from] kiln_image::ImageError),
    /// A Dockerfile Kiln cannot turn into a recipe.
    #[error("{}:{line}: {message}", .file.display())]
    Dockerfile {
        /// The Dockerfile.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong and what to do.
        message: String,
    },
    /// A host binary listed in the recipe cannot be used.
    #[error("{location}: root.binaries: {message}")]
    Binary {
        /// kiln.toml:LINE.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A host file listed in the recipe cannot be used.
    #[error("{location}: root.files: {message}")]
    File {
        /// kiln.toml:LINE.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// The recipe's kernel file is not usable.
    #[error("{location}: kernel: {message}")]
    BadKernel {
        /// kiln.toml:LINE.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// `root.modules` cannot be had from the chosen kernel.
    #[error("{location}: root.modules: {message}")]
    Modules {
        /// kiln.toml:LINE.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// The recipe's `from` image cannot be used.
    #[error("{location}: from: {message}")]
    From {
        /// kiln.toml:LINE.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// The recipe's `user` is not in the root's user database.
    #[error("{location}: user: {message}")]
    User {
        /// kiln.toml:LINE.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// An OCI image could not be had or unpacked.
    #[error(transparent)]
    Oci(#[from] kiln_oci::OciError),
    /// kiln-init was not found.
    #[error("kiln-init (the guest init) not found at {}: build it with `make init`, or set KILN_INIT to its path", .0.display())]
    NoInit(PathBuf),
    /// An image folder is not usable.
    #[error("{}: {message}", .path.display())]
    BadImage {
        /// The folder or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An I/O error on a named path.
    // The OS error is in the message, not a `source` (it would be printed twice with causes).
    #[error("{}: {error}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

impl BuildError {
    /// Whether the error is the user's input (a recipe, a file, a kernel or package they named:
    /// exit code 2) rather than a failure of the machine (1).
    pub fn is_user_error(&self) -> bool {
        use kiln_rootfs::RootfsError as R;
        match self {
            BuildError::Recipe(_)
            | BuildError::Binary { .. }
            | BuildError::File { .. }
            | BuildError::Modules { .. }
            | BuildError::BadKernel { .. }
            | BuildError::From { .. }
            | BuildError::User { .. }
            | BuildError::Dockerfile { .. }
            | BuildError::BadImage { .. } => true,
            BuildError::Oci(e) => e.is_user_error(),
            BuildError::Rootfs(
                R::Elf(_)
                | R::Index(_)
                | R::HookFailed { .. }
                | R::HookTimedOut { .. }
                | R::Set { .. }
                | R::Staging { .. },
            ) => true,
            BuildError::Image(
                kiln_image::ImageError::DiskTooSmall { .. }
                | kiln_image::ImageError::UnsupportedFileType { .. }
                | kiln_image::ImageError::PathTooLong { .. },
            ) => true,
            BuildError::Package(kiln_debpkg::DebError::UnknownPackage { .. }) => true,
            BuildError::Kernel(
                kiln_kernel::KernelError::UnknownModule { .. }
                | kiln_kernel::KernelError::NotFound { .. }
                | kiln_kernel::KernelError::NotAKernel { .. }
                | kiln_kernel::KernelError::Truncated { .. },
            ) => true,
            BuildError::Tiny(t) => t.is_user_error(),
            BuildError::Userland { error, .. } => error.is_user_error(),
            _ => false,
        }
    }
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.into();
    move |error| BuildError::Io { path, error }
}

/// Progress reporting for long steps (the CLI shows a spinner).
pub trait Progress {
    /// A new phase starts.
    fn phase(&self, name: &str);
    /// A line of output (e.g. from a hook).
    fn log(&self, line: &str);
}

/// A progress sink that shows nothing.
pub struct Quiet;
impl Progress for Quiet {
    fn phase(&self, _: &str) {}
    fn log(&self, _: &str) {}
}

/// What a build needs besides the recipe.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The image folder to write.
    pub out_dir: PathBuf,
    /// The download cache.
    pub cache_root: PathBuf,
    /// The kiln-init binary to install as /init.
    pub init_binary: PathBuf,
    /// Re-download packages even when cached.
    pub refresh: bool,
    /// Rebuild even when the fingerprint matches.
    pub force: bool,
}

/// The result of a build.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The image folder.
    pub out_dir: PathBuf,
    /// Its manifest.
    pub manifest: ImageManifest,
    /// True when an up-to-date image was reused.
    pub reused: bool,
    /// Wall time of the build.
    pub elapsed: Duration,
}

/// Where kiln-init is: `$KILN_INIT`, else `../guest/kiln-init` relative to the running
/// executable (the cargo target folder, where `make init` puts it), else `../lib/kiln/kiln-init`
/// (an installed layout).
pub fn find_init() -> Result<PathBuf, BuildError> {
    if let Ok(p) = std::env::var("KILN_INIT") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(BuildError::NoInit(p))
        };
    }
    let exe = std::env::current_exe().map_err(io("current executable"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join("../guest/kiln-init"),
        dir.join("../lib/kiln/kiln-init"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| BuildError::NoInit(candidates[0].clone()))
}

/// Build `recipe` into `opts.out_dir`.
pub fn build(
    recipe: &Recipe,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport, BuildError> {
    build_variant(recipe, opts, &Variant::Normal, progress)
}

/// Build `recipe` into `opts.out_dir` as `variant`: the normal image, every package file with
/// the access tracer on (for `kiln trace`), or with another index.
pub fn build_variant(
    recipe: &Recipe,
    opts: &BuildOptions,
    variant: &Variant,
    progress: &dyn Progress,
) -> Result<BuildReport, BuildError> {
    if recipe.config.guest.is_bsd() {
        return bsd::build_bsd(recipe, opts, progress);
    }
    let started = Instant::now();
    if !opts.init_binary.is_file() {
        return Err(BuildError::NoInit(opts.init_binary.clone()));
    }
    let b = Build {
        recipe,
        opts,
        variant,
        progress,
    };
    let cache = Cache::new(opts.cache_root.clone());
    let inputs = b.provision(&cache)?;
    let fp = b.fingerprint(&inputs)?;
    if let Some(r) = reuse_if_fresh(opts, &fp, started) {
        return Ok(r);
    }

    let (work, staging_dir, image_dir) = workspace(&opts.out_dir)?;
    let (mut st, base_unmatched) = b.stage_skeleton(&staging_dir, &inputs)?;
    let package_unmatched = b.stage_packages(&mut st, &inputs)?;
    b.refuse_unmatched(&inputs, base_unmatched, package_unmatched)?;
    let package_root = inputs.pkgs.as_ref().map(|p| p.root.dir.as_path());
    install_binaries(recipe, &mut st, package_root)?;
    install_files(recipe, &mut st)?;
    b.stage_trace_marker(&mut st)?;
    let (modules, module_names) = stage_modules(&mut st, recipe, &inputs.kernel)?;
    write_init_conf(&mut st, recipe, &modules)?;
    let rc_reason = "the service's entry script (etc/rc)";
    let files = recipe_layers(&mut st, recipe, rc_reason, progress)?;

    let root_image = b.pack_root(&staging_dir, &image_dir, &fp, &owners_of(&files))?;
    let kernel = place_kernel(&inputs.kernel, &opts.cache_root, &image_dir)?;
    let pc = b.pack_iso(&inputs.kernel, &root_image, &image_dir)?;
    let mut manifest = b.manifest(&inputs, fp, kernel, root_image, module_names, files);
    manifest.pc = pc;
    install(work, &image_dir, manifest, opts, started)
}

/// The owners other than root's that the file list names, by path in the staging tree.
fn owners_of(files: &[kiln_rootfs::FileEntry]) -> kiln_image::Owners {
    files
        .iter()
        .filter(|f| (f.uid, f.gid) != (0, 0))
        .map(|f| {
            (
                PathBuf::from(f.path.trim_start_matches('/')),
                (f.uid, f.gid),
            )
        })
        .collect()
}

/// What every stage of one Linux build shares: recipe, options, variant and progress sink.
struct Build<'a> {
    recipe: &'a Recipe,
    opts: &'a BuildOptions,
    variant: &'a Variant,
    progress: &'a dyn Progress,
}

/// What a build provisioned before it is fingerprinted.
struct Inputs {
    /// The kernel to boot.
    kernel: kiln_kernel::Kernel,
    /// busybox's binary and its origin (`package version`), when the recipe wants it.
    busybox: Option<(PathBuf, String)>,
    /// Kiln's dropbear and sftp-server, when the recipe asks for them.
    dropbear: Option<Ssh>,
    /// The recipe's packages, when it has any.
    pkgs: Option<packages::Provisioned>,
    /// The index file in effect, if any.
    index: Option<PathBuf>,
    /// The recipe's `from` image, pulled.
    base: Option<kiln_oci::Pulled>,
}

impl Build<'_> {
    /// Provision the kernel, busybox and the packages, and find the index in effect.
    fn provision(&self, cache: &Cache) -> Result<Inputs, BuildError> {
        // The image first: a bad reference is refused before minutes of kernel building.
        let base = oci::pull_base(self.recipe, &self.opts.cache_root, self.progress)?;
        let kernel = self.provision_kernel(cache)?;
        let busybox = self.provision_busybox(cache)?;
        let dropbear = self.provision_dropbear(cache)?;
        let pkgs = if self.recipe.config.packages.is_empty() {
            None
        } else {
            self.progress.phase("packages");
            Some(packages::provision(self.recipe, cache, self.opts.refresh)?)
        };
        let index = self.variant.index(self.recipe);
        Ok(Inputs {
            kernel,
            busybox,
            dropbear,
            pkgs,
            index,
            base,
        })
    }

    /// The recipe's kernel: a Debian package, the user's file, or Kiln's tiny kernel.
    fn provision_kernel(&self, cache: &Cache) -> Result<kiln_kernel::Kernel, BuildError> {
        let (recipe, opts, cfg) = (self.recipe, self.opts, &self.recipe.config);
        self.progress.phase("kernel");
        let kernel = match &cfg.kernel {
            KernelChoice::Debian(pkg) => kiln_kernel::provision(
                cache,
                &KernelSource::Debian {
                    package: pkg.clone(),
                },
                opts.refresh,
            )?,
            KernelChoice::File(p) => kiln_kernel::provision(
                cache,
                &KernelSource::Path {
                    kernel: recipe.resolve(p.get_ref()),
                    modules: None,
                },
                opts.refresh,
            )?,
            KernelChoice::Tiny => {
                if let Some(m) = cfg.root.modules.first() {
                    return Err(BuildError::Modules {
                        location: recipe.locate(m.span()),
                        message: format!(
                            "`{}`: the tiny kernel has no loadable modules (everything is built in); turn the option on with kernel_fragments, or set kernel = \"debian\"",
                            m.get_ref()
                        ),
                    });
                }
                tiny_kernel(recipe, &opts.cache_root, self.progress)?
            }
        };
        Ok(kernel)
    }

    /// busybox's binary and its origin (`package version`, or Kiln's build), when the recipe
    /// wants busybox.
    fn provision_busybox(&self, cache: &Cache) -> Result<Option<(PathBuf, String)>, BuildError> {
        if !self.recipe.config.root.busybox {
            return Ok(None);
        }
        if let Some(applets) = &self.recipe.config.root.applets {
            let opts = kiln_userland::busybox::Options {
                cache_root: self.opts.cache_root.clone(),
                applets: applets.iter().map(|a| a.get_ref().clone()).collect(),
                jobs: jobs(),
            };
            let bb = kiln_userland::busybox::build(&opts, cache, &|step| self.progress.phase(step))
                .map_err(|error| BuildError::Userland {
                    file: self.recipe.config_path(),
                    key: "applets",
                    error: Box::new(error),
                })?;
            return Ok(Some((bb.binary, bb.identity)));
        }
        self.progress.phase("busybox");
        let deb = cache.fetch(BUSYBOX_PACKAGE, self.opts.refresh)?;
        let tree = cache.unpack(&deb)?;
        Ok(Some((
            tree.join("bin/busybox"),
            format!("{} {}", deb.package, deb.version),
        )))
    }

    /// Kiln's dropbear and sftp-server, when the recipe sets `[root] dropbear = true`.
    fn provision_dropbear(&self, cache: &Cache) -> Result<Option<Ssh>, BuildError> {
        if !self.recipe.config.root.dropbear {
            return Ok(None);
        }
        let root = &self.opts.cache_root;
        let progress = |step: &str| self.progress.phase(step);
        let failed = |error| BuildError::Userland {
            file: self.recipe.config_path(),
            key: "dropbear",
            error: Box::new(error),
        };
        let dropbear =
            kiln_userland::dropbear::build(root, jobs(), cache, &progress).map_err(failed)?;
        let sftp_server =
            kiln_userland::sftp_server::build(root, jobs(), cache, &progress).map_err(failed)?;
        Ok(Some(Ssh {
            dropbear,
            sftp_server,
        }))
    }

    /// The build's fingerprint: the recipe and its inputs, the package set and the index's hash.
    fn fingerprint(&self, inputs: &Inputs) -> Result<String, BuildError> {
        let mut extra = self.variant.describe(self.recipe);
        if let Some(ssh) = &inputs.dropbear {
            extra.push_str(&format!(
                "\n{}\n{}",
                ssh.dropbear.identity, ssh.sftp_server.identity
            ));
        }
        if let Some(b) = &inputs.base {
            // A tag that moves to another image is another build.
            extra.push_str(&format!("\nfrom {}", b.manifest_digest));
        }
        if let Some(p) = &inputs.pkgs {
            extra.push('\n');
            extra.push_str(&p.set.identity());
        }
        if let Some(i) = &inputs.index {
            // An index outside the recipe folder is not covered by the recipe's hash.
            let text = std::fs::read(i).map_err(io(i))?;
            extra.push_str(&format!(
                "\nindex {}",
                hex::encode(sha2::Sha256::digest(&text))
            ));
        }
        fingerprint::compute_with(
            self.recipe,
            &inputs.kernel.sha256,
            inputs.busybox.as_ref().map(|b| b.1.as_str()),
            &self.opts.init_binary,
            &extra,
        )
    }

    /// Start the staging tree: the `from` image, the root skeleton, busybox and its applets,
    /// Kiln's dropbear, kiln-init as /init. Also returns the index lines the image has nothing
    /// for.
    fn stage_skeleton(
        &self,
        staging_dir: &Path,
        inputs: &Inputs,
    ) -> Result<(Staging, Vec<IndexLine>), BuildError> {
        let base = inputs.base.as_ref();
        self.progress.phase("root filesystem");
        let mut st = Staging::new(staging_dir)?;
        // An OCI image is the bottom layer: what Kiln adds below fills in only what it lacks.
        let mut unmatched = Vec::new();
        if let Some(base) = base {
            unmatched = oci::stage_base(&mut st, base, inputs.index.as_deref())?;
        }
        let keep = base.is_some();
        skeleton(&mut st, keep)?;
        if let Some((bb, from)) = &inputs.busybox {
            install_busybox(&mut st, bb, from, keep)?;
        }
        if let Some(d) = &inputs.dropbear {
            install_dropbear(&mut st, d, keep)?;
        }
        st.copy_file(
            Path::new("/init"),
            &self.opts.init_binary,
            Some(0o755),
            "kiln-init, the guest's PID 1",
        )?;
        Ok((st, unmatched))
    }

    /// Stage the package files the index (or the variant) selects, when there are packages.
    /// Returns the index lines that matched nothing in the packages or on the host.
    fn stage_packages(
        &self,
        st: &mut Staging,
        inputs: &Inputs,
    ) -> Result<Vec<IndexLine>, BuildError> {
        match &inputs.pkgs {
            Some(p) => {
                self.progress.phase("package files");
                packages::install(self.recipe, p, inputs.index.as_deref(), st)
            }
            None => Ok(Vec::new()),
        }
    }

    /// Refuse an index line that matched nothing in any tree it chooses from (the `from` image,
    /// the packages and the host): a line the image lacks but the packages have is fine.
    fn refuse_unmatched(
        &self,
        inputs: &Inputs,
        base: Vec<IndexLine>,
        packages: Vec<IndexLine>,
    ) -> Result<(), BuildError> {
        let Some(file) = &inputs.index else {
            return Ok(());
        };
        // The first line no tree has, and what was looked in when an image was.
        let (line, image) = match (inputs.base.is_some(), inputs.pkgs.is_some()) {
            (true, true) => (
                base.into_iter().find(|l| packages.contains(l)),
                Some("the `from` image, the recipe's packages nor this host"),
            ),
            (true, false) => (
                base.into_iter().next(),
                Some("the `from` image (the host is not looked at)"),
            ),
            (false, _) => (packages.into_iter().next(), None),
        };
        let Some(l) = line else {
            return Ok(());
        };
        let (file, line, text) = (file.clone(), l.line, l.text);
        let e = match image {
            None => IndexError::NoMatch { file, line, text },
            Some(sources) => IndexError::NoMatchIn {
                file,
                line,
                text,
                sources: sources.into(),
            },
        };
        Err(RootfsError::from(e).into())
    }

    /// Stage the marker that turns kiln-init's file access tracer on, for the traced variant.
    fn stage_trace_marker(&self, st: &mut Staging) -> Result<(), BuildError> {
        if self.variant.traced() {
            st.write_file(
                Path::new(TRACE_MARKER),
                b"",
                0o644,
                "kiln trace",
                "turns kiln-init's file access tracer on",
            )?;
        }
        Ok(())
    }

    /// Pack the staging tree into the image folder as the recipe's root image format, giving
    /// the paths of `owners` theirs.
    fn pack_root(
        &self,
        staging_dir: &Path,
        image_dir: &Path,
        fp: &str,
        owners: &kiln_image::Owners,
    ) -> Result<InitramfsInfo, BuildError> {
        match self.recipe.config.image.format.as_str() {
            "disk" => self.pack_disk(staging_dir, image_dir, fp, owners),
            "qcow2" => formats::to_qcow2(
                self.pack_disk(staging_dir, image_dir, fp, owners)?,
                image_dir,
            ),
            f @ ("erofs" | "squashfs") => {
                self.progress.phase(&format!("{f} image"));
                formats::pack_read_only(f, staging_dir, image_dir, &uuid_from(fp), owners)
            }
            _ => self.pack_initramfs(staging_dir, image_dir, owners),
        }
    }

    /// The PC kernel and the hybrid ISO, for `format = "iso"`.
    fn pack_iso(
        &self,
        kernel: &kiln_kernel::Kernel,
        root: &InitramfsInfo,
        image_dir: &Path,
    ) -> Result<Option<manifest::PcInfo>, BuildError> {
        let cfg = &self.recipe.config;
        if cfg.image.format != "iso" {
            return Ok(None);
        }
        self.progress.phase("iso");
        let location = self.recipe.locate_key("kernel");
        formats::pack_iso(
            kernel,
            &location,
            &cfg.name,
            &BootConfig::from_recipe(cfg).cmdline,
            root,
            image_dir,
        )
        .map(Some)
    }

    /// Pack the staging tree as an ext4 root disk (its UUID derived from the fingerprint).
    fn pack_disk(
        &self,
        staging_dir: &Path,
        image_dir: &Path,
        fp: &str,
        owners: &kiln_image::Owners,
    ) -> Result<InitramfsInfo, BuildError> {
        self.progress.phase("disk image");
        let name = DISK_FILE.to_string();
        let opts = kiln_image::DiskOptions {
            fs: kiln_image::DiskFs::Ext4,
            size_mib: self.recipe.config.image.size_mib,
            mtime: kiln_image::source_date_epoch().unwrap_or(0),
            uuid: uuid_from(fp),
            owners: owners.clone(),
        };
        let stats = kiln_image::write_disk(staging_dir, &opts, &image_dir.join(&name))?;
        Ok(InitramfsInfo {
            file: name,
            format: "disk".into(),
            compression: "none".into(),
            size: stats.size_bytes,
            uncompressed_size: stats.used_bytes,
            entries: stats.entries,
            sha256: stats.sha256,
        })
    }

    /// Pack the staging tree as a compressed initramfs (with /dev/console).
    fn pack_initramfs(
        &self,
        staging_dir: &Path,
        image_dir: &Path,
        owners: &kiln_image::Owners,
    ) -> Result<InitramfsInfo, BuildError> {
        self.progress.phase("initramfs");
        let compression: kiln_image::Compression =
            self.recipe.config.image.compression.as_str().parse()?;
        let image_opts = kiln_image::BuildOptions {
            owners: owners.clone(),
            ..kiln_image::BuildOptions::from_env(compression)
        };
        let name = format!("initramfs.{}", compression.extension());
        let extras = [kiln_image::ExtraEntry::char_dev("dev/console", 0o600, 5, 1)];
        let stats =
            kiln_image::write_initramfs(staging_dir, &extras, &image_opts, &image_dir.join(&name))?;
        Ok(InitramfsInfo {
            file: name,
            format: "initramfs".into(),
            compression: compression.name().into(),
            size: stats.compressed_bytes,
            uncompressed_size: stats.uncompressed_bytes,
            entries: stats.entries,
            sha256: stats.sha256,
        })
    }

    /// The image's manifest, from the build's inputs and what its stages produced.
    fn manifest(
        &self,
        inputs: &Inputs,
        fingerprint: String,
        kernel: KernelInfo,
        root_image: InitramfsInfo,
        modules: Vec<String>,
        files: Vec<kiln_rootfs::FileEntry>,
    ) -> ImageManifest {
        let cfg = &self.recipe.config;
        let pkgs = inputs.pkgs.as_ref();
        ImageManifest {
            kiln_version: env!("CARGO_PKG_VERSION").into(),
            name: cfg.name.clone(),
            description: cfg.description.clone(),
            fingerprint,
            recipe: self.recipe.dir.display().to_string(),
            kernel,
            initramfs: root_image,
            boot: BootConfig::from_recipe(cfg),
            modules,
            files,
            packages: pkgs
                .map(|p| {
                    p.set
                        .debs
                        .iter()
                        .map(|d| format!("{} {}", d.package, d.version))
                        .collect()
                })
                .unwrap_or_default(),
            excluded_packages: pkgs
                .map(|p| {
                    p.set
                        .excluded
                        .iter()
                        .map(|(n, why)| format!("{n}: {why}"))
                        .collect()
                })
                .unwrap_or_default(),
            base: inputs.base.as_ref().map(oci::source_of).unwrap_or_default(),
            selection: if pkgs.is_some() || inputs.base.is_some() {
                self.variant.describe(self.recipe)
            } else {
                String::new()
            },
            pc: None,
        }
    }
}

/// Stage the kernel modules kiln-init loads under /lib/modules; returns its lines and the names.
fn stage_modules(
    st: &mut Staging,
    recipe: &Recipe,
    kernel: &kiln_kernel::Kernel,
) -> Result<(ModuleLines, Vec<String>), BuildError> {
    let mut wanted: Vec<String> = BASE_MODULES.iter().map(|s| s.to_string()).collect();
    wanted.extend(
        recipe
            .config
            .root
            .modules
            .iter()
            .map(|m| m.get_ref().clone()),
    );
    let mut with_shares = wanted.clone();
    with_shares.extend(SHARE_MODULES.iter().map(|s| s.to_string()));
    // Boot modules load at every boot; the share modules' extra closure only when a share is
    // mounted (kiln-init's `share_module=` lines).
    let mut modules = ModuleLines::default();
    let mut module_names = Vec::new();
    let (Some(dir), Some(version)) = (&kernel.modules_dir, &kernel.version) else {
        return Ok((modules, module_names));
    };
    let boot: Vec<String> = kiln_kernel::module_closure(dir, &wanted)?
        .into_iter()
        .map(|m| m.name)
        .collect();
    for m in kiln_kernel::module_closure(dir, &with_shares)? {
        let guest = Path::new("/lib/modules")
            .join(version)
            .join(kiln_kernel::guest_rel_path(&m));
        let data = kiln_kernel::read_module(dir, &m)?;
        let on_boot = boot.contains(&m.name);
        let reason = module_reason(on_boot, &wanted, &m.name);
        st.write_file(&guest, &data, 0o644, &kernel.description, reason)?;
        let line = guest.display().to_string();
        if on_boot {
            modules.boot.push(line);
        } else {
            modules.share.push(line);
        }
        module_names.push(m.name.clone());
    }
    Ok((modules, module_names))
}

/// Why a kernel module is in the image, for the file list.
fn module_reason(on_boot: bool, wanted: &[String], name: &str) -> &'static str {
    if !on_boot {
        "kernel module for shared folders (loaded only when one is mounted)"
    } else if wanted.iter().any(|w| w.replace('-', "_") == name) {
        "kernel module the VM needs"
    } else {
        "dependency of another kernel module"
    }
}

/// Stage kiln-init's configuration as /etc/kiln/init.conf.
fn write_init_conf(
    st: &mut Staging,
    recipe: &Recipe,
    modules: &ModuleLines,
) -> Result<(), BuildError> {
    let mut init_conf = init_conf(recipe, modules);
    if let Some(u) = &recipe.config.user {
        let (uid, gid) =
            oci::resolve_user(st.root(), u.get_ref()).map_err(|message| BuildError::User {
                location: recipe.locate(u.span()),
                message,
            })?;
        init_conf.push_str(&format!("user={uid}:{gid}\n"));
    }
    st.write_file(
        Path::new("/etc/kiln/init.conf"),
        init_conf.as_bytes(),
        0o644,
        "kiln",
        "kiln-init's configuration",
    )?;
    Ok(())
}

/// Link (else copy) the kernel into the image folder, as a PVH ELF when it can; its manifest entry.
fn place_kernel(
    kernel: &kiln_kernel::Kernel,
    cache_root: &Path,
    image_dir: &Path,
) -> Result<KernelInfo, BuildError> {
    // Boot the uncompressed ELF through its PVH entry when the kernel allows: it skips the
    // bzImage's decompression, which is slow under TCG.
    let pvh = cache_root
        .join("pvh")
        .join(format!("{}.vmlinux", kernel.sha256));
    let (boot_image, kernel_file, protocol) =
        match kiln_kernel::pvh::ensure_pvh(&kernel.image, &pvh)? {
            Some(elf) => (elf, PVH_KERNEL_FILE, "pvh"),
            None => (kernel.image.clone(), KERNEL_FILE, "bzimage"),
        };
    let kernel_dest = image_dir.join(kernel_file);
    if std::fs::hard_link(&boot_image, &kernel_dest).is_err() {
        std::fs::copy(&boot_image, &kernel_dest).map_err(io(&boot_image))?;
    }
    let file_size = std::fs::metadata(&kernel_dest)
        .map_err(io(&kernel_dest))?
        .len();
    Ok(KernelInfo {
        file: kernel_file.into(),
        boot: protocol.into(),
        file_size,
        description: kernel.description.clone(),
        version: kernel.version.clone(),
        sha256: kernel.sha256.clone(),
        size: kernel.size,
        patches: kernel.patches.clone(),
        hz: kernel.hz,
    })
}

/// The existing image folder, when its fingerprint says it is up to date (and no `--force`).
/// The work folders of killed builds beside it are swept then too (a build does it otherwise).
pub(crate) fn reuse_if_fresh(
    opts: &BuildOptions,
    fp: &str,
    started: Instant,
) -> Option<BuildReport> {
    if opts.force {
        return None;
    }
    let manifest = read_manifest_if_fresh(&opts.out_dir, fp)?;
    kiln_image::sweep_stale(&opts.out_dir);
    Some(BuildReport {
        out_dir: opts.out_dir.clone(),
        manifest,
        reused: true,
        elapsed: started.elapsed(),
    })
}

/// A temporary folder beside `out_dir` to assemble a build in (removed when dropped), with its
/// staging folder (`root`, not yet created) and the image folder (`image`, created).
pub(crate) fn workspace(out_dir: &Path) -> Result<(WorkDir, PathBuf, PathBuf), BuildError> {
    workdir::check_replaceable(out_dir)?;
    let work = work_dir(out_dir)?;
    let staging = work.path().join("root");
    let image = work.path().join("image");
    std::fs::create_dir_all(&image).map_err(io(&image))?;
    Ok((work, staging, image))
}

/// Write `manifest` into the finished `image_dir` and swap that folder into `opts.out_dir`.
pub(crate) fn install(
    work: WorkDir,
    image_dir: &Path,
    manifest: ImageManifest,
    opts: &BuildOptions,
    started: Instant,
) -> Result<BuildReport, BuildError> {
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| BuildError::BadImage {
        path: image_dir.join(MANIFEST),
        message: e.to_string(),
    })?;
    kiln_image::atomic_write(&image_dir.join(MANIFEST), &json)
        .map_err(io(image_dir.join(MANIFEST)))?;
    swap_into_place(work, image_dir, &opts.out_dir)?;
    Ok(BuildReport {
        out_dir: opts.out_dir.clone(),
        manifest,
        reused: false,
        elapsed: started.elapsed(),
    })
}

/// The recipe's own layers over the staged root — `common/` as /etc/include, the `files/`
/// overlay, `etc/rc` — then its `postinst` hooks in the sandbox; returns the file list.
fn recipe_layers(
    st: &mut Staging,
    recipe: &Recipe,
    rc_reason: &str,
    progress: &dyn Progress,
) -> Result<Vec<kiln_rootfs::FileEntry>, BuildError> {
    if recipe.common_dir().is_dir() {
        st.overlay(
            &recipe.common_dir(),
            Path::new("/etc/include"),
            "recipe common/ (shared rc snippets)",
        )?;
    }
    if recipe.files_dir().is_dir() {
        st.overlay(&recipe.files_dir(), Path::new("/"), "recipe files/ overlay")?;
    }
    st.copy_file(
        Path::new("/etc/rc"),
        &recipe.rc_path(),
        Some(0o755),
        rc_reason,
    )?;
    let staging = st.root().to_path_buf();
    let hooks = recipe.hooks()?;
    if !hooks.is_empty() {
        progress.phase("postinst hooks");
        let limit = Duration::from_secs(recipe.config.hook_timeout.into());
        kiln_rootfs::hooks::run_hooks(&hooks, &staging, &recipe.dir, limit, &mut |l| {
            progress.log(l)
        })?;
    }
    Ok(kiln_rootfs::manifest::describe(st)?)
}

/// A temporary folder beside `out_dir` to assemble a build in (removed when dropped), locked
/// while this build lives; stale ones of interrupted builds of `out_dir` are swept first.
fn work_dir(out_dir: &Path) -> Result<WorkDir, BuildError> {
    let parent = out_dir.parent().unwrap_or(Path::new("."));
    WorkDir::beside(out_dir).map_err(io(parent))
}

/// Swap the finished `image_dir` (inside `work`) into `out_dir`. An old image there is
/// exchanged with the new one in one step, so `out_dir` is always one or the other, even for a
/// build killed meanwhile; the old one, now in `work`, goes with it. Where the filesystem
/// cannot exchange, the old image is moved aside, and put back if the swap fails.
pub(crate) fn swap_into_place(
    work: WorkDir,
    image_dir: &Path,
    out_dir: &Path,
) -> Result<(), BuildError> {
    let old = work.path().join("old");
    let had_old = out_dir.exists();
    if had_old {
        match kiln_image::exchange(image_dir, out_dir) {
            Ok(()) => {
                drop(work);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
            Err(error) => {
                return Err(BuildError::Io {
                    path: out_dir.to_path_buf(),
                    error,
                })
            }
        }
        std::fs::rename(out_dir, &old).map_err(io(out_dir))?;
    }
    if let Err(e) = std::fs::rename(image_dir, out_dir) {
        if had_old {
            let _ = std::fs::rename(&old, out_dir);
        }
        return Err(BuildError::Io {
            path: out_dir.to_path_buf(),
            error: e,
        });
    }
    drop(work);
    Ok(())
}

/// Kiln's own fragments a recipe's tiny kernel needs for its root format: ext4 for a disk root,
/// erofs, squashfs and overlayfs for a read-only root, PCI and virtio-pci for an ISO that boots
/// on a PC.
pub fn builtin_fragments(image: &kiln_recipe::ImageFormat) -> Vec<kiln_kernel::tiny::Builtin> {
    use kiln_kernel::tiny::Builtin;
    match image.format.as_str() {
        "erofs" | "squashfs" | "disk" | "qcow2" => vec![Builtin::Roots],
        "iso" => vec![Builtin::Pc],
        _ => vec![],
    }
}

/// Kiln's tiny kernel with the recipe's fragments: from the cache, or built now (minutes).
fn tiny_kernel(
    recipe: &Recipe,
    cache_root: &Path,
    progress: &dyn Progress,
) -> Result<kiln_kernel::Kernel, BuildError> {
    let mut topts = kiln_kernel::tiny::TinyOptions::new(cache_root);
    topts.builtin = builtin_fragments(&recipe.config.image);
    topts.extra_fragments = recipe
        .config
        .kernel_fragments
        .iter()
        .map(|f| recipe.resolve(f.get_ref()))
        .collect();
    let report = |p: kiln_kernel::tiny::TinyProgress| {
        use kiln_kernel::tiny::TinyProgress as P;
        match p {
            P::Waiting { .. } => progress.phase("tiny kernel: waiting for another build of it"),
            P::Unpacking { .. } => progress.phase("tiny kernel: unpacking linux-source"),
            P::Configuring { step } => progress.phase(&format!("tiny kernel: {step}")),
            P::Compiling { percent, .. } => {
                progress.phase(&format!("tiny kernel: compiling {percent}%"))
            }
            _ => {}
        }
    };
    let tk = kiln_kernel::tiny::build_tiny(&topts, &report)?;
    let bytes = std::fs::read(&tk.vmlinux).map_err(io(&tk.vmlinux))?;
    Ok(kiln_kernel::Kernel {
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        image: tk.vmlinux,
        version: Some(tk.version.clone()),
        modules_dir: None,
        description: format!(
            "kiln tiny {} (config {})",
            tk.version,
            &tk.config_hash[..16]
        ),
        size: tk.size_bzimage,
        patches: tk.patches.clone(),
        hz: Some(tk.hz),
    })
}

/// Read an image folder's manifest and check its files are there.
pub fn load_image(dir: &Path) -> Result<ImageManifest, BuildError> {
    let path = dir.join(MANIFEST);
    let data = std::fs::read(&path).map_err(|e| BuildError::BadImage {
        path: path.clone(),
        message: format!("cannot read ({e}); is this an image folder made by `kiln build`?"),
    })?;
    let m: ImageManifest = serde_json::from_slice(&data).map_err(|e| BuildError::BadImage {
        path: path.clone(),
        message: format!("not a Kiln manifest ({e}); rebuild the image"),
    })?;
    let disk = m.initramfs.format == "disk";
    let mut files = vec![
        (&m.kernel.file, Some(m.kernel.file_size)),
        (&m.initramfs.file, (!disk).then_some(m.initramfs.size)),
    ];
    if let Some(pc) = &m.pc {
        files.push((&pc.kernel, Some(pc.kernel_size)));
        files.push((&pc.iso, Some(pc.iso_size)));
    }
    for (f, size) in files {
        let plain = Path::new(f).components().count() == 1
            && matches!(
                Path::new(f).components().next(),
                Some(std::path::Component::Normal(_))
            );
        if !plain {
            return Err(BuildError::BadImage {
                path: path.clone(),
                message: format!(
                    "names the file `{f}`, which is not a file name inside the image folder; rebuild the image with `kiln build`"
                ),
            });
        }
        let bad = |message: String| BuildError::BadImage {
            path: dir.join(f),
            message,
        };
        match std::fs::metadata(dir.join(f)) {
            Ok(md) if md.is_file() => match size {
                Some(want) if md.len() != want => {
                    return Err(bad(format!(
                        "is {} bytes but the manifest says {want}: the file was changed or cut; rebuild the image with `kiln build`",
                        md.len()
                    )))
                }
                _ => {}
            },
            _ => {
                return Err(bad(
                    "missing from the image folder (or not a file); rebuild it with `kiln build`"
                        .into(),
                ))
            }
        }
    }
    Ok(m)
}

/// A filesystem UUID (version 4 layout) from the build fingerprint: the same inputs give the
/// same disk image.
fn uuid_from(fingerprint: &str) -> String {
    let h = <sha2::Sha256 as sha2::Digest>::digest(fingerprint.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

fn read_manifest_if_fresh(dir: &Path, fp: &str) -> Option<ImageManifest> {
    let m = load_image(dir).ok()?;
    (m.fingerprint == fp).then_some(m)
}

const SKELETON_DIRS: &[(&str, u32)] = &[
    ("/usr/bin", 0o755),
    ("/usr/sbin", 0o755),
    ("/usr/lib", 0o755),
    ("/usr/lib64", 0o755),
    ("/etc", 0o755),
    ("/dev", 0o755),
    ("/proc", 0o555),
    ("/sys", 0o555),
    ("/tmp", 0o1777),
    ("/run", 0o755),
    ("/var/log", 0o755),
    ("/var/tmp", 0o1777),
    ("/root", 0o700),
    ("/mnt", 0o755),
];

/// The root skeleton; with `keep`, files already staged (an OCI image's) are kept.
fn skeleton(st: &mut Staging, keep: bool) -> Result<(), BuildError> {
    for (d, mode) in SKELETON_DIRS {
        st.mkdir(Path::new(d), *mode, "root skeleton")?;
    }
    // Merged /usr, as on Debian 12, so host paths like /lib/x86_64-linux-gnu/libc.so.6 and
    // /usr/lib/x86_64-linux-gnu/libc.so.6 are one file in the guest too.
    for (link, target) in [
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
        ("/lib", "usr/lib"),
        ("/lib64", "usr/lib64"),
    ] {
        st.symlink(
            Path::new(link),
            Path::new(target),
            "kiln",
            "merged /usr layout",
        )?;
    }
    st.symlink(
        Path::new("/var/run"),
        Path::new("../run"),
        "kiln",
        "root skeleton",
    )?;
    let etc: &[(&str, &str)] = &[
        (
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("/etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("/etc/shadow", "root:*:0:0:99999:7:::\n"),
    ];
    for (p, text) in etc {
        if keep && oci::staged(st, Path::new(p)) {
            continue;
        }
        let mode = if p.ends_with("shadow") { 0o600 } else { 0o644 };
        st.write_file(
            Path::new(p),
            text.as_bytes(),
            mode,
            "kiln",
            "minimal user database",
        )?;
    }
    Ok(())
}

/// Applets that must not shadow kiln-init (or busybox itself).
const SKIP_APPLETS: &[&str] = &["init", "linuxrc", "busybox"];

/// busybox and its applet links; with `keep`, paths already staged (an OCI image's) are kept.
fn install_busybox(
    st: &mut Staging,
    busybox: &Path,
    from: &str,
    keep: bool,
) -> Result<(), BuildError> {
    st.copy_file(
        Path::new("/usr/bin/busybox"),
        busybox,
        Some(0o755),
        "busybox: shell and basic utilities",
    )?;
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(io(busybox))?;
    if !out.status.success() {
        return Err(BuildError::BadImage {
            path: busybox.to_path_buf(),
            message: "`busybox --list-full` failed; the cached busybox-static may be corrupt (run with --refresh)".into(),
        });
    }
    let list = String::from_utf8_lossy(&out.stdout);
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = applet.rsplit('/').next().unwrap_or(applet);
        if SKIP_APPLETS.contains(&name) {
            continue;
        }
        let guest = Path::new("/").join(applet);
        if keep && oci::staged(st, &guest) {
            continue;
        }
        st.symlink(
            &guest,
            Path::new("/usr/bin/busybox"),
            from,
            "busybox applet",
        )?;
    }
    Ok(())
}

/// Kiln's SSH server for `[root] dropbear`: dropbear and the sftp-server it runs.
struct Ssh {
    dropbear: kiln_userland::Built,
    sftp_server: kiln_userland::Built,
}

/// Kiln's dropbear, its program links and sftp-server; with `keep`, paths already staged
/// are kept.
fn install_dropbear(st: &mut Staging, ssh: &Ssh, keep: bool) -> Result<(), BuildError> {
    use kiln_userland::dropbear::{BINARY_PATH, PROGRAMS};
    let sftp = Path::new(kiln_userland::sftp_server::GUEST_PATH);
    if !(keep && oci::staged(st, sftp)) {
        st.copy_file_labelled(
            sftp,
            &ssh.sftp_server.binary,
            &ssh.sftp_server.identity,
            "sftp-server: what dropbear runs for SFTP ([root] dropbear)",
        )?;
    }
    let dropbear = &ssh.dropbear;
    st.copy_file_labelled(
        Path::new(BINARY_PATH),
        &dropbear.binary,
        &dropbear.identity,
        "dropbear: SSH server ([root] dropbear)",
    )?;
    for (_, guest) in PROGRAMS {
        let guest = Path::new(guest);
        if keep && oci::staged(st, guest) {
            continue;
        }
        st.symlink(
            guest,
            Path::new(BINARY_PATH),
            &dropbear.identity,
            "dropbear program",
        )?;
    }
    Ok(())
}

/// `make -j` for Kiln's own builds: every core.
fn jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn install_binaries(
    recipe: &Recipe,
    st: &mut Staging,
    package_root: Option<&Path>,
) -> Result<(), BuildError> {
    let binaries = &recipe.config.root.binaries;
    if binaries.is_empty() {
        return Ok(());
    }
    // With packages, binaries are looked up in the package sysroot first, then the host.
    let mut roots: Vec<PathBuf> = package_root.map(Path::to_path_buf).into_iter().collect();
    roots.push(PathBuf::from("/"));
    let resolver = Resolver::layered(&roots).map_err(kiln_rootfs::RootfsError::from)?;
    // Check each binary on its own first so an error can name its kiln.toml line.
    for b in binaries {
        let path = PathBuf::from(b.get_ref());
        let message = match resolver.closure(std::slice::from_ref(&path)) {
            Err(e) => e.to_string(),
            Ok(c) => match hidden::in_closure(&c) {
                Some(m) => format!("`{}`: {m}", b.get_ref()),
                None => continue,
            },
        };
        return Err(BuildError::Binary {
            location: recipe.locate(b.span()),
            message,
        });
    }
    let roots: Vec<PathBuf> = binaries
        .iter()
        .map(|b| PathBuf::from(b.get_ref()))
        .collect();
    let closure = resolver
        .closure(&roots)
        .map_err(kiln_rootfs::RootfsError::from)?;
    for node in &closure.nodes {
        let reason = node.reasons.join("; ");
        match &node.kind {
            NodeKind::File { source, .. } => {
                st.copy_file(&node.path, source, None, &reason)?;
            }
            NodeKind::Symlink { target } => {
                st.symlink(
                    &node.path,
                    target,
                    &node.path.display().to_string(),
                    &reason,
                )?;
            }
        }
    }
    Ok(())
}

fn install_files(recipe: &Recipe, st: &mut Staging) -> Result<(), BuildError> {
    for f in &recipe.config.root.files {
        let (src, dst) = kiln_recipe::split_file_spec(f.get_ref());
        let src = Path::new(src);
        if !src.is_file() {
            return Err(BuildError::File {
                location: recipe.locate(f.span()),
                message: format!(
                    "{} is not a file on this host; fix the path, or put the file under files/ in the recipe",
                    src.display()
                ),
            });
        }
        st.copy_file(Path::new(dst), src, None, "listed in root.files")?;
    }
    Ok(())
}

/// Guest paths of the modules kiln-init loads, in load order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleLines {
    /// Loaded at every boot.
    pub boot: Vec<String>,
    /// Loaded only when a shared folder is mounted.
    pub share: Vec<String>,
}

/// kiln-init's configuration for this recipe.
pub fn init_conf(recipe: &Recipe, modules: &ModuleLines) -> String {
    let cfg = &recipe.config;
    let mut s = String::from("# written by kiln build; read by kiln-init\n");
    s.push_str(&format!("hostname={}\n", cfg.name));
    for m in &modules.boot {
        s.push_str(&format!("module={m}\n"));
    }
    for m in &modules.share {
        s.push_str(&format!("share_module={m}\n"));
    }
    if cfg.network.mode == "none" {
        s.push_str("net=none\n");
    } else {
        s.push_str(&format!(
            "net=eth0 {} {}\n",
            cfg.network.address, cfg.network.gateway
        ));
        s.push_str(&format!("dns={}\n", cfg.network.dns));
    }
    s.push_str(&format!("ready={}\n", cfg.ready.as_conf()));
    s.push_str("rc=/etc/rc\n");
    for (k, v) in &cfg.env {
        s.push_str(&format!("env={k}={v}\n"));
    }
    s
}

#[cfg(test)]
mod tests;
