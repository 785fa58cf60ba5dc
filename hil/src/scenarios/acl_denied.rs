//! Topic ACLs: the broker lets a logged-in device publish only under
//! `devices/<its client id>/` and read only its own `cmd`. This device is
//! provisioned to send its readings to a shared ingest topic outside them.
//!
//! Judged by the wire and the cloud side:
//! - its own topics work: the SUBSCRIBE to its `cmd` is granted and a
//!   command arrives (the login and the ACL admit what they should);
//! - the readings never reach a subscriber of the ingest topic;
//! - MQTT 5: the broker answers each with PUBACK 0x87 (Not authorized); the
//!   console must say `telemetry.refused` with that reason, never `acked`;
//! - each refused reading is published once: a second reading is the
//!   marker, and by its PUBACK the first has not been sent again.
//!
//! On 3.1.1 a broker cannot say no (a PUBACK has no reason code), so it
//! drops the message and acknowledges it; the device cannot know, and only
//! the cloud side proves the reading went nowhere.

use super::steps::{client_id, cloud_err, dut_subscribed, fail, on, rig, sentinel, telemetry_seq, STEP};
use super::{Control, ControlBroker, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec, LoginMode};
use crate::testbed::{Dir, Packet, RigError, Testbed, WireEvent, WireRecord};
use hil_session::{Bug, Event, MqttVersion};
use std::time::Instant;

/// Outside every device's own topics, so the ACL denies it to all of them.
const INGEST: &str = "ingest/telemetry";

pub static SCENARIO: Scenario = Scenario {
    name: "acl_denied",
    about: "a publish outside the device's own topics is refused by the broker's ACL: MQTT 5 PUBACK 0x87 is reported refused, never delivered, and not sent again; on 3.1.1 the cloud side proves it never arrived",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::ScenarioConfig),
        Need::Can(Capability::Login),
        Need::BrokerAcl,
    ],
    device: DeviceSpec {
        login: LoginMode::Good,
        telemetry_topic: Some(INGEST),
        ..DeviceSpec::DEFAULT
    },
    catches: &[
        Control::new(Bug::IgnoreRefusal, Promise::RefusalReported, ControlBroker::Mosquitto, MqttVersion::V5),
        Control::new(Bug::RetryRefused, Promise::RefusedNotRetried, ControlBroker::Mosquitto, MqttVersion::V5),
    ],
    run,
};

/// The device's readings to the ingest topic, and the broker's answer to
/// each: (seq, pid, the PUBACK's reason if it came).
fn readings(records: &[WireRecord]) -> Vec<(u32, Option<u16>, Option<Option<u8>>)> {
    let mut out: Vec<(u32, Option<u16>, Option<Option<u8>>)> = Vec::new();
    for r in records {
        match &r.event {
            WireEvent::Packet {
                dir: Dir::Up,
                packet: Packet::Publish { topic, pid, payload, .. },
                ..
            } if topic == INGEST => {
                if let Some(seq) = telemetry_seq(payload) {
                    out.push((seq, *pid, None));
                }
            }
            WireEvent::Packet {
                dir: Dir::Down,
                packet: Packet::Puback { pid, reason },
                ..
            } => {
                if let Some(e) = out
                    .iter_mut()
                    .rev()
                    .find(|(_, p, ack)| *p == Some(*pid) && ack.is_none())
                {
                    e.2 = Some(*reason);
                }
            }
            _ => {}
        }
    }
    out
}

fn run(tb: &mut Testbed) -> Outcome {
    let v5 = tb.mqtt() == MqttVersion::V5;
    let id = client_id(tb)?;
    let mut ingest = tb.cloud("cloud-ingest")?;
    ingest
        .subscribe(INGEST, 1)
        .map_err(cloud_err("cloud-ingest"))?;
    // Its own topics: the ACL admits them.
    let granted = dut_subscribed(tb)?;
    if granted >= 0x80 {
        return Err(rig(RigError::BrokerBehaviour(format!(
            "the broker's ACL refused the device its own {} (0x{granted:02x})",
            tb.topics(&id).cmd()
        ))));
    }
    let mut cloud = tb.cloud("cloud-commands")?;
    let cmd = tb.topics(&id).cmd();
    sentinel(tb, &mut cloud, &cmd, Promise::RefusalReported)?;
    // Two readings, one at a time: the second is taken only once the
    // broker has answered the first, so it marks "after the first".
    let mut answered: Vec<(u32, Option<u8>)> = Vec::new();
    for n in 0..2 {
        const P: Promise = Promise::RefusalReported;
        tb.dut.command("!telemetry 1").map_err(on(P))?;
        // The first reading the broker has answered that was not answered before.
        let newly_answered = |records: &[WireRecord]| {
            readings(records).into_iter().find_map(|(seq, _, ack)| match ack {
                Some(reason) if !answered.iter().any(|(s, _)| *s == seq) => Some((seq, reason)),
                _ => None,
            })
        };
        let deadline = Instant::now() + STEP;
        tb.wire()
            .wait_until(deadline, |records| newly_answered(records).is_some());
        let Some((seq, reason)) = newly_answered(&tb.wire().records()) else {
            return Err(fail(
                P,
                format!(
                    "reading {} to {INGEST}: no PUBLISH and PUBACK within the step (the wire: {:?})",
                    n + 1,
                    readings(&tb.wire().records())
                ),
            ));
        };
        let refused = reason.is_some_and(|r| r >= 0x80);
        if v5 && !refused {
            return Err(rig(RigError::BrokerBehaviour(format!(
                "the broker accepted a publish to {INGEST}, which its ACL denies this device (PUBACK {reason:?})"
            ))));
        }
        // The console's claim for this reading, cross-checked with the wire;
        // a resend it announces is counted on the wire.
        let said = tb
            .dut
            .expect("the reading's fate on its console", STEP, |e| {
                matches!(e, Event::TelemetryAcked { seq: s }
                    | Event::TelemetryRefused { seq: s, .. }
                    | Event::TelemetrySent { seq: s, dup: true } if *s == seq)
            })
            .map_err(on(P))?;
        if matches!(said, Event::TelemetrySent { .. }) {
            let deadline = Instant::now() + STEP;
            tb.wire().wait_until(deadline, |records| {
                readings(records).iter().filter(|(s, _, _)| *s == seq).count() > 1
            });
            let sent = readings(&tb.wire().records())
                .iter()
                .filter(|(s, _, _)| *s == seq)
                .count();
            let answer = reason.map_or("without a reason code".into(), |r| format!("0x{r:02x}"));
            return Err(if sent > 1 {
                fail(
                    Promise::RefusedNotRetried,
                    format!("reading {seq} was answered with PUBACK {answer} and the device sent it again: {sent} PUBLISHes on the wire so far"),
                )
            } else {
                fail(
                    P,
                    format!("the console says reading {seq} was sent again; the wire shows it once, answered with PUBACK {answer}"),
                )
            });
        }
        match (said, reason) {
            (Event::TelemetryRefused { reason: r, .. }, Some(w)) if refused && r == w => {}
            (Event::TelemetryAcked { .. }, _) if !refused => {}
            (said, _) => {
                return Err(fail(
                    P,
                    format!(
                        "the console says `{}` for reading {seq}; the wire shows PUBACK {}",
                        said.format(),
                        reason.map_or("(no reason code: success)".into(), |r| format!("0x{r:02x}"))
                    ),
                ))
            }
        }
        answered.push((seq, reason));
    }
    // Once each: by the second reading's PUBACK, the first went out once.
    let got = readings(&tb.wire().records());
    let first = answered[0].0;
    let sent = got.iter().filter(|(s, _, _)| *s == first).count();
    if sent != 1 {
        return Err(fail(
            Promise::RefusedNotRetried,
            format!("reading {first} was refused and published {sent} times by the second reading's answer"),
        ));
    }
    // The cloud side: nothing the device sent reached the ingest topic's
    // subscriber. A marker the cloud publishes there after the broker
    // answered both readings bounds the wait (no quiet period).
    let marker = format!("{{\"marker\":\"{}\"}}", tb.nonce());
    cloud
        .publish(INGEST, marker.as_bytes(), 1, false)
        .map_err(cloud_err("cloud-commands"))?;
    let deadline = Instant::now() + STEP;
    loop {
        let Some(m) = ingest.recv(deadline).map_err(cloud_err("cloud-ingest"))? else {
            return Err(rig(RigError::BrokerBehaviour(format!(
                "the cloud's own marker on {INGEST} never arrived"
            ))));
        };
        let text = m.text();
        if text == marker {
            break;
        }
        if telemetry_seq(&text).is_some() {
            return Err(rig(RigError::BrokerBehaviour(format!(
                "the broker delivered a reading its ACL denies: {text}"
            ))));
        }
    }
    let how = if v5 {
        format!("refused with 0x{:02x} and reported so", answered[0].1.unwrap_or(0))
    } else {
        "dropped by the broker (3.1.1 has no refusal)".to_string()
    };
    tb.t().runner(format!(
        "verdict: its own topics admitted; {} readings to {INGEST} {how}, each published once, none delivered"
        , answered.len()
    ));
    Ok(())
}
