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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

// ---------------------------------------------------------------------------------------
// Record encoding and scanning
// ---------------------------------------------------------------------------------------

/// A record header for a payload of `len` bytes whose own CRC-32 is `payload_crc`.
fn header(
    kind: u8,
    seq: u64,
    micros: u64,
    len: usize,
    payload_crc: crc32fast::Hasher,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    // Callers check len <= MAX_PAYLOAD, so this fits in u32.
    h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    h[12..16].copy_from_slice(&[kind, FORMAT_VERSION, 0, 0]);
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&micros.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[8..]);
    crc.combine(&payload_crc);
    h[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    h
}

/// A `Write` that only feeds a checksum.
struct HashWriter(crc32fast::Hasher);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A `Write` that counts what went through it.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Counting<W> {
    fn new(inner: W) -> Self {
        Counting { inner, count: 0 }
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn encode(kind: u8, seq: u64, micros: u64, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&[0; 4]); // crc, filled in below
                                    // Callers check payload.len() <= MAX_PAYLOAD, so this fits in u32.
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&[kind, FORMAT_VERSION, 0, 0]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&micros.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[8..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

#[derive(Debug, Clone, Copy)]
struct Rec<'a> {
    kind: u8,
    seq: u64,
    micros: u64,
    payload: &'a [u8],
    /// Header plus payload.
    total: usize,
}

/// Why the bytes at an offset are not a record (for warnings).
#[derive(Debug, Clone, Copy)]
enum Bad {
    Magic,
    Truncated,
    TooLong(u32),
    Checksum,
    Format,
}

impl fmt::Display for Bad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bad::Magic => f.write_str("no record magic"),
            Bad::Truncated => f.write_str("incomplete record"),
            Bad::TooLong(n) => write!(f, "length {n} over the {MAX_PAYLOAD}-byte cap"),
            Bad::Checksum => f.write_str("checksum mismatch"),
            Bad::Format => f.write_str("unknown record kind or version"),
        }
    }
}

fn parse_at(buf: &[u8], off: usize) -> Result<Rec<'_>, Bad> {
    let rest = &buf[off..];
    if rest.len() < MAGIC.len() {
        // A few stray bytes at the very end: a torn header.
        return Err(if MAGIC.starts_with(rest) {
            Bad::Truncated
        } else {
            Bad::Magic
        });
    }
    if rest[..4] != MAGIC {
        return Err(Bad::Magic);
    }
    if rest.len() < HEADER_LEN {
        return Err(Bad::Truncated);
    }
    let len = u32_at(rest, 8);
    if len as usize > MAX_PAYLOAD {
        return Err(Bad::TooLong(len));
    }
    let total = HEADER_LEN + len as usize;
    if rest.len() < total {
        return Err(Bad::Truncated);
    }
    if crc32fast::hash(&rest[8..total]) != u32_at(rest, 4) {
        return Err(Bad::Checksum);
    }
    let kind = rest[12];
    if rest[13] != FORMAT_VERSION
        || rest[14] != 0
        || rest[15] != 0
        || !matches!(kind, KIND_START | KIND_APPEND | KIND_ACK | KIND_DEAD)
    {
        return Err(Bad::Format);
    }
    Ok(Rec {
        kind,
        seq: u64_at(rest, 16),
        micros: u64_at(rest, 24),
        payload: &rest[HEADER_LEN..total],
        total,
    })
}

/// Next offset at or after `from` where a record with a valid checksum starts.
fn resync(buf: &[u8], from: usize) -> Option<usize> {
    let mut p = from;
    while p + HEADER_LEN <= buf.len() {
        if buf[p] == MAGIC[0] && parse_at(buf, p).is_ok() {
            return Some(p);
        }
        p += 1;
    }
    None
}

struct Scan<'a> {
    /// Valid records with their offsets, in file order.
    records: Vec<(usize, Rec<'a>)>,
    /// Corrupt records skipped in the middle: (offset, bytes skipped, reason, claimed seq).
    skipped: Vec<(usize, usize, Bad, Option<u64>)>,
    /// End of the last valid record; anything after it is a torn tail.
    valid_end: usize,
    /// Why the tail was rejected, when there is one.
    tail: Option<Bad>,
}

fn scan(buf: &[u8]) -> Scan<'_> {
    let mut s = Scan {
        records: Vec::new(),
        skipped: Vec::new(),
        valid_end: buf.len(),
        tail: None,
    };
    let mut off = 0;
    while off < buf.len() {
        match parse_at(buf, off) {
            Ok(rec) => {
                s.records.push((off, rec));
                off += rec.total;
            }
            Err(bad) => match resync(buf, off + 1) {
                Some(next) => {
                    // The header may be intact (only the payload damaged); the seq it
                    // claims helps an operator, but it is unverified.
                    let claimed = (buf.len() >= off + HEADER_LEN && buf[off..off + 4] == MAGIC)
                        .then(|| u64_at(buf, off + 16));
                    s.skipped.push((off, next - off, bad, claimed));
                    off = next;
                }
                None => {
                    s.valid_end = off;
                    s.tail = Some(bad);
                    break;
                }
            },
        }
    }
    s
}

fn skipped_warnings(path: &Path, scan: &Scan<'_>) -> Vec<String> {
    scan.skipped
        .iter()
        .map(|(off, n, bad, claimed)| {
            let claim = match claimed {
                Some(seq) => format!(", header claims seq {seq}"),
                None => String::new(),
            };
            format!(
                "{}: corrupt record at offset {off} skipped ({bad}; {n} bytes{claim})",
                path.display()
            )
        })
        .collect()
}

/// Reads every APPEND record of a journal file — a segment or `dead-letter.log` — in
/// file order, without applying ACKs and without repairing anything. Warnings name
/// skipped corrupt records and a torn tail. Meant for inspection and replay tools.
pub fn read_records(path: &Path) -> io::Result<(Vec<Recovered>, Vec<String>)> {
    let buf = fs::read(path)?;
    let scan = scan(&buf);
    let mut warnings = skipped_warnings(path, &scan);
    if let Some(bad) = scan.tail {
        warnings.push(format!(
            "{}: torn tail at offset {} ignored ({bad}; {} bytes)",
            path.display(),
            scan.valid_end,
            buf.len() - scan.valid_end
        ));
    }
    let records = scan
        .records
        .iter()
        .filter(|(_, r)| r.kind == KIND_APPEND)
        .map(|(_, r)| Recovered {
            seq: r.seq,
            appended_at: from_micros(r.micros),
            payload: r.payload.to_vec(),
        })
        .collect();
    Ok((records, warnings))
}

/// A request in the dead-letter file, with why and when it got there (None for a
/// record written before DEAD records existed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub seq: u64,
    pub appended_at: SystemTime,
    pub dead_at: Option<SystemTime>,
    pub reason: Option<String>,
    pub payload: Vec<u8>,
}

/// The requests still in a dead-letter file, in file order: APPENDs with their DEAD
/// notes, less those an ACK took out. A missing file holds none.
pub fn read_dead_letters(path: &Path) -> io::Result<(Vec<DeadLetter>, Vec<String>)> {
    let buf = match fs::read(path) {
        Ok(buf) => buf,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e),
    };
    let scan = scan(&buf);
    let warnings = skipped_warnings(path, &scan);
    let mut out: Vec<DeadLetter> = Vec::new();
    for (_, r) in &scan.records {
        match r.kind {
            KIND_APPEND => out.push(DeadLetter {
                seq: r.seq,
                appended_at: from_micros(r.micros),
                dead_at: None,
                reason: None,
                payload: r.payload.to_vec(),
            }),
            KIND_DEAD => {
                if let Some(d) = out.iter_mut().rev().find(|d| d.seq == r.seq) {
                    d.dead_at = Some(from_micros(r.micros));
                    d.reason = Some(String::from_utf8_lossy(r.payload).into_owned());
                }
            }
            KIND_ACK => out.retain(|d| d.seq != r.seq),
            _ => {}
        }
    }
    Ok((out, warnings))
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_micros(micros: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_micros(micros))
        .unwrap_or(UNIX_EPOCH)
}

fn segment_name(id: u64) -> String {
    format!("queue-{id:08}.seg")
}

/// Segment id from a file name, for `queue-<digits>.seg`.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("queue-")?.strip_suffix(".seg")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

// ---------------------------------------------------------------------------------------
// The journal
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Segment {
    id: u64,
    /// Bytes in the file.
    bytes: u64,
    /// `seq` of the START record (next seq when the segment was created).
    base_seq: u64,
    /// APPEND records physically in the file.
    appends: u64,
    /// Of those, how many are acknowledged (the ACK may be in any later segment).
    acked: u64,
    /// Seq range of the APPENDs in the file (meaningless while `appends == 0`).
    min_seq: u64,
    max_seq: u64,
}

impl Segment {
    fn new(id: u64) -> Self {
        Segment {
            id,
            bytes: 0,
            base_seq: 0,
            appends: 0,
            acked: 0,
            min_seq: 0,
            max_seq: 0,
        }
    }

    fn add_append(&mut self, seq: u64) {
        if self.appends == 0 {
            self.min_seq = seq;
        }
        self.max_seq = seq;
        self.appends += 1;
    }

    fn holds(&self, seq: u64) -> bool {
        self.appends > 0 && self.min_seq <= seq && seq <= self.max_seq
    }

    fn fully_acked(&self) -> bool {
        self.acked >= self.appends
    }
}

/// Where an unacknowledged APPEND record is, and when it was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    micros: u64,
    /// Segment id (its file number) and the record's offset in it.
    seg: u64,
    offset: u64,
    len: u32,
}

struct State {
    /// The active segment (the back of `segments`), opened for append.
    active: Arc<File>,
    /// Oldest first; the last one is the active segment.
    segments: VecDeque<Segment>,
    next_seq: u64,
    /// Unacknowledged seqs → appended-at and where the record is.
    pending: HashMap<u64, Loc>,
    /// Number of records written so far (a log sequence number for group commit).
    written: u64,
    /// All records up to this count are fsynced.
    synced: u64,
    /// A leader is fsyncing outside the mutex.
    syncing: bool,
    /// Set by a failed fsync; every later write is refused.
    failed: Option<String>,
    /// A rotation happened since the last GC pass.
    gc_due: bool,
}

impl State {
    fn check_failed(&self) -> io::Result<()> {
        match &self.failed {
            Some(msg) => Err(io::Error::other(format!(
                "journal refuses writes after an fsync failure ({msg}); restart to recover"
            ))),
            None => Ok(()),
        }
    }

    fn active_seg(&mut self) -> &mut Segment {
        // Invariant: `segments` is never empty (the active segment is always there).
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }
}

struct Inner {
    dir: PathBuf,
    fsync: Fsync,
    segment_bytes: u64,
    state: Mutex<State>,
    /// Signalled whenever a group fsync finishes.
    synced_cv: Condvar,
    /// Dead-letter file, opened on first use.
    dead: Mutex<Option<File>>,
    fsyncs: AtomicU64,
    /// Stop flag for the interval thread.
    stop: Mutex<bool>,
    stop_cv: Condvar,
    /// Held (flock) for the journal's lifetime; released when the file is closed.
    _lock: File,
}

fn poisoned() -> io::Error {
    io::Error::other("journal state poisoned by a panicking thread")
}

impl Inner {
    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| poisoned())
    }

    fn seg_path(&self, id: u64) -> PathBuf {
        self.dir.join(segment_name(id))
    }

    fn count_fsync(&self) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes one encoded record to the active segment, rotating first if it is full.
    /// Returns the segment id and offset it was written at.
    fn write_record(&self, st: &mut State, rec: &[u8]) -> io::Result<(u64, u64)> {
        self.write_record_with(st, rec.len() as u64, &mut |out| out.write_all(rec))
    }

    /// Writes a record of `total` bytes produced by `write` (header then payload) to the
    /// active segment. On any error the partial record is cut off again.
    fn write_record_with(
        &self,
        st: &mut State,
        total: u64,
        write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<(u64, u64)> {
        let bytes = st.active_seg().bytes;
        if bytes >= self.segment_bytes && bytes > HEADER_LEN as u64 {
            self.rotate(st)?;
        }
        let before = st.active_seg().bytes;
        let id = st.active_seg().id;
        let file = Arc::clone(&st.active);
        let written = if total as usize <= STREAMED_PAYLOAD_BYTES + HEADER_LEN {
            let mut out = Counting::new(&*file);
            write(&mut out).map(|()| out.count)
        } else {
            let mut out = Counting::new(BufWriter::with_capacity(STREAMED_PAYLOAD_BYTES, &*file));
            write(&mut out)
                .and_then(|()| out.inner.flush())
                .map(|()| out.count)
        };
        let written = written.and_then(|n| {
            if n == total {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "record of {total} bytes came out as {n}"
                )))
            }
        });
        if let Err(e) = written {
            // Cut a partial record off so the next one follows the last complete one.
            // If even that fails, recovery will skip the fragment as a corrupt record.
            if st.active.set_len(before).is_err() {
                if let Ok(meta) = st.active.metadata() {
                    st.active_seg().bytes = meta.len();
                }
            }
            return Err(e);
        }
        st.active_seg().bytes += total;
        st.written += 1;
        Ok((id, before))
    }

    /// Closes the active segment and starts the next one. Runs under the state mutex;
    /// happens once per `segment_bytes`, so its fsyncs do not matter for throughput.
    fn rotate(&self, st: &mut State) -> io::Result<()> {
        if self.fsync != Fsync::Never {
            // Everything written so far is in the old file: once it is synced, every
            // waiter's record is durable, which keeps the group-commit LSN simple.
            if let Err(e) = st.active.sync_data() {
                st.failed = Some(e.to_string());
                self.synced_cv.notify_all();
                return Err(e);
            }
            self.count_fsync();
            st.synced = st.written;
            self.synced_cv.notify_all();
        }
        let id = st.active_seg().id + 1;
        let (file, bytes) = create_segment(&self.seg_path(id), &self.dir, st.next_seq, self)?;
        st.active = Arc::new(file);
        let mut seg = Segment::new(id);
        seg.bytes = bytes;
        seg.base_seq = st.next_seq;
        st.segments.push_back(seg);
        st.gc_due = true;
        Ok(())
    }

    /// Returns once every record up to `target` is fsynced (group commit: one waiter
    /// syncs outside the mutex while the others write and then share the next sync).
    fn wait_durable(&self, target: u64) -> io::Result<()> {
        let mut st = self.lock()?;
        loop {
            st.check_failed()?;
            if st.synced >= target {
                return Ok(());
            }
            if st.syncing {
                st = self.synced_cv.wait(st).map_err(|_| poisoned())?;
                continue;
            }
            st.syncing = true;
            let goal = st.written;
            let file = Arc::clone(&st.active);
            drop(st);
            let res = file.sync_data();
            self.count_fsync();
            st = self.lock()?;
            st.syncing = false;
            match res {
                Ok(()) => st.synced = st.synced.max(goal),
                Err(e) => st.failed = Some(e.to_string()),
            }
            self.synced_cv.notify_all();
        }
    }

    /// Deletes or compacts non-active segments (see the module doc for why this order
    /// is safe).
    fn gc(&self, st: &mut State) -> io::Result<()> {
        st.gc_due = false;
        let mut i = 0;
        while i + 1 < st.segments.len() {
            let seg = &st.segments[i];
            if seg.fully_acked() {
                let path = self.seg_path(seg.id);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        st.gc_due = true;
                        return Err(io::Error::new(
                            e.kind(),
                            format!("removing {}: {e}", path.display()),
                        ));
                    }
                }
                st.segments.remove(i);
                if self.fsync != Fsync::Never {
                    // Make this deletion durable before the next one (see module doc).
                    sync_dir(&self.dir)?;
                }
                continue;
            }
            if seg.acked == 0 {
                i += 1;
                continue;
            }
            let last = st.segments.len() - 1;
            let blocked = st
                .segments
                .range(i + 1..last)
                .any(|later| later.fully_acked());
            if !blocked {
                break;
            }
            if let Err(e) = self.compact(st, i) {
                st.gc_due = true;
                return Err(e);
            }
            i += 1;
        }
        Ok(())
    }

    /// Rewrites non-active segment `i` with only its unacknowledged APPENDs.
    fn compact(&self, st: &mut State, i: usize) -> io::Result<()> {
        let seg = st.segments[i].clone();
        let path = self.seg_path(seg.id);
        let buf = fs::read(&path)?;
        let mut out = encode(KIND_START, seg.base_seq, now_micros(), &[]);
        let mut kept = Segment::new(seg.id);
        kept.base_seq = seg.base_seq;
        let mut moved = Vec::new();
        for (off, rec) in scan(&buf).records {
            if rec.kind == KIND_APPEND && seg.holds(rec.seq) && st.pending.contains_key(&rec.seq) {
                moved.push((rec.seq, out.len() as u64));
                out.extend_from_slice(&buf[off..off + rec.total]);
                kept.add_append(rec.seq);
            }
        }
        let mut tmp_name = path.clone().into_os_string();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        if self.fsync != Fsync::Never {
            f.sync_data()?;
            self.count_fsync();
        }
        drop(f);
        fs::rename(&tmp, &path)?;
        if self.fsync != Fsync::Never {
            sync_dir(&self.dir)?;
        }
        kept.bytes = out.len() as u64;
        st.segments[i] = kept;
        for (seq, offset) in moved {
            if let Some(loc) = st.pending.get_mut(&seq) {
                loc.offset = offset;
            }
        }
        Ok(())
    }
}

/// Creates a new segment holding only its START record.
fn create_segment(
    path: &Path,
    dir: &Path,
    base_seq: u64,
    inner: &Inner,
) -> io::Result<(File, u64)> {
    create_segment_raw(path, dir, base_seq, inner.fsync, &inner.fsyncs)
}

fn create_segment_raw(
    path: &Path,
    dir: &Path,
    base_seq: u64,
    fsync: Fsync,
    fsyncs: &AtomicU64,
) -> io::Result<(File, u64)> {
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(path)?;
    let rec = encode(KIND_START, base_seq, now_micros(), &[]);
    let res = file.write_all(&rec).and_then(|()| {
        if fsync != Fsync::Never {
            // The START record carries the seq floor; the directory entry makes the
            // new file itself survive a power cut.
            file.sync_data()?;
            fsyncs.fetch_add(1, Ordering::Relaxed);
            sync_dir(dir)?;
        }
        Ok(())
    });
    if let Err(e) = res {
        // Otherwise the half-made file would make every later rotation fail with
        // AlreadyExists. If removing it fails too, recovery still copes with it.
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok((file, rec.len() as u64))
}

/// A write-ahead journal of queued requests. `Send + Sync`: share it in an `Arc`.
pub struct Journal {
    inner: Arc<Inner>,
    /// The `Fsync::Interval` background thread.
    syncer: Option<JoinHandle<()>>,
}

/// One request read at start-up (internal): where its record is, not its payload.
struct Entry {
    seq: u64,
    micros: u64,
    /// Index into the segment list, the segment's id, the record's offset and length.
    seg: usize,
    seg_id: u64,
    offset: u64,
    len: u32,
}

impl Journal {
    /// Creates the directory if needed, locks it, replays every segment and returns the
    /// journal, the unacknowledged requests in order, and warning lines (torn tails cut,
    /// corrupt records skipped, each with file and offset).
    pub fn open(
        opts: JournalOptions,
    ) -> Result<(Journal, Vec<Pending>, Vec<String>), JournalError> {
        let dir = opts.dir.clone();
        let dir_err = |path: &Path, source: io::Error| JournalError::Dir {
            path: path.to_path_buf(),
            source,
        };
        let io_err = |path: &Path, source: io::Error| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };

        fs::create_dir_all(&dir).map_err(|e| dir_err(&dir, e))?;
        let lock = acquire_lock(&dir)?;

        let mut warnings = Vec::new();
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| dir_err(&dir, e))? {
            let entry = entry.map_err(|e| dir_err(&dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = parse_segment_name(name) {
                ids.push(id);
            } else if name.starts_with("queue-") && name.ends_with(".seg.tmp") {
                // An interrupted compaction: the original segment is still intact.
                let path = entry.path();
                fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
                warnings.push(format!(
                    "{}: removed an interrupted compaction file",
                    path.display()
                ));
            }
        }
        ids.sort_unstable();

        // Replay: APPENDs in order, ACKs cancel them.
        let mut entries: Vec<Option<Entry>> = Vec::new();
        let mut index: HashMap<u64, usize> = HashMap::new();
        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut last_append = 0u64;
        let mut next_seq = 1u64;
        for (si, &id) in ids.iter().enumerate() {
            let path = dir.join(segment_name(id));
            let buf = fs::read(&path).map_err(|e| io_err(&path, e))?;
            let scan = scan(&buf);
            warnings.extend(skipped_warnings(&path, &scan));
            let mut seg = Segment::new(id);
            for (off, rec) in &scan.records {
                match rec.kind {
                    KIND_START => {
                        if seg.base_seq == 0 {
                            seg.base_seq = rec.seq;
                        }
                        next_seq = next_seq.max(rec.seq);
                    }
                    KIND_APPEND => {
                        if rec.seq <= last_append {
                            warnings.push(format!(
                                "{}: record at offset {off} ignored (seq {} not above {last_append})",
                                path.display(),
                                rec.seq
                            ));
                            continue;
                        }
                        last_append = rec.seq;
                        next_seq = next_seq.max(rec.seq.saturating_add(1));
                        seg.add_append(rec.seq);
                        index.insert(rec.seq, entries.len());
                        entries.push(Some(Entry {
                            seq: rec.seq,
                            micros: rec.micros,
                            seg: si,
                            seg_id: id,
                            offset: *off as u64,
                            len: rec.payload.len() as u32,
                        }));
                    }
                    // Written to the dead-letter file only.
                    KIND_DEAD => {}
                    _ => {
                        next_seq = next_seq.max(rec.seq.saturating_add(1));
                        if let Some(at) = index.remove(&rec.seq) {
                            entries[at] = None;
                        }
                    }
                }
            }
            if let Some(bad) = scan.tail {
                warnings.push(format!(
                    "{}: torn tail cut at offset {} ({bad}; {} bytes dropped)",
                    path.display(),
                    scan.valid_end,
                    buf.len() - scan.valid_end
                ));
                truncate(&path, scan.valid_end as u64, opts.fsync).map_err(|e| io_err(&path, e))?;
            }
            seg.bytes = scan.valid_end as u64;
            segments.push_back(seg);
        }
        let mut live = vec![0u64; segments.len()];
        for e in entries.iter().flatten() {
            live[e.seg] += 1;
        }
        for (seg, live) in segments.iter_mut().zip(live) {
            seg.acked = seg.appends - live;
        }

        let fsyncs = AtomicU64::new(0);
        // The active segment: the last one, or a fresh one (which also proves that the
        // directory is writable).
        let active = match segments.back_mut() {
            None => {
                let path = dir.join(segment_name(1));
                let (file, bytes) = create_segment_raw(&path, &dir, next_seq, opts.fsync, &fsyncs)
                    .map_err(|e| dir_err(&path, e))?;
                let mut seg = Segment::new(1);
                seg.bytes = bytes;
                seg.base_seq = next_seq;
                segments.push_back(seg);
                file
            }
            Some(seg) => {
                let path = dir.join(segment_name(seg.id));
                let mut file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|e| io_err(&path, e))?;
                if seg.bytes == 0 {
                    // Crash right after the segment was created: give it its START.
                    let rec = encode(KIND_START, next_seq, now_micros(), &[]);
                    file.write_all(&rec).map_err(|e| io_err(&path, e))?;
                    seg.bytes = rec.len() as u64;
                    seg.base_seq = next_seq;
                }
                file
            }
        };

        check_dead_letter(&dir, opts.fsync, &mut warnings)?;

        let live: Vec<Entry> = entries.into_iter().flatten().collect();
        let recovered = live
            .iter()
            .map(|e| Pending {
                seq: e.seq,
                appended_at: from_micros(e.micros),
            })
            .collect::<Vec<_>>();
        let pending = live
            .iter()
            .map(|e| {
                let loc = Loc {
                    micros: e.micros,
                    seg: e.seg_id,
                    offset: e.offset,
                    len: e.len,
                };
                (e.seq, loc)
            })
            .collect();

        let inner = Arc::new(Inner {
            dir: dir.clone(),
            fsync: opts.fsync,
            segment_bytes: opts.segment_bytes,
            state: Mutex::new(State {
                active: Arc::new(active),
                segments,
                next_seq,
                pending,
                written: 0,
                synced: 0,
                syncing: false,
                failed: None,
                gc_due: false,
            }),
            synced_cv: Condvar::new(),
            dead: Mutex::new(None),
            fsyncs,
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            _lock: lock,
        });
        {
            // Segments fully acknowledged before a crash can go now.
            let mut st = inner.lock().map_err(|e| io_err(&dir, e))?;
            inner.gc(&mut st).map_err(|e| io_err(&dir, e))?;
        }
        let syncer = if opts.fsync == Fsync::Interval {
            let inner = Arc::clone(&inner);
            let handle = std::thread::Builder::new()
                .name("sq-journal-sync".into())
                .spawn(move || interval_syncer(&inner))
                .map_err(|e| io_err(&dir, e))?;
            Some(handle)
        } else {
            None
        };
        Ok((Journal { inner, syncer }, recovered, warnings))
    }

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

/// Opens and locks `dir/lock`, writing our pid into it.
fn acquire_lock(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK_FILE);
    let dir_err = |source: io::Error| JournalError::Dir {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(dir_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            let who = if holder.is_empty() {
                String::from("another journal")
            } else {
                format!("process {holder}")
            };
            return Err(dir_err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("journal directory is locked by {who} (is another ServiceQ using the same DEFERRED_Q_DIR?)"),
            )));
        }
        Err(fs::TryLockError::Error(e)) => return Err(dir_err(e)),
    }
    // The pid is only for the error message above; failing to write it is an error
    // anyway, because it means the directory is not writable.
    file.set_len(0).map_err(dir_err)?;
    file.write_all(std::process::id().to_string().as_bytes())
        .map_err(dir_err)?;
    Ok(file)
}

fn truncate(path: &Path, len: u64, fsync: Fsync) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    if fsync != Fsync::Never {
        f.sync_all()?;
    }
    Ok(())
}

/// Cuts a torn tail off `dead-letter.log`, so later records follow a complete one.
fn check_dead_letter(
    dir: &Path,
    fsync: Fsync,
    warnings: &mut Vec<String>,
) -> Result<(), JournalError> {
    let path = dir.join(DEAD_LETTER_FILE);
    let io_err = |source: io::Error| JournalError::Io {
        path: path.clone(),
        source,
    };
    let buf = match fs::read(&path) {
        Ok(buf) => buf,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(e)),
    };
    let scan = scan(&buf);
    warnings.extend(skipped_warnings(&path, &scan));
    if let Some(bad) = scan.tail {
        warnings.push(format!(
            "{}: torn tail cut at offset {} ({bad}; {} bytes dropped)",
            path.display(),
            scan.valid_end,
            buf.len() - scan.valid_end
        ));
        truncate(&path, scan.valid_end as u64, fsync).map_err(io_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "sq-journal-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
        fn opts(&self, fsync: Fsync) -> JournalOptions {
            JournalOptions {
                dir: self.0.clone(),
                fsync,
                segment_bytes: DEFAULT_SEGMENT_BYTES,
            }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Opens the journal and reads every recovered payload back through
    /// [`Journal::read`], so each test also checks the read-back path.
    fn open(opts: JournalOptions) -> (Journal, Vec<Recovered>, Vec<String>) {
        let (j, pending, warnings) = Journal::open(opts).expect("open journal");
        let recs = pending
            .iter()
            .map(|p| Recovered {
                seq: p.seq,
                appended_at: p.appended_at,
                payload: j.read(p.seq).expect("read back"),
            })
            .collect();
        (j, recs, warnings)
    }

    fn payloads(recs: &[Recovered]) -> Vec<Vec<u8>> {
        recs.iter().map(|r| r.payload.clone()).collect()
    }

    fn seg_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_segment_name)
                    .is_some()
            })
            .collect();
        v.sort();
        v
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let files = seg_files(dir);
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    }

    /// Writes `items` in a fresh journal and returns (segment path, record offsets).
    fn write_three(t: &TempDir, items: &[&[u8]]) -> (PathBuf, Vec<usize>) {
        let (j, rec, _) = open(t.opts(Fsync::Never));
        assert!(rec.is_empty());
        for it in items {
            j.append(it).unwrap();
        }
        drop(j);
        let path = only_segment(&t.0);
        let buf = fs::read(&path).unwrap();
        let offsets = scan(&buf)
            .records
            .iter()
            .filter(|(_, r)| r.kind == KIND_APPEND)
            .map(|(o, _)| *o)
            .collect();
        (path, offsets)
    }

    #[test]
    fn append_reopen_recovers_in_order() {
        let t = TempDir::new("order");
        let items: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("request {i}").into_bytes())
            .collect();
        let before = SystemTime::now() - Duration::from_secs(1);
        {
            let (j, rec, warn) = open(t.opts(Fsync::Always));
            assert!(rec.is_empty() && warn.is_empty());
            for (i, it) in items.iter().enumerate() {
                assert_eq!(j.append(it).unwrap(), i as u64 + 1);
            }
            assert_eq!(j.pending(), 50);
        }
        let (_j, rec, warn) = open(t.opts(Fsync::Always));
        assert!(warn.is_empty(), "{warn:?}");
        assert_eq!(payloads(&rec), items);
        assert_eq!(
            rec.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=50).collect::<Vec<_>>()
        );
        assert!(rec.iter().all(|r| r.appended_at > before));
        assert!(rec.windows(2).all(|w| w[0].appended_at <= w[1].appended_at));
    }

    #[test]
    fn empty_payload_and_binary_payload_round_trip() {
        let t = TempDir::new("binary");
        let bin: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let mut magic_inside = MAGIC.to_vec();
        magic_inside.extend_from_slice(&encode(KIND_APPEND, 999, 1, b"embedded"));
        {
            let (j, _, _) = open(t.opts(Fsync::Never));
            j.append(b"").unwrap();
            j.append(&bin).unwrap();
            j.append(&magic_inside).unwrap();
        }
        let (_j, rec, warn) = open(t.opts(Fsync::Never));
        assert!(warn.is_empty(), "{warn:?}");
        assert_eq!(payloads(&rec), vec![Vec::new(), bin, magic_inside]);
    }

    #[test]
    fn ack_removes_from_recovery() {
        let t = TempDir::new("ack");
        {
            let (j, _, _) = open(t.opts(Fsync::Always));
            for i in 1..=5u8 {
                j.append(&[i]).unwrap();
            }
            j.ack(1).unwrap();
            j.ack(3).unwrap();
            j.ack(3).unwrap(); // twice: no-op
            j.ack(77).unwrap(); // unknown: no-op
            assert_eq!(j.pending(), 3);
        }
        let (j, rec, warn) = open(t.opts(Fsync::Always));
        assert!(warn.is_empty(), "{warn:?}");
        assert_eq!(rec.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 4, 5]);
        assert_eq!(payloads(&rec), vec![vec![2], vec![4], vec![5]]);
        // Recovered records can be acknowledged after the restart.
        j.ack(4).unwrap();
        drop(j);
        let (_j, rec, _) = open(t.opts(Fsync::Always));
        assert_eq!(rec.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 5]);
    }

    #[test]
    fn many_append_ack_cycles_keep_disk_small() {
        let t = TempDir::new("cycles");
        let seg = 4096;
        let opts = JournalOptions {
            segment_bytes: seg,
            ..t.opts(Fsync::Never)
        };
        let payload = vec![b'x'; 100];
        {
            let (j, _, _) = open(opts.clone());
            let mut max_disk = 0;
            for i in 1..=10_000u64 {
                assert_eq!(j.append(&payload).unwrap(), i);
                j.ack(i).unwrap();
                max_disk = max_disk.max(j.disk_bytes());
            }
            assert!(max_disk <= 3 * seg, "disk grew to {max_disk}");
            assert!(seg_files(&t.0).len() <= 2, "{:?}", seg_files(&t.0));
            let on_disk: u64 = seg_files(&t.0)
                .iter()
                .map(|p| fs::metadata(p).unwrap().len())
                .sum();
            assert_eq!(on_disk, j.disk_bytes());
            // Segment ids kept growing: many rotations happened.
            let last = seg_files(&t.0).pop().unwrap();
            let id = parse_segment_name(last.file_name().unwrap().to_str().unwrap()).unwrap();
            assert!(id > 300, "only {id} segments");
        }
        let (j, rec, warn) = open(opts);
        assert!(rec.is_empty() && warn.is_empty(), "{rec:?} {warn:?}");
        assert_eq!(j.append(b"next").unwrap(), 10_001);
    }

    #[test]
    fn always_mode_cycles_also_delete_segments() {
        let t = TempDir::new("cycles-always");
        let opts = JournalOptions {
            segment_bytes: 2048,
            ..t.opts(Fsync::Always)
        };
        let (j, _, _) = open(opts);
        for i in 1..=300u64 {
            j.append(&[7; 64]).unwrap();
            j.ack(i).unwrap();
        }
        assert!(j.disk_bytes() <= 3 * 2048, "{}", j.disk_bytes());
    }

    #[test]
    fn out_of_order_acks_are_compacted() {
        let t = TempDir::new("compact");
        let opts = JournalOptions {
            segment_bytes: 1024,
            ..t.opts(Fsync::Always)
        };
        {
            let (j, _, _) = open(opts.clone());
            for _ in 0..400 {
                j.append(&[b'y'; 64]).unwrap();
            }
            let full = j.disk_bytes();
            // Everything but the very first record (and one in the middle) delivered.
            for seq in 2..=400 {
                if seq != 200 {
                    j.ack(seq).unwrap();
                }
            }
            assert!(
                j.disk_bytes() < full / 5,
                "{} of {full} bytes left",
                j.disk_bytes()
            );
            assert!(seg_files(&t.0).len() <= 4, "{:?}", seg_files(&t.0));
        }
        let (j, rec, warn) = open(opts.clone());
        assert!(warn.is_empty(), "{warn:?}");
        assert_eq!(rec.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 200]);
        assert_eq!(rec[0].payload, vec![b'y'; 64]);
        j.ack(1).unwrap();
        j.ack(200).unwrap();
        for _ in 0..20 {
            let s = j.append(&[b'z'; 64]).unwrap();
            j.ack(s).unwrap();
        }
        assert!(seg_files(&t.0).len() <= 2, "{:?}", seg_files(&t.0));
        drop(j);
        let (j, rec, _) = open(opts);
        assert!(rec.is_empty());
        assert_eq!(j.append(b"n").unwrap(), 421);
    }

    #[test]
    fn torn_tail_at_every_offset_of_last_record() {
        let items: [&[u8]; 3] = [b"first request", b"second request", b"third request!"];
        let probe = TempDir::new("torn-probe");
        let (path, offs) = write_three(&probe, &items);
        let full = fs::metadata(&path).unwrap().len() as usize;
        let last = offs[2];
        for cut in last..full {
            let t = TempDir::new("torn");
            let (path, _) = write_three(&t, &items);
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(cut as u64).unwrap();
            drop(f);
            let (j, rec, warn) = open(t.opts(Fsync::Always));
            assert_eq!(
                payloads(&rec),
                vec![items[0].to_vec(), items[1].to_vec()],
                "cut {cut}"
            );
            if cut == last {
                assert!(warn.is_empty(), "cut {cut}: {warn:?}");
            } else {
                assert_eq!(warn.len(), 1, "cut {cut}: {warn:?}");
                assert!(warn[0].contains("torn tail cut"), "{warn:?}");
                assert!(warn[0].contains(&format!("offset {last}")), "{warn:?}");
                assert!(warn[0].contains("queue-00000001.seg"), "{warn:?}");
            }
            assert_eq!(fs::metadata(&path).unwrap().len() as usize, last);
            // Usable afterwards; the new record follows the good ones.
            assert_eq!(j.append(b"after").unwrap(), 3);
            drop(j);
            let (_j, rec, warn) = open(t.opts(Fsync::Always));
            assert!(warn.is_empty(), "cut {cut}: {warn:?}");
            assert_eq!(
                payloads(&rec),
                vec![items[0].to_vec(), items[1].to_vec(), b"after".to_vec()]
            );
        }
    }

    #[test]
    fn trailing_garbage_and_zeros_are_cut() {
        for junk in [
            vec![0u8; 4096],
            b"garbage after the last record".to_vec(),
            vec![0xAB],
        ] {
            let t = TempDir::new("garbage");
            let (path, _) = write_three(&t, &[b"a", b"b", b"c"]);
            let len = fs::metadata(&path).unwrap().len();
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(&junk).unwrap();
            drop(f);
            let (j, rec, warn) = open(t.opts(Fsync::Never));
            assert_eq!(
                payloads(&rec),
                vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
            );
            assert_eq!(warn.len(), 1, "{warn:?}");
            assert!(
                warn[0].contains(&format!("torn tail cut at offset {len}")),
                "{warn:?}"
            );
            assert_eq!(fs::metadata(&path).unwrap().len(), len);
            drop(j);
        }
    }

    #[test]
    fn flipped_payload_byte_in_middle_record_is_skipped() {
        let t = TempDir::new("flip-payload");
        let (path, offs) = write_three(&t, &[b"one", b"two-two", b"three"]);
        let mut buf = fs::read(&path).unwrap();
        buf[offs[1] + HEADER_LEN + 2] ^= 0x20;
        fs::write(&path, &buf).unwrap();
        let (j, rec, warn) = open(t.opts(Fsync::Always));
        assert_eq!(payloads(&rec), vec![b"one".to_vec(), b"three".to_vec()]);
        assert_eq!(rec.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(warn.len(), 1, "{warn:?}");
        assert!(warn[0].contains("corrupt record at offset"), "{warn:?}");
        assert!(warn[0].contains(&format!("offset {}", offs[1])), "{warn:?}");
        assert!(warn[0].contains("checksum mismatch"), "{warn:?}");
        assert!(warn[0].contains("claims seq 2"), "{warn:?}");
        // The file is not cut; the journal keeps working after it.
        assert_eq!(fs::metadata(&path).unwrap().len() as usize, buf.len());
        assert_eq!(j.append(b"four").unwrap(), 4);
        j.ack(1).unwrap();
        drop(j);
        let (_j, rec, warn) = open(t.opts(Fsync::Always));
        assert_eq!(warn.len(), 1);
        assert_eq!(payloads(&rec), vec![b"three".to_vec(), b"four".to_vec()]);
    }

    #[test]
    fn flipped_bit_in_length_field_of_middle_record_is_skipped() {
        let items: [&[u8]; 3] = [b"alpha", b"bravo bravo", b"charlie"];
        for byte in 0..4 {
            for bit in 0..8 {
                let t = TempDir::new("flip-len");
                let (path, offs) = write_three(&t, &items);
                let mut buf = fs::read(&path).unwrap();
                buf[offs[1] + 8 + byte] ^= 1 << bit;
                fs::write(&path, &buf).unwrap();
                let (_j, rec, warn) = open(t.opts(Fsync::Never));
                assert_eq!(
                    payloads(&rec),
                    vec![items[0].to_vec(), items[2].to_vec()],
                    "byte {byte} bit {bit}"
                );
                assert_eq!(warn.len(), 1, "byte {byte} bit {bit}: {warn:?}");
                assert!(warn[0].contains(&format!("corrupt record at offset {}", offs[1])));
            }
        }
    }

    #[test]
    fn flipped_magic_and_header_bytes_are_skipped() {
        let items: [&[u8]; 3] = [b"a1", b"b2", b"c3"];
        for at in 0..HEADER_LEN {
            let t = TempDir::new("flip-header");
            let (path, offs) = write_three(&t, &items);
            let mut buf = fs::read(&path).unwrap();
            buf[offs[1] + at] ^= 0x01;
            fs::write(&path, &buf).unwrap();
            let (_j, rec, warn) = open(t.opts(Fsync::Never));
            assert_eq!(
                payloads(&rec),
                vec![items[0].to_vec(), items[2].to_vec()],
                "header byte {at}"
            );
            assert_eq!(warn.len(), 1, "header byte {at}: {warn:?}");
        }
    }

    #[test]
    fn corrupt_record_in_an_older_segment_is_skipped() {
        let t = TempDir::new("flip-older");
        let opts = JournalOptions {
            segment_bytes: 200,
            ..t.opts(Fsync::Never)
        };
        {
            let (j, _, _) = open(opts.clone());
            for i in 0..12u8 {
                j.append(&[b'p', i]).unwrap();
            }
        }
        let files = seg_files(&t.0);
        assert!(files.len() >= 3, "{files:?}");
        let mut buf = fs::read(&files[1]).unwrap();
        let (off, _) = scan(&buf).records[1];
        buf[off + HEADER_LEN] ^= 0xFF;
        fs::write(&files[1], &buf).unwrap();
        let (_j, rec, warn) = open(opts);
        assert_eq!(rec.len(), 11);
        assert_eq!(warn.len(), 1, "{warn:?}");
        assert!(warn[0].contains("queue-00000002.seg"), "{warn:?}");
        assert!(rec.windows(2).all(|w| w[0].seq < w[1].seq));
    }

    #[test]
    fn dead_letter_moves_the_record() {
        let t = TempDir::new("dead");
        let at;
        {
            let (j, _, _) = open(t.opts(Fsync::Always));
            j.append(b"keep 1").unwrap();
            let s = j.append(b"too old").unwrap();
            j.append(b"keep 3").unwrap();
            drop(j);
            let (j, rec, _) = open(t.opts(Fsync::Always));
            at = rec[1].appended_at;
            j.dead_letter(s).unwrap();
            j.dead_letter(s).unwrap(); // already moved: no-op
            j.dead_letter(99).unwrap(); // not pending: no-op
        }
        let (_j, rec, warn) = open(t.opts(Fsync::Always));
        assert!(warn.is_empty(), "{warn:?}");
        assert_eq!(payloads(&rec), vec![b"keep 1".to_vec(), b"keep 3".to_vec()]);
        let (dead, warn) = read_records(&t.0.join(DEAD_LETTER_FILE)).unwrap();
        assert!(warn.is_empty());
        assert_eq!(
            dead,
            vec![Recovered {
                seq: 2,
                appended_at: at,
                payload: b"too old".to_vec()
            }]
        );
    }

    /// Why and when: a DEAD record follows the dead letter; an ACK there takes it out,
    /// and once none is left the file is emptied. A file without DEAD records (an older
    /// ServiceQ) still reads, reason unknown.
    #[test]
    fn dead_letters_keep_why_and_when_and_leave_by_ack() {
        let t = TempDir::new("dead-why");
        let (j, _, _) = open(t.opts(Fsync::Always));
        let old = j.append(b"old style").unwrap();
        j.dead_letter(old).unwrap();
        let before = SystemTime::now();
        let seqs: Vec<u64> = (0..3)
            .map(|i| j.append(format!("r{i}").as_bytes()).unwrap())
            .collect();
        for &s in &seqs {
            j.dead_letter_because(s, "max age: queued 2s").unwrap();
        }
        let (dead, warn) = j.dead_letters().unwrap();
        assert!(warn.is_empty(), "{warn:?}");
        let got: Vec<(u64, Option<&str>)> =
            dead.iter().map(|d| (d.seq, d.reason.as_deref())).collect();
        let why = Some("max age: queued 2s");
        assert_eq!(
            got,
            vec![(old, None), (seqs[0], why), (seqs[1], why), (seqs[2], why)]
        );
        assert!(dead[1]
            .dead_at
            .is_some_and(|at| at >= before - Duration::from_secs(1)));
        assert_eq!(dead[0].dead_at, None);
        // The raw reader still sees exactly the APPENDs.
        assert_eq!(
            read_records(&t.0.join(DEAD_LETTER_FILE)).unwrap().0.len(),
            4
        );

        j.remove_dead(&[seqs[1], old]).unwrap();
        let left: Vec<u64> = j.dead_letters().unwrap().0.iter().map(|d| d.seq).collect();
        assert_eq!(left, vec![seqs[0], seqs[2]]);
        drop(j);
        let (j, rec, warn) = open(t.opts(Fsync::Always));
        assert!(rec.is_empty() && warn.is_empty(), "{rec:?} {warn:?}");
        assert_eq!(j.dead_letters().unwrap().0.len(), 2, "after a reopen");
        j.remove_dead(&[seqs[0], seqs[2]]).unwrap();
        assert_eq!(fs::metadata(t.0.join(DEAD_LETTER_FILE)).unwrap().len(), 0);
        let s = j.append(b"again").unwrap();
        j.dead_letter_because(s, "x").unwrap();
        assert_eq!(j.purge_dead().unwrap(), 1);
        assert!(j.dead_letters().unwrap().0.is_empty());
    }

    /// An operator's drop is an ACK made durable at once: a reopen does not bring the
    /// request back. `read_part` reads inside a queued payload only.
    #[test]
    fn a_dropped_request_stays_dropped_and_parts_read_back() {
        let t = TempDir::new("drop");
        {
            let (j, _, _) = open(t.opts(Fsync::Never));
            let a = j.append(b"first").unwrap();
            let b = j.append(b"second").unwrap();
            assert_eq!(j.read_part(b, 1, 3).unwrap(), b"eco");
            assert!(j.read_part(b, 4, 3).is_err(), "past the payload");
            j.drop_queued(a).unwrap();
            assert!(j.read_part(a, 0, 1).is_err(), "no longer queued");
            let fsyncs = j.fsync_count();
            j.drop_queued(b).unwrap();
            assert!(
                j.fsync_count() > fsyncs,
                "a drop is fsynced, even with Fsync::Never"
            );
            j.append(b"third").unwrap();
        }
        let (_j, rec, _) = open(t.opts(Fsync::Never));
        assert_eq!(payloads(&rec), vec![b"third".to_vec()]);
    }

    /// A DEAD record in a segment (never written there) is ignored, not read as an ACK.
    #[test]
    fn a_dead_record_in_a_segment_is_ignored() {
        let t = TempDir::new("dead-in-seg");
        let seq = {
            let (j, _, _) = open(t.opts(Fsync::Always));
            j.append(b"kept").unwrap()
        };
        let seg = t.0.join(segment_name(1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&encode(KIND_DEAD, seq, now_micros(), b"why"))
            .unwrap();
        drop(f);
        let (_j, rec, warn) = open(t.opts(Fsync::Always));
        assert!(warn.is_empty(), "{warn:?}");
        assert_eq!(payloads(&rec), vec![b"kept".to_vec()]);
    }

    #[test]
    fn torn_dead_letter_tail_is_cut() {
        let t = TempDir::new("dead-torn");
        {
            let (j, _, _) = open(t.opts(Fsync::Never));
            j.append(b"x").unwrap();
            j.append(b"y").unwrap();
            j.dead_letter(1).unwrap();
        }
        let dl = t.0.join(DEAD_LETTER_FILE);
        let good = fs::metadata(&dl).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&dl).unwrap();
        f.write_all(&encode(KIND_APPEND, 2, 0, b"y")[..20]).unwrap();
        drop(f);
        let (j, rec, warn) = open(t.opts(Fsync::Never));
        assert_eq!(payloads(&rec), vec![b"y".to_vec()]);
        assert_eq!(warn.len(), 1, "{warn:?}");
        assert!(warn[0].contains(DEAD_LETTER_FILE));
        assert_eq!(fs::metadata(&dl).unwrap().len(), good);
        j.dead_letter(2).unwrap();
        let (dead, warn) = read_records(&dl).unwrap();
        assert!(warn.is_empty());
        assert_eq!(dead.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn sequence_numbers_continue_after_reopen() {
        let t = TempDir::new("seq");
        {
            let (j, _, _) = open(t.opts(Fsync::Always));
            for i in 1..=3 {
                assert_eq!(j.append(b"r").unwrap(), i);
                j.ack(i).unwrap();
            }
        }
        {
            let (j, rec, _) = open(t.opts(Fsync::Always));
            assert!(rec.is_empty());
            assert_eq!(j.append(b"r").unwrap(), 4);
        }
        let (j, rec, _) = open(t.opts(Fsync::Always));
        assert_eq!(rec.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4]);
        assert_eq!(j.append(b"r").unwrap(), 5);
    }

    #[test]
    fn empty_last_segment_after_crash_is_usable() {
        let t = TempDir::new("empty-seg");
        {
            let (j, _, _) = open(t.opts(Fsync::Always));
            j.append(b"a").unwrap();
        }
        // As if the process died right after creating the next segment.
        File::create(t.0.join(segment_name(2))).unwrap();
        let (j, rec, warn) = open(t.opts(Fsync::Always));
        assert!(warn.is_empty(), "{warn:?}");
        assert_eq!(payloads(&rec), vec![b"a".to_vec()]);
        assert_eq!(j.append(b"b").unwrap(), 2);
        j.ack(1).unwrap();
        drop(j);
        let (_j, rec, _) = open(t.opts(Fsync::Always));
        assert_eq!(payloads(&rec), vec![b"b".to_vec()]);
        assert_eq!(seg_files(&t.0).len(), 1, "segment 1 should be gone");
    }

    #[test]
    fn leftover_compaction_file_is_removed() {
        let t = TempDir::new("tmpfile");
        {
            let (j, _, _) = open(t.opts(Fsync::Never));
            j.append(b"a").unwrap();
        }
        let tmp = t.0.join("queue-00000001.seg.tmp");
        fs::write(&tmp, b"half a compaction").unwrap();
        let (_j, rec, warn) = open(t.opts(Fsync::Never));
        assert_eq!(payloads(&rec), vec![b"a".to_vec()]);
        assert_eq!(warn.len(), 1);
        assert!(!tmp.exists());
    }

    #[test]
    fn second_open_of_a_live_journal_fails() {
        let t = TempDir::new("lock");
        let (j, _, _) = open(t.opts(Fsync::Always));
        j.append(b"mine").unwrap();
        match Journal::open(t.opts(Fsync::Always)) {
            Err(e @ JournalError::Dir { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("locked"), "{msg}");
                assert!(msg.contains(&std::process::id().to_string()), "{msg}");
                assert!(
                    msg.starts_with(&t.0.join(LOCK_FILE).display().to_string()),
                    "{msg}"
                );
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("second open succeeded"),
        }
        drop(j);
        let (_j, rec, _) = open(t.opts(Fsync::Always));
        assert_eq!(payloads(&rec), vec![b"mine".to_vec()]);
    }

    #[test]
    fn unusable_directory_is_a_dir_error() {
        let t = TempDir::new("unwritable");
        fs::create_dir_all(&t.0).unwrap();
        let file = t.0.join("plain-file");
        fs::write(&file, b"not a directory").unwrap();
        for dir in [file.join("journal"), file.clone()] {
            match Journal::open(JournalOptions::new(&dir)) {
                Err(e @ JournalError::Dir { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.starts_with(&dir.display().to_string()), "{msg}");
                }
                Err(e) => panic!("wrong error: {e}"),
                Ok(_) => panic!("opened a journal under a regular file"),
            }
        }
    }

    #[test]
    fn oversized_payload_is_refused() {
        let t = TempDir::new("big");
        let (j, _, _) = open(t.opts(Fsync::Never));
        let err = j.append(&vec![0; MAX_PAYLOAD + 1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(j.append(b"small").unwrap(), 1);
    }

    #[test]
    fn absurd_length_on_disk_is_not_believed() {
        let mut rec = encode(KIND_APPEND, 1, 0, b"x");
        rec[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_at(&rec, 0), Err(Bad::TooLong(_))));
    }

    #[test]
    fn group_commit_shares_fsyncs() {
        let t = TempDir::new("group");
        let (j, _, _) = open(t.opts(Fsync::Always));
        let j = Arc::new(j);
        let base = j.fsync_count();
        let threads: Vec<_> = (0..8u8)
            .map(|th| {
                let j = Arc::clone(&j);
                std::thread::spawn(move || {
                    (0..200u16)
                        .map(|i| {
                            let mut p = vec![th];
                            p.extend_from_slice(&i.to_le_bytes());
                            j.append(&p).unwrap()
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let fsyncs = j.fsync_count() - base;
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=1600).collect::<Vec<_>>());
        assert!(
            fsyncs > 0 && fsyncs < 1600,
            "{fsyncs} fsyncs for 1600 appends"
        );
        eprintln!("group commit: {fsyncs} fsyncs for 1600 appends");
        drop(j);
        let (_j, rec, warn) = open(t.opts(Fsync::Always));
        assert!(warn.is_empty());
        assert_eq!(rec.len(), 1600);
        assert!(rec.windows(2).all(|w| w[0].seq < w[1].seq));
        // Each thread's requests come back in the order it appended them.
        for th in 0..8u8 {
            let mine: Vec<u16> = rec
                .iter()
                .filter(|r| r.payload[0] == th)
                .map(|r| u16::from_le_bytes([r.payload[1], r.payload[2]]))
                .collect();
            assert_eq!(mine, (0..200).collect::<Vec<_>>());
        }
    }

    #[test]
    fn interval_mode_syncs_in_background() {
        let t = TempDir::new("interval");
        {
            let (j, _, _) = open(t.opts(Fsync::Interval));
            // Creating the first segment fsyncs it once.
            let base = j.fsync_count();
            j.append(b"a").unwrap();
            j.append(b"b").unwrap();
            assert_eq!(j.fsync_count(), base, "append itself must not fsync");
            let start = Instant::now();
            while j.fsync_count() == base && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(j.fsync_count() > base);
            // Let the thread catch up with both records.
            std::thread::sleep(Duration::from_millis(250));
            // Idle: no more fsyncs while nothing is written.
            let n = j.fsync_count();
            std::thread::sleep(Duration::from_millis(350));
            assert_eq!(j.fsync_count(), n);
        }
        let (_j, rec, _) = open(t.opts(Fsync::Interval));
        assert_eq!(payloads(&rec), vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn never_mode_sync_flushes_everything() {
        let t = TempDir::new("never-sync");
        let opts = JournalOptions {
            segment_bytes: 256,
            ..t.opts(Fsync::Never)
        };
        let (j, _, _) = open(opts);
        for _ in 0..20 {
            j.append(&[1; 40]).unwrap();
        }
        assert_eq!(j.fsync_count(), 0);
        j.sync().unwrap();
        assert!(j.fsync_count() >= seg_files(&t.0).len() as u64);
    }

    #[test]
    fn journal_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Journal>();
    }

    /// Appends/s for each policy; 1 thread with `Always` shows the cost of an fsync per
    /// append without group commit. Run with
    /// `cargo test --release -- --ignored --nocapture bench_appends`.
    #[test]
    #[ignore]
    fn bench_appends_64_threads() {
        let runs = [
            (Fsync::Always, 1, 2000),
            (Fsync::Always, 64, 500),
            (Fsync::Interval, 64, 500),
            (Fsync::Never, 64, 500),
        ];
        for (fsync, threads, per_thread) in runs {
            let t = TempDir::new("bench");
            let (j, _, _) = open(t.opts(fsync));
            let j = Arc::new(j);
            let base = j.fsync_count();
            let payload = vec![b'r'; 512];
            let start = Instant::now();
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let j = Arc::clone(&j);
                    let payload = payload.clone();
                    std::thread::spawn(move || {
                        for _ in 0..per_thread {
                            j.append(&payload).unwrap();
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let secs = start.elapsed().as_secs_f64();
            let n = threads * per_thread;
            eprintln!(
                "{fsync:?} x{threads}: {n} appends of 512 B in {secs:.2} s = {:.0} appends/s, {} fsyncs",
                n as f64 / secs,
                j.fsync_count() - base
            );
        }
    }
}
