//! `hil fleet`: N session cores in this process (the fleet engine of
//! `hil-sim`), against a broker: all online with persistent sessions, all
//! offline, Q commands queued for each, optionally the broker killed while
//! they are away, all back; then the table: time to all online, connects per
//! second at the network (peak, p99), time to all reconnected, commands
//! delivered / lost / duplicated, runner RSS per device, broker RSS per
//! queued message beside the reference formula, the burst N × Q × M, and the
//! model of `hil size storm` beside the measured storm.
//!
//! Why in-process, when the runner otherwise only knows devices as processes:
//! 10,000 processes do not fit a test machine (~5 MB each). The engine's
//! devices are load with real session logic, not devices under test: no
//! promise of theirs is judged here, only what the broker delivered to them.

use crate::size;
use crate::testbed::BrokerChoice;
use hil_broker::{Broker, BrokerError, MqttVersion, Restart};
use hil_session::{Bug, Config, Mac};
use hil_sim::fleet::{Fleet, FleetConfig, FleetError, FleetEvent};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub devices: usize,
    pub broker: BrokerChoice,
    pub mqtt: MqttVersion,
    /// Commands queued for each device while it is offline (QoS 1).
    pub queued: usize,
    /// Bytes of each command's payload.
    pub payload: usize,
    /// How long the fleet stays offline after its commands are queued.
    pub offline: Duration,
    /// Kill -9 the broker while the fleet is offline; the fleet comes back
    /// while it is down and finds it after `down`.
    pub restart: bool,
    pub down: Duration,
    /// Lockstep backoff: the herd, for the control run.
    pub no_jitter: bool,
    pub seed: u64,
    /// mosquitto's `max_queued_messages` (its default 1000).
    pub max_queued: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub progress: bool,
}

/// Why the fleet run could not be done: not a verdict on anyone.
#[derive(Debug, thiserror::Error)]
pub enum FleetRunError {
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("cloud client: {0}")]
    Cloud(#[from] hil_broker::ClientError),
    #[error("{what}\nthe broker's log, last lines:\n{log}")]
    WithLog {
        what: Box<FleetRunError>,
        log: String,
    },
    #[error("{what}: {done} of {want} after {waited:?}; {hint}")]
    Timeout {
        what: &'static str,
        done: usize,
        want: usize,
        waited: Duration,
        hint: String,
    },
    #[error(
        "--devices {0}: the file-descriptor limit allows {1}; raise it (ulimit -n) or run fewer"
    )]
    Fds(usize, u64),
}

/// Connects in one 100 ms slice, at UNIX time `ms` (so runs on several
/// machines against one broker merge by wall clock).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Slice {
    pub ms: u64,
    pub connects: u32,
    pub attempts: u32,
}

/// What a run measured (`--json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub machine: String,
    pub broker: String,
    pub mqtt: String,
    pub devices: usize,
    pub queued: usize,
    pub payload: usize,
    pub restart: bool,
    pub jitter: bool,
    pub time_to_online_s: f64,
    pub time_to_reconnected_s: f64,
    pub commands_sent: u64,
    pub commands_delivered: u64,
    pub commands_lost: u64,
    /// Lost with the broker's kill -9: a broker that keeps no sessions.
    pub commands_lost_in_restart: u64,
    /// Redeliveries the devices saw (QoS 1 allows them; acknowledged, not run again).
    pub commands_duplicated: u64,
    /// Commands run more than once: never allowed.
    pub commands_executed_twice: u64,
    /// Beyond the broker's own per-client queue limit: its configured drop.
    #[serde(default)]
    pub commands_over_queue_limit: u64,
    /// Wall time of each phase (online, queue, offline, back, deliveries).
    #[serde(default)]
    pub phases_s: Vec<(String, f64)>,
    pub runner_rss_per_device_b: u64,
    pub broker_rss_before_b: u64,
    pub broker_rss_queued_b: u64,
    /// The reconnect phase, 100 ms slices.
    pub slices: Vec<Slice>,
}

impl Report {
    /// Connects per second: the busiest slice, and the 99th percentile of
    /// the slices that had any.
    pub fn peak_and_p99(&self) -> (f64, f64) {
        let mut v: Vec<u32> = self
            .slices
            .iter()
            .map(|s| s.connects)
            .filter(|c| *c > 0)
            .collect();
        v.sort_unstable();
        let per_s = |c: u32| c as f64 * (1000 / size::SLICE_MS) as f64;
        let peak = v.last().copied().map(per_s).unwrap_or(0.0);
        let p99 = if v.is_empty() {
            0.0
        } else {
            per_s(v[((v.len() - 1) as f64 * 0.99).round() as usize])
        };
        (peak, p99)
    }

    /// Connection attempts per second in the busiest slice: the load the
    /// fleet offers, before the broker's accept queue flattens it.
    pub fn peak_attempts(&self) -> f64 {
        self.slices.iter().map(|s| s.attempts).max().unwrap_or(0) as f64
            * (1000 / size::SLICE_MS) as f64
    }

    pub fn broker_bytes_per_queued(&self) -> Option<f64> {
        let queued = (self.devices * self.queued) as f64;
        (self.broker_rss_queued_b > self.broker_rss_before_b && queued > 0.0)
            .then(|| (self.broker_rss_queued_b - self.broker_rss_before_b) as f64 / queued)
    }

    pub fn table(&self) -> String {
        let (peak, p99) = self.peak_and_p99();
        let formula = hil_session::sizing::queue_memory_bytes(
            1,
            self.payload as u64,
            hil_session::sizing::BROKER_OVERHEAD_BYTES,
        );
        let measured = self
            .broker_bytes_per_queued()
            .map(|b| format!("{b:.0} B"))
            .unwrap_or_else(|| "not measurable (RSS did not grow)".into());
        let burst = hil_session::sizing::restart_burst_bytes(
            self.devices as u64,
            self.queued as u64,
            self.payload as u64,
        );
        format!(
            "fleet: {} devices on {} (MQTT {}), {} commands queued each, payload {} B, {}{}\n\
             machine                       {}\n\
             time to all online            {:.2} s\n\
             time to all reconnected       {:.2} s\n\
             connects/s at the network     peak {:.0}, p99 {:.0} (100 ms slices)\n\
             attempts/s at the network     peak {:.0} (offered load once the broker listens again)\n\
             commands sent / delivered     {} / {}\n\
             lost / in broker restart      {} / {}\n\
             over the broker's queue limit {}\n\
             phases                        {}\n\
             redelivered / executed twice  {} / {}\n\
             runner RSS per device         {} B\n\
             broker RSS per queued message {} (formula M_payload + M_overhead: {} B)\n\
             broker queue, model/measured  {} / {}\n\
             restart burst N × Q × M       {}\n{}",
            size::thousands(self.devices as u64),
            self.broker,
            self.mqtt,
            self.queued,
            self.payload,
            if self.restart {
                "broker killed while offline"
            } else {
                "no broker restart"
            },
            if self.jitter {
                ""
            } else {
                ", NO JITTER (control)"
            },
            self.machine,
            self.time_to_online_s,
            self.time_to_reconnected_s,
            peak,
            p99,
            self.peak_attempts(),
            size::thousands(self.commands_sent),
            size::thousands(self.commands_delivered),
            size::thousands(self.commands_lost),
            size::thousands(self.commands_lost_in_restart),
            size::thousands(self.commands_over_queue_limit),
            self.phases_s
                .iter()
                .map(|(p, s)| format!("{p} {s:.1} s"))
                .collect::<Vec<_>>()
                .join(", "),
            size::thousands(self.commands_duplicated),
            size::thousands(self.commands_executed_twice),
            size::thousands(self.runner_rss_per_device_b),
            measured,
            formula,
            size::bytes(formula * (self.devices * self.queued) as u64),
            size::bytes(self.broker_rss_queued_b.saturating_sub(self.broker_rss_before_b)),
            size::bytes(burst),
            if self.commands_lost_in_restart > 0 {
                format!(
                    "the broker's: {} keeps no sessions across a kill -9, so the queue went with it (not the devices' loss)\n",
                    self.broker
                )
            } else {
                String::new()
            },
        )
    }

    /// Pass: nothing lost that the broker was meant to keep, nothing run twice.
    pub fn passed(&self) -> bool {
        self.commands_lost == 0 && self.commands_executed_twice == 0
    }
}

/// Several machines' runs against one broker, as one.
pub fn merge(reports: &[Report]) -> Option<Report> {
    let first = reports.first()?.clone();
    let mut m = Report {
        machine: reports
            .iter()
            .map(|r| r.machine.clone())
            .collect::<Vec<_>>()
            .join(" + "),
        ..first
    };
    for r in &reports[1..] {
        m.devices += r.devices;
        m.commands_sent += r.commands_sent;
        m.commands_delivered += r.commands_delivered;
        m.commands_lost += r.commands_lost;
        m.commands_lost_in_restart += r.commands_lost_in_restart;
        m.commands_duplicated += r.commands_duplicated;
        m.commands_over_queue_limit += r.commands_over_queue_limit;
        m.commands_executed_twice += r.commands_executed_twice;
        m.time_to_online_s = m.time_to_online_s.max(r.time_to_online_s);
        m.time_to_reconnected_s = m.time_to_reconnected_s.max(r.time_to_reconnected_s);
        m.runner_rss_per_device_b = m.runner_rss_per_device_b.max(r.runner_rss_per_device_b);
        m.restart |= r.restart;
        m.jitter &= r.jitter;
    }
    // Same wall-clock slice on two machines: the broker saw both.
    let mut by: BTreeMap<u64, Slice> = BTreeMap::new();
    for s in reports.iter().flat_map(|r| &r.slices) {
        let e = by.entry(s.ms).or_insert(Slice {
            ms: s.ms,
            connects: 0,
            attempts: 0,
        });
        e.connects += s.connects;
        e.attempts += s.attempts;
    }
    m.slices = by.into_values().collect();
    // The broker's RSS is one process's: not summed.
    m.broker_rss_before_b = 0;
    m.broker_rss_queued_b = 0;
    Some(m)
}

/// This machine, in a few words.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            })
        })
        .map(|kb| format!("{} GiB", kb / 1024 / 1024 + 1))
        .unwrap_or_default();
    format!("{cores} cores, {cpu}, {mem}")
}

/// Resident memory of a process, in bytes (Linux).
pub fn rss(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// Raises this process's open-file limit to its hard limit (children, the
/// broker among them, inherit it); returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 1024;
        }
        l.rlim_cur = l.rlim_max;
        let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur
    }
}

struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(show: bool, len: usize, what: &str) -> Bar {
        let b = indicatif::ProgressBar::new(len as u64);
        if !show {
            b.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        b.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_prefix(what.to_string());
        Bar(b)
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// The fleet's events, folded as they come.
#[derive(Default)]
struct Tally {
    subscribed: HashSet<usize>,
    connacked: HashSet<usize>,
    executed: HashMap<(usize, String), u32>,
    duplicates: u64,
    /// (attempt or connect, when) in the phase being measured.
    timeline: Vec<(bool, Instant)>,
    measuring: bool,
}

impl Tally {
    /// Takes the next event, waiting up to `timeout`, and any already queued.
    fn drain(&mut self, fleet: &Fleet, timeout: Duration) {
        if let Some(e) = fleet.next_event(timeout) {
            self.take(e);
            while let Some(e) = fleet.next_event(Duration::ZERO) {
                self.take(e);
            }
        }
    }

    fn take(&mut self, e: FleetEvent) {
        match e {
            FleetEvent::Subscribed { device } => {
                self.subscribed.insert(device);
            }
            FleetEvent::Connack { device, at, .. } => {
                self.connacked.insert(device);
                if self.measuring {
                    self.timeline.push((true, at));
                }
            }
            FleetEvent::Attempt { at, .. } => {
                if self.measuring {
                    self.timeline.push((false, at));
                }
            }
            FleetEvent::Executed { device, id } => {
                *self.executed.entry((device, id)).or_default() += 1;
            }
            FleetEvent::Duplicate { .. } => self.duplicates += 1,
            FleetEvent::Refused { .. } | FleetEvent::Lost { .. } => {}
        }
    }
}

/// What a wait waits for: `want` of `what`, and what to say if they do not come.
struct Goal<'a> {
    what: &'static str,
    want: usize,
    hint: &'a str,
}

/// Reads events until `count(tally)` reaches the goal, or the deadline.
fn wait(
    fleet: &Fleet,
    t: &mut Tally,
    bar: &Bar,
    within: Duration,
    goal: Goal,
    count: impl Fn(&Tally) -> usize,
) -> Result<(), FleetRunError> {
    let Goal { what, want, hint } = goal;
    let start = Instant::now();
    let until = start + within;
    bar.0.set_length(want as u64);
    loop {
        let n = count(t);
        bar.0.set_position(n as u64);
        if n >= want {
            return Ok(());
        }
        let now = Instant::now();
        if now >= until {
            return Err(FleetRunError::Timeout {
                what,
                done: n,
                want,
                waited: start.elapsed(),
                hint: hint.into(),
            });
        }
        t.drain(fleet, (until - now).min(Duration::from_millis(200)));
    }
}

/// Waits until the broker answers a QoS 1 publish within a second again: a
/// broker that handles 10,000 disconnections one after another (rumqttd:
/// ~3 ms each) would time out the cloud's first publishes otherwise.
fn settle(cloud: &mut hil_broker::Client, within: Duration) -> Result<(), FleetRunError> {
    let until = Instant::now() + within;
    loop {
        let t = Instant::now();
        match cloud.publish("hil-fleet/settle", b"", 1, false) {
            Ok(()) if t.elapsed() < Duration::from_secs(1) => return Ok(()),
            Ok(()) => {}
            Err(e) if Instant::now() >= until => return Err(e.into()),
            // Its 10 s PUBACK wait ran out: the broker is still busy.
            Err(hil_broker::ClientError::Timeout(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= until {
            return Err(FleetRunError::Timeout {
                what: "broker answering within 1 s after the fleet left",
                done: 0,
                want: 1,
                waited: within,
                hint: "the broker is overloaded by the disconnections".into(),
            });
        }
    }
}

fn command_id(device: usize, k: usize) -> String {
    format!("f{device}-{k}")
}

/// Runs the plan on a broker of its own (or the external one).
pub fn run(plan: &Plan, hil_exe: &Path) -> Result<Report, FleetRunError> {
    let mut log = None;
    run_logged(plan, hil_exe, &mut log).map_err(|e| match log {
        Some(l) if !matches!(e, FleetRunError::Broker(_)) => FleetRunError::WithLog {
            what: Box::new(e),
            log: l,
        },
        _ => e,
    })
}

/// The broker's log, kept for the error message when the run fails.
struct LogOnFail<'a> {
    broker: Broker,
    out: &'a mut Option<String>,
}

impl Drop for LogOnFail<'_> {
    fn drop(&mut self) {
        *self.out = Some(self.broker.log_lines(15));
    }
}

impl std::ops::Deref for LogOnFail<'_> {
    type Target = Broker;
    fn deref(&self) -> &Broker {
        &self.broker
    }
}

impl std::ops::DerefMut for LogOnFail<'_> {
    fn deref_mut(&mut self) -> &mut Broker {
        &mut self.broker
    }
}

fn run_logged(
    plan: &Plan,
    hil_exe: &Path,
    log: &mut Option<String>,
) -> Result<Report, FleetRunError> {
    let limit = raise_fd_limit();
    // The runner holds one socket per device; a broker it starts holds as
    // many; the cloud clients and the runtime need a few more.
    if plan.devices as u64 + 64 > limit {
        return Err(FleetRunError::Fds(plan.devices, limit));
    }
    let mut spec = plan.broker.spec(hil_exe);
    if let hil_broker::BrokerSpec::Rumqttd { args, .. } = &mut spec {
        args.push("--max-connections".into());
        args.push((plan.devices + 64).to_string().into());
    }
    let ip = hil_broker::private_loopback();
    let mut broker = LogOnFail {
        broker: Broker::start_tuned(
            spec,
            ip,
            hil_broker::Tuning {
                // Once a second: saved after every one of 50,000 queued
                // messages, the store is rewritten 50,000 times.
                autosave_changes: None,
                max_queued: plan.max_queued,
                ..Default::default()
            },
        )?,
        out: log,
    };
    let mut phases: Vec<(String, f64)> = Vec::new();
    let mut phase = Instant::now();
    let mut lap = |name: &str, phases: &mut Vec<(String, f64)>| {
        phases.push((name.to_string(), phase.elapsed().as_secs_f64()));
        phase = Instant::now();
    };
    let addr = broker.addr(plan.mqtt);
    let mut cfg = Config::new("esp32c3", Mac([0x24, 0x0a, 0xc4, 0x20, 0, 0]));
    cfg.mqtt = match plan.mqtt {
        MqttVersion::V3_1_1 => hil_session::MqttVersion::V3_1_1,
        MqttVersion::V5 => hil_session::MqttVersion::V5,
    };
    cfg.backoff_base_ms = plan.backoff_base.as_millis() as u64;
    cfg.backoff_cap_ms = plan.backoff_cap.as_millis() as u64;
    // Long enough that a busy broker's burst is not taken for a dead link.
    cfg.keepalive_s = 120;
    cfg.ack_timeout_ms = 60_000;
    cfg.connack_timeout_ms = 30_000;
    cfg.inbox_capacity = plan.queued.max(1) * 2;
    if plan.no_jitter {
        cfg.bugs = cfg.bugs.with(Bug::NoJitter);
    }
    let rss_before = rss(std::process::id());
    let fleet = Fleet::start(
        FleetConfig {
            devices: plan.devices,
            broker: addr,
            device: cfg,
            first_mac: Mac([0x24, 0x0a, 0xc4, 0x20, 0, 0]),
            seed: plan.seed,
            source_block: 200,
        },
        2,
    )?;
    let mut t = Tally::default();
    let n = plan.devices;
    // The cloud side connects first: a broker busy with thousands of
    // devices going away may take longer than a CONNECT wait to admit a
    // newcomer. A few side by side: one would wait for each PUBACK.
    let mut clouds = Vec::new();
    for c in 0..4.min(n) {
        let mut o = hil_broker::client::ConnectOptions::new(&format!("fleet-cloud-{c}"));
        o.clean = true;
        // It idles while the fleet comes up (minutes on a slow broker) and
        // sends no PINGREQ of its own: the longest keep-alive, or the broker
        // drops it. (0 turns keep-alive off in MQTT, section 3.1.2.10, but
        // rumqttd 0.20 refuses it: ZeroKeepAlive.)
        o.keepalive_s = u16::MAX;
        clouds.push(hil_broker::Client::connect(addr, plan.mqtt, &o)?);
    }
    // Generous and bounded: a 2-core machine brings up ~1,000 devices a second.
    let bound = Duration::from_secs(30 + n as u64 / 100);
    // 1. Online, subscribed, with persistent sessions.
    let started = Instant::now();
    fleet.wifi_all(true);
    {
        let bar = Bar::new(plan.progress, n, "online");
        wait(
            &fleet,
            &mut t,
            &bar,
            bound,
            Goal {
                what: "devices subscribed",
                want: n,
                hint: "the broker may refuse connections (its log says why) or be out of file descriptors",
            },
            |t| t.subscribed.len(),
        )?;
    }
    let time_to_online = started.elapsed();
    lap("online", &mut phases);
    let runner_rss = rss(std::process::id()).saturating_sub(rss_before) / n as u64;
    // 2. Offline; the broker holds their sessions.
    fleet.wifi_all(false);
    settle(&mut clouds[0], bound)?;
    let broker_rss_before = broker.pid().map(rss).unwrap_or(0);
    let pad = "x".repeat(plan.payload.saturating_sub(24));
    let mut sent = 0u64;
    {
        let bar = Bar::new(plan.progress, n * plan.queued, "queue commands");
        let clients = clouds.len();
        let ids: Vec<&str> = (0..n).map(|d| fleet.client_id(d)).collect();
        std::thread::scope(|s| -> Result<(), FleetRunError> {
            let handles: Vec<_> = clouds
                .drain(..)
                .enumerate()
                .map(|(c, cloud)| {
                    let ids = &ids;
                    let pad = &pad;
                    let bar = &bar.0;
                    s.spawn(move || -> Result<u64, FleetRunError> {
                        let mut cloud = cloud;
                        let mut sent = 0;
                        for d in (c..n).step_by(clients) {
                            let topic = hil_session::Topics::new(
                                hil_session::Topics::DEFAULT_PREFIX,
                                ids[d],
                            )
                            .cmd();
                            for k in 0..plan.queued {
                                let body = format!(
                                    "{{\"id\":\"{}\",\"pad\":\"{pad}\"}}",
                                    command_id(d, k)
                                );
                                cloud.publish(&topic, body.as_bytes(), 1, false)?;
                                sent += 1;
                                bar.inc(1);
                            }
                        }
                        cloud.disconnect();
                        Ok(sent)
                    })
                })
                .collect();
            for h in handles {
                sent += h.join().expect("a cloud client does not panic")?;
            }
            Ok(())
        })?;
    }
    // Let the broker's memory settle on what it now holds: its RSS after the
    // last PUBACK is what it keeps for the queued messages.
    let broker_rss_queued = broker.pid().map(rss).unwrap_or(0);
    lap("queue commands", &mut phases);
    // The outage itself: how long the fleet is away is the fault, not a
    // stand-in for an event.
    std::thread::sleep(plan.offline);
    // 3. Back; with --restart, into a broker that is down and comes back
    // after `down`: the fleet's backoff decides the storm.
    lap("offline", &mut phases);
    t.measuring = true;
    t.connacked.clear();
    let back = Instant::now();
    let mut storm_from = back;
    if plan.restart {
        if let hil_broker::BrokerSpec::Mosquitto { persistence: true } = broker.spec() {
            // Its store must hold the queue before the kill, or the kill is
            // a test of its autosave interval rather than of the fleet.
            // Each cloud client's last command: they finish at different
            // times, so one client's last is not the run's last.
            let clients = 4.min(n);
            let last: Vec<String> = (0..clients)
                .map(|c| {
                    let d = c + (n - 1 - c) / clients * clients;
                    command_id(d, plan.queued.saturating_sub(1))
                })
                .collect();
            if plan.queued > 0 && !broker.wait_persisted(&last, Duration::from_secs(30)) {
                return Err(FleetRunError::Timeout {
                    what: "mosquitto's store holding the queue before the kill",
                    done: 0,
                    want: last.len(),
                    waited: Duration::from_secs(30),
                    hint: "its store is not being written (permissions of its temp dir?)".into(),
                });
            }
        }
        broker.stop(Restart::Kill);
        fleet.wifi_all(true);
        // The broker is down for `down`: the outage is the fault.
        std::thread::sleep(plan.down);
        // The storm is what the broker meets once it listens again: the
        // fleet's first attempts at power-on, refused by a dead broker,
        // are not counted in it.
        storm_from = Instant::now();
        broker.start_again()?;
    } else {
        fleet.wifi_all(true);
    }
    {
        let bar = Bar::new(plan.progress, n, "reconnected");
        wait(
            &fleet,
            &mut t,
            &bar,
            bound + plan.backoff_cap * 2,
            Goal {
                what: "devices reconnected",
                want: n,
                hint: "see the broker's log",
            },
            |t| t.connacked.len(),
        )?;
    }
    let time_to_reconnected = back.elapsed();
    lap("back online", &mut phases);
    // 4. Deliveries: every queued command, or the broker's word that it has
    // none left (no progress for a while once all are back).
    let want = n * plan.queued;
    let sessions_lost =
        plan.restart && broker.sessions_on_restart() == hil_broker::SessionsOnRestart::Lost;
    {
        let bar = Bar::new(plan.progress, want, "delivered");
        let mut last = (t.executed.len(), Instant::now());
        let quiet = Duration::from_secs(5);
        loop {
            bar.0.set_position(t.executed.len() as u64);
            if t.executed.len() >= want {
                break;
            }
            if last.1.elapsed() > quiet {
                break;
            }
            t.drain(&fleet, Duration::from_millis(200));
            if t.executed.len() != last.0 {
                last = (t.executed.len(), Instant::now());
            }
        }
    }
    lap("deliveries", &mut phases);
    let delivered = t.executed.len() as u64;
    let twice = t.executed.values().filter(|c| **c > 1).count() as u64;
    let missing = sent.saturating_sub(delivered);
    // mosquitto drops what is queued beyond max_queued_messages for a client:
    // its configuration, not a loss of either party.
    let over_limit = if broker.name() == "mosquitto" {
        (n as u64 * plan.queued.saturating_sub(plan.max_queued as usize) as u64).min(missing)
    } else {
        0
    };
    let missing = missing - over_limit;
    let (lost, lost_in_restart) = if sessions_lost {
        (0, missing)
    } else {
        (missing, 0)
    };
    t.timeline.retain(|(_, at)| *at >= storm_from);
    let epoch = t.timeline.iter().map(|(_, at)| *at).min().unwrap_or(back);
    let unix0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        .saturating_sub(epoch.elapsed().as_millis() as u64);
    let mut slices: BTreeMap<u64, Slice> = BTreeMap::new();
    for (connect, at) in &t.timeline {
        let k = at.saturating_duration_since(epoch).as_millis() as u64 / size::SLICE_MS;
        let ms = (unix0 / size::SLICE_MS + k) * size::SLICE_MS;
        let s = slices.entry(ms).or_insert(Slice {
            ms,
            connects: 0,
            attempts: 0,
        });
        if *connect {
            s.connects += 1;
        } else {
            s.attempts += 1;
        }
    }
    drop(fleet);
    Ok(Report {
        machine: machine(),
        broker: broker.name().into(),
        mqtt: plan.mqtt.to_string(),
        devices: n,
        queued: plan.queued,
        payload: plan.payload,
        restart: plan.restart,
        jitter: !plan.no_jitter,
        time_to_online_s: time_to_online.as_secs_f64(),
        time_to_reconnected_s: time_to_reconnected.as_secs_f64(),
        commands_sent: sent,
        commands_delivered: delivered,
        commands_lost: lost,
        commands_lost_in_restart: lost_in_restart,
        commands_duplicated: t.duplicates + twice,
        commands_executed_twice: twice,
        commands_over_queue_limit: over_limit,
        phases_s: phases,
        runner_rss_per_device_b: runner_rss,
        broker_rss_before_b: broker_rss_before,
        broker_rss_queued_b: broker_rss_queued,
        slices: slices.into_values().collect(),
    })
}

/// `--json` and `merge`: one report per file.
pub fn write_json(r: &Report, path: &PathBuf) -> std::io::Result<()> {
    std::fs::write(
        path,
        serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?,
    )
}

pub fn read_json(path: &Path) -> Result<Report, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a `hil fleet --json` report: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(machine: &str, slices: Vec<Slice>) -> Report {
        Report {
            machine: machine.into(),
            broker: "mosquitto".into(),
            mqtt: "3.1.1".into(),
            devices: 10,
            queued: 5,
            payload: 100,
            restart: true,
            jitter: true,
            time_to_online_s: 1.0,
            time_to_reconnected_s: 2.0,
            commands_sent: 50,
            commands_delivered: 50,
            commands_lost: 0,
            commands_lost_in_restart: 0,
            commands_duplicated: 0,
            commands_executed_twice: 0,
            commands_over_queue_limit: 0,
            phases_s: vec![],
            runner_rss_per_device_b: 9000,
            broker_rss_before_b: 1_000_000,
            broker_rss_queued_b: 1_010_000,
            slices,
        }
    }

    fn sl(ms: u64, connects: u32) -> Slice {
        Slice {
            ms,
            connects,
            attempts: connects,
        }
    }

    #[test]
    fn peak_p99_and_memory_per_message() {
        let mut s: Vec<Slice> = (0..99).map(|i| sl(i * 100, 1)).collect();
        s.push(sl(9_900, 7));
        let r = report("a", s);
        // 100 busy slices: the busiest is the peak, and the 99th of them
        // (nearest rank) is an ordinary one.
        assert_eq!(r.peak_and_p99(), (70.0, 10.0));
        // Fewer than 100: the p99 is the peak.
        let few = report("a", vec![sl(0, 2), sl(100, 5)]);
        assert_eq!(few.peak_and_p99(), (50.0, 50.0));
        assert_eq!(r.broker_bytes_per_queued(), Some(200.0));
        assert!(r.passed());
        assert!(
            r.table().contains("formula M_payload + M_overhead: 140 B"),
            "{}",
            r.table()
        );
    }

    #[test]
    fn merging_adds_devices_and_slices_by_wall_clock() {
        let a = report("a", vec![sl(1000, 3), sl(1100, 1)]);
        let mut b = report("b", vec![sl(1100, 4)]);
        b.commands_lost = 2;
        let m = merge(&[a, b]).expect("two reports");
        assert_eq!(m.devices, 20);
        assert_eq!(m.commands_sent, 100);
        assert_eq!(m.slices, vec![sl(1000, 3), sl(1100, 5)]);
        assert_eq!(m.peak_and_p99().0, 50.0);
        assert!(!m.passed());
        assert_eq!(m.machine, "a + b");
        let json = serde_json::to_string(&m).expect("serialises");
        let back: Report = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back, m);
    }
}
