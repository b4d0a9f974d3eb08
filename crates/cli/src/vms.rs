//! The commands that manage detached VMs by name: `ps`, `stop`, `kill`, `rm`, `logs`,
//! `console`, and `inspect NAME`. Every read reconciles the record with the processes that
//! really exist (see `state`).

use crate::state::{self, VmRecord};
use crate::supervise::{must_read, request_stop};
use crate::{dirs, BadInput};
use anyhow::Result;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// One `ps` row as JSON.
fn row(r: &VmRecord) -> serde_json::Value {
    let active = r.state.is_active();
    serde_json::json!({
        "name": r.name,
        "state": r.state,
        "status": crate::run::describe(r),
        "pid": if active && r.pid != 0 { Some(r.pid) } else { None },
        "supervisor_pid": if active { Some(r.supervisor_pid) } else { None },
        "uptime_s": if active && r.pid != 0 { state::now().saturating_sub(r.started) } else { 0 },
        "cpus": r.cpus,
        "memory": r.memory,
        "ports": r.ports,
        "image": r.image,
        "accel": r.accel,
        "restarts": r.restarts,
        "restart": r.config.restart.clone().unwrap_or_else(|| "no".into()),
        "exit_code": r.exit_code,
        "signal": r.signal,
        "ready_ms": r.ready_ms,
        "foreground": r.foreground,
    })
}

/// A foreground VM's console is the terminal of its `kiln run`: no log, no socket to attach.
fn refuse_foreground(rec: &VmRecord) -> Result<()> {
    if rec.foreground {
        return Err(BadInput(format!(
            "{} runs in the foreground of `kiln run` (pid {}): its console is that terminal; start it with `kiln run -d` for logs and `kiln console`",
            rec.name, rec.supervisor_pid
        ))
        .into());
    }
    Ok(())
}

/// `kiln ps`.
pub fn ps(json: bool) -> Result<ExitCode> {
    let rows: Vec<serde_json::Value> = state::list(&dirs::state_root()).iter().map(row).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<22} {:>8} {:>8} {:>4} {:>6} {:>4}  {:<5} {:<24} IMAGE",
        "NAME", "STATE", "PID", "UPTIME", "CPUS", "MEM", "RST", "ACCEL", "PORTS"
    );
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        o => o.to_string(),
    };
    for r in &rows {
        let ports: Vec<&str> = r["ports"]
            .as_array()
            .map(|p| p.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        println!(
            "{:<16} {:<22} {:>8} {:>8} {:>4} {:>6} {:>4}  {:<5} {:<24} {}",
            s(&r["name"]),
            s(&r["status"]),
            s(&r["pid"]),
            if r["pid"].is_null() {
                "-".to_string()
            } else {
                format!("{}s", s(&r["uptime_s"]))
            },
            s(&r["cpus"]),
            format!("{}M", s(&r["memory"])),
            s(&r["restarts"]),
            s(&r["accel"]),
            if ports.is_empty() {
                "-".to_string()
            } else {
                ports.join(",")
            },
            s(&r["image"]),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln stop NAME --timeout T` (graceful) and `kiln kill NAME` (`timeout` None).
pub fn stop(name: &str, timeout: Option<u64>) -> Result<ExitCode> {
    let root = dirs::state_root();
    let rec = must_read(&root, name)?;
    if !rec.state.is_active() {
        eprintln!(
            "kiln: {name} is not running ({}); `kiln rm {name}` removes its record",
            crate::run::describe(&rec)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let t = Instant::now();
    let how = request_stop(&root, &rec, timeout)?;
    eprintln!(
        "kiln: {name} {} ({how}) in {:.0} ms",
        if timeout.is_some() {
            "stopped"
        } else {
            "killed"
        },
        t.elapsed().as_secs_f64() * 1000.0
    );
    Ok(ExitCode::SUCCESS)
}

/// `kiln rm NAME [-f]`.
pub fn rm(names: &[String], force: bool) -> Result<ExitCode> {
    let root = dirs::state_root();
    for name in names {
        let rec = must_read(&root, name)?;
        if state::is_live(&rec) || state::qemu_alive(&rec) {
            if !force {
                return Err(BadInput(format!(
                    "{name} is {}: stop it first (`kiln stop {name}`), or `kiln rm -f {name}` to kill and remove it",
                    rec.state
                ))
                .into());
            }
            request_stop(&root, &rec, None)?;
        }
        state::remove(&root, name)?;
        eprintln!("kiln: removed {name}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln logs NAME [-f]`.
pub fn logs(name: &str, follow: bool) -> Result<ExitCode> {
    let root = dirs::state_root();
    let rec = must_read(&root, name)?;
    refuse_foreground(&rec)?;
    let path = state::vm_dir(&root, name).join("console.log");
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e.into()),
    };
    let mut out = std::io::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    let mut live = follow && state::is_live(&rec);
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
        if !state::supervisor_alive(&rec) {
            live = false;
        }
        let pos = f.stream_position()?;
        f.seek(SeekFrom::Start(pos))?;
    }
}

/// `kiln console NAME`.
pub fn console(name: &str) -> Result<ExitCode> {
    let root = dirs::state_root();
    let rec = must_read(&root, name)?;
    refuse_foreground(&rec)?;
    if !state::is_live(&rec) {
        return Err(BadInput(format!(
            "{name} is not running ({}); `kiln logs {name}` shows its console log",
            crate::run::describe(&rec)
        ))
        .into());
    }
    crate::console::attach(name, &state::vm_dir(&root, name).join("console.sock"))?;
    Ok(ExitCode::SUCCESS)
}

/// `kiln inspect NAME`: the whole record as JSON.
pub fn inspect(name: &str) -> Result<ExitCode> {
    let root = dirs::state_root();
    let rec = must_read(&root, name)?;
    let mut v = serde_json::to_value(&rec)?;
    v["status"] = serde_json::Value::String(crate::run::describe(&rec));
    v["dir"] = serde_json::Value::String(state::vm_dir(&root, name).display().to_string());
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}
