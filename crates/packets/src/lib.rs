//! The MQTT packet codec, written once for the three parties that speak MQTT
//! here: the device (`hil-session`), the cloud-side client (`hil-broker`) and
//! the wire tap (`hil`).
//!
//! mqtt-protocol-core has one builder and one parser per packet *and* per
//! protocol version; every caller used to fork on the version itself. This
//! crate is the only place that forks:
//! - [`MqttVersion`]: the one MQTT version type of the workspace;
//! - [`build`]: CONNECT, SUBSCRIBE, PUBLISH, DISCONNECT for either version;
//! - [`Incoming`]: what a client needs of a received CONNACK, SUBACK or PUBLISH;
//! - [`tap`] (feature `std`): frames raw bytes into a [`tap::Packet`] summary.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod build;
mod incoming;
#[cfg(feature = "std")]
pub mod tap;
mod version;

pub use incoming::Incoming;
pub use mqtt_protocol_core::mqtt::packet::Packet as CorePacket;
pub use mqtt_protocol_core::mqtt::result_code::MqttError;
pub use version::{MqttVersion, ParseVersionError};
