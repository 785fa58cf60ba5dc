//! TLS: every reconnect meets a broker certificate signed by a CA the device was not given. The device
//! refuses each handshake (the hop sees it fail, the tap sees no CONNECT),
//! says why, never tries plaintext, and backs off with jitter (Device
//! Advisor's TLS cases); it connects once the certificate is good again.

use super::{tls, Control, Outcome, Promise, Scenario};
use crate::testbed::pki::ServerCert;
use crate::testbed::Testbed;
use hil_session::Bug;

pub static SCENARIO: Scenario = Scenario {
    name: "tls_unknown_ca",
    about: "TLS: a broker certificate signed by a CA the device was not given is refused, the reason said, no plaintext, jittered backoff; connects once it is good again",
    advisor: &["TLS_Unsecure_Server_Cert"],
    needs: tls::REFUSAL_NEEDS,
    device: tls::REFUSAL_DEVICE,
    catches: &[Control::on_rumqttd(Bug::NoVerify, Promise::VerifiesServer)],
    run,
};

fn run(tb: &mut Testbed) -> Outcome {
    tls::refuses(tb, ServerCert::UnknownCa)
}
