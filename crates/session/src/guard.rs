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

/// Frames one connection's bytes; make a new one (or `reset`) per connection.
#[derive(Debug)]
pub struct Guard {
    version: MqttVersion,
    max: usize,
    buf: Vec<u8>,
    connack_seen: bool,
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
        }
    }

    /// Bytes held for a packet not yet complete (never more than `max`).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes from the socket; returns the whole packets they complete, in
    /// order. On a violation the rest is discarded: the caller closes the link.
    /// Packets before the violation are returned with it.
    pub fn feed(&mut self, mut bytes: &[u8]) -> (Vec<Vec<u8>>, Option<Violation>) {
        let mut packets = Vec::new();
        loop {
            // Take just enough to know the packet's length, then just the packet.
            let need = match remaining_length(&self.buf) {
                Err(v) => return self.fail(packets, v),
                Ok(None) => self.buf.len() + 1,
                Ok(Some((rl, header))) => {
                    let total = header + rl;
                    if total > self.max {
                        return self.fail(
                            packets,
                            Violation::TooLarge {
                                announced: total,
                                max: self.max,
                            },
                        );
                    }
                    if self.buf.len() == total {
                        let packet = core::mem::take(&mut self.buf);
                        if let Err(v) = self.check(&packet, header) {
                            return self.fail(packets, v);
                        }
                        packets.push(packet);
                        continue;
                    }
                    total
                }
            };
            if bytes.is_empty() {
                return (packets, None);
            }
            let take = (need - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
    }

    fn fail(&mut self, packets: Vec<Vec<u8>>, v: Violation) -> (Vec<Vec<u8>>, Option<Violation>) {
        self.buf = Vec::new();
        (packets, Some(v))
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
        assert_eq!(g.feed(&CONNACK), (vec![CONNACK.to_vec()], None));
        g
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
                a,
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
