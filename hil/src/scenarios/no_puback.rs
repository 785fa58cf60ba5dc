//! The broker withholds the PUBACKs of the device's telemetry: the device
//! keeps each reading, gives the connection up after its acknowledgement
//! timeout, and on the next connection resends with DUP and (the session
//! kept) the same packet identifier; on the silent connection it never
//! resends (MQTT 5 forbids it [MQTT-4.4.0-1]; on 3.1.1 it is optional, and
//! this project's session core resends only on reconnect, on both). The
//! cloud gets every reading, in order.

use super::steps::{client_id, cloud_err, dut_connack, dut_subscribed, fail, on, telemetry_seq, STEP};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::rules::{Withhold, Withheld};
use crate::testbed::{Dir, Packet, Testbed, WireEvent};
use hil_session::{Bug, Event};
use std::time::{Duration, Instant};

pub static SCENARIO: Scenario = Scenario {
    name: "no_puback",
    about: "PUBACKs of the device's telemetry are withheld: it keeps the readings, gives the connection up (the sim after 2 s; at most 15 s), resends on the next one with DUP and the same packet id, none lost or reordered",
    advisor: &["MQTT_Publish_Retry_No_Puback"],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::LinkFaults),
    ],
    device: DeviceSpec {
        ack_timeout_ms: 2_000,
        ..DeviceSpec::DEFAULT
    },
    catches: &[Control::on_rumqttd(Bug::NoAckTimeout, Promise::PublishRetried)],
    run,
};

const READINGS: u32 = 3;
/// The longest a device may keep a connection that does not acknowledge.
pub(crate) const ACK_BOUND: Duration = Duration::from_secs(15);

/// (connection, packet id, DUP, seq) of every telemetry PUBLISH the device sent.
fn telemetry_sent(tb: &Testbed) -> Vec<(u32, Option<u16>, bool, u32)> {
    tb.wire()
        .records()
        .into_iter()
        .filter_map(|r| match r.event {
            WireEvent::Packet {
                conn,
                dir: Dir::Up,
                packet:
                    Packet::Publish {
                        topic,
                        pid,
                        dup,
                        payload,
                        ..
                    },
            } if topic.ends_with("/telemetry") => Some((conn, pid, dup, telemetry_seq(&payload)?)),
            _ => None,
        })
        .collect()
}

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::PublishRetried;
    let id = client_id(tb)?;
    let mut cloud = tb.cloud("cloud-telemetry")?;
    cloud
        .subscribe(&tb.topics(&id).telemetry(), 1)
        .map_err(cloud_err("cloud-telemetry"))?;
    dut_subscribed(tb)?;
    let conn = tb
        .wire()
        .last_connection()
        .ok_or_else(|| fail(P, "no connection on the wire"))?;
    let rule = tb
        .link()
        .install(Withhold::new(Withheld::PubackFor("/telemetry".into())));
    tb.t().runner("proxy: withhold the PUBACKs of telemetry");
    let mark = tb.dut.seen.len();
    let t0 = Instant::now();
    tb.dut
        .command(&format!("!telemetry {READINGS}"))
        .map_err(on(P))?;
    // The evidence: the device closes the silent connection itself.
    let closed = tb.wire().closed_by_device(conn, t0 + ACK_BOUND);
    drop(rule);
    tb.t().runner("proxy: PUBACKs pass again");
    let Some(closed) = closed else {
        return Err(fail(
            P,
            format!(
                "the broker withheld the PUBACKs for {} s and the device kept waiting on the same connection",
                ACK_BOUND.as_secs()
            ),
        ));
    };
    tb.t().note(format!(
        "the device gave the connection up {:.2} s after the readings",
        closed.duration_since(t0).as_secs_f32()
    ));
    let claimed: Vec<u32> = tb.dut.seen[mark..]
        .iter()
        .filter_map(|e| match e {
            Event::TelemetryBuffered { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    let sp = dut_connack(tb, "CONNACK after the silent connection", P)?;
    // Every reading reaches the cloud, first arrivals in order.
    let deadline = Instant::now() + STEP;
    let mut seqs: Vec<u32> = Vec::new();
    while seqs.len() < claimed.len() {
        let Some(msg) = cloud.recv(deadline).map_err(cloud_err("cloud-telemetry"))? else {
            return Err(fail(
                P,
                format!("readings {claimed:?} were buffered; the cloud got only {seqs:?}"),
            ));
        };
        let text = msg.text();
        tb.t().cloud(format!("telemetry qos={} dup={} {text}", msg.qos, msg.dup as u8));
        let Some(seq) = telemetry_seq(&text) else { continue };
        if !seqs.contains(&seq) {
            seqs.push(seq);
        }
    }
    if seqs != claimed {
        return Err(fail(
            P,
            format!("the console buffered {claimed:?}; the cloud got {seqs:?} (lost or reordered)"),
        ));
    }
    // The wire: what was sent on the silent connection, and its resends
    // (the cloud may have had every reading from the first sends already:
    // wait for the resends themselves).
    let resent_all = |records: &[crate::testbed::WireRecord]| {
        claimed.iter().all(|seq| {
            records.iter().any(|r| matches!(&r.event, WireEvent::Packet { conn: c, dir: Dir::Up, packet: Packet::Publish { topic, payload, .. } } if *c > conn && topic.ends_with("/telemetry") && telemetry_seq(payload) == Some(*seq)))
        })
    };
    tb.wire().wait_until(Instant::now() + STEP, resent_all);
    // And the console's side of it: every reading acknowledged, so the
    // transcript holds the device's lines for each resend (the wire is seen
    // before the console's lines are read).
    for seq in &claimed {
        let seen = |e: &Event| matches!(e, Event::TelemetryAcked { seq: s } if s == seq);
        if !tb.dut.seen[mark..].iter().any(seen) {
            tb.dut
                .expect("`telemetry.acked` of every reading", STEP, seen)
                .map_err(on(P))?;
        }
    }
    let sent = telemetry_sent(tb);
    let first: Vec<_> = sent.iter().filter(|s| s.0 == conn && claimed.contains(&s.3)).collect();
    for s in &claimed {
        let on_silent = first.iter().filter(|f| f.3 == *s).count();
        if on_silent > 1 {
            return Err(fail(
                P,
                format!("seq {s} was resent on the connection that withheld its PUBACK: MQTT 5 forbids it [MQTT-4.4.0-1] and it cannot help on 3.1.1"),
            ));
        }
        let Some(orig) = first.iter().find(|f| f.3 == *s) else {
            continue;
        };
        let resend = sent.iter().find(|r| r.0 > conn && r.3 == *s);
        let Some(resend) = resend else {
            return Err(fail(
                P,
                format!("seq {s} was never acknowledged and never resent on a new connection"),
            ));
        };
        if !resend.2 {
            return Err(fail(
                Promise::ResendCarriesDup,
                format!("seq {s} was resent without DUP"),
            ));
        }
        if sp && resend.1 != orig.1 {
            return Err(fail(
                P,
                format!(
                    "seq {s}: first sent as pid {:?}, resent in the kept session as pid {:?}: the broker cannot match them",
                    orig.1, resend.1
                ),
            ));
        }
    }
    tb.t().runner(format!(
        "verdict: {} readings kept through the withheld PUBACKs, resent with DUP{} on the next connection, delivered in order",
        claimed.len(),
        if sp { " and the same packet ids" } else { "" }
    ));
    Ok(())
}
