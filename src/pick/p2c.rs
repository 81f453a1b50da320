//! Power of two choices on least in-flight requests.
//!
//! Two uniform samples and the less loaded one wins: the maximum load falls from `ln n / ln ln n` to
//! `ln ln n / ln 2` over random choice (Mitzenmacher, "The Power of Two Choices in Randomized Load
//! Balancing", 2001; also cited by tower's `p2c` module), at the cost of two atomic loads.

use std::sync::Arc;

use fastrand::Rng;

use crate::snapshot::Endpoint;

#[inline]
fn avoided(ep: &Arc<Endpoint>, avoid: &[Arc<Endpoint>]) -> bool {
    avoid.iter().any(|a| Arc::ptr_eq(a, ep))
}

/// An endpoint chosen, and whether an ejected or unhealthy one was passed over on the way (the
/// access log's `EJ`).
pub(super) struct Choice<'s> {
    pub endpoint: &'s Arc<Endpoint>,
    pub passed_over: bool,
}

/// Picks from `endpoints`, never one in `avoid`, and an ejected one only when nothing else is
/// left (the panic threshold: better a suspect endpoint than a 503); `None` when nothing is left.
/// `now` is [`crate::snapshot::health::now_ms`].
#[inline]
pub(super) fn choose<'s>(
    endpoints: &'s [Arc<Endpoint>],
    rng: &mut Rng,
    avoid: &[Arc<Endpoint>],
    now: u64,
    slow_start: u64,
) -> Option<Choice<'s>> {
    let chosen = |endpoint, passed_over| Choice {
        endpoint,
        passed_over,
    };
    let usable = |ep: &Arc<Endpoint>| {
        !avoided(ep, avoid) && ep.health().checked_healthy() && !ep.health().is_ejected(now)
    };
    let n = endpoints.len();
    if n < 2 {
        return endpoints
            .first()
            .filter(|ep| !avoided(ep, avoid))
            .map(|ep| chosen(ep, false));
    }
    let i = rng.usize(..n);
    let mut j = rng.usize(..n - 1);
    if j >= i {
        j += 1;
    }
    let (a, b) = (&endpoints[i], &endpoints[j]);
    match (usable(a), usable(b)) {
        (true, true) => {
            let (first, second) = if b.in_flight() < a.in_flight() {
                (b, a)
            } else {
                (a, b)
            };
            // Slow start: a newly ready endpoint wins only its ramp's share of the draws.
            let ramp = first.health().ramp(now, slow_start);
            if ramp < 1.0 && rng.f64() >= ramp {
                Some(chosen(second, false))
            } else {
                Some(chosen(first, false))
            }
        }
        // One sample was unusable: passed over when it was for its health, not this request's
        // own earlier failure there.
        (true, false) => Some(chosen(a, !avoided(b, avoid))),
        (false, true) => Some(chosen(b, !avoided(a, avoid))),
        // Rare (retries, ejections): scan the rest from a random start.
        (false, false) => {
            let start = rng.usize(..n);
            let ring = || (0..n).map(move |k| &endpoints[(start + k) % n]);
            let passed_over = !avoided(a, avoid) || !avoided(b, avoid);
            ring()
                .find(|ep| usable(ep))
                .or_else(|| ring().find(|ep| !avoided(ep, avoid)))
                .map(|ep| chosen(ep, passed_over))
        }
    }
}
