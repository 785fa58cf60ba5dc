//! A silent link (the proxy drops every byte, sockets stay open) is noticed
//! within 1.5 x keep-alive; the broker publishes the Will; the retained
//! status is `online` again after recovery.

use super::steps::{watch_status, 
    client_id, connack, fail, on, retained_online, status, subscribed, STEP,
};
use super::{Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::{Dir, Packet, Testbed};
use hil_session::Event;
use std::time::{Duration, Instant};

pub static SCENARIO: Scenario = Scenario {
    name: "link_blackhole",
    about: "a silent link is noticed within 1.5 x keep-alive; the broker publishes the Will; status is online again after",
    needs: &[Need::Can(Capability::ReachesBroker), Need::Can(Capability::LinkFaults)],
    device: DeviceSpec {
        keepalive_s: 2,
        ..DeviceSpec::DEFAULT
    },
    catches: &[],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::DeadLinkNoticed;
    const WILL: Promise = Promise::LastWill;
    let id = client_id(tb)?;
    subscribed(&mut tb.dut)?;
    let (mut cloud, topic) = watch_status(tb, &id, "cloud-status", WILL)?;
    tb.t().runner("link: blackhole");
    tb.link().blackhole(true);
    let t0 = Instant::now();
    // The device's own keep-alive, as its CONNECT declared it on the wire.
    let ka_s = tb
        .wire()
        .packets(Dir::Up)
        .iter()
        .rev()
        .find_map(|p| match p {
            Packet::Connect { keepalive, .. } => Some(*keepalive),
            _ => None,
        })
        .unwrap_or(tb.keepalive_s());
    let ka = Duration::from_secs(ka_s as u64);
    // 1.5 x keep-alive, plus 0.5 s for the sim's scheduling.
    let limit = ka * 3 / 2 + Duration::from_millis(500);
    tb.dut
        .expect("the device to notice the dead link", limit, |e| {
            matches!(e, Event::MqttDisconnected { .. })
        })
        .map_err(on(P))?;
    let noticed = t0.elapsed();
    tb.t().runner("device noticed the dead link");
    // The broker's own keep-alive (1.5 x) ends the session and fires the Will.
    if !status(
        &mut cloud,
        &topic,
        "offline",
        ka * 3 / 2 + Duration::from_secs(5),
    )? {
        return Err(fail(
            WILL,
            "the broker published no Last Will `offline` after the link went silent",
        ));
    }
    tb.t().cloud("status offline (Last Will)");
    tb.t().runner("link: restored");
    tb.link().blackhole(false);
    connack(&mut tb.dut, "CONNACK", P)?;
    if !status(&mut cloud, &topic, "online", STEP)? {
        return Err(fail(
            WILL,
            "no `online` status after the device reconnected",
        ));
    }
    tb.t().cloud("status online");
    // A newcomer sees the retained status: it must be `online`.
    retained_online(tb, &topic, "cloud-late", WILL)?;
    tb.t().note(format!(
        "dead link noticed after {:.2} s",
        noticed.as_secs_f32()
    ));
    tb.t().runner(format!(
        "verdict: dead link noticed within {:.1} s (1.5 x keep-alive + 0.5 s)",
        limit.as_secs_f32()
    ));
    Ok(())
}
