//! Deployments on the server: the scheduler that runs the core's planner over every active
//! deployment, the notifications to devices, their status reports, and the resend when a
//! device comes back.
//!
//! The rules are the core's ([`tender_core::deployment`]): [`evaluate`] decides the
//! deployment's state and phase, [`notify_budget`] how many devices may be notified, and each
//! device's target moves only through its transitions, stored as compare-and-sets. Everything
//! is in the store before a message goes out, so a restarted server (even after `kill -9`)
//! resumes every rollout where it was: the scheduler reads the active deployments again, and a
//! device that reconnects gets its notification again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rmqtt_codec::types::QoS;
use serde::Deserialize;
use tender_core::artifact::Artifact;
use tender_core::deployment::{
    Deployment, DeploymentState, Report, Target, TargetState, evaluate, notify_budget,
};
use tender_core::event::{EventKind, NewEvent};
use tender_core::{DeploymentId, DeviceId, TenantId, Timestamp};
use tender_store::StoreError;
use tokio::sync::{Notify, watch};

use crate::mqtt::uplink::Refusal;
use crate::state::AppState;

/// `[deployments]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploymentsConfig {
    /// How often the scheduler looks at every active deployment even when nothing woke it
    /// (milliseconds): start times, retries and rate limits are noticed this often.
    pub tick_ms: u64,
    /// How often a continuous deployment looks for devices that newly match (seconds).
    pub continuous_interval_secs: u64,
}

impl Default for DeploymentsConfig {
    fn default() -> Self {
        DeploymentsConfig {
            tick_ms: 1000,
            continuous_interval_secs: 30,
        }
    }
}

/// Most devices one scheduler pass notifies per deployment.
const MAX_NOTIFY_PER_PASS: u32 = 5000;
/// Most queued targets one pass looks at per deployment (offline ones are passed over).
const MAX_DUE_SCAN: u32 = 20_000;

/// Wakes the scheduler (a deployment was created, resumed or approved, a device finished).
#[derive(Clone, Default)]
pub struct Scheduler {
    wake: Arc<Notify>,
}

impl Scheduler {
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// The downlink topic suffix of a deployment.
pub fn suffix(id: DeploymentId) -> String {
    format!("updates/{id}")
}

/// The notification a device gets (see docs/device-protocol.md).
pub fn notification(d: &Deployment, a: &Artifact, attempt: u32) -> serde_json::Value {
    serde_json::json!({
        "deployment_id": d.id.to_string(),
        "artifact_id": a.id.to_string(),
        "name": a.name,
        "version": a.version,
        "size": a.size,
        "sha256": a.sha256,
        "url": format!("/device/v1/artifacts/{}", a.id),
        "force": d.options.force,
        "download_only": d.options.download_only,
        "attempt": attempt,
    })
}

fn send_json(state: &AppState, device: DeviceId, d: DeploymentId, body: &serde_json::Value) {
    let payload = serde_json::to_vec(body).unwrap_or_default();
    state.gateway.send(
        device,
        &suffix(d),
        Bytes::from(payload),
        QoS::AtLeastOnce,
        &state.metrics,
    );
}

fn send_cancel(state: &AppState, device: DeviceId, d: DeploymentId) {
    send_json(
        state,
        device,
        d,
        &serde_json::json!({"deployment_id": d.to_string(), "cancel": true}),
    );
}

async fn emit_deployment(state: &AppState, d: &Deployment) {
    let mut e = NewEvent::tenant(
        d.tenant_id,
        state.clock.now(),
        EventKind::DeploymentStateChanged,
    )
    .with("deployment_id", d.id.to_string())
    .with("state", d.state.as_str())
    .with("phase", d.current_phase + 1);
    if let Some(r) = &d.status_reason {
        e = e.with("reason", r.as_str());
    }
    crate::events::emit(state, e).await;
}

async fn emit_target(state: &AppState, t: &Target) {
    let mut e = NewEvent::device(
        t.tenant_id,
        t.device_id,
        state.clock.now(),
        EventKind::DeploymentDeviceChanged,
    )
    .with("deployment_id", t.deployment_id.to_string())
    .with("state", t.state.as_str());
    if let Some(err) = &t.error
        && matches!(
            t.state,
            TargetState::Failed | TargetState::RolledBack | TargetState::Queued
        )
    {
        e = e.with("error", err.as_str());
    }
    crate::events::emit(state, e).await;
}

/// Whether a device must install the artifact, is up to date, or cannot take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    Install,
    UpToDate(String),
    Incompatible(String),
}

/// A device's facts for [`fit`]: its type and what it provides (inventory `provides.*`).
#[derive(Debug, Clone, Default)]
pub struct DeviceFacts {
    pub device_type: Option<String>,
    pub provides: BTreeMap<String, String>,
}

/// Decides how an artifact fits a device (the device checks again itself).
pub fn fit(a: &Artifact, facts: &DeviceFacts, force: bool) -> Fit {
    match &facts.device_type {
        Some(t) if a.compatible.iter().any(|c| c == t) => {}
        Some(t) => {
            return Fit::Incompatible(format!("device type {t:?} is not among {:?}", a.compatible));
        }
        None => return Fit::Incompatible("the device has not said its device type".into()),
    }
    for (k, want) in &a.depends {
        if facts.provides.get(k) != Some(want) {
            return Fit::Incompatible(format!(
                "needs {k} = {want:?}, the device provides {:?}",
                facts.provides.get(k)
            ));
        }
    }
    if !force && let Some(installed) = facts.provides.get(&format!("{}.version", a.name)) {
        match tender_artifact::compare_versions(installed, &a.version) {
            std::cmp::Ordering::Equal => {
                return Fit::UpToDate(format!("{} {installed} is installed", a.name));
            }
            std::cmp::Ordering::Greater => {
                return Fit::UpToDate(format!(
                    "{} {installed} is installed, newer than {}",
                    a.name, a.version
                ));
            }
            std::cmp::Ordering::Less => {}
        }
    }
    Fit::Install
}

/// The facts of `devices` from the registry and their inventories.
pub async fn device_facts(
    state: &AppState,
    tenant: TenantId,
    devices: &[tender_core::device::Device],
) -> Result<HashMap<DeviceId, DeviceFacts>, StoreError> {
    let ids: Vec<DeviceId> = devices.iter().map(|d| d.id).collect();
    let inventories = state.store.device_inventories(tenant, &ids).await?;
    let mut out = HashMap::with_capacity(devices.len());
    for id in &ids {
        let mut facts = DeviceFacts::default();
        if let Some(inv) = inventories.get(id) {
            for (name, value) in &inv.attributes.0 {
                let text = match value {
                    tender_core::inventory::AttributeValue::Text(s) => s.clone(),
                    tender_core::inventory::AttributeValue::Number(n) => n.to_string(),
                    tender_core::inventory::AttributeValue::Bool(b) => b.to_string(),
                    tender_core::inventory::AttributeValue::List(_) => continue,
                };
                if let Some(key) = name.as_str().strip_prefix("provides.") {
                    facts.provides.insert(key.to_owned(), text);
                } else if name.as_str() == "device_type" {
                    facts.device_type = Some(text);
                }
            }
        }
        out.insert(*id, facts);
    }
    // The registry's device type (from enrollment) wins over what the device reports.
    for d in devices {
        if let Some(t) = &d.device_type
            && let Some(f) = out.get_mut(&d.id)
        {
            f.device_type = Some(t.clone());
        }
    }
    Ok(out)
}

/// The targets of a new deployment: every device in its phase, already `incompatible` or
/// `skipped` where [`fit`] says so.
pub fn initial_targets(
    d: &Deployment,
    a: &Artifact,
    assigned: &[(DeviceId, u32)],
    facts: &HashMap<DeviceId, DeviceFacts>,
    now: Timestamp,
) -> Vec<Target> {
    let empty = DeviceFacts::default();
    assigned
        .iter()
        .map(|(dev, phase)| {
            let mut t = Target::new(d.tenant_id, d.id, *dev, *phase, now);
            match fit(a, facts.get(dev).unwrap_or(&empty), d.options.force) {
                Fit::Install => {}
                Fit::UpToDate(why) => {
                    t.state = TargetState::Skipped;
                    t.finished_at = Some(now);
                    t.log.push(why);
                }
                Fit::Incompatible(why) => {
                    t.state = TargetState::Incompatible;
                    t.finished_at = Some(now);
                    t.error = Some(why.clone());
                    t.log.push(why);
                }
            }
            t
        })
        .collect()
}

/// Stores `new` over `d` (compare-and-set) and records the event when the state changed.
/// Returns the stored deployment, or `None` when it changed concurrently.
pub async fn store_change(
    state: &AppState,
    d: &Deployment,
    new: Deployment,
) -> Result<Option<Deployment>, StoreError> {
    if !state.store.update_deployment(d, &new).await? {
        return Ok(None);
    }
    let mut stored = new;
    stored.revision = d.revision + 1;
    if stored.state != d.state || stored.current_phase != d.current_phase {
        tracing::info!(deployment = %d.id, state = %stored.state, phase = stored.current_phase + 1, reason = ?stored.status_reason, "deployment moved");
        emit_deployment(state, &stored).await;
    }
    Ok(Some(stored))
}

/// Cancels every target of `d` that has not started installing, telling the devices that
/// were notified.
pub async fn cancel_pending(state: &AppState, d: &Deployment) -> Result<u64, StoreError> {
    let now = state.clock.now();
    let mut canceled = 0;
    for s in [
        TargetState::Queued,
        TargetState::Notified,
        TargetState::Downloading,
        TargetState::Downloaded,
    ] {
        let mut page =
            tender_core::page::PageRequest::first(tender_core::page::PageLimit::default());
        loop {
            let p = state
                .store
                .deployment_targets(d.tenant_id, d.id, Some(s), &page)
                .await?;
            for t in &p.items {
                if let Some(n) = t.cancel(now)
                    && state.store.update_deployment_target(t, &n).await?
                {
                    canceled += 1;
                    if t.state.is_active() {
                        send_cancel(state, t.device_id, d.id);
                    }
                    emit_target(state, &n).await;
                }
            }
            match p.next {
                Some(n) => page.after = Some(n),
                None => break,
            }
        }
    }
    Ok(canceled)
}

/// Notifies the due, connected devices of `d` within its budget.
async fn notify_due(state: &AppState, d: &Deployment) -> Result<u32, StoreError> {
    let now = state.clock.now();
    let (recent, downloading) = state
        .store
        .deployment_load(d, now.plus_millis(-60_000))
        .await?;
    let budget = notify_budget(&d.options, recent, downloading, now)
        .unwrap_or(u32::MAX)
        .min(MAX_NOTIFY_PER_PASS);
    if budget == 0 {
        return Ok(0);
    }
    let due = state
        .store
        .due_deployment_devices(d, now, MAX_DUE_SCAN)
        .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let Some(artifact) = state.store.artifact(d.tenant_id, d.artifact_id).await? else {
        return Ok(0);
    };
    let connected: Vec<DeviceId> = due
        .into_iter()
        .filter(|id| state.gateway.is_connected(*id))
        .take(budget as usize)
        .collect();
    if connected.is_empty() {
        return Ok(0);
    }
    // Recorded first (one transaction), then sent.
    let notified = state
        .store
        .notify_deployment_targets(d, &connected, now)
        .await?;
    for t in &notified {
        send_json(
            state,
            t.device_id,
            d.id,
            &notification(d, &artifact, t.notifications),
        );
    }
    let sent = notified.len() as u32;
    Ok(sent)
}

/// Adds devices that newly match a continuous deployment's query to its last phase.
async fn extend_continuous(state: &AppState, d: &Deployment) -> Result<u64, StoreError> {
    let Some(text) = &d.query else { return Ok(0) };
    let Ok(query) = tender_core::query::parse(text) else {
        return Ok(0);
    };
    let Ok(filter) =
        crate::api::search::to_filter(state, d.tenant_id, &query, state.clock.now()).await
    else {
        return Ok(0);
    };
    let filter = tender_store::DeviceFilter {
        state: Some(tender_core::device::DeviceState::Accepted),
        matching: Some(filter),
    };
    let mut page = tender_core::page::PageRequest::first(tender_core::page::PageLimit::max());
    let mut fresh = Vec::new();
    loop {
        let p = state
            .store
            .list_devices(d.tenant_id, &filter, &page)
            .await?;
        let ids: Vec<DeviceId> = p.items.iter().map(|x| x.id).collect();
        let known = state
            .store
            .deployment_targets_among(d.tenant_id, d.id, &ids)
            .await?;
        fresh.extend(p.items.into_iter().filter(|x| !known.contains(&x.id)));
        match p.next {
            Some(n) => page.after = Some(n),
            None => break,
        }
    }
    if fresh.is_empty() {
        return Ok(0);
    }
    let Some(artifact) = state.store.artifact(d.tenant_id, d.artifact_id).await? else {
        return Ok(0);
    };
    let last = (d.phases.len() as u32).saturating_sub(1);
    let assigned: Vec<(DeviceId, u32)> = fresh.iter().map(|x| (x.id, last)).collect();
    let facts = device_facts(state, d.tenant_id, &fresh).await?;
    let targets = initial_targets(d, &artifact, &assigned, &facts, state.clock.now());
    let added = state.store.add_deployment_targets(&targets).await?;
    if added > 0 {
        tracing::info!(deployment = %d.id, added, "devices joined a continuous deployment");
    }
    Ok(added)
}

/// One scheduler pass over one deployment: plan, store the decision, act on it. Returns
/// whether it notified a whole pass's worth of devices (more may be due at once).
pub async fn step(state: &AppState, d: Deployment) -> Result<bool, StoreError> {
    let now = state.clock.now();
    let stats = state.store.deployment_stats(&d).await?;
    let decision = evaluate(&d, &stats, now);
    let d = match d.decide(&decision, now) {
        None => d,
        Some(new) => match store_change(state, &d, new).await? {
            Some(stored) => stored,
            // Changed meanwhile (an operator); the next pass sees the new state.
            None => return Ok(false),
        },
    };
    if decision.cancel_pending {
        cancel_pending(state, &d).await?;
    }
    if d.state == DeploymentState::Running {
        return Ok(notify_due(state, &d).await? >= MAX_NOTIFY_PER_PASS);
    }
    Ok(false)
}

/// One pass over every active deployment. Returns whether a deployment has more devices due
/// than one pass notifies (the scheduler then goes on without waiting for the tick).
pub async fn tick_once(
    state: &AppState,
    continuous_due: &mut HashMap<DeploymentId, Timestamp>,
    continuous_every_ms: i64,
) -> Result<bool, StoreError> {
    let mut more = false;
    let now = state.clock.now();
    for d in state.store.active_deployments().await? {
        if d.options.continuous && d.state == DeploymentState::Running {
            let due = continuous_due.get(&d.id).copied();
            if due.is_none_or(|t| t <= now) {
                continuous_due.insert(d.id, now.plus_millis(continuous_every_ms));
                if let Err(e) = extend_continuous(state, &d).await {
                    tracing::warn!(deployment = %d.id, error = %e, "cannot extend a continuous deployment");
                }
            }
        }
        let id = d.id;
        match step(state, d).await {
            Ok(m) => more |= m,
            Err(e) => {
                tracing::warn!(deployment = %id, error = %e, "deployment step failed; will retry");
            }
        }
    }
    Ok(more)
}

/// Runs the scheduler until `shutdown` turns true: a pass every `tick`, and at once when woken.
pub async fn scheduler(
    state: AppState,
    config: DeploymentsConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(config.tick_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let wake = state.deployments.wake.clone();
    let mut continuous_due = HashMap::new();
    let every =
        i64::try_from(config.continuous_interval_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut more = false;
    loop {
        if more {
            // A pass's worth notified and more due: carry on now (still yielding to shutdown).
            if *shutdown.borrow() {
                return;
            }
            tokio::task::yield_now().await;
        } else {
            tokio::select! {
                _ = tick.tick() => {}
                _ = wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
        more = match tick_once(&state, &mut continuous_due, every).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "deployment scheduler pass failed; will retry");
                false
            }
        };
    }
}

/// A device's status message on `updates/{id}/status`.
#[derive(Debug, Deserialize)]
struct StatusMessage {
    state: Option<String>,
    progress: Option<u8>,
    error: Option<String>,
    #[serde(default)]
    log: Vec<String>,
}

fn parse_status(payload: &[u8]) -> Result<Report, String> {
    let m: StatusMessage = serde_json::from_slice(payload)
        .map_err(|e| format!("not a deployment status ({e}); see docs/device-protocol.md"))?;
    let state = match m.state.as_deref() {
        None => None,
        Some(s) => Some(TargetState::parse(s).ok_or_else(|| format!("unknown state {s:?}"))?),
    };
    if m.log.len() > 200 {
        return Err("at most 200 log lines per message".into());
    }
    Ok(Report {
        state,
        progress: m.progress,
        error: m.error,
        log: m.log,
    })
}

/// A device's message on `updates/{id}/status`.
pub async fn on_status(
    state: &AppState,
    tenant: TenantId,
    device: DeviceId,
    deployment_id: &str,
    payload: &[u8],
) -> Result<(), Refusal> {
    let report = parse_status(payload).map_err(Refusal::PayloadInvalid)?;
    let unknown =
        || Refusal::PayloadInvalid(format!("this device is not in deployment {deployment_id}"));
    let id = uuid::Uuid::try_parse(deployment_id)
        .map(DeploymentId::from_uuid)
        .map_err(|_| unknown())?;
    let unavailable = |e: StoreError| {
        tracing::warn!(%device, deployment = %id, error = %e, "cannot record a deployment status");
        Refusal::Unavailable("the status could not be stored; retry".into())
    };
    let Some(d) = state
        .store
        .deployment(tenant, id)
        .await
        .map_err(unavailable)?
    else {
        return Err(unknown());
    };
    for _ in 0..5 {
        let Some(target) = state
            .store
            .deployment_target(tenant, id, device)
            .await
            .map_err(unavailable)?
        else {
            return Err(unknown());
        };
        let now = state.clock.now();
        let Some(next) = target.apply(&report, &d.options, now) else {
            return Ok(());
        };
        if state
            .store
            .update_deployment_target(&target, &next)
            .await
            .map_err(unavailable)?
        {
            if next.state != target.state {
                emit_target(state, &next).await;
                if next.state.is_finished() || next.state == TargetState::Queued {
                    state.deployments.wake();
                }
            }
            return Ok(());
        }
    }
    Err(Refusal::Unavailable(
        "the deployment status changed concurrently; retry".into(),
    ))
}

/// A device subscribed or resumed: send again what it is working on (the agent handles a
/// deployment and attempt once), and let the scheduler notify it of anything due.
pub async fn resync(state: &AppState, tenant: TenantId, device: DeviceId) {
    let active = match state.store.active_targets_for_device(tenant, device).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(%device, error = %e, "cannot read the device's deployments");
            return;
        }
    };
    for t in active {
        let Ok(Some(d)) = state.store.deployment(tenant, t.deployment_id).await else {
            continue;
        };
        if d.state.is_finished() && d.state != DeploymentState::Completed {
            continue;
        }
        let Ok(Some(a)) = state.store.artifact(tenant, d.artifact_id).await else {
            continue;
        };
        send_json(state, device, d.id, &notification(&d, &a, t.notifications));
    }
    state.deployments.wake();
}
