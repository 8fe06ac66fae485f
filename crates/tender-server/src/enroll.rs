//! Enrollment: a device presents a CSR (and perhaps a token) and gets a certificate, or waits
//! for an operator, or is refused. The rule is the core's [`decide`]; this module gathers the
//! facts and carries the decision out.
//!
//! Order of effects when a certificate is issued: the token's use is taken first (atomically),
//! then the device is created or moved to `accepted` (compare-and-set from the state the
//! decision was based on), then the certificate is signed and recorded. A crash in between costs
//! at most one token use; it never yields a certificate for a device the registry does not know
//! or that is not `accepted`. A request that races another for the same key, or an operator's
//! decision on the same device, gets `409` and asks again. The handler runs the enrollment in a
//! task of its own, so a client that disconnects or a request time-out does not cut it short.

use subtle::ConstantTimeEq;
use tender_core::device::{Device, DeviceState, validate_device_name};
use tender_core::enrollment::{
    EnrollmentDecision, EnrollmentFacts, EnrollmentRefusal, EnrollmentToken, decide,
};
use tender_core::tenant::{Tenant, TenantSlug};
use tender_core::{DeviceId, Timestamp};
use tender_store::StoreError;
use uuid::Uuid;

use crate::auth::{ENROLLMENT_TOKEN_PREFIX, parse};
use crate::ca::{CsrError, IssuedCertificate, ParsedCsr, parse_csr};
use crate::problem::Problem;
use crate::state::AppState;

/// What a device sends to enroll.
pub struct EnrollRequest {
    pub csr: String,
    pub token: Option<String>,
    /// Tenant slug for token-less requests (default: the default tenant).
    pub tenant: Option<String>,
    pub name: Option<String>,
    pub device_type: Option<String>,
}

pub enum EnrollOutcome {
    Issued {
        device: Device,
        certificate: IssuedCertificate,
    },
    Pending {
        device: Device,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("the enrollment token is not valid")]
    BadToken,
    #[error("no tenant {0:?}")]
    UnknownTenant(String),
    #[error("{0}")]
    BadField(String),
    #[error(transparent)]
    Refused(#[from] EnrollmentRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
}

impl From<EnrollError> for Problem {
    fn from(e: EnrollError) -> Problem {
        use axum::http::StatusCode;
        match e {
            EnrollError::Csr(e) => Problem::bad_request("invalid-csr", e.to_string()),
            EnrollError::BadToken => Problem::new(
                StatusCode::FORBIDDEN,
                "invalid-enrollment-token",
                "the enrollment token is not valid; ask an operator for a current one",
            ),
            EnrollError::UnknownTenant(t) => Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-tenant",
                format!("no tenant {t:?}"),
            ),
            EnrollError::BadField(m) => Problem::bad_request("invalid-field", m),
            EnrollError::Refused(r) => {
                let code = match r {
                    EnrollmentRefusal::Token(tender_core::enrollment::TokenRefusal::Expired) => {
                        "enrollment-token-expired"
                    }
                    EnrollmentRefusal::Token(tender_core::enrollment::TokenRefusal::Exhausted) => {
                        "enrollment-token-exhausted"
                    }
                    EnrollmentRefusal::Token(tender_core::enrollment::TokenRefusal::Revoked) => {
                        "enrollment-token-revoked"
                    }
                    EnrollmentRefusal::UnsolicitedClosed => "enrollment-closed",
                    EnrollmentRefusal::Rejected => "device-rejected",
                    EnrollmentRefusal::Decommissioned => "device-decommissioned",
                };
                Problem::new(StatusCode::FORBIDDEN, code, r.to_string())
            }
            EnrollError::Store(e) => e.into(),
            EnrollError::Ca(e) => Problem::internal(e),
        }
    }
}

/// Finds the token a device presented and checks its secret; `None` if it is not genuine.
async fn find_token(
    state: &AppState,
    presented: &str,
) -> Result<Option<EnrollmentToken>, StoreError> {
    let Some((id, secret)) = parse(ENROLLMENT_TOKEN_PREFIX, presented) else {
        return Ok(None);
    };
    let Some(token) = state.store.enrollment_token_for_authentication(id).await? else {
        return Ok(None);
    };
    let genuine: bool = state
        .token_key
        .hash(secret)
        .ct_eq(&token.secret_hash)
        .into();
    Ok(genuine.then_some(token))
}

fn check_label(what: &str, v: &str) -> Result<(), EnrollError> {
    validate_device_name(v).map_err(|e| EnrollError::BadField(format!("{what}: {e}")))
}

pub async fn enroll(state: &AppState, req: EnrollRequest) -> Result<EnrollOutcome, EnrollError> {
    let now = state.clock.now();
    let csr = parse_csr(&req.csr)?;
    if let Some(n) = &req.name {
        check_label("name", n)?;
    }
    if let Some(t) = &req.device_type {
        check_label("device_type", t)?;
    }

    let token = match &req.token {
        Some(t) => Some(find_token(state, t).await?.ok_or(EnrollError::BadToken)?),
        None => None,
    };
    let tenant: Tenant =
        match &token {
            Some(t) => state.store.tenant(t.tenant_id).await?.ok_or_else(|| {
                StoreError::Internal(format!("tenant of token {} is missing", t.id))
            })?,
            None => {
                let slug_text = req
                    .tenant
                    .as_deref()
                    .unwrap_or(tender_core::tenant::DEFAULT_TENANT_SLUG);
                let slug = TenantSlug::parse(slug_text)
                    .map_err(|_| EnrollError::UnknownTenant(slug_text.to_owned()))?;
                state
                    .store
                    .tenant_by_slug(&slug)
                    .await?
                    .ok_or_else(|| EnrollError::UnknownTenant(slug_text.to_owned()))?
            }
        };
    let known = state
        .store
        .device_by_key(tenant.id, &csr.key_fingerprint)
        .await?;
    let facts = EnrollmentFacts {
        token: token.as_ref().map(|t| t.check(now)),
        known_device: known.as_ref().map(|d| d.state),
        unsolicited_allowed: tenant.enrollment_open,
    };
    match decide(&facts) {
        EnrollmentDecision::Refuse(r) => Err(r.into()),
        EnrollmentDecision::Wait => {
            let device = match known {
                Some(d) => d,
                None => {
                    let fresh = new_device(&tenant, &csr, &req, None, DeviceState::Pending, now)?;
                    insert_or_existing(state, fresh).await?
                }
            };
            Ok(EnrollOutcome::Pending { device })
        }
        EnrollmentDecision::Issue { new_state } => {
            if let Some(t) = &token {
                // Only a device that needed the token spends a use of it.
                if known
                    .as_ref()
                    .is_none_or(|d| d.state == DeviceState::Pending)
                {
                    state
                        .store
                        .consume_enrollment_token(tenant.id, t.id, now)
                        .await
                        .map_err(|e| match e {
                            StoreError::Conflict(_) => EnrollError::Refused(
                                t.check(now)
                                    .err()
                                    .unwrap_or(tender_core::enrollment::TokenRefusal::Exhausted)
                                    .into(),
                            ),
                            other => other.into(),
                        })?;
                }
            }
            let device = match known {
                None => {
                    let fresh = new_device(&tenant, &csr, &req, token.as_ref(), new_state, now)?;
                    insert_or_existing(state, fresh).await?
                }
                Some(d) if d.state != new_state => {
                    // From the state the decision saw: if an operator changed the device in the
                    // meantime (e.g. rejected it), this fails instead of overriding them.
                    state
                        .store
                        .set_device_state(tenant.id, d.id, d.state, new_state, now)
                        .await?
                }
                Some(d) => d,
            };
            let certificate = issue(state, &csr, &device, &tenant.slug, now).await?;
            Ok(EnrollOutcome::Issued {
                device,
                certificate,
            })
        }
    }
}

/// Signs and records a certificate for `device`'s key.
pub async fn issue(
    state: &AppState,
    csr: &ParsedCsr,
    device: &Device,
    tenant: &TenantSlug,
    now: Timestamp,
) -> Result<IssuedCertificate, EnrollError> {
    let cert =
        state
            .ca
            .sign_device(csr, device.id, tenant, now, state.device_cert_validity_days)?;
    state
        .store
        .insert_certificate(&tender_core::certificate::DeviceCertificate {
            serial: cert.serial.clone(),
            tenant_id: device.tenant_id,
            device_id: device.id,
            key_fingerprint: cert.key_fingerprint.clone(),
            not_before: cert.not_before,
            not_after: cert.not_after,
            issued_at: now,
            revoked_at: None,
        })
        .await?;
    Ok(cert)
}

fn new_device(
    tenant: &Tenant,
    csr: &ParsedCsr,
    req: &EnrollRequest,
    token: Option<&EnrollmentToken>,
    state: DeviceState,
    now: Timestamp,
) -> Result<Device, EnrollError> {
    let name = req
        .name
        .clone()
        .unwrap_or_else(|| format!("device-{}", csr.key_fingerprint.get(..12).unwrap_or("new")));
    let device_type = req
        .device_type
        .clone()
        .or_else(|| token.and_then(|t| t.device_type.clone()));
    Device::new(
        DeviceId::from_uuid(Uuid::now_v7()),
        tenant.id,
        name,
        device_type,
        state,
        now,
    )
    .map(|d| d.with_key_fingerprint(csr.key_fingerprint.clone()))
    .map_err(|e| EnrollError::BadField(e.to_string()))
}

/// Inserts a new device; if the same key raced in first, returns that device instead.
async fn insert_or_existing(state: &AppState, device: Device) -> Result<Device, EnrollError> {
    match state.store.insert_device(&device).await {
        Ok(()) => {
            crate::events::emit(
                state,
                crate::events::device_event(
                    state,
                    device.tenant_id,
                    device.id,
                    tender_core::event::EventKind::DeviceCreated,
                )
                .with("state", device.state.as_str()),
            )
            .await;
            Ok(device)
        }
        Err(StoreError::Conflict(_)) => {
            let fp = device.key_fingerprint.as_deref().unwrap_or_default();
            Ok(state
                .store
                .device_by_key(device.tenant_id, fp)
                .await?
                .ok_or_else(|| {
                    StoreError::Conflict(format!("device {} already exists", device.id))
                })?)
        }
        Err(e) => Err(e.into()),
    }
}
