//! Device commands: `/api/v1/commands` (send, list, show, per-device status, cancel) and
//! `/api/v1/devices/{id}/commands`.
//!
//! A command's targets are fixed when it is sent: a group or query is resolved then (accepted
//! devices only), and the command goes at once to the targets that are connected; the others
//! get it when they connect (see `crate::commands`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tender_core::command::{Command, CommandName, CommandState, Limits, Summary, Target};
use tender_core::device::DeviceState;
use tender_core::page::{PageLimit, PageRequest};
use tender_core::{CommandId, DeviceId};
use tender_store::DeviceFilter;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::{cursor, parse_id};
use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::state::AppState;

/// Most devices one command may target.
pub const MAX_TARGETS: usize = 10_000;

/// Which devices: exactly one of the fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// One device id.
    #[schema(format = Uuid)]
    pub device: Option<String>,
    /// A list of device ids.
    pub devices: Option<Vec<String>>,
    /// A static or dynamic group, by name.
    pub group: Option<String>,
    /// A device query (see docs/queries.md).
    pub query: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendCommand {
    /// `reboot`, `restart-agent`, `ping`, or a custom command the devices allow.
    pub name: String,
    /// At most 32 arguments of at most 1024 bytes (custom commands that allow arguments).
    pub args: Option<Vec<String>>,
    pub target: TargetSpec,
    /// Time to live (default 86400, at most 30 days): not sent after, unfinished targets expire.
    pub ttl_secs: Option<u64>,
    /// Per-attempt timeout (default 300).
    pub timeout_secs: Option<u64>,
    /// Attempts per device (default 3, at most 10).
    pub max_attempts: Option<u32>,
}

/// Counts of the command's devices per state.
#[derive(Debug, Serialize, ToSchema)]
pub struct SummaryDto {
    pub total: u64,
    pub queued: u64,
    pub sent: u64,
    pub delivered: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub expired: u64,
    pub canceled: u64,
    /// Not finished yet (queued + sent + delivered).
    pub pending: u64,
    /// No device is pending.
    pub done: bool,
}

impl From<Summary> for SummaryDto {
    fn from(s: Summary) -> Self {
        SummaryDto {
            pending: s.pending(),
            done: s.is_done(),
            total: s.total,
            queued: s.queued,
            sent: s.sent,
            delivered: s.delivered,
            succeeded: s.succeeded,
            failed: s.failed,
            timed_out: s.timed_out,
            expired: s.expired,
            canceled: s.canceled,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommandDto {
    #[schema(format = Uuid)]
    pub id: String,
    pub name: String,
    pub args: Vec<String>,
    /// How the devices were chosen.
    pub target: String,
    pub created_by: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    pub timeout_secs: u64,
    pub max_attempts: u32,
    pub summary: SummaryDto,
}

fn command_dto(c: Command, s: Summary) -> CommandDto {
    CommandDto {
        id: c.id.to_string(),
        name: c.name.to_string(),
        args: c.args,
        target: c.target,
        created_by: c.created_by,
        created_at: c.created_at.to_rfc3339(),
        expires_at: c.expires_at.to_rfc3339(),
        timeout_secs: c.timeout_secs,
        max_attempts: c.max_attempts,
        summary: s.into(),
    }
}

/// One device's copy of a command.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetDto {
    #[schema(format = Uuid)]
    pub command_id: String,
    #[schema(format = Uuid)]
    pub device_id: String,
    /// queued, sent, delivered, succeeded, failed, timed_out, expired, canceled.
    pub state: String,
    pub attempts: u32,
    pub sent_at: Option<String>,
    pub delivered_at: Option<String>,
    pub finished_at: Option<String>,
    pub updated_at: String,
    pub exit_code: Option<i32>,
    /// At most 64 KiB each.
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    /// Structured output (`ping`'s diagnostics).
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    /// Why the device could not run it.
    pub error: Option<String>,
}

impl From<Target> for TargetDto {
    fn from(t: Target) -> Self {
        let o = t.outcome;
        TargetDto {
            command_id: t.command_id.to_string(),
            device_id: t.device_id.to_string(),
            state: t.state.to_string(),
            attempts: t.attempts,
            sent_at: t.sent_at.map(|x| x.to_rfc3339()),
            delivered_at: t.delivered_at.map(|x| x.to_rfc3339()),
            finished_at: t.finished_at.map(|x| x.to_rfc3339()),
            updated_at: t.updated_at.to_rfc3339(),
            exit_code: o.as_ref().and_then(|o| o.exit_code),
            stdout: o.as_ref().map(|o| o.stdout.clone()),
            stderr: o.as_ref().map(|o| o.stderr.clone()),
            output: o
                .as_ref()
                .and_then(|o| o.output.as_deref())
                .and_then(|s| serde_json::from_str(s).ok()),
            error: o.and_then(|o| o.error),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommandPage {
    pub items: Vec<CommandDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TargetPage {
    pub items: Vec<TargetDto>,
    pub next_cursor: Option<String>,
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
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only devices in this state.
    pub state: Option<String>,
}

const COMMANDS_CURSOR: &str = "c1:";
const TARGETS_CURSOR: &str = "ct1:";
const DEVICE_COMMANDS_CURSOR: &str = "dc1:";

fn invalid(code: &str, e: impl std::fmt::Display) -> Problem {
    Problem::bad_request(code, e.to_string())
}

/// The devices a target names (accepted ones, at most `max`), and how to describe it.
pub(crate) async fn resolve(
    state: &AppState,
    tenant: tender_core::TenantId,
    spec: TargetSpec,
    max: usize,
) -> Result<(Vec<DeviceId>, String), Problem> {
    let (devices, what) = resolve_devices(state, tenant, spec, max, false).await?;
    Ok((devices.iter().map(|d| d.id).collect(), what))
}

/// [`resolve`], with the device records. `allow_empty`: a group or query that matches no
/// device now is not an error (a continuous deployment waits for devices to join).
pub(crate) async fn resolve_devices(
    state: &AppState,
    tenant: tender_core::TenantId,
    spec: TargetSpec,
    max: usize,
    allow_empty: bool,
) -> Result<(Vec<tender_core::device::Device>, String), Problem> {
    let given = [
        spec.device.is_some(),
        spec.devices.is_some(),
        spec.group.is_some(),
        spec.query.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given != 1 {
        return Err(invalid(
            "invalid-target",
            "target needs exactly one of device, devices, group or query",
        ));
    }
    let explicit = |ids: Vec<String>| -> Result<Vec<DeviceId>, Problem> {
        if ids.len() > max {
            return Err(invalid(
                "too-many-targets",
                format!("at most {max} devices at once"),
            ));
        }
        ids.iter().map(|s| parse_id::<DeviceId>(s)).collect()
    };
    let (ids, query, what) = if let Some(d) = spec.device {
        (
            Some(explicit(vec![d.clone()])?),
            None,
            format!("device {d}"),
        )
    } else if let Some(ds) = spec.devices {
        let n = ds.len();
        (Some(explicit(ds)?), None, format!("{n} devices"))
    } else if let Some(g) = spec.group {
        let groups = state.store.groups(tenant).await?;
        if !groups.iter().any(|x| x.name.as_str() == g) {
            return Err(Problem::not_found(format!("no group named {g:?}")));
        }
        let text = format!("group = {}", serde_json::Value::String(g.clone()));
        (None, Some(text), format!("group {g:?}"))
    } else {
        let q = spec.query.unwrap_or_default();
        (None, Some(q.clone()), format!("query {q}"))
    };
    let devices = match (ids, query) {
        (Some(ids), _) => {
            let mut found = Vec::with_capacity(ids.len());
            for id in &ids {
                let d = state
                    .store
                    .device(tenant, *id)
                    .await?
                    .ok_or_else(|| Problem::not_found(format!("no device {id}")))?;
                if d.state != DeviceState::Accepted {
                    return Err(Problem::new(
                        StatusCode::CONFLICT,
                        "device-not-accepted",
                        format!(
                            "device {id} is {}: only accepted devices can be targets",
                            d.state
                        ),
                    ));
                }
                if !found
                    .iter()
                    .any(|x: &tender_core::device::Device| x.id == d.id)
                {
                    found.push(d);
                }
            }
            found
        }
        (None, Some(text)) => {
            let query = crate::api::search::parse_query(&text)?;
            let filter = DeviceFilter {
                state: Some(DeviceState::Accepted),
                matching: Some(
                    crate::api::search::to_filter(state, tenant, &query, state.clock.now()).await?,
                ),
            };
            let mut out = Vec::new();
            // 1000 is within PageLimit's range.
            let mut page = PageRequest::first(PageLimit::max());
            loop {
                let p = state.store.list_devices(tenant, &filter, &page).await?;
                out.extend(p.items);
                if out.len() > max {
                    return Err(invalid(
                        "too-many-targets",
                        format!("the target matches more than {max} devices"),
                    ));
                }
                match p.next {
                    Some(n) => page.after = Some(n),
                    None => break,
                }
            }
            out
        }
        (None, None) => Vec::new(),
    };
    if devices.is_empty() && !allow_empty {
        return Err(invalid(
            "no-targets",
            format!("{what} names no accepted device"),
        ));
    }
    Ok((devices, what))
}

#[utoipa::path(
    post,
    path = "/api/v1/commands",
    tag = "commands",
    request_body = SendCommand,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Sent to the connected devices, queued for the others", body = CommandDto),
        (status = 400, description = "Invalid name, arguments, limits or target; no device matched", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks commands_send", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device or group", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A named device is not accepted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn send_command(
    State(state): State<AppState>,
    auth: Authorized<need::CommandsSend>,
    Json(body): Json<SendCommand>,
) -> Result<(StatusCode, Json<CommandDto>), Problem> {
    let tenant = auth.principal.tenant_id;
    let name = CommandName::parse(&body.name).map_err(|e| invalid("invalid-command", e))?;
    let args = body.args.unwrap_or_default();
    tender_core::command::validate_args(&args).map_err(|e| invalid("invalid-command", e))?;
    let limits = Limits::new(body.ttl_secs, body.timeout_secs, body.max_attempts)
        .map_err(|e| invalid("invalid-field", e))?;
    let (devices, target) = resolve(&state, tenant, body.target, MAX_TARGETS).await?;
    let now = state.clock.now();
    let ttl_ms = i64::try_from(limits.ttl_secs * 1000).unwrap_or(i64::MAX);
    let command = Command {
        id: CommandId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        name,
        args,
        target,
        created_by: Some(auth.principal.username.clone()),
        created_at: now,
        expires_at: now.plus_millis(ttl_ms),
        timeout_secs: limits.timeout_secs,
        max_attempts: limits.max_attempts,
    };
    state.store.create_command(&command, &devices).await?;
    let sent = crate::commands::dispatch_new(&state, &command, &devices).await?;
    tracing::info!(command = %command.id, name = %command.name, devices = devices.len(), sent, "command sent");
    let summary = state.store.command_summary(tenant, command.id).await?;
    Ok((StatusCode::CREATED, Json(command_dto(command, summary))))
}

async fn existing(
    state: &AppState,
    tenant: tender_core::TenantId,
    id: &str,
) -> Result<Command, Problem> {
    let id: CommandId = parse_id(id)?;
    state
        .store
        .command(tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no command {id}")))
}

#[utoipa::path(
    get,
    path = "/api/v1/commands",
    tag = "commands",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Commands, newest first, each with its summary", body = CommandPage),
        (status = 400, description = "Invalid limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_commands(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Query(q): Query<PageQuery>,
) -> Result<Json<CommandPage>, Problem> {
    let tenant = auth.principal.tenant_id;
    let page = cursor::page_request::<CommandId>(COMMANDS_CURSOR, q.limit, q.cursor.as_deref())?;
    let page = state.store.list_commands(tenant, &page).await?;
    let mut items = Vec::with_capacity(page.items.len());
    for c in page.items {
        let s = state.store.command_summary(tenant, c.id).await?;
        items.push(command_dto(c, s));
    }
    Ok(Json(CommandPage {
        items,
        next_cursor: page.next.map(|id| cursor::encode(COMMANDS_CURSOR, id)),
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/commands/{id}",
    tag = "commands",
    params(("id" = String, Path, description = "Command id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The command and its summary", body = CommandDto),
        (status = 400, description = "Not a command id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such command", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_command(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
) -> Result<Json<CommandDto>, Problem> {
    let tenant = auth.principal.tenant_id;
    let c = existing(&state, tenant, &id).await?;
    let s = state.store.command_summary(tenant, c.id).await?;
    Ok(Json(command_dto(c, s)))
}

#[utoipa::path(
    get,
    path = "/api/v1/commands/{id}/devices",
    tag = "commands",
    params(("id" = String, Path, description = "Command id (UUID)"), TargetQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Per-device status and results, by device id", body = TargetPage),
        (status = 400, description = "Invalid id, state, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such command", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn command_devices(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
    Query(q): Query<TargetQuery>,
) -> Result<Json<TargetPage>, Problem> {
    let tenant = auth.principal.tenant_id;
    let c = existing(&state, tenant, &id).await?;
    let filter = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(CommandState::parse(s).ok_or_else(|| {
            invalid(
                "invalid-state",
                format!(
                    "state {s:?} is not one of queued, sent, delivered, succeeded, failed, timed_out, expired, canceled"
                ),
            )
        })?),
    };
    let page = cursor::page_request::<DeviceId>(TARGETS_CURSOR, q.limit, q.cursor.as_deref())?;
    let page = state
        .store
        .command_targets(tenant, c.id, filter, &page)
        .await?;
    Ok(Json(TargetPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next.map(|id| cursor::encode(TARGETS_CURSOR, id)),
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/commands/{id}/cancel",
    tag = "commands",
    params(("id" = String, Path, description = "Command id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every unfinished device is canceled; the command with its summary", body = CommandDto),
        (status = 400, description = "Not a command id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks commands_send", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such command", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_command(
    State(state): State<AppState>,
    auth: Authorized<need::CommandsSend>,
    Path(id): Path<String>,
) -> Result<Json<CommandDto>, Problem> {
    let tenant = auth.principal.tenant_id;
    let c = existing(&state, tenant, &id).await?;
    let n = state
        .store
        .cancel_command(tenant, c.id, state.clock.now())
        .await?;
    tracing::info!(command = %c.id, canceled = n, "command canceled");
    let s = state.store.command_summary(tenant, c.id).await?;
    Ok(Json(command_dto(c, s)))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/commands",
    tag = "commands",
    params(("id" = String, Path, description = "Device id (UUID)"), PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The device's commands, newest first, with its status and result", body = TargetPage),
        (status = 400, description = "Invalid id, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn device_commands(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<TargetPage>, Problem> {
    let tenant = auth.principal.tenant_id;
    let id: DeviceId = parse_id(&id)?;
    state
        .store
        .device(tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no device {id}")))?;
    let page =
        cursor::page_request::<CommandId>(DEVICE_COMMANDS_CURSOR, q.limit, q.cursor.as_deref())?;
    let page = state
        .store
        .device_command_targets(tenant, id, &page)
        .await?;
    Ok(Json(TargetPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page
            .next
            .map(|id| cursor::encode(DEVICE_COMMANDS_CURSOR, id)),
    }))
}
