//! `IoBuf`: a bounded read buffer with a filled window `start..end`, shared by the client
//! and upstream sides. Bytes after a parsed message stay in it (pipelining); it never
//! grows past the limit it is given.

use std::io::{self, Read};

pub struct IoBuf {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
    /// Storage allocated at the first read, so that the 2048 workers of a large
    /// CONCURRENCY_PEAK cost no buffer memory until they serve a connection.
    initial: usize,
}

impl IoBuf {
    pub fn with_capacity(capacity: usize) -> Self {
        IoBuf {
            bytes: Vec::new(),
            start: 0,
            end: 0,
            initial: capacity.max(1),
        }
    }

    /// The bytes received and not yet consumed.
    pub fn filled(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Marks `n` filled bytes as used.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Reads once from `r`, keeping at most `limit` filled bytes: returns the number
    /// read (0 = end of stream), or `Ok(None)` when `limit` bytes are already held.
    pub fn read_from(&mut self, r: &mut impl Read, limit: usize) -> io::Result<Option<usize>> {
        if self.len() >= limit {
            return Ok(None);
        }
        if self.bytes.is_empty() {
            self.bytes.resize(self.initial.min(limit).max(1), 0);
        }
        self.make_room(limit);
        let room = (self.bytes.len() - self.end).min(limit - self.len());
        let n = loop {
            match r.read(&mut self.bytes[self.end..self.end + room]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.end += n;
        Ok(Some(n))
    }

    /// Ensures there is space after `end`: slides the window to the front, then grows
    /// the storage (doubling) up to `limit`.
    fn make_room(&mut self, limit: usize) {
        if self.end < self.bytes.len() {
            return;
        }
        if self.start > 0 {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.bytes.len() && self.bytes.len() < limit {
            let grown = (self.bytes.len() * 2).max(1024).min(limit);
            self.bytes.resize(grown, 0);
        }
    }

    /// Gives back memory above `capacity` (used while a connection sits idle).
    pub fn shrink_to(&mut self, capacity: usize) {
        if self.bytes.len() > capacity && self.len() <= capacity {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            self.bytes.truncate(capacity);
            self.bytes.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_unconsumed_bytes_across_reads_and_respects_the_limit() {
        let mut buf = IoBuf::with_capacity(4);
        let mut src: &[u8] = b"abcdefghij";
        assert_eq!(buf.read_from(&mut src, 6).unwrap(), Some(4));
        buf.consume(3);
        assert_eq!(buf.filled(), b"d");
        assert_eq!(buf.read_from(&mut src, 6).unwrap(), Some(3));
        assert_eq!(buf.filled(), b"defg");
        assert_eq!(buf.read_from(&mut src, 6).unwrap(), Some(2));
        assert_eq!(buf.filled(), b"defghi");
        assert_eq!(buf.read_from(&mut src, 6).unwrap(), None);
        buf.consume(6);
        assert!(buf.is_empty());
        assert_eq!(buf.read_from(&mut src, 6).unwrap(), Some(1));
        assert_eq!(buf.read_from(&mut src, 6).unwrap(), Some(0));
    }

    #[test]
    fn shrink_keeps_content() {
        let mut buf = IoBuf::with_capacity(8);
        let mut src: &[u8] = b"0123456789abcdef";
        while let Some(n) = buf.read_from(&mut src, 16).unwrap() {
            assert!(n > 0, "source ended before the limit");
        }
        assert_eq!(buf.len(), 16);
        buf.consume(14);
        buf.shrink_to(4);
        assert_eq!(buf.filled(), b"ef");
    }
}
