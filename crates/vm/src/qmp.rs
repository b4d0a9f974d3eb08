//! A small QMP client: connect, negotiate capabilities, run a command, read its answer.

use crate::VmError;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An open QMP session.
pub struct Qmp {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect to QEMU's QMP socket and leave negotiation mode.
    pub fn connect(socket: &Path) -> Result<Qmp, VmError> {
        let stream = UnixStream::connect(socket).map_err(VmError::io(socket))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(VmError::io(socket))?;
        let writer = stream.try_clone().map_err(VmError::io(socket))?;
        let mut q = Qmp {
            socket: socket.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = q.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(q.err(format!("unexpected greeting {greeting}")));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn err(&self, message: String) -> VmError {
        VmError::Qmp {
            socket: self.socket.clone(),
            message,
        }
    }

    fn read_message(&mut self) -> Result<Value, VmError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| self.err(e.to_string()))?;
        if n == 0 {
            return Err(self.err("connection closed".into()));
        }
        serde_json::from_str(&line).map_err(|e| self.err(format!("bad JSON {line:?}: {e}")))
    }

    /// Run a command and return its `return` value (events in between are skipped).
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, VmError> {
        let mut msg = serde_json::json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| self.err(e.to_string()))?;
        loop {
            let v = self.read_message()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(self.err(format!("{command}: {e}")));
            }
        }
    }

    /// `query-status`'s `status` field (e.g. "running", "inmigrate", "paused").
    pub fn status(&mut self) -> Result<String, VmError> {
        let r = self.execute("query-status", None)?;
        Ok(r.get("status")
            .and_then(|s| s.as_str())
            .unwrap_or("unknown")
            .to_string())
    }

    /// Set migration capabilities and parameters for saving or restoring: `x-ignore-shared`
    /// (a file-backed RAM is not copied: the template's RAM file is the RAM) and no bandwidth
    /// limit (the default 128 MiB/s makes a save ten times slower).
    fn prepare_migration(&mut self, ignore_shared: bool) -> Result<(), VmError> {
        self.execute(
            "migrate-set-capabilities",
            Some(serde_json::json!({"capabilities": [
                {"capability": "x-ignore-shared", "state": ignore_shared}
            ]})),
        )?;
        self.execute(
            "migrate-set-parameters",
            Some(serde_json::json!({"max-bandwidth": 1u64 << 40})),
        )?;
        Ok(())
    }

    /// Pause the guest and save it to `uri` (QEMU 7.2: `exec:CMD` writing stdin somewhere);
    /// returns when the migration has completed (the guest stays paused).
    pub fn save(
        &mut self,
        uri: &str,
        ignore_shared: bool,
        timeout: Duration,
    ) -> Result<(), VmError> {
        self.prepare_migration(ignore_shared)?;
        self.execute("stop", None)?;
        self.execute("migrate", Some(serde_json::json!({ "uri": uri })))?;
        self.poll("saving the VM", timeout, |q| {
            let r = q.execute("query-migrate", None)?;
            match r.get("status").and_then(|s| s.as_str()).unwrap_or("") {
                "completed" => Ok(Some(())),
                "failed" | "cancelled" => Err(q.err(format!("saving the VM failed: {r}"))),
                _ => Ok(None),
            }
        })
    }

    /// Ask `check` until it says done (`Some`), an error, or `timeout` (an error naming `what`).
    fn poll<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&mut Qmp) -> Result<Option<T>, VmError>,
    ) -> Result<T, VmError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(v) = check(self)? {
                return Ok(v);
            }
            if std::time::Instant::now() > deadline {
                return Err(self.err(format!("{what} took over {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Restore a guest started with `-S -incoming defer` from `uri` and let it run (a `cont`
    /// sent while the state is still coming in is ignored: wait for it to land first).
    pub fn restore(
        &mut self,
        uri: &str,
        ignore_shared: bool,
        timeout: Duration,
    ) -> Result<(), VmError> {
        self.prepare_migration(ignore_shared)?;
        self.execute("migrate-incoming", Some(serde_json::json!({ "uri": uri })))?;
        self.poll("restoring the VM", timeout, |q| {
            match q.status()?.as_str() {
                "running" => Ok(Some(())),
                "inmigrate" => Ok(None),
                "paused" | "prelaunch" | "postmigrate" => q.cont().map(Some),
                other => Err(q.err(format!("restoring the VM: status {other}"))),
            }
        })
    }

    /// Let a paused guest run again.
    pub fn cont(&mut self) -> Result<(), VmError> {
        self.execute("cont", None).map(drop)
    }

    /// Take the guest's network link down or up (`set_link`): while it is down, QEMU drops
    /// what either side sends and the guest sees no carrier. A template is saved with its link
    /// down, and a clone's comes up only once the guest has its fresh entropy and name.
    pub fn set_link(&mut self, netdev: &str, up: bool) -> Result<(), VmError> {
        self.execute(
            "set_link",
            Some(serde_json::json!({ "name": netdev, "up": up })),
        )
        .map(drop)
    }

    /// Ask QEMU to exit now.
    pub fn quit(&mut self) -> Result<(), VmError> {
        // QEMU may close the socket before answering; both mean it is going away.
        match self.execute("quit", None) {
            Ok(_) => Ok(()),
            Err(VmError::Qmp { message, .. }) if message.contains("closed") => Ok(()),
            Err(e) => Err(e),
        }
    }
}
