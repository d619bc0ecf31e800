//! `Stream`: a TCP connection, plain or TLS, as one `Read + Write` type, so that no
//! other file branches on TLS.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use native_tls::TlsStream;
use openssl::ssl::SslStream;

pub enum Stream {
    Plain(TcpStream),
    /// To an `https://` endpoint (native-tls).
    Tls(Box<TlsStream<TcpStream>>),
    /// A client of the TLS listener (the `openssl` crate, see `tls.rs`).
    Served(Box<SslStream<Deadlined>>),
}

/// A TCP socket under a listener's TLS session. While `deadline` is set (the
/// handshake), every read and write first shrinks the socket's timeout to the time left,
/// so a peer that dribbles a byte at a time cannot stretch the phase: OpenSSL loops on
/// reads inside one handshake call, where no caller could re-arm a timeout.
pub struct Deadlined {
    pub tcp: TcpStream,
    pub deadline: Option<Instant>,
}

impl Deadlined {
    fn arm(&self, set: fn(&TcpStream, Option<Duration>) -> io::Result<()>) -> io::Result<()> {
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        set(&self.tcp, Some(left))
    }
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(TcpStream::set_read_timeout)?;
        self.tcp.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(TcpStream::set_write_timeout)?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

impl Stream {
    /// The TCP socket underneath, for timeouts and shutdown.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
            Stream::Served(s) => &s.get_ref().tcp,
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(timeout)
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp().set_write_timeout(timeout)
    }

    /// Ends our sending side. On TLS a close_notify goes first, best effort.
    pub fn shutdown_write(&mut self) {
        match self {
            Stream::Plain(_) => {}
            Stream::Tls(s) => {
                let _ = s.shutdown();
            }
            Stream::Served(s) => {
                let _ = s.shutdown();
            }
        }
        let _ = self.tcp().shutdown(Shutdown::Write);
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Served(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Served(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write_vectored(bufs),
            Stream::Tls(s) => s.write_vectored(bufs),
            Stream::Served(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Served(s) => s.flush(),
        }
    }
}

/// Bounds every blocking read and write on `tcp` by `limit` (`None`: no bound).
pub fn set_timeouts(tcp: &TcpStream, limit: Option<Duration>) -> io::Result<()> {
    tcp.set_read_timeout(limit)?;
    tcp.set_write_timeout(limit)
}

/// Peeks at what `tcp` has received without blocking or consuming it: `Ok(0)` once the
/// peer has closed, `WouldBlock` when nothing has arrived.
pub fn peek_nonblocking(tcp: &TcpStream) -> io::Result<usize> {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    socket2::SockRef::from(tcp).recv_with_flags(&mut probe, flags)
}

/// Writes every byte of `parts` in as few system calls as the kernel allows.
pub fn write_all_vectored(w: &mut impl Write, parts: &[&[u8]]) -> io::Result<()> {
    // The slices live on the stack: callers pass a handful of parts.
    const MAX_PARTS: usize = 8;
    if parts.len() > MAX_PARTS {
        return parts.iter().try_for_each(|p| w.write_all(p));
    }
    let mut array = [io::IoSlice::new(&[]); MAX_PARTS];
    let mut n = 0;
    for p in parts.iter().filter(|p| !p.is_empty()) {
        array[n] = io::IoSlice::new(p);
        n += 1;
    }
    let mut slices = &mut array[..n];
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::write_all_vectored;
    use std::io::{self, Write};

    /// Takes at most 3 bytes per call, from the vectored path as from the plain one.
    struct Trickle(Vec<u8>);

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            self.write(first)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_every_part_in_order_through_partial_writes() {
        let parts: Vec<Vec<u8>> = (0..12).map(|i| vec![b'a' + i as u8; i % 5]).collect();
        for count in [0, 1, 4, 8, 9, 12] {
            let slices: Vec<&[u8]> = parts[..count].iter().map(Vec::as_slice).collect();
            let mut out = Trickle(Vec::new());
            write_all_vectored(&mut out, &slices).unwrap();
            assert_eq!(out.0, slices.concat(), "{count} parts");
        }
    }
}
