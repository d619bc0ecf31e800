//! Operating the queue (`serviceq queue …`, the admin API's `/queue` endpoints): what
//! each backend answers when asked what it holds, and the pure parts shared by the
//! command line and the admin listener — which entries an id selects, how a listing
//! reads as text or JSON.
//!
//! An entry is named by its `X-Request-Id` (what the access log and the client see).
//! A client may send its own, so several entries can share one: every one of them is
//! selected (`show` shows the first and says how many share it).

use std::fmt::Write as _;
use std::io;
use std::time::{Duration, SystemTime};

use crate::logging::escaped;

/// Why an operation on the queue did not happen.
#[derive(Debug)]
pub enum OpsError {
    /// The backend cannot do it (e.g. a dead-letter operation on a backend without one).
    Unsupported {
        backend: &'static str,
        what: &'static str,
    },
    /// No queued or dead request has this id.
    NotFound(String),
    /// The journal could not be read or written.
    Io(io::Error),
}

impl std::fmt::Display for OpsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpsError::Unsupported { backend, what } => {
                write!(f, "{what} is not supported by the {backend} queue backend")
            }
            OpsError::NotFound(id) => write!(f, "no queued or dead request has X-Request-Id {id}"),
            OpsError::Io(e) => write!(f, "journal: {e}"),
        }
    }
}

impl From<io::Error> for OpsError {
    fn from(e: io::Error) -> Self {
        OpsError::Io(e)
    }
}

/// An `OpsError::Unsupported` for a backend's default method.
pub fn unsupported<T>(backend: &'static str, what: &'static str) -> Result<T, OpsError> {
    Err(OpsError::Unsupported { backend, what })
}

/// Why and when a request was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadInfo {
    /// `None` for a record an older ServiceQ wrote (max age was the only reason then).
    pub reason: Option<String>,
    pub at: Option<SystemTime>,
}

/// One line of `serviceq queue list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// 1 for the head (or the oldest dead letter).
    pub position: usize,
    pub request_id: String,
    pub method: String,
    pub target: String,
    pub body_bytes: u64,
    /// Since it was queued (for a retried dead letter: since the retry).
    pub age: Duration,
    /// Delivery tries so far (the head only; the journal does not keep it across a
    /// restart).
    pub attempts: u32,
    /// Set for a dead letter.
    pub dead: Option<DeadInfo>,
}

impl Listed {
    /// `req`'s line at `position`; what the backend knows of its age, tries and death.
    pub fn of(
        position: usize,
        req: &super::QueuedRequest,
        age: Duration,
        attempts: u32,
        dead: Option<DeadInfo>,
    ) -> Listed {
        Listed {
            position,
            request_id: req.request_id.clone(),
            method: req.method.clone(),
            target: req.target.clone(),
            body_bytes: req.body.len(),
            age,
            attempts,
            dead,
        }
    }
}

/// `serviceq queue show`: one request in full.
#[derive(Debug)]
pub struct Shown {
    pub entry: Listed,
    pub request_line: Vec<u8>,
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
    /// How many queued or dead requests share this X-Request-Id (1 usually).
    pub sharing: usize,
}

impl Shown {
    /// `req` in full, listed as `entry`; `sharing` as in [`Shown::sharing`].
    pub fn of(entry: Listed, req: &super::QueuedRequest, sharing: usize) -> io::Result<Shown> {
        Ok(Shown {
            entry,
            request_line: req.request_line.clone(),
            headers: req.headers.clone(),
            body: req.body.to_vec()?,
            sharing,
        })
    }
}

/// Which dead letters `retry-dead` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    All,
    Ids(Vec<String>),
}

impl Select {
    pub fn matches(&self, id: &str) -> bool {
        match self {
            Select::All => true,
            Select::Ids(ids) => ids.iter().any(|i| i == id),
        }
    }
}

/// What a drop removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub queued: usize,
    pub dead: usize,
    /// Queued requests removed that were not being delivered: each held a
    /// CONCURRENCY_PEAK slot the caller must release (the replay loop releases the
    /// head's).
    pub holds_freed: usize,
}

/// A backend's record of its head's delivery tries: (entry, tries so far).
pub type Tries = Option<(u64, u32)>;

/// Counts one delivery try of entry `id` (a new head starts from 1).
pub fn count_try(tries: &mut Tries, id: u64) {
    match tries {
        Some((entry, n)) if *entry == id => *n += 1,
        other => *other = Some((id, 1)),
    }
}

/// The tries counted for entry `id` (0 for any entry but the head).
pub fn tries_of(tries: Tries, id: u64) -> u32 {
    tries
        .filter(|(entry, _)| *entry == id)
        .map_or(0, |(_, n)| n)
}

/// Ids in `ids` that `found` does not contain, for a "not found" answer.
pub fn missing<'a>(ids: &'a [String], found: &[&str]) -> Vec<&'a str> {
    ids.iter()
        .map(String::as_str)
        .filter(|id| !found.contains(id))
        .collect()
}

fn unix_secs(t: SystemTime) -> Option<u64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// A listing as JSON (an array of objects), for scripts.
pub fn to_json(entries: &[Listed]) -> serde_json::Value {
    let rows = entries
        .iter()
        .map(|e| {
            let mut row = serde_json::json!({
                "position": e.position,
                "id": e.request_id,
                "method": e.method,
                "target": e.target,
                "body_bytes": e.body_bytes,
                "age_secs": e.age.as_secs(),
                "attempts": e.attempts,
            });
            if let Some(d) = &e.dead {
                row["dead_reason"] = d.reason.clone().into();
                row["dead_at"] = d.at.and_then(unix_secs).into();
            }
            row
        })
        .collect();
    serde_json::Value::Array(rows)
}

/// Rebuilds a listing from [`to_json`]'s output (the command line reading the admin
/// API); None if it is not one.
pub fn from_json(v: &serde_json::Value) -> Option<Vec<Listed>> {
    v.as_array()?
        .iter()
        .map(|row| {
            let text = |k: &str| row.get(k)?.as_str().map(str::to_string);
            let num = |k: &str| row.get(k)?.as_u64();
            let dead = row.get("dead_reason").map(|reason| DeadInfo {
                reason: reason.as_str().map(str::to_string),
                at: num("dead_at").map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
            });
            Some(Listed {
                position: usize::try_from(num("position")?).ok()?,
                request_id: text("id")?,
                method: text("method")?,
                target: text("target")?,
                body_bytes: num("body_bytes")?,
                age: Duration::from_secs(num("age_secs")?),
                attempts: u32::try_from(num("attempts")?).ok()?,
                dead,
            })
        })
        .collect()
}

/// `1h02m`, `3m04s`, `12s`: an age in a listing.
pub fn short_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// A listing as text: a header line, then one line per request; client text escaped.
pub fn to_text(entries: &[Listed], dead: bool) -> String {
    let mut out = String::new();
    let last = if dead { "REASON" } else { "ATTEMPTS" };
    let _ = writeln!(out, "POS\tID\tMETHOD\tTARGET\tBYTES\tAGE\t{last}");
    for e in entries {
        let tail = match &e.dead {
            Some(d) => d
                .reason
                .clone()
                .unwrap_or_else(|| "unknown (older ServiceQ: max age)".into()),
            None => e.attempts.to_string(),
        };
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            e.position,
            escaped(&e.request_id),
            escaped(&e.method),
            escaped(&e.target),
            e.body_bytes,
            short_age(e.age),
            escaped(&tail)
        );
    }
    out
}

/// The dead-letter reason the replay loop records for DEFERRED_Q_MAX_AGE.
pub fn max_age_reason(max_age: Duration, waited: Duration) -> String {
    format!("max age: queued {waited:.1?}, over DEFERRED_Q_MAX_AGE ({max_age:?})")
}

/// One operation on the queue, as the command line and the admin API name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    List { dead: bool, limit: usize },
    Show(String),
    RetryDead(Select),
    Drop(Vec<String>),
    PurgeDead,
}

impl Op {
    /// Whether it changes the queue (POST/DELETE over the admin API: token required).
    pub fn changes(&self) -> bool {
        !matches!(self, Op::List { .. } | Op::Show(_))
    }
}

/// What an operation did: its answer (the admin API's JSON body, which the command
/// line prints the same way whether it ran it itself or asked a running ServiceQ) and
/// how many CONCURRENCY_PEAK slots queued requests took (+) or gave back (-).
pub struct Applied {
    pub answer: serde_json::Value,
    pub holds: isize,
}

/// The largest body `show` hands over (the admin API's answer is in memory).
pub const SHOW_BODY_MAX: usize = 16 << 20;

/// Runs `op` on `backend`.
pub fn apply(backend: &dyn super::Backend, op: &Op) -> Result<Applied, OpsError> {
    let (answer, holds) = match op {
        Op::List { dead: false, limit } => (to_json(&backend.list(*limit)?), 0),
        Op::List { dead: true, limit } => (to_json(&backend.list_dead(*limit)?), 0),
        Op::Show(id) => (shown_json(&backend.show(id)?), 0),
        Op::RetryDead(which) => {
            let n = backend.retry_dead(which)?;
            (serde_json::json!({ "retried": n }), n as isize)
        }
        Op::Drop(ids) => {
            let r = backend.remove(ids)?;
            let answer = serde_json::json!({ "queued": r.queued, "dead": r.dead });
            (answer, -(r.holds_freed as isize))
        }
        Op::PurgeDead => (serde_json::json!({ "purged": backend.purge_dead()? }), 0),
    };
    Ok(Applied { answer, holds })
}

fn shown_json(s: &Shown) -> serde_json::Value {
    let body = &s.body[..s.body.len().min(SHOW_BODY_MAX)];
    serde_json::json!({
        "entry": to_json(std::slice::from_ref(&s.entry))[0],
        "request_line_hex": hex(&s.request_line),
        "headers_hex": hex(&s.headers),
        "body_hex": hex(body),
        "body_bytes": s.body.len(),
        "sharing": s.sharing,
    })
}

/// Rebuilds `show`'s answer (the body possibly cut at [`SHOW_BODY_MAX`]).
pub fn shown_from_json(v: &serde_json::Value) -> Option<Shown> {
    let bytes = |k: &str| unhex(v.get(k)?.as_str()?);
    let entry = from_json(&serde_json::Value::Array(vec![v.get("entry")?.clone()]))?;
    Some(Shown {
        entry: entry.into_iter().next()?,
        request_line: bytes("request_line_hex")?,
        headers: bytes("headers_hex")?,
        body: bytes("body_hex")?,
        sharing: usize::try_from(v.get("sharing")?.as_u64()?).ok()?,
    })
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// The body as `show` prints it: text when it is printable UTF-8 of at most
/// `cap` bytes, else a line saying what it is.
pub fn body_text(body: &[u8], total: u64, cap: usize) -> String {
    let printable = |t: &str| {
        t.chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
    };
    match std::str::from_utf8(body) {
        Ok(t) if body.len() <= cap && body.len() as u64 == total && printable(t) => t.to_string(),
        _ => format!("[{total} bytes of body, not shown as text: save it with --body FILE]\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pos: usize, id: &str, dead: bool) -> Listed {
        Listed {
            position: pos,
            request_id: id.into(),
            method: "POST".into(),
            target: "/a?\"b\"".into(),
            body_bytes: 3,
            age: Duration::from_secs(75),
            attempts: 2,
            dead: dead.then(|| DeadInfo {
                reason: Some("max age".into()),
                at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            }),
        }
    }

    #[test]
    fn json_round_trips() {
        let list = vec![entry(1, "a", false), entry(2, "b", true)];
        assert_eq!(from_json(&to_json(&list)), Some(list));
        assert_eq!(from_json(&serde_json::json!({"x": 1})), None);
    }

    #[test]
    fn text_escapes_client_bytes() {
        let text = to_text(&[entry(1, "a\nb", false)], false);
        assert!(
            text.contains("1\ta\\x0Ab\tPOST\t/a?\\x22b\\x22\t3\t1m15s\t2"),
            "{text}"
        );
        assert!(to_text(&[entry(1, "a", true)], true).ends_with("\tmax age\n"));
    }

    #[test]
    fn hex_round_trips_and_bodies_show_as_text_only_when_printable() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&all)), Some(all.clone()));
        assert_eq!(unhex("abc"), None);
        assert_eq!(body_text(b"{\"a\":1}\n", 8, 100), "{\"a\":1}\n");
        assert!(body_text(&all, 256, 1000).starts_with("[256 bytes"));
        assert!(body_text(b"abcd", 4, 3).starts_with("[4 bytes"));
        assert!(body_text(b"ab", 4, 10).starts_with("[4 bytes"), "cut body");
    }

    #[test]
    fn ages_read_short() {
        let cases = [(0, "0s"), (59, "59s"), (61, "1m01s"), (3720, "1h02m")];
        for (s, want) in cases {
            assert_eq!(short_age(Duration::from_secs(s)), want);
        }
    }

    #[test]
    fn selection_and_missing_ids() {
        assert!(Select::All.matches("x"));
        let ids = Select::Ids(vec!["a".into()]);
        assert!(ids.matches("a") && !ids.matches("b"));
        let asked = vec!["a".to_string(), "b".to_string()];
        assert_eq!(missing(&asked, &["a"]), vec!["b"]);
    }
}
