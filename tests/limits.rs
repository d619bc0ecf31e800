//! Client-side limits and rejections (SPEC §3, §6): the concurrency cap and 429,
//! reclaiming idle keep-alive workers, malformed requests (400), oversized heads (431)
//! and bodies (413), slow heads (408) and unsupported versions (505).

// Each test file uses part of the shared helpers: see tests/support/mod.rs.
#[allow(dead_code)]
mod support;

use std::time::Duration;

use support::*;

const CUSTOM_HDR: (&str, &str) = ("X-Sq-Test", "yes");

fn conf(u: &Upstream) -> Conf {
    Conf::new(&[u.url()]).set("CUSTOM_RESPONSE_HEADERS", "X-Sq-Test: yes")
}

#[test]
fn concurrency_peak_gives_complete_429_and_logs_601() {
    let mut u = Upstream::start(Behaviour::Hang);
    let sq = conf(&u)
        .set("CONCURRENCY_PEAK", "2")
        .set("OUTGOING_REQUEST_TIMEOUT", "20")
        .start();
    let mut busy = Vec::new();
    for i in 0..2 {
        let mut c = Client::connect(sq.addr());
        c.send(format!("GET /busy{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
        busy.push(c);
    }
    assert!(
        u.wait_requests(2, Duration::from_secs(5)),
        "both busy requests should reach the upstream"
    );

    let mut third = Client::connect(sq.addr());
    third.send("GET /third HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = third
        .try_read_response(false)
        .expect("the 429 must be read completely, not reset");
    assert_sq_response(&r, 429, "Request Discarded", &[CUSTOM_HDR]);
    assert_eq!(
        u.request_count(),
        2,
        "the discarded request must not reach the upstream"
    );

    let want = format!("serviceq:{}", sq.port());
    assert!(
        sq.wait_for_error_log(Duration::from_secs(5), |l| l
            .iter()
            .any(|x| x.contains("SERVICEQ_FLOODED"))),
        "no 601 line in the error log"
    );
    let lines = sq.error_log_lines();
    let line = lines
        .iter()
        .find(|x| x.contains("SERVICEQ_FLOODED"))
        .unwrap();
    if let Err(e) = check_log_line(line, &want, 601, "SERVICEQ_FLOODED") {
        panic!("{e}");
    }

    // Once the upstream lets go, the busy clients get answers and the proxy serves again.
    u.stop();
    for c in busy.iter_mut() {
        let r = c.read_response();
        assert!(r.status >= 500, "busy client got {}", r.status);
    }
}

#[test]
fn idle_keep_alive_connection_is_reclaimed_before_429() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = conf(&u)
        .set("CONCURRENCY_PEAK", "2")
        .set("KEEP_ALIVE_TIMEOUT", "60")
        .start();
    let mut idle = Vec::new();
    for i in 0..2 {
        let mut c = Client::connect(sq.addr());
        c.send(format!("GET /idle{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(c.read_response().status, 200);
        idle.push(c);
    }
    let mut third = Client::connect(sq.addr());
    third.send("GET /third HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = third.read_response();
    assert_eq!(
        r.status,
        200,
        "an idle keep-alive connection should have been closed instead: {}{}",
        r.raw_head,
        r.body_str()
    );
    let reclaimed = wait_until(Duration::from_secs(5), || {
        idle.iter_mut().any(|c| c.is_closed_now())
    });
    assert!(reclaimed, "neither idle keep-alive connection was closed");
    assert!(
        !sq.error_log().contains("SERVICEQ_FLOODED"),
        "{}",
        sq.error_log()
    );
}

#[test]
fn held_requests_never_exceed_the_peak() {
    // Peak 3 with a slow upstream and 6 simultaneous clients, five rounds: every client
    // gets a complete answer (200 or 429, never a silent close), at most 3 per round
    // are served, and the upstream never sees more than 3 at once.
    let u = Upstream::start(Behaviour::Slow(Duration::from_millis(800)));
    let sq = conf(&u).set("CONCURRENCY_PEAK", "3").start();
    let addr = sq.addr();
    for round in 0..5 {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    c.send(format!(
                        "GET /{round}/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    ));
                    c.try_read_response(false).map(|r| r.status)
                })
            })
            .collect();
        let statuses: Vec<u16> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: a client got no response: {e}"))
            })
            .collect();
        let ok = statuses.iter().filter(|s| **s == 200).count();
        let discarded = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!(ok + discarded, 6, "round {round}: {statuses:?}");
        assert!((1..=3).contains(&ok), "round {round}: {statuses:?}");
        // Let the served connections close before the next burst.
        std::thread::sleep(Duration::from_millis(200));
    }
    let reqs = u.requests();
    for r in &reqs {
        let overlapping = reqs
            .iter()
            .filter(|q| q.at <= r.at && r.at - q.at < Duration::from_millis(700))
            .count();
        assert!(overlapping <= 3, "more than 3 requests in flight upstream");
    }
}

fn assert_400_and_closed(sq: &ServiceQ, raw: &[u8]) {
    let mut c = Client::connect(sq.addr());
    let _ = c.try_send(raw);
    let r = c.try_read_response(false).unwrap_or_else(|e| {
        panic!(
            "no complete response to {:?}: {e}",
            String::from_utf8_lossy(raw)
        )
    });
    let what = String::from_utf8_lossy(raw).into_owned();
    assert_eq!(
        r.status,
        400,
        "for {what:?}: {}{}",
        r.raw_head,
        r.body_str()
    );
    assert_sq_response(&r, 400, "Bad Request", &[CUSTOM_HDR]);
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "connection not closed after 400 for {what:?}"
    );
}

#[test]
fn malformed_requests_get_400_and_close() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = conf(&u).start();
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
        b"GET\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    ];
    for raw in cases {
        assert_400_and_closed(&sq, raw);
    }
    assert_eq!(
        u.request_count(),
        0,
        "a malformed request reached the upstream: {:#?}",
        u.requests()
    );
}

#[test]
fn request_smuggling_attempt_is_not_forwarded() {
    let u = Upstream::start(Behaviour::Echo);
    let sq = conf(&u).start();
    let mut c = Client::connect(sq.addr());
    let _ = c.try_send(
        "POST /outer HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let r = c.try_read_response(false).expect("a response");
    assert_eq!(r.status, 400);
    assert!(c.closed_within(Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        u.requests().iter().all(|q| q.target != "/smuggled"),
        "{:#?}",
        u.requests()
    );
    assert_eq!(u.request_count(), 0);
}

#[test]
fn unsupported_transfer_codings_are_rejected() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = conf(&u).start();
    let cases: &[&str] = &[
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    ];
    for raw in cases {
        let mut c = Client::connect(sq.addr());
        let _ = c.try_send(raw);
        let r = c.try_read_response(false).expect("a response");
        assert!(
            r.status == 400 || r.status == 501,
            "for {raw:?}: {}",
            r.raw_head
        );
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "not closed after {raw:?}"
        );
    }
    assert_eq!(u.request_count(), 0);
}

#[test]
fn oversized_head_gets_431() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = conf(&u).set("MAX_HEADER_SIZE", "1024").start();
    // Under the limit passes.
    let small = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(500)
    );
    assert_eq!(request(sq.addr(), small.as_bytes()).status, 200);
    // Over it does not.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let mut c = Client::connect(sq.addr());
    let _ = c.try_send(big.as_bytes());
    let r = c.try_read_response(false).expect("complete 431 response");
    assert_sq_response(&r, 431, "Request Header Fields Too Large", &[CUSTOM_HDR]);
    assert_eq!(u.request_count(), 1);
}

#[test]
fn body_over_limit_by_content_length_gets_413_before_reading() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = conf(&u).set("MAX_REQUEST_BODY", "100").start();
    // Exactly at the limit passes.
    let at = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}",
        "b".repeat(100)
    );
    assert_eq!(request(sq.addr(), at.as_bytes()).status, 200);
    // Over the limit: the head alone must be enough for the 413.
    let mut c = Client::connect(sq.addr());
    c.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n");
    let r = c
        .try_read_response(false)
        .expect("413 decided from Content-Length, before the body");
    assert_sq_response(&r, 413, "Content Too Large", &[CUSTOM_HDR]);
    // With Expect: 100-continue, the 413 comes instead of 100 Continue.
    let mut c = Client::connect(sq.addr());
    c.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n");
    let r = c
        .try_read_response(false)
        .expect("413 instead of 100 Continue");
    assert_sq_response(&r, 413, "Content Too Large", &[CUSTOM_HDR]);
    assert_eq!(u.request_count(), 1);
}

#[test]
fn chunked_body_over_limit_gets_413() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = conf(&u).set("MAX_REQUEST_BODY", "100").start();
    let chunk = "a".repeat(60);
    let raw = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3c\r\n{chunk}\r\n3c\r\n{chunk}\r\n3c\r\n{chunk}\r\n0\r\n\r\n"
    );
    let mut c = Client::connect(sq.addr());
    let _ = c.try_send(raw.as_bytes());
    let r = c.try_read_response(false).expect("complete 413 response");
    assert_sq_response(&r, 413, "Content Too Large", &[CUSTOM_HDR]);
    assert_eq!(u.request_count(), 0);
}

#[test]
fn slow_head_gets_408_and_close() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = conf(&u).set("CLIENT_HEADER_TIMEOUT", "1").start();
    let mut c = Client::connect(sq.addr());
    c.set_read_timeout(Duration::from_secs(6));
    c.send("GET / HTTP/1.1\r\nHost: x\r\n");
    let r = c
        .try_read_response(false)
        .expect("408 within a few seconds");
    assert_sq_response(&r, 408, "Request Timeout", &[CUSTOM_HDR]);
    assert!(c.closed_within(Duration::from_secs(5)));
    assert_eq!(u.request_count(), 0);
}

#[test]
fn http_1_2_gets_505() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = conf(&u).start();
    let mut c = Client::connect(sq.addr());
    let _ = c.try_send("GET / HTTP/1.2\r\nHost: x\r\n\r\n");
    let r = c.try_read_response(false).expect("a 505 response");
    assert_eq!(r.status, 505, "{}{}", r.raw_head, r.body_str());
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{}",
        r.raw_head
    );
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    let body = r.body_str();
    assert!(
        body.starts_with("{\"sq_msg\":\"") && body.ends_with("\"}"),
        "body {body:?}"
    );
    assert_eq!(r.headers_named("X-Sq-Test"), vec!["yes"]);
    assert_eq!(u.request_count(), 0);
}

/// A peak of 2 with a long CLIENT_HEADER_TIMEOUT (30 s), and an admin listener to see
/// the connections taken.
fn start_peak_of_two(u: &Upstream) -> (ServiceQ, std::net::SocketAddr) {
    let admin_port = refusing_port();
    let sq = conf(u)
        .set("CONCURRENCY_PEAK", "2")
        .set("CLIENT_HEADER_TIMEOUT", "30")
        .set("ADMIN_PORT", &admin_port.to_string())
        .start();
    assert!(wait_for_port(admin_port, Duration::from_secs(5)));
    (sq, format!("127.0.0.1:{admin_port}").parse().unwrap())
}

/// Waits until /metrics on `admin` shows `n` client connections open.
fn wait_connections_active(admin: std::net::SocketAddr, n: usize) -> bool {
    let want = format!("\nserviceq_connections_active {n}\n");
    wait_until(Duration::from_secs(5), || {
        get(admin, "/metrics").body_str().contains(&want)
    })
}

#[test]
fn silent_new_connections_are_reclaimed_before_429() {
    // Two connections that send nothing hold both workers of a peak of 2: they hold no
    // request, so a real client must be served (not refused with 429 for as long as
    // CLIENT_HEADER_TIMEOUT lasts).
    let u = Upstream::start(Behaviour::Ok);
    let (sq, admin) = start_peak_of_two(&u);
    let mut silent: Vec<Client> = (0..2).map(|_| Client::connect(sq.addr())).collect();
    assert!(
        wait_connections_active(admin, 2),
        "both silent connections taken"
    );
    // A new connection gets a short grace (a quarter second) before it counts as
    // silent; well within CLIENT_HEADER_TIMEOUT (30 s), a real client is served.
    let mut statuses = Vec::new();
    let served = wait_until(Duration::from_secs(3), || {
        let r = get(sq.addr(), "/real");
        statuses.push(r.status);
        r.status == 200
    });
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        served,
        "silent connections locked a real client out: {refused} of {} tries got 429",
        statuses.len()
    );
    let reclaimed = wait_until(Duration::from_secs(5), || {
        silent.iter_mut().any(|c| c.is_closed_now())
    });
    assert!(reclaimed, "neither silent connection was closed");
}

#[test]
fn a_silent_new_connection_holds_no_worker_while_the_kernel_defers_it() {
    // The listener defers `accept` until a client's first bytes arrive (about a second
    // for one that sends nothing): two silent connections on a peak of 2 take no
    // worker, so a real client is served at once, without closing either of them, and
    // the error log has no 429.
    let u = Upstream::start(Behaviour::Ok);
    let (sq, admin) = start_peak_of_two(&u);
    let mut silent: Vec<Client> = (0..2).map(|_| Client::connect(sq.addr())).collect();
    let r = get(sq.addr(), "/real");
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.body_str());
    assert!(
        !silent.iter_mut().any(|c| c.is_closed_now()),
        "a silent connection was closed to serve the real client: it had taken a worker"
    );
    assert!(
        wait_connections_active(admin, 0),
        "the silent connections were accepted before their first byte"
    );
    assert!(
        !sq.error_log().contains("SERVICEQ_FLOODED"),
        "{}",
        sq.error_log()
    );
}

#[test]
fn new_connection_whose_request_started_is_not_reclaimed() {
    // A connection that has sent part of its head holds a request being read: it is
    // never reclaimed, so with both workers on such connections a third client gets 429,
    // and the two started requests are served when they complete.
    let u = Upstream::start(Behaviour::Ok);
    let (sq, admin) = start_peak_of_two(&u);
    let mut started: Vec<Client> = (0..2)
        .map(|i| {
            let mut c = Client::connect(sq.addr());
            c.send(format!("GET /started{i} HTTP/1.1\r\n"));
            c
        })
        .collect();
    assert!(wait_connections_active(admin, 2));
    let mut third = Client::connect(sq.addr());
    third.send("GET /third HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = third.try_read_response(false).expect("a complete 429");
    assert_sq_response(&r, 429, "Request Discarded", &[CUSTOM_HDR]);
    for c in started.iter_mut() {
        c.send("Host: x\r\n\r\n");
        assert_eq!(c.read_response().status, 200);
    }
}

/// Sets the soft open-file limit of a running process with util-linux's `prlimit`.
fn set_nofile(pid: u32, limit: usize) {
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit --nofile={limit}: failed");
}

/// A running process's soft open-file limit, from /proc/PID/limits.
fn nofile(pid: u32) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files"));
    line.and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .expect("a soft limit on open files")
}

#[test]
fn running_out_of_file_descriptors_is_survived_and_logged_sparingly() {
    // The process runs out of descriptors while clients wait: the accepting workers
    // back off and retry, the warning is written about once a second (not once per
    // worker per retry), every client gets a complete answer, and once descriptors are
    // back the clients still waiting in the listen queue are served.
    if !require_tool("prlimit", "--version") {
        return;
    }
    let u = Upstream::start(Behaviour::Ok);
    let sq = conf(&u).set("CONCURRENCY_PEAK", "64").start();
    // Room for four more descriptors: the kernel gives the lowest free number, and the
    // limit bounds the number, so it goes just past the fourth free one. (Each worker
    // blocked in `accept` holds a number already, taken before it slept: the first
    // clients get through whatever the limit, hence more clients than workers seated.)
    let fds = |pid: u32| -> Vec<usize> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("read /proc/PID/fd")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    };
    let used = fds(sq.pid());
    let soft = nofile(sq.pid());
    let fourth_free = (0..).filter(|n| !used.contains(n)).nth(3).unwrap_or(0);
    set_nofile(sq.pid(), fourth_free + 1);
    let mut clients: Vec<Client> = (0..40)
        .map(|i| {
            let mut c = Client::connect(sq.addr());
            c.send(format!("GET /wait{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
            c
        })
        .collect();
    assert!(
        sq.wait_for_stderr("accept failed", Duration::from_secs(5)),
        "no accept failure logged (descriptors {used:?}, limit {}): {}",
        fourth_free + 1,
        sq.stderr()
    );
    // The next warning comes about a second after the first (the workers retry every
    // 10 ms meanwhile): waited for as a line, and timed.
    let first = std::time::Instant::now();
    let warnings = || sq.stderr().matches("accept failed").count();
    assert!(
        wait_until(Duration::from_secs(5), || warnings() >= 2),
        "the failure was logged once and never again: {}",
        sq.stderr()
    );
    let gap = first.elapsed();
    assert!(
        gap >= Duration::from_millis(500),
        "a second accept-failure line {gap:?} after the first: {}",
        sq.stderr()
    );
    set_nofile(sq.pid(), soft);
    let statuses: Vec<u16> = clients
        .iter_mut()
        .enumerate()
        .map(|(i, c)| match c.try_read_response(false) {
            Ok(r) => r.status,
            Err(e) => panic!("client {i} got no complete response: {e}"),
        })
        .collect();
    // Those accepted while descriptors ran out could not reach the endpoint (a 5xx
    // from ServiceQ); those still queued were served once they were back.
    assert!(
        statuses
            .iter()
            .all(|s| *s == 200 || (500..=504).contains(s)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&200),
        "none served after recovery: {statuses:?}"
    );
    let r = get(sq.addr(), "/after");
    assert_eq!(r.status, 200, "served after the descriptors came back");
}
