//! The broker withholds the SUBACK: the device must not believe it is
//! subscribed, gives the connection up after its acknowledgement timeout,
//! and subscribes again on the next connection (session_present=1 or not:
//! the subscription was never confirmed), until a SUBACK confirms it.

use super::no_puback::ACK_BOUND;
use super::steps::{client_id, dut_connack, dut_subscribed, fail, on, rig, wifi_off};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::rules::{Withhold, Withheld};
use crate::testbed::{Dir, Packet, Testbed, WireEvent};
use hil_session::{Bug, Event};
use std::time::Instant;

pub static SCENARIO: Scenario = Scenario {
    name: "no_suback",
    about: "the SUBACK is withheld: the device does not claim the subscription, gives the connection up (the sim after 2 s; at most 15 s), and subscribes again on the next one",
    advisor: &["MQTT_Subscribe_Retry_No_Suback"],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::LinkFaults),
    ],
    device: DeviceSpec {
        ack_timeout_ms: 2_000,
        ..DeviceSpec::DEFAULT
    },
    catches: &[Control::on_rumqttd(Bug::NoAckTimeout, Promise::SubscribeRetried)],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::SubscribeRetried;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    // A fresh session for the next connection, so it must SUBSCRIBE: the
    // device goes offline, its session is ended at the broker, and every
    // SUBACK is withheld before it comes back.
    wifi_off(tb, P)?;
    tb.end_session(&id).map_err(rig)?;
    let rule = tb.link().install(Withhold::new(Withheld::Suback));
    tb.t().runner("proxy: withhold every SUBACK");
    tb.dut.drain();
    let mark = tb.dut.seen.len();
    let t0 = Instant::now();
    tb.dut.command("!wifi on").map_err(on(P))?;
    // The SUBSCRIBE of the connection after the outage.
    let sub = tb.wire().wait_for(t0 + ACK_BOUND, |r| {
        r.at > t0
            && matches!(
                r.event,
                WireEvent::Packet {
                    dir: Dir::Up,
                    packet: Packet::Subscribe { .. },
                    ..
                }
            )
    });
    let Some(sub) = sub else {
        drop(rule);
        return Err(fail(P, "no SUBSCRIBE on the wire after the session ended"));
    };
    let WireEvent::Packet { conn, .. } = sub.event else {
        unreachable!("matched above")
    };
    let closed = tb.wire().closed_by_device(conn, sub.at + ACK_BOUND);
    drop(rule);
    tb.t().runner("proxy: SUBACKs pass again");
    if tb.dut.seen[mark..]
        .iter()
        .any(|e| matches!(e, Event::MqttSubscribed { .. }))
    {
        return Err(fail(
            P,
            "the console says subscribed, but the broker's SUBACK never reached the device",
        ));
    }
    let Some(closed) = closed else {
        return Err(fail(
            P,
            format!(
                "the SUBACK was withheld for {} s and the device kept the connection, unsubscribed",
                ACK_BOUND.as_secs()
            ),
        ));
    };
    tb.t().note(format!(
        "the device gave the connection up {:.2} s after its SUBSCRIBE",
        closed.duration_since(sub.at).as_secs_f32()
    ));
    dut_connack(tb, "CONNACK after the unanswered SUBSCRIBE", P)?;
    // Confirmed on the wire: a SUBSCRIBE on a later connection and its SUBACK.
    dut_subscribed(tb).map_err(|stop| match stop {
        super::Stop::Fail(f) => fail(P, f.detail),
        other => other,
    })?;
    let again = tb.wire().records().iter().any(|r| {
        matches!(&r.event, WireEvent::Packet { conn: c, dir: Dir::Up, packet: Packet::Subscribe { .. } } if *c > conn)
    });
    if !again {
        return Err(fail(P, "no SUBSCRIBE on the connection after the unanswered one"));
    }
    tb.t().runner(
        "verdict: no subscription claimed without a SUBACK; the connection given up; subscribed again on the next",
    );
    Ok(())
}
