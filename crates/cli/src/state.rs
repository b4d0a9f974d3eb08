//! Records of detached VMs in the state folder: one folder per VM holding record.json (written
//! atomically) and the VM's sockets and console log.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What we remember about a detached VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    /// Unique name.
    pub name: String,
    /// QEMU's pid.
    pub pid: u32,
    /// The image folder it boots.
    pub image: String,
    /// Port forwards.
    pub ports: Vec<String>,
    /// vCPUs.
    pub cpus: u32,
    /// MiB.
    pub memory: u32,
    /// kvm or tcg.
    pub accel: String,
    /// Unix time it was started.
    pub started: u64,
    /// Guest uptime at readiness, ms.
    pub ready_ms: Option<u64>,
}

/// The folder of VM `name`.
pub fn vm_dir(state: &Path, name: &str) -> PathBuf {
    state.join("vms").join(name)
}

/// Write the record atomically.
pub fn write(state: &Path, rec: &VmRecord) -> Result<()> {
    let dir = vm_dir(state, &rec.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_vec_pretty(rec)?;
    kiln_image::atomic_write(&dir.join("record.json"), &json)
        .with_context(|| format!("writing {}", dir.join("record.json").display()))
}

/// Read VM `name`'s record.
pub fn read(state: &Path, name: &str) -> Result<VmRecord> {
    let path = vm_dir(state, name).join("record.json");
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no VM named `{name}` (see `kiln ps`)")
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_slice(&data).with_context(|| format!("{} is not a VM record", path.display()))
}

/// Every record, sorted by name.
pub fn list(state: &Path) -> Vec<VmRecord> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(state.join("vms")) {
        for e in entries.flatten() {
            if let Some(name) = e.file_name().to_str() {
                if let Ok(r) = read(state, name) {
                    out.push(r);
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Remove VM `name`'s folder.
pub fn remove(state: &Path, name: &str) -> Result<()> {
    let dir = vm_dir(state, name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}
