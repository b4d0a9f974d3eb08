//! Host facts for `GET /api/host`: the accelerator verdict and why, QEMU's version, memory,
//! CPUs.

use std::path::Path;

/// The host description as JSON.
pub fn info(cache_root: &Path) -> serde_json::Value {
    // QEMU does not change under a running server: ask it once.
    static QEMU: std::sync::OnceLock<(Option<std::path::PathBuf>, Option<String>)> =
        std::sync::OnceLock::new();
    let (qemu, qemu_version) = QEMU
        .get_or_init(|| {
            let qemu = kiln_vm::check_qemu().ok();
            let version = qemu.as_ref().and_then(|q| {
                let o = std::process::Command::new(q)
                    .arg("--version")
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            });
            (qemu, version)
        })
        .clone();
    // The last probe's verdict (kiln run caches it per host boot, QEMU and kernel).
    let probe = kiln_vm::accel::last_verdict(cache_root);
    let kvm_device = Path::new("/dev/kvm").exists();
    let (accel, reason) = match &probe {
        Some(p) => (p.accel.to_string(), p.reason.clone()),
        None if !kvm_device => ("tcg".into(), "/dev/kvm does not exist".into()),
        None => (
            "unknown".into(),
            "not probed yet: the first VM probes KVM and falls back to TCG".into(),
        ),
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mib = |key: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb / 1024)
    };
    serde_json::json!({
        "kiln_version": env!("CARGO_PKG_VERSION"),
        "accel": accel,
        "accel_reason": reason,
        "kvm_device": kvm_device,
        "qemu": qemu.map(|q| q.display().to_string()),
        "qemu_version": qemu_version,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_total_mib": mib("MemTotal:"),
        "memory_available_mib": mib("MemAvailable:"),
    })
}
