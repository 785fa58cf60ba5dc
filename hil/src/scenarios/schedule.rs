//! What kind of retry schedule a device follows, told from the waits the wire
//! tap measured between giving up on one connection and opening the next
//! (Device Advisor's classes: constant, linear, exponential, exponential
//! with jitter). Judged from the wire only: a device's console may print
//! textbook windows while it retries on a fixed interval.
//!
//! How: three deterministic models, each capped at the longest wait seen,
//! are fitted to the waits: constant (the median), linear `a + b(i-1)` and
//! exponential `base * 2^(i-1)`. The best one within 2 % relative error for all but one wait in ten
//! (after 15 ms of slack for the tap's and the scheduler's timing) names a
//! schedule without jitter. When none fits that closely the waits are
//! random; they are "exponential with jitter" when a doubling ceiling
//! bounds them (at least 80 % of the waits between 0.4 and 1.1 times
//! `min(cap, base * 2^(i-1))` for some base, covering equal jitter
//! `[hi/2, hi]` and most of full jitter `[0, hi]`) and they grow at least 3x
//! from the first wait to the longest; otherwise "irregular".
//!
//! Why fits and not ratios of consecutive waits: with jitter a single ratio
//! ranges from 0.5 to 4, so ratio rules either miss jitter or call it
//! irregular; a ceiling that doubles is what every exponential backoff with
//! jitter shares, whatever its jitter formula.

/// The class of a retry schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    Constant,
    Linear,
    Exponential,
    ExponentialWithJitter,
    /// Random, but not under a doubling ceiling (or not growing).
    Irregular,
    /// Too few waits to tell (fewer than [`MIN_WAITS`]).
    TooFew,
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Schedule::Constant => "constant",
            Schedule::Linear => "linear",
            Schedule::Exponential => "exponential without jitter",
            Schedule::ExponentialWithJitter => "exponential with jitter",
            Schedule::Irregular => "irregular",
            Schedule::TooFew => "too few attempts to tell",
        })
    }
}

/// Waits needed to classify: Device Advisor's eight attempts.
pub const MIN_WAITS: usize = 8;
const SLACK_MS: f64 = 15.0;
const FIT: f64 = 0.02;

/// The relative error of `waits` against `model(i)` (0-based i) that all
/// but one wait in ten stay within: that one may be stretched by a busy
/// machine without hiding a deterministic schedule, while a jittered one
/// cannot line up nine in ten of its waits with any single model.
fn error(waits: &[u64], model: impl Fn(usize) -> f64) -> f64 {
    let mut errs: Vec<f64> = waits
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let p = model(i).max(1.0);
            ((*w as f64 - p).abs() - SLACK_MS).max(0.0) / p
        })
        .collect();
    errs.sort_by(f64::total_cmp);
    errs[errs.len() - 1 - errs.len() / 10]
}

fn exp_model(base: f64, cap: f64) -> impl Fn(usize) -> f64 {
    move |i| (base * 2f64.powi(i.min(62) as i32)).min(cap)
}

/// Candidate bases of a doubling ceiling: every wait scaled back to attempt 1.
fn bases(waits: &[u64]) -> Vec<f64> {
    waits
        .iter()
        .enumerate()
        .flat_map(|(i, w)| {
            let b = *w as f64 / 2f64.powi(i.min(62) as i32);
            [b, b * 2.0]
        })
        .filter(|b| *b >= 1.0)
        .collect()
}

/// The best (error, model) among the deterministic fits.
fn deterministic(waits: &[u64]) -> (f64, Schedule) {
    let cap = *waits.iter().max().unwrap_or(&1) as f64;
    let mut sorted = waits.to_vec();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2] as f64;
    let constant = error(waits, |_| median);
    // The cap: one of the three longest waits (the longest may be stretched).
    let caps: Vec<f64> = sorted.iter().rev().take(3).map(|w| *w as f64).collect();
    let exponential = bases(waits)
        .into_iter()
        .flat_map(|b| caps.iter().map(move |c| (b, *c)))
        .map(|(b, c)| error(waits, exp_model(b, c)))
        .fold(f64::INFINITY, f64::min);
    // Linear: least squares over the waits below the plateau.
    let rising: Vec<(f64, f64)> = waits
        .iter()
        .enumerate()
        .filter(|(_, w)| (**w as f64) < cap * 0.95)
        .map(|(i, w)| (i as f64, *w as f64))
        .collect();
    let linear = if rising.len() >= 2 {
        let n = rising.len() as f64;
        let (sx, sy) = rising
            .iter()
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        let sxx: f64 = rising.iter().map(|(x, _)| x * x).sum();
        let sxy: f64 = rising.iter().map(|(x, y)| x * y).sum();
        let den = n * sxx - sx * sx;
        if den.abs() < f64::EPSILON {
            f64::INFINITY
        } else {
            let b = (n * sxy - sx * sy) / den;
            let a = (sy - b * sx) / n;
            if b <= 0.0 {
                f64::INFINITY
            } else {
                error(waits, |i| (a + b * i as f64).min(cap))
            }
        }
    } else {
        f64::INFINITY
    };
    [
        (constant, Schedule::Constant),
        (exponential, Schedule::Exponential),
        (linear, Schedule::Linear),
    ]
    .into_iter()
    .fold((f64::INFINITY, Schedule::Irregular), |best, c| {
        if c.0 < best.0 {
            c
        } else {
            best
        }
    })
}

/// The waits between consecutive instants, in ms (what [`classify`] takes).
pub fn gaps_ms(at: &[std::time::Instant]) -> Vec<u64> {
    at.windows(2)
        .map(|w| w[1].duration_since(w[0]).as_millis() as u64)
        .collect()
}

/// Classifies the waits (ms) before each retry, in order.
pub fn classify(waits: &[u64]) -> Schedule {
    if waits.len() < MIN_WAITS {
        return Schedule::TooFew;
    }
    let (err, fit) = deterministic(waits);
    let (min, max) = (
        *waits.iter().min().unwrap_or(&0) as f64,
        *waits.iter().max().unwrap_or(&0) as f64,
    );
    if err <= FIT {
        // A constant with a few ms of noise also fits a flat exponential.
        if max <= min * 1.25 + SLACK_MS {
            return Schedule::Constant;
        }
        return fit;
    }
    let first = waits[0] as f64;
    let grows = max >= first.max(1.0) * 3.0;
    let ceiling = bases(waits).into_iter().any(|b| {
        let model = exp_model(b, max);
        let inside = waits
            .iter()
            .enumerate()
            .filter(|(i, w)| {
                let hi = model(*i);
                let w = **w as f64;
                w <= hi * 1.1 + SLACK_MS && w + SLACK_MS >= hi * 0.4
            })
            .count();
        inside * 5 >= waits.len() * 4
    });
    if grows && ceiling {
        Schedule::ExponentialWithJitter
    } else {
        Schedule::Irregular
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hil_session::backoff::{Backoff, SplitMix64};

    fn drawn(backoff: Backoff, seed: u64, n: usize) -> Vec<u64> {
        let mut b = backoff;
        let mut rng = SplitMix64(seed);
        (0..n).map(|_| b.next_delay(&mut rng).delay_ms).collect()
    }

    #[test]
    fn the_session_cores_schedules_are_told_apart() {
        // The device's own backoff, for many seeds: equal jitter is jitter.
        for seed in 0..2000 {
            let w = drawn(Backoff::new(100, 1600), seed, 11);
            assert_eq!(
                classify(&w),
                Schedule::ExponentialWithJitter,
                "seed {seed}: {w:?}"
            );
        }
        // The no-jitter negative control, with a few ms of timing noise.
        let mut w = drawn(Backoff::new(100, 1600).without_jitter(), 1, 11);
        w[2] += 4;
        w[6] -= 7;
        // One wait stretched by a busy machine does not make it jitter.
        w[4] += 90;
        assert_eq!(classify(&w), Schedule::Exponential, "{w:?}");
    }

    #[test]
    fn fixed_linear_and_random_retries_are_named() {
        assert_eq!(
            classify(&[260, 262, 259, 265, 260, 261, 258, 262]),
            Schedule::Constant
        );
        assert_eq!(classify(&[1000; 8]), Schedule::Constant);
        assert_eq!(
            classify(&[200, 400, 600, 800, 1000, 1200, 1400, 1600]),
            Schedule::Linear
        );
        // Random and flat: jitter without backoff.
        assert_eq!(
            classify(&[310, 120, 450, 90, 380, 200, 260, 140]),
            Schedule::Irregular
        );
        assert_eq!(classify(&[100, 200, 400, 800, 1600]), Schedule::TooFew);
        // Full jitter under a doubling ceiling is still exponential with jitter.
        assert_eq!(
            classify(&[80, 150, 390, 500, 1400, 1100, 1550, 900]),
            Schedule::ExponentialWithJitter
        );
    }
}
