//! The firmware-host backend: the firmware's own application on the host
//! (`hil-firmware-host`, crates/firmware-host), a child process whose stdio
//! is its console. It reaches the broker through slirp: the host's
//! 127.0.0.1:PORT is its 10.0.2.2:PORT, so this backend's broker and proxy
//! listen on 127.0.0.1. It is provisioned like a board (`!config`, then a
//! reset), not by flags: the code under test is the code that ships.

use super::{client_id_of, Backend, Capability, Console, Dut, DutError, Provision};
use crate::transcript::Source;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub struct FirmwareHostBackend {
    source: HostFirmware,
    /// The executable, once found or built (by `prepare`).
    exe: OnceLock<PathBuf>,
}

/// Where the host firmware comes from.
#[derive(Clone, Debug)]
pub enum HostFirmware {
    /// This executable, as it is (`--firmware-host PATH`).
    Given(PathBuf),
    /// Built from this manifest (crates/firmware-host/Cargo.toml) before the
    /// run, as `cargo run` would: a no-op when it is up to date.
    Build(PathBuf),
}

impl FirmwareHostBackend {
    pub fn new(source: HostFirmware) -> Self {
        FirmwareHostBackend {
            source,
            exe: OnceLock::new(),
        }
    }

    /// The repository's own host firmware, built before the run.
    pub fn from_this_repo() -> Self {
        Self::new(HostFirmware::Build(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/firmware-host/Cargo.toml"),
        ))
    }

    /// The executable `prepare` found or built.
    pub fn executable(&self) -> Option<&Path> {
        self.exe.get().map(PathBuf::as_path)
    }

    fn exe(&self) -> Result<&PathBuf, DutError> {
        self.exe.get().ok_or_else(|| {
            DutError::Provisioning("the host firmware was not prepared (a runner bug)".into())
        })
    }
}

/// `cargo build` of the host firmware; its executable's path from cargo's
/// own report (so CARGO_TARGET_DIR and profiles are cargo's business).
fn build(manifest: &Path) -> Result<PathBuf, DutError> {
    if !manifest.is_file() {
        return Err(DutError::Provisioning(format!(
            "{} not found: run from a clone of this repository, or pass --firmware-host PATH",
            manifest.display()
        )));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("hil: building the host firmware ({})", manifest.display());
    let out = Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(manifest)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| DutError::Spawn {
            program: format!("{} build", Path::new(&cargo).display()),
            source,
        })?;
    if !out.status.success() {
        return Err(DutError::Provisioning(format!(
            "building the host firmware failed ({}; its errors are above). It links libslirp: apt-get install libslirp-dev libglib2.0-dev",
            out.status
        )));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact" && m["target"]["name"] == "hil-firmware-host"
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| {
            DutError::Provisioning("cargo built the host firmware but named no executable".into())
        })
}

const CAPS: &[Capability] = &[
    Capability::ReachesBroker,
    Capability::WifiToggle,
    Capability::Reset,
    Capability::BrokerRestart,
    Capability::LinkFaults,
    Capability::PowerCut,
    Capability::ScenarioConfig,
    Capability::NegativeControls,
];

/// The most readings the firmware keeps offline (`store::OUTBOX_CAPACITY`
/// in firmware/app: one flash page's worth).
const FIRMWARE_OUTBOX_MAX: u64 = 32;

/// The scenario's device settings and controls as `!config` fields, as
/// the firmware's settings name them (firmware/app/src/settings.rs).
fn tuning_fields(p: &Provision) -> String {
    let d = &p.spec;
    let outbox = d.outbox_capacity.min(FIRMWARE_OUTBOX_MAX);
    if outbox < d.outbox_capacity {
        p.transcript.runner(format!(
            "the firmware keeps at most {FIRMWARE_OUTBOX_MAX} readings offline (the scenario asks {}): outbox={outbox}",
            d.outbox_capacity
        ));
    }
    let mut line = format!(
        " keepalive={} session.expiry={} backoff.base_ms={} backoff.cap_ms={} connack.timeout_ms={} ack.timeout_ms={} cmd.qos={} outbox={outbox}",
        d.keepalive_s,
        d.session_expiry_s,
        d.backoff_base_ms,
        d.backoff_cap_ms,
        d.connack_timeout_ms,
        d.ack_timeout_ms,
        d.cmd_qos,
    );
    // Always sent, empty when unset: the flash may hold the last scenario's.
    line.push_str(" telemetry.topic=");
    line.push_str(&super::quote(d.telemetry_topic.unwrap_or("")));
    let names: Vec<&str> = p.bugs.iter().map(|b| b.name()).collect();
    line.push_str(" bugs=");
    line.push_str(&names.join(","));
    line
}

/// How long the device has to boot.
const BOOT: Duration = Duration::from_secs(15);

/// How the device process starts: the executable, on its flash and MAC,
/// its console on stdin and stdout.
struct HostLaunch {
    exe: PathBuf,
    args: Vec<String>,
    transcript: crate::transcript::Transcript,
}

impl super::process::Launch for HostLaunch {
    fn spawn(&self) -> Result<(Child, Console), DutError> {
        let mut child = Command::new(&self.exe)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| DutError::Spawn {
                program: self.exe.display().to_string(),
                source,
            })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let console = Console::new(
            Box::new(stdout),
            Box::new(stdin),
            &self.transcript,
            Source::Device,
        );
        Ok((child, console))
    }
}

impl Backend for FirmwareHostBackend {
    fn name(&self) -> &'static str {
        "firmware-host"
    }

    fn capabilities(&self) -> &'static [Capability] {
        CAPS
    }

    fn concurrent(&self) -> bool {
        true
    }

    /// slirp's 10.0.2.2 is the host's 127.0.0.1, and only that address: the
    /// proxy and the TLS hop the device dials listen there. The broker keeps
    /// a loopback address of its own (the default `listen_ip`), so a broker
    /// killed and started again never races another scenario for its port.
    fn device_ip(&self, _listen: IpAddr) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    }

    fn prepare(&self) -> Result<(), DutError> {
        if self.exe.get().is_some() {
            return Ok(());
        }
        let exe = match &self.source {
            HostFirmware::Given(exe) if exe.is_file() => exe.clone(),
            HostFirmware::Given(exe) => {
                return Err(DutError::Provisioning(format!(
                    "{} not found: build it with `cargo build --manifest-path crates/firmware-host/Cargo.toml` (it links libslirp: apt-get install libslirp-dev libglib2.0-dev), or leave out --firmware-host and hil builds it",
                    exe.display()
                )))
            }
            HostFirmware::Build(manifest) => build(manifest)?,
        };
        let _ = self.exe.set(exe);
        Ok(())
    }

    fn bring_up(&self, p: &Provision) -> Result<Dut, DutError> {
        p.transcript.runner(format!(
            "start the firmware on the host mac={} mqtt={}",
            p.mac, p.mqtt
        ));
        let launch = HostLaunch {
            exe: self.exe()?.clone(),
            args: vec![
                "--state-dir".into(),
                p.state_dir.display().to_string(),
                "--mac".into(),
                p.mac.to_string(),
            ],
            transcript: p.transcript.clone(),
        };
        let (console, power) = super::process::ProcessPower::start(launch)?;
        let mut dut = Dut::new(console, "firmware-host", Box::new(power));
        dut.expect("boot", BOOT, |e| {
            matches!(e, hil_session::Event::Boot { .. })
        })
        .map_err(|e| DutError::NoBoot(Box::new(e)))?;
        // Provisioned as a board is (kept in its flash), then reset: it
        // boots straight into this scenario's broker, at 10.0.2.2.
        let line = format!(
            "!config wifi.ssid=host broker=10.0.2.2:{} mqtt={}{}",
            p.broker.port(),
            p.mqtt,
            tuning_fields(p)
        );
        (p.hold_connections)(true);
        // Its state dir is new, so it booted without Wi-Fi credentials: the
        // link comes up once they are set, and the firmware dials the broker
        // it was just given, which the proxy refuses while it provisions.
        // Each step waits for the device's word, so the transcript is the
        // same on every run: the link up, that dial's end, the reboot's ack.
        // The proxy accepts again only after that ack: the old process is
        // then waiting to re-exec (it dials no more), the new one not booted.
        let provisioned = dut
            .command(&line)
            .and_then(|_| {
                dut.expect("the link up after provisioning", BOOT, |e| {
                    matches!(e, hil_session::Event::Wifi { up: true })
                })
            })
            .and_then(|_| {
                dut.expect(
                    "its dial refused while it is provisioned (mqtt.disconnected)",
                    BOOT,
                    |e| matches!(e, hil_session::Event::MqttDisconnected { .. }),
                )
            })
            .and_then(|_| dut.command("!reboot"))
            .map_err(|e| DutError::Provision(Box::new(e)));
        (p.hold_connections)(false);
        provisioned?;
        dut.expect("boot after reset", BOOT, |e| {
            matches!(e, hil_session::Event::Boot { .. })
        })
        .map_err(|e| DutError::NoBoot(Box::new(e)))?;
        Ok(dut)
    }

    fn expected_client_id(&self, mac: &str) -> Option<String> {
        client_id_of(mac)
    }
}
