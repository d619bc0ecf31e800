//! Choosing an endpoint (SPEC §4): error-feedback weighted random for the first attempt,
//! round-robin after it. Pure code over error counts, so it is unit-tested without
//! sockets; the counts themselves live on each `upstream::Upstream` (read through
//! `Upstreams::error_counts`), and the health checks' verdicts come in as a mask
//! (`Upstreams::down_mask`, from `checks.rs`).

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
///
/// `down[i]` is endpoint i's health-check verdict (empty = no checks): endpoints marked
/// down take no part while at least one is up; with all of them down every one does,
/// since the checks may be wrong and the request may still succeed.
pub fn first_choice(errors: &[u32], down: &[bool], rng: &mut impl Rng) -> usize {
    debug_assert!(!errors.is_empty());
    let candidates = Candidates::new(errors.len(), down);
    let mut eligible = candidates.iter().map(|i| (i, errors[i]));
    if eligible.clone().all(|(_, e)| e == 0) {
        let n = eligible.clone().count();
        return eligible.nth(rng.gen_range(0..n)).map_or(0, |(i, _)| i);
    }
    let max = eligible
        .clone()
        .map(|(_, e)| (1.0 + f64::from(e)).powf(1.5).floor())
        .fold(1.0_f64, f64::max);
    let weight = |e: u32| (max / (1.0 + f64::from(e))).ceil().max(1.0);
    let total: f64 = eligible.clone().map(|(_, e)| weight(e)).sum();
    let mut point = rng.gen_range(0.0..total);
    let mut last = 0;
    for (i, e) in eligible {
        point -= weight(e);
        if point < 0.0 {
            return i;
        }
        last = i;
    }
    last
}

/// The endpoint for the attempt after one on `previous`: the next in round-robin order
/// among those `first_choice` would consider.
pub fn next_after(previous: usize, endpoints: usize, down: &[bool]) -> usize {
    let candidates = Candidates::new(endpoints, down);
    (1..=endpoints)
        .map(|step| (previous + step) % endpoints)
        .find(|&i| candidates.contains(i))
        .unwrap_or(previous)
}

/// The endpoints a choice is made among: those not marked down, or all of them when
/// none is up (or there are no checks).
#[derive(Clone, Copy)]
struct Candidates<'a> {
    count: usize,
    /// `None`: every endpoint.
    down: Option<&'a [bool]>,
}

impl<'a> Candidates<'a> {
    fn new(count: usize, down: &'a [bool]) -> Self {
        let some_up = (0..count).any(|i| !down.get(i).copied().unwrap_or(false));
        let filtered = down.iter().any(|&d| d) && some_up;
        Candidates {
            count,
            down: filtered.then_some(down),
        }
    }

    fn contains(&self, i: usize) -> bool {
        self.down
            .is_none_or(|down| !down.get(i).copied().unwrap_or(false))
    }

    fn iter(self) -> impl Iterator<Item = usize> + Clone + 'a {
        (0..self.count).filter(move |&i| self.contains(i))
    }
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
            counts[first_choice(errors, &[], &mut rng)] += 1;
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
        assert_eq!(first_choice(&[5], &[], &mut rng), 0);
    }

    #[test]
    fn weights_follow_the_formula() {
        // e = [1, 3]: M = max(floor(2^1.5)=2, floor(4^1.5)=8) = 8; w = [4, 2].
        let s = shares(&[1, 3], 60_000);
        assert!((s[0] - 4.0 / 6.0).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn round_robin_wraps() {
        assert_eq!(next_after(0, 3, &[]), 1);
        assert_eq!(next_after(2, 3, &[]), 0);
        assert_eq!(next_after(0, 1, &[]), 0);
    }

    fn masked_shares(errors: &[u32], down: &[bool], draws: usize) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(11);
        let mut counts = vec![0usize; errors.len()];
        for _ in 0..draws {
            counts[first_choice(errors, down, &mut rng)] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn endpoints_marked_down_are_never_chosen_while_one_is_up() {
        let s = masked_shares(&[0, 0, 0], &[false, true, false], 30_000);
        assert_eq!(s[1], 0.0, "{s:?}");
        assert!(
            (s[0] - 0.5).abs() < 0.02 && (s[2] - 0.5).abs() < 0.02,
            "{s:?}"
        );
        // With error counts too, weights are computed among the endpoints that are up.
        let s = masked_shares(&[8, 0, 0], &[false, true, false], 30_000);
        assert_eq!(s[1], 0.0, "{s:?}");
        assert!(s[0] > 0.0 && s[0] < 0.2, "{s:?}");
        // A failing endpoint that is the only one up is still chosen.
        let s = masked_shares(&[30, 0], &[false, true], 1_000);
        assert_eq!(s, vec![1.0, 0.0]);
    }

    #[test]
    fn all_down_is_the_same_as_no_checks() {
        let s = masked_shares(&[0, 0], &[true, true], 20_000);
        assert!((s[0] - 0.5).abs() < 0.02, "{s:?}");
        let s = masked_shares(&[0, 0, 8], &[true, true, true], 60_000);
        assert!((s[2] - 3.0 / 57.0).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn round_robin_skips_endpoints_marked_down() {
        let down = [false, true, true, false];
        assert_eq!(next_after(0, 4, &down), 3);
        assert_eq!(next_after(3, 4, &down), 0);
        // The only one up: every retry goes back to it.
        assert_eq!(next_after(2, 3, &[true, false, true]), 1);
        assert_eq!(next_after(1, 3, &[true, false, true]), 1);
        // All down: plain round-robin.
        assert_eq!(next_after(1, 3, &[true, true, true]), 2);
    }
}
