//! The scenarios: each drives the device through its console, plays the cloud
//! through a broker client, and fails with the promise it guards named first.

use crate::dut::{Capabilities, Dut, ExpectError};
use crate::transcript::Transcript;
use crate::wire::{Dir, Packet};
use hil_broker::client::ConnectOptions;
use hil_broker::{Broker, Client, Protocol, Restart, SessionsOnRestart};
use hil_session::Event;
use std::time::{Duration, Instant};

/// A broken promise: which, and what was seen.
#[derive(Debug, Clone)]
pub struct Failure {
    pub promise: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "broken promise: {}: {}", self.promise, self.detail)
    }
}

pub type Outcome = Result<(), Failure>;

pub struct Ctx<'a> {
    pub broker: &'a mut Broker,
    /// Between the device and the broker.
    pub proxy: &'a crate::faults::FaultProxy,
    pub keepalive_s: u16,
    pub proto: Protocol,
    pub dut: Dut,
    pub t: Transcript,
    /// The device's backoff cap when the runner configured it (the sim); a
    /// board's is learnt from the windows its `backoff` lines report.
    pub backoff_cap_ms: Option<u64>,
    /// Makes command ids unique to this run: a board's inbox remembers the
    /// ids it executed in earlier runs, and rightly ignores them.
    pub nonce: String,
    /// More sim devices on the same proxy (sim backend only).
    pub sims: Option<SimFactory>,
    /// From the rig file's expected MAC, when known.
    pub expected_client_id: Option<String>,
}

/// What a scenario needs of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The device reaches the runner's broker.
    Broker,
    WifiToggle,
    Reset,
    BrokerRestart,
    LinkFaults,
    /// The scenario's assertions need this of the broker (`hil broker check`).
    Semantic(hil_broker::check::Semantic),
    /// MQTT 5 features (expiry intervals).
    Mqtt5,
    /// More sim devices, or a power cut (kill -9): the sim backend only.
    Sim,
}

impl Need {
    /// Why a backend without it cannot serve the scenario, or None if it can.
    pub fn unmet(
        &self,
        caps: &Capabilities,
        backend: &str,
        proto: hil_broker::Protocol,
    ) -> Option<String> {
        let ok = match self {
            Need::Semantic(_) => true,
            Need::Mqtt5 => {
                if proto != hil_broker::Protocol::V5 {
                    return Some(
                        "needs MQTT 5 (expiry intervals do not exist in 3.1.1): run with --mqtt 5"
                            .into(),
                    );
                }
                true
            }
            Need::Sim => {
                if backend != "sim" {
                    return Some(format!("needs extra sim devices or a power cut, which the {backend} backend cannot give"));
                }
                true
            }
            Need::Broker => caps.reaches_broker,
            Need::WifiToggle => caps.wifi_toggle,
            Need::Reset => caps.reset,
            Need::BrokerRestart => caps.broker_restart,
            Need::LinkFaults => caps.link_faults,
        };
        if ok {
            return None;
        }
        Some(match self {
            Need::Broker | Need::BrokerRestart | Need::LinkFaults if backend == "wokwi" => {
                "the Wokwi cloud cannot reach a broker or fault proxy on this host (needs the private gateway)".into()
            }
            other => format!("the {backend} backend cannot {other:?}"),
        })
    }
}

/// Starts extra sim devices for a scenario, on the scenario's proxy.
#[derive(Clone)]
pub struct SimFactory {
    pub spec: crate::dut::SimSpec,
    /// The main device's state dir (a respawn after a power cut reuses it).
    pub main_state: std::path::PathBuf,
    pub transcript: Transcript,
}

impl SimFactory {
    /// A device with `mac` and its own flash; `edit` adjusts its flags.
    pub fn start(
        &self,
        mac: &str,
        edit: impl FnOnce(&mut crate::dut::SimSpec),
    ) -> Result<(Dut, crate::run::TempDir), String> {
        let mut spec = self.spec.clone();
        spec.mac = mac.into();
        edit(&mut spec);
        let state = crate::run::TempDir::new()?;
        let dut = Dut::start_sim_as(
            &spec,
            state.path(),
            &self.transcript,
            crate::transcript::Source::Fleet,
        )?;
        Ok((dut, state))
    }

    /// The main device again after a power cut: same MAC, same flash.
    pub fn respawn_main(&self) -> Result<Dut, String> {
        Dut::start_sim(&self.spec, &self.main_state, &self.transcript)
    }

    /// An extra device again after a power cut: same MAC, same flash.
    pub fn restart(&self, mac: &str, state: &crate::run::TempDir) -> Result<Dut, String> {
        let mut spec = self.spec.clone();
        spec.mac = mac.into();
        Dut::start_sim_as(
            &spec,
            state.path(),
            &self.transcript,
            crate::transcript::Source::Fleet,
        )
    }
}

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub needs: &'static [Need],
    /// The device's keep-alive for this scenario (seconds).
    pub keepalive_s: u16,
    /// The sim device's MQTT 5 Session Expiry Interval (seconds).
    pub session_expiry_s: u32,
    /// The sim device's telemetry buffer.
    pub outbox_capacity: u64,
    pub run: fn(&mut Ctx) -> Outcome,
}

pub const ALL: &[Scenario] = &[
    Scenario {
        name: "boot_identity",
        needs: &[Need::Reset],
        about: "the device boots, reports a client ID derived from its MAC, and answers !status with the same ID",
        keepalive_s: 5,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        run: boot_identity,
    },
    Scenario {
        name: "queued_commands",
        needs: &[Need::Broker, Need::WifiToggle],
        about: "commands published at QoS 1 and 2 while the device is offline arrive once each, in order",
        keepalive_s: 5,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        run: queued_commands,
    },
    Scenario {
        name: "telemetry_flush",
        needs: &[Need::Broker, Need::WifiToggle],
        about: "readings taken during a Wi-Fi outage are published in order, contiguous, none lost",
        keepalive_s: 5,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        run: telemetry_flush,
    },
    Scenario {
        name: "stable_client_id",
        needs: &[Need::Broker, Need::Reset, Need::WifiToggle],
        about: "the client ID is the same after three reboots and an outage; the session survives",
        keepalive_s: 5,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        run: stable_client_id,
    },
    Scenario {
        name: "broker_restart",
        needs: &[Need::Broker, Need::BrokerRestart],
        about: "after kill -9 of the broker the device backs off with jitter, reconnects, re-subscribes",
        keepalive_s: 5,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        run: broker_restart,
    },
    Scenario {
        name: "link_blackhole",
        needs: &[Need::Broker, Need::LinkFaults],
        about: "a silent link is noticed within 1.5 x keep-alive; the broker publishes the Will; status is online again after",
        keepalive_s: 2,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        run: link_blackhole,
    },
    Scenario {
        name: "effective_qos",
        needs: &[Need::Broker, Need::Sim, Need::Semantic(hil_broker::check::Semantic::QosCapping)],
        about: "QoS 2 commands reach devices subscribed at 0, 1 and 2 at min(publish, subscription); a lower subscription is the QoS mismatch pitfall",
        keepalive_s: 5,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        run: effective_qos,
    },
    Scenario {
        name: "last_will",
        needs: &[Need::Broker, Need::LinkFaults, Need::Sim, Need::Semantic(hil_broker::check::Semantic::LastWill)],
        about: "the Last Will `offline` on a cut link and on a power cut; retained `online` after each recovery",
        keepalive_s: 5,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        run: last_will,
    },
    Scenario {
        name: "session_expiry",
        needs: &[Need::Broker, Need::Mqtt5, Need::WifiToggle, Need::Semantic(hil_broker::check::Semantic::SessionExpiry)],
        about: "offline shorter than the Session Expiry Interval keeps the session; longer loses it, the device re-subscribes and nothing stale runs",
        keepalive_s: 5,
        session_expiry_s: 2,
        outbox_capacity: 64,
        run: session_expiry,
    },
    Scenario {
        name: "message_expiry",
        needs: &[Need::Broker, Need::Mqtt5, Need::WifiToggle, Need::Semantic(hil_broker::check::Semantic::MessageExpiry)],
        about: "a command that expires during the outage is not delivered; a longer-lived one is, with its remaining interval",
        keepalive_s: 5,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        run: message_expiry,
    },
    Scenario {
        name: "buffer_overflow",
        needs: &[Need::Broker, Need::WifiToggle, Need::Sim],
        about: "an outage that overflows the telemetry buffer drops the oldest, counts the drops on the console and in telemetry, flushes the rest in order",
        keepalive_s: 5,
        session_expiry_s: 3600,
        outbox_capacity: 8,
        run: buffer_overflow,
    },
    Scenario {
        name: "client_id_takeover",
        needs: &[Need::Broker, Need::Sim, Need::Semantic(hil_broker::check::Semantic::Takeover)],
        about: "a second device with the same client ID takes the session over; the runner reports the duplicate client ID pitfall",
        keepalive_s: 5,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        run: client_id_takeover,
    },
    Scenario {
        name: "duplicate_command",
        needs: &[Need::Broker],
        about: "a command delivered twice (QoS 1 at-least-once) is acknowledged twice and executed once",
        keepalive_s: 5,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        run: duplicate_command,
    },
    Scenario {
        name: "interrupted_subscribe",
        needs: &[Need::Broker, Need::Sim, Need::LinkFaults],
        about: "a link loss and a power cut between CONNACK and SUBACK: session_present=1 comes back without the subscription; the device subscribes again and gets its command",
        keepalive_s: 5,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        run: interrupted_subscribe,
    },
    Scenario {
        name: "reconnect_storm",
        needs: &[Need::Broker, Need::Sim, Need::BrokerRestart],
        about: "50 devices lose the broker at once: jittered backoff spreads their reconnects; every device reconnects and gets its command",
        keepalive_s: 10,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        run: reconnect_storm,
    },
    Scenario {
        name: "qos_lab",
        needs: &[
            Need::Broker,
            Need::Sim,
            Need::LinkFaults,
            Need::Semantic(hil_broker::check::Semantic::QosCapping),
            Need::Semantic(hil_broker::check::Semantic::DupOnRedelivery),
        ],
        about: "100 commands per QoS over a link cut at seeded random points (20 %): a table of delivered, lost and duplicated per QoS",
        keepalive_s: 10,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        run: qos_lab,
    },
];

/// The width of the name column in tables: the longest scenario name.
pub fn name_width() -> usize {
    ALL.iter().map(|s| s.name.len()).max().unwrap_or(8)
}

pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|s| s.name == name)
}

const STEP: Duration = Duration::from_secs(15);

fn on(promise: &'static str) -> impl Fn(ExpectError) -> Failure {
    move |e| Failure {
        promise,
        detail: e.0,
    }
}

fn fail(promise: &'static str, detail: impl Into<String>) -> Failure {
    Failure {
        promise,
        detail: detail.into(),
    }
}

fn client_id(ctx: &mut Ctx) -> Result<String, Failure> {
    if let Some(id) = ctx.dut.seen.iter().rev().find_map(|e| match e {
        Event::Id { client_id } => Some(client_id.clone()),
        _ => None,
    }) {
        return Ok(id);
    }
    device_id(&mut ctx.dut, "device reports its identity")
}

fn cloud(ctx: &mut Ctx, name: &str) -> Result<Client, Failure> {
    let addr = ctx.broker.addr(ctx.proto);
    ctx.t.runner(format!("cloud client {name} connects"));
    Client::connect(addr, ctx.proto, &ConnectOptions::new(name))
        .map_err(|e| fail("test rig: broker reachable", format!("cloud client: {e}")))
}

/// A QoS 1 publish from a cloud client that, like a real backend, reconnects
/// when the broker drops its connection and publishes again. A dropped cloud
/// connection says nothing of the device, so the scenario goes on, and the
/// transcript keeps what the broker logged. (rumqttd 0.20 dropped the storm's
/// cloud client once: the id-reuse bug described at `Client::disconnect`,
/// now avoided by the readiness probe.) A resend is safe: the device dedupes
/// commands by id, and QoS 1 allows duplicates anyway.
fn publish_reconnecting(
    ctx: &mut Ctx,
    cloud: &mut Client,
    name: &str,
    topic: &str,
    payload: &[u8],
) -> Result<(), String> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        match cloud.publish(topic, payload, 1, false) {
            Ok(()) => return Ok(()),
            Err(hil_broker::client::ClientError::Closed) if attempt < ATTEMPTS => {
                ctx.t.note(format!(
                    "the broker closed {name}'s connection (publish to {topic}); it reconnects and publishes again. Broker log, last lines:\n{}",
                    ctx.broker.log_lines(5)
                ));
                cloud
                    .reconnect()
                    .map_err(|e| format!("{name} could not reconnect: {e}"))?;
                attempt += 1;
            }
            Err(e) => return Err(format!("{name} could not publish to {topic}: {e}")),
        }
    }
}

fn connack(ctx: &mut Ctx, promise: &'static str) -> Result<bool, Failure> {
    match ctx
        .dut
        .expect("CONNACK", STEP, |e| matches!(e, Event::MqttConnack { .. }))
        .map_err(on(promise))?
    {
        Event::MqttConnack {
            session_present,
            rc,
        } => {
            if rc != 0 {
                return Err(fail(
                    promise,
                    format!("broker refused the connection, rc={rc}"),
                ));
            }
            Ok(session_present)
        }
        _ => unreachable!(),
    }
}

fn subscribed(ctx: &mut Ctx) -> Outcome {
    ctx.dut
        .expect("subscription to its command topic", STEP, |e| {
            matches!(e, Event::MqttSubscribed { .. })
        })
        .map_err(on("device subscribes to its command topic"))?;
    Ok(())
}

fn executed(dut: &Dut) -> Vec<String> {
    dut.seen
        .iter()
        .filter_map(|e| match e {
            Event::Cmd { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// Publishes a sentinel command and waits until the device executes it: every
/// earlier delivery (or redelivery) has shown up by then.
fn sentinel(ctx: &mut Ctx, cloud: &mut Client, topic: &str, promise: &'static str) -> Outcome {
    let nonce = ctx.nonce.clone();
    cloud
        .publish(
            topic,
            format!("{{\"id\":\"sentinel-{}\"}}", ctx.nonce).as_bytes(),
            1,
            false,
        )
        .map_err(|e| fail(promise, format!("cloud publish: {e}")))?;
    ctx.t.cloud("publish sentinel qos=1");
    ctx.dut
        .expect(
            "the sentinel command",
            STEP,
            |e| matches!(e, Event::Cmd { id, .. } if *id == format!("sentinel-{nonce}")),
        )
        .map_err(on(promise))?;
    Ok(())
}

fn queued_commands(ctx: &mut Ctx) -> Outcome {
    const P: &str = "queued commands arrive exactly once, in publish order";
    let id = client_id(ctx)?;
    subscribed(ctx)?;
    ctx.dut.command("!wifi off").map_err(on(P))?;
    let mut cloud = cloud(ctx, "cloud-commands")?;
    let topic = format!("devices/{id}/cmd");
    let mut expected = Vec::new();
    for (n, qos) in [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)] {
        let cid = format!("c{n}-{}", ctx.nonce);
        let payload = format!("{{\"id\":\"{cid}\",\"do\":\"blink\"}}");
        cloud
            .publish(&topic, payload.as_bytes(), qos, false)
            .map_err(|e| fail(P, format!("cloud publish: {e}")))?;
        ctx.t.cloud(format!("publish {cid} qos={qos}"));
        expected.push(cid);
    }
    ctx.dut.command("!wifi on").map_err(on(P))?;
    if !connack(ctx, P)? {
        return Err(fail(
            "persistent session (clean_session=0 and a stable client ID)",
            "CONNACK session_present=0 after the outage: the broker did not keep the session, so commands queued for the device are lost",
        ));
    }
    sentinel(ctx, &mut cloud, &topic, P)?;
    expected.push(format!("sentinel-{}", ctx.nonce));
    let got = executed(&ctx.dut);
    if got != expected {
        return Err(fail(P, format!("executed {got:?}, expected {expected:?}")));
    }
    ctx.t.runner(format!(
        "verdict: executed {} commands once each, in order",
        got.len()
    ));
    Ok(())
}

fn telemetry_seq(text: &str) -> Option<u32> {
    let rest = text.split("\"seq\":").nth(1)?;
    rest.chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

fn telemetry_flush(ctx: &mut Ctx) -> Outcome {
    const P: &str = "offline telemetry is buffered and flushed in order";
    let id = client_id(ctx)?;
    let mut cloud = cloud(ctx, "cloud-telemetry")?;
    cloud
        .subscribe(&format!("devices/{id}/telemetry"), 1)
        .map_err(|e| fail(P, format!("cloud subscribe: {e}")))?;
    subscribed(ctx)?;
    ctx.dut.command("!wifi off").map_err(on(P))?;
    const M: u32 = 5;
    ctx.dut.command(&format!("!telemetry {M}")).map_err(on(P))?;
    ctx.dut.command("!wifi on").map_err(on(P))?;
    let deadline = Instant::now() + STEP;
    let mut seqs: Vec<u32> = Vec::new();
    let mut last_new = 0;
    while seqs.len() < M as usize {
        let Some(msg) = cloud
            .recv(deadline)
            .map_err(|e| fail(P, format!("cloud: {e}")))?
        else {
            return Err(fail(
                P,
                format!("only {} of {M} readings arrived: {seqs:?}", seqs.len()),
            ));
        };
        let text = msg.text();
        ctx.t.cloud(format!(
            "telemetry qos={} dup={} {text}",
            msg.qos, msg.dup as u8
        ));
        let Some(seq) = telemetry_seq(&text) else {
            return Err(fail(P, format!("telemetry without a seq: {text}")));
        };
        if seqs.contains(&seq) {
            if !msg.dup {
                return Err(fail(
                    "a resend carries DUP",
                    format!("seq {seq} arrived twice, the second time without DUP"),
                ));
            }
            continue;
        }
        if seq <= last_new {
            return Err(fail(P, format!("seq {seq} arrived after {last_new}")));
        }
        last_new = seq;
        seqs.push(seq);
    }
    let first = seqs[0];
    if seqs != (first..first + M).collect::<Vec<_>>() {
        return Err(fail(P, format!("sequence not contiguous: {seqs:?}")));
    }
    // The wire side: a reading the device published twice carries DUP the second time.
    let mut published: Vec<u32> = Vec::new();
    for p in ctx.proxy.wire().packets(Dir::Up) {
        if let Packet::Publish {
            topic,
            dup,
            payload,
            ..
        } = p
        {
            if !topic.ends_with("/telemetry") {
                continue;
            }
            let Some(seq) = telemetry_seq(&payload) else {
                continue;
            };
            if published.contains(&seq) && !dup {
                return Err(fail(
                    "a resend carries DUP",
                    format!("the device sent seq {seq} again without DUP"),
                ));
            }
            published.push(seq);
        }
    }
    ctx.t.runner(format!(
        "verdict: {M} readings, seq {first}..{}",
        first + M - 1
    ));
    Ok(())
}

fn stable_client_id(ctx: &mut Ctx) -> Outcome {
    const P: &str = "stable client ID (same on every boot, never random)";
    let first = client_id(ctx)?;
    subscribed(ctx)?;
    let keeps = ctx.broker.sessions_on_restart() != SessionsOnRestart::Unknown;
    // Boot counts are relative: a board (or a reused sim) has booted before.
    let first_boot = ctx
        .dut
        .seen
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Boot { count, .. } => Some(*count),
            _ => None,
        })
        .unwrap_or(0);
    for boot in first_boot + 1..=first_boot + 3 {
        ctx.dut.command("!reboot").map_err(on(P))?;
        ctx.dut
            .expect(
                "boot",
                STEP,
                |e| matches!(e, Event::Boot { count, .. } if *count == boot),
            )
            .map_err(on(P))?;
        ctx.dut
            .expect("id", STEP, |e| matches!(e, Event::Id { .. }))
            .map_err(on(P))?;
        let id = client_id(ctx)?;
        if id != first {
            return Err(fail(
                P,
                format!("boot {boot}: client ID {id}, first boot had {first}"),
            ));
        }
        let sp = connack(ctx, P)?;
        if keeps && !sp {
            return Err(fail(
                "persistent session (clean_session=0 and a stable client ID)",
                format!("boot {boot}: CONNACK session_present=0"),
            ));
        }
    }
    ctx.dut.command("!wifi off").map_err(on(P))?;
    ctx.dut.command("!wifi on").map_err(on(P))?;
    connack(ctx, P)?;
    let ids: Vec<&String> = ctx
        .dut
        .seen
        .iter()
        .filter_map(|e| match e {
            Event::Id { client_id } => Some(client_id),
            _ => None,
        })
        .collect();
    if let Some(other) = ids.iter().find(|i| ***i != first) {
        return Err(fail(P, format!("the device also used client ID {other}")));
    }
    // The wire side: every CONNECT the broker saw.
    let connects: Vec<(String, bool)> = ctx
        .proxy
        .wire()
        .packets(Dir::Up)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Connect {
                client_id, clean, ..
            } => Some((client_id, clean)),
            _ => None,
        })
        .collect();
    if connects.len() < 5 {
        return Err(fail(
            P,
            format!(
                "expected 5 CONNECTs on the wire (boot, 3 reboots, outage), saw {}",
                connects.len()
            ),
        ));
    }
    if let Some((id, _)) = connects.iter().find(|(id, _)| *id != first) {
        return Err(fail(
            P,
            format!("a CONNECT on the wire carried client ID {id}, the console said {first}"),
        ));
    }
    if connects.iter().any(|(_, clean)| *clean) {
        return Err(fail(
            "persistent session (clean_session=0 and a stable client ID)",
            "a CONNECT on the wire has clean_session=1",
        ));
    }
    ctx.t.runner(format!(
        "verdict: client ID {first} on all {} console reports and all {} CONNECTs on the wire",
        ids.len(),
        connects.len()
    ));
    Ok(())
}

fn broker_restart(ctx: &mut Ctx) -> Outcome {
    const P: &str = "reconnect with capped, jittered backoff after a broker restart";
    let id = client_id(ctx)?;
    subscribed(ctx)?;
    // A persisting broker must have stored the subscription before it dies,
    // or it restores a session without it and still says session_present=1.
    if !ctx
        .broker
        .wait_persisted(&[format!("devices/{id}/cmd")], Duration::from_secs(5))
    {
        ctx.t
            .note("the broker did not store the subscription within 5 s");
    }
    ctx.t.runner("broker: kill -9");
    ctx.broker.stop(Restart::Kill);
    // The outage itself is the scenario's parameter: the device must keep
    // retrying (with backoff) for this long while nothing listens.
    let down = Duration::from_millis(1500);
    let until = Instant::now() + down;
    let _ = ctx.dut.expect("", down, |_| Instant::now() >= until);
    ctx.dut.drain();
    ctx.t.runner("broker: start again");
    let back = Instant::now();
    ctx.broker
        .start_again()
        .map_err(|e| fail("test rig: broker restarts", e.to_string()))?;
    let cap = ctx.backoff_cap_ms.unwrap_or_else(|| {
        ctx.dut
            .seen
            .iter()
            .filter_map(|e| match e {
                Event::Backoff { hi_ms, .. } => Some(*hi_ms * 2),
                _ => None,
            })
            .max()
            .unwrap_or(30_000)
    });
    let within = Duration::from_millis(cap) + Duration::from_secs(5);
    let sp = connack(ctx, P)?;
    let took = back.elapsed();
    if took > within {
        return Err(fail(
            P,
            format!(
                "reconnected {took:?} after the broker came back; the cap is {} ms",
                cap
            ),
        ));
    }
    let backoffs: Vec<(u32, u64, u64, u64)> = ctx
        .dut
        .seen
        .iter()
        .filter_map(|e| match e {
            Event::Backoff {
                attempt,
                delay_ms,
                lo_ms,
                hi_ms,
            } => Some((*attempt, *delay_ms, *lo_ms, *hi_ms)),
            _ => None,
        })
        .collect();
    if backoffs.len() < 2 {
        return Err(fail(
            P,
            format!(
                "expected repeated reconnect attempts while the broker was down, saw {backoffs:?}"
            ),
        ));
    }
    for (attempt, delay, lo, hi) in &backoffs {
        if delay < lo || delay > hi || *hi > cap {
            return Err(fail(
                P,
                format!(
                    "attempt {attempt}: delay {delay} ms outside its window {lo}..{hi} (cap {})",
                    cap
                ),
            ));
        }
        if lo >= hi {
            return Err(fail(
                "jitter spreads reconnects (no thundering herd)",
                format!("attempt {attempt}: window {lo}..{hi} ms has no jitter: a fleet would reconnect in lockstep"),
            ));
        }
    }
    if backoffs
        .windows(2)
        .any(|w| w[1].3 < w[0].3 && w[1].0 > w[0].0)
    {
        return Err(fail(
            P,
            format!("backoff ceiling shrank between attempts: {backoffs:?}"),
        ));
    }
    // The wire side: the device's connection attempts while the broker was
    // down, as the proxy saw them. None may come sooner than the smallest
    // window floor allows (20 ms for scheduling).
    let attempts: Vec<Instant> = ctx
        .proxy
        .wire()
        .records()
        .into_iter()
        .filter_map(|r| match r.event {
            crate::faults::WireEvent::Attempt {
                reached_broker: false,
                ..
            } => Some(r.at),
            _ => None,
        })
        .collect();
    let floor = backoffs.iter().map(|b| b.2).min().unwrap_or(0);
    for w in attempts.windows(2) {
        let gap = w[1].duration_since(w[0]);
        if gap + Duration::from_millis(20) < Duration::from_millis(floor) {
            return Err(fail(
                P,
                format!("two connection attempts {gap:?} apart on the wire; the smallest backoff floor is {floor} ms"),
            ));
        }
    }
    ctx.t
        .runner(format!("device reconnected; session_present={}", sp as u8));
    if !sp {
        ctx.dut
            .expect("re-subscription after session_present=0", STEP, |e| {
                matches!(e, Event::MqttSubscribed { .. })
            })
            .map_err(on(
                "re-subscribe when the broker lost the session (session_present=0)",
            ))?;
    }
    let mut cloud = cloud(ctx, "cloud-after-restart")?;
    sentinel(
        ctx,
        &mut cloud,
        &format!("devices/{id}/cmd"),
        "commands arrive after a broker restart (re-subscribed)",
    )
    .map_err(|f| {
        if sp {
            f
        } else {
            fail(
                "re-subscribe when the broker lost the session (session_present=0)",
                f.detail,
            )
        }
    })?;
    ctx.t.runner(
        "verdict: every backoff inside its window, attempts on the wire no closer than the floor",
    );
    ctx.t.note(format!(
        "{} backoff lines, {} refused attempts on the wire",
        backoffs.len(),
        attempts.len()
    ));
    Ok(())
}

fn status(cloud: &mut Client, topic: &str, want: &str, within: Duration) -> Result<bool, Failure> {
    let deadline = Instant::now() + within;
    let got = cloud
        .recv_matching(deadline, |m| m.topic == topic && m.text() == want)
        .map_err(|e| fail("test rig: cloud client", e.to_string()))?;
    Ok(got.is_some())
}

fn link_blackhole(ctx: &mut Ctx) -> Outcome {
    const P: &str = "a dead link is noticed within 1.5 x keep-alive";
    const WILL: &str =
        "Last Will `offline` on an ungraceful loss, retained `online` after recovery";
    let id = client_id(ctx)?;
    subscribed(ctx)?;
    let topic = format!("devices/{id}/status");
    let mut cloud = cloud(ctx, "cloud-status")?;
    cloud
        .subscribe(&topic, 1)
        .map_err(|e| fail("test rig: cloud client", e.to_string()))?;
    if !status(&mut cloud, &topic, "online", STEP)? {
        return Err(fail(WILL, "no retained `online` status while connected"));
    }
    ctx.t.cloud("status online (retained)");
    ctx.t.runner("link: blackhole");
    ctx.proxy.blackhole(true);
    let t0 = Instant::now();
    // The device's own keep-alive, as its CONNECT declared it on the wire.
    let ka_s = ctx
        .proxy
        .wire()
        .packets(Dir::Up)
        .iter()
        .rev()
        .find_map(|p| match p {
            Packet::Connect { keepalive, .. } => Some(*keepalive),
            _ => None,
        })
        .unwrap_or(ctx.keepalive_s);
    let ka = Duration::from_secs(ka_s as u64);
    // 1.5 x keep-alive, plus 0.5 s for the sim's scheduling.
    let limit = ka * 3 / 2 + Duration::from_millis(500);
    ctx.dut
        .expect("the device to notice the dead link", limit, |e| {
            matches!(e, Event::MqttDisconnected { .. })
        })
        .map_err(on(P))?;
    let noticed = t0.elapsed();
    ctx.t.runner("device noticed the dead link");
    // The broker's own keep-alive (1.5 x) ends the session and fires the Will.
    if !status(
        &mut cloud,
        &topic,
        "offline",
        ka * 3 / 2 + Duration::from_secs(5),
    )? {
        return Err(fail(
            WILL,
            "the broker published no Last Will `offline` after the link went silent",
        ));
    }
    ctx.t.cloud("status offline (Last Will)");
    ctx.t.runner("link: restored");
    ctx.proxy.blackhole(false);
    connack(ctx, P)?;
    if !status(&mut cloud, &topic, "online", STEP)? {
        return Err(fail(
            WILL,
            "no `online` status after the device reconnected",
        ));
    }
    ctx.t.cloud("status online");
    // A newcomer sees the retained status: it must be `online`.
    let mut late = Client::connect(
        ctx.broker.addr(ctx.proto),
        ctx.proto,
        &ConnectOptions::new("cloud-late"),
    )
    .map_err(|e| fail("test rig: cloud client", e.to_string()))?;
    late.subscribe(&topic, 1)
        .map_err(|e| fail("test rig: cloud client", e.to_string()))?;
    let retained = late
        .recv(Instant::now() + STEP)
        .map_err(|e| fail("test rig: cloud client", e.to_string()))?;
    match retained {
        Some(m) if m.retain && m.text() == "online" => {
            ctx.t.cloud("retained status for a new subscriber: online")
        }
        other => {
            return Err(fail(
                WILL,
                format!(
                    "retained status for a new subscriber: {:?}",
                    other.map(|m| m.text())
                ),
            ))
        }
    }
    ctx.t.note(format!(
        "dead link noticed after {:.2} s",
        noticed.as_secs_f32()
    ));
    ctx.t.runner(format!(
        "verdict: dead link noticed within {:.1} s (1.5 x keep-alive + 0.5 s)",
        limit.as_secs_f32()
    ));
    Ok(())
}

fn boot_identity(ctx: &mut Ctx) -> Outcome {
    const P: &str = "stable client ID (same on every boot, never random)";
    // A serial board was reset (and its boot line read) while it was brought up.
    if !ctx.dut.seen.iter().any(|e| matches!(e, Event::Boot { .. })) {
        ctx.dut
            .expect("`@hil boot` line", STEP, |e| {
                matches!(e, Event::Boot { .. })
            })
            .map_err(on(P))?;
    }
    let id = client_id(ctx)?;
    let Some(hex) = id.strip_prefix("esp32c3-") else {
        return Err(fail(
            P,
            format!("client ID {id} is not <chip>-<MAC as 12 hex digits>"),
        ));
    };
    if hex.len() != 12
        || !hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        return Err(fail(
            P,
            format!("client ID {id} is not <chip>-<MAC as 12 lowercase hex digits>"),
        ));
    }
    if let Some(expected) = &ctx.expected_client_id {
        if *expected != id {
            return Err(fail(
                P,
                format!("client ID {id}, but the board's MAC gives {expected}"),
            ));
        }
    }
    let status = ctx.dut.command("!status").map_err(on(P))?;
    let reported = match &status {
        Event::Ack { fields, .. } => fields
            .iter()
            .find(|(k, _)| k == "client_id")
            .map(|(_, v)| v.clone()),
        _ => None,
    };
    if reported.as_deref() != Some(id.as_str()) {
        return Err(fail(
            P,
            format!("!status reports client ID {reported:?}, the boot said {id}"),
        ));
    }
    if ctx.dut.caps.reaches_broker {
        // Let the connection settle so the transcript is the same every run.
        subscribed(ctx)?;
    }
    ctx.t
        .runner(format!("verdict: client ID {id} at boot and in !status"));
    Ok(())
}

/// A device of the scenario's fleet: the factory, or a not-applicable failure.
fn factory<'c>(ctx: &'c Ctx) -> Result<&'c SimFactory, Failure> {
    ctx.sims
        .as_ref()
        .ok_or_else(|| fail("test rig", "this scenario needs sim devices"))
}

fn cmd_of(e: &Event, want: &str) -> Option<(u8, bool)> {
    match e {
        Event::Cmd { id, qos, dup, .. } if id == want => Some((*qos, *dup)),
        _ => None,
    }
}

fn effective_qos(ctx: &mut Ctx) -> Outcome {
    const P: &str = "delivered QoS = min(publish QoS, subscription QoS)";
    subscribed(ctx)?;
    let mut cloud = cloud(ctx, "cloud-qos")?;
    let mut mismatches = Vec::new();
    for (n, sub_qos) in [(1u8, 0u8), (2, 1), (3, 2)] {
        let mac = format!("24:0a:c4:00:40:{n:02x}");
        let f = factory(ctx)?;
        let (mut dev, _state) = f
            .start(&mac, |s| s.cmd_qos = sub_qos)
            .map_err(|e| fail("test rig", e))?;
        let id = device_id(&mut dev, P)?;
        let granted = match dev
            .expect("subscription", STEP, |e| {
                matches!(e, Event::MqttSubscribed { .. })
            })
            .map_err(on(P))?
        {
            Event::MqttSubscribed { qos, .. } => qos,
            _ => unreachable!(),
        };
        let cid = format!("q{n}-{}", ctx.nonce);
        cloud
            .publish(
                &format!("devices/{id}/cmd"),
                format!("{{\"id\":\"{cid}\"}}").as_bytes(),
                2,
                false,
            )
            .map_err(|e| fail(P, format!("cloud publish: {e}")))?;
        ctx.t.cloud(format!(
            "publish {cid} qos=2 to a device subscribed at qos={sub_qos} (granted {granted})"
        ));
        let got = dev
            .expect("the command", STEP, |e| cmd_of(e, &cid).is_some())
            .map_err(on(P))?;
        let (qos, _) = cmd_of(&got, &cid).unwrap();
        let want = 2.min(granted);
        if qos != want {
            return Err(fail(P, format!("subscription QoS {granted}, publish QoS 2: delivered at QoS {qos}, expected {want}")));
        }
        ctx.t.runner(format!(
            "subscription qos={sub_qos}: delivered at qos={qos}"
        ));
        if granted < 2 {
            mismatches.push(format!(
                "subscription QoS {granted} < publish QoS 2 -> delivered at QoS {qos}"
            ));
        }
    }
    for m in &mismatches {
        // The report's pitfall line: not a failure of the device, a warning to its designers.
        ctx.t.runner(format!(
            "pitfall: QoS mismatch: {m}: no end-to-end exactly-once guarantee"
        ));
    }
    Ok(())
}

fn last_will(ctx: &mut Ctx) -> Outcome {
    const P: &str = "Last Will `offline` on an ungraceful loss, retained `online` after recovery";
    let id = client_id(ctx)?;
    subscribed(ctx)?;
    let topic = format!("devices/{id}/status");
    let mut cloud = cloud(ctx, "cloud-will")?;
    cloud
        .subscribe(&topic, 1)
        .map_err(|e| fail("test rig: cloud client", e.to_string()))?;
    if !status(&mut cloud, &topic, "online", STEP)? {
        return Err(fail(P, "no retained `online` while connected"));
    }
    ctx.t.cloud("status online (retained)");
    // 1. The link is cut (RST both ways).
    ctx.t.runner("link: cut");
    ctx.proxy.cut();
    if !status(&mut cloud, &topic, "offline", STEP)? {
        return Err(fail(P, "no Last Will `offline` after the link was cut"));
    }
    ctx.t.cloud("status offline (Last Will after the cut)");
    connack(ctx, P)?;
    if !status(&mut cloud, &topic, "online", STEP)? {
        return Err(fail(P, "no `online` after reconnecting"));
    }
    ctx.t.cloud("status online");
    // 2. Power cut: kill -9 of the device.
    ctx.dut.power_off().map_err(|e| fail("test rig", e))?;
    // The broker sees the socket close without DISCONNECT.
    if !status(&mut cloud, &topic, "offline", STEP)? {
        return Err(fail(P, "no Last Will `offline` after a power cut"));
    }
    ctx.t
        .cloud("status offline (Last Will after the power cut)");
    let f = factory(ctx)?;
    ctx.dut = f.respawn_main().map_err(|e| fail("test rig", e))?;
    ctx.t
        .runner("power restored: the device boots from its flash");
    connack(ctx, P)?;
    if !status(&mut cloud, &topic, "online", STEP)? {
        return Err(fail(P, "no `online` after the power came back"));
    }
    ctx.t.cloud("status online");
    let mut late = Client::connect(
        ctx.broker.addr(ctx.proto),
        ctx.proto,
        &ConnectOptions::new("cloud-late-will"),
    )
    .map_err(|e| fail("test rig: cloud client", e.to_string()))?;
    late.subscribe(&topic, 1)
        .map_err(|e| fail("test rig: cloud client", e.to_string()))?;
    match late
        .recv(Instant::now() + STEP)
        .map_err(|e| fail("test rig", e.to_string()))?
    {
        Some(m) if m.retain && m.text() == "online" => {
            ctx.t.cloud("retained status for a new subscriber: online")
        }
        other => {
            return Err(fail(
                P,
                format!(
                    "retained status for a new subscriber: {:?}",
                    other.map(|m| m.text())
                ),
            ))
        }
    }
    ctx.t
        .runner("verdict: Will on cut and on power cut, online after each recovery");
    Ok(())
}

fn session_expiry(ctx: &mut Ctx) -> Outcome {
    const P: &str = "session kept within the Session Expiry Interval, lost after it";
    let id = client_id(ctx)?;
    subscribed(ctx)?;
    let topic = format!("devices/{id}/cmd");
    let mut cloud = cloud(ctx, "cloud-expiry")?;
    // Short outage: well inside the device's 2 s interval.
    ctx.dut.command("!wifi off").map_err(on(P))?;
    let kept = format!("kept-{}", ctx.nonce);
    cloud
        .publish(
            &topic,
            format!("{{\"id\":\"{kept}\"}}").as_bytes(),
            1,
            false,
        )
        .map_err(|e| fail(P, e.to_string()))?;
    ctx.t
        .cloud(format!("publish {kept} qos=1 during a short outage"));
    ctx.dut.command("!wifi on").map_err(on(P))?;
    if !connack(ctx, P)? {
        return Err(fail(
            P,
            "session_present=0 after an outage shorter than the Session Expiry Interval",
        ));
    }
    ctx.dut
        .expect("the queued command", STEP, |e| cmd_of(e, &kept).is_some())
        .map_err(on(P))?;
    // Long outage: past the interval (the interval is the scenario's parameter).
    ctx.dut.command("!wifi off").map_err(on(P))?;
    let stale = format!("stale-{}", ctx.nonce);
    cloud
        .publish(
            &topic,
            format!("{{\"id\":\"{stale}\"}}").as_bytes(),
            1,
            false,
        )
        .map_err(|e| fail(P, e.to_string()))?;
    ctx.t.cloud(format!(
        "publish {stale} qos=1, then stay offline past the 2 s interval"
    ));
    let until = Instant::now() + Duration::from_millis(3500);
    let _ = ctx
        .dut
        .expect("", Duration::from_millis(3500), |_| Instant::now() >= until);
    ctx.dut.command("!wifi on").map_err(on(P))?;
    if connack(ctx, P)? {
        return Err(fail(
            P,
            "session_present=1 after an outage longer than the Session Expiry Interval",
        ));
    }
    subscribed(ctx)?;
    sentinel(ctx, &mut cloud, &topic, P)?;
    if ctx.dut.seen.iter().any(|e| cmd_of(e, &stale).is_some()) {
        return Err(fail(P, "a command from the expired session was executed"));
    }
    ctx.t.runner("verdict: kept within the interval, expired after it, re-subscribed, nothing stale executed");
    Ok(())
}

fn message_expiry(ctx: &mut Ctx) -> Outcome {
    const P: &str =
        "expired commands are not delivered; live ones arrive with their remaining interval";
    let id = client_id(ctx)?;
    subscribed(ctx)?;
    let topic = format!("devices/{id}/cmd");
    let mut cloud = cloud(ctx, "cloud-msg-expiry")?;
    ctx.dut.command("!wifi off").map_err(on(P))?;
    let (short, long) = (
        format!("short-{}", ctx.nonce),
        format!("long-{}", ctx.nonce),
    );
    cloud
        .publish_with_expiry(
            &topic,
            format!("{{\"id\":\"{short}\"}}").as_bytes(),
            1,
            false,
            Some(1),
        )
        .map_err(|e| fail(P, e.to_string()))?;
    cloud
        .publish_with_expiry(
            &topic,
            format!("{{\"id\":\"{long}\"}}").as_bytes(),
            1,
            false,
            Some(300),
        )
        .map_err(|e| fail(P, e.to_string()))?;
    ctx.t.cloud(format!(
        "publish {short} (expiry 1 s) and {long} (expiry 300 s) while the device is offline"
    ));
    let until = Instant::now() + Duration::from_millis(2500);
    let _ = ctx
        .dut
        .expect("", Duration::from_millis(2500), |_| Instant::now() >= until);
    ctx.dut.command("!wifi on").map_err(on(P))?;
    connack(ctx, P)?;
    ctx.dut
        .expect("the long-lived command", STEP, |e| {
            cmd_of(e, &long).is_some()
        })
        .map_err(on(P))?;
    sentinel(ctx, &mut cloud, &topic, P)?;
    if ctx.dut.seen.iter().any(|e| cmd_of(e, &short).is_some()) {
        return Err(fail(
            P,
            "the command whose 1 s expiry passed during the outage was delivered",
        ));
    }
    let remaining = ctx
        .proxy
        .wire()
        .packets(Dir::Down)
        .into_iter()
        .find_map(|p| match p {
            Packet::Publish {
                payload, expiry, ..
            } if payload.contains(&long) => Some(expiry),
            _ => None,
        });
    match remaining {
        Some(Some(e)) if (290..300).contains(&e) => ctx.t.runner("the long-lived command arrived with its remaining interval"),
        other => return Err(fail(P, format!("the long-lived command arrived with expiry {other:?}, expected the remaining part of 300 s"))),
    }
    ctx.t
        .note(format!("remaining interval on delivery: {remaining:?}"));
    Ok(())
}

fn buffer_overflow(ctx: &mut Ctx) -> Outcome {
    const P: &str = "a bounded telemetry buffer drops the oldest and counts every drop";
    let id = client_id(ctx)?;
    subscribed(ctx)?;
    let mut cloud = cloud(ctx, "cloud-overflow")?;
    cloud
        .subscribe(&format!("devices/{id}/telemetry"), 1)
        .map_err(|e| fail(P, e.to_string()))?;
    let cap = 8u32;
    let taken = 20u32;
    ctx.dut.command("!wifi off").map_err(on(P))?;
    ctx.dut
        .command(&format!("!telemetry {taken}"))
        .map_err(on(P))?;
    ctx.dut.drain();
    let depth_max = ctx
        .dut
        .seen
        .iter()
        .filter_map(|e| match e {
            Event::TelemetryBuffered { depth, .. } => Some(*depth),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    if depth_max > cap {
        return Err(fail("bounded buffer (drop oldest)", format!("the buffer grew to {depth_max} readings; its capacity is {cap}: memory is unbounded")));
    }
    let dropped: Vec<u32> = ctx
        .dut
        .seen
        .iter()
        .filter_map(|e| match e {
            Event::TelemetryDropped { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    if dropped.len() as u32 != taken - cap {
        return Err(fail(
            P,
            format!(
                "{} drops reported on the console, expected {}",
                dropped.len(),
                taken - cap
            ),
        ));
    }
    if dropped.windows(2).any(|w| w[1] <= w[0]) {
        return Err(fail(P, format!("drops not oldest-first: {dropped:?}")));
    }
    ctx.dut.command("!wifi on").map_err(on(P))?;
    let deadline = Instant::now() + STEP;
    let mut got: Vec<(u32, u32)> = Vec::new();
    let mut new_reading_taken = false;
    while got.len() < (cap + 1) as usize {
        if got.len() == cap as usize && !new_reading_taken {
            // The buffer has flushed (the device has its PUBACKs, so the new
            // reading drops nothing): one more reading, which reports the drops.
            let last = dropped.last().map(|s| s + cap).unwrap_or(cap);
            let acked = |e: &Event| matches!(e, Event::TelemetryAcked { seq } if *seq == last);
            if !ctx.dut.seen.iter().any(acked) {
                ctx.dut
                    .expect("the flush acknowledged", STEP, acked)
                    .map_err(on(P))?;
            }
            ctx.dut.command("!telemetry 1").map_err(on(P))?;
            new_reading_taken = true;
        }
        let Some(m) = cloud.recv(deadline).map_err(|e| fail(P, e.to_string()))? else {
            return Err(fail(
                P,
                format!(
                    "only {} readings arrived after the outage: {got:?}",
                    got.len()
                ),
            ));
        };
        let text = m.text();
        let seq = telemetry_seq(&text).ok_or_else(|| fail(P, format!("no seq in {text}")))?;
        let d = text
            .split("\"dropped\":")
            .nth(1)
            .and_then(|r| {
                r.chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        if !got.iter().any(|(s, _)| *s == seq) {
            got.push((seq, d));
        }
        ctx.t.cloud(format!("telemetry {text}"));
    }
    let seqs: Vec<u32> = got.iter().map(|(s, _)| *s).collect();
    let first_kept = dropped.last().map(|s| s + 1).unwrap_or(1);
    let want: Vec<u32> = (first_kept..=first_kept + cap).collect();
    if seqs != want {
        return Err(fail(P, format!("after the outage the cloud got seq {seqs:?}, expected the newest {cap} then the new reading: {want:?}")));
    }
    let reported = got.last().map(|(_, d)| *d).unwrap_or(0);
    if reported != taken - cap {
        return Err(fail(
            P,
            format!(
                "the next reading reports {reported} drops, the device dropped {}",
                taken - cap
            ),
        ));
    }
    ctx.t.runner(format!("verdict: {} dropped oldest-first, counted on the console and in telemetry; the newest {cap} flushed in order", taken - cap));
    Ok(())
}

fn client_id_takeover(ctx: &mut Ctx) -> Outcome {
    const P: &str = "the runner detects a duplicate client ID";
    let id = client_id(ctx)?;
    subscribed(ctx)?;
    // A second device with the same MAC: a cloned board, or a random-ID fallback gone wrong.
    let mac = ctx
        .sims
        .as_ref()
        .map(|f| f.spec.mac.clone())
        .unwrap_or_default();
    let f = factory(ctx)?;
    let (mut twin, _state) = f.start(&mac, |_| {}).map_err(|e| fail("test rig", e))?;
    twin.expect("the twin's CONNACK", STEP, |e| {
        matches!(e, Event::MqttConnack { .. })
    })
    .map_err(on(P))?;
    // Its flash holds no confirmed subscription, so it subscribes whatever
    // session_present says; wait for it, so the wire log is complete.
    twin.expect("the twin's subscription", STEP, |e| {
        matches!(e, Event::MqttSubscribed { .. })
    })
    .map_err(on(P))?;
    ctx.t.runner(format!("a second device connected as {id}"));
    let dropped = ctx
        .dut
        .expect("the first device to be dropped", STEP, |e| {
            matches!(e, Event::MqttDisconnected { .. })
        })
        .map_err(|_| fail(P, "the broker did not drop the first connection"))?;
    ctx.t.runner(format!("first device: {dropped:?}"));
    // Seen from the wire: two live connections announced the same client ID.
    let connects = ctx
        .proxy
        .wire()
        .packets(Dir::Up)
        .into_iter()
        .filter(|p| matches!(p, Packet::Connect { client_id, .. } if *client_id == id))
        .count();
    if connects < 2 {
        return Err(fail(
            P,
            format!("expected two CONNECTs with {id} on the wire, saw {connects}"),
        ));
    }
    ctx.t.runner(format!(
        "pitfall: random/duplicate client ID: two devices share {id}; the broker hands the session to whichever connected last, and they take it from each other on every reconnect"
    ));
    drop(twin);
    Ok(())
}

fn duplicate_command(ctx: &mut Ctx) -> Outcome {
    const P: &str = "a redelivered command is executed once (de-duplication by command id)";
    let id = client_id(ctx)?;
    subscribed(ctx)?;
    let topic = format!("devices/{id}/cmd");
    let mut cloud = cloud(ctx, "cloud-dup")?;
    let cid = format!("d1-{}", ctx.nonce);
    // What a device sees when its PUBACK was lost: the same command again.
    for n in 1..=2 {
        cloud
            .publish(
                &topic,
                format!("{{\"id\":\"{cid}\",\"do\":\"open-valve\"}}").as_bytes(),
                1,
                false,
            )
            .map_err(|e| fail(P, e.to_string()))?;
        ctx.t.cloud(format!("publish {cid} qos=1 (delivery {n})"));
    }
    sentinel(ctx, &mut cloud, &topic, P)?;
    let executed = executed(&ctx.dut).iter().filter(|i| **i == cid).count();
    let duplicates = ctx
        .dut
        .seen
        .iter()
        .filter(|e| matches!(e, Event::CmdDuplicate { id, .. } if *id == cid))
        .count();
    if executed != 1 {
        return Err(fail(
            P,
            format!("{cid} executed {executed} times: QoS 1 duplicates must not run twice"),
        ));
    }
    if duplicates != 1 {
        return Err(fail(
            P,
            format!("the second delivery of {cid} was not reported as a duplicate"),
        ));
    }
    ctx.t
        .runner("verdict: executed once, the redelivery acknowledged and reported as a duplicate");
    Ok(())
}

/// The client ID a device reports when it boots.
fn device_id(dev: &mut Dut, promise: &'static str) -> Result<String, Failure> {
    match dev
        .expect("`id` line", STEP, |e| matches!(e, Event::Id { .. }))
        .map_err(on(promise))?
    {
        Event::Id { client_id } => Ok(client_id),
        _ => unreachable!(),
    }
}

/// A fresh device's client ID and its first CONNACK's session_present.
fn fleet_online(dev: &mut Dut, promise: &'static str) -> Result<(String, bool), Failure> {
    let id = device_id(dev, promise)?;
    let sp = fleet_connack(dev, "CONNACK", promise)?;
    Ok((id, sp))
}

fn fleet_connack(dev: &mut Dut, what: &str, promise: &'static str) -> Result<bool, Failure> {
    match dev
        .expect(what, STEP, |e| matches!(e, Event::MqttConnack { .. }))
        .map_err(on(promise))?
    {
        Event::MqttConnack {
            session_present, ..
        } => Ok(session_present),
        _ => unreachable!(),
    }
}

/// After a SUBSCRIBE that never reached the broker, the device reconnects;
/// the broker must answer session_present=1 (its session outlived the link)
/// and the device must subscribe again and get a command.
fn resubscribes_and_gets_a_command(
    ctx: &mut Ctx,
    dev: &mut Dut,
    id: &str,
    cloud: &mut Client,
    tag: &str,
    promise: &'static str,
) -> Outcome {
    if !fleet_connack(dev, "CONNACK after the interruption", promise)? {
        return Err(fail(
            "test rig: the broker keeps a persistent session",
            format!("{id}: session_present=0 after the interruption; the broker dropped the session, so the pitfall cannot show"),
        ));
    }
    ctx.t.runner(format!(
        "{id}: session_present=1, yet the broker never saw its SUBSCRIBE"
    ));
    dev.expect("re-subscription (SUBSCRIBE and SUBACK)", STEP, |e| {
        matches!(e, Event::MqttSubscribed { .. })
    })
    .map_err(on(promise))?;
    let cid = format!("{tag}-{}", ctx.nonce);
    cloud
        .publish(
            &format!("devices/{id}/cmd"),
            format!("{{\"id\":\"{cid}\"}}").as_bytes(),
            1,
            false,
        )
        .map_err(|e| fail(promise, e.to_string()))?;
    ctx.t.cloud(format!("publish {tag} to the device"));
    dev.expect("the command", STEP, |e| cmd_of(e, &cid).is_some())
        .map_err(on(promise))?;
    ctx.t
        .runner(format!("{id}: subscribed again and executed {tag}"));
    Ok(())
}

fn interrupted_subscribe(ctx: &mut Ctx) -> Outcome {
    const P: &str =
        "session_present=1 does not mean subscribed: subscribe until a SUBACK confirms it";
    subscribed(ctx)?;
    let f = factory(ctx)?.clone();
    let mut cloud = cloud(ctx, "cloud-sub")?;

    // 1. Link loss between CONNACK and SUBACK.
    ctx.proxy.stall_next_subscribe();
    let (mut dev, _state) = f
        .start("24:0a:c4:00:70:01", |_| {})
        .map_err(|e| fail("test rig", e))?;
    let (id, _) = fleet_online(&mut dev, P)?;
    if !ctx.proxy.wait_stalled(Instant::now() + STEP) {
        return Err(fail(P, format!("{id} never sent its SUBSCRIBE")));
    }
    ctx.t
        .runner("its link is cut while the SUBSCRIBE is held back");
    ctx.proxy.cut_stalled();
    resubscribes_and_gets_a_command(ctx, &mut dev, &id, &mut cloud, "after-cut", P)?;

    // 2. Power cut between CONNACK and SUBACK: what the device knows after
    // the reboot is only what it stored.
    let mac = "24:0a:c4:00:70:02";
    ctx.proxy.stall_next_subscribe();
    let (mut dev, state) = f.start(mac, |_| {}).map_err(|e| fail("test rig", e))?;
    let (id, _) = fleet_online(&mut dev, P)?;
    if !ctx.proxy.wait_stalled(Instant::now() + STEP) {
        return Err(fail(P, format!("{id} never sent its SUBSCRIBE")));
    }
    dev.power_off().map_err(|e| fail("test rig", e))?;
    let mut dev = f.restart(mac, &state).map_err(|e| fail("test rig", e))?;
    ctx.t
        .runner("power restored while the broker still holds a session without the subscription");
    resubscribes_and_gets_a_command(ctx, &mut dev, &id, &mut cloud, "after-power-cut", P)?;
    ctx.t.runner(
        "verdict: after a link loss and after a power cut before SUBACK the device subscribed again",
    );
    Ok(())
}

/// A text histogram of instants, in `bucket` slots from `start`.
fn histogram(times: &[Instant], start: Instant, bucket: Duration) -> (Vec<usize>, String) {
    let slot = |t: &Instant| {
        (t.saturating_duration_since(start).as_millis() / bucket.as_millis()) as usize
    };
    let n = times.iter().map(slot).max().unwrap_or(0) + 1;
    let mut counts = vec![0usize; n];
    for t in times {
        counts[slot(t)] += 1;
    }
    let mut text = String::new();
    for (i, c) in counts.iter().enumerate() {
        let from = i as u128 * bucket.as_millis();
        text.push_str(&format!(
            "{:>6}-{:<6} ms {:>3} {}\n",
            from,
            from + bucket.as_millis(),
            c,
            "#".repeat(*c)
        ));
    }
    (counts, text)
}

fn reconnect_storm(ctx: &mut Ctx) -> Outcome {
    const P: &str = "jitter spreads reconnects (no thundering herd)";
    const FLEET: usize = 50;
    subscribed(ctx)?;
    let f = factory(ctx)?;
    let mut fleet = Vec::new();
    for n in 0..FLEET {
        let mac = format!("24:0a:c4:00:{:02x}:{:02x}", 0x50 + n / 256, n % 256);
        let (dev, state) = f
            .start(&mac, |s| {
                s.backoff_base_ms = 1000;
                s.backoff_cap_ms = 8000;
            })
            .map_err(|e| fail("test rig", e))?;
        fleet.push((dev, state, String::new()));
    }
    for (dev, _, id) in fleet.iter_mut() {
        *id = device_id(dev, P)?;
        dev.expect("subscription", STEP, |e| {
            matches!(e, Event::MqttSubscribed { .. })
        })
        .map_err(on(P))?;
    }
    ctx.t.runner(format!("{FLEET} devices online"));
    let topics: Vec<String> = fleet
        .iter()
        .map(|(_, _, id)| format!("devices/{id}/cmd"))
        .collect();
    if !ctx.broker.wait_persisted(&topics, Duration::from_secs(10)) {
        ctx.t
            .note("the broker did not store every subscription within 10 s");
    }
    let killed = Instant::now();
    ctx.t.runner("broker: kill -9");
    ctx.broker.stop(Restart::Kill);
    let down = Duration::from_millis(1500);
    let until = Instant::now() + down;
    let _ = ctx.dut.expect("", down, |_| Instant::now() >= until);
    ctx.t.runner("broker: start again");
    ctx.broker
        .start_again()
        .map_err(|e| fail("test rig: broker restarts", e.to_string()))?;
    let mut cloud = cloud(ctx, "cloud-storm")?;
    let cid = format!("storm-{}", ctx.nonce);
    for (dev, _, id) in fleet.iter_mut() {
        let sp = match dev
            .expect("reconnect", STEP, |e| {
                matches!(e, Event::MqttConnack { .. })
            })
            .map_err(on(P))?
        {
            Event::MqttConnack {
                session_present, ..
            } => session_present,
            _ => unreachable!(),
        };
        if !sp {
            dev.expect("re-subscription", STEP, |e| {
                matches!(e, Event::MqttSubscribed { .. })
            })
            .map_err(on(
                "re-subscribe when the broker lost the session (session_present=0)",
            ))?;
        }
        let topic = format!("devices/{id}/cmd");
        let payload = format!("{{\"id\":\"{cid}\"}}");
        publish_reconnecting(ctx, &mut cloud, "cloud-storm", &topic, payload.as_bytes())
            .map_err(|e| fail(P, e))?;
        dev.expect("its command after the restart", STEP, |e| {
            cmd_of(e, &cid).is_some()
        })
        .map_err(on(P))?;
    }
    ctx.t.runner(format!(
        "all {FLEET} devices reconnected and executed their command"
    ));
    // Connection attempts after the loss, as the wire tap saw them; the main
    // device's first one is among them, so take the first FLEET + 1.
    let attempts: Vec<Instant> = ctx
        .proxy
        .wire()
        .records()
        .into_iter()
        .filter(|r| r.at > killed && matches!(r.event, crate::faults::WireEvent::Attempt { .. }))
        .map(|r| r.at)
        .collect();
    let firsts: Vec<Instant> = attempts.iter().take(FLEET + 1).copied().collect();
    let (counts, text) = histogram(&firsts, killed, Duration::from_millis(100));
    ctx.t.note(format!(
        "first reconnect attempts after the kill (100 ms buckets):\n{text}"
    ));
    let (_, all) = histogram(&attempts, killed, Duration::from_millis(250));
    ctx.t.note(format!(
        "all connection attempts after the kill (250 ms buckets):\n{all}"
    ));
    if firsts.len() < FLEET {
        return Err(fail(
            P,
            format!(
                "only {} of {FLEET} devices tried to reconnect",
                firsts.len()
            ),
        ));
    }
    let peak = counts.iter().copied().max().unwrap_or(0);
    if peak * 2 > FLEET {
        return Err(fail(
            P,
            format!(
                "{peak} of {} first reconnects fell in the same 100 ms: a thundering herd\n{text}",
                firsts.len()
            ),
        ));
    }
    ctx.t.runner(format!("verdict: first reconnects spread: no 100 ms slot holds more than half of the {FLEET} devices"));
    Ok(())
}

fn qos_lab(ctx: &mut Ctx) -> Outcome {
    const P: &str = "QoS 0 may lose, QoS 1 duplicates only with DUP, QoS 2 exactly once";
    const N: usize = 100;
    subscribed(ctx)?;
    let f = factory(ctx)?;
    // The lab device subscribes at QoS 2, so the delivered QoS is the publisher's.
    let (mut dev, _state) = f
        .start("24:0a:c4:00:60:01", |s| s.cmd_qos = 2)
        .map_err(|e| fail("test rig", e))?;
    let id = device_id(&mut dev, P)?;
    dev.expect("subscription", STEP, |e| {
        matches!(e, Event::MqttSubscribed { qos: 2, .. })
    })
    .map_err(on(P))?;
    let topic = format!("devices/{id}/cmd");
    let mut cloud = cloud(ctx, "cloud-lab")?;
    let mut table = String::from("qos  sent  delivered  lost  duplicated  duplicates-with-DUP\n");
    let mut verdicts = Vec::new();
    for qos in [0u8, 1, 2] {
        let ids: Vec<String> = (0..N)
            .map(|k| format!("lab-q{qos}-{k}-{}", ctx.nonce))
            .collect();
        // Seeded: the same 20 % of messages are hit on every run.
        let mut rng = hil_session::backoff::SplitMix64(0x1ab + qos as u64);
        let mut hit: Vec<usize> = (0..N).collect();
        for i in (1..N).rev() {
            let j = (hil_session::RandomSource::next_u32(&mut rng) as usize) % (i + 1);
            hit.swap(i, j);
        }
        let markers: Vec<String> = hit[..N / 5]
            .iter()
            .map(|k| format!("\"{}\"", ids[*k]))
            .collect();
        ctx.proxy.cut_after_publishes(markers);
        // Paced like the reference lab: one message at a time; after a cut the
        // next waits until the device is back, so a cut hits only its message.
        let wait = if qos == 0 {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(5)
        };
        for cid in &ids {
            let mark = dev.seen.len();
            cloud
                .publish(
                    &topic,
                    format!("{{\"id\":\"{cid}\"}}").as_bytes(),
                    qos,
                    false,
                )
                .map_err(|e| fail(P, format!("cloud publish: {e}")))?;
            let _ = dev.expect("the message", wait, |e| {
                cmd_of(e, cid).is_some() || matches!(e, Event::CmdDuplicate { id, .. } if id == cid)
            });
            let cut = dev.seen[mark..]
                .iter()
                .any(|e| matches!(e, Event::MqttDisconnected { .. }));
            let back = dev.seen[mark..]
                .iter()
                .rev()
                .take_while(|e| !matches!(e, Event::MqttDisconnected { .. }))
                .any(|e| matches!(e, Event::MqttConnack { .. }));
            if cut && !back {
                dev.expect(
                    "the device back after the cut",
                    Duration::from_secs(10),
                    |e| matches!(e, Event::MqttConnack { .. }),
                )
                .map_err(on(P))?;
            }
        }
        // A QoS 1 sentinel after the 100: every delivery or redelivery before it has happened.
        let end = format!("lab-end-q{qos}-{}", ctx.nonce);
        cloud
            .publish(&topic, format!("{{\"id\":\"{end}\"}}").as_bytes(), 1, false)
            .map_err(|e| fail(P, e.to_string()))?;
        dev.expect("the end of the batch", Duration::from_secs(60), |e| {
            cmd_of(e, &end).is_some()
        })
        .map_err(on(P))?;
        ctx.proxy.cut_after_publishes(Vec::new());
        let deliveries = |cid: &str| {
            dev.seen
                .iter()
                .filter(|e| matches!(e, Event::Cmd { id, .. } | Event::CmdDuplicate { id, .. } if id == cid))
                .count()
        };
        let counts: Vec<usize> = ids.iter().map(|c| deliveries(c)).collect();
        let delivered = counts.iter().filter(|c| **c > 0).count();
        let lost = N - delivered;
        let duplicated: usize = counts.iter().map(|c| c.saturating_sub(1)).sum();
        // Duplicates seen on the wire: broker-to-device PUBLISHes of an id after its first.
        let wire = ctx.proxy.wire().packets(Dir::Down);
        let mut dup_flagged = 0;
        let mut dup_unflagged = 0;
        for cid in &ids {
            let marker = format!("\"{cid}\"");
            let sends: Vec<bool> = wire
                .iter()
                .filter_map(|p| match p {
                    Packet::Publish { payload, dup, .. } if payload.contains(&marker) => Some(*dup),
                    _ => None,
                })
                .collect();
            for d in sends.iter().skip(1) {
                if *d {
                    dup_flagged += 1;
                } else {
                    dup_unflagged += 1;
                }
            }
        }
        table.push_str(&format!(
            "{qos:>3}  {N:>4}  {delivered:>9}  {lost:>4}  {duplicated:>10}  {dup_flagged}/{}\n",
            dup_flagged + dup_unflagged
        ));
        let verdict = match qos {
            0 if duplicated > 0 => Err(format!("QoS 0 delivered {duplicated} duplicates")),
            0 => Ok(format!(
                "QoS 0: at most once ({} lost is expected)",
                if lost > 0 { "some" } else { "none" }
            )),
            1 if lost > 0 => Err(format!("QoS 1 lost {lost} of {N}")),
            1 if dup_unflagged > 0 => {
                Err(format!("QoS 1 resent {dup_unflagged} messages without DUP"))
            }
            1 => Ok("QoS 1: none lost; every resend carried DUP".to_string()),
            _ if lost > 0 => Err(format!("QoS 2 lost {lost} of {N}")),
            _ if duplicated > 0 => Err(format!(
                "QoS 2 delivered {duplicated} duplicates to the application"
            )),
            _ => Ok("QoS 2: exactly once".to_string()),
        };
        match verdict {
            Ok(v) => verdicts.push(v),
            Err(e) => {
                ctx.t.note(format!(
                    "QoS lab ({}% of messages hit by a cut):\n{table}",
                    20
                ));
                return Err(fail(P, format!("{e}\n{table}")));
            }
        }
    }
    ctx.t.note(format!(
        "QoS lab, 20 % of messages hit by a link cut (seeded):\n{table}"
    ));
    for v in verdicts {
        ctx.t.runner(v);
    }
    Ok(())
}
