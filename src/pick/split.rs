//! The canary decision: one 32-bit random draw compared against the snapshot's precomputed threshold.

use crate::snapshot::Role;

/// The preferred role for a request with random `draw`, given a threshold in `0..=2^32`.
#[inline]
pub(super) fn role(canary_threshold: u64, draw: u32) -> Role {
    if u64::from(draw) < canary_threshold {
        Role::Canary
    } else {
        Role::Stable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ALL_DRAWS;

    #[test]
    fn threshold_bounds_are_exact() {
        assert_eq!(role(0, 0), Role::Stable, "weight 0 never picks the canary");
        assert_eq!(
            role(ALL_DRAWS, u32::MAX),
            Role::Canary,
            "weight 100 always picks it"
        );
        assert_eq!(role(ALL_DRAWS / 2, u32::MAX / 2), Role::Canary);
        assert_eq!(role(ALL_DRAWS / 2, u32::MAX / 2 + 1), Role::Stable);
    }
}
