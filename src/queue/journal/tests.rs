//! The journal's crash and corruption cases, each on real files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::format::*;
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
    let got: Vec<(u64, Option<&str>)> = dead.iter().map(|d| (d.seq, d.reason.as_deref())).collect();
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
