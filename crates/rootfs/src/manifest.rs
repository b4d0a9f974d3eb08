//! The file list of a built root: every path with its kind, size, owner, source and reason.

use crate::RootfsError;
use crate::Staging;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The type of a manifest entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// One path of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Guest path.
    pub path: String,
    /// Type.
    pub kind: FileKind,
    /// Size in bytes (files; link target length for symlinks).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner's user id in the guest (root's, 0, unless a base image says otherwise).
    #[serde(skip_serializing_if = "is_zero", default)]
    pub uid: u32,
    /// Owner's group id in the guest.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub gid: u32,
    /// Symlink target.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target: Option<String>,
    /// Where it came from.
    pub source: String,
    /// Why it is there.
    pub reason: String,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Walk the finished staging tree (after hooks) and describe every path, using the recorded
/// origins and owners; paths nobody recorded were made by a build hook.
pub fn describe(st: &Staging) -> Result<Vec<FileEntry>, RootfsError> {
    let staging = st.root();
    let (origins, owners) = (st.origins(), st.owners());
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(staging)
        .min_depth(1)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| RootfsError::Io {
            path: e.path().unwrap_or(staging).to_path_buf(),
            error: e.into(),
        })?;
        let rel = entry.path().strip_prefix(staging).unwrap_or(entry.path());
        let guest = Path::new("/").join(rel);
        let meta = entry
            .path()
            .symlink_metadata()
            .map_err(RootfsError::io(entry.path()))?;
        let ft = meta.file_type();
        let (kind, target) = if ft.is_symlink() {
            let t = std::fs::read_link(entry.path()).map_err(RootfsError::io(entry.path()))?;
            (FileKind::Symlink, Some(t.display().to_string()))
        } else if ft.is_dir() {
            (FileKind::Dir, None)
        } else {
            (FileKind::File, None)
        };
        let (source, reason) = match origins.get(&guest) {
            Some(o) => (o.source.clone(), o.reason.clone()),
            None if kind == FileKind::Dir => ("kiln".into(), "parent folder".into()),
            None => ("postinst".into(), "made by a build hook".into()),
        };
        let (uid, gid) = owners.get(&guest).copied().unwrap_or((0, 0));
        out.push(FileEntry {
            path: guest.display().to_string(),
            kind,
            size: if kind == FileKind::Dir { 0 } else { meta.len() },
            mode: meta.permissions().mode() & 0o7777,
            uid,
            gid,
            target,
            source,
            reason,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Staging;

    #[test]
    fn unrecorded_files_are_attributed_to_hooks() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = Staging::new(d.path()).expect("staging");
        s.write_file(
            Path::new("/etc/rc"),
            b"exec sh\n",
            0o755,
            "recipe etc/rc",
            "entry script",
        )
        .expect("w");
        std::fs::write(d.path().join("etc/by-hook"), "x").expect("w");
        s.set_owner(Path::new("/etc"), 33, 34).expect("owner");
        let list = describe(&s).expect("describe");
        let rc = list.iter().find(|e| e.path == "/etc/rc").expect("rc");
        assert_eq!((rc.kind, rc.size, rc.mode), (FileKind::File, 8, 0o755));
        assert_eq!((rc.uid, rc.gid), (0, 0));
        let json = serde_json::to_string(rc).expect("json");
        assert!(!json.contains("uid"), "root's owner is left out: {json}");
        assert_eq!(rc.reason, "entry script");
        let h = list
            .iter()
            .find(|e| e.path == "/etc/by-hook")
            .expect("hook file");
        assert_eq!(h.reason, "made by a build hook");
        let etc = list.iter().find(|e| e.path == "/etc").expect("etc");
        assert_eq!((etc.kind, etc.uid, etc.gid), (FileKind::Dir, 33, 34));
        let back: FileEntry =
            serde_json::from_str(&serde_json::to_string(etc).expect("json")).expect("parse");
        assert_eq!(&back, etc);
    }
}
