//! Deployments: `/api/v1/deployments` (create, preview, list, show, per-device status, pause,
//! resume, cancel, approve) and `/api/v1/devices/{id}/deployments`.
//!
//! The targets are fixed when the deployment is created (a group or query is resolved then;
//! a continuous deployment adds devices that match later), split into phases, and classified:
//! devices of another type or with unmet dependencies are `incompatible`, devices that run
//! this version (or a newer one) `skipped`, unless `force`. The scheduler (`crate::deployments`)
//! does the rest.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tender_core::artifact::Artifact;
use tender_core::deployment::{
    Amount, Deployment, DeploymentState, FailureAction, Options, Phase, PhaseStats, Target,
    TargetState, assign_phases, validate,
};
use tender_core::{ArtifactId, DeploymentId, DeviceId, TenantId, Timestamp};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::commands::TargetSpec;
use crate::api::{cursor, parse_id};
use crate::auth::{Authorized, need};
use crate::deployments::{device_facts, initial_targets};
use crate::problem::Problem;
use crate::state::AppState;

/// Most devices one deployment may target when created.
pub const MAX_DEPLOYMENT_TARGETS: usize = 100_000;

const DEPLOYMENTS_CURSOR: &str = "dp1:";
const TARGETS_CURSOR: &str = "dpt1:";
const DEVICE_DEPLOYMENTS_CURSOR: &str = "ddp1:";

/// One phase as given.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    /// Devices in this phase: a count (`50`) or a share of all targets (`"10%"`). The last
    /// phase takes the rest.
    #[schema(value_type = String, example = "10%")]
    pub size: serde_json::Value,
    /// Start at this time (RFC 3339) instead of when the previous phase succeeded.
    pub start_at: Option<String>,
    /// Successes needed before the next phase starts (default `"100%"`).
    #[schema(value_type = Option<String>, example = "90%")]
    pub success_threshold: Option<serde_json::Value>,
    /// Failures that trigger `on_failure` (default: none).
    #[schema(value_type = Option<String>, example = "10%")]
    pub failure_threshold: Option<serde_json::Value>,
    /// `pause` (default), `abort` or `continue`.
    pub on_failure: Option<String>,
    /// Wait for `POST /deployments/{id}/approve` before this phase starts.
    pub requires_approval: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDeployment {
    /// A name for people (default: the artifact's name and version).
    pub name: Option<String>,
    /// The artifact: its id, or `NAME@VERSION`.
    pub artifact: String,
    pub target: TargetSpec,
    /// The phases, in order (default: one phase with every device).
    pub phases: Option<Vec<PhaseSpec>>,
    /// Most devices notified per minute.
    pub rate_per_minute: Option<u32>,
    /// Most devices downloading at once.
    pub max_concurrent_downloads: Option<u32>,
    /// Notifications per device before a failure is final (default 3, at most 10).
    pub max_attempts: Option<u32>,
    /// First retry after this many seconds, doubling per attempt (default 60).
    pub retry_backoff_secs: Option<u64>,
    /// Install even where this version or a newer one runs.
    pub force: Option<bool>,
    /// Download and verify only.
    pub download_only: Option<bool>,
    /// Devices that match the group or query later get it too (group or query targets only).
    pub continuous: Option<bool>,
    /// Start at this time (RFC 3339) rather than now.
    pub start_at: Option<String>,
    /// Devices are notified only while one of these is open (at most 16).
    pub maintenance_windows: Option<Vec<WindowSpec>>,
}

/// A maintenance window: opens when `cron` matches in `time_zone`, for `duration_secs`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Five-field cron: minute hour day-of-month month day-of-week, e.g. `0 2 * * 1-5`.
    pub cron: String,
    /// 60 to 604800.
    pub duration_secs: u64,
    /// IANA time zone (default UTC).
    pub time_zone: Option<String>,
}

fn invalid(code: &str, e: impl std::fmt::Display) -> Problem {
    Problem::bad_request(code, e.to_string())
}

fn amount(field: &str, v: &serde_json::Value) -> Result<Amount, Problem> {
    serde_json::from_value::<Amount>(v.clone())
        .map_err(|e| invalid("invalid-field", format!("{field}: {e}")))
}

fn time(field: &str, s: &str) -> Result<Timestamp, Problem> {
    Timestamp::parse_rfc3339(s).map_err(|e| {
        invalid(
            "invalid-field",
            format!("{field}: {e}; expected RFC 3339, e.g. 2026-12-24T06:00:00Z"),
        )
    })
}

fn phases(spec: Option<Vec<PhaseSpec>>) -> Result<Vec<Phase>, Problem> {
    let Some(spec) = spec else {
        return Ok(vec![Phase::new(Amount::Percent(100))]);
    };
    spec.iter()
        .enumerate()
        .map(|(i, p)| {
            let at = |f: &str| format!("phases[{i}].{f}");
            let mut phase = Phase::new(amount(&at("size"), &p.size)?);
            if let Some(s) = &p.start_at {
                phase.start_at = Some(time(&at("start_at"), s)?);
            }
            if let Some(v) = &p.success_threshold {
                phase.success_threshold = amount(&at("success_threshold"), v)?;
            }
            if let Some(v) = &p.failure_threshold {
                phase.failure_threshold = Some(amount(&at("failure_threshold"), v)?);
            }
            phase.on_failure = match p.on_failure.as_deref() {
                None | Some("pause") => FailureAction::Pause,
                Some("abort") => FailureAction::Abort,
                Some("continue") => FailureAction::Continue,
                Some(x) => {
                    return Err(invalid(
                        "invalid-field",
                        format!(
                            "{}: {x:?} is not pause, abort or continue",
                            at("on_failure")
                        ),
                    ));
                }
            };
            phase.requires_approval = p.requires_approval.unwrap_or(false);
            Ok(phase)
        })
        .collect()
}

/// The artifact named by id or `NAME@VERSION`.
pub async fn artifact_by_ref(
    state: &AppState,
    tenant: TenantId,
    text: &str,
) -> Result<Artifact, Problem> {
    let found = match text.split_once('@') {
        Some((name, version)) => {
            state
                .store
                .artifact_by_version(tenant, name, version)
                .await?
        }
        None => {
            let id: ArtifactId = parse_id(text)?;
            state.store.artifact(tenant, id).await?
        }
    };
    found.ok_or_else(|| Problem::not_found(format!("no artifact {text}")))
}

/// What a deployment would do, per phase.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct PhasePreview {
    /// 1-based.
    pub phase: u32,
    pub devices: u32,
    /// Connected now.
    pub online: u32,
    /// Would install.
    pub to_install: u32,
    /// Run this version or a newer one already (skipped unless `force`).
    pub up_to_date: u32,
    /// Another device type or unmet dependencies.
    pub incompatible: u32,
    /// Artifact bytes to download (devices that would install).
    pub bytes: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Preview {
    pub artifact: String,
    pub target: String,
    pub devices: u32,
    pub phases: Vec<PhasePreview>,
    /// Up to 20 incompatible devices with the reason.
    pub incompatible_examples: Vec<BTreeMap<String, String>>,
}

struct Plan {
    deployment: Deployment,
    artifact: Artifact,
    targets: Vec<Target>,
}

async fn plan(
    state: &AppState,
    tenant: TenantId,
    by: &str,
    body: CreateDeployment,
) -> Result<Plan, Problem> {
    let artifact = artifact_by_ref(state, tenant, &body.artifact).await?;
    let phases = phases(body.phases)?;
    let options = Options {
        rate_per_minute: body.rate_per_minute,
        max_concurrent_downloads: body.max_concurrent_downloads,
        max_attempts: body
            .max_attempts
            .unwrap_or(tender_core::deployment::DEFAULT_MAX_ATTEMPTS),
        retry_backoff_secs: body
            .retry_backoff_secs
            .unwrap_or(tender_core::deployment::DEFAULT_RETRY_BACKOFF_SECS),
        force: body.force.unwrap_or(false),
        download_only: body.download_only.unwrap_or(false),
        continuous: body.continuous.unwrap_or(false),
        windows: body
            .maintenance_windows
            .unwrap_or_default()
            .into_iter()
            .map(|w| tender_core::window::Window {
                cron: w.cron,
                duration_secs: w.duration_secs,
                time_zone: w.time_zone.unwrap_or_else(|| "UTC".into()),
            })
            .collect(),
    };
    validate(&phases, &options).map_err(|e| invalid("invalid-deployment", e))?;
    let continuous_query = if options.continuous {
        match (&body.target.group, &body.target.query) {
            (Some(g), _) => Some(format!("group = {}", serde_json::Value::String(g.clone()))),
            (_, Some(q)) => Some(q.clone()),
            _ => {
                return Err(invalid(
                    "invalid-deployment",
                    "a continuous deployment targets a group or a query",
                ));
            }
        }
    } else {
        None
    };
    let start_at = body
        .start_at
        .as_deref()
        .map(|s| time("start_at", s))
        .transpose()?;
    let name = match body.name {
        Some(n) => {
            crate::api::check_label("name", &n)?;
            n
        }
        None => format!("{} {}", artifact.name, artifact.version),
    };
    let (records, target) = crate::api::commands::resolve_devices(
        state,
        tenant,
        body.target,
        MAX_DEPLOYMENT_TARGETS,
        continuous_query.is_some(),
    )
    .await?;
    let devices: Vec<DeviceId> = records.iter().map(|d| d.id).collect();
    let now = state.clock.now();
    let deployment = Deployment {
        id: DeploymentId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        name,
        artifact_id: artifact.id,
        target,
        query: continuous_query,
        phases,
        options,
        state: DeploymentState::Scheduled,
        status_reason: None,
        current_phase: 0,
        approved_phases: vec![],
        accepted_failures: vec![],
        created_by: Some(by.to_owned()),
        created_at: now,
        start_at,
        started_at: None,
        finished_at: None,
        updated_at: now,
        revision: 0,
    };
    let assigned = assign_phases(deployment.id, &deployment.phases, &devices);
    let facts = device_facts(state, tenant, &records).await?;
    let targets = initial_targets(&deployment, &artifact, &assigned, &facts, now);
    Ok(Plan {
        deployment,
        artifact,
        targets,
    })
}

fn preview_of(state: &AppState, p: &Plan) -> Preview {
    let mut phases: Vec<PhasePreview> = (0..p.deployment.phases.len())
        .map(|i| PhasePreview {
            phase: i as u32 + 1,
            ..PhasePreview::default()
        })
        .collect();
    let mut examples = Vec::new();
    for t in &p.targets {
        let Some(ph) = phases.get_mut(t.phase as usize) else {
            continue;
        };
        ph.devices += 1;
        if state.gateway.is_connected(t.device_id) {
            ph.online += 1;
        }
        match t.state {
            TargetState::Skipped => ph.up_to_date += 1,
            TargetState::Incompatible => {
                ph.incompatible += 1;
                if examples.len() < 20 {
                    examples.push(BTreeMap::from([
                        ("device_id".to_string(), t.device_id.to_string()),
                        ("reason".to_string(), t.error.clone().unwrap_or_default()),
                    ]));
                }
            }
            _ => {
                ph.to_install += 1;
                ph.bytes += p.artifact.size;
            }
        }
    }
    Preview {
        artifact: format!("{} {}", p.artifact.name, p.artifact.version),
        target: p.deployment.target.clone(),
        devices: p.targets.len() as u32,
        phases,
        incompatible_examples: examples,
    }
}

/// Statistics of one phase.
#[derive(Debug, Serialize, ToSchema)]
pub struct PhaseDto {
    /// 1-based.
    pub phase: u32,
    /// `"10%"` or a count.
    pub size: String,
    pub start_at: Option<String>,
    pub success_threshold: String,
    pub failure_threshold: Option<String>,
    pub on_failure: String,
    pub requires_approval: bool,
    pub approved: bool,
    /// `pending`, `active` (being rolled out) or `done`.
    pub status: String,
    pub total: u32,
    pub queued: u32,
    /// Notified and not finished.
    pub in_progress: u32,
    pub succeeded: u32,
    /// Failed or rolled back, for good.
    pub failed: u32,
    pub skipped: u32,
    pub incompatible: u32,
    pub canceled: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentDto {
    #[schema(format = Uuid)]
    pub id: String,
    pub name: String,
    #[schema(format = Uuid)]
    pub artifact_id: String,
    /// The artifact's name and version.
    pub artifact: String,
    /// How the devices were chosen.
    pub target: String,
    /// `scheduled`, `running`, `paused`, `completed`, `canceled`, `aborted`.
    pub state: String,
    /// Why it is paused, aborted or waiting.
    pub status_reason: Option<String>,
    /// 1-based: the phase being rolled out.
    pub current_phase: u32,
    pub phases: Vec<PhaseDto>,
    pub rate_per_minute: Option<u32>,
    pub max_concurrent_downloads: Option<u32>,
    pub max_attempts: u32,
    pub retry_backoff_secs: u64,
    pub force: bool,
    pub download_only: bool,
    pub continuous: bool,
    pub maintenance_windows: Vec<WindowSpec>,
    pub created_by: Option<String>,
    pub created_at: String,
    pub start_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Totals over every phase.
    pub total: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub in_progress: u32,
    pub queued: u32,
}

fn on_failure(a: FailureAction) -> &'static str {
    match a {
        FailureAction::Pause => "pause",
        FailureAction::Abort => "abort",
        FailureAction::Continue => "continue",
    }
}

fn dto(d: Deployment, a: Option<&Artifact>, stats: &[PhaseStats]) -> DeploymentDto {
    let empty = PhaseStats::default();
    let phases = d
        .phases
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let s = stats.get(i).unwrap_or(&empty);
            let i = i as u32;
            let status = if i > d.current_phase || d.state == DeploymentState::Scheduled {
                "pending"
            } else if s.is_done() {
                "done"
            } else {
                "active"
            };
            PhaseDto {
                phase: i + 1,
                size: p.size.to_string(),
                start_at: p.start_at.map(|t| t.to_rfc3339()),
                success_threshold: p.success_threshold.to_string(),
                failure_threshold: p.failure_threshold.map(|t| t.to_string()),
                on_failure: on_failure(p.on_failure).into(),
                requires_approval: p.requires_approval,
                approved: d.approved_phases.contains(&i),
                status: status.into(),
                total: s.total,
                queued: s.queued,
                in_progress: s.active,
                succeeded: s.succeeded,
                failed: s.failed,
                skipped: s.skipped,
                incompatible: s.incompatible,
                canceled: s.canceled,
            }
        })
        .collect();
    let sum = |f: fn(&PhaseStats) -> u32| stats.iter().map(f).sum();
    DeploymentDto {
        id: d.id.to_string(),
        name: d.name,
        artifact_id: d.artifact_id.to_string(),
        artifact: a
            .map(|a| format!("{} {}", a.name, a.version))
            .unwrap_or_default(),
        target: d.target,
        state: d.state.to_string(),
        status_reason: d.status_reason,
        current_phase: d.current_phase + 1,
        phases,
        rate_per_minute: d.options.rate_per_minute,
        max_concurrent_downloads: d.options.max_concurrent_downloads,
        max_attempts: d.options.max_attempts,
        retry_backoff_secs: d.options.retry_backoff_secs,
        force: d.options.force,
        download_only: d.options.download_only,
        continuous: d.options.continuous,
        maintenance_windows: d
            .options
            .windows
            .iter()
            .map(|w| WindowSpec {
                cron: w.cron.clone(),
                duration_secs: w.duration_secs,
                time_zone: Some(w.time_zone.clone()),
            })
            .collect(),
        created_by: d.created_by,
        created_at: d.created_at.to_rfc3339(),
        start_at: d.start_at.map(|t| t.to_rfc3339()),
        started_at: d.started_at.map(|t| t.to_rfc3339()),
        finished_at: d.finished_at.map(|t| t.to_rfc3339()),
        total: sum(|s| s.total),
        succeeded: sum(|s| s.succeeded),
        failed: sum(|s| s.failed),
        in_progress: sum(|s| s.active),
        queued: sum(|s| s.queued),
    }
}

async fn full_dto(state: &AppState, d: Deployment) -> Result<DeploymentDto, Problem> {
    let stats = state.store.deployment_stats(&d).await?;
    let a = state.store.artifact(d.tenant_id, d.artifact_id).await?;
    Ok(dto(d, a.as_ref(), &stats))
}

#[utoipa::path(
    post,
    path = "/api/v1/deployments/preview",
    tag = "deployments",
    request_body = CreateDeployment,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What each phase would do; nothing is stored", body = Preview),
        (status = 400, description = "Invalid phases, options or target", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks deployments_create", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such artifact, device or group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn preview_deployment(
    State(state): State<AppState>,
    auth: Authorized<need::DeploymentsCreate>,
    Json(body): Json<CreateDeployment>,
) -> Result<Json<Preview>, Problem> {
    let p = plan(
        &state,
        auth.principal.tenant_id,
        &auth.principal.username,
        body,
    )
    .await?;
    Ok(Json(preview_of(&state, &p)))
}

#[utoipa::path(
    post,
    path = "/api/v1/deployments",
    tag = "deployments",
    request_body = CreateDeployment,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; it starts now or at start_at", body = DeploymentDto),
        (status = 400, description = "Invalid phases, options or target; no device matched", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks deployments_create", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such artifact, device or group", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A named device is not accepted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_deployment(
    State(state): State<AppState>,
    auth: Authorized<need::DeploymentsCreate>,
    Json(body): Json<CreateDeployment>,
) -> Result<(StatusCode, Json<DeploymentDto>), Problem> {
    let p = plan(
        &state,
        auth.principal.tenant_id,
        &auth.principal.username,
        body,
    )
    .await?;
    state
        .store
        .create_deployment(&p.deployment, &p.targets)
        .await?;
    tracing::info!(deployment = %p.deployment.id, artifact = %p.artifact.id, devices = p.targets.len(), "deployment created");
    state.deployments.wake();
    Ok((
        StatusCode::CREATED,
        Json(full_dto(&state, p.deployment).await?),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TargetQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// Only devices in this state.
    pub state: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentPage {
    pub items: Vec<DeploymentDto>,
    pub next_cursor: Option<String>,
}

/// One device in a deployment.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetDto {
    #[schema(format = Uuid)]
    pub deployment_id: String,
    #[schema(format = Uuid)]
    pub device_id: String,
    /// 1-based.
    pub phase: u32,
    /// queued, notified, downloading, downloaded, installing, rebooting, verifying, succeeded,
    /// failed, rolled_back, skipped, incompatible, canceled.
    pub state: String,
    pub attempts: u32,
    pub retry_at: Option<String>,
    pub notified_at: Option<String>,
    pub finished_at: Option<String>,
    pub updated_at: String,
    pub progress: Option<u8>,
    pub error: Option<String>,
    /// The device's log lines, newest last.
    pub log: Vec<String>,
}

impl From<Target> for TargetDto {
    fn from(t: Target) -> Self {
        TargetDto {
            deployment_id: t.deployment_id.to_string(),
            device_id: t.device_id.to_string(),
            phase: t.phase + 1,
            state: t.state.to_string(),
            attempts: t.attempts,
            retry_at: t.retry_at.map(|x| x.to_rfc3339()),
            notified_at: t.notified_at.map(|x| x.to_rfc3339()),
            finished_at: t.finished_at.map(|x| x.to_rfc3339()),
            updated_at: t.updated_at.to_rfc3339(),
            progress: t.progress,
            error: t.error,
            log: t.log,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TargetPage {
    pub items: Vec<TargetDto>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/deployments",
    tag = "deployments",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deployments, newest first, with their statistics", body = DeploymentPage),
        (status = 400, description = "Invalid limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_deployments(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Query(q): Query<PageQuery>,
) -> Result<Json<DeploymentPage>, Problem> {
    let page =
        cursor::page_request::<DeploymentId>(DEPLOYMENTS_CURSOR, q.limit, q.cursor.as_deref())?;
    let page = state
        .store
        .list_deployments(auth.principal.tenant_id, &page)
        .await?;
    let mut items = Vec::with_capacity(page.items.len());
    for d in page.items {
        items.push(full_dto(&state, d).await?);
    }
    Ok(Json(DeploymentPage {
        items,
        next_cursor: page.next.map(|id| cursor::encode(DEPLOYMENTS_CURSOR, id)),
    }))
}

async fn existing(state: &AppState, tenant: TenantId, id: &str) -> Result<Deployment, Problem> {
    let id: DeploymentId = parse_id(id)?;
    state
        .store
        .deployment(tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no deployment {id}")))
}

#[utoipa::path(
    get,
    path = "/api/v1/deployments/{id}",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The deployment with per-phase statistics", body = DeploymentDto),
        (status = 400, description = "Not a deployment id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_deployment(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
) -> Result<Json<DeploymentDto>, Problem> {
    let d = existing(&state, auth.principal.tenant_id, &id).await?;
    Ok(Json(full_dto(&state, d).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/deployments/{id}/devices",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id (UUID)"), TargetQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Each device's state, progress, error and log, by device id", body = TargetPage),
        (status = 400, description = "Invalid id, state, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn deployment_devices(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
    Query(q): Query<TargetQuery>,
) -> Result<Json<TargetPage>, Problem> {
    let tenant = auth.principal.tenant_id;
    let d = existing(&state, tenant, &id).await?;
    let filter = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(TargetState::parse(s).ok_or_else(|| {
            invalid(
                "invalid-state",
                format!(
                    "state {s:?} is not one of {}",
                    TargetState::ALL.map(|s| s.as_str()).join(", ")
                ),
            )
        })?),
    };
    let page = cursor::page_request::<DeviceId>(TARGETS_CURSOR, q.limit, q.cursor.as_deref())?;
    let page = state
        .store
        .deployment_targets(tenant, d.id, filter, &page)
        .await?;
    Ok(Json(TargetPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next.map(|id| cursor::encode(TARGETS_CURSOR, id)),
    }))
}

fn not_allowed(e: tender_core::deployment::DeploymentError) -> Problem {
    match e {
        tender_core::deployment::DeploymentError::NotAllowed { .. } => {
            Problem::new(StatusCode::CONFLICT, "deployment-state", e.to_string())
        }
        e => invalid("invalid-deployment", e),
    }
}

/// Applies an operator action with compare-and-set, retrying on a concurrent change.
async fn act(
    state: &AppState,
    tenant: TenantId,
    id: &str,
    action: impl Fn(&Deployment, &[PhaseStats]) -> Result<Deployment, Problem>,
) -> Result<Deployment, Problem> {
    for _ in 0..5 {
        let d = existing(state, tenant, id).await?;
        let stats = state.store.deployment_stats(&d).await?;
        let new = action(&d, &stats)?;
        if let Some(stored) = crate::deployments::store_change(state, &d, new).await? {
            state.deployments.wake();
            return Ok(stored);
        }
    }
    Err(Problem::new(
        StatusCode::CONFLICT,
        "conflict",
        "the deployment kept changing; try again",
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/deployments/{id}/pause",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Paused: no device is notified until it is resumed", body = DeploymentDto),
        (status = 403, description = "Lacks deployments_control", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not running or scheduled", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn pause_deployment(
    State(state): State<AppState>,
    auth: Authorized<need::DeploymentsControl>,
    Path(id): Path<String>,
) -> Result<Json<DeploymentDto>, Problem> {
    let now = state.clock.now();
    let d = act(&state, auth.principal.tenant_id, &id, |d, _| {
        d.pause(now).map_err(not_allowed)
    })
    .await?;
    Ok(Json(full_dto(&state, d).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeDeployment {
    /// Carry on with another artifact (id or `NAME@VERSION`): a fixed release. Devices that
    /// failed get fresh attempts with it.
    pub artifact: Option<String>,
    /// Give devices that failed fresh attempts (implied by `artifact`).
    pub retry_failed: Option<bool>,
}

#[utoipa::path(
    post,
    path = "/api/v1/deployments/{id}/resume",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id (UUID)")),
    request_body(content = Option<ResumeDeployment>, description = "Optional: a fixed artifact, retrying failed devices"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Running again; failures so far no longer count against thresholds", body = DeploymentDto),
        (status = 403, description = "Lacks deployments_control", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment or artifact", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not paused", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn resume_deployment(
    State(state): State<AppState>,
    auth: Authorized<need::DeploymentsControl>,
    Path(id): Path<String>,
    body: Option<Json<ResumeDeployment>>,
) -> Result<Json<DeploymentDto>, Problem> {
    let tenant = auth.principal.tenant_id;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let artifact = match &body.artifact {
        Some(a) => Some(artifact_by_ref(&state, tenant, a).await?),
        None => None,
    };
    let retry = body.retry_failed.unwrap_or(false) || artifact.is_some();
    let now = state.clock.now();
    if retry {
        // While it is still paused (the scheduler leaves it alone): failed devices get fresh
        // attempts first, so the failures the resume accepts are the ones left after that.
        let d = existing(&state, tenant, &id).await?;
        if d.state != DeploymentState::Paused {
            return Err(not_allowed(
                tender_core::deployment::DeploymentError::NotAllowed {
                    from: d.state,
                    action: "resumed",
                },
            ));
        }
        retry_failed(&state, &d).await?;
    }
    let d = act(&state, tenant, &id, |d, stats| {
        let failures: Vec<u32> = stats.iter().map(|s| s.failed).collect();
        let mut new = d.resume(&failures, now).map_err(not_allowed)?;
        if let Some(a) = &artifact {
            new.artifact_id = a.id;
        }
        Ok(new)
    })
    .await?;
    Ok(Json(full_dto(&state, d).await?))
}

async fn retry_failed(state: &AppState, d: &Deployment) -> Result<(), Problem> {
    let now = state.clock.now();
    for s in [TargetState::Failed, TargetState::RolledBack] {
        let mut page =
            tender_core::page::PageRequest::first(tender_core::page::PageLimit::default());
        loop {
            let p = state
                .store
                .deployment_targets(d.tenant_id, d.id, Some(s), &page)
                .await?;
            for t in &p.items {
                if let Some(n) = t.retry(now) {
                    state.store.update_deployment_target(t, &n).await?;
                }
            }
            match p.next {
                Some(n) => page.after = Some(n),
                None => break,
            }
        }
    }
    state.deployments.wake();
    Ok(())
}

#[utoipa::path(
    post,
    path = "/api/v1/deployments/{id}/cancel",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Canceled: devices not yet installing stop; those installing finish or roll back", body = DeploymentDto),
        (status = 403, description = "Lacks deployments_control", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already finished", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_deployment(
    State(state): State<AppState>,
    auth: Authorized<need::DeploymentsControl>,
    Path(id): Path<String>,
) -> Result<Json<DeploymentDto>, Problem> {
    let now = state.clock.now();
    let d = act(&state, auth.principal.tenant_id, &id, |d, _| {
        d.cancel(now).map_err(not_allowed)
    })
    .await?;
    crate::deployments::cancel_pending(&state, &d).await?;
    Ok(Json(full_dto(&state, d).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    /// The phase to approve, 1-based.
    pub phase: u32,
}

#[utoipa::path(
    post,
    path = "/api/v1/deployments/{id}/approve",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id (UUID)")),
    request_body = Approve,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Approved: the phase starts when it is ready", body = DeploymentDto),
        (status = 400, description = "No such phase, or it needs no approval", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks deployments_control", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already finished", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn approve_phase(
    State(state): State<AppState>,
    auth: Authorized<need::DeploymentsControl>,
    Path(id): Path<String>,
    Json(body): Json<Approve>,
) -> Result<Json<DeploymentDto>, Problem> {
    let now = state.clock.now();
    if body.phase == 0 {
        return Err(invalid(
            "invalid-field",
            "phase: phases are numbered from 1",
        ));
    }
    let d = act(&state, auth.principal.tenant_id, &id, |d, _| {
        d.approve(body.phase - 1, now).map_err(not_allowed)
    })
    .await?;
    Ok(Json(full_dto(&state, d).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/deployments",
    tag = "deployments",
    params(("id" = String, Path, description = "Device id (UUID)"), PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The device's part in each deployment, newest first", body = TargetPage),
        (status = 400, description = "Invalid id, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn device_deployments(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<TargetPage>, Problem> {
    let tenant = auth.principal.tenant_id;
    let device: DeviceId = parse_id(&id)?;
    state
        .store
        .device(tenant, device)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no device {device}")))?;
    let page = cursor::page_request::<DeploymentId>(
        DEVICE_DEPLOYMENTS_CURSOR,
        q.limit,
        q.cursor.as_deref(),
    )?;
    let page = state
        .store
        .device_deployment_targets(tenant, device, &page)
        .await?;
    Ok(Json(TargetPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page
            .next
            .map(|id| cursor::encode(DEVICE_DEPLOYMENTS_CURSOR, id)),
    }))
}
