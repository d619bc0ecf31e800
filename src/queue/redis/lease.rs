//! The replay lease, as this instance sees it: pure decisions, no I/O.
//!
//! The engine holds the truth (`sq:{NAME}:lease` with a PX expiry). Locally the lease
//! counts as ours only until `sent + TTL − drift`, where `sent` is when the command
//! that set or renewed it was *sent*: the engine started its TTL later than that, so
//! our deadline falls before the engine's. The drift allowance (1 % + 2 ms, as in
//! Redlock) covers the two clocks running at slightly different rates. The monotonic
//! clock keeps running while the process is stopped (SIGSTOP), so a replayer that
//! wakes after its TTL sees at once that its lease is gone.

use std::time::{Duration, Instant};

use super::scripts::LeaseReply;
use crate::shared_queue::LeaseState;

/// A lease this instance holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The value stored in the lease key: `"<fence> <instance id>"`. Every write made
    /// under the lease carries it, and the scripts compare it with the key.
    pub value: String,
    pub fence: u64,
    pub valid_until: Instant,
}

impl Held {
    pub fn usable(&self, now: Instant) -> bool {
        now < self.valid_until
    }
}

/// Splits a lease value into its fence number and the holder's instance id.
pub fn parse_value(value: &str) -> Option<(u64, &str)> {
    let (fence, who) = value.split_once(' ')?;
    Some((fence.parse().ok()?, who))
}

/// Until when a lease set or renewed by a command sent at `sent` is surely ours.
pub fn valid_until(sent: Instant, ttl: Duration) -> Instant {
    let drift = ttl / 100 + Duration::from_millis(2);
    sent + ttl.saturating_sub(drift)
}

/// How often the keeper renews: three tries fit in one TTL, so one lost renewal
/// (a slow engine, a dropped connection) does not lose the lease.
pub fn renew_every(ttl: Duration) -> Duration {
    ttl / 3
}

/// How often an instance without the lease tries to take it: a released lease (a
/// holder stopping) is taken within this, an expired one within TTL + this.
pub const ACQUIRE_EVERY: Duration = Duration::from_millis(500);

/// The keeper's pause before its next call: renew every TTL/3 while holding, else try
/// to acquire every [`ACQUIRE_EVERY`] (or TTL/3 if shorter).
pub fn next_tick(holding: bool, ttl: Duration) -> Duration {
    if holding {
        renew_every(ttl)
    } else {
        renew_every(ttl).min(ACQUIRE_EVERY)
    }
}

/// The bound of one keeper call: it must end before the next renewal is due.
pub fn keeper_call_bound(ttl: Duration, timeout: Duration) -> Duration {
    timeout.min(renew_every(ttl))
}

/// Our new local state after a LEASE reply to a command sent at `sent`, and what to
/// report. A reply that does not parse as a lease value leaves us without it.
pub fn apply(reply: &LeaseReply, sent: Instant, ttl: Duration) -> (Option<Held>, LeaseState) {
    let (value, ours, acquired) = match reply {
        LeaseReply::Other { value, .. } => (value, false, false),
        LeaseReply::Renewed { value, .. } => (value, true, false),
        LeaseReply::Acquired { value, .. } => (value, true, true),
    };
    let (fence, who) = parse_value(value).unwrap_or((0, value.as_str()));
    if !ours {
        let state = LeaseState::HeldBy {
            holder: who.to_owned(),
            fence,
        };
        return (None, state);
    }
    let held = Held {
        value: value.clone(),
        fence,
        valid_until: valid_until(sent, ttl),
    };
    (Some(held), LeaseState::Held { fence, acquired })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    #[test]
    fn local_validity_ends_before_the_engines() {
        let sent = Instant::now();
        let until = valid_until(sent, TTL);
        assert!(until < sent + TTL);
        assert!(until > sent + TTL - Duration::from_millis(100));
        let held = Held {
            value: "1 a".into(),
            fence: 1,
            valid_until: until,
        };
        assert!(held.usable(sent));
        assert!(!held.usable(until));
        assert!(renew_every(TTL) * 3 <= TTL);
        assert_eq!(next_tick(true, TTL), renew_every(TTL));
        assert_eq!(next_tick(false, TTL), ACQUIRE_EVERY);
        let short = Duration::from_millis(300);
        assert_eq!(next_tick(false, short), renew_every(short));
        assert_eq!(
            keeper_call_bound(TTL, Duration::from_secs(5)),
            renew_every(TTL)
        );
        assert_eq!(
            keeper_call_bound(TTL, Duration::from_millis(200)),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn replies_set_our_state() {
        let sent = Instant::now();
        let acquired = LeaseReply::Acquired {
            value: "7 host-a:8080".into(),
            len: 0,
        };
        let (held, state) = apply(&acquired, sent, TTL);
        assert_eq!(
            state,
            LeaseState::Held {
                fence: 7,
                acquired: true
            }
        );
        assert_eq!(held.as_ref().map(|h| h.fence), Some(7));
        let renewed = LeaseReply::Renewed {
            value: "7 host-a:8080".into(),
            len: 0,
        };
        assert_eq!(
            apply(&renewed, sent, TTL).1,
            LeaseState::Held {
                fence: 7,
                acquired: false
            }
        );
        let other = LeaseReply::Other {
            value: "8 host b".into(),
            len: 0,
        };
        assert_eq!(
            apply(&other, sent, TTL),
            (
                None,
                LeaseState::HeldBy {
                    holder: "host b".into(),
                    fence: 8
                }
            )
        );
        assert_eq!(parse_value("x y"), None);
        assert_eq!(parse_value("12 a b"), Some((12, "a b")));
    }
}
