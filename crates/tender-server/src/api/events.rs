//! Events: `GET /api/v1/events` (a page, oldest first after a cursor) and
//! `GET /api/v1/events/stream` (server-sent events: what is recorded after the cursor, then
//! live). Both filter by device, group and kind (`kind=device.*,group.joined`).
//!
//! A stream resumes where it left off: each SSE message's `id` is the event id, so a client
//! that reconnects with `Last-Event-ID` (browsers do this themselves) misses nothing that is
//! still within the retention period.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tender_core::event::{Event, EventFilter, parse_kinds};
use tender_core::{DeviceId, GroupId};
use utoipa::{IntoParams, ToSchema};

use crate::api::parse_id;
use crate::auth::{Authorized, need};
use crate::events::CLOSED;
use crate::problem::Problem;
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
pub struct EventParams {
    /// Only events after this id (the `next_cursor` of a page, or an SSE `id`).
    pub after: Option<u64>,
    /// Only events about this device.
    pub device: Option<String>,
    /// Only events about this group (memberships, configuration).
    pub group: Option<String>,
    /// Comma-separated kinds; `device.*` (or `device`) selects every kind under it.
    pub kind: Option<String>,
    /// Page size, 1–1000 (default 100). Pages only.
    pub limit: Option<u32>,
}

/// One event.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventDto {
    pub id: u64,
    pub at: String,
    /// `device.created`, `device.state_changed`, `device.connected`, `device.disconnected`,
    /// `inventory.changed`, `twin.desired_changed`, `twin.reported_changed`,
    /// `config.changed`, `group.joined`, `group.left`, `command.state_changed`,
    /// `deployment.state_changed`, `deployment.device_changed`, `alert.fired`,
    /// `alert.acknowledged`, `alert.resolved`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl From<Event> for EventDto {
    fn from(e: Event) -> Self {
        EventDto {
            id: e.id,
            at: e.at.to_rfc3339(),
            kind: e.kind.as_str().to_owned(),
            device_id: e.device_id.map(|d| d.to_string()),
            group_id: e.group_id.map(|g| g.to_string()),
            data: e.data,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<EventDto>,
    /// Pass as `after` for the next page; absent when this page was the last for now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<u64>,
}

fn filter(params: &EventParams, headers: Option<&HeaderMap>) -> Result<EventFilter, Problem> {
    let last_event_id = headers
        .and_then(|h| h.get("last-event-id"))
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                Problem::bad_request("invalid-cursor", "Last-Event-ID must be an event id")
            })
        })
        .transpose()?;
    Ok(EventFilter {
        after: last_event_id.or(params.after),
        device: params
            .device
            .as_deref()
            .map(parse_id::<DeviceId>)
            .transpose()?,
        group: params
            .group
            .as_deref()
            .map(parse_id::<GroupId>)
            .transpose()?,
        kinds: match &params.kind {
            Some(k) => parse_kinds(k).map_err(|e| Problem::bad_request("invalid-kind", e))?,
            None => Vec::new(),
        },
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(EventParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Events after the cursor, oldest first", body = EventPage),
        (status = 400, description = "Invalid id, kind or limit", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_events(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Query(params): Query<EventParams>,
) -> Result<Json<EventPage>, Problem> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::bad_request(
            "invalid-parameter",
            "limit must be between 1 and 1000",
        ));
    }
    let f = filter(&params, None)?;
    let items = state
        .store
        .events(auth.principal.tenant_id, &f, limit)
        .await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|e| e.id))
        .flatten();
    Ok(Json(EventPage {
        items: items.into_iter().map(EventDto::from).collect(),
        next_cursor,
    }))
}

/// How often a stream looks at the store even when this server recorded nothing (events
/// recorded by another server sharing the database).
const POLL: Duration = Duration::from_secs(5);

#[utoipa::path(
    get,
    path = "/api/v1/events/stream",
    tag = "events",
    params(EventParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "text/event-stream: `id` the event id, `event` its kind, `data` the event as JSON", content_type = "text/event-stream"),
        (status = 400, description = "Invalid id or kind", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stream_events(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Query(params): Query<EventParams>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    let f = filter(&params, Some(&headers))?;
    let tenant = auth.principal.tenant_id;
    let wake = state.events.subscribe();
    let stream = futures_util::stream::unfold(
        (state, f, wake, VecDeque::<Event>::new()),
        move |(state, mut f, mut wake, mut pending)| async move {
            loop {
                if let Some(e) = pending.pop_front() {
                    let id = e.id;
                    let kind = e.kind.as_str();
                    let data = serde_json::to_string(&EventDto::from(e.clone()))
                        .unwrap_or_else(|_| "{}".into());
                    let msg = SseEvent::default()
                        .id(id.to_string())
                        .event(kind)
                        .data(data);
                    return Some((Ok(msg), (state, f, wake, pending)));
                }
                if *wake.borrow() == CLOSED {
                    return None;
                }
                match state.store.events(tenant, &f, 500).await {
                    Ok(batch) if !batch.is_empty() => {
                        f.after = batch.last().map(|e| e.id);
                        pending.extend(batch);
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "an event stream cannot read events; retrying")
                    }
                }
                // Woken by a new event, or the poll for other servers' events; a closed hub
                // ends the stream.
                if let Ok(Err(_)) = tokio::time::timeout(POLL, wake.changed()).await {
                    return None;
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
