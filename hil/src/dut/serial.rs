//! The serial backend: a board (or anything that speaks the console
//! protocol) on a serial port. Flashed once per run (espflash, or probe-rs
//! through a debug probe), then per scenario provisioned with the fault
//! proxy's address and reset, so it boots straight into that scenario.

use super::{client_id_of, quote, Backend, Capability, Console, Dut, DutError, Power, Provision};
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
    /// The firmware speaks MQTT over TLS (`--features tls`): the run's CA,
    /// the broker's name and any login are provisioned over the console.
    pub tls: bool,
}

pub struct SerialBackend(pub SerialOptions);

const CAPS: &[Capability] = &[
    Capability::ReachesBroker,
    Capability::WifiToggle,
    Capability::Reset,
    Capability::BrokerRestart,
    Capability::LinkFaults,
];

/// A board whose firmware has the `tls` feature.
const CAPS_TLS: &[Capability] = &[
    Capability::ReachesBroker,
    Capability::WifiToggle,
    Capability::Reset,
    Capability::BrokerRestart,
    Capability::LinkFaults,
    Capability::Tls,
    Capability::Login,
];

/// `ca=<base64 DER> tls.name=<name>`: the firmware's TLS provisioning, from
/// the run's CA file (PEM).
fn tls_fields(ca_file: &std::path::Path, name: &str) -> Result<String, DutError> {
    use base64::Engine;
    let der = first_cert(ca_file)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    Ok(format!(" ca={b64} tls.name={}", quote(name)))
}

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

fn read_pem(f: &std::path::Path) -> Result<Vec<u8>, DutError> {
    std::fs::read(f)
        .map_err(|e| DutError::Provisioning(format!("cannot read {}: {e}", f.display())))
}

/// The first certificate of a PEM file, as DER.
fn first_cert(f: &std::path::Path) -> Result<rustls::pki_types::CertificateDer<'static>, DutError> {
    rustls_pemfile::certs(&mut read_pem(f)?.as_slice())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| DutError::Provisioning(format!("{} holds no PEM certificate", f.display())))
}

/// Mutual TLS on a board: its certificate (DER) and its key (PKCS#8 DER),
/// each in base64, from the PEM files the runner made.
fn client_fields(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<(String, String), DutError> {
    use base64::Engine;
    let cert = first_cert(cert_file)?;
    let key = rustls_pemfile::private_key(&mut read_pem(key_file)?.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| {
            DutError::Provisioning(format!("{} holds no PEM private key", key_file.display()))
        })?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok((b64.encode(cert.as_ref()), b64.encode(key.secret_der())))
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
        if self.0.tls {
            CAPS_TLS
        } else {
            CAPS
        }
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
        if let Some(tls) = &p.tls {
            line.push_str(&tls_fields(tls.ca_file, tls.server_name)?);
            if let Some((cert, key)) = tls.client {
                let (cert, key) = client_fields(cert, key)?;
                // The key is a secret: the transcript never shows it.
                p.transcript.redact(&key);
                line.push_str(&format!(" tls.cert={cert} tls.key={key}"));
            }
        }
        // A login: its password from the runner's file (the transcript
        // redacts it: the runner registered it before it wrote the file).
        if let Some((user, file)) = p.login {
            let pass = std::fs::read_to_string(file).map_err(|e| {
                DutError::Provisioning(format!("cannot read {}: {e}", file.display()))
            })?;
            line.push_str(&format!(
                " mqtt.user={} mqtt.pass={}",
                quote(user),
                quote(pass.trim_end())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_goes_to_a_board_as_the_base64_of_its_der() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let pki =
            crate::testbed::pki::TestPki::make(dir.path(), "127.0.0.1".parse().unwrap()).unwrap();
        let fields = tls_fields(&pki.ca_file, "broker.hil.test").unwrap();
        let b64 = fields
            .strip_prefix(" ca=")
            .and_then(|r| r.strip_suffix(" tls.name=broker.hil.test"))
            .unwrap_or_else(|| panic!("{fields}"));
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let pem = std::fs::read(&pki.ca_file).unwrap();
        let want = rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(der, want.as_ref());
        // What the firmware's `!config ca=` accepts: one DER SEQUENCE of at
        // most 2 KiB, inside one console line.
        assert_eq!(der[0], 0x30);
        assert!(der.len() <= 2048);
        assert!(fields.len() < hil_session::console::MAX_LINE);
        // A file without a certificate is a clear error, not an empty CA.
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(tls_fields(&empty, "x")
            .unwrap_err()
            .to_string()
            .contains("no PEM certificate"));
    }
}
