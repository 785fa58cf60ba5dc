//! A fleet loses the broker at once: jittered backoff spreads their
//! reconnects (measured at the wire tap); every device reconnects and gets
//! its command.
//!
//! The fleet is the in-process engine ([`hil_sim::fleet`]): 200 session
//! cores built like the device under test (its provisioning and `--sim-bug`s
//! included), each with its own socket through the scenario's proxy, so the
//! tap sees every attempt. 200 `hil-sim` processes would cost ~1 GB of RSS;
//! the engine costs a few MB.

use super::steps::{STEP, await_command, command, connack, fail, on, publish_reconnecting, rig};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::Testbed;
use hil_session::{Bug, Event, Mac};
use hil_sim::fleet::{Fleet, FleetConfig, FleetEvent};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const FLEET: usize = 200;
/// The window the herd test slides over the first reconnect attempts.
const WINDOW: Duration = Duration::from_millis(100);

pub static SCENARIO: Scenario = Scenario {
    name: "reconnect_storm",
    about: "200 devices lose the broker at once: jittered backoff spreads their reconnects; every device reconnects and gets its command",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::Fleet),
        Need::Can(Capability::BrokerRestart),
    ],
    device: DeviceSpec {
        keepalive_s: 10,
        ..DeviceSpec::DEFAULT
    },
    catches: &[Control::on_rumqttd(Bug::NoJitter, Promise::Jitter)],
    run,
};

/// A text histogram of instants, in `bucket` slots from `start`.
fn histogram(times: &[Instant], start: Instant, bucket: Duration) -> (Vec<usize>, String) {
    let slot = |t: &Instant| {
        (t.saturating_duration_since(start).as_millis() / bucket.as_millis()) as usize
    };
    let n = times.iter().map(slot).max().unwrap_or(0) + 1;
    let mut counts = vec![0usize; n];
    for t in times {
        counts[slot(t)] += 1;
    }
    let mut text = String::new();
    for (i, c) in counts.iter().enumerate() {
        let from = i as u128 * bucket.as_millis();
        text.push_str(&format!(
            "{:>6}-{:<6} ms {:>3} {}\n",
            from,
            from + bucket.as_millis(),
            c,
            "#".repeat(*c)
        ));
    }
    (counts, text)
}

/// The most instants any `window`-long span holds (sliding, so a herd that
/// straddles a histogram bucket's edge is still one herd).
fn busiest(times: &[Instant], window: Duration) -> usize {
    let mut t: Vec<Instant> = times.to_vec();
    t.sort();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..t.len() {
        while t[hi].duration_since(t[lo]) >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Waits until `done` holds for every engine device, feeding it each event;
/// on the deadline, says how many got there.
fn until_all(
    fleet: &Fleet,
    what: &str,
    within: Duration,
    mut step: impl FnMut(&FleetEvent, &mut BTreeSet<usize>),
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut done = BTreeSet::new();
    while done.len() < fleet.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match fleet.next_event(left) {
            Some(e) => step(&e, &mut done),
            None => {
                return Err(format!(
                    "{} of {} devices {what} within {:.0} s",
                    done.len(),
                    fleet.len(),
                    within.as_secs_f32()
                ));
            }
        }
    }
    Ok(())
}

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::Jitter;
    let wire = tb.wire().clone();
    super::steps::dut_subscribed(tb)?;
    let spec = tb
        .engine(&|s| {
            s.backoff_base_ms = 1000;
            s.backoff_cap_ms = 8000;
        })
        .map_err(rig)?;
    let fleet = Fleet::start(
        FleetConfig {
            devices: FLEET,
            broker: spec.broker,
            device: spec.device,
            first_mac: Mac([0x24, 0x0a, 0xc4, 0x50, 0, 0]),
            seed: 0x5707,
            // 127.201.x.y: apart from the scenarios' own listen addresses
            // only by convention; any loopback source works.
            source_block: 201,
        },
        1,
    )
    .map_err(rig)?;
    fleet.wifi_all(true);
    until_all(&fleet, "subscribed", STEP, |e, done| {
        if let FleetEvent::Subscribed { device } = e {
            done.insert(*device);
        }
    })
    .map_err(|d| fail(Promise::SubscribesToCommands, d))?;
    tb.t().runner(format!("{FLEET} engine devices online"));
    let topics: Vec<String> = (0..FLEET)
        .map(|i| tb.topics(fleet.client_id(i)).cmd())
        .collect();
    if !tb.broker().wait_persisted(&topics, Duration::from_secs(10)) {
        tb.t()
            .note("the broker did not store every subscription within 10 s");
    }
    let killed = Instant::now();
    tb.broker_outage(Duration::from_millis(1500))?;
    // Reconnected: a CONNACK after the kill; ready: and subscribed (again,
    // when the broker lost the session).
    let mut reconnected = BTreeSet::new();
    until_all(&fleet, "reconnected and subscribed", STEP, |e, ready| match e {
        FleetEvent::Connack {
            device,
            at,
            session_present,
        } if *at > killed => {
            reconnected.insert(*device);
            if *session_present {
                ready.insert(*device);
            }
        }
        FleetEvent::Subscribed { device } if reconnected.contains(device) => {
            ready.insert(*device);
        }
        _ => {}
    })
    .map_err(|d| fail(Promise::Resubscribe, d))?;
    if !connack(&mut tb.dut, &wire, "reconnect", P)? {
        tb.dut
            .expect("re-subscription", STEP, |e| {
                matches!(e, Event::MqttSubscribed { .. })
            })
            .map_err(on(Promise::Resubscribe))?;
    }
    let mut cloud = tb.cloud("cloud-storm")?;
    let cid = format!("storm-{}", tb.nonce());
    let dut_id = super::steps::client_id(tb)?;
    let dut_topic = tb.topics(&dut_id).cmd();
    for topic in topics.iter().chain([&dut_topic]) {
        publish_reconnecting(tb, &mut cloud, "cloud-storm", topic, command(&cid).as_bytes())?;
    }
    await_command(&mut tb.dut, "its command after the restart", &cid, P)?;
    until_all(&fleet, "executed their command", STEP, |e, done| {
        if let FleetEvent::Executed { device, id } = e {
            if *id == cid {
                done.insert(*device);
            }
        }
    })
    .map_err(|d| fail(P, d))?;
    tb.t().runner(format!(
        "all {FLEET} devices and the device under test reconnected and executed their command"
    ));
    // Connection attempts after the loss, as the wire tap saw them; the main
    // device's first one is among them, so take the first FLEET + 1.
    let attempts = wire.attempts(Some(killed), None);
    let firsts: Vec<Instant> = attempts.iter().take(FLEET + 1).copied().collect();
    let (_, text) = histogram(&firsts, killed, WINDOW);
    tb.t().note(format!(
        "first reconnect attempts after the kill (100 ms buckets):\n{text}"
    ));
    let (_, all) = histogram(&attempts, killed, Duration::from_millis(250));
    tb.t().note(format!(
        "all connection attempts after the kill (250 ms buckets):\n{all}"
    ));
    if firsts.len() < FLEET {
        return Err(fail(
            P,
            format!(
                "only {} of {FLEET} devices tried to reconnect",
                firsts.len()
            ),
        ));
    }
    let peak = busiest(&firsts, WINDOW);
    tb.t().note(format!(
        "busiest 100 ms of the first reconnects: {peak} of {}",
        firsts.len()
    ));
    if peak * 2 > firsts.len() {
        return Err(fail(
            P,
            format!(
                "{peak} of {} first reconnects fell within 100 ms: a thundering herd\n{text}",
                firsts.len()
            ),
        ));
    }
    tb.t().runner(format!(
        "verdict: first reconnects spread: no 100 ms holds more than half of the {} devices",
        FLEET + 1
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_herd_straddling_a_bucket_edge_is_still_one_herd() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 99 and 101 ms: two 100 ms buckets, one 100 ms window.
        let herd: Vec<Instant> = (0..10).map(|i| at(if i % 2 == 0 { 99 } else { 101 })).collect();
        assert_eq!(busiest(&herd, WINDOW), 10);
        let spread: Vec<Instant> = (0..10).map(|i| at(i * 60)).collect();
        assert_eq!(busiest(&spread, WINDOW), 2);
        assert_eq!(busiest(&[], WINDOW), 0);
    }
}
