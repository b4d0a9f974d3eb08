//! The console lines init prints, built without `std::fmt`.
//!
//! The host parses these lines off the serial console, so their exact text is
//! a protocol: every line starts with `kiln: ` and is a single line (embedded
//! newlines are flattened to spaces). This module only formats; printing is
//! [`crate::sys::emit`].

/// Prefix of every line init prints.
pub const PREFIX: &str = "kiln: ";

/// Append the decimal form of `n` to `s`.
pub fn push_num(s: &mut String, n: i64) {
    if n < 0 {
        s.push('-');
    }
    let mut v = n.unsigned_abs();
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        s.push(d as char);
    }
}

/// Builder for one `kiln: ...` console line.
pub struct Line {
    buf: String,
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Line {
    /// A line holding just the `kiln: ` prefix.
    pub fn new() -> Line {
        let mut buf = String::with_capacity(96);
        buf.push_str(PREFIX);
        Line { buf }
    }

    /// Append text (newlines and carriage returns become spaces).
    pub fn s(mut self, text: &str) -> Line {
        for c in text.chars() {
            self.buf.push(if c == '\n' || c == '\r' { ' ' } else { c });
        }
        self
    }

    /// Append a decimal number.
    pub fn n(mut self, n: i64) -> Line {
        push_num(&mut self.buf, n);
        self
    }

    /// The finished line, terminated by `\n`.
    pub fn finish(mut self) -> String {
        self.buf.push('\n');
        self.buf
    }
}

/// `kiln: warning: MSG`.
pub fn warning(msg: &str) -> String {
    Line::new().s("warning: ").s(msg).finish()
}

/// `kiln: error: MSG`.
pub fn error(msg: &str) -> String {
    Line::new().s("error: ").s(msg).finish()
}

/// `kiln: ready in N ms`.
pub fn ready(ms: u64) -> String {
    Line::new().s("ready in ").n(ms as i64).s(" ms").finish()
}

/// `kiln: frozen` (a template's network is down and its disks synced).
pub fn frozen() -> String {
    Line::new().s("frozen").finish()
}

/// `kiln: thawed in N ms` (a clone has its identity and its network back).
pub fn thawed(ms: u64) -> String {
    Line::new().s("thawed in ").n(ms as i64).s(" ms").finish()
}

/// `kiln: timeline entropy=A clock=B …`: when each thaw step was done, ms after the command
/// came (the host parses it like the boot timeline).
pub fn thaw_timeline(steps: &[(&str, u64)]) -> String {
    let mut l = Line::new().s("timeline");
    for (k, v) in steps {
        l = l.s(" ").s(k).s("=").n(*v as i64);
    }
    l.finish()
}

/// `kiln: rc.resume exited with status N`.
pub fn rc_resume_exited(code: i32) -> String {
    Line::new()
        .s("rc.resume exited with status ")
        .n(i64::from(code))
        .finish()
}

/// `CLOCK_BOOTTIME` milliseconds at which each boot phase finished.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    /// `main` entered.
    pub init: u64,
    /// All kernel modules loaded.
    pub modules: u64,
    /// Network (loopback and, unless disabled, the interface) configured.
    pub net: u64,
    /// The rc process spawned.
    pub rc: u64,
    /// Readiness reached.
    pub ready: u64,
}

/// `kiln: timeline init=A modules=B net=C rc=D ready=E`.
pub fn timeline(t: &Timeline) -> String {
    Line::new()
        .s("timeline init=")
        .n(t.init as i64)
        .s(" modules=")
        .n(t.modules as i64)
        .s(" net=")
        .n(t.net as i64)
        .s(" rc=")
        .n(t.rc as i64)
        .s(" ready=")
        .n(t.ready as i64)
        .finish()
}

/// `kiln: rc exited with status N`.
pub fn rc_exited(code: i32) -> String {
    Line::new()
        .s("rc exited with status ")
        .n(i64::from(code))
        .finish()
}

/// Shell-style exit code of a raw `waitpid` status: the exit code, or
/// 128 + signal number if the process was killed by a signal.
pub fn exit_code(wait_status: i32) -> i32 {
    if libc::WIFEXITED(wait_status) {
        libc::WEXITSTATUS(wait_status)
    } else if libc::WIFSIGNALED(wait_status) {
        128 + libc::WTERMSIG(wait_status)
    } else {
        // Stopped/continued statuses are never reported without WUNTRACED.
        128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thaw_timeline_reads_as_a_timeline() {
        assert_eq!(
            thaw_timeline(&[("entropy", 1), ("net", 30)]),
            "kiln: timeline entropy=1 net=30\n"
        );
    }

    #[test]
    fn numbers() {
        let mut s = String::new();
        push_num(&mut s, 0);
        s.push(' ');
        push_num(&mut s, 1234567890123);
        s.push(' ');
        push_num(&mut s, -42);
        s.push(' ');
        push_num(&mut s, i64::MIN);
        assert_eq!(s, "0 1234567890123 -42 -9223372036854775808");
    }

    #[test]
    fn lines() {
        assert_eq!(ready(812), "kiln: ready in 812 ms\n");
        assert_eq!(rc_exited(0), "kiln: rc exited with status 0\n");
        assert_eq!(rc_exited(143), "kiln: rc exited with status 143\n");
        assert_eq!(warning("a\nb"), "kiln: warning: a b\n");
        assert_eq!(
            error("cannot run /etc/rc: No such file or directory"),
            "kiln: error: cannot run /etc/rc: No such file or directory\n"
        );
    }

    #[test]
    fn template_lines() {
        assert_eq!(frozen(), "kiln: frozen\n");
        assert_eq!(thawed(0), "kiln: thawed in 0 ms\n");
        assert_eq!(thawed(37), "kiln: thawed in 37 ms\n");
        assert_eq!(
            rc_resume_exited(1),
            "kiln: rc.resume exited with status 1\n"
        );
    }

    #[test]
    fn timeline_line() {
        let t = Timeline {
            init: 301,
            modules: 340,
            net: 352,
            rc: 355,
            ready: 371,
        };
        assert_eq!(
            timeline(&t),
            "kiln: timeline init=301 modules=340 net=352 rc=355 ready=371\n"
        );
    }

    #[test]
    fn wait_status_decoding() {
        // Exit code 3: status = 3 << 8.
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(0), 0);
        // Killed by SIGKILL (9), no core dump.
        assert_eq!(exit_code(9), 137);
        // Killed by SIGSEGV (11) with core dump flag.
        assert_eq!(exit_code(11 | 0x80), 139);
    }
}
