//! The monitor's delivery rules: what the broker delivered, to the device or
//! to a cloud client, against what was published to it (by the device on the
//! tap, by a cloud client through its own observer). Each rule is a spec
//! clause, with the tolerance a loaded 2-core machine needs, named here:
//!
//! - [MQTT-3.8.4-6] (3.1.1) / [MQTT-3.8.4-8] (5), second half: a delivery's QoS
//!   is at most the QoS the message was published with.
//! - [MQTT-4.6.0-6]: one publisher's messages on one topic at one QoS reach
//!   each subscriber in the order they were published ("ordered topic").
//! - [MQTT-3.3.2-5] / [MQTT-3.3.2-6] (5): no onward delivery once the Message
//!   Expiry Interval has passed; the forwarded interval is the one received
//!   less the time the message waited.
//! - [MQTT-3.1.2-8]: a connection that closes without DISCONNECT has its Will
//!   published to every subscriber of the Will's topic.
//!
//! A message is recognised by (topic, payload). A message published more than
//! once with the same payload is ambiguous and not judged for order or
//! expiry; a delivery nobody on the record published (a retained message from
//! before, a Will) is not judged for QoS.

use super::monitor::Deviation;
use super::wire::{CloudEvent, Dir, Packet, WireEvent, WireRecord};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Slack on the expiry clock: the broker's second boundaries and our tap.
const EXPIRY_SLACK: Duration = Duration::from_secs(2);
/// How long after a broker learns of a close its Will may take to arrive.
const WILL_SLACK: Duration = Duration::from_secs(5);

struct Publication {
    at: Instant,
    publisher: String,
    qos: u8,
    expiry: Option<u32>,
}

struct Delivery {
    at: Instant,
    subscriber: String,
    topic: String,
    payload: String,
    qos: u8,
    dup: bool,
    retain: bool,
    expiry: Option<u32>,
    v5: bool,
}

fn clause(v5: bool, v3: &'static str, v5c: &'static str) -> &'static str {
    if v5 {
        v5c
    } else {
        v3
    }
}

/// Does `filter` (with + and #) match `topic`?
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return !topic.starts_with('$'),
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

pub fn check(records: &[WireRecord], until: Instant) -> Vec<Deviation> {
    let mut out = Vec::new();
    let mut pubs: HashMap<(String, String), Vec<Publication>> = HashMap::new();
    let mut deliveries = Vec::new();
    let mut conn_client: HashMap<u32, (String, u8)> = HashMap::new();
    for r in records {
        match &r.event {
            WireEvent::Packet { conn, dir, packet } => match (dir, packet) {
                (
                    Dir::Up,
                    Packet::Connect {
                        client_id, level, ..
                    },
                ) => {
                    conn_client.insert(*conn, (client_id.clone(), *level));
                }
                (
                    Dir::Up,
                    Packet::Publish {
                        topic,
                        payload,
                        qos,
                        dup,
                        expiry,
                        ..
                    },
                ) if !dup => {
                    let publisher = conn_client
                        .get(conn)
                        .map(|c| c.0.clone())
                        .unwrap_or_default();
                    pubs.entry((topic.clone(), payload.clone()))
                        .or_default()
                        .push(Publication {
                            at: r.at,
                            publisher,
                            qos: *qos,
                            expiry: *expiry,
                        });
                }
                (
                    Dir::Down,
                    Packet::Publish {
                        topic,
                        payload,
                        qos,
                        dup,
                        retain,
                        expiry,
                        ..
                    },
                ) => {
                    let (subscriber, level) = conn_client.get(conn).cloned().unwrap_or_default();
                    deliveries.push(Delivery {
                        at: r.at,
                        subscriber,
                        topic: topic.clone(),
                        payload: payload.clone(),
                        qos: *qos,
                        dup: *dup,
                        retain: *retain,
                        expiry: *expiry,
                        v5: level == 5,
                    });
                }
                _ => {}
            },
            WireEvent::Cloud(CloudEvent::Published {
                client,
                topic,
                payload,
                qos,
                expiry_s,
            }) => {
                let payload = String::from_utf8_lossy(payload).into_owned();
                pubs.entry((topic.clone(), payload))
                    .or_default()
                    .push(Publication {
                        at: r.at,
                        publisher: format!("cloud {client}"),
                        qos: *qos,
                        expiry: *expiry_s,
                    });
            }
            WireEvent::Cloud(CloudEvent::Received { client, message }) => {
                deliveries.push(Delivery {
                    at: r.at,
                    subscriber: format!("cloud {client}"),
                    topic: message.topic.clone(),
                    payload: message.text(),
                    qos: message.qos,
                    dup: message.dup,
                    retain: message.retain,
                    expiry: message.message_expiry,
                    // Only a v5 publish carries an expiry on the record.
                    v5: true,
                });
            }
            _ => {}
        }
    }

    // Per subscriber: the messages it already had, and the first deliveries
    // (publisher, topic, QoS) -> publication instant, for the order rule.
    let mut had: HashMap<&str, HashSet<(&str, &str)>> = HashMap::new();
    let mut newest: HashMap<(&str, String, &str, u8), Instant> = HashMap::new();
    for d in &deliveries {
        let key = (d.topic.clone(), d.payload.clone());
        let known: Vec<&Publication> = pubs
            .get(&key)
            .map(|v| v.iter().filter(|p| p.at <= d.at).collect())
            .unwrap_or_default();
        let Some(max_qos) = known.iter().map(|p| p.qos).max() else {
            continue;
        };
        if d.qos > max_qos {
            out.push(Deviation {
                clause: clause(d.v5, "MQTT-3.8.4-6", "MQTT-3.8.4-8"),
                rule: "delivered QoS = min(publish, granted)",
                detail: format!(
                    "{}: {} delivered at QoS {}, it was published at QoS {max_qos}",
                    d.subscriber, d.topic, d.qos
                ),
            });
        }
        let first = had
            .entry(d.subscriber.as_str())
            .or_default()
            .insert((d.topic.as_str(), d.payload.as_str()));
        let [p] = known.as_slice() else { continue };
        if !first || d.dup || d.retain {
            continue;
        }
        let order_key = (
            d.subscriber.as_str(),
            p.publisher.clone(),
            d.topic.as_str(),
            p.qos,
        );
        if let Some(later) = newest.get(&order_key) {
            if *later > p.at {
                out.push(Deviation {
                    clause: "MQTT-4.6.0-6",
                    rule: "one publisher's messages on a topic arrive in the order published",
                    detail: format!(
                        "{}: {} {:?} delivered after a message {} published {} ms later",
                        d.subscriber,
                        d.topic,
                        d.payload,
                        p.publisher,
                        later.duration_since(p.at).as_millis()
                    ),
                });
            }
        }
        let e = newest.entry(order_key).or_insert(p.at);
        *e = (*e).max(p.at);
        if let (Some(expiry), true) = (p.expiry, d.v5) {
            let waited = d.at.duration_since(p.at);
            let budget = Duration::from_secs(expiry as u64);
            if waited > budget + EXPIRY_SLACK {
                out.push(Deviation {
                    clause: "MQTT-3.3.2-5",
                    rule: "no delivery after the Message Expiry Interval",
                    detail: format!(
                        "{}: {} delivered {:.1} s after it was published with a {expiry} s expiry",
                        d.subscriber,
                        d.topic,
                        waited.as_secs_f64()
                    ),
                });
            }
            let allowed = budget.saturating_sub(waited) + EXPIRY_SLACK;
            let forwarded = d.expiry.map(|s| Duration::from_secs(s as u64));
            if forwarded.is_none_or(|f| f > allowed) {
                out.push(Deviation {
                    clause: "MQTT-3.3.2-6",
                    rule: "the forwarded expiry is the received one less the time waited",
                    detail: format!(
                        "{}: {} forwarded with expiry {:?} s after waiting {:.1} s of {expiry} s",
                        d.subscriber,
                        d.topic,
                        d.expiry,
                        waited.as_secs_f64()
                    ),
                });
            }
        }
    }
    out.extend(wills(records, until));
    out
}

/// [MQTT-3.1.2-8]: judged for a device connection with a Will (no delay)
/// that the broker accepted and that ended without DISCONNECT, when no
/// takeover or broker restart muddies it, for each cloud client subscribed
/// to the Will's topic before the end and connected until the deadline, and
/// only when the record goes on past the deadline.
fn wills(records: &[WireRecord], last: Instant) -> Vec<Deviation> {
    let mut out = Vec::new();
    let connects = records.iter().filter_map(|r| match &r.event {
        WireEvent::Packet {
            conn,
            dir: Dir::Up,
            packet:
                Packet::Connect {
                    client_id,
                    keepalive,
                    will: Some((topic, _, _)),
                    will_payload: Some(payload),
                    will_delay,
                    level,
                    ..
                },
        } if will_delay.unwrap_or(0) == 0 => {
            Some((r.at, *conn, client_id, *keepalive, topic, payload, *level))
        }
        _ => None,
    });
    for (start, conn, client, keepalive, topic, payload, level) in connects {
        let on_conn = |r: &&WireRecord| match &r.event {
            WireEvent::Packet { conn: c, .. }
            | WireEvent::Closed { conn: c, .. }
            | WireEvent::Cut { conn: c } => *c == conn,
            _ => false,
        };
        let mine: Vec<&WireRecord> = records.iter().filter(on_conn).collect();
        let accepted = mine.iter().any(|r| {
            matches!(
                &r.event,
                WireEvent::Packet {
                    dir: Dir::Down,
                    packet: Packet::Connack { rc: 0, .. },
                    ..
                }
            )
        });
        let disconnected = mine.iter().any(|r| {
            matches!(
                &r.event,
                WireEvent::Packet {
                    dir: Dir::Up,
                    packet: Packet::Disconnect { .. },
                    ..
                }
            )
        });
        let Some(end) = mine
            .iter()
            .find(|r| matches!(r.event, WireEvent::Closed { .. } | WireEvent::Cut { .. }))
            .map(|r| r.at)
        else {
            continue;
        };
        if !accepted || disconnected {
            continue;
        }
        // When did the broker learn of the close? At once, unless the link was
        // blackholed: then only through its keep-alive (1.5 x, [MQTT-3.1.2-24]).
        let blackholed = records
            .iter()
            .filter(|r| r.at <= end)
            .filter_map(|r| match r.event {
                WireEvent::Blackhole { on } => Some(on),
                _ => None,
            })
            .next_back()
            .unwrap_or(false);
        let learnt = if blackholed {
            let last_up = mine
                .iter()
                .filter(|r| matches!(r.event, WireEvent::Packet { dir: Dir::Up, .. }))
                .map(|r| r.at)
                .next_back()
                .unwrap_or(start);
            (last_up + Duration::from_millis(keepalive as u64 * 1500)).max(end)
        } else {
            end
        };
        let deadline = learnt + WILL_SLACK;
        if last < deadline {
            continue;
        }
        // A takeover (another CONNECT with this client ID before the broker
        // learnt of the close) or a broker restart: not judged.
        let muddied = records
            .iter()
            .filter(|r| r.at > start && r.at <= deadline)
            .any(|r| match &r.event {
                WireEvent::BrokerRestart => true,
                WireEvent::SessionEnded { client_id } => client_id == client,
                WireEvent::Packet {
                    conn: c,
                    dir: Dir::Up,
                    packet: Packet::Connect { client_id, .. },
                } => *c != conn && client_id == client && r.at < learnt,
                _ => false,
            });
        if muddied {
            continue;
        }
        // Cloud clients listening on the Will's topic across the window.
        let mut listeners: HashSet<&str> = HashSet::new();
        for r in records.iter().filter(|r| r.at < end) {
            match &r.event {
                WireEvent::Cloud(CloudEvent::Subscribed { client, filter, .. })
                    if filter_matches(filter, topic) =>
                {
                    listeners.insert(client);
                }
                WireEvent::Cloud(CloudEvent::Closed { client }) => {
                    listeners.remove(client.as_str());
                }
                _ => {}
            }
        }
        for r in records.iter().filter(|r| r.at >= end && r.at <= deadline) {
            if let WireEvent::Cloud(CloudEvent::Closed { client }) = &r.event {
                listeners.remove(client.as_str());
            }
        }
        for listener in listeners {
            let got = records.iter().filter(|r| r.at >= start).any(|r| {
                matches!(&r.event, WireEvent::Cloud(CloudEvent::Received { client, message })
                    if client == listener && message.topic == *topic && message.text() == *payload)
            });
            if !got {
                out.push(Deviation {
                    clause: "MQTT-3.1.2-8",
                    rule: "a connection closed without DISCONNECT has its Will published",
                    detail: format!(
                        "{client}: connection #{conn} (MQTT {}) ended without DISCONNECT; cloud {listener}, subscribed to {topic}, got no Will {payload:?} within {} s",
                        if level == 5 { "5" } else { "3.1.1" },
                        deadline.duration_since(end).as_secs()
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hil_broker::client::Received;

    struct Script {
        t0: Instant,
        records: Vec<WireRecord>,
    }

    impl Script {
        fn new() -> Script {
            Script {
                t0: Instant::now(),
                records: Vec::new(),
            }
        }
        fn at(&mut self, ms: u64, event: WireEvent) -> &mut Self {
            self.records.push(WireRecord {
                at: self.t0 + Duration::from_millis(ms),
                event,
            });
            self
        }
        fn clauses(&self) -> Vec<&'static str> {
            let until = self.records.last().unwrap().at;
            check(&self.records, until)
                .into_iter()
                .map(|d| d.clause)
                .collect()
        }
    }

    fn connect(level: u8) -> WireEvent {
        WireEvent::Packet {
            conn: 1,
            dir: Dir::Up,
            packet: Packet::Connect {
                client_id: "dev".into(),
                clean: false,
                keepalive: 2,
                will: Some(("d/dev/status".into(), 1, true)),
                will_payload: Some("offline".into()),
                will_delay: None,
                level,
                session_expiry: None,
                max_packet_size: None,
            },
        }
    }

    fn connack() -> WireEvent {
        WireEvent::Packet {
            conn: 1,
            dir: Dir::Down,
            packet: Packet::Connack {
                session_present: false,
                rc: 0,
            },
        }
    }

    fn cloud_pub(payload: &str, qos: u8, expiry: Option<u32>) -> WireEvent {
        WireEvent::Cloud(CloudEvent::Published {
            client: "cmd".into(),
            topic: "d/dev/cmd".into(),
            payload: payload.as_bytes().to_vec(),
            qos,
            expiry_s: expiry,
        })
    }

    fn down(payload: &str, qos: u8, expiry: Option<u32>) -> WireEvent {
        WireEvent::Packet {
            conn: 1,
            dir: Dir::Down,
            packet: Packet::Publish {
                topic: "d/dev/cmd".into(),
                qos,
                dup: false,
                retain: false,
                pid: (qos > 0).then_some(1),
                payload: payload.into(),
                expiry,
            },
        }
    }

    fn received(client: &str, topic: &str, payload: &str) -> WireEvent {
        WireEvent::Cloud(CloudEvent::Received {
            client: client.into(),
            message: Received {
                topic: topic.into(),
                payload: payload.as_bytes().to_vec(),
                qos: 1,
                dup: false,
                retain: false,
                message_expiry: None,
            },
        })
    }

    #[test]
    fn delivered_qos_above_the_published_one_is_named() {
        let mut s = Script::new();
        s.at(0, connect(4))
            .at(1, connack())
            .at(2, cloud_pub("a", 0, None));
        s.at(3, down("a", 0, None));
        assert!(s.clauses().is_empty());
        s.at(4, cloud_pub("b", 0, None)).at(5, down("b", 1, None));
        assert_eq!(s.clauses(), vec!["MQTT-3.8.4-6"]);
    }

    #[test]
    fn order_per_publisher_and_topic_is_judged() {
        let mut s = Script::new();
        s.at(0, connect(5)).at(1, connack());
        s.at(2, cloud_pub("x", 1, None))
            .at(3, cloud_pub("y", 1, None));
        s.at(4, down("x", 1, None)).at(5, down("y", 1, None));
        assert!(s.clauses().is_empty(), "in order");
        let mut s = Script::new();
        s.at(0, connect(5)).at(1, connack());
        s.at(2, cloud_pub("x", 1, None))
            .at(3, cloud_pub("y", 1, None));
        s.at(4, down("y", 1, None)).at(5, down("x", 1, None));
        assert_eq!(s.clauses(), vec!["MQTT-4.6.0-6"]);
    }

    #[test]
    fn expiry_is_judged_on_mqtt5() {
        let mut s = Script::new();
        s.at(0, connect(5))
            .at(1, connack())
            .at(10, cloud_pub("e", 1, Some(10)));
        s.at(3_010, down("e", 1, Some(7)));
        assert!(s.clauses().is_empty());
        let mut s = Script::new();
        s.at(0, connect(5))
            .at(1, connack())
            .at(10, cloud_pub("e", 1, Some(2)));
        s.at(6_000, down("e", 1, Some(5)));
        assert_eq!(s.clauses(), vec!["MQTT-3.3.2-5", "MQTT-3.3.2-6"]);
        let mut s = Script::new();
        s.at(0, connect(5))
            .at(1, connack())
            .at(10, cloud_pub("e", 1, Some(100)));
        s.at(20, down("e", 1, None));
        assert_eq!(s.clauses(), vec!["MQTT-3.3.2-6"], "expiry dropped");
    }

    fn subscribed(client: &str) -> WireEvent {
        WireEvent::Cloud(CloudEvent::Subscribed {
            client: client.into(),
            filter: "d/+/status".into(),
            granted: 1,
        })
    }

    #[test]
    fn a_will_must_reach_its_listeners() {
        let cut = WireEvent::Closed {
            conn: 1,
            by: Dir::Up,
        };
        // Delivered: conformant.
        let mut s = Script::new();
        s.at(0, subscribed("w"))
            .at(1, connect(4))
            .at(2, connack())
            .at(100, cut.clone());
        s.at(300, received("w", "d/dev/status", "offline"));
        s.at(6_000, WireEvent::Blackhole { on: false });
        assert!(s.clauses().is_empty());
        // Never delivered: the broker's.
        let mut s = Script::new();
        s.at(0, subscribed("w"))
            .at(1, connect(4))
            .at(2, connack())
            .at(100, cut.clone());
        s.at(6_000, WireEvent::Blackhole { on: false });
        assert_eq!(s.clauses(), vec!["MQTT-3.1.2-8"]);
        // The record ends too soon to judge, or the device said DISCONNECT.
        let mut s = Script::new();
        s.at(0, subscribed("w"))
            .at(1, connect(4))
            .at(2, connack())
            .at(100, cut.clone());
        s.at(2_000, WireEvent::Blackhole { on: false });
        assert!(s.clauses().is_empty());
        let mut s = Script::new();
        s.at(0, subscribed("w")).at(1, connect(4)).at(2, connack());
        s.at(
            50,
            WireEvent::Packet {
                conn: 1,
                dir: Dir::Up,
                packet: Packet::Disconnect { reason: None },
            },
        );
        s.at(100, cut);
        s.at(9_000, WireEvent::Blackhole { on: false });
        assert!(s.clauses().is_empty());
    }

    #[test]
    fn filters_match_as_the_spec_says() {
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("#", "a"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(!filter_matches("a/b", "a/c"));
    }
}
