//! Choosing an endpoint (SPEC §4): error-feedback weighted random for the first attempt,
//! round-robin after it. Pure code over error counts, so it is unit-tested without
//! sockets; the counts themselves live in `upstream::Endpoints`.

use rand::Rng;

/// Picks the endpoint for a request's first attempt.
///
/// With every count at zero the choice is uniform. Otherwise weights fall steeply with
/// the error count, by the original ServiceQ formula:
/// `M = max_j floor((1+e_j)^1.5)`, `w_i = ceil(M / (1+e_i))`.
/// A node with `e` errors keeps a share of about `1/(1+e)` of a healthy node's, and
/// the healthy nodes' weight grows with the worst node's count, so a node that keeps
/// failing fades out within a few requests and comes back as soon as it succeeds
/// (a success resets its count).
pub fn first_choice(errors: &[u32], rng: &mut impl Rng) -> usize {
    debug_assert!(!errors.is_empty());
    if errors.iter().all(|&e| e == 0) {
        return rng.gen_range(0..errors.len());
    }
    let max = errors
        .iter()
        .map(|&e| (1.0 + f64::from(e)).powf(1.5).floor())
        .fold(1.0_f64, f64::max);
    let weight = |e: u32| (max / (1.0 + f64::from(e))).ceil().max(1.0);
    let total: f64 = errors.iter().map(|&e| weight(e)).sum();
    let mut point = rng.gen_range(0.0..total);
    for (i, &e) in errors.iter().enumerate() {
        point -= weight(e);
        if point < 0.0 {
            return i;
        }
    }
    errors.len() - 1
}

/// The endpoint for the attempt after one on `previous`.
pub fn next_after(previous: usize, endpoints: usize) -> usize {
    (previous + 1) % endpoints
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn shares(errors: &[u32], draws: usize) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0usize; errors.len()];
        for _ in 0..draws {
            counts[first_choice(errors, &mut rng)] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn healthy_cluster_is_uniform() {
        for share in shares(&[0, 0, 0, 0], 40_000) {
            assert!((share - 0.25).abs() < 0.02, "{share}");
        }
    }

    #[test]
    fn failing_node_share_collapses_as_errors_grow() {
        // The seed formula: e = [0, 0, 8] → M = floor(9^1.5) = 27,
        // weights 27, 27, 3 → the failing node gets 3/57.
        let s = shares(&[0, 0, 8], 60_000);
        assert!((s[2] - 3.0 / 57.0).abs() < 0.01, "{s:?}");
        let worse = shares(&[0, 0, 30], 60_000);
        assert!(worse[2] < 0.02, "{worse:?}");
    }

    #[test]
    fn single_node_is_always_chosen() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(first_choice(&[5], &mut rng), 0);
    }

    #[test]
    fn weights_follow_the_formula() {
        // e = [1, 3]: M = max(floor(2^1.5)=2, floor(4^1.5)=8) = 8; w = [4, 2].
        let s = shares(&[1, 3], 60_000);
        assert!((s[0] - 4.0 / 6.0).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn round_robin_wraps() {
        assert_eq!(next_after(0, 3), 1);
        assert_eq!(next_after(2, 3), 0);
        assert_eq!(next_after(0, 1), 0);
    }
}
