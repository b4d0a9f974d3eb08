//! BSD sets: the tarballs a NetBSD or FreeBSD root is made of (`sets = [...]` in kiln.toml),
//! unpacked into the staging tree by GNU tar inside the build sandbox (only the staging folder
//! writable, so a hostile member name or link cannot reach the host). Each path is recorded
//! with the set it came from. Device nodes cannot be made without root and are skipped: the
//! BSDs make /dev at boot (NetBSD's init mounts a tmpfs /dev and runs MAKEDEV; FreeBSD has
//! devfs).

use crate::hooks::{find_sandbox, sandbox};
use crate::{RootfsError, Staging};
use std::path::Path;

/// What unpacking one set did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetReport {
    /// Members extracted.
    pub entries: usize,
    /// Device nodes left out.
    pub skipped_devices: usize,
}

/// Unpack `tarball` into `st`'s root; later sets overwrite earlier ones' files.
pub fn unpack_set(
    st: &mut Staging,
    recipe_dir: &Path,
    tarball: &Path,
    label: &str,
) -> Result<SetReport, RootfsError> {
    let bwrap = find_sandbox()?;
    let root = st.root().to_path_buf();
    let out = sandbox(&bwrap, &root, recipe_dir)
        .args(["--", "tar", "-x", "-p", "-v", "--no-same-owner", "-f"])
        .arg(tarball)
        .arg("-C")
        .arg(&root)
        .output()
        .map_err(|e| RootfsError::NoSandbox(format!("{}: {e}", bwrap.display())))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (devices, other): (Vec<&str>, Vec<&str>) = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains("Exiting with failure status due to previous errors"))
        .partition(|l| l.contains("Cannot mknod"));
    if !other.is_empty() || (!out.status.success() && devices.is_empty()) {
        let detail = if other.is_empty() {
            format!("tar failed ({})", out.status)
        } else {
            other.iter().take(5).copied().collect::<Vec<_>>().join("; ")
        };
        return Err(RootfsError::Set {
            path: tarball.to_path_buf(),
            detail,
        });
    }
    let mut entries = 0;
    for member in String::from_utf8_lossy(&out.stdout).lines() {
        let rel = member.trim_start_matches("./").trim_end_matches('/');
        if rel.is_empty() {
            continue;
        }
        entries += 1;
        st.adopt(
            &Path::new("/").join(rel),
            label,
            &format!("from the set {label}"),
        );
    }
    Ok(SetReport {
        entries,
        skipped_devices: devices.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn tar(dir: &Path, name: &str, args: &[&str]) -> std::path::PathBuf {
        let out = dir.join(name);
        let st = Command::new("tar")
            .arg("-czf")
            .arg(&out)
            .args(args)
            .current_dir(dir)
            .status()
            .expect("tar");
        assert!(st.success());
        out
    }

    #[test]
    fn sets_unpack_in_order_and_stay_inside_the_staging_folder() {
        if crate::hooks::bwrap_binary().is_none() {
            panic!("bubblewrap is missing: run scripts/setup.sh");
        }
        let d = tempfile::tempdir().expect("tmp");
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("etc")).expect("mkdir");
        std::fs::create_dir_all(src.join("bin")).expect("mkdir");
        std::fs::write(src.join("etc/rc"), "base rc\n").expect("w");
        std::fs::write(src.join("bin/sh"), "not really a shell").expect("w");
        let base = tar(&src, "../base.tgz", &["./etc", "./bin"]);
        std::fs::write(src.join("etc/rc"), "etc rc\n").expect("w");
        let etc = tar(&src, "../etc.tgz", &["./etc/rc"]);
        let staging = d.path().join("root");
        let mut st = Staging::new(&staging).expect("staging");
        let r = unpack_set(&mut st, d.path(), &base, "base.tgz").expect("base");
        assert_eq!(r.entries, 4, "etc, etc/rc, bin, bin/sh");
        unpack_set(&mut st, d.path(), &etc, "etc.tgz").expect("etc");
        assert_eq!(
            std::fs::read_to_string(staging.join("etc/rc")).expect("rc"),
            "etc rc\n",
            "a later set wins"
        );
        assert_eq!(
            st.origins()[Path::new("/etc/rc")].reason,
            "from the set base.tgz; from the set etc.tgz"
        );

        // A member that climbs out of the root is refused by tar, and nothing lands outside.
        let evil = d.path().join("evil.tar");
        let st_ok = Command::new("tar")
            .arg("-cf")
            .arg(&evil)
            .arg("--absolute-names")
            .arg(src.join("bin/sh"))
            .arg("--transform")
            .arg("s|.*|../../escaped|")
            .status()
            .expect("tar");
        assert!(st_ok.success());
        let err = unpack_set(&mut st, d.path(), &evil, "evil.tar");
        assert!(err.is_err() || !d.path().join("escaped").exists());
        assert!(!d.path().join("escaped").exists(), "a member escaped");

        let junk = d.path().join("junk.tgz");
        std::fs::write(&junk, "not a tarball").expect("w");
        let err = unpack_set(&mut st, d.path(), &junk, "junk.tgz").expect_err("junk");
        assert!(err.to_string().contains("junk.tgz"), "{err}");
    }
}
