//! Power cuts on the firmware's own application (ci profile: it builds
//! crates/firmware-host, which links libslirp). The host firmware keeps its
//! flash in a file with NOR semantics, written as each word is programmed,
//! so SIGKILL in the middle of a sequential-storage write is a real power
//! cut. It is killed at the k-th `telemetry.buffered` line or at a random
//! instant while it buffers readings, and booted again on the same flash.
//! A cloud subscriber listens throughout and judges the promise "nothing is
//! reported before it is persisted": every reading the console reported
//! buffered is published (one payload per seq), first arrivals in order.

mod ledger;

use hil::dut::Backend;
use hil_broker::client::ConnectOptions;
use hil_broker::{Client, MqttVersion};
use hil_session::backoff::SplitMix64;
use hil_session::RandomSource;
use ledger::{buffered_seq, Ledger, Tally};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KILLS: u32 = 60;
const MAC: &str = "24:0a:c4:00:00:41";
const CLIENT_ID: &str = "esp32c3-240ac4000041";

struct Device {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Device {
    fn start(exe: &Path, state: &Path) -> Device {
        let mut child = Command::new(exe)
            .args(["--state-dir"])
            .arg(state)
            .args(["--mac", MAC])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the host firmware starts");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Device { child, lines }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.child.stdin.as_mut().unwrap(), "{line}").unwrap();
    }

    /// The first line that starts with `prefix`, within `within`.
    fn expect(&mut self, prefix: &str, within: Duration, claimed: &mut BTreeSet<u32>) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(seq) = buffered_seq(&line) {
                        claimed.insert(seq);
                    }
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => panic!("no `{prefix}` from the host firmware: {e:?}"),
            }
        }
    }

    /// SIGKILL: the power cut. Lines it printed before it died are claims too.
    fn cut(mut self, claimed: &mut BTreeSet<u32>) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        while let Ok(line) = self.lines.try_recv() {
            if let Some(seq) = buffered_seq(&line) {
                claimed.insert(seq);
            }
        }
    }
}

/// Keeps the flash file of a failed run (CI archives target/hil/failed).
fn keep_flash(state: &Path) -> String {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    let dir = Path::new(&target).join("hil/failed/firmware_host_power_cut");
    let kept = dir.join("flash.bin");
    match std::fs::create_dir_all(&dir).and_then(|_| std::fs::copy(state.join("flash.bin"), &kept))
    {
        Ok(_) => format!("its flash is kept in {}", kept.display()),
        Err(e) => format!("its flash was not kept: {e}"),
    }
}

/// A number below `n` from the soak's seeded RNG: random but replayable.
fn below(rng: &mut SplitMix64, n: u64) -> u64 {
    u64::from(rng.next_u32()) % n
}

#[test]
fn firmware_host_power_cuts_lose_nothing_acknowledged() {
    let backend = hil::dut::FirmwareHostBackend::from_this_repo();
    backend.prepare().expect("the host firmware builds");
    let exe = backend.executable().unwrap().to_path_buf();
    // The broker on a loopback address of its own (no port race with other
    // tests); the device reaches it through the runner's proxy on
    // 127.0.0.1 (slirp's 10.0.2.2 is that address only), whose listener is
    // bound to port 0 and kept.
    let ip = hil_broker::private_loopback();
    let (b4, b5) = hil_broker::free_port_pair(ip).unwrap();
    let v4 = SocketAddr::new(ip, b4);
    hil_broker::rumqttd::spawn_in_thread(v4, SocketAddr::new(ip, b5)).expect("rumqttd starts");
    let transcript = hil::transcript::Transcript::new();
    let proxy = hil::testbed::FaultProxy::start(IpAddr::V4(Ipv4Addr::LOCALHOST), v4, &transcript)
        .expect("the proxy starts");
    let p4 = proxy.addr().port();
    let state = tempfile::tempdir().unwrap();
    let topic = hil_session::Topics::new("devices", CLIENT_ID).telemetry();
    let mut cloud = Client::connect(v4, MqttVersion::V3_1_1, &ConnectOptions::new("soak-cloud"))
        .expect("cloud connects");
    cloud.subscribe(&topic, 1).expect("cloud subscribes");

    let mut claimed = BTreeSet::new();
    let boot = Duration::from_secs(15);
    // Provisioned as the runner does a board: kept in flash, then a reset.
    let mut d = Device::start(&exe, state.path());
    d.expect("@hil boot ", boot, &mut claimed);
    d.send(&format!(
        "!config wifi.ssid=host broker=10.0.2.2:{p4} backoff.base_ms=50 backoff.cap_ms=200"
    ));
    d.expect("@hil ack cmd=config", boot, &mut claimed);
    d.cut(&mut claimed);

    let mut rng = SplitMix64(0x50a5);
    let started = Instant::now();
    let mut cut_mid_burst = 0;
    let mut ledger = Ledger::default();
    let mut reissued = Vec::new();
    for kill in 0..KILLS {
        let mut d = Device::start(&exe, state.path());
        d.expect("@hil boot ", boot, &mut claimed);
        // The backlog the last cuts left flushes first: the outbox (32
        // readings) must not overflow, or the oldest would be dropped by
        // design and the judgement would be about its capacity instead.
        ledger.drain(&mut cloud, &claimed, Duration::from_secs(20));
        // Half the rounds offline: the readings only go to flash.
        if kill % 2 == 1 {
            d.send("!wifi off");
            d.expect("@hil ack cmd=wifi", boot, &mut claimed);
        }
        d.send("!telemetry 8");
        let targeted = kill % 3 != 2;
        let k = 1 + below(&mut rng, 8) as usize;
        let random_at = Instant::now() + Duration::from_millis(below(&mut rng, 40));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut this_round = 0;
        let mut said = Vec::new();
        loop {
            let until = if targeted { deadline } else { random_at };
            match d.lines.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    said.push(line.clone());
                    if let Some(seq) = buffered_seq(&line) {
                        // A seq acknowledged before this boot, given again:
                        // two readings under one number.
                        if !claimed.insert(seq) {
                            reissued.push(seq);
                        }
                        this_round += 1;
                        if targeted && this_round == k {
                            break;
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if !targeted => break,
                Err(e) => panic!(
                    "kill {kill}: {this_round} of {k} readings buffered, then silence ({e:?}); it said:\n{}\n{}",
                    said.join("\n"),
                    keep_flash(state.path())
                ),
            }
        }
        if this_round < 8 {
            cut_mid_burst += 1;
        }
        d.cut(&mut claimed);
    }
    let kills_took = started.elapsed();

    // The last boot flushes whatever the cuts left buffered.
    let d = Device::start(&exe, state.path());
    ledger.drain(&mut cloud, &claimed, Duration::from_secs(60));
    d.cut(&mut BTreeSet::new());

    let Tally {
        published,
        lost,
        reused,
        out_of_order,
        first_order,
    } = ledger.tally(&claimed);
    eprintln!(
        "firmware-host power cuts: {KILLS} kills ({cut_mid_burst} in the middle of a burst) in {:.1} s, {} readings acknowledged (telemetry.buffered), {} published, {} lost, {} reused, {} out of order",
        kills_took.as_secs_f64(),
        claimed.len(),
        published,
        lost.len(),
        reused.len(),
        out_of_order
    );
    assert!(
        claimed.len() >= 40 && cut_mid_burst >= KILLS / 2,
        "too few readings or mid-burst cuts to judge: {} readings, {cut_mid_burst} cuts mid-burst",
        claimed.len()
    );
    assert!(lost.is_empty(), "acknowledged, never published: {lost:?}");
    assert!(reissued.is_empty(), "seqs acknowledged twice: {reissued:?}");
    assert!(reused.is_empty(), "one seq, two payloads: {reused:?}");
    assert_eq!(
        out_of_order, 0,
        "first arrivals out of seq order: {first_order:?}"
    );
}
