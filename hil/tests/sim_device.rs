//! The sim device (`hil sim`, stdio console) against a real broker, driven
//! through the runner's own console code: queued commands, offline telemetry,
//! and a stable identity across reboots. Every test runs on embedded rumqttd
//! and on Debian's mosquitto (the `ci` nextest profile; the default profile
//! filters the mosquitto variants out so a fresh clone needs nothing but cargo).

mod common;

use common::Sim;

use hil_broker::client::ConnectOptions;
use hil_broker::{Broker, BrokerSpec, Client, MqttVersion};
use hil_session::Event;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

enum TestBroker {
    /// rumqttd on a thread of this test process (nextest runs each test in its own process).
    Rumqttd(SocketAddr, SocketAddr),
    Mosquitto(Box<Broker>),
}

impl TestBroker {
    fn start(kind: &str) -> TestBroker {
        let ip = hil_broker::private_loopback();
        match kind {
            "rumqttd" => {
                let (p4, p5) = hil_broker::free_port_pair(ip).unwrap();
                let (v4, v5) = (SocketAddr::new(ip, p4), SocketAddr::new(ip, p5));
                hil_broker::rumqttd::spawn_in_thread(v4, v5).expect("rumqttd starts");
                TestBroker::Rumqttd(v4, v5)
            }
            _ => TestBroker::Mosquitto(Box::new(
                Broker::start(BrokerSpec::Mosquitto { persistence: true }, ip)
                    .unwrap_or_else(|e| panic!("{e}")),
            )),
        }
    }

    fn addr(&self, proto: MqttVersion) -> SocketAddr {
        match self {
            TestBroker::Rumqttd(v4, v5) => match proto {
                MqttVersion::V3_1_1 => *v4,
                MqttVersion::V5 => *v5,
            },
            TestBroker::Mosquitto(b) => b.addr(proto),
        }
    }
}

const DEADLINE: Duration = Duration::from_secs(20);

impl Sim {
    fn start(broker: SocketAddr, proto: MqttVersion, mac: &str) -> Sim {
        let state = tempfile::tempdir().unwrap();
        let mut args = hil_sim::Args::new(broker.to_string(), mac.into(), state.path().into());
        args.mqtt = proto;
        args.backoff_base_ms = 100;
        args.backoff_cap_ms = 1000;
        args.seed = Some(1);
        Sim::spawn(&args, state)
    }

    fn expect(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        self.console
            .expect(what, DEADLINE, pred)
            .unwrap_or_else(|e| panic!("{e}; the device said:\n{}", self.transcript.raw()))
    }

    fn command(&mut self, cmd: &str) -> Event {
        self.console
            .command(cmd)
            .unwrap_or_else(|e| panic!("{e}; the device said:\n{}", self.transcript.raw()))
    }

    fn events(&mut self) -> Vec<Event> {
        self.console.drain();
        self.console.seen.clone()
    }
}

fn client_id_of(sim: &mut Sim) -> String {
    match sim.expect("id", |e| matches!(e, Event::Id { .. })) {
        Event::Id { client_id } => client_id,
        _ => unreachable!(),
    }
}

fn cloud(broker: &TestBroker, proto: MqttVersion, name: &str) -> Client {
    Client::connect(broker.addr(proto), proto, &ConnectOptions::new(name))
        .expect("cloud client connects")
}

fn queued_commands(kind: &str, proto: MqttVersion) {
    let broker = TestBroker::start(kind);
    let mut sim = Sim::start(broker.addr(proto), proto, "24:0a:c4:00:00:01");
    let id = client_id_of(&mut sim);
    sim.expect("subscription", |e| {
        matches!(e, Event::MqttSubscribed { qos: 1, .. })
    });
    sim.command("!wifi off");
    let mut cloud = cloud(&broker, proto, "cloud-cmd");
    let topic = hil_session::Topics::new("devices", &id).cmd();
    for n in 1..=5 {
        let payload = format!("{{\"id\":\"c{n}\",\"do\":\"blink\"}}");
        cloud.publish(&topic, payload.as_bytes(), 1, false).unwrap();
    }
    sim.command("!wifi on");
    let connack = sim.expect("connack", |e| matches!(e, Event::MqttConnack { .. }));
    assert_eq!(
        connack,
        Event::MqttConnack {
            session_present: true,
            rc: 0
        }
    );
    // A sentinel published after the reconnect: once it is executed, any
    // redelivery of the five would have shown up before it.
    cloud
        .publish(&topic, b"{\"id\":\"sentinel\"}", 1, false)
        .unwrap();
    sim.expect(
        "sentinel",
        |e| matches!(e, Event::Cmd { id, .. } if id == "sentinel"),
    );
    let executed: Vec<String> = sim
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Cmd { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(
        executed,
        ["c1", "c2", "c3", "c4", "c5", "sentinel"],
        "each command once, in publish order"
    );
}

fn offline_telemetry(kind: &str, proto: MqttVersion) {
    let broker = TestBroker::start(kind);
    let mut sim = Sim::start(broker.addr(proto), proto, "24:0a:c4:00:00:02");
    let id = client_id_of(&mut sim);
    let mut cloud = cloud(&broker, proto, "cloud-telemetry");
    assert_eq!(
        cloud
            .subscribe(&hil_session::Topics::new("devices", &id).telemetry(), 1)
            .unwrap(),
        1
    );
    sim.expect("connack", |e| matches!(e, Event::MqttConnack { .. }));
    sim.command("!wifi off");
    sim.command("!telemetry 5");
    sim.command("!wifi on");
    let deadline = Instant::now() + DEADLINE;
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        let msg = cloud.recv(deadline).unwrap().unwrap_or_else(|| {
            panic!(
                "only {seqs:?} arrived; device said:\n{}",
                sim.transcript.raw()
            )
        });
        let v: serde_json_lite::Value = serde_json_lite::parse(&msg.text());
        seqs.push(v.seq);
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5], "in order, contiguous, none lost");
}

fn stable_identity(kind: &str, proto: MqttVersion) {
    let broker = TestBroker::start(kind);
    let mut sim = Sim::start(broker.addr(proto), proto, "24:0a:c4:00:00:03");
    let first = client_id_of(&mut sim);
    assert_eq!(first, "esp32c3-240ac4000003");
    sim.expect("subscription", |e| {
        matches!(e, Event::MqttSubscribed { .. })
    });
    for boot in 2..=3 {
        sim.command("!reboot");
        sim.expect(
            "boot",
            |e| matches!(e, Event::Boot { count, .. } if *count == boot),
        );
        assert_eq!(client_id_of(&mut sim), first);
        let connack = sim.expect("connack", |e| matches!(e, Event::MqttConnack { .. }));
        assert_eq!(
            connack,
            Event::MqttConnack {
                session_present: true,
                rc: 0
            }
        );
    }
}

/// The telemetry payload's `seq`, without pulling a JSON crate into the test.
mod serde_json_lite {
    pub struct Value {
        pub seq: u32,
    }
    pub fn parse(text: &str) -> Value {
        let rest = text
            .split("\"seq\":")
            .nth(1)
            .unwrap_or_else(|| panic!("no seq in {text}"));
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        Value {
            seq: digits.parse().unwrap(),
        }
    }
}

macro_rules! on_brokers {
    ($($name:ident => $body:ident($proto:expr);)*) => {
        mod rumqttd {
            use super::*;
            $(#[test] fn $name() { $body("rumqttd", $proto) })*
        }
        mod mosquitto {
            use super::*;
            $(#[test] fn $name() { $body("mosquitto", $proto) })*
        }
    };
}

on_brokers! {
    queued_commands_v3 => queued_commands(MqttVersion::V3_1_1);
    queued_commands_v5 => queued_commands(MqttVersion::V5);
    offline_telemetry_v3 => offline_telemetry(MqttVersion::V3_1_1);
    offline_telemetry_v5 => offline_telemetry(MqttVersion::V5);
    stable_identity_v3 => stable_identity(MqttVersion::V3_1_1);
    stable_identity_v5 => stable_identity(MqttVersion::V5);
}
