//! The bad-input corpus (`crates/cli/tests/corpus/`, format in its README.md): every case is
//! data, run through the real `kiln` binary (or, for web API bodies, through kiln-serve's
//! request parser), and must be refused with its exit code and message, without a panic and
//! without leaving anything behind: no output folder, no `.NAME.tmp-*`, nothing new in the
//! case's folder, the state folder or the cache. No case boots a VM (`KILN_QEMU` names no
//! program, so one that got that far would fail instead of booting).

use super::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The corpus folder.
fn corpus_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// How long one case may take before it is killed and reported (a hang, not slowness: the
/// slowest take a few seconds on an idle machine, a minute on a loaded one).
const CASE_TIMEOUT: Duration = Duration::from_secs(300);

/// A `kiln` case: `case.toml` in a folder of the corpus.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What the case is about (shown when it fails).
    about: String,
    /// The command line after `kiln`; default: build the case's `recipe/` into `@OUT@`.
    #[serde(default)]
    args: Option<Vec<String>>,
    /// The expected exit code (2: the user's input is wrong).
    #[serde(default = "two")]
    code: i32,
    /// A fragment of the expected message (stdout + stderr).
    #[serde(default)]
    message: Option<String>,
    /// More fragments, all expected.
    #[serde(default)]
    messages: Vec<String>,
    /// A folder of `_base/` copied to the case's `recipe/` before the case's own files.
    #[serde(default)]
    base: Option<String>,
    /// "private" (default): a fresh, empty cache that must stay empty; "shared": the user's
    /// cache (kernels, packages), checked for leftovers of corpus recipes.
    #[serde(default)]
    cache: Option<String>,
    /// A known bug (a wrong exit code): reported, not failed, while the exit code differs.
    #[serde(default)]
    known_bug: Option<String>,
    /// Steps that make what a file in git cannot hold (FIFOs, symlinks, binaries, modes).
    #[serde(default)]
    setup: Vec<Setup>,
}

fn two() -> i32 {
    2
}

/// One setup step; paths are relative to the case's scratch copy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Setup {
    mkdir: Option<String>,
    mkfifo: Option<String>,
    symlink: Option<String>,
    copy: Option<String>,
    write: Option<String>,
    remove: Option<String>,
    elf: Option<String>,
    chmod: Option<String>,
    /// Replace `find` with `with` in this file (which must hold `find`).
    replace: Option<String>,
    find: Option<String>,
    with: Option<String>,
    /// Copy the shared built image (recipes/httpd) here.
    image: Option<String>,
    /// symlink: the target; copy: the destination.
    to: Option<String>,
    /// copy: keep only the first N bytes.
    truncate: Option<usize>,
    /// write: the text (repeated `repeat` times).
    text: Option<String>,
    /// write: bytes in hex instead of text.
    hex: Option<String>,
    repeat: Option<usize>,
    /// elf: e_machine (183 aarch64, 3 i386, 40 arm).
    machine: Option<u16>,
    /// elf: a PT_INTERP path.
    interp: Option<String>,
    /// chmod: the mode.
    mode: Option<u32>,
}

/// A web API create request of the corpus: `api/*.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiCase {
    about: String,
    /// The request body, as sent.
    body: String,
    /// The expected error code (`bad_body`, `invalid_request`, `recipe_not_found`, …).
    code: String,
    /// A fragment of the expected message.
    message: String,
}

/// Every case folder (a folder holding case.toml), sorted.
fn case_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![corpus_root()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read corpus").flatten() {
            let p = e.path();
            if p.is_dir() && p.file_name().is_some_and(|n| n != "_base") {
                if p.join("case.toml").is_file() {
                    out.push(p);
                } else {
                    todo.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

fn api_cases() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(corpus_root().join("api"))
        .expect("read corpus/api")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    out.sort();
    out
}

/// Copy a tree (files, folders and symlinks as they are).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let src = e.path();
        let dest = to.join(e.file_name());
        let ft = e.file_type().expect("file type");
        if ft.is_symlink() {
            let target = std::fs::read_link(&src).expect("readlink");
            std::os::unix::fs::symlink(target, &dest).expect("symlink");
        } else if ft.is_dir() {
            copy_tree(&src, &dest);
        } else {
            std::fs::copy(&src, &dest).expect("copy");
        }
    }
}

/// Replace the placeholders in every text file of `dir` that has one.
fn substitute_tree(dir: &Path, vars: &[(&str, String)]) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        let ft = e.file_type().expect("file type");
        if ft.is_dir() {
            substitute_tree(&p, vars);
        } else if ft.is_file() {
            if let Ok(t) = std::fs::read_to_string(&p) {
                if t.contains('@') {
                    std::fs::write(&p, substitute(&t, vars)).expect("write");
                }
            }
        }
    }
}

fn substitute(s: &str, vars: &[(&str, String)]) -> String {
    let mut s = s.to_string();
    for (k, v) in vars {
        s = s.replace(k, v);
    }
    s
}

/// What a folder holds: every path (relative) with its kind and, for files, content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).expect("prefix").to_path_buf();
            let Ok(ft) = e.file_type() else { continue };
            let what = if ft.is_symlink() {
                format!(
                    "link {}",
                    std::fs::read_link(&p).unwrap_or_default().display()
                )
            } else if ft.is_dir() {
                todo.push(p);
                "folder".to_string()
            } else if ft.is_file() {
                let data = std::fs::read(&p).unwrap_or_default();
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in data {
                    h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
                }
                format!("file {h:016x}")
            } else {
                "special".to_string()
            };
            out.insert(rel, what);
        }
    }
    out
}

/// How `after` differs from `before`, one line per path.
fn differences(
    before: &BTreeMap<PathBuf, String>,
    after: &BTreeMap<PathBuf, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (p, what) in after {
        match before.get(p) {
            None => out.push(format!("new: {} ({what})", p.display())),
            Some(w) if w != what => out.push(format!("changed: {} ({w} -> {what})", p.display())),
            Some(_) => {}
        }
    }
    for p in before.keys().filter(|p| !after.contains_key(*p)) {
        out.push(format!("removed: {}", p.display()));
    }
    out
}

/// A minimal 64-bit little-endian ELF executable header for `machine`, with a PT_INTERP
/// naming `interp` when given (as refusals.rs makes them).
fn tiny_elf(machine: u16, interp: Option<&str>) -> Vec<u8> {
    let mut b = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    b.resize(16, 0);
    b.extend(2u16.to_le_bytes());
    b.extend(machine.to_le_bytes());
    b.extend(1u32.to_le_bytes());
    b.extend(0x40_0000u64.to_le_bytes());
    let phnum: u16 = interp.map_or(0, |_| 1);
    b.extend((if phnum > 0 { 64u64 } else { 0 }).to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(64u16.to_le_bytes());
    b.extend(56u16.to_le_bytes());
    b.extend(phnum.to_le_bytes());
    b.extend(64u16.to_le_bytes());
    b.extend([0u8; 4]);
    if let Some(i) = interp {
        let len = i.len() as u64 + 1;
        b.extend(3u32.to_le_bytes());
        b.extend(4u32.to_le_bytes());
        for v in [120u64, 0x40_0078, 0x40_0078, len, len, 1] {
            b.extend(v.to_le_bytes());
        }
        b.extend(i.as_bytes());
        b.push(0);
    }
    b
}

fn decode_hex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("hex"), 16).expect("hex"))
        .collect()
}

fn apply(step: &Setup, dir: &Path) -> Result<(), String> {
    let at = |p: &str| dir.join(p);
    let parent = |p: &Path| {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir parent");
        }
    };
    if let Some(p) = &step.mkdir {
        std::fs::create_dir_all(at(p)).map_err(|e| e.to_string())?;
    } else if let Some(p) = &step.mkfifo {
        parent(&at(p));
        let st = std::process::Command::new("mkfifo")
            .arg(at(p))
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("mkfifo {p} failed"));
        }
    } else if let Some(p) = &step.symlink {
        let target = step.to.as_deref().ok_or("symlink needs `to`")?;
        let link = at(p);
        parent(&link);
        if link.is_dir() && !link.is_symlink() {
            std::fs::remove_dir_all(&link).map_err(|e| e.to_string())?;
        } else if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).map_err(|e| e.to_string())?;
        }
        std::os::unix::fs::symlink(target, &link).map_err(|e| e.to_string())?;
    } else if let Some(src) = &step.copy {
        let dest = at(step.to.as_deref().ok_or("copy needs `to`")?);
        parent(&dest);
        // Relative: a file of the case's copy (e.g. of an `image` step's folder).
        let mut data = std::fs::read(at(src)).map_err(|e| format!("{src}: {e}"))?;
        if let Some(n) = step.truncate {
            data.truncate(n);
        }
        std::fs::write(&dest, data).map_err(|e| e.to_string())?;
        if let Some(m) = step.mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(m))
                .map_err(|e| e.to_string())?;
        }
    } else if let Some(p) = &step.write {
        let dest = at(p);
        parent(&dest);
        let one = match (&step.text, &step.hex) {
            (Some(t), None) => t.as_bytes().to_vec(),
            (None, Some(h)) => decode_hex(h),
            _ => return Err("write needs `text` or `hex`".into()),
        };
        std::fs::write(&dest, one.repeat(step.repeat.unwrap_or(1))).map_err(|e| e.to_string())?;
    } else if let Some(p) = &step.replace {
        let (find, with) = match (&step.find, &step.with) {
            (Some(f), Some(w)) => (f, w),
            _ => return Err("replace needs `find` and `with`".into()),
        };
        let text = std::fs::read_to_string(at(p)).map_err(|e| format!("{p}: {e}"))?;
        if !text.contains(find.as_str()) {
            return Err(format!("replace: {p} does not hold {find:?}"));
        }
        std::fs::write(at(p), text.replacen(find.as_str(), with, 1)).map_err(|e| e.to_string())?;
    } else if let Some(p) = &step.remove {
        let p = at(p);
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p).map_err(|e| e.to_string())?;
        } else {
            std::fs::remove_file(&p).map_err(|e| e.to_string())?;
        }
    } else if let Some(p) = &step.elf {
        let dest = at(p);
        parent(&dest);
        let machine = step.machine.ok_or("elf needs `machine`")?;
        std::fs::write(&dest, tiny_elf(machine, step.interp.as_deref()))
            .map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    } else if let Some(p) = &step.chmod {
        use std::os::unix::fs::PermissionsExt;
        let mode = step.mode.ok_or("chmod needs `mode`")?;
        std::fs::set_permissions(at(p), std::fs::Permissions::from_mode(mode))
            .map_err(|e| e.to_string())?;
    } else if let Some(p) = &step.image {
        copy_tree(httpd_image(), &at(p));
    } else {
        return Err(format!("an empty setup step: {step:?}"));
    }
    Ok(())
}

/// Entries of the shared cache whose file name `matches`: built images, their temporary
/// folders, anything else a refused build could leave.
fn leftovers(cache: &Path, matches: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in [cache.to_path_buf(), cache.join("images")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if matches(&e.file_name().to_string_lossy()) {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Any corpus recipe's entry (they are all named `corpus-…`).
fn any_corpus(file: &str) -> bool {
    file.contains("corpus")
}

/// Whether `file` names recipe `name`: it holds `name`, not as the start of a longer recipe
/// name (`corpus-run` must not claim `.corpus-run-hook-<hash>.tmp-…` of the case running
/// beside it). After the name comes the end, a character no name has, or `-<12 hex>` (the
/// hash `kiln_fleet::plan::recipe_image_dir` appends) and then no more of a name.
fn entry_of(file: &str, name: &str) -> bool {
    let in_name = |c: char| c.is_ascii_alphanumeric() || c == '-';
    file.match_indices(name).any(|(at, _)| {
        let rest = &file[at + name.len()..];
        match rest.strip_prefix('-') {
            None => !rest.starts_with(in_name),
            Some(r) => {
                r.len() >= 12
                    && r.as_bytes()[..12].iter().all(u8::is_ascii_hexdigit)
                    && !r[12..].starts_with(in_name)
            }
        }
    })
}

#[test]
fn a_case_claims_only_its_own_recipe_entries() {
    assert!(entry_of("corpus-run-10eae7cc9c76", "corpus-run"));
    assert!(entry_of(
        ".corpus-run-10eae7cc9c76.tmp-ei9fyp",
        "corpus-run"
    ));
    assert!(entry_of("corpus-run.lock", "corpus-run"));
    assert!(!entry_of(
        ".corpus-run-hook-10eae7cc9c76.tmp-ei9fyp",
        "corpus-run"
    ));
    assert!(!entry_of("corpus-runner-10eae7cc9c76", "corpus-run"));
    assert!(entry_of(
        ".corpus-run-hook-10eae7cc9c76.tmp-ei9fyp",
        "corpus-run-hook"
    ));
    assert!(any_corpus(".corpus-run-hook-10eae7cc9c76.tmp-ei9fyp"));
}

/// The `name` of the case's recipe, if it has one (to tell its leftovers from those of the
/// cases running beside it).
fn recipe_name(work: &Path) -> Option<String> {
    let t = std::fs::read_to_string(work.join("recipe/kiln.toml")).ok()?;
    let v: toml::Table = toml::from_str(&t).ok()?;
    v.get("name")?.as_str().map(str::to_string)
}

/// The outcome of one case: `Ok(note)` (a note for a known bug) or `Err(why it failed)`.
fn run_case(dir: &Path, took: &mut Duration) -> Result<Option<String>, String> {
    let name = dir
        .strip_prefix(corpus_root())
        .unwrap_or(dir)
        .display()
        .to_string();
    let text = std::fs::read_to_string(dir.join("case.toml")).map_err(|e| e.to_string())?;
    let case: Case = toml::from_str(&text).map_err(|e| format!("case.toml: {e}"))?;
    let fail = |m: String| Err(format!("{name} ({}): {m}", case.about));

    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let work = scratch.path().join("case");
    let state = scratch.path().join("state");
    let private_cache = scratch.path().join("cache");
    let logs = scratch.path().join("logs");
    for d in [&state, &private_cache, &logs] {
        std::fs::create_dir(d).map_err(|e| e.to_string())?;
    }
    if let Some(b) = &case.base {
        copy_tree(&corpus_root().join("_base").join(b), &work.join("recipe"));
    }
    copy_tree(dir, &work);
    std::fs::remove_file(work.join("case.toml")).map_err(|e| e.to_string())?;

    let out = work.join("out");
    let uses_image = text.contains("@IMAGE@");
    let mut vars = vec![
        ("@CASE@", work.display().to_string()),
        ("@OUT@", out.display().to_string()),
        ("@STATE@", state.display().to_string()),
    ];
    if uses_image {
        vars.push(("@IMAGE@", httpd_image().display().to_string()));
    }
    substitute_tree(&work, &vars);
    for step in &case.setup {
        if let Err(e) = apply(step, &work) {
            return fail(format!("setup {step:?}: {e}"));
        }
    }

    let shared = match case.cache.as_deref() {
        None | Some("private") => false,
        Some("shared") => true,
        Some(o) => return fail(format!("cache = {o:?}: private or shared")),
    };
    let shared_cache = kiln_fleet::default_cache_root();
    let recipe = recipe_name(&work);
    let mine = |f: &str| {
        recipe
            .as_deref()
            .map_or_else(|| any_corpus(f), |n| entry_of(f, n))
    };
    let cache_before = leftovers(&shared_cache, mine);
    let work_before = snapshot(&work);

    let args: Vec<String> = case
        .args
        .clone()
        .unwrap_or_else(|| {
            ["build", "@CASE@/recipe", "-o", "@OUT@"]
                .map(String::from)
                .to_vec()
        })
        .iter()
        .map(|a| substitute(a, &vars))
        .collect();
    let mut c = kiln(&state);
    c.args(&args)
        .current_dir(&work)
        .env("KILN_QEMU", "kiln-corpus-no-qemu")
        .env("RUST_BACKTRACE", "0")
        .env_remove("KILN_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(logs.join("out")).map_err(|e| e.to_string())?)
        .stderr(std::fs::File::create(logs.join("err")).map_err(|e| e.to_string())?);
    if !shared {
        c.env("KILN_CACHE_DIR", &private_cache);
    }
    let started = Instant::now();
    let mut child = kiln_test_support::KillOnDrop(c.spawn().map_err(|e| e.to_string())?);
    let Some(status) = child.wait_timeout(CASE_TIMEOUT) else {
        return fail(format!(
            "still running after {CASE_TIMEOUT:?}: kiln {}",
            args.join(" ")
        ));
    };
    let elapsed = started.elapsed();
    *took = elapsed;
    let output = format!(
        "{}{}",
        std::fs::read_to_string(logs.join("out")).unwrap_or_default(),
        std::fs::read_to_string(logs.join("err")).unwrap_or_default()
    );
    let shown = format!(
        "kiln {}\n  -> {status} in {elapsed:.1?}:\n{output}",
        args.join(" ")
    );

    if output.contains("panicked") || output.contains("RUST_BACKTRACE") {
        return fail(format!("a panic:\n{shown}"));
    }
    if std::env::var_os("KILN_CORPUS_SHOW").is_some() {
        eprintln!("corpus: {name}: {shown}");
    }
    let mut note = None;
    if status.code() != Some(case.code) {
        match &case.known_bug {
            Some(bug) => {
                note = Some(format!(
                    "{name}: known bug ({bug}): exit {:?}, expected {}",
                    status.code(),
                    case.code
                ))
            }
            None => return fail(format!("expected exit code {}, got:\n{shown}", case.code)),
        }
    } else if let Some(bug) = &case.known_bug {
        note = Some(format!(
            "{name}: the known bug ({bug}) looks fixed: remove `known_bug` from its case.toml"
        ));
    }
    for m in case.message.iter().chain(&case.messages) {
        let m = substitute(m, &vars);
        if !output.contains(&m) {
            return fail(format!("the message lacks `{m}`:\n{shown}"));
        }
    }
    if case.message.is_none() && case.messages.is_empty() {
        return fail("no `message`: every case names a fragment of its refusal".into());
    }
    // Nothing left behind: no output folder, no temporary folder, nothing changed in the case.
    let diff = differences(&work_before, &snapshot(&work));
    if !diff.is_empty() {
        return fail(format!("left behind in its folder: {diff:?}\n{shown}"));
    }
    let state_left = snapshot(&state);
    if !state_left.is_empty() {
        return fail(format!(
            "left in the state folder: {:?}\n{shown}",
            state_left.keys().collect::<Vec<_>>()
        ));
    }
    if shared {
        let after = leftovers(&shared_cache, mine);
        let new: Vec<_> = after.iter().filter(|p| !cache_before.contains(p)).collect();
        if !new.is_empty() {
            return fail(format!("left in the cache: {new:?}\n{shown}"));
        }
    } else {
        let cache_left = snapshot(&private_cache);
        if !cache_left.is_empty() {
            return fail(format!(
                "wrote to the cache (a refusal should come before it): {:?}\n{shown}",
                cache_left.keys().collect::<Vec<_>>()
            ));
        }
    }
    Ok(note)
}

/// Every `kiln` case of the corpus, on a few threads.
///
/// `KILN_CORPUS_ONLY=TEXT` runs only the cases whose folder contains TEXT; `KILN_CORPUS_SHOW=1`
/// prints every command and its output.
#[test]
fn kiln_refuses_every_case_of_the_corpus() {
    let mut cases = case_dirs();
    assert!(cases.len() >= 60, "only {} kiln cases", cases.len());
    if let Ok(only) = std::env::var("KILN_CORPUS_ONLY") {
        cases.retain(|d| d.display().to_string().contains(&only));
    }
    // Built once up front, so the threads do not wait on one another for it.
    if cases
        .iter()
        .any(|d| std::fs::read_to_string(d.join("case.toml")).is_ok_and(|t| t.contains("@IMAGE@")))
    {
        httpd_image();
    }
    let cache = kiln_fleet::default_cache_root();
    let cache_before = leftovers(&cache, any_corpus);
    let failures = Mutex::new(Vec::new());
    let notes = Mutex::new(Vec::new());
    let times = Mutex::new(Vec::new());
    // Two rounds: the quick refusals, many at a time (each waits on a short-lived process);
    // then those refused while building on the shared cache, two at a time (each hashes and
    // stages a root: more at once only thrash a small machine).
    let (shared, quick): (Vec<PathBuf>, Vec<PathBuf>) = cases.iter().cloned().partition(|d| {
        std::fs::read_to_string(d.join("case.toml")).is_ok_and(|t| t.contains("cache = \"shared\""))
    });
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = Instant::now();
    for (round, threads) in [(&quick, (2 * cores).clamp(4, 8)), (&shared, 2)] {
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(dir) = round.get(i) else { break };
                    let mut took = Duration::ZERO;
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_case(dir, &mut took)
                    }))
                    .unwrap_or_else(|_| {
                        Err(format!("{}: the test itself panicked", dir.display()))
                    });
                    times.lock().expect("lock").push((took, dir.clone()));
                    match r {
                        Ok(Some(n)) => notes.lock().expect("lock").push(n),
                        Ok(None) => {}
                        Err(e) => failures.lock().expect("lock").push(e),
                    }
                });
            }
        });
    }
    let notes = notes.into_inner().expect("lock");
    for n in &notes {
        eprintln!("corpus: {n}");
    }
    let mut failures = failures.into_inner().expect("lock");
    let left: Vec<_> = leftovers(&cache, any_corpus)
        .into_iter()
        .filter(|p| !cache_before.contains(p))
        .collect();
    if !left.is_empty() {
        failures.push(format!("left in the cache by the corpus: {left:?}"));
    }
    let mut times = times.into_inner().expect("lock");
    times.sort();
    for (t, d) in times.iter().rev().take(5) {
        eprintln!("corpus: slowest: {t:.1?} {}", d.display());
    }
    eprintln!(
        "corpus: {} kiln cases in {:.1?}, {} failed, {} known bugs",
        cases.len(),
        started.elapsed(),
        failures.len(),
        notes.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// Every web API create request of the corpus, through the server's own parser and check
/// (`CreateRequest::parse`, then `api::validate` against the repository's recipes).
#[test]
fn the_api_refuses_every_request_of_the_corpus() {
    use kiln_serve::api::{validate, CreateRequest};
    let catalog = kiln_serve::catalog::Catalog {
        recipe_roots: vec![workspace_root().join("recipes")],
        image_roots: vec![],
    };
    let cases = api_cases();
    assert!(cases.len() >= 10, "only {} API cases", cases.len());
    let mut failures = Vec::new();
    for p in &cases {
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        let text = std::fs::read_to_string(p).expect("read");
        let case: ApiCase = match toml::from_str(&text) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let got = std::panic::catch_unwind(|| {
            CreateRequest::parse(case.body.as_bytes()).and_then(|r| validate(&r, &catalog))
        });
        match got {
            Err(_) => failures.push(format!("{name} ({}): panicked", case.about)),
            Ok(Ok(spec)) => {
                failures.push(format!("{name} ({}): accepted, as {spec:?}", case.about))
            }
            Ok(Err(e)) if e.code != case.code || !e.message.contains(&case.message) => failures
                .push(format!(
                    "{name} ({}): expected {} `{}`, got {} `{}`",
                    case.about, case.code, case.message, e.code, e.message
                )),
            Ok(Err(_)) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} API cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
