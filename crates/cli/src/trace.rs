//! `kiln trace RECIPE -- WORKLOAD`: find the files a service needs by watching it work.
//!
//! 1. Build the recipe with every file of its packages (and of its `from` image) and kiln-init's access tracer on
//!    (fanotify; `kiln: trace PATH` lines on the console), boot it, wait for readiness.
//! 2. Run WORKLOAD (`sh -c`) on the host against the forwarded ports; it must succeed.
//! 3. Power off and turn the traced paths into an index: every package (or image) file or
//!    folder that was opened, executed or read, plus the symlinks of those that lead to one.
//! 4. Build the image again from that index alone and run the same workload against it. Only
//!    when it passes too is the index written (to the recipe's `index`, else `files.txt` in the
//!    recipe folder); otherwise the trace is rejected, naming the traced files the minimal image
//!    lacks. Lines the index had from a comment starting `# Not from the trace` to its end
//!    (paths the workload does not reach, added by hand) are kept as they are, after the traced
//!    ones, and are part of the minimal image that is checked.

use crate::{dirs, human, BadInput};
use anyhow::{bail, Context, Result};
use clap::Args;
use kiln_bake::{BuildOptions, ImageManifest, Variant};
use kiln_fleet::watch::{Until, Watched};
use kiln_recipe::{PortForward, Recipe};
use kiln_rootfs::index::Glob;
use kiln_rootfs::FileKind;
use kiln_vm::AccelChoice;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options of `kiln trace`.
#[derive(Args, Debug)]
pub struct TraceArgs {
    /// The recipe folder (it must list `packages` or start `from` an image).
    pub recipe: PathBuf,
    /// Forward a host port: [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp] (repeatable; replaces the recipe's ports).
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    pub ports: Vec<PortForward>,
    /// Where to write the index (default: the recipe's `index`, else RECIPE/files.txt).
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Leave paths matching this glob out of the index even if traced (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Seconds to wait for readiness (default: the recipe's ready_timeout).
    #[arg(long)]
    pub ready_timeout: Option<u64>,
    /// Seconds the workload may take.
    #[arg(long, default_value_t = 120)]
    pub workload_timeout: u64,
    /// Accelerator: auto (probe KVM, fall back to TCG), kvm, tcg.
    #[arg(long, default_value = "auto")]
    pub accel: AccelChoice,
    /// The workload, run with `sh -c` on the host once the guest is ready (after `--`).
    #[arg(last = true, required = true, num_args = 1..)]
    pub workload: Vec<String>,
}

/// What one boot with the workload gave.
struct Outcome {
    /// Workload exit status and its output.
    workload: std::process::Output,
    /// Paths the tracer printed.
    traced: BTreeSet<String>,
    /// The whole console.
    console: String,
}

/// Console bytes shared with the reader thread.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }
}

/// The `kiln: trace PATH` lines of a console.
pub fn traced_paths(console: &str) -> BTreeSet<String> {
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("kiln: trace "))
        .filter(|p| p.starts_with('/'))
        .map(str::to_string)
        .collect()
}

/// Resolve guest path `path` through the symlinks listed in `links` (guest path → target).
fn resolve_links(path: &str, links: &BTreeMap<String, String>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut todo: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == "." {
            continue;
        }
        if c == ".." {
            parts.pop();
            continue;
        }
        let cand = format!(
            "/{}",
            parts
                .iter()
                .chain([&c])
                .cloned()
                .collect::<Vec<_>>()
                .join("/")
        );
        match links.get(&cand) {
            Some(target) if hops < 40 => {
                hops += 1;
                if target.starts_with('/') {
                    parts.clear();
                }
                todo.extend(
                    target
                        .split('/')
                        .filter(|c| !c.is_empty())
                        .rev()
                        .map(str::to_string),
                );
            }
            _ => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The index lines for a trace: traced files and folders of the packages and the `from` image,
/// and their symlinks that resolve to one of them or to a folder holding one, minus `exclude`.
pub fn index_from_trace(
    full: &ImageManifest,
    traced: &BTreeSet<String>,
    exclude: &[Glob],
) -> Vec<String> {
    let from_package = |source: &str| {
        source.starts_with("package ") || (!full.base.is_empty() && source == full.base)
    };
    let links: BTreeMap<String, String> = full
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Symlink)
        .filter_map(|f| Some((f.path.clone(), f.target.clone()?)))
        .collect();
    let mut keep: BTreeSet<String> = full
        .files
        .iter()
        .filter(|f| f.kind != FileKind::Symlink && from_package(&f.source))
        .filter(|f| traced.contains(&f.path))
        .map(|f| f.path.clone())
        .collect();
    // A link is kept when it leads to a kept path or to a folder on the way to one
    // (`/usr/share/nginx/modules -> ../../lib/nginx/modules`: the tracer reports the real path).
    let leads_to_kept = |target: &str, keep: &BTreeSet<String>| {
        let inside = format!("{}/", target.trim_end_matches('/'));
        keep.contains(target)
            || keep
                .range(inside.clone()..)
                .next()
                .is_some_and(|k| k.starts_with(&inside))
    };
    let kept_links: Vec<String> = full
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Symlink && from_package(&f.source))
        .filter(|f| leads_to_kept(&resolve_links(&f.path, &links), &keep))
        .map(|f| f.path.clone())
        .collect();
    keep.extend(kept_links);
    keep.into_iter()
        .filter(|p| !exclude.iter().any(|g| g.matches(p)))
        .collect()
}

fn progress_line(msg: &str) {
    eprintln!("kiln: trace: {msg}");
}

/// `kiln trace`.
pub fn trace(a: TraceArgs) -> Result<ExitCode> {
    let recipe = Recipe::load(&a.recipe)?;
    if recipe.config.packages.is_empty() && recipe.config.from.is_none() {
        return Err(BadInput(format!(
            "{}: the recipe lists no `packages` and has no `from` image; kiln trace selects files from those",
            recipe.config_path().display()
        ))
        .into());
    }
    let exclude: Vec<Glob> = a
        .exclude
        .iter()
        .map(|g| Glob::new(g).map_err(|e| BadInput(format!("--exclude `{g}`: {}", e.msg))))
        .collect::<Result<_, _>>()?;
    let index_path = a
        .index
        .clone()
        .or_else(|| recipe.index_path())
        .unwrap_or_else(|| recipe.dir.join("files.txt"));
    let workload = a.workload.join(" ");
    let images = dirs::cache_root().join("images");
    let key = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(recipe.dir.as_os_str().as_encoded_bytes())[..6])
    };
    let name = &recipe.config.name;

    progress_line("building the image with every package file and the tracer on");
    let full_dir = images.join(format!("{name}-{key}-traced"));
    let full = build(&recipe, &full_dir, &Variant::Traced)?;
    let traced_run = boot_and_work(&a, &full_dir, &full, &workload)?;
    if !traced_run.workload.status.success() {
        bail!(BadInput(format!(
            "the workload failed against the image with every package file ({}), so there is nothing to trace; fix the workload or the recipe.\nworkload output:\n{}\nconsole (last lines):\n{}",
            traced_run.workload.status,
            output_text(&traced_run.workload),
            tail(&traced_run.console, 30)
        )));
    }
    if traced_run.traced.is_empty() {
        bail!(
            "the tracer reported nothing (is fanotify available in the guest kernel?); console:\n{}",
            tail(&traced_run.console, 30)
        );
    }
    let lines = index_from_trace(&full, &traced_run.traced, &exclude);
    progress_line(&format!(
        "{} paths traced, {} package paths in the index",
        traced_run.traced.len(),
        lines.len()
    ));

    // The candidate index lives beside the final one until the minimal image passes.
    let dir = index_path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file_name = index_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "files.txt".into());
    let candidate = dir.join(format!(".{file_name}.candidate"));
    let mut text = format!(
        "# Files {name} needs, found by `kiln trace` (workload: {workload}).\n\
         # One path or glob per line; the ELF closure of executables and libraries is added at build.\n"
    );
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    let previous = std::fs::read_to_string(&index_path).unwrap_or_default();
    if let Some(kept) = hand_kept(&previous) {
        progress_line(&format!(
            "keeping {} lines added by hand (from `{HAND_KEPT}` on)",
            kept.lines().count()
        ));
        text.push_str(kept);
        if !kept.ends_with('\n') {
            text.push('\n');
        }
    }
    std::fs::write(&candidate, &text)
        .with_context(|| format!("writing {}", candidate.display()))?;

    progress_line("building the minimal image from the traced index");
    let min_dir = images.join(format!("{name}-{key}-minimal"));
    let min = match build(&recipe, &min_dir, &Variant::WithIndex(candidate.clone())) {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&candidate);
            return Err(e);
        }
    };
    let min_run = boot_and_work(&a, &min_dir, &min, &workload);
    let min_run = match min_run {
        Ok(r) if r.workload.status.success() => r,
        other => {
            let _ = std::fs::remove_file(&candidate);
            let (why, output) = match &other {
                Ok(r) => (
                    format!("the workload failed ({})", r.workload.status),
                    format!("{}\n{}", output_text(&r.workload), r.console),
                ),
                Err(e) => (format!("{e:#}"), String::new()),
            };
            let missing =
                missing_files(&full, &min, &traced_run.traced, &format!("{why}\n{output}"));
            let named = if missing.is_empty() {
                "the tracer saw no file that the minimal image lacks".to_string()
            } else {
                format!(
                    "traced in the full image but missing from the minimal one: {}",
                    missing.join(", ")
                )
            };
            bail!(
                "trace rejected: the minimal image does not pass the workload: {why}; {named}. The index was not written ({}).",
                index_path.display()
            );
        }
    };
    drop(min_run);
    std::fs::rename(&candidate, &index_path)
        .with_context(|| format!("writing {}", index_path.display()))?;
    println!(
        "kiln: trace accepted: index {} ({} lines)",
        index_path.display(),
        lines.len()
    );
    println!(
        "kiln: initramfs with every package file {} ({} files), minimal {} ({} files)",
        human(full.initramfs.size),
        full.files.len(),
        human(min.initramfs.size),
        min.files.len()
    );
    if recipe.index_path().as_deref() != Some(index_path.as_path()) && a.index.is_none() {
        println!(
            "kiln: add `index = \"{file_name}\"` to {} to build the minimal image",
            recipe.config_path().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Traced files of the full image that the minimal image lacks; those the failure output
/// mentions first.
fn missing_files(
    full: &ImageManifest,
    min: &ImageManifest,
    traced: &BTreeSet<String>,
    output: &str,
) -> Vec<String> {
    let have: BTreeSet<&str> = min.files.iter().map(|f| f.path.as_str()).collect();
    let full_files: BTreeSet<&str> = full
        .files
        .iter()
        .filter(|f| f.kind == FileKind::File)
        .map(|f| f.path.as_str())
        .collect();
    let mut missing: Vec<String> = traced
        .iter()
        .filter(|p| full_files.contains(p.as_str()) && !have.contains(p.as_str()))
        .cloned()
        .collect();
    missing.sort_by_key(|p| (!output.contains(p.as_str()), p.clone()));
    missing.truncate(10);
    missing
}

fn build(recipe: &Recipe, out: &Path, variant: &Variant) -> Result<ImageManifest> {
    let opts = BuildOptions {
        out_dir: out.to_path_buf(),
        cache_root: dirs::cache_root(),
        init_binary: kiln_bake::find_init()?,
        refresh: false,
        force: false,
    };
    let r = kiln_bake::build_variant(recipe, &opts, variant, &kiln_bake::Quiet)
        .with_context(|| format!("building {}", recipe.dir.display()))?;
    Ok(r.manifest)
}

fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Boot `image` through the fleet (admitted and listed like any VM), wait for readiness, run
/// the workload, power off; the console is captured.
fn boot_and_work(
    a: &TraceArgs,
    image: &Path,
    m: &ImageManifest,
    workload: &str,
) -> Result<Outcome> {
    let fleet = dirs::fleet()?;
    // The image with every package file may need more memory than the recipe gives: the kernel
    // holds the compressed and the unpacked archive at once.
    let needed = (m.initramfs.uncompressed_size + m.initramfs.size) / (1 << 20) * 2 + 96;
    let memory = u32::try_from(needed).unwrap_or(u32::MAX).max(m.boot.memory);
    let p = kiln_fleet::Prepared {
        config: kiln_fleet::VmConfig {
            image: Some(image.display().to_string()),
            name: Some(format!("trace-{}-{}", m.name, std::process::id())),
            ports: a.ports.clone(),
            memory: Some(memory),
            ready_timeout: a.ready_timeout,
            accel: Some(a.accel),
            ..kiln_fleet::VmConfig::default()
        },
        image: kiln_fleet::Image {
            dir: image.to_path_buf(),
            manifest: m.clone(),
            built: None,
        },
    };
    let accel = crate::run::accel(&fleet, &p)?;
    let capture = Capture::default();
    let mut fg = fleet.launch_foreground(&p, accel, false, Some(Box::new(capture.clone())))?;
    let never = AtomicBool::new(false);
    if let Watched::Ended(end) = fg.watch(Until::Ready, &never, &mut |_| {}) {
        let console = tail(&capture.text(), 30);
        if end.not_ready {
            bail!(kiln_vm::VmError::NotReady {
                seconds: end.ready_timeout.as_secs(),
                tail: console,
            });
        }
        match end.rc_status {
            Some(status) => bail!(
                "the service exited with status {status} before it was ready; console:\n{console}"
            ),
            None => bail!("the VM ended before it was ready; console:\n{console}"),
        }
    }
    progress_line(&format!(
        "{} ready; running the workload: {workload}",
        m.name
    ));
    let result = run_workload(workload, Duration::from_secs(a.workload_timeout));
    let end = fg.session.stop(Duration::from_secs(10));
    tracing::debug!(stopped = ?end.stopped, "stopped");
    drop(fg);
    let workload = result?;
    let console = capture.text();
    Ok(Outcome {
        workload,
        traced: traced_paths(&console),
        console,
    })
}

/// `sh -c WORKLOAD` with a deadline; a workload past it is killed and counts as failed.
fn run_workload(workload: &str, timeout: Duration) -> Result<std::process::Output> {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(workload)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting the workload with sh -c")?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "the workload did not finish within {} s; its output:\n{}",
                timeout.as_secs(),
                output_text(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The comment that starts an index's lines added by hand, which a new trace keeps.
const HAND_KEPT: &str = "# Not from the trace";

/// The part of an index from its [`HAND_KEPT`] comment line to the end, if it has one.
fn hand_kept(index: &str) -> Option<&str> {
    let mut at = 0;
    for line in index.split_inclusive('\n') {
        if line.starts_with(HAND_KEPT) {
            return Some(&index[at..]);
        }
        at += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_rootfs::FileEntry;

    const BASE: &str = "localhost:5000/app:1@sha256:00";

    fn entry(path: &str, kind: FileKind, target: Option<&str>, source: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind,
            size: 1,
            mode: 0o644,
            uid: 0,
            gid: 0,
            target: target.map(str::to_string),
            source: source.into(),
            reason: String::new(),
        }
    }

    #[test]
    fn trace_lines_are_collected() {
        let c = "boot\nkiln: trace /usr/sbin/nginx\r\nkiln: tracer on (fanotify)\nkiln: trace /etc/x\nkiln: trace /usr/sbin/nginx\n";
        let t = traced_paths(c);
        assert_eq!(
            t.into_iter().collect::<Vec<_>>(),
            ["/etc/x", "/usr/sbin/nginx"]
        );
    }

    #[test]
    fn links_resolve_relative_and_absolute() {
        let mut links = BTreeMap::new();
        links.insert("/lib".to_string(), "usr/lib".to_string());
        links.insert("/etc/a/enabled".to_string(), "../b/real".to_string());
        links.insert(
            "/usr/lib/x/libz.so.1".to_string(),
            "libz.so.1.2".to_string(),
        );
        assert_eq!(
            resolve_links("/lib/x/libz.so.1", &links),
            "/usr/lib/x/libz.so.1.2"
        );
        assert_eq!(resolve_links("/etc/a/enabled", &links), "/etc/b/real");
    }

    #[test]
    fn lines_added_by_hand_are_found_to_the_end() {
        let index = "# Files sshd needs, found by `kiln trace`\n/usr/sbin/dropbear\n\
                     # Not from the trace: file transfer\n/usr/lib/openssh/sftp-server\n\
                     /usr/bin/scp\n";
        let kept = hand_kept(index).expect("the index has lines added by hand");
        assert!(kept.starts_with(HAND_KEPT), "{kept}");
        assert!(kept.contains("/usr/lib/openssh/sftp-server") && kept.contains("/usr/bin/scp"));
        assert!(
            !kept.contains("/usr/sbin/dropbear"),
            "a traced line: {kept}"
        );
        assert_eq!(hand_kept("# Files\n/a\n/b\n"), None);
        assert_eq!(
            hand_kept("/a\n# Not from the trace: x\n/b"),
            Some("# Not from the trace: x\n/b")
        );
    }

    #[test]
    fn index_keeps_traced_package_and_image_paths_and_their_links() {
        let pkg = "package nginx-common 1";
        let m_files = vec![
            entry("/etc/nginx/mime.types", FileKind::File, None, pkg),
            entry("/etc/nginx/unused", FileKind::File, None, pkg),
            entry(
                "/etc/nginx/sites-enabled/default",
                FileKind::Symlink,
                Some("../sites-available/default"),
                pkg,
            ),
            entry(
                "/etc/nginx/sites-available/default",
                FileKind::File,
                None,
                pkg,
            ),
            entry("/etc/rc", FileKind::File, None, "recipe"),
            entry("/var/log/nginx", FileKind::Dir, None, pkg),
            // The `from` image's files count as the packages' do; Kiln's own never.
            entry("/app/server", FileKind::File, None, BASE),
            entry("/app/unused", FileKind::File, None, BASE),
            entry("/app/run", FileKind::Symlink, Some("server"), BASE),
            entry(
                "/app/mods",
                FileKind::Symlink,
                Some("../lib/app/mods"),
                BASE,
            ),
            entry("/lib/app/mods/echo.so", FileKind::File, None, BASE),
            entry(
                "/app/other",
                FileKind::Symlink,
                Some("../lib/app/else"),
                BASE,
            ),
            entry(
                "/bin/sh",
                FileKind::File,
                None,
                "kiln busybox 1.35.0 musl 0",
            ),
        ];
        let json = serde_json::json!({
            "kiln_version": "0", "name": "n", "fingerprint": "", "recipe": "",
            "kernel": {"file": "k", "boot": "pvh", "file_size": 0, "description": "", "version": null, "sha256": "", "size": 0},
            "initramfs": {"file": "i", "compression": "xz", "size": 0, "uncompressed_size": 0, "entries": 0, "sha256": ""},
            "boot": {"cmdline": "", "cpus": 1, "memory": 128, "ports": [], "ready": "none", "ready_timeout": 1, "network": "user"},
            "modules": [], "files": m_files, "base": BASE,
        });
        let m: ImageManifest = serde_json::from_value(json).expect("manifest");
        let traced: BTreeSet<String> = [
            "/etc/nginx/mime.types",
            "/etc/nginx/sites-available/default",
            "/etc/rc",
            "/var/log/nginx",
            "/run/nginx.pid",
            "/app/server",
            "/bin/sh",
            "/lib/app/mods/echo.so",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let idx = index_from_trace(&m, &traced, &[]);
        assert_eq!(
            idx,
            [
                "/app/mods",
                "/app/run",
                "/app/server",
                "/etc/nginx/mime.types",
                "/etc/nginx/sites-available/default",
                "/etc/nginx/sites-enabled/default",
                "/lib/app/mods/echo.so",
                "/var/log/nginx"
            ]
        );
        let ex = [Glob::new("/etc/nginx/mime*").expect("glob")];
        assert!(!index_from_trace(&m, &traced, &ex).contains(&"/etc/nginx/mime.types".to_string()));
        let missing = missing_files(&m, &m, &traced, "");
        assert!(missing.is_empty());
    }
}
