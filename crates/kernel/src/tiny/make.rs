//! Running `make` out of tree with a log and compile progress.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use super::{io_err, TinyError, TinyProgress};

/// Commands a kernel build runs (besides the compiler driver's own tools).
const TOOLS: &[&str] = &[
    "make", "gcc", "ld", "flex", "bison", "bc", "perl", "tar", "xz", "strip", "patch",
];

/// Whether an executable file named `cmd` is in a folder of `$PATH`.
pub fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            std::fs::metadata(dir.join(cmd)).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

pub(crate) fn check_tools() -> Result<(), TinyError> {
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(TinyError::MissingTools {
            missing: missing.join(", "),
        })
    }
}

/// `make -C <tree> O=<obj>` with its output appended to `<out>/build.log`.
pub(crate) struct Make {
    tree: PathBuf,
    /// The object folder (`O=`).
    pub obj: PathBuf,
    jobs: usize,
    log_path: PathBuf,
    log: File,
    failed_log: PathBuf,
}

/// The object file named by a kbuild ` CC ` line (`  CC      kernel/fork.o`).
pub(crate) fn cc_target(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix("CC")?;
    let rest = rest.strip_prefix(" [M]").unwrap_or(rest);
    if !rest.starts_with(' ') {
        return None;
    }
    let target = rest.trim();
    (!target.is_empty()).then_some(target)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Make {
    pub(crate) fn new(
        tree: &Path,
        out: &Path,
        jobs: usize,
        failed_log: &Path,
    ) -> Result<Make, TinyError> {
        let obj = out.join("build");
        std::fs::create_dir_all(&obj).map_err(io_err("create", &obj))?;
        let log_path = out.join("build.log");
        let log = File::create(&log_path).map_err(io_err("create", &log_path))?;
        Ok(Make {
            tree: tree.to_path_buf(),
            obj,
            jobs: jobs.max(1),
            log_path,
            log,
            failed_log: failed_log.to_path_buf(),
        })
    }

    fn command(&self, targets: &[&str]) -> Command {
        let mut c = Command::new("make");
        c.arg("-C")
            .arg(&self.tree)
            .arg(format!("O={}", self.obj.display()))
            .arg("ARCH=x86_64")
            .arg(format!("-j{}", self.jobs))
            .args(targets)
            .env("KBUILD_BUILD_USER", "kiln")
            .env("KBUILD_BUILD_HOST", "kiln")
            .env("LC_ALL", "C")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL")
            .env_remove("KBUILD_OUTPUT")
            .env_remove("KCONFIG_CONFIG")
            .env_remove("LOCALVERSION")
            .stdin(Stdio::null());
        c
    }

    fn failed(&mut self, step: &str, status: String) -> TinyError {
        let _ = self.log.flush();
        let log = match std::fs::copy(&self.log_path, &self.failed_log) {
            Ok(_) => self.failed_log.clone(),
            Err(_) => self.log_path.clone(),
        };
        TinyError::BuildFailed {
            step: step.to_string(),
            status,
            tail: tail(&log, 25),
            log,
        }
    }

    /// Run make for `targets`; with `progress`, report `Compiling` for every
    /// `CC` line. Returns the number of `CC` lines.
    pub(crate) fn run(
        &mut self,
        targets: &[&str],
        progress: Option<(u64, &dyn Fn(TinyProgress))>,
    ) -> Result<u64, TinyError> {
        let step = targets.join(" ");
        let _ = writeln!(self.log, "### make {step}");
        let mut child = self
            .command(targets)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err("run make in", &self.tree))?;
        let (tx, rx) = mpsc::channel::<String>();
        let mut readers = Vec::new();
        let streams: [Option<Box<dyn std::io::Read + Send>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        for stream in streams.into_iter().flatten() {
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                    if tx
                        .send(String::from_utf8_lossy(&line).into_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            }));
        }
        drop(tx);
        let mut units = 0u64;
        let mut log_error = None;
        for line in rx {
            if let Err(e) = writeln!(self.log, "{line}") {
                log_error.get_or_insert(e);
            }
            if let (Some((expected, report)), Some(target)) = (&progress, cc_target(&line)) {
                units += 1;
                let expected = (*expected).max(units);
                report(TinyProgress::Compiling {
                    units,
                    expected,
                    percent: (units * 100 / expected).min(99) as u8,
                    current: target.to_string(),
                });
            }
        }
        for r in readers {
            let _ = r.join();
        }
        let status = child
            .wait()
            .map_err(io_err("wait for make in", &self.tree))?;
        if let Some(e) = log_error {
            return Err(io_err("write", &self.log_path)(e));
        }
        if !status.success() {
            return Err(self.failed(&step, status.to_string()));
        }
        Ok(units)
    }

    /// `strip --strip-all` (the PVH note is an allocated section: it stays).
    pub(crate) fn strip(&mut self, from: &Path, to: &Path) -> Result<(), TinyError> {
        let out = Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(to)
            .arg(from)
            .output()
            .map_err(io_err("run strip on", from))?;
        let _ = self.log.write_all(&out.stdout);
        let _ = self.log.write_all(&out.stderr);
        if out.status.success() {
            Ok(())
        } else {
            Err(self.failed("strip vmlinux", out.status.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_cc_lines() {
        assert_eq!(cc_target("  CC      kernel/fork.o"), Some("kernel/fork.o"));
        assert_eq!(cc_target("  CC [M]  drivers/x.o"), Some("drivers/x.o"));
        assert_eq!(cc_target("  CCLD    x"), None);
        assert_eq!(cc_target("  LD      vmlinux"), None);
        assert_eq!(cc_target("  CC"), None);
    }
}
