//! The HTTP API under `/api/`: the route table (also what the OpenAPI description is checked
//! against), the handlers, and the live endpoints (server-sent events for the VM table, a
//! WebSocket for a VM's console).

use super::catalog::{valid_name, Catalog};
use super::error::ApiError;
use super::state::{App, Pending, VmInfo};
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, MethodRouter};
use axum::Json;
use futures_util::{SinkExt, StreamExt};
use kiln_fleet::VmConfig;
use serde::Deserialize;
use std::sync::Arc;

/// The handlers' state.
pub type AppState = Arc<App>;

/// Every API route: method, path (OpenAPI syntax), handler. The router is built from this table
/// and a test checks the OpenAPI description against it.
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/api/vms", routing::get(list_vms)),
        (Method::POST, "/api/vms", routing::post(create_vm)),
        (Method::GET, "/api/vms/{name}", routing::get(get_vm)),
        (
            Method::DELETE,
            "/api/vms/{name}",
            routing::delete(remove_vm),
        ),
        (
            Method::POST,
            "/api/vms/{name}/start",
            routing::post(start_vm),
        ),
        (Method::POST, "/api/vms/{name}/stop", routing::post(stop_vm)),
        (Method::POST, "/api/vms/{name}/kill", routing::post(kill_vm)),
        (Method::GET, "/api/vms/{name}/logs", routing::get(logs)),
        (
            Method::GET,
            "/api/vms/{name}/console",
            routing::get(console),
        ),
        (Method::POST, "/api/vms/{name}/exec", routing::post(exec_vm)),
        (Method::GET, "/api/events", routing::get(events)),
        (Method::GET, "/api/recipes", routing::get(recipes)),
        (Method::GET, "/api/images", routing::get(images)),
        (Method::GET, "/api/host", routing::get(host)),
        (
            Method::GET,
            "/api/openapi.json",
            routing::get(|| async { Json(super::openapi::document()) }),
        ),
    ]
}

type ApiResult<T> = Result<T, ApiError>;

/// States in which the lifecycle is looking after a running (or about to run) VM.
pub fn is_active(state: &str) -> bool {
    matches!(state, "starting" | "running" | "restarting" | "stopping")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, super::vms::VmsError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new("internal", e.to_string()))?
        .map_err(ApiError::from)
}

fn check_name(name: &str) -> ApiResult<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::no_vm(name))
    }
}

/// The VM `name` from a fresh table, or `vm_not_found`.
async fn find(app: &AppState, name: &str) -> ApiResult<VmInfo> {
    check_name(name)?;
    let table = app.refresh().await?;
    table
        .iter()
        .find(|v| v.name == name)
        .cloned()
        .ok_or_else(|| ApiError::no_vm(name))
}

async fn list_vms(State(app): State<AppState>) -> Json<Vec<VmInfo>> {
    // The table is kept fresh by the sampler and by every change made through the API.
    let table = app.table.borrow().clone();
    Json(table.as_ref().clone())
}

/// The VM `name` from the published table (reads never spawn the lifecycle; the table is
/// refreshed every 2 s and after every change).
fn find_cached(app: &AppState, name: &str) -> ApiResult<VmInfo> {
    check_name(name)?;
    let table = app.table.borrow().clone();
    table
        .iter()
        .find(|v| v.name == name)
        .cloned()
        .ok_or_else(|| ApiError::no_vm(name))
}

async fn get_vm(State(app): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<VmInfo>> {
    Ok(Json(find_cached(&app, &name)?))
}

/// The body of `POST /api/vms`: `recipe` or `image` (a name from `GET /api/recipes` or
/// `GET /api/images`) and any VM setting under the keys of vm.toml — the same [`VmConfig`] the
/// CLI's flags fill, parsed into its types here, where it enters.
#[derive(Debug)]
pub struct CreateRequest {
    /// A recipe's name.
    pub recipe: Option<String>,
    /// A built image's name.
    pub image: Option<String>,
    /// The VM's settings (`image` is set from the catalog, not from the body).
    pub spec: VmConfig,
}

impl CreateRequest {
    /// Parse a body: not JSON, not an object, an unknown key or a value of the wrong type is
    /// `bad_body`; a value of the right type that Kiln refuses is `invalid_request`.
    pub fn parse(body: &[u8]) -> ApiResult<CreateRequest> {
        let bad = |m: String| ApiError::new("bad_body", m);
        let mut obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
        let mut name_of = |key: &str| -> ApiResult<Option<String>> {
            match obj.remove(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s)),
                Some(v) => Err(bad(format!("{key}: expected a name, got {v}"))),
            }
        };
        let recipe = name_of("recipe")?;
        let image = name_of("image")?;
        let spec: VmConfig =
            serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| {
                let m = e.to_string();
                if m.starts_with("unknown field") || m.starts_with("invalid type") {
                    bad(m)
                } else {
                    ApiError::new("invalid_request", m)
                }
            })?;
        Ok(CreateRequest {
            recipe,
            image,
            spec,
        })
    }
}

/// A request's body, mapping a failure to read it to `bad_body` / `body_too_large`.
fn read_body(body: Result<Bytes, axum::extract::rejection::BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new("body_too_large", r.body_text())
        } else {
            ApiError::new("bad_body", r.body_text())
        }
    })
}

/// Check a create request and resolve its recipe or image inside the catalog: the spec to
/// boot, name and image set.
pub fn validate(req: &CreateRequest, catalog: &Catalog) -> ApiResult<VmConfig> {
    let invalid = |m: String| ApiError::new("invalid_request", m);
    let (target, default_name) = match (&req.recipe, &req.image) {
        (Some(r), None) => {
            if !valid_name(r) {
                return Err(invalid(format!(
                    "recipe: `{r}` is not a recipe name ([a-z0-9][a-z0-9_-]*)"
                )));
            }
            let dir = catalog.recipe(r).ok_or_else(|| {
                ApiError::new("recipe_not_found", format!("no recipe named `{r}`"))
            })?;
            (dir, r.clone())
        }
        (None, Some(i)) => {
            if !valid_name(i) {
                return Err(invalid(format!(
                    "image: `{i}` is not an image name ([a-z0-9][a-z0-9_-]*)"
                )));
            }
            let dir = catalog
                .image(i)
                .ok_or_else(|| ApiError::new("image_not_found", format!("no image named `{i}`")))?;
            let name = kiln_bake::load_image(&dir)
                .map(|m| m.name)
                .unwrap_or_else(|_| i.clone());
            (dir, name)
        }
        _ => return Err(invalid("give exactly one of `recipe` and `image`".into())),
    };
    let mut spec = req.spec.clone();
    spec.name.get_or_insert(default_name);
    spec.image = Some(target.display().to_string());
    spec.validate()
        .map_err(|(key, msg)| invalid(format!("{key}: {msg}")))?;
    // Host paths in a request are the server's: absolute, without `..`.
    let host_paths = [
        ("drive", spec.drive.as_ref().map(|d| d.path.as_path())),
        ("share", spec.share.as_ref().map(|s| s.host.as_path())),
        ("from", spec.from.as_deref()),
    ];
    for (key, path) in host_paths {
        if let Some(p) = path {
            if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(invalid(format!(
                    "{key}: `{}` must be an absolute host path without `..`",
                    p.display()
                )));
            }
        }
    }
    if let Some(sh) = &spec.share {
        if !sh.host.is_dir() {
            return Err(invalid(format!(
                "share: `{}` is not an existing host folder",
                sh.host.display()
            )));
        }
    }
    Ok(spec)
}

/// Register `launch` as pending and boot it in the background.
async fn launch(app: &AppState, launch: VmConfig) -> ApiResult<VmInfo> {
    kiln_vm::ports::check_free(&launch.ports)
        .map_err(|e| ApiError::new("port_in_use", e.to_string()))?;
    let id = app.new_id();
    let name = launch.name.clone().unwrap_or_default();
    {
        let mut pending = app.pending();
        if pending.get(&name).is_some_and(|p| p.error.is_none()) {
            return Err(ApiError::new(
                "name_taken",
                format!("a VM named `{name}` is starting"),
            ));
        }
        pending.insert(
            name.clone(),
            Pending {
                launch: launch.clone(),
                error: None,
                id,
            },
        );
    }
    let table = app.refresh().await?;
    let info = table
        .iter()
        .find(|v| v.name == name)
        .cloned()
        .ok_or_else(|| ApiError::new("internal", "the new VM is not in the table"))?;
    let bg = app.clone();
    tokio::spawn(async move {
        let vms = bg.vms.clone();
        let l = launch.clone();
        let result = tokio::task::spawn_blocking(move || vms.create(&l)).await;
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        {
            let mut pending = bg.pending();
            if pending.get(&name).is_some_and(|p| p.id == id) {
                match &error {
                    None => {
                        pending.remove(&name);
                    }
                    Some(msg) => {
                        tracing::warn!("creating {name}: {msg}");
                        if let Some(p) = pending.get_mut(&name) {
                            p.error = Some(msg.clone());
                        }
                    }
                }
            }
        }
        let _ = bg.refresh().await;
    });
    Ok(info)
}

async fn create_vm(
    State(app): State<AppState>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let req = CreateRequest::parse(&read_body(body)?)?;
    let launch_req = validate(&req, &app.catalog)?;
    let table = app.refresh().await?;
    if let Some(v) = table
        .iter()
        .find(|v| Some(&v.name) == launch_req.name.as_ref())
    {
        if v.state != "failed" {
            return Err(ApiError::new(
                "name_taken",
                format!("a VM named `{}` exists ({})", v.name, v.state),
            ));
        }
        // A failed create's leftovers make way for the new one.
        app.pending().remove(&v.name);
    }
    let info = launch(&app, launch_req).await?;
    let location = format!("/api/vms/{}", info.name);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(info),
    )
        .into_response())
}

async fn start_vm(State(app): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    let v = find(&app, &name).await?;
    let again = {
        let pending = app.pending();
        pending.get(&name).map(|p| p.launch.clone())
    };
    let launch_req = match (v.state.as_str(), again) {
        (s, _) if is_active(s) && s != "running" => {
            return Err(ApiError::new("vm_busy", format!("`{name}` is {s}")))
        }
        ("running", _) => {
            return Err(ApiError::new(
                "vm_running",
                format!("`{name}` is already running"),
            ))
        }
        (_, Some(l)) => l,
        // Its whole stored spec: everything it was created with.
        _ => {
            let vms = app.vms.clone();
            let n = name.clone();
            blocking(move || vms.spec(&n)).await?
        }
    };
    app.pending().remove(&name);
    let info = launch(&app, launch_req).await?;
    Ok((StatusCode::ACCEPTED, Json(info)).into_response())
}

async fn stop_or_kill(app: AppState, name: String, kill: bool) -> ApiResult<Json<VmInfo>> {
    let v = find(&app, &name).await?;
    if !is_active(&v.state) {
        return Err(ApiError::new(
            "vm_not_running",
            format!("`{name}` is {}", v.state),
        ));
    }
    // A stop during boot is the user's choice, not a failed create.
    app.pending().remove(&name);
    let vms = app.vms.clone();
    let n = name.clone();
    blocking(move || if kill { vms.kill(&n) } else { vms.stop(&n) }).await?;
    let table = app.refresh().await?;
    let after = table
        .iter()
        .find(|v| v.name == name)
        .cloned()
        .unwrap_or(VmInfo {
            state: "stopped".into(),
            pid: None,
            cpu_percent: None,
            rss_mib: None,
            ..v
        });
    Ok(Json(after))
}

async fn stop_vm(State(app): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<VmInfo>> {
    stop_or_kill(app, name, false).await
}

async fn kill_vm(State(app): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<VmInfo>> {
    stop_or_kill(app, name, true).await
}

/// The body of `POST /api/vms/NAME/exec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    argv: Vec<String>,
    #[serde(default)]
    stdin: String,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    timeout: Option<u64>,
}

/// The default and largest `timeout` of an exec, in seconds.
const EXEC_TIMEOUT: (u64, u64) = (60, 3600);

/// Parse an exec body: not JSON or the wrong shape is `bad_body`, an empty argv, a setting
/// that is not `KEY=VALUE` or a timeout out of range `invalid_request`.
pub fn parse_exec(body: &[u8]) -> ApiResult<super::vms::ExecCall> {
    let b: ExecBody =
        serde_json::from_slice(body).map_err(|e| ApiError::new("bad_body", e.to_string()))?;
    let invalid = |m: String| ApiError::new("invalid_request", m);
    if b.argv.first().filter(|a| !a.is_empty()).is_none() {
        return Err(invalid(
            "argv: give the command and its arguments, e.g. [\"cat\", \"/etc/hostname\"]".into(),
        ));
    }
    if let Some(kv) = b
        .env
        .iter()
        .find(|kv| !kv.contains('=') || kv.starts_with('='))
    {
        return Err(invalid(format!("env: `{kv}` is not KEY=VALUE")));
    }
    let timeout = b.timeout.unwrap_or(EXEC_TIMEOUT.0);
    if !(1..=EXEC_TIMEOUT.1).contains(&timeout) {
        return Err(invalid(format!(
            "timeout: {timeout} is not 1 to {} seconds",
            EXEC_TIMEOUT.1
        )));
    }
    Ok(super::vms::ExecCall {
        argv: b.argv,
        env: b.env,
        cwd: b.cwd,
        stdin: b.stdin.into_bytes(),
        timeout: std::time::Duration::from_secs(timeout),
    })
}

async fn exec_vm(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let call = parse_exec(&read_body(body)?)?;
    let v = find(&app, &name).await?;
    if v.state != "running" {
        return Err(ApiError::new(
            "vm_not_running",
            format!("`{name}` is {}", v.state),
        ));
    }
    let vms = app.vms.clone();
    let out = blocking(move || vms.exec(&name, &call)).await?;
    let (exit_code, signal) = match out.status {
        Some(kiln_fleet::ExecStatus::Exited(c)) => (Some(c), None),
        Some(kiln_fleet::ExecStatus::Signaled(s)) => (Some(128 + s), Some(s)),
        None => (None, None),
    };
    Ok(Json(serde_json::json!({
        "stdout": String::from_utf8_lossy(&out.stdout),
        "stderr": String::from_utf8_lossy(&out.stderr),
        "exit_code": exit_code,
        "signal": signal,
        "timed_out": out.status.is_none(),
        "truncated": out.truncated,
    })))
}

async fn remove_vm(State(app): State<AppState>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let v = find(&app, &name).await?;
    match v.state.as_str() {
        "running" => {
            return Err(ApiError::new(
                "vm_running",
                format!("`{name}` is running; stop it first"),
            ))
        }
        s if is_active(s) => return Err(ApiError::new("vm_busy", format!("`{name}` is {s}"))),
        _ => {}
    }
    let was_pending = app.pending().remove(&name).is_some();
    if v.pid.is_some() || !was_pending {
        let vms = app.vms.clone();
        let n = name.clone();
        match blocking(move || vms.remove(&n)).await {
            Ok(()) => {}
            // A failed create may have left no record behind.
            Err(e) if was_pending && e.code == "vm_not_found" => {}
            Err(e) => return Err(e),
        }
    }
    app.refresh().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct LogsQuery {
    bytes: Option<u64>,
}

async fn logs(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let v = find_cached(&app, &name)?;
    refuse_foreground(&v)?;
    let max = q.bytes.unwrap_or(64 * 1024).clamp(1, 4 << 20);
    let vms = app.vms.clone();
    let n = name.clone();
    let log = match blocking(move || vms.logs(&n, max)).await {
        Ok(l) => l,
        Err(e) if e.code == "vm_not_found" && v.state == "failed" => String::new(),
        Err(e) => return Err(e),
    };
    Ok(Json(
        serde_json::json!({"name": name, "log": log, "error": v.error}),
    ))
}

/// A foreground VM's console is the terminal of its `kiln run`: no log, no socket here.
fn refuse_foreground(v: &VmInfo) -> ApiResult<()> {
    if v.foreground {
        return Err(ApiError::new(
            "unsupported",
            format!(
                "`{}` runs in the foreground of a `kiln run`: its console is that terminal",
                v.name
            ),
        ));
    }
    Ok(())
}

async fn console(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let v = find(&app, &name).await?;
    refuse_foreground(&v)?;
    let ws = ws.map_err(|r| {
        ApiError::new(
            "bad_body",
            format!("a WebSocket upgrade is needed: {}", r.body_text()),
        )
    })?;
    if !is_active(&v.state) {
        return Err(ApiError::new(
            "vm_not_running",
            format!("`{name}` is {}", v.state),
        ));
    }
    if v.foreground {
        return Err(ApiError::new(
            "unsupported",
            format!(
                "`{name}` runs in the foreground of a `kiln run`: its console is that terminal"
            ),
        ));
    }
    let socket = app.vms.console_socket_path(&name);
    // The lifecycle's console socket replays the recent output to each new connection.
    let viewer = app.consoles.attach(&name, &socket).await.map_err(|e| {
        ApiError::new(
            "vm_not_running",
            format!("`{name}`'s console is not reachable ({e})"),
        )
    })?;
    Ok(ws.on_upgrade(move |sock| pump(sock, viewer)))
}

/// Copy console output to the browser and keystrokes to the console until either side closes.
async fn pump(sock: WebSocket, mut viewer: super::console::Viewer) {
    let (mut tx, mut rx) = sock.split();
    if !viewer.history.is_empty()
        && tx
            .send(Message::Binary(std::mem::take(&mut viewer.history).into()))
            .await
            .is_err()
    {
        return;
    }
    let input = viewer.input.clone();
    let mut to_guest = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            let bytes = match msg {
                Message::Text(t) => t.as_str().as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if input.send(bytes).await.is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            out = viewer.output.recv() => match out {
                Ok(bytes) => {
                    if tx.send(Message::Binary(bytes.into())).await.is_err() {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    let _ = tx.send(Message::Binary(b"\r\n[console closed]\r\n".to_vec().into())).await;
                    break;
                }
            },
            _ = &mut to_guest => break,
        }
    }
    to_guest.abort();
    let _ = tx.close().await;
}

async fn events(
    State(app): State<AppState>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let mut rx = app.table.subscribe();
    rx.mark_changed();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let table = rx.borrow_and_update().clone();
        let ev = Event::default()
            .event("vms")
            .json_data(&*table)
            .unwrap_or_else(|_| Event::default().comment("unserialisable"));
        Some((Ok(ev), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn recipes(State(app): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let catalog = app.catalog.clone();
    let list = tokio::task::spawn_blocking(move || catalog.recipes())
        .await
        .map_err(|e| ApiError::new("internal", e.to_string()))?;
    Ok(Json(serde_json::to_value(list).unwrap_or_default()))
}

async fn images(State(app): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let catalog = app.catalog.clone();
    let list = tokio::task::spawn_blocking(move || catalog.images())
        .await
        .map_err(|e| ApiError::new("internal", e.to_string()))?;
    Ok(Json(serde_json::to_value(list).unwrap_or_default()))
}

async fn host(State(app): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let cache = app.cache_root.clone();
    let info = tokio::task::spawn_blocking(move || super::host::info(&cache))
        .await
        .map_err(|e| ApiError::new("internal", e.to_string()))?;
    Ok(Json(info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let d = tempfile::tempdir().expect("tmp");
        let r = d.path().join("recipes");
        std::fs::create_dir_all(r.join("rescue")).expect("mkdir");
        std::fs::write(r.join("rescue/kiln.toml"), "name = \"rescue\"\n").expect("w");
        let c = Catalog {
            recipe_roots: vec![r],
            image_roots: vec![d.path().join("images")],
        };
        (d, c)
    }

    fn req(json: &str) -> CreateRequest {
        CreateRequest::parse(json.as_bytes()).expect("request")
    }

    #[test]
    fn validation() {
        let (_d, c) = catalog();
        let l = validate(
            &req(
                r#"{"recipe":"rescue","cpus":2,"memory":64,"ports":["8080:80"],
                     "restart":"on-failure","vports":["data"],"drive":"/srv/d.img:ro"}"#,
            ),
            &c,
        )
        .expect("valid");
        assert_eq!(l.name.as_deref(), Some("rescue"));
        assert_eq!(l.ports[0].to_string(), "127.0.0.1:8080:80/tcp");
        assert_eq!(l.restart, Some(kiln_fleet::Restart::OnFailure));
        assert!(l.drive.as_ref().is_some_and(|d| d.readonly));
        assert!(l
            .image
            .as_deref()
            .is_some_and(|i| i.ends_with("recipes/rescue")));
        let code = |j: &str| {
            CreateRequest::parse(j.as_bytes())
                .and_then(|r| validate(&r, &c))
                .err()
                .map(|e| e.code)
        };
        assert_eq!(code(r#"{"recipe":"../etc"}"#), Some("invalid_request"));
        assert_eq!(code(r#"{"recipe":"nope"}"#), Some("recipe_not_found"));
        assert_eq!(code(r#"{"image":"nope"}"#), Some("image_not_found"));
        assert_eq!(code(r#"{"image":"/etc"}"#), Some("invalid_request"));
        assert_eq!(code(r#"{}"#), Some("invalid_request"));
        assert_eq!(
            code(r#"{"recipe":"rescue","image":"x"}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(r#"{"recipe":"rescue","name":"Bad/Name"}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(r#"{"recipe":"rescue","cpus":0}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(r#"{"recipe":"rescue","memory":8}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(r#"{"recipe":"rescue","ports":["x:80"]}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(r#"{"recipe":"rescue","share":"/nonexistent:/mnt"}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(r#"{"recipe":"rescue","drive":"rel.img"}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(r#"{"recipe":"rescue","drive":"/a/../b"}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(r#"{"recipe":"rescue","restart":"sometimes"}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(r#"{"recipe":"rescue","ready_timeout":0}"#),
            Some("invalid_request")
        );
        assert_eq!(code(r#"{"recipe":"a","bogus":1}"#), Some("bad_body"));
        assert_eq!(code(r#"{"recipe":"a","cpus":"two"}"#), Some("bad_body"));
        assert_eq!(code(r#"{"recipe":5}"#), Some("bad_body"));
        assert_eq!(code(r#"[1]"#), Some("bad_body"));
    }
}
