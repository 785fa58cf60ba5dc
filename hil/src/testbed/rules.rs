//! Packet rules: the MQTT-aware half of the fault proxy. A rule sees every
//! packet that crosses the proxy and answers what to do with it; rules are
//! installed with a guard and removed when the guard drops (turmoil's shape),
//! so a new fault (withhold a CONNACK, rewrite a QoS) is one new rule, not a
//! new flag in the proxy.

use super::wire::{Dir, Packet};
pub use hil_packets::tap::Frame;
use std::time::Duration;

/// What the proxy does with one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward it unchanged.
    Pass,
    /// Forward it after this long (later packets of the connection wait too).
    Delay(Duration),
    /// Swallow it: the far end never sees it; the connection goes on.
    Drop,
    /// Forward this packet instead (a rewrite: the tap logs what was sent).
    Replace(Frame),
    /// Stall the connection in this direction from this packet on: nothing
    /// more is forwarded until the connection is cut. The runner is told.
    Hold,
    /// Forward it, then reset the connection both ways (RST).
    CutAfter,
    /// Forward these packets instead, in this order (a reorder releases a
    /// packet it held behind the current one).
    Then(Vec<Frame>),
}

/// A packet rule. `conn` numbers the proxy's connections from 1.
pub trait Rule: Send {
    fn on_packet(&mut self, conn: u32, dir: Dir, frame: &Frame) -> Action;
}

/// Holds back the next SUBSCRIBE a device sends, and all that its connection
/// sends after it (one connection, then the rule is spent). The moment
/// between CONNACK and SUBACK, held open for the runner to cut there.
#[derive(Default)]
pub struct HoldNextSubscribe {
    spent: bool,
}

impl Rule for HoldNextSubscribe {
    fn on_packet(&mut self, _conn: u32, dir: Dir, frame: &Frame) -> Action {
        if !self.spent && dir == Dir::Up && matches!(frame.packet, Packet::Subscribe { .. }) {
            self.spent = true;
            return Action::Hold;
        }
        Action::Pass
    }
}

/// Cuts the link right after the broker's PUBLISH carrying each marker has
/// been forwarded to the device (each marker once): the message may or may
/// not be processed, and its acknowledgement is lost.
pub struct CutAfterPublishes {
    markers: Vec<String>,
}

impl CutAfterPublishes {
    pub fn new(markers: Vec<String>) -> Self {
        CutAfterPublishes { markers }
    }
}

impl Rule for CutAfterPublishes {
    fn on_packet(&mut self, _conn: u32, dir: Dir, frame: &Frame) -> Action {
        if let (Dir::Down, Packet::Publish { payload, .. }) = (dir, &frame.packet) {
            if let Some(i) = self
                .markers
                .iter()
                .position(|m| payload.contains(m.as_str()))
            {
                self.markers.swap_remove(i);
                return Action::CutAfter;
            }
        }
        Action::Pass
    }
}

/// What a [`Withhold`] rule swallows from the broker (Device Advisor's
/// "no ack" cases).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Withheld {
    Connack,
    Suback,
    Pingresp,
    /// PUBACKs (and PUBRECs) of the device's PUBLISHes on topics ending so.
    PubackFor(String),
}

/// Swallows every broker packet of one kind while installed: the device's
/// connection stays up and hears nothing back for that packet.
pub struct Withhold {
    what: Withheld,
    /// (connection, packet id) of the device PUBLISHes whose ack to swallow.
    pids: std::collections::HashSet<(u32, u16)>,
}

impl Withhold {
    pub fn new(what: Withheld) -> Self {
        Withhold {
            what,
            pids: Default::default(),
        }
    }
}

impl Rule for Withhold {
    fn on_packet(&mut self, conn: u32, dir: Dir, frame: &Frame) -> Action {
        let drop = match (&self.what, dir, &frame.packet) {
            (
                Withheld::PubackFor(suffix),
                Dir::Up,
                Packet::Publish {
                    topic,
                    pid: Some(pid),
                    ..
                },
            ) => {
                if topic.ends_with(suffix.as_str()) {
                    self.pids.insert((conn, *pid));
                }
                false
            }
            (
                Withheld::PubackFor(_),
                Dir::Down,
                Packet::Puback { pid, .. } | Packet::Pubrec { pid, .. },
            ) => self.pids.contains(&(conn, *pid)),
            (Withheld::Connack, Dir::Down, Packet::Connack { .. }) => true,
            (Withheld::Suback, Dir::Down, Packet::Suback { .. }) => true,
            (Withheld::Pingresp, Dir::Down, Packet::Pingresp) => true,
            _ => false,
        };
        if drop {
            Action::Drop
        } else {
            Action::Pass
        }
    }
}

/// A broker that breaks an MQTT rule on purpose, so tests can prove the
/// conformance monitor names the rule (and never blames the device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerFault {
    /// Delivers QoS 1 PUBLISHes at QoS 2, above what it granted.
    RaiseQos,
    /// Clears DUP on the PUBLISHes it re-delivers.
    ClearDup,
    /// Answers session_present=0 for a session it kept.
    DenySessionPresent,
    /// Delivers the second of two PUBLISHes to the device before the first.
    ReorderPublishes,
    /// Ignores the Last Will of the device's CONNECT (never publishes it).
    SwallowWill,
}

pub const ALL_FAULTS: [BrokerFault; 5] = [
    BrokerFault::RaiseQos,
    BrokerFault::ClearDup,
    BrokerFault::DenySessionPresent,
    BrokerFault::ReorderPublishes,
    BrokerFault::SwallowWill,
];

impl BrokerFault {
    pub fn name(self) -> &'static str {
        match self {
            BrokerFault::RaiseQos => "raise-qos",
            BrokerFault::ClearDup => "clear-dup",
            BrokerFault::DenySessionPresent => "deny-session-present",
            BrokerFault::ReorderPublishes => "reorder-publishes",
            BrokerFault::SwallowWill => "swallow-will",
        }
    }

    /// The packet rule that plays this misbehaving broker.
    pub fn rule(self) -> FaultRule {
        FaultRule {
            fault: self,
            held: None,
        }
    }
}

/// A [`BrokerFault`] installed on the proxy, with what it holds back.
pub struct FaultRule {
    fault: BrokerFault,
    held: Option<Frame>,
}

/// The CONNECT as the broker would see it without its Will (the
/// swallow-will fault): re-encoded from its decoded fields.
fn without_will(frame: &Frame) -> Option<Frame> {
    let Packet::Connect {
        client_id,
        clean,
        keepalive,
        level,
        session_expiry,
        max_packet_size,
        will: Some(_),
        ..
    } = &frame.packet
    else {
        return None;
    };
    let version = if *level == 5 {
        hil_packets::MqttVersion::V5
    } else {
        hil_packets::MqttVersion::V3_1_1
    };
    let packet = hil_packets::build::connect(
        version,
        &hil_packets::build::Connect {
            client_id,
            clean: *clean,
            keepalive_s: *keepalive,
            will: None,
            session_expiry_s: *session_expiry,
            max_packet_size: *max_packet_size,
            username: None,
            password: None,
        },
    )
    .ok()?;
    use mqtt_protocol_core::mqtt::packet::GenericPacketTrait;
    let mut packet_out = frame.packet.clone();
    if let Packet::Connect {
        will, will_payload, ..
    } = &mut packet_out
    {
        *will = None;
        *will_payload = None;
    }
    Some(Frame {
        packet: packet_out,
        bytes: packet.to_continuous_buffer(),
    })
}

impl Rule for FaultRule {
    fn on_packet(&mut self, conn: u32, dir: Dir, frame: &Frame) -> Action {
        match self.fault {
            BrokerFault::ReorderPublishes => {
                if dir != Dir::Down || !matches!(frame.packet, Packet::Publish { .. }) {
                    return Action::Pass;
                }
                match self.held.take() {
                    None => {
                        self.held = Some(frame.clone());
                        Action::Drop
                    }
                    Some(first) => Action::Then(vec![frame.clone(), first]),
                }
            }
            BrokerFault::SwallowWill if dir == Dir::Up => match without_will(frame) {
                Some(f) => Action::Replace(f),
                None => Action::Pass,
            },
            BrokerFault::SwallowWill => Action::Pass,
            mut other => other.on_packet(conn, dir, frame),
        }
    }
}

impl std::str::FromStr for BrokerFault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL_FAULTS
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = ALL_FAULTS.iter().map(|f| f.name()).collect();
                format!("unknown broker fault `{s}`: {}", names.join(", "))
            })
    }
}

impl Rule for BrokerFault {
    fn on_packet(&mut self, _conn: u32, dir: Dir, frame: &Frame) -> Action {
        if dir != Dir::Down || frame.bytes.len() < 3 {
            return Action::Pass;
        }
        let mut out = frame.clone();
        match (*self, &mut out.packet) {
            // PUBLISH fixed header: 0011 DUP QoS(2) RETAIN.
            (BrokerFault::RaiseQos, Packet::Publish { qos, .. }) if *qos == 1 => {
                *qos = 2;
                out.bytes[0] = (out.bytes[0] & !0x06) | (2 << 1);
            }
            (BrokerFault::ClearDup, Packet::Publish { dup, .. }) if *dup => {
                *dup = false;
                out.bytes[0] &= !0x08;
            }
            // CONNACK: fixed header, remaining length (one byte here), then
            // the acknowledge flags whose bit 0 is session_present.
            (
                BrokerFault::DenySessionPresent,
                Packet::Connack {
                    session_present, ..
                },
            ) if *session_present && out.bytes[1] < 0x80 => {
                *session_present = false;
                out.bytes[2] &= !0x01;
            }
            _ => return Action::Pass,
        }
        Action::Replace(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(packet: Packet) -> Frame {
        Frame {
            packet,
            bytes: vec![0x32, 0, 0],
        }
    }

    fn publish(payload: &str) -> Frame {
        frame(Packet::Publish {
            topic: "t".into(),
            qos: 1,
            dup: false,
            retain: false,
            pid: Some(1),
            payload: payload.into(),
            expiry: None,
        })
    }

    #[test]
    fn withhold_swallows_only_its_kind_and_only_the_acks_of_its_topic() {
        let mut r = Withhold::new(Withheld::PubackFor("/telemetry".into()));
        let mut up = publish("{}");
        if let Packet::Publish { topic, pid, .. } = &mut up.packet {
            *topic = "devices/x/telemetry".into();
            *pid = Some(7);
        }
        assert_eq!(r.on_packet(1, Dir::Up, &up), Action::Pass);
        let ack = |pid| frame(Packet::Puback { pid, reason: None });
        assert_eq!(r.on_packet(1, Dir::Down, &ack(7)), Action::Drop);
        assert_eq!(
            r.on_packet(1, Dir::Down, &ack(8)),
            Action::Pass,
            "another publish's ack"
        );
        assert_eq!(
            r.on_packet(2, Dir::Down, &ack(7)),
            Action::Pass,
            "another connection"
        );
        let mut c = Withhold::new(Withheld::Connack);
        let connack = frame(Packet::Connack {
            session_present: false,
            rc: 0,
        });
        assert_eq!(c.on_packet(1, Dir::Down, &connack), Action::Drop);
        assert_eq!(
            c.on_packet(1, Dir::Down, &frame(Packet::Pingresp)),
            Action::Pass
        );
    }

    #[test]
    fn hold_next_subscribe_holds_once_and_only_upstream() {
        let mut r = HoldNextSubscribe::default();
        let sub = frame(Packet::Subscribe {
            pid: 1,
            filters: vec![("a".into(), 1)],
        });
        assert_eq!(r.on_packet(1, Dir::Down, &sub), Action::Pass);
        assert_eq!(
            r.on_packet(1, Dir::Up, &frame(Packet::Pingreq)),
            Action::Pass
        );
        assert_eq!(r.on_packet(1, Dir::Up, &sub), Action::Hold);
        assert_eq!(r.on_packet(2, Dir::Up, &sub), Action::Pass);
    }

    #[test]
    fn cut_after_publishes_cuts_once_per_marker_downstream() {
        let mut r = CutAfterPublishes::new(vec!["\"a\"".into()]);
        assert_eq!(
            r.on_packet(1, Dir::Up, &publish("{\"id\":\"a\"}")),
            Action::Pass
        );
        assert_eq!(
            r.on_packet(1, Dir::Down, &publish("{\"id\":\"b\"}")),
            Action::Pass
        );
        assert_eq!(
            r.on_packet(1, Dir::Down, &publish("{\"id\":\"a\"}")),
            Action::CutAfter
        );
        assert_eq!(
            r.on_packet(1, Dir::Down, &publish("{\"id\":\"a\"}")),
            Action::Pass
        );
    }
}
