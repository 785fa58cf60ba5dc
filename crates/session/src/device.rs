//! The device: one state machine that ties identity, the MQTT engine, backoff,
//! outbox and inbox together. Inputs carry `now` (ms of the caller's monotonic
//! clock); outputs are polled in order with [`Device::poll_output`].
//!
//! Why one ordered output queue rather than quinn's separate polls: a
//! `Persist` must reach flash before anything that claims what it records.
//! Every input handler emits its outputs in three groups: first its records,
//! then its console lines, then its network and radio outputs (`Transmit`,
//! `Open`, `Close`, `Wifi`, `Reboot`). A caller that performs outputs in the
//! order polled never prints `telemetry.buffered seq=N` before the reading and
//! its sequence number are on flash, and never sends a PUBACK before the
//! command it acknowledges is remembered: crash-safe by construction.

use crate::backoff::{Backoff, RandomSource};
use crate::config::{Bug, Config, MqttVersion};
use crate::console::{Command, Event, LineError};
use crate::guard::{Guard, Item, Violation};
use crate::identity::{client_id, Topics};
use crate::inbox::Inbox;
use crate::mqtt::{timer_index, ConnectParams, Engine, EngineEvent, TIMER_KINDS};
use crate::outbox::Outbox;
use crate::persist::Record;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use hil_packets::Incoming;

/// What the device asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Open a TCP connection to the broker; answer with `handle_link_up` or
    /// `handle_link_down`.
    Open,
    /// Close the connection. `abrupt`: no FIN, as when the radio dies (RST in the sim).
    Close {
        abrupt: bool,
    },
    Transmit(Vec<u8>),
    /// Store this record under its key, replacing the previous one, before
    /// performing any later output.
    Persist(Record),
    /// Print this line on the console.
    Console(Event),
    /// Turn the radio on or off.
    Wifi(bool),
    /// Restart the device (it boots again from its persisted records).
    Reboot,
    /// Provisioning for the driver (`!config ...`); the driver answers it.
    Config(Vec<(String, String)>),
}

/// Why the link went down (for the console and the transcript).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkDownReason {
    Refused(String),
    Closed,
    Error(String),
}

impl LinkDownReason {
    fn text(&self) -> String {
        match self {
            LinkDownReason::Refused(e) => format!("connect-failed: {e}"),
            LinkDownReason::Closed => "closed-by-peer".into(),
            LinkDownReason::Error(e) => format!("io-error: {e}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Down,
    /// `Output::Open` issued, waiting for the driver.
    Opening,
    /// CONNECT sent, waiting for CONNACK until the deadline.
    AwaitConnack {
        deadline: u64,
    },
    Connected,
}

pub struct Device<R: RandomSource> {
    cfg: Config,
    rng: R,
    client_id: String,
    boot_count: u32,
    wifi: bool,
    link: Link,
    reconnect_at: Option<u64>,
    connect_attempts: u32,
    backoff: Backoff,
    engine: Engine,
    timers: [Option<u64>; 3],
    outbox: Outbox,
    inbox: Inbox,
    subscribed_once: bool,
    sub_pid: Option<u16>,
    /// The command subscription the broker confirmed (filter, requested QoS),
    /// persisted: session_present=1 alone does not prove it exists.
    subscription: Option<(String, u8)>,
    /// Frames this connection's bytes; refuses what would hurt the engine.
    guard: Guard,
    /// Packets refused by the guard or the engine since boot (`!status`).
    rejected: u32,
    /// The timer being fired, so an engine close can say it was keep-alive.
    firing: Option<mqtt_protocol_core::mqtt::connection::TimerKind>,
    /// Sequence numbers below this are reserved on flash (`Record::SeqMark`).
    seq_mark: u32,
    /// When the broker's silence about what awaits its acknowledgement (a
    /// telemetry PUBACK, the SUBACK) ends this connection. Re-armed whenever
    /// an acknowledgement arrives and more are awaited.
    ack_deadline: Option<u64>,
    out: VecDeque<Output>,
    /// Console lines of the handler in progress, released after its records.
    lines: Vec<Output>,
    /// Network outputs of the handler in progress, released after its lines.
    net: Vec<Output>,
}

/// Sequence numbers are reserved on flash this many at a time, ahead of use:
/// one extra write per 32 readings buys "never reused, even if the outbox
/// record is lost".
const SEQ_BLOCK: u32 = 32;

/// The disconnect reason for an MQTT 5 server DISCONNECT.
fn server_disconnect(reason: u8) -> String {
    format!("server-disconnect reason=0x{reason:02x}")
}

fn topics(cfg: &Config, client_id: &str) -> Topics {
    Topics::new(&cfg.prefix, client_id)
}

impl<R: RandomSource> Device<R> {
    /// Boots from the records found in flash (any order; the last per key wins).
    /// Wi-Fi starts down: report it with [`Device::handle_wifi`].
    pub fn boot(cfg: Config, rng: R, records: impl IntoIterator<Item = Record>) -> Self {
        let unbounded = cfg.bugs.has(Bug::UnboundedBuffer);
        let cap = if unbounded {
            None
        } else {
            Some(cfg.outbox_capacity)
        };
        let mut outbox = Outbox::new(cap);
        let mut inbox = Inbox::new(cfg.inbox_capacity);
        let mut boot_count = 0;
        let mut subscription = None;
        let mut seq_mark = None;
        let mut restored = None;
        for r in records {
            match r {
                Record::Boot { count } => boot_count = count,
                Record::Outbox(s) => restored = Some(s),
                Record::Inbox(s) => inbox = Inbox::restore(cfg.inbox_capacity, s),
                Record::Subscription(s) => subscription = s,
                Record::SeqMark { next } => seq_mark = Some(next),
            }
        }
        let mut shed = Vec::new();
        match restored {
            Some(s) => (outbox, shed) = Outbox::restore(cap, s),
            // The outbox record is gone (corrupt, or lost) but the mark is
            // not: start above every number that may have been used.
            None => {
                if let Some(mark) = seq_mark {
                    outbox.start_at(mark);
                }
            }
        }
        boot_count += 1;
        let mut backoff = Backoff::new(cfg.backoff_base_ms, cfg.backoff_cap_ms);
        if cfg.bugs.has(Bug::NoJitter) {
            backoff = backoff.without_jitter();
        }
        let id = client_id(&cfg.chip, &cfg.mac);
        let mut d = Device {
            engine: Engine::new(cfg.mqtt, cfg.keepalive()),
            client_id: id,
            rng,
            boot_count,
            wifi: false,
            link: Link::Down,
            reconnect_at: None,
            connect_attempts: 0,
            backoff,
            timers: [None; 3],
            outbox,
            inbox,
            subscribed_once: false,
            sub_pid: None,
            subscription,
            guard: Guard::new(cfg.mqtt, cfg.max_packet_size as usize),
            rejected: 0,
            firing: None,
            seq_mark: seq_mark.unwrap_or(0),
            ack_deadline: None,
            out: VecDeque::new(),
            lines: Vec::new(),
            net: Vec::new(),
            cfg,
        };
        d.out
            .push_back(Output::Persist(Record::Boot { count: boot_count }));
        d.console(Event::Boot {
            count: boot_count,
            version: d.cfg.version.clone(),
        });
        #[cfg(feature = "login")]
        if d.cfg.bugs.has(Bug::EchoSecrets) {
            if let Some(c) = &d.cfg.credentials {
                let line = Event::Config {
                    setting: "mqtt_login".into(),
                    value: format!("{}:{}", c.username, c.password.expose()),
                    source: "flash".into(),
                };
                d.console(line);
            }
        }
        if d.cfg.bugs.has(Bug::RandomClientId) {
            d.client_id = d.random_client_id();
        }
        d.console(Event::Id {
            client_id: d.client_id.clone(),
        });
        if !shed.is_empty() {
            // A smaller buffer than the one these readings were taken with:
            // the oldest go, counted like any overflow, after the record says so.
            d.persist_outbox();
            for seq in shed {
                d.console(Event::TelemetryDropped {
                    seq,
                    count: d.outbox.dropped_total(),
                });
            }
        }
        d.finish(0);
        d
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn is_connected(&self) -> bool {
        self.link == Link::Connected
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    fn random_client_id(&mut self) -> String {
        let r = ((self.rng.next_u32() as u64) << 16) ^ self.rng.next_u32() as u64;
        format!("{}-{:012x}", self.cfg.chip, r & 0xffff_ffff_ffff)
    }

    fn console(&mut self, e: Event) {
        self.lines.push(Output::Console(e));
    }

    fn persist_outbox(&mut self) {
        self.out
            .push_back(Output::Persist(Record::Outbox(self.outbox.snapshot())));
    }

    /// Releases this handler's console lines behind its records, and its
    /// network outputs behind both.
    fn finish(&mut self, now: u64) {
        self.arm_ack_timeout(now);
        self.out.extend(self.lines.drain(..));
        self.out.extend(self.net.drain(..));
    }

    /// Next thing for the driver to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When a platform whose clock is real time floored to the millisecond
    /// (every one here: embassy-time's and std's `as_millis`) calls
    /// [`Device::handle_timeout`] next: one ms after [`Device::poll_timeout`].
    /// Such a clock stamps an event up to 1 ms early (one at 800.9 ms is 800),
    /// so a 500 ms backoff after it, due at 1300, would end 499.1 ms after the
    /// event, under its floor; woken at 1301 (and calling it due only from
    /// then), no delay ever comes short. Found by the wire tap: a reconnect
    /// measured 499 ms after a cut, on the firmware on the host.
    pub fn poll_wake(&self) -> Option<u64> {
        self.poll_timeout().map(|t| t + 1)
    }

    /// When to call [`Device::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<u64> {
        let connack = match self.link {
            Link::AwaitConnack { deadline } => Some(deadline),
            _ => None,
        };
        [self.reconnect_at, connack, self.ack_deadline]
            .into_iter()
            .chain(self.timers.iter().copied())
            .flatten()
            .min()
    }

    // ----- inputs -------------------------------------------------------

    /// The radio associated (true) or lost its network (false).
    pub fn handle_wifi(&mut self, now: u64, up: bool) {
        if up == self.wifi {
            return;
        }
        self.wifi = up;
        self.console(Event::Wifi { up });
        if up {
            // Coming up is a single device's event: connect at once.
            self.backoff.reset();
            self.reconnect_at = Some(now);
        } else {
            self.reconnect_at = None;
            if self.link != Link::Down {
                self.lose_link(now, "wifi-down".into(), true, false);
            }
        }
        self.finish(now);
    }

    /// The TCP connection asked for by `Output::Open` is up: send CONNECT.
    pub fn handle_link_up(&mut self, now: u64) {
        if self.link != Link::Opening {
            return;
        }
        let clean = self.cfg.bugs.has(Bug::CleanSession);
        self.guard = Guard::new(self.cfg.mqtt, self.cfg.packet_limit() as usize);
        if self.cfg.bugs.has(Bug::RandomClientId) {
            self.client_id = self.random_client_id();
            self.console(Event::Id {
                client_id: self.client_id.clone(),
            });
        }
        self.console(Event::MqttConnect {
            attempt: self.connect_attempts,
            clean,
            proto: self.cfg.mqtt.to_string(),
        });
        let will = topics(&self.cfg, &self.client_id).status();
        let params = ConnectParams {
            client_id: &self.client_id.clone(),
            clean,
            keepalive_s: self.cfg.keepalive(),
            will_topic: (!self.cfg.bugs.has(Bug::NoWill)).then_some(will.as_str()),
            max_packet_size: self.cfg.packet_limit(),
            #[cfg(feature = "login")]
            credentials: self.cfg.credentials.as_ref(),
            session_expiry_s: if clean {
                0
            } else if self.cfg.bugs.has(Bug::IgnoreExpiry) {
                u32::MAX
            } else {
                self.cfg.session_expiry_s
            },
        };
        match self.engine.connect(&params) {
            Ok(events) => {
                self.link = Link::AwaitConnack {
                    deadline: now + self.cfg.connack_timeout_ms,
                };
                self.apply(now, events);
            }
            Err(e) => {
                self.console(Event::error("mqtt", e));
                self.lose_link(now, "connect-build-failed".into(), false, true);
            }
        }
        self.finish(now);
    }

    /// The connection failed to open or was lost.
    pub fn handle_link_down(&mut self, now: u64, reason: LinkDownReason) {
        if self.link != Link::Down {
            self.lose_link(now, reason.text(), false, false);
        }
        self.finish(now);
    }

    /// Bytes from the broker.
    pub fn handle_bytes(&mut self, now: u64, bytes: &[u8]) {
        if matches!(self.link, Link::AwaitConnack { .. } | Link::Connected) {
            let (items, violation) = self.guard.feed(bytes);
            for item in items {
                if self.link == Link::Down {
                    break;
                }
                match item {
                    Item::Packet(packet) => {
                        let events = self.engine.recv(&packet);
                        self.apply(now, events);
                    }
                    Item::Discarded {
                        len,
                        qos,
                        topic,
                        reply,
                    } => {
                        // Counted and said; acknowledged so the broker is
                        // done with it (no redelivery on every reconnect).
                        self.rejected = self.rejected.saturating_add(1);
                        self.console(Event::error(
                            "protocol",
                            format!(
                                "discarded a {len} B PUBLISH (QoS {qos}) on {topic}: over the {} B limit",
                                self.cfg.packet_limit()
                            ),
                        ));
                        self.net.extend(reply.map(Output::Transmit));
                    }
                    Item::Reply(bytes) => self.net.push(Output::Transmit(bytes)),
                }
            }
            if let Some(v) = violation {
                if self.link != Link::Down {
                    self.refuse(now, v);
                }
            }
        }
        self.finish(now);
    }

    /// The broker sent what the guard refuses: say so, close, back off.
    fn refuse(&mut self, now: u64, v: Violation) {
        self.rejected = self.rejected.saturating_add(1);
        self.console(Event::error("protocol", &v));
        if self.cfg.mqtt == MqttVersion::V5 && matches!(v, Violation::TooLarge { .. }) {
            // MQTT 5 says why: DISCONNECT 0x95, Packet too large (reason
            // code only; the property length may be left out).
            self.net.push(Output::Transmit(alloc::vec![0xe0, 1, 0x95]));
        }
        self.net.push(Output::Close { abrupt: false });
        self.lose_link(now, v.reason(), false, true);
    }

    pub fn handle_timeout(&mut self, now: u64) {
        if let Link::AwaitConnack { deadline } = self.link {
            if now >= deadline {
                self.console(Event::error("mqtt", "no CONNACK before the deadline"));
                self.lose_link(now, "connack-timeout".into(), true, true);
            }
        }
        if self.link == Link::Connected && self.ack_deadline.is_some_and(|t| t <= now) {
            let what = match (self.sub_pid, self.outbox.oldest_in_flight()) {
                (_, Some(pid)) => format!("PUBACK for pid={pid}"),
                (Some(pid), None) => format!("SUBACK for pid={pid}"),
                (None, None) => "acknowledgement".into(),
            };
            let ms = self.cfg.ack_timeout_ms;
            self.console(Event::error("mqtt", format!("no {what} within {ms} ms")));
            self.net.push(Output::Close { abrupt: false });
            self.lose_link(now, format!("ack-timeout: no {what}"), false, true);
        }
        for (i, kind) in TIMER_KINDS.iter().enumerate() {
            if self.timers[i].is_some_and(|t| t <= now) {
                self.timers[i] = None;
                let events = self.engine.timer_fired(*kind);
                self.firing = Some(*kind);
                self.apply(now, events);
                self.firing = None;
            }
        }
        if self.reconnect_at.is_some_and(|t| t <= now) && self.link == Link::Down && self.wifi {
            self.reconnect_at = None;
            self.connect_attempts += 1;
            self.link = Link::Opening;
            self.net.push(Output::Open);
        }
        self.finish(now);
    }

    /// A line from the console (or the splitter's error for a bad one).
    pub fn handle_console_line(&mut self, now: u64, line: Result<String, LineError>) {
        match line {
            Err(e) => self.console(Event::error("console", e)),
            Ok(text) if text.trim().is_empty() => {}
            Ok(text) => match Command::parse(&text) {
                Ok(cmd) => self.handle_command(now, cmd),
                Err(e) => self.console(Event::error("command", e)),
            },
        }
        self.finish(now);
    }

    pub fn handle_command(&mut self, now: u64, cmd: Command) {
        match cmd {
            Command::Wifi(on) => {
                self.net.push(Output::Wifi(on));
                self.handle_wifi(now, on);
                self.ack("wifi", &[("state", if on { "on" } else { "off" }.into())]);
            }
            Command::Reboot => {
                self.ack("reboot", &[]);
                self.net.push(Output::Reboot);
            }
            Command::Telemetry(n) => {
                self.take_readings(now, n);
                let depth = self.outbox.len().to_string();
                self.ack("telemetry", &[("n", n.to_string()), ("depth", depth)]);
            }
            Command::Status => {
                let link = match self.link {
                    Link::Down => "down",
                    Link::Opening => "opening",
                    Link::AwaitConnack { .. } => "connecting",
                    Link::Connected => "connected",
                };
                let fields = [
                    ("wifi", if self.wifi { "up" } else { "down" }.to_string()),
                    ("mqtt", link.to_string()),
                    ("client_id", self.client_id.clone()),
                    ("proto", self.cfg.mqtt.to_string()),
                    ("outbox", self.outbox.len().to_string()),
                    ("dropped", self.outbox.dropped_total().to_string()),
                    ("next_seq", self.outbox.next_seq().to_string()),
                    ("boots", self.boot_count.to_string()),
                    ("rejected", self.rejected.to_string()),
                ];
                self.ack("status", &fields);
            }
            Command::Config(fields) => self.net.push(Output::Config(fields)),
        }
        self.finish(now);
    }

    fn ack(&mut self, cmd: &str, fields: &[(&str, String)]) {
        self.console(Event::Ack {
            cmd: cmd.into(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).into(), v.clone()))
                .collect(),
        });
    }

    /// Takes `n` readings now (the sim's sensor is synthetic; the firmware's too,
    /// so both sides agree on what a reading looks like).
    pub fn take_readings(&mut self, now: u64, n: u32) {
        let offline = self.link != Link::Connected;
        if offline && self.cfg.bugs.has(Bug::NoOutbox) {
            // Negative control: readings taken offline vanish without a trace.
            return;
        }
        // Reserve the numbers these readings take before any is used.
        let needed = self.outbox.next_seq().saturating_add(n);
        if needed > self.seq_mark {
            self.seq_mark = needed.saturating_add(SEQ_BLOCK);
            self.out.push_back(Output::Persist(Record::SeqMark {
                next: self.seq_mark,
            }));
        }
        for _ in 0..n {
            let pushed = self.outbox.push(|seq, dropped| {
                format!(
                    "{{\"seq\":{seq},\"uptime_ms\":{now},\"value\":{}.{},\"dropped\":{dropped}}}",
                    20 + seq % 5,
                    seq % 10
                )
            });
            self.console(Event::TelemetryBuffered {
                seq: pushed.seq,
                depth: pushed.depth as u32,
            });
            if let Some(dropped) = pushed.dropped {
                self.console(Event::TelemetryDropped {
                    seq: dropped.seq,
                    count: self.outbox.dropped_total(),
                });
            }
        }
        self.persist_outbox();
        self.pump(now);
        self.finish(now);
    }

    // ----- internals ----------------------------------------------------

    /// Ends the current connection and schedules the next attempt.
    fn lose_link(&mut self, now: u64, reason: String, we_close: bool, retry: bool) {
        let was = self.link;
        self.link = Link::Down;
        self.timers = [None; 3];
        self.sub_pid = None;
        self.ack_deadline = None;
        let _ = self.engine.closed();
        if we_close {
            // The radio going away sends nothing: abrupt.
            self.net.push(Output::Close { abrupt: true });
        }
        if was != Link::Down {
            self.console(Event::MqttDisconnected { reason });
        }
        if self.wifi || retry {
            if was == Link::Connected && self.cfg.bugs.has(Bug::ReconnectAtOnce) {
                self.reconnect_at = self.wifi.then_some(now);
            } else {
                self.schedule_retry(now);
            }
        }
    }

    fn schedule_retry(&mut self, now: u64) {
        if !self.wifi {
            return;
        }
        let d = self.backoff.next_delay(&mut self.rng);
        self.console(Event::Backoff {
            attempt: d.attempt,
            delay_ms: d.delay_ms,
            lo_ms: d.lo_ms,
            hi_ms: d.hi_ms,
        });
        self.reconnect_at = Some(now + d.delay_ms);
    }

    /// Why the engine closes: it asks to close before it says why, so look
    /// ahead in the same batch for its error or the server's DISCONNECT.
    fn close_reason(&self, rest: &[EngineEvent]) -> String {
        use mqtt_protocol_core::mqtt::connection::TimerKind;
        for e in rest {
            match e {
                EngineEvent::Error(e) if e.contains("Malformed") => {
                    return format!("malformed-packet: {e}")
                }
                EngineEvent::Error(e) => return format!("protocol-violation: {e}"),
                EngineEvent::Received(Incoming::Disconnect { reason }) => {
                    return server_disconnect(*reason)
                }
                _ => {}
            }
        }
        match self.firing {
            Some(TimerKind::PingrespRecv) => "keepalive-timeout: no PINGRESP in time".into(),
            Some(_) => "keepalive-timeout".into(),
            None => "closed-by-engine".into(),
        }
    }

    fn apply(&mut self, now: u64, events: Vec<EngineEvent>) {
        // Read once, before the events are consumed: why the engine closes.
        let close_why = events
            .iter()
            .position(|e| matches!(e, EngineEvent::Close))
            .map(|i| self.close_reason(&events[i + 1..]));
        for e in events {
            match e {
                EngineEvent::Send(bytes) => self.net.push(Output::Transmit(bytes)),
                EngineEvent::Close => {
                    if self.link != Link::Down {
                        let reason = close_why.clone().unwrap_or_default();
                        if !reason.starts_with("keepalive") && !reason.starts_with("server-") {
                            self.rejected = self.rejected.saturating_add(1);
                        }
                        self.net.push(Output::Close { abrupt: false });
                        self.lose_link(now, reason, false, true);
                    }
                }
                EngineEvent::Received(Incoming::Disconnect { reason }) => {
                    if self.link != Link::Down {
                        self.net.push(Output::Close { abrupt: false });
                        self.lose_link(now, server_disconnect(reason), false, true);
                    }
                }
                EngineEvent::Timer { kind, after_ms } => {
                    self.timers[timer_index(kind)] = after_ms.map(|ms| now + ms);
                }
                EngineEvent::Error(e) => {
                    let kind = if e.contains("Malformed") {
                        "protocol"
                    } else {
                        "mqtt"
                    };
                    self.console(Event::error(kind, e))
                }
                EngineEvent::Received(Incoming::Connack {
                    session_present,
                    rc,
                }) => self.on_connack(now, session_present, rc),
                EngineEvent::Received(Incoming::Suback { pid, codes }) => {
                    if Some(pid) == self.sub_pid {
                        self.sub_pid = None;
                        self.ack_deadline = None;
                        let t = topics(&self.cfg, &self.client_id).cmd();
                        if let Some(rc) = codes.iter().find(|c| **c >= 0x80) {
                            // Refused: no subscription is recorded, and a
                            // connection without one cannot receive commands,
                            // so close it and ask again after the backoff.
                            let rc = format!("rc=0x{rc:02x}");
                            self.console(Event::error(
                                "subscribe",
                                format!("{rc} the broker refused {t}"),
                            ));
                            self.net.push(Output::Close { abrupt: false });
                            self.lose_link(now, format!("subscribe-refused {rc}"), false, true);
                            continue;
                        }
                        self.subscription = Some((t.clone(), self.cfg.sub_qos()));
                        self.out.push_back(Output::Persist(Record::Subscription(
                            self.subscription.clone(),
                        )));
                        for qos in codes {
                            self.console(Event::MqttSubscribed {
                                topic: t.clone(),
                                qos,
                            });
                        }
                    }
                }
                EngineEvent::Received(Incoming::Publish {
                    topic: t,
                    payload,
                    qos,
                    dup,
                    ..
                }) => self.on_command(t, payload, qos, dup),
                EngineEvent::Refused { pid, reason } => self.on_refused(now, pid, reason),
                EngineEvent::Released(pid) => {
                    if let Some(entry) = self.outbox.ack(pid) {
                        self.ack_deadline = None;
                        self.console(Event::TelemetryAcked { seq: entry.seq });
                        self.persist_outbox();
                        self.pump(now);
                    }
                }
            }
        }
    }

    /// MQTT 5: the broker refused a reading (PUBACK >= 0x80). It was not
    /// delivered, so it is not reported acked; and a refusal for its topic
    /// or content will be repeated, so it is not sent again either.
    fn on_refused(&mut self, now: u64, pid: u16, reason: u8) {
        if pid == 0 || self.sub_pid == Some(pid) {
            return;
        }
        if self.cfg.bugs.has(Bug::RetryRefused) {
            // The bug: back to unsent, so the next pump sends it again.
            self.outbox.forget_in_flight_pid(pid);
            self.pump(now);
            return;
        }
        let Some(entry) = self.outbox.ack(pid) else {
            return;
        };
        self.ack_deadline = None;
        if self.cfg.bugs.has(Bug::IgnoreRefusal) {
            self.console(Event::TelemetryAcked { seq: entry.seq });
        } else {
            self.console(Event::TelemetryRefused {
                seq: entry.seq,
                reason,
            });
        }
        self.persist_outbox();
        self.pump(now);
    }

    fn on_connack(&mut self, now: u64, session_present: bool, rc: u8) {
        self.console(Event::MqttConnack {
            session_present,
            rc,
        });
        if rc != 0 {
            self.net.push(Output::Close { abrupt: false });
            self.lose_link(now, format!("connack-refused rc={rc}"), false, true);
            return;
        }
        self.link = Link::Connected;
        self.backoff.reset();
        if !self.engine.resends_stored() {
            if session_present {
                // The broker kept the session, and with it the packet ids of
                // the readings in flight: resend under the same ids (first,
                // so nothing new takes them), with DUP.
                for pid in self.outbox.resend_in_flight() {
                    if !self.engine.reserve(pid) {
                        self.outbox.forget_pid(pid);
                    }
                }
            } else {
                self.outbox.forget_in_flight();
            }
        }
        // Retained "online" overrides the retained Last Will "offline".
        let status = topics(&self.cfg, &self.client_id).status();
        match self
            .engine
            .publish(&status, b"online", 1, true, false, None)
        {
            Ok((_, events)) => self.apply(now, events),
            Err(e) => self.console(Event::error("mqtt", e)),
        }
        let t = topics(&self.cfg, &self.client_id).cmd();
        let skip_for_bug = self.cfg.bugs.has(Bug::NoResubscribe) && self.subscribed_once;
        // A session without a confirmed subscription (lost between an earlier
        // CONNECT and its SUBACK) needs the SUBSCRIBE as much as no session.
        let confirmed = self.cfg.bugs.has(Bug::TrustSessionPresent)
            || self.subscription.as_ref() == Some(&(t.clone(), self.cfg.sub_qos()));
        let resubscribe = (!session_present || !confirmed) && !skip_for_bug;
        if resubscribe {
            if self.subscription.take().is_some() {
                // Forget the old confirmation before asking again: a reboot
                // before this SUBACK must not find it.
                self.out
                    .push_back(Output::Persist(Record::Subscription(None)));
            }
            match self.engine.subscribe(&t, self.cfg.sub_qos()) {
                Ok((pid, events)) => {
                    self.sub_pid = Some(pid);
                    self.subscribed_once = true;
                    self.apply(now, events);
                }
                Err(e) => self.console(Event::error("mqtt", e)),
            }
        }
        if !session_present && self.engine.resends_stored() {
            // The broker forgot our in-flight publishes and so did the engine:
            // send them again, with DUP as they were sent before.
            self.outbox.forget_in_flight();
        }
        self.pump(now);
    }

    fn on_command(&mut self, t: String, payload: Vec<u8>, qos: u8, dup: bool) {
        let expected = topics(&self.cfg, &self.client_id).cmd();
        if t != expected {
            self.console(Event::error(
                "cmd",
                format!("message on unexpected topic {t}"),
            ));
            return;
        }
        let text = String::from_utf8_lossy(&payload).into_owned();
        let id = serde_json::from_slice::<serde_json::Value>(&payload)
            .ok()
            .and_then(|v| match v.get("id")? {
                serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        let Some(id) = id else {
            // Acknowledged by the engine all the same: a malformed command is
            // reported once, never redelivered forever.
            self.console(Event::error(
                "cmd",
                format!(
                    "command without an id, ignored: {}",
                    text.chars().take(200).collect::<String>()
                ),
            ));
            return;
        };
        if self.inbox.seen(&id) && !self.cfg.bugs.has(Bug::NoDedupe) {
            self.console(Event::CmdDuplicate { id, qos, dup });
            return;
        }
        self.inbox.remember(id.clone());
        self.out
            .push_back(Output::Persist(Record::Inbox(self.inbox.snapshot())));
        let digest = (payload.len() > crate::console::MAX_VALUE).then(|| Event::CmdDigest {
            id: id.clone(),
            len: payload.len() as u32,
            fnv: crate::console::fnv1a64(&payload),
        });
        self.console(Event::Cmd {
            id,
            qos,
            dup,
            payload: text,
        });
        if let Some(d) = digest {
            self.console(d);
        }
    }

    /// Publishes buffered readings, oldest first, up to the in-flight window.
    /// Arms the acknowledgement timeout while the connection awaits one and
    /// it is not armed (an acknowledgement disarms it, so each one buys the
    /// broker another `ack_timeout_ms`); disarms it when none is awaited.
    ///
    /// Why a timeout at all: MQTT 5 forbids resending a PUBLISH or SUBSCRIBE
    /// on the same connection [MQTT-4.4.0-1], and 3.1.1 allows it only as an
    /// option, so a broker that goes quiet about one packet would hold it
    /// forever (and the outbox behind it). This core resends only on a new
    /// connection, on both protocols: one rule that is right on either. The
    /// timeout is what makes the new connection: close, back off, reconnect,
    /// resend with DUP and the same packet identifier if the session is kept.
    fn arm_ack_timeout(&mut self, now: u64) {
        let awaiting =
            self.link == Link::Connected && (self.sub_pid.is_some() || self.outbox.in_flight() > 0);
        if !awaiting || self.cfg.bugs.has(Bug::NoAckTimeout) {
            self.ack_deadline = None;
        } else if self.ack_deadline.is_none() {
            self.ack_deadline = Some(now + self.cfg.ack_timeout_ms);
        }
    }

    fn pump(&mut self, now: u64) {
        if self.link != Link::Connected {
            return;
        }
        #[cfg(feature = "ingest-topic")]
        let topic = match &self.cfg.telemetry_topic {
            Some(t) => t.clone(),
            None => topics(&self.cfg, &self.client_id).telemetry(),
        };
        #[cfg(not(feature = "ingest-topic"))]
        let topic = topics(&self.cfg, &self.client_id).telemetry();
        let mut changed = false;
        while self.outbox.in_flight() < self.cfg.max_inflight.max(1) {
            let Some(entry) = self.outbox.next_unsent() else {
                break;
            };
            let (seq, dup, payload) = (entry.seq, entry.sent, entry.payload.clone());
            let reserved = entry.resend_pid.take();
            match self
                .engine
                .publish(&topic, payload.as_bytes(), 1, false, dup, reserved)
            {
                Ok((pid, events)) => {
                    if let Some(e) = self.outbox.next_unsent() {
                        e.packet_id = pid;
                        e.sent = true;
                    }
                    changed |= !dup;
                    self.console(Event::TelemetrySent { seq, dup });
                    self.apply(now, events);
                }
                Err(e) => {
                    self.console(Event::error("mqtt", e));
                    break;
                }
            }
        }
        if changed {
            self.persist_outbox();
        }
    }

    pub fn mqtt_version(&self) -> MqttVersion {
        self.cfg.mqtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::SplitMix64;
    use crate::Bugs;
    use alloc::vec;

    fn device() -> Device<SplitMix64> {
        let cfg = Config::new("esp32c3", "24:0a:c4:12:34:56".parse().unwrap());
        Device::boot(cfg, SplitMix64(7), vec![])
    }

    fn drain(d: &mut Device<SplitMix64>) -> Vec<Output> {
        core::iter::from_fn(|| d.poll_output()).collect()
    }

    fn events(out: &[Output]) -> Vec<Event> {
        out.iter()
            .filter_map(|o| match o {
                Output::Console(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// Boots, connects and answers CONNACK; returns the outputs after CONNACK.
    fn online(d: &mut Device<SplitMix64>, session_present: bool) -> Vec<Output> {
        d.handle_wifi(0, true);
        d.handle_timeout(0);
        assert!(drain(d).contains(&Output::Open));
        d.handle_link_up(1);
        drain(d);
        d.handle_bytes(2, &[0x20, 2, session_present as u8, 0]);
        drain(d)
    }

    #[test]
    fn offline_readings_flush_in_order_and_leave_on_puback() {
        let mut d = device();
        d.take_readings(0, 3);
        let out = online(&mut d, false);
        let sent: Vec<Event> = events(&out)
            .into_iter()
            .filter(|e| matches!(e, Event::TelemetrySent { .. }))
            .collect();
        assert_eq!(
            sent,
            vec![
                Event::TelemetrySent { seq: 1, dup: false },
                Event::TelemetrySent { seq: 2, dup: false },
                Event::TelemetrySent { seq: 3, dup: false }
            ]
        );
        // packet ids: 1 = status "online", 2 = SUBSCRIBE, 3.. = telemetry
        d.handle_bytes(3, &[0x40, 2, 0, 3, 0x40, 2, 0, 4]);
        let acked: Vec<Event> = events(&drain(&mut d))
            .into_iter()
            .filter(|e| matches!(e, Event::TelemetryAcked { .. }))
            .collect();
        assert_eq!(
            acked,
            vec![
                Event::TelemetryAcked { seq: 1 },
                Event::TelemetryAcked { seq: 2 }
            ]
        );
        assert_eq!(d.outbox_len(), 1);
    }

    fn device_with(edit: impl FnOnce(&mut Config)) -> Device<SplitMix64> {
        let mut cfg = Config::new("esp32c3", "24:0a:c4:12:34:56".parse().unwrap());
        edit(&mut cfg);
        Device::boot(cfg, SplitMix64(7), vec![])
    }

    fn disconnect_reason(out: &[Output]) -> Option<String> {
        events(out).into_iter().find_map(|e| match e {
            Event::MqttDisconnected { reason } => Some(reason),
            _ => None,
        })
    }

    /// A v5 device with one reading in flight as pid 2 (after SUBACK pid 2).
    fn v5_with_a_reading_in_flight(bugs: Bugs) -> Device<SplitMix64> {
        let mut d = device_with(|c| {
            c.mqtt = MqttVersion::V5;
            c.bugs = bugs;
        });
        d.handle_wifi(0, true);
        d.handle_timeout(0);
        d.handle_link_up(1);
        d.handle_bytes(2, &[0x20, 3, 0, 0, 0]);
        d.handle_bytes(3, &[0x90, 4, 0, 2, 0, 1]);
        d.take_readings(10, 1);
        drain(&mut d);
        d
    }

    /// PUBACK pid 2 with reason 0x87 (Not authorized), no properties.
    const REFUSED: &[u8] = &[0x40, 3, 0, 2, 0x87];

    #[test]
    fn a_v5_puback_with_a_failure_reason_is_reported_refused_and_not_resent() {
        let mut d = v5_with_a_reading_in_flight(Bugs::default());
        d.handle_bytes(20, REFUSED);
        let said = events(&drain(&mut d));
        assert!(
            said.contains(&Event::TelemetryRefused {
                seq: 1,
                reason: 0x87
            }),
            "{said:?}"
        );
        assert!(!said.iter().any(|e| matches!(
            e,
            Event::TelemetryAcked { .. } | Event::TelemetrySent { .. }
        )));
        assert_eq!(d.outbox_len(), 0, "a refused reading leaves the buffer");
        // The connection stays up: a refusal is about the message, not the link.
        assert!(!said
            .iter()
            .any(|e| matches!(e, Event::MqttDisconnected { .. })));
    }

    #[test]
    fn the_refusal_controls_lie_or_hammer() {
        let mut d = v5_with_a_reading_in_flight(Bugs::default().with(Bug::IgnoreRefusal));
        d.handle_bytes(20, REFUSED);
        assert!(events(&drain(&mut d)).contains(&Event::TelemetryAcked { seq: 1 }));
        let mut d = v5_with_a_reading_in_flight(Bugs::default().with(Bug::RetryRefused));
        d.handle_bytes(20, REFUSED);
        assert!(events(&drain(&mut d)).contains(&Event::TelemetrySent { seq: 1, dup: true }));
        assert_eq!(d.outbox_len(), 1);
    }

    #[test]
    fn a_withheld_puback_ends_the_connection_after_the_ack_timeout_and_is_resent_with_dup() {
        for v in [MqttVersion::V3_1_1, MqttVersion::V5] {
            let v5 = v == MqttVersion::V5;
            let connack = |sp: u8| {
                if v5 {
                    vec![0x20, 3, sp, 0, 0]
                } else {
                    vec![0x20, 2, sp, 0]
                }
            };
            let mut d = device_with(|c| c.mqtt = v);
            d.handle_wifi(0, true);
            d.handle_timeout(0);
            drain(&mut d);
            d.handle_link_up(1);
            drain(&mut d);
            d.handle_bytes(2, &connack(0));
            drain(&mut d);
            // SUBACK (pid 2) granted; then a reading goes out as pid 2 (free again).
            let suback: &[u8] = if v5 {
                &[0x90, 4, 0, 2, 0, 1]
            } else {
                &[0x90, 3, 0, 2, 1]
            };
            d.handle_bytes(3, suback);
            d.take_readings(10, 1);
            drain(&mut d);
            assert_eq!(d.poll_timeout().map(|t| t <= 10 + 10_000), Some(true));
            // An acknowledgement of something else (the status, pid 1) does not
            // let the broker off for the reading; time runs out.
            // A v5 PUBACK may leave out its reason code: the same 4 bytes.
            let puback1: &[u8] = &[0x40, 2, 0, 1];
            d.handle_bytes(5_000, puback1);
            d.handle_timeout(10 + 10_000);
            let out = drain(&mut d);
            assert_eq!(
                disconnect_reason(&out).as_deref(),
                Some("ack-timeout: no PUBACK for pid=2"),
                "{v}"
            );
            assert!(out.contains(&Output::Close { abrupt: false }));
            assert!(events(&out)
                .iter()
                .any(|e| matches!(e, Event::Backoff { attempt: 1, .. })));
            assert_eq!(d.outbox_len(), 1, "the reading is kept");
            // Next connection, session kept: the same packet id again, with DUP.
            let at = d.poll_timeout().unwrap();
            d.handle_timeout(at);
            assert!(drain(&mut d).contains(&Output::Open));
            d.handle_link_up(at + 1);
            drain(&mut d);
            d.handle_bytes(at + 2, &connack(1));
            let resent: Vec<Vec<u8>> = drain(&mut d)
                .into_iter()
                .filter_map(|o| match o {
                    Output::Transmit(b)
                        if b[0] & 0xf0 == 0x30 && b.windows(9).any(|w| w == b"telemetry") =>
                    {
                        Some(b)
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(resent.len(), 1, "{v}: one resend");
            assert_eq!(resent[0][0] & 0x08, 0x08, "{v}: DUP set");
            let topic_len = u16::from_be_bytes([resent[0][2], resent[0][3]]) as usize;
            let pid = u16::from_be_bytes([resent[0][4 + topic_len], resent[0][5 + topic_len]]);
            assert_eq!(
                pid, 2,
                "{v}: the same packet identifier in the kept session"
            );
        }
    }

    #[test]
    fn a_withheld_suback_ends_the_connection_and_the_next_one_subscribes_again() {
        let mut d = device_with(|c| c.ack_timeout_ms = 2_000);
        online(&mut d, false);
        assert_eq!(d.poll_timeout(), Some(2 + 2_000), "armed by the SUBSCRIBE");
        d.handle_timeout(2_002);
        let out = drain(&mut d);
        assert_eq!(
            disconnect_reason(&out).as_deref(),
            Some("ack-timeout: no SUBACK for pid=2")
        );
        assert!(!events(&out)
            .iter()
            .any(|e| matches!(e, Event::MqttSubscribed { .. })));
        let at = d.poll_timeout().unwrap();
        d.handle_timeout(at);
        drain(&mut d);
        d.handle_link_up(at + 1);
        drain(&mut d);
        // session_present=1, but no subscription was ever confirmed.
        d.handle_bytes(at + 2, &[0x20, 2, 1, 0]);
        let out = drain(&mut d);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Transmit(b) if b[0] == 0x82)),
            "SUBSCRIBE again: {out:?}"
        );
    }

    #[test]
    fn acknowledgements_keep_a_busy_connection_alive_and_the_negative_control_waits_forever() {
        let mut d = device_with(|c| c.ack_timeout_ms = 1_000);
        online(&mut d, false);
        d.handle_bytes(500, &[0x90, 3, 0, 2, 1]);
        assert_eq!(
            d.poll_timeout().map(|t| t > 1_500),
            Some(true),
            "nothing awaited: only keep-alive timers"
        );
        d.take_readings(600, 2);
        drain(&mut d);
        d.handle_bytes(1_400, &[0x40, 2, 0, 3]);
        drain(&mut d);
        d.handle_timeout(1_700);
        assert!(
            disconnect_reason(&drain(&mut d)).is_none(),
            "the PUBACK at 1.4 s bought another second"
        );
        d.handle_timeout(2_400);
        assert!(disconnect_reason(&drain(&mut d)).is_some());

        let mut d = device_with(|c| {
            c.ack_timeout_ms = 1_000;
            c.bugs = c.bugs.with(Bug::NoAckTimeout);
        });
        online(&mut d, false);
        d.handle_timeout(100_000);
        assert!(disconnect_reason(&drain(&mut d)).is_none_or(|r| r.starts_with("keepalive")));
    }

    #[test]
    fn the_reconnect_at_once_control_skips_the_backoff_after_a_connection() {
        for (bug, immediate) in [(false, false), (true, true)] {
            let mut d = device_with(|c| {
                if bug {
                    c.bugs = c.bugs.with(Bug::ReconnectAtOnce);
                }
            });
            online(&mut d, false);
            d.handle_link_down(1_000, LinkDownReason::Closed);
            drain(&mut d);
            assert_eq!(d.poll_timeout() == Some(1_000), immediate);
        }
    }

    #[test]
    fn the_no_packet_limit_control_announces_and_accepts_the_maximum() {
        let d = device_with(|c| c.bugs = c.bugs.with(Bug::NoPacketLimit));
        assert_eq!(d.cfg.packet_limit(), 268_435_455);
        assert_eq!(device().cfg.packet_limit(), 16 * 1024);
    }

    /// A QoS 1 PUBLISH to the device's command topic.
    fn cmd_publish(pid: u16, payload: &[u8], dup: bool) -> Vec<u8> {
        let topic = b"devices/esp32c3-240ac4123456/cmd";
        let mut v = vec![0x32 | if dup { 0x08 } else { 0 }];
        let len = 2 + topic.len() + 2 + payload.len();
        v.push(len as u8);
        v.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        v.extend_from_slice(topic);
        v.extend_from_slice(&pid.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn redelivered_command_is_acked_not_executed_and_inbox_persists_first() {
        let mut d = device();
        online(&mut d, false);
        d.handle_bytes(5, &cmd_publish(10, br#"{"id":"c1"}"#, false));
        let out = drain(&mut d);
        let persist = out
            .iter()
            .position(|o| matches!(o, Output::Persist(Record::Inbox(_))));
        let puback = out
            .iter()
            .position(|o| *o == Output::Transmit(vec![0x40, 2, 0, 10]));
        assert!(
            persist.unwrap() < puback.unwrap(),
            "inbox stored before PUBACK: {out:?}"
        );
        assert!(events(&out)
            .iter()
            .any(|e| matches!(e, Event::Cmd { id, .. } if id == "c1")));
        // same command id again in a new PUBLISH (QoS 1 redelivery after a reconnect)
        d.handle_bytes(6, &cmd_publish(11, br#"{"id":"c1"}"#, true));
        let out = drain(&mut d);
        assert!(
            out.contains(&Output::Transmit(vec![0x40, 2, 0, 11])),
            "still acknowledged"
        );
        assert_eq!(
            events(&out),
            vec![Event::CmdDuplicate {
                id: "c1".into(),
                qos: 1,
                dup: true
            }]
        );
        // a command without an id: acknowledged, reported, not executed
        d.handle_bytes(7, &cmd_publish(12, b"not json", false));
        let out = drain(&mut d);
        assert!(out.contains(&Output::Transmit(vec![0x40, 2, 0, 12])));
        assert!(matches!(&events(&out)[..], [Event::Error { kind, .. }] if kind == "cmd"));
    }

    /// A platform's clock floors real time to the ms. With `poll_wake` no
    /// backoff ends before its delay in real time, wherever in its ms the
    /// loss fell; `poll_timeout` taken as the wake-up would end up to 1 ms
    /// short (the 499 ms reconnect the wire tap caught).
    #[test]
    fn waking_at_poll_wake_never_ends_a_backoff_early_on_a_floored_clock() {
        let mut short_with_poll_timeout = 0;
        for frac_us in [0, 1, 400, 900, 999] {
            let mut d = device();
            online(&mut d, true);
            let lost_us = 800_000 + frac_us;
            d.handle_link_down(lost_us / 1000, LinkDownReason::Closed);
            let delay_ms = events(&drain(&mut d))
                .iter()
                .find_map(|e| match e {
                    Event::Backoff { delay_ms, .. } => Some(*delay_ms),
                    _ => None,
                })
                .expect("a backoff");
            let wake_us = d.poll_wake().unwrap() * 1000;
            assert!(
                wake_us - lost_us >= delay_ms * 1000,
                "woke {} us after the loss, delay {delay_ms} ms",
                wake_us - lost_us
            );
            if d.poll_timeout().unwrap() * 1000 - lost_us < delay_ms * 1000 {
                short_with_poll_timeout += 1;
            }
            // Due from the wake-up on: the reconnect happens then.
            d.handle_timeout(wake_us / 1000);
            assert_eq!(drain(&mut d), vec![Output::Open]);
        }
        assert_eq!(
            short_with_poll_timeout, 4,
            "the clock's floor is what it guards"
        );
    }

    #[test]
    fn lost_link_backs_off_within_window_and_resets_on_connack() {
        let mut d = device();
        online(&mut d, true);
        let mut last_hi = 0;
        for attempt in 1..=6 {
            d.handle_link_down(100, LinkDownReason::Closed);
            let ev = events(&drain(&mut d));
            let Some(Event::Backoff {
                attempt: a,
                delay_ms,
                lo_ms,
                hi_ms,
            }) = ev
                .iter()
                .find(|e| matches!(e, Event::Backoff { .. }))
                .cloned()
            else {
                panic!("no backoff in {ev:?}")
            };
            assert_eq!(a, attempt);
            assert!(lo_ms <= delay_ms && delay_ms <= hi_ms && hi_ms <= 30_000 && hi_ms >= last_hi);
            last_hi = hi_ms;
            assert_eq!(d.poll_timeout(), Some(100 + delay_ms));
            d.handle_timeout(100 + delay_ms);
            assert_eq!(drain(&mut d), vec![Output::Open]);
        }
        d.handle_link_up(50_000);
        drain(&mut d);
        d.handle_bytes(50_001, &[0x20, 2, 1, 0]);
        drain(&mut d);
        d.handle_link_down(60_000, LinkDownReason::Closed);
        let ev = events(&drain(&mut d));
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::Backoff { attempt: 1, .. })),
            "reset after CONNACK: {ev:?}"
        );
    }

    #[test]
    fn wifi_off_closes_abruptly_and_never_opens_until_on() {
        let mut d = device();
        online(&mut d, true);
        d.handle_command(10, Command::Wifi(false));
        let out = drain(&mut d);
        assert!(out.contains(&Output::Close { abrupt: true }));
        assert!(out.contains(&Output::Wifi(false)));
        assert_eq!(
            d.poll_timeout(),
            None,
            "nothing scheduled while Wi-Fi is off"
        );
        d.handle_timeout(1_000_000);
        assert!(!drain(&mut d).contains(&Output::Open));
        d.handle_command(1_000_001, Command::Wifi(true));
        d.handle_timeout(1_000_001);
        assert!(drain(&mut d).contains(&Output::Open));
    }

    /// The packet id of the SUBSCRIBE among `out`, if one was sent.
    fn subscribe_pid(out: &[Output]) -> Option<u16> {
        out.iter().find_map(|o| match o {
            Output::Transmit(b) if b.first() == Some(&0x82) => {
                Some(u16::from_be_bytes([b[2], b[3]]))
            }
            _ => None,
        })
    }

    fn suback(pid: u16, granted: u8) -> Vec<u8> {
        let [hi, lo] = pid.to_be_bytes();
        vec![0x90, 3, hi, lo, granted]
    }

    fn records(out: &[Output]) -> Vec<Record> {
        out.iter()
            .filter_map(|o| match o {
                Output::Persist(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn link_lost_before_suback_subscribes_again_though_session_present() {
        let mut d = device();
        let out = online(&mut d, false);
        assert!(subscribe_pid(&out).is_some());
        // No SUBACK: the link drops, the broker kept a session without it.
        d.handle_link_down(10, LinkDownReason::Closed);
        drain(&mut d);
        d.handle_timeout(100_000);
        d.handle_link_up(100_001);
        drain(&mut d);
        d.handle_bytes(100_002, &[0x20, 2, 1, 0]);
        let out = drain(&mut d);
        let pid = subscribe_pid(&out).expect("SUBSCRIBE again after session_present=1");
        d.handle_bytes(100_003, &suback(pid, 1));
        let out = drain(&mut d);
        assert_eq!(
            records(&out),
            vec![Record::Subscription(Some((
                "devices/esp32c3-240ac4123456/cmd".into(),
                1
            )))]
        );
    }

    #[test]
    fn confirmed_subscription_survives_a_reboot_an_unconfirmed_one_does_not() {
        let cfg = Config::new("esp32c3", "24:0a:c4:12:34:56".parse().unwrap());
        // Confirmed: after a reboot, session_present=1 needs no SUBSCRIBE.
        let mut d = device();
        let out = online(&mut d, false);
        d.handle_bytes(3, &suback(subscribe_pid(&out).unwrap(), 1));
        let stored = records(&drain(&mut d));
        let mut d = Device::boot(cfg.clone(), SplitMix64(8), stored.clone());
        assert_eq!(subscribe_pid(&online(&mut d, true)), None);
        // The broker lost the session: the record is cleared before asking
        // again, so a power cut before this SUBACK cannot leave it behind.
        let mut d = Device::boot(cfg.clone(), SplitMix64(9), stored);
        let out = online(&mut d, false);
        let cleared = out
            .iter()
            .position(|o| *o == Output::Persist(Record::Subscription(None)))
            .expect("record cleared");
        let sent = out
            .iter()
            .position(|o| matches!(o, Output::Transmit(b) if b.first() == Some(&0x82)))
            .expect("SUBSCRIBE");
        assert!(cleared < sent, "cleared before SUBSCRIBE: {out:?}");
        // Power cut before the SUBACK: the next boot subscribes despite session_present=1.
        let mut d = Device::boot(cfg.clone(), SplitMix64(10), records(&out));
        assert!(subscribe_pid(&online(&mut d, true)).is_some());
        // A different QoS is a different subscription.
        let mut other = cfg;
        other.cmd_qos = 2;
        let stored = vec![Record::Subscription(Some((
            "devices/esp32c3-240ac4123456/cmd".into(),
            1,
        )))];
        let mut d = Device::boot(other, SplitMix64(11), stored);
        assert!(subscribe_pid(&online(&mut d, true)).is_some());
    }

    #[test]
    fn trust_session_present_bug_skips_the_subscribe() {
        let mut cfg = Config::new("esp32c3", "24:0a:c4:12:34:56".parse().unwrap());
        cfg.bugs = cfg.bugs.with(Bug::TrustSessionPresent);
        let mut d = Device::boot(cfg, SplitMix64(7), vec![]);
        assert!(subscribe_pid(&online(&mut d, false)).is_some());
        d.handle_link_down(10, LinkDownReason::Closed);
        drain(&mut d);
        d.handle_timeout(100_000);
        d.handle_link_up(100_001);
        drain(&mut d);
        d.handle_bytes(100_002, &[0x20, 2, 1, 0]);
        assert_eq!(subscribe_pid(&drain(&mut d)), None);
    }

    fn device_v(version: MqttVersion) -> Device<SplitMix64> {
        let mut cfg = Config::new("esp32c3", "24:0a:c4:12:34:56".parse().unwrap());
        cfg.mqtt = version;
        Device::boot(cfg, SplitMix64(7), vec![])
    }

    /// The outputs a refused input must produce: an error line of `kind`, a
    /// close, a disconnect whose reason starts with `reason`, a backoff, and a
    /// new connection once the backoff has passed.
    fn assert_clean_refusal(d: &mut Device<SplitMix64>, out: &[Output], kind: &str, reason: &str) {
        let ev = events(out);
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::Error { kind: k, .. } if k == kind)),
            "error kind={kind}: {ev:?}"
        );
        assert!(out.contains(&Output::Close { abrupt: false }), "{out:?}");
        assert!(
            ev.iter().any(
                |e| matches!(e, Event::MqttDisconnected { reason: r } if r.starts_with(reason))
            ),
            "reason {reason}: {ev:?}"
        );
        assert!(
            ev.iter().any(|e| matches!(e, Event::Backoff { .. })),
            "{ev:?}"
        );
        assert!(!d.is_connected());
        let at = d.poll_timeout().expect("a reconnect is scheduled");
        d.handle_timeout(at);
        assert!(
            drain(d).contains(&Output::Open),
            "reconnects after the backoff"
        );
    }

    #[test]
    fn a_publish_with_packet_id_zero_is_a_clean_protocol_error() {
        for v in [MqttVersion::V3_1_1, MqttVersion::V5] {
            let mut d = device_v(v);
            online(&mut d, false);
            let topic = b"devices/esp32c3-240ac4123456/cmd";
            for qos in [1u8, 2] {
                let mut p = vec![0x30 | (qos << 1), 0];
                p.extend_from_slice(&(topic.len() as u16).to_be_bytes());
                p.extend_from_slice(topic);
                p.extend_from_slice(&[0, 0]); // packet id 0
                if v == MqttVersion::V5 {
                    p.push(0); // no properties
                }
                p.extend_from_slice(br#"{"id":"x"}"#);
                p[1] = (p.len() - 2) as u8;
                let mut d2 = device_v(v);
                online(&mut d2, false);
                d2.handle_bytes(5, &p);
                let out = drain(&mut d2);
                assert_clean_refusal(&mut d2, &out, "protocol", "protocol-violation");
            }
            d.handle_command(9, Command::Status);
            assert!(events(&drain(&mut d)).iter().any(|e| matches!(e,
                Event::Ack { fields, .. } if fields.contains(&("rejected".into(), "0".into())))));
        }
    }

    #[test]
    fn a_huge_announcement_is_refused_and_counted() {
        for v in [MqttVersion::V3_1_1, MqttVersion::V5] {
            let mut d = device_v(v);
            online(&mut d, false);
            // A PUBLISH announcing 268 MB, followed by 1 MB of its body.
            d.handle_bytes(5, &[0x30, 0xff, 0xff, 0xff, 0x7f]);
            let out = drain(&mut d);
            d.handle_bytes(6, &vec![b'x'; 1 << 20]);
            assert!(drain(&mut d).is_empty(), "the rest is not read as packets");
            assert_clean_refusal(&mut d, &out, "protocol", "packet-too-large");
            d.handle_command(9, Command::Status);
            assert!(events(&drain(&mut d)).iter().any(|e| matches!(e,
                Event::Ack { fields, .. } if fields.contains(&("rejected".into(), "1".into())))));
        }
    }

    #[test]
    fn an_mqtt5_connect_announces_the_maximum_packet_size() {
        let mut d = device_v(MqttVersion::V5);
        d.handle_wifi(0, true);
        d.handle_timeout(0);
        drain(&mut d);
        d.handle_link_up(1);
        let connect = drain(&mut d)
            .into_iter()
            .find_map(|o| match o {
                Output::Transmit(b) if b[0] == 0x10 => Some(b),
                _ => None,
            })
            .expect("CONNECT");
        let property = [0x27, 0, 0, 0x40, 0]; // Maximum Packet Size = 16,384
        assert!(
            connect.windows(5).any(|w| w == property),
            "Maximum Packet Size 16384 in {connect:02x?}"
        );
    }

    #[test]
    fn a_refused_subscription_is_an_error_and_a_retry() {
        let mut d = device();
        let out = online(&mut d, false);
        let pid = subscribe_pid(&out).unwrap();
        d.handle_bytes(3, &suback(pid, 0x80));
        let out = drain(&mut d);
        assert!(records(&out)
            .iter()
            .all(|r| !matches!(r, Record::Subscription(Some(_)))));
        assert!(!events(&out)
            .iter()
            .any(|e| matches!(e, Event::MqttSubscribed { .. })));
        assert_clean_refusal(&mut d, &out, "subscribe", "subscribe-refused rc=0x80");
        // The next connection asks again, though the broker keeps a session.
        d.handle_link_up(100_000);
        drain(&mut d);
        d.handle_bytes(100_001, &[0x20, 2, 1, 0]);
        assert!(subscribe_pid(&drain(&mut d)).is_some());
    }

    #[test]
    fn every_disconnect_says_why() {
        // MQTT 5 server DISCONNECT with reason 0x8e (session taken over).
        let mut d = device_v(MqttVersion::V5);
        online(&mut d, false);
        d.handle_bytes(5, &[0xe0, 2, 0x8e, 0]);
        let out = drain(&mut d);
        assert!(
            events(&out).iter().any(|e| matches!(e,
                Event::MqttDisconnected { reason } if reason == "server-disconnect reason=0x8e")),
            "{out:?}"
        );
        // A malformed packet (a PUBLISH whose topic length runs past its end).
        for v in [MqttVersion::V3_1_1, MqttVersion::V5] {
            let mut d = device_v(v);
            online(&mut d, false);
            d.handle_bytes(5, &[0x30, 3, 0, 9, b'a']);
            let out = drain(&mut d);
            let reasons: Vec<_> = events(&out)
                .into_iter()
                .filter_map(|e| match e {
                    Event::MqttDisconnected { reason } => Some(reason),
                    _ => None,
                })
                .collect();
            assert!(
                reasons.len() == 1
                    && (reasons[0].starts_with("malformed-packet")
                        || reasons[0].starts_with("protocol-violation")),
                "{v}: {reasons:?}"
            );
        }
        // Closed by the peer, and a client-only packet from a server.
        let mut d = device();
        online(&mut d, false);
        d.handle_bytes(5, &[0x82, 2, 0, 1]);
        let out = drain(&mut d);
        assert_clean_refusal(
            &mut d,
            &out,
            "protocol",
            "protocol-violation: a packet only clients send",
        );
    }

    /// What is on flash after performing `out` in order, as the driver would.
    fn flash_after(
        flash: &mut alloc::collections::BTreeMap<crate::RecordKey, Record>,
        out: &[Output],
    ) {
        for o in out {
            if let Output::Persist(r) = o {
                flash.insert(r.key(), r.clone());
            }
        }
    }

    #[test]
    fn nothing_claims_a_reading_before_its_record() {
        use alloc::collections::BTreeMap;
        // Random operations; every console line about a reading, and every
        // network output, must find the reading (and its seq mark) on flash
        // already, given the outputs are performed in the order polled.
        let mut rng = SplitMix64(99);
        for run in 0..200 {
            let mut d = device();
            let mut flash = BTreeMap::new();
            let mut now = 0u64;
            let mut seen_seqs = alloc::collections::BTreeSet::new();
            for _ in 0..60 {
                now += 10;
                match rng.next_u32() % 6 {
                    0 | 1 => d.take_readings(now, 1 + rng.next_u32() % 4),
                    2 => {
                        d.handle_wifi(now, true);
                        d.handle_timeout(now);
                        d.handle_link_up(now);
                        d.handle_bytes(now, &[0x20, 2, 0, 0]);
                    }
                    3 => d.handle_link_down(now, LinkDownReason::Closed),
                    4 => d.handle_bytes(now, &[0x40, 2, 0, (rng.next_u32() % 8) as u8 + 1]),
                    _ => {
                        // Power cut: boot from exactly what is on flash.
                        let cfg = Config::new("esp32c3", "24:0a:c4:12:34:56".parse().unwrap());
                        d = Device::boot(
                            cfg,
                            SplitMix64(run),
                            flash.values().cloned().collect::<Vec<_>>(),
                        );
                    }
                }
                while let Some(o) = d.poll_output() {
                    let claim = match &o {
                        Output::Console(Event::TelemetryBuffered { seq, .. }) => Some(*seq),
                        Output::Console(Event::TelemetrySent { seq, .. }) => Some(*seq),
                        _ => None,
                    };
                    if let Some(seq) = claim {
                        let Some(Record::Outbox(snap)) = flash.get(&crate::RecordKey::Outbox)
                        else {
                            panic!("seq {seq} reported, no outbox record on flash");
                        };
                        assert!(
                            snap.next_seq > seq,
                            "seq {seq} reported, persisted next_seq {}",
                            snap.next_seq
                        );
                        let mark = match flash.get(&crate::RecordKey::SeqMark) {
                            Some(Record::SeqMark { next }) => *next,
                            _ => 0,
                        };
                        assert!(mark > seq, "seq {seq} reported, mark {mark}");
                    }
                    if let Output::Console(Event::TelemetryBuffered { seq, .. }) = &o {
                        assert!(seen_seqs.insert(*seq), "seq {seq} used twice");
                    }
                    flash_after(&mut flash, core::slice::from_ref(&o));
                }
            }
        }
    }

    #[test]
    fn a_corrupt_outbox_never_brings_back_a_used_seq() {
        let cfg = Config::new("esp32c3", "24:0a:c4:12:34:56".parse().unwrap());
        let mut d = device();
        d.take_readings(0, 5);
        let stored: Vec<Record> = records(&drain(&mut d));
        // The outbox record is lost (corrupt, moved aside); the mark survives.
        let left: Vec<Record> = stored
            .into_iter()
            .filter(|r| !matches!(r, Record::Outbox(_)))
            .collect();
        let mut d = Device::boot(cfg, SplitMix64(8), left);
        drain(&mut d);
        d.take_readings(1, 1);
        let seq = events(&drain(&mut d)).into_iter().find_map(|e| match e {
            Event::TelemetryBuffered { seq, .. } => Some(seq),
            _ => None,
        });
        assert!(seq.unwrap() > 5, "seq {seq:?} reused");
    }

    #[test]
    fn a_smaller_buffer_drops_the_oldest_and_says_so() {
        let mut cfg = Config::new("esp32c3", "24:0a:c4:12:34:56".parse().unwrap());
        let mut d = device();
        d.take_readings(0, 5);
        let stored = records(&drain(&mut d));
        cfg.outbox_capacity = 2;
        let mut d = Device::boot(cfg, SplitMix64(8), stored);
        let out = drain(&mut d);
        let dropped: Vec<(u32, u32)> = events(&out)
            .into_iter()
            .filter_map(|e| match e {
                Event::TelemetryDropped { seq, count } => Some((seq, count)),
                _ => None,
            })
            .collect();
        assert_eq!(dropped, vec![(1, 3), (2, 3), (3, 3)]);
        let persisted = out
            .iter()
            .position(|o| matches!(o, Output::Persist(Record::Outbox(s)) if s.dropped_total == 3))
            .expect("the drop is persisted");
        let said = out
            .iter()
            .position(|o| matches!(o, Output::Console(Event::TelemetryDropped { .. })))
            .unwrap();
        assert!(persisted < said);
        d.handle_command(1, Command::Status);
        assert!(events(&drain(&mut d)).iter().any(|e| matches!(e,
            Event::Ack { fields, .. } if fields.contains(&("dropped".into(), "3".into())))));
    }
}
