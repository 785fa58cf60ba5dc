//! A thin layer over mqtt-protocol-core's client `Connection` that hides the
//! 3.1.1/5 split from the device logic and turns its events into ours.
//!
//! mqtt-protocol-core does the protocol: packet ids, the QoS 1/2 handshakes,
//! the store of unacknowledged publishes (resent with DUP when the broker says
//! session_present=1, dropped when it says 0), keep-alive timers.

use crate::config::MqttVersion;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use mqtt_protocol_core::mqtt::{
    self,
    common::Cursor,
    connection::{Event as MqttEvent, TimerKind},
    packet::{GenericPacketTrait, Packet, Property, Qos, SubEntry, SubOpts},
    role::Client,
    Connection, Version,
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
    Connack {
        session_present: bool,
        rc: u8,
    },
    Suback {
        packet_id: u16,
        codes: Vec<u8>,
    },
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        dup: bool,
    },
    /// The broker completed the handshake for this packet id (PUBACK, PUBCOMP, SUBACK).
    Released(u16),
    Timer {
        kind: TimerKind,
        after_ms: Option<u64>,
    },
    Error(String),
}

pub(crate) struct ConnectParams<'a> {
    pub client_id: &'a str,
    pub clean: bool,
    pub keepalive_s: u16,
    pub will_topic: &'a str,
    pub session_expiry_s: u32,
}

pub(crate) struct Engine {
    conn: Connection<Client>,
    version: MqttVersion,
}

fn qos(n: u8) -> Qos {
    match n {
        0 => Qos::AtMostOnce,
        1 => Qos::AtLeastOnce,
        _ => Qos::ExactlyOnce,
    }
}

impl Engine {
    pub fn new(version: MqttVersion, keepalive_s: u16) -> Self {
        let mut conn = Connection::<Client>::new(match version {
            MqttVersion::V3_1_1 => Version::V3_1_1,
            MqttVersion::V5 => Version::V5_0,
        });
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
                MqttEvent::NotifyPacketReceived(p) => match p {
                    Packet::V3_1_1Connack(c) => out.push(EngineEvent::Connack {
                        session_present: c.session_present(),
                        rc: c.return_code() as u8,
                    }),
                    Packet::V5_0Connack(c) => out.push(EngineEvent::Connack {
                        session_present: c.session_present(),
                        rc: c.reason_code() as u8,
                    }),
                    Packet::V3_1_1Suback(s) => out.push(EngineEvent::Suback {
                        packet_id: s.packet_id(),
                        codes: s.return_codes().iter().map(|c| *c as u8).collect(),
                    }),
                    Packet::V5_0Suback(s) => out.push(EngineEvent::Suback {
                        packet_id: s.packet_id(),
                        codes: s.reason_codes().iter().map(|c| *c as u8).collect(),
                    }),
                    Packet::V3_1_1Publish(p) => out.push(EngineEvent::Publish {
                        topic: p.topic_name().to_string(),
                        payload: p.payload().as_slice().to_vec(),
                        qos: p.qos() as u8,
                        dup: p.dup(),
                    }),
                    Packet::V5_0Publish(p) => out.push(EngineEvent::Publish {
                        topic: p.topic_name().to_string(),
                        payload: p.payload().as_slice().to_vec(),
                        qos: p.qos() as u8,
                        dup: p.dup(),
                    }),
                    _ => {}
                },
            }
        }
        out
    }

    pub fn connect(&mut self, p: &ConnectParams<'_>) -> Result<Vec<EngineEvent>, String> {
        let err = |e: mqtt::result_code::MqttError| alloc::format!("CONNECT: {e:?}");
        let packet: Packet = match self.version {
            MqttVersion::V3_1_1 => mqtt::packet::v3_1_1::Connect::builder()
                .client_id(p.client_id)
                .map_err(err)?
                .clean_session(p.clean)
                .keep_alive(p.keepalive_s)
                .will_message(p.will_topic, "offline", Qos::AtLeastOnce, true)
                .map_err(err)?
                .build()
                .map_err(err)?
                .into(),
            MqttVersion::V5 => {
                let mut b = mqtt::packet::v5_0::Connect::builder()
                    .client_id(p.client_id)
                    .map_err(err)?
                    .clean_start(p.clean)
                    .keep_alive(p.keepalive_s)
                    .will_message(p.will_topic, "offline", Qos::AtLeastOnce, true)
                    .map_err(err)?;
                if p.session_expiry_s > 0 {
                    b = b.props(vec![Property::SessionExpiryInterval(
                        mqtt::packet::SessionExpiryInterval::new(p.session_expiry_s)
                            .map_err(err)?,
                    )]);
                }
                b.build().map_err(err)?.into()
            }
        };
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
    ) -> Result<(Option<u16>, Vec<EngineEvent>), String> {
        let err = |e: mqtt::result_code::MqttError| alloc::format!("PUBLISH: {e:?}");
        let pid = if qos_level > 0 {
            Some(self.conn.acquire_packet_id().map_err(err)?)
        } else {
            None
        };
        let payload = payload.to_vec();
        let packet: Packet = match self.version {
            MqttVersion::V3_1_1 => {
                let mut b = mqtt::packet::v3_1_1::Publish::builder()
                    .topic_name(topic)
                    .map_err(err)?
                    .qos(qos(qos_level))
                    .retain(retain)
                    .dup(dup)
                    .payload(payload);
                if let Some(pid) = pid {
                    b = b.packet_id(pid);
                }
                b.build().map_err(err)?.into()
            }
            MqttVersion::V5 => {
                let mut b = mqtt::packet::v5_0::Publish::builder()
                    .topic_name(topic)
                    .map_err(err)?
                    .qos(qos(qos_level))
                    .retain(retain)
                    .dup(dup)
                    .payload(payload);
                if let Some(pid) = pid {
                    b = b.packet_id(pid);
                }
                b.build().map_err(err)?.into()
            }
        };
        let events = self.conn.send(packet);
        Ok((pid, self.map(events)))
    }

    pub fn subscribe(
        &mut self,
        topic: &str,
        qos_level: u8,
    ) -> Result<(u16, Vec<EngineEvent>), String> {
        let err = |e: mqtt::result_code::MqttError| alloc::format!("SUBSCRIBE: {e:?}");
        let pid = self.conn.acquire_packet_id().map_err(err)?;
        let entry = SubEntry::new(topic, SubOpts::new().set_qos(qos(qos_level))).map_err(err)?;
        let packet: Packet = match self.version {
            MqttVersion::V3_1_1 => mqtt::packet::v3_1_1::Subscribe::builder()
                .entries(vec![entry])
                .packet_id(pid)
                .build()
                .map_err(err)?
                .into(),
            MqttVersion::V5 => mqtt::packet::v5_0::Subscribe::builder()
                .entries(vec![entry])
                .packet_id(pid)
                .build()
                .map_err(err)?
                .into(),
        };
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
