//! Upgraded connections (RFC 9110 §7.8, WebSocket's handshake of RFC 6455 §4): a client
//! request with `Connection: upgrade` and `Upgrade: <protocols>` is forwarded with those
//! two fields; when the endpoint answers `101 Switching Protocols`, the 101 is relayed
//! and the two connections become a byte tunnel, copied both ways — never parsed — until
//! both sides have closed (a half-close is passed on) or nothing moved either way for
//! TUNNEL_IDLE_TIMEOUT. Any other answer is an ordinary response. `h2c` is never offered
//! to endpoints: ServiceQ speaks HTTP/1.1 only.
//!
//! Design: one thread per direction. The worker copies client → endpoint; a scoped
//! thread it spawns copies endpoint → client. Both borrow the two `Stream`s, so nothing
//! is moved out of the connection. A plain side is read through a clone of its socket,
//! without a lock. A TLS side cannot be read and written at once from two threads (an
//! OpenSSL session is not thread-safe), so its stream sits behind a mutex, and a read
//! never blocks while holding it: a blocking `peek` on the raw socket waits, lock-free,
//! for the peer's next bytes, then a non-blocking TLS read under the lock takes what
//! decrypts. A write holds the lock for as long as it blocks — the cost is that a TLS
//! peer which stops reading also stops our reading from it until the write timeout
//! (TUNNEL_IDLE_TIMEOUT). A poll(2) loop would need `unsafe` (the crate forbids it) or
//! a new dependency; this design needs neither, and costs one thread start per tunnel
//! (measured in README's "Upgraded connections").

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::is_timeout;
use crate::metrics::{inc, METRICS};
use crate::stream::Stream;

/// Bytes copied per read, per direction.
const TUNNEL_READ_BYTES: usize = 16 * 1024;
/// Stack of the second copying thread (its buffer is on the heap).
const PUMP_STACK_BYTES: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// The tunnel: I/O

/// The two connections of a switched request, and what each side sent early.
pub struct Tunnel<'a> {
    pub client: &'a mut Stream,
    pub upstream: &'a mut Stream,
    /// Bytes the client sent after its request head (already read), for the endpoint.
    pub client_early: &'a [u8],
    /// Bytes the endpoint sent after its 101 head (already read), for the client.
    pub upstream_early: &'a [u8],
    pub idle_timeout: Duration,
}

/// How a tunnel went, for the access log and /metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelReport {
    pub from_client: u64,
    pub to_client: u64,
    pub duration: Duration,
    pub end: TunnelEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both sides closed.
    Closed,
    /// Nothing moved for TUNNEL_IDLE_TIMEOUT.
    Idle,
    /// A read or write failed (a reset, a write timeout), or no thread could be started.
    Broken,
}

/// Copies bytes both ways until the tunnel ends; then both sockets are shut down.
pub fn run(t: Tunnel<'_>) -> TunnelReport {
    let started = Instant::now();
    inc(&METRICS.tunnels_total);
    inc(&METRICS.tunnels_active);
    let clock = Activity::new(t.idle_timeout);
    let (from_client, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let end = match (
        End::new(t.client, t.idle_timeout),
        End::new(t.upstream, t.idle_timeout),
    ) {
        (Ok(client), Ok(upstream)) => {
            let end = thread::scope(|scope| {
                let down = thread::Builder::new()
                    .name("tunnel".into())
                    .stack_size(PUMP_STACK_BYTES)
                    .spawn_scoped(scope, || {
                        pump(&upstream, &client, t.upstream_early, &clock, &to_client)
                    });
                let Ok(down) = down else {
                    log::error!("cannot start a tunnel thread; closing the tunnel");
                    return TunnelEnd::Broken;
                };
                let up = pump(&client, &upstream, t.client_early, &clock, &from_client);
                let down = down.join().unwrap_or(TunnelEnd::Broken);
                worse(up, down)
            });
            client.abort();
            upstream.abort();
            end
        }
        _ => TunnelEnd::Broken,
    };
    METRICS.tunnels_active.fetch_sub(1, Ordering::Relaxed);
    let report = TunnelReport {
        from_client: from_client.into_inner(),
        to_client: to_client.into_inner(),
        duration: started.elapsed(),
        end,
    };
    METRICS.tunnel_bytes[0].fetch_add(report.from_client, Ordering::Relaxed);
    METRICS.tunnel_bytes[1].fetch_add(report.to_client, Ordering::Relaxed);
    report
}

/// The end of the tunnel from its two directions' ends.
fn worse(a: TunnelEnd, b: TunnelEnd) -> TunnelEnd {
    match (a, b) {
        (TunnelEnd::Broken, _) | (_, TunnelEnd::Broken) => TunnelEnd::Broken,
        (TunnelEnd::Idle, _) | (_, TunnelEnd::Idle) => TunnelEnd::Idle,
        _ => TunnelEnd::Closed,
    }
}

/// One direction: `early` first, then whatever `from` sends, until it closes (passed on
/// as a half-close), the tunnel idles out, or an error. Anything but a close ends the
/// other direction too.
fn pump(from: &End, to: &End, early: &[u8], clock: &Activity, copied: &AtomicU64) -> TunnelEnd {
    let end = copy(from, to, early, clock, copied);
    match end {
        TunnelEnd::Closed => to.shutdown_write(),
        TunnelEnd::Idle | TunnelEnd::Broken => {
            from.abort();
            to.abort();
        }
    }
    end
}

fn copy(from: &End, to: &End, early: &[u8], clock: &Activity, copied: &AtomicU64) -> TunnelEnd {
    if !early.is_empty() {
        if to.write_all(early).is_err() {
            return TunnelEnd::Broken;
        }
        copied.fetch_add(early.len() as u64, Ordering::Relaxed);
    }
    let mut buf = vec![0u8; TUNNEL_READ_BYTES];
    loop {
        // The idle timeout is a deadline from the last byte either way, so a tunnel
        // busy in one direction only stays open.
        let Some(left) = clock.left() else {
            return TunnelEnd::Idle;
        };
        if from.tcp.set_read_timeout(Some(left)).is_err() {
            return TunnelEnd::Broken;
        }
        match from.read(&mut buf) {
            Ok(0) => return TunnelEnd::Closed,
            Ok(n) => {
                clock.touch();
                if to.write_all(&buf[..n]).is_err() {
                    return TunnelEnd::Broken;
                }
                copied.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted || is_timeout(&e) => {}
            Err(_) => return TunnelEnd::Broken,
        }
    }
}

/// When the last byte moved in either direction.
struct Activity {
    start: Instant,
    idle: Duration,
    last_ms: AtomicU64,
}

impl Activity {
    fn new(idle: Duration) -> Self {
        Activity {
            start: Instant::now(),
            idle,
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Time left before the tunnel counts as idle; `None` once it does.
    fn left(&self) -> Option<Duration> {
        let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let left = (last + self.idle).saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// One side of the tunnel, shared by the two copying threads.
struct End<'s> {
    stream: Mutex<&'s mut Stream>,
    /// A clone of the socket: plain reads, the TLS side's wait for bytes, shutdown.
    tcp: TcpStream,
    tls: bool,
}

impl<'s> End<'s> {
    fn new(stream: &'s mut Stream, idle: Duration) -> io::Result<Self> {
        let tcp = stream.tcp().try_clone()?;
        // A peer that stops reading holds a write (and, on TLS, this side) this long.
        tcp.set_write_timeout(Some(idle))?;
        Ok(End {
            tls: stream.is_tls(),
            stream: Mutex::new(stream),
            tcp,
        })
    }

    fn lock(&self) -> MutexGuard<'_, &'s mut Stream> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the peer sent; `Ok(0)` at its end of stream.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.tls {
            return (&self.tcp).read(buf);
        }
        let mut peer_closed = false;
        loop {
            match self.read_tls_nonblocking(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && peer_closed => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            // Nothing decrypted: wait for more from the peer without holding the lock,
            // so the other direction can write meanwhile. Bounded by the read timeout.
            peer_closed = self.tcp.peek(&mut [0u8; 1])? == 0;
        }
    }

    /// One TLS read that does not block: OpenSSL returns buffered or newly decrypted
    /// bytes, or WouldBlock when only part of a record has arrived.
    fn read_tls_nonblocking(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut stream = self.lock();
        self.tcp.set_nonblocking(true)?;
        let read = stream.read(buf);
        // Writes (the other thread, under this lock) must block again.
        self.tcp.set_nonblocking(false)?;
        read
    }

    fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        let mut stream = self.lock();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Passes on a half-close (on TLS, a close_notify first).
    fn shutdown_write(&self) {
        self.lock().shutdown_write();
    }

    /// Ends both directions at once: blocked reads and writes on this socket return.
    fn abort(&self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::{switching_protocols_head, CustomHeaders};
    use crate::http::upgrade::{accepts_switch, offered_upgrade};
    use crate::http::{BodyFraming, Header, ResponseFraming};
    use crate::http::{RequestHead, ResponseHead, Version};
    use std::net::TcpListener;

    fn h(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn request(version: Version, headers: Vec<Header>) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            target: "/chat".into(),
            authority: None,
            version,
            headers,
            framing: BodyFraming::None,
            keep_alive: true,
            expect_continue: false,
        }
    }

    #[test]
    fn upgrade_offers_table() {
        use Version::{Http10, Http11};
        /// The request's version and fields, and the Upgrade to forward.
        type Case = (
            Version,
            &'static [(&'static str, &'static str)],
            Option<&'static str>,
        );
        let cases: &[Case] = &[
            (
                Http11,
                &[("Connection", "Upgrade"), ("Upgrade", "websocket")],
                Some("websocket"),
            ),
            (
                Http11,
                &[
                    ("Connection", "keep-alive, upgrade"),
                    ("Upgrade", "WebSocket"),
                ],
                Some("WebSocket"),
            ),
            (
                Http11,
                &[
                    ("Connection", "upgrade"),
                    ("Upgrade", "a/1, b"),
                    ("Upgrade", "c"),
                ],
                Some("a/1, b, c"),
            ),
            // h2c is refused, alone or in a list.
            (
                Http11,
                &[
                    ("Connection", "Upgrade, HTTP2-Settings"),
                    ("Upgrade", "h2c"),
                ],
                None,
            ),
            (
                Http11,
                &[("Connection", "upgrade"), ("Upgrade", "H2C, websocket")],
                Some("websocket"),
            ),
            // Both fields are needed, and HTTP/1.1.
            (Http11, &[("Upgrade", "websocket")], None),
            (Http11, &[("Connection", "upgrade")], None),
            (
                Http11,
                &[("Connection", "upgrade"), ("Upgrade", " , ")],
                None,
            ),
            (
                Http10,
                &[("Connection", "upgrade"), ("Upgrade", "websocket")],
                None,
            ),
        ];
        for (version, fields, want) in cases {
            let head = request(*version, fields.iter().map(|(n, v)| h(n, v)).collect());
            let got = offered_upgrade(&head);
            assert_eq!(got.as_deref(), want.map(str::as_bytes), "{fields:?}");
        }
    }

    fn response_101(headers: Vec<Header>) -> ResponseHead {
        ResponseHead {
            version: Version::Http11,
            status: 101,
            reason: "Switching Protocols".into(),
            headers,
            framing: ResponseFraming::NoBody,
            keep_alive: true,
        }
    }

    #[test]
    fn the_101_keeps_end_to_end_fields_and_names_the_protocol() {
        let resp = response_101(vec![
            h("Upgrade", "websocket"),
            h("Connection", "Upgrade, X-Hop"),
            h("X-Hop", "1"),
            h("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            h("Server", "up"),
        ]);
        let custom = CustomHeaders::new(&[("Server".into(), "sq".into())]);
        let mut out = Vec::new();
        switching_protocols_head(&resp, &custom, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             Server: sq\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        );
        assert!(accepts_switch(true, &resp));
        assert!(!accepts_switch(false, &resp), "a 101 nobody asked for");
        assert!(
            !accepts_switch(true, &response_101(vec![])),
            "a 101 without Upgrade"
        );
    }

    #[test]
    fn ends_combine_to_the_worse() {
        use TunnelEnd::*;
        assert_eq!(worse(Closed, Closed), Closed);
        assert_eq!(worse(Closed, Idle), Idle);
        assert_eq!(worse(Broken, Idle), Broken);
        assert_eq!(worse(Idle, Broken), Broken);
    }

    /// A connected pair of plain streams on loopback.
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (a, l.accept().unwrap().0)
    }

    #[test]
    fn copies_both_ways_with_early_bytes_and_passes_half_closes_on() {
        let (mut client_peer, client_side) = pair();
        let (mut upstream_peer, upstream_side) = pair();
        let (mut client, mut upstream) = (Stream::Plain(client_side), Stream::Plain(upstream_side));
        let peers = thread::spawn(move || {
            let mut got = [0u8; 5];
            upstream_peer.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"early");
            client_peer.write_all(b"ping").unwrap();
            upstream_peer.read_exact(&mut got[..4]).unwrap();
            assert_eq!(&got[..4], b"ping");
            client_peer.shutdown(Shutdown::Write).unwrap();
            // The half-close reaches the endpoint; its answer still reaches the client.
            assert_eq!(upstream_peer.read(&mut got).unwrap(), 0);
            upstream_peer.write_all(b"pong").unwrap();
            upstream_peer.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            client_peer.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, b"hi!pong");
        });
        let report = run(Tunnel {
            client: &mut client,
            upstream: &mut upstream,
            client_early: b"early",
            upstream_early: b"hi!",
            idle_timeout: Duration::from_secs(10),
        });
        peers.join().unwrap();
        assert_eq!((report.from_client, report.to_client), (9, 7));
        assert_eq!(report.end, TunnelEnd::Closed);
    }

    #[test]
    fn a_silent_tunnel_ends_after_the_idle_timeout() {
        let (mut client_peer, client_side) = pair();
        let (_upstream_peer, upstream_side) = pair();
        let (mut client, mut upstream) = (Stream::Plain(client_side), Stream::Plain(upstream_side));
        let started = Instant::now();
        let report = run(Tunnel {
            client: &mut client,
            upstream: &mut upstream,
            client_early: b"",
            upstream_early: b"",
            idle_timeout: Duration::from_millis(200),
        });
        assert_eq!(report.end, TunnelEnd::Idle);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(5));
        let mut buf = [0u8; 1];
        assert_eq!(client_peer.read(&mut buf).unwrap_or(0), 0, "closed");
    }
}
