//! Commands from the server (`commands/{id}`): not carried out by this version yet.

use tokio::sync::mpsc;

use crate::agent::Uplink;
use crate::config::AgentConfig;

/// Runs commands from the server and reports their outcome.
pub struct CommandRunner {
    _uplinks: mpsc::Sender<Uplink>,
}

impl CommandRunner {
    pub fn new(_config: &AgentConfig, uplinks: mpsc::Sender<Uplink>) -> Self {
        CommandRunner { _uplinks: uplinks }
    }

    /// A command arrived.
    pub fn on_command(&mut self, id: &str, payload: &[u8]) {
        tracing::info!(
            command = id,
            bytes = payload.len(),
            "command from the server (not carried out by this version)"
        );
    }
}
