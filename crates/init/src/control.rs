//! The host control channel: a virtio-serial port named `org.kiln.control`.
//!
//! Protocol: the host writes newline-terminated commands, `poweroff` or
//! `reboot` (surrounding whitespace and `\r` ignored). Nothing is written
//! back; the host sees the resulting `kiln: shutdown requested` /
//! `kiln: reboot requested` lines on the serial console. Unknown commands
//! print a warning.
//!
//! The listener thread does not shut down itself: it signals PID 1 the way
//! busybox's `poweroff`/`reboot` applets do (`SIGUSR2` / `SIGTERM`), and the
//! main loop performs the shutdown. So those applets work from a guest shell
//! too.

use crate::{report, sys};

/// The virtio-serial port name the host uses.
pub const PORT_NAME: &str = "org.kiln.control";

/// How long to look for the port after start (modules may still be settling).
const FIND_TIMEOUT_MS: u64 = 2000;

/// A control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Graceful power-off.
    PowerOff,
    /// Graceful reboot (with `-no-reboot`, QEMU exits).
    Reboot,
}

/// Parse one line of the protocol; `Err` carries the trimmed unknown text
/// (`Ok(None)` for a blank line).
pub fn parse_command(line: &str) -> Result<Option<Command>, &str> {
    match line.trim() {
        "" => Ok(None),
        "poweroff" => Ok(Some(Command::PowerOff)),
        "reboot" => Ok(Some(Command::Reboot)),
        other => Err(other),
    }
}

/// Given `(device name, contents of its sysfs name file)` pairs, the device
/// name of the control port, if present.
pub fn find_port(ports: &[(String, String)]) -> Option<&str> {
    ports
        .iter()
        .find(|(_, name)| name.trim() == PORT_NAME)
        .map(|(dev, _)| dev.as_str())
}

/// List `/sys/class/virtio-ports/*` with their `name` files.
fn scan_ports() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/virtio-ports") else {
        return out;
    };
    for entry in dir.flatten() {
        let dev = entry.file_name().to_string_lossy().into_owned();
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        out.push((dev, name));
    }
    out
}

/// Open `/dev/DEV`, creating the node from sysfs `dev` (`MAJ:MIN`) if
/// devtmpfs did not provide it.
fn open_port(dev: &str) -> sys::SysResult<i32> {
    let mut path = String::from("/dev/");
    path.push_str(dev);
    if !std::path::Path::new(&path).exists() {
        let mut sysdev = String::from("/sys/class/virtio-ports/");
        sysdev.push_str(dev);
        sysdev.push_str("/dev");
        let numbers = std::fs::read_to_string(&sysdev).unwrap_or_default();
        if let Some((maj, min)) = numbers.trim().split_once(':') {
            if let (Ok(maj), Ok(min)) = (maj.parse(), min.parse()) {
                let _ = sys::mknod_char(&path, 0o600, maj, min);
            }
        }
    }
    sys::open(&path, libc::O_RDWR | libc::O_NOCTTY)
}

fn handle_line(line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    match parse_command(&text) {
        Ok(None) => {}
        Ok(Some(Command::PowerOff)) => {
            let _ = sys::kill(sys::getpid(), libc::SIGUSR2);
        }
        Ok(Some(Command::Reboot)) => {
            let _ = sys::kill(sys::getpid(), libc::SIGTERM);
        }
        Err(other) => sys::emit(
            &report::Line::new()
                .s("warning: control: unknown command \"")
                .s(other)
                .s("\"")
                .finish(),
        ),
    }
}

fn listen() {
    let deadline = sys::boottime_ms() + FIND_TIMEOUT_MS;
    let dev = loop {
        let ports = scan_ports();
        if let Some(dev) = find_port(&ports) {
            break String::from(dev);
        }
        if sys::boottime_ms() >= deadline {
            return;
        }
        sys::sleep_ms(10);
    };
    let Ok(fd) = open_port(&dev) else { return };
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: buf is valid for writes of its full length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            match sys::errno() {
                libc::EINTR => continue,
                libc::EAGAIN => {
                    sys::sleep_ms(100);
                    continue;
                }
                _ => return,
            }
        }
        if n == 0 {
            // The host side is not connected: virtio-console reports EOF
            // until it is. Check back later.
            sys::sleep_ms(100);
            continue;
        }
        pending.extend_from_slice(&buf[..n as usize]);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            handle_line(&line);
        }
        if pending.len() > 4096 {
            pending.clear();
        }
    }
}

/// Start the listener thread. If the port never appears, the thread exits
/// silently.
pub fn spawn() {
    let _ = std::thread::Builder::new()
        .name(String::from("control"))
        .stack_size(64 * 1024)
        .spawn(listen);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse_command("poweroff\n"), Ok(Some(Command::PowerOff)));
        assert_eq!(parse_command(" reboot\r\n"), Ok(Some(Command::Reboot)));
        assert_eq!(parse_command("\n"), Ok(None));
        assert_eq!(parse_command("halt now\n"), Err("halt now"));
    }

    #[test]
    fn port_lookup() {
        let ports = vec![
            ("vport0p0".to_string(), String::new()),
            (
                "vport0p1".to_string(),
                "org.qemu.guest_agent.0\n".to_string(),
            ),
            ("vport0p2".to_string(), "org.kiln.control\n".to_string()),
        ];
        assert_eq!(find_port(&ports), Some("vport0p2"));
        assert_eq!(find_port(&ports[..2]), None);
    }
}
