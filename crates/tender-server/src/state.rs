//! What every request handler can reach.

use std::sync::Arc;

use tender_core::Clock;
use tender_store::DynStore;

use crate::auth::TokenKey;
use crate::ca::Ca;
use crate::metrics::Metrics;

/// Shared, cheaply cloned application state.
#[derive(Clone)]
pub struct AppState {
    pub store: DynStore,
    pub clock: Arc<dyn Clock>,
    pub token_key: TokenKey,
    pub metrics: Arc<Metrics>,
    pub ca: Arc<Ca>,
    pub device_cert_validity_days: u32,
    /// The MQTT gateway's session registry: send to devices, disconnect them.
    pub gateway: crate::mqtt::Gateway,
    /// Limits on twin and configuration documents.
    pub twin_limits: tender_core::twin::TwinLimits,
    /// Wakes event streams when an event is recorded.
    pub events: crate::events::EventHub,
    /// Serialises renderings of each device's configuration.
    pub render_locks: crate::twin::RenderLocks,
    /// Where artifact files live.
    pub artifacts: Arc<dyn crate::artifacts::ArtifactStore>,
    pub artifacts_config: crate::artifacts::ArtifactsConfig,
    /// Wakes the deployment scheduler.
    pub deployments: crate::deployments::Scheduler,
    /// Commits device telemetry in batches and announces what it stored
    /// ([`TelemetryWriter::subscribe`](crate::telemetry::TelemetryWriter::subscribe)).
    pub telemetry: crate::telemetry::TelemetryWriter,
    /// Wakes the webhook dispatcher.
    pub webhooks: crate::webhooks::Dispatcher,
    /// Fans followed log lines out to API clients.
    pub logs: crate::logs::LogHub,
    pub logs_config: crate::logs::LogsConfig,
}

/// The system clock, millisecond precision.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> tender_core::Timestamp {
        tender_core::Timestamp::from_datetime(time::OffsetDateTime::now_utc())
    }
}

impl AppState {
    /// Every batch of device samples once it is committed (tenant, device, samples), for
    /// consumers such as alert evaluation. See [`crate::telemetry`] for what a slow consumer
    /// misses.
    pub fn telemetry_stored(
        &self,
    ) -> tokio::sync::broadcast::Receiver<Arc<tender_store::DeviceSamples>> {
        self.telemetry.subscribe()
    }
}
