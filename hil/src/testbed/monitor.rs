//! The broker conformance monitor: reads what the wire tap saw and names
//! every MQTT rule the broker broke towards the device, by its conformance
//! clause. A scenario run on a broker that broke one cannot judge the device;
//! the runner then reports `broker` with the rule, never a device failure.
//!
//! Driven by the spec's clauses, not by one broker's quirks:
//! - delivered QoS <= the QoS the broker granted ([MQTT-3.8.4-6] in 3.1.1,
//!   [MQTT-3.8.4-8] in 5);
//! - a PUBLISH the broker re-delivers on a resumed session carries DUP
//!   ([MQTT-3.3.1-1], [MQTT-4.4.0-1]);
//! - CONNACK session_present=1 when a session exists for a clean_session=0
//!   CONNECT ([MQTT-3.2.2-2] in 3.1.1, [MQTT-3.2.2-3] in 5), and 0 for a
//!   clean one ([MQTT-3.2.2-1], [MQTT-3.2.2-2] in 5);
//! - a second CONNECT with the same client ID closes the first connection
//!   ([MQTT-3.1.4-2] in 3.1.1, [MQTT-3.1.4-3] in 5);
//! - MQTT 5: no PUBLISH larger than the Maximum Packet Size the client's
//!   CONNECT announced ([MQTT-3.1.2-24]; the server discards it instead,
//!   [MQTT-3.1.2-25]). Judged on a lower bound of the packet's size, so a
//!   broker is never blamed for a packet that might have fitted.
//!
//! The rules that compare what was published with what was delivered (QoS
//! cap, order, message expiry, the Will) are in `delivery.rs`.
//!
//! A broker restart (the testbed's own kill) ends what is known of sessions:
//! keeping them across a restart is a broker's choice, not a rule.

use super::wire::{Dir, Packet, WireEvent, WireRecord};
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// One broken rule: its clause, in words, and what the wire showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deviation {
    pub clause: &'static str,
    pub rule: &'static str,
    pub detail: String,
}

impl fmt::Display for Deviation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.clause, self.rule, self.detail)
    }
}

#[derive(Default)]
struct Conn {
    client: Option<String>,
    clean: bool,
    level: u8,
    expiry: Option<u32>,
    accepted: bool,
    closed: bool,
    /// Packet ids the broker must re-deliver with DUP on this connection.
    /// Messages (topic, payload) the broker must re-deliver with DUP on this
    /// connection, with their original packet ids. Recognised by the message,
    /// not the id: a broker may free an id (an expired message) and reuse it.
    redeliver: HashMap<(String, String), u16>,
    subscribing: HashMap<u16, Vec<String>>,
    /// MQTT 5 Maximum Packet Size the client announced.
    max_packet: Option<u32>,
}

/// The least a PUBLISH can take on the wire: fixed header (2 bytes at
/// least, 3 past 127, 4 past 16383), topic, packet id, an empty MQTT 5
/// property length, the payload.
pub fn publish_size_at_least(topic: &str, qos: u8, payload: &str, v5: bool) -> usize {
    let rest = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + v5 as usize + payload.len();
    let header = match rest {
        0..=127 => 2,
        128..=16_383 => 3,
        16_384..=2_097_151 => 4,
        _ => 5,
    };
    header + rest
}

#[derive(Default)]
struct Session {
    /// Known to exist at the broker (None: unknown, after a broker restart).
    exists: Option<bool>,
    granted: HashMap<String, u8>,
    /// QoS > 0 PUBLISHes sent to the device and not acknowledged.
    unacked: HashMap<u16, (String, String)>,
    ended: Option<Instant>,
    expiry: Option<u32>,
    live: Option<u32>,
}

fn v5(level: u8) -> bool {
    level == 5
}

/// Every deviation in `records`, observed until the last record.
pub fn check(records: &[WireRecord]) -> Vec<Deviation> {
    let until = records.last().map(|r| r.at).unwrap_or_else(Instant::now);
    check_until(records, until)
}

/// Every deviation in `records`, observed until `until` (the instant the
/// scenario stopped watching: a Will that never came is judged only when
/// the watch went on past its deadline).
pub fn check_until(records: &[WireRecord], until: Instant) -> Vec<Deviation> {
    let mut conns: HashMap<u32, Conn> = HashMap::new();
    let mut sessions: HashMap<String, Session> = HashMap::new();
    let mut takeovers: Vec<(u32, String)> = Vec::new();
    let mut out = Vec::new();
    for r in records {
        match &r.event {
            WireEvent::SessionEnded { client_id } => {
                if let Some(s) = sessions.get_mut(client_id) {
                    s.exists = Some(false);
                    s.unacked.clear();
                    s.granted.clear();
                }
            }
            WireEvent::BrokerRestart => {
                for s in sessions.values_mut() {
                    s.exists = None;
                    s.unacked.clear();
                    s.granted.clear();
                }
            }
            WireEvent::Attempt { .. }
            | WireEvent::Cloud(_)
            | WireEvent::Blackhole { .. }
            | WireEvent::Tls { .. } => {}
            WireEvent::Closed { conn, .. } | WireEvent::Cut { conn } => {
                if let Some(c) = conns.get_mut(conn) {
                    c.closed = true;
                    if let Some(s) = c.client.as_ref().and_then(|id| sessions.get_mut(id)) {
                        if s.live == Some(*conn) {
                            s.live = None;
                            s.ended = Some(r.at);
                        }
                    }
                }
            }
            WireEvent::Packet { conn, dir, packet } => {
                let c = conns.entry(*conn).or_default();
                match (dir, packet) {
                    (
                        Dir::Up,
                        Packet::Connect {
                            client_id,
                            clean,
                            level,
                            session_expiry,
                            max_packet_size,
                            ..
                        },
                    ) => {
                        c.max_packet = *max_packet_size;
                        c.client = Some(client_id.clone());
                        c.clean = *clean;
                        c.level = *level;
                        c.expiry = *session_expiry;
                    }
                    (
                        Dir::Down,
                        Packet::Connack {
                            session_present,
                            rc,
                        },
                    ) if *rc == 0 => {
                        c.accepted = true;
                        let Some(id) = c.client.clone() else { continue };
                        let s = sessions.entry(id.clone()).or_default();
                        let expired = match (s.ended, s.expiry) {
                            _ if !v5(c.level) => false,
                            (Some(end), Some(e)) => {
                                r.at.duration_since(end)
                                    > Duration::from_secs(e as u64) + Duration::from_millis(500)
                            }
                            (Some(_), None) => true,
                            (None, _) => false,
                        };
                        if c.clean && *session_present {
                            out.push(Deviation {
                                clause: if v5(c.level) {
                                    "MQTT-3.2.2-2"
                                } else {
                                    "MQTT-3.2.2-1"
                                },
                                rule: "session_present=0 for a clean session",
                                detail: format!(
                                    "{id}: CONNACK session_present=1 to a clean CONNECT (#{conn})"
                                ),
                            });
                        }
                        if !c.clean && s.exists == Some(true) && !expired && !session_present {
                            out.push(Deviation {
                                clause: if v5(c.level) { "MQTT-3.2.2-3" } else { "MQTT-3.2.2-2" },
                                rule: "session_present=1 when the broker holds the session",
                                detail: format!("{id}: CONNACK session_present=0 on #{conn}, though its session (clean_session=0, not expired) was not ended"),
                            });
                        }
                        if *session_present {
                            c.redeliver = s.unacked.iter().map(|(p, m)| (m.clone(), *p)).collect();
                        } else {
                            s.unacked.clear();
                            s.granted.clear();
                        }
                        if let Some(old) = s.live.replace(*conn) {
                            takeovers.push((old, id.clone()));
                        }
                        s.exists = Some(!c.clean || (v5(c.level) && c.expiry.unwrap_or(0) > 0));
                        s.expiry = c.expiry;
                        s.ended = None;
                    }
                    (Dir::Up, Packet::Subscribe { pid, filters }) => {
                        c.subscribing
                            .insert(*pid, filters.iter().map(|(f, _)| f.clone()).collect());
                    }
                    (Dir::Down, Packet::Suback { pid, codes }) => {
                        let filters = c.subscribing.remove(pid).unwrap_or_default();
                        if let Some(s) = c.client.as_ref().and_then(|id| sessions.get_mut(id)) {
                            for (f, code) in filters.into_iter().zip(codes) {
                                if *code < 0x80 {
                                    s.granted.insert(f, *code);
                                }
                            }
                        }
                    }
                    (
                        Dir::Down,
                        Packet::Publish {
                            topic,
                            qos,
                            dup,
                            pid,
                            payload,
                            ..
                        },
                    ) => {
                        let level = c.level;
                        let size = publish_size_at_least(topic, *qos, payload, v5(level));
                        if let Some(max) = c.max_packet.filter(|m| v5(level) && size > *m as usize)
                        {
                            out.push(Deviation {
                                clause: "MQTT-3.1.2-24",
                                rule: "no packet larger than the client's Maximum Packet Size",
                                detail: format!("#{conn}: a PUBLISH on {topic} of at least {size} B; the client's CONNECT allowed {max} B"),
                            });
                        }
                        let resend = c.redeliver.remove(&(topic.clone(), payload.clone()));
                        let Some(id) = c.client.clone() else { continue };
                        let s = sessions.entry(id.clone()).or_default();
                        if let Some(granted) = s.granted.get(topic) {
                            if qos > granted {
                                out.push(Deviation {
                                    clause: if v5(level) { "MQTT-3.8.4-8" } else { "MQTT-3.8.4-6" },
                                    rule: "delivered QoS = min(publish, granted)",
                                    detail: format!("{id}: PUBLISH on {topic} at QoS {qos}, the subscription was granted QoS {granted}"),
                                });
                            }
                        }
                        if resend.is_some() && !dup {
                            out.push(Deviation {
                                clause: "MQTT-3.3.1-1",
                                rule: "a re-delivered PUBLISH carries DUP",
                                detail: format!("{id}: {topic} {:?} re-delivered on the resumed session (#{conn}) with DUP=0", hil_packets::tap::shown(payload)),
                            });
                        }
                        if let Some(orig) = resend.filter(|o| Some(*o) != *pid) {
                            out.push(Deviation {
                                clause: "MQTT-4.4.0-1",
                                rule: "an unacknowledged PUBLISH is re-sent with its original packet id",
                                detail: format!("{id}: {topic} {:?} re-sent as pid {} on #{conn}, it was pid {orig}", hil_packets::tap::shown(payload), pid.unwrap_or(0)),
                            });
                        }
                        if let Some(p) = pid {
                            s.unacked.insert(*p, (topic.clone(), payload.clone()));
                        }
                    }
                    (Dir::Up, Packet::Puback { pid, .. } | Packet::Pubrec { pid, .. }) => {
                        if let Some(s) = c.client.as_ref().and_then(|id| sessions.get_mut(id)) {
                            s.unacked.remove(pid);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out.extend(super::delivery::check(records, until));
    for (old, id) in takeovers {
        if conns.get(&old).is_some_and(|c| !c.closed) {
            let level = conns.get(&old).map(|c| c.level).unwrap_or(4);
            out.push(Deviation {
                clause: if v5(level) {
                    "MQTT-3.1.4-3"
                } else {
                    "MQTT-3.1.4-2"
                },
                rule: "a second CONNECT with the same client ID closes the first",
                detail: format!(
                    "{id}: connection #{old} stayed open after a new one took its client ID"
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64, event: WireEvent) -> WireRecord {
        WireRecord {
            at: t0 + Duration::from_millis(ms),
            event,
        }
    }

    fn connect(level: u8, max_packet_size: Option<u32>) -> WireEvent {
        WireEvent::Packet {
            conn: 1,
            dir: Dir::Up,
            packet: Packet::Connect {
                client_id: "dev".into(),
                clean: false,
                keepalive: 5,
                will: None,
                will_payload: None,
                will_delay: None,
                level,
                session_expiry: None,
                max_packet_size,
            },
        }
    }

    fn publish(len: usize) -> WireEvent {
        WireEvent::Packet {
            conn: 1,
            dir: Dir::Down,
            packet: Packet::Publish {
                topic: "d/dev/cmd".into(),
                qos: 1,
                dup: false,
                retain: false,
                pid: Some(1),
                payload: "x".repeat(len),
                expiry: None,
            },
        }
    }

    #[test]
    fn a_publish_past_the_announced_maximum_packet_size_is_the_brokers_deviation() {
        let t0 = Instant::now();
        let clauses = |records: &[WireRecord]| -> Vec<&'static str> {
            check(records).into_iter().map(|d| d.clause).collect()
        };
        let connack = WireEvent::Packet {
            conn: 1,
            dir: Dir::Down,
            packet: Packet::Connack {
                session_present: false,
                rc: 0,
            },
        };
        let over = vec![
            at(t0, 0, connect(5, Some(1024))),
            at(t0, 1, connack.clone()),
            at(t0, 2, publish(1100)),
        ];
        assert_eq!(clauses(&over), vec!["MQTT-3.1.2-24"]);
        // Within the limit (its size is at least 1,000 + 15 B): nothing.
        let within = vec![
            at(t0, 0, connect(5, Some(1024))),
            at(t0, 1, connack.clone()),
            at(t0, 2, publish(1000)),
        ];
        assert!(clauses(&within).is_empty());
        // 3.1.1 has no limit to announce: never the broker's fault.
        let v3 = vec![
            at(t0, 0, connect(4, None)),
            at(t0, 1, connack),
            at(t0, 2, publish(100_000)),
        ];
        assert!(clauses(&v3).is_empty());
    }
}
