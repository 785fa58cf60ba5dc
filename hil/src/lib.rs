//! The HIL runner. Read it top-down:
//! - [`scenarios`]: one file per scenario: its promise, needs, device spec,
//!   negative controls and steps; the registry;
//! - [`testbed`]: what a scenario acts on: broker, fault proxy and wire tap
//!   (packet rules), cloud clients, the device; plain verbs;
//! - [`dut`]: the device under test, seen only as a console and a network
//!   connection; one file per backend (sim, serial/probe, wokwi);
//! - [`runner`]: puts a testbed together per scenario, decides the verdict,
//!   emits events; never prints;
//! - [`report`]: renders the events (terminal, transcripts, JUnit);
//! - [`transcript`]: every console line, wire packet, cloud observation and
//!   runner step of a scenario, time-ordered;
//! - [`bench`]: boards on a bench (rig file, flashing, images);
//! - [`doctor`]: `hil doctor`, checks this host and a rig's boards;
//! - [`soak`]: `hil soak`, seeded chaos with a delivery ledger;
//! - [`size`]: `hil size`, the reference text's calculators;
//! - [`fleet`]: `hil fleet`, thousands of session cores in this process
//!   against one broker: storms, queue memory, deliveries.

pub mod bench;
pub mod doctor;
pub mod dut;
pub mod fleet;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod size;
pub mod soak;
pub mod testbed;
pub mod transcript;
