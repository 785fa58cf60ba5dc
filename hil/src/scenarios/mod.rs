//! The scenarios: one file each, declaring its name, promise, needs, device
//! spec and the negative controls that must fail it, then its `run`. Each
//! drives the device through its console, plays the cloud through a broker
//! client, judges by the wire tap and the cloud side, and fails with the
//! promise it guards named first.
//!
//! Adding a scenario: one file here, one line in `registry!` below.

pub mod promise;
pub mod schedule;
pub mod steps;
pub mod tls;

pub use promise::Promise;

use crate::dut::{Capability, DeviceSpec};
use crate::testbed::{BrokerChoice, RigError, Testbed};
use hil_broker::check::Semantic;
use hil_session::{Bug, MqttVersion};

/// Declares each scenario's module and lists it in [`ALL`]: one line each.
macro_rules! registry {
    ($($name:ident),* $(,)?) => {
        $(mod $name;)*
        /// The registry: every scenario, in the order `hil run` runs them.
        pub static ALL: &[&Scenario] = &[$(&$name::SCENARIO),*];
    };
}

registry! {
    boot_identity,
    queued_commands,
    asleep_commands,
    telemetry_flush,
    stable_client_id,
    broker_restart,
    link_blackhole,
    effective_qos,
    last_will,
    session_expiry,
    message_expiry,
    buffer_overflow,
    client_id_takeover,
    duplicate_command,
    interrupted_subscribe,
    reconnect_storm,
    qos_lab,
    no_connack,
    reconnect_after_success,
    server_disconnect,
    no_puback,
    no_suback,
    no_pingresp,
    large_payload,
    persistent_session_happy,
    expired_session,
    tls_connect,
    tls_unknown_ca,
    tls_wrong_name,
    tls_expired,
    tls_large_chain,
    tls_client_cert,
    plaintext_refused,
    auth_rejected,
    acl_denied,
}

pub struct Scenario {
    pub name: &'static str,
    /// One line: what the scenario proves.
    pub about: &'static str,
    /// The AWS IoT Device Advisor test cases this scenario covers, locally
    /// and on any broker (shown by `hil list`).
    pub advisor: &'static [&'static str],
    pub needs: &'static [Need],
    /// How the device is configured (where the backend applies it).
    pub device: DeviceSpec,
    /// Negative controls: each must fail this scenario, breaking `breaks`.
    pub catches: &'static [Control],
    pub run: fn(&mut Testbed) -> Outcome,
}

/// A negative control: a device with `bug` must fail the scenario with the
/// promise `breaks`, on this broker and protocol (where it is observable).
#[derive(Clone, Copy, Debug)]
pub struct Control {
    pub bug: Bug,
    pub breaks: Promise,
    pub broker: ControlBroker,
    pub mqtt: MqttVersion,
}

/// Where a negative control is proven (a const-friendly subset of [`BrokerChoice`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlBroker {
    Rumqttd,
    Mosquitto,
}

impl ControlBroker {
    pub fn choice(self) -> BrokerChoice {
        match self {
            ControlBroker::Rumqttd => BrokerChoice::Rumqttd,
            ControlBroker::Mosquitto => BrokerChoice::Mosquitto,
        }
    }
}

impl Control {
    /// Where the control is proven, in words: "rumqttd, MQTT 3.1.1".
    pub fn place(&self) -> String {
        let broker = match self.broker {
            ControlBroker::Rumqttd => "rumqttd",
            ControlBroker::Mosquitto => "mosquitto",
        };
        format!("{broker}, MQTT {}", self.mqtt)
    }

    pub const fn new(
        bug: Bug,
        breaks: Promise,
        broker: ControlBroker,
        mqtt: MqttVersion,
    ) -> Control {
        Control {
            bug,
            breaks,
            broker,
            mqtt,
        }
    }

    /// The usual place to prove a control: embedded rumqttd, MQTT 3.1.1.
    pub const fn on_rumqttd(bug: Bug, breaks: Promise) -> Control {
        Control {
            bug,
            breaks,
            broker: ControlBroker::Rumqttd,
            mqtt: MqttVersion::V3_1_1,
        }
    }

    /// On mosquitto and MQTT 5 (expiry needs both to be observable).
    pub const fn on_mosquitto_v5(bug: Bug, breaks: Promise) -> Control {
        Control {
            bug,
            breaks,
            broker: ControlBroker::Mosquitto,
            mqtt: MqttVersion::V5,
        }
    }
}

/// What a scenario needs; a run that cannot give it reports n/a with the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Of the device backend (and, for broker restarts, of the broker).
    Can(Capability),
    /// MQTT 5 features (expiry intervals).
    Mqtt5,
    /// The scenario's assertions need this of the broker (`hil broker check`).
    Semantic(Semantic),
    /// A broker that checks logins: the runner gives it one, and the device
    /// the credentials its [`DeviceSpec::login`] says.
    BrokerLogin,
    /// A broker that also confines each logged-in device to its own topics
    /// (publish under `<prefix>/<client id>/`, read its own `cmd`).
    BrokerAcl,
}

impl Need {
    /// Why the run cannot serve it (protocol), or None; capabilities and
    /// semantics are decided by the runner, which knows the backend and broker.
    pub fn unmet_protocol(&self, mqtt: MqttVersion) -> Option<String> {
        match self {
            Need::Mqtt5 if mqtt != MqttVersion::V5 => Some(
                "needs MQTT 5 (expiry intervals do not exist in 3.1.1): run with --mqtt 5".into(),
            ),
            _ => None,
        }
    }
}

impl Need {
    /// A short label, for `hil list` and the README.
    pub fn label(&self) -> String {
        match self {
            Need::Can(c) => format!("{c:?}")
                .chars()
                .enumerate()
                .flat_map(|(i, ch)| {
                    let sep = (i > 0 && ch.is_ascii_uppercase()).then_some(' ');
                    sep.into_iter()
                        .chain(std::iter::once(ch.to_ascii_lowercase()))
                })
                .collect(),
            Need::Mqtt5 => "MQTT 5".into(),
            Need::Semantic(s) => format!("broker: {}", s.name()),
            Need::BrokerLogin => "broker login".into(),
            Need::BrokerAcl => "broker topic ACL".into(),
        }
    }
}

/// The scenario table of the README, generated from the registry
/// (`hil list --markdown`; a test keeps the README in step).
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| scenario | what it proves | needs | negative controls that must fail it |\n|---|---|---|---|\n",
    );
    for s in ALL {
        let needs: Vec<String> = s.needs.iter().map(Need::label).collect();
        let controls: Vec<String> = s
            .catches
            .iter()
            .map(|c| {
                format!(
                    "`--sim-bug {}` on {} (breaks: {})",
                    c.bug.name(),
                    c.place(),
                    c.breaks
                )
            })
            .collect();
        let advisor = if s.advisor.is_empty() {
            String::new()
        } else {
            format!(" (Device Advisor: {})", s.advisor.join(", "))
        };
        out.push_str(&format!(
            "| `{}` | {}{advisor} | {} | {} |\n",
            s.name,
            s.about.replace('|', "\\|"),
            needs.join(", "),
            if controls.is_empty() {
                "none yet".to_string()
            } else {
                controls.join("; ")
            }
        ));
    }
    out
}

/// A broken promise: which, and what was seen.
#[derive(Debug, Clone)]
pub struct Failure {
    pub promise: Promise,
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "broken promise: {}: {}", self.promise, self.detail)
    }
}

/// Why a scenario stopped short of passing: the device broke a promise, or
/// the rig could not run it (nextest's `Fail` versus `ExecFail`).
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    #[error("{0}")]
    Fail(Failure),
    #[error("rig error: {0}")]
    Rig(#[from] RigError),
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Stop {
        Stop::Fail(f)
    }
}

pub type Outcome = Result<(), Stop>;

pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().copied().find(|s| s.name == name)
}

/// The width of the name column in tables: the longest scenario name.
pub fn name_width() -> usize {
    ALL.iter().map(|s| s.name.len()).max().unwrap_or(8)
}
