//! Broker semantics probes: what a broker honours of the session behaviour
//! the scenarios assert, measured with real clients. A scenario whose
//! assertions need a semantic the broker lacks is not applicable on it.

use crate::client::{Client, ConnectOptions};
use crate::{Broker, MqttVersion, Restart};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Semantic {
    /// Delivered QoS = min(publish, subscription).
    QosCapping,
    /// QoS 0 messages are not queued for an offline persistent session.
    Qos0NotQueued,
    /// MQTT 5 Session Expiry Interval ends the session.
    SessionExpiry,
    /// MQTT 5 Message Expiry Interval drops queued messages.
    MessageExpiry,
    /// Unacknowledged QoS 1 is redelivered with DUP after reconnect.
    DupOnRedelivery,
    /// Last Will on an ungraceful loss, none after DISCONNECT.
    LastWill,
    /// A retained message reaches a new subscriber, with the retain flag.
    Retained,
    /// A second connection with the same client ID drops the first.
    Takeover,
    /// Persistent sessions survive a broker restart.
    SessionsSurviveRestart,
    /// An offline session's queue is bounded; the detail says which end it drops.
    QueueLimit,
}

impl Semantic {
    pub const ALL: [Semantic; 10] = [
        Semantic::QosCapping,
        Semantic::Qos0NotQueued,
        Semantic::SessionExpiry,
        Semantic::MessageExpiry,
        Semantic::DupOnRedelivery,
        Semantic::LastWill,
        Semantic::Retained,
        Semantic::Takeover,
        Semantic::SessionsSurviveRestart,
        Semantic::QueueLimit,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Semantic::QosCapping => "delivered QoS = min(publish, subscription)",
            Semantic::Qos0NotQueued => "QoS 0 not queued for offline sessions",
            Semantic::SessionExpiry => "MQTT 5 Session Expiry Interval honoured",
            Semantic::MessageExpiry => "MQTT 5 Message Expiry Interval honoured",
            Semantic::DupOnRedelivery => "DUP set on QoS 1 redelivery",
            Semantic::LastWill => "Last Will on loss, none after DISCONNECT",
            Semantic::Retained => "retained message to a new subscriber",
            Semantic::Takeover => "same client ID drops the first connection",
            Semantic::SessionsSurviveRestart => "sessions kept across a graceful restart",
            Semantic::QueueLimit => "offline queue kept, bounded (see detail)",
        }
    }
}

/// One probe's result: honoured, not honoured (with what was seen), or not probed.
#[derive(Clone, Debug)]
pub struct Finding {
    pub semantic: Semantic,
    pub honoured: Option<bool>,
    pub detail: String,
}

pub struct Report {
    pub broker: String,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn honours(&self, s: Semantic) -> Option<bool> {
        self.findings
            .iter()
            .find(|f| f.semantic == s)
            .and_then(|f| f.honoured)
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<46} {:<10} {}\n",
            format!("semantic ({})", self.broker),
            "honoured",
            "observed"
        );
        for f in &self.findings {
            let h = match f.honoured {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            out.push_str(&format!(
                "{:<46} {:<10} {}\n",
                f.semantic.name(),
                h,
                f.detail
            ));
        }
        out
    }
}

// Generous: a probe that expects nothing waits this long, and a loaded CI
// machine must not turn a late delivery into a false "not honoured".
const WAIT: Duration = Duration::from_secs(3);

fn opts(id: &str, clean: bool) -> ConnectOptions {
    let mut o = ConnectOptions::new(id);
    o.clean = clean;
    o
}

/// Why a semantic could not be probed at all (neither honoured nor not).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Client(#[from] crate::ClientError),
    #[error(transparent)]
    Broker(#[from] crate::BrokerError),
    #[error("MQTT 5 only")]
    NeedsMqtt5,
    #[error("this broker cannot be restarted")]
    CannotRestart,
    /// The probe's own message never came back: nothing to judge by.
    #[error("{0}")]
    NoAnswer(&'static str),
}

type R = Result<(bool, String), ProbeError>;

fn e<E: Into<ProbeError>>(e: E) -> ProbeError {
    e.into()
}

/// A topic or client ID no other probe, run or machine uses: an external
/// broker may be shared, and a retained or queued message from someone else's
/// probe must never answer ours (answers are also read only from the probe's
/// own topic, `recv_on`).
fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("hil-check-{tag}-{:x}-{}-{n}", t, std::process::id())
}

/// The next message on `topic` (others are kept for later reads).
fn recv_on(
    c: &mut Client,
    topic: &str,
) -> Result<Option<crate::client::Received>, crate::ClientError> {
    c.recv_matching(Instant::now() + WAIT, |m| m.topic == topic)
}

fn qos_capping(b: &Broker, p: MqttVersion) -> R {
    let addr = b.addr(p);
    let topic = unique("qos");
    let mut sub = Client::connect(addr, p, &opts(&unique("sub"), true)).map_err(e)?;
    sub.subscribe(&topic, 1).map_err(e)?;
    let mut publ = Client::connect(addr, p, &opts(&unique("pub"), true)).map_err(e)?;
    // Several samples: one delivery above the publish QoS is enough to fail.
    let mut seen = Vec::new();
    for _ in 0..5 {
        publ.publish(&topic, b"q0", 0, false).map_err(e)?;
        let got = recv_on(&mut sub, &topic)
            .map_err(e)?
            .ok_or(ProbeError::NoAnswer("nothing delivered"))?;
        seen.push(got.qos);
    }
    Ok((
        seen.iter().all(|q| *q == 0),
        format!("published QoS 0 to a QoS 1 subscription: delivered at QoS {seen:?}"),
    ))
}

fn qos0_not_queued(b: &Broker, p: MqttVersion) -> R {
    let addr = b.addr(p);
    let (id, topic) = (unique("offline"), unique("q0topic"));
    let mut sub = Client::connect(
        addr,
        p,
        &ConnectOptions {
            session_expiry_s: Some(300),
            ..opts(&id, false)
        },
    )
    .map_err(e)?;
    sub.subscribe(&topic, 1).map_err(e)?;
    sub.disconnect();
    let mut publ = Client::connect(addr, p, &opts(&unique("pub"), true)).map_err(e)?;
    publ.publish(&topic, b"qos0", 0, false).map_err(e)?;
    publ.publish(&topic, b"qos1", 1, false).map_err(e)?;
    let mut sub = Client::connect(
        addr,
        p,
        &ConnectOptions {
            session_expiry_s: Some(300),
            ..opts(&id, false)
        },
    )
    .map_err(e)?;
    let mut got = Vec::new();
    while let Some(m) = recv_on(&mut sub, &topic).map_err(e)? {
        got.push(format!("{}@{}", m.text(), m.qos));
    }
    let queued0 = got.iter().any(|g| g.starts_with("qos0"));
    Ok((
        !queued0 && got.iter().any(|g| g.starts_with("qos1")),
        format!("after reconnect: {got:?}"),
    ))
}

fn session_expiry(b: &Broker, p: MqttVersion) -> R {
    if p != MqttVersion::V5 {
        return Err(ProbeError::NeedsMqtt5);
    }
    let addr = b.addr(p);
    let id = unique("expiry");
    let c = Client::connect(
        addr,
        p,
        &ConnectOptions {
            session_expiry_s: Some(1),
            ..opts(&id, false)
        },
    )
    .map_err(e)?;
    c.disconnect();
    // The interval itself is what is probed: wait it out.
    std::thread::sleep(Duration::from_millis(2500));
    let c = Client::connect(
        addr,
        p,
        &ConnectOptions {
            session_expiry_s: Some(1),
            ..opts(&id, false)
        },
    )
    .map_err(e)?;
    let sp = c.session_present;
    c.disconnect();
    Ok((
        !sp,
        format!(
            "2.5 s after a 1 s session expiry: session_present={}",
            sp as u8
        ),
    ))
}

fn message_expiry(b: &Broker, p: MqttVersion) -> R {
    if p != MqttVersion::V5 {
        return Err(ProbeError::NeedsMqtt5);
    }
    let addr = b.addr(p);
    let (id, topic) = (unique("msgexp"), unique("msgexptopic"));
    let mut sub = Client::connect(
        addr,
        p,
        &ConnectOptions {
            session_expiry_s: Some(300),
            ..opts(&id, false)
        },
    )
    .map_err(e)?;
    sub.subscribe(&topic, 1).map_err(e)?;
    sub.disconnect();
    let mut publ = Client::connect(addr, p, &opts(&unique("pub"), true)).map_err(e)?;
    publ.publish_with_expiry(&topic, b"short", 1, false, Some(1))
        .map_err(e)?;
    publ.publish_with_expiry(&topic, b"long", 1, false, Some(300))
        .map_err(e)?;
    // The end marker: messages on one topic from one publisher at one QoS
    // arrive in order ([MQTT-4.6.0-6]), so once it is in, nothing queued
    // before it is still to come, and the probe need not wait out a quiet
    // period to be sure.
    publ.publish_with_expiry(&topic, b"end", 1, false, Some(300))
        .map_err(e)?;
    // The interval itself is what is probed: wait it out (2.5 s, as a broker
    // may count expiry in whole seconds).
    std::thread::sleep(Duration::from_millis(2500));
    let mut sub = Client::connect(
        addr,
        p,
        &ConnectOptions {
            session_expiry_s: Some(300),
            ..opts(&id, false)
        },
    )
    .map_err(e)?;
    let mut got = Vec::new();
    while let Some(m) = recv_on(&mut sub, &topic).map_err(e)? {
        let text = m.text();
        if text == "end" {
            break;
        }
        got.push(text);
    }
    Ok((
        got == ["long"],
        format!("after 2.5 s offline, delivered {got:?} (short expiry 1 s, long 300 s)"),
    ))
}

fn dup_on_redelivery(b: &Broker, p: MqttVersion) -> R {
    let addr = b.addr(p);
    let (id, topic) = (unique("dup"), unique("duptopic"));
    let o = ConnectOptions {
        auto_ack: false,
        session_expiry_s: Some(300),
        ..opts(&id, false)
    };
    let mut sub = Client::connect(addr, p, &o).map_err(e)?;
    sub.subscribe(&topic, 1).map_err(e)?;
    let mut publ = Client::connect(addr, p, &opts(&unique("pub"), true)).map_err(e)?;
    publ.publish(&topic, b"x", 1, false).map_err(e)?;
    let first = recv_on(&mut sub, &topic)
        .map_err(e)?
        .ok_or(ProbeError::NoAnswer("not delivered"))?;
    sub.drop_abruptly();
    let mut sub = Client::connect(addr, p, &o).map_err(e)?;
    let again = recv_on(&mut sub, &topic).map_err(e)?;
    match again {
        Some(m) => Ok((
            m.dup,
            format!(
                "first dup={}, redelivered dup={}",
                first.dup as u8, m.dup as u8
            ),
        )),
        None => Ok((false, "not redelivered at all".into())),
    }
}

fn last_will(b: &Broker, p: MqttVersion) -> R {
    let addr = b.addr(p);
    let topic = unique("will");
    let mut watch = Client::connect(addr, p, &opts(&unique("watch"), true)).map_err(e)?;
    watch.subscribe(&topic, 1).map_err(e)?;
    let with_will = |id: &str| ConnectOptions {
        will: Some((topic.clone(), b"gone".to_vec(), 1, false)),
        ..opts(id, true)
    };
    Client::connect(addr, p, &with_will(&unique("w1")))
        .map_err(e)?
        .drop_abruptly();
    let on_loss = recv_on(&mut watch, &topic).map_err(e)?.is_some();
    Client::connect(addr, p, &with_will(&unique("w2")))
        .map_err(e)?
        .disconnect();
    let after_disconnect = recv_on(&mut watch, &topic).map_err(e)?.is_some();
    Ok((
        on_loss && !after_disconnect,
        format!("will on reset: {on_loss}; after DISCONNECT: {after_disconnect}"),
    ))
}

fn retained(b: &Broker, p: MqttVersion) -> R {
    let addr = b.addr(p);
    let topic = unique("ret");
    let mut publ = Client::connect(addr, p, &opts(&unique("pub"), true)).map_err(e)?;
    publ.publish(&topic, b"kept", 1, true).map_err(e)?;
    let mut sub = Client::connect(addr, p, &opts(&unique("sub"), true)).map_err(e)?;
    sub.subscribe(&topic, 1).map_err(e)?;
    let got = recv_on(&mut sub, &topic).map_err(e)?;
    publ.publish(&topic, b"", 1, true).map_err(e)?; // clear it
    Ok(match got {
        Some(m) => (
            m.retain && m.text() == "kept",
            format!(
                "new subscriber got {:?} retain={}",
                m.text(),
                m.retain as u8
            ),
        ),
        None => (false, "new subscriber got nothing".into()),
    })
}

fn takeover(b: &Broker, p: MqttVersion) -> R {
    let addr = b.addr(p);
    let id = unique("same");
    let mut first = Client::connect(addr, p, &opts(&id, true)).map_err(e)?;
    let _second = Client::connect(addr, p, &opts(&id, true)).map_err(e)?;
    let dropped = matches!(
        first.recv(Instant::now() + WAIT),
        Err(crate::ClientError::Closed)
    );
    Ok((dropped, format!("first connection dropped: {dropped}")))
}

fn survive_restart(b: &mut Broker, p: MqttVersion) -> R {
    if !b.can_restart() {
        return Err(ProbeError::CannotRestart);
    }
    let id = unique("restart");
    let o = ConnectOptions {
        session_expiry_s: Some(300),
        ..opts(&id, false)
    };
    let mut c = Client::connect(b.addr(p), p, &o).map_err(e)?;
    c.subscribe(&unique("rt"), 1).map_err(e)?;
    c.disconnect();
    b.restart(Restart::Graceful).map_err(e)?;
    let c = Client::connect(b.addr(p), p, &o).map_err(e)?;
    let sp = c.session_present;
    c.disconnect();
    Ok((
        sp,
        format!("after SIGTERM and restart: session_present={}", sp as u8),
    ))
}

fn queue_limit(b: &Broker, p: MqttVersion) -> R {
    const SENT: usize = 3000;
    let addr = b.addr(p);
    let (id, topic) = (unique("queue"), unique("queuetopic"));
    let o = ConnectOptions {
        session_expiry_s: Some(300),
        ..opts(&id, false)
    };
    let mut sub = Client::connect(addr, p, &o).map_err(e)?;
    sub.subscribe(&topic, 1).map_err(e)?;
    sub.disconnect();
    let mut publ = Client::connect(addr, p, &opts(&unique("pub"), true)).map_err(e)?;
    for i in 0..SENT {
        // 100-byte payloads: enough to pass mosquitto's 1000-message limit and
        // rumqttd's 4 × 64 KiB segments configured here.
        publ.publish(&topic, format!("{i:0>100}").as_bytes(), 1, false)
            .map_err(e)?;
    }
    let mut sub = Client::connect(addr, p, &o).map_err(e)?;
    let mut got = Vec::new();
    while let Some(m) = recv_on(&mut sub, &topic).map_err(e)? {
        if let Ok(i) = m.text().trim_start_matches('0').parse::<usize>() {
            got.push(i);
        } else if m.text().chars().all(|c| c == '0') {
            got.push(0);
        }
    }
    let (first, last) = (got.first().copied(), got.last().copied());
    let policy = match (got.len(), first, last) {
        (n, _, _) if n >= SENT => "no limit reached".to_string(),
        (0, _, _) => "nothing kept: no offline queue at all".to_string(),
        (_, Some(0), Some(l)) => format!("drops the newest (kept 0..={l})"),
        (_, Some(f), Some(l)) if l == SENT - 1 => format!("drops the oldest (kept {f}..={l})"),
        (_, f, l) => format!("kept {f:?}..{l:?}"),
    };
    // A broker that keeps nothing has no queue to bound: not honoured.
    Ok((
        !got.is_empty() && got.len() < SENT,
        format!("{} of {SENT} queued messages kept: {policy}", got.len()),
    ))
}

/// Runs every probe against `broker` over `proto`.
pub fn check(broker: &mut Broker, proto: MqttVersion) -> Report {
    let findings = Semantic::ALL
        .iter()
        .map(|s| probe(broker, proto, *s))
        .collect();
    Report {
        broker: broker.name().to_string(),
        findings,
    }
}

/// Runs one probe.
pub fn probe(broker: &mut Broker, proto: MqttVersion, s: Semantic) -> Finding {
    {
        let r = match s {
            Semantic::QosCapping => qos_capping(broker, proto),
            Semantic::Qos0NotQueued => qos0_not_queued(broker, proto),
            Semantic::SessionExpiry => session_expiry(broker, MqttVersion::V5),
            Semantic::MessageExpiry => message_expiry(broker, MqttVersion::V5),
            Semantic::DupOnRedelivery => dup_on_redelivery(broker, proto),
            Semantic::LastWill => last_will(broker, proto),
            Semantic::Retained => retained(broker, proto),
            Semantic::Takeover => takeover(broker, proto),
            Semantic::SessionsSurviveRestart => survive_restart(broker, proto),
            Semantic::QueueLimit => queue_limit(broker, proto),
        };
        match r {
            Ok((honoured, detail)) => Finding {
                semantic: s,
                honoured: Some(honoured),
                detail,
            },
            Err(why) => Finding {
                semantic: s,
                honoured: None,
                detail: format!("not probed: {why}"),
            },
        }
    }
}
