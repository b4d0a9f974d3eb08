//! The fleet's errors: one enum, and [`FleetError::is_user_error`] to tell the user's input
//! (exit code 2) from failures (exit code 1).

use std::path::PathBuf;

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The user's input is wrong (a flag, a vm.toml key, a name, a path); the message says
    /// which and what to do.
    #[error("{0}")]
    BadInput(String),
    /// No VM of that name.
    #[error("no VM named `{0}` (see `kiln ps`)")]
    NoSuchVm(String),
    /// A VM record that cannot be read.
    #[error("{}: not a VM record Kiln can read ({reason}); remove it with `kiln rm {name}`", .path.display())]
    BadRecord {
        /// The VM's name.
        name: String,
        /// The record file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The VM did not come up (or ended before it was ready): the message and the console's
    /// last lines.
    #[error("{name} {status}: {reason}{}", tail_text(.tail))]
    NotStarted {
        /// The VM.
        name: String,
        /// Its state as listed (`failed`, `exited (1)`, ...).
        status: String,
        /// Why.
        reason: String,
        /// The console's last lines.
        tail: String,
    },
    /// Building the image failed.
    #[error(transparent)]
    Bake(#[from] kiln_bake::BuildError),
    /// The recipe is wrong.
    #[error(transparent)]
    Recipe(#[from] kiln_recipe::RecipeError),
    /// QEMU, the console or a host port.
    #[error(transparent)]
    Vm(#[from] kiln_vm::VmError),
    /// An I/O error on a named path.
    #[error("{action} {}: {error}", .path.display())]
    Io {
        /// What was being done ("writing", "creating", ...).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error (said in the message, not chained again after it).
        error: std::io::Error,
    },
    /// Anything else, said in a sentence.
    #[error("{0}")]
    Other(String),
}

fn tail_text(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\nLast console lines:\n{tail}")
    }
}

impl FleetError {
    /// Whether the error is the user's input (exit code 2) rather than a failure (1).
    pub fn is_user_error(&self) -> bool {
        match self {
            FleetError::BadInput(_) | FleetError::NoSuchVm(_) | FleetError::Recipe(_) => true,
            FleetError::BadRecord { .. } => true,
            FleetError::Vm(kiln_vm::VmError::PortInUse { .. }) => true,
            FleetError::Bake(b) => b.is_user_error(),
            _ => false,
        }
    }

    /// An [`FleetError::Io`] maker for `map_err`.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |error| FleetError::Io {
            action,
            path,
            error,
        }
    }
}

/// A fleet result.
pub type Result<T, E = FleetError> = std::result::Result<T, E>;
