//! A link loss and a power cut between CONNACK and SUBACK: session_present=1
//! comes back without the subscription; the device must subscribe again and
//! get its command.

use super::steps::{STEP, await_command, cloud_err, command, connack, dut_subscribed, fail, on, online, rig};
use super::{Control, Need, Outcome, Promise, Scenario, Stop};
use crate::dut::{Capability, DeviceSpec, Dut};
use crate::testbed::{RigError, Testbed};
use hil_broker::Client;
use hil_session::{Bug, Event};
use std::time::Instant;

pub static SCENARIO: Scenario = Scenario {
    name: "interrupted_subscribe",
    about: "a link loss and a power cut between CONNACK and SUBACK: session_present=1 comes back without the subscription; the device subscribes again and gets its command",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::Fleet),
        Need::Can(Capability::PowerCut),
        Need::Can(Capability::LinkFaults),
    ],
    device: DeviceSpec::DEFAULT,
    catches: &[
        Control::on_rumqttd(Bug::TrustSessionPresent, Promise::SubscribeUntilSuback),
        Control::on_mosquitto_v5(Bug::TrustSessionPresent, Promise::SubscribeUntilSuback),
    ],
    run,
};

const P: Promise = Promise::SubscribeUntilSuback;

/// After a SUBSCRIBE that never reached the broker, the device reconnects;
/// the broker must answer session_present=1 (its session outlived the link)
/// and the device must subscribe again and get a command.
fn resubscribes_and_gets_a_command(
    tb: &Testbed,
    dev: &mut Dut,
    id: &str,
    cloud: &mut Client,
    tag: &str,
) -> Outcome {
    if !connack(dev, tb.wire(), "CONNACK after the interruption", P)? {
        return Err(Stop::Rig(RigError::BrokerBehaviour(format!(
            "{id}: session_present=0 after the interruption; the broker dropped the persistent session, so the pitfall cannot show"
        ))));
    }
    tb.t().runner(format!(
        "{id}: session_present=1, yet the broker never saw its SUBSCRIBE"
    ));
    dev.expect("re-subscription (SUBSCRIBE and SUBACK)", STEP, |e| {
        matches!(e, Event::MqttSubscribed { .. })
    })
    .map_err(on(P))?;
    let cid = format!("{tag}-{}", tb.nonce());
    cloud
        .publish(&tb.topics(id).cmd(), command(&cid).as_bytes(), 1, false)
        .map_err(cloud_err("cloud-sub"))?;
    tb.t().cloud(format!("publish {tag} to the device"));
    await_command(dev, "the command", &cid, P)?;
    tb.t()
        .runner(format!("{id}: subscribed again and executed {tag}"));
    Ok(())
}

fn run(tb: &mut Testbed) -> Outcome {
    dut_subscribed(tb)?;
    let mut cloud = tb.cloud("cloud-sub")?;

    // 1. Link loss between CONNACK and SUBACK.
    let hold = tb.hold_next_subscribe();
    let mut dev = tb
        .fleet()?
        .start("24:0a:c4:00:70:01", &|_| {})
        .map_err(rig)?;
    let (id, _) = online(&mut dev, tb.wire(), P)?;
    if !hold.wait(Instant::now() + STEP) {
        return Err(fail(P, format!("{id} never sent its SUBSCRIBE")));
    }
    tb.t()
        .runner("its link is cut while the SUBSCRIBE is held back");
    hold.cut();
    resubscribes_and_gets_a_command(tb, &mut dev, &id, &mut cloud, "after-cut")?;

    // 2. Power cut between CONNACK and SUBACK: what the device knows after
    // the reboot is only what it stored.
    let hold = tb.hold_next_subscribe();
    let mut dev = tb
        .fleet()?
        .start("24:0a:c4:00:70:02", &|_| {})
        .map_err(rig)?;
    let (id, _) = online(&mut dev, tb.wire(), P)?;
    if !hold.wait(Instant::now() + STEP) {
        return Err(fail(P, format!("{id} never sent its SUBSCRIBE")));
    }
    dev.power_off().map_err(rig)?;
    drop(hold);
    dev.power_on().map_err(rig)?;
    tb.t()
        .runner("power restored while the broker still holds a session without the subscription");
    resubscribes_and_gets_a_command(tb, &mut dev, &id, &mut cloud, "after-power-cut")?;
    tb.t().runner(
        "verdict: after a link loss and after a power cut before SUBACK the device subscribed again",
    );
    Ok(())
}
