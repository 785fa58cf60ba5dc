//! The device's MQTT session logic, written once and run unchanged on the
//! ESP32-C3 firmware and on the host-native device (`hil-sim`).
//!
//! Sans-I/O, in the style of quinn-proto: the caller feeds inputs together with
//! `now` (milliseconds of a monotonic clock it owns) and polls outputs. The
//! machine never reads a clock, a socket or a random number generator of its own.
//!
//! ```text
//!   inputs                         Device                     outputs (poll_output)
//!   handle_link_up(now)        ┌──────────────┐   Output::Open / Close (TCP)
//!   handle_link_down(now, ..)  │ mqtt engine  │   Output::Transmit(bytes)
//!   handle_bytes(now, bytes)   │ backoff      │   Output::Persist(record)
//!   handle_timeout(now)        │ outbox/inbox │   Output::Console(event)
//!   handle_command(now, cmd)   └──────────────┘   Output::Wifi(on) / Reboot
//!                                                  poll_timeout() -> next wake-up
//! ```
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod backoff;
pub mod config;
pub mod console;
pub mod device;
pub mod fuzzing;
pub mod guard;
pub mod identity;
pub mod inbox;
mod mqtt;
pub mod outbox;
pub mod persist;
pub mod sizing;

pub use backoff::{Backoff, RandomSource};
pub use config::{Bug, Bugs, Config, MqttVersion};
#[cfg(feature = "login")]
pub use config::{Credentials, Secret};
pub use console::{Command, Event};
pub use device::{Device, LinkDownReason, Output};
pub use identity::{client_id, Mac, Topics};
pub use persist::{Record, RecordKey};
