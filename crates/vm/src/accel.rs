//! Choosing the accelerator: KVM when it really runs a guest, TCG otherwise.
//!
//! `/dev/kvm` existing proves nothing: a paravirtual KVM may accept QEMU yet fail or hang on a
//! real kernel. The probe boots the VM's own kernel under KVM without an initramfs and waits for
//! the kernel's first line ("Linux version") under a short deadline. The verdict is cached per
//! host boot, QEMU binary and kernel, so only the first run pays for it.

use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the user asked for (`--accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// Probe, prefer KVM.
    #[default]
    Auto,
    /// KVM, no probe.
    Kvm,
    /// TCG, no probe.
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            _ => Err(format!("`{s}` is not one of auto, kvm, tcg")),
        }
    }
}

impl std::fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AccelChoice::Auto => "auto",
            AccelChoice::Kvm => "kvm",
            AccelChoice::Tcg => "tcg",
        })
    }
}

/// The verdict and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelProbe {
    /// The accelerator to use.
    pub accel: Accel,
    /// Why (for the one line shown to the user).
    pub reason: String,
    /// Whether this came from the cache.
    #[serde(skip)]
    pub cached: bool,
}

impl AccelProbe {
    /// The one line shown when KVM is not used (None when it is).
    pub fn fallback_line(&self) -> Option<String> {
        (self.accel == Accel::Tcg).then(|| {
            format!(
                "kiln: using TCG (software emulation, slower): {}",
                self.reason
            )
        })
    }
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    key: String,
    probe: AccelProbe,
}

/// `accel-probe.json`: the verdicts for the QEMU and kernels probed this host boot, newest
/// last, so that runs of different images do not probe again in turn.
#[derive(Serialize, Deserialize, Default)]
struct ProbeCache {
    entries: Vec<CacheEntry>,
}

/// How many verdicts the cache keeps.
const CACHE_ENTRIES: usize = 32;

/// The newest verdict in `cache_dir` (what `kiln serve` shows), if any.
pub fn last_verdict(cache_dir: &Path) -> Option<AccelProbe> {
    load_cache(&cache_dir.join(CACHE_FILE))
        .entries
        .pop()
        .map(|e| AccelProbe {
            cached: true,
            ..e.probe
        })
}

const CACHE_FILE: &str = "accel-probe.json";

/// The cache, or an empty one (missing, unreadable, or the older one-entry format).
fn load_cache(file: &Path) -> ProbeCache {
    std::fs::read(file)
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default()
}

/// How long the KVM test guest gets to print its first kernel line.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(4);

/// Decide the accelerator for a VM that boots `kernel`; `cache_dir` keeps the verdict.
pub fn choose(choice: AccelChoice, qemu: &Path, kernel: &Path, cache_dir: &Path) -> AccelProbe {
    match choice {
        AccelChoice::Kvm => AccelProbe {
            accel: Accel::Kvm,
            reason: "--accel kvm".into(),
            cached: false,
        },
        AccelChoice::Tcg => AccelProbe {
            accel: Accel::Tcg,
            reason: "--accel tcg was given".into(),
            cached: false,
        },
        AccelChoice::Auto => {
            if let Err(reason) = kvm_device_usable() {
                return AccelProbe {
                    accel: Accel::Tcg,
                    reason,
                    cached: false,
                };
            }
            let key = cache_key(qemu, kernel);
            let cache_file = cache_dir.join(CACHE_FILE);
            if let Some(p) = read_cache(&cache_file, &key) {
                return p;
            }
            let probe = probe_kvm(qemu, kernel);
            remember(cache_dir, &cache_file, key, &probe);
            probe
        }
    }
}

/// Add `probe` under `key` to the cache file (replacing an older verdict for the same key,
/// keeping the newest [`CACHE_ENTRIES`]), written whole then renamed into place.
fn remember(cache_dir: &Path, cache_file: &Path, key: String, probe: &AccelProbe) {
    let mut cache = load_cache(cache_file);
    cache.entries.retain(|e| e.key != key);
    cache.entries.push(CacheEntry {
        key,
        probe: probe.clone(),
    });
    let excess = cache.entries.len().saturating_sub(CACHE_ENTRIES);
    cache.entries.drain(..excess);
    if let Ok(json) = serde_json::to_vec(&cache) {
        let _ = std::fs::create_dir_all(cache_dir);
        let tmp = cache_file.with_extension(format!("tmp-{}", std::process::id()));
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, cache_file);
        }
    }
}

fn kvm_device_usable() -> Result<(), String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("/dev/kvm does not exist".into()),
        Err(e) => Err(format!("/dev/kvm cannot be opened ({e})")),
    }
}

fn file_id(p: &Path) -> String {
    match std::fs::metadata(p) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            format!("{}:{}:{}", p.display(), m.len(), m.mtime())
        }
        Err(_) => p.display().to_string(),
    }
}

fn cache_key(qemu: &Path, kernel: &Path) -> String {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("{}|{}|{}", boot_id.trim(), file_id(qemu), file_id(kernel))
}

fn read_cache(file: &Path, key: &str) -> Option<AccelProbe> {
    let entry = load_cache(file)
        .entries
        .into_iter()
        .find(|e| e.key == key)?;
    Some(AccelProbe {
        cached: true,
        ..entry.probe
    })
}

/// Boot `kernel` under KVM with no initramfs; KVM works if the kernel prints its banner in time.
pub fn probe_kvm(qemu: &Path, kernel: &Path) -> AccelProbe {
    let tcg = |reason: String| AccelProbe {
        accel: Accel::Tcg,
        reason,
        cached: false,
    };
    let child = Command::new(qemu)
        .args([
            "-M",
            "microvm,x-option-roms=off",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "128",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 earlyprintk=ttyS0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return tcg(format!(
                "could not start {} to probe KVM ({e})",
                qemu.display()
            ))
        }
    };
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    if let Some(mut out) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
    }
    let start = Instant::now();
    let mut seen = Vec::new();
    let verdict = loop {
        if String::from_utf8_lossy(&seen).contains("Linux version") {
            break AccelProbe {
                accel: Accel::Kvm,
                reason: format!(
                    "a KVM test guest booted in {} ms",
                    start.elapsed().as_millis()
                ),
                cached: false,
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let first = err
                .lines()
                .find(|l| !l.contains("warning"))
                .unwrap_or(err.lines().next().unwrap_or(""))
                .trim()
                .to_string();
            break tcg(format!(
                "KVM could not run a test guest ({status}: {first})"
            ));
        }
        let left = PROBE_DEADLINE.saturating_sub(start.elapsed());
        if left.is_zero() {
            break tcg(format!(
                "/dev/kvm is present but a KVM test guest made no progress in {} s",
                PROBE_DEADLINE.as_secs()
            ));
        }
        if let Ok(chunk) = rx.recv_timeout(left.min(Duration::from_millis(50))) {
            seen.extend_from_slice(&chunk);
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_choices_skip_the_probe() {
        let p = choose(
            AccelChoice::Tcg,
            Path::new("/nonexistent"),
            Path::new("/nonexistent"),
            Path::new("/nonexistent"),
        );
        assert_eq!(p.accel, Accel::Tcg);
        assert!(p.fallback_line().expect("line").contains("--accel tcg"));
        let p = choose(
            AccelChoice::Kvm,
            Path::new("/x"),
            Path::new("/x"),
            Path::new("/x"),
        );
        assert_eq!(p.accel, Accel::Kvm);
        assert!(p.fallback_line().is_none());
    }

    #[test]
    fn verdicts_of_several_kernels_are_kept_side_by_side() {
        let d = tempfile::tempdir().expect("tmp");
        let file = d.path().join(CACHE_FILE);
        let verdict = |reason: &str| AccelProbe {
            accel: Accel::Tcg,
            reason: reason.into(),
            cached: false,
        };
        assert!(last_verdict(d.path()).is_none());
        remember(d.path(), &file, "a".into(), &verdict("ra"));
        remember(d.path(), &file, "b".into(), &verdict("rb"));
        // Both are found: switching images does not probe again.
        assert_eq!(read_cache(&file, "a").expect("a").reason, "ra");
        assert_eq!(read_cache(&file, "b").expect("b").reason, "rb");
        assert_eq!(last_verdict(d.path()).expect("last").reason, "rb");
        // A new verdict for a key replaces its old one; the newest is last.
        remember(d.path(), &file, "a".into(), &verdict("ra2"));
        assert_eq!(read_cache(&file, "a").expect("a").reason, "ra2");
        assert_eq!(last_verdict(d.path()).expect("last").reason, "ra2");
        // At most CACHE_ENTRIES are kept, the oldest go first.
        for i in 0..CACHE_ENTRIES {
            remember(d.path(), &file, format!("k{i}"), &verdict("x"));
        }
        assert!(read_cache(&file, "b").is_none());
        assert!(read_cache(&file, &format!("k{}", CACHE_ENTRIES - 1)).is_some());
        // The older one-entry format reads as empty (a probe again, then the new format).
        std::fs::write(
            &file,
            r#"{"key":"a","probe":{"accel":"tcg","reason":"old"}}"#,
        )
        .expect("w");
        assert!(read_cache(&file, "a").is_none());
    }

    #[test]
    fn missing_qemu_falls_back_with_reason() {
        let p = probe_kvm(Path::new("/nonexistent/qemu"), Path::new("/nonexistent"));
        assert_eq!(p.accel, Accel::Tcg);
        assert!(p.reason.contains("could not start"), "{}", p.reason);
    }

    #[test]
    fn choice_parses() {
        assert_eq!("tcg".parse::<AccelChoice>(), Ok(AccelChoice::Tcg));
        assert!("xen".parse::<AccelChoice>().is_err());
    }
}
