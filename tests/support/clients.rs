//! The client side: a raw HTTP/1.1 client that shows the exact bytes the proxy sent
//! (`Client`, `Response`, `get`, `request`) on a buffered socket reader shared with the
//! mock endpoints (`BufConn`), and checks of what ServiceQ produces itself: SPEC §6
//! responses and SPEC §7 error-log lines.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default read/write timeout of the raw client.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// Buffered socket reading, shared by the client and the mock
// ---------------------------------------------------------------------------------------

/// A TCP stream with a read buffer. With `stop` set, read timeouts are polling slices:
/// the read goes on until data arrives or the flag is raised.
pub struct BufConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    stop: Option<Arc<AtomicBool>>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn eof(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed {what}"),
    )
}

pub(super) fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl BufConn {
    pub fn new(stream: TcpStream, stop: Option<Arc<AtomicBool>>) -> BufConn {
        BufConn {
            stream,
            buf: Vec::new(),
            stop,
        }
    }

    /// Reads more bytes into the buffer; Ok(0) at end of stream.
    pub(super) fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 65536];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => match &self.stop {
                    Some(stop) if !stop.load(Ordering::SeqCst) => continue,
                    Some(_) => return Err(io::Error::other("mock stopped")),
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// Bytes already received but not consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Reads up to and including the blank line that ends a head; Ok(None) when the
    /// stream ends cleanly before any byte of a new head.
    pub fn read_head(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        let mut searched: usize = 0;
        loop {
            if let Some(pos) = find(&self.buf[searched.saturating_sub(3)..], b"\r\n\r\n") {
                let end = searched.saturating_sub(3) + pos + 4;
                return Ok(Some(self.buf.drain(..end).collect()));
            }
            searched = self.buf.len();
            if self.buf.len() > max {
                return Err(bad(format!("head longer than {max} bytes")));
            }
            if self.fill()? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(eof(&format!(
                    "inside a head; got {:?}",
                    String::from_utf8_lossy(&self.buf[..self.buf.len().min(300)])
                )));
            }
        }
    }

    /// One CRLF-terminated line, without the CRLF.
    pub fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let mut line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                line.truncate(pos);
                return Ok(line);
            }
            if self.buf.len() > 64 * 1024 {
                return Err(bad("line longer than 64 KiB".into()));
            }
            if self.fill()? == 0 {
                return Err(eof("inside a line"));
            }
        }
    }

    /// Passes exactly `n` bytes to `sink`.
    pub fn read_exact_to(&mut self, mut n: u64, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && self.fill()? == 0 {
                return Err(eof(&format!("with {n} body bytes still expected")));
            }
            let take = (self.buf.len() as u64).min(n) as usize;
            sink(&self.buf[..take]);
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(())
    }

    /// Passes everything until end of stream to `sink`.
    pub fn read_to_end_to(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        loop {
            if !self.buf.is_empty() {
                sink(&self.buf);
                self.buf.clear();
            }
            if self.fill()? == 0 {
                return Ok(());
            }
        }
    }

    /// Decodes a chunked body (RFC 9112 §7.1) into `sink`; returns the trailer lines.
    pub fn read_chunked_to(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<Vec<String>> {
        loop {
            let line = self.read_line()?;
            let line = String::from_utf8_lossy(&line).into_owned();
            let size_txt = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_txt, 16)
                .map_err(|_| bad(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                let mut trailers = Vec::new();
                loop {
                    let t = self.read_line()?;
                    if t.is_empty() {
                        return Ok(trailers);
                    }
                    trailers.push(String::from_utf8_lossy(&t).into_owned());
                }
            }
            self.read_exact_to(size, sink)?;
            let crlf = self.read_line()?;
            if !crlf.is_empty() {
                return Err(bad(format!(
                    "chunk data not followed by CRLF: {:?}",
                    String::from_utf8_lossy(&crlf)
                )));
            }
        }
    }
}

/// Splits a head into its first line and its header fields (name, value trimmed).
pub fn split_head(head: &[u8]) -> (String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((n, v)) => (n.to_string(), v.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect();
    (first, headers)
}

pub(super) fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// How a message with these headers frames its body: chunked, a Content-Length, or
/// neither (None: no body for a request, read until close for a response).
pub(super) fn declared_framing(headers: &[(String, String)]) -> io::Result<Option<Framing>> {
    let chunked =
        header_in(headers, "transfer-encoding").is_some_and(|v| lists_token(v, "chunked"));
    if chunked {
        return Ok(Some(Framing::Chunked));
    }
    let Some(cl) = header_in(headers, "content-length") else {
        return Ok(None);
    };
    let n = cl
        .trim()
        .parse()
        .map_err(|_| bad(format!("bad Content-Length {cl:?}")))?;
    Ok(Some(Framing::Length(n)))
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub fn lists_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

// ---------------------------------------------------------------------------------------
// Raw client
// ---------------------------------------------------------------------------------------

/// How a response body was delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body by the rules (HEAD, 1xx, 204, 304).
    NoBody,
    Length(u64),
    Chunked,
    /// Read until the connection closed.
    Close,
}

/// A response as the client received it.
#[derive(Clone, Debug)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
    pub trailers: Vec<String>,
    pub raw_head: String,
}

/// What a response the client read and a request the mock recorded share: headers
/// looked up by name (case-insensitive) and a body read as text.
pub trait Message {
    fn header_list(&self) -> &[(String, String)];
    fn body_bytes(&self) -> &[u8];

    fn header(&self, name: &str) -> Option<&str> {
        header_in(self.header_list(), name)
    }

    fn headers_named(&self, name: &str) -> Vec<&str> {
        self.header_list()
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn body_str(&self) -> String {
        String::from_utf8_lossy(self.body_bytes()).into_owned()
    }
}

impl Message for Response {
    fn header_list(&self) -> &[(String, String)] {
        &self.headers
    }

    fn body_bytes(&self) -> &[u8] {
        &self.body
    }
}

/// A raw HTTP client connection with timeouts.
pub struct Client {
    pub conn: BufConn,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to serviceq");
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            conn: BufConn::new(stream, None),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.conn.stream
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.conn.stream.set_read_timeout(Some(d)).unwrap();
    }

    /// Writes all of `bytes`; panics on error.
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.conn
            .stream
            .write_all(bytes.as_ref())
            .expect("write to serviceq");
        self.conn.stream.flush().unwrap();
    }

    /// Writes all of `bytes`, returning the error instead of panicking.
    pub fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> io::Result<()> {
        self.conn.stream.write_all(bytes.as_ref())
    }

    /// Reads one response (a 1xx counts as one). Panics on error.
    pub fn read_response(&mut self) -> Response {
        self.try_read_response(false)
            .expect("read response from serviceq")
    }

    /// Reads the response to a HEAD request (no body whatever the headers say).
    pub fn read_head_response(&mut self) -> Response {
        self.try_read_response(true)
            .expect("read response from serviceq")
    }

    pub fn try_read_response(&mut self, head_request: bool) -> io::Result<Response> {
        let mut body = Vec::new();
        let mut resp = self.read_response_with(head_request, &mut |b| body.extend_from_slice(b))?;
        resp.body = body;
        Ok(resp)
    }

    /// Reads one response, passing the body bytes to `sink` as they arrive (the returned
    /// Response has an empty body).
    pub fn read_response_with(
        &mut self,
        head_request: bool,
        sink: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Response> {
        let head = self
            .conn
            .read_head(1 << 20)?
            .ok_or_else(|| eof("before a response"))?;
        let raw_head = String::from_utf8_lossy(&head).into_owned();
        let (first, headers) = split_head(&head);
        let mut parts = first.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {first:?}")))?;
        let reason = parts.next().unwrap_or("").to_string();
        if !version.starts_with("HTTP/1.") {
            return Err(bad(format!("bad status line {first:?}")));
        }
        let mut resp = Response {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
            framing: Framing::NoBody,
            trailers: Vec::new(),
            raw_head,
        };
        if head_request || status / 100 == 1 || status == 204 || status == 304 {
            return Ok(resp);
        }
        resp.framing = declared_framing(&resp.headers)?.unwrap_or(Framing::Close);
        match resp.framing {
            Framing::Chunked => resp.trailers = self.conn.read_chunked_to(sink)?,
            Framing::Length(n) => self.conn.read_exact_to(n, sink)?,
            Framing::Close | Framing::NoBody => self.conn.read_to_end_to(sink)?,
        }
        Ok(resp)
    }

    /// True when the peer closes (EOF or reset) within `timeout`; false if it is still
    /// open then. Data that arrives meanwhile is kept in the buffer.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.set_read_timeout(CLIENT_TIMEOUT);
                return false;
            }
            self.set_read_timeout(left.min(Duration::from_millis(50)));
            match self.conn.fill() {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if is_timeout(&e) => continue,
                Err(_) => return true,
            }
        }
    }

    /// Non-blocking-ish check: has the peer closed (EOF or reset) by now?
    pub fn is_closed_now(&mut self) -> bool {
        self.set_read_timeout(Duration::from_millis(5));
        let r = match self.conn.fill() {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if is_timeout(&e) => false,
            Err(_) => true,
        };
        self.set_read_timeout(CLIENT_TIMEOUT);
        r
    }
}

/// One GET on a fresh connection (HTTP/1.1, `Host: test.local`).
pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes(),
    )
}

/// Sends raw bytes on a fresh connection and reads one response.
pub fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut c = Client::connect(addr);
    c.send(raw);
    c.read_response()
}

/// Checks a response ServiceQ made itself (SPEC §6): status, JSON content type,
/// matching Content-Length, the exact `{"sq_msg":"…"}` body and the given extra headers.
pub fn assert_sq_response(resp: &Response, status: u16, msg: &str, extra: &[(&str, &str)]) {
    let ctx = format!("response was:\n{}{}", resp.raw_head, resp.body_str());
    assert_eq!(resp.status, status, "status; {ctx}");
    let ct = resp.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "Content-Type should be application/json; {ctx}"
    );
    let cl = resp.header("content-length");
    assert_eq!(
        cl.map(|v| v.trim().to_string()),
        Some(resp.body.len().to_string()),
        "Content-Length; {ctx}"
    );
    assert_eq!(
        resp.body_str(),
        format!("{{\"sq_msg\":\"{msg}\"}}"),
        "body; {ctx}"
    );
    for (name, value) in extra {
        assert_eq!(
            resp.headers_named(name),
            vec![*value],
            "header {name}; {ctx}"
        );
    }
}

/// The value of one sample of /metrics, `name` or `name{labels}` as exported.
pub fn metric_sample(admin: SocketAddr, sample: &str) -> Option<f64> {
    let prefix = format!("{sample} ");
    get(admin, "/metrics")
        .body_str()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
}

// ---------------------------------------------------------------------------------------
// Error log lines (SPEC §7)
// ---------------------------------------------------------------------------------------

/// Checks one error-log line against
/// `^ServiceQ: \d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} Error detected on ENDPOINT \[Code: CODE, NAME\]$`.
pub fn check_log_line(line: &str, endpoint: &str, code: u32, name: &str) -> Result<(), String> {
    let rest = line
        .strip_prefix("ServiceQ: ")
        .ok_or_else(|| format!("no `ServiceQ: ` prefix in {line:?}"))?;
    let stamp: Vec<u8> = rest.bytes().take(19).collect();
    let shape = b"dddd/dd/dd dd:dd:dd";
    let ok = stamp.len() == 19
        && stamp.iter().zip(shape.iter()).all(|(c, s)| {
            if *s == b'd' {
                c.is_ascii_digit()
            } else {
                c == s
            }
        });
    if !ok {
        return Err(format!("no `YYYY/MM/DD hh:mm:ss` timestamp in {line:?}"));
    }
    let tail = &rest[19..];
    let want = format!(" Error detected on {endpoint} [Code: {code}, {name}]");
    if tail != want {
        return Err(format!("expected {want:?} after the timestamp in {line:?}"));
    }
    Ok(())
}

/// Whether `line` is a well-formed error-log line for this endpoint, code and name.
pub fn is_log_line(line: &str, endpoint: &str, code: u32, name: &str) -> bool {
    check_log_line(line, endpoint, code, name).is_ok()
}
