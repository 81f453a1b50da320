//! Choosing an endpoint for a request: [`route`] applies the precedence (canary header, then sticky
//! cookie, then the canary split), then power-of-two-choices within the role or version.
//!
//! Pure arithmetic over a borrowed [`Snapshot`]: no await, no lock, no allocation, no hashing. The
//! caller owns the RNG so tests can inject a seeded one.

mod p2c;
mod split;
pub mod sticky;

use std::sync::Arc;

use http::HeaderMap;

use crate::snapshot::{health, Endpoint, EndpointState, Listed, Role, Snapshot};

pub use fastrand::Rng;

/// What a request brings to routing.
#[derive(Clone, Copy)]
pub struct Hints<'r> {
    /// Its headers: the canary header and the sticky cookie are read from them.
    pub headers: &'r HeaderMap,
    /// Endpoints this request already failed on.
    pub avoid: &'r [Arc<Endpoint>],
    /// Milliseconds on the health clock (see [`health::now_ms`]).
    pub now: u64,
}

/// Where a request goes.
pub struct Route<'s> {
    pub endpoint: &'s Arc<Endpoint>,
    /// The role that serves (the other role serves when the chosen one has nothing left).
    pub role: Role,
    /// The client is not (or no longer) pinned to the version that serves: give it the cookie.
    pub set_cookie: bool,
    /// What decided, for the access log.
    pub steer: Steer,
}

/// What decided a route beyond the split, and what it passed over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Steer {
    /// The canary header chose the role.
    pub overridden: bool,
    /// The sticky cookie chose the version.
    pub pinned: bool,
    /// An ejected or unhealthy endpoint was passed over.
    pub passed_over: bool,
}

/// An endpoint picked within a role or version.
pub struct Picked<'s> {
    pub endpoint: &'s Arc<Endpoint>,
    pub role: Role,
    /// An ejected or unhealthy endpoint was passed over on the way.
    pub passed_over: bool,
}

impl<'s> Picked<'s> {
    fn new(choice: p2c::Choice<'s>, role: Role) -> Self {
        Self {
            endpoint: choice.endpoint,
            role,
            passed_over: choice.passed_over,
        }
    }
}

/// The one routing decision: a canary header's `always`/`never` beats the sticky cookie, which
/// beats the split; within the chosen side, power-of-two-choices. When this request has failed on
/// every routable endpoint, a lower tier serves (see [`pick_lower_tier`]). `None` only when
/// nothing listed is left outside `hints.avoid`.
#[inline]
pub fn route<'s>(snapshot: &'s Snapshot, hints: &Hints<'_>, rng: &mut Rng) -> Option<Route<'s>> {
    let sticky = snapshot.settings().sticky;
    let requested = snapshot.requested_role(hints.headers);
    let pinned = (sticky && requested.is_none())
        .then(|| sticky::pinned_version(hints.headers))
        .flatten();
    let by_pin =
        pinned.and_then(|version| pick_version(snapshot, version, rng, hints.avoid, hints.now));
    let was_pinned = by_pin.is_some();
    let picked = by_pin
        .or_else(|| pick_role(snapshot, rng, hints.avoid, requested, hints.now))
        .or_else(|| pick_lower_tier(snapshot, rng, hints.avoid))?;
    let set_cookie = sticky && pinned != Some(picked.endpoint.version().as_str());
    Some(Route {
        endpoint: picked.endpoint,
        role: picked.role,
        set_cookie,
        steer: Steer {
            overridden: requested.is_some(),
            pinned: was_pinned,
            passed_over: picked.passed_over,
        },
    })
}

/// Every routable endpoint has failed this request (refused, say: pods that have exited while the
/// EndpointSlice still lists them ready): the next tier down serves rather than a 502, warming
/// endpoints first, then terminating ones. Rare (a retry path), so it may scan and allocate.
#[cold]
fn pick_lower_tier<'s>(
    snapshot: &'s Snapshot,
    rng: &mut Rng,
    avoid: &[Arc<Endpoint>],
) -> Option<Picked<'s>> {
    if avoid.is_empty() {
        return None;
    }
    let below = EndpointState::TIERS
        .into_iter()
        .skip_while(|tier| *tier != snapshot.routable_state())
        .skip(1);
    for tier in below {
        let candidates: Vec<&Listed> = snapshot
            .listed()
            .iter()
            .filter(|l| l.state == tier && !avoid.iter().any(|a| Arc::ptr_eq(a, &l.endpoint)))
            .collect();
        if !candidates.is_empty() {
            let chosen = candidates[rng.usize(..candidates.len())];
            return Some(Picked {
                endpoint: &chosen.endpoint,
                role: chosen.role,
                passed_over: false,
            });
        }
    }
    None
}

/// Picks an endpoint, skipping any in `avoid` (endpoints this request already failed to reach).
///
/// The split decides the preferred role; if it has nothing routable (left), the other role serves,
/// so a request fails only when nothing at all is routable.
#[inline]
pub fn pick<'s>(
    snapshot: &'s Snapshot,
    rng: &mut Rng,
    avoid: &[Arc<Endpoint>],
) -> Option<&'s Arc<Endpoint>> {
    let now = health::now_ms(std::time::Instant::now());
    pick_role(snapshot, rng, avoid, None, now).map(|p| p.endpoint)
}

/// Like [`pick`], but a `requested` role (from the canary header) replaces the split's choice;
/// the other role still serves if the requested one has nothing routable.
#[inline]
pub fn pick_role<'s>(
    snapshot: &'s Snapshot,
    rng: &mut Rng,
    avoid: &[Arc<Endpoint>],
    requested: Option<Role>,
    now: u64,
) -> Option<Picked<'s>> {
    let preferred = match requested {
        Some(role) => role,
        None => split::role(snapshot.canary_threshold(), rng.u32(..)),
    };
    let other = match preferred {
        Role::Canary => Role::Stable,
        Role::Stable => Role::Canary,
    };
    let slow = slow_start_ms(snapshot);
    p2c::choose(snapshot.routable(preferred), rng, avoid, now, slow)
        .map(|choice| Picked::new(choice, preferred))
        .or_else(|| {
            p2c::choose(snapshot.routable(other), rng, avoid, now, slow)
                .map(|choice| Picked::new(choice, other))
        })
}

/// An endpoint of the version a sticky client is pinned to, if that version is routable.
#[inline]
pub fn pick_version<'s>(
    snapshot: &'s Snapshot,
    version: &str,
    rng: &mut Rng,
    avoid: &[Arc<Endpoint>],
    now: u64,
) -> Option<Picked<'s>> {
    let group = snapshot.version_group(version)?;
    p2c::choose(&group.endpoints, rng, avoid, now, slow_start_ms(snapshot))
        .map(|choice| Picked::new(choice, group.role))
}

#[inline]
fn slow_start_ms(snapshot: &Snapshot) -> u64 {
    u64::try_from(snapshot.settings().slow_start.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::snapshot::{EndpointSpec, Settings, Split, Version, Weight};
    use crate::upstream::Protocol;

    fn endpoint(addr: &str, version: &str) -> Arc<Endpoint> {
        let metrics = Metrics::new();
        let v = Version::new(version).unwrap();
        let spec = EndpointSpec {
            address: addr.parse().unwrap(),
            version: v.clone(),
            state: EndpointState::Ready,
            name: None,
            image: None,
            protocol: None,
        };
        Arc::new(Endpoint::new(
            &spec,
            Protocol::Http1,
            Arc::new(metrics.version(&v)),
            Arc::default(),
        ))
    }

    fn snapshot(stable: usize, canary: usize, split: Split) -> Snapshot {
        snapshot_with(stable, canary, split, Settings::default())
    }

    fn snapshot_with(stable: usize, canary: usize, split: Split, settings: Settings) -> Snapshot {
        let mut listed = Vec::new();
        for i in 0..stable {
            listed.push(Listed {
                endpoint: endpoint(&format!("127.0.1.{}:80", i + 1), "v1"),
                role: Role::Stable,
                state: EndpointState::Ready,
            });
        }
        for i in 0..canary {
            listed.push(Listed {
                endpoint: endpoint(&format!("127.0.2.{}:80", i + 1), "v2"),
                role: Role::Canary,
                state: EndpointState::Ready,
            });
        }
        Snapshot::build(1, listed, split, None, settings)
    }

    fn weighted(percent: f64) -> Split {
        Split::Weighted(Weight::new(percent).unwrap())
    }

    fn canary_share(snap: &Snapshot, draws: usize, seed: u64) -> f64 {
        let mut rng = Rng::with_seed(seed);
        let canary = (0..draws)
            .filter(|_| pick(snap, &mut rng, &[]).unwrap().version().as_str() == "v2")
            .count();
        canary as f64 / draws as f64
    }

    #[test]
    fn weight_sets_the_canary_share_regardless_of_pod_counts() {
        // 1 canary pod of 4 would get 25% from a Service; the weight says 10%.
        let snap = snapshot(3, 1, weighted(10.0));
        let n = 100_000;
        let share = canary_share(&snap, n, 7);
        // 5 standard deviations of a binomial proportion at p = 0.1.
        let tolerance = 5.0 * (0.1f64 * 0.9 / n as f64).sqrt();
        assert!(
            (share - 0.10).abs() < tolerance,
            "canary share {share} must be 10% ± {tolerance}"
        );
    }

    #[test]
    fn count_split_shares_by_ready_endpoints() {
        let snap = snapshot(3, 1, Split::ByEndpointCount);
        let n = 100_000;
        let share = canary_share(&snap, n, 11);
        let tolerance = 5.0 * (0.25f64 * 0.75 / n as f64).sqrt();
        assert!(
            (share - 0.25).abs() < tolerance,
            "canary share {share} must be 25% ± {tolerance}"
        );
    }

    #[test]
    fn empty_role_falls_back_to_the_other() {
        let only_stable = snapshot(2, 0, weighted(100.0));
        assert_eq!(canary_share(&only_stable, 1000, 1), 0.0);
        let only_canary = snapshot(0, 2, weighted(0.0));
        assert_eq!(canary_share(&only_canary, 1000, 1), 1.0);
        let nothing = snapshot(0, 0, weighted(50.0));
        assert!(pick(&nothing, &mut Rng::with_seed(1), &[]).is_none());
    }

    #[test]
    fn avoided_endpoints_are_never_picked_while_others_exist() {
        let snap = snapshot(3, 0, weighted(0.0));
        let failed = snap.routable(Role::Stable)[1].clone();
        let mut rng = Rng::with_seed(3);
        for _ in 0..1000 {
            let ep = pick(&snap, &mut rng, std::slice::from_ref(&failed)).unwrap();
            assert!(
                !Arc::ptr_eq(ep, &failed),
                "a failed endpoint must not be retried"
            );
        }
        let all: Vec<_> = snap.routable(Role::Stable).to_vec();
        assert!(pick(&snap, &mut rng, &all).is_none());
    }

    #[test]
    fn a_route_says_when_it_passed_over_an_unhealthy_endpoint_and_what_steered_it() {
        let snap = snapshot(2, 0, weighted(0.0));
        let sick = snap.routable(Role::Stable)[0].clone();
        sick.health().record_check(false, 1, 1);
        let mut rng = Rng::with_seed(7);
        let headers = HeaderMap::new();
        let hints = Hints {
            headers: &headers,
            avoid: &[],
            now: 0,
        };
        let mut passed_over = 0;
        for _ in 0..200 {
            let route = route(&snap, &hints, &mut rng).unwrap();
            assert!(!Arc::ptr_eq(route.endpoint, &sick));
            assert!(!route.steer.overridden && !route.steer.pinned);
            passed_over += usize::from(route.steer.passed_over);
        }
        // Two endpoints: every draw samples both, so every route passed the sick one over.
        assert_eq!(passed_over, 200);
        // A failed endpoint of the request's own is avoided, not passed over for its health.
        sick.health().record_check(true, 1, 1);
        let avoid = [sick.clone()];
        let retry = Hints {
            avoid: &avoid,
            ..hints
        };
        assert!(!route(&snap, &retry, &mut rng).unwrap().steer.passed_over);
    }

    #[test]
    fn when_every_ready_endpoint_failed_a_warming_one_serves_then_a_terminating_one() {
        let listed = |addr: &str, state| Listed {
            endpoint: endpoint(addr, "v1"),
            role: Role::Stable,
            state,
        };
        let snap = Snapshot::build(
            1,
            vec![
                listed("127.0.1.1:80", EndpointState::Ready),
                listed("127.0.1.2:80", EndpointState::Ready),
                listed("127.0.1.3:80", EndpointState::Warming),
                listed("127.0.1.4:80", EndpointState::Terminating),
            ],
            weighted(0.0),
            None,
            Settings::default(),
        );
        let of = |i: usize| snap.listed()[i].endpoint.clone();
        let headers = HeaderMap::new();
        let hints = |avoid| Hints {
            headers: &headers,
            avoid,
            now: 0,
        };
        let mut rng = Rng::with_seed(5);
        let r = route(&snap, &hints(&[]), &mut rng).unwrap();
        assert!(
            snap.routable(Role::Stable)
                .iter()
                .any(|e| Arc::ptr_eq(e, r.endpoint)),
            "ready endpoints serve while they can"
        );
        let failed = [of(0), of(1)];
        let r = route(&snap, &hints(&failed), &mut rng).unwrap();
        assert!(Arc::ptr_eq(r.endpoint, &of(2)), "then the warming one");
        let failed = [of(0), of(1), of(2)];
        let r = route(&snap, &hints(&failed), &mut rng).unwrap();
        assert!(Arc::ptr_eq(r.endpoint, &of(3)), "then the terminating one");
        let failed = [of(0), of(1), of(2), of(3)];
        assert!(route(&snap, &hints(&failed), &mut rng).is_none());
    }

    #[test]
    fn a_requested_role_overrides_the_split_but_never_strands_a_request() {
        let snap = snapshot(3, 1, weighted(0.0));
        let mut rng = Rng::with_seed(9);
        for _ in 0..100 {
            let Picked {
                endpoint: ep, role, ..
            } = pick_role(&snap, &mut rng, &[], Some(Role::Canary), 0).unwrap();
            assert_eq!(
                ep.version().as_str(),
                "v2",
                "`always` goes to the canary at weight 0"
            );
            assert_eq!(role, Role::Canary);
        }
        let only_stable = snapshot(2, 0, weighted(100.0));
        let Picked {
            endpoint: ep, role, ..
        } = pick_role(&only_stable, &mut rng, &[], Some(Role::Canary), 0).unwrap();
        assert_eq!(
            ep.version().as_str(),
            "v1",
            "no canary endpoint: stable serves"
        );
        assert_eq!(
            role,
            Role::Stable,
            "the role reported is the one that served"
        );
    }

    #[test]
    fn a_pinned_version_is_served_while_routable() {
        let snap = snapshot(3, 1, weighted(50.0));
        let mut rng = Rng::with_seed(4);
        for _ in 0..100 {
            let Picked {
                endpoint: ep, role, ..
            } = pick_version(&snap, "v2", &mut rng, &[], 0).unwrap();
            assert_eq!((ep.version().as_str(), role), ("v2", Role::Canary));
            let Picked {
                endpoint: ep, role, ..
            } = pick_version(&snap, "v1", &mut rng, &[], 0).unwrap();
            assert_eq!((ep.version().as_str(), role), ("v1", Role::Stable));
        }
        assert!(
            pick_version(&snap, "v9", &mut rng, &[], 0).is_none(),
            "gone: re-pick"
        );
    }

    #[test]
    fn the_canary_header_beats_the_cookie_which_beats_the_split() {
        let sticky = Settings {
            sticky: true,
            ..Settings::default()
        };
        let snap = snapshot_with(3, 1, weighted(0.0), sticky)
            .with_canary_header(Some(http::HeaderName::from_static("x-canary")));
        let hints = |headers| Hints {
            headers,
            avoid: &[],
            now: 0,
        };
        let mut rng = Rng::with_seed(8);
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, http::HeaderValue::from_static(v));
            }
            h
        };
        let cookie = ("cookie", "tidegate-version=v2");
        let pinned = headers(&[cookie]);
        let r = route(&snap, &hints(&pinned), &mut rng).unwrap();
        assert_eq!(
            r.endpoint.version().as_str(),
            "v2",
            "the cookie beats the split"
        );
        assert!(!r.set_cookie, "already pinned to what served");
        let overridden = headers(&[cookie, ("x-canary", "never")]);
        let r = route(&snap, &hints(&overridden), &mut rng).unwrap();
        assert_eq!(
            r.endpoint.version().as_str(),
            "v1",
            "the header beats the cookie"
        );
        assert!(r.set_cookie, "re-pinned to what served");
        let fresh = headers(&[]);
        let r = route(&snap, &hints(&fresh), &mut rng).unwrap();
        assert_eq!(
            r.endpoint.version().as_str(),
            "v1",
            "weight 0: the split says stable"
        );
        assert!(r.set_cookie);
    }

    #[test]
    fn least_loaded_of_two_wins() {
        let snap = snapshot(2, 0, weighted(0.0));
        let busy = snap.routable(Role::Stable)[0].clone();
        let _load: Vec<_> = (0..5).map(|_| busy.begin()).collect();
        let mut rng = Rng::with_seed(5);
        for _ in 0..100 {
            let ep = pick(&snap, &mut rng, &[]).unwrap();
            assert!(
                !Arc::ptr_eq(ep, &busy),
                "with two endpoints p2c must prefer the idle one"
            );
        }
    }
}
