//! The in-memory queue backend: a FIFO in this process, lost on a stop (which says how
//! many it drops). Queued bodies are held in memory — one that spilled to a temporary
//! file is read back in — and their bytes count against `DEFERRED_Q_MAX_MEMORY`: a
//! request that would pass it is not queued (the client gets the answer it would have
//! got with the queue disabled).
//!
//! Dead letters stay in memory too, for `serviceq queue` (online only), until retried,
//! dropped or purged; their bodies count against the same limit, but a queued request
//! comes first: the oldest dead letters are discarded to make room for it.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::ops::{DeadInfo, Listed, OpsError, Removed, Select, Shown};
use super::{Backend, Delivery, PushError, QueuedRequest};
use crate::body::Body;

struct State {
    entries: VecDeque<(u64, Arc<QueuedRequest>)>,
    /// Body bytes held by `entries`.
    bytes: u64,
    dead: VecDeque<(Arc<QueuedRequest>, DeadInfo)>,
    /// Body bytes held by `dead`.
    dead_bytes: u64,
    /// The head the replay loop was handed, and its delivery tries so far.
    delivering: super::ops::Tries,
    next_id: u64,
    closed: bool,
}

impl State {
    /// Discards the oldest dead letters until `len` more queued bytes fit in `max`.
    fn make_room(&mut self, len: u64, max: u64) {
        while self.bytes + self.dead_bytes + len > max {
            let Some((req, _)) = self.dead.pop_front() else {
                return;
            };
            self.dead_bytes = self.dead_bytes.saturating_sub(req.body.len());
            log::warn!(
                "dead letter {} discarded to make room in DEFERRED_Q_MAX_MEMORY",
                req.named()
            );
        }
    }

    fn add(&mut self, req: QueuedRequest) {
        self.bytes += req.body.len();
        let id = self.next_id;
        self.next_id += 1;
        self.entries.push_back((id, Arc::new(req)));
    }
}

fn listed(position: usize, req: &QueuedRequest, attempts: u32, dead: Option<&DeadInfo>) -> Listed {
    let age = req.queued_at.elapsed();
    Listed::of(position, req, age, attempts, dead.cloned())
}

pub struct MemoryBackend {
    state: Mutex<State>,
    ready: Condvar,
    max_bytes: u64,
}

impl MemoryBackend {
    pub fn new(max_bytes: u64) -> Self {
        MemoryBackend {
            state: Mutex::new(State {
                entries: VecDeque::new(),
                bytes: 0,
                dead: VecDeque::new(),
                dead_bytes: 0,
                delivering: None,
                next_id: 1,
                closed: false,
            }),
            ready: Condvar::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Body bytes queued now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn attempts_of(st: &State, id: u64) -> u32 {
        super::ops::tries_of(st.delivering, id)
    }
}

impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn push(&self, mut req: QueuedRequest) -> Result<(), PushError> {
        let len = req.body.len();
        let fits = |st: &State| st.bytes.saturating_add(len) <= self.max_bytes;
        if !fits(&self.lock()) {
            return Err(PushError::MemoryFull {
                limit: self.max_bytes,
            });
        }
        if req.body.is_spilled() {
            // Read outside the lock; the budget is checked again below.
            let whole = req.body.to_vec().map_err(PushError::Journal)?;
            req.body = Body::from_vec(whole);
        }
        let mut st = self.lock();
        if st.closed {
            return Err(PushError::Closed);
        }
        if !fits(&st) {
            return Err(PushError::MemoryFull {
                limit: self.max_bytes,
            });
        }
        st.make_room(len, self.max_bytes);
        st.add(req);
        self.ready.notify_one();
        Ok(())
    }

    fn head(&self, wait: Duration) -> Option<Delivery> {
        let st = self.lock();
        let (mut st, _) = self
            .ready
            .wait_timeout_while(st, wait, |st| st.entries.is_empty() && !st.closed)
            .unwrap_or_else(|p| p.into_inner());
        let (id, req) = st.entries.front().map(|(id, r)| (*id, Arc::clone(r)))?;
        if st.delivering.is_none_or(|(d, _)| d != id) {
            st.delivering = Some((id, 0));
        }
        Some(Delivery { req, id })
    }

    fn ack(&self, d: &Delivery) {
        let mut st = self.lock();
        if st.entries.front().is_some_and(|(id, _)| *id == d.id) {
            self.ack_locked(&mut st, d);
        }
    }

    fn dead_letter(&self, d: &Delivery) {
        self.dead_letter_because(d, "max age (DEFERRED_Q_MAX_AGE)")
    }

    fn dead_letter_because(&self, d: &Delivery, reason: &str) {
        log::warn!(
            "{} queued {:.1?}: kept in memory as a dead letter ({reason}; lost at a stop)",
            d.req.named(),
            d.req.queued_at.elapsed()
        );
        let mut st = self.lock();
        if st.entries.front().is_some_and(|(id, _)| *id == d.id) {
            self.ack_locked(&mut st, d);
            let info = DeadInfo {
                reason: Some(reason.to_string()),
                at: Some(SystemTime::now()),
            };
            st.dead_bytes += d.req.body.len();
            st.dead.push_back((Arc::clone(&d.req), info));
        }
    }

    fn attempt(&self, d: &Delivery) -> bool {
        let mut st = self.lock();
        if st.entries.front().is_none_or(|(id, _)| *id != d.id) {
            return false;
        }
        super::ops::count_try(&mut st.delivering, d.id);
        true
    }

    fn list(&self, limit: usize) -> Result<Vec<Listed>, OpsError> {
        let st = self.lock();
        let rows = st.entries.iter().take(limit).enumerate();
        Ok(rows
            .map(|(i, (id, req))| listed(i + 1, req, Self::attempts_of(&st, *id), None))
            .collect())
    }

    fn list_dead(&self, limit: usize) -> Result<Vec<Listed>, OpsError> {
        let st = self.lock();
        let rows = st.dead.iter().take(limit).enumerate();
        Ok(rows
            .map(|(i, (req, info))| listed(i + 1, req, 0, Some(info)))
            .collect())
    }

    fn show(&self, id: &str) -> Result<Shown, OpsError> {
        let st = self.lock();
        let queued = st.entries.iter().enumerate();
        let queued = queued.filter(|(_, (_, r))| r.request_id == id);
        let dead = st.dead.iter().enumerate();
        let dead = dead.filter(|(_, (r, _))| r.request_id == id);
        let sharing = queued.clone().count() + dead.clone().count();
        let found = queued
            .map(|(i, (n, r))| (listed(i + 1, r, Self::attempts_of(&st, *n), None), r))
            .chain(dead.map(|(i, (r, info))| (listed(i + 1, r, 0, Some(info)), r)))
            .next();
        let (entry, req) = found.ok_or_else(|| OpsError::NotFound(id.to_string()))?;
        Ok(Shown::of(entry, req, sharing)?)
    }

    fn retry_dead(&self, which: &Select) -> Result<usize, OpsError> {
        let mut st = self.lock();
        if st.closed {
            return Ok(0);
        }
        let (retried, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut st.dead)
            .into_iter()
            .partition(|(r, _)| which.matches(&r.request_id));
        st.dead = kept;
        for (req, _) in &retried {
            st.dead_bytes = st.dead_bytes.saturating_sub(req.body.len());
            st.add(req.requeued()?);
        }
        self.ready.notify_one();
        Ok(retried.len())
    }

    fn remove(&self, ids: &[String]) -> Result<Removed, OpsError> {
        let mut st = self.lock();
        let wanted = |r: &QueuedRequest| ids.contains(&r.request_id);
        let delivering = st.delivering.map(|(id, _)| id);
        let mut out = Removed::default();
        let (mut freed, mut bytes) = (0, 0);
        st.entries.retain(|(id, r)| {
            let keep = !wanted(r);
            if !keep {
                out.queued += 1;
                bytes += r.body.len();
                freed += usize::from(Some(*id) != delivering);
            }
            keep
        });
        out.holds_freed = freed;
        st.bytes = st.bytes.saturating_sub(bytes);
        let before = st.dead.len();
        let mut dead_bytes = 0;
        st.dead.retain(|(r, _)| {
            let keep = !wanted(r);
            if !keep {
                dead_bytes += r.body.len();
            }
            keep
        });
        st.dead_bytes = st.dead_bytes.saturating_sub(dead_bytes);
        out.dead = before - st.dead.len();
        Ok(out)
    }

    fn purge_dead(&self) -> Result<usize, OpsError> {
        let mut st = self.lock();
        st.dead_bytes = 0;
        Ok(std::mem::take(&mut st.dead).len())
    }

    fn depth(&self) -> usize {
        self.lock().entries.len()
    }

    fn is_durable(&self) -> bool {
        false
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

impl MemoryBackend {
    fn ack_locked(&self, st: &mut State, d: &Delivery) {
        st.entries.pop_front();
        st.bytes = st.bytes.saturating_sub(d.req.body.len());
        if st.delivering.is_some_and(|(id, _)| id == d.id) {
            st.delivering = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::ops::Select;
    use crate::queue::tests::{ids, request, with_id};

    #[test]
    fn fifo_with_head_until_ack() {
        let q = MemoryBackend::new(1 << 20);
        for b in [b"a", b"b", b"c"] {
            q.push(request(b)).unwrap();
        }
        assert_eq!(q.depth(), 3);
        let first = q.head(Duration::ZERO).unwrap();
        let again = q.head(Duration::ZERO).unwrap();
        assert_eq!(first.id, again.id, "the head stays until acknowledged");
        q.ack(&first);
        q.ack(&first); // a second ack of the same entry removes nothing more
        let next = q.head(Duration::ZERO).unwrap();
        assert_eq!(next.req.body.to_vec().unwrap(), b"b");
        assert_eq!(q.depth(), 2);
    }

    #[test]
    fn bodies_are_bounded_by_the_memory_limit() {
        let q = MemoryBackend::new(10);
        q.push(request(&[1; 6])).unwrap();
        assert!(matches!(
            q.push(request(&[2; 5])),
            Err(PushError::MemoryFull { limit: 10 })
        ));
        q.push(request(&[3; 4])).unwrap();
        assert_eq!(q.bytes(), 10);
        let head = q.head(Duration::ZERO).unwrap();
        q.ack(&head);
        assert_eq!(q.bytes(), 4);
        q.push(request(&[4; 6])).unwrap();
    }

    /// Dead letters stay (counting against the limit) until a queued request needs
    /// the room; drops free the slots of all but the head being delivered; retried
    /// dead letters keep their order.
    #[test]
    fn dead_letters_yield_to_queued_requests_and_retry_in_order() {
        let q = MemoryBackend::new(10);
        for id in ["a", "b", "c"] {
            q.push(with_id(id, &[1; 3])).unwrap();
        }
        for _ in 0..2 {
            let head = q.head(Duration::ZERO).unwrap();
            assert!(q.attempt(&head));
            q.dead_letter_because(&head, "max age: t");
        }
        let dead = ids(q.list_dead(9).unwrap());
        assert_eq!(dead, ["a", "b"]);
        q.push(with_id("d", &[2; 1])).unwrap(); // 3 + 1 queued + 6 dead = 10: fits
        q.push(with_id("e", &[2; 3])).unwrap(); // the oldest dead letter makes room
        let dead = ids(q.list_dead(9).unwrap());
        assert_eq!(dead, ["b"]);

        let head = q.head(Duration::ZERO).unwrap();
        assert_eq!(head.req.request_id, "c");
        let r = q.remove(&["c".into(), "e".into()]).unwrap();
        assert_eq!((r.queued, r.dead, r.holds_freed), (2, 0, 1));
        assert!(!q.attempt(&head));
        assert_eq!(q.retry_dead(&Select::All).unwrap(), 1);
        assert_eq!(ids(q.list(9).unwrap()), ["d", "b"]);
        assert_eq!(q.bytes(), 4);
        assert_eq!(q.purge_dead().unwrap(), 0);
    }

    #[test]
    fn close_wakes_a_waiting_head() {
        let q = Arc::new(MemoryBackend::new(10));
        let waiter = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.head(Duration::from_secs(30)).is_none())
        };
        q.close();
        assert!(waiter.join().unwrap());
        assert!(matches!(q.push(request(b"")), Err(PushError::Closed)));
    }
}
