//! Reconnect back-off: exponential with full jitter. Pure: the caller supplies the RNG.

use std::time::Duration;

use rand::Rng;

/// Exponential back-off with full jitter: attempt `n` (0-based) waits a uniformly random time in
/// `[0, min(cap, base * 2^n)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The upper bound of the wait before attempt `attempt` (no jitter).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before attempt `attempt`, drawn from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        };
        assert_eq!(b.ceiling(0), Duration::from_secs(1));
        assert_eq!(b.ceiling(1), Duration::from_secs(2));
        assert_eq!(b.ceiling(5), Duration::from_secs(32));
        assert_eq!(b.ceiling(6), Duration::from_secs(60));
        assert_eq!(b.ceiling(1000), Duration::from_secs(60));
    }

    #[test]
    fn delays_are_within_the_ceiling_and_jittered() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = std::collections::BTreeSet::new();
        for attempt in 0..40 {
            let d = b.delay(attempt, &mut rng);
            assert!(d <= b.ceiling(attempt), "{d:?} at {attempt}");
            seen.insert(d);
        }
        assert!(seen.len() > 30, "full jitter spreads the waits");
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let b = Backoff::default();
        let a: Vec<_> = {
            let mut r = StdRng::seed_from_u64(42);
            (0..10).map(|n| b.delay(n, &mut r)).collect()
        };
        let c: Vec<_> = {
            let mut r = StdRng::seed_from_u64(42);
            (0..10).map(|n| b.delay(n, &mut r)).collect()
        };
        assert_eq!(a, c);
    }
}
