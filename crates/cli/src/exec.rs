//! `kiln exec` and `kiln cp`: one call into the fleet each, plus the terminal (raw mode, the
//! window size and its changes) and the exit code.

use crate::{dirs, term, BadInput};
use anyhow::{Context, Result};
use clap::Args;
use kiln_fleet::{ExecEvent, ExecRequest};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `kiln exec`'s flags.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Pass stdin to the command (without it the command's input is empty).
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal (window size and resizes follow this one's).
    #[arg(short, long)]
    tty: bool,
    /// Set an environment variable for the command (repeatable), on top of rc's.
    #[arg(short, long, value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The working folder in the guest (default /).
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// The VM's name.
    name: String,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// The size of the terminal on fd 1 (or 0): (rows, columns).
fn window_size() -> Option<(u16, u16)> {
    for fd in [1, 0, 2] {
        // SAFETY: TIOCGWINSZ writes a winsize into ws, which is valid and properly sized.
        unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            if libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
                return Some((ws.ws_row, ws.ws_col));
            }
        }
    }
    None
}

/// `kiln exec NAME [-i] [-t] [-e K=V] [-w DIR] -- CMD ARGS…`: the command's exit code (128 +
/// the signal if it was killed; 127 when the guest has no such command).
pub fn exec(a: ExecArgs) -> Result<ExitCode> {
    for kv in &a.env {
        if !kv.contains('=') || kv.starts_with('=') {
            return Err(BadInput(format!("--env {kv}: expected KEY=VALUE")).into());
        }
    }
    let mut env = a.env.clone();
    let tty = if a.tty {
        if let Ok(t) = std::env::var("TERM") {
            if !env.iter().any(|kv| kv.starts_with("TERM=")) {
                env.insert(0, format!("TERM={t}"));
            }
        }
        Some(window_size().unwrap_or((24, 80)))
    } else {
        None
    };
    let req = ExecRequest {
        argv: a.command.clone(),
        env,
        cwd: a.workdir.clone(),
        tty,
    };
    let mut session = dirs::fleet()?.exec(&a.name, &req)?;
    let input = session.input();
    // Raw mode only when the command has a terminal and we read a terminal.
    let raw = (a.tty && a.interactive).then(term::RawMode::enter);
    if a.interactive {
        let i = input.clone();
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if i.stdin(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = i.close_stdin();
        });
    } else {
        // A command that could not start may have closed the session already: its answer
        // says why.
        let _ = input.close_stdin();
    }
    if a.tty {
        let i = input.clone();
        if let Ok(mut signals) =
            signal_hook::iterator::Signals::new([signal_hook::consts::SIGWINCH])
        {
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    if let Some((rows, cols)) = window_size() {
                        if i.resize(rows, cols).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    loop {
        let ev = match session.next_event() {
            Ok(Some(ev)) => ev,
            Ok(None) => return Ok(ExitCode::from(1)),
            Err(e) => {
                drop(raw);
                return Err(e.into());
            }
        };
        match ev {
            ExecEvent::Stdout(d) => {
                // A closed stdout (`| head`) is the reader's choice, not an error.
                if out.write_all(&d).and_then(|()| out.flush()).is_err() {
                    drop(raw);
                    return Ok(ExitCode::from(141));
                }
            }
            ExecEvent::Stderr(d) => {
                let _ = err.write_all(&d);
            }
            ExecEvent::Error(m) => {
                let nl = if raw.as_ref().is_some_and(|r| r.is_tty()) {
                    "\r\n"
                } else {
                    "\n"
                };
                let _ = write!(err, "kiln exec: {m}{nl}");
            }
            ExecEvent::Exit(status) => {
                drop(raw);
                let _ = out.flush();
                return Ok(ExitCode::from(status.code().clamp(0, 255) as u8));
            }
        }
    }
}

/// One side of `kiln cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A file in VM `.0` at path `.1`.
    Vm(String, String),
    /// A host path.
    Host(PathBuf),
}

/// `NAME:PATH` is a VM's file when NAME is a VM name (no `/`); anything else is a host path.
pub fn place(arg: &str) -> Place {
    match arg.split_once(':') {
        Some((name, path))
            if !name.is_empty()
                && !name.contains('/')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Place::Vm(name.to_string(), path.to_string())
        }
        _ => Place::Host(PathBuf::from(arg)),
    }
}

/// The last component of a slash-separated path.
fn base_name(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or(p)
}

/// `kiln cp NAME:PATH HOSTPATH` or `kiln cp HOSTPATH NAME:PATH`: one regular file, its mode
/// kept. A host folder as the destination (or a guest path ending in `/`) takes the source's
/// name.
pub fn cp(src: &str, dest: &str) -> Result<ExitCode> {
    match (place(src), place(dest)) {
        (Place::Vm(name, path), Place::Host(host)) => copy_out(&name, &path, &host),
        (Place::Host(host), Place::Vm(name, path)) => copy_in(&host, &name, &path),
        (Place::Vm(..), Place::Vm(..)) => Err(BadInput(
            "cp: copy between two VMs through the host (one side must be a host path)".into(),
        )
        .into()),
        (Place::Host(_), Place::Host(_)) => Err(BadInput(format!(
            "cp: neither `{src}` nor `{dest}` is NAME:PATH (a file in a VM)"
        ))
        .into()),
    }
}

fn copy_out(name: &str, path: &str, host: &Path) -> Result<ExitCode> {
    if path.is_empty() {
        return Err(BadInput(format!("cp: {name}: give the file's path ({name}:/PATH)")).into());
    }
    let dest = if host.is_dir() {
        host.join(base_name(path))
    } else {
        host.to_path_buf()
    };
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(BadInput(format!("cp: {}: no such host folder", parent.display())).into());
    }
    // Written beside the destination, renamed into place once complete.
    let mut tmp = tempfile::Builder::new()
        .prefix(".kiln-cp-")
        .tempfile_in(&parent)
        .with_context(|| format!("creating a file in {}", parent.display()))?;
    let mode = dirs::fleet()?.copy_from_vm(name, path, tmp.as_file_mut())?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", dest.display()))?;
    tmp.persist(&dest)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", dest.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn copy_in(host: &Path, name: &str, path: &str) -> Result<ExitCode> {
    let meta =
        std::fs::metadata(host).map_err(|e| BadInput(format!("cp: {}: {e}", host.display())))?;
    if !meta.is_file() {
        return Err(BadInput(format!(
            "cp: {}: not a regular file (kiln cp copies single files)",
            host.display()
        ))
        .into());
    }
    let mut file =
        std::fs::File::open(host).map_err(|e| BadInput(format!("cp: {}: {e}", host.display())))?;
    let mut path = path.to_string();
    if path.is_empty() || path.ends_with('/') {
        let base = host
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_empty() {
            path.push('/');
        }
        path.push_str(&base);
    }
    let mode = meta.permissions().mode() & 0o7777;
    dirs::fleet()?.copy_to_vm(name, &path, mode, &mut file)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_paths_and_host_paths() {
        assert_eq!(
            place("web:/etc/hostname"),
            Place::Vm("web".into(), "/etc/hostname".into())
        );
        assert_eq!(place("web_1:x"), Place::Vm("web_1".into(), "x".into()));
        assert_eq!(place("./web:/x"), Place::Host("./web:/x".into()));
        assert_eq!(place("/tmp/a:b"), Place::Host("/tmp/a:b".into()));
        assert_eq!(place("file.txt"), Place::Host("file.txt".into()));
        assert_eq!(place(":x"), Place::Host(":x".into()));
        assert_eq!(base_name("/etc/hostname"), "hostname");
        assert_eq!(base_name("/tmp/dir/"), "dir");
        assert_eq!(base_name("x"), "x");
    }
}
