//! `hil fleet` as a user runs it: 1,000 session cores in one process against
//! a broker of their own; the broker is killed while they are away. Bounded
//! (a few seconds each here); `just fleet` runs the 10,000-device tables.

use std::process::Command;

fn fleet(args: &[&str]) -> (i32, String, String, serde_json::Value) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let json = dir.path().join("fleet.json");
    let o = Command::new(env!("CARGO_BIN_EXE_hil"))
        .arg("fleet")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("hil runs");
    let report = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        report,
    )
}

#[test]
fn a_thousand_devices_get_every_queued_command_through_a_mosquitto_kill() {
    let (rc, out, err, r) = fleet(&["--devices", "1000", "--restart", "--broker", "mosquitto"]);
    assert_eq!(rc, 0, "{out}\n{err}");
    assert_eq!(r["commands_sent"], 5000, "{out}");
    assert_eq!(r["commands_delivered"], 5000, "{out}");
    assert_eq!(r["commands_lost"], 0);
    assert_eq!(r["commands_executed_twice"], 0);
    assert!(r["slices"].as_array().is_some_and(|s| !s.is_empty()));
    assert!(out.contains("model (hil size storm)"), "{out}");
}

#[test]
fn rumqttd_loses_the_queue_to_its_restart_and_the_table_says_whose_loss_it_is() {
    let (rc, out, err, r) = fleet(&["--devices", "300", "--restart", "--broker", "rumqttd"]);
    // Not the devices' loss: rumqttd keeps no sessions across a kill -9.
    assert_eq!(rc, 0, "{out}\n{err}");
    assert_eq!(r["commands_lost"], 0);
    assert_eq!(r["commands_lost_in_restart"], 1500, "{out}");
    assert!(out.contains("keeps no sessions across a kill -9"), "{out}");
    // Without the restart, everything arrives.
    let (rc, out, _, r) = fleet(&["--devices", "300", "--broker", "rumqttd"]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(r["commands_delivered"], 1500, "{out}");
}

#[test]
fn merge_adds_machines_and_refuses_what_is_not_a_report() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let a = dir.path().join("a.json");
    let o = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args(["fleet", "--devices", "50", "--json"])
        .arg(&a)
        .output()
        .expect("hil runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args(["fleet", "merge"])
        .arg(&a)
        .arg(&a)
        .output()
        .expect("hil runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("fleet: 100 devices"), "{out}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"not\": 1}").expect("written");
    let o = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args(["fleet", "merge"])
        .arg(&bad)
        .output()
        .expect("hil runs");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a `hil fleet --json` report"));
}
