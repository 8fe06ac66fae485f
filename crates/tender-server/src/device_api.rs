//! The HTTPS device API: TLS with client certificates from Tender's CA (mTLS).
//!
//! The listener asks every client for a certificate but lets those without one through the
//! handshake, because enrolling devices have none yet: `POST /device/v1/enroll` is the only
//! route that works without a certificate. Every other route takes a [`DeviceAuth`], which
//! requires a certificate that (1) chains to the CA (rustls checks signature and validity period
//! during the handshake) and (2) is recorded, unrevoked and belongs to a device that may connect
//! (checked on every request, so revocation takes effect at once).
//!
//! Connections that do not finish the TLS handshake within `devices.handshake_timeout_secs` are
//! dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tender_core::certificate::DeviceCertificate;
use tender_core::device::Device;
use tender_core::{DeviceId, TenantId};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::ca::{Ca, CaError, parse_csr};
use crate::enroll::{EnrollError, EnrollOutcome, EnrollRequest, enroll, issue};
use crate::problem::{Problem, problem_for_plain_errors};
use crate::state::AppState;

/// The client certificate a connection presented, as read after the handshake.
#[derive(Clone, Debug)]
pub struct PeerCertificate {
    pub serial: String,
    pub key_fingerprint: String,
}

impl PeerCertificate {
    /// The first certificate the client presented (already verified against the CA by rustls).
    pub fn of(tls: &rustls::ServerConnection) -> Option<Self> {
        tls.peer_certificates()
            .and_then(|c| c.first())
            .and_then(|der| crate::ca::certificate_identity(der))
            .map(|(serial, key_fingerprint)| PeerCertificate {
                serial,
                key_fingerprint,
            })
    }
}

/// The listener's server certificate, replaceable while the server runs: issued by the CA for
/// `devices.hostnames`, valid for a year, and re-issued daily by [`rotate_daily`], so a server
/// that runs for years never presents an expired certificate.
#[derive(Debug)]
pub struct ListenerCertificate {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ListenerCertificate {
    pub fn issue(ca: &Ca, names: &[String], now: tender_core::Timestamp) -> Result<Self, CaError> {
        Ok(ListenerCertificate {
            current: std::sync::RwLock::new(Arc::new(certified_key(ca, names, now)?)),
        })
    }

    /// Replaces the certificate with a fresh one.
    pub fn renew(
        &self,
        ca: &Ca,
        names: &[String],
        now: tender_core::Timestamp,
    ) -> Result<(), CaError> {
        let fresh = Arc::new(certified_key(ca, names, now)?);
        match self.current.write() {
            Ok(mut c) => *c = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// The certificate (DER) being served now.
    pub fn current_der(&self) -> Option<Vec<u8>> {
        let c = match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        c.cert.first().map(|d| d.to_vec())
    }
}

impl rustls::server::ResolvesServerCert for ListenerCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

fn certified_key(
    ca: &Ca,
    names: &[String],
    now: tender_core::Timestamp,
) -> Result<rustls::sign::CertifiedKey, CaError> {
    let err = |what: &str, e: &dyn std::fmt::Display| CaError::Generate(format!("{what}: {e}"));
    let (cert_pem, key_pem) = ca.issue_server_certificate(names, now)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| err("server certificate", &e))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| err("server key", &e))?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| err("server key", &e))?;
    Ok(rustls::sign::CertifiedKey::new(chain, signing))
}

/// Re-issues the listener certificate once a day until `shutdown` turns true.
pub async fn rotate_daily(
    cert: Arc<ListenerCertificate>,
    ca: Arc<Ca>,
    names: Vec<String>,
    clock: Arc<dyn tender_core::Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(Duration::from_secs(86_400));
    every.tick().await; // the first tick is immediate; the certificate is fresh already
    loop {
        tokio::select! {
            _ = every.tick() => {
                match cert.renew(&ca, &names, clock.now()) {
                    Ok(()) => tracing::info!("re-issued the device listener's certificate"),
                    Err(e) => tracing::error!(error = %e, "cannot re-issue the device listener's certificate; retrying tomorrow"),
                }
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// Builds the TLS configuration: the rotating server certificate, client certificates optional
/// but, when given, verified against the CA.
pub fn tls_config(
    ca: &Ca,
    cert: Arc<ListenerCertificate>,
) -> Result<rustls::ServerConfig, CaError> {
    // HTTP/1.1 only: devices need nothing more, and hyper's HTTP/1 server can time out a client
    // that goes silent after the handshake (protocol auto-detection cannot).
    tls_config_with_alpn(ca, cert, vec![b"http/1.1".to_vec()])
}

/// [`tls_config`] with the ALPN protocols to offer (none: the MQTT gateway).
pub fn tls_config_with_alpn(
    ca: &Ca,
    cert: Arc<ListenerCertificate>,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, CaError> {
    let err = |what: &str, e: &dyn std::fmt::Display| CaError::Generate(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        let c = c.map_err(|e| err("CA certificate", &e))?;
        roots.add(c).map_err(|e| err("CA certificate", &e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| err("client verifier", &e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| err("TLS versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    cfg.alpn_protocols = alpn;
    // Stateless TLS 1.3 session tickets (keys random per process, rotated by rustls): a device
    // that reconnects resumes without the signature work of a full handshake, which is what a
    // fleet reconnecting after an outage does all at once. Nothing is stored per session. The
    // client certificate travels in the ticket, and every CONNECT and request still checks it
    // against the registry, so revocation applies to resumed sessions too.
    cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| err("session tickets", &e))?;
    Ok(cfg)
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/device/v1/enroll", post(enroll_handler))
        .route("/device/v1/whoami", get(whoami))
        .route("/device/v1/renew", post(renew))
        .route("/device/v1/telemetry", post(telemetry))
        .route("/device/v1/inventory", put(inventory))
        .route("/device/v1/state/desired", get(desired_state))
        .route(
            "/device/v1/state/reported",
            axum::routing::patch(reported_state),
        )
        .route("/device/v1/artifacts/{id}", get(download_artifact))
        .fallback(|uri: axum::http::Uri| async move {
            Problem::not_found(format!("no such resource: {}", uri.path()))
        })
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        // Log uploads stream up to `[logs] max_upload_bytes` over slow links: outside the
        // 64 KiB body limit and the request time-out, bounded by their cap and an idle time-out.
        .route(
            "/device/v1/logs/{id}",
            put(crate::logs::upload).layer(tower_http::catch_panic::CatchPanicLayer::new()),
        )
        .layer(axum::middleware::from_fn(problem_for_plain_errors))
        .with_state(state)
}

/// How long open device connections get to finish when the server stops.
const DRAIN: Duration = Duration::from_secs(5);

/// Accepts TLS connections until `shutdown` turns true, at most `max_connections` at a time
/// (beyond that a new connection is closed at once: a clear refusal, not an exhausted process).
/// On shutdown, open connections get [`DRAIN`] to finish, then are cut.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    handshake_timeout: Duration,
    max_connections: usize,
    metrics: Arc<crate::metrics::Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: pause briefly rather than spin.
                    tracing::warn!(error = %e, "device listener cannot accept");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = shutdown.changed() => break,
                    }
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_connections, "device connection refused: at the connection limit");
            metrics.device_connection("refused_limit");
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            let _permit = permit;
            metrics.device_connections_open.inc();
            serve_connection(acceptor, tcp, peer, app, handshake_timeout, &metrics).await;
            metrics.device_connections_open.dec();
        });
    }
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len(),
            "cutting device connections still open after the drain period"
        );
        connections.abort_all();
    }
}

async fn serve_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    handshake_timeout: Duration,
    metrics: &crate::metrics::Metrics,
) {
    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            metrics.device_connection("accepted");
            tls
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "device TLS handshake failed");
            metrics.device_connection("handshake_failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "device TLS handshake timed out");
            metrics.device_connection("handshake_timeout");
            return;
        }
    };
    let cert = PeerCertificate::of(tls.get_ref().1);
    let svc = tower::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        if let Some(c) = &cert {
            req.extensions_mut().insert(c.clone());
        }
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        // Also the limit for a request's headers after the handshake or the previous response:
        // silent or trickling clients are dropped whether or not they finished TLS.
        .header_read_timeout(handshake_timeout);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc))
        .await
    {
        tracing::debug!(%peer, error = %e, "device connection ended with an error");
    }
}

/// Last-seen is written at most this often per device (ms), not on every request.
const LAST_SEEN_GRANULARITY_MS: i64 = 60_000;

/// A device authenticated by its client certificate.
pub struct DeviceAuth {
    pub tenant_id: TenantId,
    pub device_id: DeviceId,
    pub device: Device,
    pub certificate: DeviceCertificate,
}

/// Why a client certificate does not authenticate a device.
#[derive(Debug, thiserror::Error)]
pub enum CertAuthError {
    /// Unknown to Tender, revoked, expired, for another key, or its device may not connect.
    #[error("certificate not valid")]
    NotValid,
    #[error(transparent)]
    Store(#[from] tender_store::StoreError),
}

/// Checks a verified client certificate against what Tender recorded: issued by us, unrevoked,
/// valid now, for the key presented, and its device in a state that may connect. One rule for
/// every device transport.
pub async fn authenticate_certificate(
    state: &AppState,
    peer: &PeerCertificate,
) -> Result<(DeviceCertificate, Device), CertAuthError> {
    let cert = state
        .store
        .certificate_for_authentication(&peer.serial)
        .await?
        .ok_or(CertAuthError::NotValid)?;
    let now = state.clock.now();
    if cert.key_fingerprint != peer.key_fingerprint || !cert.is_valid_at(now) {
        return Err(CertAuthError::NotValid);
    }
    let device = state
        .store
        .device(cert.tenant_id, cert.device_id)
        .await?
        .ok_or(CertAuthError::NotValid)?;
    if !device.state.may_connect() {
        return Err(CertAuthError::NotValid);
    }
    Ok((cert, device))
}

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let peer = parts
            .extensions
            .get::<PeerCertificate>()
            .cloned()
            .ok_or_else(|| {
                Problem::unauthorized(
                    "this needs a client certificate issued by Tender; enroll first",
                )
            })?;
        let (cert, device) = match authenticate_certificate(state, &peer).await {
            Ok(found) => found,
            Err(CertAuthError::Store(e)) => return Err(e.into()),
            Err(CertAuthError::NotValid) => {
                return Err(Problem::forbidden(
                    "this certificate is not valid: it was revoked, has expired, or its device may not connect",
                ));
            }
        };
        let now = state.clock.now();
        if device
            .last_seen_at
            .is_none_or(|t| now.unix_millis() - t.unix_millis() >= LAST_SEEN_GRANULARITY_MS)
        {
            // Bookkeeping: a failure here must not fail the device's request.
            if let Err(e) = state
                .store
                .record_device_seen(cert.tenant_id, cert.device_id, now)
                .await
            {
                tracing::warn!(device = %cert.device_id, error = %e, "cannot record last seen");
            }
        }
        Ok(DeviceAuth {
            tenant_id: cert.tenant_id,
            device_id: cert.device_id,
            device,
            certificate: cert,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollBody {
    /// PEM CSR signed by the device's key (ECDSA P-256 or Ed25519).
    pub csr: String,
    /// An enrollment token (`tne_...`); without one the device waits for approval.
    pub token: Option<String>,
    /// Tenant slug for requests without a token (default `default`).
    pub tenant: Option<String>,
    pub name: Option<String>,
    pub device_type: Option<String>,
}

#[derive(Serialize)]
pub struct EnrollAnswer {
    pub device_id: String,
    /// `accepted` (certificate issued) or `pending` (ask again later).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When to renew (two thirds of the lifetime).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_after: Option<String>,
    /// For `pending`: seconds to wait before asking again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

/// A device request that takes longer is answered 503 (the connection stays usable).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Seconds a pending device should wait before asking again.
const PENDING_RETRY_SECS: u64 = 60;

fn issued_answer(
    state: &AppState,
    device: &Device,
    cert: &crate::ca::IssuedCertificate,
) -> EnrollAnswer {
    let record = DeviceCertificate {
        serial: cert.serial.clone(),
        tenant_id: device.tenant_id,
        device_id: device.id,
        key_fingerprint: cert.key_fingerprint.clone(),
        not_before: cert.not_before,
        not_after: cert.not_after,
        issued_at: cert.not_before,
        revoked_at: None,
    };
    EnrollAnswer {
        device_id: device.id.to_string(),
        status: "accepted",
        certificate: Some(cert.pem.clone()),
        ca_certificate: Some(state.ca.cert_pem.clone()),
        not_after: Some(cert.not_after.to_rfc3339()),
        renew_after: Some(record.renew_after().to_rfc3339()),
        retry_after_secs: None,
    }
}

async fn enroll_handler(
    State(state): State<AppState>,
    Json(body): Json<EnrollBody>,
) -> Result<Response, Problem> {
    let req = EnrollRequest {
        csr: body.csr,
        token: body.token,
        tenant: body.tenant,
        name: body.name,
        device_type: body.device_type,
    };
    // Its own task: a disconnect or time-out drops this handler, not the enrollment half-way.
    let task_state = state.clone();
    let result = tokio::spawn(async move { enroll(&task_state, req).await })
        .await
        .map_err(Problem::internal)?;
    state.metrics.enrollment(match &result {
        Ok(EnrollOutcome::Issued { .. }) => "issued",
        Ok(EnrollOutcome::Pending { .. }) => "pending",
        Err(EnrollError::Refused(_) | EnrollError::BadToken) => "refused",
        Err(EnrollError::Store(_) | EnrollError::Ca(_)) => "error",
        Err(_) => "invalid",
    });
    let outcome = result?;
    Ok(match outcome {
        EnrollOutcome::Issued {
            device,
            certificate,
        } => (
            StatusCode::CREATED,
            Json(issued_answer(&state, &device, &certificate)),
        )
            .into_response(),
        EnrollOutcome::Pending { device } => (
            StatusCode::ACCEPTED,
            [(
                axum::http::header::RETRY_AFTER,
                PENDING_RETRY_SECS.to_string(),
            )],
            Json(EnrollAnswer {
                device_id: device.id.to_string(),
                status: "pending",
                certificate: None,
                ca_certificate: None,
                not_after: None,
                renew_after: None,
                retry_after_secs: Some(PENDING_RETRY_SECS),
            }),
        )
            .into_response(),
    })
}

#[derive(Serialize)]
struct DeviceWhoAmI {
    device_id: String,
    tenant_id: String,
    name: String,
    state: String,
    certificate_serial: String,
    certificate_not_after: String,
    renew_after: String,
}

async fn whoami(auth: DeviceAuth) -> Json<DeviceWhoAmI> {
    Json(DeviceWhoAmI {
        device_id: auth.device_id.to_string(),
        tenant_id: auth.tenant_id.to_string(),
        name: auth.device.name.clone(),
        state: auth.device.state.to_string(),
        certificate_serial: auth.certificate.serial.clone(),
        certificate_not_after: auth.certificate.not_after.to_rfc3339(),
        renew_after: auth.certificate.renew_after().to_rfc3339(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    /// A CSR for the device's current key.
    csr: String,
}

/// Issues a fresh certificate over an authenticated connection, for the same key.
async fn renew(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Json(body): Json<RenewBody>,
) -> Result<(StatusCode, Json<EnrollAnswer>), Problem> {
    let csr = parse_csr(&body.csr).map_err(EnrollError::from)?;
    if auth.device.key_fingerprint.as_deref() != Some(csr.key_fingerprint.as_str()) {
        return Err(Problem::bad_request(
            "key-mismatch",
            "the CSR must carry the device's current key",
        ));
    }
    let tenant = state
        .store
        .tenant(auth.tenant_id)
        .await?
        .ok_or_else(|| Problem::internal("tenant of an authenticated device is missing"))?;
    let cert = issue(&state, &csr, &auth.device, &tenant.slug, state.clock.now()).await?;
    Ok((
        StatusCode::CREATED,
        Json(issued_answer(&state, &auth.device, &cert)),
    ))
}

/// Telemetry from a device that polls instead of holding an MQTT connection: the same payload
/// and the same handler as `tender/v1/{id}/telemetry`; `204` once stored.
async fn telemetry(
    State(state): State<AppState>,
    auth: DeviceAuth,
    body: axum::body::Bytes,
) -> Result<StatusCode, Problem> {
    uplink(state, auth, crate::mqtt::topic::Uplink::Telemetry, body).await
}

/// The device's inventory over HTTPS: the same payload and handler as
/// `tender/v1/{id}/inventory`; `204` once stored.
async fn inventory(
    State(state): State<AppState>,
    auth: DeviceAuth,
    body: axum::body::Bytes,
) -> Result<StatusCode, Problem> {
    uplink(state, auth, crate::mqtt::topic::Uplink::Inventory, body).await
}

/// The device's effective desired state, as it would get it on `state/desired` (for devices
/// without MQTT, or an agent on its HTTPS fallback).
async fn desired_state(
    State(state): State<AppState>,
    auth: DeviceAuth,
) -> Result<axum::response::Response, Problem> {
    let eff = crate::twin::effective(&state, auth.tenant_id, auth.device_id).await?;
    Ok(axum::Json(serde_json::json!({
        "version": eff.version,
        "state": eff.rendered.document,
    }))
    .into_response())
}

/// An artifact of the device's tenant, streamed with `Range` support so that a dropped
/// download resumes where it stopped.
async fn download_artifact(
    State(state): State<AppState>,
    auth: DeviceAuth,
    axum::extract::Path(id): axum::extract::Path<String>,
    req: axum::extract::Request,
) -> Result<axum::response::Response, Problem> {
    let id: tender_core::ArtifactId = crate::api::parse_id(&id)?;
    let artifact = state
        .store
        .artifact(auth.tenant_id, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no artifact {id}")))?;
    crate::api::artifacts::serve_artifact(&state, &artifact, req).await
}

async fn reported_state(
    State(state): State<AppState>,
    auth: DeviceAuth,
    body: axum::body::Bytes,
) -> Result<StatusCode, Problem> {
    uplink(state, auth, crate::mqtt::topic::Uplink::Reported, body).await
}

async fn uplink(
    state: AppState,
    auth: DeviceAuth,
    kind: crate::mqtt::topic::Uplink,
    body: axum::body::Bytes,
) -> Result<StatusCode, Problem> {
    use crate::mqtt::uplink::{From, Refusal, ServerUplinks, UplinkHandler};
    let from = From {
        tenant_id: auth.tenant_id,
        device_id: auth.device_id,
    };
    let now = state.clock.now();
    ServerUplinks::new(state)
        .handle(from, &kind, &body, now)
        .await
        .map_err(|r| match r {
            Refusal::PayloadInvalid(why) => Problem::bad_request("invalid-payload", why),
            Refusal::NotSupported(why) => Problem::not_found(why),
            Refusal::Unavailable(why) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why)
            }
        })?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_certificate_can_be_renewed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let dd = crate::datadir::DataDir::prepare(dir.path()).unwrap();
        let now = tender_core::Timestamp::from_unix_millis(1_790_000_000_000);
        let ca = crate::ca::load_or_create(&Default::default(), &dd, now).unwrap();
        let names = vec!["localhost".to_owned()];
        let cert = ListenerCertificate::issue(&ca, &names, now).unwrap();
        let before = cert.current_der().unwrap();
        cert.renew(&ca, &names, now.plus_millis(86_400_000))
            .unwrap();
        let after = cert.current_der().unwrap();
        assert_ne!(before, after);
        use x509_parser::prelude::FromDer;
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&after).unwrap();
        let days_left =
            (parsed.validity().not_after.timestamp() * 1000 - now.unix_millis()) / 86_400_000;
        assert_eq!(
            days_left, 366,
            "valid a year from the renewal, not from the first issue"
        );
    }
}
