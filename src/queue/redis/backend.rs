//! [`RedisQueue`] as a queue [`Backend`]: what the replay loop and the workers see.
//!
//! The replay loop's `Delivery.id` is a counter of heads handed out; the stream entry
//! behind it (its id and the lease it was read under) stays here until it is acked or
//! dead-lettered. Every instance runs the replay loop; `head` gives nothing unless
//! this instance holds the lease, which the keeper thread (started in `new`) takes
//! when it is free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::{Entry, RedisQueue, RedisQueueError, RedisStatus};
use crate::logging::escaped;
use crate::queue::{Backend, Delivery, PushError, QueuedRequest};

/// How often an idle replayer that holds the lease looks for a new head (one engine
/// round trip each; only the lease holder polls).
pub const HEAD_POLL: Duration = Duration::from_millis(50);

struct State {
    /// The head handed out last, under its `Delivery.id`.
    current: Option<(u64, Entry)>,
    closed: bool,
    /// The last engine error the replay side met (logged once until it changes).
    last_error: Option<String>,
}

pub struct RedisBackend {
    queue: RedisQueue,
    state: Mutex<State>,
    wake: Condvar,
    handed: AtomicU64,
}

impl RedisBackend {
    /// Wraps `queue` and starts its lease keeper.
    pub fn new(queue: RedisQueue) -> std::io::Result<RedisBackend> {
        queue.keep_lease()?;
        Ok(RedisBackend {
            queue,
            state: Mutex::new(State {
                current: None,
                closed: false,
                last_error: None,
            }),
            wake: Condvar::new(),
            handed: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry behind `d`, if it is the one handed out last.
    fn entry(&self, d: &Delivery) -> Option<Entry> {
        let st = self.lock();
        st.current
            .as_ref()
            .filter(|(id, _)| *id == d.id)
            .map(|(_, e)| e.clone())
    }

    /// Logs a replay-side engine error once, and again only when it changes.
    fn replay_error(&self, what: &str, e: &RedisQueueError) {
        let text = format!("{what}: {e}");
        let mut st = self.lock();
        if st.last_error.as_deref() != Some(text.as_str()) {
            let code = e.log_code();
            log::warn!(
                "{} [{} {}]: {text}",
                self.queue.status().target,
                code.number(),
                code.name()
            );
            st.last_error = Some(text);
        }
    }

    /// One look at the head: a delivery, or None (empty, not ours, engine down). An
    /// entry that does not decode can never be delivered: it is dead-lettered.
    fn try_head(&self) -> Option<Delivery> {
        let entry = match self.queue.head() {
            Ok(entry) => {
                self.lock().last_error = None;
                entry?
            }
            Err(e) => {
                self.replay_error("cannot read the queue's head", &e);
                return None;
            }
        };
        let appended_at = SystemTime::now()
            .checked_sub(entry.age)
            .unwrap_or_else(SystemTime::now);
        match QueuedRequest::decode(&entry.payload, appended_at) {
            Ok(req) => {
                let id = self.handed.fetch_add(1, Ordering::Relaxed);
                self.lock().current = Some((id, entry));
                Some(Delivery {
                    req: Arc::new(req),
                    id,
                })
            }
            Err(why) => {
                log::warn!(
                    "shared queue entry {} cannot be decoded ({why}): moved to the dead letters",
                    entry.id
                );
                let _ = self
                    .queue
                    .dead_letter(&entry, &format!("undecodable: {why}"));
                None
            }
        }
    }
}

impl Backend for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn push(&self, req: QueuedRequest) -> Result<(), PushError> {
        if self.lock().closed {
            return Err(PushError::Closed);
        }
        let payload = req.encode().map_err(PushError::Journal)?;
        self.queue
            .push(&payload)
            .map(|_| ())
            .map_err(|error| PushError::Engine {
                target: self.queue.status().target,
                error,
            })
    }

    fn head(&self, wait: Duration) -> Option<Delivery> {
        let deadline = Instant::now() + wait;
        loop {
            if self.lock().closed {
                return None;
            }
            if let Some(d) = self.try_head() {
                return Some(d);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let st = self.lock();
            let _ = self
                .wake
                .wait_timeout_while(st, left.min(HEAD_POLL), |st| !st.closed);
        }
    }

    fn ack(&self, d: &Delivery) {
        let Some(entry) = self.entry(d) else { return };
        match self.queue.ack(&entry) {
            Ok(true) => {}
            Ok(false) => log::warn!(
                "shared queue entry {} (X-Request-Id {}) delivered, but the lease was lost \
                 before its acknowledgement: the next holder delivers it again",
                entry.id,
                d.req.request_id
            ),
            Err(e) => self.replay_error(
                &format!(
                    "cannot acknowledge entry {} (it will be delivered again)",
                    entry.id
                ),
                &e,
            ),
        }
        self.lock().current = None;
    }

    fn dead_letter(&self, d: &Delivery) {
        let Some(entry) = self.entry(d) else { return };
        let waited = d.req.queued_at.elapsed();
        match self.queue.dead_letter(&entry, "DEFERRED_Q_MAX_AGE") {
            Ok(true) => log::warn!(
                "{} {} (X-Request-Id {}) queued {waited:.1?}: moved to the dead-letter stream",
                d.req.method,
                escaped(&d.req.target),
                d.req.request_id
            ),
            Ok(false) => {}
            Err(e) => self.replay_error(&format!("cannot dead-letter entry {}", entry.id), &e),
        }
        self.lock().current = None;
    }

    fn depth(&self) -> usize {
        self.queue.status().depth.unwrap_or(0) as usize
    }

    fn is_durable(&self) -> bool {
        true
    }

    /// At shutdown: hand the lease over now rather than after its TTL (entries are
    /// already on the engine).
    fn sync(&self) {
        self.queue.release_lease();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
        // Hand the lease over now rather than after its TTL.
        self.queue.release_lease();
    }

    fn holds_slots(&self) -> bool {
        false
    }

    fn is_current(&self, d: &Delivery) -> bool {
        self.entry(d).is_some_and(|e| self.queue.still_ours(&e))
    }

    fn shared_status(&self) -> Option<RedisStatus> {
        Some(self.queue.status())
    }
}
