//! Device Advisor's expired persistent session, stated exactly and on any
//! broker: while the device is away its session ends at the broker (the
//! runner connects with its client ID and a clean session, as the spec
//! provides), so the reconnect gets session_present=0; the device must
//! subscribe again, and a command published after it arrives.

use super::steps::{await_command, client_id, cloud_err, command, dut_connack, dut_subscribed, fail, on, rig, subscribed_for, wifi_off};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::Testbed;
use hil_session::Bug;

pub static SCENARIO: Scenario = Scenario {
    name: "expired_session",
    about: "the device's session ends at the broker while it is away: the reconnect gets session_present=0, the device subscribes again and receives a command after",
    advisor: &["MQTT_Expired_Persistent_Session"],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::WifiToggle),
    ],
    device: DeviceSpec::DEFAULT,
    catches: &[Control::on_rumqttd(Bug::NoResubscribe, Promise::Resubscribe)],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::SessionReused;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    let topic = tb.topics(&id).cmd();
    wifi_off(tb, P)?;
    tb.end_session(&id).map_err(rig)?;
    tb.dut.command("!wifi on").map_err(on(P))?;
    let sp = dut_connack(tb, "CONNACK after the session ended", P)?;
    if sp {
        // The monitor names the broker for it ([MQTT-3.2.2-*]): a session
        // ended by a clean connect must not be reported present.
        return Err(fail(P, "session_present=1 for a session that was ended"));
    }
    let wire = tb.wire().clone();
    subscribed_for(&mut tb.dut, &wire, Promise::Resubscribe)?;
    let mut cloud = tb.cloud("cloud-expired")?;
    let after = format!("expired-after-{}", tb.nonce());
    cloud
        .publish(&topic, command(&after).as_bytes(), 1, false)
        .map_err(cloud_err("cloud-expired"))?;
    await_command(&mut tb.dut, "a command after the new subscription", &after, Promise::Resubscribe)?;
    tb.t().runner(
        "verdict: session_present=0 after the session ended; the device subscribed again and got its command",
    );
    Ok(())
}
