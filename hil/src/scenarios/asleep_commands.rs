//! Commands queued while the device was powered off (deep sleep, a flat
//! battery) arrive once each, in order, when it wakes from its flash: the
//! persistent session and stable identity survive a power cycle, not just a
//! Wi-Fi outage. The wire proves the wake-up CONNECT resumed the session.

use super::steps::{client_id, cloud_err, command, dut_connack, dut_subscribed, executed, fail, power_cut, rig, sentinel};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::{Dir, Packet, Testbed};
use hil_session::Bug;

pub static SCENARIO: Scenario = Scenario {
    name: "asleep_commands",
    about: "commands queued at QoS 1 and 2 while the device is powered off arrive once each, in order, after it wakes",
    advisor: &[],
    needs: &[Need::Can(Capability::ReachesBroker), Need::Can(Capability::PowerCut)],
    device: DeviceSpec::DEFAULT,
    catches: &[
        Control::on_rumqttd(Bug::CleanSession, Promise::PersistentSession),
        Control::on_rumqttd(Bug::RandomClientId, Promise::PersistentSession),
    ],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::QueuedCommandsOnce;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    let topic = tb.topics(&id).cmd();
    power_cut(tb)?;
    let mut cloud = tb.cloud("cloud-asleep")?;
    let mut expected = Vec::new();
    for (n, qos) in [(1, 1), (2, 2), (3, 1), (4, 2)] {
        let cid = format!("z{n}-{}", tb.nonce());
        cloud
            .publish(&topic, command(&cid).as_bytes(), qos, false)
            .map_err(cloud_err("cloud-asleep"))?;
        tb.t().cloud(format!("publish {cid} qos={qos} while the device is off"));
        expected.push(cid);
    }
    // Every packet from here on is the woken device's.
    let woke_at = tb.wire().packets(Dir::Up).len();
    tb.dut.power_on().map_err(rig)?;
    tb.t().runner("power restored: the device wakes from its flash");
    if !dut_connack(tb, "CONNACK after waking", P)? {
        return Err(fail(
            Promise::PersistentSession,
            "CONNACK session_present=0 after waking: the commands queued while the device slept are lost",
        ));
    }
    expected.push(sentinel(tb, &mut cloud, &topic, P)?);
    let got = executed(&tb.dut);
    if got != expected {
        return Err(fail(P, format!("executed {got:?}, expected {expected:?}")));
    }
    // The wire: the wake-up CONNECT carried the same client ID, clean=0.
    let wake = tb.wire().packets(Dir::Up).into_iter().skip(woke_at).find_map(|p| match p {
        Packet::Connect { client_id, clean, .. } => Some((client_id, clean)),
        _ => None,
    });
    match wake {
        Some((cid, false)) if cid == id => {}
        other => {
            return Err(fail(
                Promise::PersistentSession,
                format!("the wake-up CONNECT on the wire was {other:?}; the device said {id} with clean=0"),
            ))
        }
    }
    tb.t().runner(format!(
        "verdict: {} commands queued while asleep executed once each, in order, after waking",
        got.len()
    ));
    Ok(())
}
