//! Where Kiln keeps things on the host: the download/image cache, the VM state folder.

use std::path::PathBuf;

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// `$KILN_CACHE_DIR`, `$XDG_CACHE_HOME/kiln`, or `~/.cache/kiln`.
pub fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_CACHE_DIR") {
        return PathBuf::from(p);
    }
    kiln_debpkg::Cache::default_root()
}

/// `$KILN_STATE_DIR`, `$XDG_STATE_HOME/kiln`, `/var/lib/kiln` for root, or `~/.local/state/kiln`.
pub fn state_root() -> PathBuf {
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
    home().join(".local/state/kiln")
}
