//! Upgraded connections against the real binary. A real WebSocket echo server and a
//! real client (Python `websockets`, tests/ws/) talk through ServiceQ: text and binary
//! frames both ways, 10 MiB messages, a close from each side, 100 tunnels at once, the
//! idle timeout, and TLS on both sides. Raw-byte tests cover what the clients cannot
//! show: early bytes and half-closes passed on, a non-101 answer keeping the
//! connection as HTTP, h2c refused, and upgrades never queued nor retried once sent.
//!
//! Without `websockets` the Python tests skip with a reason, and fail when `CI` is set.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use support::tls::*;
use support::*;

/// Bounds every Python process the tests run.
const PYTHON_DEADLINE: Duration = Duration::from_secs(60);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ws")
        .join(name)
}

/// Whether Python's `websockets` (with its sync API) is importable; see `require`.
fn have_websockets() -> bool {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import websockets.sync.server, websockets.sync.client",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require(
        "python3 with the `websockets` package (pip install websockets)",
        ok,
    )
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads lines from a child's stdout on a thread, so waits can have deadlines.
fn lines_of(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// tests/ws/echo_server.py on a free port (wss:// with a certificate).
struct EchoServer {
    _child: Killed,
    port: u16,
}

impl EchoServer {
    fn start(tls: Option<(&Path, &Path)>) -> EchoServer {
        let mut cmd = Command::new("python3");
        cmd.arg(script("echo_server.py"));
        if let Some((cert, key)) = tls {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn echo_server.py");
        let lines = lines_of(child.stdout.take().unwrap());
        let child = Killed(child);
        let line = lines
            .recv_timeout(Duration::from_secs(15))
            .expect("echo server did not print its port");
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("echo server said {line:?}"));
        EchoServer {
            _child: child,
            port,
        }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

/// Runs tests/ws/client.py to its end (killed at the deadline).
fn client(url: &str, mode: &str, extra: &[&str]) -> Output {
    let mut child = Command::new("python3")
        .arg(script("client.py"))
        .args([url, mode])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client.py");
    let deadline = Instant::now() + PYTHON_DEADLINE;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("client.py output")
}

fn assert_client_ok(out: &Output, mode: &str, sq: &ServiceQ) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("OK {mode}")),
        "client {mode}: {}\nstdout: {stdout}\nstderr: {}\nserviceq:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sq.stderr()
    );
}

/// The access log's lines, once `n` of them are written.
fn access_lines(sq: &ServiceQ, n: usize) -> Vec<String> {
    let path = sq.dir().join("access.log");
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || read().lines().count() >= n),
        "access log: {}",
        read()
    );
    read().lines().map(str::to_string).collect()
}

/// The number after ` name=` in a log line.
fn field(line: &str, name: &str) -> u64 {
    line.split(' ')
        .find_map(|f| f.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

const TEN_MIB: u64 = 10 * 1024 * 1024;

#[test]
fn text_binary_and_10_mib_messages_both_ways_then_a_client_close() {
    if !have_websockets() {
        return;
    }
    let echo = EchoServer::start(None);
    let (sq, admin) =
        start_with_admin(Conf::new(&[echo.url("http")]).set("ACCESS_LOG_FILE", "{dir}/access.log"));
    let out = client(&format!("ws://{}/chat", sq.addr()), "basic", &[]);
    assert_client_ok(&out, "basic", &sq);

    let lines = access_lines(&sq, 1);
    let line = &lines[0];
    assert!(line.contains("\"GET /chat HTTP/1.1\" 101 "), "{line}");
    // Two 10 MiB messages each way, plus framing and the small messages.
    assert!(field(line, "tunnel_in") > 2 * TEN_MIB, "{line}");
    assert!(field(line, "tunnel_out") > 2 * TEN_MIB, "{line}");
    assert_eq!(metric_sample(admin, "serviceq_tunnels_total"), Some(1.0));
    assert_eq!(metric_sample(admin, "serviceq_tunnels_active"), Some(0.0));
    let sent = metric_sample(
        admin,
        "serviceq_tunnel_bytes_total{direction=\"client_to_upstream\"}",
    );
    assert_eq!(sent, Some(field(line, "tunnel_in") as f64));
}

#[test]
fn a_close_from_the_server_reaches_the_client() {
    if !have_websockets() {
        return;
    }
    let echo = EchoServer::start(None);
    let sq = Conf::new(&[echo.url("http")]).start();
    let out = client(&format!("ws://{}/", sq.addr()), "server-close", &[]);
    assert_client_ok(&out, "server-close", &sq);
}

#[test]
fn a_hundred_tunnels_at_once() {
    if !have_websockets() {
        return;
    }
    let echo = EchoServer::start(None);
    let (sq, admin) =
        start_with_admin(Conf::new(&[echo.url("http")]).set("CONCURRENCY_PEAK", "128"));
    let mut child = Command::new("python3")
        .arg(script("client.py"))
        .args([&format!("ws://{}/", sq.addr()), "many", "--count", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn client.py");
    let lines = lines_of(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let child = Killed(child);
    let open = lines.recv_timeout(PYTHON_DEADLINE);
    assert_eq!(open.as_deref(), Ok("OPEN 100"), "{}", sq.stderr());
    // Every tunnel holds a worker and a CONCURRENCY_PEAK slot while open.
    assert_eq!(metric_sample(admin, "serviceq_tunnels_active"), Some(100.0));
    assert_eq!(metric_sample(admin, "serviceq_requests_held"), Some(100.0));
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    let done = lines.recv_timeout(PYTHON_DEADLINE);
    assert_eq!(done.as_deref(), Ok("OK many"), "{}", sq.stderr());
    drop(child);
    assert!(wait_until(Duration::from_secs(5), || {
        metric_sample(admin, "serviceq_tunnels_active") == Some(0.0)
            && metric_sample(admin, "serviceq_requests_held") == Some(0.0)
    }));
    assert_eq!(metric_sample(admin, "serviceq_tunnels_total"), Some(100.0));
}

#[test]
fn an_idle_tunnel_is_closed_after_tunnel_idle_timeout() {
    if !have_websockets() {
        return;
    }
    let echo = EchoServer::start(None);
    let sq = Conf::new(&[echo.url("http")])
        .set("TUNNEL_IDLE_TIMEOUT", "1")
        .start();
    let out = client(&format!("ws://{}/", sq.addr()), "idle", &[]);
    assert_client_ok(&out, "idle", &sq);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let closed_after: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CLOSED "))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        (0.9..4.0).contains(&closed_after),
        "closed after {closed_after} s"
    );
}

#[test]
fn websocket_through_the_tls_listener_to_a_tls_endpoint() {
    if !have_websockets() || !have_openssl() {
        return;
    }
    let certs = TempDir::new("ws-tls");
    let (listener_cert, listener_key) = make_cert(certs.path(), "listener");
    let (endpoint_cert, endpoint_key) = make_cert(certs.path(), "endpoint");
    let echo = EchoServer::start(Some((&endpoint_cert, &endpoint_key)));
    let sq = Conf::new(&[echo.url("https")])
        .set("SSL_ENABLE", "true")
        .set("SSL_CERTIFICATE_FILE", &listener_cert.display().to_string())
        .set("SSL_PRIVATE_KEY_FILE", &listener_key.display().to_string())
        .set("SSL_UPSTREAM_CA_FILE", &endpoint_cert.display().to_string())
        .start();
    let url = format!("wss://127.0.0.1:{}/chat", sq.port());
    let ca = listener_cert.display().to_string();
    for mode in ["basic", "server-close"] {
        let out = client(&url, mode, &["--ca", &ca]);
        assert_client_ok(&out, mode, &sq);
    }
}

// ---------------------------------------------------------------------------------------
// Raw bytes
// ---------------------------------------------------------------------------------------

const UPGRADE: &str =
    "GET /raw HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: raw-echo\r\n\r\n";

/// An endpoint that answers one upgrade with a 101 followed at once by `server-early`,
/// then collects what comes until the client's half-close, and answers `got:<bytes>`.
fn raw_switching_endpoint() -> (u16, thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "closed before the request head");
            seen.extend_from_slice(&buf[..n]);
        }
        let split = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&seen[..split]).into_owned();
        let mut after = seen[split..].to_vec();
        conn.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw-echo\r\nConnection: Upgrade\r\nX-Up: 1\r\n\r\nserver-early",
        )
        .unwrap();
        conn.read_to_end(&mut after).unwrap();
        let mut answer = b"got:".to_vec();
        answer.extend_from_slice(&after);
        conn.write_all(&answer).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        head
    });
    (port, handle)
}

#[test]
fn early_bytes_and_half_closes_cross_the_tunnel_both_ways() {
    let (port, endpoint) = raw_switching_endpoint();
    let sq = Conf::new(&[format!("http://127.0.0.1:{port}")])
        .set("ACCESS_LOG_FILE", "{dir}/access.log")
        .start();
    let mut c = Client::connect(sq.addr());
    // The first bytes of the new protocol in the same write as the request.
    c.send(format!("{UPGRADE}client-early"));
    let r = c.read_response();
    assert_eq!(r.status, 101, "{}", r.raw_head);
    assert_eq!(r.header("upgrade"), Some("raw-echo"));
    assert!(
        lists_token(r.header("connection").unwrap_or(""), "upgrade"),
        "{}",
        r.raw_head
    );
    assert_eq!(r.header("x-up"), Some("1"));
    c.send("+more");
    c.stream().shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.conn
        .read_to_end_to(&mut |b| rest.extend_from_slice(b))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "server-earlygot:client-early+more"
    );

    let head = endpoint.join().unwrap();
    assert!(head.contains("\r\nConnection: upgrade\r\n"), "{head}");
    assert!(head.contains("\r\nUpgrade: raw-echo\r\n"), "{head}");
    let lines = access_lines(&sq, 1);
    assert!(lines[0].contains("\" 101 "), "{}", lines[0]);
    assert_eq!(field(&lines[0], "tunnel_in"), 17);
    assert_eq!(field(&lines[0], "tunnel_out"), 33);
}

#[test]
fn a_non_101_answer_to_an_upgrade_is_a_normal_response_and_http_goes_on() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[u.url()]).start();
    let mut c = Client::connect(sq.addr());
    c.send(UPGRADE);
    let r = c.read_response();
    assert_eq!((r.status, r.body_str()), (200, u.name().to_string()));
    c.send("GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        c.read_response().status,
        200,
        "the connection went on as HTTP"
    );
    let first = &u.requests()[0];
    assert_eq!(first.header("upgrade"), Some("raw-echo"));
    assert_eq!(first.header("connection"), Some("upgrade"));
    let second = &u.requests()[1];
    assert_eq!(
        (second.header("upgrade"), second.header("connection")),
        (None, None)
    );
}

#[test]
fn h2c_upgrades_are_refused_and_the_request_stays_http_1_1() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[u.url()]).start();
    let r = request(
        sq.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let seen = &u.requests()[0];
    for name in ["upgrade", "connection", "http2-settings"] {
        assert_eq!(
            seen.header(name),
            None,
            "{name} was forwarded: {:?}",
            seen.headers
        );
    }
}

#[test]
fn an_unsolicited_101_is_a_bad_response() {
    let switching = Resp::new(101, "Switching Protocols", "").header("Upgrade", "raw-echo");
    let u = Upstream::start(Behaviour::Respond(switching));
    let sq = Conf::new(&[u.url()]).set("MAX_RETRIES", "1").start();
    let r = get(sq.addr(), "/");
    assert_sq_response(&r, 502, "Bad Gateway", &[]);
}

#[test]
fn an_upgrade_is_never_queued_nor_retried_once_sent() {
    let u = Upstream::start(Behaviour::CloseAfterRequest);
    let sq = Conf::new(&[u.url()])
        .set("ENABLE_DEFERRED_Q", "true")
        .set("MAX_RETRIES", "3")
        .start();
    let r = request(sq.addr(), UPGRADE.as_bytes());
    assert_sq_response(&r, 503, "Service Unavailable", &[]);
    assert_eq!(u.request_count(), 1, "the upgrade was sent again");
    // An ordinary request on the same endpoint is retried and queued as before.
    let r = request(sq.addr(), b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_sq_response(&r, 503, "Request Buffered", &[]);
    assert!(u.request_count() >= 4, "the plain request was not retried");
}
