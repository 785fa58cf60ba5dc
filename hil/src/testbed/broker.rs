//! Which broker a testbed starts for each scenario.

use hil_broker::BrokerSpec;
use std::net::SocketAddr;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerChoice {
    /// Embedded rumqttd, served by `hil broker serve` (the default).
    Rumqttd,
    /// Debian's mosquitto from PATH: the reference broker.
    Mosquitto,
    /// A broker that is already running, and how to restart it.
    External {
        addr: SocketAddr,
        /// A shell command that kills the broker and starts it again.
        restart: Option<String>,
    },
}

/// A `--broker` value that names no broker.
#[derive(Debug, thiserror::Error)]
#[error("--broker {0}: expected rumqttd, mosquitto, or HOST:PORT of a running broker (e.g. 127.0.0.1:1883)")]
pub struct UnknownBroker(pub String);

impl std::str::FromStr for BrokerChoice {
    type Err = UnknownBroker;
    fn from_str(s: &str) -> Result<BrokerChoice, UnknownBroker> {
        match s {
            "rumqttd" => Ok(BrokerChoice::Rumqttd),
            "mosquitto" => Ok(BrokerChoice::Mosquitto),
            // HOST:PORT, host names too (resolved once, here).
            other => {
                use std::net::ToSocketAddrs;
                other
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .map(|addr| BrokerChoice::External {
                        addr,
                        restart: None,
                    })
                    .ok_or_else(|| UnknownBroker(other.into()))
            }
        }
    }
}

impl BrokerChoice {
    pub fn name(&self) -> &'static str {
        match self {
            BrokerChoice::Rumqttd => "rumqttd",
            BrokerChoice::Mosquitto => "mosquitto",
            BrokerChoice::External { .. } => "external",
        }
    }

    /// How hil-broker starts it; `hil_exe` serves rumqttd.
    pub fn spec(&self, hil_exe: &Path) -> BrokerSpec {
        match self {
            BrokerChoice::Rumqttd => BrokerSpec::Rumqttd {
                program: hil_exe.into(),
                args: vec!["broker".into(), "serve".into()],
            },
            BrokerChoice::Mosquitto => BrokerSpec::Mosquitto { persistence: true },
            BrokerChoice::External { addr, restart } => BrokerSpec::External {
                addr: *addr,
                restart: restart.clone(),
            },
        }
    }

    /// Whether the testbed can kill and start it again.
    pub fn can_restart(&self) -> bool {
        match self {
            BrokerChoice::External { restart, .. } => restart.is_some(),
            _ => true,
        }
    }

    /// A broker the runner did not start: reachability is checked once per run.
    pub fn external_addr(&self) -> Option<SocketAddr> {
        match self {
            BrokerChoice::External { addr, .. } => Some(*addr),
            _ => None,
        }
    }
}
