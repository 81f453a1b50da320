//! When each request is meant to start. Open loop: `rate × duration` tickets at fixed intervals,
//! or, with stages, at a rate that ramps linearly from one target to the next (k6's
//! `ramping-arrival-rate`), handed out in order to whichever connection is free; closed loop: one
//! ticket whenever a connection is free, until the duration ends. Arithmetic and one atomic
//! counter; no I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::plan::Stage;

/// One request to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ticket {
    /// Its place in the run, from 0: which of several request templates it sends.
    pub n: u64,
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
    pace: Pace,
    /// Open loop: how many tickets in all.
    total: u64,
    next: AtomicU64,
}

#[derive(Debug)]
enum Pace {
    /// Each connection sends back to back until the duration ends.
    Closed(Duration),
    /// A fixed rate: ticket `n` at `n / rate` seconds, in integer nanoseconds.
    Constant(u32),
    /// Linear ramps, in order; ramps that start no ticket (a zero-length jump, a pause at rate 0)
    /// are left out.
    Ramp(Vec<Ramp>),
}

/// One stage as the schedule uses it: the rate goes from `from` to `to` (per second) linearly
/// over `seconds`, starting `start` seconds into the run, after `before` tickets.
#[derive(Debug)]
struct Ramp {
    start: f64,
    seconds: f64,
    from: f64,
    to: f64,
    before: f64,
}

impl Ramp {
    /// Tickets this ramp starts: the area under its rate.
    fn tickets(&self) -> f64 {
        (self.from + self.to) / 2.0 * self.seconds
    }

    /// Seconds into the ramp at which `c` of its tickets are due: the root of
    /// `from·t + (to − from)·t² / 2T = c`, in the form that stays exact when `from == to` and
    /// when `from` is 0.
    fn at(&self, c: f64) -> f64 {
        if c <= 0.0 {
            return 0.0;
        }
        let k = (self.to - self.from) / (2.0 * self.seconds);
        let root = (self.from * self.from + 4.0 * k * c).max(0.0).sqrt();
        2.0 * c / (self.from + root)
    }
}

/// Rounding slack when counting a ramp's tickets, so that 100/s over 10 s is 1000, not 999.
const EPSILON: f64 = 1e-6;

impl Schedule {
    /// `stages` non-empty: ramps from 0 through each stage's target (and `rate`, `duration` are
    /// not used); else `rate` per second for `duration`, or closed loop for rate 0.
    pub fn new(rate: u32, duration: Duration, stages: &[Stage]) -> Self {
        let (pace, total) = if !stages.is_empty() {
            let (ramps, total) = ramps(stages);
            (Pace::Ramp(ramps), total)
        } else if rate == 0 {
            (Pace::Closed(duration), 0)
        } else {
            let total = u64::try_from(u128::from(rate) * duration.as_nanos() / 1_000_000_000)
                .unwrap_or(u64::MAX);
            (Pace::Constant(rate), total)
        };
        Self {
            pace,
            total,
            next: AtomicU64::new(0),
        }
    }

    /// Tickets in an open-loop run; `None` for closed loop.
    pub fn total(&self) -> Option<u64> {
        match self.pace {
            Pace::Closed(_) => None,
            _ => Some(self.total),
        }
    }

    /// When ticket `n` (from 0) is meant to start, with no drift accumulated over a long run: at a
    /// fixed rate `n / rate` seconds in, to the nanosecond; on a ramp where the rate's integral
    /// reaches `n`.
    pub fn intended(&self, n: u64) -> Duration {
        match &self.pace {
            Pace::Closed(_) => Duration::ZERO,
            Pace::Constant(rate) => {
                let nanos = u128::from(n) * 1_000_000_000 / u128::from((*rate).max(1));
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
            Pace::Ramp(ramps) => {
                let n = n as f64;
                let i = ramps.partition_point(|r| r.before <= n).saturating_sub(1);
                match ramps.get(i) {
                    Some(r) => Duration::from_secs_f64(r.start + r.at(n - r.before)),
                    None => Duration::ZERO,
                }
            }
        }
    }

    /// The next ticket for a connection that is free at `now` (since the run started), or `None`
    /// when the run has no more. Each ticket is handed out exactly once.
    pub fn claim(&self, now: Duration) -> Option<Ticket> {
        // Relaxed: the counter only hands out distinct numbers; it publishes no other memory.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if let Pace::Closed(duration) = self.pace {
            return (now < duration).then_some(Ticket {
                n,
                intended: now,
                late: false,
            });
        }
        if n >= self.total {
            return None;
        }
        let intended = self.intended(n);
        Some(Ticket {
            n,
            intended,
            late: now > intended + LATE_AFTER,
        })
    }
}

/// The stages as ramps that start tickets, and how many tickets they start in all.
fn ramps(stages: &[Stage]) -> (Vec<Ramp>, u64) {
    let mut ramps = Vec::with_capacity(stages.len());
    let (mut start, mut from, mut before) = (0.0, 0.0, 0.0);
    for stage in stages {
        let ramp = Ramp {
            start,
            seconds: stage.duration.as_secs_f64(),
            from,
            to: f64::from(stage.target),
            before,
        };
        start += ramp.seconds;
        from = ramp.to;
        let tickets = ramp.tickets();
        if tickets > 0.0 {
            before += tickets;
            ramps.push(ramp);
        }
    }
    (ramps, (before + EPSILON).floor() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(text: &str) -> Vec<Stage> {
        Stage::parse_list(text).unwrap()
    }

    #[test]
    fn open_loop_has_rate_times_duration_tickets_at_fixed_intervals() {
        let s = Schedule::new(200, Duration::from_secs(3), &[]);
        assert_eq!(s.total(), Some(600));
        assert_eq!(s.intended(0), Duration::ZERO);
        assert_eq!(s.intended(1), Duration::from_millis(5));
        assert_eq!(s.intended(599), Duration::from_millis(2995));
        let s = Schedule::new(3, Duration::from_millis(1500), &[]);
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
        let s = Schedule::new(10, Duration::from_secs(1), &[]);
        let claimed: Vec<_> = std::iter::from_fn(|| s.claim(Duration::ZERO)).collect();
        assert_eq!(claimed.len(), 10);
        assert!(claimed.windows(2).all(|w| w[0].intended < w[1].intended));
        assert!(claimed.iter().enumerate().all(|(i, t)| t.n == i as u64));
        assert_eq!(s.claim(Duration::from_secs(5)), None, "stays exhausted");
    }

    #[test]
    fn a_ticket_claimed_after_its_time_is_late() {
        let s = Schedule::new(10, Duration::from_secs(1), &[]);
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
        let s = Schedule::new(0, Duration::from_secs(2), &[]);
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

    /// Tickets whose intended start falls in each whole second.
    fn per_second(s: &Schedule) -> Vec<u64> {
        let mut seconds = Vec::new();
        for n in 0..s.total().unwrap() {
            let second = s.intended(n).as_secs() as usize;
            if seconds.len() <= second {
                seconds.resize(second + 1, 0);
            }
            seconds[second] += 1;
        }
        seconds
    }

    #[test]
    fn a_ramp_from_zero_follows_the_rate_integral() {
        // 0 → 100/s over 10 s: 500 tickets, n due at sqrt(n / 5) s.
        let s = Schedule::new(0, Duration::ZERO, &stages("10s:100"));
        assert_eq!(s.total(), Some(500));
        assert_eq!(s.intended(0), Duration::ZERO);
        assert_eq!(s.intended(125), Duration::from_secs(5));
        assert_eq!(s.intended(5), Duration::from_secs(1));
        // Second k holds the rate's integral over [k, k+1]: 5·(2k+1).
        let want: Vec<u64> = (0..10).map(|k| 5 * (2 * k + 1)).collect();
        assert_eq!(per_second(&s), want);
    }

    #[test]
    fn stages_hold_ramp_down_jump_and_pause() {
        // 0 → 200 over 2 s (200 tickets), hold 200 for 1 s (200), down to 0 over 2 s (200),
        // pause 1 s, jump to 100 and hold it for 1 s (100).
        let s = Schedule::new(
            0,
            Duration::ZERO,
            &stages("2s:200,1s:200,2s:0,1s:0,0s:100,1s:100"),
        );
        assert_eq!(s.total(), Some(700));
        assert_eq!(per_second(&s), [50, 150, 200, 150, 50, 0, 100]);
        let all: Vec<_> = (0..700).map(|n| s.intended(n)).collect();
        assert!(all.windows(2).all(|w| w[0] <= w[1]), "in order");
        assert_eq!(
            s.intended(200),
            Duration::from_secs(2),
            "the hold starts on time"
        );
        assert_eq!(
            s.intended(600),
            Duration::from_secs(6),
            "after the pause and the jump"
        );
        assert!(
            s.intended(599) < Duration::from_secs(5),
            "nothing during the pause"
        );
    }

    #[test]
    fn a_constant_stage_matches_the_fixed_rate() {
        let ramp = Schedule::new(0, Duration::ZERO, &stages("0s:250,4s:250"));
        let fixed = Schedule::new(250, Duration::from_secs(4), &[]);
        assert_eq!(ramp.total(), fixed.total());
        for n in [0, 1, 17, 500, 999] {
            let (a, b) = (ramp.intended(n), fixed.intended(n));
            assert!(
                a.abs_diff(b) < Duration::from_micros(1),
                "{n}: {a:?} vs {b:?}"
            );
        }
    }
}
