//! Starting, stopping and restarting a test broker.

use crate::client::wait_ready;
use crate::origin::{OriginError, TlsOrigin, UpstreamTls};
use crate::MqttVersion;
use std::ffi::OsString;
use std::fs::{self, File};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which broker, and how to run it.
#[derive(Clone, Debug)]
pub enum BrokerSpec {
    /// rumqttd served by `program args... --v4 ADDR --v5 ADDR` (e.g. `hil broker serve`).
    Rumqttd {
        program: PathBuf,
        args: Vec<OsString>,
    },
    /// mosquitto from PATH; `persistence` keeps sessions across a restart.
    Mosquitto { persistence: bool },
    /// A broker someone else runs; `restart` is a shell command, if any;
    /// `tls`: it listens for MQTT over TLS (`mqtts://`), reached through a
    /// [`TlsOrigin`].
    External {
        addr: SocketAddr,
        restart: Option<String>,
        tls: Option<UpstreamTls>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// SIGTERM: the broker may save its state and close connections.
    Graceful,
    /// SIGKILL: power cut.
    Kill,
}

/// What a restart does to persistent sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionsOnRestart {
    Lost,
    Kept,
    Unknown,
}

/// Why a broker could not be started, restarted or reached.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("mosquitto is not on PATH: install it (Debian: apt-get install mosquitto mosquitto-clients) or use --broker rumqttd")]
    NotInstalled,
    #[error("no free port on {ip}: {source}")]
    NoFreePort {
        ip: IpAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {broker} on {addr}: {source} (another broker may run there)")]
    PortTaken {
        broker: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("restart command `{cmd}` failed: {outcome}")]
    RestartCommand { cmd: String, outcome: String },
    #[error("{broker} exited ({status}) before it was ready:\n{log}")]
    Exited {
        broker: &'static str,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("{source}\n{log}")]
    NotReady {
        #[source]
        source: crate::ClientError,
        log: String,
    },
    #[error("this external broker has no restart command: pass one to restart it")]
    NoRestartCommand,
    #[error(transparent)]
    Tls(#[from] OriginError),
}

impl BrokerError {
    /// A start that fresh ports may fix: a port taken between our pick and
    /// the broker's bind (rumqttd's `serve` exits with [`crate::EXIT_PORT_TAKEN`]).
    fn port_race(&self) -> bool {
        match self {
            BrokerError::PortTaken { .. } | BrokerError::NoFreePort { .. } => true,
            BrokerError::Exited { status, .. } => status.code() == Some(crate::EXIT_PORT_TAKEN),
            _ => false,
        }
    }
}

/// Settings a load test changes; scenarios keep the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// mosquitto: save the store after this many changes (1: after each, so
    /// a kill -9 loses nothing a scenario just did), or, when `None`, once a
    /// second (a queue of 50,000 messages saved after each would be written
    /// 50,000 times).
    pub autosave_changes: Option<u32>,
    /// mosquitto's `max_queued_messages` per client (its own default: 1000).
    pub max_queued: u32,
    /// mosquitto: a password file holding this one login (user, password).
    /// Anonymous clients are still admitted, so the runner's cloud side and
    /// probes connect as before; a client that gives a user name is checked.
    pub login: Option<(String, String)>,
    /// mosquitto: an ACL file confining every logged-in client to its own
    /// topics under this prefix: it may publish only under
    /// `<prefix>/<its client id>/` and read only its own `cmd`. Anonymous
    /// clients (the runner's cloud side) keep every topic.
    pub acl_prefix: Option<String>,
    /// mosquitto: listen for MQTT over TLS only (no plaintext listener);
    /// the broker's clients reach it through a [`TlsOrigin`].
    pub tls: Option<ListenerTls>,
}

/// A broker's TLS listener (mosquitto's `certfile`, `keyfile`, `cafile`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// The broker's certificate chain and key (PEM files).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Clients must present a certificate that chains to the CA of
    /// `upstream` (mutual TLS).
    pub require_client_cert: bool,
    /// How its clients (through the origin) reach it.
    pub upstream: UpstreamTls,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            autosave_changes: Some(1),
            max_queued: 1000,
            login: None,
            acl_prefix: None,
            tls: None,
        }
    }
}

pub struct Broker {
    tuning: Tuning,
    spec: BrokerSpec,
    v4: SocketAddr,
    v5: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
    starts: u32,
    /// For a TLS-only broker: the plaintext port its clients use (for
    /// rumqttd, one per listener: 3.1.1, then 5).
    origin: Option<TlsOrigin>,
    origin_v5: Option<TlsOrigin>,
}

const READY: Duration = Duration::from_secs(15);

impl Broker {
    /// Starts the broker on free ports of `ip` (use a 127.0.0.0/8 address).
    /// A free port can be taken by someone else between our pick and the
    /// broker's bind (parallel tests open client connections all the time):
    /// such a start is retried on fresh ports.
    pub fn start(spec: BrokerSpec, ip: IpAddr) -> Result<Broker, BrokerError> {
        Self::start_tuned(spec, ip, Tuning::default())
    }

    /// [`Broker::start`] with `tuning`.
    pub fn start_tuned(
        spec: BrokerSpec,
        ip: IpAddr,
        tuning: Tuning,
    ) -> Result<Broker, BrokerError> {
        let mut last = None;
        for _ in 0..4 {
            let port =
                || crate::free_port(ip).map_err(|source| BrokerError::NoFreePort { ip, source });
            let (v4, v5) = match &spec {
                BrokerSpec::Rumqttd { .. } => {
                    let (a, b) = crate::free_port_pair(ip)
                        .map_err(|source| BrokerError::NoFreePort { ip, source })?;
                    (SocketAddr::new(ip, a), SocketAddr::new(ip, b))
                }
                BrokerSpec::Mosquitto { .. } => {
                    let a = SocketAddr::new(ip, port()?);
                    (a, a)
                }
                BrokerSpec::External { addr, .. } => {
                    return Self::start_on(spec.clone(), *addr, *addr)
                }
            };
            match Self::start_on_tuned(spec.clone(), v4, v5, tuning.clone()) {
                Err(e) if e.port_race() => last = Some(e),
                other => return other,
            }
        }
        Err(last.expect("four attempts, each a port race"))
    }

    /// Starts the broker on given addresses (`v5` is only used by rumqttd).
    pub fn start_on(
        spec: BrokerSpec,
        v4: SocketAddr,
        v5: SocketAddr,
    ) -> Result<Broker, BrokerError> {
        Self::start_on_tuned(spec, v4, v5, Tuning::default())
    }

    fn start_on_tuned(
        spec: BrokerSpec,
        v4: SocketAddr,
        v5: SocketAddr,
        tuning: Tuning,
    ) -> Result<Broker, BrokerError> {
        let dir = tempfile::Builder::new()
            .prefix("hil-broker-")
            .tempdir()
            .map_err(|source| BrokerError::Io {
                what: "cannot create the broker's temp dir".into(),
                source,
            })?;
        let upstream = match (&spec, &tuning.tls) {
            (BrokerSpec::External { tls: Some(t), .. }, _) => Some(t.clone()),
            (BrokerSpec::Mosquitto { .. } | BrokerSpec::Rumqttd { .. }, Some(l)) => {
                Some(l.upstream.clone())
            }
            _ => None,
        };
        // On the broker's own loopback address; an external broker's may
        // not be this host's, so its origin listens on 127.0.0.1.
        let listen = match &spec {
            BrokerSpec::External { .. } => IpAddr::from([127, 0, 0, 1]),
            _ => v4.ip(),
        };
        let origin = match &upstream {
            Some(t) => Some(TlsOrigin::start(listen, v4, t)?),
            None => None,
        };
        let origin_v5 = match (&upstream, &spec) {
            (Some(t), BrokerSpec::Rumqttd { .. }) => Some(TlsOrigin::start(listen, v5, t)?),
            _ => None,
        };
        let mut b = Broker {
            tuning,
            spec,
            v4,
            v5,
            child: None,
            dir,
            starts: 0,
            origin,
            origin_v5,
        };
        b.start_again()?;
        Ok(b)
    }

    /// The broker's process, while it runs (for its RSS); none for an external one.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn name(&self) -> &'static str {
        match self.spec {
            BrokerSpec::Rumqttd { .. } => "rumqttd",
            BrokerSpec::Mosquitto { .. } => "mosquitto",
            BrokerSpec::External { .. } => "external",
        }
    }

    pub fn spec(&self) -> &BrokerSpec {
        &self.spec
    }

    /// Where a client of this protocol connects (for a TLS-only broker:
    /// the origin's plaintext port in front of it).
    pub fn addr(&self, proto: MqttVersion) -> SocketAddr {
        if let (MqttVersion::V5, Some(o)) = (proto, &self.origin_v5) {
            return o.addr();
        }
        if let Some(o) = &self.origin {
            return o.addr();
        }
        match proto {
            MqttVersion::V3_1_1 => self.v4,
            MqttVersion::V5 => self.v5,
        }
    }

    /// Where the broker itself listens for 3.1.1 (for a TLS-only broker,
    /// its TLS port, which [`Broker::addr`] hides behind the origin).
    pub fn listener(&self) -> SocketAddr {
        self.v4
    }

    /// Whether clients reach it over TLS (through the origin).
    pub fn tls(&self) -> bool {
        self.origin.is_some()
    }

    pub fn sessions_on_restart(&self) -> SessionsOnRestart {
        match self.spec {
            BrokerSpec::Rumqttd { .. } => SessionsOnRestart::Lost,
            BrokerSpec::Mosquitto { persistence: true } => SessionsOnRestart::Kept,
            BrokerSpec::Mosquitto { persistence: false } => SessionsOnRestart::Lost,
            BrokerSpec::External { .. } => SessionsOnRestart::Unknown,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    fn log_tail(&self) -> String {
        self.log_lines(8)
    }

    /// The last `n` lines of the broker's own log (its stdout and stderr).
    pub fn log_lines(&self, n: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Starts the broker (again) on the same addresses and waits until it
    /// answers CONNECT.
    pub fn start_again(&mut self) -> Result<(), BrokerError> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = || {
            File::options()
                .create(true)
                .append(true)
                .open(self.dir.path().join("broker.log"))
                .map_err(|source| BrokerError::Io {
                    what: "cannot write the broker log".into(),
                    source,
                })
        };
        let child = match &self.spec {
            BrokerSpec::Rumqttd { program, args } => {
                for addr in [self.v4, self.v5] {
                    std::net::TcpListener::bind(addr).map_err(|source| BrokerError::PortTaken {
                        broker: "rumqttd",
                        addr,
                        source,
                    })?;
                }
                let mut cmd = Command::new(program);
                cmd.args(args)
                    .arg("--v4")
                    .arg(self.v4.to_string())
                    .arg("--v5")
                    .arg(self.v5.to_string());
                if let Some(l) = &self.tuning.tls {
                    // rumqttd requires a client certificate whenever it is
                    // given a CA (built with verify-client-cert).
                    cmd.arg("--tls-cert")
                        .arg(&l.cert_file)
                        .arg("--tls-key")
                        .arg(&l.key_file)
                        .arg("--tls-ca")
                        .arg(&l.upstream.ca_file);
                }
                Some(
                    cmd.stdin(Stdio::null())
                        .stdout(log()?)
                        .stderr(log()?)
                        .spawn()
                        .map_err(|source| BrokerError::Spawn {
                            program: program.display().to_string(),
                            source,
                        })?,
                )
            }
            BrokerSpec::Mosquitto { persistence } => {
                std::net::TcpListener::bind(self.v4).map_err(|source| BrokerError::PortTaken {
                    broker: "mosquitto",
                    addr: self.v4,
                    source,
                })?;
                let conf = self.dir.path().join("mosquitto.conf");
                let store = self.dir.path().join("store");
                fs::create_dir_all(&store).map_err(|source| BrokerError::Io {
                    what: format!("cannot create {}", store.display()),
                    source,
                })?;
                // Started as root, mosquitto drops to its own user: it must be
                // able to reach and write its store, or persistence silently fails.
                use std::os::unix::fs::PermissionsExt;
                let _ = fs::set_permissions(self.dir.path(), fs::Permissions::from_mode(0o755));
                let _ = fs::set_permissions(&store, fs::Permissions::from_mode(0o777));
                let mut passwords = String::new();
                if let Some((user, password)) = &self.tuning.login {
                    let file = self.dir.path().join("passwd");
                    // Written in plaintext, then hashed in place by
                    // mosquitto_passwd -U: the password never is an argument
                    // (which every user can read in ps).
                    fs::write(&file, format!("{user}:{password}\n")).map_err(|source| {
                        BrokerError::Io {
                            what: format!("cannot write {}", file.display()),
                            source,
                        }
                    })?;
                    let hashed = Command::new("mosquitto_passwd")
                        .arg("-U")
                        .arg(&file)
                        .stdin(Stdio::null())
                        .output();
                    match hashed {
                        Ok(o) if o.status.success() => {}
                        Ok(o) => {
                            return Err(BrokerError::Io {
                                what: format!(
                                    "mosquitto_passwd -U {}: {}",
                                    file.display(),
                                    String::from_utf8_lossy(&o.stderr).trim()
                                ),
                                source: std::io::Error::other("mosquitto_passwd failed"),
                            })
                        }
                        Err(source) => {
                            return Err(BrokerError::Io {
                                what: "mosquitto_passwd (Debian: in the mosquitto package)".into(),
                                source,
                            })
                        }
                    }
                    let _ = fs::set_permissions(&file, fs::Permissions::from_mode(0o644));
                    passwords = format!("password_file {}\n", file.display());
                }
                if let Some(prefix) = &self.tuning.acl_prefix {
                    let file = self.dir.path().join("acl");
                    // Lines before any `user` line are for anonymous clients;
                    // `pattern` lines apply to every client, %c being its id.
                    let text = format!(
                        "topic readwrite #\n\
                         pattern write {prefix}/%c/#\n\
                         pattern read {prefix}/%c/cmd\n"
                    );
                    fs::write(&file, text).map_err(|source| BrokerError::Io {
                        what: format!("cannot write {}", file.display()),
                        source,
                    })?;
                    let _ = fs::set_permissions(&file, fs::Permissions::from_mode(0o644));
                    passwords.push_str(&format!("acl_file {}\n", file.display()));
                }
                let mut listener_tls = String::new();
                if let Some(l) = &self.tuning.tls {
                    // mosquitto drops to its own user: it must read the key
                    // (a key made for this run only, in this run's temp dir).
                    for f in [&l.cert_file, &l.key_file, &l.upstream.ca_file] {
                        let _ = fs::set_permissions(f, fs::Permissions::from_mode(0o644));
                        if let Some(d) = f.parent() {
                            let _ = fs::set_permissions(d, fs::Permissions::from_mode(0o755));
                        }
                    }
                    listener_tls = format!(
                        "certfile {}\nkeyfile {}\ncafile {}\nrequire_certificate {}\n",
                        l.cert_file.display(),
                        l.key_file.display(),
                        l.upstream.ca_file.display(),
                        l.require_client_cert
                    );
                }
                let text = format!(
                    "{passwords}listener {port} {ip}\n{listener_tls}allow_anonymous true\npersistence {p}\npersistence_location {store}/\n\
                     autosave_on_changes {on_changes}\nautosave_interval {every}\nmax_queued_messages {max_queued}\n\
                     log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
                    port = self.v4.port(),
                    ip = self.v4.ip(),
                    p = persistence,
                    store = store.display(),
                    on_changes = self.tuning.autosave_changes.is_some(),
                    every = self.tuning.autosave_changes.unwrap_or(1),
                    max_queued = self.tuning.max_queued,
                );
                fs::write(&conf, text).map_err(|source| BrokerError::Io {
                    what: format!("cannot write {}", conf.display()),
                    source,
                })?;
                Some(
                    Command::new("mosquitto")
                        .arg("-c")
                        .arg(&conf)
                        .stdin(Stdio::null())
                        .stdout(log()?)
                        .stderr(log()?)
                        .spawn()
                        .map_err(|source| {
                            if source.kind() == std::io::ErrorKind::NotFound {
                                BrokerError::NotInstalled
                            } else {
                                BrokerError::Spawn {
                                    program: "mosquitto".into(),
                                    source,
                                }
                            }
                        })?,
                )
            }
            BrokerSpec::External { restart, .. } => {
                if self.starts > 0 {
                    if let Some(cmd) = restart {
                        let status =
                            Command::new("sh")
                                .arg("-c")
                                .arg(cmd)
                                .status()
                                .map_err(|e| BrokerError::RestartCommand {
                                    cmd: cmd.clone(),
                                    outcome: e.to_string(),
                                })?;
                        if !status.success() {
                            return Err(BrokerError::RestartCommand {
                                cmd: cmd.clone(),
                                outcome: format!("exited with {status}"),
                            });
                        }
                    }
                }
                None
            }
        };
        self.child = child;
        self.starts += 1;
        let deadline = Instant::now() + READY;
        let mut protos = vec![MqttVersion::V3_1_1];
        if matches!(self.spec, BrokerSpec::Rumqttd { .. }) {
            protos.push(MqttVersion::V5);
        }
        for proto in protos {
            if let Err(e) = wait_ready(self.addr(proto), proto, deadline) {
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                let tail = self.log_tail();
                self.stop(Restart::Kill);
                return Err(match exited {
                    Some(status) => BrokerError::Exited {
                        broker: self.name(),
                        status,
                        log: tail,
                    },
                    None => BrokerError::NotReady {
                        source: e,
                        log: match self.origin.as_ref().and_then(TlsOrigin::last_error) {
                            Some(why) => format!("TLS to the broker: {why}\n{tail}"),
                            None => tail,
                        },
                    },
                });
            }
        }
        Ok(())
    }

    /// Stops the broker process (nothing for an external broker without a child).
    pub fn stop(&mut self, how: Restart) {
        if let Some(mut child) = self.child.take() {
            if how == Restart::Graceful {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until a persisting broker (mosquitto with `persistence true`) has
    /// written every one of `needles` (e.g. subscription topics) to its store,
    /// so a kill -9 now keeps them. Returns at once for brokers that do not persist.
    pub fn wait_persisted(&self, needles: &[String], deadline: Duration) -> bool {
        if !matches!(self.spec, BrokerSpec::Mosquitto { persistence: true }) {
            return true;
        }
        let db = self.dir.path().join("store").join("mosquitto.db");
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Ok(bytes) = fs::read(&db) {
                let has = |n: &String| bytes.windows(n.len()).any(|w| w == n.as_bytes());
                if needles.iter().all(has) {
                    return true;
                }
            }
            // Polling a file for an event the broker gives no other sign of,
            // bounded by the deadline.
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether an external broker can be restarted at all.
    pub fn can_restart(&self) -> bool {
        match &self.spec {
            BrokerSpec::External { restart, .. } => restart.is_some(),
            _ => true,
        }
    }

    pub fn restart(&mut self, how: Restart) -> Result<(), BrokerError> {
        if !self.can_restart() {
            return Err(BrokerError::NoRestartCommand);
        }
        self.stop(how);
        self.start_again()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop(Restart::Kill);
    }
}
