//! The guard: frames the broker's bytes into whole packets by their fixed
//! header and refuses, before mqtt-protocol-core ever sees them, the packets
//! that a server must never send and that the core does not survive.
//!
//! Why by hand and not in the core: mqtt-protocol-core 0.7.9 buffers any
//! announced length (268 MB announced is 268 MB of RAM on a 400 KB chip) and
//! panics on some invalid input (a QoS 1 PUBLISH with packet id 0 unwraps a
//! PUBACK builder; a second CONNACK re-adds stored publishes and unwraps a
//! packet-id conflict). Framing is ten lines of the spec's fixed header
//! (MQTT 3.1.1 §2.2, MQTT 5 §2.1), so a small check in front of the core costs
//! less than a fork of it. Everything the guard passes is one whole packet of
//! at most `max` bytes with valid fixed-header flags and a non-zero packet id
//! wherever one is required.
//!
//! A PUBLISH over `max` on MQTT 3.1.1 is not a reason to drop the
//! connection: 3.1.1 has no way to tell the broker the limit, so the broker
//! would redeliver the same message on every reconnect (a poison message
//! that keeps the device offline). The guard discards it as it streams in,
//! keeping only its topic and packet id (never more than `max` bytes), and
//! has it acknowledged at its QoS, so the broker is done with it; the device
//! counts and reports it. On MQTT 5 the limit was announced in CONNECT, a
//! server must not send such a packet [MQTT-3.1.2-24], and the client treats
//! one as a protocol error (DISCONNECT 0x95, Packet too large).

use crate::config::MqttVersion;
use alloc::vec::Vec;

/// Why the guard refused the broker's input; the connection is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The fixed header announces more than the device accepts.
    TooLarge { announced: usize, max: usize },
    /// Not a well-formed MQTT packet (bad remaining length, bad flags, too short).
    Malformed(&'static str),
    /// Well-formed, but a server must not send it here.
    Protocol(&'static str),
}

impl Violation {
    /// The disconnect reason the console prints.
    pub fn reason(&self) -> alloc::string::String {
        match self {
            Violation::TooLarge { announced, max } => {
                alloc::format!("packet-too-large: announced {announced} B > max {max} B")
            }
            Violation::Malformed(why) => alloc::format!("malformed-packet: {why}"),
            Violation::Protocol(why) => alloc::format!("protocol-violation: {why}"),
        }
    }
}

impl core::fmt::Display for Violation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.reason())
    }
}

/// What the guard makes of the broker's bytes, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A whole packet for the engine.
    Packet(Vec<u8>),
    /// An oversized PUBLISH (3.1.1) read to its end and thrown away;
    /// `reply` acknowledges it at its QoS (PUBACK, PUBREC), to send as is.
    Discarded {
        len: usize,
        qos: u8,
        topic: alloc::string::String,
        reply: Option<Vec<u8>>,
    },
    /// Bytes to send as they are: the PUBCOMP for a discarded QoS 2
    /// PUBLISH's PUBREL (the engine never saw that PUBLISH).
    Reply(Vec<u8>),
}

/// An oversized PUBLISH being read to its end.
#[derive(Debug)]
struct Skip {
    total: usize,
    /// Body bytes still to come.
    left: usize,
    qos: u8,
    /// The start of the body: topic length, topic, packet id.
    head: Vec<u8>,
}

/// QoS 2 packet ids of discarded PUBLISHes awaiting their PUBREL.
const MAX_DISCARDED_QOS2: usize = 16;
/// Past this many times `max` a PUBLISH is not a command that is too big but
/// a broken broker: refused, not read to its end (a 268 MB announcement
/// would keep the radio busy for minutes).
const DISCARD_FACTOR: usize = 64;

/// Frames one connection's bytes; make a new one (or `reset`) per connection.
#[derive(Debug)]
pub struct Guard {
    version: MqttVersion,
    max: usize,
    buf: Vec<u8>,
    connack_seen: bool,
    skip: Option<Skip>,
    discarded_qos2: Vec<u16>,
}

/// The remaining length, if the header is complete: (value, header bytes).
fn remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, Violation> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        value |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, 2 + i)));
        }
    }
    Err(Violation::Malformed("remaining length longer than 4 bytes"))
}

impl Guard {
    pub fn new(version: MqttVersion, max_packet_size: usize) -> Self {
        Guard {
            version,
            max: max_packet_size.max(16),
            buf: Vec::new(),
            connack_seen: false,
            skip: None,
            discarded_qos2: Vec::new(),
        }
    }

    /// Bytes held for a packet not yet complete (never more than `max`).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes from the socket; returns what they complete, in order. On
    /// a violation the rest is discarded: the caller closes the link. Items
    /// before the violation are returned with it.
    pub fn feed(&mut self, mut bytes: &[u8]) -> (Vec<Item>, Option<Violation>) {
        let mut items = Vec::new();
        loop {
            if self.skip.is_some() {
                match self.skipping(&mut bytes) {
                    Err(v) => return self.fail(items, v),
                    Ok(Some(item)) => {
                        items.push(item);
                        continue;
                    }
                    Ok(None) => return (items, None),
                }
            }
            // Take just enough to know the packet's length, then just the packet.
            let need = match remaining_length(&self.buf) {
                Err(v) => return self.fail(items, v),
                Ok(None) => self.buf.len() + 1,
                Ok(Some((rl, header))) => {
                    let total = header + rl;
                    if total > self.max {
                        let publish = self.buf[0] >> 4 == 3;
                        let discardable = total <= self.max.saturating_mul(DISCARD_FACTOR);
                        if publish
                            && discardable
                            && self.version == MqttVersion::V3_1_1
                            && self.connack_seen
                        {
                            let qos = (self.buf[0] >> 1) & 0b11;
                            if qos == 3 {
                                return self
                                    .fail(items, Violation::Malformed("PUBLISH with QoS 3"));
                            }
                            self.buf = Vec::new();
                            self.skip = Some(Skip {
                                total,
                                left: rl,
                                qos,
                                head: Vec::new(),
                            });
                            continue;
                        }
                        return self.fail(
                            items,
                            Violation::TooLarge {
                                announced: total,
                                max: self.max,
                            },
                        );
                    }
                    if self.buf.len() == total {
                        let packet = core::mem::take(&mut self.buf);
                        if let Err(v) = self.check(&packet, header) {
                            return self.fail(items, v);
                        }
                        // The PUBREL of a PUBLISH the engine never saw.
                        if packet[0] == 0x62 && packet.len() >= 4 {
                            let pid = u16::from_be_bytes([packet[2], packet[3]]);
                            if let Some(i) = self.discarded_qos2.iter().position(|p| *p == pid) {
                                self.discarded_qos2.swap_remove(i);
                                items.push(Item::Reply(alloc::vec![0x70, 2, packet[2], packet[3]]));
                                continue;
                            }
                        }
                        items.push(Item::Packet(packet));
                        continue;
                    }
                    total
                }
            };
            if bytes.is_empty() {
                return (items, None);
            }
            let take = (need - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
    }

    /// Reads an oversized PUBLISH: its topic and packet id kept, the rest
    /// dropped as it comes; the discarded item when it has all come.
    fn skipping(&mut self, bytes: &mut &[u8]) -> Result<Option<Item>, Violation> {
        let max = self.max;
        let Some(skip) = self.skip.as_mut() else {
            return Ok(None);
        };
        loop {
            let head_need = if skip.head.len() < 2 {
                2
            } else {
                let topic_len = u16::from_be_bytes([skip.head[0], skip.head[1]]) as usize;
                2 + topic_len + if skip.qos > 0 { 2 } else { 0 }
            };
            if head_need > max || head_need > skip.left + skip.head.len() {
                return Err(Violation::TooLarge {
                    announced: skip.total,
                    max,
                });
            }
            if skip.head.len() < head_need {
                if bytes.is_empty() {
                    return Ok(None);
                }
                let take = (head_need - skip.head.len()).min(bytes.len());
                skip.head.extend_from_slice(&bytes[..take]);
                skip.left -= take;
                *bytes = &bytes[take..];
                continue;
            }
            let take = skip.left.min(bytes.len());
            skip.left -= take;
            *bytes = &bytes[take..];
            if skip.left > 0 {
                return Ok(None);
            }
            break;
        }
        let Some(skip) = self.skip.take() else {
            return Ok(None);
        };
        let topic_len = u16::from_be_bytes([skip.head[0], skip.head[1]]) as usize;
        let topic =
            alloc::string::String::from_utf8_lossy(&skip.head[2..2 + topic_len]).into_owned();
        let reply = if skip.qos > 0 {
            let (hi, lo) = (skip.head[2 + topic_len], skip.head[3 + topic_len]);
            if hi == 0 && lo == 0 {
                return Err(Violation::Protocol("packet id 0 where one is required"));
            }
            if skip.qos == 2 {
                if self.discarded_qos2.len() >= MAX_DISCARDED_QOS2 {
                    return Err(Violation::Protocol(
                        "too many discarded QoS 2 messages awaiting PUBREL",
                    ));
                }
                self.discarded_qos2.push(u16::from_be_bytes([hi, lo]));
            }
            Some(alloc::vec![
                if skip.qos == 1 { 0x40 } else { 0x50 },
                2,
                hi,
                lo
            ])
        } else {
            None
        };
        Ok(Some(Item::Discarded {
            len: skip.total,
            qos: skip.qos,
            topic,
            reply,
        }))
    }

    fn fail(&mut self, items: Vec<Item>, v: Violation) -> (Vec<Item>, Option<Violation>) {
        self.buf = Vec::new();
        self.skip = None;
        (items, Some(v))
    }

    /// The fixed-header rules for what a server may send a client.
    fn check(&mut self, p: &[u8], header: usize) -> Result<(), Violation> {
        let kind = p[0] >> 4;
        let flags = p[0] & 0x0f;
        let body = &p[header..];
        let v5 = self.version == MqttVersion::V5;
        let pid = |at: usize| -> Result<u16, Violation> {
            match body.get(at..at + 2) {
                Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
                None => Err(Violation::Malformed("packet too short for its packet id")),
            }
        };
        let nonzero = |id: u16| {
            if id == 0 {
                Err(Violation::Protocol("packet id 0 where one is required"))
            } else {
                Ok(())
            }
        };
        if kind == 0 {
            return Err(Violation::Malformed("reserved packet type 0"));
        }
        if matches!(kind, 1 | 8 | 10 | 12) {
            return Err(Violation::Protocol("a packet only clients send"));
        }
        if kind != 3 && flags != if kind == 6 { 0b0010 } else { 0 } {
            return Err(Violation::Malformed("invalid fixed-header flags"));
        }
        if kind != 2 && !self.connack_seen {
            return Err(Violation::Protocol("a packet before CONNACK"));
        }
        match kind {
            2 => {
                if self.connack_seen {
                    return Err(Violation::Protocol("a second CONNACK"));
                }
                if body.len() < 2 {
                    return Err(Violation::Malformed("CONNACK too short"));
                }
                self.connack_seen = true;
            }
            3 => {
                let qos = (flags >> 1) & 0b11;
                if qos == 3 {
                    return Err(Violation::Malformed("PUBLISH with QoS 3"));
                }
                if qos == 0 && flags & 0b1000 != 0 {
                    return Err(Violation::Malformed("QoS 0 PUBLISH with DUP set"));
                }
                let topic_len = pid(0)? as usize;
                let id_len = if qos > 0 { 2 } else { 0 };
                if body.len() < 2 + topic_len + id_len {
                    return Err(Violation::Malformed("PUBLISH shorter than its topic"));
                }
                if qos > 0 {
                    nonzero(pid(2 + topic_len)?)?;
                }
            }
            4..=7 | 11 => nonzero(pid(0)?)?,
            9 => {
                nonzero(pid(0)?)?;
                if body.len() < 3 {
                    return Err(Violation::Malformed("SUBACK without a return code"));
                }
            }
            13 => {
                if !body.is_empty() {
                    return Err(Violation::Malformed("PINGRESP with a body"));
                }
            }
            14 if v5 => {}
            14 => return Err(Violation::Protocol("DISCONNECT from a 3.1.1 server")),
            _ => return Err(Violation::Protocol("AUTH without an authentication method")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const CONNACK: [u8; 4] = [0x20, 2, 0, 0];

    fn guard() -> Guard {
        let mut g = Guard::new(MqttVersion::V3_1_1, 64);
        assert_eq!(
            g.feed(&CONNACK),
            (vec![Item::Packet(CONNACK.to_vec())], None)
        );
        g
    }

    fn packets(items: Vec<Item>) -> Vec<Vec<u8>> {
        items
            .into_iter()
            .filter_map(|i| match i {
                Item::Packet(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// A 3.1.1 PUBLISH of `n` payload bytes on topic "t".
    fn big_publish(qos: u8, pid: u16, n: usize) -> Vec<u8> {
        let rl = 2 + 1 + if qos > 0 { 2 } else { 0 } + n;
        let mut v = vec![0x30 | (qos << 1)];
        let mut x = rl;
        loop {
            let mut b = (x % 128) as u8;
            x /= 128;
            if x > 0 {
                b |= 0x80;
            }
            v.push(b);
            if x == 0 {
                break;
            }
        }
        v.extend_from_slice(&[0, 1, b't']);
        if qos > 0 {
            v.extend_from_slice(&pid.to_be_bytes());
        }
        v.extend(core::iter::repeat_n(b'x', n));
        v
    }

    #[test]
    fn an_oversized_3_1_1_publish_is_discarded_in_constant_memory_and_acknowledged() {
        for qos in [0u8, 1, 2] {
            let mut g = guard();
            let mut stream = big_publish(qos, 9, 3_000);
            stream.extend_from_slice(&[0xd0, 0]);
            let mut items = Vec::new();
            for chunk in stream.chunks(7) {
                let (i, e) = g.feed(chunk);
                assert_eq!(e, None);
                assert!(g.buffered() <= 64);
                items.extend(i);
            }
            let reply = match qos {
                0 => None,
                1 => Some(vec![0x40, 2, 0, 9]),
                _ => Some(vec![0x50, 2, 0, 9]),
            };
            assert_eq!(
                items,
                vec![
                    Item::Discarded {
                        len: stream.len() - 2,
                        qos,
                        topic: "t".into(),
                        reply
                    },
                    Item::Packet(vec![0xd0, 0])
                ],
                "QoS {qos}"
            );
            if qos == 2 {
                // Its PUBREL is answered by the guard: the engine never saw it.
                assert_eq!(
                    g.feed(&[0x62, 2, 0, 9]).0,
                    vec![Item::Reply(vec![0x70, 2, 0, 9])]
                );
                assert_eq!(
                    g.feed(&[0x62, 2, 0, 9]).0,
                    vec![Item::Packet(vec![0x62, 2, 0, 9])]
                );
            }
        }
        // Far past the limit: a broken broker, refused rather than read.
        assert!(matches!(
            guard().feed(&big_publish(1, 9, 5_000)).1,
            Some(Violation::TooLarge { .. })
        ));
        // MQTT 5 announced the limit: a larger packet is the broker's protocol error.
        let mut g = Guard::new(MqttVersion::V5, 64);
        g.feed(&[0x20, 3, 0, 0, 0]);
        assert!(matches!(
            g.feed(&big_publish(1, 9, 100)).1,
            Some(Violation::TooLarge { .. })
        ));
    }

    #[test]
    fn frames_packets_split_anywhere() {
        let stream = [0x20, 2, 0, 0, 0xd0, 0, 0x40, 2, 0, 7];
        for split in 0..stream.len() {
            let mut g = Guard::new(MqttVersion::V3_1_1, 64);
            let (mut a, e1) = g.feed(&stream[..split]);
            let (b, e2) = g.feed(&stream[split..]);
            a.extend(b);
            assert_eq!((e1, e2), (None, None));
            assert_eq!(
                packets(a),
                vec![vec![0x20, 2, 0, 0], vec![0xd0, 0], vec![0x40, 2, 0, 7]]
            );
        }
    }

    #[test]
    fn a_huge_announcement_is_refused_from_its_fixed_header() {
        let mut g = guard();
        // PUBLISH announcing 268,435,455 bytes; nothing of it is buffered.
        let (p, e) = g.feed(&[0x30, 0xff, 0xff, 0xff, 0x7f, b'x']);
        assert!(p.is_empty());
        assert_eq!(
            e,
            Some(Violation::TooLarge {
                announced: 268_435_460,
                max: 64
            })
        );
        assert_eq!(g.buffered(), 0);
        assert_eq!(
            Guard::new(MqttVersion::V5, 64)
                .feed(&[0x30, 0xff, 0xff, 0xff, 0xff])
                .1,
            Some(Violation::Malformed("remaining length longer than 4 bytes"))
        );
    }

    #[test]
    fn packet_id_zero_and_client_packets_are_refused() {
        let publish_qos1_pid0 = [0x32, 5, 0, 1, b't', 0, 0];
        assert_eq!(
            guard().feed(&publish_qos1_pid0).1,
            Some(Violation::Protocol("packet id 0 where one is required"))
        );
        assert!(guard().feed(&[0x40, 2, 0, 0]).1.is_some(), "PUBACK pid 0");
        assert!(guard().feed(&[0x62, 2, 0, 0]).1.is_some(), "PUBREL pid 0");
        assert!(
            guard().feed(&[0x60, 2, 0, 1]).1.is_some(),
            "PUBREL bad flags"
        );
        assert!(
            guard().feed(&[0x36, 5, 0, 1, b't', 0, 1]).1.is_some(),
            "QoS 3"
        );
        assert!(
            guard().feed(&[0xc0, 0]).1.is_some(),
            "PINGREQ from a server"
        );
        assert!(guard().feed(&[0xe0, 0]).1.is_some(), "3.1.1 DISCONNECT");
        assert!(guard().feed(&CONNACK).1.is_some(), "second CONNACK");
        assert_eq!(guard().feed(&[0x62, 2, 0, 1]).1, None, "valid PUBREL");
        assert_eq!(
            Guard::new(MqttVersion::V3_1_1, 64).feed(&[0xd0, 0]).1,
            Some(Violation::Protocol("a packet before CONNACK"))
        );
    }
}
