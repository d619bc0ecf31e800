//! `parse_request` (and `parse_response`) on arbitrary bytes with arbitrary limits.
//!
//! Input: 2 bytes of `max_head_bytes`, 1 byte of `max_headers`, 1 byte choosing the
//! request method for `parse_response` and a cut point, then the buffer.
//! Invariants: no panic; an accepted head is the first `n` bytes (`0 < n <= len`,
//! `n <= max_head_bytes`) and those `n` bytes alone parse to the same head; an error
//! found in a prefix is never undone by more bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serviceq::http::{parse_request, parse_response, HeadError, HeadLimits};

fuzz_target!(|data: &[u8]| {
    let Some((&[h0, h1, max_headers, pick], buf)) = data.split_first_chunk::<4>() else {
        return;
    };
    let limits = HeadLimits {
        max_head_bytes: usize::from(u16::from_le_bytes([h0, h1])),
        max_headers: usize::from(max_headers),
    };
    let cut = usize::from(pick) * buf.len() / 255;
    check(buf, cut, &limits, |b| parse_request(b, &limits));
    let method = ["GET", "HEAD", "POST"][usize::from(pick % 3)];
    check(buf, cut, &limits, |b| parse_response(b, &limits, method));
});

fn check<H: PartialEq + std::fmt::Debug>(
    buf: &[u8],
    cut: usize,
    limits: &HeadLimits,
    parse: impl Fn(&[u8]) -> Result<Option<(H, usize)>, HeadError>,
) {
    let whole = parse(buf);
    if let Ok(Some((head, n))) = &whole {
        assert!(*n > 0 && *n <= buf.len(), "n = {n}, len = {}", buf.len());
        assert!(*n <= limits.max_head_bytes, "n = {n} over the limit");
        match parse(&buf[..*n]) {
            Ok(Some((again, m))) => {
                assert_eq!(m, *n, "re-parse consumed a different length");
                assert_eq!(&again, head, "re-parse gave a different head");
            }
            other => panic!(
                "the first {n} bytes alone gave {:?}",
                other.map(|o| o.map(|(_, m)| m))
            ),
        }
    }
    if parse(&buf[..cut]).is_err() {
        assert!(
            whole.is_err(),
            "an error in the first {cut} bytes went away"
        );
    }
}
