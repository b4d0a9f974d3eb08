//! Kernel module index and dependency closure.
//!
//! Dependencies come from `modules.dep` when the tree has one (after
//! `depmod`), else from the `depends=` field of each module's `.modinfo`
//! section (Debian's `.deb` ships no `modules.dep`). The latter index is
//! cached as `.kiln-modules.json` inside the modules directory (when
//! writable), keyed by a fingerprint of the module files (path, size, mtime).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{io_err, KernelError};

/// File name of the cached module index inside a modules directory.
pub const INDEX_FILE: &str = ".kiln-modules.json";
const INDEX_FORMAT: u32 = 1;

/// A loadable kernel module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// Module name, normalized with `_` (e.g. `virtio_rng` for `virtio-rng.ko`).
    pub name: String,
    /// Path relative to the modules directory, with its real (possibly
    /// compressed) file name, e.g. `kernel/drivers/virtio/virtio.ko`.
    pub rel_path: PathBuf,
    /// Names of the modules it needs (normalized), as recorded by the kernel build.
    pub depends: Vec<String>,
}

/// All modules of one kernel, by name, plus the built-in ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleIndex {
    /// Kernel release (the modules directory name).
    pub version: String,
    /// Loadable modules by normalized name.
    pub modules: BTreeMap<String, Module>,
    /// Names (normalized) of modules built into the kernel (`modules.builtin`).
    pub builtin: BTreeSet<String>,
}

#[derive(Serialize, Deserialize)]
struct CachedIndex {
    format: u32,
    fingerprint: String,
    index: ModuleIndex,
}

/// Normalize a module name: `-` and `_` are the same to the kernel.
pub fn normalize_name(name: &str) -> String {
    name.trim().replace('-', "_")
}

/// Module name from a file name (`virtio-rng.ko.xz` -> `virtio_rng`).
fn name_from_path(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = &file[..file.find(".ko")?];
    Some(normalize_name(stem))
}

fn is_module_file(name: &str) -> bool {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The path a module should have in the guest: its real path with any
/// compression suffix removed (the guest loads plain `.ko` files).
pub fn guest_rel_path(module: &Module) -> PathBuf {
    let s = module.rel_path.to_string_lossy();
    for suffix in [".xz", ".zst", ".gz"] {
        if let Some(stripped) = s.strip_suffix(suffix) {
            if stripped.ends_with(".ko") {
                return PathBuf::from(stripped);
            }
        }
    }
    module.rel_path.clone()
}

/// Read a module file, decompressing `.ko.xz` / `.ko.zst` / `.ko.gz`.
pub fn read_module(modules_dir: &Path, module: &Module) -> Result<Vec<u8>, KernelError> {
    let path = modules_dir.join(&module.rel_path);
    let bytes = read_decompressed(&path)?;
    if !bytes.starts_with(b"\x7fELF") {
        return Err(KernelError::BadModule {
            path,
            reason: "not an ELF object".into(),
        });
    }
    Ok(bytes)
}

fn read_decompressed(path: &Path) -> Result<Vec<u8>, KernelError> {
    let raw = fs::read(path).map_err(io_err("read", path))?;
    let name = path.to_string_lossy();
    let bad = |e: std::io::Error| KernelError::BadModule {
        path: path.to_path_buf(),
        reason: format!("cannot decompress: {e}"),
    };
    let mut out = Vec::new();
    if name.ends_with(".xz") {
        liblzma::read::XzDecoder::new_multi_decoder(&raw[..])
            .read_to_end(&mut out)
            .map_err(bad)?;
    } else if name.ends_with(".zst") {
        zstd::stream::read::Decoder::new(&raw[..])
            .and_then(|mut d| d.read_to_end(&mut out))
            .map_err(bad)?;
    } else if name.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(bad)?;
    } else {
        return Ok(raw);
    }
    Ok(out)
}

/// The modules needed to load `wanted` (names; `-`/`_` alike) with their
/// dependency closure, in load order (dependencies first; deterministic:
/// wanted order, then dependencies by name). Built-in modules are skipped.
pub fn module_closure(modules_dir: &Path, wanted: &[String]) -> Result<Vec<Module>, KernelError> {
    module_index(modules_dir)?.closure(wanted)
}

impl ModuleIndex {
    /// See [`module_closure`].
    pub fn closure(&self, wanted: &[String]) -> Result<Vec<Module>, KernelError> {
        let mut out = Vec::new();
        let mut state: HashMap<&str, bool> = HashMap::new(); // false = in progress, true = done
        for w in wanted {
            let name = normalize_name(w);
            if self.builtin.contains(&name) {
                continue;
            }
            let Some((key, _)) = self.modules.get_key_value(&name) else {
                return Err(KernelError::UnknownModule {
                    name: w.clone(),
                    version: self.version.clone(),
                });
            };
            self.visit(key, &mut state, &mut out)?;
        }
        Ok(out)
    }

    fn visit<'a>(
        &'a self,
        name: &'a str,
        state: &mut HashMap<&'a str, bool>,
        out: &mut Vec<Module>,
    ) -> Result<(), KernelError> {
        match state.get(name) {
            Some(true) => return Ok(()),
            Some(false) => {
                tracing::warn!(
                    module = name,
                    "module dependency cycle; ignoring the back edge"
                );
                return Ok(());
            }
            None => {}
        }
        let Some(module) = self.modules.get(name) else {
            return Ok(());
        };
        state.insert(name, false);
        let mut deps: Vec<&String> = module.depends.iter().collect();
        deps.sort();
        deps.dedup();
        for dep in deps {
            if self.builtin.contains(dep) {
                continue;
            }
            let Some((key, _)) = self.modules.get_key_value(dep) else {
                return Err(KernelError::MissingDependency {
                    module: name.to_string(),
                    dependency: dep.clone(),
                    version: self.version.clone(),
                });
            };
            self.visit(key, state, out)?;
        }
        state.insert(name, true);
        out.push(module.clone());
        Ok(())
    }
}

/// Index every module under `modules_dir` (see the module docs for sources
/// and caching).
pub fn module_index(modules_dir: &Path) -> Result<ModuleIndex, KernelError> {
    let meta = fs::metadata(modules_dir).map_err(|e| KernelError::ModulesDir {
        path: modules_dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(KernelError::ModulesDir {
            path: modules_dir.to_path_buf(),
            reason: "it is not a directory".into(),
        });
    }
    let version = modules_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let builtin = read_builtin(modules_dir)?;

    let dep_file = modules_dir.join("modules.dep");
    if dep_file.is_file() {
        let text = fs::read_to_string(&dep_file).map_err(io_err("read", &dep_file))?;
        return Ok(ModuleIndex {
            modules: parse_modules_dep(modules_dir, &text),
            version,
            builtin,
        });
    }

    let files = list_module_files(modules_dir)?;
    let fingerprint = fingerprint(modules_dir, &files);
    let cache_path = modules_dir.join(INDEX_FILE);
    if let Ok(bytes) = fs::read(&cache_path) {
        match serde_json::from_slice::<CachedIndex>(&bytes) {
            Ok(c) if c.format == INDEX_FORMAT && c.fingerprint == fingerprint => return Ok(c.index),
            _ => tracing::debug!(path = %cache_path.display(), "stale module index; rebuilding"),
        }
    }

    let modules = index_modinfo(modules_dir, &files)?;
    let index = ModuleIndex {
        version,
        modules,
        builtin,
    };
    let cached = CachedIndex {
        format: INDEX_FORMAT,
        fingerprint,
        index,
    };
    match serde_json::to_vec(&cached) {
        Ok(json) => {
            if let Err(e) = crate::write_atomic(&cache_path, &json) {
                tracing::debug!(error = %e, "cannot cache the module index (read-only modules dir?)");
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot encode the module index"),
    }
    Ok(cached.index)
}

fn read_builtin(modules_dir: &Path) -> Result<BTreeSet<String>, KernelError> {
    let path = modules_dir.join("modules.builtin");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| name_from_path(Path::new(l.trim())))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

/// Prefer `updates/` over `extra/` over anything else, then the smaller path (depmod-like).
fn better(a: &Path, b: &Path) -> bool {
    let rank = |p: &Path| {
        if p.starts_with("updates") {
            0
        } else if p.starts_with("extra") {
            1
        } else {
            2
        }
    };
    (rank(a), a) < (rank(b), b)
}

fn insert_module(map: &mut BTreeMap<String, Module>, module: Module) {
    match map.get(&module.name) {
        Some(old) if !better(&module.rel_path, &old.rel_path) => {}
        _ => {
            map.insert(module.name.clone(), module);
        }
    }
}

fn rel_of(modules_dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    p.strip_prefix(modules_dir).unwrap_or(p).to_path_buf()
}

fn parse_modules_dep(modules_dir: &Path, text: &str) -> BTreeMap<String, Module> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let Some((module, deps)) = line.split_once(':') else {
            continue;
        };
        let rel_path = rel_of(modules_dir, module.trim());
        let Some(name) = name_from_path(&rel_path) else {
            continue;
        };
        let depends = deps
            .split_whitespace()
            .filter_map(|d| name_from_path(Path::new(d)))
            .collect();
        insert_module(
            &mut map,
            Module {
                name,
                rel_path,
                depends,
            },
        );
    }
    map
}

/// (relative path, size, mtime in ns) of every module file, sorted.
fn list_module_files(modules_dir: &Path) -> Result<Vec<(PathBuf, u64, u128)>, KernelError> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(modules_dir).follow_links(false) {
        let entry = entry.map_err(|e| KernelError::ModulesDir {
            path: modules_dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        if !entry.file_type().is_file() || !is_module_file(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let meta = entry.metadata().map_err(|e| KernelError::ModulesDir {
            path: entry.path().to_path_buf(),
            reason: e.to_string(),
        })?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let rel = entry
            .path()
            .strip_prefix(modules_dir)
            .unwrap_or(entry.path())
            .to_path_buf();
        files.push((rel, meta.len(), mtime));
    }
    files.sort();
    Ok(files)
}

fn fingerprint(modules_dir: &Path, files: &[(PathBuf, u64, u128)]) -> String {
    let mut h = Sha256::new();
    for (p, size, mtime) in files {
        h.update(p.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(size.to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
    if let Ok(m) = fs::metadata(modules_dir.join("modules.builtin")) {
        h.update(m.len().to_le_bytes());
    }
    hex::encode(h.finalize())
}

/// Build the index from each module's `.modinfo` section, in parallel.
fn index_modinfo(
    modules_dir: &Path,
    files: &[(PathBuf, u64, u128)],
) -> Result<BTreeMap<String, Module>, KernelError> {
    let threads = std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .min(16);
    let chunk = files.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<Module>, KernelError>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .filter_map(|(rel, _, _)| {
                            let name = name_from_path(rel)?;
                            Some(read_depends(&modules_dir.join(rel)).map(|depends| Module {
                                name,
                                rel_path: rel.clone(),
                                depends,
                            }))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(KernelError::ModulesDir {
                        path: modules_dir.to_path_buf(),
                        reason: "indexing thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut map = BTreeMap::new();
    for part in results {
        for module in part? {
            insert_module(&mut map, module);
        }
    }
    Ok(map)
}

/// The `depends=` list of a module file's `.modinfo` section.
fn read_depends(path: &Path) -> Result<Vec<String>, KernelError> {
    let bytes = read_decompressed(path)?;
    let modinfo = modinfo_section(&bytes).map_err(|reason| KernelError::BadModule {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(modinfo
        .split(|&b| b == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(normalize_name)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect())
}

fn modinfo_section(bytes: &[u8]) -> Result<&[u8], String> {
    use goblin::container::{Container, Ctx, Endian};
    use goblin::elf::{header, section_header::SectionHeader};

    let hdr = goblin::elf::Elf::parse_header(bytes).map_err(|e| format!("bad ELF header: {e}"))?;
    let container = if hdr.e_ident[header::EI_CLASS] == header::ELFCLASS64 {
        Container::Big
    } else {
        Container::Little
    };
    let endian = if hdr.e_ident[header::EI_DATA] == header::ELFDATA2MSB {
        Endian::Big
    } else {
        Endian::Little
    };
    let sections = SectionHeader::parse(
        bytes,
        hdr.e_shoff as usize,
        usize::from(hdr.e_shnum),
        Ctx::new(container, endian),
    )
    .map_err(|e| format!("bad section headers: {e}"))?;
    let range = |s: &SectionHeader| -> Option<&[u8]> {
        let start = usize::try_from(s.sh_offset).ok()?;
        let len = usize::try_from(s.sh_size).ok()?;
        bytes.get(start..start.checked_add(len)?)
    };
    let strtab = sections
        .get(usize::from(hdr.e_shstrndx))
        .and_then(range)
        .ok_or("bad section name table")?;
    for s in &sections {
        let name = strtab
            .get(s.sh_name..)
            .and_then(|n| n.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name == b".modinfo" {
            return range(s)
                .ok_or_else(|| "the .modinfo section lies outside the file".to_string());
        }
    }
    Err("no .modinfo section (not a kernel module?)".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn m(name: &str, deps: &[&str]) -> Module {
        Module {
            name: name.into(),
            rel_path: PathBuf::from(format!("kernel/{name}.ko")),
            depends: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn index(mods: Vec<Module>, builtin: &[&str]) -> ModuleIndex {
        ModuleIndex {
            version: "9.9.9-test".into(),
            modules: mods.into_iter().map(|m| (m.name.clone(), m)).collect(),
            builtin: builtin.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn names(v: &[Module]) -> Vec<&str> {
        v.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn closure_orders_dependencies_first() {
        let idx = index(
            vec![
                m("a", &["c", "b"]),
                m("b", &["c", "crc"]),
                m("c", &[]),
                m("d", &["b"]),
            ],
            &["crc"],
        );
        let got = idx
            .closure(&["d".into(), "a".into(), "crc".into(), "d".into()])
            .unwrap();
        assert_eq!(names(&got), ["c", "b", "d", "a"]);
    }

    #[test]
    fn unknown_and_missing_dependency() {
        let idx = index(vec![m("a", &["gone"])], &[]);
        let err = idx.closure(&["nope".into()]).unwrap_err();
        assert!(matches!(err, KernelError::UnknownModule { .. }));
        assert!(err.to_string().contains("nope") && err.to_string().contains("9.9.9-test"));
        let err = idx.closure(&["a".into()]).unwrap_err();
        assert!(
            matches!(err, KernelError::MissingDependency { .. }),
            "{err}"
        );
    }

    #[test]
    fn modules_dep_parsing() {
        let text = "kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz\n\
                    kernel/drivers/char/hw_random/virtio-rng.ko:\n\
                    updates/virtio-rng.ko:\n";
        let map = parse_modules_dep(Path::new("/lib/modules/x"), text);
        assert_eq!(map["virtio_net"].depends, ["net_failover", "failover"]);
        assert_eq!(
            map["virtio_rng"].rel_path,
            Path::new("updates/virtio-rng.ko")
        );
        assert_eq!(
            guest_rel_path(&map["virtio_net"]),
            Path::new("kernel/drivers/net/virtio_net.ko")
        );
    }
}
