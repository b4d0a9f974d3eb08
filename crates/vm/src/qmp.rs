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
