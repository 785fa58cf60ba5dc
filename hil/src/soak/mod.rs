//! `hil soak`: seeded chaos over the proxy and the broker for a chosen
//! duration (random cuts, blackholes, latency, refusals, broker kill -9 and
//! restart, device reboots and power cuts, bursts of commands at QoS 0/1/2
//! and of readings), with a delivery ledger at the end (`ledger.rs`). The
//! same seed replays the same schedule (`schedule.rs`).
//!
//! It runs as one scenario on the runner's testbed (a fresh broker, the fault
//! proxy and its tap, the device), so everything a scenario has (transcript,
//! conformance monitor, rig errors told from device failures) a soak has too.

pub mod ledger;
pub mod schedule;

use crate::dut::{Capability, DeviceSpec};
use crate::scenarios::steps::{cloud_err, command, device_id, dut_subscribed, fail, on};
use crate::scenarios::{Need, Outcome, Promise, Scenario};
use crate::testbed::Testbed;
use hil_broker::client::ClientError;
use hil_session::Event;
use ledger::{Ledger, Sent};
use schedule::{Burst, Fault, Pace, Step};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What one soak does.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub duration: Duration,
    pub pace: Pace,
    /// Draw a progress bar (stderr).
    pub progress: bool,
}

/// The plan of the soak being run, and its ledger once built: the scenario
/// function is a plain `fn`, as every scenario's is, so they pass through here.
static PLAN: Mutex<Option<Plan>> = Mutex::new(None);
static LEDGER: Mutex<Option<Ledger>> = Mutex::new(None);

pub static SOAK: Scenario = Scenario {
    name: "soak",
    about: "seeded chaos (cuts, blackholes, latency, refusals, broker kill -9, reboots, power cuts, command and reading bursts) with a delivery ledger",
    advisor: &["MQTT_Long_Duration: INTERMITTENT_CONNECTIVITY, RECONNECT_BACK_OFF, LONG_SERVER_DISCONNECT"],
    needs: &[Need::Can(Capability::ReachesBroker), Need::Can(Capability::LinkFaults)],
    device: DeviceSpec {
        keepalive_s: 2,
        backoff_base_ms: 200,
        backoff_cap_ms: 2_000,
        connack_timeout_ms: 2_000,
        ack_timeout_ms: 3_000,
        outbox_capacity: 256,
        ..DeviceSpec::DEFAULT
    },
    catches: &[],
    run,
};

/// Runs `plan` through the runner (its broker, proxy and device); the
/// result and the ledger (None when the soak could not be run to the end).
pub fn soak(
    opts: &crate::runner::RunOptions,
    plan: Plan,
    mac: &str,
) -> (crate::runner::ScenarioResult, Option<Ledger>) {
    *PLAN.lock().unwrap() = Some(plan);
    *LEDGER.lock().unwrap() = None;
    let r = crate::runner::run_one(opts, &SOAK, mac);
    (r, LEDGER.lock().unwrap().take())
}

/// The console events so far, moved out of the device (a power cut gives it
/// a new console, and the ledger needs them all).
fn collect(tb: &mut Testbed, log: &mut Vec<Event>) {
    tb.dut.drain();
    log.append(&mut tb.dut.seen);
}

/// Publishes at `qos`, reconnecting the cloud client once if the broker
/// dropped it (a kill -9); false when the broker did not accept it.
fn publish(
    cloud: &mut hil_broker::Client,
    topic: &str,
    payload: &[u8],
    qos: u8,
) -> Result<bool, crate::scenarios::Stop> {
    for _ in 0..2 {
        match cloud.publish(topic, payload, qos, false) {
            Ok(()) => return Ok(true),
            Err(ClientError::Closed | ClientError::Io(_)) => {
                if cloud.reconnect().is_err() {
                    return Ok(false);
                }
            }
            Err(e) => return Err(cloud_err("cloud-soak")(e)),
        }
    }
    Ok(false)
}

/// Publishes `k` commands at `qos`, recording those the broker accepted.
#[allow(clippy::too_many_arguments)]
fn commands(
    cloud: &mut hil_broker::Client,
    topic: &str,
    seed: u64,
    n: &mut u32,
    k: u32,
    qos: u8,
    sent: &mut Vec<Sent>,
) -> Result<(), crate::scenarios::Stop> {
    for _ in 0..k {
        *n += 1;
        let cid = format!("soak-{seed}-{n}");
        let at = Instant::now();
        if publish(cloud, topic, command(&cid).as_bytes(), qos)? {
            sent.push(Sent { id: cid, qos, at });
        }
    }
    Ok(())
}

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::QueuedCommandsOnce;
    let plan = PLAN
        .lock()
        .unwrap()
        .clone()
        .ok_or_else(|| fail(P, "no soak plan"))?;
    let steps: Vec<Step> = schedule::schedule(plan.seed, plan.duration, plan.pace);
    let id = device_id(&mut tb.dut, P)?;
    dut_subscribed(tb)?;
    let topic = tb.topics(&id).cmd();
    let mut cloud = tb.cloud("cloud-soak")?;
    let mut log: Vec<Event> = Vec::new();
    let mut sent: Vec<Sent> = Vec::new();
    let mut faults: Vec<(Instant, String)> = Vec::new();
    let mut skipped: Vec<&'static str> = Vec::new();
    let bar = indicatif::ProgressBar::new(steps.len() as u64);
    if !plan.progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    tb.t().runner(format!(
        "soak: seed {} for {} s, {} steps ({} faults)",
        plan.seed,
        plan.duration.as_secs(),
        steps.len(),
        steps.iter().filter(|s| s.fault.is_fault()).count()
    ));
    let start = Instant::now();
    let mut n = 0u32;
    for step in &steps {
        let due = start + step.at;
        let now = Instant::now();
        if due > now {
            tb.dut.pass_time(due - now);
        }
        collect(tb, &mut log);
        let label = step.fault.label();
        let mut skip = |what: &'static str| {
            if !skipped.contains(&what) {
                skipped.push(what);
            }
        };
        match &step.fault {
            Fault::Commands { n: k, qos } => {
                commands(&mut cloud, &topic, plan.seed, &mut n, *k, *qos, &mut sent)?;
            }
            Fault::Readings(k) => {
                // A device that is rebooting may miss the line: its answer is not awaited.
                let _ = tb.dut.send(&format!("!telemetry {k}"));
            }
            f => {
                let during = step.during;
                let mut burst = |tb: &mut Testbed| -> Result<(), crate::scenarios::Stop> {
                    if let Some(b) = during {
                        commands(
                            &mut cloud, &topic, plan.seed, &mut n, b.commands, b.qos, &mut sent,
                        )?;
                        if b.readings > 0 {
                            let _ = tb.dut.send(&format!("!telemetry {}", b.readings));
                        }
                    }
                    Ok(())
                };
                let applied = match f {
                    Fault::Cut => {
                        tb.link().cut();
                        burst(tb)?;
                        true
                    }
                    Fault::Blackhole(d) => {
                        tb.link().blackhole(true);
                        burst(tb)?;
                        tb.dut.pass_time(*d);
                        tb.link().blackhole(false);
                        true
                    }
                    Fault::Latency(l, d) => {
                        tb.link().latency(*l);
                        burst(tb)?;
                        tb.dut.pass_time(*d);
                        tb.link().latency(Duration::ZERO);
                        true
                    }
                    Fault::Refuse(d) => {
                        tb.link().refuse(true);
                        tb.link().cut();
                        burst(tb)?;
                        tb.dut.pass_time(*d);
                        tb.link().refuse(false);
                        true
                    }
                    Fault::BrokerKill(d) if tb.can(Capability::BrokerRestart) => {
                        tb.broker_outage(*d)?;
                        true
                    }
                    Fault::Reboot => {
                        let ok = tb.dut.send("!reboot").is_ok();
                        burst(tb)?;
                        ok
                    }
                    Fault::PowerCut(d) if tb.can(Capability::PowerCut) => {
                        collect(tb, &mut log);
                        tb.dut.power_off().map_err(on(P))?;
                        // Readings cannot be taken while it is off: commands only.
                        let b = during.map(|b| Burst { readings: 0, ..b });
                        if let Some(b) = b {
                            commands(
                                &mut cloud, &topic, plan.seed, &mut n, b.commands, b.qos, &mut sent,
                            )?;
                        }
                        std::thread::sleep(*d); // the outage itself: powered off by design
                        tb.dut.power_on().map_err(on(P))?;
                        true
                    }
                    Fault::BrokerKill(_) => {
                        skip("broker kill (the broker cannot be restarted)");
                        false
                    }
                    _ => {
                        skip("power cut (the backend cannot cut power)");
                        false
                    }
                };
                if applied {
                    faults.push((Instant::now(), label.clone()));
                }
            }
        }
        bar.inc(1);
        bar.set_message(format!("{} commands, {} faults", sent.len(), faults.len()));
    }
    bar.finish_and_clear();
    for s in &skipped {
        tb.t().note(format!("soak: skipped {s}"));
    }
    // Heal, then let everything that can arrive arrive: every QoS 1/2
    // command executed, every reading acknowledged, or the deadline.
    tb.link().blackhole(false);
    tb.link().refuse(false);
    tb.link().latency(Duration::ZERO);
    tb.t()
        .runner("soak: faults over; waiting for the device to settle");
    // A last command at QoS 1 and at QoS 2: once both are executed,
    // everything the broker delivered before them at that QoS has been
    // processed (the broker keeps each topic's order per QoS [MQTT-4.6.0-6]
    // and the device handles in order); then every reading acknowledged or
    // dropped, or the deadline.
    let settle = Instant::now() + Duration::from_secs(60);
    for qos in [1u8, 2] {
        let end = format!("soak-{}-end-q{qos}", plan.seed);
        if publish(&mut cloud, &topic, command(&end).as_bytes(), qos)? {
            let left = settle.saturating_duration_since(Instant::now());
            let _ = tb.dut.expect(
                "the last command",
                left,
                |e| matches!(e, Event::Cmd { id, .. } if *id == end),
            );
        }
    }
    loop {
        collect(tb, &mut log);
        let buffered = log
            .iter()
            .filter(|e| matches!(e, Event::TelemetryBuffered { .. }))
            .count();
        let done = log
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::TelemetryAcked { .. } | Event::TelemetryDropped { .. }
                )
            })
            .count();
        if done >= buffered {
            break;
        }
        let left = settle.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tb.t().note(format!(
                "soak: {} readings still outstanding after 60 s",
                buffered - done
            ));
            break;
        }
        let _ = tb.dut.expect("", left, |e| {
            matches!(
                e,
                Event::TelemetryAcked { .. } | Event::TelemetryDropped { .. }
            )
        });
    }
    // Every reading's acknowledgement has crossed the tap by now, or never will.
    let wire = tb.wire().records();
    let ledger = Ledger::build(&sent, &log, &wire, &faults);
    let table = ledger.table();
    tb.t()
        .note(format!("soak ledger (seed {}):\n{table}", plan.seed));
    let clean = ledger.device_clean();
    let first = ledger
        .anomalies
        .iter()
        .find(|a| a.party == "device")
        .map(|a| a.what.clone());
    *LEDGER.lock().unwrap() = Some(ledger);
    if !clean {
        return Err(fail(
            P,
            format!(
                "the ledger has device anomalies: {}",
                first.unwrap_or_default()
            ),
        ));
    }
    tb.t().runner("verdict: the ledger is clean for the device");
    Ok(())
}
