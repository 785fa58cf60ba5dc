//! The HIL runner. Modules mirror its concepts:
//! - [`transcript`]: every console line, cloud observation and runner action, time-ordered;
//! - [`dut`]: the device under test, driven only through its console and the network;
//! - [`scenario`]: what each scenario does and which promise it guards;
//! - [`run`]: brokers, devices and scenarios put together; summary, transcripts, JUnit.

pub mod doctor;
pub mod dut;
pub mod faults;
pub mod firmware;
pub mod flash;
pub mod probe;
pub mod rig;
pub mod run;
pub mod scenario;
pub mod transcript;
pub mod wire;
