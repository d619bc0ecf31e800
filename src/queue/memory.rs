//! The in-memory queue backend: a FIFO in this process, lost on a stop (which says how
//! many it drops). Queued bodies are held in memory — one that spilled to a temporary
//! file is read back in — and their bytes count against `DEFERRED_Q_MAX_MEMORY`: a
//! request that would pass it is not queued (the client gets the answer it would have
//! got with the queue disabled).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::{Backend, Delivery, PushError, QueuedRequest};
use crate::body::Body;

struct State {
    entries: VecDeque<(u64, Arc<QueuedRequest>)>,
    /// Body bytes held by `entries`.
    bytes: u64,
    next_id: u64,
    closed: bool,
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
        st.bytes += len;
        let id = st.next_id;
        st.next_id += 1;
        st.entries.push_back((id, Arc::new(req)));
        self.ready.notify_one();
        Ok(())
    }

    fn head(&self, wait: Duration) -> Option<Delivery> {
        let st = self.lock();
        let (st, _) = self
            .ready
            .wait_timeout_while(st, wait, |st| st.entries.is_empty() && !st.closed)
            .unwrap_or_else(|p| p.into_inner());
        st.entries.front().map(|(id, req)| Delivery {
            req: Arc::clone(req),
            id: *id,
        })
    }

    fn ack(&self, d: &Delivery) {
        let mut st = self.lock();
        if st.entries.front().is_some_and(|(id, _)| *id == d.id) {
            st.entries.pop_front();
            st.bytes = st.bytes.saturating_sub(d.req.body.len());
        }
    }

    fn dead_letter(&self, d: &Delivery) {
        log::warn!(
            "{} {} (X-Request-Id {}) queued {:.1?}: dropped (DEFERRED_Q_MAX_AGE; no DEFERRED_Q_DIR for a dead-letter file)",
            crate::logging::escaped(&d.req.method),
            crate::logging::escaped(&d.req.target),
            crate::logging::escaped(&d.req.request_id),
            d.req.queued_at.elapsed()
        );
        self.ack(d);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::tests::request;

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
