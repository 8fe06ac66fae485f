//! Recording events and waking the streams that follow them.
//!
//! Invariants:
//! - The store is the source of truth: an event is appended there first, then the hub's
//!   counter moves so that live streams read what is new from the store in id order. A
//!   stream never holds events of its own, so a slow client cannot make the server buffer
//!   without bound, and a burst is never lost by a lagging channel.
//! - Recording an event never fails the action it describes: a store error is logged and
//!   counted.
//! - Dynamic-group membership is re-evaluated for a device when its inventory, tags or
//!   reported state change; joining and leaving are events. Queries on presence or time are
//!   evaluated when read, not tracked.

use std::sync::Arc;

use tender_core::event::{EventKind, NewEvent};
use tender_core::group::GroupKind;
use tender_core::{DeviceId, GroupId, TenantId};
use tender_store::DeviceFilter;
use tender_store::filter::{Cond, Filter};
use tokio::sync::watch;

use crate::state::AppState;

/// The hub's value once the server is stopping.
pub const CLOSED: u64 = u64::MAX;

/// Wakes event streams when something was recorded.
#[derive(Clone)]
pub struct EventHub {
    latest: Arc<watch::Sender<u64>>,
}

impl Default for EventHub {
    fn default() -> Self {
        let (tx, _) = watch::channel(0);
        EventHub {
            latest: Arc::new(tx),
        }
    }
}

impl EventHub {
    /// A receiver that changes whenever an event is recorded on this server.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Ends every live stream (the server is stopping).
    pub fn close(&self) {
        self.latest.send_replace(CLOSED);
    }

    fn recorded(&self, id: u64) {
        self.latest.send_if_modified(|v| {
            if id > *v && *v != CLOSED {
                *v = id;
                true
            } else {
                false
            }
        });
    }
}

/// Records an event; logs (and never fails) when the store cannot take it.
pub async fn emit(state: &AppState, event: NewEvent) {
    match state.store.append_event(&event).await {
        Ok(id) => state.events.recorded(id),
        Err(e) => {
            state.metrics.event_not_recorded();
            tracing::warn!(kind = %event.kind, error = %e, "an event could not be recorded");
        }
    }
}

/// An event about a device, now.
pub fn device_event(
    state: &AppState,
    tenant: TenantId,
    device: DeviceId,
    kind: EventKind,
) -> NewEvent {
    NewEvent::device(tenant, device, state.clock.now(), kind)
}

/// Re-evaluates which dynamic groups `device` is in, records joins and leaves as events, and
/// returns whether any changed.
pub async fn track_dynamic_groups(state: &AppState, tenant: TenantId, device: DeviceId) -> bool {
    let groups = match state.store.groups(tenant).await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(%device, error = %e, "cannot read groups to track memberships");
            return false;
        }
    };
    let dynamic: Vec<_> = groups
        .iter()
        .filter(|g| matches!(g.kind, GroupKind::Dynamic { .. }))
        .collect();
    if dynamic.is_empty() {
        return false;
    }
    let before: Vec<GroupId> = state
        .store
        .dynamic_memberships(tenant, device)
        .await
        .unwrap_or_default();
    let now = state.clock.now();
    let mut changed = false;
    for g in dynamic {
        let filter = match crate::api::search::group_membership(&groups, g, now) {
            Ok(f) => f,
            Err(_) => continue,
        };
        let member = state
            .store
            .count_devices(
                tenant,
                &DeviceFilter {
                    state: None,
                    matching: Some(Filter::And(vec![
                        Filter::Cond(Cond::Ids(vec![device])),
                        filter,
                    ])),
                },
            )
            .await
            .map(|n| n > 0);
        let Ok(member) = member else { continue };
        if member == before.contains(&g.id) {
            continue;
        }
        match state
            .store
            .set_dynamic_membership(tenant, g.id, device, member, now)
            .await
        {
            Ok(true) => {
                changed = true;
                let kind = if member {
                    EventKind::GroupJoined
                } else {
                    EventKind::GroupLeft
                };
                emit(
                    state,
                    device_event(state, tenant, device, kind)
                        .in_group(g.id)
                        .with("group", g.name.as_str())
                        .with("dynamic", true),
                )
                .await;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%device, group = %g.id, error = %e, "cannot record a dynamic membership")
            }
        }
    }
    changed
}

/// Deletes events older than `retention_days`, hourly, until the hub closes.
pub async fn prune_periodically(state: AppState, retention_days: u32) {
    let mut closed = state.events.subscribe();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closed.wait_for(|v| *v == CLOSED) => return,
        }
        let before = state
            .clock
            .now()
            .plus_millis(-i64::from(retention_days) * 86_400_000);
        match state.store.prune_events(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, retention_days, "old events deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot delete old events; will retry"),
        }
    }
}
