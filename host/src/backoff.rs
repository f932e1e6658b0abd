//! Retry delays for every peer the agent reconnects to (MQTT broker,
//! Greengrass nucleus, Device Defender replies, Firehose start-up checks).
//!
//! Two rules hold on every retry path, because a fleet fails together (one
//! broker restart, one cloned image, one power cut for a whole site):
//! - **jitter**: each delay is spread ±25 % at random, so devices that lost
//!   their peer at the same moment do not come back in lockstep;
//! - **reset only after a stable connection**: a peer that accepts and then
//!   drops us at once (a duplicate client id, a policy that refuses a topic)
//!   must not make us retry at the first delay forever. The delay starts over
//!   only when the connection stayed up [`STABLE_AFTER`].
//!
//! A leaf module: it imports nothing from the crate.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// How long a connection must stay up before a loss starts the backoff over.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Exponential backoff from `first` to `max`, doubled per failure, each
/// delay jittered ±25 % and never below `first`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let first = first.max(Duration::from_millis(1));
        Backoff {
            first,
            max: max.max(first),
            next: first,
        }
    }

    /// The delay before the next attempt (jittered); the one after doubles.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        jitter(base).max(self.first)
    }

    /// Starts over at `first` (after a success that proves the peer works).
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// A connection that was up for `up_for` was lost: the delay starts
    /// over only if it was stable ([`STABLE_AFTER`]); a connection dropped
    /// sooner counts as one more failure.
    pub fn connection_lost_after(&mut self, up_for: Duration) {
        if up_for >= STABLE_AFTER {
            self.reset();
        }
    }
}

/// `delay` spread uniformly over ±25 %.
pub fn jitter(delay: Duration) -> Duration {
    let quarter = delay.as_millis() as u64 / 4;
    let offset = random() % (2 * quarter + 1);
    (delay + Duration::from_millis(offset)).saturating_sub(Duration::from_millis(quarter))
}

/// A random number: `RandomState` is seeded randomly per instance, which is
/// enough spread between devices without a dependency (not cryptography).
pub fn random() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_ceiling_with_jitter_and_never_below_the_first() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        for (n, d) in delays.iter().enumerate() {
            let base = Duration::from_secs(1 << n.min(6)).min(Duration::from_secs(60));
            assert!(
                *d >= base.mul_f64(0.75).max(Duration::from_secs(1)) && *d <= base.mul_f64(1.25),
                "attempt {n}: {d:?} (base {base:?})"
            );
        }
        let spread: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| jitter(Duration::from_secs(8))).collect();
        assert!(spread.len() > 5, "jitter varies the delay: {spread:?}");
    }

    #[test]
    fn only_a_stable_connection_starts_the_delay_over() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..4 {
            backoff.next_delay();
        }
        backoff.connection_lost_after(Duration::from_secs(5));
        assert!(
            backoff.next_delay() >= Duration::from_secs(12),
            "a connection dropped after 5 s is one more failure"
        );
        backoff.connection_lost_after(STABLE_AFTER);
        assert!(backoff.next_delay() <= Duration::from_millis(1250));
    }
}
