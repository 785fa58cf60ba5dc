//! `hil soak`: a short seeded soak on the sim device and embedded rumqttd
//! ends with a clean ledger; the same soak with a device that asks for a
//! clean session (the clean-session negative control) loses commands sent
//! while it is away and fails, blamed on the device; bad input is refused.

use std::process::Command;

fn soak(args: &[&str], out: &std::path::Path) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_hil"))
        .arg("soak")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code(), text)
}

#[test]
fn a_short_seeded_soak_has_a_clean_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = soak(&["--seed", "4", "--duration", "25s"], dir.path());
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("anomaly (device)"), "{text}");
    // The ledger: both directions, per QoS, and the faults it survived.
    assert!(text.contains("commands (cloud -> device)"), "{text}");
    assert!(
        text.contains("readings (device -> broker, QoS 1)"),
        "{text}"
    );
    assert!(text.contains("faults applied"), "{text}");
    let ledger = std::fs::read_to_string(dir.path().join("ledger.txt")).unwrap();
    assert!(ledger.contains("lost:device"), "{ledger}");
}

#[test]
fn a_soak_over_three_devices_judges_each_on_its_own_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = soak(
        &["--seed", "4", "--duration", "20s", "--devices", "3"],
        dir.path(),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("anomaly (device)"), "{text}");
    let raw = std::fs::read_to_string(dir.path().join("soak.raw.txt")).unwrap();
    for id in [
        "esp32c3-240ac400500a",
        "esp32c3-240ac4005001",
        "esp32c3-240ac4005002",
    ] {
        assert!(
            raw.contains(&format!("devices/{id}/cmd")),
            "{id} got commands"
        );
    }
}

#[test]
fn a_clean_session_device_fails_the_soak_and_is_blamed() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = soak(
        &[
            "--seed",
            "4",
            "--duration",
            "25s",
            "--sim-bug",
            "clean-session",
        ],
        dir.path(),
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("anomaly (device)") && text.contains("clean session"),
        "{text}"
    );
}

#[test]
fn bad_soak_input_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["--duration", "10x"][..], "the unit is ms, s, m, h or d"),
        (&["--devices", "0"][..], "--devices is 1 to 50"),
    ] {
        let (code, text) = soak(args, dir.path());
        assert_eq!(code, Some(2), "{args:?}: {text}");
        assert!(text.contains(says), "{args:?}: {text}");
    }
}
