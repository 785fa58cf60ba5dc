//! A thin layer over mqtt-protocol-core's client `Connection` that hides the
//! 3.1.1/5 split from the device logic and turns its events into ours.
//!
//! mqtt-protocol-core does the protocol: packet ids, the QoS 1/2 handshakes,
//! the store of unacknowledged publishes (resent with DUP when the broker says
//! session_present=1, dropped when it says 0), keep-alive timers.

use crate::config::MqttVersion;
use alloc::string::String;
use alloc::vec::Vec;
use hil_packets::{build, Incoming};
use mqtt_protocol_core::mqtt::{
    self,
    common::Cursor,
    connection::{Event as MqttEvent, TimerKind},
    packet::GenericPacketTrait,
    role::Client,
    Connection,
};

pub(crate) const TIMER_KINDS: [TimerKind; 3] = [
    TimerKind::PingreqSend,
    TimerKind::PingreqRecv,
    TimerKind::PingrespRecv,
];

pub(crate) fn timer_index(kind: TimerKind) -> usize {
    match kind {
        TimerKind::PingreqSend => 0,
        TimerKind::PingreqRecv => 1,
        TimerKind::PingrespRecv => 2,
    }
}

#[derive(Debug)]
pub(crate) enum EngineEvent {
    Send(Vec<u8>),
    Close,
    /// A CONNACK, SUBACK or PUBLISH from the broker.
    Received(Incoming),
    /// The broker completed the handshake for this packet id (PUBACK, PUBCOMP, SUBACK).
    Released(u16),
    /// MQTT 5: the broker ended the handshake for this packet id with a
    /// failure reason (PUBACK or PUBREC >= 0x80, e.g. 0x87 Not authorized).
    /// The id is free, but the message was not accepted: it is not an ack.
    Refused {
        pid: u16,
        reason: u8,
    },
    Timer {
        kind: TimerKind,
        after_ms: Option<u64>,
    },
    Error(String),
}

/// A packet the engine could not build or send (named for the console).
#[derive(Debug)]
pub(crate) struct EngineError {
    pub packet: &'static str,
    pub error: mqtt::result_code::MqttError,
}

impl core::fmt::Display for EngineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {:?}", self.packet, self.error)
    }
}

fn failed(packet: &'static str) -> impl Fn(mqtt::result_code::MqttError) -> EngineError + Copy {
    move |error| EngineError { packet, error }
}

/// A v5 PUBACK or PUBREC whose reason code is a failure (>= 0x80).
fn refusal(p: &mqtt::packet::Packet) -> Option<(u16, u8)> {
    use mqtt::packet::Packet;
    let (pid, rc) = match p {
        Packet::V5_0Puback(a) => (a.packet_id(), a.reason_code().map(|r| r as u8)),
        Packet::V5_0Pubrec(a) => (a.packet_id(), a.reason_code().map(|r| r as u8)),
        _ => return None,
    };
    rc.filter(|rc| *rc >= 0x80).map(|rc| (pid, rc))
}

pub(crate) struct ConnectParams<'a> {
    pub client_id: &'a str,
    pub clean: bool,
    pub keepalive_s: u16,
    /// None: no Last Will (a negative control).
    pub will_topic: Option<&'a str>,
    pub session_expiry_s: u32,
    /// Announced as Maximum Packet Size (MQTT 5).
    pub max_packet_size: u32,
    #[cfg(feature = "login")]
    pub credentials: Option<&'a crate::config::Credentials>,
}

pub(crate) struct Engine {
    conn: Connection<Client>,
    version: MqttVersion,
}

impl Engine {
    pub fn new(version: MqttVersion, keepalive_s: u16) -> Self {
        let mut conn = Connection::<Client>::new(version.core());
        conn.set_auto_pub_response(true);
        // A PINGRESP must arrive within half a keep-alive of the PINGREQ, so a
        // dead link is noticed within 1.5 × keep-alive of the last send.
        conn.set_pingresp_recv_timeout((keepalive_s as u64 * 1000 / 2).max(500));
        Engine { conn, version }
    }

    fn map(&mut self, events: Vec<MqttEvent>) -> Vec<EngineEvent> {
        let mut out = Vec::new();
        for e in events {
            match e {
                MqttEvent::RequestSendPacket { packet, .. } => {
                    out.push(EngineEvent::Send(packet.to_continuous_buffer()))
                }
                MqttEvent::RequestClose => out.push(EngineEvent::Close),
                MqttEvent::NotifyPacketIdReleased(id) => out.push(EngineEvent::Released(id)),
                MqttEvent::RequestTimerReset { kind, duration_ms } => {
                    out.push(EngineEvent::Timer {
                        kind,
                        after_ms: Some(duration_ms),
                    })
                }
                MqttEvent::RequestTimerCancel(kind) => out.push(EngineEvent::Timer {
                    kind,
                    after_ms: None,
                }),
                MqttEvent::NotifyError(e) => out.push(EngineEvent::Error(alloc::format!("{e:?}"))),
                MqttEvent::NotifyPacketReceived(p) => {
                    // mqtt-protocol-core releases the id before it reports
                    // the PUBACK: a failure reason turns that release into
                    // a refusal, so no caller can mistake it for an ack.
                    if let Some((pid, reason)) = refusal(&p) {
                        if let Some(e) = out
                            .iter_mut()
                            .rev()
                            .find(|e| matches!(e, EngineEvent::Released(id) if *id == pid))
                        {
                            *e = EngineEvent::Refused { pid, reason };
                        }
                        continue;
                    }
                    if let Some(incoming) = Incoming::from_core(&p) {
                        out.push(EngineEvent::Received(incoming));
                    }
                }
            }
        }
        out
    }

    pub fn connect(&mut self, p: &ConnectParams<'_>) -> Result<Vec<EngineEvent>, EngineError> {
        let err = failed("CONNECT");
        let packet = build::connect(
            self.version,
            &build::Connect {
                client_id: p.client_id,
                clean: p.clean,
                keepalive_s: p.keepalive_s,
                will: p.will_topic.map(|topic| build::Will {
                    topic,
                    payload: b"offline",
                    qos: 1,
                    retain: true,
                }),
                session_expiry_s: Some(p.session_expiry_s),
                max_packet_size: Some(p.max_packet_size),
                #[cfg(feature = "login")]
                username: p.credentials.map(|c| c.username.as_str()),
                #[cfg(feature = "login")]
                password: p.credentials.map(|c| c.password.expose().as_bytes()),
                #[cfg(not(feature = "login"))]
                username: None,
                #[cfg(not(feature = "login"))]
                password: None,
            },
        )
        .map_err(err)?;
        let events = self.conn.send(packet);
        Ok(self.map(events))
    }

    /// Publishes; returns the packet id used (QoS > 0).
    pub fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos_level: u8,
        retain: bool,
        dup: bool,
        reserved: Option<u16>,
    ) -> Result<(Option<u16>, Vec<EngineEvent>), EngineError> {
        let err = failed("PUBLISH");
        let pid = match (qos_level, reserved) {
            (0, _) => None,
            // Reserved by `reserve` for this resend.
            (_, Some(pid)) => Some(pid),
            _ => Some(self.conn.acquire_packet_id().map_err(err)?),
        };
        let packet = build::publish(
            self.version,
            build::Publish {
                topic,
                payload: payload.to_vec(),
                qos: qos_level,
                retain,
                dup,
                pid,
                expiry_s: None,
            },
        )
        .map_err(err)?;
        let events = self.conn.send(packet);
        Ok((pid, self.map(events)))
    }

    /// Holds `pid` for a resend under the packet id a kept session knows
    /// (before anything new is sent); false when it is in use.
    pub fn reserve(&mut self, pid: u16) -> bool {
        self.conn.register_packet_id(pid).is_ok()
    }

    pub fn subscribe(
        &mut self,
        topic: &str,
        qos_level: u8,
    ) -> Result<(u16, Vec<EngineEvent>), EngineError> {
        let err = failed("SUBSCRIBE");
        let pid = self.conn.acquire_packet_id().map_err(err)?;
        let packet = build::subscribe(self.version, pid, topic, qos_level).map_err(err)?;
        let events = self.conn.send(packet);
        Ok((pid, self.map(events)))
    }

    pub fn recv(&mut self, bytes: &[u8]) -> Vec<EngineEvent> {
        // `recv` consumes at most one packet per call: feed until the bytes
        // are used up (a partial packet stays buffered inside the connection).
        let mut cursor = Cursor::new(bytes);
        let mut events = Vec::new();
        while (cursor.position() as usize) < bytes.len() {
            let before = cursor.position();
            events.extend(self.conn.recv(&mut cursor));
            if cursor.position() == before {
                break;
            }
        }
        self.map(events)
    }

    pub fn timer_fired(&mut self, kind: TimerKind) -> Vec<EngineEvent> {
        let events = self.conn.notify_timer_fired(kind);
        self.map(events)
    }

    pub fn closed(&mut self) -> Vec<EngineEvent> {
        let events = self.conn.notify_closed();
        let mut out = self.map(events);
        if !self.resends_stored() {
            // Workaround for mqtt-protocol-core 0.7.9 on MQTT 5: publishes it
            // resends after session_present=1 are not counted against Receive
            // Maximum, so their PUBACKs underflow its send counter (a panic in
            // debug builds, a stalled send window in release). Forget them
            // here, before the next CONNECT; the outbox resends them itself,
            // with DUP. The releases this causes are not acknowledgements.
            let pids: Vec<u16> = self
                .conn
                .get_stored_packets()
                .iter()
                .map(|p| p.packet_id())
                .collect();
            for pid in pids {
                let _ = self.conn.erase_stored_publish(pid);
            }
            out.retain(|e| !matches!(e, EngineEvent::Released(_)));
        }
        out
    }

    /// Whether the engine itself resends unacknowledged publishes after a
    /// CONNACK with session_present=1 (not on MQTT 5: see `closed`).
    pub fn resends_stored(&self) -> bool {
        self.version == MqttVersion::V3_1_1
    }
}
