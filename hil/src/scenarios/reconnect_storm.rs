//! 50 devices lose the broker at once: jittered backoff spreads their
//! reconnects (measured at the wire tap); every device reconnects and gets
//! its command.

use super::steps::{STEP, await_command, command, connack, device_id, dut_subscribed, fail, on, publish_reconnecting, rig, subscribed};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec, FleetDevice};
use crate::testbed::Testbed;
use hil_session::{Bug, Event};
use std::time::{Duration, Instant};

const FLEET: usize = 50;

pub static SCENARIO: Scenario = Scenario {
    name: "reconnect_storm",
    about: "50 devices lose the broker at once: jittered backoff spreads their reconnects; every device reconnects and gets its command",
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

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::Jitter;
    dut_subscribed(tb)?;
    let mut fleet: Vec<(FleetDevice, String)> = Vec::new();
    for n in 0..FLEET {
        let mac = format!("24:0a:c4:00:{:02x}:{:02x}", 0x50 + n / 256, n % 256);
        let dev = tb
            .fleet()?
            .start(&mac, &|s| {
                s.backoff_base_ms = 1000;
                s.backoff_cap_ms = 8000;
            })
            .map_err(rig)?;
        fleet.push((dev, String::new()));
    }
    for (dev, id) in fleet.iter_mut() {
        *id = device_id(dev, P)?;
        subscribed(dev, tb.wire())?;
    }
    tb.t().runner(format!("{FLEET} devices online"));
    let topics: Vec<String> = fleet.iter().map(|(_, id)| tb.topics(id).cmd()).collect();
    if !tb.broker().wait_persisted(&topics, Duration::from_secs(10)) {
        tb.t()
            .note("the broker did not store every subscription within 10 s");
    }
    let killed = Instant::now();
    tb.broker_outage(Duration::from_millis(1500))?;
    let mut cloud = tb.cloud("cloud-storm")?;
    let cid = format!("storm-{}", tb.nonce());
    for ((dev, _), topic) in fleet.iter_mut().zip(&topics) {
        if !connack(dev, tb.wire(), "reconnect", P)? {
            dev.expect("re-subscription", STEP, |e| {
                matches!(e, Event::MqttSubscribed { .. })
            })
            .map_err(on(Promise::Resubscribe))?;
        }
        publish_reconnecting(
            tb,
            &mut cloud,
            "cloud-storm",
            topic,
            command(&cid).as_bytes(),
        )?;
        await_command(dev, "its command after the restart", &cid, P)?;
    }
    tb.t().runner(format!(
        "all {FLEET} devices reconnected and executed their command"
    ));
    // Connection attempts after the loss, as the wire tap saw them; the main
    // device's first one is among them, so take the first FLEET + 1.
    let attempts = tb.wire().attempts(Some(killed), None);
    let firsts: Vec<Instant> = attempts.iter().take(FLEET + 1).copied().collect();
    let (counts, text) = histogram(&firsts, killed, Duration::from_millis(100));
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
    let peak = counts.iter().copied().max().unwrap_or(0);
    if peak * 2 > FLEET {
        return Err(fail(
            P,
            format!(
                "{peak} of {} first reconnects fell in the same 100 ms: a thundering herd\n{text}",
                firsts.len()
            ),
        ));
    }
    tb.t().runner(format!(
        "verdict: first reconnects spread: no 100 ms slot holds more than half of the {FLEET} devices"
    ));
    Ok(())
}
