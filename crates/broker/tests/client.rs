//! The cloud-side client against real brokers: a backend whose connection the
//! broker closes reconnects and publishes again. Runs on embedded rumqttd and
//! on Debian's mosquitto (the `ci` nextest profile; the default profile skips
//! the mosquitto variants).

use hil_broker::client::ConnectOptions;
use hil_broker::{Broker, BrokerSpec, Client, ClientError, MqttVersion};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(10);

/// The broker's address for `proto`; the mosquitto handle must outlive the test.
fn start(kind: &str, proto: MqttVersion) -> (SocketAddr, Option<Broker>) {
    let ip = hil_broker::private_loopback();
    if kind == "rumqttd" {
        // rumqttd's own account of a closed connection, in the test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_test_writer()
            .try_init();
        let (p4, p5) = hil_broker::free_port_pair(ip).unwrap();
        let (v4, v5) = (SocketAddr::new(ip, p4), SocketAddr::new(ip, p5));
        hil_broker::rumqttd::spawn_in_thread(v4, v5).expect("rumqttd starts");
        let addr = if proto == MqttVersion::V5 { v5 } else { v4 };
        (addr, None)
    } else {
        let b = Broker::start(BrokerSpec::Mosquitto { persistence: false }, ip)
            .unwrap_or_else(|e| panic!("{e}"));
        (b.addr(proto), Some(b))
    }
}

/// A second connection with the backend's client ID makes the broker close
/// the first (takeover); `reconnect` brings the backend back with the same
/// options, and its next publish is delivered.
fn reconnects_after_the_broker_closed_it(kind: &str, proto: MqttVersion) {
    let (addr, _broker) = start(kind, proto);
    let id = format!("backend-{kind}-{proto}");
    let mut watcher =
        Client::connect(addr, proto, &ConnectOptions::new(&format!("watch-{id}"))).unwrap();
    assert!(watcher.subscribe("fleet/#", 1).unwrap() <= 1);
    let mut backend = Client::connect(addr, proto, &ConnectOptions::new(&id)).unwrap();
    backend.publish("fleet/a", b"before", 1, false).unwrap();

    let _usurper = Client::connect(addr, proto, &ConnectOptions::new(&id)).unwrap();
    match backend.recv(Instant::now() + DEADLINE) {
        Err(ClientError::Closed) => {}
        other => panic!("the broker should close the first connection of {id}: {other:?}"),
    }
    assert!(matches!(
        backend.publish("fleet/a", b"lost", 1, false),
        Err(ClientError::Closed)
    ));

    backend.reconnect().expect("the backend reconnects");
    backend.publish("fleet/a", b"after", 1, false).unwrap();

    let mut got = Vec::new();
    while got.last().map(Vec::as_slice) != Some(b"after".as_slice()) {
        match watcher.recv(Instant::now() + DEADLINE).unwrap() {
            Some(m) => got.push(m.payload),
            None => panic!("`after` was not delivered; got {got:?}"),
        }
    }
    assert_eq!(got, vec![b"before".to_vec(), b"after".to_vec()]);
}

#[test]
fn rumqttd_v3_reconnects_after_the_broker_closed_it() {
    reconnects_after_the_broker_closed_it("rumqttd", MqttVersion::V3_1_1);
}

#[test]
fn rumqttd_v5_reconnects_after_the_broker_closed_it() {
    reconnects_after_the_broker_closed_it("rumqttd", MqttVersion::V5);
}

#[test]
fn mosquitto_v3_reconnects_after_the_broker_closed_it() {
    reconnects_after_the_broker_closed_it("mosquitto", MqttVersion::V3_1_1);
}

#[test]
fn mosquitto_v5_reconnects_after_the_broker_closed_it() {
    reconnects_after_the_broker_closed_it("mosquitto", MqttVersion::V5);
}

/// rumqttd 0.20 reuses connection ids; a client that closed right after its
/// DISCONNECT made it drop the next connection to take the id. `disconnect`
/// waits for the broker to close first: 300 disconnect-then-connect rounds,
/// each new client must stay connected through a subscribe and a publish.
fn next_client_survives_a_disconnect(kind: &str, proto: MqttVersion) {
    let (addr, _broker) = start(kind, proto);
    for round in 0..300 {
        let gone = Client::connect(addr, proto, &ConnectOptions::new(&format!("gone-{round}")))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        gone.disconnect();
        let mut next = Client::connect(addr, proto, &ConnectOptions::new(&format!("next-{round}")))
            .unwrap_or_else(|e| panic!("round {round}: the next client could not connect: {e}"));
        next.subscribe(&format!("echo/{round}"), 1)
            .unwrap_or_else(|e| panic!("round {round}: the next client was dropped: {e}"));
        next.publish(&format!("echo/{round}"), b"x", 1, false)
            .unwrap_or_else(|e| panic!("round {round}: the next client was dropped: {e}"));
        let echo = next.recv(Instant::now() + DEADLINE).unwrap();
        assert_eq!(
            echo.map(|m| m.payload),
            Some(b"x".to_vec()),
            "round {round}"
        );
        next.disconnect();
    }
}

#[test]
fn rumqttd_v3_next_client_survives_a_disconnect() {
    next_client_survives_a_disconnect("rumqttd", MqttVersion::V3_1_1);
}

#[test]
fn rumqttd_v5_next_client_survives_a_disconnect() {
    next_client_survives_a_disconnect("rumqttd", MqttVersion::V5);
}

#[test]
fn mosquitto_v3_next_client_survives_a_disconnect() {
    next_client_survives_a_disconnect("mosquitto", MqttVersion::V3_1_1);
}
