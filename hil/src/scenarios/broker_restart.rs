//! After kill -9 of the broker the device backs off with capped, jittered
//! delays, reconnects, re-subscribes when the session was lost, and gets a
//! command published after the restart.

use super::steps::{client_id, dut_connack, dut_subscribed, fail, sentinel, subscribed_for};
use super::{Control, Need, Outcome, Promise, Scenario, Stop};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::Testbed;
use hil_session::{Bug, Event};
use std::time::{Duration, Instant};

pub static SCENARIO: Scenario = Scenario {
    name: "broker_restart",
    about:
        "after kill -9 of the broker the device backs off with jitter, reconnects, re-subscribes",
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::BrokerRestart),
    ],
    device: DeviceSpec::DEFAULT,
    catches: &[
        Control::on_rumqttd(Bug::NoJitter, Promise::Jitter),
        Control::on_rumqttd(Bug::NoResubscribe, Promise::Resubscribe),
    ],
    run,
};

/// The outage is the scenario's parameter: the device must keep retrying
/// (with backoff) for this long while nothing listens.
const DOWN: Duration = Duration::from_millis(1500);

/// How far a wait on the wire may differ from the wait the console claims:
/// scheduling on a loaded 2-core machine, and the proxy's own accept.
const CLAIM_TOLERANCE_MS: u64 = 150;

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::CappedBackoff;
    let id = client_id(tb)?;
    let topic = tb.topics(&id).cmd();
    dut_subscribed(tb)?;
    // A persisting broker must have stored the subscription before it dies,
    // or it restores a session without it and still says session_present=1.
    if !tb
        .broker()
        .wait_persisted(std::slice::from_ref(&topic), Duration::from_secs(5))
    {
        tb.t()
            .note("the broker did not store the subscription within 5 s");
    }
    tb.dut.drain();
    let mark = tb.dut.seen.len();
    let killed = Instant::now();
    tb.crash_broker();
    tb.dut.pass_time(DOWN);
    tb.dut.drain();
    let back = Instant::now();
    tb.restart_broker()?;
    let cap = tb.backoff_cap_ms().unwrap_or_else(|| {
        tb.dut
            .seen
            .iter()
            .filter_map(|e| match e {
                Event::Backoff { hi_ms, .. } => Some(*hi_ms * 2),
                _ => None,
            })
            .max()
            .unwrap_or(30_000)
    });
    let within = Duration::from_millis(cap) + Duration::from_secs(5);
    let sp = dut_connack(tb, "CONNACK", P)?;
    let took = back.elapsed();
    if took > within {
        return Err(fail(
            P,
            format!("reconnected {took:?} after the broker came back; the cap is {cap} ms"),
        ));
    }
    let backoffs: Vec<(u32, u64, u64, u64)> = tb.dut.seen[mark..]
        .iter()
        .filter_map(|e| match e {
            Event::Backoff {
                attempt,
                delay_ms,
                lo_ms,
                hi_ms,
            } => Some((*attempt, *delay_ms, *lo_ms, *hi_ms)),
            _ => None,
        })
        .collect();
    if backoffs.len() < 2 {
        return Err(fail(
            P,
            format!(
                "expected repeated reconnect attempts while the broker was down, saw {backoffs:?}"
            ),
        ));
    }
    for (attempt, delay, lo, hi) in &backoffs {
        if delay < lo || delay > hi || *hi > cap {
            return Err(fail(
                P,
                format!(
                    "attempt {attempt}: delay {delay} ms outside its window {lo}..{hi} (cap {cap})"
                ),
            ));
        }
        if lo >= hi {
            return Err(fail(
                Promise::Jitter,
                format!("attempt {attempt}: window {lo}..{hi} ms has no jitter: a fleet would reconnect in lockstep"),
            ));
        }
    }
    if backoffs
        .windows(2)
        .any(|w| w[1].3 < w[0].3 && w[1].0 > w[0].0)
    {
        return Err(fail(
            P,
            format!("backoff ceiling shrank between attempts: {backoffs:?}"),
        ));
    }
    // The evidence: the connection attempts the proxy saw after the kill
    // (refused while the broker was down, then the one that got through).
    // Each backoff line claims the wait before one attempt; the wire must
    // agree, or the console is not telling what the device does.
    let attempts = tb.wire().attempts(Some(killed), None);
    let gaps: Vec<u64> = std::iter::once(killed)
        .chain(attempts.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_millis() as u64)
        .collect();
    if gaps.len() != backoffs.len() {
        return Err(fail(
            P,
            format!(
                "the console reported {} backoffs, the wire shows {} connection attempts (waits {gaps:?} ms)",
                backoffs.len(),
                gaps.len()
            ),
        ));
    }
    for ((attempt, delay, ..), gap) in backoffs.iter().zip(&gaps) {
        if gap.abs_diff(*delay) > CLAIM_TOLERANCE_MS {
            return Err(fail(
                P,
                format!("attempt {attempt}: the console says it waited {delay} ms, the wire shows {gap} ms"),
            ));
        }
    }
    if let Some(g) = gaps.iter().find(|g| **g > cap + CLAIM_TOLERANCE_MS) {
        return Err(fail(P, format!("a wait of {g} ms on the wire, over the {cap} ms cap")));
    }
    // Backoff, not a fixed retry interval: while below the cap the waits
    // grow (each window doubles, so the third wait is at least the first's).
    let below_cap: Vec<u64> = gaps.iter().copied().take_while(|g| g * 2 < cap).collect();
    if below_cap.len() >= 3 && below_cap[below_cap.len() - 1] < below_cap[0] * 3 / 2 {
        return Err(fail(
            P,
            format!("the device retried on a fixed interval, not with backoff: waits on the wire {gaps:?} ms"),
        ));
    }
    tb.t()
        .runner(format!("device reconnected; session_present={}", sp as u8));
    if !sp {
        // Claimed on the console, proven by the broker's SUBACK on the wire.
        let wire = tb.wire().clone();
        subscribed_for(&mut tb.dut, &wire, Promise::Resubscribe)?;
    }
    let mut cloud = tb.cloud("cloud-after-restart")?;
    sentinel(tb, &mut cloud, &topic, Promise::CommandsAfterRestart).map_err(|stop| match stop {
        // Without a re-subscription after session_present=0 nothing can arrive.
        Stop::Fail(f) if !sp => fail(Promise::Resubscribe, f.detail),
        other => other,
    })?;
    tb.t().runner(
        "verdict: every backoff inside its window, each wait the console claimed seen on the wire",
    );
    tb.t().note(format!(
        "{} backoff lines, {} attempts on the wire, waits {gaps:?} ms",
        backoffs.len(),
        attempts.len()
    ));
    Ok(())
}
