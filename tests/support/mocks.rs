//! Mock endpoints: a std::net HTTP/1.1 upstream that records what it received and can
//! refuse, hang, close or stop and restart on the same port (`Upstream`, `Behaviour`),
//! a raw endpoint for answers it cannot give (`raw_endpoint`), and refusing ports.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::clients::{declared_framing, BufConn, Framing, Message};
use super::{lists_token, split_head, wait_until};

/// Read-timeout slice of the mock upstream: how often an idle mock connection checks
/// whether its upstream was stopped.
const MOCK_POLL: Duration = Duration::from_millis(50);
/// Largest request head the mock accepts.
const MOCK_MAX_HEAD: usize = 1 << 20;

/// A response for `Behaviour::Respond`. Content-Length is added unless given (or the
/// status has no body).
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn new(status: u16, reason: &str, body: &str) -> Resp {
        Resp {
            status,
            reason: reason.to_string(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Resp {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// What the mock does with a connection or a request.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200, body = the upstream's name (`X-Upstream: NAME` header too).
    Ok,
    /// 200, body = the request target.
    Echo,
    /// This exact response.
    Respond(Resp),
    /// 200 with `Transfer-Encoding: chunked` and these chunks.
    Chunked(Vec<Vec<u8>>),
    /// Like `Chunked`, waiting `gap` before each chunk after the first.
    ChunkedSlow(Vec<Vec<u8>>, Duration),
    /// Accept, then close at once without reading.
    CloseOnAccept,
    /// Read the request, never answer (until the mock stops).
    Hang,
    /// Read the request, then close without answering.
    CloseAfterRequest,
    /// Send a head announcing 1000 bytes, 100 of them, then close.
    CloseMidBody,
    /// Read the request, answer with a garbage status line, close.
    Malformed,
    /// 200 with a Content-Length body of this many bytes, generated in 64 KiB writes.
    BigBody(u64),
    /// Wait this long, then behave like `Ok`.
    Slow(Duration),
    /// Answer 200 like `Ok` (keep-alive, no `Connection: close`), then close the
    /// connection: the next request on it finds a stale pooled connection.
    CloseAfterResponse,
}

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Which accepted connection (0-based, per upstream) it came on.
    pub conn: usize,
    pub at: Instant,
}

impl Message for Recorded {
    fn header_list(&self) -> &[(String, String)] {
        &self.headers
    }

    fn body_bytes(&self) -> &[u8] {
        &self.body
    }
}

struct MockState {
    default: Behaviour,
    /// Behaviours used first, one per request (or per connection for CloseOnAccept).
    script: VecDeque<Behaviour>,
}

struct Shared {
    name: String,
    state: Mutex<MockState>,
    requests: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
    closed: AtomicUsize,
    answered: AtomicUsize,
    accept_times: Mutex<Vec<Instant>>,
}

impl Shared {
    /// The behaviour for the next request.
    fn next(&self) -> Behaviour {
        let mut st = self.state.lock().unwrap();
        st.script.pop_front().unwrap_or_else(|| st.default.clone())
    }

    /// Whether the connection just accepted is to be closed at once (consumes a
    /// scripted CloseOnAccept).
    fn close_on_accept(&self) -> bool {
        let mut st = self.state.lock().unwrap();
        match st.script.front() {
            Some(Behaviour::CloseOnAccept) => {
                st.script.pop_front();
                true
            }
            Some(_) => false,
            None => matches!(st.default, Behaviour::CloseOnAccept),
        }
    }
}

/// One listening period of a mock (between start and stop).
struct Run {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

/// A mock HTTP/1.1 upstream on 127.0.0.1, a thread per connection.
pub struct Upstream {
    shared: Arc<Shared>,
    port: u16,
    run: Option<Run>,
}

impl Upstream {
    pub fn start(b: Behaviour) -> Upstream {
        Upstream::start_on(0, b)
    }

    /// Starts on this port (0 = any).
    pub fn start_on(port: u16, b: Behaviour) -> Upstream {
        static COUNTER: AtomicUsize = AtomicUsize::new(1);
        let name = format!("upstream-{}", COUNTER.fetch_add(1, Ordering::SeqCst));
        let shared = Arc::new(Shared {
            name,
            state: Mutex::new(MockState {
                default: b,
                script: VecDeque::new(),
            }),
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            accept_times: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind mock upstream");
        let port = listener.local_addr().unwrap().port();
        let mut u = Upstream {
            shared,
            port,
            run: None,
        };
        u.run = Some(u.spawn(listener));
        u
    }

    fn spawn(&self, listener: TcpListener) -> Run {
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (shared, stop2, streams2) = (self.shared.clone(), stop.clone(), streams.clone());
        let accept = thread::spawn(move || accept_loop(listener, shared, stop2, streams2));
        Run {
            stop,
            accept: Some(accept),
            streams,
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, as written in ENDPOINTS and in error-log lines.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, the Host the proxy must send.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sets the default behaviour (used when the script is empty).
    pub fn set(&self, b: Behaviour) {
        self.shared.state.lock().unwrap().default = b;
    }

    /// Queues behaviours used before the default, one per request.
    pub fn script(&self, bs: Vec<Behaviour>) {
        self.shared.state.lock().unwrap().script.extend(bs);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// Connections accepted so far (all runs).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections whose handling thread has finished (closed by either side).
    pub fn closed_connections(&self) -> usize {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Requests that got a complete response from the mock.
    pub fn answered(&self) -> usize {
        self.shared.answered.load(Ordering::SeqCst)
    }

    pub fn accept_times(&self) -> Vec<Instant> {
        self.shared.accept_times.lock().unwrap().clone()
    }

    pub fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.request_count() >= n)
    }

    /// Stops listening and closes every open connection; the port becomes free.
    pub fn stop(&mut self) {
        if let Some(mut run) = self.run.take() {
            run.stop.store(true, Ordering::SeqCst);
            // Wake the blocking accept.
            let _ = TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], self.port)),
                Duration::from_secs(1),
            );
            if let Some(h) = run.accept.take() {
                let _ = h.join();
            }
            for s in run.streams.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Listens again on the same port, keeping the recorded requests and counters.
    pub fn restart(&mut self) {
        assert!(self.run.is_none(), "restart of a running upstream");
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("rebind mock upstream on port {}: {e}", self.port),
            }
        };
        self.run = Some(self.spawn(listener));
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(_) => continue,
        };
        let id = shared.connections.fetch_add(1, Ordering::SeqCst);
        shared.accept_times.lock().unwrap().push(Instant::now());
        if shared.close_on_accept() {
            drop(stream);
            shared.closed.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        if let Ok(clone) = stream.try_clone() {
            streams.lock().unwrap().push(clone);
        }
        let (shared, stop) = (shared.clone(), stop.clone());
        thread::spawn(move || {
            let own = stream.try_clone();
            let _ = serve(stream, id, &shared, &stop);
            // A clone kept for `stop` holds the socket open: close it explicitly so
            // the peer sees FIN now.
            if let Ok(s) = own {
                let _ = s.shutdown(Shutdown::Both);
            }
            shared.closed.fetch_add(1, Ordering::SeqCst);
        });
    }
}

/// Serves one mock connection until it closes, the mock stops or a behaviour ends it.
fn serve(stream: TcpStream, id: usize, shared: &Shared, stop: &Arc<AtomicBool>) -> io::Result<()> {
    stream.set_read_timeout(Some(MOCK_POLL))?;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    stream.set_nodelay(true)?;
    let mut conn = BufConn::new(stream, Some(stop.clone()));
    loop {
        let req = match read_request(&mut conn, id)? {
            Some(r) => r,
            None => return Ok(()),
        };
        let close_requested = req
            .header("connection")
            .map(|v| lists_token(v, "close"))
            .unwrap_or(false);
        let behaviour = shared.next();
        shared.requests.lock().unwrap().push(req.clone());
        let keep = respond(&mut conn, &req, &behaviour, shared, stop)?;
        if answers(&behaviour) {
            shared.answered.fetch_add(1, Ordering::SeqCst);
        }
        if !keep || close_requested {
            return Ok(());
        }
    }
}

fn read_request(conn: &mut BufConn, id: usize) -> io::Result<Option<Recorded>> {
    let head = match conn.read_head(MOCK_MAX_HEAD)? {
        Some(h) => h,
        None => return Ok(None),
    };
    let (first, headers) = split_head(&head);
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let version = parts.next().unwrap_or("").to_string();
    let framing = declared_framing(&headers)?;
    let chunked = framing == Some(Framing::Chunked);
    let mut body = Vec::new();
    let mut sink = |b: &[u8]| body.extend_from_slice(b);
    match framing {
        Some(Framing::Chunked) => {
            conn.read_chunked_to(&mut sink)?;
        }
        Some(Framing::Length(n)) => conn.read_exact_to(n, &mut sink)?,
        _ => {}
    }
    Ok(Some(Recorded {
        method,
        target,
        version,
        headers,
        body,
        chunked,
        conn: id,
        at: Instant::now(),
    }))
}

/// Sleeps up to `d`, returning early (false) if the mock stops.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        thread::sleep(
            Duration::from_millis(10).min(deadline.saturating_duration_since(Instant::now())),
        );
    }
    true
}

fn write_simple(
    conn: &mut BufConn,
    req: &Recorded,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if req.method != "HEAD" {
        bytes.extend_from_slice(body);
    }
    conn.stream.write_all(&bytes)
}

fn ok_headers(shared: &Shared, body_len: usize) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "text/plain".into()),
        ("Content-Length".into(), body_len.to_string()),
        ("X-Upstream".into(), shared.name.clone()),
    ]
}

/// Whether the behaviour sends a complete response.
fn answers(b: &Behaviour) -> bool {
    !matches!(
        b,
        Behaviour::CloseOnAccept
            | Behaviour::Hang
            | Behaviour::CloseAfterRequest
            | Behaviour::CloseMidBody
            | Behaviour::Malformed
    )
}

/// Answers one request; Ok(false) when the connection must close afterwards.
fn respond(
    conn: &mut BufConn,
    req: &Recorded,
    b: &Behaviour,
    shared: &Shared,
    stop: &AtomicBool,
) -> io::Result<bool> {
    match b {
        Behaviour::Ok => {
            let body = shared.name.as_bytes();
            write_simple(conn, req, "200 OK", &ok_headers(shared, body.len()), body)?;
            Ok(true)
        }
        Behaviour::Echo => {
            let body = req.target.as_bytes();
            write_simple(conn, req, "200 OK", &ok_headers(shared, body.len()), body)?;
            Ok(true)
        }
        Behaviour::Slow(d) => {
            if !nap(*d, stop) {
                return Ok(false);
            }
            respond(conn, req, &Behaviour::Ok, shared, stop)
        }
        Behaviour::CloseAfterResponse => {
            respond(conn, req, &Behaviour::Ok, shared, stop)?;
            Ok(false)
        }
        Behaviour::Respond(r) => {
            let mut headers = r.headers.clone();
            let bodiless = r.status / 100 == 1 || r.status == 204 || r.status == 304;
            let framed = headers.iter().any(|(n, _)| {
                n.eq_ignore_ascii_case("content-length")
                    || n.eq_ignore_ascii_case("transfer-encoding")
            });
            if !bodiless && !framed {
                headers.push(("Content-Length".into(), r.body.len().to_string()));
            }
            let body: &[u8] = if bodiless { &[] } else { &r.body };
            write_simple(
                conn,
                req,
                &format!("{} {}", r.status, r.reason),
                &headers,
                body,
            )?;
            Ok(true)
        }
        Behaviour::Chunked(chunks) => {
            write_chunked(conn, req, chunks, Duration::ZERO, shared, stop)?;
            Ok(true)
        }
        Behaviour::ChunkedSlow(chunks, gap) => {
            write_chunked(conn, req, chunks, *gap, shared, stop)?;
            Ok(true)
        }
        Behaviour::CloseOnAccept | Behaviour::CloseAfterRequest => Ok(false),
        Behaviour::Hang => {
            // Never answer; end when the peer gives up or the mock stops.
            loop {
                match conn.fill() {
                    Ok(0) | Err(_) => return Ok(false),
                    Ok(_) => continue,
                }
            }
        }
        Behaviour::CloseMidBody => {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
            out.extend_from_slice(&[b'x'; 100]);
            conn.stream.write_all(&out)?;
            Ok(false)
        }
        Behaviour::Malformed => {
            conn.stream.write_all(b"HTTX/9 what is this\r\n\r\n")?;
            Ok(false)
        }
        Behaviour::BigBody(size) => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n");
            conn.stream.write_all(head.as_bytes())?;
            if req.method == "HEAD" {
                return Ok(true);
            }
            let block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
            let mut left = *size;
            while left > 0 {
                if stop.load(Ordering::SeqCst) {
                    return Ok(false);
                }
                let n = left.min(block.len() as u64) as usize;
                conn.stream.write_all(&block[..n])?;
                left -= n as u64;
            }
            Ok(true)
        }
    }
}

fn write_chunked(
    conn: &mut BufConn,
    req: &Recorded,
    chunks: &[Vec<u8>],
    gap: Duration,
    shared: &Shared,
    stop: &AtomicBool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nX-Upstream: {}\r\n\r\n",
        shared.name
    );
    conn.stream.write_all(head.as_bytes())?;
    if req.method == "HEAD" {
        return Ok(());
    }
    for (i, c) in chunks.iter().enumerate() {
        if i > 0 && !gap.is_zero() && !nap(gap, stop) {
            return Err(io::Error::other("mock stopped"));
        }
        if c.is_empty() {
            continue;
        }
        let mut out = format!("{:x}\r\n", c.len()).into_bytes();
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
        conn.stream.write_all(&out)?;
    }
    conn.stream.write_all(b"0\r\n\r\n")
}

/// A mock that is stopped: its port refuses until `restart`.
pub fn down_upstream(b: Behaviour) -> Upstream {
    let mut u = Upstream::start(b);
    u.stop();
    u
}

/// A port on 127.0.0.1 with nothing listening (bound to 0, then released).
pub fn refusing_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

/// `http://127.0.0.1:PORT` for a port with nothing listening.
pub fn refusing_url() -> String {
    format!("http://127.0.0.1:{}", refusing_port())
}

/// A raw endpoint for answers the mock cannot give: for each request head it reads
/// (bodies are left unread), `answer(n, stream)` writes what it likes, `n` counting heads
/// across connections from 0; it returns false to close the connection (unread bytes
/// then make the kernel reset it, as a real server's early close does). Connections are
/// served one at a time. Returns the port and a count of connections accepted.
pub fn raw_endpoint(
    answer: impl Fn(usize, &mut TcpStream) -> bool + Send + 'static,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw endpoint");
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    thread::spawn(move || {
        let mut n = 0;
        for conn in listener.incoming().take(64) {
            let Ok(mut s) = conn else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            'conn: loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    let keep = answer(n, &mut s);
                    n += 1;
                    if !keep {
                        break 'conn;
                    }
                }
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => buf.extend_from_slice(&tmp[..k]),
                }
            }
        }
    });
    (port, accepted)
}
