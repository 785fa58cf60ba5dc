//! `hil-sim`: the device's session logic (hil-session) on std.
//!
//! - console: stdin/stdout, or a pseudo-terminal whose path is printed first,
//!   so a runner opens it with `serialport` exactly as it would /dev/ttyUSB0;
//! - flash: one file per record under `--state-dir`, replaced atomically;
//! - Wi-Fi: a switch; off drops the TCP connection abruptly (RST) and refuses
//!   to connect until it is on again;
//! - `!reboot`: the device restarts from its flash state (same process, same console).
//!
//! One thread owns the device; console and socket readers feed it through a
//! channel, and the wait for the next message is bounded by the device's own
//! `poll_timeout`.

mod flash;
pub mod fleet;
mod link;
pub mod tls;

use clap::Parser;
use flash::FileFlash;
use hil_session::console::LineSplitter;
use hil_session::{Bug, Bugs, Config, Device, Event, Mac, MqttVersion, Output, RandomSource};
use link::{Link, LinkMsg};
use rand::{rngs::SmallRng, RngCore, SeedableRng};
use serialport::SerialPort;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "hil-sim",
    version,
    about = "Host-native MQTT device: the session logic of the ESP32 firmware on std"
)]
pub struct Args {
    /// Broker address, HOST:PORT.
    #[arg(long)]
    pub broker: String,
    /// Factory MAC (12 hex digits, separators optional); the client ID derives from it.
    #[arg(long)]
    pub mac: String,
    /// Where the device's flash lives (created if missing).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// stdio: commands on stdin, lines on stdout. pty: a pseudo-terminal, path printed first.
    #[arg(long, default_value = "stdio", value_parser = ["stdio", "pty"])]
    pub console: String,
    /// MQTT protocol version.
    #[arg(long, default_value = "3.1.1", value_parser = parse_version)]
    pub mqtt: MqttVersion,
    #[arg(long, default_value = "devices")]
    pub prefix: String,
    /// Where readings go instead of PREFIX/CLIENT_ID/telemetry (a shared
    /// ingest topic, as some clouds ask for).
    #[arg(long, value_name = "TOPIC")]
    pub telemetry_topic: Option<String>,
    /// Chip name used in the client ID.
    #[arg(long, default_value = "esp32c3")]
    pub chip: String,
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..))]
    pub keepalive: u16,
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub backoff_base_ms: u64,
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub backoff_cap_ms: u64,
    /// QoS of the command subscription.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub cmd_qos: u8,
    /// MQTT 5 Session Expiry Interval (seconds).
    #[arg(long, default_value_t = 3600)]
    pub session_expiry: u32,
    /// Readings kept while offline.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub outbox_capacity: u64,
    /// Give up on a connection whose CONNACK has not come by then.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connack_timeout_ms: u64,
    /// Give up on a connection that leaves a telemetry PUBLISH or the
    /// SUBSCRIBE unacknowledged this long (resent on the next connection).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ack_timeout_ms: u64,
    /// Seed of the jitter's random source (default: from the MAC and the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Use the broker kept in flash by `!config broker=...` even when
    /// --broker is given. Default: the flag wins, and the boot says so.
    #[arg(long)]
    pub prefer_flash_settings: bool,
    /// Negative control: break one promise (repeatable).
    #[arg(long = "bug", value_parser = parse_bug)]
    pub bugs: Vec<Bug>,
    /// TLS: the CA certificate (PEM) the broker's must chain to. Without it
    /// the device speaks plaintext MQTT (unless --require-tls).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// TLS: the name the broker's certificate must be for (default: the
    /// host of --broker).
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
    /// Mutual TLS: the device's certificate chain (PEM), presented when the
    /// broker asks for one.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Mutual TLS: the key of --tls-cert (PEM). A file, never a flag value.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A production device: without --tls-ca it refuses to connect at all,
    /// rather than fall back to plaintext.
    #[arg(long)]
    pub require_tls: bool,
    /// MQTT User Name.
    #[arg(long, requires = "password_file")]
    pub username: Option<String>,
    /// A file holding the MQTT Password (its first line). A file, not a
    /// flag: a command line is readable by every user of the machine.
    #[arg(long, value_name = "FILE", requires = "username")]
    pub password_file: Option<PathBuf>,
}

// clap's value parsers report a String; the version's own error says what is expected.
fn parse_version(s: &str) -> Result<MqttVersion, String> {
    s.parse()
        .map_err(|e: hil_session::config::ParseVersionError| e.to_string())
}

fn parse_bug(s: &str) -> Result<Bug, String> {
    s.parse()
        .map_err(|e: hil_session::config::UnknownBug| e.to_string())
}

impl Args {
    /// The session core's settings these flags give a device with `mac`:
    /// the one place flags become a [`Config`], shared by the sim process
    /// and the in-process fleet engine's devices built like it.
    pub fn session_config(&self, mac: Mac) -> Config {
        let mut cfg = Config::new(&self.chip, mac);
        cfg.prefix = self.prefix.clone();
        cfg.telemetry_topic = self.telemetry_topic.clone();
        cfg.mqtt = self.mqtt;
        cfg.keepalive_s = self.keepalive;
        cfg.backoff_base_ms = self.backoff_base_ms;
        cfg.backoff_cap_ms = self.backoff_cap_ms.max(self.backoff_base_ms);
        cfg.cmd_qos = self.cmd_qos;
        cfg.session_expiry_s = self.session_expiry;
        cfg.outbox_capacity = self.outbox_capacity as usize;
        cfg.connack_timeout_ms = self.connack_timeout_ms;
        cfg.ack_timeout_ms = self.ack_timeout_ms;
        cfg.bugs = self
            .bugs
            .iter()
            .fold(Bugs::default(), |b, bug| b.with(*bug));
        cfg
    }

    /// The command line that parses back into these arguments: how a runner
    /// starts this device (`hil sim ARGV...` or `hil-sim ARGV...`). One type
    /// writes and reads the flags, so the two sides cannot drift apart.
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: OsString| {
            v.push(format!("--{name}").into());
            v.push(value);
        };
        flag("broker", self.broker.clone().into());
        flag("mac", self.mac.clone().into());
        flag("state-dir", self.state_dir.clone().into_os_string());
        flag("console", self.console.clone().into());
        flag("mqtt", self.mqtt.to_string().into());
        flag("prefix", self.prefix.clone().into());
        if let Some(t) = &self.telemetry_topic {
            flag("telemetry-topic", t.into());
        }
        flag("chip", self.chip.clone().into());
        flag("keepalive", self.keepalive.to_string().into());
        flag("backoff-base-ms", self.backoff_base_ms.to_string().into());
        flag("backoff-cap-ms", self.backoff_cap_ms.to_string().into());
        flag("cmd-qos", self.cmd_qos.to_string().into());
        flag("session-expiry", self.session_expiry.to_string().into());
        flag("outbox-capacity", self.outbox_capacity.to_string().into());
        flag(
            "connack-timeout-ms",
            self.connack_timeout_ms.to_string().into(),
        );
        flag("ack-timeout-ms", self.ack_timeout_ms.to_string().into());
        if let Some(seed) = self.seed {
            flag("seed", seed.to_string().into());
        }
        for b in &self.bugs {
            flag("bug", b.name().into());
        }
        if self.prefer_flash_settings {
            v.push("--prefer-flash-settings".into());
        }
        if let Some(ca) = &self.tls_ca {
            v.push("--tls-ca".into());
            v.push(ca.clone().into_os_string());
        }
        if let Some(name) = &self.tls_name {
            v.push("--tls-name".into());
            v.push(name.into());
        }
        if let Some(c) = &self.tls_cert {
            v.push("--tls-cert".into());
            v.push(c.clone().into_os_string());
        }
        if let Some(k) = &self.tls_key {
            v.push("--tls-key".into());
            v.push(k.clone().into_os_string());
        }
        if self.require_tls {
            v.push("--require-tls".into());
        }
        if let Some(u) = &self.username {
            v.push("--username".into());
            v.push(u.into());
        }
        if let Some(p) = &self.password_file {
            v.push("--password-file".into());
            v.push(p.clone().into_os_string());
        }
        v
    }

    /// The defaults of every optional flag, for the given required ones.
    pub fn new(broker: String, mac: String, state_dir: PathBuf) -> Args {
        let argv: [OsString; 7] = [
            "hil-sim".into(),
            "--broker".into(),
            broker.into(),
            "--mac".into(),
            mac.into(),
            "--state-dir".into(),
            state_dir.into_os_string(),
        ];
        Args::try_parse_from(argv).expect("the required flags alone always parse")
    }
}

/// Why the sim device could not start or had to stop; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("--broker {broker}: {source} (expected HOST:PORT, e.g. 127.0.0.1:1883)")]
    BadBroker {
        broker: String,
        #[source]
        source: io::Error,
    },
    #[error("--broker {0}: resolves to no address")]
    NoAddress(String),
    #[error(
        "--broker {0}: port 0 is not a broker's port (expected HOST:PORT, e.g. 127.0.0.1:1883)"
    )]
    PortZero(String),
    #[error("--prefix {prefix}: {reason}")]
    BadPrefix {
        prefix: String,
        reason: &'static str,
    },
    #[error("--mac {mac}: {reason}")]
    BadMac { mac: String, reason: String },
    #[error("--tls-ca: {0}")]
    Tls(#[from] tls::TlsSetupError),
    #[error("--password-file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state dir {path} is not writable: {source}")]
    NotWritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("flash write to {path} failed: {source}")]
    FlashWrite {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open a pseudo-terminal: {0}")]
    Pty(String),
    #[error("unknown setting `{0}` (wifi.ssid, wifi.pass, broker, mqtt)")]
    UnknownSetting(String),
    #[error("cannot store settings: {0}")]
    Settings(#[source] io::Error),
}

impl SimError {
    /// A mistake in the command line (exit 2), not a failure while running (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            SimError::BadBroker { .. }
                | SimError::NoAddress(_)
                | SimError::PortZero(_)
                | SimError::BadPrefix { .. }
                | SimError::BadMac { .. }
        )
    }
}

/// A topic prefix must be a plain topic: the device publishes under it.
fn check_prefix(prefix: &str) -> Result<(), SimError> {
    let bad = |reason| {
        Err(SimError::BadPrefix {
            prefix: prefix.into(),
            reason,
        })
    };
    if prefix.contains(['+', '#']) {
        return bad("wildcards (+, #) are not allowed in a topic the device publishes to");
    }
    if prefix.starts_with('$') {
        return bad("topics starting with $ are reserved for the broker");
    }
    if prefix.split('/').any(str::is_empty) {
        return bad("empty topic level (leading, trailing or double /)");
    }
    if prefix.contains('\0') {
        return bad("NUL is not allowed in a topic");
    }
    Ok(())
}

struct Rng(SmallRng);
impl RandomSource for Rng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
}

/// Everything the main loop waits for.
pub(crate) enum Msg {
    Console(Vec<u8>),
    ConsoleClosed,
    Link(LinkMsg),
}

/// Parses the arguments and runs; returns the exit code (2 for usage errors,
/// 1 for fatal runtime errors).
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hil-sim: error: {e}");
            if e.is_usage() {
                2
            } else {
                1
            }
        }
    }
}

fn resolve(broker: &str) -> Result<SocketAddr, SimError> {
    let mut addrs = broker
        .to_socket_addrs()
        .map_err(|source| SimError::BadBroker {
            broker: broker.into(),
            source,
        })?;
    let addr = addrs
        .next()
        .ok_or_else(|| SimError::NoAddress(broker.into()))?;
    if addr.port() == 0 {
        return Err(SimError::PortZero(broker.into()));
    }
    Ok(addr)
}

/// How the link may connect: TLS with the provisioned CA, plaintext, or
/// (a production device without a CA) not at all.
fn security(args: &Args) -> Result<link::Security, SimError> {
    if args.bugs.contains(&Bug::NoTls) {
        return Ok(link::Security::Plain);
    }
    Ok(match &args.tls_ca {
        Some(ca) => {
            let host = args
                .broker
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']))
                .unwrap_or(&args.broker);
            let name = args.tls_name.as_deref().unwrap_or(host);
            let checks = tls::Checks {
                verify: !args.bugs.contains(&Bug::NoVerify),
                max_chain_bytes: args
                    .bugs
                    .contains(&Bug::SmallTlsBuffer)
                    .then_some(tls::SMALL_TLS_BUFFER),
                client: match (&args.tls_cert, &args.tls_key) {
                    (Some(c), Some(k)) if !args.bugs.contains(&Bug::NoClientCert) => {
                        Some((c.clone(), k.clone()))
                    }
                    _ => None,
                },
            };
            let settings = tls::settings(ca, name, checks)?;
            link::Security::Tls {
                settings,
                plaintext_fallback: args.bugs.contains(&Bug::PlaintextFallback),
            }
        }
        None if args.require_tls => link::Security::Refuse(
            "production device: no CA provisioned, plaintext MQTT refused".into(),
        ),
        None => link::Security::Plain,
    })
}

pub fn run(args: Args) -> Result<(), SimError> {
    let mac: Mac = args
        .mac
        .parse()
        .map_err(|e: hil_session::identity::MacError| SimError::BadMac {
            mac: args.mac.clone(),
            reason: e.to_string(),
        })?;
    let broker = resolve(&args.broker)?;
    check_prefix(&args.prefix)?;
    let flash = FileFlash::open(&args.state_dir)?;

    let mut cfg = args.session_config(mac);
    if let (Some(username), Some(file)) = (&args.username, &args.password_file) {
        let text = std::fs::read_to_string(file).map_err(|source| SimError::PasswordFile {
            path: file.clone(),
            source,
        })?;
        cfg.credentials = Some(hil_session::Credentials {
            username: username.clone(),
            password: hil_session::Secret::new(text.lines().next().unwrap_or("")),
        });
    }

    let (tx, rx) = mpsc::channel::<Msg>();
    let mut out: Box<dyn Write + Send> = match args.console.as_str() {
        "pty" => open_pty_console(tx.clone())?,
        _ => {
            spawn_reader(Box::new(io::stdin()), tx.clone());
            Box::new(io::stdout())
        }
    };

    let seed = args.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ u64::from_be_bytes([
            0, 0, mac.0[0], mac.0[1], mac.0[2], mac.0[3], mac.0[4], mac.0[5],
        ])
    });
    let mut rng = SmallRng::seed_from_u64(seed);
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    // A broker provisioned over the console (`!config broker=...`) is kept in
    // flash like the firmware's settings. The rule: --broker on the command
    // line wins (it is what the user just typed), unless
    // --prefer-flash-settings; either way the boot says which one is used.
    let settings_path = args.state_dir.join("settings.txt");
    let stored = std::fs::read_to_string(&settings_path).ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("broker=").map(str::to_owned))
    });
    let (broker, broker_text, source) = match stored {
        Some(text) if args.prefer_flash_settings => match resolve(&text) {
            Ok(addr) => (addr, text, "flash"),
            Err(e) => {
                write_line(
                    &mut out,
                    &Event::error(
                        "config",
                        format!("stored broker unusable, using --broker: {e}"),
                    )
                    .format(),
                );
                (broker, args.broker.clone(), "flag")
            }
        },
        Some(text) if text != args.broker => {
            write_line(
                &mut out,
                &Event::Config {
                    setting: "ignored_flash_broker".into(),
                    value: text,
                    source: "flash".into(),
                }
                .format(),
            );
            (broker, args.broker.clone(), "flag")
        }
        _ => (broker, args.broker.clone(), "flag"),
    };
    let security = security(&args)?;
    let mut link = Link::new(broker, security, tx.clone());
    let mut splitter = LineSplitter::default();

    'boot: loop {
        let (records, corrupt) = flash.load();
        let mut device = Device::boot(
            cfg.clone(),
            Rng(SmallRng::seed_from_u64(rng.next_u64())),
            records,
        );
        for (setting, value, source) in [
            ("broker", &broker_text, source),
            ("mqtt", &cfg.mqtt.to_string(), "flag"),
        ] {
            let line = Event::Config {
                setting: setting.into(),
                value: value.clone(),
                source: source.into(),
            };
            write_line(&mut out, &line.format());
        }
        // Said only when TLS was provisioned: where it is not, the boot text
        // stays what it always was. The CA's path, never a key.
        let tls = match (&args.tls_ca, args.require_tls) {
            (Some(ca), _) => Some(format!(
                "on ca={} name={}{}",
                ca.display(),
                args.tls_name.as_deref().unwrap_or("<broker host>"),
                args.tls_cert
                    .as_ref()
                    .map_or(String::new(), |c| format!(" cert={}", c.display()))
            )),
            (None, true) => Some("required (no CA: connections refused)".to_string()),
            (None, false) => None,
        };
        if let Some(value) = tls {
            let line = Event::Config {
                setting: "tls".into(),
                value,
                source: "flag".into(),
            };
            write_line(&mut out, &line.format());
        }
        for c in corrupt {
            let kept = match &c.moved_to {
                Some(p) => format!("kept as {}", p.display()),
                None => "could not be moved aside".into(),
            };
            write_line(
                &mut out,
                &Event::error(
                    "flash",
                    format!(
                        "{}: {} ({kept}; starting it empty)",
                        c.path.display(),
                        c.why
                    ),
                )
                .format(),
            );
        }
        device.handle_wifi(now(), true);
        link.set_wifi(true);
        loop {
            while let Some(o) = device.poll_output() {
                match o {
                    Output::Console(e) => write_line(&mut out, &e.format()),
                    Output::Persist(r) => {
                        if let Err(e) = flash.store(&r) {
                            // Losing flash is fatal on a real device too; say so and stop
                            // rather than acknowledge what was not stored.
                            write_line(
                                &mut out,
                                &Event::error("flash", format!("write failed: {e}")).format(),
                            );
                            return Err(SimError::FlashWrite {
                                path: args.state_dir.clone(),
                                source: e,
                            });
                        }
                    }
                    Output::Transmit(bytes) => {
                        if let Err(reason) = link.send(&bytes) {
                            device.handle_link_down(now(), reason);
                        }
                    }
                    Output::Open => link.open(),
                    Output::Close { abrupt } => link.close(abrupt),
                    Output::Wifi(on) => link.set_wifi(on),
                    Output::Reboot => {
                        link.close(true);
                        continue 'boot;
                    }
                    Output::Config(fields) => {
                        let reply = match apply_config(&fields, &settings_path) {
                            Ok(Some(addr)) => {
                                link.set_broker(addr);
                                Ok(())
                            }
                            Ok(None) => Ok(()),
                            Err(e) => Err(e),
                        };
                        let line = match reply {
                            // Keys only: secrets are never echoed.
                            Ok(()) => Event::Ack {
                                cmd: "config".into(),
                                fields: fields
                                    .iter()
                                    .map(|(k, _)| (k.clone(), "set".into()))
                                    .collect(),
                            },
                            Err(e) => Event::error("config", e),
                        };
                        write_line(&mut out, &line.format());
                    }
                }
            }
            let wait = device
                .poll_wake()
                .map(|t| Duration::from_millis(t.saturating_sub(now())))
                .unwrap_or(Duration::from_secs(3600));
            match rx.recv_timeout(wait) {
                Ok(Msg::Console(bytes)) => {
                    let t = now();
                    splitter.feed(&bytes, &mut |line| device.handle_console_line(t, line));
                }
                Ok(Msg::ConsoleClosed) => return Ok(()),
                Ok(Msg::Link(m)) => match link.accept(m) {
                    Some(link::Accepted::Up) => device.handle_link_up(now()),
                    Some(link::Accepted::Bytes(b)) => device.handle_bytes(now(), &b),
                    Some(link::Accepted::Down(reason)) => device.handle_link_down(now(), reason),
                    None => {}
                },
                Err(mpsc::RecvTimeoutError::Timeout) => device.handle_timeout(now()),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
            // Timers may have come due while a message was handled.
            if device.poll_wake().is_some_and(|t| t <= now()) {
                device.handle_timeout(now());
            }
        }
    }
}

fn write_line(out: &mut Box<dyn Write + Send>, line: &str) {
    // A console nobody reads must not stop the device.
    let _ = out.write_all(line.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn spawn_reader(mut input: Box<dyn Read + Send>, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        loop {
            match input.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.send(Msg::ConsoleClosed);
                    return;
                }
                Ok(n) => {
                    if tx.send(Msg::Console(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                    ) => {}
                Err(_) => {
                    let _ = tx.send(Msg::ConsoleClosed);
                    return;
                }
            }
        }
    });
}

/// Opens a pty pair, prints the device-side path on stdout (first line), and
/// keeps the slave end open so the master never reads EIO between runner sessions.
fn open_pty_console(tx: mpsc::Sender<Msg>) -> Result<Box<dyn Write + Send>, SimError> {
    let (master, slave) = serialport::TTYPort::pair().map_err(|e| SimError::Pty(e.to_string()))?;
    let path = slave
        .name()
        .ok_or_else(|| SimError::Pty("the pseudo-terminal has no path".into()))?;
    println!("{path}");
    let _ = io::stdout().flush();
    let reader = master
        .try_clone_native()
        .map_err(|e| SimError::Pty(format!("cannot clone it: {e}")))?;
    // The slave handle lives as long as the process.
    std::mem::forget(slave);
    spawn_reader(Box::new(reader), tx);
    Ok(Box::new(master))
}

/// `!config` on the sim: `broker=HOST:PORT` takes effect at the next
/// connection and is kept in the state dir; Wi-Fi credentials are accepted
/// (the sim has no radio) so a runner provisions it exactly like a board.
fn apply_config(
    fields: &[(String, String)],
    path: &std::path::Path,
) -> Result<Option<SocketAddr>, SimError> {
    let mut broker = None;
    for (k, v) in fields {
        match k.as_str() {
            "broker" => broker = Some((v.clone(), resolve(v)?)),
            "wifi.ssid" | "wifi.pass" | "mqtt" => {}
            other => return Err(SimError::UnknownSetting(other.into())),
        }
    }
    if let Some((text, addr)) = broker {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("broker={text}\n"))
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(SimError::Settings)?;
        return Ok(Some(addr));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_round_trips_through_the_parser() {
        let mut a = Args::new(
            "127.0.0.1:1883".into(),
            "24:0a:c4:00:00:01".into(),
            "/tmp/x".into(),
        );
        a.console = "pty".into();
        a.mqtt = MqttVersion::V5;
        a.keepalive = 7;
        a.backoff_base_ms = 123;
        a.backoff_cap_ms = 4567;
        a.cmd_qos = 2;
        a.session_expiry = 9;
        a.outbox_capacity = 8;
        a.seed = Some(42);
        a.bugs = vec![Bug::NoJitter, Bug::CleanSession];
        let argv = std::iter::once(OsString::from("hil-sim")).chain(a.to_argv());
        let back = Args::try_parse_from(argv).unwrap();
        assert_eq!(format!("{back:?}"), format!("{a:?}"));
    }
}
