//! The page and the guard in front of everything: token checks (bearer header or the login
//! cookie), the login form, the embedded assets (xterm.js is vendored from npm into
//! crates/serve/assets/ and compiled in, so the browser loads nothing from elsewhere), and the
//! security headers.

use super::api::AppState;
use super::error::ApiError;
use super::token::same;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

/// The login cookie's name.
pub const COOKIE: &str = "kiln_token";

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const XTERM_JS: &str = include_str!("../assets/vendor/xterm.js");
const XTERM_CSS: &str = include_str!("../assets/vendor/xterm.css");

const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `GET /`: the page.
pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

/// `GET /assets/{file}`: one of the embedded files.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "xterm.js" => (XTERM_JS, "text/javascript; charset=utf-8"),
        "xterm.css" => (XTERM_CSS, "text/css; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

fn login_page(message: &str) -> Html<String> {
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Kiln: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/login.css"></head>
<body class="login"><form method="post" action="/login">
<h1>Kiln</h1>
<p>Paste the token <code>kiln serve</code> printed at its first start (also in the state
folder's <code>serve.token</code>).</p>
<p class="error">{message}</p>
<input type="password" name="token" id="token" placeholder="token" autocomplete="current-password" autofocus required>
<button type="submit">Log in</button>
</form></body></html>"#
    ))
}

/// `GET /login.css`: the login page's style (the page's own CSS, reachable before login).
pub async fn login_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

/// `GET /login`.
pub async fn login_form() -> Html<String> {
    login_page("")
}

/// The login form's body.
#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /login`: set the cookie when the token is right.
pub async fn login(State(app): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    if !same(f.token.trim(), &app.token) {
        return (StatusCode::UNAUTHORIZED, login_page("That token is wrong.")).into_response();
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        f.token.trim()
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// `POST /logout`: forget the cookie.
pub async fn logout() -> Response {
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// How a request proved who it is.
enum Auth {
    Bearer,
    Cookie,
}

fn authenticate(headers: &HeaderMap, token: &str) -> Result<Auth, ApiError> {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        let given = h
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::new("bad_token", "Authorization must be `Bearer TOKEN`"))?;
        return if same(given.trim(), token) {
            Ok(Auth::Bearer)
        } else {
            Err(ApiError::new("bad_token", "the token is wrong"))
        };
    }
    match cookie_token(headers) {
        Some(c) if same(c, token) => Ok(Auth::Cookie),
        Some(_) => Err(ApiError::new(
            "bad_token",
            "the login cookie's token is wrong; log in again",
        )),
        None => Err(ApiError::new(
            "missing_token",
            "send `Authorization: Bearer TOKEN` (the token is in the state folder's serve.token)",
        )),
    }
}

/// A cookie-authenticated request that changes something (or opens a WebSocket) must come
/// from the page itself: its Origin, when sent, must be this server.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin == format!("http://{host}")
}

/// Read the whole request body (at most [`BODY_LIMIT`](super::BODY_LIMIT)) before anything
/// answers, so no refusal leaves unread bytes on a keep-alive connection (the client's next
/// request would find the connection closed). A larger body is read to its end and dropped
/// (up to [`DRAIN_LIMIT`], so the client is not cut off mid-write) and refused; past that the
/// connection is closed.
async fn buffered(req: Request) -> Result<Request, Response> {
    use futures_util::StreamExt;
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return Err(too_large(true));
        };
        total += chunk.len();
        if total > DRAIN_LIMIT {
            return Err(too_large(true));
        }
        if total <= super::BODY_LIMIT {
            kept.extend_from_slice(&chunk);
        }
    }
    if total > super::BODY_LIMIT {
        return Err(too_large(false));
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(kept)))
}

/// Bodies over the limit are still read (and dropped) up to this size before the refusal.
const DRAIN_LIMIT: usize = 1 << 20;

fn too_large(close: bool) -> Response {
    let mut r = ApiError::new(
        "body_too_large",
        format!("the body is over {} bytes", super::BODY_LIMIT),
    )
    .into_response();
    if close {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// The guard: every route but the login page needs the token.
pub async fn guard(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let req = match buffered(req).await {
        Ok(r) => r,
        Err(refused) => return secured(refused),
    };
    let path = req.uri().path().to_string();
    let public = matches!(path.as_str(), "/login" | "/login.css" | "/logout");
    let api = path.starts_with("/api/") || path == "/api";
    let mut resp = if public {
        next.run(req).await
    } else {
        match authenticate(req.headers(), &app.token) {
            Ok(Auth::Cookie)
                if (req.method() != Method::GET && req.method() != Method::HEAD
                    || req.headers().contains_key(header::UPGRADE))
                    && !same_origin(req.headers()) =>
            {
                ApiError::new("bad_origin", "this request must come from the Kiln page")
                    .into_response()
            }
            Ok(_) => next.run(req).await,
            Err(e) if api => e.into_response(),
            Err(_) => Redirect::to("/login").into_response(),
        }
    };
    if api && resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        resp = ApiError::new(
            "method_not_allowed",
            format!("{path} does not take this method"),
        )
        .into_response();
    }
    secured(resp)
}

/// Add the security headers every answer carries.
fn secured(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The fallback: JSON under /api/, text elsewhere.
pub async fn fallback(req: Request) -> Response {
    if req.uri().path().starts_with("/api") {
        ApiError::new("not_found", format!("no route {}", req.uri().path())).into_response()
    } else {
        (StatusCode::NOT_FOUND, "not found").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn tokens_from_header_and_cookie() {
        let t = "s3cret-token-0123456789";
        let code = |h: HeaderMap| authenticate(&h, t).err().map(|e| e.code);
        assert_eq!(code(headers(&[])), Some("missing_token"));
        assert_eq!(
            code(headers(&[(
                "authorization",
                "Bearer s3cret-token-0123456789"
            )])),
            None
        );
        assert_eq!(
            code(headers(&[("authorization", "Bearer nope")])),
            Some("bad_token")
        );
        assert_eq!(
            code(headers(&[(
                "authorization",
                "Basic s3cret-token-0123456789"
            )])),
            Some("bad_token")
        );
        assert_eq!(
            code(headers(&[(
                "cookie",
                "a=b; kiln_token=s3cret-token-0123456789"
            )])),
            None
        );
        assert_eq!(
            code(headers(&[("cookie", "kiln_token=x")])),
            Some("bad_token")
        );
    }

    #[test]
    fn origins() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:7070")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:7070"),
            ("origin", "http://127.0.0.1:7070")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:7070"),
            ("origin", "http://evil.example")
        ])));
    }
}
