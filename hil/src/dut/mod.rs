//! The device under test, seen only as a device: a serial console and a
//! network connection. A [`Backend`] knows how to bring a device up (start a
//! process, reset and provision a board, launch Wokwi); everything after
//! that goes through the [`Dut`]: its console, and its power.
//!
//! | backend | flash | reset | console | Wi-Fi toggle | link faults | broker restart | fleet, power cut |
//! |---|---|---|---|---|---|---|---|
//! | sim | (built) | `!reboot` | pty via serialport | console | proxy | yes | yes |
//! | serial | espflash library | DTR/RTS, else `!reboot` | serialport | console | proxy (board provisioned with its address) | yes | no |
//! | probe | probe-rs | DTR/RTS, else `!reboot` | serialport | console | proxy | yes | no |
//! | wokwi | wokwi-cli | restart | wokwi-cli serial stream | console | no | no | no |
//!
//! Adding a backend: one file here implementing [`Backend`], one arm in the CLI.

mod console;
mod firmware_host;
mod process;
mod serial;
mod sim;
mod wokwi;

pub use console::Console;
pub use firmware_host::{FirmwareHostBackend, HostFirmware};
pub use serial::{SerialBackend, SerialOptions};
pub use sim::{PtyDevice, SimBackend, SimLaunch};
pub use wokwi::WokwiBackend;

use crate::transcript::Transcript;
use hil_session::{Bug, MqttVersion};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// One thing a backend can do for a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// The device reaches the runner's broker (through its fault proxy).
    ReachesBroker,
    /// `!wifi off` / `!wifi on` on the console.
    WifiToggle,
    Reset,
    /// The broker the device reaches can be killed and started again.
    BrokerRestart,
    /// The device's link runs through the runner's fault proxy.
    LinkFaults,
    /// More devices like this one, started on demand.
    Fleet,
    /// Cut the device's power (kill -9) and restore it from its flash.
    PowerCut,
    /// Negative controls (`--sim-bug`) provisioned into the device.
    NegativeControls,
    /// The device runs with the scenario's [`DeviceSpec`] (a board keeps its
    /// firmware's configuration).
    ScenarioConfig,
    /// MQTT over TLS with a CA the runner provisions (and hostname checks).
    Tls,
    /// An MQTT User Name and Password given to the device. The firmware's
    /// plaintext builds have none: it sends a login only inside TLS.
    Login,
}

impl Capability {
    /// What it lets the runner do, for "the X backend cannot ...".
    pub fn describe(self) -> &'static str {
        match self {
            Capability::ReachesBroker => "reach the runner's broker",
            Capability::WifiToggle => "toggle its Wi-Fi",
            Capability::Reset => "reset the device",
            Capability::BrokerRestart => "restart the broker it talks to",
            Capability::LinkFaults => "put a fault proxy on the device's link",
            Capability::Fleet => "start extra devices",
            Capability::Tls => "provision a CA and speak MQTT over TLS",
            Capability::Login => {
                "give the device an MQTT login (the firmware sends one only inside TLS: its tls build on a board)"
            }
            Capability::PowerCut => "cut the device's power",
            Capability::NegativeControls => "run negative controls (--sim-bug)",
            Capability::ScenarioConfig => {
                "configure the device per scenario (buffer size, keep-alive)"
            }
        }
    }
}

/// How a scenario configures the device: defaults plus the few fields that
/// differ. A sim gets these as flags; a board keeps its own (its firmware's
/// configuration), which is why a scenario must not assume them on a board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    pub keepalive_s: u16,
    pub session_expiry_s: u32,
    pub outbox_capacity: u64,
    pub cmd_qos: u8,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    pub connack_timeout_ms: u64,
    pub ack_timeout_ms: u64,
    pub tls: TlsMode,
    pub login: LoginMode,
    /// Readings go here instead of the device's own telemetry topic.
    pub telemetry_topic: Option<&'static str>,
}

/// What MQTT credentials a scenario's device is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginMode {
    /// None (anonymous).
    None,
    /// The broker's user name with a password that is not the broker's.
    WrongPassword,
    /// The broker's user name and password: a device the broker knows, to
    /// which its ACL applies.
    Good,
}

/// How a scenario's device is set up for TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext MQTT (unless the run says `--tls`).
    Off,
    /// The test CA provisioned; the device connects through the TLS hop.
    On,
    /// A production device (TLS required) provisioned without a CA.
    RequiredWithoutCa,
    /// The test CA and a client certificate of its own, which the hop
    /// requires (mutual TLS).
    Mutual,
}

impl DeviceSpec {
    pub const DEFAULT: DeviceSpec = DeviceSpec {
        keepalive_s: 5,
        session_expiry_s: 3600,
        outbox_capacity: 64,
        cmd_qos: 1,
        backoff_base_ms: 200,
        backoff_cap_ms: 2_000,
        connack_timeout_ms: 10_000,
        ack_timeout_ms: 10_000,
        tls: TlsMode::Off,
        login: LoginMode::None,
        telemetry_topic: None,
    };
}

impl Default for DeviceSpec {
    fn default() -> Self {
        DeviceSpec::DEFAULT
    }
}

/// Everything a backend is given to bring one device up for one scenario.
pub struct Provision<'a> {
    /// Where the device must connect: the fault proxy, or the TLS hop in
    /// front of it.
    pub broker: SocketAddr,
    /// The fault proxy's own (plaintext) address.
    pub plain: SocketAddr,
    /// The CA the device must trust and the name it must verify; None: no CA
    /// (plaintext, or a production device left without one: `spec.tls`).
    pub tls: Option<DeviceTls<'a>>,
    /// MQTT credentials: the user name, and a file holding the password.
    pub login: Option<(&'a str, &'a Path)>,
    pub mac: &'a str,
    pub mqtt: MqttVersion,
    pub spec: DeviceSpec,
    pub bugs: &'a [Bug],
    /// The device's flash, for backends that keep it on the host.
    pub state_dir: &'a Path,
    pub transcript: &'a Transcript,
    /// Refuses (true) or admits (false) the device's connections, so a board
    /// being provisioned and reset opens no half-made session.
    pub hold_connections: &'a (dyn Fn(bool) + Sync),
}

/// What a TLS device is provisioned with.
#[derive(Clone, Copy)]
pub struct DeviceTls<'a> {
    pub ca_file: &'a Path,
    pub server_name: &'a str,
    /// Mutual TLS: the device's certificate and key (PEM files in the
    /// run's temp dir).
    pub client: Option<(&'a Path, &'a Path)>,
}

/// A `!config` value as the console protocol quotes it.
pub(crate) fn quote(v: &str) -> String {
    let mut out = String::new();
    hil_session::console::push_value(&mut out, v);
    out
}

/// A kind of device: how it is brought up, and what it can do.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> &'static [Capability];

    /// Why this backend cannot serve `cap`, in words.
    fn why_not(&self, cap: Capability) -> String {
        format!("the {} backend cannot {}", self.name(), cap.describe())
    }

    /// Whether scenarios may run at once, each with a device of its own
    /// (`hil run -j`): a host process can; one board cannot.
    fn concurrent(&self) -> bool {
        false
    }

    /// Once per run, before any scenario: flash, build, check.
    fn prepare(&self) -> Result<(), DutError> {
        Ok(())
    }

    /// Where this scenario's broker and proxy listen. On 127.0.0.1 each
    /// scenario gets a loopback address of its own (see
    /// [`hil_broker::private_loopback`]), so parallel runs never race for a
    /// port, not even for the one a killed broker must bind again.
    fn listen_ip(&self, bind: IpAddr) -> IpAddr {
        if bind == IpAddr::V4(Ipv4Addr::LOCALHOST) {
            hil_broker::private_loopback()
        } else {
            bind
        }
    }

    /// Where the listeners the device dials (the fault proxy, the TLS hop)
    /// listen, given the scenario's `listen_ip`. Each binds port 0 and keeps
    /// its socket, so no other process can take its port.
    fn device_ip(&self, listen: IpAddr) -> IpAddr {
        listen
    }

    /// The device, connected (or connecting) to `p.broker`.
    fn bring_up(&self, p: &Provision) -> Result<Dut, DutError>;

    /// More devices of this kind for scenarios that need a fleet.
    fn fleet(&self, _p: &Provision) -> Option<Box<dyn Fleet>> {
        None
    }

    /// The client ID the device must report, when the backend knows its MAC.
    fn expected_client_id(&self, _mac: &str) -> Option<String> {
        None
    }
}

/// The client ID a MAC gives (the identity rule of `hil-session`).
pub fn client_id_of(mac: &str) -> Option<String> {
    mac.parse::<hil_session::Mac>()
        .ok()
        .map(|m| hil_session::client_id("esp32c3", &m))
}

/// Starts extra devices for a scenario (the sim backend).
pub trait Fleet: Send {
    /// A device with `mac` and a flash of its own; `edit` adjusts its spec.
    fn start(&self, mac: &str, edit: &dyn Fn(&mut DeviceSpec)) -> Result<FleetDevice, DutError>;

    /// Devices like these as the in-process fleet engine's
    /// ([`hil_sim::fleet`]): their session settings (the device under
    /// test's provisioning, `bugs` included, with `edit` applied) and the
    /// address they must connect to (the scenario's proxy). Only a backend
    /// whose devices *are* the session core can say this; others give None
    /// and scenarios fall back to [`Fleet::start`].
    fn engine(&self, _edit: &dyn Fn(&mut DeviceSpec)) -> Option<EngineSpec> {
        None
    }
}

/// What the in-process fleet engine needs to build devices like a backend's.
pub struct EngineSpec {
    pub device: hil_session::Config,
    pub broker: std::net::SocketAddr,
}

/// An extra device and the flash it owns (removed when it drops).
pub struct FleetDevice {
    pub dut: Dut,
    pub state: tempfile::TempDir,
}

impl std::ops::Deref for FleetDevice {
    type Target = Dut;
    fn deref(&self) -> &Dut {
        &self.dut
    }
}

impl std::ops::DerefMut for FleetDevice {
    fn deref_mut(&mut self) -> &mut Dut {
        &mut self.dut
    }
}

/// Why the runner could not drive a device. Timeouts and a closed console
/// while awaiting something are the device's doing; the rest is the rig's.
#[derive(Debug, thiserror::Error)]
pub enum DutError {
    #[error("no {what} within {:.1}s", after.as_secs_f32())]
    Timeout { what: String, after: Duration },
    #[error("the device console closed while waiting for {what}")]
    ConsoleClosed { what: String },
    #[error("the device refused `!{cmd}`: {msg}")]
    Refused { cmd: String, msg: String },
    #[error("cannot write to the device console: {0}")]
    Write(#[source] std::io::Error),
    #[error("no device at {path}: is the board plugged in? `hil doctor` lists the serial ports")]
    NoDevice { path: String },
    #[error("cannot open the device console {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: serialport::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the sim device did not print its console path: {stderr}")]
    NoConsolePath { stderr: String },
    #[error("WOKWI_CLI_TOKEN is not set: create a token at wokwi.com (CI tokens) and export it")]
    NoWokwiToken,
    #[error("{0} not found: install wokwi-cli (see the README's Wokwi section) or pass --wokwi-cli PATH")]
    WokwiCliMissing(String),
    #[error("the {0} backend has no power switch")]
    NoPowerSwitch(&'static str),
    #[error("provisioning failed: {0}")]
    Provision(#[source] Box<DutError>),
    #[error("cannot provision the device: {0}")]
    Provisioning(String),
    #[error("the board did not boot after reset: {0}")]
    NoBoot(#[source] Box<DutError>),
    #[error("cannot create the device's state dir: {0}")]
    StateDir(#[source] std::io::Error),
    #[error(transparent)]
    Flash(#[from] crate::bench::FlashError),
}

impl DutError {
    /// The device did not do what was awaited (as opposed to a rig fault).
    pub fn is_device_silence(&self) -> bool {
        matches!(
            self,
            DutError::Timeout { .. } | DutError::ConsoleClosed { .. } | DutError::Refused { .. }
        )
    }
}

/// How a device is powered and reset: what differs between a process, a
/// board on a serial port and a Wokwi session.
pub trait Power: Send {
    /// Power cut: the device stops at once, flushes nothing, sends no FIN of its own.
    fn off(&mut self) -> Result<(), DutError>;
    /// Power back: the device boots from its flash; its new console.
    fn on(&mut self) -> Result<Console, DutError>;
    /// A hardware reset pulse; false when there is none (the runner sends `!reboot`).
    fn reset_pulse(&mut self) -> bool {
        false
    }
}

/// A device under test: its console, and its power.
pub struct Dut {
    pub console: Console,
    pub backend: &'static str,
    power: Box<dyn Power>,
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

impl Dut {
    pub fn new(console: Console, backend: &'static str, power: Box<dyn Power>) -> Dut {
        Dut {
            console,
            backend,
            power,
        }
    }

    /// Power cut (kill -9 of a device process).
    pub fn power_off(&mut self) -> Result<(), DutError> {
        self.power.off()?;
        self.console
            .transcript()
            .runner("power cut: kill -9 of the device process");
        Ok(())
    }

    /// Power restored: the device boots from the flash it had.
    pub fn power_on(&mut self) -> Result<(), DutError> {
        self.console = self.power.on()?;
        Ok(())
    }

    /// Resets the device: a hardware pulse where there is one (the ESP32
    /// auto-reset circuit on DTR/RTS), `!reboot` on the console otherwise.
    pub fn reset(&mut self) -> Result<(), DutError> {
        if self.power.reset_pulse() {
            self.console.transcript().runner("reset: DTR/RTS pulse");
            return Ok(());
        }
        self.console.send("!reboot")
    }
}
