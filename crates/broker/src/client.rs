//! A small synchronous MQTT client for the cloud side of a test (publish
//! commands, read telemetry and status) and for readiness probes.
//!
//! Written on mqtt-protocol-core rather than taking rumqttc: a test must see
//! the delivered QoS, DUP and retain flags of every message, hold several
//! sessions in one thread without an async runtime, and speak both 3.1.1 and 5
//! through one API.

use crate::Protocol;
use mqtt_protocol_core::mqtt::{
    self,
    common::Cursor,
    connection::Event,
    packet::{GenericPacketTrait, Packet, Property, Qos, SubEntry, SubOpts},
    role, Connection, Version,
};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    /// MQTT 5 Message Expiry Interval as delivered (the remaining time).
    pub message_expiry: Option<u32>,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

#[derive(Debug)]
pub enum ClientError {
    Io(String),
    Refused(u8),
    Timeout(&'static str),
    Closed,
    Protocol(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Refused(rc) => write!(f, "broker refused the connection (rc={rc})"),
            ClientError::Timeout(what) => write!(f, "no {what} before the deadline"),
            ClientError::Closed => f.write_str("the broker closed the connection"),
            ClientError::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

enum In {
    Connack { session_present: bool, rc: u8 },
    Suback { pid: u16, codes: Vec<u8> },
    Released(u16),
    Publish(Received),
    Closed,
}

struct Shared {
    conn: Connection<role::Client>,
    stream: TcpStream,
}

impl Shared {
    fn handle(&mut self, events: Vec<Event>, tx: &mpsc::Sender<In>) {
        for e in events {
            match e {
                Event::RequestSendPacket { packet, .. } => {
                    let _ = self.stream.write_all(&packet.to_continuous_buffer());
                }
                Event::NotifyPacketIdReleased(pid) => {
                    let _ = tx.send(In::Released(pid));
                }
                Event::RequestClose => {
                    let _ = self.stream.shutdown(Shutdown::Both);
                }
                Event::NotifyPacketReceived(p) => {
                    let msg = match p {
                        Packet::V3_1_1Connack(c) => In::Connack {
                            session_present: c.session_present(),
                            rc: c.return_code() as u8,
                        },
                        Packet::V5_0Connack(c) => In::Connack {
                            session_present: c.session_present(),
                            rc: c.reason_code() as u8,
                        },
                        Packet::V3_1_1Suback(s) => In::Suback {
                            pid: s.packet_id(),
                            codes: s.return_codes().iter().map(|c| *c as u8).collect(),
                        },
                        Packet::V5_0Suback(s) => In::Suback {
                            pid: s.packet_id(),
                            codes: s.reason_codes().iter().map(|c| *c as u8).collect(),
                        },
                        Packet::V3_1_1Publish(p) => In::Publish(Received {
                            topic: p.topic_name().to_string(),
                            payload: p.payload().as_slice().to_vec(),
                            qos: p.qos() as u8,
                            dup: p.dup(),
                            retain: p.retain(),
                            message_expiry: None,
                        }),
                        Packet::V5_0Publish(p) => In::Publish(Received {
                            topic: p.topic_name().to_string(),
                            payload: p.payload().as_slice().to_vec(),
                            qos: p.qos() as u8,
                            dup: p.dup(),
                            retain: p.retain(),
                            message_expiry: p.props().iter().find_map(|pr| match pr {
                                Property::MessageExpiryInterval(v) => Some(v.val()),
                                _ => None,
                            }),
                        }),
                        _ => continue,
                    };
                    let _ = tx.send(msg);
                }
                _ => {}
            }
        }
    }
}

/// Options of a CONNECT.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub client_id: String,
    pub clean: bool,
    pub keepalive_s: u16,
    /// MQTT 5 only.
    pub session_expiry_s: Option<u32>,
    /// Last Will: topic, payload, QoS, retain.
    pub will: Option<(String, Vec<u8>, u8, bool)>,
    /// Acknowledge received QoS 1/2 publishes (off: leave them unacknowledged,
    /// so the broker must redeliver them).
    pub auto_ack: bool,
}

impl ConnectOptions {
    pub fn new(client_id: &str) -> Self {
        ConnectOptions {
            client_id: client_id.into(),
            clean: true,
            keepalive_s: 60,
            session_expiry_s: None,
            will: None,
            auto_ack: true,
        }
    }
}

pub struct Client {
    shared: Arc<Mutex<Shared>>,
    rx: Receiver<In>,
    proto: Protocol,
    pending: VecDeque<Received>,
    pub session_present: bool,
    /// Where and how it connected, for `reconnect`.
    addr: SocketAddr,
    opts: ConnectOptions,
}

fn qos(n: u8) -> Qos {
    match n {
        0 => Qos::AtMostOnce,
        1 => Qos::AtLeastOnce,
        _ => Qos::ExactlyOnce,
    }
}

fn perr(e: mqtt::result_code::MqttError) -> ClientError {
    ClientError::Protocol(format!("{e:?}"))
}

const WAIT: Duration = Duration::from_secs(10);

impl Client {
    pub fn connect(
        addr: SocketAddr,
        proto: Protocol,
        opts: &ConnectOptions,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| ClientError::Io(format!("cannot reach broker at {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let reader = stream
            .try_clone()
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let mut conn = Connection::<role::Client>::new(match proto {
            Protocol::V3_1_1 => Version::V3_1_1,
            Protocol::V5 => Version::V5_0,
        });
        conn.set_auto_pub_response(opts.auto_ack);
        let shared = Arc::new(Mutex::new(Shared { conn, stream }));
        let (tx, rx) = mpsc::channel();
        {
            let shared = shared.clone();
            let tx = tx.clone();
            std::thread::spawn(move || read_loop(reader, shared, tx));
        }
        let packet: Packet = match proto {
            Protocol::V3_1_1 => {
                let mut b = mqtt::packet::v3_1_1::Connect::builder()
                    .client_id(opts.client_id.as_str())
                    .map_err(perr)?
                    .clean_session(opts.clean)
                    .keep_alive(opts.keepalive_s);
                if let Some((t, p, q, r)) = &opts.will {
                    b = b
                        .will_message(t.as_str(), p.clone(), qos(*q), *r)
                        .map_err(perr)?;
                }
                b.build().map_err(perr)?.into()
            }
            Protocol::V5 => {
                let mut b = mqtt::packet::v5_0::Connect::builder()
                    .client_id(opts.client_id.as_str())
                    .map_err(perr)?
                    .clean_start(opts.clean)
                    .keep_alive(opts.keepalive_s);
                if let Some((t, p, q, r)) = &opts.will {
                    b = b
                        .will_message(t.as_str(), p.clone(), qos(*q), *r)
                        .map_err(perr)?;
                }
                if let Some(s) = opts.session_expiry_s {
                    b = b.props(vec![Property::SessionExpiryInterval(
                        mqtt::packet::SessionExpiryInterval::new(s).map_err(perr)?,
                    )]);
                }
                b.build().map_err(perr)?.into()
            }
        };
        {
            let mut s = shared.lock().unwrap();
            let ev = s.conn.send(packet);
            s.handle(ev, &tx);
        }
        let mut c = Client {
            shared,
            rx,
            proto,
            pending: VecDeque::new(),
            session_present: false,
            addr,
            opts: opts.clone(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            match c.next_in(deadline, "CONNACK")? {
                In::Connack {
                    session_present,
                    rc,
                } => {
                    if rc != 0 {
                        return Err(ClientError::Refused(rc));
                    }
                    c.session_present = session_present;
                    return Ok(c);
                }
                In::Publish(p) => c.pending.push_back(p),
                _ => {}
            }
        }
    }

    fn next_in(&mut self, deadline: Instant, what: &'static str) -> Result<In, ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(In::Closed) => Err(ClientError::Closed),
            Ok(m) => Ok(m),
            Err(RecvTimeoutError::Timeout) => Err(ClientError::Timeout(what)),
            Err(RecvTimeoutError::Disconnected) => Err(ClientError::Closed),
        }
    }

    fn send(&mut self, packet: Packet) {
        let mut s = self.shared.lock().unwrap();
        let ev = s.conn.send(packet);
        // The channel sender for events of a send is only needed for releases.
        let (tx, rx) = mpsc::channel();
        s.handle(ev, &tx);
        drop(s);
        for m in rx.try_iter() {
            if let In::Publish(p) = m {
                self.pending.push_back(p);
            }
        }
    }

    fn acquire(&mut self) -> Result<u16, ClientError> {
        self.shared
            .lock()
            .unwrap()
            .conn
            .acquire_packet_id()
            .map_err(perr)
    }

    /// Subscribes and returns the granted QoS (128 = refused).
    pub fn subscribe(&mut self, topic: &str, qos_level: u8) -> Result<u8, ClientError> {
        let pid = self.acquire()?;
        let entry = SubEntry::new(topic, SubOpts::new().set_qos(qos(qos_level))).map_err(perr)?;
        let packet: Packet = match self.proto {
            Protocol::V3_1_1 => mqtt::packet::v3_1_1::Subscribe::builder()
                .entries(vec![entry])
                .packet_id(pid)
                .build()
                .map_err(perr)?
                .into(),
            Protocol::V5 => mqtt::packet::v5_0::Subscribe::builder()
                .entries(vec![entry])
                .packet_id(pid)
                .build()
                .map_err(perr)?
                .into(),
        };
        self.send(packet);
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next_in(deadline, "SUBACK")? {
                In::Suback { pid: p, codes } if p == pid => {
                    return Ok(codes.first().copied().unwrap_or(128))
                }
                In::Publish(p) => self.pending.push_back(p),
                _ => {}
            }
        }
    }

    /// Publishes and, for QoS 1 and 2, waits for the broker's acknowledgement.
    pub fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos_level: u8,
        retain: bool,
    ) -> Result<(), ClientError> {
        self.publish_with_expiry(topic, payload, qos_level, retain, None)
    }

    /// MQTT 5: with a Message Expiry Interval (ignored on 3.1.1).
    pub fn publish_with_expiry(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos_level: u8,
        retain: bool,
        expiry_s: Option<u32>,
    ) -> Result<(), ClientError> {
        let pid = if qos_level > 0 {
            Some(self.acquire()?)
        } else {
            None
        };
        let packet: Packet = match self.proto {
            Protocol::V3_1_1 => {
                let mut b = mqtt::packet::v3_1_1::Publish::builder()
                    .topic_name(topic)
                    .map_err(perr)?
                    .qos(qos(qos_level))
                    .retain(retain)
                    .payload(payload.to_vec());
                if let Some(pid) = pid {
                    b = b.packet_id(pid);
                }
                b.build().map_err(perr)?.into()
            }
            Protocol::V5 => {
                let mut b = mqtt::packet::v5_0::Publish::builder()
                    .topic_name(topic)
                    .map_err(perr)?
                    .qos(qos(qos_level))
                    .retain(retain)
                    .payload(payload.to_vec());
                if let Some(pid) = pid {
                    b = b.packet_id(pid);
                }
                if let Some(e) = expiry_s {
                    b = b.props(vec![Property::MessageExpiryInterval(
                        mqtt::packet::MessageExpiryInterval::new(e).map_err(perr)?,
                    )]);
                }
                b.build().map_err(perr)?.into()
            }
        };
        self.send(packet);
        let Some(pid) = pid else { return Ok(()) };
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next_in(deadline, "PUBACK/PUBCOMP")? {
                In::Released(p) if p == pid => return Ok(()),
                In::Publish(p) => self.pending.push_back(p),
                _ => {}
            }
        }
    }

    /// The next message delivered to this client, or None at the deadline.
    pub fn recv(&mut self, deadline: Instant) -> Result<Option<Received>, ClientError> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(Some(p));
        }
        loop {
            match self.next_in(deadline, "PUBLISH") {
                Ok(In::Publish(p)) => return Ok(Some(p)),
                Ok(_) => {}
                Err(ClientError::Timeout(_)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for a message matching `pred`, keeping the others for later `recv`s.
    pub fn recv_matching(
        &mut self,
        deadline: Instant,
        pred: impl Fn(&Received) -> bool,
    ) -> Result<Option<Received>, ClientError> {
        let mut skipped = VecDeque::new();
        let found = loop {
            match self.recv(deadline)? {
                Some(p) if pred(&p) => break Some(p),
                Some(p) => skipped.push_back(p),
                None => break None,
            }
        };
        skipped.extend(self.pending.drain(..));
        self.pending = skipped;
        Ok(found)
    }

    /// Connects again with the same options, as a backend does when the
    /// broker closed its connection. Messages not yet read are kept.
    pub fn reconnect(&mut self) -> Result<(), ClientError> {
        let mut fresh = Client::connect(self.addr, self.proto, &self.opts)?;
        fresh.pending = std::mem::take(&mut self.pending);
        *self = fresh;
        Ok(())
    }

    /// Drops the TCP connection without DISCONNECT (RST): the broker must
    /// publish the Last Will and keep the session.
    pub fn drop_abruptly(self) {
        let s = self.shared.lock().unwrap();
        let _ = socket2::SockRef::from(&s.stream).set_linger(Some(Duration::ZERO));
        let _ = s.stream.shutdown(Shutdown::Both);
    }

    /// A clean DISCONNECT (no Last Will), then waits (at most 2 s) for the
    /// broker to close the connection before closing it here.
    ///
    /// Why wait: rumqttd 0.20 reuses connection ids. If the client closes
    /// right after DISCONNECT, rumqttd handles the DISCONNECT (freeing the id),
    /// then its link sees the close and sends a second disconnect for the same
    /// id; when a new connection has taken the id meanwhile, rumqttd drops
    /// that one instead ("no-connection id 0 is already gone", then the next
    /// client is gone). Measured: about one run in four of two parallel
    /// broker tests lost a fresh client that way after the readiness probe.
    /// When the broker closes first, its link ends without that second event.
    pub fn disconnect(mut self) {
        let packet: Packet = match self.proto {
            Protocol::V3_1_1 => mqtt::packet::v3_1_1::Disconnect::new().into(),
            Protocol::V5 => mqtt::packet::v5_0::Disconnect::builder()
                .build()
                .map(Into::into)
                .unwrap_or_else(|_| mqtt::packet::v3_1_1::Disconnect::new().into()),
        };
        {
            let mut s = self.shared.lock().unwrap();
            if s.stream.write_all(&packet.to_continuous_buffer()).is_err() {
                return;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !matches!(
            self.next_in(deadline, "close"),
            Err(ClientError::Closed | ClientError::Timeout(_))
        ) {}
        // Drop closes our side.
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Ok(s) = self.shared.lock() {
            let _ = s.stream.shutdown(Shutdown::Both);
        }
    }
}

fn read_loop(mut reader: TcpStream, shared: Arc<Mutex<Shared>>, tx: mpsc::Sender<In>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send(In::Closed);
                return;
            }
            Ok(n) => {
                let mut s = shared.lock().unwrap();
                // One packet per `recv`: feed until the read is used up.
                let mut cursor = Cursor::new(&buf[..n]);
                while (cursor.position() as usize) < n {
                    let before = cursor.position();
                    let ev = s.conn.recv(&mut cursor);
                    s.handle(ev, &tx);
                    if cursor.position() == before {
                        break;
                    }
                }
            }
        }
    }
}

/// Waits until a broker at `addr` answers CONNECT with CONNACK.
pub fn wait_ready(addr: SocketAddr, proto: Protocol, deadline: Instant) -> Result<(), String> {
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut pause = Duration::from_millis(5);
    loop {
        // A fresh client ID per probe: rumqttd 0.20 panics its listener thread
        // when a client ID whose previous connection ended cleanly connects again
        // before its will handler is gone (server/broker.rs:544, try_send().unwrap()).
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("hil-ready-{}-{n}", std::process::id());
        let last = match Client::connect(addr, proto, &ConnectOptions::new(&id)) {
            Ok(c) => {
                c.disconnect();
                return Ok(());
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("broker at {addr} not ready: {last}"));
        }
        // Retrying a refused connect: the wait is the retry interval of a
        // readiness poll, bounded by the deadline, not a guess at readiness.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
