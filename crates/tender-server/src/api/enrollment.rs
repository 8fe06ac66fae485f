//! Enrollment tokens: `POST/GET /api/v1/enrollment-tokens`, `DELETE .../{id}`; and the tenant's
//! switch for token-less enrollment, `PUT /api/v1/tenant/enrollment`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tender_core::TokenId;
use tender_core::enrollment::EnrollmentToken;
use utoipa::{IntoParams, ToSchema};

use crate::api::{check_label, cursor, parse_id};
use crate::auth::{Authorized, ENROLLMENT_TOKEN_PREFIX, mint, need};
use crate::problem::Problem;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    /// What the token is for, e.g. "factory line 3".
    pub name: String,
    /// Seconds until the token stops working (default: never).
    pub expires_in_secs: Option<u64>,
    /// How many devices may enroll with it (default: unlimited).
    pub max_uses: Option<u32>,
    /// Device type given to devices that enroll with it and do not name one.
    pub device_type: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentTokenDto {
    pub id: String,
    pub name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    pub max_uses: Option<u32>,
    pub uses: u32,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
    pub device_type: Option<String>,
    /// Whether a device could enroll with it now.
    pub usable: bool,
}

impl EnrollmentTokenDto {
    fn from_token(t: EnrollmentToken, now: tender_core::Timestamp) -> Self {
        EnrollmentTokenDto {
            usable: t.check(now).is_ok(),
            id: t.id.to_string(),
            name: t.name,
            created_at: t.created_at.to_rfc3339(),
            expires_at: t.expires_at.map(|x| x.to_rfc3339()),
            max_uses: t.max_uses,
            uses: t.uses,
            revoked_at: t.revoked_at.map(|x| x.to_rfc3339()),
            device_type: t.device_type,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEnrollmentToken {
    /// The token to give devices. Shown only in this answer; only its hash is stored.
    pub token: String,
    #[serde(flatten)]
    pub info: EnrollmentTokenDto,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentTokenPage {
    pub items: Vec<EnrollmentTokenDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

const MAX_TOKEN_LIFETIME_SECS: u64 = 10 * 365 * 86_400;

#[utoipa::path(
    post,
    path = "/api/v1/enrollment-tokens",
    tag = "enrollment",
    request_body = CreateEnrollmentToken,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; the token is in this answer only", body = CreatedEnrollmentToken),
        (status = 400, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_enroll", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_token(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesEnroll>,
    Json(body): Json<CreateEnrollmentToken>,
) -> Result<(StatusCode, Json<CreatedEnrollmentToken>), Problem> {
    check_label("name", &body.name)?;
    if let Some(t) = &body.device_type {
        check_label("device_type", t)?;
    }
    if body.max_uses == Some(0) {
        return Err(Problem::bad_request(
            "invalid-field",
            "max_uses must be at least 1 (leave it out for unlimited)",
        ));
    }
    let now = state.clock.now();
    let expires_at = match body.expires_in_secs {
        None => None,
        Some(s) if (1..=MAX_TOKEN_LIFETIME_SECS).contains(&s) => {
            Some(now.plus_millis(i64::try_from(s * 1000).unwrap_or(i64::MAX)))
        }
        Some(_) => {
            return Err(Problem::bad_request(
                "invalid-field",
                format!("expires_in_secs must be between 1 and {MAX_TOKEN_LIFETIME_SECS}"),
            ));
        }
    };
    let minted = mint(ENROLLMENT_TOKEN_PREFIX, &state.token_key);
    let token = EnrollmentToken {
        id: minted.id,
        tenant_id: auth.principal.tenant_id,
        name: body.name,
        secret_hash: minted.secret_hash,
        created_at: now,
        expires_at,
        max_uses: body.max_uses,
        uses: 0,
        revoked_at: None,
        device_type: body.device_type,
    };
    state.store.create_enrollment_token(&token).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedEnrollmentToken {
            token: minted.plaintext,
            info: EnrollmentTokenDto::from_token(token, now),
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/enrollment-tokens",
    tag = "enrollment",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of enrollment tokens (never their secrets)", body = EnrollmentTokenPage),
        (status = 400, description = "Invalid limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_enroll", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_tokens(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesEnroll>,
    Query(q): Query<PageQuery>,
) -> Result<Json<EnrollmentTokenPage>, Problem> {
    let page = cursor::page_request::<TokenId>("t1:", q.limit, q.cursor.as_deref())?;
    let page = state
        .store
        .list_enrollment_tokens(auth.principal.tenant_id, &page)
        .await?;
    let now = state.clock.now();
    Ok(Json(EnrollmentTokenPage {
        items: page
            .items
            .into_iter()
            .map(|t| EnrollmentTokenDto::from_token(t, now))
            .collect(),
        next_cursor: page.next.map(|id| cursor::encode("t1:", id)),
    }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/enrollment-tokens/{id}",
    tag = "enrollment",
    params(("id" = String, Path, description = "Token id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked: devices can no longer enroll with it"),
        (status = 400, description = "Not a token id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_enroll", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No unrevoked token with this id", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_token(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesEnroll>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id: TokenId = parse_id(&id)?;
    state
        .store
        .revoke_enrollment_token(auth.principal.tenant_id, id, state.clock.now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentSetting {
    /// Whether devices may ask to join without a token (they wait as `pending`).
    pub open: bool,
}

#[utoipa::path(
    put,
    path = "/api/v1/tenant/enrollment",
    tag = "enrollment",
    request_body = EnrollmentSetting,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The setting now in force", body = EnrollmentSetting),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks tenant_manage", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn set_enrollment(
    State(state): State<AppState>,
    auth: Authorized<need::TenantManage>,
    Json(body): Json<EnrollmentSetting>,
) -> Result<Json<EnrollmentSetting>, Problem> {
    state
        .store
        .set_enrollment_open(auth.principal.tenant_id, body.open)
        .await?;
    Ok(Json(body))
}
