//! TLS required, no CA: a device configured for production, but not given
//! the CA it needs, must not connect at all rather than fall back to
//! plaintext. The hop (where it would connect) must see nothing; the
//! console must say why and the device keep backing off, so it connects
//! once provisioned.

use super::steps::{fail, on, STEP};
use super::tls::no_plaintext;
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec, TlsMode};
use crate::testbed::{Testbed, WireEvent};
use hil_session::{Bug, Event};

pub static SCENARIO: Scenario = Scenario {
    name: "plaintext_refused",
    about: "TLS required and no CA provisioned: the device never connects in plaintext, says why, and keeps backing off",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::Tls),
    ],
    device: DeviceSpec {
        tls: TlsMode::RequiredWithoutCa,
        backoff_base_ms: 50,
        backoff_cap_ms: 400,
        ..DeviceSpec::DEFAULT
    },
    catches: &[Control::on_rumqttd(Bug::NoTls, Promise::NoPlaintext)],
    run,
};

/// Refused attempts to see before judging.
const REFUSALS: usize = 3;

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::NoPlaintext;
    let mut reasons = Vec::new();
    for _ in 0..REFUSALS {
        let e = tb
            .dut
            .expect("a refused connection attempt", STEP, |e| {
                matches!(e, Event::MqttDisconnected { .. })
            })
            .map_err(on(P))?;
        if let Event::MqttDisconnected { reason } = e {
            reasons.push(reason);
        }
        tb.dut
            .expect("a backoff after it", STEP, |e| matches!(e, Event::Backoff { .. }))
            .map_err(on(P))?;
    }
    let records = tb.wire().records();
    no_plaintext(&records, None)?;
    let reached = records.iter().any(|r| {
        matches!(
            r.event,
            WireEvent::Tls { .. } | WireEvent::Attempt { .. } | WireEvent::Packet { .. }
        )
    });
    if reached {
        return Err(fail(P, "a device without a CA reached the broker"));
    }
    if !reasons.iter().all(|r| r.contains("plaintext") || r.contains("TLS") || r.contains("CA")) {
        return Err(fail(
            P,
            format!("the device refused without saying it lacks TLS: {reasons:?}"),
        ));
    }
    tb.t().note(format!("the device says: {}", reasons[0]));
    tb.t().runner(format!(
        "verdict: {REFUSALS} attempts refused by the device itself, none reached the TLS port, none in plaintext"
    ));
    Ok(())
}
