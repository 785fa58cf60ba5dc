//! The hardware backends without hardware: the serial backend drives a sim
//! device through its pty exactly as it would a board; flashing fails clearly
//! against a port with no ROM bootloader behind it; the Wokwi backend runs a
//! stand-in wokwi-cli that replays a console in the firmware's format.

use hil::run::{run_one, BrokerChoice, DutChoice, RunOptions, SerialOptions, Verdict};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

struct SimOnPty {
    child: Child,
    path: String,
    _state: PathBuf,
}

impl Drop for SimOnPty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._state);
    }
}

/// A sim device started by hand, as a board would be sitting on a port:
/// pointed at no broker; the runner provisions it.
fn sim_on_pty(tag: &str) -> SimOnPty {
    let state = std::env::temp_dir().join(format!("hil-backend-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let mut child = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args([
            "sim",
            "--console",
            "pty",
            "--broker",
            "127.0.0.1:9",
            "--mac",
            "f4:12:fa:00:00:01",
        ])
        .args([
            "--keepalive",
            "2",
            "--backoff-base-ms",
            "200",
            "--backoff-cap-ms",
            "2000",
        ])
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    SimOnPty {
        child,
        path: line.trim().to_string(),
        _state: state,
    }
}

fn serial(port: &str) -> RunOptions {
    let mut o = RunOptions::sim(env!("CARGO_BIN_EXE_hil").into(), BrokerChoice::Rumqttd);
    o.dut = DutChoice::Serial(SerialOptions {
        probe: None,
        port: port.into(),
        elf: None,
        chip: espflash::target::Chip::Esp32c3,
        wifi: Some(("bench-ap".into(), "not echoed".into())),
        mac: Some("f4:12:fa:00:00:01".into()),
    });
    o
}

/// Every scenario the serial backend can serve passes on a device it only
/// knows as a serial port, across scenarios (state carried over, as on a board).
#[test]
fn serial_backend_runs_every_scenario_on_a_sim_pty() {
    let sim = sim_on_pty("serial");
    let opts = serial(&sim.path);
    let mut passed = Vec::new();
    for s in hil::scenario::ALL {
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
        hil::scenario::find("boot_identity").unwrap(),
        "unused",
    );
    let f = r.failure().expect("fails");
    assert!(
        f.detail.contains("no device at /dev/hil-no-such-board"),
        "{f}"
    );
    assert!(f.detail.contains("hil doctor"), "{f}");
}

fn fake_elf() -> PathBuf {
    let p = std::env::temp_dir().join(format!("hil-fake-{}.elf", std::process::id()));
    std::fs::write(&p, b"\x7fELF not really").unwrap();
    p
}

#[test]
fn flashing_without_a_board_is_a_clear_error() {
    let err = hil::flash::flash(
        "/dev/hil-no-such-board",
        &fake_elf(),
        espflash::target::Chip::Esp32c3,
    )
    .unwrap_err();
    assert!(err.contains("cannot open /dev/hil-no-such-board"), "{err}");
    assert!(err.contains("hil doctor"), "{err}");
}

/// A pty whose other end never answers: no ROM bootloader behind it.
#[test]
fn flashing_a_port_that_never_answers_times_out_clearly() {
    let (_master, slave) = serialport::TTYPort::pair().unwrap();
    let path = serialport::SerialPort::name(&slave).unwrap();
    let started = std::time::Instant::now();
    let err = hil::flash::flash(&path, &fake_elf(), espflash::target::Chip::Esp32c3).unwrap_err();
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
    let err = hil::flash::flash(
        "/dev/null",
        std::path::Path::new("/nonexistent.elf"),
        espflash::target::Chip::Esp32c3,
    )
    .unwrap_err();
    assert!(err.contains("cannot read /nonexistent.elf"), "{err}");
}

fn wokwi(cli: PathBuf) -> RunOptions {
    let mut o = RunOptions::sim(env!("CARGO_BIN_EXE_hil").into(), BrokerChoice::Rumqttd);
    o.dut = DutChoice::Wokwi {
        cli,
        project: concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/wokwi").into(),
        timeout_ms: 60_000,
    };
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
    let opts = wokwi(stand_in());
    for s in hil::scenario::ALL {
        let r = run_one(&opts, s, "unused");
        match (s.name, &r.verdict) {
            ("boot_identity", Verdict::Pass) => {}
            ("boot_identity", other) => {
                panic!("boot_identity on wokwi: {other:?}\n{}", r.transcript.raw())
            }
            (_, Verdict::NotApplicable(why)) => assert!(why.contains("Wokwi"), "{why}"),
            (name, other) => panic!("{name} on wokwi must be not applicable, was {other:?}"),
        }
    }
    // Errors name the fix. (One test: it changes the process environment.)
    let s = hil::scenario::find("boot_identity").unwrap();
    let r = run_one(&wokwi("/nonexistent/wokwi-cli".into()), s, "unused");
    assert!(
        r.failure().unwrap().detail.contains("install wokwi-cli"),
        "{:?}",
        r.verdict
    );
    unsafe { std::env::remove_var("WOKWI_CLI_TOKEN") };
    let r = run_one(&wokwi(stand_in()), s, "unused");
    assert!(
        r.failure()
            .unwrap()
            .detail
            .contains("WOKWI_CLI_TOKEN is not set"),
        "{:?}",
        r.verdict
    );
}

/// No probe on this machine: the probe backend says so and what to do.
#[test]
fn probe_backend_without_a_probe() {
    let err = hil::probe::flash(None, &fake_elf(), espflash::target::Chip::Esp32c3).unwrap_err();
    if cfg!(feature = "probe") {
        assert!(err.contains("no debug probe found"), "{err}");
        assert!(err.contains("303a:1001"), "{err}");
    } else {
        assert!(err.contains("cargo build -p hil --features probe"), "{err}");
    }
}
