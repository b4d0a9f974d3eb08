//! The terminal side of a foreground run: raw mode while attached to the guest console.

/// Puts stdin in raw mode until dropped (only when stdin is a terminal).
pub struct RawMode {
    saved: Option<libc::termios>,
}

impl RawMode {
    /// Enter raw mode if stdin is a tty.
    pub fn enter() -> RawMode {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a properly sized termios.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawMode { saved: None };
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawMode { saved: None };
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawMode { saved: Some(saved) }
        }
    }

    /// Whether stdin is an interactive terminal.
    pub fn is_tty(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restoring the attributes read in `enter`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}

/// Ctrl-]: the key that leaves an attached console (stops a foreground VM, detaches a viewer).
pub const ESCAPE: u8 = 0x1d;

/// Copy stdin to `out` in a thread until stdin ends; on Ctrl-] ([`ESCAPE`]) write what came
/// before it, call `on_escape` and stop.
pub fn forward_stdin<W, F>(mut out: W, on_escape: F)
where
    W: std::io::Write + Send + 'static,
    F: FnOnce() + Send + 'static,
{
    use std::io::Read;
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                return;
            }
            if let Some(i) = buf[..n].iter().position(|&b| b == ESCAPE) {
                let _ = out.write_all(&buf[..i]);
                on_escape();
                return;
            }
            if out.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
}
