//! Integration tests against Debian's real cloud kernel, fetched through
//! `kiln_debpkg` into a cache shared by test runs (`target/tmp/kiln-test-cache`).
//! Skipped (with a note) when apt is not available.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use kiln_debpkg::Cache;
use kiln_kernel::{
    guest_rel_path, inspect_kernel, module_closure, provision, read_module, ImageFormat, Kernel,
    KernelError, KernelSource, Module, BASE_MODULES, DEFAULT_KERNEL_PACKAGE,
};

fn shared_cache_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-test-cache")
}

fn have_apt() -> bool {
    std::process::Command::new("apt-get")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The Debian cloud kernel, provisioned once per test binary.
fn cloud_kernel() -> Option<&'static Kernel> {
    static KERNEL: OnceLock<Option<Kernel>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            if !have_apt() {
                eprintln!(
                    "note: apt-get is not installed; skipping tests that need the Debian kernel"
                );
                return None;
            }
            let cache = Cache::new(shared_cache_root());
            let t = Instant::now();
            let k = provision(&cache, &KernelSource::default(), false).unwrap();
            eprintln!("provisioned {} in {:?}", k.description, t.elapsed());
            Some(k)
        })
        .as_ref()
}

fn names(v: &[Module]) -> Vec<&str> {
    v.iter().map(|m| m.name.as_str()).collect()
}

fn pos(v: &[Module], name: &str) -> usize {
    v.iter()
        .position(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} missing from {:?}", names(v)))
}

#[test]
fn debian_cloud_kernel_is_provisioned() {
    let Some(k) = cloud_kernel() else { return };
    let version = k.version.as_deref().unwrap();
    assert!(version.ends_with("-cloud-amd64"), "{version}");
    assert!(
        k.description.starts_with("debian linux-image-"),
        "{}",
        k.description
    );
    assert!(k.description.contains(version), "{}", k.description);
    let modules_dir = k.modules_dir.as_ref().unwrap();
    assert!(modules_dir.ends_with(version));
    assert_eq!(k.size, fs::metadata(&k.image).unwrap().len());
    let info = inspect_kernel(&k.image).unwrap();
    assert_eq!(info.format, ImageFormat::BzImage);
    assert_eq!(info.version.as_deref(), Some(version));
    // A second provision is served from the cache, even without apt.
    let offline = Cache::new(shared_cache_root())
        .with_apt_programs("/nonexistent/apt-get", "/nonexistent/apt-cache");
    assert_eq!(
        &provision(&offline, &KernelSource::default(), false).unwrap(),
        k
    );
}

#[test]
fn virtio_net_closure_is_in_load_order() {
    let Some(k) = cloud_kernel() else { return };
    let dir = k.modules_dir.as_ref().unwrap();
    let got = module_closure(dir, &["virtio-net".to_string()]).unwrap();
    assert!(pos(&got, "failover") < pos(&got, "net_failover"));
    assert!(pos(&got, "net_failover") < pos(&got, "virtio_net"));
    assert_eq!(got.last().unwrap().name, "virtio_net");
    assert_eq!(
        got.last().unwrap().rel_path,
        Path::new("kernel/drivers/net/virtio_net.ko")
    );

    let base: Vec<String> = BASE_MODULES.iter().map(|s| s.to_string()).collect();
    let got = module_closure(dir, &base).unwrap();
    for m in ["virtio_ring", "virtio"] {
        assert!(pos(&got, m) < pos(&got, "virtio_mmio"), "{:?}", names(&got));
    }
    assert!(pos(&got, "virtio_ring") < pos(&got, "virtio"));
    for m in BASE_MODULES {
        pos(&got, m);
    }
    let mut sorted = names(&got);
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), got.len(), "no duplicates");
    // Deterministic.
    assert_eq!(module_closure(dir, &base).unwrap(), got);
    let rng = &got[pos(&got, "virtio_rng")];
    assert!(rng.rel_path.ends_with("virtio-rng.ko"));
    assert!(read_module(dir, rng).unwrap().starts_with(b"\x7fELF"));
}

#[test]
fn unknown_and_builtin_modules() {
    let Some(k) = cloud_kernel() else { return };
    let dir = k.modules_dir.as_ref().unwrap();
    let err = module_closure(dir, &["no_such_module_xyz".to_string()]).unwrap_err();
    assert!(matches!(err, KernelError::UnknownModule { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("no_such_module_xyz") && msg.contains(k.version.as_deref().unwrap()),
        "{msg}"
    );

    let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap();
    let first = Path::new(builtin.lines().next().unwrap());
    let name = first
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(".ko");
    assert!(module_closure(dir, &[name.to_string()]).unwrap().is_empty());
}

#[test]
fn module_closure_warm_is_fast() {
    let Some(k) = cloud_kernel() else { return };
    let dir = k.modules_dir.as_ref().unwrap();
    let base: Vec<String> = BASE_MODULES.iter().map(|s| s.to_string()).collect();
    module_closure(dir, &base).unwrap();
    let t = Instant::now();
    module_closure(dir, &base).unwrap();
    let warm = t.elapsed();
    eprintln!("module_closure warm: {warm:?}");
    // Generous bound for unoptimized test builds; release is far below 50 ms.
    assert!(warm.as_millis() < 1000, "{warm:?}");
}

/// Copy the closure of virtio_net into a fresh tree, compressed, without modules.dep.
#[test]
fn compressed_modules_and_modules_dep() {
    let Some(k) = cloud_kernel() else { return };
    let src = k.modules_dir.as_ref().unwrap();
    let closure = module_closure(src, &["virtio_net".to_string()]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("lib/modules/6.6.6-test");
    for (i, m) in closure.iter().enumerate() {
        let plain = fs::read(src.join(&m.rel_path)).unwrap();
        let (suffix, data) = if i % 2 == 0 {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            std::io::Write::write_all(&mut e, &plain).unwrap();
            (".xz", e.finish().unwrap())
        } else {
            (".zst", zstd::encode_all(&plain[..], 1).unwrap())
        };
        let rel = PathBuf::from(format!("{}{suffix}", m.rel_path.display()));
        fs::create_dir_all(dst.join(&rel).parent().unwrap()).unwrap();
        fs::write(dst.join(&rel), data).unwrap();
    }
    fs::write(dst.join("modules.builtin"), "").unwrap();

    let got = module_closure(&dst, &["virtio_net".to_string()]).unwrap();
    assert_eq!(names(&got), names(&closure));
    assert!(dst.join(".kiln-modules.json").is_file(), "index cached");
    for (g, orig) in got.iter().zip(&closure) {
        assert_ne!(g.rel_path, orig.rel_path);
        assert_eq!(guest_rel_path(g), orig.rel_path);
        assert_eq!(
            read_module(&dst, g).unwrap(),
            fs::read(src.join(&orig.rel_path)).unwrap()
        );
    }
    // Cached index is reused, and invalidated when a module disappears.
    assert_eq!(
        module_closure(&dst, &["virtio_net".to_string()]).unwrap(),
        got
    );
    let failover = got.iter().find(|m| m.name == "failover").unwrap();
    fs::remove_file(dst.join(&failover.rel_path)).unwrap();
    let err = module_closure(&dst, &["virtio_net".to_string()]).unwrap_err();
    assert!(
        matches!(err, KernelError::MissingDependency { .. }),
        "{err}"
    );

    // modules.dep, when present, wins over .modinfo.
    fs::write(
        dst.join("modules.dep"),
        "kernel/drivers/net/virtio_net.ko.xz: kernel/a.ko\nkernel/a.ko:\n",
    )
    .unwrap();
    let got = module_closure(&dst, &["virtio_net".to_string()]).unwrap();
    assert_eq!(names(&got), ["a", "virtio_net"]);
}

#[test]
fn user_supplied_kernel_path() {
    let Some(k) = cloud_kernel() else { return };
    let src = k.modules_dir.clone();
    let got = provision(
        &Cache::new(PathBuf::from("/nonexistent")),
        &KernelSource::Path {
            kernel: k.image.clone(),
            modules: src.clone(),
        },
        false,
    )
    .unwrap();
    assert_eq!(got.sha256, k.sha256);
    assert_eq!(got.version, k.version);
    assert_eq!(got.modules_dir, src);
    assert!(got.description.starts_with("file "));
}

#[test]
fn bad_kernel_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().join("cache"));
    let path_source = |p: &Path| KernelSource::Path {
        kernel: p.to_path_buf(),
        modules: None,
    };

    let text = tmp.path().join("notes.txt");
    fs::write(&text, "this is not a kernel\n").unwrap();
    let err = provision(&cache, &path_source(&text), false).unwrap_err();
    assert!(matches!(err, KernelError::NotAKernel { .. }), "{err}");
    assert!(
        err.to_string().contains("notes.txt") && err.to_string().contains("text file"),
        "{err}"
    );

    let empty = tmp.path().join("empty");
    fs::write(&empty, "").unwrap();
    assert!(matches!(
        provision(&cache, &path_source(&empty), false),
        Err(KernelError::NotAKernel { .. })
    ));

    let missing = tmp.path().join("missing");
    assert!(matches!(
        provision(&cache, &path_source(&missing), false),
        Err(KernelError::NotFound { .. })
    ));

    // A 32-bit ELF / a shared library is not a vmlinux.
    for candidate in ["/bin/ls", "/usr/bin/env"] {
        if Path::new(candidate).exists() {
            let err = provision(&cache, &path_source(Path::new(candidate)), false).unwrap_err();
            assert!(matches!(err, KernelError::NotAKernel { .. }), "{err}");
            break;
        }
    }

    // Bad modules dir.
    let Some(k) = cloud_kernel() else { return };
    let err = provision(
        &cache,
        &KernelSource::Path {
            kernel: k.image.clone(),
            modules: Some(text.clone()),
        },
        false,
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::ModulesDir { .. }), "{err}");

    // Truncated real bzImage.
    let bytes = fs::read(&k.image).unwrap();
    let cut = tmp.path().join("vmlinuz-cut");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = provision(&cache, &path_source(&cut), false).unwrap_err();
    assert!(matches!(err, KernelError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("vmlinuz-cut"), "{err}");
}

/// A tiny x86-64 ELF executable with one PT_LOAD segment, as a vmlinux stand-in.
fn tiny_vmlinux(payload_len: usize) -> Vec<u8> {
    let mut b = vec![0u8; 64 + 56];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little endian
    b[6] = 1;
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes()); // entry
    b[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    b[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    b[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    b[58..60].copy_from_slice(&64u16.to_le_bytes()); // shentsize
    let ph = 64;
    b[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    b[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes());
    b[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // offset
    b[ph + 16..ph + 24].copy_from_slice(&0x100_0000u64.to_le_bytes());
    b[ph + 24..ph + 32].copy_from_slice(&0x100_0000u64.to_le_bytes());
    b[ph + 32..ph + 40].copy_from_slice(&(payload_len as u64).to_le_bytes()); // filesz
    b[ph + 40..ph + 48].copy_from_slice(&(payload_len as u64).to_le_bytes());
    let mut payload = vec![0u8; payload_len];
    let banner = b"Linux version 6.9.0-tiny (me@host) #1\0";
    payload[..banner.len()].copy_from_slice(banner);
    b.extend(payload);
    b
}

#[test]
fn vmlinux_elf_is_accepted_and_truncation_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().join("cache"));
    let elf = tiny_vmlinux(4096);
    let path = tmp.path().join("vmlinux");
    fs::write(&path, &elf).unwrap();
    let k = provision(
        &cache,
        &KernelSource::Path {
            kernel: path.clone(),
            modules: None,
        },
        false,
    )
    .unwrap();
    assert_eq!(k.version.as_deref(), Some("6.9.0-tiny"));
    assert_eq!(inspect_kernel(&path).unwrap().format, ImageFormat::Vmlinux);

    fs::write(&path, &elf[..elf.len() - 100]).unwrap();
    let err = inspect_kernel(&path).unwrap_err();
    assert!(matches!(err, KernelError::Truncated { .. }), "{err}");
}

#[test]
fn corrupt_cached_kernel_is_refused() {
    let Some(k) = cloud_kernel() else { return };
    // A private cache holding a copy of the shared cache's packages (no download).
    let tmp = tempfile::tempdir().unwrap();
    let shared = shared_cache_root();
    copy_dir(&shared.join("debs"), &tmp.path().join("debs"));
    let cache = Cache::new(tmp.path().to_path_buf());
    let source = KernelSource::Debian {
        package: DEFAULT_KERNEL_PACKAGE.to_string(),
    };
    let mine = provision(&cache, &source, false).unwrap();
    assert_eq!(mine.sha256, k.sha256);

    let mut bytes = fs::read(&mine.image).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    fs::write(&mine.image, &bytes).unwrap();
    let err = provision(&cache, &source, false).unwrap_err();
    assert!(matches!(err, KernelError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("corrupt") && msg.contains("--refresh"),
        "{msg}"
    );
    assert!(msg.contains(&mine.image.display().to_string()), "{msg}");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_dir(&e.path(), &to.join(&name));
        } else if ft.is_file() && fs::hard_link(e.path(), to.join(&name)).is_err() {
            fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}
