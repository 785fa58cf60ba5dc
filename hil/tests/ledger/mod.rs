//! The cloud side's ledger for the power-cut tests (`power_cut_soak.rs` on
//! the sim, `firmware_host_power_cut.rs` on the firmware): what the device's
//! console acknowledged (`telemetry.buffered seq=N`) against what a cloud
//! subscriber received. One judgement for both devices.

use hil_broker::Client;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The seq a `telemetry.buffered` line acknowledges.
pub fn buffered_seq(line: &str) -> Option<u32> {
    let rest = line.strip_prefix("@hil telemetry.buffered seq=")?;
    rest.split(' ').next()?.parse().ok()
}

/// Every reading the cloud received, by seq, and the order seqs first came in.
#[derive(Default)]
pub struct Ledger {
    published: BTreeMap<u32, BTreeSet<Vec<u8>>>,
    first_order: Vec<u32>,
}

/// The judgement: what was acknowledged and never arrived, seqs that came
/// with two payloads, first arrivals out of order.
pub struct Tally {
    pub published: usize,
    pub lost: Vec<u32>,
    pub reused: Vec<u32>,
    pub out_of_order: usize,
    pub first_order: Vec<u32>,
}

impl Ledger {
    /// Takes the cloud's readings until every claimed seq has arrived, or
    /// `within` has passed (the tally says what is missing).
    pub fn drain(&mut self, cloud: &mut Client, claimed: &BTreeSet<u32>, within: Duration) {
        let deadline = Instant::now() + within;
        while !claimed.iter().all(|s| self.published.contains_key(s)) && Instant::now() < deadline {
            if let Some(m) = cloud
                .recv(Instant::now() + Duration::from_millis(500))
                .unwrap()
            {
                let text = String::from_utf8_lossy(&m.payload).to_string();
                let seq: u32 = text
                    .split("\"seq\":")
                    .nth(1)
                    .and_then(|r| r.split(',').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("reading without a seq: {text}"));
                if !self.published.contains_key(&seq) {
                    self.first_order.push(seq);
                }
                self.published.entry(seq).or_default().insert(m.payload);
            }
        }
    }

    pub fn tally(&self, claimed: &BTreeSet<u32>) -> Tally {
        Tally {
            published: self.published.len(),
            lost: claimed
                .iter()
                .filter(|s| !self.published.contains_key(s))
                .copied()
                .collect(),
            reused: self
                .published
                .iter()
                .filter(|(_, p)| p.len() > 1)
                .map(|(s, _)| *s)
                .collect(),
            out_of_order: self.first_order.windows(2).filter(|w| w[0] > w[1]).count(),
            first_order: self.first_order.clone(),
        }
    }
}
