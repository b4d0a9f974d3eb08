//! Kiln's integration tests: the real `kiln` binary builds real recipes and boots them in real
//! QEMU (TCG on our machines); clients are real (curl). One test binary, as ripgrep does.

mod boot;
mod bsd;
mod build;
mod corpus;
mod engines;
mod exec;
mod faults;
mod formats;
mod lifecycle;
mod load;
mod netboot;
mod nets;
mod oci;
mod refusals;
mod services;
mod templates;
mod web;

use kiln_test_support::workspace_root;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// A `kiln` command with an isolated state folder (the download cache is shared).
pub fn kiln(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env("KILN_STATE_DIR", state)
        .env("XDG_RUNTIME_DIR", state)
        .env_remove("SOURCE_DATE_EPOCH")
        .current_dir(workspace_root());
    if std::env::var_os("KILN_INIT").is_none() {
        c.env("KILN_INIT", workspace_root().join("target/guest/kiln-init"));
    }
    c
}

/// Whether the tests run as root (mounts, another user's daemon): the tests that need it say
/// why they skip otherwise.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Run and capture, with stdin closed.
pub fn run(mut c: Command) -> Output {
    c.stdin(std::process::Stdio::null())
        .output()
        .expect("run kiln")
}

/// Run and capture, with stdin closed; the command must succeed.
pub fn run_ok(c: Command) -> Output {
    let o = run(c);
    assert!(o.status.success(), "{}", text(&o));
    o
}

/// stdout + stderr as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A recipe folder from the repository.
pub fn recipe(name: &str) -> PathBuf {
    workspace_root().join("recipes").join(name)
}

/// recipes/httpd built once per test run (default kernel: the tiny one), shared by the boot tests.
pub fn httpd_image() -> &'static Path {
    static IMAGE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    shared_httpd(&IMAGE, &[])
}

/// recipes/httpd on Debian's cloud kernel (modules, ACPI, virtiofs), built once per test run.
pub fn httpd_debian_image() -> &'static Path {
    static IMAGE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    shared_httpd(&IMAGE, &["--kernel", "debian"])
}

fn shared_httpd(
    cell: &'static OnceLock<(tempfile::TempDir, PathBuf)>,
    extra: &[&str],
) -> &'static Path {
    let (_, out) = cell.get_or_init(|| {
        let d = tempfile::tempdir().expect("tmp");
        let out = d.path().join("httpd");
        let mut c = kiln(d.path());
        c.arg("build")
            .arg(recipe("httpd"))
            .args(extra)
            .arg("-o")
            .arg(&out);
        let o = run(c);
        assert!(
            o.status.success(),
            "kiln build recipes/httpd {extra:?} failed:\n{}",
            text(&o)
        );
        (d, out)
    });
    out
}

/// `toml` with `line` in its `[root]` table (recipes/httpd has one already: a second
/// `[root]` header would be a duplicate key).
pub fn with_root_key(toml: &str, line: &str) -> String {
    match toml.find("\n[root]\n") {
        Some(at) => {
            let end = at + "\n[root]\n".len();
            format!("{}{line}\n{}", &toml[..end], &toml[end..])
        }
        None => format!("{toml}\n[root]\n{line}\n"),
    }
}

/// The 1-based line of the key [`with_root_key`] put in `recipe`'s kiln.toml.
pub fn root_key_line(recipe: &Path) -> usize {
    let t = std::fs::read_to_string(recipe.join("kiln.toml")).expect("read kiln.toml");
    t.lines()
        .position(|l| l == "[root]")
        .expect("a [root] table")
        + 2
}

/// An image folder's manifest.json.
pub fn manifest(dir: &Path) -> serde_json::Value {
    let data = std::fs::read(dir.join("manifest.json")).expect("manifest.json");
    serde_json::from_slice(&data).expect("json")
}

/// Build `recipe_dir` into a fresh folder, which must succeed; the folder and the manifest.
pub fn build_ok(recipe_dir: &Path) -> (tempfile::TempDir, serde_json::Value) {
    let d = tempfile::tempdir().expect("tmp");
    let mut c = kiln(d.path());
    c.arg("build")
        .arg(recipe_dir)
        .arg("-o")
        .arg(d.path().join("img"));
    run_ok(c);
    let m = manifest(&d.path().join("img"));
    (d, m)
}

/// Copy a repository recipe into a temp folder so a test can change it.
pub fn scratch_recipe(from: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tmp");
    let src = recipe(from);
    for entry in walk(&src) {
        let rel = entry.strip_prefix(&src).expect("prefix");
        let dest = d.path().join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&dest).expect("mkdir");
        } else {
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
            std::fs::copy(&entry, &dest).expect("copy");
        }
    }
    d
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        out.push(p.clone());
        if p.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

/// Run `c` (a foreground `kiln run` with a shell on the console) and, once `prompt` shows on
/// its output, type `input`; wait (up to `limit` for each) for the prompt and the VM's end.
/// Bytes sent to the serial line while the guest boots are lost (CI saw "echo" arrive as
/// "ho"), hence the wait for the prompt.
pub fn console_session(
    mut c: Command,
    prompt: &str,
    input: &[u8],
    limit: std::time::Duration,
) -> (std::process::ExitStatus, String) {
    use std::io::{Read, Write};
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = kiln_test_support::KillOnDrop(c.spawn().expect("spawn"));
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut stdout = child.0.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + limit;
    while !String::from_utf8_lossy(&out).contains(prompt) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => out.extend(chunk),
            Err(_) => panic!(
                "no `{prompt}` within {limit:?}:\n{}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    child
        .0
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    let status = child
        .wait_timeout(limit)
        .expect("the VM powers off after the session");
    reader.join().expect("reader");
    out.extend(rx.try_iter().flatten());
    (status, String::from_utf8_lossy(&out).into_owned())
}

/// The sizes line `kiln trace` prints ("initramfs with every package file A MB (N files),
/// minimal B MB (M files)"), as ((bytes, files) of the full image, of the minimal one).
pub fn trace_sizes(t: &str) -> ((f64, f64), (f64, f64)) {
    let line = t
        .lines()
        .find(|l| l.contains("initramfs with every package file"))
        .unwrap_or_else(|| panic!("no sizes line: {t}"));
    let unit = |u: &str| match u {
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => 1.0,
    };
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let mut nums = vec![];
    for (i, w) in words.iter().enumerate() {
        if let Ok(v) = w.parse::<f64>() {
            let next = words.get(i + 1).copied().unwrap_or("");
            nums.push(if next == "files" { v } else { v * unit(next) });
        }
    }
    assert_eq!(nums.len(), 4, "{line}");
    ((nums[0], nums[1]), (nums[2], nums[3]))
}
