//! Every scenario as tests generated from the registry: one per scenario ×
//! broker × MQTT version, with an insta snapshot of its normalised
//! transcript, and one per negative control the scenario declares (it must
//! fail, naming the promise it breaks). A scenario cannot exist without its
//! tests, nor a control without the test that proves it.
//! Each test is its own process under nextest, with its own broker address,
//! device state dir and MAC.

use hil::dut::Capability;
use hil::runner::{run_one, RunOptions, Verdict};
use hil::scenarios::{Control, Scenario, ALL};
use hil::testbed::BrokerChoice;
use hil_broker::MqttVersion;
use libtest_mimic::{Arguments, Failed, Trial};

/// Keeps a failed test's evidence under `target/hil/failed/<test>/` (CI
/// archives the folder) and says where, with the lines that decided it.
fn evidence(test: &str, r: &hil::runner::ScenarioResult) -> String {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    let dir = std::path::Path::new(&target).join("hil").join("failed");
    let kept = match hil::report::evidence::write(&dir, test, r) {
        Ok(folder) => format!("evidence kept in {}", folder.display()),
        Err(e) => format!("evidence not kept: {e}"),
    };
    format!(
        "{}
{kept}",
        hil::report::evidence::summary(r)
    )
}

/// Which device runs the scenario: the sim, or the firmware's own
/// application on the host (its tests' names say `firmware_host`, and the
/// default nextest profile leaves them to CI: it links libslirp).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Device {
    Sim,
    FirmwareHost,
}

fn opts(broker: BrokerChoice, device: Device) -> Result<RunOptions, Failed> {
    let mut o = RunOptions::sim(env!("CARGO_BIN_EXE_hil").into(), broker);
    if device == Device::FirmwareHost {
        o.backend = Box::new(hil::dut::FirmwareHostBackend::from_this_repo());
        o.backend
            .prepare()
            .map_err(|e| format!("the host firmware: {e}"))?;
    }
    Ok(o)
}

/// What the host firmware cannot serve, by design: extra devices (the
/// fleet is the sim's), TLS (its plaintext build; the TLS stack runs on the
/// host in firmware_tls.rs) and a login (sent only inside TLS).
const FIRMWARE_HOST_CANNOT: &[Capability] =
    &[Capability::Fleet, Capability::Tls, Capability::Login];

fn v(mqtt: MqttVersion) -> &'static str {
    match mqtt {
        MqttVersion::V3_1_1 => "v3",
        MqttVersion::V5 => "v5",
    }
}

/// Where a broker the suite runs on breaks a rule a scenario needs: the
/// verdict there must be `broker`, naming this clause (and nothing else is
/// accepted from it: a new deviation, or a device failure, still fails).
/// (broker, protocol, scenario, clause)
const KNOWN_BROKER_DEVIATIONS: &[(&str, &str, &str, &str)] = &[
    // rumqttd 0.20 ignores the MQTT 5 Maximum Packet Size of CONNECT and
    // sends the 17-64 KiB commands anyway (then redelivers them, without DUP).
    ("rumqttd", "v5", "large_payload", "MQTT-3.1.2-24"),
];

fn pass(
    s: &'static Scenario,
    broker: BrokerChoice,
    mqtt: MqttVersion,
    device: Device,
) -> Result<(), Failed> {
    let label = broker.name();
    let broker_kind = broker.clone();
    let mut o = opts(broker, device)?;
    o.mqtt = mqtt;
    let r = run_one(&o, s, "24:0a:c4:00:20:01");
    let name = s.name;
    let known = KNOWN_BROKER_DEVIATIONS
        .iter()
        .find(|(b, m, n, _)| *b == label && *m == v(mqtt) && *n == name)
        .map(|k| k.3);
    match (&r.verdict, known) {
        (Verdict::Broker { deviations, .. }, Some(clause)) => {
            if deviations.iter().any(|d| d.clause == clause) {
                return Ok(());
            }
            let test = format!("{label}-{}-{name}", v(mqtt));
            return Err(format!(
                "expected the broker verdict [{clause}]\n{}",
                evidence(&test, &r)
            )
            .into());
        }
        (_, Some(clause)) => {
            let test = format!("{label}-{}-{name}", v(mqtt));
            return Err(format!(
                "expected the broker verdict [{clause}] (a known deviation of {label})\n{}",
                evidence(&test, &r)
            )
            .into());
        }
        _ => {}
    }
    match &r.verdict {
        Verdict::Pass => {}
        // Not applicable (a broker that lacks a semantic, or MQTT 3.1.1 for the
        // expiry scenarios): asserted, not snapshotted. rumqttd 0.20 caps QoS on
        // some runs and not on others, so one combination is n/a or pass by run.
        Verdict::NotApplicable(why) => {
            // The reference broker honours every semantic the scenarios
            // need: a probe that says otherwise is a failure, not an n/a.
            if matches!(broker_kind, BrokerChoice::Mosquitto) && why.contains("does not honour") {
                return Err(format!(
                    "{name}: mosquitto, the reference broker, must honour it: {why}"
                )
                .into());
            }
            if why.contains("does not honour") || why.contains("needs MQTT 5") {
                return Ok(());
            }
            if device == Device::FirmwareHost
                && FIRMWARE_HOST_CANNOT
                    .iter()
                    .any(|c| *why == o.backend.why_not(*c))
            {
                return Ok(());
            }
            // rumqttd 0.20 cannot serve a login or ACL scenario (the reason says why).
            if matches!(broker_kind, BrokerChoice::Rumqttd)
                && (why == hil::runner::LOGIN_NA || why == hil::runner::ACL_NA)
            {
                return Ok(());
            }
            return Err(format!("{name}: not applicable for an unexpected reason: {why}").into());
        }
        _ => {
            let test = format!("{label}-{}-{name}", v(mqtt));
            return Err(evidence(&test, &r).into());
        }
    }
    // The host firmware's transcripts differ from the sim's (its boot
    // text, its provisioning over the console): snapshots per backend.
    let backend = match device {
        Device::Sim => "",
        Device::FirmwareHost => "firmware_host__",
    };
    snapshot(
        &format!("{backend}{name}__{label}__{}", v(mqtt)),
        &r.transcript.normalized(),
    );
    Ok(())
}

/// insta names a snapshot after the module of its call site: this one, as before.
fn snapshot(name: &str, normalized: &str) {
    insta::assert_snapshot!(name.to_string(), format!("verdict: pass\n{normalized}"));
}

/// A negative control must fail its scenario, naming the promise it breaks.
fn caught(s: &'static Scenario, c: Control, device: Device) -> Result<(), Failed> {
    let mut o = opts(c.broker.choice(), device)?;
    o.mqtt = c.mqtt;
    o.bugs = vec![c.bug];
    let r = run_one(&o, s, "24:0a:c4:00:30:01");
    let test = format!("control-{}-{}", s.name, c.bug.name());
    match r.failure() {
        Some(f) if f.promise == c.breaks => Ok(()),
        None => Err(format!(
            "--sim-bug {} did not fail {}\n{}",
            c.bug.name(),
            s.name,
            evidence(&test, &r)
        )
        .into()),
        Some(_) => Err(format!(
            "--sim-bug {}: {} failed for another reason than {:?}\n{}",
            c.bug.name(),
            s.name,
            c.breaks,
            evidence(&test, &r)
        )
        .into()),
    }
}

fn cli_lists_scenarios_and_rejects_bad_input() -> Result<(), Failed> {
    let hil = env!("CARGO_BIN_EXE_hil");
    let out = std::process::Command::new(hil).arg("list").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    for s in ALL {
        if !text.contains(s.name) {
            return Err(format!("`hil list` lacks {}", s.name).into());
        }
        for c in s.catches {
            if !text.contains(&format!("--sim-bug {}", c.bug.name())) {
                return Err(
                    format!("`hil list` lacks {}'s control {}", s.name, c.bug.name()).into(),
                );
            }
        }
    }
    for (args, code, says) in [
        (
            &["run", "--broker", "nonsense"][..],
            2,
            "expected rumqttd, mosquitto, or HOST:PORT",
        ),
        (
            &["run", "--scenario", "nope"][..],
            2,
            "unknown scenario `nope`",
        ),
        (&["run", "--sim-bug", "nope"][..], 2, "--sim-bug"),
    ] {
        let out = std::process::Command::new(hil).args(args).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(code) || !err.contains(says) {
            return Err(
                format!("hil {args:?}: exit {:?}, stderr: {err}", out.status.code()).into(),
            );
        }
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for (device, prefix) in [(Device::Sim, ""), (Device::FirmwareHost, "firmware_host::")] {
        for (broker, bname) in [
            (BrokerChoice::Rumqttd, "rumqttd"),
            (BrokerChoice::Mosquitto, "mosquitto"),
        ] {
            for mqtt in [MqttVersion::V3_1_1, MqttVersion::V5] {
                for s in ALL.iter().copied() {
                    let b = broker.clone();
                    trials.push(Trial::test(
                        format!("{prefix}{bname}::{}::{}", v(mqtt), s.name),
                        move || pass(s, b, mqtt, device),
                    ));
                }
            }
        }
        for s in ALL.iter().copied() {
            // A control of a scenario the host firmware cannot serve would
            // prove nothing there: its n/a is asserted above.
            let served = device == Device::Sim
                || !s.needs.iter().any(|n| {
                    matches!(n, hil::scenarios::Need::Can(c) if FIRMWARE_HOST_CANNOT.contains(c))
                });
            if !served {
                continue;
            }
            for c in s.catches.iter().copied() {
                let on = match c.broker.choice() {
                    BrokerChoice::Mosquitto => "__mosquitto",
                    _ => "",
                };
                trials.push(Trial::test(
                    format!(
                        "{prefix}negative_control::{}::{}{on}_{}",
                        s.name,
                        c.bug.name().replace('-', "_"),
                        v(c.mqtt)
                    ),
                    move || caught(s, c, device),
                ));
            }
        }
    }
    trials.push(Trial::test(
        "every_scenario_declares_a_negative_control",
        || {
            let bare: Vec<&str> = ALL
                .iter()
                .filter(|s| s.catches.is_empty())
                .map(|s| s.name)
                .collect();
            if bare.is_empty() {
                Ok(())
            } else {
                Err(format!("scenarios without a negative control: {bare:?}").into())
            }
        },
    ));
    trials.push(Trial::test(
        "cli_lists_scenarios_and_rejects_bad_input",
        cli_lists_scenarios_and_rejects_bad_input,
    ));
    libtest_mimic::run(&args, trials).exit();
}
