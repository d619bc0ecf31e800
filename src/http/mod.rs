//! HTTP/1.1 message syntax, with no I/O: request and response heads (on top of
//! `httparse`), the chunked transfer coding, and the header rules a proxy needs
//! (hop-by-hop removal, `Connection` tokens). Everything here is pure and unit-tested;
//! `conn.rs` and `upstream.rs` own the sockets.
//!
//! Strictness follows RFC 9112: a message whose framing could be read two ways is
//! rejected, never repaired, because a gateway that reads a request differently from the
//! server behind it lets requests be smuggled past it.

pub mod chunked;
pub mod head;
pub mod headers;
pub mod upgrade;

pub use chunked::{ChunkError, ChunkedDecoder, Decoded};
pub use head::{
    parse_request, parse_request_into, parse_response, parse_response_into, BodyFraming, HeadError,
    HeadLimits, RequestHead, ResponseFraming, ResponseHead,
};
pub use headers::Header;

/// The two protocol versions ServiceQ speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// Helpers shared by the tests of this module's files.
#[cfg(test)]
pub(crate) mod test_support {
    /// xorshift64*: a tiny deterministic PRNG, so the randomised tests need no crates
    /// and every failure reproduces.
    pub struct XorShift(pub u64);

    impl XorShift {
        pub fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// A number in `0..n` (0 when `n` is 0).
        pub fn below(&mut self, n: usize) -> usize {
            match n {
                0 => 0,
                _ => (self.next_u64() % n as u64) as usize,
            }
        }
    }
}

/// Property-style tests: thousands of pseudo-random inputs, valid and mutated, through
/// every parser. None may panic, and each must keep its consumption contract whatever
/// the input and however it is split.
#[cfg(test)]
mod property_tests {
    use super::test_support::XorShift;
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 256,
        max_headers: 8,
    };
    const ROUNDS: usize = 3000;

    const PIECES: &[&[u8]] = &[
        b"GET ",
        b"POST ",
        b"HEAD ",
        b"OPTIONS ",
        b"CONNECT ",
        b"/",
        b"/a?b=c",
        b"http://h:1/p",
        b"*",
        b" ",
        b"\t",
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"HTTP/2.0",
        b"HTTP/3",
        b"\r\n",
        b"\n",
        b"\r",
        b"Host: a",
        b"Host:",
        b"Content-Length: ",
        b"Transfer-Encoding: ",
        b"chunked",
        b"gzip, ",
        b"Connection: ",
        b"close",
        b"keep-alive",
        b"Expect: 100-continue",
        b":",
        b",",
        b"0",
        b"5",
        b"18446744073709551616",
        b"ff",
        b";ext=1",
        b"\x00",
        b"\x7f",
        b"\xff",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.0 204 ",
        b"HTTP/1.1 100 Continue",
        b"X-A: b",
        b" folded",
        b"hello",
        b"0\r\n\r\n",
        b"5\r\nhello\r\n",
        b"\r\n\r\n",
    ];

    /// Either a well-formed message, a soup of HTTP-ish pieces, or either one mutated.
    fn sample(rng: &mut XorShift, valid: &[u8]) -> Vec<u8> {
        let mut bytes = if rng.below(3) == 0 {
            valid.to_vec()
        } else {
            (0..rng.below(40))
                .flat_map(|_| PIECES[rng.below(PIECES.len())].to_vec())
                .collect()
        };
        for _ in 0..rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            let byte = rng.next_u64() as u8;
            match rng.below(3) {
                0 => bytes.insert(at, byte),
                1 if at < bytes.len() => bytes[at] = byte,
                _ if at < bytes.len() => drop(bytes.remove(at)),
                _ => {}
            }
        }
        bytes
    }

    /// A valid chunked body of random chunks, with optional extensions and trailers.
    fn chunked_body(rng: &mut XorShift) -> (Vec<u8>, Vec<u8>) {
        let (mut encoded, mut payload) = (Vec::new(), Vec::new());
        for _ in 0..rng.below(5) {
            let data: Vec<u8> = (0..1 + rng.below(40))
                .map(|_| rng.next_u64() as u8)
                .collect();
            let ext = if rng.below(2) == 0 { "" } else { " ;n=v" };
            encoded.extend_from_slice(format!("{:x}{ext}\r\n", data.len()).as_bytes());
            encoded.extend_from_slice(&data);
            encoded.extend_from_slice(b"\r\n");
            payload.extend_from_slice(&data);
        }
        encoded.extend_from_slice(if rng.below(2) == 0 {
            b"0\r\n\r\n"
        } else {
            b"0\r\nX-T: 1\r\n\r\n"
        });
        (encoded, payload)
    }

    /// The head parsers' contract for one input.
    fn check_head<H: PartialEq + std::fmt::Debug>(
        buf: &[u8],
        rng: &mut XorShift,
        parse: impl Fn(&[u8]) -> Result<Option<(H, usize)>, HeadError>,
    ) {
        let whole = parse(buf);
        match &whole {
            Ok(Some((head, n))) => {
                assert!(
                    *n > 0 && *n <= buf.len().min(LIMITS.max_head_bytes),
                    "{buf:?}"
                );
                // The head is exactly the first n bytes: alone they parse the same,
                // and any shorter prefix is incomplete.
                let again = parse(&buf[..*n]);
                assert_eq!(
                    again.as_ref().map(|o| o.as_ref().map(|(h, n)| (h, *n))),
                    Ok(Some((head, *n)))
                );
                let cut = rng.below(*n);
                assert_eq!(
                    parse(&buf[..cut]).map(|o| o.is_some()),
                    Ok(false),
                    "{buf:?} cut {cut}"
                );
            }
            Ok(None) => assert!(buf.len() < LIMITS.max_head_bytes),
            Err(_) => {}
        }
        // An error found in a prefix is never undone by more bytes.
        let cut = rng.below(buf.len() + 1);
        if parse(&buf[..cut]).is_err() {
            assert!(whole.is_err(), "{buf:?} cut {cut}");
        }
    }

    #[test]
    fn request_parser_never_panics_and_keeps_its_contract() {
        let mut rng = XorShift(0x5eed_0001);
        let valid = b"POST http://h/p?q HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello";
        for _ in 0..ROUNDS {
            let buf = sample(&mut rng, valid);
            check_head(&buf, &mut rng, |b| parse_request(b, &LIMITS));
        }
    }

    #[test]
    fn response_parser_never_panics_and_keeps_its_contract() {
        let mut rng = XorShift(0x5eed_0002);
        let valid = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for _ in 0..ROUNDS {
            let buf = sample(&mut rng, valid);
            let method = ["GET", "HEAD", "POST"][rng.below(3)];
            check_head(&buf, &mut rng, |b| parse_response(b, &LIMITS, method));
        }
    }

    /// Feeds `input` to a fresh decoder in random pieces, checking every call's
    /// contract; returns (payload, bytes consumed, error).
    fn decode_split(input: &[u8], rng: &mut XorShift) -> (Vec<u8>, usize, Option<ChunkError>) {
        let mut decoder = ChunkedDecoder::new();
        let (mut payload, mut used, mut end) = (Vec::new(), 0, 0);
        while used < input.len() && !decoder.is_done() {
            end = (end + 1 + rng.below(input.len() - end + 1))
                .min(input.len())
                .max(used + 1);
            let window = &input[used..end];
            let got = match decoder.decode(window) {
                Ok(got) => got,
                Err(e) => return (payload, used, Some(e)),
            };
            assert!(got.consumed <= window.len() && got.data.len() <= got.consumed);
            assert!(got.consumed > 0 || window.is_empty() || decoder.is_done());
            let tail = &window[got.consumed - got.data.len()..got.consumed];
            assert_eq!(tail.as_ptr(), got.data.as_ptr());
            payload.extend_from_slice(got.data);
            used += got.consumed;
        }
        if decoder.is_done() {
            assert_eq!(decoder.decode(&input[used..]).map(|d| d.consumed), Ok(0));
        }
        (payload, used, None)
    }

    #[test]
    fn chunked_decoder_never_panics_and_ignores_how_input_is_split() {
        let mut rng = XorShift(0x5eed_0003);
        for round in 0..ROUNDS {
            let (valid, payload) = chunked_body(&mut rng);
            let input = match round % 2 {
                0 => valid.clone(),
                _ => sample(&mut rng, &valid),
            };
            let first = decode_split(&input, &mut rng);
            let second = decode_split(&input, &mut rng);
            // Where an error surfaces depends on the pieces; whether it does does not.
            assert_eq!(first.2.is_some(), second.2.is_some(), "{input:?}");
            if first.2.is_none() {
                assert_eq!((&first.0, first.1), (&second.0, second.1), "{input:?}");
            }
            if input == valid {
                assert_eq!(first, (payload, valid.len(), None));
            }
        }
    }
}
