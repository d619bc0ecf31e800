//! Active health checks (HEALTH_CHECK_*): one checker thread sends
//! `GET HEALTH_CHECK_PATH` to every endpoint each HEALTH_CHECK_INTERVAL, over a
//! connection of its own (TLS for `https://`, through the endpoints' TLS client) that
//! it closes after the response head — never a client's pooled connection — and feeds
//! each result to the endpoint's [`Checks`], HAProxy's `rise`/`fall` state machine.
//!
//! An endpoint marked down takes no part in the balancer's choice while another is up
//! (`balancer.rs` gets the verdicts as a mask); with all of them down, requests are
//! tried as if there were no checks. A transition is logged on stderr, a fall also in
//! the error log (701 for a refused connection or an unhealthy status, 702 for a
//! timeout or a broken/malformed response), and a rise wakes the replay thread so the
//! queue does not wait out its pause.
//!
//! The decisions — does a status count as healthy, does a result change the verdict —
//! are pure and unit-tested; the probe itself is a thin blocking exchange bounded by
//! HEALTH_CHECK_TIMEOUT as a deadline for the whole probe.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::checks::Transition;
use crate::config::Config;
use crate::error::{is_timeout, AttemptError, LogCode};
use crate::http::{parse_response_into, HeadLimits, ResponseHead};
use crate::proxy::Proxy;
use crate::upstream::{Upstream, Upstreams, MAX_RESPONSE_HEAD_BYTES};

/// How long the checker sleeps while checks are off: a reload wakes it sooner.
const IDLE_RECHECK: Duration = Duration::from_secs(60);
const PROBE_LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: MAX_RESPONSE_HEAD_BYTES,
    max_headers: 256,
};
const PROBE_READ_BYTES: usize = 4096;

// ---------------------------------------------------------------------------
// The checker thread

/// Why a check failed.
#[derive(Debug)]
pub enum ProbeError {
    /// No usable response head (connect, timeout, broken or malformed).
    Attempt(AttemptError),
    /// A response whose status is not in HEALTH_CHECK_STATUS.
    Status(u16),
}

impl ProbeError {
    /// The error-log code when this failure marks the endpoint down.
    pub fn log_code(&self) -> LogCode {
        match self {
            ProbeError::Attempt(e) => e.log_code(),
            ProbeError::Status(_) => LogCode::UpstreamDown,
        }
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Attempt(e) => e.fmt(f),
            ProbeError::Status(s) => write!(f, "unhealthy status {s}"),
        }
    }
}

/// Starts the checker thread. It runs for the life of the process and does nothing
/// while HEALTH_CHECK_PATH is unset.
pub fn start(proxy: Arc<Proxy>) -> io::Result<()> {
    thread::Builder::new()
        .name("health".into())
        .stack_size(256 * 1024)
        .spawn(move || run(&proxy))
        .map(drop)
}

fn run(proxy: &Proxy) {
    loop {
        if proxy.stopping() {
            return;
        }
        let settings = proxy.settings();
        let round = Instant::now();
        let pause = match &settings.cfg.health_check_path {
            Some(path) => {
                check_round(proxy, &settings.upstreams, &settings.cfg, path);
                (round + settings.cfg.health_check_interval)
                    .saturating_duration_since(Instant::now())
            }
            None => {
                settings
                    .upstreams
                    .list
                    .iter()
                    .for_each(|u| u.health.reset());
                IDLE_RECHECK
            }
        };
        drop(settings);
        // A reload wakes this early, so new settings apply at once.
        proxy.health_wakeup.sleep(pause);
    }
}

/// One check of every endpoint, one after the other.
fn check_round(proxy: &Proxy, ups: &Upstreams, cfg: &Config, path: &str) {
    for up in &ups.list {
        let request = probe_request(path, &up.endpoint.host_header());
        let result = probe(ups, up, &request, cfg.health_check_timeout).and_then(|status| {
            if cfg.health_check_status.contains(status) {
                Ok(status)
            } else {
                Err(ProbeError::Status(status))
            }
        });
        let transition =
            up.health
                .observe(result.is_ok(), cfg.health_check_rise, cfg.health_check_fall);
        report(proxy, up, &result, transition, cfg);
    }
}

fn report(
    proxy: &Proxy,
    up: &Upstream,
    result: &Result<u16, ProbeError>,
    transition: Option<Transition>,
    cfg: &Config,
) {
    match (transition, result) {
        (Some(Transition::Down), Err(e)) => {
            log::warn!(
                "{}: marked down by health checks ({} failed in a row; last: {e})",
                up.label,
                cfg.health_check_fall
            );
            proxy.errlog.record(&up.label, e.log_code());
        }
        (Some(Transition::Up), Ok(status)) => {
            log::info!(
                "{}: marked up by health checks ({} passed in a row; last: {status})",
                up.label,
                cfg.health_check_rise
            );
            proxy.replay_wakeup.wake();
        }
        (_, Err(e)) => log::debug!("{}: health check failed: {e}", up.label),
        (_, Ok(status)) => log::debug!("{}: health check passed: {status}", up.label),
    }
}

/// The check request: `Connection: close`, since the probe's connection is used once.
fn probe_request(path: &str, host: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: serviceq-health-check/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// One check: dial (TCP, then TLS for https), send the request, read the final
/// response head; its status. `timeout` bounds the whole probe.
fn probe(
    ups: &Upstreams,
    up: &Upstream,
    request: &[u8],
    timeout: Duration,
) -> Result<u16, ProbeError> {
    let deadline = Instant::now() + timeout;
    let mut conn = ups
        .dial_with(up, Some(timeout))
        .map_err(ProbeError::Attempt)?;
    let left = |conn: &crate::stream::Stream| -> Result<(), ProbeError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ProbeError::Attempt(AttemptError::Timeout));
        }
        crate::stream::set_timeouts(conn.tcp(), Some(left))
            .map_err(|e| ProbeError::Attempt(AttemptError::Connect(e)))
    };
    left(&conn)?;
    conn.write_all(request)
        .and_then(|()| conn.flush())
        .map_err(|e| ProbeError::Attempt(AttemptError::from_read(e)))?;
    let mut buf = Vec::with_capacity(PROBE_READ_BYTES);
    let mut head = ResponseHead::empty();
    let mut chunk = [0u8; PROBE_READ_BYTES];
    loop {
        match parse_response_into(&buf, &PROBE_LIMITS, "GET", &mut head) {
            // Interim responses (100, 103) precede the final one.
            Ok(Some(len)) if (100..200).contains(&head.status) => drop(buf.drain(..len)),
            Ok(Some(_)) => return Ok(head.status),
            Ok(None) => {}
            Err(_) => {
                return Err(ProbeError::Attempt(AttemptError::BadResponse(
                    "malformed response head",
                )))
            }
        }
        left(&conn)?;
        match conn.read(&mut chunk) {
            Ok(0) => {
                let eof = io::ErrorKind::UnexpectedEof.into();
                return Err(ProbeError::Attempt(AttemptError::NoResponse(eof)));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(ProbeError::Attempt(AttemptError::Timeout)),
            Err(e) => return Err(ProbeError::Attempt(AttemptError::NoResponse(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{Checks, EndpointHealth, StatusRanges};
    use std::sync::atomic::Ordering;

    #[test]
    fn status_ranges_parse_and_match() {
        let default = StatusRanges::default_healthy();
        for (status, want) in [
            (199, false),
            (200, true),
            (302, true),
            (399, true),
            (400, false),
            (500, false),
        ] {
            assert_eq!(default.contains(status), want, "{status}");
        }
        let custom = StatusRanges::parse("200-204, 301 ,418").unwrap();
        for (status, want) in [
            (200, true),
            (204, true),
            (205, false),
            (301, true),
            (418, true),
            (302, false),
        ] {
            assert_eq!(custom.contains(status), want, "{status}");
        }
        assert_eq!(StatusRanges::parse("200-399").unwrap(), default);
    }

    #[test]
    fn bad_status_ranges_are_errors() {
        for bad in [
            "",
            "2xx",
            "200-",
            "-399",
            "399-200",
            "99",
            "600",
            "200,,204",
            "+200",
            "200-399-400",
        ] {
            assert!(StatusRanges::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// Feeds results to a fresh machine; the transitions they cause, by index.
    fn run_checks(results: &[bool], rise: u32, fall: u32) -> Vec<(usize, Transition)> {
        let mut checks = Checks::default();
        results
            .iter()
            .enumerate()
            .filter_map(|(i, &ok)| checks.observe(ok, rise, fall).map(|t| (i, t)))
            .collect()
    }

    #[test]
    fn falls_after_fall_failures_in_a_row_and_rises_after_rise_passes() {
        use Transition::{Down, Up};
        let (t, f) = (true, false);
        // Starts up: three failures (fall = 3) put it down on the third.
        assert_eq!(run_checks(&[f, f, f], 2, 3), vec![(2, Down)]);
        // A pass in between starts the count again.
        assert_eq!(run_checks(&[f, f, t, f, f], 2, 3), vec![]);
        // Down, then two passes (rise = 2) bring it back; a failure in between resets.
        assert_eq!(
            run_checks(&[f, f, f, t, f, t, t], 2, 3),
            vec![(2, Down), (6, Up)]
        );
        // rise = fall = 1: every change of result is a transition.
        assert_eq!(
            run_checks(&[t, f, t, t, f], 1, 1),
            vec![(1, Down), (2, Up), (4, Down)]
        );
        // Passes while up and failures while down change nothing.
        assert_eq!(run_checks(&[t, t, t], 2, 3), vec![]);
        assert_eq!(run_checks(&[f, f, f, f, f, f], 2, 3), vec![(2, Down)]);
    }

    #[test]
    fn endpoint_health_publishes_the_verdict_and_counts() {
        let h = EndpointHealth::default();
        assert!(!h.is_down());
        assert_eq!(h.observe(false, 2, 2), None);
        assert_eq!(h.observe(false, 2, 2), Some(Transition::Down));
        assert!(h.is_down());
        let copy = EndpointHealth::default();
        copy.copy_from(&h);
        assert!(copy.is_down());
        assert_eq!(copy.failed_probes.load(Ordering::Relaxed), 2);
        assert_eq!(copy.observe(true, 2, 2), None);
        assert_eq!(copy.observe(true, 2, 2), Some(Transition::Up));
        assert!(!copy.is_down() && h.is_down());
        h.reset();
        assert!(!h.is_down());
    }

    #[test]
    fn probe_request_is_a_closing_get() {
        let req = String::from_utf8(probe_request("/health?deep=1", "10.0.0.5:8001")).unwrap();
        assert!(
            req.starts_with("GET /health?deep=1 HTTP/1.1\r\nHost: 10.0.0.5:8001\r\n"),
            "{req}"
        );
        assert!(req.ends_with("Connection: close\r\n\r\n"), "{req}");
    }
}
