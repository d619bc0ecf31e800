//! The deferred and upfront queue (SPEC §5): requests that may be replayed wait here,
//! in arrival order, while the cluster is down, and one replay thread delivers them in
//! strict FIFO order — the head is retried until an endpoint answers (any status), and
//! only then does the next one go.
//!
//! One interface, [`Backend`], and one replay loop ([`replay`]) that does not know
//! which backend it drives:
//!
//! * [`memory`] — in this process only; queued bodies count against
//!   `DEFERRED_Q_MAX_MEMORY`.
//! * [`durable`] — the write-ahead journal in `DEFERRED_Q_DIR` (SPEC §9): a request is
//!   appended (and fsynced, per DEFERRED_Q_FSYNC) before its client hears "Buffered"
//!   or "Queued", acknowledged once delivered, and queued again at the next start if
//!   it was not. Only where each record is stays in memory; the body is read back from
//!   the journal when the request is delivered.
//!
//! * [`redis`] — one FIFO shared by every instance with the same `DEFERRED_Q_NAME`,
//!   on Redis Streams; one instance at a time (the lease holder) replays it.
//!
//! A request in a local queue keeps the `CONCURRENCY_PEAK` slot its client took until
//! it is delivered, so the queue is bounded by the peak. Delivery is at least once.

use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::body::Body;
use crate::queue::journal::{Journal, Payload, Pending};
use ops::{unsupported, Listed, OpsError, Removed, Select, Shown};

pub mod durable;
pub mod journal;
pub mod memory;
pub mod ops;
pub mod redis;
pub mod replay;

pub use replay::{Replay, ReplayContext, REPLAY_PAUSE_MAX, REPLAY_PAUSE_MIN};

/// Everything needed to send a request again: the upstream request exactly as the
/// first attempt would have sent it (request line, headers with `X-Request-Id` and the
/// forwarding headers, body), minus `Host`, which each endpoint gets its own of.
#[derive(Debug)]
pub struct QueuedRequest {
    pub method: String,
    pub target: String,
    pub request_line: Vec<u8>,
    pub headers: Vec<u8>,
    pub body: Body,
    pub request_id: String,
    pub client: IpAddr,
    pub queued_at: Instant,
}

/// `METHOD TARGET (X-Request-Id ID)`: how log lines name a queued request, the
/// client's bytes escaped and capped (`logging::escaped`).
pub struct Named<'a>(&'a QueuedRequest);

impl std::fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::logging::escaped;
        let r = self.0;
        write!(
            f,
            "{} {} (X-Request-Id {})",
            escaped(&r.method),
            escaped(&r.target),
            escaped(&r.request_id)
        )
    }
}

/// Payload layout version, first byte of every journal payload.
const PAYLOAD_V1: u8 = 1;

impl QueuedRequest {
    /// Its name in a log line: see [`Named`].
    pub fn named(&self) -> Named<'_> {
        Named(self)
    }

    /// The seven fields of the payload, the body excepted (it is the fifth).
    fn fields(&self) -> ([&[u8]; 4], [Vec<u8>; 2]) {
        (
            [
                self.method.as_bytes(),
                self.target.as_bytes(),
                &self.request_line,
                &self.headers,
            ],
            [
                self.request_id.as_bytes().to_vec(),
                self.client.to_string().into_bytes(),
            ],
        )
    }

    /// The journal payload as one vector (see [`Payload`] for the layout).
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(Payload::payload_len(self));
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Rebuilds a request from a journal payload; its age counts from `appended_at`.
    pub fn decode(payload: &[u8], appended_at: SystemTime) -> Result<Self, &'static str> {
        let mut rest = payload;
        let (&version, tail) = rest.split_first().ok_or("empty payload")?;
        if version != PAYLOAD_V1 {
            return Err("unknown payload version");
        }
        rest = tail;
        let mut field = || -> Result<&[u8], &'static str> {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or("truncated payload")?;
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len {
                return Err("truncated payload");
            }
            let (value, tail) = tail.split_at(len);
            rest = tail;
            Ok(value)
        };
        let text = |v: &[u8]| String::from_utf8(v.to_vec()).map_err(|_| "field is not UTF-8");
        let method = text(field()?)?;
        let target = text(field()?)?;
        let (request_line, headers) = (field()?.to_vec(), field()?.to_vec());
        let body = Body::from_vec(field()?.to_vec());
        let request_id = text(field()?)?;
        let client = text(field()?)?.parse().map_err(|_| "bad client address")?;
        let waited = SystemTime::now()
            .duration_since(appended_at)
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
        })
    }
}

/// What a listing shows of a queued request, read from its payload in pieces so the
/// body is never read (see [`QueuedRequest::summarize`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub method: String,
    pub target: String,
    pub request_id: String,
    pub body_bytes: u64,
}

/// Fields longer than this are not read for a listing (a method, target or id is far
/// shorter; the head is capped by the parser anyway).
const SUMMARY_FIELD_MAX: u32 = 1 << 20;

impl QueuedRequest {
    /// The listing fields of a payload, read with `read(offset, len)`: about six small
    /// reads, whatever the body's size.
    pub fn summarize(
        read: &mut dyn FnMut(u64, usize) -> io::Result<Vec<u8>>,
    ) -> io::Result<Summary> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        if read(0, 1)?.first() != Some(&PAYLOAD_V1) {
            return Err(bad("unknown payload version"));
        }
        let mut off = 1u64;
        let mut field = |keep: bool| -> io::Result<(u64, Option<String>)> {
            let len = read(off, 4)?;
            let len = u32::from_le_bytes(len.try_into().map_err(|_| bad("short read"))?);
            off += 4;
            let value = match keep {
                true if len <= SUMMARY_FIELD_MAX => {
                    let v = read(off, len as usize)?;
                    Some(String::from_utf8(v).map_err(|_| bad("field is not UTF-8"))?)
                }
                true => return Err(bad("field too long")),
                false => None,
            };
            off += u64::from(len);
            Ok((u64::from(len), value))
        };
        let method = field(true)?.1.unwrap_or_default();
        let target = field(true)?.1.unwrap_or_default();
        field(false)?; // request line
        field(false)?; // headers
        let body_bytes = field(false)?.0;
        let request_id = field(true)?.1.unwrap_or_default();
        Ok(Summary {
            method,
            target,
            request_id,
            body_bytes,
        })
    }

    /// A copy to queue again (a retried dead letter): its age counts from now.
    pub fn requeued(&self) -> io::Result<QueuedRequest> {
        Ok(QueuedRequest {
            method: self.method.clone(),
            target: self.target.clone(),
            request_line: self.request_line.clone(),
            headers: self.headers.clone(),
            body: Body::from_vec(self.body.to_vec()?),
            request_id: self.request_id.clone(),
            client: self.client,
            queued_at: Instant::now(),
        })
    }
}

/// The journal payload: a version byte, then each field length-prefixed (u32
/// little-endian): method, target, request line, headers, body, request id, client
/// address. Written in pieces, so a body spilled to a file streams into the journal.
impl Payload for QueuedRequest {
    fn payload_len(&self) -> usize {
        let (head, tail) = self.fields();
        let fixed: usize = head.iter().map(|f| 4 + f.len()).sum::<usize>()
            + tail.iter().map(|f| 4 + f.len()).sum::<usize>();
        1 + fixed + 4 + usize::try_from(self.body.len()).unwrap_or(usize::MAX)
    }

    fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        let (head, tail) = self.fields();
        let prefix = |n: u64| u32::try_from(n).map(u32::to_le_bytes);
        let too_long = |_| io::Error::new(io::ErrorKind::InvalidInput, "field over 4 GiB");
        out.write_all(&[PAYLOAD_V1])?;
        for f in head {
            out.write_all(&prefix(f.len() as u64).map_err(too_long)?)?;
            out.write_all(f)?;
        }
        out.write_all(&prefix(self.body.len()).map_err(too_long)?)?;
        self.body.write_all_to(out)?;
        for f in &tail {
            out.write_all(&prefix(f.len() as u64).map_err(too_long)?)?;
            out.write_all(f)?;
        }
        Ok(())
    }
}

/// Why a request was not queued; the client gets the answer it would have got with
/// the queue disabled, and the error log says why.
#[derive(Debug)]
pub enum PushError {
    /// The in-memory queue's bodies would exceed DEFERRED_Q_MAX_MEMORY.
    MemoryFull { limit: u64 },
    /// The journal could not take (or make durable) the request.
    Journal(io::Error),
    /// The replay thread is gone (a stop began).
    Closed,
    /// The shared queue's engine could not confirm the push, or the shared queue is at
    /// its cap; `target` is the backend URL, password hidden, for the error log.
    Engine {
        target: String,
        error: redis::RedisQueueError,
    },
}

impl PushError {
    /// The error-log line this failure gets, if any: (the "endpoint", the code the
    /// failure table in `crate::error` gives it).
    pub fn log_entry(&self) -> Option<(&str, crate::error::LogCode)> {
        match self {
            PushError::Engine { target, error } => Some((target, error.log_code())),
            _ => None,
        }
    }
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::MemoryFull { limit } => write!(
                f,
                "the in-memory queue holds DEFERRED_Q_MAX_MEMORY ({limit} bytes) of bodies already"
            ),
            PushError::Journal(e) => write!(f, "journal: {e}"),
            PushError::Closed => f.write_str("the queue is closed"),
            PushError::Engine { target, error } => write!(f, "{target}: {error}"),
        }
    }
}

/// The head of the queue, handed to the replay loop until it is acknowledged or
/// dead-lettered.
pub struct Delivery {
    pub req: Arc<QueuedRequest>,
    /// The backend's name for the entry (a journal seq; a counter in memory).
    pub id: u64,
}

/// A queue store. The replay loop is the only consumer: [`head`](Backend::head) hands
/// it the oldest entry without removing it, and [`ack`](Backend::ack) or
/// [`dead_letter`](Backend::dead_letter) removes it.
pub trait Backend: Send + Sync {
    /// `memory`, `journal`, …: for logs and /metrics.
    fn kind(&self) -> &'static str;
    /// Appends at the tail; returns once the request is as safe as the backend makes it
    /// (on disk for the journal with fsync=always).
    fn push(&self, req: QueuedRequest) -> Result<(), PushError>;
    /// The oldest entry, waiting up to `wait` for one.
    fn head(&self, wait: Duration) -> Option<Delivery>;
    /// The head was delivered: remove it.
    fn ack(&self, d: &Delivery);
    /// The head waited too long (DEFERRED_Q_MAX_AGE): remove it, keeping it aside where
    /// the backend can.
    fn dead_letter(&self, d: &Delivery);
    /// Requests waiting, including the one being replayed.
    fn depth(&self) -> usize;
    /// Whether queued requests survive a restart.
    fn is_durable(&self) -> bool;
    /// Writes out what is buffered (at shutdown).
    fn sync(&self) {}
    /// Wakes a replay loop waiting in [`head`](Backend::head) (at shutdown).
    fn close(&self);
    /// Whether a queued request keeps its client's CONCURRENCY_PEAK slot until it is
    /// delivered. Not in a shared queue: another instance may deliver it, and the cap
    /// is the queue's own (DEFERRED_Q_MAX_LEN).
    fn holds_slots(&self) -> bool {
        true
    }
    /// Whether `d` may still be delivered: false once the backend knows another
    /// consumer may have it (a shared queue's lease expired). The replay loop checks
    /// it before every try and then drops the head without acknowledging it.
    fn is_current(&self, _d: &Delivery) -> bool {
        true
    }
    /// The shared queue's state (engine, depth, lease holder, errors), for /metrics,
    /// /status and `--check`; None for a local queue.
    fn shared_status(&self) -> Option<redis::RedisStatus> {
        None
    }

    // Operating the queue (`serviceq queue`, the admin API; see [`ops`]). A backend
    // that cannot do one answers `OpsError::Unsupported`.

    /// [`dead_letter`](Backend::dead_letter), keeping `reason` with the dead letter
    /// where the backend can.
    fn dead_letter_because(&self, d: &Delivery, _reason: &str) {
        self.dead_letter(d)
    }
    /// Counts one delivery try of the head `d`, made by the replay loop just before
    /// each try; false when `d` is no longer queued (an operator dropped it): the loop
    /// then lets it go.
    fn attempt(&self, _d: &Delivery) -> bool {
        true
    }
    /// Queued requests, head first, at most `limit`.
    fn list(&self, _limit: usize) -> Result<Vec<Listed>, OpsError> {
        unsupported(self.kind(), "listing the queue")
    }
    /// Dead letters, oldest first, at most `limit`.
    fn list_dead(&self, _limit: usize) -> Result<Vec<Listed>, OpsError> {
        unsupported(self.kind(), "listing dead letters")
    }
    /// One queued or dead request in full (a queued one first).
    fn show(&self, _id: &str) -> Result<Shown, OpsError> {
        unsupported(self.kind(), "showing a request")
    }
    /// Dead letters back to the queue's tail, in their dead-letter order; how many.
    fn retry_dead(&self, _which: &Select) -> Result<usize, OpsError> {
        unsupported(self.kind(), "retrying dead letters")
    }
    /// Removes queued and dead requests with these ids, for good.
    fn remove(&self, _ids: &[String]) -> Result<Removed, OpsError> {
        unsupported(self.kind(), "dropping requests")
    }
    /// Removes every dead letter; how many.
    fn purge_dead(&self) -> Result<usize, OpsError> {
        unsupported(self.kind(), "purging dead letters")
    }
}

/// The producer side, held by the workers.
pub struct Queue {
    backend: Arc<dyn Backend>,
}

/// The queue for a configuration: the shared Redis queue when there is one, the
/// journal when there is one (with what it still held at start-up), else memory
/// bounded by `max_memory` bytes of bodies.
pub fn channel(
    journal: Option<Arc<Journal>>,
    recovered: Vec<Pending>,
    shared: Option<redis::RedisBackend>,
    max_memory: u64,
    max_age: Option<Duration>,
) -> (Queue, Replay) {
    let backend: Arc<dyn Backend> = match (shared, journal) {
        (Some(shared), _) => Arc::new(shared),
        (None, Some(journal)) => Arc::new(durable::JournalBackend::new(journal, recovered)),
        (None, None) => Arc::new(memory::MemoryBackend::new(max_memory)),
    };
    let replay = Replay::new(Arc::clone(&backend), max_age);
    (Queue { backend }, replay)
}

impl Queue {
    /// Appends a request at the tail (for the journal: on disk before the client is
    /// told, per DEFERRED_Q_FSYNC).
    pub fn push(&self, req: QueuedRequest) -> Result<(), PushError> {
        self.backend.push(req)
    }

    /// Whether queued requests survive a restart.
    pub fn is_durable(&self) -> bool {
        self.backend.is_durable()
    }

    /// `memory`, `journal` or `redis`.
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Whether a queued request keeps its client's CONCURRENCY_PEAK slot.
    pub fn holds_slots(&self) -> bool {
        self.backend.holds_slots()
    }

    /// The shared queue's state, when the queue is shared.
    pub fn shared_status(&self) -> Option<redis::RedisStatus> {
        self.backend.shared_status()
    }

    /// Writes out the journal (at shutdown).
    pub fn sync(&self) {
        self.backend.sync()
    }

    /// Requests waiting, including the one being replayed.
    pub fn depth(&self) -> usize {
        self.backend.depth()
    }

    /// Lets the replay thread see a stop at once.
    pub fn close(&self) {
        self.backend.close()
    }

    /// The backend, for operating the queue (`serviceq queue`, the admin API).
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn request(body: &[u8]) -> QueuedRequest {
        QueuedRequest {
            method: "POST".into(),
            target: "/orders?x=1".into(),
            request_line: b"POST /orders?x=1 HTTP/1.1\r\n".to_vec(),
            headers: b"X-Request-Id: abc\r\nContent-Length: 3\r\n\r\n".to_vec(),
            body: Body::from_vec(body.to_vec()),
            request_id: "abc".into(),
            client: "::1".parse().unwrap(),
            queued_at: Instant::now(),
        }
    }

    pub fn with_id(id: &str, body: &[u8]) -> QueuedRequest {
        let mut r = request(body);
        r.request_id = id.into();
        r
    }

    /// The X-Request-Ids of a listing, in order.
    pub fn ids(list: Vec<ops::Listed>) -> Vec<String> {
        list.into_iter().map(|l| l.request_id).collect()
    }

    #[test]
    fn log_lines_name_a_request_with_the_client_bytes_escaped() {
        let req = with_id("a\"b\n", b"");
        assert_eq!(
            req.named().to_string(),
            "POST /orders?x=1 (X-Request-Id a\\x22b\\x0A)"
        );
    }

    #[test]
    fn payload_round_trips() {
        let req = request(&[0, 1, 255]);
        let payload = req.encode().unwrap();
        assert_eq!(payload.len(), Payload::payload_len(&req));
        let back = QueuedRequest::decode(&payload, SystemTime::now()).unwrap();
        assert_eq!(
            (
                &back.method,
                &back.target,
                &back.request_line,
                &back.headers
            ),
            (&req.method, &req.target, &req.request_line, &req.headers)
        );
        assert_eq!(back.body.to_vec().unwrap(), vec![0, 1, 255]);
        assert_eq!((back.request_id, back.client), (req.request_id, req.client));
        for cut in 0..payload.len() {
            let torn = &payload[..cut];
            assert!(
                QueuedRequest::decode(torn, SystemTime::now()).is_err(),
                "cut at {cut}"
            );
        }
    }

    /// A body that spilled to a file encodes the same as one in memory.
    #[test]
    fn spilled_body_encodes_like_an_in_memory_one() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut spilled = request(b"");
        let spill = crate::body::Spill {
            memory_bytes: 1024,
            dir: std::env::temp_dir(),
        };
        spilled.body.append(&data, &spill).unwrap();
        assert!(spilled.body.is_spilled());
        let whole = request(&data);
        assert_eq!(spilled.encode().unwrap(), whole.encode().unwrap());
        assert_eq!(Payload::payload_len(&spilled), Payload::payload_len(&whole));
    }
}
