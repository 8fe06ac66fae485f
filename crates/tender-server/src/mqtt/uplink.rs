//! Where messages from devices go once the gateway has accepted them.

use async_trait::async_trait;
use bytes::Bytes;
use tender_core::{DeviceId, TenantId, Timestamp};

use super::topic::Uplink;

/// The device a message came from, as authenticated at CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct From {
    pub tenant_id: TenantId,
    pub device_id: DeviceId,
}

/// Why an uplink message was not taken. The gateway answers each with a reason code (MQTT 5)
/// or closes the connection (3.1.1 QoS 1/2, which has no way to refuse one message).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// A topic of the scheme that this server does not process yet.
    #[error("{0}")]
    NotSupported(String),
    /// The payload does not follow the documented schema.
    #[error("{0}")]
    PayloadInvalid(String),
    /// Storage failed: the device should retry.
    #[error("{0}")]
    Unavailable(String),
}

/// Processes accepted uplink messages. Returning `Ok` means the message is stored (or fully
/// acted on): only then does the gateway acknowledge it.
#[async_trait]
pub trait UplinkHandler: Send + Sync + 'static {
    async fn handle(
        &self,
        from: From,
        uplink: &Uplink,
        payload: &Bytes,
        received_at: Timestamp,
    ) -> Result<(), Refusal>;

    /// Called when a device subscribes to downlink topics, and when it resumes a session that
    /// has subscriptions: send it everything it should have now (the full desired state,
    /// pending commands), so a device that was away misses nothing. Errors are the handler's
    /// to log; the session carries on. `at` is when the device subscribed or resumed: what
    /// was sent after it reached the device through the new subscription already.
    async fn resync(&self, _from: From, _at: Timestamp) {}
}

/// The server's handler: stores what the server processes and refuses the rest clearly.
pub struct ServerUplinks {
    state: crate::state::AppState,
}

impl ServerUplinks {
    pub fn new(state: crate::state::AppState) -> Self {
        ServerUplinks { state }
    }
}

#[async_trait]
impl UplinkHandler for ServerUplinks {
    async fn handle(
        &self,
        from: From,
        uplink: &Uplink,
        payload: &Bytes,
        received_at: Timestamp,
    ) -> Result<(), Refusal> {
        match uplink {
            Uplink::Telemetry => {
                let samples = tender_core::telemetry::parse_payload(payload, received_at)
                    .map_err(|e| Refusal::PayloadInvalid(e.to_string()))?;
                match self
                    .state
                    .telemetry
                    .write(from.tenant_id, from.device_id, samples)
                    .await
                {
                    Ok(_) => {}
                    Err(crate::telemetry::WriteError::Stopped) => {
                        return Err(Refusal::Unavailable(
                            "the server is stopping; send again after reconnecting".into(),
                        ));
                    }
                    Err(crate::telemetry::WriteError::Store(e)) => {
                        tracing::warn!(device = %from.device_id, error = %e, "cannot store telemetry");
                        return Err(Refusal::Unavailable(
                            "telemetry could not be stored; retry".into(),
                        ));
                    }
                }
                Ok(())
            }
            Uplink::Inventory => {
                let inventory = tender_core::inventory::parse_inventory(payload)
                    .map_err(|e| Refusal::PayloadInvalid(e.to_string()))?;
                let changed = self
                    .state
                    .store
                    .put_inventory(from.tenant_id, from.device_id, &inventory, received_at)
                    .await
                    .map_err(|e| {
                        tracing::warn!(device = %from.device_id, error = %e, "cannot store inventory");
                        Refusal::Unavailable("inventory could not be stored; retry".into())
                    })?;
                if changed {
                    tracing::debug!(device = %from.device_id, attributes = inventory.len(), "inventory changed");
                    crate::events::emit(
                        &self.state,
                        crate::events::device_event(
                            &self.state,
                            from.tenant_id,
                            from.device_id,
                            tender_core::event::EventKind::InventoryChanged,
                        )
                        .with("attributes", inventory.len()),
                    )
                    .await;
                    crate::twin::device_facts_changed(&self.state, from.tenant_id, from.device_id);
                }
                Ok(())
            }
            Uplink::Reported => {
                use crate::twin::ReportError;
                match crate::twin::apply_reported(
                    &self.state,
                    from.tenant_id,
                    from.device_id,
                    payload,
                    received_at,
                )
                .await
                {
                    Ok(_) => Ok(()),
                    Err(ReportError::Invalid(why)) => Err(Refusal::PayloadInvalid(why)),
                    Err(e) => {
                        tracing::warn!(device = %from.device_id, error = %e, "cannot store reported state");
                        Err(Refusal::Unavailable(
                            "reported state could not be stored; retry".into(),
                        ))
                    }
                }
            }
            Uplink::CommandResult { command_id } => {
                crate::commands::on_report(
                    &self.state,
                    from.tenant_id,
                    from.device_id,
                    command_id,
                    payload,
                )
                .await
            }
            Uplink::UpdateStatus { deployment_id } => {
                crate::deployments::on_status(
                    &self.state,
                    from.tenant_id,
                    from.device_id,
                    deployment_id,
                    payload,
                )
                .await
            }
            Uplink::LogStatus { request_id } => {
                crate::logs::on_status(
                    &self.state,
                    from.tenant_id,
                    from.device_id,
                    request_id,
                    payload,
                )
                .await
            }
            Uplink::LogLines { request_id } => {
                crate::logs::on_lines(
                    &self.state,
                    from.tenant_id,
                    from.device_id,
                    request_id,
                    payload,
                )
                .await
            }
            other => Err(Refusal::NotSupported(format!(
                "{} messages are not processed by this server version yet",
                other.kind()
            ))),
        }
    }

    async fn resync(&self, from: From, at: Timestamp) {
        if let Err(e) =
            crate::twin::push_desired(&self.state, from.tenant_id, from.device_id, true).await
        {
            tracing::warn!(device = %from.device_id, error = %e.detail, "cannot send the desired state on resync");
        }
        crate::commands::resync(&self.state, from.tenant_id, from.device_id, at).await;
        crate::deployments::resync(&self.state, from.tenant_id, from.device_id).await;
        crate::logs::resync(&self.state, from.tenant_id, from.device_id, at).await;
    }
}
