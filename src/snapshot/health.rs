//! Passive health (outlier ejection): an endpoint that fails several times in a row is left out
//! for a while, longer each time, but never more than a share of its version at once.
//!
//! Atomics only; ejection ends lazily, when a pick finds the time has passed.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// When to eject an endpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutlierPolicy {
    /// Consecutive failures (connect errors, resets, timeouts, 5xx) that eject.
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long (at most 8×).
    pub base_ejection: Duration,
    /// At most this percentage of a version's endpoints is ejected at once (at least one
    /// endpoint always stays in).
    pub max_ejected_percent: u32,
}

/// Milliseconds on a process-wide monotonic clock; 0 is never a valid ejection deadline.
pub fn now_ms(now: Instant) -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(|| now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
    u64::try_from(now.saturating_duration_since(base).as_millis()).unwrap_or(u64::MAX)
}

/// The endpoints of one version currently ejected, shared by their cells.
#[derive(Debug, Default)]
pub struct VersionHealth {
    ejected: AtomicUsize,
}

/// One endpoint's passive health, and when it last turned ready (for slow start).
#[derive(Debug)]
pub struct Health {
    /// [`now_ms`] when the endpoint last turned ready; 0 when it was ready from the start.
    ready_since: AtomicU64,
    /// Whether the last published snapshot listed it as ready (written by the publisher only).
    ready: std::sync::atomic::AtomicBool,
    consecutive: AtomicU32,
    /// Deadline in [`now_ms`] milliseconds; 0 when not ejected.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    version: Arc<VersionHealth>,
    /// Active health check verdict (true until checks say otherwise), with the current streak:
    /// positive = consecutive passes, negative = consecutive failures.
    checked_healthy: std::sync::atomic::AtomicBool,
    streak: std::sync::atomic::AtomicI32,
}

impl Health {
    pub fn new(version: Arc<VersionHealth>) -> Self {
        Self {
            ready_since: AtomicU64::new(0),
            ready: std::sync::atomic::AtomicBool::new(false),
            consecutive: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            version,
            checked_healthy: std::sync::atomic::AtomicBool::new(true),
            streak: std::sync::atomic::AtomicI32::new(0),
        }
    }

    /// Whether the endpoint is ejected at `now` (ms); ends an expired ejection.
    #[inline]
    pub fn is_ejected(&self, now: u64) -> bool {
        // Relaxed throughout: these are routing hints; a request or two racing an ejection's
        // start or end is harmless.
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if until > now {
            return true;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.version.ejected.fetch_sub(1, Ordering::Relaxed);
        }
        false
    }

    /// A response below 500 came back.
    #[inline]
    pub fn success(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// A failure; returns true when it ejected the endpoint. `version_size` is how many routable
    /// endpoints the version has now. A `definitive` failure (the connection was refused: nothing
    /// listens there) ejects at once, as nginx's default `max_fails=1` would.
    pub fn failure(
        &self,
        now: u64,
        policy: &OutlierPolicy,
        version_size: usize,
        definitive: bool,
    ) -> bool {
        let failures = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if (failures < policy.consecutive_failures && !definitive) || self.is_ejected(now) {
            return false;
        }
        let max = (version_size * policy.max_ejected_percent as usize / 100).min(version_size - 1);
        let ejected = &self.version.ejected;
        if ejected.fetch_add(1, Ordering::Relaxed) >= max {
            ejected.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        let n = self
            .ejections
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
            .min(8);
        let length = u64::try_from((policy.base_ejection * n).as_millis()).unwrap_or(u64::MAX);
        self.ejected_until
            .store(now.saturating_add(length).max(1), Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        true
    }

    /// Records the endpoint's readiness in a new snapshot; a turn to ready at `now` (ms) starts
    /// its slow start, unless `initial` (the first endpoint set tidegate sees).
    pub fn set_ready(&self, ready: bool, now: u64, initial: bool) {
        let was = self.ready.swap(ready, Ordering::Relaxed);
        if ready && !was && !initial {
            self.ready_since.store(now, Ordering::Relaxed);
        }
    }

    /// The share of its full traffic the endpoint should get at `now` under a `slow_start` ramp
    /// (in ms): from 10% right after turning ready to 100% at the end.
    #[inline]
    pub fn ramp(&self, now: u64, slow_start: u64) -> f64 {
        let since = self.ready_since.load(Ordering::Relaxed);
        if slow_start == 0 || since == 0 || now >= since.saturating_add(slow_start) {
            return 1.0;
        }
        ((now - since.min(now)) as f64 / slow_start as f64).max(0.1)
    }

    /// Whether active health checks currently pass (true when they are off).
    #[inline]
    pub fn checked_healthy(&self) -> bool {
        self.checked_healthy.load(Ordering::Relaxed)
    }

    /// Records one active check; flips the verdict after `healthy` passes or `unhealthy`
    /// failures in a row. Returns the new verdict if it changed.
    pub fn record_check(&self, passed: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        let streak = self.streak.load(Ordering::Relaxed);
        let streak = match (passed, streak > 0) {
            (true, true) => streak.saturating_add(1),
            (true, false) => 1,
            (false, false) => streak.saturating_sub(1),
            (false, true) => -1,
        };
        self.streak.store(streak, Ordering::Relaxed);
        let now_healthy = self.checked_healthy();
        let flip = if now_healthy {
            -streak >= unhealthy as i32
        } else {
            streak >= healthy as i32
        };
        flip.then(|| {
            self.checked_healthy.store(!now_healthy, Ordering::Relaxed);
            !now_healthy
        })
    }

    /// Whether ejected now, without ending anything (for display).
    pub fn ejected_at(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }
}

impl Drop for Health {
    /// An endpoint that leaves while ejected gives its place in the version's count back:
    /// otherwise every pod deleted while ejected would hold one for good, and once they reached
    /// `max_ejected_percent` the version could never eject again.
    fn drop(&mut self) {
        // `&mut self`: no `is_ejected` can race this (it zeroes the deadline as it gives back).
        if *self.ejected_until.get_mut() != 0 {
            self.version.ejected.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_time() {
        let version = Arc::new(VersionHealth::default());
        let h = Health::new(version.clone());
        assert!(!h.failure(1_000, &policy(), 4, false));
        h.success();
        let refused = Health::new(version.clone());
        assert!(
            refused.failure(1_000, &policy(), 4, true),
            "a refused connect ejects at once"
        );
        assert!(!refused.is_ejected(20_000));
        assert!(!h.failure(1_000, &policy(), 4, false));
        assert!(!h.failure(1_000, &policy(), 4, false));
        assert!(
            h.failure(1_000, &policy(), 4, false),
            "the third in a row ejects"
        );
        assert!(h.is_ejected(10_999));
        assert!(
            !h.is_ejected(11_000),
            "the first ejection lasts the base time"
        );
        assert_eq!(version.ejected.load(Ordering::Relaxed), 0);
        for _ in 0..3 {
            h.failure(20_000, &policy(), 4, false);
        }
        assert!(
            h.is_ejected(39_999) && !h.is_ejected(40_000),
            "the second lasts twice as long"
        );
    }

    #[test]
    fn active_checks_flip_after_streaks() {
        let h = Health::new(Arc::default());
        assert!(h.checked_healthy());
        assert_eq!(h.record_check(false, 2, 3), None);
        assert_eq!(h.record_check(false, 2, 3), None);
        assert_eq!(h.record_check(true, 2, 3), None, "a pass breaks the streak");
        for _ in 0..2 {
            assert_eq!(h.record_check(false, 2, 3), None);
        }
        assert_eq!(
            h.record_check(false, 2, 3),
            Some(false),
            "three failures in a row"
        );
        assert_eq!(h.record_check(true, 2, 3), None);
        assert_eq!(
            h.record_check(true, 2, 3),
            Some(true),
            "two passes in a row"
        );
    }

    #[test]
    fn slow_start_ramps_from_a_tenth_to_full() {
        let h = Health::new(Arc::default());
        h.set_ready(true, 5_000, true);
        assert_eq!(h.ramp(5_000, 10_000), 1.0, "ready from the start: no ramp");
        h.set_ready(false, 6_000, false);
        h.set_ready(true, 10_000, false);
        assert_eq!(h.ramp(10_000, 10_000), 0.1);
        assert_eq!(h.ramp(15_000, 10_000), 0.5);
        assert_eq!(h.ramp(20_000, 10_000), 1.0);
        assert_eq!(h.ramp(10_000, 0), 1.0, "off");
        h.set_ready(true, 30_000, false);
        assert_eq!(
            h.ramp(20_000, 10_000),
            1.0,
            "staying ready does not restart the ramp"
        );
    }

    #[test]
    fn never_more_than_the_share_and_never_the_last_one() {
        let version = Arc::new(VersionHealth::default());
        let cells: Vec<_> = (0..4).map(|_| Health::new(version.clone())).collect();
        let ejected = cells
            .iter()
            .filter(|h| {
                let mut ejected = false;
                for _ in 0..3 {
                    ejected |= h.failure(1_000, &policy(), 4, false);
                }
                ejected
            })
            .count();
        assert_eq!(ejected, 2, "50% of 4");
        let lone = Health::new(Arc::new(VersionHealth::default()));
        assert!(
            (0..10).all(|_| !lone.failure(1_000, &policy(), 1, true)),
            "a lone endpoint stays in"
        );
    }

    #[test]
    fn an_endpoint_that_leaves_while_ejected_frees_its_place() {
        let version = Arc::new(VersionHealth::default());
        // Two of four may be ejected at once (50%).
        for _ in 0..3 {
            let gone = Health::new(version.clone());
            assert!(
                gone.failure(1_000, &policy(), 4, true),
                "ejected, then deleted"
            );
            drop(gone);
        }
        assert_eq!(version.ejected.load(Ordering::Relaxed), 0);
        let expired = Health::new(version.clone());
        assert!(expired.failure(1_000, &policy(), 4, true));
        assert!(
            !expired.is_ejected(60_000),
            "the ejection ended and gave its place back"
        );
        drop(expired);
        assert_eq!(
            version.ejected.load(Ordering::Relaxed),
            0,
            "given back once"
        );
        let next = Health::new(version.clone());
        assert!(
            next.failure(1_000, &policy(), 4, true),
            "the version can still eject"
        );
    }
}
