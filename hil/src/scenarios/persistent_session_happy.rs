//! Device Advisor's persistent-session happy case, stated exactly: the
//! device reconnects with clean_session=0, the broker answers
//! session_present=1, and the device, whose subscription the broker had
//! confirmed, does not SUBSCRIBE again; the command queued while it was
//! away arrives, and so does one published after.

use super::steps::{await_command, client_id, cloud_err, command, dut_connack, dut_subscribed, fail, wifi_off};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::{Dir, Packet, Testbed, WireEvent};
use hil_session::Bug;

pub static SCENARIO: Scenario = Scenario {
    name: "persistent_session_happy",
    about: "reconnecting to a kept session (session_present=1) with a confirmed subscription, the device does not SUBSCRIBE again; the command queued while away and one after arrive",
    advisor: &["MQTT_Persistent_Session_Happy_Case"],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::WifiToggle),
    ],
    device: DeviceSpec::DEFAULT,
    catches: &[Control::on_rumqttd(Bug::CleanSession, Promise::SessionReused)],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::SessionReused;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    let topic = tb.topics(&id).cmd();
    if !tb
        .broker()
        .wait_persisted(std::slice::from_ref(&topic), std::time::Duration::from_secs(5))
    {
        tb.t().note("the broker did not store the subscription within 5 s");
    }
    wifi_off(tb, P)?;
    let mut cloud = tb.cloud("cloud-happy")?;
    let queued = format!("happy-queued-{}", tb.nonce());
    cloud
        .publish(&topic, command(&queued).as_bytes(), 1, false)
        .map_err(cloud_err("cloud-happy"))?;
    let before = tb.wire().last_connection().unwrap_or(0);
    tb.dut.command("!wifi on").map_err(super::steps::on(P))?;
    let sp = dut_connack(tb, "CONNACK of the kept session", P)?;
    if !sp {
        return Err(fail(
            P,
            "the broker answered session_present=0: the device's CONNECT did not ask to keep its session",
        ));
    }
    await_command(&mut tb.dut, "the command queued while away", &queued, P)?;
    // The absence of a SUBSCRIBE, judged once a later command has made the
    // round trip (anything the device sent before it is on the wire by then).
    let after = format!("happy-after-{}", tb.nonce());
    cloud
        .publish(&topic, command(&after).as_bytes(), 1, false)
        .map_err(cloud_err("cloud-happy"))?;
    await_command(&mut tb.dut, "a command after the reconnect", &after, P)?;
    let resubscribed = tb.wire().records().iter().any(|r| {
        matches!(&r.event, WireEvent::Packet { conn, dir: Dir::Up, packet: Packet::Subscribe { .. } } if *conn > before)
    });
    if resubscribed {
        return Err(fail(
            P,
            "session_present=1 and its subscription confirmed, yet the device subscribed again",
        ));
    }
    tb.t().runner(
        "verdict: the kept session was reused: no SUBSCRIBE; queued and new commands arrived",
    );
    Ok(())
}
