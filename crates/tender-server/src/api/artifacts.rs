//! Artifacts and signing keys: `/api/v1/artifacts` (upload, list, show, delete, download) and
//! `/api/v1/signing-keys` (the public keys the tenant trusts to sign artifacts).
//!
//! An upload is streamed to a staging file (never held in memory), read completely and checked
//! (layout, manifest, every size and hash, signatures against the tenant's trusted keys), and
//! only then stored and recorded. Downloads stream the file with `Range` support, so an
//! interrupted download resumes where it stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tender_core::artifact::{Artifact, TrustedKey, validate_key_name};
use tender_core::{ArtifactId, TenantId};
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::{cursor, parse_id};
use crate::artifacts::{Location, key};
use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::state::AppState;

/// Bytes read from an artifact file per body chunk of a download.
const DOWNLOAD_CHUNK: usize = 256 * 1024;
const ARTIFACTS_CURSOR: &str = "art1:";

/// An artifact as the server checked and stored it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactDto {
    #[schema(format = Uuid)]
    pub id: String,
    pub name: String,
    pub version: String,
    /// The update module that installs it.
    pub payload_type: String,
    /// Device types it installs on.
    pub compatible: Vec<String>,
    pub depends: BTreeMap<String, String>,
    pub provides: BTreeMap<String, String>,
    /// Bytes to download.
    pub size: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Uncompressed payload bytes.
    pub payload_bytes: u64,
    /// Trusted keys whose signatures verified at upload.
    pub signed_by: Vec<String>,
    /// The signed manifest.
    #[schema(value_type = Object)]
    pub manifest: serde_json::Value,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub created_by: Option<String>,
}

impl From<Artifact> for ArtifactDto {
    fn from(a: Artifact) -> Self {
        ArtifactDto {
            id: a.id.to_string(),
            manifest: serde_json::from_str(&a.manifest).unwrap_or(serde_json::Value::Null),
            name: a.name,
            version: a.version,
            payload_type: a.payload_type,
            compatible: a.compatible,
            depends: a.depends,
            provides: a.provides,
            size: a.size,
            sha256: a.sha256,
            payload_bytes: a.payload_bytes,
            signed_by: a.signed_by,
            created_at: a.created_at.to_rfc3339(),
            created_by: a.created_by,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactPage {
    pub items: Vec<ArtifactDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ArtifactQuery {
    /// Only artifacts with this name.
    pub name: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn invalid_artifact(e: tender_artifact::ArtifactError) -> Problem {
    use tender_artifact::ArtifactError as E;
    let code = match &e {
        E::Signature(_) => "untrusted-artifact",
        _ => "invalid-artifact",
    };
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
}

fn store_problem(e: crate::artifacts::ArtifactStoreError) -> Problem {
    Problem::internal(e)
}

/// The tenant's trusted keys, parsed. A stored key that no longer parses is skipped and logged.
async fn public_keys(
    state: &AppState,
    tenant: TenantId,
) -> Result<Vec<tender_artifact::PublicKey>, Problem> {
    let mut keys = Vec::new();
    for k in state.store.trusted_keys(tenant).await? {
        match tender_artifact::PublicKey::from_pem(&k.public_key_pem) {
            Ok(p) => keys.push(p),
            Err(e) => tracing::warn!(key_id = %k.key_id, error = %e, "unreadable trusted key"),
        }
    }
    Ok(keys)
}

#[utoipa::path(
    post,
    path = "/api/v1/artifacts",
    tag = "artifacts",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The artifact file (see docs/artifacts.md)"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Checked and stored", body = ArtifactDto),
        (status = 403, description = "Lacks artifacts_upload", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The upload stalled", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An artifact with this name and version exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than artifacts.max_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid artifact, or not signed by a trusted key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn upload_artifact(
    State(state): State<AppState>,
    auth: Authorized<need::ArtifactsUpload>,
    req: Request,
) -> Result<(StatusCode, Json<ArtifactDto>), Problem> {
    let tenant = auth.principal.tenant_id;
    let cfg = &state.artifacts_config;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "artifact-too-large",
            format!(
                "the artifact is larger than the {} bytes this server accepts (artifacts.max_bytes)",
                cfg.max_bytes
            ),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > cfg.max_bytes
    {
        return Err(too_large());
    }
    let keys = public_keys(&state, tenant).await?;
    if cfg.require_signature && keys.is_empty() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "untrusted-artifact",
            "this server requires signed artifacts and the tenant trusts no signing key yet: add the public key with `tender keys trust FILE` (POST /api/v1/signing-keys)",
        ));
    }

    // Stream the body to a staging file, hashing it.
    let staged = state.artifacts.stage().await.map_err(store_problem)?;
    let std_file = staged.reopen().map_err(Problem::internal)?;
    let mut file = tokio::io::BufWriter::new(tokio::fs::File::from_std(std_file));
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let idle = Duration::from_secs(cfg.upload_idle_timeout_secs.max(1));
    let mut body = req.into_body().into_data_stream();
    loop {
        let chunk = match tokio::time::timeout(idle, body.next()).await {
            Err(_) => {
                return Err(Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "upload-stalled",
                    format!("no data for {} s; upload again", idle.as_secs()),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(Problem::bad_request(
                    "upload-interrupted",
                    format!("the upload was interrupted: {e}"),
                ));
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        size += chunk.len() as u64;
        if size > cfg.max_bytes {
            return Err(too_large());
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(Problem::internal)?;
    }
    file.flush().await.map_err(Problem::internal)?;
    drop(file);
    let sha256: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    // Check it completely before anything is recorded.
    let path = staged.path().to_owned();
    let require = cfg.require_signature;
    let header =
        tokio::task::spawn_blocking(move || crate::artifacts::check_upload(&path, &keys, require))
            .await
            .map_err(Problem::internal)?
            .map_err(invalid_artifact)?;
    let m = &header.manifest;
    if let Some(existing) = state
        .store
        .artifact_by_version(tenant, &m.name, &m.version)
        .await?
    {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "artifact-exists",
            format!(
                "artifact {} {} exists already (id {}); give the new one another version",
                m.name, m.version, existing.id
            ),
        ));
    }
    let artifact = Artifact {
        id: ArtifactId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        name: m.name.clone(),
        version: m.version.clone(),
        payload_type: m.payload_type.clone(),
        compatible: m.compatible.clone(),
        depends: m.depends.clone(),
        provides: m.provides.clone(),
        size,
        sha256,
        payload_bytes: m.payload_bytes(),
        signed_by: header.check.trusted.clone(),
        manifest: String::from_utf8_lossy(&header.manifest_bytes).into_owned(),
        created_at: state.clock.now(),
        created_by: Some(auth.principal.username.clone()),
    };
    let file_key = key(tenant, artifact.id);
    state
        .artifacts
        .put(&file_key, staged)
        .await
        .map_err(store_problem)?;
    if let Err(e) = state.store.insert_artifact(&artifact).await {
        // Lost a race for the same name and version, or the database failed: no orphan file.
        if let Err(e) = state.artifacts.delete(&file_key).await {
            tracing::warn!(key = %file_key, error = %e, "could not remove an unrecorded artifact file");
        }
        return Err(e.into());
    }
    tracing::info!(artifact = %artifact.id, name = %artifact.name, version = %artifact.version, size, "artifact uploaded");
    Ok((StatusCode::CREATED, Json(artifact.into())))
}

#[utoipa::path(
    get,
    path = "/api/v1/artifacts",
    tag = "artifacts",
    params(ArtifactQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Artifacts, newest first", body = ArtifactPage),
        (status = 400, description = "Invalid limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks artifacts_read", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_artifacts(
    State(state): State<AppState>,
    auth: Authorized<need::ArtifactsRead>,
    Query(q): Query<ArtifactQuery>,
) -> Result<Json<ArtifactPage>, Problem> {
    let page = cursor::page_request::<ArtifactId>(ARTIFACTS_CURSOR, q.limit, q.cursor.as_deref())?;
    let page = state
        .store
        .list_artifacts(
            auth.principal.tenant_id,
            q.name.as_deref().filter(|n| !n.is_empty()),
            &page,
        )
        .await?;
    Ok(Json(ArtifactPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next.map(|id| cursor::encode(ARTIFACTS_CURSOR, id)),
    }))
}

async fn existing(state: &AppState, tenant: TenantId, id: &str) -> Result<Artifact, Problem> {
    let id: ArtifactId = parse_id(id)?;
    state
        .store
        .artifact(tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no artifact {id}")))
}

#[utoipa::path(
    get,
    path = "/api/v1/artifacts/{id}",
    tag = "artifacts",
    params(("id" = String, Path, description = "Artifact id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The artifact", body = ArtifactDto),
        (status = 400, description = "Not an artifact id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks artifacts_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such artifact", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_artifact(
    State(state): State<AppState>,
    auth: Authorized<need::ArtifactsRead>,
    Path(id): Path<String>,
) -> Result<Json<ArtifactDto>, Problem> {
    Ok(Json(
        existing(&state, auth.principal.tenant_id, &id)
            .await?
            .into(),
    ))
}

#[utoipa::path(
    delete,
    path = "/api/v1/artifacts/{id}",
    tag = "artifacts",
    params(("id" = String, Path, description = "Artifact id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted, file included"),
        (status = 400, description = "Not an artifact id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks artifacts_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such artifact", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_artifact(
    State(state): State<AppState>,
    auth: Authorized<need::ArtifactsManage>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let tenant = auth.principal.tenant_id;
    let a = existing(&state, tenant, &id).await?;
    state.store.delete_artifact(tenant, a.id).await?;
    let file_key = key(tenant, a.id);
    if let Err(e) = state.artifacts.delete(&file_key).await {
        tracing::warn!(key = %file_key, error = %e, "could not remove a deleted artifact's file");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Streams an artifact's file (with `Range`, `If-Range` and `HEAD`), or redirects to it.
pub async fn serve_artifact(
    state: &AppState,
    artifact: &Artifact,
    req: Request,
) -> Result<Response, Problem> {
    let location = state
        .artifacts
        .locate(&key(artifact.tenant_id, artifact.id))
        .await
        .map_err(store_problem)?;
    let path = match location {
        Location::Redirect(url) => {
            let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
            let v = HeaderValue::from_str(&url).map_err(Problem::internal)?;
            resp.headers_mut().insert(header::LOCATION, v);
            return Ok(resp);
        }
        Location::File(path) => path,
    };
    // 256 KiB reads: a quarter of the system calls and frames of the 64 KiB default, at
    // 256 KiB of buffer per download in flight (see docs/BENCHMARKS.md).
    let file = tower_http::services::ServeFile::new(path).with_buf_chunk_size(DOWNLOAD_CHUNK);
    let resp = tower::ServiceExt::oneshot(file, req)
        .await
        .map_err(Problem::internal)?;
    let mut resp = resp.map(Body::new);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}-{}.tender\"",
        artifact.name, artifact.version
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(digest) = hex_to_base64(&artifact.sha256)
        && let Ok(v) = HeaderValue::from_str(&format!("sha-256=:{digest}:"))
    {
        headers.insert("repr-digest", v);
    }
    Ok(resp)
}

fn hex_to_base64(hex: &str) -> Option<String> {
    use base64::Engine;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[utoipa::path(
    get,
    path = "/api/v1/artifacts/{id}/download",
    tag = "artifacts",
    params(("id" = String, Path, description = "Artifact id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The artifact file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 307, description = "Fetch it from the Location (object storage)"),
        (status = 400, description = "Not an artifact id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks artifacts_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such artifact", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "The range is outside the file"),
    )
)]
pub async fn download_artifact(
    State(state): State<AppState>,
    auth: Authorized<need::ArtifactsRead>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, Problem> {
    let a = existing(&state, auth.principal.tenant_id, &id).await?;
    serve_artifact(&state, &a, req).await
}

/// A public key the tenant trusts to sign artifacts.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrustedKeyDto {
    /// First 8 bytes of the SHA-256 of the raw key, hex: what signatures name.
    pub key_id: String,
    pub name: String,
    pub public_key_pem: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<TrustedKey> for TrustedKeyDto {
    fn from(k: TrustedKey) -> Self {
        TrustedKeyDto {
            key_id: k.key_id,
            name: k.name,
            public_key_pem: k.public_key_pem,
            created_at: k.created_at.to_rfc3339(),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTrustedKey {
    /// A name to recognise it by.
    pub name: String,
    /// An Ed25519 public key, PEM (`BEGIN PUBLIC KEY`), e.g. from `tender keys generate`.
    pub public_key_pem: String,
}

#[utoipa::path(
    get,
    path = "/api/v1/signing-keys",
    tag = "artifacts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The tenant's trusted keys, oldest first", body = Vec<TrustedKeyDto>),
        (status = 403, description = "Lacks artifacts_read", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_signing_keys(
    State(state): State<AppState>,
    auth: Authorized<need::ArtifactsRead>,
) -> Result<Json<Vec<TrustedKeyDto>>, Problem> {
    let keys = state.store.trusted_keys(auth.principal.tenant_id).await?;
    Ok(Json(keys.into_iter().map(Into::into).collect()))
}

#[utoipa::path(
    post,
    path = "/api/v1/signing-keys",
    tag = "artifacts",
    request_body = NewTrustedKey,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Trusted from now on", body = TrustedKeyDto),
        (status = 403, description = "Lacks artifacts_manage", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is trusted already", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an Ed25519 public key, or a bad name", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_signing_key(
    State(state): State<AppState>,
    auth: Authorized<need::ArtifactsManage>,
    Json(body): Json<NewTrustedKey>,
) -> Result<(StatusCode, Json<TrustedKeyDto>), Problem> {
    let unprocessable =
        |code: &str, detail: String| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail);
    validate_key_name(&body.name)
        .map_err(|e| unprocessable("invalid-field", format!("name: {e}")))?;
    let key = tender_artifact::PublicKey::from_pem(&body.public_key_pem).map_err(|e| {
        unprocessable(
            "invalid-key",
            format!("public_key_pem: {e}; give the `.pub` file `tender keys generate` wrote"),
        )
    })?;
    let record = TrustedKey {
        tenant_id: auth.principal.tenant_id,
        key_id: key.key_id(),
        name: body.name,
        public_key_pem: key.to_pem().map_err(Problem::internal)?,
        created_at: state.clock.now(),
    };
    state
        .store
        .insert_trusted_key(&record)
        .await
        .map_err(|e| match e {
            tender_store::StoreError::Conflict(_) => Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("key {} is trusted already", record.key_id),
            ),
            e => e.into(),
        })?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

#[utoipa::path(
    delete,
    path = "/api/v1/signing-keys/{key_id}",
    tag = "artifacts",
    params(("key_id" = String, Path, description = "Key id (16 hex digits)")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "No longer trusted for new uploads"),
        (status = 403, description = "Lacks artifacts_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The tenant does not trust this key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_signing_key(
    State(state): State<AppState>,
    auth: Authorized<need::ArtifactsManage>,
    Path(key_id): Path<String>,
) -> Result<StatusCode, Problem> {
    state
        .store
        .delete_trusted_key(auth.principal.tenant_id, &key_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
