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
    advisor: &[],
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

/// Outages after the first, to tell jitter from a fixed schedule.
const EXTRA_OUTAGES: usize = 2;

/// Waits closer than this across outages count as "the same": the proxy's
/// timestamps on a loaded 2-core machine. Under the device's equal jitter
/// (base 200 ms) three outages land within it for each of the first three
/// attempts with probability about 7e-5.
const SAME_WAIT_MS: u64 = 25;

/// One more kill and restart of the broker: the waits on the wire before
/// each connection attempt until the device is back, and the delays its
/// `backoff` lines claimed.
fn outage_waits(tb: &mut Testbed) -> Result<(Vec<u64>, Vec<u64>), Stop> {
    tb.dut.drain();
    let mark = tb.dut.seen.len();
    let killed = Instant::now();
    tb.crash_broker();
    tb.dut.pass_time(DOWN);
    tb.restart_broker()?;
    // Back in full before the next kill: a SUBACK cut off by it would make
    // the transcript depend on timing.
    if !dut_connack(tb, "CONNACK", Promise::CappedBackoff)? {
        let wire = tb.wire().clone();
        subscribed_for(&mut tb.dut, &wire, Promise::Resubscribe)?;
    }
    let attempts = tb.wire().attempts(Some(killed), None);
    let waits = super::schedule::gaps_ms(
        &std::iter::once(killed).chain(attempts).collect::<Vec<_>>(),
    );
    Ok((waits, claimed_delays(&tb.dut.seen[mark..])))
}

fn claimed_delays(seen: &[Event]) -> Vec<u64> {
    seen.iter()
        .filter_map(|e| match e {
            Event::Backoff { delay_ms, .. } => Some(*delay_ms),
            _ => None,
        })
        .collect()
}

/// Some(description) when every outage waited the same before each of its
/// first attempts (at least two compared), within `slack` ms.
pub(crate) fn fixed_schedule(schedules: &[Vec<u64>], slack: u64) -> Option<String> {
    let n = schedules.iter().map(Vec::len).min()?;
    if n < 2 || schedules.len() < 2 {
        return None;
    }
    let same = (0..n).all(|k| {
        let waits = schedules.iter().map(|s| s[k]);
        waits.clone().max().unwrap_or(0) - waits.min().unwrap_or(0) <= slack
    });
    same.then(|| format!("{schedules:?} ms"))
}

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
    let gaps = super::schedule::gaps_ms(
        &std::iter::once(killed)
            .chain(attempts.iter().copied())
            .collect::<Vec<_>>(),
    );
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
    // One device's jitter, from the wire alone: two more outages, and the
    // waits before each attempt compared outage by outage. A fixed schedule
    // (whatever windows it prints) waits the same each time; jitter does not.
    // Judged on the wire (within the tap's precision) and on the claims (a
    // device that says it draws the same delays every time does not jitter;
    // its claims were just checked against the wire).
    let mut waits = vec![gaps.clone()];
    let mut claims = vec![backoffs.iter().map(|b| b.1).collect::<Vec<_>>()];
    for _ in 0..EXTRA_OUTAGES {
        let (w, c) = outage_waits(tb)?;
        waits.push(w);
        claims.push(c);
    }
    let same = fixed_schedule(&waits, SAME_WAIT_MS)
        .map(|s| format!("waits on the wire per outage {s}"))
        .or_else(|| fixed_schedule(&claims, 0).map(|s| format!("claimed delays per outage {s}")));
    if let Some(same) = same {
        return Err(fail(
            Promise::Jitter,
            format!("the device waits the same schedule every outage ({same}): a fleet would reconnect in lockstep"),
        ));
    }
    tb.t().runner(
        "verdict: every backoff inside its window, each wait the console claimed seen on the wire, waits differ between outages",
    );
    tb.t().note(format!(
        "{} backoff lines, {} attempts on the wire, waits {gaps:?} ms",
        backoffs.len(),
        attempts.len()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fixed_schedule;

    #[test]
    fn a_schedule_repeated_every_outage_is_not_jitter() {
        let fixed = vec![vec![150, 300, 600, 1200], vec![160, 295, 610], vec![152, 310, 598, 1190]];
        assert!(fixed_schedule(&fixed, 25).is_some());
        assert!(fixed_schedule(&fixed, 0).is_none());
        let jittered = vec![vec![150, 300, 600], vec![190, 240, 700], vec![120, 380, 450]];
        assert!(fixed_schedule(&jittered, 25).is_none());
        assert!(fixed_schedule(&[vec![150, 300]], 25).is_none(), "one outage tells nothing");
    }
}
