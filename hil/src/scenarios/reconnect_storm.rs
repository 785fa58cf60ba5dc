//! A fleet loses the broker at once: jittered backoff spreads their
//! reconnects (measured at the wire tap); every device reconnects and gets
//! its command.
//!
//! How a herd is told from a spread, from the wire tap alone: each fleet
//! device's wait before its first connection attempt after the kill,
//! measured from the loss (the tap's end of the connection the kill took
//! from it) and from the device's own close of that connection ([`Waits`];
//! devices are told apart by their source addresses). Lockstep backoff gives every device the same
//! wait; jitter spreads the waits over `[base/2, base]`. The waits, not the
//! instants, because a broker does not drop 200 connections at one instant
//! (rumqttd took 290 ms here), and a no-jitter fleet's reconnects spread
//! just as much; a fixed 100 ms window over the instants let the no-jitter
//! control pass on a loaded CI runner.
//!
//! The herd window is measured in the same run: the fleet's first dial
//! (radio on for all at once, each dials at once) is a herd by
//! construction, and the shortest span holding half of it at the tap is the
//! rig's own lag. The window is twice that, at least 100 ms; a window over
//! `base/8` could not tell a jittered spread from lockstep, and the rig,
//! not the device, is reported then.
//!
//! The fleet is the in-process engine ([`hil_sim::fleet`]): 200 session
//! cores built like the device under test (its provisioning and `--sim-bug`s
//! included), each with its own socket through the scenario's proxy, so the
//! tap sees every attempt. 200 `hil-sim` processes would cost ~1 GB of RSS;
//! the engine costs a few MB.

use super::steps::{STEP, await_command, command, connack, fail, on, publish_reconnecting, rig};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::wire::Connection;
use crate::testbed::{RigError, Testbed, WireEvent};
use hil_session::{Bug, Event, Mac};
use hil_sim::fleet::{Fleet, FleetConfig, FleetEvent};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const FLEET: usize = 200;
/// The narrowest herd window the test slides over the devices' waits.
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

/// A text histogram of `times` (from some start) in `bucket` slots.
fn histogram(times: &[Duration], bucket: Duration) -> String {
    let slot = |t: &Duration| (t.as_millis() / bucket.as_millis()) as usize;
    let n = times.iter().map(slot).max().unwrap_or(0) + 1;
    let mut counts = vec![0usize; n];
    for t in times {
        counts[slot(t)] += 1;
    }
    // From the first bucket that holds any: waits start seconds in.
    let first = counts.iter().position(|c| *c > 0).unwrap_or(0);
    let mut text = String::new();
    for (i, c) in counts.iter().enumerate().skip(first) {
        let from = i as u128 * bucket.as_millis();
        text.push_str(&format!(
            "{:>6}-{:<6} ms {:>3} {}\n",
            from,
            from + bucket.as_millis(),
            c,
            "#".repeat(*c)
        ));
    }
    text
}

/// The most of `times` any `window`-long span holds (sliding, so a herd
/// that straddles a histogram bucket's edge is still one herd).
fn busiest(times: &[Duration], window: Duration) -> usize {
    let mut t = times.to_vec();
    t.sort();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..t.len() {
        while t[hi] - t[lo] >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// The shortest span holding `k` of `times` (None if there are fewer).
fn shortest_span(times: &[Duration], k: usize) -> Option<Duration> {
    let mut t = times.to_vec();
    t.sort();
    if k == 0 || t.len() < k {
        return None;
    }
    (0..=t.len() - k).map(|i| t[i + k - 1] - t[i]).min()
}

/// Each fleet device's wait before its first reconnect, measured twice
/// from the tap's records: from the loss (the first end of the connection
/// it had at the kill) and from its own close of that connection (when it
/// noticed; the loss if it never closed). Lockstep shows in the second even
/// when a broker or a busy rig spreads the losses; a device that hides
/// lockstep behind late closes shows in the first.
#[derive(Debug, PartialEq, Eq)]
struct Waits {
    from_loss: Vec<Duration>,
    from_its_close: Vec<Duration>,
}

/// [`Waits`] of the `fleet`'s source addresses. `Err` names the devices the
/// tap cannot pair (no lost connection, or no attempt after it).
fn waits(conns: &[Connection], killed: Instant, fleet: &BTreeSet<IpAddr>) -> Result<Waits, String> {
    let mut w = Waits {
        from_loss: Vec::new(),
        from_its_close: Vec::new(),
    };
    let mut unpaired = Vec::new();
    for ip in fleet {
        let mut mine: Vec<&Connection> = conns.iter().filter(|c| c.peer == Some(*ip)).collect();
        mine.sort_by_key(|c| c.opened);
        let lost = mine.iter().rev().find(|c| c.opened < killed).and_then(|c| {
            let (at, _) = c.ended?;
            Some((at, c.closed_by_device.unwrap_or(at)))
        });
        let next = lost.and_then(|(at, closed)| {
            let n = mine.iter().find(|c| c.opened > at)?;
            Some((n.opened - at, n.opened.saturating_duration_since(closed)))
        });
        match next {
            Some((from_loss, from_close)) => {
                w.from_loss.push(from_loss);
                w.from_its_close.push(from_close);
            }
            None => unpaired.push(ip.to_string()),
        }
    }
    if unpaired.is_empty() {
        Ok(w)
    } else {
        Err(format!(
            "the wire tap shows no lost connection and later attempt for {} of {} fleet devices ({})",
            unpaired.len(),
            fleet.len(),
            unpaired.into_iter().take(3).collect::<Vec<_>>().join(", ")
        ))
    }
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
             more than the {} ms at which a jittered fleet (waits over {}..{} ms) \
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
    // The rig's herd: the fleet's first dials, all at one instant. The
    // fleet is every source address that dialled since, but the main device's.
    let dut_ip = wire.records().into_iter().find_map(|r| match r.event {
        WireEvent::Attempt { peer, .. } if r.at < dialled => peer,
        _ => None,
    });
    let first_dials = wire.connections(dialled);
    let sources: BTreeSet<IpAddr> = first_dials
        .iter()
        .filter_map(|c| c.peer)
        .filter(|ip| Some(*ip) != dut_ip)
        .collect();
    let herd: Vec<Duration> = first_dials
        .iter()
        .filter(|c| c.peer.is_some_and(|ip| sources.contains(&ip)))
        .map(|c| c.opened - dialled)
        .collect();
    if sources.len() != FLEET {
        return Err(rig(RigError::Measurement(format!(
            "the wire tap saw {} fleet source addresses, not {FLEET}",
            sources.len()
        ))));
    }
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
    // The storm at the broker, as the wire tap saw it (shown, not judged).
    let attempts: Vec<Duration> = wire
        .attempts(Some(killed), None)
        .iter()
        .map(|t| *t - killed)
        .collect();
    tb.t().note(format!(
        "connection attempts after the kill (250 ms buckets):\n{}",
        histogram(&attempts, Duration::from_millis(250))
    ));
    // The judgement: each fleet device's wait before its first reconnect.
    let waited = waits(&wire.connections(dialled), killed, &sources)
        .map_err(|why| rig(RigError::Measurement(why)))?;
    let measures = [
        ("from losing the broker", &waited.from_loss),
        ("from closing its lost connection", &waited.from_its_close),
    ];
    let mut herds = Vec::new();
    for (what, w) in measures {
        let text = histogram(w, WINDOW);
        let peak = busiest(w, window);
        tb.t().note(format!(
            "each fleet device's wait {what} to its first reconnect (100 ms buckets), \
             {peak} of {} within one herd window ({} ms):\n{text}",
            w.len(),
            window.as_millis()
        ));
        if peak * 2 > w.len() {
            herds.push(format!(
                "{peak} of {} devices waited the same to within {} ms {what} to their first \
                 reconnect\n{text}",
                w.len(),
                window.as_millis()
            ));
        }
    }
    if !herds.is_empty() {
        return Err(fail(
            P,
            format!(
                "lockstep backoff, a thundering herd (the herd window: twice the {} ms in which \
                 this rig delivers half of a simultaneous dial, at least 100 ms):\n{}",
                lag.as_millis(),
                herds.join("")
            ),
        ));
    }
    tb.t().runner(format!(
        "verdict: reconnects spread: no herd window holds the waits of more than half of the {FLEET} fleet devices"
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::Dir;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_herd_straddling_a_bucket_edge_is_still_one_herd() {
        // 99 and 101 ms: two 100 ms buckets, one 100 ms window.
        let herd: Vec<Duration> = (0..10).map(|i| ms(if i % 2 == 0 { 99 } else { 101 })).collect();
        assert_eq!(busiest(&herd, WINDOW), 10);
        let spread: Vec<Duration> = (0..10).map(|i| ms(i * 60)).collect();
        assert_eq!(busiest(&spread, WINDOW), 2);
        assert_eq!(busiest(&[], WINDOW), 0);
    }

    #[test]
    fn the_herd_window_follows_the_rigs_lag_until_it_cannot_tell() {
        let times: Vec<Duration> = [0, 5, 40, 41, 42, 300].map(ms).to_vec();
        assert_eq!(shortest_span(&times, 3), Some(ms(2)));
        assert_eq!(shortest_span(&times, 6), Some(ms(300)));
        assert_eq!(shortest_span(&times, 7), None);
        assert_eq!(herd_window(ms(20)), Ok(WINDOW), "a fast rig: 100 ms");
        assert_eq!(herd_window(ms(120)), Ok(ms(240)), "twice the lag");
        let slow = herd_window(ms(300)).unwrap_err();
        assert!(slow.contains("too slow to tell"), "{slow}");
    }

    #[test]
    fn a_wait_runs_from_the_loss_the_tap_saw_to_the_same_sources_next_dial() {
        let t0 = Instant::now();
        let at = |n: u64| t0 + ms(n);
        let ip = |n: u8| IpAddr::from([127, 201, 0, n]);
        let conn = |conn, peer, opened, ended: Option<u64>| Connection {
            conn,
            opened: at(opened),
            reached_broker: true,
            peer: Some(ip(peer)),
            ended: ended.map(|e| (at(e), Some(Dir::Down))),
            closed_by_device: None,
        };
        // The broker drops device 1 at 1,000 ms and device 2 at 1,300 ms;
        // both wait 4,000 ms (lockstep) although their dials are 300 ms apart.
        let mut conns = vec![
            conn(1, 1, 0, Some(1_000)),
            conn(2, 2, 10, Some(1_300)),
            conn(3, 2, 5_300, None),
            conn(4, 1, 5_000, None),
        ];
        let fleet: BTreeSet<IpAddr> = [ip(1), ip(2)].into();
        let lockstep = vec![ms(4_000), ms(4_000)];
        let w = waits(&conns, at(900), &fleet).unwrap();
        assert_eq!(w.from_loss, lockstep);
        assert_eq!(w.from_its_close, lockstep, "never closed: from the loss");
        // Device 2 closed its side 200 ms after the broker's close: its wait
        // from its own close is 200 ms shorter.
        conns[1].closed_by_device = Some(at(1_500));
        let w = waits(&conns, at(900), &fleet).unwrap();
        assert_eq!(w.from_its_close, vec![ms(4_000), ms(3_800)]);
        // A device the tap saw no reconnect from is named, not guessed.
        let err = waits(&conns[..3], at(900), &fleet).unwrap_err();
        assert!(err.contains("1 of 2") && err.contains("127.201.0.1"), "{err}");
    }
}
