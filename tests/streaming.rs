//! Bodies (SPEC §3): chunked both ways, HEAD/204 without bodies, responses streamed as
//! they arrive with bounded memory, and an upstream dying mid-response.

// Each test file uses part of the shared helpers: see tests/support/mod.rs.
#[allow(dead_code)]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn chunked_request_body_arrives_with_content_length() {
    let u = Upstream::start(Behaviour::Echo);
    let sq = Conf::new(&[u.url()]).start();
    let mut c = Client::connect(sq.addr());
    c.send("POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    c.send("6;ext=1\r\n world\r\n");
    c.send("0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.body_str());
    let req = &u.requests()[0];
    assert_eq!(req.body_str(), "hello world");
    assert!(
        !req.chunked,
        "upstream request must not be chunked: {:?}",
        req.headers
    );
    assert!(
        req.header("transfer-encoding").is_none(),
        "{:?}",
        req.headers
    );
    assert_eq!(
        req.headers_named("content-length"),
        vec!["11"],
        "{:?}",
        req.headers
    );
}

#[test]
fn body_split_across_reads() {
    let u = Upstream::start(Behaviour::Echo);
    let sq = Conf::new(&[u.url()]).start();
    let mut c = Client::connect(sq.addr());
    c.send("PUT /split HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01");
    thread::sleep(Duration::from_millis(50));
    c.send("2345");
    thread::sleep(Duration::from_millis(50));
    c.send("6789");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(u.requests()[0].body_str(), "0123456789");
}

#[test]
fn chunked_response_reaches_http11_client_chunked() {
    let chunks = vec![b"abc".to_vec(), b"defgh".to_vec(), vec![b'z'; 5000]];
    let u = Upstream::start(Behaviour::Chunked(chunks));
    let sq = Conf::new(&[u.url()]).start();
    let mut c = Client::connect(sq.addr());
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.framing, Framing::Chunked, "{}", r.raw_head);
    assert!(r.header("content-length").is_none(), "{}", r.raw_head);
    let mut want = b"abcdefgh".to_vec();
    want.extend(vec![b'z'; 5000]);
    assert_eq!(r.body, want);
    // The connection is still usable.
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_response().body.len(), want.len());
}

#[test]
fn chunked_response_reaches_http10_client_close_delimited() {
    let u = Upstream::start(Behaviour::Chunked(vec![b"abc".to_vec(), b"defgh".to_vec()]));
    let sq = Conf::new(&[u.url()]).start();
    let mut c = Client::connect(sq.addr());
    c.send("GET / HTTP/1.0\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(
        r.header("transfer-encoding").is_none(),
        "chunked sent to an HTTP/1.0 client: {}",
        r.raw_head
    );
    assert_eq!(r.body_str(), "abcdefgh");
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn response_is_streamed_before_upstream_finishes() {
    let gap = Duration::from_secs(3);
    let u = Upstream::start(Behaviour::ChunkedSlow(
        vec![b"first".to_vec(), b"second".to_vec()],
        gap,
    ));
    let sq = Conf::new(&[u.url()]).start();
    let mut c = Client::connect(sq.addr());
    let start = Instant::now();
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let got = Arc::new(std::sync::Mutex::new(Vec::<(Instant, Vec<u8>)>::new()));
    let g2 = got.clone();
    let r = c
        .read_response_with(false, &mut |b| {
            g2.lock().unwrap().push((Instant::now(), b.to_vec()))
        })
        .expect("response");
    assert_eq!(r.status, 200);
    let got = got.lock().unwrap();
    let all: Vec<u8> = got.iter().flat_map(|(_, b)| b.clone()).collect();
    assert_eq!(all, b"firstsecond");
    let first_at = got[0].0 - start;
    assert!(
        first_at < gap - Duration::from_millis(500),
        "the first chunk arrived after {first_at:?}: the response was buffered, not streamed"
    );
}

#[test]
fn head_response_has_no_body_and_connection_stays_usable() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[u.url()]).start();
    let mut c = Client::connect(sq.addr());
    c.send("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!(r.status, 200);
    c.send("GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
    let r2 = c.read_response();
    assert_eq!(
        r2.status, 200,
        "stray bytes after the HEAD response? {}",
        r2.raw_head
    );
    assert_eq!(r2.body_str(), u.name());
    assert_eq!(u.requests()[0].method, "HEAD");
}

#[test]
fn no_content_response_has_no_body_and_connection_stays_usable() {
    let u = Upstream::start(Behaviour::Ok);
    u.script(vec![
        Behaviour::Respond(Resp::new(204, "No Content", "")),
        Behaviour::Respond(Resp::new(304, "Not Modified", "")),
    ]);
    let sq = Conf::new(&[u.url()]).start();
    let mut c = Client::connect(sq.addr());
    c.send("DELETE /thing HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 204);
    assert!(r.header("transfer-encoding").is_none(), "{}", r.raw_head);
    c.send("GET /cached HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"x\"\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 304);
    c.send("GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "stray bytes after 204/304? {}", r.raw_head);
    assert_eq!(r.body_str(), u.name());
}

#[test]
fn upstream_dying_mid_body_closes_the_client_connection() {
    let u = Upstream::start(Behaviour::CloseMidBody);
    let sq = Conf::new(&[u.url()]).start();
    let mut c = Client::connect(sq.addr());
    c.set_read_timeout(Duration::from_secs(10));
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let start = Instant::now();
    let res = c.try_read_response(false);
    match res {
        Ok(r) if r.status == 200 => {
            panic!(
                "a truncated body was presented as complete: {} + {} bytes",
                r.raw_head,
                r.body.len()
            )
        }
        Ok(_) => {} // an error response made before relaying anything is acceptable
        Err(e) => {
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "client left hanging after the upstream died mid-body ({:?})",
                start.elapsed()
            );
        }
    }
}

#[test]
fn large_response_streams_with_bounded_memory() {
    const SIZE: u64 = 200 * 1024 * 1024;
    const MAX_GROWTH_KIB: u64 = 32 * 1024;
    let u = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[u.url()]).set("CONCURRENCY_PEAK", "8").start();
    // Warm up so per-worker buffers exist before the baseline is taken.
    for _ in 0..3 {
        assert_eq!(get(sq.addr(), "/warm").status, 200);
    }
    let baseline = sq.rss_kib();
    u.set(Behaviour::BigBody(SIZE));

    let pid = sq.pid();
    let done = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (done, max_rss) = (done.clone(), max_rss.clone());
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Some(r) = rss_kib(pid) {
                    max_rss.fetch_max(r, Ordering::SeqCst);
                }
                thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let mut c = Client::connect(sq.addr());
    c.send("GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut count = 0u64;
    let mut mismatch = None;
    let start = Instant::now();
    let block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let r = c
        .read_response_with(false, &mut |mut b| {
            // The mock repeats `block`; compare slice by slice (memcmp, fast in debug).
            while !b.is_empty() {
                let off = (count % 65536) as usize;
                let n = b.len().min(65536 - off);
                if mismatch.is_none() && b[..n] != block[off..off + n] {
                    mismatch = Some(count);
                }
                count += n as u64;
                b = &b[n..];
            }
        })
        .expect("read the big response");
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(count, SIZE, "bytes received");
    assert_eq!(mismatch, None, "body corrupted at this offset");
    let growth = max_rss.load(Ordering::SeqCst).saturating_sub(baseline);
    assert!(
        growth < MAX_GROWTH_KIB,
        "VmRSS grew by {growth} KiB (baseline {baseline} KiB) while relaying {SIZE} bytes in {:?}",
        start.elapsed()
    );
}
