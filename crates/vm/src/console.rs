//! The `kiln:` lines kiln-init prints on the serial console, parsed into events.
//!
//! kiln-init prints, each on a line of its own: `kiln: ready in N ms`,
//! `kiln: timeline init=A modules=B net=C rc=D ready=E`, `kiln: rc exited with status N`,
//! `kiln: powering off`, `kiln: init panicked: …`, `kiln: error: …`, and for templates and
//! clones `kiln: frozen` (synced, ready to be saved) and `kiln: thawed in N ms` (a clone
//! has its own entropy, name and clock, and its network is up again).

use std::collections::VecDeque;

/// Something the guest told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// The readiness check passed at this guest uptime (ms).
    Ready {
        /// Guest uptime in ms.
        guest_ms: u64,
    },
    /// Phase timestamps (guest uptime in ms), in the order printed.
    Timeline(Vec<(String, u64)>),
    /// etc/rc exited.
    RcExited {
        /// Its exit status (128+signal for a signal).
        status: i32,
    },
    /// init is powering the machine off.
    PoweringOff,
    /// init hit an error or panicked.
    InitError(String),
    /// The guest is ready to be saved as a template (its network is down).
    Frozen,
    /// A restored guest took its new identity in this many ms; its network is up.
    Thawed {
        /// ms from the thaw command to done.
        ms: u64,
    },
}

/// Splits console bytes into lines, keeps the last few, and recognises `kiln:` lines.
#[derive(Debug)]
pub struct LineParser {
    partial: Vec<u8>,
    tail: VecDeque<String>,
    keep: usize,
}

impl Default for LineParser {
    fn default() -> Self {
        Self::new(40)
    }
}

impl LineParser {
    /// A parser that remembers the last `keep` lines.
    pub fn new(keep: usize) -> Self {
        LineParser {
            partial: Vec::new(),
            tail: VecDeque::new(),
            keep,
        }
    }

    /// Feed console bytes; returns the events of the complete lines among them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<ConsoleEvent> {
        let mut events = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_string();
                self.partial.clear();
                if let Some(ev) = parse_line(&line) {
                    events.push(ev);
                }
                if self.tail.len() == self.keep {
                    self.tail.pop_front();
                }
                self.tail.push_back(line);
            } else if self.partial.len() < 4096 {
                self.partial.push(b);
            }
        }
        events
    }

    /// The last lines seen (and the unfinished one), joined with newlines.
    pub fn tail(&self) -> String {
        let mut s: Vec<String> = self.tail.iter().cloned().collect();
        if !self.partial.is_empty() {
            s.push(String::from_utf8_lossy(&self.partial).into_owned());
        }
        s.join("\n")
    }
}

/// Parse one console line (without its newline).
pub fn parse_line(line: &str) -> Option<ConsoleEvent> {
    // Kernel messages may share the line; kiln-init's output starts at "kiln: ".
    let rest = &line[line.find("kiln: ")? + 6..];
    if let Some(v) = rest.strip_prefix("ready in ") {
        let ms = v.strip_suffix(" ms")?.trim().parse().ok()?;
        return Some(ConsoleEvent::Ready { guest_ms: ms });
    }
    if let Some(v) = rest.strip_prefix("timeline ") {
        let mut phases = Vec::new();
        for word in v.split_whitespace() {
            let (k, val) = word.split_once('=')?;
            phases.push((k.to_string(), val.parse().ok()?));
        }
        return Some(ConsoleEvent::Timeline(phases));
    }
    if let Some(v) = rest.strip_prefix("rc exited with status ") {
        return Some(ConsoleEvent::RcExited {
            status: v.trim().parse().ok()?,
        });
    }
    if rest.trim() == "frozen" {
        return Some(ConsoleEvent::Frozen);
    }
    if let Some(v) = rest.strip_prefix("thawed in ") {
        let ms = v.strip_suffix(" ms")?.trim().parse().ok()?;
        return Some(ConsoleEvent::Thawed { ms });
    }
    if rest.starts_with("powering off") {
        return Some(ConsoleEvent::PoweringOff);
    }
    if let Some(v) = rest.strip_prefix("init panicked: ") {
        return Some(ConsoleEvent::InitError(format!("init panicked: {v}")));
    }
    if let Some(v) = rest.strip_prefix("error: ") {
        return Some(ConsoleEvent::InitError(v.to_string()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_template_lines() {
        assert_eq!(parse_line("kiln: frozen"), Some(ConsoleEvent::Frozen));
        assert_eq!(
            parse_line("kiln: thawed in 7 ms"),
            Some(ConsoleEvent::Thawed { ms: 7 })
        );
        assert_eq!(parse_line("kiln: thawed in x ms"), None);
    }

    #[test]
    fn parses_kiln_lines() {
        assert_eq!(
            parse_line("kiln: ready in 812 ms"),
            Some(ConsoleEvent::Ready { guest_ms: 812 })
        );
        assert_eq!(
            parse_line("[    1.0] kiln: rc exited with status 3"),
            Some(ConsoleEvent::RcExited { status: 3 })
        );
        assert_eq!(
            parse_line("kiln: timeline init=700 modules=750 net=760 rc=761 ready=812"),
            Some(ConsoleEvent::Timeline(vec![
                ("init".into(), 700),
                ("modules".into(), 750),
                ("net".into(), 760),
                ("rc".into(), 761),
                ("ready".into(), 812)
            ]))
        );
        assert_eq!(
            parse_line("kiln: powering off"),
            Some(ConsoleEvent::PoweringOff)
        );
        assert!(
            matches!(parse_line("kiln: init panicked: boom"), Some(ConsoleEvent::InitError(m)) if m.contains("boom"))
        );
        assert_eq!(parse_line("kiln: ready in soon"), None);
        assert_eq!(parse_line("random kernel line"), None);
    }

    #[test]
    fn feeds_split_bytes_and_keeps_tail() {
        let mut p = LineParser::new(2);
        assert!(p.feed(b"one\r\ntwo\nkiln: rea").is_empty());
        assert_eq!(
            p.feed(b"dy in 5 ms\nfour"),
            vec![ConsoleEvent::Ready { guest_ms: 5 }]
        );
        assert_eq!(p.tail(), "two\nkiln: ready in 5 ms\nfour");
    }
}
