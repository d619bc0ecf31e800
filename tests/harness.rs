//! Tests of the test support itself (no proxy involved): the raw client against the mock
//! upstream, stop/restart on the same port, and the log-line and `listening on` parsers.
//! When these fail, the other suites' failures say nothing about ServiceQ.

// Each test file uses part of the shared helpers: see tests/support/mod.rs.
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

fn mock_addr(u: &Upstream) -> SocketAddr {
    format!("127.0.0.1:{}", u.port()).parse().unwrap()
}

#[test]
fn client_reads_mock_responses() {
    let u = Upstream::start(Behaviour::Echo);
    let mut c = Client::connect(mock_addr(&u));
    c.send("GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    assert_eq!(c.read_response().body_str(), "/a");
    let r = c.read_response();
    assert_eq!(r.body_str(), "/b");
    assert_eq!(r.framing, Framing::Length(2));
    c.send("HEAD /c HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!(r.header("content-length"), Some("2"));
    c.send("GET /d HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_response().body_str(), "/d");
    let reqs = u.requests();
    assert_eq!(reqs.len(), 4);
    assert!(reqs[1].chunked);
    assert_eq!(reqs[1].body, b"abc");
    assert!(reqs.iter().all(|r| r.conn == 0));
    assert!(wait_until(Duration::from_secs(2), || u.answered() == 4));
}

#[test]
fn chunked_and_scripted_behaviours() {
    let u = Upstream::start(Behaviour::Chunked(vec![b"ab".to_vec(), b"cde".to_vec()]));
    u.script(vec![
        Behaviour::Respond(Resp::new(204, "No Content", "ignored")),
        Behaviour::Malformed,
    ]);
    let mut c = Client::connect(mock_addr(&u));
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 204);
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(c.try_read_response(false).is_err());
    let r = get(mock_addr(&u), "/");
    assert_eq!(r.framing, Framing::Chunked);
    assert_eq!(r.body_str(), "abcde");
}

#[test]
fn stop_and_restart_on_the_same_port() {
    let mut u = Upstream::start(Behaviour::Ok);
    let addr = mock_addr(&u);
    // A connection in TIME_WAIT or still open must not block the restart.
    let mut c = Client::connect(addr);
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    u.stop();
    assert!(
        c.closed_within(Duration::from_secs(2)),
        "stop closes open connections"
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "stopped mock still accepts"
    );
    u.restart();
    assert_eq!(get(addr, "/").status, 200);
    assert_eq!(u.request_count(), 2);
}

#[test]
fn close_on_accept_and_hang_are_observable() {
    let u = Upstream::start(Behaviour::CloseOnAccept);
    let mut c = Client::connect(mock_addr(&u));
    let _ = c.try_send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(c.closed_within(Duration::from_secs(2)));
    assert!(wait_until(Duration::from_secs(2), || u.connections() == 1));
    assert_eq!(u.request_count(), 0);

    let h = Upstream::start(Behaviour::Hang);
    let mut c = Client::connect(mock_addr(&h));
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(h.wait_requests(1, Duration::from_secs(2)));
    assert!(!c.closed_within(Duration::from_millis(300)));
    drop(c);
    assert!(
        wait_until(Duration::from_secs(2), || h.closed_connections() == 1),
        "hang ends when the peer leaves"
    );
}

#[test]
fn big_body_is_generated() {
    let u = Upstream::start(Behaviour::BigBody(3 * 65536 + 17));
    let mut c = Client::connect(mock_addr(&u));
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut n = 0u64;
    let r = c
        .read_response_with(false, &mut |b| n += b.len() as u64)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(n, 3 * 65536 + 17);
}

#[test]
fn log_line_checker() {
    let ep = "http://127.0.0.1:8001";
    let good = "ServiceQ: 2018/04/18 14:10:28 Error detected on http://127.0.0.1:8001 [Code: 701, UPSTREAM_DOWN]";
    assert!(check_log_line(good, ep, 701, "UPSTREAM_DOWN").is_ok());
    assert!(check_log_line(good, ep, 702, "UPSTREAM_DOWN").is_err());
    assert!(check_log_line(&format!("{good} "), ep, 701, "UPSTREAM_DOWN").is_err());
    assert!(check_log_line(
        &good.replace("2018/04/18", "2018-04-18"),
        ep,
        701,
        "UPSTREAM_DOWN"
    )
    .is_err());
    assert!(check_log_line(
        &good.replace("ServiceQ:", "Serviceq:"),
        ep,
        701,
        "UPSTREAM_DOWN"
    )
    .is_err());
    assert!(check_log_line(&good.replace(":8001", ""), ep, 701, "UPSTREAM_DOWN").is_err());
}

#[test]
fn listening_line_parser() {
    assert_eq!(
        parse_listening("x\nserviceq: listening on 127.0.0.1:4242 (8 workers)\n"),
        Some("127.0.0.1:4242".parse().unwrap())
    );
    assert_eq!(
        parse_listening("listening on [::1]:80\n"),
        Some("[::1]:80".parse().unwrap())
    );
    assert_eq!(
        parse_listening("listening on 127.0.0.1:4242"),
        Some("127.0.0.1:4242".parse().unwrap())
    );
    assert_eq!(parse_listening("listening on 127.0.0.1:42a"), None);
    assert_eq!(parse_listening("not yet\n"), None);
}

#[test]
fn close_after_response_really_closes() {
    let u = Upstream::start(Behaviour::CloseAfterResponse);
    let mut c = Client::connect(mock_addr(&u));
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    assert!(
        c.closed_within(Duration::from_secs(2)),
        "the peer must see FIN right after the response"
    );
    for b in [
        Behaviour::CloseAfterRequest,
        Behaviour::Malformed,
        Behaviour::CloseMidBody,
    ] {
        u.set(b.clone());
        let mut c = Client::connect(mock_addr(&u));
        c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = c.try_read_response(false);
        assert!(
            c.closed_within(Duration::from_secs(2)),
            "{b:?} must close the connection"
        );
    }
}
