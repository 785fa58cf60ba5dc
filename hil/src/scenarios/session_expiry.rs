//! MQTT 5: offline shorter than the Session Expiry Interval keeps the
//! session; longer loses it, the device re-subscribes and nothing stale runs.

use super::steps::{wifi_off, await_command, client_id, cloud_err, command, dut_connack, dut_subscribed, fail, on, ran, sentinel};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::Testbed;
use hil_broker::check::Semantic;
use hil_session::Bug;
use std::time::Duration;

pub static SCENARIO: Scenario = Scenario {
    name: "session_expiry",
    about: "offline shorter than the Session Expiry Interval keeps the session; longer loses it, the device re-subscribes and nothing stale runs",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Mqtt5,
        Need::Can(Capability::WifiToggle),
        Need::Semantic(Semantic::SessionExpiry),
    ],
    device: DeviceSpec {
        session_expiry_s: 2,
        ..DeviceSpec::DEFAULT
    },
    catches: &[Control::on_mosquitto_v5(Bug::IgnoreExpiry, Promise::SessionExpiry)],
    run,
};

/// Past the device's 2 s interval: the scenario's parameter.
const LONG_OUTAGE: Duration = Duration::from_millis(3500);

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::SessionExpiry;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    let topic = tb.topics(&id).cmd();
    let mut cloud = tb.cloud("cloud-expiry")?;
    // Short outage: well inside the device's 2 s interval.
    wifi_off(tb, P)?;
    let kept = format!("kept-{}", tb.nonce());
    cloud
        .publish(&topic, command(&kept).as_bytes(), 1, false)
        .map_err(cloud_err("cloud-expiry"))?;
    tb.t()
        .cloud(format!("publish {kept} qos=1 during a short outage"));
    tb.dut.command("!wifi on").map_err(on(P))?;
    if !dut_connack(tb, "CONNACK", P)? {
        return Err(fail(
            P,
            "session_present=0 after an outage shorter than the Session Expiry Interval",
        ));
    }
    await_command(&mut tb.dut, "the queued command", &kept, P)?;
    // Long outage: past the interval.
    wifi_off(tb, P)?;
    let stale = format!("stale-{}", tb.nonce());
    cloud
        .publish(&topic, command(&stale).as_bytes(), 1, false)
        .map_err(cloud_err("cloud-expiry"))?;
    tb.t().cloud(format!(
        "publish {stale} qos=1, then stay offline past the 2 s interval"
    ));
    tb.dut.pass_time(LONG_OUTAGE);
    tb.dut.command("!wifi on").map_err(on(P))?;
    if dut_connack(tb, "CONNACK", P)? {
        return Err(fail(
            P,
            "session_present=1 after an outage longer than the Session Expiry Interval",
        ));
    }
    dut_subscribed(tb)?;
    sentinel(tb, &mut cloud, &topic, P)?;
    if ran(&tb.dut, &stale) {
        return Err(fail(P, "a command from the expired session was executed"));
    }
    tb.t().runner("verdict: kept within the interval, expired after it, re-subscribed, nothing stale executed");
    Ok(())
}
