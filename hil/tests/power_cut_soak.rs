//! Power-cut soak (ci profile; bounded: 40 kills, well under a minute): the
//! sim device is killed with SIGKILL at the k-th `telemetry.buffered` line or
//! at a random instant, and started again from the same flash. A cloud
//! subscriber listens throughout and checks the promise "nothing is reported
//! before it is persisted": every reading the console ever reported buffered
//! is published (same seq, one payload per seq), and first arrivals come in
//! seq order. The figures are printed for the note.

mod ledger;

use hil_broker::client::ConnectOptions;
use hil_broker::{Client, MqttVersion};
use hil_session::backoff::SplitMix64;
use hil_session::RandomSource;
use ledger::{buffered_seq, Ledger, Tally};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KILLS: u32 = 40;
const MAC: &str = "24:0a:c4:00:00:40";

fn start(broker: SocketAddr, state: &std::path::Path) -> (Child, mpsc::Receiver<String>) {
    let mut args = hil_sim::Args::new(broker.to_string(), MAC.into(), state.into());
    args.backoff_base_ms = 50;
    args.backoff_cap_ms = 200;
    args.outbox_capacity = 10_000;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hil"))
        .arg("sim")
        .args(args.to_argv())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// A number below `n` from the soak's seeded RNG: random but replayable.
fn below(rng: &mut SplitMix64, n: u64) -> u64 {
    u64::from(rng.next_u32()) % n
}

#[test]
fn power_cuts_lose_and_reuse_nothing() {
    let ip = hil_broker::private_loopback();
    let (p4, p5) = hil_broker::free_port_pair(ip).unwrap();
    let (v4, v5) = (SocketAddr::new(ip, p4), SocketAddr::new(ip, p5));
    hil_broker::rumqttd::spawn_in_thread(v4, v5).expect("rumqttd starts");
    let state = tempfile::tempdir().unwrap();
    let topic = hil_session::Topics::new("devices", "esp32c3-240ac4000040").telemetry();
    let mut cloud = Client::connect(v4, MqttVersion::V3_1_1, &ConnectOptions::new("soak-cloud"))
        .expect("cloud connects");
    cloud.subscribe(&topic, 1).expect("cloud subscribes");

    let mut rng = SplitMix64(0x50a4);
    let mut claimed = BTreeSet::new();
    let started = Instant::now();
    for kill in 0..KILLS {
        let (mut child, lines) = start(v4, state.path());
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "!telemetry 20").unwrap();
        let targeted = kill % 2 == 0;
        let k = 1 + below(&mut rng, 20);
        let random_at = Instant::now() + Duration::from_millis(below(&mut rng, 20));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = 0;
        loop {
            let wait = if targeted {
                deadline.saturating_duration_since(Instant::now())
            } else {
                random_at.saturating_duration_since(Instant::now())
            };
            match lines.recv_timeout(wait) {
                Ok(line) => {
                    if let Some(seq) = buffered_seq(&line) {
                        claimed.insert(seq);
                        seen += 1;
                        if targeted && seen == k {
                            break;
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if !targeted => break,
                Err(e) => panic!("kill {kill}: device stopped talking: {e:?}"),
            }
        }
        child.kill().unwrap(); // SIGKILL: the power cut
        child.wait().unwrap();
        // Lines the device printed before it died are claims too.
        while let Ok(line) = lines.try_recv() {
            if let Some(seq) = buffered_seq(&line) {
                claimed.insert(seq);
            }
        }
    }
    let kills_took = started.elapsed();

    // The last boot flushes whatever the cuts left buffered.
    let (mut child, _lines) = start(v4, state.path());
    let mut ledger = Ledger::default();
    ledger.drain(&mut cloud, &claimed, Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let Tally {
        published,
        lost,
        reused,
        out_of_order,
        first_order,
    } = ledger.tally(&claimed);
    eprintln!(
        "soak: {KILLS} kills in {:.1} s, {} readings reported buffered, {} published, {} lost, {} reused, {} out of order",
        kills_took.as_secs_f64(),
        claimed.len(),
        published,
        lost.len(),
        reused.len(),
        out_of_order
    );
    assert!(
        claimed.len() >= 40,
        "the soak reported too few readings to judge: {}",
        claimed.len()
    );
    assert!(
        lost.is_empty(),
        "reported buffered, never published: {lost:?}"
    );
    assert!(reused.is_empty(), "one seq, two payloads: {reused:?}");
    assert_eq!(
        out_of_order, 0,
        "first arrivals out of seq order: {first_order:?}"
    );
}
