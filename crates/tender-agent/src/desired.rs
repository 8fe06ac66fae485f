//! The desired state from the server (`state/desired`): not applied by this version yet.

use tokio::sync::mpsc;

use crate::agent::Uplink;
use crate::config::AgentConfig;

/// Applies the desired state and reports what was applied.
pub struct DesiredHandler {
    _uplinks: mpsc::Sender<Uplink>,
}

impl DesiredHandler {
    pub fn new(_config: &AgentConfig, uplinks: mpsc::Sender<Uplink>) -> Self {
        DesiredHandler { _uplinks: uplinks }
    }

    /// The full desired state arrived.
    pub async fn on_desired(&mut self, payload: &[u8]) {
        tracing::info!(
            bytes = payload.len(),
            "desired state from the server (not applied by this version)"
        );
    }
}
