//! The API handlers against a fake [`Vms`]: no QEMU, no real VMs. Each test builds the real
//! router around a [`FakeVms`], sends it requests with `tower::ServiceExt::oneshot` and checks
//! both the answers and the calls the fake recorded.

use super::api::AppState;
use super::catalog::Catalog;
use super::state::App;
use super::vms::{ExecCall, ExecOutput, Vms, VmsError};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use kiln_fleet::{Restart, Row, VmConfig, VmState, Vports};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789abcdef";
const LOG: &str = "kiln: ready in 42 ms\n";

/// A plausible in-memory VM fleet that records every call.
struct FakeVms {
    vms: Mutex<BTreeMap<String, (Row, VmConfig)>>,
    calls: Mutex<Vec<String>>,
    /// The specs `create` was given, in order.
    created: Mutex<Vec<VmConfig>>,
    /// When set, `create` fails with this message (and creates nothing).
    fail_create: Mutex<Option<String>>,
    next_pid: AtomicU32,
    sockets: PathBuf,
}

impl FakeVms {
    fn new(sockets: PathBuf) -> FakeVms {
        FakeVms {
            vms: Mutex::new(BTreeMap::new()),
            calls: Mutex::new(Vec::new()),
            created: Mutex::new(Vec::new()),
            fail_create: Mutex::new(None),
            // Far above any real pid, so the /proc sampling finds nothing.
            next_pid: AtomicU32::new(4_000_000_000),
            sockets,
        }
    }

    fn record(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }

    /// Every call but `list` (which every refresh makes).
    fn calls(&self) -> Vec<String> {
        self.calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|c| c.as_str() != "list")
            .cloned()
            .collect()
    }

    fn created(&self) -> Vec<VmConfig> {
        self.created.lock().expect("created").clone()
    }

    fn state_of(&self, name: &str) -> Option<VmState> {
        self.vms
            .lock()
            .expect("vms")
            .get(name)
            .map(|(r, _)| r.state)
    }

    fn row(&self, spec: &VmConfig, state: VmState) -> Row {
        let running = state == VmState::Running;
        Row {
            name: spec.name.clone().unwrap_or_default(),
            state,
            status: state.to_string(),
            pid: running.then(|| self.next_pid.fetch_add(1, Ordering::Relaxed)),
            supervisor_pid: None,
            uptime_s: 0,
            cpus: spec.cpus.unwrap_or(1),
            memory: spec.memory.unwrap_or(64),
            ports: spec.ports.clone(),
            image: spec.image.clone().unwrap_or_default(),
            accel: kiln_vm::Accel::Tcg,
            restarts: 0,
            restart: spec.restart_policy().to_string(),
            exit_code: (state == VmState::Exited).then_some(0),
            signal: None,
            ready_ms: running.then_some(42),
            error: None,
            foreground: false,
        }
    }

    /// Put a VM in the fleet without recording a call.
    fn seed(&self, spec: VmConfig, state: VmState) {
        let row = self.row(&spec, state);
        self.vms
            .lock()
            .expect("vms")
            .insert(row.name.clone(), (row, spec));
    }

    fn with<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut (Row, VmConfig)) -> Result<T, VmsError>,
    ) -> Result<T, VmsError> {
        let mut vms = self.vms.lock().expect("vms");
        let vm = vms
            .get_mut(name)
            .ok_or_else(|| VmsError::NotFound(name.to_string()))?;
        f(vm)
    }

    fn end(&self, name: &str) -> Result<(), VmsError> {
        self.with(name, |(row, _)| {
            if !row.state.is_active() {
                return Err(VmsError::Refused(format!("`{name}` is not running")));
            }
            row.state = VmState::Exited;
            row.status = "exited (stopped: Graceful)".into();
            row.pid = None;
            Ok(())
        })
    }
}

impl Vms for FakeVms {
    fn list(&self) -> Result<Vec<Row>, VmsError> {
        self.record("list".into());
        Ok(self
            .vms
            .lock()
            .expect("vms")
            .values()
            .map(|(r, _)| r.clone())
            .collect())
    }

    fn create(&self, spec: &VmConfig) -> Result<(), VmsError> {
        let name = spec.name.clone().unwrap_or_default();
        self.record(format!("create {name}"));
        self.created.lock().expect("created").push(spec.clone());
        if let Some(m) = self.fail_create.lock().expect("fail").clone() {
            return Err(VmsError::Failed(m));
        }
        if spec.image.is_none() {
            return Err(VmsError::Refused("no image".into()));
        }
        let mut vms = self.vms.lock().expect("vms");
        if vms.get(&name).is_some_and(|(r, _)| r.state.is_active()) {
            return Err(VmsError::Refused(format!("a VM named `{name}` runs")));
        }
        let row = self.row(spec, VmState::Running);
        vms.insert(name, (row, spec.clone()));
        Ok(())
    }

    fn spec(&self, name: &str) -> Result<VmConfig, VmsError> {
        self.record(format!("spec {name}"));
        self.with(name, |(_, spec)| Ok(spec.clone()))
    }

    fn stop(&self, name: &str) -> Result<(), VmsError> {
        self.record(format!("stop {name}"));
        self.end(name)
    }

    fn kill(&self, name: &str) -> Result<(), VmsError> {
        self.record(format!("kill {name}"));
        self.end(name)
    }

    fn remove(&self, name: &str) -> Result<(), VmsError> {
        self.record(format!("remove {name}"));
        let mut vms = self.vms.lock().expect("vms");
        match vms.get(name) {
            None => Err(VmsError::NotFound(name.to_string())),
            Some((r, _)) if r.state.is_active() => {
                Err(VmsError::Refused(format!("`{name}` is running")))
            }
            Some(_) => {
                vms.remove(name);
                Ok(())
            }
        }
    }

    fn logs(&self, name: &str, _max_bytes: u64) -> Result<String, VmsError> {
        self.record(format!("logs {name}"));
        self.with(name, |_| Ok(LOG.to_string()))
    }

    fn console_socket_path(&self, name: &str) -> PathBuf {
        self.sockets.join(name).join("console.sock")
    }

    /// Echoes: stdout is the argv joined and the input, the exit code the argv's length.
    fn exec(&self, name: &str, call: &ExecCall) -> Result<ExecOutput, VmsError> {
        self.record(format!("exec {name} {}", call.argv.join(" ")));
        self.with(name, |_| {
            let mut stdout = call.argv.join(" ").into_bytes();
            stdout.extend_from_slice(&call.stdin);
            Ok(ExecOutput {
                stdout,
                stderr: call.env.join(",").into_bytes(),
                status: Some(kiln_fleet::ExecStatus::Exited(call.argv.len() as i32)),
                truncated: false,
            })
        })
    }
}

/// A server around a fresh fake, with a catalog holding the recipe `rescue`.
struct Env {
    dir: tempfile::TempDir,
    fake: Arc<FakeVms>,
    app: AppState,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tmp");
        let recipes = dir.path().join("recipes");
        std::fs::create_dir_all(recipes.join("rescue")).expect("mkdir");
        std::fs::write(recipes.join("rescue/kiln.toml"), "name = \"rescue\"\n").expect("w");
        let catalog = Catalog {
            recipe_roots: vec![recipes],
            image_roots: vec![dir.path().join("images")],
        };
        let fake = Arc::new(FakeVms::new(dir.path().join("sockets")));
        let app = Arc::new(App::new(
            fake.clone(),
            catalog,
            TOKEN.to_string(),
            dir.path().join("cache"),
        ));
        Env { dir, fake, app }
    }

    fn recipe_dir(&self) -> String {
        self.dir.path().join("recipes/rescue").display().to_string()
    }

    /// A stored spec of VM `name` as `kiln run` would leave it.
    fn spec(&self, name: &str) -> VmConfig {
        VmConfig {
            name: Some(name.into()),
            image: Some(self.recipe_dir()),
            ..VmConfig::default()
        }
    }

    /// Send `req` through the whole router (guard included): status and JSON body (`Null`
    /// when empty).
    async fn send(&self, req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let resp = super::router(self.app.clone())
            .oneshot(req)
            .await
            .expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON body")
        };
        (status, json)
    }

    /// `send` of an authenticated request.
    async fn call(
        &self,
        method: &str,
        uri: &str,
        body: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        self.send(request(method, uri, body, Some(TOKEN))).await
    }

    /// Wait (up to 10 s, polling) until the fake recorded `call`.
    async fn wait_for_call(&self, call: &str) {
        let fake = self.fake.clone();
        wait_until(call, || fake.calls().iter().any(|c| c == call)).await;
    }

    /// Wait until no create of this server is in flight, then refresh the table.
    async fn settle(&self) {
        let app = self.app.clone();
        wait_until("the pending creates to finish", || {
            app.pending().values().all(|p| p.error.is_some())
        })
        .await;
        self.app.refresh().await.expect("refresh");
    }
}

/// A request to the server with the bearer `token`, and a JSON `body`.
fn request(method: &str, uri: &str, body: Option<&str>, token: Option<&str>) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "127.0.0.1:7070");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    match body {
        Some(json) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json.to_string())),
        None => b.body(Body::empty()),
    }
    .expect("request")
}

/// Poll `cond` every few ms until it holds; panic after 10 s.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A host port nobody listens on (right now).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("(no error code)")
}

#[tokio::test]
async fn create_boots_the_whole_requested_spec() {
    let env = Env::new();
    let port = free_port();
    let body = format!(
        r#"{{"recipe":"rescue","restart":"on-failure","vports":["data"],
            "ports":["{port}:80"],"memory":64,"nets":["back"]}}"#
    );
    let (status, info) = env.call("POST", "/api/vms", Some(&body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{info}");
    assert_eq!(info["name"], "rescue");
    assert_eq!(info["state"], "starting");
    assert_eq!(info["restart"], "on-failure");
    env.wait_for_call("create rescue").await;
    assert_eq!(env.fake.calls(), ["create rescue"]);
    let expected = VmConfig {
        name: Some("rescue".into()),
        image: Some(env.recipe_dir()),
        memory: Some(64),
        ports: vec![format!("{port}:80").parse().expect("forward")],
        restart: Some(Restart::OnFailure),
        vports: Some(Vports::Names(vec!["data".into()])),
        nets: vec!["back".into()],
        ..VmConfig::default()
    };
    assert_eq!(env.fake.created(), [expected]);
    // Once the create returned, the VM is listed as running.
    env.settle().await;
    let (status, info) = env.call("GET", "/api/vms/rescue", None).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["state"], "running");
    assert_eq!(info["memory"], 64);
    assert_eq!(info["ports"][0], format!("127.0.0.1:{port}:80/tcp"));
    // A second create of the same name is refused without reaching the fleet.
    let (status, err) = env
        .call("POST", "/api/vms", Some(r#"{"recipe":"rescue"}"#))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(code(&err), "name_taken");
    assert_eq!(env.fake.calls(), ["create rescue"]);
}

#[tokio::test]
async fn create_with_an_unknown_key_is_bad_body() {
    let env = Env::new();
    for body in [
        r#"{"recipe":"rescue","bogus":1}"#,
        r#"{"recipe":"rescue","cpus":"two"}"#,
        r#"not json"#,
    ] {
        let (status, err) = env.call("POST", "/api/vms", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert_eq!(code(&err), "bad_body", "{body}");
    }
    assert!(env.fake.calls().is_empty(), "{:?}", env.fake.calls());
    assert!(env.fake.created().is_empty());
}

#[tokio::test]
async fn create_with_a_refused_value_is_invalid_request() {
    let env = Env::new();
    for body in [
        r#"{"recipe":"rescue","restart":"sometimes","memory":1}"#,
        r#"{"recipe":"rescue","restart":"sometimes"}"#,
        r#"{"recipe":"rescue","memory":1}"#,
        r#"{"recipe":"rescue","cpus":0}"#,
        r#"{"recipe":"rescue","name":"Bad/Name"}"#,
        r#"{"recipe":"rescue","nets":["Bad Net"]}"#,
    ] {
        let (status, err) = env.call("POST", "/api/vms", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert_eq!(code(&err), "invalid_request", "{body}");
    }
    let (status, err) = env
        .call("POST", "/api/vms", Some(r#"{"recipe":"nosuch"}"#))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert_eq!(code(&err), "recipe_not_found");
    assert!(env.fake.calls().is_empty(), "{:?}", env.fake.calls());
}

#[tokio::test]
async fn requests_without_the_right_token_are_refused() {
    let env = Env::new();
    env.fake.seed(env.spec("web"), VmState::Running);
    let (status, err) = env
        .send(request(
            "POST",
            "/api/vms",
            Some(r#"{"recipe":"rescue"}"#),
            None,
        ))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    assert_eq!(code(&err), "missing_token");
    let (status, err) = env
        .send(request("POST", "/api/vms/web/stop", None, Some("wrong")))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    assert_eq!(code(&err), "bad_token");
    let (status, err) = env.send(request("GET", "/api/vms", None, None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    assert_eq!(code(&err), "missing_token");
    // The fleet was never asked anything.
    assert!(env.fake.calls.lock().expect("calls").is_empty());
    assert!(env.fake.created().is_empty());
    assert_eq!(env.fake.state_of("web"), Some(VmState::Running));
}

#[tokio::test]
async fn a_cookie_change_from_another_origin_is_refused() {
    let env = Env::new();
    env.fake.seed(env.spec("web"), VmState::Running);
    env.app.refresh().await.expect("refresh");
    let cookie_stop = |origin: &str| {
        Request::builder()
            .method("POST")
            .uri("/api/vms/web/stop")
            .header(header::HOST, "127.0.0.1:7070")
            .header(header::ORIGIN, origin)
            .header(header::COOKIE, format!("kiln_token={TOKEN}"))
            .body(Body::empty())
            .expect("request")
    };
    let (status, err) = env.send(cookie_stop("http://evil.example")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(code(&err), "bad_origin");
    assert!(env.fake.calls().is_empty(), "{:?}", env.fake.calls());
    let (status, info) = env.send(cookie_stop("http://127.0.0.1:7070")).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(env.fake.calls(), ["stop web"]);
}

#[tokio::test]
async fn list_shows_the_fleets_rows() {
    let env = Env::new();
    let (status, list) = env.call("GET", "/api/vms", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, serde_json::json!([]));
    let mut web = env.spec("web");
    web.cpus = Some(2);
    web.memory = Some(128);
    web.restart = Some(Restart::Always);
    env.fake.seed(web, VmState::Running);
    env.fake.seed(env.spec("db"), VmState::Exited);
    env.app.refresh().await.expect("refresh");
    let (status, list) = env.call("GET", "/api/vms", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let rows = list.as_array().expect("an array");
    let names: Vec<&str> = rows.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["db", "web"]);
    assert_eq!(rows[0]["state"], "exited");
    assert_eq!(rows[0]["pid"], serde_json::Value::Null);
    assert_eq!(rows[0]["cpus"], 1);
    assert_eq!(rows[0]["memory"], 64);
    assert_eq!(rows[1]["state"], "running");
    assert!(rows[1]["pid"].is_u64());
    assert_eq!(rows[1]["cpus"], 2);
    assert_eq!(rows[1]["memory"], 128);
    assert_eq!(rows[1]["restart"], "always");
    assert_eq!(rows[1]["image"], env.recipe_dir());
    assert_eq!(rows[1]["accel"], "tcg");
    // Reads are served from the table: no call but the refresh's list.
    assert!(env.fake.calls().is_empty(), "{:?}", env.fake.calls());
}

#[tokio::test]
async fn start_boots_the_whole_stored_spec() {
    let env = Env::new();
    let port = free_port();
    let share = env.dir.path().join("share");
    std::fs::create_dir_all(&share).expect("mkdir");
    let stored = VmConfig {
        cpus: Some(2),
        memory: Some(96),
        append: Some("quiet".into()),
        ports: vec![format!("{port}:80").parse().expect("forward")],
        share: Some(
            format!("{}:/mnt/data:ro", share.display())
                .parse()
                .expect("share"),
        ),
        drive: Some("/srv/disk.img:ro".parse().expect("drive")),
        restart: Some(Restart::Always),
        vports: Some(Vports::Names(vec!["data".into(), "log".into()])),
        readonly_root: true,
        ready_timeout: Some(30),
        ..env.spec("web")
    };
    env.fake.seed(stored.clone(), VmState::Exited);
    let (status, info) = env.call("POST", "/api/vms/web/start", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{info}");
    assert_eq!(info["name"], "web");
    assert_eq!(info["state"], "starting", "{info}");
    env.wait_for_call("create web").await;
    assert_eq!(env.fake.calls(), ["spec web", "create web"]);
    assert_eq!(env.fake.created(), [stored]);
    env.settle().await;
    assert_eq!(env.fake.state_of("web"), Some(VmState::Running));
    // Starting it again is refused: it runs.
    let (status, err) = env.call("POST", "/api/vms/web/start", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(code(&err), "vm_running");
    assert_eq!(env.fake.calls(), ["spec web", "create web"]);
}

#[tokio::test]
async fn stop_needs_a_running_vm() {
    let env = Env::new();
    env.fake.seed(env.spec("web"), VmState::Running);
    let (status, info) = env.call("POST", "/api/vms/web/stop", None).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["state"], "exited");
    assert_eq!(info["pid"], serde_json::Value::Null);
    assert_eq!(env.fake.calls(), ["stop web"]);
    assert_eq!(env.fake.state_of("web"), Some(VmState::Exited));
    for op in ["stop", "kill"] {
        let (status, err) = env.call("POST", &format!("/api/vms/web/{op}"), None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{op}: {err}");
        assert_eq!(code(&err), "vm_not_running", "{op}");
    }
    assert_eq!(env.fake.calls(), ["stop web"]);
}

#[tokio::test]
async fn kill_ends_a_running_vm() {
    let env = Env::new();
    env.fake.seed(env.spec("web"), VmState::Running);
    let (status, info) = env.call("POST", "/api/vms/web/kill", None).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["state"], "exited");
    assert_eq!(env.fake.calls(), ["kill web"]);
}

#[tokio::test]
async fn remove_needs_a_stopped_vm() {
    let env = Env::new();
    env.fake.seed(env.spec("web"), VmState::Running);
    let (status, err) = env.call("DELETE", "/api/vms/web", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(code(&err), "vm_running");
    assert!(env.fake.calls().is_empty(), "{:?}", env.fake.calls());
    let (status, _) = env.call("POST", "/api/vms/web/stop", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = env.call("DELETE", "/api/vms/web", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(body, serde_json::Value::Null);
    assert_eq!(env.fake.calls(), ["stop web", "remove web"]);
    assert_eq!(env.fake.state_of("web"), None);
    let (status, err) = env.call("GET", "/api/vms/web", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert_eq!(code(&err), "vm_not_found");
}

#[tokio::test]
async fn unknown_vms_are_not_found() {
    let env = Env::new();
    env.fake.seed(env.spec("web"), VmState::Running);
    env.app.refresh().await.expect("refresh");
    for (method, uri) in [
        ("GET", "/api/vms/nosuch"),
        ("GET", "/api/vms/nosuch/logs"),
        ("POST", "/api/vms/nosuch/start"),
        ("POST", "/api/vms/nosuch/stop"),
        ("POST", "/api/vms/nosuch/kill"),
        ("DELETE", "/api/vms/nosuch"),
        // Not a valid name: never looked up.
        ("GET", "/api/vms/No..Such"),
    ] {
        let (status, err) = env.call(method, uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {err}");
        assert_eq!(code(&err), "vm_not_found", "{method} {uri}");
    }
    assert!(env.fake.calls().is_empty(), "{:?}", env.fake.calls());
    let (status, err) = env.call("GET", "/api/nosuch", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert_eq!(code(&err), "not_found");
}

#[tokio::test]
async fn logs_come_from_the_fleet() {
    let env = Env::new();
    env.fake.seed(env.spec("web"), VmState::Running);
    env.app.refresh().await.expect("refresh");
    let (status, body) = env.call("GET", "/api/vms/web/logs?bytes=100", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "web");
    assert_eq!(body["log"], LOG);
    assert_eq!(env.fake.calls(), ["logs web"]);
}

#[tokio::test]
async fn a_failed_create_is_listed_and_removed_without_the_fleet() {
    let env = Env::new();
    *env.fake.fail_create.lock().expect("fail") = Some("QEMU said no".into());
    let (status, info) = env
        .call(
            "POST",
            "/api/vms",
            Some(r#"{"recipe":"rescue","name":"web"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{info}");
    env.wait_for_call("create web").await;
    let app = env.app.clone();
    wait_until("the create's failure", || {
        app.pending().get("web").is_some_and(|p| p.error.is_some())
    })
    .await;
    env.app.refresh().await.expect("refresh");
    let (status, info) = env.call("GET", "/api/vms/web", None).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["state"], "failed");
    assert_eq!(info["error"], "QEMU said no");
    // The fleet has no record of it: the removal only forgets the failure.
    let (status, body) = env.call("DELETE", "/api/vms/web", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(env.fake.calls(), ["create web"]);
    let (status, _) = env.call("GET", "/api/vms/web", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn exec_runs_a_command_in_a_running_vm() {
    let env = Env::new();
    env.fake.seed(env.spec("web"), VmState::Running);
    let (status, out) = env
        .call(
            "POST",
            "/api/vms/web/exec",
            Some(r#"{"argv": ["wc", "-c"], "stdin": "data", "env": ["A=1"]}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["stdout"], "wc -cdata");
    assert_eq!(out["stderr"], "A=1");
    assert_eq!(out["exit_code"], 2);
    assert_eq!(out["signal"], serde_json::Value::Null);
    assert_eq!(out["timed_out"], false);
    assert_eq!(env.fake.calls(), ["exec web wc -c"]);
}

#[tokio::test]
async fn exec_refusals() {
    let env = Env::new();
    env.fake.seed(env.spec("web"), VmState::Running);
    env.fake.seed(env.spec("off"), VmState::Exited);
    for (uri, body, want) in [
        ("/api/vms/web/exec", "{}", "bad_body"),
        ("/api/vms/web/exec", r#"{"argv": "ls"}"#, "bad_body"),
        (
            "/api/vms/web/exec",
            r#"{"argv": ["ls"], "tty": true}"#,
            "bad_body",
        ),
        ("/api/vms/web/exec", r#"{"argv": []}"#, "invalid_request"),
        (
            "/api/vms/web/exec",
            r#"{"argv": ["ls"], "env": ["X"]}"#,
            "invalid_request",
        ),
        (
            "/api/vms/web/exec",
            r#"{"argv": ["ls"], "timeout": 0}"#,
            "invalid_request",
        ),
        ("/api/vms/off/exec", r#"{"argv": ["ls"]}"#, "vm_not_running"),
        (
            "/api/vms/nosuch/exec",
            r#"{"argv": ["ls"]}"#,
            "vm_not_found",
        ),
    ] {
        let (_, err) = env.call("POST", uri, Some(body)).await;
        assert_eq!(code(&err), want, "{uri} {body}: {err}");
    }
    assert!(env.fake.calls().is_empty(), "{:?}", env.fake.calls());
    // Without the token: refused before anything runs.
    let (status, _) = env
        .send(request(
            "POST",
            "/api/vms/web/exec",
            Some(r#"{"argv": ["ls"]}"#),
            None,
        ))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(env.fake.calls().is_empty());
}
