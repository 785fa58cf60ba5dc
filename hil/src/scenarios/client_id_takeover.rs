//! A second device with the same client ID takes the session over; the
//! runner reports the duplicate client ID pitfall from the wire.

use super::steps::{STEP, client_id, connack, dut_subscribed, fail, on, rig};
use super::{Control, Need, Outcome, Promise, Scenario};
use hil_session::Bug;
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::{Dir, Packet, Testbed};
use hil_broker::check::Semantic;
use hil_session::Event;

pub static SCENARIO: Scenario = Scenario {
    name: "client_id_takeover",
    about: "a second device with the same client ID takes the session over; the runner reports the duplicate client ID pitfall",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::Fleet),
        Need::Semantic(Semantic::Takeover),
    ],
    device: DeviceSpec::DEFAULT,
    catches: &[Control::on_rumqttd(Bug::RandomClientId, Promise::DuplicateClientIdDetected)],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::DuplicateClientIdDetected;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    // A second device with the same MAC: a cloned board, or a random-ID fallback gone wrong.
    let mac = tb.mac().to_string();
    let mut twin = tb.fleet()?.start(&mac, &|_| {}).map_err(rig)?;
    connack(&mut twin, tb.wire(), "the twin's CONNACK", P)?;
    // Its flash holds no confirmed subscription, so it subscribes whatever
    // session_present says; wait for it, so the wire log is complete.
    twin.expect("the twin's subscription", STEP, |e| {
        matches!(e, Event::MqttSubscribed { .. })
    })
    .map_err(on(P))?;
    tb.t().runner(format!("a second device connected as {id}"));
    let dropped = tb
        .dut
        .expect("the first device to be dropped", STEP, |e| {
            matches!(e, Event::MqttDisconnected { .. })
        })
        .map_err(|_| fail(P, "the broker did not drop the first connection"))?;
    tb.t().runner(format!("first device: {dropped:?}"));
    // Seen from the wire: two live connections announced the same client ID.
    let connects = tb
        .wire()
        .packets(Dir::Up)
        .into_iter()
        .filter(|p| matches!(p, Packet::Connect { client_id, .. } if *client_id == id))
        .count();
    if connects < 2 {
        return Err(fail(
            P,
            format!("expected two CONNECTs with {id} on the wire, saw {connects}"),
        ));
    }
    tb.t().runner(format!(
        "pitfall: random/duplicate client ID: two devices share {id}; the broker hands the session to whichever connected last, and they take it from each other on every reconnect"
    ));
    drop(twin);
    Ok(())
}
