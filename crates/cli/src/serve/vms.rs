//! The VM operations the web server needs, behind one small trait ([`Vms`]), and the
//! implementation that drives the lifecycle through the `kiln` binary itself
//! ([`CliVms`]: `kiln run --detach`, `kiln ps --json`, `kiln stop`, ...).
//!
//! Going through the binary keeps the server independent of how the lifecycle stores its
//! records: the CLI is the contract. The calls are blocking; the server runs them on tokio's
//! blocking pool.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// One VM as the lifecycle reports it (`kiln ps --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRow {
    /// Unique name.
    pub name: String,
    /// `running`, `exited`, ... as the lifecycle says.
    pub state: String,
    /// The pid whose CPU and memory use is the VM's (QEMU).
    #[serde(default)]
    pub pid: Option<u32>,
    /// Seconds since start.
    #[serde(default)]
    pub uptime_s: u64,
    /// vCPUs.
    #[serde(default)]
    pub cpus: u32,
    /// MiB.
    #[serde(default)]
    pub memory: u32,
    /// Port forwards as `[addr:]host:guest[/proto]`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// The image folder it boots.
    #[serde(default)]
    pub image: String,
    /// kvm or tcg.
    #[serde(default)]
    pub accel: String,
    /// Run in the foreground by a `kiln run` (its console is that terminal).
    #[serde(default)]
    pub foreground: bool,
}

/// A validated request to boot a VM (what `kiln run --detach` takes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The recipe or image folder (already resolved inside the known folders).
    pub target: PathBuf,
    /// VM name.
    pub name: String,
    /// vCPUs, or the recipe's.
    pub cpus: Option<u32>,
    /// MiB, or the recipe's.
    pub memory: Option<u32>,
    /// Port forwards (validated syntax); empty means the recipe's.
    pub ports: Vec<String>,
    /// Shared folder `HOST:GUEST`, when the lifecycle supports it.
    pub share: Option<String>,
    /// Seconds to wait for readiness, or the recipe's.
    pub ready_timeout: Option<u64>,
}

/// Why a VM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmsError {
    /// No such VM.
    #[error("no VM named `{0}`")]
    NotFound(String),
    /// The lifecycle refused the request as bad input (exit code 2).
    #[error("{0}")]
    Refused(String),
    /// The operation failed.
    #[error("{0}")]
    Failed(String),
}

/// The VM operations of the web server.
pub trait Vms: Send + Sync + 'static {
    /// Every VM the lifecycle knows, sorted by name.
    fn list(&self) -> Result<Vec<VmRow>, VmsError>;
    /// Boot a VM and return once it is ready (or failed).
    fn create(&self, launch: &Launch) -> Result<(), VmsError>;
    /// Graceful stop: the guest powers off, then QMP quit, then a kill.
    fn stop(&self, name: &str) -> Result<(), VmsError>;
    /// Immediate kill.
    fn kill(&self, name: &str) -> Result<(), VmsError>;
    /// Forget a VM that is not running (its record, sockets and logs).
    fn remove(&self, name: &str) -> Result<(), VmsError>;
    /// The console log (the last `max_bytes` of it).
    fn logs(&self, name: &str, max_bytes: u64) -> Result<String, VmsError>;
    /// The unix socket the VM's serial console is served on.
    fn console_socket_path(&self, name: &str) -> PathBuf;
    /// Whether `create` can share a host folder with the guest.
    fn supports_share(&self) -> bool;
}

/// [`Vms`] through the `kiln` binary, with the state folder given in `KILN_STATE_DIR`.
#[derive(Debug)]
pub struct CliVms {
    exe: PathBuf,
    state: PathBuf,
    share: std::sync::OnceLock<bool>,
}

impl CliVms {
    /// Drive `exe` (normally `std::env::current_exe()`) on the state folder `state`.
    pub fn new(exe: PathBuf, state: PathBuf) -> CliVms {
        CliVms {
            exe,
            state,
            share: std::sync::OnceLock::new(),
        }
    }

    fn vm_dir(&self, name: &str) -> PathBuf {
        self.state.join("vms").join(name)
    }

    fn kiln(&self, args: &[&str]) -> Result<Output, VmsError> {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .env("KILN_STATE_DIR", &self.state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; a `kiln` we started dies with the server instead
        // of finishing a half-abandoned request (its VM, if any, is detached and recorded).
        unsafe {
            use std::os::unix::process::CommandExt;
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        c.output()
            .map_err(|e| VmsError::Failed(format!("running {}: {e}", self.exe.display())))
    }

    /// Run a subcommand on VM `name`, mapping "no VM named" and exit code 2 to errors.
    fn on_vm(&self, args: &[&str], name: &str) -> Result<Output, VmsError> {
        let o = self.kiln(args)?;
        if o.status.success() {
            return Ok(o);
        }
        let msg = error_text(&o);
        if msg.contains("no VM named") {
            return Err(VmsError::NotFound(name.to_string()));
        }
        if o.status.code() == Some(2) {
            return Err(VmsError::Refused(msg));
        }
        Err(VmsError::Failed(msg))
    }

    fn has_subcommand(&self, sub: &str) -> bool {
        self.kiln(&[sub, "--help"])
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

/// kiln's error lines, without the `kiln: error: ` prefix.
fn error_text(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>();
    let start = lines
        .iter()
        .position(|l| l.starts_with("kiln: error: "))
        .unwrap_or(lines.len().saturating_sub(12));
    lines[start..]
        .join("\n")
        .trim_start_matches("kiln: error: ")
        .to_string()
}

impl Vms for CliVms {
    fn list(&self) -> Result<Vec<VmRow>, VmsError> {
        let o = self.kiln(&["ps", "--json"])?;
        if !o.status.success() {
            return Err(VmsError::Failed(error_text(&o)));
        }
        let mut rows: Vec<VmRow> = serde_json::from_slice(&o.stdout)
            .map_err(|e| VmsError::Failed(format!("reading `kiln ps --json`: {e}")))?;
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }

    fn create(&self, l: &Launch) -> Result<(), VmsError> {
        let mut args: Vec<String> = vec!["run".into(), "--detach".into(), "--name".into()];
        args.push(l.name.clone());
        if let Some(c) = l.cpus {
            args.extend(["--cpus".into(), c.to_string()]);
        }
        if let Some(m) = l.memory {
            args.extend(["--memory".into(), m.to_string()]);
        }
        for p in &l.ports {
            args.extend(["-p".into(), p.clone()]);
        }
        if let Some(t) = l.ready_timeout {
            args.extend(["--ready-timeout".into(), t.to_string()]);
        }
        if let Some(s) = &l.share {
            args.extend(["--share".into(), s.clone()]);
        }
        args.push(l.target.to_string_lossy().into_owned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = self.kiln(&refs)?;
        if o.status.success() {
            Ok(())
        } else if o.status.code() == Some(2) {
            Err(VmsError::Refused(error_text(&o)))
        } else {
            Err(VmsError::Failed(error_text(&o)))
        }
    }

    fn stop(&self, name: &str) -> Result<(), VmsError> {
        self.on_vm(&["stop", name], name).map(drop)
    }

    fn kill(&self, name: &str) -> Result<(), VmsError> {
        if self.has_subcommand("kill") {
            self.on_vm(&["kill", name], name).map(drop)
        } else {
            // Before `kiln kill` exists: a stop with no grace period.
            self.on_vm(&["stop", "--timeout", "0", name], name)
                .map(drop)
        }
    }

    fn remove(&self, name: &str) -> Result<(), VmsError> {
        if self.has_subcommand("rm") {
            self.on_vm(&["rm", name], name).map(drop)
        } else {
            // Before `kiln rm` exists: `kiln stop` of an exited VM forgets its record.
            self.on_vm(&["stop", "--timeout", "0", name], name)
                .map(drop)
        }
    }

    fn logs(&self, name: &str, max_bytes: u64) -> Result<String, VmsError> {
        let dir = self.vm_dir(name);
        if !dir.join("record.json").is_file() && !dir.is_dir() {
            return Err(VmsError::NotFound(name.to_string()));
        }
        tail_file(&dir.join("console.log"), max_bytes)
            .map_err(|e| VmsError::Failed(format!("reading the console log: {e}")))
    }

    fn console_socket_path(&self, name: &str) -> PathBuf {
        self.vm_dir(name).join("console.sock")
    }

    fn supports_share(&self) -> bool {
        *self.share.get_or_init(|| {
            self.kiln(&["run", "--help"])
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("--share"))
                .unwrap_or(false)
        })
    }
}

/// The last `max` bytes of a file ("" when it does not exist), cut at a line start.
pub fn tail_file(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    if start > 0 {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            buf.drain(..=i);
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_cuts_at_a_line_start() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("log");
        std::fs::write(&p, "first line\nsecond\nthird\n").expect("w");
        assert_eq!(tail_file(&p, 10).expect("tail"), "third\n");
        assert_eq!(
            tail_file(&p, 1000).expect("tail"),
            "first line\nsecond\nthird\n"
        );
        assert_eq!(tail_file(&d.path().join("none"), 10).expect("tail"), "");
    }

    #[test]
    fn ps_rows_parse_with_missing_fields() {
        let rows: Vec<VmRow> = serde_json::from_str(
            r#"[{"name":"a","state":"running","pid":7,"uptime_s":3,"cpus":1,"memory":128,
                 "ports":["8080:80"],"image":"/x","accel":"tcg","extra":true},
                {"name":"b","state":"exited"}]"#,
        )
        .expect("parse");
        assert_eq!(rows[0].pid, Some(7));
        assert_eq!(rows[1].pid, None);
        assert_eq!(rows[1].ports, Vec::<String>::new());
    }
}
