//! After a working connection is dropped by the broker, the device does not
//! reconnect at once: the first reconnect waits at least the floor of its
//! first backoff window, measured at the wire, three drops in a row.

use super::steps::{dut_connack, dut_subscribed, fail};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::Testbed;
use hil_session::{Bug, Event};
use std::time::Instant;

pub static SCENARIO: Scenario = Scenario {
    name: "reconnect_after_success",
    about: "the broker drops a working connection (3 times): the first reconnect waits at least half the base delay (0.5 s on the sim; 100 ms where the spec cannot be set) and what the console claims; never a tight loop",
    advisor: &["MQTT_ReconnectionAfterSuccessfulConnection"],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::LinkFaults),
    ],
    device: DeviceSpec {
        backoff_base_ms: 1_000,
        backoff_cap_ms: 4_000,
        ..DeviceSpec::DEFAULT
    },
    catches: &[Control::on_rumqttd(
        Bug::ReconnectAtOnce,
        Promise::BackoffAfterSuccess,
    )],
    run,
};

const DROPS: usize = 3;

/// The shortest first reconnect accepted from a device whose backoff the
/// backend cannot configure (a board with its own settings): under 100 ms
/// is a tight loop, whatever the device's base delay. Where the spec is
/// applied (1 s base), the floor is half of it: equal jitter's `[base/2, base]`.
pub(crate) const ABSOLUTE_FLOOR_MS: u64 = 100;

/// The floor for this testbed's device.
pub(crate) fn floor_ms(tb: &Testbed) -> u64 {
    tb.backoff_base_ms()
        .map(|b| b / 2)
        .unwrap_or(ABSOLUTE_FLOOR_MS)
        .max(ABSOLUTE_FLOOR_MS)
}
/// The console's claimed delay against the wire.
pub(crate) const CLAIM_TOLERANCE_MS: u64 = 60;

/// The wire's wait from `since` (the loss) to the device's next connection,
/// checked against the floor and against the first backoff the console
/// printed after `mark`. Shared with `server_disconnect`.
pub(crate) fn first_reconnect(
    tb: &mut Testbed,
    since: Instant,
    mark: usize,
    promise: Promise,
) -> Result<u64, super::Stop> {
    dut_connack(tb, "CONNACK after the drop", promise)?;
    let first = tb
        .wire()
        .connections(since)
        .first()
        .map(|c| c.opened.saturating_duration_since(since).as_millis() as u64)
        .ok_or_else(|| fail(promise, "the console says it reconnected; the wire shows no new connection"))?;
    let floor = floor_ms(tb);
    if first < floor {
        return Err(fail(
            promise,
            format!("the device reconnected {first} ms after losing a working connection: under the {floor} ms floor (a tight reconnect loop)"),
        ));
    }
    let claim = tb.dut.seen[mark..].iter().find_map(|e| match e {
        Event::Backoff { delay_ms, .. } => Some(*delay_ms),
        _ => None,
    });
    if let Some(c) = claim {
        if c.abs_diff(first) > CLAIM_TOLERANCE_MS {
            return Err(fail(
                promise,
                format!("the console says it waited {c} ms, the wire shows {first} ms"),
            ));
        }
    }
    Ok(first)
}

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::BackoffAfterSuccess;
    dut_subscribed(tb)?;
    let mut waits = Vec::new();
    for _ in 0..DROPS {
        tb.dut.drain();
        let mark = tb.dut.seen.len();
        let since = Instant::now();
        tb.t().runner("proxy: the broker drops the connection");
        tb.link().cut();
        waits.push(first_reconnect(tb, since, mark, P)?);
    }
    tb.t().note(format!("first reconnect after each drop: {waits:?} ms"));
    tb.t().runner(format!(
        "verdict: after each of {DROPS} drops the first reconnect waited at least {} ms, as claimed",
        floor_ms(tb)
    ));
    Ok(())
}
