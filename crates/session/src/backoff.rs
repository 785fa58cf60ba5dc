//! Reconnect backoff: exponential, capped, with "equal jitter".
//!
//! Attempt `n` (1-based) has a ceiling `hi = min(cap, base × 2^(n-1))` and waits
//! a uniformly random delay in `[hi/2, hi]`.
//!
//! Why equal jitter rather than the reference text's `d + U(0, d/2)` or AWS's
//! "full jitter" `U(0, hi)`:
//! - the text's form exceeds the configured cap by up to 50 %, so "the cap" stops
//!   being a bound a test (or an operator) can rely on; equal jitter never does;
//! - full jitter spreads best but allows delays near zero, so after a broker
//!   restart a share of the fleet hammers the broker while it is still starting;
//!   equal jitter keeps a floor of `hi/2` and still spreads a fleet over half of
//!   each window, which is what breaks up the thundering herd.
//!
//! The random source is injected ([`RandomSource`]): the firmware uses the
//! chip's RNG, the sim a seeded PRNG, tests a fixed sequence.

/// A source of uniformly distributed 32-bit values.
pub trait RandomSource {
    fn next_u32(&mut self) -> u32;
}

/// One scheduled reconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delay {
    /// 1 for the first retry after a loss.
    pub attempt: u32,
    pub delay_ms: u64,
    /// The window the delay was drawn from, reported so a runner can check it.
    pub lo_ms: u64,
    pub hi_ms: u64,
}

#[derive(Clone, Debug)]
pub struct Backoff {
    base_ms: u64,
    cap_ms: u64,
    attempt: u32,
    jitter: bool,
}

impl Backoff {
    /// `base_ms` is clamped to at least 1 and `cap_ms` to at least `base_ms`.
    pub fn new(base_ms: u64, cap_ms: u64) -> Self {
        let base_ms = base_ms.max(1);
        Backoff {
            base_ms,
            cap_ms: cap_ms.max(base_ms),
            attempt: 0,
            jitter: true,
        }
    }

    /// Negative control: always wait the ceiling, so a fleet reconnects in lockstep.
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    pub fn base_ms(&self) -> u64 {
        self.base_ms
    }

    pub fn cap_ms(&self) -> u64 {
        self.cap_ms
    }

    /// Attempts made since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The `[lo, hi]` window of attempt `n` (1-based).
    pub fn window(&self, attempt: u32) -> (u64, u64) {
        let shift = attempt.saturating_sub(1).min(63);
        let hi = self
            .base_ms
            .checked_shl(shift)
            .filter(|v| v >> shift == self.base_ms)
            .unwrap_or(u64::MAX)
            .min(self.cap_ms);
        if self.jitter {
            (hi / 2, hi)
        } else {
            (hi, hi)
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self, rng: &mut dyn RandomSource) -> Delay {
        self.attempt = self.attempt.saturating_add(1);
        let (lo, hi) = self.window(self.attempt);
        let span = hi - lo;
        let delay_ms = if span == 0 {
            lo
        } else {
            // Two draws make 64 bits so the modulo bias is negligible for any span.
            let r = ((rng.next_u32() as u64) << 32) | rng.next_u32() as u64;
            lo + r % (span + 1)
        };
        Delay {
            attempt: self.attempt,
            delay_ms,
            lo_ms: lo,
            hi_ms: hi,
        }
    }

    /// After a successful CONNACK.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// SplitMix64, for tests and for callers without a hardware RNG: tiny, seedable,
/// and statistically good enough for jitter (not for cryptography).
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl RandomSource for SplitMix64 {
    fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    #[test]
    fn windows_double_then_cap() {
        let b = Backoff::new(500, 8_000);
        assert_eq!(b.window(1), (250, 500));
        assert_eq!(b.window(2), (500, 1_000));
        assert_eq!(b.window(5), (4_000, 8_000));
        assert_eq!(b.window(6), (4_000, 8_000));
        assert_eq!(b.window(500), (4_000, 8_000));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(100, 10_000);
        let mut rng = SplitMix64(1);
        for _ in 0..5 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.attempt(), 5);
        b.reset();
        let d = b.next_delay(&mut rng);
        assert_eq!((d.attempt, d.lo_ms, d.hi_ms), (1, 50, 100));
    }

    #[test]
    fn no_jitter_is_lockstep() {
        let mut a = Backoff::new(100, 1_000).without_jitter();
        let mut rng = SplitMix64(9);
        let d: Vec<u64> = (0..6).map(|_| a.next_delay(&mut rng).delay_ms).collect();
        assert_eq!(d, [100, 200, 400, 800, 1_000, 1_000]);
    }

    proptest! {
        /// Every delay lies within its window, the window never exceeds the cap,
        /// and the ceiling never shrinks from one attempt to the next.
        #[test]
        fn delay_within_bounds(base in 1u64..100_000, cap in 1u64..10_000_000, seed: u64, attempts in 1usize..80) {
            let mut b = Backoff::new(base, cap);
            let mut rng = SplitMix64(seed);
            let mut last_hi = 0;
            for n in 1..=attempts {
                let d = b.next_delay(&mut rng);
                prop_assert_eq!(d.attempt as usize, n);
                prop_assert!(d.lo_ms <= d.delay_ms && d.delay_ms <= d.hi_ms);
                prop_assert!(d.hi_ms <= b.cap_ms());
                prop_assert!(d.lo_ms >= d.hi_ms / 2);
                prop_assert!(d.hi_ms >= last_hi);
                last_hi = d.hi_ms;
            }
        }

        /// 200 devices with different seeds, all losing the broker at the same
        /// instant, spread their first reconnects over the window: no 5 % slice
        /// of it holds more than a fifth of the fleet, and at least 15 of the 20
        /// slices are used. Without jitter every device lands in one slice.
        #[test]
        fn fleet_spreads_over_the_window(fleet_seed: u64, attempt in 1u32..8) {
            let mut seeds = SplitMix64(fleet_seed);
            let mut slices = [0u32; 20];
            for _ in 0..200 {
                let seed = ((seeds.next_u32() as u64) << 32) | seeds.next_u32() as u64;
                let mut rng = SplitMix64(seed);
                let mut b = Backoff::new(1_000, 60_000);
                let mut d = b.next_delay(&mut rng);
                while d.attempt < attempt {
                    d = b.next_delay(&mut rng);
                }
                let span = d.hi_ms - d.lo_ms;
                let idx = ((d.delay_ms - d.lo_ms) * 20 / (span + 1)) as usize;
                slices[idx] += 1;
            }
            prop_assert!(slices.iter().all(|&c| c <= 40), "bunched: {:?}", slices);
            prop_assert!(slices.iter().filter(|&&c| c > 0).count() >= 15, "sparse: {:?}", slices);
        }
    }
}
