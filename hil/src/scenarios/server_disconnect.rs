//! The broker ends the connection itself: on MQTT 5 with a DISCONNECT and a
//! reason code (0x8B server shutting down, 0x89 server busy, 0x9C use
//! another server with a Server Reference), on 3.1.1 by closing the socket
//! (the only way a 3.1.1 server can). The device reports the reason it was
//! given and backs off before reconnecting, as after any loss.

use super::reconnect_after_success::first_reconnect;
use super::steps::{dut_subscribed, fail, on, STEP};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::Testbed;
use hil_broker::MqttVersion;
use hil_session::{Bug, Event};
use std::time::Instant;

pub static SCENARIO: Scenario = Scenario {
    name: "server_disconnect",
    about: "the broker disconnects the device (MQTT 5: DISCONNECT 0x8B, 0x89, 0x9C with a Server Reference; 3.1.1: socket closed): the reason is reported and the reconnect backs off (at least half the base delay)",
    advisor: &["MQTT_Reconnect_Backoff_Retries_On_Server_Disconnect"],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::LinkFaults),
    ],
    device: DeviceSpec {
        backoff_base_ms: 1_000,
        backoff_cap_ms: 4_000,
        ..DeviceSpec::DEFAULT
    },
    catches: &[Control::on_rumqttd(
        Bug::ReconnectAtOnce,
        Promise::ServerDisconnect,
    )],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::ServerDisconnect;
    dut_subscribed(tb)?;
    let cases: &[Option<(u8, Option<&str>)>] = if tb.mqtt() == MqttVersion::V5 {
        &[
            Some((0x8b, None)),
            Some((0x89, None)),
            Some((0x9c, Some("127.0.0.1:1883"))),
        ]
    } else {
        &[None, None]
    };
    let mut waits = Vec::new();
    for case in cases {
        tb.dut.drain();
        let mark = tb.dut.seen.len();
        let since = Instant::now();
        match case {
            Some((rc, r)) => tb.t().runner(format!(
                "broker: DISCONNECT reason=0x{rc:02x}{}",
                r.map(|r| format!(" server_reference={r}")).unwrap_or_default()
            )),
            None => tb.t().runner("broker: close the connection"),
        }
        tb.link().server_close(*case);
        let Event::MqttDisconnected { reason } = tb
            .dut
            .expect("the device to report the disconnect", STEP, |e| {
                matches!(e, Event::MqttDisconnected { .. })
            })
            .map_err(on(P))?
        else {
            unreachable!("matched above")
        };
        if let Some((rc, _)) = case {
            let said = format!("0x{rc:02x}");
            if !reason.contains(&said) {
                return Err(fail(
                    P,
                    format!("the broker sent DISCONNECT reason {said}; the device reported `{reason}`"),
                ));
            }
        }
        waits.push(first_reconnect(tb, since, mark, P)?);
    }
    tb.t()
        .note(format!("first reconnect after each disconnect: {waits:?} ms"));
    tb.t().runner(
        "verdict: every disconnect reported with the broker's reason; each reconnect backed off",
    );
    Ok(())
}
