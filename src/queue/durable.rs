//! The journal queue backend (`DEFERRED_Q_DIR`): every queued request is a record in
//! [`Journal`]. Memory holds only the order of the queue — each entry's sequence number
//! and append time — so 2,000 queued 1 MiB requests cost kilobytes, not 2 GiB; the
//! head's payload is read back from its segment when it is delivered.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::{Backend, Delivery, PushError, QueuedRequest};
use crate::journal::{Journal, Pending};
use crate::logging::escaped;

struct State {
    /// Queued records, oldest first.
    order: VecDeque<Pending>,
    /// The head, read back and decoded once for all its delivery tries.
    head: Option<(u64, Arc<QueuedRequest>)>,
    closed: bool,
}

pub struct JournalBackend {
    journal: Arc<Journal>,
    state: Mutex<State>,
    ready: Condvar,
}

impl JournalBackend {
    /// `recovered`: what the journal still held at start-up, in order.
    pub fn new(journal: Arc<Journal>, recovered: Vec<Pending>) -> Self {
        JournalBackend {
            journal,
            state: Mutex::new(State {
                order: recovered.into(),
                head: None,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads and decodes record `p`; one that cannot be read back or decoded is
    /// acknowledged away with a warning (it can never be delivered).
    fn load(&self, p: Pending) -> Option<Arc<QueuedRequest>> {
        let why = match self.journal.read(p.seq) {
            Ok(payload) => match QueuedRequest::decode(&payload, p.appended_at) {
                Ok(req) => return Some(Arc::new(req)),
                Err(why) => why.to_string(),
            },
            Err(e) => e.to_string(),
        };
        log::warn!("queue journal: record {} skipped: {why}", p.seq);
        let _ = self.journal.ack(p.seq);
        None
    }

    /// Removes the head entry `seq` from the in-memory order.
    fn pop(&self, seq: u64) {
        let mut st = self.lock();
        if st.order.front().is_some_and(|p| p.seq == seq) {
            st.order.pop_front();
        }
        if st.head.as_ref().is_some_and(|(s, _)| *s == seq) {
            st.head = None;
        }
    }
}

impl Backend for JournalBackend {
    fn kind(&self) -> &'static str {
        "journal"
    }

    fn push(&self, req: QueuedRequest) -> Result<(), PushError> {
        if self.lock().closed {
            return Err(PushError::Closed);
        }
        let seq = self.journal.append_payload(&req).map_err(|e| {
            log::error!(
                "{}: cannot journal {} {}: {e}",
                self.journal.dir().display(),
                escaped(&req.method),
                escaped(&req.target)
            );
            PushError::Journal(e)
        })?;
        let appended_at = SystemTime::now();
        // The journal's order is the seq order; appends finish their fsync in any order,
        // so the entry goes where its seq belongs.
        let mut st = self.lock();
        let at = st.order.partition_point(|p| p.seq < seq);
        st.order.insert(at, Pending { seq, appended_at });
        self.ready.notify_one();
        Ok(())
    }

    fn head(&self, wait: Duration) -> Option<Delivery> {
        loop {
            let st = self.lock();
            let (mut st, _) = self
                .ready
                .wait_timeout_while(st, wait, |st| st.order.is_empty() && !st.closed)
                .unwrap_or_else(|p| p.into_inner());
            let first = *st.order.front()?;
            if let Some((seq, req)) = &st.head {
                if *seq == first.seq {
                    return Some(Delivery {
                        req: Arc::clone(req),
                        id: *seq,
                    });
                }
            }
            drop(st);
            match self.load(first) {
                Some(req) => {
                    st = self.lock();
                    st.head = Some((first.seq, Arc::clone(&req)));
                    return Some(Delivery { req, id: first.seq });
                }
                None => self.pop(first.seq),
            }
        }
    }

    fn ack(&self, d: &Delivery) {
        if let Err(e) = self.journal.ack(d.id) {
            log::error!(
                "{}: cannot acknowledge record {}: {e}",
                self.journal.dir().display(),
                d.id
            );
        }
        self.pop(d.id);
    }

    fn dead_letter(&self, d: &Delivery) {
        let waited = d.req.queued_at.elapsed();
        match self.journal.dead_letter(d.id) {
            Ok(()) => log::warn!(
                "{} {} (X-Request-Id {}) queued {waited:.1?}: moved to the dead-letter file",
                escaped(&d.req.method),
                escaped(&d.req.target),
                escaped(&d.req.request_id)
            ),
            Err(e) => log::error!(
                "{}: cannot dead-letter record {}: {e}",
                self.journal.dir().display(),
                d.id
            ),
        }
        self.pop(d.id);
    }

    fn depth(&self) -> usize {
        self.lock().order.len()
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn sync(&self) {
        if let Err(e) = self.journal.sync() {
            log::error!("{}: final sync failed: {e}", self.journal.dir().display());
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::JournalOptions;
    use crate::queue::tests::request;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sq-durable-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Requests go in, come back out in order with their bodies read from disk, and a
    /// reopened journal recovers exactly the unacknowledged ones.
    #[test]
    fn order_and_bodies_survive_a_reopen() {
        let dir = temp_dir("reopen");
        {
            let (journal, recovered, _) = Journal::open(JournalOptions::new(&dir)).unwrap();
            let q = JournalBackend::new(Arc::new(journal), recovered);
            for i in 0..5u8 {
                q.push(request(&vec![i; 100_000 + i as usize])).unwrap();
            }
            let head = q.head(Duration::ZERO).unwrap();
            assert_eq!(head.req.body.to_vec().unwrap(), vec![0; 100_000]);
            q.ack(&head);
            assert_eq!(q.depth(), 4);
        }
        let (journal, recovered, _) = Journal::open(JournalOptions::new(&dir)).unwrap();
        let q = JournalBackend::new(Arc::new(journal), recovered);
        assert_eq!(q.depth(), 4);
        for i in 1..5u8 {
            let head = q.head(Duration::ZERO).unwrap();
            assert_eq!(
                head.req.body.to_vec().unwrap(),
                vec![i; 100_000 + i as usize]
            );
            q.ack(&head);
        }
        assert!(q.head(Duration::ZERO).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
