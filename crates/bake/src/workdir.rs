//! Where a build may write: the output folder it replaces must be an image folder (or empty).

use crate::{BuildError, MANIFEST};
use std::path::Path;

/// Refuse to build into `out_dir` when it exists and is not an image folder Kiln made (nor an
/// empty folder): the swap into place would delete what is there.
pub(crate) fn check_replaceable(out_dir: &Path) -> Result<(), BuildError> {
    let Ok(meta) = std::fs::symlink_metadata(out_dir) else {
        return Ok(());
    };
    let is_image = meta.is_dir() && out_dir.join(MANIFEST).is_file();
    let is_empty =
        meta.is_dir() && std::fs::read_dir(out_dir).is_ok_and(|mut d| d.next().is_none());
    if is_image || is_empty {
        return Ok(());
    }
    let message = if !meta.is_dir() {
        "exists and is not a folder; Kiln writes an image folder here and replaces only image \
         folders it made: choose another output (-o) or remove it yourself"
    } else {
        "is a folder that is not a Kiln image (no manifest.json); Kiln replaces only image folders \
         it made, so its contents are not deleted: choose another output (-o) or empty it yourself"
    };
    Err(BuildError::BadImage {
        path: out_dir.to_path_buf(),
        message: message.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_image_folders_and_empty_ones_are_replaced() {
        let d = tempfile::tempdir().expect("tmp");
        let out = d.path().join("img");
        check_replaceable(&out).expect("nothing there");
        std::fs::create_dir(&out).expect("mkdir");
        check_replaceable(&out).expect("empty folder");
        std::fs::write(out.join("notes.txt"), "mine").expect("w");
        let e = check_replaceable(&out).expect_err("someone's folder");
        assert!(
            e.to_string()
                .contains("is a folder that is not a Kiln image"),
            "{e}"
        );
        assert!(e.is_user_error());
        std::fs::write(out.join(MANIFEST), "{}").expect("w");
        check_replaceable(&out).expect("an image folder");
        let f = d.path().join("file");
        std::fs::write(&f, "x").expect("w");
        assert!(check_replaceable(&f).is_err());
    }
}
