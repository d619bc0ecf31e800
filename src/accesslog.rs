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
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use crate::logging::Escaped;
use crate::metrics::{inc, METRICS};

/// Lines waiting for the writer before new ones are dropped.
const BACKLOG_LINES: usize = 16 * 1024;
/// The writer flushes at least this often.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long SIGUSR1 waits for the writer to reopen the file.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

const CLF_TIME: &[FormatItem<'static>] = format_description!(
    "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
);

enum Msg {
    Line(String),
    /// Re-open the file; the writer answers with the outcome.
    Reopen(Sender<io::Result<()>>),
    Flush(Sender<()>),
}

pub struct AccessLog {
    tx: Sender<Msg>,
    offset: UtcOffset,
    path: PathBuf,
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
        let writer_path = path.to_path_buf();
        thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                write_loop(&rx, BufWriter::with_capacity(64 * 1024, file), &writer_path)
            })?;
        Ok(AccessLog {
            tx,
            offset,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record(&self, e: &Entry<'_>) {
        let line = format_entry(e, OffsetDateTime::now_utc().to_offset(self.offset));
        if self.tx.try_send(Msg::Line(line)).is_err() {
            inc(&METRICS.access_log_dropped);
        }
    }

    /// Re-opens the file at its path (SIGUSR1, after logrotate moved it): the lines
    /// recorded before go to the old file, those after to the new one. Waits for the
    /// writer's answer (a few seconds at most, should it be stuck on a slow disk).
    pub fn reopen(&self) -> io::Result<()> {
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        let stuck = || io::Error::new(io::ErrorKind::TimedOut, "the access log writer is stuck");
        self.tx
            .send_timeout(Msg::Reopen(ack_tx), REOPEN_WAIT)
            .map_err(|_| stuck())?;
        ack_rx.recv_timeout(REOPEN_WAIT).map_err(|_| stuck())?
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
            Msg::Reopen(ack) => {
                let _ = out.flush();
                let reopened = open_append(path).map(|f| {
                    out = BufWriter::with_capacity(64 * 1024, f);
                });
                let _ = ack.send(reopened);
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
}
