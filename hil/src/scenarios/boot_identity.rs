//! The device boots, reports a client ID derived from its MAC, and answers
//! `!status` with the same ID; the CONNECT on the wire carries that ID (the
//! console only states it: the wire proves it).

use super::steps::{STEP, client_id, dut_subscribed, fail, on};
use super::{Control, Need, Outcome, Promise, Scenario};
use hil_session::Bug;
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::{Dir, Packet, Testbed};
use hil_session::Event;

pub static SCENARIO: Scenario = Scenario {
    name: "boot_identity",
    about: "the device boots, reports a client ID derived from its MAC, and answers !status with the same ID",
    advisor: &[],
    needs: &[Need::Can(Capability::Reset), Need::Can(Capability::ReachesBroker)],
    device: DeviceSpec::DEFAULT,
    catches: &[Control::on_rumqttd(Bug::RandomClientId, Promise::StableClientId)],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::StableClientId;
    // A serial board was reset (and its boot line read) while it was brought up.
    if !tb.dut.seen.iter().any(|e| matches!(e, Event::Boot { .. })) {
        tb.dut
            .expect("`@hil boot` line", STEP, |e| {
                matches!(e, Event::Boot { .. })
            })
            .map_err(on(P))?;
    }
    let id = client_id(tb)?;
    let Some(hex) = id.strip_prefix("esp32c3-") else {
        return Err(fail(
            P,
            format!("client ID {id} is not <chip>-<MAC as 12 hex digits>"),
        ));
    };
    if hex.len() != 12
        || !hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        return Err(fail(
            P,
            format!("client ID {id} is not <chip>-<MAC as 12 lowercase hex digits>"),
        ));
    }
    if let Some(expected) = tb.expected_client_id() {
        if expected != id {
            return Err(fail(
                P,
                format!("client ID {id}, but the board's MAC gives {expected}"),
            ));
        }
    }
    // Connected and subscribed first: then the answer to !status has one
    // place in the transcript (before, it raced the CONNACK and the SUBACK).
    dut_subscribed(tb)?;
    let status = tb.dut.command("!status").map_err(on(P))?;
    let reported = match &status {
        Event::Ack { fields, .. } => fields
            .iter()
            .find(|(k, _)| k == "client_id")
            .map(|(_, v)| v.clone()),
        _ => None,
    };
    if reported.as_deref() != Some(id.as_str()) {
        return Err(fail(
            P,
            format!("!status reports client ID {reported:?}, the boot said {id}"),
        ));
    }
    // The evidence: what the device said on the wire, not on its console.
    let connects: Vec<String> = tb
        .wire()
        .packets(Dir::Up)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Connect { client_id, .. } => Some(client_id),
            _ => None,
        })
        .collect();
    match connects.first() {
        None => return Err(fail(P, format!("the console says {id}, but no CONNECT reached the wire"))),
        Some(c) if *c != id => {
            return Err(fail(P, format!("the console says client ID {id}, the wire shows CONNECT client_id={c}")))
        }
        Some(_) => {}
    }
    tb.t()
        .runner(format!("verdict: client ID {id} at boot and in !status"));
    Ok(())
}
