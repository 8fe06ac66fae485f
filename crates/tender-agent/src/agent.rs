//! The agent's main loop: identity, the supervised MQTT connection, telemetry and inventory
//! through the store-and-forward buffer, certificate renewal and the status file.
//!
//! Everything the device sends goes through the on-disk [`Buffer`] first: a reading is
//! appended (and synced, by default) before anything is sent, and a record leaves the buffer
//! only once the server acknowledged it (MQTT PUBACK, or `204` over HTTPS). So a server that is
//! away, a connection that drops, or the agent being killed loses nothing that was appended;
//! what was sent but not yet acknowledged is sent again (at-least-once; the server stores a
//! telemetry sample once per metric and time, so a repeat changes nothing).
//!
//! Where the readings come from is a [`Source`]: the real system ([`SystemSource`]) for the
//! agent, a simulated device for `tender sim`; the rest of the loop is the same.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::buffer::{Buffer, BufferError, Limits, Record, SyncPolicy};
use crate::commands::CommandRunner;
use crate::config::AgentConfig;
use crate::custom::{self, CustomOptions};
use crate::deploy::{self, Deployments};
use crate::desired::DesiredHandler;
use crate::identity::{self, EnrollOptions, Identity, IdentityError};
use crate::inventory::{self, Attributes, ChangeTracker, InventoryOptions, Location};
use crate::mqtt::{self, ConnState, MqttClient, MqttError, MqttOptions, PublishError};
use crate::status::{self, Status};
use crate::telemetry::{self, Collector, Payload};

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
    #[error("the store-and-forward buffer: {0}")]
    Buffer(#[from] BufferError),
    #[error("the MQTT task failed: {0}")]
    Task(String),
    /// The server's `restart-agent` command: exit, to be started again by the service manager.
    #[error("restart requested by the server")]
    RestartRequested,
}

/// The topic a record with this suffix goes to.
pub fn topic(device_id: &str, suffix: &str) -> String {
    format!("tender/v1/{device_id}/{suffix}")
}

/// A record for the server from a handler: appended to the buffer under `suffix`.
#[derive(Debug)]
pub struct Uplink {
    pub suffix: String,
    pub payload: Vec<u8>,
    /// Told whether the record is in the buffer once the main loop appended it (for a handler
    /// that must not go on before its record is safe, e.g. before a reboot).
    pub buffered: Option<tokio::sync::oneshot::Sender<bool>>,
}

impl Uplink {
    pub fn new(suffix: impl Into<String>, payload: Vec<u8>) -> Self {
        Uplink {
            suffix: suffix.into(),
            payload,
            buffered: None,
        }
    }
}

/// What a message from the server is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downlink<'a> {
    /// `state/desired`: the full desired state.
    Desired,
    /// `commands/{id}`: a command.
    Command(&'a str),
    /// `updates/{id}`: a deployment (or its cancel).
    Update(&'a str),
    /// `logs/{id}`: a log request (or, for a follow, its lease renewal).
    Logs(&'a str),
}

/// Classifies a downlink topic of this device; `None` for anything else.
pub fn downlink<'a>(device_id: &str, topic: &'a str) -> Option<Downlink<'a>> {
    let rest = topic
        .strip_prefix("tender/v1/")?
        .strip_prefix(device_id)?
        .strip_prefix('/')?;
    if rest == "state/desired" {
        return Some(Downlink::Desired);
    }
    let valid = |id: &str| !id.is_empty() && !id.contains('/');
    if let Some(id) = rest.strip_prefix("updates/") {
        return valid(id).then_some(Downlink::Update(id));
    }
    if let Some(id) = rest.strip_prefix("logs/") {
        return valid(id).then_some(Downlink::Logs(id));
    }
    let id = rest.strip_prefix("commands/")?;
    valid(id).then_some(Downlink::Command(id))
}

/// The topic telemetry goes to.
pub fn telemetry_topic(device_id: &str) -> String {
    topic(device_id, "telemetry")
}

/// Where the readings come from.
pub trait Source: Send + 'static {
    /// This tick's telemetry: usually one payload, more when readings carry their own times.
    fn telemetry(&mut self, now_ms: i64) -> impl Future<Output = Vec<Payload>> + Send;
    /// The whole inventory now.
    fn inventory(&mut self) -> impl Future<Output = Attributes> + Send;
}

/// The real device: `/proc` and `/sys`, custom collectors and the spool, inventory scripts.
pub struct SystemSource {
    system: Option<Collector>,
    custom: CustomOptions,
    inventory: InventoryOptions,
}

impl SystemSource {
    pub fn new(config: &AgentConfig, proc_root: Option<PathBuf>) -> Self {
        let system = config.system_metrics.then(|| {
            match &proc_root {
                Some(root) => Collector::new(root.clone()),
                None => Collector::default(),
            }
            .with_disks(config.disks.clone())
        });
        SystemSource {
            system,
            custom: CustomOptions {
                collectors_dir: config.collectors_dir.clone(),
                spool_dir: config.metrics_spool_dir.clone(),
                ..CustomOptions::default()
            },
            inventory: InventoryOptions {
                device_type: config.device_type.clone(),
                location: Location {
                    lat: config.location_lat,
                    lon: config.location_lon,
                    site: config.location_site.clone(),
                },
                scripts_dir: config.inventory_scripts_dir.clone(),
                ..InventoryOptions::default()
            },
        }
    }
}

impl Source for SystemSource {
    async fn telemetry(&mut self, now_ms: i64) -> Vec<Payload> {
        let mut now = match &mut self.system {
            Some(c) => c.sample(now_ms),
            None => Payload {
                ts: now_ms,
                values: Default::default(),
            },
        };
        let mut out = Vec::new();
        for sample in custom::collect_custom(&self.custom).await {
            match sample.ts {
                None => now.values.extend(sample.values),
                Some(ts) if ts == now_ms => now.values.extend(sample.values),
                Some(ts) => out.push(Payload {
                    ts,
                    values: sample.values,
                }),
            }
        }
        if !now.values.is_empty() {
            out.insert(0, now);
        }
        out
    }

    async fn inventory(&mut self) -> Attributes {
        inventory::collect(&self.inventory).await
    }
}

/// Options for [`run`] beyond the configuration file.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The root of the `/proc` tree to sample (tests); `None` for `/proc`.
    pub proc_root: Option<std::path::PathBuf>,
    /// The back-off base (1 s unless set).
    pub backoff_base: Option<Duration>,
    /// Seed for the reconnect jitter; `None` seeds from the OS.
    pub rng_seed: Option<u64>,
    /// Write no status file (the simulator runs many agents).
    pub no_status_file: bool,
    /// The telemetry interval, finer than the configuration's seconds (tests, simulator).
    pub telemetry_interval: Option<Duration>,
    /// Live counts shared with other agents of the process (the simulator's progress line).
    pub counters: Option<Arc<Counters>>,
    /// How deployments are carried out (the simulator's devices install nothing).
    pub deployments: crate::deploy::Mode,
    /// Retries and bounds of artifact downloads.
    pub download: Option<crate::download::DownloadOptions>,
}

/// Live counts over the agents of one process.
#[derive(Debug, Default)]
pub struct Counters {
    /// Agents past enrollment and still running.
    pub running: AtomicU64,
    /// Agents connected over MQTT now.
    pub connected: AtomicU64,
    /// Records buffered, acknowledged by the server, refused for good.
    pub appended: AtomicU64,
    pub delivered: AtomicU64,
    pub rejected: AtomicU64,
    /// Readings that could not be buffered at all (disk full, I/O error).
    pub lost: AtomicU64,
    /// Agents that stopped with an error.
    pub failed: AtomicU64,
}

/// Keeps one agent's share of [`Counters`] right, whichever way the agent ends.
struct Presence {
    counters: Option<Arc<Counters>>,
    running: bool,
    connected: bool,
}

impl Presence {
    fn set_running(&mut self, on: bool) {
        if let Some(c) = &self.counters
            && on != self.running
        {
            if on {
                c.running.fetch_add(1, Ordering::Relaxed);
            } else {
                c.running.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.running = on;
    }

    fn set_connected(&mut self, on: bool) {
        if let Some(c) = &self.counters
            && on != self.connected
        {
            if on {
                c.connected.fetch_add(1, Ordering::Relaxed);
            } else {
                c.connected.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.connected = on;
    }

    fn add(&self, f: impl FnOnce(&Counters)) {
        if let Some(c) = &self.counters {
            f(c);
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.set_connected(false);
        self.set_running(false);
    }
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
    enabled: bool,
    /// The last write failed (logged once until a write succeeds again).
    failing: bool,
}

impl StatusWriter {
    fn update(&mut self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status);
        if !self.enabled {
            return;
        }
        self.status.updated_at = status::now_rfc3339();
        match status::write(&self.data_dir, &self.status) {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(error = %e, "could not write the status file (logged once until it works again)");
            }
            Err(_) => {}
        }
    }
}

/// Counters the delivery task keeps for the status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Delivery {
    delivered: u64,
    /// Records the server refused for good (invalid, not supported): dropped, logged.
    rejected: u64,
    last_error: Option<String>,
    last_delivery_at: Option<String>,
}

/// The buffer's directory inside the data directory.
pub const BUFFER_DIR: &str = "buffer";

fn buffer_limits(config: &AgentConfig) -> Limits {
    let defaults = Limits::default();
    Limits {
        max_bytes: config.buffer_max_bytes.max(defaults.segment_bytes),
        sync: match config.buffer_fsync_every {
            0 => SyncPolicy::Never,
            1 => SyncPolicy::Always,
            n => SyncPolicy::EveryN(n),
        },
        ..defaults
    }
}

/// Opens the buffer; one that cannot be opened at all (not merely repaired: the buffer repairs
/// what it can itself) is moved aside and a new one started, so that a damaged file never
/// keeps the agent from running.
fn open_buffer(config: &AgentConfig) -> Result<Buffer, AgentError> {
    let dir = config.data_dir.join(BUFFER_DIR);
    let limits = buffer_limits(config);
    let (buffer, report) = match Buffer::open(&dir, limits) {
        Ok(opened) => opened,
        Err(first) => {
            let aside = config
                .data_dir
                .join(format!("{BUFFER_DIR}.unreadable-{}", telemetry::now_ms()));
            tracing::error!(error = %first, moved_to = %aside.display(), "the buffer cannot be opened; moving it aside and starting an empty one");
            std::fs::rename(&dir, &aside).map_err(|source| IdentityError::Io {
                path: dir.clone(),
                source,
            })?;
            Buffer::open(&dir, limits)?
        }
    };
    for line in &report.messages {
        tracing::warn!("buffer: {line}");
    }
    if report.pending > 0 {
        tracing::info!(
            pending = report.pending,
            "buffered records from an earlier run will be delivered"
        );
    }
    Ok(buffer)
}

/// Runs the agent on the real system until `shutdown` completes (then disconnects cleanly and
/// returns `Ok`) or an unrecoverable error: enrollment refused, or the device revoked / not
/// authorized.
pub async fn run(
    config: &AgentConfig,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let source = SystemSource::new(config, options.proc_root.clone());
    run_with(config, options, source, shutdown).await
}

/// [`run`] with readings from `source`.
pub async fn run_with<S: Source>(
    config: &AgentConfig,
    options: RunOptions,
    mut source: S,
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
        enabled: !options.no_status_file,
        failing: false,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|source| IdentityError::Io {
        path: config.data_dir.clone(),
        source,
    })?;
    writer.update(|s| s.state = "enrolling".into());
    tokio::pin!(shutdown);
    let id = tokio::select! {
        _ = &mut shutdown => {
            writer.update(|s| s.state = "stopped".into());
            return Ok(());
        }
        id = identity::ensure_identity(&config.data_dir, &enroll) => id,
    };
    let id = match id {
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
    let buffer = Arc::new(Mutex::new(open_buffer(config)?));
    let mut presence = Presence {
        counters: options.counters.clone(),
        running: false,
        connected: false,
    };
    presence.set_running(true);
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
        rng_seed: options.rng_seed,
        ..MqttOptions::new(config.mqtt_host.clone(), config.mqtt_port)
    };
    let mqtt::Supervised {
        client,
        mut messages,
        mut state,
        mut task,
    } = mqtt::spawn(mqtt_options, id_rx.clone());

    let wake = Arc::new(Notify::new());
    let (delivery_tx, mut delivery_rx) = watch::channel(Delivery::default());
    let sender = tokio::spawn(deliver(Deliverer {
        device_id: device_id.clone(),
        buffer: buffer.clone(),
        wake: wake.clone(),
        client: client.clone(),
        state: state.clone(),
        https: config.https_fallback_after_secs.map(|after| HttpsFallback {
            after: Duration::from_secs(after),
            server_url: config.server_url.clone(),
            ca_pem: enroll.ca_pem.clone(),
            identity: id_rx.clone(),
        }),
        stats: delivery_tx,
    }));

    let interval = options
        .telemetry_interval
        .unwrap_or(Duration::from_secs(config.telemetry_interval_secs));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inventory_tick =
        tokio::time::interval(Duration::from_secs(config.inventory_interval_secs));
    inventory_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inventory_sent = ChangeTracker::default();
    let mut batch: Vec<Payload> = Vec::new();
    let batch_size = usize::try_from(config.telemetry_batch).unwrap_or(1).max(1);
    let mut messages_open = true;
    let mut state_open = true;
    let mut append_failures = 0u64;
    let counters = options.counters.clone();

    let mut append = |suffix: &str, payload: Vec<u8>, writer: &mut StatusWriter| {
        let result = match buffer.lock() {
            Ok(mut b) => b
                .append(suffix, &payload)
                .map(|o| (o, b.len(), b.dropped_total())),
            Err(_) => return false,
        };
        match result {
            Ok((outcome, pending, dropped)) => {
                if outcome.dropped > 0 {
                    tracing::warn!(
                        dropped = outcome.dropped,
                        dropped_total = dropped,
                        "the buffer is full: dropped the oldest records"
                    );
                }
                if append_failures > 0 {
                    tracing::info!(lost = append_failures, "the buffer accepts records again");
                    append_failures = 0;
                }
                writer.status.buffered = pending;
                writer.status.dropped = dropped;
                if let Some(c) = &counters {
                    c.appended.fetch_add(1, Ordering::Relaxed);
                }
                wake.notify_one();
                true
            }
            Err(e) => {
                // Disk full, read-only file system...: the reading is lost, the agent goes on.
                append_failures += 1;
                writer.status.lost_unbuffered += 1;
                if let Some(c) = &counters {
                    c.lost.fetch_add(1, Ordering::Relaxed);
                }
                if append_failures == 1 || append_failures.is_power_of_two() {
                    tracing::error!(error = %e, failures = append_failures, "cannot buffer a {suffix} record; it is lost");
                }
                writer.status.last_error = Some(format!("buffer: {e}"));
                false
            }
        }
    };

    // What the device answers the server (reported state, command results) goes through the
    // buffer like everything else, so it survives a lost connection or a restart.
    let (uplink_tx, mut uplink_rx) = tokio::sync::mpsc::channel::<Uplink>(64);
    let mut desired = DesiredHandler::new(config, uplink_tx.clone());
    let mut commands = CommandRunner::new(config, uplink_tx.clone());
    let mut restart = commands.restart_requested();
    let mut logs = crate::logs::LogRunner::new(
        config,
        uplink_tx.clone(),
        enroll.ca_pem.clone(),
        id_rx.clone(),
    );
    let inventory_refresh = Arc::new(Notify::new());
    let deployments = Deployments::new(
        config,
        deploy::Setup {
            uplinks: uplink_tx,
            ca_pem: enroll.ca_pem.clone(),
            identity: id_rx.clone(),
            inventory: inventory_refresh.clone(),
            mode: options.deployments.clone(),
            download: options.download.unwrap_or_default(),
        },
    );
    deployments.resume(state.clone());

    let outcome = loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                break Ok(());
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
                presence.set_connected(matches!(now, ConnState::Connected));
                writer.update(|s| {
                    s.state = now.to_string();
                    if let ConnState::BackingOff { error, .. } = &now {
                        s.last_error = Some(error.clone());
                    }
                });
            }
            changed = delivery_rx.changed() => {
                if changed.is_err() {
                    continue;
                }
                let d = delivery_rx.borrow_and_update().clone();
                presence.add(|c| {
                    c.delivered.fetch_add(d.delivered.saturating_sub(writer.status.delivered), Ordering::Relaxed);
                    c.rejected.fetch_add(d.rejected.saturating_sub(writer.status.rejected), Ordering::Relaxed);
                });
                let pending = buffer.lock().map(|b| b.len()).unwrap_or_default();
                writer.update(|s| {
                    s.delivered = d.delivered;
                    s.rejected = d.rejected;
                    s.buffered = pending;
                    if d.last_delivery_at.is_some() {
                        s.last_telemetry_at = d.last_delivery_at.clone();
                    }
                    if d.last_error.is_some() {
                        s.last_error = d.last_error.clone();
                    }
                });
            }
            msg = messages.recv(), if messages_open => match msg {
                Some(m) => match downlink(&device_id, &m.topic) {
                    Some(Downlink::Desired) => desired.on_desired(&m.payload).await,
                    Some(Downlink::Command(id)) => commands.on_command(id, &m.payload),
                    Some(Downlink::Update(id)) => deployments.on_message(id, &m.payload),
                    Some(Downlink::Logs(id)) => logs.on_request(id, &m.payload),
                    None => tracing::info!(topic = %m.topic, bytes = m.payload.len(), "message from the server on a topic this agent does not handle"),
                },
                None => messages_open = false,
            },
            Some(up) = uplink_rx.recv() => {
                let ok = append(&up.suffix, up.payload, &mut writer);
                if let Some(tx) = up.buffered {
                    let _ = tx.send(ok);
                }
            }
            Ok(()) = restart.changed() => {
                if *restart.borrow_and_update() {
                    // The command's report is queued before the request: buffer it first.
                    while let Ok(up) = uplink_rx.try_recv() {
                        let ok = append(&up.suffix, up.payload, &mut writer);
                        if let Some(tx) = up.buffered {
                            let _ = tx.send(ok);
                        }
                    }
                    break Err(AgentError::RestartRequested);
                }
            }
            _ = inventory_refresh.notified() => {
                // Something was installed: collect the inventory now.
                inventory_tick.reset_immediately();
            }
            _ = inventory_tick.tick() => {
                let mut attrs = source.inventory().await;
                // What is installed, for the server's deployments (`provides.*`, `device_type`).
                attrs.extend(deploy::installed_attributes(&config.update));
                if let Some(t) = &config.device_type {
                    attrs.entry("device_type".into()).or_insert_with(|| inventory::Value::Str(t.clone()));
                }
                if inventory_sent.is_new(&attrs) {
                    tracing::info!(attributes = attrs.len(), "inventory changed; sending it");
                    append("inventory", inventory::to_json(&attrs), &mut writer);
                    inventory_sent.acknowledged(inventory::digest(&attrs));
                }
            }
            _ = tick.tick() => {
                let now_ms = telemetry::now_ms();
                let mut readings = source.telemetry(now_ms).await;
                // The agent's own health, beside the device's: operators see a device whose
                // buffer grows or drops before it goes silent.
                let health = [
                    ("agent.buffer.pending", writer.status.buffered),
                    ("agent.buffer.dropped", writer.status.dropped),
                    ("agent.buffer.lost", writer.status.lost_unbuffered),
                ];
                match readings.iter_mut().find(|p| p.ts == now_ms) {
                    Some(p) => p.values.extend(health.map(|(k, v)| (k.to_owned(), v as f64))),
                    None => readings.push(Payload {
                        ts: now_ms,
                        values: health.map(|(k, v)| (k.to_owned(), v as f64)).into(),
                    }),
                }
                batch.extend(readings);
                if batch.len() >= batch_size {
                    let payload = if batch.len() == 1 {
                        batch.pop().map(|p| p.to_json()).unwrap_or_default()
                    } else {
                        serde_json::to_vec(&batch).unwrap_or_default()
                    };
                    batch.clear();
                    append("telemetry", payload, &mut writer);
                    writer.update(|_| {});
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
    sender.abort();
    let _ = sender.await;
    if let Ok(mut b) = buffer.lock()
        && let Err(e) = b.flush()
    {
        tracing::warn!(error = %e, "could not record the buffer's delivery position; some records will be sent again");
    }
    drop(client);
    if !task.is_finished() {
        let r = tokio::time::timeout(Duration::from_secs(5), &mut task).await;
        if r.is_err() {
            task.abort();
        }
    }
    match &outcome {
        Ok(()) => writer.update(|s| s.state = "stopped".into()),
        Err(e) => writer.update(|s| {
            presence.add(|c| {
                c.failed.fetch_add(1, Ordering::Relaxed);
            });
            s.state = format!("stopped: {e}");
            s.last_error = Some(e.to_string());
        }),
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

/// How many records are in flight at once over MQTT.
const WINDOW: usize = 32;

struct HttpsFallback {
    after: Duration,
    server_url: String,
    ca_pem: String,
    identity: watch::Receiver<Arc<Identity>>,
}

struct Deliverer {
    device_id: String,
    buffer: Arc<Mutex<Buffer>>,
    wake: Arc<Notify>,
    client: MqttClient,
    state: watch::Receiver<ConnState>,
    https: Option<HttpsFallback>,
    stats: watch::Sender<Delivery>,
}

/// What happened to one record.
enum Outcome {
    Delivered,
    /// Refused for good: drop it.
    Rejected(String),
    /// Try again later (after a pause).
    Retry(String),
    /// The connection went away: wait for the next one.
    Lost,
}

fn classify(result: Result<(), PublishError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Delivered,
        // Payload invalid, topic not supported or not allowed, packet too large: sending the
        // same bytes again cannot succeed.
        Err(PublishError::Refused { code, reason })
            if matches!(code, 0x83 | 0x87 | 0x90 | 0x95 | 0x99) =>
        {
            Outcome::Rejected(format!(
                "reason 0x{code:02x}{}",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            ))
        }
        Err(e @ PublishError::Refused { .. }) => Outcome::Retry(e.to_string()),
        Err(PublishError::ConnectionLost) | Err(PublishError::Stopped) => Outcome::Lost,
    }
}

/// Delivers the buffer in order, forever (aborted by the main loop).
async fn deliver(mut d: Deliverer) {
    let retry = Backoff {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(60),
    };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let mut attempt = 0u32;
    let mut down_since: Option<Instant> = Some(Instant::now());
    let mut http: Option<(reqwest::Client, Arc<Identity>)> = None;
    loop {
        // Wait until there is something to send: take the notification first so that an
        // append between the check and the wait is not missed.
        let notified = d.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let window = match d.buffer.lock() {
            Ok(mut b) => b.peek(WINDOW),
            Err(_) => return,
        };
        let window = match window {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the buffer; retrying");
                d.stats
                    .send_modify(|s| s.last_error = Some(format!("buffer: {e}")));
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        if window.is_empty() {
            notified.await;
            continue;
        }
        let connected = matches!(*d.state.borrow(), ConnState::Connected);
        if connected {
            down_since = None;
        } else if down_since.is_none() {
            down_since = Some(Instant::now());
        }
        let use_https = match (&d.https, down_since) {
            (Some(f), Some(since)) if !connected => since.elapsed() >= f.after,
            _ => false,
        };
        if !connected && !use_https {
            // Wait for the connection, or until the HTTPS fallback is due.
            let fallback_in = match (&d.https, down_since) {
                (Some(f), Some(since)) => f.after.saturating_sub(since.elapsed()),
                _ => Duration::from_secs(3600),
            };
            tokio::select! {
                r = d.state.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(fallback_in) => {}
            }
            continue;
        }
        let results = if use_https {
            let Some(f) = &d.https else { continue };
            let id = f.identity.borrow().clone();
            let client = match &http {
                Some((c, for_id)) if Arc::ptr_eq(for_id, &id) => c.clone(),
                _ => match identity::http_client(&f.ca_pem, Some(&id)) {
                    Ok(c) => {
                        http = Some((c.clone(), id.clone()));
                        c
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot set up the HTTPS fallback");
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        continue;
                    }
                },
            };
            send_https(&client, &f.server_url, &window).await
        } else {
            send_mqtt(&d.client, &d.device_id, &window).await
        };
        // Acknowledge the records that are done, in order, up to the first that is not.
        let mut done_through = None;
        let mut stop = None;
        let mut delivered = 0u64;
        let mut rejected = 0u64;
        for (record, outcome) in window.iter().zip(results) {
            match outcome {
                Outcome::Delivered => {
                    delivered += 1;
                    done_through = Some(record.seq);
                }
                Outcome::Rejected(why) => {
                    tracing::warn!(seq = record.seq, suffix = %record.suffix, %why, "the server refused a buffered record; dropping it");
                    rejected += 1;
                    done_through = Some(record.seq);
                }
                other => {
                    stop = Some(other);
                    break;
                }
            }
        }
        if let Some(seq) = done_through
            && let Ok(mut b) = d.buffer.lock()
            && let Err(e) = b.ack(seq)
        {
            tracing::warn!(error = %e, "cannot record delivery in the buffer");
        }
        if delivered + rejected > 0 {
            attempt = 0;
            d.stats.send_modify(|s| {
                s.delivered += delivered;
                s.rejected += rejected;
                if delivered > 0 {
                    s.last_delivery_at = Some(status::now_rfc3339());
                }
            });
        }
        match stop {
            Some(Outcome::Retry(why)) => {
                let wait = retry.delay(attempt, &mut rng);
                attempt = attempt.saturating_add(1);
                tracing::warn!(%why, wait_ms = wait.as_millis() as u64, "delivery failed; retrying");
                d.stats.send_modify(|s| s.last_error = Some(why));
                tokio::time::sleep(wait).await;
            }
            Some(Outcome::Lost) => {
                // The supervisor reconnects; look again once its state moves.
                if matches!(*d.state.borrow(), ConnState::Connected) {
                    let _ = tokio::time::timeout(Duration::from_secs(1), d.state.changed()).await;
                }
            }
            _ => {}
        }
    }
}

async fn send_mqtt(client: &MqttClient, device_id: &str, window: &[Record]) -> Vec<Outcome> {
    // Publish the whole window at once (the connection keeps their order), then collect the
    // acknowledgements in order.
    let handles: Vec<_> = window
        .iter()
        .map(|r| {
            let client = client.clone();
            let topic = topic(device_id, &r.suffix);
            let payload = bytes::Bytes::from(r.payload.clone());
            tokio::spawn(async move { client.publish(topic, payload).await })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(match h.await {
            Ok(r) => classify(r),
            Err(_) => Outcome::Lost,
        });
    }
    out
}

async fn send_https(client: &reqwest::Client, server_url: &str, window: &[Record]) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(window.len());
    for r in window {
        let request = match r.suffix.as_str() {
            "telemetry" => client.post(format!("{server_url}/device/v1/telemetry")),
            "inventory" => client.put(format!("{server_url}/device/v1/inventory")),
            "state/reported" => client.patch(format!("{server_url}/device/v1/state/reported")),
            // Only MQTT carries the rest: wait for it.
            _ => {
                out.push(Outcome::Retry(format!(
                    "{} records go over MQTT only",
                    r.suffix
                )));
                break;
            }
        };
        let outcome = match request
            .header("content-type", "application/json")
            .body(r.payload.clone())
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => Outcome::Delivered,
            Ok(resp) if resp.status() == reqwest::StatusCode::BAD_REQUEST => {
                let body = resp.text().await.unwrap_or_default();
                Outcome::Rejected(format!("HTTPS 400: {body}"))
            }
            Ok(resp) => Outcome::Retry(format!("HTTPS {}", resp.status())),
            Err(e) => Outcome::Retry(format!("HTTPS: {e}")),
        };
        let stop = !matches!(outcome, Outcome::Delivered | Outcome::Rejected(_));
        out.push(outcome);
        if stop {
            break;
        }
    }
    out
}
