//! Device configuration, and the negative-control switches that break one
//! promise each so a test can prove the matching scenario catches it.

use crate::identity::Mac;
use alloc::string::String;

use core::str::FromStr;

pub use hil_packets::{MqttVersion, ParseVersionError};

/// A deliberately broken promise (negative control).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// A new random client ID on every connection.
    RandomClientId,
    /// clean_session=1 / clean_start=1 with no session expiry.
    CleanSession,
    /// Telemetry taken while offline is thrown away.
    NoOutbox,
    /// Reconnect delays without jitter: a fleet reconnects in lockstep.
    NoJitter,
    /// Never re-subscribes after session_present=0.
    NoResubscribe,
    /// Executes redelivered commands again.
    NoDedupe,
    /// The telemetry buffer never drops: memory grows without bound.
    UnboundedBuffer,
    /// MQTT 5: asks for a session that never expires (0xFFFFFFFF), whatever
    /// was configured: the "no session expiry" pitfall, orphaned sessions forever.
    IgnoreExpiry,
    /// Trusts session_present=1 to mean "subscribed": a link or power loss
    /// between CONNECT and SUBACK leaves a session without the subscription.
    TrustSessionPresent,
    /// CONNECT without a Last Will: nobody learns that the device vanished.
    NoWill,
    /// Declares a 600 s keep-alive: a dead link goes unnoticed for 15 minutes.
    LongKeepalive,
    /// Subscribes to its commands at QoS 0 whatever was configured: the QoS
    /// mismatch pitfall (commands published at QoS 2 arrive at most once).
    SubscribeQos0,
    /// Never gives up on a PUBACK or SUBACK the broker withholds: the
    /// reading (or the subscription) waits forever on a live connection.
    NoAckTimeout,
    /// Reconnects at once after losing an established connection (no
    /// backoff until the first failure): a broker that drops every client
    /// at once, or tells it to go away, gets a tight reconnect loop.
    ReconnectAtOnce,
    /// Accepts packets of any size (announcing the protocol's maximum): a
    /// broker's huge message is buffered whole in the device's RAM.
    NoPacketLimit,
    /// TLS: accepts any server certificate (no chain, name or date check):
    /// the device "has TLS" and proves nothing about whom it talks to.
    NoVerify,
    /// TLS: ignores the provisioned CA and the production setting: plaintext
    /// MQTT, always.
    NoTls,
    /// TLS: after a failed handshake, the next attempt goes in plaintext
    /// ("make it work" code that downgrades).
    PlaintextFallback,
    /// TLS: refuses certificate chains over 4 KiB (a TLS buffer sized for
    /// one certificate): a broker with a longer chain is unreachable.
    SmallTlsBuffer,
    /// Prints its MQTT password on the console at boot ("debug output").
    EchoSecrets,
    /// MQTT 5: takes a PUBACK with a failure reason (0x87 Not authorized)
    /// for an acknowledgement, and says the reading was delivered.
    IgnoreRefusal,
    /// MQTT 5: keeps a reading the broker refused and sends it again, and
    /// again: a denied topic is hammered forever.
    RetryRefused,
    /// Mutual TLS: never presents the client certificate it was given.
    NoClientCert,
}

pub const ALL_BUGS: [Bug; 23] = [
    Bug::RandomClientId,
    Bug::CleanSession,
    Bug::NoOutbox,
    Bug::NoJitter,
    Bug::NoResubscribe,
    Bug::NoDedupe,
    Bug::UnboundedBuffer,
    Bug::IgnoreExpiry,
    Bug::TrustSessionPresent,
    Bug::NoWill,
    Bug::LongKeepalive,
    Bug::SubscribeQos0,
    Bug::NoAckTimeout,
    Bug::ReconnectAtOnce,
    Bug::NoPacketLimit,
    Bug::NoVerify,
    Bug::NoTls,
    Bug::PlaintextFallback,
    Bug::SmallTlsBuffer,
    Bug::EchoSecrets,
    Bug::IgnoreRefusal,
    Bug::RetryRefused,
    Bug::NoClientCert,
];

impl Bug {
    pub fn name(&self) -> &'static str {
        match self {
            Bug::RandomClientId => "random-client-id",
            Bug::CleanSession => "clean-session",
            Bug::NoOutbox => "no-outbox",
            Bug::NoJitter => "no-jitter",
            Bug::NoResubscribe => "no-resubscribe",
            Bug::NoDedupe => "no-dedupe",
            Bug::UnboundedBuffer => "unbounded-buffer",
            Bug::IgnoreExpiry => "ignore-expiry",
            Bug::TrustSessionPresent => "trust-session-present",
            Bug::NoWill => "no-will",
            Bug::LongKeepalive => "long-keepalive",
            Bug::SubscribeQos0 => "subscribe-qos0",
            Bug::NoAckTimeout => "no-ack-timeout",
            Bug::ReconnectAtOnce => "reconnect-at-once",
            Bug::NoPacketLimit => "no-packet-limit",
            Bug::NoVerify => "no-verify",
            Bug::NoTls => "no-tls",
            Bug::PlaintextFallback => "plaintext-fallback",
            Bug::SmallTlsBuffer => "small-tls-buffer",
            Bug::EchoSecrets => "echo-secrets",
            Bug::IgnoreRefusal => "ignore-refusal",
            Bug::RetryRefused => "retry-refused",
            Bug::NoClientCert => "no-client-cert",
        }
    }
}

/// A negative control's name that is none of [`ALL_BUGS`]; its message
/// lists them (made when shown, so the firmware carries no copy of the list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownBug;

impl core::fmt::Display for UnknownBug {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("unknown bug: ")?;
        for (i, b) in ALL_BUGS.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(b.name())?;
        }
        Ok(())
    }
}

impl FromStr for Bug {
    type Err = UnknownBug;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_BUGS
            .iter()
            .copied()
            .find(|b| b.name() == s)
            .ok_or(UnknownBug)
    }
}

/// The set of enabled negative controls (none by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs(u32);

impl Bugs {
    pub fn with(mut self, bug: Bug) -> Self {
        self.0 |= 1 << bug as u32;
        self
    }
    pub fn has(&self, bug: Bug) -> bool {
        cfg!(feature = "controls") && self.0 & (1 << bug as u32) != 0
    }
}

impl Config {
    /// The keep-alive the device declares (a negative control may lie long).
    pub fn keepalive(&self) -> u16 {
        if self.bugs.has(Bug::LongKeepalive) {
            600
        } else {
            self.keepalive_s
        }
    }

    /// The largest packet accepted (and announced in an MQTT 5 CONNECT).
    pub fn packet_limit(&self) -> u32 {
        if self.bugs.has(Bug::NoPacketLimit) {
            268_435_455
        } else {
            self.max_packet_size
        }
    }

    /// The QoS the device subscribes to its commands with.
    pub fn sub_qos(&self) -> u8 {
        if self.bugs.has(Bug::SubscribeQos0) {
            0
        } else {
            self.cmd_qos
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Chip name, first part of the client ID (`esp32c3`).
    pub chip: String,
    pub mac: Mac,
    /// Topic prefix: `<prefix>/<client_id>/{cmd,telemetry,status}`.
    pub prefix: String,
    /// Where readings go instead of `<prefix>/<client_id>/telemetry`: a
    /// shared ingest topic, as some clouds ask for. None: the device's own.
    #[cfg(feature = "ingest-topic")]
    pub telemetry_topic: Option<String>,
    pub mqtt: MqttVersion,
    pub keepalive_s: u16,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    /// QoS of the command subscription.
    pub cmd_qos: u8,
    /// MQTT 5 Session Expiry Interval sent in CONNECT.
    pub session_expiry_s: u32,
    /// Readings kept while offline; the oldest is dropped beyond this.
    pub outbox_capacity: usize,
    /// Recent command ids remembered for de-duplication.
    pub inbox_capacity: usize,
    /// Telemetry publishes in flight at once.
    pub max_inflight: usize,
    /// Give up on a connection that has not answered CONNECT by then.
    pub connack_timeout_ms: u64,
    /// Give up on a connection that leaves a telemetry PUBLISH or the
    /// SUBSCRIBE unacknowledged this long (reset by each acknowledgement);
    /// the packet is sent again on the next connection. 10 s: a PUBACK takes
    /// one round trip on a healthy link, so 10 s covers a congested cellular
    /// link or a broker busy with a restart burst, and is still well inside
    /// a typical 30-60 s keep-alive, which would otherwise be the only way
    /// out (and never, for a broker that keeps answering PINGREQ).
    pub ack_timeout_ms: u64,
    /// Largest packet the device accepts from the broker, in bytes: refused
    /// from its fixed header before it is buffered, and announced as Maximum
    /// Packet Size in an MQTT 5 CONNECT. 16 KiB fits the ESP32-C3's RAM with
    /// Wi-Fi and TCP buffers beside it.
    pub max_packet_size: u32,
    /// Firmware version reported at boot.
    pub version: String,
    /// MQTT User Name and Password, when the broker asks for them.
    #[cfg(feature = "login")]
    pub credentials: Option<Credentials>,
    pub bugs: Bugs,
}

#[cfg(feature = "login")]
/// The device's MQTT credentials. The password is a [`Secret`]: it goes
/// into CONNECT and nowhere else (its Debug says `<redacted>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// A value that must never reach a console, a transcript or a report.
#[cfg(feature = "login")]
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

#[cfg(feature = "login")]
impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The value itself: for the one place that needs it (CONNECT).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(feature = "login")]
impl core::fmt::Debug for Secret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Config {
    pub fn new(chip: &str, mac: Mac) -> Self {
        Config {
            chip: chip.into(),
            mac,
            prefix: "devices".into(),
            #[cfg(feature = "ingest-topic")]
            telemetry_topic: None,
            mqtt: MqttVersion::V3_1_1,
            keepalive_s: 30,
            backoff_base_ms: 500,
            backoff_cap_ms: 30_000,
            cmd_qos: 1,
            session_expiry_s: 3600,
            outbox_capacity: 64,
            inbox_capacity: 64,
            max_inflight: 16,
            connack_timeout_ms: 10_000,
            ack_timeout_ms: 10_000,
            max_packet_size: 16 * 1024,
            version: String::from(env!("CARGO_PKG_VERSION")),
            #[cfg(feature = "login")]
            credentials: None,
            bugs: Bugs::default(),
        }
    }
}
