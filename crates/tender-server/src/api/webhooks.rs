//! Webhooks: `/api/v1/webhooks` (create, list, show, update, delete, rotate the secret), the
//! delivery log (`/webhooks/{id}/deliveries`), redelivery and test pings. Every route needs
//! `webhooks_manage`.
//!
//! **Invariant:** a webhook's secret appears only in the answers that create it and rotate it.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tender_core::webhook::{
    Delivery, KindFilter, TEST_KIND, Webhook, WebhookError, WebhookSecret, WebhookUrl, body,
    validate_name,
};
use tender_core::{DeliveryId, TenantId, WebhookId};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::{cursor, parse_id};
use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::state::AppState;

const WEBHOOKS_CURSOR: &str = "wh1:";
const DELIVERIES_CURSOR: &str = "whd1:";

/// The routes, merged into `/api/v1` by [`super::router`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks", get(list_webhooks).post(create_webhook))
        .route(
            "/webhooks/{id}",
            get(get_webhook)
                .patch(update_webhook)
                .delete(delete_webhook),
        )
        .route("/webhooks/{id}/rotate-secret", post(rotate_secret))
        .route("/webhooks/{id}/test", post(test_webhook))
        .route("/webhooks/{id}/deliveries", get(list_deliveries))
        .route(
            "/webhooks/{id}/deliveries/{delivery}/redeliver",
            post(redeliver),
        )
}

/// The part of the OpenAPI document these routes add.
#[derive(OpenApi)]
#[openapi(
    paths(
        create_webhook,
        list_webhooks,
        get_webhook,
        update_webhook,
        delete_webhook,
        rotate_secret,
        test_webhook,
        list_deliveries,
        redeliver,
    ),
    tags((name = "webhooks", description = "HTTP endpoints that receive the server's events, signed, with retries and a delivery log")),
)]
pub struct WebhooksDoc;

/// A webhook. `secret` is present only when the webhook was just created or its secret rotated.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDto {
    pub id: String,
    pub name: String,
    pub url: String,
    /// Event kind patterns: dotted names (`device.created`), families (`alert.*`) or `*`.
    pub events: Vec<String>,
    pub enabled: bool,
    /// The signing secret (`whsec_...`): shown once; keep it where the endpoint can read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl WebhookDto {
    fn from(w: Webhook, with_secret: bool) -> Self {
        WebhookDto {
            id: w.id.to_string(),
            name: w.name,
            url: w.url.to_string(),
            events: w.filter.patterns().to_vec(),
            enabled: w.enabled,
            secret: with_secret.then(|| w.secret.as_str().to_owned()),
            created_at: w.created_at.to_rfc3339(),
            updated_at: w.updated_at.to_rfc3339(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookPage {
    pub items: Vec<WebhookDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// 1-128 characters.
    pub name: String,
    /// Absolute `http` or `https` URL without credentials.
    pub url: String,
    /// Event kind patterns (default `["*"]`: every event).
    pub events: Option<Vec<String>>,
    /// Default true.
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    pub name: Option<String>,
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// One event (or test ping) for the webhook, with its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDto {
    pub id: String,
    pub webhook_id: String,
    /// The event delivered (absent for a test ping).
    pub event_id: Option<u64>,
    pub kind: String,
    /// `pending`, `succeeded`, `failed` (another attempt is due) or `dead` (no more attempts).
    pub state: String,
    pub attempts: u32,
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    /// The endpoint's HTTP status at the last attempt (absent when it did not answer).
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The JSON body sent.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl From<Delivery> for DeliveryDto {
    fn from(d: Delivery) -> Self {
        DeliveryDto {
            id: d.id.to_string(),
            webhook_id: d.webhook_id.to_string(),
            event_id: d.event_id,
            kind: d.kind,
            state: d.state.as_str().to_owned(),
            attempts: d.attempts,
            next_attempt_at: d
                .state
                .is_queued()
                .then_some(d.next_attempt_at)
                .flatten()
                .map(|t| t.to_rfc3339()),
            last_status: d.last_status,
            last_error: d.last_error,
            created_at: d.created_at.to_rfc3339(),
            updated_at: d.updated_at.to_rfc3339(),
            payload: serde_json::from_str(&d.body).unwrap_or(serde_json::Value::String(d.body)),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryDto>,
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

fn invalid(field: &str, e: WebhookError) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-field",
        format!("{field}: {e}"),
    )
}

fn new_secret() -> Result<WebhookSecret, Problem> {
    let bytes: [u8; 32] = rand::random();
    WebhookSecret::from_random(&bytes).map_err(Problem::internal)
}

async fn existing(state: &AppState, tenant: TenantId, id: &str) -> Result<Webhook, Problem> {
    let id: WebhookId = parse_id(id)?;
    state
        .store
        .webhook(tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no webhook {id}")))
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    request_body = NewWebhook,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered; the answer holds the secret, shown this once", body = WebhookDto),
        (status = 403, description = "Lacks webhooks_manage", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad name, URL or event pattern", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_webhook(
    State(state): State<AppState>,
    auth: Authorized<need::WebhooksManage>,
    Json(body): Json<NewWebhook>,
) -> Result<(StatusCode, Json<WebhookDto>), Problem> {
    validate_name(&body.name).map_err(|e| invalid("name", e))?;
    let url = WebhookUrl::parse(&body.url).map_err(|e| invalid("url", e))?;
    let filter = match &body.events {
        None => KindFilter::all(),
        Some(p) => KindFilter::new(p).map_err(|e| invalid("events", e))?,
    };
    let now = state.clock.now();
    let w = Webhook {
        id: WebhookId::from_uuid(uuid::Uuid::now_v7()),
        tenant_id: auth.principal.tenant_id,
        name: body.name,
        url,
        filter,
        enabled: body.enabled.unwrap_or(true),
        secret: new_secret()?,
        created_at: now,
        updated_at: now,
    };
    state.store.create_webhook(&w).await?;
    tracing::info!(webhook = %w.id, url = %w.url, "webhook registered");
    state.webhooks.wake();
    Ok((StatusCode::CREATED, Json(WebhookDto::from(w, true))))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Webhooks, oldest first (without secrets)", body = WebhookPage),
        (status = 400, description = "Invalid limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks webhooks_manage", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_webhooks(
    State(state): State<AppState>,
    auth: Authorized<need::WebhooksManage>,
    Query(q): Query<PageQuery>,
) -> Result<Json<WebhookPage>, Problem> {
    let page = cursor::page_request::<WebhookId>(WEBHOOKS_CURSOR, q.limit, q.cursor.as_deref())?;
    let page = state
        .store
        .list_webhooks(auth.principal.tenant_id, &page)
        .await?;
    Ok(Json(WebhookPage {
        items: page
            .items
            .into_iter()
            .map(|w| WebhookDto::from(w, false))
            .collect(),
        next_cursor: page.next.map(|id| cursor::encode(WEBHOOKS_CURSOR, id)),
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The webhook (without its secret)", body = WebhookDto),
        (status = 400, description = "Not a webhook id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks webhooks_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_webhook(
    State(state): State<AppState>,
    auth: Authorized<need::WebhooksManage>,
    Path(id): Path<String>,
) -> Result<Json<WebhookDto>, Problem> {
    let w = existing(&state, auth.principal.tenant_id, &id).await?;
    Ok(Json(WebhookDto::from(w, false)))
}

#[utoipa::path(
    patch,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id (UUID)")),
    request_body = WebhookPatch,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed", body = WebhookDto),
        (status = 400, description = "Not a webhook id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks webhooks_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad name, URL or event pattern", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_webhook(
    State(state): State<AppState>,
    auth: Authorized<need::WebhooksManage>,
    Path(id): Path<String>,
    Json(body): Json<WebhookPatch>,
) -> Result<Json<WebhookDto>, Problem> {
    let mut w = existing(&state, auth.principal.tenant_id, &id).await?;
    if let Some(name) = body.name {
        validate_name(&name).map_err(|e| invalid("name", e))?;
        w.name = name;
    }
    if let Some(url) = body.url {
        w.url = WebhookUrl::parse(&url).map_err(|e| invalid("url", e))?;
    }
    if let Some(p) = body.events {
        w.filter = KindFilter::new(&p).map_err(|e| invalid("events", e))?;
    }
    if let Some(enabled) = body.enabled {
        w.enabled = enabled;
    }
    w.updated_at = state.clock.now();
    state.store.update_webhook(&w).await?;
    state.webhooks.wake();
    Ok(Json(WebhookDto::from(w, false)))
}

#[utoipa::path(
    delete,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted, with its delivery log"),
        (status = 400, description = "Not a webhook id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks webhooks_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_webhook(
    State(state): State<AppState>,
    auth: Authorized<need::WebhooksManage>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id: WebhookId = parse_id(&id)?;
    state
        .store
        .delete_webhook(auth.principal.tenant_id, id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A new secret signs every attempt from now on; the answer holds it, shown this once", body = WebhookDto),
        (status = 400, description = "Not a webhook id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks webhooks_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    auth: Authorized<need::WebhooksManage>,
    Path(id): Path<String>,
) -> Result<Json<WebhookDto>, Problem> {
    let mut w = existing(&state, auth.principal.tenant_id, &id).await?;
    w.secret = new_secret()?;
    w.updated_at = state.clock.now();
    state.store.update_webhook(&w).await?;
    tracing::info!(webhook = %w.id, "webhook secret rotated");
    Ok(Json(WebhookDto::from(w, true)))
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/test",
    tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "A `webhook.test` ping is queued; follow it in the delivery log", body = DeliveryDto),
        (status = 400, description = "Not a webhook id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks webhooks_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The webhook is disabled", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn test_webhook(
    State(state): State<AppState>,
    auth: Authorized<need::WebhooksManage>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeliveryDto>), Problem> {
    let w = existing(&state, auth.principal.tenant_id, &id).await?;
    if !w.enabled {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "webhook-disabled",
            format!(
                "webhook {} is disabled; enable it first (PATCH with \"enabled\": true)",
                w.id
            ),
        ));
    }
    let now = state.clock.now();
    let mut data = serde_json::Map::new();
    data.insert("webhook".into(), w.id.to_string().into());
    let text = body(None, TEST_KIND, now, w.tenant_id, None, None, &data);
    let d = Delivery::new(
        DeliveryId::from_uuid(uuid::Uuid::now_v7()),
        &w,
        None,
        TEST_KIND,
        text,
        now,
    );
    state.store.insert_delivery(&d).await?;
    state.webhooks.wake();
    Ok((StatusCode::ACCEPTED, Json(d.into())))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id (UUID)"), PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The delivery log, newest first", body = DeliveryPage),
        (status = 400, description = "Not a webhook id, or an invalid limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks webhooks_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    auth: Authorized<need::WebhooksManage>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<DeliveryPage>, Problem> {
    let w = existing(&state, auth.principal.tenant_id, &id).await?;
    let page = cursor::page_request::<DeliveryId>(DELIVERIES_CURSOR, q.limit, q.cursor.as_deref())?;
    let page = state
        .store
        .list_deliveries(w.tenant_id, w.id, &page)
        .await?;
    Ok(Json(DeliveryPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next.map(|id| cursor::encode(DELIVERIES_CURSOR, id)),
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/deliveries/{delivery}/redeliver",
    tag = "webhooks",
    params(
        ("id" = String, Path, description = "Webhook id (UUID)"),
        ("delivery" = String, Path, description = "Delivery id (UUID)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Queued again, attempts counted afresh", body = DeliveryDto),
        (status = 400, description = "Not a webhook or delivery id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks webhooks_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook or delivery", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The delivery is already pending", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn redeliver(
    State(state): State<AppState>,
    auth: Authorized<need::WebhooksManage>,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<(StatusCode, Json<DeliveryDto>), Problem> {
    let w = existing(&state, auth.principal.tenant_id, &id).await?;
    let delivery: DeliveryId = parse_id(&delivery)?;
    let d = tender_store::redeliver(
        &*state.store,
        w.tenant_id,
        w.id,
        delivery,
        state.clock.now(),
    )
    .await?;
    state.webhooks.wake();
    Ok((StatusCode::ACCEPTED, Json(d.into())))
}
