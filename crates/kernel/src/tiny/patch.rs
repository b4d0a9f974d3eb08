//! Kiln's own kernel patches, applied without touching the source tree.
//!
//! The source (Debian's unpacked tarball, or a tree the user named) is shared
//! and never modified. A patch is applied to copies of the files it touches,
//! placed at the same paths in the object folder (`O=`): kbuild's rules name
//! sources relative to the object folder and find them there before looking
//! in the source tree (`VPATH := $(srctree)`), so the copies are compiled
//! instead of the originals.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

use super::{io_err, TinyError};

/// A patch Kiln applies to every tiny kernel: a name and a unified diff with
/// `a/` and `b/` prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patch {
    /// The file name in `crates/kernel/patches/`.
    pub name: &'static str,
    /// The diff.
    pub text: &'static str,
}

/// The patch that caps virtio-mmio rings at 128 entries (`virtio_mmio.max_ring=`; 0 lifts
/// the cap): QEMU offers 1024 and virtio-console fills each receive queue with a page per
/// entry, 4 MiB a port.
pub const SMALL_RINGS_PATCH: &str = "virtio-mmio-max-ring.patch";

/// The patch that adds `lapic_timer_period=` (APIC bus clocks per jiffy): with it the kernel
/// uses the local APIC timer, so an idle guest is tickless, without calibrating the timer
/// against the PIT.
pub const LAPIC_TIMER_PERIOD_PATCH: &str = "x86-lapic-timer-period.patch";

/// The patch that lets `page_reporting.page_reporting_order=` stand (6.1 overwrote it with
/// 2 MiB blocks when the balloon driver registered, which a guest of a few MiB never has free).
pub const PAGE_REPORTING_ORDER_PATCH: &str = "page-reporting-order-param.patch";

/// Every patch, in the order applied. They are part of each kernel's cache key.
pub const PATCHES: &[Patch] = &[
    Patch {
        name: SMALL_RINGS_PATCH,
        text: include_str!("../../patches/virtio-mmio-max-ring.patch"),
    },
    // Page-aligned text, rodata and bss when there is no page table isolation or memory
    // encryption: the image takes MiBs less of the guest's memory.
    Patch {
        name: "x86-page-aligned-sections.patch",
        text: include_str!("../../patches/x86-page-aligned-sections.patch"),
    },
    Patch {
        name: LAPIC_TIMER_PERIOD_PATCH,
        text: include_str!("../../patches/x86-lapic-timer-period.patch"),
    },
    Patch {
        name: PAGE_REPORTING_ORDER_PATCH,
        text: include_str!("../../patches/page-reporting-order-param.patch"),
    },
];

/// The source-relative paths a unified diff changes (its `+++ b/PATH` lines).
/// Refuses absolute paths, `..` and new or deleted files (`/dev/null`).
pub fn targets(patch: &Patch) -> Result<Vec<PathBuf>, TinyError> {
    let bad = |reason: String| TinyError::BadPatch {
        patch: patch.name.to_string(),
        reason,
    };
    let mut out = Vec::new();
    for line in patch.text.lines() {
        let Some(rest) = line.strip_prefix("+++ ") else {
            continue;
        };
        let path = rest.split('\t').next().unwrap_or(rest).trim();
        let rel = path
            .strip_prefix("b/")
            .ok_or_else(|| bad(format!("`{line}`: expected a path starting with b/")))?;
        let rel = PathBuf::from(rel);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(bad(format!("`{line}`: the path must stay inside the tree")));
        }
        if !out.contains(&rel) {
            out.push(rel);
        }
    }
    if out.is_empty() {
        return Err(bad("it changes no file (no `+++ b/PATH` line)".into()));
    }
    Ok(out)
}

/// Apply `patch` for a build of `tree` in the object folder `obj`: copy the
/// files it changes from `tree` to the same paths under `obj`, then run
/// `patch -p1` there. A patch that does not apply fails with patch's output.
pub fn apply(tree: &Path, obj: &Path, patch: &Patch) -> Result<(), TinyError> {
    for rel in targets(patch)? {
        let from = tree.join(&rel);
        let to = obj.join(&rel);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        std::fs::copy(&from, &to).map_err(io_err("copy the file to patch", &from))?;
    }
    let file = obj.join(format!(".kiln-{}", patch.name));
    std::fs::write(&file, patch.text).map_err(io_err("write", &file))?;
    let out = Command::new("patch")
        .args([
            "-p1",
            "--batch",
            "--forward",
            "--no-backup-if-mismatch",
            "-d",
        ])
        .arg(obj)
        .arg("-i")
        .arg(&file)
        .output()
        .map_err(io_err("run patch in", obj))?;
    let _ = std::fs::remove_file(&file);
    if out.status.success() {
        Ok(())
    } else {
        Err(TinyError::BadPatch {
            patch: patch.name.to_string(),
            reason: format!(
                "it does not apply to {} ({}): {}{}",
                tree.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIG: &str = "one\ntwo\nthree\n";

    fn diff() -> &'static str {
        "--- a/d/f.c\n+++ b/d/f.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n"
    }

    #[test]
    fn kilns_patches_name_their_files() {
        for p in PATCHES {
            let t = targets(p).expect("valid patch");
            assert!(t.iter().all(|p| p.extension().is_some()), "{t:?}");
        }
    }

    #[test]
    fn applies_to_a_copy_in_the_object_folder_and_leaves_the_tree_alone() {
        let tree = tempfile::tempdir().expect("tmp");
        let obj = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tree.path().join("d")).expect("mkdir");
        std::fs::write(tree.path().join("d/f.c"), ORIG).expect("write");
        let p = Patch {
            name: "t.patch",
            text: diff(),
        };
        apply(tree.path(), obj.path(), &p).expect("applies");
        assert_eq!(
            std::fs::read_to_string(obj.path().join("d/f.c")).expect("read"),
            "one\nTWO\nthree\n"
        );
        assert_eq!(
            std::fs::read_to_string(tree.path().join("d/f.c")).expect("read"),
            ORIG
        );
        assert!(!obj.path().join(".kiln-t.patch").exists());
    }

    #[test]
    fn a_patch_that_does_not_apply_is_refused_with_its_name() {
        let tree = tempfile::tempdir().expect("tmp");
        let obj = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tree.path().join("d")).expect("mkdir");
        std::fs::write(tree.path().join("d/f.c"), "other\ncontent\n").expect("write");
        let p = Patch {
            name: "t.patch",
            text: diff(),
        };
        let e = apply(tree.path(), obj.path(), &p).expect_err("refused");
        let msg = e.to_string();
        assert!(
            msg.contains("t.patch") && msg.contains("does not apply"),
            "{msg}"
        );
    }

    #[test]
    fn paths_leaving_the_tree_are_refused() {
        for text in [
            "+++ /etc/passwd\n",
            "+++ b/../x.c\n",
            "+++ b//abs.c\n",
            "no diff here\n",
        ] {
            let p = Patch { name: "x", text };
            assert!(targets(&p).is_err(), "{text}");
        }
    }
}
