//! `kiln serve`: the web console and HTTP API. One binary, no framework on the page: axum
//! serves a JSON API under `/api/` (described at `/api/openapi.json`), a page with a live VM
//! table (server-sent events) and the VMs' serial consoles over WebSockets (xterm.js,
//! vendored). Every request needs the token; the server listens on 127.0.0.1 by default.
//!
//! VM operations go through the [`vms::Vms`] trait; [`vms::FleetVms`] calls the fleet library
//! in-process (the same calls as the CLI's).

pub mod api;
pub mod catalog;
pub mod console;
pub mod error;
pub mod host;
pub mod openapi;
pub mod state;
pub mod token;
pub mod vms;
pub mod web;

#[cfg(test)]
mod tests;

/// Serve `app` on `listener` until the connection loop ends.
pub async fn run(listener: tokio::net::TcpListener, app: api::AppState) -> std::io::Result<()> {
    axum::serve(listener, router(app)).await
}

/// Wait for SIGTERM or SIGINT (the server's shutdown).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

use axum::routing::{get, post};
use axum::Router;

/// Request bodies larger than this are refused (`body_too_large`).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The router over `app` (exposed for tests and benchmarks).
pub fn router(app: api::AppState) -> Router {
    let mut api = Router::new();
    for (_, path, handler) in api::routes() {
        api = api.route(path, handler);
    }
    api.route("/", get(web::index))
        .route("/assets/{file}", get(web::asset))
        .route("/login", get(web::login_form).post(web::login))
        .route("/login.css", get(web::login_css))
        .route("/logout", post(web::logout))
        .fallback(web::fallback)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            web::guard,
        ))
        .with_state(app)
}
