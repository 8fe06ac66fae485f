//! An MQTT 5 client over mTLS (on `rmqtt-codec`) and the supervisor that keeps it connected.
//!
//! [`spawn`] starts one task that owns the connection: it connects with the device's
//! certificate (client id = device id), subscribes to `tender/v1/{id}/#`, sends PINGREQ every
//! keep-alive period, resolves QoS 1 publishes when their PUBACK arrives, and delivers and
//! acknowledges incoming PUBLISHes. When the connection is lost it reconnects after an
//! exponential back-off with full jitter (and resubscribes); when the server says the device is
//! revoked or not authorized (CONNACK `0x87`/`0x86`) it stops with [`MqttError::NotAuthorized`]
//! rather than retrying forever. Dropping every [`MqttClient`] ends the task with a DISCONNECT.

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, ConnectAckReason, PublishAckReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, Encoder};

use crate::backoff::Backoff;
use crate::identity::Identity;

/// Largest packet accepted or sent.
const MAX_PACKET: u32 = 256 * 1024;

/// Connection errors.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("the server closed the connection")]
    Closed,
    #[error("the server disconnected us (reason 0x{code:02x})")]
    Disconnected { code: u8 },
    #[error("the server refused the connection (CONNACK 0x{code:02x})")]
    Refused { code: u8 },
    /// CONNACK `0x87`/`0x86`: the certificate is revoked or the device no longer accepted.
    /// Not retried.
    #[error(
        "revoked/not authorized: the server refused the device (CONNACK 0x{code:02x}); not reconnecting"
    )]
    NotAuthorized { code: u8 },
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("the server refused the message: reason 0x{code:02x}{}", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Refused { code: u8, reason: Option<String> },
    #[error("the connection was lost before the message was acknowledged")]
    ConnectionLost,
    #[error("the MQTT client has stopped")]
    Stopped,
}

/// A message the server sent to the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
}

/// The supervisor's state, for status reporting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnState {
    Connecting,
    Connected,
    /// Waiting before the next attempt after `error`.
    BackingOff {
        error: String,
        wait_ms: u64,
    },
    Stopped {
        error: Option<String>,
    },
}

impl std::fmt::Display for ConnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnState::Connecting => f.write_str("connecting"),
            ConnState::Connected => f.write_str("connected"),
            ConnState::BackingOff { error, wait_ms } => {
                write!(f, "disconnected ({error}); retrying in {wait_ms} ms")
            }
            ConnState::Stopped { error: None } => f.write_str("stopped"),
            ConnState::Stopped { error: Some(e) } => write!(f, "stopped: {e}"),
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct MqttOptions {
    /// Host name (checked against the server's certificate) or IP address.
    pub host: String,
    pub port: u16,
    pub keepalive_secs: u16,
    pub backoff: Backoff,
    /// Bound on TCP + TLS + CONNACK.
    pub connect_timeout: Duration,
    /// Seed for the back-off jitter (tests); `None` seeds from the OS.
    pub rng_seed: Option<u64>,
}

impl MqttOptions {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        MqttOptions {
            host: host.into(),
            port,
            keepalive_secs: 60,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(30),
            rng_seed: None,
        }
    }
}

enum Command {
    Publish {
        topic: String,
        payload: Bytes,
        reply: oneshot::Sender<Result<(), PublishError>>,
    },
}

/// A handle to publish through the supervised connection. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MqttClient {
    tx: mpsc::Sender<Command>,
}

impl MqttClient {
    /// Publishes at QoS 1; resolves when the server's PUBACK arrives (the message is stored).
    /// While disconnected, the request waits for the next connection.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Result<(), PublishError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Publish {
                topic: topic.into(),
                payload: payload.into(),
                reply,
            })
            .await
            .map_err(|_| PublishError::Stopped)?;
        rx.await.unwrap_or(Err(PublishError::ConnectionLost))
    }
}

/// What [`spawn`] returns.
pub struct Supervised {
    pub client: MqttClient,
    /// Messages for the device, acknowledged to the server once handed over here. Read them
    /// (or drop the receiver): while this channel is full the connection is not served.
    pub messages: mpsc::Receiver<Message>,
    pub state: watch::Receiver<ConnState>,
    /// Ends with `Ok` when every client handle is dropped, or with the error that stopped it.
    pub task: JoinHandle<Result<(), MqttError>>,
}

/// Starts the supervised connection. A new value in `identity` (a renewed certificate) makes
/// it reconnect with that identity.
pub fn spawn(options: MqttOptions, identity: watch::Receiver<Arc<Identity>>) -> Supervised {
    let (tx, cmd_rx) = mpsc::channel(64);
    let (msg_tx, messages) = mpsc::channel(64);
    let (state_tx, state) = watch::channel(ConnState::Connecting);
    let task = tokio::spawn(supervise(options, identity, cmd_rx, msg_tx, state_tx));
    Supervised {
        client: MqttClient { tx },
        messages,
        state,
        task,
    }
}

/// The topic filter for everything meant for `device_id`.
pub fn device_filter(device_id: &str) -> String {
    format!("tender/v1/{device_id}/#")
}

/// True for the CONNACK codes that mean the device's credentials are no good any more.
pub fn is_fatal_connack(code: u8) -> bool {
    code == 0x86 || code == 0x87
}

async fn supervise(
    options: MqttOptions,
    mut identity: watch::Receiver<Arc<Identity>>,
    mut cmd_rx: mpsc::Receiver<Command>,
    msg_tx: mpsc::Sender<Message>,
    state_tx: watch::Sender<ConnState>,
) -> Result<(), MqttError> {
    let mut rng = match options.rng_seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_os_rng(),
    };
    let mut attempt = 0u32;
    loop {
        let id = identity.borrow_and_update().clone();
        let _ = state_tx.send(ConnState::Connecting);
        let mut session = Session {
            options: &options,
            identity: &id,
            cmd_rx: &mut cmd_rx,
            msg_tx: &msg_tx,
            state_tx: &state_tx,
            identity_rx: &mut identity,
            connected: false,
        };
        let end = session.run().await;
        let connected = session.connected;
        let error = match end {
            End::Shutdown => {
                let _ = state_tx.send(ConnState::Stopped { error: None });
                return Ok(());
            }
            End::IdentityChanged => {
                attempt = 0;
                tracing::info!("reconnecting with the renewed certificate");
                continue;
            }
            End::Error(e) => e,
        };
        if let MqttError::NotAuthorized { .. } = error {
            tracing::error!(%error, "giving up");
            let _ = state_tx.send(ConnState::Stopped {
                error: Some(error.to_string()),
            });
            return Err(error);
        }
        if connected {
            attempt = 0;
        }
        let wait = options.backoff.delay(attempt, &mut rng);
        attempt = attempt.saturating_add(1);
        tracing::warn!(%error, wait_ms = wait.as_millis() as u64, "MQTT connection lost; reconnecting");
        let _ = state_tx.send(ConnState::BackingOff {
            error: error.to_string(),
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = identity.changed() => {
                if changed.is_err() {
                    // The identity's owner is gone: nothing more will change it.
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

enum End {
    Shutdown,
    IdentityChanged,
    Error(MqttError),
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

struct Session<'a> {
    options: &'a MqttOptions,
    identity: &'a Identity,
    cmd_rx: &'a mut mpsc::Receiver<Command>,
    msg_tx: &'a mpsc::Sender<Message>,
    state_tx: &'a watch::Sender<ConnState>,
    identity_rx: &'a mut watch::Receiver<Arc<Identity>>,
    connected: bool,
}

/// The rustls configuration: trust only the CA, present the device certificate.
pub fn tls_config(identity: &Identity) -> Result<rustls::ClientConfig, MqttError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(identity.ca_pem.as_bytes()) {
        let c = c.map_err(|e| MqttError::Tls(format!("CA certificate: {e}")))?;
        roots
            .add(c)
            .map_err(|e| MqttError::Tls(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(MqttError::Tls("no CA certificate".into()));
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| MqttError::Tls(format!("device certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(identity.key.serialize_pem().as_bytes())
        .map_err(|e| MqttError::Tls(format!("device key: {e}")))?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| MqttError::Tls(e.to_string()))
}

struct Conn {
    io: Tls,
    codec: v5::Codec,
    buf: BytesMut,
}

impl Conn {
    async fn send(&mut self, p: v5::Packet) -> Result<(), MqttError> {
        let mut out = BytesMut::new();
        self.codec
            .encode(p, &mut out)
            .map_err(|e| MqttError::Protocol(format!("encoding: {e}")))?;
        self.io.write_all(&out).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// A complete packet already in the buffer.
    fn decoded(&mut self) -> Result<Option<v5::Packet>, MqttError> {
        self.codec
            .decode(&mut self.buf)
            .map(|o| o.map(|(p, _)| p))
            .map_err(|e| MqttError::Protocol(format!("malformed packet from the server: {e}")))
    }

    async fn recv(&mut self) -> Result<v5::Packet, MqttError> {
        loop {
            if let Some(p) = self.decoded()? {
                return Ok(p);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(MqttError::Closed);
            }
        }
    }
}

impl Session<'_> {
    async fn open(&mut self) -> Result<(Conn, Duration), MqttError> {
        let addr = format!("{}:{}", self.options.host, self.options.port);
        let config = tls_config(self.identity)?;
        let name = rustls::pki_types::ServerName::try_from(self.options.host.clone())
            .map_err(|e| MqttError::Tls(format!("server name {}: {e}", self.options.host)))?;
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|source| MqttError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let io = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|source| MqttError::Connect { addr, source })?;
        let mut conn = Conn {
            io,
            codec: v5::Codec::new(MAX_PACKET, MAX_PACKET),
            buf: BytesMut::new(),
        };
        conn.send(v5::Packet::Connect(Box::new(v5::Connect {
            client_id: ByteString::from(self.identity.device_id()),
            keep_alive: self.options.keepalive_secs,
            clean_start: true,
            session_expiry_interval_secs: 0,
            ..Default::default()
        })))
        .await?;
        let ack = match conn.recv().await? {
            v5::Packet::ConnectAck(a) => a,
            v5::Packet::Disconnect(d) => {
                return Err(MqttError::Disconnected {
                    code: u8::from(d.reason_code),
                });
            }
            other => {
                return Err(MqttError::Protocol(format!(
                    "expected CONNACK, got {other:?}"
                )));
            }
        };
        if ack.reason_code != ConnectAckReason::Success {
            let code = u8::from(ack.reason_code);
            return Err(if is_fatal_connack(code) {
                MqttError::NotAuthorized { code }
            } else {
                MqttError::Refused { code }
            });
        }
        let keepalive = ack
            .server_keepalive_sec
            .unwrap_or(self.options.keepalive_secs)
            .max(1);
        Ok((conn, Duration::from_secs(u64::from(keepalive))))
    }

    async fn run(&mut self) -> End {
        let opened = tokio::time::timeout(self.options.connect_timeout, self.open()).await;
        let (mut conn, keepalive) = match opened {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return End::Error(e),
            Err(_) => return End::Error(MqttError::Timeout("connecting")),
        };
        match self.serve(&mut conn, keepalive).await {
            Ok(end) => {
                let _ = conn
                    .send(v5::Packet::Disconnect(v5::Disconnect::default()))
                    .await;
                let _ = conn.io.shutdown().await;
                end
            }
            Err(e) => End::Error(e),
        }
    }

    async fn serve(&mut self, conn: &mut Conn, keepalive: Duration) -> Result<End, MqttError> {
        let mut next_id: u16 = 0;
        let mut alloc = |pending: &HashMap<u16, oneshot::Sender<Result<(), PublishError>>>| loop {
            next_id = next_id.wrapping_add(1);
            if next_id != 0 && !pending.contains_key(&next_id) {
                return next_id;
            }
        };
        let mut pending: HashMap<u16, oneshot::Sender<Result<(), PublishError>>> = HashMap::new();

        let filter = device_filter(self.identity.device_id());
        let sub_id = alloc(&pending);
        conn.send(v5::Packet::Subscribe(v5::Subscribe {
            packet_id: NonZeroU16::new(sub_id).unwrap_or(NonZeroU16::MIN),
            id: None,
            user_properties: Vec::new(),
            topic_filters: vec![(
                ByteString::from(filter.as_str()),
                v5::SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
        }))
        .await?;

        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        let mut ping_outstanding = false;
        let mut identity_alive = true;
        loop {
            // Packets already buffered first (read_buf may have brought several).
            while let Some(p) = conn.decoded()? {
                match p {
                    v5::Packet::PublishAck(ack) => {
                        if let Some(reply) = pending.remove(&ack.packet_id.get()) {
                            let result = if ack.reason_code == PublishAckReason::Success
                                || ack.reason_code == PublishAckReason::NoMatchingSubscribers
                            {
                                Ok(())
                            } else {
                                Err(PublishError::Refused {
                                    code: u8::from(ack.reason_code),
                                    reason: ack.reason_string.map(|s| s.to_string()),
                                })
                            };
                            let _ = reply.send(result);
                        }
                    }
                    v5::Packet::SubscribeAck(ack) if ack.packet_id.get() == sub_id => {
                        let granted = ack.status.iter().all(|s| {
                            matches!(
                                s,
                                v5::SubscribeAckReason::GrantedQos0
                                    | v5::SubscribeAckReason::GrantedQos1
                                    | v5::SubscribeAckReason::GrantedQos2
                            )
                        });
                        if granted {
                            tracing::info!(%filter, "connected and subscribed");
                        } else {
                            tracing::warn!(%filter, status = ?ack.status, "subscription refused");
                        }
                        self.connected = true;
                        let _ = self.state_tx.send(ConnState::Connected);
                    }
                    v5::Packet::Publish(p) => {
                        let packet_id = p.packet_id;
                        let qos = p.qos;
                        let msg = Message {
                            topic: p.topic.to_string(),
                            payload: p.payload.clone(),
                        };
                        let _ = self.msg_tx.send(msg).await;
                        if let (QoS::AtLeastOnce, Some(id)) = (qos, packet_id) {
                            conn.send(v5::Packet::PublishAck(v5::PublishAck {
                                packet_id: id,
                                reason_code: PublishAckReason::Success,
                                properties: Vec::new(),
                                reason_string: None,
                            }))
                            .await?;
                        } else if let (QoS::ExactlyOnce, Some(id)) = (qos, packet_id) {
                            conn.send(v5::Packet::PublishReceived(v5::PublishAck {
                                packet_id: id,
                                reason_code: PublishAckReason::Success,
                                properties: Vec::new(),
                                reason_string: None,
                            }))
                            .await?;
                        }
                    }
                    v5::Packet::PublishRelease(rel) => {
                        conn.send(v5::Packet::PublishComplete(v5::PublishAck2 {
                            packet_id: rel.packet_id,
                            reason_code: v5::PublishAck2Reason::Success,
                            properties: Vec::new(),
                            reason_string: None,
                        }))
                        .await?;
                    }
                    v5::Packet::PingResponse => ping_outstanding = false,
                    v5::Packet::Disconnect(d) => {
                        return Err(MqttError::Disconnected {
                            code: u8::from(d.reason_code),
                        });
                    }
                    other => tracing::debug!(packet = ?other, "ignored packet"),
                }
            }
            tokio::select! {
                read = conn.io.read_buf(&mut conn.buf) => {
                    if read? == 0 {
                        return Err(MqttError::Closed);
                    }
                }
                cmd = self.cmd_rx.recv() => match cmd {
                    None => return Ok(End::Shutdown),
                    Some(Command::Publish { topic, payload, reply }) => {
                        let id = alloc(&pending);
                        let packet = v5::Packet::Publish(Box::new(rmqtt_codec::types::Publish {
                            dup: false,
                            retain: false,
                            qos: QoS::AtLeastOnce,
                            topic: ByteString::from(topic),
                            packet_id: NonZeroU16::new(id),
                            payload,
                            properties: Some(Default::default()),
                        }));
                        pending.insert(id, reply);
                        conn.send(packet).await?;
                    }
                },
                _ = ping.tick() => {
                    if ping_outstanding {
                        return Err(MqttError::Timeout("no PINGRESP within the keep-alive period"));
                    }
                    conn.send(v5::Packet::PingRequest).await?;
                    ping_outstanding = true;
                }
                changed = self.identity_rx.changed(), if identity_alive => {
                    if changed.is_ok() {
                        return Ok(End::IdentityChanged);
                    }
                    // The owner of the identity is gone; keep the connection as it is.
                    identity_alive = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_revoked_or_unauthorized_stops_reconnecting() {
        assert!(is_fatal_connack(0x87));
        assert!(is_fatal_connack(0x86));
        assert!(!is_fatal_connack(0x88), "server unavailable is retried");
        assert!(!is_fatal_connack(0x85));
    }

    #[test]
    fn errors_carry_the_reason_code() {
        let e = PublishError::Refused {
            code: 0x99,
            reason: Some("bad".into()),
        };
        assert_eq!(
            e.to_string(),
            "the server refused the message: reason 0x99 (bad)"
        );
        assert!(
            MqttError::NotAuthorized { code: 0x87 }
                .to_string()
                .contains("revoked/not authorized")
        );
        assert_eq!(device_filter("abc"), "tender/v1/abc/#");
    }
}
