//! Request smuggling and slow-client vectors against the real binary (SPEC §3, §6).
//!
//! One test per vector. Each request vector is followed, in the same write, by a
//! smuggled `GET /smuggled`: a proxy that read the framing differently, or that tried
//! to re-synchronise after the error, would forward it. Every vector must get its SPEC
//! status (400, or 501/505), the connection must be closed, and the upstream must see
//! nothing at all: no connection, no request.
//!
//! Then the other direction (an upstream response with ambiguous framing is a failed
//! attempt: 702 UPSTREAM_BAD_RESPONSE, never relayed, its connection not reused), and
//! the slow clients (a head or body dribbled in must not hold a worker past its
//! timeout, while other clients are served).

mod support;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::tls::make_cert;
use support::*;

/// The request a confused proxy would forward as a second one.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

/// How long the upstream is watched after the refusal, for a late forward.
const SETTLE: Duration = Duration::from_millis(300);

fn conf(u: &Upstream) -> Conf {
    Conf::new(&[u.url()])
}

/// The `sq_msg` SPEC §6 gives each refusal status.
fn message(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        other => panic!("no refusal message for {other}"),
    }
}

/// Sends `raw` followed by a smuggled request, and checks the refusal: `status` with its
/// SPEC body, the connection closed, and the upstream never contacted.
fn assert_refused(raw: &[u8], status: u16) {
    assert_refused_with(conf, raw, status);
}

fn assert_refused_with(make: fn(&Upstream) -> Conf, raw: &[u8], status: u16) {
    let u = Upstream::start(Behaviour::Echo);
    let sq = make(&u).start();
    let shown = String::from_utf8_lossy(raw).into_owned();
    let mut c = Client::connect(sq.addr());
    c.set_read_timeout(Duration::from_secs(5));
    // The proxy may refuse and close before reading everything: a failed write is fine,
    // a missing response is not.
    let _ = c.try_send([raw, SMUGGLED.as_bytes()].concat());
    let r = c
        .try_read_response(false)
        .unwrap_or_else(|e| panic!("no complete response to {shown:?}: {e}"));
    assert_eq!(
        r.status,
        status,
        "for {shown:?}:\n{}{}",
        r.raw_head,
        r.body_str()
    );
    assert_sq_response(&r, status, message(status), &[]);
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "connection left open after {status} for {shown:?}"
    );
    thread::sleep(SETTLE);
    assert_eq!(
        (u.connections(), u.request_count()),
        (0, 0),
        "the upstream was contacted for {shown:?}: {:#?}",
        u.requests()
    );
}

/// One test per vector: `name: raw bytes => status`.
macro_rules! refused {
    ($($name:ident: $raw:expr => $status:expr;)*) => {
        $(
            #[test]
            fn $name() {
                assert_refused($raw, $status);
            }
        )*
    };
}

refused! {
    // Framing: both, or ambiguous lengths (RFC 9112 §6.3, RFC 9110 §8.6).
    content_length_and_transfer_encoding:
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX" => 400;
    transfer_encoding_and_content_length:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n" => 400;
    two_differing_content_lengths:
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 41\r\n\r\nhello" => 400;
    content_length_list_of_equal_values:
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello" => 400;
    content_length_with_sign:
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello" => 400;

    // Transfer codings (RFC 9112 §6.1, §6.3 item 4).
    transfer_encoding_gzip_then_chunked:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" => 501;
    transfer_encoding_chunked_then_gzip:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n" => 400;
    transfer_encoding_identity:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n" => 400;
    transfer_encoding_chunked_twice:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" => 400;
    transfer_encoding_on_http10:
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" => 400;

    // Chunk size lines (RFC 9112 §7.1: chunk-size = 1*HEXDIG).
    chunk_size_hex_prefix:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n" => 400;
    chunk_size_negative:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nhello\r\n0\r\n\r\n" => 400;
    chunk_size_plus_sign:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n" => 400;
    chunk_size_leading_space:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n" => 400;
    chunk_size_overflow:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n" => 400;
    chunk_size_overflow_to_small:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n" => 400;
    chunk_lines_with_bare_lf:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n" => 400;
    chunk_data_without_crlf:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n" => 400;

    // Field syntax (RFC 9112 §5.1, §5.2; RFC 9110 §5.5).
    obs_fold:
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n Transfer-Encoding: chunked\r\n\r\n" => 400;
    space_before_colon:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n" => 400;
    nul_in_header_value:
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n" => 400;
    control_char_in_header_value:
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x0bb\r\n\r\n" => 400;
    control_char_in_transfer_encoding:
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \x0cchunked\r\n\r\n0\r\n\r\n" => 400;

    // Request line (RFC 9112 §3).
    request_line_with_extra_token:
        b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n" => 400;
    request_line_with_space_in_target:
        b"GET /a /b HTTP/1.1\r\nHost: x\r\n\r\n" => 400;
    http_1_2:
        b"GET / HTTP/1.2\r\nHost: x\r\n\r\n" => 505;
    http2_preface:
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" => 505;

    // Host (RFC 9112 §3.2).
    missing_host_on_http11:
        b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n" => 400;
    two_host_fields:
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" => 400;
}

#[test]
fn too_many_header_fields_get_431() {
    fn limited(u: &Upstream) -> Conf {
        conf(u).set("MAX_HEADERS", "10")
    }
    let fields: String = (0..11).map(|i| format!("X-F{i}: v\r\n")).collect();
    let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
    assert_refused_with(limited, raw.as_bytes(), 431);
}

// ---------------------------------------------------------------------------------------
// Malformed upstream responses: a failed attempt, never relayed, connection not reused
// ---------------------------------------------------------------------------------------

/// The only endpoint answers the first request with `bad`: the client gets 502, the
/// error log one 702 UPSTREAM_BAD_RESPONSE, and the next request goes on a fresh
/// upstream connection.
fn assert_bad_response(bad: Behaviour) {
    let u = Upstream::start(Behaviour::Ok);
    u.script(vec![bad]);
    let sq = conf(&u).set("MAX_RETRIES", "1").start();
    let mut c = Client::connect(sq.addr());
    c.send("GET /first HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_sq_response(&r, 502, "Bad Gateway", &[]);
    assert!(
        !r.body_str().contains("hello"),
        "upstream body relayed: {}",
        r.body_str()
    );
    assert!(
        sq.wait_for_error_log(Duration::from_secs(5), |lines| !lines.is_empty()),
        "no error-log line"
    );
    let lines = sq.error_log_lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        is_log_line(&lines[0], &u.url(), 702, "UPSTREAM_BAD_RESPONSE"),
        "{lines:#?}"
    );

    // The next request (same client connection: a 502 does not close it) is answered,
    // on a connection the bad response never touched.
    c.send("GET /second HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.body_str());
    let seen = u.requests();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[1].target, "/second");
    assert_ne!(
        seen[1].conn, seen[0].conn,
        "the connection that carried a malformed response was reused"
    );
}

#[test]
fn upstream_response_with_content_length_and_transfer_encoding_is_502() {
    assert_bad_response(Behaviour::Respond(
        Resp::new(200, "OK", "5\r\nhello\r\n0\r\n\r\n")
            .header("Content-Length", "5")
            .header("Transfer-Encoding", "chunked"),
    ));
}

#[test]
fn upstream_response_with_differing_content_lengths_is_502() {
    assert_bad_response(Behaviour::Respond(
        Resp::new(200, "OK", "hello")
            .header("Content-Length", "5")
            .header("Content-Length", "3"),
    ));
}

#[test]
fn upstream_response_with_bad_status_line_is_502() {
    assert_bad_response(Behaviour::Malformed);
}

// ---------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------

/// Writes `bytes` one at a time, `gap` apart, until done, `stop` is raised or the
/// connection fails. Returns the thread.
fn dribble(
    mut stream: TcpStream,
    bytes: Vec<u8>,
    gap: Duration,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for b in bytes {
            if stop.load(Ordering::SeqCst) || stream.write_all(&[b]).is_err() {
                return;
            }
            thread::sleep(gap);
        }
    })
}

/// Another client making fresh-connection GETs every 200 ms until `stop`; returns the
/// statuses it got (0 for no response).
fn bystander(sq_addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<u16>> {
    thread::spawn(move || {
        let mut statuses = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let mut c = Client::connect(sq_addr);
            c.set_read_timeout(Duration::from_secs(3));
            let _ = c.try_send("GET /bystander HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            statuses.push(c.try_read_response(false).map_or(0, |r| r.status));
            thread::sleep(Duration::from_millis(200));
        }
        statuses
    })
}

/// What a slow client saw: a response (the 408), a close without one, or nothing yet.
enum Ended {
    Status(u16),
    Closed,
    StillOpen,
}

/// Starts a slow client that dribbles `prefix` then `dribbled` (1 byte / 500 ms) while a
/// bystander keeps requesting; returns how the slow one ended and after how long
/// (measured from the first dribbled byte), and the bystander's statuses.
fn slow_client(sq: &ServiceQ, prefix: &[u8], dribbled: &[u8]) -> (Ended, Duration, Vec<u16>) {
    let stop = Arc::new(AtomicBool::new(false));
    let others = bystander(sq.addr(), stop.clone());
    let mut c = Client::connect(sq.addr());
    c.set_read_timeout(Duration::from_secs(6));
    c.send(prefix);
    let started = Instant::now();
    let writer = dribble(
        c.stream().try_clone().unwrap(),
        dribbled.to_vec(),
        Duration::from_millis(500),
        stop.clone(),
    );
    let ended = match c.try_read_response(false) {
        Ok(r) => Ended::Status(r.status),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Ended::StillOpen
        }
        Err(_) => Ended::Closed,
    };
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let _ = c.stream().shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    (ended, took, others.join().unwrap())
}

fn assert_timed_out(what: &str, ended: Ended, took: Duration, others: &[u16]) {
    match ended {
        Ended::Status(408) | Ended::Closed => {}
        Ended::StillOpen => panic!("{what}: still connected after {took:?}, no 408"),
        Ended::Status(s) => panic!("{what}: got {s} instead of 408"),
    }
    assert!(
        took >= Duration::from_millis(1500) && took <= Duration::from_millis(3500),
        "{what}: ended after {took:?}, want about 2 s"
    );
    assert!(
        others.len() >= 4 && others.iter().all(|&s| s == 200),
        "{what}: the other client was not served meanwhile: {others:?}"
    );
}

/// With CONCURRENCY_PEAK=2 and `timeout_key`=2, a client that sends `prefix` of its
/// `/slow` request and then dribbles `dribbled` ends after about 2 s (see
/// `assert_timed_out`) while another client is served, and nothing of its request
/// reaches the upstream.
fn slow_request_times_out(what: &str, timeout_key: &str, prefix: &[u8], dribbled: &[u8]) {
    let u = Upstream::start(Behaviour::Ok);
    let sq = conf(&u)
        .set("CONCURRENCY_PEAK", "2")
        .set(timeout_key, "2")
        .start();
    let (ended, took, others) = slow_client(&sq, prefix, dribbled);
    assert_timed_out(what, ended, took, &others);
    assert!(
        u.requests().iter().all(|r| r.target != "/slow"),
        "{what}: the slow request reached the upstream"
    );
}

#[test]
fn slowloris_head_gets_408_while_others_are_served() {
    let head = format!(
        "GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(40)
    );
    slow_request_times_out("slow head", "CLIENT_HEADER_TIMEOUT", b"", head.as_bytes());
}

#[test]
fn stalled_body_gets_408_while_others_are_served() {
    // Half the body at once, then nothing.
    let head = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n0123456789";
    slow_request_times_out("stalled body", "CLIENT_BODY_TIMEOUT", head, b"");
}

/// A body dribbled 1 byte per 500 ms is never "inactive" for CLIENT_BODY_TIMEOUT=2, yet
/// it must not hold a worker for 40 bytes × 500 ms: SPEC §3, "a slow client can hold a
/// worker only within these bounds".
#[test]
fn dribbled_body_gets_408_while_others_are_served() {
    let head = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n";
    slow_request_times_out("dribbled body", "CLIENT_BODY_TIMEOUT", head, &[b'b'; 40]);
}

#[test]
fn dribbled_chunked_body_gets_408_while_others_are_served() {
    let head = b"POST /slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let body = "1\r\nb\r\n".repeat(10);
    slow_request_times_out(
        "dribbled chunked body",
        "CLIENT_BODY_TIMEOUT",
        head,
        body.as_bytes(),
    );
}

// ---------------------------------------------------------------------------------------
// Response desynchronisation through a pooled upstream connection
// ---------------------------------------------------------------------------------------

/// A raw upstream for one connection at a time: answers each request head with
/// `answer(n)` (n counts requests across connections, from 0); after the first answer
/// it also writes `late`, 150 ms later, unasked. Returns its port.
fn late_bytes_upstream(late: &'static [u8]) -> u16 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut n = 0;
        for conn in listener.incoming().take(8) {
            let Ok(mut s) = conn else { return };
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    let body = format!("answer-{n}");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).is_err() {
                        break;
                    }
                    if n == 0 {
                        thread::sleep(Duration::from_millis(150));
                        let _ = s.write_all(late);
                    }
                    n += 1;
                }
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => buf.extend_from_slice(&tmp[..k]),
                }
            }
        }
    });
    port
}

/// An endpoint that writes bytes after a complete response (a body sent to a HEAD, a
/// Content-Length that undercounts, a buggy keep-alive) must not have them read as the
/// response to the next request on that pooled connection: that would hand one client's
/// response to another (response queue poisoning). nginx closes a cached upstream
/// connection on any read event while it is idle for this reason.
#[test]
fn bytes_after_a_response_never_answer_the_next_request() {
    let port = late_bytes_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED");
    let sq = Conf::new(&[format!("http://127.0.0.1:{port}")]).start();
    let first = get(sq.addr(), "/first");
    assert_eq!((first.status, first.body_str().as_str()), (200, "answer-0"));
    thread::sleep(Duration::from_millis(400));
    // Each later request must get its own answer: `answer-1`, `answer-2`, ... (the
    // upstream numbers them in the order it received them).
    let got: Vec<String> = (1..=3)
        .map(|i| get(sq.addr(), &format!("/victim-{i}")).body_str())
        .collect();
    assert!(
        got.iter().all(|b| b.starts_with("answer-")),
        "later clients got someone else's response: {got:?}"
    );
}

/// The same over TLS: a python3 std-lib https endpoint that writes a stray response 150
/// ms after its first answer. `https://` endpoints are pooled too, so the stray bytes
/// must not answer the next request either.
const TLS_LATE_BYTES_UPSTREAM: &str = r#"
import socket, ssl, sys, threading, time
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
count = [0]
def serve(conn):
    buf = b""
    while True:
        while b"\r\n\r\n" in buf:
            _, buf = buf.split(b"\r\n\r\n", 1)
            n = count[0]
            count[0] += 1
            body = b"answer-%d" % n
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            if n == 0:
                time.sleep(0.15)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED")
        data = conn.recv(4096)
        if not data:
            return
        buf += data
while True:
    c, _ = srv.accept()
    try:
        c = ctx.wrap_socket(c, server_side=True)
    except (OSError, ssl.SSLError):
        continue
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A child process killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tls_bytes_after_a_response_never_answer_the_next_request() {
    use std::process::{Command, Stdio};
    if !require_tool("openssl", "version") || !require_tool("python3", "--version") {
        return;
    }
    let dir = TempDir::new("tls-late");
    let (cert, key) = make_cert(dir.path(), "upstream");
    let port = refusing_port();
    let _upstream = Killed(
        Command::new("python3")
            .args(["-c", TLS_LATE_BYTES_UPSTREAM, &port.to_string()])
            .arg(&cert)
            .arg(&key)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn python3"),
    );
    assert!(
        wait_for_port(port, Duration::from_secs(10)),
        "TLS upstream did not come up"
    );
    let sq = Conf::new(&[format!("https://127.0.0.1:{port}")])
        .set("SSL_UPSTREAM_CA_FILE", &cert.display().to_string())
        .start();
    let first = get(sq.addr(), "/first");
    assert_eq!(
        (first.status, first.body_str().as_str()),
        (200, "answer-0"),
        "{}",
        first.raw_head
    );
    thread::sleep(Duration::from_millis(400));
    let got: Vec<String> = (1..=3)
        .map(|i| get(sq.addr(), &format!("/victim-{i}")).body_str())
        .collect();
    assert!(
        got.iter().all(|b| b.starts_with("answer-")),
        "later clients got someone else's response: {got:?}"
    );
}

/// A `Connection` header that names a framing field (`Connection: Content-Length`,
/// `Connection: Transfer-Encoding`) must not strip the response's own framing: the
/// client's keep-alive connection would carry a response with no length, and the next
/// response would run into it. ServiceQ re-frames every response, whatever
/// `Connection` names.
#[test]
fn connection_naming_framing_fields_does_not_unframe_responses() {
    let (port, _) = raw_endpoint(|n, s| {
        let body = format!("answer-{n}");
        let resp = if n % 2 == 0 {
            format!(
                "HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            format!(
                "HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding, X-Gone\r\nX-Gone: 1\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            )
        };
        s.write_all(resp.as_bytes()).is_ok()
    });
    let sq = Conf::new(&[format!("http://127.0.0.1:{port}")]).start();
    let mut c = Client::connect(sq.addr());
    c.set_read_timeout(Duration::from_secs(3));
    for i in 0..4 {
        c.send(format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
        let r = c.read_response();
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(
            r.body_str(),
            format!("answer-{i}"),
            "request {i}: {}",
            r.raw_head
        );
        let framed = r.header("content-length").is_some()
            || r.header("transfer-encoding")
                .is_some_and(|v| lists_token(v, "chunked"));
        assert!(
            framed,
            "request {i}: response without framing: {}",
            r.raw_head
        );
        assert!(r.header("x-gone").is_none(), "{}", r.raw_head);
    }
}
