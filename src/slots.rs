//! The accounting that the acceptor, the workers, the replay thread and the admin
//! listener share: one [`WorkerSlot`] per worker (what it is doing, as the acceptor
//! sees it) and the [`Pool`] of SPEC §6's `CONCURRENCY_PEAK` request slots. A leaf: it
//! knows sockets and atomics, nothing of HTTP or of who serves a connection.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::Instant;

/// How long a new connection may stay silent before its worker can be reclaimed. A
/// client writes its request as soon as it is connected, so its first bytes reach us
/// within microseconds of the accept (a round trip at most); a connection silent this
/// long is a slow or idle client, and reclaiming it earlier would race clients that
/// simply have not written yet.
pub const FIRST_BYTE_GRACE_MS: u64 = 250;

/// What a worker is doing, as the acceptor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerState {
    Free = 0,
    /// Reading or serving a request: not reclaimable.
    Busy = 1,
    /// Waiting between two requests on a keep-alive connection: reclaimable.
    Idle = 2,
    /// The acceptor closed this worker's idle connection and counts it as reserved.
    Reclaimed = 3,
    /// Waiting for the first byte of a new connection's first request: reclaimable
    /// once a peek shows that nothing has arrived.
    First = 4,
    /// The acceptor is peeking at a `First` connection; the worker waits for its verdict.
    Checking = 5,
}

impl WorkerState {
    const ALL: [WorkerState; 6] = [
        WorkerState::Free,
        WorkerState::Busy,
        WorkerState::Idle,
        WorkerState::Reclaimed,
        WorkerState::First,
        WorkerState::Checking,
    ];

    /// The state stored as `v`; only `AtomicState` stores, and it stores states.
    fn from_u8(v: u8) -> WorkerState {
        WorkerState::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(WorkerState::Free)
    }
}

/// A [`WorkerState`] shared between a worker and the acceptor: an `AtomicU8`, with the
/// conversions in this one place.
pub struct AtomicState(AtomicU8);

impl AtomicState {
    const fn new(s: WorkerState) -> Self {
        AtomicState(AtomicU8::new(s as u8))
    }

    pub fn load(&self) -> WorkerState {
        WorkerState::from_u8(self.0.load(Ordering::Acquire))
    }

    pub fn store(&self, s: WorkerState) {
        self.0.store(s as u8, Ordering::Release);
    }

    pub fn swap(&self, s: WorkerState) -> WorkerState {
        WorkerState::from_u8(self.0.swap(s as u8, Ordering::AcqRel))
    }

    /// `from` → `to` if the state is `from`; false if it was something else.
    pub fn move_from(&self, from: WorkerState, to: WorkerState) -> bool {
        self.0
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// The acceptor's view of one worker.
pub struct WorkerSlot {
    pub state: AtomicState,
    /// Milliseconds since start when the worker went idle (to reclaim the oldest).
    idle_since: AtomicU64,
    /// A handle on the worker's client socket, to shut it down on reclaim.
    socket: Mutex<Option<TcpStream>>,
}

impl WorkerSlot {
    pub(crate) fn new() -> Self {
        WorkerSlot {
            state: AtomicState::new(WorkerState::Free),
            idle_since: AtomicU64::new(0),
            socket: Mutex::new(None),
        }
    }

    /// Called by the worker when it waits for a further request (`Idle`) or, on a
    /// plain connection, for the first one (`First`). Returns false if the connection
    /// was reclaimed meanwhile.
    pub fn go_idle(&self, now_ms: u64, waiting: WorkerState) -> bool {
        self.idle_since.store(now_ms, Ordering::Relaxed);
        self.state.move_from(WorkerState::Busy, waiting)
    }

    /// Called by the worker when bytes of a request arrive. Returns false if the
    /// acceptor reclaimed the connection first; the worker must then close it. While
    /// the acceptor peeks at a new connection (`CHECKING`, a few microseconds with no
    /// blocking call), the worker waits for the verdict: the peek sees the bytes that
    /// woke the worker, so the acceptor gives the connection back.
    pub fn go_busy(&self) -> bool {
        loop {
            match self.state.load() {
                current @ (WorkerState::Idle | WorkerState::First) => {
                    if self.state.move_from(current, WorkerState::Busy) {
                        return true;
                    }
                }
                WorkerState::Checking => thread::yield_now(),
                _ => return false,
            }
        }
    }

    /// Whether the client of a `FIRST` connection has sent nothing, by a peek that does
    /// not block: bytes (or an error) mean a request is on its way.
    pub(crate) fn is_silent(&self) -> bool {
        match &*self.socket.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(sock) => is_silent_peek(crate::stream::peek_nonblocking(sock)),
            None => false,
        }
    }

    /// Shuts the worker's client socket down, which wakes its blocking read.
    pub(crate) fn shutdown_socket(&self) {
        if let Some(sock) = &*self.socket.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = sock.shutdown(Shutdown::Both);
        }
    }

    /// Takes this waiting connection for the acceptor. A keep-alive wait is taken as it
    /// is (a request crossing the close is the usual keep-alive race). A new connection
    /// is held in `CHECKING` while its socket is peeked: if bytes are there, it goes
    /// back to `FIRST` and its worker, woken by them, proceeds.
    pub(crate) fn claim(&self) -> Claim {
        if self
            .state
            .move_from(WorkerState::Idle, WorkerState::Reclaimed)
        {
            return Claim::Taken;
        }
        if !self
            .state
            .move_from(WorkerState::First, WorkerState::Checking)
        {
            return Claim::Lost;
        }
        if self.is_silent() {
            self.state.store(WorkerState::Reclaimed);
            Claim::Taken
        } else {
            self.state.store(WorkerState::First);
            Claim::HasBytes
        }
    }

    pub(crate) fn attach(&self, socket: Option<TcpStream>) {
        *self.socket.lock().unwrap_or_else(|p| p.into_inner()) = socket;
    }
}

/// What the acceptor got when it tried to take a waiting worker's connection.
pub(crate) enum Claim {
    Taken,
    /// A new connection whose client has sent bytes: its request is on its way.
    HasBytes,
    /// The worker moved on first (its request arrived, or the connection ended).
    Lost,
}

/// Whether a worker in `state`, waiting since `since_ms`, may lose its connection to a
/// new client at `now_ms`: between two requests at once, on a new connection after
/// `FIRST_BYTE_GRACE_MS` of silence.
pub(crate) fn is_reclaimable(state: WorkerState, since_ms: u64, now_ms: u64) -> bool {
    match state {
        WorkerState::Idle => true,
        WorkerState::First => now_ms.saturating_sub(since_ms) >= FIRST_BYTE_GRACE_MS,
        _ => false,
    }
}

/// A non-blocking peek's verdict on a new connection: reclaimable when nothing has
/// arrived (`WouldBlock`) or the client has closed (`Ok(0)`: nothing to lose). Bytes,
/// or an error that says nothing, keep it.
pub(crate) fn is_silent_peek(peek: io::Result<usize>) -> bool {
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
    pub fn new(peak: usize) -> Self {
        Pool {
            slots: (0..peak).map(|_| WorkerSlot::new()).collect(),
            free: AtomicUsize::new(peak),
            held: AtomicUsize::new(0),
            peak,
            started: Instant::now(),
        }
    }

    /// CONCURRENCY_PEAK: the request slots (and workers).
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Requests recovered from a journal hold their slots like any queued request.
    pub fn hold_queued(&self, n: usize) {
        self.held.fetch_add(n, Ordering::AcqRel);
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

    /// A free worker that accepted a connection itself counts itself busy. (It was
    /// counted free, and nothing reserves workers while any worker accepts, so the
    /// count is at least one; it saturates rather than trust that.)
    pub(crate) fn take_free_worker(&self) {
        let _ = self
            .free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| f.checked_sub(1));
    }

    pub(crate) fn reserve_free_worker(&self) -> bool {
        self.free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| f.checked_sub(1))
            .is_ok()
    }

    /// Closes the connection of the worker that has waited the longest without a
    /// request and reserves that worker. A new connection is only taken when a peek,
    /// made after claiming it, shows that its client has sent nothing: a request that
    /// arrived before that instant is never dropped (see `claim`).
    pub(crate) fn reclaim_idle_worker(&self) -> bool {
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
                    is_reclaimable(s.state.load(), since, now) && !skipped.contains(i)
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
    pub(crate) fn close_idle_connections(&self) {
        for slot in &self.slots {
            if slot.state.load() == WorkerState::Idle {
                slot.shutdown_socket();
            }
        }
    }

    /// A worker finished a connection: it is free again, unless the acceptor already
    /// counted it as reserved when reclaiming it.
    pub(crate) fn finish(&self, slot: &WorkerSlot) {
        slot.attach(None);
        if slot.state.swap(WorkerState::Free) != WorkerState::Reclaimed {
            self.free.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// A client connection on its way to a worker.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
}

/// What serves one accepted connection on a worker thread: `conn::Worker` in the
/// proxy. The acceptor (`server.rs`) is given a maker of these, so it never needs to
/// know what a connection carries.
pub trait ServeConnection: Send + 'static {
    fn serve(&mut self, accepted: Accepted, slot: &WorkerSlot, pool: &Pool);
}

#[cfg(test)]
mod tests {
    use super::{is_reclaimable, is_silent_peek, WorkerState, FIRST_BYTE_GRACE_MS};
    use std::io;

    #[test]
    fn waits_without_a_request_are_reclaimable_new_ones_after_the_grace() {
        let g = FIRST_BYTE_GRACE_MS;
        let cases = [
            (WorkerState::Idle, 100, 100, true),
            (WorkerState::First, 100, 100, false),
            (WorkerState::First, 100, 100 + g - 1, false),
            (WorkerState::First, 100, 100 + g, true),
            (WorkerState::Busy, 0, 10 * g, false),
            (WorkerState::Checking, 0, 10 * g, false),
            (WorkerState::Reclaimed, 0, 10 * g, false),
            (WorkerState::Free, 0, 10 * g, false),
        ];
        for (st, since, now, want) in cases {
            assert_eq!(is_reclaimable(st, since, now), want, "{st:?} {since} {now}");
        }
    }

    /// The stored byte and the state agree both ways, for every state.
    #[test]
    fn every_worker_state_survives_the_atomic() {
        for st in WorkerState::ALL {
            assert_eq!(WorkerState::from_u8(st as u8), st);
            let cell = super::AtomicState::new(WorkerState::Free);
            cell.store(st);
            assert_eq!(cell.load(), st);
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
}
