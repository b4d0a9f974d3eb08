//! smolBSD service folders as they are: `kiln import smolbsd SERVICE -o RECIPE` turns
//! `service/NAME/` (etc/rc, postinst/*.sh, options.mk, and the tree's `service/common/`) into a
//! Kiln recipe for a NetBSD guest, or with `--guest linux` for a Linux guest (busybox and
//! kiln-init standing in for NetBSD's userland and init, Kiln's stand-ins for the
//! `/etc/include` helpers the service sources but lacks), mapping what options.mk says that
//! Kiln has a key for and reporting every line it does not map, never dropping one silently.
//!
//! The recipe is written into a temporary folder beside RECIPE and renamed into place whole.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Why a folder could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The folder is not a smolBSD service.
    #[error("{}: not a smolBSD service folder ({why}); give service/NAME, the folder holding etc/rc", .path.display())]
    NotAService {
        /// The folder given.
        path: PathBuf,
        /// What is missing.
        why: String,
    },
    /// The output exists already.
    #[error("{}: exists already; give a new folder to -o (or remove it)", .0.display())]
    OutputExists(PathBuf),
    /// A file could not be read or written.
    #[error("{}: {error}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}

impl ImportError {
    /// Whether the user's input is at fault (exit 2).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, ImportError::Io { .. })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |error| ImportError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// One line of options.mk that counts: an assignment, or a make(1) directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MkLine {
    /// `KEY=VALUE` (also `?=`, `+=`, `:=`), with whether a `.if` encloses it.
    Assign {
        /// 1-based line (of the first physical line).
        line: usize,
        /// The variable.
        key: String,
        /// `=`, `?=`, `+=` or `:=`.
        op: String,
        /// The value, trimmed.
        value: String,
        /// Inside a `.if` … `.endif`.
        conditional: bool,
    },
    /// Anything else that is not a comment or blank: a directive (`.if`, `.include`) or text
    /// Kiln does not read.
    Other {
        /// 1-based line.
        line: usize,
        /// The text.
        text: String,
    },
}

/// Parse options.mk: comments (`#`), blank lines, `\` continuations, assignments and the rest.
pub fn parse_options_mk(text: &str) -> Vec<MkLine> {
    let mut out = vec![];
    let mut depth = 0usize;
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let (start, mut line) = match pending.take() {
            Some((s, mut acc)) => {
                acc.push(' ');
                acc.push_str(raw.trim());
                (s, acc)
            }
            None => (i + 1, raw.to_string()),
        };
        if line.ends_with('\\') {
            line.pop();
            pending = Some((start, line));
            continue;
        }
        let body = match line.find('#') {
            Some(h) => line[..h].trim(),
            None => line.trim(),
        };
        if body.is_empty() {
            continue;
        }
        if let Some(d) = body.strip_prefix('.') {
            let word = d.split_whitespace().next().unwrap_or("");
            if word.starts_with("if") {
                depth += 1;
            } else if word == "endif" {
                depth = depth.saturating_sub(1);
            }
            out.push(MkLine::Other {
                line: start,
                text: body.to_string(),
            });
            continue;
        }
        let assign = ["?=", "+=", ":=", "="].iter().find_map(|op| {
            body.find(op).map(|at| {
                let key = body[..at].trim();
                (key, *op, body[at + op.len()..].trim())
            })
        });
        match assign {
            Some((key, op, value))
                if !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') =>
            {
                out.push(MkLine::Assign {
                    line: start,
                    key: key.to_string(),
                    op: op.to_string(),
                    value: value.split_whitespace().collect::<Vec<_>>().join(" "),
                    conditional: depth > 0,
                })
            }
            _ => out.push(MkLine::Other {
                line: start,
                text: body.to_string(),
            }),
        }
    }
    out
}

/// What an import made and what it left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The recipe's kiln.toml.
    pub kiln_toml: String,
    /// What was mapped, one line each (`options.mk:2: IMGSIZE=1024 → [image] size_mib = 1024`).
    pub mapped: Vec<String>,
    /// What was not, with why and what to do.
    pub not_mapped: Vec<String>,
    /// Files to put in place before `kiln build` (the kernel, the sets).
    pub to_supply: Vec<String>,
}

/// One unconditional assignment of options.mk: the line as the report shows it, the key, the
/// operator and the value.
struct Assignment<'a> {
    shown: String,
    key: &'a str,
    op: &'a str,
    value: &'a str,
}

/// The assignments of `options` a mapping reads; make(1) directives and what a `.if` guards
/// are reported in `r` as not mapped, `why` saying what the guest is built from.
fn assignments<'a>(options: &'a [MkLine], r: &mut Report, why: &str) -> Vec<Assignment<'a>> {
    let mut out = vec![];
    for l in options {
        match l {
            MkLine::Other { line, text } => r.not_mapped.push(format!(
                "options.mk:{line}: `{text}`: make(1) directives are not evaluated{why}; what they guard is reported below"
            )),
            MkLine::Assign {
                line,
                key,
                op,
                value,
                conditional,
            } => {
                let shown = format!("options.mk:{line}: {key}{op}{value}");
                if *conditional {
                    r.not_mapped.push(format!(
                        "{shown}: inside a .if, not evaluated: set it in kiln.toml by hand if it applies"
                    ));
                } else {
                    out.push(Assignment {
                        shown,
                        key,
                        op,
                        value,
                    });
                }
            }
        }
    }
    out
}

/// Map `name`'s options.mk lines (none when it has no options.mk) to a kiln.toml and the report.
pub fn map_service(name: &str, options: &[MkLine]) -> Report {
    let mut r = Report::default();
    let mut size_mib: Option<u64> = None;
    let mut sets: Vec<String> = vec![];
    let mut sets_given = false;
    let mut extra: Vec<String> = vec![];
    let why = " (Kiln builds for amd64, from the sets you supply)";
    for Assignment {
        shown,
        key,
        op,
        value,
    } in assignments(options, &mut r, why)
    {
        match key {
            "IMGSIZE" => match value.parse::<u64>() {
                Ok(n) if n > 0 => {
                    size_mib = Some(n);
                    r.mapped.push(format!("{shown} → [image] size_mib = {n}"));
                }
                _ => r.not_mapped.push(format!(
                    "{shown}: not a size in megabytes; set [image] size_mib by hand"
                )),
            },
            "SETS" | "ADDSETS" | "ADDPKGS" => {
                let dir = if key == "ADDPKGS" { "packages" } else { "sets" };
                if key == "SETS" {
                    sets_given = true;
                    if op != "+=" {
                        sets.clear();
                    }
                }
                let mut names = vec![];
                for w in value.split_whitespace() {
                    let file = Path::new(w)
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_else(|| w.to_string());
                    let p = format!("{dir}/{file}");
                    names.push(p.clone());
                    if key == "SETS" {
                        sets.push(p);
                    } else {
                        extra.push(p);
                    }
                }
                r.mapped.push(format!(
                    "{shown} → sets: {}{}",
                    names.join(", "),
                    if key == "ADDPKGS" {
                        " (packages are tarballs unpacked over the root, as smolBSD's postinst does)"
                    } else {
                        ""
                    }
                ));
            }
            "MOUNTRO" => r.not_mapped.push(format!(
                "{shown}: a read-only root is not offered for BSD guests; the root runs on a snapshot overlay, so the image stays as built anyway"
            )),
            "BASE" => r.not_mapped.push(format!(
                "{shown}: Kiln builds the root from the sets, not from a base image: list what the base image holds in SETS"
            )),
            "ARCH" | "PKGVERS" => r.not_mapped.push(format!(
                "{shown}: Kiln builds amd64 guests from the sets you supply; fetch the sets of that version"
            )),
            _ => r.not_mapped.push(format!(
                "{shown}: Kiln has no key for {key}; if postinst reads it, set it there"
            )),
        }
    }
    if !sets_given {
        sets = vec!["sets/base.tgz".into(), "sets/etc.tgz".into()];
        r.mapped.push(
            "no SETS in options.mk → sets: sets/base.tgz, sets/etc.tgz (smolBSD's base image)"
                .into(),
        );
    }
    sets.extend(extra);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Imported from the smolBSD service `{name}` by `kiln import smolbsd` (see docs/bsd.md)."
    );
    t.push_str("# Put the kernel and the sets in place first (Kiln cannot download them):\n");
    t.push_str("#   netbsd-SMOL  smolBSD's PVH kernel (https://smolbsd.org/assets/netbsd-SMOL)\n");
    for s in &sets {
        let _ = writeln!(t, "#   {s}");
    }
    let _ = writeln!(t, "name = {}", crate::config::toml_string(name));
    let _ = writeln!(
        t,
        "description = {}",
        crate::config::toml_string(&format!("smolBSD service {name}"))
    );
    t.push_str("guest = \"netbsd\"\nkernel = \"netbsd-SMOL\"\n");
    let list: Vec<String> = sets.iter().map(|s| crate::config::toml_string(s)).collect();
    let _ = writeln!(t, "sets = [{}]", list.join(", "));
    if let Some(n) = size_mib {
        let _ = writeln!(t, "\n[image]\nsize_mib = {n}");
    }
    r.to_supply.push("netbsd-SMOL (the kernel)".into());
    r.to_supply.extend(sets);
    r.kiln_toml = t;
    r
}

/// The guest a smolBSD service is imported for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Guest {
    /// NetBSD, from the sets and kernel the user supplies (smolBSD's own guest).
    #[default]
    NetBsd,
    /// Linux: Kiln's tiny kernel, busybox and kiln-init in place of NetBSD's.
    Linux,
}

/// The `/etc/include` helpers smolBSD services source, as Kiln provides them to a Linux guest
/// whose service folder lacks them: (file name, text).
pub const LINUX_HELPERS: &[(&str, &str)] = &[
    (
        "basicrc",
        "# Kiln's stand-in for smolBSD's common/basicrc on a Linux guest: kiln-init has mounted\n\
         # the filesystems and configured lo and eth0 (10.0.2.15/24 via 10.0.2.2) already.\n\
         export HOME=/\n\
         export PATH=/sbin:/bin:/usr/sbin:/usr/bin:/usr/pkg/bin:/usr/pkg/sbin\n\
         export TERM=dumb\n\
         umask 022\n",
    ),
    (
        "shutdown",
        "# Kiln's stand-in for smolBSD's shutdown helper on a Linux guest: when rc ends,\n\
         # kiln-init syncs and powers the VM off.\n\
         sync\n\
         exit 0\n",
    ),
];

/// Map `name`'s options.mk lines for a Linux guest: IMGSIZE → an ext4 disk of that size,
/// MOUNTRO → a read-only erofs root; NetBSD's sets and packages have no Linux meaning.
pub fn map_service_linux(name: &str, options: &[MkLine]) -> Report {
    let mut r = Report::default();
    let mut size: Option<(String, u64)> = None;
    let mut mountro: Option<String> = None;
    for Assignment {
        shown,
        key,
        op: _,
        value,
    } in assignments(options, &mut r, "")
    {
        match key {
            "IMGSIZE" => match value.parse::<u64>() {
                Ok(n) if (8..=65536).contains(&n) => size = Some((shown, n)),
                _ => r.not_mapped.push(format!(
                    "{shown}: not a size in megabytes from 8 to 65536; set [image] size_mib by hand"
                )),
            },
            "MOUNTRO" => {
                if matches!(value.to_ascii_lowercase().as_str(), "y" | "yes" | "1" | "true") {
                    mountro = Some(shown);
                } else {
                    r.mapped.push(format!("{shown} → a writable root (the default)"));
                }
            }
            "SETS" | "ADDSETS" | "ADDPKGS" => r.not_mapped.push(format!(
                "{shown}: NetBSD sets and packages do not run on a Linux guest; its programs come from busybox, [root] binaries (host files with their libraries) or packages = [...] (Debian): list what the service needs there"
            )),
            "BASE" | "ARCH" | "PKGVERS" => r.not_mapped.push(format!(
                "{shown}: a NetBSD build setting; a Linux guest is built for amd64 from busybox and Debian"
            )),
            _ => r.not_mapped.push(format!(
                "{shown}: Kiln has no key for {key}; if postinst reads it, set it there"
            )),
        }
    }
    let mut image = String::new();
    match (&mountro, &size) {
        (Some(ro), sized) => {
            image.push_str("format = \"erofs\"\n");
            r.mapped.push(format!(
                "{ro} → [image] format = \"erofs\" (a read-only root many VMs share; writes go to RAM and end with the VM)"
            ));
            if let Some((shown, _)) = sized {
                r.not_mapped.push(format!(
                    "{shown}: an erofs root is as big as its files (MOUNTRO made it erofs); no size to set"
                ));
            }
        }
        (None, Some((shown, n))) => {
            let _ = write!(image, "format = \"disk\"\nsize_mib = {n}\n");
            r.mapped.push(format!(
                "{shown} → [image] format = \"disk\", size_mib = {n} (an ext4 root of that size)"
            ));
        }
        (None, None) => {}
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Imported from the smolBSD service `{name}` by `kiln import smolbsd --guest linux`\n\
         # (see docs/bsd.md): a Linux guest, busybox and kiln-init in place of NetBSD's userland\n\
         # and init; etc/rc runs once the network is up, and the VM powers off when it ends."
    );
    let _ = writeln!(t, "name = {}", crate::config::toml_string(name));
    let _ = writeln!(
        t,
        "description = {}",
        crate::config::toml_string(&format!("smolBSD service {name}, as a Linux guest"))
    );
    if !image.is_empty() {
        let _ = write!(t, "\n[image]\n{image}");
    }
    r.kiln_toml = t;
    r
}

/// Import the smolBSD service folder `service` into a new recipe folder `out`: kiln.toml from
/// options.mk, `etc/rc`, the rest of `etc/` as `files/etc/`, `postinst/`, and `common/` (the
/// service's own, else the tree's `service/common/`).
pub fn import(service: &Path, out: &Path, guest: Guest) -> Result<Report, ImportError> {
    let not = |why: &str| ImportError::NotAService {
        path: service.to_path_buf(),
        why: why.into(),
    };
    if !service.is_dir() {
        return Err(not("not a folder"));
    }
    if !service.join("etc/rc").is_file() {
        return Err(not("it has no etc/rc"));
    }
    if service.join("kiln.toml").exists() {
        return Err(not("it has a kiln.toml: it is a Kiln recipe already"));
    }
    if out.symlink_metadata().is_ok() {
        return Err(ImportError::OutputExists(out.to_path_buf()));
    }
    let name = service
        .canonicalize()
        .map_err(io(service))?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "service".into());
    let mk = service.join("options.mk");
    let options = if mk.is_file() {
        parse_options_mk(&std::fs::read_to_string(&mk).map_err(io(&mk))?)
    } else {
        vec![]
    };
    let mut report = match guest {
        Guest::NetBsd => map_service(&name, &options),
        Guest::Linux => map_service_linux(&name, &options),
    };

    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-import-")
        .tempdir_in(parent)
        .map_err(io(parent))?;
    let t = tmp.path();
    std::fs::write(t.join("kiln.toml"), &report.kiln_toml).map_err(io(&t.join("kiln.toml")))?;
    copy_tree(&service.join("etc"), &t.join("files/etc"))?;
    std::fs::create_dir_all(t.join("etc")).map_err(io(t))?;
    std::fs::rename(t.join("files/etc/rc"), t.join("etc/rc")).map_err(io(t))?;
    // An etc/ that held only rc leaves an empty overlay behind: drop it.
    let _ = std::fs::remove_dir(t.join("files/etc"));
    let _ = std::fs::remove_dir(t.join("files"));
    if service.join("postinst").is_dir() {
        copy_tree(&service.join("postinst"), &t.join("postinst"))?;
    }
    let common = [service.join("common"), service.join("../common")]
        .into_iter()
        .find(|c| c.is_dir());
    if let Some(c) = &common {
        copy_tree(c, &t.join("common"))?;
        report.mapped.push(format!(
            "{} → common/ (installed as /etc/include)",
            c.display()
        ));
    }
    if guest == Guest::Linux {
        let dir = t.join("common");
        for (file, text) in LINUX_HELPERS {
            let p = dir.join(file);
            if !p.exists() {
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                std::fs::write(&p, text).map_err(io(&p))?;
                report.mapped.push(format!(
                    "/etc/include/{file}: the service has none; Kiln's Linux stand-in provided (common/{file})"
                ));
            }
        }
    }
    for e in std::fs::read_dir(service).map_err(io(service))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !["etc", "postinst", "common", "options.mk"].contains(&n.as_str()) {
            report.not_mapped.push(format!(
                "{n}: smolBSD's mkimg.sh does not read it either; copy it into files/ if the image needs it"
            ));
        }
    }
    // Readable by the build sandbox and the user, as a checked-out recipe would be.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(t, std::fs::Permissions::from_mode(0o755)).map_err(io(t))?;
    let kept = tmp.keep();
    std::fs::rename(&kept, out).map_err(|error| {
        let _ = std::fs::remove_dir_all(&kept);
        ImportError::Io {
            path: out.to_path_buf(),
            error,
        }
    })?;
    Ok(report)
}

/// Copy a folder's files, links and subfolders (modes kept; links as links).
fn copy_tree(from: &Path, to: &Path) -> Result<(), ImportError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for e in std::fs::read_dir(from).map_err(io(from))? {
        let e = e.map_err(io(from))?;
        let (src, dest) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().map_err(io(&src))?;
        if ft.is_symlink() {
            let target = std::fs::read_link(&src).map_err(io(&src))?;
            std::os::unix::fs::symlink(target, &dest).map_err(io(&dest))?;
        } else if ft.is_dir() {
            copy_tree(&src, &dest)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dest).map_err(io(&src))?;
        } else {
            return Err(ImportError::NotAService {
                path: src,
                why: "a FIFO, socket or device node: not something a service folder holds".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NBAKERY: &str = "# size of resulting inage in megabytes\nIMGSIZE=1024\n# as of 202510, there's no NetBSD 11 packages for !amd64\n.if defined(ARCH) && ${ARCH} != \"amd64\"\nPKGVERS=10.1\n.endif\n";

    #[test]
    fn the_readmes_options_mk_parses() {
        let l = parse_options_mk(NBAKERY);
        assert_eq!(
            l[0],
            MkLine::Assign {
                line: 2,
                key: "IMGSIZE".into(),
                op: "=".into(),
                value: "1024".into(),
                conditional: false
            }
        );
        assert!(matches!(&l[1], MkLine::Other { line: 4, text } if text.starts_with(".if")));
        assert!(matches!(&l[2], MkLine::Assign { key, conditional: true, .. } if key == "PKGVERS"));
        assert!(matches!(&l[3], MkLine::Other { line: 6, .. }));
        assert_eq!(l.len(), 4);
    }

    #[test]
    fn continuations_and_operators() {
        let l = parse_options_mk("SETS= base.tgz \\\n  etc.tgz # the two\nADDPKGS+=pkgs/bozohttpd-1.tgz\nnot an assignment\n");
        assert!(
            matches!(&l[0], MkLine::Assign { line: 1, key, op, value, .. } if key == "SETS" && op == "=" && value == "base.tgz etc.tgz")
        );
        assert!(matches!(&l[1], MkLine::Assign { key, op, .. } if key == "ADDPKGS" && op == "+="));
        assert!(matches!(&l[2], MkLine::Other { line: 4, .. }));
    }

    #[test]
    fn every_line_is_mapped_or_reported() {
        let text = format!("{NBAKERY}SETS=base.tgz etc.tgz comp.tgz\nADDPKGS=/pkgs/bozohttpd-1.tgz\nMOUNTRO=y\nFOO=bar\nIMGSIZE=big\n");
        let l = parse_options_mk(&text);
        let r = map_service("bozo", &l);
        // Each line of the file that is not a comment shows up once, mapped or not.
        for line in [2, 4, 5, 6, 7, 8, 9, 10, 11] {
            let tag = format!("options.mk:{line}:");
            let n = r
                .mapped
                .iter()
                .chain(&r.not_mapped)
                .filter(|m| m.starts_with(&tag))
                .count();
            assert_eq!(n, 1, "{tag} in {r:#?}");
        }
        assert!(r.kiln_toml.contains("guest = \"netbsd\""));
        assert!(r.kiln_toml.contains(
            "sets = [\"sets/base.tgz\", \"sets/etc.tgz\", \"sets/comp.tgz\", \"packages/bozohttpd-1.tgz\"]"
        ));
        assert!(r.kiln_toml.contains("[image]\nsize_mib = 1024"));
        assert!(r.not_mapped.iter().any(|m| m.contains("MOUNTRO=y")));
        assert!(r.not_mapped.iter().any(|m| m.contains("FOO=bar")));
        assert!(r.not_mapped.iter().any(|m| m.contains("IMGSIZE=big")));
        // The kiln.toml is a recipe Kiln reads.
        let cfg = crate::Config::parse(&r.kiln_toml).expect("kiln.toml parses");
        assert_eq!(cfg.image.size_mib, Some(1024));
    }

    #[test]
    fn no_options_mk_gives_smolbsds_base_sets() {
        let r = map_service("rescue", &[]);
        assert!(r
            .kiln_toml
            .contains("sets = [\"sets/base.tgz\", \"sets/etc.tgz\"]"));
        assert!(!r.kiln_toml.contains("[image]"));
        assert!(r.not_mapped.is_empty());
    }

    #[test]
    fn a_linux_guest_maps_imgsize_to_a_disk_and_mountro_to_erofs() {
        let r = map_service_linux(
            "bozo",
            &parse_options_mk("IMGSIZE=64\nADDPKGS=/p/bozo.tgz\n"),
        );
        assert!(
            r.kiln_toml.contains("format = \"disk\"\nsize_mib = 64"),
            "{}",
            r.kiln_toml
        );
        assert!(!r.kiln_toml.contains("guest ="), "{}", r.kiln_toml);
        assert!(r
            .not_mapped
            .iter()
            .any(|m| m.starts_with("options.mk:2: ADDPKGS")));
        assert!(r.to_supply.is_empty());
        let r = map_service_linux("bozo", &parse_options_mk("MOUNTRO=y\nIMGSIZE=64\n"));
        assert!(
            r.kiln_toml.contains("format = \"erofs\""),
            "{}",
            r.kiln_toml
        );
        assert!(!r.kiln_toml.contains("size_mib"), "{}", r.kiln_toml);
        assert!(r
            .not_mapped
            .iter()
            .any(|m| m.starts_with("options.mk:2: IMGSIZE=64")));
        let r = map_service_linux("x", &parse_options_mk("IMGSIZE=4\nMOUNTRO=no\n"));
        assert!(!r.kiln_toml.contains("[image]"), "{}", r.kiln_toml);
        assert!(r.not_mapped.iter().any(|m| m.contains("from 8 to 65536")));
        assert!(r.mapped.iter().any(|m| m.contains("writable root")));
        // What it writes is a valid recipe.
        crate::Config::parse(&r.kiln_toml).expect("parses");
        crate::Config::parse(&map_service_linux("y", &parse_options_mk("MOUNTRO=y")).kiln_toml)
            .expect("parses");
    }
}
