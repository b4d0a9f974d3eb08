//! Kiln's own userland programs, built static with musl-gcc from Debian's
//! source tarballs and cached: busybox with only the applets a recipe asks
//! for ([`busybox`], `[root] applets`), and for `[root] dropbear` dropbear
//! without the shared crypto libraries ([`dropbear`]) and the OpenSSH
//! sftp-server it runs ([`sftp_server`]). What the builds share (the
//! cache entry renamed into place under a per-key lock, the build log, the
//! kernel headers musl-gcc sees, the listing and removal of cached builds for
//! `kiln cache prune --builds`) is `build`'s.

use std::io;
use std::path::{Path, PathBuf};

mod build;
pub mod busybox;
pub mod dropbear;
pub mod sftp_server;

pub use build::{remove_build, Built, CachedBuild};

/// The folders under Kiln's cache that hold these builds, one per program.
pub fn cache_folders() -> [&'static str; 3] {
    [
        busybox::BUSYBOX.name,
        dropbear::DROPBEAR.name,
        sftp_server::SFTP_SERVER.name,
    ]
}

/// Every build of Kiln's programs in `cache_root` (see [`CachedBuild`]).
pub fn cached_builds(cache_root: &Path) -> Vec<CachedBuild> {
    [
        &busybox::BUSYBOX,
        &dropbear::DROPBEAR,
        &sftp_server::SFTP_SERVER,
    ]
    .into_iter()
    .flat_map(|p| p.cached_builds(cache_root))
    .collect()
}

/// Errors from building Kiln's busybox or dropbear.
#[derive(Debug, thiserror::Error)]
pub enum UserlandError {
    /// A tool the build needs is not installed.
    #[error("building {what} needs {missing} on PATH: install them with `apt-get install musl-tools bzip2 make patch`")]
    MissingTools {
        /// What was being built.
        what: &'static str,
        /// The missing commands, comma-separated.
        missing: String,
    },
    /// A name that cannot be an applet.
    #[error(
        "`{0}` is not an applet name (letters, digits, `_`, `-`, `[`, `[[`) nor a CONFIG_ symbol"
    )]
    BadName(String),
    /// busybox has no such applet (or option).
    #[error("busybox {} has no applet or option `{name}` (no {symbol} in its configuration): check the spelling; `busybox --list` on a Debian host lists the applets", busybox::VERSION)]
    Unknown {
        /// As the recipe wrote it.
        name: String,
        /// The configuration symbol looked for.
        symbol: String,
    },
    /// A requested symbol did not stay on (a dependency the list lacks).
    #[error("busybox's configuration turned {symbol} (for `{name}`) off: it depends on an option the list lacks; add that option's CONFIG_ name to the list")]
    NotApplied {
        /// As the recipe wrote it.
        name: String,
        /// The configuration symbol.
        symbol: String,
    },
    /// Fetching the source tarball failed.
    #[error(transparent)]
    Fetch(#[from] kiln_debpkg::DebError),
    /// A build step failed.
    #[error("{what} `{step}` failed ({status}); the full log is {log}:\n{tail}")]
    BuildFailed {
        /// What was being built.
        what: &'static str,
        /// The step.
        step: String,
        /// How it ended.
        status: String,
        /// The saved log.
        log: PathBuf,
        /// The last lines of output.
        tail: String,
    },
    /// A filesystem or process operation failed.
    #[error("cannot {action} {path}: {error}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
}

impl UserlandError {
    /// Whether the recipe's list is at fault (a bad or unknown name).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            UserlandError::BadName(_)
                | UserlandError::Unknown { .. }
                | UserlandError::NotApplied { .. }
        )
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UserlandError {
    let path = path.to_path_buf();
    move |error| UserlandError::Io {
        action,
        path,
        error,
    }
}
