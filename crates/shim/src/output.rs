//! The container's output from the guest console: the console carries the service's output
//! together with kiln-init's `kiln:` lines and the kernel's messages; only the service's
//! lines go on to containerd's stdout FIFO (or log file).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// An output target containerd gave (a FIFO path, or `file://PATH`), shared so the task can
/// close it when the container ends (containerd's readers see EOF then).
#[derive(Clone, Default)]
pub struct Target(Arc<Mutex<Option<File>>>);

impl Target {
    /// Open containerd's stdio target `uri`; an empty one (a detached `ctr run -d`) discards.
    pub fn open(uri: &str) -> std::io::Result<Target> {
        if uri.is_empty() {
            return Ok(Target::default());
        }
        let file = if let Some(path) = uri.strip_prefix("file://") {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?
        } else if uri.contains("://") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("{uri}: only FIFOs and file:// logs are supported"),
            ));
        } else {
            // Read-write: opening a FIFO never blocks this way, whether or not its reader is
            // there yet.
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(Path::new(uri))?
        };
        Ok(Target(Arc::new(Mutex::new(Some(file)))))
    }

    fn write_all(&self, bytes: &[u8]) {
        if let Ok(mut g) = self.0.lock() {
            if let Some(f) = g.as_mut() {
                if f.write_all(bytes).is_err() {
                    // The reader went away: nothing more to write.
                    *g = None;
                }
            }
        }
    }

    /// Write one line (a message of the shim's own, e.g. why the VM failed).
    pub fn write_line(&self, line: &str) {
        self.write_all(format!("{line}\n").as_bytes());
    }

    /// Close it (containerd's reader sees EOF once every writer is closed).
    pub fn close(&self) {
        if let Ok(mut g) = self.0.lock() {
            *g = None;
        }
    }
}

/// Whether a console line (without its line end) is the service's: not a `kiln:` line of
/// kiln-init, not a kernel message (`[    1.234567] ...`).
pub fn is_service_line(line: &str) -> bool {
    if kiln_vm::console::parse_line(line).is_some() || line.starts_with("kiln: ") {
        return false;
    }
    !is_kernel_line(line)
}

fn is_kernel_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((stamp, _)) = rest.split_once(']') else {
        return false;
    };
    let stamp = stamp.trim();
    !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// The console sink: splits into lines and forwards the service's to `target`.
pub struct ServiceFilter {
    target: Target,
    line: Vec<u8>,
}

impl ServiceFilter {
    /// A filter writing to `target`.
    pub fn new(target: Target) -> ServiceFilter {
        ServiceFilter {
            target,
            line: Vec::new(),
        }
    }

    fn emit(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        while line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = String::from_utf8_lossy(&line);
        if is_service_line(&text) {
            line.push(b'\n');
            self.target.write_all(&line);
        } else if let Some(i) = text.find("kiln: ").filter(|i| *i > 0) {
            // Output without a line end of its own, then kiln-init's line on the same line.
            if kiln_vm::console::parse_line(&text[i..]).is_some() {
                self.target.write_all(text[..i].as_bytes());
            }
        }
    }
}

impl Write for ServiceFilter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.emit();
            } else if self.line.len() < 64 * 1024 {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ServiceFilter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            let text = String::from_utf8_lossy(&self.line).into_owned();
            if is_service_line(&text) {
                self.target.write_all(text.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn only_the_services_lines_pass() {
        assert!(is_service_line("hello from OCI"));
        assert!(is_service_line("[not a stamp] text"));
        assert!(!is_service_line("kiln: rc exited with status 3"));
        assert!(!is_service_line("kiln: ready in 12 ms"));
        assert!(!is_service_line("[    0.512345] Run /init as init process"));
    }

    #[test]
    fn the_filter_forwards_service_output_to_the_target() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("out");
        let target = Target::open(&format!("file://{}", path.display())).expect("open");
        {
            let mut f = ServiceFilter::new(target.clone());
            f.write_all(b"[    0.1] kernel\r\nhello\r\nkiln: ready in 3 ms\r\npartial")
                .expect("w");
            f.write_all(b"kiln: rc exited with status 3\r\nbye\r\n")
                .expect("w");
        }
        target.close();
        let mut s = String::new();
        std::fs::File::open(&path)
            .expect("open")
            .read_to_string(&mut s)
            .expect("read");
        assert_eq!(s, "hello\npartialbye\n");
    }
}
