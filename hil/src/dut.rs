//! The device under test, seen only as a device: a process with a serial
//! console and a network connection. The sim backend spawns `hil sim --console
//! pty` and opens the pty with `serialport`, exactly as a bench opens
//! /dev/ttyUSB0.

use crate::transcript::{Source, Transcript};
use hil_session::console::{LineSplitter, MAX_LINE};
use hil_session::Event;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

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
    pub bugs: Vec<String>,
}

/// A failed expectation: what was awaited and what the device said instead.
#[derive(Debug)]
pub struct ExpectError(pub String);

pub struct SimDevice {
    child: Child,
    port: Box<dyn serialport::SerialPort>,
    events: Receiver<Event>,
    /// Every event seen so far, in order (the raw lines are in the transcript).
    pub seen: Vec<Event>,
    transcript: Transcript,
}

impl SimDevice {
    pub fn start(
        spec: &SimSpec,
        state_dir: &Path,
        transcript: &Transcript,
    ) -> Result<SimDevice, String> {
        let mut cmd = Command::new(&spec.hil_exe);
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
            .arg("--state-dir")
            .arg(state_dir);
        for b in &spec.bugs {
            cmd.args(["--bug", b]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start the sim device ({}): {e}",
                    spec.hil_exe.display()
                )
            })?;
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
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
        transcript.runner(format!("sim device console on {path}"));
        let port = serialport::new(&path, 115_200)
            .timeout(Duration::from_millis(200))
            .open()
            .map_err(|e| format!("cannot open the device console {path}: {e}"))?;
        let reader = port
            .try_clone()
            .map_err(|e| format!("cannot clone {path}: {e}"))?;
        let (tx, events) = mpsc::channel();
        let t = transcript.clone();
        std::thread::spawn(move || read_console(reader, t, tx));
        Ok(SimDevice {
            child,
            port,
            events,
            seen: Vec::new(),
            transcript: transcript.clone(),
        })
    }

    /// Writes a host command line.
    pub fn send(&mut self, line: &str) -> Result<(), String> {
        self.transcript.runner(format!("console <- {line}"));
        self.port
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| self.port.flush())
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

    /// Sends a command and waits for its ack.
    pub fn command(&mut self, line: &str) -> Result<Event, ExpectError> {
        self.send(line).map_err(ExpectError)?;
        let name = line
            .trim_start_matches('!')
            .split(' ')
            .next()
            .unwrap_or("")
            .to_string();
        self.expect(
            &format!("ack of `{line}`"),
            Duration::from_secs(10),
            |e| matches!(e, Event::Ack { cmd, .. } if *cmd == name),
        )
    }

    /// Takes everything already printed, without waiting.
    pub fn drain(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            self.seen.push(e);
        }
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_console(mut port: Box<dyn serialport::SerialPort>, t: Transcript, tx: mpsc::Sender<Event>) {
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut buf = [0u8; 4096];
    loop {
        match port.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut closed = false;
                splitter.feed(&buf[..n], &mut |line| match line {
                    Ok(line) => {
                        t.push(Source::Device, line.clone());
                        if let Ok(e) = Event::parse(&line) {
                            closed |= tx.send(e).is_err();
                        }
                    }
                    Err(e) => t.push(Source::Device, format!("<unreadable line: {e}>")),
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
