//! `kiln bench`: boots a recipe N times and measures each phase, beside a plain baseline run in
//! the same session (Debian's kernel with a busybox initramfs, started by a hand-written QEMU
//! command), interleaved so both see the same machine load. Prints min / median / p90 and the
//! kiln/baseline ratio; `--json` for machines.

use crate::{dirs, human};
use anyhow::{bail, Context, Result};
use clap::Args;
use kiln_fleet::watch::{Until, Watched};
use kiln_fleet::{Fleet, Image, Prepared, VmConfig};
use kiln_image::{cpio, Compression};
use kiln_recipe::PortForward;
use kiln_recipe::Recipe;
use kiln_vm::runner;
use kiln_vm::{accel, Accel, AccelChoice, ConsoleEvent};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Options of `kiln bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The recipe to measure (its readiness check must be tcp:PORT).
    pub recipe: PathBuf,
    /// Boots of each kind.
    #[arg(long, short = 'n', default_value_t = 10)]
    pub boots: usize,
    /// Also measure the plain baseline, interleaved.
    #[arg(long)]
    pub baseline: bool,
    /// Also measure build times (cold: empty download cache; warm: cached downloads).
    #[arg(long)]
    pub build: bool,
    /// Find the smallest --memory (MiB) at which the service still answers.
    #[arg(long)]
    pub min_memory: bool,
    /// Per-boot deadline in seconds: a boot that misses it counts as a hang.
    #[arg(long, default_value_t = 60)]
    pub deadline: u64,
    /// Accelerator.
    #[arg(long, default_value = "auto")]
    pub accel: AccelChoice,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Use this kernel instead of the recipe's ("tiny", "debian", …), as `kiln build --kernel`.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Measure starts from a template: make one, then time clone boots interleaved with cold
    /// boots of the same image (and the baseline), N clones at once, and the memory each adds.
    #[arg(long)]
    pub template: bool,
    /// With --template: how many clones to start at once.
    #[arg(long, default_value_t = 20)]
    pub clones: usize,
}

/// One boot's figures (ms, bytes).
#[derive(Debug, Default, Clone)]
struct Sample {
    ready_host_ms: Option<f64>,
    guest_ready_ms: Option<f64>,
    first_200_ms: Option<f64>,
    rss_kb: Option<f64>,
    stop_ms: Option<f64>,
    phases: BTreeMap<String, f64>,
    hung: bool,
}

fn http_get_ok(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 32];
    match s.read(&mut buf) {
        Ok(n) if n >= 12 => buf[..n].starts_with(b"HTTP/1.") && &buf[9..12] == b"200",
        _ => false,
    }
}

/// Poll GET / from `start` until a 200 or `deadline`, with a new short attempt every 10 ms
/// (overlapping: a forwarded connection made before the guest's network is up hangs, and must
/// not hold the measurement back).
fn wait_first_200(port: u16, start: Instant, deadline: Instant) -> Option<f64> {
    poll_200(port, start, deadline, Duration::from_millis(10))
}

/// [`wait_first_200`] with a new attempt every `every`.
fn poll_200(port: u16, start: Instant, deadline: Instant, every: Duration) -> Option<f64> {
    let (tx, rx) = std::sync::mpsc::channel();
    while Instant::now() < deadline {
        let tx = tx.clone();
        std::thread::spawn(move || {
            if http_get_ok(port) {
                let _ = tx.send(Instant::now());
            }
        });
        if let Ok(t) = rx.recv_timeout(every) {
            return Some((t - start).as_secs_f64() * 1000.0);
        }
    }
    None
}

fn rss_kb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One Kiln boot through the fleet (admitted, listed by `ps`, holding its port): launch →
/// ready line → first 200 → RSS → graceful stop.
fn kiln_boot(
    fleet: &Fleet,
    image: &Image,
    guest_port: u16,
    accel: Accel,
    deadline: Duration,
    memory: Option<u32>,
    warm: bool,
) -> Result<Sample> {
    let port = free_port()?;
    let p = Prepared {
        config: VmConfig {
            image: Some(image.dir.display().to_string()),
            name: Some(format!("bench{port}")),
            ports: vec![PortForward {
                host_addr: std::net::Ipv4Addr::LOCALHOST,
                host_port: port,
                guest_port,
                protocol: kiln_recipe::Protocol::Tcp,
            }],
            memory,
            ready_timeout: Some(deadline.as_secs().max(1)),
            cold: !warm,
            ..VmConfig::default()
        },
        image: image.clone(),
    };
    let mut fg = fleet.launch_foreground(&p, accel, false, None)?;
    if warm && fg.plan.restore.is_none() {
        anyhow::bail!(
            "bench: no usable template: {}",
            fg.plan.cold_reason.clone().unwrap_or_default()
        );
    }
    let start = fg.session.launched();
    let end = start + deadline;
    // Poll HTTP in parallel with the console so neither delays the other.
    let poller = std::thread::spawn(move || wait_first_200(port, start, end));
    let mut s = Sample::default();
    let never = AtomicBool::new(false);
    if let Watched::Ready = fg.watch(Until::Ready, &never, &mut |_| {}) {
        if let Some((t, guest_ms)) = fg.session.ready() {
            s.ready_host_ms = Some((t - start).as_secs_f64() * 1000.0);
            s.guest_ready_ms = Some(guest_ms as f64);
        }
        // The timeline line follows the ready line.
        if let Some(ConsoleEvent::Timeline(ph)) = fg.session.next_event(Duration::from_millis(500))
        {
            s.phases = ph.into_iter().map(|(k, v)| (k, v as f64)).collect();
        }
    }
    s.first_200_ms = poller.join().unwrap_or(None);
    s.hung = s.first_200_ms.is_none();
    s.rss_kb = rss_kb(fg.session.vm.pid());
    let t = Instant::now();
    let outcome = fg.session.vm.stop(Duration::from_secs(10));
    if outcome == runner::StopOutcome::Graceful {
        s.stop_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
    }
    if s.hung {
        eprintln!(
            "bench: kiln boot missed the {deadline:?} deadline; console:\n{}",
            fg.session.tail()
        );
    }
    Ok(s)
}

/// The baseline's busybox initramfs: a shell /init that loads the virtio modules with insmod,
/// configures eth0 with ifconfig/route and runs busybox httpd, as one would by hand.
fn baseline_initramfs(dest: &Path) -> Result<PathBuf> {
    let cache = kiln_debpkg::Cache::new(dirs::cache_root());
    let deb = cache.fetch(kiln_bake::BUSYBOX_PACKAGE, false)?;
    let busybox = std::fs::read(cache.unpack(&deb)?.join("bin/busybox"))?;
    // Always Debian's cloud kernel as shipped (bzImage) with its own virtio modules, whatever
    // kernel the measured image uses: the baseline is what one would do by hand.
    let kernel = kiln_kernel::provision(
        &cache,
        &kiln_kernel::KernelSource::Debian {
            package: kiln_kernel::DEFAULT_KERNEL_PACKAGE.into(),
        },
        false,
    )?;
    let modules_dir = kernel
        .modules_dir
        .clone()
        .context("Debian's kernel package has no modules")?;
    let wanted: Vec<String> = kiln_kernel::BASE_MODULES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut w = cpio::Writer::new(Vec::new());
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "www",
        "lib",
        "lib/modules",
    ] {
        w.add_dir(d, 0o755)?;
    }
    w.add_device("dev/console", cpio::DeviceKind::Char, 0o600, 5, 1)?;
    w.add_file("bin/busybox", 0o755, &busybox)?;
    w.add_symlink("bin/sh", "busybox")?;
    let mut insmods = String::new();
    for module in kiln_kernel::module_closure(&modules_dir, &wanted)? {
        let data = kiln_kernel::read_module(&modules_dir, &module)?;
        let name = &module.name;
        w.add_file(format!("lib/modules/{name}.ko"), 0o644, &data)?;
        insmods.push_str(&format!("insmod /lib/modules/{name}.ko\n"));
    }
    w.add_file("www/index.html", 0o644, b"baseline\n")?;
    let init = format!(
        "#!/bin/sh\n/bin/busybox --install -s /bin\nmount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n{insmods}\
         ifconfig lo 127.0.0.1 up\nifconfig eth0 10.0.2.15 netmask 255.255.255.0 up\nroute add default gw 10.0.2.2\n\
         httpd -p 80 -h /www\necho baseline-ready\nexec sh -c 'while :; do sleep 3600; done'\n"
    );
    w.add_file("init", 0o755, init.as_bytes())?;
    let raw = w.finish()?;
    let gz = kiln_image::compress(&raw, Compression::Gzip, None)?;
    std::fs::write(dest, gz)?;
    Ok(kernel.image)
}

/// One baseline boot with the hand-written QEMU command.
fn baseline_boot(
    kernel: &Path,
    initrd: &Path,
    accel: kiln_vm::Accel,
    deadline: Duration,
) -> Result<Sample> {
    let port = free_port()?;
    let qemu = kiln_vm::check_qemu()?;
    let accel_arg = if accel == kiln_vm::Accel::Kvm {
        "kvm"
    } else {
        "tcg"
    };
    let start = Instant::now();
    let child = Command::new(qemu)
        .args([
            "-M",
            "microvm",
            "-accel",
            accel_arg,
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
        ])
        .args([
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "null",
            "-kernel",
        ])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .args([
            "-netdev",
            &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80"),
            "-device",
            "virtio-net-device,netdev=n0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut child = KillGuard(child);
    let mut s = Sample {
        first_200_ms: wait_first_200(port, start, start + deadline),
        ..Sample::default()
    };
    s.hung = s.first_200_ms.is_none();
    s.rss_kb = rss_kb(child.0.id());
    let _ = child.0.kill();
    let _ = child.0.wait();
    Ok(s)
}

struct KillGuard(std::process::Child);
impl Drop for KillGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// min, median, p90.
type Stats = Option<(f64, f64, f64)>;

/// min, median, p90 of the present values.
fn stats(values: impl Iterator<Item = Option<f64>>) -> Stats {
    let mut v: Vec<f64> = values.flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Some((v[0], pick(0.5), pick(0.9)))
}

fn time_build(recipe: &Recipe, cache: &Path, out: &Path) -> Result<f64> {
    let exe = std::env::current_exe()?;
    let t = Instant::now();
    let o = Command::new(exe)
        .env("KILN_CACHE_DIR", cache)
        .arg("build")
        .arg(&recipe.dir)
        .arg("-o")
        .arg(out)
        .arg("--force")
        .stdin(Stdio::null())
        .output()?;
    if !o.status.success() {
        bail!("build failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// `kiln bench`.
pub fn bench(a: BenchArgs) -> Result<ExitCode> {
    let recipe = Recipe::load(&a.recipe)?;
    let guest_port = ready_port(&recipe)?;
    let fleet = dirs::fleet()?;
    let image = resolve_image(&a, &recipe)?;
    let (image_dir, m) = (&image.dir, &image.manifest);
    let deadline = Duration::from_secs(a.deadline);
    let probe = accel::choose(
        a.accel,
        &kiln_vm::check_qemu()?,
        &image_dir.join(&m.kernel.file),
        &dirs::cache_root(),
    );
    let work = tempfile::Builder::new().prefix("kiln-bench-").tempdir()?;
    let mut report = report_header(m, &probe, a.boots);

    if a.build {
        measure_builds(&recipe, m, work.path(), &mut report)?;
    }
    let baseline = if a.baseline {
        Some(prepare_baseline(work.path(), &mut report)?)
    } else {
        None
    };
    let target = Target {
        fleet: &fleet,
        image: &image,
        guest_port,
        accel: probe.accel,
        deadline,
    };
    if a.template {
        return bench_template(&a, &target, baseline.as_ref(), report);
    }
    let samples = boot_interleaved(&target, baseline.as_ref(), &a)?;
    let (hangs, base_hangs) = samples.hangs();
    report["hangs"] = hangs.into();
    report["baseline_hangs"] = base_hangs.into();
    let rows = metric_rows(&samples);

    if a.min_memory {
        if let Some(mib) = min_memory(&target, m.boot.memory)? {
            report["min_memory_mib"] = mib.into();
        }
    }
    report["metrics"] = metrics_json(&rows).into();

    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_report(&a, m, &probe, &report, &rows, &samples);
    Ok(if hangs > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The report's first fields: the image, the accelerator, the boot count and the host.
fn report_header(
    m: &kiln_bake::ImageManifest,
    probe: &kiln_vm::AccelProbe,
    boots: usize,
) -> serde_json::Value {
    serde_json::json!({
        "recipe": m.name, "accel": probe.accel.to_string(), "accel_reason": probe.reason, "boots": boots,
        "host": host_line(),
        "image_bytes": m.initramfs.size, "kernel_bytes": m.kernel.size,
    })
}

/// The guest port of the recipe's `tcp:PORT` readiness check, which bench needs.
fn ready_port(recipe: &Recipe) -> Result<u16> {
    match recipe.config.ready {
        kiln_recipe::Ready::Tcp(p) => Ok(p),
        _ => bail!(crate::BadInput(format!(
            "{}: bench needs ready = \"tcp:PORT\" to measure the first HTTP answer",
            recipe.config_path().display()
        ))),
    }
}

/// The image to measure: the recipe's (built if needed), or one built with `--kernel`.
fn resolve_image(a: &BenchArgs, recipe: &Recipe) -> Result<Image> {
    let Some(k) = &a.kernel else {
        let spinner = crate::Spinner::new();
        return Ok(kiln_fleet::plan::resolve_image(
            &a.recipe,
            &dirs::cache_root(),
            &spinner,
        )?);
    };
    let mut r = recipe.clone();
    r.config.kernel = kiln_recipe::KernelChoice::parse_override(k)
        .map_err(|e| crate::BadInput(format!("--kernel: {e}")))?;
    let out = dirs::cache_root().join("images").join(format!(
        "{}-bench-{}",
        r.config.name,
        k.replace('/', "_")
    ));
    let report = crate::build_recipe(&r, &out, false, false)?;
    Ok(Image {
        dir: out,
        manifest: report.manifest,
        built: None,
    })
}

/// Time cold, warm and up-to-date builds into `report`, with the tiny kernel's compile time.
fn measure_builds(
    recipe: &Recipe,
    m: &kiln_bake::ImageManifest,
    work: &Path,
    report: &mut serde_json::Value,
) -> Result<()> {
    let cold_cache = cold_cache(work)?;
    let cold = time_build(recipe, &cold_cache, &work.join("cold"))?;
    let warm = time_build(recipe, &cold_cache, &work.join("warm"))?;
    let noop = time_noop_build(recipe, &cold_cache, &work.join("warm"))?;
    report["build_ms"] = serde_json::json!({ "cold": cold, "warm": warm, "up_to_date": noop });
    if m.boot.is_tiny_kernel() {
        let compile = kiln_kernel::tiny::list_tiny(&dirs::cache_root())
            .into_iter()
            .find(|k| m.kernel.description.contains(&k.config_hash[..16]))
            .map(|k| k.build_seconds);
        if let Some(secs) = compile {
            report["kernel_compile_s"] = secs.into();
        }
    }
    Ok(())
}

/// An empty download cache in `work` but for the compiled kernels (linked from the real one).
fn cold_cache(work: &Path) -> Result<PathBuf> {
    let cold_cache = work.join("cold-cache");
    // Cold means an empty cache except for compiled kernels: compiling the tiny kernel
    // (minutes, once per kernel config) would swamp the image build; its own time is
    // reported from its cache record instead.
    std::fs::create_dir_all(&cold_cache)?;
    let kernels = dirs::cache_root().join("kernels");
    if kernels.is_dir() {
        std::os::unix::fs::symlink(&kernels, cold_cache.join("kernels"))?;
    }
    Ok(cold_cache)
}

/// Time (ms) a `kiln build` into the up-to-date image `out`, which should reuse it.
fn time_noop_build(recipe: &Recipe, cache: &Path, out: &Path) -> Result<f64> {
    let exe = std::env::current_exe()?;
    let t = Instant::now();
    let o = Command::new(exe)
        .env("KILN_CACHE_DIR", cache)
        .arg("build")
        .arg(&recipe.dir)
        .arg("-o")
        .arg(out)
        .output()?;
    let noop = t.elapsed().as_secs_f64() * 1000.0;
    if !o.status.success() {
        bail!("no-op build failed");
    }
    Ok(noop)
}

/// Write the baseline initramfs into `work`, note its size; returns (kernel, initramfs).
fn prepare_baseline(work: &Path, report: &mut serde_json::Value) -> Result<(PathBuf, PathBuf)> {
    let initrd = work.join("baseline.cpio.gz");
    let kernel = baseline_initramfs(&initrd)?;
    report["baseline_image_bytes"] = std::fs::metadata(&initrd)?.len().into();
    Ok((kernel, initrd))
}

/// What every measured Kiln boot shares: the fleet, the image, its port, accelerator, deadline.
struct Target<'a> {
    fleet: &'a Fleet,
    image: &'a Image,
    guest_port: u16,
    accel: Accel,
    deadline: Duration,
}

impl Target<'_> {
    /// One cold Kiln boot of the image under `deadline`, with `memory` MiB if given.
    fn boot(&self, deadline: Duration, memory: Option<u32>) -> Result<Sample> {
        kiln_boot(
            self.fleet,
            self.image,
            self.guest_port,
            self.accel,
            deadline,
            memory,
            false,
        )
    }

    /// One baseline boot (Debian's kernel and the busybox initramfs by hand).
    fn baseline(&self, (kernel, initrd): &(PathBuf, PathBuf)) -> Result<Sample> {
        baseline_boot(kernel, initrd, self.accel, self.deadline)
    }

    /// One start from the image's template (a clone).
    fn clone_boot(&self) -> Result<Sample> {
        kiln_boot(
            self.fleet,
            self.image,
            self.guest_port,
            self.accel,
            self.deadline,
            None,
            true,
        )
    }
}

/// The samples of every boot, Kiln's and the baseline's (empty without `--baseline`).
struct Samples {
    kiln: Vec<Sample>,
    base: Vec<Sample>,
}

impl Samples {
    /// How many Kiln and baseline boots hung.
    fn hangs(&self) -> (usize, usize) {
        let hangs = self.kiln.iter().filter(|s| s.hung).count();
        let base_hangs = self.base.iter().filter(|s| s.hung).count();
        (hangs, base_hangs)
    }
}

/// Boot Kiln `a.boots` times, each followed by a baseline boot when there is one.
fn boot_interleaved(
    target: &Target,
    baseline: Option<&(PathBuf, PathBuf)>,
    a: &BenchArgs,
) -> Result<Samples> {
    let mut kiln = Vec::new();
    let mut base = Vec::new();
    rounds(a, "boot", || {
        kiln.push(target.boot(target.deadline, None)?);
        if let Some(b) = baseline {
            base.push(target.baseline(b)?);
        }
        Ok(())
    })?;
    Ok(Samples { kiln, base })
}

/// Run `a.boots` rounds of `round`, showing the progress unless the output is JSON.
fn rounds(a: &BenchArgs, what: &str, mut round: impl FnMut() -> Result<()>) -> Result<()> {
    for i in 0..a.boots {
        round()?;
        if !a.json {
            eprint!("\rbench: {what} {}/{}", i + 1, a.boots);
        }
    }
    if !a.json {
        eprintln!();
    }
    Ok(())
}

/// A metric's name with its Kiln and baseline figures.
type Row = (String, Stats, Stats);

/// The metrics table: the fixed metrics, then one row per guest phase of the first boot.
fn metric_rows(samples: &Samples) -> Vec<Row> {
    let (kiln_samples, base_samples) = (&samples.kiln, &samples.base);
    let mut rows: Vec<Row> = vec![
        (
            "run to first HTTP 200 (ms)".into(),
            stats(kiln_samples.iter().map(|s| s.first_200_ms)),
            stats(base_samples.iter().map(|s| s.first_200_ms)),
        ),
        (
            "run to ready line (ms)".into(),
            stats(kiln_samples.iter().map(|s| s.ready_host_ms)),
            None,
        ),
        (
            "guest uptime at ready (ms)".into(),
            stats(kiln_samples.iter().map(|s| s.guest_ready_ms)),
            None,
        ),
        (
            "QEMU RSS (MB)".into(),
            stats(kiln_samples.iter().map(|s| s.rss_kb.map(|k| k / 1024.0))),
            stats(base_samples.iter().map(|s| s.rss_kb.map(|k| k / 1024.0))),
        ),
        (
            "graceful stop (ms)".into(),
            stats(kiln_samples.iter().map(|s| s.stop_ms)),
            None,
        ),
    ];
    let phase_names: Vec<String> = kiln_samples
        .first()
        .map(|s| s.phases.keys().cloned().collect())
        .unwrap_or_default();
    for ph in phase_names {
        rows.push((
            format!("guest phase {ph} (ms)"),
            stats(kiln_samples.iter().map(|s| s.phases.get(&ph).copied())),
            None,
        ));
    }
    rows
}

/// The smallest memory (MiB) that still served the page, by bisection from `image_memory`.
fn min_memory(target: &Target, image_memory: u32) -> Result<Option<u32>> {
    let mut lo = 16u32;
    let mut hi = image_memory.max(32);
    // Invariant: hi works (checked first), lo does not or is the floor.
    let works = |mem: u32| -> Result<bool> {
        Ok(!target
            .boot(target.deadline.min(Duration::from_secs(40)), Some(mem))?
            .hung)
    };
    if !works(hi)? {
        return Ok(None);
    }
    while hi - lo > 4 {
        let mid = (lo + hi) / 2;
        if works(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(hi))
}

/// The metrics table as JSON, with the median ratio.
fn metrics_json(rows: &[Row]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|(name, k, b)| {
            serde_json::json!({
                "metric": name,
                "kiln": k.map(|(mi, me, p)| serde_json::json!({"min": mi, "median": me, "p90": p})),
                "baseline": b.map(|(mi, me, p)| serde_json::json!({"min": mi, "median": me, "p90": p})),
                "ratio_median": match (k, b) { (Some(k), Some(b)) if b.1 > 0.0 => Some(k.1 / b.1), _ => None },
            })
        })
        .collect()
}

/// Print the human-readable report: the summary, the hangs and the metrics table.
fn print_report(
    a: &BenchArgs,
    m: &kiln_bake::ImageManifest,
    probe: &kiln_vm::AccelProbe,
    report: &serde_json::Value,
    rows: &[Row],
    samples: &Samples,
) {
    print_summary(a, m, probe, report);
    let (hangs, base_hangs) = samples.hangs();
    println!(
        "hangs (missed the {} s deadline): kiln {hangs}/{}, baseline {base_hangs}/{}",
        a.deadline,
        a.boots,
        samples.base.len()
    );
    print_table(rows);
}

/// Print what was measured and on what, and the build and memory figures when measured.
fn print_summary(
    a: &BenchArgs,
    m: &kiln_bake::ImageManifest,
    probe: &kiln_vm::AccelProbe,
    report: &serde_json::Value,
) {
    println!(
        "kiln bench {} — {} boots, accelerator {} ({})",
        m.name, a.boots, probe.accel, probe.reason
    );
    println!("host: {}", report["host"].as_str().unwrap_or(""));
    println!(
        "image {} ({}), kernel {}",
        m.name,
        crate::root_summary(&m.initramfs, m.files.len()),
        human(m.kernel.size)
    );
    if let Some(b) = report.get("baseline_image_bytes").and_then(|v| v.as_u64()) {
        println!("baseline initramfs (busybox + modules, gzip) {}", human(b));
    }
    if let Some(b) = report.get("build_ms") {
        println!(
            "build: cold {:.0} ms (empty cache but for compiled kernels), warm {:.0} ms, up-to-date check {:.0} ms",
            b["cold"].as_f64().unwrap_or(0.0),
            b["warm"].as_f64().unwrap_or(0.0),
            b["up_to_date"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(k) = report.get("kernel_compile_s").and_then(|v| v.as_u64()) {
        println!("tiny kernel: compiled once in {k} s (its cache record), cached since");
    }
    if let Some(mm) = report.get("min_memory_mib") {
        println!("smallest --memory that served the page: {mm} MiB");
    }
}

/// Print the metrics table: min / median / p90 of each side and the median ratio.
fn print_table(rows: &[Row]) {
    println!(
        "{:<32} {:>26} {:>26} {:>7}",
        "metric (min / median / p90)", "kiln", "baseline", "ratio"
    );
    let fmt = |s: &Stats| {
        s.map(|(a, b, c)| format!("{a:.0} / {b:.0} / {c:.0}"))
            .unwrap_or_else(|| "-".into())
    };
    for (name, k, b) in rows {
        let ratio = match (k, b) {
            (Some(k), Some(b)) if b.1 > 0.0 => format!("{:.2}x", k.1 / b.1),
            _ => "-".into(),
        };
        println!("{:<32} {:>26} {:>26} {:>7}", name, fmt(k), fmt(b), ratio);
    }
}

fn host_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let qemu = Command::new(kiln_vm::qemu_binary())
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    format!(
        "{} cores, {cpu}, {qemu}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    )
}

/// `kiln bench --template`: make the template, then clone boots interleaved with cold boots of
/// the same image and the baseline; then `--clones` clones at once, and the host memory each
/// idle clone takes (MemAvailable drop, not RSS: the template's pages are shared).
fn bench_template(
    a: &BenchArgs,
    target: &Target,
    baseline: Option<&(PathBuf, PathBuf)>,
    mut report: serde_json::Value,
) -> Result<ExitCode> {
    let t = Instant::now();
    let saved = target.fleet.make_template(target.image, target.accel)?;
    let make_ms = t.elapsed().as_secs_f64() * 1000.0;
    let (mut clones, mut colds, mut bases) = (vec![], vec![], vec![]);
    rounds(a, "round", || {
        clones.push(target.clone_boot()?);
        colds.push(target.boot(target.deadline, None)?);
        if let Some(b) = baseline {
            bases.push(target.baseline(b)?);
        }
        Ok(())
    })?;
    let first = |v: &[Sample]| stats(v.iter().map(|s| s.first_200_ms));
    let (c, k, b) = (first(&clones), first(&colds), first(&bases));
    let fleet_run = many_clones(target, a.clones)?;
    let median = |s: Stats| s.map(|x| x.1);
    report["template"] = serde_json::json!({
        "make_ms": make_ms,
        "save_ms": saved.meta.save_ms,
        "stored_bytes": saved.meta.stored_bytes,
        "clone_first_200_ms": c.map(|(a, b, c)| [a, b, c]),
        "cold_first_200_ms": k.map(|(a, b, c)| [a, b, c]),
        "baseline_first_200_ms": b.map(|(a, b, c)| [a, b, c]),
        "clone_vs_cold": median(c).zip(median(k)).map(|(c, k)| c / k),
        "clone_vs_baseline": median(c).zip(median(b)).map(|(c, b)| c / b),
        "clone_hangs": clones.iter().filter(|s| s.hung).count(),
        "clones_at_once": fleet_run,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let t = &report["template"];
    let fmt = |s: Stats| {
        s.map(|(a, b, c)| format!("{a:.0} / {b:.0} / {c:.0} ms"))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "kiln bench {} --template — {} rounds, accelerator {}",
        target.image.manifest.name, a.boots, target.accel
    );
    println!("host: {}", report["host"].as_str().unwrap_or(""));
    println!(
        "template: made in {make_ms:.0} ms (saved in {} ms), {} stored",
        saved.meta.save_ms,
        human(saved.meta.stored_bytes)
    );
    println!("first HTTP 200 (min / median / p90):");
    println!("  clone     {}", fmt(c));
    println!("  cold      {}", fmt(k));
    println!("  baseline  {}", fmt(b));
    println!(
        "  clone/cold {:.2}x, clone/baseline {}",
        t["clone_vs_cold"].as_f64().unwrap_or(f64::NAN),
        t["clone_vs_baseline"]
            .as_f64()
            .map(|r| format!("{r:.2}x"))
            .unwrap_or_else(|| "-".into())
    );
    let f = &t["clones_at_once"];
    println!(
        "{} clones at once: {} answered, all within {:.0} ms of the first launch; host memory per idle clone {:.1} MB (MemAvailable drop)",
        f["clones"], f["answered"], f["all_answered_ms"].as_f64().unwrap_or(f64::NAN),
        f["mem_per_clone_mb"].as_f64().unwrap_or(f64::NAN)
    );
    Ok(ExitCode::SUCCESS)
}

/// MemAvailable, kB.
fn mem_available_kb() -> Option<f64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Start `n` clones at once (each kept by a thread of its own: QEMU dies with the thread that
/// spawned it), time until all answer, then the MemAvailable drop per idle clone.
fn many_clones(target: &Target, n: usize) -> Result<serde_json::Value> {
    let before = mem_available_kb().unwrap_or(0.0);
    let t0 = Instant::now();
    let done = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<Option<f64>>();
    let result = std::thread::scope(|scope| -> Result<serde_json::Value> {
        for _ in 0..n {
            let tx = tx.clone();
            let done = &done;
            scope.spawn(move || {
                let answered = (|| -> Result<(kiln_fleet::Foreground, Option<f64>)> {
                    let port = free_port()?;
                    let p = Prepared {
                        config: VmConfig {
                            image: Some(target.image.dir.display().to_string()),
                            name: Some(format!("clone{port}")),
                            ports: vec![PortForward {
                                host_addr: std::net::Ipv4Addr::LOCALHOST,
                                host_port: port,
                                guest_port: target.guest_port,
                                protocol: kiln_recipe::Protocol::Tcp,
                            }],
                            ..VmConfig::default()
                        },
                        image: target.image.clone(),
                    };
                    let mut fg = target
                        .fleet
                        .launch_foreground(&p, target.accel, false, None)?;
                    // Many clones poll at once: fewer attempts each, so the poll itself does
                    // not load the two cores the clones run on. The keeper's loop runs beside
                    // the poll: it brings the clone's link up when the guest is thawed.
                    let deadline = t0 + target.deadline;
                    let poller = std::thread::spawn(move || {
                        poll_200(port, t0, deadline, Duration::from_millis(50))
                    });
                    let never = AtomicBool::new(false);
                    fg.watch(Until::Ready, &never, &mut |_| {});
                    let at = poller.join().unwrap_or(None);
                    Ok((fg, at))
                })();
                match answered {
                    Ok((fg, at)) => {
                        let _ = tx.send(at);
                        while !done.load(std::sync::atomic::Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        drop(fg);
                    }
                    Err(e) => {
                        eprintln!("bench: a clone did not start: {e:#}");
                        let _ = tx.send(None);
                    }
                }
            });
        }
        drop(tx);
        let times: Vec<Option<f64>> = rx.iter().take(n).collect();
        // Let the clones go idle, then read what they cost the host.
        let settle = Instant::now() + Duration::from_secs(3);
        while Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(100));
        }
        let after = mem_available_kb().unwrap_or(0.0);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let answered: Vec<f64> = times.iter().flatten().copied().collect();
        Ok(serde_json::json!({
            "clones": n,
            "answered": answered.len(),
            "all_answered_ms": (answered.len() == n).then(|| answered.iter().cloned().fold(0.0, f64::max)),
            "mem_per_clone_mb": (before - after) / 1024.0 / n as f64,
        }))
    });
    result
}
