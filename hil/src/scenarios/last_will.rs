//! The Last Will `offline` on a cut link and on a power cut; the retained
//! status is `online` after each recovery.

use super::steps::{STEP, client_id, dut_connack, dut_subscribed, fail, retained_online, rig, status, watch_status};
use super::{Control, Need, Outcome, Promise, Scenario};
use hil_session::Bug;
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::Testbed;
use hil_broker::check::Semantic;

pub static SCENARIO: Scenario = Scenario {
    name: "last_will",
    about: "the Last Will `offline` on a cut link and on a power cut; retained `online` after each recovery",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::LinkFaults),
        Need::Can(Capability::PowerCut),
        Need::Semantic(Semantic::LastWill),
    ],
    device: DeviceSpec::DEFAULT,
    catches: &[Control::on_rumqttd(Bug::NoWill, Promise::LastWill)],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::LastWill;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    let (mut cloud, topic) = watch_status(tb, &id, "cloud-will", P)?;
    // 1. The link is cut (RST both ways).
    tb.t().runner("link: cut");
    tb.link().cut();
    if !status(&mut cloud, &topic, "offline", STEP)? {
        return Err(fail(P, "no Last Will `offline` after the link was cut"));
    }
    tb.t().cloud("status offline (Last Will after the cut)");
    dut_connack(tb, "CONNACK", P)?;
    if !status(&mut cloud, &topic, "online", STEP)? {
        return Err(fail(P, "no `online` after reconnecting"));
    }
    tb.t().cloud("status online");
    // 2. Power cut: kill -9 of the device. The broker sees the socket close
    // without DISCONNECT.
    tb.dut.power_off().map_err(rig)?;
    if !status(&mut cloud, &topic, "offline", STEP)? {
        return Err(fail(P, "no Last Will `offline` after a power cut"));
    }
    tb.t()
        .cloud("status offline (Last Will after the power cut)");
    tb.dut.power_on().map_err(rig)?;
    tb.t()
        .runner("power restored: the device boots from its flash");
    dut_connack(tb, "CONNACK", P)?;
    if !status(&mut cloud, &topic, "online", STEP)? {
        return Err(fail(P, "no `online` after the power came back"));
    }
    tb.t().cloud("status online");
    retained_online(tb, &topic, "cloud-late-will", P)?;
    tb.t()
        .runner("verdict: Will on cut and on power cut, online after each recovery");
    Ok(())
}
