//! What `serviceq queue` asks of the shared queue: the entries of either stream as
//! they are, and the operator's changes (drop, retry a dead letter, purge). None of
//! these needs the lease: they change the streams only in ways the fenced ACK and
//! DEAD scripts already tolerate (an entry that has gone is skipped by both), and the
//! replay loop asks [`RedisQueue::exists`] before each try of its head.

use std::time::Duration;

use redis::Value;

use super::{lock, scripts, EntryId, Inner, RedisQueue, RedisQueueError};

/// Which stream an operation reads or changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Queue,
    Dead,
}

/// One entry of either stream, with its age on the engine's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: EntryId,
    /// The field/value pairs, in the order the engine keeps them.
    pub fields: Vec<(String, Vec<u8>)>,
    /// The engine's time now minus the entry id's milliseconds.
    pub age: Duration,
    /// The engine's time now (Unix ms).
    pub now_ms: u64,
}

impl Stored {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// What RETRY did with one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    Moved,
    /// Not in the dead-letter stream any more (another operator took it).
    Gone,
    /// The queue is at its cap: the dead letter stays.
    Full,
}

impl RedisQueue {
    /// The oldest `limit` entries of `which` (`usize::MAX`: all of them).
    pub fn entries(&self, which: Stream, limit: usize) -> Result<Vec<Stored>, RedisQueueError> {
        self.inner.entries(which, limit)
    }

    /// Deletes these entries of `which`; how many were there.
    pub fn remove(&self, which: Stream, ids: &[EntryId]) -> Result<u64, RedisQueueError> {
        let inner = &self.inner;
        if ids.is_empty() {
            return Ok(0);
        }
        let key = inner.key(which);
        let r = inner.call(|conn| {
            let mut cmd = redis::cmd("XDEL");
            cmd.arg(key);
            for id in ids {
                cmd.arg(&id.0);
            }
            cmd.query::<u64>(conn)
        });
        // The head cached from the last reply may be one of them.
        *lock(&inner.next) = None;
        inner.note(r)
    }

    /// Moves one dead letter to the queue's tail (one script: the cap check, XADD,
    /// XDEL), stamped as buffered by this instance.
    pub fn retry_dead(&self, id: &EntryId) -> Result<Retried, RedisQueueError> {
        let inner = &self.inner;
        let r = inner.call(|conn| {
            inner
                .scripts
                .retry
                .key(&inner.keys.dead)
                .key(&inner.keys.stream)
                .arg(&id.0)
                .arg(inner.opts.max_len)
                .arg(&inner.opts.instance_id)
                .invoke::<i64>(conn)
        });
        Ok(match inner.note(r)? {
            1 => Retried::Moved,
            -1 => Retried::Full,
            _ => Retried::Gone,
        })
    }

    /// Deletes the dead-letter stream; how many entries it held.
    pub fn purge_dead(&self) -> Result<u64, RedisQueueError> {
        let inner = &self.inner;
        let r = inner.call(|conn| {
            inner
                .scripts
                .purge
                .key(&inner.keys.dead)
                .invoke::<u64>(conn)
        });
        inner.note(r)
    }

    /// Whether entry `id` is still in the queue. A dropped one is also forgotten as
    /// the cached next head, so `head` reads the real one.
    pub fn exists(&self, id: &EntryId) -> Result<bool, RedisQueueError> {
        let inner = &self.inner;
        let r = inner.call(|conn| {
            redis::cmd("XRANGE")
                .arg(&inner.keys.stream)
                .arg(&id.0)
                .arg(&id.0)
                .query::<Value>(conn)
        });
        let found = !scripts::parse_range(inner.note(r)?)?.is_empty();
        if !found {
            *lock(&inner.next) = None;
        }
        Ok(found)
    }
}

impl Inner {
    fn key(&self, which: Stream) -> &str {
        match which {
            Stream::Queue => &self.keys.stream,
            Stream::Dead => &self.keys.dead,
        }
    }

    fn entries(&self, which: Stream, limit: usize) -> Result<Vec<Stored>, RedisQueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = self.key(which);
        let r = self.engine.run(self.deadline(), |conn, d| {
            d.arm(conn)?;
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query(conn)?;
            d.arm(conn)?;
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(key).arg("-").arg("+");
            if limit < usize::MAX {
                cmd.arg("COUNT").arg(limit);
            }
            let range = cmd.query::<Value>(conn)?;
            Ok((secs * 1000 + micros / 1000, range))
        });
        let (now_ms, range) = self.note(r)?;
        let rows = scripts::parse_range(range)?;
        Ok(rows
            .into_iter()
            .map(|(id, fields)| Stored {
                age: Duration::from_millis(
                    now_ms.saturating_sub(scripts::id_millis(&id).unwrap_or(now_ms)),
                ),
                id: EntryId(id),
                fields,
                now_ms,
            })
            .collect())
    }
}
