//! One MQTT connection, from TLS accept to close.
//!
//! ```text
//! accept ─TLS─▶ read CONNECT ─authenticate─▶ CONNACK ─▶ loop { packets | downlinks | kick |
//!   (connect_timeout covers both)                          keepalive | cert expiry | shutdown }
//!                                                        ─▶ will? ─▶ presence closed ─▶ park?
//! ```

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{
    ConnectAckReason as Connack, DisconnectReasonCode as Reason, PublishAckReason,
    SubscribeAckReason, UnsubscribeAckReason,
};
use tender_core::presence::{DeviceConnection, Transport};
use tender_core::{ConnectionId, DeviceId, TenantId, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::topic::{self, TopicError};
use super::uplink::{self, Refusal, UplinkHandler};
use super::wire::{self, Codec, ConnAckProps, Incoming, Outgoing, Version};
use super::{Gateway, Kick, Registration, lock};
use crate::device_api::{CertAuthError, PeerCertificate, authenticate_certificate};
use crate::state::AppState;

/// Unacknowledged QoS 1 messages to a device at once; more wait in the session's queue.
const MAX_INFLIGHT: usize = 16;

pub(crate) struct Context {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub state: AppState,
    pub gateway: Gateway,
    pub uplinks: Arc<dyn UplinkHandler>,
    pub shutdown: watch::Receiver<bool>,
}

/// Who is connected.
struct Identity {
    tenant_id: TenantId,
    device_id: DeviceId,
    by_password: bool,
    /// When the client certificate stops being valid: the session ends then.
    cert_not_after: Option<Timestamp>,
}

/// A refused CONNECT: the CONNACK reason, the metrics outcome, and what to log.
struct Refused {
    reason: Connack,
    outcome: &'static str,
    why: String,
}

fn refused(reason: Connack, outcome: &'static str, why: impl Into<String>) -> Refused {
    Refused {
        reason,
        outcome,
        why: why.into(),
    }
}

/// How a session ends.
struct End {
    /// MQTT 5 DISCONNECT to send first (3.1.1 just closes).
    reason: Option<Reason>,
    /// For the connection history.
    why: String,
    publish_will: bool,
}

impl End {
    fn server(reason: Reason, why: impl Into<String>) -> End {
        End {
            reason: Some(reason),
            why: why.into(),
            publish_will: true,
        }
    }
    fn abrupt(why: impl Into<String>) -> End {
        End {
            reason: None,
            why: why.into(),
            publish_will: true,
        }
    }
}

/// The byte stream and its codec.
struct Conn {
    io: TlsStream<TcpStream>,
    inbuf: BytesMut,
    outbuf: BytesMut,
    codec: Codec,
}

enum ReadError {
    Closed,
    Io(#[allow(dead_code)] std::io::Error),
    Decode(DecodeError),
}

impl Conn {
    /// Reads until one whole packet is decoded.
    async fn read_packet(&mut self) -> Result<Incoming, ReadError> {
        loop {
            if let Some(p) = self
                .codec
                .decode(&mut self.inbuf)
                .map_err(ReadError::Decode)?
            {
                return Ok(p);
            }
            match self.io.read_buf(&mut self.inbuf).await {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    fn queue(&mut self, out: Outgoing) -> bool {
        self.codec.encode(out, &mut self.outbuf)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.outbuf.is_empty() {
            return Ok(());
        }
        self.io.write_all(&self.outbuf).await?;
        self.io.flush().await?;
        self.outbuf.clear();
        if self.outbuf.capacity() > 64 * 1024 {
            self.outbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Best effort goodbye: an MQTT 5 DISCONNECT if the version has one, then TLS close.
    async fn close(mut self, reason: Option<Reason>, why: &str) {
        if let Some(reason) = reason {
            self.queue(Outgoing::Disconnect {
                reason,
                why: Some(why.to_owned()),
            });
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.flush().await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}

/// Token bucket for a connection's message rate.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        Bucket {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            at: Instant::now(),
        }
    }

    /// Takes one token; when there is none, how long until there is.
    fn take(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
            self.tokens -= 1.0;
            Some(wait)
        }
    }
}

pub(crate) async fn run(ctx: Context, tcp: TcpStream, peer: SocketAddr) {
    let metrics = ctx.state.metrics.clone();
    let cfg = ctx.gateway.config().clone();
    let deadline = Instant::now() + Duration::from_secs(cfg.connect_timeout_secs.max(1));
    let tls = match tokio::time::timeout_at(deadline, ctx.acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "MQTT TLS handshake failed");
            metrics.mqtt_connection("handshake_failed");
            return;
        }
        Err(_) => {
            metrics.mqtt_connection("connect_timeout");
            return;
        }
    };
    let peer_cert = PeerCertificate::of(tls.get_ref().1);
    let mut conn = Conn {
        io: tls,
        inbuf: BytesMut::with_capacity(256),
        outbuf: BytesMut::new(),
        codec: Codec::new(cfg.max_packet_bytes),
    };
    let connect = match tokio::time::timeout_at(deadline, conn.read_packet()).await {
        Ok(Ok(Incoming::Connect(c))) => c,
        Ok(Ok(_)) => {
            metrics.mqtt_connection("protocol_error");
            return;
        }
        Ok(Err(ReadError::Decode(e))) => {
            tracing::debug!(%peer, error = %e, "malformed CONNECT");
            metrics.mqtt_connection("protocol_error");
            if let Some(bytes) = conn.codec.connack_for_decode_error(&e) {
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    let _ = conn.io.write_all(&bytes).await;
                    let _ = conn.io.shutdown().await;
                })
                .await;
            }
            return;
        }
        Ok(Err(ReadError::Closed | ReadError::Io(_))) => {
            metrics.mqtt_connection("protocol_error");
            return;
        }
        Err(_) => {
            metrics.mqtt_connection("connect_timeout");
            return;
        }
    };
    let identity = match authenticate(&ctx, &connect, peer_cert.as_ref()).await {
        Ok(id) => id,
        Err(r) => {
            tracing::info!(%peer, client_id = %connect.client_id, reason = %r.why, "MQTT connection refused");
            metrics.mqtt_connection(r.outcome);
            conn.queue(Outgoing::ConnAck {
                reason: r.reason,
                session_present: false,
                props: Some(ConnAckProps {
                    session_expiry_secs: None,
                    max_packet_size: cfg.max_packet_bytes,
                    assigned_client_id: None,
                    server_keepalive_secs: None,
                    reason: Some(r.why),
                }),
            });
            conn.close(None, "").await;
            return;
        }
    };
    Session::start(ctx, conn, *connect, identity, peer).await;
}

async fn authenticate(
    ctx: &Context,
    connect: &wire::Connect,
    peer_cert: Option<&PeerCertificate>,
) -> Result<Identity, Refused> {
    if connect.auth_method {
        return Err(refused(
            Connack::BadAuthenticationMethod,
            "refused_auth",
            "enhanced authentication is not supported: use a client certificate or a device credential",
        ));
    }
    let identity = match peer_cert {
        Some(peer) => match authenticate_certificate(&ctx.state, peer).await {
            Ok((cert, device)) => Identity {
                tenant_id: device.tenant_id,
                device_id: device.id,
                by_password: false,
                cert_not_after: Some(cert.not_after),
            },
            Err(CertAuthError::NotValid) => {
                return Err(refused(
                    Connack::NotAuthorized,
                    "refused_auth",
                    "the client certificate is revoked, expired or unknown, or its device may not connect",
                ));
            }
            Err(CertAuthError::Store(e)) => {
                tracing::warn!(error = %e, "cannot check an MQTT client certificate");
                return Err(refused(
                    Connack::ServerUnavailable,
                    "refused_other",
                    "the server cannot check credentials now; retry later",
                ));
            }
        },
        None => authenticate_password(ctx, connect).await?,
    };
    let device = identity.device_id.to_string();
    if !connect.client_id.is_empty() && connect.client_id != device {
        return Err(refused(
            Connack::ClientIdentifierNotValid,
            "refused_client_id",
            format!("the client id must be the device id {device} (or empty)"),
        ));
    }
    if let Some(will) = &connect.will {
        match topic::classify_publish(identity.device_id, &will.topic) {
            Ok(_) => {}
            Err(TopicError::Invalid) => {
                return Err(refused(
                    Connack::TopicNameInvalid,
                    "refused_other",
                    "the will topic is not a valid topic name",
                ));
            }
            Err(_) => {
                return Err(refused(
                    Connack::NotAuthorized,
                    "refused_other",
                    "the will topic must be one of the device's own uplink topics",
                ));
            }
        }
        if will.retain && connect.version == Version::V5 {
            return Err(refused(
                Connack::RetainNotSupported,
                "refused_other",
                "retained messages are not supported",
            ));
        }
    }
    Ok(identity)
}

/// Username = device id, password = the device's Tender-issued secret.
async fn authenticate_password(
    ctx: &Context,
    connect: &wire::Connect,
) -> Result<Identity, Refused> {
    let no = || {
        refused(
            Connack::BadUserNameOrPassword,
            "refused_auth",
            "a client certificate or a device credential (username = device id) is required",
        )
    };
    let (Some(username), Some(password)) = (&connect.username, &connect.password) else {
        return Err(no());
    };
    let Ok(device_id) = username.parse::<DeviceId>() else {
        return Err(no());
    };
    let credential = match ctx
        .state
        .store
        .device_credential_for_authentication(device_id)
        .await
    {
        Ok(Some(c)) => c,
        Ok(None) => return Err(no()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check an MQTT device credential");
            return Err(refused(
                Connack::ServerUnavailable,
                "refused_other",
                "the server cannot check credentials now; retry later",
            ));
        }
    };
    if !crate::auth::verify_device_secret(&ctx.state.token_key, device_id, password, &credential) {
        return Err(no());
    }
    let device = match ctx
        .state
        .store
        .device(credential.tenant_id, device_id)
        .await
    {
        Ok(Some(d)) if d.state.may_connect() => d,
        Ok(_) => {
            return Err(refused(
                Connack::NotAuthorized,
                "refused_auth",
                "this device may not connect",
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a device");
            return Err(refused(
                Connack::ServerUnavailable,
                "refused_other",
                "the server cannot check credentials now; retry later",
            ));
        }
    };
    if device.state == tender_core::device::DeviceState::Preauthorized {
        // First connection of a preauthorized device: it joins the fleet (a race with an
        // operator's change leaves whatever the operator decided).
        if let Err(e) = tender_store::transition_device(
            &*ctx.state.store,
            device.tenant_id,
            device.id,
            tender_core::device::DeviceState::Accepted,
            ctx.state.clock.now(),
        )
        .await
        {
            tracing::info!(device = %device.id, error = %e, "preauthorized device not moved to accepted");
        }
    }
    Ok(Identity {
        tenant_id: device.tenant_id,
        device_id: device.id,
        by_password: true,
        cert_not_after: None,
    })
}

struct Session {
    ctx: Context,
    conn: Conn,
    identity: Identity,
    version: Version,
    reg: Registration,
    keepalive: Duration,
    session_expiry_secs: u32,
    will: Option<wire::Will>,
    bucket: Bucket,
    /// QoS 2 packet ids received and answered with PUBREC, awaiting PUBREL.
    awaiting_release: std::collections::HashSet<u16>,
    connection_id: ConnectionId,
    last_heard: Timestamp,
    /// Whether the client wants reason strings in acknowledgements (MQTT 5).
    problem_info: bool,
}

impl Session {
    async fn start(
        ctx: Context,
        conn: Conn,
        connect: wire::Connect,
        identity: Identity,
        peer: SocketAddr,
    ) {
        let cfg = ctx.gateway.config().clone();
        let metrics = ctx.state.metrics.clone();
        let now = ctx.state.clock.now();
        let connection_id = ConnectionId::from_uuid(uuid::Uuid::now_v7());
        let client_id = identity.device_id.to_string();
        let record = DeviceConnection {
            id: connection_id,
            tenant_id: identity.tenant_id,
            device_id: identity.device_id,
            transport: Transport::Mqtt,
            protocol: connect.version.label().to_owned(),
            remote_addr: peer.to_string(),
            client_id: Some(client_id.clone()),
            connected_at: now,
            disconnected_at: None,
            disconnect_reason: None,
        };
        let mut conn = conn;
        if let Err(e) = ctx.state.store.open_connection(&record).await {
            tracing::warn!(device = %identity.device_id, error = %e, "cannot record an MQTT connection; refusing it");
            metrics.mqtt_connection("refused_other");
            conn.queue(Outgoing::ConnAck {
                reason: Connack::ServerUnavailable,
                session_present: false,
                props: None,
            });
            conn.close(None, "").await;
            return;
        }
        if let Err(e) = ctx
            .state
            .store
            .record_device_seen(identity.tenant_id, identity.device_id, now)
            .await
        {
            tracing::warn!(device = %identity.device_id, error = %e, "cannot record last seen");
        }
        crate::events::emit(
            &ctx.state,
            crate::events::device_event(
                &ctx.state,
                identity.tenant_id,
                identity.device_id,
                tender_core::event::EventKind::DeviceConnected,
            )
            .with("protocol", connect.version.label())
            .with("remote_addr", peer.to_string()),
        )
        .await;
        let max_keepalive = cfg.max_keepalive_secs;
        let keepalive_secs = if connect.keep_alive == 0 || connect.keep_alive > max_keepalive {
            max_keepalive
        } else {
            connect.keep_alive
        };
        let session_expiry_secs = connect.session_expiry_secs.min(cfg.max_session_expiry_secs);
        let reg = ctx.gateway.register(
            identity.device_id,
            connect.clean_start,
            identity.by_password,
        );
        if let Some(max) = connect.max_packet_size {
            conn.codec.set_max_out(max);
        }
        conn.queue(Outgoing::ConnAck {
            reason: Connack::Success,
            session_present: reg.session_present,
            props: Some(ConnAckProps {
                session_expiry_secs: (connect.version == Version::V5
                    && session_expiry_secs != connect.session_expiry_secs)
                    .then_some(session_expiry_secs),
                max_packet_size: cfg.max_packet_bytes,
                assigned_client_id: connect.client_id.is_empty().then_some(client_id),
                server_keepalive_secs: (keepalive_secs != connect.keep_alive)
                    .then_some(keepalive_secs),
                reason: None,
            }),
        });
        metrics.mqtt_connection("accepted");
        tracing::debug!(device = %identity.device_id, %peer, protocol = connect.version.label(), "MQTT session started");
        let session = Session {
            version: connect.version,
            keepalive: Duration::from_millis(u64::from(keepalive_secs) * 1500),
            session_expiry_secs,
            will: connect.will,
            bucket: Bucket::new(cfg.messages_per_sec, cfg.burst),
            awaiting_release: Default::default(),
            connection_id,
            last_heard: now,
            problem_info: connect.problem_info,
            ctx,
            conn,
            identity,
            reg,
        };
        session.run().await;
    }

    async fn run(mut self) {
        // Resumed session: resend what was not acknowledged.
        self.resend_inflight();
        if !lock(&self.reg.state).subscriptions.is_empty() {
            self.resync();
        }
        let end = self.serve().await;
        self.finish(end).await;
    }

    fn resend_inflight(&mut self) {
        let pending: Vec<_> = lock(&self.reg.state)
            .inflight
            .iter()
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        for (id, m) in pending {
            self.conn.queue(Outgoing::Publish(Box::new(wire::Publish {
                topic: m.topic,
                payload: m.payload,
                qos: m.qos,
                retain: false,
                dup: true,
                packet_id: NonZeroU16::new(id),
                topic_alias: false,
            })));
        }
    }

    /// Moves queued downlinks into the output buffer, QoS 1 ones into flight.
    fn pump_downlinks(&mut self) {
        let metrics = self.ctx.state.metrics.clone();
        let mut st = lock(&self.reg.state);
        while st.inflight.len() < MAX_INFLIGHT {
            let Some(m) = st.queue.pop_front() else { break };
            let packet_id = if m.qos == QoS::AtMostOnce {
                None
            } else {
                match st.take_packet_id() {
                    Some(id) => {
                        st.inflight.insert(id.get(), m.clone());
                        Some(id)
                    }
                    None => {
                        st.queue.push_front(m);
                        break;
                    }
                }
            };
            let sent = self.conn.queue(Outgoing::Publish(Box::new(wire::Publish {
                topic: m.topic,
                payload: m.payload,
                qos: m.qos,
                retain: false,
                dup: false,
                packet_id,
                topic_alias: false,
            })));
            if sent {
                metrics.mqtt_messages_sent.inc();
            } else {
                // Larger than the client accepts.
                if let Some(id) = packet_id {
                    st.inflight.remove(&id.get());
                }
                metrics.mqtt_drop("too_large_for_client");
            }
        }
    }

    async fn serve(&mut self) -> End {
        let cert_deadline = self.identity.cert_not_after.map(|t| {
            let left = t.unix_millis() - self.ctx.state.clock.now().unix_millis();
            Instant::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0))
        });
        let mut shutdown = self.ctx.shutdown.clone();
        let mut keepalive_deadline = Instant::now() + self.keepalive;
        loop {
            if *shutdown.borrow() {
                return End::server(Reason::ServerShuttingDown, "server shutting down");
            }
            if let Some(kick) = *lock(&self.reg.kick) {
                return match kick {
                    Kick::Revoked => End {
                        reason: Some(Reason::NotAuthorized),
                        why: "revoked".into(),
                        publish_will: false,
                    },
                    Kick::TakenOver => {
                        End::server(Reason::SessionTakenOver, "taken over by a new connection")
                    }
                };
            }
            // Packets already buffered (e.g. sent right behind CONNECT, or several in one read)
            // are handled before waiting for more bytes.
            loop {
                let packet = match self.conn.codec.decode(&mut self.conn.inbuf) {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(e) => {
                        self.ctx.state.metrics.mqtt_refusal(match e {
                            DecodeError::MaxSizeExceeded { .. } => "packet_too_large",
                            _ => "malformed",
                        });
                        return End::server(wire::reason_for(&e), format!("protocol error: {e}"));
                    }
                };
                if let Some(end) = self.handle(packet).await {
                    return end;
                }
            }
            if self.conn.inbuf.is_empty() && self.conn.inbuf.capacity() > 64 * 1024 {
                // A large packet came and went: give the memory back.
                self.conn.inbuf = BytesMut::with_capacity(256);
            }
            self.pump_downlinks();
            if let Err(e) = self.conn.flush().await {
                return End::abrupt(format!("write failed: {e}"));
            }
            let wake = self.reg.wake.clone();
            let read = tokio::select! {
                biased;
                _ = shutdown.changed() => continue,
                () = wake.notified() => continue,
                () = tokio::time::sleep_until(keepalive_deadline) => {
                    return End::server(Reason::KeepAliveTimeout, "keep-alive timeout");
                }
                () = sleep_until_opt(cert_deadline) => {
                    return End::server(Reason::NotAuthorized, "certificate expired");
                }
                r = self.conn.io.read_buf(&mut self.conn.inbuf) => r,
            };
            match read {
                Ok(0) => return End::abrupt("connection closed without DISCONNECT"),
                Ok(_) => {}
                Err(e) => return End::abrupt(format!("read failed: {e}")),
            }
            keepalive_deadline = Instant::now() + self.keepalive;
            self.last_heard = self.ctx.state.clock.now();
        }
    }

    async fn throttle(&mut self) {
        if let Some(wait) = self.bucket.take() {
            self.ctx.state.metrics.mqtt_throttled.inc();
            tokio::time::sleep(wait).await;
        }
    }

    /// Handles one packet; `Some` ends the session.
    async fn handle(&mut self, packet: Incoming) -> Option<End> {
        match packet {
            Incoming::Publish(p) => {
                self.throttle().await;
                self.on_publish(*p).await
            }
            Incoming::PubAck(id) => {
                lock(&self.reg.state).inflight.remove(&id.get());
                None
            }
            Incoming::PubRel(id) => {
                let found = self.awaiting_release.remove(&id.get());
                self.conn.queue(Outgoing::PubComp {
                    packet_id: id,
                    found,
                });
                None
            }
            Incoming::PubRec(_) | Incoming::PubComp(_) => Some(
                self.protocol_error("PUBREC/PUBCOMP for a QoS 2 message this server never sends"),
            ),
            Incoming::Subscribe {
                packet_id,
                filters,
                has_id,
            } => {
                self.throttle().await;
                if has_id {
                    return Some(End::server(
                        Reason::SubscriptionIdentifiersNotSupported,
                        "subscription identifiers are not supported",
                    ));
                }
                let codes = self.on_subscribe(filters);
                let granted = codes.iter().any(|c| {
                    matches!(
                        c,
                        SubscribeAckReason::GrantedQos0 | SubscribeAckReason::GrantedQos1
                    )
                });
                self.conn.queue(Outgoing::SubAck { packet_id, codes });
                if granted {
                    self.resync();
                }
                None
            }
            Incoming::Unsubscribe { packet_id, filters } => {
                self.throttle().await;
                let mut st = lock(&self.reg.state);
                let codes = filters
                    .iter()
                    .map(|f| match st.subscriptions.remove(f) {
                        Some(_) => UnsubscribeAckReason::Success,
                        None => UnsubscribeAckReason::NoSubscriptionExisted,
                    })
                    .collect();
                drop(st);
                self.conn.queue(Outgoing::UnsubAck { packet_id, codes });
                None
            }
            Incoming::PingReq => {
                self.conn.queue(Outgoing::PingResp);
                None
            }
            Incoming::Disconnect {
                with_will,
                session_expiry_secs,
            } => {
                if let Some(secs) = session_expiry_secs {
                    if self.session_expiry_secs == 0 && secs != 0 {
                        return Some(self.protocol_error(
                            "session expiry set at DISCONNECT after CONNECT said 0",
                        ));
                    }
                    self.session_expiry_secs =
                        secs.min(self.ctx.gateway.config().max_session_expiry_secs);
                }
                Some(End {
                    reason: None,
                    why: "client disconnect".into(),
                    publish_will: with_will,
                })
            }
            Incoming::Connect(_) => Some(self.protocol_error("a second CONNECT")),
            Incoming::Unexpected(what) => {
                Some(self.protocol_error(&format!("{what} is not sent by clients")))
            }
        }
    }

    /// Asks the server to send the device everything it should have now (full desired state,
    /// pending commands). Runs in its own task, so what it sends follows the SUBACK or CONNACK
    /// already queued.
    fn resync(&self) {
        let uplinks = self.ctx.uplinks.clone();
        let from = uplink::From {
            tenant_id: self.identity.tenant_id,
            device_id: self.identity.device_id,
        };
        let at = self.ctx.state.clock.now();
        tokio::spawn(async move { uplinks.resync(from, at).await });
    }

    fn protocol_error(&self, why: &str) -> End {
        self.ctx.state.metrics.mqtt_refusal("protocol_error");
        End::server(Reason::ProtocolError, format!("protocol error: {why}"))
    }

    fn on_subscribe(&mut self, filters: Vec<(String, QoS)>) -> Vec<SubscribeAckReason> {
        let device = self.identity.device_id;
        let metrics = &self.ctx.state.metrics;
        let mut st = lock(&self.reg.state);
        filters
            .into_iter()
            .map(
                |(filter, qos)| match topic::check_subscription(device, &filter) {
                    Ok(()) => {
                        let granted = qos.less_value(QoS::AtLeastOnce);
                        st.subscriptions.insert(filter, granted);
                        if granted == QoS::AtMostOnce {
                            SubscribeAckReason::GrantedQos0
                        } else {
                            SubscribeAckReason::GrantedQos1
                        }
                    }
                    Err(TopicError::NotAuthorized) => {
                        metrics.mqtt_refusal("not_authorized");
                        SubscribeAckReason::NotAuthorized
                    }
                    Err(TopicError::Invalid) => {
                        metrics.mqtt_refusal("topic_invalid");
                        SubscribeAckReason::TopicFilterInvalid
                    }
                    Err(TopicError::SharedNotSupported) => {
                        metrics.mqtt_refusal("shared_subscription");
                        SubscribeAckReason::SharedSubscriptionNotSupported
                    }
                },
            )
            .collect()
    }

    async fn on_publish(&mut self, p: wire::Publish) -> Option<End> {
        let metrics = self.ctx.state.metrics.clone();
        if p.topic_alias || p.topic.is_empty() {
            metrics.mqtt_refusal("topic_invalid");
            return Some(End::server(
                Reason::TopicAliasInvalid,
                "topic aliases are not granted; send the topic name",
            ));
        }
        if p.retain && self.version == Version::V5 {
            metrics.mqtt_refusal("retain");
            return Some(End::server(
                Reason::RetainNotSupported,
                "retained messages are not supported",
            ));
        }
        if p.qos == QoS::ExactlyOnce
            && let Some(id) = p.packet_id
            && self.awaiting_release.contains(&id.get())
        {
            // A resend of a message already taken: answer again, do not process twice.
            self.conn.queue(Outgoing::PubRec {
                packet_id: id,
                reason: PublishAckReason::Success,
            });
            return None;
        }
        let outcome = match topic::classify_publish(self.identity.device_id, &p.topic) {
            Err(TopicError::Invalid | TopicError::SharedNotSupported) => Err((
                PublishAckReason::TopicNameInvalid,
                Reason::TopicNameInvalid,
                "topic_invalid",
                "not a valid topic name".to_owned(),
            )),
            Err(TopicError::NotAuthorized) => Err((
                PublishAckReason::NotAuthorized,
                Reason::NotAuthorized,
                "not_authorized",
                format!(
                    "a device may publish only to its own uplink topics under {}",
                    topic::device_prefix(self.identity.device_id)
                ),
            )),
            Ok(uplink) => {
                let from = uplink::From {
                    tenant_id: self.identity.tenant_id,
                    device_id: self.identity.device_id,
                };
                match self
                    .ctx
                    .uplinks
                    .handle(from, &uplink, &p.payload, self.ctx.state.clock.now())
                    .await
                {
                    Ok(()) => {
                        metrics
                            .mqtt_messages_received
                            .get_or_create(&crate::metrics::KindLabels {
                                kind: uplink.kind(),
                            })
                            .inc();
                        Ok(())
                    }
                    Err(Refusal::NotSupported(why)) => Err((
                        PublishAckReason::ImplementationSpecificError,
                        Reason::ImplementationSpecificError,
                        "not_supported",
                        why,
                    )),
                    Err(Refusal::PayloadInvalid(why)) => Err((
                        PublishAckReason::PayloadFormatInvalid,
                        Reason::PayloadFormatInvalid,
                        "payload_invalid",
                        why,
                    )),
                    Err(Refusal::Unavailable(why)) => Err((
                        PublishAckReason::UnspecifiedError,
                        Reason::UnspecifiedError,
                        "unavailable",
                        why,
                    )),
                }
            }
        };
        match (outcome, p.packet_id) {
            (Ok(()), None) => None,
            (Ok(()), Some(id)) => {
                if p.qos == QoS::ExactlyOnce {
                    self.awaiting_release.insert(id.get());
                    self.conn.queue(Outgoing::PubRec {
                        packet_id: id,
                        reason: PublishAckReason::Success,
                    });
                } else {
                    self.conn.queue(Outgoing::PubAck {
                        packet_id: id,
                        reason: PublishAckReason::Success,
                        why: None,
                    });
                }
                None
            }
            (Err((ack, disconnect, label, why)), packet_id) => {
                metrics.mqtt_refusal(label);
                tracing::debug!(device = %self.identity.device_id, topic = %p.topic, reason = %why, "PUBLISH refused");
                match (self.version, packet_id) {
                    // MQTT 5 QoS 1/2: refuse this message, keep the connection.
                    (Version::V5, Some(id)) => {
                        if p.qos == QoS::ExactlyOnce {
                            self.conn.queue(Outgoing::PubRec {
                                packet_id: id,
                                reason: ack,
                            });
                        } else {
                            self.conn.queue(Outgoing::PubAck {
                                packet_id: id,
                                reason: ack,
                                why: self.problem_info.then_some(why),
                            });
                        }
                        None
                    }
                    // QoS 0 has no acknowledgement and 3.1.1 cannot refuse one message: the
                    // refusal is the DISCONNECT (MQTT 5) or the close.
                    _ => Some(End {
                        reason: Some(disconnect),
                        why: format!("publish refused: {why}"),
                        publish_will: true,
                    }),
                }
            }
        }
    }

    async fn finish(mut self, end: End) {
        let state = self.ctx.state.clone();
        let device = self.identity.device_id;
        if end.publish_will
            && let Some(will) = self.will.take()
            && let Ok(uplink) = topic::classify_publish(device, &will.topic)
        {
            let from = uplink::From {
                tenant_id: self.identity.tenant_id,
                device_id: device,
            };
            match self
                .ctx
                .uplinks
                .handle(from, &uplink, &will.payload, state.clock.now())
                .await
            {
                Ok(()) => {
                    state
                        .metrics
                        .mqtt_messages_received
                        .get_or_create(&crate::metrics::KindLabels { kind: "will" })
                        .inc();
                }
                Err(e) => {
                    state.metrics.mqtt_refusal("will_refused");
                    tracing::info!(%device, error = %e, "will message refused");
                }
            }
        }
        let expiry = Duration::from_secs(u64::from(self.session_expiry_secs));
        self.ctx
            .gateway
            .unregister(device, self.reg.generation, expiry);
        // When the server stops, every session ends at once: the server closes all connection
        // records in one statement afterwards instead of thousands of sessions queueing for the
        // database here.
        let stopping = *self.ctx.shutdown.borrow();
        if !stopping {
            let now = state.clock.now();
            if let Err(e) = state
                .store
                .close_connection(self.identity.tenant_id, self.connection_id, now, &end.why)
                .await
            {
                tracing::warn!(%device, error = %e, "cannot record the end of an MQTT connection");
            }
            if let Err(e) = state
                .store
                .record_device_seen(self.identity.tenant_id, device, self.last_heard)
                .await
            {
                tracing::warn!(%device, error = %e, "cannot record last seen");
            }
            crate::events::emit(
                &state,
                crate::events::device_event(
                    &state,
                    self.identity.tenant_id,
                    device,
                    tender_core::event::EventKind::DeviceDisconnected,
                )
                .with("reason", end.why.clone()),
            )
            .await;
        }
        tracing::debug!(%device, reason = %end.why, "MQTT session ended");
        let reason = if self.version == Version::V5 {
            end.reason
        } else {
            None
        };
        self.conn.close(reason, &end.why).await;
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = Bucket::new(10, 3);
        assert!(b.take().is_none());
        assert!(b.take().is_none());
        assert!(b.take().is_none());
        let wait = b.take().expect("the burst is spent");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
    }
}
