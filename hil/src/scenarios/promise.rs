//! The promises a device makes, one variant each. A failure names the
//! promise it breaks first; tests match the variant, not the wording.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Promise {
    StableClientId,
    PersistentSession,
    QueuedCommandsOnce,
    TelemetryFlushed,
    ResendCarriesDup,
    CappedBackoff,
    Jitter,
    Resubscribe,
    CommandsAfterRestart,
    SubscribesToCommands,
    DeadLinkNoticed,
    LastWill,
    EffectiveQos,
    SessionExpiry,
    MessageExpiry,
    BoundedBuffer,
    DropsCounted,
    DuplicateClientIdDetected,
    ExecutedOnce,
    SubscribeUntilSuback,
    QosSemantics,
    ConnackTimeout,
    BackoffAfterSuccess,
    ServerDisconnect,
    PublishRetried,
    SubscribeRetried,
    LargePayload,
    SessionReused,
    TlsConnects,
    VerifiesServer,
    NoPlaintext,
    LargeChain,
    CredentialsRefused,
    SecretsKept,
    RefusalReported,
    RefusedNotRetried,
    ClientCertPresented,
}

impl Promise {
    pub fn text(self) -> &'static str {
        match self {
            Promise::StableClientId => "stable client ID (same on every boot, never random)",
            Promise::PersistentSession => {
                "persistent session (clean_session=0 and a stable client ID)"
            }
            Promise::QueuedCommandsOnce => "queued commands arrive exactly once, in publish order",
            Promise::TelemetryFlushed => "offline telemetry is buffered and flushed in order",
            Promise::ResendCarriesDup => "a resend carries DUP",
            Promise::CappedBackoff => {
                "reconnect with capped, jittered backoff after a broker restart"
            }
            Promise::Jitter => "jitter spreads reconnects (no thundering herd)",
            Promise::Resubscribe => {
                "re-subscribe when the broker lost the session (session_present=0)"
            }
            Promise::CommandsAfterRestart => {
                "commands arrive after a broker restart (re-subscribed)"
            }
            Promise::SubscribesToCommands => "device subscribes to its command topic",
            Promise::DeadLinkNoticed => "a dead link is noticed within 1.5 x keep-alive",
            Promise::LastWill => {
                "Last Will `offline` on an ungraceful loss, retained `online` after recovery"
            }
            Promise::EffectiveQos => "delivered QoS = min(publish QoS, subscription QoS)",
            Promise::SessionExpiry => {
                "session kept within the Session Expiry Interval, lost after it"
            }
            Promise::MessageExpiry => {
                "expired commands are not delivered; live ones arrive with their remaining interval"
            }
            Promise::BoundedBuffer => "bounded buffer (drop oldest)",
            Promise::DropsCounted => {
                "a bounded telemetry buffer drops the oldest and counts every drop"
            }
            Promise::DuplicateClientIdDetected => "the runner detects a duplicate client ID",
            Promise::ExecutedOnce => {
                "a redelivered command is executed once (de-duplication by command id, over the last 64 distinct commands)"
            }
            Promise::SubscribeUntilSuback => {
                "session_present=1 does not mean subscribed: subscribe until a SUBACK confirms it"
            }
            Promise::QosSemantics => {
                "QoS 0 may lose, QoS 1 duplicates only with DUP, QoS 2 exactly once"
            }
            Promise::ConnackTimeout => {
                "a connection without CONNACK is given up after a bounded timeout and retried with backoff"
            }
            Promise::BackoffAfterSuccess => {
                "after losing an established connection the first reconnect waits at least the base delay"
            }
            Promise::ServerDisconnect => {
                "a server DISCONNECT is reported with its reason and followed by a backoff"
            }
            Promise::PublishRetried => {
                "an unacknowledged reading is kept, resent with DUP and the same packet id on a new connection, never lost or reordered"
            }
            Promise::SubscribeRetried => {
                "an unconfirmed subscription is not trusted: time out, reconnect, subscribe again"
            }
            Promise::LargePayload => {
                "commands within the maximum packet size are executed intact; larger ones are refused and counted, without a crash"
            }
            Promise::SessionReused => {
                "a kept session with a confirmed subscription is reused (no SUBSCRIBE); an expired one is rebuilt"
            }
            Promise::TlsConnects => {
                "connects over TLS 1.2+ with the provisioned CA, the whole session inside it"
            }
            Promise::VerifiesServer => {
                "refuses a broker certificate it cannot trust (unknown CA, wrong name, expired), says why, and backs off with jitter"
            }
            Promise::NoPlaintext => {
                "never falls back to plaintext: a device that requires TLS does not connect without it"
            }
            Promise::CredentialsRefused => {
                "a refused login is reported and retried with capped, jittered backoff, not hammered"
            }
            Promise::ClientCertPresented => {
                "mutual TLS: presents the client certificate it was given, for the client ID it uses"
            }
            Promise::RefusalReported => {
                "a publish the broker refuses (MQTT 5 PUBACK 0x87) is reported refused, never delivered"
            }
            Promise::RefusedNotRetried => {
                "a refused publish is not sent again: a denied topic is not hammered"
            }
            Promise::SecretsKept => "the password never appears on the console, in a transcript or a report",
            Promise::LargeChain => {
                "accepts a broker certificate chain well over the usual size (≥ 20 % larger)"
            }
        }
    }
}

impl fmt::Display for Promise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}
