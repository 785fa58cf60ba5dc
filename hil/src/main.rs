use clap::{Parser, Subcommand};
use hil::dut::{SerialBackend, SerialOptions, WokwiBackend};
use hil::report::{
    FailureEvidence, Fanout, HtmlReporter, JunitReporter, Reporter, TerminalReporter,
    TranscriptWriter,
};
use hil::runner::RunOptions;
use hil::testbed::BrokerChoice;
use hil_broker::MqttVersion;
use hil_session::Bug;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hil",
    version,
    about = "Hardware-in-the-loop tests for MQTT devices: session, outbox, identity, reconnects",
    after_help = "Exit codes of `hil run`: 0 every judged scenario passed (one at least was judged), \
                  1 a device failed a promise, 2 usage error, 3 rig error (broker, port, flash) and \
                  no device failure, 4 nothing was judged (every scenario n/a)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios (all by default) and print a verdict.
    Run {
        /// Device under test: the host-native sim, a board on a serial port, or Wokwi.
        #[arg(long, default_value = "sim", value_parser = ["sim", "firmware-host", "serial", "probe", "wokwi"])]
        dut: String,
        /// Probe backend: the debug probe, VID:PID[:SERIAL] (default: the only one attached).
        #[arg(long)]
        probe: Option<String>,
        /// Serial backend: the board's port (or take it from --rig).
        #[arg(long)]
        port: Option<String>,
        /// Serial backend: a rig file (boards, broker bind address, Wi-Fi from env).
        #[arg(long)]
        rig: Option<PathBuf>,
        /// The board in the rig file.
        #[arg(long)]
        board: Option<String>,
        /// Serial backend: use the firmware already on the board.
        #[arg(long)]
        no_flash: bool,
        /// Firmware ELF to flash.
        #[arg(
            long,
            default_value = "firmware/target/riscv32imc-unknown-none-elf/release/hil-firmware"
        )]
        elf: PathBuf,
        /// Address the broker and fault proxy listen on (default loopback; a rig's LAN address for boards).
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
        /// firmware-host backend: this build of the firmware's application
        /// for the host, as it is. Default: hil builds this repository's
        /// (`cargo build --manifest-path crates/firmware-host/Cargo.toml`).
        #[arg(long, value_name = "PATH")]
        firmware_host: Option<PathBuf>,
        /// Wokwi backend: the wokwi-cli program.
        #[arg(long, default_value = "wokwi-cli")]
        wokwi_cli: PathBuf,
        /// Wokwi backend: the project folder (wokwi.toml, diagram.json).
        #[arg(long, default_value = "fixtures/wokwi")]
        wokwi_project: PathBuf,
        /// Wokwi backend: simulated-time limit per scenario (ms).
        #[arg(long, default_value_t = 120_000)]
        wokwi_timeout_ms: u64,
        /// rumqttd (embedded, default), mosquitto (from PATH), or HOST:PORT of an external broker.
        #[arg(long, default_value = "rumqttd")]
        broker: BrokerChoice,
        /// External broker: a shell command that kills it and starts it again
        /// (readiness is then proven by CONNACK); enables broker_restart and
        /// reconnect_storm on it.
        #[arg(long, value_name = "CMD")]
        broker_restart: Option<String>,
        /// An mqtts:// broker: the CA (PEM) its certificate must chain to.
        #[arg(long, value_name = "FILE")]
        broker_ca: Option<PathBuf>,
        /// An mqtts:// broker: the name its certificate must be for
        /// (default: the URL's host).
        #[arg(long, value_name = "NAME")]
        broker_name: Option<String>,
        /// MQTT version for every scenario. Default: 3.1.1, and 5 for the
        /// scenarios that need it (session and message expiry).
        #[arg(long)]
        mqtt: Option<MqttVersion>,
        /// Run only these scenarios (repeatable); see `hil list`.
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
        /// Make the broker break an MQTT rule through the proxy (raise-qos,
        /// clear-dup, deny-session-present; repeatable): a self-test of the
        /// conformance monitor, whose verdicts must then be `broker`.
        #[arg(long = "inject-broker-fault", value_parser = parse_fault)]
        broker_faults: Vec<hil::testbed::rules::BrokerFault>,
        /// Pass a negative control to the sim device (repeatable): the run should fail.
        #[arg(long = "sim-bug", value_parser = parse_bug)]
        sim_bugs: Vec<Bug>,
        /// Scenarios at once, each with its own broker, proxy and device
        /// (default: 4 per core, as scenarios mostly wait; boards run one at
        /// a time). Output stays in scenario order.
        #[arg(short = 'j', long)]
        jobs: Option<usize>,
        /// Every scenario over TLS: the device is given a test CA made for
        /// the run and connects through the TLS hop, which terminates TLS in
        /// front of the wire tap (so every packet is still judged).
        #[arg(long)]
        tls: bool,
        /// JUnit XML report.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Transcripts and reports go here (default target/hil/<timestamp>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The HTML report (default <out>/report.html). Each run also adds a
        /// line to history.jsonl beside <out>, which the report shows.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Seeded chaos on the sim device for a while, with a delivery ledger:
    /// cuts, blackholes, latency, refusals, broker kill -9, reboots, power
    /// cuts, bursts of commands (QoS 0/1/2) and readings. The same seed
    /// replays the same fault schedule. Exit 0: the ledger is clean for the
    /// device; 1: device anomalies; 3: rig error.
    Soak {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How long: 90s, 10m, 2h.
        #[arg(long, default_value = "60s", value_parser = hil::size::parse_duration)]
        duration: std::time::Duration,
        /// Devices under chaos: the device under test and more sim devices
        /// through the same proxy (1 to 50).
        #[arg(long, default_value_t = 1)]
        devices: u32,
        /// A fault or burst every 50-400 ms instead of 0.3-2.5 s.
        #[arg(long)]
        dense: bool,
        #[arg(long, default_value = "rumqttd")]
        broker: BrokerChoice,
        #[arg(long, default_value = "3.1.1")]
        mqtt: MqttVersion,
        /// Pass a negative control to the sim device (repeatable).
        #[arg(long = "sim-bug", value_parser = parse_bug)]
        sim_bugs: Vec<Bug>,
        /// The transcript and the ledger go here (default target/hil/soak-<seed>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The reference text's calculators: broker queue memory, restart burst,
    /// the device's local buffer, effective QoS, client-ID collisions, and
    /// the reconnection storm (modelled with the session core's backoff).
    Size {
        #[command(subcommand)]
        cmd: SizeCmd,
    },
    /// Thousands of session cores in this process against one broker: all
    /// online, all offline, commands queued for each, optionally the broker
    /// killed while they are away, all back; connects per second at the
    /// network, deliveries, memory beside the reference formulas. Exit 0:
    /// nothing lost that the broker keeps, nothing run twice; 1 otherwise;
    /// 3 the run could not be done.
    #[command(args_conflicts_with_subcommands = true)]
    Fleet {
        #[command(subcommand)]
        cmd: Option<FleetCmd>,
        #[command(flatten)]
        args: FleetArgs,
    },
    /// List the scenarios, with the negative controls each must catch.
    List {
        /// The README's scenario table (Markdown), generated from the registry.
        #[arg(long)]
        markdown: bool,
    },
    /// Check this host: serial ports, probes, wokwi-cli, and a rig's boards, broker address and Wi-Fi.
    Doctor {
        #[arg(long)]
        rig: Option<PathBuf>,
    },
    /// Test brokers.
    Broker {
        #[command(subcommand)]
        cmd: BrokerCmd,
    },
    /// Firmware images.
    Firmware {
        #[command(subcommand)]
        cmd: FirmwareCmd,
    },
    /// The host-native device (same as the hil-sim binary).
    #[command(disable_help_flag = true)]
    Sim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(clap::Args)]
struct FleetArgs {
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    #[arg(long, default_value = "rumqttd")]
    broker: BrokerChoice,
    #[arg(long, default_value = "3.1.1")]
    mqtt: MqttVersion,
    /// Commands (QoS 1) queued for each device while it is offline.
    #[arg(long, default_value_t = 5)]
    queued: usize,
    /// Bytes per command.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// How long the fleet stays offline once its commands are queued.
    #[arg(long, default_value = "1s", value_parser = hil::size::parse_duration)]
    offline: std::time::Duration,
    /// Kill -9 the broker while the fleet is offline; the fleet comes back
    /// while it is down and finds it after --down.
    #[arg(long)]
    restart: bool,
    #[arg(long, default_value = "3s", value_parser = hil::size::parse_duration)]
    down: std::time::Duration,
    /// The control: lockstep backoff, the thundering herd.
    #[arg(long)]
    no_jitter: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// mosquitto's max_queued_messages per client (what it queues beyond is
    /// dropped by its configuration, and counted apart).
    #[arg(long, default_value_t = 1000)]
    max_queued: u32,
    #[arg(long, default_value = "500ms", value_parser = hil::size::parse_duration)]
    backoff_base: std::time::Duration,
    #[arg(long, default_value = "30s", value_parser = hil::size::parse_duration)]
    backoff_cap: std::time::Duration,
    /// Write the report here as JSON (for `hil fleet merge`).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum FleetCmd {
    /// Runs from several machines against one broker, as one report.
    Merge {
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SizeCmd {
    /// Broker memory for offline devices with persistent sessions:
    /// M = N_msgs × (M_payload + M_overhead).
    Queue {
        #[arg(long, default_value_t = 1000)]
        devices: u64,
        /// How long each device is offline (90s, 1h, 1d).
        #[arg(long, default_value = "1h", value_parser = hil::size::parse_duration)]
        offline: std::time::Duration,
        /// Messages a minute to each device.
        #[arg(long, default_value_t = 1)]
        rate: u64,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 100)]
        payload: u64,
        /// Broker metadata per message (the text assumes 40 B).
        #[arg(long, default_value_t = hil_session::sizing::BROKER_OVERHEAD_BYTES)]
        overhead: u64,
        /// An MQTT 5 Message Expiry Interval that bounds the queue.
        #[arg(long, value_parser = hil::size::parse_duration)]
        expiry: Option<std::time::Duration>,
    },
    /// What a broker restart hands out at once: N × Q × M, with 2-3× headroom.
    Burst {
        #[arg(long, default_value_t = 1000)]
        devices: u64,
        /// Messages queued per device.
        #[arg(long, default_value_t = 100)]
        queued: u64,
        /// Bytes per message.
        #[arg(long, default_value_t = 500)]
        message: u64,
    },
    /// The device's own telemetry buffer: bytes an outage needs, and the
    /// outage a budget survives.
    Buffer {
        /// One reading every (60s).
        #[arg(long, default_value = "60s", value_parser = hil::size::parse_duration)]
        period: std::time::Duration,
        #[arg(long, default_value_t = 100)]
        payload: u64,
        /// Per record on the device's store.
        #[arg(long, default_value_t = 40)]
        overhead: u64,
        #[arg(long, default_value = "1h", value_parser = hil::size::parse_duration)]
        outage: std::time::Duration,
        /// RAM or flash set aside for it (24KiB, 1MiB).
        #[arg(long, value_parser = hil::size::parse_bytes)]
        budget: Option<u64>,
    },
    /// Effective QoS for each publisher and subscription QoS.
    Qos,
    /// The chance that random client IDs collide (birthday bound).
    Collision {
        #[arg(long, default_value_t = 10_000)]
        devices: u64,
        /// Symbols per ID.
        #[arg(long, default_value_t = 8)]
        id_len: u32,
        /// Symbols to choose from (16 for hex, 36 for [0-9a-z]).
        #[arg(long, default_value_t = 16)]
        alphabet: u64,
    },
    /// A fleet's reconnects after a broker restart, with and without jitter.
    Storm {
        #[arg(long, default_value_t = 1000)]
        devices: u64,
        #[arg(long, default_value = "500ms", value_parser = hil::size::parse_duration)]
        base: std::time::Duration,
        #[arg(long, default_value = "30s", value_parser = hil::size::parse_duration)]
        cap: std::time::Duration,
        /// How long the broker is down.
        #[arg(long, default_value = "5s", value_parser = hil::size::parse_duration)]
        down: std::time::Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum FirmwareCmd {
    /// Turn the firmware ELF into the app image a board boots (espflash as a
    /// library); prints its size in bytes on the last line.
    Image {
        elf: PathBuf,
        /// Write the image here.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(long, default_value = "esp32c3")]
        chip: String,
        /// Fail when the image is larger than this.
        #[arg(long)]
        max_bytes: Option<u64>,
    },
}

#[derive(Subcommand)]
enum BrokerCmd {
    /// Probe what a broker honours of the session semantics the scenarios assert.
    Check {
        /// rumqttd (embedded), mosquitto (from PATH), or HOST:PORT of a running broker.
        #[arg(long, default_value = "rumqttd")]
        broker: BrokerChoice,
        #[arg(long, default_value = "3.1.1")]
        mqtt: MqttVersion,
    },
    /// Serve embedded rumqttd in this process (the runner starts this as a child).
    Serve {
        #[arg(long, default_value = "127.0.0.1:1883")]
        v4: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:1884")]
        v5: SocketAddr,
        /// Clients admitted at once.
        #[arg(long, default_value_t = hil_broker::rumqttd::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
        /// Listen for MQTT over TLS only: this certificate chain (PEM)...
        #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
        tls_cert: Option<PathBuf>,
        /// ...its key (PEM)...
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// ...and the CA every client's certificate must chain to (a client
        /// certificate is required).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_ca: Option<PathBuf>,
    },
}

// clap reports value-parser errors as strings; the session's own error says what is expected.
fn parse_bug(s: &str) -> Result<Bug, String> {
    s.parse()
        .map_err(|e: hil_session::config::UnknownBug| e.to_string())
}

fn parse_fault(s: &str) -> Result<hil::testbed::rules::BrokerFault, String> {
    s.parse()
}

fn usage(cmd: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("hil {cmd}: error: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Fleet {
            cmd: Some(FleetCmd::Merge { reports }),
            ..
        } => {
            let mut rs = Vec::new();
            for p in &reports {
                match hil::fleet::read_json(p) {
                    Ok(r) => rs.push(r),
                    Err(e) => return usage("fleet merge", e),
                }
            }
            let m = hil::fleet::merge(&rs).expect("clap requires one report at least");
            print!("{}", m.table());
            if m.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Cmd::Fleet { cmd: None, args: a } => {
            if !(1..=100_000).contains(&a.devices) {
                return usage("fleet", "--devices is 1 to 100,000");
            }
            let exe = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => return usage("fleet", format!("cannot find my own executable: {e}")),
            };
            let plan = hil::fleet::Plan {
                devices: a.devices,
                broker: a.broker,
                mqtt: a.mqtt,
                queued: a.queued,
                payload: a.payload,
                offline: a.offline,
                restart: a.restart,
                down: a.down,
                no_jitter: a.no_jitter,
                seed: a.seed,
                max_queued: a.max_queued,
                backoff_base: a.backoff_base,
                backoff_cap: a.backoff_cap.max(a.backoff_base),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            match hil::fleet::run(&plan, &exe) {
                Ok(r) => {
                    print!("{}", r.table());
                    if !a.restart {
                        // No outage to model: wifi-on reconnects at once.
                    } else {
                        let model = hil::size::Storm {
                            devices: a.devices as u64,
                            base: a.backoff_base,
                            cap: plan.backoff_cap,
                            down: a.down,
                            jitter: !a.no_jitter,
                            seed: a.seed,
                        }
                        .model();
                        let (peak, _) = r.peak_and_p99();
                        println!(
                        "model (hil size storm)        peak {:.0} connects/s and {:.0} attempts/s, all back at {:.2} s; measured {:.0} and {:.0}, all back at {:.2} s",
                        model.peak_connects_per_s,
                        model.peak_per_s,
                        model.all_back.as_secs_f64(),
                        peak,
                        r.peak_attempts(),
                        r.time_to_reconnected_s,
                    );
                    }
                    if let Some(p) = &a.json {
                        if let Err(e) = hil::fleet::write_json(&r, p) {
                            eprintln!("hil fleet: cannot write {}: {e}", p.display());
                            return ExitCode::from(3);
                        }
                    }
                    if r.passed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("hil fleet: could not run: {e}");
                    ExitCode::from(3)
                }
            }
        }
        Cmd::Size { cmd } => {
            use hil::size;
            let t = match cmd {
                SizeCmd::Queue {
                    devices,
                    offline,
                    rate,
                    payload,
                    overhead,
                    expiry,
                } => size::Queue {
                    devices,
                    offline,
                    rate_per_min: rate,
                    payload,
                    overhead,
                    expiry,
                }
                .table(),
                SizeCmd::Burst {
                    devices,
                    queued,
                    message,
                } => size::Burst {
                    devices,
                    queued,
                    message,
                }
                .table(),
                SizeCmd::Buffer {
                    period,
                    payload,
                    overhead,
                    outage,
                    budget,
                } => {
                    if period.is_zero() {
                        return usage("size buffer", "--period must be more than 0");
                    }
                    size::Buffer {
                        period,
                        payload,
                        overhead,
                        outage,
                        budget,
                    }
                    .table()
                }
                SizeCmd::Qos => size::qos_table(),
                SizeCmd::Collision {
                    devices,
                    id_len,
                    alphabet,
                } => {
                    if alphabet < 2 {
                        return usage("size collision", "--alphabet must be 2 or more");
                    }
                    size::collision_table(devices, id_len, alphabet)
                }
                SizeCmd::Storm {
                    devices,
                    base,
                    cap,
                    down,
                    seed,
                } => {
                    if !(1..=1_000_000).contains(&devices) {
                        return usage("size storm", "--devices is 1 to 1,000,000");
                    }
                    size::Storm {
                        devices,
                        base,
                        cap,
                        down,
                        jitter: true,
                        seed,
                    }
                    .table()
                }
            };
            print!("{t}");
            ExitCode::SUCCESS
        }
        Cmd::Soak {
            seed,
            duration,
            devices,
            dense,
            broker,
            mqtt,
            sim_bugs,
            out,
        } => {
            if !(1..=50).contains(&devices) {
                return usage(
                    "soak",
                    "--devices is 1 to 50 (sim processes; a bigger fleet needs the in-process fleet engine)",
                );
            }
            let exe = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => return usage("soak", format!("cannot find my own executable: {e}")),
            };
            let mut opts = RunOptions::sim(exe, broker);
            opts.mqtt = mqtt;
            opts.bugs = sim_bugs;
            let plan = hil::soak::Plan {
                seed,
                duration,
                pace: if dense {
                    hil::soak::schedule::Pace::DENSE
                } else {
                    hil::soak::schedule::Pace::NORMAL
                },
                devices,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let out = out.unwrap_or_else(|| PathBuf::from(format!("target/hil/soak-{seed}")));
            let started = std::time::Instant::now();
            let (r, ledger) = hil::soak::soak(&opts, plan, "24:0a:c4:00:50:0a");
            let _ = std::fs::create_dir_all(&out);
            let _ = std::fs::write(out.join("soak.raw.txt"), r.transcript.raw());
            if let Some(l) = &ledger {
                let _ = std::fs::write(out.join("ledger.txt"), l.table());
                print!("{}", l.table());
            }
            println!("transcript: {}", out.join("soak.raw.txt").display());
            // The broker's deviations are its own: grouped by rule, and the
            // device's verdict stands beside them.
            let verdict = match &r.verdict {
                hil::runner::Verdict::Broker { deviations, device } => {
                    let mut rules: Vec<(String, usize)> = Vec::new();
                    for d in deviations {
                        let k = format!("[{}] {}", d.clause, d.rule);
                        match rules.iter_mut().find(|(r, _)| *r == k) {
                            Some((_, n)) => *n += 1,
                            None => rules.push((k, 1)),
                        }
                    }
                    for (k, n) in &rules {
                        println!("broker deviation (the broker's, not the device's): {k}: {n}x");
                    }
                    match device {
                        Some(f) => format!("device: {f}"),
                        None => {
                            "device: the ledger is clean; the broker broke the rules above".into()
                        }
                    }
                }
                v => hil::report::evidence::verdict_text(v),
            };
            println!(
                "soak seed {seed}, {} s on {}: {verdict} in {:.1}s",
                duration.as_secs(),
                opts.broker.name(),
                started.elapsed().as_secs_f64()
            );
            match (&r.verdict, &ledger) {
                (hil::runner::Verdict::Fail(_), _)
                | (
                    hil::runner::Verdict::Broker {
                        device: Some(_), ..
                    },
                    _,
                ) => ExitCode::from(1),
                (hil::runner::Verdict::Error(_), _) | (_, None) => ExitCode::from(3),
                (_, Some(l)) if !l.device_clean() => ExitCode::from(1),
                _ => ExitCode::SUCCESS,
            }
        }
        Cmd::List { markdown: true } => {
            print!("{}", hil::scenarios::markdown_table());
            ExitCode::SUCCESS
        }
        Cmd::List { markdown: false } => {
            let w = hil::scenarios::name_width();
            for s in hil::scenarios::ALL {
                println!("{:<w$} {}", s.name, s.about);
                if !s.advisor.is_empty() {
                    println!(
                        "{:<w$}   covers Device Advisor: {}",
                        "",
                        s.advisor.join(", ")
                    );
                }
                for c in s.catches {
                    println!(
                        "{:<w$}   caught on {}: --sim-bug {} breaks \"{}\"",
                        "",
                        c.place(),
                        c.bug.name(),
                        c.breaks
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Firmware {
            cmd:
                FirmwareCmd::Image {
                    elf,
                    output,
                    chip,
                    max_bytes,
                },
        } => match firmware_image(&elf, output.as_deref(), &chip, max_bytes) {
            Ok(size) => {
                println!("{size}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hil firmware image: error: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Doctor { rig } => {
            let report = hil::doctor::run(rig.as_deref());
            report.print(&mut std::io::stdout());
            if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Sim { args } => {
            let argv = std::iter::once("hil-sim".into()).chain(args);
            ExitCode::from(hil_sim::main_with_args(argv) as u8)
        }
        Cmd::Broker {
            cmd: BrokerCmd::Check { broker, mqtt },
        } => {
            let exe = std::env::current_exe().unwrap_or_else(|_| "hil".into());
            match hil::runner::check_broker(&RunOptions::sim(exe, broker), mqtt) {
                Ok(report) => {
                    print!("{}", report.table());
                    if report.findings.iter().all(|f| f.honoured.is_none()) {
                        eprintln!("hil broker check: error: nothing could be probed");
                        ExitCode::from(3)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("hil broker check: error: {e}");
                    ExitCode::from(3)
                }
            }
        }
        Cmd::Broker {
            cmd:
                BrokerCmd::Serve {
                    v4,
                    v5,
                    max_connections,
                    tls_cert,
                    tls_key,
                    tls_ca,
                },
        } => {
            // rumqttd reports why it drops a connection only through tracing:
            // send its warnings and errors to stderr, which is the broker log.
            let filter = tracing_subscriber::EnvFilter::try_from_env("HIL_BROKER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .init();
            let tls = match (tls_cert, tls_key, tls_ca) {
                (Some(cert), Some(key), Some(ca)) => {
                    Some(hil_broker::rumqttd::ServeTls { cert, key, ca })
                }
                _ => None,
            };
            match hil_broker::rumqttd::serve(v4, v5, max_connections, tls.as_ref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hil broker serve: error: {e}");
                    // A taken port has its own exit code: the parent retries on fresh ports.
                    if matches!(e, hil_broker::rumqttd::ServeError::PortTaken { .. }) {
                        ExitCode::from(hil_broker::EXIT_PORT_TAKEN as u8)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
        Cmd::Run {
            dut,
            probe,
            port,
            rig,
            board,
            no_flash,
            elf,
            bind,
            wokwi_cli,
            wokwi_project,
            wokwi_timeout_ms,
            firmware_host,
            broker,
            broker_restart,
            broker_ca,
            broker_name,
            mqtt,
            scenarios,
            broker_faults,
            sim_bugs,
            jobs,
            tls,
            junit,
            out,
            report,
        } => {
            let broker = match broker.with_tls(broker_ca, broker_name) {
                Ok(b) => b,
                Err(e) => return usage("run", e),
            };
            let broker = match (broker, broker_restart) {
                (BrokerChoice::External { addr, tls, .. }, Some(cmd)) => BrokerChoice::External {
                    addr,
                    restart: Some(cmd),
                    tls,
                },
                (_, Some(_)) => {
                    return usage(
                        "run",
                        "--broker-restart is for an external broker (--broker HOST:PORT)",
                    )
                }
                (b, None) => b,
            };
            let exe = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => return usage("run", format!("cannot find my own executable: {e}")),
            };
            let mut opts = RunOptions::sim(exe, broker);
            match mqtt {
                Some(p) => opts.mqtt = p,
                None => opts.auto_v5 = true,
            }
            opts.scenarios = scenarios;
            opts.bugs = sim_bugs;
            opts.broker_faults = broker_faults;
            opts.tls = tls;
            opts.jobs = match jobs {
                Some(0) => return usage("run", "-j is 1 or more"),
                Some(j) => j,
                // Four per core: a scenario mostly waits (timers, the
                // network): the main job uses 2.3 s of CPU in 27 s at -j 2.
                None => 4 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            };
            if let Some(ip) = bind {
                opts.bind = ip;
            }
            match dut.as_str() {
                "serial" | "probe" => {
                    let (port, mac, chip, wifi, rig_bind, rig_probe, rig_tls) = match (&port, &rig)
                    {
                        (Some(p), _) => (
                            p.clone(),
                            None,
                            "esp32c3".to_string(),
                            None,
                            None,
                            None,
                            false,
                        ),
                        (None, Some(path)) => {
                            let board = hil::bench::rig::Rig::load(path).and_then(|rig| {
                                let b = rig.board(board.as_deref())?.clone();
                                let port = b.resolve_port()?;
                                let wifi = rig.wifi_credentials()?;
                                Ok((
                                    port,
                                    b.mac.clone(),
                                    b.chip.clone(),
                                    wifi,
                                    Some(rig.broker.bind),
                                    b.probe.clone(),
                                    b.tls,
                                ))
                            });
                            match board {
                                Ok(b) => b,
                                Err(e) => return usage("run", e),
                            }
                        }
                        (None, None) => {
                            return usage(
                                "run",
                                format!(
                                    "--dut {dut} needs --port PATH (the console) or --rig FILE"
                                ),
                            )
                        }
                    };
                    if let (Some(ip), None) = (rig_bind, bind) {
                        opts.bind = ip;
                    }
                    let chip = match chip.parse() {
                        Ok(c) => c,
                        Err(_) => return usage("run", format!("unknown chip {chip}")),
                    };
                    // The rig's probe selector, unless one is given.
                    let probe = (dut == "probe").then(|| probe.clone().or(rig_probe));
                    opts.backend = Box::new(SerialBackend(SerialOptions {
                        probe,
                        port,
                        elf: if no_flash { None } else { Some(elf) },
                        chip,
                        wifi,
                        mac,
                        // A TLS run needs a TLS board; a rig may say it has one.
                        tls: tls || rig_tls,
                    }));
                }
                "firmware-host" => {
                    opts.backend = Box::new(match firmware_host {
                        Some(exe) => {
                            hil::dut::FirmwareHostBackend::new(hil::dut::HostFirmware::Given(exe))
                        }
                        None => hil::dut::FirmwareHostBackend::from_this_repo(),
                    });
                }
                "wokwi" => {
                    opts.backend = Box::new(WokwiBackend {
                        cli: wokwi_cli,
                        project: wokwi_project,
                        timeout_ms: wokwi_timeout_ms,
                    });
                }
                _ => {}
            }
            run(&opts, out, junit, report)
        }
    }
}

/// `hil run` with its reporters: terminal, transcripts, JUnit.
fn run(
    opts: &RunOptions,
    out: Option<PathBuf>,
    junit: Option<PathBuf>,
    report: Option<PathBuf>,
) -> ExitCode {
    let out = out.unwrap_or_else(|| {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from("target/hil").join(ts.to_string())
    });
    let mut files = match TranscriptWriter::new(&out) {
        Ok(w) => w,
        Err(e) => return usage("run", e),
    };
    let mut terminal = TerminalReporter::new(true, Some(out.clone()));
    let mut evidence = FailureEvidence::new(&out.join("failed"));
    let mut junit = junit.map(JunitReporter::new);
    let history = out
        .parent()
        .map(|p| p.join("history.jsonl"))
        .unwrap_or_else(|| PathBuf::from("history.jsonl"));
    let mut html = HtmlReporter::new(report.unwrap_or_else(|| out.join("report.html")), history);
    let mut reporters: Vec<&mut dyn Reporter> =
        vec![&mut files, &mut evidence, &mut html, &mut terminal];
    if let Some(j) = junit.as_mut() {
        reporters.push(j);
    }
    let mut fan = Fanout {
        reporters,
        error: None,
    };
    let summary = match hil::runner::run(opts, &mut |e| fan.emit(e)) {
        Ok(s) => s,
        Err(e @ hil::runner::RunError::Prepare(_)) => {
            eprintln!("hil run: error: {e}");
            return ExitCode::from(3);
        }
        Err(e) => return usage("run", e),
    };
    if let Some(e) = fan.error {
        eprintln!("hil run: error: {e}");
        return ExitCode::from(3);
    }
    println!("report: {}", html.path().display());
    ExitCode::from(summary.exit_code())
}
fn firmware_image(
    elf: &std::path::Path,
    output: Option<&std::path::Path>,
    chip: &str,
    max: Option<u64>,
) -> Result<usize, Box<dyn std::error::Error>> {
    let chip: espflash::target::Chip = chip
        .parse()
        .map_err(|_| format!("unknown chip `{chip}` (e.g. esp32c3)"))?;
    let image = hil::bench::firmware::app_image(elf, chip)?;
    let size = image.bytes.len();
    if let Some(out) = output {
        std::fs::write(out, &image.bytes).map_err(|source| hil::bench::FlashError::Write {
            path: out.display().to_string(),
            source,
        })?;
    }
    println!(
        "app image for {chip}: {size} bytes ({:.1}% of the {}-byte factory partition), sha256 {}",
        100.0 * size as f64 / image.partition_size.max(1) as f64,
        image.partition_size,
        hil::bench::firmware::digest(&image.bytes)
    );
    if let Some(max) = max {
        if size as u64 > max {
            return Err(hil::bench::FlashError::OverBudget { size, max }.into());
        }
    }
    Ok(size)
}
