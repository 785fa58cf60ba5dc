//! The serial console: bytes in, lines out, lines into typed events; every
//! raw line is kept in the transcript. Shared by every backend.

use super::DutError;
use crate::transcript::{Source, Transcript};
use hil_session::console::{Command, LineSplitter, MAX_LINE};
use hil_session::Event;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a device has to answer a host command.
const ACK: Duration = Duration::from_secs(10);

pub struct Console {
    writer: Box<dyn Write + Send>,
    events: Receiver<Event>,
    /// Tells the reader to stop at its next read timeout (serial ports time
    /// out every 200 ms), so a closed console releases its port.
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Dropping the console waits for its reader (see [`Console::release_on_drop`]).
    join_on_drop: bool,
    /// Every event seen so far, in order (the raw lines are in the transcript).
    pub seen: Vec<Event>,
    transcript: Transcript,
}

impl Console {
    /// A console whose lines are recorded under `source` (extra fleet devices
    /// use `Source::Fleet`, kept out of the normalised transcript).
    pub fn new(
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        transcript: &Transcript,
        source: Source,
    ) -> Console {
        let (tx, events) = mpsc::channel();
        let t = transcript.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let reader = std::thread::spawn(move || read_console(reader, t, tx, source, flag));
        Console {
            writer,
            events,
            stop,
            reader: Some(reader),
            join_on_drop: false,
            seen: Vec::new(),
            transcript: transcript.clone(),
        }
    }

    /// A serial port (a board, or a sim's pty) as a console.
    pub fn on_port(
        path: &str,
        transcript: &Transcript,
        source: Source,
    ) -> Result<(Console, Box<dyn serialport::SerialPort>), DutError> {
        let port = open_port(path)?;
        let clone = |p: &dyn serialport::SerialPort| {
            p.try_clone().map_err(|source| DutError::Open {
                path: path.to_string(),
                source,
            })
        };
        let reader = clone(port.as_ref())?;
        let control = clone(port.as_ref())?;
        Ok((
            Console::new(Box::new(reader), Box::new(port), transcript, source),
            control,
        ))
    }

    /// Dropping this console will wait for its reader to let go of the port
    /// (at most one 200 ms read timeout). For a port the next scenario opens
    /// again (a board, or the serial backend's pty): the open is exclusive
    /// and must not race the old reader (seen under load in CI as "no device
    /// at /dev/pts/N" right after a 0.1 s scenario). Not for a pipe, whose
    /// read may block until its process ends.
    pub fn release_on_drop(&mut self) {
        self.join_on_drop = true;
    }

    /// Stops reading and waits for the reader to let go of the port (a
    /// serial port is opened exclusively: the next user needs it released).
    pub fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// Writes a host command line. Secrets never reach the transcript.
    pub fn send(&mut self, line: &str) -> Result<(), DutError> {
        let shown = match Command::parse(line) {
            Ok(Command::Config(fields)) => {
                let keys: Vec<String> = fields.iter().map(|(k, _)| format!("{k}=<set>")).collect();
                format!("!config {}", keys.join(" "))
            }
            _ => line.to_string(),
        };
        self.transcript.runner(format!("console <- {shown}"));
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| self.writer.flush())
            .map_err(DutError::Write)
    }

    /// Waits for the first event matching `pred` (earlier events are kept in `seen`).
    pub fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Result<Event, DutError> {
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
                    return Err(DutError::Timeout {
                        what: what.to_string(),
                        after: timeout,
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(DutError::ConsoleClosed {
                        what: what.to_string(),
                    })
                }
            }
        }
    }

    /// Keeps every event for `d` (an outage, an expiry interval: the wait is
    /// the scenario's parameter, not a guess at readiness).
    pub fn pass_time(&mut self, d: Duration) {
        let until = Instant::now() + d;
        let _ = self.expect("", d, |_| Instant::now() >= until);
    }

    /// Sends a command and waits for its ack (or its error).
    pub fn command(&mut self, line: &str) -> Result<Event, DutError> {
        self.command_within(line, ACK)
    }

    /// As [`Console::command`], with its own deadline for the answer.
    pub fn command_within(&mut self, line: &str, within: Duration) -> Result<Event, DutError> {
        // What the device printed before this command is not its answer.
        self.drain();
        self.send(line)?;
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
        let e = self.expect(&format!("ack of `{name}`"), within, |e| {
            matches!(e, Event::Ack { cmd, .. } if *cmd == name)
                || matches!(e, Event::Error { kind, .. } if kind == refusal)
        })?;
        if let Event::Error { msg, .. } = &e {
            return Err(DutError::Refused {
                cmd: name,
                msg: msg.clone(),
            });
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

impl Drop for Console {
    /// Stops the reader and waits for it (at most one read timeout): a
    /// serial port is opened exclusively, so the next scenario's open of the
    /// same port must not race a reader that still holds it (seen under load
    /// in CI as "no device at /dev/pts/N" right after a short scenario).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.join_on_drop {
            if let Some(r) = self.reader.take() {
                let _ = r.join();
            }
        }
    }
}

fn read_console(
    mut reader: Box<dyn Read + Send>,
    t: Transcript,
    tx: mpsc::Sender<Event>,
    source: Source,
    stop: Arc<AtomicBool>,
) {
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
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

/// Opens a serial port (115200 8N1; a pty ignores the rate).
pub fn open_port(path: &str) -> Result<Box<dyn serialport::SerialPort>, DutError> {
    serialport::new(path, 115_200)
        .timeout(Duration::from_millis(200))
        .open()
        .map_err(|source| match source.kind() {
            serialport::ErrorKind::NoDevice
            | serialport::ErrorKind::Io(std::io::ErrorKind::NotFound) => DutError::NoDevice {
                path: path.to_string(),
            },
            _ => DutError::Open {
                path: path.to_string(),
                source,
            },
        })
}
