//! One time-ordered record of a scenario: device console lines, what the
//! cloud side saw, and what the runner did. The raw form is for humans; the
//! normalised form is what the insta snapshots review.

use regex::Regex;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Device,
    Cloud,
    Runner,
    /// The MQTT wire tap between device and broker.
    Wire,
    /// Measurements for humans (times, counts): raw transcript only.
    Note,
    /// Consoles of a scenario's extra devices: raw transcript only (their
    /// lines interleave with each other by timing).
    Fleet,
}

impl Source {
    pub fn label(&self) -> &'static str {
        match self {
            Source::Device => "device",
            Source::Cloud => "cloud ",
            Source::Runner => "runner",
            Source::Wire => "wire  ",
            Source::Note => "note  ",
            Source::Fleet => "fleet ",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub at: Duration,
    pub source: Source,
    pub text: String,
}

/// Told of every entry as it is recorded (the runner turns them into events).
pub type Sink = Arc<dyn Fn(&Entry) + Send + Sync>;

impl Entry {
    /// `[  1.234] device  @hil ...\n`: one line of the raw transcript.
    pub fn line(&self) -> String {
        format!(
            "[{:>4}.{:03}] {} {}\n",
            self.at.as_secs(),
            self.at.subsec_millis(),
            self.source.label(),
            self.text
        )
    }
}

#[derive(Clone)]
pub struct Transcript {
    start: Instant,
    entries: Arc<Mutex<Vec<Entry>>>,
    sink: Option<Sink>,
    /// The device under test's client ID: the normalised wire section keeps
    /// only its packets (a fleet's interleave by timing).
    focus: Arc<Mutex<Option<String>>>,
    /// Values no line may carry (the device's password): replaced before a
    /// line is kept or shown, and each replacement remembered, so a device
    /// that prints one fails without the report repeating it.
    secrets: Arc<Mutex<Vec<String>>>,
    leaks: Arc<Mutex<Vec<Source>>>,
}

impl Default for Transcript {
    fn default() -> Self {
        Self::new()
    }
}

/// Device events whose order is decided by the device alone, never by network
/// timing; the normalised transcript keeps only these so a snapshot is stable.
const STABLE_EVENTS: &[&str] = &[
    "boot",
    "id",
    "wifi",
    "mqtt.connack",
    "mqtt.subscribed",
    "cmd",
    "cmd.duplicate",
    "telemetry.buffered",
    "telemetry.dropped",
    "telemetry.refused",
    // Kept so behaviour cannot change unseen: a device that starts printing
    // errors, or stops answering a command, or sends a reading twice, changes
    // its snapshot. Their timing-dependent fields are normalised below, and a
    // line repeated back to back (a disconnect per failed attempt while the
    // broker is down) is kept once.
    "error",
    "ack",
    "mqtt.disconnected",
    "telemetry.sent",
];

/// Device events whose back-to-back repeats are one line in the snapshot:
/// how many attempts fail while a broker is down is timing.
const COLLAPSED_EVENTS: &[&str] = &["mqtt.disconnected", "telemetry.sent"];

fn filters() -> &'static [(Regex, &'static str)] {
    static F: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    F.get_or_init(|| {
        vec![
            (
                Regex::new(r#""uptime_ms":\d+"#).unwrap(),
                "\"uptime_ms\":<T>",
            ),
            (
                Regex::new(r"(delay_ms|lo_ms|hi_ms)=\d+").unwrap(),
                "$1=<MS>",
            ),
            (Regex::new(r"127\.\d+\.\d+\.\d+:\d+").unwrap(), "<ADDR>"),
            (Regex::new(r"/dev/pts/\d+").unwrap(), "<PTY>"),
            (Regex::new(r"after \d+\.\d+ s").unwrap(), "after <S>"),
            (Regex::new(r"-n[0-9a-f]{8}\b").unwrap(), "-<NONCE>"),
            // Whether a command arrives as a first delivery or a DUP resend
            // depends on when the broker noticed the outage; scenarios that
            // care assert on DUP themselves.
            (
                Regex::new(r"^(@hil cmd(?:\.duplicate)? id=\S+ qos=\d) dup=[01]").unwrap(),
                "$1 dup=<D>",
            ),
            // Whether a reading in flight is resent depends on when the link
            // died; telemetry_flush asserts DUP and payload on the wire itself.
            (
                Regex::new(r"^(@hil telemetry\.sent seq=\d+) dup=[01]").unwrap(),
                "$1 dup=<D>",
            ),
            // How a lost link shows depends on timing: a FIN (closed-by-peer),
            // a reset or a broken pipe, a refused connect. The device's own
            // reasons (wifi-down, keepalive, protocol, ...) are kept.
            (
                Regex::new(r#"^@hil mqtt\.disconnected reason=(?:closed-by-peer|"?(?:io-error|connect-failed):[^"]*"?)$"#).unwrap(),
                "@hil mqtt.disconnected reason=<LINK-LOST>",
            ),
            // The link state in a `!status` answer races the network.
            (
                Regex::new(r"^(@hil ack cmd=status .*)mqtt=(?:down|opening|connecting|connected)").unwrap(),
                "${1}mqtt=<LINK>",
            ),
        ]
    })
}

impl Transcript {
    pub fn new() -> Self {
        Transcript {
            start: Instant::now(),
            entries: Arc::new(Mutex::new(Vec::new())),
            sink: None,
            focus: Arc::new(Mutex::new(None)),
            secrets: Arc::default(),
            leaks: Arc::default(),
        }
    }

    /// From now on `secret` never appears in a line: it reads `<redacted>`.
    pub fn redact(&self, secret: &str) {
        if !secret.is_empty() {
            self.secrets.lock().unwrap().push(secret.to_string());
        }
    }

    /// Where redacted secrets turned up, one entry per line.
    pub fn leaks(&self) -> Vec<Source> {
        self.leaks.lock().unwrap().clone()
    }

    /// A transcript that also tells `sink` of every entry.
    pub fn with_sink(sink: Sink) -> Self {
        Transcript {
            sink: Some(sink),
            ..Transcript::new()
        }
    }

    /// Keeps the normalised wire section to this client's packets.
    pub fn focus_on(&self, client_id: &str) {
        *self.focus.lock().unwrap() = Some(client_id.to_string());
    }

    pub fn push(&self, source: Source, text: impl Into<String>) {
        let mut text = text.into();
        for secret in self.secrets.lock().unwrap().iter() {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "<redacted>");
                self.leaks.lock().unwrap().push(source);
            }
        }
        let entry = Entry {
            at: self.start.elapsed(),
            source,
            text,
        };
        if let Some(sink) = &self.sink {
            sink(&entry);
        }
        self.entries.lock().unwrap().push(entry);
    }

    pub fn runner(&self, text: impl Into<String>) {
        self.push(Source::Runner, text)
    }

    /// A figure that varies run to run: kept out of the normalised form.
    pub fn note(&self, text: impl Into<String>) {
        self.push(Source::Note, text)
    }

    pub fn cloud(&self, text: impl Into<String>) {
        self.push(Source::Cloud, text)
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().unwrap().clone()
    }

    /// `[  1.234] device  @hil ...`, every line, as it happened.
    pub fn raw(&self) -> String {
        self.entries().iter().map(Entry::line).collect()
    }

    /// Stable for review: the device's self-ordered events, then the runner's
    /// and the cloud's lines (both written by the scenario's own thread), with
    /// times, addresses and random delays replaced by tokens.
    pub fn normalized(&self) -> String {
        let entries = self.entries();
        let mut out = String::from("## device\n");
        let mut previous = String::new();
        for e in entries.iter().filter(|e| e.source == Source::Device) {
            let name = e
                .text
                .strip_prefix("@hil ")
                .and_then(|r| r.split(' ').next());
            if name.is_some_and(|n| STABLE_EVENTS.contains(&n)) {
                let line = normalize_line(&e.text);
                let repeat =
                    line == previous && name.is_some_and(|n| COLLAPSED_EVENTS.contains(&n));
                if !repeat {
                    out.push_str(&line);
                    out.push('\n');
                }
                previous = line;
            }
        }
        // Device-to-broker CONNECT and SUBSCRIBE: the device sends them in its
        // own order; everything else on the wire interleaves with network timing.
        out.push_str("## wire (device -> broker CONNECT, SUBSCRIBE)\n");
        let focus = self.focus.lock().unwrap().clone();
        for e in entries.iter().filter(|e| e.source == Source::Wire) {
            let mine = focus.as_ref().is_none_or(|id| {
                e.text.contains(&format!("client_id={id} ")) || e.text.contains(&format!("/{id}/"))
            });
            if mine
                && (e.text.contains("device -> broker CONNECT ")
                    || e.text.contains("device -> broker SUBSCRIBE "))
            {
                let text = e
                    .text
                    .split_once(' ')
                    .map(|(_, rest)| rest)
                    .unwrap_or(&e.text);
                out.push_str(&normalize_line(text));
                out.push('\n');
            }
        }
        out.push_str("## runner and cloud\n");
        for e in entries
            .iter()
            .filter(|e| e.source == Source::Runner || e.source == Source::Cloud)
        {
            out.push_str(e.source.label());
            out.push(' ');
            out.push_str(&normalize_line(&e.text));
            out.push('\n');
        }
        out
    }
}

impl std::fmt::Debug for Transcript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw())
    }
}

pub fn normalize_line(line: &str) -> String {
    let mut s = line.to_string();
    for (re, rep) in filters() {
        s = re.replace_all(&s, *rep).into_owned();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_keeps_only_stable_device_events() {
        let t = Transcript::new();
        t.push(Source::Device, "ESP-ROM:esp32c3");
        t.push(
            Source::Device,
            "@hil backoff attempt=1 delay_ms=312 lo_ms=250 hi_ms=500",
        );
        t.push(Source::Device, "@hil mqtt.connack session_present=1 rc=0");
        t.push(
            Source::Wire,
            "#1 device -> broker CONNECT client_id=x clean=0",
        );
        t.push(
            Source::Wire,
            "#1 broker -> device CONNACK session_present=0 rc=0",
        );
        t.cloud("telemetry {\"seq\":1,\"uptime_ms\":1234}");
        t.runner("broker 127.0.0.1:40111 killed");
        let n = t.normalized();
        assert_eq!(
            n,
            "## device\n@hil mqtt.connack session_present=1 rc=0\n\
             ## wire (device -> broker CONNECT, SUBSCRIBE)\ndevice -> broker CONNECT client_id=x clean=0\n\
             ## runner and cloud\n\
             cloud  telemetry {\"seq\":1,\"uptime_ms\":<T>}\nrunner broker <ADDR> killed\n"
        );
        assert!(t.raw().contains("delay_ms=312"));
        assert_eq!(
            normalize_line("@hil backoff delay_ms=9 lo_ms=1 hi_ms=2"),
            "@hil backoff delay_ms=<MS> lo_ms=<MS> hi_ms=<MS>"
        );
    }
}
