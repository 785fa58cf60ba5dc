//! The soak's fault schedule: drawn from the seed alone, before anything
//! runs, so the same seed replays the same faults at the same offsets (what
//! the device and broker do in between is theirs).

use hil_session::backoff::SplitMix64;
use hil_session::RandomSource;
use std::time::Duration;

/// One thing the soak does to the device, its link or the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The proxy resets the connection (RST both ways).
    Cut,
    /// Every byte dropped both ways for this long; sockets stay open.
    Blackhole(Duration),
    /// Every packet delayed by `.0` for `.1`.
    Latency(Duration, Duration),
    /// New connections reset at once for this long (the broker unreachable).
    Refuse(Duration),
    /// kill -9 of the broker, started again after this long.
    BrokerKill(Duration),
    /// `!reboot`: a clean restart of the device.
    Reboot,
    /// kill -9 of the device process, powered on again after this long.
    PowerCut(Duration),
    /// The cloud publishes this many commands at this QoS.
    Commands { n: u32, qos: u8 },
    /// The device takes this many readings.
    Readings(u32),
}

impl Fault {
    /// Link, broker and power faults (not traffic): the "faults" a 1,000-fault soak counts.
    pub fn is_fault(&self) -> bool {
        !matches!(self, Fault::Commands { .. } | Fault::Readings(_))
    }

    pub fn label(&self) -> String {
        let ms = |d: &Duration| d.as_millis();
        match self {
            Fault::Cut => "link cut".into(),
            Fault::Blackhole(d) => format!("blackhole {} ms", ms(d)),
            Fault::Latency(l, d) => format!("latency {} ms for {} ms", ms(l), ms(d)),
            Fault::Refuse(d) => format!("refuse connections {} ms", ms(d)),
            Fault::BrokerKill(d) => format!("broker kill -9, down {} ms", ms(d)),
            Fault::Reboot => "device reboot".into(),
            Fault::PowerCut(d) => format!("device power cut, off {} ms", ms(d)),
            Fault::Commands { n, qos } => format!("{n} commands at QoS {qos}"),
            Fault::Readings(n) => format!("{n} readings"),
        }
    }
}

/// Traffic in the middle of a fault: commands published and readings taken
/// while the device is cut off, rebooting or powered down (what a session
/// must carry through is what arrives while it is away).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Burst {
    pub commands: u32,
    pub qos: u8,
    pub readings: u32,
}

/// A fault at an offset from the start of the soak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub at: Duration,
    pub fault: Fault,
    /// Traffic during the fault (never during a broker kill: nothing to publish to).
    pub during: Option<Burst>,
    /// Which device a reboot, power cut or burst is for: `pick % devices`.
    pub pick: u32,
}

/// How the steps are spaced: `gap_ms` between the end of one step's draw
/// and the next (the soak waits for a step to finish before the next).
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub gap_ms: (u64, u64),
}

impl Pace {
    /// A fault or a burst every 0.3 to 2.5 s.
    pub const NORMAL: Pace = Pace {
        gap_ms: (300, 2_500),
    };
    /// As fast as the device can take: for a 1,000-fault run.
    pub const DENSE: Pace = Pace { gap_ms: (50, 400) };
}

fn between(rng: &mut SplitMix64, lo: u64, hi: u64) -> u64 {
    lo + (rng.next_u32() as u64) % (hi - lo + 1)
}

/// The steps of a soak of `duration` from `seed`, in order.
pub fn schedule(seed: u64, duration: Duration, pace: Pace) -> Vec<Step> {
    let mut rng = SplitMix64(seed ^ 0x50a4_50a4);
    // Which device each step is for: a stream of its own, so the schedule
    // of faults for a seed is the same whatever the number of devices.
    let mut picks = SplitMix64(seed ^ 0xde71_ce00);
    let mut at = 0u64;
    let mut out = Vec::new();
    let ms = Duration::from_millis;
    loop {
        at += between(&mut rng, pace.gap_ms.0, pace.gap_ms.1);
        if at >= duration.as_millis() as u64 {
            return out;
        }
        // Weights out of 100: traffic most of the time, every fault kind often.
        let fault = match between(&mut rng, 0, 99) {
            0..=29 => Fault::Commands {
                n: between(&mut rng, 1, 5) as u32,
                qos: between(&mut rng, 0, 2) as u8,
            },
            30..=54 => Fault::Readings(between(&mut rng, 1, 6) as u32),
            55..=66 => Fault::Cut,
            67..=71 => Fault::Blackhole(ms(between(&mut rng, 500, 4_000))),
            72..=76 => Fault::Latency(
                ms(between(&mut rng, 20, 300)),
                ms(between(&mut rng, 500, 3_000)),
            ),
            77..=81 => Fault::Refuse(ms(between(&mut rng, 300, 3_000))),
            82..=87 => Fault::BrokerKill(ms(between(&mut rng, 300, 3_000))),
            88..=93 => Fault::Reboot,
            _ => Fault::PowerCut(ms(between(&mut rng, 100, 2_000))),
        };
        let during = (fault.is_fault()
            && !matches!(fault, Fault::BrokerKill(_))
            && between(&mut rng, 0, 9) < 7)
            .then(|| Burst {
                commands: between(&mut rng, 1, 3) as u32,
                qos: between(&mut rng, 1, 2) as u8,
                readings: between(&mut rng, 0, 2) as u32,
            });
        out.push(Step {
            at: ms(at),
            fault,
            during,
            pick: picks.next_u32(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_replays_the_same_schedule_and_another_does_not() {
        let d = Duration::from_secs(600);
        let a = schedule(1, d, Pace::NORMAL);
        assert_eq!(a, schedule(1, d, Pace::NORMAL));
        assert_ne!(a, schedule(2, d, Pace::NORMAL));
        assert!(a.windows(2).all(|w| w[0].at < w[1].at));
        assert!(a.last().unwrap().at < d);
        // Ten minutes hold every kind of step, and a few hundred of them.
        for kind in [
            "cut",
            "blackhole",
            "latency",
            "refuse",
            "broker",
            "reboot",
            "power",
            "commands",
            "readings",
        ] {
            assert!(a.iter().any(|s| s.fault.label().contains(kind)), "{kind}");
        }
        assert!((300..700).contains(&a.len()), "{}", a.len());
        assert!(a.iter().any(|s| s.during.is_some()));
        assert!(a.iter().all(|s| s.during.is_none()
            || (s.fault.is_fault() && !matches!(s.fault, Fault::BrokerKill(_)))));
    }
}
