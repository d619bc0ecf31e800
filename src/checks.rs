//! Active health checks' verdicts, as the request path reads them (one relaxed load per
//! endpoint): HEALTH_CHECK_STATUS's ranges, HAProxy's rise/fall state machine and each
//! endpoint's [`EndpointHealth`]. Pure state, no I/O: the checker thread
//! (`health.rs`) feeds it, `upstream.rs` holds one per endpoint, `config.rs` parses the
//! status ranges.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// HEALTH_CHECK_STATUS: the statuses a check accepts, as inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRanges(Vec<(u16, u16)>);

impl StatusRanges {
    /// The default: 2xx and 3xx, as HAProxy's `http-check expect` does without a rule.
    pub fn default_healthy() -> Self {
        StatusRanges(vec![(200, 399)])
    }

    /// `200-399`, `200,204`, `200-299,301`: comma-separated codes and ranges, each code
    /// from 100 to 599.
    pub fn parse(value: &str) -> Result<Self, String> {
        let code = |s: &str| {
            let s = s.trim();
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u16>().ok())
                .flatten()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| format!("{s:?} is not a status code from 100 to 599"))
        };
        let ranges = value
            .split(',')
            .map(|item| match item.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (code(lo)?, code(hi)?);
                    if lo > hi {
                        return Err(format!("range {:?} is backwards", item.trim()));
                    }
                    Ok((lo, hi))
                }
                None => code(item).map(|c| (c, c)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| {
                format!("expected status codes or ranges such as 200-399 or 200,204: {why}")
            })?;
        Ok(StatusRanges(ranges))
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

/// A change of an endpoint's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// HEALTH_CHECK_FALL checks failed in a row.
    Down,
    /// HEALTH_CHECK_RISE checks passed in a row.
    Up,
}

/// HAProxy's `rise`/`fall` (its `inter`/`rise`/`fall` server options): an endpoint that
/// is up goes down after `fall` failed checks in a row, one that is down comes back
/// after `rise` passed checks in a row. Endpoints start up, as they are without checks,
/// so turning checks on never takes a working cluster out of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    up: bool,
    /// Consecutive results against the current verdict.
    streak: u32,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            up: true,
            streak: 0,
        }
    }
}

impl Checks {
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Takes one check's result; returns the transition it completes, if any.
    pub fn observe(&mut self, passed: bool, rise: u32, fall: u32) -> Option<Transition> {
        if passed == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise };
        if self.streak < needed.max(1) {
            return None;
        }
        self.up = passed;
        self.streak = 0;
        Some(if passed {
            Transition::Up
        } else {
            Transition::Down
        })
    }
}

// ---------------------------------------------------------------------------
// Per-endpoint state

/// One endpoint's check state: the verdict the request path reads (one relaxed load),
/// the state machine only the checker touches, and counters for /metrics.
#[derive(Default)]
pub struct EndpointHealth {
    down: AtomicBool,
    checks: Mutex<Checks>,
    pub probes: AtomicU64,
    pub failed_probes: AtomicU64,
}

impl EndpointHealth {
    /// Marked down by its checks.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    pub(crate) fn observe(&self, passed: bool, rise: u32, fall: u32) -> Option<Transition> {
        self.probes.fetch_add(1, Ordering::Relaxed);
        if !passed {
            self.failed_probes.fetch_add(1, Ordering::Relaxed);
        }
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        let transition = checks.observe(passed, rise, fall);
        self.down.store(!checks.is_up(), Ordering::Relaxed);
        transition
    }

    /// Checks turned off: every endpoint counts as up again.
    pub(crate) fn reset(&self) {
        *self.checks.lock().unwrap_or_else(|p| p.into_inner()) = Checks::default();
        self.down.store(false, Ordering::Relaxed);
    }

    /// The same state as `other` (an endpoint rebuilt by a reload keeps its verdict).
    pub fn copy_from(&self, other: &EndpointHealth) {
        let checks = *other.checks.lock().unwrap_or_else(|p| p.into_inner());
        *self.checks.lock().unwrap_or_else(|p| p.into_inner()) = checks;
        self.down.store(other.is_down(), Ordering::Relaxed);
        for (mine, theirs) in [
            (&self.probes, &other.probes),
            (&self.failed_probes, &other.failed_probes),
        ] {
            mine.store(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}
