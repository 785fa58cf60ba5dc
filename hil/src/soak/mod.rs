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
    /// Devices under chaos: the device under test and `devices - 1` more of the fleet.
    pub devices: u32,
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

/// The device `i` of the soak: 0 is the device under test, then the fleet.
fn dev<'a>(
    tb: &'a mut Testbed,
    fleet: &'a mut [crate::dut::FleetDevice],
    i: usize,
) -> &'a mut crate::dut::Dut {
    if i == 0 {
        &mut tb.dut
    } else {
        &mut fleet[i - 1].dut
    }
}

/// Every device's console events so far, moved into its log.
fn collect_all(tb: &mut Testbed, fleet: &mut [crate::dut::FleetDevice], logs: &mut [Vec<Event>]) {
    for (i, log) in logs.iter_mut().enumerate() {
        let d = dev(tb, fleet, i);
        d.drain();
        log.append(&mut d.seen);
    }
}

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::QueuedCommandsOnce;
    let plan = PLAN
        .lock()
        .unwrap()
        .clone()
        .ok_or_else(|| fail(P, "no soak plan"))?;
    let steps: Vec<Step> = schedule::schedule(plan.seed, plan.duration, plan.pace);
    let devices = plan.devices.max(1) as usize;
    let mut fleet: Vec<crate::dut::FleetDevice> = Vec::new();
    for k in 1..devices {
        let mac = format!("24:0a:c4:00:5{}:{:02x}", k / 256, k % 256);
        fleet.push(
            tb.fleet()?
                .start(&mac, &|_| {})
                .map_err(crate::scenarios::steps::rig)?,
        );
    }
    let mut ids = Vec::new();
    for i in 0..devices {
        ids.push(device_id(dev(tb, &mut fleet, i), P)?);
    }
    dut_subscribed(tb)?;
    let wire = tb.wire().clone();
    for f in fleet.iter_mut() {
        crate::scenarios::steps::subscribed(&mut f.dut, &wire)?;
    }
    let topics: Vec<String> = ids.iter().map(|id| tb.topics(id).cmd()).collect();
    let mut cloud = tb.cloud("cloud-soak")?;
    let mut logs: Vec<Vec<Event>> = vec![Vec::new(); devices];
    let mut sent: Vec<Vec<Sent>> = vec![Vec::new(); devices];
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
        "soak: seed {} for {} s on {devices} device(s), {} steps ({} faults)",
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
        collect_all(tb, &mut fleet, &mut logs);
        let i = step.pick as usize % devices;
        let label = if devices > 1 && matches!(step.fault, Fault::Reboot | Fault::PowerCut(_)) {
            format!("{} of {}", step.fault.label(), ids[i])
        } else {
            step.fault.label()
        };
        let mut skip = |what: &'static str| {
            if !skipped.contains(&what) {
                skipped.push(what);
            }
        };
        match &step.fault {
            Fault::Commands { n: k, qos } => {
                commands(
                    &mut cloud,
                    &topics[i],
                    plan.seed,
                    &mut n,
                    *k,
                    *qos,
                    &mut sent[i],
                )?;
            }
            Fault::Readings(k) => {
                // A device that is rebooting may miss the line: its answer is not awaited.
                let _ = dev(tb, &mut fleet, i).send(&format!("!telemetry {k}"));
            }
            f => {
                let during = step.during;
                let mut burst = |tb: &mut Testbed,
                                 fleet: &mut [crate::dut::FleetDevice]|
                 -> Result<(), crate::scenarios::Stop> {
                    if let Some(b) = during {
                        commands(
                            &mut cloud,
                            &topics[i],
                            plan.seed,
                            &mut n,
                            b.commands,
                            b.qos,
                            &mut sent[i],
                        )?;
                        if b.readings > 0 {
                            let _ = dev(tb, fleet, i).send(&format!("!telemetry {}", b.readings));
                        }
                    }
                    Ok(())
                };
                let applied = match f {
                    Fault::Cut => {
                        tb.link().cut();
                        burst(tb, &mut fleet)?;
                        true
                    }
                    Fault::Blackhole(d) => {
                        tb.link().blackhole(true);
                        burst(tb, &mut fleet)?;
                        tb.dut.pass_time(*d);
                        tb.link().blackhole(false);
                        true
                    }
                    Fault::Latency(l, d) => {
                        tb.link().latency(*l);
                        burst(tb, &mut fleet)?;
                        tb.dut.pass_time(*d);
                        tb.link().latency(Duration::ZERO);
                        true
                    }
                    Fault::Refuse(d) => {
                        tb.link().refuse(true);
                        tb.link().cut();
                        burst(tb, &mut fleet)?;
                        tb.dut.pass_time(*d);
                        tb.link().refuse(false);
                        true
                    }
                    Fault::BrokerKill(d) if tb.can(Capability::BrokerRestart) => {
                        tb.broker_outage(*d)?;
                        true
                    }
                    Fault::Reboot => {
                        let ok = dev(tb, &mut fleet, i).send("!reboot").is_ok();
                        burst(tb, &mut fleet)?;
                        ok
                    }
                    Fault::PowerCut(d) if tb.can(Capability::PowerCut) => {
                        collect_all(tb, &mut fleet, &mut logs);
                        dev(tb, &mut fleet, i).power_off().map_err(on(P))?;
                        // Readings cannot be taken while it is off: commands only.
                        if let Some(b) = during.map(|b| Burst { readings: 0, ..b }) {
                            commands(
                                &mut cloud,
                                &topics[i],
                                plan.seed,
                                &mut n,
                                b.commands,
                                b.qos,
                                &mut sent[i],
                            )?;
                        }
                        std::thread::sleep(*d); // the outage itself: powered off by design
                        dev(tb, &mut fleet, i).power_on().map_err(on(P))?;
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
        // The ledger's running counts, as far as the consoles tell so far.
        let total: usize = sent.iter().map(Vec::len).sum();
        let count = |f: fn(&Event) -> bool| logs.iter().flatten().filter(|e| f(e)).count();
        bar.set_message(format!(
            "{total} commands sent, {} executed; {} readings buffered, {} acked; {} faults",
            count(|e| matches!(e, Event::Cmd { .. })),
            count(|e| matches!(e, Event::TelemetryBuffered { .. })),
            count(|e| matches!(e, Event::TelemetryAcked { .. })),
            faults.len()
        ));
    }
    bar.finish_and_clear();
    for s in &skipped {
        tb.t().note(format!("soak: skipped {s}"));
    }
    // Heal, then let everything that can arrive arrive. A last command at
    // QoS 1 and at QoS 2 per device: once executed, everything the broker
    // delivered before them at that QoS has been processed (the broker keeps
    // each topic's order per QoS [MQTT-4.6.0-6] and the device handles in
    // order); then every reading acknowledged or dropped, or the deadline.
    tb.link().blackhole(false);
    tb.link().refuse(false);
    tb.link().latency(Duration::ZERO);
    tb.t()
        .runner("soak: faults over; waiting for the devices to settle");
    let settle = Instant::now() + Duration::from_secs(60);
    for (i, topic) in topics.iter().enumerate() {
        for qos in [1u8, 2] {
            let end = format!("soak-{}-end-{i}-q{qos}", plan.seed);
            if publish(&mut cloud, topic, command(&end).as_bytes(), qos)? {
                let left = settle.saturating_duration_since(Instant::now());
                let _ = dev(tb, &mut fleet, i).expect(
                    "the last command",
                    left,
                    |e| matches!(e, Event::Cmd { id, .. } if *id == end),
                );
            }
        }
    }
    for i in 0..devices {
        loop {
            collect_all(tb, &mut fleet, &mut logs);
            let log = &logs[i];
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
                    "soak: {}: {} readings still outstanding after 60 s",
                    ids[i],
                    buffered - done
                ));
                break;
            }
            let _ = dev(tb, &mut fleet, i).expect("", left, |e| {
                matches!(
                    e,
                    Event::TelemetryAcked { .. } | Event::TelemetryDropped { .. }
                )
            });
        }
    }
    collect_all(tb, &mut fleet, &mut logs);
    // Each device judged on its own connections (and the broker's restarts).
    let records = tb.wire().records();
    let mut owner: std::collections::HashMap<u32, &str> = std::collections::HashMap::new();
    for r in &records {
        if let crate::testbed::WireEvent::Packet {
            conn,
            dir: crate::testbed::Dir::Up,
            packet: crate::testbed::Packet::Connect { client_id, .. },
        } = &r.event
        {
            if let Some(id) = ids.iter().find(|i| *i == client_id) {
                owner.insert(*conn, id.as_str());
            }
        }
    }
    let conn_of = |e: &crate::testbed::WireEvent| match e {
        crate::testbed::WireEvent::Packet { conn, .. }
        | crate::testbed::WireEvent::Closed { conn, .. }
        | crate::testbed::WireEvent::Cut { conn }
        | crate::testbed::WireEvent::Attempt { conn, .. } => Some(*conn),
        _ => None,
    };
    let mut ledger = Ledger::default();
    for i in 0..devices {
        let mine: Vec<crate::testbed::WireRecord> = records
            .iter()
            .filter(|r| match conn_of(&r.event) {
                Some(c) => owner.get(&c) == Some(&ids[i].as_str()),
                None => true,
            })
            .cloned()
            .collect();
        let one = Ledger::build(&sent[i], &logs[i], &mine, &faults);
        ledger.merge(
            one,
            if devices > 1 {
                Some(ids[i].as_str())
            } else {
                None
            },
        );
    }
    ledger.faults = faults.len();
    let table = ledger.table();
    tb.t().note(format!(
        "soak ledger (seed {}, {devices} device(s)):\n{table}",
        plan.seed
    ));
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
    tb.t()
        .runner("verdict: the ledger is clean for every device");
    Ok(())
}
