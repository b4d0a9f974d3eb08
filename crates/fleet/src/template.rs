//! Warm starts: templates, clones and snapshots.
//!
//! A **template** is an image booted once to its ready point with its RAM in a file
//! (`memory-backend-file,share=on`), its network link taken down (QMP `set_link`) and frozen (kiln-init syncs), and saved with
//! QEMU's `x-ignore-shared` capability, so only the device state is written: the RAM file *is*
//! the memory. A **clone** maps that file privately (copy-on-write, `share=off`), restores the
//! device state, runs, and is thawed by kiln-init with fresh entropy, its own hostname and the
//! host's clock before the host brings its link up. A **snapshot** of a running VM is the same with
//! the RAM inside the saved stream (zstd).
//!
//! Saved states live content-addressed in the cache (`snapshots/SHA/`: `state` or
//! `state.zst`, `ram.zst` and its expanded `ram`, `meta.json`); an image folder's
//! `template.json` names its template's. A template is used only when everything that makes a
//! restore safe is unchanged ([`Signature`]); otherwise the VM boots cold and the reason is
//! said in one line.

use crate::error::{FleetError, Result};
use crate::plan::Image;
use kiln_vm::{cmdline, Accel, VmSpec};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// An image folder's pointer to its template.
pub const TEMPLATE_FILE: &str = "template.json";
/// A saved state's description.
pub const META_FILE: &str = "meta.json";

/// Everything that must be equal between the VM that was saved and the one restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The image's build fingerprint (kernel, initramfs, kiln-init, recipe).
    pub image: String,
    /// QEMU's version line.
    pub qemu: String,
    /// MiB.
    pub memory: u32,
    /// vCPUs.
    pub cpus: u32,
    /// The accelerator.
    pub accel: Accel,
    /// The kernel command line.
    pub cmdline: String,
    /// The devices (network kind, drives, vports, shares, ACPI, exec port, balloon).
    pub devices: String,
}

impl Signature {
    /// The signature of `spec` booting `image`.
    pub fn of(spec: &VmSpec, image: &Image) -> Signature {
        Signature {
            image: image.manifest.fingerprint.clone(),
            qemu: qemu_version(),
            memory: spec.memory_mib,
            cpus: spec.cpus,
            accel: spec.accel,
            // The clock calibration argument follows the host, not the guest; the hostname is
            // the VM's (a clone gets its own at thaw).
            cmdline: spec
                .cmdline
                .split_whitespace()
                .filter(|w| !cmdline::is_host_clock_arg(w) && !w.starts_with("kiln.hostname="))
                .collect::<Vec<_>>()
                .join(" "),
            devices: devices(spec),
        }
    }

    /// Why `self` (the saved VM) cannot be restored as `now`, in a few words; None if it can.
    pub fn differs(&self, now: &Signature) -> Option<String> {
        let mut why = vec![];
        if self.image != now.image {
            why.push("the image changed".to_string());
        }
        if self.qemu != now.qemu {
            why.push(format!("QEMU changed ({} → {})", self.qemu, now.qemu));
        }
        if self.memory != now.memory {
            why.push(format!("memory {} MiB, asked {}", self.memory, now.memory));
        }
        if self.cpus != now.cpus {
            why.push(format!("cpus {}, asked {}", self.cpus, now.cpus));
        }
        if self.accel != now.accel {
            why.push(format!("made under {}, now {}", self.accel, now.accel));
        }
        if self.cmdline != now.cmdline {
            why.push("the kernel arguments differ".into());
        }
        if self.devices != now.devices {
            why.push(format!(
                "the devices differ ({} → {})",
                self.devices, now.devices
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// A saved state's description (`meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMeta {
    /// What it was made from.
    pub signature: Signature,
    /// `template` (RAM in `ram.zst`, device state in `state`) or `snapshot` (all in
    /// `state.zst`).
    pub kind: String,
    /// The image folder it boots.
    pub image_dir: String,
    /// The VM spec it ran with (a snapshot's; empty for a template).
    #[serde(default)]
    pub config: crate::config::VmConfig,
    /// Bytes stored (compressed RAM + state).
    pub stored_bytes: u64,
    /// ms taken to save.
    pub save_ms: u64,
}

/// A saved state found on disk.
#[derive(Debug, Clone)]
pub struct Saved {
    /// Its folder (`CACHE/snapshots/SHA` or a `-o DIR`).
    pub dir: PathBuf,
    /// Its description.
    pub meta: SavedMeta,
}

impl Saved {
    /// Read the saved state in `dir`.
    pub fn load(dir: &Path) -> Result<Saved> {
        let path = dir.join(META_FILE);
        let text = std::fs::read(&path).map_err(|e| {
            FleetError::BadInput(format!(
                "{}: not a Kiln template or snapshot ({e})",
                dir.display()
            ))
        })?;
        let meta = serde_json::from_slice(&text)
            .map_err(|e| FleetError::BadInput(format!("{}: unreadable ({e})", path.display())))?;
        Ok(Saved {
            dir: dir.to_path_buf(),
            meta,
        })
    }

    /// The restore this saved state gives (the template's RAM file expanded once).
    pub fn restore(&self) -> Result<Restore> {
        if self.meta.kind == "template" {
            let ram = self.dir.join("ram");
            if !ram.exists() {
                expand(&self.dir.join("ram.zst"), &ram)?;
            }
            Ok(Restore {
                state: self.dir.join("state"),
                compressed: false,
                ram: Some(ram),
                from: self.dir.clone(),
            })
        } else {
            Ok(Restore {
                state: self.dir.join("state.zst"),
                compressed: true,
                ram: None,
                from: self.dir.clone(),
            })
        }
    }
}

/// An image folder's `template.json`: where its template's saved state is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRef {
    /// The saved state's folder.
    pub dir: PathBuf,
}

/// The template of the image in `image_dir`: None when it has none; Err(why) when it has one
/// that cannot be found or read.
pub fn of_image(image_dir: &Path) -> std::result::Result<Option<Saved>, String> {
    let path = image_dir.join(TEMPLATE_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let r: TemplateRef =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Saved::load(&r.dir)
        .map(Some)
        .map_err(|_| format!("its saved state {} is gone (pruned?)", r.dir.display()))
}

/// The saved state `dir` names: a folder from `kiln snapshot` or a template's, or an image
/// folder with a template.
pub fn find(dir: &Path) -> Result<Saved> {
    if dir.join(META_FILE).is_file() {
        return Saved::load(dir);
    }
    match of_image(dir) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(FleetError::BadInput(format!(
            "--from {}: no template or snapshot there (make one with `kiln build --template` or `kiln snapshot NAME`)",
            dir.display()
        ))),
        Err(why) => Err(FleetError::BadInput(format!("--from {}: {why}", dir.display()))),
    }
}

/// How a VM starts from a saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    /// The device (and for a snapshot, RAM) state.
    pub state: PathBuf,
    /// The state is zstd-compressed.
    pub compressed: bool,
    /// The template's RAM file, mapped copy-on-write.
    pub ram: Option<PathBuf>,
    /// The saved state's folder.
    pub from: PathBuf,
}

impl Restore {
    /// The migration URI that reads the state.
    pub fn uri(&self) -> String {
        let p = shell_quote(&self.state);
        if self.compressed {
            format!("exec:zstd -dcq {p}")
        } else {
            format!("exec:cat {p}")
        }
    }
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// The devices part of a [`Signature`]: what a saved state's device sections depend on.
fn devices(spec: &VmSpec) -> String {
    let net = match &spec.net {
        kiln_vm::NetSpec::User { .. } => "user",
        kiln_vm::NetSpec::None => "none",
        kiln_vm::NetSpec::Bridge { .. } => "bridge",
        kiln_vm::NetSpec::Tap { .. } => "tap",
    };
    let drives: Vec<String> = spec
        .drives
        .iter()
        .map(|d| format!("blk{}", if d.readonly { ":ro" } else { "" }))
        .collect();
    let vports: Vec<&str> = spec.vports.iter().map(|v| v.name.as_str()).collect();
    format!(
        "net={net} drives=[{}] vports=[{}] shares={} acpi={}{}{}",
        drives.join(","),
        vports.join(","),
        spec.shares.len(),
        spec.acpi,
        if spec.exec_socket.is_some() {
            " exec"
        } else {
            ""
        },
        // A state saved without the balloon has no section for it.
        if spec.free_page_reporting {
            " balloon"
        } else {
            ""
        }
    )
}

/// QEMU's version line (asked once).
pub fn qemu_version() -> String {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let Ok(bin) = kiln_vm::check_qemu() else {
            return "unknown".into();
        };
        std::process::Command::new(bin)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "unknown".into())
    })
    .clone()
}

/// zstd-compress `src` into `dst`.
pub fn compress(src: &Path, dst: &Path) -> Result<()> {
    let mut input = std::fs::File::open(src).map_err(FleetError::io("reading", src))?;
    let out = std::fs::File::create(dst).map_err(FleetError::io("creating", dst))?;
    let mut enc = zstd::Encoder::new(out, 3).map_err(FleetError::io("compressing", dst))?;
    std::io::copy(&mut input, &mut enc).map_err(FleetError::io("compressing", dst))?;
    enc.finish().map_err(FleetError::io("compressing", dst))?;
    Ok(())
}

/// Expand a zstd file into `dst`, leaving zero blocks as holes (a sparse RAM file).
pub fn expand(src: &Path, dst: &Path) -> Result<()> {
    let input = std::fs::File::open(src).map_err(FleetError::io("reading", src))?;
    let mut dec = zstd::Decoder::new(input).map_err(FleetError::io("reading", src))?;
    let tmp = dst.with_extension("tmp");
    let mut out = std::fs::File::create(&tmp).map_err(FleetError::io("creating", &tmp))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = read_full(&mut dec, &mut buf).map_err(FleetError::io("reading", src))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|&b| b == 0) {
            use std::io::Seek;
            out.seek(std::io::SeekFrom::Current(n as i64))
                .map_err(FleetError::io("writing", &tmp))?;
        } else {
            out.write_all(&buf[..n])
                .map_err(FleetError::io("writing", &tmp))?;
        }
        len += n as u64;
    }
    out.set_len(len).map_err(FleetError::io("writing", &tmp))?;
    std::fs::rename(&tmp, dst).map_err(FleetError::io("renaming", dst))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The content address of a saved state's files.
pub fn content_hash(files: &[&Path]) -> Result<String> {
    let mut h = sha2::Sha256::new();
    for f in files {
        let mut file = std::fs::File::open(f).map_err(FleetError::io("reading", *f))?;
        std::io::copy(&mut file, &mut h).map_err(FleetError::io("reading", *f))?;
    }
    Ok(hex::encode(&h.finalize()[..16]))
}

/// 64 random bytes from the host, as hex (a clone's entropy).
pub fn fresh_seed() -> Result<String> {
    let mut raw = [0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(FleetError::io("reading", "/dev/urandom"))?;
    Ok(hex::encode(raw))
}

/// The control-channel line that gives a restored guest its identity.
pub fn thaw_line(seed: &str, hostname: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("thaw {seed} {hostname} {nanos}\n")
}

/// Send one line on a guest's control channel.
pub fn send_control(socket: &Path, line: &str) -> Result<()> {
    send_control_kept(socket, line).map(drop)
}

/// Send one line on a guest's control channel and keep the connection: saved while the host
/// side is connected, a restored guest waits in `read` on the port and takes the thaw at once
/// (with the host gone it would only look again every 100 ms).
pub fn send_control_kept(socket: &Path, line: &str) -> Result<std::os::unix::net::UnixStream> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(FleetError::io("connecting to", socket))?;
    s.write_all(line.as_bytes())
        .and_then(|_| s.flush())
        .map_err(FleetError::io("writing to", socket))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> Signature {
        Signature {
            image: "f1".into(),
            qemu: "QEMU emulator version 7.2.22".into(),
            memory: 32,
            cpus: 1,
            accel: Accel::Tcg,
            cmdline: "console=ttyS0 quiet".into(),
            devices: "net=user drives=[] vports=[] shares=0 acpi=false".into(),
        }
    }

    #[test]
    fn the_balloon_is_part_of_the_devices() {
        let mut p = crate::admit::tests::plan("a", &[], None);
        let without = devices(&p.spec);
        p.spec.free_page_reporting = true;
        let with = devices(&p.spec);
        assert!(
            with.ends_with(" balloon") && !without.contains("balloon"),
            "{with}"
        );
    }

    #[test]
    fn an_equal_signature_restores_and_each_difference_is_named() {
        assert_eq!(sig().differs(&sig()), None);
        let mut other = sig();
        other.image = "f2".into();
        other.memory = 64;
        let why = sig().differs(&other).expect("differs");
        assert!(
            why.contains("the image changed") && why.contains("memory 32 MiB, asked 64"),
            "{why}"
        );
        let mut q = sig();
        q.qemu = "QEMU emulator version 8.0".into();
        assert!(sig().differs(&q).expect("qemu").contains("QEMU changed"));
        let mut d = sig();
        d.devices = "net=user drives=[blk] vports=[] shares=0 acpi=false".into();
        assert!(sig()
            .differs(&d)
            .expect("devices")
            .contains("devices differ"));
    }

    #[test]
    fn ram_files_round_trip_sparse() {
        let d = tempfile::tempdir().expect("tmp");
        let ram = d.path().join("ram");
        let mut data = vec![0u8; 1 << 20];
        data[100] = 7;
        data[(1 << 20) - 1] = 9;
        std::fs::write(&ram, &data).expect("w");
        compress(&ram, &d.path().join("ram.zst")).expect("compress");
        expand(&d.path().join("ram.zst"), &d.path().join("back")).expect("expand");
        assert_eq!(std::fs::read(d.path().join("back")).expect("r"), data);
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(d.path().join("back"))
            .expect("m")
            .blocks();
        assert!(
            blocks * 512 < 1 << 19,
            "the zero middle is a hole ({blocks} blocks)"
        );
    }

    #[test]
    fn restores_read_their_state_the_right_way() {
        let r = Restore {
            state: "/s/it's".into(),
            compressed: true,
            ram: None,
            from: "/s".into(),
        };
        assert_eq!(r.uri(), "exec:zstd -dcq '/s/it'\\''s'");
        let line = thaw_line(&"ab".repeat(64), "web");
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 4);
        assert_eq!(words[0], "thaw");
        assert_eq!(words[1].len(), 128);
        assert_eq!(fresh_seed().expect("seed").len(), 128);
        assert_ne!(fresh_seed().expect("a"), fresh_seed().expect("b"));
    }
}
