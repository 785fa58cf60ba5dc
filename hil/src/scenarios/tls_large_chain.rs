//! TLS: the broker presents a long chain (leaf, two intermediates and a
//! 4 KiB extension: several times the usual size, where Device Advisor asks
//! for ≥ 20 % more). The device must take it: the hop sees the handshake
//! finish with that chain, and a command arrives through it.

use super::steps::{client_id, dut_connack, dut_subscribed, fail, sentinel, STEP};
use super::tls::{first_connection_is_tls, handshakes, no_plaintext};
use super::{Control, Need, Outcome, Promise, Scenario};
use crate::dut::{Capability, DeviceSpec, TlsMode};
use crate::testbed::pki::ServerCert;
use crate::testbed::wire::TlsOutcome;
use crate::testbed::{Testbed, WireEvent};
use hil_session::Bug;
use std::time::Instant;

pub static SCENARIO: Scenario = Scenario {
    name: "tls_large_chain",
    about: "TLS: a broker certificate chain several times the usual size is accepted and the session runs through it",
    advisor: &["TLS_Large_Size_Server_Cert"],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::LinkFaults),
        Need::Can(Capability::Tls),
    ],
    device: DeviceSpec {
        tls: TlsMode::On,
        ..DeviceSpec::DEFAULT
    },
    catches: &[Control::on_rumqttd(Bug::SmallTlsBuffer, Promise::LargeChain)],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::LargeChain;
    first_connection_is_tls(tb, Promise::NoPlaintext)?;
    let id = client_id(tb)?;
    dut_subscribed(tb)?;
    let hop = tb.tls()?;
    let (good, large) = (
        hop.pki.chain_bytes(ServerCert::Good),
        hop.pki.chain_bytes(ServerCert::LargeChain),
    );
    hop.present(ServerCert::LargeChain);
    tb.t()
        .runner(format!("TLS hop: present a certificate {}", ServerCert::LargeChain.describe()));
    tb.t().note(format!(
        "chain sizes: {large} B against {good} B usually ({:.1}x)",
        large as f64 / good as f64
    ));
    let start = Instant::now();
    tb.link().cut();
    let Some(r) = tb.wire().wait_for(start + STEP, |r| {
        r.at > start && matches!(r.event, WireEvent::Tls { .. })
    }) else {
        return Err(fail(P, "the device did not reconnect to the TLS port"));
    };
    if let WireEvent::Tls {
        outcome: TlsOutcome::Refused(why),
        ..
    } = &r.event
    {
        return Err(fail(
            P,
            format!("the device refused the {large} B chain: {why}"),
        ));
    }
    no_plaintext(&tb.wire().records(), Some(start))?;
    dut_connack(tb, "CONNACK through the large chain", P)?;
    let topic = tb.topics(&id).cmd();
    let mut cloud = tb.cloud("cloud-tls")?;
    sentinel(tb, &mut cloud, &topic, P)?;
    let took = handshakes(&tb.wire().records(), Some(start))
        .iter()
        .any(|(_, c, o)| *c == ServerCert::LargeChain && matches!(o, TlsOutcome::Established { .. }));
    if !took {
        return Err(fail(P, "no handshake with the large chain finished"));
    }
    tb.t().runner(
        "verdict: the large chain was accepted; CONNECT and a command went through it",
    );
    Ok(())
}
