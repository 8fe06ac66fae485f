//! Device commands on the server: sending to connected devices, resending at reconnect, the
//! devices' reports, and the sweep that times attempts out, retries and expires.
//!
//! The per-device rules are the core's ([`tender_core::command::Target`]); every change goes
//! through [`tender_store::CommandStore::update_target`], a compare-and-set on the state read, so
//! the device's report, the sweep and an operator's cancel cannot overwrite one another. A
//! message goes to a device only after the store recorded the attempt.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use rmqtt_codec::types::QoS;
use serde::Deserialize;
use tender_core::command::{Command, CommandState, Report, Target};
use tender_core::{CommandId, DeviceId, TenantId, Timestamp};
use tender_store::StoreError;
use tokio::sync::watch;

use crate::mqtt::uplink::Refusal;
use crate::state::AppState;

/// `[commands]`: the background sweep.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsConfig {
    /// How often attempts past their timeout are retried or timed out, and commands past
    /// their TTL expired (milliseconds).
    pub sweep_interval_ms: u64,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            sweep_interval_ms: 5_000,
        }
    }
}

/// The downlink topic suffix of a command.
pub fn suffix(id: CommandId) -> String {
    format!("commands/{id}")
}

fn send(state: &AppState, command: &Command, device: DeviceId, target: &Target) {
    let payload = command.downlink_payload(
        target.attempts,
        target.sent_at.unwrap_or_else(|| state.clock.now()),
    );
    state.gateway.send(
        device,
        &suffix(command.id),
        Bytes::from(payload),
        QoS::AtLeastOnce,
        &state.metrics,
    );
}

/// Sends a new command to those of `devices` that are connected now (attempt 1); the others
/// stay `queued` until they connect. Returns how many were sent.
pub async fn dispatch_new(
    state: &AppState,
    command: &Command,
    devices: &[DeviceId],
) -> Result<usize, StoreError> {
    let connected: Vec<DeviceId> = devices
        .iter()
        .copied()
        .filter(|d| state.gateway.is_connected(*d))
        .collect();
    if connected.is_empty() {
        return Ok(0);
    }
    let now = state.clock.now();
    let sent = state.store.mark_sent(command, &connected, now).await?;
    for d in &sent {
        let target = Target::queued(command, *d)
            .on_sent(now, command.timeout_secs, command.max_attempts)
            .unwrap_or_else(|_| Target::queued(command, *d));
        send(state, command, *d, &target);
    }
    Ok(sent.len())
}

/// A new attempt for a queued target (recorded first), then the message.
async fn send_attempt(
    state: &AppState,
    command: &Command,
    target: &Target,
) -> Result<bool, StoreError> {
    let now = state.clock.now();
    let Ok(next) = target.on_sent(now, command.timeout_secs, command.max_attempts) else {
        return Ok(false);
    };
    if !state.store.update_target(target, &next).await? {
        return Ok(false);
    }
    send(state, command, target.device_id, &next);
    Ok(true)
}

/// A device subscribed or resumed its session: send what it should have. Queued targets get
/// a new attempt; targets already sent or delivered are sent again as they are (the agent runs
/// a command id once), without using an attempt, since the earlier copy may have been lost
/// with the connection.
pub async fn resync(state: &AppState, tenant: TenantId, device: DeviceId, at: Timestamp) {
    let pending = match state
        .store
        .pending_for_device(tenant, device, state.clock.now())
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%device, error = %e, "cannot read the device's pending commands");
            return;
        }
    };
    if !pending.is_empty() {
        tracing::debug!(%device, pending = pending.len(), "sending pending commands");
    }
    for target in pending {
        let command = match state.store.command(tenant, target.command_id).await {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(%device, error = %e, "cannot read a pending command");
                return;
            }
        };
        let result = match target.state {
            CommandState::Queued => send_attempt(state, &command, &target).await.map(|_| ()),
            // Sent before this subscription: the device may not have it. Sent since: it went
            // out on this subscription already.
            _ if target.sent_at.is_some_and(|s| s < at) => {
                send(state, &command, device, &target);
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(%device, command = %command.id, error = %e, "cannot send a pending command");
        }
    }
}

/// A device's message on `commands/{id}/result`.
pub async fn on_report(
    state: &AppState,
    tenant: TenantId,
    device: DeviceId,
    command_id: &str,
    payload: &[u8],
) -> Result<(), Refusal> {
    let report = tender_core::command::parse_report(payload)
        .map_err(|e| Refusal::PayloadInvalid(e.to_string()))?;
    let unknown =
        || Refusal::PayloadInvalid(format!("no command {command_id} was sent to this device"));
    let id = uuid::Uuid::try_parse(command_id)
        .map(CommandId::from_uuid)
        .map_err(|_| unknown())?;
    let unavailable = |e: StoreError| {
        tracing::warn!(%device, command = %id, error = %e, "cannot record a command report");
        Refusal::Unavailable("the command report could not be stored; retry".into())
    };
    // A compare-and-set can lose to the sweep or a cancel: read again and re-apply.
    for _ in 0..5 {
        let Some(target) = state
            .store
            .command_target(tenant, id, device)
            .await
            .map_err(unavailable)?
        else {
            return Err(unknown());
        };
        let now = state.clock.now();
        let next = match &report {
            Report::Delivered => match target.on_delivered(now) {
                Ok(n) if n != target => n,
                // Already delivered, or finished: nothing to record.
                _ => return Ok(()),
            },
            Report::Finished { succeeded, outcome } => {
                match target.on_result(*succeeded, outcome.clone(), now) {
                    Some(n) => n,
                    None => return Ok(()),
                }
            }
        };
        if state
            .store
            .update_target(&target, &next)
            .await
            .map_err(unavailable)?
        {
            crate::events::emit(
                state,
                crate::events::device_event(
                    state,
                    tenant,
                    device,
                    tender_core::event::EventKind::CommandStateChanged,
                )
                .with("command_id", id.to_string())
                .with("state", next.state.as_str()),
            )
            .await;
            return Ok(());
        }
    }
    Err(Refusal::Unavailable(
        "the command changed concurrently; retry".into(),
    ))
}

/// One pass of the sweep: expire what is past its TTL, then time out attempts past their
/// deadline (requeue with attempts left, resending at once to a connected device).
pub async fn sweep_once(state: &AppState) -> Result<(), StoreError> {
    let now = state.clock.now();
    let expired = state.store.expire_targets(now).await?;
    if expired > 0 {
        tracing::info!(expired, "command targets expired");
    }
    let due = state.store.due_timeouts(now, 1000).await?;
    let mut commands: HashMap<(TenantId, CommandId), Option<Command>> = HashMap::new();
    for target in due {
        let key = (target.tenant_id, target.command_id);
        let command = match commands.get(&key) {
            Some(c) => c.clone(),
            None => {
                let c = state.store.command(key.0, key.1).await?;
                commands.insert(key, c.clone());
                c
            }
        };
        let Some(command) = command else { continue };
        let Ok(next) = target.on_timeout(now, command.max_attempts) else {
            continue;
        };
        if !state.store.update_target(&target, &next).await? {
            continue;
        }
        if next.state == CommandState::Queued && state.gateway.is_connected(target.device_id) {
            send_attempt(state, &command, &next).await?;
        }
    }
    Ok(())
}

/// Runs [`sweep_once`] every `interval` until `shutdown` turns true.
pub async fn sweeper(state: AppState, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = sweep_once(&state).await {
                    tracing::warn!(error = %e, "command sweep failed; will retry");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}
