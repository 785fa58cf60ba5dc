//! QoS 2 commands reach devices subscribed at 0, 1 and 2 at
//! min(publish, subscription); a lower subscription is reported as the QoS
//! mismatch pitfall.

use super::steps::{STEP, cloud_err, cmd_of, command, device_id, dut_subscribed, fail, on, rig, subscribed};
use super::{Control, ControlBroker, Need, Outcome, Promise, Scenario};
use hil_session::{Bug, MqttVersion};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::{Dir, Packet, Testbed};
use hil_broker::check::Semantic;

pub static SCENARIO: Scenario = Scenario {
    name: "effective_qos",
    about: "QoS 2 commands reach devices subscribed at 0, 1 and 2 at min(publish, subscription); a lower subscription is the QoS mismatch pitfall",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::Fleet),
        Need::Semantic(Semantic::QosCapping),
    ],
    device: DeviceSpec::DEFAULT,
    catches: &[Control::new(
        Bug::SubscribeQos0,
        Promise::EffectiveQos,
        ControlBroker::Mosquitto,
        MqttVersion::V3_1_1,
    )],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::EffectiveQos;
    dut_subscribed(tb)?;
    let mut cloud = tb.cloud("cloud-qos")?;
    let mut mismatches = Vec::new();
    for (n, sub_qos) in [(1u8, 0u8), (2, 1), (3, 2)] {
        let mac = format!("24:0a:c4:00:40:{n:02x}");
        let mut dev = tb
            .fleet()?
            .start(&mac, &|s| s.cmd_qos = sub_qos)
            .map_err(rig)?;
        let id = device_id(&mut dev, P)?;
        let granted = subscribed(&mut dev, tb.wire())?;
        let cid = format!("q{n}-{}", tb.nonce());
        cloud
            .publish(&tb.topics(&id).cmd(), command(&cid).as_bytes(), 2, false)
            .map_err(cloud_err("cloud-qos"))?;
        tb.t().cloud(format!(
            "publish {cid} qos=2 to a device subscribed at qos={sub_qos} (granted {granted})"
        ));
        let got = dev
            .expect("the command", STEP, |e| cmd_of(e, &cid).is_some())
            .map_err(on(P))?;
        let (qos, _) = cmd_of(&got, &cid).expect("matched above");
        // The evidence: what the device asked for and what it was given, on the wire.
        let topic = tb.topics(&id).cmd();
        let asked = tb.wire().packets(Dir::Up).into_iter().find_map(|p| match p {
            Packet::Subscribe { filters, .. } => {
                filters.into_iter().find(|(f, _)| *f == topic).map(|(_, q)| q)
            }
            _ => None,
        });
        if asked != Some(sub_qos) {
            return Err(fail(
                P,
                format!("the device was configured to subscribe at QoS {sub_qos}; the wire shows SUBSCRIBE at {asked:?}: the QoS mismatch pitfall"),
            ));
        }
        let delivered = tb.wire().packets(Dir::Down).into_iter().find_map(|p| match p {
            Packet::Publish { payload, qos, .. } if payload.contains(&cid) => Some(qos),
            _ => None,
        });
        if delivered != Some(qos) {
            return Err(fail(
                P,
                format!("the console says {cid} arrived at QoS {qos}, the wire shows {delivered:?}"),
            ));
        }
        let want = 2.min(granted);
        if qos != want {
            return Err(fail(
                P,
                format!("subscription QoS {granted}, publish QoS 2: delivered at QoS {qos}, expected {want}"),
            ));
        }
        tb.t().runner(format!(
            "subscription qos={sub_qos}: delivered at qos={qos}"
        ));
        if granted < 2 {
            mismatches.push(format!(
                "subscription QoS {granted} < publish QoS 2 -> delivered at QoS {qos}"
            ));
        }
    }
    for m in &mismatches {
        // The report's pitfall line: not a failure of the device, a warning to its designers.
        tb.t().runner(format!(
            "pitfall: QoS mismatch: {m}: no end-to-end exactly-once guarantee"
        ));
    }
    Ok(())
}
