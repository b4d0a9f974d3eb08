//! The VM operations the web server needs, behind one small trait ([`Vms`]) so the handlers
//! have unit tests against a fake, and its implementation on the fleet library, in-process
//! ([`FleetVms`]). The calls block; the server runs them on tokio's blocking pool.

pub use kiln_fleet::ExecOutput;
use kiln_fleet::{ExecRequest, Fleet, FleetError, Row, VmConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a VM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmsError {
    /// No such VM.
    #[error("no VM named `{0}`")]
    NotFound(String),
    /// The request is the user's mistake (bad input, a name or port taken).
    #[error("{0}")]
    Refused(String),
    /// The operation failed.
    #[error("{0}")]
    Failed(String),
}

impl From<FleetError> for VmsError {
    fn from(e: FleetError) -> VmsError {
        match e {
            FleetError::NoSuchVm(n) => VmsError::NotFound(n),
            e if e.is_user_error() => VmsError::Refused(e.to_string()),
            e => VmsError::Failed(e.to_string()),
        }
    }
}

/// The VM operations of the web server.
pub trait Vms: Send + Sync + 'static {
    /// Every VM, sorted by name.
    fn list(&self) -> Result<Vec<Row>, VmsError>;
    /// Boot a VM from its spec (image set) and return once it is ready (or failed).
    fn create(&self, spec: &VmConfig) -> Result<(), VmsError>;
    /// The stored spec of VM `name` (what a start boots again).
    fn spec(&self, name: &str) -> Result<VmConfig, VmsError>;
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
    /// Run a command in running VM `name` to its end, with `call.stdin` as its input.
    fn exec(&self, name: &str, call: &ExecCall) -> Result<ExecOutput, VmsError>;
}

/// A command to run in a VM (`POST /api/vms/NAME/exec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCall {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// `KEY=VALUE` settings on top of rc's environment.
    pub env: Vec<String>,
    /// The working folder in the guest.
    pub cwd: Option<String>,
    /// Its whole input.
    pub stdin: Vec<u8>,
    /// Killed after this long.
    pub timeout: Duration,
}

/// Output kept per stream of an exec (the rest is dropped, `truncated` says so).
pub const EXEC_OUTPUT_LIMIT: usize = 1 << 20;

/// [`Vms`] on the fleet library.
#[derive(Debug)]
pub struct FleetVms(pub Fleet);

impl Vms for FleetVms {
    fn list(&self) -> Result<Vec<Row>, VmsError> {
        Ok(self.0.rows())
    }

    fn create(&self, spec: &VmConfig) -> Result<(), VmsError> {
        let p = self.0.prepare(spec.clone(), &kiln_bake::Quiet)?;
        let accel = self.0.probe_accel(&p)?.accel;
        self.0.start_detached(&p, accel, false)?;
        Ok(())
    }

    fn spec(&self, name: &str) -> Result<VmConfig, VmsError> {
        let rec = self.0.get(name)?;
        let mut cfg = rec.config;
        cfg.image.get_or_insert(rec.image);
        cfg.name = Some(rec.name);
        Ok(cfg)
    }

    fn stop(&self, name: &str) -> Result<(), VmsError> {
        self.0
            .stop(name, Some(std::time::Duration::from_secs(10)))?;
        Ok(())
    }

    fn kill(&self, name: &str) -> Result<(), VmsError> {
        self.0.stop(name, None)?;
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), VmsError> {
        Ok(self.0.remove(name, false)?)
    }

    fn logs(&self, name: &str, max_bytes: u64) -> Result<String, VmsError> {
        let (path, _) = self.0.console_log(name)?;
        tail_file(&path, max_bytes)
            .map_err(|e| VmsError::Failed(format!("reading the console log: {e}")))
    }

    fn console_socket_path(&self, name: &str) -> PathBuf {
        self.0.store().vm_dir(name).join("console.sock")
    }

    fn exec(&self, name: &str, call: &ExecCall) -> Result<ExecOutput, VmsError> {
        let req = ExecRequest {
            argv: call.argv.clone(),
            env: call.env.clone(),
            cwd: call.cwd.clone(),
            tty: None,
        };
        let session = self.0.exec(name, &req)?;
        Ok(session.collect(call.stdin.clone(), EXEC_OUTPUT_LIMIT, call.timeout)?)
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
    fn fleet_errors_map_to_api_errors() {
        assert!(matches!(
            VmsError::from(FleetError::NoSuchVm("a".into())),
            VmsError::NotFound(_)
        ));
        assert!(matches!(
            VmsError::from(FleetError::BadInput("x".into())),
            VmsError::Refused(_)
        ));
        assert!(matches!(
            VmsError::from(FleetError::Other("x".into())),
            VmsError::Failed(_)
        ));
    }
}
