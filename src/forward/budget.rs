//! The retry budget: retries may add at most a percentage to the requests of the current 10 s
//! epoch, plus a small floor, so that a failing fleet is not stormed by its own proxies
//! (the budget idea of Finagle and linkerd2-proxy, with fixed epochs instead of a sliding window).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::sharded::Counter;

const EPOCH: Duration = Duration::from_secs(10);

/// Retries always allowed per epoch, so that a quiet service still gets its few retries.
const FLOOR: u64 = 10;

pub(super) struct RetryBudget {
    base: Instant,
    epoch: AtomicU64,
    /// Written by every request on every worker thread, so kept per thread (see
    /// [`sharded`](crate::metrics::sharded)); read only when a retry asks.
    requests: Counter,
    /// Written only by retries.
    retries: AtomicU64,
}

impl RetryBudget {
    pub(super) fn new() -> Self {
        Self {
            base: Instant::now(),
            epoch: AtomicU64::new(0),
            requests: Counter::default(),
            retries: AtomicU64::new(0),
        }
    }

    /// Counts a request (an original, not a retry).
    #[inline]
    pub(super) fn deposit(&self, now: Instant) {
        self.roll(now);
        // A budget, not a bank: a few retries more or less at an epoch edge are fine.
        self.requests.inc();
    }

    /// Takes one retry from the budget, if `percent` of this epoch's requests (plus the floor)
    /// allows it.
    pub(super) fn withdraw(&self, now: Instant, percent: u32) -> bool {
        self.roll(now);
        let allowed = FLOOR + self.requests.get() * u64::from(percent) / 100;
        if self.retries.fetch_add(1, Ordering::Relaxed) < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }

    fn roll(&self, now: Instant) {
        let epoch = now.saturating_duration_since(self.base).as_secs() / EPOCH.as_secs();
        let current = self.epoch.load(Ordering::Relaxed);
        if epoch != current
            && self
                .epoch
                .compare_exchange(current, epoch, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.reset();
            self.retries.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_the_percentage_plus_the_floor_per_epoch() {
        let budget = RetryBudget::new();
        let now = budget.base;
        for _ in 0..100 {
            budget.deposit(now);
        }
        let granted = (0..1000).filter(|_| budget.withdraw(now, 20)).count();
        assert_eq!(granted, 10 + 20, "floor 10 + 20% of 100 requests");
        let later = now + EPOCH;
        assert!(
            budget.withdraw(later, 20),
            "a new epoch starts with a fresh budget"
        );
        assert_eq!(
            (0..100).filter(|_| budget.withdraw(later, 0)).count(),
            9,
            "then only the floor"
        );
    }
}
