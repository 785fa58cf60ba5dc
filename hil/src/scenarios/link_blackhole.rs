//! A silent link (the proxy drops every byte, sockets stay open) is noticed
//! within 1.5 x keep-alive; the broker publishes the Will; the retained
//! status is `online` again after recovery.

use super::steps::{STEP, client_id, dut_connack, dut_subscribed, fail, keepalive_within, on, retained_online, status, watch_status};
use super::{Control, Need, Outcome, Promise, Scenario};
use hil_session::Bug;
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::Testbed;
use hil_session::Event;
use std::time::{Duration, Instant};

pub static SCENARIO: Scenario = Scenario {
    name: "link_blackhole",
    about: "a silent link is noticed within 1.5 x keep-alive; the broker publishes the Will; status is online again after",
    advisor: &[],
    needs: &[Need::Can(Capability::ReachesBroker), Need::Can(Capability::LinkFaults)],
    device: DeviceSpec {
        keepalive_s: 2,
        ..DeviceSpec::DEFAULT
    },
    catches: &[
        Control::on_rumqttd(Bug::LongKeepalive, Promise::DeadLinkNoticed),
        Control::on_rumqttd(Bug::NoWill, Promise::LastWill),
    ],
    run,
};

/// How long a dead link may go unnoticed: 1.5 x the 2 s keep-alive the
/// scenario asks for, plus 0.5 s for scheduling.
const BUDGET: Duration = Duration::from_millis(3500);
/// The close reaches the proxy a moment after the console line.
const CLOSE_SLACK: Duration = Duration::from_millis(500);

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::DeadLinkNoticed;
    const WILL: Promise = Promise::LastWill;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    let (mut cloud, topic) = watch_status(tb, &id, "cloud-status", WILL)?;
    let ka = keepalive_within(tb, BUDGET, "a dead link", P)?;
    let conn = tb
        .wire()
        .last_connection()
        .ok_or_else(|| fail(P, "no connection on the wire"))?;
    tb.t().runner("link: blackhole");
    tb.link().blackhole(true);
    let t0 = Instant::now();
    tb.dut
        .expect("the device to notice the dead link", BUDGET, |e| {
            matches!(e, Event::MqttDisconnected { .. })
        })
        .map_err(on(P))?;
    // The evidence: the device closed the silent connection (the console
    // only says so), within the budget.
    let closed = tb.wire().closed_by_device(conn, t0 + BUDGET + CLOSE_SLACK);
    let noticed = match closed {
        Some(at) if at.duration_since(t0) <= BUDGET + CLOSE_SLACK => at.duration_since(t0),
        Some(at) => {
            return Err(fail(
                P,
                format!("the device closed the silent link after {:.2} s, over the {:.1} s budget", at.duration_since(t0).as_secs_f32(), BUDGET.as_secs_f32()),
            ))
        }
        None => {
            return Err(fail(
                P,
                "the console says the link is down, but the device never closed the silent connection on the wire",
            ))
        }
    };
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
    dut_connack(tb, "CONNACK", P)?;
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
        "verdict: the device closed the silent link within the {:.1} s budget",
        BUDGET.as_secs_f32()
    ));
    Ok(())
}
