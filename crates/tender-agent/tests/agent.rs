//! The agent against the real server, started in-process on loopback ports: enrollment,
//! MQTT over mTLS, telemetry stored, refusals, and revocation stopping the supervisor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{WAIT, fake_proc, start, wait_state};
use tender_agent::identity::{self, IdentityError};
use tender_agent::mqtt::{self, ConnState, MqttError, PublishError};
use tokio::sync::watch;

#[tokio::test]
async fn the_agent_enrolls_connects_and_its_telemetry_is_stored() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let config = s.config(&data, Some(s.enrollment_token().await));
    let options = tender_agent::agent::RunOptions {
        proc_root: Some(fake_proc(dir.path())),
        backoff_base: Some(Duration::from_millis(50)),
        ..Default::default()
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
    let id = common::wait_enrolled(&data).await;
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
                "agent.buffer.pending",
                "agent.buffer.dropped",
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
    // Connected again with the stored identity.
    common::wait_connected(&data).await;
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

    // Subscribing is answered with the desired state (the resync); then a message from the
    // server arrives on the channel (and is acknowledged).
    let first = tokio::time::timeout(WAIT, sup.messages.recv())
        .await
        .expect("delivered")
        .expect("channel open");
    assert_eq!(first.topic, format!("tender/v1/{device}/state/desired"));
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
    let id = common::wait_enrolled(&data).await;
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

    // Bad configuration: one line, exit 78 (an operator must act), the key named.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "server_url = \"https://x\"\nbogus_key = 1\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
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

/// Decommissioning a running device: the agent is cut off, says why on one line and exits 78
/// (the systemd unit does not restart on it) instead of knocking on the server forever.
#[tokio::test]
async fn the_binary_stops_on_revocation_and_says_why() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let config_path = dir.path().join("agent.toml");
    std::fs::write(
        &config_path,
        format!(
            "server_url = {:?}\nmqtt_url = \"127.0.0.1:{}\"\nca_file = {:?}\ndata_dir = {:?}\n\
             max_backoff_secs = 1\ncollectors = []\ninventory_scripts_dir = {:?}\n",
            s.server_url(),
            s.server.mqtt_addr.unwrap().port(),
            s.server.ca_cert_path.display().to_string(),
            data.display().to_string(),
            dir.path().join("none").display().to_string(),
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tender-agent"))
        .args(["run", "--config"])
        .arg(&config_path)
        .env("TENDER_AGENT_ENROLLMENT_TOKEN", s.enrollment_token().await)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::wait_connected(&data).await;
    let id = identity::Identity::load(&data).unwrap().unwrap();
    let (st, body) = s
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/devices/{}/decommission", id.device_id()),
            None,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the agent exits by itself")
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or_default().to_owned();
    assert!(last.contains("revoked"), "{err}");
    assert!(
        tender_agent::status::read(&data)
            .unwrap()
            .state
            .starts_with("stopped: revoked"),
        "the status says why"
    );
}
