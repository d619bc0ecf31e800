//! Replay of the deferred and upfront queue through the real binary (SPEC §5, §6):
//! the seed's request-format examples as a table, FIFO delivery of many requests with
//! their bodies and `X-Request-Id` intact, a queue waiting out a long outage, FIFO when
//! the first endpoint to come back fails again mid-replay, the upfront queue, 429 while
//! queued requests fill the peak, and the replay thread's CPU use while it waits.
//!
//! `tests/queue.rs` has the basic cases; these push on ordering, volume and timing.

// Each test file uses part of the shared helpers: see tests/support/mod.rs.
#[allow(dead_code)]
mod support;

use std::collections::HashSet;
use std::fs;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use support::queue::*;
use support::*;

/// The Host of every request here.
const HOST: &str = "queue.test";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn send(sq: &ServiceQ, method: &str, target: &str, body: &[u8], id: Option<&str>) -> Response {
    request(sq.addr(), &raw_request(method, HOST, target, body, id))
}

/// A body unique to `i`, of varying length, with bytes that a text-minded or
/// line-minded journal would mangle (NUL, CR LF, 0xFF, a lone `\r\n\r\n`).
fn body_for(tag: &str, i: usize) -> Vec<u8> {
    let mut b = format!("{tag}-{i:03}|").into_bytes();
    b.extend_from_slice(&[0, 0xff, b'\r', b'\n', b'\r', b'\n', 0x7f]);
    b.extend((0..(i * 37) % 700).map(|k| b'a' + ((k + i) % 26) as u8));
    b.extend_from_slice(format!("|end-{i:03}").as_bytes());
    b
}

/// Index of a body made by `body_for(tag, _)`, if it is one.
fn index_of(tag: &str, body: &[u8]) -> Option<usize> {
    let prefix = format!("{tag}-");
    let rest = body.strip_prefix(prefix.as_bytes())?;
    let digits = std::str::from_utf8(rest.get(..3)?).ok()?;
    let i: usize = digits.parse().ok()?;
    (body == body_for(tag, i).as_slice()).then_some(i)
}

/// Buffered (see `support::queue::assert_buffered`), as a complete SPEC §6 response.
fn assert_buffered(r: &Response, what: &str) {
    support::queue::assert_buffered(r, what);
    assert_sq_response(r, 503, "Request Buffered", &[]);
}

/// Number of SPEC §7 lines for this endpoint and code in the error log.
fn log_lines(sq: &ServiceQ, endpoint: &str, code: u32, name: &str) -> usize {
    sq.error_log_lines()
        .iter()
        .filter(|l| is_log_line(l, endpoint, code, name))
        .count()
}

// ---------------------------------------------------------------------------------------
// 1. Eligibility: the seed's examples, prefix routes, query strings
// ---------------------------------------------------------------------------------------

/// (DEFERRED_Q_REQUEST_FORMATS, [(method, target, buffered?)]).
type FormatCase = (&'static str, &'static [(&'static str, &'static str, bool)]);

const FORMAT_TABLE: &[FormatCase] = &[
    (
        "ALL",
        &[
            ("GET", "/", true),
            ("GET", "/orders?page=2", true),
            ("POST", "/orders", true),
            ("PUT", "/x/y", true),
            ("PATCH", "/p", true),
            ("DELETE", "/d?force=1", true),
            ("OPTIONS", "/o", true),
        ],
    ),
    (
        "POST,PUT,PATCH,DELETE",
        &[
            ("POST", "/anything", true),
            ("POST", "/orders?x=1", true),
            ("PUT", "/a/b/c", true),
            ("PATCH", "/p", true),
            ("DELETE", "/d", true),
            ("GET", "/anything", false),
            ("GET", "/orders?x=1", false),
            ("OPTIONS", "/o", false),
        ],
    ),
    (
        "POST /orders !,POST,PUT /orders,PATCH,DELETE",
        &[
            // POST except on /orders (exactly /orders: the query string is ignored).
            ("POST", "/orders", false),
            ("POST", "/orders?id=7", false),
            ("POST", "/payments", true),
            ("POST", "/orders/1", true),
            ("POST", "/ordersx", true),
            ("POST", "/", true),
            // PUT only on /orders.
            ("PUT", "/orders", true),
            ("PUT", "/orders?id=5", true),
            ("PUT", "/orders/1", false),
            ("PUT", "/other", false),
            // PATCH and DELETE anywhere.
            ("PATCH", "/orders", true),
            ("PATCH", "/x", true),
            ("DELETE", "/orders", true),
            ("DELETE", "/y?z=1", true),
            // Anything else: no.
            ("GET", "/orders", false),
            ("GET", "/payments", false),
        ],
    ),
    (
        "POST /orders,PATCH",
        &[
            ("POST", "/orders", true),
            ("POST", "/orders?a=b&c=d", true),
            ("POST", "/orders/1", false),
            ("POST", "/other", false),
            ("PATCH", "/orders", true),
            ("PATCH", "/x?y=z", true),
            ("PUT", "/orders", false),
            ("DELETE", "/orders", false),
            ("GET", "/orders", false),
        ],
    ),
    (
        "POST /orders/*",
        &[
            ("POST", "/orders/1", true),
            ("POST", "/orders/a/b", true),
            ("POST", "/orders/", true),
            ("POST", "/orders/1?x=y", true),
            ("POST", "/orders/a/b?c=/d", true),
            ("POST", "/orders", false),
            ("POST", "/orders?x=/orders/1", false),
            ("POST", "/ordersx", false),
            ("POST", "/ordersx/1", false),
            ("POST", "/other/orders/1", false),
            ("PUT", "/orders/1", false),
            ("GET", "/orders/1", false),
        ],
    ),
];

/// Runs one row of the table against its own proxy in front of a down cluster.
fn check_formats(formats: &str, cases: &[(&str, &str, bool)]) -> Vec<String> {
    let u = down_upstream(Behaviour::Ok);
    let sq = queue_conf(&[u.url()], formats).start();
    let mut failures = Vec::new();
    for (i, &(method, target, buffered)) in cases.iter().enumerate() {
        let body = format!("case-{i}");
        let r = send(&sq, method, target, body.as_bytes(), None);
        let want = if buffered {
            "Request Buffered"
        } else {
            "Service Unavailable"
        };
        let want_body = format!("{{\"sq_msg\":\"{want}\"}}");
        let json = r
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json"));
        if r.status != 503 || r.body_str() != want_body || !json {
            failures.push(format!(
                "{formats:?}: {method} {target}: expected 503 {want_body}, got {} {} ({:?})",
                r.status,
                r.body_str(),
                r.header("content-type")
            ));
        }
    }
    failures
}

#[test]
fn seed_request_format_examples_decide_buffered_or_unavailable() {
    // One proxy per rule list, run side by side.
    let handles: Vec<_> = FORMAT_TABLE
        .iter()
        .map(|&(formats, cases)| thread::spawn(move || check_formats(formats, cases)))
        .collect();
    let failures: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("format check panicked"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} eligibility case(s) wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 2. 50 buffered requests replayed in order, bodies and ids intact, none twice
// ---------------------------------------------------------------------------------------

#[test]
fn fifty_buffered_posts_replay_in_order_with_bodies_and_ids_intact() {
    const N: usize = 50;
    let mut u = down_upstream(Behaviour::Echo);
    let sq = queue_conf(&[u.url()], "POST").start();

    // Every 10th request comes without an X-Request-Id: the proxy generates one.
    let client_id = |i: usize| (i % 10 != 3).then(|| format!("client-id-{i:03}-{}", i * 7919));
    for i in 0..N {
        let id = client_id(i);
        let r = send(
            &sq,
            "POST",
            &format!("/order/{i}"),
            &body_for("fifty", i),
            id.as_deref(),
        );
        assert_buffered(&r, &format!("POST /order/{i}"));
    }
    assert_eq!(u.request_count(), 0);

    u.restart();
    assert!(
        u.wait_requests(N, DRAIN_DEADLINE),
        "only {} of {N} queued requests delivered; stderr:\n{}",
        u.request_count(),
        sq.stderr()
    );
    assert!(
        wait_drained(&sq, 1, Duration::from_secs(5)),
        "no `0 left` replay line"
    );
    // Nothing more may come: the queue is empty and each request was answered once.
    assert!(
        holds_for(Duration::from_millis(700), || u.request_count() == N),
        "delivered more than once: {} requests for {N}",
        u.request_count()
    );

    let reqs = u.requests();
    let stderr = sq.stderr();
    let mut seen_ids = HashSet::new();
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(
            (r.method.as_str(), r.target.as_str()),
            ("POST", format!("/order/{i}").as_str()),
            "delivery #{i} out of order; targets: {:?}",
            reqs.iter().map(|r| r.target.as_str()).collect::<Vec<_>>()
        );
        assert!(
            r.body == body_for("fifty", i),
            "body of /order/{i} changed: {:?}",
            r.body_str()
        );
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        let ids = r.headers_named("x-request-id");
        assert_eq!(ids.len(), 1, "one X-Request-Id on /order/{i}: {ids:?}");
        let id = ids[0];
        match client_id(i) {
            Some(sent) => assert_eq!(id, sent, "X-Request-Id of /order/{i}"),
            None => {
                assert!(!id.is_empty(), "generated X-Request-Id empty");
                // The replay line names the id it delivered.
                let line = format!("replayed POST /order/{i} (X-Request-Id {id}): 200");
                assert!(stderr.contains(&line), "no `{line}` on stderr:\n{stderr}");
            }
        }
        assert!(seen_ids.insert(id.to_string()), "X-Request-Id {id} twice");
    }
}

#[test]
fn any_status_from_an_endpoint_counts_as_delivered() {
    let mut u = down_upstream(Behaviour::Echo);
    let sq = queue_conf(&[u.url()], "POST").start();
    for i in 0..4 {
        let r = send(
            &sq,
            "POST",
            &format!("/status/{i}"),
            &body_for("status", i),
            None,
        );
        assert_buffered(&r, &format!("POST /status/{i}"));
    }
    u.script(vec![
        Behaviour::Respond(Resp::new(500, "Internal Server Error", "boom")),
        Behaviour::Respond(Resp::new(503, "Service Unavailable", "busy")),
        Behaviour::Respond(Resp::new(404, "Not Found", "")),
    ]);
    u.restart();
    assert!(u.wait_requests(4, REPLAY_DEADLINE), "{}", sq.stderr());
    assert!(wait_drained(&sq, 1, Duration::from_secs(5)));
    // An answer is an answer: none of them is tried again.
    assert!(
        holds_for(Duration::from_millis(1000), || u.request_count() == 4),
        "a request answered with an error status was replayed again: {:?}",
        u.requests()
            .iter()
            .map(|r| r.target.clone())
            .collect::<Vec<_>>()
    );
    let targets: Vec<String> = u.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        targets,
        ["/status/0", "/status/1", "/status/2", "/status/3"]
    );
    let stderr = sq.stderr();
    for (i, code) in [(0, 500), (1, 503), (2, 404), (3, 200)] {
        let prefix = format!("replayed POST /status/{i} ");
        let status = format!("): {code} from ");
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&prefix) && l.contains(&status)),
            "no replay line with status {code} for /status/{i}:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3. A queue that waits through a 10 s outage
// ---------------------------------------------------------------------------------------

#[test]
fn queue_waits_through_a_ten_second_outage() {
    const N: usize = 6;
    const OUTAGE: Duration = Duration::from_secs(10);
    let mut u = down_upstream(Behaviour::Echo);
    let sq = queue_conf(&[u.url()], "POST,PUT").start();
    for i in 0..N {
        let method = if i % 2 == 0 { "POST" } else { "PUT" };
        let r = send(
            &sq,
            method,
            &format!("/outage/{i}"),
            &body_for("outage", i),
            None,
        );
        assert_buffered(&r, &format!("{method} /outage/{i}"));
    }
    let tried_before = log_lines(&sq, &u.url(), 701, "UPSTREAM_DOWN");
    let down_since = Instant::now();

    // The outage itself: a deliberate wait, not a readiness guess.
    thread::sleep(OUTAGE.saturating_sub(down_since.elapsed()));
    let replay_tries = log_lines(&sq, &u.url(), 701, "UPSTREAM_DOWN") - tried_before;
    // Pauses 0.5, 1, 2, 4, 5 s: about 5 tries in 10 s. A fixed 500 ms pause would make
    // ~20, a replay thread that gave up 0.
    assert!(
        (3..=8).contains(&replay_tries),
        "replay tried {replay_tries} times during a {OUTAGE:?} outage (expected 3..=8 with a \
         500 ms → 5 s backoff); error log:\n{}",
        sq.error_log()
    );
    assert!(sq.stderr().contains("replay of POST /outage/0 failed"));

    u.restart();
    let back = Instant::now();
    assert!(
        u.wait_requests(N, REPLAY_DEADLINE),
        "after the outage only {} of {N} delivered; stderr:\n{}",
        u.request_count(),
        sq.stderr()
    );
    assert!(
        back.elapsed() < Duration::from_secs(5) + Duration::from_secs(3),
        "delivery took {:?} after the endpoint came back (pause is at most 5 s)",
        back.elapsed()
    );
    assert!(wait_drained(&sq, 1, Duration::from_secs(5)));
    assert!(holds_for(Duration::from_millis(500), || u.request_count() == N));
    let reqs = u.requests();
    for (i, r) in reqs.iter().enumerate() {
        let method = if i % 2 == 0 { "POST" } else { "PUT" };
        assert_eq!(
            (r.method.as_str(), r.target.as_str()),
            (method, format!("/outage/{i}").as_str())
        );
        assert!(r.body == body_for("outage", i), "body of /outage/{i}");
    }
    // The stderr line says how long each waited: at least the outage for the first.
    let first = sq
        .stderr()
        .lines()
        .find(|l| l.contains("replayed POST /outage/0 "))
        .map(str::to_string)
        .expect("replay line for /outage/0");
    assert!(first.contains("200 from "), "{first}");
}

// ---------------------------------------------------------------------------------------
// 4. FIFO when the first endpoint back fails again mid-replay
// ---------------------------------------------------------------------------------------

#[test]
fn fifo_holds_when_the_first_endpoint_back_fails_mid_replay() {
    const N: usize = 20;
    const K: usize = 7;
    let mut a = down_upstream(Behaviour::Echo);
    let mut b = down_upstream(Behaviour::Echo);
    let sq = queue_conf(&[a.url(), b.url()], "POST")
        .set("MAX_RETRIES", "2")
        .start();
    for i in 0..N {
        let r = send(&sq, "POST", &format!("/mid/{i}"), &body_for("mid", i), None);
        assert_buffered(&r, &format!("POST /mid/{i}"));
    }

    // A comes back, answers K requests, then reads the next one and never answers it.
    a.set(Behaviour::Hang);
    a.script(vec![Behaviour::Echo; K]);
    a.restart();
    assert!(
        wait_until(REPLAY_DEADLINE, || a.answered() >= K
            && a.request_count() > K),
        "A answered {} and saw {} requests; stderr:\n{}",
        a.answered(),
        a.request_count(),
        sq.stderr()
    );
    // A fails: the request in flight loses its connection, A refuses from now on.
    a.stop();
    // Nothing goes anywhere while B is down; give the replay a moment to notice.
    assert!(
        sq.wait_for_stderr(&format!("replay of POST /mid/{K} failed"), REPLAY_DEADLINE),
        "replay never reported the failure of /mid/{K}; stderr:\n{}",
        sq.stderr()
    );
    b.restart();
    let first_seen = |a: &Upstream, b: &Upstream| -> HashSet<usize> {
        a.requests()
            .iter()
            .chain(b.requests().iter())
            .filter_map(|r| index_of("mid", &r.body))
            .collect()
    };
    assert!(
        wait_until(DRAIN_DEADLINE, || first_seen(&a, &b).len() == N),
        "not every request arrived: {:?}; stderr:\n{}",
        first_seen(&a, &b),
        sq.stderr()
    );
    assert!(wait_drained(&sq, 1, Duration::from_secs(5)));

    // The union of deliveries, in the order the endpoints received them.
    let mut all: Vec<(Instant, &'static str, Recorded)> = a
        .requests()
        .into_iter()
        .map(|r| (r.at, "A", r))
        .chain(b.requests().into_iter().map(|r| (r.at, "B", r)))
        .collect();
    all.sort_by_key(|(at, _, _)| *at);
    let timeline: Vec<String> = all
        .iter()
        .map(|(_, who, r)| format!("{who}:{}", r.target))
        .collect();
    eprintln!("deliveries: {timeline:?}");
    let mut firsts = Vec::new();
    let mut seen = HashSet::new();
    let mut repeats = Vec::new();
    for (_, _, r) in &all {
        let i = index_of("mid", &r.body)
            .unwrap_or_else(|| panic!("unexpected body {:?}", r.body_str()));
        assert_eq!(r.target, format!("/mid/{i}"), "body/target mismatch");
        if seen.insert(i) {
            firsts.push(i);
        } else {
            repeats.push(i);
        }
    }
    assert_eq!(
        firsts,
        (0..N).collect::<Vec<_>>(),
        "first deliveries out of order; timeline: {timeline:?}"
    );
    // Only the request in flight when A failed may be delivered twice (at least once).
    assert!(
        repeats.iter().all(|&i| i == K),
        "requests delivered again that were not in flight at the failure: {repeats:?}; \
         timeline: {timeline:?}"
    );
    // A answered exactly the first K; B got the rest, starting with the one in flight.
    let a_targets: Vec<String> = a.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        &a_targets[..K],
        (0..K)
            .map(|i| format!("/mid/{i}"))
            .collect::<Vec<_>>()
            .as_slice()
    );
    let b_first = b.requests().first().map(|r| r.target.clone());
    assert_eq!(
        b_first.as_deref(),
        Some(format!("/mid/{K}").as_str()),
        "B should start with the request in flight at the failure; timeline: {timeline:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Upfront queue
// ---------------------------------------------------------------------------------------

#[test]
fn upfront_queue_answers_202_at_once_and_delivers_in_order() {
    const N: usize = 4;
    // A healthy endpoint that takes its time over the first request it gets (the first
    // queued one, replayed at once), then answers at once: while the replay thread waits
    // on it, no further request can reach it unless the proxy sends it itself.
    let slow = Duration::from_secs(4);
    let u = Upstream::start(Behaviour::Echo);
    u.script(vec![Behaviour::Slow(slow)]);
    let sq = Conf::new(&[u.url()])
        .set("ENABLE_UPFRONT_Q", "true")
        .set("ENABLE_DEFERRED_Q", "false")
        .set(
            "DEFERRED_Q_REQUEST_FORMATS",
            "POST /orders/*,DELETE /orders/*",
        )
        .set("CONCURRENCY_PEAK", QUEUE_PEAK)
        .set("OUTGOING_REQUEST_TIMEOUT", "10")
        .set("CUSTOM_RESPONSE_HEADERS", "X-Sq-Test: upfront")
        .start();

    let first_sent = Instant::now();
    for i in 0..N {
        let id = format!("upfront-{i}");
        let started = Instant::now();
        let r = send(
            &sq,
            "POST",
            &format!("/orders/{i}?src=test"),
            &body_for("upfront", i),
            Some(&id),
        );
        let took = started.elapsed();
        assert_sq_response(&r, 202, "Request Queued", &[("X-Sq-Test", "upfront")]);
        assert!(
            took < slow / 2,
            "202 took {took:?}: it waited for the endpoint"
        );
        if i == 0 {
            // The replay thread takes it at once; the endpoint now sits on it.
            assert!(
                u.wait_requests(1, Duration::from_secs(5)),
                "the first queued request was not replayed; stderr:\n{}",
                sq.stderr()
            );
        }
    }
    let r = send(&sq, "DELETE", "/orders/9", b"", Some("upfront-del"));
    assert_sq_response(&r, 202, "Request Queued", &[("X-Sq-Test", "upfront")]);
    // Every 202 came while the endpoint still held the first replayed request: the
    // endpoint has seen that one request at most, so none was tried before its 202.
    let seen = u.request_count();
    if first_sent.elapsed() < slow - Duration::from_millis(300) {
        assert!(
            seen <= 1,
            "the endpoint saw {seen} requests before the first queued one was answered: \
             upfront requests were tried before their 202"
        );
    } else {
        eprintln!(
            "note: sending took {:?}; request-count check skipped",
            first_sent.elapsed()
        );
    }

    // Not eligible: proxied at once (the replay thread's slow delivery does not hold
    // live traffic back).
    let started = Instant::now();
    let r = send(&sq, "GET", "/orders/1", b"", Some("direct-get"));
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(r.body_str(), "/orders/1");
    let r = send(&sq, "POST", "/orders", b"not-queued", Some("direct-post"));
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(r.body_str(), "/orders");
    assert!(
        started.elapsed() < slow / 2,
        "live requests waited {:?} behind the replay",
        started.elapsed()
    );

    assert!(
        u.wait_requests(N + 3, REPLAY_DEADLINE),
        "only {} requests reached the endpoint; stderr:\n{}",
        u.request_count(),
        sq.stderr()
    );
    assert!(wait_drained(&sq, 1, Duration::from_secs(10)));
    assert!(holds_for(Duration::from_millis(500), || u.request_count() == N + 3));

    let reqs = u.requests();
    let queued: Vec<&Recorded> = reqs
        .iter()
        .filter(|r| {
            r.header("x-request-id")
                .is_some_and(|v| v.starts_with("upfront"))
        })
        .collect();
    let targets: Vec<&str> = queued.iter().map(|r| r.target.as_str()).collect();
    let mut want: Vec<String> = (0..N).map(|i| format!("/orders/{i}?src=test")).collect();
    want.push("/orders/9".into());
    assert_eq!(
        targets, want,
        "queued requests delivered in order, once each"
    );
    for (i, r) in queued.iter().take(N).enumerate() {
        assert_eq!(r.method, "POST");
        assert!(r.body == body_for("upfront", i), "body of upfront #{i}");
        assert_eq!(
            r.header("x-request-id"),
            Some(format!("upfront-{i}").as_str())
        );
    }
    assert_eq!(queued[N].method, "DELETE");
    for id in ["direct-get", "direct-post"] {
        assert_eq!(
            reqs.iter()
                .filter(|r| r.header("x-request-id") == Some(id))
                .count(),
            1,
            "{id} proxied once"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 6. 429 while queued requests fill the peak
// ---------------------------------------------------------------------------------------

#[test]
fn queued_requests_fill_the_peak_then_429_until_drained() {
    let mut u = down_upstream(Behaviour::Echo);
    let sq = queue_conf(&[u.url()], "POST")
        .set("CONCURRENCY_PEAK", "3")
        .start();
    for i in 0..3 {
        let r = send(
            &sq,
            "POST",
            &format!("/peak/{i}"),
            &body_for("peak", i),
            None,
        );
        assert_buffered(&r, &format!("POST /peak/{i}"));
    }
    // Three queued requests hold the three slots.
    let r = send(&sq, "POST", "/peak/3", &body_for("peak", 3), None);
    assert_sq_response(&r, 429, "Request Discarded", &[]);
    let r = send(&sq, "GET", "/peak/get", b"", None);
    assert_sq_response(&r, 429, "Request Discarded", &[]);
    let listener = format!("serviceq:{}", sq.port());
    assert!(
        sq.wait_for_error_log(Duration::from_secs(5), |lines| lines
            .iter()
            .any(|l| is_log_line(l, &listener, 601, "SERVICEQ_FLOODED"))),
        "no 601 line; error log:\n{}",
        sq.error_log()
    );

    u.restart();
    assert!(
        u.wait_requests(3, REPLAY_DEADLINE),
        "queue not delivered; stderr:\n{}",
        sq.stderr()
    );
    assert!(wait_drained(&sq, 1, Duration::from_secs(5)));
    // The slots come back right after the last delivery.
    assert!(
        wait_until(Duration::from_secs(5), || send(
            &sq, "GET", "/after/0", b"", None
        )
        .status
            == 200),
        "no room after the queue drained"
    );
    for i in 1..=10 {
        let r = send(&sq, "POST", &format!("/after/{i}"), b"x", None);
        assert_eq!(r.status, 200, "request {i} after the drain: {}", r.raw_head);
        assert_eq!(r.body_str(), format!("/after/{i}"));
    }
    // The whole peak is usable again: three clients at once.
    let addr = sq.addr();
    let parallel: Vec<_> = (0..3)
        .map(|i| {
            thread::spawn(move || {
                request(
                    addr,
                    &raw_request("POST", HOST, &format!("/par/{i}"), b"p", None),
                )
                .status
            })
        })
        .collect();
    for h in parallel {
        assert_eq!(h.join().unwrap(), 200);
    }
    let targets: Vec<String> = u.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(&targets[..3], &["/peak/0", "/peak/1", "/peak/2"]);
    assert!(
        !targets.iter().any(|t| t == "/peak/3" || t == "/peak/get"),
        "a discarded request reached the endpoint: {targets:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 7. The replay thread waits without burning CPU
// ---------------------------------------------------------------------------------------

/// Clock ticks per second for /proc/PID/stat.
fn clock_ticks() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    let ticks = out
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100);
    assert!(
        (10..=10_000).contains(&ticks),
        "implausible CLK_TCK {ticks}"
    );
    ticks
}

/// utime + stime of a process (every thread), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the `(comm)`, which may itself hold spaces: state is field 3, utime
    // field 14, stime field 15.
    let after = &stat[stat.rfind(')').expect("comm") + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

#[test]
fn replay_thread_waits_for_the_cluster_without_burning_cpu() {
    const WINDOW: Duration = Duration::from_secs(10);
    let u = down_upstream(Behaviour::Ok);
    let sq = queue_conf(&[u.url()], "POST").start();
    let r = send(&sq, "POST", "/cpu", b"waiting", None);
    assert_buffered(&r, "POST /cpu");
    assert!(sq.wait_for_stderr("replay of POST /cpu failed", Duration::from_secs(5)));

    let ticks = clock_ticks();
    let pid = sq.pid();
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    thread::sleep(WINDOW);
    let (elapsed, used) = (t0.elapsed(), cpu_ticks(pid) - c0);
    let share = used as f64 / ticks as f64 / elapsed.as_secs_f64();
    eprintln!(
        "serviceq CPU while waiting: {used} ticks at {ticks} Hz in {elapsed:.1?} = {:.3}% of a core",
        share * 100.0
    );
    assert!(
        share < 0.02,
        "serviceq used {used} ticks ({:.2}% of a core) in {elapsed:?} while the replay thread \
         waited for a down cluster",
        share * 100.0
    );
    // It was waiting, not stuck: tries went on meanwhile.
    assert!(stderr_count(&sq, "replay of POST /cpu failed") >= 3);
    assert_eq!(u.request_count(), 0);
}
