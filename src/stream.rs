//! `Stream`: a TCP connection, plain or TLS, as one `Read + Write` type, so that
//! reading, writing and relaying never branch on TLS. The few places that must, branch
//! on the variant themselves: making the stream (`conn.rs` for clients, `upstream.rs`
//! for endpoints), what only a plain socket allows (the blocking first-byte peek and
//! the lingering close in `conn.rs`, the kernel copy (`sendfile`/`splice`) of a body file in
//! `body.rs`), and checking an idle pooled connection (`upstream.rs::is_quiet`).

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
            Stream::Tls(s) => write_coalesced(s.as_mut(), bufs),
            Stream::Served(s) => write_coalesced(s.as_mut(), bufs),
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

/// The most a TLS write gathers: one TLS record's worth of plaintext.
const TLS_RECORD_BYTES: usize = 16 * 1024;

/// A TLS stream has no gathering write (the default takes the first slice only), so a
/// response head and its body would go out as two records and two system calls. Small
/// slices are copied into one record's worth first, as nginx's output buffer does.
fn write_coalesced(w: &mut impl Write, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    let mut parts = bufs.iter().filter(|b| !b.is_empty());
    let Some(first) = parts.next() else {
        return Ok(0);
    };
    if first.len() >= TLS_RECORD_BYTES || bufs.iter().filter(|b| !b.is_empty()).count() == 1 {
        return w.write(first);
    }
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    // Sized to what is sent (one small allocation), not a zeroed 16 KiB array.
    let mut record = Vec::with_capacity(total.min(TLS_RECORD_BYTES));
    for part in std::iter::once(first).chain(parts) {
        let take = part.len().min(TLS_RECORD_BYTES - record.len());
        record.extend_from_slice(&part[..take]);
        if record.len() == TLS_RECORD_BYTES {
            break;
        }
    }
    w.write(&record)
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

/// Sets TCP_DEFER_ACCEPT on a listening socket: the kernel hands a connection over once
/// its first data has arrived, or `secs` after the handshake. Neither `std` (unstable)
/// nor `socket2` offers it, hence the one `setsockopt` call written here.
pub fn set_defer_accept(socket: &socket2::Socket, secs: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `setsockopt` reads exactly `len` bytes from the pointer, which points to
    // `secs`, a live `c_int` on this stack frame for the whole call, and `len` is its
    // size; the descriptor is borrowed from `socket`, open for the call's duration. The
    // call writes nothing through the pointer (the kernel copies the value in).
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast::<libc::c_void>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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

    /// Counts write calls, taking everything offered.
    struct Calls(Vec<Vec<u8>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn tls_writes_gather_small_parts_into_one_record() {
        let (head, body) = (vec![b'h'; 100], vec![b'b'; 64]);
        let mut w = Calls(Vec::new());
        let n = super::write_coalesced(
            &mut w,
            &[
                io::IoSlice::new(&head),
                io::IoSlice::new(&[]),
                io::IoSlice::new(&body),
            ],
        )
        .unwrap();
        assert_eq!((n, w.0.len()), (164, 1));
        assert_eq!(w.0[0], [head.clone(), body.clone()].concat());
        // A part of a record or more goes alone; the gather stops at a record.
        let big = vec![b'x'; 20_000];
        let mut w = Calls(Vec::new());
        assert_eq!(
            super::write_coalesced(&mut w, &[io::IoSlice::new(&big), io::IoSlice::new(&body)])
                .unwrap(),
            20_000
        );
        let mut w = Calls(Vec::new());
        let n = super::write_coalesced(&mut w, &[io::IoSlice::new(&head), io::IoSlice::new(&big)])
            .unwrap();
        assert_eq!(n, 16 * 1024);
        assert_eq!(&w.0[0][..100], &head[..]);
        // Through write_all_vectored every byte still arrives once, in order.
        let mut w = Calls(Vec::new());
        struct Gather<'a>(&'a mut Calls);
        impl Write for Gather<'_> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.write(buf)
            }
            fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                super::write_coalesced(self.0, bufs)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        write_all_vectored(&mut Gather(&mut w), &[&head, &big, &body]).unwrap();
        assert_eq!(w.0.concat(), [head, big, body].concat());
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
