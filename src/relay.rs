//! Streaming a response body from an endpoint to the client, as it arrives, through one
//! fixed-size buffer: memory stays bounded whatever the body's size (SPEC §3).

use std::io::{self, Write};

use crate::buffer::IoBuf;
use crate::http::{ChunkedDecoder, ResponseFraming};
use crate::stream::{write_all_vectored, Stream};

/// How the response body is framed towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// As the upstream framed it: Content-Length, or no body.
    AsIs,
    /// Re-chunked by ServiceQ (HTTP/1.1 clients).
    Chunked,
    /// Delimited by closing the connection (HTTP/1.0 clients).
    UntilClose,
}

/// Bytes read from an endpoint per system call while relaying.
pub const RELAY_READ_BYTES: usize = 16 * 1024;
/// Output gathered before a write: small pieces are batched, large ones go out directly.
const OUT_FLUSH_BYTES: usize = 16 * 1024;

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// The whole body went out; the upstream connection may be reused if true.
    Complete { reusable: bool },
    /// Writing to the client failed.
    ClientGone,
    /// The endpoint broke off (or framed the body badly) mid-body; the client's response
    /// is truncated and its connection must be closed (`error::Failure::UpstreamBrokeOff`).
    UpstreamBroke(String),
}

/// The client side of a relay: the head not yet written, then the body, re-framed.
pub struct Sink<'a, W: Write> {
    pub client: &'a mut W,
    pub out: &'a mut Vec<u8>,
    pub framing: ClientFraming,
    /// Body bytes relayed so far (before framing).
    pub body_bytes: u64,
}

impl<W: Write> Sink<'_, W> {
    fn push(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.body_bytes += data.len() as u64;
        let chunked = self.framing == ClientFraming::Chunked;
        if chunked {
            self.out
                .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        let tail: &[u8] = if chunked { b"\r\n" } else { b"" };
        if data.len() >= OUT_FLUSH_BYTES / 2 {
            write_all_vectored(self.client, &[self.out, data, tail])?;
            self.out.clear();
        } else {
            self.out.extend_from_slice(data);
            self.out.extend_from_slice(tail);
            if self.out.len() >= OUT_FLUSH_BYTES {
                self.flush()?;
            }
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.client.write_all(self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.framing == ClientFraming::Chunked {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        self.flush()
    }
}

/// Relays the body that follows a response head: the first bytes are already in `buf`,
/// the rest is read from `upstream`.
pub fn relay_body(
    upstream: &mut Stream,
    buf: &mut IoBuf,
    framing: ResponseFraming,
    keep_alive: bool,
    sink: &mut Sink<'_, impl Write>,
) -> RelayEnd {
    let result = match framing {
        ResponseFraming::NoBody => Ok(true),
        ResponseFraming::Length(n) => relay_length(upstream, buf, n, sink),
        ResponseFraming::Chunked => relay_chunked(upstream, buf, sink),
        ResponseFraming::UntilClose => relay_until_close(upstream, buf, sink),
    };
    match result {
        Ok(clean_end) => match sink.finish() {
            Ok(()) => RelayEnd::Complete {
                reusable: clean_end && keep_alive && buf.is_empty(),
            },
            Err(_) => RelayEnd::ClientGone,
        },
        Err(Broke::Client) => RelayEnd::ClientGone,
        Err(Broke::Upstream(why)) => RelayEnd::UpstreamBroke(why),
    }
}

enum Broke {
    Client,
    Upstream(String),
}

/// Reads more from the endpoint after sending what is gathered, so the client sees
/// data as soon as it arrives. Returns the count read (0 = the endpoint closed).
fn refill(
    upstream: &mut Stream,
    buf: &mut IoBuf,
    sink: &mut Sink<'_, impl Write>,
) -> Result<usize, Broke> {
    sink.flush().map_err(|_| Broke::Client)?;
    match buf.read_from(upstream, RELAY_READ_BYTES) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(Broke::Upstream("relay buffer full".into())),
        Err(e) => Err(Broke::Upstream(e.to_string())),
    }
}

fn relay_length(
    upstream: &mut Stream,
    buf: &mut IoBuf,
    mut remaining: u64,
    sink: &mut Sink<'_, impl Write>,
) -> Result<bool, Broke> {
    loop {
        let take = (buf.len() as u64).min(remaining) as usize;
        sink.push(&buf.filled()[..take])
            .map_err(|_| Broke::Client)?;
        buf.consume(take);
        remaining -= take as u64;
        if remaining == 0 {
            return Ok(true);
        }
        if refill(upstream, buf, sink)? == 0 {
            return Err(Broke::Upstream(format!(
                "closed with {remaining} body bytes missing"
            )));
        }
    }
}

fn relay_chunked(
    upstream: &mut Stream,
    buf: &mut IoBuf,
    sink: &mut Sink<'_, impl Write>,
) -> Result<bool, Broke> {
    let mut decoder = ChunkedDecoder::new();
    loop {
        while !buf.is_empty() && !decoder.is_done() {
            let decoded = decoder
                .decode(buf.filled())
                .map_err(|e| Broke::Upstream(format!("bad chunked body: {e:?}")))?;
            sink.push(decoded.data).map_err(|_| Broke::Client)?;
            let consumed = decoded.consumed;
            buf.consume(consumed);
        }
        if decoder.is_done() {
            return Ok(true);
        }
        if refill(upstream, buf, sink)? == 0 {
            return Err(Broke::Upstream("closed inside a chunked body".into()));
        }
    }
}

fn relay_until_close(
    upstream: &mut Stream,
    buf: &mut IoBuf,
    sink: &mut Sink<'_, impl Write>,
) -> Result<bool, Broke> {
    loop {
        sink.push(buf.filled()).map_err(|_| Broke::Client)?;
        buf.clear();
        if refill(upstream, buf, sink)? == 0 {
            // The close ends the body; the connection is spent.
            return Ok(false);
        }
    }
}
