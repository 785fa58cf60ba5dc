//! The delivery ledger: every command and every reading of a soak, from
//! publish to execution or delivery, judged by the wire and the cloud (the
//! console's claims are checked against them). Who lost what is told apart:
//! the device (it acknowledged a command and never executed it; it buffered a
//! reading and never had it acknowledged by the broker), the broker (a kill
//! -9 took its queue; or it never delivered at all), or QoS 0 (allowed).

use crate::testbed::{Dir, Packet, WireEvent, WireRecord};
use hil_session::Event;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// A command the cloud published and the broker accepted.
#[derive(Clone, Debug)]
pub struct Sent {
    pub id: String,
    pub qos: u8,
    pub at: Instant,
}

/// Counts for one QoS of commands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandRow {
    pub sent: u32,
    /// Executed at least once.
    pub delivered: u32,
    /// QoS 1/2: acknowledged by the device, never executed: the device's loss.
    pub lost_by_device: u32,
    /// Never delivered: a broker kill -9 came after the publish (its queue
    /// went with it), or it was published after a restart and before the
    /// device's new session had its subscription (no one to deliver to).
    pub lost_in_broker_kill: u32,
    /// Never delivered, no broker kill after it: the broker's loss.
    pub lost_by_broker: u32,
    /// QoS 0 never delivered (allowed: at most once).
    pub lost_qos0: u32,
    pub executed_twice: u32,
    /// Executed again, but only after more distinct commands than the
    /// device's de-duplication window holds: a redelivery that old (a broker
    /// restored from a stale snapshot after kill -9 does it) is past what a
    /// bounded inbox can promise. Shown, not blamed on the device.
    pub reexecuted_beyond_window: u32,
    /// Delivered to the device more than once (deduplicated or not).
    pub duplicated: u32,
    /// Executed before a command of the same QoS published earlier.
    pub reordered: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadingRow {
    /// The device said it buffered these.
    pub buffered: u32,
    /// The broker acknowledged them (PUBACK on the wire).
    pub delivered: u32,
    /// Buffered, not dropped, never acknowledged: the device's loss.
    pub lost: u32,
    /// Dropped by a full outbox, and said so.
    pub dropped_counted: u32,
    /// Dropped by a full outbox and counted in the readings' `dropped`
    /// counter, whose console line a power cut took before it was printed
    /// (the drop is on flash before the line, as every record is).
    pub dropped_unannounced: u32,
    /// Published more than once (resends).
    pub duplicated: u32,
    /// First published after a higher sequence number.
    pub reordered: u32,
}

/// One thing that went wrong, with the faults around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    /// Who is to blame: "device" or "broker".
    pub party: &'static str,
    pub what: String,
    pub around: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub commands: BTreeMap<u8, CommandRow>,
    pub readings: ReadingRow,
    pub anomalies: Vec<Anomaly>,
    pub faults: usize,
}

/// The session core's de-duplication window (its inbox): the sim's, and the
/// firmware's.
pub fn dedupe_window() -> usize {
    hil_session::Config::new("esp32c3", hil_session::identity::Mac([0; 6])).inbox_capacity
}

fn command_id(payload: &str) -> Option<&str> {
    payload.split("\"id\":\"").nth(1)?.split('"').next()
}

impl Ledger {
    /// Builds the ledger. `faults`: (instant, label) of every fault applied.
    pub fn build(
        sent: &[Sent],
        events: &[Event],
        wire: &[WireRecord],
        faults: &[(Instant, String)],
    ) -> Ledger {
        Ledger::build_with_window(sent, events, wire, faults, dedupe_window())
    }

    /// [`Ledger::build`] for a device that remembers the last `window`
    /// command ids.
    pub fn build_with_window(
        sent: &[Sent],
        events: &[Event],
        wire: &[WireRecord],
        faults: &[(Instant, String)],
        window: usize,
    ) -> Ledger {
        let mut l = Ledger {
            faults: faults.len(),
            ..Ledger::default()
        };
        let around = |at: Instant| -> Vec<String> {
            faults
                .iter()
                .filter(|(t, _)| {
                    *t + Duration::from_secs(3) >= at && *t <= at + Duration::from_secs(10)
                })
                .map(|(_, f)| f.clone())
                .collect()
        };
        // The wire: deliveries of each command id (conn, pid), and the
        // device's acknowledgements (conn, pid).
        let mut delivered: HashMap<&str, Vec<(u32, Option<u16>)>> = HashMap::new();
        let mut acked_by_device: BTreeSet<(u32, u16)> = BTreeSet::new();
        let mut tel_sent: Vec<(u32, u32, Option<u16>, Instant)> = Vec::new();
        // The device's own drop counter, as its readings carry it.
        let mut dropped_counter = 0u32;
        let mut acked_by_broker: BTreeSet<(u32, u16)> = BTreeSet::new();
        // The broker's PUBRELs to the device (conn, pid): once it has sent
        // one, a QoS 2 message is the device's and may never be re-sent.
        let mut released_by_broker: BTreeSet<(u32, u16)> = BTreeSet::new();
        let mut proto_level = 4u8;
        let mut kills: Vec<Instant> = Vec::new();
        // A device that asks for a clean session has nothing queued for it
        // while it is away: what is lost then is its own doing.
        let mut clean_session = false;
        // After a restart, until the device's subscription is back (a SUBACK,
        // or a CONNACK that kept the session): nobody to deliver to.
        let mut unsubscribed: Vec<(Instant, Option<Instant>)> = Vec::new();
        for r in wire {
            if let Some(gap) = unsubscribed.last_mut().filter(|g| g.1.is_none()) {
                if matches!(
                    &r.event,
                    WireEvent::Packet {
                        dir: Dir::Down,
                        packet: Packet::Suback { .. }
                            | Packet::Connack {
                                session_present: true,
                                ..
                            },
                        ..
                    }
                ) {
                    gap.1 = Some(r.at);
                }
            }
            match &r.event {
                WireEvent::BrokerRestart => {
                    kills.push(r.at);
                    unsubscribed.push((r.at, None));
                }
                WireEvent::Packet { conn, dir, packet } => match (dir, packet) {
                    (
                        Dir::Up,
                        Packet::Connect {
                            clean,
                            level,
                            session_expiry,
                            ..
                        },
                    ) => {
                        proto_level = *level;
                        clean_session |= if *level == 5 {
                            session_expiry.unwrap_or(0) == 0
                        } else {
                            *clean
                        };
                    }
                    (
                        Dir::Down,
                        Packet::Publish {
                            topic,
                            pid,
                            payload,
                            ..
                        },
                    ) if topic.ends_with("/cmd") => {
                        if let Some(id) = command_id(payload) {
                            delivered.entry(id).or_default().push((*conn, *pid));
                        }
                    }
                    (Dir::Up, Packet::Puback { pid, .. } | Packet::Pubrec { pid, .. }) => {
                        acked_by_device.insert((*conn, *pid));
                    }
                    (
                        Dir::Up,
                        Packet::Publish {
                            topic,
                            pid,
                            payload,
                            ..
                        },
                    ) if topic.ends_with("/telemetry") => {
                        if let Some(seq) = crate::scenarios::steps::telemetry_seq(payload) {
                            tel_sent.push((*conn, seq, *pid, r.at));
                        }
                        if let Some(d) = crate::scenarios::steps::json_u32(payload, "dropped") {
                            dropped_counter = dropped_counter.max(d);
                        }
                    }
                    (Dir::Down, Packet::Puback { pid, .. }) => {
                        acked_by_broker.insert((*conn, *pid));
                    }
                    (Dir::Down, Packet::Pubrel { pid }) => {
                        released_by_broker.insert((*conn, *pid));
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        // The console: executions per id.
        let mut executed: HashMap<&str, u32> = HashMap::new();
        let mut exec_order: Vec<&str> = Vec::new();
        let mut buffered: BTreeSet<u32> = BTreeSet::new();
        let mut dropped: BTreeSet<u32> = BTreeSet::new();
        for e in events {
            match e {
                Event::Cmd { id, .. } => {
                    *executed.entry(id.as_str()).or_default() += 1;
                    exec_order.push(id.as_str());
                }
                Event::TelemetryBuffered { seq, .. } => {
                    buffered.insert(*seq);
                }
                Event::TelemetryDropped { seq, .. } => {
                    dropped.insert(*seq);
                }
                _ => {}
            }
        }
        for s in sent {
            let row = l.commands.entry(s.qos).or_default();
            row.sent += 1;
            let times = executed.get(s.id.as_str()).copied().unwrap_or(0);
            let deliveries = delivered
                .get(s.id.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            if deliveries.len() > 1 {
                row.duplicated += 1;
            }
            if times > 0 {
                row.delivered += 1;
                if deliveries.is_empty() {
                    l.anomalies.push(Anomaly {
                        party: "device",
                        what: format!("command {} (QoS {}): the console says executed; no delivery on the wire", s.id, s.qos),
                        around: around(s.at),
                    });
                }
            }
            if times > 1 {
                // How many other commands ran between its first two executions.
                let at: Vec<usize> = exec_order
                    .iter()
                    .enumerate()
                    .filter(|(_, id)| **id == s.id)
                    .map(|(i, _)| i)
                    .take(2)
                    .collect();
                let between: BTreeSet<&str> =
                    exec_order[at[0] + 1..at[1]].iter().copied().collect();
                let released_first = deliveries
                    .first()
                    .and_then(|(c, p)| p.map(|p| (*c, p)))
                    .is_some_and(|k| released_by_broker.contains(&k));
                if between.len() > window {
                    // Past the device's stated window: QoS 1 allows the
                    // redelivery (at least once), so it is shown, not
                    // blamed. QoS 2 after the broker's own PUBREL breaks the
                    // broker's exactly-once rule, with evidence on the wire.
                    row.reexecuted_beyond_window += 1;
                    if s.qos == 2 && released_first {
                        let rule = if proto_level == 5 {
                            "MQTT-4.3.3-6"
                        } else {
                            "MQTT-4.3.3-1"
                        };
                        l.anomalies.push(Anomaly {
                            party: "broker",
                            what: format!(
                                "command {} (QoS 2) delivered again after the broker's PUBREL for it [{rule}]: the sender must not re-send the PUBLISH once it has sent the PUBREL",
                                s.id
                            ),
                            around: around(s.at),
                        });
                    }
                } else {
                    row.executed_twice += 1;
                    l.anomalies.push(Anomaly {
                        party: "device",
                        what: format!(
                            "command {} (QoS {}) executed {times} times ({} other commands between, within its {window}-command de-duplication window)",
                            s.id,
                            s.qos,
                            between.len()
                        ),
                        around: around(s.at),
                    });
                }
            }
            if times == 0 {
                let acked = deliveries
                    .iter()
                    .any(|(c, p)| p.is_some_and(|p| acked_by_device.contains(&(*c, p))));
                if s.qos == 0 {
                    // At most once: lost anywhere (before the socket, or in
                    // a device killed with it unread) breaks no promise.
                    row.lost_qos0 += 1;
                } else if acked {
                    row.lost_by_device += 1;
                    l.anomalies.push(Anomaly {
                        party: "device",
                        what: format!(
                            "command {} (QoS {}) acknowledged by the device, never executed",
                            s.id, s.qos
                        ),
                        around: around(s.at),
                    });
                } else if kills.iter().any(|k| *k > s.at)
                    || unsubscribed
                        .iter()
                        .any(|(a, b)| s.at >= *a && b.is_none_or(|b| s.at <= b))
                {
                    row.lost_in_broker_kill += 1;
                } else if clean_session {
                    row.lost_by_device += 1;
                    l.anomalies.push(Anomaly {
                        party: "device",
                        what: format!("command {} (QoS {}) never delivered: the device connects with a clean session, so nothing is queued for it while it is away", s.id, s.qos),
                        around: around(s.at),
                    });
                } else {
                    row.lost_by_broker += 1;
                    l.anomalies.push(Anomaly {
                        party: "broker",
                        what: format!("command {} (QoS {}) accepted by the broker, never delivered, no broker restart after it", s.id, s.qos),
                        around: around(s.at),
                    });
                }
            }
        }
        // Order: per QoS, the first executions against the publish order.
        let first_exec: HashMap<&str, usize> = exec_order
            .iter()
            .enumerate()
            .rev()
            .map(|(i, id)| (*id, i))
            .collect();
        for qos in [0u8, 1, 2] {
            let mut last = None;
            for s in sent.iter().filter(|s| s.qos == qos) {
                if let Some(&i) = first_exec.get(s.id.as_str()) {
                    if last.is_some_and(|l| i < l) {
                        l.commands.entry(qos).or_default().reordered += 1;
                    }
                    last = Some(last.map_or(i, |l: usize| l.max(i)));
                }
            }
        }
        // Readings.
        let r = &mut l.readings;
        r.buffered = buffered.len() as u32;
        r.dropped_counted = dropped.len() as u32;
        let mut first_sent: Vec<u32> = Vec::new();
        let mut seen: BTreeSet<u32> = BTreeSet::new();
        let mut delivered_seqs: BTreeSet<u32> = BTreeSet::new();
        for (conn, seq, pid, _) in &tel_sent {
            if !seen.insert(*seq) {
                r.duplicated += 1;
            } else {
                first_sent.push(*seq);
            }
            if pid.is_some_and(|p| acked_by_broker.contains(&(*conn, p))) {
                delivered_seqs.insert(*seq);
            }
        }
        r.delivered = delivered_seqs
            .iter()
            .filter(|s| buffered.contains(s))
            .count() as u32;
        let mut high = 0;
        for s in &first_sent {
            if *s < high {
                r.reordered += 1;
                l.anomalies.push(Anomaly {
                    party: "device",
                    what: format!("reading seq {s} first published after seq {high}"),
                    around: Vec::new(),
                });
            }
            high = high.max(*s);
        }
        // Drops the counter has and the console never announced.
        let mut unannounced = dropped_counter.saturating_sub(dropped.len() as u32);
        for s in buffered.difference(&dropped) {
            if !delivered_seqs.contains(s) {
                if unannounced > 0 {
                    unannounced -= 1;
                    r.dropped_unannounced += 1;
                    continue;
                }
                r.lost += 1;
                let when = tel_sent.iter().find(|t| t.1 == *s).map(|t| t.3);
                l.anomalies.push(Anomaly {
                    party: "device",
                    what: format!(
                        "reading seq {s} buffered, not dropped, never acknowledged by the broker"
                    ),
                    around: when.map(around).unwrap_or_default(),
                });
            }
        }
        l
    }

    /// Adds another device's ledger (its anomalies labelled with `device`).
    pub fn merge(&mut self, other: Ledger, device: Option<&str>) {
        for (qos, r) in other.commands {
            let m = self.commands.entry(qos).or_default();
            m.sent += r.sent;
            m.delivered += r.delivered;
            m.lost_by_device += r.lost_by_device;
            m.lost_in_broker_kill += r.lost_in_broker_kill;
            m.lost_by_broker += r.lost_by_broker;
            m.lost_qos0 += r.lost_qos0;
            m.executed_twice += r.executed_twice;
            m.reexecuted_beyond_window += r.reexecuted_beyond_window;
            m.duplicated += r.duplicated;
            m.reordered += r.reordered;
        }
        let (a, b) = (&mut self.readings, other.readings);
        a.buffered += b.buffered;
        a.delivered += b.delivered;
        a.lost += b.lost;
        a.dropped_counted += b.dropped_counted;
        a.dropped_unannounced += b.dropped_unannounced;
        a.duplicated += b.duplicated;
        a.reordered += b.reordered;
        self.anomalies
            .extend(other.anomalies.into_iter().map(|mut x| {
                if let Some(d) = device {
                    x.what = format!("{d}: {}", x.what);
                }
                x
            }));
    }

    /// A device anomaly makes the soak fail; broker ones are the broker's.
    pub fn device_clean(&self) -> bool {
        !self.anomalies.iter().any(|a| a.party == "device")
    }

    pub fn broker_clean(&self) -> bool {
        !self.anomalies.iter().any(|a| a.party == "broker")
    }

    /// The table, then every anomaly with the faults around it.
    pub fn table(&self) -> String {
        let mut t = String::from(
            "commands (cloud -> device), by the wire and the console:\n\
             qos   sent  delivered  lost:device  lost:broker-restart  lost:broker  lost:qos0-allowed  executed-twice  re-executed:beyond-window  duplicated  reordered  expired\n",
        );
        for (qos, r) in &self.commands {
            t.push_str(&format!(
                "{qos:>3}  {:>5}  {:>9}  {:>11}  {:>19}  {:>11}  {:>17}  {:>14}  {:>24}  {:>10}  {:>9}  {:>7}\n",
                r.sent, r.delivered, r.lost_by_device, r.lost_in_broker_kill, r.lost_by_broker, r.lost_qos0, r.executed_twice, r.reexecuted_beyond_window, r.duplicated, r.reordered, "-"
            ));
        }
        let r = &self.readings;
        t.push_str(&format!(
            "readings (device -> broker, QoS 1), by the wire:\n\
             buffered  acknowledged  lost  dropped(counted)  dropped(counter only)  duplicated  reordered\n\
             {:>8}  {:>12}  {:>4}  {:>16}  {:>21}  {:>10}  {:>9}\n",
            r.buffered, r.delivered, r.lost, r.dropped_counted, r.dropped_unannounced, r.duplicated, r.reordered
        ));
        t.push_str(&format!(
            "{} faults applied; expired: - (the soak publishes without expiry)\n",
            self.faults
        ));
        if self.anomalies.is_empty() {
            t.push_str("anomalies: none\n");
        }
        for a in &self.anomalies {
            t.push_str(&format!("anomaly ({}): {}", a.party, a.what));
            if !a.around.is_empty() {
                t.push_str(&format!(" [faults around it: {}]", a.around.join("; ")));
            }
            t.push('\n');
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(conn: u32, dir: Dir, topic: &str, pid: u16, payload: &str) -> WireEvent {
        WireEvent::Packet {
            conn,
            dir,
            packet: Packet::Publish {
                topic: topic.into(),
                qos: 1,
                dup: false,
                retain: false,
                pid: Some(pid),
                payload: payload.into(),
                expiry: None,
            },
        }
    }

    fn packet(conn: u32, dir: Dir, packet: Packet) -> WireEvent {
        WireEvent::Packet { conn, dir, packet }
    }

    fn rec(at: Instant, event: WireEvent) -> WireRecord {
        WireRecord { at, event }
    }

    fn cmd(id: &str) -> Event {
        Event::Cmd {
            id: id.into(),
            qos: 1,
            dup: false,
            payload: String::new(),
        }
    }

    #[test]
    fn each_loss_is_blamed_on_who_lost_it() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let sent = vec![
            Sent {
                id: "ok".into(),
                qos: 1,
                at: at(0),
            },
            Sent {
                id: "twice".into(),
                qos: 2,
                at: at(1),
            },
            Sent {
                id: "acked-lost".into(),
                qos: 1,
                at: at(2),
            },
            Sent {
                id: "in-kill".into(),
                qos: 1,
                at: at(3),
            },
            Sent {
                id: "q0".into(),
                qos: 0,
                at: at(4),
            },
            Sent {
                id: "liar".into(),
                qos: 1,
                at: at(5),
            },
            // After the restart, before the new subscription: nobody to deliver to.
            Sent {
                id: "no-session".into(),
                qos: 1,
                at: at(21),
            },
        ];
        let wire = vec![
            rec(
                at(10),
                publish(1, Dir::Down, "d/x/cmd", 1, r#"{"id":"ok"}"#),
            ),
            rec(
                at(11),
                WireEvent::Packet {
                    conn: 1,
                    dir: Dir::Up,
                    packet: Packet::Puback {
                        pid: 1,
                        reason: None,
                    },
                },
            ),
            rec(
                at(12),
                publish(1, Dir::Down, "d/x/cmd", 2, r#"{"id":"twice"}"#),
            ),
            rec(
                at(13),
                publish(1, Dir::Down, "d/x/cmd", 3, r#"{"id":"acked-lost"}"#),
            ),
            rec(
                at(14),
                WireEvent::Packet {
                    conn: 1,
                    dir: Dir::Up,
                    packet: Packet::Puback {
                        pid: 3,
                        reason: None,
                    },
                },
            ),
            rec(at(20), WireEvent::BrokerRestart),
            rec(
                at(25),
                WireEvent::Packet {
                    conn: 2,
                    dir: Dir::Down,
                    packet: Packet::Suback {
                        pid: 2,
                        codes: vec![1],
                    },
                },
            ),
            // Readings 1 and 2 published and acknowledged; 3 published, never acknowledged.
            rec(
                at(30),
                publish(2, Dir::Up, "d/x/telemetry", 5, r#"{"seq":1}"#),
            ),
            rec(
                at(31),
                WireEvent::Packet {
                    conn: 2,
                    dir: Dir::Down,
                    packet: Packet::Puback {
                        pid: 5,
                        reason: None,
                    },
                },
            ),
            rec(
                at(32),
                publish(2, Dir::Up, "d/x/telemetry", 6, r#"{"seq":3}"#),
            ),
            rec(
                at(33),
                publish(2, Dir::Up, "d/x/telemetry", 7, r#"{"seq":2}"#),
            ),
            rec(
                at(34),
                WireEvent::Packet {
                    conn: 2,
                    dir: Dir::Down,
                    packet: Packet::Puback {
                        pid: 7,
                        reason: None,
                    },
                },
            ),
        ];
        let events = vec![
            cmd("ok"),
            cmd("twice"),
            cmd("twice"),
            cmd("liar"),
            Event::TelemetryBuffered { seq: 1, depth: 1 },
            Event::TelemetryBuffered { seq: 2, depth: 2 },
            Event::TelemetryBuffered { seq: 3, depth: 3 },
            Event::TelemetryBuffered { seq: 4, depth: 4 },
            Event::TelemetryDropped { seq: 4, count: 1 },
        ];
        let faults = vec![(at(20), "broker kill -9, down 500 ms".to_string())];
        let l = Ledger::build(&sent, &events, &wire, &faults);
        let q1 = &l.commands[&1];
        assert_eq!(
            (
                q1.sent,
                q1.delivered,
                q1.lost_by_device,
                q1.lost_in_broker_kill
            ),
            (5, 2, 1, 2)
        );
        assert_eq!(l.commands[&2].executed_twice, 1);
        assert_eq!(l.commands[&0].lost_qos0, 1);
        let r = &l.readings;
        assert_eq!(
            (
                r.buffered,
                r.delivered,
                r.lost,
                r.dropped_counted,
                r.reordered
            ),
            (4, 2, 1, 1, 1)
        );
        let device: Vec<&str> = l
            .anomalies
            .iter()
            .filter(|a| a.party == "device")
            .map(|a| a.what.as_str())
            .collect();
        assert_eq!(device.len(), 5, "{device:#?}");
        assert!(device
            .iter()
            .any(|a| a.contains("liar") && a.contains("no delivery on the wire")));
        assert!(!l.device_clean());
        // A reading the device's counter says was dropped, whose console
        // line a power cut took: dropped, not lost.
        let mut wire2 = wire.clone();
        wire2.push(rec(
            at(40),
            publish(2, Dir::Up, "d/x/telemetry", 8, r#"{"seq":5,"dropped":2}"#),
        ));
        let l2 = Ledger::build(&sent, &events, &wire2, &faults);
        assert_eq!((l2.readings.lost, l2.readings.dropped_unannounced), (0, 1));
        assert!(l.table().contains("anomaly (device): command acked-lost (QoS 1) acknowledged by the device, never executed [faults around it: broker kill -9"));
    }

    /// Five other QoS 1 commands, sent, delivered and executed.
    fn five_others_between(
        t0: Instant,
        sent: &mut Vec<Sent>,
        events: &mut Vec<Event>,
        wire: &mut Vec<WireRecord>,
    ) {
        for k in 0..5 {
            let id = format!("c{k}");
            sent.push(Sent {
                id: id.clone(),
                qos: 1,
                at: t0,
            });
            events.push(cmd(&id));
            wire.push(rec(
                t0,
                publish(1, Dir::Down, "d/x/cmd", 2, &format!(r#"{{"id":"{id}"}}"#)),
            ));
        }
    }

    #[test]
    fn a_re_execution_past_the_dedupe_window_is_shown_not_blamed() {
        let t0 = Instant::now();
        let mut sent = vec![Sent {
            id: "old".into(),
            qos: 1,
            at: t0,
        }];
        let mut events = vec![cmd("old")];
        let mut wire = vec![rec(
            t0,
            publish(1, Dir::Down, "d/x/cmd", 1, r#"{"id":"old"}"#),
        )];
        five_others_between(t0, &mut sent, &mut events, &mut wire);
        events.push(cmd("old"));
        // A window of 3: 5 others between is past it; a window of 8 is not.
        let past = Ledger::build_with_window(&sent, &events, &wire, &[], 3);
        assert_eq!(
            (
                past.commands[&1].executed_twice,
                past.commands[&1].reexecuted_beyond_window
            ),
            (0, 1)
        );
        assert!(past.device_clean());
        let within = Ledger::build_with_window(&sent, &events, &wire, &[], 8);
        assert_eq!(within.commands[&1].executed_twice, 1);
        assert!(!within.device_clean());
        assert_eq!(dedupe_window(), 64, "the session core's inbox");
    }

    #[test]
    fn a_qos2_redelivery_after_the_brokers_pubrel_is_the_brokers() {
        let t0 = Instant::now();
        let mut sent = vec![Sent {
            id: "q2".into(),
            qos: 2,
            at: t0,
        }];
        let mut events = vec![cmd("q2")];
        let mut wire = vec![
            rec(t0, publish(1, Dir::Down, "d/x/cmd", 1, r#"{"id":"q2"}"#)),
            rec(
                t0,
                packet(
                    1,
                    Dir::Up,
                    Packet::Pubrec {
                        pid: 1,
                        reason: None,
                    },
                ),
            ),
        ];
        let released = {
            let mut w = wire.clone();
            w.push(rec(t0, packet(1, Dir::Down, Packet::Pubrel { pid: 1 })));
            w
        };
        five_others_between(t0, &mut sent, &mut events, &mut wire);
        events.push(cmd("q2"));
        let again = rec(t0, publish(2, Dir::Down, "d/x/cmd", 9, r#"{"id":"q2"}"#));
        wire.push(again.clone());
        // Without the broker's PUBREL on the wire: shown, blamed on nobody.
        let l = Ledger::build_with_window(&sent, &events, &wire, &[], 3);
        assert_eq!(l.commands[&2].reexecuted_beyond_window, 1);
        assert!(l.anomalies.is_empty(), "{:?}", l.anomalies);
        // With it: the broker re-sent what it had released.
        let mut w = released;
        w.extend(wire[2..].iter().cloned());
        let l = Ledger::build_with_window(&sent, &events, &w, &[], 3);
        assert!(l.device_clean());
        let broker: Vec<&Anomaly> = l.anomalies.iter().filter(|a| a.party == "broker").collect();
        assert_eq!(broker.len(), 1, "{:?}", l.anomalies);
        assert!(
            broker[0].what.contains("[MQTT-4.3.3-1]"),
            "{}",
            broker[0].what
        );
    }

    #[test]
    fn a_clean_run_has_a_clean_ledger() {
        let t0 = Instant::now();
        let sent = vec![Sent {
            id: "a".into(),
            qos: 2,
            at: t0,
        }];
        let wire = vec![rec(
            t0,
            publish(1, Dir::Down, "d/x/cmd", 1, r#"{"id":"a"}"#),
        )];
        let l = Ledger::build(&sent, &[cmd("a")], &wire, &[]);
        assert!(l.device_clean() && l.broker_clean());
        assert!(l.table().contains("anomalies: none"));
    }
}
