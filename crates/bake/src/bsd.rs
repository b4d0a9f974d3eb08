//! BSD guests (`guest = "netbsd" | "freebsd"`), as smolBSD and microbhyve make them: the root
//! is the user's sets unpacked in order, the recipe's `common/` (as `/etc/include`), `files/`
//! and `etc/rc` on top (the BSD's own init runs /etc/rc), then the build hooks, packed as an
//! FFS disk image. The kernel is the user's file, copied beside it. No kiln-init, busybox or
//! Linux binaries: `/etc/include/kiln` gives rc the console protocol instead (`kiln_ready`,
//! `kiln_wait_tcp PORT`).

use crate::manifest::{BootConfig, ImageManifest, InitramfsInfo, KernelInfo};
use crate::{
    fingerprint, install, io, recipe_layers, reuse_if_fresh, workspace, BuildError, BuildOptions,
    BuildReport, Progress, BSD_KERNEL_FILE, FFS_DISK_FILE,
};
use kiln_recipe::{KernelChoice, Recipe};
use kiln_rootfs::Staging;
use sha2::Digest;
use std::path::Path;
use std::time::Instant;

/// The shell helpers a BSD guest's etc/rc sources to speak Kiln's console protocol.
pub const KILN_INCLUDE: &str = r#"# Kiln's console protocol for BSD guests, which have no kiln-init. Source it from etc/rc:
#   . /etc/include/kiln
#   kiln_ready             tell the host the service is ready (kiln run returns, -d detaches)
#   kiln_wait_tcp PORT     wait until something listens on TCP PORT, then kiln_ready
kiln_ready() {
	echo "kiln: ready in 0 ms"
}
kiln_wait_tcp() {
	while ! netstat -an -f inet 2>/dev/null | grep -q "[.:]$1 .*LISTEN"; do
		sleep 0.1 2>/dev/null || sleep 1
	done
	kiln_ready
}
"#;

/// Build a BSD guest's image folder.
pub(crate) fn build_bsd(
    recipe: &Recipe,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport, BuildError> {
    let started = Instant::now();
    let cfg = &recipe.config;
    let guest = cfg.guest.name();
    progress.phase("kernel");
    let KernelChoice::File(k) = &cfg.kernel else {
        // Recipe validation requires a kernel file for BSD guests.
        return Err(BuildError::BadImage {
            path: recipe.config_path(),
            message: format!("guest = \"{guest}\" needs kernel = \"PATH\""),
        });
    };
    let kernel_path = recipe.resolve(k.get_ref());
    let kernel_bytes = std::fs::read(&kernel_path).map_err(io(&kernel_path))?;
    if !kernel_bytes.starts_with(b"\x7fELF") {
        return Err(BuildError::BadKernel {
            location: recipe.locate(k.span()),
            message: format!(
                "{} is not an ELF file; a {guest} kernel is one (gunzip a netbsd-*.gz first)",
                kernel_path.display()
            ),
        });
    }
    let protocol = if kiln_kernel::pvh::has_pvh_note(&kernel_bytes) {
        "pvh"
    } else {
        "elf"
    };
    let kernel_sha = hex::encode(sha2::Sha256::digest(&kernel_bytes));

    // Sets may live outside the recipe folder, which is all the fingerprint reads.
    let mut extra = format!("guest {guest}");
    let mut sets = Vec::new();
    for s in &cfg.sets {
        let path = recipe.resolve(s.get_ref());
        let data = std::fs::read(&path).map_err(io(&path))?;
        extra.push_str(&format!(
            "\nset {} {}",
            s.get_ref(),
            hex::encode(sha2::Sha256::digest(&data))
        ));
        sets.push(path);
    }
    let fp = fingerprint::compute_with(recipe, &kernel_sha, None, &opts.init_binary, &extra)?;
    if let Some(r) = reuse_if_fresh(opts, &fp, started) {
        return Ok(r);
    }

    let (work, staging_dir, image_dir) = workspace(&opts.out_dir)?;
    let mut st = Staging::new(&staging_dir)?;
    for path in &sets {
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        progress.phase(&format!("set {label}"));
        let r = kiln_rootfs::sets::unpack_set(&mut st, &recipe.dir, path, &label)?;
        if r.skipped_devices > 0 {
            progress.log(&format!(
                "{label}: {} device nodes left out ({guest} makes /dev at boot)",
                r.skipped_devices
            ));
        }
    }
    progress.phase("root filesystem");
    st.write_file(
        Path::new("/etc/include/kiln"),
        KILN_INCLUDE.as_bytes(),
        0o644,
        "kiln",
        "Kiln's console protocol for etc/rc (kiln_ready, kiln_wait_tcp)",
    )?;
    let files = recipe_layers(
        &mut st,
        recipe,
        &format!("the service's entry script (etc/rc, run by {guest}'s init)"),
        progress,
    )?;

    progress.phase("disk image");
    let disk = kiln_image::write_disk(
        &staging_dir,
        &kiln_image::DiskOptions {
            fs: kiln_image::DiskFs::Ffs,
            size_mib: cfg.image.size_mib,
            mtime: kiln_image::source_date_epoch().unwrap_or(0),
            uuid: String::new(),
            owners: kiln_image::Owners::new(),
        },
        &image_dir.join(FFS_DISK_FILE),
    )?;
    let kernel_dest = image_dir.join(BSD_KERNEL_FILE);
    std::fs::write(&kernel_dest, &kernel_bytes).map_err(io(&kernel_dest))?;

    let manifest = ImageManifest {
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        name: cfg.name.clone(),
        description: cfg.description.clone(),
        fingerprint: fp,
        recipe: recipe.dir.display().to_string(),
        kernel: KernelInfo {
            file: BSD_KERNEL_FILE.into(),
            boot: protocol.into(),
            file_size: kernel_bytes.len() as u64,
            description: format!("{guest} kernel {}", kernel_path.display()),
            version: None,
            sha256: kernel_sha,
            size: kernel_bytes.len() as u64,
            patches: Vec::new(),
            hz: None,
        },
        initramfs: InitramfsInfo {
            file: FFS_DISK_FILE.into(),
            format: "disk".into(),
            compression: "none".into(),
            size: disk.size_bytes,
            uncompressed_size: disk.used_bytes,
            entries: disk.entries,
            sha256: disk.sha256,
        },
        boot: BootConfig::from_recipe(cfg),
        modules: vec![],
        files,
        packages: vec![],
        excluded_packages: vec![],
        base: String::new(),
        selection: String::new(),
        pc: None,
    };
    install(work, &image_dir, manifest, opts, started)
}
