//! The broker withholds PINGRESP while everything else still flows: the
//! device notices within 1.5 x its keep-alive, closes the link itself and
//! reconnects. Unlike `link_blackhole` the broker is alive and the TCP link
//! works: only the keep-alive answer is missing.

use super::steps::{dut_connack, dut_subscribed, fail, keepalive_within};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::rules::{Withhold, Withheld};
use crate::testbed::{Dir, Packet, Testbed};
use hil_session::Bug;
use std::time::{Duration, Instant};

pub static SCENARIO: Scenario = Scenario {
    name: "no_pingresp",
    about: "PINGRESPs are withheld: the device closes the link within 1.5 x its keep-alive (2 s) and reconnects",
    advisor: &["MQTT_No_Ack_PingResp"],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::LinkFaults),
    ],
    device: DeviceSpec {
        keepalive_s: 2,
        ..DeviceSpec::DEFAULT
    },
    catches: &[Control::on_rumqttd(Bug::LongKeepalive, Promise::DeadLinkNoticed)],
    run,
};

/// 1.5 x the 2 s keep-alive the scenario asks for, plus 0.5 s for scheduling.
const BUDGET: Duration = Duration::from_millis(3500);

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::DeadLinkNoticed;
    dut_subscribed(tb)?;
    keepalive_within(tb, BUDGET, "a broker that stops answering PINGREQ", P)?;
    let conn = tb
        .wire()
        .last_connection()
        .ok_or_else(|| fail(P, "no connection on the wire"))?;
    let rule = tb.link().install(Withhold::new(Withheld::Pingresp));
    tb.t().runner("proxy: withhold every PINGRESP");
    let t0 = Instant::now();
    let closed = tb.wire().closed_by_device(conn, t0 + BUDGET + Duration::from_secs(5));
    drop(rule);
    tb.t().runner("proxy: PINGRESPs pass again");
    let took = match closed {
        Some(at) => at.duration_since(t0),
        None => {
            return Err(fail(
                P,
                format!("PINGRESPs were withheld for {:.1} s and the device kept the link", (BUDGET + Duration::from_secs(5)).as_secs_f32()),
            ))
        }
    };
    if took > BUDGET {
        return Err(fail(
            P,
            format!("the device closed the link {:.2} s after the PINGRESPs stopped, over the {:.1} s budget", took.as_secs_f32(), BUDGET.as_secs_f32()),
        ));
    }
    // A PINGREQ went unanswered on that connection before the close.
    let pinged = tb.wire().records().iter().any(|r| {
        r.at >= t0
            && matches!(&r.event, crate::testbed::WireEvent::Packet { conn: c, dir: Dir::Up, packet: Packet::Pingreq } if *c == conn)
    });
    if !pinged {
        return Err(fail(P, "the device closed the link without a PINGREQ going unanswered first"));
    }
    tb.t().note(format!("no PINGRESP noticed after {:.2} s", took.as_secs_f32()));
    dut_connack(tb, "CONNACK after the keep-alive timeout", P)?;
    tb.t().runner(format!(
        "verdict: the device closed the link within the {:.1} s budget and reconnected",
        BUDGET.as_secs_f32()
    ));
    Ok(())
}
