//! What crosses the proxy: the upstream request ServiceQ writes for a client request
//! (SPEC §3's forwarding headers, hop-by-hop removal, its own framing) and the response
//! head it writes back to the client.

use crate::http::headers::{self, connection_tokens, is_hop_by_hop};
use crate::http::{RequestHead, ResponseFraming, ResponseHead, Version};
use crate::relay::ClientFraming;

/// Header lines added to every message in one direction, pre-rendered once.
pub struct CustomHeaders {
    /// `Name: value\r\n` for each.
    pub rendered: Vec<u8>,
    /// Lower-cased names, to drop same-named headers they replace.
    pub names: Vec<String>,
}

impl CustomHeaders {
    pub fn new(pairs: &[(String, String)]) -> Self {
        let mut rendered = Vec::new();
        for (name, value) in pairs {
            rendered.extend_from_slice(name.as_bytes());
            rendered.extend_from_slice(b": ");
            rendered.extend_from_slice(value.as_bytes());
            rendered.extend_from_slice(b"\r\n");
        }
        CustomHeaders {
            rendered,
            names: pairs.iter().map(|(n, _)| n.to_ascii_lowercase()).collect(),
        }
    }

    pub fn replaces(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Request headers that ServiceQ sets itself, so the client's copies are not forwarded
/// as they are (RFC 9110 §7.2 for Host; `Expect` because the body was already read).
const REPLACED_ON_REQUESTS: [&str; 7] = [
    "host",
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

/// Where a request came from, for the forwarding headers.
pub struct Origin<'a> {
    /// The client's address as text (rendered once per connection).
    pub client_ip: &'a str,
    /// `http` or `https`: how the client reached ServiceQ.
    pub proto: &'a str,
    /// CUSTOM_REQUEST_HEADERS.
    pub custom: &'a CustomHeaders,
}

/// Writes the request line into `line` and every header but `Host` (which differs per
/// endpoint), with the blank line, into `headers`. Returns the request id used.
pub fn upstream_request(
    head: &RequestHead,
    body_len: u64,
    origin: &Origin<'_>,
    new_id: impl FnOnce() -> String,
    line: &mut Vec<u8>,
    headers: &mut Vec<u8>,
) -> String {
    let mut id = String::new();
    let new_id = |out: &mut String| out.push_str(&new_id());
    upstream_request_into(head, body_len, origin, new_id, &mut id, line, headers);
    id
}

/// [`upstream_request`] into reused buffers: the request id used is appended to `id`
/// (the client's `X-Request-Id`, else one `new_id` appends). Allocates nothing once the
/// buffers are large enough.
pub fn upstream_request_into(
    head: &RequestHead,
    body_len: u64,
    origin: &Origin<'_>,
    new_id: impl FnOnce(&mut String),
    id: &mut String,
    line: &mut Vec<u8>,
    headers: &mut Vec<u8>,
) {
    let custom = origin.custom;
    line.clear();
    headers.clear();
    push_all(
        line,
        &[
            head.method.as_bytes(),
            b" ",
            head.target.as_bytes(),
            b" HTTP/1.1\r\n",
        ],
    );

    let tokens = connection_tokens(&head.headers);
    let mut client_id: Option<&str> = None;
    let mut host: Option<&[u8]> = head.authority.as_deref().map(str::as_bytes);
    for h in &head.headers {
        let name = h.name.as_str();
        if name.eq_ignore_ascii_case("x-request-id") && client_id.is_none() {
            client_id = std::str::from_utf8(&h.value).ok().filter(|v| !v.is_empty());
        } else if name.eq_ignore_ascii_case("host") && host.is_none() {
            host = Some(&h.value);
        }
        if is_hop_by_hop(name, &tokens)
            || REPLACED_ON_REQUESTS
                .iter()
                .any(|r| r.eq_ignore_ascii_case(name))
            || custom.replaces(name)
        {
            continue;
        }
        push_header(headers, name.as_bytes(), &h.value);
    }

    // The client's X-Forwarded-For values in order (empty ones dropped), then the
    // client's address, written in place.
    headers.extend_from_slice(b"X-Forwarded-For: ");
    for h in headers::named(&head.headers, "x-forwarded-for") {
        if !h.value.is_empty() {
            push_all(headers, &[&h.value, b", "]);
        }
    }
    push_all(headers, &[origin.client_ip.as_bytes(), b"\r\n"]);
    push_header(headers, b"X-Forwarded-Proto", origin.proto.as_bytes());
    if let Some(host) = host {
        push_header(headers, b"X-Forwarded-Host", host);
    }
    match client_id {
        Some(client_id) => id.push_str(client_id),
        None => new_id(id),
    }
    push_header(headers, b"X-Request-Id", id.as_bytes());
    headers.extend_from_slice(&custom.rendered);
    // An upgrade (WebSocket) keeps its two hop-by-hop fields: ServiceQ tunnels a 101.
    if let Some(protocols) = crate::http::upgrade::offered_upgrade(head) {
        headers.extend_from_slice(b"Connection: upgrade\r\n");
        push_header(headers, b"Upgrade", &protocols);
    }
    if body_len > 0 || head.framing != crate::http::BodyFraming::None {
        headers.extend_from_slice(b"Content-Length: ");
        push_decimal(headers, body_len);
        headers.extend_from_slice(b"\r\n");
    }
    headers.extend_from_slice(b"\r\n");
}

pub fn client_framing(resp: ResponseFraming, client: Version) -> ClientFraming {
    match (resp, client) {
        (ResponseFraming::NoBody | ResponseFraming::Length(_), _) => ClientFraming::AsIs,
        (_, Version::Http11) => ClientFraming::Chunked,
        (_, Version::Http10) => ClientFraming::UntilClose,
    }
}

/// The response head for the client: the upstream's status and end-to-end headers, the
/// custom response headers in place of same-named ones, and ServiceQ's own framing.
pub fn client_response_head(
    resp: &ResponseHead,
    framing: ClientFraming,
    close: bool,
    client: Version,
    custom: &CustomHeaders,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(resp.status));
    push_all(out, &[b" ", resp.reason.as_bytes(), b"\r\n"]);
    let tokens = connection_tokens(&resp.headers);
    // The body's length, when ServiceQ relays it as the endpoint framed it: written
    // from the parsed framing, never copied, so that no header (a `Connection` naming
    // `Content-Length`, say) can leave a keep-alive response without framing.
    let length = match (framing, resp.framing) {
        (ClientFraming::AsIs, ResponseFraming::Length(n)) => Some(n),
        _ => None,
    };
    for h in &resp.headers {
        let name = h.name.as_str();
        let is_length = name.eq_ignore_ascii_case("content-length");
        // Without a body (HEAD, 204, 304), Content-Length describes the resource, not
        // this message's framing: it is an ordinary field.
        let reframed = is_length && (length.is_some() || framing != ClientFraming::AsIs);
        if reframed || is_hop_by_hop(name, &tokens) || custom.replaces(name) {
            continue;
        }
        push_header(out, name.as_bytes(), &h.value);
    }
    out.extend_from_slice(&custom.rendered);
    if let Some(n) = length {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, n);
        out.extend_from_slice(b"\r\n");
    }
    if framing == ClientFraming::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, without going through `fmt`.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    push_all(out, &[name, b": ", value, b"\r\n"]);
}

fn push_all(out: &mut Vec<u8>, parts: &[&[u8]]) {
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// The 101 for the client: the endpoint's status line and end-to-end fields, the custom
/// response headers, then `Connection: upgrade` and the endpoint's `Upgrade`.
pub fn switching_protocols_head(resp: &ResponseHead, custom: &CustomHeaders, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 101 ");
    out.extend_from_slice(resp.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let tokens = connection_tokens(&resp.headers);
    for h in &resp.headers {
        let framing = h.name.eq_ignore_ascii_case("content-length");
        if framing || is_hop_by_hop(&h.name, &tokens) || custom.replaces(&h.name) {
            continue;
        }
        push_field(out, h.name.as_bytes(), &h.value);
    }
    out.extend_from_slice(&custom.rendered);
    out.extend_from_slice(b"Connection: upgrade\r\n");
    if let Some(upgrade) = headers::find(&resp.headers, "upgrade") {
        push_field(out, b"Upgrade", &upgrade.value);
    }
    out.extend_from_slice(b"\r\n");
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    for part in [name, b": ", value, b"\r\n"] {
        out.extend_from_slice(part);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn push_decimal_matches_fmt() {
        for n in [0, 1, 9, 10, 99, 100, 204, 65535, 1 << 40, u64::MAX] {
            let mut out = b"x".to_vec();
            super::push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    use super::*;
    use crate::http::{BodyFraming, Header};

    fn header(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn request(headers: Vec<Header>) -> RequestHead {
        RequestHead {
            method: "POST".into(),
            target: "/orders?x=1".into(),
            authority: None,
            version: Version::Http11,
            headers,
            framing: BodyFraming::Length(3),
            keep_alive: true,
            expect_continue: false,
        }
    }

    fn no_custom() -> CustomHeaders {
        CustomHeaders {
            rendered: Vec::new(),
            names: Vec::new(),
        }
    }

    #[test]
    fn upstream_request_sets_forwarding_headers_and_drops_hop_by_hop() {
        let head = request(vec![
            header("Host", "shop.example"),
            header("Connection", "keep-alive, X-Secret"),
            header("X-Secret", "1"),
            header("Keep-Alive", "timeout=5"),
            header("Content-Length", "3"),
            header("X-Forwarded-For", "10.0.0.1"),
            header("Accept", "*/*"),
        ]);
        let (mut line, mut headers) = (Vec::new(), Vec::new());
        let custom = no_custom();
        let origin = Origin {
            client_ip: "127.0.0.1",
            proto: "http",
            custom: &custom,
        };
        let id = upstream_request(&head, 3, &origin, || "gen".into(), &mut line, &mut headers);
        assert_eq!(id, "gen");
        assert_eq!(line, b"POST /orders?x=1 HTTP/1.1\r\n");
        let text = String::from_utf8(headers).unwrap();
        assert_eq!(
            text,
            "Accept: */*\r\nX-Forwarded-For: 10.0.0.1, 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: shop.example\r\nX-Request-Id: gen\r\nContent-Length: 3\r\n\r\n"
        );
    }

    #[test]
    fn client_request_id_is_kept() {
        let head = request(vec![header("Host", "h"), header("X-Request-Id", "abc")]);
        let (mut line, mut headers) = (Vec::new(), Vec::new());
        let custom = no_custom();
        let origin = Origin {
            client_ip: "::1",
            proto: "https",
            custom: &custom,
        };
        let id = upstream_request(
            &head,
            0,
            &origin,
            || unreachable!(),
            &mut line,
            &mut headers,
        );
        assert_eq!(id, "abc");
        let text = String::from_utf8(headers).unwrap();
        assert!(text.contains("X-Forwarded-For: ::1\r\n"), "{text}");
        assert!(text.contains("Content-Length: 0\r\n"), "{text}");
    }

    #[test]
    fn connection_naming_framing_fields_keeps_the_framing() {
        let head = |framing, headers: Vec<Header>| ResponseHead {
            version: Version::Http11,
            status: 200,
            reason: "OK".into(),
            headers,
            framing,
            keep_alive: true,
        };
        let render = |resp: &ResponseHead| {
            let mut out = Vec::new();
            let framing = client_framing(resp.framing, Version::Http11);
            client_response_head(
                resp,
                framing,
                false,
                Version::Http11,
                &no_custom(),
                &mut out,
            );
            String::from_utf8(out).unwrap()
        };
        let length = head(
            ResponseFraming::Length(5),
            vec![
                header("Connection", "Content-Length"),
                header("Content-Length", "5"),
            ],
        );
        assert_eq!(
            render(&length),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        );
        let chunked = head(
            ResponseFraming::Chunked,
            vec![
                header("Connection", "Transfer-Encoding"),
                header("Transfer-Encoding", "chunked"),
            ],
        );
        assert_eq!(
            render(&chunked),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        // No body (a HEAD or 304): Content-Length is the resource's, passed on as it is.
        let bodiless = head(
            ResponseFraming::NoBody,
            vec![header("Content-Length", "42")],
        );
        assert_eq!(
            render(&bodiless),
            "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"
        );
    }

    #[test]
    fn response_head_is_reframed_for_the_client() {
        let resp = ResponseHead {
            version: Version::Http11,
            status: 200,
            reason: "OK".into(),
            headers: vec![
                header("Transfer-Encoding", "chunked"),
                header("Server", "up"),
                header("X-A", "1"),
            ],
            framing: ResponseFraming::Chunked,
            keep_alive: true,
        };
        let custom = CustomHeaders::new(&[("Server".into(), "sq".into())]);
        let mut out = Vec::new();
        let framing = client_framing(resp.framing, Version::Http11);
        client_response_head(&resp, framing, false, Version::Http11, &custom, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nServer: sq\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            client_framing(resp.framing, Version::Http10),
            ClientFraming::UntilClose
        );
    }
}
