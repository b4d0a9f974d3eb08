//! The content-addressed blob cache: `ROOT/blobs/sha256/<hex>`, every blob
//! hashed while it streams into a temp file beside its final name and renamed
//! into place only when its sha256 is the digest it was asked for. A blob
//! already there is re-hashed before reuse; a corrupt one is removed.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::OciError;

/// How often (in bytes) progress is reported while a blob streams.
const PROGRESS_STEP: u64 = 256 * 1024;

/// A `sha256:<64 lowercase hex>` content digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 hex>`; other algorithms are refused.
    pub fn parse(s: &str) -> Result<Digest, String> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| format!("digest {s:?} is not ALGORITHM:HEX"))?;
        if alg != "sha256" {
            return Err(format!(
                "digest algorithm {alg:?} is not supported (only sha256)"
            ));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "digest {s:?} must be sha256: and 64 lowercase hex digits"
            ));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// Parses, as an [`OciError::BadDigest`] on failure.
    pub(crate) fn parse_oci(s: &str) -> Result<Digest, OciError> {
        Digest::parse(s).map_err(|why| OciError::BadDigest {
            digest: s.to_string(),
            why,
        })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The digest of a file's content, and its size.
    pub fn of_file(path: &Path) -> Result<(Digest, u64), OciError> {
        let file = File::open(path).map_err(|e| OciError::io(path, e))?;
        let mut hasher = Sha256::new();
        let size = io::copy(&mut io::BufReader::new(file), &mut HashWriter(&mut hasher))
            .map_err(|e| OciError::io(path, e))?;
        Ok((
            Digest {
                hex: hex::encode(hasher.finalize()),
            },
            size,
        ))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Checks `bytes` against `expected`, naming `what` on a mismatch.
pub(crate) fn verify_bytes(what: &str, expected: &Digest, bytes: &[u8]) -> Result<(), OciError> {
    let actual = Digest::of(bytes);
    if &actual != expected {
        return Err(OciError::DigestMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// The blob cache under one root folder.
#[derive(Debug, Clone)]
pub struct BlobCache {
    root: PathBuf,
}

impl BlobCache {
    /// The cache rooted at `root` (created on first store).
    pub fn new(root: impl Into<PathBuf>) -> BlobCache {
        BlobCache { root: root.into() }
    }

    fn dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// Where the blob with `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir().join(digest.hex())
    }

    /// The cached blob, if present and its content still matches its name.
    /// A blob that no longer matches is removed (and `None` returned).
    pub fn lookup(&self, digest: &Digest) -> Result<Option<PathBuf>, OciError> {
        let path = self.path(digest);
        match fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(OciError::io(&path, e)),
        }
        if &Digest::of_file(&path)?.0 == digest {
            return Ok(Some(path));
        }
        fs::remove_file(&path).map_err(|e| OciError::io(&path, e))?;
        Ok(None)
    }

    /// Streams `reader` into the cache as `digest`: hashed on the way into a
    /// temp file, renamed into place only if the sha256 matches (otherwise
    /// nothing is left behind). At most `size + 1` bytes are read when the
    /// size is known, so an endless source cannot fill the disk. `what` names
    /// the source in errors (URL or file), `label` is what progress reports.
    #[allow(clippy::too_many_arguments)]
    pub fn store(
        &self,
        digest: &Digest,
        size: Option<u64>,
        what: &str,
        label: &str,
        reader: &mut dyn Read,
        progress: &dyn Fn(&str, u64, u64),
    ) -> Result<PathBuf, OciError> {
        let dir = self.dir();
        fs::create_dir_all(&dir).map_err(|e| OciError::io(&dir, e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(|e| OciError::io(&dir, e))?;
        let total = size.unwrap_or(0);
        let mut limited: Box<dyn Read + '_> = match size {
            Some(n) => Box::new(reader.take(n.saturating_add(1))),
            None => Box::new(reader),
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut done = 0u64;
        let mut reported = 0u64;
        progress(label, 0, total);
        loop {
            let n = match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(OciError::Registry {
                        url: what.to_string(),
                        why: format!("reading the blob: {e}"),
                    })
                }
            };
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| OciError::io(tmp.path(), e))?;
            done += n as u64;
            if done - reported >= PROGRESS_STEP {
                progress(label, done, total.max(done));
                reported = done;
            }
        }
        let actual = hex::encode(hasher.finalize());
        if actual != digest.hex() {
            return Err(OciError::DigestMismatch {
                what: what.to_string(),
                expected: digest.to_string(),
                actual: format!("sha256:{actual}"),
            });
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| OciError::io(tmp.path(), e))?;
        let path = self.path(digest);
        tmp.persist(&path)
            .map_err(|e| OciError::io(&path, e.error))?;
        progress(label, done, total.max(done));
        Ok(path)
    }

    /// Stores an in-memory blob (a manifest or config) under its digest, verified.
    pub fn store_bytes(
        &self,
        digest: &Digest,
        what: &str,
        bytes: &[u8],
    ) -> Result<PathBuf, OciError> {
        verify_bytes(what, digest, bytes)?;
        if let Some(p) = self.lookup(digest)? {
            return Ok(p);
        }
        self.store(
            digest,
            Some(bytes.len() as u64),
            what,
            what,
            &mut &bytes[..],
            &|_, _, _| {},
        )
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
