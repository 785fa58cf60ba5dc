//! The hardware backends without hardware: the serial backend drives a sim
//! device through its pty exactly as it would a board; flashing fails clearly
//! against a port with no ROM bootloader behind it; the Wokwi backend runs a
//! stand-in wokwi-cli that replays a console in the firmware's format.

use hil::dut::{PtyDevice, SerialBackend, SerialOptions, WokwiBackend};
use hil::runner::{run_one, RunOptions, Verdict};
use hil::testbed::BrokerChoice;
use std::path::PathBuf;

/// A sim device started by hand (the runner's own launcher), as a board
/// would be sitting on a port: pointed at no broker; the runner provisions it.
fn sim_on_pty() -> (PtyDevice, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let mut args = hil_sim::Args::new(
        "127.0.0.1:9".into(),
        "f4:12:fa:00:00:01".into(),
        state.path().into(),
    );
    args.keepalive = 2;
    args.backoff_base_ms = 200;
    args.backoff_cap_ms = 2000;
    // As a board's firmware would be built for a bench: short timeouts, so
    // the Device Advisor scenarios (11 withheld CONNACKs) end in seconds.
    args.connack_timeout_ms = 500;
    args.ack_timeout_ms = 2000;
    let dev = PtyDevice::start(env!("CARGO_BIN_EXE_hil").as_ref(), args).unwrap();
    (dev, state)
}

fn serial(port: &str) -> RunOptions {
    let mut o = RunOptions::sim(env!("CARGO_BIN_EXE_hil").into(), BrokerChoice::Rumqttd);
    o.backend = Box::new(SerialBackend(SerialOptions {
        probe: None,
        port: port.into(),
        elf: None,
        chip: espflash::target::Chip::Esp32c3,
        wifi: Some(("bench-ap".into(), "not echoed".into())),
        mac: Some("f4:12:fa:00:00:01".into()),
        tls: false,
    }));
    o
}

/// Every scenario the serial backend can serve passes on a device it only
/// knows as a serial port, across scenarios (state carried over, as on a board).
#[test]
fn serial_backend_runs_every_scenario_on_a_sim_pty() {
    let (sim, _state) = sim_on_pty();
    let opts = serial(&sim.path);
    let mut passed = Vec::new();
    for s in hil::scenarios::ALL {
        let r = run_one(&opts, s, "unused");
        match &r.verdict {
            Verdict::Pass => passed.push(s.name),
            // Scenarios that need extra sim devices, a power cut, MQTT 5 or a
            // semantic rumqttd lacks: not applicable, with the reason.
            Verdict::NotApplicable(why) => assert!(
                why.contains("serial backend")
                    || why.contains("MQTT 5")
                    || why.contains("does not honour"),
                "{}: {why}",
                s.name
            ),
            other => panic!(
                "{} on the serial backend: {other:?}\n{}",
                s.name,
                r.transcript.raw()
            ),
        }
        // Secrets never reach the transcript.
        assert!(
            !r.transcript.raw().contains("not echoed"),
            "{}",
            r.transcript.raw()
        );
    }
    for want in [
        "boot_identity",
        "queued_commands",
        "telemetry_flush",
        "stable_client_id",
        "broker_restart",
        "link_blackhole",
        "duplicate_command",
    ] {
        assert!(
            passed.contains(&want),
            "{want} did not pass on the serial backend: passed {passed:?}"
        );
    }
}

#[test]
fn serial_backend_reports_a_missing_board() {
    let opts = serial("/dev/hil-no-such-board");
    let r = run_one(
        &opts,
        hil::scenarios::find("boot_identity").unwrap(),
        "unused",
    );
    // A missing board is the rig's fault, never the device's.
    let Verdict::Error(e) = &r.verdict else {
        panic!("a missing board must be a rig error: {:?}", r.verdict)
    };
    let e = e.to_string();
    assert!(e.contains("no device at /dev/hil-no-such-board"), "{e}");
    assert!(e.contains("hil doctor"), "{e}");
}

fn fake_elf() -> PathBuf {
    let p = std::env::temp_dir().join(format!("hil-fake-{}.elf", std::process::id()));
    std::fs::write(&p, b"\x7fELF not really").unwrap();
    p
}

#[test]
fn flashing_without_a_board_is_a_clear_error() {
    let err = hil::bench::flash::flash(
        "/dev/hil-no-such-board",
        &fake_elf(),
        espflash::target::Chip::Esp32c3,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot open /dev/hil-no-such-board"), "{err}");
    assert!(err.contains("hil doctor"), "{err}");
}

/// A pty whose other end never answers: no ROM bootloader behind it.
#[test]
fn flashing_a_port_that_never_answers_times_out_clearly() {
    let (_master, slave) = serialport::TTYPort::pair().unwrap();
    let path = serialport::SerialPort::name(&slave).unwrap();
    let started = std::time::Instant::now();
    let err = hil::bench::flash::flash(&path, &fake_elf(), espflash::target::Chip::Esp32c3)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&path), "{err}");
    assert!(
        err.contains("no ESP ROM bootloader answered") || err.contains("flashing"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
    eprintln!("{err}");
}

#[test]
fn flashing_reads_the_elf_first() {
    let err = hil::bench::flash::flash(
        "/dev/null",
        std::path::Path::new("/nonexistent.elf"),
        espflash::target::Chip::Esp32c3,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot read /nonexistent.elf"), "{err}");
}

fn wokwi(cli: PathBuf) -> RunOptions {
    let mut o = RunOptions::sim(env!("CARGO_BIN_EXE_hil").into(), BrokerChoice::Rumqttd);
    o.backend = Box::new(WokwiBackend {
        cli,
        project: concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/wokwi").into(),
        timeout_ms: 60_000,
    });
    o
}

fn stand_in() -> PathBuf {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wokwi-cli").into()
}

/// With the stand-in on PATH semantics (an explicit program here), the
/// Wokwi backend passes what it can serve and reports the rest not applicable.
#[test]
fn wokwi_backend_with_a_stand_in_cli() {
    // SAFETY: set before any thread of this test process reads it.
    unsafe { std::env::set_var("WOKWI_CLI_TOKEN", "stand-in-token") };
    // The Wokwi cloud cannot reach this host's broker, so nothing a scenario
    // judges (the wire, the cloud side) is there: every scenario is n/a.
    let opts = wokwi(stand_in());
    for s in hil::scenarios::ALL {
        let r = run_one(&opts, s, "unused");
        match &r.verdict {
            Verdict::NotApplicable(why) => assert!(why.contains("Wokwi"), "{}: {why}", s.name),
            other => panic!("{} on wokwi must be not applicable, was {other:?}", s.name),
        }
    }
    // The backend itself still drives the stand-in's console.
    let backend = WokwiBackend {
        cli: stand_in(),
        project: concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/wokwi").into(),
        timeout_ms: 60_000,
    };
    let t = hil::transcript::Transcript::new();
    let state = tempfile::tempdir().unwrap();
    let hold = |_: bool| {};
    let p = hil::dut::Provision {
        broker: "127.0.0.1:1883".parse().unwrap(),
        plain: "127.0.0.1:1883".parse().unwrap(),
        tls: None,
        login: None,
        mac: "24:0a:c4:00:00:01",
        mqtt: hil_broker::MqttVersion::V3_1_1,
        spec: hil::dut::DeviceSpec::DEFAULT,
        bugs: &[],
        state_dir: state.path(),
        transcript: &t,
        hold_connections: &hold,
    };
    let mut dut = hil::dut::Backend::bring_up(&backend, &p).unwrap();
    dut.expect("boot", std::time::Duration::from_secs(15), |e| {
        matches!(e, hil_session::Event::Boot { .. })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", t.raw()));
    // Errors name the fix. (One test: it changes the process environment.)
    let missing = WokwiBackend {
        cli: "/nonexistent/wokwi-cli".into(),
        ..backend
    };
    let err = hil::dut::Backend::bring_up(&missing, &p)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("install wokwi-cli"), "{err}");
    unsafe { std::env::remove_var("WOKWI_CLI_TOKEN") };
    let err = hil::dut::Backend::bring_up(&missing, &p)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("WOKWI_CLI_TOKEN is not set"), "{err}");
}

/// No probe on this machine: the probe backend says so and what to do.
#[test]
fn probe_backend_without_a_probe() {
    let err = hil::bench::probe::flash(None, &fake_elf(), espflash::target::Chip::Esp32c3)
        .unwrap_err()
        .to_string();
    if cfg!(feature = "probe") {
        assert!(err.contains("no debug probe found"), "{err}");
        assert!(err.contains("303a:1001"), "{err}");
    } else {
        assert!(err.contains("cargo build -p hil --features probe"), "{err}");
    }
}

/// A fake ROM bootloader on a pty: answers SYNC, fails GET_SECURITY_INFO (as
/// older ROMs do) and reports `magic` for the chip-detect register. Enough of
/// the serial protocol (SLIP frames, 12-byte ROM responses) for espflash to
/// detect a chip.
fn fake_rom(mut master: serialport::TTYPort, magic: u32) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut frame: Vec<u8> = Vec::new();
        let mut in_frame = false;
        let mut escape = false;
        let mut buf = [0u8; 512];
        let reply = |op: u8, value: u32, ok: bool| -> Vec<u8> {
            let mut r = vec![0x01, op, 4, 0];
            r.extend_from_slice(&value.to_le_bytes());
            r.extend_from_slice(&[if ok { 0 } else { 1 }, if ok { 0 } else { 5 }, 0, 0]);
            let mut out = vec![0xC0];
            for b in r {
                match b {
                    0xC0 => out.extend_from_slice(&[0xDB, 0xDC]),
                    0xDB => out.extend_from_slice(&[0xDB, 0xDD]),
                    b => out.push(b),
                }
            }
            out.push(0xC0);
            out
        };
        loop {
            let n = match master.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(_) => return,
            };
            for &b in &buf[..n] {
                match (b, in_frame, escape) {
                    (0xC0, false, _) => in_frame = true,
                    (0xC0, true, _) => {
                        in_frame = false;
                        if frame.len() >= 2 && frame[0] == 0x00 {
                            let op = frame[1];
                            let out: Vec<u8> = match op {
                                // The ROM answers SYNC eight times.
                                0x08 => (0..8).flat_map(|_| reply(op, 0, true)).collect(),
                                0x14 => reply(op, 0, false),
                                0x0a => reply(op, magic, true),
                                _ => reply(op, 0, true),
                            };
                            if master.write_all(&out).is_err() {
                                return;
                            }
                        }
                        frame.clear();
                    }
                    (0xDB, true, false) => escape = true,
                    (b, true, true) => {
                        frame.push(if b == 0xDC { 0xC0 } else { 0xDB });
                        escape = false;
                    }
                    (b, true, false) => frame.push(b),
                    _ => {}
                }
            }
        }
    });
}

/// An ESP32 (magic 0x00f01d83) where the rig says ESP32-C3: a clear error
/// naming both chips and the rig's `chip` key, before anything is written.
#[test]
fn flashing_the_wrong_chip_is_a_clear_error() {
    let (master, slave) = serialport::TTYPort::pair().unwrap();
    let path = serialport::SerialPort::name(&slave).unwrap();
    fake_rom(master, 0x00f0_1d83);
    let err = hil::bench::flash::flash_with(
        &path,
        &fake_elf(),
        espflash::target::Chip::Esp32c3,
        espflash::connection::ResetBeforeOperation::NoReset,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("wrong chip"), "{err}");
    assert!(err.to_lowercase().contains("esp32"), "{err}");
    assert!(err.contains("rig file"), "{err}");
}
