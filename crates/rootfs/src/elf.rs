//! Shared-library closure of ELF binaries, resolved the way `ld.so` does it.
//!
//! This module owns answering "which files must be in the guest for these
//! binaries to run": each binary, its `PT_INTERP`, and every `DT_NEEDED`
//! library, recursively, searched like glibc's dynamic loader (DT_RPATH of
//! the object and its loaders when it has no DT_RUNPATH, then DT_RUNPATH,
//! then the `ld.so.conf` directories, then the default directories), with
//! `$ORIGIN`, `$LIB` and `$PLATFORM` expanded and libraries of the wrong
//! ELF class or machine skipped. Every symlink met on the way (merged-`/usr`
//! `/lib -> usr/lib`, `libfoo.so.1 -> libfoo.so.1.2.3`, ...) is kept as a
//! [`NodeKind::Symlink`] so the guest sees the same paths as the host.
//!
//! All paths in a [`Closure`] are guest paths (absolute, as seen inside the
//! sysroot); the `source` of a [`NodeKind::File`] is where to read the bytes on the host.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use goblin::elf::header;

/// Directories searched after `ld.so.conf` (glibc's trusted dirs, Debian multiarch first).
pub const DEFAULT_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Reasons kept on a symlink node before summarizing the rest as a count.
const MAX_LINK_REASONS: usize = 3;

/// Symlinks followed while resolving one path before giving up (like Linux's `ELOOP`).
const MAX_SYMLINKS: usize = 40;

/// Errors of the shared-library closure.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// A listed binary does not exist.
    #[error("{}{} does not exist: check the path in kiln.toml `root.binaries`", .path.display(), in_sysroot(.sysroot))]
    NotFound {
        /// The guest path.
        path: PathBuf,
        /// The sysroot it was looked up in.
        sysroot: PathBuf,
    },
    /// A listed binary path is relative.
    #[error("{} is not an absolute path: list binaries by their full path in kiln.toml `root.binaries` (e.g. /usr/bin/curl)", .path.display())]
    NotAbsolute {
        /// The path as given.
        path: PathBuf,
    },
    /// A listed file is not an ELF executable or shared object.
    #[error("{} is not an ELF executable ({looks_like}); list the interpreter instead or copy it with root.files", .path.display())]
    NotElf {
        /// The guest path.
        path: PathBuf,
        /// What it looks like instead.
        looks_like: String,
    },
    /// A listed binary is an ELF for another machine than the guest's.
    #[error("{}: is an ELF for {arch}; the guest is x86-64: list a binary built for x86-64 (amd64)", .path.display())]
    WrongMachine {
        /// The guest path.
        path: PathBuf,
        /// The machine it was built for (`aarch64`, `i386 (32-bit x86)`, ...).
        arch: String,
    },
    /// An ELF file could not be parsed.
    #[error("{} is a malformed ELF file ({reason}); is it truncated?", .path.display())]
    Malformed {
        /// The guest path.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// The program interpreter of a binary is missing.
    #[error("{}, the program interpreter (PT_INTERP) of {}, does not exist{}: install the C library the binary was built for", .interpreter.display(), .binary.display(), in_sysroot(.sysroot))]
    InterpreterNotFound {
        /// The interpreter path.
        interpreter: PathBuf,
        /// The binary naming it.
        binary: PathBuf,
        /// The sysroot.
        sysroot: PathBuf,
    },
    /// A `DT_NEEDED` library was found nowhere.
    #[error("library {library}, needed by {}, was not found (searched {}); install the package that provides it or add its directory to /etc/ld.so.conf", .needed_by.display(), display_dirs(.searched))]
    LibraryNotFound {
        /// The DT_NEEDED name.
        library: String,
        /// The object that needs it.
        needed_by: PathBuf,
        /// The directories searched, in order.
        searched: Vec<PathBuf>,
    },
    /// Too many symlinks (a loop) while resolving a path.
    #[error("too many levels of symbolic links (a symlink loop?) while resolving {}: fix the links", .path.display())]
    SymlinkLoop {
        /// The guest path being resolved.
        path: PathBuf,
    },
    /// A file could not be read.
    // The OS error is in the message, not a `source` (it would be printed twice with causes).
    #[error("cannot read {}: {error}", .path.display())]
    Io {
        /// The host path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
}

fn in_sysroot(sysroot: &Path) -> String {
    if sysroot == Path::new("/") {
        String::new()
    } else {
        format!(" (in sysroot {})", sysroot.display())
    }
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "no directories".into();
    }
    let mut s = String::new();
    for (i, d) in dirs.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{}", d.display());
    }
    s
}

/// The files needed by a set of binaries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    /// Every node, sorted by path, without duplicates.
    pub nodes: Vec<Node>,
}

impl Closure {
    /// The node at guest path `path`, if any.
    pub fn get(&self, path: &Path) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.path.as_path().cmp(path))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

/// One file or symlink of a [`Closure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Absolute guest path.
    pub path: PathBuf,
    /// File or symlink.
    pub kind: NodeKind,
    /// Why it is there, e.g. `needed by /usr/bin/curl (DT_NEEDED libcurl.so.4)`.
    pub reasons: Vec<String>,
}

/// What a [`Node`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular file.
    File {
        /// Host path to copy from (sysroot joined).
        source: PathBuf,
        /// Size in bytes.
        size: u64,
    },
    /// A symbolic link.
    Symlink {
        /// Link target as read by `readlink`, unchanged.
        target: PathBuf,
    },
}

/// The facts about one ELF object that the loader cares about.
#[derive(Debug)]
struct ElfInfo {
    class: u8,
    data: u8,
    machine: u16,
    interp: Option<String>,
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
    soname: Option<String>,
}

/// Result of resolving a guest path inside the sysroot.
struct Resolved {
    /// Symlinks met: (guest path of the link, target as read).
    links: Vec<(PathBuf, PathBuf)>,
    /// Guest path with every symlink resolved.
    real: PathBuf,
}

/// Resolves shared-library closures inside a sysroot (`/` for the host), or inside several
/// sysroots layered over each other (a package tree over the host): a guest path is looked up
/// in each root in order and the first that has it wins.
#[derive(Debug, Clone)]
pub struct Resolver {
    sysroot: PathBuf,
    /// Lower layers, searched after `sysroot`.
    lower: Vec<PathBuf>,
    conf_dirs: Vec<PathBuf>,
    default_dirs: Vec<PathBuf>,
}

impl Resolver {
    /// A resolver for `sysroot`, with search dirs from
    /// `<sysroot>/etc/ld.so.conf` (following `include` globs, relative to
    /// the sysroot) then [`DEFAULT_DIRS`].
    pub fn new(sysroot: &Path) -> Result<Self, ElfError> {
        Self::layered(&[sysroot.to_path_buf()])
    }

    /// A resolver over several roots, the first on top (for example a package tree, then `/`).
    /// `ld.so.conf` is read through the layers too.
    pub fn layered(roots: &[PathBuf]) -> Result<Self, ElfError> {
        let sysroot = roots.first().cloned().unwrap_or_else(|| PathBuf::from("/"));
        let mut r = Resolver {
            sysroot,
            lower: roots.iter().skip(1).cloned().collect(),
            conf_dirs: Vec::new(),
            default_dirs: DEFAULT_DIRS.iter().map(PathBuf::from).collect(),
        };
        let mut dirs = Vec::new();
        let mut seen = HashSet::new();
        r.parse_conf(Path::new("/etc/ld.so.conf"), &mut dirs, &mut seen)?;
        let mut unique = HashSet::new();
        dirs.retain(|d| unique.insert(d.clone()));
        r.conf_dirs = dirs;
        Ok(r)
    }

    /// The sysroot.
    pub fn sysroot(&self) -> &Path {
        &self.sysroot
    }

    /// Directories searched after RPATH/RUNPATH: `ld.so.conf` ones, then the defaults.
    pub fn search_dirs(&self) -> Vec<PathBuf> {
        let mut seen = HashSet::new();
        self.conf_dirs
            .iter()
            .chain(&self.default_dirs)
            .filter(|d| seen.insert((*d).clone()))
            .cloned()
            .collect()
    }

    /// Host path of a guest path (no symlink resolution): in the first root that has it.
    fn host(&self, guest: &Path) -> PathBuf {
        let rel: PathBuf = guest
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let top = self.sysroot.join(&rel);
        if self.lower.is_empty() || fs::symlink_metadata(&top).is_ok() {
            return top;
        }
        for root in &self.lower {
            let p = root.join(&rel);
            if fs::symlink_metadata(&p).is_ok() {
                return p;
            }
        }
        top
    }

    fn parse_conf(
        &self,
        file: &Path,
        dirs: &mut Vec<PathBuf>,
        seen: &mut HashSet<PathBuf>,
    ) -> Result<(), ElfError> {
        if !seen.insert(file.to_path_buf()) || seen.len() > 256 {
            return Ok(());
        }
        let host = match self.resolve(file) {
            Ok(Some(r)) => self.host(&r.real),
            _ => return Ok(()),
        };
        let text = match fs::read_to_string(&host) {
            Ok(t) => t,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::IsADirectory
                ) =>
            {
                return Ok(())
            }
            Err(e) => {
                return Err(ElfError::Io {
                    path: host,
                    error: e,
                })
            }
        };
        let base = file.parent().unwrap_or(Path::new("/"));
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            match words.next() {
                Some("include") => {
                    for pattern in words {
                        let guest_pattern = base.join(pattern);
                        for inc in self.glob_guest(&guest_pattern) {
                            self.parse_conf(&inc, dirs, seen)?;
                        }
                    }
                }
                Some("hwcap") => {}
                _ => {
                    for dir in line.split([' ', '\t', ':', ',']).filter(|d| !d.is_empty()) {
                        // "dir=TYPE" (libc5 era) keeps the dir part.
                        let dir = dir.split('=').next().unwrap_or(dir).trim_end_matches('/');
                        if dir.starts_with('/') {
                            dirs.push(PathBuf::from(dir));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Expand a glob over guest paths, sorted.
    fn glob_guest(&self, pattern: &Path) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for root in std::iter::once(&self.sysroot).chain(&self.lower) {
            let sysroot = root.to_string_lossy();
            let root_escaped = glob::Pattern::escape(sysroot.trim_end_matches('/'));
            let rel = pattern.to_string_lossy();
            let full = format!("{root_escaped}/{}", rel.trim_start_matches('/'));
            let Ok(paths) = glob::glob(&full) else {
                tracing::warn!(pattern = %pattern.display(), "ignoring a bad include pattern in ld.so.conf");
                return Vec::new();
            };
            out.extend(paths.flatten().filter_map(|p| {
                let rel = p.strip_prefix(root).ok()?;
                Some(Path::new("/").join(rel))
            }));
        }
        out.sort();
        out.dedup();
        out
    }

    /// Resolve a guest path inside the sysroot, recording every symlink.
    /// `Ok(None)` when some component does not exist.
    fn resolve(&self, guest: &Path) -> Result<Option<Resolved>, ElfError> {
        let mut links = Vec::new();
        let mut current = PathBuf::from("/");
        let mut pending: VecDeque<std::ffi::OsString> = guest
            .components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(p.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        while let Some(part) = pending.pop_front() {
            if part == ".." {
                current.pop();
                continue;
            }
            let candidate = current.join(&part);
            let host = self.host(&candidate);
            let meta = match fs::symlink_metadata(&host) {
                Ok(m) => m,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => {
                    return Err(ElfError::Io {
                        path: host,
                        error: e,
                    })
                }
            };
            if meta.file_type().is_symlink() {
                if links.len() >= MAX_SYMLINKS {
                    return Err(ElfError::SymlinkLoop {
                        path: guest.to_path_buf(),
                    });
                }
                let target = fs::read_link(&host).map_err(|e| ElfError::Io {
                    path: host,
                    error: e,
                })?;
                let mut rest: VecDeque<std::ffi::OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(p) => Some(p.to_os_string()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    })
                    .collect();
                if target.is_absolute() {
                    current = PathBuf::from("/");
                }
                rest.extend(pending.drain(..));
                pending = rest;
                links.push((candidate, target));
            } else {
                if !pending.is_empty() && !meta.is_dir() {
                    return Ok(None);
                }
                current = candidate;
            }
        }
        Ok(Some(Resolved {
            links,
            real: current,
        }))
    }

    /// The closure of `roots` (absolute guest paths): each binary, its
    /// interpreter, and its libraries, recursively, with every symlink on
    /// the way. Deterministic: nodes sorted by path.
    /// Each root must be an ELF for the guest (x86-64): another machine's is refused.
    pub fn closure(&self, roots: &[PathBuf]) -> Result<Closure, ElfError> {
        let listed: Vec<(PathBuf, String)> = roots
            .iter()
            .map(|r| (r.clone(), "listed in kiln.toml".to_string()))
            .collect();
        self.walk(&listed, true)
    }

    /// Like [`Resolver::closure`], with the reason recorded for each root (for example
    /// `listed in files.txt:3`); roots of any machine are taken (a package may ship firmware
    /// or another machine's objects as data).
    pub fn closure_with_reasons(&self, roots: &[(PathBuf, String)]) -> Result<Closure, ElfError> {
        self.walk(roots, false)
    }

    fn walk(&self, roots: &[(PathBuf, String)], guest_only: bool) -> Result<Closure, ElfError> {
        let mut walk = Walk {
            r: self,
            nodes: BTreeMap::new(),
            infos: HashMap::new(),
            guest_only,
        };
        for (root, reason) in roots {
            walk.root(root, reason)?;
        }
        let mut nodes: Vec<Node> = walk.nodes.into_values().collect();
        for node in &mut nodes {
            // `/lib` lies on the path to every library: keep its reasons short.
            if matches!(node.kind, NodeKind::Symlink { .. })
                && node.reasons.len() > MAX_LINK_REASONS + 1
            {
                let more = node.reasons.len() - MAX_LINK_REASONS;
                node.reasons.truncate(MAX_LINK_REASONS);
                node.reasons
                    .push(format!("symlink on the path to {more} more files"));
            }
        }
        Ok(Closure { nodes })
    }
}

impl Resolver {
    /// The nodes that make `path` reachable as in the sysroot: every symlink on the way and the
    /// final file or folder (`None` when it does not exist), without reading it as ELF.
    /// The last node is the resolved object; its `source` is the host path to copy.
    pub fn locate(&self, path: &Path) -> Result<Option<Vec<Node>>, ElfError> {
        let Some(res) = self.resolve(path)? else {
            return Ok(None);
        };
        let mut nodes: Vec<Node> = res
            .links
            .iter()
            .map(|(link, target)| Node {
                path: link.clone(),
                kind: NodeKind::Symlink {
                    target: target.clone(),
                },
                reasons: Vec::new(),
            })
            .collect();
        let source = self.host(&res.real);
        let size = fs::metadata(&source).map(|m| m.len()).unwrap_or(0);
        nodes.push(Node {
            path: res.real,
            kind: NodeKind::File { source, size },
            reasons: Vec::new(),
        });
        Ok(Some(nodes))
    }
}

/// Whether the file at host path `path` starts with the ELF magic.
pub fn is_elf(path: &Path) -> bool {
    let mut head = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && head == *b"\x7fELF"
}

/// An object queued for dependency processing.
struct Pending {
    load_path: PathBuf,
    info: Rc<ElfInfo>,
    origin: PathBuf,
    /// Expanded DT_RPATH dirs of the loaders (nearest first), used when the object has no RUNPATH.
    loader_rpaths: Rc<Vec<PathBuf>>,
}

struct Walk<'a> {
    r: &'a Resolver,
    nodes: BTreeMap<PathBuf, Node>,
    /// Parsed ELF files by real guest path.
    infos: HashMap<PathBuf, Rc<ElfInfo>>,
    /// Refuse roots that are not x86-64 ELF objects.
    guest_only: bool,
}

/// The machine an ELF object was built for, when it is not the guest's (x86-64, 64-bit,
/// little-endian).
fn foreign_machine(info: &ElfInfo) -> Option<String> {
    let name = match (info.machine, info.class) {
        (header::EM_X86_64, header::ELFCLASS64) if info.data == header::ELFDATA2LSB => return None,
        (header::EM_X86_64, header::ELFCLASS32) => "x32 (the 32-bit x86-64 ABI)".to_string(),
        (header::EM_386, _) => "i386 (32-bit x86)".to_string(),
        (header::EM_AARCH64, _) => "aarch64".to_string(),
        (header::EM_ARM, _) => "32-bit ARM".to_string(),
        (header::EM_RISCV, _) => "RISC-V".to_string(),
        (m, _) => format!(
            "another machine ({}, e_machine {m})",
            header::machine_to_str(m).to_lowercase()
        ),
    };
    Some(name)
}

fn looks_like(bytes: &[u8]) -> String {
    if let Some(rest) = bytes.strip_prefix(b"#!") {
        let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
        let interp = String::from_utf8_lossy(line).trim().to_string();
        return if interp.contains("sh") {
            format!("it looks like a shell script for {interp}")
        } else {
            format!("it looks like a script for {interp}")
        };
    }
    if bytes.is_empty() {
        return "it is empty".into();
    }
    if std::str::from_utf8(bytes)
        .is_ok_and(|s| s.chars().all(|c| !c.is_control() || c.is_whitespace()))
    {
        return "it looks like a text file".into();
    }
    "unknown binary format".into()
}

fn lib_dir(machine: u16, class: u8) -> &'static str {
    match (machine, class) {
        (header::EM_X86_64, header::ELFCLASS64) => "lib/x86_64-linux-gnu",
        (header::EM_X86_64, _) => "lib/x86_64-linux-gnux32",
        (header::EM_386, _) => "lib/i386-linux-gnu",
        (header::EM_AARCH64, _) => "lib/aarch64-linux-gnu",
        (header::EM_ARM, _) => "lib/arm-linux-gnueabihf",
        (header::EM_RISCV, _) => "lib/riscv64-linux-gnu",
        _ => "lib",
    }
}

fn platform(machine: u16) -> &'static str {
    match machine {
        header::EM_X86_64 => "x86_64",
        header::EM_386 => "i686",
        header::EM_AARCH64 => "aarch64",
        header::EM_ARM => "v7l",
        header::EM_RISCV => "riscv64",
        _ => "unknown",
    }
}

/// Expand `$ORIGIN`, `$LIB`, `$PLATFORM` (and `${...}` forms) in one path list entry.
fn expand(entry: &str, origin: &Path, info: &ElfInfo) -> PathBuf {
    let origin = origin.to_string_lossy();
    let lib = lib_dir(info.machine, info.class);
    let plat = platform(info.machine);
    let mut out = entry.to_string();
    for (name, value) in [
        ("ORIGIN", origin.as_ref()),
        ("LIB", lib),
        ("PLATFORM", plat),
    ] {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    PathBuf::from(out)
}

fn expand_list(list: &[String], origin: &Path, info: &ElfInfo) -> Vec<PathBuf> {
    list.iter()
        .flat_map(|s| s.split(':'))
        .filter(|s| !s.is_empty())
        .map(|s| expand(s, origin, info))
        .filter(|p| p.is_absolute())
        .collect()
}

impl Walk<'_> {
    fn add_reason(&mut self, path: &Path, reason: &str) {
        if let Some(node) = self.nodes.get_mut(path) {
            if !node.reasons.iter().any(|r| r == reason) {
                node.reasons.push(reason.to_string());
            }
        }
    }

    /// Record the symlinks of a resolution and the final file.
    fn add_resolved(
        &mut self,
        requested: &Path,
        resolved: &Resolved,
        reason: &str,
    ) -> Result<(), ElfError> {
        let link_reason = format!("symlink on the path to {}", requested.display());
        for (link, target) in &resolved.links {
            self.nodes.entry(link.clone()).or_insert_with(|| Node {
                path: link.clone(),
                kind: NodeKind::Symlink {
                    target: target.clone(),
                },
                reasons: Vec::new(),
            });
            self.add_reason(link, &link_reason);
        }
        if !self.nodes.contains_key(&resolved.real) {
            let source = self.r.host(&resolved.real);
            let size = fs::metadata(&source)
                .map_err(|e| ElfError::Io {
                    path: source.clone(),
                    error: e,
                })?
                .len();
            self.nodes.insert(
                resolved.real.clone(),
                Node {
                    path: resolved.real.clone(),
                    kind: NodeKind::File { source, size },
                    reasons: Vec::new(),
                },
            );
        }
        self.add_reason(&resolved.real, reason);
        Ok(())
    }

    /// Parse (once) the ELF file at a real guest path. `Ok(None)` when it is not ELF.
    fn info(&mut self, real: &Path, shown: &Path) -> Result<Option<Rc<ElfInfo>>, ElfError> {
        if let Some(i) = self.infos.get(real) {
            return Ok(Some(i.clone()));
        }
        let host = self.r.host(real);
        let bytes = fs::read(&host).map_err(|e| ElfError::Io {
            path: host,
            error: e,
        })?;
        if !bytes.starts_with(b"\x7fELF") {
            return Ok(None);
        }
        let elf = goblin::elf::Elf::parse(&bytes).map_err(|e| ElfError::Malformed {
            path: shown.to_path_buf(),
            reason: e.to_string(),
        })?;
        let info = Rc::new(ElfInfo {
            class: elf.header.e_ident[header::EI_CLASS],
            data: elf.header.e_ident[header::EI_DATA],
            machine: elf.header.e_machine,
            interp: elf.interpreter.map(str::to_string),
            needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
            rpath: elf.rpaths.iter().map(|s| s.to_string()).collect(),
            runpath: elf.runpaths.iter().map(|s| s.to_string()).collect(),
            soname: elf.soname.map(str::to_string),
        });
        self.infos.insert(real.to_path_buf(), info.clone());
        Ok(Some(info))
    }

    fn root(&mut self, root: &Path, root_reason: &str) -> Result<(), ElfError> {
        if !root.is_absolute() {
            return Err(ElfError::NotAbsolute {
                path: root.to_path_buf(),
            });
        }
        let Some(resolved) = self.r.resolve(root)? else {
            return Err(ElfError::NotFound {
                path: root.to_path_buf(),
                sysroot: self.r.sysroot.clone(),
            });
        };
        let host = self.r.host(&resolved.real);
        let meta = fs::metadata(&host).map_err(|e| ElfError::Io {
            path: host.clone(),
            error: e,
        })?;
        if !meta.is_file() {
            return Err(ElfError::NotElf {
                path: root.to_path_buf(),
                looks_like: "it is a directory or special file".into(),
            });
        }
        let Some(info) = self.info(&resolved.real, root)? else {
            let mut head = Vec::new();
            fs::File::open(&host)
                .and_then(|f| f.take(4096).read_to_end(&mut head))
                .map_err(|e| ElfError::Io {
                    path: host,
                    error: e,
                })?;
            return Err(ElfError::NotElf {
                path: root.to_path_buf(),
                looks_like: looks_like(&head),
            });
        };
        if self.guest_only {
            if let Some(arch) = foreign_machine(&info) {
                return Err(ElfError::WrongMachine {
                    path: root.to_path_buf(),
                    arch,
                });
            }
        }
        self.add_resolved(root, &resolved, root_reason)?;

        // One process: libraries are shared by name (soname) once loaded.
        let mut loaded: HashMap<String, PathBuf> = HashMap::new();
        let mut queue: VecDeque<Pending> = VecDeque::new();
        let mut done: HashSet<PathBuf> = HashSet::new();

        if let Some(interp) = info.interp.clone() {
            let ipath = PathBuf::from(&interp);
            let Some(ires) = self.r.resolve(&ipath)? else {
                return Err(ElfError::InterpreterNotFound {
                    interpreter: ipath,
                    binary: root.to_path_buf(),
                    sysroot: self.r.sysroot.clone(),
                });
            };
            self.add_resolved(&ipath, &ires, &format!("interpreter of {}", root.display()))?;
            if let Some(iinfo) = self.info(&ires.real, &ipath)? {
                if let Some(so) = &iinfo.soname {
                    loaded.insert(so.clone(), ires.real.clone());
                }
                if let Some(name) = ipath.file_name() {
                    loaded.insert(name.to_string_lossy().into_owned(), ires.real.clone());
                }
                queue.push_back(Pending {
                    origin: ipath.parent().unwrap_or(Path::new("/")).to_path_buf(),
                    load_path: ipath,
                    info: iinfo,
                    loader_rpaths: Rc::new(Vec::new()),
                });
            }
        }
        // The main program's $ORIGIN is its real directory (/proc/self/exe).
        let origin = resolved
            .real
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        queue.push_back(Pending {
            load_path: root.to_path_buf(),
            info,
            origin,
            loader_rpaths: Rc::new(Vec::new()),
        });

        // Breadth-first, like ld.so's load order.
        while let Some(obj) = queue.pop_front() {
            if !done.insert(obj.load_path.clone()) {
                continue;
            }
            let has_runpath = !obj.info.runpath.is_empty();
            let own_rpath = if has_runpath {
                Vec::new()
            } else {
                expand_list(&obj.info.rpath, &obj.origin, &obj.info)
            };
            // RPATH chain: this object's, then its loaders' (only without RUNPATH).
            let chain: Rc<Vec<PathBuf>> = Rc::new(
                own_rpath
                    .iter()
                    .chain(obj.loader_rpaths.iter())
                    .cloned()
                    .collect(),
            );
            let runpath = expand_list(&obj.info.runpath, &obj.origin, &obj.info);
            let mut dirs: Vec<PathBuf> = Vec::new();
            if !has_runpath {
                dirs.extend(chain.iter().cloned());
            }
            dirs.extend(runpath);
            dirs.extend(self.r.search_dirs());
            let mut unique = HashSet::new();
            dirs.retain(|d| unique.insert(d.clone()));

            for lib in obj.info.needed.clone() {
                let reason = format!("needed by {} (DT_NEEDED {lib})", obj.load_path.display());
                if let Some(real) = loaded.get(&lib) {
                    let real = real.clone();
                    self.add_reason(&real, &reason);
                    continue;
                }
                let (path, res, info) = self.find_library(&lib, &obj, &dirs)?;
                self.add_resolved(&path, &res, &reason)?;
                loaded.insert(lib.clone(), res.real.clone());
                if let Some(so) = &info.soname {
                    loaded.entry(so.clone()).or_insert_with(|| res.real.clone());
                }
                queue.push_back(Pending {
                    origin: path.parent().unwrap_or(Path::new("/")).to_path_buf(),
                    load_path: path,
                    info,
                    loader_rpaths: chain.clone(),
                });
            }
        }
        Ok(())
    }

    /// Search `dirs` for a compatible `lib` (or take it as a path when it contains `/`).
    fn find_library(
        &mut self,
        lib: &str,
        parent: &Pending,
        dirs: &[PathBuf],
    ) -> Result<(PathBuf, Resolved, Rc<ElfInfo>), ElfError> {
        let candidates: Vec<PathBuf> = if lib.contains('/') {
            let p = expand(lib, &parent.origin, &parent.info);
            if p.is_absolute() {
                vec![p]
            } else {
                Vec::new()
            }
        } else {
            dirs.iter().map(|d| d.join(lib)).collect()
        };
        for candidate in candidates {
            let Some(res) = self.r.resolve(&candidate)? else {
                continue;
            };
            let host = self.r.host(&res.real);
            if !host.is_file() || !self.compatible(&host, &parent.info) {
                tracing::trace!(candidate = %candidate.display(), "skipping incompatible or non-ELF candidate");
                continue;
            }
            let Some(info) = self.info(&res.real, &candidate)? else {
                continue;
            };
            return Ok((candidate, res, info));
        }
        Err(ElfError::LibraryNotFound {
            library: lib.to_string(),
            needed_by: parent.load_path.clone(),
            searched: if lib.contains('/') {
                Vec::new()
            } else {
                dirs.to_vec()
            },
        })
    }

    /// Same ELF class, byte order and machine as the object that needs it.
    fn compatible(&self, host: &Path, parent: &ElfInfo) -> bool {
        let mut head = [0u8; 64];
        let ok = fs::File::open(host)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok();
        if !ok || !head.starts_with(b"\x7fELF") {
            return false;
        }
        match goblin::elf::Elf::parse_header(&head) {
            Ok(h) => {
                h.e_ident[header::EI_CLASS] == parent.class
                    && h.e_ident[header::EI_DATA] == parent.data
                    && h.e_machine == parent.machine
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::process::Command;

    /// A minimal 64-bit little-endian ELF executable for `machine` (e.g. EM_AARCH64 = 183): the
    /// header and, when `interp` is given, one PT_INTERP program header naming it.
    fn tiny_elf(machine: u16, interp: Option<&str>) -> Vec<u8> {
        let mut b = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        b.resize(16, 0);
        b.extend(2u16.to_le_bytes()); // e_type: EXEC
        b.extend(machine.to_le_bytes());
        b.extend(1u32.to_le_bytes()); // e_version
        b.extend(0x40_0000u64.to_le_bytes()); // e_entry
        let phnum: u16 = interp.map_or(0, |_| 1);
        b.extend((if phnum > 0 { 64u64 } else { 0 }).to_le_bytes()); // e_phoff
        b.extend(0u64.to_le_bytes()); // e_shoff
        b.extend(0u32.to_le_bytes()); // e_flags
        b.extend(64u16.to_le_bytes()); // e_ehsize
        b.extend(56u16.to_le_bytes()); // e_phentsize
        b.extend(phnum.to_le_bytes());
        b.extend(64u16.to_le_bytes()); // e_shentsize
        b.extend([0u8; 4]); // e_shnum, e_shstrndx
        if let Some(i) = interp {
            let len = i.len() as u64 + 1;
            b.extend(3u32.to_le_bytes()); // PT_INTERP
            b.extend(4u32.to_le_bytes()); // PF_R
            for v in [120u64, 0x40_0078, 0x40_0078, len, len, 1] {
                b.extend(v.to_le_bytes());
            }
            b.extend(i.as_bytes());
            b.push(0);
        }
        b
    }

    #[test]
    fn another_machines_binary_is_refused_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let r = Resolver::new(d.path()).unwrap();
        fs::create_dir_all(d.path().join("usr/bin")).unwrap();
        for (name, machine, interp, arch) in [
            ("static-arm", header::EM_AARCH64, None, "aarch64"),
            (
                "dynamic-arm",
                header::EM_AARCH64,
                Some("/lib/ld-linux-aarch64.so.1"),
                "aarch64",
            ),
            ("riscv", header::EM_RISCV, None, "RISC-V"),
            ("i386", header::EM_386, None, "i386 (32-bit x86)"),
        ] {
            fs::write(
                d.path().join("usr/bin").join(name),
                tiny_elf(machine, interp),
            )
            .unwrap();
            let path = PathBuf::from("/usr/bin").join(name);
            let e = r.closure(std::slice::from_ref(&path)).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "/usr/bin/{name}: is an ELF for {arch}; the guest is x86-64: list a binary \
                     built for x86-64 (amd64)"
                )
            );
        }
        // An x86-64 one passes; packages' objects (the index) may be of any machine.
        fs::write(
            d.path().join("usr/bin/x86"),
            tiny_elf(header::EM_X86_64, None),
        )
        .unwrap();
        let c = r.closure(&[PathBuf::from("/usr/bin/x86")]).unwrap();
        assert!(c.get(Path::new("/usr/bin/x86")).is_some());
        let c = r
            .closure_with_reasons(&[(PathBuf::from("/usr/bin/static-arm"), "index".into())])
            .unwrap();
        assert!(c.get(Path::new("/usr/bin/static-arm")).is_some());
    }

    fn host() -> Resolver {
        Resolver::new(Path::new("/")).unwrap()
    }

    fn file_node<'a>(c: &'a Closure, p: &Path) -> &'a Node {
        c.get(p)
            .unwrap_or_else(|| panic!("{} missing from {:#?}", p.display(), c.nodes))
    }

    /// Follow a guest path through the closure's own nodes, like the guest kernel would.
    fn follow_in_closure(c: &Closure, path: &Path) -> PathBuf {
        let mut cur = PathBuf::from("/");
        let mut pending: VecDeque<PathBuf> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(PathBuf::from(p)),
                Component::ParentDir => Some(PathBuf::from("..")),
                _ => None,
            })
            .collect();
        let mut hops = 0;
        while let Some(part) = pending.pop_front() {
            if part == Path::new("..") {
                cur.pop();
                continue;
            }
            let cand = cur.join(&part);
            match c.get(&cand).map(|n| &n.kind) {
                Some(NodeKind::Symlink { target }) => {
                    hops += 1;
                    assert!(hops < 40);
                    let mut rest: VecDeque<PathBuf> = target
                        .components()
                        .filter_map(|c| match c {
                            Component::Normal(p) => Some(PathBuf::from(p)),
                            Component::ParentDir => Some(PathBuf::from("..")),
                            _ => None,
                        })
                        .collect();
                    if target.is_absolute() {
                        cur = PathBuf::from("/");
                    }
                    rest.extend(pending.drain(..));
                    pending = rest;
                }
                _ => cur = cand,
            }
        }
        assert!(
            matches!(c.get(&cur).map(|n| &n.kind), Some(NodeKind::File { .. })),
            "{} does not lead to a file in the closure (got {})",
            path.display(),
            cur.display()
        );
        cur
    }

    fn dynamic_host_binary() -> Option<PathBuf> {
        ["/usr/bin/curl", "/bin/ls", "/usr/bin/ls"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    }

    #[test]
    fn search_dirs_come_from_ld_so_conf_then_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("etc/ld.so.conf.d")).unwrap();
        fs::write(
            root.join("etc/ld.so.conf"),
            "# comment\ninclude ld.so.conf.d/*.conf\n/opt/first\n",
        )
        .unwrap();
        fs::write(root.join("etc/ld.so.conf.d/b.conf"), "/opt/b  # trailing\n").unwrap();
        fs::write(
            root.join("etc/ld.so.conf.d/a.conf"),
            "/opt/a:/opt/a2\ninclude /etc/ld.so.conf\n",
        )
        .unwrap();
        let r = Resolver::new(root).unwrap();
        let dirs = r.search_dirs();
        let want: Vec<PathBuf> = ["/opt/a", "/opt/a2", "/opt/b", "/opt/first"]
            .iter()
            .map(PathBuf::from)
            .chain(DEFAULT_DIRS.iter().map(PathBuf::from))
            .collect();
        assert_eq!(dirs, want);
    }

    #[test]
    fn host_binary_closure_has_libc_and_interpreter_with_symlinks() {
        let Some(bin) = dynamic_host_binary() else {
            eprintln!("note: no dynamic host binary found; skipping");
            return;
        };
        let r = host();
        let c = r.closure(std::slice::from_ref(&bin)).unwrap();
        // Sorted, unique.
        let paths: Vec<&PathBuf> = c.nodes.iter().map(|n| &n.path).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(paths, sorted);

        // The binary itself, reachable through the closure's symlinks.
        let real_bin = follow_in_closure(&c, &bin);
        assert!(file_node(&c, &real_bin)
            .reasons
            .iter()
            .any(|r| r == "listed in kiln.toml"));

        // libc.so.6 somewhere, needed by someone.
        let libc = c
            .nodes
            .iter()
            .find(|n| {
                n.path.file_name() == Some("libc.so.6".as_ref())
                    || n.reasons.iter().any(|r| r.contains("DT_NEEDED libc.so.6"))
            })
            .expect("libc in closure");
        let libc_real = follow_in_closure(&c, &libc.path);
        assert!(
            file_node(&c, &libc_real)
                .reasons
                .iter()
                .any(|r| r.contains("DT_NEEDED libc.so.6")),
            "{:#?}",
            c.nodes
        );

        // The interpreter under its PT_INTERP path, via symlinks.
        let bytes = fs::read(&bin).unwrap();
        let interp = PathBuf::from(
            goblin::elf::Elf::parse(&bytes)
                .unwrap()
                .interpreter
                .unwrap(),
        );
        let interp_real = follow_in_closure(&c, &interp);
        assert!(file_node(&c, &interp_real)
            .reasons
            .iter()
            .any(|r| r.starts_with("interpreter of ")));
        // Merged /usr: /lib, /lib64 are symlink nodes (target unchanged) when the host has them.
        for top in ["/lib", "/lib64"] {
            if fs::symlink_metadata(top).is_ok_and(|m| m.file_type().is_symlink()) {
                let n = file_node(&c, Path::new(top));
                assert!(
                    matches!(&n.kind, NodeKind::Symlink { target } if *target == fs::read_link(top).unwrap()),
                    "{n:?}"
                );
                assert!(n
                    .reasons
                    .iter()
                    .any(|r| r.starts_with("symlink on the path to")));
            }
        }
        // Every file node is a real host file with the right size.
        for n in &c.nodes {
            if let NodeKind::File { source, size } = &n.kind {
                assert_eq!(fs::metadata(source).unwrap().len(), *size);
                assert!(!n.reasons.is_empty());
            }
        }
    }

    #[test]
    fn static_binary_has_no_dependencies() {
        let candidates = ["/bin/busybox", "/usr/bin/busybox"];
        let Some(bb) = candidates.iter().map(PathBuf::from).find(|p| {
            fs::read(p)
                .ok()
                .and_then(|b| {
                    goblin::elf::Elf::parse(&b)
                        .ok()
                        .map(|e| e.interpreter.is_none() && e.libraries.is_empty())
                })
                .unwrap_or(false)
        }) else {
            eprintln!(
                "note: no static busybox on this host (apt-get install busybox-static); skipping"
            );
            return;
        };
        let c = host().closure(std::slice::from_ref(&bb)).unwrap();
        let files: Vec<_> = c
            .nodes
            .iter()
            .filter(|n| matches!(n.kind, NodeKind::File { .. }))
            .collect();
        assert_eq!(files.len(), 1, "{:#?}", c.nodes);
    }

    #[test]
    fn text_file_and_missing_binary_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("usr/bin")).unwrap();
        fs::write(tmp.path().join("usr/bin/script"), "#!/bin/sh\necho hi\n").unwrap();
        fs::write(tmp.path().join("usr/bin/notes"), "just text\n").unwrap();
        let r = Resolver::new(tmp.path()).unwrap();

        let err = r.closure(&[PathBuf::from("/usr/bin/script")]).unwrap_err();
        assert!(matches!(err, ElfError::NotElf { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("/usr/bin/script")
                && msg.contains("shell script")
                && msg.contains("root.files"),
            "{msg}"
        );

        let err = r.closure(&[PathBuf::from("/usr/bin/notes")]).unwrap_err();
        assert!(err.to_string().contains("text file"), "{err}");

        let err = r.closure(&[PathBuf::from("/usr/bin/nope")]).unwrap_err();
        assert!(matches!(err, ElfError::NotFound { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("/usr/bin/nope") && msg.contains("root.binaries"),
            "{msg}"
        );

        let err = r.closure(&[PathBuf::from("usr/bin/notes")]).unwrap_err();
        assert!(matches!(err, ElfError::NotAbsolute { .. }), "{err}");
    }

    #[test]
    fn symlink_loop_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("b", tmp.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", tmp.path().join("b")).unwrap();
        let r = Resolver::new(tmp.path()).unwrap();
        let err = r.closure(&[PathBuf::from("/a")]).unwrap_err();
        assert!(matches!(err, ElfError::SymlinkLoop { .. }), "{err}");
    }

    fn have_cc() -> bool {
        Command::new("cc")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn cc(args: &[&str]) {
        let out = Command::new("cc").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "cc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Build /opt/app/{bin/app, lib/libhello.so.1 -> libhello.so.1.0} in a sysroot that also
    /// mirrors the host's libc via a symlinked /usr (so defaults resolve).
    fn build_app(sysroot: &Path, link_flag: &str) {
        build_app_with_rpath(sysroot, link_flag, "$ORIGIN/../lib");
    }

    fn build_app_with_rpath(sysroot: &Path, link_flag: &str, rpath: &str) {
        let src = sysroot.join("src");
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(sysroot.join("opt/app/bin")).unwrap();
        fs::create_dir_all(sysroot.join("opt/app/lib")).unwrap();
        fs::write(src.join("hello.c"), "int hello(void) { return 42; }\n").unwrap();
        fs::write(
            src.join("app.c"),
            "int hello(void); int main(void) { return hello() - 42; }\n",
        )
        .unwrap();
        let lib = sysroot.join("opt/app/lib/libhello.so.1.0");
        cc(&[
            "-shared",
            "-fPIC",
            "-Wl,-soname,libhello.so.1",
            "-o",
            lib.to_str().unwrap(),
            src.join("hello.c").to_str().unwrap(),
        ]);
        std::os::unix::fs::symlink("libhello.so.1.0", sysroot.join("opt/app/lib/libhello.so.1"))
            .unwrap();
        std::os::unix::fs::symlink("libhello.so.1", sysroot.join("opt/app/lib/libhello.so"))
            .unwrap();
        let app = sysroot.join("opt/app/bin/app");
        let libdir = format!("-L{}", sysroot.join("opt/app/lib").display());
        cc(&[
            "-o",
            app.to_str().unwrap(),
            src.join("app.c").to_str().unwrap(),
            &libdir,
            "-lhello",
            &format!("-Wl,-rpath,{rpath}"),
            link_flag,
        ]);
        // The program really runs with that layout.
        let status = Command::new(&app).status().unwrap();
        assert!(status.success());
    }

    fn origin_test(link_flag: &str) {
        if !have_cc() {
            eprintln!("note: no C compiler; skipping the $ORIGIN test");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        build_app(tmp.path(), link_flag);
        // Resolve on the host (sysroot "/") using the temp tree's absolute path,
        // so libc comes from the host defaults.
        let app = tmp.path().join("opt/app/bin/app");
        let c = host().closure(std::slice::from_ref(&app)).unwrap();
        let lib_dir = tmp.path().join("opt/app/lib");
        let link = lib_dir.join("libhello.so.1");
        let n = file_node(&c, &link);
        assert!(
            matches!(&n.kind, NodeKind::Symlink { target } if target == Path::new("libhello.so.1.0")),
            "{n:?}"
        );
        let real = file_node(&c, &lib_dir.join("libhello.so.1.0"));
        assert!(
            real.reasons
                .iter()
                .any(|r| r.contains("DT_NEEDED libhello.so.1") && r.contains("opt/app/bin/app")),
            "{real:?}"
        );
        assert!(
            c.get(&lib_dir.join("libhello.so")).is_none(),
            "dev symlink not needed"
        );
        assert!(c
            .nodes
            .iter()
            .any(|n| n.path.file_name() == Some("libc.so.6".as_ref())
                || n.reasons.iter().any(|r| r.contains("DT_NEEDED libc.so.6"))));
    }

    #[test]
    fn origin_runpath_is_followed() {
        origin_test("-Wl,--enable-new-dtags");
    }

    #[test]
    fn origin_rpath_is_followed() {
        origin_test("-Wl,--disable-new-dtags");
    }

    #[test]
    fn missing_library_is_reported_with_searched_dirs() {
        if !have_cc() {
            eprintln!("note: no C compiler; skipping");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        build_app(tmp.path(), "-Wl,--enable-new-dtags");
        fs::remove_file(tmp.path().join("opt/app/lib/libhello.so.1")).unwrap();
        let app = tmp.path().join("opt/app/bin/app");
        let err = host().closure(std::slice::from_ref(&app)).unwrap_err();
        match &err {
            ElfError::LibraryNotFound {
                library,
                needed_by,
                searched,
            } => {
                assert_eq!(library, "libhello.so.1");
                assert_eq!(needed_by, &app);
                assert_eq!(searched[0], tmp.path().join("opt/app/bin/../lib"));
                assert!(searched.contains(&PathBuf::from("/usr/lib/x86_64-linux-gnu")));
            }
            other => panic!("unexpected {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("libhello.so.1")
                && msg.contains("opt/app/bin/app")
                && msg.contains("searched"),
            "{msg}"
        );
    }

    #[test]
    fn incompatible_candidates_are_skipped() {
        if !have_cc() {
            eprintln!("note: no C compiler; skipping");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        build_app_with_rpath(
            tmp.path(),
            "-Wl,--enable-new-dtags",
            "${ORIGIN}/../lib32:$ORIGIN/../lib",
        );
        // A 32-bit "libhello.so.1" earlier in the RUNPATH must be skipped.
        let lib_dir = tmp.path().join("opt/app/lib");
        let lib32 = tmp.path().join("opt/app/lib32");
        fs::create_dir_all(&lib32).unwrap();
        let mut fake = fs::read(lib_dir.join("libhello.so.1.0")).unwrap()[..64].to_vec();
        fake[4] = 1; // ELFCLASS32
        fs::write(lib32.join("libhello.so.1"), &fake).unwrap();
        let app = tmp.path().join("opt/app/bin/app");
        let c = host().closure(std::slice::from_ref(&app)).unwrap();
        assert!(
            c.get(&lib_dir.join("libhello.so.1.0")).is_some(),
            "{:#?}",
            c.nodes
        );
        assert!(c.get(&lib32.join("libhello.so.1")).is_none());
    }
}

#[cfg(test)]
mod layered_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn package_root_comes_first_and_the_host_fills_in() {
        let Some(bin) = ["/usr/bin/true", "/bin/true"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
        else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("usr/sbin")).unwrap();
        fs::copy(&bin, d.path().join("usr/sbin/kiln-true")).unwrap();
        let r = Resolver::layered(&[d.path().to_path_buf(), PathBuf::from("/")]).unwrap();
        let c = r
            .closure_with_reasons(&[(
                PathBuf::from("/usr/sbin/kiln-true"),
                "listed in the index files.txt:1".into(),
            )])
            .unwrap();
        let n = c.get(Path::new("/usr/sbin/kiln-true")).unwrap();
        assert!(
            matches!(&n.kind, NodeKind::File { source, .. } if source.starts_with(d.path())),
            "{n:?}"
        );
        assert_eq!(
            n.reasons,
            vec!["listed in the index files.txt:1".to_string()]
        );
        let libc = c
            .nodes
            .iter()
            .find(|n| {
                n.path.file_name() == Some("libc.so.6".as_ref())
                    && matches!(n.kind, NodeKind::File { .. })
            })
            .expect("libc from the host");
        assert!(
            matches!(&libc.kind, NodeKind::File { source, .. } if !source.starts_with(d.path()))
        );
        assert!(r
            .locate(Path::new("/usr/sbin/kiln-true"))
            .unwrap()
            .is_some());
        assert!(r
            .locate(Path::new("/usr/sbin/none-such"))
            .unwrap()
            .is_none());
        assert!(is_elf(&d.path().join("usr/sbin/kiln-true")));
    }
}
