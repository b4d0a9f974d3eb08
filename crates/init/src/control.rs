//! The host control channel: a virtio-serial port named `org.kiln.control`.
//!
//! # Protocol
//!
//! The host writes commands, one per line (`\n`-terminated; words separated
//! by spaces, surrounding whitespace and `\r` ignored). Nothing is written
//! back on the port: the answers are `kiln:` lines on the serial console.
//! Commands are carried out one at a time, in the order received; a command
//! that takes a while (a thaw running `/etc/rc.resume`) delays the next.
//!
//! ```text
//! poweroff
//!     kiln: shutdown requested
//!     kiln: powering off
//! reboot
//!     kiln: reboot requested
//!     kiln: rebooting
//! freeze
//!     kiln: frozen
//! thaw SEED_HEX HOSTNAME UNIX_NANOS
//!     kiln: rc.resume exited with status N       (only if /etc/rc.resume ran)
//!     kiln: thawed in N ms
//! ```
//!
//! **`poweroff`, `reboot`**: the listener thread signals PID 1 the way
//! busybox's `poweroff`/`reboot` applets do (`SIGUSR2` / `SIGTERM`) and the
//! main loop performs the shutdown, so those applets work from a guest shell
//! too.
//!
//! **`freeze`**, sent just before the host saves a ready VM as a template:
//! `sync(2)`, then `kiln: frozen`. The host has taken the VM's network link
//! down first (QMP `set_link`), so after a restore no packet reaches the
//! services before the clone has its own identity; the interface itself stays
//! configured (address, routes), so a thaw does not have to set it up again.
//!
//! **`thaw SEED_HEX HOSTNAME UNIX_NANOS`**, sent right after a clone resumes.
//! SEED_HEX is 64 random bytes as 128 hex digits, HOSTNAME the clone's name
//! (1-64 bytes), UNIX_NANOS the host's wall clock in ns since the epoch.
//! In this order:
//!
//! 1. the seed is added to the kernel's entropy pool (`RNDADDENTROPY`, 512
//!    bits credited) and the CRNG reseeded at once (`RNDRESEEDCRNG`);
//! 2. the wall clock is set (`CLOCK_REALTIME` = UNIX_NANOS plus the time since
//!    the command arrived);
//! 3. the hostname is set; if `/etc/rc.resume` exists, `/etc/hostname` and an
//!    `/etc/hosts` that is exactly the one init generated at boot get the new
//!    name now, so that rc.resume reads them;
//! 4. `/etc/rc.resume`, if present and executable, runs as `/bin/sh
//!    /etc/rc.resume` (rc's environment, its own process group) and is waited
//!    for up to 10 s (then its group is killed); its status is reported;
//! 5. `kiln: thawed in N ms`, N counted from the command's arrival: the host
//!    brings the link up when it reads this line;
//! 6. without rc.resume, `/etc/hostname` and `/etc/hosts` get the new name
//!    now (they are no secret, and the clone answers sooner); then
//!    `kiln: timeline entropy=… clock=… name=… resume=… files=…`.
//!
//! A failure in steps 1 (reseed), 2, 3, 4 or 6 prints `kiln: error: thaw: ...`
//! (`kiln: warning: thaw: ...` if `/etc/hostname` cannot be written, e.g. on a
//! read-only root, or `/etc/rc.resume` is not executable) and the thaw goes on. If
//! the seed cannot be added at all, `kiln: error: thaw: ...` is printed and the
//! thaw stops there: no `thawed` line, so the host keeps the link down, since a
//! clone without its own entropy must not be reachable. A malformed thaw (not
//! three arguments, a seed that is not hex or not 64 bytes, a bad hostname or
//! time) prints `kiln: error: thaw: ... (ignored)` and changes nothing.
//!
//! **`hosts [NAME=ADDR]...`**, sent by the VM's keeper whenever the members of
//! its Kiln nets change: `/etc/hosts` becomes init's own lines followed by one
//! line per peer, then `kiln: hosts N` (N peers). A malformed pair prints
//! `kiln: warning: control: hosts: ...` and changes nothing.
//!
//! Any other line prints `kiln: warning: control: unknown command "..."`.

use crate::snapshot::{self, Guest};
use crate::{config, report, sys};

/// The virtio-serial port name the host uses.
pub const PORT_NAME: &str = "org.kiln.control";

/// How long to look for the port after start (modules may still be settling).
const FIND_TIMEOUT_MS: u64 = 2000;

/// Bytes of entropy a thaw carries.
pub const SEED_LEN: usize = 64;

/// A control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Graceful power-off.
    PowerOff,
    /// Graceful reboot (with `-no-reboot`, QEMU exits).
    Reboot,
    /// Sync: the VM is about to be saved (its link is already down).
    Freeze,
    /// Give a resumed clone its own entropy, clock and name; then the host brings its link up.
    Thaw(Thaw),
    /// The peers on the VM's Kiln nets, by name.
    Hosts(Vec<(String, std::net::Ipv4Addr)>),
}

/// The arguments of `thaw`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thaw {
    /// Fresh random bytes from the host.
    pub seed: [u8; SEED_LEN],
    /// The clone's hostname.
    pub hostname: String,
    /// The host's wall clock, ns since the Unix epoch.
    pub unix_nanos: u64,
}

/// What is wrong with a `thaw` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThawError {
    /// Not exactly three arguments (this many were given).
    FieldCount(usize),
    /// SEED_HEX has an odd length or a non-hex character.
    SeedNotHex,
    /// The seed decodes to this many bytes instead of [`SEED_LEN`].
    SeedLength(usize),
    /// HOSTNAME is not a valid hostname (longer than 64 bytes).
    BadHostname,
    /// UNIX_NANOS is not a decimal number that fits 64 bits.
    BadTime,
}

impl ThawError {
    /// The console line for this error (the seed itself is never echoed).
    pub fn line(&self) -> String {
        let l = report::Line::new().s("error: thaw: ");
        let l = match *self {
            ThawError::FieldCount(n) => l
                .s("expected SEED_HEX HOSTNAME UNIX_NANOS, got ")
                .n(n as i64)
                .s(if n == 1 { " argument" } else { " arguments" }),
            ThawError::SeedNotHex => l.s("SEED_HEX is not hexadecimal"),
            ThawError::SeedLength(n) => l
                .s("the seed is ")
                .n(n as i64)
                .s(" bytes, expected ")
                .n(SEED_LEN as i64),
            ThawError::BadHostname => l.s("HOSTNAME is not a valid hostname of 1-64 bytes"),
            ThawError::BadTime => l.s("UNIX_NANOS is not a decimal number of nanoseconds"),
        };
        l.s(" (ignored)").finish()
    }
}

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadCommand<'a> {
    /// Not a command we know (the trimmed line).
    Unknown(&'a str),
    /// A malformed `thaw`.
    Thaw(ThawError),
    /// A `hosts` pair that is not NAME=IPV4 (the pair).
    Hosts(&'a str),
}

/// Decode hex digits (either case) into bytes; `None` for an odd length or a
/// non-hex character.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let pairs = s.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

fn parse_thaw(args: &[&str]) -> Result<Thaw, ThawError> {
    let &[seed_hex, hostname, nanos] = args else {
        return Err(ThawError::FieldCount(args.len()));
    };
    let bytes = decode_hex(seed_hex).ok_or(ThawError::SeedNotHex)?;
    let seed: [u8; SEED_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| ThawError::SeedLength(bytes.len()))?;
    if !config::valid_hostname(hostname) {
        return Err(ThawError::BadHostname);
    }
    if nanos.is_empty() || !nanos.bytes().all(|c| c.is_ascii_digit()) {
        return Err(ThawError::BadTime);
    }
    let unix_nanos = nanos.parse().map_err(|_| ThawError::BadTime)?;
    Ok(Thaw {
        seed,
        hostname: String::from(hostname),
        unix_nanos,
    })
}

/// Parse one line of the protocol (`Ok(None)` for a blank line).
pub fn parse_command(line: &str) -> Result<Option<Command>, BadCommand<'_>> {
    let line = line.trim();
    let mut words = line.split_ascii_whitespace();
    let Some(first) = words.next() else {
        return Ok(None);
    };
    let args: Vec<&str> = words.collect();
    let cmd = match (first, args.is_empty()) {
        ("poweroff", true) => Command::PowerOff,
        ("reboot", true) => Command::Reboot,
        ("freeze", true) => Command::Freeze,
        ("thaw", _) => Command::Thaw(parse_thaw(&args).map_err(BadCommand::Thaw)?),
        ("hosts", _) => {
            let mut peers = Vec::new();
            for a in args {
                let pair = a.split_once('=').and_then(|(n, ip)| {
                    let ok = config::valid_hostname(n) && !n.contains(['=', '#']);
                    Some((String::from(n), ip.parse().ok().filter(|_| ok)?))
                });
                peers.push(pair.ok_or(BadCommand::Hosts(a))?);
            }
            Command::Hosts(peers)
        }
        _ => return Err(BadCommand::Unknown(line)),
    };
    Ok(Some(cmd))
}

/// Given `(device name, contents of its sysfs name file)` pairs, the device
/// name of the control port, if present.
pub fn find_port(ports: &[(String, String)]) -> Option<&str> {
    find_named(ports, PORT_NAME)
}

/// Given `(device name, contents of its sysfs name file)` pairs, the device
/// name of the port called `name`, if present.
pub fn find_named<'a>(ports: &'a [(String, String)], name: &str) -> Option<&'a str> {
    ports
        .iter()
        .find(|(_, n)| n.trim() == name)
        .map(|(dev, _)| dev.as_str())
}

/// List `/sys/class/virtio-ports/*` with their `name` files.
pub(crate) fn scan_ports() -> Vec<(String, String)> {
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
pub(crate) fn open_port(dev: &str) -> sys::SysResult<i32> {
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

fn handle_line(line: &[u8], guest: &Guest) {
    let received_ns = sys::boottime_ns();
    let text = String::from_utf8_lossy(line);
    match parse_command(&text) {
        Ok(None) => {}
        Ok(Some(Command::PowerOff)) => {
            let _ = sys::kill(sys::getpid(), libc::SIGUSR2);
        }
        Ok(Some(Command::Reboot)) => {
            let _ = sys::kill(sys::getpid(), libc::SIGTERM);
        }
        Ok(Some(Command::Freeze)) => snapshot::freeze(),
        Ok(Some(Command::Thaw(t))) => snapshot::thaw(guest, &t, received_ns),
        Ok(Some(Command::Hosts(peers))) => {
            let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let text = crate::net::hosts_with_peers(name.trim(), guest.addr, &peers);
            match std::fs::write("/etc/hosts", text) {
                Ok(()) => sys::emit(
                    &report::Line::new()
                        .s("hosts ")
                        .n(peers.len() as i64)
                        .finish(),
                ),
                Err(e) => sys::emit(
                    &report::Line::new()
                        .s("warning: control: hosts: /etc/hosts: ")
                        .s(&sys::io_error_text(&e))
                        .finish(),
                ),
            }
        }
        Err(BadCommand::Thaw(e)) => sys::emit(&e.line()),
        Err(BadCommand::Hosts(pair)) => sys::emit(
            &report::Line::new()
                .s("warning: control: hosts: \"")
                .s(pair)
                .s("\" is not NAME=IPV4 (ignored)")
                .finish(),
        ),
        Err(BadCommand::Unknown(other)) => sys::emit(
            &report::Line::new()
                .s("warning: control: unknown command \"")
                .s(other)
                .s("\"")
                .finish(),
        ),
    }
}

fn listen(guest: Guest) {
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
    let waiter = sys::PortWaiter::new(fd);
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: buf is valid for writes of its full length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            match sys::errno() {
                libc::EINTR => continue,
                libc::EAGAIN => {
                    sys::wait_for_host(waiter.as_ref(), 100);
                    continue;
                }
                _ => return,
            }
        }
        if n == 0 {
            // The host side is not connected: virtio-console reports EOF
            // until it is. Sleep until it connects.
            sys::wait_for_host(waiter.as_ref(), 100);
            continue;
        }
        pending.extend_from_slice(&buf[..n as usize]);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            handle_line(&line, &guest);
        }
        // The longest line is a `hosts` list of a few thousand peers.
        if pending.len() > 256 * 1024 {
            pending.clear();
        }
    }
}

/// Start the listener thread; `guest` is what freeze and thaw need to know.
/// If the port never appears, the thread exits silently.
pub fn spawn(guest: Guest) {
    let _ = std::thread::Builder::new()
        .name(String::from("control"))
        // A thaw spawns /etc/rc.resume from this thread.
        .stack_size(128 * 1024)
        .spawn(move || listen(guest));
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes 0, 1, ..., 63 in hex, in mixed case ("000102...0A0B...3f").
    fn seed_hex() -> String {
        let mut s = String::new();
        for b in 0..SEED_LEN {
            s.push_str(&format!("{b:02x}"));
        }
        s.replace("0a", "0A")
    }

    fn thaw_line(seed: &str, host: &str, nanos: &str) -> String {
        let mut l = String::from("thaw ");
        for w in [seed, host, nanos] {
            l.push_str(w);
            l.push(' ');
        }
        l.push('\n');
        l
    }

    #[test]
    fn commands() {
        assert_eq!(parse_command("poweroff\n"), Ok(Some(Command::PowerOff)));
        assert_eq!(parse_command(" reboot\r\n"), Ok(Some(Command::Reboot)));
        assert_eq!(parse_command("freeze\n"), Ok(Some(Command::Freeze)));
        assert_eq!(parse_command("  freeze \r\n"), Ok(Some(Command::Freeze)));
        assert_eq!(parse_command("\n"), Ok(None));
        assert_eq!(parse_command(" \r\n"), Ok(None));
        assert_eq!(
            parse_command("halt now\n"),
            Err(BadCommand::Unknown("halt now"))
        );
        assert_eq!(
            parse_command("freeze now\n"),
            Err(BadCommand::Unknown("freeze now"))
        );
        assert_eq!(
            parse_command("poweroff -f\n"),
            Err(BadCommand::Unknown("poweroff -f"))
        );
        assert_eq!(parse_command("Thaw\n"), Err(BadCommand::Unknown("Thaw")));
    }

    #[test]
    fn hosts_lists_parse_and_bad_pairs_are_named() {
        use std::net::Ipv4Addr;
        assert_eq!(parse_command("hosts\n"), Ok(Some(Command::Hosts(vec![]))));
        assert_eq!(
            parse_command("hosts db=10.88.0.9 web-2=10.88.0.4\n"),
            Ok(Some(Command::Hosts(vec![
                (String::from("db"), Ipv4Addr::new(10, 88, 0, 9)),
                (String::from("web-2"), Ipv4Addr::new(10, 88, 0, 4)),
            ])))
        );
        for bad in ["db", "db=10.88.0", "=10.88.0.9", "a#b=10.0.0.1"] {
            let line = String::from("hosts ok=1.2.3.4 ") + bad + "\n";
            assert_eq!(parse_command(&line), Err(BadCommand::Hosts(bad)), "{bad}");
        }
    }

    #[test]
    fn a_good_thaw() {
        let line = thaw_line(&seed_hex(), "web-3", "1732443200123456789");
        let mut seed = [0u8; SEED_LEN];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(
            parse_command(&line),
            Ok(Some(Command::Thaw(Thaw {
                seed,
                hostname: String::from("web-3"),
                unix_nanos: 1_732_443_200_123_456_789,
            })))
        );
        // Extra spaces and a carriage return are fine; so are 0 and u64::MAX.
        let line = "  thaw   ".to_string() + &seed_hex() + "  h \t0\r\n";
        assert!(
            matches!(parse_command(&line), Ok(Some(Command::Thaw(t))) if t.unix_nanos == 0 && t.hostname == "h")
        );
        let line = thaw_line(&seed_hex(), "h", "18446744073709551615");
        assert!(
            matches!(parse_command(&line), Ok(Some(Command::Thaw(t))) if t.unix_nanos == u64::MAX)
        );
    }

    #[test]
    fn bad_thaws() {
        let bad = |line: &str| match parse_command(line) {
            Err(BadCommand::Thaw(e)) => e,
            other => panic!("{line:?} parsed as {other:?}"),
        };
        let seed = seed_hex();
        // Field counts.
        assert_eq!(bad("thaw\n"), ThawError::FieldCount(0));
        assert_eq!(
            bad(&("thaw ".to_string() + &seed)),
            ThawError::FieldCount(1)
        );
        assert_eq!(
            bad(&("thaw ".to_string() + &seed + " web")),
            ThawError::FieldCount(2)
        );
        assert_eq!(
            bad(&thaw_line(&seed, "web", "1 extra")),
            ThawError::FieldCount(4)
        );
        // Not hex: a non-hex digit, an odd length.
        let mut g = seed.clone();
        g.replace_range(10..11, "g");
        assert_eq!(bad(&thaw_line(&g, "web", "1")), ThawError::SeedNotHex);
        assert_eq!(
            bad(&thaw_line(&seed[1..], "web", "1")),
            ThawError::SeedNotHex
        );
        assert_eq!(bad(&thaw_line("0x00", "web", "1")), ThawError::SeedNotHex);
        // Hex, but not 64 bytes.
        assert_eq!(
            bad(&thaw_line(&seed[2..], "web", "1")),
            ThawError::SeedLength(63)
        );
        assert_eq!(
            bad(&thaw_line(&(seed.clone() + "00"), "web", "1")),
            ThawError::SeedLength(65)
        );
        assert_eq!(
            bad(&thaw_line("abcd", "web", "1")),
            ThawError::SeedLength(2)
        );
        // Hostname too long.
        assert_eq!(
            bad(&thaw_line(&seed, &"h".repeat(65), "1")),
            ThawError::BadHostname
        );
        assert!(matches!(
            parse_command(&thaw_line(&seed, &"h".repeat(64), "1")),
            Ok(Some(_))
        ));
        // Bad numbers: signs, fractions, letters, overflow.
        for n in ["-1", "+1", "1.5", "1e9", "now", "18446744073709551616"] {
            assert_eq!(bad(&thaw_line(&seed, "web", n)), ThawError::BadTime, "{n}");
        }
    }

    #[test]
    fn thaw_error_lines_name_the_problem() {
        assert_eq!(
            ThawError::FieldCount(2).line(),
            "kiln: error: thaw: expected SEED_HEX HOSTNAME UNIX_NANOS, got 2 arguments (ignored)\n"
        );
        assert_eq!(
            ThawError::SeedLength(32).line(),
            "kiln: error: thaw: the seed is 32 bytes, expected 64 (ignored)\n"
        );
        assert_eq!(
            ThawError::SeedNotHex.line(),
            "kiln: error: thaw: SEED_HEX is not hexadecimal (ignored)\n"
        );
        assert!(ThawError::BadTime.line().contains("UNIX_NANOS"));
        assert!(ThawError::BadHostname.line().contains("HOSTNAME"));
    }

    #[test]
    fn hex() {
        assert_eq!(decode_hex(""), Some(vec![]));
        assert_eq!(
            decode_hex("00ff7F80aB"),
            Some(vec![0, 0xff, 0x7f, 0x80, 0xab])
        );
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex(" 0"), None);
        assert_eq!(decode_hex("é1"), None);
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
