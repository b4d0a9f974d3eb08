//! The commands that manage VMs by name — `ps`, `stop`, `kill`, `rm`, `logs`, `console`,
//! `inspect NAME` — each one call into the fleet, plus printing and the terminal.

use crate::{dirs, term};
use anyhow::{Context, Result};
use kiln_fleet::ops::Stopped;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// `kiln ps [--json]`.
pub fn ps(json: bool) -> Result<ExitCode> {
    let rows = dirs::fleet()?.rows();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<22} {:>8} {:>8} {:>4} {:>6} {:>4}  {:<5} {:<24} IMAGE",
        "NAME", "STATE", "PID", "UPTIME", "CPUS", "MEM", "RST", "ACCEL", "PORTS"
    );
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for r in &rows {
        let ports: Vec<String> = r.ports.iter().map(|p| p.to_string()).collect();
        println!(
            "{:<16} {:<22} {:>8} {:>8} {:>4} {:>6} {:>4}  {:<5} {:<24} {}",
            r.name,
            r.status,
            dash(r.pid.map(|p| p.to_string())),
            dash(r.pid.map(|_| format!("{}s", r.uptime_s))),
            r.cpus,
            format!("{}M", r.memory),
            r.restarts,
            r.accel,
            if ports.is_empty() {
                "-".to_string()
            } else {
                ports.join(",")
            },
            r.image,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln stop NAME… --timeout T` (graceful) and `kiln kill NAME…` (`timeout` None).
pub fn stop(names: &[String], timeout: Option<u64>) -> Result<ExitCode> {
    let fleet = dirs::fleet()?;
    for name in names {
        match fleet.stop(name, timeout.map(Duration::from_secs))? {
            Stopped::NotRunning(status) => eprintln!(
                "kiln: {name} is not running ({status}); `kiln rm {name}` removes its record"
            ),
            Stopped::Done { how, took } => eprintln!(
                "kiln: {name} {} ({how}) in {:.0} ms",
                if timeout.is_some() {
                    "stopped"
                } else {
                    "killed"
                },
                took.as_secs_f64() * 1000.0
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln rm NAME… [-f]`.
pub fn rm(names: &[String], force: bool) -> Result<ExitCode> {
    let fleet = dirs::fleet()?;
    for name in names {
        fleet.remove(name, force)?;
        eprintln!("kiln: removed {name}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln logs NAME [-f]`.
pub fn logs(name: &str, follow: bool) -> Result<ExitCode> {
    let fleet = dirs::fleet()?;
    let (path, rec) = fleet.console_log(name)?;
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut out = std::io::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    let mut live = follow && rec.is_live(fleet.host());
    loop {
        let n = f.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        out.flush()?;
        if !live {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
        // One last read after the supervisor ends, then stop following.
        if !rec.supervisor_alive(fleet.host()) {
            live = false;
        }
        let pos = f.stream_position()?;
        f.seek(SeekFrom::Start(pos))?;
    }
}

/// `kiln console NAME`.
pub fn console(name: &str) -> Result<ExitCode> {
    let socket = dirs::fleet()?.console_socket(name)?;
    attach(name, &socket)?;
    Ok(ExitCode::SUCCESS)
}

/// `kiln inspect NAME`: the whole record as JSON.
pub fn inspect(name: &str) -> Result<ExitCode> {
    let fleet = dirs::fleet()?;
    let rec = fleet.get(name)?;
    let mut v = serde_json::to_value(&rec)?;
    v["status"] = serde_json::Value::String(rec.status());
    v["dir"] = serde_json::Value::String(fleet.store().vm_dir(name).display().to_string());
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

/// Attach the terminal to a console socket until Ctrl-] (detach, the VM keeps running) or the
/// console closes.
fn attach(name: &str, socket: &Path) -> Result<()> {
    let s = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the console of `{name}` at {}",
            socket.display()
        )
    })?;
    let out = s.try_clone().context("cloning the console socket")?;
    let raw = term::RawMode::enter();
    let nl = if raw.is_tty() { "\r\n" } else { "\n" };
    eprint!("kiln: attached to the console of {name}; Ctrl-] detaches{nl}");
    let mut reader = s;
    let copier = std::thread::spawn(move || {
        let mut stdout = std::io::stdout();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                break;
            }
            let _ = stdout.flush();
        }
    });
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    // When piped input ends, keep watching until the console closes.
    term::forward_stdin(out, move || {
        let _ = tx.send(());
    });
    loop {
        if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
            drop(raw);
            eprintln!("\nkiln: detached from {name} (it keeps running)");
            return Ok(());
        }
        if copier.is_finished() {
            drop(raw);
            eprintln!("\nkiln: the console of {name} closed");
            return Ok(());
        }
    }
}
