//! The device twin and layered configuration, server side: rendering a device's effective
//! configuration (fleet → groups → device, see `tender_core::config`), recording its version,
//! and sending it to devices.
//!
//! Invariants:
//! - What a device is sent on `state/desired` is always the whole effective document with its
//!   rendered version: `{"version": N, "state": {...}}`. Versions only grow, and grow whenever
//!   the document changes, so a device can ignore anything not newer than what it applied.
//! - A device gets the document on every subscribe and session resume (the gateway's resync),
//!   whether or not it changed: a device that was away misses nothing.
//! - A change to a layer (fleet, group, device) is pushed to the connected devices it affects;
//!   a device whose effective document did not change is not sent anything.

use std::collections::BTreeSet;

use bytes::Bytes;
use rmqtt_codec::types::QoS;
use serde::Serialize;
use tender_core::config::{Layer, LayerSource, Rendered, StoredLayer, render};
use tender_core::group::{Group, GroupKind, descendants};
use tender_core::page::{PageLimit, PageRequest};
use tender_core::twin::{Document, Twin};
use tender_core::{DeviceId, GroupId, TenantId};
use tender_store::DeviceFilter;
use tender_store::filter::{Cond, Filter};

use crate::mqtt::Delivery;
use crate::problem::Problem;
use crate::state::AppState;

/// The downlink topic suffix of the desired state.
pub const DESIRED_SUFFIX: &str = "state/desired";

/// A device's effective configuration.
#[derive(Debug, Clone)]
pub struct Effective {
    pub rendered: Rendered,
    /// The rendered version (grows whenever the document changes).
    pub version: u64,
    pub twin: Twin,
    /// Whether this rendering changed the document (and so the version).
    pub changed: bool,
}

/// The message a device gets on `state/desired`.
#[derive(Debug, Serialize)]
pub struct DesiredMessage<'a> {
    pub version: u64,
    pub state: &'a Document,
}

fn depth(groups: &[Group], id: GroupId) -> usize {
    let mut depth = 0;
    let mut at = groups.iter().find(|g| g.id == id);
    while let Some(g) = at.and_then(|g| g.parent_id) {
        depth += 1;
        if depth > groups.len() {
            break;
        }
        at = groups.iter().find(|x| x.id == g);
    }
    depth
}

/// The layers that apply to `device`, device layer last.
pub async fn layers_for(
    state: &AppState,
    tenant: TenantId,
    device: DeviceId,
    stored: &[StoredLayer],
    twin: &Twin,
) -> Result<Vec<Layer>, Problem> {
    let mut layers = Vec::with_capacity(stored.len() + 1);
    let has_group_layers = stored.iter().any(|l| l.group_id.is_some());
    let (groups, direct) = if has_group_layers {
        (
            state.store.groups(tenant).await?,
            state.store.device_groups(tenant, device).await?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let now = state.clock.now();
    for layer in stored {
        let Some(gid) = layer.group_id else {
            layers.push(Layer::fleet(layer.document.clone()));
            continue;
        };
        let Some(group) = groups.iter().find(|g| g.id == gid) else {
            continue;
        };
        let member = match &group.kind {
            GroupKind::Static => descendants(&groups, gid).iter().any(|g| direct.contains(g)),
            GroupKind::Dynamic { .. } => {
                let filter = crate::api::search::group_membership(&groups, group, now)?;
                let filter = Filter::And(vec![Filter::Cond(Cond::Ids(vec![device])), filter]);
                state
                    .store
                    .count_devices(
                        tenant,
                        &DeviceFilter {
                            state: None,
                            matching: Some(filter),
                        },
                    )
                    .await?
                    > 0
            }
        };
        if member {
            layers.push(Layer {
                source: LayerSource::Group {
                    group_id: gid,
                    group: group.name.as_str().to_owned(),
                },
                priority: layer.priority,
                depth: depth(&groups, gid),
                values: layer.document.clone(),
            });
        }
    }
    layers.push(Layer::device(twin.desired.clone()));
    Ok(layers)
}

/// One lock per device that is being rendered, so renderings of a device never interleave,
/// and the version last sent to each device.
#[derive(Clone, Default)]
pub struct RenderLocks {
    locks: std::sync::Arc<
        std::sync::Mutex<
            std::collections::HashMap<DeviceId, std::sync::Arc<tokio::sync::Mutex<()>>>,
        >,
    >,
    sent: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<DeviceId, u64>>>,
}

impl RenderLocks {
    /// Whether `version` is newer than the one last sent to `device` by this server.
    fn is_newer(&self, device: DeviceId, version: u64) -> bool {
        crate::mqtt::lock(&self.sent)
            .get(&device)
            .is_none_or(|v| version > *v)
    }

    fn sent(&self, device: DeviceId, version: u64) {
        let mut sent = crate::mqtt::lock(&self.sent);
        let v = sent.entry(device).or_insert(version);
        *v = (*v).max(version);
    }

    fn get(&self, device: DeviceId) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut map = crate::mqtt::lock(&self.locks);
        // Forget locks nobody holds or waits for, so the map stays as small as the work.
        map.retain(|_, l| std::sync::Arc::strong_count(l) > 1);
        map.entry(device).or_default().clone()
    }
}

/// Renders the device's effective configuration and records its version.
///
/// Renderings of one device are serialised: one that read the layers before a change
/// commits finishes recording before the rendering that change triggers starts, so a stale
/// document can never be recorded as the newest version (a resync racing a layer write did
/// that once).
pub async fn effective(
    state: &AppState,
    tenant: TenantId,
    device: DeviceId,
) -> Result<Effective, Problem> {
    let lock = state.render_locks.get(device);
    let _rendering = lock.lock().await;
    let twin = state.store.twin(tenant, device).await?;
    let stored = state.store.config_layers(tenant).await?;
    let layers = layers_for(state, tenant, device, &stored, &twin).await?;
    let rendered = render(&layers);
    let version = state
        .store
        .record_rendered(tenant, device, &rendered.document, state.clock.now())
        .await?;
    Ok(Effective {
        changed: version != twin.rendered_version,
        rendered,
        version,
        twin,
    })
}

/// Sends the device its effective configuration: always when `force` (a resync), otherwise
/// only when it changed. Returns what the gateway did with it (`None`: nothing to send).
pub async fn push_desired(
    state: &AppState,
    tenant: TenantId,
    device: DeviceId,
    force: bool,
) -> Result<Option<Delivery>, Problem> {
    let eff = effective(state, tenant, device).await?;
    // Newer than what this server last sent the device? (Reading a twin through the API
    // records renderings too, so "changed by this rendering" is not the test.)
    if !force && !state.render_locks.is_newer(device, eff.version) {
        return Ok(None);
    }
    let payload = serde_json::to_vec(&DesiredMessage {
        version: eff.version,
        state: &eff.rendered.document,
    })
    .map_err(Problem::internal)?;
    let delivery = state.gateway.send(
        device,
        DESIRED_SUFFIX,
        Bytes::from(payload),
        QoS::AtLeastOnce,
        &state.metrics,
    );
    if delivery != Delivery::NotSubscribed {
        state.render_locks.sent(device, eff.version);
    }
    tracing::debug!(%device, version = eff.version, ?delivery, "desired state sent");
    Ok(Some(delivery))
}

/// Which devices a configuration change may affect.
#[derive(Debug, Clone)]
pub enum Affected {
    /// Every device of the tenant (fleet layer, group structure).
    All,
    /// The members of a group (its layer changed).
    Group(GroupId),
    /// These devices (their own layer, inventory, tags or memberships changed).
    Devices(Vec<DeviceId>),
}

/// Re-renders the affected connected devices and sends each whose configuration changed.
/// Devices that are not connected get theirs when they next connect (resync). Runs in the
/// background; failures are logged per device.
pub fn propagate(state: &AppState, tenant: TenantId, affected: Affected) {
    let state = state.clone();
    tokio::spawn(async move {
        let connected: BTreeSet<DeviceId> = state.gateway.connected_devices().into_iter().collect();
        let targets: Vec<DeviceId> = match affected {
            Affected::All => connected.into_iter().collect(),
            Affected::Devices(ids) => ids.into_iter().filter(|d| connected.contains(d)).collect(),
            Affected::Group(gid) => match group_members(&state, tenant, gid).await {
                Ok(members) => members
                    .into_iter()
                    .filter(|d| connected.contains(d))
                    .collect(),
                Err(e) => {
                    tracing::warn!(group = %gid, error = %e.detail, "cannot list a group's members to send them their configuration");
                    return;
                }
            },
        };
        for device in targets {
            match push_desired(&state, tenant, device, false).await {
                Ok(_) => {}
                // A connected device of another tenant: not ours to render.
                Err(p) if p.status == 404 => {}
                Err(p) => {
                    tracing::warn!(%device, error = %p.detail, "cannot send a device its configuration; it gets it at its next connection");
                }
            }
        }
    });
}

async fn group_members(
    state: &AppState,
    tenant: TenantId,
    gid: GroupId,
) -> Result<Vec<DeviceId>, Problem> {
    let groups = state.store.groups(tenant).await?;
    let Some(group) = groups.iter().find(|g| g.id == gid) else {
        return Ok(Vec::new());
    };
    let filter = crate::api::search::group_membership(&groups, group, state.clock.now())?;
    let limit = PageLimit::max();
    let mut page = PageRequest::first(limit);
    let mut out = Vec::new();
    loop {
        let got = state
            .store
            .list_devices(
                tenant,
                &DeviceFilter {
                    state: None,
                    matching: Some(filter.clone()),
                },
                &page,
            )
            .await?;
        out.extend(got.items.iter().map(|d| d.id));
        match got.next {
            Some(after) => page.after = Some(after),
            None => break,
        }
    }
    Ok(out)
}

/// Whether any group layer is on a dynamic group: then a device's inventory, tags or
/// reported state can change which layers apply to it.
pub async fn has_dynamic_layers(state: &AppState, tenant: TenantId) -> Result<bool, Problem> {
    let stored = state.store.config_layers(tenant).await?;
    if stored.iter().all(|l| l.group_id.is_none()) {
        return Ok(false);
    }
    let groups = state.store.groups(tenant).await?;
    Ok(stored.iter().any(|l| {
        l.group_id.is_some_and(|gid| {
            groups
                .iter()
                .any(|g| g.id == gid && matches!(g.kind, GroupKind::Dynamic { .. }))
        })
    }))
}

/// After something about `device` changed that dynamic groups may look at: records joins and
/// leaves of dynamic groups, and re-sends its configuration if a dynamic group has a layer.
pub fn device_facts_changed(state: &AppState, tenant: TenantId, device: DeviceId) {
    let state = state.clone();
    tokio::spawn(async move {
        crate::events::track_dynamic_groups(&state, tenant, device).await;
        match has_dynamic_layers(&state, tenant).await {
            Ok(true) => propagate(&state, tenant, Affected::Devices(vec![device])),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%device, error = %e.detail, "cannot check configuration layers")
            }
        }
    });
}

/// Why a reported-state update was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] tender_store::StoreError),
    #[error("the reported state kept changing under this update; retry")]
    Busy,
}

/// Applies a device's reported-state merge patch (`null` removes a key). Returns whether the
/// document changed. Concurrent updates are retried on the fresh document, never lost.
pub async fn apply_reported(
    state: &AppState,
    tenant: TenantId,
    device: DeviceId,
    patch_bytes: &[u8],
    at: tender_core::Timestamp,
) -> Result<bool, ReportError> {
    let patch = tender_core::twin::parse_document(patch_bytes, state.twin_limits)
        .map_err(|e| ReportError::Invalid(format!("reported state: {e}")))?;
    for _ in 0..8 {
        let twin = state.store.twin(tenant, device).await?;
        let mut doc = twin.reported.clone();
        if !tender_core::twin::merge_patch(&mut doc, &patch) {
            return Ok(false);
        }
        tender_core::twin::validate(&doc, state.twin_limits)
            .map_err(|e| ReportError::Invalid(format!("reported state after this update: {e}")))?;
        if let Some(version) = state
            .store
            .write_reported(tenant, device, twin.reported_version, &doc, at)
            .await?
        {
            let keys: Vec<serde_json::Value> = patch.keys().map(|k| k.as_str().into()).collect();
            crate::events::emit(
                state,
                crate::events::device_event(
                    state,
                    tenant,
                    device,
                    tender_core::event::EventKind::TwinReportedChanged,
                )
                .with("version", version)
                .with("keys", keys),
            )
            .await;
            device_facts_changed(state, tenant, device);
            return Ok(true);
        }
    }
    Err(ReportError::Busy)
}
