//! Commands of growing size, up to and past the device's maximum packet
//! size: those within it are executed intact (the device's size and digest
//! of what it executed match the payload the wire carried); those beyond are
//! refused and counted, and the device goes on (a command after them is
//! executed). On MQTT 3.1.1 the device discards an oversized PUBLISH and
//! acknowledges it, so the broker does not redeliver it on every reconnect;
//! on MQTT 5 the limit is announced in CONNECT and the broker must not send
//! more ([MQTT-3.1.2-24]: the monitor names a broker that does).

use super::steps::{await_command, client_id, cloud_err, command, dut_subscribed, fail, on, STEP};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::monitor::publish_size_at_least;
use crate::testbed::{Dir, Packet, Testbed};
use hil_broker::MqttVersion;
use hil_session::console::fnv1a64;
use hil_session::{Bug, Event};

pub static SCENARIO: Scenario = Scenario {
    name: "large_payload",
    about: "commands of 1, 8 and 15 KiB are executed intact (size and digest checked against the wire); 17, 32 and 64 KiB ones, over the 16 KiB maximum packet size, are refused and counted without a crash; MQTT 5 announces the limit in CONNECT",
    advisor: &["MQTT_Long_Duration: RECEIVE_LARGE_PAYLOAD"],
    needs: &[Need::Can(Capability::ReachesBroker)],
    device: DeviceSpec::DEFAULT,
    catches: &[Control::on_rumqttd(Bug::NoPacketLimit, Promise::LargePayload)],
    run,
};

/// The maximum packet size the scenario expects of a device that does not
/// announce one (3.1.1 has no way to): the session core's 16 KiB.
const LIMIT: usize = 16 * 1024;

/// A command of exactly `size` payload bytes: `{"id":"...","pad":"xx..."}`.
fn padded(id: &str, size: usize) -> String {
    let head = format!("{{\"id\":\"{id}\",\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2).max(1);
    format!("{head}{}\"}}", "x".repeat(pad))
}

fn rejected(tb: &mut Testbed, p: Promise) -> Result<u64, super::Stop> {
    match tb.dut.command("!status").map_err(on(p))? {
        Event::Ack { fields, .. } => Ok(fields
            .iter()
            .find(|(k, _)| k == "rejected")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)),
        _ => Ok(0),
    }
}

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::LargePayload;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    let v5 = tb.mqtt() == MqttVersion::V5;
    let announced = tb.wire().packets(Dir::Up).iter().rev().find_map(|p| match p {
        Packet::Connect { max_packet_size, .. } => Some(*max_packet_size),
        _ => None,
    });
    let limit = match (v5, announced.flatten()) {
        (true, Some(m)) if m as usize <= LIMIT => m as usize,
        (true, Some(m)) => {
            return Err(fail(P, format!("the device announces a Maximum Packet Size of {m} B: more than the {LIMIT} B it can hold")))
        }
        (true, None) => {
            return Err(fail(P, "the MQTT 5 CONNECT announces no Maximum Packet Size: the broker may send anything"))
        }
        (false, _) => LIMIT,
    };
    let before = rejected(tb, P)?;
    let topic = tb.topics(&id).cmd();
    let mut cloud = tb.cloud("cloud-large")?;
    let nonce = tb.nonce().to_string();
    // Within: the packet (payload plus topic and headers) fits the limit.
    let within = [1024, 8 * 1024, limit - 200 - topic.len()];
    let beyond = [limit + 1024, 32 * 1024, 64 * 1024];
    for (k, size) in within.iter().enumerate() {
        let cid = format!("big-in{k}-{nonce}");
        let payload = padded(&cid, *size);
        cloud
            .publish(&topic, payload.as_bytes(), 1, false)
            .map_err(cloud_err("cloud-large"))?;
        await_command(&mut tb.dut, &format!("the {size} B command"), &cid, P)?;
        let digest = tb
            .dut
            .expect("its size and digest (`cmd.digest`)", STEP, |e| {
                matches!(e, Event::CmdDigest { id, .. } if *id == cid)
            })
            .map_err(on(P))?;
        let Event::CmdDigest { len, fnv, .. } = digest else {
            unreachable!("matched above")
        };
        let want = fnv1a64(payload.as_bytes());
        if len as usize != payload.len() || fnv != want {
            return Err(fail(
                P,
                format!("the {} B command: the device says it executed {len} B with digest {fnv}; the wire carried {} B with digest {want}", payload.len(), payload.len()),
            ));
        }
        tb.t().runner(format!("{} B command executed intact", payload.len()));
    }
    let mut big_ids = Vec::new();
    for (k, size) in beyond.iter().enumerate() {
        let cid = format!("big-out{k}-{nonce}");
        let payload = padded(&cid, *size);
        cloud
            .publish(&topic, payload.as_bytes(), 1, false)
            .map_err(cloud_err("cloud-large"))?;
        big_ids.push(cid);
    }
    // A small command after them: the device is alive, not stuck behind them.
    let after = format!("after-big-{nonce}");
    cloud
        .publish(&topic, command(&after).as_bytes(), 1, false)
        .map_err(cloud_err("cloud-large"))?;
    await_command(&mut tb.dut, "the small command after the oversized ones", &after, P)?;
    let executed: Vec<&String> = big_ids
        .iter()
        .filter(|c| super::steps::ran(&tb.dut, c))
        .collect();
    if !executed.is_empty() {
        return Err(fail(
            P,
            format!("commands over the {limit} B limit were executed: {executed:?}"),
        ));
    }
    // What reached the device over the limit, by the wire (on MQTT 5 a
    // conforming broker sends none of them).
    let delivered_big = tb
        .wire()
        .packets(Dir::Down)
        .iter()
        .filter(|p| matches!(p, Packet::Publish { topic: t, qos, payload, .. } if *t == topic && publish_size_at_least(t, *qos, payload, v5) > limit))
        .count() as u64;
    let counted = rejected(tb, P)? - before;
    // 3.1.1: each one that reached the device is refused once (it was
    // acknowledged, so never redelivered). MQTT 5: the device refuses each
    // delivery with DISCONNECT 0x95 and the broker may redeliver: counted
    // at least once if any came, never without one.
    let consistent = if v5 {
        (delivered_big == 0) == (counted == 0)
    } else {
        counted == delivered_big
    };
    if !consistent {
        return Err(fail(
            P,
            format!("{delivered_big} PUBLISHes over the limit reached the device; it counted {counted} refused"),
        ));
    }
    tb.t().runner(format!(
        "verdict: {} commands within {limit} B executed intact; {delivered_big} over it reached the device and {counted} were refused and counted; the device went on",
        within.len()
    ));
    Ok(())
}
