//! `kiln exec` and `kiln cp` against real VMs (issue 13, part 3): output, input and exit codes
//! through kiln-init's exec channel, a command that is not there, several execs at once, a
//! terminal in tmux (its size and a resize), files copied both ways with their mode, and the
//! refusals. One recipes/httpd VM per test, removed by [`Fleet`]'s Drop.

use super::lifecycle::Fleet;
use super::*;
use kiln_test_support::{poll_until, wait_until, KillOnDrop};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Output, Stdio};
use std::time::Duration;

/// Start a detached recipes/httpd VM named with `prefix`; its name.
/// recipes/httpd detached, on a port of its own (the recipe's 8080 would clash with other
/// tests' VMs).
fn start(f: &mut Fleet, prefix: &str) -> String {
    let image = httpd_image().to_str().expect("utf-8 path").to_string();
    f.run_detached(prefix, &image, 80, &[]).0
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `kiln exec` with `stdin` as its input.
fn exec_with_input(f: &Fleet, args: &[&str], stdin: &[u8]) -> Output {
    let mut c = f.kiln();
    c.arg("exec")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn kiln exec");
    let mut input = child.stdin.take().expect("stdin");
    // Written beside the reading of the output: a big input would fill both pipes otherwise.
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("kiln exec");
    writer.join().expect("writer");
    out
}

#[test]
fn exec_streams_output_input_and_exit_codes() {
    let mut f = Fleet::new();
    let name = start(&mut f, "exec");

    let o = f.run(&["exec", &name, "--", "cat", "/etc/hostname"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(stdout(&o), format!("{name}\n"));

    let o = f.run(&["exec", &name, "--", "false"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    let o = f.run(&["exec", &name, "--", "nosuch", "arg"]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o));
    assert!(
        stderr(&o).contains("nosuch: command not found"),
        "{}",
        text(&o)
    );
    assert!(stdout(&o).is_empty());

    // `printf data | kiln exec -i web -- wc -c`
    let o = exec_with_input(&f, &["-i", &name, "--", "wc", "-c"], b"data");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(stdout(&o).trim(), "4");

    // Without -i the command's input is empty, not the caller's.
    let o = exec_with_input(&f, &[&name, "--", "wc", "-c"], b"ignored");
    assert_eq!(stdout(&o).trim(), "0", "{}", text(&o));

    // stdout and stderr apart; the code passed through; a signal as 128 + N; rc's
    // environment; a bigger input and output than one frame.
    let o = f.run(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; echo $PATH; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(stdout(&o), "out\n/sbin:/bin:/usr/sbin:/usr/bin\n");
    assert_eq!(stderr(&o), "err\n");
    let o = f.run(&["exec", &name, "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(o.status.code(), Some(137), "{}", text(&o));
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let o = exec_with_input(&f, &["-i", &name, "--", "cat"], &big);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        o.stdout == big,
        "300 kB through cat: got {} bytes",
        o.stdout.len()
    );
    let o = f.run(&[
        "exec",
        "-w",
        "/etc",
        "-e",
        "GREETING=hi",
        &name,
        "--",
        "sh",
        "-c",
        "echo $GREETING $(pwd)",
    ]);
    assert_eq!(stdout(&o), "hi /etc\n", "{}", text(&o));

    // Refused: no command, an unknown VM, a stopped VM (exit 2, naming the VM).
    let o = f.run(&["exec", &name]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = f.run(&["exec", "nosuchvm", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr(&o).contains("nosuchvm"), "{}", text(&o));
    f.ok(&["stop", &name]);
    let o = f.run(&["exec", &name, "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains(&format!("{name} is not running")),
        "{}",
        text(&o)
    );
    let o = f.run(&["cp", &format!("{name}:/etc/hostname"), "/tmp"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    f.ok(&["rm", &name]);
    f.assert_clean();
}

#[test]
fn several_execs_at_once_and_files_copied_both_ways() {
    let mut f = Fleet::new();
    let name = start(&mut f, "execcp");

    // The first exec waits for its input while a second one runs to its end.
    let mut c = f.kiln();
    c.args(["exec", "-i", &name, "--", "sh", "-c", "read x; echo got $x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut first = KillOnDrop(c.spawn().expect("spawn"));
    let mut others: Vec<KillOnDrop> = (0..3)
        .map(|i| {
            let mut c = f.kiln();
            c.args(["exec", &name, "--", "echo", &format!("second-{i}")])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            KillOnDrop(c.spawn().expect("spawn"))
        })
        .collect();
    for (i, o) in others.iter_mut().enumerate() {
        let status = o.wait_timeout(Duration::from_secs(60)).expect("ends");
        let mut out = String::new();
        std::io::Read::read_to_string(o.0.stdout.as_mut().expect("stdout"), &mut out)
            .expect("read");
        assert!(status.success(), "{out}");
        assert_eq!(out, format!("second-{i}\n"));
    }
    assert!(
        first.0.try_wait().expect("try_wait").is_none(),
        "the first exec still waits for its input"
    );
    let mut input = first.0.stdin.take().expect("stdin");
    input.write_all(b"hello\n").expect("write");
    drop(input);
    let status = first.wait_timeout(Duration::from_secs(60)).expect("ends");
    let mut out = String::new();
    std::io::Read::read_to_string(first.0.stdout.as_mut().expect("stdout"), &mut out)
        .expect("read");
    assert!(status.success());
    assert_eq!(out, "got hello\n");

    // Host → guest, mode kept.
    let d = tempfile::tempdir().expect("tmp");
    let script = d.path().join("hello.sh");
    let content = "#!/bin/sh\necho copied script runs\n".repeat(2000);
    std::fs::write(&script, &content).expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o751)).expect("chmod");
    let s = script.to_str().expect("utf-8");
    f.ok(&["cp", s, &format!("{name}:/tmp/hello.sh")]);
    let o = f.ok(&["exec", &name, "--", "cat", "/tmp/hello.sh"]);
    assert!(stdout(&o) == content, "the copy differs");
    let o = f.ok(&["exec", &name, "--", "ls", "-l", "/tmp/hello.sh"]);
    assert!(stdout(&o).starts_with("-rwxr-x--x"), "{}", stdout(&o));
    let o = f.ok(&["exec", &name, "--", "/tmp/hello.sh"]);
    assert!(stdout(&o).starts_with("copied script runs\n"));
    // Into a folder (a trailing slash): the file keeps its name.
    f.ok(&["cp", s, &format!("{name}:/var/www/")]);
    f.ok(&["exec", &name, "--", "test", "-f", "/var/www/hello.sh"]);

    // Guest → host, mode kept; a host folder takes the file's name.
    f.ok(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "printf 'guest data\\n' > /tmp/g.txt; chmod 640 /tmp/g.txt",
    ]);
    let back = d.path().join("back.txt");
    f.ok(&[
        "cp",
        &format!("{name}:/tmp/g.txt"),
        back.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        std::fs::read_to_string(&back).expect("read"),
        "guest data\n"
    );
    let mode = std::fs::metadata(&back).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
    f.ok(&[
        "cp",
        &format!("{name}:/etc/hostname"),
        d.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(
        std::fs::read_to_string(d.path().join("hostname")).expect("read"),
        format!("{name}\n")
    );

    // Missing files, either side: exit 2, the path named; nothing left behind.
    let o = f.run(&[
        "cp",
        &format!("{name}:/nonexistent"),
        back.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr(&o).contains("/nonexistent"), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(&back).expect("read"),
        "guest data\n"
    );
    let o = f.run(&["cp", "/nonexistent-host-file", &format!("{name}:/tmp/x")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("/nonexistent-host-file"),
        "{}",
        text(&o)
    );
    let o = f.run(&["cp", s, &format!("{name}:/no/such/folder/x")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr(&o).contains("/no/such/folder/x"), "{}", text(&o));
    let o = f.run(&["cp", &format!("{name}:/etc"), back.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = f.run(&["cp", s, back.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let leftovers: Vec<String> = std::fs::read_dir(d.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let o = f.ok(&["exec", &name, "--", "ls", "-a", "/tmp", "/var/www"]);
    assert!(!stdout(&o).contains(".kiln-"), "{}", stdout(&o));

    f.ok(&["rm", "-f", &name]);
    f.assert_clean();
}

/// A tmux server on its own socket, killed when dropped.
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        std::process::Command::new("tmux")
            .env_remove("TMUX")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tmux")
    }

    fn pane(&self) -> String {
        stdout(&self.cmd(&["capture-pane", "-p", "-t", "t"]))
    }

    fn keys(&self, keys: &str) {
        let o = self.cmd(&["send-keys", "-t", "t", keys, "Enter"]);
        assert!(o.status.success(), "{}", text(&o));
    }

    /// Wait (up to `secs`) until the pane shows `what`; fail at once if `kiln exec` ended
    /// instead, showing the pane.
    fn wait_for(&self, what: &str, secs: u64) -> String {
        let mut last = String::new();
        let found = poll_until(
            Duration::from_secs(secs),
            Duration::from_millis(100),
            || {
                last = self.pane();
                if !what.starts_with("kiln-exit=") && last.contains("kiln-exit=") {
                    panic!("kiln exec ended before {what:?} appeared:\n{last}");
                }
                Some(last.clone()).filter(|p| p.contains(what))
            },
        );
        found.unwrap_or_else(|| panic!("{what:?} did not appear in the terminal:\n{last}"))
    }

    /// The pane's size: rows, columns.
    fn size(&self) -> (u16, u16) {
        let o = self.cmd(&[
            "display-message",
            "-p",
            "-t",
            "t",
            "#{pane_height} #{pane_width}",
        ]);
        let s = stdout(&o);
        let mut w = s.split_whitespace().map(|n| n.parse().expect("number"));
        (w.next().expect("rows"), w.next().expect("cols"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn exec_with_a_terminal_in_tmux() {
    if std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_err()
    {
        panic!("tmux is missing: run scripts/setup.sh (apt-get install tmux)");
    }
    let mut f = Fleet::new();
    let name = start(&mut f, "exectty");
    let d = tempfile::tempdir().expect("tmp");
    // The terminal's command: `kiln exec -it NAME -- sh` with this test's state folder,
    // then its exit code.
    let script = d.path().join("run.sh");
    let init = std::env::var_os("KILN_INIT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| kiln_test_support::workspace_root().join("target/guest/kiln-init"));
    std::fs::write(
        &script,
        format!(
            "export KILN_STATE_DIR='{}' XDG_RUNTIME_DIR='{}' KILN_INIT='{}' TERM=xterm\n'{}' exec -it {name} -- sh\necho kiln-exit=$?\nexec cat\n",
            f.state.path().display(),
            f.state.path().display(),
            init.display(),
            env!("CARGO_BIN_EXE_kiln"),
        ),
    )
    .expect("script");
    let tmux = Tmux {
        socket: d.path().join("tmux.sock"),
    };
    let o = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "120",
        "-y",
        "40",
        &format!("sh {}", script.display()),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    tmux.wait_for("/ #", 60);
    // A terminal of the pane's size, with its TERM.
    let (rows, cols) = tmux.size();
    tmux.keys("tty; stty size; echo term=$TERM");
    tmux.wait_for("/dev/pts/", 30);
    tmux.wait_for(&format!("{rows} {cols}"), 30);
    tmux.wait_for("term=xterm", 30);
    // A resize reaches the command (SIGWINCH on both sides).
    let o = tmux.cmd(&["resize-window", "-t", "t", "-x", "90", "-y", "25"]);
    assert!(o.status.success(), "{}", text(&o));
    let (rows, cols) = tmux.size();
    assert_eq!(cols, 90);
    let want = format!("size={rows}x{cols}");
    wait_until(
        "the new size in the guest",
        Duration::from_secs(30),
        Duration::from_secs(1),
        || {
            tmux.keys("echo size=$(stty size | tr ' ' x)");
            Some(()).filter(|_| tmux.pane().contains(&want))
        },
    );
    // Ctrl-C reaches the guest's terminal (its line discipline), not kiln.
    tmux.keys("sleep 1000");
    // Once it runs (a byte typed while the shell still edits its line is no signal); asked
    // through a second exec beside the first.
    wait_until(
        "sleep to run in the guest",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            f.run(&["exec", &name, "--", "pidof", "sleep"])
                .status
                .success()
                .then_some(())
        },
    );
    let o = tmux.cmd(&["send-keys", "-t", "t", "C-c"]);
    assert!(o.status.success());
    tmux.keys("echo after=$?");
    tmux.wait_for("after=130", 30);
    // The shell's exit code is kiln's.
    tmux.keys("exit 7");
    tmux.wait_for("kiln-exit=7", 30);
    f.ok(&["rm", "-f", &name]);
    f.assert_clean();
}

/// recipes/httpd serves in 20 MiB, with the exec channel: Kiln's tiny kernel caps virtio rings
/// at 128 entries, so the port's receive buffers cost 0.5 MiB, not 4. A kernel with QEMU's
/// full-size rings (Debian's) gets the port only from 48 MiB (the plan, seen in the QEMU argv).
#[test]
fn httpd_serves_in_20_mib_with_the_exec_channel() {
    let mut f = Fleet::new();
    let image = httpd_image().to_str().expect("utf-8 path").to_string();
    let m = manifest(httpd_image());
    assert!(
        m["kernel"]["patches"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p == "virtio-mmio-max-ring.patch")),
        "{}",
        m["kernel"]
    );
    let (name, port) = f.run_detached("mem20", &image, 80, &["--memory", "20"]);
    assert!(
        super::lifecycle::page(port, "").contains("Hello from a Kiln microVM"),
        "the page"
    );
    // One round trip: the ring cap, the page reporting order, the memory, then the devices
    // bound to virtio_balloon.
    let o = f.run(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "cat /sys/module/virtio_mmio/parameters/max_ring \
         /sys/module/page_reporting/parameters/page_reporting_order; \
         grep MemTotal /proc/meminfo; ls /sys/bus/virtio/drivers/virtio_balloon",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("128"), "the guest's ring cap: {out}");
    // Free page reporting: the balloon driver is bound and reports 32 KiB blocks.
    assert_eq!(lines.next(), Some("3"), "{out}");
    let kb: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MemTotal: {}", text(&o)));
    assert!(
        lines.any(|l| l.contains("virtio")),
        "no device bound to virtio_balloon: {out}"
    );
    assert!(kb < 20 * 1024, "the guest has {kb} kB");
    f.ok(&["rm", "-f", &name]);

    let debian = httpd_debian_image()
        .to_str()
        .expect("utf-8 path")
        .to_string();
    for (mib, port_expected) in [("32", false), ("48", true)] {
        let o = f.run(&["run", "--dry-run", "--memory", mib, &debian]);
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(
            stdout(&o).contains("org.kiln.exec"),
            port_expected,
            "Debian's kernel at {mib} MiB:\n{}",
            stdout(&o)
        );
    }
    f.assert_clean();
}

/// A command that never reads its input while the client keeps sending (1 MiB) does not stall
/// the VM's other sessions: after a few seconds the rest of its input is dropped, it is told on
/// its stderr, and another exec started meanwhile finishes at once.
#[test]
fn a_command_that_never_reads_its_input_does_not_stall_the_others() {
    let mut f = Fleet::new();
    let name = start(&mut f, "xstall");
    let mut c = f.kiln();
    c.args(["exec", "-i", &name, "--", "sh", "-c", "sleep 8; echo slept"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut stuck = KillOnDrop(c.spawn().expect("spawn kiln exec"));
    let mut input = stuck.0.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&vec![b'x'; 1 << 20]);
    });
    // Once the channel is full of its input, another session still runs.
    let t = std::time::Instant::now();
    let o = f.run(&["exec", &name, "--", "echo", "through"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "through\n");
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "the other exec waited {:?} behind the stuck one",
        t.elapsed()
    );
    let status = stuck
        .wait_timeout(Duration::from_secs(60))
        .expect("the stuck exec ends with its command");
    writer.join().expect("writer");
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    if let Some(mut s) = stuck.0.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = stuck.0.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(out, "slept\n");
    assert!(err.contains("did not read its input"), "{err}");
}
