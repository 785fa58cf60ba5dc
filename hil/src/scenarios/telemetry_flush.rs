//! Readings taken during a Wi-Fi outage are published in order, contiguous,
//! none lost; a resend carries DUP.

use super::steps::{wifi_off, STEP, client_id, cloud_err, dut_subscribed, fail, on, telemetry_seq};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::{Dir, Packet, Testbed};
use hil_session::{Bug, Event};
use std::time::Instant;

pub static SCENARIO: Scenario = Scenario {
    name: "telemetry_flush",
    about: "readings taken during a Wi-Fi outage are published in order, contiguous, none lost",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::WifiToggle),
    ],
    device: DeviceSpec::DEFAULT,
    catches: &[Control::on_rumqttd(
        Bug::NoOutbox,
        Promise::TelemetryFlushed,
    )],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::TelemetryFlushed;
    const M: u32 = 5;
    let id = client_id(tb)?;
    let mut cloud = tb.cloud("cloud-telemetry")?;
    cloud
        .subscribe(&tb.topics(&id).telemetry(), 1)
        .map_err(cloud_err("cloud-telemetry"))?;
    dut_subscribed(tb)?;
    wifi_off(tb, P)?;
    let mark = tb.dut.seen.len();
    tb.dut.command(&format!("!telemetry {M}")).map_err(on(P))?;
    // The device's claim: the readings it says it buffered while offline.
    let buffered = |seen: &[Event]| -> Vec<u32> {
        seen.iter()
            .filter_map(|e| match e {
                Event::TelemetryBuffered { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    };
    while buffered(&tb.dut.seen[mark..]).len() < M as usize {
        tb.dut
            .expect("`telemetry.buffered` lines", STEP, |e| {
                matches!(e, Event::TelemetryBuffered { .. })
            })
            .map_err(on(P))?;
    }
    let claimed = buffered(&tb.dut.seen[mark..]);
    let wire_mark = tb.wire().packets(Dir::Up).len();
    tb.dut.command("!wifi on").map_err(on(P))?;
    let deadline = Instant::now() + STEP;
    let mut seqs: Vec<u32> = Vec::new();
    let mut last_new = 0;
    while seqs.len() < M as usize {
        let Some(msg) = cloud.recv(deadline).map_err(cloud_err("cloud-telemetry"))? else {
            return Err(fail(
                P,
                format!("only {} of {M} readings arrived: {seqs:?}", seqs.len()),
            ));
        };
        let text = msg.text();
        tb.t().cloud(format!(
            "telemetry qos={} dup={} {text}",
            msg.qos, msg.dup as u8
        ));
        let Some(seq) = telemetry_seq(&text) else {
            return Err(fail(P, format!("telemetry without a seq: {text}")));
        };
        if seqs.contains(&seq) {
            if !msg.dup {
                return Err(fail(
                    Promise::ResendCarriesDup,
                    format!("seq {seq} arrived twice, the second time without DUP"),
                ));
            }
            continue;
        }
        if seq <= last_new {
            return Err(fail(P, format!("seq {seq} arrived after {last_new}")));
        }
        last_new = seq;
        seqs.push(seq);
    }
    let first = seqs[0];
    if seqs != (first..first + M).collect::<Vec<_>>() {
        return Err(fail(P, format!("sequence not contiguous: {seqs:?}")));
    }
    // Cross-check the claim: the cloud got exactly the readings the console
    // said were buffered, not fresh ones numbered to look right.
    if seqs != claimed {
        return Err(fail(
            P,
            format!("the console says it buffered seq {claimed:?}, the cloud got seq {seqs:?}"),
        ));
    }
    // The wire side: after the outage the device published those readings and
    // no others; a resend carries DUP and the same payload.
    let mut published: Vec<(u32, String)> = Vec::new();
    for p in tb.wire().packets(Dir::Up).into_iter().skip(wire_mark) {
        let Packet::Publish { topic, dup, payload, .. } = p else { continue };
        if !topic.ends_with("/telemetry") {
            continue;
        }
        let Some(seq) = telemetry_seq(&payload) else { continue };
        if !claimed.contains(&seq) {
            return Err(fail(
                P,
                format!("the wire shows seq {seq} published after the outage; the console buffered {claimed:?}"),
            ));
        }
        if let Some((_, first)) = published.iter().find(|(s, _)| *s == seq) {
            if !dup {
                return Err(fail(
                    Promise::ResendCarriesDup,
                    format!("the device sent seq {seq} again without DUP"),
                ));
            }
            if *first != payload {
                return Err(fail(
                    P,
                    format!("seq {seq} was published with two payloads: {first} and {payload}"),
                ));
            }
        }
        published.push((seq, payload));
    }
    tb.t().runner(format!(
        "verdict: {M} readings, seq {first}..{}",
        first + M - 1
    ));
    Ok(())
}
