//! `hil run`: for each scenario a fresh broker and a fresh device, the
//! scenario, its transcripts, and at the end a summary table and JUnit XML.

use crate::dut::{SimDevice, SimSpec};
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

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The `hil` executable: serves rumqttd (`hil broker serve`) and the sim device (`hil sim`).
    pub hil_exe: PathBuf,
    pub broker: BrokerChoice,
    pub proto: Protocol,
    pub scenarios: Vec<String>,
    pub sim_bugs: Vec<String>,
    pub junit: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub progress: bool,
}

#[derive(Debug)]
pub struct ScenarioResult {
    pub name: &'static str,
    pub outcome: Result<(), Failure>,
    pub duration: Duration,
    pub transcript: Transcript,
}

pub struct Summary {
    pub results: Vec<ScenarioResult>,
    pub out_dir: PathBuf,
}

impl Summary {
    pub fn all_passed(&self) -> bool {
        self.results.iter().all(|r| r.outcome.is_ok())
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

/// Runs one scenario on a fresh broker and a fresh device.
pub fn run_one(opts: &RunOptions, s: &Scenario, mac: &str) -> ScenarioResult {
    let t = Transcript::new();
    let started = Instant::now();
    let outcome = (|| {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let rig = |e: String| Failure {
            promise: "test rig",
            detail: e,
        };
        t.runner(format!("start broker {}", opts.broker.name()));
        let mut broker = Broker::start(broker_spec(opts), ip).map_err(|e| rig(e.to_string()))?;
        let state = tempfile_dir().map_err(rig)?;
        // The device always reaches the broker through the fault proxy.
        let proxy =
            crate::faults::FaultProxy::start(ip, broker.addr(opts.proto), &t).map_err(rig)?;
        let spec = SimSpec {
            hil_exe: opts.hil_exe.clone(),
            broker: proxy.addr(),
            mac: mac.into(),
            proto: opts.proto,
            keepalive_s: s.keepalive_s,
            backoff_base_ms: BACKOFF_BASE_MS,
            backoff_cap_ms: BACKOFF_CAP_MS,
            cmd_qos: 1,
            bugs: opts.sim_bugs.clone(),
        };
        t.runner(format!("start sim device mac={mac} mqtt={}", opts.proto));
        let dut = SimDevice::start(&spec, state.path(), &t).map_err(rig)?;
        let mut ctx = Ctx {
            broker: &mut broker,
            proxy: &proxy,
            keepalive_s: s.keepalive_s,
            proto: opts.proto,
            dut,
            t: t.clone(),
            backoff_cap_ms: BACKOFF_CAP_MS,
        };
        let r = (s.run)(&mut ctx);
        ctx.dut.drain();
        r
    })();
    if let Err(f) = &outcome {
        t.runner(format!("FAILED: {f}"));
    }
    ScenarioResult {
        name: s.name,
        outcome,
        duration: started.elapsed(),
        transcript: t,
    }
}

fn tempfile_dir() -> Result<TempDir, String> {
    TempDir::new()
}

/// A state dir removed when the scenario ends.
pub struct TempDir(PathBuf);
impl TempDir {
    fn new() -> Result<TempDir, String> {
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

pub fn run(opts: &RunOptions) -> Result<Summary, String> {
    let selected: Vec<&'static Scenario> = if opts.scenarios.is_empty() {
        scenario::ALL.iter().collect()
    } else {
        opts.scenarios
            .iter()
            .map(|n| {
                scenario::find(n).ok_or_else(|| {
                    let names: Vec<&str> = scenario::ALL.iter().map(|s| s.name).collect();
                    format!("unknown scenario `{n}`; known: {}", names.join(", "))
                })
            })
            .collect::<Result<_, _>>()?
    };
    for bug in &opts.sim_bugs {
        bug.parse::<hil_session::Bug>()
            .map_err(|e| format!("--sim-bug {bug}: {e}"))?;
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
    eprintln!(
        "hil: {} scenario(s) on sim device, broker {}, MQTT {}{}",
        selected.len(),
        opts.broker.name(),
        opts.proto,
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
        let status = if r.outcome.is_ok() { "PASS" } else { "FAIL" };
        eprintln!(
            "  {status} {:<18} {:>6.2}s",
            r.name,
            r.duration.as_secs_f64()
        );
        if let Err(f) = &r.outcome {
            eprintln!("       {f}");
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
    println!("\n{:<18} {:<7} {:>8}  detail", "scenario", "result", "time");
    for r in &s.results {
        let (res, detail) = match &r.outcome {
            Ok(()) => ("pass", String::new()),
            Err(f) => ("FAIL", f.to_string()),
        };
        println!(
            "{:<18} {:<7} {:>7.2}s  {}",
            r.name,
            res,
            r.duration.as_secs_f64(),
            detail
        );
    }
    let failed = s.results.iter().filter(|r| r.outcome.is_err()).count();
    let passed = s.results.len() - failed;
    println!("\ntranscripts: {}", s.out_dir.display());
    println!(
        "verdict: {} ({passed} passed, {failed} failed) in {:.1}s",
        if failed == 0 { "PASS" } else { "FAIL" },
        wall.as_secs_f64()
    );
}

fn write_junit(s: &Summary, opts: &RunOptions, path: &std::path::Path) -> Result<(), String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("hil");
    let mut suite = TestSuite::new(format!("sim/{}/mqtt-{}", opts.broker.name(), opts.proto));
    for r in &s.results {
        let status = match &r.outcome {
            Ok(()) => TestCaseStatus::success(),
            Err(f) => {
                let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                st.set_message(f.to_string());
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
