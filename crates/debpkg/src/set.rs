//! Package sets: a recipe's `packages` resolved with their dependencies by apt itself, against a
//! private apt state under the cache folder, and downloaded into the content-addressed cache.
//!
//! The host's package database is never read or changed: apt runs with
//! `Dir::State=<root>/apt/state` (a copy of the host's package lists, or an `apt-get update` of
//! its own when the host has none), `Dir::State::status=<root>/apt/status` (an empty file, so
//! apt computes the whole dependency closure as for an empty system) and
//! `Dir::Cache=<root>/apt/cache`. Maintainer-script helpers and `Essential: yes` packages that
//! only a dependency pulled in are left out (see [`SCRIPT_ONLY`]); the recipe declares what
//! maintainer scripts would have made (users, folders).
//!
//! A resolved set is remembered in `<root>/sets/<sha256 of the request>` (package, version,
//! sha256 per line), so a rebuild reuses it without apt, offline, after verifying each file.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{io_err, is_sha256, read_control_fields, sha256_file, validate_name, write_atomic};
use crate::{Cache, Deb, DebError};

/// Packages whose files only serve maintainer scripts (users, alternatives, debconf prompts,
/// the merged-`/usr` conversion) or that every Debian system has (`Essential: yes`): apt is told
/// they are installed already (a fake entry in the private status file), so neither they nor
/// their own dependencies (perl for usrmerge...) are fetched, unless the recipe names them.
pub const SCRIPT_ONLY: &[&str] = &[
    "adduser",
    "base-files",
    "base-passwd",
    "bash",
    "bsdutils",
    "coreutils",
    "dash",
    "diffutils",
    "findutils",
    "grep",
    "gzip",
    "hostname",
    "login",
    "ncurses-bin",
    "sed",
    "sysvinit-utils",
    "tar",
    "usr-is-merged",
    "usrmerge",
    "util-linux",
    "debconf",
    "debianutils",
    "dpkg",
    "init-system-helpers",
    "libpam-runtime",
    "lsb-base",
    "passwd",
    "perl-base",
    "runit-helper",
    "sensible-utils",
    "ucf",
];

/// Where the host keeps apt's package lists.
const HOST_LISTS: &str = "/var/lib/apt/lists";

/// A recipe's packages with their dependency closure, all in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSet {
    /// The names the recipe asked for, sorted.
    pub requested: Vec<String>,
    /// The packages to unpack into the image's package sysroot, sorted by name.
    pub debs: Vec<Deb>,
    /// Dependencies left out, with the reason.
    pub excluded: Vec<(String, String)>,
}

impl PackageSet {
    /// One line per package: `name version sha256` (used in fingerprints).
    pub fn identity(&self) -> String {
        let mut s = String::new();
        for d in &self.debs {
            s.push_str(&format!("{} {} {}\n", d.package, d.version, d.sha256));
        }
        s
    }
}

impl Cache {
    /// The private apt folder (`<root>/apt`).
    pub fn apt_dir(&self) -> PathBuf {
        self.root.join("apt")
    }

    /// Resolve `packages` and their dependencies with apt (private state), download what the
    /// cache lacks, and return the set. A set resolved before is reused without apt unless
    /// `refresh`; its files are verified either way.
    pub fn fetch_set(&self, packages: &[String], refresh: bool) -> Result<PackageSet, DebError> {
        let requested: BTreeSet<String> = packages.iter().cloned().collect();
        for p in &requested {
            validate_name(p)?;
        }
        let requested: Vec<String> = requested.into_iter().collect();
        let record = self.set_record_path(&requested);
        if !refresh {
            if let Some(set) = self.read_set(&record, &requested)? {
                return Ok(set);
            }
        }
        let opts = self.private_state(&requested)?;
        let resolved = self.simulate(&opts, &requested)?;
        let downloaded = self.download_all(&opts, &requested, &resolved)?;
        let mut debs = Vec::new();
        let mut excluded = Vec::new();
        let mut mentioned = BTreeSet::new();
        for (deb, essential) in downloaded {
            for dep in &deb_depends(&deb) {
                if SCRIPT_ONLY.contains(&dep.as_str()) && !requested.contains(dep) {
                    mentioned.insert(dep.clone());
                }
            }
            let asked = requested.contains(&deb.package);
            if !asked && SCRIPT_ONLY.contains(&deb.package.as_str()) {
                excluded.push((
                    deb.package.clone(),
                    "only used by maintainer scripts, which Kiln does not run".to_string(),
                ));
            } else if !asked && essential {
                excluded.push((
                    deb.package.clone(),
                    "Essential: yes (part of every Debian system); name it in `packages` to include it"
                        .to_string(),
                ));
            } else {
                debs.push(deb);
            }
        }
        for dep in mentioned {
            excluded.push((
                dep,
                "a dependency treated as installed (maintainer scripts or Essential); name it in `packages` to include it".to_string(),
            ));
        }
        debs.sort_by(|a, b| a.package.cmp(&b.package));
        excluded.sort();
        excluded.dedup_by(|a, b| a.0 == b.0);
        let set = PackageSet {
            requested,
            debs,
            excluded,
        };
        self.write_set(&record, &set)?;
        Ok(set)
    }

    fn set_record_path(&self, requested: &[String]) -> PathBuf {
        let mut h = Sha256::new();
        h.update(b"kiln package set v2\n");
        for p in requested {
            h.update(p.as_bytes());
            h.update(b"\n");
        }
        self.root.join("sets").join(hex::encode(h.finalize()))
    }

    fn read_set(
        &self,
        record: &Path,
        requested: &[String],
    ) -> Result<Option<PackageSet>, DebError> {
        let text = match fs::read_to_string(record) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", record)(e)),
        };
        let mut debs = Vec::new();
        let mut excluded = Vec::new();
        for line in text.lines() {
            let mut w = line.splitn(3, ' ');
            match (w.next(), w.next(), w.next()) {
                (Some("deb"), Some(pkg), Some(rest)) => {
                    let Some((version, sha256)) = rest.split_once(' ') else {
                        return Ok(None);
                    };
                    if !is_sha256(sha256) {
                        return Ok(None);
                    }
                    let path = self.deb_path(sha256);
                    if !path.is_file() {
                        return Ok(None);
                    }
                    let actual = sha256_file(&path)?;
                    if actual != sha256 {
                        return Err(DebError::Corrupt {
                            path,
                            expected: sha256.to_string(),
                            actual,
                        });
                    }
                    debs.push(Deb {
                        package: pkg.to_string(),
                        version: version.to_string(),
                        sha256: sha256.to_string(),
                        path,
                    });
                }
                (Some("excluded"), Some(pkg), Some(why)) => {
                    excluded.push((pkg.to_string(), why.to_string()))
                }
                _ => {}
            }
        }
        Ok(Some(PackageSet {
            requested: requested.to_vec(),
            debs,
            excluded,
        }))
    }

    fn write_set(&self, record: &Path, set: &PackageSet) -> Result<(), DebError> {
        let dir = record.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let mut text = format!("requested {}\n", set.requested.join(" "));
        for d in &set.debs {
            text.push_str(&format!("deb {} {} {}\n", d.package, d.version, d.sha256));
        }
        for (p, why) in &set.excluded {
            text.push_str(&format!("excluded {p} {why}\n"));
        }
        write_atomic(record, text.as_bytes())
    }

    /// Prepare `<root>/apt` and return the apt options that point apt at it.
    fn private_state(&self, requested: &[String]) -> Result<Vec<String>, DebError> {
        let apt = self.apt_dir();
        let state = apt.join("state");
        let lists = state.join("lists");
        let cache = apt.join("cache");
        for d in [
            lists.join("partial"),
            cache.join("archives").join("partial"),
        ] {
            fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        }
        let status = apt.join("status");
        write_atomic(&status, fake_status(requested).as_bytes())?;
        let mut opts = vec![
            format!("Dir::State={}", state.display()),
            format!("Dir::State::Lists={}", lists.display()),
            format!("Dir::State::status={}", status.display()),
            format!("Dir::Cache={}", cache.display()),
            "Debug::NoLocking=1".to_string(),
        ];
        if running_as_root() {
            // apt would drop to `_apt`, which cannot write into root's cache folder.
            opts.push("APT::Sandbox::User=root".to_string());
        }
        let copied = sync_lists(Path::new(HOST_LISTS), &lists)?;
        if copied == 0 {
            tracing::info!("the host has no apt package lists; running apt-get update privately");
            let mut args = option_args(&opts);
            args.extend(["update".to_string(), "-q".to_string()]);
            self.run_apt_owned(&self.apt_get, &args, "(apt-get update)", None)?;
        }
        Ok(opts)
    }

    /// `apt-get -s install` against the private state: (package, version) of every package a
    /// fresh system would install.
    fn simulate(
        &self,
        opts: &[String],
        requested: &[String],
    ) -> Result<Vec<(String, String)>, DebError> {
        let mut args = option_args(opts);
        args.extend(
            ["-s", "-q", "--no-install-recommends", "install"]
                .iter()
                .map(|s| s.to_string()),
        );
        args.extend(requested.iter().cloned());
        let out = match self.run_apt_owned(&self.apt_get, &args, &requested.join(" "), None) {
            Ok(out) => out,
            Err(DebError::UnknownPackage { stderr, .. }) => {
                let named = unknown_in(&stderr, requested).unwrap_or_else(|| requested.join(" "));
                return Err(DebError::UnknownPackage {
                    package: named,
                    stderr,
                });
            }
            Err(e) => return Err(e),
        };
        let list = parse_simulation(&out);
        if list.is_empty() {
            return Err(DebError::Apt {
                package: requested.join(" "),
                command: "apt-get -s install".into(),
                status: "exit status 0".into(),
                stderr: "apt planned no package to install".into(),
            });
        }
        Ok(list)
    }

    /// Download every (package, version) the cache lacks in one `apt-get download`, into a temp
    /// folder: a failed download leaves nothing behind.
    fn download_all(
        &self,
        opts: &[String],
        requested: &[String],
        resolved: &[(String, String)],
    ) -> Result<Vec<(Deb, bool)>, DebError> {
        let debs_dir = self.debs_dir();
        fs::create_dir_all(&debs_dir).map_err(io_err("create", &debs_dir))?;
        let tmp = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(&debs_dir)
            .map_err(io_err("create a temp dir in", &debs_dir))?;
        let mut args = option_args(opts);
        args.extend(["download", "-q"].iter().map(|s| s.to_string()));
        args.extend(resolved.iter().map(|(p, v)| format!("{p}={v}")));
        if let Err(e) =
            self.run_apt_owned(&self.apt_get, &args, &requested.join(" "), Some(tmp.path()))
        {
            return Err(match e {
                DebError::Apt { stderr, status, .. } => DebError::Download {
                    packages: failed_downloads(&stderr, resolved),
                    status,
                    stderr,
                },
                other => other,
            });
        }
        let mut files = Vec::new();
        for entry in fs::read_dir(tmp.path()).map_err(io_err("list", tmp.path()))? {
            let entry = entry.map_err(io_err("list", tmp.path()))?;
            if entry.path().extension() == Some(OsStr::new("deb")) {
                files.push(entry.path());
            }
        }
        files.sort();
        let mut out = Vec::new();
        for file in files {
            let sha256 = sha256_file(&file)?;
            let fields = read_control_fields(&file)?;
            let dest = self.deb_path(&sha256);
            fs::rename(&file, &dest).map_err(io_err("move a download to", &dest))?;
            let essential = fields
                .get("Essential")
                .is_some_and(|v| v.eq_ignore_ascii_case("yes"));
            out.push((
                Deb {
                    package: fields.get("Package").cloned().unwrap_or_default(),
                    version: fields.get("Version").cloned().unwrap_or_default(),
                    sha256,
                    path: dest,
                },
                essential,
            ));
        }
        let got: BTreeSet<&str> = out.iter().map(|(d, _)| d.package.as_str()).collect();
        let missing: Vec<String> = resolved
            .iter()
            .filter(|(p, _)| !got.contains(p.as_str()))
            .map(|(p, _)| p.clone())
            .collect();
        if !missing.is_empty() {
            return Err(DebError::Download {
                packages: missing,
                status: "exit status 0".into(),
                stderr: "apt-get download reported success but wrote no .deb for these".into(),
            });
        }
        tracing::info!(count = out.len(), "package set downloaded");
        Ok(out)
    }

    fn run_apt_owned(
        &self,
        program: &Path,
        args: &[String],
        package: &str,
        cwd: Option<&Path>,
    ) -> Result<String, DebError> {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run_apt(program, &refs, package, cwd)
    }
}

/// The private dpkg status: [`SCRIPT_ONLY`] packages the recipe does not name, as installed.
fn fake_status(requested: &[String]) -> String {
    let mut s = String::new();
    for p in SCRIPT_ONLY
        .iter()
        .filter(|p| !requested.iter().any(|r| r == *p))
    {
        s.push_str(&format!(
            "Package: {p}\nStatus: install ok installed\nPriority: required\nVersion: 9999\nArchitecture: amd64\nMulti-Arch: foreign\nDescription: treated as installed by Kiln\n\n"
        ));
    }
    s
}

/// Package names in a cached package's Depends and Pre-Depends.
fn deb_depends(deb: &Deb) -> Vec<String> {
    let Ok(fields) = read_control_fields(&deb.path) else {
        return Vec::new();
    };
    ["Depends", "Pre-Depends"]
        .iter()
        .filter_map(|k| fields.get(*k))
        .flat_map(|v| v.split([',', '|']))
        .filter_map(|d| d.split_whitespace().next())
        .map(|d| d.split(':').next().unwrap_or(d).to_string())
        .collect()
}

/// Whether this process runs as root (the owner of `/proc/self`).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn option_args(opts: &[String]) -> Vec<String> {
    opts.iter()
        .flat_map(|o| ["-o".to_string(), o.clone()])
        .collect()
}

/// Copy the host's package lists (`*Packages*`, `*Release*`) into the private lists folder when
/// they differ (size or mtime); remove private lists the host no longer has. Returns how many
/// `Packages` files the private folder holds.
fn sync_lists(host: &Path, private: &Path) -> Result<usize, DebError> {
    let wanted = |name: &str| name.contains("_Packages") || name.ends_with("Release");
    let mut host_names = BTreeSet::new();
    if let Ok(rd) = fs::read_dir(host) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() || !wanted(&name) {
                continue;
            }
            host_names.insert(name.clone());
            let dest = private.join(&name);
            let same = fs::metadata(&dest)
                .is_ok_and(|d| d.len() == meta.len() && d.modified().ok() == meta.modified().ok());
            if same {
                continue;
            }
            let tmp = private.join(format!(".{name}.tmp"));
            fs::copy(e.path(), &tmp).map_err(io_err("copy", &e.path()))?;
            if let Ok(m) = meta.modified() {
                let _ = fs::File::options()
                    .write(true)
                    .open(&tmp)
                    .and_then(|f| f.set_modified(m));
            }
            fs::rename(&tmp, &dest).map_err(io_err("move into place", &dest))?;
        }
    }
    let mut packages = 0;
    if !host_names.is_empty() {
        for e in fs::read_dir(private)
            .map_err(io_err("list", private))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if wanted(&name) && !host_names.contains(&name) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    for e in fs::read_dir(private)
        .map_err(io_err("list", private))?
        .flatten()
    {
        if e.file_name().to_string_lossy().contains("_Packages") {
            packages += 1;
        }
    }
    Ok(packages)
}

/// The `Inst NAME (VERSION …)` lines of `apt-get -s install`.
pub fn parse_simulation(out: &str) -> Vec<(String, String)> {
    let mut list = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(name) = words.next() else { continue };
        // "Inst foo [old] (new …)" on upgrades; we always start from nothing, but be lenient.
        let version = words.find_map(|w| w.strip_prefix('(')).map(str::to_string);
        if let Some(v) = version {
            let name = name.split(':').next().unwrap_or(name);
            list.push((name.to_string(), v));
        }
    }
    list
}

/// The requested name apt said it cannot find.
fn unknown_in(stderr: &str, requested: &[String]) -> Option<String> {
    let named: Vec<&String> = requested
        .iter()
        .filter(|p| {
            stderr.lines().any(|l| {
                (l.contains("Unable to locate package")
                    || l.contains("has no installation candidate")
                    || l.contains("has no candidate"))
                    && l.split(|c: char| c.is_whitespace() || c == '\'' || c == '"')
                        .any(|w| w == p.as_str())
            })
        })
        .collect();
    (!named.is_empty()).then(|| {
        named
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// The packages whose download apt reported as failed (all of them when it does not say).
fn failed_downloads(stderr: &str, resolved: &[(String, String)]) -> Vec<String> {
    let failed: Vec<String> = resolved
        .iter()
        .filter(|(p, _)| {
            stderr.lines().any(|l| {
                l.contains("Failed to fetch") && l.contains(&format!("/{p}_"))
                    || l.contains(&format!("package {p}"))
            })
        })
        .map(|(p, _)| p.clone())
        .collect();
    if failed.is_empty() {
        resolved.iter().map(|(p, _)| p.clone()).collect()
    } else {
        failed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn simulation_lines_are_parsed() {
        let out =
            "Reading package lists...\nInst libc6 (2.36-9+deb12u10 Debian:12.11/stable [amd64])\n\
                   Inst nginx-common (1.22.1-9 Debian:12.11/stable [all])\nConf libc6 (2.36-9)\n\
                   Inst libfoo:amd64 [1.0] (1.1 Debian [amd64])\n";
        assert_eq!(
            parse_simulation(out),
            vec![
                ("libc6".to_string(), "2.36-9+deb12u10".to_string()),
                ("nginx-common".to_string(), "1.22.1-9".to_string()),
                ("libfoo".to_string(), "1.1".to_string()),
            ]
        );
    }

    #[test]
    fn unknown_and_failed_packages_are_named() {
        let req = vec!["nginx-light".to_string(), "no-such-pkg".to_string()];
        assert_eq!(
            unknown_in("E: Unable to locate package no-such-pkg", &req).as_deref(),
            Some("no-such-pkg")
        );
        let resolved = vec![
            ("libc6".to_string(), "1".to_string()),
            ("nginx".to_string(), "2".to_string()),
        ];
        assert_eq!(
            failed_downloads(
                "E: Failed to fetch http://deb.debian.org/debian/pool/main/n/nginx/nginx_2_amd64.deb  Could not connect",
                &resolved
            ),
            vec!["nginx".to_string()]
        );
        assert_eq!(failed_downloads("E: something", &resolved).len(), 2);
    }

    fn fake_apt(dir: &Path, download: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("apt-get");
        let text = format!(
            "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in\n  -s) echo 'Inst foo (1.0 Debian [amd64])'; echo 'Inst libbar (2.0 Debian [amd64])'; exit 0;;\n  download) {download};;\n  update) exit 0;;\nesac; done\nexit 0\n"
        );
        fs::write(&script, text).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    #[test]
    fn failed_download_names_packages_and_leaves_cache_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let apt = fake_apt(
            tmp.path(),
            "echo 'E: Failed to fetch http://deb.example/pool/main/l/libbar/libbar_2.0_amd64.deb  Could not connect' >&2; exit 100",
        );
        let root = tmp.path().join("cache");
        let cache = Cache::new(root.clone()).with_apt_programs(&apt, "/nonexistent/apt-cache");
        let err = cache.fetch_set(&["foo".to_string()], false).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, DebError::Download { packages, .. } if packages == &vec!["libbar".to_string()]),
            "{msg}"
        );
        assert!(
            msg.contains("libbar") && msg.contains("cache was left unchanged"),
            "{msg}"
        );
        let left: Vec<_> = fs::read_dir(root.join("debs"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "download leftovers: {left:?}");
        assert!(!root.join("sets").exists());
    }

    #[test]
    fn success_without_a_deb_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let apt = fake_apt(tmp.path(), "exit 0");
        let cache =
            Cache::new(tmp.path().join("c")).with_apt_programs(&apt, "/nonexistent/apt-cache");
        let err = cache.fetch_set(&["foo".to_string()], false).unwrap_err();
        assert!(
            matches!(&err, DebError::Download { packages, .. } if packages.len() == 2),
            "{err}"
        );
    }

    #[test]
    fn lists_are_synced_and_stale_ones_dropped() {
        let host = tempfile::tempdir().unwrap();
        let private = tempfile::tempdir().unwrap();
        fs::write(host.path().join("x_dists_bookworm_InRelease"), "r").unwrap();
        fs::write(host.path().join("x_main_binary-amd64_Packages.lz4"), "p").unwrap();
        fs::write(host.path().join("lock"), "").unwrap();
        fs::write(private.path().join("old_main_binary-amd64_Packages"), "o").unwrap();
        assert_eq!(sync_lists(host.path(), private.path()).unwrap(), 1);
        assert!(private.path().join("x_dists_bookworm_InRelease").is_file());
        assert!(!private.path().join("lock").exists());
        assert!(!private
            .path()
            .join("old_main_binary-amd64_Packages")
            .exists());
        // Unchanged files are not copied again (same size and mtime): still one Packages file.
        assert_eq!(sync_lists(host.path(), private.path()).unwrap(), 1);
    }
}
