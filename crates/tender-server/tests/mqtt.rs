//! The MQTT gateway over real mTLS: devices enrolled through the HTTPS device API, then talking
//! MQTT 3.1.1 and 5 from Rust (a client built on the same codec crate, which also lets the
//! abuse cases send exactly the bytes they need), from Mosquitto's command-line clients and
//! from Python paho-mqtt. Each abuse case checks the reason code or close, then that the
//! gateway still serves a well-behaved device.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use reqwest::StatusCode;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, ConnectAckReason, DisconnectReasonCode, PublishAckReason};
use rmqtt_codec::{MqttCodec, MqttPacket, v3};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

mod common;
use common::*;

/// Bound on any wait for the server; generous, never asserted as a duration.
const WAIT: Duration = Duration::from_secs(20);

struct Dev {
    id: String,
    key: KeyPair,
    cert: String,
}

fn csr(key: &KeyPair) -> String {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "device");
    p.serialize_request(key).unwrap().pem().unwrap()
}

/// Enrolls a new device with a fresh enrollment token.
async fn enroll(s: &TestServer) -> Dev {
    let (st, t) = admin(
        s,
        reqwest::Method::POST,
        "/api/v1/enrollment-tokens",
        Some(json!({"name": "t"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
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
        .json(&json!({"csr": csr(&key), "token": t["token"], "name": "d"}))
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

fn mqtt_addr(s: &TestServer) -> std::net::SocketAddr {
    s.server.as_ref().unwrap().mqtt_addr.unwrap()
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// TLS to the gateway, trusting only Tender's CA, presenting the given certificate and key.
async fn tls(s: &TestServer, identity: Option<(&str, &KeyPair)>) -> std::io::Result<Tls> {
    tls_with(s, Arc::new(client_config(s, identity))).await
}

async fn tls_with(s: &TestServer, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    use rustls::pki_types::ServerName;
    let tcp = tokio::net::TcpStream::connect(mqtt_addr(s)).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

fn client_config(s: &TestServer, identity: Option<(&str, &KeyPair)>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem(s).as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    }
}

/// A bare MQTT client: sends what it is told, returns what arrives.
struct Client {
    io: Tls,
    codec: MqttCodec,
    buf: BytesMut,
}

impl Client {
    async fn open(s: &TestServer, dev: Option<&Dev>, v5: bool) -> Client {
        let io = tls(s, dev.map(|d| (d.cert.as_str(), &d.key)))
            .await
            .expect("TLS handshake");
        Client {
            io,
            codec: if v5 {
                MqttCodec::V5(v5::Codec::new(1 << 20, 1 << 20))
            } else {
                MqttCodec::V3(v3::Codec::new(1 << 20))
            },
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, p: MqttPacket) {
        let mut out = BytesMut::new();
        self.codec.encode(p, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
        self.io.flush().await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// The next packet, or `None` when the server closed the connection.
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

    /// Expects the server to close (after an optional DISCONNECT, returned).
    async fn closed(&mut self) -> Option<MqttPacket> {
        let first = self.recv().await;
        if first.is_some() {
            assert!(self.recv().await.is_none(), "closed after {first:?}");
        }
        first
    }

    async fn connect_v5(&mut self, client_id: &str, clean: bool, expiry: u32) -> v5::ConnectAck {
        self.send(MqttPacket::V5(v5::Packet::Connect(Box::new(v5::Connect {
            client_id: ByteString::from(client_id),
            keep_alive: 30,
            clean_start: clean,
            session_expiry_interval_secs: expiry,
            ..Default::default()
        }))))
        .await;
        match self.recv().await {
            Some(MqttPacket::V5(v5::Packet::ConnectAck(a))) => *a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn connect_v3(&mut self, client_id: &str) -> v3::ConnectAck {
        self.send(MqttPacket::V3(v3::Packet::Connect(Box::new(v3::Connect {
            client_id: ByteString::from(client_id),
            keep_alive: 30,
            clean_session: true,
            ..Default::default()
        }))))
        .await;
        match self.recv().await {
            Some(MqttPacket::V3(v3::Packet::ConnectAck(a))) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn publish_v5(&mut self, topic: &str, payload: &str, qos: QoS, id: u16) {
        self.send(MqttPacket::V5(v5::Packet::Publish(Box::new(
            rmqtt_codec::types::Publish {
                dup: false,
                retain: false,
                qos,
                topic: ByteString::from(topic),
                packet_id: NonZeroU16::new(id),
                payload: Bytes::from(payload.to_owned()),
                properties: Some(Default::default()),
            },
        ))))
        .await;
    }

    async fn puback_v5(&mut self) -> v5::PublishAck {
        match self.recv().await {
            Some(MqttPacket::V5(v5::Packet::PublishAck(a))) => a,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    async fn subscribe_v5(&mut self, filters: &[&str]) -> Vec<v5::SubscribeAckReason> {
        self.send(MqttPacket::V5(v5::Packet::Subscribe(v5::Subscribe {
            packet_id: NonZeroU16::new(1).unwrap(),
            id: None,
            user_properties: Vec::new(),
            topic_filters: filters
                .iter()
                .map(|f| {
                    (
                        ByteString::from(*f),
                        v5::SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        })))
        .await;
        match self.recv().await {
            Some(MqttPacket::V5(v5::Packet::SubscribeAck(a))) => a.status,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

async fn connack(c: &mut Client) -> ConnectAckReason {
    match c.recv().await {
        Some(MqttPacket::V5(v5::Packet::ConnectAck(a))) => a.reason_code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn disconnect_reason(p: Option<MqttPacket>) -> DisconnectReasonCode {
    match p {
        Some(MqttPacket::V5(v5::Packet::Disconnect(d))) => d.reason_code,
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

async fn device_json(s: &TestServer, id: &str) -> Value {
    let (st, d) = admin(
        s,
        reqwest::Method::GET,
        &format!("/api/v1/devices/{id}"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{d}");
    d
}

async fn connections(s: &TestServer, id: &str) -> Vec<Value> {
    let (st, c) = admin(
        s,
        reqwest::Method::GET,
        &format!("/api/v1/devices/{id}/connections"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{c}");
    c["items"].as_array().unwrap().clone()
}

/// The one place these tests wait on state the server shows only through its store or API:
/// until `check` gives a value, re-checked every 20 ms, bounded by [`WAIT`].
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

/// Waits until the device's newest connection is closed (the server records the close after
/// the socket is gone, so poll the record rather than sleep a guess).
async fn wait_closed(s: &TestServer, id: &str) -> Value {
    poll_until("the connection recorded as closed", async || {
        connections(s, id)
            .await
            .first()
            .filter(|first| !first["disconnected_at"].is_null())
            .cloned()
    })
    .await
}

/// A well-behaved device still gets through: the gateway kept serving.
async fn still_serving(s: &TestServer) {
    let dev = enroll(s).await;
    let mut c = Client::open(s, Some(&dev), true).await;
    let ack = c.connect_v5(&dev.id, true, 0).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    let codes = c
        .subscribe_v5(&[&format!("tender/v1/{}/commands/+", dev.id)])
        .await;
    assert_eq!(codes, vec![v5::SubscribeAckReason::GrantedQos1]);
}

on_both_backends!(
    a_device_connects_and_is_online_until_it_leaves,
    revocation_and_decommissioning_cut_live_sessions,
    desired_state_flows_down_and_reported_state_up,
);

async fn a_device_connects_and_is_online_until_it_leaves(b: Backend) {
    let mut s = start(b).await;
    let dev = enroll(&s).await;
    assert_eq!(device_json(&s, &dev.id).await["online"], false);
    let mut c = Client::open(&s, Some(&dev), true).await;
    let ack = c.connect_v5("", true, 0).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    assert_eq!(
        ack.assigned_client_id.as_deref(),
        Some(dev.id.as_str()),
        "an empty client id is assigned the device id"
    );
    assert_eq!(device_json(&s, &dev.id).await["online"], true);
    let (st, list) = admin(&s, reqwest::Method::GET, "/api/v1/devices", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["items"][0]["online"], true);
    let history = connections(&s, &dev.id).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["protocol"], "mqtt/5");
    assert!(history[0]["disconnected_at"].is_null());

    c.send(MqttPacket::V5(v5::Packet::Disconnect(
        v5::Disconnect::default(),
    )))
    .await;
    assert!(c.recv().await.is_none());
    let closed = wait_closed(&s, &dev.id).await;
    assert_eq!(closed["disconnect_reason"], "client disconnect");
    assert_eq!(device_json(&s, &dev.id).await["online"], false);
    assert!(!device_json(&s, &dev.id).await["last_seen_at"].is_null());
    s.stop().await;
}

async fn revocation_and_decommissioning_cut_live_sessions(b: Backend) {
    let mut s = start(b).await;
    let dev = enroll(&s).await;
    let mut c = Client::open(&s, Some(&dev), true).await;
    assert_eq!(
        c.connect_v5(&dev.id, true, 0).await.reason_code,
        ConnectAckReason::Success
    );
    let (st, _) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/devices/{}/revoke-certificates", dev.id),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        disconnect_reason(c.closed().await),
        DisconnectReasonCode::NotAuthorized
    );
    assert_eq!(
        wait_closed(&s, &dev.id).await["disconnect_reason"],
        "revoked"
    );
    // The revoked certificate still chains to the CA, so TLS succeeds; CONNECT is refused.
    let mut again = Client::open(&s, Some(&dev), true).await;
    assert_eq!(
        again.connect_v5(&dev.id, true, 0).await.reason_code,
        ConnectAckReason::NotAuthorized
    );
    assert!(again.recv().await.is_none());

    let other = enroll(&s).await;
    let mut c = Client::open(&s, Some(&other), false).await;
    assert_eq!(
        c.connect_v3(&other.id).await.return_code,
        v3::ConnectAckReason::ConnectionAccepted
    );
    let (st, _) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/devices/{}/decommission", other.id),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        c.closed().await.is_none(),
        "3.1.1 has no DISCONNECT: a close"
    );
    let mut again = Client::open(&s, Some(&other), false).await;
    assert_eq!(
        again.connect_v3(&other.id).await.return_code,
        v3::ConnectAckReason::NotAuthorized
    );
    still_serving(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn client_id_hijack_is_refused() {
    let mut s = start(Backend::Sqlite).await;
    let a = enroll(&s).await;
    let b = enroll(&s).await;
    let mut c = Client::open(&s, Some(&a), true).await;
    assert_eq!(
        c.connect_v5(&b.id, true, 0).await.reason_code,
        ConnectAckReason::ClientIdentifierNotValid
    );
    let mut c = Client::open(&s, Some(&a), false).await;
    assert_eq!(
        c.connect_v3("some-other-id").await.return_code,
        v3::ConnectAckReason::IdentifierRejected
    );
    still_serving(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn a_second_connection_takes_the_session_over() {
    let mut s = start(Backend::Sqlite).await;
    let dev = enroll(&s).await;
    let mut first = Client::open(&s, Some(&dev), true).await;
    first.connect_v5(&dev.id, true, 0).await;
    let mut second = Client::open(&s, Some(&dev), true).await;
    assert_eq!(
        second.connect_v5(&dev.id, true, 0).await.reason_code,
        ConnectAckReason::Success
    );
    assert_eq!(
        disconnect_reason(first.closed().await),
        DisconnectReasonCode::SessionTakenOver
    );
    s.stop().await;
}

#[tokio::test]
async fn subscriptions_outside_the_device_prefix_are_refused() {
    let mut s = start(Backend::Sqlite).await;
    let dev = enroll(&s).await;
    let neighbour = enroll(&s).await;
    // A device of another tenant.
    let other_tenant = tender_core::tenant::Tenant {
        id: tender_core::TenantId::from_uuid(uuid::Uuid::now_v7()),
        slug: tender_core::tenant::TenantSlug::parse("other").unwrap(),
        name: "Other".into(),
        enrollment_open: false,
        created_at: now(),
    };
    s.store().create_tenant(&other_tenant).await.unwrap();
    let foreign = s
        .add_devices(
            other_tenant.id,
            1,
            tender_core::device::DeviceState::Accepted,
        )
        .await[0];
    let mut c = Client::open(&s, Some(&dev), true).await;
    c.connect_v5(&dev.id, true, 0).await;
    let own = format!("tender/v1/{}/commands/+", dev.id);
    let neighbours = format!("tender/v1/{}/commands/+", neighbour.id);
    let foreigners = format!("tender/v1/{foreign}/#");
    let share = format!("$share/g/tender/v1/{}/#", dev.id);
    let codes = c
        .subscribe_v5(&[
            &own,
            &neighbours,
            &foreigners,
            "#",
            "tender/v1/+/commands",
            "$SYS/#",
            &share,
        ])
        .await;
    use v5::SubscribeAckReason as R;
    assert_eq!(
        codes,
        vec![
            R::GrantedQos1,
            R::NotAuthorized,
            R::NotAuthorized,
            R::NotAuthorized,
            R::NotAuthorized,
            R::NotAuthorized,
            R::SharedSubscriptionNotSupported
        ]
    );
    // Same over 3.1.1: failures are 0x80.
    let mut c3 = Client::open(&s, Some(&neighbour), false).await;
    c3.connect_v3(&neighbour.id).await;
    c3.send(MqttPacket::V3(v3::Packet::Subscribe {
        packet_id: NonZeroU16::new(7).unwrap(),
        topic_filters: vec![
            (
                ByteString::from(format!("tender/v1/{}/#", dev.id)),
                QoS::AtLeastOnce,
            ),
            (
                ByteString::from(format!("tender/v1/{}/#", neighbour.id)),
                QoS::ExactlyOnce,
            ),
        ],
    }))
    .await;
    match c3.recv().await {
        Some(MqttPacket::V3(v3::Packet::SubscribeAck { status, .. })) => assert_eq!(
            status,
            vec![
                v3::SubscribeReturnCode::Failure,
                v3::SubscribeReturnCode::Success(QoS::AtLeastOnce)
            ]
        ),
        other => panic!("{other:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn publishing_outside_the_uplink_topics_is_refused() {
    let mut s = start(Backend::Sqlite).await;
    let dev = enroll(&s).await;
    let neighbour = enroll(&s).await;
    let mut c = Client::open(&s, Some(&dev), true).await;
    c.connect_v5(&dev.id, true, 0).await;
    // QoS 1 over MQTT 5: refused one by one, the connection stays.
    c.publish_v5(
        &format!("tender/v1/{}/telemetry", neighbour.id),
        "{}",
        QoS::AtLeastOnce,
        1,
    )
    .await;
    let ack = c.puback_v5().await;
    assert_eq!(ack.reason_code, PublishAckReason::NotAuthorized);
    assert!(
        ack.reason_string
            .is_some_and(|r| r.contains("own uplink topics")),
        "the reason says why"
    );
    for (id, topic, expected) in [
        (
            2,
            "$SYS/broker/uptime".to_owned(),
            PublishAckReason::NotAuthorized,
        ),
        (
            3,
            format!("tender/v1/{}/state/desired", dev.id),
            PublishAckReason::NotAuthorized,
        ),
        (
            4,
            format!("tender/v1/{}/+", dev.id),
            PublishAckReason::TopicNameInvalid,
        ),
    ] {
        c.publish_v5(&topic, "{}", QoS::AtLeastOnce, id).await;
        assert_eq!(c.puback_v5().await.reason_code, expected, "{topic}");
    }
    // QoS 0 has no acknowledgement: the refusal is a DISCONNECT.
    c.publish_v5(&format!("tender/v1/{}/#", dev.id), "{}", QoS::AtMostOnce, 0)
        .await;
    assert_eq!(
        disconnect_reason(c.closed().await),
        DisconnectReasonCode::TopicNameInvalid
    );
    // 3.1.1 cannot refuse one message: a close.
    let mut c3 = Client::open(&s, Some(&dev), false).await;
    c3.connect_v3(&dev.id).await;
    c3.send(MqttPacket::V3(v3::Packet::Publish(Box::new(
        rmqtt_codec::types::Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: ByteString::from(format!("tender/v1/{}/telemetry", neighbour.id)),
            packet_id: NonZeroU16::new(1),
            payload: Bytes::from_static(b"{}"),
            properties: None,
        },
    ))))
    .await;
    assert!(c3.closed().await.is_none());
    still_serving(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn malformed_and_oversize_packets_close_the_connection() {
    let mut s = start_with(Backend::Sqlite, |c| c.mqtt.max_packet_bytes = 1024).await;
    let dev = enroll(&s).await;
    // Garbage instead of CONNECT.
    let mut c = Client::open(&s, Some(&dev), true).await;
    c.send_raw(b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(c.recv().await.is_none());
    // A CONNECT for an unknown protocol level: 3.1.1's "unacceptable protocol version".
    let mut c = Client::open(&s, Some(&dev), false).await;
    c.send_raw(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 9, 2, 0, 30, 0, 0])
        .await;
    match c.recv().await {
        Some(MqttPacket::V3(v3::Packet::ConnectAck(a))) => assert_eq!(
            a.return_code,
            v3::ConnectAckReason::UnacceptableProtocolVersion
        ),
        other => panic!("{other:?}"),
    }
    assert!(c.recv().await.is_none());
    // A 3.1.1 PUBLISH with a zero-length topic.
    let mut c = Client::open(&s, Some(&dev), false).await;
    c.connect_v3(&dev.id).await;
    c.send_raw(&[0x30, 0x04, 0x00, 0x00, b'h', b'i']).await;
    assert!(c.closed().await.is_none());
    // An oversize packet over MQTT 5: 0x95, announced before the body is even sent.
    let mut c = Client::open(&s, Some(&dev), true).await;
    c.connect_v5(&dev.id, true, 0).await;
    c.send_raw(&[0x30, 0x80, 0x80, 0x04]).await; // PUBLISH of 64 KiB
    assert_eq!(
        disconnect_reason(c.closed().await),
        DisconnectReasonCode::PacketTooLarge
    );
    // A packet that is not CONNECT first.
    let mut c = Client::open(&s, Some(&dev), true).await;
    c.send_raw(&[0xc0, 0x00]).await;
    assert!(c.recv().await.is_none());
    still_serving(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn silence_before_connect_and_after_keepalive_closes() {
    let mut s = start_with(Backend::Sqlite, |c| {
        c.mqtt.connect_timeout_secs = 1;
        c.mqtt.max_keepalive_secs = 1;
    })
    .await;
    let dev = enroll(&s).await;
    // TCP only, no TLS.
    let mut tcp = tokio::net::TcpStream::connect(mqtt_addr(&s)).await.unwrap();
    let mut b = [0u8; 8];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    // TLS, then no CONNECT.
    let mut c = Client::open(&s, Some(&dev), true).await;
    assert!(c.recv().await.is_none());
    // Connected, asks for keepalive 30 (more than the maximum of 1): told 1, then dropped.
    let mut c = Client::open(&s, Some(&dev), true).await;
    let ack = c.connect_v5(&dev.id, true, 0).await;
    assert_eq!(ack.server_keepalive_sec, Some(1));
    assert_eq!(
        disconnect_reason(c.closed().await),
        DisconnectReasonCode::KeepAliveTimeout
    );
    assert_eq!(
        wait_closed(&s, &dev.id).await["disconnect_reason"],
        "keep-alive timeout"
    );
    s.stop().await;
}

#[tokio::test]
async fn foreign_and_expired_certificates_fail_the_handshake() {
    let mut s = start(Backend::Sqlite).await;
    let foreign_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "impostor");
    let cert = p.self_signed(&foreign_key).unwrap().pem();
    let r = async {
        let mut io = tls(&s, Some((&cert, &foreign_key))).await?;
        // TLS 1.3: the server's verdict on the client certificate arrives with the first read.
        io.write_all(&[0xc0, 0]).await?;
        let mut b = [0u8; 4];
        let n = io.read(&mut b).await?;
        Ok::<usize, std::io::Error>(n)
    }
    .await;
    assert!(matches!(r, Err(_) | Ok(0)), "refused: {r:?}");

    let dev = enroll(&s).await;
    let dd = tender_server::datadir::DataDir::prepare(&s.config.data_dir).unwrap();
    let ca = tender_server::ca::load_or_create(&Default::default(), &dd, now()).unwrap();
    let csr = tender_server::ca::parse_csr(&csr(&dev.key)).unwrap();
    let long_ago = tender_core::Timestamp::from_unix_millis(now().unix_millis() - 3 * 86_400_000);
    let old = ca
        .sign_device(
            &csr,
            dev.id.parse().unwrap(),
            &tender_core::tenant::TenantSlug::default_tenant(),
            long_ago,
            1,
        )
        .unwrap();
    let r = async {
        let mut io = tls(&s, Some((&old.pem, &dev.key))).await?;
        io.write_all(&[0xc0, 0]).await?;
        let mut b = [0u8; 4];
        io.read(&mut b).await
    }
    .await;
    assert!(matches!(r, Err(_) | Ok(0)), "refused: {r:?}");
    // No certificate and no password.
    let mut c = Client::open(&s, None, true).await;
    assert_eq!(
        c.connect_v5("", true, 0).await.reason_code,
        ConnectAckReason::BadUserNameOrPassword
    );
    still_serving(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn a_persistent_session_keeps_subscriptions_and_queued_messages() {
    let mut s = start(Backend::Sqlite).await;
    let dev = enroll(&s).await;
    let device_id: tender_core::DeviceId = dev.id.parse().unwrap();
    let gateway = s.server.as_ref().unwrap().gateway.clone();
    let mut c = Client::open(&s, Some(&dev), true).await;
    let ack = c.connect_v5(&dev.id, false, 300).await;
    assert!(!ack.session_present);
    c.subscribe_v5(&[&format!("tender/v1/{}/commands/+", dev.id)])
        .await;
    c.send(MqttPacket::V5(v5::Packet::Disconnect(
        v5::Disconnect::default(),
    )))
    .await;
    assert!(c.recv().await.is_none());
    wait_closed(&s, &dev.id).await;
    let metrics = tender_server::metrics::Metrics::new();
    let d = gateway.send(
        device_id,
        "commands/c-1",
        Bytes::from_static(b"{\"reboot\":true}"),
        QoS::AtLeastOnce,
        &metrics,
    );
    assert_eq!(d, tender_server::mqtt::Delivery::Queued);
    assert_eq!(
        gateway.send(
            device_id,
            "state/desired",
            Bytes::new(),
            QoS::AtLeastOnce,
            &metrics
        ),
        tender_server::mqtt::Delivery::NotSubscribed
    );
    let mut c = Client::open(&s, Some(&dev), true).await;
    let ack = c.connect_v5(&dev.id, false, 300).await;
    assert!(ack.session_present);
    match c.recv().await {
        Some(MqttPacket::V5(v5::Packet::Publish(p))) => {
            assert_eq!(p.topic, format!("tender/v1/{}/commands/c-1", dev.id));
            assert_eq!(p.qos, QoS::AtLeastOnce);
            assert_eq!(&p.payload[..], b"{\"reboot\":true}");
        }
        other => panic!("{other:?}"),
    }
    // A clean start forgets the session.
    drop(c);
    let mut c = Client::open(&s, Some(&dev), true).await;
    assert!(!c.connect_v5(&dev.id, true, 0).await.session_present);
    s.stop().await;
}

#[tokio::test]
async fn a_device_without_a_certificate_logs_in_with_its_password() {
    let mut s = start(Backend::Sqlite).await;
    let (st, d) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/devices",
        Some(json!({"name": "tiny-sensor"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    let id = d["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/devices/{id}/credentials");
    let (st, cred) = admin(&s, reqwest::Method::POST, &path, None).await;
    assert_eq!(st, StatusCode::CREATED, "{cred}");
    assert_eq!(cred["username"], id.as_str());
    let password = cred["password"].as_str().unwrap().to_owned();

    let login = |user: String, pass: String| v5::Connect {
        client_id: ByteString::from(user.clone()),
        keep_alive: 30,
        clean_start: true,
        username: Some(ByteString::from(user)),
        password: Some(Bytes::from(pass)),
        ..Default::default()
    };
    let mut c = Client::open(&s, None, true).await;
    c.send(MqttPacket::V5(v5::Packet::Connect(Box::new(login(
        id.clone(),
        "tnp_wrong".into(),
    )))))
    .await;
    assert_eq!(
        connack(&mut c).await,
        ConnectAckReason::BadUserNameOrPassword
    );
    let mut c = Client::open(&s, None, true).await;
    c.send(MqttPacket::V5(v5::Packet::Connect(Box::new(login(
        id.clone(),
        password.clone(),
    )))))
    .await;
    assert_eq!(connack(&mut c).await, ConnectAckReason::Success);
    assert_eq!(device_json(&s, &id).await["state"], "accepted");
    // Rotation: the live session is cut and the old password stops working.
    let (st, rotated) = admin(&s, reqwest::Method::POST, &path, None).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(
        disconnect_reason(c.closed().await),
        DisconnectReasonCode::NotAuthorized
    );
    let mut c = Client::open(&s, None, true).await;
    c.send(MqttPacket::V5(v5::Packet::Connect(Box::new(login(
        id.clone(),
        password,
    )))))
    .await;
    assert_eq!(
        connack(&mut c).await,
        ConnectAckReason::BadUserNameOrPassword
    );
    let new_password = rotated["password"].as_str().unwrap().to_owned();
    let (st, _) = admin(&s, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let mut c = Client::open(&s, None, true).await;
    c.send(MqttPacket::V5(v5::Packet::Connect(Box::new(login(
        id.clone(),
        new_password,
    )))))
    .await;
    assert_eq!(
        connack(&mut c).await,
        ConnectAckReason::BadUserNameOrPassword
    );
    s.stop().await;
}

/// Writes the device's key, certificate and the CA into `dir` for third-party clients.
fn write_identity(s: &TestServer, dev: &Dev, dir: &std::path::Path) {
    std::fs::write(dir.join("ca.crt"), ca_pem(s)).unwrap();
    std::fs::write(dir.join("device.crt"), &dev.cert).unwrap();
    std::fs::write(dir.join("device.key"), dev.key.serialize_pem()).unwrap();
}

fn tls_args(dir: &std::path::Path) -> Vec<String> {
    let p = |f: &str| dir.join(f).display().to_string();
    vec![
        "--cafile".into(),
        p("ca.crt"),
        "--cert".into(),
        p("device.crt"),
        "--key".into(),
        p("device.key"),
    ]
}

async fn latest(s: &TestServer, id: &str) -> Vec<tender_core::telemetry::Sample> {
    let tenant = s.default_tenant().await.id;
    s.store()
        .latest_samples(tenant, id.parse().unwrap())
        .await
        .unwrap()
}

/// Mosquitto's own clients, following docs/device-protocol.md: subscribe, publish telemetry at
/// QoS 1 over MQTT 5 and 3.1.1, see it stored, get a message sent to the device, and see a
/// refused publish reported.
#[tokio::test]
async fn mosquitto_clients_publish_telemetry_and_receive_commands() {
    let mut s = start(Backend::Sqlite).await;
    let dev = enroll(&s).await;
    let dir = tempfile::tempdir().unwrap();
    write_identity(&s, &dev, dir.path());
    let port = mqtt_addr(&s).port().to_string();
    let base = |v: &str| {
        let mut a: Vec<String> = vec![
            "-V".into(),
            v.into(),
            "-h".into(),
            "localhost".into(),
            "-p".into(),
            port.clone(),
            "-i".into(),
            dev.id.clone(),
        ];
        a.extend(tls_args(dir.path()));
        a
    };
    let structured = format!(
        r#"{{"ts": "{}", "values": {{"humidity": 40}}}}"#,
        now().to_rfc3339()
    );
    for (v, payload) in [
        ("mqttv5", r#"{"temperature": 21.5}"#),
        ("mqttv311", structured.as_str()),
    ] {
        let out = tokio::process::Command::new("mosquitto_pub")
            .args(base(v))
            .args([
                "-q",
                "1",
                "-t",
                &format!("tender/v1/{}/telemetry", dev.id),
                "-m",
                payload,
            ])
            .output()
            .await
            .expect("mosquitto_pub is installed (Debian: mosquitto-clients)");
        assert!(
            out.status.success(),
            "{v}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stored = latest(&s, &dev.id).await;
    let names: Vec<&str> = stored.iter().map(|x| x.metric.as_str()).collect();
    assert_eq!(names, vec!["humidity", "temperature"]);
    assert_eq!(stored[1].value, 21.5);
    // Operators read it back through the API.
    let (st, t) = admin(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/devices/{}/telemetry", dev.id),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(t["items"][1]["metric"], "temperature");
    assert_eq!(t["items"][1]["value"], 21.5);
    let (st, r) = admin(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/devices/{}/telemetry/humidity?limit=10", dev.id),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["items"].as_array().unwrap().len(), 1);
    assert_eq!(r["items"][0]["value"], 40.0);
    let (st, r) = admin(
        &s,
        reqwest::Method::GET,
        &format!(
            "/api/v1/devices/{}/telemetry/humidity?from=yesterday",
            dev.id
        ),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{r}");

    // A refused publish: MQTT 5 reports the reason code and mosquitto_pub fails.
    let out = tokio::process::Command::new("mosquitto_pub")
        .args(base("mqttv5"))
        .args([
            "-q",
            "1",
            "-t",
            &format!("tender/v1/{}/telemetry", dev.id),
            "-m",
            "not json",
        ])
        .output()
        .await
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() || said.to_lowercase().contains("payload"),
        "a bad payload is refused visibly: {said}"
    );

    // mosquitto_sub waits for one message meant for the device.
    let mut sub = tokio::process::Command::new("mosquitto_sub")
        .args(base("mqttv5"))
        .args([
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "20",
            "-v",
            "-t",
            &format!("tender/v1/{}/commands/+", dev.id),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let gateway = s.server.as_ref().unwrap().gateway.clone();
    let device_id: tender_core::DeviceId = dev.id.parse().unwrap();
    let metrics = tender_server::metrics::Metrics::new();
    // The subscription exists once the gateway reports the message as sent.
    poll_until("mosquitto_sub subscribed", async || {
        (gateway.send(
            device_id,
            "commands/reboot-1",
            Bytes::from_static(b"{\"name\":\"reboot\"}"),
            QoS::AtLeastOnce,
            &metrics,
        ) == tender_server::mqtt::Delivery::Sent)
            .then_some(())
    })
    .await;
    let mut out = String::new();
    sub.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert_eq!(
        out.trim(),
        format!(
            "tender/v1/{}/commands/reboot-1 {{\"name\":\"reboot\"}}",
            dev.id
        )
    );
    s.stop().await;
}

/// Python paho-mqtt (Debian's python3-paho-mqtt) over MQTT 5 and 3.1.1 with the device's
/// certificate: QoS 1 telemetry acknowledged, a foreign topic refused with 0x87.
#[tokio::test]
async fn paho_mqtt_publishes_over_both_versions() {
    let mut s = start(Backend::Sqlite).await;
    let dev = enroll(&s).await;
    let neighbour = enroll(&s).await;
    let dir = tempfile::tempdir().unwrap();
    write_identity(&s, &dev, dir.path());
    let script = r#"
import json, sys
import paho.mqtt.client as mqtt
port, d, dev, other = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
results = {}
for version in (mqtt.MQTTv5, mqtt.MQTTv311):
    c = mqtt.Client(client_id=dev, protocol=version)
    c.tls_set(ca_certs=d + "/ca.crt", certfile=d + "/device.crt", keyfile=d + "/device.key")
    c.connect("localhost", port, keepalive=30)
    c.loop_start()
    info = c.publish("tender/v1/%s/telemetry" % dev, json.dumps({"paho_v%d" % version: 1}), qos=1)
    info.wait_for_publish(timeout=20)
    results["v%d" % version] = info.is_published()
    c.disconnect()
    c.loop_stop()
# MQTT 5: a publish to another device's topic is answered (with reason 0x87) and not stored.
c = mqtt.Client(client_id=dev, protocol=mqtt.MQTTv5)
c.tls_set(ca_certs=d + "/ca.crt", certfile=d + "/device.crt", keyfile=d + "/device.key")
c.connect("localhost", port, keepalive=30)
c.loop_start()
info = c.publish("tender/v1/%s/telemetry" % other, "{}", qos=1)
info.wait_for_publish(timeout=20)
results["foreign_answered"] = info.is_published()
c.disconnect()
c.loop_stop()
print(json.dumps(results))
"#;
    let out = tokio::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(mqtt_addr(&s).port().to_string())
        .arg(dir.path())
        .arg(&dev.id)
        .arg(&neighbour.id)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "paho (Debian: python3-paho-mqtt): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["v5"], true, "{r}");
    assert_eq!(r["v4"], true, "{r}");
    let stored = latest(&s, &dev.id).await;
    let names: Vec<&str> = stored.iter().map(|x| x.metric.as_str()).collect();
    assert_eq!(names, vec!["paho_v4", "paho_v5"]);
    // The refused publish was answered (paho completes on any PUBACK) and stored nothing.
    assert_eq!(r["foreign_answered"], true, "{r}");
    assert!(latest(&s, &neighbour.id).await.is_empty());
    s.stop().await;
}

/// The three ways in all end in the same MQTT session: a token (above), an operator's approval
/// of a pending device, and a preauthorized key.
#[tokio::test]
async fn pending_and_preauthorized_devices_talk_mqtt_once_admitted() {
    let mut s = start(Backend::Sqlite).await;
    let ca = reqwest::Certificate::from_pem(ca_pem(&s).as_bytes()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let enroll_url = format!(
        "https://127.0.0.1:{}/device/v1/enroll",
        s.server.as_ref().unwrap().device_addr.port()
    );
    // Pending, then accepted by an operator, then asks again.
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let body = json!({"csr": csr(&key), "name": "pending-one"});
    let r = http.post(&enroll_url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<Value>().await.unwrap()["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (st, _) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/devices/{id}/accept"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let r = http.post(&enroll_url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let cert = r.json::<Value>().await.unwrap()["certificate"]
        .as_str()
        .unwrap()
        .to_owned();
    let pending = Dev { id, key, cert };
    // Preauthorized by key, then enrolls without a token.
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let (st, d) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/devices",
        Some(json!({"name": "pre", "public_key": key.public_key_pem()})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    let r = http
        .post(&enroll_url)
        .json(&json!({"csr": csr(&key)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["device_id"], d["id"]);
    let pre = Dev {
        id: a["device_id"].as_str().unwrap().to_owned(),
        key,
        cert: a["certificate"].as_str().unwrap().to_owned(),
    };
    for dev in [&pending, &pre] {
        let mut c = Client::open(&s, Some(dev), true).await;
        assert_eq!(
            c.connect_v5(&dev.id, true, 0).await.reason_code,
            ConnectAckReason::Success
        );
        c.publish_v5(
            &format!("tender/v1/{}/telemetry", dev.id),
            r#"{"up": 1}"#,
            QoS::AtLeastOnce,
            1,
        )
        .await;
        assert_eq!(c.puback_v5().await.reason_code, PublishAckReason::Success);
        assert_eq!(latest(&s, &dev.id).await.len(), 1);
    }
    s.stop().await;
}

/// A will on the device's telemetry topic is stored when the connection drops without
/// DISCONNECT, and not when the device says goodbye.
#[tokio::test]
async fn the_will_is_published_only_on_an_abrupt_end() {
    let mut s = start(Backend::Sqlite).await;
    let dev = enroll(&s).await;
    let with_will = |metric: &str| v5::Connect {
        client_id: ByteString::from(dev.id.clone()),
        keep_alive: 30,
        clean_start: true,
        last_will: Some(v5::LastWill {
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: ByteString::from(format!("tender/v1/{}/telemetry", dev.id)),
            message: Bytes::from(format!("{{\"{metric}\": 1}}")),
            will_delay_interval_sec: None,
            correlation_data: None,
            message_expiry_interval: None,
            content_type: None,
            user_properties: Vec::new(),
            is_utf8_payload: None,
            response_topic: None,
        }),
        ..Default::default()
    };
    let mut c = Client::open(&s, Some(&dev), true).await;
    c.send(MqttPacket::V5(v5::Packet::Connect(Box::new(with_will(
        "polite",
    )))))
    .await;
    c.recv().await.unwrap();
    c.send(MqttPacket::V5(v5::Packet::Disconnect(
        v5::Disconnect::default(),
    )))
    .await;
    assert!(c.recv().await.is_none());
    wait_closed(&s, &dev.id).await;

    let mut c = Client::open(&s, Some(&dev), true).await;
    c.send(MqttPacket::V5(v5::Packet::Connect(Box::new(with_will(
        "abrupt",
    )))))
    .await;
    c.recv().await.unwrap();
    drop(c); // no DISCONNECT
    poll_until("the will stored", async || {
        (!latest(&s, &dev.id).await.is_empty()).then_some(())
    })
    .await;
    let names: Vec<String> = latest(&s, &dev.id)
        .await
        .iter()
        .map(|x| x.metric.as_str().to_owned())
        .collect();
    assert_eq!(names, vec!["abrupt".to_owned()]);
    // A will outside the device's topics is refused at CONNECT.
    let mut bad = with_will("x");
    if let Some(w) = bad.last_will.as_mut() {
        w.topic = ByteString::from("tender/v1/someone-else/telemetry");
    }
    let mut c = Client::open(&s, Some(&dev), true).await;
    c.send(MqttPacket::V5(v5::Packet::Connect(Box::new(bad))))
        .await;
    assert_eq!(connack(&mut c).await, ConnectAckReason::NotAuthorized);
    s.stop().await;
}

/// A client may send PUBLISH right behind CONNECT without waiting for CONNACK (paho does):
/// packets that arrive in the same read as CONNECT are handled, not left in the buffer.
#[tokio::test]
async fn packets_pipelined_behind_connect_are_handled() {
    let mut s = start(Backend::Sqlite).await;
    let dev = enroll(&s).await;
    let mut c = Client::open(&s, Some(&dev), false).await;
    let mut bytes = BytesMut::new();
    let mut codec = v3::Codec::new(1 << 20);
    codec
        .encode(
            v3::Packet::Connect(Box::new(v3::Connect {
                client_id: ByteString::from(dev.id.clone()),
                keep_alive: 30,
                clean_session: true,
                ..Default::default()
            })),
            &mut bytes,
        )
        .unwrap();
    codec
        .encode(
            v3::Packet::Publish(Box::new(rmqtt_codec::types::Publish {
                dup: false,
                retain: false,
                qos: QoS::AtLeastOnce,
                topic: ByteString::from(format!("tender/v1/{}/telemetry", dev.id)),
                packet_id: NonZeroU16::new(9),
                payload: Bytes::from_static(b"{\"pipelined\": 1}"),
                properties: None,
            })),
            &mut bytes,
        )
        .unwrap();
    c.send_raw(&bytes).await;
    match c.recv().await {
        Some(MqttPacket::V3(v3::Packet::ConnectAck(a))) => {
            assert_eq!(a.return_code, v3::ConnectAckReason::ConnectionAccepted)
        }
        other => panic!("{other:?}"),
    }
    match c.recv().await {
        Some(MqttPacket::V3(v3::Packet::PublishAck { packet_id })) => {
            assert_eq!(packet_id.get(), 9)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(latest(&s, &dev.id).await.len(), 1);
    s.stop().await;
}

/// A device that polls instead of holding an MQTT connection sends the same telemetry over the
/// HTTPS device API, with the same rules.
#[tokio::test]
async fn telemetry_over_https_follows_the_same_rules() {
    let mut s = start(Backend::Sqlite).await;
    let dev = enroll(&s).await;
    let http = device_https(&s, &dev);
    let url = format!(
        "https://127.0.0.1:{}/device/v1/telemetry",
        s.server.as_ref().unwrap().device_addr.port()
    );
    let r = http
        .post(&url)
        .body(r#"{"battery": 3.7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .post(&url)
        .body(r#"{"battery": "full"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("battery"),
        "{problem}"
    );
    let stored = latest(&s, &dev.id).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].value, 3.7);
    s.stop().await;
}

/// An HTTPS client that is the device: its certificate and key, trusting only Tender's CA.
fn device_https(s: &TestServer, dev: &Dev) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem(s).as_bytes()).unwrap();
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", dev.cert, dev.key.serialize_pem()).as_bytes())
            .unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .identity(identity)
        .build()
        .unwrap()
}

async fn get_inventory(s: &TestServer, id: &str) -> (StatusCode, Value) {
    let path = format!("/api/v1/devices/{id}/inventory");
    admin(s, reqwest::Method::GET, &path, None).await
}

/// A device reports its inventory over MQTT (mosquitto_pub) or HTTPS; each report replaces
/// the whole, a bad one is refused naming the attribute and changes nothing, and operators
/// read it on the device, on its own route and, when asked, in the listing.
#[tokio::test]
async fn inventory_arrives_over_mqtt_and_https_and_replaces_the_whole() {
    let mut s = start(Backend::Sqlite).await;
    let dev = enroll(&s).await;
    let dir = tempfile::tempdir().unwrap();
    write_identity(&s, &dev, dir.path());
    let port = mqtt_addr(&s).port().to_string();
    let publish = |payload: &'static str| {
        let mut args: Vec<String> = [
            "-V",
            "mqttv5",
            "-h",
            "localhost",
            "-p",
            &port,
            "-i",
            &dev.id,
            "-q",
            "1",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(tls_args(dir.path()));
        args.extend([
            "-t".to_string(),
            format!("tender/v1/{}/inventory", dev.id),
            "-m".to_string(),
            payload.to_string(),
        ]);
        tokio::process::Command::new("mosquitto_pub")
            .args(args)
            .output()
    };
    let out = publish(r#"{"os.id": "debian", "cpu.count": 4, "net.eth0.ipv4": ["192.0.2.7"]}"#)
        .await
        .expect("mosquitto_pub is installed (Debian: mosquitto-clients)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (st, inv) = get_inventory(&s, &dev.id).await;
    assert_eq!(st, StatusCode::OK, "{inv}");
    assert_eq!(inv["attributes"]["os.id"], "debian");
    assert_eq!(inv["attributes"]["cpu.count"], 4.0);
    assert_eq!(inv["attributes"]["net.eth0.ipv4"][0], "192.0.2.7");

    // A bad report is refused with 0x99 and the reason, and changes nothing.
    let out = publish(r#"{"os.id": null}"#).await.unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() || said.to_lowercase().contains("payload"),
        "a bad inventory is refused visibly: {said}"
    );
    let (_, again) = get_inventory(&s, &dev.id).await;
    assert_eq!(again["attributes"], inv["attributes"]);

    // Over HTTPS, a report replaces the whole set.
    let http = device_https(&s, &dev);
    let url = format!(
        "https://127.0.0.1:{}/device/v1/inventory",
        s.server.as_ref().unwrap().device_addr.port()
    );
    let r = http
        .put(&url)
        .body(r#"{"os.id": "debian", "site": "north"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .put(&url)
        .body(r#"{"a": {"b": 1}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("attribute a"),
        "{problem}"
    );
    let (_, inv) = get_inventory(&s, &dev.id).await;
    assert_eq!(
        inv["attributes"],
        serde_json::json!({"os.id": "debian", "site": "north"})
    );

    // On the device, and in the listing only when asked.
    let d = device_json(&s, &dev.id).await;
    assert_eq!(d["inventory"]["attributes"]["site"], "north");
    let (st, page) = admin(&s, reqwest::Method::GET, "/api/v1/devices", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(page["items"][0].get("inventory").is_none(), "{page}");
    let (st, page) = admin(
        &s,
        reqwest::Method::GET,
        "/api/v1/devices?include=inventory",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(page["items"][0]["inventory"]["attributes"]["site"], "north");
    let (st, p) = admin(
        &s,
        reqwest::Method::GET,
        "/api/v1/devices?include=all",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{p}");
    s.stop().await;
}

/// Beyond `mqtt.max_connections` a new connection is closed right after accept, counted, and
/// the sessions already open keep working.
#[tokio::test]
async fn the_connection_limit_refuses_cleanly() {
    let mut s = start_with(Backend::Sqlite, |c| c.mqtt.max_connections = 2).await;
    let a = enroll(&s).await;
    let b = enroll(&s).await;
    let mut ca = Client::open(&s, Some(&a), true).await;
    assert_eq!(
        ca.connect_v5(&a.id, true, 0).await.reason_code,
        ConnectAckReason::Success
    );
    let mut cb = Client::open(&s, Some(&b), true).await;
    assert_eq!(
        cb.connect_v5(&b.id, true, 0).await.reason_code,
        ConnectAckReason::Success
    );
    // The third: the server closes it before or during the handshake.
    let third = async {
        let mut io = tls(&s, Some((a.cert.as_str(), &a.key))).await?;
        io.write_all(&[0xc0, 0]).await?;
        let mut buf = [0u8; 4];
        io.read(&mut buf).await
    }
    .await;
    assert!(matches!(third, Err(_) | Ok(0)), "refused: {third:?}");
    let (_, _, metrics) = s.get("/metrics", None).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("tender_mqtt_connections_total{outcome=\"refused_limit\"} 1"),
        "{metrics}"
    );
    // The open sessions still work.
    ca.send(MqttPacket::V5(v5::Packet::PingRequest)).await;
    assert!(matches!(
        ca.recv().await,
        Some(MqttPacket::V5(v5::Packet::PingResponse))
    ));
    s.stop().await;
}

/// Stopping the server says goodbye to every session (0x8B) and closes their connection
/// records in one go.
#[tokio::test]
async fn stopping_the_server_disconnects_sessions_and_closes_their_records() {
    let mut s = start(Backend::Sqlite).await;
    let dev = enroll(&s).await;
    let store = s.server.as_ref().unwrap().store.clone();
    let tenant = s.default_tenant().await.id;
    let mut c = Client::open(&s, Some(&dev), true).await;
    c.connect_v5(&dev.id, true, 0).await;
    s.stop().await;
    assert_eq!(
        disconnect_reason(c.closed().await),
        DisconnectReasonCode::ServerShuttingDown
    );
    let page = store
        .device_connections(
            tenant,
            dev.id.parse().unwrap(),
            &tender_core::page::PageRequest {
                after: None,
                limit: tender_core::page::PageLimit::default(),
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(
        page.items[0].disconnect_reason.as_deref(),
        Some("server shutting down")
    );
}

/// A device that reconnects resumes its TLS session (no full handshake), keeps its identity,
/// and is still checked against the registry at CONNECT.
#[tokio::test]
async fn reconnecting_devices_resume_tls_and_are_still_checked() {
    let mut s = start(Backend::Sqlite).await;
    let dev = enroll(&s).await;
    let config = Arc::new(client_config(&s, Some((dev.cert.as_str(), &dev.key))));
    let connect = |io: Tls| async {
        let mut c = Client {
            io,
            codec: MqttCodec::V5(v5::Codec::new(1 << 20, 1 << 20)),
            buf: BytesMut::new(),
        };
        let reason = c.connect_v5(&dev.id, true, 0).await.reason_code;
        (c, reason)
    };
    let first = tls_with(&s, config.clone()).await.unwrap();
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // The ticket arrives after the handshake; a round trip makes sure the client has it.
    let (mut c, reason) = connect(first).await;
    assert_eq!(reason, ConnectAckReason::Success);
    c.send(MqttPacket::V5(v5::Packet::Disconnect(
        v5::Disconnect::default(),
    )))
    .await;
    assert!(c.recv().await.is_none());

    let again = tls_with(&s, config.clone()).await.unwrap();
    assert_eq!(
        again.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let (c, reason) = connect(again).await;
    assert_eq!(
        reason,
        ConnectAckReason::Success,
        "the identity survives resumption"
    );
    drop(c);

    let (st, _) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/devices/{}/revoke-certificates", dev.id),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let resumed = tls_with(&s, config).await.unwrap();
    assert_eq!(
        resumed.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let (_c, reason) = connect(resumed).await;
    assert_eq!(reason, ConnectAckReason::NotAuthorized);
    s.stop().await;
}

/// The next PUBLISH from the server (acknowledged, as a device does): topic and JSON payload.
async fn next_publish(c: &mut Client) -> (String, Value) {
    loop {
        match c.recv().await {
            Some(MqttPacket::V5(v5::Packet::Publish(p))) => {
                if let Some(id) = p.packet_id {
                    c.send(MqttPacket::V5(v5::Packet::PublishAck(v5::PublishAck {
                        packet_id: id,
                        reason_code: PublishAckReason::Success,
                        properties: Default::default(),
                        reason_string: None,
                    })))
                    .await;
                }
                return (
                    p.topic.to_string(),
                    serde_json::from_slice(&p.payload).unwrap(),
                );
            }
            Some(_) => continue,
            None => panic!("the server closed the connection"),
        }
    }
}

/// The next `state/desired` message (acknowledged), skipping anything else; its payload.
async fn next_desired(c: &mut Client, dev: &Dev) -> Value {
    let topic = format!("tender/v1/{}/state/desired", dev.id);
    loop {
        let (t, payload) = next_publish(c).await;
        if t == topic {
            return payload;
        }
    }
}

/// Sends `body` with `method` as the admin, with extra headers; status, headers, JSON body.
async fn admin_with(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = s
        .http
        .request(method, s.url(path))
        .bearer_auth(&s.token)
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let st = resp.status();
    let h = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (st, h, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn desired_state_flows_down_and_reported_state_up(b: Backend) {
    let mut s = start(b).await;
    let dev = enroll(&s).await;
    let mut c = Client::open(&s, Some(&dev), true).await;
    c.connect_v5(&dev.id, true, 0).await;
    c.subscribe_v5(&[&format!("tender/v1/{}/#", dev.id)]).await;
    // Subscribing is a resync: the device gets its (empty) desired state at once.
    assert_eq!(
        next_desired(&mut c, &dev).await,
        json!({"version": 0, "state": {}})
    );

    // A fleet default and a device value arrive merged, as one new version.
    let (st, _, f) = admin_with(
        &s,
        reqwest::Method::PUT,
        "/api/v1/config/fleet",
        &[],
        json!({"document": {"tz": "UTC", "log": "info"}}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{f}");
    let d = next_desired(&mut c, &dev).await;
    assert_eq!(d["state"], json!({"tz": "UTC", "log": "info"}));
    let v1 = d["version"].as_u64().unwrap();
    let twin_path = format!("/api/v1/devices/{}/twin", dev.id);
    let (st, h, t) = admin_with(
        &s,
        reqwest::Method::PATCH,
        &format!("{twin_path}/desired"),
        &[],
        json!({"log": "debug"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(h["etag"], "\"1\"");
    let d = next_desired(&mut c, &dev).await;
    assert_eq!(d["state"], json!({"tz": "UTC", "log": "debug"}));
    assert!(d["version"].as_u64().unwrap() > v1);

    // The device reports; the delta is what it has not done yet.
    c.publish_v5(
        &format!("tender/v1/{}/state/reported", dev.id),
        r#"{"log": "debug", "uptime": 5}"#,
        QoS::AtLeastOnce,
        7,
    )
    .await;
    let ack = loop {
        match c.recv().await {
            Some(MqttPacket::V5(v5::Packet::PublishAck(a))) => break a,
            Some(_) => {}
            None => panic!("closed"),
        }
    };
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    let (st, t) = s.admin_get(&twin_path).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        t["reported"]["document"],
        json!({"log": "debug", "uptime": 5})
    );
    assert_eq!(t["reported"]["version"], 1);
    assert_eq!(t["delta"], json!({"tz": "UTC"}));
    assert_eq!(t["effective"]["sources"]["/tz"]["layer"], "fleet");
    assert_eq!(t["effective"]["sources"]["/log"]["layer"], "device");
    // Reported values are searchable, typed as JSON.
    let (_, found) = s
        .admin_get("/api/v1/devices?q=reported.uptime%20%3E%203")
        .await;
    assert_eq!(found["items"].as_array().unwrap().len(), 1, "{found}");
    let (_, found) = s
        .admin_get("/api/v1/devices?q=reported.uptime%20%3D%20%225%22")
        .await;
    assert_eq!(found["items"].as_array().unwrap().len(), 0, "{found}");
    // A reported payload that is not an object is refused with a reason, not dropped.
    c.publish_v5(
        &format!("tender/v1/{}/state/reported", dev.id),
        "[1]",
        QoS::AtLeastOnce,
        8,
    )
    .await;
    let ack = loop {
        match c.recv().await {
            Some(MqttPacket::V5(v5::Packet::PublishAck(a))) => break a,
            Some(_) => {}
            None => panic!("closed"),
        }
    };
    assert_eq!(ack.reason_code, PublishAckReason::PayloadFormatInvalid);
    s.stop().await;
}

#[tokio::test]
async fn concurrent_twin_writers_conflict_instead_of_overwriting() {
    let mut s = start_with(Backend::Sqlite, |c| c.twin.max_document_bytes = 2048).await;
    let dev = enroll(&s).await;
    let path = format!("/api/v1/devices/{}/twin/desired", dev.id);
    let (st, h, _) = admin_with(
        &s,
        reqwest::Method::PUT,
        &path,
        &[("If-Match", "\"0\"")],
        json!({"a": 1}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(h["etag"], "\"1\"");
    // Two writers read version 1 and write at once: one wins, the other is told.
    let w1 = admin_with(
        &s,
        reqwest::Method::PATCH,
        &path,
        &[("If-Match", "\"1\"")],
        json!({"b": 1}),
    );
    let w2 = admin_with(
        &s,
        reqwest::Method::PATCH,
        &path,
        &[("If-Match", "\"1\"")],
        json!({"c": 1}),
    );
    let ((s1, _, _), (s2, _, _)) = tokio::join!(w1, w2);
    let mut got = [s1, s2];
    got.sort();
    assert_eq!(got, [StatusCode::OK, StatusCode::PRECONDITION_FAILED]);
    // expected_version in the query says 409 instead.
    let (st, _, p) = admin_with(
        &s,
        reqwest::Method::PATCH,
        &format!("{path}?expected_version=1"),
        &[],
        json!({"d": 1}),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["type"], "urn:tender:problem:version-mismatch");
    let (_, t) = s
        .admin_get(&format!("/api/v1/devices/{}/twin", dev.id))
        .await;
    assert_eq!(t["desired"]["version"], 2);
    let doc = t["desired"]["document"].as_object().unwrap();
    assert_eq!(
        doc.len(),
        2,
        "exactly one of the racing patches landed: {doc:?}"
    );
    // Limits and shape, with clear errors.
    let (st, _, p) = admin_with(
        &s,
        reqwest::Method::PUT,
        &path,
        &[],
        json!({"big": "x".repeat(3000)}),
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("2048"), "{p}");
    let (st, _, _) = admin_with(&s, reqwest::Method::PUT, &path, &[], json!([1])).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _, _) = admin_with(
        &s,
        reqwest::Method::PUT,
        &path,
        &[("If-Match", "nope")],
        json!({}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _, _) = admin_with(
        &s,
        reqwest::Method::PUT,
        "/api/v1/devices/0191c1d2-0000-7000-8000-000000000000/twin/desired",
        &[],
        json!({}),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test]
async fn a_change_made_while_offline_arrives_on_reconnect_and_groups_layer_in() {
    let mut s = start(Backend::Sqlite).await;
    let dev = enroll(&s).await;
    let mut c = Client::open(&s, Some(&dev), true).await;
    c.connect_v5(&dev.id, true, 0).await;
    c.subscribe_v5(&[&format!("tender/v1/{}/#", dev.id)]).await;
    next_desired(&mut c, &dev).await;
    // A dynamic group with a layer: the device joins when its inventory matches.
    let (st, g) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/groups",
        Some(json!({"name": "debian", "query": "inventory.os.id = \"debian\""})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{g}");
    let gid = g["id"].as_str().unwrap().to_owned();
    let (st, _, l) = admin_with(
        &s,
        reqwest::Method::PUT,
        &format!("/api/v1/config/groups/{gid}"),
        &[],
        json!({"document": {"apt": {"mirror": "deb.example"}}, "priority": 5}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{l}");
    c.publish_v5(
        &format!("tender/v1/{}/inventory", dev.id),
        r#"{"os.id": "debian"}"#,
        QoS::AtLeastOnce,
        3,
    )
    .await;
    let d = next_desired(&mut c, &dev).await;
    assert_eq!(d["state"], json!({"apt": {"mirror": "deb.example"}}));
    let (_, cfg) = s
        .admin_get(&format!("/api/v1/devices/{}/config", dev.id))
        .await;
    assert_eq!(cfg["sources"]["/apt/mirror"]["group"], "debian");
    // It leaves when its inventory stops matching.
    c.publish_v5(
        &format!("tender/v1/{}/inventory", dev.id),
        r#"{"os.id": "alpine"}"#,
        QoS::AtLeastOnce,
        4,
    )
    .await;
    let d = next_desired(&mut c, &dev).await;
    assert_eq!(d["state"], json!({}));
    let before = d["version"].as_u64().unwrap();

    // Offline: the change waits for the device, which gets the whole state on reconnect.
    drop(c);
    wait_closed(&s, &dev.id).await;
    let (st, _, _) = admin_with(
        &s,
        reqwest::Method::PATCH,
        &format!("/api/v1/devices/{}/twin/desired", dev.id),
        &[],
        json!({"log": "debug"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let mut c = Client::open(&s, Some(&dev), true).await;
    c.connect_v5(&dev.id, true, 0).await;
    c.subscribe_v5(&[&format!("tender/v1/{}/#", dev.id)]).await;
    let d = next_desired(&mut c, &dev).await;
    assert_eq!(d["state"], json!({"log": "debug"}));
    assert!(d["version"].as_u64().unwrap() > before);
    // Over HTTPS the device reads the same.
    let https = device_https(&s, &dev);
    let port = s.server.as_ref().unwrap().device_addr.port();
    let r: Value = https
        .get(format!("https://127.0.0.1:{port}/device/v1/state/desired"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, d);
    let st = https
        .patch(format!("https://127.0.0.1:{port}/device/v1/state/reported"))
        .body(r#"{"log":"debug"}"#)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, t) = s
        .admin_get(&format!("/api/v1/devices/{}/twin", dev.id))
        .await;
    assert_eq!(t["delta"], json!({}));
    s.stop().await;
}

/// Reads server-sent events from `resp` until `want` kinds were all seen (in any order among
/// others); returns every (id, kind, data) read.
async fn read_sse(resp: &mut reqwest::Response, want: &[&str]) -> Vec<(u64, String, Value)> {
    let mut buf = String::new();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse::<u64>().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = serde_json::from_str::<Value>(v.trim()).ok();
                    }
                }
                if let (Some(id), Some(kind), Some(data)) = (id, kind, data) {
                    seen.push((id, kind, data));
                }
            }
            if want.iter().all(|w| seen.iter().any(|(_, k, _)| k == w)) {
                return;
            }
            let chunk = resp.chunk().await.unwrap().expect("the stream stays open");
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("events {want:?} within {WAIT:?}; saw {seen:?}"));
    seen
}

#[tokio::test]
async fn events_are_queryable_and_streamed_live() {
    let mut s = start(Backend::Sqlite).await;
    let (st, g) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/groups",
        Some(json!({"name": "arm", "query": "inventory.cpu.arch = \"arm64\""})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{g}");
    let mut live = s
        .http
        .get(s.url("/api/v1/events/stream"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    assert_eq!(live.headers()["content-type"], "text/event-stream");
    let dev = enroll(&s).await;
    let mut c = Client::open(&s, Some(&dev), true).await;
    c.connect_v5(&dev.id, true, 0).await;
    c.publish_v5(
        &format!("tender/v1/{}/inventory", dev.id),
        r#"{"cpu.arch": "arm64"}"#,
        QoS::AtLeastOnce,
        1,
    )
    .await;
    assert_eq!(c.puback_v5().await.reason_code, PublishAckReason::Success);
    let (st, _, _) = admin_with(
        &s,
        reqwest::Method::PATCH,
        &format!("/api/v1/devices/{}/twin/desired", dev.id),
        &[],
        json!({"a": 1}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let seen = read_sse(
        &mut live,
        &[
            "device.created",
            "device.connected",
            "inventory.changed",
            "group.joined",
            "twin.desired_changed",
        ],
    )
    .await;
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "in id order: {seen:?}"
    );
    let joined = seen.iter().find(|(_, k, _)| k == "group.joined").unwrap();
    assert_eq!(joined.2["device_id"], dev.id);
    assert_eq!(joined.2["group_id"], g["id"]);
    assert_eq!(joined.2["data"]["group"], "arm");
    drop(live);

    // Leaving the dynamic group and disconnecting are events too; the log filters by device
    // and kind.
    c.publish_v5(
        &format!("tender/v1/{}/inventory", dev.id),
        r#"{"cpu.arch": "x86_64"}"#,
        QoS::AtLeastOnce,
        2,
    )
    .await;
    assert_eq!(c.puback_v5().await.reason_code, PublishAckReason::Success);
    drop(c);
    wait_closed(&s, &dev.id).await;
    let log = poll_until("the leave and disconnect events", async || {
        let (st, page) = s
            .admin_get(&format!(
                "/api/v1/events?device={}&kind=device.*,group",
                dev.id
            ))
            .await;
        assert_eq!(st, StatusCode::OK, "{page}");
        let kinds: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect();
        (kinds.contains(&"group.left".to_owned())
            && kinds.contains(&"device.disconnected".to_owned()))
        .then_some(page)
    })
    .await;
    let kinds: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        &kinds[..3],
        ["device.created", "device.connected", "group.joined"],
        "{kinds:?}"
    );
    assert!(
        !kinds.contains(&"inventory.changed"),
        "filtered by kind: {kinds:?}"
    );

    // A stream resumes after Last-Event-ID with nothing missed.
    let connected = log["items"][1]["id"].as_u64().unwrap();
    let mut resumed = s
        .http
        .get(s.url(&format!("/api/v1/events/stream?device={}", dev.id)))
        .bearer_auth(&s.token)
        .header("Last-Event-ID", connected.to_string())
        .send()
        .await
        .unwrap();
    let again = read_sse(&mut resumed, &["device.disconnected"]).await;
    assert_eq!(again[0].1, "inventory.changed", "{again:?}");
    assert!(again.iter().all(|(id, _, _)| *id > connected));
    drop(resumed);

    // Bad filters are clear errors.
    let (st, p) = s.admin_get("/api/v1/events?kind=nope").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(p["detail"].as_str().unwrap().contains("known:"), "{p}");
    let (st, _) = s.admin_get("/api/v1/events?limit=0").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    s.stop().await;
}

async fn command_target(s: &TestServer, command: &str) -> Value {
    let (st, page) = admin(
        s,
        reqwest::Method::GET,
        &format!("/api/v1/commands/{command}/devices"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{page}");
    page["items"][0].clone()
}

async fn wait_target_state(s: &TestServer, command: &str, state: &str) -> Value {
    poll_until(&format!("the command {state}"), async || {
        let t = command_target(s, command).await;
        (t["state"] == state).then_some(t)
    })
    .await
}

async fn send_command(s: &TestServer, body: Value) -> String {
    let (st, c) = admin(s, reqwest::Method::POST, "/api/v1/commands", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    c["id"].as_str().unwrap().to_owned()
}

mod commands {
    use super::*;
    on_both_backends!(commands_over_mqtt_follow_their_states,);
}

/// A device's side of commands over MQTT: delivery, results, retries after a timeout, timing
/// out, cancel, expiry, and refused results.
async fn commands_over_mqtt_follow_their_states(b: Backend) {
    let mut s = start_with(b, |c| c.commands.sweep_interval_ms = 50).await;
    let dev = enroll(&s).await;
    let away = enroll(&s).await;
    let mut c = Client::open(&s, Some(&dev), true).await;
    c.connect_v5(&dev.id, true, 0).await;
    c.subscribe_v5(&[&format!("tender/v1/{}/commands/+", dev.id)])
        .await;
    let result_topic = |id: &str| format!("tender/v1/{}/commands/{id}/result", dev.id);

    // Sent at once to a connected device; delivered, then succeeded with its output.
    let id = send_command(&s, json!({"name": "ping", "target": {"device": dev.id}})).await;
    let (topic, msg) = next_publish(&mut c).await;
    assert_eq!(topic, format!("tender/v1/{}/commands/{id}", dev.id));
    assert_eq!(msg["name"], "ping");
    assert_eq!(msg["attempt"], 1);
    assert!(msg["sent_at"].is_i64());
    c.publish_v5(
        &result_topic(&id),
        r#"{"status":"delivered"}"#,
        QoS::AtLeastOnce,
        1,
    )
    .await;
    assert_eq!(c.puback_v5().await.reason_code, PublishAckReason::Success);
    assert_eq!(command_target(&s, &id).await["state"], "delivered");
    let done = r#"{"status":"succeeded","exit_code":0,"stdout":"ok","output":{"clock_skew_ms":3}}"#;
    c.publish_v5(&result_topic(&id), done, QoS::AtLeastOnce, 2)
        .await;
    assert_eq!(c.puback_v5().await.reason_code, PublishAckReason::Success);
    let t = command_target(&s, &id).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["output"]["clock_skew_ms"], 3);
    // A repeat is acknowledged and changes nothing; a failure afterwards neither.
    c.publish_v5(
        &result_topic(&id),
        r#"{"status":"failed"}"#,
        QoS::AtLeastOnce,
        3,
    )
    .await;
    assert_eq!(c.puback_v5().await.reason_code, PublishAckReason::Success);
    assert_eq!(command_target(&s, &id).await["state"], "succeeded");

    // Invalid results and results for commands the device never got: 0x99.
    for (n, (topic, payload)) in [
        (result_topic(&id), r#"{"status":"done"}"#.to_owned()),
        (result_topic(&id), "not json".to_owned()),
        (
            result_topic("01a20996-40cc-71c3-9f0c-e87a9ab83871"),
            r#"{"status":"delivered"}"#.to_owned(),
        ),
        (
            result_topic("not-a-uuid"),
            r#"{"status":"delivered"}"#.to_owned(),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        c.publish_v5(&topic, &payload, QoS::AtLeastOnce, 10 + n as u16)
            .await;
        assert_eq!(
            c.puback_v5().await.reason_code,
            PublishAckReason::PayloadFormatInvalid,
            "{topic} {payload}"
        );
    }

    // No result within the timeout: sent again (attempt 2), then timed out.
    let id = send_command(
        &s,
        json!({"name": "slow", "target": {"device": dev.id}, "timeout_secs": 1, "max_attempts": 2}),
    )
    .await;
    let (_, first) = next_publish(&mut c).await;
    assert_eq!(first["attempt"], 1);
    let (_, second) = next_publish(&mut c).await;
    assert_eq!(second["id"], id.as_str());
    assert_eq!(second["attempt"], 2);
    let t = wait_target_state(&s, &id, "timed_out").await;
    assert_eq!(t["attempts"], 2);

    // Canceled: a late result is kept, the state stays canceled.
    let id = send_command(
        &s,
        json!({"name": "backup", "args": ["--full"], "target": {"devices": [dev.id]}}),
    )
    .await;
    next_publish(&mut c).await;
    let (st, cmd) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/commands/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{cmd}");
    assert_eq!(cmd["summary"]["canceled"], 1);
    assert_eq!(cmd["summary"]["done"], true);
    c.publish_v5(
        &result_topic(&id),
        r#"{"status":"succeeded","exit_code":0}"#,
        QoS::AtLeastOnce,
        20,
    )
    .await;
    assert_eq!(c.puback_v5().await.reason_code, PublishAckReason::Success);
    let t = command_target(&s, &id).await;
    assert_eq!(
        (t["state"].as_str(), t["exit_code"].as_i64()),
        (Some("canceled"), Some(0))
    );

    // A device that stays away: queued, then expired after the TTL.
    let id = send_command(
        &s,
        json!({"name": "ping", "target": {"device": away.id}, "ttl_secs": 1}),
    )
    .await;
    assert_eq!(command_target(&s, &id).await["state"], "queued");
    wait_target_state(&s, &id, "expired").await;

    // The device's own list, newest first.
    let (_, list) = admin(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/devices/{}/commands", dev.id),
        None,
    )
    .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    let (_, all) = admin(&s, reqwest::Method::GET, "/api/v1/commands?limit=2", None).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    assert!(all["next_cursor"].is_string());
    s.stop().await;
}

/// Sending commands: input checked with problem answers, permission enforced.
#[tokio::test]
async fn sending_commands_checks_input_and_permission() {
    let mut s = start(Backend::Sqlite).await;
    let dev = enroll(&s).await;
    let post = |body: Value| {
        let s = &s;
        async move { admin(s, reqwest::Method::POST, "/api/v1/commands", Some(body)).await }
    };
    for (body, status, kind) in [
        (
            json!({"name": "Bad Name", "target": {"device": dev.id}}),
            400,
            "invalid-command",
        ),
        (
            json!({"name": "x", "args": vec!["a"; 33], "target": {"device": dev.id}}),
            400,
            "invalid-command",
        ),
        (
            json!({"name": "x", "target": {"device": dev.id}, "ttl_secs": 0}),
            400,
            "invalid-field",
        ),
        (
            json!({"name": "x", "target": {"device": dev.id}, "max_attempts": 11}),
            400,
            "invalid-field",
        ),
        (json!({"name": "x", "target": {}}), 400, "invalid-target"),
        (
            json!({"name": "x", "target": {"device": dev.id, "group": "g"}}),
            400,
            "invalid-target",
        ),
        (
            json!({"name": "x", "target": {"device": "nope"}}),
            400,
            "invalid-id",
        ),
        (
            json!({"name": "x", "target": {"query": "name = "}}),
            400,
            "invalid-query",
        ),
        (
            json!({"name": "x", "target": {"query": "name = \"none\""}}),
            400,
            "no-targets",
        ),
        (
            json!({"name": "x", "target": {"group": "missing"}}),
            404,
            "not-found",
        ),
        (
            json!({"name": "x", "target": {"device": "01a20996-40cc-71c3-9f0c-e87a9ab83871"}}),
            404,
            "not-found",
        ),
    ] {
        let (st, p) = post(body.clone()).await;
        assert_eq!(st.as_u16(), status, "{body} -> {p}");
        assert!(p["type"].as_str().unwrap().ends_with(kind), "{body} -> {p}");
    }
    let (st, p) = admin(&s, reqwest::Method::GET, "/api/v1/commands/nope", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{p}");
    let (st, p) = admin(
        &s,
        reqwest::Method::GET,
        "/api/v1/commands/01a20996-40cc-71c3-9f0c-e87a9ab83871/devices",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{p}");
    // A viewer reads but does not send.
    let tenant = s.default_tenant().await.id;
    let (_, viewer, _) = s
        .user_with_token(
            tenant,
            "viewer",
            vec![tender_core::auth::Role::Viewer],
            None,
        )
        .await;
    let resp = s
        .http
        .post(s.url("/api/v1/commands"))
        .bearer_auth(&viewer)
        .json(&json!({"name": "ping", "target": {"device": dev.id}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let (st, _, _) = s.get("/api/v1/commands", Some(&viewer)).await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

mod deployments {
    use super::*;
    on_both_backends!(
        a_phased_deployment_pauses_on_failure_and_resumes_with_a_fix,
        a_continuous_deployment_reaches_devices_that_join_later,
    );
}

/// Enrolls a device of `device_type`.
async fn enroll_typed(s: &TestServer, device_type: &str) -> Dev {
    let (st, t) = admin(
        s,
        reqwest::Method::POST,
        "/api/v1/enrollment-tokens",
        Some(json!({"name": "typed", "device_type": device_type})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
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
        .json(&json!({"csr": csr(&key), "token": t["token"], "name": "d"}))
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

/// Uploads an unsigned artifact `name` `version` for device type `gw`; its id.
async fn upload_artifact(s: &TestServer, name: &str, version: &str) -> String {
    let content = format!("{name} {version}").into_bytes();
    let d =
        tender_artifact::describe(&content[..], tender_artifact::Compression::None, None).unwrap();
    let manifest = tender_artifact::Manifest {
        format: tender_artifact::FORMAT.into(),
        name: name.into(),
        version: version.into(),
        compatible: vec!["gw".into()],
        depends: Default::default(),
        provides: Default::default(),
        payload_type: "file".into(),
        payloads: vec![tender_artifact::Payload {
            name: "p".into(),
            size: d.size,
            sha256: d.sha256,
            compression: tender_artifact::Compression::None,
            stored_size: None,
            meta: Default::default(),
        }],
        scripts: vec![],
        meta: Default::default(),
        created_at: None,
    };
    let file = tender_artifact::write(
        Vec::new(),
        &manifest,
        &tender_artifact::Signatures::default(),
        move |_| Ok(Box::new(std::io::Cursor::new(content.clone())) as Box<dyn std::io::Read>),
    )
    .unwrap();
    let resp = s
        .http
        .post(s.url("/api/v1/artifacts"))
        .bearer_auth(&s.token)
        .body(file)
        .send()
        .await
        .unwrap();
    let st = resp.status();
    let a: Value = resp.json().await.unwrap();
    assert_eq!(st, StatusCode::CREATED, "{a}");
    a["id"].as_str().unwrap().to_owned()
}

async fn deployment_targets(s: &TestServer, id: &str) -> Vec<Value> {
    let (st, page) = admin(
        s,
        reqwest::Method::GET,
        &format!("/api/v1/deployments/{id}/devices"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{page}");
    page["items"].as_array().unwrap().clone()
}

async fn deployment(s: &TestServer, id: &str) -> Value {
    let (st, d) = admin(
        s,
        reqwest::Method::GET,
        &format!("/api/v1/deployments/{id}"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{d}");
    d
}

async fn wait_deployment(s: &TestServer, id: &str, state: &str) -> Value {
    poll_until(&format!("the deployment {state}"), async || {
        let d = deployment(s, id).await;
        (d["state"] == state).then_some(d)
    })
    .await
}

/// The next `updates/...` message a device gets (acknowledged).
async fn next_update(c: &mut Client) -> Value {
    loop {
        let (topic, payload) = next_publish(c).await;
        if topic.contains("/updates/") {
            return payload;
        }
    }
}

async fn report(c: &mut Client, dev: &Dev, deployment: &str, body: Value, id: u16) {
    c.publish_v5(
        &format!("tender/v1/{}/updates/{deployment}/status", dev.id),
        &body.to_string(),
        QoS::AtLeastOnce,
        id,
    )
    .await;
    // A notification may cross the report (the scheduler's and the subscription's resync can
    // both announce the same attempt, which a device handles once): skip it.
    let ack = loop {
        match c.recv().await {
            Some(MqttPacket::V5(v5::Packet::PublishAck(a))) => break a,
            Some(MqttPacket::V5(v5::Packet::Publish(p))) if p.topic.contains("/updates/") => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    };
    assert_eq!(ack.reason_code, PublishAckReason::Success);
}

/// A continuous deployment to a query: a device that matches only after the deployment
/// started (enrolled later) joins it and is notified; a device that does not match never is.
async fn a_continuous_deployment_reaches_devices_that_join_later(b: Backend) {
    let s = start_with(b, |c| {
        c.deployments.tick_ms = 50;
        c.deployments.continuous_interval_secs = 1;
        c.artifacts.require_signature = false;
    })
    .await;
    upload_artifact(&s, "app", "1.0").await;
    // No device matches yet: a continuous deployment waits for them.
    let body = json!({
        "artifact": "app@1.0",
        "target": {"query": "device_type = \"gw\""},
        "continuous": true,
    });
    let (st, d) = admin(&s, reqwest::Method::POST, "/api/v1/deployments", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    let id = d["id"].as_str().unwrap().to_owned();
    assert_eq!(d["total"], 0);
    wait_deployment(&s, &id, "running").await;
    let first = enroll_typed(&s, "gw").await;

    let later = enroll_typed(&s, "gw").await;
    let other = enroll_typed(&s, "kiosk").await;
    let mut c = Client::open(&s, Some(&later), true).await;
    c.connect_v5(&later.id, true, 0).await;
    c.subscribe_v5(&[&format!("tender/v1/{}/updates/+", later.id)])
        .await;
    let m = next_update(&mut c).await;
    assert_eq!(m["deployment_id"], id.as_str());
    let t = deployment_targets(&s, &id).await;
    let ids: Vec<&str> = t.iter().map(|x| x["device_id"].as_str().unwrap()).collect();
    assert!(
        ids.contains(&first.id.as_str()) && ids.contains(&later.id.as_str()),
        "{t:?}"
    );
    assert!(!ids.contains(&other.id.as_str()), "{t:?}");
    report(&mut c, &later, &id, json!({"state": "succeeded"}), 1).await;
    // Continuous: it keeps running for devices yet to come.
    let d = deployment(&s, &id).await;
    assert_eq!(d["state"], "running", "{d}");
}

/// Three devices of type `gw` and one of another type. A 2-phase deployment: phase 1 is one
/// device; when it succeeds phase 2 starts; a failure there pauses the deployment with the
/// reason; a resume with a fixed artifact retries the failed device and the deployment
/// completes. On the way: preview, incompatible devices, a notification sent again after a
/// reconnect, stale reports, bad reports, cancel of a deployment to an offline device.
async fn a_phased_deployment_pauses_on_failure_and_resumes_with_a_fix(b: Backend) {
    let mut s = start_with(b, |c| {
        c.deployments.tick_ms = 50;
        c.artifacts.require_signature = false;
    })
    .await;
    let bad = upload_artifact(&s, "app", "1.0").await;
    let devs = vec![
        enroll_typed(&s, "gw").await,
        enroll_typed(&s, "gw").await,
        enroll_typed(&s, "gw").await,
    ];
    let other = enroll_typed(&s, "kiosk").await;
    let mut clients = Vec::new();
    for d in &devs {
        let mut c = Client::open(&s, Some(d), true).await;
        c.connect_v5(&d.id, true, 0).await;
        c.subscribe_v5(&[&format!("tender/v1/{}/updates/+", d.id)])
            .await;
        clients.push(c);
    }
    let ids: Vec<&str> = devs.iter().map(|d| d.id.as_str()).collect();
    let mut with_kiosk = ids.clone();
    with_kiosk.push(&other.id);
    let body = json!({
        "artifact": "app@1.0",
        "target": {"devices": ids},
        "phases": [{"size": 1}, {"size": "100%", "failure_threshold": 1}],
        "max_attempts": 1,
    });
    let mut preview = body.clone();
    preview["target"]["devices"] = json!(with_kiosk);

    // Preview: nothing stored; the kiosk is incompatible.
    let (st, p) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/deployments/preview",
        Some(preview),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(p["devices"], 4);
    let incompatible: u64 = p["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["incompatible"].as_u64().unwrap())
        .sum();
    let to_install: u64 = p["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["to_install"].as_u64().unwrap())
        .sum();
    assert_eq!((incompatible, to_install), (1, 3), "{p}");
    assert!(
        p["incompatible_examples"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("kiosk"),
        "{p}"
    );
    let (_, list) = s.admin_get("/api/v1/deployments").await;
    assert_eq!(list["items"], json!([]));

    // Invalid bodies are 400s naming the problem; an unknown artifact 404.
    for (bad_body, code) in [
        (
            json!({"artifact": "app@1.0", "target": {"devices": ids}, "phases": [{"size": "150%"}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"artifact": "app@1.0", "target": {"devices": ids}, "phases": [{"size": 1, "on_failure": "panic"}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"artifact": "app@1.0", "target": {"devices": ids}, "continuous": true}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"artifact": "app@9", "target": {"devices": ids}}),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (st, p) = admin(
            &s,
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(bad_body),
        )
        .await;
        assert_eq!(st, code, "{p}");
    }

    let (st, d) = admin(&s, reqwest::Method::POST, "/api/v1/deployments", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    let id = d["id"].as_str().unwrap().to_owned();
    assert_eq!(d["total"], 3);

    // Phase 1: one device is notified.
    let first = poll_until("phase 1 notified", async || {
        let t = deployment_targets(&s, &id).await;
        t.iter()
            .find(|x| x["state"] == "notified")
            .map(|x| x["device_id"].as_str().unwrap().to_owned())
    })
    .await;
    let fi = devs.iter().position(|d| d.id == first).unwrap();
    let msg = next_update(&mut clients[fi]).await;
    assert_eq!(msg["deployment_id"], id.as_str());
    assert_eq!(msg["artifact_id"], bad.as_str());
    assert_eq!(msg["url"], format!("/device/v1/artifacts/{bad}"));
    assert_eq!(msg["attempt"], 1);
    let t = deployment_targets(&s, &id).await;
    assert_eq!(
        t.iter().filter(|x| x["state"] == "notified").count(),
        1,
        "only phase 1: {t:?}"
    );

    let dev = &devs[fi];
    report(
        &mut clients[fi],
        dev,
        &id,
        json!({"state": "downloading", "progress": 50}),
        1,
    )
    .await;
    report(
        &mut clients[fi],
        dev,
        &id,
        json!({"state": "installing", "log": ["writing"]}),
        2,
    )
    .await;
    // A stale step is acknowledged and ignored; a bad one refused.
    report(
        &mut clients[fi],
        dev,
        &id,
        json!({"state": "downloading"}),
        3,
    )
    .await;
    c_publish_refused(&mut clients[fi], dev, &id, r#"{"state": "exploded"}"#).await;
    report(&mut clients[fi], dev, &id, json!({"state": "succeeded"}), 5).await;

    // Phase 2: the other two are notified; one reconnects and gets its notification again.
    let others: Vec<usize> = (0..3).filter(|i| *i != fi).collect();
    for i in &others {
        let m = next_update(&mut clients[*i]).await;
        assert_eq!(m["deployment_id"], id.as_str());
    }
    let again = others[0];
    let mut c = Client::open(&s, Some(&devs[again]), true).await;
    c.connect_v5(&devs[again].id, true, 0).await;
    c.subscribe_v5(&[&format!("tender/v1/{}/updates/+", devs[again].id)])
        .await;
    clients[again] = c;
    let m = next_update(&mut clients[again]).await;
    assert_eq!(
        m["deployment_id"],
        id.as_str(),
        "sent again after the reconnect"
    );

    // One fails: the failure threshold (1) pauses the deployment, with the reason.
    let (ok, failing) = (others[1], others[0]);
    report(
        &mut clients[failing],
        &devs[failing],
        &id,
        json!({"state": "failed", "error": "checksum of slot b", "log": ["verify failed"]}),
        6,
    )
    .await;
    let paused = wait_deployment(&s, &id, "paused").await;
    assert!(
        paused["status_reason"]
            .as_str()
            .unwrap()
            .contains("phase 2"),
        "{paused}"
    );
    assert_eq!(paused["current_phase"], 2);
    report(
        &mut clients[ok],
        &devs[ok],
        &id,
        json!({"state": "succeeded"}),
        7,
    )
    .await;
    let t = deployment_targets(&s, &id).await;
    let f = t
        .iter()
        .find(|x| x["device_id"] == devs[failing].id.as_str())
        .unwrap();
    assert_eq!(f["state"], "failed");
    assert_eq!(f["error"], "checksum of slot b");
    assert_eq!(f["log"], json!(["verify failed"]));

    // Resume with a fixed artifact: the failed device gets it, and the deployment completes.
    let fixed = upload_artifact(&s, "app", "1.1").await;
    let (st, r) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/deployments/{id}/resume"),
        Some(json!({"artifact": "app@1.1"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["artifact"], "app 1.1");
    let m = next_update(&mut clients[failing]).await;
    assert_eq!(m["artifact_id"], fixed.as_str());
    assert_eq!(m["version"], "1.1");
    // A new attempt number: a device handles each (deployment, attempt) once, so a retry
    // must never reuse the number of the attempt that failed.
    assert_eq!(m["attempt"], 2);
    report(
        &mut clients[failing],
        &devs[failing],
        &id,
        json!({"state": "succeeded"}),
        8,
    )
    .await;
    let done = wait_deployment(&s, &id, "completed").await;
    assert_eq!(done["succeeded"], 3);
    assert!(done["finished_at"].is_string());
    let (st, _) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/deployments/{id}/resume"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);

    // The events tell the story.
    let (_, ev) = s
        .admin_get("/api/v1/events?kind=deployment.*&limit=1000")
        .await;
    let states: Vec<&str> = ev["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "deployment.state_changed")
        .map(|e| e["data"]["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"paused") && states.contains(&"completed"),
        "{states:?}"
    );

    // A deployment to a device that stays offline waits; cancel ends it.
    let away = enroll_typed(&s, "gw").await;
    let (st, d2) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/deployments",
        Some(json!({"artifact": fixed, "target": {"devices": [away.id, other.id]}})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{d2}");
    let id2 = d2["id"].as_str().unwrap();
    wait_deployment(&s, id2, "running").await;
    let state_of = |t: &[Value], dev: &Dev| {
        t.iter()
            .find(|x| x["device_id"] == dev.id.as_str())
            .unwrap()["state"]
            .clone()
    };
    let t = deployment_targets(&s, id2).await;
    assert_eq!(state_of(&t, &away), "queued");
    assert_eq!(state_of(&t, &other), "incompatible");
    let (st, c2) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/deployments/{id2}/cancel"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{c2}");
    assert_eq!(c2["state"], "canceled");
    assert_eq!(
        state_of(&deployment_targets(&s, id2).await, &away),
        "canceled"
    );
    // The artifact in use cannot be deleted.
    let (st, _) = admin(
        &s,
        reqwest::Method::DELETE,
        &format!("/api/v1/artifacts/{fixed}"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (_, mine) = s
        .admin_get(&format!("/api/v1/devices/{}/deployments", devs[fi].id))
        .await;
    assert_eq!(mine["items"][0]["state"], "succeeded");

    // Outside its maintenance window nobody is notified, and the deployment says until when.
    let windowed = json!({
        "artifact": fixed, "target": {"device": devs[0].id}, "force": true,
        "maintenance_windows": [{"cron": "0 0 1 1 *", "duration_secs": 60, "time_zone": "Pacific/Auckland"}],
    });
    let (st, d3) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/deployments",
        Some(windowed),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{d3}");
    let id3 = d3["id"].as_str().unwrap().to_owned();
    let waiting = poll_until("the window reason", async || {
        let d = deployment(&s, &id3).await;
        d["status_reason"]
            .as_str()
            .is_some_and(|r| r.contains("maintenance windows"))
            .then_some(d)
    })
    .await;
    assert_eq!(
        waiting["maintenance_windows"][0]["time_zone"],
        "Pacific/Auckland"
    );
    assert_eq!(deployment_targets(&s, &id3).await[0]["state"], "queued");
    let (st, p) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/deployments",
        Some(json!({"artifact": fixed, "target": {"device": devs[0].id},
            "maintenance_windows": [{"cron": "0 2 * *", "duration_secs": 60}]})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("five fields"), "{p}");
    s.stop().await;
}

async fn c_publish_refused(c: &mut Client, dev: &Dev, deployment: &str, payload: &str) {
    c.publish_v5(
        &format!("tender/v1/{}/updates/{deployment}/status", dev.id),
        payload,
        QoS::AtLeastOnce,
        4,
    )
    .await;
    assert_eq!(
        c.puback_v5().await.reason_code,
        PublishAckReason::PayloadFormatInvalid
    );
}

/// The value of a metric in the server's `/metrics` (0 when it is not there yet).
async fn metric(s: &TestServer, name: &str) -> f64 {
    let text = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Telemetry is acknowledged only once it is committed, and a full queue slows devices rather
/// than dropping anything: while someone else holds the database's write lock, the writer
/// cannot commit, the queue (4 points here) fills and the next message waits for room; once
/// the lock is released every message is acknowledged and every point is stored.
#[tokio::test]
async fn telemetry_waits_for_room_and_is_acknowledged_once_stored() {
    use sqlx::Connection;
    let mut s = start_with(Backend::Sqlite, |c| {
        c.telemetry.queue_capacity = 4;
        c.telemetry.max_batch_points = 4;
    })
    .await;
    let mut devs = Vec::new();
    for _ in 0..3 {
        devs.push(enroll(&s).await);
    }
    let mut clients = Vec::new();
    for d in &devs {
        let mut c = Client::open(&s, Some(d), true).await;
        c.connect_v5(&d.id, true, 0).await;
        clients.push(c);
    }
    let db = s.config.data_dir.join("tender.db");
    let mut lock = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let now = tender_core::Timestamp::from_datetime(time::OffsetDateTime::now_utc());
    for (c, d) in clients.iter_mut().zip(&devs) {
        let body = json!([
            {"ts": now.unix_millis(), "values": {"a": 1, "b": 2}},
            {"ts": now.unix_millis() + 1, "values": {"a": 3}},
        ]);
        c.publish_v5(
            &format!("tender/v1/{}/telemetry", d.id),
            &body.to_string(),
            QoS::AtLeastOnce,
            1,
        )
        .await;
    }
    // Three messages of 3 points do not fit in 4: at least one waits for room.
    poll_until("a message waiting for room in the queue", async || {
        (metric(&s, "tender_telemetry_backpressure_waits_total").await >= 1.0).then_some(())
    })
    .await;
    for d in &devs {
        assert!(latest(&s, &d.id).await.is_empty(), "nothing committed yet");
    }
    assert_eq!(
        metric(&s, "tender_telemetry_points_stored_total").await,
        0.0
    );
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    for (c, d) in clients.iter_mut().zip(&devs) {
        assert_eq!(c.puback_v5().await.reason_code, PublishAckReason::Success);
        // Acknowledged means stored.
        let got = latest(&s, &d.id).await;
        assert_eq!(got.len(), 2, "{got:?}");
        let a = s
            .store()
            .query_samples(
                s.default_tenant().await.id,
                d.id.parse().unwrap(),
                &tender_core::telemetry::MetricName::parse("a").unwrap(),
                now,
                now.plus_millis(2),
                tender_core::page::PageLimit::new(10).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(a.items.len(), 2);
    }
    assert_eq!(
        metric(&s, "tender_telemetry_points_stored_total").await,
        9.0
    );
    assert_eq!(metric(&s, "tender_telemetry_queued_points").await, 0.0);
    s.stop().await;
}
