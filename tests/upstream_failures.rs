//! Failed attempts (SPEC §4, §6, §7): what counts as a failure, how many attempts are
//! made, the response the client gets when all fail, and the exact error-log lines.

// Each test file uses part of the shared helpers: see tests/support/mod.rs.
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use support::*;

const CUSTOM: &str = "X-Sq-Test: yes";
const CUSTOM_HDR: (&str, &str) = ("X-Sq-Test", "yes");

fn conf(endpoints: &[String]) -> Conf {
    Conf::new(endpoints)
        .set("CUSTOM_RESPONSE_HEADERS", CUSTOM)
        .set("OUTGOING_REQUEST_TIMEOUT", "1")
        .set("MAX_RETRIES", "1")
}

/// The single error-log line after one failed request, checked against the §7 format.
fn assert_one_log_line(sq: &ServiceQ, endpoint: &str, code: u32, name: &str) {
    assert!(
        sq.wait_for_error_log(Duration::from_secs(5), |l| !l.is_empty()),
        "no error-log line for {endpoint} {code} {name}"
    );
    // No second line follows within 100 ms (the loop stops at the first one).
    holds_for(Duration::from_millis(100), || {
        sq.error_log_lines().len() == 1
    });
    let lines = sq.error_log_lines();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one error-log line, got {lines:#?}"
    );
    if let Err(e) = check_log_line(&lines[0], endpoint, code, name) {
        panic!("{e}");
    }
}

#[test]
fn upstream_500_is_relayed_and_not_retried() {
    let a = Upstream::start(Behaviour::Respond(
        Resp::new(500, "Internal Server Error", "boom").header("X-From", "app"),
    ));
    let b = Upstream::start(Behaviour::Respond(
        Resp::new(500, "Internal Server Error", "boom").header("X-From", "app"),
    ));
    let sq = conf(&[a.url(), b.url()]).set("MAX_RETRIES", "5").start();
    let r = get(sq.addr(), "/fail");
    assert_eq!(r.status, 500);
    assert_eq!(r.body_str(), "boom");
    assert_eq!(r.header("x-from"), Some("app"));
    holds_for(Duration::from_millis(200), || {
        a.request_count() + b.request_count() == 1
    });
    assert_eq!(
        a.request_count() + b.request_count(),
        1,
        "a 500 must not be retried"
    );
    assert!(
        sq.error_log().is_empty(),
        "an HTTP error response is not logged: {}",
        sq.error_log()
    );
}

#[test]
fn exactly_max_retries_attempts_then_503() {
    let a = Upstream::start(Behaviour::CloseOnAccept);
    let b = Upstream::start(Behaviour::CloseOnAccept);
    let sq = conf(&[a.url(), b.url()]).set("MAX_RETRIES", "5").start();
    let r = get(sq.addr(), "/");
    assert_sq_response(&r, 503, "Service Unavailable", &[CUSTOM_HDR]);
    assert!(wait_until(Duration::from_secs(5), || a.connections()
        + b.connections()
        >= 5));
    holds_for(Duration::from_millis(300), || {
        a.connections() + b.connections() == 5
    });
    assert_eq!(
        a.connections() + b.connections(),
        5,
        "connection attempts across both endpoints"
    );
    // Round-robin after the first pick: the two endpoints alternate (3 + 2).
    let (ca, cb) = (a.connections(), b.connections());
    assert!(
        (ca == 3 && cb == 2) || (ca == 2 && cb == 3),
        "attempts split {ca}/{cb}, expected alternation"
    );
    let lines = sq.error_log_lines();
    assert_eq!(
        lines.len(),
        5,
        "one error-log line per failed attempt: {lines:#?}"
    );
    for l in &lines {
        assert!(
            is_log_line(l, &a.url(), 702, "UPSTREAM_NO_RESPONSE")
                || is_log_line(l, &b.url(), 702, "UPSTREAM_NO_RESPONSE"),
            "unexpected line {l:?}"
        );
    }
}

#[test]
fn default_max_retries_is_2n_plus_1() {
    let a = Upstream::start(Behaviour::CloseOnAccept);
    let b = Upstream::start(Behaviour::CloseOnAccept);
    let sq = conf(&[a.url(), b.url()]).remove("MAX_RETRIES").start();
    let r = get(sq.addr(), "/");
    assert_eq!(r.status, 503);
    assert!(wait_until(Duration::from_secs(5), || a.connections()
        + b.connections()
        >= 5));
    holds_for(Duration::from_millis(300), || {
        a.connections() + b.connections() == 5
    });
    assert_eq!(
        a.connections() + b.connections(),
        5,
        "2n+1 attempts with n = 2"
    );
}

#[test]
fn refused_gives_503_and_logs_701() {
    let url = refusing_url();
    let sq = conf(std::slice::from_ref(&url)).start();
    let r = get(sq.addr(), "/");
    assert_sq_response(&r, 503, "Service Unavailable", &[CUSTOM_HDR]);
    assert_one_log_line(&sq, &url, 701, "UPSTREAM_DOWN");
}

#[test]
fn hang_gives_504_and_logs_702_timed_out() {
    let u = Upstream::start(Behaviour::Hang);
    let sq = conf(&[u.url()]).start();
    let start = Instant::now();
    let r = get(sq.addr(), "/");
    let took = start.elapsed();
    assert_sq_response(&r, 504, "Gateway Timeout", &[CUSTOM_HDR]);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "504 after {took:?}, timeout is 1 s"
    );
    assert_one_log_line(&sq, &u.url(), 702, "UPSTREAM_TIMED_OUT");
}

#[test]
fn close_on_accept_gives_503_and_logs_702_no_response() {
    let u = Upstream::start(Behaviour::CloseOnAccept);
    let sq = conf(&[u.url()]).start();
    let r = get(sq.addr(), "/");
    assert_sq_response(&r, 503, "Service Unavailable", &[CUSTOM_HDR]);
    assert_one_log_line(&sq, &u.url(), 702, "UPSTREAM_NO_RESPONSE");
}

#[test]
fn close_after_request_gives_503_and_logs_702_no_response() {
    let u = Upstream::start(Behaviour::CloseAfterRequest);
    let sq = conf(&[u.url()]).start();
    let r = get(sq.addr(), "/");
    assert_sq_response(&r, 503, "Service Unavailable", &[CUSTOM_HDR]);
    assert_one_log_line(&sq, &u.url(), 702, "UPSTREAM_NO_RESPONSE");
}

#[test]
fn malformed_response_gives_502_and_logs_702_bad_response() {
    let u = Upstream::start(Behaviour::Malformed);
    let sq = conf(&[u.url()]).start();
    let r = get(sq.addr(), "/");
    assert_sq_response(&r, 502, "Bad Gateway", &[CUSTOM_HDR]);
    assert_one_log_line(&sq, &u.url(), 702, "UPSTREAM_BAD_RESPONSE");
}

#[test]
fn ambiguous_upstream_framing_is_a_bad_response() {
    let u = Upstream::start(Behaviour::Respond(
        Resp::new(200, "OK", "5\r\nhello\r\n0\r\n\r\n")
            .header("Content-Length", "3")
            .header("Transfer-Encoding", "chunked"),
    ));
    let sq = conf(&[u.url()]).start();
    let r = get(sq.addr(), "/");
    assert_sq_response(&r, 502, "Bad Gateway", &[CUSTOM_HDR]);
    assert_one_log_line(&sq, &u.url(), 702, "UPSTREAM_BAD_RESPONSE");
}

#[test]
fn last_attempt_decides_the_status() {
    // First endpoint hangs, second refuses; with 2 attempts the round-robin order
    // decides which failure comes last, so check the pair (last failure, status) agree.
    let hang = Upstream::start(Behaviour::Hang);
    let refused = refusing_url();
    let sq = conf(&[hang.url(), refused.clone()])
        .set("MAX_RETRIES", "2")
        .start();
    let r = get(sq.addr(), "/");
    assert!(sq.wait_for_error_log(Duration::from_secs(5), |l| l.len() >= 2));
    let lines = sq.error_log_lines();
    let last = lines.last().unwrap();
    if last.contains("UPSTREAM_TIMED_OUT") {
        assert_sq_response(&r, 504, "Gateway Timeout", &[CUSTOM_HDR]);
    } else {
        assert!(
            is_log_line(last, &refused, 701, "UPSTREAM_DOWN"),
            "{lines:#?}"
        );
        assert_sq_response(&r, 503, "Service Unavailable", &[CUSTOM_HDR]);
    }
}

#[test]
fn retry_gap_separates_attempts() {
    let u = Upstream::start(Behaviour::CloseOnAccept);
    let sq = conf(&[u.url()])
        .set("MAX_RETRIES", "3")
        .set("RETRY_GAP", "0.4")
        .start();
    let start = Instant::now();
    let r = get(sq.addr(), "/");
    let took = start.elapsed();
    assert_eq!(r.status, 503);
    assert!(wait_until(Duration::from_secs(5), || u.connections() >= 3));
    assert_eq!(u.connections(), 3);
    assert!(
        took >= Duration::from_millis(750),
        "3 attempts 0.4 s apart took only {took:?}"
    );
    let t = u.accept_times();
    for w in t.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(350),
            "attempts {:?} apart",
            w[1] - w[0]
        );
    }
}

#[test]
fn request_id_and_body_are_the_same_on_every_attempt() {
    let u = Upstream::start(Behaviour::Echo);
    u.script(vec![
        Behaviour::CloseAfterRequest,
        Behaviour::CloseAfterRequest,
    ]);
    let sq = conf(&[u.url()]).set("MAX_RETRIES", "3").start();
    let r = request(
        sq.addr(),
        b"POST /retry HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\npayload",
    );
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.body_str());
    assert_eq!(r.body_str(), "/retry");
    let reqs = u.requests();
    assert_eq!(reqs.len(), 3);
    let id = reqs[0]
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_string();
    for q in &reqs {
        assert_eq!(
            q.header("x-request-id"),
            Some(id.as_str()),
            "same id on every attempt"
        );
        assert_eq!(q.body, b"payload");
    }
    assert_eq!(sq.error_log_lines().len(), 2, "{}", sq.error_log());
}

#[test]
fn success_resets_error_count_and_request_succeeds_on_another_endpoint() {
    // One refusing endpoint and one good one: every request succeeds.
    let good = Upstream::start(Behaviour::Ok);
    let sq = conf(&[refusing_url(), good.url()])
        .remove("MAX_RETRIES")
        .start();
    let mut c = Client::connect(sq.addr());
    for _ in 0..20 {
        c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}{}", r.raw_head, r.body_str());
    }
    assert_eq!(good.request_count(), 20);
}

#[test]
fn timeout_bounds_each_wait_not_the_whole_response() {
    // Three gaps of 0.6 s with a 1 s timeout: each wait is under it, the total is not.
    let u = Upstream::start(Behaviour::ChunkedSlow(
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()],
        Duration::from_millis(600),
    ));
    let sq = conf(&[u.url()]).start();
    let r = get(sq.addr(), "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "abcd");
    let slow = Upstream::start(Behaviour::Slow(Duration::from_millis(500)));
    let sq = conf(&[slow.url()]).start();
    assert_eq!(get(sq.addr(), "/").status, 200);
    assert!(sq.error_log().is_empty(), "{}", sq.error_log());
}

/// RFC 9112 §9.5: an endpoint may answer before it has read the whole request body
/// (a 413, say) and close; ServiceQ's write of the body then fails, but the response is
/// complete and must be relayed — not counted as 702 and the request buffered.
#[test]
fn early_response_before_the_body_is_read_is_relayed() {
    use std::io::Write;
    let (port, accepted) = raw_endpoint(|_, s| {
        let _ = s.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
        );
        false
    });
    let sq = conf(&[format!("http://127.0.0.1:{port}")])
        .set("ENABLE_DEFERRED_Q", "true")
        .set("MAX_RETRIES", "3")
        .start();
    let body = vec![b'x'; 9 << 20];
    let mut c = Client::connect(sq.addr());
    c.send(format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    c.send(&body);
    let r = c.read_response();
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (413, "too large"),
        "{}",
        r.raw_head
    );
    assert!(
        holds_for(Duration::from_millis(300), || sq.error_log().is_empty()),
        "an early response counted as a failure: {}",
        sq.error_log()
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the request was tried again or replayed"
    );
}

/// An endpoint that dies after its response head went to the client: the client's
/// response is cut short (it cannot be answered or retried), and the failure is one
/// 702 UPSTREAM_BROKE_OFF line in the error log, a bump of the endpoint's error count,
/// and one `serviceq_upstream_failures_total{code="UPSTREAM_BROKE_OFF"}` (README
/// "Error log").
#[test]
fn endpoint_dying_mid_body_is_logged_and_counted() {
    let u = Upstream::start(Behaviour::CloseMidBody);
    let (sq, admin) = start_with_admin(conf(&[u.url()]).set("MAX_RETRIES", "3"));
    let mut c = Client::connect(sq.addr());
    c.set_read_timeout(Duration::from_secs(10));
    c.send("GET /cut HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = c.try_read_response(false);
    assert_one_log_line(&sq, &u.url(), 702, "UPSTREAM_BROKE_OFF");
    assert_eq!(
        u.request_count(),
        1,
        "a response under way is never retried"
    );
    let sample = |name: &str, code: Option<&str>| {
        let labels = match code {
            Some(code) => format!("{{endpoint=\"{}\",code=\"{code}\"}}", u.url()),
            None => format!("{{endpoint=\"{}\"}}", u.url()),
        };
        metric_sample(admin, &format!("{name}{labels}"))
    };
    let failures = "serviceq_upstream_failures_total";
    assert_eq!(sample(failures, Some("UPSTREAM_BROKE_OFF")), Some(1.0));
    assert_eq!(sample(failures, Some("UPSTREAM_NO_RESPONSE")), Some(0.0));
    assert_eq!(sample("serviceq_upstream_error_count", None), Some(1.0));
}
