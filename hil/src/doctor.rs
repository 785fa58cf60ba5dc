//! `hil doctor`: what this host can test with, and for each problem the fix.

use crate::bench::rig::{list_ports, Rig};
use crate::dut::Console;
use crate::transcript::Source;
use hil_session::Event;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

pub struct Report {
    pub lines: Vec<String>,
    pub problems: Vec<(String, String)>,
}

impl Report {
    fn fact(&mut self, s: impl Into<String>) {
        self.lines.push(s.into());
    }
    fn problem(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.problems.push((what.into(), fix.into()));
    }

    pub fn print(&self, out: &mut dyn Write) {
        for l in &self.lines {
            let _ = writeln!(out, "{l}");
        }
        if self.problems.is_empty() {
            let _ = writeln!(out, "\nno problems found");
        } else {
            let _ = writeln!(out, "\n{} problem(s):", self.problems.len());
            for (what, fix) in &self.problems {
                let _ = writeln!(out, "  - {what}\n    fix: {fix}");
            }
        }
    }
}

fn on_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// USB devices with Espressif's built-in USB-JTAG (303a:1001), from sysfs:
/// the C3's own debug probe.
fn espressif_probes() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/bus/usb/devices") else {
        return out;
    };
    for d in dir.flatten() {
        let read = |f: &str| {
            std::fs::read_to_string(d.path().join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        if read("idVendor").as_deref() == Some("303a")
            && read("idProduct").as_deref() == Some("1001")
        {
            out.push(format!(
                "303a:1001{}",
                read("serial").map(|s| format!(":{s}")).unwrap_or_default()
            ));
        }
    }
    out
}

/// Asks the console on `port` for `!status`, through the runner's own console.
fn ask_status(port: &str) -> Result<String, crate::dut::DutError> {
    let t = crate::transcript::Transcript::new();
    let (mut console, _) = Console::on_port(port, &t, Source::Device)?;
    let ack = console.command_within("!status", Duration::from_secs(3));
    // Release the port before anyone opens it again (it is opened exclusively).
    console.close();
    Ok(match ack? {
        Event::Ack { fields, .. } => fields
            .iter()
            .find(|(k, _)| k == "client_id")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        _ => String::new(),
    })
}

pub fn run(rig: Option<&Path>) -> Report {
    let mut r = Report {
        lines: Vec::new(),
        problems: Vec::new(),
    };
    r.fact("serial ports:");
    let ports = list_ports();
    if ports.is_empty() {
        r.fact("  (none)");
    }
    for p in &ports {
        r.fact(format!(
            "  {}  usb_serial={}  {}",
            p.path,
            p.serial.as_deref().unwrap_or("-"),
            p.product.as_deref().unwrap_or("")
        ));
    }
    r.fact("debug probes (ESP32 built-in USB-JTAG, 303a:1001):");
    let probes = espressif_probes();
    if probes.is_empty() {
        r.fact("  (none)");
    }
    for p in &probes {
        r.fact(format!("  {p}"));
    }
    match crate::bench::probe::list() {
        Ok(list) => r.fact(format!(
            "probe-rs sees {} probe(s){}",
            list.len(),
            list.iter().map(|p| format!("\n  {p}")).collect::<String>()
        )),
        Err(e) => r.fact(format!("probe-rs: {e}")),
    }
    match on_path("wokwi-cli") {
        Some(p) => r.fact(format!("wokwi-cli: {}", p.display())),
        None => r.fact("wokwi-cli: not found (only needed for --dut wokwi)"),
    }
    let token = std::env::var_os("WOKWI_CLI_TOKEN").is_some();
    r.fact(format!(
        "WOKWI_CLI_TOKEN: {}",
        if token {
            "set"
        } else {
            "not set (only needed for --dut wokwi)"
        }
    ));
    match on_path("mosquitto") {
        Some(p) => r.fact(format!("mosquitto: {}", p.display())),
        None => r.fact(
            "mosquitto: not found (only needed for --broker mosquitto: apt-get install mosquitto)",
        ),
    }
    let Some(path) = rig else {
        r.fact(
            "rig: none given (hil doctor --rig FILE checks its boards, broker address and Wi-Fi)",
        );
        return r;
    };
    let rig = match Rig::load(path) {
        Ok(rig) => rig,
        Err(e) => {
            r.problem(
                e.to_string(),
                "fix the rig file; fixtures/rigs/example.toml shows every key",
            );
            return r;
        }
    };
    r.fact(format!(
        "rig {}: {} board(s), broker bind {}",
        path.display(),
        rig.boards.len(),
        rig.broker.bind
    ));
    match std::net::TcpListener::bind((rig.broker.bind, 0)) {
        Ok(l) => r.fact(format!("  broker address {} is on this host (test bind: port {})", rig.broker.bind, l.local_addr().map(|a| a.port()).unwrap_or(0))),
        Err(e) => r.problem(
            format!("the broker bind address {} is not usable on this host: {e}", rig.broker.bind),
            "set [broker] bind to an address of this host on the rig's LAN (`ip -brief addr` lists them)",
        ),
    }
    if let Err(e) = rig.wifi_credentials() {
        r.problem(
            e.to_string(),
            "export the variables named in the rig's [wifi] section before `just hil`",
        );
    }
    for b in &rig.boards {
        let port = match b.resolve_port() {
            Ok(p) => p,
            Err(e) => {
                r.problem(e.to_string(), "plug the board in, or fix its `port`/`usb_serial` in the rig file (see the ports listed above)");
                continue;
            }
        };
        match ask_status(&port) {
            Ok(id) => {
                r.fact(format!("  board {} on {port}: answers, client_id={id}", b.name));
                if let Some(mac) = b.mac.as_deref().and_then(|m| m.parse::<hil_session::Mac>().ok()) {
                    let want = hil_session::client_id(&b.chip, &mac);
                    if want != id {
                        r.problem(
                            format!("board {} on {port} reports {id}, its rig entry says {want}", b.name),
                            "the wrong board is on this port, or the rig's `mac` is wrong",
                        );
                    }
                }
            }
            Err(e) => r.problem(
                format!("board {} on {port} does not answer on its console: {e}", b.name),
                "flash the firmware (just flash), check the console (USB-Serial-JTAG by default, UART0 with the uart-console feature)",
            ),
        }
    }
    r
}
