//! Steps the TLS scenarios share: what the TLS hop saw, and a device's
//! refusal of a certificate it must not trust, judged at the hop (the
//! handshake's outcome, no CONNECT, no plaintext) and not by its console,
//! whose reason is only cross-checked.

use super::schedule::{classify, gaps_ms, MIN_WAITS};
use super::steps::{dut_connack, dut_subscribed, fail, STEP};
use super::{Need, Outcome, Promise};
use crate::dut::{Capability, DeviceSpec, TlsMode};
use crate::testbed::pki::ServerCert;
use crate::testbed::wire::TlsOutcome;
use crate::testbed::{Dir, Packet, Testbed, WireEvent, WireRecord};
use hil_session::Event;
use std::time::{Duration, Instant};

/// Handshakes at the hop since `after` (None: all): when, what was
/// presented, the outcome.
pub fn handshakes(
    records: &[WireRecord],
    after: Option<Instant>,
) -> Vec<(Instant, ServerCert, TlsOutcome)> {
    records
        .iter()
        .filter(|r| after.is_none_or(|t| r.at > t))
        .filter_map(|r| match &r.event {
            WireEvent::Tls { presented, outcome } => Some((r.at, *presented, outcome.clone())),
            _ => None,
        })
        .collect()
}

/// Whether the device sent CONNECT to the broker since `after`.
pub fn connected_since(records: &[WireRecord], after: Instant) -> bool {
    records.iter().any(|r| {
        r.at > after
            && matches!(
                r.event,
                WireEvent::Packet {
                    dir: Dir::Up,
                    packet: Packet::Connect { .. },
                    ..
                }
            )
    })
}

/// The first plaintext connection since `after` (None: ever), as a failure.
pub fn no_plaintext(records: &[WireRecord], after: Option<Instant>) -> Outcome {
    if handshakes(records, after)
        .iter()
        .any(|(_, _, o)| *o == TlsOutcome::Plaintext)
    {
        return Err(fail(
            Promise::NoPlaintext,
            "the device opened a plaintext connection to the TLS port",
        ));
    }
    Ok(())
}

/// The device's first connection to the TLS port, which must be a TLS
/// handshake: a device that speaks plaintext fails here, at once, rather
/// than in whatever step waits for its session.
pub fn first_connection_is_tls(tb: &Testbed, promise: Promise) -> Outcome {
    let first = tb.wire().wait_for(Instant::now() + STEP, |r| {
        matches!(r.event, WireEvent::Tls { .. })
    });
    if first.is_none() {
        return Err(fail(
            promise,
            "the device never opened a connection to the TLS port",
        ));
    }
    no_plaintext(&tb.wire().records(), None)
}

/// What the certificate-refusal scenarios need (`tls_unknown_ca`,
/// `tls_wrong_name`, `tls_expired`: one each, differing in the certificate).
pub const REFUSAL_NEEDS: &[Need] = &[
    Need::Can(Capability::ReachesBroker),
    Need::Can(Capability::LinkFaults),
    Need::Can(Capability::Tls),
];

/// Their device: TLS, and a short backoff (25-400 ms) so the ten refused
/// handshakes the classifier needs take ~2.5 s. The first wait between two
/// refusals is under a 50 ms ceiling and the cap 8× that: the classifier
/// needs ≥ 3× growth, which a 100 ms first ceiling (base 50) missed once
/// in 20 runs (first 106 ms, longest 305 ms).
pub const REFUSAL_DEVICE: DeviceSpec = DeviceSpec {
    tls: TlsMode::On,
    backoff_base_ms: 25,
    backoff_cap_ms: 400,
    ..DeviceSpec::DEFAULT
};

/// Handshakes to watch: MIN_WAITS waits between them, and one more.
const ATTEMPTS: usize = MIN_WAITS + 2;

/// The device, subscribed over TLS, is cut off; every reconnect meets
/// `cert`. It must refuse each handshake (never sending CONNECT), never try
/// plaintext, say why on its console, and back off with jitter; once the
/// good certificate is back it connects.
pub fn refuses(tb: &mut Testbed, cert: ServerCert) -> Outcome {
    const P: Promise = Promise::VerifiesServer;
    first_connection_is_tls(tb, P)?;
    dut_subscribed(tb)?;
    tb.dut.drain();
    let mark = tb.dut.seen.len();
    tb.tls()?.present(cert);
    tb.t().runner(format!(
        "TLS hop: present a certificate {}",
        cert.describe()
    ));
    let start = Instant::now();
    tb.link().cut();
    // Enough refused handshakes to classify the waits, or the first sign of
    // a device that gave in: a finished handshake or plaintext.
    let deadline = start + Duration::from_secs(20);
    tb.wire().wait_until(deadline, |r| {
        let h = handshakes(r, Some(start));
        h.len() >= ATTEMPTS
            || h.iter()
                .any(|(_, _, o)| !matches!(o, TlsOutcome::Refused(_)))
    });
    let records = tb.wire().records();
    no_plaintext(&records, Some(start))?;
    let seen = handshakes(&records, Some(start));
    if seen
        .iter()
        .any(|(_, _, o)| matches!(o, TlsOutcome::Established { .. }))
    {
        let and = if connected_since(&records, start) {
            " and sent CONNECT through it"
        } else {
            ""
        };
        return Err(fail(
            P,
            format!(
                "the device finished a TLS handshake with a certificate {}{and}",
                cert.describe()
            ),
        ));
    }
    if seen.len() < ATTEMPTS {
        return Err(fail(
            P,
            format!(
                "{} refused handshakes in 20 s, then no more: the device stopped retrying",
                seen.len()
            ),
        ));
    }
    let waits = gaps_ms(&seen.iter().map(|s| s.0).collect::<Vec<_>>());
    let class = classify(&waits);
    let why = match &seen[0].2 {
        TlsOutcome::Refused(w) => w.clone(),
        _ => String::new(),
    };
    tb.t().note(format!(
        "handshakes refused: {}; the hop's view: {why}; waits between them {waits:?} ms: {class}",
        seen.len()
    ));
    // The console's reason, cross-checked: it must be a TLS refusal.
    tb.dut.drain();
    let said = tb.dut.seen[mark..].iter().find_map(|e| match e {
        Event::MqttDisconnected { reason } if reason.contains("tls") => Some(reason.clone()),
        _ => None,
    });
    let Some(said) = said else {
        return Err(fail(
            P,
            "the device refused the certificate without saying why (no TLS reason on its console)",
        ));
    };
    tb.t().note(format!("the device says: {said}"));
    super::steps::jittered_backoff(class, &waits)?;
    tb.tls()?.present(ServerCert::Good);
    tb.t().runner("TLS hop: present the good certificate again");
    dut_connack(tb, "CONNACK once the certificate is good again", P)?;
    tb.t().runner(format!(
        "verdict: {} handshakes refused (no CONNECT, no plaintext), backoff {class}; connected once the certificate was good",
        seen.len()
    ));
    Ok(())
}
