//! `hil run`: for each scenario a fresh broker, a fault proxy and a device
//! (a fresh sim, or the board reset and provisioned with the proxy's address),
//! the scenario, its transcripts; at the end a summary table and JUnit XML.

use crate::dut::{Dut, SimSpec};
use crate::scenario::{self, Ctx, Failure, Scenario};
use crate::transcript::Transcript;
use hil_broker::{Broker, BrokerSpec, Protocol};
use indicatif::{ProgressBar, ProgressStyle};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub enum BrokerChoice {
    Rumqttd,
    Mosquitto,
    External(SocketAddr),
}

impl BrokerChoice {
    pub fn parse(s: &str) -> Result<BrokerChoice, String> {
        match s {
            "rumqttd" => Ok(BrokerChoice::Rumqttd),
            "mosquitto" => Ok(BrokerChoice::Mosquitto),
            other => other.parse().map(BrokerChoice::External).map_err(|_| {
                format!("--broker {other}: expected rumqttd, mosquitto, or HOST:PORT of a running broker (e.g. 127.0.0.1:1883)")
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            BrokerChoice::Rumqttd => "rumqttd",
            BrokerChoice::Mosquitto => "mosquitto",
            BrokerChoice::External(_) => "external",
        }
    }
}

/// Which device, and how to reach it.
#[derive(Clone, Debug)]
pub enum DutChoice {
    Sim,
    Serial(SerialOptions),
    Wokwi {
        cli: PathBuf,
        project: PathBuf,
        timeout_ms: u64,
    },
}

#[derive(Clone, Debug)]
pub struct SerialOptions {
    pub port: String,
    /// Flash through a debug probe (probe-rs, selector VID:PID[:SERIAL] or the
    /// only one attached) instead of the serial ROM bootloader.
    pub probe: Option<Option<String>>,
    /// Flash this ELF first (None with --no-flash).
    pub elf: Option<PathBuf>,
    pub chip: espflash::target::Chip,
    pub wifi: Option<(String, String)>,
    /// Expected MAC (from the rig file), to check the client ID.
    pub mac: Option<String>,
}

impl DutChoice {
    pub fn name(&self) -> &'static str {
        match self {
            DutChoice::Sim => "sim",
            DutChoice::Serial(SerialOptions { probe: Some(_), .. }) => "probe",
            DutChoice::Serial(_) => "serial",
            DutChoice::Wokwi { .. } => "wokwi",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The `hil` executable: serves rumqttd (`hil broker serve`) and the sim device (`hil sim`).
    pub hil_exe: PathBuf,
    pub dut: DutChoice,
    pub broker: BrokerChoice,
    pub proto: Protocol,
    /// Run the scenarios that need MQTT 5 on MQTT 5 (`hil run` without --mqtt).
    pub auto_v5: bool,
    /// Where the broker and fault proxy listen: loopback for the sim, the
    /// rig's LAN address for boards.
    pub bind: IpAddr,
    pub scenarios: Vec<String>,
    pub sim_bugs: Vec<String>,
    pub junit: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub progress: bool,
}

impl RunOptions {
    /// Where this scenario's broker and proxy listen. On 127.0.0.1 each
    /// scenario gets a loopback address of its own (see
    /// [`hil_broker::private_loopback`]), so parallel runs never race for a
    /// port, not even for the one a killed broker must bind again. Wokwi keeps
    /// the given address: its gateway forwards to the host's 127.0.0.1.
    fn listen_ip(&self) -> IpAddr {
        if self.bind == IpAddr::V4(Ipv4Addr::LOCALHOST)
            && !matches!(self.dut, DutChoice::Wokwi { .. })
        {
            hil_broker::private_loopback()
        } else {
            self.bind
        }
    }

    /// The sim device on embedded rumqttd, 3.1.1, loopback.
    pub fn sim(hil_exe: PathBuf, broker: BrokerChoice) -> RunOptions {
        RunOptions {
            hil_exe,
            dut: DutChoice::Sim,
            broker,
            proto: Protocol::V3_1_1,
            auto_v5: false,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            scenarios: vec![],
            sim_bugs: vec![],
            junit: None,
            out: None,
            progress: false,
        }
    }
}

#[derive(Debug)]
pub enum Verdict {
    Pass,
    Fail(Failure),
    /// The backend cannot serve the scenario: never counted as passed.
    NotApplicable(String),
}

#[derive(Debug)]
pub struct ScenarioResult {
    pub name: &'static str,
    pub verdict: Verdict,
    pub duration: Duration,
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

pub struct Summary {
    pub results: Vec<ScenarioResult>,
    pub out_dir: PathBuf,
}

impl Summary {
    pub fn all_passed(&self) -> bool {
        self.results
            .iter()
            .all(|r| !matches!(r.verdict, Verdict::Fail(_)))
    }
}

impl std::fmt::Debug for Transcript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw())
    }
}

const BACKOFF_BASE_MS: u64 = 200;
const BACKOFF_CAP_MS: u64 = 2_000;

fn broker_spec(opts: &RunOptions) -> BrokerSpec {
    match &opts.broker {
        BrokerChoice::Rumqttd => BrokerSpec::Rumqttd {
            program: opts.hil_exe.clone(),
            args: vec!["broker".into(), "serve".into()],
        },
        BrokerChoice::Mosquitto => BrokerSpec::Mosquitto { persistence: true },
        BrokerChoice::External(addr) => BrokerSpec::External {
            addr: *addr,
            restart: None,
        },
    }
}

/// Starts the chosen broker and probes its semantics (`hil broker check`).
pub fn check_broker(
    opts: &RunOptions,
    proto: Protocol,
) -> Result<hil_broker::check::Report, String> {
    let mut broker =
        Broker::start(broker_spec(opts), opts.listen_ip()).map_err(|e| e.to_string())?;
    Ok(hil_broker::check::check(&mut broker, proto))
}

/// The client ID a MAC gives, for checking a board against its rig entry.
fn expected_id(mac: &str) -> Option<String> {
    mac.parse::<hil_session::Mac>()
        .ok()
        .map(|m| hil_session::client_id("esp32c3", &m))
}

/// The sim device a scenario runs: its flags from the scenario and the run.
fn sim_spec(opts: &RunOptions, s: &Scenario, mac: &str, proxy: SocketAddr) -> SimSpec {
    SimSpec {
        hil_exe: opts.hil_exe.clone(),
        broker: proxy,
        mac: mac.into(),
        proto: opts.proto,
        keepalive_s: s.keepalive_s,
        backoff_base_ms: BACKOFF_BASE_MS,
        backoff_cap_ms: BACKOFF_CAP_MS,
        cmd_qos: 1,
        session_expiry_s: s.session_expiry_s,
        outbox_capacity: s.outbox_capacity,
        bugs: opts.sim_bugs.clone(),
    }
}

/// Brings the device up for one scenario, connected through `proxy`.
fn bring_up(
    opts: &RunOptions,
    s: &Scenario,
    mac: &str,
    fault_proxy: &crate::faults::FaultProxy,
    state: &std::path::Path,
    t: &Transcript,
) -> Result<Dut, String> {
    let proxy = fault_proxy.addr();
    match &opts.dut {
        DutChoice::Sim => {
            let spec = sim_spec(opts, s, mac, proxy);
            t.runner(format!("start sim device mac={mac} mqtt={}", opts.proto));
            Dut::start_sim(&spec, state, t)
        }
        DutChoice::Serial(o) => {
            t.runner(format!("open serial device {}", o.port));
            let mut dut = Dut::open_serial(&o.port, t)?;
            // Provision first (kept in the board's flash), then reset: the
            // board boots straight into this scenario's broker.
            let mut line = format!("!config broker={proxy} mqtt={}", opts.proto);
            if let Some((ssid, pass)) = &o.wifi {
                line.push_str(&format!(
                    " wifi.ssid={} wifi.pass={}",
                    quote(ssid),
                    quote(pass)
                ));
            }
            // No connection until the board has rebooted: a session the board
            // opened between provisioning and reset (CONNACK, then reset before
            // its SUBACK) would come back as session_present=1 without the
            // subscription.
            fault_proxy.refuse(true);
            dut.command(&line)
                .map_err(|e| format!("provisioning failed: {}", e.0))?;
            dut.reset()?;
            let booted = dut
                .expect("boot after reset", Duration::from_secs(15), |e| {
                    matches!(e, hil_session::Event::Boot { .. })
                })
                .map_err(|e| format!("the board did not boot after reset: {}", e.0));
            fault_proxy.refuse(false);
            booted?;
            Ok(dut)
        }
        DutChoice::Wokwi {
            cli,
            project,
            timeout_ms,
        } => Dut::start_wokwi(cli, project, *timeout_ms, t),
    }
}

fn quote(v: &str) -> String {
    let mut out = String::new();
    hil_session::console::push_value(&mut out, v);
    out
}

/// Runs one scenario on a fresh broker and a fresh (or freshly reset) device.
pub fn run_one(opts: &RunOptions, s: &Scenario, mac: &str) -> ScenarioResult {
    if opts.auto_v5 && opts.proto != Protocol::V5 && s.needs.contains(&scenario::Need::Mqtt5) {
        let mut o = opts.clone();
        o.proto = Protocol::V5;
        o.auto_v5 = false;
        let r = run_one(&o, s, mac);
        r.transcript
            .runner("this scenario needs MQTT 5: run on MQTT 5");
        return r;
    }
    let t = Transcript::new();
    let started = Instant::now();
    let caps = match &opts.dut {
        DutChoice::Sim => crate::dut::SIM_CAPS,
        DutChoice::Serial(_) => crate::dut::SERIAL_CAPS,
        DutChoice::Wokwi { .. } => crate::dut::WOKWI_CAPS,
    };
    let mut caps = caps;
    if matches!(opts.broker, BrokerChoice::External(_)) {
        caps.broker_restart = false;
    }
    if let Some(reason) = s
        .needs
        .iter()
        .find_map(|n| n.unmet(&caps, opts.dut.name(), opts.proto))
    {
        t.runner(format!("not applicable: {reason}"));
        return ScenarioResult {
            name: s.name,
            verdict: Verdict::NotApplicable(reason),
            duration: started.elapsed(),
            transcript: t,
        };
    }
    let outcome = (|| {
        let ip = opts.listen_ip();
        let rig = |e: String| Failure {
            promise: "test rig",
            detail: e,
        };
        t.runner(format!("start broker {}", opts.broker.name()));
        let mut broker = Broker::start(broker_spec(opts), ip).map_err(|e| rig(e.to_string()))?;
        // A scenario whose assertions need a semantic the broker lacks is not
        // applicable on it: probe just those, now, on this very broker.
        for need in s.needs {
            if let scenario::Need::Semantic(sem) = need {
                let f = hil_broker::check::probe(&mut broker, opts.proto, *sem);
                // Details vary run to run: raw transcript only.
                t.note(format!(
                    "broker check: {}: {:?} ({})",
                    sem.name(),
                    f.honoured,
                    f.detail
                ));
                if f.honoured == Some(false) {
                    return Ok(Some(format!(
                        "{} does not honour: {} ({})",
                        broker.name(),
                        sem.name(),
                        f.detail
                    )));
                }
            }
        }
        let state = TempDir::new().map_err(rig)?;
        // The device always reaches the broker through the fault proxy.
        let proxy =
            crate::faults::FaultProxy::start(ip, broker.addr(opts.proto), &t).map_err(rig)?;
        let dut = bring_up(opts, s, mac, &proxy, state.path(), &t).map_err(rig)?;
        let factory = matches!(opts.dut, DutChoice::Sim).then(|| scenario::SimFactory {
            spec: sim_spec(opts, s, mac, proxy.addr()),
            main_state: state.path().to_path_buf(),
            transcript: t.clone(),
        });
        let expected_client_id = match &opts.dut {
            DutChoice::Serial(o) => o.mac.as_deref().and_then(expected_id),
            DutChoice::Sim => expected_id(mac),
            DutChoice::Wokwi { .. } => None,
        };
        if let Some(id) = &expected_client_id {
            t.focus_on(id);
        }
        let mut ctx = Ctx {
            broker: &mut broker,
            proxy: &proxy,
            keepalive_s: s.keepalive_s,
            proto: opts.proto,
            dut,
            t: t.clone(),
            backoff_cap_ms: matches!(opts.dut, DutChoice::Sim).then_some(BACKOFF_CAP_MS),
            expected_client_id,
            nonce: nonce(),
            sims: factory,
        };
        let r = (s.run)(&mut ctx);
        ctx.dut.drain();
        if r.is_err() {
            // What the broker said about it: often the reason for a dropped connection.
            let log = ctx.broker.log_lines(20);
            if !log.is_empty() {
                ctx.t.note(format!("broker log, last lines:\n{log}"));
            }
        }
        r.map(|()| None)
    })();
    let verdict = match outcome {
        Ok(None) => Verdict::Pass,
        Ok(Some(reason)) => {
            t.runner(format!("not applicable: {reason}"));
            Verdict::NotApplicable(reason)
        }
        Err(f) => {
            t.runner(format!("FAILED: {f}"));
            Verdict::Fail(f)
        }
    };
    ScenarioResult {
        name: s.name,
        verdict,
        duration: started.elapsed(),
        transcript: t,
    }
}

/// `n` + 8 hex digits, different for every scenario run.
fn nonce() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "n{:08x}",
        t ^ std::process::id().rotate_left(16) ^ n.wrapping_mul(0x9e37_79b9)
    )
}

/// A state dir removed when the scenario ends.
pub struct TempDir(PathBuf);
impl TempDir {
    pub fn new() -> Result<TempDir, String> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("hil-state-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
        Ok(TempDir(p))
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn select(names: &[String]) -> Result<Vec<&'static Scenario>, String> {
    if names.is_empty() {
        return Ok(scenario::ALL.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            scenario::find(n).ok_or_else(|| {
                let names: Vec<&str> = scenario::ALL.iter().map(|s| s.name).collect();
                format!("unknown scenario `{n}`; known: {}", names.join(", "))
            })
        })
        .collect()
}

pub fn run(opts: &RunOptions) -> Result<Summary, String> {
    let selected = select(&opts.scenarios)?;
    for bug in &opts.sim_bugs {
        bug.parse::<hil_session::Bug>()
            .map_err(|e| format!("--sim-bug {bug}: {e}"))?;
    }
    if !opts.sim_bugs.is_empty() && !matches!(opts.dut, DutChoice::Sim) {
        return Err("--sim-bug only applies to --dut sim".into());
    }
    let out_dir = opts.out.clone().unwrap_or_else(|| {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from("target/hil").join(ts.to_string())
    });
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    if let DutChoice::Serial(SerialOptions {
        port,
        elf: Some(elf),
        chip,
        ..
    }) = &opts.dut
    {
        eprintln!(
            "hil: flashing {} to {port} (unchanged regions are skipped)",
            elf.display()
        );
        crate::flash::flash(port, elf, *chip)?;
    }
    eprintln!(
        "hil: {} scenario(s) on {} device, broker {}, MQTT {}{}{}",
        selected.len(),
        opts.dut.name(),
        opts.broker.name(),
        opts.proto,
        if opts.auto_v5 {
            " (5 where a scenario needs it)"
        } else {
            ""
        },
        if opts.sim_bugs.is_empty() {
            String::new()
        } else {
            format!(", negative controls: {}", opts.sim_bugs.join(","))
        }
    );
    let started = Instant::now();
    let mut results = Vec::new();
    for (i, s) in selected.iter().enumerate() {
        let bar = if opts.progress {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").unwrap());
        bar.set_message(format!("[{}/{}] {}", i + 1, selected.len(), s.name));
        bar.enable_steady_tick(Duration::from_millis(100));
        let mac = format!("24:0a:c4:00:10:{:02x}", i + 1);
        let r = run_one(opts, s, &mac);
        bar.finish_and_clear();
        let status = match &r.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail(_) => "FAIL",
            Verdict::NotApplicable(_) => "N/A ",
        };
        eprintln!(
            "  {status} {:<w$} {:>6.2}s",
            r.name,
            r.duration.as_secs_f64(),
            w = scenario::name_width()
        );
        match &r.verdict {
            Verdict::Fail(f) => eprintln!("       {f}"),
            Verdict::NotApplicable(why) => eprintln!("       not applicable: {why}"),
            Verdict::Pass => {}
        }
        let base = out_dir.join(r.name);
        std::fs::write(base.with_extension("raw.txt"), r.transcript.raw())
            .map_err(|e| e.to_string())?;
        std::fs::write(base.with_extension("txt"), r.transcript.normalized())
            .map_err(|e| e.to_string())?;
        results.push(r);
    }
    let summary = Summary {
        results,
        out_dir: out_dir.clone(),
    };
    print_table(&summary, started.elapsed());
    if let Some(path) = &opts.junit {
        write_junit(&summary, opts, path)?;
    }
    Ok(summary)
}

fn print_table(s: &Summary, wall: Duration) {
    let w = scenario::name_width();
    println!("\n{:<w$} {:<7} {:>8}  detail", "scenario", "result", "time");
    for r in &s.results {
        let (res, detail) = match &r.verdict {
            Verdict::Pass => ("pass", String::new()),
            Verdict::Fail(f) => ("FAIL", f.to_string()),
            Verdict::NotApplicable(why) => ("n/a", why.clone()),
        };
        let line = format!(
            "{:<w$} {:<7} {:>7.2}s  {}",
            r.name,
            res,
            r.duration.as_secs_f64(),
            detail
        );
        println!("{}", line.trim_end());
    }
    let count = |f: fn(&Verdict) -> bool| s.results.iter().filter(|r| f(&r.verdict)).count();
    let failed = count(|v| matches!(v, Verdict::Fail(_)));
    let passed = count(|v| matches!(v, Verdict::Pass));
    let na = count(|v| matches!(v, Verdict::NotApplicable(_)));
    println!("\ntranscripts: {}", s.out_dir.display());
    println!(
        "verdict: {} ({passed} passed, {failed} failed, {na} not applicable) in {:.1}s",
        if failed == 0 { "PASS" } else { "FAIL" },
        wall.as_secs_f64()
    );
}

fn write_junit(s: &Summary, opts: &RunOptions, path: &std::path::Path) -> Result<(), String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("hil");
    let mut suite = TestSuite::new(format!(
        "{}/{}/mqtt-{}",
        opts.dut.name(),
        opts.broker.name(),
        opts.proto
    ));
    for r in &s.results {
        let status = match &r.verdict {
            Verdict::Pass => TestCaseStatus::success(),
            Verdict::Fail(f) => {
                let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                st.set_message(f.to_string());
                st
            }
            Verdict::NotApplicable(why) => {
                let mut st = TestCaseStatus::skipped();
                st.set_message(format!("not applicable: {why}"));
                st
            }
        };
        let mut tc = TestCase::new(r.name, status);
        tc.set_time(r.duration);
        tc.set_system_out(r.transcript.raw());
        suite.add_test_case(tc);
    }
    report.add_test_suite(suite);
    let xml = report.to_string().map_err(|e| format!("JUnit: {e}"))?;
    std::fs::write(path, xml).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
