//! `hil run`: for each scenario a fresh broker, a fault proxy and a device
//! (a fresh sim, or the board reset and provisioned with the proxy's
//! address), put together as a [`Testbed`]; the scenario decides.
//!
//! The runner never prints: it emits [`RunEvent`]s, and reporters (the
//! terminal table, transcripts, JUnit) render them (nextest-runner's shape).

use crate::dut::{
    Backend, Capability, DeviceTls, DutError, LoginMode, Provision, SimBackend, TlsMode,
};
use crate::scenarios::{self, Failure, Need, Scenario, Stop};
use crate::testbed::monitor::{self, Deviation};
use crate::testbed::pki::{TestPki, SERVER_NAME};
use crate::testbed::rules::BrokerFault;
use crate::testbed::tls::{TlsHop, TlsHopError};
use crate::testbed::{BrokerChoice, FaultProxy, Parts, RigError, Testbed};
use crate::transcript::{Entry, Transcript};
use hil_broker::{Broker, MqttVersion};
use hil_session::Bug;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// What to run, on what.
pub struct RunOptions {
    /// The `hil` executable: serves rumqttd (`hil broker serve`) and the sim device (`hil sim`).
    pub hil_exe: PathBuf,
    pub backend: Box<dyn Backend>,
    pub broker: BrokerChoice,
    pub mqtt: MqttVersion,
    /// Run the scenarios that need MQTT 5 on MQTT 5 (`hil run` without --mqtt).
    pub auto_v5: bool,
    /// Where the broker and fault proxy listen: loopback for the sim, the
    /// rig's LAN address for boards.
    pub bind: IpAddr,
    pub scenarios: Vec<String>,
    /// Negative controls given to the device.
    pub bugs: Vec<Bug>,
    /// Rules the proxy makes the broker break (a self-test of the
    /// conformance monitor: the verdict must be `broker`, naming the rule).
    pub broker_faults: Vec<BrokerFault>,
    /// Scenarios at once (`hil run -j`), each with its own broker, proxy and
    /// device on a loopback address of its own. A backend that is one board
    /// runs one at a time whatever this says.
    pub jobs: usize,
    /// Every scenario over TLS (`hil run --tls`): the device is given the
    /// run's test CA and connects through the TLS hop.
    pub tls: bool,
}

impl RunOptions {
    /// The sim device on `broker`, 3.1.1, loopback.
    pub fn sim(hil_exe: PathBuf, broker: BrokerChoice) -> RunOptions {
        RunOptions {
            backend: Box::new(SimBackend {
                hil_exe: hil_exe.clone(),
            }),
            hil_exe,
            broker,
            mqtt: MqttVersion::V3_1_1,
            auto_v5: false,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            scenarios: vec![],
            bugs: vec![],
            broker_faults: vec![],
            jobs: 1,
            tls: false,
        }
    }

    /// How many scenarios this run runs at once.
    pub fn concurrency(&self) -> usize {
        if self.backend.concurrent() {
            self.jobs.max(1)
        } else {
            1
        }
    }
}

/// What a scenario concluded. "Could not run" is never "failed".
#[derive(Debug)]
pub enum Verdict {
    Pass,
    /// The device broke a promise.
    Fail(Failure),
    /// The backend, protocol or broker cannot serve the scenario: never counted as passed.
    NotApplicable(String),
    /// The broker broke an MQTT rule the scenario relies on (named by its
    /// clause): the device could not be judged. What the device did, if the
    /// scenario also failed, is kept beside it.
    Broker {
        deviations: Vec<Deviation>,
        device: Option<Failure>,
    },
    /// The rig failed (broker, proxy, port, flash): the device was not judged.
    Error(RigError),
}

#[derive(Debug)]
pub struct ScenarioResult {
    pub name: &'static str,
    pub verdict: Verdict,
    pub duration: Duration,
    pub mqtt: MqttVersion,
    pub transcript: Transcript,
}

impl ScenarioResult {
    pub fn failure(&self) -> Option<&Failure> {
        match &self.verdict {
            Verdict::Fail(f) => Some(f),
            _ => None,
        }
    }
}

/// The run as announced before its first scenario.
#[derive(Clone, Debug)]
pub struct RunPlan {
    pub scenarios: Vec<&'static str>,
    pub backend: &'static str,
    pub broker: &'static str,
    pub mqtt: MqttVersion,
    pub auto_v5: bool,
    pub bugs: Vec<Bug>,
}

#[derive(Clone, Debug)]
pub struct Summary {
    pub results: Vec<Arc<ScenarioResult>>,
    pub wall: Duration,
}

impl Summary {
    fn count(&self, f: fn(&Verdict) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.verdict)).count()
    }
    pub fn passed(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Pass))
    }
    pub fn failed(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Fail(_)))
    }
    pub fn not_applicable(&self) -> usize {
        self.count(|v| matches!(v, Verdict::NotApplicable(_)))
    }
    pub fn errors(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Error(_)))
    }
    pub fn broker(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Broker { .. }))
    }

    /// 0 every judged scenario passed and one at least was judged; 1 a device
    /// failure; 3 a rig error and no device failure; 4 nothing was judged.
    pub fn exit_code(&self) -> u8 {
        if self.failed() > 0 {
            1
        } else if self.errors() > 0 {
            3
        } else if self.passed() == 0 {
            4
        } else {
            0
        }
    }
}

/// What the runner tells its reporters, in order.
#[derive(Clone, Debug)]
pub enum RunEvent {
    Started(RunPlan),
    ScenarioStarted {
        index: usize,
        name: &'static str,
    },
    /// A console line, wire packet, cloud observation or runner step, as it happens.
    Line {
        index: usize,
        entry: Entry,
    },
    ScenarioFinished {
        index: usize,
        result: Arc<ScenarioResult>,
    },
    Finished(Summary),
}

/// The run could not start: nothing was judged.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("unknown scenario `{name}`; known: {known}")]
    UnknownScenario { name: String, known: String },
    #[error("--sim-bug: {0}")]
    NoNegativeControls(String),
    #[error("preparing the device: {0}")]
    Prepare(#[source] DutError),
}

pub fn select(names: &[String]) -> Result<Vec<&'static Scenario>, RunError> {
    if names.is_empty() {
        return Ok(scenarios::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            scenarios::find(n).ok_or_else(|| RunError::UnknownScenario {
                name: n.clone(),
                known: scenarios::ALL
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        })
        .collect()
}

/// Runs the selected scenarios one after another; `emit` sees every event.
pub fn run(opts: &RunOptions, emit: &mut dyn FnMut(&RunEvent)) -> Result<Summary, RunError> {
    let selected = select(&opts.scenarios)?;
    if !opts.bugs.is_empty()
        && !opts
            .backend
            .capabilities()
            .contains(&Capability::NegativeControls)
    {
        return Err(RunError::NoNegativeControls(
            opts.backend.why_not(Capability::NegativeControls),
        ));
    }
    opts.backend.prepare().map_err(RunError::Prepare)?;
    emit(&RunEvent::Started(RunPlan {
        scenarios: selected.iter().map(|s| s.name).collect(),
        backend: opts.backend.name(),
        broker: opts.broker.name(),
        mqtt: opts.mqtt,
        auto_v5: opts.auto_v5,
        bugs: opts.bugs.clone(),
    }));
    let started = Instant::now();
    let pre = match preflight(opts, &selected) {
        Ok(p) => p,
        Err(e) => {
            // One error for the run, at once: not a wait per scenario.
            let t = Transcript::new();
            t.runner(format!("RIG ERROR: {e}"));
            let r = Arc::new(ScenarioResult {
                name: "broker-preflight",
                verdict: Verdict::Error(e),
                duration: started.elapsed(),
                mqtt: opts.mqtt,
                transcript: t,
            });
            emit(&RunEvent::ScenarioStarted {
                index: 0,
                name: r.name,
            });
            emit(&RunEvent::ScenarioFinished {
                index: 0,
                result: r.clone(),
            });
            let summary = Summary {
                results: vec![r],
                wall: started.elapsed(),
            };
            emit(&RunEvent::Finished(summary.clone()));
            return Ok(summary);
        }
    };
    let pre = &pre;
    let jobs = opts.concurrency().min(selected.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<RunEvent>();
    std::thread::scope(|scope| {
        // The scenarios run on `jobs` workers, each taking the next scenario
        // not yet taken; events come back here, so reporters run on the
        // caller's thread and lines from device and tap threads reach them
        // as they happen.
        for _ in 0..jobs {
            let tx = tx.clone();
            let (selected, next) = (&selected, &next);
            scope.spawn(move || loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(s) = selected.get(index) else { break };
                let _ = tx.send(RunEvent::ScenarioStarted {
                    index,
                    name: s.name,
                });
                let lines = tx.clone();
                let sink: crate::transcript::Sink = Arc::new(move |entry: &Entry| {
                    let _ = lines.send(RunEvent::Line {
                        index,
                        entry: entry.clone(),
                    });
                });
                let mac = format!("24:0a:c4:00:10:{:02x}", index + 1);
                let r = Arc::new(run_scenario(
                    opts,
                    pre,
                    s,
                    &mac,
                    Transcript::with_sink(sink),
                ));
                let _ = tx.send(RunEvent::ScenarioFinished { index, result: r });
            });
        }
        drop(tx);
        // Reporters see the run as if it were sequential: the lowest
        // unfinished scenario's events as they come, the others' held until
        // it is their turn. Output stays in scenario order whatever `jobs`.
        let mut order = InOrder::new(selected.len());
        let mut results = Vec::new();
        // Not until the channel closes: each result's transcript keeps a
        // sender (its sink) alive. The run is over when every scenario is.
        for event in rx.iter() {
            for e in order.push(event) {
                if let RunEvent::ScenarioFinished { result, .. } = &e {
                    results.push(result.clone());
                }
                emit(&e);
            }
            if results.len() == selected.len() {
                break;
            }
        }
        let summary = Summary {
            results,
            wall: started.elapsed(),
        };
        emit(&RunEvent::Finished(summary.clone()));
        Ok(summary)
    })
}

/// Puts the events of scenarios run at once back in scenario order.
struct InOrder {
    /// The scenario whose events pass straight through.
    current: usize,
    held: Vec<Vec<RunEvent>>,
    finished: Vec<bool>,
}

impl InOrder {
    fn new(n: usize) -> Self {
        InOrder {
            current: 0,
            held: (0..n).map(|_| Vec::new()).collect(),
            finished: vec![false; n],
        }
    }

    fn index(e: &RunEvent) -> Option<usize> {
        match e {
            RunEvent::ScenarioStarted { index, .. }
            | RunEvent::Line { index, .. }
            | RunEvent::ScenarioFinished { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// The events that may be reported now, in order.
    fn push(&mut self, e: RunEvent) -> Vec<RunEvent> {
        let Some(i) = Self::index(&e).filter(|i| *i < self.held.len()) else {
            return vec![e];
        };
        if matches!(e, RunEvent::ScenarioFinished { .. }) {
            self.finished[i] = true;
        }
        if i != self.current {
            self.held[i].push(e);
            return Vec::new();
        }
        let mut out = vec![e];
        // The current one finished: release the next ones' held events, up
        // to the first that is still running.
        while self.current < self.held.len() && self.finished[self.current] {
            self.current += 1;
            if let Some(h) = self.held.get_mut(self.current) {
                out.append(h);
            }
        }
        out
    }
}

/// Runs one scenario on a fresh broker and a fresh (or freshly reset) device.
pub fn run_one(opts: &RunOptions, s: &Scenario, mac: &str) -> ScenarioResult {
    let t = Transcript::new();
    match preflight(opts, &[s]) {
        Ok(pre) => run_scenario(opts, &pre, s, mac, t),
        Err(e) => ScenarioResult {
            name: s.name,
            verdict: Verdict::Error(e),
            duration: Duration::ZERO,
            mqtt: opts.mqtt,
            transcript: t,
        },
    }
}

/// The MQTT version a scenario runs on in this run.
fn version_for(opts: &RunOptions, s: &Scenario) -> MqttVersion {
    if opts.auto_v5 && s.needs.contains(&Need::Mqtt5) {
        MqttVersion::V5
    } else {
        opts.mqtt
    }
}

/// What was learnt of a broker the runner did not start, once per run.
#[derive(Default)]
struct Preflight {
    /// The broker refused an MQTT 5 CONNECT: why.
    v5_refused: Option<String>,
}

/// How long an external broker has to answer the first CONNECT.
const PREFLIGHT: Duration = Duration::from_secs(3);

/// An external broker must answer before anything runs: unreachable is one
/// rig error for the run; a refused MQTT 5 makes the v5 scenarios n/a.
fn preflight(opts: &RunOptions, selected: &[&Scenario]) -> Result<Preflight, RigError> {
    let Some(addr) = opts.broker.external_addr() else {
        return Ok(Preflight::default());
    };
    let mut versions: Vec<MqttVersion> = selected.iter().map(|s| version_for(opts, s)).collect();
    versions.sort_by_key(|v| v.level());
    versions.dedup();
    let mut pre = Preflight::default();
    // An mqtts:// broker is probed through an origin of its own, as every
    // scenario's clients will reach it.
    let origin = match opts.broker.external_tls() {
        Some(t) => Some(
            hil_broker::TlsOrigin::start(std::net::IpAddr::from([127, 0, 0, 1]), addr, t)
                .map_err(|e| RigError::Broker(e.into()))?,
        ),
        None => None,
    };
    let tls_why = || origin.as_ref().and_then(|o| o.last_error());
    let probe = origin.as_ref().map_or(addr, |o| o.addr());
    for v in versions {
        // A broker that is up answers an MQTT 5 CONNECT at once, or never will.
        let within = if v == MqttVersion::V5 {
            Duration::from_secs(1)
        } else {
            PREFLIGHT
        };
        match hil_broker::client::wait_ready(probe, v, Instant::now() + within) {
            Ok(()) => {}
            Err(hil_broker::ClientError::NotReady { last, .. })
                if v == MqttVersion::V5
                    && !matches!(*last, hil_broker::ClientError::Unreachable { .. }) =>
            {
                pre.v5_refused = Some(format!("the broker refused an MQTT 5 CONNECT: {last}"));
            }
            Err(source) => {
                return Err(match tls_why() {
                    Some(why) => RigError::BrokerTls { addr, why },
                    None => RigError::BrokerUnreachable { addr, source },
                })
            }
        }
    }
    Ok(pre)
}

fn run_scenario(
    opts: &RunOptions,
    pre: &Preflight,
    s: &Scenario,
    mac: &str,
    t: Transcript,
) -> ScenarioResult {
    let mqtt = version_for(opts, s);
    let started = Instant::now();
    let refused = (mqtt == MqttVersion::V5)
        .then(|| pre.v5_refused.clone())
        .flatten();
    let verdict = match refused.or_else(|| unmet(opts, s, mqtt)) {
        Some(reason) => Verdict::NotApplicable(reason),
        None => judge(opts, s, mac, mqtt, &t),
    };
    match &verdict {
        Verdict::Pass => {}
        Verdict::Fail(f) => t.runner(format!("FAILED: {f}")),
        Verdict::NotApplicable(why) => t.runner(format!("not applicable: {why}")),
        Verdict::Error(e) => t.runner(format!("RIG ERROR: {e}")),
        Verdict::Broker { deviations, .. } => {
            for d in deviations {
                t.runner(format!("BROKER BROKE A RULE: {d}"));
            }
        }
    }
    if mqtt != opts.mqtt {
        t.runner("this scenario needs MQTT 5: run on MQTT 5");
    }
    ScenarioResult {
        name: s.name,
        verdict,
        duration: started.elapsed(),
        mqtt,
        transcript: t,
    }
}

/// What this run's backend, broker and protocol can give, minus what they cannot.
fn capabilities(opts: &RunOptions) -> Vec<Capability> {
    opts.backend
        .capabilities()
        .iter()
        .copied()
        .filter(|c| *c != Capability::BrokerRestart || opts.broker.can_restart())
        .collect()
}

/// Why the run cannot serve the scenario, before starting anything.
fn unmet(opts: &RunOptions, s: &Scenario, mqtt: MqttVersion) -> Option<String> {
    let caps = capabilities(opts);
    let tls = opts.tls || s.device.tls != TlsMode::Off;
    let need_tls =
        (tls && !caps.contains(&Capability::Tls)).then(|| opts.backend.why_not(Capability::Tls));
    s.needs
        .iter()
        .find_map(|n| match n {
            Need::Can(c) if !caps.contains(c) => Some(
                if *c == Capability::BrokerRestart && opts.backend.capabilities().contains(c) {
                    "no restart command for the external broker: pass --broker-restart 'CMD'"
                        .to_string()
                } else {
                    opts.backend.why_not(*c)
                },
            ),
            _ => n.unmet_protocol(mqtt),
        })
        .or(need_tls)
}

fn judge(opts: &RunOptions, s: &Scenario, mac: &str, mqtt: MqttVersion, t: &Transcript) -> Verdict {
    match set_up(opts, s, mac, mqtt, t) {
        Err(e) => Verdict::Error(e),
        Ok(SetUp::NotApplicable(reason)) => Verdict::NotApplicable(reason),
        Ok(SetUp::Ready(mut tb)) => {
            let r = (s.run)(&mut tb);
            // Stop gracefully: a QoS 2 handshake in flight finishes first
            // (bounded), so the next scenario or run finds no half-done one.
            let open = tb.wire().open_qos2();
            if open > 0 {
                let left = tb
                    .wire()
                    .settle_qos2(std::time::Instant::now() + std::time::Duration::from_secs(2));
                t.note(format!(
                    "teardown: waited for {open} QoS 2 handshake(s) in flight, {left} still open after 2 s"
                ));
            }
            tb.dut.drain();
            if r.is_err() {
                // What the broker said about it: often the reason for a dropped connection.
                let log = tb.broker_log(20);
                if !log.is_empty() {
                    t.note(format!("broker log, last lines:\n{log}"));
                }
            }
            // The broker is judged by the wire too: a run on a broker that
            // broke a rule the scenario relies on judges nothing of the device.
            let deviations = monitor::check_until(&tb.wire().records(), std::time::Instant::now());
            match (r, deviations.is_empty()) {
                (Ok(()), true) => Verdict::Pass,
                (Err(Stop::Fail(f)), true) => Verdict::Fail(f),
                (Err(Stop::Rig(e)), true) => Verdict::Error(e),
                (Err(Stop::Fail(f)), false) => Verdict::Broker {
                    deviations,
                    device: Some(f),
                },
                (_, false) => Verdict::Broker {
                    deviations,
                    device: None,
                },
            }
        }
    }
}

/// The user name of the broker's one login.
const LOGIN_USER: &str = "device";

/// Why rumqttd 0.20 cannot serve a login scenario, from its source
/// (`link/remote.rs`, `handle_auth`).
pub const LOGIN_NA: &str = "rumqttd 0.20 answers a bad login by closing the connection without a CONNACK (MQTT 3.1.1 section 3.1.4: a server that fails a login SHOULD send a CONNACK with a non-zero code, which is not a MUST, so no deviation), so there is no refusal code for the device to report, and its logins apply to every client of a listener, the runner's cloud side included";

/// Why rumqttd 0.20 cannot serve a topic-ACL scenario, from its source
/// (`ConnectionSettings`: a timeout, sizes, inflight, logins; no topics).
pub const ACL_NA: &str = "rumqttd 0.20 has no topic ACLs: its connection settings carry logins (user name and password) but no per-topic permissions, so it cannot refuse a publish outside a device's own topics";

/// A password made for one run: the process's randomly keyed hasher over
/// the clock (no RNG crate for one value; it only has to be unguessable
/// from the transcript, which never shows it).
fn random_password(what: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(what.as_bytes());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let a = h.finish();
    h.write_u64(a);
    format!("pw{:016x}{:016x}", a, h.finish())
}

/// What setting a scenario up gave.
enum SetUp {
    Ready(Box<Testbed>),
    /// The broker lacks a semantic the scenario needs: why.
    NotApplicable(String),
}

/// Broker, semantic probes, proxy, device: the testbed, or why the scenario
/// is not applicable on this broker.
fn set_up(
    opts: &RunOptions,
    s: &Scenario,
    mac: &str,
    mqtt: MqttVersion,
    t: &Transcript,
) -> Result<SetUp, RigError> {
    let ip = opts.backend.listen_ip(opts.bind);
    // A broker that checks logins: mosquitto with a password file. rumqttd
    // 0.20 cannot serve it (see `LOGIN_NA`); an external broker's logins
    // are its own.
    let acl = s.needs.contains(&Need::BrokerAcl);
    let login = acl || s.needs.contains(&Need::BrokerLogin);
    if login {
        match opts.broker {
            BrokerChoice::Mosquitto => {}
            BrokerChoice::Rumqttd if acl => return Ok(SetUp::NotApplicable(ACL_NA.into())),
            BrokerChoice::Rumqttd => return Ok(SetUp::NotApplicable(LOGIN_NA.into())),
            BrokerChoice::External { .. } => {
                return Ok(SetUp::NotApplicable(
                    "an external broker's logins are its own: the runner cannot give it one".into(),
                ))
            }
        }
    }
    // TLS: the run's test PKI (the hop's certificates, and the broker's own
    // when it listens for TLS), made before the broker that may need it.
    let pki = if opts.tls || s.device.tls != TlsMode::Off {
        let dir = tempfile::Builder::new()
            .prefix("hil-pki-")
            .tempdir()
            .map_err(RigError::StateDir)?;
        let pki = TestPki::make(dir.path(), ip).map_err(TlsHopError::from)?;
        Some((pki, dir))
    } else {
        None
    };
    // `--tls` on a broker the runner starts: the broker itself listens for
    // TLS only, and requires a client certificate; the runner's side
    // (proxy, cloud, probes) reaches it through a TLS origin presenting the
    // runner's own.
    let mut tuning = hil_broker::Tuning::default();
    let starts_broker = matches!(opts.broker, BrokerChoice::Mosquitto | BrokerChoice::Rumqttd);
    if let (true, true, Some((pki, _))) = (opts.tls, starts_broker, &pki) {
        let files = pki.broker_files().map_err(TlsHopError::from)?;
        let (runner, _) = pki
            .client_files("runner", "hil-runner")
            .map_err(TlsHopError::from)?;
        tuning.tls = Some(hil_broker::ListenerTls {
            cert_file: files.cert_file,
            key_file: files.key_file,
            require_client_cert: true,
            upstream: hil_broker::UpstreamTls {
                ca_file: pki.ca_file.clone(),
                server_name: SERVER_NAME.into(),
                client: Some((runner.cert_file, runner.key_file)),
            },
        });
        t.runner(format!(
            "broker: TLS listener only, client certificate required; the runner reaches it as {SERVER_NAME} with a certificate of the test CA"
        ));
    }
    if opts.broker.external_tls().is_some() {
        t.runner("broker: mqtts, reached over TLS with the given CA");
    }
    t.runner(format!("start broker {}", opts.broker.name()));
    let broker_password = login.then(|| random_password("broker"));
    let mut broker = match &broker_password {
        Some(pw) => {
            t.redact(pw);
            t.runner(format!(
                "broker: one login, user {LOGIN_USER} (password redacted)"
            ));
            if acl {
                t.runner(format!(
                    "broker: topic ACL: a logged-in client publishes only under {p}/<its client id>/ and reads only its own cmd",
                    p = hil_session::Topics::DEFAULT_PREFIX
                ));
            }
            Broker::start_tuned(
                opts.broker.spec(&opts.hil_exe),
                ip,
                hil_broker::Tuning {
                    login: Some((LOGIN_USER.into(), pw.clone())),
                    acl_prefix: acl.then(|| hil_session::Topics::DEFAULT_PREFIX.into()),
                    ..tuning
                },
            )?
        }
        None => Broker::start_tuned(opts.broker.spec(&opts.hil_exe), ip, tuning)?,
    };
    // A scenario whose assertions need a semantic the broker lacks is not
    // applicable on it: probe just those, now, on this very broker.
    for need in s.needs {
        if let Need::Semantic(sem) = need {
            let f = hil_broker::check::probe(&mut broker, mqtt, *sem);
            // Details vary run to run: raw transcript only.
            t.note(format!(
                "broker check: {}: {:?} ({})",
                sem.name(),
                f.honoured,
                f.detail
            ));
            if f.honoured == Some(false) {
                return Ok(SetUp::NotApplicable(format!(
                    "{} does not honour: {} ({})",
                    broker.name(),
                    sem.name(),
                    f.detail
                )));
            }
        }
    }
    // A broker the runner did not start may hold the device's session from an
    // earlier run: a clean-session connect with its client ID ends it, so
    // leftovers cannot answer for the device.
    if opts.broker.external_addr().is_some() {
        if let Some(id) = opts.backend.expected_client_id(mac) {
            let mut o = hil_broker::client::ConnectOptions::new(&id);
            o.clean = true;
            o.session_expiry_s = Some(0);
            match hil_broker::Client::connect(broker.addr(mqtt), mqtt, &o) {
                Ok(c) => {
                    c.disconnect();
                    t.runner(format!("broker: cleared any session left for {id}"));
                }
                Err(source) => {
                    return Err(RigError::BrokerUnreachable {
                        addr: broker.addr(mqtt),
                        source,
                    })
                }
            }
        }
    }
    let state = tempfile::Builder::new()
        .prefix("hil-state-")
        .tempdir()
        .map_err(RigError::StateDir)?;
    // The device always reaches the broker through the fault proxy.
    let proxy = FaultProxy::start(opts.backend.device_ip(ip), broker.addr(mqtt), t)?;
    let faults: Vec<_> = opts
        .broker_faults
        .iter()
        .map(|f| proxy.install(f.rule()))
        .collect();
    let hold = |on: bool| proxy.refuse(on);
    // TLS: the run's test PKI, and the hop the device reaches the proxy by.
    // Mutual TLS: a client certificate issued to the device (for the client
    // ID it is expected to use), which the hop then requires.
    let mut client_cert = None;
    let tls_hop = match pki {
        Some((pki, dir)) => {
            let mut issued = None;
            if s.device.tls == TlsMode::Mutual {
                let cn = opts
                    .backend
                    .expected_client_id(mac)
                    .unwrap_or_else(|| "device".into());
                let (files, der) = pki.client_files("device", &cn).map_err(TlsHopError::from)?;
                client_cert = Some(files);
                issued = Some((der, cn));
            }
            let hop = TlsHop::start(
                opts.backend.device_ip(ip),
                proxy.addr(),
                pki,
                dir,
                proxy.wire().clone(),
                issued,
            )?;
            t.runner(format!(
                "TLS: test CA made for this run; the device connects through the TLS hop (server name {SERVER_NAME}{})",
                if client_cert.is_some() { ", client certificate required" } else { "" }
            ));
            Some(hop)
        }
        None => None,
    };
    let device_tls = match (&tls_hop, s.device.tls) {
        (Some(hop), TlsMode::On | TlsMode::Off | TlsMode::Mutual) => Some(DeviceTls {
            ca_file: &hop.pki.ca_file,
            server_name: SERVER_NAME,
            client: client_cert
                .as_ref()
                .map(|c| (c.cert_file.as_path(), c.key_file.as_path())),
        }),
        _ => None,
    };
    // The device's password, in a file of its own (never on a command line).
    // Inside the state dir (the device's flash records are by name, so it
    // is not one), removed with it when the scenario ends.
    let password = match (s.device.login, &broker_password) {
        (LoginMode::WrongPassword, Some(_)) => Some(random_password("device")),
        (LoginMode::Good, Some(pw)) => Some(pw.clone()),
        _ => None,
    };
    let password_file = match password {
        Some(pw) => {
            t.redact(&pw);
            let file = state.path().join("mqtt.password");
            std::fs::write(&file, &pw).map_err(RigError::StateDir)?;
            Some(file)
        }
        None => None,
    };
    let p = Provision {
        login: password_file.as_deref().map(|f| (LOGIN_USER, f)),
        broker: tls_hop.as_ref().map_or(proxy.addr(), |h| h.addr()),
        plain: proxy.addr(),
        tls: device_tls,
        mac,
        mqtt,
        spec: s.device,
        bugs: &opts.bugs,
        state_dir: state.path(),
        transcript: t,
        hold_connections: &hold,
    };
    let dut = opts.backend.bring_up(&p)?;
    let caps = capabilities(opts);
    let fleet = caps
        .contains(&Capability::Fleet)
        .then(|| opts.backend.fleet(&p))
        .flatten();
    let expected_client_id = opts.backend.expected_client_id(mac);
    if let Some(id) = &expected_client_id {
        t.focus_on(id);
    }
    let configured = caps.contains(&Capability::ScenarioConfig);
    Ok(SetUp::Ready(Box::new(Testbed::new(Parts {
        dut,
        broker,
        proxy,
        transcript: t.clone(),
        mqtt,
        fleet,
        backend: opts.backend.name(),
        caps,
        mac: mac.into(),
        expected_client_id,
        backoff_cap_ms: configured.then_some(s.device.backoff_cap_ms),
        backoff_base_ms: configured.then_some(s.device.backoff_base_ms),
        keepalive_s: s.device.keepalive_s,
        state,
        rules: faults,
        tls: tls_hop,
    }))))
}

/// Starts the chosen broker and probes its semantics (`hil broker check`).
pub fn check_broker(
    opts: &RunOptions,
    mqtt: MqttVersion,
) -> Result<hil_broker::check::Report, hil_broker::BrokerError> {
    let mut broker = Broker::start(
        opts.broker.spec(&opts.hil_exe),
        opts.backend.listen_ip(opts.bind),
    )?;
    Ok(hil_broker::check::check(&mut broker, mqtt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(index: usize) -> RunEvent {
        RunEvent::ScenarioStarted { index, name: "x" }
    }
    fn line(index: usize) -> RunEvent {
        RunEvent::Line {
            index,
            entry: Entry {
                at: Duration::ZERO,
                source: crate::transcript::Source::Runner,
                text: format!("line of {index}"),
            },
        }
    }
    fn finished(index: usize) -> RunEvent {
        RunEvent::ScenarioFinished {
            index,
            result: Arc::new(ScenarioResult {
                name: "x",
                verdict: Verdict::Pass,
                duration: Duration::ZERO,
                mqtt: MqttVersion::V3_1_1,
                transcript: Transcript::new(),
            }),
        }
    }
    fn key(e: &RunEvent) -> String {
        match e {
            RunEvent::ScenarioStarted { index, .. } => format!("S{index}"),
            RunEvent::Line { index, .. } => format!("L{index}"),
            RunEvent::ScenarioFinished { index, .. } => format!("F{index}"),
            _ => "?".into(),
        }
    }

    #[test]
    fn concurrent_events_come_out_in_scenario_order() {
        let mut o = InOrder::new(3);
        let mut out = Vec::new();
        // Three workers interleaved; scenario 2 ends before 1, 1 before 0.
        for e in [
            started(0),
            started(1),
            line(1),
            started(2),
            line(0),
            line(2),
            finished(2),
            finished(1),
            line(0),
            finished(0),
        ] {
            out.extend(o.push(e).iter().map(key));
        }
        assert_eq!(
            out.join(" "),
            "S0 L0 L0 F0 S1 L1 F1 S2 L2 F2",
            "as a sequential run reports it"
        );
        // The current scenario's lines pass at once, not at its end.
        let mut o = InOrder::new(2);
        assert_eq!(o.push(started(0)).len(), 1);
        assert_eq!(o.push(line(0)).len(), 1);
        assert!(o.push(started(1)).is_empty());
    }
}
