//! A request body as ServiceQ holds it between reading it from the client and the last
//! attempt (or the queue): the first `CLIENT_BODY_BUFFER_SIZE` bytes in memory, the
//! rest in an unlinked temporary file in `CLIENT_BODY_TEMP_DIR`, as nginx does with
//! `client_body_buffer_size` and `client_body_temp_path`.
//!
//! Memory follows what was received, never what a header announced: a head declaring
//! `Content-Length: 4000000` followed by 16 bytes costs 16 bytes. The file is unlinked
//! as soon as it is created (`O_TMPFILE` where the file system has it), so nothing is
//! left behind by a crash, and it is closed with the body.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::stream::Stream;

/// Bytes copied per read when a body is read back from its file.
const FILE_CHUNK_BYTES: usize = 64 * 1024;

/// Where a body may spill, and how much of it stays in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spill {
    pub memory_bytes: usize,
    pub dir: PathBuf,
}

/// One request body: `mem` then, when it outgrew `Spill::memory_bytes`, `file`.
#[derive(Debug, Default)]
pub struct Body {
    mem: Vec<u8>,
    file: Option<File>,
    file_len: u64,
}

impl Body {
    pub fn new() -> Self {
        Body::default()
    }

    /// A body held wholly in memory (a recovered or small request).
    pub fn from_vec(mem: Vec<u8>) -> Self {
        Body {
            mem,
            file: None,
            file_len: 0,
        }
    }

    /// Bytes in the body.
    pub fn len(&self) -> u64 {
        self.mem.len() as u64 + self.file_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether part of the body is in a temporary file.
    pub fn is_spilled(&self) -> bool {
        self.file.is_some()
    }

    /// The part held in memory (all of it unless [`is_spilled`](Self::is_spilled)).
    pub fn memory(&self) -> &[u8] {
        &self.mem
    }

    /// Empties the body for the next request; a spilled file is closed (and, being
    /// unlinked, gone). Memory up to `keep_bytes` of capacity is kept for reuse.
    pub fn clear(&mut self, keep_bytes: usize) {
        self.mem.clear();
        if self.mem.capacity() > keep_bytes {
            self.mem = Vec::new();
        }
        self.file = None;
        self.file_len = 0;
    }

    /// Appends received bytes: to memory while it has room, then to the file, which is
    /// created on the first byte that does not fit.
    pub fn append(&mut self, mut data: &[u8], spill: &Spill) -> io::Result<()> {
        if self.file.is_none() {
            let room = spill.memory_bytes.saturating_sub(self.mem.len());
            let now = room.min(data.len());
            self.mem.extend_from_slice(&data[..now]);
            data = &data[now..];
            if data.is_empty() {
                return Ok(());
            }
            self.file = Some(temp_file(&spill.dir)?);
        }
        if let Some(file) = &self.file {
            file.write_all_at(data, self.file_len)?;
            self.file_len += data.len() as u64;
        }
        Ok(())
    }

    /// Writes the file part (everything after [`memory`](Self::memory)) to `out`. On a
    /// plain socket the kernel copies it (`io::copy` uses `sendfile`/`splice` from a
    /// file to a socket), so it never passes through user space.
    pub fn write_file_part(&self, out: &mut Stream) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut reader = file;
        reader.seek(SeekFrom::Start(0))?;
        let mut part = reader.take(self.file_len);
        let copied = match out {
            Stream::Plain(tcp) => io::copy(&mut part, tcp)?,
            other => io::copy(&mut part, other)?,
        };
        if copied != self.file_len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "request body file shorter than written",
            ));
        }
        Ok(())
    }

    /// Writes the whole body to `out` (memory part, then file part), in bounded
    /// chunks.
    pub fn write_all_to(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&self.mem)?;
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut chunk = vec![0u8; FILE_CHUNK_BYTES.min(self.file_len as usize).max(1)];
        let mut at = 0u64;
        while at < self.file_len {
            let want = chunk.len().min((self.file_len - at) as usize);
            file.read_exact_at(&mut chunk[..want], at)?;
            out.write_all(&chunk[..want])?;
            at += want as u64;
        }
        Ok(())
    }

    /// The whole body as one vector (for a queue that keeps bodies in memory).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut all = Vec::with_capacity(usize::try_from(self.len()).unwrap_or(0));
        self.write_all_to(&mut all)?;
        Ok(all)
    }
}

/// Files created by this process, for unique fallback names.
static TEMP_FILES: AtomicU64 = AtomicU64::new(0);

/// A read-write file in `dir` with no name: `O_TMPFILE`, or, where the file system
/// does not support it, a fresh name removed at once.
pub fn temp_file(dir: &Path) -> io::Result<File> {
    let anonymous = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir);
    match anonymous {
        Ok(file) => Ok(file),
        // EOPNOTSUPP/EISDIR/EINVAL: no O_TMPFILE on this file system or kernel.
        Err(e)
            if e.kind() != io::ErrorKind::NotFound
                && e.kind() != io::ErrorKind::PermissionDenied =>
        {
            named_then_unlinked(dir)
        }
        Err(e) => Err(e),
    }
}

fn named_then_unlinked(dir: &Path) -> io::Result<File> {
    let n = TEMP_FILES.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(".serviceq-body-{}-{n}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// Checks at start (and on `--check`) that bodies can spill into `dir`.
pub fn check_temp_dir(dir: &Path) -> io::Result<()> {
    let mut file = temp_file(dir)?;
    file.write_all(b"x")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spill(memory_bytes: usize) -> Spill {
        Spill {
            memory_bytes,
            dir: std::env::temp_dir(),
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Bodies below, at and above the memory part, appended in pieces of every size,
    /// read back the same; memory never holds more than its part.
    #[test]
    fn append_then_read_back_across_the_spill_boundary() {
        for total in [0usize, 1, 1023, 1024, 1025, 5000, 200_000] {
            for piece in [1usize, 7, 1024, 65_536] {
                let data = pattern(total);
                let mut body = Body::new();
                for part in data.chunks(piece) {
                    body.append(part, &spill(1024)).unwrap();
                }
                assert_eq!(body.len(), total as u64);
                assert!(body.memory().len() <= 1024);
                assert_eq!(body.is_spilled(), total > 1024, "{total}/{piece}");
                assert_eq!(body.to_vec().unwrap(), data, "{total}/{piece}");
            }
        }
    }

    #[test]
    fn clear_drops_the_file_and_large_memory() {
        let mut body = Body::new();
        body.append(&pattern(100_000), &spill(65_536)).unwrap();
        assert!(body.is_spilled());
        body.clear(1024);
        assert!(body.is_empty() && !body.is_spilled());
        assert_eq!(body.mem.capacity(), 0);
        body.append(b"abc", &spill(65_536)).unwrap();
        assert_eq!(body.to_vec().unwrap(), b"abc");
    }

    /// The file part goes through a socket whole, twice (a retry reads it again).
    #[test]
    fn file_part_is_sent_whole_on_every_attempt() {
        use std::net::{TcpListener, TcpStream};
        let data = pattern(300_000);
        let mut body = Body::new();
        body.append(&data, &spill(4096)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        let mut out = Stream::Plain(TcpStream::connect(addr).unwrap());
        for _ in 0..2 {
            out.write_all(body.memory()).unwrap();
            body.write_file_part(&mut out).unwrap();
        }
        drop(out);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), 2 * data.len());
        assert_eq!(&got[..data.len()], &data[..]);
        assert_eq!(&got[data.len()..], &data[..]);
    }

    #[test]
    fn temp_files_leave_no_name_behind() {
        let dir = std::env::temp_dir().join(format!("sq-body-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = temp_file(&dir).unwrap();
        let g = named_then_unlinked(&dir).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        drop((f, g));
        std::fs::remove_dir(&dir).unwrap();
        assert!(check_temp_dir(Path::new("/nonexistent/sq")).is_err());
    }
}
