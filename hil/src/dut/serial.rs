//! The serial backend: a board (or anything that speaks the console
//! protocol) on a serial port. Flashed once per run (espflash, or probe-rs
//! through a debug probe), then per scenario provisioned with the fault
//! proxy's address and reset, so it boots straight into that scenario.

use super::{client_id_of, Backend, Capability, Console, Dut, DutError, Power, Provision};
use crate::transcript::Source;
use hil_session::Event;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct SerialOptions {
    pub port: String,
    /// Flash through a debug probe (probe-rs, selector VID:PID[:SERIAL] or the
    /// only one attached) instead of the serial ROM bootloader.
    pub probe: Option<Option<String>>,
    /// Flash this ELF first (None with --no-flash).
    pub elf: Option<PathBuf>,
    pub chip: espflash::target::Chip,
    pub wifi: Option<(String, String)>,
    /// Expected MAC (from the rig file), to check the client ID.
    pub mac: Option<String>,
}

pub struct SerialBackend(pub SerialOptions);

const CAPS: &[Capability] = &[
    Capability::ReachesBroker,
    Capability::WifiToggle,
    Capability::Reset,
    Capability::BrokerRestart,
    Capability::LinkFaults,
];

/// How long a board has to boot after a reset.
const BOOT: Duration = Duration::from_secs(15);

/// A board's power is not ours to cut; its reset line (DTR/RTS) is.
struct Board {
    port: Box<dyn serialport::SerialPort>,
}

impl Power for Board {
    fn off(&mut self) -> Result<(), DutError> {
        Err(DutError::NoPowerSwitch("serial"))
    }

    fn on(&mut self) -> Result<Console, DutError> {
        Err(DutError::NoPowerSwitch("serial"))
    }

    fn reset_pulse(&mut self) -> bool {
        let pulse = self
            .port
            .write_data_terminal_ready(false)
            .and_then(|_| self.port.write_request_to_send(true))
            .and_then(|_| {
                // EN held low: the reset pulse itself.
                std::thread::sleep(Duration::from_millis(100));
                self.port.write_request_to_send(false)
            });
        pulse.is_ok()
    }
}

fn quote(v: &str) -> String {
    let mut out = String::new();
    hil_session::console::push_value(&mut out, v);
    out
}

impl Backend for SerialBackend {
    fn name(&self) -> &'static str {
        if self.0.probe.is_some() {
            "probe"
        } else {
            "serial"
        }
    }

    fn capabilities(&self) -> &'static [Capability] {
        CAPS
    }

    fn prepare(&self) -> Result<(), DutError> {
        let o = &self.0;
        let Some(elf) = &o.elf else { return Ok(()) };
        eprintln!(
            "hil: flashing {} to {} (unchanged regions are skipped)",
            elf.display(),
            o.port
        );
        match &o.probe {
            Some(selector) => crate::bench::probe::flash(selector.as_deref(), elf, o.chip)?,
            None => crate::bench::flash::flash(&o.port, elf, o.chip)?,
        }
        Ok(())
    }

    fn bring_up(&self, p: &Provision) -> Result<Dut, DutError> {
        let o = &self.0;
        p.transcript
            .runner(format!("open serial device {}", o.port));
        let (mut console, control) = Console::on_port(&o.port, p.transcript, Source::Device)?;
        console.release_on_drop();
        let mut dut = Dut::new(console, self.name(), Box::new(Board { port: control }));
        // Provision first (kept in the board's flash), then reset: the
        // board boots straight into this scenario's broker.
        let mut line = format!("!config broker={} mqtt={}", p.broker, p.mqtt);
        if let Some((ssid, pass)) = &o.wifi {
            line.push_str(&format!(
                " wifi.ssid={} wifi.pass={}",
                quote(ssid),
                quote(pass)
            ));
        }
        // No connection until the board has rebooted: a session the board
        // opened between provisioning and reset (CONNACK, then reset before
        // its SUBACK) would come back as session_present=1 without the
        // subscription.
        (p.hold_connections)(true);
        let booted = dut
            .command(&line)
            .map_err(|e| DutError::Provision(Box::new(e)))
            .and_then(|_| dut.reset())
            .and_then(|_| {
                dut.expect("boot after reset", BOOT, |e| {
                    matches!(e, Event::Boot { .. })
                })
                .map_err(|e| DutError::NoBoot(Box::new(e)))
            });
        (p.hold_connections)(false);
        booted?;
        Ok(dut)
    }

    fn expected_client_id(&self, _mac: &str) -> Option<String> {
        self.0.mac.as_deref().and_then(client_id_of)
    }
}
