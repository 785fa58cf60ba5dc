//! `hil doctor` with no board attached, and with a rig whose only "board" is
//! a sim device on a pty (answers its console like the firmware).

use std::process::Command;

fn doctor(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hil"))
        .arg("doctor")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn without_a_rig_it_reports_the_host() {
    let (code, text) = doctor(&[]);
    assert_eq!(code, 0, "{text}");
    for want in [
        "serial ports:",
        "debug probes",
        "wokwi-cli:",
        "WOKWI_CLI_TOKEN:",
        "mosquitto:",
        "rig: none given",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn a_broken_rig_is_a_problem_with_a_fix() {
    let dir = std::env::temp_dir().join(format!("hil-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rig = dir.join("broken.toml");
    std::fs::write(
        &rig,
        "[broker]\nbind = \"127.0.0.1\"\n[[board]]\nname = \"a\"\n",
    )
    .unwrap();
    let (code, text) = doctor(&["--rig", rig.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("give `port` or `usb_serial`"), "{text}");
    assert!(text.contains("fix:"), "{text}");
}

#[test]
fn the_example_rig_without_its_boards_lists_every_problem() {
    let rig = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/rigs/example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args(["doctor", "--rig", rig])
        .env_remove("HIL_WIFI_SSID")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("$HIL_WIFI_SSID, which is not set"), "{text}");
    assert!(
        text.contains("board `c3-a`: no serial port with USB serial number"),
        "{text}"
    );
    assert!(
        text.contains("board c3-b on /dev/ttyUSB0 does not answer"),
        "{text}"
    );
}

#[test]
fn a_board_that_answers_is_checked_against_its_mac() {
    // A sim on a pty, started by the runner's own launcher: a board on a port.
    let state = tempfile::tempdir().unwrap();
    let args = hil_sim::Args::new(
        "127.0.0.1:9".into(),
        "f4:12:fa:00:00:07".into(),
        state.path().join("flash"),
    );
    let dev = hil::dut::PtyDevice::start(env!("CARGO_BIN_EXE_hil").as_ref(), args).unwrap();
    let path = dev.path.clone();
    let state = state.path();
    let rig = state.join("rig.toml");
    std::fs::write(
        &rig,
        format!(
            "[broker]\nbind = \"127.0.0.1\"\n[[board]]\nname = \"sim\"\nport = \"{}\"\nmac = \"f4:12:fa:00:00:07\"\n[[board]]\nname = \"wrong\"\nport = \"{}\"\nmac = \"f4:12:fa:00:00:08\"\n",
            path.trim(),
            path.trim()
        ),
    )
    .unwrap();
    let (code, text) = doctor(&["--rig", rig.to_str().unwrap()]);
    drop(dev);
    assert!(
        text.contains("board sim on") && text.contains("answers, client_id=esp32c3-f412fa000007"),
        "{text}"
    );
    assert!(
        text.contains("reports esp32c3-f412fa000007, its rig entry says esp32c3-f412fa000008"),
        "{text}"
    );
    assert_eq!(code, 1, "{text}");
}
