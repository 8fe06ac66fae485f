//! One vocabulary for MQTT 3.1.1 and 5 on top of `rmqtt-codec`: incoming packets become
//! [`Incoming`], answers are built from [`Outgoing`] with MQTT 5 reason codes and translated down
//! to 3.1.1 where that version has no way to say them.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{
    ConnectAckReason as V5Connack, DisconnectReasonCode as Reason, PublishAck2Reason,
    PublishAckReason, SubscribeAckReason, UnsubscribeAckReason,
};
use rmqtt_codec::{MqttCodec, MqttPacket, v3, v5};
use tokio_util::codec::{Decoder, Encoder};

/// The protocol a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V31,
    V311,
    V5,
}

impl Version {
    pub fn label(self) -> &'static str {
        match self {
            Version::V31 => "mqtt/3.1",
            Version::V311 => "mqtt/3.1.1",
            Version::V5 => "mqtt/5",
        }
    }
}

/// A CONNECT, whichever version sent it.
#[derive(Debug, Clone)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    /// MQTT 5 session expiry; for 3.1.1, `u32::MAX` when clean session is off (kept until the
    /// server's maximum) and 0 when it is on.
    pub session_expiry_secs: u32,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    /// MQTT 5: the largest packet the client accepts.
    pub max_packet_size: Option<u32>,
    /// MQTT 5: an enhanced-authentication method we do not support.
    pub auth_method: bool,
    /// MQTT 5 Request Problem Information (default true): when false, reason strings go only
    /// in CONNACK and DISCONNECT.
    pub problem_info: bool,
}

#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

#[derive(Debug, Clone)]
pub struct Publish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: Option<NonZeroU16>,
    /// MQTT 5 topic alias, which this gateway does not grant.
    pub topic_alias: bool,
}

#[derive(Debug, Clone)]
pub enum Incoming {
    Connect(Box<Connect>),
    Publish(Box<Publish>),
    PubAck(NonZeroU16),
    PubRec(NonZeroU16),
    PubRel(NonZeroU16),
    PubComp(NonZeroU16),
    Subscribe {
        packet_id: NonZeroU16,
        filters: Vec<(String, QoS)>,
        /// MQTT 5 subscription identifier, which this gateway does not support.
        has_id: bool,
    },
    Unsubscribe {
        packet_id: NonZeroU16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect {
        /// MQTT 5 reason 0x04: publish the will anyway.
        with_will: bool,
        session_expiry_secs: Option<u32>,
    },
    /// Packets only a server sends, or AUTH.
    Unexpected(&'static str),
}

/// What the gateway sends; reason codes are MQTT 5's.
#[derive(Debug, Clone)]
pub enum Outgoing {
    ConnAck {
        reason: V5Connack,
        session_present: bool,
        /// MQTT 5 properties.
        props: Option<ConnAckProps>,
    },
    PubAck {
        packet_id: NonZeroU16,
        reason: PublishAckReason,
        why: Option<String>,
    },
    PubRec {
        packet_id: NonZeroU16,
        reason: PublishAckReason,
    },
    PubComp {
        packet_id: NonZeroU16,
        found: bool,
    },
    SubAck {
        packet_id: NonZeroU16,
        codes: Vec<SubscribeAckReason>,
    },
    UnsubAck {
        packet_id: NonZeroU16,
        codes: Vec<UnsubscribeAckReason>,
    },
    Publish(Box<Publish>),
    PingResp,
    Disconnect {
        reason: Reason,
        why: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct ConnAckProps {
    pub session_expiry_secs: Option<u32>,
    pub max_packet_size: u32,
    pub assigned_client_id: Option<String>,
    pub server_keepalive_secs: Option<u16>,
    pub reason: Option<String>,
}

/// A connection's codec: detects the version from the first CONNECT, then decodes that version.
pub struct Codec {
    inner: MqttCodec,
    version: Option<Version>,
    max_in: u32,
}

impl Codec {
    pub fn new(max_in: u32) -> Self {
        Codec {
            inner: MqttCodec::Version(rmqtt_codec::version::VersionCodec),
            version: None,
            max_in,
        }
    }

    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// The CONNACK refusing a CONNECT that could not be decoded, when the version is known
    /// far enough to say it: identifier rejected, unsupported protocol version or malformed.
    pub fn connack_for_decode_error(&self, e: &DecodeError) -> Option<Vec<u8>> {
        match (&self.inner, e) {
            (MqttCodec::Version(_), DecodeError::InvalidProtocol) => {
                Some(CONNACK_UNSUPPORTED_VERSION.to_vec())
            }
            (MqttCodec::V3(_), DecodeError::InvalidClientId) => Some(vec![0x20, 0x02, 0x00, 0x02]),
            (MqttCodec::V3(_), DecodeError::UnsupportedProtocolLevel) => {
                Some(CONNACK_UNSUPPORTED_VERSION.to_vec())
            }
            (MqttCodec::V5(_), DecodeError::MaxSizeExceeded { .. }) => {
                Some(vec![0x20, 0x03, 0x00, 0x95, 0x00])
            }
            (MqttCodec::V5(_), DecodeError::InvalidClientId) => {
                Some(vec![0x20, 0x03, 0x00, 0x85, 0x00])
            }
            (MqttCodec::V5(_), _) => Some(vec![0x20, 0x03, 0x00, 0x81, 0x00]),
            _ => None,
        }
    }

    /// Limits what we send to an MQTT 5 client that asked for a maximum packet size.
    pub fn set_max_out(&mut self, max: u32) {
        if let MqttCodec::V5(c) = &mut self.inner {
            c.set_max_outbound_size(max);
        }
    }

    /// Decodes the next packet from `buf`, `Ok(None)` when more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, DecodeError> {
        loop {
            match self.inner.decode(buf)? {
                None => return Ok(None),
                Some((MqttPacket::Version(v), _)) => {
                    self.inner = match v {
                        rmqtt_codec::version::ProtocolVersion::MQTT3 => {
                            MqttCodec::V3(v3::Codec::new(self.max_in))
                        }
                        rmqtt_codec::version::ProtocolVersion::MQTT5 => {
                            // Outbound: no larger than the client allows, set after CONNECT.
                            MqttCodec::V5(v5::Codec::new(self.max_in, 0))
                        }
                    };
                }
                Some((MqttPacket::V3(p), _)) => return Ok(Some(self.read_v3(p))),
                Some((MqttPacket::V5(p), _)) => return Ok(Some(self.read_v5(p))),
            }
        }
    }

    fn read_v3(&mut self, p: v3::Packet) -> Incoming {
        use v3::Packet as P;
        match p {
            P::Connect(c) => {
                let version = if c.protocol.level() == 3 {
                    Version::V31
                } else {
                    Version::V311
                };
                self.version = Some(version);
                Incoming::Connect(Box::new(Connect {
                    version,
                    client_id: c.client_id.to_string(),
                    clean_start: c.clean_session,
                    keep_alive: c.keep_alive,
                    session_expiry_secs: if c.clean_session { 0 } else { u32::MAX },
                    username: c.username.map(|u| u.to_string()),
                    password: c.password,
                    will: c.last_will.map(|w| Will {
                        topic: w.topic.to_string(),
                        payload: w.message,
                        qos: w.qos,
                        retain: w.retain,
                    }),
                    max_packet_size: None,
                    auth_method: false,
                    problem_info: true,
                }))
            }
            P::Publish(p) => Incoming::Publish(Box::new(Publish {
                topic: p.topic.to_string(),
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                dup: p.dup,
                packet_id: p.packet_id,
                topic_alias: false,
            })),
            P::PublishAck { packet_id } => Incoming::PubAck(packet_id),
            P::PublishReceived { packet_id } => Incoming::PubRec(packet_id),
            P::PublishRelease { packet_id } => Incoming::PubRel(packet_id),
            P::PublishComplete { packet_id } => Incoming::PubComp(packet_id),
            P::Subscribe {
                packet_id,
                topic_filters,
            } => Incoming::Subscribe {
                packet_id,
                filters: topic_filters
                    .into_iter()
                    .map(|(t, q)| (t.to_string(), q))
                    .collect(),
                has_id: false,
            },
            P::Unsubscribe {
                packet_id,
                topic_filters,
            } => Incoming::Unsubscribe {
                packet_id,
                filters: topic_filters.into_iter().map(|t| t.to_string()).collect(),
            },
            P::PingRequest => Incoming::PingReq,
            P::Disconnect => Incoming::Disconnect {
                with_will: false,
                session_expiry_secs: None,
            },
            P::ConnectAck(_) => Incoming::Unexpected("CONNACK"),
            P::SubscribeAck { .. } => Incoming::Unexpected("SUBACK"),
            P::UnsubscribeAck { .. } => Incoming::Unexpected("UNSUBACK"),
            P::PingResponse => Incoming::Unexpected("PINGRESP"),
        }
    }

    fn read_v5(&mut self, p: v5::Packet) -> Incoming {
        use v5::Packet as P;
        match p {
            P::Connect(c) => {
                self.version = Some(Version::V5);
                Incoming::Connect(Box::new(Connect {
                    version: Version::V5,
                    client_id: c.client_id.to_string(),
                    clean_start: c.clean_start,
                    keep_alive: c.keep_alive,
                    session_expiry_secs: c.session_expiry_interval_secs,
                    username: c.username.map(|u| u.to_string()),
                    password: c.password,
                    will: c.last_will.map(|w| Will {
                        topic: w.topic.to_string(),
                        payload: w.message,
                        qos: w.qos,
                        retain: w.retain,
                    }),
                    max_packet_size: c.max_packet_size.map(NonZeroU32::get),
                    auth_method: c.auth_method.is_some(),
                    problem_info: c.request_problem_info,
                }))
            }
            P::Publish(p) => Incoming::Publish(Box::new(Publish {
                topic: p.topic.to_string(),
                topic_alias: p
                    .properties
                    .as_ref()
                    .is_some_and(|pr| pr.topic_alias.is_some()),
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                dup: p.dup,
                packet_id: p.packet_id,
            })),
            P::PublishAck(a) => Incoming::PubAck(a.packet_id),
            P::PublishReceived(a) => Incoming::PubRec(a.packet_id),
            P::PublishRelease(a) => Incoming::PubRel(a.packet_id),
            P::PublishComplete(a) => Incoming::PubComp(a.packet_id),
            P::Subscribe(s) => Incoming::Subscribe {
                packet_id: s.packet_id,
                has_id: s.id.is_some(),
                filters: s
                    .topic_filters
                    .into_iter()
                    .map(|(t, o)| (t.to_string(), o.qos))
                    .collect(),
            },
            P::Unsubscribe(u) => Incoming::Unsubscribe {
                packet_id: u.packet_id,
                filters: u.topic_filters.into_iter().map(|t| t.to_string()).collect(),
            },
            P::PingRequest => Incoming::PingReq,
            P::Disconnect(d) => Incoming::Disconnect {
                with_will: d.reason_code == Reason::DisconnectWithWillMessage,
                session_expiry_secs: d.session_expiry_interval_secs,
            },
            P::ConnectAck(_) => Incoming::Unexpected("CONNACK"),
            P::SubscribeAck(_) => Incoming::Unexpected("SUBACK"),
            P::UnsubscribeAck(_) => Incoming::Unexpected("UNSUBACK"),
            P::PingResponse => Incoming::Unexpected("PINGRESP"),
            P::Auth(_) => Incoming::Unexpected("AUTH"),
        }
    }

    /// Encodes `out` for this connection's version into `dst`. Returns false when the packet
    /// has no form in this version (an MQTT 3.1.1 DISCONNECT from the server) or the version is
    /// not known yet; the caller then just closes.
    pub fn encode(&mut self, out: Outgoing, dst: &mut BytesMut) -> bool {
        let result = match (&mut self.inner, self.version) {
            (MqttCodec::V3(c), Some(_)) => match to_v3(out) {
                Some(p) => c.encode(p, dst).map_err(|e| e.to_string()),
                None => return false,
            },
            (MqttCodec::V5(c), Some(_)) => c.encode(to_v5(out), dst).map_err(|e| e.to_string()),
            _ => return false,
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode an MQTT packet");
                false
            }
        }
    }
}

/// CONNACK for a client whose version is unknown or unsupported (3.1.1 form, code 1).
pub const CONNACK_UNSUPPORTED_VERSION: [u8; 4] = [0x20, 0x02, 0x00, 0x01];

fn v3_connack_code(r: V5Connack) -> v3::ConnectAckReason {
    use v3::ConnectAckReason as C;
    match r {
        V5Connack::Success => C::ConnectionAccepted,
        V5Connack::UnsupportedProtocolVersion => C::UnacceptableProtocolVersion,
        V5Connack::ClientIdentifierNotValid => C::IdentifierRejected,
        V5Connack::BadUserNameOrPassword => C::BadUserNameOrPassword,
        V5Connack::ServerUnavailable | V5Connack::ServerBusy => C::ServiceUnavailable,
        _ => C::NotAuthorized,
    }
}

fn to_v3(out: Outgoing) -> Option<v3::Packet> {
    use v3::Packet as P;
    Some(match out {
        Outgoing::ConnAck {
            reason,
            session_present,
            ..
        } => P::ConnectAck(v3::ConnectAck {
            return_code: v3_connack_code(reason),
            session_present,
        }),
        // 3.1.1 has no refusal in PUBACK: the session refuses by closing instead.
        Outgoing::PubAck { packet_id, .. } => P::PublishAck { packet_id },
        Outgoing::PubRec { packet_id, .. } => P::PublishReceived { packet_id },
        Outgoing::PubComp { packet_id, .. } => P::PublishComplete { packet_id },
        Outgoing::SubAck { packet_id, codes } => P::SubscribeAck {
            packet_id,
            status: codes
                .into_iter()
                .map(|c| match c {
                    SubscribeAckReason::GrantedQos0 => {
                        v3::SubscribeReturnCode::Success(QoS::AtMostOnce)
                    }
                    SubscribeAckReason::GrantedQos1 => {
                        v3::SubscribeReturnCode::Success(QoS::AtLeastOnce)
                    }
                    SubscribeAckReason::GrantedQos2 => {
                        v3::SubscribeReturnCode::Success(QoS::ExactlyOnce)
                    }
                    _ => v3::SubscribeReturnCode::Failure,
                })
                .collect(),
        },
        Outgoing::UnsubAck { packet_id, .. } => P::UnsubscribeAck { packet_id },
        Outgoing::Publish(p) => P::Publish(Box::new(rmqtt_codec::types::Publish {
            dup: p.dup,
            retain: p.retain,
            qos: p.qos,
            topic: ByteString::from(p.topic),
            packet_id: p.packet_id,
            payload: p.payload,
            properties: None,
        })),
        Outgoing::PingResp => P::PingResponse,
        Outgoing::Disconnect { .. } => return None,
    })
}

fn to_v5(out: Outgoing) -> v5::Packet {
    use v5::Packet as P;
    let text = |s: Option<String>| s.map(ByteString::from);
    match out {
        Outgoing::ConnAck {
            reason,
            session_present,
            props,
        } => {
            let mut ack = v5::ConnectAck {
                session_present,
                reason_code: reason,
                max_qos: QoS::AtLeastOnce,
                retain_available: false,
                wildcard_subscription_available: true,
                subscription_identifiers_available: false,
                shared_subscription_available: false,
                topic_alias_max: 0,
                ..Default::default()
            };
            if let Some(p) = props {
                ack.session_expiry_interval_secs = p.session_expiry_secs;
                ack.max_packet_size = Some(p.max_packet_size);
                ack.assigned_client_id = text(p.assigned_client_id);
                ack.server_keepalive_sec = p.server_keepalive_secs;
                ack.reason_string = text(p.reason);
            }
            P::ConnectAck(Box::new(ack))
        }
        Outgoing::PubAck {
            packet_id,
            reason,
            why,
        } => P::PublishAck(v5::PublishAck {
            packet_id,
            reason_code: reason,
            properties: Vec::new(),
            reason_string: text(why),
        }),
        Outgoing::PubRec { packet_id, reason } => P::PublishReceived(v5::PublishAck {
            packet_id,
            reason_code: reason,
            properties: Vec::new(),
            reason_string: None,
        }),
        Outgoing::PubComp { packet_id, found } => P::PublishComplete(v5::PublishAck2 {
            packet_id,
            reason_code: if found {
                PublishAck2Reason::Success
            } else {
                PublishAck2Reason::PacketIdNotFound
            },
            properties: Vec::new(),
            reason_string: None,
        }),
        Outgoing::SubAck { packet_id, codes } => P::SubscribeAck(v5::SubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: codes,
        }),
        Outgoing::UnsubAck { packet_id, codes } => P::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: codes,
        }),
        Outgoing::Publish(p) => P::Publish(Box::new(rmqtt_codec::types::Publish {
            dup: p.dup,
            retain: p.retain,
            qos: p.qos,
            topic: ByteString::from(p.topic),
            packet_id: p.packet_id,
            payload: p.payload,
            properties: Some(Default::default()),
        })),
        Outgoing::PingResp => P::PingResponse,
        Outgoing::Disconnect { reason, why } => P::Disconnect(v5::Disconnect {
            reason_code: reason,
            reason_string: text(why),
            ..v5::Disconnect::new(reason)
        }),
    }
}

/// The MQTT 5 DISCONNECT reason for a decode failure.
pub fn reason_for(e: &DecodeError) -> Reason {
    match e {
        DecodeError::MaxSizeExceeded { .. } => Reason::PacketTooLarge,
        _ => Reason::MalformedPacket,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_v311(client_id: &str) -> BytesMut {
        let mut body = Vec::new();
        body.extend_from_slice(&[0, 4]);
        body.extend_from_slice(b"MQTT");
        body.push(4); // level
        body.push(0b0000_0010); // clean session
        body.extend_from_slice(&60u16.to_be_bytes());
        body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        body.extend_from_slice(client_id.as_bytes());
        let mut b = BytesMut::new();
        b.extend_from_slice(&[0x10, body.len() as u8]);
        b.extend_from_slice(&body);
        b
    }

    #[test]
    fn decodes_a_311_connect_then_answers_in_311() {
        let mut c = Codec::new(1024);
        let mut buf = connect_v311("dev");
        let Some(Incoming::Connect(conn)) = c.decode(&mut buf).unwrap() else {
            panic!("not a connect")
        };
        assert_eq!(conn.version, Version::V311);
        assert_eq!(conn.client_id, "dev");
        assert_eq!(conn.keep_alive, 60);
        assert!(buf.is_empty());
        let mut out = BytesMut::new();
        assert!(c.encode(
            Outgoing::ConnAck {
                reason: V5Connack::NotAuthorized,
                session_present: false,
                props: None
            },
            &mut out
        ));
        assert_eq!(&out[..], &[0x20, 0x02, 0x00, 0x05]);
        // 3.1.1 has no server DISCONNECT
        assert!(!c.encode(
            Outgoing::Disconnect {
                reason: Reason::NotAuthorized,
                why: None
            },
            &mut BytesMut::new()
        ));
    }

    #[test]
    fn oversize_packets_are_refused_before_buffering() {
        let mut c = Codec::new(1024);
        let mut buf = connect_v311("dev");
        c.decode(&mut buf).unwrap();
        // PUBLISH announcing 2 MiB
        let mut big = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x80, 0x01][..]);
        assert!(matches!(
            c.decode(&mut big),
            Err(DecodeError::MaxSizeExceeded { .. })
        ));
    }

    #[test]
    fn a_first_packet_that_is_not_connect_is_an_error() {
        let mut c = Codec::new(1024);
        let mut buf = BytesMut::from(&[0xc0u8, 0x00][..]); // PINGREQ
        assert!(c.decode(&mut buf).is_err());
    }

    /// Seeded mutations of a valid session (CONNECT then one packet of every kind a client
    /// sends), in both versions: decoding never panics, whatever the bytes.
    #[test]
    fn mutated_packets_never_panic() {
        let v311: &[u8] = &[
            0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 1, b'd', // CONNECT
            0x32, 0x07, 0, 3, b'a', b'/', b'b', 0, 1, // PUBLISH qos1
            0x82, 0x06, 0, 2, 0, 1, b'#', 1, // SUBSCRIBE
            0xa2, 0x05, 0, 3, 0, 1, b'#', // UNSUBSCRIBE
            0x40, 0x02, 0, 1, // PUBACK
            0x62, 0x02, 0, 1, // PUBREL
            0xc0, 0x00, // PINGREQ
            0xe0, 0x00, // DISCONNECT
        ];
        let v5: &[u8] = &[
            0x10, 0x0e, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 30, 0, 0, 1, b'd', // CONNECT
            0x32, 0x08, 0, 3, b'a', b'/', b'b', 0, 1, 0, // PUBLISH qos1
            0x82, 0x07, 0, 2, 0, 0, 1, b'#', 1, // SUBSCRIBE
            0xa2, 0x06, 0, 3, 0, 0, 1, b'#', // UNSUBSCRIBE
            0x40, 0x02, 0, 1, // PUBACK
            0xc0, 0x00, // PINGREQ
            0xe0, 0x01, 0x04, // DISCONNECT with will
        ];
        // Both sessions decode cleanly before mutation.
        for base in [v311, v5] {
            let mut c = Codec::new(1024);
            let mut buf = BytesMut::from(base);
            let mut n = 0;
            while let Some(_p) = c.decode(&mut buf).unwrap() {
                n += 1;
            }
            assert!(n >= 7 && buf.is_empty());
        }
        // xorshift64*: deterministic, no dependency.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for i in 0..20_000u32 {
            let mut d = if i % 2 == 0 {
                v311.to_vec()
            } else {
                v5.to_vec()
            };
            match next() % 3 {
                0 => {
                    for _ in 0..=(next() % 4) {
                        let at = (next() as usize) % d.len();
                        d[at] ^= 1 << (next() % 8);
                    }
                }
                1 => d.truncate((next() as usize) % d.len()),
                _ => {
                    let at = (next() as usize) % d.len();
                    d.insert(at, next() as u8);
                }
            }
            let mut c = Codec::new(1024);
            let mut buf = BytesMut::from(&d[..]);
            for _ in 0..32 {
                match c.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
