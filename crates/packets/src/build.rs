//! Packets a client sends, for either protocol version.

use crate::MqttVersion;
use alloc::vec;
use alloc::vec::Vec;
use mqtt_protocol_core::mqtt::packet::{
    v3_1_1, v5_0, MaximumPacketSize, MessageExpiryInterval, Packet, Property, Qos, ServerReference,
    SessionExpiryInterval, SubEntry, SubOpts,
};
use mqtt_protocol_core::mqtt::result_code::MqttError;

pub fn qos(n: u8) -> Qos {
    match n {
        0 => Qos::AtMostOnce,
        1 => Qos::AtLeastOnce,
        _ => Qos::ExactlyOnce,
    }
}

/// A Last Will: topic, payload, QoS, retain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
}

/// The fields of a CONNECT.
#[derive(Clone, Debug)]
pub struct Connect<'a> {
    pub client_id: &'a str,
    /// clean_session (3.1.1) or clean_start (5).
    pub clean: bool,
    pub keepalive_s: u16,
    pub will: Option<Will<'a>>,
    /// MQTT 5 Session Expiry Interval; 0 or None sends none (ignored on 3.1.1).
    pub session_expiry_s: Option<u32>,
    /// MQTT 5 Maximum Packet Size the client accepts (ignored on 3.1.1, which
    /// has no way to announce it: the device still enforces it there).
    pub max_packet_size: Option<u32>,
    /// User Name and Password (MQTT-3.1.3-4/5 on 3.1.1; 3.1.3.5/6 on 5).
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

pub fn connect(v: MqttVersion, c: &Connect<'_>) -> Result<Packet, MqttError> {
    Ok(match v {
        MqttVersion::V3_1_1 => {
            let mut b = v3_1_1::Connect::builder()
                .client_id(c.client_id)?
                .clean_session(c.clean)
                .keep_alive(c.keepalive_s);
            if let Some(w) = &c.will {
                b = b.will_message(w.topic, w.payload.to_vec(), qos(w.qos), w.retain)?;
            }
            if let Some(u) = c.username {
                b = b.user_name(u)?;
            }
            if let Some(p) = c.password {
                b = b.password(p.to_vec())?;
            }
            b.build()?.into()
        }
        MqttVersion::V5 => {
            let mut b = v5_0::Connect::builder()
                .client_id(c.client_id)?
                .clean_start(c.clean)
                .keep_alive(c.keepalive_s);
            if let Some(w) = &c.will {
                b = b.will_message(w.topic, w.payload.to_vec(), qos(w.qos), w.retain)?;
            }
            if let Some(u) = c.username {
                b = b.user_name(u)?;
            }
            if let Some(p) = c.password {
                b = b.password(p.to_vec())?;
            }
            let mut props = Vec::new();
            if let Some(s) = c.session_expiry_s.filter(|s| *s > 0) {
                props.push(Property::SessionExpiryInterval(SessionExpiryInterval::new(
                    s,
                )?));
            }
            if let Some(m) = c.max_packet_size.filter(|m| *m > 0) {
                props.push(Property::MaximumPacketSize(MaximumPacketSize::new(m)?));
            }
            if !props.is_empty() {
                b = b.props(props);
            }
            b.build()?.into()
        }
    })
}

/// One-filter SUBSCRIBE.
pub fn subscribe(
    v: MqttVersion,
    pid: u16,
    filter: &str,
    qos_level: u8,
) -> Result<Packet, MqttError> {
    let entry = SubEntry::new(filter, SubOpts::new().set_qos(qos(qos_level)))?;
    Ok(match v {
        MqttVersion::V3_1_1 => v3_1_1::Subscribe::builder()
            .entries(vec![entry])
            .packet_id(pid)
            .build()?
            .into(),
        MqttVersion::V5 => v5_0::Subscribe::builder()
            .entries(vec![entry])
            .packet_id(pid)
            .build()?
            .into(),
    })
}

/// The fields of a PUBLISH.
#[derive(Clone, Debug)]
pub struct Publish<'a> {
    pub topic: &'a str,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    /// Required for QoS 1 and 2.
    pub pid: Option<u16>,
    /// MQTT 5 Message Expiry Interval (ignored on 3.1.1).
    pub expiry_s: Option<u32>,
}

pub fn publish(v: MqttVersion, p: Publish<'_>) -> Result<Packet, MqttError> {
    Ok(match v {
        MqttVersion::V3_1_1 => {
            let mut b = v3_1_1::Publish::builder()
                .topic_name(p.topic)?
                .qos(qos(p.qos))
                .retain(p.retain)
                .dup(p.dup)
                .payload(p.payload);
            if let Some(pid) = p.pid {
                b = b.packet_id(pid);
            }
            b.build()?.into()
        }
        MqttVersion::V5 => {
            let mut b = v5_0::Publish::builder()
                .topic_name(p.topic)?
                .qos(qos(p.qos))
                .retain(p.retain)
                .dup(p.dup)
                .payload(p.payload);
            if let Some(pid) = p.pid {
                b = b.packet_id(pid);
            }
            if let Some(e) = p.expiry_s {
                b = b.props(vec![Property::MessageExpiryInterval(
                    MessageExpiryInterval::new(e)?,
                )]);
            }
            b.build()?.into()
        }
    })
}

/// A normal DISCONNECT.
pub fn disconnect(v: MqttVersion) -> Packet {
    match v {
        MqttVersion::V3_1_1 => v3_1_1::Disconnect::new().into(),
        MqttVersion::V5 => v5_0::Disconnect::builder()
            .build()
            .map(Into::into)
            // A DISCONNECT without properties always builds; the fallback is
            // the same two bytes (0xE0 0x00), which MQTT 5 also accepts.
            .unwrap_or_else(|_| v3_1_1::Disconnect::new().into()),
    }
}

/// An MQTT 5 DISCONNECT a server sends: its reason code (0x89 server busy,
/// 0x8B server shutting down, 0x9C use another server, ...) and, for 0x9C
/// and 0x9D, the Server Reference. None for a reason code MQTT 5 does not
/// define for DISCONNECT.
pub fn server_disconnect(reason: u8, server_reference: Option<&str>) -> Result<Packet, MqttError> {
    use mqtt_protocol_core::mqtt::result_code::DisconnectReasonCode as R;
    let rc = match reason {
        0x89 => R::ServerBusy,
        0x8b => R::ServerShuttingDown,
        0x98 => R::AdministrativeAction,
        0x9c => R::UseAnotherServer,
        0x9d => R::ServerMoved,
        _ => R::UnspecifiedError,
    };
    let mut b = v5_0::Disconnect::builder().reason_code(rc);
    if let Some(r) = server_reference {
        b = b.props(vec![Property::ServerReference(ServerReference::new(r)?)]);
    }
    Ok(b.build()?.into())
}
