//! The chunked transfer coding (RFC 9112 §7.1), decoded as a push state machine that
//! never buffers payload: each call hands back the payload bytes it found in place.
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk   = 1*("0") [ chunk-ext ] CRLF
//! ```
//!
//! Framing bytes (size lines, CRLFs, trailers) are read one byte at a time into counters,
//! so a caller never has to keep a partial line: it hands over whatever it has, keeps
//! the bytes after `consumed`, and calls again. The decoder is strict, because a gateway
//! that reads a chunk boundary differently from the server behind it can be made to
//! smuggle requests:
//!
//! - chunk-size is 1*HEXDIG: no sign, no `0x`, no whitespace before it, at most a
//!   `u64` (more significant digits than that is an error, not a wrap).
//! - Whitespace after the size is allowed only as BWS before a `;` extension
//!   (RFC 9112 §7.1.1); `5 \r\n` is rejected (some servers accept it: the stricter
//!   reading is the one that cannot be used to disagree with them on a boundary).
//! - Every line ends in CRLF exactly: a bare LF, or a CR not followed by LF, is an error.
//!   RFC 9112 §7.1 writes CRLF, and servers that disagree on chunk line terminators are
//!   a known request-smuggling vector, so the head's bare-LF leniency stops here.
//! - Extensions and trailer fields are skipped, but bounded in size.

/// Bytes allowed in one chunk-size line before its CRLF (size, BWS and extensions).
pub const MAX_CHUNK_LINE_BYTES: usize = 4096;
/// Bytes allowed in one trailer field line before its CRLF.
pub const MAX_TRAILER_LINE_BYTES: usize = 8192;
/// Bytes allowed in the whole trailer section, the final CRLF included.
pub const MAX_TRAILER_SECTION_BYTES: usize = 16384;

/// What one `decode` call found.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Bytes of input consumed (payload and framing).
    pub consumed: usize,
    /// Chunk payload found in the consumed bytes: a sub-slice of the input, maybe empty.
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Anything that is not `hex-size [;ext] CRLF data CRLF ... 0 CRLF trailers CRLF`.
    Malformed(&'static str),
}

/// Where the decoder stands between two bytes of the coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading chunk-size hex digits; `digits` counts them (0 before the first).
    Size {
        size: u64,
        digits: usize,
    },
    /// After the size: BWS, which must lead to `;` (RFC 9112 §7.1.1).
    SizeBws {
        size: u64,
        line: usize,
    },
    /// Inside a chunk extension, skipped up to the CR.
    Ext {
        size: u64,
        line: usize,
    },
    /// The size line's CR was read; LF must follow.
    SizeLf {
        size: u64,
    },
    /// Inside chunk-data, this many payload bytes to go.
    Data {
        remaining: u64,
    },
    /// After chunk-data: CR, then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF); `total` counts the
    /// trailer section so far.
    TrailerStart {
        total: usize,
    },
    /// In a trailer field name, which must be a token ending in `:`.
    TrailerName {
        total: usize,
        line: usize,
    },
    /// In a trailer field value, up to the CR.
    TrailerValue {
        total: usize,
        line: usize,
    },
    /// A trailer line's CR was read; LF must follow.
    TrailerLf {
        total: usize,
    },
    /// The final CR was read; LF ends the message.
    EndLf,
    Done,
    /// A framing error was found; every later call repeats it.
    Failed(&'static str),
}

/// Decodes one chunked body. Feed it bytes with [`decode`](Self::decode) until
/// [`is_done`](Self::is_done); the bytes it did not consume belong to the next message.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// What one framing byte did.
enum Step {
    /// Keep reading framing bytes.
    Next(State),
    /// A chunk's payload starts after this byte.
    Payload(u64),
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
        }
    }

    /// Payload bytes of the current chunk not yet decoded: what its size line announced
    /// and has not arrived yet (0 between chunks).
    pub fn chunk_remaining(&self) -> u64 {
        match self.state {
            State::Data { remaining } => remaining,
            _ => 0,
        }
    }

    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing from `input` up to and including the payload of at most one
    /// chunk, and returns that payload in place. With non-empty input and the decoder
    /// not done, at least one byte is consumed; once done, nothing is. The payload is
    /// always the tail of the consumed bytes, so a caller loops on the rest.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<'a>, ChunkError> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Done => {
                    return Ok(Decoded {
                        consumed: pos,
                        data: empty_at(input, pos),
                    })
                }
                State::Failed(why) => return Err(ChunkError::Malformed(why)),
                State::Data { remaining } => return Ok(self.take_payload(input, pos, remaining)),
                state => {
                    let Some(&byte) = input.get(pos) else {
                        return Ok(Decoded {
                            consumed: pos,
                            data: empty_at(input, pos),
                        });
                    };
                    pos += 1;
                    self.state = match framing_step(state, byte) {
                        Ok(Step::Next(next)) => next,
                        Ok(Step::Payload(size)) => State::Data { remaining: size },
                        Err(why) => State::Failed(why),
                    };
                }
            }
        }
    }

    /// Hands back up to `remaining` payload bytes starting at `start`.
    fn take_payload<'a>(&mut self, input: &'a [u8], start: usize, remaining: u64) -> Decoded<'a> {
        let available = input.len().saturating_sub(start);
        // `min` with a usize keeps the cast lossless even where usize is 32 bits.
        let take = remaining.min(available as u64) as usize;
        let data = input
            .get(start..start + take)
            .unwrap_or_else(|| empty_at(input, start));
        let left = remaining - take as u64;
        self.state = if left == 0 {
            State::DataCr
        } else {
            State::Data { remaining: left }
        };
        Decoded {
            consumed: start + take,
            data,
        }
    }
}

/// An empty payload that still points into `input`, at the end of the consumed bytes.
fn empty_at(input: &[u8], pos: usize) -> &[u8] {
    input.get(pos..pos).unwrap_or_default()
}

/// The transition for one framing byte (everything but chunk-data).
fn framing_step(state: State, byte: u8) -> Result<Step, &'static str> {
    let next = match state {
        State::Size { size, digits } => size_digit(size, digits, byte)?,
        State::SizeBws { size, line } => match byte {
            b' ' | b'\t' => State::SizeBws {
                size,
                line: bounded_line(line)?,
            },
            b';' => State::Ext {
                size,
                line: bounded_line(line)?,
            },
            _ => return Err("whitespace after chunk size not followed by an extension"),
        },
        State::Ext { size, line } => match byte {
            b'\r' => State::SizeLf { size },
            // RFC 9112 §7.1.1 ext names and values are tokens or quoted-strings: no
            // control characters other than HTAB can appear.
            b'\t' | b' '..=b'~' | 0x80..=0xff => State::Ext {
                size,
                line: bounded_line(line)?,
            },
            _ => return Err("control character in chunk extension"),
        },
        State::SizeLf { size } => match (byte, size) {
            (b'\n', 0) => State::TrailerStart { total: 0 },
            (b'\n', size) => return Ok(Step::Payload(size)),
            _ => return Err("chunk size line not ended by CRLF"),
        },
        State::DataCr => expect(
            byte,
            b'\r',
            State::DataLf,
            "chunk data not followed by CRLF",
        )?,
        State::DataLf => expect(
            byte,
            b'\n',
            State::Size { size: 0, digits: 0 },
            "chunk data not followed by CRLF",
        )?,
        State::TrailerStart { total } => trailer_start(total, byte)?,
        State::TrailerName { total, line } => trailer_name(total, line, byte)?,
        State::TrailerValue { total, line } => trailer_value(total, line, byte)?,
        State::TrailerLf { total } => expect(
            byte,
            b'\n',
            State::TrailerStart {
                total: trailer_total(total)?,
            },
            "trailer line not ended by CRLF",
        )?,
        State::EndLf => expect(byte, b'\n', State::Done, "chunked body not ended by CRLF")?,
        State::Data { .. } | State::Done | State::Failed(_) => state,
    };
    Ok(Step::Next(next))
}

/// One byte of the chunk-size (or what ends it).
fn size_digit(size: u64, digits: usize, byte: u8) -> Result<State, &'static str> {
    if let Some(value) = hex_value(byte) {
        // More than 64 bits of size is an error, never a wrap (RFC 9112 §7.1: a recipient
        // must anticipate large hex numbers and guard against overflow).
        if size > u64::MAX >> 4 {
            return Err("chunk size overflows 64 bits");
        }
        bounded_line(digits)?;
        return Ok(State::Size {
            size: (size << 4) | u64::from(value),
            digits: digits + 1,
        });
    }
    if digits == 0 {
        return Err("chunk size is not a hex number");
    }
    match byte {
        b'\r' => Ok(State::SizeLf { size }),
        b' ' | b'\t' => Ok(State::SizeBws {
            size,
            line: digits + 1,
        }),
        b';' => Ok(State::Ext {
            size,
            line: digits + 1,
        }),
        _ => Err("chunk size is not a hex number"),
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The next length of a chunk-size line, if it stays within its bound.
fn bounded_line(line: usize) -> Result<usize, &'static str> {
    if line >= MAX_CHUNK_LINE_BYTES {
        return Err("chunk size line too long");
    }
    Ok(line + 1)
}

fn expect(byte: u8, want: u8, next: State, why: &'static str) -> Result<State, &'static str> {
    if byte == want {
        Ok(next)
    } else {
        Err(why)
    }
}

/// The first byte of a trailer line: CR of the final CRLF, or the start of a field name.
fn trailer_start(total: usize, byte: u8) -> Result<State, &'static str> {
    let total = trailer_total(total)?;
    match byte {
        b'\r' => Ok(State::EndLf),
        // A leading space would be obs-fold (RFC 9112 §5.2), which is not allowed here.
        _ if is_tchar(byte) => Ok(State::TrailerName { total, line: 1 }),
        _ => Err("invalid trailer field"),
    }
}

fn trailer_name(total: usize, line: usize, byte: u8) -> Result<State, &'static str> {
    let (total, line) = (trailer_total(total)?, trailer_line(line)?);
    match byte {
        b':' => Ok(State::TrailerValue { total, line }),
        // No whitespace between a field name and its colon (RFC 9112 §5.1).
        _ if is_tchar(byte) => Ok(State::TrailerName { total, line }),
        _ => Err("invalid trailer field name"),
    }
}

fn trailer_value(total: usize, line: usize, byte: u8) -> Result<State, &'static str> {
    let total = trailer_total(total)?;
    match byte {
        b'\r' => Ok(State::TrailerLf { total }),
        // field-value = *( field-vchar / SP / HTAB ), RFC 9110 §5.5.
        b'\t' | b' '..=b'~' | 0x80..=0xff => Ok(State::TrailerValue {
            total,
            line: trailer_line(line)?,
        }),
        _ => Err("control character in trailer field value"),
    }
}

fn trailer_total(total: usize) -> Result<usize, &'static str> {
    if total >= MAX_TRAILER_SECTION_BYTES {
        return Err("trailer section too large");
    }
    Ok(total + 1)
}

fn trailer_line(line: usize) -> Result<usize, &'static str> {
    if line >= MAX_TRAILER_LINE_BYTES {
        return Err("trailer line too long");
    }
    Ok(line + 1)
}

/// tchar, RFC 9110 §5.6.2.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in the pieces that `split` cuts, the way a socket reader
    /// would: it keeps the unconsumed bytes and appends the next piece to them.
    /// Returns the payload, the bytes left over after the end, and the first error.
    fn decode_in_pieces(
        input: &[u8],
        mut split: impl FnMut(usize) -> usize,
    ) -> (Vec<u8>, Vec<u8>, Option<ChunkError>) {
        let mut decoder = ChunkedDecoder::new();
        let (mut payload, mut pending) = (Vec::new(), Vec::new());
        let mut rest = input;
        while !rest.is_empty() && !decoder.is_done() {
            let cut = split(rest.len()).clamp(1, rest.len());
            pending.extend_from_slice(&rest[..cut]);
            rest = &rest[cut..];
            loop {
                match decoder.decode(&pending) {
                    Err(e) => return (payload, pending, Some(e)),
                    Ok(d) => {
                        assert_contract(&pending, &d, &decoder);
                        payload.extend_from_slice(d.data);
                        let consumed = d.consumed;
                        pending.drain(..consumed);
                        if consumed == 0 || pending.is_empty() {
                            break;
                        }
                    }
                }
            }
        }
        pending.extend_from_slice(rest);
        (payload, pending, None)
    }

    /// The promises `decode` makes about one successful call.
    fn assert_contract(input: &[u8], d: &Decoded<'_>, decoder: &ChunkedDecoder) {
        assert!(d.consumed <= input.len());
        assert!(d.data.len() <= d.consumed);
        let tail = &input[d.consumed - d.data.len()..d.consumed];
        assert_eq!(
            tail.as_ptr(),
            d.data.as_ptr(),
            "data is the tail of the consumed bytes"
        );
        if !input.is_empty() && d.consumed == 0 {
            assert!(decoder.is_done(), "non-empty input must make progress");
        }
    }

    fn decode_whole(input: &[u8]) -> Result<(Vec<u8>, usize), ChunkError> {
        let (payload, rest, err) = decode_in_pieces(input, |n| n);
        match err {
            Some(e) => Err(e),
            None => Ok((payload, input.len() - rest.len())),
        }
    }

    /// (encoded body, payload, bytes after the body: they belong to the next message)
    const GOOD: &[(&[u8], &[u8], &[u8])] = &[
        (b"0\r\n\r\n", b"", b""),
        (b"000\r\n\r\n", b"", b""),
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello", b""),
        (
            b"5\r\nhello\r\n6\r\n world\r\n1\r\n!\r\n0\r\n\r\n",
            b"hello world!",
            b"",
        ),
        (
            b"a\r\n0123456789\r\nA\r\nabcdefghij\r\n0\r\n\r\n",
            b"0123456789abcdefghij",
            b"",
        ),
        (b"0005\r\nhello\r\n0\r\n\r\n", b"hello", b""),
        (b"5;name\r\nhello\r\n0\r\n\r\n", b"hello", b""),
        (
            b"5;name=value;x=\"q;\\\"s\"\r\nhello\r\n0;last\r\n\r\n",
            b"hello",
            b"",
        ),
        (b"5 ;a=b\r\nhello\r\n0\t;c\r\n\r\n", b"hello", b""),
        (
            b"5\r\nhello\r\n0\r\nExpires: never\r\nX-Sum: 12 34\r\n\r\n",
            b"hello",
            b"",
        ),
        (b"5\r\nhello\r\n0\r\nX-Empty:\r\n\r\n", b"hello", b""),
        (b"3\r\n\r\n\r\r\n0\r\n\r\n", b"\r\n\r", b""),
        (
            b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
            b"hello",
            b"GET / HTTP/1.1\r\n",
        ),
        (b"0\r\n\r\n0\r\n\r\n", b"", b"0\r\n\r\n"),
    ];

    #[test]
    fn good_bodies_decode_whole() {
        for (input, payload, after) in GOOD {
            let got = decode_whole(input);
            let used = input.len() - after.len();
            assert_eq!(
                got,
                Ok((payload.to_vec(), used)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn good_bodies_decode_byte_by_byte() {
        for (input, payload, after) in GOOD {
            let (got, rest, err) = decode_in_pieces(input, |_| 1);
            assert_eq!(err, None);
            assert_eq!(got, *payload);
            assert_eq!(rest, *after);
        }
    }

    #[test]
    fn good_bodies_decode_at_every_split() {
        for (input, payload, after) in GOOD {
            for first in 1..input.len() {
                let mut cuts = [first, input.len()].into_iter();
                let (got, rest, err) = decode_in_pieces(input, |_| cuts.next().unwrap_or(1));
                assert_eq!(err, None);
                assert_eq!(got, *payload, "split at {first}");
                assert_eq!(rest, *after, "split at {first}");
            }
        }
    }

    #[test]
    fn good_bodies_decode_in_random_pieces() {
        let mut rng = crate::http::test_support::XorShift(0x9e37_79b9_7f4a_7c15);
        for (input, payload, after) in GOOD {
            for _ in 0..200 {
                let (got, rest, err) = decode_in_pieces(input, |n| 1 + rng.below(n));
                assert_eq!(err, None);
                assert_eq!(got, *payload);
                assert_eq!(rest, *after);
            }
        }
    }

    #[test]
    fn one_call_returns_at_most_one_chunk() {
        let input = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nNEXT";
        let mut decoder = ChunkedDecoder::new();
        let first = decoder.decode(input).unwrap();
        assert_eq!(
            first,
            Decoded {
                consumed: 6,
                data: b"abc"
            }
        );
        let second = decoder.decode(&input[6..]).unwrap();
        assert_eq!(
            second,
            Decoded {
                consumed: 7,
                data: b"de"
            }
        );
        let third = decoder.decode(&input[13..]).unwrap();
        assert_eq!(
            third,
            Decoded {
                consumed: 7,
                data: b""
            }
        );
        assert!(decoder.is_done());
        assert_eq!(&input[20..], b"NEXT");
        assert_eq!(
            decoder.decode(b"NEXT").unwrap(),
            Decoded {
                consumed: 0,
                data: b""
            }
        );
    }

    #[test]
    fn large_chunk_streams_without_buffering() {
        let mut decoder = ChunkedDecoder::new();
        let d = decoder.decode(b"ffffffffffffffff\r\nabc").unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 21,
                data: b"abc"
            }
        );
        let d = decoder.decode(&[7; 1000]).unwrap();
        assert_eq!((d.consumed, d.data.len()), (1000, 1000));
        assert!(!decoder.is_done());
    }

    #[test]
    fn malformed_bodies() {
        let long_ext = [
            &b"5;"[..],
            &[b'x'; MAX_CHUNK_LINE_BYTES][..],
            b"\r\nhello\r\n0\r\n\r\n",
        ]
        .concat();
        let long_zeros = [
            &[b'0'; MAX_CHUNK_LINE_BYTES + 1][..],
            b"5\r\nhello\r\n0\r\n\r\n",
        ]
        .concat();
        let long_trailer = [
            &b"0\r\nX:"[..],
            &[b'v'; MAX_TRAILER_LINE_BYTES][..],
            b"\r\n\r\n",
        ]
        .concat();
        let many_trailers = [
            &b"0\r\n"[..],
            &b"X-T: 0123456789abcdef\r\n".repeat(1000),
            b"\r\n",
        ]
        .concat();
        let cases: &[(&[u8], &str)] = &[
            (b"\r\n", "empty size line"),
            (b"\r\n5\r\nhello\r\n0\r\n\r\n", "empty size line"),
            (b";ext\r\n", "no size before extension"),
            (b"-1\r\n", "sign"),
            (b"+5\r\nhello\r\n0\r\n\r\n", "sign"),
            (b"0x5\r\nhello\r\n0\r\n\r\n", "0x prefix"),
            (b" 5\r\nhello\r\n0\r\n\r\n", "leading space"),
            (
                b"5 \r\nhello\r\n0\r\n\r\n",
                "trailing space without extension",
            ),
            (
                b"5\t\r\nhello\r\n0\r\n\r\n",
                "trailing tab without extension",
            ),
            (b"5 5\r\nhello\r\n0\r\n\r\n", "space inside size"),
            (b"g\r\n", "not hex"),
            (b"10000000000000000\r\n", "17 significant digits"),
            (b"fffffffffffffffff\r\n", "overflow"),
            (b"5\nhello\r\n0\r\n\r\n", "bare LF after size"),
            (b"5\rhello\r\n0\r\n\r\n", "CR without LF after size"),
            (b"5;a\nhello\r\n0\r\n\r\n", "bare LF after extension"),
            (b"5;a\x00b\r\nhello\r\n0\r\n\r\n", "NUL in extension"),
            (b"5\r\nhelloX\r\n0\r\n\r\n", "data longer than size"),
            (b"5\r\nhello0\r\n\r\n", "missing CRLF after data"),
            (b"5\r\nhello\n0\r\n\r\n", "bare LF after data"),
            (b"5\r\nhello\r0\r\n\r\n", "CR without LF after data"),
            (b"0\n\r\n", "bare LF after last chunk"),
            (b"0\r\n\n", "bare LF at the end"),
            (b"0\r\n\rX", "CR without LF at the end"),
            (b"0\r\nX-T: v\n\r\n", "bare LF after trailer"),
            (b"0\r\nX-T : v\r\n\r\n", "space before colon in trailer"),
            (b"0\r\nX-T\r\n\r\n", "trailer without colon"),
            (b"0\r\n: v\r\n\r\n", "trailer without name"),
            (b"0\r\n folded\r\n\r\n", "obs-fold in trailer"),
            (b"0\r\nX-T: a\x00b\r\n\r\n", "NUL in trailer value"),
            (b"0\r\nX-T: a\rb\r\n\r\n", "CR inside trailer value"),
            (&long_ext, "extension too long"),
            (&long_zeros, "size line too long"),
            (&long_trailer, "trailer line too long"),
            (&many_trailers, "trailer section too large"),
        ];
        for (input, what) in cases {
            let got = decode_whole(input);
            assert!(
                matches!(got, Err(ChunkError::Malformed(_))),
                "{what}: {got:?}"
            );
            // The same error byte by byte, and the decoder stays failed.
            let (_, _, err) = decode_in_pieces(input, |_| 1);
            assert!(err.is_some(), "{what}: byte by byte");
        }
        // Incomplete input is not an error.
        assert_eq!(
            decode_whole(b"5\r\nhel").ok().map(|(p, _)| p),
            Some(b"hel".to_vec())
        );
    }

    #[test]
    fn errors_are_sticky() {
        let mut decoder = ChunkedDecoder::new();
        assert!(decoder.decode(b"x").is_err());
        assert!(decoder.decode(b"0\r\n\r\n").is_err());
        assert!(!decoder.is_done());
    }

    #[test]
    fn bounds_are_exact() {
        let ok_ext = [
            &b"5;"[..],
            &[b'x'; MAX_CHUNK_LINE_BYTES - 2][..],
            b"\r\nhello\r\n0\r\n\r\n",
        ]
        .concat();
        assert_eq!(decode_whole(&ok_ext).map(|(p, _)| p), Ok(b"hello".to_vec()));
        let ok_trailer = [
            &b"0\r\nX:"[..],
            &[b'v'; MAX_TRAILER_LINE_BYTES - 2][..],
            b"\r\n\r\n",
        ]
        .concat();
        assert!(decode_whole(&ok_trailer).is_ok());
        assert!(decode_whole(b"ffffffffffffffff\r\n").is_ok());
        assert!(decode_whole(b"0000ffffffffffffffff\r\n").is_ok());
    }
}
