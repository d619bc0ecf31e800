//! Taking connections from the listener: a seated worker's `accept` (the usual way),
//! the acceptor thread's (while every worker is busy), and SPEC §6's 429 for a client
//! that no worker can take.

use std::io::{self, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::Sender;

use super::handoff::Handoff;
use super::WORKER_STACK_BYTES;
use crate::attempt::{AfterReply, ReplyBody};
use crate::error::flood_rejection;
use crate::proxy::Proxy;
use crate::slots::{Accepted, Pool};

/// How long accepting backs off after a transient failure (out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// At most one "accept failed" warning per this long: up to 16 seated workers back off
/// at once, each every ACCEPT_BACKOFF, while the process is out of file descriptors.
const ACCEPT_WARN_EVERY_MS: u64 = 1000;
/// Connections waiting for the TLS rejecter; beyond this they are closed unanswered.
const TLS_REJECT_BACKLOG: usize = 64;
/// The longest a flooded TLS client's handshake may take.
const TLS_REJECT_HANDSHAKE: Duration = Duration::from_secs(2);

/// What every thread that accepts shares.
pub(super) struct Acceptance {
    pub listener: TcpListener,
    pub pool: Arc<Pool>,
    pub proxy: Arc<Proxy>,
    pub handoff: Handoff,
    /// On a TLS listener, the thread that answers flooded clients (see `start_tls_rejecter`).
    pub tls_rejects: Option<Sender<TcpStream>>,
    /// When (`Pool::now_ms`, plus one) an accept failure was last logged; 0: never.
    pub last_accept_warning: AtomicU64,
}

/// What one `accept` call came to.
enum Took {
    Connection(Accepted),
    /// The listener is done: a stop (`None`), or a failure for good.
    Ended(Option<io::Error>),
}

impl Acceptance {
    /// One connection from the listener; transient failures are logged and retried.
    fn accept(&self) -> Took {
        loop {
            match self.listener.accept() {
                Ok(_) | Err(_) if self.proxy.stopping() => return Took::Ended(None),
                // TCP_NODELAY comes from the listener (see `bind`).
                Ok((stream, peer)) => return Took::Connection(Accepted { stream, peer }),
                Err(e) if is_transient_accept_error(&e) => {
                    self.warn_accept_failed(&e);
                    thread::sleep(ACCEPT_BACKOFF);
                }
                Err(e) => return Took::Ended(Some(e)),
            }
        }
    }

    /// Logs a transient accept failure, once a second at most whoever hits it.
    fn warn_accept_failed(&self, e: &io::Error) {
        let now = self.pool.now_ms() + 1;
        let last = self.last_accept_warning.load(Ordering::Relaxed);
        if is_warning_due(last, now)
            && self
                .last_accept_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!("accept failed: {e} (retrying every {ACCEPT_BACKOFF:?})");
        }
    }

    /// A seated worker's turn: the connection it is to serve itself, or `None` once the
    /// listener is done. A client that would exceed the held requests is answered 429
    /// here, and the worker stays in its seat.
    pub(super) fn accept_seated(&self) -> Option<Accepted> {
        loop {
            let accepted = match self.accept() {
                Took::Connection(accepted) => accepted,
                Took::Ended(failure) => {
                    self.handoff.listener_ended(failure);
                    return None;
                }
            };
            if self.pool.held() >= self.pool.peak() {
                self.reject_flooded(accepted.stream);
                continue;
            }
            // Counted busy before the seat is left: leaving the last seat may hand
            // accepting to the acceptor, which must not count this worker as free.
            self.pool.take_free_worker();
            self.handoff.left_seat();
            return Some(accepted);
        }
    }

    /// The acceptor thread: while every worker is busy it accepts, reclaims an idle
    /// keep-alive worker for the new client or answers 429, and hands connections over;
    /// otherwise it sleeps. Returns once the listener is done.
    pub(super) fn acceptor_loop(&self) -> io::Result<()> {
        while self.handoff.acceptor_turn() {
            let accepted = match self.accept() {
                Took::Connection(accepted) => accepted,
                Took::Ended(None) => return Ok(()),
                Took::Ended(Some(e)) => return Err(e),
            };
            let pool = &self.pool;
            let has_worker = pool.held() < pool.peak()
                && (pool.reserve_free_worker() || pool.reclaim_idle_worker());
            if has_worker {
                self.handoff.send(accepted);
            } else {
                self.reject_flooded(accepted.stream);
            }
            self.handoff.acceptor_done_one();
        }
        match self.handoff.failure() {
            Some(e) if !self.proxy.stopping() => Err(e),
            _ => Ok(()),
        }
    }

    /// SPEC §6: the 429 comes from the accepting thread. The response is far smaller
    /// than a fresh socket's send buffer, so a non-blocking write completes; the
    /// lingering closer then drains what the client sent, so closing does not turn into
    /// a reset.
    fn reject_flooded(&self, mut stream: TcpStream) {
        let proxy = &self.proxy;
        let (reply, code) = flood_rejection();
        proxy.errlog.record(&proxy.listener_label, code);
        if let Some(rejects) = &self.tls_rejects {
            // A TLS client needs a handshake first: that is the rejecter's job, so no
            // accepting thread waits on a client. If it is swamped, the client is closed.
            let _ = rejects.try_send(stream);
            return;
        }
        let reply = proxy
            .settings()
            .render_reply(reply, AfterReply::Close, ReplyBody::Send);
        let _ = stream.set_nonblocking(true);
        let _ = stream.write_all(&reply);
        let _ = stream.shutdown(Shutdown::Write);
        proxy.linger.close(stream);
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    !matches!(e.kind(), io::ErrorKind::InvalidInput)
}

/// Whether a warning last logged at `last_ms` (0: never) may be logged again at `now_ms`.
fn is_warning_due(last_ms: u64, now_ms: u64) -> bool {
    last_ms == 0 || now_ms.saturating_sub(last_ms) >= ACCEPT_WARN_EVERY_MS
}

/// On a TLS listener, the thread that completes the handshake of a flooded client and
/// writes its 429 (SPEC §6: the client reads a complete response).
pub(super) fn start_tls_rejecter(proxy: &Arc<Proxy>) -> io::Result<Option<Sender<TcpStream>>> {
    let Some(tls) = proxy.tls.clone() else {
        return Ok(None);
    };
    let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(TLS_REJECT_BACKLOG);
    let proxy = Arc::clone(proxy);
    thread::Builder::new()
        .name("tls-reject".into())
        .stack_size(WORKER_STACK_BYTES)
        .spawn(move || {
            for tcp in rx {
                if let Ok(mut tls) = tls.accept(tcp, TLS_REJECT_HANDSHAKE) {
                    let reply = proxy.settings().render_reply(
                        flood_rejection().0,
                        AfterReply::Close,
                        ReplyBody::Send,
                    );
                    let _ = tls.write_all(&reply);
                    let _ = tls.shutdown();
                }
            }
        })?;
    Ok(Some(tx))
}

#[cfg(test)]
mod tests {
    use super::{is_warning_due, ACCEPT_WARN_EVERY_MS};

    #[test]
    fn accept_failures_are_logged_once_a_second_at_most() {
        let every = ACCEPT_WARN_EVERY_MS;
        assert!(is_warning_due(0, 1), "the first one is logged");
        assert!(!is_warning_due(500, 500));
        assert!(!is_warning_due(500, 500 + every - 1));
        assert!(is_warning_due(500, 500 + every));
    }
}
