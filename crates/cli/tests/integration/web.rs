//! `kiln serve` with real clients: HTTP (ureq), WebSocket (tungstenite) and server-sent events
//! (a raw socket). The VM test boots recipes/rescue under QEMU through the API.

use super::*;
use kiln_test_support::{curl, free_port, qemu_pids_with, wait_until, KillOnDrop};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `kiln serve` on an ephemeral port with its own state folder. Dropping it kills
/// the server, then every VM it left behind.
struct Server {
    child: Option<KillOnDrop>,
    url: String,
    token: String,
    stderr: mpsc::Receiver<String>,
    state: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let state = tempfile::tempdir().expect("tmp");
        Server::start_in(state)
    }

    fn start_in(state: tempfile::TempDir) -> Server {
        let mut c = kiln(state.path());
        c.args(["serve", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(c.spawn().expect("spawn kiln serve"));
        let err = child.0.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("kiln serve did not start: {seen:?}"));
            if let Some(rest) = line.strip_prefix("kiln: serving on ") {
                break rest
                    .split_whitespace()
                    .next()
                    .expect("url")
                    .trim_end_matches('/')
                    .to_string();
            }
            seen.push(line);
        };
        let token = std::fs::read_to_string(state.path().join("serve.token"))
            .expect("token file")
            .trim()
            .to_string();
        let s = Server {
            child: Some(child),
            url,
            token,
            stderr: rx,
            state,
        };
        s.printed(seen)
    }

    /// Keep the lines printed before "serving on" for the token checks.
    fn printed(self, lines: Vec<String>) -> Server {
        PRINTED.with(|p| *p.borrow_mut() = lines);
        self
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        call(
            method,
            &format!("{}{path}", self.url),
            Some(&format!("Bearer {}", self.token)),
            body,
        )
    }

    fn vm(&self, name: &str) -> (u16, serde_json::Value) {
        self.call("GET", &format!("/api/vms/{name}"), None)
    }
}

thread_local! {
    static PRINTED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.take());
        // Whatever the test did, no VM outlives it.
        let mut c = kiln(self.state.path());
        c.args(["ps", "--json"]);
        let o = run(c);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap_or_default();
        for r in rows {
            if let Some(name) = r["name"].as_str() {
                let mut c = kiln(self.state.path());
                c.args(["stop", "--timeout", "0", name]);
                run(c);
                for pid in qemu_pids_with(&format!("kiln-{name}")) {
                    // SAFETY: kill(2) on a QEMU process this test started.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGKILL);
                    }
                }
            }
        }
        while self.stderr.try_recv().is_ok() {}
    }
}

/// One HTTP request with ureq: (status, JSON body or Null).
fn call(
    method: &str,
    url: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut r = ureq::request(method, url).timeout(Duration::from_secs(60));
    if let Some(a) = auth {
        r = r.set("Authorization", a);
    }
    let result = match body {
        Some(b) => r.set("Content-Type", "application/json").send_string(b),
        None => r.call(),
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("(no error code)")
}

/// Every error must use a code the OpenAPI description lists, with its status.
fn assert_error(s: &Server, got: (u16, serde_json::Value), status: u16, expected: &str) {
    let (st, body) = got;
    assert_eq!((st, code(&body)), (status, expected), "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    let (_, doc) = s.call("GET", "/api/openapi.json", None);
    let listed = doc["info"]["x-error-codes"]
        .as_array()
        .expect("codes")
        .iter()
        .any(|c| c["code"] == expected && c["status"] == status);
    assert!(listed, "{expected} ({status}) is not documented");
}

#[test]
fn api_errors_carry_their_documented_codes_and_the_page_needs_a_login() {
    let s = Server::start();
    let printed = PRINTED.with(|p| p.borrow().join("\n"));
    assert!(
        printed.contains(&s.token),
        "the new token is printed once: {printed}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.state.path().join("serve.token"))
            .expect("token")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let u = |p: &str| format!("{}{p}", s.url);

    // Tokens.
    assert_error(
        &s,
        call("GET", &u("/api/vms"), None, None),
        401,
        "missing_token",
    );
    assert_error(
        &s,
        call("GET", &u("/api/vms"), Some("Bearer wrong"), None),
        401,
        "bad_token",
    );
    assert_error(
        &s,
        call("GET", &u("/api/openapi.json"), Some("Bearer wrong"), None),
        401,
        "bad_token",
    );
    let (st, list) = s.call("GET", "/api/vms", None);
    assert_eq!((st, list), (200, serde_json::json!([])));

    // Unknown VMs, on every VM route.
    for (m, p) in [
        ("GET", "/api/vms/ghost"),
        ("DELETE", "/api/vms/ghost"),
        ("POST", "/api/vms/ghost/start"),
        ("POST", "/api/vms/ghost/stop"),
        ("POST", "/api/vms/ghost/kill"),
        ("GET", "/api/vms/ghost/logs"),
        ("GET", "/api/vms/ghost/console"),
        ("GET", "/api/vms/..%2F..%2Fetc/logs"),
    ] {
        assert_error(&s, s.call(m, p, None), 404, "vm_not_found");
    }

    // Bodies.
    assert_error(
        &s,
        s.call("POST", "/api/vms", Some("{not json")),
        400,
        "bad_body",
    );
    assert_error(
        &s,
        s.call(
            "POST",
            "/api/vms",
            Some(r#"{"recipe":"rescue","colour":"red"}"#),
        ),
        400,
        "bad_body",
    );
    // Over the limit, several times on the pooled connection: the server reads the body to its
    // end before refusing, so the client is never cut off mid-write.
    let big = format!(r#"{{"recipe":"{}"}}"#, "a".repeat(300 * 1024));
    for _ in 0..5 {
        assert_error(
            &s,
            s.call("POST", "/api/vms", Some(&big)),
            413,
            "body_too_large",
        );
    }
    for bad in [
        r#"{"recipe":"../recipes/rescue"}"#,
        r#"{"recipe":"/etc"}"#,
        r#"{"image":"../../etc"}"#,
        r#"{"recipe":"rescue","name":"No Spaces"}"#,
        r#"{"recipe":"rescue","cpus":0}"#,
        r#"{"recipe":"rescue","memory":1}"#,
        r#"{"recipe":"rescue","ports":["99999:80"]}"#,
        r#"{}"#,
    ] {
        assert_error(
            &s,
            s.call("POST", "/api/vms", Some(bad)),
            400,
            "invalid_request",
        );
    }
    assert_error(
        &s,
        s.call("POST", "/api/vms", Some(r#"{"recipe":"nosuch"}"#)),
        404,
        "recipe_not_found",
    );
    assert_error(
        &s,
        s.call("POST", "/api/vms", Some(r#"{"image":"nosuch"}"#)),
        404,
        "image_not_found",
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    assert_error(
        &s,
        s.call(
            "POST",
            "/api/vms",
            Some(&format!(r#"{{"recipe":"rescue","ports":["{port}:80"]}}"#)),
        ),
        409,
        "port_in_use",
    );
    assert_error(&s, s.call("GET", "/api/nothing", None), 404, "not_found");
    assert_error(
        &s,
        s.call("PUT", "/api/vms", None),
        405,
        "method_not_allowed",
    );

    // The catalog and host.
    let (_, recipes) = s.call("GET", "/api/recipes", None);
    assert!(
        recipes
            .as_array()
            .expect("recipes")
            .iter()
            .any(|r| r["name"] == "rescue"),
        "{recipes}"
    );
    let (st, host) = s.call("GET", "/api/host", None);
    assert_eq!(st, 200);
    assert!(
        host["qemu_version"]
            .as_str()
            .is_some_and(|v| v.contains("QEMU")),
        "{host}"
    );
    assert!(host["memory_available_mib"].as_u64().is_some(), "{host}");

    // Every described route is served (none falls through to `not_found`).
    let (_, doc) = s.call("GET", "/api/openapi.json", None);
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.contains_key("/api/vms"));
    for (path, ops) in paths {
        for method in ops.as_object().expect("ops").keys() {
            if path == "/api/events" {
                continue; // a stream: checked below
            }
            let p = path.replace("{name}", "ghost");
            let (st, body) = s.call(&method.to_uppercase(), &p, Some("{}"));
            assert!(
                code(&body) != "not_found" && code(&body) != "method_not_allowed" && st != 0,
                "{method} {path}: {st} {body}"
            );
        }
    }

    // Live table: the first event is the table at once.
    let events = sse_first_event(&s, "/api/events");
    assert!(
        events.contains("event: vms") && events.contains("data: []"),
        "{events}"
    );

    // The page: a login form without the cookie, the page with it.
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let r = agent.get(&u("/")).call().expect("GET /");
    assert_eq!(r.status(), 303);
    assert_eq!(r.header("location"), Some("/login"));
    match agent.post(&u("/login")).send_form(&[("token", "wrong")]) {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("a wrong login: {other:?}"),
    }
    let r = agent
        .post(&u("/login"))
        .send_form(&[("token", &s.token)])
        .expect("login");
    assert_eq!(r.status(), 303);
    let cookie = r
        .header("set-cookie")
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_string();
    assert!(r
        .header("set-cookie")
        .is_some_and(|c| c.contains("HttpOnly") && c.contains("SameSite=Strict")));
    let page = agent
        .get(&u("/"))
        .set("Cookie", &cookie)
        .call()
        .expect("page");
    assert!(page
        .header("content-security-policy")
        .is_some_and(|c| c.contains("default-src 'self'")));
    let html = page.into_string().expect("html");
    assert!(
        html.contains("/assets/xterm.js") && !html.contains("https://"),
        "{html}"
    );
    let js = agent
        .get(&u("/assets/xterm.js"))
        .set("Cookie", &cookie)
        .call()
        .expect("xterm.js")
        .into_string()
        .expect("js");
    assert!(js.len() > 100_000 && js.contains("Terminal"));
    // A cookie-authenticated change from another origin is refused; from the page it passes.
    // On one pooled connection, again and again: a refusal must not leave the request's body
    // unread (the server would then drop the connection and the next request end in EOF).
    let pooled = ureq::AgentBuilder::new()
        .redirects(0)
        .max_idle_connections(1)
        .build();
    // A body big enough to arrive after the refusal is decided.
    let big = format!("{{\"recipe\":\"{}\"}}", "x".repeat(48 * 1024));
    for round in 0..10 {
        match pooled
            .post(&u("/api/vms"))
            .set("Cookie", &cookie)
            .set("Origin", "http://evil.example")
            .send_string(&big)
        {
            Err(ureq::Error::Status(403, r)) => {
                assert!(r.into_string().expect("body").contains("bad_origin"))
            }
            other => panic!("cross-origin POST, round {round}: {other:?}"),
        }
        match pooled
            .post(&u("/api/vms"))
            .set("Cookie", &cookie)
            .set("Origin", &s.url)
            .send_string("{}")
        {
            Err(ureq::Error::Status(400, r)) => {
                assert!(r.into_string().expect("body").contains("invalid_request"))
            }
            other => panic!("same-origin POST, round {round}: {other:?}"),
        }
    }
    let fresh = || ureq::AgentBuilder::new().redirects(0).build();
    // No CORS: a preflight gets no Access-Control-Allow-Origin.
    let pre = fresh()
        .request("OPTIONS", &u("/api/vms"))
        .set("Origin", "http://evil.example")
        .set("Access-Control-Request-Method", "POST")
        .call();
    let headers_ok = match pre {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r.header("access-control-allow-origin").is_none(),
        Err(e) => panic!("preflight: {e}"),
    };
    assert!(headers_ok);

    // A second start reuses the token and does not print it.
    let path = s.state.path().to_path_buf();
    let again = {
        let mut c = kiln(&path);
        c.args(["serve", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(c.spawn().expect("spawn"));
        let mut err = BufReader::new(child.0.stderr.take().expect("stderr"));
        let mut first = String::new();
        err.read_line(&mut first).expect("line");
        first
    };
    assert!(
        again.starts_with("kiln: serving on") && !again.contains(&s.token),
        "{again}"
    );
}

/// Read the first server-sent event of `path`.
fn sse_first_event(s: &Server, path: &str) -> String {
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut c = std::net::TcpStream::connect(&addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
        s.token
    )
    .expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\n\n\n")
        && !String::from_utf8_lossy(&got).contains("data: ")
    {
        let n = c.read(&mut buf).expect("read events");
        assert!(n > 0, "the event stream closed");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

type Ws = tungstenite::WebSocket<std::net::TcpStream>;

fn console(s: &Server, name: &str) -> Ws {
    use tungstenite::client::IntoClientRequest;
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut req = format!("ws://{addr}/api/vms/{name}/console")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", s.token).parse().expect("header"),
    );
    let tcp = std::net::TcpStream::connect(&addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let (ws, resp) = tungstenite::client(req, tcp).expect("WebSocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// Read from a console until `needle` shows up (panics after `timeout`).
fn read_until(ws: &mut Ws, seen: &mut String, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !seen.contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no `{needle}` on the console; it showed:\n{seen}"
        );
        match ws.read() {
            Ok(tungstenite::Message::Binary(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(tungstenite::Message::Text(t)) => seen.push_str(t.as_str()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("console closed: {e}; it showed:\n{seen}"),
        }
    }
}

#[test]
fn create_ready_console_stop_remove_through_the_api() {
    let s = Server::start();
    let name = format!("web{}", kiln_test_support::free_port());
    let (st, vm) = s.call(
        "POST",
        "/api/vms",
        Some(&format!(
            r#"{{"recipe":"rescue","name":"{name}","cpus":1,"memory":96}}"#
        )),
    );
    assert_eq!(st, 202, "{vm}");
    assert_eq!(vm["state"], "starting");
    assert_error(
        &s,
        s.call(
            "POST",
            "/api/vms",
            Some(&format!(r#"{{"recipe":"rescue","name":"{name}"}}"#)),
        ),
        409,
        "name_taken",
    );
    let vm = wait_until(
        "the VM to be running",
        Duration::from_secs(180),
        Duration::from_millis(200),
        || {
            let (_, v) = s.vm(&name);
            assert_ne!(v["state"], "failed", "{v}");
            (v["state"] == "running").then_some(v)
        },
    );
    assert_eq!(vm["memory"], 96);
    let pid = vm["pid"].as_u64().expect("pid") as u32;
    assert!(kiln_vm::runner::pid_alive(pid));
    // Still taken once running.
    assert_error(
        &s,
        s.call(
            "POST",
            "/api/vms",
            Some(&format!(r#"{{"recipe":"rescue","name":"{name}"}}"#)),
        ),
        409,
        "name_taken",
    );
    assert_error(
        &s,
        s.call("DELETE", &format!("/api/vms/{name}"), None),
        409,
        "vm_running",
    );

    // Two viewers: what one types, both see answered.
    let mut a = console(&s, &name);
    let mut b = console(&s, &name);
    let (mut seen_a, mut seen_b) = (String::new(), String::new());
    read_until(&mut a, &mut seen_a, "rescue#", Duration::from_secs(30));
    a.send(tungstenite::Message::Text("echo hi-$((6*7))\r".into()))
        .expect("type");
    read_until(&mut a, &mut seen_a, "hi-42", Duration::from_secs(30));
    read_until(&mut b, &mut seen_b, "hi-42", Duration::from_secs(30));
    let (_, logs) = s.call("GET", &format!("/api/vms/{name}/logs"), None);
    assert!(
        logs["log"].as_str().is_some_and(|l| l.contains("hi-42")),
        "{logs}"
    );

    // The usage figures arrive with the next samples.
    let vm = wait_until(
        "CPU and memory figures",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            let (_, v) = s.call("GET", "/api/vms", None);
            let v = v
                .as_array()?
                .iter()
                .find(|r| r["name"] == name.as_str())?
                .clone();
            (v["cpu_percent"].is_number() && v["rss_mib"].is_number()).then_some(v)
        },
    );
    assert!(vm["rss_mib"].as_f64().expect("rss") > 1.0, "{vm}");

    let (st, after) = s.call("POST", &format!("/api/vms/{name}/stop"), None);
    assert_eq!(st, 200, "{after}");
    assert!(!kiln_vm::runner::pid_alive(pid), "QEMU still runs");
    assert!(qemu_pids_with(&format!("kiln-{name}")).is_empty());
    read_until(
        &mut a,
        &mut seen_a,
        "[console closed]",
        Duration::from_secs(10),
    );
    assert_error(
        &s,
        s.call("POST", &format!("/api/vms/{name}/stop"), None),
        if after["state"] == "stopped" {
            404
        } else {
            409
        },
        if after["state"] == "stopped" {
            "vm_not_found"
        } else {
            "vm_not_running"
        },
    );
    // Stopped VMs the lifecycle still lists are removed; then the name is unknown.
    if after["state"] != "stopped" {
        let (st, body) = s.call("DELETE", &format!("/api/vms/{name}"), None);
        assert_eq!(st, 204, "{body}");
    }
    assert_error(&s, s.vm(&name), 404, "vm_not_found");
    let (_, list) = s.call("GET", "/api/vms", None);
    assert_eq!(list, serde_json::json!([]));
}

#[test]
fn browser_creates_a_vm_types_in_its_console_and_stops_it() {
    let e2e = workspace_root().join("tests/e2e");
    assert!(
        e2e.join("node_modules/playwright-core").is_dir(),
        "tests/e2e/node_modules is missing: run scripts/setup.sh (it runs npm ci there)"
    );
    let s = Server::start();
    let name = format!("e2e{}", kiln_test_support::free_port());
    let shot = workspace_root().join("target/e2e/console.png");
    let _ = std::fs::remove_file(&shot);
    let mut c = std::process::Command::new("node");
    c.args(["--test", "console.test.mjs"])
        .current_dir(&e2e)
        .env("KILN_URL", &s.url)
        .env("KILN_TOKEN", &s.token)
        .env("KILN_VM", &name)
        .env("KILN_SCREENSHOT", &shot)
        .stdin(Stdio::null());
    let o = c.output().expect("run node");
    let out = text(&o);
    assert!(o.status.success(), "the browser test failed:\n{out}");
    assert!(
        out.contains("# pass 1") && out.contains("# fail 0"),
        "{out}"
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    assert!(
        qemu_pids_with(&format!("kiln-{name}")).is_empty(),
        "QEMU left running"
    );
}

/// A foreground `kiln run` in the server's state folder shows in the table as such, its
/// console and log are refused with the reason, and the API stops it.
#[test]
fn a_foreground_run_shows_in_the_api_and_stops_from_it() {
    let s = Server::start();
    let name = format!("fgweb{}", free_port());
    let port = free_port();
    let mut c = kiln(s.state.path());
    c.args([
        "run",
        "--no-console",
        "--name",
        &name,
        "-p",
        &format!("{port}:80"),
    ])
    .arg(httpd_image())
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut child = KillOnDrop(c.spawn().expect("spawn kiln run"));
    let vm = wait_until(
        "the foreground VM running in /api/vms",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let (_, v) = s.call("GET", "/api/vms", None);
            v.as_array()?
                .iter()
                .find(|r| r["name"] == name.as_str() && r["state"] == "running")
                .cloned()
        },
    );
    assert_eq!(vm["foreground"], true, "{vm}");
    for path in ["console", "logs"] {
        assert_error(
            &s,
            s.call("GET", &format!("/api/vms/{name}/{path}"), None),
            400,
            "unsupported",
        );
    }
    // A command in it through the API (a foreground VM has an exec channel too): its output,
    // its input, its exit code; a command the guest does not have.
    let (st, out) = s.call(
        "POST",
        &format!("/api/vms/{name}/exec"),
        Some(r#"{"argv": ["sh", "-c", "cat /etc/hostname; wc -c; echo oops >&2; exit 5"], "stdin": "data"}"#),
    );
    assert_eq!(st, 200, "{out}");
    let lines: Vec<&str> = out["stdout"]
        .as_str()
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .collect();
    assert_eq!(lines, [name.as_str(), "4"], "{out}");
    assert_eq!(out["stderr"], "oops\n", "{out}");
    assert_eq!(out["exit_code"], 5, "{out}");
    assert_eq!(out["timed_out"], false, "{out}");
    let (st, out) = s.call(
        "POST",
        &format!("/api/vms/{name}/exec"),
        Some(r#"{"argv": ["nosuch"]}"#),
    );
    assert_eq!(st, 200, "{out}");
    assert_eq!(out["exit_code"], 127, "{out}");
    assert!(
        out["stderr"]
            .as_str()
            .unwrap_or("")
            .contains("nosuch: command not found"),
        "{out}"
    );
    let (st, after) = s.call("POST", &format!("/api/vms/{name}/stop"), None);
    assert_eq!(st, 200, "{after}");
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .expect("kiln run ends when the API stops it");
    assert!(status.success(), "{status:?}");
    assert!(qemu_pids_with(&format!("kiln-{name}")).is_empty());
}

/// A VM created through the API with a shared folder, a second drive, a restart policy, a
/// virtio-console port and a forward, then stopped and started again from the API, still has
/// all of them: QEMU's command line names the drive and the share, the port's socket listens,
/// the forward answers, and a SIGKILLed QEMU comes back.
#[test]
fn a_vm_started_again_from_the_web_keeps_its_whole_spec() {
    let s = Server::start();
    let name = format!("spec{}", free_port());
    let port = free_port();
    let tmp = tempfile::tempdir().expect("tmp");
    let shared = tmp.path().join("shared");
    std::fs::create_dir_all(&shared).expect("mkdir");
    std::fs::write(shared.join("greeting.txt"), "hello from the host\n").expect("w");
    let disk = tmp.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let body = serde_json::json!({
        "recipe": "httpd",
        "name": name,
        "ports": [format!("{port}:80")],
        "share": format!("{}:/mnt/shared", shared.display()),
        "drive": disk.display().to_string(),
        "restart": "on-failure",
        "vports": ["data"],
    })
    .to_string();
    let (st, vm) = s.call("POST", "/api/vms", Some(&body));
    assert_eq!(st, 202, "POST /api/vms {body}: {vm}");

    let running = |what: &str, timeout: Duration, not_pid: Option<u64>| {
        wait_until(what, timeout, Duration::from_millis(200), || {
            let (_, v) = s.vm(&name);
            assert_ne!(v["state"], "failed", "{v}");
            let pid = v["pid"].as_u64()?;
            (v["state"] == "running" && Some(pid) != not_pid).then_some(v)
        })
    };
    let url = format!("http://127.0.0.1:{port}/");
    let http_ok = || {
        wait_until(
            "HTTP 200 on the forwarded port",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || curl(&url, 1.0).filter(|(c, _)| *c == 200),
        )
    };
    let vm = running("the VM to be running", Duration::from_secs(180), None);
    let first = vm["pid"].as_u64().expect("pid");
    http_ok();

    // Stop, then start again from the API.
    let (st, after) = s.call("POST", &format!("/api/vms/{name}/stop"), None);
    assert_eq!(st, 200, "{after}");
    let stopped = wait_until(
        "the VM to end",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let (st, v) = s.vm(&name);
            assert_eq!(st, 200, "a stopped VM stays listed: {v}");
            let state = v["state"].as_str()?;
            (!["starting", "running", "restarting", "stopping"].contains(&state)).then_some(v)
        },
    );
    assert_eq!(stopped["state"], "exited", "{stopped}");
    assert!(qemu_pids_with(&format!("kiln-{name} ")).is_empty());
    let (st, started) = s.call("POST", &format!("/api/vms/{name}/start"), None);
    assert_eq!(st, 202, "{started}");
    let vm = running(
        "the VM to be running again",
        Duration::from_secs(120),
        Some(first),
    );
    http_ok();

    // The real QEMU has the drive, the share and the port; the port's socket listens.
    let sock = s
        .state
        .path()
        .join("vms")
        .join(&name)
        .join("vport-data.sock");
    let assert_spec = |vm: &serde_json::Value| {
        let pid = vm["pid"].as_u64().expect("pid");
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).expect("QEMU's cmdline");
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        for (what, needle) in [
            ("QEMU", "qemu-system".to_string()),
            ("the drive", disk.display().to_string()),
            ("the shared folder", shared.display().to_string()),
            ("the vport", sock.display().to_string()),
        ] {
            assert!(
                cmd.contains(&needle),
                "{what} ({needle}) is not on QEMU's command line: {cmd}\nrow: {vm}"
            );
        }
        std::os::unix::net::UnixStream::connect(&sock)
            .unwrap_or_else(|e| panic!("vport socket {}: {e}; row: {vm}", sock.display()));
    };
    assert_spec(&vm);

    // The restart policy holds: a SIGKILLed QEMU comes back, with the same spec.
    let killed = vm["pid"].as_u64().expect("pid");
    // SAFETY: kill(2) on the QEMU of a VM this test started.
    unsafe {
        libc::kill(killed as i32, libc::SIGKILL);
    }
    let vm = running(
        "the VM to be restarted after SIGKILL",
        Duration::from_secs(120),
        Some(killed),
    );
    let restarts = match vm.get("restarts") {
        Some(r) => r.clone(),
        None => {
            let mut c = kiln(s.state.path());
            c.args(["inspect", &name]);
            let o = run_ok(c);
            let rec: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect JSON");
            rec["restarts"].clone()
        }
    };
    assert!(
        restarts.as_u64().is_some_and(|n| n >= 1),
        "restarts {restarts}; row: {vm}"
    );
    assert_spec(&vm);
    http_ok();

    // Clean up through the API.
    let (st, after) = s.call("POST", &format!("/api/vms/{name}/stop"), None);
    assert_eq!(st, 200, "{after}");
    if after["state"] != "stopped" {
        let (st, body) = s.call("DELETE", &format!("/api/vms/{name}"), None);
        assert_eq!(st, 204, "{body}");
    }
    assert_error(&s, s.vm(&name), 404, "vm_not_found");
    assert!(
        qemu_pids_with(&format!("kiln-{name} ")).is_empty(),
        "QEMU left running"
    );
}
