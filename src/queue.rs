//! The deferred and upfront queue (SPEC §5): requests that may be replayed wait here,
//! in arrival order, while the cluster is down, and one replay thread delivers them in
//! strict FIFO order — the head is retried until an endpoint answers (any status), and
//! only then does the next one go.
//!
//! A queued request keeps the `CONCURRENCY_PEAK` slot its client took until it is
//! delivered, so the queue is bounded by the peak.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::buffer::IoBuf;
use crate::error::AttemptError;
use crate::forward::ClientFraming;
use crate::proxy::{Proxy, Scratch};
use crate::relay::{relay_body, RelayEnd, Sink, RELAY_READ_BYTES};
use crate::server::Pool;
use crate::upstream::OutgoingRequest;

/// First pause after a replay try found every endpoint down (SPEC §5) …
pub const REPLAY_PAUSE_MIN: Duration = Duration::from_millis(500);
/// … doubling up to this.
pub const REPLAY_PAUSE_MAX: Duration = Duration::from_secs(5);

/// Everything needed to send a request again: the upstream request exactly as the
/// first attempt would have sent it (request line, headers with `X-Request-Id` and the
/// forwarding headers, body), minus `Host`, which each endpoint gets its own of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRequest {
    pub method: String,
    pub target: String,
    pub request_line: Vec<u8>,
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
    pub request_id: String,
    pub client: IpAddr,
    pub queued_at: Instant,
}

/// The queue could not take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// The producer side, held by the workers.
pub struct Queue {
    tx: Sender<QueuedRequest>,
    depth: Arc<AtomicUsize>,
}

/// The consumer side, handed to the replay thread.
pub struct Replay {
    rx: Receiver<QueuedRequest>,
    depth: Arc<AtomicUsize>,
}

/// A queue for at most `capacity` requests (the peak: each holds a slot).
pub fn channel(capacity: usize) -> (Queue, Replay) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let depth = Arc::new(AtomicUsize::new(0));
    (
        Queue {
            tx,
            depth: Arc::clone(&depth),
        },
        Replay { rx, depth },
    )
}

impl Queue {
    /// Appends a request; fails if the queue is full or the replay thread is gone.
    pub fn push(&self, req: QueuedRequest) -> Result<(), QueueFull> {
        self.depth.fetch_add(1, Ordering::AcqRel);
        self.tx.try_send(req).map_err(|_| {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            QueueFull
        })
    }

    /// Requests waiting, including the one being replayed.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }
}

impl Replay {
    /// Starts the replay thread.
    pub fn start(self, proxy: Arc<Proxy>, pool: Arc<Pool>) -> io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name("replay".into())
            .spawn(move || self.run(&proxy, &pool))
    }

    fn run(self, proxy: &Proxy, pool: &Pool) {
        let mut buf = IoBuf::with_capacity(RELAY_READ_BYTES);
        let mut scratch = Scratch::new();
        while let Ok(req) = self.rx.recv() {
            let mut pause = REPLAY_PAUSE_MIN;
            loop {
                match deliver(proxy, &req, &mut buf, &mut scratch) {
                    Ok((status, endpoint)) => {
                        crate::metrics::inc(&crate::metrics::METRICS.replayed_total);
                        log::info!(
                            "replayed {} {} (X-Request-Id {}): {status} from {endpoint} after {:.1?} queued; {} left",
                            req.method,
                            req.target,
                            req.request_id,
                            req.queued_at.elapsed(),
                            self.depth.load(Ordering::Acquire).saturating_sub(1)
                        );
                        break;
                    }
                    Err(e) => {
                        log::warn!(
                            "replay of {} {} failed ({e}); next try in {pause:?}",
                            req.method,
                            req.target
                        );
                        thread::sleep(pause);
                        pause = (pause * 2).min(REPLAY_PAUSE_MAX);
                    }
                }
            }
            self.depth.fetch_sub(1, Ordering::AcqRel);
            pool.release_hold();
        }
    }
}

/// One SPEC §4 sequence for a queued request. The response body is read to the end and
/// discarded (nobody waits for it), so the connection can be reused.
fn deliver(
    proxy: &Proxy,
    req: &QueuedRequest,
    buf: &mut IoBuf,
    scratch: &mut Scratch,
) -> Result<(u16, String), AttemptError> {
    let out = OutgoingRequest {
        method: &req.method,
        request_line: &req.request_line,
        headers: &req.headers,
        body: &req.body,
    };
    let settings = proxy.settings();
    let (idx, mut exchange) = settings.try_endpoints(&proxy.errlog, &out, buf, scratch)?;
    let endpoint = settings.upstreams.list[idx].label.clone();
    let mut discard = io::sink();
    let mut gathered = Vec::new();
    let mut sink = Sink {
        client: &mut discard,
        out: &mut gathered,
        framing: ClientFraming::AsIs,
        body_bytes: 0,
    };
    let head = &exchange.head;
    let end = relay_body(
        &mut exchange.conn,
        buf,
        head.framing,
        head.keep_alive,
        &mut sink,
    );
    if end == (RelayEnd::Complete { reusable: true }) {
        settings.upstreams.release(idx, exchange.conn);
    }
    Ok((exchange.head.status, endpoint))
}
