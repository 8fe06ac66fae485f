//! The device twin: `GET /api/v1/devices/{id}/twin` and the device layer of configuration,
//! `PUT`/`PATCH /api/v1/devices/{id}/twin/desired`.
//!
//! Writes are compare-and-set on the desired version: with `If-Match: "N"` a stale version is
//! `412 Precondition Failed`; with `?expected_version=N` it is `409 Conflict`. Without either,
//! a `PATCH` merges into whatever is current (retried on races, never lost) and a `PUT`
//! replaces it. The response carries the new version as the `ETag`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tender_core::config::LayerSource;
use tender_core::twin::{self, Document, TwinError};
use tender_core::{DeviceId, TenantId, Timestamp};
use utoipa::{IntoParams, ToSchema};

use crate::api::parse_id;
use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::state::AppState;

/// A versioned document.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionedDocument {
    #[schema(value_type = Object)]
    pub document: Document,
    pub version: u64,
    /// When it last changed (absent: never written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// Where an effective value came from.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceDto {
    /// `fleet`, `group` or `device`.
    pub layer: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl From<&LayerSource> for SourceDto {
    fn from(s: &LayerSource) -> Self {
        match s {
            LayerSource::Fleet => SourceDto {
                layer: "fleet",
                group_id: None,
                group: None,
            },
            LayerSource::Group { group_id, group } => SourceDto {
                layer: "group",
                group_id: Some(group_id.to_string()),
                group: Some(group.clone()),
            },
            LayerSource::Device => SourceDto {
                layer: "device",
                group_id: None,
                group: None,
            },
        }
    }
}

/// The effective configuration: what the device is sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct EffectiveDto {
    #[schema(value_type = Object)]
    pub document: Document,
    /// The version the device is sent with it; grows whenever the document changes.
    pub version: u64,
    /// The layer each value came from, by JSON Pointer.
    pub sources: BTreeMap<String, SourceDto>,
}

/// A device's twin.
#[derive(Debug, Serialize, ToSchema)]
pub struct TwinDto {
    pub device_id: String,
    /// The device's own configuration layer (what `PUT`/`PATCH .../twin/desired` write).
    pub desired: VersionedDocument,
    /// What the device reported.
    pub reported: VersionedDocument,
    /// Fleet, group and device layers merged.
    pub effective: EffectiveDto,
    /// What the device has not done yet: effective values not equal in `reported`.
    #[schema(value_type = Object)]
    pub delta: Document,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct WriteParams {
    /// The desired version this write was based on; a different current version is a
    /// `409 Conflict`.
    pub expected_version: Option<u64>,
}

fn rfc3339(t: Option<Timestamp>) -> Option<String> {
    t.map(|t| t.to_rfc3339())
}

async fn existing_device(
    state: &AppState,
    tenant: TenantId,
    id: &str,
) -> Result<DeviceId, Problem> {
    let id: DeviceId = parse_id(id)?;
    match state.store.device(tenant, id).await? {
        Some(_) => Ok(id),
        None => Err(Problem::not_found(format!("device {id} does not exist"))),
    }
}

async fn twin_view(state: &AppState, tenant: TenantId, id: DeviceId) -> Result<TwinDto, Problem> {
    let eff = crate::twin::effective(state, tenant, id).await?;
    let delta = twin::delta(&eff.rendered.document, &eff.twin.reported);
    Ok(TwinDto {
        device_id: id.to_string(),
        desired: VersionedDocument {
            document: eff.twin.desired,
            version: eff.twin.desired_version,
            updated_at: rfc3339(eff.twin.desired_at),
        },
        reported: VersionedDocument {
            document: eff.twin.reported,
            version: eff.twin.reported_version,
            updated_at: rfc3339(eff.twin.reported_at),
        },
        effective: EffectiveDto {
            sources: eff
                .rendered
                .sources
                .iter()
                .map(|(k, v)| (k.clone(), v.into()))
                .collect(),
            document: eff.rendered.document,
            version: eff.version,
        },
        delta,
    })
}

fn with_etag(view: TwinDto) -> Response {
    let etag = format!("\"{}\"", view.desired.version);
    let mut resp = Json(view).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// The version an `If-Match` header names: `"7"`, `W/"7"` or `7`; `*` means any.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = raw
        .to_str()
        .map_err(|_| Problem::bad_request("invalid-if-match", "If-Match is not ASCII"))?
        .trim();
    if text == "*" {
        return Ok(None);
    }
    let bare = text.trim_start_matches("W/").trim_matches('"');
    bare.parse::<u64>().map(Some).map_err(|_| {
        Problem::bad_request(
            "invalid-if-match",
            format!(
                "If-Match must name a version such as \"7\" (the ETag of GET .../twin), not {text}"
            ),
        )
    })
}

/// The precondition of a write: which version it expects, and how a mismatch is answered.
#[derive(Debug, Clone, Copy)]
pub struct Precondition {
    pub expected: Option<u64>,
    /// `If-Match` (412) rather than `expected_version` (409).
    pub by_header: bool,
}

impl Precondition {
    pub fn from_request(headers: &HeaderMap, params: &WriteParams) -> Result<Self, Problem> {
        let header = if_match(headers)?;
        if header.is_some()
            && params.expected_version.is_some()
            && header != params.expected_version
        {
            return Err(Problem::bad_request(
                "invalid-precondition",
                "If-Match and expected_version name different versions; send one",
            ));
        }
        Ok(Precondition {
            expected: header.or(params.expected_version),
            by_header: header.is_some(),
        })
    }

    pub fn mismatch(&self, expected: u64, actual: u64, what: &str) -> Problem {
        let detail = format!(
            "{what} is at version {actual}, not {expected}: someone else changed it; read it again and reapply your change"
        );
        if self.by_header {
            Problem::new(StatusCode::PRECONDITION_FAILED, "version-mismatch", detail)
        } else {
            Problem::new(StatusCode::CONFLICT, "version-mismatch", detail)
        }
    }
}

pub fn document_problem(what: &str, e: TwinError) -> Problem {
    match e {
        TwinError::TooLarge { .. } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "document-too-large",
            format!("{what}: {e} (the server's twin.max_document_bytes)"),
        ),
        e => Problem::bad_request("invalid-document", format!("{what}: {e}")),
    }
}

/// Writes the device layer: `edit` turns the current document into the new one.
async fn write_desired(
    state: &AppState,
    tenant: TenantId,
    id: DeviceId,
    pre: Precondition,
    edit: impl Fn(&Document) -> Document,
) -> Result<Response, Problem> {
    for _ in 0..8 {
        let current = state.store.twin(tenant, id).await?;
        if let Some(expected) = pre.expected
            && expected != current.desired_version
        {
            return Err(pre.mismatch(expected, current.desired_version, "the desired state"));
        }
        let next = edit(&current.desired);
        if next == current.desired {
            return Ok(with_etag(twin_view(state, tenant, id).await?));
        }
        twin::validate(&next, state.twin_limits)
            .map_err(|e| document_problem("desired state", e))?;
        let written = state
            .store
            .write_desired(
                tenant,
                id,
                current.desired_version,
                &next,
                state.clock.now(),
            )
            .await?;
        if let Some(version) = written {
            crate::events::emit(
                state,
                crate::events::device_event(
                    state,
                    tenant,
                    id,
                    tender_core::event::EventKind::TwinDesiredChanged,
                )
                .with("version", version),
            )
            .await;
            crate::twin::propagate(state, tenant, crate::twin::Affected::Devices(vec![id]));
            return Ok(with_etag(twin_view(state, tenant, id).await?));
        }
        // Someone wrote in between: with a precondition that is a conflict, without one
        // apply the change again to what is there now.
        if let Some(expected) = pre.expected {
            let now = state.store.twin(tenant, id).await?.desired_version;
            return Err(pre.mismatch(expected, now, "the desired state"));
        }
    }
    Err(Problem::new(
        StatusCode::CONFLICT,
        "version-mismatch",
        "the desired state kept changing under this write; retry",
    ))
}

fn parse_body(what: &str, body: &[u8], state: &AppState) -> Result<Document, Problem> {
    twin::parse_document(body, state.twin_limits).map_err(|e| document_problem(what, e))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/twin",
    tag = "twin",
    params(("id" = String, Path, description = "Device id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The twin; ETag is the desired version", body = TwinDto),
        (status = 400, description = "Invalid id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_twin(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let tenant = auth.principal.tenant_id;
    let id = existing_device(&state, tenant, &id).await?;
    Ok(with_etag(twin_view(&state, tenant, id).await?))
}

#[utoipa::path(
    put,
    path = "/api/v1/devices/{id}/twin/desired",
    tag = "twin",
    params(("id" = String, Path, description = "Device id (UUID)"), WriteParams,
        ("If-Match" = Option<String>, Header, description = "The desired version read (ETag); a stale one is 412")),
    request_body(content = Object, description = "The whole desired document"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The twin after the write", body = TwinDto),
        (status = 400, description = "Not a JSON object, bad keys, or too deep", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks twin_write", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "expected_version is stale", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is stale", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Larger than twin.max_document_bytes", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_desired(
    State(state): State<AppState>,
    auth: Authorized<need::TwinWrite>,
    Path(id): Path<String>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let tenant = auth.principal.tenant_id;
    let id = existing_device(&state, tenant, &id).await?;
    let pre = Precondition::from_request(&headers, &params)?;
    let doc = parse_body("desired state", &body, &state)?;
    write_desired(&state, tenant, id, pre, |_| doc.clone()).await
}

#[utoipa::path(
    patch,
    path = "/api/v1/devices/{id}/twin/desired",
    tag = "twin",
    params(("id" = String, Path, description = "Device id (UUID)"), WriteParams,
        ("If-Match" = Option<String>, Header, description = "The desired version read (ETag); a stale one is 412")),
    request_body(content = Object, description = "A JSON merge patch (RFC 7396): null removes a key"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The twin after the write", body = TwinDto),
        (status = 400, description = "Not a JSON object, bad keys, or too deep", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks twin_write", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "expected_version is stale", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is stale", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The result is larger than twin.max_document_bytes", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn patch_desired(
    State(state): State<AppState>,
    auth: Authorized<need::TwinWrite>,
    Path(id): Path<String>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let tenant = auth.principal.tenant_id;
    let id = existing_device(&state, tenant, &id).await?;
    let pre = Precondition::from_request(&headers, &params)?;
    let patch = parse_body("merge patch", &body, &state)?;
    write_desired(&state, tenant, id, pre, |current| {
        let mut next = current.clone();
        twin::merge_patch(&mut next, &patch);
        next
    })
    .await
}
