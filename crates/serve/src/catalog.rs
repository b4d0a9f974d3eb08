//! What the server may boot: recipes and built images in the folders it was given, looked up
//! by validated name only. A name is `[a-z0-9][a-z0-9_-]{0,62}`, so it cannot hold a slash or
//! `..`, and a match must be a direct child of a known folder: a request can never name a host
//! path.

use serde::Serialize;
use std::path::{Path, PathBuf};

/// Whether `s` is a valid recipe, image or VM name: 1–63 of a-z 0-9 - _, starting with a
/// letter or digit (the rule of `kiln.toml`'s `name`).
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// A recipe the host knows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecipeInfo {
    /// The folder's name (what a create request names).
    pub name: String,
    /// kiln.toml's description.
    pub description: String,
    /// The folder.
    pub dir: String,
}

/// A built image the host knows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImageInfo {
    /// The folder's name (what a create request names).
    pub name: String,
    /// The recipe's name inside.
    pub recipe: String,
    /// The recipe's description.
    pub description: String,
    /// The folder.
    pub dir: String,
    /// initramfs size in bytes.
    pub initramfs_size: u64,
}

/// The recipe and image folders the server may boot from.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Folders of recipe folders, earlier first.
    pub recipe_roots: Vec<PathBuf>,
    /// Folders of image folders, earlier first.
    pub image_roots: Vec<PathBuf>,
}

fn children(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            valid_name(&name).then(|| (name, e.path()))
        })
        .collect();
    out.sort();
    out
}

impl Catalog {
    /// Every recipe (first folder wins on equal names).
    pub fn recipes(&self) -> Vec<RecipeInfo> {
        let mut out: Vec<RecipeInfo> = Vec::new();
        for root in &self.recipe_roots {
            for (name, dir) in children(root) {
                if out.iter().any(|r| r.name == name) || !dir.join("kiln.toml").is_file() {
                    continue;
                }
                let description = kiln_recipe::Recipe::load(&dir)
                    .map(|r| r.config.description)
                    .unwrap_or_else(|e| format!("(invalid: {e})"));
                out.push(RecipeInfo {
                    name,
                    description,
                    dir: dir.display().to_string(),
                });
            }
        }
        out
    }

    /// Every image folder (with a readable manifest).
    pub fn images(&self) -> Vec<ImageInfo> {
        let mut out: Vec<ImageInfo> = Vec::new();
        for root in &self.image_roots {
            for (name, dir) in children(root) {
                if out.iter().any(|r| r.name == name) {
                    continue;
                }
                if let Ok(m) = kiln_bake::load_image(&dir) {
                    out.push(ImageInfo {
                        name,
                        recipe: m.name,
                        description: m.description,
                        dir: dir.display().to_string(),
                        initramfs_size: m.initramfs.size,
                    });
                }
            }
        }
        out
    }

    /// The folder of recipe `name`, if the name is valid and known.
    pub fn recipe(&self, name: &str) -> Option<PathBuf> {
        if !valid_name(name) {
            return None;
        }
        self.recipe_roots
            .iter()
            .map(|r| r.join(name))
            .find(|d| d.join("kiln.toml").is_file())
    }

    /// The folder of image `name`, if the name is valid and known.
    pub fn image(&self, name: &str) -> Option<PathBuf> {
        if !valid_name(name) {
            return None;
        }
        self.image_roots
            .iter()
            .map(|r| r.join(name))
            .find(|d| d.join(kiln_bake::MANIFEST).is_file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["rescue", "a", "web-1", "x_y", "0abc"] {
            assert!(valid_name(ok), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in [
            "", "..", "../etc", "a/b", "A", "-a", "_a", "a.b", "a b", "é", &long,
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn lookups_stay_inside_the_roots() {
        let d = tempfile::tempdir().expect("tmp");
        let recipes = d.path().join("recipes");
        std::fs::create_dir_all(recipes.join("web")).expect("mkdir");
        std::fs::write(recipes.join("web/kiln.toml"), "name = \"web\"\n").expect("w");
        // A recipe outside the root, reachable only through `..`.
        std::fs::create_dir_all(d.path().join("outside")).expect("mkdir");
        std::fs::write(d.path().join("outside/kiln.toml"), "name = \"x\"\n").expect("w");
        let c = Catalog {
            recipe_roots: vec![recipes.clone()],
            image_roots: vec![],
        };
        assert_eq!(c.recipe("web"), Some(recipes.join("web")));
        assert_eq!(c.recipe("../outside"), None);
        assert_eq!(c.recipe("missing"), None);
        assert_eq!(c.image("web"), None);
        assert_eq!(
            c.recipes()
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["web"]
        );
    }
}
