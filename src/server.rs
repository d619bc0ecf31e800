//! The listener, the acceptor thread, the fixed pool of workers and the accounting of
//! SPEC §6's `CONCURRENCY_PEAK`. This file reads no HTTP bytes.
//!
//! The acceptor hands each connection to a free worker through a `Handoff`. When no
//! worker is free, it reclaims the worker that has waited longest on a connection that
//! holds no request — idle between two requests, or new and silent so far (shutting
//! that socket down wakes the worker's blocking read); only when
//! every worker is busy with a request, or the held requests reach the peak, does the
//! acceptor answer 429 itself and pass the socket to the lingering closer, so that the
//! client reads the whole response rather than a reset.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use socket2::{Domain, Protocol, Socket, Type};

use crate::attempt::{AfterReply, ReplyBody};
use crate::error::{LogCode, Reply};
use crate::proxy::Proxy;
use crate::slots::{Accepted, Pool, ServeConnection, WorkerState};

/// Worker threads run blocking code with shallow stacks; 256 KiB of address space each
/// (touched pages only are resident) keeps 2048 workers cheap while leaving room for
/// OpenSSL's handshake.
pub const WORKER_STACK_BYTES: usize = 256 * 1024;
/// How often a stop checks whether in-flight requests are done.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Pending connections the kernel queues before `accept`.
const LISTEN_BACKLOG: i32 = 1024;
/// Connections on their way from the acceptor to the workers.
///
/// The worker that went idle last gets the next connection (a stack, not a queue), so
/// the workers in use are as few as the load needs and their stacks and buffers stay
/// warm in cache; the others are never touched and cost no memory. Each worker sleeps
/// on its own condition variable, so a hand-off wakes exactly the worker chosen. (A
/// crossbeam channel, used before, spun and yielded before sleeping — about six
/// `sched_yield`s per connection with thousands of workers — and woke workers in turn,
/// so that under `Connection: close` load every one of them ended up with buffers.)
struct Handoff {
    state: Mutex<HandoffState>,
    wake: Vec<Condvar>,
}

struct HandoffState {
    /// Workers waiting, the one that went idle last on top.
    idle: Vec<usize>,
    /// `waiting[i]`: worker `i` is in `idle`.
    waiting: Vec<bool>,
    /// `inbox[i]`: the connection handed to worker `i`.
    inbox: Vec<Option<Accepted>>,
    /// Connections accepted while no worker was waiting yet (a reserved worker is
    /// finishing its connection): the next worker to look takes them, oldest first.
    backlog: VecDeque<Accepted>,
    closed: bool,
}

impl Handoff {
    fn new(workers: usize) -> Self {
        Handoff {
            state: Mutex::new(HandoffState {
                idle: Vec::with_capacity(workers),
                waiting: vec![false; workers],
                inbox: (0..workers).map(|_| None).collect(),
                backlog: VecDeque::new(),
                closed: false,
            }),
            wake: (0..workers).map(|_| Condvar::new()).collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HandoffState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `accepted` to the worker that went idle last (the acceptor reserved a
    /// worker for it; if none is waiting yet, the first to finish takes it).
    fn send(&self, accepted: Accepted) {
        let mut state = self.lock();
        match state.idle.pop() {
            Some(id) => {
                state.waiting[id] = false;
                state.inbox[id] = Some(accepted);
                drop(state);
                self.wake[id].notify_one();
            }
            None => state.backlog.push_back(accepted),
        }
    }

    /// Worker `id`'s next connection; `None` once the acceptor has stopped.
    fn recv(&self, id: usize) -> Option<Accepted> {
        let mut state = self.lock();
        loop {
            if let Some(accepted) = state.inbox[id].take() {
                return Some(accepted);
            }
            if let Some(accepted) = state.backlog.pop_front() {
                return Some(accepted);
            }
            if state.closed {
                return None;
            }
            if !state.waiting[id] {
                state.waiting[id] = true;
                state.idle.push(id);
            }
            state = self.wake[id].wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Lets every worker finish: `recv` returns `None` once nothing is left for it.
    fn close(&self) {
        self.lock().closed = true;
        for wake in &self.wake {
            wake.notify_one();
        }
    }
}

/// Binds the listener (SO_REUSEADDR, so a restart does not wait out TIME_WAIT).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Starts one worker per `CONCURRENCY_PEAK` slot — each makes its connection server
/// with `new_worker`, on its own thread — then accepts connections on this thread until
/// a stop (or the listener fails), and drains. The other threads (signals, replay,
/// health checks, admin) are `main`'s to start.
pub fn run<W: ServeConnection>(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    pool: Arc<Pool>,
    new_worker: impl Fn() -> W + Send + Sync + 'static,
) -> Result<(), RunError> {
    let handoff = Arc::new(Handoff::new(pool.slots.len()));
    spawn_workers(&pool, Arc::new(new_worker), &handoff)?;
    let tls_rejects = start_tls_rejecter(&proxy).map_err(|source| RunError::Thread {
        name: "tls-reject",
        source,
    })?;
    announce(&listener, &proxy).map_err(RunError::Listener)?;
    let accepted = accept_loop(&listener, &pool, &proxy, &handoff, tls_rejects.as_ref());
    handoff.close();
    accepted.map_err(RunError::Listener)?;
    drain(&pool, &proxy);
    Ok(())
}

/// The readiness line (tests and init scripts wait for it): everything is running.
fn announce(listener: &TcpListener, proxy: &Proxy) -> io::Result<()> {
    let bound = listener.local_addr()?;
    let settings = proxy.settings();
    let endpoints: Vec<&str> = settings
        .upstreams
        .list
        .iter()
        .map(|u| u.label.as_str())
        .collect();
    log::info!(
        "listening on {bound} ({}, serviceq {}, {} workers, endpoints {})",
        proxy.forwarded_proto,
        env!("CARGO_PKG_VERSION"),
        proxy.peak(),
        endpoints.join(",")
    );
    Ok(())
}

/// The graceful part of a stop: idle connections are closed, requests being served
/// get SHUTDOWN_GRACE to finish, and what the in-memory queue still holds is reported.
fn drain(pool: &Pool, proxy: &Proxy) {
    let deadline = Instant::now() + proxy.settings().cfg.shutdown_grace;
    loop {
        pool.close_idle_connections();
        // Requests in a local queue hold slots; a shared queue's do not (and its depth
        // counts every instance's).
        let local = if proxy.queue.holds_slots() {
            proxy.queue.depth()
        } else {
            0
        };
        let active = pool.held().saturating_sub(local);
        if active == 0 {
            break;
        }
        if Instant::now() >= deadline {
            log::warn!("{active} requests still in flight after the grace period; closing them");
            break;
        }
        thread::sleep(DRAIN_POLL);
    }
    let queued = proxy.queue.depth();
    proxy.queue.sync();
    if queued > 0 && !proxy.queue.holds_slots() {
        log::info!("{queued} requests wait in the shared queue for any instance to deliver");
    } else if queued > 0 && proxy.queue.is_durable() {
        log::info!("{queued} queued requests stay in the journal for the next start");
    } else if queued > 0 {
        log::warn!("{queued} queued requests dropped: the queue is held in memory only");
    }
    if let Some(access) = &proxy.access_log {
        access.flush();
    }
    log::info!("stopped");
}

fn spawn_workers<W: ServeConnection>(
    pool: &Arc<Pool>,
    new_worker: Arc<impl Fn() -> W + Send + Sync + 'static>,
    handoff: &Arc<Handoff>,
) -> Result<(), RunError> {
    let wanted = pool.slots.len();
    for id in 0..wanted {
        let (pool, handoff) = (Arc::clone(pool), Arc::clone(handoff));
        let new_worker = Arc::clone(&new_worker);
        thread::Builder::new()
            .name(format!("worker-{id}"))
            .stack_size(WORKER_STACK_BYTES)
            // The worker's buffers are made on its own thread, where they are used.
            .spawn(move || worker_loop(id, &pool, new_worker(), &handoff))
            .map_err(|source| RunError::Workers {
                wanted,
                started: id,
                source,
            })?;
    }
    Ok(())
}

/// Why the proxy could not start, or stopped with an error. `main` alone turns these
/// into text and an exit status.
#[derive(Debug)]
pub enum RunError {
    /// The host would not start CONCURRENCY_PEAK worker threads.
    Workers {
        wanted: usize,
        started: usize,
        source: io::Error,
    },
    /// A helper thread (signals, replay, health checks, admin, …) could not start.
    Thread {
        name: &'static str,
        source: io::Error,
    },
    /// The listener failed (its address could not be read, or accepting failed for good).
    Listener(io::Error),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Workers {
                wanted,
                started,
                source,
            } => write!(
                f,
                "cannot start {wanted} worker threads (stopped at {started}: {source}); \
                 lower CONCURRENCY_PEAK or raise the host's thread limits \
                 (ulimit -u, kernel.threads-max, the service's TasksMax)"
            ),
            RunError::Thread { name, source } => {
                write!(f, "cannot start the {name} thread: {source}")
            }
            RunError::Listener(source) => write!(f, "listener failed: {source}"),
        }
    }
}

fn worker_loop(id: usize, pool: &Pool, mut worker: impl ServeConnection, handoff: &Handoff) {
    let slot = &pool.slots[id];
    while let Some(accepted) = handoff.recv(id) {
        slot.state.store(WorkerState::Busy);
        slot.attach(accepted.stream.try_clone().ok());
        worker.serve(accepted, slot, pool);
        pool.finish(slot);
    }
}

fn accept_loop(
    listener: &TcpListener,
    pool: &Pool,
    proxy: &Proxy,
    handoff: &Handoff,
    tls_rejects: Option<&Sender<TcpStream>>,
) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(_) | Err(_) if proxy.stopping() => return Ok(()),
            Ok(conn) => conn,
            Err(e) if is_transient_accept_error(&e) => {
                log::warn!("accept failed: {e}");
                // Out of file descriptors and the like: back off instead of spinning.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(e),
        };
        let _ = stream.set_nodelay(true);
        let has_worker =
            pool.held() < pool.peak() && (pool.reserve_free_worker() || pool.reclaim_idle_worker());
        if has_worker {
            handoff.send(Accepted { stream, peer });
        } else {
            reject_flooded(stream, proxy, tls_rejects);
        }
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    !matches!(e.kind(), io::ErrorKind::InvalidInput)
}

/// SPEC §6: the 429 comes from the accepting thread. The response is far smaller than
/// a fresh socket's send buffer, so a non-blocking write completes; the lingering
/// closer then drains what the client sent, so closing does not turn into a reset.
fn reject_flooded(mut stream: TcpStream, proxy: &Proxy, tls_rejects: Option<&Sender<TcpStream>>) {
    proxy.errlog.record(&proxy.listener_label, LogCode::Flooded);
    if let Some(rejects) = tls_rejects {
        // A TLS client needs a handshake first: that is the rejecter's job, so the
        // acceptor never waits on a client. If it is swamped, the client is closed.
        let _ = rejects.try_send(stream);
        return;
    }
    let reply = proxy
        .settings()
        .render_reply(Reply::Flooded, AfterReply::Close, ReplyBody::Send);
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(&reply);
    let _ = stream.shutdown(Shutdown::Write);
    proxy.linger.close(stream);
}

/// Connections waiting for the TLS rejecter; beyond this they are closed unanswered.
const TLS_REJECT_BACKLOG: usize = 64;
/// The longest a flooded TLS client's handshake may take.
const TLS_REJECT_HANDSHAKE: Duration = Duration::from_secs(2);

/// On a TLS listener, the thread that completes the handshake of a flooded client and
/// writes its 429 (SPEC §6: the client reads a complete response).
fn start_tls_rejecter(proxy: &Arc<Proxy>) -> io::Result<Option<Sender<TcpStream>>> {
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
                        Reply::Flooded,
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
    use super::{Accepted, Handoff};

    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A real connected socket to hand over, tagged by its local port.
    fn accepted(listener: &TcpListener) -> (Accepted, u16) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let port = client.local_addr().unwrap().port();
        let (stream, peer) = listener.accept().unwrap();
        std::mem::forget(client); // keep the connection open for the test's length
        (Accepted { stream, peer }, port)
    }

    /// Waits (bounded) until `n` workers sleep in the handoff.
    fn until_idle(h: &Handoff, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.lock().idle.len() != n {
            assert!(Instant::now() < deadline, "workers did not go idle");
            std::thread::yield_now();
        }
    }

    /// The worker that went idle last is woken first; a connection accepted while none
    /// waits goes to the next worker that looks; close ends every worker.
    #[test]
    fn last_idle_worker_first_then_backlog_then_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let h = Arc::new(Handoff::new(3));
        let (got_tx, got_rx) = std::sync::mpsc::channel();
        let spawn = |id: usize| {
            let (h, got_tx) = (Arc::clone(&h), got_tx.clone());
            std::thread::spawn(move || {
                while let Some(a) = h.recv(id) {
                    got_tx.send((id, a.peer.port())).unwrap();
                }
                got_tx.send((id, 0)).unwrap();
            })
        };
        let w0 = spawn(0);
        until_idle(&h, 1);
        let w1 = spawn(1);
        until_idle(&h, 2);
        let (a, port) = accepted(&listener);
        h.send(a);
        assert_eq!(got_rx.recv().unwrap(), (1, port), "last idle first");
        until_idle(&h, 2); // worker 1 is back on top
        let (a, port) = accepted(&listener);
        h.send(a);
        assert_eq!(got_rx.recv().unwrap(), (1, port));
        until_idle(&h, 2);
        // No worker waiting: the connection waits for the next one that looks.
        h.lock().idle.clear();
        h.lock().waiting.iter_mut().for_each(|w| *w = false);
        let (a, port) = accepted(&listener);
        h.send(a);
        assert_eq!(h.lock().backlog.len(), 1);
        let w2 = spawn(2);
        assert_eq!(got_rx.recv().unwrap(), (2, port), "backlog taken");
        h.close();
        for w in [w0, w1, w2] {
            w.join().unwrap();
        }
        let mut ended: Vec<usize> = got_rx
            .try_iter()
            .filter(|g| g.1 == 0)
            .map(|g| g.0)
            .collect();
        ended.sort_unstable();
        assert_eq!(ended, [0, 1, 2]);
    }
}
