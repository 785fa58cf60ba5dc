//! Packet rules: the MQTT-aware half of the fault proxy. A rule sees every
//! packet that crosses the proxy and answers what to do with it; rules are
//! installed with a guard and removed when the guard drops (turmoil's shape),
//! so a new fault (withhold a CONNACK, rewrite a QoS) is one new rule, not a
//! new flag in the proxy.

use super::wire::{Dir, Packet};
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
    /// Forward these bytes instead (a rewritten packet).
    Replace(Vec<u8>),
    /// Stall the connection in this direction from this packet on: nothing
    /// more is forwarded until the connection is cut. The runner is told.
    Hold,
    /// Forward it, then reset the connection both ways (RST).
    CutAfter,
}

/// A packet rule. `conn` numbers the proxy's connections from 1.
pub trait Rule: Send {
    fn on_packet(&mut self, conn: u32, dir: Dir, packet: &Packet) -> Action;
}

/// Holds back the next SUBSCRIBE a device sends, and all that its connection
/// sends after it (one connection, then the rule is spent). The moment
/// between CONNACK and SUBACK, held open for the runner to cut there.
#[derive(Default)]
pub struct HoldNextSubscribe {
    spent: bool,
}

impl Rule for HoldNextSubscribe {
    fn on_packet(&mut self, _conn: u32, dir: Dir, packet: &Packet) -> Action {
        if !self.spent && dir == Dir::Up && matches!(packet, Packet::Subscribe { .. }) {
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
    fn on_packet(&mut self, _conn: u32, dir: Dir, packet: &Packet) -> Action {
        if let (Dir::Down, Packet::Publish { payload, .. }) = (dir, packet) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(payload: &str) -> Packet {
        Packet::Publish {
            topic: "t".into(),
            qos: 1,
            dup: false,
            retain: false,
            pid: Some(1),
            payload: payload.into(),
            expiry: None,
        }
    }

    #[test]
    fn hold_next_subscribe_holds_once_and_only_upstream() {
        let mut r = HoldNextSubscribe::default();
        let sub = Packet::Subscribe {
            pid: 1,
            filters: vec![("a".into(), 1)],
        };
        assert_eq!(r.on_packet(1, Dir::Down, &sub), Action::Pass);
        assert_eq!(r.on_packet(1, Dir::Up, &Packet::Pingreq), Action::Pass);
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
