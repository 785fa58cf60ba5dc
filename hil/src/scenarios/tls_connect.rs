//! TLS: the device, given the run's test CA, connects through the TLS hop
//! (TLS 1.2 or 1.3, the certificate verified), and its whole session runs
//! inside it: the CONNECT, the subscription and a command all cross the
//! tap behind a finished handshake, and nothing crosses in plaintext.
//! (`hil run --tls` runs every other scenario the same way.)

use super::steps::{client_id, dut_subscribed, fail, sentinel};
use super::tls::{first_connection_is_tls, handshakes, no_plaintext};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec, TlsMode};
use crate::testbed::pki::ServerCert;
use crate::testbed::wire::TlsOutcome;
use crate::testbed::Testbed;
use hil_session::Bug;

pub static SCENARIO: Scenario = Scenario {
    name: "tls_connect",
    about: "TLS: connects with the provisioned CA (TLS 1.2+); the session and a command run inside it, nothing in plaintext",
    advisor: &["TLS_Connect"],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::Tls),
    ],
    device: DeviceSpec {
        tls: TlsMode::On,
        ..DeviceSpec::DEFAULT
    },
    catches: &[Control::on_rumqttd(Bug::NoTls, Promise::NoPlaintext)],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::TlsConnects;
    first_connection_is_tls(tb, P)?;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    let topic = tb.topics(&id).cmd();
    let mut cloud = tb.cloud("cloud-tls")?;
    sentinel(tb, &mut cloud, &topic, P)?;
    let records = tb.wire().records();
    no_plaintext(&records, None)?;
    let done: Vec<String> = handshakes(&records, None)
        .into_iter()
        .filter_map(|(_, cert, o)| match o {
            TlsOutcome::Established { version, .. } if cert == ServerCert::Good => Some(version),
            _ => None,
        })
        .collect();
    let Some(version) = done.first() else {
        return Err(fail(P, "no TLS handshake finished, yet the session ran"));
    };
    if !matches!(version.as_str(), "TLSv1_2" | "TLSv1_3") {
        return Err(fail(P, format!("negotiated {version}, not TLS 1.2 or 1.3")));
    }
    tb.t().note(format!("negotiated {version}"));
    tb.t().runner(
        "verdict: TLS handshake with the test CA's certificate, then CONNECT, SUBSCRIBE and a command inside it; nothing in plaintext",
    );
    Ok(())
}
