//! The Wokwi backend: wokwi-cli runs the firmware in the Wokwi cloud; its
//! serial stream is the console. The cloud cannot reach a broker or fault
//! proxy on this host without the paid private gateway.

use super::{Backend, Capability, Console, Dut, DutError, Power, Provision};
use crate::transcript::Source;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct WokwiBackend {
    pub cli: PathBuf,
    pub project: PathBuf,
    pub timeout_ms: u64,
}

const CAPS: &[Capability] = &[Capability::WifiToggle, Capability::Reset];

struct Session(Child);

impl Power for Session {
    fn off(&mut self) -> Result<(), DutError> {
        let _ = self.0.kill();
        let _ = self.0.wait();
        Ok(())
    }

    fn on(&mut self) -> Result<Console, DutError> {
        Err(DutError::NoPowerSwitch("wokwi"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.off();
    }
}

impl Backend for WokwiBackend {
    fn name(&self) -> &'static str {
        "wokwi"
    }

    fn capabilities(&self) -> &'static [Capability] {
        CAPS
    }

    fn why_not(&self, cap: Capability) -> String {
        match cap {
            Capability::ReachesBroker | Capability::BrokerRestart | Capability::LinkFaults => {
                "the Wokwi cloud cannot reach a broker or fault proxy on this host (needs the private gateway)".into()
            }
            other => format!("the wokwi backend cannot {}", other.describe()),
        }
    }

    /// Wokwi's gateway forwards to the host's 127.0.0.1: keep the address given.
    fn listen_ip(&self, bind: IpAddr) -> IpAddr {
        bind
    }

    fn bring_up(&self, p: &Provision) -> Result<Dut, DutError> {
        if std::env::var_os("WOKWI_CLI_TOKEN").is_none() {
            return Err(DutError::NoWokwiToken);
        }
        let mut child = Command::new(&self.cli)
            .arg(&self.project)
            .args(["--interactive", "--timeout", &self.timeout_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    DutError::WokwiCliMissing(self.cli.display().to_string())
                } else {
                    DutError::Spawn {
                        program: self.cli.display().to_string(),
                        source,
                    }
                }
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(DutError::ConsoleClosed {
                what: "wokwi-cli's serial stream".into(),
            });
        };
        p.transcript
            .runner(format!("wokwi-cli {} started", self.project.display()));
        let console = Console::new(
            Box::new(stdout),
            Box::new(stdin),
            p.transcript,
            Source::Device,
        );
        Ok(Dut::new(console, "wokwi", Box::new(Session(child))))
    }
}
