//! The access log (ACCESS_LOG_FILE): one line per request, in the combined log format
//! followed by ServiceQ's own fields. Workers format their line and hand it to one
//! writer thread through a bounded channel, so no worker waits on another or on the
//! disk; if the writer falls behind, lines are dropped and counted in /metrics. The
//! writer flushes whenever it has caught up, and at least every second.
//!
//! ```text
//! 127.0.0.1 - - [22/Nov/2026:01:02:03 +0000] "GET /a?b=1 HTTP/1.1" 200 1234 "-" "curl/7.88.1" upstream=http://127.0.0.1:8001 attempts=1 upstream_time=0.001 request_time=0.002 queued=- id=5f0e…
//! ```

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::Path;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use crate::metrics::{inc, METRICS};

/// Lines waiting for the writer before new ones are dropped.
const BACKLOG_LINES: usize = 16 * 1024;
/// The writer flushes at least this often.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Client-supplied fields (Referer, User-Agent, target) are cut to this many bytes.
const MAX_FIELD_BYTES: usize = 512;

const CLF_TIME: &[FormatItem<'static>] = format_description!(
    "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
);

enum Msg {
    Line(String),
    Reopen,
    Flush(Sender<()>),
}

pub struct AccessLog {
    tx: Sender<Msg>,
    offset: UtcOffset,
}

/// What one request did, as the access log records it.
pub struct Entry<'a> {
    pub client: IpAddr,
    pub method: &'a str,
    pub target: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub body_bytes: u64,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    pub upstream: Option<&'a str>,
    pub attempts: u32,
    pub upstream_time: Option<Duration>,
    pub request_time: Duration,
    /// `deferred`, `upfront`, or none.
    pub queued: Option<&'static str>,
    pub request_id: &'a str,
    /// An upgraded connection's bytes (from the client, to the client).
    pub tunnel: Option<(u64, u64)>,
}

impl AccessLog {
    /// Opens (creating) the file and starts the writer thread.
    pub fn open(path: &Path, offset: UtcOffset) -> io::Result<Self> {
        let file = open_append(path)?;
        let (tx, rx) = crossbeam_channel::bounded(BACKLOG_LINES);
        let path = path.to_path_buf();
        thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(&rx, BufWriter::with_capacity(64 * 1024, file), &path))?;
        Ok(AccessLog { tx, offset })
    }

    pub fn record(&self, e: &Entry<'_>) {
        let line = format_entry(e, OffsetDateTime::now_utc().to_offset(self.offset));
        if self.tx.try_send(Msg::Line(line)).is_err() {
            inc(&METRICS.access_log_dropped);
        }
    }

    /// Re-opens the file at its path (SIGUSR1, after logrotate moved it).
    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }

    /// Writes out everything recorded so far (at shutdown), waiting at most a second.
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        if self
            .tx
            .send_timeout(Msg::Flush(ack_tx), FLUSH_EVERY)
            .is_ok()
        {
            let _ = ack_rx.recv_timeout(FLUSH_EVERY);
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_loop(rx: &Receiver<Msg>, mut out: BufWriter<File>, path: &Path) {
    loop {
        let msg = match rx.try_recv() {
            Ok(msg) => msg,
            Err(_) => {
                // Caught up: flush, then wait for more (or a second).
                let _ = out.flush();
                match rx.recv_timeout(FLUSH_EVERY) {
                    Ok(msg) => msg,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        match msg {
            Msg::Line(line) => {
                let _ = out.write_all(line.as_bytes());
            }
            Msg::Reopen => {
                let _ = out.flush();
                match open_append(path) {
                    Ok(f) => out = BufWriter::with_capacity(64 * 1024, f),
                    Err(e) => log::error!("cannot reopen the access log {}: {e}", path.display()),
                }
            }
            Msg::Flush(ack) => {
                let _ = out.flush();
                let _ = ack.send(());
            }
        }
    }
}

fn format_entry(e: &Entry<'_>, now: OffsetDateTime) -> String {
    let mut line = String::with_capacity(256);
    let stamp = now.format(CLF_TIME).unwrap_or_default();
    let _ = write!(
        line,
        "{} - - [{stamp}] \"{} {} {}\" {} {} \"{}\" \"{}\" upstream={} attempts={} upstream_time={} request_time={:.3} queued={} id={}",
        e.client,
        e.method,
        Escaped(e.target.as_bytes()),
        e.version,
        e.status,
        e.body_bytes,
        Escaped(e.referer.unwrap_or(b"-")),
        Escaped(e.user_agent.unwrap_or(b"-")),
        e.upstream.unwrap_or("-"),
        e.attempts,
        e.upstream_time
            .map_or_else(|| "-".to_string(), |t| format!("{:.3}", t.as_secs_f64())),
        e.request_time.as_secs_f64(),
        e.queued.unwrap_or("-"),
        Escaped(e.request_id.as_bytes()),
    );
    if let Some((from_client, to_client)) = e.tunnel {
        let _ = write!(line, " tunnel_in={from_client} tunnel_out={to_client}");
    }
    line.push('\n');
    line
}

/// Client bytes in a log line: capped, with quotes, backslashes, control characters and
/// non-ASCII escaped as `\xHH` (nginx's escaping), so a line can never be split or
/// forged by what a client sends.
struct Escaped<'a>(&'a [u8]);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for &b in self.0.iter().take(MAX_FIELD_BYTES) {
            if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
                write!(f, "\\x{b:02X}")?;
            } else {
                f.write_char(char::from(b))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn line_is_combined_format_plus_fields() {
        let e = Entry {
            client: "127.0.0.1".parse().unwrap(),
            method: "GET",
            target: "/a?b=1",
            version: "HTTP/1.1",
            status: 200,
            body_bytes: 1234,
            referer: None,
            user_agent: Some(b"curl/7.88.1"),
            upstream: Some("http://127.0.0.1:8001"),
            attempts: 1,
            upstream_time: Some(Duration::from_millis(1)),
            request_time: Duration::from_millis(2),
            queued: None,
            request_id: "abc",
            tunnel: None,
        };
        let line = format_entry(&e, datetime!(2026-11-22 01:02:03 UTC));
        assert_eq!(
            line,
            "127.0.0.1 - - [22/Nov/2026:01:02:03 +0000] \"GET /a?b=1 HTTP/1.1\" 200 1234 \"-\" \
             \"curl/7.88.1\" upstream=http://127.0.0.1:8001 attempts=1 upstream_time=0.001 \
             request_time=0.002 queued=- id=abc\n"
        );
        let upgraded = Entry {
            status: 101,
            tunnel: Some((10, 20)),
            ..e
        };
        let line = format_entry(&upgraded, datetime!(2026-11-22 01:02:03 UTC));
        assert!(
            line.ends_with(" id=abc tunnel_in=10 tunnel_out=20\n"),
            "{line}"
        );
    }

    #[test]
    fn client_bytes_are_escaped_and_capped() {
        let evil = format!("a\"b\nc\\{}", "x".repeat(1000));
        let shown = Escaped(evil.as_bytes()).to_string();
        assert!(shown.starts_with("a\\x22b\\x0Ac\\x5C"));
        assert!(!shown.contains('\n'));
        assert!(shown.len() < MAX_FIELD_BYTES + 16);
    }
}
