//! Brokers that speak MQTT over TLS only: mosquitto given a TLS listener
//! (as `hil run --tls --broker mosquitto` starts it), and an external
//! `mqtts://` broker. Needs mosquitto on PATH: the test names say so, and
//! the default profile leaves them to the ci profile.
//!
//! What is proven: the listener refuses plaintext MQTT and a client without
//! a certificate; the runner's side reaches it through the TLS origin with
//! the test CA and its own certificate; `--broker mqtts://` runs scenarios
//! and a wrong CA is one rig error that says so.

use hil::testbed::pki::{CertFiles, TestPki, SERVER_NAME};
use hil_broker::{Broker, BrokerSpec, ListenerTls, MqttVersion, TlsOrigin, Tuning, UpstreamTls};
use std::process::Command;
use std::time::{Duration, Instant};

fn mosquitto_tls(pki: &TestPki, require_client_cert: bool) -> Broker {
    tls_broker(
        BrokerSpec::Mosquitto { persistence: false },
        pki,
        require_client_cert,
    )
}

fn rumqttd() -> BrokerSpec {
    BrokerSpec::Rumqttd {
        program: env!("CARGO_BIN_EXE_hil").into(),
        args: vec!["broker".into(), "serve".into()],
    }
}

fn tls_broker(spec: BrokerSpec, pki: &TestPki, require_client_cert: bool) -> Broker {
    let ip = hil_broker::private_loopback();
    let CertFiles {
        cert_file,
        key_file,
    } = pki.broker_files().unwrap();
    let (runner, _) = pki.client_files("runner", "hil-runner").unwrap();
    let tuning = Tuning {
        tls: Some(ListenerTls {
            cert_file,
            key_file,
            require_client_cert,
            upstream: UpstreamTls {
                ca_file: pki.ca_file.clone(),
                server_name: SERVER_NAME.into(),
                client: Some((runner.cert_file, runner.key_file)),
            },
        }),
        ..Default::default()
    };
    Broker::start_tuned(spec, ip, tuning).unwrap()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(2)
}

#[test]
fn a_mosquitto_tls_listener_refuses_plaintext_and_clients_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::make(dir.path(), "127.0.0.1".parse().unwrap()).unwrap();
    refuses_plaintext_and_bare_clients(mosquitto_tls(&pki, true), &pki);
}

#[test]
fn a_rumqttd_tls_listener_refuses_plaintext_and_clients_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::make(dir.path(), "127.0.0.1".parse().unwrap()).unwrap();
    let broker = tls_broker(rumqttd(), &pki, true);
    // Both listeners, each behind its own origin.
    hil_broker::client::wait_ready(broker.addr(MqttVersion::V5), MqttVersion::V5, soon())
        .expect("MQTT 5 through its origin");
    refuses_plaintext_and_bare_clients(broker, &pki);
}

fn refuses_plaintext_and_bare_clients(broker: Broker, pki: &TestPki) {
    assert!(broker.tls());
    // The runner's side, through the origin: a CONNACK.
    hil_broker::client::wait_ready(
        broker.addr(MqttVersion::V3_1_1),
        MqttVersion::V3_1_1,
        soon(),
    )
    .expect("through the origin");
    // Plaintext MQTT straight to the listener: no CONNACK.
    assert!(
        hil_broker::client::wait_ready(broker.listener(), MqttVersion::V3_1_1, soon()).is_err()
    );
    // TLS with the right CA but no client certificate: refused.
    let bare = UpstreamTls {
        ca_file: pki.ca_file.clone(),
        server_name: SERVER_NAME.into(),
        client: None,
    };
    let ip = broker.listener().ip();
    let origin = TlsOrigin::start(ip, broker.listener(), &bare).unwrap();
    assert!(hil_broker::client::wait_ready(origin.addr(), MqttVersion::V3_1_1, soon()).is_err());
    assert!(origin.last_error().is_some(), "the origin says why");
}

fn hil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hil"))
}

#[test]
fn an_mqtts_broker_on_mosquitto_runs_scenarios_and_a_wrong_ca_is_one_rig_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::make(
        dir.path().join("good").as_path(),
        "127.0.0.1".parse().unwrap(),
    )
    .unwrap();
    let broker = mosquitto_tls(&pki, false);
    let url = format!("mqtts://{}", broker.listener());
    // `hil run` on the mqtts:// broker, trusting `ca`.
    let run = |ca: &std::path::Path, scenarios: &[&str], out: &str| {
        let mut cmd = hil();
        cmd.args(["run", "--broker", &url, "--broker-name", SERVER_NAME])
            .arg("--broker-ca")
            .arg(ca)
            .arg("--out")
            .arg(dir.path().join(out));
        for s in scenarios {
            cmd.args(["--scenario", s]);
        }
        cmd.output().unwrap()
    };
    let ok = run(&pki.ca_file, &["queued_commands", "telemetry_flush"], "out");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("2 passed"), "{stdout}");
    // Another run's CA: the broker's certificate does not chain to it.
    let rogue = TestPki::make(
        dir.path().join("rogue").as_path(),
        "127.0.0.1".parse().unwrap(),
    )
    .unwrap();
    let bad = run(&rogue.ca_file, &["queued_commands"], "out2");
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("cannot be reached over TLS"), "{stdout}");
    assert!(stdout.contains("invalid peer certificate"), "{stdout}");
    // Without --broker-ca: a usage error that says what is missing.
    let usage = hil().args(["run", "--broker", &url]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("--broker-ca"));
}
