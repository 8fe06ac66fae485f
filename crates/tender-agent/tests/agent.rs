//! The agent against the real server, started in-process on loopback ports: enrollment,
//! MQTT over mTLS, telemetry stored, refusals, and revocation stopping the supervisor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tender_agent::backoff::Backoff;
use tender_agent::config::AgentConfig;
use tender_agent::identity::{self, EnrollOptions, IdentityError};
use tender_agent::mqtt::{self, ConnState, MqttError, MqttOptions, PublishError};
use tender_core::tenant::TenantSlug;
use tender_server::{Config, RunningServer};
use tokio::sync::watch;

/// Bound on any wait; generous, never asserted as a duration.
const WAIT: Duration = Duration::from_secs(30);

struct Server {
    server: RunningServer,
    admin_token: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    identity::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.devices.listen = "127.0.0.1:0".parse().unwrap();
    config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    config.database.max_connections = 4;
    let server = tender_server::start(config).await.expect("server starts");
    let admin_token = server.bootstrap_token.clone().expect("bootstrap token");
    Server {
        server,
        admin_token,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Server {
    async fn admin(
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

    async fn enrollment_token(&self) -> String {
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

    fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.server.ca_cert_path).unwrap()
    }

    fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.server.device_addr.port())
    }

    fn config(&self, data_dir: &Path, token: Option<String>) -> AgentConfig {
        let mqtt = self.server.mqtt_addr.unwrap();
        AgentConfig {
            server_url: self.server_url(),
            mqtt_host: "127.0.0.1".into(),
            mqtt_port: mqtt.port(),
            ca_file: self.server.ca_cert_path.clone(),
            data_dir: data_dir.to_owned(),
            enrollment_token: token,
            device_name: Some("agent-test".into()),
            device_type: Some("test-rig".into()),
            telemetry_interval_secs: 1,
            max_backoff_secs: 2,
            keepalive_secs: 30,
        }
    }

    fn enroll_options(&self, token: Option<String>) -> EnrollOptions {
        EnrollOptions {
            server_url: self.server_url(),
            ca_pem: self.ca_pem(),
            token,
            name: Some("sdk".into()),
            device_type: None,
        }
    }

    fn mqtt_options(&self) -> MqttOptions {
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
    async fn metrics(&self, device: &str) -> Vec<String> {
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

    /// Polls the store until `device` has all of `names`.
    async fn wait_for_metrics(&self, device: &str, names: &[&str]) -> Vec<String> {
        tokio::time::timeout(WAIT, async {
            loop {
                let have = self.metrics(device).await;
                if names.iter().all(|n| have.iter().any(|h| h == n)) {
                    return have;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("metrics {names:?} stored for {device}"))
    }
}

async fn wait_state(state: &mut watch::Receiver<ConnState>, want: impl Fn(&ConnState) -> bool) {
    tokio::time::timeout(WAIT, state.wait_for(|s| want(s)))
        .await
        .expect("state reached in time")
        .expect("supervisor alive");
}

/// A `/proc` tree with fixed contents, so the test does not depend on the host.
fn fake_proc(dir: &Path) -> std::path::PathBuf {
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

#[tokio::test]
async fn the_agent_enrolls_connects_and_its_telemetry_is_stored() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let config = s.config(&data, Some(s.enrollment_token().await));
    let options = tender_agent::agent::RunOptions {
        proc_root: Some(fake_proc(dir.path())),
        backoff_base: Some(Duration::from_millis(50)),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = {
        let config = config.clone();
        let options = options.clone();
        tokio::spawn(async move {
            tender_agent::agent::run(&config, options, async {
                let _ = stopped.await;
            })
            .await
        })
    };
    // The identity is written before the agent connects.
    let id = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(id) = identity::Identity::load(&data).unwrap() {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("enrolled");
    let names = s
        .wait_for_metrics(
            id.device_id(),
            &[
                "mem.available_bytes",
                "mem.used_bytes",
                "load.1m",
                "uptime.secs",
                "net.eth0.rx_bytes",
                "net.eth0.tx_bytes",
            ],
        )
        .await;
    assert!(!names.is_empty());
    let status = tender_agent::status::read(&data).expect("status file");
    assert_eq!(status.device_id.as_deref(), Some(id.device_id()));
    assert!(status.certificate_not_after.is_some());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("device.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    assert_eq!(tender_agent::status::read(&data).unwrap().state, "stopped");

    // A restart uses the stored identity: no token needed, same device.
    let mut again = config.clone();
    again.enrollment_token = None;
    let loaded = identity::ensure_identity(&data, &s.enroll_options(None))
        .await
        .unwrap();
    assert_eq!(loaded.device_id(), id.device_id());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(async move {
        tender_agent::agent::run(&again, options, async {
            let _ = stopped.await;
        })
        .await
    });
    tokio::time::timeout(WAIT, async {
        loop {
            if tender_agent::status::read(&data).is_some_and(|s| s.state == "connected") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("connected again with the stored identity");
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_sdk_publishes_receives_and_reports_refusals() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let id = identity::ensure_identity(
        dir.path(),
        &s.enroll_options(Some(s.enrollment_token().await)),
    )
    .await
    .unwrap();
    let device = id.device_id().to_owned();
    let (_id_tx, id_rx) = watch::channel(Arc::new(id));
    let mut sup = mqtt::spawn(s.mqtt_options(), id_rx);
    wait_state(&mut sup.state, |st| *st == ConnState::Connected).await;

    let topic = format!("tender/v1/{device}/telemetry");
    sup.client
        .publish(topic.clone(), r#"{"values": {"sdk.test": 1.5}}"#)
        .await
        .expect("stored");
    s.wait_for_metrics(&device, &["sdk.test"]).await;

    let refused = sup
        .client
        .publish(topic.clone(), r#"{"values": {"sdk.test": "x"}}"#)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, PublishError::Refused { code: 0x99, .. }),
        "{refused:?}"
    );
    let reserved = sup
        .client
        .publish(format!("tender/v1/{device}/events"), "{}")
        .await
        .unwrap_err();
    assert!(
        matches!(reserved, PublishError::Refused { code: 0x83, .. }),
        "{reserved:?}"
    );

    // A message from the server arrives on the channel (and is acknowledged).
    let metrics = tender_server::metrics::Metrics::new();
    s.server.gateway.send(
        device.parse().unwrap(),
        "commands/c1",
        bytes::Bytes::from_static(b"{\"do\":\"x\"}"),
        rmqtt_codec::types::QoS::AtLeastOnce,
        &metrics,
    );
    let m = tokio::time::timeout(WAIT, sup.messages.recv())
        .await
        .expect("delivered")
        .expect("channel open");
    assert_eq!(m.topic, format!("tender/v1/{device}/commands/c1"));
    assert_eq!(&m.payload[..], b"{\"do\":\"x\"}");

    // Still connected and working after all that.
    sup.client
        .publish(topic, r#"{"values": {"sdk.after": 2}}"#)
        .await
        .expect("stored");
    drop(sup.client);
    assert!(
        tokio::time::timeout(WAIT, sup.task)
            .await
            .unwrap()
            .unwrap()
            .is_ok()
    );
}

#[tokio::test]
async fn revocation_stops_the_supervisor_instead_of_reconnecting() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let id = identity::ensure_identity(
        dir.path(),
        &s.enroll_options(Some(s.enrollment_token().await)),
    )
    .await
    .unwrap();
    let device = id.device_id().to_owned();
    let (_id_tx, id_rx) = watch::channel(Arc::new(id));
    let mut sup = mqtt::spawn(s.mqtt_options(), id_rx);
    wait_state(&mut sup.state, |st| *st == ConnState::Connected).await;

    let (st, body) = s
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/devices/{device}/revoke-certificates"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let result = tokio::time::timeout(WAIT, &mut sup.task)
        .await
        .expect("the supervisor stops rather than reconnecting forever")
        .unwrap();
    let err = result.unwrap_err();
    assert!(
        matches!(err, MqttError::NotAuthorized { code: 0x87 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("revoked/not authorized"), "{err}");
    assert!(matches!(
        &*sup.state.borrow(),
        ConnState::Stopped { error: Some(_) }
    ));
    assert_eq!(
        sup.client.publish("x", "y").await,
        Err(PublishError::Stopped)
    );
}

#[tokio::test]
async fn a_refused_enrollment_is_reported_not_retried() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let err = tokio::time::timeout(
        WAIT,
        identity::ensure_identity(dir.path(), &s.enroll_options(Some("tne_bogus".into()))),
    )
    .await
    .expect("answers at once")
    .unwrap_err();
    match err {
        IdentityError::Refused {
            status, ref kind, ..
        } => {
            assert_eq!(status, 403, "{err}");
            assert!(kind.contains("enrollment-token"), "{err}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(identity::Identity::load(dir.path()).unwrap().is_none());
}

#[tokio::test]
async fn the_binary_runs_enrolls_and_reports_status() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let mqtt = s.server.mqtt_addr.unwrap();
    let config_path = dir.path().join("agent.toml");
    std::fs::write(
        &config_path,
        format!(
            "server_url = \"https://127.0.0.1:1\"\nmqtt_url = \"127.0.0.1:{}\"\nca_file = {:?}\ndata_dir = \"/nonexistent\"\ndevice_name = \"bin\"\ntelemetry_interval_secs = 1\n",
            mqtt.port(),
            s.server.ca_cert_path.display().to_string(),
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_tender-agent");

    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("run"));

    // The environment overrides the server, the token and the data directory.
    let mut child = tokio::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("TENDER_AGENT_SERVER_URL", s.server_url())
        .env("TENDER_AGENT_ENROLLMENT_TOKEN", s.enrollment_token().await)
        .env("TENDER_AGENT_DATA_DIR", &data)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let id = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(id) = identity::Identity::load(&data).unwrap() {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("enrolled");
    s.wait_for_metrics(id.device_id(), &["mem.available_bytes", "uptime.secs"])
        .await;

    let status = std::process::Command::new(bin)
        .args(["status", "--config"])
        .arg(&config_path)
        .env("TENDER_AGENT_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(status.status.success());
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(out.contains(id.device_id()), "{out}");
    assert!(out.contains("certificate expires"), "{out}");
    child.kill().await.unwrap();

    // Bad configuration: one line, exit 1, the key named.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "server_url = \"https://x\"\nbogus_key = 1\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus_key"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[tokio::test]
async fn renewal_issues_a_new_certificate_and_the_supervisor_reconnects_with_it() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let opts = s.enroll_options(Some(s.enrollment_token().await));
    let id = identity::ensure_identity(dir.path(), &opts).await.unwrap();
    let device = id.device_id().to_owned();
    let old_cert = id.cert_pem.clone();
    let renewed = identity::renew(&opts, &id).await.expect("renewed");
    assert_eq!(renewed.device_id(), device);
    assert_ne!(renewed.cert_pem, old_cert, "a new certificate");
    renewed.store(dir.path()).unwrap();
    let reloaded = identity::Identity::load(dir.path()).unwrap().unwrap();
    assert_eq!(reloaded.cert_pem, renewed.cert_pem);

    let (id_tx, id_rx) = watch::channel(Arc::new(id));
    let mut sup = mqtt::spawn(s.mqtt_options(), id_rx);
    wait_state(&mut sup.state, |st| *st == ConnState::Connected).await;
    sup.state.borrow_and_update();
    id_tx.send(Arc::new(reloaded)).unwrap();
    // It leaves and comes back with the renewed certificate.
    // (`changed` sees the move away from Connected even if it is already back.)
    tokio::time::timeout(WAIT, sup.state.changed())
        .await
        .expect("the supervisor reacts to the new identity")
        .unwrap();
    wait_state(&mut sup.state, |st| *st == ConnState::Connected).await;
    sup.client
        .publish(
            format!("tender/v1/{device}/telemetry"),
            r#"{"values": {"renewed": 1}}"#,
        )
        .await
        .expect("stored over the renewed session");
    s.wait_for_metrics(&device, &["renewed"]).await;
}

#[tokio::test]
async fn without_a_token_the_device_is_pending_until_accepted() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let opts = s.enroll_options(None);
    let key = identity::load_or_create_key(dir.path()).unwrap();
    let device = match identity::enroll_once(&opts, &key).await.unwrap() {
        identity::Enrollment::Pending {
            device_id,
            retry_after,
        } => {
            assert!(retry_after >= Duration::from_secs(1));
            device_id
        }
        other => panic!("expected pending, got {other:?}"),
    };
    assert!(identity::Identity::load(dir.path()).unwrap().is_none());
    let (st, d) = s
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/devices/{device}/accept"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{d}");
    // The same key (stored in the data dir) now gets its certificate.
    let id = tokio::time::timeout(WAIT, identity::ensure_identity(dir.path(), &opts))
        .await
        .expect("issued at once")
        .unwrap();
    assert_eq!(id.device_id(), device);
    assert!(identity::Identity::load(dir.path()).unwrap().is_some());
}
