//! Test brokers for the runner, behind one interface:
//!
//! - `rumqttd`: embedded rumqttd (the default). rumqttd has no shutdown API and
//!   a second broker on a taken port fails silently, so it runs as a child
//!   process of a binary of ours (`hil broker serve`, or any program that calls
//!   [`rumqttd::serve`]); restart is a real process restart on the same port.
//! - `mosquitto`: Debian's mosquitto from PATH, with a config we write
//!   (persistence on or off).
//! - external: an address, and an optional shell command that restarts it.
//!
//! Readiness is proven by a real CONNECT/CONNACK, never by a sleep.

pub mod check;
pub mod client;
mod process;
pub mod rumqttd;

pub use client::{Client, ClientError, Received};
pub use process::{Broker, BrokerError, BrokerSpec, Restart, SessionsOnRestart};

use std::net::{SocketAddr, TcpListener};

/// A free TCP port on `ip` (the kernel's pick; released before returning, so
/// the caller binds it next).
pub fn free_port(ip: std::net::IpAddr) -> std::io::Result<u16> {
    let l = TcpListener::bind(SocketAddr::new(ip, 0))?;
    Ok(l.local_addr()?.port())
}

/// Which MQTT protocol a client speaks (rumqttd listens on one port per version).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    V3_1_1,
    V5,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::V3_1_1 => "3.1.1",
            Protocol::V5 => "5",
        })
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "3.1.1" | "3" | "4" => Ok(Protocol::V3_1_1),
            "5" | "5.0" => Ok(Protocol::V5),
            _ => Err(format!("MQTT version `{s}`: expected 3.1.1 or 5")),
        }
    }
}
