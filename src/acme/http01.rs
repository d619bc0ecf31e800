//! The plain-HTTP listener of SSL_AUTO_HTTP_PORT: it answers HTTP-01 challenges
//! (`GET /.well-known/acme-challenge/TOKEN`) and redirects every other request to
//! https://. Each connection gets a short thread, a deadline, and one response.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::Challenges;
use crate::stream::Deadlined;

/// The whole exchange with one client, head and response.
const DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 64;
const MAX_HEAD_BYTES: usize = 8192;
const PREFIX: &str = "/.well-known/acme-challenge/";

/// The response to one request head. `https_port` is the TLS listener's, for the
/// redirect's Location.
pub fn answer(head: &[u8], challenges: &Challenges, https_port: u16) -> Vec<u8> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let (method, path) = match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => (req.method.unwrap_or(""), req.path.unwrap_or("")),
        _ => return reply("400 Bad Request", "text/plain", "bad request\n", None),
    };
    if let Some(token) = path.strip_prefix(PREFIX) {
        return match challenges.lookup(token) {
            // RFC 8555 §8.3: the server validates with a GET.
            Some(key_auth) if method == "GET" => {
                reply("200 OK", "application/octet-stream", &key_auth, None)
            }
            _ => reply("404 Not Found", "text/plain", "no such challenge\n", None),
        };
    }
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(host_without_port)
        .filter(|h| is_hostname(h));
    let (Some(host), true) = (host, path.starts_with('/')) else {
        return reply("400 Bad Request", "text/plain", "bad request\n", None);
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let location = format!("https://{host}{port}{path}");
    reply(
        "301 Moved Permanently",
        "text/plain",
        "moved to https\n",
        Some(&location),
    )
}

fn host_without_port(host: &str) -> &str {
    let host = host.trim();
    match host.rfind(':') {
        Some(i) if !host.ends_with(']') => &host[..i],
        _ => host,
    }
}

fn is_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
}

fn reply(status: &str, ctype: &str, body: &str, location: Option<&str>) -> Vec<u8> {
    let location = location.map_or(String::new(), |l| format!("Location: {l}\r\n"));
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{location}\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `listener` on its own thread for the life of the process.
pub fn spawn(
    listener: TcpListener,
    challenges: Arc<Challenges>,
    https_port: u16,
) -> std::io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    thread::Builder::new()
        .name("acme-http".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(tcp) = conn else { continue };
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let (challenges, active) = (Arc::clone(&challenges), Arc::clone(&active));
                let spawned = thread::Builder::new()
                    .name("acme-http-conn".into())
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        serve(tcp, &challenges, https_port);
                        active.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    log::warn!("ACME HTTP listener: cannot start a thread");
                }
            }
        })?;
    Ok(())
}

fn serve(tcp: TcpStream, challenges: &Challenges, https_port: u16) {
    let mut io = Deadlined {
        tcp,
        deadline: Some(Instant::now() + DEADLINE),
    };
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match std::io::Read::read(&mut io, &mut chunk) {
            Ok(n) if n > 0 && head.len() + n <= MAX_HEAD_BYTES => {
                head.extend_from_slice(&chunk[..n])
            }
            _ => return,
        }
    }
    let _ = io.write_all(&answer(&head, challenges, https_port));
    let _ = io.tcp.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(head: &str, port: u16) -> String {
        let challenges = Challenges::default();
        challenges.publish("tok_1", "tok_1.thumb");
        String::from_utf8(answer(head.as_bytes(), &challenges, port)).unwrap()
    }

    #[test]
    fn challenges_are_answered_with_the_key_authorization() {
        let r = text(
            "GET /.well-known/acme-challenge/tok_1 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            443,
        );
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\ntok_1.thumb"),
            "{r}"
        );
        let r = text(
            "GET /.well-known/acme-challenge/other HTTP/1.1\r\nHost: a.test\r\n\r\n",
            443,
        );
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = text(
            "POST /.well-known/acme-challenge/tok_1 HTTP/1.1\r\nHost: a\r\n\r\n",
            443,
        );
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    }

    #[test]
    fn everything_else_is_redirected_to_https() {
        let r = text("GET /a?b=1 HTTP/1.1\r\nHost: a.test:80\r\n\r\n", 443);
        assert!(
            r.starts_with("HTTP/1.1 301") && r.contains("\r\nLocation: https://a.test/a?b=1\r\n"),
            "{r}"
        );
        let r = text("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", 8443);
        assert!(r.contains("\r\nLocation: https://a.test:8443/\r\n"), "{r}");
        for bad in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "nonsense\r\n\r\n",
        ] {
            assert!(text(bad, 443).starts_with("HTTP/1.1 400"), "{bad:?}");
        }
    }
}
