//! The testbed of one scenario: it owns the broker, the fault proxy with its
//! wire tap, the device, the transcript and the state dirs, and gives the
//! scenario plain verbs (turmoil's shape): `crash_broker`, `restart_broker`,
//! `broker_outage`, `link().cut()`, `hold_next_subscribe()`, `cloud(name)`,
//! `wire()`. Hardware and process details stay behind the device backend.

mod broker;
mod delivery;
pub mod monitor;
pub mod pki;
mod proxy;
pub mod rules;
pub mod tls;
pub mod wire;

pub use broker::{BrokerChoice, UnknownBroker};
pub use proxy::{FaultProxy, ProxyError, RuleGuard};
pub use wire::{Dir, Packet, WireEvent, WireLog, WireRecord};

use crate::dut::{Capability, Dut, DutError, Fleet};
use crate::transcript::Transcript;
use hil_broker::client::{ClientError, ConnectOptions};
use hil_broker::{Broker, BrokerError, BrokerSpec, Client, MqttVersion, Restart};
use hil_session::Topics;
use std::time::{Duration, Instant};

/// The rig failed, not the device: the scenario could not be run to a verdict.
#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
    #[error(
        "the broker at {addr} is unreachable: {source} (is it running? is the address right?)"
    )]
    BrokerUnreachable {
        addr: std::net::SocketAddr,
        #[source]
        source: ClientError,
    },
    #[error("the broker at {addr} cannot be reached over TLS: {why} (check --broker-ca and --broker-name)")]
    BrokerTls {
        addr: std::net::SocketAddr,
        why: String,
    },
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("device: {0}")]
    Dut(#[from] DutError),
    #[error("cannot create a state dir: {0}")]
    StateDir(#[source] std::io::Error),
    #[error("cloud client {name}: {source}")]
    Cloud {
        name: String,
        #[source]
        source: ClientError,
    },
    #[error("this scenario needs extra devices, which the {0} backend cannot start")]
    NoFleet(&'static str),
    #[error("this scenario's fleet runs in the in-process engine, which cannot build devices of the {0} backend")]
    NoEngine(&'static str),
    #[error("the fleet engine: {0}")]
    Engine(#[from] hil_sim::fleet::FleetError),
    #[error(transparent)]
    TlsHop(#[from] tls::TlsHopError),
    #[error("this scenario needs the TLS hop, which the runner did not start")]
    NoTls,
    /// The broker did not keep what the scenario set up, so the device could
    /// not be judged (the verdicts issue names the MQTT rule for it).
    #[error("the broker did not behave as the scenario needs: {0}")]
    BrokerBehaviour(String),
    /// The rig could not make the measurement the verdict rests on (its own
    /// timing too coarse on a loaded host, a record missing from the tap).
    #[error("the rig could not measure what the verdict needs: {0}")]
    Measurement(String),
}

/// Everything a scenario acts on.
pub struct Testbed {
    /// The device under test.
    pub dut: Dut,
    broker: Broker,
    proxy: FaultProxy,
    t: Transcript,
    mqtt: MqttVersion,
    nonce: String,
    fleet: Option<Box<dyn Fleet>>,
    backend: &'static str,
    caps: Vec<Capability>,
    mac: String,
    expected_client_id: Option<String>,
    backoff_cap_ms: Option<u64>,
    backoff_base_ms: Option<u64>,
    keepalive_s: u16,
    /// An external broker "killed": the proxy refuses until its restart.
    external_down: bool,
    /// Packet rules installed for the whole scenario.
    _rules: Vec<RuleGuard>,
    /// The TLS hop, when the device speaks TLS. Declared after the device:
    /// dropped after it.
    tls: Option<tls::TlsHop>,
    _state: tempfile::TempDir,
}

/// How a [`Testbed`] is put together (by the runner).
pub struct Parts {
    pub dut: Dut,
    pub broker: Broker,
    pub proxy: FaultProxy,
    pub transcript: Transcript,
    pub mqtt: MqttVersion,
    pub fleet: Option<Box<dyn Fleet>>,
    pub backend: &'static str,
    /// What the backend (and broker) can do in this run.
    pub caps: Vec<Capability>,
    /// The device under test's MAC, as the runner provisioned it.
    pub mac: String,
    pub expected_client_id: Option<String>,
    /// The device's backoff cap when the runner configured it (the sim); a
    /// board's is learnt from the windows its `backoff` lines report.
    pub backoff_cap_ms: Option<u64>,
    /// The base delay, where the backend applied the scenario's spec.
    pub backoff_base_ms: Option<u64>,
    pub keepalive_s: u16,
    pub state: tempfile::TempDir,
    pub rules: Vec<RuleGuard>,
    pub tls: Option<tls::TlsHop>,
}

impl Testbed {
    pub fn new(p: Parts) -> Testbed {
        Testbed {
            dut: p.dut,
            broker: p.broker,
            proxy: p.proxy,
            t: p.transcript,
            mqtt: p.mqtt,
            nonce: nonce(),
            fleet: p.fleet,
            backend: p.backend,
            caps: p.caps,
            mac: p.mac,
            expected_client_id: p.expected_client_id,
            backoff_cap_ms: p.backoff_cap_ms,
            backoff_base_ms: p.backoff_base_ms,
            keepalive_s: p.keepalive_s,
            external_down: false,
            _rules: p.rules,
            tls: p.tls,
            _state: p.state,
        }
    }

    pub fn t(&self) -> &Transcript {
        &self.t
    }

    pub fn mqtt(&self) -> MqttVersion {
        self.mqtt
    }

    /// Makes command ids unique to this run: a board's inbox remembers the
    /// ids it executed in earlier runs, and rightly ignores them.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// Whether this run's backend and broker can do `c`.
    pub fn can(&self, c: Capability) -> bool {
        self.caps.contains(&c)
    }

    /// The MAC the runner gave the device (a board's own is in the rig file).
    pub fn mac(&self) -> &str {
        &self.mac
    }

    pub fn expected_client_id(&self) -> Option<&str> {
        self.expected_client_id.as_deref()
    }

    pub fn backoff_cap_ms(&self) -> Option<u64> {
        self.backoff_cap_ms
    }

    /// The device's backoff base delay, where the backend applied the spec.
    pub fn backoff_base_ms(&self) -> Option<u64> {
        self.backoff_base_ms
    }

    /// The keep-alive the scenario configured (a board keeps its own).
    pub fn keepalive_s(&self) -> u16 {
        self.keepalive_s
    }

    /// The topics of a device, as the device itself forms them.
    pub fn topics(&self, client_id: &str) -> Topics {
        Topics::new(Topics::DEFAULT_PREFIX, client_id)
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// kill -9 of the broker. An external broker is restarted by its own
    /// command; until then the device finds it down, as it would a dead one:
    /// the proxy cuts its link and refuses new connections.
    pub fn crash_broker(&mut self) {
        self.t.runner("broker: kill -9");
        self.proxy.wire().push(WireEvent::BrokerRestart);
        if matches!(self.broker.spec(), BrokerSpec::External { .. }) {
            self.proxy.refuse(true);
            self.proxy.cut();
            self.external_down = true;
        } else {
            self.broker.stop(Restart::Kill);
        }
    }

    /// Starts the broker again on the same address (an external one through
    /// its restart command); ready when it answers CONNECT.
    pub fn restart_broker(&mut self) -> Result<(), RigError> {
        self.t.runner("broker: start again");
        self.broker.start_again()?;
        if std::mem::take(&mut self.external_down) {
            self.proxy.refuse(false);
        }
        Ok(())
    }

    /// kill -9, `down` of nothing listening (the device's console is
    /// recorded meanwhile), start again.
    pub fn broker_outage(&mut self, down: Duration) -> Result<(), RigError> {
        self.crash_broker();
        self.dut.pass_time(down);
        self.restart_broker()
    }

    /// The link between device and broker: cut, blackhole, refuse, latency.
    pub fn link(&self) -> &FaultProxy {
        &self.proxy
    }

    /// What the wire tap has seen.
    pub fn wire(&self) -> &WireLog {
        self.proxy.wire()
    }

    /// Holds back the next SUBSCRIBE a device sends, and all its connection
    /// sends after it, until the returned hold is cut or dropped.
    pub fn hold_next_subscribe(&self) -> Hold<'_> {
        Hold {
            proxy: &self.proxy,
            _guard: self.proxy.install(rules::HoldNextSubscribe::default()),
        }
    }

    /// A cloud-side client of the broker (not through the proxy).
    pub fn cloud(&self, name: &str) -> Result<Client, RigError> {
        self.cloud_with(&ConnectOptions::new(name))
    }

    pub fn cloud_with(&self, opts: &ConnectOptions) -> Result<Client, RigError> {
        self.t
            .runner(format!("cloud client {} connects", opts.client_id));
        self.observer_with(opts)
    }

    /// A cloud client that only watches (its connect is not a scenario step).
    pub fn observer(&self, name: &str) -> Result<Client, RigError> {
        self.observer_with(&ConnectOptions::new(name))
    }

    fn observer_with(&self, opts: &ConnectOptions) -> Result<Client, RigError> {
        // The cloud side is on the wire record too: the monitor judges the
        // broker by what it delivered against what was published to it.
        let mut opts = opts.clone();
        let wire = self.proxy.wire().clone();
        opts.observer = Some(hil_broker::client::Observer(std::sync::Arc::new(
            move |e| wire.push(WireEvent::Cloud(e)),
        )));
        let opts = &opts;
        Client::connect(self.broker.addr(self.mqtt), self.mqtt, opts).map_err(|source| {
            RigError::Cloud {
                name: opts.client_id.clone(),
                source,
            }
        })
    }

    /// Ends `client_id`'s session at the broker, the way the spec provides
    /// on any broker: a connection with that client ID and a clean session
    /// (MQTT 5: Clean Start and Session Expiry 0), closed with DISCONNECT
    /// ([MQTT-3.1.2-6] in 3.1.1; [MQTT-3.1.2-4] and 3.1.2.11.2 in 5). Only
    /// while the device is offline: otherwise it would take over its link.
    pub fn end_session(&self, client_id: &str) -> Result<(), RigError> {
        let mut opts = ConnectOptions::new(client_id);
        opts.clean = true;
        opts.session_expiry_s = Some(0);
        self.t.runner(format!(
            "cloud: end the session of {client_id} (clean connect with its ID)"
        ));
        let c =
            Client::connect(self.broker.addr(self.mqtt), self.mqtt, &opts).map_err(|source| {
                RigError::Cloud {
                    name: client_id.into(),
                    source,
                }
            })?;
        c.disconnect();
        self.proxy.wire().push(WireEvent::SessionEnded {
            client_id: client_id.into(),
        });
        Ok(())
    }

    /// Extra devices of the backend (Need::Can(Capability::Fleet) guarantees one).
    pub fn fleet(&self) -> Result<&dyn Fleet, RigError> {
        self.fleet.as_deref().ok_or(RigError::NoFleet(self.backend))
    }

    /// Devices like the device under test for the in-process fleet engine
    /// (see [`Fleet::engine`]).
    pub fn engine(
        &self,
        edit: &dyn Fn(&mut crate::dut::DeviceSpec),
    ) -> Result<crate::dut::EngineSpec, RigError> {
        self.fleet()?
            .engine(edit)
            .ok_or(RigError::NoEngine(self.backend))
    }

    /// The TLS hop the device connects through (scenarios that need TLS).
    pub fn tls(&self) -> Result<&tls::TlsHop, RigError> {
        self.tls.as_ref().ok_or(RigError::NoTls)
    }

    /// The broker's last log lines (why it dropped a connection, often).
    pub fn broker_log(&self, n: usize) -> String {
        self.broker.log_lines(n)
    }
}

/// A connection held by [`Testbed::hold_next_subscribe`].
pub struct Hold<'a> {
    proxy: &'a FaultProxy,
    _guard: RuleGuard,
}

impl Hold<'_> {
    /// Waits until a connection is held; false at the deadline.
    pub fn wait(&self, deadline: Instant) -> bool {
        self.proxy.wait_held(deadline)
    }

    /// Resets the held connection (only it: other devices keep their link).
    pub fn cut(self) {
        self.proxy.cut_held();
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
