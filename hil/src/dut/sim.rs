//! The sim backend: `hil sim` (the session core on std) as a child process,
//! its console on a pseudo-terminal the runner opens like a board's port.
//! The device is configured by flags, written by `hil_sim::Args` itself.

use super::{
    client_id_of, Backend, Capability, Console, DeviceSpec, Dut, DutError, EngineSpec, Fleet,
    FleetDevice, Provision,
};
use crate::transcript::{Source, Transcript};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct SimBackend {
    /// The `hil` executable (it serves `hil sim`).
    pub hil_exe: PathBuf,
}

const CAPS: &[Capability] = &[
    Capability::ReachesBroker,
    Capability::WifiToggle,
    Capability::Reset,
    Capability::BrokerRestart,
    Capability::LinkFaults,
    Capability::Fleet,
    Capability::PowerCut,
    Capability::NegativeControls,
    Capability::ScenarioConfig,
    Capability::Tls,
    Capability::Login,
];

/// One sim device's launch: its flags, and where its lines go.
#[derive(Clone)]
pub struct SimLaunch {
    pub hil_exe: PathBuf,
    pub args: hil_sim::Args,
    pub transcript: Transcript,
    pub source: Source,
}

impl SimLaunch {
    /// The device under test of a scenario, as provisioned.
    pub fn new(hil_exe: &Path, p: &Provision) -> SimLaunch {
        let mut args = hil_sim::Args::new(p.broker.to_string(), p.mac.into(), p.state_dir.into());
        args.console = "pty".into();
        args.mqtt = p.mqtt;
        args.bugs = p.bugs.to_vec();
        if let Some(tls) = &p.tls {
            args.tls_ca = Some(tls.ca_file.into());
            args.tls_name = Some(tls.server_name.into());
            if let Some((cert, key)) = tls.client {
                args.tls_cert = Some(cert.into());
                args.tls_key = Some(key.into());
            }
        }
        if let Some((user, file)) = p.login {
            args.username = Some(user.into());
            args.password_file = Some(file.into());
        }
        args.require_tls = p.spec.tls != super::TlsMode::Off || p.tls.is_some();
        apply(&mut args, &p.spec);
        SimLaunch {
            hil_exe: hil_exe.into(),
            args,
            transcript: p.transcript.clone(),
            source: Source::Device,
        }
    }

    /// Another device like this one: its own MAC, spec and flash; its
    /// console lines are recorded as a fleet's.
    pub fn sibling(&self, mac: &str, spec: &DeviceSpec, state_dir: &Path) -> SimLaunch {
        let mut l = self.clone();
        l.args.mac = mac.into();
        l.args.state_dir = state_dir.into();
        apply(&mut l.args, spec);
        l.source = Source::Fleet;
        l
    }

    /// Starts the device process and opens its console.
    pub fn spawn(&self) -> Result<(Child, Console), DutError> {
        let mut cmd = Command::new(&self.hil_exe);
        cmd.arg("sim").args(self.args.to_argv());
        let (child, path) = spawn_pty_process(cmd, &self.hil_exe)?;
        if self.source == Source::Device {
            self.transcript
                .runner(format!("sim device console on {path}"));
        } else {
            self.transcript
                .note(format!("fleet device {} console on {path}", self.args.mac));
        }
        let (console, _) = Console::on_port(&path, &self.transcript, self.source)?;
        Ok((child, console))
    }

    /// Spawns it as a [`Dut`] whose power switch is the process.
    pub fn start(self) -> Result<Dut, DutError> {
        let (console, power) = super::process::ProcessPower::start(self)?;
        Ok(Dut::new(console, "sim", Box::new(power)))
    }
}

/// The device's configuration as sim flags.
fn apply(args: &mut hil_sim::Args, spec: &DeviceSpec) {
    args.keepalive = spec.keepalive_s;
    args.backoff_base_ms = spec.backoff_base_ms;
    args.backoff_cap_ms = spec.backoff_cap_ms;
    args.cmd_qos = spec.cmd_qos;
    args.session_expiry = spec.session_expiry_s;
    args.outbox_capacity = spec.outbox_capacity;
    args.connack_timeout_ms = spec.connack_timeout_ms;
    args.ack_timeout_ms = spec.ack_timeout_ms;
    args.telemetry_topic = spec.telemetry_topic.map(String::from);
}

impl super::process::Launch for SimLaunch {
    fn spawn(&self) -> Result<(Child, Console), DutError> {
        SimLaunch::spawn(self)
    }
}

impl Backend for SimBackend {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn concurrent(&self) -> bool {
        true
    }

    fn capabilities(&self) -> &'static [Capability] {
        CAPS
    }

    fn bring_up(&self, p: &Provision) -> Result<Dut, DutError> {
        p.transcript
            .runner(format!("start sim device mac={} mqtt={}", p.mac, p.mqtt));
        SimLaunch::new(&self.hil_exe, p).start()
    }

    fn fleet(&self, p: &Provision) -> Option<Box<dyn Fleet>> {
        Some(Box::new(SimFleet {
            base: SimLaunch::new(&self.hil_exe, p),
            spec: p.spec,
            broker: p.plain,
        }))
    }

    fn expected_client_id(&self, mac: &str) -> Option<String> {
        client_id_of(mac)
    }
}

/// Extra sim devices on the scenario's proxy, each with a flash of its own.
struct SimFleet {
    base: SimLaunch,
    spec: DeviceSpec,
    broker: std::net::SocketAddr,
}

impl Fleet for SimFleet {
    fn start(&self, mac: &str, edit: &dyn Fn(&mut DeviceSpec)) -> Result<FleetDevice, DutError> {
        let state = tempfile::Builder::new()
            .prefix("hil-fleet-")
            .tempdir()
            .map_err(DutError::StateDir)?;
        let mut spec = self.spec;
        edit(&mut spec);
        Ok(FleetDevice {
            dut: self.base.sibling(mac, &spec, state.path()).start()?,
            state,
        })
    }

    fn engine(&self, edit: &dyn Fn(&mut DeviceSpec)) -> Option<EngineSpec> {
        let mut spec = self.spec;
        edit(&mut spec);
        let mut args = self.base.args.clone();
        apply(&mut args, &spec);
        // The engine gives each device its own MAC; this one is replaced.
        let mac = args
            .mac
            .parse()
            .unwrap_or(hil_session::Mac([0x24, 0x0a, 0xc4, 0, 0, 0]));
        Some(EngineSpec {
            device: args.session_config(mac),
            broker: self.broker,
        })
    }
}

/// Starts a process that prints its pty path on its first stdout line.
pub fn spawn_pty_process(mut cmd: Command, exe: &Path) -> Result<(Child, String), DutError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| DutError::Spawn {
            program: exe.display().to_string(),
            source,
        })?;
    let mut path = String::new();
    let read = match child.stdout.take() {
        Some(out) => BufReader::new(out).read_line(&mut path).is_ok(),
        None => false,
    };
    let path = path.trim().to_string();
    if !read || path.is_empty() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = child.kill();
        let _ = child.wait();
        return Err(DutError::NoConsolePath {
            stderr: err.trim().to_string(),
        });
    }
    Ok((child, path))
}

/// A sim device started by hand, sitting on a pty as a board sits on its
/// port: for tools and tests that drive it as a serial device. Killed on drop.
pub struct PtyDevice {
    child: Child,
    /// The console, for `--dut serial --port PATH`.
    pub path: String,
}

impl PtyDevice {
    /// `hil sim` with `args` (its console is forced to a pty).
    pub fn start(hil_exe: &Path, mut args: hil_sim::Args) -> Result<PtyDevice, DutError> {
        args.console = "pty".into();
        let mut cmd = Command::new(hil_exe);
        cmd.arg("sim").args(args.to_argv());
        let (child, path) = spawn_pty_process(cmd, hil_exe)?;
        Ok(PtyDevice { child, path })
    }
}

impl Drop for PtyDevice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
