//! The thin system-call layer: every `unsafe` libc call init makes outside
//! networking ([`crate::net`]) lives here, each wrapped in a small safe
//! function that reports failure as an errno value.
//!
//! Nothing in this module makes decisions; the boot logic in `main.rs` and the
//! pure parsers decide what to do with the results.

use std::ffi::CString;

/// A raw `errno` value.
pub type Errno = i32;

/// Result of a system call wrapper: the value, or the `errno` it failed with.
pub type SysResult<T> = Result<T, Errno>;

/// The calling thread's current `errno`.
pub fn errno() -> Errno {
    // SAFETY: __errno_location always returns a valid pointer to this
    // thread's errno, on both musl and glibc.
    unsafe { *libc::__errno_location() }
}

/// Turn a C-style return value (`-1` on failure) into a [`SysResult`].
fn check(ret: libc::c_long) -> SysResult<libc::c_long> {
    if ret == -1 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// A NUL-terminated copy of `s`; `EINVAL` if it contains a NUL byte.
pub fn cstr(s: &str) -> SysResult<CString> {
    CString::new(s).map_err(|_| libc::EINVAL)
}

/// The human-readable text for an errno value, e.g. "No such file or directory".
pub fn strerror(err: Errno) -> String {
    let mut buf = [0u8; 128];
    // SAFETY: the buffer is valid for its full length; both libcs bind the
    // XSI variant, which writes a NUL-terminated string into it.
    let rc = unsafe { libc::strerror_r(err, buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if rc != 0 || len == 0 {
        let mut s = String::from("error ");
        crate::report::push_num(&mut s, i64::from(err));
        return s;
    }
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// The errno text for an `std::io::Error` (falls back to its `Display`).
pub fn io_error_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => strerror(n),
        None => e.to_string(),
    }
}

/// Write all of `bytes` to `fd`, retrying on partial writes and `EINTR`.
/// Errors are ignored: there is nowhere else to report them.
pub fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer/length pair comes from a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return;
        }
        if n == 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Print one complete console line (already terminated by `\n`) with a single
/// unbuffered `write(2)` to stdout, so it is never held back or interleaved
/// with another of our own lines.
pub fn emit(line: &str) {
    write_all(1, line.as_bytes());
}

/// Waits on a virtio-console port for its host side to connect (or for data), without polling.
///
/// A port whose host side is not connected reads as end-of-file and polls as `EPOLLHUP` at
/// once, so neither a blocking read nor a level-triggered poll can wait for the host. The
/// driver wakes the port's wait queue when the host connects or data arrives; an
/// edge-triggered epoll sleeps until such a wake-up (an idle VM's two port threads used to
/// wake 10 times a second each, ~0.5 % of a core under TCG: BENCHMARKS.md, issue 17).
pub struct PortWaiter {
    epfd: i32,
}

impl PortWaiter {
    /// Watch `fd` (edge-triggered); `None` if epoll is not available.
    pub fn new(fd: i32) -> Option<PortWaiter> {
        // SAFETY: epoll_create1 takes no pointers.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return None;
        }
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: ev is a valid epoll_event for the call.
        if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            close(epfd);
            return None;
        }
        Some(PortWaiter { epfd })
    }

    /// Sleep until the port's state changes (host connected, data), at most `max_ms`.
    pub fn wait(&self, max_ms: u64) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        let ms = i32::try_from(max_ms).unwrap_or(i32::MAX);
        // SAFETY: ev is valid for one event.
        unsafe { libc::epoll_wait(self.epfd, &mut ev, 1, ms) };
    }
}

/// Wait for `fd`'s host side: through `waiter`, else a plain sleep of `fallback_ms`.
pub fn wait_for_host(waiter: Option<&PortWaiter>, fallback_ms: u64) {
    match waiter {
        // The fallback bounds a wake-up missed by a race the edge could not see.
        Some(w) => w.wait(2000),
        None => sleep_ms(fallback_ms),
    }
}

/// `mount(2)`. `data` may be empty.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> SysResult<()> {
    let (source, target, fstype, data) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    check(rc.into()).map(drop)
}

/// Milliseconds since boot, `CLOCK_BOOTTIME` (includes time suspended; for a
/// fresh VM it is the guest uptime).
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Nanoseconds since boot, `CLOCK_BOOTTIME` (for measuring short intervals).
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// `clock_settime(CLOCK_REALTIME)` to `unix_nanos` nanoseconds since the epoch.
pub fn set_realtime_ns(unix_nanos: u64) -> SysResult<()> {
    let ts = libc::timespec {
        tv_sec: (unix_nanos / 1_000_000_000) as _,
        tv_nsec: (unix_nanos % 1_000_000_000) as _,
    };
    // SAFETY: ts is a valid timespec for the duration of the call.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }.into()).map(drop)
}

/// `RNDADDENTROPY` = `_IOW('R', 0x03, int[2])` (linux/random.h): mix a
/// `struct rand_pool_info` into the input pool and credit its entropy.
pub const RNDADDENTROPY: u32 = 0x4008_5203;

/// `RNDRESEEDCRNG` = `_IO('R', 0x07)` (linux/random.h, Linux 4.17+): reseed the
/// CRNG from the input pool now rather than at its next scheduled reseed.
pub const RNDRESEEDCRNG: u32 = 0x5207;

/// The bytes of a `struct rand_pool_info { int entropy_count; int buf_size;
/// __u32 buf[]; }` carrying `seed`: entropy credited in bits (8 per byte),
/// the buffer size in bytes, then the bytes themselves.
pub fn rand_pool_info(seed: &[u8]) -> Vec<u8> {
    let len = i32::try_from(seed.len()).unwrap_or(i32::MAX / 8);
    let mut b = Vec::with_capacity(8 + seed.len());
    b.extend_from_slice(&len.saturating_mul(8).to_ne_bytes());
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(seed);
    b
}

/// An ioctl on a fresh descriptor of `/dev/urandom`; `arg` is null or
/// points at a complete `struct rand_pool_info`.
fn urandom_ioctl(req: u32, arg: *const libc::c_void) -> SysResult<()> {
    let fd = open("/dev/urandom", libc::O_RDONLY)?;
    // SAFETY: the callers pass either a null argument (RNDRESEEDCRNG) or a
    // pointer to a complete, live rand_pool_info (RNDADDENTROPY).
    let rc = unsafe { libc::ioctl(fd, req as _, arg) };
    let res = check(rc.into()).map(drop);
    close(fd);
    res
}

/// Add `seed` to the kernel's entropy pool, crediting 8 bits per byte
/// (`RNDADDENTROPY` on `/dev/urandom`; needs `CAP_SYS_ADMIN`).
pub fn add_entropy(seed: &[u8]) -> SysResult<()> {
    let bytes = rand_pool_info(seed);
    // The kernel reads ints and __u32s: give it a 4-byte-aligned copy.
    let mut words = vec![0u32; bytes.len().div_ceil(4)];
    // SAFETY: words has room for at least bytes.len() bytes; u32 has no
    // invalid bit patterns and the regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast(), bytes.len())
    };
    urandom_ioctl(RNDADDENTROPY, words.as_ptr().cast())
}

/// Force the CRNG to reseed from the input pool (`RNDRESEEDCRNG`; `EINVAL`
/// or `ENOTTY` before Linux 4.17).
pub fn reseed_crng() -> SysResult<()> {
    urandom_ioctl(RNDRESEEDCRNG, std::ptr::null())
}

/// Sleep for `ms` milliseconds (restarted on `EINTR`).
pub fn sleep_ms(ms: u64) {
    let mut req = libc::timespec {
        tv_sec: (ms / 1000) as _,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    let mut rem = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both timespecs are valid; on EINTR we continue with the remainder.
    while unsafe { libc::nanosleep(&req, &mut rem) } == -1 && errno() == libc::EINTR {
        req = rem;
    }
}

/// `open(2)` with `O_CLOEXEC` added.
pub fn open(path: &str, flags: i32) -> SysResult<i32> {
    let p = cstr(path)?;
    // SAFETY: p is a valid NUL-terminated path.
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
    check(fd.into()).map(|fd| fd as i32)
}

/// `close(2)`, ignoring errors.
pub fn close(fd: i32) {
    // SAFETY: closing a descriptor we own.
    unsafe { libc::close(fd) };
}

/// Whether `fd` is an open descriptor.
pub fn fd_is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD on any integer is harmless.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Clear `FD_CLOEXEC` so children inherit `fd`.
pub fn clear_cloexec(fd: i32) {
    // SAFETY: F_SETFD on any integer is harmless.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
}

/// `dup2(2)`.
pub fn dup2(from: i32, to: i32) -> SysResult<()> {
    // SAFETY: plain descriptor duplication.
    check(unsafe { libc::dup2(from, to) }.into()).map(drop)
}

/// `mknod(2)` of a character device.
pub fn mknod_char(path: &str, mode: u32, major: u32, minor: u32) -> SysResult<()> {
    let p = cstr(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: p is a valid NUL-terminated path.
    check(unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | mode, dev) }.into()).map(drop)
}

/// Whether `path` is writable by us (`access(2)` with `W_OK`).
pub fn writable(path: &str) -> bool {
    match cstr(path) {
        // SAFETY: p is a valid NUL-terminated path.
        Ok(p) => unsafe { libc::access(p.as_ptr(), libc::W_OK) == 0 },
        Err(_) => false,
    }
}

/// `finit_module(2)` on the file at `path` with the given parameter string.
/// `flags` are `MODULE_INIT_*` flags.
pub fn finit_module(path: &str, params: &str, flags: u32) -> SysResult<()> {
    let fd = open(path, libc::O_RDONLY)?;
    let params = match cstr(params) {
        Ok(p) => p,
        Err(e) => {
            close(fd);
            return Err(e);
        }
    };
    // SAFETY: fd is open, params is a valid NUL-terminated string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            fd,
            params.as_ptr(),
            flags as libc::c_long,
        )
    };
    let res = check(rc).map(drop);
    close(fd);
    res
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> SysResult<()> {
    // SAFETY: pointer/length pair from a live str.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }.into()).map(drop)
}

/// `kill(2)`.
pub fn kill(pid: i32, sig: i32) -> SysResult<()> {
    // SAFETY: sending a signal has no memory-safety implications.
    check(unsafe { libc::kill(pid, sig) }.into()).map(drop)
}

/// Our own process id.
pub fn getpid() -> i32 {
    // SAFETY: always succeeds.
    unsafe { libc::getpid() }
}

/// Outcome of one non-blocking `waitpid(-1, WNOHANG)`.
pub enum Reaped {
    /// A child exited: its pid and raw wait status.
    Child(i32, i32),
    /// Children exist but none has exited yet.
    Running,
    /// There are no children left (`ECHILD`).
    NoChildren,
}

/// One `waitpid(-1, &status, WNOHANG)`.
pub fn reap_one() -> Reaped {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid, writable int.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            0 => return Reaped::Running,
            p if p > 0 => return Reaped::Child(p, status),
            _ if errno() == libc::EINTR => continue,
            _ => return Reaped::NoChildren,
        }
    }
}

/// One `waitpid(pid, &status, WNOHANG)`: the raw wait status if that child
/// has exited and we reaped it, `None` if it is running or already reaped
/// (or `pid` is not positive: no process groups here).
pub fn try_reap(pid: i32) -> Option<i32> {
    if pid <= 0 {
        return None;
    }
    loop {
        let mut status = 0;
        // SAFETY: status is a valid, writable int.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        match r {
            p if p == pid => return Some(status),
            -1 if errno() == libc::EINTR => continue,
            _ => return None,
        }
    }
}

/// A signal set built from a list of signal numbers.
pub fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset fully initialises the set before sigaddset uses it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block `signals` in the calling thread (threads spawned later inherit the
/// mask, so call this before spawning any).
pub fn block_signals(signals: &[i32]) {
    let set = sigset(signals);
    // SAFETY: valid set pointer; old mask not requested.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Unblock every signal in the calling thread (used in the child before exec).
/// Async-signal-safe.
pub fn unblock_all_signals() {
    // SAFETY: sigemptyset initialises the set; sigprocmask is async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Wait up to `timeout_ms` (or forever if `None`) for one of the (blocked)
/// signals in `set`; returns the signal number, or `None` on timeout.
pub fn wait_signal(set: &libc::sigset_t, timeout_ms: Option<u64>) -> Option<i32> {
    let ts = timeout_ms.map(|ms| libc::timespec {
        tv_sec: (ms / 1000) as _,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    });
    let tsp = match &ts {
        Some(t) => t as *const libc::timespec,
        None => std::ptr::null(),
    };
    // SAFETY: set and (optional) timeout point to valid values; siginfo not requested.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), tsp) };
    if sig > 0 {
        Some(sig)
    } else {
        None
    }
}

/// `sync(2)`.
pub fn sync() {
    // SAFETY: no arguments.
    unsafe { libc::sync() };
}

/// `reboot(2)` with one of the `RB_*` commands. Only returns on failure.
pub fn reboot(cmd: i32) {
    // SAFETY: no memory involved.
    unsafe { libc::reboot(cmd) };
}

/// `pause(2)` forever.
pub fn pause_forever() -> ! {
    loop {
        // SAFETY: no arguments.
        unsafe { libc::pause() };
    }
}

/// In the child between fork and exec: start a new session and make the
/// console on fd 0 its controlling terminal. Async-signal-safe; a missing tty
/// (e.g. console is not a terminal) is not an error.
pub fn become_session_leader_with_ctty() {
    // SAFETY: setsid and ioctl are async-signal-safe and touch no Rust memory.
    unsafe {
        libc::setsid();
        libc::ioctl(0, libc::TIOCSCTTY as _, 1 as libc::c_int);
    }
}

/// `read(2)` into `buf`, retried on `EINTR`: the bytes read (0 at the end).
pub fn read(fd: i32, buf: &mut [u8]) -> SysResult<usize> {
    loop {
        // SAFETY: buf is valid for writes of its full length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Write all of `bytes` to `fd` (retrying partial writes and `EINTR`), or the errno.
pub fn write_all_checked(fd: i32, mut bytes: &[u8]) -> SysResult<()> {
    while !bytes.is_empty() {
        // SAFETY: the pointer/length pair comes from a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                e => return Err(e),
            }
        }
        if n == 0 {
            return Err(libc::EIO);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// `open(2)` with `O_CREAT` and permission bits `mode` (and `O_CLOEXEC`).
pub fn create(path: &str, flags: i32, mode: u32) -> SysResult<i32> {
    let p = cstr(path)?;
    // SAFETY: p is a valid NUL-terminated path.
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            flags | libc::O_CREAT | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    check(fd.into()).map(|fd| fd as i32)
}

/// `st_mode` of an open file.
pub fn fstat_mode(fd: i32) -> SysResult<u32> {
    // SAFETY: st is a writable stat buffer; zeroed is a valid bit pattern for it.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        check(libc::fstat(fd, &mut st).into())?;
        Ok(st.st_mode)
    }
}

/// `fchmod(2)`.
pub fn fchmod(fd: i32, mode: u32) -> SysResult<()> {
    // SAFETY: no memory involved.
    check(unsafe { libc::fchmod(fd, mode as libc::mode_t) }.into()).map(drop)
}

/// `rename(2)`.
pub fn rename(from: &str, to: &str) -> SysResult<()> {
    let (a, b) = (cstr(from)?, cstr(to)?);
    // SAFETY: both are valid NUL-terminated paths.
    check(unsafe { libc::rename(a.as_ptr(), b.as_ptr()) }.into()).map(drop)
}

/// Whether `path` may be executed by us (`access(2)` with `X_OK`).
pub fn executable(path: &str) -> bool {
    match cstr(path) {
        // SAFETY: p is a valid NUL-terminated path.
        Ok(p) => unsafe { libc::access(p.as_ptr(), libc::X_OK) == 0 },
        Err(_) => false,
    }
}

/// A pipe, both ends `O_CLOEXEC`: (read end, write end).
pub fn pipe() -> SysResult<(i32, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }.into())?;
    Ok((fds[0], fds[1]))
}

/// `dup(2)` with `O_CLOEXEC`.
pub fn dup(fd: i32) -> SysResult<i32> {
    // SAFETY: plain descriptor duplication.
    check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) }.into()).map(|fd| fd as i32)
}

/// Set a terminal's window size (`TIOCSWINSZ`; the foreground job gets `SIGWINCH`).
pub fn set_winsize(fd: i32, rows: u16, cols: u16) -> SysResult<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: ws is a valid winsize for the call.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ as _, &ws) }.into()).map(drop)
}

/// A new pseudo-terminal of `rows`×`cols`: (master, slave), both `O_CLOEXEC`, the slave
/// opened without becoming our controlling terminal.
pub fn openpty(rows: u16, cols: u16) -> SysResult<(i32, i32)> {
    // SAFETY: posix_openpt/grantpt/unlockpt take a descriptor we own; ptsname_r writes a
    // NUL-terminated name into the buffer, which is valid for its full length.
    let master = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 {
            return Err(errno());
        }
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            let e = errno();
            libc::close(m);
            return Err(e);
        }
        m
    };
    let mut name = [0u8; 64];
    // SAFETY: see above.
    let rc = unsafe { libc::ptsname_r(master, name.as_mut_ptr().cast(), name.len()) };
    if rc != 0 {
        close(master);
        return Err(rc);
    }
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let path = String::from_utf8_lossy(&name[..len]).into_owned();
    let slave = match open(&path, libc::O_RDWR | libc::O_NOCTTY) {
        Ok(s) => s,
        Err(e) => {
            close(master);
            return Err(e);
        }
    };
    let _ = set_winsize(master, rows, cols);
    Ok((master, slave))
}

/// Everything a child needs between `fork` and `execve`, prepared beforehand (the child may
/// not allocate).
pub struct ExecSetup {
    /// The program's path.
    pub path: CString,
    /// Its arguments.
    pub argv: Vec<CString>,
    /// Its environment (`KEY=VALUE`).
    pub envp: Vec<CString>,
    /// Its working folder.
    pub cwd: CString,
    /// What becomes its fds 0, 1 and 2.
    pub stdio: [i32; 3],
    /// fd 0 is a terminal to make its controlling terminal.
    pub tty: bool,
}

/// Fork and exec `s` in a new session (its own process group). Returns the child's pid and
/// the read end of a pipe that [`exec_result`] reads. Called with the watched-children lock
/// held, so the child's exit cannot be reaped before it is watched.
pub fn fork_exec(s: &ExecSetup) -> SysResult<(i32, i32)> {
    let (err_r, err_w) = pipe()?;
    let mut argv: Vec<*const libc::c_char> = s.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = s.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: fork in a threaded process: the child only makes async-signal-safe calls
    // (sigprocmask, setsid, ioctl, dup2, fcntl, chdir, execve, write, _exit) on memory
    // prepared before the fork, and never returns into Rust code.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            let e = errno();
            close(err_r);
            close(err_w);
            return Err(e);
        }
        if pid == 0 {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::setsid();
            if s.tty {
                libc::ioctl(s.stdio[0], libc::TIOCSCTTY as _, 0 as libc::c_int);
            }
            for (target, &fd) in s.stdio.iter().enumerate() {
                if fd == target as i32 {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                } else {
                    libc::dup2(fd, target as i32);
                }
            }
            let mut failed = if libc::chdir(s.cwd.as_ptr()) == 0 {
                libc::execve(s.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                *libc::__errno_location()
            } else {
                *libc::__errno_location()
            };
            if failed == 0 {
                failed = libc::EIO;
            }
            let b = failed.to_ne_bytes();
            libc::write(err_w, b.as_ptr().cast(), b.len());
            libc::_exit(127);
        }
        close(err_w);
        Ok((pid, err_r))
    }
}

/// After [`fork_exec`]: wait until the child has exec'd (`None`) or failed to (its errno).
/// Closes `err_r`.
pub fn exec_result(err_r: i32) -> Option<Errno> {
    let mut b = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match read(err_r, &mut b[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    close(err_r);
    (got == 4).then(|| i32::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ioctl_numbers() {
        // The values from linux/random.h, derived with the _IOC macros.
        assert_eq!(
            RNDADDENTROPY as u64,
            libc::_IOW::<[libc::c_int; 2]>(u32::from(b'R'), 0x03) as u64
        );
        assert_eq!(
            RNDRESEEDCRNG as u64,
            libc::_IO(u32::from(b'R'), 0x07) as u64
        );
    }

    #[test]
    fn rand_pool_info_layout() {
        let seed: Vec<u8> = (1..=64).collect();
        let b = rand_pool_info(&seed);
        assert_eq!(b.len(), 8 + 64);
        assert_eq!(b[0..4], 512i32.to_ne_bytes());
        assert_eq!(b[4..8], 64i32.to_ne_bytes());
        assert_eq!(b[8..], seed[..]);
        assert_eq!(rand_pool_info(&[0xab]), {
            let mut v = 8i32.to_ne_bytes().to_vec();
            v.extend_from_slice(&1i32.to_ne_bytes());
            v.push(0xab);
            v
        });
        assert_eq!(rand_pool_info(&[]), vec![0; 8]);
    }
}
