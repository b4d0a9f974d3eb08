//! `kiln cache` and `kiln cache prune`: what the cache folder holds, and removing what no one
//! needs any more. Images built by `kiln run RECIPE` (`images/NAME-HASH`) pile up with every
//! change to a recipe; prune keeps each recipe's newest image and every image a VM record
//! points at (running or not: `kiln enable`d VMs boot them later), and drops PVH kernels no
//! kept image uses, and saved states (`snapshots/`) no image names as its template and no VM
//! starts from. Compiled tiny kernels go only with `--kernels` (recompiling costs minutes), and
//! Kiln's own programs (busybox, dropbear, sftp-server builds) no kept image holds only with
//! `--builds`; downloaded packages never.

use crate::{dirs, human};
use anyhow::{Context, Result};
use clap::Subcommand;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

/// `kiln cache …`.
#[derive(Subcommand, Debug)]
pub enum CacheCmd {
    /// Show what the cache holds (the default).
    List,
    /// Remove images no VM uses and that are not their recipe's newest, and unused PVH kernels.
    Prune {
        /// Say what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also remove compiled tiny kernels no kept image uses (a rebuild compiles again).
        #[arg(long)]
        kernels: bool,
        /// Also remove snapshots of VMs (`kiln snapshot`) that no VM starts from.
        #[arg(long)]
        snapshots: bool,
        /// Also remove builds of Kiln's busybox, dropbear and sftp-server that no kept image
        /// holds, and the logs of failed ones (a rebuild compiles again).
        #[arg(long)]
        builds: bool,
    },
}

/// One image folder in the cache.
#[derive(Debug, Clone)]
struct CachedImage {
    dir: PathBuf,
    recipe: String,
    built: SystemTime,
    bytes: u64,
    kernel_sha: String,
    initramfs_sha: String,
    kernel_description: String,
    /// Where its files came from (the manifest's sources: Kiln's builds by identity).
    sources: BTreeSet<String>,
    /// VMs whose records point at it.
    users: Vec<String>,
}

/// Disk space of the files under `path`: allocated blocks (disk images are sparse), each inode
/// once (images hard-link their kernel).
fn size_of(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = BTreeSet::new();
    walkdir::WalkDir::new(path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file() && seen.insert((m.dev(), m.ino())))
        .map(|m| m.blocks() * 512)
        .sum()
}

fn images(cache: &Path, state_root: &Path) -> Vec<CachedImage> {
    let mut users: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    let store = kiln_fleet::Store::new(
        state_root.to_path_buf(),
        std::sync::Arc::new(kiln_fleet::RealHost),
    );
    for r in store.list() {
        let p = PathBuf::from(&r.image);
        let p = std::fs::canonicalize(&p).unwrap_or(p);
        users.entry(p).or_default().push(r.name);
    }
    let Ok(rd) = std::fs::read_dir(cache.join("images")) else {
        return vec![];
    };
    let mut out = vec![];
    for e in rd.flatten() {
        let dir = e.path();
        if !dir.is_dir() || e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let canon = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
        let manifest = dir.join(kiln_bake::MANIFEST);
        let m = kiln_bake::load_image(&dir).ok();
        out.push(CachedImage {
            recipe: m.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            built: std::fs::metadata(&manifest)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH),
            bytes: size_of(&dir),
            kernel_sha: m
                .as_ref()
                .map(|m| m.kernel.sha256.clone())
                .unwrap_or_default(),
            initramfs_sha: m
                .as_ref()
                .map(|m| m.initramfs.sha256.clone())
                .unwrap_or_default(),
            sources: m
                .as_ref()
                .map(|m| m.files.iter().map(|f| f.source.clone()).collect())
                .unwrap_or_default(),
            kernel_description: m.map(|m| m.kernel.description).unwrap_or_default(),
            users: users.remove(&canon).unwrap_or_default(),
            dir,
        });
    }
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    out
}

/// A saved state (template or snapshot) in `CACHE/snapshots/`, and why it is kept, if it is.
struct CachedSnapshot {
    dir: PathBuf,
    kind: String,
    bytes: u64,
    keep: Option<String>,
}

/// The saved states in the cache: one is kept while the image it was made from still names it
/// as its template (wherever that image is), or a VM record starts from it.
fn snapshots(cache: &Path, state_root: &Path) -> Vec<CachedSnapshot> {
    let store = kiln_fleet::Store::new(
        state_root.to_path_buf(),
        std::sync::Arc::new(kiln_fleet::RealHost),
    );
    let from: Vec<PathBuf> = store
        .list()
        .into_iter()
        .filter_map(|r| r.config.from)
        .collect();
    let Ok(rd) = std::fs::read_dir(cache.join("snapshots")) else {
        return vec![];
    };
    let mut out = vec![];
    for e in rd.flatten() {
        let dir = e.path();
        let half_made = e.file_name().to_string_lossy().starts_with('.');
        let saved = kiln_fleet::template::Saved::load(&dir).ok();
        let keep = saved.as_ref().and_then(|s| {
            let image = Path::new(&s.meta.image_dir);
            let named = kiln_fleet::template::of_image(image)
                .ok()
                .flatten()
                .is_some_and(|t| t.dir == dir);
            if named {
                Some(format!("the template of {}", image.display()))
            } else if from.iter().any(|f| f == &dir) {
                Some("a VM starts from it".to_string())
            } else {
                (s.meta.kind == "snapshot")
                    .then(|| "a snapshot (prune --snapshots removes it)".to_string())
            }
        });
        out.push(CachedSnapshot {
            kind: if half_made {
                "unfinished".into()
            } else {
                saved
                    .map(|s| s.meta.kind)
                    .unwrap_or_else(|| "unreadable".into())
            },
            bytes: size_of(&dir),
            keep,
            dir,
        });
    }
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    out
}

/// Which images prune keeps, and why.
fn keep_reasons(imgs: &[CachedImage]) -> BTreeMap<PathBuf, String> {
    let mut keep = BTreeMap::new();
    let mut newest: BTreeMap<&str, &CachedImage> = BTreeMap::new();
    for i in imgs {
        if !i.users.is_empty() {
            keep.insert(i.dir.clone(), format!("used by {}", i.users.join(", ")));
        }
        if i.recipe.is_empty() {
            continue;
        }
        match newest.get(i.recipe.as_str()) {
            Some(n) if n.built >= i.built => {}
            _ => {
                newest.insert(&i.recipe, i);
            }
        }
    }
    for (recipe, i) in newest {
        keep.entry(i.dir.clone())
            .or_insert_with(|| format!("the newest image of {recipe}"));
    }
    keep
}

fn age(t: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// Run a `kiln cache` command.
pub fn run(cmd: Option<CacheCmd>) -> Result<ExitCode> {
    let cache = dirs::cache_root();
    let imgs = images(&cache, &dirs::state_root());
    let keep = keep_reasons(&imgs);
    match cmd.unwrap_or(CacheCmd::List) {
        CacheCmd::List => {
            println!("cache {}", cache.display());
            for i in &imgs {
                let note = keep
                    .get(&i.dir)
                    .cloned()
                    .unwrap_or_else(|| "prunable".into());
                println!(
                    "image   {:<28} {:>9}  built {} ago  {note}",
                    i.dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    human(i.bytes),
                    age(i.built)
                );
            }
            for sn in snapshots(&cache, &dirs::state_root()) {
                println!(
                    "{:<7} {:<28} {:>9}  {}",
                    sn.kind,
                    sn.dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    human(sn.bytes),
                    sn.keep.as_deref().unwrap_or("prunable")
                );
            }
            for (what, sub) in [
                ("kernels (compiled)", "kernels"),
                ("pvh (extracted)", "pvh"),
                ("initrd (expanded)", kiln_bake::expand::EXPANDED_DIR),
                ("debs (downloads)", "debs"),
                ("unpacked packages", "unpacked"),
                ("kernel sources", "src"),
                ("source tarballs", kiln_debpkg::ORIG_DIR),
                ("Dockerfile recipes", kiln_bake::dockerfile::CACHE_DIR),
            ]
            .into_iter()
            .map(|(what, sub)| (what.to_string(), sub))
            .chain(
                kiln_userland::cache_folders()
                    .into_iter()
                    .map(|sub| (format!("{sub} (built)"), sub)),
            ) {
                let p = cache.join(sub);
                if p.exists() {
                    println!("{what:<20} {:>9}  {}", human(size_of(&p)), p.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCmd::Prune {
            dry_run,
            kernels,
            snapshots: drop_snapshots,
            builds,
        } => {
            let verb = if dry_run { "would remove" } else { "removed" };
            let mut freed = 0u64;
            let mut count = 0usize;
            // `delete`: false when the caller removed it already.
            let mut remove = |path: &Path, what: &str, bytes: u64, delete: bool| -> Result<()> {
                println!("kiln: {verb} {what} {} ({})", path.display(), human(bytes));
                if delete && !dry_run {
                    if path.is_dir() {
                        std::fs::remove_dir_all(path)
                    } else {
                        std::fs::remove_file(path)
                    }
                    .with_context(|| format!("removing {}", path.display()))?;
                }
                freed += bytes;
                count += 1;
                Ok(())
            };
            let kept: Vec<&CachedImage> =
                imgs.iter().filter(|i| keep.contains_key(&i.dir)).collect();
            for i in imgs.iter().filter(|i| !keep.contains_key(&i.dir)) {
                remove(&i.dir, "image", i.bytes, true)?;
            }
            for sn in snapshots(&cache, &dirs::state_root()) {
                let mine = drop_snapshots
                    && sn.kind == "snapshot"
                    && sn
                        .keep
                        .as_deref()
                        .is_some_and(|k| k.starts_with("a snapshot"));
                if sn.keep.is_none() || mine {
                    remove(&sn.dir, &sn.kind, sn.bytes, true)?;
                }
            }
            // Files derived from an image's kernel or initramfs, named by its sha256: PVH
            // kernels (images hold hard links, so removing one never breaks an image) and
            // expanded initramfs archives (made again at the next boot of an image outside the
            // cache). Those no kept image uses go.
            let used = |name: fn(&CachedImage) -> String| -> BTreeSet<String> {
                kept.iter().map(|i| name(i)).collect()
            };
            let derived = [
                (
                    "pvh",
                    "PVH kernel",
                    used(|i| format!("{}.vmlinux", i.kernel_sha)),
                ),
                (
                    kiln_bake::expand::EXPANDED_DIR,
                    "expanded initramfs",
                    used(|i| format!("{}.cpio", i.initramfs_sha)),
                ),
            ];
            for (sub, what, used) in derived {
                if let Ok(rd) = std::fs::read_dir(cache.join(sub)) {
                    for e in rd.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if !used.contains(&name) {
                            let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
                            remove(&e.path(), what, bytes, true)?;
                        }
                    }
                }
            }
            if kernels {
                for k in kiln_kernel::tiny::list_tiny(&cache) {
                    let short = &k.config_hash[..16];
                    if !kept.iter().any(|i| i.kernel_description.contains(short)) {
                        remove(&k.dir, "tiny kernel", size_of(&k.dir), true)?;
                    }
                }
            }
            if builds {
                for b in kiln_userland::cached_builds(&cache) {
                    if b.identity
                        .as_ref()
                        .is_some_and(|id| kept.iter().any(|i| i.sources.contains(id)))
                    {
                        continue;
                    }
                    let what = match &b.identity {
                        Some(_) => format!("{} build", b.program),
                        None => format!("unfinished or failed {} build", b.program),
                    };
                    let bytes = size_of(&b.path);
                    // Under the build's lock: one that runs now keeps its folder.
                    if dry_run
                        || kiln_userland::remove_build(&cache, &b)
                            .with_context(|| format!("removing {}", b.path.display()))?
                    {
                        remove(&b.path, &what, bytes, false)?;
                    } else {
                        println!(
                            "kiln: kept {} ({what}: a build of it runs now)",
                            b.path.display()
                        );
                    }
                }
            }
            println!(
                "kiln: {verb} {count} entries, {}; kept {} images",
                human(freed),
                kept.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
