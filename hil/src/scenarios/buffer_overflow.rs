//! An outage that overflows the telemetry buffer drops the oldest, counts
//! the drops on the console and in telemetry, and flushes the rest in order.

use super::steps::{wifi_off, STEP, client_id, cloud_err, dut_subscribed, fail, json_u32, on, telemetry_seq};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::Testbed;
use hil_session::{Bug, Event};
use std::time::Instant;

/// The device's buffer, and the readings taken offline.
const CAP: u32 = 8;
const TAKEN: u32 = 20;

pub static SCENARIO: Scenario = Scenario {
    name: "buffer_overflow",
    about: "an outage that overflows the telemetry buffer drops the oldest, counts the drops on the console and in telemetry, flushes the rest in order",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::WifiToggle),
        // The buffer size is the scenario's: only a backend that applies it.
        Need::Can(Capability::ScenarioConfig),
    ],
    device: DeviceSpec {
        outbox_capacity: CAP as u64,
        ..DeviceSpec::DEFAULT
    },
    catches: &[Control::on_rumqttd(Bug::UnboundedBuffer, Promise::BoundedBuffer)],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::DropsCounted;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    let mut cloud = tb.cloud("cloud-overflow")?;
    cloud
        .subscribe(&tb.topics(&id).telemetry(), 1)
        .map_err(cloud_err("cloud-overflow"))?;
    wifi_off(tb, P)?;
    tb.dut
        .command(&format!("!telemetry {TAKEN}"))
        .map_err(on(P))?;
    tb.dut.drain();
    let depth_max = tb
        .dut
        .seen
        .iter()
        .filter_map(|e| match e {
            Event::TelemetryBuffered { depth, .. } => Some(*depth),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    if depth_max > CAP {
        return Err(fail(
            Promise::BoundedBuffer,
            format!("the buffer grew to {depth_max} readings; its capacity is {CAP}: memory is unbounded"),
        ));
    }
    let dropped: Vec<u32> = tb
        .dut
        .seen
        .iter()
        .filter_map(|e| match e {
            Event::TelemetryDropped { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    if dropped.len() as u32 != TAKEN - CAP {
        return Err(fail(
            P,
            format!(
                "{} drops reported on the console, expected {}",
                dropped.len(),
                TAKEN - CAP
            ),
        ));
    }
    if dropped.windows(2).any(|w| w[1] <= w[0]) {
        return Err(fail(P, format!("drops not oldest-first: {dropped:?}")));
    }
    tb.dut.command("!wifi on").map_err(on(P))?;
    let deadline = Instant::now() + STEP;
    let mut got: Vec<(u32, u32)> = Vec::new();
    let mut new_reading_taken = false;
    while got.len() < (CAP + 1) as usize {
        if got.len() == CAP as usize && !new_reading_taken {
            // The buffer has flushed (the device has its PUBACKs, so the new
            // reading drops nothing): one more reading, which reports the drops.
            let last = dropped.last().map(|s| s + CAP).unwrap_or(CAP);
            let acked = |e: &Event| matches!(e, Event::TelemetryAcked { seq } if *seq == last);
            if !tb.dut.seen.iter().any(acked) {
                tb.dut
                    .expect("the flush acknowledged", STEP, acked)
                    .map_err(on(P))?;
            }
            tb.dut.command("!telemetry 1").map_err(on(P))?;
            new_reading_taken = true;
        }
        let Some(m) = cloud.recv(deadline).map_err(cloud_err("cloud-overflow"))? else {
            return Err(fail(
                P,
                format!(
                    "only {} readings arrived after the outage: {got:?}",
                    got.len()
                ),
            ));
        };
        let text = m.text();
        let seq = telemetry_seq(&text).ok_or_else(|| fail(P, format!("no seq in {text}")))?;
        let d = json_u32(&text, "dropped").unwrap_or(0);
        if !got.iter().any(|(s, _)| *s == seq) {
            got.push((seq, d));
        }
        tb.t().cloud(format!("telemetry {text}"));
    }
    let seqs: Vec<u32> = got.iter().map(|(s, _)| *s).collect();
    let first_kept = dropped.last().map(|s| s + 1).unwrap_or(1);
    let want: Vec<u32> = (first_kept..=first_kept + CAP).collect();
    if seqs != want {
        return Err(fail(
            P,
            format!("after the outage the cloud got seq {seqs:?}, expected the newest {CAP} then the new reading: {want:?}"),
        ));
    }
    let reported = got.last().map(|(_, d)| *d).unwrap_or(0);
    if reported != TAKEN - CAP {
        return Err(fail(
            P,
            format!(
                "the next reading reports {reported} drops, the device dropped {}",
                TAKEN - CAP
            ),
        ));
    }
    tb.t().runner(format!(
        "verdict: {} dropped oldest-first, counted on the console and in telemetry; the newest {CAP} flushed in order",
        TAKEN - CAP
    ));
    Ok(())
}
