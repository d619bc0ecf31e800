//! The HTTPS client the ACME conversation needs, and nothing more: one request per
//! connection (`Connection: close`) over native-tls on a std `TcpStream`, the whole
//! exchange bounded by one deadline, the response read until its framing says it is
//! complete (Content-Length, chunked, or the close). Parsing is pure and tested here.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use native_tls::TlsConnector;

use crate::http::chunked::ChunkedDecoder;
use crate::stream::Deadlined;

/// The most of a response kept: ACME documents and certificate chains are a few KiB.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `https://host[:port]/path` split into (host, port, path-and-query).
pub fn split_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("not an https:// URL: {url:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            let port = p.parse().map_err(|_| format!("bad port in {url:?}"))?;
            (h, port)
        }
        _ => (authority, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || path.contains(char::is_whitespace) {
        return Err(format!("bad URL {url:?}"));
    }
    Ok((host.to_string(), port, path.to_string()))
}

/// The request bytes: one request, then the server closes. `host` is the authority
/// as the Host header wants it (with the port unless 443).
pub fn render_request(method: &str, host: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: serviceq/{}\r\n\
         Accept: */*\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(body) = body {
        out.push_str("Content-Type: application/jose+json\r\n");
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    out
}

/// The response in `buf` if it is complete (`eof`: the server has closed).
/// `Ok(None)`: more bytes are needed.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    eof: bool,
) -> Result<Option<Response>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if eof => return Err("response cut short".into()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response: {e}")),
    };
    let status = parsed.code.unwrap_or(0);
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            (h.name.to_ascii_lowercase(), value)
        })
        .collect();
    let rest = &buf[head_len..];
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if head_request || status == 204 || status == 304 {
        Some(Vec::new())
    } else if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        decode_chunked(rest, eof)?
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().map_err(|_| "bad Content-Length".to_string())?;
        match rest.len() >= len {
            true => Some(rest[..len].to_vec()),
            false if eof => return Err("response body cut short".into()),
            false => None,
        }
    } else {
        eof.then(|| rest.to_vec())
    };
    Ok(body.map(|body| Response {
        status,
        headers,
        body,
    }))
}

fn decode_chunked(mut input: &[u8], eof: bool) -> Result<Option<Vec<u8>>, String> {
    let mut decoder = ChunkedDecoder::new();
    let mut body = Vec::new();
    while !decoder.is_done() && !input.is_empty() {
        let d = decoder
            .decode(input)
            .map_err(|e| format!("bad chunked body: {e:?}"))?;
        body.extend_from_slice(d.data);
        input = &input[d.consumed..];
    }
    match decoder.is_done() {
        true => Ok(Some(body)),
        false if eof => Err("chunked body cut short".into()),
        false => Ok(None),
    }
}

/// Makes HTTPS requests with one TLS client configuration and one time limit.
pub struct Agent {
    pub tls: TlsConnector,
    pub timeout: Duration,
}

impl Agent {
    /// `body` Some: a POST of a JWS; None: a GET (or HEAD with `method`).
    pub fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, String> {
        let (host, port, path) = split_url(url)?;
        let deadline = Instant::now() + self.timeout;
        let tcp = connect(&host, port, self.timeout).map_err(|e| format!("{url}: {e}"))?;
        let io = Deadlined {
            tcp,
            deadline: Some(deadline),
        };
        let mut tls = self.tls.connect(&host, io).map_err(|e| match e {
            native_tls::HandshakeError::Failure(e) => format!("{url}: TLS: {e}"),
            native_tls::HandshakeError::WouldBlock(_) => format!("{url}: TLS: timed out"),
        })?;
        let authority = match (port, host.contains(':')) {
            (443, false) => host.clone(),
            (443, true) => format!("[{host}]"),
            (_, false) => format!("{host}:{port}"),
            (_, true) => format!("[{host}]:{port}"),
        };
        tls.write_all(&render_request(method, &authority, &path, body))
            .map_err(|e| format!("{url}: {e}"))?;
        let head_request = method == "HEAD";
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = match tls.read(&mut chunk) {
                Ok(n) => n,
                // A server that closes without close_notify: what arrived is judged as
                // if at EOF.
                Err(e) if e.kind() != io::ErrorKind::WouldBlock && !buf.is_empty() => 0,
                Err(e) => return Err(format!("{url}: {e}")),
            };
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_RESPONSE_BYTES {
                return Err(format!(
                    "{url}: response larger than {MAX_RESPONSE_BYTES} bytes"
                ));
            }
            if let Some(resp) =
                parse_response(&buf, head_request, n == 0).map_err(|e| format!("{url}: {e}"))?
            {
                return Ok(resp);
            }
        }
    }
}

fn connect(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "host has no address");
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        let ok = |u: &str| split_url(u).unwrap();
        assert_eq!(
            ok("https://acme.test/dir"),
            ("acme.test".into(), 443, "/dir".into())
        );
        assert_eq!(
            ok("https://127.0.0.1:14000/dir?x=1"),
            ("127.0.0.1".into(), 14000, "/dir?x=1".into())
        );
        assert_eq!(ok("https://[::1]:8443"), ("::1".into(), 8443, "/".into()));
        for bad in ["http://a/", "https://", "https://a:x/", "https://a/b c"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_are_one_shot_with_a_jose_body() {
        let r = String::from_utf8(render_request("POST", "a.test", "/new", Some(b"{}"))).unwrap();
        assert!(
            r.starts_with("POST /new HTTP/1.1\r\nHost: a.test\r\n"),
            "{r}"
        );
        assert!(
            r.contains("Connection: close\r\n")
                && r.contains("Content-Type: application/jose+json\r\n")
        );
        assert!(r.ends_with("Content-Length: 2\r\n\r\n{}"), "{r}");
        let g = String::from_utf8(render_request("GET", "a.test", "/dir", None)).unwrap();
        assert!(!g.contains("Content-Length") && g.ends_with("\r\n\r\n"));
    }

    #[test]
    fn responses_complete_by_length_chunks_or_close() {
        let full = b"HTTP/1.1 201 Created\r\nReplay-Nonce: abc\r\nContent-Length: 4\r\n\r\nbody";
        let r = parse_response(full, false, false).unwrap().unwrap();
        assert_eq!(
            (r.status, r.header("replay-nonce"), &r.body[..]),
            (201, Some("abc"), &b"body"[..])
        );
        assert_eq!(
            parse_response(&full[..full.len() - 1], false, false),
            Ok(None)
        );
        assert!(parse_response(&full[..full.len() - 1], false, true).is_err());
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked, false, false).unwrap().unwrap().body,
            b"abcde"
        );
        assert_eq!(
            parse_response(&chunked[..chunked.len() - 3], false, false),
            Ok(None)
        );
        let close = b"HTTP/1.1 200 OK\r\n\r\nuntil close";
        assert_eq!(parse_response(close, false, false), Ok(None));
        assert_eq!(
            parse_response(close, false, true).unwrap().unwrap().body,
            b"until close"
        );
        let head = b"HTTP/1.1 200 OK\r\nReplay-Nonce: n\r\nContent-Length: 99\r\n\r\n";
        assert!(parse_response(head, true, false)
            .unwrap()
            .unwrap()
            .body
            .is_empty());
        assert!(parse_response(b"garbage\r\n\r\n", false, false).is_err());
    }
}
