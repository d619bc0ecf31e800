//! Differential check of what ServiceQ forwards: a client request head that
//! `parse_request` accepts is rebuilt by `forward::upstream_request` (plus the `Host`
//! line that `upstream.rs` adds per endpoint), and the result must parse back, with the
//! same parser, to the same request. If the two ends of the proxy read a request
//! differently, a request can be smuggled past it.
//!
//! Input: the client's bytes. The head is what `parse_request` accepts at the start;
//! the body length is the head's Content-Length, or (chunked) the bytes after the head.
//! Checked: method and target survive; every end-to-end field survives with its name,
//! value and order; framing is Content-Length = body length (or none for a request
//! without a body); no hop-by-hop field, nor any field the client's `Connection`
//! named, crosses; exactly one of each field ServiceQ sets itself, X-Request-Id being
//! the client's first usable one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serviceq::forward::{upstream_request, Origin};
use serviceq::http::headers::{connection_tokens, is_hop_by_hop, HOP_BY_HOP};
use serviceq::http::{parse_request, BodyFraming, HeadLimits, Header, RequestHead, Version};
use serviceq::forward::CustomHeaders;

/// Fields ServiceQ writes itself on every upstream request (SPEC §3), replacing the
/// client's: they are checked on their own, not compared with the client's.
const SET_BY_SERVICEQ: [&str; 7] = [
    "host",
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

const CLIENT_LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 16384,
    max_headers: 100,
};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((head, n))) = parse_request(data, &CLIENT_LIMITS) else {
        return;
    };
    let body_len = match head.framing {
        BodyFraming::None => 0,
        BodyFraming::Length(len) => len.min(1 << 40),
        BodyFraming::Chunked => (data.len() - n) as u64,
    };
    let custom = CustomHeaders::new(&[]);
    let origin = Origin {
        client_ip: "192.0.2.7",
        proto: "http",
        custom: &custom,
    };
    let (mut line, mut fields) = (Vec::new(), Vec::new());
    let id = upstream_request(
        &head,
        body_len,
        &origin,
        || "generated-id".into(),
        &mut line,
        &mut fields,
    );
    let forwarded = [&line[..], b"Host: x\r\n", &fields[..]].concat();

    let limits = HeadLimits {
        max_head_bytes: forwarded.len(),
        max_headers: head.headers.len() + 8,
    };
    let again = match parse_request(&forwarded, &limits) {
        Ok(Some((again, m))) => {
            assert_eq!(m, forwarded.len(), "forwarded head has trailing bytes");
            again
        }
        other => panic!(
            "forwarded head does not parse: {other:?}\n{}",
            String::from_utf8_lossy(&forwarded)
        ),
    };
    check(&head, body_len, &id, &again, &forwarded);
});

fn check(client: &RequestHead, body_len: u64, id: &str, up: &RequestHead, raw: &[u8]) {
    let shown = String::from_utf8_lossy(raw);
    assert_eq!(up.method, client.method, "method\n{shown}");
    assert_eq!(up.target, client.target, "target\n{shown}");
    assert_eq!(up.authority, None, "authority\n{shown}");
    assert_eq!(up.version, Version::Http11, "version\n{shown}");
    assert!(up.keep_alive, "upstream request is not persistent\n{shown}");
    assert!(!up.expect_continue, "Expect crossed\n{shown}");

    // Framing: Content-Length, equal to the body ServiceQ sends.
    let want = match (client.framing, body_len) {
        (BodyFraming::None, 0) => BodyFraming::None,
        _ => BodyFraming::Length(body_len),
    };
    assert_eq!(up.framing, want, "framing\n{shown}");

    // End-to-end fields: all of them, in order, names and values intact.
    let tokens = connection_tokens(&client.headers);
    let end_to_end = |h: &&Header| {
        !is_hop_by_hop(&h.name, &tokens)
            && !SET_BY_SERVICEQ
                .iter()
                .any(|s| s.eq_ignore_ascii_case(&h.name))
    };
    let sent: Vec<&Header> = client.headers.iter().filter(end_to_end).collect();
    let own = |h: &&Header| {
        !SET_BY_SERVICEQ
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&h.name))
    };
    // An upgrade keeps `Connection: upgrade` and its protocols (`tunnel.rs`), less h2c.
    let upgrade = serviceq::http::upgrade::offered_upgrade(client);
    let switching = |h: &Header| {
        upgrade.is_some()
            && (h.name.eq_ignore_ascii_case("connection") || h.name.eq_ignore_ascii_case("upgrade"))
    };
    let got: Vec<&Header> = up
        .headers
        .iter()
        .filter(own)
        .filter(|h| !switching(h))
        .collect();
    assert_eq!(got, sent, "end-to-end fields\n{shown}");
    if let Some(protocols) = &upgrade {
        let pair: Vec<(&str, &[u8])> = up
            .headers
            .iter()
            .filter(|h| switching(h))
            .map(|h| (h.name.as_str(), h.value.as_slice()))
            .collect();
        let want: [(&str, &[u8]); 2] = [("Connection", b"upgrade"), ("Upgrade", protocols)];
        assert_eq!(pair, want, "upgrade fields\n{shown}");
    }

    // Nothing hop-by-hop, nothing the client's Connection named (except ServiceQ's own
    // fields, which are new ones for the next hop).
    for h in up.headers.iter().filter(|h| !switching(h)) {
        assert!(
            !HOP_BY_HOP.iter().any(|n| n.eq_ignore_ascii_case(&h.name)),
            "hop-by-hop {:?} crossed\n{shown}",
            h.name
        );
    }

    // ServiceQ's own fields, once each.
    let count = |name: &str| {
        up.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    for name in [
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-request-id",
    ] {
        assert_eq!(count(name), 1, "{name}\n{shown}");
    }
    let value = |name: &str| {
        up.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.clone())
    };
    assert_eq!(
        value("x-request-id"),
        Some(id.as_bytes().to_vec()),
        "request id\n{shown}"
    );
    let xff = value("x-forwarded-for").unwrap();
    assert!(xff.ends_with(b"192.0.2.7"), "X-Forwarded-For\n{shown}");
    let client_host = client
        .authority
        .as_ref()
        .map(|a| a.as_bytes().to_vec())
        .or_else(|| {
            client
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .map(|h| h.value.clone())
        });
    assert_eq!(
        value("x-forwarded-host"),
        client_host,
        "X-Forwarded-Host\n{shown}"
    );
    // The SPEC keeps "the client's value"; with several, the first usable one (non-empty
    // UTF-8) is kept, else a new id is made.
    let client_id = client
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-request-id"))
        .find_map(|h| {
            String::from_utf8(h.value.clone())
                .ok()
                .filter(|v| !v.is_empty())
        });
    assert_eq!(
        id,
        client_id.as_deref().unwrap_or("generated-id"),
        "request id kept\n{shown}"
    );
}
