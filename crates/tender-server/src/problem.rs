//! RFC 9457 problem details: the one error shape of the HTTP API.
//!
//! Handlers return [`Problem`]. Errors that arise outside handlers (unknown routes, wrong
//! methods, extractor rejections, body limits, time-outs, panics) are turned into problems by
//! [`problem_for_plain_errors`], so a client never sees an error in another shape.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem details object (RFC 9457).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:tender:problem:<code>`.
    #[serde(rename = "type")]
    #[schema(example = "urn:tender:problem:invalid-parameter")]
    pub type_uri: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong this time, and what to do about it.
    pub detail: String,
    /// The request path the problem occurred on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(skip)]
    #[schema(ignore)]
    www_authenticate: Option<&'static str>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Problem {
            type_uri: format!("urn:tender:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            instance: None,
            www_authenticate: None,
        }
    }

    pub fn bad_request(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        let mut p = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail);
        p.www_authenticate = Some("Bearer realm=\"tender\"");
        p
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    /// A failure that is ours, not the caller's. The detail is logged, not shown.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle this request; the error is in its log",
        )
    }

    pub fn with_instance(mut self, path: impl Into<String>) -> Self {
        self.instance = Some(path.into());
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(v) = self.www_authenticate {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
        }
        resp
    }
}

impl From<tender_store::StoreError> for Problem {
    fn from(e: tender_store::StoreError) -> Self {
        use tender_store::StoreError::*;
        match e {
            Unavailable(m) => Problem::unavailable(format!("the database is unavailable: {m}")),
            NotFound(m) => Problem::not_found(m),
            Conflict(m) => Problem::new(StatusCode::CONFLICT, "conflict", m),
            e @ (Corrupt(_) | Migration(_) | Internal(_)) => Problem::internal(e),
        }
    }
}

/// Largest plain-text error body that is carried over into a problem's detail.
const MAX_PLAIN_DETAIL: usize = 4096;

/// Middleware: an error response (4xx/5xx) that is not already a problem becomes one, keeping
/// its status, its headers (e.g. `Allow` on 405) and its text as the detail.
pub async fn problem_for_plain_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_DETAIL)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let (code, default_detail) = match status {
        StatusCode::NOT_FOUND => ("not-found", format!("no such resource: {path}")),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method-not-allowed",
            "this resource does not support that method; see the Allow header".to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload-too-large",
            "the request body exceeds the server's limit".to_owned(),
        ),
        StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => (
            "unavailable",
            "the request could not be handled in time; retry later".to_owned(),
        ),
        StatusCode::INTERNAL_SERVER_ERROR => (
            "internal",
            "the server failed to handle this request; the error is in its log".to_owned(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported-media-type",
            "send the body as application/json".to_owned(),
        ),
        _ => ("invalid-request", "the request was not valid".to_owned()),
    };
    // Panic messages and other 5xx texts are internal: do not echo them.
    let detail = if text.is_empty() || status.is_server_error() {
        default_detail
    } else {
        text
    };
    let problem = Problem::new(status, code, detail).with_instance(path);
    let fresh = problem.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    let (_, body) = fresh.into_parts();
    Response::from_parts(parts, Body::new(body))
}
