//! Signals (SPEC §10), the admin listener (§11) and the access log.

// Each test file uses part of the shared helpers: see tests/support/mod.rs.
#[allow(dead_code)]
mod support;

use std::fs;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let u = Upstream::start(Behaviour::Slow(Duration::from_millis(1500)));
    let mut sq = Conf::new(&[u.url()]).set("SHUTDOWN_GRACE", "10").start();
    let mut c = Client::connect(sq.addr());
    c.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(u.wait_requests(1, Duration::from_secs(5)));
    sq.signal("TERM");
    let r = c
        .try_read_response(false)
        .expect("the in-flight request must be answered");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), u.name());
    let st = sq
        .wait_exit(Duration::from_secs(5))
        .expect("no exit after SIGTERM");
    assert_eq!(
        st.code(),
        Some(0),
        "exit status after SIGTERM; stderr:\n{}",
        sq.stderr()
    );
}

#[test]
fn sigterm_closes_idle_connections_and_exits_promptly() {
    let u = Upstream::start(Behaviour::Ok);
    let mut sq = Conf::new(&[u.url()])
        .set("SHUTDOWN_GRACE", "10")
        .set("KEEP_ALIVE_TIMEOUT", "60")
        .start();
    let mut c = Client::connect(sq.addr());
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let start = Instant::now();
    sq.signal("INT");
    let st = sq
        .wait_exit(Duration::from_secs(5))
        .expect("an idle connection kept the proxy alive");
    assert_eq!(st.code(), Some(0), "stderr:\n{}", sq.stderr());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?} with only idle connections",
        start.elapsed()
    );
    assert!(c.closed_within(Duration::from_secs(2)));
}

#[test]
fn sigterm_grace_expires() {
    let u = Upstream::start(Behaviour::Hang);
    let mut sq = Conf::new(&[u.url()])
        .set("SHUTDOWN_GRACE", "1")
        .set("OUTGOING_REQUEST_TIMEOUT", "30")
        .start();
    let mut c = Client::connect(sq.addr());
    c.send("GET /hang HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(u.wait_requests(1, Duration::from_secs(5)));
    let start = Instant::now();
    sq.signal("TERM");
    let st = sq
        .wait_exit(Duration::from_secs(6))
        .expect("still running long after SHUTDOWN_GRACE");
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "exited before the grace period: {:?}",
        start.elapsed()
    );
    assert_eq!(st.code(), Some(0), "stderr:\n{}", sq.stderr());
}

#[test]
fn second_signal_exits_at_once() {
    let u = Upstream::start(Behaviour::Hang);
    let mut sq = Conf::new(&[u.url()])
        .set("SHUTDOWN_GRACE", "20")
        .set("OUTGOING_REQUEST_TIMEOUT", "30")
        .start();
    let mut c = Client::connect(sq.addr());
    c.send("GET /hang HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(u.wait_requests(1, Duration::from_secs(5)));
    sq.signal("TERM");
    assert!(
        sq.wait_exit(Duration::from_millis(500)).is_none(),
        "exited with a request in flight and 20 s of grace"
    );
    sq.signal("TERM");
    assert!(
        sq.wait_exit(Duration::from_secs(3)).is_some(),
        "a second signal must exit at once"
    );
}

#[test]
fn sighup_reloads_headers_and_endpoints_without_dropping_connections() {
    let a = Upstream::start(Behaviour::Ok);
    let b = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[a.url()])
        .set("CUSTOM_RESPONSE_HEADERS", "X-Gen: 1")
        .start();
    let mut c = Client::connect(sq.addr());
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.header("x-gen"), Some("1"));

    let new_body = sq
        .config_body()
        .replace(&a.url(), &b.url())
        .replace("X-Gen: 1", "X-Gen: 2");
    sq.rewrite_config(&new_body);
    sq.signal("HUP");
    let reloaded = wait_until(Duration::from_secs(5), || {
        get(sq.addr(), "/").header("x-gen") == Some("2")
    });
    assert!(
        reloaded,
        "SIGHUP did not apply the new headers; stderr:\n{}",
        sq.stderr()
    );
    let before_b = b.request_count();
    let r = get(sq.addr(), "/");
    assert_eq!(
        r.body_str(),
        b.name(),
        "new requests must go to the new endpoint"
    );
    assert!(b.request_count() > before_b);
    // The connection opened before the reload still works, and its next request goes
    // to the new endpoint: the endpoint connection its worker kept belongs to the old
    // endpoint list and must not be used for the new one at the same index.
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body_str(),
        b.name(),
        "a kept-alive client's request after the reload went to the old endpoint"
    );
}

#[test]
fn sighup_with_invalid_file_keeps_running_configuration() {
    let a = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[a.url()])
        .set("CUSTOM_RESPONSE_HEADERS", "X-Gen: 1")
        .start();
    let before = sq.stderr().len();
    sq.rewrite_config("ENDPOINTS=\nCONCURRENCY_PEAK=lots\n");
    sq.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let tail = sq.stderr()[before..].to_string();
            tail.contains("CONCURRENCY_PEAK") || tail.contains("ENDPOINTS")
        }),
        "the rejected reload should be explained on stderr:\n{}",
        sq.stderr()
    );
    let r = get(sq.addr(), "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-gen"), Some("1"));
}

#[test]
fn sigusr1_reopens_the_error_log() {
    let sq = Conf::new(&[refusing_url()]).set("MAX_RETRIES", "1").start();
    assert_eq!(get(sq.addr(), "/").status, 503);
    assert!(sq.wait_for_error_log(Duration::from_secs(5), |l| l.len() == 1));
    let rotated = sq.error_log_path().with_extension("log.1");
    fs::rename(sq.error_log_path(), &rotated).unwrap();
    sq.signal("USR1");
    let reopened = wait_until(Duration::from_secs(5), || {
        assert_eq!(get(sq.addr(), "/").status, 503);
        sq.error_log_path().exists()
    });
    assert!(reopened, "no new error log after SIGUSR1");
    // The request that found the new file may have been logged just before the reopen,
    // into the rotated file: one more after it.
    assert_eq!(get(sq.addr(), "/").status, 503);
    assert!(sq.wait_for_error_log(Duration::from_secs(2), |l| !l.is_empty()));
    assert!(fs::read_to_string(&rotated).unwrap().lines().count() >= 1);
}

#[test]
fn access_log_has_a_line_per_request() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[u.url()])
        .set("ACCESS_LOG_FILE", "{dir}/access.log")
        .start();
    let mut c = Client::connect(sq.addr());
    for i in 0..5 {
        c.send(format!("GET /access-{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(c.read_response().status, 200);
    }
    let path = sq.dir().join("access.log");
    let ok = wait_until(Duration::from_secs(5), || {
        fs::read_to_string(&path)
            .map(|s| s.lines().filter(|l| l.contains("/access-")).count() == 5)
            .unwrap_or(false)
    });
    assert!(ok, "access log: {:?}", fs::read_to_string(&path));
    let text = fs::read_to_string(&path).unwrap();
    for (i, line) in text.lines().filter(|l| l.contains("/access-")).enumerate() {
        assert!(line.contains(&format!("/access-{i}")), "order: {text}");
        assert!(line.contains("200"), "status missing: {line}");
    }
}

fn admin_get(port: u16, path: &str) -> Response {
    get(format!("127.0.0.1:{port}").parse().unwrap(), path)
}

#[test]
fn admin_listener_endpoints() {
    let u = Upstream::start(Behaviour::Ok);
    let admin_port = refusing_port();
    let sq = Conf::new(&[u.url()])
        .set("ADMIN_ADDRESS", "127.0.0.1")
        .set("ADMIN_PORT", &admin_port.to_string())
        .start();
    assert!(
        wait_for_port(admin_port, Duration::from_secs(5)),
        "admin listener not up"
    );
    assert_eq!(get(sq.addr(), "/").status, 200);
    let h = admin_get(admin_port, "/healthz");
    assert_eq!(h.status, 200);
    let m = admin_get(admin_port, "/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"),
        "{}",
        m.raw_head
    );
    assert!(
        m.body_str().contains("# TYPE"),
        "not Prometheus text: {}",
        m.body_str()
    );
    let s = admin_get(admin_port, "/status");
    assert_eq!(s.status, 200);
    assert!(
        s.header("content-type")
            .unwrap_or("")
            .starts_with("text/html"),
        "{}",
        s.raw_head
    );
    assert_eq!(admin_get(admin_port, "/nope").status, 404);
    assert_eq!(
        u.request_count(),
        1,
        "admin requests must not reach the upstream"
    );
}
