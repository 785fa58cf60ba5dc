//! `hil size`: the reference text's calculators (queue memory, restart
//! burst, local buffer, effective QoS, client-ID collisions, reconnection
//! storm), each a pure function that returns its table, so tests check them
//! against the text's worked numbers and `hil fleet` can print the model
//! beside what it measured.
//!
//! The integer formulas live in `hil_session::sizing` (no_std, shared with
//! the firmware); this module adds what needs floating point or the session
//! core's real backoff, and the words.

use hil_session::backoff::{Backoff, RandomSource, SplitMix64};
use hil_session::sizing;
use std::time::Duration;

/// `1,234,567`. By hand: one loop, not worth a crate.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `8,400,000 B (8.4 MB, 8.01 MiB)`: the text mixes decimal and binary units,
/// so both are shown.
pub fn bytes(n: u64) -> String {
    let (dec, bin) = match n {
        0..1_000 => return format!("{n} B"),
        1_000..1_000_000 => (
            format!("{:.1} kB", n as f64 / 1e3),
            format!("{:.2} KiB", n as f64 / 1024.0),
        ),
        1_000_000..1_000_000_000 => (
            format!("{:.1} MB", n as f64 / 1e6),
            format!("{:.2} MiB", n as f64 / 1_048_576.0),
        ),
        _ => (
            format!("{:.2} GB", n as f64 / 1e9),
            format!("{:.2} GiB", n as f64 / 1_073_741_824.0),
        ),
    };
    format!("{} B ({dec}, {bin})", thousands(n))
}

/// `90s`, `10m`, `2h`, `1d`, `250ms`, or plain seconds. By hand: five units
/// do not need a crate.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number with ms, s, m, h or d (90s, 10m, 2h)"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return Err(format!("`{s}`: the unit is ms, s, m, h or d")),
    };
    Ok(Duration::from_millis(ms))
}

/// `24KiB`, `4MB`, `512`: bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number of bytes (512, 24KiB, 4MB)"))?;
    let k = match unit {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "KiB" => 1024,
        "MB" => 1_000_000,
        "MiB" => 1_048_576,
        "GB" => 1_000_000_000,
        "GiB" => 1_073_741_824,
        _ => return Err(format!("`{s}`: the unit is B, kB, KiB, MB, MiB, GB or GiB")),
    };
    Ok(n * k)
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{} ms", d.as_millis()),
        1..120 => format!("{:.1} s", d.as_secs_f64()),
        120..7200 => format!("{:.1} min", s as f64 / 60.0),
        7200..172_800 => format!("{:.1} h", s as f64 / 3600.0),
        _ => format!("{:.1} days", s as f64 / 86_400.0),
    }
}

/// Broker queue memory: `M = N_msgs × (M_payload + M_overhead)` per offline
/// device, times the fleet; with a Message Expiry Interval, bounded by one
/// expiry window.
#[derive(Clone, Debug)]
pub struct Queue {
    pub devices: u64,
    pub offline: Duration,
    /// Messages per minute to each device.
    pub rate_per_min: u64,
    pub payload: u64,
    pub overhead: u64,
    pub expiry: Option<Duration>,
}

impl Queue {
    pub fn per_device_messages(&self) -> u64 {
        let offline = self.offline.as_secs();
        match self.expiry {
            Some(e) => sizing::expiry_bounded_messages(offline, self.rate_per_min, e.as_secs()),
            None => sizing::queued_messages(offline, self.rate_per_min),
        }
    }
    pub fn per_device_bytes(&self) -> u64 {
        sizing::queue_memory_bytes(self.per_device_messages(), self.payload, self.overhead)
    }
    pub fn fleet_bytes(&self) -> u64 {
        sizing::fleet_queue_memory_bytes(self.devices, self.per_device_bytes())
    }
    pub fn table(&self) -> String {
        let n = self.per_device_messages();
        let mut t = format!(
            "queue memory: M = N_msgs × (M_payload + M_overhead)\n\
             queued per device     {} messages ({} offline at {}/min{})\n\
             per device            {} ({} × ({} + {}))\n\
             {:<21} {}\n",
            thousands(n),
            human(self.offline),
            self.rate_per_min,
            self.expiry
                .map(|e| format!(", message expiry {} bounds it", human(e)))
                .unwrap_or_default(),
            bytes(self.per_device_bytes()),
            thousands(n),
            self.payload,
            self.overhead,
            format!("fleet of {}", thousands(self.devices)),
            bytes(self.fleet_bytes()),
        );
        if self.expiry.is_none() {
            t.push_str("bound it: an MQTT 5 Message Expiry Interval (--expiry), a Session Expiry Interval, or the broker's max_queued_messages\n");
        }
        t
    }
}

/// The restart burst `N × Q × M` and the text's "2-3×" headroom.
#[derive(Clone, Debug)]
pub struct Burst {
    pub devices: u64,
    pub queued: u64,
    pub message: u64,
}

impl Burst {
    pub fn bytes(&self) -> u64 {
        sizing::restart_burst_bytes(self.devices, self.queued, self.message)
    }
    pub fn table(&self) -> String {
        let b = self.bytes();
        let (lo, hi) = sizing::burst_headroom_bytes(b);
        format!(
            "restart burst: N × Q × M handed out at once when the fleet reconnects\n\
             burst                 {} ({} devices × {} messages × {} B)\n\
             broker memory (2-3×)  {} to {}\n",
            bytes(b),
            thousands(self.devices),
            thousands(self.queued),
            thousands(self.message),
            bytes(lo),
            bytes(hi),
        )
    }
}

/// The device's own buffer for an outage: how much it needs, and how long
/// an outage a given budget survives.
#[derive(Clone, Debug)]
pub struct Buffer {
    pub period: Duration,
    pub payload: u64,
    /// Per record on the device's store (the session core's record header,
    /// the flash store's item header).
    pub overhead: u64,
    pub outage: Duration,
    pub budget: Option<u64>,
}

impl Buffer {
    pub fn needed_bytes(&self) -> u64 {
        sizing::local_buffer_bytes(
            self.outage.as_secs(),
            self.period.as_secs().max(1),
            self.payload,
            self.overhead,
        )
    }
    /// Readings the budget holds, and the outage that fills it.
    pub fn budget_holds(&self) -> Option<(u64, Duration)> {
        let b = self.budget?;
        let n = sizing::local_buffer_capacity(b, self.payload, self.overhead);
        Some((n, self.period.saturating_mul(n.min(u32::MAX as u64) as u32)))
    }
    pub fn table(&self) -> String {
        let readings = self.outage.as_secs().div_ceil(self.period.as_secs().max(1));
        let mut t = format!(
            "local buffer: readings × (payload + record overhead)\n\
             outage {} at one reading every {}: {} readings\n\
             needed                {} ({} × ({} + {}))\n",
            human(self.outage),
            human(self.period),
            thousands(readings),
            bytes(self.needed_bytes()),
            thousands(readings),
            self.payload,
            self.overhead,
        );
        if let (Some(b), Some((n, d))) = (self.budget, self.budget_holds()) {
            t.push_str(&format!(
                "a budget of {} holds {} readings: it survives an outage of {}{}\n",
                bytes(b),
                thousands(n),
                human(d),
                if b >= self.needed_bytes() {
                    ""
                } else {
                    " (less than asked: the oldest readings are dropped, and counted)"
                }
            ));
        }
        t
    }
}

/// Effective QoS: the lower of the publisher's and the subscription's.
pub fn qos_table() -> String {
    let mut t = String::from(
        "effective QoS = min(publish QoS, subscription QoS): QoS is per hop, not end to end\n\
         publish  subscription  delivered  promise\n",
    );
    for p in 0..=2u8 {
        for s in 0..=2u8 {
            let e = sizing::effective_qos(p, s);
            t.push_str(&format!(
                "{p:<8} {s:<13} {e:<10} {}\n",
                sizing::qos_guarantee(e)
            ));
        }
    }
    t
}

/// The birthday bound for random client IDs: the chance that two of `devices`
/// IDs of `len` symbols from an alphabet of `alphabet` collide:
/// `1 - exp(-n(n-1) / 2A^L)`.
pub fn collision_probability(devices: u64, len: u32, alphabet: u64) -> f64 {
    let space = (alphabet as f64).powi(len as i32);
    let n = devices as f64;
    -(-(n * (n - 1.0)) / (2.0 * space)).exp_m1()
}

pub fn collision_table(devices: u64, len: u32, alphabet: u64) -> String {
    let p = collision_probability(devices, len, alphabet);
    format!(
        "client-ID collisions: 1 - exp(-n(n-1) / 2A^L), the birthday bound\n\
         {} devices, IDs of {len} symbols from {alphabet}: P(some two collide) = {:.3e} ({:.4} %)\n\
         a collision makes two devices take each other's session over in turn; a random\n\
         ID per boot also orphans the session: this project derives the ID from the MAC\n",
        thousands(devices),
        p,
        p * 100.0
    )
}

/// The reconnection storm after a broker restart, modelled with the session
/// core's own backoff: every device loses the broker at the same instant,
/// retries on its schedule (refused while the broker is down), and connects
/// at its first attempt after `down`.
#[derive(Clone, Debug)]
pub struct Storm {
    pub devices: u64,
    pub base: Duration,
    pub cap: Duration,
    pub down: Duration,
    pub jitter: bool,
    pub seed: u64,
}

/// What the model gives.
#[derive(Clone, Debug, PartialEq)]
pub struct StormModel {
    /// Attempts in the busiest 100 ms, scaled to a second.
    pub peak_per_s: f64,
    /// Connects (successful attempts) in the busiest 100 ms, per second.
    pub peak_connects_per_s: f64,
    pub attempts: u64,
    /// From the loss to the last device connected.
    pub all_back: Duration,
}

/// The model's time slice: the same 100 ms the storm histogram uses.
pub const SLICE_MS: u64 = 100;

impl Storm {
    pub fn model(&self) -> StormModel {
        use std::collections::BTreeMap;
        let mut attempts: BTreeMap<u64, u64> = BTreeMap::new();
        let mut connects: BTreeMap<u64, u64> = BTreeMap::new();
        let down = self.down.as_millis() as u64;
        let mut last = 0u64;
        let mut total = 0u64;
        for d in 0..self.devices {
            let mut rng = SplitMix64(self.seed ^ d.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut b = Backoff::new(self.base.as_millis() as u64, self.cap.as_millis() as u64);
            if !self.jitter {
                b = b.without_jitter();
            }
            let mut t = 0u64;
            loop {
                t += b.next_delay(&mut rng as &mut dyn RandomSource).delay_ms;
                total += 1;
                *attempts.entry(t / SLICE_MS).or_default() += 1;
                if t >= down {
                    *connects.entry(t / SLICE_MS).or_default() += 1;
                    last = last.max(t);
                    break;
                }
            }
        }
        let per_s = |m: &BTreeMap<u64, u64>| {
            m.values().copied().max().unwrap_or(0) as f64 * (1000 / SLICE_MS) as f64
        };
        StormModel {
            peak_per_s: per_s(&attempts),
            peak_connects_per_s: per_s(&connects),
            attempts: total,
            all_back: Duration::from_millis(last),
        }
    }

    pub fn table(&self) -> String {
        let with = Storm {
            jitter: true,
            ..self.clone()
        }
        .model();
        let without = Storm {
            jitter: false,
            ..self.clone()
        }
        .model();
        let row = |name: &str, m: &StormModel| {
            format!(
                "{name:<16} {:>14.0} {:>18.0} {:>9} {:>12}\n",
                m.peak_per_s,
                m.peak_connects_per_s,
                thousands(m.attempts),
                human(m.all_back)
            )
        };
        format!(
            "reconnection storm: {} devices lose the broker at once; it is back after {};\n\
             backoff base {}, cap {}, equal jitter [hi/2, hi] (the session core's own code)\n\
             schedule         attempts/s peak  connects/s peak  attempts  all back at\n\
             {}{}\
             peak connects with/without jitter: 1/{:.1} (what the broker must serve at once: CONNECT, session, queued burst)\n\
             peak attempts with/without jitter: 1/{:.1} (refusals while it is down included: the first window [base/2, base] is narrow)\n",
            thousands(self.devices),
            human(self.down),
            human(self.base),
            human(self.cap),
            row("with jitter", &with),
            row("without jitter", &without),
            without.peak_connects_per_s / with.peak_connects_per_s.max(1.0),
            without.peak_per_s / with.peak_per_s.max(1.0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u64) -> Duration {
        Duration::from_secs(n * 3600)
    }

    #[test]
    fn queue_memory_reproduces_the_texts_worked_numbers() {
        let q = Queue {
            devices: 1,
            offline: h(1),
            rate_per_min: 1,
            payload: 100,
            overhead: sizing::BROKER_OVERHEAD_BYTES,
            expiry: None,
        };
        // "60 × (100 + 40) = 8,400".
        assert_eq!(q.per_device_bytes(), 8_400);
        // "1000 sensors ... 8.4 MB".
        let fleet = Queue {
            devices: 1000,
            ..q.clone()
        };
        assert_eq!(fleet.fleet_bytes(), 8_400_000);
        assert!(
            fleet.table().contains("8,400,000 B (8.4 MB"),
            "{}",
            fleet.table()
        );
        // "offline 24 hours: 1440 × 140 = 201,600"; "10,000 × 197 KB ≈ 1.88 GB".
        let day = Queue {
            devices: 10_000,
            offline: h(24),
            ..q.clone()
        };
        assert_eq!(day.per_device_bytes(), 201_600);
        assert!(day.table().contains("1.88 GiB"), "{}", day.table());
        // "message_expiry_interval = 3600 ... 60 × 140 = 8.4 KB".
        let bounded = Queue {
            expiry: Some(h(1)),
            ..day
        };
        assert_eq!(bounded.per_device_bytes(), 8_400);
    }

    #[test]
    fn burst_reproduces_the_texts_sizing_guide() {
        let b = Burst {
            devices: 1000,
            queued: 100,
            message: 500,
        };
        assert_eq!(b.bytes(), 50_000_000);
        let t = b.table();
        assert!(t.contains("50,000,000 B (50.0 MB"), "{t}");
        assert!(
            t.contains("100,000,000 B") && t.contains("150,000,000 B"),
            "{t}"
        );
    }

    #[test]
    fn buffer_needed_and_survived() {
        let b = Buffer {
            period: Duration::from_secs(60),
            payload: 100,
            overhead: 40,
            outage: h(1),
            budget: Some(24 * 1024),
        };
        assert_eq!(b.needed_bytes(), 8_400);
        // 24 KiB / 140 B = 175 readings, a reading a minute: 175 minutes.
        assert_eq!(b.budget_holds(), Some((175, Duration::from_secs(175 * 60))));
        assert!(
            b.table().contains("survives an outage of 2.9 h"),
            "{}",
            b.table()
        );
        let short = Buffer { outage: h(5), ..b };
        assert!(short.table().contains("less than asked"));
    }

    #[test]
    fn qos_table_is_the_minimum() {
        let t = qos_table();
        assert!(
            t.contains("2        0             0          at most once"),
            "{t}"
        );
        assert!(
            t.contains("2        2             2          exactly once"),
            "{t}"
        );
        assert_eq!(t.lines().count(), 2 + 9);
    }

    #[test]
    fn collision_matches_the_birthday_numbers() {
        // The classic: 23 people, 365 days: 50.0 % by this bound (50.7 % exact).
        let p = collision_probability(23, 1, 365);
        assert!((p - 0.500).abs() < 0.001, "{p}");
        // 10,000 devices with 8 hex digits: 1 - exp(-9999e4/2^33) ≈ 1.16 %.
        let p = collision_probability(10_000, 8, 16);
        assert!((p - 0.011_574).abs() < 0.000_01, "{p}");
        // A MAC-derived 12-hex-digit ID space, a million devices: 0.18 %.
        let p = collision_probability(1_000_000, 12, 16);
        assert!((p - 0.001_775).abs() < 0.000_01, "{p}");
        assert_eq!(collision_probability(1, 4, 16), 0.0);
    }

    #[test]
    fn storm_model_spreads_with_jitter_and_herds_without() {
        let s = Storm {
            devices: 1000,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            down: Duration::from_secs(5),
            jitter: true,
            seed: 1,
        };
        let with = s.model();
        let without = Storm {
            jitter: false,
            ..s.clone()
        }
        .model();
        // Lockstep: every device in the same slice at each attempt.
        assert_eq!(without.peak_per_s, 1000.0 * 10.0);
        assert_eq!(without.peak_connects_per_s, 1000.0 * 10.0);
        // Without jitter, 500 ms doublings: 0.5, 1.5, 3.5, 7.5 s: back at 7.5 s.
        assert_eq!(without.all_back, Duration::from_millis(7_500));
        assert_eq!(without.attempts, 4000);
        // The broker comes back to a spread fleet: ≤ 1/5 of the herd's peak
        // (1/18 with these numbers). The refused attempts are spread less:
        // the first window is [250, 500] ms.
        assert!(
            with.peak_connects_per_s * 5.0 <= without.peak_connects_per_s,
            "{with:?}"
        );
        assert!(with.peak_per_s < without.peak_per_s, "{with:?}");
        assert!(s.table().contains("peak connects with/without jitter: 1/"));
        // The same seed, the same model.
        assert_eq!(s.model(), with);
    }

    #[test]
    fn units_parse_and_refuse_clearly() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(h(2)));
        assert_eq!(parse_duration("1d"), Ok(h(24)));
        assert!(parse_duration("1y").unwrap_err().contains("the unit is"));
        assert_eq!(parse_bytes("24KiB"), Ok(24_576));
        assert!(parse_bytes("x").unwrap_err().contains("expected a number"));
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(bytes(999), "999 B");
    }
}
