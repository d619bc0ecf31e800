//! The endpoints: their error counts, a pool of kept-alive connections to each, dialling
//! (TCP, then TLS for `https://`) and one attempt — send a request, receive a response
//! head. Streaming the body to the client is `relay.rs`'s job.
//!
//! Nothing here holds a lock across I/O: the pool's mutex covers a `Vec` push or pop,
//! and error counts are atomics, so a worker never waits on another worker's socket.
//! Most requests take no lock at all: a worker keeps the connection it last used to
//! each endpoint ([`Held`]) for as long as its client connection lasts, and only then
//! hands them to the shared pool.

use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use native_tls::TlsConnector;

use crate::body::Body;
use crate::buffer::IoBuf;
use crate::config::{Endpoint, Scheme};
use crate::error::{AttemptError, LogCode, ENDPOINT_FAILURES};
use crate::http::{parse_response_into, HeadError, HeadLimits, ResponseHead};
use crate::stream::{write_all_vectored, Stream};

/// Response heads larger than this are malformed (nginx's proxy_buffer_size is 4–8 KiB;
/// this is generous).
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;
const RESPONSE_LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: MAX_RESPONSE_HEAD_BYTES,
    max_headers: 256,
};

/// A pooled connection idle longer than this is closed rather than reused: most servers
/// close idle keep-alive connections after 5–75 s, and a reuse that races their close
/// costs a reconnect.
pub const POOL_IDLE_TTL: Duration = Duration::from_secs(15);

/// One endpoint at run time.
pub struct Upstream {
    pub endpoint: Endpoint,
    /// `scheme://host:port`, as it appears in the error log.
    pub label: String,
    /// The `Host` header line sent to it, rendered once.
    host_line: Vec<u8>,
    errors: AtomicU32,
    idle: Mutex<Vec<(Stream, Instant)>>,
    /// Attempts made on this endpoint, for /metrics.
    pub attempts: AtomicU64,
    /// Failures by `LogCode` (in `ENDPOINT_FAILURES` order), for /metrics.
    pub failures: [AtomicU64; ENDPOINT_FAILURES.len()],
    /// What the active health checks say of it (`health.rs`).
    pub health: crate::checks::EndpointHealth,
}

impl Upstream {
    fn new(endpoint: Endpoint) -> Self {
        Upstream {
            label: endpoint.to_string(),
            host_line: format!("Host: {}\r\n", endpoint.host_header()).into_bytes(),
            endpoint,
            errors: AtomicU32::new(0),
            idle: Mutex::new(Vec::new()),
            attempts: AtomicU64::new(0),
            failures: [const { AtomicU64::new(0) }; ENDPOINT_FAILURES.len()],
            health: crate::checks::EndpointHealth::default(),
        }
    }

    pub fn errors(&self) -> u32 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn record_failure(&self, code: LogCode) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = ENDPOINT_FAILURES.iter().position(|&c| c == code) {
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn record_success(&self) {
        // A load first: most successes find the count at zero already, and a plain load
        // keeps the cache line shared between workers.
        if self.errors.load(Ordering::Relaxed) != 0 {
            self.errors.store(0, Ordering::Relaxed);
        }
    }

    /// A kept-alive connection: the one this worker holds, else one from the pool.
    fn checkout(&self, held: Option<(Stream, Instant)>) -> Option<Stream> {
        if let Some(conn) = held.and_then(usable) {
            return Some(conn);
        }
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if let Some(conn) = usable(idle) {
                return Some(conn);
            }
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }
}

/// A connection idle since `since` that may carry another request.
fn usable((mut conn, since): (Stream, Instant)) -> Option<Stream> {
    (since.elapsed() < POOL_IDLE_TTL && is_quiet(&mut conn)).then_some(conn)
}

/// The connections one worker keeps between the requests of one client connection, at
/// most one per endpoint, so that a steady client reuses its own without a lock.
/// They belong to one [`Upstreams`]: after a reload they are closed on the next use.
#[derive(Default)]
pub struct Held {
    owner: u64,
    conns: Vec<Option<(Stream, Instant)>>,
}

impl Held {
    /// The held connection to endpoint `idx` of `ups`, if any.
    fn take(&mut self, ups: &Upstreams, idx: usize) -> Option<(Stream, Instant)> {
        if self.owner != ups.id {
            return None;
        }
        self.conns.get_mut(idx).and_then(Option::take)
    }

    /// Keeps `conn` to endpoint `idx` of `ups`; gives it back if one is held already.
    fn keep(&mut self, ups: &Upstreams, idx: usize, conn: Stream) -> Option<Stream> {
        if self.owner != ups.id {
            // A reload replaced the endpoints: what is held belongs to the old ones.
            self.owner = ups.id;
            self.conns.clear();
        }
        if self.conns.len() < ups.count() {
            self.conns.resize_with(ups.count(), || None);
        }
        match &mut self.conns[idx] {
            slot @ None => {
                *slot = Some((conn, Instant::now()));
                None
            }
            Some(_) => Some(conn),
        }
    }
}

/// Tells one `Upstreams` from another (its `Held` connections are only its own).
static UPSTREAMS_IDS: AtomicU64 = AtomicU64::new(1);

/// Everything needed to reach the endpoints.
pub struct Upstreams {
    id: u64,
    pub list: Vec<Arc<Upstream>>,
    tls: Option<TlsConnector>,
    timeout: Option<Duration>,
    max_idle_per_endpoint: usize,
}

/// The parts of an upstream request that are the same on every attempt: the request
/// line, and every header but `Host`, ending with the blank line.
pub struct OutgoingRequest<'a> {
    pub method: &'a str,
    pub request_line: &'a [u8],
    pub headers: &'a [u8],
    /// In memory, or partly in a temporary file, which is streamed after the rest.
    pub body: &'a Body,
    /// It offers to switch protocols (`http::upgrade::offered_upgrade`): a 101 is its answer.
    pub upgrade: bool,
}

/// A response head received on `conn`; its first body bytes are in the caller's buffer.
pub struct Exchange {
    pub conn: Stream,
    pub head: ResponseHead,
}

impl Upstreams {
    /// The endpoints of a configuration. Those also in `previous` (a reload) are the
    /// same objects, so their pooled connections and error counts carry over.
    pub fn new(
        endpoints: &[Endpoint],
        tls: Option<TlsConnector>,
        timeout: Option<Duration>,
        max_idle_per_endpoint: usize,
        previous: Option<&Upstreams>,
    ) -> Self {
        let reuse = |e: &Endpoint| {
            let old = previous.and_then(|p| p.list.iter().find(|u| u.endpoint == *e));
            match old {
                // Pooled sockets carry the timeout they were dialled with.
                Some(old) if previous.is_some_and(|p| p.timeout == timeout) => Arc::clone(old),
                Some(old) => {
                    let fresh = Upstream::new(e.clone());
                    fresh.errors.store(old.errors(), Ordering::Relaxed);
                    fresh.health.copy_from(&old.health);
                    Arc::new(fresh)
                }
                None => Arc::new(Upstream::new(e.clone())),
            }
        };
        Upstreams {
            id: UPSTREAMS_IDS.fetch_add(1, Ordering::Relaxed),
            list: endpoints.iter().map(reuse).collect(),
            tls,
            timeout,
            max_idle_per_endpoint,
        }
    }

    pub fn count(&self) -> usize {
        self.list.len()
    }

    pub fn error_counts(&self, into: &mut Vec<u32>) {
        into.clear();
        into.extend(self.list.iter().map(|u| u.errors()));
    }

    /// Which endpoints the health checks marked down, for `balancer`.
    pub fn down_mask(&self, into: &mut Vec<bool>) {
        into.clear();
        into.extend(self.list.iter().map(|u| u.health.is_down()));
    }

    /// One attempt on endpoint `idx`: a kept-alive connection if there is one (the
    /// worker's own first, then the pool's), else a new one. A kept-alive connection
    /// that fails before any response byte is replaced by a fresh one once (SPEC §3);
    /// that second try is part of the same attempt. The response head is parsed into
    /// `head` and handed over in the `Exchange`.
    pub fn attempt(
        &self,
        idx: usize,
        req: &OutgoingRequest<'_>,
        buf: &mut IoBuf,
        held: &mut Held,
        head: &mut ResponseHead,
    ) -> Result<Exchange, AttemptError> {
        let up = &self.list[idx];
        up.attempts.fetch_add(1, Ordering::Relaxed);
        if let Some(conn) = up.checkout(held.take(self, idx)) {
            match self.exchange(conn, up, req, buf, head) {
                Err(ExchangeError::Stale(e)) => {
                    log::debug!(
                        "{}: pooled connection was closed ({e}); redialling",
                        up.label
                    )
                }
                Err(ExchangeError::Attempt(e)) => return Err(e),
                Ok(ex) => return Ok(ex),
            }
        }
        let conn = self.dial(up)?;
        self.exchange(conn, up, req, buf, head)
            .map_err(ExchangeError::into_attempt)
    }

    fn exchange(
        &self,
        mut conn: Stream,
        up: &Upstream,
        req: &OutgoingRequest<'_>,
        buf: &mut IoBuf,
        head: &mut ResponseHead,
    ) -> Result<Exchange, ExchangeError> {
        buf.clear();
        let sent = write_all_vectored(
            &mut conn,
            &[
                req.request_line,
                &up.host_line,
                req.headers,
                req.body.memory(),
            ],
        )
        .and_then(|()| req.body.write_file_part(&mut conn))
        .and_then(|()| conn.flush());
        match sent {
            Ok(()) => read_response_head(&mut conn, buf, req, head)?,
            Err(e) => read_early_response(&mut conn, buf, req, head, e)?,
        }
        let head = std::mem::replace(head, ResponseHead::empty());
        Ok(Exchange { conn, head })
    }

    /// Takes back a connection whose response was read completely, for reuse: the
    /// worker keeps it if it holds none to that endpoint yet, else the pool does.
    pub fn release(&self, idx: usize, conn: Stream, held: &mut Held) {
        if let Some(conn) = held.keep(self, idx, conn) {
            self.pool(idx, conn, Instant::now());
        }
    }

    /// Hands what a worker held to the shared pool, when its client connection ends.
    pub fn release_held(&self, held: &mut Held) {
        let owned = held.owner == self.id;
        for (idx, slot) in held.conns.iter_mut().enumerate() {
            match slot.take() {
                Some((conn, since)) if owned => self.pool(idx, conn, since),
                _ => {}
            }
        }
    }

    fn pool(&self, idx: usize, conn: Stream, since: Instant) {
        let up = &self.list[idx];
        let mut idle = up.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle_per_endpoint {
            idle.push((conn, since));
        }
    }

    /// Connects to `up`, bounded by the outgoing timeout, then does the TLS handshake
    /// for `https://`. Every failure here is SPEC §7's 701 UPSTREAM_DOWN, except an
    /// expired connect timeout (702 UPSTREAM_TIMED_OUT).
    fn dial(&self, up: &Upstream) -> Result<Stream, AttemptError> {
        self.dial_with(up, self.timeout)
    }

    /// `dial` with its own timeout (the health checks' HEALTH_CHECK_TIMEOUT).
    pub fn dial_with(
        &self,
        up: &Upstream,
        timeout: Option<Duration>,
    ) -> Result<Stream, AttemptError> {
        let tcp = connect(&up.endpoint, timeout).map_err(AttemptError::from_connect)?;
        tcp.set_nodelay(true).map_err(AttemptError::Connect)?;
        crate::stream::set_timeouts(&tcp, timeout).map_err(AttemptError::Connect)?;
        match (up.endpoint.scheme, &self.tls) {
            (Scheme::Http, _) => Ok(Stream::Plain(tcp)),
            (Scheme::Https, Some(tls)) => match tls.connect(&up.endpoint.host, tcp) {
                Ok(s) => Ok(Stream::Tls(Box::new(s))),
                Err(e) => {
                    log::warn!("{}: TLS handshake failed: {e}", up.label);
                    Err(AttemptError::Connect(io::Error::other(e.to_string())))
                }
            },
            (Scheme::Https, None) => Err(AttemptError::Connect(io::Error::other(
                "TLS to endpoints is not available",
            ))),
        }
    }
}

/// How an exchange failed, before it becomes an `AttemptError`: on a reused connection,
/// an early close means the server had dropped it while idle, which is not the
/// endpoint's fault (the attempt redials, and only a fresh connection's failure counts).
enum ExchangeError {
    Stale(io::Error),
    Attempt(AttemptError),
}

impl ExchangeError {
    fn stale_or_lost(e: io::Error) -> Self {
        if crate::error::is_timeout(&e) {
            ExchangeError::Attempt(AttemptError::Timeout)
        } else {
            ExchangeError::Stale(e)
        }
    }

    fn into_attempt(self) -> AttemptError {
        match self {
            ExchangeError::Stale(e) => AttemptError::NoResponse(e),
            ExchangeError::Attempt(e) => e,
        }
    }
}

impl From<AttemptError> for ExchangeError {
    fn from(e: AttemptError) -> Self {
        ExchangeError::Attempt(e)
    }
}

/// Whether an idle pooled connection is still clean: nothing to read, not closed.
/// Bytes that an endpoint sent after a complete response (a body on a HEAD response, an
/// undercounted Content-Length) would otherwise be read as the response to the next
/// request on this connection — another client's answer. nginx closes an idle cached
/// connection on any read event for the same reason.
fn is_quiet(conn: &mut Stream) -> bool {
    match conn {
        // One non-blocking peek.
        Stream::Plain(tcp) => {
            match crate::stream::peek_nonblocking(tcp) {
                Err(e) => e.kind() == io::ErrorKind::WouldBlock,
                // Ok(0): closed by the endpoint; Ok(_): stray bytes.
                Ok(_) => false,
            }
        }
        // A non-blocking read through TLS: OpenSSL consumes what is not application data
        // (TLS 1.3 session tickets, sent after the handshake) and reports WouldBlock;
        // application bytes or a close mean the connection is spent.
        tls => {
            if tls.tcp().set_nonblocking(true).is_err() {
                return false;
            }
            let mut probe = [0u8; 1];
            let quiet = matches!(
                io::Read::read(tls, &mut probe),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            );
            tls.tcp().set_nonblocking(false).is_ok() && quiet
        }
    }
}

fn connect(endpoint: &Endpoint, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "host has no address");
    for addr in (endpoint.host.as_str(), endpoint.port).to_socket_addrs()? {
        let attempt = match timeout {
            Some(t) => TcpStream::connect_timeout(&addr, t),
            None => TcpStream::connect(addr),
        };
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Reads until a complete, final (non-1xx) response head is in `buf`, consuming the
/// head; body bytes that came with it stay in `buf`.
fn read_response_head(
    conn: &mut Stream,
    buf: &mut IoBuf,
    req: &OutgoingRequest<'_>,
    head: &mut ResponseHead,
) -> Result<(), ExchangeError> {
    let mut received_any = false;
    loop {
        if !buf.is_empty() {
            match parse_response_into(buf.filled(), &RESPONSE_LIMITS, req.method, head) {
                Ok(Some(len)) => {
                    buf.consume(len);
                    if head.status == 101 && crate::http::upgrade::accepts_switch(req.upgrade, head)
                    {
                        // The final answer to an upgrade: the bytes after it are the
                        // new protocol's (`tunnel.rs`).
                        return Ok(());
                    }
                    if head.status == 101 {
                        return Err(AttemptError::BadResponse("unexpected 101").into());
                    }
                    if (100..200).contains(&head.status) {
                        // Interim responses (100, 103) are not relayed: the request
                        // was sent whole, and the final response follows.
                        continue;
                    }
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) => return Err(AttemptError::BadResponse(describe(e)).into()),
            }
        }
        match buf.read_from(conn, MAX_RESPONSE_HEAD_BYTES) {
            Ok(Some(0)) if !received_any => {
                return Err(ExchangeError::stale_or_lost(
                    io::ErrorKind::UnexpectedEof.into(),
                ))
            }
            Ok(Some(0)) => {
                return Err(AttemptError::NoResponse(io::ErrorKind::UnexpectedEof.into()).into())
            }
            Ok(Some(_)) => received_any = true,
            Ok(None) => return Err(AttemptError::BadResponse("response head too large").into()),
            Err(e) if !received_any => return Err(ExchangeError::stale_or_lost(e)),
            Err(e) => return Err(AttemptError::from_read(e).into()),
        }
    }
}

/// After a failed write: an endpoint may answer before it has read the whole request
/// (a 413 for a body it will not take) and close, which makes our write fail (RFC 9112
/// §9.5: a client must still read that response). A final response already received
/// is a complete exchange and is relayed; its connection is not reused, since the
/// request was cut short. Without one, the write error decides, as before: a closed
/// pooled connection (redialled) or a lost attempt. Reading cannot wait long: the write
/// failed because the connection is closed or reset, so the kernel answers at once.
fn read_early_response(
    conn: &mut Stream,
    buf: &mut IoBuf,
    req: &OutgoingRequest<'_>,
    head: &mut ResponseHead,
    write_error: io::Error,
) -> Result<(), ExchangeError> {
    if crate::error::is_timeout(&write_error) {
        return Err(ExchangeError::Attempt(AttemptError::Timeout));
    }
    // A request cut short switches nothing: a 101 here is not relayed as one.
    let cut_short = OutgoingRequest {
        upgrade: false,
        ..*req
    };
    match read_response_head(conn, buf, &cut_short, head) {
        Ok(()) => {
            head.keep_alive = false;
            Ok(())
        }
        Err(_) => Err(ExchangeError::stale_or_lost(write_error)),
    }
}

fn describe(e: HeadError) -> &'static str {
    match e {
        HeadError::Malformed(why) => why,
        HeadError::TooLarge | HeadError::TooManyHeaders => "response head too large",
        HeadError::UnsupportedVersion => "unsupported HTTP version",
        HeadError::UnsupportedCoding => "unsupported transfer coding",
    }
}
