//! Durable write-ahead journal for the deferred/upfront request queue (SPEC §5, §9).
//!
//! A request answered "Request Buffered"/"Request Queued" is first appended here; the
//! replay thread acknowledges it once an endpoint has answered. At start-up
//! [`Journal::open`] hands back every request that was appended and never
//! acknowledged, in the original order. Delivery is at least once: a lost
//! acknowledgement only causes a redelivery.
//!
//! # Files in the journal directory
//!
//! * `lock` — held with an exclusive `flock` ([`File::try_lock`]) for the journal's
//!   lifetime, so two processes never share a journal; it contains the holder's pid.
//! * `queue-NNNNNNNN.seg` — the log, split into segments numbered upwards (the number
//!   is parsed, so it may outgrow eight digits). The highest-numbered segment is the
//!   *active* one; every write goes there. A segment is rotated once it reaches
//!   `segment_bytes`.
//! * `queue-NNNNNNNN.seg.tmp` — a compaction in progress; removed at start-up.
//! * `dead-letter.log` — requests moved out of the queue (e.g. too old). Same record
//!   format: an APPEND (the request, with its original seq and append time), then —
//!   since ServiceQ 0.1 with `serviceq queue` — a DEAD record with the same seq whose
//!   timestamp is when it was dead-lettered and whose payload is why (UTF-8 text); an
//!   APPEND without a DEAD was written by an older version (reason unknown: max age
//!   was the only one). An ACK there means the request left the dead-letter file
//!   (retried or dropped by an operator). `serviceq queue purge --dead` empties the
//!   file, and so does the last ACK. Read it with [`read_dead_letters`] (or
//!   [`read_records`] for the raw APPENDs).
//!
//! # Record layout (all integers little-endian)
//!
//! ```text
//! offset size field
//!      0    4 magic      AB 53 51 4A  ("\xABSQJ"), marks a record start for resync
//!      4    4 crc32      CRC-32 (IEEE, crc32fast) of bytes 8 .. 32+len
//!      8    4 len        payload length, at most MAX_PAYLOAD (64 MiB)
//!     12    1 kind       1 = START, 2 = APPEND, 3 = ACK, 4 = DEAD (dead-letter file)
//!     13    1 version    1
//!     14    2 reserved   0
//!     16    8 seq        sequence number (see below)
//!     24    8 timestamp  microseconds since the Unix epoch
//!     32  len payload    the queued request (APPEND only; empty otherwise)
//! ```
//!
//! The checksum covers the length, the header fields and the payload, so a flipped bit
//! anywhere but in the magic itself is detected.
//!
//! * START opens every segment; its `seq` is the next sequence number at the time the
//!   segment was created. Because the active segment is never deleted, this keeps
//!   sequence numbers monotonic across restarts even when every record was acknowledged
//!   and every older segment removed.
//! * APPEND carries a request; its `seq` is strictly increasing through the whole log.
//! * ACK acknowledges the APPEND with the same `seq` (delivered, dead-lettered, or
//!   dropped by an operator with `serviceq queue drop`; that ACK is fsynced before the
//!   command returns, so a restart does not bring the request back).
//! * DEAD is written to the dead-letter file only (see above); in a segment it is
//!   ignored. A journal written before DEAD existed opens unchanged; an older ServiceQ
//!   reading a dead-letter file with DEAD records skips them as corrupt records (with
//!   a warning) and keeps every APPEND.
//!
//! # Recovery
//!
//! Segments are read in order and records parsed one after the other. When the bytes at
//! the current offset are not a valid record (bad magic, absurd length, truncated,
//! checksum mismatch), the scanner searches forward, byte by byte, for the next offset
//! holding the magic *and* a record whose checksum verifies:
//!
//! * found — the bytes in between are a corrupt record: skipped with a warning naming
//!   the file and offset, and every record after it is kept;
//! * not found — the rest of the file is a torn tail (a crash in the middle of a write,
//!   or zeros left by a file system after power loss): it is cut off with
//!   `set_len`, with a warning, so new appends follow the last good record.
//!
//! An APPEND whose `seq` is not above the previous APPEND's is ignored with a warning:
//! that can only be a phantom found by resync inside another record's payload (e.g. a
//! queued request whose body is itself a journal file). A phantom *above* the last seq
//! would pass; that needs a corrupt record followed by a payload that embeds a record
//! with a valid CRC, which is accepted as a (redelivered) request — within
//! at-least-once.
//!
//! # Durability and group commit
//!
//! Records are written with one `write` call each, under the state mutex, straight to
//! the file (no user-space buffer, so a process crash loses nothing that `append`
//! returned). With [`Fsync::Always`], `append` then waits until an `fdatasync` that
//! started after its write has finished. One waiter becomes the leader and syncs
//! *outside* the mutex; appends that arrive meanwhile write their records and wait for
//! the next sync, which one of them leads and all of them share. So N concurrent appends
//! cost about two fsyncs rather than N. [`Fsync::Interval`] returns right after the
//! write and a background thread syncs at most every 100 ms; [`Fsync::Never`] leaves it
//! to the OS (a process crash still loses nothing; a power cut may).
//!
//! If an fsync fails the journal refuses every later write: after a failed fsync Linux
//! may have dropped the dirty pages, so a later successful fsync would prove nothing.
//! A restart re-reads the truth from disk.
//!
//! ACK records are not waited for; the next group commit (or the interval thread, or
//! [`Journal::sync`]) makes them durable. A lost ACK means a redelivery.
//!
//! # Keeping the journal bounded
//!
//! An ACK is always written after its APPEND, so it lives in the same or a later
//! segment. Per segment the journal counts APPENDs and how many of those are acked. A
//! segment is *clean* when none of its APPENDs is acked. Walking the non-active segments
//! oldest first:
//!
//! * a segment whose APPENDs are all acked is deleted, provided every older segment is
//!   clean — then none of its ACKs can refer to an APPEND still on disk, so deleting
//!   those ACKs can bring nothing back;
//! * a clean segment holding live requests is passed over;
//! * a segment holding both acked and live APPENDs blocks the ones after it. If a later
//!   segment is waiting to be deleted, it is compacted: its live APPENDs are copied to
//!   `*.seg.tmp`, fsynced and renamed over it (atomic), which makes it clean.
//!
//! The replay thread delivers in FIFO order, so in practice segments are simply deleted
//! oldest first and compaction never runs; it exists so that out-of-order
//! acknowledgements cannot make the journal grow without bound. The active segment is
//! never deleted or compacted.
//!
//! Deletions are made durable (directory fsync) one by one in order, so a crash cannot
//! resurrect an older segment whose ACKs were in a newer, deleted one.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

mod format;
mod recovery;
mod segments;
#[cfg(test)]
mod tests;

use format::*;
pub use format::{read_dead_letters, read_records, DeadLetter};
use segments::*;

/// First four bytes of every record.
pub const MAGIC: [u8; 4] = [0xAB, b'S', b'Q', b'J'];
/// Fixed part of a record, before the payload.
pub const HEADER_LEN: usize = 32;
/// Value of the `version` byte.
pub const FORMAT_VERSION: u8 = 1;
/// Largest payload accepted by `append` and believed on recovery.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Default rotation threshold.
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 << 20;
/// Dead-letter file name, inside the journal directory.
pub const DEAD_LETTER_FILE: &str = "dead-letter.log";
/// Lock file name, inside the journal directory.
pub const LOCK_FILE: &str = "lock";
/// Period of the background fsync with [`Fsync::Interval`].
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

const KIND_START: u8 = 1;
const KIND_APPEND: u8 = 2;
const KIND_ACK: u8 = 3;
const KIND_DEAD: u8 = 4;

/// When appended records are forced to disk: `DEFERRED_Q_FSYNC`, one enum for the
/// configuration and the journal. `Always`: `append` returns only after the record is
/// fsynced (group commit); `Interval`: a background thread fsyncs at most every 100 ms;
/// `Never`: never fsync (except [`Journal::sync`]).
pub use crate::config::FsyncPolicy as Fsync;

/// How to open a journal.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// Journal directory (`DEFERRED_Q_DIR`); created if missing.
    pub dir: PathBuf,
    /// Fsync policy (`DEFERRED_Q_FSYNC`).
    pub fsync: Fsync,
    /// Rotate the active segment once it holds this many bytes.
    pub segment_bytes: u64,
}

impl JournalOptions {
    /// Options with the defaults: `Fsync::Always`, 8 MiB segments.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JournalOptions {
            dir: dir.into(),
            fsync: Fsync::Always,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// A request still queued at start-up, in original append order. Its payload stays on
/// disk until [`Journal::read`] is asked for it, so recovery costs no memory per byte
/// queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub seq: u64,
    pub appended_at: SystemTime,
}

/// A payload written in pieces, for requests whose body is not in memory: its length,
/// and its bytes, produced twice (once for the checksum, once for the file).
pub trait Payload {
    fn payload_len(&self) -> usize;
    fn write_to(&self, out: &mut dyn Write) -> io::Result<()>;
}

impl Payload for &[u8] {
    fn payload_len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(self)
    }
}

/// Payloads up to this size are assembled in memory and written with one `write`.
const STREAMED_PAYLOAD_BYTES: usize = 256 * 1024;

/// A record read from a file (segment or dead-letter file), with its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub seq: u64,
    pub appended_at: SystemTime,
    pub payload: Vec<u8>,
}

/// A journal that cannot be opened.
#[derive(Debug)]
pub enum JournalError {
    /// The directory cannot be created, written or locked.
    Dir { path: PathBuf, source: io::Error },
    /// A segment cannot be read or repaired.
    Io { path: PathBuf, source: io::Error },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Dir { path, source } | JournalError::Io { path, source } => {
                write!(f, "{}: {}", path.display(), source)
            }
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Dir { source, .. } | JournalError::Io { source, .. } => Some(source),
        }
    }
}

/// A write-ahead journal of queued requests. `Send + Sync`: share it in an `Arc`.
pub struct Journal {
    inner: Arc<Inner>,
    /// The `Fsync::Interval` background thread.
    syncer: Option<JoinHandle<()>>,
}

impl Journal {
    /// Appends one request; returns its sequence number once the record is durable per
    /// the fsync policy. Payloads over [`MAX_PAYLOAD`] are refused (`InvalidInput`).
    ///
    /// If the fsync fails the error is returned, but the record may still be on disk
    /// and be delivered after a restart (at least once).
    pub fn append(&self, payload: &[u8]) -> io::Result<u64> {
        self.append_payload(&payload)
    }

    /// [`append`](Self::append) for a payload produced in pieces. A large payload is
    /// read twice: once outside the lock for its checksum, once into the file, through
    /// a bounded buffer, so a request body never has to be in memory whole.
    pub fn append_payload(&self, payload: &dyn Payload) -> io::Result<u64> {
        let len = payload.payload_len();
        if len > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("request of {len} bytes is over the journal's {MAX_PAYLOAD}-byte cap"),
            ));
        }
        let mut crc = HashWriter(crc32fast::Hasher::new());
        payload.write_to(&mut crc)?;
        let payload_crc = crc.0;
        let micros = now_micros();
        let (seq, lsn) = {
            let mut st = self.inner.lock()?;
            st.check_failed()?;
            let seq = st.next_seq;
            let next = seq
                .checked_add(1)
                .ok_or_else(|| io::Error::other("journal sequence numbers exhausted"))?;
            let header = header(KIND_APPEND, seq, micros, len, payload_crc.clone());
            let total = (HEADER_LEN + len) as u64;
            let (seg, offset) = self.inner.write_record_with(&mut st, total, &mut |out| {
                out.write_all(&header)?;
                payload.write_to(out)
            })?;
            st.next_seq = next;
            let loc = Loc {
                micros,
                seg,
                offset,
                len: len as u32,
            };
            st.pending.insert(seq, loc);
            st.active_seg().add_append(seq);
            (seq, st.written)
        };
        if self.inner.fsync == Fsync::Always {
            self.inner.wait_durable(lsn)?;
        }
        Ok(seq)
    }

    /// The payload of an unacknowledged request, read back from its segment (and its
    /// checksum verified). A compaction may move the record meanwhile; the read is
    /// then done again at its new place.
    pub fn read(&self, seq: u64) -> io::Result<Vec<u8>> {
        for _ in 0..3 {
            let loc = {
                let st = self.inner.lock()?;
                st.pending.get(&seq).copied()
            };
            let Some(loc) = loc else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("record {seq} is not queued"),
                ));
            };
            let mut buf = vec![0u8; HEADER_LEN + loc.len as usize];
            let path = self.inner.seg_path(loc.seg);
            match File::open(&path).and_then(|f| f.read_exact_at(&mut buf, loc.offset)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            }
            if matches!(parse_at(&buf, 0), Ok(r) if r.kind == KIND_APPEND && r.seq == seq) {
                buf.drain(..HEADER_LEN);
                return Ok(buf);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("record {seq} does not read back (corrupt on disk?)"),
        ))
    }

    /// Acknowledges a delivered request. Unknown or already acknowledged seqs are
    /// ignored. The ACK is not fsynced here (losing it only means a redelivery). May
    /// delete or compact old segments; an error from that is returned after the ACK
    /// itself was written, and the clean-up is retried on the next ACK.
    pub fn ack(&self, seq: u64) -> io::Result<()> {
        let mut st = self.inner.lock()?;
        st.check_failed()?;
        if !st.pending.contains_key(&seq) {
            return Ok(());
        }
        let rec = encode(KIND_ACK, seq, now_micros(), &[]);
        self.inner.write_record(&mut st, &rec)?;
        st.pending.remove(&seq);
        if let Some(seg) = st.segments.iter_mut().find(|s| s.holds(seq)) {
            seg.acked += 1;
            if seg.fully_acked() {
                st.gc_due = true;
            }
        }
        if st.gc_due {
            self.inner.gc(&mut st)?;
        }
        Ok(())
    }

    /// Moves a request to `dead-letter.log` (fsynced unless `Fsync::Never`) and then
    /// acknowledges it. A seq that is not pending is ignored. A crash between the two
    /// steps leaves the request in both places (delivered once more, at least once).
    pub fn dead_letter(&self, seq: u64) -> io::Result<()> {
        self.dead_letter_because(seq, "")
    }

    /// [`dead_letter`](Self::dead_letter), with a DEAD record saying why (`reason`) and
    /// when, written in the same `write` as the request's APPEND.
    pub fn dead_letter_because(&self, seq: u64, reason: &str) -> io::Result<()> {
        // Held across the ACK so the same seq is never dead-lettered twice.
        let mut dead = self.inner.dead.lock().map_err(|_| poisoned())?;
        let micros = {
            let st = self.inner.lock()?;
            st.check_failed()?;
            match st.pending.get(&seq) {
                Some(loc) => loc.micros,
                None => return Ok(()),
            }
        };
        let payload = self.read(seq)?;
        let payload = payload.as_slice();
        let path = self.inner.dir.join(DEAD_LETTER_FILE);
        if dead.is_none() {
            let existed = path.exists();
            let file = OpenOptions::new().append(true).create(true).open(&path)?;
            if !existed && self.inner.fsync != Fsync::Never {
                sync_dir(&self.inner.dir)?;
            }
            *dead = Some(file);
        }
        if let Some(file) = dead.as_mut() {
            let before = file.metadata()?.len();
            // The original seq and append time, so tools can tell what it was and how
            // long it waited.
            let mut rec = encode(KIND_APPEND, seq, micros, payload);
            if !reason.is_empty() {
                let why = &reason.as_bytes()[..reason.len().min(4096)];
                rec.extend_from_slice(&encode(KIND_DEAD, seq, now_micros(), why));
            }
            if let Err(e) = file.write_all(&rec) {
                // Best effort: a fragment left behind is skipped by readers anyway.
                let _ = file.set_len(before);
                return Err(e);
            }
            if self.inner.fsync != Fsync::Never {
                // Durable before the ACK, or a crash could lose the request entirely.
                file.sync_data()?;
            }
        }
        self.ack(seq)
    }

    /// The dead-letter file's requests (see [`read_dead_letters`]).
    pub fn dead_letters(&self) -> io::Result<(Vec<DeadLetter>, Vec<String>)> {
        let _dead = self.inner.dead.lock().map_err(|_| poisoned())?;
        read_dead_letters(&self.inner.dir.join(DEAD_LETTER_FILE))
    }

    /// Takes requests out of the dead-letter file: an ACK for each `seq` (fsynced
    /// unless `Fsync::Never`); once none is left, the file is emptied.
    pub fn remove_dead(&self, seqs: &[u64]) -> io::Result<()> {
        let mut dead = self.inner.dead.lock().map_err(|_| poisoned())?;
        let path = self.inner.dir.join(DEAD_LETTER_FILE);
        let mut file = match dead.take() {
            Some(f) => f,
            None => OpenOptions::new().append(true).create(true).open(&path)?,
        };
        let mut recs = Vec::with_capacity(seqs.len() * HEADER_LEN);
        for &seq in seqs {
            recs.extend_from_slice(&encode(KIND_ACK, seq, now_micros(), &[]));
        }
        let res = file.write_all(&recs).and_then(|()| {
            if read_dead_letters(&path)?.0.is_empty() {
                file.set_len(0)?;
            }
            match self.inner.fsync {
                Fsync::Never => Ok(()),
                _ => file.sync_data(),
            }
        });
        *dead = Some(file);
        res
    }

    /// Empties the dead-letter file (`serviceq queue purge --dead`); how many requests
    /// it held.
    pub fn purge_dead(&self) -> io::Result<usize> {
        let mut dead = self.inner.dead.lock().map_err(|_| poisoned())?;
        let path = self.inner.dir.join(DEAD_LETTER_FILE);
        let held = read_dead_letters(&path)?.0.len();
        let file = match dead.take() {
            Some(f) => f,
            None => match OpenOptions::new().append(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            },
        };
        let res = file.set_len(0).and_then(|()| file.sync_data());
        *dead = Some(file);
        res.map(|()| held)
    }

    /// An operator's drop of a queued request: its ACK, made durable before this
    /// returns so a restart does not bring the request back. A seq that is not queued
    /// is ignored.
    pub fn drop_queued(&self, seq: u64) -> io::Result<()> {
        self.ack(seq)?;
        let target = self.inner.lock()?.written;
        self.inner.wait_durable(target)
    }

    /// `len` bytes of queued record `seq`'s payload from byte `from` — no checksum is
    /// verified (meant for listing: [`read`](Self::read) the whole record to deliver it).
    pub fn read_part(&self, seq: u64, from: u64, len: usize) -> io::Result<Vec<u8>> {
        let loc = self
            .inner
            .lock()?
            .pending
            .get(&seq)
            .copied()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("record {seq} is not queued"),
                )
            })?;
        if from.saturating_add(len as u64) > u64::from(loc.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record {seq}: read past its payload"),
            ));
        }
        let mut buf = vec![0u8; len];
        let path = self.inner.seg_path(loc.seg);
        File::open(&path)?.read_exact_at(&mut buf, loc.offset + HEADER_LEN as u64 + from)?;
        Ok(buf)
    }

    /// Bytes currently used by segment files.
    pub fn disk_bytes(&self) -> u64 {
        let st = match self.inner.state.lock() {
            Ok(st) => st,
            Err(p) => p.into_inner(),
        };
        st.segments.iter().map(|s| s.bytes).sum()
    }

    /// Number of fsyncs of segment files so far (group commit makes this far smaller
    /// than the number of appends under concurrency).
    pub fn fsync_count(&self) -> u64 {
        self.inner.fsyncs.load(Ordering::Relaxed)
    }

    /// Requests appended and not yet acknowledged.
    pub fn pending(&self) -> usize {
        match self.inner.state.lock() {
            Ok(st) => st.pending.len(),
            Err(p) => p.into_inner().pending.len(),
        }
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Fsyncs everything written so far, whatever the policy: every segment, the
    /// directory and the dead-letter file. Meant for shutdown.
    pub fn sync(&self) -> io::Result<()> {
        let (target, older) = {
            let st = self.inner.lock()?;
            let older: Vec<u64> = st
                .segments
                .iter()
                .take(st.segments.len() - 1)
                .map(|s| s.id)
                .collect();
            (st.written, older)
        };
        if self.inner.fsync == Fsync::Never {
            // With Never, rotation did not sync the segments it closed.
            for id in older {
                match File::open(self.inner.seg_path(id)) {
                    Ok(f) => {
                        f.sync_data()?;
                        self.inner.count_fsync();
                    }
                    // Deleted by a concurrent ACK meanwhile: nothing to sync.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.inner.wait_durable(target)?;
        sync_dir(&self.inner.dir)?;
        let dead = self.inner.dead.lock().map_err(|_| poisoned())?;
        if let Some(f) = dead.as_ref() {
            f.sync_data()?;
        }
        Ok(())
    }
}

impl Drop for Journal {
    /// Stops the interval thread and, unless the policy is `Never`, fsyncs what is left
    /// (the latest ACKs, at least). The lock is released when the last file closes.
    fn drop(&mut self) {
        if let Some(handle) = self.syncer.take() {
            if let Ok(mut stop) = self.inner.stop.lock() {
                *stop = true;
            }
            self.inner.stop_cv.notify_all();
            let _ = handle.join();
        }
        if self.inner.fsync != Fsync::Never {
            // Best effort: nothing can report an error from drop, and everything that
            // `append` promised is already durable.
            let _ = self.sync();
        }
    }
}

fn interval_syncer(inner: &Inner) {
    loop {
        {
            let Ok(stop) = inner.stop.lock() else { return };
            let Ok((stop, _)) = inner
                .stop_cv
                .wait_timeout_while(stop, SYNC_INTERVAL, |stop| !*stop)
            else {
                return;
            };
            if *stop {
                return;
            }
        }
        let target = match inner.lock() {
            Ok(st) if st.failed.is_none() && st.synced < st.written => st.written,
            Ok(_) => continue,
            Err(_) => return,
        };
        // A failure is recorded in the state; the next append reports it.
        let _ = inner.wait_durable(target);
    }
}
