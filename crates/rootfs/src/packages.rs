//! The package sysroot: the unpacked trees of a recipe's Debian packages merged into one tree
//! with the merged-`/usr` layout of the guest, so the ELF resolver and the index see the files
//! where the guest will have them.
//!
//! `/bin`, `/sbin`, `/lib*` of a package land under `/usr` (as dpkg does on a merged-`/usr`
//! system), and the top level gets the same `/bin -> usr/bin`... links as the guest skeleton.
//! Documentation (`/usr/share/{doc,man,info,lintian,bug}`) is left out: no service reads it.
//! Files are hard links into the package cache when possible (copies otherwise); the tree is
//! built once per package set under a temporary name and renamed into place.

use crate::RootfsError;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Marker written when a merged tree is complete.
const MARKER: &str = ".kiln-sysroot";

/// Top-level folders moved under `/usr`.
const USR_MERGED: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Folders never taken from packages.
const SKIPPED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/bug",
];

/// One unpacked package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageTree {
    /// `name version`, shown as the source in the manifest.
    pub label: String,
    /// The unpacked tree.
    pub dir: PathBuf,
}

/// What a path of the package sysroot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// One path of the package sysroot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File, folder or symlink.
    pub kind: EntryKind,
    /// The package it comes from (`name version`).
    pub package: String,
}

/// The merged tree of a package set.
#[derive(Debug, Clone)]
pub struct PackageRoot {
    /// The tree on the host.
    pub dir: PathBuf,
    /// Every guest path in it (merged-`/usr` form), sorted.
    pub entries: BTreeMap<PathBuf, Entry>,
}

impl EntryKind {
    /// The kind of a file of type `ft` (not followed); `None` for devices, FIFOs and sockets.
    pub fn of(ft: fs::FileType) -> Option<EntryKind> {
        if ft.is_symlink() {
            Some(EntryKind::Symlink)
        } else if ft.is_dir() {
            Some(EntryKind::Dir)
        } else if ft.is_file() {
            Some(EntryKind::File)
        } else {
            None
        }
    }
}

impl PackageRoot {
    /// The host path of guest path `guest` inside the tree.
    pub fn host_path(&self, guest: &Path) -> PathBuf {
        self.dir.join(guest.strip_prefix("/").unwrap_or(guest))
    }

    /// The package a guest path comes from.
    pub fn package_of(&self, guest: &Path) -> Option<&str> {
        self.entries.get(guest).map(|e| e.package.as_str())
    }
}

/// The guest path of a path inside a package (`bin/ls` → `/usr/bin/ls`); `None` for skipped
/// folders.
pub fn guest_path(rel: &Path) -> Option<PathBuf> {
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    let first = parts.first()?.to_str().unwrap_or("");
    let mut out = PathBuf::from("/");
    if USR_MERGED.contains(&first) {
        out.push("usr");
    }
    for p in &parts {
        out.push(p);
    }
    let rel_out = out.strip_prefix("/").unwrap_or(&out);
    if SKIPPED.iter().any(|s| rel_out.starts_with(s)) {
        return None;
    }
    Some(out)
}

/// Merge `trees` (earlier trees win on conflicts) into `dest` (reused when already complete).
pub fn merge(trees: &[PackageTree], dest: &Path) -> Result<PackageRoot, RootfsError> {
    let mut entries: BTreeMap<PathBuf, (Entry, PathBuf)> = BTreeMap::new();
    for tree in trees {
        for e in walkdir::WalkDir::new(&tree.dir)
            .min_depth(1)
            .sort_by_file_name()
        {
            let e = e.map_err(|err| RootfsError::Io {
                path: err.path().unwrap_or(&tree.dir).to_path_buf(),
                error: err.into(),
            })?;
            let rel = e.path().strip_prefix(&tree.dir).unwrap_or(e.path());
            if rel.as_os_str() == MARKER || rel.as_os_str() == ".kiln-unpacked" {
                continue;
            }
            let Some(guest) = guest_path(rel) else {
                continue;
            };
            let Some(kind) = EntryKind::of(e.file_type()) else {
                continue;
            };
            if USR_MERGED
                .iter()
                .any(|top| guest == Path::new("/usr").join(top) && kind == EntryKind::Symlink)
            {
                continue;
            }
            entries.entry(guest).or_insert((
                Entry {
                    kind,
                    package: tree.label.clone(),
                },
                e.path().to_path_buf(),
            ));
        }
    }
    if !dest.join(MARKER).is_file() {
        build_tree(&entries, dest)?;
    }
    Ok(PackageRoot {
        dir: dest.to_path_buf(),
        entries: entries.into_iter().map(|(k, (e, _))| (k, e)).collect(),
    })
}

fn build_tree(
    entries: &BTreeMap<PathBuf, (Entry, PathBuf)>,
    dest: &Path,
) -> Result<(), RootfsError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(RootfsError::io(parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".sysroot-")
        .tempdir_in(parent)
        .map_err(RootfsError::io(parent))?;
    let root = tmp.path().join("root");
    fs::create_dir_all(root.join("usr")).map_err(RootfsError::io(&root))?;
    for top in USR_MERGED {
        let link = root.join(top);
        std::os::unix::fs::symlink(Path::new("usr").join(top), &link)
            .map_err(RootfsError::io(&link))?;
    }
    for (guest, (entry, src)) in entries {
        let host = root.join(guest.strip_prefix("/").unwrap_or(guest));
        if let Some(p) = host.parent() {
            fs::create_dir_all(p).map_err(RootfsError::io(p))?;
        }
        match entry.kind {
            EntryKind::Dir => {
                if fs::symlink_metadata(&host).is_err() {
                    fs::create_dir(&host).map_err(RootfsError::io(&host))?;
                }
                let mode = fs::metadata(src)
                    .map(|m| m.permissions().mode())
                    .unwrap_or(0o755);
                fs::set_permissions(&host, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(RootfsError::io(&host))?;
            }
            EntryKind::Symlink => {
                let target = fs::read_link(src).map_err(RootfsError::io(src))?;
                std::os::unix::fs::symlink(&target, &host).map_err(RootfsError::io(&host))?;
            }
            EntryKind::File => {
                if fs::hard_link(src, &host).is_err() {
                    fs::copy(src, &host).map_err(RootfsError::io(src))?;
                }
            }
        }
    }
    fs::write(root.join(MARKER), "").map_err(RootfsError::io(&root))?;
    match fs::rename(&root, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.join(MARKER).is_file() => Ok(()), // another build finished first
        Err(e) => Err(RootfsError::Io {
            path: dest.to_path_buf(),
            error: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn guest_paths_follow_merged_usr_and_skip_docs() {
        assert_eq!(
            guest_path(Path::new("bin/ls")),
            Some(PathBuf::from("/usr/bin/ls"))
        );
        assert_eq!(
            guest_path(Path::new("./lib/x86_64-linux-gnu/libc.so.6")),
            Some(PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"))
        );
        assert_eq!(
            guest_path(Path::new("etc/nginx/nginx.conf")),
            Some(PathBuf::from("/etc/nginx/nginx.conf"))
        );
        assert_eq!(guest_path(Path::new("usr/share/doc/nginx/copyright")), None);
    }

    #[test]
    fn trees_merge_first_wins_with_owners() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        fs::create_dir_all(a.join("bin")).unwrap();
        fs::create_dir_all(a.join("usr/share/doc/a")).unwrap();
        fs::write(a.join("bin/tool"), "A").unwrap();
        fs::write(a.join("usr/share/doc/a/README"), "doc").unwrap();
        fs::create_dir_all(b.join("usr/bin")).unwrap();
        fs::write(b.join("usr/bin/tool"), "B").unwrap();
        std::os::unix::fs::symlink("tool", b.join("usr/bin/alias")).unwrap();
        let trees = [
            PackageTree {
                label: "a 1".into(),
                dir: a,
            },
            PackageTree {
                label: "b 2".into(),
                dir: b,
            },
        ];
        let dest = d.path().join("merged");
        let root = merge(&trees, &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("usr/bin/tool")).unwrap(), "A");
        assert_eq!(fs::read_to_string(dest.join("bin/alias")).unwrap(), "A");
        assert_eq!(root.package_of(Path::new("/usr/bin/tool")), Some("a 1"));
        assert_eq!(root.package_of(Path::new("/usr/bin/alias")), Some("b 2"));
        assert!(!root.entries.keys().any(|p| p.starts_with("/usr/share/doc")));
        // Reused as it is the second time.
        let again = merge(&trees, &dest).unwrap();
        assert_eq!(again.entries, root.entries);
    }
}
