//! Files a recipe's binaries would put where kiln-init mounts a fresh filesystem at boot
//! (`/tmp`, `/run`, ...): in the image, but never seen by the guest.

use kiln_rootfs::elf::Closure;

/// Why the closure of a listed binary cannot be used, when one of its files (the binary at its
/// real path, a library, a link on the way) would be hidden in the guest.
pub(crate) fn in_closure(closure: &Closure) -> Option<String> {
    closure.nodes.iter().find_map(|n| {
        let guest = n.path.display().to_string();
        kiln_recipe::hidden_by_mount(&guest).map(|m| kiln_recipe::hidden_message(&guest, m))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_rootfs::elf::Resolver;
    use std::path::PathBuf;

    #[test]
    fn a_binary_staged_under_tmp_is_named() {
        // A host binary in /tmp (or linked there) is staged at its real path: hidden.
        let d = tempfile::tempdir_in("/tmp").expect("tmp");
        let bin = d.path().join("tool");
        std::fs::copy("/bin/true", &bin).expect("copy /bin/true");
        let r = Resolver::new(std::path::Path::new("/")).expect("resolver");
        let m =
            in_closure(&r.closure(std::slice::from_ref(&bin)).expect("closure")).expect("hidden");
        assert!(
            m.starts_with(&format!("{} would be hidden in the guest", bin.display()))
                && m.contains("fresh tmpfs on /tmp"),
            "{m}"
        );
        let ok = r.closure(&[PathBuf::from("/bin/true")]).expect("closure");
        assert_eq!(in_closure(&ok), None);
    }
}
