//! The listener, the fixed pool of workers, the acceptor thread, and how a connection
//! reaches a worker. These files read no HTTP bytes.
//!
//! Free workers accept connections from the listener themselves, a few at a time
//! (`handoff.rs` says which), so a new client costs no thread between the kernel and
//! the worker that serves it. When no worker is free, the acceptor thread takes over
//! (`accept.rs`): it reclaims the worker that has waited longest on a connection that
//! holds no request — idle between two requests, or new and silent so far (shutting
//! that socket down wakes the worker's blocking read); only when every worker is busy
//! with a request, or the held requests reach the peak, is the client answered 429 by
//! the thread that accepted it, the socket then passed to the lingering closer so that
//! the client reads the whole response rather than a reset.

mod accept;
mod handoff;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::proxy::Proxy;
use crate::slots::{Pool, ServeConnection, WorkerState};
use accept::Acceptance;
use handoff::{Handoff, Turn, ACCEPT_SEATS};

/// Worker threads run blocking code with shallow stacks; 256 KiB of address space each
/// (touched pages only are resident) keeps 2048 workers cheap while leaving room for
/// OpenSSL's handshake.
pub const WORKER_STACK_BYTES: usize = 256 * 1024;
/// How often a stop checks whether in-flight requests are done.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Pending connections the kernel queues before `accept`.
const LISTEN_BACKLOG: i32 = 1024;
/// TCP_DEFER_ACCEPT: how long (seconds) the kernel keeps a new connection whose client
/// has sent nothing before handing it over anyway (Linux rounds it to one SYN-ACK
/// retransmission).
const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// Binds an HTTP listener: SO_REUSEADDR, so a restart does not wait out TIME_WAIT;
/// TCP_NODELAY, which accepted connections inherit (one system call less for each);
/// and TCP_DEFER_ACCEPT, since an HTTP client speaks first: `accept` returns once the
/// request's first bytes are there, so accepting and reading it take one wake-up, not
/// two, and a client that stays silent does not hold a worker for its first second.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nodelay(true)?;
    crate::stream::set_defer_accept(&socket, DEFER_ACCEPT_SECS)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Starts one worker per `CONCURRENCY_PEAK` slot — each makes its connection server
/// with `new_worker`, on its own thread — and runs the acceptor on this thread until a
/// stop (or the listener fails), then drains. The other threads (signals, replay,
/// health checks, admin) are `main`'s to start.
pub fn run<W: ServeConnection>(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    pool: Arc<Pool>,
    new_worker: impl Fn() -> W + Send + Sync + 'static,
) -> Result<(), RunError> {
    let tls_rejects = accept::start_tls_rejecter(&proxy).map_err(|source| RunError::Thread {
        name: "tls-reject",
        source,
    })?;
    let acceptance = Arc::new(Acceptance {
        handoff: Handoff::new(pool.slots.len(), ACCEPT_SEATS),
        listener,
        pool: Arc::clone(&pool),
        proxy: Arc::clone(&proxy),
        tls_rejects,
        last_accept_warning: std::sync::atomic::AtomicU64::new(0),
    });
    spawn_workers(&acceptance, Arc::new(new_worker))?;
    announce(&acceptance.listener, &proxy).map_err(RunError::Listener)?;
    let accepted = acceptance.acceptor_loop();
    acceptance.handoff.close();
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
    acceptance: &Arc<Acceptance>,
    new_worker: Arc<impl Fn() -> W + Send + Sync + 'static>,
) -> Result<(), RunError> {
    let wanted = acceptance.pool.slots.len();
    for id in 0..wanted {
        let acceptance = Arc::clone(acceptance);
        let new_worker = Arc::clone(&new_worker);
        thread::Builder::new()
            .name(format!("worker-{id}"))
            .stack_size(WORKER_STACK_BYTES)
            // The worker's buffers are made on its own thread, where they are used.
            .spawn(move || worker_loop(id, &acceptance, new_worker()))
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

/// One worker: connections handed to it, or taken from the listener in a seat, each
/// served to its end.
fn worker_loop(id: usize, acceptance: &Acceptance, mut worker: impl ServeConnection) {
    let pool = &acceptance.pool;
    let slot = &pool.slots[id];
    loop {
        let accepted = match acceptance.handoff.recv(id) {
            Turn::Serve(accepted) => accepted,
            Turn::Accept => match acceptance.accept_seated() {
                Some(accepted) => accepted,
                None => continue,
            },
            Turn::Stop => return,
        };
        slot.state.store(WorkerState::Busy);
        slot.attach(accepted.stream.try_clone().ok());
        worker.serve(accepted, slot, pool);
        pool.finish(slot);
    }
}
