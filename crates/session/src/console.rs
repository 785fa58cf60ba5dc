//! The serial console protocol, one definition for both sides.
//!
//! Device → host: lines `@hil <event> key=value ...`; values that are empty or
//! contain spaces, quotes, `=` or control characters are double-quoted with
//! backslash escapes. Every other line (ROM boot text, logs, panics) is plain
//! text: kept by the runner, never parsed as an event.
//!
//! Host → device: `!wifi off`, `!wifi on`, `!reboot`, `!telemetry N`,
//! `!status`, `!config key=value ...`; each answered by `@hil ack cmd=...` or
//! `@hil error ...`.
//!
//! Written by hand: the grammar is ten lines, must run in `no_std` on the chip,
//! and has to survive any byte sequence; a parser-combinator crate would add
//! more code than it saves.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Marks a protocol line among everything else on the serial console.
pub const MARKER: &str = "@hil";
/// Longest line either side accepts; longer input is discarded up to its newline.
pub const MAX_LINE: usize = 4096;

/// The generic form of a protocol line: a name and ordered key/value fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub name: String,
    pub fields: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    NotProtocol,
    MissingName,
    BadToken(String),
    UnterminatedQuote,
    MissingField { event: String, key: &'static str },
    BadValue { key: String, value: String },
    UnknownEvent(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotProtocol => write!(f, "not a `{MARKER}` line"),
            ParseError::MissingName => f.write_str("protocol line without an event name"),
            ParseError::BadToken(t) => write!(f, "expected key=value, found `{t}`"),
            ParseError::UnterminatedQuote => f.write_str("unterminated quoted value"),
            ParseError::MissingField { event, key } => write!(f, "`{event}` lacks `{key}=`"),
            ParseError::BadValue { key, value } => write!(f, "bad value `{value}` for `{key}`"),
            ParseError::UnknownEvent(e) => write!(f, "unknown event `{e}`"),
        }
    }
}

fn needs_quotes(v: &str) -> bool {
    v.is_empty()
        || v.chars()
            .any(|c| c == ' ' || c == '"' || c == '\\' || c == '=' || c.is_control())
}

/// Appends `v`, quoted and escaped if it needs to be.
pub fn push_value(out: &mut String, v: &str) {
    if !needs_quotes(v) {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Splits `key=value key="quoted value"` into pairs.
fn parse_fields(mut rest: &str) -> Result<Vec<(String, String)>, ParseError> {
    let mut fields = Vec::new();
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            return Ok(fields);
        }
        let eq = rest.find('=');
        let space = rest.find(' ').unwrap_or(rest.len());
        let eq = match eq {
            Some(eq) if eq < space && eq > 0 => eq,
            _ => return Err(ParseError::BadToken(rest[..space].to_owned())),
        };
        let key = rest[..eq].to_owned();
        rest = &rest[eq + 1..];
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, 'r')) => value.push('\r'),
                        Some((_, 't')) => value.push('\t'),
                        Some((_, 'u')) => {
                            // \u{hex}
                            let mut hex = String::new();
                            let mut closed = false;
                            for (_, h) in chars.by_ref() {
                                match h {
                                    '{' => {}
                                    '}' => {
                                        closed = true;
                                        break;
                                    }
                                    h => hex.push(h),
                                }
                            }
                            let c = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                            match (closed, c) {
                                (true, Some(c)) => value.push(c),
                                _ => return Err(ParseError::UnterminatedQuote),
                            }
                        }
                        Some((_, c)) => value.push(c),
                        None => return Err(ParseError::UnterminatedQuote),
                    },
                    c => value.push(c),
                }
            }
            let end = end.ok_or(ParseError::UnterminatedQuote)?;
            rest = &quoted[end..];
            fields.push((key, value));
        } else {
            let space = rest.find(' ').unwrap_or(rest.len());
            fields.push((key, rest[..space].to_owned()));
            rest = &rest[space..];
        }
    }
}

/// Longest field value a device prints, in bytes (before quoting).
pub const MAX_VALUE: usize = 512;

/// FNV-1a, 64 bit, as 16 hex digits: a digest of a command's payload that a
/// no_std device computes in a loop of two operations. Not a security hash
/// (a device could compute it from anything); it is checked against the
/// payload the wire carried, to show what was executed was intact. By hand:
/// six lines, and no crate is needed on the chip for it.
pub fn fnv1a64(data: &[u8]) -> alloc::string::String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Hex by hand: the chip's image has no other use for u64 hex formatting.
    (0..16)
        .rev()
        .map(|i| char::from(b"0123456789abcdef"[((h >> (i * 4)) & 0xf) as usize]))
        .collect()
}

fn bounded(mut v: String) -> String {
    if v.len() <= MAX_VALUE {
        return v;
    }
    let mut cut = MAX_VALUE;
    while !v.is_char_boundary(cut) {
        cut -= 1;
    }
    let rest = v.len() - cut;
    v.truncate(cut);
    v.push_str(&alloc::format!("...[+{rest} bytes]"));
    v
}

impl Line {
    pub fn new(name: &str) -> Self {
        Line {
            name: name.to_owned(),
            fields: Vec::new(),
        }
    }

    /// Adds `key=value`; a value longer than [`MAX_VALUE`] bytes is cut at a
    /// character boundary and ends in `...[+N bytes]`, so one line stays
    /// bounded whatever the network sent (a 2 MB payload is not a 2 MB line).
    pub fn field(mut self, key: &str, value: impl ToString) -> Self {
        self.fields
            .push((key.to_owned(), bounded(value.to_string())));
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `@hil <name> k=v ...`
    pub fn format(&self) -> String {
        let mut out = String::from(MARKER);
        out.push(' ');
        out.push_str(&self.name);
        for (k, v) in &self.fields {
            out.push(' ');
            out.push_str(k);
            out.push('=');
            push_value(&mut out, v);
        }
        out
    }

    /// Parses a line that starts with the marker; trailing `\r` is ignored.
    pub fn parse(text: &str) -> Result<Line, ParseError> {
        let text = text.trim_end_matches(['\r', '\n']);
        let rest = text.strip_prefix(MARKER).ok_or(ParseError::NotProtocol)?;
        let rest = rest.strip_prefix(' ').ok_or(if rest.is_empty() {
            ParseError::MissingName
        } else {
            ParseError::NotProtocol
        })?;
        let rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        let name = &rest[..end];
        if name.is_empty() || name.contains('=') {
            return Err(ParseError::MissingName);
        }
        Ok(Line {
            name: name.to_owned(),
            fields: parse_fields(&rest[end..])?,
        })
    }

    fn req(&self, key: &'static str) -> Result<&str, ParseError> {
        self.get(key).ok_or_else(|| ParseError::MissingField {
            event: self.name.clone(),
            key,
        })
    }

    fn num<T: core::str::FromStr>(&self, key: &'static str) -> Result<T, ParseError> {
        let v = self.req(key)?;
        v.parse().map_err(|_| ParseError::BadValue {
            key: key.to_owned(),
            value: v.to_owned(),
        })
    }

    fn flag(&self, key: &'static str) -> Result<bool, ParseError> {
        match self.req(key)? {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            v => Err(ParseError::BadValue {
                key: key.to_owned(),
                value: v.to_owned(),
            }),
        }
    }
}

/// What the device reports. Field names are the protocol; see [`Event::to_line`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Boot {
        count: u32,
        version: String,
    },
    Id {
        client_id: String,
    },
    Wifi {
        up: bool,
    },
    /// A CONNECT is about to be sent on a fresh TCP connection.
    MqttConnect {
        attempt: u32,
        clean: bool,
        proto: String,
    },
    MqttConnack {
        session_present: bool,
        rc: u8,
    },
    /// `qos` is the granted QoS, 128 for a refused subscription.
    MqttSubscribed {
        topic: String,
        qos: u8,
    },
    MqttDisconnected {
        reason: String,
    },
    /// The next connection attempt waits `delay_ms`, drawn from `[lo_ms, hi_ms]`.
    Backoff {
        attempt: u32,
        delay_ms: u64,
        lo_ms: u64,
        hi_ms: u64,
    },
    /// A command executed.
    Cmd {
        id: String,
        qos: u8,
        dup: bool,
        payload: String,
    },
    /// The size and digest of a command whose payload the `cmd` line cut
    /// (over [`MAX_VALUE`]): what the device executed, for the runner to
    /// compare with what the wire carried.
    CmdDigest {
        id: String,
        len: u32,
        /// FNV-1a 64 of the payload, 16 hex digits ([`fnv1a64`]).
        fnv: String,
    },
    /// A redelivered command acknowledged but not executed again.
    CmdDuplicate {
        id: String,
        qos: u8,
        dup: bool,
    },
    TelemetryBuffered {
        seq: u32,
        depth: u32,
    },
    TelemetrySent {
        seq: u32,
        dup: bool,
    },
    TelemetryAcked {
        seq: u32,
    },
    /// MQTT 5: the broker refused reading `seq` (PUBACK reason `reason`,
    /// e.g. 0x87 Not authorized). It leaves the buffer: sending it again
    /// would be refused again.
    TelemetryRefused {
        seq: u32,
        reason: u8,
    },
    /// The buffer was full: reading `seq` was dropped; `count` drops in total.
    TelemetryDropped {
        seq: u32,
        count: u32,
    },
    /// Answer to a host command.
    Ack {
        cmd: String,
        fields: Vec<(String, String)>,
    },
    Error {
        kind: String,
        msg: String,
    },
    /// Where a setting came from at boot: `config broker=HOST:PORT source=flag`.
    Config {
        setting: String,
        value: String,
        /// `flag`, `flash` or `default`.
        source: String,
    },
}

fn b(v: bool) -> &'static str {
    if v {
        "1"
    } else {
        "0"
    }
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Boot { .. } => "boot",
            Event::Id { .. } => "id",
            Event::Wifi { .. } => "wifi",
            Event::MqttConnect { .. } => "mqtt.connect",
            Event::MqttConnack { .. } => "mqtt.connack",
            Event::MqttSubscribed { .. } => "mqtt.subscribed",
            Event::MqttDisconnected { .. } => "mqtt.disconnected",
            Event::Backoff { .. } => "backoff",
            Event::Cmd { .. } => "cmd",
            Event::CmdDigest { .. } => "cmd.digest",
            Event::CmdDuplicate { .. } => "cmd.duplicate",
            Event::TelemetryBuffered { .. } => "telemetry.buffered",
            Event::TelemetrySent { .. } => "telemetry.sent",
            Event::TelemetryAcked { .. } => "telemetry.acked",
            Event::TelemetryRefused { .. } => "telemetry.refused",
            Event::TelemetryDropped { .. } => "telemetry.dropped",
            Event::Ack { .. } => "ack",
            Event::Error { .. } => "error",
            Event::Config { .. } => "config",
        }
    }

    pub fn to_line(&self) -> Line {
        let l = Line::new(self.name());
        match self {
            Event::Boot { count, version } => l.field("count", count).field("version", version),
            Event::Id { client_id } => l.field("client_id", client_id),
            Event::Wifi { up } => l.field("state", if *up { "up" } else { "down" }),
            Event::MqttConnect {
                attempt,
                clean,
                proto,
            } => l
                .field("attempt", attempt)
                .field("clean", b(*clean))
                .field("proto", proto),
            Event::MqttConnack {
                session_present,
                rc,
            } => l
                .field("session_present", b(*session_present))
                .field("rc", rc),
            Event::MqttSubscribed { topic, qos } => l.field("topic", topic).field("qos", qos),
            Event::MqttDisconnected { reason } => l.field("reason", reason),
            Event::Backoff {
                attempt,
                delay_ms,
                lo_ms,
                hi_ms,
            } => l
                .field("attempt", attempt)
                .field("delay_ms", delay_ms)
                .field("lo_ms", lo_ms)
                .field("hi_ms", hi_ms),
            Event::Cmd {
                id,
                qos,
                dup,
                payload,
            } => l
                .field("id", id)
                .field("qos", qos)
                .field("dup", b(*dup))
                .field("payload", payload),
            Event::CmdDuplicate { id, qos, dup } => {
                l.field("id", id).field("qos", qos).field("dup", b(*dup))
            }
            Event::CmdDigest { id, len, fnv } => {
                l.field("id", id).field("len", len).field("fnv", fnv)
            }
            Event::TelemetryBuffered { seq, depth } => l.field("seq", seq).field("depth", depth),
            Event::TelemetrySent { seq, dup } => l.field("seq", seq).field("dup", b(*dup)),
            Event::TelemetryAcked { seq } => l.field("seq", seq),
            Event::TelemetryRefused { seq, reason } => l.field("seq", seq).field("reason", reason),
            Event::TelemetryDropped { seq, count } => l.field("seq", seq).field("count", count),
            Event::Ack { cmd, fields } => {
                let mut l = l.field("cmd", cmd);
                l.fields.extend(fields.iter().cloned());
                l
            }
            Event::Error { kind, msg } => l.field("kind", kind).field("msg", msg),
            Event::Config {
                setting,
                value,
                source,
            } => l.field(setting, value).field("source", source),
        }
    }

    /// The console line, without its newline.
    pub fn format(&self) -> String {
        self.to_line().format()
    }

    pub fn from_line(l: &Line) -> Result<Event, ParseError> {
        let s = |k| l.req(k).map(str::to_owned);
        Ok(match l.name.as_str() {
            "boot" => Event::Boot {
                count: l.num("count")?,
                version: s("version")?,
            },
            "id" => Event::Id {
                client_id: s("client_id")?,
            },
            "wifi" => Event::Wifi {
                up: match l.req("state")? {
                    "up" => true,
                    "down" => false,
                    v => {
                        return Err(ParseError::BadValue {
                            key: "state".into(),
                            value: v.into(),
                        })
                    }
                },
            },
            "mqtt.connect" => Event::MqttConnect {
                attempt: l.num("attempt")?,
                clean: l.flag("clean")?,
                proto: s("proto")?,
            },
            "mqtt.connack" => Event::MqttConnack {
                session_present: l.flag("session_present")?,
                rc: l.num("rc")?,
            },
            "mqtt.subscribed" => Event::MqttSubscribed {
                topic: s("topic")?,
                qos: l.num("qos")?,
            },
            "mqtt.disconnected" => Event::MqttDisconnected {
                reason: s("reason")?,
            },
            "backoff" => Event::Backoff {
                attempt: l.num("attempt")?,
                delay_ms: l.num("delay_ms")?,
                lo_ms: l.num("lo_ms")?,
                hi_ms: l.num("hi_ms")?,
            },
            "cmd" => Event::Cmd {
                id: s("id")?,
                qos: l.num("qos")?,
                dup: l.flag("dup")?,
                payload: s("payload")?,
            },
            "cmd.digest" => Event::CmdDigest {
                id: s("id")?,
                len: l.num("len")?,
                fnv: s("fnv")?,
            },
            "cmd.duplicate" => Event::CmdDuplicate {
                id: s("id")?,
                qos: l.num("qos")?,
                dup: l.flag("dup")?,
            },
            "telemetry.buffered" => Event::TelemetryBuffered {
                seq: l.num("seq")?,
                depth: l.num("depth")?,
            },
            "telemetry.sent" => Event::TelemetrySent {
                seq: l.num("seq")?,
                dup: l.flag("dup")?,
            },
            "telemetry.acked" => Event::TelemetryAcked { seq: l.num("seq")? },
            "telemetry.refused" => Event::TelemetryRefused {
                seq: l.num("seq")?,
                reason: l.num("reason")?,
            },
            "telemetry.dropped" => Event::TelemetryDropped {
                seq: l.num("seq")?,
                count: l.num("count")?,
            },
            "ack" => Event::Ack {
                cmd: s("cmd")?,
                fields: l
                    .fields
                    .iter()
                    .filter(|(k, _)| k != "cmd")
                    .cloned()
                    .collect(),
            },
            "error" => Event::Error {
                kind: s("kind")?,
                msg: s("msg")?,
            },
            "config" => {
                let (setting, value) = l
                    .fields
                    .iter()
                    .find(|(k, _)| k != "source")
                    .cloned()
                    .ok_or(ParseError::MissingField {
                        event: "config".into(),
                        key: "setting",
                    })?;
                Event::Config {
                    setting,
                    value,
                    source: s("source")?,
                }
            }
            other => return Err(ParseError::UnknownEvent(other.to_owned())),
        })
    }

    pub fn parse(text: &str) -> Result<Event, ParseError> {
        Event::from_line(&Line::parse(text)?)
    }

    pub fn error(kind: &str, msg: impl ToString) -> Event {
        Event::Error {
            kind: kind.to_owned(),
            msg: msg.to_string(),
        }
    }
}

/// What the host asks of the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Wifi(bool),
    Reboot,
    /// Take N readings now.
    Telemetry(u32),
    Status,
    /// Provisioning (firmware): `wifi.ssid`, `wifi.pass`, `broker`.
    Config(Vec<(String, String)>),
}

/// Most readings one `!telemetry N` may ask for.
pub const MAX_TELEMETRY_BATCH: u32 = 10_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    NotACommand,
    Unknown(String),
    Usage(&'static str),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::NotACommand => f.write_str("commands start with '!'"),
            CommandError::Unknown(c) => write!(
                f,
                "unknown command '{c}' (known: wifi, reboot, telemetry, status, config)"
            ),
            CommandError::Usage(u) => write!(f, "usage: {u}"),
        }
    }
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Wifi(_) => "wifi",
            Command::Reboot => "reboot",
            Command::Telemetry(_) => "telemetry",
            Command::Status => "status",
            Command::Config(_) => "config",
        }
    }

    pub fn parse(text: &str) -> Result<Command, CommandError> {
        let text = text.trim();
        let body = text.strip_prefix('!').ok_or(CommandError::NotACommand)?;
        let mut words = body.split_whitespace();
        let name = words.next().unwrap_or("");
        let arg = words.next();
        let extra = words.next().is_some();
        match name {
            "wifi" => match (arg, extra) {
                (Some("on"), false) => Ok(Command::Wifi(true)),
                (Some("off"), false) => Ok(Command::Wifi(false)),
                _ => Err(CommandError::Usage("!wifi on|off")),
            },
            "reboot" if arg.is_none() => Ok(Command::Reboot),
            "reboot" => Err(CommandError::Usage("!reboot")),
            "status" if arg.is_none() => Ok(Command::Status),
            "status" => Err(CommandError::Usage("!status")),
            "telemetry" => match (arg.map(str::parse::<u32>), extra) {
                (Some(Ok(n)), false) if (1..=MAX_TELEMETRY_BATCH).contains(&n) => {
                    Ok(Command::Telemetry(n))
                }
                _ => Err(CommandError::Usage("!telemetry N (1..=10000)")),
            },
            "config" => {
                let fields = parse_fields(body["config".len()..].trim_start())
                    .map_err(|_| CommandError::Usage("!config key=value ..."))?;
                if fields.is_empty() {
                    return Err(CommandError::Usage("!config key=value ..."));
                }
                Ok(Command::Config(fields))
            }
            other => Err(CommandError::Unknown(other.chars().take(32).collect())),
        }
    }

    /// The line the host writes, without its newline.
    pub fn format(&self) -> String {
        match self {
            Command::Wifi(on) => format!("!wifi {}", if *on { "on" } else { "off" }),
            Command::Reboot => "!reboot".into(),
            Command::Telemetry(n) => format!("!telemetry {n}"),
            Command::Status => "!status".into(),
            Command::Config(fields) => {
                let mut out = String::from("!config");
                for (k, v) in fields {
                    out.push(' ');
                    out.push_str(k);
                    out.push('=');
                    push_value(&mut out, v);
                }
                out
            }
        }
    }
}

/// Why a chunk of the byte stream did not become a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineError {
    /// Longer than [`MAX_LINE`]; discarded up to its newline.
    TooLong { len: usize },
    /// Not UTF-8; the lossy text is kept for the transcript.
    NotUtf8(String),
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong { len } => {
                write!(f, "line of {len}+ bytes exceeds the {MAX_LINE}-byte limit")
            }
            LineError::NotUtf8(_) => f.write_str("line is not UTF-8"),
        }
    }
}

/// Cuts a byte stream (serial port, pty, socket) into lines. Bounded memory:
/// an over-long line is reported once and skipped to its newline.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    discarded: Option<usize>,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::new(MAX_LINE)
    }
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max: max.max(1),
            discarded: None,
        }
    }

    /// Bytes of an unfinished line held back.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes; calls `out` once per finished line (without `\r\n`).
    pub fn feed(&mut self, bytes: &[u8], out: &mut dyn FnMut(Result<String, LineError>)) {
        for &byte in bytes {
            if byte == b'\n' {
                if let Some(len) = self.discarded.take() {
                    out(Err(LineError::TooLong { len }));
                } else {
                    if self.buf.last() == Some(&b'\r') {
                        self.buf.pop();
                    }
                    let line = core::mem::take(&mut self.buf);
                    out(String::from_utf8(line).map_err(|e| {
                        LineError::NotUtf8(String::from_utf8_lossy(e.as_bytes()).into_owned())
                    }));
                }
                continue;
            }
            if let Some(len) = self.discarded.as_mut() {
                *len += 1;
            } else if self.buf.len() >= self.max {
                self.discarded = Some(self.buf.len() + 1);
                self.buf = Vec::new();
            } else {
                self.buf.push(byte);
            }
        }
    }

    /// Convenience: feed and collect.
    pub fn feed_collect(&mut self, bytes: &[u8]) -> Vec<Result<String, LineError>> {
        let mut v = Vec::new();
        self.feed(bytes, &mut |r| v.push(r));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    #[test]
    fn formats_and_quotes() {
        let e = Event::Cmd {
            id: "c1".into(),
            qos: 1,
            dup: false,
            payload: "{\"id\":\"c1\", \"do\":\"x\"}".into(),
        };
        assert_eq!(
            e.format(),
            "@hil cmd id=c1 qos=1 dup=0 payload=\"{\\\"id\\\":\\\"c1\\\", \\\"do\\\":\\\"x\\\"}\""
        );
        assert_eq!(Event::parse(&e.format()).unwrap(), e);
        assert_eq!(
            Event::MqttConnack {
                session_present: true,
                rc: 0
            }
            .format(),
            "@hil mqtt.connack session_present=1 rc=0"
        );
    }

    #[test]
    fn a_long_value_is_cut_with_a_marker() {
        let payload = "é".repeat(1_000_000); // 2 MB, two bytes a char
        let line = Event::Cmd {
            id: "c1".into(),
            qos: 1,
            dup: false,
            payload,
        }
        .format();
        assert!(line.len() < MAX_VALUE + 100, "{} bytes", line.len());
        assert!(
            line.ends_with("...[+1999488 bytes]\""),
            "{}",
            &line[line.len() - 40..]
        );
        let back = Event::parse(&line).unwrap();
        assert!(matches!(back, Event::Cmd { payload, .. } if payload.starts_with("éé")));
    }

    #[test]
    fn plain_text_is_not_an_event() {
        assert_eq!(
            Line::parse("ESP-ROM:esp32c3-api1-20210207"),
            Err(ParseError::NotProtocol)
        );
        assert_eq!(Line::parse("@hilarious"), Err(ParseError::NotProtocol));
        assert_eq!(Line::parse("@hil"), Err(ParseError::MissingName));
        assert!(matches!(
            Event::parse("@hil nope a=1"),
            Err(ParseError::UnknownEvent(_))
        ));
        assert!(matches!(
            Event::parse("@hil mqtt.connack rc=0"),
            Err(ParseError::MissingField {
                key: "session_present",
                ..
            })
        ));
        assert!(matches!(
            Line::parse("@hil x a=\"open"),
            Err(ParseError::UnterminatedQuote)
        ));
        assert!(matches!(
            Line::parse("@hil x novalue"),
            Err(ParseError::BadToken(_))
        ));
    }

    #[test]
    fn commands() {
        assert_eq!(Command::parse("!wifi off"), Ok(Command::Wifi(false)));
        assert_eq!(Command::parse(" !wifi on \r"), Ok(Command::Wifi(true)));
        assert_eq!(Command::parse("!telemetry 5"), Ok(Command::Telemetry(5)));
        assert!(Command::parse("!telemetry 0").is_err());
        assert!(Command::parse("!telemetry x").is_err());
        assert!(Command::parse("!wifi maybe").is_err());
        assert_eq!(Command::parse("wifi off"), Err(CommandError::NotACommand));
        assert!(matches!(
            Command::parse("!fly"),
            Err(CommandError::Unknown(_))
        ));
        let c = Command::Config(vec![
            ("wifi.ssid".into(), "my net".into()),
            ("broker".into(), "10.0.0.2:1883".into()),
        ]);
        assert_eq!(Command::parse(&c.format()), Ok(c));
    }

    #[test]
    fn splitter_handles_partial_crlf_and_long_lines() {
        let mut s = LineSplitter::new(16);
        assert!(s.feed_collect(b"@hil a").is_empty());
        assert_eq!(
            s.feed_collect(b" x=1\r\nrest"),
            vec![Ok("@hil a x=1".into())]
        );
        assert_eq!(s.feed_collect(b"\n"), vec![Ok("rest".into())]);
        assert_eq!(
            s.feed_collect(b"0123456789abcdefghij\nok\n"),
            vec![Err(LineError::TooLong { len: 20 }), Ok("ok".into())]
        );
        assert!(matches!(
            s.feed_collect(b"\xff\xfe\n")[0],
            Err(LineError::NotUtf8(_))
        ));
    }

    fn any_event() -> impl Strategy<Value = Event> {
        let text = ".{0,40}";
        let word = "[a-z0-9/._-]{1,20}";
        prop_oneof![
            (any::<u32>(), word).prop_map(|(count, version)| Event::Boot { count, version }),
            word.prop_map(|client_id| Event::Id { client_id }),
            any::<bool>().prop_map(|up| Event::Wifi { up }),
            (any::<u32>(), any::<bool>(), word).prop_map(|(attempt, clean, proto)| {
                Event::MqttConnect {
                    attempt,
                    clean,
                    proto,
                }
            }),
            (any::<bool>(), any::<u8>()).prop_map(|(session_present, rc)| Event::MqttConnack {
                session_present,
                rc
            }),
            (text, any::<u8>()).prop_map(|(topic, qos)| Event::MqttSubscribed { topic, qos }),
            text.prop_map(|reason| Event::MqttDisconnected { reason }),
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(attempt, delay_ms, lo_ms, hi_ms)| Event::Backoff {
                    attempt,
                    delay_ms,
                    lo_ms,
                    hi_ms
                }
            ),
            (text, 0u8..3, any::<bool>(), text).prop_map(|(id, qos, dup, payload)| Event::Cmd {
                id,
                qos,
                dup,
                payload
            }),
            (text, any::<u32>(), text).prop_map(|(id, len, fnv)| Event::CmdDigest { id, len, fnv }),
            (text, 0u8..3, any::<bool>()).prop_map(|(id, qos, dup)| Event::CmdDuplicate {
                id,
                qos,
                dup
            }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(seq, depth)| Event::TelemetryBuffered { seq, depth }),
            (any::<u32>(), any::<bool>()).prop_map(|(seq, dup)| Event::TelemetrySent { seq, dup }),
            any::<u32>().prop_map(|seq| Event::TelemetryAcked { seq }),
            (any::<u32>(), any::<u8>())
                .prop_map(|(seq, reason)| Event::TelemetryRefused { seq, reason }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(seq, count)| Event::TelemetryDropped { seq, count }),
            (word, proptest::collection::vec(("[a-z_]{1,8}", text), 0..4)).prop_map(
                |(cmd, fields)| Event::Ack {
                    cmd,
                    fields: fields.into_iter().filter(|(k, _)| k != "cmd").collect()
                }
            ),
            (word, text).prop_map(|(kind, msg)| Event::Error { kind, msg }),
        ]
    }

    proptest! {
        /// Whatever the device prints, the host reads back the same event.
        #[test]
        fn event_roundtrip(e in any_event()) {
            let line = e.format();
            prop_assert!(!line.contains('\n'));
            prop_assert_eq!(Event::parse(&line).unwrap(), e);
        }

        /// No byte sequence, however cut into reads, panics the splitter or the
        /// parsers, and memory stays bounded by the line limit.
        #[test]
        fn any_bytes_survive(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..8)) {
            let mut s = LineSplitter::new(1024);
            for chunk in &chunks {
                s.feed(chunk, &mut |r| {
                    if let Ok(line) = r {
                        let _ = Event::parse(&line);
                        let _ = Command::parse(&line);
                    }
                });
                prop_assert!(s.pending() <= 1024);
            }
        }

        #[test]
        fn text_lines_survive(line in "(@hil |!)?.{0,200}") {
            let _ = Event::parse(&line);
            let _ = Command::parse(&line);
        }

        /// A 10 KB line is reported as too long, and the next line is intact.
        #[test]
        fn ten_kb_line(fill in any::<u8>().prop_filter("no newline", |b| *b != b'\n')) {
            let mut s = LineSplitter::default();
            let mut bytes = vec![fill; 10 * 1024];
            bytes.extend_from_slice(b"\n@hil wifi state=up\n");
            let out = s.feed_collect(&bytes);
            prop_assert_eq!(out.len(), 2);
            prop_assert_eq!(&out[0], &Err(LineError::TooLong { len: 10 * 1024 }));
            prop_assert_eq!(Event::parse(out[1].as_ref().unwrap()).unwrap(), Event::Wifi { up: true });
        }
    }
}

#[cfg(test)]
mod digest_tests {
    use super::fnv1a64;

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(b""), "cbf29ce484222325");
        assert_eq!(fnv1a64(b"a"), "af63dc4c8601ec8c");
        assert_eq!(fnv1a64(b"foobar"), "85944171f73967e8");
    }
}
