//! The server's shared state: the VM table (the lifecycle's list, the VMs this server is still
//! booting, and CPU/memory use sampled from /proc), published through a watch channel that the
//! live page follows, and refreshed every two seconds or right after a change.

use super::catalog::Catalog;
use super::console::Consoles;
use super::vms::Vms;
use kiln_fleet::{Row, VmConfig, VmState};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the table is refreshed when nothing happens.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// One row of the VM table, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmInfo {
    /// Unique name.
    pub name: String,
    /// The lifecycle's state (`starting`, `running` = ready, `restarting`, `stopping`, `exited`,
    /// `crashed`, `failed`); `starting` until this server's create has returned.
    pub state: String,
    /// The VM's process (QEMU).
    pub pid: Option<u32>,
    /// Seconds since start.
    pub uptime_s: u64,
    /// vCPUs.
    pub cpus: u32,
    /// MiB.
    pub memory: u32,
    /// Port forwards.
    pub ports: Vec<String>,
    /// The image folder it boots.
    pub image: String,
    /// kvm or tcg.
    pub accel: String,
    /// CPU use since the last sample, in percent of one host core.
    pub cpu_percent: Option<f64>,
    /// Resident memory of the VM's process, MiB.
    pub rss_mib: Option<f64>,
    /// Why it failed to start (state `failed`).
    pub error: Option<String>,
    /// Run in the foreground by a `kiln run`: listed and stoppable, its console is not here.
    pub foreground: bool,
    /// Times the restart policy restarted it.
    pub restarts: u32,
    /// Its restart policy.
    pub restart: String,
}

/// A VM this server asked the lifecycle to boot that is not ready yet (or failed to be).
#[derive(Debug, Clone)]
pub struct Pending {
    /// What was asked (the whole spec, image resolved).
    pub launch: VmConfig,
    /// The failure, once known.
    pub error: Option<String>,
    /// Distinguishes successive creates of the same name.
    pub id: u64,
}

/// Everything the handlers share.
pub struct App {
    /// The VM operations.
    pub vms: Arc<dyn Vms>,
    /// Recipes and images that may be booted.
    pub catalog: Catalog,
    /// The access token.
    pub token: String,
    /// The cache folder (accelerator verdicts).
    pub cache_root: std::path::PathBuf,
    /// VMs being booted by this server.
    pub pending: Mutex<HashMap<String, Pending>>,
    /// The live table.
    pub table: watch::Sender<Arc<Vec<VmInfo>>>,
    /// Console connections shared by viewers.
    pub consoles: Consoles,
    /// Previous CPU samples: pid → (ticks, when).
    cpu: tokio::sync::Mutex<HashMap<u32, (u64, Instant)>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl App {
    /// A new state around `vms`.
    pub fn new(
        vms: Arc<dyn Vms>,
        catalog: Catalog,
        token: String,
        cache_root: std::path::PathBuf,
    ) -> App {
        App {
            vms,
            catalog,
            token,
            cache_root,
            pending: Mutex::new(HashMap::new()),
            table: watch::channel(Arc::new(Vec::new())).0,
            consoles: Consoles::default(),
            cpu: tokio::sync::Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// A fresh id for a pending create.
    pub fn new_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The pending creates (a poisoned lock is recovered: the map stays consistent).
    pub fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask the lifecycle for the list, sample usage, merge pending creates, publish.
    pub async fn refresh(self: &Arc<Self>) -> Result<Arc<Vec<VmInfo>>, super::vms::VmsError> {
        let vms = self.vms.clone();
        let rows = tokio::task::spawn_blocking(move || vms.list())
            .await
            .map_err(|e| super::vms::VmsError::Failed(e.to_string()))??;
        let mut cpu = self.cpu.lock().await;
        let now = Instant::now();
        let tck = clock_ticks();
        let mut table: Vec<VmInfo> = rows
            .into_iter()
            .map(|r| {
                let (cpu_percent, rss_mib) = match r.pid.filter(|_| r.state == VmState::Running) {
                    Some(pid) => {
                        let usage = proc_usage(pid);
                        let pct = usage.and_then(|(ticks, _)| {
                            let prev = cpu.insert(pid, (ticks, now))?;
                            let dt = now.duration_since(prev.1).as_secs_f64();
                            (dt > 0.05).then(|| {
                                (ticks.saturating_sub(prev.0) as f64 / tck / dt * 100.0 * 10.0)
                                    .round()
                                    / 10.0
                            })
                        });
                        (pct, usage.map(|(_, rss)| rss))
                    }
                    None => (None, None),
                };
                info_from_row(r, cpu_percent, rss_mib)
            })
            .collect();
        let live: Vec<u32> = table.iter().filter_map(|v| v.pid).collect();
        cpu.retain(|pid, _| live.contains(pid));
        drop(cpu);
        {
            let pending = self.pending();
            for (name, p) in pending.iter() {
                match table.iter_mut().find(|v| &v.name == name) {
                    Some(v) => {
                        if p.error.is_some() {
                            v.state = "failed".into();
                            v.error = p.error.clone();
                        } else if v.state != "stopping" {
                            // Until this server's create returns: a VM started again shows
                            // `starting`, not the state it ended in.
                            v.state = "starting".into();
                        }
                    }
                    None => table.push(VmInfo {
                        name: name.clone(),
                        state: if p.error.is_some() {
                            "failed"
                        } else {
                            "starting"
                        }
                        .into(),
                        pid: None,
                        uptime_s: 0,
                        cpus: p.launch.cpus.unwrap_or(0),
                        memory: p.launch.memory.unwrap_or(0),
                        ports: p.launch.ports.iter().map(|f| f.to_string()).collect(),
                        image: p.launch.image.clone().unwrap_or_default(),
                        accel: String::new(),
                        cpu_percent: None,
                        rss_mib: None,
                        error: p.error.clone(),
                        foreground: false,
                        restarts: 0,
                        restart: p.launch.restart_policy().to_string(),
                    }),
                }
            }
        }
        table.sort_by(|a, b| a.name.cmp(&b.name));
        let table = Arc::new(table);
        self.table.send_replace(table.clone());
        Ok(table)
    }

    /// Refresh every [`SAMPLE_EVERY`] for as long as the server runs.
    pub async fn sample_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh().await {
                tracing::warn!("refreshing the VM table: {e}");
            }
        }
    }
}

fn info_from_row(r: Row, cpu_percent: Option<f64>, rss_mib: Option<f64>) -> VmInfo {
    VmInfo {
        name: r.name,
        state: r.state.to_string(),
        pid: r.pid,
        uptime_s: r.uptime_s,
        cpus: r.cpus,
        memory: r.memory,
        ports: r.ports.iter().map(|f| f.to_string()).collect(),
        image: r.image,
        accel: r.accel.to_string(),
        cpu_percent,
        rss_mib,
        error: r.error,
        foreground: r.foreground,
        restarts: r.restarts,
        restart: r.restart,
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (utime + stime in clock ticks, resident MiB) of a process, from /proc.
pub fn proc_usage(pid: u32) -> Option<(u64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Some((utime + stime, (rss_kb / 1024.0 * 10.0).round() / 10.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_this_process() {
        let (ticks, rss) = proc_usage(std::process::id()).expect("own usage");
        assert!(rss > 0.0, "rss {rss}");
        // Burn a little CPU; the tick count never goes down.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let (later, _) = proc_usage(std::process::id()).expect("own usage");
        assert!(later >= ticks);
        assert_eq!(proc_usage(u32::MAX), None);
    }
}
