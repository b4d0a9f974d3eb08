//! Where Kiln keeps things on the host (the fleet library decides; see `kiln_fleet`), and the
//! fleet of this host's state folder.

pub use kiln_fleet::{default_cache_root as cache_root, default_state_root as state_root};

/// The fleet of the state folder, supervisors started as this `kiln __supervise NAME`.
pub fn fleet() -> anyhow::Result<kiln_fleet::Fleet> {
    Ok(kiln_fleet::Fleet::new(state_root(), cache_root())?)
}
