//! Remote logs on the server: delivering requests to devices (at once when connected, else at
//! their next subscription), the devices' status reports, the capped gzip upload on the device
//! API, the live-follow fan-out, and the sweep that expires and prunes requests.
//!
//! The per-request rules are the core's ([`tender_core::logs::LogRequest`]); every change goes
//! through a compare-and-set in the store, so an upload, an error report and the sweep cannot
//! overwrite one another. A request goes to a device only after the store recorded it as sent.
//!
//! Invariants: an upload is refused (413, request `failed`) as soon as it passes the cap,
//! counted while the body streams in, never after buffering it whole; a device can only act on
//! its own requests; followed lines are never stored, only fanned out to the API clients
//! following the request, and the agent stops when the lease is not renewed.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use futures_util::StreamExt;
use rmqtt_codec::types::QoS;
use serde::Deserialize;
use tender_core::logs::{FOLLOW_LEASE_SECS, LineBatch, LogReport, LogRequest, LogState};
use tender_core::{DeviceId, LogRequestId, TenantId, Timestamp};
use tender_store::StoreError;
use tokio::sync::{broadcast, watch};

use crate::device_api::DeviceAuth;
use crate::mqtt::uplink::Refusal;
use crate::problem::Problem;
use crate::state::AppState;

/// `[logs]`: upload cap, sweep and retention.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Largest compressed upload accepted, in bytes (bigger ones get 413 and fail the request).
    pub max_upload_bytes: u64,
    /// Largest decompressed text served or accepted, in bytes (guards against gzip bombs).
    pub max_text_bytes: u64,
    /// How often open requests past their TTL are expired, and old ones pruned (milliseconds).
    pub sweep_interval_ms: u64,
    /// Finished requests and their content are deleted after this many hours.
    pub retention_hours: u64,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            max_upload_bytes: tender_core::logs::DEFAULT_MAX_BYTES,
            max_text_bytes: 256 * 1024 * 1024,
            sweep_interval_ms: 10_000,
            retention_hours: 7 * 24,
        }
    }
}

/// The live-follow fan-out: one broadcast channel per followed request, alive while at least
/// one API client follows it.
#[derive(Clone, Default)]
pub struct LogHub {
    followers: Arc<Mutex<HashMap<LogRequestId, broadcast::Sender<Arc<LineBatch>>>>>,
}

impl LogHub {
    /// Starts (or joins) following a request.
    pub fn subscribe(&self, id: LogRequestId) -> broadcast::Receiver<Arc<LineBatch>> {
        let mut map = match self.followers.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(id)
            .or_insert_with(|| broadcast::channel(256).0)
            .subscribe()
    }

    /// Hands a batch to the request's followers; false when nobody follows it.
    fn publish(&self, id: LogRequestId, batch: LineBatch) -> bool {
        let mut map = match self.followers.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(tx) = map.get(&id) else {
            return false;
        };
        if tx.send(Arc::new(batch)).is_err() {
            // Every follower went away.
            map.remove(&id);
            return false;
        }
        true
    }

    /// Forgets requests nobody follows any more.
    fn prune(&self) {
        let mut map = match self.followers.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.retain(|_, tx| tx.receiver_count() > 0);
    }

    /// Is anyone following the request?
    pub fn is_followed(&self, id: LogRequestId) -> bool {
        let mut map = match self.followers.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        match map.get(&id) {
            Some(tx) if tx.receiver_count() > 0 => true,
            Some(_) => {
                map.remove(&id);
                false
            }
            None => false,
        }
    }
}

/// The downlink topic suffix of a log request.
pub fn suffix(id: LogRequestId) -> String {
    format!("logs/{id}")
}

fn lease(now: Timestamp) -> Timestamp {
    now.plus_millis(i64::try_from(FOLLOW_LEASE_SECS * 1000).unwrap_or(i64::MAX))
}

/// Publishes the request to its device (a follow request with a fresh lease).
pub fn send(state: &AppState, request: &LogRequest) {
    let now = state.clock.now();
    let lease_until = request.follow.then(|| lease(now));
    state.gateway.send(
        request.device_id,
        &suffix(request.id),
        Bytes::from(request.downlink_payload(request.sent_at.unwrap_or(now), lease_until)),
        QoS::AtLeastOnce,
        &state.metrics,
    );
}

/// Records the request as sent, then publishes it. False when it moved meanwhile or can no
/// longer be sent.
async fn send_recorded(state: &AppState, request: &LogRequest) -> Result<bool, StoreError> {
    let Ok(next) = request.on_sent(state.clock.now()) else {
        return Ok(false);
    };
    if !state.store.update_log_request(request, &next).await? {
        return Ok(false);
    }
    send(state, &next);
    Ok(true)
}

/// A new request: sent at once when its device is connected, else at its next subscription.
pub async fn dispatch_new(state: &AppState, request: &LogRequest) -> Result<bool, StoreError> {
    if !state.gateway.is_connected(request.device_id) {
        return Ok(false);
    }
    send_recorded(state, request).await
}

/// A device subscribed or resumed its session: pending requests are sent; requests sent
/// before this subscription are sent again (the copy may have been lost with the connection;
/// the agent handles a request id once). Follow requests only while someone follows them.
pub async fn resync(state: &AppState, tenant: TenantId, device: DeviceId, at: Timestamp) {
    let open = match state
        .store
        .pending_log_requests(tenant, device, state.clock.now())
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%device, error = %e, "cannot read the device's pending log requests");
            return;
        }
    };
    for r in open {
        if r.follow && r.state != LogState::Pending && !state.logs.is_followed(r.id) {
            continue;
        }
        let result = match r.state {
            LogState::Pending => send_recorded(state, &r).await.map(|_| ()),
            _ if r.sent_at.is_some_and(|s| s < at) => {
                send(state, &r);
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(%device, request = %r.id, error = %e, "cannot send a pending log request");
        }
    }
}

fn parse_request_id(id: &str) -> Option<LogRequestId> {
    uuid::Uuid::try_parse(id).ok().map(LogRequestId::from_uuid)
}

/// Reads a request as the device `device` may see it: its own only.
async fn own_request(
    state: &AppState,
    tenant: TenantId,
    device: DeviceId,
    id: LogRequestId,
) -> Result<Option<LogRequest>, StoreError> {
    Ok(state
        .store
        .log_request(tenant, id)
        .await?
        .filter(|r| r.device_id == device))
}

/// Applies `change` to the request with compare-and-set, reading again when it lost a race.
/// `Ok(None)` when the core refuses the change (finished, expired: nothing to record).
async fn apply(
    state: &AppState,
    tenant: TenantId,
    id: LogRequestId,
    change: impl Fn(&LogRequest, Timestamp) -> Option<LogRequest>,
) -> Result<Option<LogRequest>, StoreError> {
    for _ in 0..5 {
        let Some(current) = state.store.log_request(tenant, id).await? else {
            return Ok(None);
        };
        let Some(next) = change(&current, state.clock.now()) else {
            return Ok(None);
        };
        if next == current || state.store.update_log_request(&current, &next).await? {
            return Ok(Some(next));
        }
    }
    Err(StoreError::Conflict(format!(
        "log request {id} changed concurrently"
    )))
}

/// A device's message on `logs/{id}/status`.
pub async fn on_status(
    state: &AppState,
    tenant: TenantId,
    device: DeviceId,
    request_id: &str,
    payload: &[u8],
) -> Result<(), Refusal> {
    let report = tender_core::logs::parse_report(payload)
        .map_err(|e| Refusal::PayloadInvalid(e.to_string()))?;
    let unknown = || {
        Refusal::PayloadInvalid(format!(
            "no log request {request_id} was sent to this device"
        ))
    };
    let id = parse_request_id(request_id).ok_or_else(unknown)?;
    let unavailable = |e: StoreError| {
        tracing::warn!(%device, request = %id, error = %e, "cannot record a log status");
        Refusal::Unavailable("the log status could not be stored; retry".into())
    };
    if own_request(state, tenant, device, id)
        .await
        .map_err(unavailable)?
        .is_none()
    {
        return Err(unknown());
    }
    let next = apply(state, tenant, id, |r, now| match &report {
        LogReport::Uploading => r.on_uploading(now).ok(),
        LogReport::Failed { error } => r.on_failed(error, now).ok(),
    })
    .await
    .map_err(unavailable)?;
    if let Some(r) = next
        && r.state == LogState::Failed
    {
        tracing::info!(%device, request = %id, error = ?r.error, "a device could not provide logs");
    }
    Ok(())
}

/// A device's batch of followed lines on `logs/{id}/lines`: handed to the followers, never
/// stored. Lines for a request nobody follows any more are dropped (the agent stops at the
/// end of its lease).
pub async fn on_lines(
    state: &AppState,
    tenant: TenantId,
    device: DeviceId,
    request_id: &str,
    payload: &[u8],
) -> Result<(), Refusal> {
    let batch = tender_core::logs::parse_lines(payload)
        .map_err(|e| Refusal::PayloadInvalid(e.to_string()))?;
    let unknown = || {
        Refusal::PayloadInvalid(format!(
            "no follow request {request_id} was sent to this device"
        ))
    };
    let id = parse_request_id(request_id).ok_or_else(unknown)?;
    if !state.logs.is_followed(id) {
        return Ok(());
    }
    let request = own_request(state, tenant, device, id)
        .await
        .map_err(|e| {
            tracing::warn!(%device, request = %id, error = %e, "cannot read a log request");
            Refusal::Unavailable("the log request could not be read; retry".into())
        })?
        .filter(|r| r.follow)
        .ok_or_else(unknown)?;
    if !request.sources.contains(&batch.source) {
        return Err(Refusal::PayloadInvalid(format!(
            "source {} is not part of log request {id}",
            batch.source
        )));
    }
    state.logs.publish(id, batch);
    Ok(())
}

/// An upload that sends nothing for this long is cut (`408`); the request stays open.
const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// Is this a gzip stream (by its magic bytes)?
fn looks_gzip(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b])
}

/// Decompresses a stored upload, refusing more than `max` bytes of text.
pub fn gunzip(data: &[u8], max: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut reader = flate2::read::MultiGzDecoder::new(data).take(max.saturating_add(1));
    reader
        .read_to_end(&mut out)
        .map_err(|e| format!("not valid gzip: {e}"))?;
    if out.len() as u64 > max {
        return Err(format!("more than {max} bytes once decompressed"));
    }
    Ok(out)
}

async fn fail(state: &AppState, tenant: TenantId, id: LogRequestId, why: &str) {
    if let Err(e) = apply(state, tenant, id, |r, now| r.on_failed(why, now).ok()).await {
        tracing::warn!(request = %id, error = %e, "cannot mark a log request failed");
    }
}

/// `PUT /device/v1/logs/{id}`: the agent's gzip upload for its own request. The body is counted
/// while it streams; past the cap the request fails and the answer is 413.
pub async fn upload(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<StatusCode, Problem> {
    let id: LogRequestId = crate::api::parse_id(&id)?;
    let tenant = auth.tenant_id;
    let request = state
        .store
        .log_request(tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no log request {id}")))?;
    if request.device_id != auth.device_id {
        return Err(Problem::forbidden(format!(
            "log request {id} is for another device"
        )));
    }
    if request.follow {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "follow-request",
            "a follow request has no upload: publish lines on logs/{id}/lines",
        ));
    }
    if request.state.is_finished() || state.clock.now() >= request.expires_at {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "request-finished",
            format!(
                "log request {id} is {}; it takes no upload",
                if request.state.is_finished() {
                    request.state.as_str()
                } else {
                    "expired"
                }
            ),
        ));
    }
    let cap = state.logs_config.max_upload_bytes;
    let too_large = |got: String| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "upload-too-large",
            format!("the upload is larger than the server's cap of {cap} bytes ({got})"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared
        && n > cap
    {
        fail(
            &state,
            tenant,
            id,
            &format!("the upload ({n} bytes) was larger than the server's cap of {cap} bytes"),
        )
        .await;
        return Err(too_large(format!("{n} bytes declared")));
    }
    let mut data = Vec::new();
    let mut stream = body.into_data_stream();
    loop {
        let Ok(next) = tokio::time::timeout(UPLOAD_IDLE, stream.next()).await else {
            return Err(Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "upload-stalled",
                format!(
                    "nothing arrived for {}s; upload again",
                    UPLOAD_IDLE.as_secs()
                ),
            ));
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| {
            Problem::bad_request("upload-interrupted", format!("the upload broke off: {e}"))
        })?;
        if (data.len() + chunk.len()) as u64 > cap {
            fail(
                &state,
                tenant,
                id,
                &format!("the upload was larger than the server's cap of {cap} bytes"),
            )
            .await;
            return Err(too_large("more was sent".into()));
        }
        data.extend_from_slice(&chunk);
    }
    if !looks_gzip(&data) {
        return Err(Problem::bad_request(
            "invalid-upload",
            "the upload must be gzip-compressed text",
        ));
    }
    let max_text = state.logs_config.max_text_bytes;
    let checked = data.clone();
    tokio::task::spawn_blocking(move || gunzip(&checked, max_text))
        .await
        .map_err(Problem::internal)?
        .map_err(|why| Problem::bad_request("invalid-upload", format!("the upload is {why}")))?;
    let size = data.len() as u64;
    for _ in 0..5 {
        let Some(current) = state.store.log_request(tenant, id).await? else {
            return Err(Problem::not_found(format!("no log request {id}")));
        };
        let ready = current
            .on_ready(size, state.clock.now())
            .map_err(|e| Problem::new(StatusCode::CONFLICT, "request-finished", e.to_string()))?;
        if state
            .store
            .store_log_content(&current, &ready, &data)
            .await?
        {
            tracing::info!(device = %auth.device_id, request = %id, bytes = size, "logs uploaded");
            return Ok(StatusCode::NO_CONTENT);
        }
    }
    Err(Problem::unavailable(
        "the log request changed concurrently; retry",
    ))
}

/// One pass of the sweep: expire open requests past their TTL, prune old finished ones.
pub async fn sweep_once(state: &AppState) -> Result<(), StoreError> {
    state.logs.prune();
    let now = state.clock.now();
    let expired = state.store.expire_log_requests(now).await?;
    if expired > 0 {
        tracing::info!(expired, "log requests expired");
    }
    let keep_ms = i64::try_from(state.logs_config.retention_hours.saturating_mul(3_600_000))
        .unwrap_or(i64::MAX);
    let pruned = state
        .store
        .prune_log_requests(now.plus_millis(-keep_ms))
        .await?;
    if pruned > 0 {
        tracing::info!(pruned, "old log requests deleted");
    }
    Ok(())
}

/// Runs [`sweep_once`] every `interval` until `shutdown` turns true.
pub async fn sweeper(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let interval = Duration::from_millis(state.logs_config.sweep_interval_ms.max(10));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = sweep_once(&state).await {
                    tracing::warn!(error = %e, "log sweep failed; will retry");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gunzip_is_bounded() {
        let z = gz(&vec![b'a'; 10_000]);
        assert_eq!(gunzip(&z, 10_000).unwrap().len(), 10_000);
        assert!(gunzip(&z, 9_999).is_err());
        assert!(gunzip(b"\x1f\x8bnot gzip", 100).is_err());
        assert!(looks_gzip(&z));
        assert!(!looks_gzip(b"plain"));
    }
}
