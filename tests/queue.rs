//! The deferred and upfront queue (SPEC §5, §9): eligibility rules, 503 Request
//! Buffered / 202 Request Queued, FIFO replay when the cluster comes back, queued
//! requests counting against CONCURRENCY_PEAK, and the journal surviving a crash.

// Each test file uses part of the shared helpers: see tests/support/mod.rs.
#[allow(dead_code)]
mod support;

use std::time::Duration;

use support::*;

const CUSTOM_HDR: (&str, &str) = ("X-Sq-Test", "yes");
/// Replay pauses grow to at most 5 s while every endpoint is down.
const REPLAY_DEADLINE: Duration = Duration::from_secs(15);

fn queue_conf(u: &Upstream, formats: &str) -> Conf {
    Conf::new(&[u.url()])
        .set("ENABLE_DEFERRED_Q", "true")
        .set("DEFERRED_Q_REQUEST_FORMATS", formats)
        .set("MAX_RETRIES", "1")
        .set("CUSTOM_RESPONSE_HEADERS", "X-Sq-Test: yes")
}

fn post(sq: &ServiceQ, path: &str, body: &str) -> Response {
    request(
        sq.addr(),
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn send(sq: &ServiceQ, method: &str, path: &str) -> Response {
    request(
        sq.addr(),
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
}

#[test]
fn deferred_queue_buffers_then_replays_in_fifo_order() {
    let mut u = down_upstream(Behaviour::Echo);
    let sq = queue_conf(&u, "POST").start();
    for i in 1..=3 {
        let r = post(&sq, &format!("/q{i}"), &format!("body-{i}"));
        assert_sq_response(&r, 503, "Request Buffered", &[CUSTOM_HDR]);
    }
    let r = send(&sq, "GET", "/not-eligible");
    assert_sq_response(&r, 503, "Service Unavailable", &[CUSTOM_HDR]);

    u.restart();
    assert!(
        u.wait_requests(3, REPLAY_DEADLINE),
        "queued requests not replayed; upstream saw {:#?}",
        u.requests()
    );
    holds_for(Duration::from_millis(500), || u.request_count() == 3);
    let reqs = u.requests();
    let targets: Vec<&str> = reqs.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        vec!["/q1", "/q2", "/q3"],
        "FIFO replay, each once, GET not queued"
    );
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.body_str(), format!("body-{}", i + 1));
        assert!(
            r.header("x-request-id")
                .map(|v| !v.is_empty())
                .unwrap_or(false),
            "{:?}",
            r.headers
        );
        assert_eq!(
            r.header("content-length"),
            Some(format!("{}", r.body.len()).as_str())
        );
    }
    // Live traffic flows again.
    assert_eq!(send(&sq, "GET", "/live").status, 200);
}

#[test]
fn upfront_queue_answers_202_and_delivers() {
    let u = Upstream::start(Behaviour::Echo);
    let sq = queue_conf(&u, "POST /orders")
        .set("ENABLE_UPFRONT_Q", "true")
        .start();
    let r = post(&sq, "/orders", "order-1");
    assert_sq_response(&r, 202, "Request Queued", &[CUSTOM_HDR]);
    assert!(
        u.wait_requests(1, REPLAY_DEADLINE),
        "queued request never delivered"
    );
    let q = &u.requests()[0];
    assert_eq!(
        (q.method.as_str(), q.target.as_str(), q.body_str().as_str()),
        ("POST", "/orders", "order-1")
    );
    // Not eligible: proxied at once.
    let r = send(&sq, "GET", "/direct");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "/direct");
    let r = post(&sq, "/other", "x");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "/other");
}

#[test]
fn request_format_rules_decide_eligibility() {
    let u = down_upstream(Behaviour::Ok);
    let sq = queue_conf(&u, "POST /orders !,POST,PUT /orders,PATCH,DELETE /items/*")
        .set("CONCURRENCY_PEAK", "32")
        .start();
    let cases = [
        ("POST", "/orders", false),
        ("POST", "/orders?x=1", false),
        ("POST", "/payments", true),
        ("PUT", "/orders", true),
        ("PUT", "/orders?id=5", true),
        ("PUT", "/other", false),
        ("PATCH", "/anything", true),
        ("DELETE", "/items/7", true),
        ("DELETE", "/items/7/parts", true),
        ("DELETE", "/items", false),
        ("DELETE", "/itemsx", false),
        ("GET", "/orders", false),
    ];
    for (method, path, eligible) in cases {
        let r = send(&sq, method, path);
        let want = if eligible {
            "Request Buffered"
        } else {
            "Service Unavailable"
        };
        assert_eq!(
            r.body_str(),
            format!("{{\"sq_msg\":\"{want}\"}}"),
            "{method} {path}"
        );
        assert_eq!(r.status, 503, "{method} {path}");
    }
}

#[test]
fn queued_requests_count_against_the_peak() {
    let mut u = down_upstream(Behaviour::Ok);
    let sq = queue_conf(&u, "ALL").set("CONCURRENCY_PEAK", "2").start();
    assert_sq_response(
        &post(&sq, "/a", "a"),
        503,
        "Request Buffered",
        &[CUSTOM_HDR],
    );
    assert_sq_response(
        &post(&sq, "/b", "b"),
        503,
        "Request Buffered",
        &[CUSTOM_HDR],
    );
    let r = post(&sq, "/c", "c");
    assert_sq_response(&r, 429, "Request Discarded", &[CUSTOM_HDR]);
    u.restart();
    assert!(u.wait_requests(2, REPLAY_DEADLINE), "queue not delivered");
    // The queue drained: room again.
    assert!(
        wait_until(Duration::from_secs(5), || send(&sq, "GET", "/after").status
            == 200),
        "no room after the queue drained"
    );
    let targets: Vec<String> = u.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(&targets[..2], &["/a".to_string(), "/b".to_string()]);
}

#[test]
fn request_id_is_kept_across_attempts_and_replay() {
    let u = Upstream::start(Behaviour::CloseAfterRequest);
    let sq = queue_conf(&u, "POST").start();
    let r = post(&sq, "/keep-id", "payload");
    assert_sq_response(&r, 503, "Request Buffered", &[CUSTOM_HDR]);
    // Let the replay thread fail once or twice more, then let it through.
    assert!(u.wait_requests(2, REPLAY_DEADLINE));
    u.set(Behaviour::Echo);
    assert!(
        wait_until(REPLAY_DEADLINE, || u.answered() >= 1),
        "never delivered"
    );
    let reqs = u.requests();
    let ids: Vec<&str> = reqs
        .iter()
        .map(|r| r.header("x-request-id").unwrap_or(""))
        .collect();
    assert!(!ids[0].is_empty());
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "ids differ across attempts/replays: {ids:?}"
    );
    assert!(reqs.iter().all(|r| r.body == b"payload"));
    std::thread::sleep(Duration::from_millis(500));
    let n = u.request_count();
    holds_for(Duration::from_millis(1500), || u.request_count() == n);
    assert_eq!(
        u.request_count(),
        n,
        "a delivered request was replayed again"
    );
}

#[test]
fn journal_survives_a_crash() {
    let mut u = down_upstream(Behaviour::Echo);
    let journal = TempDir::new("journal");
    let body = queue_conf(&u, "POST")
        .set("DEFERRED_Q_DIR", &journal.path().display().to_string())
        .body();
    {
        let sq = ServiceQ::start(&body);
        for i in 1..=3 {
            assert_sq_response(
                &post(&sq, &format!("/j{i}"), &format!("j-{i}")),
                503,
                "Request Buffered",
                &[CUSTOM_HDR],
            );
        }
        // Dropped here: SIGKILL, no chance to flush anything not yet on disk.
    }
    u.restart();
    let sq = ServiceQ::start(&body);
    assert!(
        u.wait_requests(3, REPLAY_DEADLINE),
        "journaled requests not replayed after restart: {:#?}",
        u.requests()
    );
    std::thread::sleep(Duration::from_millis(500));
    let targets: Vec<String> = u.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, vec!["/j1", "/j2", "/j3"]);
    drop(sq);
    // Delivered requests are acknowledged: a third start replays nothing.
    let before = u.request_count();
    let _sq = ServiceQ::start(&body);
    holds_for(Duration::from_millis(1500), || u.request_count() == before);
    assert_eq!(
        u.request_count(),
        before,
        "acknowledged requests were replayed again"
    );
}
