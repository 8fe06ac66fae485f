//! Alerts: `/api/v1/alert-rules` (create with the condition text, list, show, change name,
//! severity or enabled, delete) and `/api/v1/alerts` (list with filters, show, acknowledge).
//!
//! Writes need `alerts_manage`, reads `devices_read`. The engine (`crate::alerts`) does the
//! firing and resolving; here a rule's text is checked (`400 invalid-condition` pointing at the
//! problem) and an acknowledgement is recorded by compare-and-set (`409` when the alert is no
//! longer firing). Deleting a rule resolves its open alerts; their history stays.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tender_core::alert::{
    Alert, AlertRule, AlertState, Scope, Severity, parse_condition, validate_rule_name,
};
use tender_core::event::EventKind;
use tender_core::{AlertId, AlertRuleId, DeviceId, GroupId, TenantId};
use tender_store::AlertFilter;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::{cursor, parse_id};
use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::state::AppState;

const RULES_CURSOR: &str = "alr1:";
const ALERTS_CURSOR: &str = "al1:";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRule {
    /// Unique in the tenant, 1-128 characters.
    pub name: String,
    /// `info`, `warning` (default) or `critical`.
    pub severity: Option<String>,
    /// e.g. `temperature > 80 for 5m`, `cpu >= 0.9 for 30s clear < 0.5`, `offline for 10m`,
    /// `update failed`, `reported.battery.level < 20` (see docs/alerts.md).
    pub condition: String,
    /// Only members of this group (name or id). At most one of `group` and `query`; neither
    /// means every device.
    pub group: Option<String>,
    /// Only devices matching this device query (see docs/queries.md).
    pub query: Option<String>,
    /// Default true.
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRule {
    pub name: Option<String>,
    pub severity: Option<String>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RuleDto {
    #[schema(format = Uuid)]
    pub id: String,
    pub name: String,
    pub severity: String,
    /// The canonical condition text (with its clear level).
    pub condition: String,
    /// `all`, `group:<id>` or `query:<device query>`.
    pub scope: String,
    pub enabled: bool,
    pub created_by: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<AlertRule> for RuleDto {
    fn from(r: AlertRule) -> Self {
        RuleDto {
            id: r.id.to_string(),
            name: r.name,
            severity: r.severity.as_str().to_owned(),
            condition: r.condition.to_string(),
            scope: r.scope.to_text(),
            enabled: r.enabled,
            created_by: r.created_by,
            created_at: r.created_at.to_rfc3339(),
            updated_at: r.updated_at.to_rfc3339(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RulePage {
    pub items: Vec<RuleDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertDto {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(format = Uuid)]
    pub rule_id: String,
    pub rule_name: String,
    #[schema(format = Uuid)]
    pub device_id: String,
    pub severity: String,
    /// `firing`, `acknowledged` or `resolved`.
    pub state: String,
    #[schema(format = DateTime)]
    pub fired_at: String,
    /// The metric's value when it fired (or resolved), for threshold rules.
    pub value: Option<f64>,
    pub reason: String,
    pub acknowledged_at: Option<String>,
    pub acknowledged_by: Option<String>,
    pub ack_note: Option<String>,
    pub resolved_at: Option<String>,
    pub resolve_reason: Option<String>,
}

impl From<Alert> for AlertDto {
    fn from(a: Alert) -> Self {
        AlertDto {
            id: a.id.to_string(),
            rule_id: a.rule_id.to_string(),
            rule_name: a.rule_name,
            device_id: a.device_id.to_string(),
            severity: a.severity.as_str().to_owned(),
            state: a.state.as_str().to_owned(),
            fired_at: a.fired_at.to_rfc3339(),
            value: a.value,
            reason: a.reason,
            acknowledged_at: a.acknowledged_at.map(|t| t.to_rfc3339()),
            acknowledged_by: a.acknowledged_by,
            ack_note: a.ack_note,
            resolved_at: a.resolved_at.map(|t| t.to_rfc3339()),
            resolve_reason: a.resolve_reason,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertPage {
    pub items: Vec<AlertDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PageQuery {
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AlertQuery {
    /// `firing`, `acknowledged`, `resolved`, or `open` (firing or acknowledged).
    pub state: Option<String>,
    /// `info`, `warning` or `critical`.
    pub severity: Option<String>,
    /// Only this device's alerts.
    pub device: Option<String>,
    /// Only this rule's alerts.
    pub rule: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Why, or what is being done (at most 4096 bytes).
    #[serde(default)]
    pub note: String,
}

fn severity(s: &str) -> Result<Severity, Problem> {
    Severity::parse(s).ok_or_else(|| {
        Problem::bad_request(
            "invalid-field",
            format!("severity: {s:?} is not one of info, warning, critical"),
        )
    })
}

fn name(s: &str) -> Result<String, Problem> {
    validate_rule_name(s)
        .map_err(|e| Problem::bad_request("invalid-field", format!("name: {e}")))?;
    Ok(s.to_owned())
}

async fn scope(
    state: &AppState,
    tenant: TenantId,
    group: Option<&str>,
    query: Option<&str>,
) -> Result<Scope, Problem> {
    match (group, query) {
        (Some(_), Some(_)) => Err(Problem::bad_request(
            "invalid-field",
            "give at most one of group and query",
        )),
        (None, None) => Ok(Scope::All),
        (Some(g), None) => {
            let groups = state.store.groups(tenant).await?;
            let by_id = g.parse::<GroupId>().ok();
            groups
                .iter()
                .find(|x| Some(x.id) == by_id || x.name.as_str() == g)
                .map(|x| Scope::Group(x.id))
                .ok_or_else(|| {
                    Problem::bad_request("invalid-field", format!("group: no group {g:?}"))
                })
        }
        (None, Some(q)) => {
            let parsed = crate::api::search::parse_query(q)?;
            // Refuse a query the store cannot evaluate (unknown group names, ...).
            crate::api::search::to_filter(state, tenant, &parsed, state.clock.now()).await?;
            Ok(Scope::Query(parsed.to_string()))
        }
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/alert-rules",
    tag = "alerts",
    request_body = CreateRule,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The rule, evaluated from now on", body = RuleDto),
        (status = 400, description = "Invalid name, severity, condition or scope", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks alerts_manage", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A rule with this name exists", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_rule(
    State(state): State<AppState>,
    auth: Authorized<need::AlertsManage>,
    Json(body): Json<CreateRule>,
) -> Result<(StatusCode, Json<RuleDto>), Problem> {
    let tenant = auth.principal.tenant_id;
    let name = name(&body.name)?;
    let severity = severity(body.severity.as_deref().unwrap_or("warning"))?;
    let condition = parse_condition(&body.condition).map_err(|e| {
        Problem::bad_request(
            "invalid-condition",
            format!("{e} (in the condition {:?})", body.condition),
        )
    })?;
    let scope = scope(&state, tenant, body.group.as_deref(), body.query.as_deref()).await?;
    let now = state.clock.now();
    let rule = AlertRule {
        id: AlertRuleId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        name,
        severity,
        scope,
        condition,
        enabled: body.enabled.unwrap_or(true),
        created_at: now,
        updated_at: now,
        created_by: Some(auth.principal.username.clone()),
    };
    state.store.create_alert_rule(&rule).await?;
    Ok((StatusCode::CREATED, Json(rule.into())))
}

#[utoipa::path(
    get,
    path = "/api/v1/alert-rules",
    tag = "alerts",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rules, newest first", body = RulePage),
        (status = 400, description = "Invalid limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_rules(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Query(q): Query<PageQuery>,
) -> Result<Json<RulePage>, Problem> {
    let page = cursor::page_request::<AlertRuleId>(RULES_CURSOR, q.limit, q.cursor.as_deref())?;
    let page = state
        .store
        .list_alert_rules(auth.principal.tenant_id, &page)
        .await?;
    Ok(Json(RulePage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next.map(|id| cursor::encode(RULES_CURSOR, id)),
    }))
}

async fn existing_rule(state: &AppState, tenant: TenantId, id: &str) -> Result<AlertRule, Problem> {
    let id: AlertRuleId = parse_id(id)?;
    state
        .store
        .alert_rule(tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no alert rule {id}")))
}

#[utoipa::path(
    get,
    path = "/api/v1/alert-rules/{id}",
    tag = "alerts",
    params(("id" = String, Path, description = "Alert rule id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The rule", body = RuleDto),
        (status = 400, description = "Not a rule id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_rule(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
) -> Result<Json<RuleDto>, Problem> {
    Ok(Json(
        existing_rule(&state, auth.principal.tenant_id, &id)
            .await?
            .into(),
    ))
}

#[utoipa::path(
    patch,
    path = "/api/v1/alert-rules/{id}",
    tag = "alerts",
    params(("id" = String, Path, description = "Alert rule id (UUID)")),
    request_body = UpdateRule,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed rule (disabling it resolves its open alerts)", body = RuleDto),
        (status = 400, description = "Invalid id, name or severity", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks alerts_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A rule with this name exists", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_rule(
    State(state): State<AppState>,
    auth: Authorized<need::AlertsManage>,
    Path(id): Path<String>,
    Json(body): Json<UpdateRule>,
) -> Result<Json<RuleDto>, Problem> {
    let mut rule = existing_rule(&state, auth.principal.tenant_id, &id).await?;
    if let Some(n) = &body.name {
        rule.name = name(n)?;
    }
    if let Some(s) = &body.severity {
        rule.severity = severity(s)?;
    }
    if let Some(e) = body.enabled {
        rule.enabled = e;
    }
    rule.updated_at = state.clock.now();
    state.store.update_alert_rule(&rule).await?;
    Ok(Json(rule.into()))
}

#[utoipa::path(
    delete,
    path = "/api/v1/alert-rules/{id}",
    tag = "alerts",
    params(("id" = String, Path, description = "Alert rule id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted; its open alerts are resolved, its history kept"),
        (status = 400, description = "Not a rule id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks alerts_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_rule(
    State(state): State<AppState>,
    auth: Authorized<need::AlertsManage>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id: AlertRuleId = parse_id(&id)?;
    let now = state.clock.now();
    let resolved = state
        .store
        .delete_alert_rule(auth.principal.tenant_id, id, now, "the rule was deleted")
        .await?;
    for a in &resolved {
        crate::events::emit(
            &state,
            crate::alerts::event_for(a, EventKind::AlertResolved, now),
        )
        .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "alerts",
    params(AlertQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Alerts, newest first", body = AlertPage),
        (status = 400, description = "Invalid filter, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_alerts(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Query(q): Query<AlertQuery>,
) -> Result<Json<AlertPage>, Problem> {
    let mut filter = AlertFilter::default();
    match q.state.as_deref() {
        None => {}
        Some("open") => filter.open = true,
        Some(s) => {
            filter.state = Some(AlertState::parse(s).ok_or_else(|| {
                Problem::bad_request(
                    "invalid-parameter",
                    format!("state: {s:?} is not one of firing, acknowledged, resolved, open"),
                )
            })?);
        }
    }
    if let Some(s) = q.severity.as_deref() {
        filter.severity = Some(severity(s)?);
    }
    if let Some(d) = q.device.as_deref() {
        filter.device = Some(parse_id::<DeviceId>(d)?);
    }
    if let Some(r) = q.rule.as_deref() {
        filter.rule = Some(parse_id::<AlertRuleId>(r)?);
    }
    let page = cursor::page_request::<AlertId>(ALERTS_CURSOR, q.limit, q.cursor.as_deref())?;
    let page = state
        .store
        .list_alerts(auth.principal.tenant_id, &filter, &page)
        .await?;
    Ok(Json(AlertPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next.map(|id| cursor::encode(ALERTS_CURSOR, id)),
    }))
}

async fn existing_alert(state: &AppState, tenant: TenantId, id: &str) -> Result<Alert, Problem> {
    let id: AlertId = parse_id(id)?;
    state
        .store
        .alert(tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no alert {id}")))
}

#[utoipa::path(
    get,
    path = "/api/v1/alerts/{id}",
    tag = "alerts",
    params(("id" = String, Path, description = "Alert id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The alert", body = AlertDto),
        (status = 400, description = "Not an alert id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such alert", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_alert(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
) -> Result<Json<AlertDto>, Problem> {
    Ok(Json(
        existing_alert(&state, auth.principal.tenant_id, &id)
            .await?
            .into(),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/alerts/{id}/ack",
    tag = "alerts",
    params(("id" = String, Path, description = "Alert id (UUID)")),
    request_body = AckRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Acknowledged; it resolves when its condition clears", body = AlertDto),
        (status = 400, description = "Not an alert id, or the note is too long", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks alerts_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such alert", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already acknowledged, or resolved", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ack_alert(
    State(state): State<AppState>,
    auth: Authorized<need::AlertsManage>,
    Path(id): Path<String>,
    Json(body): Json<AckRequest>,
) -> Result<Json<AlertDto>, Problem> {
    let tenant = auth.principal.tenant_id;
    let mut alert = existing_alert(&state, tenant, &id).await?;
    let from = alert.state;
    let now = state.clock.now();
    alert
        .acknowledge(&auth.principal.username, &body.note, now)
        .map_err(|e| match e {
            tender_core::alert::AlertError::NoteTooLong => {
                Problem::bad_request("invalid-field", format!("note: {e}"))
            }
            e => Problem::new(StatusCode::CONFLICT, "alert-state", e.to_string()),
        })?;
    if !state.store.update_alert(&alert, from).await? {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "alert-state",
            "the alert changed meanwhile (it resolved or was acknowledged); read it again",
        ));
    }
    crate::events::emit(
        &state,
        crate::alerts::event_for(&alert, EventKind::AlertAcknowledged, now),
    )
    .await;
    Ok(Json(alert.into()))
}
