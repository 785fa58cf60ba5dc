//! The liar suite: scripted fake devices on a pty, driven through the serial
//! backend exactly as a board would be. Each prints plausible `@hil` lines;
//! some never touch the network, some speak MQTT with one defect their
//! console hides. A verdict is worth only what it cannot be fooled by: none
//! of them may pass a scenario that guards its defect.

use hil::dut::{SerialBackend, SerialOptions};
use hil::runner::{run_one, RunOptions, ScenarioResult, Verdict};
use hil::testbed::BrokerChoice;
use hil_broker::client::{ClientError, ConnectOptions};
use hil_broker::{Client, MqttVersion};
use hil_session::{Event, Topics};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAC: &str = "f4:12:fa:00:00:0a";
const ID: &str = "esp32c3-f412fa00000a";

/// What a fake hides behind an honest-looking console.
#[derive(Clone, Copy, Default)]
struct Lies {
    /// Never opens a socket: every network line on its console is invented.
    console_only: bool,
    /// Drops the readings it says it buffered; publishes fresh ones, renumbered.
    renumber: bool,
    /// Retries every 260 ms while printing textbook exponential windows.
    fixed_retry: bool,
    /// Waits the same exponential schedule every outage (3/4 of each window)
    /// and says so truthfully: only its repetition gives it away.
    fixed_schedule: bool,
    /// Says it subscribed again after session_present=0, but does not.
    no_resubscribe: bool,
    /// Executes a redelivered command again.
    exec_duplicates: bool,
    /// No Will, no retained `online`.
    no_status: bool,
}

/// A fake device on a pty; stops when dropped.
struct Fake {
    path: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fake(lies: Lies) -> Fake {
    let (master, slave) = serialport::TTYPort::pair().expect("a pseudo-terminal");
    let path = serialport::SerialPort::name(&slave).expect("a pty path");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        // The slave end stays open for the fake's life, as a board's port does.
        let _slave = slave;
        Device::new(master, lies).run(&flag)
    });
    Fake {
        path,
        stop,
        thread: Some(thread),
    }
}

struct Device {
    port: serialport::TTYPort,
    lies: Lies,
    broker: Option<SocketAddr>,
    mqtt: MqttVersion,
    client: Option<Client>,
    wifi: bool,
    boots: u32,
    seq: u32,
    buffered: Vec<u32>,
    executed: Vec<String>,
    subscribed_once: bool,
    /// A connection was lost: retrying.
    retry: Option<(u32, Instant)>,
}

impl Device {
    fn new(mut port: serialport::TTYPort, lies: Lies) -> Device {
        let _ = serialport::SerialPort::set_timeout(&mut port, Duration::from_millis(20));
        Device {
            port,
            lies,
            broker: None,
            mqtt: MqttVersion::V3_1_1,
            client: None,
            wifi: true,
            boots: 0,
            seq: 0,
            buffered: Vec::new(),
            executed: Vec::new(),
            subscribed_once: false,
            retry: None,
        }
    }

    fn say(&mut self, e: Event) {
        let _ = self.port.write_all(format!("{}\n", e.format()).as_bytes());
    }

    fn ack(&mut self, cmd: &str, fields: Vec<(String, String)>) {
        self.say(Event::Ack {
            cmd: cmd.into(),
            fields,
        });
    }

    fn topics(&self) -> Topics {
        Topics::new("devices", ID)
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut line = Vec::new();
        let mut buf = [0u8; 256];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = self.port.read(&mut buf) {
                for &b in &buf[..n] {
                    if b == b'\n' {
                        let text = String::from_utf8_lossy(&line).trim().to_string();
                        line.clear();
                        self.on_line(&text);
                    } else {
                        line.push(b);
                    }
                }
            }
            self.on_network();
        }
    }

    fn boot(&mut self) {
        self.client = None;
        self.boots += 1;
        self.say(Event::Boot {
            count: self.boots,
            version: "0.1.0".into(),
        });
        self.say(Event::Id {
            client_id: ID.into(),
        });
        self.say(Event::Wifi { up: true });
        self.wifi = true;
        self.connect_or_retry();
    }

    /// Like a device: a refused connection is retried after a backoff (the
    /// runner refuses connections while it provisions and resets a board).
    fn connect_or_retry(&mut self) {
        if !self.connect() {
            self.backoff(1);
        }
    }

    fn connect(&mut self) -> bool {
        if self.lies.console_only {
            self.say(Event::MqttConnack {
                session_present: true,
                rc: 0,
            });
            self.say(Event::MqttSubscribed {
                topic: self.topics().cmd(),
                qos: 1,
            });
            return true;
        }
        let Some(addr) = self.broker else {
            return false;
        };
        let mut o = ConnectOptions::new(ID);
        o.clean = false;
        o.keepalive_s = 5;
        o.session_expiry_s = Some(3600);
        o.auto_ack = true;
        if !self.lies.no_status {
            o.will = Some((self.topics().status(), b"offline".to_vec(), 1, true));
        }
        let Ok(mut c) = Client::connect(addr, self.mqtt, &o) else {
            return false;
        };
        let sp = c.session_present;
        self.say(Event::MqttConnack {
            session_present: sp,
            rc: 0,
        });
        let topic = self.topics().cmd();
        let lie = self.lies.no_resubscribe && self.subscribed_once;
        if !lie && (!sp || !self.subscribed_once) {
            let _ = c.subscribe(&topic, 1);
        }
        self.subscribed_once = true;
        self.say(Event::MqttSubscribed { topic, qos: 1 });
        if !self.lies.no_status {
            let _ = c.publish(&self.topics().status(), b"online", 1, true);
        }
        self.client = Some(c);
        true
    }

    fn on_line(&mut self, text: &str) {
        let mut words = text.split_whitespace();
        match words.next() {
            Some("!config") => {
                for w in words {
                    if let Some(v) = w.strip_prefix("broker=") {
                        self.broker = v.parse().ok();
                    }
                    if let Some(v) = w.strip_prefix("mqtt=") {
                        self.mqtt = v.parse().unwrap_or(MqttVersion::V3_1_1);
                    }
                }
                self.ack("config", vec![("broker".into(), "set".into())]);
            }
            Some("!reboot") => {
                self.ack("reboot", vec![]);
                self.boot();
            }
            Some("!status") => self.ack("status", vec![("client_id".into(), ID.into())]),
            Some("!wifi") => match words.next() {
                Some("off") => {
                    self.ack("wifi", vec![]);
                    self.wifi = false;
                    self.client = None;
                    self.say(Event::Wifi { up: false });
                    self.say(Event::MqttDisconnected {
                        reason: "wifi-off".into(),
                    });
                }
                _ => {
                    self.ack("wifi", vec![]);
                    self.wifi = true;
                    self.say(Event::Wifi { up: true });
                    self.connect_or_retry();
                    self.flush();
                }
            },
            Some("!telemetry") => {
                let n: u32 = words.next().and_then(|w| w.parse().ok()).unwrap_or(1);
                self.ack("telemetry", vec![]);
                for _ in 0..n {
                    self.seq += 1;
                    self.buffered.push(self.seq);
                    self.say(Event::TelemetryBuffered {
                        seq: self.seq,
                        depth: self.buffered.len() as u32,
                    });
                }
                if self.client.is_some() {
                    self.flush();
                }
            }
            _ => {}
        }
    }

    fn flush(&mut self) {
        let readings = std::mem::take(&mut self.buffered);
        let topic = self.topics().telemetry();
        let Some(c) = self.client.as_mut() else {
            return;
        };
        for seq in readings {
            let seq = if self.lies.renumber { seq + 100 } else { seq };
            let _ = c.publish(&topic, format!("{{\"seq\":{seq}}}").as_bytes(), 1, false);
        }
    }

    fn on_network(&mut self) {
        if let Some((attempt, at)) = self.retry {
            if Instant::now() >= at {
                if self.connect() {
                    self.retry = None;
                    self.flush();
                } else {
                    self.backoff(attempt + 1);
                }
            }
            return;
        }
        let Some(c) = self.client.as_mut() else {
            return;
        };
        match c.recv(Instant::now() + Duration::from_millis(5)) {
            Ok(Some(m)) => {
                let payload = m.text();
                let id = payload
                    .split("\"id\":\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or_default()
                    .to_string();
                if self.executed.contains(&id) && !self.lies.exec_duplicates {
                    self.say(Event::CmdDuplicate {
                        id,
                        qos: m.qos,
                        dup: m.dup,
                    });
                } else {
                    self.executed.push(id.clone());
                    self.say(Event::Cmd {
                        id,
                        qos: m.qos,
                        dup: m.dup,
                        payload,
                    });
                }
            }
            Ok(None) => {}
            Err(ClientError::Closed) => {
                self.client = None;
                self.say(Event::MqttDisconnected {
                    reason: "closed".into(),
                });
                if self.wifi {
                    self.backoff(1);
                }
            }
            Err(_) => {}
        }
    }

    /// Prints a textbook window; waits what the lie says.
    fn backoff(&mut self, attempt: u32) {
        let hi = (200u64 << attempt.min(4)).min(2000);
        let lo = hi / 2;
        let printed = if self.lies.fixed_schedule {
            hi * 3 / 4
        } else {
            // Honest equal jitter: a draw from [lo, hi] (the clock's
            // nanoseconds are random enough for a fake).
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u64)
                .unwrap_or(0);
            lo + (nanos.wrapping_mul(0x9e37_79b9) >> 7) % (hi - lo + 1)
        };
        self.say(Event::Backoff {
            attempt,
            delay_ms: printed,
            lo_ms: lo,
            hi_ms: hi,
        });
        let wait = if self.lies.fixed_retry { 260 } else { printed };
        self.retry = Some((attempt, Instant::now() + Duration::from_millis(wait)));
    }
}

fn serial(port: &str) -> RunOptions {
    let mut o = RunOptions::sim(env!("CARGO_BIN_EXE_hil").into(), BrokerChoice::Rumqttd);
    o.backend = Box::new(SerialBackend(SerialOptions {
        probe: None,
        port: port.into(),
        elf: None,
        chip: espflash::target::Chip::Esp32c3,
        wifi: None,
        mac: Some(MAC.into()),
        tls: false,
    }));
    o
}

fn run(lies: Lies, scenario: &str) -> ScenarioResult {
    let f = fake(lies);
    let s = hil::scenarios::find(scenario).expect("a scenario of the registry");
    run_one(&serial(&f.path), s, "unused")
}

/// A fake whose defect the scenario guards must fail it, for that promise.
fn fails(lies: Lies, scenario: &str, promise: hil::scenarios::Promise) {
    let r = run(lies, scenario);
    match r.failure() {
        Some(f) if f.promise == promise => {}
        _ => panic!(
            "{scenario}: the liar must fail {promise:?}, got {:?}\n{}",
            r.verdict,
            r.transcript.raw()
        ),
    }
}

#[test]
fn console_only_liar_passes_nothing() {
    let lies = Lies {
        console_only: true,
        ..Lies::default()
    };
    let mut passed = Vec::new();
    for s in hil::scenarios::ALL {
        let f = fake(lies);
        let r = run_one(&serial(&f.path), s, "unused");
        if matches!(r.verdict, Verdict::Pass) {
            passed.push((s.name, r.transcript.raw()));
        }
    }
    assert!(
        passed.is_empty(),
        "a device that never opened a socket passed {:?}:\n{}",
        passed.iter().map(|p| p.0).collect::<Vec<_>>(),
        passed.first().map(|p| p.1.as_str()).unwrap_or("")
    );
}

#[test]
fn honest_fake_passes_what_it_does() {
    // The fake is honest without lies: the suite judges defects, not the fake.
    let r = run(Lies::default(), "telemetry_flush");
    assert!(
        matches!(r.verdict, Verdict::Pass),
        "{:?}\n{}",
        r.verdict,
        r.transcript.raw()
    );
}

#[test]
fn renumbering_liar_fails_telemetry_flush() {
    let lies = Lies {
        renumber: true,
        ..Lies::default()
    };
    fails(
        lies,
        "telemetry_flush",
        hil::scenarios::Promise::TelemetryFlushed,
    );
}

#[test]
fn fixed_interval_liar_fails_broker_restart() {
    let lies = Lies {
        fixed_retry: true,
        ..Lies::default()
    };
    fails(
        lies,
        "broker_restart",
        hil::scenarios::Promise::CappedBackoff,
    );
}

#[test]
fn fixed_schedule_liar_fails_broker_restart() {
    let lies = Lies {
        fixed_schedule: true,
        ..Lies::default()
    };
    fails(lies, "broker_restart", hil::scenarios::Promise::Jitter);
}

#[test]
fn never_resubscribing_liar_fails_broker_restart() {
    let lies = Lies {
        no_resubscribe: true,
        ..Lies::default()
    };
    fails(lies, "broker_restart", hil::scenarios::Promise::Resubscribe);
}

#[test]
fn duplicate_executing_liar_fails_duplicate_command() {
    let lies = Lies {
        exec_duplicates: true,
        ..Lies::default()
    };
    fails(
        lies,
        "duplicate_command",
        hil::scenarios::Promise::ExecutedOnce,
    );
}

#[test]
fn statusless_liar_fails_link_blackhole() {
    let lies = Lies {
        no_status: true,
        ..Lies::default()
    };
    let r = run(lies, "link_blackhole");
    // Its 5 s keep-alive is within the budget, so the missing status decides.
    match r.failure() {
        Some(f) if f.promise == hil::scenarios::Promise::LastWill => {}
        _ => panic!("{:?}\n{}", r.verdict, r.transcript.raw()),
    }
}
