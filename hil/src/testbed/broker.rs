//! Which broker a testbed starts for each scenario.

use hil_broker::{BrokerSpec, UpstreamTls};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
        /// `mqtts://`: MQTT over TLS, verified against a CA file
        /// (`--broker-ca`) and a name (the URL's host, or `--broker-name`).
        tls: Option<UpstreamTls>,
    },
}

/// A `--broker` value that names no broker.
#[derive(Debug, thiserror::Error)]
#[error("--broker {0}: expected rumqttd, mosquitto, or HOST:PORT (or mqtt://HOST:PORT, mqtts://HOST:PORT) of a running broker (e.g. 127.0.0.1:1883)")]
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
                let (hostport, tls) = match other.split_once("://") {
                    Some(("mqtt", rest)) => (rest, false),
                    Some(("mqtts", rest)) => (rest, true),
                    Some(_) => return Err(UnknownBroker(other.into())),
                    None => (other, false),
                };
                let host = hostport
                    .rsplit_once(':')
                    .map_or(hostport, |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                hostport
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .map(|addr| BrokerChoice::External {
                        addr,
                        restart: None,
                        // The CA file comes from --broker-ca (see `with_ca`).
                        tls: tls.then(|| UpstreamTls {
                            ca_file: PathBuf::new(),
                            server_name: host.to_string(),
                            client: None,
                        }),
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
            BrokerChoice::External { addr, restart, tls } => BrokerSpec::External {
                addr: *addr,
                restart: restart.clone(),
                tls: tls.clone(),
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

    /// Completes an `mqtts://` broker with its CA file and, if given, the
    /// name its certificate is for; says what is missing or misplaced.
    pub fn with_tls(
        mut self,
        ca_file: Option<PathBuf>,
        name: Option<String>,
    ) -> Result<BrokerChoice, String> {
        match (&mut self, ca_file) {
            (BrokerChoice::External { tls: Some(t), .. }, Some(ca)) => {
                if !ca.is_file() {
                    return Err(format!(
                        "--broker-ca {}: no such file (the PEM CA the broker's certificate chains to)",
                        ca.display()
                    ));
                }
                t.ca_file = ca;
                if let Some(n) = name {
                    t.server_name = n;
                }
                Ok(self)
            }
            (BrokerChoice::External { tls: Some(_), .. }, None) => Err(
                "an mqtts:// broker needs --broker-ca FILE: the PEM CA its certificate chains to"
                    .into(),
            ),
            (_, Some(_)) => Err("--broker-ca is for an mqtts://HOST:PORT broker".into()),
            (_, None) if name.is_some() => {
                Err("--broker-name is for an mqtts://HOST:PORT broker".into())
            }
            (_, None) => Ok(self),
        }
    }

    /// An `mqtts://` broker: how it is reached over TLS.
    pub fn external_tls(&self) -> Option<&UpstreamTls> {
        match self {
            BrokerChoice::External { tls, .. } => tls.as_ref(),
            _ => None,
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
