//! `ChunkedDecoder` on arbitrary bytes, whole and split into arbitrary pieces.
//!
//! Input: 8 bytes seeding the split points, then the encoded body.
//! Invariants: no panic; each `decode` keeps its contract (consumes at most what it was
//! given, makes progress on non-empty input until done, hands back payload that is the
//! tail of what it consumed, consumes nothing once done); decoding whole and in pieces
//! yields the same payload and the same outcome (done after the same number of bytes,
//! the same error, or still waiting for more).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serviceq::http::{ChunkError, ChunkedDecoder};

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done { consumed: usize },
    Failed(ChunkError),
    NeedMore,
}

fuzz_target!(|data: &[u8]| {
    let Some((seed, input)) = data.split_first_chunk::<8>() else {
        return;
    };
    let whole = decode_in_pieces(input, &mut std::iter::once(input.len()));
    let mut rng = u64::from_le_bytes(*seed) | 1;
    let mut sizes = std::iter::from_fn(move || {
        // xorshift64: piece sizes of 1..=16 bytes, sometimes larger.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        Some(match rng % 8 {
            0 => 1 + (rng >> 8) as usize % 512,
            _ => 1 + (rng >> 8) as usize % 16,
        })
    });
    let split = decode_in_pieces(input, &mut sizes);
    assert_eq!(whole, split, "whole vs split decoding differ");
});

/// Feeds `input` in pieces of the given sizes, as `conn.rs` does: keep what was not
/// consumed, append the next piece, decode again.
fn decode_in_pieces(input: &[u8], sizes: &mut dyn Iterator<Item = usize>) -> (Vec<u8>, Outcome) {
    let mut decoder = ChunkedDecoder::new();
    let mut payload = Vec::new();
    let (mut fed, mut used) = (0, 0);
    loop {
        // Decode everything fed so far.
        while used < fed {
            let window = &input[used..fed];
            let got = match decoder.decode(window) {
                Ok(got) => got,
                Err(e) => return (payload, Outcome::Failed(e)),
            };
            assert!(got.consumed <= window.len(), "consumed more than given");
            assert!(
                got.data.len() <= got.consumed,
                "payload longer than consumed"
            );
            let tail = &window[got.consumed - got.data.len()..got.consumed];
            assert_eq!(
                tail.as_ptr(),
                got.data.as_ptr(),
                "payload is not the consumed tail"
            );
            payload.extend_from_slice(got.data);
            used += got.consumed;
            if decoder.is_done() {
                let after = decoder.decode(&input[used..]).map(|d| d.consumed);
                assert_eq!(after, Ok(0), "a done decoder consumed more");
                return (payload, Outcome::Done { consumed: used });
            }
            assert!(got.consumed > 0, "no progress on {} bytes", window.len());
        }
        if fed == input.len() {
            return (payload, Outcome::NeedMore);
        }
        fed = (fed + sizes.next().unwrap_or(input.len())).min(input.len());
    }
}
