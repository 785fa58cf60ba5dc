//! The MQTT wire tap's decoder: frames the bytes a proxy forwards, in each
//! direction, into packets (mqtt-protocol-core's `PacketBuilder`) and decodes
//! them with its per-packet parsers into a [`Packet`] summary. Malformed bytes
//! are reported, never fatal: the proxy forwards them as they are.

use core::fmt;
use mqtt_protocol_core::mqtt::common::Cursor;
use mqtt_protocol_core::mqtt::connection::{
    PacketBuildResult, PacketBuilder, PacketData, RawPacket,
};
use mqtt_protocol_core::mqtt::packet::{v3_1_1, v5_0};
use std::format;
use std::string::{String, ToString};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::vec::Vec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Device to broker.
    Up,
    /// Broker to device.
    Down,
}

/// A payload as a transcript line shows it: whole up to 256 bytes, else its
/// first 200 and how much more (a 64 KiB command is one line, not 64 KiB).
pub fn shown(payload: &str) -> alloc::borrow::Cow<'_, str> {
    if payload.len() <= 256 {
        return alloc::borrow::Cow::Borrowed(payload);
    }
    let mut cut = 200;
    while !payload.is_char_boundary(cut) {
        cut -= 1;
    }
    alloc::borrow::Cow::Owned(alloc::format!(
        "{}...(+{} B)",
        &payload[..cut],
        payload.len() - cut
    ))
}

/// ` rc=0x87` after an ack whose MQTT 5 reason code is a failure.
fn failure(f: &mut fmt::Formatter<'_>, reason: Option<u8>) -> fmt::Result {
    match reason {
        Some(rc) if rc >= 0x80 => write!(f, " rc=0x{rc:02x}"),
        _ => Ok(()),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect {
        client_id: String,
        clean: bool,
        keepalive: u16,
        will: Option<(String, u8, bool)>,
        /// The Will's payload (lossy UTF-8). Not shown.
        will_payload: Option<String>,
        /// MQTT 5 Will Delay Interval. Not shown.
        will_delay: Option<u32>,
        level: u8,
        /// MQTT 5 Session Expiry Interval (None: absent, or 3.1.1). Not shown.
        session_expiry: Option<u32>,
        /// MQTT 5 Maximum Packet Size the client accepts. Not shown.
        max_packet_size: Option<u32>,
    },
    Connack {
        session_present: bool,
        rc: u8,
    },
    Subscribe {
        pid: u16,
        filters: Vec<(String, u8)>,
    },
    Suback {
        pid: u16,
        codes: Vec<u8>,
    },
    Publish {
        topic: String,
        qos: u8,
        dup: bool,
        retain: bool,
        pid: Option<u16>,
        payload: String,
        /// MQTT 5 Message Expiry Interval, as sent (the remaining time, from a broker).
        expiry: Option<u32>,
    },
    /// `reason`: MQTT 5's reason code, when the packet carries one (a
    /// success may leave it out). Shown only when it is a failure.
    Puback {
        pid: u16,
        reason: Option<u8>,
    },
    Pubrec {
        pid: u16,
        reason: Option<u8>,
    },
    Pubrel {
        pid: u16,
    },
    Pubcomp {
        pid: u16,
    },
    Pingreq,
    Pingresp,
    /// MQTT 5 carries a reason code (none: 3.1.1, or 0x00 left out).
    Disconnect {
        reason: Option<u8>,
    },
    Other {
        kind: u8,
    },
    Malformed(String),
}

impl Packet {
    /// The packet's type name, as the spec writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            Packet::Connect { .. } => "CONNECT",
            Packet::Connack { .. } => "CONNACK",
            Packet::Subscribe { .. } => "SUBSCRIBE",
            Packet::Suback { .. } => "SUBACK",
            Packet::Publish { .. } => "PUBLISH",
            Packet::Puback { .. } => "PUBACK",
            Packet::Pubrec { .. } => "PUBREC",
            Packet::Pubrel { .. } => "PUBREL",
            Packet::Pubcomp { .. } => "PUBCOMP",
            Packet::Pingreq => "PINGREQ",
            Packet::Pingresp => "PINGRESP",
            Packet::Disconnect { .. } => "DISCONNECT",
            Packet::Other { .. } => "packet",
            Packet::Malformed(_) => "malformed packet",
        }
    }
}

fn b(v: bool) -> u8 {
    v as u8
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Packet::Connect {
                client_id,
                clean,
                keepalive,
                will,
                level,
                ..
            } => {
                write!(
                    f,
                    "CONNECT client_id={client_id} clean={} keepalive={keepalive} level={level}",
                    b(*clean)
                )?;
                if let Some((t, q, r)) = will {
                    write!(f, " will={t} will_qos={q} will_retain={}", b(*r))?;
                }
                Ok(())
            }
            Packet::Connack {
                session_present,
                rc,
            } => write!(f, "CONNACK session_present={} rc={rc}", b(*session_present)),
            Packet::Subscribe { pid, filters } => {
                write!(f, "SUBSCRIBE pid={pid}")?;
                for (t, q) in filters {
                    write!(f, " {t}@{q}")?;
                }
                Ok(())
            }
            Packet::Suback { pid, codes } => write!(f, "SUBACK pid={pid} granted={codes:?}"),
            Packet::Publish {
                topic,
                qos,
                dup,
                retain,
                pid,
                payload,
                expiry,
            } => {
                write!(
                    f,
                    "PUBLISH topic={topic} qos={qos} dup={} retain={} pid={}",
                    b(*dup),
                    b(*retain),
                    pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
                )?;
                if let Some(e) = expiry {
                    write!(f, " expiry={e}")?;
                }
                write!(f, " payload={}", shown(payload))
            }
            Packet::Puback { pid, reason } => {
                write!(f, "PUBACK pid={pid}")?;
                failure(f, *reason)
            }
            Packet::Pubrec { pid, reason } => {
                write!(f, "PUBREC pid={pid}")?;
                failure(f, *reason)
            }
            Packet::Pubrel { pid } => write!(f, "PUBREL pid={pid}"),
            Packet::Pubcomp { pid } => write!(f, "PUBCOMP pid={pid}"),
            Packet::Pingreq => f.write_str("PINGREQ"),
            Packet::Pingresp => f.write_str("PINGRESP"),
            Packet::Disconnect { reason: None } => f.write_str("DISCONNECT"),
            Packet::Disconnect { reason: Some(r) } => write!(f, "DISCONNECT reason=0x{r:02x}"),
            Packet::Other { kind } => write!(f, "packet type {kind}"),
            Packet::Malformed(e) => write!(f, "MALFORMED {e}"),
        }
    }
}

/// One packet as it crossed the wire: its summary and its exact bytes, so a
/// proxy can forward, hold, drop or replace it packet by packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub packet: Packet,
    pub bytes: Vec<u8>,
}

/// Decodes one direction of one connection. Both directions of a connection
/// share the protocol level learnt from the CONNECT.
pub struct Decoder {
    dir: Dir,
    builder: PacketBuilder,
    level: Arc<AtomicU8>,
    /// Bytes of a packet that is not complete yet (it spans reads).
    partial: Vec<u8>,
}

impl Decoder {
    /// A pair for one connection: (device → broker, broker → device).
    pub fn pair() -> (Decoder, Decoder) {
        // Until a CONNECT says otherwise: 3.1.1.
        let level = Arc::new(AtomicU8::new(4));
        (
            Decoder {
                dir: Dir::Up,
                builder: PacketBuilder::new(),
                level: level.clone(),
                partial: Vec::new(),
            },
            Decoder {
                dir: Dir::Down,
                builder: PacketBuilder::new(),
                level,
                partial: Vec::new(),
            },
        )
    }

    pub fn dir(&self) -> Dir {
        self.dir
    }

    /// The packets completed by these bytes, in order. Every byte fed comes
    /// out in exactly one frame (a malformed one carries the rest of the
    /// read), so forwarding the frames forwards the stream unchanged.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut cursor = Cursor::new(bytes);
        // Start of the bytes of this read not yet in a frame.
        let mut start = 0usize;
        while (cursor.position() as usize) < bytes.len() {
            let before = cursor.position();
            match self.builder.feed(&mut cursor) {
                PacketBuildResult::Complete(raw) => {
                    let end = cursor.position() as usize;
                    let mut frame = core::mem::take(&mut self.partial);
                    frame.extend_from_slice(&bytes[start..end]);
                    start = end;
                    out.push(Frame {
                        packet: self.decode(&raw),
                        bytes: frame,
                    });
                }
                PacketBuildResult::Incomplete => {}
                PacketBuildResult::Error(e) => {
                    let mut frame = core::mem::take(&mut self.partial);
                    frame.extend_from_slice(&bytes[start..]);
                    start = bytes.len();
                    out.push(Frame {
                        packet: Packet::Malformed(format!("{e:?}")),
                        bytes: frame,
                    });
                    // Start over on the next bytes: the tap must survive garbage.
                    self.builder = PacketBuilder::new();
                    break;
                }
            }
            if cursor.position() == before {
                break;
            }
        }
        self.partial.extend_from_slice(&bytes[start..]);
        out
    }

    /// Only the packets (tests and tools that do not forward).
    pub fn packets(&mut self, bytes: &[u8]) -> Vec<Packet> {
        self.feed(bytes).into_iter().map(|f| f.packet).collect()
    }

    fn decode(&self, raw: &RawPacket) -> Packet {
        let v5 = self.level.load(Ordering::Relaxed) == 5;
        let data = raw.data_as_slice();
        let m = |e: mqtt_protocol_core::mqtt::result_code::MqttError| {
            Packet::Malformed(format!("{e:?}"))
        };
        let r: Result<Packet, Packet> = (|| {
            Ok(match raw.packet_type() {
                1 => {
                    // The protocol level is the 7th byte of the variable header.
                    let level = data.get(6).copied().unwrap_or(4);
                    self.level.store(level, Ordering::Relaxed);
                    if level == 5 {
                        let (c, _) = v5_0::Connect::parse(data).map_err(m)?;
                        Packet::Connect {
                            client_id: c.client_id().into(),
                            clean: c.clean_start(),
                            keepalive: c.keep_alive(),
                            will: c
                                .will_topic()
                                .map(|t| (t.to_string(), c.will_qos() as u8, c.will_retain())),
                            will_payload: c
                                .will_payload()
                                .map(|p| String::from_utf8_lossy(p).into_owned()),
                            will_delay: c.will_props.iter().find_map(|pr| match pr {
                                mqtt_protocol_core::mqtt::packet::Property::WillDelayInterval(v) => Some(v.val()),
                                _ => None,
                            }),
                            level,
                            session_expiry: c.props().iter().find_map(|pr| match pr {
                                mqtt_protocol_core::mqtt::packet::Property::SessionExpiryInterval(v) => Some(v.val()),
                                _ => None,
                            }),
                            max_packet_size: c.props().iter().find_map(|pr| match pr {
                                mqtt_protocol_core::mqtt::packet::Property::MaximumPacketSize(v) => Some(v.val()),
                                _ => None,
                            }),
                        }
                    } else {
                        let (c, _) = v3_1_1::Connect::parse(data).map_err(m)?;
                        Packet::Connect {
                            client_id: c.client_id().into(),
                            clean: c.clean_session(),
                            keepalive: c.keep_alive(),
                            will: c
                                .will_topic()
                                .map(|t| (t.to_string(), c.will_qos() as u8, c.will_retain())),
                            will_payload: c
                                .will_payload()
                                .map(|p| String::from_utf8_lossy(p).into_owned()),
                            will_delay: None,
                            level,
                            session_expiry: None,
                            max_packet_size: None,
                        }
                    }
                }
                2 if v5 => {
                    let (c, _) = v5_0::Connack::parse(data).map_err(m)?;
                    Packet::Connack {
                        session_present: c.session_present(),
                        rc: c.reason_code() as u8,
                    }
                }
                2 => {
                    let (c, _) = v3_1_1::Connack::parse(data).map_err(m)?;
                    Packet::Connack {
                        session_present: c.session_present(),
                        rc: c.return_code() as u8,
                    }
                }
                3 => {
                    let arc = match &raw.data {
                        PacketData::Publish(a) => a.clone(),
                        PacketData::Normal(v) => v.as_slice().into(),
                    };
                    if v5 {
                        let (p, _) = v5_0::Publish::parse(raw.flags(), arc).map_err(m)?;
                        Packet::Publish {
                            topic: p.topic_name().into(),
                            qos: p.qos() as u8,
                            dup: p.dup(),
                            retain: p.retain(),
                            pid: p.packet_id(),
                            payload: String::from_utf8_lossy(p.payload().as_slice()).into_owned(),
                            expiry: p.props().iter().find_map(|pr| match pr {
                                mqtt_protocol_core::mqtt::packet::Property::MessageExpiryInterval(v) => Some(v.val()),
                                _ => None,
                            }),
                        }
                    } else {
                        let (p, _) = v3_1_1::Publish::parse(raw.flags(), arc).map_err(m)?;
                        Packet::Publish {
                            topic: p.topic_name().into(),
                            qos: p.qos() as u8,
                            dup: p.dup(),
                            retain: p.retain(),
                            pid: p.packet_id(),
                            payload: String::from_utf8_lossy(p.payload().as_slice()).into_owned(),
                            expiry: None,
                        }
                    }
                }
                // PUBACK/PUBREC/PUBREL/PUBCOMP all start with the packet id.
                4..=7 => {
                    let pid = u16::from_be_bytes([
                        *data
                            .first()
                            .ok_or_else(|| Packet::Malformed("short ack".into()))?,
                        *data
                            .get(1)
                            .ok_or_else(|| Packet::Malformed("short ack".into()))?,
                    ]);
                    let reason = if v5 { data.get(2).copied() } else { None };
                    match raw.packet_type() {
                        4 => Packet::Puback { pid, reason },
                        5 => Packet::Pubrec { pid, reason },
                        6 => Packet::Pubrel { pid },
                        _ => Packet::Pubcomp { pid },
                    }
                }
                8 if v5 => {
                    let (s, _) = v5_0::Subscribe::parse(data).map_err(m)?;
                    Packet::Subscribe {
                        pid: s.packet_id(),
                        filters: s
                            .entries()
                            .iter()
                            .map(|e| (e.topic_filter().to_string(), e.sub_opts().qos() as u8))
                            .collect(),
                    }
                }
                8 => {
                    let (s, _) = v3_1_1::Subscribe::parse(data).map_err(m)?;
                    Packet::Subscribe {
                        pid: s.packet_id(),
                        filters: s
                            .entries()
                            .iter()
                            .map(|e| (e.topic_filter().to_string(), e.sub_opts().qos() as u8))
                            .collect(),
                    }
                }
                9 if v5 => {
                    let (s, _) = v5_0::Suback::parse(data).map_err(m)?;
                    Packet::Suback {
                        pid: s.packet_id(),
                        codes: s.reason_codes().iter().map(|c| *c as u8).collect(),
                    }
                }
                9 => {
                    let (s, _) = v3_1_1::Suback::parse(data).map_err(m)?;
                    Packet::Suback {
                        pid: s.packet_id(),
                        codes: s.return_codes().iter().map(|c| *c as u8).collect(),
                    }
                }
                12 => Packet::Pingreq,
                13 => Packet::Pingresp,
                14 => Packet::Disconnect {
                    reason: data.first().copied(),
                },
                kind => Packet::Other { kind },
            })
        })();
        r.unwrap_or_else(|e| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn decodes_a_session_in_pieces_and_survives_garbage() {
        let (mut up, mut down) = Decoder::pair();
        let connect = v3_1_1::Connect::builder()
            .client_id("esp32c3-240ac4123456")
            .unwrap()
            .clean_session(false)
            .keep_alive(30)
            .will_message(
                "devices/x/status",
                "offline",
                mqtt_protocol_core::mqtt::packet::Qos::AtLeastOnce,
                true,
            )
            .unwrap()
            .build()
            .unwrap()
            .to_continuous_buffer();
        // split at every byte: framing must hold across reads
        let mut got = Vec::new();
        for byte in &connect {
            got.extend(up.packets(std::slice::from_ref(byte)));
        }
        assert_eq!(
            got,
            vec![Packet::Connect {
                client_id: "esp32c3-240ac4123456".into(),
                clean: false,
                keepalive: 30,
                will: Some(("devices/x/status".into(), 1, true)),
                will_payload: Some("offline".into()),
                will_delay: None,
                level: 4,
                session_expiry: None,
                max_packet_size: None,
            }]
        );
        assert_eq!(
            down.packets(&[0x20, 2, 1, 0, 0x40, 2, 0, 7]),
            vec![
                Packet::Connack {
                    session_present: true,
                    rc: 0
                },
                Packet::Puback {
                    pid: 7,
                    reason: None
                }
            ]
        );
        let publish = [0x3a, 9, 0, 3, b'a', b'/', b'b', 0, 5, b'h', b'i'];
        assert_eq!(
            down.packets(&publish),
            vec![Packet::Publish {
                topic: "a/b".into(),
                qos: 1,
                dup: true,
                retain: false,
                pid: Some(5),
                payload: "hi".into(),
                expiry: None
            }]
        );
        // garbage: a reserved packet type with a bad length, then a good PINGRESP
        let out = down.packets(&[0xf0, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(matches!(out[..], [Packet::Malformed(_)]), "{out:?}");
        assert_eq!(down.packets(&[0xd0, 0]), vec![Packet::Pingresp]);
    }

    #[test]
    fn frames_carry_every_byte_exactly_once() {
        let (_, mut down) = Decoder::pair();
        let stream = [0x20, 2, 1, 0, 0x40, 2, 0, 7, 0xd0, 0];
        // Split inside the PUBACK: its bytes come out whole, in the second read.
        let first = down.feed(&stream[..6]);
        let second = down.feed(&stream[6..]);
        let bytes: Vec<Vec<u8>> = first
            .iter()
            .chain(&second)
            .map(|f| f.bytes.clone())
            .collect();
        assert_eq!(
            bytes,
            vec![vec![0x20, 2, 1, 0], vec![0x40, 2, 0, 7], vec![0xd0, 0]]
        );
        // Garbage after a partial packet: one malformed frame holds all of it.
        let mut d = Decoder::pair().1;
        assert!(d.feed(&[0x40, 2]).is_empty());
        let f = d.feed(&[0, 7, 0xf0, 0xff, 0xff, 0xff, 0xff, 1]);
        let all: Vec<u8> = f.iter().flat_map(|f| f.bytes.clone()).collect();
        assert_eq!(all, vec![0x40, 2, 0, 7, 0xf0, 0xff, 0xff, 0xff, 0xff, 1]);
    }
}
