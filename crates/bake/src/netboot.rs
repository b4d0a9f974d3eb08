//! Booting an image over the network (`kiln netboot`): a serving folder with the PC kernel, the
//! initramfs and an iPXE script naming them relatively, and the servers for that folder — TFTP
//! through tftpd-hpa's `in.tftpd` and a static HTTP server of Kiln's own (GET and HEAD of the
//! folder's files, nothing else).
//!
//! Only images with a PC kernel (`[image] format = "iso"`: PCI and virtio-pci built in) can
//! boot this way; the microVM kernel has no PCI, so it would find no NIC and no disk on a PC.

use crate::manifest::{ImageManifest, PcInfo};
use crate::BuildError;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The iPXE script's file name in a serving folder.
pub const SCRIPT: &str = "boot.ipxe";
/// The kernel's file name in a serving folder.
pub const KERNEL: &str = "vmlinuz";
/// The initramfs's file name in a serving folder.
pub const INITRD: &str = "initrd";
/// The package that ships `in.tftpd`.
pub const TFTPD_PACKAGE: &str = "tftpd-hpa";
/// util-linux's setpriv, which starts in.tftpd with a parent-death signal.
const SETPRIV: &str = "/usr/bin/setpriv";
/// How long a server gets to answer its first request.
pub const SERVER_DEADLINE: Duration = Duration::from_secs(10);

/// Errors of netbooting.
#[derive(Debug, thiserror::Error)]
pub enum NetbootError {
    /// The image folder could not be read.
    #[error(transparent)]
    Image(#[from] BuildError),
    /// The image has no PC kernel.
    #[error("{}: this image's kernel has no PCI, so it cannot boot on a PC from the network; add `[image]` `format = \"iso\"` to the recipe's kiln.toml and build it again with `kiln build`", .dir.display())]
    NotPc {
        /// The image folder.
        dir: PathBuf,
    },
    /// The image is a disk image, not an initramfs.
    #[error("{}: its root is a {format} image on a drive; netboot serves an initramfs: use `[image] format = \"iso\"`", .dir.display())]
    NotInitramfs {
        /// The image folder.
        dir: PathBuf,
        /// The root's format.
        format: String,
    },
    /// tftpd-hpa is missing.
    #[error("{binary} not found: install the TFTP server (on Debian: apt-get install {TFTPD_PACKAGE}; its service need not be enabled), or set KILN_TFTPD")]
    NoTftpd {
        /// The binary looked for.
        binary: String,
    },
    /// in.tftpd cannot start without root.
    #[error("--listen {addr}: in.tftpd (tftpd-hpa) only starts as root; run this as root, serve over HTTP alone with --http ADDR:PORT, or leave out --listen to boot from QEMU's built-in TFTP")]
    TftpdNeedsRoot {
        /// Where it was to listen.
        addr: SocketAddr,
    },
    /// in.tftpd ended or did not answer.
    #[error("in.tftpd on {addr}: {message}")]
    Tftpd {
        /// Where it was to listen.
        addr: SocketAddr,
        /// What went wrong, and what to do.
        message: String,
    },
    /// The HTTP server could not listen.
    #[error("HTTP on {addr}: {error}; choose another ADDR:PORT with --http")]
    Http {
        /// Where it was to listen.
        addr: SocketAddr,
        /// The error.
        error: std::io::Error,
    },
    /// An I/O error on a named path.
    #[error("{}: {error}", .path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

impl NetbootError {
    /// Whether the user's input is at fault (exit code 2).
    pub fn is_user_error(&self) -> bool {
        match self {
            NetbootError::Image(e) => e.is_user_error(),
            NetbootError::NotPc { .. }
            | NetbootError::NotInitramfs { .. }
            | NetbootError::NoTftpd { .. }
            | NetbootError::TftpdNeedsRoot { .. } => true,
            NetbootError::Http { error, .. } => {
                matches!(
                    error.kind(),
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
                )
            }
            _ => false,
        }
    }
}

fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> NetbootError {
    let path = path.into();
    move |error| NetbootError::Io { path, error }
}

/// The image's PC boot files, or the refusal of an image that has none.
pub fn pc_info<'a>(dir: &Path, m: &'a ImageManifest) -> Result<&'a PcInfo, NetbootError> {
    let pc = m.pc.as_ref().ok_or_else(|| NetbootError::NotPc {
        dir: dir.to_path_buf(),
    })?;
    if m.initramfs.is_disk() {
        return Err(NetbootError::NotInitramfs {
            dir: dir.to_path_buf(),
            format: m.initramfs.format.clone(),
        });
    }
    Ok(pc)
}

/// The iPXE script: the kernel and initramfs by names relative to the script's own URL, so it
/// works from QEMU's built-in TFTP, a TFTP server or an HTTP server alike. `initrd=` names the
/// initramfs for kernels booted through their EFI stub (iPXE on UEFI); BIOS iPXE passes it
/// either way and Linux ignores the argument.
pub fn script(cmdline: &str) -> String {
    format!(
        "#!ipxe\necho Kiln: loading {KERNEL} and {INITRD}\nkernel {KERNEL} initrd={INITRD} {}\ninitrd {INITRD}\nboot\n",
        cmdline.trim()
    )
}

/// A prepared serving folder.
#[derive(Debug, Clone)]
pub struct Served {
    /// The folder: `boot.ipxe`, `vmlinuz`, `initrd`.
    pub dir: PathBuf,
    /// The kernel command line in the script.
    pub cmdline: String,
}

/// Fill `out_dir` (made if missing) with the image's PC kernel and initramfs (hard links when
/// the file system allows, else copies) and `boot.ipxe` booting them with the image's PC
/// command line plus `extra_args` (e.g. `kiln.ip=192.168.1.50/24 kiln.gw=192.168.1.1` on a real
/// network). Everything is made world-readable: tftpd-hpa drops to `nobody` when started as
/// root.
pub fn prepare(
    image_dir: &Path,
    m: &ImageManifest,
    out_dir: &Path,
    extra_args: &str,
) -> Result<Served, NetbootError> {
    use std::os::unix::fs::PermissionsExt;
    let pc = pc_info(image_dir, m)?;
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    std::fs::set_permissions(out_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io(out_dir))?;
    for (from, to) in [(&pc.kernel, KERNEL), (&m.initramfs.file, INITRD)] {
        let src = image_dir.join(from);
        let dest = out_dir.join(to);
        let _ = std::fs::remove_file(&dest);
        if std::fs::hard_link(&src, &dest).is_err() {
            std::fs::copy(&src, &dest).map_err(io(&src))?;
        }
        let mode = std::fs::metadata(&dest).map_err(io(&dest))?.permissions();
        if mode.mode() & 0o444 != 0o444 {
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))
                .map_err(io(&dest))?;
        }
    }
    let script_path = out_dir.join(SCRIPT);
    let cmdline = format!("{} {}", pc.cmdline.trim(), extra_args.trim())
        .trim()
        .to_string();
    std::fs::write(&script_path, script(&cmdline)).map_err(io(&script_path))?;
    std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o644))
        .map_err(io(&script_path))?;
    Ok(Served {
        dir: out_dir.to_path_buf(),
        cmdline,
    })
}

/// A fresh serving folder in `parent` (Kiln's `CACHE/netboot`): a [`kiln_image::WorkDir`]
/// (`.NAME.tmp-*`, locked while this run lives, removed when dropped); the folders of runs
/// that were killed are swept first, as a killed build's are.
pub fn serving_folder(parent: &Path, name: &str) -> Result<kiln_image::WorkDir, NetbootError> {
    kiln_image::WorkDir::beside(&parent.join(name)).map_err(io(parent))
}

/// `in.tftpd`: `$KILN_TFTPD`, or `/usr/sbin/in.tftpd`, or on PATH.
pub fn tftpd_binary() -> Result<PathBuf, NetbootError> {
    let name = std::env::var("KILN_TFTPD").unwrap_or_else(|_| "in.tftpd".into());
    let found = if name.contains('/') {
        Some(PathBuf::from(&name)).filter(|p| p.is_file())
    } else {
        ["/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(&name))
            .chain(
                std::env::var_os("PATH")
                    .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| d.join(&name)),
            )
            .find(|p| p.is_file())
    };
    found.ok_or(NetbootError::NoTftpd { binary: name })
}

/// A running `in.tftpd` serving one folder; stopped (its process group killed) on drop.
pub struct Tftpd {
    child: Child,
    addr: SocketAddr,
}

impl Tftpd {
    /// Start in.tftpd on `addr` for `dir` and wait until it answers a read of `boot.ipxe`.
    /// It chroots into the folder and serves as `nobody` (`--secure`). tftpd-hpa needs root to
    /// start (it sets its supplementary groups even to stay the same user): anyone else is
    /// told to use QEMU's built-in TFTP or Kiln's HTTP server instead.
    pub fn start(dir: &Path, addr: SocketAddr) -> Result<Tftpd, NetbootError> {
        let bin = tftpd_binary()?;
        if current_uid() != Some(0) {
            return Err(NetbootError::TftpdNeedsRoot { addr });
        }
        let dir = std::fs::canonicalize(dir).map_err(io(dir))?;
        // It dies with us even when we are killed outright: util-linux's setpriv sets the
        // parent-death signal and execs it (the listener stays root; its per-transfer children
        // drop to `nobody` and end with their transfer).
        let mut cmd = match Path::new(SETPRIV).is_file() {
            true => {
                let mut c = Command::new(SETPRIV);
                c.args(["--pdeathsig", "KILL", "--"]).arg(&bin);
                c
            }
            false => Command::new(&bin),
        };
        cmd.args(["--foreground", "--address", &addr.to_string()]);
        cmd.args(["--secure", "--user", "nobody"]);
        cmd.arg(&dir);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Its own process group: the listener forks a child per transfer, all stopped together.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(io(&bin))?;
        let mut t = Tftpd { child, addr };
        t.wait_answering()?;
        Ok(t)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn wait_answering(&mut self) -> Result<(), NetbootError> {
        let deadline = Instant::now() + SERVER_DEADLINE;
        let err = |message: String| NetbootError::Tftpd {
            addr: self.addr,
            message,
        };
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                return Err(err(format!(
                    "exited at start ({status}){}; is the address this host's and the port free? (ports below 1024 need root)",
                    if stderr.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", stderr.trim())
                    }
                )));
            }
            match tftp_probe(self.addr, SCRIPT, Duration::from_millis(300)) {
                Ok(()) => return Ok(()),
                Err(ProbeError::Refused(m)) => {
                    return Err(err(format!(
                        "answers, but refused {SCRIPT}: {m} (the folder must be readable by the server's user)"
                    )))
                }
                Err(ProbeError::NoAnswer) => {}
            }
            if Instant::now() >= deadline {
                return Err(err(format!(
                    "no answer within {} s",
                    SERVER_DEADLINE.as_secs()
                )));
            }
        }
    }
}

impl Drop for Tftpd {
    fn drop(&mut self) {
        // The listener forks a child per transfer, all in its process group.
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The effective uid (the owner of `/proc/self`).
fn current_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Why a TFTP probe failed.
#[derive(Debug)]
pub enum ProbeError {
    /// Nothing answered in time.
    NoAnswer,
    /// The server answered with a TFTP error.
    Refused(String),
}

/// Ask the TFTP server at `addr` for `file` (RFC 1350 read request) and end the transfer at
/// its first data packet: Ok when it sends data, the server's message when it sends an error.
pub fn tftp_probe(addr: SocketAddr, file: &str, wait: Duration) -> Result<(), ProbeError> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    let sock = UdpSocket::bind(local).map_err(|_| ProbeError::NoAnswer)?;
    sock.set_read_timeout(Some(wait))
        .map_err(|_| ProbeError::NoAnswer)?;
    let mut rrq = vec![0u8, 1];
    rrq.extend_from_slice(file.as_bytes());
    rrq.push(0);
    rrq.extend_from_slice(b"octet\0");
    sock.send_to(&rrq, addr).map_err(|_| ProbeError::NoAnswer)?;
    let mut buf = [0u8; 600];
    let (n, from) = sock.recv_from(&mut buf).map_err(|_| ProbeError::NoAnswer)?;
    match (n >= 4).then(|| u16::from_be_bytes([buf[0], buf[1]])) {
        Some(3) => {
            // DATA: stop the transfer (ERROR 0), the server's child ends at once.
            let _ = sock.send_to(b"\x00\x05\x00\x00probe done\x00", from);
            Ok(())
        }
        Some(5) => {
            let code = u16::from_be_bytes([buf[2], buf[3]]);
            let msg = String::from_utf8_lossy(&buf[4..n]);
            Err(ProbeError::Refused(format!(
                "TFTP error {code}: {}",
                msg.trim_end_matches('\0')
            )))
        }
        _ => Err(ProbeError::NoAnswer),
    }
}

/// A static HTTP server for one folder's files (GET and HEAD of plain file names; no listings,
/// no sub-folders), on tiny_http, answering from a thread of its own; stopped on drop.
pub struct HttpServer {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Listen on `addr` (port 0: any free port) and serve `dir`.
    pub fn start(dir: &Path, addr: SocketAddr) -> Result<HttpServer, NetbootError> {
        let server = tiny_http::Server::http(addr).map_err(|e| NetbootError::Http {
            addr,
            error: std::io::Error::other(e.to_string()),
        })?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| NetbootError::Http {
                addr,
                error: std::io::Error::other("not an IP listener"),
            })?;
        let dir = std::fs::canonicalize(dir).map_err(io(dir))?;
        let server = Arc::new(server);
        let srv = server.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-http".into())
            .spawn(move || {
                // `incoming_requests` ends when the server is unblocked on drop.
                for req in srv.incoming_requests() {
                    let _ = answer(req, &dir);
                }
            })
            .map_err(io(PathBuf::from("kiln-http thread")))?;
        Ok(HttpServer {
            addr: bound,
            server,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answer one request: the file for GET/HEAD of a plain name, 404 for anything else in the
/// folder, 405 for other methods.
fn answer(req: tiny_http::Request, dir: &Path) -> std::io::Result<()> {
    use tiny_http::{Header, Method, Response};
    let head = *req.method() == Method::Head;
    if *req.method() != Method::Get && !head {
        let allow = Header::from_bytes("Allow", "GET, HEAD").expect("valid header");
        return req.respond(Response::empty(405).with_header(allow));
    }
    match resolve(dir, req.url()).and_then(|p| std::fs::File::open(p).ok()) {
        Some(f) => {
            let ctype = if req.url().ends_with(".ipxe") {
                "text/plain"
            } else {
                "application/octet-stream"
            };
            let ctype = Header::from_bytes("Content-Type", ctype).expect("valid header");
            req.respond(Response::from_file(f).with_header(ctype))
        }
        None => req.respond(Response::from_string("not found\n").with_status_code(404)),
    }
}

/// The file a request target names: one plain file name in the folder, not a hidden one (the
/// folder's `.lock`); a query is ignored.
fn resolve(dir: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?;
    let name = path.strip_prefix('/')?;
    let plain = !name.is_empty()
        && !name.contains('/')
        && !name.contains('\\')
        && !name.starts_with('.')
        && !name.contains('%');
    let p = dir.join(name);
    (plain && p.is_file()).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpStream;

    #[test]
    fn script_names_files_relatively() {
        let s = script(" console=ttyS0,115200 reboot=t panic=-1 ");
        assert_eq!(
            s,
            "#!ipxe\necho Kiln: loading vmlinuz and initrd\n\
             kernel vmlinuz initrd=initrd console=ttyS0,115200 reboot=t panic=-1\n\
             initrd initrd\nboot\n"
        );
    }

    #[test]
    fn resolve_takes_only_plain_names() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("initrd"), b"x").expect("write");
        std::fs::create_dir(d.path().join("sub")).expect("mkdir");
        assert_eq!(
            resolve(d.path(), "/initrd?x=1"),
            Some(d.path().join("initrd"))
        );
        for bad in [
            "/",
            "/..",
            "/../etc/passwd",
            "/sub",
            "initrd",
            "/sub/x",
            "/%2e%2e",
            "/.lock",
        ] {
            assert_eq!(resolve(d.path(), bad), None, "{bad}");
        }
    }

    #[test]
    fn http_serves_get_and_head_and_refuses_the_rest() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("boot.ipxe"), b"#!ipxe\n").expect("write");
        let s = HttpServer::start(d.path(), "127.0.0.1:0".parse().expect("a")).expect("start");
        let ask = |req: &str| {
            let mut c = TcpStream::connect(s.addr()).expect("connect");
            c.write_all(req.as_bytes()).expect("write");
            let mut out = String::new();
            c.read_to_string(&mut out).expect("read");
            out
        };
        let status = |r: &str| r.split(' ').nth(1).unwrap_or("").to_string();
        let get = ask("GET /boot.ipxe HTTP/1.0\r\n\r\n");
        assert_eq!(status(&get), "200", "{get}");
        assert!(get.contains("Content-Length: 7\r\n") && get.ends_with("\r\n\r\n#!ipxe\n"));
        let head = ask("HEAD /boot.ipxe HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(
            status(&head) == "200" && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        // Keep-alive: two requests on one connection.
        let two =
            ask("GET /boot.ipxe HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(two.contains(" 200 ") && two.contains(" 404 "), "{two}");
        assert_eq!(status(&ask("PUT /boot.ipxe HTTP/1.0\r\n\r\n")), "405");
        assert_eq!(status(&ask("GET /../x HTTP/1.0\r\n\r\n")), "404");
    }

    #[test]
    fn serving_folders_of_dead_runs_are_swept() {
        let d = tempfile::tempdir().expect("tmp");
        // A killed run's folder: unlocked, its lock file left behind.
        let dead = d.path().join(".httpd.tmp-abc");
        let other = d.path().join("notes");
        std::fs::create_dir(&dead).expect("mkdir");
        std::fs::write(dead.join(".lock"), b"").expect("lock");
        std::fs::create_dir(&other).expect("mkdir");
        let f = serving_folder(d.path(), "httpd").expect("folder");
        assert!(!dead.exists() && other.exists());
        assert_eq!(f.path().parent(), Some(d.path()));
        // A live run's folder stays.
        let again = serving_folder(d.path(), "httpd").expect("folder");
        assert!(f.path().exists() && again.path().exists());
        let gone = f.path().to_path_buf();
        drop(f);
        assert!(!gone.exists(), "a serving folder outlived its run");
    }

    #[test]
    fn tftp_probe_without_a_server_is_no_answer() {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = sock.local_addr().expect("addr");
        drop(sock);
        assert!(matches!(
            tftp_probe(addr, SCRIPT, Duration::from_millis(100)),
            Err(ProbeError::NoAnswer)
        ));
    }
}
