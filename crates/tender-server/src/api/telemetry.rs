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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// Start, inclusive (RFC 3339). Default: 24 hours before `to`.
    pub from: Option<String>,
    /// End, exclusive (RFC 3339). Default: now.
    pub to: Option<String>,
    /// Bucket width: `30s`, `5m`, `1h`, `1d`... (1 s to 31 d). Default: the smallest of 1s, 5s,
    /// 10s, 30s, 1m, 5m, 10m, 30m, 1h, 3h, 6h, 12h, 1d that gives at most 500 buckets.
    pub step: Option<String>,
    /// `avg` (default), `min`, `max`, `sum`, `count` or `last`.
    pub agg: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FleetSeriesQuery {
    /// The metric.
    pub metric: String,
    /// One device id; or
    pub device: Option<String>,
    /// a static or dynamic group, by name; or
    pub group: Option<String>,
    /// a device query (docs/queries.md). Without any of the three: every accepted device.
    pub query: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub step: Option<String>,
    pub agg: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesPoint {
    /// The bucket's start (RFC 3339).
    #[schema(format = DateTime)]
    pub at: String,
    /// The bucket's value under the aggregation.
    pub value: f64,
    /// Samples in the bucket.
    pub count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    pub metric: String,
    #[schema(format = DateTime)]
    pub from: String,
    #[schema(format = DateTime)]
    pub to: String,
    /// The bucket width, e.g. `5m`.
    pub step: String,
    pub agg: String,
    /// Devices the series covers.
    pub devices: usize,
    /// Buckets with samples, oldest first (empty buckets are left out).
    pub points: Vec<SeriesPoint>,
}

/// Most devices one fleet series reads.
pub const MAX_SERIES_DEVICES: usize = 100_000;
const AUTO_STEPS_SECS: [i64; 13] = [
    1, 5, 10, 30, 60, 300, 600, 1800, 3600, 10_800, 21_600, 43_200, 86_400,
];

fn bad_series(e: tender_core::series::SeriesError) -> Problem {
    Problem::bad_request("invalid-series", e.to_string())
}

/// The range, step and aggregation of a series request, as given.
struct SeriesParams<'a> {
    from: Option<&'a str>,
    to: Option<&'a str>,
    step: Option<&'a str>,
    agg: Option<&'a str>,
}

async fn series_of(
    state: &AppState,
    tenant: tender_core::TenantId,
    devices: &[DeviceId],
    metric: MetricName,
    p: SeriesParams<'_>,
) -> Result<Series, Problem> {
    use tender_core::series::{self, Aggregation};
    let SeriesParams {
        from,
        to,
        step,
        agg,
    } = p;
    let to = match to {
        Some(t) => parse_time("to", t)?,
        None => state.clock.now(),
    };
    let from = match from {
        Some(f) => parse_time("from", f)?,
        None => to.plus_millis(-DAY_MS),
    };
    if from >= to {
        return Err(bad_series(series::SeriesError::EmptyRange));
    }
    let step_ms = match step {
        Some(s) => series::parse_step(s).map_err(bad_series)?,
        None => {
            let span = to.unix_millis().saturating_sub(from.unix_millis());
            AUTO_STEPS_SECS
                .iter()
                .map(|s| s * 1000)
                .find(|ms| span / ms <= 500)
                .unwrap_or(series::MAX_STEP_MS)
        }
    };
    series::check(from, to, step_ms).map_err(bad_series)?;
    let agg = match agg {
        Some(a) => Aggregation::parse(a).map_err(bad_series)?,
        None => Aggregation::Avg,
    };
    let buckets = state
        .store
        .sample_series(tenant, devices, &metric, from, to, step_ms)
        .await?;
    Ok(Series {
        metric: metric.as_str().to_owned(),
        from: from.to_rfc3339(),
        to: to.to_rfc3339(),
        step: series::format_step(step_ms),
        agg: agg.as_str().to_owned(),
        devices: devices.len(),
        points: buckets
            .iter()
            .map(|b| SeriesPoint {
                at: b.start.to_rfc3339(),
                value: agg.of(b),
                count: b.count,
            })
            .collect(),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/telemetry/{metric}/series",
    tag = "telemetry",
    params(
        ("id" = String, Path, description = "Device id (UUID)"),
        ("metric" = String, Path, description = "Metric name"),
        SeriesQuery,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The metric in buckets of the step, reduced by the aggregation", body = Series),
        (status = 400, description = "Invalid id, metric, time, step or aggregation, or too many buckets", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn device_series(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path((id, metric)): Path<(String, String)>,
    Query(q): Query<SeriesQuery>,
) -> Result<Json<Series>, Problem> {
    let tenant = auth.principal.tenant_id;
    let metric = MetricName::parse(&metric)
        .map_err(|e| Problem::bad_request("invalid-metric", e.to_string()))?;
    let id = existing_device(&state, tenant, &id).await?;
    Ok(Json(
        series_of(
            &state,
            tenant,
            &[id],
            metric,
            SeriesParams {
                from: q.from.as_deref(),
                to: q.to.as_deref(),
                step: q.step.as_deref(),
                agg: q.agg.as_deref(),
            },
        )
        .await?,
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/telemetry/series",
    tag = "telemetry",
    params(FleetSeriesQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The metric over the devices of a group, a query or the whole fleet, in buckets of the step", body = Series),
        (status = 400, description = "Invalid metric, target, time, step or aggregation, or too many buckets or devices", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device or group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn fleet_series(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Query(q): Query<FleetSeriesQuery>,
) -> Result<Json<Series>, Problem> {
    let tenant = auth.principal.tenant_id;
    let metric = MetricName::parse(&q.metric)
        .map_err(|e| Problem::bad_request("invalid-metric", e.to_string()))?;
    let ids: Vec<DeviceId> = if q.device.is_none() && q.group.is_none() && q.query.is_none() {
        every_accepted_device(&state, tenant).await?
    } else {
        let spec = crate::api::commands::TargetSpec {
            device: q.device,
            devices: None,
            group: q.group,
            query: q.query,
        };
        let (devices, _) =
            crate::api::commands::resolve_devices(&state, tenant, spec, MAX_SERIES_DEVICES, true)
                .await?;
        devices.iter().map(|d| d.id).collect()
    };
    Ok(Json(
        series_of(
            &state,
            tenant,
            &ids,
            metric,
            SeriesParams {
                from: q.from.as_deref(),
                to: q.to.as_deref(),
                step: q.step.as_deref(),
                agg: q.agg.as_deref(),
            },
        )
        .await?,
    ))
}

/// The ids of the tenant's accepted devices (at most [`MAX_SERIES_DEVICES`]).
async fn every_accepted_device(
    state: &AppState,
    tenant: tender_core::TenantId,
) -> Result<Vec<DeviceId>, Problem> {
    use tender_core::page::{PageLimit, PageRequest};
    let filter = tender_store::DeviceFilter {
        state: Some(tender_core::device::DeviceState::Accepted),
        matching: None,
    };
    let mut out = Vec::new();
    let mut page = PageRequest::first(PageLimit::max());
    loop {
        let p = state.store.list_devices(tenant, &filter, &page).await?;
        out.extend(p.items.iter().map(|d| d.id));
        if out.len() > MAX_SERIES_DEVICES {
            return Err(Problem::bad_request(
                "too-many-devices",
                format!(
                    "the fleet has more than {MAX_SERIES_DEVICES} devices: name a group or a query"
                ),
            ));
        }
        match p.next {
            Some(after) => page.after = Some(after),
            None => return Ok(out),
        }
    }
}
