//! The Tender server as a library: [`start`] brings it up from a [`Config`] and returns a
//! [`RunningServer`] that can be shut down gracefully. The `tender` binary wraps this; tests use
//! it directly on ephemeral ports.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tender_core::Clock;
use tender_store::{DynStore, OpenOptions, StoreError, redact_url};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub mod alerts;
pub mod api;
pub mod artifacts;
pub mod auth;
pub mod bootstrap;
pub mod ca;
pub mod commands;
pub mod config;
pub mod datadir;
pub mod deployments;
pub mod device_api;
pub mod enroll;
pub mod events;
pub mod logs;
pub mod metrics;
pub mod mqtt;
pub mod problem;
pub mod state;
pub mod telemetry;
pub mod twin;
pub mod webhooks;

pub use config::Config;

use crate::datadir::DataDir;
use crate::state::{AppState, SystemClock};

/// Why the server could not start. Each message is one line naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot open the artifact directory {dir}: {source}")]
    Artifacts {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A server that is up and answering.
pub struct RunningServer {
    /// Where the HTTP API listens (the real port when the config said 0).
    pub http_addr: SocketAddr,
    /// Where the HTTPS device API listens.
    pub device_addr: SocketAddr,
    /// Where the MQTT gateway listens, when enabled.
    pub mqtt_addr: Option<SocketAddr>,
    /// The MQTT gateway's registry (send to devices, see who is connected).
    pub gateway: mqtt::Gateway,
    /// The first admin's API token: only on the start that created the admin.
    pub bootstrap_token: Option<String>,
    /// The CA certificate devices must trust.
    pub ca_cert_path: PathBuf,
    /// The database in use, password redacted.
    pub database: String,
    pub data_dir: PathBuf,
    pub store: DynStore,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    device_shutdown: watch::Sender<bool>,
    device_task: JoinHandle<()>,
    mqtt_task: Option<JoinHandle<()>>,
    events: events::EventHub,
    grace: Duration,
}

/// Brings the server up: data directory, secrets, CA, store and migrations, bootstrap, listener.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    config.validate()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let data = DataDir::prepare(&config.data_dir)?;
    let token_key = data.token_key()?;
    let ca = ca::load_or_create(&config.ca, &data, clock.now())?;
    if ca.created {
        tracing::info!(cert = %ca.cert_path.display(), "created the built-in device CA");
    }
    let store = open_store(&config).await?;
    let boot = bootstrap::run(&*store, &token_key, &*clock).await?;
    let artifact_dir = config
        .artifacts
        .dir
        .clone()
        .unwrap_or_else(|| data.root().join("artifacts"));
    let artifact_store = artifacts::FsArtifactStore::open(&artifact_dir).map_err(|source| {
        StartError::Artifacts {
            dir: artifact_dir.clone(),
            source,
        }
    })?;

    let ca_cert_path = ca.cert_path.clone();
    let ca = Arc::new(ca);

    let listener = bind(config.http.listen).map_err(|source| StartError::Listen {
        addr: config.http.listen,
        source,
    })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.http.listen,
        source,
    })?;

    let device_listener = bind(config.devices.listen).map_err(|source| StartError::Listen {
        addr: config.devices.listen,
        source,
    })?;
    let device_addr = device_listener
        .local_addr()
        .map_err(|source| StartError::Listen {
            addr: config.devices.listen,
            source,
        })?;
    let listener_cert = Arc::new(device_api::ListenerCertificate::issue(
        &ca,
        &config.devices.hostnames,
        clock.now(),
    )?);
    let tls = Arc::new(device_api::tls_config(&ca, listener_cert.clone())?);
    let mqtt_listener = if config.mqtt.enabled {
        let l = bind(config.mqtt.listen).map_err(|source| StartError::Listen {
            addr: config.mqtt.listen,
            source,
        })?;
        Some(l)
    } else {
        None
    };
    let mqtt_addr = match &mqtt_listener {
        Some(l) => Some(l.local_addr().map_err(|source| StartError::Listen {
            addr: config.mqtt.listen,
            source,
        })?),
        None => None,
    };
    // Connections still marked open were cut by a stop or crash of this server.
    let stale = store
        .close_open_connections(clock.now(), "server restart")
        .await?;
    if stale > 0 {
        tracing::info!(
            stale,
            "closed device connections left open by the previous run"
        );
    }
    let gateway = mqtt::Gateway::new(config.mqtt.clone());

    let metrics = Arc::new(metrics::Metrics::new());
    let state = AppState {
        store: store.clone(),
        clock,
        token_key,
        telemetry: telemetry::TelemetryWriter::start(
            store.clone(),
            &config.telemetry,
            metrics.telemetry.clone(),
        ),
        metrics,
        ca,
        device_cert_validity_days: config.devices.certificate_validity_days,
        gateway: gateway.clone(),
        twin_limits: config.twin.limits(),
        events: crate::events::EventHub::default(),
        render_locks: crate::twin::RenderLocks::default(),
        artifacts: Arc::new(artifact_store),
        artifacts_config: config.artifacts.clone(),
        deployments: crate::deployments::Scheduler::default(),
        webhooks: crate::webhooks::Dispatcher::default(),
        logs: crate::logs::LogHub::default(),
        logs_config: config.logs.clone(),
    };
    let (device_shutdown, device_signal) = watch::channel(false);
    let listener_cert_for_mqtt = listener_cert.clone();
    let device_signal_for_mqtt = device_signal.clone();
    let device_signal_for_commands = device_signal.clone();
    let device_signal_for_deployments = device_signal.clone();
    let device_signal_for_alerts = device_signal.clone();
    let device_signal_for_telemetry = device_signal.clone();
    let device_signal_for_webhooks = device_signal.clone();
    let device_signal_for_logs = device_signal.clone();
    tokio::spawn(device_api::rotate_daily(
        listener_cert,
        state.ca.clone(),
        config.devices.hostnames.clone(),
        state.clock.clone(),
        device_signal.clone(),
    ));
    let device_task = tokio::spawn(device_api::serve(
        device_listener,
        tls,
        device_api::router(state.clone()),
        Duration::from_secs(config.devices.handshake_timeout_secs.max(1)),
        config.devices.max_connections,
        state.metrics.clone(),
        device_signal,
    ));
    let mqtt_task = match mqtt_listener {
        Some(listener) => {
            let mqtt_tls = Arc::new(device_api::tls_config_with_alpn(
                &state.ca,
                listener_cert_for_mqtt,
                Vec::new(),
            )?);
            Some(tokio::spawn(mqtt::serve(
                listener,
                mqtt_tls,
                state.clone(),
                gateway.clone(),
                Arc::new(mqtt::uplink::ServerUplinks::new(state.clone())),
                device_signal_for_mqtt,
            )))
        }
        None => None,
    };
    tokio::spawn(events::prune_periodically(
        state.clone(),
        config.events.retention_days,
    ));
    let events = state.events.clone();
    tokio::spawn(deployments::scheduler(
        state.clone(),
        config.deployments.clone(),
        device_signal_for_deployments,
    ));
    tokio::spawn(alerts::engine(
        state.clone(),
        config.alerts.clone(),
        device_signal_for_alerts,
    ));
    tokio::spawn(telemetry::retention(
        state.clone(),
        config.telemetry.clone(),
        device_signal_for_telemetry,
    ));
    tokio::spawn(webhooks::dispatcher(
        state.clone(),
        config.webhooks.clone(),
        device_signal_for_webhooks,
    ));
    tokio::spawn(commands::sweeper(
        state.clone(),
        Duration::from_millis(config.commands.sweep_interval_ms),
        device_signal_for_commands,
    ));
    tokio::spawn(logs::sweeper(state.clone(), device_signal_for_logs));
    let app = api::router(state, &config.http);
    let (shutdown, signal) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = signal.await;
            })
            .await
    });
    tracing::info!(%http_addr, %device_addr, mqtt_addr = ?mqtt_addr, database = %redact_url(&config.database_url()), "server started");
    Ok(RunningServer {
        http_addr,
        device_addr,
        mqtt_addr,
        gateway,
        device_shutdown,
        device_task,
        mqtt_task,
        bootstrap_token: boot.admin_token,
        ca_cert_path,
        database: redact_url(&config.database_url()),
        data_dir: data.root().to_owned(),
        store,
        shutdown,
        task,
        events,
        grace: Duration::from_secs(config.http.shutdown_grace_secs),
    })
}

/// Pending connections the kernel queues per listener before `accept`. The default of 128
/// drops connections in bursts (a fleet reconnecting after an outage), which clients then
/// retry only after a second.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with [`LISTEN_BACKLOG`] and address reuse (a restart does not wait for
/// the previous run's sockets in TIME_WAIT).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn open_store(config: &Config) -> Result<DynStore, StoreError> {
    tender_store::open(&OpenOptions {
        url: config.database_url(),
        max_connections: config.database.max_connections,
        connect_timeout: config.connect_timeout(),
    })
    .await
}

impl RunningServer {
    /// Stops accepting connections, lets in-flight requests finish (up to the configured grace
    /// period), then returns. Returns `false` if the grace period ran out first.
    pub async fn shutdown(self) -> bool {
        let _ = self.device_shutdown.send(true);
        let _ = self.device_task.await;
        if let Some(t) = self.mqtt_task {
            let _ = t.await;
            // Sessions skip their own bookkeeping when the server stops; close their records
            // in one statement.
            match self
                .store
                .close_open_connections(SystemClock.now(), "server shutting down")
                .await
            {
                Ok(n) if n > 0 => tracing::info!(closed = n, "closed MQTT connection records"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot close MQTT connection records; the next start will")
                }
            }
        }
        // Live event streams end, so they do not hold the HTTP server open.
        self.events.close();
        let _ = self.shutdown.send(());
        let mut task = self.task;
        match tokio::time::timeout(self.grace, &mut task).await {
            Ok(Ok(Ok(()))) => true,
            Ok(Ok(Err(e))) => {
                tracing::error!(error = %e, "HTTP server failed while stopping");
                true
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "HTTP server task failed");
                true
            }
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "in-flight requests outlived the shutdown grace period");
                task.abort();
                false
            }
        }
    }

    /// Runs until `signals` fires, then shuts down gracefully.
    pub async fn run_until(self, mut signals: ShutdownSignals) -> bool {
        signals.wait().await;
        tracing::info!("shutting down: draining in-flight requests");
        self.shutdown().await
    }
}

/// SIGINT and SIGTERM handlers. Install them before announcing that the server is up, so that a
/// signal sent as soon as the announcement is seen is handled, not fatal.
pub struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

/// Issues a new API token for the default tenant's `admin` user directly against the database,
/// for operators who lost the bootstrap token. Needs the server's data directory (for the token
/// key) and database.
pub async fn issue_admin_token(config: &Config) -> Result<String, StartError> {
    config.validate()?;
    let clock = SystemClock;
    let data = DataDir::prepare(&config.data_dir)?;
    let key = data.token_key()?;
    let store = open_store(config).await?;
    let tenant = bootstrap::default_tenant(&*store, &clock).await?;
    let admin = match store
        .user_by_name(tenant.id, bootstrap::BOOTSTRAP_ADMIN)
        .await?
    {
        Some(u) => u,
        None => {
            let boot = bootstrap::run(&*store, &key, &clock).await?;
            if let Some(t) = boot.admin_token {
                return Ok(t);
            }
            return Err(StartError::Store(StoreError::NotFound(
                "the default tenant has users but no `admin`".into(),
            )));
        }
    };
    Ok(bootstrap::issue_token(&*store, &key, &clock, &admin, "recovery").await?)
}
