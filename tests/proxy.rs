//! Proxying (SPEC §3): headers in both directions, persistence, pipelining,
//! 100-continue, HTTP/1.0 clients and upstream connection reuse.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::*;

fn proxy_for(u: &Upstream) -> ServiceQ {
    Conf::new(&[u.url()]).start()
}

#[test]
fn simple_get_is_relayed() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = proxy_for(&u);
    let r = get(sq.addr(), "/hello?x=1");
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(r.body_str(), u.name());
    assert_eq!(r.header("x-upstream"), Some(u.name()));
    let reqs = u.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].target, "/hello?x=1");
    assert!(sq.error_log().is_empty(), "error log: {}", sq.error_log());
}

#[test]
fn custom_request_and_response_headers() {
    let u = Upstream::start(Behaviour::Respond(
        Resp::new(200, "OK", "hi")
            .header("x-up", "original")
            .header("Server", "mock/1.0")
            .header("X-Keep", "kept"),
    ));
    let sq = Conf::new(&[u.url()])
        .set("CUSTOM_REQUEST_HEADERS", "X-Req-A: one|X-Req-B: two=three")
        .set(
            "CUSTOM_RESPONSE_HEADERS",
            "X-Resp: r1|X-Up: replaced|Server",
        )
        .start();
    let r = get(sq.addr(), "/");
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(r.body_str(), "hi");
    assert_eq!(r.headers_named("X-Resp"), vec!["r1"], "{}", r.raw_head);
    assert_eq!(
        r.headers_named("X-Up"),
        vec!["replaced"],
        "custom header must replace the upstream one: {}",
        r.raw_head
    );
    assert_eq!(
        r.headers_named("Server"),
        vec![format!("serviceq/{VERSION}").as_str()],
        "{}",
        r.raw_head
    );
    assert_eq!(r.headers_named("X-Keep"), vec!["kept"], "{}", r.raw_head);

    let req = &u.requests()[0];
    assert_eq!(
        req.headers_named("X-Req-A"),
        vec!["one"],
        "{:?}",
        req.headers
    );
    assert_eq!(
        req.headers_named("X-Req-B"),
        vec!["two=three"],
        "{:?}",
        req.headers
    );
}

#[test]
fn forwarding_headers_reach_the_upstream() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = proxy_for(&u);
    let mut c = Client::connect(sq.addr());
    c.send("GET /a HTTP/1.1\r\nHost: front.example\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    c.send("GET /b HTTP/1.1\r\nHost: front.example:8443\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    c.send("GET /c HTTP/1.1\r\nHost: front.example\r\nX-Request-Id: abc-123\r\n\r\n");
    assert_eq!(c.read_response().status, 200);

    let reqs = u.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(
            r.headers_named("Host"),
            vec![u.host().as_str()],
            "Host must be the endpoint's: {:?}",
            r.headers
        );
        assert_eq!(
            r.headers_named("X-Forwarded-Proto"),
            vec!["http"],
            "{:?}",
            r.headers
        );
    }
    assert_eq!(
        reqs[0].headers_named("X-Forwarded-For"),
        vec!["10.0.0.1, 127.0.0.1"],
        "{:?}",
        reqs[0].headers
    );
    assert_eq!(
        reqs[1].headers_named("X-Forwarded-For"),
        vec!["127.0.0.1"],
        "{:?}",
        reqs[1].headers
    );
    assert_eq!(
        reqs[0].headers_named("X-Forwarded-Host"),
        vec!["front.example"],
        "{:?}",
        reqs[0].headers
    );
    assert_eq!(
        reqs[1].headers_named("X-Forwarded-Host"),
        vec!["front.example:8443"],
        "{:?}",
        reqs[1].headers
    );

    let id0 = reqs[0].headers_named("X-Request-Id");
    let id1 = reqs[1].headers_named("X-Request-Id");
    assert_eq!(
        id0.len(),
        1,
        "one generated X-Request-Id: {:?}",
        reqs[0].headers
    );
    assert_eq!(
        id1.len(),
        1,
        "one generated X-Request-Id: {:?}",
        reqs[1].headers
    );
    assert!(!id0[0].is_empty() && !id1[0].is_empty());
    assert_ne!(id0[0], id1[0], "generated request ids must be unique");
    assert_eq!(
        reqs[2].headers_named("X-Request-Id"),
        vec!["abc-123"],
        "client's id preserved: {:?}",
        reqs[2].headers
    );
}

#[test]
fn generated_request_ids_are_unique() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = proxy_for(&u);
    let mut c = Client::connect(sq.addr());
    for i in 0..30 {
        c.send(format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(c.read_response().status, 200);
    }
    let ids: Vec<String> = u
        .requests()
        .iter()
        .map(|r| r.header("x-request-id").unwrap_or("").to_string())
        .collect();
    assert!(ids.iter().all(|i| !i.is_empty()), "{ids:?}");
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate ids in {ids:?}");
}

/// A Connection value the proxy may legitimately set on its own hop.
fn own_connection_value(v: &str) -> bool {
    v.split(',').all(|t| {
        let t = t.trim();
        t.eq_ignore_ascii_case("keep-alive") || t.eq_ignore_ascii_case("close")
    })
}

#[test]
fn hop_by_hop_request_headers_are_not_forwarded() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = proxy_for(&u);
    let mut c = Client::connect(sq.addr());
    c.send(
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
         TE: trailers\r\nUpgrade: websocket-not-really\r\nProxy-Connection: keep-alive\r\nX-End: 1\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.raw_head);
    let req = &u.requests()[0];
    for h in [
        "X-Hop",
        "Keep-Alive",
        "TE",
        "Upgrade",
        "Proxy-Connection",
        "Trailer",
        "Transfer-Encoding",
    ] {
        assert!(
            req.header(h).is_none(),
            "{h} was forwarded upstream: {:?}",
            req.headers
        );
    }
    for v in req.headers_named("Connection") {
        assert!(
            own_connection_value(v),
            "client's Connection header forwarded: {v:?}"
        );
    }
    assert_eq!(req.header("X-End"), Some("1"));
}

#[test]
fn hop_by_hop_response_headers_are_not_forwarded() {
    let u = Upstream::start(Behaviour::Respond(
        Resp::new(200, "OK", "body")
            .header("Connection", "keep-alive, X-Resp-Hop")
            .header("X-Resp-Hop", "1")
            .header("Keep-Alive", "timeout=5, max=100")
            .header("Proxy-Connection", "keep-alive")
            .header("Upgrade", "h2c")
            .header("X-Normal", "yes"),
    ));
    let sq = proxy_for(&u);
    let mut c = Client::connect(sq.addr());
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "body");
    for h in ["X-Resp-Hop", "Keep-Alive", "Proxy-Connection", "Upgrade"] {
        assert!(
            r.header(h).is_none(),
            "{h} relayed to the client: {}",
            r.raw_head
        );
    }
    for v in r.headers_named("Connection") {
        assert!(
            own_connection_value(v),
            "upstream's Connection header relayed: {v:?}"
        );
    }
    assert_eq!(r.header("X-Normal"), Some("yes"));
    // Still usable afterwards.
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let u = Upstream::start(Behaviour::Echo);
    let sq = proxy_for(&u);
    let mut c = Client::connect(sq.addr());
    c.send(
        "GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
         GET /three HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    for want in ["/one", "/two", "/three"] {
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), want);
    }
    let two = u
        .requests()
        .into_iter()
        .find(|r| r.target == "/two")
        .expect("upstream saw /two");
    assert_eq!(two.body, b"abc");
}

#[test]
fn request_dribbled_byte_by_byte() {
    let u = Upstream::start(Behaviour::Echo);
    let sq = proxy_for(&u);
    let mut c = Client::connect(sq.addr());
    let raw = b"POST /dribble HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world";
    for (i, b) in raw.iter().enumerate() {
        c.send([*b]);
        if i % 8 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "/dribble");
    let req = &u.requests()[0];
    assert_eq!(req.body, b"hello world");
    assert_eq!(req.header("content-length"), Some("11"));
}

#[test]
fn expect_100_continue() {
    let u = Upstream::start(Behaviour::Echo);
    let sq = proxy_for(&u);
    let mut c = Client::connect(sq.addr());
    c.send(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = c.read_response();
    assert_eq!(
        interim.status, 100,
        "expected 100 Continue before the body was sent: {}",
        interim.raw_head
    );
    assert_eq!(u.request_count(), 0);
    c.send("hello world");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(r.body_str(), "/upload");
    let req = &u.requests()[0];
    assert!(
        req.header("expect").is_none(),
        "Expect forwarded upstream: {:?}",
        req.headers
    );
    assert_eq!(req.body, b"hello world");
}

#[test]
fn http10_client_without_keep_alive_is_closed() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = proxy_for(&u);
    let mut c = Client::connect(sq.addr());
    c.send("GET / HTTP/1.0\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), u.name());
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "HTTP/1.0 connection without keep-alive left open"
    );
}

#[test]
fn http10_client_with_keep_alive_stays_open() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = proxy_for(&u);
    let mut c = Client::connect(sq.addr());
    c.send("GET /1 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(
        r.header("connection")
            .map(|v| lists_token(v, "keep-alive"))
            .unwrap_or(false),
        "an HTTP/1.0 client needs `Connection: keep-alive` to know the connection persists: {}",
        r.raw_head
    );
    assert!(
        matches!(r.framing, Framing::Length(_)),
        "a persistent 1.0 response needs Content-Length: {}",
        r.raw_head
    );
    c.send("GET /2 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
    let r2 = c.read_response();
    assert_eq!(r2.status, 200);
    assert_eq!(u.request_count(), 2);
}

#[test]
fn http11_connection_close_is_honoured() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = proxy_for(&u);
    let mut c = Client::connect(sq.addr());
    c.send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "connection left open after Connection: close"
    );
}

#[test]
fn http11_connection_persists_by_default() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = proxy_for(&u);
    let mut c = Client::connect(sq.addr());
    for _ in 0..5 {
        c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.read_response().status, 200);
    }
    assert!(!c.is_closed_now());
}

#[test]
fn upstream_connections_are_reused_across_clients() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = proxy_for(&u);
    for i in 0..20 {
        let mut c = Client::connect(sq.addr());
        c.send(format!(
            "GET /{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(c.read_response().status, 200);
    }
    assert_eq!(u.request_count(), 20);
    assert!(
        u.connections() <= 2,
        "20 sequential requests opened {} upstream connections",
        u.connections()
    );
}

#[test]
fn stale_pooled_connection_is_retried_transparently() {
    let u = Upstream::start(Behaviour::CloseAfterResponse);
    // One endpoint and a single attempt: a stale connection counted as an attempt
    // would turn into a 503.
    let sq = Conf::new(&[u.url()]).set("MAX_RETRIES", "1").start();
    for i in 0..3 {
        let r = get(sq.addr(), &format!("/{i}"));
        assert_eq!(r.status, 200, "request {i}: {}{}", r.raw_head, r.body_str());
        // Let the upstream close its side so the proxy's pooled connection goes stale.
        assert!(wait_until(Duration::from_secs(5), || u
            .closed_connections()
            == i + 1));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(u.request_count(), 3);
    holds_for(Duration::from_millis(100), || sq.error_log().is_empty());
    assert!(
        sq.error_log().is_empty(),
        "a stale pooled connection is not an endpoint error: {}",
        sq.error_log()
    );
}

#[test]
fn curl_get_and_post() {
    let u = Upstream::start(Behaviour::Echo);
    let sq = proxy_for(&u);
    let url = format!("http://{}/curl?q=1", sq.addr());
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            "payload-from-curl",
            &url,
        ])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/curl?q=1");
    let req = &u.requests()[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.body, b"payload-from-curl");
}

#[test]
fn idle_client_connection_closed_after_keep_alive_timeout() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[u.url()]).set("KEEP_ALIVE_TIMEOUT", "1").start();
    let mut c = Client::connect(sq.addr());
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let start = std::time::Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "idle connection outlived KEEP_ALIVE_TIMEOUT=1"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(700),
        "closed after only {:?}",
        start.elapsed()
    );
}

#[test]
fn ipv6_listener() {
    if !require(
        "IPv6 loopback",
        std::net::TcpListener::bind("[::1]:0").is_ok(),
    ) {
        return;
    }
    let u = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[u.url()]).set("LISTENER_ADDRESS", "::1").start();
    assert!(sq.addr().is_ipv6(), "listening line: {}", sq.stderr());
    let r = get(sq.addr(), "/v6");
    assert_eq!(r.status, 200);
    assert_eq!(u.requests()[0].header("x-forwarded-for"), Some("::1"));
}

/// The plain close after `Connection: close` (nothing more sent) still delivers every
/// byte and ends with a clean EOF.
#[test]
fn connection_close_ends_with_clean_eof_after_a_large_response() {
    const BODY: u64 = 8 << 20;
    let u = Upstream::start(Behaviour::BigBody(BODY));
    let sq = proxy_for(&u);
    for _ in 0..3 {
        let mut c = Client::connect(sq.addr());
        c.send("GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut received = 0u64;
        let r = c
            .read_response_with(false, &mut |b| received += b.len() as u64)
            .expect("the whole response");
        assert_eq!((r.status, received), (200, BODY));
        assert!(c.closed_within(Duration::from_secs(5)));
    }
}
