//! A recipe's Debian packages as build inputs: the package set fetched through apt (private
//! state), unpacked, merged into one sysroot, and its files put into the staging tree, either
//! all of them or those the index selects, with the ELF closure of every kept executable or
//! library (looked up in the packages first, then the host).

use crate::BuildError;
use kiln_debpkg::{Cache, PackageSet};
use kiln_recipe::Recipe;
use kiln_rootfs::elf::{is_elf, NodeKind, Resolver};
use kiln_rootfs::index::IndexLine;
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

/// A tree the build takes files from: a recipe's merged packages, or the unpacked `from`
/// image when an index chooses from it.
pub(crate) struct Sysroot<'a> {
    /// The tree, each path with its label (`name version` for a package, `REF@DIGEST` for an
    /// image).
    pub root: &'a PackageRoot,
    /// Put before a label to make a file's manifest source: `package ` for packages.
    pub prefix: &'static str,
    /// Whether the host fills in what the tree lacks: index lines and the ELF closure's
    /// libraries (packages: yes; an image carries its own, and takes nothing of the host's).
    pub host: bool,
}

/// What to stage, collected before writing so each path is written once.
struct Plan<'a> {
    from: &'a Sysroot<'a>,
    elf_roots: Vec<(PathBuf, String)>,
}

impl Plan<'_> {
    /// The manifest source of host path `source`: its label in the tree, else the host path.
    fn label(&self, source: &Path) -> String {
        match source.strip_prefix(&self.from.root.dir) {
            Ok(rel) => self.guest_label(&Path::new("/").join(rel)),
            Err(_) => source.display().to_string(),
        }
    }

    /// The manifest source of guest path `guest`: its label in the tree, else the path itself.
    fn guest_label(&self, guest: &Path) -> String {
        self.from
            .root
            .package_of(guest)
            .map(|p| format!("{}{p}", self.from.prefix))
            .unwrap_or_else(|| guest.display().to_string())
    }
}

/// Put the package files into the staging tree: those `index` selects (with their ELF
/// closure), or all of them. Returns the index lines that matched nothing in the packages or
/// on the host.
pub fn install(
    recipe: &Recipe,
    p: &Provisioned,
    index: Option<&Path>,
    st: &mut Staging,
) -> Result<Vec<IndexLine>, BuildError> {
    let from = Sysroot {
        root: &p.root,
        prefix: "package ",
        host: true,
    };
    let unmatched = install_from(&from, index, st)?;
    tracing::debug!(recipe = %recipe.dir.display(), "package files staged");
    Ok(unmatched)
}

/// Put the files of `from` into the staging tree: those `index` selects (with their ELF
/// closure), or all of them. Returns the index lines that matched nothing in it.
pub(crate) fn install_from(
    from: &Sysroot<'_>,
    index: Option<&Path>,
    st: &mut Staging,
) -> Result<Vec<IndexLine>, BuildError> {
    let mut roots = vec![from.root.dir.clone()];
    if from.host {
        roots.push(PathBuf::from("/"));
    }
    let resolver = Resolver::layered(&roots).map_err(RootfsError::from)?;
    let mut plan = Plan {
        from,
        elf_roots: Vec::new(),
    };
    let mut unmatched = Vec::new();
    match index {
        None => {
            for (guest, entry) in &from.root.entries {
                let reason = "file of a package (no index: every file is kept)";
                let label = format!("{}{}", from.prefix, entry.package);
                let host = from.root.host_path(guest);
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
                        st.symlink(guest, &target, &label, reason)?;
                    }
                    EntryKind::File => {
                        if is_elf(&host) {
                            plan.elf_roots.push((guest.clone(), reason.to_string()));
                        } else {
                            st.copy_file_labelled(guest, &host, &label, reason)?;
                        }
                    }
                }
            }
        }
        Some(file) => {
            let selection = kiln_rootfs::index::select_from(file, from.root, from.host)
                .map_err(RootfsError::from)?;
            unmatched = selection.unmatched;
            for sel in selection.selected {
                let Some(nodes) = resolver.locate(&sel.path).map_err(RootfsError::from)? else {
                    // A dangling symlink in a package: keep the link itself.
                    let host = from.root.host_path(&sel.path);
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
                        let src = plan.guest_label(&link.path);
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
        return Ok(unmatched);
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
                let label = plan.guest_label(&node.path);
                st.symlink(&node.path, target, &label, &reason)?;
            }
        }
        staged.insert(node.path.clone(), ());
    }
    tracing::debug!(files = staged.len(), "ELF closure staged");
    Ok(unmatched)
}
