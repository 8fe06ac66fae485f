//! The agent's main loop: identity, the supervised MQTT connection, periodic telemetry,
//! certificate renewal and the status file.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::identity::{self, EnrollOptions, Identity, IdentityError};
use crate::mqtt::{self, ConnState, MqttError, MqttOptions};
use crate::status::{self, Status};
use crate::telemetry::{self, Collector};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("reading the CA file {path}: {source}")]
    Ca {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error("the MQTT task failed: {0}")]
    Task(String),
}

/// The topic telemetry goes to.
pub fn telemetry_topic(device_id: &str) -> String {
    format!("tender/v1/{device_id}/telemetry")
}

/// Options for [`run`] beyond the configuration file.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The root of the `/proc` tree to sample (tests); `None` for `/proc`.
    pub proc_root: Option<std::path::PathBuf>,
    /// The back-off base (1 s unless set).
    pub backoff_base: Option<Duration>,
}

fn enroll_options(config: &AgentConfig, ca_pem: String) -> EnrollOptions {
    EnrollOptions {
        server_url: config.server_url.clone(),
        ca_pem,
        token: config.enrollment_token.clone(),
        name: config.device_name.clone(),
        device_type: config.device_type.clone(),
    }
}

struct StatusWriter {
    data_dir: std::path::PathBuf,
    status: Status,
}

impl StatusWriter {
    fn update(&mut self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status);
        self.status.updated_at = status::now_rfc3339();
        if let Err(e) = status::write(&self.data_dir, &self.status) {
            tracing::warn!(error = %e, "could not write the status file");
        }
    }
}

/// Runs the agent until `shutdown` completes (then disconnects cleanly and returns `Ok`) or an
/// unrecoverable error: enrollment refused, or the device revoked / not authorized.
pub async fn run(
    config: &AgentConfig,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let ca_pem = std::fs::read_to_string(&config.ca_file).map_err(|source| AgentError::Ca {
        path: config.ca_file.clone(),
        source,
    })?;
    let enroll = enroll_options(config, ca_pem);
    let mut writer = StatusWriter {
        data_dir: config.data_dir.clone(),
        status: Status {
            pid: Some(std::process::id()),
            ..Default::default()
        },
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|source| IdentityError::Io {
        path: config.data_dir.clone(),
        source,
    })?;
    writer.update(|s| s.state = "enrolling".into());
    let id = match identity::ensure_identity(&config.data_dir, &enroll).await {
        Ok(id) => id,
        Err(e) => {
            writer.update(|s| {
                s.state = format!("stopped: {e}");
                s.last_error = Some(e.to_string());
            });
            return Err(e.into());
        }
    };
    let device_id = id.device_id().to_owned();
    writer.update(|s| {
        s.device_id = Some(device_id.clone());
        s.certificate_not_after = Some(id.record.not_after.clone());
        s.state = "connecting".into();
    });

    let (id_tx, id_rx) = watch::channel(Arc::new(id));
    let mqtt_options = MqttOptions {
        keepalive_secs: config.keepalive_secs,
        backoff: Backoff {
            base: options.backoff_base.unwrap_or(Duration::from_secs(1)),
            cap: Duration::from_secs(config.max_backoff_secs),
        },
        ..MqttOptions::new(config.mqtt_host.clone(), config.mqtt_port)
    };
    let mqtt::Supervised {
        client,
        mut messages,
        mut state,
        mut task,
    } = mqtt::spawn(mqtt_options, id_rx);

    let mut collector = match &options.proc_root {
        Some(root) => Collector::new(root.clone()),
        None => Collector::default(),
    };
    let interval = Duration::from_secs(config.telemetry_interval_secs);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let topic = telemetry_topic(&device_id);
    tokio::pin!(shutdown);
    let mut messages_open = true;
    let mut state_open = true;

    let outcome = loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                drop(client);
                let r = tokio::time::timeout(Duration::from_secs(5), &mut task).await;
                if r.is_err() {
                    task.abort();
                }
                writer.update(|s| s.state = "stopped".into());
                return Ok(());
            }
            done = &mut task => {
                break match done {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(AgentError::Mqtt(e)),
                    Err(e) => Err(AgentError::Task(e.to_string())),
                };
            }
            changed = state.changed(), if state_open => {
                if changed.is_err() {
                    state_open = false;
                    continue;
                }
                let now = state.borrow_and_update().clone();
                writer.update(|s| {
                    s.state = now.to_string();
                    if let ConnState::BackingOff { error, .. } = &now {
                        s.last_error = Some(error.clone());
                    }
                });
            }
            msg = messages.recv(), if messages_open => match msg {
                Some(m) => tracing::info!(topic = %m.topic, bytes = m.payload.len(), "message from the server (not acted on yet)"),
                None => messages_open = false,
            },
            _ = tick.tick() => {
                let payload = collector.sample(telemetry::now_ms());
                if payload.values.is_empty() {
                    continue;
                }
                match tokio::time::timeout(interval, client.publish(topic.clone(), payload.to_json())).await {
                    Ok(Ok(())) => {
                        tracing::debug!(metrics = payload.values.len(), "telemetry stored");
                        writer.update(|s| s.last_telemetry_at = Some(status::now_rfc3339()));
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "telemetry not delivered"),
                    Err(_) => tracing::warn!("telemetry not delivered in time (disconnected?); sample dropped"),
                }
                let current = id_tx.borrow().clone();
                if current.needs_renewal(time::OffsetDateTime::now_utc()) {
                    match renew(config, &enroll, &current).await {
                        Ok(new) => {
                            writer.update(|s| s.certificate_not_after = Some(new.record.not_after.clone()));
                            let _ = id_tx.send(Arc::new(new));
                        }
                        Err(e) => tracing::warn!(error = %e, "certificate renewal failed; will retry"),
                    }
                }
            }
        }
    };
    if let Err(e) = &outcome {
        writer.update(|s| {
            s.state = format!("stopped: {e}");
            s.last_error = Some(e.to_string());
        });
    }
    outcome
}

async fn renew(
    config: &AgentConfig,
    enroll: &EnrollOptions,
    current: &Identity,
) -> Result<Identity, IdentityError> {
    tracing::info!("renewing the device certificate");
    let new = identity::renew(enroll, current).await?;
    new.store(&config.data_dir)?;
    tracing::info!(not_after = %new.record.not_after, "certificate renewed");
    Ok(new)
}
