//! Provisioning: Wi-Fi credentials, broker address and protocol, the
//! session's timings, set at run time over the console (`!config
//! wifi.ssid=... wifi.pass=... broker=HOST:PORT keepalive=20`) and kept in
//! flash. Secrets are stored, never echoed. Everything but the broker takes
//! effect at the next boot (the runner provisions, then resets).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use hil_session::MqttVersion;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WifiCreds {
    pub ssid: String,
    pub pass: String,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub wifi: Option<WifiCreds>,
    pub broker: Option<(Ipv4Addr, u16)>,
    pub mqtt: MqttVersion,
    /// The session's timings and sizes: what the sim takes as flags.
    pub tuning: Tuning,
    /// Readings go to this topic instead of the device's own (feature
    /// `ingest-topic`), `!config telemetry.topic=...`.
    #[cfg(feature = "ingest-topic")]
    pub telemetry_topic: Option<String>,
    /// Negative controls (feature `controls`, never in a shipped image):
    /// `!config bugs=no-outbox,no-jitter`, or `bugs=` for none.
    #[cfg(feature = "controls")]
    pub bugs: Vec<hil_session::Bug>,
    /// TLS (feature `tls`): the CA (DER) the broker's certificate must chain
    /// to, `!config ca=<base64 of the DER>`, and the name it must be for,
    /// `!config tls.name=broker.example`.
    #[cfg(feature = "tls")]
    pub ca: Option<Vec<u8>>,
    #[cfg(feature = "tls")]
    pub tls_name: Option<String>,
    /// Mutual TLS: the device's certificate (DER) and its P-256 key
    /// (PKCS#8 DER), `!config tls.cert=<base64> tls.key=<base64>`.
    #[cfg(feature = "tls")]
    pub client: Option<(Vec<u8>, Vec<u8>)>,
    /// MQTT User Name and Password (feature `tls`: a login is only sent
    /// inside TLS), `!config mqtt.user=... mqtt.pass=...`; taken at boot.
    #[cfg(feature = "tls")]
    pub login: Option<(String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            wifi: None,
            broker: None,
            mqtt: MqttVersion::V3_1_1,
            tuning: Tuning::default(),
            #[cfg(feature = "ingest-topic")]
            telemetry_topic: None,
            #[cfg(feature = "controls")]
            bugs: Vec::new(),
            #[cfg(feature = "tls")]
            ca: None,
            #[cfg(feature = "tls")]
            tls_name: None,
            #[cfg(feature = "tls")]
            client: None,
            #[cfg(feature = "tls")]
            login: None,
        }
    }
}

/// The session's timings and sizes, each bounded: `!config keepalive=20
/// session.expiry=60 backoff.base_ms=200 backoff.cap_ms=2000
/// connack.timeout_ms=2000 ack.timeout_ms=2000 cmd.qos=1 outbox=8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    pub keepalive_s: u16,
    pub session_expiry_s: u32,
    pub backoff_base_ms: u32,
    pub backoff_cap_ms: u32,
    pub connack_timeout_ms: u32,
    pub ack_timeout_ms: u32,
    pub cmd_qos: u8,
    pub outbox: u16,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            keepalive_s: 30,
            session_expiry_s: 3600,
            backoff_base_ms: 500,
            backoff_cap_ms: 30_000,
            connack_timeout_ms: 10_000,
            ack_timeout_ms: 10_000,
            cmd_qos: 1,
            outbox: crate::store::OUTBOX_CAPACITY as u16,
        }
    }
}

/// One number within `lo..=hi`, or a message naming the setting and range.
fn bounded<T>(key: &str, v: &str, lo: T, hi: T) -> Result<T, String>
where
    T: core::str::FromStr + PartialOrd + core::fmt::Display + Copy,
{
    match v.parse::<T>() {
        Ok(n) if n >= lo && n <= hi => Ok(n),
        _ => Err(alloc::format!("{key}: a number from {lo} to {hi}")),
    }
}

/// A day: the longest backoff or timeout a setting takes.
const DAY_MS: u32 = 86_400_000;

pub struct Changed {
    pub wifi: bool,
}

fn parse_broker(v: &str) -> Result<(Ipv4Addr, u16), String> {
    let (host, port) = v
        .rsplit_once(':')
        .ok_or("broker=IPV4:PORT, e.g. 192.168.1.10:1883")?;
    let ip: Ipv4Addr = host
        .parse()
        .map_err(|_| "broker: an IPv4 address (names are not resolved on the device)")?;
    let port: u16 = port.parse().map_err(|_| "broker: port is a number")?;
    Ok((ip, port))
}

/// A DER value (a certificate, a PKCS#8 key) given in base64: one DER
/// SEQUENCE of at most 2 KiB.
#[cfg(feature = "tls")]
fn der_field(key: &str, v: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(v.as_bytes())
        .map_err(|_| alloc::format!("{key}: DER, in base64"))?;
    if der.first() != Some(&0x30) || der.len() > 2048 {
        return Err(alloc::format!(
            "{key}: one DER SEQUENCE of at most 2048 bytes"
        ));
    }
    Ok(der)
}

const TUNING_KEYS: &str = "keepalive, session.expiry, backoff.base_ms, backoff.cap_ms, connack.timeout_ms, ack.timeout_ms, cmd.qos, outbox";

impl Settings {
    /// Applies `!config` fields; all or nothing.
    pub fn apply(&mut self, fields: &[(String, String)]) -> Result<Changed, String> {
        let mut next = self.clone();
        let mut ssid = self.wifi.as_ref().map(|w| w.ssid.clone());
        let mut pass = self.wifi.as_ref().map(|w| w.pass.clone());
        for (k, v) in fields {
            match k.as_str() {
                "wifi.ssid" => {
                    if v.is_empty() || v.len() > 32 {
                        return Err("wifi.ssid: 1 to 32 bytes".into());
                    }
                    ssid = Some(v.clone());
                }
                "wifi.pass" => {
                    if v.len() > 64 {
                        return Err("wifi.pass: at most 64 bytes".into());
                    }
                    pass = Some(v.clone());
                }
                "broker" => next.broker = Some(parse_broker(v)?),
                "mqtt" => {
                    next.mqtt = v
                        .parse()
                        .map_err(|e: hil_session::config::ParseVersionError| e.to_string())?
                }
                "keepalive" => next.tuning.keepalive_s = bounded(k, v, 1, u16::MAX)?,
                "session.expiry" => next.tuning.session_expiry_s = bounded(k, v, 0, u32::MAX)?,
                "backoff.base_ms" => next.tuning.backoff_base_ms = bounded(k, v, 1, DAY_MS)?,
                "backoff.cap_ms" => next.tuning.backoff_cap_ms = bounded(k, v, 1, DAY_MS)?,
                "connack.timeout_ms" => {
                    next.tuning.connack_timeout_ms = bounded(k, v, 1, DAY_MS)?
                }
                "ack.timeout_ms" => next.tuning.ack_timeout_ms = bounded(k, v, 1, DAY_MS)?,
                "cmd.qos" => next.tuning.cmd_qos = bounded(k, v, 0, 2)?,
                "outbox" => {
                    next.tuning.outbox =
                        bounded(k, v, 1, crate::store::OUTBOX_CAPACITY as u16)?
                }
                #[cfg(feature = "ingest-topic")]
                "telemetry.topic" => {
                    next.telemetry_topic = match v.as_str() {
                        "" => None,
                        t if t.len() > 128 || t.contains(['+', '#']) => {
                            return Err(
                                "telemetry.topic: a topic name of at most 128 bytes, no wildcards"
                                    .into(),
                            )
                        }
                        t => Some(t.into()),
                    }
                }
                #[cfg(feature = "controls")]
                "bugs" => {
                    let mut bugs = Vec::new();
                    for name in v.split(',').filter(|n| !n.is_empty()) {
                        let bug: hil_session::Bug = name
                            .parse()
                            .map_err(|e: hil_session::config::UnknownBug| e.to_string())?;
                        if !bugs.contains(&bug) {
                            bugs.push(bug);
                        }
                    }
                    next.bugs = bugs;
                }
                #[cfg(feature = "tls")]
                "ca" => next.ca = Some(der_field("ca", v)?),
                #[cfg(feature = "tls")]
                "tls.cert" => {
                    let key = next.client.take().map(|c| c.1).unwrap_or_default();
                    next.client = Some((der_field("tls.cert", v)?, key));
                }
                #[cfg(feature = "tls")]
                "tls.key" => {
                    let cert = next.client.take().map(|c| c.0).unwrap_or_default();
                    next.client = Some((cert, der_field("tls.key", v)?));
                }
                #[cfg(feature = "tls")]
                "tls.name" => {
                    if v.is_empty() || v.len() > 64 {
                        return Err("tls.name: 1 to 64 bytes".into());
                    }
                    next.tls_name = Some(v.clone());
                }
                #[cfg(feature = "tls")]
                "mqtt.user" => {
                    let pass = next.login.take().map(|l| l.1).unwrap_or_default();
                    next.login = Some((v.clone(), pass));
                }
                #[cfg(feature = "tls")]
                "mqtt.pass" => {
                    let user = next.login.take().map(|l| l.0).unwrap_or_default();
                    next.login = Some((user, v.clone()));
                }
                other => {
                    return Err(alloc::format!(
                        "unknown setting `{other}` (wifi.ssid, wifi.pass, broker, mqtt, {TUNING_KEYS}{}{}{})",
                        if cfg!(feature = "tls") {
                            ", ca, tls.name, tls.cert, tls.key, mqtt.user, mqtt.pass"
                        } else {
                            ""
                        },
                        if cfg!(feature = "ingest-topic") {
                            ", telemetry.topic"
                        } else {
                            ""
                        },
                        if cfg!(feature = "controls") {
                            ", bugs"
                        } else {
                            ""
                        }
                    ))
                }
            }
        }
        if let Some(ssid) = ssid {
            next.wifi = Some(WifiCreds {
                ssid,
                pass: pass.unwrap_or_default(),
            });
        }
        let changed = Changed {
            wifi: next.wifi != self.wifi,
        };
        *self = next;
        Ok(changed)
    }

    /// `key=value` lines, the format kept in flash.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::new();
        if let Some(w) = &self.wifi {
            s.push_str(&alloc::format!(
                "wifi.ssid={}\nwifi.pass={}\n",
                w.ssid,
                w.pass
            ));
        }
        if let Some((ip, port)) = self.broker {
            s.push_str(&alloc::format!("broker={ip}:{port}\n"));
        }
        s.push_str(&alloc::format!("mqtt={}\n", self.mqtt));
        let t = &self.tuning;
        s.push_str(&alloc::format!(
            "keepalive={}\nsession.expiry={}\nbackoff.base_ms={}\nbackoff.cap_ms={}\nconnack.timeout_ms={}\nack.timeout_ms={}\ncmd.qos={}\noutbox={}\n",
            t.keepalive_s,
            t.session_expiry_s,
            t.backoff_base_ms,
            t.backoff_cap_ms,
            t.connack_timeout_ms,
            t.ack_timeout_ms,
            t.cmd_qos,
            t.outbox
        ));
        #[cfg(feature = "ingest-topic")]
        if let Some(topic) = &self.telemetry_topic {
            s.push_str(&alloc::format!("telemetry.topic={topic}\n"));
        }
        #[cfg(feature = "controls")]
        if !self.bugs.is_empty() {
            let names: Vec<&str> = self.bugs.iter().map(|b| b.name()).collect();
            s.push_str(&alloc::format!("bugs={}\n", names.join(",")));
        }
        #[cfg(feature = "tls")]
        {
            use base64::Engine;
            if let Some(ca) = &self.ca {
                let b64 = base64::engine::general_purpose::STANDARD.encode(ca);
                s.push_str(&alloc::format!("ca={b64}\n"));
            }
            if let Some(n) = &self.tls_name {
                s.push_str(&alloc::format!("tls.name={n}\n"));
            }
            if let Some((cert, key)) = &self.client {
                let cert = base64::engine::general_purpose::STANDARD.encode(cert);
                let key = base64::engine::general_purpose::STANDARD.encode(key);
                s.push_str(&alloc::format!("tls.cert={cert}\ntls.key={key}\n"));
            }
            if let Some((u, p)) = &self.login {
                s.push_str(&alloc::format!("mqtt.user={u}\nmqtt.pass={p}\n"));
            }
        }
        s.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Settings {
        let mut out = Settings::default();
        let Ok(text) = core::str::from_utf8(bytes) else {
            return out;
        };
        let fields: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // One field at a time: a field this build does not know (or no
        // longer accepts) costs only itself, not the Wi-Fi or the broker.
        for field in fields.chunks(1) {
            let _ = out.apply(field);
        }
        out
    }
}
