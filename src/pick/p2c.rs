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

/// Picks from `endpoints`, never one in `avoid`; `None` when nothing is left.
#[inline]
pub(super) fn choose<'s>(
    endpoints: &'s [Arc<Endpoint>],
    rng: &mut Rng,
    avoid: &[Arc<Endpoint>],
) -> Option<&'s Arc<Endpoint>> {
    let n = endpoints.len();
    if n < 2 {
        return endpoints.first().filter(|ep| !avoided(ep, avoid));
    }
    let i = rng.usize(..n);
    let mut j = rng.usize(..n - 1);
    if j >= i {
        j += 1;
    }
    let (a, b) = (&endpoints[i], &endpoints[j]);
    match (avoided(a, avoid), avoided(b, avoid)) {
        (false, false) if b.in_flight() < a.in_flight() => Some(b),
        (false, _) => Some(a),
        (true, false) => Some(b),
        // Only on retries: both samples already failed, scan the rest from a random start.
        (true, true) => {
            let start = rng.usize(..n);
            (0..n)
                .map(|k| &endpoints[(start + k) % n])
                .find(|ep| !avoided(ep, avoid))
        }
    }
}
