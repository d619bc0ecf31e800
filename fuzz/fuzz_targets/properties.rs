//! `config::parse_reader` on arbitrary bytes: never a panic, both outcomes can be shown
//! (an error or a warning is one line), and an accepted configuration's custom headers
//! cannot break the messages they are added to: rendered into a request and a response
//! head, those still parse, with the same framing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serviceq::http::{parse_request, parse_response, BodyFraming, HeadLimits, ResponseFraming};
use serviceq::forward::CustomHeaders;
use std::path::Path;

const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 1 << 20,
    max_headers: 10_000,
};

fuzz_target!(|data: &[u8]| {
    match serviceq::config::parse_reader(data, Path::new("fuzz.properties")) {
        Ok((config, warnings)) => {
            let _ = format!("{config:?}");
            assert!(
                warnings.iter().all(|w| !w.contains('\n')),
                "multi-line warning"
            );
            let request = CustomHeaders::new(&config.custom_request_headers);
            let head = [
                &b"GET / HTTP/1.1\r\nHost: x\r\n"[..],
                &request.rendered,
                b"\r\n",
            ]
            .concat();
            match parse_request(&head, &LIMITS) {
                Ok(Some((parsed, _))) => assert_eq!(parsed.framing, BodyFraming::None),
                other => panic!("custom request headers break the request: {other:?}"),
            }
            let response = CustomHeaders::new(&config.custom_response_headers);
            let head = [
                &b"HTTP/1.1 200 OK\r\n"[..],
                &response.rendered,
                b"Content-Length: 0\r\n\r\n",
            ]
            .concat();
            match parse_response(&head, &LIMITS, "GET") {
                Ok(Some((parsed, _))) => assert_eq!(parsed.framing, ResponseFraming::Length(0)),
                other => panic!("custom response headers break the response: {other:?}"),
            }
        }
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "multi-line error: {line:?}");
        }
    }
});
