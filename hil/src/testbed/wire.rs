//! What the wire tap saw: every connection attempt and every decoded packet,
//! in both directions, with the instant it crossed the proxy. This is the
//! evidence a device cannot forge: scenarios judge by it.

use crate::transcript::{Source, Transcript};
pub use hil_packets::tap::{Dir, Packet};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// What the tap saw: a decoded packet, or a connection attempt.
#[derive(Clone, Debug)]
pub enum WireEvent {
    /// A device opened a TCP connection; `reached_broker` is false when the
    /// broker was down (or refusal was on) and the device got a reset.
    Attempt {
        conn: u32,
        reached_broker: bool,
        /// The device's source address (a fleet's devices each have one).
        peer: Option<IpAddr>,
    },
    Packet {
        conn: u32,
        dir: Dir,
        packet: Packet,
    },
    /// The testbed killed and restarted the broker (sessions may be gone).
    BrokerRestart,
    /// The testbed ended this client ID's session through the broker (a
    /// clean connect with its ID): the broker must not report it present.
    SessionEnded {
        client_id: String,
    },
    /// The proxy itself reset the connection (a link fault).
    Cut {
        conn: u32,
    },
    /// One side closed or reset the connection: `Dir::Up`, the device
    /// (evidence that it noticed a dead link); `Dir::Down`, the broker.
    Closed {
        conn: u32,
        by: Dir,
    },
    /// What a scenario's cloud client published, was granted or received:
    /// the other end of the broker, told by the runner's own client.
    Cloud(CloudEvent),
    /// The proxy's blackhole went on or off (closes do not cross it).
    Blackhole {
        on: bool,
    },
    /// A TLS handshake at the TLS hop, and how it ended.
    Tls {
        presented: ServerCert,
        outcome: TlsOutcome,
    },
}

pub use super::pki::ServerCert;

/// How a connection to the TLS hop went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsOutcome {
    /// The handshake finished (the device accepted the certificate), with
    /// the client certificate the device presented, if any.
    Established {
        version: String,
        client: ClientCertSeen,
    },
    /// The handshake failed: the hop's view of why (the device's alert).
    Refused(String),
    /// The first byte was not a TLS record: a plaintext connection.
    Plaintext,
}

/// What client certificate a device presented in a finished handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientCertSeen {
    None,
    /// The one the runner issued it (byte for byte), for this common name.
    Issued(String),
    /// Another certificate (chaining to the test CA, or the handshake
    /// would have failed).
    Other,
}

pub use hil_broker::client::CloudEvent;

#[derive(Clone, Debug)]
pub struct WireRecord {
    pub at: Instant,
    pub event: WireEvent,
}

/// The tap's log, shared by the proxy's pumps and the scenario.
#[derive(Clone)]
pub struct WireLog {
    records: Arc<Mutex<Vec<WireRecord>>>,
    /// Signalled on every new record, for [`WireLog::wait_for`].
    arrived: Arc<Condvar>,
    transcript: Transcript,
    /// Bytes the proxy forwarded, device -> broker and broker -> device.
    bytes: Arc<[std::sync::atomic::AtomicU64; 2]>,
}

impl WireLog {
    pub(crate) fn new(transcript: &Transcript) -> WireLog {
        WireLog {
            records: Arc::new(Mutex::new(Vec::new())),
            arrived: Arc::new(Condvar::new()),
            transcript: transcript.clone(),
            bytes: Arc::new(Default::default()),
        }
    }

    /// The proxy forwarded `n` bytes in `dir`.
    pub(crate) fn count_bytes(&self, dir: Dir, n: usize) {
        let i = if dir == Dir::Up { 0 } else { 1 };
        self.bytes[i].fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes forwarded so far: (device -> broker, broker -> device).
    pub fn bytes(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.bytes[0].load(Relaxed), self.bytes[1].load(Relaxed))
    }

    pub(crate) fn push(&self, event: WireEvent) {
        self.push_at(Instant::now(), event)
    }

    /// [`push`](Self::push) for an event that happened at `at` (a
    /// connection accepted before its broker side was dialled).
    pub(crate) fn push_at(&self, at: Instant, event: WireEvent) {
        let text = match &event {
            WireEvent::Attempt {
                conn,
                reached_broker: true,
                ..
            } => format!("#{conn} device connected"),
            WireEvent::Attempt {
                conn,
                reached_broker: false,
                ..
            } => format!("#{conn} device connect attempt reset (broker unreachable)"),
            WireEvent::BrokerRestart => "broker restarted by the testbed".to_string(),
            WireEvent::SessionEnded { client_id } => {
                format!("session of {client_id} ended by the testbed (a clean connect with its ID)")
            }
            WireEvent::Cut { conn } => format!("#{conn} cut by the proxy"),
            WireEvent::Closed { conn, by } => match by {
                Dir::Up => format!("#{conn} closed by the device"),
                Dir::Down => format!("#{conn} closed by the broker"),
            },
            WireEvent::Blackhole { on } => {
                format!("link blackhole {}", if *on { "on" } else { "off" })
            }
            WireEvent::Tls { presented, outcome } => match outcome {
                TlsOutcome::Established { version, client } => {
                    let client = match client {
                        ClientCertSeen::None => String::new(),
                        ClientCertSeen::Issued(cn) => {
                            format!("; client certificate: the one issued to it (CN={cn})")
                        }
                        ClientCertSeen::Other => {
                            "; client certificate: not the one issued to it".into()
                        }
                    };
                    format!(
                        "tls handshake done ({version}), certificate {}{client}",
                        presented.describe()
                    )
                }
                TlsOutcome::Refused(why) => {
                    format!(
                        "tls handshake failed: {why}; certificate {}",
                        presented.describe()
                    )
                }
                TlsOutcome::Plaintext => "plaintext connection on the TLS port: closed".to_string(),
            },
            WireEvent::Cloud(c) => match c {
                CloudEvent::Published {
                    client,
                    topic,
                    payload,
                    qos,
                    ..
                } => format!(
                    "cloud {client} -> broker PUBLISH {topic} qos={qos} {}",
                    hil_packets::tap::shown(&String::from_utf8_lossy(payload))
                ),
                CloudEvent::Subscribed {
                    client,
                    filter,
                    granted,
                } => format!("cloud {client} subscribed {filter} granted={granted}"),
                CloudEvent::Received { client, message } => format!(
                    "broker -> cloud {client} PUBLISH {} qos={} dup={} {}",
                    message.topic,
                    message.qos,
                    message.dup as u8,
                    hil_packets::tap::shown(&message.text())
                ),
                CloudEvent::Closed { client } => format!("cloud {client} connection closed"),
            },
            WireEvent::Packet { conn, dir, packet } => {
                let arrow = if *dir == Dir::Up {
                    "device -> broker"
                } else {
                    "broker -> device"
                };
                format!("#{conn} {arrow} {packet}")
            }
        };
        self.transcript.push(Source::Wire, text);
        self.records.lock().unwrap().push(WireRecord { at, event });
        self.arrived.notify_all();
    }

    /// Waits until the tap has seen a record matching `pred` (the evidence a
    /// console line claims may reach the tap a moment later); None at the deadline.
    pub fn wait_for(
        &self,
        deadline: Instant,
        pred: impl Fn(&WireRecord) -> bool,
    ) -> Option<WireRecord> {
        let mut records = self.records.lock().unwrap();
        loop {
            if let Some(r) = records.iter().find(|r| pred(r)) {
                return Some(r.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            records = self.arrived.wait_timeout(records, left).unwrap().0;
        }
    }

    /// A fault the proxy applied, for the transcript.
    pub(crate) fn note(&self, text: String) {
        self.transcript.push(Source::Note, text);
    }

    pub fn records(&self) -> Vec<WireRecord> {
        self.records.lock().unwrap().clone()
    }

    /// Every packet in one direction, in order.
    pub fn packets(&self, dir: Dir) -> Vec<Packet> {
        self.records()
            .into_iter()
            .filter_map(|r| match r.event {
                WireEvent::Packet { dir: d, packet, .. } if d == dir => Some(packet),
                _ => None,
            })
            .collect()
    }

    /// Waits until the tap holds more than `len` records; false at the deadline.
    pub fn wait_beyond(&self, len: usize, deadline: Instant) -> bool {
        let mut records = self.records.lock().unwrap();
        while records.len() <= len {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            records = self.arrived.wait_timeout(records, left).unwrap().0;
        }
        true
    }

    /// QoS 2 handshakes still open on connections that are still up: a
    /// PUBLISH at QoS 2 either way whose PUBCOMP has not crossed the tap.
    pub fn open_qos2(&self) -> usize {
        open_qos2(&self.records.lock().unwrap())
    }

    /// Waits (until `deadline`) for every open QoS 2 handshake to finish, so
    /// stopping the device does not cut one in half; returns how many were
    /// left open at the deadline.
    pub fn settle_qos2(&self, deadline: Instant) -> usize {
        let mut records = self.records.lock().unwrap();
        loop {
            let open = open_qos2(&records);
            let left = deadline.saturating_duration_since(Instant::now());
            if open == 0 || left.is_zero() {
                return open;
            }
            records = self.arrived.wait_timeout(records, left).unwrap().0;
        }
    }

    /// When the device closed connection `conn`, waiting for it until `deadline`.
    pub fn closed_by_device(&self, conn: u32, deadline: Instant) -> Option<Instant> {
        self.wait_for(
            deadline,
            |r| matches!(r.event, WireEvent::Closed { conn: c, by: Dir::Up } if c == conn),
        )
        .map(|r| r.at)
    }

    /// The newest connection that reached the broker.
    pub fn last_connection(&self) -> Option<u32> {
        self.records()
            .into_iter()
            .rev()
            .find_map(|r| match r.event {
                WireEvent::Attempt {
                    conn,
                    reached_broker: true,
                    ..
                } => Some(conn),
                _ => None,
            })
    }

    /// The instants of the device's connection attempts (accepted or reset).
    pub fn attempts(&self, after: Option<Instant>, reached_broker: Option<bool>) -> Vec<Instant> {
        self.records()
            .into_iter()
            .filter(|r| after.is_none_or(|t| r.at > t))
            .filter_map(|r| match r.event {
                WireEvent::Attempt {
                    reached_broker: reached,
                    ..
                } if reached_broker.is_none_or(|want| want == reached) => Some(r.at),
                _ => None,
            })
            .collect()
    }
}

/// One connection the tap saw: when it was opened and how it ended.
#[derive(Clone, Debug)]
pub struct Connection {
    pub conn: u32,
    pub opened: Instant,
    pub reached_broker: bool,
    /// The device's source address.
    pub peer: Option<IpAddr>,
    /// When it ended, and who ended it (`Dir::Up`: the device; `Dir::Down`:
    /// the broker; None: the proxy cut it).
    pub ended: Option<(Instant, Option<Dir>)>,
    /// When the device closed its side (after the broker's close, when it
    /// noticed the loss), if it did before a cut.
    pub closed_by_device: Option<Instant>,
}

/// The connections opened after `after`, in order, with their ends.
pub fn connections(records: &[WireRecord], after: Instant) -> Vec<Connection> {
    let mut out: Vec<Connection> = Vec::new();
    for r in records.iter().cloned() {
        match r.event {
            WireEvent::Attempt {
                conn,
                reached_broker,
                peer,
            } if r.at > after => out.push(Connection {
                conn,
                opened: r.at,
                reached_broker,
                peer,
                ended: None,
                closed_by_device: None,
            }),
            WireEvent::Closed { conn, by } => {
                if let Some(c) = out.iter_mut().find(|c| c.conn == conn) {
                    if c.ended.is_none() {
                        c.ended = Some((r.at, Some(by)));
                    }
                    if by == Dir::Up && c.closed_by_device.is_none() {
                        c.closed_by_device = Some(r.at);
                    }
                }
            }
            WireEvent::Cut { conn } => {
                if let Some(c) = out.iter_mut().find(|c| c.conn == conn && c.ended.is_none()) {
                    c.ended = Some((r.at, None));
                }
            }
            _ => {}
        }
    }
    out
}

impl WireLog {
    /// The connections opened after `after`, in order, with their ends.
    pub fn connections(&self, after: Instant) -> Vec<Connection> {
        connections(&self.records(), after)
    }

    /// Waits until `pred` holds of everything the tap has seen; false at the deadline.
    pub fn wait_until(&self, deadline: Instant, pred: impl Fn(&[WireRecord]) -> bool) -> bool {
        let mut records = self.records.lock().unwrap();
        loop {
            if pred(&records) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            records = self.arrived.wait_timeout(records, left).unwrap().0;
        }
    }

    /// The waits before each reconnect after `after`: from the end of one
    /// connection to the opening of the next (ms), for connections that ended.
    pub fn retry_waits(&self, after: Instant) -> Vec<u64> {
        self.connections(after)
            .windows(2)
            .filter_map(|w| {
                let (end, _) = w[0].ended?;
                Some(w[1].opened.saturating_duration_since(end).as_millis() as u64)
            })
            .collect()
    }
}

fn open_qos2(records: &[WireRecord]) -> usize {
    use std::collections::HashSet;
    // (connection, published by the device, packet id)
    let mut open: HashSet<(u32, bool, u16)> = HashSet::new();
    let mut closed: HashSet<u32> = HashSet::new();
    for r in records {
        match &r.event {
            WireEvent::Packet { conn, dir, packet } => match packet {
                Packet::Publish {
                    qos: 2,
                    pid: Some(pid),
                    ..
                } => {
                    open.insert((*conn, *dir == Dir::Up, *pid));
                }
                // The PUBCOMP goes the other way from the PUBLISH.
                Packet::Pubcomp { pid } => {
                    open.remove(&(*conn, *dir == Dir::Down, *pid));
                }
                _ => {}
            },
            WireEvent::Closed { conn, .. } | WireEvent::Cut { conn } => {
                closed.insert(*conn);
            }
            _ => {}
        }
    }
    open.iter().filter(|(c, ..)| !closed.contains(c)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(event: WireEvent) -> WireRecord {
        WireRecord {
            at: Instant::now(),
            event,
        }
    }

    fn packet(dir: Dir, packet: Packet) -> WireRecord {
        rec(WireEvent::Packet {
            conn: 1,
            dir,
            packet,
        })
    }

    #[test]
    fn a_qos2_handshake_is_open_until_its_pubcomp() {
        let publish = Packet::Publish {
            topic: "t".into(),
            qos: 2,
            dup: false,
            retain: false,
            pid: Some(7),
            payload: "x".into(),
            expiry: None,
        };
        let mut r = vec![packet(Dir::Down, publish.clone())];
        assert_eq!(open_qos2(&r), 1);
        r.push(packet(
            Dir::Up,
            Packet::Pubrec {
                pid: 7,
                reason: None,
            },
        ));
        r.push(packet(Dir::Down, Packet::Pubrel { pid: 7 }));
        assert_eq!(open_qos2(&r), 1);
        r.push(packet(Dir::Up, Packet::Pubcomp { pid: 7 }));
        assert_eq!(open_qos2(&r), 0);
        // The device's own QoS 2 publish: completed by the broker's PUBCOMP.
        r.push(packet(Dir::Up, publish));
        assert_eq!(open_qos2(&r), 1);
        // A connection that is gone has nothing left to finish.
        r.push(rec(WireEvent::Cut { conn: 1 }));
        assert_eq!(open_qos2(&r), 0);
    }
}
