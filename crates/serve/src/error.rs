//! API errors: every failure is JSON `{"error": {"code", "message"}}` with an HTTP status and a
//! stable code that clients can match on (the codes are listed in docs/web.md and the OpenAPI
//! description).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Every error code the API returns, with its status. Kept in one place so the OpenAPI
/// description and the docs can list them.
pub const CODES: &[(&str, u16, &str)] = &[
    (
        "missing_token",
        401,
        "no token: send `Authorization: Bearer TOKEN`",
    ),
    ("bad_token", 401, "the token is wrong"),
    (
        "bad_origin",
        403,
        "a cookie-authenticated change from another origin",
    ),
    ("not_found", 404, "no such route"),
    (
        "method_not_allowed",
        405,
        "the route exists, not with this method",
    ),
    ("vm_not_found", 404, "no VM of that name"),
    (
        "recipe_not_found",
        404,
        "no recipe of that name in the recipe folders",
    ),
    (
        "image_not_found",
        404,
        "no image of that name in the image folders",
    ),
    (
        "bad_body",
        400,
        "the body is not the JSON the route expects",
    ),
    (
        "invalid_request",
        400,
        "a field's value is out of range or malformed",
    ),
    ("unsupported", 400, "this kiln cannot do that yet"),
    ("body_too_large", 413, "the body is over the size limit"),
    ("name_taken", 409, "a VM of that name exists"),
    ("port_in_use", 409, "a host port of a forward is taken"),
    ("vm_running", 409, "the VM is running (stop it first)"),
    ("vm_not_running", 409, "the VM is not running"),
    (
        "vm_busy",
        409,
        "the VM is starting; wait for it to be ready or fail",
    ),
    ("lifecycle_failed", 500, "the lifecycle command failed"),
    ("internal", 500, "a bug"),
];

/// An API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Stable code (one of [`CODES`]).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// An error with `code` (which must be in [`CODES`]).
    pub fn new(code: &'static str, message: impl Into<String>) -> ApiError {
        debug_assert!(
            CODES.iter().any(|c| c.0 == code),
            "undocumented code {code}"
        );
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status of this error's code.
    pub fn status(&self) -> StatusCode {
        CODES
            .iter()
            .find(|c| c.0 == self.code)
            .and_then(|c| StatusCode::from_u16(c.1).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// `vm_not_found` for `name`.
    pub fn no_vm(name: &str) -> ApiError {
        ApiError::new("vm_not_found", format!("no VM named `{name}`"))
    }
}

impl From<super::vms::VmsError> for ApiError {
    fn from(e: super::vms::VmsError) -> ApiError {
        use super::vms::VmsError;
        match e {
            VmsError::NotFound(n) => ApiError::no_vm(&n),
            VmsError::Refused(m) => ApiError::new("invalid_request", m),
            VmsError::Failed(m) => ApiError::new("lifecycle_failed", m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status(), Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_map_to_statuses() {
        for (i, c) in CODES.iter().enumerate() {
            assert!(!CODES[..i].iter().any(|d| d.0 == c.0), "duplicate {}", c.0);
            assert_eq!(ApiError::new(c.0, "x").status().as_u16(), c.1);
        }
    }
}
