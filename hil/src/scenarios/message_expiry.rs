//! MQTT 5: a command that expires during the outage is not delivered; a
//! longer-lived one is, with its remaining interval (read on the wire).

use super::steps::{wifi_off, await_command, client_id, cloud_err, command, dut_connack, dut_subscribed, fail, on, ran, sentinel};
use super::{Control, ControlBroker, Need, Outcome, Promise, Scenario};
use hil_session::{Bug, MqttVersion};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::{Dir, Packet, Testbed};
use hil_broker::check::Semantic;
use std::time::Duration;

pub static SCENARIO: Scenario = Scenario {
    name: "message_expiry",
    about: "a command that expires during the outage is not delivered; a longer-lived one is, with its remaining interval",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Mqtt5,
        Need::Can(Capability::WifiToggle),
        Need::Semantic(Semantic::MessageExpiry),
    ],
    device: DeviceSpec::DEFAULT,
    catches: &[Control::new(
        Bug::CleanSession,
        Promise::MessageExpiry,
        ControlBroker::Rumqttd,
        MqttVersion::V5,
    )],
    run,
};

/// Past the short command's 1 s expiry: the scenario's parameter.
const OUTAGE: Duration = Duration::from_millis(2500);

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::MessageExpiry;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    let topic = tb.topics(&id).cmd();
    let mut cloud = tb.cloud("cloud-msg-expiry")?;
    wifi_off(tb, P)?;
    let (short, long) = (
        format!("short-{}", tb.nonce()),
        format!("long-{}", tb.nonce()),
    );
    for (cid, expiry) in [(&short, 1), (&long, 300)] {
        cloud
            .publish_with_expiry(&topic, command(cid).as_bytes(), 1, false, Some(expiry))
            .map_err(cloud_err("cloud-msg-expiry"))?;
    }
    tb.t().cloud(format!(
        "publish {short} (expiry 1 s) and {long} (expiry 300 s) while the device is offline"
    ));
    tb.dut.pass_time(OUTAGE);
    tb.dut.command("!wifi on").map_err(on(P))?;
    dut_connack(tb, "CONNACK", P)?;
    await_command(&mut tb.dut, "the long-lived command", &long, P)?;
    sentinel(tb, &mut cloud, &topic, P)?;
    if ran(&tb.dut, &short) {
        return Err(fail(
            P,
            "the command whose 1 s expiry passed during the outage was delivered",
        ));
    }
    let remaining = tb
        .wire()
        .packets(Dir::Down)
        .into_iter()
        .find_map(|p| match p {
            Packet::Publish {
                payload, expiry, ..
            } if payload.contains(&long) => Some(expiry),
            _ => None,
        });
    match remaining {
        Some(Some(e)) if (290..300).contains(&e) => tb
            .t()
            .runner("the long-lived command arrived with its remaining interval"),
        other => {
            return Err(fail(
                P,
                format!("the long-lived command arrived with expiry {other:?}, expected the remaining part of 300 s"),
            ))
        }
    }
    tb.t()
        .note(format!("remaining interval on delivery: {remaining:?}"));
    Ok(())
}
