//! A recipe's Debian packages as build inputs: the package set fetched through apt (private
//! state), unpacked, merged into one sysroot, and its files put into the staging tree, either
//! all of them or those the index selects, with the ELF closure of every kept executable or
//! library (looked up in the packages first, then the host).

use crate::BuildError;
use kiln_debpkg::{Cache, PackageSet};
use kiln_recipe::Recipe;
use kiln_rootfs::elf::{is_elf, NodeKind, Resolver};
use kiln_rootfs::packages::{EntryKind, PackageRoot, PackageTree};
use kiln_rootfs::{RootfsError, Staging};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The file whose presence turns kiln-init's access tracer on (images built by `kiln trace`).
pub const TRACE_MARKER: &str = "/etc/kiln/trace";

/// Which image of a recipe to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Variant {
    /// As the recipe says: its index if it has one, else every package file.
    Normal,
    /// Every package file, whatever the index says, with the access tracer on.
    Traced,
    /// The package files selected by this index instead of the recipe's.
    WithIndex(PathBuf),
}

impl Variant {
    /// The index file in effect, if any.
    pub fn index(&self, recipe: &Recipe) -> Option<PathBuf> {
        match self {
            Variant::Normal => recipe.index_path(),
            Variant::Traced => None,
            Variant::WithIndex(p) => Some(p.clone()),
        }
    }

    /// Whether the tracer is on.
    pub fn traced(&self) -> bool {
        matches!(self, Variant::Traced)
    }

    /// How package files are chosen, for the manifest and the fingerprint.
    pub fn describe(&self, recipe: &Recipe) -> String {
        match (self, self.index(recipe)) {
            (Variant::Traced, _) => "every package file, traced".into(),
            (_, Some(i)) => format!("index {}", i.display()),
            (_, None) => "every package file".into(),
        }
    }
}

/// The provisioned packages of a recipe.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The resolved set.
    pub set: PackageSet,
    /// The merged sysroot.
    pub root: PackageRoot,
}

/// Fetch, unpack and merge the recipe's packages.
pub fn provision(recipe: &Recipe, cache: &Cache, refresh: bool) -> Result<Provisioned, BuildError> {
    let set = cache.fetch_set(&recipe.config.package_names(), refresh)?;
    let mut trees = Vec::new();
    for deb in &set.debs {
        let dir = cache.unpack(deb)?;
        trees.push(PackageTree {
            label: format!("{} {}", deb.package, deb.version),
            dir,
        });
    }
    // Requested packages first, so their files win over a dependency's on conflicts.
    let requested = &set.requested;
    trees.sort_by_key(|t| {
        let name = t.label.split(' ').next().unwrap_or("").to_string();
        (!requested.contains(&name), name)
    });
    let key = hex::encode(&Sha256::digest(set.identity().as_bytes())[..16]);
    let dest = cache.root().join("sysroots").join(key);
    let root = kiln_rootfs::packages::merge(&trees, &dest)?;
    Ok(Provisioned { set, root })
}

/// What to stage, collected before writing so each path is written once.
struct Plan<'a> {
    root: &'a PackageRoot,
    elf_roots: Vec<(PathBuf, String)>,
}

impl Plan<'_> {
    fn label(&self, source: &Path) -> String {
        match source.strip_prefix(&self.root.dir) {
            Ok(rel) => {
                let guest = Path::new("/").join(rel);
                self.root
                    .package_of(&guest)
                    .map(|p| format!("package {p}"))
                    .unwrap_or_else(|| source.display().to_string())
            }
            Err(_) => source.display().to_string(),
        }
    }
}

/// Put the package files into the staging tree: those `index` selects (with their ELF
/// closure), or all of them.
pub fn install(
    recipe: &Recipe,
    p: &Provisioned,
    index: Option<&Path>,
    st: &mut Staging,
) -> Result<(), BuildError> {
    let resolver =
        Resolver::layered(&[p.root.dir.clone(), PathBuf::from("/")]).map_err(RootfsError::from)?;
    let mut plan = Plan {
        root: &p.root,
        elf_roots: Vec::new(),
    };
    match index {
        None => {
            for (guest, entry) in &p.root.entries {
                let reason = "file of a package (no index: every file is kept)";
                let host = p.root.host_path(guest);
                match entry.kind {
                    EntryKind::Dir => {
                        let mode = std::fs::metadata(&host)
                            .map(|m| m.permissions().mode() & 0o7777)
                            .unwrap_or(0o755);
                        st.mkdir(guest, mode, reason)?;
                    }
                    EntryKind::Symlink => {
                        let target = std::fs::read_link(&host).map_err(|e| BuildError::Io {
                            path: host.clone(),
                            error: e,
                        })?;
                        st.symlink(
                            guest,
                            &target,
                            &format!("package {}", entry.package),
                            reason,
                        )?;
                    }
                    EntryKind::File => {
                        if is_elf(&host) {
                            plan.elf_roots.push((guest.clone(), reason.to_string()));
                        } else {
                            st.copy_file_labelled(
                                guest,
                                &host,
                                &format!("package {}", entry.package),
                                reason,
                            )?;
                        }
                    }
                }
            }
        }
        Some(file) => {
            let selected = kiln_rootfs::index::select(file, &p.root).map_err(RootfsError::from)?;
            for sel in selected {
                let Some(nodes) = resolver.locate(&sel.path).map_err(RootfsError::from)? else {
                    // A dangling symlink in a package: keep the link itself.
                    let host = p.root.host_path(&sel.path);
                    if let Ok(target) = std::fs::read_link(&host) {
                        st.symlink(&sel.path, &target, &plan.label(&host), &sel.reason)?;
                    }
                    continue;
                };
                let Some((last, links)) = nodes.split_last() else {
                    continue;
                };
                for link in links {
                    if let NodeKind::Symlink { target } = &link.kind {
                        let src = resolver_host_label(&plan, &link.path);
                        st.symlink(
                            &link.path,
                            target,
                            &src,
                            &format!(
                                "symlink on the path to {} ({})",
                                sel.path.display(),
                                sel.reason
                            ),
                        )?;
                    }
                }
                let NodeKind::File { source, .. } = &last.kind else {
                    continue;
                };
                let meta = std::fs::metadata(source).map_err(|e| BuildError::Io {
                    path: source.clone(),
                    error: e,
                })?;
                if meta.is_dir() {
                    st.mkdir(&last.path, meta.permissions().mode() & 0o7777, &sel.reason)?;
                } else if is_elf(source) {
                    plan.elf_roots.push((last.path.clone(), sel.reason.clone()));
                } else {
                    let label = plan.label(source);
                    st.copy_file_labelled(&last.path, source, &label, &sel.reason)?;
                }
            }
        }
    }
    if plan.elf_roots.is_empty() {
        return Ok(());
    }
    let closure = resolver
        .closure_with_reasons(&plan.elf_roots)
        .map_err(RootfsError::from)?;
    let mut staged: BTreeMap<PathBuf, ()> = BTreeMap::new();
    for node in &closure.nodes {
        let reason = node.reasons.join("; ");
        match &node.kind {
            NodeKind::File { source, .. } => {
                let label = plan.label(source);
                st.copy_file_labelled(&node.path, source, &label, &reason)?;
            }
            NodeKind::Symlink { target } => {
                let label = resolver_host_label(&plan, &node.path);
                st.symlink(&node.path, target, &label, &reason)?;
            }
        }
        staged.insert(node.path.clone(), ());
    }
    tracing::debug!(recipe = %recipe.dir.display(), files = staged.len(), "package ELF closure staged");
    Ok(())
}

/// The source label of a symlink at guest path `guest`: its package, or the host.
fn resolver_host_label(plan: &Plan, guest: &Path) -> String {
    plan.root
        .package_of(guest)
        .map(|p| format!("package {p}"))
        .unwrap_or_else(|| guest.display().to_string())
}
