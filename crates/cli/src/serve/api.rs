//! The HTTP API under `/api/`: the route table (also what the OpenAPI description is checked
//! against), the handlers, and the live endpoints (server-sent events for the VM table, a
//! WebSocket for a VM's console).

use super::catalog::{valid_name, Catalog};
use super::error::ApiError;
use super::state::{App, Pending, VmInfo};
use super::vms::Launch;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, MethodRouter};
use axum::Json;
use futures_util::{SinkExt, StreamExt};
use kiln_recipe::PortForward;
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

/// The body of `POST /api/vms`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// A recipe's name (one of `GET /api/recipes`).
    pub recipe: Option<String>,
    /// A built image's name (one of `GET /api/images`).
    pub image: Option<String>,
    /// The VM's name (default: the recipe's).
    pub name: Option<String>,
    /// vCPUs, 1–64 (default: the recipe's).
    pub cpus: Option<u32>,
    /// MiB, 16–65536 (default: the recipe's).
    pub memory: Option<u32>,
    /// Forwards `[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]` (default: the recipe's).
    #[serde(default)]
    pub ports: Vec<String>,
    /// A host folder shared with the guest, `HOSTDIR:GUESTDIR`.
    pub share: Option<String>,
    /// Seconds to wait for readiness, 1–3600 (default: the recipe's).
    pub ready_timeout: Option<u64>,
}

/// Parse a JSON body, mapping every failure to `bad_body` / `body_too_large`.
fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<T> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new("body_too_large", r.body_text())
        } else {
            ApiError::new("bad_body", r.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| ApiError::new("bad_body", e.to_string()))
}

/// Check a create request and resolve its recipe or image inside the catalog.
pub fn validate(req: &CreateRequest, catalog: &Catalog) -> ApiResult<Launch> {
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
            let name = kiln_build::load_image(&dir)
                .map(|m| m.name)
                .unwrap_or_else(|_| i.clone());
            (dir, name)
        }
        _ => return Err(invalid("give exactly one of `recipe` and `image`".into())),
    };
    let name = req.name.clone().unwrap_or(default_name);
    if !valid_name(&name) {
        return Err(invalid(format!(
            "name: `{name}` is not a valid VM name (1–63 of a-z 0-9 - _, starting with a letter or digit)"
        )));
    }
    if let Some(c) = req.cpus {
        if !(1..=64).contains(&c) {
            return Err(invalid(format!("cpus: {c} is not in 1–64")));
        }
    }
    if let Some(m) = req.memory {
        if !(16..=65536).contains(&m) {
            return Err(invalid(format!("memory: {m} MiB is not in 16–65536")));
        }
    }
    if let Some(t) = req.ready_timeout {
        if !(1..=3600).contains(&t) {
            return Err(invalid(format!("ready_timeout: {t} s is not in 1–3600")));
        }
    }
    let mut ports = Vec::new();
    for p in &req.ports {
        let f: PortForward = p.parse().map_err(|e| invalid(format!("ports: {e}")))?;
        ports.push(f.to_string());
    }
    let share = match &req.share {
        None => None,
        Some(s) if s.trim().is_empty() => None,
        Some(s) => {
            let (host, guest) = s
                .split_once(':')
                .ok_or_else(|| invalid(format!("share: `{s}` is not HOSTDIR:GUESTDIR")))?;
            let host_path = std::path::Path::new(host);
            if !host_path.is_absolute() || !host_path.is_dir() || !guest.starts_with('/') {
                return Err(invalid(format!(
                    "share: `{s}` needs an existing absolute host folder and an absolute guest path"
                )));
            }
            if host.split('/').any(|c| c == "..") || guest.split('/').any(|c| c == "..") {
                return Err(invalid(format!("share: `{s}` must not contain `..`")));
            }
            Some(s.clone())
        }
    };
    Ok(Launch {
        target,
        name,
        cpus: req.cpus,
        memory: req.memory,
        ports,
        share,
        ready_timeout: req.ready_timeout,
    })
}

/// Register `launch` as pending and boot it in the background.
async fn launch(app: &AppState, launch: Launch) -> ApiResult<VmInfo> {
    let forwards: Vec<PortForward> = launch.ports.iter().filter_map(|p| p.parse().ok()).collect();
    kiln_vm::ports::check_free(&forwards)
        .map_err(|e| ApiError::new("port_in_use", e.to_string()))?;
    let id = app.new_id();
    {
        let mut pending = app.pending();
        if pending.get(&launch.name).is_some_and(|p| p.error.is_none()) {
            return Err(ApiError::new(
                "name_taken",
                format!("a VM named `{}` is starting", launch.name),
            ));
        }
        pending.insert(
            launch.name.clone(),
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
        .find(|v| v.name == launch.name)
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
            if pending.get(&launch.name).is_some_and(|p| p.id == id) {
                match &error {
                    None => {
                        pending.remove(&launch.name);
                    }
                    Some(msg) => {
                        tracing::warn!("creating {}: {msg}", launch.name);
                        if let Some(p) = pending.get_mut(&launch.name) {
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
    let req: CreateRequest = parse_body(body)?;
    if req.share.as_deref().is_some_and(|s| !s.trim().is_empty()) && !app.vms.supports_share() {
        return Err(ApiError::new(
            "unsupported",
            "shared folders need a kiln whose `run` has --share",
        ));
    }
    let launch_req = validate(&req, &app.catalog)?;
    let table = app.refresh().await?;
    if let Some(v) = table.iter().find(|v| v.name == launch_req.name) {
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
        _ => Launch {
            target: v.image.clone().into(),
            name: name.clone(),
            cpus: Some(v.cpus).filter(|c| *c > 0),
            memory: Some(v.memory).filter(|m| *m > 0),
            ports: v.ports.clone(),
            share: None,
            ready_timeout: None,
        },
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
        serde_json::from_str(json).expect("request")
    }

    #[test]
    fn validation() {
        let (_d, c) = catalog();
        let l = validate(
            &req(r#"{"recipe":"rescue","cpus":2,"memory":64,"ports":["8080:80"]}"#),
            &c,
        )
        .expect("valid");
        assert_eq!(l.name, "rescue");
        assert_eq!(l.ports, ["127.0.0.1:8080:80/tcp"]);
        let code = |j: &str| validate(&req(j), &c).err().map(|e| e.code);
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
        assert!(serde_json::from_str::<CreateRequest>(r#"{"recipe":"a","bogus":1}"#).is_err());
    }
}
