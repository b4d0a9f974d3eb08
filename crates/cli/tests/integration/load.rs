//! Published ports under load (issue 13): a burst of new connections to a detached VM's
//! forwarded port is answered, every one of them. QEMU's user-mode forward alone listens with
//! a backlog of 1, and such a burst stalled or was reset while the guest's service was idle.

use super::lifecycle::{http_ok, Fleet};
use super::*;
use kiln_test_support::free_port;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// New connections opened at once.
const CLIENTS: usize = 200;

/// What one client may take, connect to last byte.
const CLIENT_DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn a_published_port_answers_a_burst_of_200_new_connections() {
    let mut f = Fleet::new();
    let name = f.name("load");
    let port = free_port();
    let image = httpd_image().to_string_lossy().into_owned();
    f.ok(&[
        "run",
        "-d",
        "--ready-timeout",
        "150",
        "--name",
        &name,
        "-p",
        &format!("{port}:80"),
        &image,
    ]);
    http_ok(port);

    // Every client connects at the same moment (a barrier), sends one GET and reads the answer.
    let start = Arc::new(Barrier::new(CLIENTS));
    let t0 = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let start = start.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    start.wait();
                    let t = Instant::now();
                    get(port).map(|status| (status, t.elapsed()))
                })
                .expect("spawn a client")
        })
        .collect();
    let results: Vec<Result<(u16, Duration), String>> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    let took = t0.elapsed();
    let slowest = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|(_, d)| *d))
        .max()
        .unwrap_or_default();
    let failed: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Ok((200, _)) => None,
            Ok((s, _)) => Some(format!("client {i}: HTTP {s}")),
            Err(e) => Some(format!("client {i}: {e}")),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {CLIENTS} new connections were not answered 200 (burst took {took:?}):\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!("{CLIENTS} new connections answered 200 in {took:?} (slowest {slowest:?})");

    // The guest's service is still there for the next client.
    http_ok(port);
    f.ok(&["rm", "-f", &name]);
    f.assert_clean();
}

/// One HTTP/1.0 GET on a new connection: the status code.
fn get(port: u16) -> Result<u16, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let mut s =
        TcpStream::connect_timeout(&addr, CLIENT_DEADLINE).map_err(|e| format!("connect: {e}"))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left)).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("read: {e} (after {} bytes)", answer.len()))?;
    let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .filter(|_| head.starts_with("HTTP/1."))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP status line in {head:?} ({} bytes)", answer.len()))
}
