//! The record layout (see the module's opening comment in `mod.rs`): encoding a record,
//! parsing one, resyncing after a corrupt one, scanning a whole file, and reading a
//! segment or the dead-letter file for tools.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

/// A record header for a payload of `len` bytes whose own CRC-32 is `payload_crc`.
pub(super) fn header(
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
pub(super) struct HashWriter(pub(super) crc32fast::Hasher);

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
pub(super) struct Counting<W> {
    pub(super) inner: W,
    pub(super) count: u64,
}

impl<W: Write> Counting<W> {
    pub(super) fn new(inner: W) -> Self {
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

pub(super) fn encode(kind: u8, seq: u64, micros: u64, payload: &[u8]) -> Vec<u8> {
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

pub(super) fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

pub(super) fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Rec<'a> {
    pub(super) kind: u8,
    pub(super) seq: u64,
    pub(super) micros: u64,
    pub(super) payload: &'a [u8],
    /// Header plus payload.
    pub(super) total: usize,
}

/// Why the bytes at an offset are not a record (for warnings).
#[derive(Debug, Clone, Copy)]
pub(super) enum Bad {
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

pub(super) fn parse_at(buf: &[u8], off: usize) -> Result<Rec<'_>, Bad> {
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
pub(super) fn resync(buf: &[u8], from: usize) -> Option<usize> {
    let mut p = from;
    while p + HEADER_LEN <= buf.len() {
        if buf[p] == MAGIC[0] && parse_at(buf, p).is_ok() {
            return Some(p);
        }
        p += 1;
    }
    None
}

pub(super) struct Scan<'a> {
    /// Valid records with their offsets, in file order.
    pub(super) records: Vec<(usize, Rec<'a>)>,
    /// Corrupt records skipped in the middle: (offset, bytes skipped, reason, claimed seq).
    pub(super) skipped: Vec<(usize, usize, Bad, Option<u64>)>,
    /// End of the last valid record; anything after it is a torn tail.
    pub(super) valid_end: usize,
    /// Why the tail was rejected, when there is one.
    pub(super) tail: Option<Bad>,
}

pub(super) fn scan(buf: &[u8]) -> Scan<'_> {
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

pub(super) fn skipped_warnings(path: &Path, scan: &Scan<'_>) -> Vec<String> {
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

pub(super) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn from_micros(micros: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_micros(micros))
        .unwrap_or(UNIX_EPOCH)
}

pub(super) fn segment_name(id: u64) -> String {
    format!("queue-{id:08}.seg")
}

/// Segment id from a file name, for `queue-<digits>.seg`.
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("queue-")?.strip_suffix(".seg")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
