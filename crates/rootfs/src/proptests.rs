//! Property tests: the copy-binlib index (parsing, globs, selection) and the ELF closure reader
//! (mutated, truncated and renamed ELF files) never panic, and do what they should.

#![allow(clippy::unwrap_used)]

use crate::elf::{NodeKind, Resolver};
use crate::index::{self, Found, Glob};
use crate::packages::{Entry, EntryKind, PackageRoot};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// 256 cases, or `PROPTEST_CASES` (`make fuzz` without nightly).
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        ..ProptestConfig::default()
    }
}

/// Index matching as `index::select` does it.
const OPTS: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// An absolute path of 1–5 plain components.
fn guest_path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-z0-9][a-z0-9._-]{0,7}", 1..6)
}

fn join(c: &[String]) -> String {
    format!("/{}", c.join("/"))
}

/// A pattern derived from `path` that must match it.
fn pattern_for(path: &[String], how: u8, at: usize) -> String {
    let i = at % path.len();
    let mut c = path.to_vec();
    match how % 5 {
        0 => {}
        1 => c[i] = "*".into(),
        2 => {
            c.truncate(i);
            c.push("**".into());
        }
        3 => {
            let mut chars: Vec<char> = c[i].chars().collect();
            let j = at % chars.len();
            chars[j] = '?';
            c[i] = chars.into_iter().collect();
        }
        _ => {
            let first = c[i].chars().next().unwrap();
            c[i] = format!("[{first}]{}", &c[i][first.len_utf8()..]);
        }
    }
    join(&c)
}

proptest! {
    #![proptest_config(config())]

    /// Any index text: lines trimmed, non-empty, comments gone, numbered in order.
    #[test]
    fn index_parsing_never_panics_and_drops_comments(text in prop_oneof![
        any::<String>(),
        prop::collection::vec("[ \t]{0,2}[/a-z#*?\\[\\] .]{0,16}", 0..10).prop_map(|l| l.join("\n")),
    ]) {
        let lines = index::parse(&text);
        let total = text.lines().count();
        let mut last = 0;
        for l in &lines {
            prop_assert!(!l.text.is_empty() && l.text == l.text.trim(), "{l:?}");
            prop_assert!(l.line > last && l.line <= total, "{l:?} of {total}");
            last = l.line;
            let b = l.text.as_bytes();
            prop_assert!(
                !(1..b.len()).any(|j| b[j] == b'#' && b[j - 1].is_ascii_whitespace()) && b[0] != b'#',
                "a comment was kept: {l:?}"
            );
        }
    }

    /// Any text as a glob: compiled or refused, and matching never panics.
    #[test]
    fn any_glob_compiles_or_is_refused(pattern in prop_oneof![any::<String>(), "[/a-z*?\\[\\]!-]{0,16}"], path in guest_path()) {
        if let Ok(g) = Glob::new(&pattern) {
            let _ = g.matches_path_with(Path::new(&join(&path)), OPTS);
        }
    }

    /// Patterns made from a path match it; `*` and `?` stay within a folder, `**` spans them.
    #[test]
    fn globs_match_what_they_should(path in guest_path(), how in any::<u8>(), at in any::<usize>(), extra in "[a-z]{1,6}") {
        let full = join(&path);
        let pattern = pattern_for(&path, how, at);
        let g = Glob::new(&pattern).map_err(|e| TestCaseError::fail(format!("{pattern}: {e}")))?;
        prop_assert!(g.matches_path_with(Path::new(&full), OPTS), "{pattern} does not match {full}");
        // One folder deeper: only `**` reaches it.
        let deeper = format!("{full}/{extra}");
        let reaches = g.matches_path_with(Path::new(&deeper), OPTS);
        prop_assert_eq!(reaches, pattern.ends_with("/**"), "{} vs {}", pattern, deeper);
        // A different name in the last component does not match a literal pattern.
        if how % 5 == 0 {
            let other = format!("{full}{extra}");
            prop_assert!(!g.matches_path_with(Path::new(&other), OPTS));
        }
    }

    /// `select` over a package tree: every line made from a package path selects it (from the
    /// packages, with its line), and nothing selected fails to match a line.
    #[test]
    fn index_selects_what_its_lines_match(
        paths in prop::collection::btree_set(guest_path(), 1..8),
        picks in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<usize>()), 1..6),
    ) {
        let paths: Vec<Vec<String>> = paths.into_iter().collect();
        let root = PackageRoot {
            dir: PathBuf::from("/nonexistent-kiln-proptest"),
            entries: paths
                .iter()
                .map(|p| (PathBuf::from(join(p)), Entry { kind: EntryKind::File, package: "pkg 1".into() }))
                .collect(),
        };
        let mut lines = vec!["# made by a property test".to_string()];
        let mut wanted = Vec::new();
        for (i, how, at) in &picks {
            let p = i.get(&paths);
            lines.push(pattern_for(p, *how, *at));
            wanted.push(join(p));
        }
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("files.txt");
        std::fs::write(&f, lines.join("\n")).unwrap();
        let sel = index::select(&f, &root).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for w in &wanted {
            prop_assert!(sel.iter().any(|s| s.path == Path::new(w)), "{w} not selected by {lines:?}");
        }
        for s in &sel {
            prop_assert_eq!(s.found, Found::Package);
            prop_assert!(root.entries.contains_key(&s.path));
            let line: usize = s.reason.rsplit(':').next().unwrap().parse().unwrap();
            let g = Glob::new(&lines[line - 1]).unwrap();
            prop_assert!(g.matches_path_with(&s.path, OPTS), "{:?} by line {line}", s.path);
        }
    }
}

/// A sysroot for /bin/true: the binary, and small real shared objects of the host (glibc's
/// stub libraries, 14 KB, rather than libc's 2 MB, so a case takes a few ms) in the places of its
/// interpreter and libc.
struct Sysroot {
    _dir: tempfile::TempDir,
    root: PathBuf,
    binary: Vec<u8>,
    interp: Vec<u8>,
    libc: Vec<u8>,
}

const BIN: &str = "bin/true";
const INTERP: &str = "lib64/ld-linux-x86-64.so.2";
const LIBC: &str = "lib/x86_64-linux-gnu/libc.so.6";

fn sysroot() -> Option<&'static Sysroot> {
    static S: OnceLock<Option<Sysroot>> = OnceLock::new();
    S.get_or_init(|| {
        let first = |paths: &[&str]| paths.iter().find_map(|p| std::fs::read(p).ok());
        let binary = first(&["/bin/true", "/usr/bin/true"])?;
        let interp = first(&[
            "/lib/x86_64-linux-gnu/libpthread.so.0",
            "/lib64/ld-linux-x86-64.so.2",
        ])?;
        let libc = first(&[
            "/lib/x86_64-linux-gnu/libdl.so.2",
            "/lib/x86_64-linux-gnu/libc.so.6",
        ])?;
        let dir = tempfile::tempdir().ok()?;
        let root = dir.path().to_path_buf();
        Some(Sysroot {
            _dir: dir,
            root,
            binary,
            interp,
            libc,
        })
    })
    .as_ref()
}

/// A private copy of the sysroot for one test, with `file` replaced by `bytes`.
fn layout(base: &Path, s: &Sysroot, file: &str, bytes: &[u8]) {
    for (p, data) in [(BIN, &s.binary), (INTERP, &s.interp), (LIBC, &s.libc)] {
        let dest = base.join(p);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let data: &[u8] = if p == file { bytes } else { data };
        std::fs::write(&dest, data).unwrap();
    }
}

/// Replace `file` of a sysroot made by [`layout`] (the others stay as they are).
fn replace(base: &Path, file: &str, bytes: &[u8]) {
    std::fs::write(base.join(file), bytes).unwrap();
}

/// The closure of /bin/true in `base`: never a panic; whatever it keeps lies in the sysroot.
fn check_closure(base: &Path) -> Result<(), TestCaseError> {
    let r = Resolver::new(base).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for guest_only in [true, false] {
        let got = if guest_only {
            r.closure(&[PathBuf::from("/bin/true")])
        } else {
            r.closure_with_reasons(&[(PathBuf::from("/bin/true"), "listed".into())])
        };
        match got {
            Ok(c) => {
                for n in &c.nodes {
                    if let NodeKind::File { source, .. } = &n.kind {
                        prop_assert!(
                            source.starts_with(base),
                            "{} is outside the sysroot",
                            source.display()
                        );
                    }
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    Ok(())
}

/// How a file is damaged: bytes flipped (mostly in the headers), cut short, or both.
#[derive(Debug, Clone)]
struct Damage {
    flips: Vec<(u8, usize, u8)>,
    cut: Option<usize>,
}

fn damage() -> impl Strategy<Value = Damage> {
    (
        prop::collection::vec((any::<u8>(), any::<usize>(), 1..=255u8), 0..12),
        prop::option::weighted(0.3, any::<usize>()),
    )
        .prop_map(|(flips, cut)| Damage { flips, cut })
}

impl Damage {
    fn apply(&self, original: &[u8]) -> Vec<u8> {
        let mut b = original.to_vec();
        let n = b.len();
        // Where the interesting bytes are: the ELF header, the program headers, the section
        // headers at the end, and anywhere.
        let shoff = goblin::elf::Elf::parse(original)
            .map(|e| e.header.e_shoff as usize)
            .unwrap_or(0)
            .min(n);
        for &(region, at, x) in &self.flips {
            let i = match region % 4 {
                0 => at % 64.min(n),
                1 => 64 + at % 1024.min(n - 64),
                2 => shoff + at % (n - shoff).max(1),
                _ => at % n,
            };
            if i < n {
                b[i] ^= x;
            }
        }
        if let Some(c) = self.cut {
            b.truncate(c % (n + 1));
        }
        b
    }
}

fn run(name: &str, strategy: impl Strategy<Value = Damage>, file: &'static str) {
    let Some(s) = sysroot() else {
        eprintln!("{name}: skipped: this host has no /bin/true and glibc's libraries");
        return;
    };
    let base = s.root.join(name);
    let original = match file {
        BIN => &s.binary,
        INTERP => &s.interp,
        _ => &s.libc,
    };
    // The undamaged sysroot resolves: the test looks at what it thinks it does.
    layout(&base, s, file, original);
    let c = Resolver::new(&base)
        .unwrap()
        .closure(&[PathBuf::from("/bin/true")])
        .unwrap();
    assert!(c.nodes.len() >= 3, "{:?}", c.nodes);
    let mut runner = TestRunner::new(config());
    runner
        .run(&strategy, |d| {
            replace(&base, file, &d.apply(original));
            check_closure(&base)
        })
        .unwrap();
}

#[test]
fn damaged_binaries_never_panic_the_closure_reader() {
    run("bin", damage(), BIN);
}

#[test]
fn damaged_interpreters_never_panic_the_closure_reader() {
    run("interp", damage(), INTERP);
}

#[test]
fn damaged_libraries_never_panic_the_closure_reader() {
    run("libc", damage(), LIBC);
}

/// DT_NEEDED and PT_INTERP renamed (same length, so the file stays well-formed) to names with
/// `/`, `..` and `$ORIGIN`: whatever is found lies inside the sysroot.
#[test]
fn renamed_dependencies_stay_inside_the_sysroot() {
    let Some(s) = sysroot() else {
        return;
    };
    let base = s.root.join("renamed");
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let (Some(needed_at), Some(interp_at)) = (
        find(&s.binary, b"libc.so.6\0"),
        find(&s.binary, b"/lib64/ld-linux-x86-64.so.2\0"),
    ) else {
        return;
    };
    let name = |len: usize| {
        prop::collection::vec(
            prop::sample::select(vec!["/", "..", ".", "a", "$ORIGIN", "lib", "etc"]),
            1..12,
        )
        .prop_map(move |parts| {
            let mut s = parts.concat().into_bytes();
            s.resize(len, b'/');
            s
        })
    };
    layout(&base, s, BIN, &s.binary);
    let mut runner = TestRunner::new(config());
    runner
        .run(&(name(9), name(27)), |(needed, interp)| {
            let mut b = s.binary.clone();
            b[needed_at..needed_at + 9].copy_from_slice(&needed);
            b[interp_at..interp_at + 27].copy_from_slice(&interp);
            replace(&base, BIN, &b);
            check_closure(&base)
        })
        .unwrap();
}
