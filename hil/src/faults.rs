//! A TCP fault proxy between the device and the broker: cut (RST), blackhole
//! (sockets stay open, bytes dropped both ways, so only keep-alive can
//! notice), refuse new connections. Unlike Toxiproxy it never accepts a
//! device while the broker is unreachable: the device sees a reset at once,
//! as it would from a broker that is down.

use crate::transcript::{Source, Transcript};
use crate::wire::{Decoder, Dir, Packet};
use socket2::SockRef;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the tap saw: a decoded packet, or a connection attempt.
#[derive(Clone, Debug)]
pub enum WireEvent {
    /// A device opened a TCP connection; `reached_broker` is false when the
    /// broker was down (or refusal was on) and the device got a reset.
    Attempt {
        conn: u32,
        reached_broker: bool,
    },
    Packet {
        conn: u32,
        dir: Dir,
        packet: Packet,
    },
}

#[derive(Clone, Debug)]
pub struct WireRecord {
    pub at: Instant,
    pub event: WireEvent,
}

#[derive(Clone)]
pub struct WireLog {
    records: Arc<Mutex<Vec<WireRecord>>>,
    transcript: Transcript,
}

impl WireLog {
    fn push(&self, event: WireEvent) {
        let text = match &event {
            WireEvent::Attempt {
                conn,
                reached_broker: true,
            } => format!("#{conn} device connected"),
            WireEvent::Attempt {
                conn,
                reached_broker: false,
            } => format!("#{conn} device connect attempt reset (broker unreachable)"),
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
        self.records.lock().unwrap().push(WireRecord {
            at: Instant::now(),
            event,
        });
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
}

#[derive(Default)]
struct State {
    blackhole: bool,
    refuse: bool,
    latency: Duration,
    next_conn: u32,
    /// (connection number, device side, broker side) of every live connection.
    conns: Vec<(u32, TcpStream, TcpStream)>,
    /// Cut the link right after forwarding a broker-to-device PUBLISH whose
    /// payload contains one of these markers (each marker once).
    cut_after: Vec<String>,
    /// Armed: the next device SUBSCRIBE stalls its connection (see
    /// `stall_next_subscribe`); then the connections stalled so far.
    stall_subscribe: bool,
    stalled: Vec<u32>,
}

pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Signalled when a connection stalls at its SUBSCRIBE.
    stalls: Arc<Condvar>,
    log: WireLog,
}

fn reset(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(Shutdown::Both);
}

impl FaultProxy {
    /// Listens on a free port of `ip` and forwards to `upstream`.
    pub fn start(
        ip: std::net::IpAddr,
        upstream: SocketAddr,
        transcript: &Transcript,
    ) -> Result<FaultProxy, String> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("fault proxy: cannot listen on {ip}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let state = Arc::new(Mutex::new(State::default()));
        let log = WireLog {
            records: Arc::new(Mutex::new(Vec::new())),
            transcript: transcript.clone(),
        };
        let stalls = Arc::new(Condvar::new());
        let st = state.clone();
        let lg = log.clone();
        let cv = stalls.clone();
        std::thread::spawn(move || {
            for dev in listener.incoming() {
                let Ok(dev) = dev else { continue };
                let (conn, refuse) = {
                    let mut s = st.lock().unwrap();
                    s.next_conn += 1;
                    (s.next_conn, s.refuse)
                };
                let up = if refuse {
                    None
                } else {
                    TcpStream::connect_timeout(&upstream, Duration::from_secs(2)).ok()
                };
                lg.push(WireEvent::Attempt {
                    conn,
                    reached_broker: up.is_some(),
                });
                let Some(up) = up else {
                    reset(&dev);
                    continue;
                };
                let _ = dev.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (Ok(d2), Ok(u2), Ok(d3), Ok(u3)) = (
                    dev.try_clone(),
                    up.try_clone(),
                    dev.try_clone(),
                    up.try_clone(),
                ) else {
                    continue;
                };
                st.lock().unwrap().conns.push((conn, d2, u2));
                let (dec_up, dec_down) = Decoder::pair();
                pump(d3, u3, dec_up, conn, st.clone(), lg.clone(), cv.clone());
                pump(up, dev, dec_down, conn, st.clone(), lg.clone(), cv.clone());
            }
        });
        Ok(FaultProxy {
            addr,
            state,
            stalls,
            log,
        })
    }

    /// Where the device connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets every live connection, both sides.
    pub fn cut(&self) {
        let mut st = self.state.lock().unwrap();
        for (_, d, u) in st.conns.drain(..) {
            reset(&d);
            reset(&u);
        }
    }

    /// Resets only the connections stalled at their SUBSCRIBE: the other
    /// devices on this proxy keep their link.
    pub fn cut_stalled(&self) {
        let mut st = self.state.lock().unwrap();
        let stalled = std::mem::take(&mut st.stalled);
        st.conns.retain(|(conn, d, u)| {
            if stalled.contains(conn) {
                reset(d);
                reset(u);
                false
            } else {
                true
            }
        });
    }

    /// Drops all bytes both ways while on; connections stay open.
    pub fn blackhole(&self, on: bool) {
        let mut st = self.state.lock().unwrap();
        st.blackhole = on;
        if !on {
            // Connections that lived through the blackhole are dead to both
            // ends by now; new ones pass.
            for (_, d, u) in st.conns.drain(..) {
                reset(&d);
                reset(&u);
            }
        }
    }

    pub fn refuse(&self, on: bool) {
        self.state.lock().unwrap().refuse = on;
    }

    /// Cuts the link (RST both ways) right after the broker's PUBLISH carrying
    /// each marker has been forwarded to the device: the message may or may
    /// not be processed, and its acknowledgement is lost.
    pub fn cut_after_publishes(&self, markers: Vec<String>) {
        self.state.lock().unwrap().cut_after = markers;
    }

    /// The next SUBSCRIBE a device sends never reaches the broker: from it on,
    /// nothing that connection sends is forwarded (the broker's side stays
    /// open, so no SUBACK ever comes). One connection only; the proxy disarms.
    /// This is the moment between CONNACK and SUBACK, held open for the
    /// runner to cut the link or the power there.
    pub fn stall_next_subscribe(&self) {
        self.state.lock().unwrap().stall_subscribe = true;
    }

    /// Waits until a connection has stalled at its SUBSCRIBE (armed by
    /// `stall_next_subscribe`); false at the deadline.
    pub fn wait_stalled(&self, deadline: Instant) -> bool {
        let mut st = self.state.lock().unwrap();
        while st.stall_subscribe {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self.stalls.wait_timeout(st, left).unwrap().0;
        }
        true
    }

    /// Delays every forwarded chunk by `d` (each direction).
    pub fn latency(&self, d: Duration) {
        self.state.lock().unwrap().latency = d;
    }

    /// What the tap has seen so far.
    pub fn wire(&self) -> &WireLog {
        &self.log
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    mut dec: Decoder,
    conn: u32,
    st: Arc<Mutex<State>>,
    log: WireLog,
    stalls: Arc<Condvar>,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // In a blackhole the far end hears nothing, not even the close.
                    if !st.lock().unwrap().blackhole {
                        let _ = to.shutdown(Shutdown::Write);
                    }
                    return;
                }
                Ok(n) => {
                    let (blackhole, latency) = {
                        let s = st.lock().unwrap();
                        (s.blackhole, s.latency)
                    };
                    if blackhole {
                        continue;
                    }
                    let mut cut = false;
                    let mut stall =
                        dec.dir() == Dir::Up && st.lock().unwrap().stalled.contains(&conn);
                    for packet in dec.feed(&buf[..n]) {
                        if let (Dir::Up, Packet::Subscribe { .. }) = (dec.dir(), &packet) {
                            let mut s = st.lock().unwrap();
                            if s.stall_subscribe {
                                s.stall_subscribe = false;
                                s.stalled.push(conn);
                                stall = true;
                                log.transcript.push(
                                    Source::Note,
                                    format!("#{conn} stalled: this SUBSCRIBE and all after it are held back"),
                                );
                                stalls.notify_all();
                            }
                        }
                        if let (Dir::Down, Packet::Publish { payload, .. }) = (dec.dir(), &packet) {
                            let mut s = st.lock().unwrap();
                            if let Some(i) = s
                                .cut_after
                                .iter()
                                .position(|m| payload.contains(m.as_str()))
                            {
                                s.cut_after.swap_remove(i);
                                cut = true;
                            }
                        }
                        log.push(WireEvent::Packet {
                            conn,
                            dir: dec.dir(),
                            packet,
                        });
                    }
                    if stall {
                        // The whole chunk stays back, with any packet before
                        // the SUBSCRIBE in it: the stream never desynchronises.
                        continue;
                    }
                    if !latency.is_zero() {
                        // The latency fault itself: this chunk is late by design.
                        std::thread::sleep(latency);
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    if cut {
                        log.transcript.push(
                            Source::Note,
                            format!("#{conn} link cut after a marked PUBLISH"),
                        );
                        reset(&to);
                        reset(&from);
                        return;
                    }
                }
            }
        }
    });
}
