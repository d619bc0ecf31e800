//! The live journal's state: segments, where each unacknowledged record is, the write
//! path (rotation, group commit), and the clean-up of acknowledged segments (deletion,
//! compaction).

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::*;

use super::format::*;

#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub(super) id: u64,
    /// Bytes in the file.
    pub(super) bytes: u64,
    /// `seq` of the START record (next seq when the segment was created).
    pub(super) base_seq: u64,
    /// APPEND records physically in the file.
    pub(super) appends: u64,
    /// Of those, how many are acknowledged (the ACK may be in any later segment).
    pub(super) acked: u64,
    /// Seq range of the APPENDs in the file (meaningless while `appends == 0`).
    pub(super) min_seq: u64,
    pub(super) max_seq: u64,
}

impl Segment {
    pub(super) fn new(id: u64) -> Self {
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

    pub(super) fn add_append(&mut self, seq: u64) {
        if self.appends == 0 {
            self.min_seq = seq;
        }
        self.max_seq = seq;
        self.appends += 1;
    }

    pub(super) fn holds(&self, seq: u64) -> bool {
        self.appends > 0 && self.min_seq <= seq && seq <= self.max_seq
    }

    pub(super) fn fully_acked(&self) -> bool {
        self.acked >= self.appends
    }
}

/// Where an unacknowledged APPEND record is, and when it was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Loc {
    pub(super) micros: u64,
    /// Segment id (its file number) and the record's offset in it.
    pub(super) seg: u64,
    pub(super) offset: u64,
    pub(super) len: u32,
}

pub(super) struct State {
    /// The active segment (the back of `segments`), opened for append.
    pub(super) active: Arc<File>,
    /// Oldest first; the last one is the active segment.
    pub(super) segments: VecDeque<Segment>,
    pub(super) next_seq: u64,
    /// Unacknowledged seqs → appended-at and where the record is.
    pub(super) pending: HashMap<u64, Loc>,
    /// Number of records written so far (a log sequence number for group commit).
    pub(super) written: u64,
    /// All records up to this count are fsynced.
    pub(super) synced: u64,
    /// A leader is fsyncing outside the mutex.
    pub(super) syncing: bool,
    /// Set by a failed fsync; every later write is refused.
    pub(super) failed: Option<String>,
    /// A rotation happened since the last GC pass.
    pub(super) gc_due: bool,
}

impl State {
    pub(super) fn check_failed(&self) -> io::Result<()> {
        match &self.failed {
            Some(msg) => Err(io::Error::other(format!(
                "journal refuses writes after an fsync failure ({msg}); restart to recover"
            ))),
            None => Ok(()),
        }
    }

    pub(super) fn active_seg(&mut self) -> &mut Segment {
        // Invariant: `segments` is never empty (the active segment is always there).
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }
}

pub(super) struct Inner {
    pub(super) dir: PathBuf,
    pub(super) fsync: Fsync,
    pub(super) segment_bytes: u64,
    pub(super) state: Mutex<State>,
    /// Signalled whenever a group fsync finishes.
    pub(super) synced_cv: Condvar,
    /// Dead-letter file, opened on first use.
    pub(super) dead: Mutex<Option<File>>,
    pub(super) fsyncs: AtomicU64,
    /// Stop flag for the interval thread.
    pub(super) stop: Mutex<bool>,
    pub(super) stop_cv: Condvar,
    /// Held (flock) for the journal's lifetime; released when the file is closed.
    pub(super) _lock: File,
}

pub(super) fn poisoned() -> io::Error {
    io::Error::other("journal state poisoned by a panicking thread")
}

impl Inner {
    pub(super) fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| poisoned())
    }

    pub(super) fn seg_path(&self, id: u64) -> PathBuf {
        self.dir.join(segment_name(id))
    }

    pub(super) fn count_fsync(&self) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes one encoded record to the active segment, rotating first if it is full.
    /// Returns the segment id and offset it was written at.
    pub(super) fn write_record(&self, st: &mut State, rec: &[u8]) -> io::Result<(u64, u64)> {
        self.write_record_with(st, rec.len() as u64, &mut |out| out.write_all(rec))
    }

    /// Writes a record of `total` bytes produced by `write` (header then payload) to the
    /// active segment. On any error the partial record is cut off again.
    pub(super) fn write_record_with(
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
    pub(super) fn rotate(&self, st: &mut State) -> io::Result<()> {
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
    pub(super) fn wait_durable(&self, target: u64) -> io::Result<()> {
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
    pub(super) fn gc(&self, st: &mut State) -> io::Result<()> {
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
    pub(super) fn compact(&self, st: &mut State, i: usize) -> io::Result<()> {
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
pub(super) fn create_segment(
    path: &Path,
    dir: &Path,
    base_seq: u64,
    inner: &Inner,
) -> io::Result<(File, u64)> {
    create_segment_raw(path, dir, base_seq, inner.fsync, &inner.fsyncs)
}

pub(super) fn create_segment_raw(
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
