//! kiln-fleet: Kiln's VM manager as a library. It owns the VM spec ([`VmConfig`]: flags,
//! vm.toml, records and the web API alike), the state folder and its records ([`Store`]),
//! admission, planning (recipe or image → [`Plan`] → QEMU), the one loop that watches a
//! running VM ([`watch`]), the supervisor of detached VMs with its restart decision
//! ([`restart::decide`]), stop/kill/remove, `exec` and `cp` in a running guest ([`exec`]),
//! the console hub, the Firecracker/bhyve renderers, and the hand-off to libvirt, Nomad,
//! KubeVirt and Flintlock ([`engines`]). The `kiln` CLI and `kiln serve` are thin clients of
//! [`Fleet`]; system effects the decisions depend on sit behind [`Host`], with a recording
//! fake for unit tests.

pub mod admit;
pub mod as_str;
pub mod backends;
pub mod config;
pub mod engines;
pub mod error;
pub mod exec;
pub mod fleet;
pub mod foreground;
pub mod host;
pub mod hub;
pub mod net;
pub mod ops;
pub mod plan;
pub mod record;
pub mod restart;
pub mod store;
pub mod supervise;
pub mod switch;
pub mod template;
pub mod warm;
pub mod watch;

pub use config::{Drive, Network, Restart, SerialTcp, Share, ShareFs, VmConfig, Vports};
pub use error::{FleetError, Result};
pub use exec::{ExecEvent, ExecInput, ExecOutput, ExecRequest, ExecSession};
pub use fleet::{flag, Fleet, Prepared};
pub use foreground::Foreground;
pub use host::{FakeHost, Host, RealHost};
pub use kiln_wire::Status as ExecStatus;
pub use net::{NetRow, Subnet};
pub use plan::{Image, Plan};
pub use record::{Row, VmRecord, VmState};
pub use store::Store;

use std::path::PathBuf;

/// `$KILN_CACHE_DIR`, `$XDG_CACHE_HOME/kiln`, or `~/.cache/kiln`.
pub fn default_cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_CACHE_DIR") {
        return PathBuf::from(p);
    }
    kiln_debpkg::Cache::default_root()
}

/// `$KILN_STATE_DIR`, `$XDG_STATE_HOME/kiln`, `/var/lib/kiln` for root, or
/// `~/.local/state/kiln`.
pub fn default_state_root() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_STATE_DIR") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(p).join("kiln");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/kiln");
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(".local/state/kiln")
}
