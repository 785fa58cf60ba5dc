//! The device under test, seen only as a device: a serial console and a
//! network connection. Backends differ in how they start, flash and reset a
//! device; they share the console, which turns bytes into lines and lines
//! into typed events while the transcript keeps every raw line.
//!
//! | backend | flash | reset | console | Wi-Fi toggle | link faults | broker restart |
//! |---|---|---|---|---|---|---|
//! | sim | (built) | `!reboot` | pty via serialport | console | proxy | yes |
//! | serial | espflash library | DTR/RTS, else `!reboot` | serialport | console | proxy (board provisioned with its address) | yes |
//! | wokwi | wokwi-cli | restart | wokwi-cli serial stream | console | no | no |

use crate::transcript::{Source, Transcript};
use hil_session::console::{Command, LineSplitter, MAX_LINE};
use hil_session::Event;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// What a backend can do; a scenario that needs more is not applicable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub flash: bool,
    pub reset: bool,
    pub wifi_toggle: bool,
    /// The device reaches the runner's fault proxy (so links can be cut).
    pub link_faults: bool,
    /// The device reaches a broker the runner can restart.
    pub broker_restart: bool,
    /// The device reaches the runner's broker at all.
    pub reaches_broker: bool,
}

/// A failed expectation: what was awaited.
#[derive(Debug)]
pub struct ExpectError(pub String);

/// The serial console: lines in, typed events out, every raw line kept.
pub struct Console {
    writer: Box<dyn Write + Send>,
    events: Receiver<Event>,
    /// Every event seen so far, in order (the raw lines are in the transcript).
    pub seen: Vec<Event>,
    transcript: Transcript,
}

impl Console {
    pub fn new(
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        transcript: &Transcript,
    ) -> Console {
        Console::tagged(reader, writer, transcript, Source::Device)
    }

    /// A console whose lines are recorded under `source` (extra fleet devices
    /// use `Source::Fleet`, kept out of the normalised transcript).
    pub fn tagged(
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        transcript: &Transcript,
        source: Source,
    ) -> Console {
        let (tx, events) = mpsc::channel();
        let t = transcript.clone();
        std::thread::spawn(move || read_console(reader, t, tx, source));
        Console {
            writer,
            events,
            seen: Vec::new(),
            transcript: transcript.clone(),
        }
    }

    /// Writes a host command line.
    pub fn send(&mut self, line: &str) -> Result<(), String> {
        // Secrets are never written to the transcript.
        let shown = match Command::parse(line) {
            Ok(Command::Config(fields)) => {
                let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
                format!(
                    "!config {}",
                    keys.iter()
                        .map(|k| format!("{k}=<set>"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
            _ => line.to_string(),
        };
        self.transcript.runner(format!("console <- {shown}"));
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| self.writer.flush())
            .map_err(|e| format!("cannot write to the device console: {e}"))
    }

    /// Waits for the first event matching `pred` (earlier events are kept in `seen`).
    pub fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Result<Event, ExpectError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => {
                    self.seen.push(e.clone());
                    if pred(&e) {
                        return Ok(e);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(ExpectError(format!(
                        "no {what} within {:.1}s",
                        timeout.as_secs_f32()
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ExpectError(format!(
                        "the device console closed while waiting for {what}"
                    )))
                }
            }
        }
    }

    /// Sends a command and waits for its ack (or its error).
    pub fn command(&mut self, line: &str) -> Result<Event, ExpectError> {
        // What the device printed before this command is not its answer.
        self.drain();
        self.send(line).map_err(ExpectError)?;
        let name = line
            .trim_start_matches('!')
            .split(' ')
            .next()
            .unwrap_or("")
            .to_string();
        let refusal = if name == "config" {
            "config"
        } else {
            "command"
        };
        let e = self.expect(
            &format!("ack of `{}`", name),
            Duration::from_secs(10),
            |e| {
                matches!(e, Event::Ack { cmd, .. } if *cmd == name)
                    || matches!(e, Event::Error { kind, .. } if kind == refusal)
            },
        )?;
        if let Event::Error { msg, .. } = &e {
            return Err(ExpectError(format!("the device refused `!{name}`: {msg}")));
        }
        Ok(e)
    }

    /// Takes everything already printed, without waiting.
    pub fn drain(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            self.seen.push(e);
        }
    }
}

fn read_console(
    mut reader: Box<dyn Read + Send>,
    t: Transcript,
    tx: mpsc::Sender<Event>,
    source: Source,
) {
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut closed = false;
                splitter.feed(&buf[..n], &mut |line| match line {
                    Ok(line) => {
                        t.push(source, line.clone());
                        if let Ok(e) = Event::parse(&line) {
                            closed |= tx.send(e).is_err();
                        }
                    }
                    // Garbage on the line is recorded and skipped, never fatal.
                    Err(e) => t.push(source, format!("<unreadable line: {e}>")),
                });
                if closed {
                    return;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// How a device was brought up, for `reset` and cleanup.
enum Handle {
    Process(Child),
    Serial {
        port: Box<dyn serialport::SerialPort>,
    },
}

/// A device under test: its console, and how to reset it.
pub struct Dut {
    pub console: Console,
    pub caps: Capabilities,
    pub backend: &'static str,
    handle: Handle,
}

impl std::ops::Deref for Dut {
    type Target = Console;
    fn deref(&self) -> &Console {
        &self.console
    }
}

impl std::ops::DerefMut for Dut {
    fn deref_mut(&mut self) -> &mut Console {
        &mut self.console
    }
}

impl Drop for Dut {
    fn drop(&mut self) {
        if let Handle::Process(child) = &mut self.handle {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Everything needed to start a sim device.
#[derive(Clone, Debug)]
pub struct SimSpec {
    pub hil_exe: PathBuf,
    pub broker: SocketAddr,
    pub mac: String,
    pub proto: hil_broker::Protocol,
    pub keepalive_s: u16,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    pub cmd_qos: u8,
    pub session_expiry_s: u32,
    pub outbox_capacity: u64,
    pub bugs: Vec<String>,
}

pub const SIM_CAPS: Capabilities = Capabilities {
    flash: false,
    reset: true,
    wifi_toggle: true,
    link_faults: true,
    broker_restart: true,
    reaches_broker: true,
};

pub const SERIAL_CAPS: Capabilities = Capabilities {
    flash: true,
    ..SIM_CAPS
};

/// The Wokwi cloud cannot reach this host without the paid private gateway.
pub const WOKWI_CAPS: Capabilities = Capabilities {
    flash: true,
    reset: true,
    wifi_toggle: true,
    link_faults: false,
    broker_restart: false,
    reaches_broker: false,
};

impl Dut {
    /// Spawns `hil sim --console pty` and opens the pty as a serial port.
    pub fn start_sim(
        spec: &SimSpec,
        state_dir: &Path,
        transcript: &Transcript,
    ) -> Result<Dut, String> {
        Dut::start_sim_as(spec, state_dir, transcript, Source::Device)
    }

    /// A sim device whose console lines are recorded under `source`.
    pub fn start_sim_as(
        spec: &SimSpec,
        state_dir: &Path,
        transcript: &Transcript,
        source: Source,
    ) -> Result<Dut, String> {
        let mut cmd = Process::new(&spec.hil_exe);
        cmd.arg("sim")
            .args([
                "--console",
                "pty",
                "--broker",
                &spec.broker.to_string(),
                "--mac",
                &spec.mac,
            ])
            .args([
                "--mqtt",
                &spec.proto.to_string(),
                "--keepalive",
                &spec.keepalive_s.to_string(),
            ])
            .args(["--backoff-base-ms", &spec.backoff_base_ms.to_string()])
            .args(["--backoff-cap-ms", &spec.backoff_cap_ms.to_string()])
            .args(["--cmd-qos", &spec.cmd_qos.to_string()])
            .args(["--session-expiry", &spec.session_expiry_s.to_string()])
            .args(["--outbox-capacity", &spec.outbox_capacity.to_string()])
            .arg("--state-dir")
            .arg(state_dir);
        for b in &spec.bugs {
            cmd.args(["--bug", b]);
        }
        let (child, path) = spawn_pty_device(cmd, &spec.hil_exe)?;
        if source == Source::Device {
            transcript.runner(format!("sim device console on {path}"));
        } else {
            transcript.note(format!("fleet device {} console on {path}", spec.mac));
        }
        let port = open_port(&path, transcript)?;
        let reader = port
            .try_clone()
            .map_err(|e| format!("cannot clone {path}: {e}"))?;
        Ok(Dut {
            console: Console::tagged(Box::new(reader), Box::new(port), transcript, source),
            caps: SIM_CAPS,
            backend: "sim",
            handle: Handle::Process(child),
        })
    }

    /// A board (or anything that speaks the console protocol) on a serial port.
    pub fn open_serial(path: &str, transcript: &Transcript) -> Result<Dut, String> {
        let port = open_port(path, transcript)?;
        let reader = port
            .try_clone()
            .map_err(|e| format!("cannot clone {path}: {e}"))?;
        let control = port
            .try_clone()
            .map_err(|e| format!("cannot clone {path}: {e}"))?;
        Ok(Dut {
            console: Console::new(Box::new(reader), Box::new(port), transcript),
            caps: SERIAL_CAPS,
            backend: "serial",
            handle: Handle::Serial { port: control },
        })
    }

    /// wokwi-cli running the firmware in the Wokwi cloud; its serial stream is the console.
    pub fn start_wokwi(
        cli: &Path,
        project: &Path,
        timeout_ms: u64,
        transcript: &Transcript,
    ) -> Result<Dut, String> {
        if std::env::var_os("WOKWI_CLI_TOKEN").is_none() {
            return Err(
                "WOKWI_CLI_TOKEN is not set: create a token at wokwi.com (CI tokens) and export it"
                    .into(),
            );
        }
        let mut child = Process::new(cli)
            .arg(project)
            .args(["--interactive", "--timeout", &timeout_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    format!("{} not found: install wokwi-cli (see the README's Wokwi section) or pass --wokwi-cli PATH", cli.display())
                } else {
                    format!("cannot run {}: {e}", cli.display())
                }
            })?;
        let stdin = child.stdin.take().ok_or("wokwi-cli has no stdin")?;
        let stdout = child.stdout.take().ok_or("wokwi-cli has no stdout")?;
        transcript.runner(format!("wokwi-cli {} started", project.display()));
        Ok(Dut {
            console: Console::new(Box::new(stdout), Box::new(stdin), transcript),
            caps: WOKWI_CAPS,
            backend: "wokwi",
            handle: Handle::Process(child),
        })
    }

    /// Power cut: kill -9 the device process (sim and wokwi only). Nothing is
    /// flushed, no FIN is sent by the device's own code.
    pub fn power_off(&mut self) -> Result<(), String> {
        match &mut self.handle {
            Handle::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
                self.console
                    .transcript
                    .runner("power cut: kill -9 of the device process");
                Ok(())
            }
            Handle::Serial { .. } => {
                Err("a board on a serial port has no power switch here".into())
            }
        }
    }

    /// Resets the device: DTR/RTS on a serial port that has them (the
    /// ESP32 auto-reset circuit), `!reboot` on the console otherwise.
    pub fn reset(&mut self) -> Result<(), String> {
        if let Handle::Serial { port } = &mut self.handle {
            let pulse = port
                .write_data_terminal_ready(false)
                .and_then(|_| port.write_request_to_send(true))
                .and_then(|_| {
                    std::thread::sleep(Duration::from_millis(100)); // EN held low: the reset pulse itself
                    port.write_request_to_send(false)
                });
            if pulse.is_ok() {
                self.console.transcript.runner("reset: DTR/RTS pulse");
                return Ok(());
            }
        }
        self.console.send("!reboot")
    }
}

fn open_port(path: &str, t: &Transcript) -> Result<Box<dyn serialport::SerialPort>, String> {
    let _ = t;
    serialport::new(path, 115_200)
        .timeout(Duration::from_millis(200))
        .open()
        .map_err(|e| match e.kind() {
            serialport::ErrorKind::NoDevice | serialport::ErrorKind::Io(std::io::ErrorKind::NotFound) => {
                format!("no device at {path}: is the board plugged in? `hil doctor` lists the serial ports")
            }
            _ => format!("cannot open the device console {path}: {e}"),
        })
}

/// Starts a process that prints its pty path on its first stdout line.
fn spawn_pty_device(mut cmd: Process, exe: &Path) -> Result<(Child, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the sim device ({}): {e}", exe.display()))?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut path = String::new();
    let read = stdout.read_line(&mut path);
    let path = path.trim().to_string();
    if read.is_err() || path.is_empty() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = child.kill();
        return Err(format!(
            "the sim device did not print its console path: {}",
            err.trim()
        ));
    }
    Ok((child, path))
}
