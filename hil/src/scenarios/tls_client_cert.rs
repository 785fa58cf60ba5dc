//! Mutual TLS: the device is given a client certificate of the run's test
//! CA, issued for the client ID it is expected to use, and the TLS hop
//! requires one. Judged at the hop: the finished handshake carried exactly
//! the certificate issued to the device (byte for byte), and the CONNECT
//! inside it names the client ID the certificate is for, as a broker that
//! maps certificates to identities (AWS IoT's policy variables) expects;
//! then a command arrives. A device that does not present it is refused by
//! the hop and never gets a session.

use super::steps::{client_id, dut_subscribed, fail, sentinel, STEP};
use super::tls::{handshakes, no_plaintext};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec, TlsMode};
use crate::testbed::wire::{ClientCertSeen, TlsOutcome};
use crate::testbed::{Testbed, WireEvent};
use hil_session::Bug;
use std::time::Instant;

pub static SCENARIO: Scenario = Scenario {
    name: "tls_client_cert",
    about: "mutual TLS: the device presents the client certificate it was given, and its CONNECT names the client ID the certificate is for; without it the broker side refuses the handshake",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::Tls),
    ],
    device: DeviceSpec {
        tls: TlsMode::Mutual,
        ..DeviceSpec::DEFAULT
    },
    catches: &[Control::on_rumqttd(Bug::NoClientCert, Promise::ClientCertPresented)],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::ClientCertPresented;
    // The first handshake's outcome, finished or refused.
    let first = tb.wire().wait_for(Instant::now() + STEP, |r| {
        matches!(r.event, WireEvent::Tls { .. })
    });
    let Some(first) = first else {
        return Err(fail(P, "the device never opened a connection to the TLS port"));
    };
    no_plaintext(&tb.wire().records(), None)?;
    let presented = match &first.event {
        WireEvent::Tls {
            outcome: TlsOutcome::Established { client, .. },
            ..
        } => client.clone(),
        WireEvent::Tls {
            outcome: TlsOutcome::Refused(why),
            ..
        } => {
            return Err(fail(
                P,
                format!("the hop, which requires a client certificate, refused the handshake: {why}"),
            ))
        }
        _ => return Err(fail(P, "the first connection was not a TLS handshake")),
    };
    let cn = match presented {
        ClientCertSeen::Issued(cn) => cn,
        ClientCertSeen::None => {
            return Err(fail(P, "the handshake finished without a client certificate"))
        }
        ClientCertSeen::Other => {
            return Err(fail(
                P,
                "the device presented a certificate other than the one issued to it",
            ))
        }
    };
    let id = client_id(tb)?;
    if id != cn {
        return Err(fail(
            P,
            format!("its certificate is for {cn}, but its CONNECT says client_id={id}"),
        ));
    }
    dut_subscribed(tb)?;
    let topic = tb.topics(&id).cmd();
    let mut cloud = tb.cloud("cloud-mtls")?;
    sentinel(tb, &mut cloud, &topic, Promise::TlsConnects)?;
    let refused = handshakes(&tb.wire().records(), None)
        .iter()
        .filter(|(_, _, o)| matches!(o, TlsOutcome::Refused(_)))
        .count();
    if refused > 0 {
        return Err(fail(P, format!("{refused} handshake(s) refused at the hop")));
    }
    tb.t().runner(format!(
        "verdict: mutual TLS with the certificate issued for {cn}; its CONNECT names the same client ID; a command arrived"
    ));
    Ok(())
}
