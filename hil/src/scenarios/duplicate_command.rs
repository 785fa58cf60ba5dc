//! A command delivered twice (QoS 1 at-least-once) is acknowledged twice and
//! executed once.

use super::steps::{client_id, cloud_err, dut_subscribed, executed, fail, sentinel};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::Testbed;
use hil_session::{Bug, Event};

pub static SCENARIO: Scenario = Scenario {
    name: "duplicate_command",
    about:
        "a command delivered twice (QoS 1 at-least-once) is acknowledged twice and executed once",
    advisor: &[],
    needs: &[Need::Can(Capability::ReachesBroker)],
    device: DeviceSpec::DEFAULT,
    catches: &[Control::on_rumqttd(Bug::NoDedupe, Promise::ExecutedOnce)],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::ExecutedOnce;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    let topic = tb.topics(&id).cmd();
    let mut cloud = tb.cloud("cloud-dup")?;
    let cid = format!("d1-{}", tb.nonce());
    // What a device sees when its PUBACK was lost: the same command again.
    for n in 1..=2 {
        cloud
            .publish(
                &topic,
                format!("{{\"id\":\"{cid}\",\"do\":\"open-valve\"}}").as_bytes(),
                1,
                false,
            )
            .map_err(cloud_err("cloud-dup"))?;
        tb.t().cloud(format!("publish {cid} qos=1 (delivery {n})"));
    }
    sentinel(tb, &mut cloud, &topic, P)?;
    let executed = executed(&tb.dut).iter().filter(|i| **i == cid).count();
    let duplicates = tb
        .dut
        .seen
        .iter()
        .filter(|e| matches!(e, Event::CmdDuplicate { id, .. } if *id == cid))
        .count();
    if executed != 1 {
        return Err(fail(
            P,
            format!("{cid} executed {executed} times: QoS 1 duplicates must not run twice"),
        ));
    }
    if duplicates != 1 {
        return Err(fail(
            P,
            format!("the second delivery of {cid} was not reported as a duplicate"),
        ));
    }
    tb.t()
        .runner("verdict: executed once, the redelivery acknowledged and reported as a duplicate");
    Ok(())
}
