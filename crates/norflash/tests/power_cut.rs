//! kill -9 at random instants while the firmware's store writes to the NOR
//! file, 40 times on the same flash (a device that loses power and boots
//! again): every record the writer acknowledged is still there after each
//! cut, or a newer one for its key; the store is never unreadable.

use embassy_futures::block_on;
use hil_norflash::FileFlash;
use rand::{Rng, SeedableRng};
use sequential_storage::cache::NoCache;
use sequential_storage::map::fetch_item;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const PAGES: u32 = 6;
const KEYS: u32 = 16;

#[test]
fn nothing_acknowledged_is_lost_at_a_power_cut() {
    if let Err(e) = cut_40_times(&[]) {
        panic!("{e}");
    }
}

/// The negative control: a flash that buffers its writes loses what was
/// acknowledged, and the test says so.
#[test]
fn a_flash_that_buffers_writes_fails_the_power_cut_test() {
    let e = cut_40_times(&["--control", "buffered"]).expect_err("the control must fail");
    assert!(e.contains("acknowledged"), "{e}");
}

fn cut_40_times(control: &[&str]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flash.bin");
    let seed: u64 = std::env::var("HIL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut acked: HashMap<u8, u32> = HashMap::new();
    let mut next = 0u32;
    let mut total = 0usize;
    for round in 0..40 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_norflash-writer"))
            .arg(&path)
            .arg(next.to_string())
            .args(control)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Let it acknowledge a random number of records, then cut the
        // power while it is in the middle of whatever comes next.
        let before_cut = rng.gen_range(1..60);
        let mut seen = 0;
        let record = |line: &str, acked: &mut HashMap<u8, u32>, next: &mut u32| {
            let mut w = line.split_whitespace().skip(1);
            let key: u8 = w.next().unwrap().parse().unwrap();
            let n: u32 = w.next().unwrap().parse().unwrap();
            acked.insert(key, n);
            *next = n + 1;
        };
        for line in lines.by_ref() {
            let line = line.unwrap();
            record(&line, &mut acked, &mut next);
            seen += 1;
            if seen == before_cut {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL: no destructor, no flush of its own
                               // Acknowledgements it printed before it died count too.
        for line in lines {
            let Ok(line) = line else { break };
            if line.starts_with("stored ") {
                record(&line, &mut acked, &mut next);
                seen += 1;
            }
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: the writer was killed");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        if !err.is_empty() {
            return Err(format!("round {round} (seed {seed}): {err}"));
        }
        total += seen;
        // Boot again: every acknowledged record, or a newer one for its key.
        let mut flash = FileFlash::open(&path, PAGES).unwrap();
        let range = 0..PAGES * FileFlash::PAGE as u32;
        let mut buf = [0u8; 512];
        for key in 0..KEYS as u8 {
            let Some(&want) = acked.get(&key) else {
                continue;
            };
            let got = block_on(fetch_item::<u8, &[u8], _>(
                &mut flash,
                range.clone(),
                &mut NoCache::new(),
                &mut buf,
                &key,
            ))
            .map_err(|e| format!("round {round} (seed {seed}): key {key} unreadable: {e:?}"))?
            .map(|v| u32::from_le_bytes(v[..4].try_into().unwrap()));
            match got {
                Some(n) if n >= want && n % KEYS == key as u32 => {}
                other => {
                    return Err(format!(
                        "round {round} (seed {seed}): key {key} acknowledged {want}, the flash holds {other:?}"
                    ))
                }
            }
        }
    }
    assert!(total >= 40, "{total} records acknowledged in 40 rounds");
    Ok(())
}
