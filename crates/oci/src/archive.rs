//! `docker save` tarballs as a source, read straight from the tar (no
//! extraction): `manifest.json` names the config and the layer tars; the
//! config is verified against its file name (`<hex>.json` or
//! `blobs/sha256/<hex>`), each layer against its `blobs/sha256/<hex>` name or
//! else the config's `rootfs.diff_ids` (legacy `ID/layer.tar` members are
//! uncompressed tars), streaming into the verified cache.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cache::verify_bytes;
use crate::image::{parse_config, MAX_DOCUMENT};
use crate::{check_image, BlobCache, Digest, OciError, Pulled, Source};

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn normalize(p: &str) -> &str {
    p.trim_start_matches("./")
}

/// The digest a member's name states: `blobs/sha256/<hex>` or `<hex>.json`.
fn digest_from_name(name: &str) -> Option<Digest> {
    let name = normalize(name);
    if let Some(hex) = name.strip_prefix("blobs/sha256/") {
        return Digest::parse(&format!("sha256:{hex}")).ok();
    }
    let hex = name.strip_suffix(".json")?;
    Digest::parse(&format!("sha256:{hex}")).ok()
}

/// Walks the tarball's members (seeking over their data) until `visit` says stop.
/// A member visitor: the member's path and entry; `Ok(true)` stops the walk.
type Visit<'v> = dyn FnMut(&str, &mut tar::Entry<'_, File>) -> Result<bool, OciError> + 'v;

fn walk(file: &Path, visit: &mut Visit<'_>) -> Result<(), OciError> {
    let io = |e| OciError::io(file, e);
    let f = File::open(file).map_err(io)?;
    let mut archive = tar::Archive::new(f);
    for entry in archive.entries_with_seek().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let path = entry.path().map_err(io)?.to_string_lossy().into_owned();
        if visit(normalize(&path), &mut entry)? {
            break;
        }
    }
    Ok(())
}

fn read_member(file: &Path, name: &str) -> Result<Option<Vec<u8>>, OciError> {
    let mut found = None;
    walk(file, &mut |path, entry| {
        if path != name {
            return Ok(false);
        }
        let mut bytes = Vec::new();
        entry
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| OciError::io(file, e))?;
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(OciError::BadImage {
                what: format!("{}:{name}", file.display()),
                why: format!("larger than {MAX_DOCUMENT} bytes"),
            });
        }
        found = Some(bytes);
        Ok(true)
    })?;
    Ok(found)
}

/// Pulls the one image in the `docker save` tarball `file`.
pub(crate) fn pull(
    src: &Source,
    file: &Path,
    cache: &BlobCache,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Pulled, OciError> {
    let reference = src.to_string();
    let member = |name: &str| format!("{}:{name}", file.display());
    let bad = |what: String, why: String| OciError::BadImage { what, why };
    if !file.is_file() {
        return Err(bad(
            file.display().to_string(),
            "no such file (a docker save tarball)".to_string(),
        ));
    }
    let manifest = read_member(file, "manifest.json")?.ok_or_else(|| {
        bad(
            file.display().to_string(),
            "not a docker save tarball (no manifest.json)".to_string(),
        )
    })?;
    let entries: Vec<Entry> = serde_json::from_slice(&manifest).map_err(|e| {
        bad(
            member("manifest.json"),
            format!("not a docker save manifest: {e}"),
        )
    })?;
    let entry = match entries.as_slice() {
        [one] => one,
        [] => return Err(bad(member("manifest.json"), "lists no images".to_string())),
        many => {
            let tags: Vec<String> = many
                .iter()
                .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
                .collect();
            return Err(bad(
                member("manifest.json"),
                format!(
                    "holds {} images ({}); save one image per tarball",
                    many.len(),
                    if tags.is_empty() {
                        "untagged".to_string()
                    } else {
                        tags.join(", ")
                    }
                ),
            ));
        }
    };

    let config_name = normalize(&entry.config).to_string();
    let config_bytes = read_member(file, &config_name)?.ok_or_else(|| {
        bad(
            member(&config_name),
            "named in manifest.json but not in the tarball".to_string(),
        )
    })?;
    let config_digest = match digest_from_name(&config_name) {
        Some(d) => {
            verify_bytes(&member(&config_name), &d, &config_bytes)?;
            d
        }
        None => Digest::of(&config_bytes),
    };
    cache.store_bytes(&config_digest, &member(&config_name), &config_bytes)?;
    let (config, diff_ids) = parse_config(&member(&config_name), &config_bytes)?;
    check_image(&reference, &config)?;

    // Which layer index each member fills, and the digest it must have.
    let mut wanted: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut digests = Vec::with_capacity(entry.layers.len());
    for (i, layer) in entry.layers.iter().enumerate() {
        let name = normalize(layer).to_string();
        let digest = match (name.strip_prefix("blobs/sha256/"), diff_ids.get(i)) {
            (Some(hex), _) => Digest::parse_oci(&format!("sha256:{hex}"))?,
            (None, Some(id)) => Digest::parse_oci(id)?,
            (None, None) => {
                return Err(bad(
                    member(&config_name),
                    format!(
                        "no rootfs.diff_ids entry for layer {} ({name}) to verify it by",
                        i + 1
                    ),
                ))
            }
        };
        digests.push(digest);
        wanted.entry(name).or_default().push(i);
    }
    let mut paths: Vec<Option<PathBuf>> = vec![None; entry.layers.len()];
    for (i, digest) in digests.iter().enumerate() {
        paths[i] = cache.lookup(digest)?;
    }
    let total = entry.layers.len();
    if paths.iter().any(Option::is_none) {
        walk(file, &mut |path, tar_entry| {
            let Some(indices) = wanted.get(path) else {
                return Ok(false);
            };
            let Some(&first) = indices.iter().find(|&&i| paths[i].is_none()) else {
                return Ok(false);
            };
            let digest = &digests[first];
            let label = format!("layer {}/{total} sha256:{}", first + 1, &digest.hex()[..12]);
            let size = tar_entry.size();
            let stored = cache.store(
                digest,
                Some(size),
                &member(path),
                &label,
                tar_entry,
                progress,
            )?;
            for &i in indices {
                if &digests[i] == digest {
                    paths[i] = Some(stored.clone());
                }
            }
            Ok(paths.iter().all(Option::is_some))
        })?;
    }
    let mut layers = Vec::with_capacity(total);
    for (i, p) in paths.into_iter().enumerate() {
        match p {
            Some(p) => layers.push(p),
            None => {
                return Err(bad(
                    member(&entry.layers[i]),
                    "named in manifest.json but not in the tarball".to_string(),
                ))
            }
        }
    }
    Ok(Pulled {
        config,
        layers,
        manifest_digest: config_digest.to_string(),
        reference,
    })
}
