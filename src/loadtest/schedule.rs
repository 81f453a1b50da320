//! When each request is meant to start. Open loop: `rate × duration` tickets at fixed intervals,
//! handed out in order to whichever connection is free; closed loop: one ticket whenever a
//! connection is free, until the duration ends. Arithmetic and one atomic counter; no I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One request to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ticket {
    /// Since the run started: when the request should start. Latency is measured from here, so
    /// time spent waiting for a free connection counts (no coordinated omission).
    pub intended: Duration,
    /// No connection was free at `intended`: it was claimed more than [`LATE_AFTER`] after its
    /// time.
    pub late: bool,
}

/// Slack before a ticket counts as late: a connection freed a few microseconds after the intended
/// start (or a task scheduled a little late by the runtime) still starts the request on time for
/// any purpose a person cares about.
pub(super) const LATE_AFTER: Duration = Duration::from_millis(1);

/// The run's tickets, claimed concurrently by the connections' tasks.
#[derive(Debug)]
pub(super) struct Schedule {
    /// 0: closed loop.
    rate: u32,
    duration: Duration,
    /// Open loop: how many tickets in all.
    total: u64,
    next: AtomicU64,
}

impl Schedule {
    pub fn new(rate: u32, duration: Duration) -> Self {
        let total = u64::try_from(u128::from(rate) * duration.as_nanos() / 1_000_000_000)
            .unwrap_or(u64::MAX);
        Self {
            rate,
            duration,
            total,
            next: AtomicU64::new(0),
        }
    }

    /// Tickets in an open-loop run; `None` for closed loop.
    pub fn total(&self) -> Option<u64> {
        (self.rate > 0).then_some(self.total)
    }

    /// When ticket `n` (from 0) is meant to start: `n / rate` seconds in, to the nanosecond, with no
    /// drift accumulated over a long run.
    pub fn intended(&self, n: u64) -> Duration {
        let nanos = u128::from(n) * 1_000_000_000 / u128::from(self.rate.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The next ticket for a connection that is free at `now` (since the run started), or `None`
    /// when the run has no more. Each ticket is handed out exactly once.
    pub fn claim(&self, now: Duration) -> Option<Ticket> {
        if self.rate == 0 {
            return (now < self.duration).then_some(Ticket {
                intended: now,
                late: false,
            });
        }
        // Relaxed: the counter only hands out distinct numbers; it publishes no other memory.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if n >= self.total {
            return None;
        }
        let intended = self.intended(n);
        Some(Ticket {
            intended,
            late: now > intended + LATE_AFTER,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_has_rate_times_duration_tickets_at_fixed_intervals() {
        let s = Schedule::new(200, Duration::from_secs(3));
        assert_eq!(s.total(), Some(600));
        assert_eq!(s.intended(0), Duration::ZERO);
        assert_eq!(s.intended(1), Duration::from_millis(5));
        assert_eq!(s.intended(599), Duration::from_millis(2995));
        let s = Schedule::new(3, Duration::from_millis(1500));
        assert_eq!(s.total(), Some(4), "partial seconds count: floor(3 × 1.5)");
        assert_eq!(s.intended(1), Duration::from_nanos(333_333_333));
        assert_eq!(
            s.intended(3_000_000_000),
            Duration::from_secs(1_000_000_000),
            "no drift"
        );
    }

    #[test]
    fn every_ticket_is_claimed_once_in_order_then_none() {
        let s = Schedule::new(10, Duration::from_secs(1));
        let claimed: Vec<_> = std::iter::from_fn(|| s.claim(Duration::ZERO)).collect();
        assert_eq!(claimed.len(), 10);
        assert!(claimed.windows(2).all(|w| w[0].intended < w[1].intended));
        assert_eq!(s.claim(Duration::from_secs(5)), None, "stays exhausted");
    }

    #[test]
    fn a_ticket_claimed_after_its_time_is_late() {
        let s = Schedule::new(10, Duration::from_secs(1));
        assert!(!s.claim(Duration::ZERO).unwrap().late, "due now: on time");
        assert!(
            !s.claim(Duration::from_micros(100_500)).unwrap().late,
            "within the slack: on time"
        );
        let t = s.claim(Duration::from_millis(250)).unwrap();
        assert_eq!(t.intended, Duration::from_millis(200));
        assert!(t.late, "claimed 50 ms after its time");
        assert!(!s.claim(Duration::from_millis(250)).unwrap().late);
    }

    #[test]
    fn closed_loop_hands_out_tickets_until_the_duration_ends() {
        let s = Schedule::new(0, Duration::from_secs(2));
        assert_eq!(s.total(), None);
        let t = s.claim(Duration::from_millis(1500)).unwrap();
        assert_eq!(
            t.intended,
            Duration::from_millis(1500),
            "starts when claimed"
        );
        assert!(!t.late, "closed loop is never late");
        assert_eq!(s.claim(Duration::from_secs(2)), None);
    }
}
