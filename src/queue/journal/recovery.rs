//! Opening a journal: lock the directory, read every segment in order (APPENDs queue a
//! request, ACKs cancel one), cut torn tails, pick or create the active segment, and
//! hand back what is still queued — its order and places, never its payloads.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};

use super::format::*;
use super::segments::*;
use super::*;

/// One request read at start-up: where its record is, not its payload.
struct Entry {
    seq: u64,
    micros: u64,
    /// Index into the segment list, the segment's id, the record's offset and length.
    seg: usize,
    seg_id: u64,
    offset: u64,
    len: u32,
}

/// What reading the segments found.
struct Replayed {
    /// APPENDs in order; an ACKed one is `None`.
    entries: Vec<Option<Entry>>,
    segments: VecDeque<Segment>,
    next_seq: u64,
}

fn dir_err(path: &Path, source: io::Error) -> JournalError {
    JournalError::Dir {
        path: path.to_path_buf(),
        source,
    }
}

fn io_err(path: &Path, source: io::Error) -> JournalError {
    JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Journal {
    /// Creates the directory if needed, locks it, replays every segment and returns the
    /// journal, the unacknowledged requests in order, and warning lines (torn tails cut,
    /// corrupt records skipped, each with file and offset).
    pub fn open(
        opts: JournalOptions,
    ) -> Result<(Journal, Vec<Pending>, Vec<String>), JournalError> {
        let dir = opts.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| dir_err(&dir, e))?;
        let lock = acquire_lock(&dir)?;
        let mut warnings = Vec::new();
        let ids = list_segments(&dir, &mut warnings)?;
        let mut replayed = replay_segments(&dir, &ids, opts.fsync, &mut warnings)?;
        let fsyncs = AtomicU64::new(0);
        let active = open_active(&dir, &mut replayed, opts.fsync, &fsyncs)?;
        check_dead_letter(&dir, opts.fsync, &mut warnings)?;
        let (recovered, pending) = still_queued(replayed.entries);
        let inner = Arc::new(Inner {
            dir: dir.clone(),
            fsync: opts.fsync,
            segment_bytes: opts.segment_bytes,
            state: Mutex::new(State {
                active: Arc::new(active),
                segments: replayed.segments,
                next_seq: replayed.next_seq,
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
}

/// The segment ids in `dir`, ascending; an interrupted compaction's file is removed
/// (the original segment is still intact).
fn list_segments(dir: &Path, warnings: &mut Vec<String>) -> Result<Vec<u64>, JournalError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| dir_err(dir, e))? {
        let entry = entry.map_err(|e| dir_err(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = parse_segment_name(name) {
            ids.push(id);
        } else if name.starts_with("queue-") && name.ends_with(".seg.tmp") {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            warnings.push(format!(
                "{}: removed an interrupted compaction file",
                path.display()
            ));
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Reads the segments in order: APPENDs queue a request, ACKs cancel one; a torn tail
/// is cut off.
fn replay_segments(
    dir: &Path,
    ids: &[u64],
    fsync: Fsync,
    warnings: &mut Vec<String>,
) -> Result<Replayed, JournalError> {
    let mut replayed = Replayed {
        entries: Vec::new(),
        segments: VecDeque::new(),
        next_seq: 1,
    };
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut last_append = 0u64;
    for (si, &id) in ids.iter().enumerate() {
        let path = dir.join(segment_name(id));
        let buf = fs::read(&path).map_err(|e| io_err(&path, e))?;
        let scan = scan(&buf);
        warnings.extend(skipped_warnings(&path, &scan));
        let mut seg = Segment::new(id);
        for (off, rec) in &scan.records {
            let next_seq = &mut replayed.next_seq;
            match rec.kind {
                KIND_START => {
                    if seg.base_seq == 0 {
                        seg.base_seq = rec.seq;
                    }
                    *next_seq = (*next_seq).max(rec.seq);
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
                    *next_seq = (*next_seq).max(rec.seq.saturating_add(1));
                    seg.add_append(rec.seq);
                    index.insert(rec.seq, replayed.entries.len());
                    replayed.entries.push(Some(Entry {
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
                    *next_seq = (*next_seq).max(rec.seq.saturating_add(1));
                    if let Some(at) = index.remove(&rec.seq) {
                        replayed.entries[at] = None;
                    }
                }
            }
        }
        cut_torn_tail(&path, buf.len(), &scan, fsync, warnings)?;
        seg.bytes = scan.valid_end as u64;
        replayed.segments.push_back(seg);
    }
    count_acked(&mut replayed);
    Ok(replayed)
}

/// Each segment's acknowledged APPENDs: those physically in it and no longer live.
fn count_acked(replayed: &mut Replayed) {
    let mut live = vec![0u64; replayed.segments.len()];
    for e in replayed.entries.iter().flatten() {
        live[e.seg] += 1;
    }
    for (seg, live) in replayed.segments.iter_mut().zip(live) {
        seg.acked = seg.appends - live;
    }
}

/// The active segment: the last one, or a fresh one (which also proves that the
/// directory is writable).
fn open_active(
    dir: &Path,
    replayed: &mut Replayed,
    fsync: Fsync,
    fsyncs: &AtomicU64,
) -> Result<File, JournalError> {
    let next_seq = replayed.next_seq;
    match replayed.segments.back_mut() {
        None => {
            let path = dir.join(segment_name(1));
            let (file, bytes) = create_segment_raw(&path, dir, next_seq, fsync, fsyncs)
                .map_err(|e| dir_err(&path, e))?;
            let mut seg = Segment::new(1);
            seg.bytes = bytes;
            seg.base_seq = next_seq;
            replayed.segments.push_back(seg);
            Ok(file)
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
            Ok(file)
        }
    }
}

/// What recovery hands back (order and append times) and what the journal keeps
/// (where each record is).
fn still_queued(entries: Vec<Option<Entry>>) -> (Vec<Pending>, HashMap<u64, Loc>) {
    let live: Vec<Entry> = entries.into_iter().flatten().collect();
    let recovered = live
        .iter()
        .map(|e| Pending {
            seq: e.seq,
            appended_at: from_micros(e.micros),
        })
        .collect();
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
    (recovered, pending)
}

/// Opens and locks `dir/lock`, writing our pid into it.
pub(super) fn acquire_lock(dir: &Path) -> Result<File, JournalError> {
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

pub(super) fn truncate(path: &Path, len: u64, fsync: Fsync) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    if fsync != Fsync::Never {
        f.sync_all()?;
    }
    Ok(())
}

/// Cuts a torn tail off `dead-letter.log`, so later records follow a complete one.
pub(super) fn check_dead_letter(
    dir: &Path,
    fsync: Fsync,
    warnings: &mut Vec<String>,
) -> Result<(), JournalError> {
    let path = dir.join(DEAD_LETTER_FILE);
    let buf = match fs::read(&path) {
        Ok(buf) => buf,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&path, e)),
    };
    let scan = scan(&buf);
    warnings.extend(skipped_warnings(&path, &scan));
    cut_torn_tail(&path, buf.len(), &scan, fsync, warnings)
}

/// Cuts the torn tail `scan` found in `path` (`len` bytes read), with a warning that
/// says where and how much, so the next record written follows a complete one.
fn cut_torn_tail(
    path: &Path,
    len: usize,
    scan: &Scan<'_>,
    fsync: Fsync,
    warnings: &mut Vec<String>,
) -> Result<(), JournalError> {
    let Some(bad) = scan.tail else {
        return Ok(());
    };
    warnings.push(format!(
        "{}: torn tail cut at offset {} ({bad}; {} bytes dropped)",
        path.display(),
        scan.valid_end,
        len - scan.valid_end
    ));
    truncate(path, scan.valid_end as u64, fsync).map_err(|e| io_err(path, e))
}
