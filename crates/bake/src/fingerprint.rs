//! The build fingerprint: a hash of every input of an image, so an unchanged recipe is not
//! rebuilt.

use crate::{io, BuildError};
use kiln_recipe::Recipe;
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Hash the recipe folder's contents, the kernel and busybox identities, kiln-init, the listed
/// host binaries and files (by size and mtime), and SOURCE_DATE_EPOCH.
#[cfg(test)]
pub fn compute(
    recipe: &Recipe,
    kernel_sha: &str,
    busybox: Option<&str>,
    init: &Path,
) -> Result<String, BuildError> {
    compute_with(recipe, kernel_sha, busybox, init, "")
}

/// [`compute`] plus `extra`: the package set's identity, the image variant (traced, another
/// index) and anything else that changes the result.
pub fn compute_with(
    recipe: &Recipe,
    kernel_sha: &str,
    busybox: Option<&str>,
    init: &Path,
    extra: &str,
) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    h.update(format!("extra {extra}\n"));
    h.update(concat!("kiln ", env!("CARGO_PKG_VERSION"), "\n"));
    // A rebuilt kiln may assemble differently: its identity (size, mtime) is an input too.
    if let Ok(m) = std::env::current_exe().and_then(std::fs::metadata) {
        h.update(format!("exe {} {}\n", m.len(), m.mtime()));
    }
    h.update(format!("kernel {kernel_sha}\nbusybox {busybox:?}\n"));
    h.update(format!(
        "epoch {:?}\n",
        std::env::var("SOURCE_DATE_EPOCH").ok()
    ));
    let init_bytes = std::fs::read(init).map_err(io(init))?;
    h.update(format!(
        "init {}\n",
        hex::encode(Sha256::digest(&init_bytes))
    ));
    for entry in walkdir::WalkDir::new(&recipe.dir).sort_by_file_name() {
        let entry = entry.map_err(|e| BuildError::Io {
            path: e.path().unwrap_or(&recipe.dir).to_path_buf(),
            error: e.into(),
        })?;
        let rel = entry
            .path()
            .strip_prefix(&recipe.dir)
            .unwrap_or(entry.path());
        let meta = entry.path().symlink_metadata().map_err(io(entry.path()))?;
        h.update(format!("{}\0{:o}\0", rel.display(), meta.mode()));
        if meta.file_type().is_symlink() {
            let t = std::fs::read_link(entry.path()).map_err(io(entry.path()))?;
            h.update(t.as_os_str().as_encoded_bytes());
        } else if meta.is_file() {
            let data = std::fs::read(entry.path()).map_err(io(entry.path()))?;
            h.update(Sha256::digest(&data));
        }
        h.update(b"\n");
    }
    let cfg = &recipe.config;
    for p in cfg.root.binaries.iter().chain(cfg.root.files.iter()) {
        let host = kiln_recipe::split_file_spec(p.get_ref()).0;
        match std::fs::metadata(host) {
            Ok(m) => h.update(format!("host {host} {} {}\n", m.len(), m.mtime())),
            Err(_) => h.update(format!("host {host} missing\n")),
        }
    }
    Ok(hex::encode(h.finalize()))
}
