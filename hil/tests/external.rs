//! External brokers as first-class: one the runner did not start, restarted
//! by a shell command; an unreachable one is one rig error for the run, at
//! once; one that refuses MQTT 5 makes the MQTT 5 scenarios n/a.

use hil::runner::{run_one, RunOptions, Verdict};
use hil::testbed::BrokerChoice;
use hil_broker::MqttVersion;
use std::net::SocketAddr;
use std::process::Command;

/// `hil broker serve` started by a shell script, as an operator would run a
/// broker of their own; `restart` kills it and starts it again.
struct OwnBroker {
    v4: SocketAddr,
    restart: String,
    dir: tempfile::TempDir,
}

impl OwnBroker {
    fn start() -> OwnBroker {
        let ip = hil_broker::private_loopback();
        let port = || hil_broker::free_port(ip).unwrap();
        let (v4, v5) = (SocketAddr::new(ip, port()), SocketAddr::new(ip, port()));
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let start = format!(
            "{} broker serve --v4 {v4} --v5 {v5} >>{d}/log 2>&1 </dev/null & echo $! >{d}/pid",
            env!("CARGO_BIN_EXE_hil")
        );
        std::fs::write(dir.path().join("start.sh"), &start).unwrap();
        // Kill, wait (bounded) until the process is gone, start again.
        let restart = format!(
            "pid=$(cat {d}/pid); kill -9 $pid; for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.02; done; sh {d}/start.sh"
        );
        assert!(Command::new("sh")
            .arg(dir.path().join("start.sh"))
            .status()
            .unwrap()
            .success());
        OwnBroker { v4, restart, dir }
    }

    fn choice(&self) -> BrokerChoice {
        BrokerChoice::External {
            addr: self.v4,
            restart: Some(self.restart.clone()),
            tls: None,
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let pid = self.dir.path().join("pid");
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -9 $(cat {})", pid.display()))
            .status();
    }
}

fn opts(broker: BrokerChoice) -> RunOptions {
    RunOptions::sim(env!("CARGO_BIN_EXE_hil").into(), broker)
}

#[test]
fn broker_restart_runs_on_an_external_broker_with_a_restart_command() {
    let b = OwnBroker::start();
    let o = opts(b.choice());
    for name in ["broker_restart", "queued_commands"] {
        let s = hil::scenarios::find(name).unwrap();
        let r = run_one(&o, s, "24:0a:c4:00:50:01");
        assert!(
            matches!(r.verdict, Verdict::Pass),
            "{name} on an external broker: {:?}\n{}",
            r.verdict,
            r.transcript.raw()
        );
    }
}

#[test]
fn without_a_restart_command_broker_restart_is_not_applicable() {
    let b = OwnBroker::start();
    let o = opts(BrokerChoice::External {
        addr: b.v4,
        restart: None,
        tls: None,
    });
    let r = run_one(
        &o,
        hil::scenarios::find("broker_restart").unwrap(),
        "24:0a:c4:00:50:02",
    );
    match &r.verdict {
        Verdict::NotApplicable(why) => assert!(why.contains("--broker-restart"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_broker_that_refuses_mqtt5_makes_the_mqtt5_scenarios_not_applicable() {
    // rumqttd's 3.1.1 listener does not speak MQTT 5.
    let b = OwnBroker::start();
    let mut o = opts(b.choice());
    o.mqtt = MqttVersion::V5;
    let r = run_one(
        &o,
        hil::scenarios::find("session_expiry").unwrap(),
        "24:0a:c4:00:50:03",
    );
    match &r.verdict {
        Verdict::NotApplicable(why) => assert!(why.contains("refused an MQTT 5 CONNECT"), "{why}"),
        other => panic!("{other:?}\n{}", r.transcript.raw()),
    }
}

#[test]
fn an_unreachable_broker_is_one_rig_error_for_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args(["run", "--broker", "127.0.0.1:1", "--out"])
        .arg(dir.path())
        .arg("--junit")
        .arg(&junit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("unreachable"), "{stdout}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<error").count(), 1, "{xml}");
    assert_eq!(xml.matches("<testcase").count(), 1, "{xml}");
}

#[test]
fn a_host_name_is_accepted_for_an_external_broker() {
    match "localhost:1883".parse::<BrokerChoice>() {
        Ok(BrokerChoice::External { addr, .. }) => assert!(addr.ip().is_loopback(), "{addr}"),
        other => panic!("{other:?}"),
    }
}
