use alloc::string::{String, ToString};
use alloc::vec::Vec;
use mqtt_protocol_core::mqtt::packet::{Packet, Property};

/// What a client acts on in a packet it received, whatever the version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    Connack {
        session_present: bool,
        /// The 3.1.1 return code or the MQTT 5 reason code.
        rc: u8,
    },
    Suback {
        pid: u16,
        codes: Vec<u8>,
    },
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        dup: bool,
        retain: bool,
        /// MQTT 5 Message Expiry Interval as delivered (the remaining time).
        expiry_s: Option<u32>,
    },
    /// MQTT 5: the server ends the connection with a reason code.
    Disconnect {
        reason: u8,
    },
}

impl Incoming {
    /// None for the packets a client does not act on itself (acks are
    /// handled inside mqtt-protocol-core's connection).
    pub fn from_core(p: &Packet) -> Option<Incoming> {
        Some(match p {
            Packet::V3_1_1Connack(c) => Incoming::Connack {
                session_present: c.session_present(),
                rc: c.return_code() as u8,
            },
            Packet::V5_0Connack(c) => Incoming::Connack {
                session_present: c.session_present(),
                rc: c.reason_code() as u8,
            },
            Packet::V3_1_1Suback(s) => Incoming::Suback {
                pid: s.packet_id(),
                codes: s.return_codes().iter().map(|c| *c as u8).collect(),
            },
            Packet::V5_0Suback(s) => Incoming::Suback {
                pid: s.packet_id(),
                codes: s.reason_codes().iter().map(|c| *c as u8).collect(),
            },
            Packet::V3_1_1Publish(p) => Incoming::Publish {
                topic: p.topic_name().to_string(),
                payload: p.payload().as_slice().to_vec(),
                qos: p.qos() as u8,
                dup: p.dup(),
                retain: p.retain(),
                expiry_s: None,
            },
            Packet::V5_0Publish(p) => Incoming::Publish {
                topic: p.topic_name().to_string(),
                payload: p.payload().as_slice().to_vec(),
                qos: p.qos() as u8,
                dup: p.dup(),
                retain: p.retain(),
                expiry_s: p.props().iter().find_map(|pr| match pr {
                    Property::MessageExpiryInterval(v) => Some(v.val()),
                    _ => None,
                }),
            },
            Packet::V5_0Disconnect(d) => Incoming::Disconnect {
                reason: d.reason_code().map(|r| r as u8).unwrap_or(0),
            },
            _ => return None,
        })
    }
}
