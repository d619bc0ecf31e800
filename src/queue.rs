//! The deferred and upfront queue (SPEC §5): requests that may be replayed wait here,
//! in arrival order, while the cluster is down, and one replay thread delivers them in
//! strict FIFO order — the head is retried until an endpoint answers (any status), and
//! only then does the next one go.
//!
//! A queued request keeps the `CONCURRENCY_PEAK` slot its client took until it is
//! delivered, so the queue is bounded by the peak.
//!
//! With DEFERRED_Q_DIR set the queue is durable (SPEC §9): a request is appended to the
//! journal (and fsynced, per DEFERRED_Q_FSYNC) before its client hears "Buffered" or
//! "Queued", acknowledged once delivered, and queued again at the next start if it
//! was not. Delivery is at least once.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::SystemTime;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::buffer::IoBuf;
use crate::error::AttemptError;
use crate::forward::ClientFraming;
use crate::journal::{Journal, Recovered};
use crate::metrics::{inc, METRICS};
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
    /// The journal record holding it, when the queue is durable.
    pub seq: Option<u64>,
}

/// Payload layout version, first byte of every journal payload.
const PAYLOAD_V1: u8 = 1;

impl QueuedRequest {
    /// The journal payload: a version byte, then each field length-prefixed
    /// (u32 little-endian): method, target, request line, headers, body, request id,
    /// client address.
    pub fn encode(&self) -> Vec<u8> {
        let client = self.client.to_string();
        let fields: [&[u8]; 7] = [
            self.method.as_bytes(),
            self.target.as_bytes(),
            &self.request_line,
            &self.headers,
            &self.body,
            self.request_id.as_bytes(),
            client.as_bytes(),
        ];
        let mut out = Vec::with_capacity(1 + fields.iter().map(|f| 4 + f.len()).sum::<usize>());
        out.push(PAYLOAD_V1);
        for f in fields {
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    /// Rebuilds a request recovered from the journal; its age counts from when it was
    /// first queued.
    pub fn decode(rec: &Recovered) -> Result<Self, &'static str> {
        let mut rest = rec.payload.as_slice();
        let (&version, tail) = rest.split_first().ok_or("empty payload")?;
        if version != PAYLOAD_V1 {
            return Err("unknown payload version");
        }
        rest = tail;
        let mut field = || -> Result<Vec<u8>, &'static str> {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or("truncated payload")?;
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len {
                return Err("truncated payload");
            }
            let (value, tail) = tail.split_at(len);
            rest = tail;
            Ok(value.to_vec())
        };
        let text = |v: Vec<u8>| String::from_utf8(v).map_err(|_| "field is not UTF-8");
        let method = text(field()?)?;
        let target = text(field()?)?;
        let (request_line, headers, body) = (field()?, field()?, field()?);
        let request_id = text(field()?)?;
        let client = text(field()?)?.parse().map_err(|_| "bad client address")?;
        let waited = SystemTime::now()
            .duration_since(rec.appended_at)
            .unwrap_or_default();
        Ok(QueuedRequest {
            method,
            target,
            request_line,
            headers,
            body,
            request_id,
            client,
            queued_at: Instant::now()
                .checked_sub(waited)
                .unwrap_or_else(Instant::now),
            seq: Some(rec.seq),
        })
    }
}

/// The queue could not take a request (full, replay thread gone, or the journal failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// The producer side, held by the workers.
pub struct Queue {
    tx: Sender<QueuedRequest>,
    depth: Arc<AtomicUsize>,
    journal: Option<Arc<Journal>>,
}

/// The consumer side, handed to the replay thread.
pub struct Replay {
    rx: Receiver<QueuedRequest>,
    depth: Arc<AtomicUsize>,
    journal: Option<Arc<Journal>>,
    max_age: Option<Duration>,
}

/// A queue for `capacity` live requests (the peak: each holds a slot) plus the
/// `recovered` ones, which go in first, in their original order.
pub fn channel(
    capacity: usize,
    journal: Option<Arc<Journal>>,
    recovered: Vec<QueuedRequest>,
    max_age: Option<Duration>,
) -> (Queue, Replay) {
    let (tx, rx) = crossbeam_channel::bounded(capacity + recovered.len());
    let depth = Arc::new(AtomicUsize::new(recovered.len()));
    for req in recovered {
        // Cannot fail: the channel has room for every recovered request.
        let _ = tx.try_send(req);
    }
    let queue = Queue {
        tx,
        depth: Arc::clone(&depth),
        journal: journal.clone(),
    };
    let replay = Replay {
        rx,
        depth,
        journal,
        max_age,
    };
    (queue, replay)
}

impl Queue {
    /// Appends a request — to the journal first when the queue is durable, so it is on
    /// disk before the client is told — then to the replay channel.
    pub fn push(&self, mut req: QueuedRequest) -> Result<(), QueueFull> {
        if let Some(journal) = &self.journal {
            match journal.append(&req.encode()) {
                Ok(seq) => req.seq = Some(seq),
                Err(e) => {
                    log::error!(
                        "{}: cannot journal {} {}: {e}",
                        journal.dir().display(),
                        req.method,
                        req.target
                    );
                    return Err(QueueFull);
                }
            }
        }
        self.depth.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(req) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::AcqRel);
                // Not queued after all: the journal must not replay it either.
                if let (Some(journal), Some(seq)) = (&self.journal, e.into_inner().seq) {
                    let _ = journal.ack(seq);
                }
                Err(QueueFull)
            }
        }
    }

    /// Whether queued requests survive a restart.
    pub fn is_durable(&self) -> bool {
        self.journal.is_some()
    }

    /// Writes out the journal (at shutdown).
    pub fn sync(&self) {
        if let Some(journal) = &self.journal {
            if let Err(e) = journal.sync() {
                log::error!("{}: final sync failed: {e}", journal.dir().display());
            }
        }
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
                if self.expired(&req) {
                    self.dead_letter(&req);
                    break;
                }
                match deliver(proxy, &req, &mut buf, &mut scratch) {
                    Ok((status, endpoint)) => {
                        inc(&METRICS.replayed_total);
                        self.acknowledge(&req);
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
                        if proxy.stopping() {
                            return;
                        }
                        // A health check seeing an endpoint back ends the pause at once.
                        pause = match proxy.replay_wakeup.sleep(pause) {
                            true => REPLAY_PAUSE_MIN,
                            false => (pause * 2).min(REPLAY_PAUSE_MAX),
                        };
                    }
                }
            }
            self.depth.fetch_sub(1, Ordering::AcqRel);
            pool.release_hold();
        }
    }

    fn expired(&self, req: &QueuedRequest) -> bool {
        self.max_age
            .is_some_and(|max| req.queued_at.elapsed() > max)
    }

    fn acknowledge(&self, req: &QueuedRequest) {
        if let (Some(journal), Some(seq)) = (&self.journal, req.seq) {
            if let Err(e) = journal.ack(seq) {
                log::error!(
                    "{}: cannot acknowledge record {seq}: {e}",
                    journal.dir().display()
                );
            }
        }
    }

    /// DEFERRED_Q_MAX_AGE passed: the request leaves the queue for the dead-letter file
    /// (or, in memory, is dropped with a warning).
    fn dead_letter(&self, req: &QueuedRequest) {
        inc(&METRICS.dead_lettered_total);
        let waited = req.queued_at.elapsed();
        match (&self.journal, req.seq) {
            (Some(journal), Some(seq)) => match journal.dead_letter(seq, &req.encode()) {
                Ok(()) => log::warn!(
                    "{} {} (X-Request-Id {}) queued {waited:.1?}: moved to the dead-letter file",
                    req.method, req.target, req.request_id
                ),
                Err(e) => log::error!("{}: cannot dead-letter record {seq}: {e}", journal.dir().display()),
            },
            _ => log::warn!(
                "{} {} (X-Request-Id {}) queued {waited:.1?}: dropped (DEFERRED_Q_MAX_AGE; no DEFERRED_Q_DIR for a dead-letter file)",
                req.method, req.target, req.request_id
            ),
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
        upgrade: false,
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
        settings
            .upstreams
            .release(idx, exchange.conn, &mut scratch.held);
    }
    let status = exchange.head.status;
    scratch.reuse_head(exchange.head);
    Ok((status, endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let req = QueuedRequest {
            method: "POST".into(),
            target: "/orders?x=1".into(),
            request_line: b"POST /orders?x=1 HTTP/1.1\r\n".to_vec(),
            headers: b"X-Request-Id: abc\r\nContent-Length: 3\r\n\r\n".to_vec(),
            body: vec![0, 1, 255],
            request_id: "abc".into(),
            client: "::1".parse().unwrap(),
            queued_at: Instant::now(),
            seq: None,
        };
        let rec = Recovered {
            seq: 7,
            appended_at: SystemTime::now(),
            payload: req.encode(),
        };
        let back = QueuedRequest::decode(&rec).unwrap();
        assert_eq!(back.seq, Some(7));
        assert_eq!(
            (
                &back.method,
                &back.target,
                &back.request_line,
                &back.headers,
                &back.body
            ),
            (
                &req.method,
                &req.target,
                &req.request_line,
                &req.headers,
                &req.body
            )
        );
        assert_eq!((back.request_id, back.client), (req.request_id, req.client));
        for cut in 0..rec.payload.len() {
            let torn = Recovered {
                payload: rec.payload[..cut].to_vec(),
                ..rec.clone()
            };
            assert!(QueuedRequest::decode(&torn).is_err(), "cut at {cut}");
        }
    }
}
