//! The staging folder: a guest root tree on the host, written safely.
//!
//! Guest paths are resolved inside the staging root the way the guest will see them: a symlink
//! met on the way (`/bin -> usr/bin`, or an absolute `/lib64/ld.so -> /lib/...`) is followed
//! *within* the staging root, never on the host. Every write is recorded with its source and
//! reason, which become the manifest. Owners other than root's (a base image's files) are
//! recorded too, since the staged files themselves are the building user's: a file written
//! over one forgets it.

use crate::RootfsError;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Where a staged path came from and why it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Host path or generator ("kiln", "busybox-static 1:1.35…").
    pub source: String,
    /// Why it is in the image.
    pub reason: String,
}

/// A staging tree being assembled.
#[derive(Debug)]
pub struct Staging {
    root: PathBuf,
    origins: BTreeMap<PathBuf, Origin>,
    owners: BTreeMap<PathBuf, (u32, u32)>,
}

const MAX_SYMLINKS: usize = 40;

impl Staging {
    /// Start assembling in `root` (created if missing).
    pub fn new(root: &Path) -> Result<Staging, RootfsError> {
        fs::create_dir_all(root).map_err(RootfsError::io(root))?;
        Ok(Staging {
            root: root.to_path_buf(),
            origins: BTreeMap::new(),
            owners: BTreeMap::new(),
        })
    }

    /// The staging folder on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What was recorded for each guest path.
    pub fn origins(&self) -> &BTreeMap<PathBuf, Origin> {
        &self.origins
    }

    /// The (uid, gid) of each guest path owned by someone other than root.
    pub fn owners(&self) -> &BTreeMap<PathBuf, (u32, u32)> {
        &self.owners
    }

    /// Give the staged path `guest` (its last component not followed) the owner `uid:gid` in
    /// the image; root's (0, 0) is everyone's default.
    pub fn set_owner(&mut self, guest: &Path, uid: u32, gid: u32) -> Result<(), RootfsError> {
        let host = self.host_path(guest)?;
        let guest = self.guest_of_host(&host);
        if (uid, gid) == (0, 0) {
            self.owners.remove(&guest);
        } else {
            self.owners.insert(guest, (uid, gid));
        }
        Ok(())
    }

    /// The guest path of a host path under the root (symlinks already resolved).
    fn guest_of_host(&self, host: &Path) -> PathBuf {
        Path::new("/").join(host.strip_prefix(&self.root).unwrap_or(host))
    }

    /// Record the origin of the staged object at host path `host`.
    fn record_at(&mut self, host: &Path, source: &str, reason: &str) {
        let guest = self.guest_of_host(host);
        self.record(&guest, source, reason);
    }

    fn record(&mut self, guest: &Path, source: &str, reason: &str) {
        let entry = self
            .origins
            .entry(normalize(guest))
            .or_insert_with(|| Origin {
                source: source.to_string(),
                reason: String::new(),
            });
        entry.source = source.to_string();
        if !entry.reason.split("; ").any(|r| r == reason) {
            if !entry.reason.is_empty() {
                entry.reason.push_str("; ");
            }
            entry.reason.push_str(reason);
        }
    }

    /// Record where a path written by someone else (an unpacked set) came from.
    pub fn adopt(&mut self, guest: &Path, source: &str, reason: &str) {
        self.record(guest, source, reason);
    }

    /// Add a reason to an already staged path (e.g. a second binary needing the same library).
    pub fn add_reason(&mut self, guest: &Path, reason: &str) {
        let Ok(host) = self.host_path(guest) else {
            return;
        };
        let guest = self.guest_of_host(&host);
        if let Some(o) = self.origins.get(&guest).cloned() {
            self.record(&guest, &o.source, reason);
        }
    }

    /// The host path for `guest`, resolving every symlink of its parent inside the staging root
    /// and creating missing parent folders. The last component is not followed.
    pub fn host_path(&self, guest: &Path) -> Result<PathBuf, RootfsError> {
        let guest = normalize(guest);
        let name = match guest.file_name() {
            Some(n) => n.to_os_string(),
            None => return Ok(self.root.clone()),
        };
        let parent = self.resolve_dir(guest.parent().unwrap_or(Path::new("/")), &guest)?;
        Ok(parent.join(name))
    }

    /// Resolve a guest folder to a host folder under the root, creating what is missing.
    fn resolve_dir(&self, dir: &Path, for_path: &Path) -> Result<PathBuf, RootfsError> {
        let err = |m: String| RootfsError::Staging {
            path: for_path.to_path_buf(),
            message: m,
        };
        // The stack of components still to walk, in order; `cur` is the guest path so far.
        let mut todo: Vec<OsString> = components(dir).into_iter().rev().collect();
        let mut cur: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            let host = self.host_of(&cur).join(&c);
            match fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(err("too many levels of symbolic links".into()));
                    }
                    let target = fs::read_link(&host).map_err(RootfsError::io(&host))?;
                    if target.is_absolute() {
                        cur.clear();
                    }
                    for t in components(&target).into_iter().rev() {
                        todo.push(t);
                    }
                }
                Ok(m) if m.is_dir() => cur.push(c),
                Ok(_) => {
                    return Err(err(format!(
                        "{} is a file where a folder is needed",
                        guest_of(&cur, &c).display()
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir(&host).map_err(RootfsError::io(&host))?;
                    cur.push(c);
                }
                Err(e) => {
                    return Err(RootfsError::Io {
                        path: host,
                        error: e,
                    })
                }
            }
        }
        Ok(self.host_of(&cur))
    }

    fn host_of(&self, comps: &[OsString]) -> PathBuf {
        let mut p = self.root.clone();
        for c in comps {
            p.push(c);
        }
        p
    }

    /// Make room for a file or symlink at `host`: what was there goes, with its owner.
    fn clear_slot(&mut self, host: &Path) -> Result<(), RootfsError> {
        self.owners.remove(&self.guest_of_host(host));
        match fs::symlink_metadata(host) {
            Ok(m) if m.is_dir() => Err(RootfsError::Staging {
                path: host.strip_prefix(&self.root).unwrap_or(host).to_path_buf(),
                message: "a folder is already staged here; cannot replace it with a file".into(),
            }),
            Ok(_) => fs::remove_file(host).map_err(RootfsError::io(host)),
            Err(_) => Ok(()),
        }
    }

    /// Create a folder (and its parents).
    pub fn mkdir(&mut self, guest: &Path, mode: u32, reason: &str) -> Result<(), RootfsError> {
        let dir = self.resolve_dir(guest, guest)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            .map_err(RootfsError::io(&dir))?;
        self.record_at(&dir, "kiln", reason);
        Ok(())
    }

    /// Create a symlink. An identical existing link is kept; an existing folder or different link
    /// at that path wins (paths through it still resolve inside the staging tree).
    pub fn symlink(
        &mut self,
        guest: &Path,
        target: &Path,
        source: &str,
        reason: &str,
    ) -> Result<(), RootfsError> {
        let host = self.host_path(guest)?;
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() || m.is_dir() => {
                self.add_reason(guest, reason);
                return Ok(());
            }
            Ok(_) => self.clear_slot(&host)?,
            Err(_) => {}
        }
        symlink(target, &host).map_err(RootfsError::io(&host))?;
        self.record_at(&host, source, reason);
        Ok(())
    }

    /// Copy a host file's content (following host symlinks) to `guest`; `mode` overrides the
    /// source's permission bits (setuid/setgid bits are dropped either way).
    pub fn copy_file(
        &mut self,
        guest: &Path,
        host_src: &Path,
        mode: Option<u32>,
        reason: &str,
    ) -> Result<u64, RootfsError> {
        let dest = self.host_path(guest)?;
        self.clear_slot(&dest)?;
        let size = fs::copy(host_src, &dest).map_err(RootfsError::io(host_src))?;
        let src_mode = fs::metadata(host_src)
            .map_err(RootfsError::io(host_src))?
            .permissions()
            .mode();
        let mode = mode.unwrap_or(src_mode) & 0o1777 | 0o200;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
            .map_err(RootfsError::io(&dest))?;
        self.record_at(&dest, &host_src.display().to_string(), reason);
        Ok(size)
    }

    /// Like [`Staging::copy_file`], with the manifest's source given (for example the package a
    /// file comes from) instead of the host path.
    pub fn copy_file_labelled(
        &mut self,
        guest: &Path,
        host_src: &Path,
        source: &str,
        reason: &str,
    ) -> Result<u64, RootfsError> {
        let size = self.copy_file(guest, host_src, None, reason)?;
        let dest = self.host_path(guest)?;
        let guest = self.guest_of_host(&dest);
        if let Some(o) = self.origins.get_mut(&normalize(&guest)) {
            o.source = source.to_string();
        }
        Ok(size)
    }

    /// Write bytes to `guest`.
    pub fn write_file(
        &mut self,
        guest: &Path,
        data: &[u8],
        mode: u32,
        source: &str,
        reason: &str,
    ) -> Result<(), RootfsError> {
        let dest = self.host_path(guest)?;
        self.clear_slot(&dest)?;
        fs::write(&dest, data).map_err(RootfsError::io(&dest))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
            .map_err(RootfsError::io(&dest))?;
        self.record_at(&dest, source, reason);
        Ok(())
    }

    /// Overlay a host folder onto `guest_prefix`: folders merged, files replaced, symlinks copied
    /// as symlinks.
    pub fn overlay(
        &mut self,
        host_dir: &Path,
        guest_prefix: &Path,
        reason: &str,
    ) -> Result<usize, RootfsError> {
        let mut count = 0;
        for entry in walkdir::WalkDir::new(host_dir)
            .min_depth(1)
            .sort_by_file_name()
        {
            let entry = entry.map_err(|e| RootfsError::Io {
                path: e.path().unwrap_or(host_dir).to_path_buf(),
                error: e.into(),
            })?;
            let rel = entry.path().strip_prefix(host_dir).unwrap_or(entry.path());
            let guest = guest_prefix.join(rel);
            let ft = entry.file_type();
            if ft.is_dir() {
                let mode = entry
                    .metadata()
                    .map(|m| m.permissions().mode() & 0o7777)
                    .unwrap_or(0o755);
                self.mkdir(&guest, mode, reason)?;
                let host = self.resolve_dir(&guest, &guest)?;
                self.record_at(&host, &entry.path().display().to_string(), reason);
            } else if ft.is_symlink() {
                let target = fs::read_link(entry.path()).map_err(RootfsError::io(entry.path()))?;
                let host = self.host_path(&guest)?;
                self.clear_slot(&host)?;
                symlink(&target, &host).map_err(RootfsError::io(&host))?;
                self.record_at(&host, &entry.path().display().to_string(), reason);
            } else if ft.is_file() {
                self.copy_file(&guest, entry.path(), None, reason)?;
            } else {
                return Err(RootfsError::Staging {
                    path: entry.path().to_path_buf(),
                    message: "not a regular file, folder or symlink; remove it from the recipe"
                        .into(),
                });
            }
            count += 1;
        }
        Ok(count)
    }
}

/// `/a/./b/` → `/a/b` (absolute, no `.`; `..` kept for the resolver to handle).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => out.push(".."),
            _ => {}
        }
    }
    out
}

fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn guest_of(cur: &[OsString], c: &OsString) -> PathBuf {
    let mut p = PathBuf::from("/");
    for x in cur {
        p.push(x);
    }
    p.push(c);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_kept_through_symlinks_and_forgotten_when_a_file_is_replaced() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = Staging::new(d.path()).expect("staging");
        s.mkdir(Path::new("/usr/app"), 0o755, "base")
            .expect("mkdir");
        s.symlink(Path::new("/app"), Path::new("usr/app"), "base", "link")
            .expect("link");
        for f in ["/app/data", "/app/conf"] {
            s.write_file(Path::new(f), b"x", 0o644, "base", "file")
                .expect("write");
        }
        for p in ["/app/data", "/app/conf", "/app/"] {
            s.set_owner(Path::new(p), 1001, 1002).expect("owner");
        }
        s.set_owner(Path::new("/app/conf"), 0, 0).expect("owner");
        // A folder made again keeps its owner; a file written over loses it.
        s.mkdir(Path::new("/usr/app"), 0o755, "again")
            .expect("mkdir");
        s.write_file(Path::new("/app/data"), b"y", 0o644, "recipe", "overlay")
            .expect("write");
        let want: BTreeMap<PathBuf, (u32, u32)> = [(PathBuf::from("/app"), (1001, 1002))]
            .into_iter()
            .collect();
        // `/app` is a symlink: its own owner is recorded, not its target's.
        assert_eq!(s.owners(), &want);
        s.set_owner(Path::new("/usr/app"), 7, 8).expect("owner");
        assert_eq!(s.owners().get(Path::new("/usr/app")), Some(&(7, 8)));
    }

    #[test]
    fn writes_resolve_through_staged_symlinks_not_host_ones() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = Staging::new(d.path()).expect("staging");
        s.mkdir(Path::new("/usr/lib"), 0o755, "skeleton")
            .expect("mkdir");
        s.symlink(
            Path::new("/lib"),
            Path::new("usr/lib"),
            "kiln",
            "merged /usr",
        )
        .expect("link");
        // An absolute symlink must be read relative to the staging root, not the host's /.
        s.symlink(Path::new("/lib64"), Path::new("/usr/lib"), "kiln", "abs")
            .expect("link");
        s.write_file(Path::new("/lib/x/libfoo.so"), b"x", 0o644, "test", "needed")
            .expect("write");
        s.write_file(Path::new("/lib64/ld.so"), b"y", 0o755, "test", "interp")
            .expect("write");
        assert_eq!(
            fs::read(d.path().join("usr/lib/x/libfoo.so")).expect("read"),
            b"x"
        );
        assert_eq!(
            fs::read(d.path().join("usr/lib/ld.so")).expect("read"),
            b"y"
        );
        assert!(
            s.origins().contains_key(Path::new("/usr/lib/x/libfoo.so")),
            "recorded where it really is"
        );
    }

    #[test]
    fn symlink_pointing_outside_cannot_escape() {
        let d = tempfile::tempdir().expect("tmp");
        let outside = tempfile::tempdir().expect("tmp");
        let mut s = Staging::new(d.path()).expect("staging");
        // A staged link to an absolute host folder, and one climbing out with `..`.
        s.symlink(Path::new("/evil"), outside.path(), "kiln", "t")
            .expect("link");
        s.symlink(Path::new("/up"), Path::new("../../../../.."), "kiln", "t")
            .expect("link");
        s.write_file(Path::new("/evil/file"), b"z", 0o644, "t", "t")
            .expect("write");
        s.write_file(Path::new("/up/file2"), b"z", 0o644, "t", "t")
            .expect("write");
        assert!(
            fs::read_dir(outside.path()).expect("ls").next().is_none(),
            "wrote outside staging"
        );
        let inner = d
            .path()
            .join(outside.path().strip_prefix("/").expect("abs"))
            .join("file");
        assert!(inner.is_file(), "absolute link resolved inside staging");
        assert!(
            d.path().join("file2").is_file(),
            "`..` stops at the staging root"
        );
    }

    #[test]
    fn file_where_folder_needed_is_an_error() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = Staging::new(d.path()).expect("staging");
        s.write_file(Path::new("/etc"), b"", 0o644, "t", "t")
            .expect("write");
        let e = s
            .write_file(Path::new("/etc/rc"), b"", 0o644, "t", "t")
            .expect_err("must fail");
        assert!(
            e.to_string().contains("is a file where a folder is needed"),
            "{e}"
        );
    }

    #[test]
    fn overlay_copies_tree_and_symlinks_and_records_reasons() {
        let src = tempfile::tempdir().expect("tmp");
        fs::create_dir_all(src.path().join("var/www")).expect("mkdir");
        fs::write(src.path().join("var/www/index.html"), "hi").expect("write");
        symlink("index.html", src.path().join("var/www/home.html")).expect("link");
        let d = tempfile::tempdir().expect("tmp");
        let mut s = Staging::new(d.path()).expect("staging");
        let n = s
            .overlay(src.path(), Path::new("/"), "recipe files/")
            .expect("overlay");
        assert_eq!(n, 4);
        assert_eq!(
            fs::read_link(d.path().join("var/www/home.html")).expect("link"),
            Path::new("index.html")
        );
        let o = &s.origins()[Path::new("/var/www/index.html")];
        assert_eq!(o.reason, "recipe files/");
        assert!(o.source.ends_with("var/www/index.html"));
    }

    #[test]
    fn copy_drops_setuid() {
        let src = tempfile::NamedTempFile::new().expect("tmp");
        fs::set_permissions(src.path(), fs::Permissions::from_mode(0o4755)).expect("chmod");
        let d = tempfile::tempdir().expect("tmp");
        let mut s = Staging::new(d.path()).expect("staging");
        s.copy_file(Path::new("/bin/x"), src.path(), None, "t")
            .expect("copy");
        let m = fs::metadata(d.path().join("bin/x"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(m & 0o7777, 0o755);
    }
}
