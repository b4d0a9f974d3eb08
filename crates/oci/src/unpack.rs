//! Layers unpacked in order into one folder, without root: regular files,
//! folders, symlinks and hard links made; whiteouts (`.wh.NAME`) and opaque
//! folders (`.wh..wh..opq`) applied to the lower layers' content; device
//! nodes and FIFOs skipped and reported; mode bits kept. Owners cannot be set
//! without root: those other than root's are reported, for the image writers to
//! store.
//!
//! Nothing is written outside the destination: entries with absolute paths or
//! `..` components are refused, every parent folder is resolved one component
//! at a time (symlinks followed only while they stay inside the destination,
//! refused otherwise), and the final component is replaced, never followed.
//! Folders are made writable while unpacking and get their own modes at the end.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::OciError;

/// What [`unpack`] did not make, and how much it made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Entries skipped: (path in the layer, why), e.g. device nodes and FIFOs.
    pub skipped: Vec<(String, String)>,
    /// Regular files, symlinks and hard links written (over all layers).
    pub files: usize,
    /// Owner (uid, gid) of each path, relative to the destination, that the layers give to
    /// someone other than root (0, 0): the unpacked files are the unpacking user's.
    pub owners: BTreeMap<PathBuf, (u32, u32)>,
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const MAX_SYMLINK_HOPS: usize = 40;

/// Unpacks `layers` (tar, gzip or zstd, found from the content), bottom
/// first, into `dest` (created if missing).
pub fn unpack(layers: &[PathBuf], dest: &Path) -> Result<UnpackReport, OciError> {
    fs::create_dir_all(dest).map_err(|e| OciError::io(dest, e))?;
    let root = dest.canonicalize().map_err(|e| OciError::io(dest, e))?;
    let mut report = UnpackReport::default();
    let mut dir_modes: BTreeMap<PathBuf, u32> = BTreeMap::new();
    let mut owners: BTreeMap<PathBuf, (u32, u32)> = BTreeMap::new();
    for layer in layers {
        let mut u = Unpacker {
            root: &root,
            layer,
            written: HashSet::new(),
            dir_modes: &mut dir_modes,
            owners: &mut owners,
            report: &mut report,
        };
        u.layer()?;
    }
    // Deepest first, so a folder losing its write bit does not stop its children.
    for (rel, mode) in dir_modes.iter().rev() {
        if !plain_dir(&root, rel) {
            continue;
        }
        let path = root.join(rel);
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
            .map_err(|e| OciError::io(&path, e))?;
    }
    report.owners = owners;
    Ok(report)
}

/// Whether `root/rel` is a folder reached through folders only (no symlinks).
fn plain_dir(root: &Path, rel: &Path) -> bool {
    let mut p = root.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => {}
            _ => return false,
        }
    }
    true
}

/// The components of an archive path, refusing absolute paths and `..`.
fn clean(path: &Path) -> Result<Vec<OsString>, String> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".to_string()),
            Component::ParentDir => return Err("'..' component".to_string()),
        }
    }
    Ok(out)
}

fn open_layer(layer: &Path) -> Result<Box<dyn Read>, OciError> {
    let file = File::open(layer).map_err(|e| OciError::io(layer, e))?;
    let mut buf = BufReader::with_capacity(256 * 1024, file);
    let magic = buf.fill_buf().map_err(|e| OciError::io(layer, e))?;
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(buf))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buf).map_err(|e| OciError::io(layer, e))?)
    } else {
        Box::new(buf)
    })
}

struct Unpacker<'a> {
    root: &'a Path,
    layer: &'a Path,
    /// Real paths (relative to root) made by this layer: whiteouts spare them.
    written: HashSet<PathBuf>,
    dir_modes: &'a mut BTreeMap<PathBuf, u32>,
    /// Owners other than root's, by real path relative to the root.
    owners: &'a mut BTreeMap<PathBuf, (u32, u32)>,
    report: &'a mut UnpackReport,
}

impl Unpacker<'_> {
    fn refuse(&self, path: &str, why: impl Into<String>) -> OciError {
        OciError::BadLayerPath {
            layer: self.layer.to_path_buf(),
            path: path.to_string(),
            why: why.into(),
        }
    }

    fn io_err(&self, e: io::Error) -> OciError {
        OciError::io(self.layer, e)
    }

    fn layer(&mut self) -> Result<(), OciError> {
        let reader = open_layer(self.layer)?;
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(|e| self.io_err(e))? {
            let mut entry = entry.map_err(|e| self.io_err(e))?;
            self.entry(&mut entry)?;
        }
        Ok(())
    }

    fn entry(&mut self, entry: &mut tar::Entry<'_, Box<dyn Read>>) -> Result<(), OciError> {
        let raw = entry.path().map_err(|e| self.io_err(e))?.into_owned();
        let shown = raw.to_string_lossy().into_owned();
        let comps = clean(&raw).map_err(|why| self.refuse(&shown, why))?;
        let kind = entry.header().entry_type();
        let Some((name, parent)) = comps.split_last() else {
            return Ok(()); // the root folder itself
        };
        let name_str = name.to_string_lossy();
        if name_str == OPAQUE {
            if let Some(dir) = self.resolve(parent, Resolve::Lookup, &shown)? {
                self.prune(&dir)?;
            }
            return Ok(());
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT) {
            if hidden.starts_with(WHITEOUT) || hidden.is_empty() {
                return Ok(()); // aufs bookkeeping (.wh..wh.plnk, …)
            }
            if let Some(dir) = self.resolve(parent, Resolve::Lookup, &shown)? {
                let target = dir.join(hidden);
                if !self.written.contains(&target) {
                    self.remove(&target)?;
                }
            }
            return Ok(());
        }
        let mode = entry.header().mode().map_err(|e| self.io_err(e))? & 0o7777;
        let owner = Self::owner_of(entry.header());
        match kind {
            tar::EntryType::Directory => {
                let dir = self.resolve(&comps, Resolve::DirEntry, &shown)?;
                if let Some(dir) = dir {
                    self.dir_modes.insert(dir.clone(), mode);
                    self.set_owner(dir, owner);
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let rel = self.place(parent, name, &shown)?;
                let path = self.root.join(&rel);
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| OciError::io(&path, e))?;
                io::copy(entry, &mut file).map_err(|e| OciError::io(&path, e))?;
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|e| OciError::io(&path, e))?;
                if let Ok(mtime) = entry.header().mtime() {
                    let _ = file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime));
                }
                self.set_owner(rel, owner);
                self.report.files += 1;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.io_err(e))?
                    .ok_or_else(|| self.refuse(&shown, "symlink without a target"))?
                    .into_owned();
                let rel = self.place(parent, name, &shown)?;
                let path = self.root.join(&rel);
                std::os::unix::fs::symlink(&target, &path).map_err(|e| OciError::io(&path, e))?;
                self.set_owner(rel, owner);
                self.report.files += 1;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.io_err(e))?
                    .ok_or_else(|| self.refuse(&shown, "hard link without a target"))?
                    .into_owned();
                let tcomps = clean(&target).map_err(|why| {
                    self.refuse(
                        &shown,
                        format!("hard link target {}: {why}", target.display()),
                    )
                })?;
                let (tname, tparent) = tcomps
                    .split_last()
                    .ok_or_else(|| self.refuse(&shown, "hard link to the root folder"))?;
                let tdir = self
                    .resolve(tparent, Resolve::Lookup, &shown)?
                    .ok_or_else(|| {
                        self.refuse(
                            &shown,
                            format!("hard link target {} does not exist", target.display()),
                        )
                    })?;
                let trel = tdir.join(tname);
                let tpath = self.root.join(&trel);
                match fs::symlink_metadata(&tpath) {
                    Ok(m) if m.is_dir() => {
                        return Err(self.refuse(
                            &shown,
                            format!("hard link target {} is a folder", target.display()),
                        ))
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return Err(self.refuse(
                            &shown,
                            format!("hard link target {} does not exist", target.display()),
                        ))
                    }
                }
                let rel = self.place(parent, name, &shown)?;
                if rel == trel {
                    return Ok(());
                }
                let path = self.root.join(&rel);
                fs::hard_link(&tpath, &path).map_err(|e| OciError::io(&path, e))?;
                // One inode: both names have the target's owner.
                let shared = self.owners.get(&trel).copied().unwrap_or((0, 0));
                self.set_owner(rel, shared);
                self.report.files += 1;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let what = if kind == tar::EntryType::Char {
                    "character"
                } else {
                    "block"
                };
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                self.report
                    .skipped
                    .push((shown, format!("{what} device {major}:{minor} (needs root)")));
            }
            tar::EntryType::Fifo => {
                self.report
                    .skipped
                    .push((shown, "FIFO (named pipe)".to_string()));
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                self.report
                    .skipped
                    .push((shown, format!("unsupported tar entry type {:?}", other)));
            }
        }
        Ok(())
    }

    /// Makes room for a new non-folder entry `parent/name`: resolves (and
    /// makes) the parent, removes whatever is at the name (never following
    /// it), and returns the real relative path.
    fn place(
        &mut self,
        parent: &[OsString],
        name: &OsStr,
        shown: &str,
    ) -> Result<PathBuf, OciError> {
        let dir = self
            .resolve(parent, Resolve::Parent, shown)?
            .ok_or_else(|| self.refuse(shown, "parent folder cannot be made"))?;
        let rel = dir.join(name);
        self.remove(&rel)?;
        self.written.insert(rel.clone());
        Ok(rel)
    }

    /// The entry's (uid, gid) from its header; a field that is empty or not a number (some
    /// tools leave them blank) or out of range is root's, as every owner was before.
    fn owner_of(header: &tar::Header) -> (u32, u32) {
        let id = |v: io::Result<u64>| v.ok().and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
        (id(header.uid()), id(header.gid()))
    }

    /// Notes `rel`'s owner: kept when not root's, forgotten (a lower layer's) when it is.
    fn set_owner(&mut self, rel: PathBuf, owner: (u32, u32)) {
        if owner == (0, 0) {
            self.owners.remove(&rel);
        } else {
            self.owners.insert(rel, owner);
        }
    }

    /// Removes `root/rel` if present (a folder with everything in it), without following
    /// symlinks, and forgets the owners of what was there.
    fn remove(&mut self, rel: &Path) -> Result<(), OciError> {
        let gone: Vec<PathBuf> = self
            .owners
            .range(rel.to_path_buf()..)
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(rel))
            .cloned()
            .collect();
        for p in gone {
            self.owners.remove(&p);
        }
        let path = self.root.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path).map_err(|e| OciError::io(&path, e)),
            Ok(_) => fs::remove_file(&path).map_err(|e| OciError::io(&path, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(OciError::io(&path, e)),
        }
    }

    /// Empties `root/dir` of everything this layer did not make (an opaque folder).
    fn prune(&mut self, dir: &Path) -> Result<(), OciError> {
        let path = self.root.join(dir);
        let entries = match fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(OciError::io(&path, e)),
        };
        for child in entries {
            let child = child.map_err(|e| OciError::io(&path, e))?;
            let rel = dir.join(child.file_name());
            if self.written.contains(&rel) {
                let is_dir = child
                    .file_type()
                    .map_err(|e| OciError::io(&path, e))?
                    .is_dir();
                if is_dir {
                    self.prune(&rel)?;
                }
            } else {
                self.remove(&rel)?;
            }
        }
        Ok(())
    }

    /// Resolves `comps` to a real folder path relative to the root, following
    /// symlinks only while they stay inside it. `Lookup` answers `None` when
    /// something is missing; `Parent` makes missing folders; `DirEntry` also
    /// replaces a non-folder (file or symlink) at the entry's own path.
    fn resolve(
        &mut self,
        comps: &[OsString],
        how: Resolve,
        shown: &str,
    ) -> Result<Option<PathBuf>, OciError> {
        let create = how != Resolve::Lookup;
        let mut pending: VecDeque<OsString> = comps.iter().cloned().collect();
        let mut cur = PathBuf::new();
        let mut hops = 0;
        while let Some(c) = pending.pop_front() {
            if c == OsStr::new("..") {
                if !cur.pop() {
                    return Err(
                        self.refuse(shown, "a symlink on the way leads outside the destination")
                    );
                }
                continue;
            }
            if c.is_empty() || c == OsStr::new(".") {
                continue;
            }
            let next = cur.join(&c);
            let path = self.root.join(&next);
            // Symlink targets are expanded in front of the entry's remaining
            // components, so the last one popped is always the entry's own name.
            let own_path = how == Resolve::DirEntry && pending.is_empty();
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_dir() => {
                    // A folder this layer names (even implicitly) is this layer's too:
                    // an opaque marker above it prunes inside it, not it.
                    if create {
                        self.written.insert(next.clone());
                    }
                    cur = next;
                }
                Ok(_) if own_path => {
                    // A folder entry over a file or symlink of a lower layer replaces it.
                    fs::remove_file(&path).map_err(|e| OciError::io(&path, e))?;
                    self.make_dir(&path)?;
                    cur = next;
                }
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(self.refuse(shown, "too many levels of symlinks"));
                    }
                    let target = fs::read_link(&path).map_err(|e| OciError::io(&path, e))?;
                    if target.is_absolute() {
                        return Err(self.refuse(
                            shown,
                            format!(
                                "symlink {} -> {} leads outside the destination",
                                next.display(),
                                target.display()
                            ),
                        ));
                    }
                    for t in target.components().rev() {
                        pending.push_front(t.as_os_str().to_os_string());
                    }
                }
                Ok(_) if create => {
                    return Err(self.refuse(shown, format!("{} is not a folder", next.display())));
                }
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    self.make_dir(&path)?;
                    self.written.insert(next.clone());
                    cur = next;
                }
                Err(e) => return Err(OciError::io(&path, e)),
            }
        }
        if how == Resolve::DirEntry {
            self.written.insert(cur.clone());
        }
        Ok(Some(cur))
    }

    fn make_dir(&self, path: &Path) -> Result<(), OciError> {
        fs::create_dir(path).map_err(|e| OciError::io(path, e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(|e| OciError::io(path, e))
    }
}

/// How [`Unpacker::resolve`] treats what is missing or in the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolve {
    /// Find an existing folder; `None` if anything is missing.
    Lookup,
    /// Find or make the parent folder of an entry.
    Parent,
    /// Find or make the folder an entry names, replacing a non-folder there.
    DirEntry,
}
