//! Root filesystem assembly: the staging tree a recipe becomes before it is packed.
//!
//! - [`elf`]: the shared-library closure of host binaries (PT_INTERP, DT_NEEDED, RPATH/RUNPATH,
//!   ld.so.conf), symlinks kept as symlinks.
//! - [`stage`]: writing into the staging folder without ever following a symlink out of it, and
//!   remembering why each file is there.
//! - [`hooks`]: running `postinst/*.sh` in a sandbox where only the staging folder is writable.
//! - [`manifest`]: the list of every file in the result with its size, source and reason.
//! - [`packages`]: a recipe's unpacked Debian packages merged into one sysroot (merged `/usr`).
//! - [`index`]: the index of files to keep from the packages (copy-binlib format, globs).
//! - [`sets`]: BSD sets (tarballs) unpacked into the staging tree inside the build sandbox.

pub mod elf;
pub mod hooks;
pub mod index;
pub mod manifest;
pub mod packages;
pub mod sets;
pub mod stage;

#[cfg(test)]
mod proptests;

pub use manifest::{FileEntry, FileKind};
pub use stage::Staging;

use std::path::PathBuf;

/// Errors of root filesystem assembly.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The shared-library closure failed.
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
    /// The index of files to keep is not usable.
    #[error(transparent)]
    Index(#[from] index::IndexError),
    /// A path inside the staging tree is not usable.
    #[error("staging {}: {message}", .path.display())]
    Staging {
        /// The guest path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Hooks cannot be confined, so they are not run.
    #[error("cannot sandbox build hooks: {0}. Kiln refuses to run postinst hooks unconfined; install bubblewrap (apt-get install bubblewrap) and make sure unprivileged user namespaces are allowed, or remove the postinst/ folder")]
    NoSandbox(String),
    /// A hook exited non-zero.
    #[error("build hook {} failed ({status}); its last output:\n{output}", .hook.display())]
    HookFailed {
        /// The hook script.
        hook: PathBuf,
        /// Exit status text.
        status: String,
        /// The last lines it printed.
        output: String,
    },
    /// A hook ran past its time limit and was killed.
    #[error("build hook {} was still running after its time limit of {limit} s and was killed with everything it started (raise hook_timeout in kiln.toml if it needs longer); its last output:\n{output}", .hook.display())]
    HookTimedOut {
        /// The hook script.
        hook: PathBuf,
        /// The limit, in seconds (`hook_timeout`).
        limit: u64,
        /// The last lines it printed.
        output: String,
    },
    /// A BSD set could not be unpacked.
    #[error("set {}: {detail}; check that it is a tarball (.tgz, .txz, .tar) of the release's sets", .path.display())]
    Set {
        /// The tarball.
        path: PathBuf,
        /// tar's complaint.
        detail: String,
    },
    /// An I/O error on a named path.
    // The OS error is in the message, not a `source` (it would be printed twice with causes).
    #[error("{}: {error}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

impl RootfsError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RootfsError {
        let path = path.into();
        move |error| RootfsError::Io { path, error }
    }
}
