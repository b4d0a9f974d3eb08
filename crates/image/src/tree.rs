//! Walking a staging tree for the disk and read-only image writers: the tree must be a folder,
//! and a walk or stat error names the path it met.

use std::fs::Metadata;
use std::io;
use std::path::Path;

use crate::ImageError;

/// `staging` must be a folder; `meta` is its metadata as the caller looked it up (following a
/// link or not).
pub(crate) fn require_dir(staging: &Path, meta: io::Result<Metadata>) -> Result<(), ImageError> {
    let meta = meta.map_err(|error| ImageError::StagingDir {
        path: staging.to_path_buf(),
        error,
    })?;
    if meta.is_dir() {
        Ok(())
    } else {
        Err(ImageError::StagingDir {
            path: staging.to_path_buf(),
            error: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        })
    }
}

/// Every entry under `staging`, the root included (deepest first with `contents_first`).
pub(crate) fn walk(
    staging: &Path,
    contents_first: bool,
) -> impl Iterator<Item = Result<walkdir::DirEntry, ImageError>> + '_ {
    walkdir::WalkDir::new(staging)
        .contents_first(contents_first)
        .into_iter()
        .map(move |e| {
            e.map_err(|err| ImageError::Walk {
                path: err
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| staging.to_path_buf()),
                error: err
                    .into_io_error()
                    .unwrap_or_else(|| io::Error::other("walk failed")),
            })
        })
}

/// An entry's own metadata (a link's, not its target's).
pub(crate) fn metadata(e: &walkdir::DirEntry) -> Result<Metadata, ImageError> {
    e.metadata().map_err(|err| ImageError::Walk {
        path: e.path().to_path_buf(),
        error: err
            .into_io_error()
            .unwrap_or_else(|| io::Error::other("stat failed")),
    })
}
