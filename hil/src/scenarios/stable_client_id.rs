//! The client ID is the same after three reboots and an outage, on the
//! console and in every CONNECT on the wire; the session survives.

use super::steps::{wifi_off, STEP, client_id, dut_connack, dut_subscribed, fail, on};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::{Dir, Packet, Testbed};
use hil_broker::SessionsOnRestart;
use hil_session::{Bug, Event};

pub static SCENARIO: Scenario = Scenario {
    name: "stable_client_id",
    about: "the client ID is the same after three reboots and an outage; the session survives",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::Reset),
        Need::Can(Capability::WifiToggle),
    ],
    device: DeviceSpec::DEFAULT,
    catches: &[Control::on_rumqttd(
        Bug::RandomClientId,
        Promise::StableClientId,
    )],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::StableClientId;
    let first = client_id(tb)?;
    dut_subscribed(tb)?;
    let keeps = tb.broker().sessions_on_restart() != SessionsOnRestart::Unknown;
    // Boot counts are relative: a board (or a reused sim) has booted before.
    let first_boot = tb
        .dut
        .seen
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Boot { count, .. } => Some(*count),
            _ => None,
        })
        .unwrap_or(0);
    for boot in first_boot + 1..=first_boot + 3 {
        tb.dut.command("!reboot").map_err(on(P))?;
        tb.dut
            .expect(
                "boot",
                STEP,
                |e| matches!(e, Event::Boot { count, .. } if *count == boot),
            )
            .map_err(on(P))?;
        tb.dut
            .expect("id", STEP, |e| matches!(e, Event::Id { .. }))
            .map_err(on(P))?;
        let id = client_id(tb)?;
        if id != first {
            return Err(fail(
                P,
                format!("boot {boot}: client ID {id}, first boot had {first}"),
            ));
        }
        let sp = dut_connack(tb, "CONNACK", P)?;
        if keeps && !sp {
            return Err(fail(
                Promise::PersistentSession,
                format!("boot {boot}: CONNACK session_present=0"),
            ));
        }
    }
    wifi_off(tb, P)?;
    tb.dut.command("!wifi on").map_err(on(P))?;
    dut_connack(tb, "CONNACK", P)?;
    let ids: Vec<&String> = tb
        .dut
        .seen
        .iter()
        .filter_map(|e| match e {
            Event::Id { client_id } => Some(client_id),
            _ => None,
        })
        .collect();
    if let Some(other) = ids.iter().find(|i| ***i != first) {
        return Err(fail(P, format!("the device also used client ID {other}")));
    }
    let reported = ids.len();
    // The wire side: every CONNECT the broker saw.
    let connects: Vec<(String, bool)> = tb
        .wire()
        .packets(Dir::Up)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Connect {
                client_id, clean, ..
            } => Some((client_id, clean)),
            _ => None,
        })
        .collect();
    if connects.len() < 5 {
        return Err(fail(
            P,
            format!(
                "expected 5 CONNECTs on the wire (boot, 3 reboots, outage), saw {}",
                connects.len()
            ),
        ));
    }
    if let Some((id, _)) = connects.iter().find(|(id, _)| *id != first) {
        return Err(fail(
            P,
            format!("a CONNECT on the wire carried client ID {id}, the console said {first}"),
        ));
    }
    if connects.iter().any(|(_, clean)| *clean) {
        return Err(fail(
            Promise::PersistentSession,
            "a CONNECT on the wire has clean_session=1",
        ));
    }
    tb.t().runner(format!(
        "verdict: client ID {first} on all {reported} console reports and all {} CONNECTs on the wire",
        connects.len()
    ));
    Ok(())
}
