//! One client connection, served by one worker from accept to close:
//! `read_head → hold a slot → read_body → forward (attempts) → relay → keep-alive?`
//!
//! A `Worker` owns its buffers for its whole life, so a request costs no buffer
//! allocation; they are shrunk while a connection sits idle.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::accesslog;
use crate::attempt::{endpoint_failed, AfterReply, ReplyBody, Scratch};
use crate::body::Body;
use crate::buffer::IoBuf;
use crate::error::{flood_rejection, is_timeout, ClientError, Failure, Reply};
use crate::forward;
use crate::http::headers;
use crate::http::{
    parse_request_into, BodyFraming, ChunkedDecoder, HeadLimits, RequestHead, Version,
};
use crate::linger::linger_after_reply;
use crate::logging::escaped;
use crate::metrics::{self, METRICS};
use crate::proxy::{CachedSettings, Proxy};
use crate::queue::QueuedRequest;
use crate::relay::ClientFraming;
use crate::relay::{self, RelayEnd, Sink, RELAY_READ_BYTES};
use crate::slots::{Accepted, Pool, ServeConnection, WorkerSlot, WorkerState};
use crate::stream::Stream;
use crate::upstream::{Exchange, OutgoingRequest};

/// Client read buffer kept while a connection is idle; it grows up to MAX_HEADER_SIZE
/// for a large head and is shrunk back between requests.
const IDLE_INBUF_BYTES: usize = 4 * 1024;
/// Request bodies above this are not kept in the worker's buffer between requests.
const KEPT_BODY_BYTES: usize = 64 * 1024;
/// `Expect: 100-continue` answer (RFC 9110 §10.1.1).
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What happens to the client connection after a request.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    KeepAlive,
    /// Close after what was written (it was complete).
    Close,
    /// Drop at once: the response was cut short or the client is gone.
    Abort,
}

/// Whether the request's `CONCURRENCY_PEAK` slot is freed when the worker is done with
/// it, or went into the queue with the request.
#[derive(Debug, PartialEq, Eq)]
enum Hold {
    Released,
    Queued,
}

/// What waiting for a request came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waited {
    /// The connection ended quietly (closed, timed out, reclaimed).
    Nothing,
    /// Bytes of a request are in the worker's buffer.
    Buffered,
    /// Bytes of a request are in the socket, unread (seen by a peek).
    InSocket,
}

/// Which wait precedes a request head: the first on a connection, or a later one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    First,
    KeepAlive,
}

/// The client side of a connection.
struct Client {
    stream: Stream,
    peer: SocketAddr,
    /// The read timeout currently set on the socket, to skip redundant system calls.
    read_timeout: Option<Option<Duration>>,
}

impl Client {
    /// Bounds the next read by what is left until `deadline`.
    fn set_body_deadline(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::BodyTimeout);
        }
        self.set_read_timeout(Some(left)).map_err(ClientError::Gone)
    }

    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        if self.read_timeout != Some(t) {
            self.stream.set_read_timeout(t)?;
            self.read_timeout = Some(t);
        }
        Ok(())
    }
}

pub struct Worker {
    proxy: Arc<Proxy>,
    inbuf: IoBuf,
    upbuf: IoBuf,
    out: Vec<u8>,
    /// The current request's body: memory up to CLIENT_BODY_BUFFER_SIZE, then a file.
    body: Body,
    line: Vec<u8>,
    headers: Vec<u8>,
    /// The head of the current request; its buffers are reused by the next one.
    req: RequestHead,
    /// The client's address as text, for X-Forwarded-For (rendered per connection).
    peer_ip: String,
    /// When the first bytes of the current request head arrived.
    head_started: Instant,
    scratch: Scratch,
    /// The settings snapshot, refreshed before each request.
    settings: CachedSettings,
    /// What the current request did, for the access log and /metrics.
    outcome: Outcome,
}

/// What one request did.
#[derive(Default)]
struct Outcome {
    status: u16,
    /// The response came from an endpoint (generated replies are counted elsewhere).
    relayed: bool,
    body_bytes: u64,
    upstream: Option<usize>,
    attempts: u32,
    upstream_time: Option<Duration>,
    queued: Option<Queued>,
    request_id: String,
    /// Bytes each way through an upgraded connection (from, to the client).
    tunnel: Option<(u64, u64)>,
}

/// Which queue a request went into (the access log's `queued=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    /// ENABLE_UPFRONT_Q: without an attempt.
    Upfront,
    /// ENABLE_DEFERRED_Q: after every attempt failed.
    Deferred,
}

impl Queued {
    fn as_str(self) -> &'static str {
        match self {
            Queued::Upfront => "upfront",
            Queued::Deferred => "deferred",
        }
    }
}

impl Outcome {
    fn reset(&mut self) {
        let mut id = std::mem::take(&mut self.request_id);
        id.clear();
        *self = Outcome {
            request_id: id,
            ..Outcome::default()
        };
    }
}

impl ServeConnection for Worker {
    fn serve(&mut self, accepted: Accepted, slot: &WorkerSlot, pool: &Pool) {
        Worker::serve(self, accepted, slot, pool)
    }
}

/// Counts a client connection as active for as long as it lives.
struct ActiveConnection;

impl ActiveConnection {
    fn open() -> Self {
        metrics::inc(&METRICS.connections_total);
        metrics::inc(&METRICS.connections_active);
        ActiveConnection
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        METRICS
            .connections_active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Worker {
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Worker {
            inbuf: IoBuf::with_capacity(IDLE_INBUF_BYTES),
            upbuf: IoBuf::with_capacity(RELAY_READ_BYTES),
            out: Vec::new(),
            body: Body::new(),
            line: Vec::new(),
            headers: Vec::new(),
            req: RequestHead::empty(),
            peer_ip: String::new(),
            head_started: Instant::now(),
            scratch: Scratch::new(),
            settings: proxy.snapshot(),
            outcome: Outcome::default(),
            proxy,
        }
    }

    /// Serves every request of one connection, then closes it and hands the endpoint
    /// connections it kept to the shared pool.
    pub fn serve(&mut self, accepted: Accepted, slot: &WorkerSlot, pool: &Pool) {
        self.serve_requests(accepted, slot, pool);
        self.settings
            .current
            .upstreams
            .release_held(&mut self.scratch.held);
    }

    fn serve_requests(&mut self, accepted: Accepted, slot: &WorkerSlot, pool: &Pool) {
        let _active = ActiveConnection::open();
        let Some(stream) = self.handshake(accepted.stream) else {
            return;
        };
        let _ = stream.set_write_timeout(Some(self.settings.current.cfg.client_body_timeout));
        let mut client = Client {
            stream,
            peer: accepted.peer,
            read_timeout: None,
        };
        self.peer_ip.clear();
        let _ = std::fmt::Write::write_fmt(&mut self.peer_ip, format_args!("{}", client.peer.ip()));
        self.inbuf.clear();
        let mut wait = Wait::First;
        loop {
            self.proxy.refresh(&mut self.settings);
            let head = match self.read_head(&mut client, wait, slot, pool) {
                Ok(Some(head)) => head,
                Ok(None) => return,
                Err(e) => return self.refuse(client, e),
            };
            // A reload while this connection sat idle applies to the request that
            // just arrived, not only to the next connection.
            self.proxy.refresh(&mut self.settings);
            wait = Wait::KeepAlive;
            // The request's time counts from its first bytes, as nginx's does.
            let started = self.head_started;
            self.outcome.reset();
            if !pool.try_hold() {
                let (flooded, code) = flood_rejection();
                self.proxy.errlog.record(&self.proxy.listener_label, code);
                let reply = self.settings.current.render_reply(
                    flooded,
                    AfterReply::Close,
                    ReplyBody::for_method(&head.method),
                );
                self.outcome.status = flooded.parts().0;
                self.record(&client, &head, started);
                return close_after(client, &reply, &self.proxy, Linger::Always);
            }
            let (next, hold) = self.handle(&mut client, &head);
            self.record(&client, &head, started);
            if hold == Hold::Released {
                pool.release_hold();
            }
            self.req = head;
            self.body.clear(KEPT_BODY_BYTES);
            match next {
                Next::KeepAlive if self.proxy.stopping() => {
                    return close_after(client, &[], &self.proxy, self.linger_if_pending())
                }
                Next::KeepAlive => continue,
                Next::Close => {
                    return close_after(client, &[], &self.proxy, self.linger_if_pending())
                }
                Next::Abort => return,
            }
        }
    }

    /// On a TLS listener, the handshake, with CLIENT_HEADER_TIMEOUT as a deadline for
    /// the whole of it, so that a client that stays silent or dribbles its ClientHello
    /// cannot hold the worker longer (SPEC §8).
    fn handshake(&self, tcp: TcpStream) -> Option<Stream> {
        let Some(tls) = &self.proxy.tls else {
            return Some(Stream::Plain(tcp));
        };
        let peer = tcp.peer_addr().ok();
        match tls.accept(tcp, self.settings.current.cfg.client_header_timeout) {
            Ok(tls) => Some(Stream::Served(Box::new(tls))),
            Err(e) => {
                log::debug!("{peer:?}: TLS handshake failed: {e}");
                None
            }
        }
    }

    /// One request whose head has been read: body, attempts, response.
    fn handle(&mut self, client: &mut Client, head: &RequestHead) -> (Next, Hold) {
        if let Err(e) = self.read_body(client, head) {
            if let ClientError::BodyStore(why) = &e {
                log::error!(
                    "{} {}: {e} (CLIENT_BODY_TEMP_DIR {})",
                    escaped(&head.method),
                    escaped(&head.target),
                    self.settings.current.cfg.client_body_temp_dir.display()
                );
                let _ = why;
            }
            let body = ReplyBody::for_method(&head.method);
            let next = match e.reply() {
                Some(reply) => {
                    let bytes = self
                        .settings
                        .current
                        .render_reply(reply, AfterReply::Close, body);
                    let _ = client.stream.write_all(&bytes);
                    Next::Close
                }
                None => Next::Abort,
            };
            return (next, Hold::Released);
        }
        self.forward(client, head)
    }

    /// Reads until a complete request head is buffered. `Ok(None)`: the connection
    /// ended quietly (client closed, idle timeout, or reclaimed by the acceptor).
    fn read_head(
        &mut self,
        client: &mut Client,
        wait: Wait,
        slot: &WorkerSlot,
        pool: &Pool,
    ) -> Result<Option<RequestHead>, ClientError> {
        // Whether the next read is known not to block (its bytes are in the socket), so
        // it needs no timeout armed.
        let mut in_socket = false;
        if self.inbuf.is_empty() {
            match self.wait_for_request(client, wait, slot, pool)? {
                Waited::Nothing => return Ok(None),
                Waited::Buffered => {}
                Waited::InSocket => in_socket = true,
            }
        }
        self.head_started = Instant::now();
        let cfg = &self.settings.current.cfg;
        let limits = HeadLimits {
            max_head_bytes: cfg.max_header_size,
            max_headers: cfg.max_headers,
        };
        let deadline = self.head_started + cfg.client_header_timeout;
        let mut head = std::mem::replace(&mut self.req, RequestHead::empty());
        loop {
            match parse_request_into(self.inbuf.filled(), &limits, &mut head) {
                Ok(Some(len)) => {
                    self.inbuf.consume(len);
                    return Ok(Some(head));
                }
                Ok(None) => {}
                Err(e) => {
                    self.req = head;
                    return Err(e.into());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::HeadTimeout);
            }
            if !std::mem::take(&mut in_socket) {
                client
                    .set_read_timeout(Some(left))
                    .map_err(ClientError::Gone)?;
            }
            let limit = cfg.max_header_size;
            if !read_client(&mut self.inbuf, client, limit, ClientError::HeadTimeout)? {
                return Err(ClientError::HeadTooLarge);
            }
        }
    }

    /// Waits for the first byte of a request. The first request of a connection gets
    /// CLIENT_HEADER_TIMEOUT, later ones KEEP_ALIVE_TIMEOUT; running out closes quietly,
    /// as nginx does, since no request was started. Both waits are reclaimable (the
    /// acceptor may close the connection to give its worker to a new client). The first
    /// one, on a plain connection, looks with a peek that leaves the bytes in the
    /// socket, where the acceptor's own peek sees them before it reclaims: a new
    /// client's request that has arrived is never dropped. Usually they are there at
    /// once (the listener defers `accept` until they are), and a non-blocking peek is
    /// all it takes. (Through TLS, OpenSSL may hold decrypted bytes a peek cannot see,
    /// so a TLS first wait is not reclaimable.)
    fn wait_for_request(
        &mut self,
        client: &mut Client,
        wait: Wait,
        slot: &WorkerSlot,
        pool: &Pool,
    ) -> Result<Waited, ClientError> {
        let cfg = &self.settings.current.cfg;
        let timeout = match wait {
            Wait::First => Some(cfg.client_header_timeout),
            Wait::KeepAlive => cfg.keep_alive_timeout,
        };
        if timeout == Some(Duration::ZERO) {
            return Ok(Waited::Nothing);
        }
        self.inbuf.shrink_to(IDLE_INBUF_BYTES);
        let first_plain = wait == Wait::First && matches!(client.stream, Stream::Plain(_));
        if first_plain && has_arrived(crate::stream::peek_nonblocking(client.stream.tcp())) {
            return Ok(Waited::InSocket);
        }
        client
            .set_read_timeout(timeout)
            .map_err(ClientError::Gone)?;
        if first_plain {
            if !slot.go_idle(pool.now_ms(), WorkerState::First) {
                return Ok(Waited::Nothing);
            }
            let peeked = peek_blocking(client.stream.tcp());
            // Reclaimed: the acceptor's peek found nothing, so no request is lost.
            let kept = slot.go_busy() && has_arrived(peeked);
            return Ok(if kept {
                Waited::InSocket
            } else {
                Waited::Nothing
            });
        }
        let reclaimable = wait == Wait::KeepAlive;
        if reclaimable && !slot.go_idle(pool.now_ms(), WorkerState::Idle) {
            return Ok(Waited::Nothing);
        }
        let limit = cfg.max_header_size;
        let read = read_client(&mut self.inbuf, client, limit, ClientError::HeadTimeout);
        if reclaimable && !slot.go_busy() {
            // The acceptor closed this connection to free the worker; whatever
            // arrived meanwhile is dropped with it, as on any keep-alive close race.
            return Ok(Waited::Nothing);
        }
        // A close, a timeout or an error while waiting ends the connection quietly.
        Ok(match read {
            Ok(_) => Waited::Buffered,
            Err(_) => Waited::Nothing,
        })
    }

    /// Reads the whole body into `self.body` (it may be retried or queued), bounded by
    /// MAX_REQUEST_BODY and by CLIENT_BODY_TIMEOUT for the whole body. A deadline rather
    /// than an inactivity timeout: a client dribbling a byte every second would
    /// otherwise hold a worker for as long as it likes.
    fn read_body(&mut self, client: &mut Client, head: &RequestHead) -> Result<(), ClientError> {
        self.body.clear(KEPT_BODY_BYTES);
        let max = self.settings.current.cfg.max_request_body;
        match head.framing {
            BodyFraming::None | BodyFraming::Length(0) => return Ok(()),
            BodyFraming::Length(n) if n > max => return Err(ClientError::BodyTooLarge),
            _ => {}
        }
        let deadline = Instant::now() + self.settings.current.cfg.client_body_timeout;
        if head.expect_continue && self.inbuf.is_empty() {
            client
                .stream
                .write_all(CONTINUE)
                .map_err(ClientError::Gone)?;
        }
        match head.framing {
            BodyFraming::Length(n) => self.read_length_body(client, n, deadline),
            BodyFraming::Chunked => self.read_chunked_body(client, max, deadline),
            BodyFraming::None => Ok(()),
        }
    }

    /// Reads `n` body bytes. Memory follows what arrives, never the declared length:
    /// bytes go through the worker's read buffer into `self.body`, which keeps
    /// CLIENT_BODY_BUFFER_SIZE in memory and spills the rest to its temporary file.
    fn read_length_body(
        &mut self,
        client: &mut Client,
        n: u64,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        let spill = self.settings.current.body_spill();
        let mut left = n;
        loop {
            let take = (self.inbuf.len() as u64).min(left) as usize;
            self.body
                .append(&self.inbuf.filled()[..take], spill)
                .map_err(ClientError::BodyStore)?;
            self.inbuf.consume(take);
            left -= take as u64;
            if left == 0 {
                return Ok(());
            }
            client.set_body_deadline(deadline)?;
            let want = RELAY_READ_BYTES.min(usize::try_from(left).unwrap_or(usize::MAX));
            read_client(&mut self.inbuf, client, want, ClientError::BodyTimeout)?;
        }
    }

    /// Decodes a chunked body into `self.body`. A chunk whose size line alone takes the
    /// body past MAX_REQUEST_BODY is refused as soon as that line is read (413), as
    /// nginx does, rather than after the client has sent it.
    fn read_chunked_body(
        &mut self,
        client: &mut Client,
        max: u64,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        let spill = self.settings.current.body_spill();
        let mut decoder = ChunkedDecoder::new();
        loop {
            while !self.inbuf.is_empty() && !decoder.is_done() {
                let decoded = decoder
                    .decode(self.inbuf.filled())
                    .map_err(|_| ClientError::Malformed("bad chunked body"))?;
                let after = self.body.len() + decoded.data.len() as u64;
                if after.saturating_add(decoder.chunk_remaining()) > max {
                    return Err(ClientError::BodyTooLarge);
                }
                self.body
                    .append(decoded.data, spill)
                    .map_err(ClientError::BodyStore)?;
                let consumed = decoded.consumed;
                self.inbuf.consume(consumed);
            }
            if decoder.is_done() {
                return Ok(());
            }
            client.set_body_deadline(deadline)?;
            read_client(
                &mut self.inbuf,
                client,
                RELAY_READ_BYTES,
                ClientError::BodyTimeout,
            )?;
        }
    }

    /// Sends the request to the endpoints (SPEC §4) and relays the first complete
    /// response. A queueable request goes to the queue up front (ENABLE_UPFRONT_Q) or
    /// once every attempt failed (ENABLE_DEFERRED_Q); otherwise the last failure decides
    /// the reply.
    fn forward(&mut self, client: &mut Client, head: &RequestHead) -> (Next, Hold) {
        // Fields are borrowed one by one (no Arc clone per request: its count is a cache
        // line every worker would write).
        let settings = &self.settings.current;
        let proxy = &self.proxy;
        let origin = forward::Origin {
            client_ip: &self.peer_ip,
            proto: proxy.forwarded_proto,
            custom: &settings.request_headers,
        };
        forward::upstream_request_into(
            head,
            self.body.len(),
            &origin,
            |id| proxy.ids.next_into(id),
            &mut self.outcome.request_id,
            &mut self.line,
            &mut self.headers,
        );
        // An upgrade is never queued: its client waits for the switch (`tunnel.rs`).
        let upgrade = crate::http::upgrade::offered_upgrade(head).is_some();
        let queueable = !upgrade && settings.is_queueable(&head.method, &head.target);
        let (upfront, deferred) = (
            queueable && settings.cfg.enable_upfront_q,
            queueable && settings.cfg.enable_deferred_q,
        );
        if upfront {
            return self.enqueue(client, head, Reply::Queued, Reply::Unavailable);
        }
        let req = OutgoingRequest {
            method: &head.method,
            request_line: &self.line,
            headers: &self.headers,
            body: &self.body,
            upgrade,
        };
        let upstream_started = Instant::now();
        let tried = self.settings.current.try_endpoints(
            &self.proxy.errlog,
            &req,
            &mut self.upbuf,
            &mut self.scratch,
        );
        self.outcome.attempts = self.scratch.attempts;
        match tried {
            Ok((idx, exchange)) => {
                let next = self.relay_response(client, head, idx, exchange);
                self.outcome.upstream_time = Some(upstream_started.elapsed());
                (next, Hold::Released)
            }
            Err(last) if deferred => {
                let unqueued = last.reply();
                self.enqueue(client, head, Reply::Buffered, unqueued)
            }
            Err(last) => (self.reply(client, head, last.reply()), Hold::Released),
        }
    }

    /// Puts the request, as it would go upstream, at the tail of the queue, and tells
    /// the client with `reply`. The request keeps its slot until it is delivered.
    /// `unqueued` is the answer when the queue cannot take it: what the client would
    /// have got with the queue disabled.
    fn enqueue(
        &mut self,
        client: &mut Client,
        head: &RequestHead,
        reply: Reply,
        unqueued: Reply,
    ) -> (Next, Hold) {
        let request_id = self.outcome.request_id.clone();
        let queued = QueuedRequest {
            method: head.method.clone(),
            target: head.target.clone(),
            request_line: self.line.clone(),
            headers: self.headers.clone(),
            body: std::mem::take(&mut self.body),
            request_id,
            client: client.peer.ip(),
            queued_at: Instant::now(),
        };
        match self.proxy.queue.push(queued) {
            Ok(()) => {
                metrics::inc(&METRICS.queued_total);
                self.outcome.queued = Some(if reply == Reply::Queued {
                    Queued::Upfront
                } else {
                    Queued::Deferred
                });
                // In a shared queue the request no longer needs this instance.
                let hold = if self.proxy.queue.holds_slots() {
                    Hold::Queued
                } else {
                    Hold::Released
                };
                (self.reply(client, head, reply), hold)
            }
            Err(e) => {
                if let Some((target, code)) = e.log_entry() {
                    self.proxy.errlog.record(&target, code);
                }
                log::error!(
                    "{} {} (X-Request-Id {}) not queued: {e}",
                    escaped(&head.method),
                    escaped(&head.target),
                    escaped(&self.outcome.request_id)
                );
                (self.reply(client, head, unqueued), Hold::Released)
            }
        }
    }

    /// Writes a generated response and keeps the connection if the client wants to.
    fn reply(&mut self, client: &mut Client, head: &RequestHead, reply: Reply) -> Next {
        self.outcome.status = reply.parts().0;
        let body = ReplyBody::for_method(&head.method);
        if body == ReplyBody::Send {
            self.outcome.body_bytes = reply.body().len() as u64;
        }
        let close = !head.keep_alive || reply.closes_connection() || self.proxy.stopping();
        let after = if close {
            AfterReply::Close
        } else {
            AfterReply::KeepAlive
        };
        let bytes = self.settings.current.render_reply(reply, after, body);
        match client.stream.write_all(&bytes) {
            Ok(()) if close => Next::Close,
            Ok(()) => Next::KeepAlive,
            Err(_) => Next::Abort,
        }
    }

    /// Answers a request whose head could not be read, then closes. Its method is
    /// unknown, so the reply has its body.
    fn refuse(&mut self, client: Client, e: ClientError) {
        log::debug!("{}: {e}", client.peer);
        match e.reply() {
            Some(reply) => {
                let bytes =
                    self.settings
                        .current
                        .render_reply(reply, AfterReply::Close, ReplyBody::Send);
                self.record_refusal(&client, reply);
                close_after(client, &bytes, &self.proxy, Linger::Always);
            }
            None => drop(client),
        }
    }

    /// The access log line of a request refused before its head was understood (400,
    /// 408, 431, 501, 505): nginx's convention, `-` for what could not be read.
    fn record_refusal(&self, client: &Client, reply: Reply) {
        let took = self.head_started.elapsed();
        METRICS.total_latency.observe(took);
        let Some(log) = &self.proxy.access_log else {
            return;
        };
        log.record(&accesslog::Entry {
            client: client.peer.ip(),
            method: "-",
            target: "-",
            version: "-",
            status: reply.parts().0,
            body_bytes: reply.body().len() as u64,
            referer: None,
            user_agent: None,
            upstream: None,
            attempts: 0,
            upstream_time: None,
            request_time: took,
            queued: None,
            request_id: "-",
            tunnel: None,
        });
    }

    /// Relays an endpoint's response to the client and returns the connection to the pool
    /// when its body was read to the end.
    fn relay_response(
        &mut self,
        client: &mut Client,
        head: &RequestHead,
        idx: usize,
        exchange: Exchange,
    ) -> Next {
        if exchange.head.status == 101 {
            return self.switch_protocols(client, idx, exchange);
        }
        let (proxy, settings) = (&self.proxy, &self.settings.current);
        let (upbuf, out) = (&mut self.upbuf, &mut self.out);
        let scratch = &mut self.scratch;
        let Exchange {
            mut conn,
            head: resp,
        } = exchange;
        let framing = forward::client_framing(resp.framing, head.version);
        let close = !head.keep_alive || framing == ClientFraming::UntilClose || proxy.stopping();
        forward::client_response_head(
            &resp,
            framing,
            close,
            head.version,
            &settings.response_headers,
            out,
        );
        let mut sink = Sink {
            client: &mut client.stream,
            out,
            framing,
            body_bytes: 0,
        };
        let end = relay::relay_body(&mut conn, upbuf, resp.framing, resp.keep_alive, &mut sink);
        self.outcome.status = resp.status;
        self.outcome.relayed = true;
        self.outcome.body_bytes = sink.body_bytes;
        self.outcome.upstream = Some(idx);
        scratch.reuse_head(resp);
        match end {
            RelayEnd::Complete { reusable } => {
                if reusable {
                    settings.upstreams.release(idx, conn, &mut scratch.held);
                }
                if close {
                    Next::Close
                } else {
                    Next::KeepAlive
                }
            }
            RelayEnd::ClientGone => Next::Abort,
            RelayEnd::UpstreamBroke(why) => {
                let up = &settings.upstreams.list[idx];
                log::warn!(
                    "{} {}: {} broke off mid-response: {why}",
                    escaped(&head.method),
                    escaped(&head.target),
                    up.label
                );
                endpoint_failed(&proxy.errlog, up, Failure::UpstreamBrokeOff);
                Next::Abort
            }
        }
    }

    /// A 101 to an upgrade request: relays it, then the connection is a tunnel until
    /// both sides are done with it (`tunnel.rs`); it is not HTTP afterwards.
    fn switch_protocols(&mut self, client: &mut Client, idx: usize, exchange: Exchange) -> Next {
        let Exchange { mut conn, head } = exchange;
        let settings = &self.settings.current;
        forward::switching_protocols_head(&head, &settings.response_headers, &mut self.out);
        self.scratch.reuse_head(head);
        (self.outcome.status, self.outcome.relayed) = (101, true);
        self.outcome.upstream = Some(idx);
        if client.stream.write_all(&self.out).is_err() {
            return Next::Abort;
        }
        let report = crate::tunnel::run(crate::tunnel::Tunnel {
            client: &mut client.stream,
            upstream: &mut conn,
            client_early: self.inbuf.filled(),
            upstream_early: self.upbuf.filled(),
            idle_timeout: settings.cfg.tunnel_idle_timeout,
        });
        self.inbuf.clear();
        self.upbuf.clear();
        self.outcome.body_bytes = report.to_client;
        self.outcome.tunnel = Some((report.from_client, report.to_client));
        log::debug!(
            "{}: tunnel ended ({:?}) after {:.1?}",
            client.peer,
            report.end,
            report.duration
        );
        Next::Abort
    }

    /// Counts a finished request in /metrics and writes its access log line.
    fn record(&self, client: &Client, head: &RequestHead, started: Instant) {
        let o = &self.outcome;
        let took = started.elapsed();
        if o.relayed {
            METRICS.response(o.status);
        }
        METRICS.total_latency.observe(took);
        if let Some(t) = o.upstream_time {
            METRICS.upstream_latency.observe(t);
        }
        let Some(log) = &self.proxy.access_log else {
            return;
        };
        let settings = &self.settings.current;
        log.record(&accesslog::Entry {
            client: client.peer.ip(),
            method: &head.method,
            target: &head.target,
            version: match head.version {
                Version::Http10 => "HTTP/1.0",
                Version::Http11 => "HTTP/1.1",
            },
            status: o.status,
            body_bytes: o.body_bytes,
            referer: headers::find(&head.headers, "referer").map(|h| h.value.as_slice()),
            user_agent: headers::find(&head.headers, "user-agent").map(|h| h.value.as_slice()),
            upstream: o
                .upstream
                .and_then(|i| settings.upstreams.list.get(i))
                .map(|u| u.label.as_str()),
            attempts: o.attempts,
            upstream_time: o.upstream_time,
            request_time: took,
            queued: o.queued.map(Queued::as_str),
            request_id: &o.request_id,
            tunnel: o.tunnel,
        });
    }

    /// How to close after a complete exchange: bytes already read past the request
    /// (a pipelined request) mean the client may be sending still.
    fn linger_if_pending(&self) -> Linger {
        if self.inbuf.is_empty() {
            Linger::IfPending
        } else {
            Linger::Always
        }
    }
}

/// One read from the client into `inbuf`, which holds at most `limit` bytes: `Ok(true)`
/// when bytes arrived, `Ok(false)` when `inbuf` was full already. The client closing is
/// `Gone`, the socket's read timeout running out is `timed_out` (the phase's deadline
/// set it), and any other error is `Gone`: the one place a client read is classified.
fn read_client(
    inbuf: &mut IoBuf,
    client: &mut Client,
    limit: usize,
    timed_out: ClientError,
) -> Result<bool, ClientError> {
    match inbuf.read_from(&mut client.stream, limit) {
        Ok(Some(0)) => Err(ClientError::Gone(io::ErrorKind::UnexpectedEof.into())),
        Ok(Some(_)) => Ok(true),
        Ok(None) => Ok(false),
        Err(e) if is_timeout(&e) => Err(timed_out),
        Err(e) => Err(ClientError::Gone(e)),
    }
}

/// Whether a closing connection goes through the lingering closer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Linger {
    /// After a generated reply: the client may still be sending (a body, more
    /// requests), and closing with unread data would reset the connection.
    Always,
    /// After a complete exchange: only if the client sent more than was read.
    IfPending,
}

/// Writes `bytes`, then closes gracefully. As nginx does, the lingering closer (a
/// shutdown, then draining what the client still sends for up to 2 s) is kept for
/// connections that need it: a client whose request was read whole and that has
/// nothing more in flight gets a plain close, which sends FIN and costs no more work.
fn close_after(mut client: Client, bytes: &[u8], proxy: &Proxy, linger: Linger) {
    if !bytes.is_empty() && client.stream.write_all(bytes).is_err() {
        return;
    }
    match client.stream {
        Stream::Plain(tcp) if linger == Linger::IfPending && !has_pending_bytes(&tcp) => drop(tcp),
        Stream::Plain(tcp) => linger_after_reply(&proxy.linger, tcp),
        mut tls => tls.shutdown_write(),
    }
}

/// Waits (within the socket's read timeout) until the client sends a byte or closes,
/// leaving what arrived in the socket. A signal delivered to this thread is not the end
/// of the wait.
/// Whether a peek saw request bytes (not a close, not an error).
fn has_arrived(peek: io::Result<usize>) -> bool {
    matches!(peek, Ok(n) if n > 0)
}

fn peek_blocking(tcp: &TcpStream) -> io::Result<usize> {
    loop {
        match tcp.peek(&mut [0u8; 1]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Whether the client has sent bytes not read yet (a peek that does not block); an
/// error counts as pending, so that the connection lingers.
fn has_pending_bytes(tcp: &TcpStream) -> bool {
    match crate::stream::peek_nonblocking(tcp) {
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        // Ok(0): the client closed its side; nothing to drain.
        Ok(n) => n > 0,
    }
}

#[cfg(test)]
mod tests {
    use super::has_pending_bytes;
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    /// Waits (bounded) for `cond`, which a loopback write makes true within microseconds.
    fn eventually(cond: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }

    /// Decides whether closing after a complete exchange must linger: only unread bytes
    /// from the client do; silence and a client that closed its side do not.
    #[test]
    fn pending_bytes_decide_the_lingering_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(!has_pending_bytes(&server), "nothing sent yet");
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        assert!(eventually(|| has_pending_bytes(&server)), "unread bytes");
        let mut sink = [0u8; 64];
        let n = std::io::Read::read(&mut &server, &mut sink).unwrap();
        assert_eq!(n, 16);
        assert!(!has_pending_bytes(&server), "all read");
        client.shutdown(Shutdown::Write).unwrap();
        // Once the FIN is in, the socket reads as closed: nothing to drain.
        let fin = || matches!(crate::stream::peek_nonblocking(&server), Ok(0));
        assert!(eventually(fin), "FIN not seen");
        assert!(!has_pending_bytes(&server), "client closed its side");
    }
}
