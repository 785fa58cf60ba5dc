//! A bad password: the broker refuses the CONNECT (3.1.1 return code 4 or
//! 5; MQTT 5 reason 0x86 or 0x87), as the wire shows. The device must say
//! so, and back off with jitter up to its cap rather than hammer the broker
//! with a login that will fail every time; and its password must never
//! appear on its console (the transcript redacts it and counts each time it
//! had to).

use super::schedule::{classify, gaps_ms, MIN_WAITS};
use super::steps::{fail, on, STEP};
use super::{Control, ControlBroker, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec, LoginMode};
use crate::testbed::{Dir, Packet, Testbed, WireEvent};
use crate::transcript::Source;
use hil_session::{Bug, Event, MqttVersion};
use std::time::{Duration, Instant};

pub static SCENARIO: Scenario = Scenario {
    name: "auth_rejected",
    about: "a bad password is refused by the broker (CONNACK 4/5, 0x86/0x87): the device says so, backs off with jitter to its cap, and never prints the password",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::ScenarioConfig),
        Need::Can(Capability::Login),
        Need::BrokerLogin,
    ],
    device: DeviceSpec {
        login: LoginMode::WrongPassword,
        backoff_base_ms: 50,
        backoff_cap_ms: 400,
        ..DeviceSpec::DEFAULT
    },
    catches: &[
        Control::new(Bug::NoJitter, Promise::Jitter, ControlBroker::Mosquitto, MqttVersion::V3_1_1),
        Control::new(Bug::EchoSecrets, Promise::SecretsKept, ControlBroker::Mosquitto, MqttVersion::V3_1_1),
    ],
    run,
};

/// Refused CONNECTs to see: MIN_WAITS waits between them, and one more.
const REFUSALS: usize = MIN_WAITS + 2;

/// A login refusal: 3.1.1 return codes 4 (bad user name or password) and 5
/// (not authorized); MQTT 5 reason codes 0x86 and 0x87.
fn login_refused(rc: u8) -> bool {
    matches!(rc, 4 | 5 | 0x86 | 0x87)
}

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::CredentialsRefused;
    // The device's own count of refusals drives the scenario: after the
    // last one it is switched off, between two attempts (its backoff is
    // then 200-400 ms), so its transcript holds exactly REFUSALS of them.
    for _ in 0..REFUSALS {
        let said = tb
            .dut
            .expect("a refused login on its console", STEP, |e| {
                matches!(e, Event::MqttConnack { .. })
            })
            .map_err(on(P))?;
        match said {
            Event::MqttConnack { rc: 0, .. } => {
                return Err(super::steps::rig(crate::testbed::RigError::BrokerBehaviour(
                    "the broker accepted a password it was not given".into(),
                )))
            }
            Event::MqttConnack { rc, .. } if !login_refused(rc) => {
                return Err(fail(
                    P,
                    format!("the console says rc={rc}, not a login refusal"),
                ))
            }
            _ => {}
        }
    }
    tb.dut.command("!wifi off").map_err(on(P))?;
    // The wire: each refusal the console claimed, as the broker sent it.
    let refused = |r: &crate::testbed::WireRecord| {
        matches!(&r.event, WireEvent::Packet {
            dir: Dir::Down,
            packet: Packet::Connack { rc, .. },
            ..
        } if login_refused(*rc))
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    tb.wire()
        .wait_until(deadline, |records| records.iter().filter(|r| refused(r)).count() >= REFUSALS);
    let refusals: Vec<Instant> = tb
        .wire()
        .records()
        .iter()
        .filter(|r| refused(r))
        .map(|r| r.at)
        .collect();
    if refusals.len() < REFUSALS {
        return Err(fail(
            P,
            format!(
                "the console reported {REFUSALS} refused logins; the wire shows {}",
                refusals.len()
            ),
        ));
    }
    let waits = gaps_ms(&refusals);
    let class = classify(&waits);
    tb.t()
        .note(format!("waits between refused logins: {waits:?} ms: {class}"));
    super::steps::jittered_backoff(class, &waits)?;
    let leaks: Vec<Source> = tb.t().leaks();
    if !leaks.is_empty() {
        return Err(fail(
            Promise::SecretsKept,
            format!(
                "the password appeared in {} line(s) of the transcript (from {:?}; redacted there)",
                leaks.len(),
                leaks[0]
            ),
        ));
    }
    tb.t().runner(format!(
        "verdict: {REFUSALS} logins refused on the wire and reported on the console, retried with {class} backoff; the password never printed"
    ));
    Ok(())
}
