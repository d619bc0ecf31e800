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

use super::{Entry, EntryId, RedisQueue, RedisQueueError, RedisStatus, Retried, Stored, Stream};
use crate::queue::ops::{self, DeadInfo, Listed, OpsError, Removed, Select, Shown, Tries};
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
    /// Tries of the head handed out last (this instance's memory only).
    tries: Tries,
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
                tries: None,
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
        self.dead_letter_because(d, "DEFERRED_Q_MAX_AGE");
    }

    fn dead_letter_because(&self, d: &Delivery, reason: &str) {
        let Some(entry) = self.entry(d) else { return };
        let waited = d.req.queued_at.elapsed();
        match self.queue.dead_letter(&entry, reason) {
            Ok(true) => log::warn!(
                "{} queued {waited:.1?}: moved to the dead-letter stream ({reason})",
                d.req.named()
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

    /// False once an operator dropped the head (it is gone from the stream). An
    /// engine that does not answer gets the benefit of the doubt: the fenced ack
    /// decides then.
    fn attempt(&self, d: &Delivery) -> bool {
        let Some(entry) = self.entry(d) else {
            return false;
        };
        if let Ok(false) = self.queue.exists(&entry.id) {
            return false;
        }
        ops::count_try(&mut self.lock().tries, d.id);
        true
    }

    fn list(&self, limit: usize) -> Result<Vec<Listed>, OpsError> {
        let rows = self.queue.entries(Stream::Queue, limit).map_err(engine)?;
        Ok(self.listed(&rows, false))
    }

    fn list_dead(&self, limit: usize) -> Result<Vec<Listed>, OpsError> {
        let rows = self.queue.entries(Stream::Dead, limit).map_err(engine)?;
        Ok(self.listed(&rows, true))
    }

    fn show(&self, id: &str) -> Result<Shown, OpsError> {
        let queued = self.matching(Stream::Queue, |r| r == id)?;
        let dead = self.matching(Stream::Dead, |r| r == id)?;
        let sharing = queued.len() + dead.len();
        let (entry, req) = queued
            .into_iter()
            .chain(dead)
            .next()
            .ok_or_else(|| OpsError::NotFound(id.to_string()))?;
        Ok(Shown::of(entry, &req, sharing)?)
    }

    fn retry_dead(&self, which: &Select) -> Result<usize, OpsError> {
        let rows = self
            .queue
            .entries(Stream::Dead, usize::MAX)
            .map_err(engine)?;
        let mut moved = 0;
        for row in rows {
            let Some(req) = decoded(&row) else { continue };
            if !which.matches(&req.request_id) {
                continue;
            }
            match self.queue.retry_dead(&row.id).map_err(engine)? {
                Retried::Moved => moved += 1,
                Retried::Gone => {}
                Retried::Full => {
                    return Err(OpsError::Io(std::io::Error::other(format!(
                        "the shared queue is at its cap: {moved} retried, the rest stay dead"
                    ))))
                }
            }
        }
        Ok(moved)
    }

    fn remove(&self, ids: &[String]) -> Result<Removed, OpsError> {
        let wanted = |r: &str| ids.iter().any(|i| i == r);
        let queued = self.ids_matching(Stream::Queue, wanted)?;
        let dead = self.ids_matching(Stream::Dead, wanted)?;
        let remove = |which, found: &[EntryId]| self.queue.remove(which, found).map_err(engine);
        Ok(Removed {
            queued: remove(Stream::Queue, &queued)? as usize,
            dead: remove(Stream::Dead, &dead)? as usize,
            // The shared queue holds no CONCURRENCY_PEAK slots.
            holds_freed: 0,
        })
    }

    fn purge_dead(&self) -> Result<usize, OpsError> {
        Ok(self.queue.purge_dead().map_err(engine)? as usize)
    }
}

/// An engine error as the operator sees it.
fn engine(e: RedisQueueError) -> OpsError {
    OpsError::Io(std::io::Error::other(e.to_string()))
}

/// A stream entry's request (None for one whose payload does not decode).
fn decoded(row: &Stored) -> Option<QueuedRequest> {
    let appended_at = SystemTime::now()
        .checked_sub(row.age)
        .unwrap_or_else(SystemTime::now);
    QueuedRequest::decode(row.field("p")?, appended_at).ok()
}

/// Why and when a `dead` entry was dead-lettered: its own id is the when.
fn dead_info(row: &Stored) -> DeadInfo {
    let at = super::scripts::id_millis(&row.id.0)
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    DeadInfo {
        reason: row
            .field("reason")
            .map(|r| String::from_utf8_lossy(r).into_owned()),
        at,
    }
}

/// A dead letter's age counts from when it was buffered (its `id` field).
fn dead_age(row: &Stored) -> Duration {
    let born = row
        .field("id")
        .and_then(|id| std::str::from_utf8(id).ok())
        .and_then(super::scripts::id_millis);
    born.map_or(row.age, |ms| {
        Duration::from_millis(row.now_ms.saturating_sub(ms))
    })
}

impl RedisBackend {
    /// Tries counted for the stream entry `id` (the head this instance delivers).
    fn attempts_of(&self, id: &EntryId) -> u32 {
        let st = self.lock();
        match &st.current {
            Some((n, e)) if e.id == *id => ops::tries_of(st.tries, *n),
            _ => 0,
        }
    }

    fn listed_one(&self, position: usize, row: &Stored, req: &QueuedRequest, dead: bool) -> Listed {
        let (age, attempts, info) = if dead {
            (dead_age(row), 0, Some(dead_info(row)))
        } else {
            (row.age, self.attempts_of(&row.id), None)
        };
        Listed::of(position, req, age, attempts, info)
    }

    /// Rows as listing lines; an entry that does not decode is left out (the replay
    /// loop dead-letters it when it reaches the head).
    fn listed(&self, rows: &[Stored], dead: bool) -> Vec<Listed> {
        rows.iter()
            .enumerate()
            .filter_map(|(i, row)| Some(self.listed_one(i + 1, row, &decoded(row)?, dead)))
            .collect()
    }

    /// Every entry of `which` whose X-Request-Id `wanted` takes, with its request.
    fn matching(
        &self,
        which: Stream,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Vec<(Listed, QueuedRequest)>, OpsError> {
        let rows = self.queue.entries(which, usize::MAX).map_err(engine)?;
        let dead = which == Stream::Dead;
        Ok(rows
            .iter()
            .enumerate()
            .filter_map(|(i, row)| {
                let req = decoded(row).filter(|r| wanted(&r.request_id))?;
                Some((self.listed_one(i + 1, row, &req, dead), req))
            })
            .collect())
    }

    /// The stream ids of the entries of `which` whose X-Request-Id `wanted` takes.
    fn ids_matching(
        &self,
        which: Stream,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Vec<EntryId>, OpsError> {
        let rows = self.queue.entries(which, usize::MAX).map_err(engine)?;
        Ok(rows
            .into_iter()
            .filter(|row| decoded(row).is_some_and(|r| wanted(&r.request_id)))
            .map(|row| row.id)
            .collect())
    }
}
