//! Commands published at QoS 1 and 2 while the device is offline arrive
//! once each, in order, on a session the broker kept.

use super::steps::{wifi_off, client_id, cloud_err, dut_connack, dut_subscribed, executed, fail, on, sentinel};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::Testbed;
use hil_session::Bug;

pub static SCENARIO: Scenario = Scenario {
    name: "queued_commands",
    about:
        "commands published at QoS 1 and 2 while the device is offline arrive once each, in order",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::WifiToggle),
    ],
    device: DeviceSpec::DEFAULT,
    catches: &[Control::on_rumqttd(
        Bug::CleanSession,
        Promise::PersistentSession,
    )],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::QueuedCommandsOnce;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    wifi_off(tb, P)?;
    let mut cloud = tb.cloud("cloud-commands")?;
    let topic = tb.topics(&id).cmd();
    let mut expected = Vec::new();
    for (n, qos) in [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)] {
        let cid = format!("c{n}-{}", tb.nonce());
        let payload = format!("{{\"id\":\"{cid}\",\"do\":\"blink\"}}");
        cloud
            .publish(&topic, payload.as_bytes(), qos, false)
            .map_err(cloud_err("cloud-commands"))?;
        tb.t().cloud(format!("publish {cid} qos={qos}"));
        expected.push(cid);
    }
    tb.dut.command("!wifi on").map_err(on(P))?;
    if !dut_connack(tb, "CONNACK", P)? {
        return Err(fail(
            Promise::PersistentSession,
            "CONNACK session_present=0 after the outage: the broker did not keep the session, so commands queued for the device are lost",
        ));
    }
    expected.push(sentinel(tb, &mut cloud, &topic, P)?);
    let got = executed(&tb.dut);
    if got != expected {
        return Err(fail(P, format!("executed {got:?}, expected {expected:?}")));
    }
    tb.t().runner(format!(
        "verdict: executed {} commands once each, in order",
        got.len()
    ));
    Ok(())
}
