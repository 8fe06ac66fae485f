//! Remote logs: `POST/GET /api/v1/devices/{id}/logs` (ask a device for its logs, list its
//! requests), `GET /api/v1/logs/{request}` (status), `.../content` (the text, or the stored
//! gzip) and `.../follow` (live lines over server-sent events).
//!
//! Every route needs `logs_read` (held by the roles that manage devices). A request goes to the
//! device at once when it is connected, else when it next connects (see `crate::logs`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tender_core::device::DeviceState;
use tender_core::logs::{FOLLOW_LEASE_SECS, LineBatch, LogQuery, LogRequest, LogState};
use tender_core::{DeviceId, LogRequestId, Timestamp};
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::{cursor, parse_id};
use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::state::AppState;

const DEVICE_LOGS_CURSOR: &str = "lr1:";

/// What to fetch. Sources are the names the device's agent configuration gives them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLogRequest {
    /// 1 to 8 source names, as configured in the agent's `[logs]` section.
    pub sources: Vec<String>,
    /// Only lines from this time on (RFC 3339).
    #[schema(format = DateTime)]
    pub since: Option<String>,
    /// Only lines before this time (RFC 3339).
    #[schema(format = DateTime)]
    pub until: Option<String>,
    /// The last N lines of each source (default 1000, at most 100000).
    pub lines: Option<u32>,
    /// Largest compressed upload (default and most: the server's cap).
    pub max_bytes: Option<u64>,
    /// Time to live in seconds (default 3600, at most 7 days).
    pub ttl_secs: Option<u64>,
    /// Stream new lines instead of uploading (read them from `/api/v1/logs/{id}/follow`).
    #[serde(default)]
    pub follow: bool,
}

/// One log request.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogRequestDto {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(format = Uuid)]
    pub device_id: String,
    pub sources: Vec<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub lines: u32,
    pub max_bytes: u64,
    pub follow: bool,
    /// pending, sent, uploading, ready, failed, expired.
    pub state: String,
    pub created_by: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub sent_at: Option<String>,
    pub finished_at: Option<String>,
    pub updated_at: String,
    /// Why it failed (the device's words, or the server's).
    pub error: Option<String>,
    /// Compressed size of the upload, once ready.
    pub size: Option<u64>,
}

impl From<LogRequest> for LogRequestDto {
    fn from(r: LogRequest) -> Self {
        LogRequestDto {
            id: r.id.to_string(),
            device_id: r.device_id.to_string(),
            sources: r.sources.into_iter().map(String::from).collect(),
            since: r.since.map(|t| t.to_rfc3339()),
            until: r.until.map(|t| t.to_rfc3339()),
            lines: r.lines,
            max_bytes: r.max_bytes,
            follow: r.follow,
            state: r.state.to_string(),
            created_by: r.created_by,
            created_at: r.created_at.to_rfc3339(),
            expires_at: r.expires_at.to_rfc3339(),
            sent_at: r.sent_at.map(|t| t.to_rfc3339()),
            finished_at: r.finished_at.map(|t| t.to_rfc3339()),
            updated_at: r.updated_at.to_rfc3339(),
            error: r.error,
            size: r.size,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogRequestPage {
    pub items: Vec<LogRequestDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogPageQuery {
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn time_field(field: &str, value: Option<&str>) -> Result<Option<Timestamp>, Problem> {
    value
        .map(|v| {
            Timestamp::parse_rfc3339(v).map_err(|e| {
                Problem::bad_request(
                    "invalid-field",
                    format!(
                        "{field}: expected an RFC 3339 time such as 2026-01-31T12:00:00Z ({e})"
                    ),
                )
            })
        })
        .transpose()
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/logs",
    tag = "logs",
    params(("id" = String, Path, description = "Device id (UUID)")),
    request_body = CreateLogRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The request, sent at once if the device is connected", body = LogRequestDto),
        (status = 400, description = "Invalid sources, range or limits", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks logs_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The device is not accepted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_log_request(
    State(state): State<AppState>,
    auth: Authorized<need::LogsRead>,
    Path(id): Path<String>,
    Json(body): Json<CreateLogRequest>,
) -> Result<(StatusCode, Json<LogRequestDto>), Problem> {
    let tenant = auth.principal.tenant_id;
    let device_id: DeviceId = parse_id(&id)?;
    let device = state
        .store
        .device(tenant, device_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no device {device_id}")))?;
    if device.state != DeviceState::Accepted {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "device-not-accepted",
            format!(
                "device {device_id} is {}: only accepted devices send logs",
                device.state
            ),
        ));
    }
    let query = LogQuery {
        sources: body.sources,
        since: time_field("since", body.since.as_deref())?,
        until: time_field("until", body.until.as_deref())?,
        lines: body.lines,
        max_bytes: body.max_bytes,
        ttl_secs: body.ttl_secs,
        follow: body.follow,
    };
    let spec = query
        .validate(state.logs_config.max_upload_bytes)
        .map_err(|e| Problem::bad_request("invalid-log-request", e.to_string()))?;
    let request = LogRequest::new(
        LogRequestId::from_uuid(Uuid::now_v7()),
        tenant,
        device_id,
        spec,
        Some(auth.principal.username.clone()),
        state.clock.now(),
    );
    state.store.create_log_request(&request).await?;
    tracing::info!(request = %request.id, device = %device_id, by = %auth.principal.username, "log request created");
    // A follow request goes out when a client follows it (that is what renews its lease).
    let sent = if request.follow {
        false
    } else {
        crate::logs::dispatch_new(&state, &request).await?
    };
    let current = if sent {
        state
            .store
            .log_request(tenant, request.id)
            .await?
            .unwrap_or(request)
    } else {
        request
    };
    Ok((StatusCode::CREATED, Json(current.into())))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/logs",
    tag = "logs",
    params(("id" = String, Path, description = "Device id (UUID)"), LogPageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The device's log requests, newest first", body = LogRequestPage),
        (status = 400, description = "Invalid id, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks logs_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_log_requests(
    State(state): State<AppState>,
    auth: Authorized<need::LogsRead>,
    Path(id): Path<String>,
    Query(q): Query<LogPageQuery>,
) -> Result<Json<LogRequestPage>, Problem> {
    let tenant = auth.principal.tenant_id;
    let id: DeviceId = parse_id(&id)?;
    state
        .store
        .device(tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no device {id}")))?;
    let page =
        cursor::page_request::<LogRequestId>(DEVICE_LOGS_CURSOR, q.limit, q.cursor.as_deref())?;
    let page = state.store.device_log_requests(tenant, id, &page).await?;
    Ok(Json(LogRequestPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next.map(|id| cursor::encode(DEVICE_LOGS_CURSOR, id)),
    }))
}

async fn existing(
    state: &AppState,
    tenant: tender_core::TenantId,
    id: &str,
) -> Result<LogRequest, Problem> {
    let id: LogRequestId = parse_id(id)?;
    state
        .store
        .log_request(tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no log request {id}")))
}

#[utoipa::path(
    get,
    path = "/api/v1/logs/{id}",
    tag = "logs",
    params(("id" = String, Path, description = "Log request id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The request and its state", body = LogRequestDto),
        (status = 400, description = "Invalid id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks logs_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such log request", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_log_request(
    State(state): State<AppState>,
    auth: Authorized<need::LogsRead>,
    Path(id): Path<String>,
) -> Result<Json<LogRequestDto>, Problem> {
    let r = existing(&state, auth.principal.tenant_id, &id).await?;
    Ok(Json(r.into()))
}

#[utoipa::path(
    get,
    path = "/api/v1/logs/{id}/content",
    tag = "logs",
    params(("id" = String, Path, description = "Log request id (UUID)"),
        ("Accept-Encoding" = Option<String>, Header, description = "With `gzip`, the stored gzip is sent as it is (`Content-Encoding: gzip`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The logs as UTF-8 text (invalid bytes replaced)", content_type = "text/plain"),
        (status = 400, description = "Invalid id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks logs_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such log request", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not ready (pending, failed or expired): see its state", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn log_content(
    State(state): State<AppState>,
    auth: Authorized<need::LogsRead>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let tenant = auth.principal.tenant_id;
    let r = existing(&state, tenant, &id).await?;
    if r.state != LogState::Ready {
        let why = match (r.state, &r.error) {
            (LogState::Failed, Some(e)) => format!("log request {} failed: {e}", r.id),
            (s, _) => format!("log request {} is {s}, not ready", r.id),
        };
        return Err(Problem::new(StatusCode::CONFLICT, "logs-not-ready", why));
    }
    let gzip = state
        .store
        .log_content(tenant, r.id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("log request {} has no content", r.id)))?;
    let wants_gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.trim().split(';');
            parts.next().is_some_and(|n| n.trim() == "gzip")
                && !parts.any(|p| p.trim().replace(' ', "") == "q=0")
        });
    let text_type = HeaderValue::from_static("text/plain; charset=utf-8");
    if wants_gzip {
        return Ok((
            [
                (header::CONTENT_TYPE, text_type),
                (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
            ],
            gzip,
        )
            .into_response());
    }
    let max = state.logs_config.max_text_bytes;
    let text = tokio::task::spawn_blocking(move || crate::logs::gunzip(&gzip, max))
        .await
        .map_err(Problem::internal)?
        .map_err(|why| Problem::internal(format!("stored logs cannot be read: {why}")))?;
    let text = match String::from_utf8(text) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    Ok(([(header::CONTENT_TYPE, text_type)], text).into_response())
}

/// How often a follow stream renews the device's lease (and checks the request is still open).
const RENEW: Duration = Duration::from_secs(FOLLOW_LEASE_SECS / 3);

#[utoipa::path(
    get,
    path = "/api/v1/logs/{id}/follow",
    tag = "logs",
    params(("id" = String, Path, description = "Log request id (UUID) of a follow request")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "text/event-stream: `event: lines`, `data` `{\"source\": ..., \"lines\": [...]}`; ends when the request expires", content_type = "text/event-stream"),
        (status = 400, description = "Invalid id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks logs_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such log request", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not a follow request, or finished", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn follow_logs(
    State(state): State<AppState>,
    auth: Authorized<need::LogsRead>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    let tenant = auth.principal.tenant_id;
    let r = existing(&state, tenant, &id).await?;
    if !r.follow {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "not-a-follow-request",
            format!(
                "log request {} is not a follow request: read /api/v1/logs/{}/content",
                r.id, r.id
            ),
        ));
    }
    if r.state.is_finished() || state.clock.now() >= r.expires_at {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "request-finished",
            format!("log request {} is {}", r.id, r.state),
        ));
    }
    let rx = state.logs.subscribe(r.id);
    // Deliver (or renew) now; the stream renews every RENEW while the client stays.
    renew(&state, &r).await;
    let mut tick = tokio::time::interval(RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let stream = futures_util::stream::unfold(
        (state, r, rx, tick),
        |(state, r, mut rx, mut tick)| async move {
            loop {
                tokio::select! {
                    got = rx.recv() => match got {
                        Ok(batch) => {
                            let msg = lines_event(&batch);
                            return Some((Ok(msg), (state, r, rx, tick)));
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let msg = SseEvent::default()
                                .event("dropped")
                                .data(format!("{{\"batches\":{n}}}"));
                            return Some((Ok(msg), (state, r, rx, tick)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = tick.tick() => {
                        let current = match state.store.log_request(r.tenant_id, r.id).await {
                            Ok(Some(c)) => c,
                            Ok(None) => return None,
                            Err(e) => {
                                tracing::warn!(request = %r.id, error = %e, "a log follow cannot read its request");
                                r.clone()
                            }
                        };
                        if current.state.is_finished() || state.clock.now() >= current.expires_at {
                            return None;
                        }
                        renew(&state, &current).await;
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn lines_event(batch: &Arc<LineBatch>) -> SseEvent {
    let data = serde_json::to_string(&**batch).unwrap_or_else(|_| "{}".into());
    SseEvent::default().event("lines").data(data)
}

/// Sends the follow request with a fresh lease: recorded as sent the first time, published
/// again on every renewal while the device is connected (else it gets it on connect).
async fn renew(state: &AppState, r: &LogRequest) {
    if r.state == LogState::Pending {
        if let Err(e) = crate::logs::dispatch_new(state, r).await {
            tracing::warn!(request = %r.id, error = %e, "cannot send a follow request");
        }
    } else if state.gateway.is_connected(r.device_id) {
        crate::logs::send(state, r);
    }
}
