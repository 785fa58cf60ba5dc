//! Rig files: the boards of a bench rig, the address its broker binds on the
//! rig's LAN, and where Wi-Fi credentials come from (environment variables,
//! never the file).
//!
//! ```toml
//! [broker]
//! bind = "192.168.50.1"          # an address of this host the boards can reach
//!
//! [wifi]
//! ssid_env = "HIL_WIFI_SSID"
//! pass_env = "HIL_WIFI_PASS"
//!
//! [[board]]
//! name = "c3-a"
//! chip = "esp32c3"
//! port = "/dev/ttyACM0"          # or usb_serial = "F4:12:FA:..." (stable across replugs)
//! probe = "303a:1001"            # optional: VID:PID[:SERIAL] for probe-rs
//! mac = "24:0a:c4:12:34:56"      # expected factory MAC: the client ID is checked against it
//! tls = true                     # optional: its firmware is built with --features tls
//! ```

use super::RigFileError;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rig {
    pub broker: BrokerSection,
    pub wifi: Option<WifiSection>,
    #[serde(rename = "board", default)]
    pub boards: Vec<Board>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    pub bind: IpAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WifiSection {
    pub ssid_env: String,
    pub pass_env: String,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub name: String,
    #[serde(default = "default_chip")]
    pub chip: String,
    pub port: Option<String>,
    pub usb_serial: Option<String>,
    pub probe: Option<String>,
    pub mac: Option<String>,
    /// Its firmware speaks MQTT over TLS (built with `--features tls`): the
    /// runner provisions the run's CA over the console.
    #[serde(default)]
    pub tls: bool,
}

fn default_chip() -> String {
    "esp32c3".into()
}

impl Rig {
    pub fn load(path: &Path) -> Result<Rig, RigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| RigFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Rig::parse(&text).map_err(|e| RigFileError::Invalid {
            path: path.display().to_string(),
            source: Box::new(e),
        })
    }

    pub fn parse(text: &str) -> Result<Rig, RigFileError> {
        let rig: Rig = toml::from_str(text)?;
        if rig.boards.is_empty() {
            return Err(RigFileError::NoBoards);
        }
        for b in &rig.boards {
            if b.port.is_none() && b.usb_serial.is_none() {
                return Err(RigFileError::NoPort(b.name.clone()));
            }
            if let Some(mac) = &b.mac {
                mac.parse::<hil_session::Mac>()
                    .map_err(|e| RigFileError::BadMac {
                        board: b.name.clone(),
                        mac: mac.clone(),
                        reason: e.to_string(),
                    })?;
            }
            b.chip
                .parse::<espflash::target::Chip>()
                .map_err(|_| RigFileError::UnknownChip {
                    board: b.name.clone(),
                    chip: b.chip.clone(),
                })?;
        }
        let mut names: Vec<&str> = rig.boards.iter().map(|b| b.name.as_str()).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(RigFileError::DuplicateBoard(w[0].into()));
        }
        Ok(rig)
    }

    pub fn board(&self, name: Option<&str>) -> Result<&Board, RigFileError> {
        match name {
            Some(n) => self.boards.iter().find(|b| b.name == n).ok_or_else(|| {
                let names: Vec<&str> = self.boards.iter().map(|b| b.name.as_str()).collect();
                RigFileError::NoSuchBoard {
                    name: n.into(),
                    known: names.join(", "),
                }
            }),
            None if self.boards.len() == 1 => Ok(&self.boards[0]),
            None => Err(RigFileError::WhichBoard),
        }
    }

    /// Credentials from the environment; a named variable that is unset is an error.
    pub fn wifi_credentials(&self) -> Result<Option<(String, String)>, RigFileError> {
        let Some(w) = &self.wifi else { return Ok(None) };
        let get = |v: &str| std::env::var(v).map_err(|_| RigFileError::WifiEnvUnset(v.into()));
        Ok(Some((get(&w.ssid_env)?, get(&w.pass_env)?)))
    }
}

impl Board {
    /// The port path: as given, or found by USB serial number.
    pub fn resolve_port(&self) -> Result<String, RigFileError> {
        if let Some(p) = &self.port {
            return Ok(p.clone());
        }
        let sn = self.usb_serial.as_deref().unwrap_or_default();
        find_by_usb_serial(sn).ok_or_else(|| RigFileError::PortNotFound {
            board: self.name.clone(),
            serial: sn.into(),
        })
    }
}

/// Finds a port by USB serial number. Without libudev (a build choice: no
/// system library needed) ports are enumerated from sysfs.
pub fn find_by_usb_serial(sn: &str) -> Option<String> {
    list_ports()
        .into_iter()
        .find(|p| p.serial.as_deref() == Some(sn))
        .map(|p| p.path)
}

#[derive(Debug, Clone)]
pub struct PortInfo {
    pub path: String,
    pub serial: Option<String>,
    pub product: Option<String>,
}

/// Serial ports: what serialport finds, with USB details read from sysfs.
pub fn list_ports() -> Vec<PortInfo> {
    let ports = serialport::available_ports().unwrap_or_default();
    ports
        .into_iter()
        .map(|p| {
            let name = p
                .port_name
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let dev = Path::new("/sys/class/tty").join(&name).join("device");
            let usb = [dev.join(".."), dev.join("../..")];
            let read = |f: &str| {
                usb.iter().find_map(|d| {
                    std::fs::read_to_string(d.join(f))
                        .ok()
                        .map(|s| s.trim().to_string())
                })
            };
            PortInfo {
                path: p.port_name,
                serial: read("serial"),
                product: read("product"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_rig_parses() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/rigs/example.toml"
        ))
        .unwrap();
        let rig = Rig::parse(&text).unwrap();
        assert_eq!(rig.boards.len(), 2);
        assert!(rig.board(None).is_err());
        assert_eq!(rig.board(Some("c3-a")).unwrap().chip, "esp32c3");
    }

    #[test]
    fn broken_rigs_say_what_is_wrong() {
        let cases = [
            ("[broker]\nbind = \"nope\"\n[[board]]\nname=\"a\"\nport=\"/dev/x\"", "invalid IP"),
            ("[broker]\nbind = \"127.0.0.1\"\n", "no [[board]]"),
            ("[broker]\nbind = \"127.0.0.1\"\n[[board]]\nname=\"a\"", "give `port` or `usb_serial`"),
            ("[broker]\nbind = \"127.0.0.1\"\n[[board]]\nname=\"a\"\nport=\"/x\"\nmac=\"zz\"", "mac zz"),
            ("[broker]\nbind = \"127.0.0.1\"\n[[board]]\nname=\"a\"\nport=\"/x\"\nchip=\"z80\"", "unknown chip"),
            ("[broker]\nbind = \"127.0.0.1\"\n[[board]]\nname=\"a\"\nport=\"/x\"\ncolour=1", "unknown field"),
            ("[broker]\nbind = \"127.0.0.1\"\n[[board]]\nname=\"a\"\nport=\"/x\"\n[[board]]\nname=\"a\"\nport=\"/y\"", "two boards named"),
            ("this is not toml", "expected"),
        ];
        for (text, want) in cases {
            let err = Rig::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn missing_env_is_named() {
        let rig = Rig::parse("[broker]\nbind=\"127.0.0.1\"\n[wifi]\nssid_env=\"HIL_TEST_UNSET_SSID\"\npass_env=\"HIL_TEST_UNSET_PASS\"\n[[board]]\nname=\"a\"\nport=\"/x\"").unwrap();
        assert!(rig
            .wifi_credentials()
            .unwrap_err()
            .to_string()
            .contains("$HIL_TEST_UNSET_SSID"));
    }
}
