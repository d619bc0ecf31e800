//! The journal queue backend (`DEFERRED_Q_DIR`): every queued request is a record in
//! [`Journal`]. Memory holds only the order of the queue — each entry's sequence number
//! and append time — so 2,000 queued 1 MiB requests cost kilobytes, not 2 GiB; the
//! head's payload is read back from its segment when it is delivered.
//!
//! Operating the queue ([`super::ops`]): a listing reads each record's method, target,
//! id and body length in a few small reads (never the body); a drop is an ACK fsynced
//! before it returns; a retried dead letter is appended again (new seq, its age from
//! now) and then acknowledged in the dead-letter file. The head's delivery tries are
//! counted in memory only: they start from 0 again after a restart.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::ops::{DeadInfo, Listed, OpsError, Removed, Select, Shown};
use super::{Backend, Delivery, PushError, QueuedRequest, Summary};
use crate::logging::escaped;
use crate::queue::journal::{DeadLetter, Journal, Pending};

struct State {
    /// Queued records, oldest first.
    order: VecDeque<Pending>,
    /// The head, read back and decoded once for all its delivery tries.
    head: Option<(u64, Arc<QueuedRequest>)>,
    /// The head's seq and its delivery tries so far.
    tries: super::ops::Tries,
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
                tries: None,
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
                    if st.order.front().is_none_or(|p| p.seq != first.seq) {
                        continue; // dropped by an operator meanwhile
                    }
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
        self.dead_letter_because(d, "max age (DEFERRED_Q_MAX_AGE)")
    }

    fn dead_letter_because(&self, d: &Delivery, reason: &str) {
        let waited = d.req.queued_at.elapsed();
        match self.journal.dead_letter_because(d.id, reason) {
            Ok(()) => log::warn!(
                "{} queued {waited:.1?}: moved to the dead-letter file",
                d.req.named()
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

    fn attempt(&self, d: &Delivery) -> bool {
        let mut st = self.lock();
        if st.order.front().is_none_or(|p| p.seq != d.id) {
            return false;
        }
        super::ops::count_try(&mut st.tries, d.id);
        true
    }

    fn list(&self, limit: usize) -> Result<Vec<Listed>, OpsError> {
        let rows = self.summaries(limit)?;
        Ok(rows.into_iter().map(|(_, l)| l).collect())
    }

    fn list_dead(&self, limit: usize) -> Result<Vec<Listed>, OpsError> {
        let rows = self.dead_rows()?;
        Ok(rows.into_iter().take(limit).map(|(_, l, _)| l).collect())
    }

    fn show(&self, id: &str) -> Result<Shown, OpsError> {
        let queued = self.summaries(usize::MAX)?;
        let queued: Vec<_> = queued
            .into_iter()
            .filter(|(_, l)| l.request_id == id)
            .collect();
        let dead: Vec<_> = self
            .dead_rows()?
            .into_iter()
            .filter(|(_, l, _)| l.request_id == id)
            .collect();
        let sharing = queued.len() + dead.len();
        let (entry, req) = match (queued.into_iter().next(), dead.into_iter().next()) {
            (Some((seq, entry)), _) => {
                let payload = self.journal.read(seq)?;
                (entry, decode(&payload, SystemTime::now())?)
            }
            (None, Some((_, entry, req))) => (entry, req),
            (None, None) => return Err(OpsError::NotFound(id.to_string())),
        };
        Ok(Shown {
            entry,
            request_line: req.request_line,
            headers: req.headers,
            body: req.body.to_vec()?,
            sharing,
        })
    }

    fn retry_dead(&self, which: &Select) -> Result<usize, OpsError> {
        let (dead, _) = self.journal.dead_letters()?;
        let chosen: Vec<DeadLetter> = dead
            .into_iter()
            .filter(|d| which.matches(&dead_id(d)))
            .collect();
        let mut seqs = Vec::with_capacity(chosen.len());
        for d in &chosen {
            self.push_payload(&d.payload)?;
            seqs.push(d.seq);
        }
        if !seqs.is_empty() {
            self.journal.remove_dead(&seqs)?;
        }
        Ok(seqs.len())
    }

    fn remove(&self, ids: &[String]) -> Result<Removed, OpsError> {
        let queued = self.summaries(usize::MAX)?;
        let seqs = queued.iter().filter(|(_, l)| ids.contains(&l.request_id));
        let mut out = Removed::default();
        for &(seq, _) in seqs {
            let in_delivery = {
                let mut st = self.lock();
                st.order.retain(|p| p.seq != seq);
                st.head.take_if(|(s, _)| *s == seq).is_some()
            };
            self.journal.drop_queued(seq)?;
            out.queued += 1;
            out.holds_freed += usize::from(!in_delivery);
        }
        let dead: Vec<u64> = self
            .dead_rows()?
            .iter()
            .filter(|(_, l, _)| ids.contains(&l.request_id))
            .map(|(seq, _, _)| *seq)
            .collect();
        if !dead.is_empty() {
            self.journal.remove_dead(&dead)?;
        }
        out.dead = dead.len();
        Ok(out)
    }

    fn purge_dead(&self) -> Result<usize, OpsError> {
        Ok(self.journal.purge_dead()?)
    }
}

fn decode(payload: &[u8], at: SystemTime) -> Result<QueuedRequest, OpsError> {
    QueuedRequest::decode(payload, at)
        .map_err(|why| OpsError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, why)))
}

/// A dead letter's X-Request-Id ("" if its payload does not decode).
fn dead_id(d: &DeadLetter) -> String {
    QueuedRequest::decode(&d.payload, d.appended_at)
        .map_or_else(|_| String::new(), |r| r.request_id)
}

fn age(since: SystemTime) -> Duration {
    SystemTime::now().duration_since(since).unwrap_or_default()
}

impl JournalBackend {
    /// The first `limit` queued records with their listing lines (records delivered
    /// while this reads are left out).
    fn summaries(&self, limit: usize) -> Result<Vec<(u64, Listed)>, OpsError> {
        let (order, tries): (Vec<Pending>, _) = {
            let st = self.lock();
            (st.order.iter().take(limit).copied().collect(), st.tries)
        };
        let mut out = Vec::with_capacity(order.len());
        for (i, p) in order.iter().enumerate() {
            let mut read = |from: u64, len: usize| self.journal.read_part(p.seq, from, len);
            let s: Summary = match QueuedRequest::summarize(&mut read) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let attempts = super::ops::tries_of(tries, p.seq);
            out.push((
                p.seq,
                Listed {
                    position: i + 1,
                    request_id: s.request_id,
                    method: s.method,
                    target: s.target,
                    body_bytes: s.body_bytes,
                    age: age(p.appended_at),
                    attempts,
                    dead: None,
                },
            ));
        }
        Ok(out)
    }

    /// The dead-letter file's requests, decoded (undecodable ones are left out, with a
    /// warning).
    fn dead_rows(&self) -> Result<Vec<(u64, Listed, QueuedRequest)>, OpsError> {
        let (dead, warnings) = self.journal.dead_letters()?;
        for w in warnings {
            log::warn!("queue journal: {w}");
        }
        let mut out = Vec::with_capacity(dead.len());
        for (i, d) in dead.into_iter().enumerate() {
            let req = match QueuedRequest::decode(&d.payload, d.appended_at) {
                Ok(req) => req,
                Err(why) => {
                    log::warn!("dead letter {} does not decode: {why}", d.seq);
                    continue;
                }
            };
            let entry = Listed {
                position: i + 1,
                request_id: req.request_id.clone(),
                method: req.method.clone(),
                target: req.target.clone(),
                body_bytes: req.body.len(),
                age: age(d.appended_at),
                attempts: 0,
                dead: Some(DeadInfo {
                    reason: d.reason,
                    at: d.dead_at,
                }),
            };
            out.push((d.seq, entry, req));
        }
        Ok(out)
    }

    /// Appends an already encoded request at the tail (a retried dead letter).
    fn push_payload(&self, payload: &[u8]) -> Result<(), OpsError> {
        let seq = self.journal.append(payload)?;
        let mut st = self.lock();
        let at = st.order.partition_point(|p| p.seq < seq);
        let appended_at = SystemTime::now();
        st.order.insert(at, Pending { seq, appended_at });
        self.ready.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::journal::JournalOptions;
    use crate::queue::tests::{ids, request, with_id};

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sq-durable-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Listing reads each record's fields without its body; a drop of the head being
    /// delivered makes the replay loop's next `attempt` false and frees no slot itself;
    /// dead letters come back in their order with their reason.
    #[test]
    fn operating_the_journal_queue() {
        let dir = temp_dir("ops");
        let (journal, recovered, _) = Journal::open(JournalOptions::new(&dir)).unwrap();
        let q = JournalBackend::new(Arc::new(journal), recovered);
        for id in ["a", "b", "c", "d"] {
            q.push(with_id(id, &vec![7; 300_000])).unwrap();
        }
        let head = q.head(Duration::ZERO).unwrap();
        assert!(q.attempt(&head) && q.attempt(&head));
        let list = q.list(usize::MAX).unwrap();
        let got: Vec<(usize, &str, u64, u32)> = list
            .iter()
            .map(|l| (l.position, l.request_id.as_str(), l.body_bytes, l.attempts))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "a", 300_000, 2),
                (2, "b", 300_000, 0),
                (3, "c", 300_000, 0),
                (4, "d", 300_000, 0)
            ]
        );
        assert_eq!(
            (list[0].method.as_str(), list[0].target.as_str()),
            ("POST", "/orders?x=1")
        );
        assert_eq!(q.list(2).unwrap().len(), 2);

        let removed = q.remove(&["a".into(), "c".into()]).unwrap();
        assert_eq!(
            (removed.queued, removed.dead, removed.holds_freed),
            (2, 0, 1)
        );
        assert!(!q.attempt(&head), "the dropped head is let go");
        assert_eq!(q.depth(), 2);
        let next = q.head(Duration::ZERO).unwrap();
        assert_eq!(next.req.request_id, "b");
        q.dead_letter_because(&next, "max age: test");
        let next = q.head(Duration::ZERO).unwrap();
        q.dead_letter_because(&next, "max age: test");
        let dead = q.list_dead(usize::MAX).unwrap();
        assert_eq!(ids(dead.clone()), ["b", "d"]);
        assert_eq!(
            dead[0].dead.as_ref().unwrap().reason.as_deref(),
            Some("max age: test")
        );
        assert_eq!(q.show("d").unwrap().body, vec![7; 300_000]);

        assert_eq!(
            q.retry_dead(&Select::Ids(vec!["d".into(), "b".into()]))
                .unwrap(),
            2
        );
        assert!(q.list_dead(usize::MAX).unwrap().is_empty());
        assert_eq!(
            ids(q.list(9).unwrap()),
            ["b", "d"],
            "retried in dead-letter order"
        );
        assert!(matches!(q.show("zz"), Err(OpsError::NotFound(_))));
        std::fs::remove_dir_all(&dir).unwrap();
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
