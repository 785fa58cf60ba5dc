//! TLS: every reconnect meets an expired broker certificate. The device
//! refuses each handshake (the hop sees it fail, the tap sees no CONNECT),
//! says why, never tries plaintext, and backs off with jitter (Device
//! Advisor's TLS cases); it connects once the certificate is good again.

use super::{tls, Control, Outcome, Promise, Scenario};
use crate::testbed::pki::ServerCert;
use crate::testbed::Testbed;
use hil_session::Bug;

pub static SCENARIO: Scenario = Scenario {
    name: "tls_expired",
    about: "TLS: an expired broker certificate is refused, the reason said, no plaintext, jittered backoff; connects once it is good again",
    advisor: &[],
    needs: tls::REFUSAL_NEEDS,
    device: tls::REFUSAL_DEVICE,
    catches: &[
        Control::on_rumqttd(Bug::NoVerify, Promise::VerifiesServer),
        Control::on_rumqttd(Bug::PlaintextFallback, Promise::NoPlaintext),
    ],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    tls::refuses(tb, ServerCert::Expired)
}
