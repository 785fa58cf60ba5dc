//! A small synchronous MQTT client for the cloud side of a test (publish
//! commands, read telemetry and status) and for readiness probes.
//!
//! Written on mqtt-protocol-core rather than taking rumqttc: a test must see
//! the delivered QoS, DUP and retain flags of every message, hold several
//! sessions in one thread without an async runtime, and speak both 3.1.1 and 5
//! through one API.

use crate::MqttVersion;
use hil_packets::{build, Incoming};
use mqtt_protocol_core::mqtt::{
    self,
    common::Cursor,
    connection::Event,
    packet::{GenericPacketTrait, Packet},
    role, Connection,
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

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the broker at {addr}: {source}")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("broker refused the connection (rc={0})")]
    Refused(u8),
    #[error("no {0} before the deadline")]
    Timeout(&'static str),
    #[error("the broker closed the connection")]
    Closed,
    #[error("protocol error: {0:?}")]
    Protocol(mqtt::result_code::MqttError),
    #[error("broker at {addr} not ready: {last}")]
    NotReady {
        addr: SocketAddr,
        #[source]
        last: Box<ClientError>,
    },
}

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
    observer: Option<Observer>,
    client_id: String,
}

impl Shared {
    fn tell(&self, e: CloudEvent) {
        if let Some(o) = &self.observer {
            (o.0)(e);
        }
    }
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
                    let msg = match Incoming::from_core(&p) {
                        Some(Incoming::Connack {
                            session_present,
                            rc,
                        }) => In::Connack {
                            session_present,
                            rc,
                        },
                        Some(Incoming::Suback { pid, codes }) => In::Suback { pid, codes },
                        Some(Incoming::Publish {
                            topic,
                            payload,
                            qos,
                            dup,
                            retain,
                            expiry_s,
                        }) => In::Publish(Received {
                            topic,
                            payload,
                            qos,
                            dup,
                            retain,
                            message_expiry: expiry_s,
                        }),
                        // The cloud client learns of a server DISCONNECT from the close.
                        Some(Incoming::Disconnect { .. }) | None => continue,
                    };
                    if let In::Publish(m) = &msg {
                        self.tell(CloudEvent::Received {
                            client: self.client_id.clone(),
                            message: m.clone(),
                        });
                    }
                    let _ = tx.send(msg);
                }
                _ => {}
            }
        }
    }
}

/// What a cloud client did and got, told as it happens: the cloud side of
/// the evidence a conformance monitor needs (who published what, in which
/// order, who listened), recorded by the test's own client, which the device
/// cannot touch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloudEvent {
    /// About to be sent (a QoS > 0 publish waits for its ack afterwards).
    Published {
        client: String,
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        expiry_s: Option<u32>,
    },
    /// The broker granted this subscription (refusals are not told).
    Subscribed {
        client: String,
        filter: String,
        granted: u8,
    },
    /// The broker delivered this message to the client.
    Received { client: String, message: Received },
    /// The client's connection ended (either side).
    Closed { client: String },
}

/// A callback told of every [`CloudEvent`] of a client.
#[derive(Clone)]
pub struct Observer(pub Arc<dyn Fn(CloudEvent) + Send + Sync>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
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
    /// Told of what this client publishes, subscribes and receives.
    pub observer: Option<Observer>,
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
            observer: None,
        }
    }
}

pub struct Client {
    shared: Arc<Mutex<Shared>>,
    rx: Receiver<In>,
    proto: MqttVersion,
    pending: VecDeque<Received>,
    pub session_present: bool,
    /// Where and how it connected, for `reconnect`.
    addr: SocketAddr,
    opts: ConnectOptions,
}

fn perr(e: mqtt::result_code::MqttError) -> ClientError {
    ClientError::Protocol(e)
}

const WAIT: Duration = Duration::from_secs(10);

impl Client {
    pub fn connect(
        addr: SocketAddr,
        proto: MqttVersion,
        opts: &ConnectOptions,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|source| ClientError::Unreachable { addr, source })?;
        let _ = stream.set_nodelay(true);
        let reader = stream.try_clone()?;
        let mut conn = Connection::<role::Client>::new(proto.core());
        conn.set_auto_pub_response(opts.auto_ack);
        let shared = Arc::new(Mutex::new(Shared {
            conn,
            stream,
            observer: opts.observer.clone(),
            client_id: opts.client_id.clone(),
        }));
        let (tx, rx) = mpsc::channel();
        {
            let shared = shared.clone();
            let tx = tx.clone();
            std::thread::spawn(move || read_loop(reader, shared, tx));
        }
        let packet = build::connect(
            proto,
            &build::Connect {
                client_id: &opts.client_id,
                clean: opts.clean,
                keepalive_s: opts.keepalive_s,
                will: opts
                    .will
                    .as_ref()
                    .map(|(topic, payload, qos, retain)| build::Will {
                        topic,
                        payload,
                        qos: *qos,
                        retain: *retain,
                    }),
                session_expiry_s: opts.session_expiry_s,
                max_packet_size: None,
                username: None,
                password: None,
            },
        )
        .map_err(perr)?;
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
        let packet = build::subscribe(self.proto, pid, topic, qos_level).map_err(perr)?;
        self.send(packet);
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next_in(deadline, "SUBACK")? {
                In::Suback { pid: p, codes } if p == pid => {
                    let granted = codes.first().copied().unwrap_or(128);
                    if granted < 0x80 {
                        let s = self.shared.lock().unwrap();
                        s.tell(CloudEvent::Subscribed {
                            client: s.client_id.clone(),
                            filter: topic.into(),
                            granted,
                        });
                    }
                    return Ok(granted);
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
        let packet = build::publish(
            self.proto,
            build::Publish {
                topic,
                payload: payload.to_vec(),
                qos: qos_level,
                retain,
                dup: false,
                pid,
                expiry_s,
            },
        )
        .map_err(perr)?;
        {
            let s = self.shared.lock().unwrap();
            s.tell(CloudEvent::Published {
                client: s.client_id.clone(),
                topic: topic.into(),
                payload: payload.to_vec(),
                qos: qos_level,
                expiry_s: if self.proto == MqttVersion::V5 {
                    expiry_s
                } else {
                    None
                },
            });
        }
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
        let packet = build::disconnect(self.proto);
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
                let s = shared.lock().unwrap();
                s.tell(CloudEvent::Closed {
                    client: s.client_id.clone(),
                });
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
pub fn wait_ready(
    addr: SocketAddr,
    proto: MqttVersion,
    deadline: Instant,
) -> Result<(), ClientError> {
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
            // A broker that answers with a refusal is up, and refusing.
            Err(e @ ClientError::Refused(_)) => {
                return Err(ClientError::NotReady {
                    addr,
                    last: Box::new(e),
                })
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(ClientError::NotReady {
                addr,
                last: Box::new(last),
            });
        }
        // Retrying a refused connect: the wait is the retry interval of a
        // readiness poll, bounded by the deadline, not a guess at readiness.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
