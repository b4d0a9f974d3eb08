//! The index: the files to keep from a recipe's packages (and its `from` image), one per line, in
//! the format of CBSD's `copy-binlib` index (absolute paths; `#` starts a comment), with shell
//! globs (`*`, `?`, `[...]`, and `**` for any depth).
//!
//! Each line is matched against the package sysroot first, then the host; a line that matches
//! nothing is an error naming the file and line. An image's tree is matched alone, never the
//! host. The ELF closure of the kept executables and libraries is added by the caller.

use crate::packages::PackageRoot;
use std::path::{Path, PathBuf};

/// A compiled index glob (also used by `kiln trace --exclude`).
pub use glob::Pattern as Glob;

/// A refused index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The index file could not be read.
    #[error("cannot read the index {}: {error}", .file.display())]
    Read {
        /// The index file.
        file: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// A line is not an absolute path or pattern.
    #[error("{}:{line}: `{text}` is not an absolute path; index lines look like /usr/sbin/nginx or /etc/nginx/**", .file.display())]
    NotAbsolute {
        /// The index file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The line.
        text: String,
    },
    /// A line is not a valid glob.
    #[error("{}:{line}: `{text}` is not a valid pattern ({message})", .file.display())]
    BadPattern {
        /// The index file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The line.
        text: String,
        /// The parser's message.
        message: String,
    },
    /// A line has more wildcards than can be matched in reasonable time.
    #[error("{}:{line}: `{text}` has {count} wildcards (`*`, `**`); at most {MAX_WILDCARDS} are allowed in a line (each one multiplies the matching work): split it into several lines", .file.display())]
    TooManyWildcards {
        /// The index file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The line.
        text: String,
        /// How many runs of `*` it has.
        count: usize,
    },
    /// A line matches no file of the packages or the host.
    #[error("{}:{line}: `{text}` matches no file of the recipe's packages nor of this host; fix the path, add the package that has it to `packages`, or remove the line", .file.display())]
    NoMatch {
        /// The index file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The line.
        text: String,
    },
    /// A line matches no file of any tree the recipe's index chooses from.
    #[error("{}:{line}: `{text}` matches no file of {sources}; fix the path or remove the line", .file.display())]
    NoMatchIn {
        /// The index file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The line.
        text: String,
        /// What was looked in: "the `from` image", ….
        sources: String,
    },
}

/// What [`select_from`] matched, and the lines that matched nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// The paths selected, sorted, each once.
    pub selected: Vec<Selected>,
    /// Lines that matched no path.
    pub unmatched: Vec<IndexLine>,
}

/// One meaningful line of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexLine {
    /// 1-based line number.
    pub line: usize,
    /// The path or pattern, trimmed.
    pub text: String,
}

/// Where a matched path is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// In the package sysroot.
    Package,
    /// On the host.
    Host,
}

/// A path selected by the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// The guest path.
    pub path: PathBuf,
    /// Package sysroot or host.
    pub found: Found,
    /// `files.txt:12`.
    pub reason: String,
}

/// The meaningful lines of an index: comments (`#` at the start or after whitespace) and blank
/// lines dropped.
pub fn parse(text: &str) -> Vec<IndexLine> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let mut line = raw;
        let bytes = raw.as_bytes();
        for (j, &b) in bytes.iter().enumerate() {
            if b == b'#' && (j == 0 || bytes[j - 1].is_ascii_whitespace()) {
                line = &raw[..j];
                break;
            }
        }
        let line = line.trim();
        if !line.is_empty() {
            out.push(IndexLine {
                line: i + 1,
                text: line.to_string(),
            });
        }
    }
    out
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Read `file` and select the paths it names: package sysroot first, then the host. Sorted by
/// path, each path once (with the first line that selected it). A line that matches nothing is
/// refused.
pub fn select(file: &Path, packages: &PackageRoot) -> Result<Vec<Selected>, IndexError> {
    let s = select_from(file, packages, true)?;
    if let Some(l) = s.unmatched.into_iter().next() {
        return Err(IndexError::NoMatch {
            file: file.to_path_buf(),
            line: l.line,
            text: l.text,
        });
    }
    Ok(s.selected)
}

/// Read `file` and select the paths it names in the tree `packages`, and with `host` on the
/// host where the tree has nothing; lines that match nothing are returned, for the caller that looks in
/// several trees to refuse those none has.
pub fn select_from(
    file: &Path,
    packages: &PackageRoot,
    host: bool,
) -> Result<Selection, IndexError> {
    let mut unmatched = Vec::new();
    let text = std::fs::read_to_string(file).map_err(|source| IndexError::Read {
        file: file.to_path_buf(),
        error: source,
    })?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string());
    let mut out: std::collections::BTreeMap<PathBuf, Selected> = Default::default();
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    for l in parse(&text) {
        if !l.text.starts_with('/') {
            return Err(IndexError::NotAbsolute {
                file: file.to_path_buf(),
                line: l.line,
                text: l.text,
            });
        }
        let reason = format!("listed in the index {name}:{}", l.line);
        let mut matched: Vec<(PathBuf, Found)> = Vec::new();
        if has_glob(&l.text) {
            let count = wildcards(&l.text);
            if count > MAX_WILDCARDS {
                return Err(IndexError::TooManyWildcards {
                    file: file.to_path_buf(),
                    line: l.line,
                    text: l.text,
                    count,
                });
            }
            let pattern = glob::Pattern::new(&l.text).map_err(|e| IndexError::BadPattern {
                file: file.to_path_buf(),
                line: l.line,
                text: l.text.clone(),
                message: e.msg.to_string(),
            })?;
            matched.extend(
                packages
                    .entries
                    .keys()
                    .filter(|p| pattern.matches_path_with(p, opts))
                    .map(|p| (p.clone(), Found::Package)),
            );
            if matched.is_empty() && host {
                if let Ok(paths) = glob::glob_with(&l.text, opts) {
                    matched.extend(paths.flatten().map(|p| (p, Found::Host)));
                }
            }
        } else {
            let p = PathBuf::from(&l.text);
            let p = normalize(&p);
            if packages.entries.contains_key(&p)
                || std::fs::symlink_metadata(packages.host_path(&p)).is_ok()
            {
                matched.push((p, Found::Package));
            } else if host && std::fs::symlink_metadata(&p).is_ok() {
                matched.push((p, Found::Host));
            }
        }
        if matched.is_empty() {
            unmatched.push(l);
            continue;
        }
        for (path, found) in matched {
            out.entry(path.clone()).or_insert(Selected {
                path,
                found,
                reason: reason.clone(),
            });
        }
    }
    Ok(Selection {
        selected: out.into_values().collect(),
        unmatched,
    })
}

/// `/a//b/./c/` → `/a/b/c`.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        if let std::path::Component::Normal(x) = c {
            out.push(x);
        }
    }
    out
}

/// The most runs of `*` an index line may have. The glob matcher backtracks at each one, so
/// the work grows with the path's length to the power of their number (`make fuzz` found a
/// line that took minutes); real index lines have one or two.
pub const MAX_WILDCARDS: usize = 8;

/// How many runs of `*` (a `**` is one) `text` has.
pub fn wildcards(text: &str) -> usize {
    let mut count = 0;
    let mut in_run = false;
    for c in text.chars() {
        if c == '*' && !in_run {
            count += 1;
        }
        in_run = c == '*';
    }
    count
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::packages::{Entry, EntryKind};

    #[test]
    fn wildcards_are_counted_by_runs() {
        assert_eq!(wildcards("/usr/sbin/nginx"), 0);
        assert_eq!(wildcards("/etc/nginx/**"), 1);
        assert_eq!(wildcards("/usr/lib/*/libnss_*.so*"), 3);
        assert_eq!(wildcards("/a/***"), 1);
        assert_eq!(
            wildcards(&"/*x".repeat(MAX_WILDCARDS + 1)),
            MAX_WILDCARDS + 1
        );
    }

    fn root(paths: &[&str]) -> PackageRoot {
        PackageRoot {
            dir: PathBuf::from("/nonexistent-kiln-test"),
            entries: paths
                .iter()
                .map(|p| {
                    (
                        PathBuf::from(p),
                        Entry {
                            kind: EntryKind::File,
                            package: "pkg 1".into(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let lines = parse("# header\n\n/usr/sbin/nginx  # the server\n/etc/a#b\n   \n");
        assert_eq!(
            lines,
            vec![
                IndexLine {
                    line: 3,
                    text: "/usr/sbin/nginx".into()
                },
                IndexLine {
                    line: 4,
                    text: "/etc/a#b".into()
                },
            ]
        );
    }

    #[test]
    fn globs_match_packages_then_host() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("files.txt");
        std::fs::write(
            &f,
            "/usr/sbin/nginx\n/etc/nginx/*.conf\n/usr/share/nginx/**\n/etc/passwd\n",
        )
        .unwrap();
        let r = root(&[
            "/usr/sbin/nginx",
            "/etc/nginx/nginx.conf",
            "/etc/nginx/sites/default.conf",
            "/usr/share/nginx/html/index.html",
        ]);
        let sel = select(&f, &r).unwrap();
        let got: Vec<(String, Found, String)> = sel
            .iter()
            .map(|s| (s.path.display().to_string(), s.found, s.reason.clone()))
            .collect();
        assert!(got.contains(&(
            "/etc/nginx/nginx.conf".into(),
            Found::Package,
            "listed in the index files.txt:2".into()
        )));
        assert!(
            !got.iter().any(|g| g.0 == "/etc/nginx/sites/default.conf"),
            "* does not cross /: {got:?}"
        );
        assert!(got
            .iter()
            .any(|g| g.0 == "/usr/share/nginx/html/index.html"));
        assert!(got.contains(&(
            "/etc/passwd".into(),
            Found::Host,
            "listed in the index files.txt:4".into()
        )));
    }

    #[test]
    fn a_tree_without_the_host_leaves_host_only_lines_unmatched() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("files.txt");
        std::fs::write(&f, "/usr/sbin/nginx\n/etc/passwd\n/etc/pass*\n").unwrap();
        let r = root(&["/usr/sbin/nginx"]);
        let image = select_from(&f, &r, false).unwrap();
        assert_eq!(image.selected.len(), 1);
        assert_eq!(
            image
                .unmatched
                .iter()
                .map(|l| (l.line, l.text.as_str()))
                .collect::<Vec<_>>(),
            [(2, "/etc/passwd"), (3, "/etc/pass*")]
        );
        let with_host = select_from(&f, &r, true).unwrap();
        assert!(with_host.unmatched.is_empty(), "{with_host:?}");
        assert!(with_host.selected.iter().any(|s| s.found == Found::Host));
    }

    #[test]
    fn unmatched_line_is_named_with_its_number() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("files.txt");
        std::fs::write(&f, "# ok\n/usr/sbin/nginx\n/usr/sbin/no-such-kiln-file*\n").unwrap();
        let e = select(&f, &root(&["/usr/sbin/nginx"])).unwrap_err();
        let t = e.to_string();
        assert!(matches!(e, IndexError::NoMatch { line: 3, .. }), "{t}");
        assert!(
            t.contains("files.txt:3") && t.contains("no-such-kiln-file"),
            "{t}"
        );
        std::fs::write(&f, "usr/sbin/nginx\n").unwrap();
        assert!(matches!(
            select(&f, &root(&[])).unwrap_err(),
            IndexError::NotAbsolute { line: 1, .. }
        ));
    }
}
