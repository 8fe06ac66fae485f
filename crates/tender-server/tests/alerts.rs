//! Alerts end to end: rules created over the HTTP API, devices enrolled through the HTTPS device
//! API publishing telemetry over MQTT 5 (mTLS), the engine firing and resolving, the lifecycle
//! visible in `/api/v1/alerts` and in the event log. The engine ticks every 50 ms here; every
//! wait polls the API until a condition holds, bounded by [`WAIT`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use reqwest::{Method, StatusCode};
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, ConnectAckReason, PublishAckReason};
use rmqtt_codec::{MqttCodec, MqttPacket};
use serde_json::{Value, json};
use tender_core::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

mod common;
use common::*;

/// Bound on any wait for the server; generous, never asserted as a duration.
const WAIT: Duration = Duration::from_secs(30);

on_both_backends!(
    overheating_fires_after_the_duration_and_resolves_below_the_clear_level,
    a_value_that_drops_before_the_duration_does_not_fire,
    acknowledged_alerts_still_resolve,
    offline_devices_fire_and_resolve_when_back,
    rules_are_checked_and_managed,
    open_alerts_survive_a_restart,
    failed_updates_fire_until_an_update_succeeds,
    reported_state_fires_while_it_matches,
    an_overheating_device_reaches_a_signed_webhook,
);

async fn start_alerts(b: Backend) -> TestServer {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("tender_server=info")
        .with_test_writer()
        .try_init();
    start_with(b, |c| c.alerts.tick_ms = 50).await
}

struct Dev {
    id: String,
    key: KeyPair,
    cert: String,
}

async fn enroll(s: &TestServer) -> Dev {
    let (st, t) = admin(
        s,
        Method::POST,
        "/api/v1/enrollment-tokens",
        Some(json!({"name": "t"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "device");
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let ca = reqwest::Certificate::from_pem(ca_pem(s).as_bytes()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let addr = s.server.as_ref().unwrap().device_addr;
    let resp = http
        .post(format!(
            "https://127.0.0.1:{}/device/v1/enroll",
            addr.port()
        ))
        .json(&json!({"csr": csr, "token": t["token"], "name": "d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let a: Value = resp.json().await.unwrap();
    Dev {
        id: a["device_id"].as_str().unwrap().to_owned(),
        key,
        cert: a["certificate"].as_str().unwrap().to_owned(),
    }
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A minimal MQTT 5 device client.
struct Client {
    io: Tls,
    codec: MqttCodec,
    buf: BytesMut,
    next_id: u16,
    topic: String,
}

impl Client {
    async fn connect(s: &TestServer, dev: &Dev) -> Client {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem(s).as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(dev.cert.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(dev.key.serialize_pem().as_bytes()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
        let addr = s.server.as_ref().unwrap().mqtt_addr.unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let io = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        let mut c = Client {
            io,
            codec: MqttCodec::V5(v5::Codec::new(1 << 20, 1 << 20)),
            buf: BytesMut::new(),
            next_id: 1,
            topic: format!("tender/v1/{}/telemetry", dev.id),
        };
        c.send(MqttPacket::V5(v5::Packet::Connect(Box::new(v5::Connect {
            client_id: ByteString::from(dev.id.clone()),
            keep_alive: 30,
            clean_start: true,
            ..Default::default()
        }))))
        .await;
        match c.recv().await {
            Some(MqttPacket::V5(v5::Packet::ConnectAck(a))) => {
                assert_eq!(a.reason_code, ConnectAckReason::Success)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c
    }

    async fn send(&mut self, p: MqttPacket) {
        let mut out = BytesMut::new();
        self.codec.encode(p, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
        self.io.flush().await.unwrap();
    }

    async fn recv(&mut self) -> Option<MqttPacket> {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.codec.decode(&mut self.buf) {
                    Ok(Some((p, _))) => return Some(p),
                    Ok(None) => {}
                    Err(e) => panic!("the server sent a malformed packet: {e}"),
                }
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the server answers or closes in time")
    }

    /// Publishes telemetry at QoS 1 and waits for the PUBACK (acknowledged means stored).
    async fn telemetry(&mut self, payload: Value) {
        let topic = self.topic.clone();
        self.publish(topic, payload).await;
    }

    /// Publishes a reported-state merge patch at QoS 1 and waits for the PUBACK.
    async fn reported(&mut self, patch: Value) {
        let topic = self.topic.replace("/telemetry", "/state/reported");
        self.publish(topic, patch).await;
    }

    async fn publish(&mut self, topic: String, payload: Value) {
        let id = self.next_id;
        self.next_id += 1;
        self.send(MqttPacket::V5(v5::Packet::Publish(Box::new(
            rmqtt_codec::types::Publish {
                dup: false,
                retain: false,
                qos: QoS::AtLeastOnce,
                topic: ByteString::from(topic),
                packet_id: NonZeroU16::new(id),
                payload: Bytes::from(payload.to_string()),
                properties: Some(Default::default()),
            },
        ))))
        .await;
        loop {
            match self.recv().await {
                Some(MqttPacket::V5(v5::Packet::PublishAck(a))) => {
                    assert_eq!(a.reason_code, PublishAckReason::Success);
                    return;
                }
                Some(_) => {}
                None => panic!("closed before PUBACK"),
            }
        }
    }

    async fn disconnect(mut self) {
        self.send(MqttPacket::V5(v5::Packet::Disconnect(Default::default())))
            .await;
        let _ = self.io.shutdown().await;
    }
}

async fn poll_until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
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

async fn create_rule(s: &TestServer, body: Value) -> Value {
    let (st, r) = admin(s, Method::POST, "/api/v1/alert-rules", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    r
}

async fn alerts(s: &TestServer, query: &str) -> Vec<Value> {
    let (st, page) = admin(s, Method::GET, &format!("/api/v1/alerts?{query}"), None).await;
    assert_eq!(st, StatusCode::OK, "{page}");
    page["items"].as_array().unwrap().clone()
}

/// The one alert of `rule` matching `state`, once there is one.
async fn wait_alert(s: &TestServer, rule: &Value, state: &str) -> Value {
    let q = format!("rule={}&state={state}", rule["id"].as_str().unwrap());
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let a = alerts(s, &q).await;
            assert!(a.len() <= 1, "{a:?}");
            if let Some(a) = a.into_iter().next() {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    match found {
        Ok(a) => a,
        Err(_) => {
            // What the server knows, to tell a missed sample from a missed tick.
            let all = alerts(s, "").await;
            let ev = admin(s, Method::GET, "/api/v1/events?kind=alert.*", None)
                .await
                .1;
            let metrics = s
                .http
                .get(s.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let metrics: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("tender_alerts") || l.starts_with("tender_telemetry_points")
                })
                .collect();
            panic!(
                "timed out waiting for a {state} alert of {rule}\nalerts: {all:?}\nevents: {ev}\nmetrics: {metrics:#?}"
            );
        }
    }
}

async fn events(s: &TestServer, kind: &str, device: &str) -> Vec<Value> {
    let (st, page) = admin(
        s,
        Method::GET,
        &format!("/api/v1/events?kind={kind}&device={device}"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{page}");
    page["items"].as_array().unwrap().clone()
}

/// The events of `kind` about `rule` on `device`, once there are `n` (the store shows an
/// alert's new state just before its event is recorded).
async fn rule_events(
    s: &TestServer,
    kind: &str,
    device: &str,
    rule: &Value,
    n: usize,
) -> Vec<Value> {
    poll_until(&format!("{n} {kind} events"), async || {
        let ev: Vec<Value> = events(s, kind, device)
            .await
            .into_iter()
            .filter(|e| e["data"]["rule_id"] == rule["id"])
            .collect();
        assert!(ev.len() <= n, "{ev:?}");
        (ev.len() == n).then_some(ev)
    })
    .await
}

/// Waits until the engine evaluates every rule created so far: a sentinel rule created last
/// fires on a sample published until it does (the engine loads rules every tick, so a sample
/// stored before it loaded a rule is not evaluated by that rule).
async fn engine_has_the_rules(s: &TestServer, c: &mut Client) {
    let sentinel = create_rule(
        s,
        json!({"name": format!("sentinel-{}", uuid::Uuid::now_v7()), "severity": "info", "condition": "sentinel > 0"}),
    )
    .await;
    let q = format!("rule={}&state=firing", sentinel["id"].as_str().unwrap());
    poll_until("the engine to load the rules", async || {
        c.telemetry(json!({"sentinel": 1})).await;
        alerts(s, &q).await.into_iter().next()
    })
    .await;
}

fn ts(v: &Value) -> Timestamp {
    Timestamp::parse_rfc3339(v.as_str().unwrap()).unwrap()
}

async fn overheating_fires_after_the_duration_and_resolves_below_the_clear_level(b: Backend) {
    let mut s = start_alerts(b).await;
    let rule = create_rule(
        &s,
        json!({"name": "hot", "severity": "critical", "condition": "temperature > 80 for 2s"}),
    )
    .await;
    assert_eq!(rule["condition"], "temperature > 80 for 2s clear < 76");
    let dev = enroll(&s).await;
    let mut c = Client::connect(&s, &dev).await;
    engine_has_the_rules(&s, &mut c).await;
    let sent = Timestamp::from_unix_millis(now().unix_millis() - 1);
    c.telemetry(json!({"ts": sent.unix_millis(), "values": {"temperature": 85.0}}))
        .await;
    let fired = wait_alert(&s, &rule, "firing").await;
    assert_eq!(fired["device_id"], dev.id.as_str());
    assert_eq!(fired["severity"], "critical");
    assert_eq!(fired["rule_name"], "hot");
    assert_eq!(fired["value"], 85.0);
    // Fired only once the condition had held for 2 s (from the sample's time).
    assert!(
        ts(&fired["fired_at"]).unix_millis() - sent.unix_millis() >= 2000,
        "{fired}"
    );
    let ev = rule_events(&s, "alert.fired", &dev.id, &rule, 1).await;
    assert_eq!(ev[0]["data"]["alert_id"], fired["id"]);
    assert_eq!(ev[0]["data"]["rule_name"], "hot");
    assert_eq!(ev[0]["data"]["severity"], "critical");
    assert_eq!(ev[0]["data"]["value"], 85.0);

    // 78 is below the threshold but not below the clear level (76): still firing. 70 resolves,
    // so the resolution names 70, not 78.
    c.telemetry(json!({"temperature": 78.0})).await;
    c.telemetry(json!({"temperature": 70.0})).await;
    let resolved = wait_alert(&s, &rule, "resolved").await;
    assert_eq!(resolved["id"], fired["id"]);
    assert_eq!(resolved["value"], 85.0, "the value it fired with");
    assert_eq!(
        resolved["resolve_reason"], "temperature is 70 (< 76)",
        "{resolved}"
    );
    let ev = rule_events(&s, "alert.resolved", &dev.id, &rule, 1).await;
    assert_eq!(ev[0]["data"]["alert_id"], fired["id"]);
    assert_eq!(ev[0]["data"]["value"], 70.0);

    // Hot again: a new alert, the old one stays history.
    c.telemetry(json!({"temperature": 99.0})).await;
    let again = wait_alert(&s, &rule, "firing").await;
    assert_ne!(again["id"], fired["id"]);
    let history = alerts(
        &s,
        &format!("device={}&rule={}", dev.id, rule["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(
        history.iter().map(|a| a["id"].clone()).collect::<Vec<_>>(),
        vec![again["id"].clone(), fired["id"].clone()],
        "newest first"
    );
    c.disconnect().await;
    s.stop().await;
}

async fn a_value_that_drops_before_the_duration_does_not_fire(b: Backend) {
    let mut s = start_alerts(b).await;
    let hot = create_rule(
        &s,
        json!({"name": "hot", "condition": "temperature > 80 for 2s"}),
    )
    .await;
    // The witness fires 3 s after the cool sample: by then, a wrongly kept 85 would have fired.
    let witness = create_rule(
        &s,
        json!({"name": "cool", "severity": "info", "condition": "temperature < 75 for 3s"}),
    )
    .await;
    let dev = enroll(&s).await;
    let mut c = Client::connect(&s, &dev).await;
    engine_has_the_rules(&s, &mut c).await;
    let t0 = now().unix_millis();
    c.telemetry(json!({"ts": t0, "values": {"temperature": 85.0}}))
        .await;
    c.telemetry(json!({"ts": t0 + 1, "values": {"temperature": 70.0}}))
        .await;
    let w = wait_alert(&s, &witness, "firing").await;
    assert!(ts(&w["fired_at"]).unix_millis() >= t0 + 3000, "{w}");
    assert!(
        alerts(&s, &format!("rule={}", hot["id"].as_str().unwrap()))
            .await
            .is_empty()
    );
    rule_events(&s, "alert.fired", &dev.id, &witness, 1).await;
    assert!(
        rule_events(&s, "alert.fired", &dev.id, &hot, 0)
            .await
            .is_empty()
    );
    c.disconnect().await;
    s.stop().await;
}

async fn acknowledged_alerts_still_resolve(b: Backend) {
    let mut s = start_alerts(b).await;
    let dev = enroll(&s).await;
    // Scoped to a static group with the device, and one without it.
    let mut groups = Vec::new();
    for name in ["lab", "field"] {
        let (st, g) = admin(
            &s,
            Method::POST,
            "/api/v1/groups",
            Some(json!({"name": name})),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{g}");
        groups.push(g);
    }
    let (st, m) = admin(
        &s,
        Method::POST,
        &format!(
            "/api/v1/groups/{}/members",
            groups[0]["id"].as_str().unwrap()
        ),
        Some(json!({"device_ids": [dev.id]})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{m}");
    let rule = create_rule(
        &s,
        json!({"name": "hot", "condition": "temperature > 80 clear <= 60", "group": "lab"}),
    )
    .await;
    assert_eq!(
        rule["scope"],
        format!("group:{}", groups[0]["id"].as_str().unwrap())
    );
    let elsewhere = create_rule(
        &s,
        json!({"name": "hot elsewhere", "condition": "temperature > 80", "group": "field"}),
    )
    .await;
    let mut c = Client::connect(&s, &dev).await;
    engine_has_the_rules(&s, &mut c).await;
    c.telemetry(json!({"temperature": 90})).await;
    let fired = wait_alert(&s, &rule, "firing").await;
    let id = fired["id"].as_str().unwrap();
    let (st, acked) = admin(
        &s,
        Method::POST,
        &format!("/api/v1/alerts/{id}/ack"),
        Some(json!({"note": "fan replaced"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{acked}");
    assert_eq!(acked["state"], "acknowledged");
    assert_eq!(acked["acknowledged_by"], "admin");
    assert_eq!(acked["ack_note"], "fan replaced");
    // Twice is a conflict.
    let (st, p) = admin(
        &s,
        Method::POST,
        &format!("/api/v1/alerts/{id}/ack"),
        Some(json!({"note": "again"})),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{p}");
    let ev = rule_events(&s, "alert.acknowledged", &dev.id, &rule, 1).await;
    assert_eq!(ev[0]["data"]["by"], "admin");
    assert_eq!(ev[0]["data"]["note"], "fan replaced");
    // Still open: 70 does not clear (clear <= 60), 60 does.
    c.telemetry(json!({"temperature": 70})).await;
    c.telemetry(json!({"temperature": 60})).await;
    let resolved = wait_alert(&s, &rule, "resolved").await;
    assert_eq!(resolved["id"], id);
    assert_eq!(resolved["resolve_reason"], "temperature is 60 (<= 60)");
    assert_eq!(resolved["ack_note"], "fan replaced");
    // The rule scoped to the other group saw the same samples and never fired.
    assert!(
        alerts(&s, &format!("rule={}", elsewhere["id"].as_str().unwrap()))
            .await
            .is_empty()
    );
    // A resolved alert cannot be acknowledged.
    let (st, p) = admin(
        &s,
        Method::POST,
        &format!("/api/v1/alerts/{id}/ack"),
        Some(json!({})),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{p}");
    c.disconnect().await;
    s.stop().await;
}

async fn offline_devices_fire_and_resolve_when_back(b: Backend) {
    let mut s = start_alerts(b).await;
    let rule = create_rule(
        &s,
        json!({"name": "gone", "condition": "offline for 1s", "query": "name = \"d\""}),
    )
    .await;
    let dev = enroll(&s).await;
    let mut c = Client::connect(&s, &dev).await;
    c.telemetry(json!({"up": 1})).await;
    c.disconnect().await;
    let fired = wait_alert(&s, &rule, "firing").await;
    assert_eq!(fired["device_id"], dev.id.as_str());
    assert!(
        fired["reason"]
            .as_str()
            .unwrap()
            .starts_with("offline since"),
        "{fired}"
    );
    let c = Client::connect(&s, &dev).await;
    let resolved = wait_alert(&s, &rule, "resolved").await;
    assert_eq!(resolved["id"], fired["id"]);
    rule_events(&s, "alert.*", &dev.id, &rule, 2).await;
    c.disconnect().await;
    s.stop().await;
}

async fn rules_are_checked_and_managed(b: Backend) {
    let mut s = start_alerts(b).await;
    // The condition's error points at the problem.
    let (st, p) = admin(
        &s,
        Method::POST,
        "/api/v1/alert-rules",
        Some(json!({"name": "x", "condition": "temperature > 80 for 5d"})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["type"], "urn:tender:problem:invalid-condition");
    assert!(p["detail"].as_str().unwrap().contains("at 21"), "{p}");
    for bad in [
        json!({"name": "", "condition": "offline for 1m"}),
        json!({"name": "x", "condition": "offline for 1m", "severity": "fatal"}),
        json!({"name": "x", "condition": "offline for 1m", "group": "nope"}),
        json!({"name": "x", "condition": "offline for 1m", "query": "name = "}),
        json!({"name": "x", "condition": "offline for 1m", "group": "a", "query": "name = \"d\""}),
    ] {
        let (st, p) = admin(&s, Method::POST, "/api/v1/alert-rules", Some(bad.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad} {p}");
    }
    let r = create_rule(&s, json!({"name": "upd", "condition": "update failed"})).await;
    assert_eq!(r["scope"], "all");
    assert_eq!(r["severity"], "warning");
    let (st, _) = admin(
        &s,
        Method::POST,
        "/api/v1/alert-rules",
        Some(json!({"name": "upd", "condition": "offline for 1m"})),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let id = r["id"].as_str().unwrap();
    let (st, u) = admin(
        &s,
        Method::PATCH,
        &format!("/api/v1/alert-rules/{id}"),
        Some(json!({"enabled": false, "severity": "critical"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{u}");
    assert_eq!(u["enabled"], false);
    assert_eq!(u["severity"], "critical");
    let (st, list) = admin(&s, Method::GET, "/api/v1/alert-rules", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (st, _) = admin(
        &s,
        Method::DELETE,
        &format!("/api/v1/alert-rules/{id}"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = admin(&s, Method::GET, &format!("/api/v1/alert-rules/{id}"), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, p) = admin(&s, Method::GET, "/api/v1/alerts?state=burning", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{p}");
    s.stop().await;
}

async fn open_alerts_survive_a_restart(b: Backend) {
    let mut s = start_alerts(b).await;
    let rule = create_rule(&s, json!({"name": "hot", "condition": "temperature > 80"})).await;
    let dev = enroll(&s).await;
    let mut c = Client::connect(&s, &dev).await;
    engine_has_the_rules(&s, &mut c).await;
    c.telemetry(json!({"temperature": 90})).await;
    let fired = wait_alert(&s, &rule, "firing").await;
    c.disconnect().await;
    s.stop().await;

    let again = tender_server::start(s.config.clone()).await.unwrap();
    s.base = format!("http://{}", again.http_addr);
    s.server = Some(again);
    let mut c = Client::connect(&s, &dev).await;
    engine_has_the_rules(&s, &mut c).await;
    // The engine tracks the open alert again (a fresh tracker would ignore a cool sample):
    // cooling resolves it.
    c.telemetry(json!({"temperature": 50})).await;
    let resolved = wait_alert(&s, &rule, "resolved").await;
    assert_eq!(resolved["id"], fired["id"]);
    let all = alerts(&s, &format!("rule={}", rule["id"].as_str().unwrap())).await;
    assert_eq!(all.len(), 1, "{all:?}");
    rule_events(&s, "alert.fired", &dev.id, &rule, 1).await;
    rule_events(&s, "alert.resolved", &dev.id, &rule, 1).await;
    c.disconnect().await;
    s.stop().await;
}

/// The engine reads deployment outcomes from the event log (what the deployment scheduler
/// records as `deployment.device_changed`); the events are appended here directly.
async fn failed_updates_fire_until_an_update_succeeds(b: Backend) {
    use tender_core::event::{EventKind, NewEvent};
    let mut s = start_alerts(b).await;
    let rule = create_rule(
        &s,
        json!({"name": "update", "severity": "critical", "condition": "update failed"}),
    )
    .await;
    let dev = enroll(&s).await;
    let mut c = Client::connect(&s, &dev).await;
    // Once the sentinel fired, the engine has made its first pass over the event log.
    engine_has_the_rules(&s, &mut c).await;
    let tenant = s.default_tenant().await.id;
    let device: tender_core::DeviceId = dev.id.parse().unwrap();
    let outcome = |state: &str| {
        NewEvent::device(tenant, device, now(), EventKind::DeploymentDeviceChanged)
            .with("deployment_id", uuid::Uuid::now_v7().to_string())
            .with("state", state)
    };
    s.store()
        .append_event(&outcome("downloading"))
        .await
        .unwrap();
    s.store()
        .append_event(&outcome("rolled_back"))
        .await
        .unwrap();
    let fired = wait_alert(&s, &rule, "firing").await;
    assert_eq!(fired["reason"], "a deployment update failed");
    // Another failure does not open a second alert; a success resolves it.
    s.store().append_event(&outcome("failed")).await.unwrap();
    s.store().append_event(&outcome("succeeded")).await.unwrap();
    let resolved = wait_alert(&s, &rule, "resolved").await;
    assert_eq!(resolved["id"], fired["id"]);
    assert_eq!(
        alerts(&s, &format!("rule={}", rule["id"].as_str().unwrap()))
            .await
            .len(),
        1
    );
    c.disconnect().await;
    s.stop().await;
}

async fn reported_state_fires_while_it_matches(b: Backend) {
    let mut s = start_alerts(b).await;
    let rule = create_rule(
        &s,
        json!({"name": "battery", "condition": "reported.battery.level < 20"}),
    )
    .await;
    let dev = enroll(&s).await;
    let mut c = Client::connect(&s, &dev).await;
    engine_has_the_rules(&s, &mut c).await;
    c.reported(json!({"battery": {"level": 50}})).await;
    c.reported(json!({"battery": {"level": 12}})).await;
    let fired = wait_alert(&s, &rule, "firing").await;
    assert_eq!(fired["reason"], "reported.battery.level < 20");
    c.reported(json!({"battery": {"level": 90}})).await;
    let resolved = wait_alert(&s, &rule, "resolved").await;
    assert_eq!(resolved["id"], fired["id"]);
    rule_events(&s, "alert.*", &dev.id, &rule, 2).await;
    c.disconnect().await;
    s.stop().await;
}

/// What a test webhook endpoint received: (event kind header, body, signature valid).
type Inbox = Arc<std::sync::Mutex<Vec<(String, Value, bool)>>>;

/// A webhook endpoint on an ephemeral loopback port that checks each signature with the
/// secret it is given once the webhook exists.
async fn signed_endpoint(secret: Arc<std::sync::Mutex<String>>) -> (Inbox, String) {
    use axum::http::{HeaderMap, StatusCode as Answer};
    let inbox: Inbox = Arc::default();
    let (got, key) = (inbox.clone(), secret);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (got, key) = (got.clone(), key.clone());
            async move {
                let header = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let secret = key.lock().unwrap().clone();
                let valid = tender_core::webhook::verify(
                    &secret,
                    &header("tender-signature"),
                    &body,
                    now(),
                    300,
                )
                .is_ok();
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                got.lock()
                    .unwrap()
                    .push((header("tender-event"), body, valid));
                Answer::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (inbox, format!("http://{addr}/hook"))
}

/// The whole chain: a device that overheats fires an alert after the rule's duration,
/// the `alert.fired` event reaches a webhook endpoint with a valid signature, and when the
/// device cools the `alert.resolved` event follows, signed too.
async fn an_overheating_device_reaches_a_signed_webhook(b: Backend) {
    let mut s = start_with(b, |c| {
        c.alerts.tick_ms = 50;
        c.webhooks.tick_ms = 50;
        c.webhooks.retry_base_ms = 50;
        c.webhooks.retry_cap_ms = 200;
    })
    .await;
    let secret: Arc<std::sync::Mutex<String>> = Arc::default();
    let (inbox, url) = signed_endpoint(secret.clone()).await;
    let (st, w) = admin(
        &s,
        Method::POST,
        "/api/v1/webhooks",
        Some(json!({"name": "on-call", "url": url, "events": ["alert.*"]})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{w}");
    *secret.lock().unwrap() = w["secret"].as_str().unwrap().to_owned();
    let rule = create_rule(
        &s,
        json!({"name": "hot", "severity": "critical", "condition": "temperature > 80 for 1s"}),
    )
    .await;
    let dev = enroll(&s).await;
    let mut c = Client::connect(&s, &dev).await;
    engine_has_the_rules(&s, &mut c).await;
    c.telemetry(json!({"temperature": 85.0})).await;
    let delivered = |kind: &'static str| {
        let inbox = inbox.clone();
        move || {
            inbox
                .lock()
                .unwrap()
                .iter()
                .find(|(event, body, _)| event == kind && body["data"]["rule_name"] == "hot")
                .cloned()
        }
    };
    let fired = delivered("alert.fired");
    let (_, body, valid) = poll_until("alert.fired at the webhook", async || fired()).await;
    assert!(valid, "signature: {body}");
    assert_eq!(body["kind"], "alert.fired");
    assert_eq!(body["device"], dev.id.as_str());
    assert_eq!(body["data"]["severity"], "critical");
    assert_eq!(body["data"]["value"], 85.0);
    let alert = wait_alert(&s, &rule, "firing").await;
    assert_eq!(body["data"]["alert_id"], alert["id"]);
    c.telemetry(json!({"temperature": 60.0})).await;
    let resolved = delivered("alert.resolved");
    let (_, body, valid) = poll_until("alert.resolved at the webhook", async || resolved()).await;
    assert!(valid, "signature: {body}");
    assert_eq!(body["data"]["alert_id"], alert["id"]);
    c.disconnect().await;
    s.stop().await;
}
