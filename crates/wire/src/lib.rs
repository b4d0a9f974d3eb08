//! kiln-wire: the frames of Kiln's exec channel, written once for both of its ends.
//!
//! The exec channel is a second virtio-serial port (`org.kiln.exec`, [`PORT_NAME`]) between a
//! VM's keeper on the host and kiln-init in the guest. It carries several sessions at once —
//! `kiln exec` commands and `kiln cp` file transfers — as a stream of frames:
//!
//! ```text
//! type u8 | stream id u32 (big-endian) | payload length u32 (big-endian) | payload
//! ```
//!
//! Host → guest: [`Frame::Open`] (start a command: argv, environment, working folder, and a
//! terminal of `rows`×`cols` or pipes), [`Frame::Get`] (send me this file),
//! [`Frame::Put`] (write the data that follows to this file, with this mode),
//! [`Frame::Stdin`] / [`Frame::StdinEof`] (a session's input, and its end),
//! [`Frame::Resize`] (the terminal's new size), [`Frame::Close`] (the client went away: kill
//! the command).
//!
//! Guest → host: [`Frame::Stdout`] / [`Frame::Stderr`] (output; a terminal's output and a
//! file's content are `Stdout`), [`Frame::Mode`] (the mode of a file being sent, before its
//! content), [`Frame::Error`] (a message for the user, e.g. `nosuch: command not found`,
//! always followed by an `Exit`), and [`Frame::Exit`] (the session's end: the command's exit
//! code or signal; 127 for a command that is not there, 126 for one that cannot run, 1 for a
//! failed transfer). Nothing of a session follows its `Exit`.
//!
//! The keeper serves each client on a connection of its own and renumbers the stream ids, so
//! a client always talks about one session; the guest sees every session of every client.
//! No dependencies: kiln-init (static, libc only) uses this crate too.

use std::fmt;
use std::io::{Read, Write};

/// The virtio-serial port name of the exec channel.
pub const PORT_NAME: &str = "org.kiln.exec";

/// Bytes of a frame's header: type, stream id, payload length.
pub const HEADER_LEN: usize = 9;

/// The largest payload accepted (a frame announcing more is refused as malformed).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// The largest chunk of data senders put in one `Stdin`/`Stdout`/`Stderr` frame.
pub const CHUNK: usize = 32 * 1024;

/// Frame type numbers (host → guest below 0x80, guest → host from 0x80).
mod ty {
    pub const OPEN: u8 = 0x01;
    pub const STDIN: u8 = 0x02;
    pub const STDIN_EOF: u8 = 0x03;
    pub const RESIZE: u8 = 0x04;
    pub const CLOSE: u8 = 0x05;
    pub const GET: u8 = 0x06;
    pub const PUT: u8 = 0x07;
    pub const STDOUT: u8 = 0x81;
    pub const STDERR: u8 = 0x82;
    pub const EXIT: u8 = 0x83;
    pub const ERROR: u8 = 0x84;
    pub const MODE: u8 = 0x85;
}

/// A command to start in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Open {
    /// The program (looked up in the guest's PATH unless it has a `/`) and its arguments.
    pub argv: Vec<String>,
    /// `KEY=VALUE` settings added to the guest's environment for rc.
    pub env: Vec<String>,
    /// The working folder (empty: `/`).
    pub cwd: String,
    /// Run it on a terminal of its own (else stdin, stdout and stderr are pipes).
    pub tty: bool,
    /// The terminal's rows.
    pub rows: u16,
    /// The terminal's columns.
    pub cols: u16,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The command exited with this code.
    Exited(i32),
    /// The command was killed by this signal.
    Signaled(i32),
}

impl Status {
    /// The shell's convention: the exit code, or 128 + the signal.
    pub fn code(&self) -> i32 {
        match *self {
            Status::Exited(c) => c,
            Status::Signaled(s) => 128 + s,
        }
    }
}

/// One frame; every frame names its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Host → guest: start a command.
    Open {
        /// The stream.
        id: u32,
        /// What to start.
        open: Open,
    },
    /// Host → guest: send the file at `path` (a [`Frame::Mode`], its content as `Stdout`,
    /// then `Exit(0)`).
    Get {
        /// The stream.
        id: u32,
        /// The file in the guest.
        path: String,
    },
    /// Host → guest: write the `Stdin` that follows (until `StdinEof`) to `path` with `mode`.
    Put {
        /// The stream.
        id: u32,
        /// The file in the guest.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Host → guest: input.
    Stdin {
        /// The stream.
        id: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Host → guest: the input ended.
    StdinEof {
        /// The stream.
        id: u32,
    },
    /// Host → guest: the terminal's new size.
    Resize {
        /// The stream.
        id: u32,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Host → guest: the client is gone; end the session (the command is killed).
    Close {
        /// The stream.
        id: u32,
    },
    /// Guest → host: output (a terminal's, or a file's content).
    Stdout {
        /// The stream.
        id: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Guest → host: error output.
    Stderr {
        /// The stream.
        id: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Guest → host: the session ended.
    Exit {
        /// The stream.
        id: u32,
        /// How.
        status: Status,
    },
    /// Guest → host: why the session failed, for the user (an `Exit` follows).
    Error {
        /// The stream.
        id: u32,
        /// The message.
        message: String,
    },
    /// Guest → host: the permission bits of the file a `Get` sends.
    Mode {
        /// The stream.
        id: u32,
        /// The mode (`st_mode & 0o7777`).
        mode: u32,
    },
}

impl Frame {
    /// The stream the frame belongs to.
    pub fn id(&self) -> u32 {
        match *self {
            Frame::Open { id, .. }
            | Frame::Get { id, .. }
            | Frame::Put { id, .. }
            | Frame::Stdin { id, .. }
            | Frame::StdinEof { id }
            | Frame::Resize { id, .. }
            | Frame::Close { id }
            | Frame::Stdout { id, .. }
            | Frame::Stderr { id, .. }
            | Frame::Exit { id, .. }
            | Frame::Error { id, .. }
            | Frame::Mode { id, .. } => id,
        }
    }

    /// The same frame on stream `new` (the keeper renumbers streams).
    pub fn set_id(&mut self, new: u32) {
        match self {
            Frame::Open { id, .. }
            | Frame::Get { id, .. }
            | Frame::Put { id, .. }
            | Frame::Stdin { id, .. }
            | Frame::StdinEof { id }
            | Frame::Resize { id, .. }
            | Frame::Close { id }
            | Frame::Stdout { id, .. }
            | Frame::Stderr { id, .. }
            | Frame::Exit { id, .. }
            | Frame::Error { id, .. }
            | Frame::Mode { id, .. } => *id = new,
        }
    }

    /// Whether the frame starts a session (the first frame a client sends).
    pub fn is_start(&self) -> bool {
        matches!(
            self,
            Frame::Open { .. } | Frame::Get { .. } | Frame::Put { .. }
        )
    }
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A type number no frame has.
    UnknownType(u8),
    /// A payload longer than [`MAX_PAYLOAD`].
    TooLarge(u32),
    /// The payload does not fit its type (which, and what is wrong).
    Malformed(u8, &'static str),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::UnknownType(t) => write!(f, "unknown frame type {t:#04x}"),
            WireError::TooLarge(n) => {
                write!(f, "a frame of {n} bytes (the limit is {MAX_PAYLOAD})")
            }
            WireError::Malformed(t, what) => write!(f, "frame type {t:#04x}: {what}"),
        }
    }
}

impl std::error::Error for WireError {}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn put_strs(out: &mut Vec<u8>, v: &[String]) {
    put_u32(out, v.len() as u32);
    for s in v {
        put_str(out, s);
    }
}

/// A frame's bytes.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut p = Vec::new();
    let t = match frame {
        Frame::Open { open, .. } => {
            p.push(u8::from(open.tty));
            p.extend_from_slice(&open.rows.to_be_bytes());
            p.extend_from_slice(&open.cols.to_be_bytes());
            put_strs(&mut p, &open.argv);
            put_strs(&mut p, &open.env);
            put_str(&mut p, &open.cwd);
            ty::OPEN
        }
        Frame::Get { path, .. } => {
            p.extend_from_slice(path.as_bytes());
            ty::GET
        }
        Frame::Put { path, mode, .. } => {
            put_u32(&mut p, *mode);
            p.extend_from_slice(path.as_bytes());
            ty::PUT
        }
        Frame::Stdin { data, .. } => {
            p.extend_from_slice(data);
            ty::STDIN
        }
        Frame::StdinEof { .. } => ty::STDIN_EOF,
        Frame::Resize { rows, cols, .. } => {
            p.extend_from_slice(&rows.to_be_bytes());
            p.extend_from_slice(&cols.to_be_bytes());
            ty::RESIZE
        }
        Frame::Close { .. } => ty::CLOSE,
        Frame::Stdout { data, .. } => {
            p.extend_from_slice(data);
            ty::STDOUT
        }
        Frame::Stderr { data, .. } => {
            p.extend_from_slice(data);
            ty::STDERR
        }
        Frame::Exit { status, .. } => {
            let (kind, v) = match *status {
                Status::Exited(c) => (0u8, c),
                Status::Signaled(s) => (1u8, s),
            };
            p.push(kind);
            p.extend_from_slice(&v.to_be_bytes());
            ty::EXIT
        }
        Frame::Error { message, .. } => {
            p.extend_from_slice(message.as_bytes());
            ty::ERROR
        }
        Frame::Mode { mode, .. } => {
            put_u32(&mut p, *mode);
            ty::MODE
        }
    };
    let mut out = Vec::with_capacity(HEADER_LEN + p.len());
    out.push(t);
    put_u32(&mut out, frame.id());
    put_u32(&mut out, p.len() as u32);
    out.extend_from_slice(&p);
    out
}

/// A cursor over a payload.
struct Payload<'a> {
    t: u8,
    rest: &'a [u8],
}

impl<'a> Payload<'a> {
    fn bad(&self, what: &'static str) -> WireError {
        WireError::Malformed(self.t, what)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(self.bad(what));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn text(&self, b: &[u8], what: &'static str) -> Result<String, WireError> {
        String::from_utf8(b.to_vec()).map_err(|_| self.bad(what))
    }

    fn str(&mut self, what: &'static str) -> Result<String, WireError> {
        let n = self.u32(what)? as usize;
        let b = self.take(n, what)?;
        self.text(b, what)
    }

    fn strs(&mut self, what: &'static str) -> Result<Vec<String>, WireError> {
        let n = self.u32(what)? as usize;
        // Each string takes at least its 4-byte length: a count beyond that is a lie.
        if n > self.rest.len() / 4 {
            return Err(self.bad(what));
        }
        (0..n).map(|_| self.str(what)).collect()
    }

    /// The rest as text.
    fn rest_text(&mut self, what: &'static str) -> Result<String, WireError> {
        let b = std::mem::take(&mut self.rest);
        self.text(b, what)
    }

    fn end(&self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.bad("bytes after the payload"))
        }
    }
}

/// The frame at the start of `buf` and its length in bytes; `Ok(None)` when `buf` holds only
/// part of one (read more).
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let t = buf[0];
    let id = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let len = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
    if !(ty::OPEN..=ty::PUT).contains(&t) && !(ty::STDOUT..=ty::MODE).contains(&t) {
        return Err(WireError::UnknownType(t));
    }
    if len as usize > MAX_PAYLOAD {
        return Err(WireError::TooLarge(len));
    }
    let total = HEADER_LEN + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let mut p = Payload {
        t,
        rest: &buf[HEADER_LEN..total],
    };
    let frame = match t {
        ty::OPEN => {
            let flags = p.take(1, "no flags")?[0];
            if flags > 1 {
                return Err(p.bad("unknown flags"));
            }
            let rows = p.u16("no rows")?;
            let cols = p.u16("no columns")?;
            let argv = p.strs("a bad argv")?;
            let env = p.strs("a bad environment")?;
            let cwd = p.str("a bad working folder")?;
            p.end()?;
            Frame::Open {
                id,
                open: Open {
                    argv,
                    env,
                    cwd,
                    tty: flags == 1,
                    rows,
                    cols,
                },
            }
        }
        ty::GET => Frame::Get {
            id,
            path: p.rest_text("the path is not UTF-8")?,
        },
        ty::PUT => {
            let mode = p.u32("no mode")?;
            Frame::Put {
                id,
                mode,
                path: p.rest_text("the path is not UTF-8")?,
            }
        }
        ty::STDIN => Frame::Stdin {
            id,
            data: p.rest.to_vec(),
        },
        ty::STDOUT => Frame::Stdout {
            id,
            data: p.rest.to_vec(),
        },
        ty::STDERR => Frame::Stderr {
            id,
            data: p.rest.to_vec(),
        },
        ty::STDIN_EOF | ty::CLOSE => {
            p.end()?;
            if t == ty::CLOSE {
                Frame::Close { id }
            } else {
                Frame::StdinEof { id }
            }
        }
        ty::RESIZE => {
            let rows = p.u16("no rows")?;
            let cols = p.u16("no columns")?;
            p.end()?;
            Frame::Resize { id, rows, cols }
        }
        ty::EXIT => {
            let kind = p.take(1, "no kind")?[0];
            let b = p.take(4, "no value")?;
            let v = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            p.end()?;
            let status = match kind {
                0 => Status::Exited(v),
                1 => Status::Signaled(v),
                _ => return Err(p.bad("unknown kind")),
            };
            Frame::Exit { id, status }
        }
        ty::ERROR => Frame::Error {
            id,
            message: p.rest_text("the message is not UTF-8")?,
        },
        ty::MODE => {
            let mode = p.u32("no mode")?;
            p.end()?;
            Frame::Mode { id, mode }
        }
        _ => return Err(WireError::UnknownType(t)),
    };
    Ok(Some((frame, total)))
}

/// Frames out of a byte stream that arrives in pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Add bytes read.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived. After an error the stream cannot be
    /// resynchronised: [`Decoder::clear`] it (or drop the connection).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        match decode(&self.buf)? {
            Some((f, n)) => {
                self.buf.drain(..n);
                Ok(Some(f))
            }
            None => Ok(None),
        }
    }

    /// Forget buffered bytes (the other end went away mid-frame).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Bytes waiting for the rest of their frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Read one frame from a blocking reader: `Ok(None)` at a clean end of stream (between
/// frames); a malformed frame is `InvalidData`, an end inside a frame `UnexpectedEof`.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let invalid = |e: WireError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    // Check the header before trusting its length.
    if let Err(e) = decode(&head) {
        return Err(invalid(e));
    }
    let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
    let mut buf = Vec::with_capacity(HEADER_LEN + len);
    buf.extend_from_slice(&head);
    buf.resize(HEADER_LEN + len, 0);
    r.read_exact(&mut buf[HEADER_LEN..])?;
    match decode(&buf) {
        Ok(Some((f, _))) => Ok(Some(f)),
        Ok(None) => Err(std::io::ErrorKind::UnexpectedEof.into()),
        Err(e) => Err(invalid(e)),
    }
}

/// Write one frame (a single `write_all`).
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> std::io::Result<()> {
    w.write_all(&encode(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> Frame {
        Frame::Open {
            id: 7,
            open: Open {
                argv: vec!["cat".into(), "/etc/hostname".into()],
                env: vec!["A=1".into()],
                cwd: "/tmp".into(),
                tty: true,
                rows: 24,
                cols: 80,
            },
        }
    }

    #[test]
    fn header_layout() {
        let b = encode(&Frame::Stdin {
            id: 0x0102_0304,
            data: b"hi".to_vec(),
        });
        assert_eq!(b, [0x02, 1, 2, 3, 4, 0, 0, 0, 2, b'h', b'i']);
        let b = encode(&Frame::Exit {
            id: 1,
            status: Status::Signaled(9),
        });
        assert_eq!(b, [0x83, 0, 0, 0, 1, 0, 0, 0, 5, 1, 0, 0, 0, 9]);
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = vec![
            open(),
            Frame::Get {
                id: 1,
                path: "/etc/hostname".into(),
            },
            Frame::Put {
                id: 2,
                path: "/tmp/x".into(),
                mode: 0o755,
            },
            Frame::Stdin {
                id: 3,
                data: vec![0, 1, 2],
            },
            Frame::StdinEof { id: 3 },
            Frame::Resize {
                id: 3,
                rows: 50,
                cols: 132,
            },
            Frame::Close { id: 3 },
            Frame::Stdout {
                id: 3,
                data: b"out".to_vec(),
            },
            Frame::Stderr {
                id: 3,
                data: vec![],
            },
            Frame::Exit {
                id: 3,
                status: Status::Exited(-1),
            },
            Frame::Error {
                id: 3,
                message: "nosuch: command not found".into(),
            },
            Frame::Mode { id: 4, mode: 0o644 },
        ];
        let mut all = Vec::new();
        for f in &frames {
            let b = encode(f);
            assert_eq!(decode(&b), Ok(Some((f.clone(), b.len()))), "{f:?}");
            // Every strict prefix is "read more".
            for cut in 0..b.len() {
                assert_eq!(decode(&b[..cut]), Ok(None), "{f:?} cut at {cut}");
            }
            all.extend(b);
        }
        // A decoder fed a byte at a time finds them all, in order.
        let mut d = Decoder::new();
        let mut got = vec![];
        for byte in &all {
            d.push(&[*byte]);
            while let Some(f) = d.next_frame().expect("frame") {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert_eq!(d.pending(), 0);
        // And a blocking reader too, ending cleanly.
        let mut r = &all[..];
        let mut got = vec![];
        while let Some(f) = read_frame(&mut r).expect("read") {
            got.push(f);
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn refusals() {
        assert_eq!(
            decode(&[0x40, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(WireError::UnknownType(0x40))
        );
        assert_eq!(
            decode(&[0x02, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            Err(WireError::TooLarge(u32::MAX))
        );
        // StdinEof with a payload, Exit of an unknown kind, a short Resize.
        assert!(matches!(
            decode(&[0x03, 0, 0, 0, 0, 0, 0, 0, 1, 9]),
            Err(WireError::Malformed(0x03, _))
        ));
        assert!(matches!(
            decode(&[0x83, 0, 0, 0, 0, 0, 0, 0, 5, 2, 0, 0, 0, 0]),
            Err(WireError::Malformed(0x83, _))
        ));
        assert!(matches!(
            decode(&[0x04, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1]),
            Err(WireError::Malformed(0x04, _))
        ));
        // An argv count far beyond the payload is refused, not allocated.
        let mut b = vec![0x01, 0, 0, 0, 1];
        let p = [0u8, 0, 24, 0, 80, 0xff, 0xff, 0xff, 0xff];
        b.extend_from_slice(&(p.len() as u32).to_be_bytes());
        b.extend_from_slice(&p);
        assert!(matches!(decode(&b), Err(WireError::Malformed(0x01, _))));
        // Not UTF-8.
        let b = [0x06, 0, 0, 0, 1, 0, 0, 0, 1, 0xff];
        assert!(matches!(decode(&b), Err(WireError::Malformed(0x06, _))));
        // A reader cut inside a frame.
        let whole = encode(&open());
        let mut r = &whole[..whole.len() - 1];
        assert_eq!(
            read_frame(&mut r).expect_err("cut").kind(),
            std::io::ErrorKind::UnexpectedEof
        );
        let mut r = &[0x40u8, 0, 0, 0, 0, 0, 0, 0, 0][..];
        assert_eq!(
            read_frame(&mut r).expect_err("bad").kind(),
            std::io::ErrorKind::InvalidData
        );
        assert_eq!(
            WireError::UnknownType(0x40).to_string(),
            "unknown frame type 0x40"
        );
    }

    #[test]
    fn ids_are_renumbered_and_statuses_give_exit_codes() {
        let mut f = open();
        f.set_id(99);
        assert_eq!(f.id(), 99);
        assert!(f.is_start());
        assert!(!Frame::Close { id: 1 }.is_start());
        assert_eq!(Status::Exited(3).code(), 3);
        assert_eq!(Status::Signaled(9).code(), 137);
    }
}
