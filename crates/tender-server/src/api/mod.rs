//! The HTTP surface: routes, middleware stack and the OpenAPI document.
//!
//! Invariants: every `/api/v1` handler takes an [`Authorized`](crate::auth::Authorized)
//! extractor; every error leaves as problem JSON; the OpenAPI document lists every `/api/v1`
//! operation (a test compares it with the router).

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::Serialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::config::HttpConfig;
use crate::problem::{Problem, problem_for_plain_errors};
use crate::state::AppState;

pub mod alerts;
pub mod artifacts;
pub mod commands;
pub mod config;
pub mod connections;
pub mod cursor;
pub mod deployments;
pub mod devices;
pub mod enrollment;
pub mod events;
pub mod groups;
pub mod inventory;
pub mod logs;
pub mod search;
pub mod tags;
pub mod telemetry;
pub mod twin;
pub mod webhooks;
pub mod whoami;

/// A path segment as an id, or `400 invalid-id` naming the kind of id expected.
pub fn parse_id<T>(s: &str) -> Result<T, Problem>
where
    T: std::str::FromStr<Err = tender_core::ids::InvalidId>,
{
    s.parse()
        .map_err(|e: tender_core::ids::InvalidId| Problem::bad_request("invalid-id", e.to_string()))
}

/// Checks a name-like field (names, device types): `400 invalid-field` naming the field.
pub fn check_label(field: &str, value: &str) -> Result<(), Problem> {
    tender_core::device::validate_device_name(value)
        .map_err(|e| Problem::bad_request("invalid-field", format!("{field}: {e}")))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tender API",
        description = "Fleet management for Linux devices. Errors are RFC 9457 problem JSON.",
        license(name = "Apache-2.0"),
    ),
    paths(
        devices::list_devices,
        devices::get_device,
        devices::patch_device,
        devices::preauthorize,
        devices::accept_device,
        devices::reject_device,
        devices::decommission_device,
        devices::revoke_certificates,
        devices::accept_pending,
        inventory::get_inventory,
        search::count_devices,
        groups::create_group,
        groups::list_groups,
        groups::get_group,
        groups::update_group,
        groups::delete_group,
        groups::add_members,
        groups::remove_members,
        tags::set_tag,
        tags::delete_tag,
        twin::get_twin,
        twin::put_desired,
        twin::patch_desired,
        config::device_config,
        config::list_layers,
        config::get_fleet,
        config::put_fleet,
        config::patch_fleet,
        config::delete_fleet,
        config::get_group_layer,
        config::put_group_layer,
        config::patch_group_layer,
        config::delete_group_layer,
        connections::list_connections,
        connections::issue_credential,
        connections::delete_credential,
        telemetry::latest,
        telemetry::range,
        telemetry::device_series,
        telemetry::fleet_series,
        enrollment::create_token,
        enrollment::list_tokens,
        enrollment::revoke_token,
        enrollment::set_enrollment,
        events::list_events,
        events::stream_events,
        whoami::whoami,
        commands::send_command,
        commands::list_commands,
        commands::get_command,
        commands::command_devices,
        commands::cancel_command,
        commands::device_commands,
        artifacts::upload_artifact,
        artifacts::list_artifacts,
        artifacts::get_artifact,
        artifacts::delete_artifact,
        artifacts::download_artifact,
        artifacts::list_signing_keys,
        artifacts::add_signing_key,
        artifacts::delete_signing_key,
        deployments::preview_deployment,
        deployments::create_deployment,
        deployments::list_deployments,
        deployments::get_deployment,
        deployments::deployment_devices,
        deployments::pause_deployment,
        deployments::resume_deployment,
        deployments::cancel_deployment,
        deployments::approve_phase,
        deployments::device_deployments,
        alerts::create_rule,
        alerts::list_rules,
        alerts::get_rule,
        alerts::update_rule,
        alerts::delete_rule,
        alerts::list_alerts,
        alerts::get_alert,
        alerts::ack_alert,
        logs::create_log_request,
        logs::list_log_requests,
        logs::get_log_request,
        logs::log_content,
        logs::follow_logs,
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth),
    tags(
        (name = "devices", description = "The device registry and device lifecycle"),
        (name = "telemetry", description = "Time series sent by devices"),
        (name = "groups", description = "Static and dynamic device groups"),
        (name = "twin", description = "Desired and reported device state"),
        (name = "config", description = "Layered configuration: fleet, group and device values"),
        (name = "enrollment", description = "How devices join: enrollment tokens and the tenant's policy"),
        (name = "events", description = "What happened to devices and groups, as a log and a live stream"),
        (name = "operators", description = "Who is calling"),
        (name = "commands", description = "Commands sent to devices, their per-device status and results"),
        (name = "artifacts", description = "Signed software artifacts and the keys trusted to sign them"),
        (name = "deployments", description = "Phased rollouts of artifacts to devices"),
        (name = "alerts", description = "Alert rules and the alerts they raise"),
        (name = "logs", description = "Logs fetched from devices, and followed live"),
    ),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, with the server's version.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(webhooks::WebhooksDoc::openapi());
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// Builds the whole HTTP application.
pub fn router(state: AppState, http: &HttpConfig) -> Router {
    let api = Router::new()
        .route(
            "/devices",
            get(devices::list_devices).post(devices::preauthorize),
        )
        .route("/devices/accept-pending", post(devices::accept_pending))
        .route("/devices/count", get(search::count_devices))
        .route(
            "/groups",
            get(groups::list_groups).post(groups::create_group),
        )
        .route(
            "/groups/{id}",
            get(groups::get_group)
                .patch(groups::update_group)
                .delete(groups::delete_group),
        )
        .route("/groups/{id}/members", post(groups::add_members))
        .route("/groups/{id}/members/remove", post(groups::remove_members))
        .route(
            "/devices/{id}",
            get(devices::get_device).patch(devices::patch_device),
        )
        .route("/devices/{id}/accept", post(devices::accept_device))
        .route("/devices/{id}/reject", post(devices::reject_device))
        .route(
            "/devices/{id}/decommission",
            post(devices::decommission_device),
        )
        .route(
            "/devices/{id}/revoke-certificates",
            post(devices::revoke_certificates),
        )
        .route(
            "/devices/{id}/connections",
            get(connections::list_connections),
        )
        .route("/devices/{id}/inventory", get(inventory::get_inventory))
        .route("/devices/{id}/twin", get(twin::get_twin))
        .route(
            "/devices/{id}/twin/desired",
            put(twin::put_desired).patch(twin::patch_desired),
        )
        .route("/devices/{id}/config", get(config::device_config))
        .route("/config", get(config::list_layers))
        .route(
            "/config/fleet",
            get(config::get_fleet)
                .put(config::put_fleet)
                .patch(config::patch_fleet)
                .delete(config::delete_fleet),
        )
        .route(
            "/config/groups/{id}",
            get(config::get_group_layer)
                .put(config::put_group_layer)
                .patch(config::patch_group_layer)
                .delete(config::delete_group_layer),
        )
        .route(
            "/devices/{id}/tags/{key}",
            put(tags::set_tag).delete(tags::delete_tag),
        )
        .route("/devices/{id}/telemetry", get(telemetry::latest))
        .route("/devices/{id}/telemetry/{metric}", get(telemetry::range))
        .route(
            "/devices/{id}/telemetry/{metric}/series",
            get(telemetry::device_series),
        )
        .route("/telemetry/series", get(telemetry::fleet_series))
        .route(
            "/devices/{id}/credentials",
            post(connections::issue_credential).delete(connections::delete_credential),
        )
        .route(
            "/enrollment-tokens",
            get(enrollment::list_tokens).post(enrollment::create_token),
        )
        .route("/enrollment-tokens/{id}", delete(enrollment::revoke_token))
        .route("/tenant/enrollment", put(enrollment::set_enrollment))
        .route("/events", get(events::list_events))
        .route("/events/stream", get(events::stream_events))
        .route("/whoami", get(whoami::whoami))
        .route(
            "/commands",
            get(commands::list_commands).post(commands::send_command),
        )
        .route("/commands/{id}", get(commands::get_command))
        .route("/commands/{id}/devices", get(commands::command_devices))
        .route("/commands/{id}/cancel", post(commands::cancel_command))
        .route("/devices/{id}/commands", get(commands::device_commands))
        .route(
            "/signing-keys",
            get(artifacts::list_signing_keys).post(artifacts::add_signing_key),
        )
        .route(
            "/signing-keys/{key_id}",
            delete(artifacts::delete_signing_key),
        )
        .route("/artifacts", get(artifacts::list_artifacts))
        .route(
            "/artifacts/{id}",
            get(artifacts::get_artifact).delete(artifacts::delete_artifact),
        )
        .route(
            "/deployments",
            get(deployments::list_deployments).post(deployments::create_deployment),
        )
        .route(
            "/deployments/preview",
            post(deployments::preview_deployment),
        )
        .route("/deployments/{id}", get(deployments::get_deployment))
        .route(
            "/deployments/{id}/devices",
            get(deployments::deployment_devices),
        )
        .route(
            "/deployments/{id}/pause",
            post(deployments::pause_deployment),
        )
        .route(
            "/deployments/{id}/resume",
            post(deployments::resume_deployment),
        )
        .route(
            "/deployments/{id}/cancel",
            post(deployments::cancel_deployment),
        )
        .route(
            "/deployments/{id}/approve",
            post(deployments::approve_phase),
        )
        .route(
            "/devices/{id}/deployments",
            get(deployments::device_deployments),
        )
        .merge(webhooks::routes())
        .route(
            "/alert-rules",
            get(alerts::list_rules).post(alerts::create_rule),
        )
        .route(
            "/alert-rules/{id}",
            get(alerts::get_rule)
                .patch(alerts::update_rule)
                .delete(alerts::delete_rule),
        )
        .route("/alerts", get(alerts::list_alerts))
        .route("/alerts/{id}", get(alerts::get_alert))
        .route("/alerts/{id}/ack", post(alerts::ack_alert))
        .route(
            "/devices/{id}/logs",
            get(logs::list_log_requests).post(logs::create_log_request),
        )
        .route("/logs/{id}", get(logs::get_log_request))
        .route("/logs/{id}/content", get(logs::log_content))
        .route("/openapi.json", get(openapi_json))
        // Body limits and the request time-out cover every route added above; the artifact
        // routes below stream large bodies and bound them themselves (size, idle time).
        .layer(DefaultBodyLimit::max(http.body_limit_bytes))
        .layer(RequestBodyLimitLayer::new(http.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(http.request_timeout_secs.max(1)),
        ))
        .route(
            "/artifacts",
            post(artifacts::upload_artifact).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/artifacts/{id}/download",
            get(artifacts::download_artifact),
        )
        .route("/logs/{id}/follow", get(logs::follow_logs));

    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        // Innermost first (after the API's own body limits and time-out): panics, metrics,
        // tracing, request ids, and last (outermost) the rewrite of any remaining plain error
        // into problem JSON.
        .layer(CatchPanicLayer::new())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::from_fn(problem_for_plain_errors))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!("no such resource: {}", uri.path())).with_instance(uri.path())
}

async fn openapi_json() -> Response {
    axum::Json(openapi()).into_response()
}

#[derive(Serialize, ToSchema)]
struct Health {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<&'static str>,
}

/// Liveness: the process answers.
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok",
        database: None,
    })
}

/// Readiness: the store answers within 3 s.
async fn readyz(State(state): State<AppState>) -> Result<axum::Json<Health>, Problem> {
    match tokio::time::timeout(Duration::from_secs(3), state.store.ping()).await {
        Ok(Ok(())) => Ok(axum::Json(Health {
            status: "ready",
            database: Some(state.store.backend().as_str()),
        })),
        Ok(Err(e)) => Err(Problem::unavailable(format!("not ready: {e}"))),
        Err(_) => Err(Problem::unavailable(
            "not ready: the database did not answer within 3 s",
        )),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
