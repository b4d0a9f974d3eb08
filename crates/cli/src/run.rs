//! `kiln run`, `kiln stop`, `kiln ps`: booting an image in the foreground (console on the
//! terminal, Ctrl-] to stop) or detached (console logged, returns once ready).

use crate::{dirs, state, term, BadInput};
use anyhow::{bail, Context, Result};
use clap::Args;
use kiln_build::ImageManifest;
use kiln_recipe::{PortForward, Ready, Recipe};
use kiln_vm::runner::{self, ConsoleMsg, RunPaths};
use kiln_vm::{
    accel, cmdline, ports, Accel, AccelChoice, ConsoleEvent, LineParser, NetSpec, VmSpec,
};
use sha2::Digest;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The byte that detaches from / stops a foreground VM: Ctrl-].
const ESCAPE: u8 = 0x1d;

/// Options of `kiln run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// A recipe folder (built first if stale) or an image folder from `kiln build`.
    pub target: PathBuf,
    /// Forward a host port: [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp] (repeatable; replaces the recipe's ports).
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    pub ports: Vec<PortForward>,
    /// Virtual CPUs (default: the recipe's).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory in MiB (default: the recipe's).
    #[arg(long, short = 'm')]
    pub memory: Option<u32>,
    /// VM name (default: the recipe's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Run in the background: the console goes to a log file; return once the guest is ready.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Accelerator: auto (probe KVM, fall back to TCG), kvm, tcg.
    #[arg(long, default_value = "auto")]
    pub accel: AccelChoice,
    /// Seconds to wait for readiness (default: the recipe's ready_timeout).
    #[arg(long)]
    pub ready_timeout: Option<u64>,
    /// Extra kernel arguments.
    #[arg(long)]
    pub append: Option<String>,
    /// Show the kernel's boot messages (drops `quiet`).
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Print the boot timeline (host and guest phases) once ready.
    #[arg(long)]
    pub timings: bool,
    /// Do not show the console (foreground runs): only kiln's own lines.
    #[arg(long)]
    pub no_console: bool,
}

impl RunArgs {
    /// The options `kiln bench` boots with: one forward, no console, defaults otherwise.
    pub(crate) fn for_bench(
        image: &Path,
        host_port: u16,
        guest_port: u16,
        accel: AccelChoice,
        memory: Option<u32>,
    ) -> RunArgs {
        RunArgs {
            target: image.to_path_buf(),
            ports: vec![PortForward {
                host_addr: std::net::Ipv4Addr::LOCALHOST,
                host_port,
                guest_port,
                protocol: kiln_recipe::Protocol::Tcp,
            }],
            cpus: None,
            memory,
            name: Some(format!("bench{host_port}")),
            detach: false,
            accel,
            ready_timeout: None,
            append: None,
            verbose: false,
            timings: false,
            no_console: true,
        }
    }
}

/// Resolve TARGET to an image folder, building a recipe if needed.
pub(crate) fn image_for(target: &Path) -> Result<(PathBuf, ImageManifest)> {
    if target.join(kiln_build::MANIFEST).is_file() {
        let m = kiln_build::load_image(target)?;
        return Ok((target.to_path_buf(), m));
    }
    if !target.join("kiln.toml").is_file() && !target.exists() {
        return Err(BadInput(format!(
            "{}: no such recipe or image folder",
            target.display()
        ))
        .into());
    }
    let recipe = Recipe::load(target)?;
    let key = hex::encode(&sha2::Sha256::digest(recipe.dir.as_os_str().as_encoded_bytes())[..6]);
    let out = dirs::cache_root()
        .join("images")
        .join(format!("{}-{key}", recipe.config.name));
    let report = crate::build_recipe(&recipe, &out, false, false)?;
    if !report.reused {
        eprintln!(
            "kiln: built {} in {:.2} s (initramfs {})",
            recipe.config.name,
            report.elapsed.as_secs_f64(),
            crate::human(report.manifest.initramfs.size)
        );
    }
    Ok((out, report.manifest))
}

pub(crate) struct Plan {
    name: String,
    pub(crate) spec: VmSpec,
    ready_timeout: Duration,
    ports: Vec<PortForward>,
    image_dir: PathBuf,
    run_dir: PathBuf,
}

pub(crate) fn plan(
    a: &RunArgs,
    image_dir: &Path,
    m: &ImageManifest,
    run_dir: &Path,
    accel: Accel,
) -> Result<Plan> {
    let name = a.name.clone().unwrap_or_else(|| m.name.clone());
    let ports: Vec<PortForward> = if a.ports.is_empty() {
        m.boot
            .ports
            .iter()
            .map(|p| p.parse().map_err(|e: String| BadInput(e)))
            .collect::<Result<_, _>>()?
    } else {
        a.ports.clone()
    };
    let _: Ready = m.boot.ready.parse().map_err(BadInput)?;
    let mut extra = m.boot.cmdline.clone();
    if let Some(x) = &a.append {
        extra.push(' ');
        extra.push_str(x);
    }
    let paths = RunPaths::in_dir(run_dir);
    let spec = VmSpec {
        name: name.clone(),
        kernel: image_dir.join(&m.kernel.file),
        initrd: Some(image_dir.join(&m.initramfs.file)),
        cmdline: cmdline::compose(accel, cmdline::host_tsc_khz(), a.verbose, &extra),
        cpus: a.cpus.unwrap_or(m.boot.cpus),
        memory_mib: a.memory.unwrap_or(m.boot.memory),
        accel,
        net: if m.boot.network == "none" {
            NetSpec::None
        } else {
            NetSpec::User {
                forwards: ports.clone(),
            }
        },
        console_socket: paths.console_socket.clone(),
        console_wait: !a.detach,
        console_log: a.detach.then(|| paths.console_log.clone()),
        control_socket: paths.control_socket.clone(),
        qmp_socket: paths.qmp_socket.clone(),
        drives: vec![],
        shares: vec![],
        vports: vec![],
        extra_args: vec![],
    };
    Ok(Plan {
        name,
        spec,
        ready_timeout: Duration::from_secs(a.ready_timeout.unwrap_or(m.boot.ready_timeout as u64)),
        ports,
        image_dir: image_dir.to_path_buf(),
        run_dir: run_dir.to_path_buf(),
    })
}

/// `kiln run`.
pub fn run(a: RunArgs) -> Result<ExitCode> {
    let (image_dir, manifest) = image_for(&a.target)?;
    let image_dir = std::fs::canonicalize(&image_dir).unwrap_or(image_dir);
    let qemu = kiln_vm::check_qemu()?;
    let probe = accel::choose(
        a.accel,
        &qemu,
        &image_dir.join(&manifest.kernel.file),
        &dirs::cache_root(),
    );
    if let Some(line) = probe.fallback_line() {
        eprintln!("{line}");
    }
    let state_root = dirs::state_root();
    let name = a.name.clone().unwrap_or_else(|| manifest.name.clone());
    let run_dir = if a.detach {
        if let Ok(r) = state::read(&state_root, &name) {
            if runner::pid_alive(r.pid) {
                return Err(BadInput(format!(
                    "a VM named `{name}` is already running (pid {}); stop it with `kiln stop {name}` or pick another --name",
                    r.pid
                ))
                .into());
            }
            state::remove(&state_root, &name)?;
        }
        state::vm_dir(&state_root, &name)
    } else {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        base.join("kiln")
            .join(format!("{name}-{}", std::process::id()))
    };
    let plan = plan(&a, &image_dir, &manifest, &run_dir, probe.accel)?;
    ports::check_free(&plan.ports)?;
    if a.detach {
        detached(plan, &qemu, &state_root, probe.accel)
    } else {
        let r = foreground(&a, &plan, &qemu);
        let _ = std::fs::remove_dir_all(&run_dir);
        r
    }
}

fn foreground(a: &RunArgs, plan: &Plan, qemu: &Path) -> Result<ExitCode> {
    let paths = RunPaths::in_dir(&plan.run_dir);
    let mut vm = runner::spawn(qemu, &plan.spec, &paths, false)?;
    let launched = vm.started;
    let console = vm.connect_console()?;
    let writer = console.try_clone().context("cloning the console socket")?;
    let parser = Arc::new(Mutex::new(LineParser::new(40)));
    let sink: Option<Box<dyn Write + Send>> = if a.no_console {
        None
    } else {
        Some(Box::new(std::io::stdout()))
    };
    let events = runner::read_console(console, sink, parser.clone());

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let raw = term::RawMode::enter();
    if raw.is_tty() {
        eprint!(
            "kiln: console of {} attached; Ctrl-] stops the VM\r\n",
            plan.name
        );
    }
    // Piped input is forwarded too, so `echo cmd | kiln run recipes/rescue` works.
    forward_stdin(writer, stop.clone());

    let deadline = launched + plan.ready_timeout;
    let mut ready_at: Option<(Instant, u64)> = None;
    let mut first_byte = None::<Instant>;
    let mut rc_status: Option<i32> = None;
    let mut stopping = false;
    let nl = if raw.is_tty() { "\r\n" } else { "\n" };
    loop {
        if stop.load(Ordering::Relaxed) && !stopping {
            stopping = true;
            eprint!("kiln: stopping {}{nl}", plan.name);
            let outcome = vm.stop(Duration::from_secs(10));
            tracing::debug!(?outcome, "stopped");
        }
        match events.recv_timeout(Duration::from_millis(20)) {
            Ok(ConsoleMsg::Event(ev)) => {
                first_byte.get_or_insert_with(Instant::now);
                match ev {
                    ConsoleEvent::Ready { guest_ms } => {
                        let now = Instant::now();
                        ready_at = Some((now, guest_ms));
                        eprint!(
                            "kiln: {} ready: guest {} ms, launch to ready {:.0} ms ({}){nl}",
                            plan.name,
                            guest_ms,
                            (now - launched).as_secs_f64() * 1000.0,
                            plan.spec.accel
                        );
                    }
                    ConsoleEvent::Timeline(phases) if a.timings => {
                        let list: Vec<String> =
                            phases.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        eprint!("kiln: timeline (guest ms) {}{nl}", list.join(" "));
                    }
                    ConsoleEvent::RcExited { status } => rc_status = Some(status),
                    ConsoleEvent::InitError(m) => eprint!("kiln: guest init: {m}{nl}"),
                    _ => {}
                }
            }
            Ok(ConsoleMsg::Closed) => {
                // The console closes when QEMU exits; wait for the process itself.
                let _ = vm.wait_exit(Duration::from_secs(5));
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if ready_at.is_none() && !stopping && Instant::now() > deadline {
            vm.stop(Duration::from_secs(3));
            drop(raw);
            let tail = parser.lock().map(|p| p.tail()).unwrap_or_default();
            return Err(kiln_vm::VmError::NotReady {
                seconds: plan.ready_timeout.as_secs(),
                tail,
            }
            .into());
        }
        if vm.try_wait().is_some() && !stopping {
            // Drain what is left of the console, then finish.
            let _ = events.recv_timeout(Duration::from_millis(200));
            break;
        }
    }
    drop(raw);
    let status = vm.wait_exit(Duration::from_secs(5));
    if a.timings {
        if let Some((t, g)) = ready_at {
            eprintln!(
                "kiln: host timeline: first console output {:.0} ms, ready seen {:.0} ms (guest {g} ms)",
                first_byte.map(|f| (f - launched).as_secs_f64() * 1000.0).unwrap_or(0.0),
                (t - launched).as_secs_f64() * 1000.0
            );
        }
    }
    if let Some(s) = rc_status {
        return Ok(ExitCode::from(s.clamp(0, 255) as u8));
    }
    if stopping {
        return Ok(ExitCode::SUCCESS);
    }
    match status {
        Some(s) if s.success() => Ok(ExitCode::SUCCESS),
        Some(s) => {
            let tail = parser.lock().map(|p| p.tail()).unwrap_or_default();
            bail!(kiln_vm::VmError::QemuExited {
                status: s.to_string(),
                output: format!("{}{tail}", vm.qemu_stderr())
            })
        }
        None => Ok(ExitCode::from(1)),
    }
}

/// Copy the terminal to the console; Ctrl-] asks for a stop instead.
fn forward_stdin(mut console: std::os::unix::net::UnixStream, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                return;
            }
            if let Some(i) = buf[..n].iter().position(|&b| b == ESCAPE) {
                let _ = console.write_all(&buf[..i]);
                stop.store(true, Ordering::Relaxed);
                return;
            }
            if console.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
}

fn detached(plan: Plan, qemu: &Path, state_root: &Path, accel: Accel) -> Result<ExitCode> {
    let paths = RunPaths::in_dir(&state::vm_dir(state_root, &plan.name));
    let mut vm = runner::spawn(qemu, &plan.spec, &paths, true)?;
    let pid = vm.pid();
    let rec = state::VmRecord {
        name: plan.name.clone(),
        pid,
        image: plan.image_dir.display().to_string(),
        ports: plan.ports.iter().map(|p| p.to_string()).collect(),
        cpus: plan.spec.cpus,
        memory: plan.spec.memory_mib,
        accel: accel.to_string(),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        ready_ms: None,
    };
    state::write(state_root, &rec)?;
    let deadline = vm.started + plan.ready_timeout;
    let result = runner::wait_ready_in_log(&paths.console_log, pid, deadline);
    match result {
        Ok(guest_ms) => {
            let elapsed = vm.started.elapsed();
            state::write(
                state_root,
                &state::VmRecord {
                    ready_ms: Some(guest_ms),
                    ..rec
                },
            )?;
            eprintln!(
                "kiln: {} ready: guest {} ms, launch to ready {:.0} ms ({accel}); pid {pid}; console log {}; stop with `kiln stop {}`",
                plan.name,
                guest_ms,
                elapsed.as_secs_f64() * 1000.0,
                paths.console_log.display(),
                plan.name
            );
            // The VM outlives us: forget the child without killing it.
            std::mem::forget(vm);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            vm.stop(Duration::from_secs(3));
            let _ = state::remove(state_root, &plan.name);
            let e = match e {
                kiln_vm::VmError::NotReady { tail, .. } => kiln_vm::VmError::NotReady {
                    seconds: plan.ready_timeout.as_secs(),
                    tail,
                },
                other => other,
            };
            Err(e.into())
        }
    }
}

/// `kiln stop NAME`.
pub fn stop(name: &str, timeout: u64) -> Result<ExitCode> {
    let state_root = dirs::state_root();
    let rec = state::read(&state_root, name).map_err(|e| BadInput(e.to_string()))?;
    let paths = RunPaths::in_dir(&state::vm_dir(&state_root, name));
    let t = Instant::now();
    let outcome = runner::stop_pid(rec.pid, &paths, Duration::from_secs(timeout));
    state::remove(&state_root, name)?;
    eprintln!(
        "kiln: {name} stopped ({outcome:?}) in {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    Ok(ExitCode::SUCCESS)
}

/// `kiln ps`.
pub fn ps(json: bool) -> Result<ExitCode> {
    let state_root = dirs::state_root();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let rows: Vec<serde_json::Value> = state::list(&state_root)
        .into_iter()
        .map(|r| {
            let alive = runner::pid_alive(r.pid);
            serde_json::json!({
                "name": r.name, "state": if alive { "running" } else { "exited" }, "pid": r.pid,
                "uptime_s": now.saturating_sub(r.started), "cpus": r.cpus, "memory": r.memory,
                "ports": r.ports, "image": r.image, "accel": r.accel,
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<16} {:<8} {:>8} {:>8} {:>4} {:>6}  {:<6} PORTS",
            "NAME", "STATE", "PID", "UPTIME", "CPUS", "MEM", "ACCEL"
        );
        for r in &rows {
            println!(
                "{:<16} {:<8} {:>8} {:>7}s {:>4} {:>6}  {:<6} {}",
                r["name"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                r["pid"],
                r["uptime_s"],
                r["cpus"],
                r["memory"],
                r["accel"].as_str().unwrap_or(""),
                r["ports"]
                    .as_array()
                    .map(|p| p
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
