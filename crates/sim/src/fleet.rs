//! The in-process fleet engine: N session cores (`hil_session::Device`, the
//! firmware's own logic) driven by one tokio runtime, each with its own TCP
//! connection, in-memory flash, RNG seed and MAC, its source address on a
//! private loopback address of its own block so 10,000+ connections never
//! run out of ports.
//!
//! Why not N `hil-sim` processes: each costs ~5 MB of RSS, so 10,000 would
//! need ~50 GB; a task here costs a few KB (measured by `hil fleet`).
//!
//! What the caller learns comes from the engine's socket layer, not from the
//! devices' console lines: a TCP connect is timed where it is made, and a
//! CONNACK where its bytes arrive ([`FleetEvent`]). Executions of commands
//! are the session core's own (they are what the broker's delivery is judged
//! by, and the deliveries are acknowledged on the same sockets).

use hil_session::{Config, Device, Event, LinkDownReason, Mac, Output, RandomSource, Record};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// What the fleet is made of.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub devices: usize,
    pub broker: SocketAddr,
    /// Every device's session settings; MAC and seed are per device.
    pub device: Config,
    /// The first MAC; device `i` has this plus `i`.
    pub first_mac: Mac,
    pub seed: u64,
    /// Second octet of the loopback block the devices' source addresses come
    /// from (127.B.x.y): one address per 250 devices.
    pub source_block: u8,
}

/// Something the engine saw on a device's socket, or a command the device ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetEvent {
    /// A TCP connect was made (whatever its outcome).
    Attempt { device: usize, at: Instant },
    /// The connect was refused or failed.
    Refused { device: usize, at: Instant },
    /// The first bytes of a connection were a successful CONNACK.
    Connack {
        device: usize,
        at: Instant,
        session_present: bool,
    },
    /// The broker confirmed the command subscription.
    Subscribed { device: usize },
    /// The connection ended (the peer closed it, or an error).
    Lost { device: usize, at: Instant },
    /// A command executed (first time).
    Executed { device: usize, id: String },
    /// A redelivered command acknowledged, not executed again.
    Duplicate { device: usize, id: String },
}

enum Ctl {
    Wifi(bool),
    Stop,
}

/// A running fleet. Dropping it stops every device.
pub struct Fleet {
    rt: Option<tokio::runtime::Runtime>,
    ctl: Vec<mpsc::UnboundedSender<Ctl>>,
    client_ids: Vec<String>,
    events: std::sync::mpsc::Receiver<FleetEvent>,
}

/// Why the fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot start the fleet's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("a fleet has 1 to 100,000 devices, not {0}")]
    Size(usize),
}

impl Fleet {
    /// Boots every device (radio off) on a runtime of `threads` workers.
    pub fn start(cfg: FleetConfig, threads: usize) -> Result<Fleet, FleetError> {
        if !(1..=100_000).contains(&cfg.devices) {
            return Err(FleetError::Size(cfg.devices));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()
            .map_err(FleetError::Runtime)?;
        let (tx, events) = std::sync::mpsc::channel();
        let epoch = Instant::now();
        let base = u64::from_be_bytes({
            let mut b = [0u8; 8];
            b[2..].copy_from_slice(&cfg.first_mac.0);
            b
        });
        let mut ctl = Vec::with_capacity(cfg.devices);
        let mut client_ids = Vec::with_capacity(cfg.devices);
        let mut seeds = SmallRng::seed_from_u64(cfg.seed);
        for i in 0..cfg.devices {
            let m = (base + i as u64).to_be_bytes();
            let mut dc = cfg.device.clone();
            dc.mac = Mac([m[2], m[3], m[4], m[5], m[6], m[7]]);
            client_ids.push(hil_session::client_id(&dc.chip, &dc.mac));
            let (ctx, crx) = mpsc::unbounded_channel();
            ctl.push(ctx);
            let src = IpAddr::V4(Ipv4Addr::new(
                127,
                cfg.source_block,
                (i / 250) as u8,
                (i % 250) as u8 + 1,
            ));
            let unit = Unit {
                index: i,
                cfg: Arc::new(dc),
                broker: cfg.broker,
                src,
                seed: seeds.next_u64(),
                epoch,
                events: tx.clone(),
            };
            rt.spawn(unit.run(crx));
        }
        Ok(Fleet {
            rt: Some(rt),
            ctl,
            client_ids,
            events,
        })
    }

    pub fn len(&self) -> usize {
        self.ctl.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ctl.is_empty()
    }

    /// Device `i`'s client ID (the identity rule: chip and MAC).
    pub fn client_id(&self, i: usize) -> &str {
        &self.client_ids[i]
    }

    /// Radio on or off for every device, at once.
    pub fn wifi_all(&self, on: bool) {
        for c in &self.ctl {
            let _ = c.send(Ctl::Wifi(on));
        }
    }

    /// The next event, waiting up to `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<FleetEvent> {
        self.events.recv_timeout(timeout).ok()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &self.ctl {
            let _ = c.send(Ctl::Stop);
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

struct Rng(SmallRng);
impl RandomSource for Rng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
}

/// One device: its session core, its flash and its socket.
struct Unit {
    index: usize,
    cfg: Arc<Config>,
    broker: SocketAddr,
    src: IpAddr,
    seed: u64,
    epoch: Instant,
    events: std::sync::mpsc::Sender<FleetEvent>,
}

/// The read buffer per device: what a small device reads at once.
const READ_CHUNK: usize = 1024;

impl Unit {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn tell(&self, e: FleetEvent) {
        let _ = self.events.send(e);
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        let s = TcpSocket::new_v4()?;
        // Many devices share one source address: the port must be free to
        // reuse as soon as an earlier connection is gone.
        s.set_reuseaddr(true)?;
        s.bind(SocketAddr::new(self.src, 0))?;
        let c = s.connect(self.broker).await?;
        c.set_nodelay(true)?;
        Ok(c)
    }

    async fn run(self, mut ctl: mpsc::UnboundedReceiver<Ctl>) {
        let mut flash: BTreeMap<&'static str, Record> = BTreeMap::new();
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let boot = |flash: &BTreeMap<&'static str, Record>, rng: &mut SmallRng| {
            Device::boot(
                (*self.cfg).clone(),
                Rng(SmallRng::seed_from_u64(rng.next_u64())),
                flash.values().cloned().collect::<Vec<_>>(),
            )
        };
        let mut dev = boot(&flash, &mut rng);
        let mut sock: Option<TcpStream> = None;
        // Whether this connection's first bytes are still to come (the CONNACK).
        let mut first = false;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            while let Some(o) = dev.poll_output() {
                match o {
                    Output::Persist(r) => {
                        flash.insert(r.key().name(), r);
                    }
                    Output::Console(e) => match e {
                        Event::Cmd { id, .. } => self.tell(FleetEvent::Executed {
                            device: self.index,
                            id,
                        }),
                        Event::CmdDuplicate { id, .. } => self.tell(FleetEvent::Duplicate {
                            device: self.index,
                            id,
                        }),
                        Event::MqttSubscribed { .. } => {
                            self.tell(FleetEvent::Subscribed { device: self.index })
                        }
                        _ => {}
                    },
                    Output::Open => {
                        self.tell(FleetEvent::Attempt {
                            device: self.index,
                            at: Instant::now(),
                        });
                        let within = Duration::from_millis(self.cfg.connack_timeout_ms.max(1));
                        match tokio::time::timeout(within, self.connect()).await {
                            Ok(Ok(s)) => {
                                sock = Some(s);
                                first = true;
                                dev.handle_link_up(self.now());
                            }
                            failed => {
                                let why = match failed {
                                    Ok(Err(e)) => e.to_string(),
                                    _ => "connect timed out".into(),
                                };
                                self.tell(FleetEvent::Refused {
                                    device: self.index,
                                    at: Instant::now(),
                                });
                                dev.handle_link_down(self.now(), LinkDownReason::Refused(why));
                            }
                        }
                    }
                    Output::Close { abrupt } => {
                        if let Some(s) = sock.take() {
                            if abrupt {
                                // RST, as when the radio dies.
                                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                            }
                        }
                    }
                    Output::Transmit(bytes) => {
                        if let Some(s) = sock.as_mut() {
                            if let Err(e) = s.write_all(&bytes).await {
                                sock = None;
                                self.tell(FleetEvent::Lost {
                                    device: self.index,
                                    at: Instant::now(),
                                });
                                dev.handle_link_down(
                                    self.now(),
                                    LinkDownReason::Error(e.to_string()),
                                );
                            }
                        }
                    }
                    Output::Wifi(on) => {
                        if !on {
                            sock = None;
                        }
                    }
                    Output::Reboot => {
                        sock = None;
                        dev = boot(&flash, &mut rng);
                        dev.handle_wifi(self.now(), true);
                    }
                    // Provisioning is a console matter: the engine's
                    // devices are configured when they are made.
                    Output::Config(_) => {}
                }
            }
            let deadline = dev
                .poll_wake()
                .map(|t| tokio::time::Instant::from_std(self.epoch + Duration::from_millis(t)));
            tokio::select! {
                r = async { sock.as_mut().expect("guarded").read(&mut buf).await }, if sock.is_some() => {
                    match r {
                        Ok(0) | Err(_) => {
                            sock = None;
                            self.tell(FleetEvent::Lost { device: self.index, at: Instant::now() });
                            let reason = match r {
                                Err(e) => LinkDownReason::Error(e.to_string()),
                                _ => LinkDownReason::Closed,
                            };
                            dev.handle_link_down(self.now(), reason);
                        }
                        Ok(n) => {
                            if first {
                                first = false;
                                // CONNACK: 0x20, length, flags, code 0.
                                if n >= 4 && buf[0] == 0x20 && buf[3] == 0 {
                                    self.tell(FleetEvent::Connack {
                                        device: self.index,
                                        at: Instant::now(),
                                        session_present: buf[2] & 1 == 1,
                                    });
                                }
                            }
                            dev.handle_bytes(self.now(), &buf[..n]);
                        }
                    }
                }
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    dev.handle_timeout(self.now());
                }
                c = ctl.recv() => match c {
                    Some(Ctl::Wifi(on)) => dev.handle_wifi(self.now(), on),
                    Some(Ctl::Stop) | None => return,
                },
            }
            if dev.poll_wake().is_some_and(|t| t <= self.now()) {
                dev.handle_timeout(self.now());
            }
        }
    }
}
