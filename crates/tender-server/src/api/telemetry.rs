//! A device's telemetry as operators read it: `GET /api/v1/devices/{id}/telemetry` (the newest
//! sample of each metric) and `GET /api/v1/devices/{id}/telemetry/{metric}` (a time range).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use tender_core::telemetry::{MetricName, Sample};
use tender_core::{DeviceId, Timestamp};
use utoipa::{IntoParams, ToSchema};

use crate::api::{cursor, parse_id};
use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct SampleDto {
    pub metric: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub at: String,
    pub value: f64,
}

impl From<Sample> for SampleDto {
    fn from(s: Sample) -> Self {
        SampleDto {
            metric: s.metric.as_str().to_owned(),
            at: s.at.to_rfc3339(),
            value: s.value,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LatestSamples {
    /// The newest sample of each metric, by metric name.
    pub items: Vec<SampleDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SamplePage {
    /// Oldest first.
    pub items: Vec<SampleDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// Start, inclusive (RFC 3339). Default: 24 hours before `to`.
    pub from: Option<String>,
    /// End, exclusive (RFC 3339). Default: now.
    pub to: Option<String>,
    /// Samples per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

const CURSOR_VERSION: &str = "s1:";
const DAY_MS: i64 = 86_400_000;

async fn existing_device(
    state: &AppState,
    tenant: tender_core::TenantId,
    id: &str,
) -> Result<DeviceId, Problem> {
    let id: DeviceId = parse_id(id)?;
    if state.store.device(tenant, id).await?.is_none() {
        return Err(Problem::not_found(format!("no device {id}")));
    }
    Ok(id)
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/telemetry",
    tag = "telemetry",
    params(("id" = String, Path, description = "Device id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The newest sample of each metric", body = LatestSamples),
        (status = 400, description = "Not a device id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn latest(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
) -> Result<Json<LatestSamples>, Problem> {
    let tenant = auth.principal.tenant_id;
    let id = existing_device(&state, tenant, &id).await?;
    let samples = state.store.latest_samples(tenant, id).await?;
    Ok(Json(LatestSamples {
        items: samples.into_iter().map(Into::into).collect(),
    }))
}

fn parse_time(field: &str, v: &str) -> Result<Timestamp, Problem> {
    Timestamp::parse_rfc3339(v).map_err(|_| {
        Problem::bad_request(
            "invalid-time",
            format!("{field} must be an RFC 3339 time such as 2026-11-23T10:00:00Z"),
        )
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/telemetry/{metric}",
    tag = "telemetry",
    params(
        ("id" = String, Path, description = "Device id (UUID)"),
        ("metric" = String, Path, description = "Metric name"),
        RangeQuery,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Samples in the range, oldest first", body = SamplePage),
        (status = 400, description = "Invalid id, metric, time, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn range(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path((id, metric)): Path<(String, String)>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<SamplePage>, Problem> {
    let tenant = auth.principal.tenant_id;
    let metric = MetricName::parse(&metric)
        .map_err(|e| Problem::bad_request("invalid-metric", e.to_string()))?;
    let page = cursor::page_request::<i64>(CURSOR_VERSION, q.limit, q.cursor.as_deref())?;
    let to = match &q.to {
        Some(t) => parse_time("to", t)?,
        None => state.clock.now(),
    };
    let mut from = match &q.from {
        Some(f) => parse_time("from", f)?,
        None => to.plus_millis(-DAY_MS),
    };
    if let Some(after) = page.after {
        from = Timestamp::from_unix_millis(after.saturating_add(1)).max(from);
    }
    let id = existing_device(&state, tenant, &id).await?;
    let samples = state
        .store
        .query_samples(tenant, id, &metric, from, to, page.limit)
        .await?;
    Ok(Json(SamplePage {
        items: samples.items.into_iter().map(Into::into).collect(),
        next_cursor: samples
            .next
            .map(|t| cursor::encode(CURSOR_VERSION, t.unix_millis())),
    }))
}
