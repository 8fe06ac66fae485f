//! The MQTT 3.1.1/5 device gateway: TLS on its own port, devices authenticated by their client
//! certificate (or, for devices that cannot hold one, a Tender-issued password), one session per
//! device, the topic scheme and access rules of [`topic`].
//!
//! Parts:
//! - [`wire`]: one packet vocabulary over `rmqtt-codec`'s 3.1.1 and 5 codecs.
//! - [`topic`]: the topic scheme and the per-device ACL (pure).
//! - [`session`]: one connection from TLS accept to close.
//! - [`Gateway`]: the registry of live and parked (persistent) sessions, through which the rest
//!   of the server sends to devices and disconnects them.
//!
//! Invariants:
//! - A session exists only for an authenticated device whose certificate or credential was
//!   valid at CONNECT; its client id is the device id (or empty, and then it is assigned).
//! - At most one live session per device: a new CONNECT takes the old one over (MQTT 5 reason
//!   0x8E), so a device id has one writer.
//! - Every accepted PUBLISH (QoS 1/2 acknowledged, QoS 0 read) has been handed to the
//!   [`uplink::UplinkHandler`] and either stored or refused with a reason; nothing is dropped
//!   without a count.
//! - Revoking a device's certificates, decommissioning it or changing its credential
//!   disconnects its live session at once ([`Gateway::disconnect_device`]); every CONNECT
//!   re-checks the store, so a revoked device cannot come back.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rmqtt_codec::types::QoS;
use tender_core::DeviceId;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::config::MqttConfig;
use crate::state::AppState;

pub mod session;
pub mod topic;
pub mod uplink;
pub mod wire;

/// A message for a device.
#[derive(Debug, Clone)]
pub struct Downlink {
    /// Full topic, `tender/v1/{device}/...`.
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
}

/// What happened to a message handed to [`Gateway::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued on the device's live session; it goes out at once.
    Sent,
    /// The device is offline with a persistent session that subscribes to the topic: it gets
    /// the message when it reconnects (unless the session expires first).
    Queued,
    /// No live or parked session subscribes to this topic.
    NotSubscribed,
}

/// Which sessions of a device [`Gateway::disconnect_device`] cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticated {
    Any,
    ByCertificate,
    ByPassword,
}

/// Why the gateway ended a session from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Certificates revoked, device decommissioned or credential changed.
    Revoked,
    /// Another connection authenticated as the same device.
    TakenOver,
}

/// Subscriptions, queued and unacknowledged messages of one device's session. Lives as long as
/// the session: in a live connection, then parked while the device is away (persistent sessions
/// only).
#[derive(Debug, Default)]
pub struct SessionState {
    pub subscriptions: BTreeMap<String, QoS>,
    pub queue: VecDeque<Downlink>,
    /// QoS 1 messages sent and not yet acknowledged, by packet id.
    pub inflight: BTreeMap<u16, Downlink>,
    pub next_packet_id: u16,
}

impl SessionState {
    /// The QoS a message on `topic` is delivered with: the highest of the matching
    /// subscriptions, capped by the message's own; `None` when nothing matches.
    fn delivery_qos(&self, topic: &str, qos: QoS) -> Option<QoS> {
        self.subscriptions
            .iter()
            .filter(|(f, _)| topic::matches(f, topic))
            .map(|(_, q)| *q)
            .max()
            .map(|granted| granted.less_value(qos))
    }

    /// Next free packet id (1..=65535, skipping those in flight).
    fn take_packet_id(&mut self) -> Option<std::num::NonZeroU16> {
        for _ in 0..=u16::MAX {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if let Some(id) = std::num::NonZeroU16::new(self.next_packet_id)
                && !self.inflight.contains_key(&id.get())
            {
                return Some(id);
            }
        }
        None
    }
}

/// What the registry holds for a live session.
pub(crate) struct LiveSession {
    generation: u64,
    state: Arc<Mutex<SessionState>>,
    wake: Arc<Notify>,
    kick: Arc<Mutex<Option<Kick>>>,
    by_password: bool,
}

struct Parked {
    state: SessionState,
    expires: Instant,
    by_password: bool,
}

#[derive(Default)]
struct Registry {
    live: HashMap<DeviceId, LiveSession>,
    parked: HashMap<DeviceId, Parked>,
    generation: u64,
}

/// Locks a mutex whose holders never panic while holding it; if one ever did, the data is
/// still consistent (every holder makes whole updates), so carry on with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The gateway's shared registry: cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    registry: Arc<Mutex<Registry>>,
    config: Arc<MqttConfig>,
}

/// A session's handle on its registry entry.
pub(crate) struct Registration {
    pub generation: u64,
    pub state: Arc<Mutex<SessionState>>,
    pub wake: Arc<Notify>,
    pub kick: Arc<Mutex<Option<Kick>>>,
    /// Whether a previous session's state was resumed.
    pub session_present: bool,
}

impl Gateway {
    pub fn new(config: MqttConfig) -> Self {
        Gateway {
            registry: Arc::default(),
            config: Arc::new(config),
        }
    }

    pub fn config(&self) -> &MqttConfig {
        &self.config
    }

    /// Registers a new live session for `device`, taking over any live one, and resumes the
    /// previous session's state unless `clean_start`.
    pub(crate) fn register(
        &self,
        device: DeviceId,
        clean_start: bool,
        by_password: bool,
    ) -> Registration {
        let mut reg = lock(&self.registry);
        reg.generation += 1;
        let generation = reg.generation;
        let now = Instant::now();
        let previous = match reg.live.remove(&device) {
            Some(old) => {
                *lock(&old.kick) = Some(Kick::TakenOver);
                old.wake.notify_one();
                let taken = std::mem::take(&mut *lock(&old.state));
                Some(taken)
            }
            None => reg
                .parked
                .remove(&device)
                .filter(|p| p.expires > now)
                .map(|p| p.state),
        };
        let (state, session_present) = match previous {
            Some(s) if !clean_start => (s, true),
            _ => (SessionState::default(), false),
        };
        let live = LiveSession {
            generation,
            state: Arc::new(Mutex::new(state)),
            wake: Arc::new(Notify::new()),
            kick: Arc::new(Mutex::new(None)),
            by_password,
        };
        let registration = Registration {
            generation,
            state: live.state.clone(),
            wake: live.wake.clone(),
            kick: live.kick.clone(),
            session_present,
        };
        reg.live.insert(device, live);
        registration
    }

    /// Ends a live session's registration. Its state is parked for `expiry` if that is not
    /// zero and the session was not taken over or revoked (a newer generation owns the device).
    pub(crate) fn unregister(&self, device: DeviceId, generation: u64, expiry: Duration) {
        let mut reg = lock(&self.registry);
        let ours = reg
            .live
            .get(&device)
            .is_some_and(|l| l.generation == generation);
        if !ours {
            return;
        }
        let Some(live) = reg.live.remove(&device) else {
            return;
        };
        let revoked = *lock(&live.kick) == Some(Kick::Revoked);
        if expiry.is_zero() || revoked {
            return;
        }
        let state = std::mem::take(&mut *lock(&live.state));
        reg.parked.insert(
            device,
            Parked {
                state,
                expires: Instant::now() + expiry,
                by_password: live.by_password,
            },
        );
    }

    /// Disconnects `device`'s live session (MQTT 5 reason 0x87 Not authorized) if it logged in
    /// the way `which` says (revoking certificates must not cut a password session, rotating a
    /// password must not cut a certificate session), and forgets its parked session. Returns
    /// whether a live session was cut.
    pub fn disconnect_device(&self, device: DeviceId, which: Authenticated) -> bool {
        let applies = |by_password: bool| match which {
            Authenticated::Any => true,
            Authenticated::ByCertificate => !by_password,
            Authenticated::ByPassword => by_password,
        };
        let mut reg = lock(&self.registry);
        if reg
            .parked
            .get(&device)
            .is_some_and(|p| applies(p.by_password))
        {
            reg.parked.remove(&device);
        }
        let cut = match reg.live.get(&device) {
            Some(live) if applies(live.by_password) => {
                *lock(&live.kick) = Some(Kick::Revoked);
                live.wake.notify_one();
                true
            }
            _ => false,
        };
        if cut {
            reg.live.remove(&device);
        }
        cut
    }

    /// Whether `device` has a live session on this gateway.
    pub fn is_connected(&self, device: DeviceId) -> bool {
        lock(&self.registry).live.contains_key(&device)
    }

    /// The devices with a live session on this gateway.
    pub fn connected_devices(&self) -> Vec<DeviceId> {
        lock(&self.registry).live.keys().copied().collect()
    }

    /// Number of live sessions.
    pub fn live_sessions(&self) -> usize {
        lock(&self.registry).live.len()
    }

    /// Sends a message to a device on `topic::downlink(device, suffix)`. The message is queued
    /// on the session (live or parked) if one subscribes to the topic; a full queue drops its
    /// oldest message (counted by the caller's metrics as `queue_full`).
    pub fn send(
        &self,
        device: DeviceId,
        suffix: &str,
        payload: Bytes,
        qos: QoS,
        metrics: &crate::metrics::Metrics,
    ) -> Delivery {
        let topic = topic::downlink(device, suffix);
        let max = self.config.max_queued_messages;
        let mut reg = lock(&self.registry);
        let push = |state: &mut SessionState| -> bool {
            let Some(qos) = state.delivery_qos(&topic, qos) else {
                return false;
            };
            if state.queue.len() >= max {
                state.queue.pop_front();
                metrics.mqtt_drop("queue_full");
            }
            state.queue.push_back(Downlink {
                topic: topic.clone(),
                payload: payload.clone(),
                qos,
            });
            true
        };
        if let Some(live) = reg.live.get(&device) {
            let queued = push(&mut lock(&live.state));
            if queued {
                live.wake.notify_one();
                return Delivery::Sent;
            }
            return Delivery::NotSubscribed;
        }
        let now = Instant::now();
        if reg.parked.get(&device).is_some_and(|p| p.expires <= now) {
            reg.parked.remove(&device);
            metrics.mqtt_drop("session_expired");
        }
        match reg.parked.get_mut(&device) {
            Some(p) => {
                if push(&mut p.state) {
                    Delivery::Queued
                } else {
                    Delivery::NotSubscribed
                }
            }
            None => Delivery::NotSubscribed,
        }
    }

    /// Forgets parked sessions that have expired; returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut reg = lock(&self.registry);
        let before = reg.parked.len();
        reg.parked.retain(|_, p| p.expires > now);
        before - reg.parked.len()
    }
}

/// Accepts MQTT-over-TLS connections until `shutdown` turns true. Beyond `max_connections`
/// open at once, a new connection is closed right after accept (a clear refusal, not an
/// exhausted process); when the process runs out of file descriptors, accepting pauses briefly.
/// On shutdown every session says goodbye (MQTT 5 reason 0x8B) and closes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    gateway: Gateway,
    uplinks: Arc<dyn uplink::UplinkHandler>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let max_connections = gateway.config.max_connections;
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut connections = tokio::task::JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT listener cannot accept");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = shutdown.changed() => break,
                    }
                }
            },
            _ = sweep.tick() => {
                gateway.sweep();
                continue;
            }
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_connections, "MQTT connection refused: at the connection limit");
            state.metrics.mqtt_connection("refused_limit");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let ctx = session::Context {
            acceptor: acceptor.clone(),
            state: state.clone(),
            gateway: gateway.clone(),
            uplinks: uplinks.clone(),
            shutdown: shutdown.clone(),
        };
        let metrics = state.metrics.clone();
        connections.spawn(async move {
            let _permit = permit;
            metrics.mqtt_connections_open.inc();
            session::run(ctx, tcp, peer).await;
            metrics.mqtt_connections_open.dec();
        });
    }
    // Sessions see the same shutdown signal and close themselves; give them a moment.
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}
