//! Booting and supervising one microVM with QEMU: the accelerator probe, the QEMU command line,
//! host port checks, the serial console and its `kiln:` protocol lines, the control channel to
//! kiln-init, QMP, and the launch/ready/stop lifecycle.
//!
//! The pure parts (argv building, console line parsing) are separate from the parts that spawn
//! processes so they can be unit tested without QEMU.

pub mod accel;
pub mod cmdline;
pub mod console;
pub mod front;
pub mod pc;
pub mod ports;
pub mod qemu;
pub mod qmp;
pub mod runner;

pub use accel::{Accel, AccelChoice, AccelProbe};
pub use console::{ConsoleEvent, LineParser};
pub use pc::{PcBoot, PcSerial, PcSpec};
pub use qemu::{
    DriveFormat, DriveSpec, LanSpec, NetSpec, RamBacking, ShareKind, ShareSpec, VmSpec, VportSpec,
};
pub use runner::{Launched, RunPaths, StopOutcome};

use std::path::PathBuf;

/// Errors of the VM layer.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU is not installed.
    #[error("{binary} not found: install QEMU (on Debian: apt-get install qemu-system-x86), or set KILN_QEMU")]
    NoQemu {
        /// The binary looked for.
        binary: String,
    },
    /// A host port of a forward is already in use.
    #[error("host port {addr}:{port}/{proto} is already in use{by}; choose another with -p HOSTPORT:GUESTPORT or stop what holds it")]
    PortInUse {
        /// Host address.
        addr: String,
        /// Host port.
        port: u16,
        /// tcp or udp.
        proto: &'static str,
        /// Who holds it, if known (", by VM NAME").
        by: String,
    },
    /// QEMU exited before the guest was ready.
    #[error("QEMU exited early ({status}); its last output:\n{output}")]
    QemuExited {
        /// Exit status text.
        status: String,
        /// QEMU's stderr and the console's last lines.
        output: String,
    },
    /// The guest did not report ready in time.
    #[error("the guest did not become ready within {seconds} s; it was stopped. Last console lines:\n{tail}")]
    NotReady {
        /// The deadline.
        seconds: u64,
        /// The console's last lines.
        tail: String,
    },
    /// A shared folder needs virtiofsd, which is missing.
    #[error("virtiofsd not found (Debian: apt-get install qemu-system-common, which ships /usr/lib/qemu/virtiofsd), or set KILN_VIRTIOFSD")]
    NoVirtiofsd,
    /// A QMP exchange failed.
    #[error("QMP on {}: {message}", .socket.display())]
    Qmp {
        /// The QMP socket.
        socket: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// An I/O error on a named path.
    #[error("{}: {error}", .path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error (said in the message, not chained again after it).
        error: std::io::Error,
    },
}

impl VmError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> VmError {
        let path = path.into();
        move |error| VmError::Io { path, error }
    }
}

/// The QEMU binary: `$KILN_QEMU` or `qemu-system-x86_64` on PATH.
pub fn qemu_binary() -> String {
    std::env::var("KILN_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

/// Fail early with a clear message when QEMU is missing.
pub fn check_qemu() -> Result<PathBuf, VmError> {
    let bin = qemu_binary();
    find_in_path(&bin).ok_or(VmError::NoQemu { binary: bin })
}

/// Find an executable by name on PATH (or as given, if it contains a slash).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
