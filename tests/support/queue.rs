//! Deferred-queue helpers shared by the queue and journal tests: raw requests with a
//! body and an `X-Request-Id`, the deadlines of replay and drain, and the checks that a
//! request was buffered and that the queue drained.

use std::time::Duration;

use super::{wait_until, Conf, Message, Response, ServiceQ};

/// Replay pauses grow to at most 5 s while every endpoint is down (SPEC §5), so a
/// restarted endpoint gets the head within ~5 s; the rest follows quickly.
pub const REPLAY_DEADLINE: Duration = Duration::from_secs(20);
/// Generous for a queue of 50 once the endpoint is back.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Enough slots for every test's queue (queued requests hold a slot each).
pub const QUEUE_PEAK: &str = "64";

/// Deferred queue on for `formats`, one attempt per request, room for 64 queued
/// requests.
pub fn queue_conf(endpoints: &[String], formats: &str) -> Conf {
    Conf::new(endpoints)
        .set("ENABLE_DEFERRED_Q", "true")
        .set("DEFERRED_Q_REQUEST_FORMATS", formats)
        .set("MAX_RETRIES", "1")
        .set("CONCURRENCY_PEAK", QUEUE_PEAK)
}

/// The raw bytes of `METHOD TARGET` with `Host: HOST`, a Content-Length body and an
/// optional X-Request-Id.
pub fn raw_request(
    method: &str,
    host: &str,
    target: &str,
    body: &[u8],
    id: Option<&str>,
) -> Vec<u8> {
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(id) = id {
        head.push_str(&format!("X-Request-Id: {id}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The response is 503 with the body `{"sq_msg":"Request Buffered"}`.
pub fn assert_buffered(r: &Response, what: &str) {
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (503, r#"{"sq_msg":"Request Buffered"}"#),
        "{what}: expected 503 Request Buffered, got:\n{}{}",
        r.raw_head,
        r.body_str()
    );
}

/// How many times `needle` occurs in the proxy's stderr.
pub fn stderr_count(sq: &ServiceQ, needle: &str) -> usize {
    sq.stderr().matches(needle).count()
}

/// Waits until the replay thread logged a delivery that emptied the queue (`; 0 left`)
/// `times` times in all.
pub fn wait_drained(sq: &ServiceQ, times: usize, timeout: Duration) -> bool {
    wait_until(timeout, || stderr_count(sq, "; 0 left") >= times)
}
