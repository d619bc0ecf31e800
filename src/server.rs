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
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use socket2::{Domain, Protocol, Socket, Type};

use crate::conn::Worker;
use crate::error::{LogCode, Reply};
use crate::linger::Lingerer;
use crate::proxy::Proxy;
use crate::queue::Replay;

/// Worker threads run blocking code with shallow stacks; 256 KiB of address space each
/// (touched pages only are resident) keeps 2048 workers cheap while leaving room for
/// OpenSSL's handshake.
pub const WORKER_STACK_BYTES: usize = 256 * 1024;
/// How often a stop checks whether in-flight requests are done.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Pending connections the kernel queues before `accept`.
const LISTEN_BACKLOG: i32 = 1024;
/// How long a new connection may stay silent before its worker can be reclaimed. A
/// client writes its request as soon as it is connected, so its first bytes reach us
/// within microseconds of the accept (a round trip at most); a connection silent this
/// long is a slow or idle client, and reclaiming it earlier would race clients that
/// simply have not written yet.
pub const FIRST_BYTE_GRACE_MS: u64 = 250;

/// What a worker is doing, as the acceptor sees it.
pub mod state {
    pub const FREE: u8 = 0;
    /// Reading or serving a request: not reclaimable.
    pub const BUSY: u8 = 1;
    /// Waiting between two requests on a keep-alive connection: reclaimable.
    pub const IDLE: u8 = 2;
    /// The acceptor closed this worker's idle connection and counts it as reserved.
    pub const RECLAIMED: u8 = 3;
    /// Waiting for the first byte of a new connection's first request: reclaimable
    /// once a peek shows that nothing has arrived.
    pub const FIRST: u8 = 4;
    /// The acceptor is peeking at a `FIRST` connection; the worker waits for its verdict.
    pub const CHECKING: u8 = 5;
}

/// The acceptor's view of one worker.
pub struct WorkerSlot {
    pub state: AtomicU8,
    /// Milliseconds since start when the worker went idle (to reclaim the oldest).
    idle_since: AtomicU64,
    /// A handle on the worker's client socket, to shut it down on reclaim.
    socket: Mutex<Option<TcpStream>>,
}

impl WorkerSlot {
    fn new() -> Self {
        WorkerSlot {
            state: AtomicU8::new(state::FREE),
            idle_since: AtomicU64::new(0),
            socket: Mutex::new(None),
        }
    }

    /// Called by the worker when it waits for a further request (`state::IDLE`) or,
    /// on a plain connection, for the first one (`state::FIRST`). Returns false if the
    /// connection was reclaimed meanwhile.
    pub fn go_idle(&self, now_ms: u64, waiting: u8) -> bool {
        self.idle_since.store(now_ms, Ordering::Relaxed);
        self.state
            .compare_exchange(state::BUSY, waiting, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Called by the worker when bytes of a request arrive. Returns false if the
    /// acceptor reclaimed the connection first; the worker must then close it. While
    /// the acceptor peeks at a new connection (`CHECKING`, a few microseconds with no
    /// blocking call), the worker waits for the verdict: the peek sees the bytes that
    /// woke the worker, so the acceptor gives the connection back.
    pub fn go_busy(&self) -> bool {
        loop {
            match self.state.load(Ordering::Acquire) {
                current @ (state::IDLE | state::FIRST) => {
                    let swapped = self.state.compare_exchange(
                        current,
                        state::BUSY,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    if swapped.is_ok() {
                        return true;
                    }
                }
                state::CHECKING => thread::yield_now(),
                _ => return false,
            }
        }
    }

    /// Whether the client of a `FIRST` connection has sent nothing, by a peek that does
    /// not block: bytes (or an error) mean a request is on its way.
    fn is_silent(&self) -> bool {
        match &*self.socket.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(sock) => is_silent_peek(crate::stream::peek_nonblocking(sock)),
            None => false,
        }
    }

    /// Shuts the worker's client socket down, which wakes its blocking read.
    fn shutdown_socket(&self) {
        if let Some(sock) = &*self.socket.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = sock.shutdown(Shutdown::Both);
        }
    }

    /// Takes this waiting connection for the acceptor. A keep-alive wait is taken as it
    /// is (a request crossing the close is the usual keep-alive race). A new connection
    /// is held in `CHECKING` while its socket is peeked: if bytes are there, it goes
    /// back to `FIRST` and its worker, woken by them, proceeds.
    fn claim(&self) -> Claim {
        let cas = |from, to| {
            self.state
                .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        };
        if cas(state::IDLE, state::RECLAIMED) {
            return Claim::Taken;
        }
        if !cas(state::FIRST, state::CHECKING) {
            return Claim::Lost;
        }
        if self.is_silent() {
            self.state.store(state::RECLAIMED, Ordering::Release);
            Claim::Taken
        } else {
            self.state.store(state::FIRST, Ordering::Release);
            Claim::HasBytes
        }
    }

    fn attach(&self, socket: Option<TcpStream>) {
        *self.socket.lock().unwrap_or_else(|p| p.into_inner()) = socket;
    }
}

/// What the acceptor got when it tried to take a waiting worker's connection.
enum Claim {
    Taken,
    /// A new connection whose client has sent bytes: its request is on its way.
    HasBytes,
    /// The worker moved on first (its request arrived, or the connection ended).
    Lost,
}

/// Whether a worker in `state`, waiting since `since_ms`, may lose its connection to a
/// new client at `now_ms`: between two requests at once, on a new connection after
/// `FIRST_BYTE_GRACE_MS` of silence.
fn is_reclaimable(state: u8, since_ms: u64, now_ms: u64) -> bool {
    match state {
        state::IDLE => true,
        state::FIRST => now_ms.saturating_sub(since_ms) >= FIRST_BYTE_GRACE_MS,
        _ => false,
    }
}

/// A non-blocking peek's verdict on a new connection: reclaimable when nothing has
/// arrived (`WouldBlock`) or the client has closed (`Ok(0)`: nothing to lose). Bytes,
/// or an error that says nothing, keep it.
fn is_silent_peek(peek: io::Result<usize>) -> bool {
    match peek {
        Ok(n) => n == 0,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// The shared accounting of workers and held requests.
pub struct Pool {
    pub slots: Vec<WorkerSlot>,
    free: AtomicUsize,
    held: AtomicUsize,
    peak: usize,
    started: Instant,
}

impl Pool {
    fn new(peak: usize) -> Self {
        Pool {
            slots: (0..peak).map(|_| WorkerSlot::new()).collect(),
            free: AtomicUsize::new(peak),
            held: AtomicUsize::new(0),
            peak,
            started: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Takes one of the `CONCURRENCY_PEAK` request slots; false when all are held.
    pub fn try_hold(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h < self.peak).then_some(h + 1)
            })
            .is_ok()
    }

    /// Requests queued without a client's slot (retried dead letters) hold one each
    /// until delivered, like requests recovered at start-up (may pass the peak).
    pub fn add_holds(&self, n: usize) {
        self.held.fetch_add(n, Ordering::AcqRel);
    }

    pub fn release_hold(&self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub fn busy_workers(&self) -> usize {
        self.peak - self.free.load(Ordering::Acquire)
    }

    fn reserve_free_worker(&self) -> bool {
        self.free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| f.checked_sub(1))
            .is_ok()
    }

    /// Closes the connection of the worker that has waited the longest without a
    /// request and reserves that worker. A new connection is only taken when a peek,
    /// made after claiming it, shows that its client has sent nothing: a request that
    /// arrived before that instant is never dropped (see `claim`).
    fn reclaim_idle_worker(&self) -> bool {
        // Slots found to hold bytes after all, skipped for the rest of this search.
        let mut skipped: Vec<usize> = Vec::new();
        loop {
            let now = self.now_ms();
            let oldest = self
                .slots
                .iter()
                .enumerate()
                .filter(|(i, s)| {
                    let since = s.idle_since.load(Ordering::Relaxed);
                    is_reclaimable(s.state.load(Ordering::Acquire), since, now)
                        && !skipped.contains(i)
                })
                .min_by_key(|(_, s)| s.idle_since.load(Ordering::Relaxed));
            let Some((i, slot)) = oldest else {
                return false;
            };
            match slot.claim() {
                Claim::Taken => {
                    slot.shutdown_socket();
                    return true;
                }
                Claim::HasBytes => skipped.push(i),
                Claim::Lost => {}
            }
        }
    }

    /// Shuts down every connection waiting between requests (used when stopping).
    fn close_idle_connections(&self) {
        for slot in &self.slots {
            if slot.state.load(Ordering::Acquire) == state::IDLE {
                slot.shutdown_socket();
            }
        }
    }

    /// A worker finished a connection: it is free again, unless the acceptor already
    /// counted it as reserved when reclaiming it.
    fn finish(&self, slot: &WorkerSlot) {
        slot.attach(None);
        if slot.state.swap(state::FREE, Ordering::AcqRel) != state::RECLAIMED {
            self.free.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// A client connection on its way to a worker.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
}

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

/// Starts the workers, the replay thread and the admin listener, then accepts
/// connections on this thread until a stop (or the listener fails).
pub fn run(
    listener: TcpListener,
    admin: Option<TcpListener>,
    proxy: Arc<Proxy>,
    replay: Replay,
) -> Result<(), RunError> {
    // Signals first: a signal that arrives before its handler is set would take its
    // default action (SIGHUP and SIGUSR1 terminate).
    crate::signals::spawn(Arc::clone(&proxy), listener.try_clone()?)?;
    let pool = Arc::new(Pool::new(proxy.peak()));
    // Requests recovered from the journal hold their slots like any queued request.
    pool.held.fetch_add(proxy.queue.depth(), Ordering::AcqRel);
    replay.start(Arc::clone(&proxy), Arc::clone(&pool))?;
    crate::health::start(Arc::clone(&proxy))?;
    if let Some(admin) = admin {
        crate::admin::start(admin, Arc::clone(&proxy), Arc::clone(&pool))?;
    }
    let handoff = Arc::new(Handoff::new(pool.slots.len()));
    spawn_workers(&pool, &proxy, &handoff)?;
    let tls_rejects = start_tls_rejecter(&proxy)?;
    announce(&listener, &proxy)?;
    let accepted = accept_loop(&listener, &pool, &proxy, &handoff, tls_rejects.as_ref());
    handoff.close();
    accepted?;
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
        let active = pool.held().saturating_sub(proxy.queue.depth());
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
    if queued > 0 && proxy.queue.is_durable() {
        log::info!("{queued} queued requests stay in the journal for the next start");
    } else if queued > 0 {
        log::warn!("{queued} queued requests dropped: the queue is held in memory only");
    }
    if let Some(access) = &proxy.access_log {
        access.flush();
    }
    log::info!("stopped");
}

fn spawn_workers(
    pool: &Arc<Pool>,
    proxy: &Arc<Proxy>,
    handoff: &Arc<Handoff>,
) -> Result<(), RunError> {
    let wanted = pool.slots.len();
    for id in 0..wanted {
        let (pool, proxy, handoff) = (Arc::clone(pool), Arc::clone(proxy), Arc::clone(handoff));
        thread::Builder::new()
            .name(format!("worker-{id}"))
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || worker_loop(id, &pool, &proxy, &handoff))
            .map_err(|source| RunError::Workers {
                wanted,
                started: id,
                source,
            })?;
    }
    Ok(())
}

/// Why `run` stopped with an error.
#[derive(Debug)]
pub enum RunError {
    /// The host would not start CONCURRENCY_PEAK worker threads.
    Workers {
        wanted: usize,
        started: usize,
        source: io::Error,
    },
    /// Starting a helper thread, or the listener, failed.
    Io(io::Error),
}

impl From<io::Error> for RunError {
    fn from(e: io::Error) -> Self {
        RunError::Io(e)
    }
}

fn worker_loop(id: usize, pool: &Pool, proxy: &Arc<Proxy>, handoff: &Handoff) {
    let slot = &pool.slots[id];
    let mut worker = Worker::new(Arc::clone(proxy));
    while let Some(accepted) = handoff.recv(id) {
        slot.state.store(state::BUSY, Ordering::Release);
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
            pool.held() < pool.peak && (pool.reserve_free_worker() || pool.reclaim_idle_worker());
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
    let reply = proxy.settings().render_reply(Reply::Flooded, true, false);
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
                    let reply = proxy.settings().render_reply(Reply::Flooded, true, false);
                    let _ = tls.write_all(&reply);
                    let _ = tls.shutdown();
                }
            }
        })?;
    Ok(Some(tx))
}

/// Handed to `Lingerer` by workers too.
pub fn linger_after_reply(linger: &Lingerer, stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    linger.close(stream);
}

#[cfg(test)]
mod tests {
    use super::{is_reclaimable, is_silent_peek, state, Accepted, Handoff, FIRST_BYTE_GRACE_MS};
    use std::io;

    #[test]
    fn waits_without_a_request_are_reclaimable_new_ones_after_the_grace() {
        let g = FIRST_BYTE_GRACE_MS;
        let cases = [
            (state::IDLE, 100, 100, true),
            (state::FIRST, 100, 100, false),
            (state::FIRST, 100, 100 + g - 1, false),
            (state::FIRST, 100, 100 + g, true),
            (state::BUSY, 0, 10 * g, false),
            (state::CHECKING, 0, 10 * g, false),
            (state::RECLAIMED, 0, 10 * g, false),
            (state::FREE, 0, 10 * g, false),
        ];
        for (st, since, now, want) in cases {
            assert_eq!(is_reclaimable(st, since, now), want, "{st} {since} {now}");
        }
    }

    #[test]
    fn only_silence_or_a_close_makes_a_new_connection_reclaimable() {
        let cases: Vec<(io::Result<usize>, bool)> = vec![
            (Err(io::ErrorKind::WouldBlock.into()), true),
            (Ok(0), true),
            (Ok(1), false),
            (Err(io::ErrorKind::ConnectionReset.into()), false),
            (Err(io::ErrorKind::Interrupted.into()), false),
        ];
        for (peek, want) in cases {
            let shown = format!("{peek:?}");
            assert_eq!(is_silent_peek(peek), want, "{shown}");
        }
    }
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
