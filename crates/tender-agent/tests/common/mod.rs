//! What the agent's integration tests share: the real server, in-process on loopback ports,
//! that can be stopped and started again on the same ports and data.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tender_agent::backoff::Backoff;
use tender_agent::config::{AgentConfig, RawConfig};
use tender_agent::identity::{self, EnrollOptions};
use tender_agent::mqtt::{ConnState, MqttOptions};
use tender_core::tenant::TenantSlug;
use tender_server::{Config, RunningServer};
use tokio::sync::watch;

/// Bound on any wait; generous, never asserted as a duration.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Server {
    pub config: Config,
    pub server: RunningServer,
    pub admin_token: String,
    http: reqwest::Client,
    pub dir: std::sync::Arc<tempfile::TempDir>,
}

pub async fn start() -> Server {
    identity::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    // Tests restart the server on the same ports. A port the kernel hands out (port 0) can be
    // taken meanwhile as the local port of some other test's outgoing connection, so these
    // come from below the ephemeral range.
    config.http.listen = free_port();
    config.devices.listen = free_port();
    config.mqtt.listen = free_port();
    config.database.max_connections = 4;
    let server = tender_server::start(config.clone())
        .await
        .expect("server starts");
    let admin_token = server.bootstrap_token.clone().expect("bootstrap token");
    Server {
        config,
        server,
        admin_token,
        http: reqwest::Client::new(),
        dir: std::sync::Arc::new(dir),
    }
}

/// A free loopback port below the kernel's ephemeral range (32768 and up by default), where
/// outgoing connections never take their local ports.
fn free_port() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919).wrapping_add(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0),
    );
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(104_729)) % 12_000) as u16;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port between 20000 and 32000 on loopback");
}

impl Server {
    /// Stops the server; [`Server::restart`] brings it back on the same ports and data.
    pub async fn stop(self) -> Stopped {
        let mut config = self.config.clone();
        config.http.listen = self.server.http_addr;
        config.devices.listen = self.server.device_addr;
        config.mqtt.listen = self.server.mqtt_addr.unwrap();
        self.server.shutdown().await;
        Stopped {
            config,
            admin_token: self.admin_token,
            dir: self.dir,
        }
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.server.http_addr))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let st = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (st, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Uploads an artifact file (`POST /api/v1/artifacts`); returns the server's answer.
    pub async fn upload_artifact(&self, bytes: Vec<u8>) -> Value {
        let resp = self
            .http
            .post(format!("http://{}/api/v1/artifacts", self.server.http_addr))
            .bearer_auth(&self.admin_token)
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .unwrap();
        let st = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(st, 201, "{v}");
        v
    }

    /// The default tenant's id.
    pub async fn tenant_id(&self) -> String {
        self.server
            .store
            .tenant_by_slug(&TenantSlug::default_tenant())
            .await
            .unwrap()
            .unwrap()
            .id
            .to_string()
    }

    pub async fn enrollment_token(&self) -> String {
        let (st, t) = self
            .admin(
                reqwest::Method::POST,
                "/api/v1/enrollment-tokens",
                Some(json!({"name": "t"})),
            )
            .await;
        assert_eq!(st, 201, "{t}");
        t["token"].as_str().unwrap().to_owned()
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.server.ca_cert_path).unwrap()
    }

    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.server.device_addr.port())
    }

    pub fn config(&self, data_dir: &Path, token: Option<String>) -> AgentConfig {
        let mqtt = self.server.mqtt_addr.unwrap();
        RawConfig {
            server_url: Some(self.server_url()),
            mqtt_url: Some(format!("127.0.0.1:{}", mqtt.port())),
            ca_file: Some(self.server.ca_cert_path.clone()),
            data_dir: Some(data_dir.to_owned()),
            enrollment_token: token,
            device_name: Some("agent-test".into()),
            device_type: Some("test-rig".into()),
            telemetry_interval_secs: Some(1),
            max_backoff_secs: Some(2),
            keepalive_secs: Some(30),
            // No scripts from the machine running the tests; no spool unless a test asks.
            collectors: Some(vec!["system".into()]),
            inventory_scripts_dir: Some(data_dir.join("no-inventory-scripts")),
            ..RawConfig::default()
        }
        .validate()
        .unwrap()
    }

    pub fn enroll_options(&self, token: Option<String>) -> EnrollOptions {
        EnrollOptions {
            server_url: self.server_url(),
            ca_pem: self.ca_pem(),
            token,
            name: Some("sdk".into()),
            device_type: None,
        }
    }

    pub fn mqtt_options(&self) -> MqttOptions {
        MqttOptions {
            backoff: Backoff {
                base: Duration::from_millis(50),
                cap: Duration::from_millis(500),
            },
            rng_seed: Some(1),
            ..MqttOptions::new("127.0.0.1", self.server.mqtt_addr.unwrap().port())
        }
    }

    /// The metric names stored for `device`.
    pub async fn metrics(&self, device: &str) -> Vec<String> {
        let store = &self.server.store;
        let tenant = store
            .tenant_by_slug(&TenantSlug::default_tenant())
            .await
            .unwrap()
            .unwrap();
        store
            .latest_samples(tenant.id, device.parse().unwrap())
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.metric.to_string())
            .collect()
    }

    /// Waits until the store has all of `names` for `device`.
    pub async fn wait_for_metrics(&self, device: &str, names: &[&str]) -> Vec<String> {
        poll_until(
            &format!("metrics {names:?} stored for {device}"),
            async || {
                let have = self.metrics(device).await;
                names
                    .iter()
                    .all(|n| have.iter().any(|h| h == n))
                    .then_some(have)
            },
        )
        .await
    }
}

pub async fn wait_state(state: &mut watch::Receiver<ConnState>, want: impl Fn(&ConnState) -> bool) {
    tokio::time::timeout(WAIT, state.wait_for(|s| want(s)))
        .await
        .expect("state reached in time")
        .expect("supervisor alive");
}

/// A `/proc` tree with fixed contents, so the test does not depend on the host.
pub fn fake_proc(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("proc");
    std::fs::create_dir_all(root.join("net")).unwrap();
    std::fs::write(root.join("stat"), "cpu  100 0 100 700 100 0 0 0 0 0\n").unwrap();
    std::fs::write(
        root.join("meminfo"),
        "MemTotal: 1000 kB\nMemAvailable: 600 kB\n",
    )
    .unwrap();
    std::fs::write(root.join("loadavg"), "0.50 0.40 0.30 1/100 42\n").unwrap();
    std::fs::write(root.join("uptime"), "123.45 100.00\n").unwrap();
    std::fs::write(
        root.join("net/dev"),
        "h1\nh2\n  eth0: 1000 1 0 0 0 0 0 0 2000 2 0 0 0 0 0 0\n",
    )
    .unwrap();
    root
}

/// A stopped server's configuration (its real ports) and data.
pub struct Stopped {
    config: Config,
    admin_token: String,
    dir: std::sync::Arc<tempfile::TempDir>,
}

impl Stopped {
    pub async fn restart(self) -> Server {
        let server = tender_server::start(self.config.clone())
            .await
            .expect("server starts again on the same ports");
        Server {
            config: self.config,
            server,
            admin_token: self.admin_token,
            http: reqwest::Client::new(),
            dir: self.dir,
        }
    }
}

/// The one place the agent tests wait: until `check` gives a value, bounded by [`WAIT`]. The
/// agent shows its progress only in files and in the server's store, so this re-checks the
/// condition (every 20 ms) rather than waiting for an event; it never asserts on time.
pub async fn poll_until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until `check` holds.
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    poll_until(what, async || check().await.then_some(())).await
}

/// Waits until an agent using `data` has stored its identity.
pub async fn wait_enrolled(data: &Path) -> identity::Identity {
    poll_until("enrolled", async || identity::Identity::load(data).unwrap()).await
}

/// Waits until the agent using `data` says it is connected.
pub async fn wait_connected(data: &Path) {
    wait_until("connected", async || {
        tender_agent::status::read(data).is_some_and(|s| s.state == "connected")
    })
    .await
}

/// Runs the agent loop with `source` in a task; send on the returned sender to stop it.
pub fn spawn_agent<S: tender_agent::agent::Source>(
    config: AgentConfig,
    options: tender_agent::agent::RunOptions,
    source: S,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tender_agent::agent::AgentError>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tender_agent::agent::run_with(&config, options, source, async {
            let _ = stopped.await;
        })
        .await
    });
    (stop, task)
}
