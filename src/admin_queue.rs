//! The admin API's queue endpoints (`serviceq queue` talks to them while ServiceQ
//! runs; README "Operating the queue"):
//!
//! | request                               | does                              |
//! |---------------------------------------|-----------------------------------|
//! | `GET /queue[?limit=N]`                | queued requests, head first (JSON)|
//! | `GET /queue/dead[?limit=N]`           | dead letters, oldest first        |
//! | `GET /queue/show?id=ID`               | one request in full               |
//! | `POST /queue/retry-dead?all=1`, `?id=ID&id=…` | dead letters back to the tail |
//! | `DELETE /queue?id=ID&id=…`            | drops queued or dead requests     |
//! | `DELETE /queue/dead`                  | purges the dead letters           |
//!
//! `GET`s are read-only, like `/metrics`. `POST`/`DELETE` need `Authorization: Bearer
//! <token>` with the token in ADMIN_TOKEN_FILE: without that key they answer 403 (off);
//! with a missing or wrong token, 401 and a `602 ADMIN_UNAUTHORIZED` error-log line.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::queue::ops::{self, Op, OpsError, Select};
use crate::queue::Backend;
use crate::slots::Pool;

/// A listing over the API holds at most this many requests unless `limit` says.
const DEFAULT_LIST_LIMIT: usize = 10_000;

/// Reads the admin token from ADMIN_TOKEN_FILE: refused when group or others may read
/// the file, or when it holds no token.
pub fn load_token(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let meta = fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown} can be read by group or others (mode {mode:03o}): make it readable by its owner only (chmod 600)"
        ));
    }
    let text = fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let token = text.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(format!("{shown} holds no token"));
    }
    Ok(token)
}

/// Compares in time that depends only on the lengths, never on where the first
/// difference is.
pub fn token_matches(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(!e);
    }
    diff == 0
}

/// The bearer token in a request head's `Authorization` header.
pub fn bearer(head: &[u8]) -> Option<&[u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = line.split_at(colon);
        if !name.eq_ignore_ascii_case(b"authorization") {
            return None;
        }
        let value = value[1..].trim_ascii();
        let scheme = value.get(..7)?;
        scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then(|| value[7..].trim_ascii())
    })
}

/// `%XX` and `+` decoded (a query value).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `%XX`-encodes everything but unreserved characters (the command line's queries).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query_values<'a>(query: &'a str, key: &'a str) -> impl Iterator<Item = String> + 'a {
    query
        .split('&')
        .filter_map(move |kv| kv.split_once('=').filter(|(k, _)| *k == key))
        .map(|(_, v)| percent_decode(v))
}

/// The operation a queue request asks for: None when `path` is not a queue endpoint,
/// `Err` (status, why) when it is one but the request is not right.
pub fn route(method: &str, path: &str, query: &str) -> Option<Result<Op, (&'static str, String)>> {
    let ids: Vec<String> = query_values(query, "id").collect();
    let limit = query_values(query, "limit")
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(DEFAULT_LIST_LIMIT);
    let bad = |why: &str| Err(("400 Bad Request", why.to_string()));
    let op = match (method, path) {
        ("GET" | "HEAD", "/queue") => Ok(Op::List { dead: false, limit }),
        ("GET" | "HEAD", "/queue/dead") => Ok(Op::List { dead: true, limit }),
        ("GET" | "HEAD", "/queue/show") => match ids.into_iter().next() {
            Some(id) => Ok(Op::Show(id)),
            None => bad("give the request with ?id=X-Request-Id"),
        },
        ("POST", "/queue/retry-dead") if query_values(query, "all").next().is_some() => {
            Ok(Op::RetryDead(Select::All))
        }
        ("POST", "/queue/retry-dead") if !ids.is_empty() => Ok(Op::RetryDead(Select::Ids(ids))),
        ("POST", "/queue/retry-dead") => bad("give ?all=1 or ?id=…"),
        ("DELETE", "/queue") if !ids.is_empty() => Ok(Op::Drop(ids)),
        ("DELETE", "/queue") => bad("give the requests to drop with ?id=…"),
        ("DELETE", "/queue/dead") => Ok(Op::PurgeDead),
        (_, "/queue" | "/queue/dead" | "/queue/show" | "/queue/retry-dead") => Err((
            "405 Method Not Allowed",
            format!("{method} is not allowed here"),
        )),
        _ => return None,
    };
    Some(op)
}

/// Whether a queue change may go ahead: Err(status, why) when the API is off (no
/// ADMIN_TOKEN_FILE) or the token is missing or wrong (the caller logs 602 for 401).
pub fn authorize(token: Option<&[u8]>, head: &[u8]) -> Result<(), (&'static str, String)> {
    let Some(expected) = token else {
        return Err((
            "403 Forbidden",
            "queue changes over the admin API are off: ADMIN_TOKEN_FILE is not set".into(),
        ));
    };
    match bearer(head) {
        Some(given) if token_matches(expected, given) => Ok(()),
        _ => Err((
            "401 Unauthorized",
            "a queue change needs Authorization: Bearer <the token in ADMIN_TOKEN_FILE>".into(),
        )),
    }
}

/// Runs `op` and keeps the pool's count of held CONCURRENCY_PEAK slots in step with
/// what it queued or dropped — for a backend whose queued requests hold one (a shared
/// queue's do not: its cap is its own); (status, JSON body).
pub fn run(backend: &dyn Backend, pool: &Pool, op: &Op) -> (&'static str, String) {
    match ops::apply(backend, op) {
        Ok(applied) if !backend.holds_slots() => ("200 OK", format!("{}\n", applied.answer)),
        Ok(applied) => {
            if applied.holds > 0 {
                pool.add_holds(applied.holds.unsigned_abs());
            }
            for _ in 0..applied.holds.min(0).unsigned_abs() {
                pool.release_hold();
            }
            ("200 OK", format!("{}\n", applied.answer))
        }
        Err(e) => {
            let status = match e {
                OpsError::NotFound(_) => "404 Not Found",
                OpsError::Unsupported { .. } => "501 Not Implemented",
                OpsError::Io(_) => "500 Internal Server Error",
            };
            (status, error_json(&e.to_string()))
        }
    }
}

pub fn error_json(why: &str) -> String {
    format!("{}\n", serde_json::json!({ "error": why }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(b"secret", b"secret"));
        for wrong in [&b""[..], b"secre", b"secret!", b"Secret", b"xxxxxx"] {
            assert!(!token_matches(b"secret", wrong), "{wrong:?}");
        }
    }

    #[test]
    fn bearer_is_read_from_the_authorization_header() {
        let head = b"POST /queue HTTP/1.1\r\nHost: x\r\nauthorization: bearer  abc \r\n\r\n";
        assert_eq!(bearer(head), Some(&b"abc"[..]));
        assert_eq!(
            bearer(b"POST / HTTP/1.1\r\nAuthorization: Basic abc\r\n\r\n"),
            None
        );
        assert_eq!(bearer(b"POST / HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn routes() {
        let ok = |m, p, q| route(m, p, q).and_then(Result::ok);
        assert_eq!(
            ok("GET", "/queue", "limit=5"),
            Some(Op::List {
                dead: false,
                limit: 5
            })
        );
        assert_eq!(
            ok("GET", "/queue/show", "id=a%20b+c"),
            Some(Op::Show("a b c".into()))
        );
        assert_eq!(
            ok("POST", "/queue/retry-dead", "all=1"),
            Some(Op::RetryDead(Select::All))
        );
        let ids = Op::Drop(vec!["a".into(), "b".into()]);
        assert_eq!(ok("DELETE", "/queue", "id=a&id=b"), Some(ids));
        assert_eq!(ok("DELETE", "/queue/dead", ""), Some(Op::PurgeDead));
        assert!(route("GET", "/metrics", "").is_none());
        let err = |m, p, q| route(m, p, q).and_then(Result::err).map(|e| e.0);
        assert_eq!(err("POST", "/queue", ""), Some("405 Method Not Allowed"));
        assert_eq!(err("DELETE", "/queue", ""), Some("400 Bad Request"));
        assert_eq!(percent_decode(&percent_encode("a b/ü%")), "a b/ü%");
    }

    #[test]
    fn changes_need_the_key_and_the_right_token() {
        let with =
            |t: &str| format!("DELETE /queue/dead HTTP/1.1\r\nAuthorization: Bearer {t}\r\n\r\n");
        assert_eq!(
            authorize(None, with("x").as_bytes()).unwrap_err().0,
            "403 Forbidden"
        );
        let key = Some(&b"tok"[..]);
        assert_eq!(
            authorize(key, with("x").as_bytes()).unwrap_err().0,
            "401 Unauthorized"
        );
        assert_eq!(
            authorize(key, b"DELETE / HTTP/1.1\r\n\r\n").unwrap_err().0,
            "401 Unauthorized"
        );
        assert!(authorize(key, with("tok").as_bytes()).is_ok());
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        let path = std::env::temp_dir().join(format!("sq-token-{}", std::process::id()));
        fs::write(&path, "tok\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_token(&path).unwrap_err().contains("chmod 600"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_token(&path).unwrap(), b"tok");
        fs::write(&path, " \n").unwrap();
        assert!(load_token(&path).unwrap_err().contains("no token"));
        fs::remove_file(&path).unwrap();
    }
}
