//! `containerd-shim-kiln-v2`: a containerd runtime (shim v2, on the `containerd-shim` crate's
//! synchronous flavour) that runs each container as a Kiln microVM. Thin glue: the bundle's
//! rootfs and runtime spec become a recipe (`kiln_bake::oci::rootfs_recipe_text`, `from =
//! "dir:ROOTFS"`), kiln-bake builds it into the bundle, kiln-fleet prepares it and keeps it as
//! a foreground VM of this shim process; the service's console lines go to containerd's stdout
//! FIFO, etc/rc's status (`kiln: rc exited with status N`) is the task's exit status, and a
//! kill is a graceful stop (SIGKILL: a forced one). containerd names the runtime
//! `io.containerd.kiln.v2` and finds this binary on its PATH.

mod mount;
mod output;
mod spec;
mod task;

use containerd_shim as shim;

fn main() {
    // QEMU is this process's child, waited for by kiln-fleet: the crate must not reap it.
    let config = shim::Config {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    shim::run::<task::Service>("io.containerd.kiln.v2", Some(config));
}
