//! A fleet loses the broker at once: jittered backoff spreads their
//! reconnects (measured at the wire tap); every device reconnects and gets
//! its command.
//!
//! How a herd is told from a spread: a no-jitter fleet dials at one instant,
//! but the tap sees those dials spread by the rig's own lag (one engine
//! thread, the proxy, a loaded CI host): 200 simultaneous dials took 50 ms
//! to arrive here unloaded and over 100 ms on a busy 2-core runner, where a
//! fixed 100 ms window let the no-jitter control pass. So the scenario
//! measures the rig in the same run: the fleet's first dial (radio on for
//! all at once, each dials at once) is a herd by construction, and the
//! shortest span holding half of it is the rig's lag. The window is twice
//! that (at least 100 ms). Jitter spreads the first reconnects over
//! `[base/2, base]`, so a window of more than `base/8` cannot tell a spread
//! from a herd: the rig, not the device, is reported then.
//!
//! The fleet is the in-process engine ([`hil_sim::fleet`]): 200 session
//! cores built like the device under test (its provisioning and `--sim-bug`s
//! included), each with its own socket through the scenario's proxy, so the
//! tap sees every attempt. 200 `hil-sim` processes would cost ~1 GB of RSS;
//! the engine costs a few MB.

use super::steps::{STEP, await_command, command, connack, fail, on, publish_reconnecting, rig};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::{RigError, Testbed};
use hil_session::{Bug, Event, Mac};
use hil_sim::fleet::{Fleet, FleetConfig, FleetEvent};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const FLEET: usize = 200;
/// The narrowest window the herd test slides over the first reconnects.
const WINDOW: Duration = Duration::from_millis(100);
/// The fleet's backoff base: its first reconnects fall in `[BASE/2, BASE]`
/// after the loss, all after the broker is back (the outage is 1.5 s).
const BASE_MS: u64 = 4_000;

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

/// The shortest span holding `k` of `times` (None if there are fewer).
fn shortest_span(times: &[Instant], k: usize) -> Option<Duration> {
    let mut t: Vec<Instant> = times.to_vec();
    t.sort();
    if k == 0 || t.len() < k {
        return None;
    }
    (0..=t.len() - k).map(|i| t[i + k - 1] - t[i]).min()
}

/// The herd window for a rig whose simultaneous dials arrive spread by
/// `lag` (the span holding half of them): twice that, at least [`WINDOW`];
/// an error when it is too wide to tell a jittered spread from a herd.
fn herd_window(lag: Duration) -> Result<Duration, String> {
    let window = WINDOW.max(lag * 2);
    let limit = Duration::from_millis(BASE_MS / 8);
    if window > limit {
        return Err(format!(
            "the rig is too slow to tell a herd from a spread: {FLEET} devices dialling at once \
             reached the wire tap over {} ms for half of them, so the herd window would be {} ms, \
             more than the {} ms at which a jittered fleet (first reconnects over {}..{} ms) \
             still looks spread; run with fewer tests at once or on a less loaded host",
            lag.as_millis(),
            window.as_millis(),
            limit.as_millis(),
            BASE_MS / 2,
            BASE_MS
        ));
    }
    Ok(window)
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
            s.backoff_base_ms = BASE_MS;
            s.backoff_cap_ms = 4 * BASE_MS;
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
    let dialled = Instant::now();
    fleet.wifi_all(true);
    until_all(&fleet, "subscribed", STEP, |e, done| {
        if let FleetEvent::Subscribed { device } = e {
            done.insert(*device);
        }
    })
    .map_err(|d| fail(Promise::SubscribesToCommands, d))?;
    tb.t().runner(format!("{FLEET} engine devices online"));
    // The rig's herd: the fleet's first dials, all at one instant.
    let herd: Vec<Instant> = wire.attempts(Some(dialled), None).into_iter().take(FLEET).collect();
    let lag = shortest_span(&herd, FLEET / 2 + 1).ok_or_else(|| {
        rig(RigError::Measurement(format!(
            "the wire tap saw {} of the fleet's {FLEET} first dials",
            herd.len()
        )))
    })?;
    let window = herd_window(lag).map_err(|why| rig(RigError::Measurement(why)))?;
    tb.t().note(format!(
        "the rig's herd: half of {FLEET} simultaneous dials reached the tap within {} ms; herd window {} ms",
        lag.as_millis(),
        window.as_millis()
    ));
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
    // device's first one is among them, so take the first FLEET + 1. The
    // tap does not record which source dialled, so the main device's retries
    // during the outage (its own base is shorter) count here too, in place of
    // the last few fleet devices' firsts: a few of 201, either way.
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
    let peak = busiest(&firsts, window);
    tb.t().note(format!(
        "busiest {} ms of the first reconnects: {peak} of {}",
        window.as_millis(),
        firsts.len()
    ));
    if peak * 2 > firsts.len() {
        return Err(fail(
            P,
            format!(
                "{peak} of {} first reconnects fell within {} ms (the herd window: twice the {} ms \
                 this rig spreads a simultaneous dial of half the fleet, at least 100 ms): a thundering herd\n{text}",
                firsts.len(),
                window.as_millis(),
                lag.as_millis()
            ),
        ));
    }
    tb.t().runner(format!(
        "verdict: first reconnects spread: no herd window holds more than half of the {} devices",
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

    #[test]
    fn the_herd_window_follows_the_rigs_lag_until_it_cannot_tell() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let times: Vec<Instant> = [0, 5, 40, 41, 42, 300].map(at).to_vec();
        assert_eq!(shortest_span(&times, 3), Some(Duration::from_millis(2)));
        assert_eq!(shortest_span(&times, 6), Some(Duration::from_millis(300)));
        assert_eq!(shortest_span(&times, 7), None);
        let ms = Duration::from_millis;
        assert_eq!(herd_window(ms(20)), Ok(WINDOW), "a fast rig: 100 ms");
        assert_eq!(herd_window(ms(120)), Ok(ms(240)), "twice the lag");
        let slow = herd_window(ms(300)).unwrap_err();
        assert!(slow.contains("too slow to tell"), "{slow}");
    }
}
