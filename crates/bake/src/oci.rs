//! OCI images in the build: a recipe's `from = "REF"` (the image's files are the root's first
//! layer, the recipe's go on top), and a recipe made from an image alone ([`recipe_for`]: its
//! Entrypoint and Cmd as etc/rc, its Env, WorkingDir, User and ExposedPorts as the recipe's), so
//! `kiln run REF` and `kiln build REF` go through the one pipeline every recipe does.
//! `from = "dir:PATH"` takes an unpacked root folder (a container bundle's rootfs) as that
//! bottom layer instead, and [`rootfs_recipe_text`] makes the recipe a container runtime
//! (`containerd-shim-kiln-v2`) builds from a bundle's rootfs and its process's args/env/cwd.

use crate::BuildError;
use kiln_image::Owners;
use kiln_oci::{ImageConfig, PullOptions, Pulled, Source};
use kiln_recipe::Recipe;
use kiln_rootfs::index::IndexLine;
use kiln_rootfs::packages::{Entry, EntryKind, PackageRoot};
use kiln_rootfs::Staging;
use std::path::{Path, PathBuf};

/// The OCI cache under the cache root: blobs, and the recipes made from images.
pub fn cache_dir(cache_root: &Path) -> PathBuf {
    cache_root.join("oci")
}

/// Pull options for the cache root (`insecure`: plain HTTP to the registry).
pub fn pull_options(cache_root: &Path, insecure: bool) -> PullOptions {
    PullOptions {
        cache: cache_dir(cache_root),
        insecure,
        docker_config: None,
    }
}

/// Whether plain HTTP is allowed: `KILN_INSECURE_REGISTRY=1`, or a registry on loopback.
pub fn insecure_for(reference: &str) -> bool {
    std::env::var("KILN_INSECURE_REGISTRY").is_ok_and(|v| v == "1")
        || ["localhost:", "127.0.0.1:", "[::1]:"]
            .iter()
            .any(|p| reference.starts_with(p))
}

/// Pull the recipe's `from` image (if any), its blobs verified into the cache.
pub(crate) fn pull_base(
    recipe: &Recipe,
    cache_root: &Path,
    progress: &dyn crate::Progress,
) -> Result<Option<Pulled>, BuildError> {
    let Some(from) = &recipe.config.from else {
        return Ok(None);
    };
    if let Some(dir) = from.get_ref().strip_prefix(DIR_SOURCE) {
        let dir = recipe.resolve(dir);
        if !dir.is_dir() {
            return Err(BuildError::From {
                location: recipe.locate(from.span()),
                message: format!("{}: not a folder", dir.display()),
            });
        }
        return Ok(Some(Pulled {
            config: ImageConfig::default(),
            layers: Vec::new(),
            manifest_digest: tree_digest(&dir),
            reference: format!("{DIR_SOURCE}{}", dir.display()),
        }));
    }
    let src: Source = from.get_ref().parse().map_err(|e| BuildError::From {
        location: recipe.locate(from.span()),
        message: format!("{e}"),
    })?;
    progress.phase("OCI image");
    let opts = pull_options(cache_root, insecure_for(from.get_ref()));
    let pulled = kiln_oci::pull(&src, &opts, &|_, _, _| {}).map_err(|e| {
        if e.is_user_error() {
            // The user's reference: the kiln.toml line it is on.
            BuildError::From {
                location: recipe.locate(from.span()),
                message: e.to_string(),
            }
        } else {
            e.into()
        }
    })?;
    Ok(Some(pulled))
}

/// `REF@DIGEST`: the manifest source of the image's files.
pub(crate) fn source_of(base: &Pulled) -> String {
    format!("{}@{}", base.reference, base.manifest_digest)
}

/// The image's files as the bottom of the staging tree, with their owners when those are not
/// root (the staged copies are the building user's). Without an index every file is taken,
/// unpacked in place; with one, the image is unpacked beside the staging tree and only what
/// the index selects is taken, with the ELF closure of its programs and libraries (from the
/// image alone) and the image's user database. Returns the index lines the image has nothing
/// for.
pub(crate) fn stage_base(
    st: &mut Staging,
    base: &Pulled,
    index: Option<&Path>,
) -> Result<Vec<IndexLine>, BuildError> {
    let source = source_of(base);
    let Some(index) = index else {
        let root = st.root().to_path_buf();
        let owners = unpack_into(base, &root)?;
        for e in walkdir::WalkDir::new(&root)
            .min_depth(1)
            .into_iter()
            .flatten()
        {
            if let Ok(rel) = e.path().strip_prefix(&root) {
                st.adopt(&Path::new("/").join(rel), &source, "from the OCI image");
            }
        }
        for (rel, (uid, gid)) in owners {
            st.set_owner(&Path::new("/").join(rel), uid, gid)?;
        }
        return Ok(Vec::new());
    };
    let dir = st.root().with_file_name("base");
    std::fs::create_dir_all(&dir).map_err(crate::io(&dir))?;
    let owners = unpack_into(base, &dir)?;
    let tree = sysroot_of(&dir, &source);
    let from = crate::packages::Sysroot {
        root: &tree,
        prefix: "",
        host: false,
    };
    let unmatched = crate::packages::install_from(&from, Some(index), st)?;
    // `user` and the service's own lookups of names read these, traced or not.
    for f in ["/etc/passwd", "/etc/group"] {
        let host = tree.host_path(Path::new(f));
        let staged = st.root().join(&f[1..]);
        if host.is_file() && std::fs::symlink_metadata(&staged).is_err() {
            st.copy_file_labelled(Path::new(f), &host, &source, "the image's user database")?;
        }
    }
    for (rel, (uid, gid)) in owners {
        if std::fs::symlink_metadata(st.root().join(&rel)).is_ok() {
            st.set_owner(&Path::new("/").join(rel), uid, gid)?;
        }
    }
    Ok(unmatched)
}

/// Unpack the image (or copy the root folder of a `dir:` source) into `dest`; the owners other
/// than root's it gives.
fn unpack_into(base: &Pulled, dest: &Path) -> Result<Owners, BuildError> {
    if let Some(dir) = base.reference.strip_prefix(DIR_SOURCE) {
        return copy_tree(Path::new(dir), dest);
    }
    let report = kiln_oci::unpack(&base.layers, dest)?;
    for (path, why) in &report.skipped {
        tracing::warn!(path = %path, "not taken from the OCI image: {why}");
    }
    Ok(report.owners)
}

/// The unpacked image at `dir` as a tree an index selects from, every path labelled `source`.
fn sysroot_of(dir: &Path, source: &str) -> PackageRoot {
    let mut entries = std::collections::BTreeMap::new();
    for e in walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .flatten()
    {
        let (Ok(rel), Some(kind)) = (e.path().strip_prefix(dir), EntryKind::of(e.file_type()))
        else {
            continue;
        };
        entries.insert(
            Path::new("/").join(rel),
            Entry {
                kind,
                package: source.to_string(),
            },
        );
    }
    PackageRoot {
        dir: dir.to_path_buf(),
        entries,
    }
}

/// The prefix of a `from` that names an unpacked root folder rather than an image.
pub const DIR_SOURCE: &str = "dir:";

/// A cheap identity of the tree at `dir` for the build's fingerprint: every entry's path,
/// type, mode, size and modification time, hashed.
pub(crate) fn tree_digest(dir: &Path) -> String {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let mut h = sha2::Sha256::new();
    for e in walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .flatten()
    {
        if let Ok(m) = e.path().symlink_metadata() {
            let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
            h.update(format!(
                "{}\0{:o}\0{}\0{}.{}\n",
                rel.display(),
                m.mode(),
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            ));
        }
    }
    format!("dir:{}", hex::encode(h.finalize()))
}

/// Copy the root folder `src` into the empty staging root `dst`: folders with their modes,
/// symlinks as links, regular files; device nodes, FIFOs and sockets are skipped and logged.
/// Returns the owners other than root's, which the copies (the building user's) lose.
fn copy_tree(src: &Path, dst: &Path) -> Result<Owners, BuildError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut owners = Owners::new();
    for e in walkdir::WalkDir::new(src).min_depth(1) {
        let e = e.map_err(|e| {
            let path = e.path().unwrap_or(src).to_path_buf();
            crate::io(&path)(e.into())
        })?;
        let rel = e.path().strip_prefix(src).unwrap_or(e.path());
        let to = dst.join(rel);
        let ft = e.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&to).map_err(crate::io(&to))?;
            let mode = e
                .metadata()
                .map(|m| m.permissions().mode())
                .unwrap_or(0o755);
            // Writable by the build, whatever the image says (the staging tree is filled later).
            std::fs::set_permissions(
                &to,
                std::fs::Permissions::from_mode((mode & 0o7777) | 0o200),
            )
            .map_err(crate::io(&to))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(e.path()).map_err(crate::io(e.path()))?;
            std::os::unix::fs::symlink(&target, &to).map_err(crate::io(&to))?;
        } else if ft.is_file() {
            std::fs::copy(e.path(), &to).map_err(crate::io(&to))?;
        } else {
            tracing::warn!(path = %rel.display(), "not taken from the root folder: not a file, folder or link");
            continue;
        }
        if let Ok(m) = e.metadata() {
            if (m.uid(), m.gid()) != (0, 0) {
                owners.insert(rel.to_path_buf(), (m.uid(), m.gid()));
            }
        }
    }
    Ok(owners)
}

/// Whether guest path `guest` exists in the staging tree (a link counts, followed or not).
pub(crate) fn staged(st: &Staging, guest: &Path) -> bool {
    st.host_path(guest)
        .is_ok_and(|h| std::fs::symlink_metadata(h).is_ok())
}

/// `user` (a name, `NAME:GROUP`, `UID` or `UID:GID`) as numbers, from the staged root's
/// /etc/passwd and /etc/group.
pub fn resolve_user(root: &Path, user: &str) -> Result<(u32, u32), String> {
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap_or_default();
    let (passwd, group) = (read("etc/passwd"), read("etc/group"));
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entry = |db: &str, name: &str| -> Option<Vec<String>> {
        db.lines()
            .map(|l| l.split(':').map(String::from).collect::<Vec<_>>())
            .find(|f| f.first().map(String::as_str) == Some(name))
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (
            n,
            passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.get(2).and_then(|x| x.parse::<u32>().ok()) == Some(n))
                .and_then(|f| f.get(3).and_then(|x| x.parse().ok())),
        ),
        Err(_) => {
            let f = entry(&passwd, u)
                .ok_or_else(|| format!("user `{u}` is not in the image's /etc/passwd"))?;
            let uid = f.get(2).and_then(|x| x.parse().ok());
            let gid = f.get(3).and_then(|x| x.parse().ok());
            (
                uid.ok_or_else(|| format!("user `{u}`: its /etc/passwd line has no number"))?,
                gid,
            )
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => entry(&group, g)
                .and_then(|f| f.get(2).and_then(|x| x.parse().ok()))
                .ok_or_else(|| format!("group `{g}` is not in the image's /etc/group"))?,
        },
        None => primary.unwrap_or(uid),
    };
    Ok((uid, gid))
}

/// Quote a word for /bin/sh.
pub(crate) fn sh_quote(w: &str) -> String {
    format!("'{}'", w.replace('\'', r"'\''"))
}

/// The host port a guest port is published on by default: the same port from 1024 up, 8000
/// more below it (80 → 8080), so no default needs root.
pub fn default_host_port(guest: u16) -> u16 {
    if guest >= 1024 {
        guest
    } else {
        guest + 8000
    }
}

/// A name for a recipe made from `reference`: its repository's last component, as a VM name.
pub fn name_for(reference: &str) -> String {
    let path = reference
        .trim_start_matches("oci:")
        .trim_start_matches("docker-archive:");
    let last = path.rsplit('/').next().unwrap_or(path);
    let last = last.split(['@', ':']).next().unwrap_or(last);
    let last = last.trim_end_matches(".tar");
    let mut name: String = last
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '_') => c,
            _ => '-',
        })
        .collect();
    name = name.trim_start_matches(['-', '_']).to_string();
    name.truncate(63);
    if name.is_empty() {
        "oci".into()
    } else {
        name
    }
}

/// kiln.toml and etc/rc of a recipe made from an image with `config`, pulled from `from`
/// (pinned by digest for a registry).
pub fn recipe_text(
    name: &str,
    from: &str,
    config: &ImageConfig,
) -> Result<(String, String), kiln_oci::OciError> {
    let argv = config.argv(from)?;
    let q = kiln_recipe::toml_string;
    let mut toml = format!(
        "# made by kiln from the OCI image {from}\nname = {}\ndescription = {}\nfrom = {}\n\
         memory = 128\n",
        q(name),
        q(&format!("OCI image {from}")),
        q(from)
    );
    let tcp: Vec<u16> = config
        .exposed_ports
        .iter()
        .filter(|(_, p)| p == "tcp")
        .map(|(n, _)| *n)
        .collect();
    let ports: Vec<String> = config
        .exposed_ports
        .iter()
        .map(|(n, p)| {
            let f = format!("{}:{n}", default_host_port(*n));
            if p == "udp" {
                format!("{}/udp", f)
            } else {
                f
            }
        })
        .collect();
    if !ports.is_empty() {
        let list: Vec<String> = ports.iter().map(|p| q(p)).collect();
        toml.push_str(&format!("ports = [{}]\n", list.join(", ")));
    }
    match tcp.first() {
        Some(p) => toml.push_str(&format!("ready = \"tcp:{p}\"\n")),
        None => toml.push_str("ready = \"none\"\n"),
    }
    if let Some(u) = config.user.as_deref().filter(|u| !u.is_empty()) {
        toml.push_str(&format!("user = {}\n", q(u)));
    }
    // busybox only fills in what the image lacks (a shell for etc/rc, tools for `kiln exec`).
    toml.push_str("\n[root]\nbusybox = true\n");
    push_env(&mut toml, &config.env);
    let dir = config
        .working_dir
        .as_deref()
        .filter(|d| !d.is_empty())
        .unwrap_or("/");
    let words: Vec<String> = argv.iter().map(|w| sh_quote(w)).collect();
    let rc = format!(
        "#!/bin/sh\n# made by kiln: the OCI image's Entrypoint and Cmd, in its WorkingDir\n\
         cd {} || exit 126\nexec {}\n",
        sh_quote(dir),
        words.join(" ")
    );
    Ok((toml, rc))
}

/// The process a container runs, from its OCI runtime spec: what [`rootfs_recipe_text`] turns
/// into etc/rc and the recipe's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Process {
    /// The program and its arguments (`process.args`).
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs (`process.env`).
    pub env: Vec<String>,
    /// The working folder (`process.cwd`); `/` when empty.
    pub cwd: String,
    /// `UID:GID` to run as (`process.user`); root when `None`.
    pub user: Option<(u32, u32)>,
}

/// kiln.toml and etc/rc of a recipe whose root is the unpacked folder `rootfs` (`from =
/// "dir:ROOTFS"`: its files first, Kiln's fill in what it lacks) and whose service is
/// `process`: no readiness check (a container is started, not waited on), `memory` MiB.
pub fn rootfs_recipe_text(
    name: &str,
    rootfs: &Path,
    process: &Process,
    memory: u32,
) -> Result<(String, String), BuildError> {
    if process.args.is_empty() {
        return Err(BuildError::BadImage {
            path: rootfs.to_path_buf(),
            message: "the container's process has no args: nothing to run".into(),
        });
    }
    let q = kiln_recipe::toml_string;
    let mut toml = format!(
        "# made by kiln from a container's root folder and process\nname = {}\n\
         description = {}\nfrom = {}\nmemory = {memory}\nready = \"none\"\n",
        q(name),
        q(&format!("container {name}")),
        q(&format!("{DIR_SOURCE}{}", rootfs.display())),
    );
    if let Some((uid, gid)) = process.user.filter(|u| *u != (0, 0)) {
        toml.push_str(&format!("user = \"{uid}:{gid}\"\n"));
    }
    toml.push_str("\n[root]\nbusybox = true\n");
    push_env(&mut toml, &process.env);
    let dir = if process.cwd.is_empty() {
        "/"
    } else {
        &process.cwd
    };
    let words: Vec<String> = process.args.iter().map(|w| sh_quote(w)).collect();
    let rc = format!(
        "#!/bin/sh\n# made by kiln: the container's process, in its cwd\n\
         cd {} || exit 126\nexec {}\n",
        sh_quote(dir),
        words.join(" ")
    );
    Ok((toml, rc))
}

/// A recipe folder made from the image `reference` (pulled first), in the cache; rebuilt only
/// when the image changes. Registry references are pinned to the digest pulled.
pub fn recipe_for(reference: &str, cache_root: &Path) -> Result<PathBuf, BuildError> {
    let src: Source = reference.parse()?;
    let opts = pull_options(cache_root, insecure_for(reference));
    let pulled = kiln_oci::pull(&src, &opts, &|_, _, _| {})?;
    let from = pinned(&src, reference, &pulled.manifest_digest);
    let name = name_for(reference);
    let digest = pulled
        .manifest_digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect::<String>();
    let dir = cache_dir(cache_root)
        .join("recipes")
        .join(format!("{name}-{digest}"));
    if dir.join("kiln.toml").is_file() {
        return Ok(dir);
    }
    let (toml, rc) = recipe_text(&name, &from, &pulled.config)?;
    write_recipe(&dir, &toml, &rc, |_| Ok(()))
}

/// Write a made recipe folder at `dir`: kiln.toml, etc/rc, and what `more` adds, in a temp
/// folder renamed into place (a concurrent maker's complete folder is kept).
pub(crate) fn write_recipe(
    dir: &Path,
    toml: &str,
    rc: &str,
    more: impl FnOnce(&Path) -> Result<(), BuildError>,
) -> Result<PathBuf, BuildError> {
    let parent = dir.parent().unwrap_or(dir).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(crate::io(&parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(&parent)
        .map_err(crate::io(&parent))?;
    let t = tmp.path();
    std::fs::create_dir_all(t.join("etc")).map_err(crate::io(t))?;
    std::fs::write(t.join("kiln.toml"), toml).map_err(crate::io(t))?;
    std::fs::write(t.join("etc/rc"), rc).map_err(crate::io(t))?;
    more(t)?;
    let made = tmp.keep();
    if let Err(e) = std::fs::rename(&made, dir) {
        let _ = std::fs::remove_dir_all(&made);
        if !dir.join("kiln.toml").is_file() {
            return Err(crate::io(dir)(e));
        }
    }
    Ok(dir.to_path_buf())
}

/// The `from` of a recipe made from `reference` (parsed as `src`): a registry image pinned to
/// the `digest` pulled, a layout or archive as given.
pub(crate) fn pinned(src: &Source, reference: &str, digest: &str) -> String {
    match src {
        Source::Registry(_) => pin(reference, digest),
        _ => reference.to_string(),
    }
}

/// `reference` pinned to `digest` (`host/repo:tag` → `host/repo@sha256:…`).
fn pin(reference: &str, digest: &str) -> String {
    let repo = match reference.split_once('@') {
        Some((r, _)) => r,
        None => {
            // A tag is the part after the last ':' that follows the last '/'.
            let slash = reference.rfind('/').unwrap_or(0);
            match reference[slash..].rfind(':') {
                Some(i) => &reference[..slash + i],
                None => reference,
            }
        }
    };
    format!("{repo}@{digest}")
}

/// An `[env]` table of `KEY=VALUE` strings (an image's Env, a runtime spec's process env);
/// nothing when none has an `=`.
fn push_env(toml: &mut String, env: &[String]) {
    let env: Vec<(&str, &str)> = env.iter().filter_map(|kv| kv.split_once('=')).collect();
    if !env.is_empty() {
        let q = kiln_recipe::toml_string;
        toml.push_str("\n[env]\n");
        for (k, v) in env {
            toml.push_str(&format!("{} = {}\n", q(k), q(v)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/bin/httpd".into(), "-f".into()],
            cmd: vec!["-p".into(), "80".into(), "it's".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "GREETING=a b=c".into()],
            working_dir: Some("/srv/www".into()),
            user: Some("www:www".into()),
            exposed_ports: vec![(80, "tcp".into()), (5353, "udp".into())],
            os: "linux".into(),
            architecture: "amd64".into(),
        }
    }

    #[test]
    fn an_image_config_becomes_a_recipe_that_parses() {
        let (toml, rc) =
            recipe_text("httpd", "localhost:5000/httpd@sha256:ab", &config()).expect("ok");
        let cfg = kiln_recipe::Config::parse(&toml)
            .map_err(|e| e.1)
            .expect("parses");
        assert_eq!(cfg.name, "httpd");
        assert_eq!(
            cfg.from.as_ref().map(|f| f.get_ref().as_str()),
            Some("localhost:5000/httpd@sha256:ab")
        );
        assert_eq!(cfg.ready.as_conf(), "tcp:80");
        let ports: Vec<String> = cfg.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(ports, ["127.0.0.1:8080:80/tcp", "127.0.0.1:5353:5353/udp"]);
        assert_eq!(cfg.env["GREETING"], "a b=c");
        assert!(cfg.root.busybox, "busybox fills in what the image lacks");
        assert_eq!(
            cfg.user.as_ref().map(|u| u.get_ref().as_str()),
            Some("www:www")
        );
        assert!(rc.contains("cd '/srv/www' || exit 126\n"), "{rc}");
        assert!(
            rc.contains(r"exec '/bin/httpd' '-f' '-p' '80' 'it'\''s'"),
            "{rc}"
        );
    }

    #[test]
    fn a_container_process_becomes_a_recipe_that_parses() {
        let p = Process {
            args: vec!["/bin/sh".into(), "-c".into(), "echo hi; exit 3".into()],
            env: vec!["PATH=/bin".into(), "A=b c".into()],
            cwd: "/www".into(),
            user: Some((33, 33)),
        };
        let (toml, rc) =
            rootfs_recipe_text("t1", Path::new("/run/bundle/rootfs"), &p, 128).expect("ok");
        let cfg = kiln_recipe::Config::parse(&toml)
            .map_err(|e| e.1)
            .expect("parses");
        assert_eq!(
            cfg.from.as_ref().map(|f| f.get_ref().as_str()),
            Some("dir:/run/bundle/rootfs")
        );
        assert_eq!(cfg.ready.as_conf(), "none");
        assert_eq!(cfg.env["A"], "b c");
        assert_eq!(
            cfg.user.as_ref().map(|u| u.get_ref().as_str()),
            Some("33:33")
        );
        assert!(rc.contains("cd '/www' || exit 126\n"), "{rc}");
        assert!(rc.contains("exec '/bin/sh' '-c' 'echo hi; exit 3'"), "{rc}");
        let none = Process::default();
        assert!(rootfs_recipe_text("t", Path::new("/r"), &none, 128).is_err());
    }

    #[test]
    fn a_root_folder_is_copied_with_its_links() {
        let d = tempfile::tempdir().expect("tmp");
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        std::fs::create_dir_all(src.join("bin")).expect("mkdir");
        std::fs::write(src.join("bin/busybox"), "x").expect("w");
        std::os::unix::fs::symlink("busybox", src.join("bin/sh")).expect("link");
        std::fs::create_dir_all(&dst).expect("mkdir");
        copy_tree(&src, &dst).expect("copied");
        assert_eq!(
            std::fs::read_to_string(dst.join("bin/busybox")).expect("r"),
            "x"
        );
        assert_eq!(
            std::fs::read_link(dst.join("bin/sh")).expect("link"),
            Path::new("busybox")
        );
        let before = tree_digest(&src);
        std::fs::write(src.join("bin/new"), "y").expect("w");
        assert_ne!(before, tree_digest(&src));
    }

    #[test]
    fn an_image_with_nothing_to_run_is_refused() {
        let mut c = config();
        c.entrypoint.clear();
        c.cmd.clear();
        let e = recipe_text("x", "oci:/d", &c).expect_err("refused");
        assert!(e.to_string().contains("no Entrypoint and no Cmd"), "{e}");
        assert!(e.is_user_error());
    }

    #[test]
    fn names_ports_and_pins() {
        assert_eq!(name_for("localhost:5000/team/Web.App:1"), "web-app");
        assert_eq!(name_for("oci:/tmp/layout:v2"), "layout");
        assert_eq!(name_for("docker-archive:/tmp/hello.tar"), "hello");
        assert_eq!(default_host_port(80), 8080);
        assert_eq!(default_host_port(6379), 6379);
        assert_eq!(
            pin("localhost:5000/app:1", "sha256:ff"),
            "localhost:5000/app@sha256:ff"
        );
        assert_eq!(
            pin("localhost:5000/app", "sha256:ff"),
            "localhost:5000/app@sha256:ff"
        );
        assert_eq!(
            pin("localhost:5000/app@sha256:00", "sha256:ff"),
            "localhost:5000/app@sha256:ff"
        );
    }

    #[test]
    fn users_resolve_from_the_image_databases() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(d.path().join("etc")).expect("etc");
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n",
        )
        .expect("passwd");
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").expect("group");
        assert_eq!(resolve_user(d.path(), "www"), Ok((33, 34)));
        assert_eq!(resolve_user(d.path(), "www:staff"), Ok((33, 50)));
        assert_eq!(resolve_user(d.path(), "1000"), Ok((1000, 1000)));
        assert_eq!(resolve_user(d.path(), "33:7"), Ok((33, 7)));
        assert!(resolve_user(d.path(), "nobody")
            .expect_err("unknown")
            .contains("not in the image's /etc/passwd"));
        assert!(resolve_user(d.path(), "www:wheel")
            .expect_err("unknown group")
            .contains("/etc/group"));
    }
}
