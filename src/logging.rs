//! The two logs: the operational log on stderr (`log` + `simplelog`) and the SPEC §7
//! error log, an append-only file with one fixed-format line per failure.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use log::LevelFilter;
use simplelog::{ConfigBuilder, WriteLogger};
use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use crate::error::LogCode;

/// Client-supplied text (a request target, a header value) is cut to this many bytes
/// wherever it is logged.
pub const MAX_LOGGED_CLIENT_BYTES: usize = 512;

/// Client bytes in a log line — the access log's fields and every stderr line that
/// shows what a client sent: capped at `MAX_LOGGED_CLIENT_BYTES`, with quotes,
/// backslashes, control characters and non-ASCII escaped as `\xHH` (nginx's
/// escaping), so a line can never be split, forged or made huge by a client.
pub struct Escaped<'a>(pub &'a [u8]);

/// `Escaped` for text held as a `str` (a method, a target).
pub fn escaped(text: &str) -> Escaped<'_> {
    Escaped(text.as_bytes())
}

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for &b in self.0.iter().take(MAX_LOGGED_CLIENT_BYTES) {
            if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
                write!(f, "\\x{b:02X}")?;
            } else {
                f.write_char(char::from(b))?;
            }
        }
        Ok(())
    }
}

/// SPEC §7: `ServiceQ: 2018/04/18 14:10:28 Error detected on …`.
const ERROR_LOG_TIME: &[FormatItem<'static>] =
    format_description!("[year]/[month]/[day] [hour]:[minute]:[second]");

/// The local UTC offset, read once at start-up: the `time` crate refuses to read it
/// once other threads exist (reading the environment then is not thread-safe), so a
/// daylight-saving change shows after a restart.
pub fn local_offset() -> UtcOffset {
    UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC)
}

/// Sends the operational log to stderr. Call before any thread is spawned.
pub fn init_stderr(level: LevelFilter) {
    let mut builder = ConfigBuilder::new();
    builder
        .set_time_format_custom(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off);
    let _ = builder.set_time_offset_to_local();
    // A second initialisation (only possible in tests) keeps the first logger.
    let _ = WriteLogger::init(level, builder.build(), io::stderr());
}

/// The SPEC §7 error log. Lines go out with one `write` each on an `O_APPEND` file, so
/// concurrent workers never interleave or wait on each other beyond a shared read lock.
pub struct ErrorLog {
    path: PathBuf,
    file: RwLock<File>,
    offset: UtcOffset,
}

impl ErrorLog {
    /// Opens (creating) the log for appending; the directory must exist.
    pub fn open(path: &Path, offset: UtcOffset) -> io::Result<Self> {
        Ok(ErrorLog {
            path: path.to_path_buf(),
            file: RwLock::new(open_append(path)?),
            offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one failure on `target` (an endpoint, or `serviceq:PORT` for 601).
    pub fn record(&self, target: &dyn std::fmt::Display, code: LogCode) {
        let line = format_line(
            OffsetDateTime::now_utc().to_offset(self.offset),
            target,
            code,
        );
        let file = self
            .file
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(e) = (&*file).write_all(line.as_bytes()) {
            log::warn!("cannot write the error log {}: {e}", self.path.display());
        }
    }

    /// Re-opens the file at its path (after logrotate moved it).
    pub fn reopen(&self) -> io::Result<()> {
        let fresh = open_append(&self.path)?;
        *self
            .file
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn format_line(now: OffsetDateTime, target: &dyn std::fmt::Display, code: LogCode) -> String {
    let stamp = now
        .format(ERROR_LOG_TIME)
        .unwrap_or_else(|_| String::from("0000/00/00 00:00:00"));
    format!(
        "ServiceQ: {stamp} Error detected on {target} [Code: {}, {}]\n",
        code.number(),
        code.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn line_matches_the_spec_format() {
        let at = datetime!(2018-04-18 14:10:28 UTC);
        let line = format_line(at, &"http://10.0.0.5:8001", LogCode::UpstreamDown);
        assert_eq!(
            line,
            "ServiceQ: 2018/04/18 14:10:28 Error detected on http://10.0.0.5:8001 \
             [Code: 701, UPSTREAM_DOWN]\n"
        );
        let flood = format_line(at, &"serviceq:5252", LogCode::Flooded);
        assert!(flood.ends_with("serviceq:5252 [Code: 601, SERVICEQ_FLOODED]\n"));
    }

    #[test]
    fn client_bytes_are_escaped_and_capped() {
        let evil = format!("a\"b\nc\\\u{1b}é{}", "x".repeat(1000));
        let shown = escaped(&evil).to_string();
        assert!(
            shown.starts_with("a\\x22b\\x0Ac\\x5C\\x1B\\xC3\\xA9x"),
            "{shown}"
        );
        assert!(!shown.contains('\n'));
        assert_eq!(shown.matches('x').count() - 6, MAX_LOGGED_CLIENT_BYTES - 9);
    }

    #[test]
    fn records_append_whole_lines() {
        let dir = std::env::temp_dir().join(format!("sq-errlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("e.log");
        let log = ErrorLog::open(&path, UtcOffset::UTC).unwrap();
        log.record(&"http://127.0.0.1:1", LogCode::UpstreamTimedOut);
        log.record(&"http://127.0.0.1:1", LogCode::UpstreamBadResponse);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("[Code: 702, UPSTREAM_TIMED_OUT]"));
        assert!(lines[1].ends_with("[Code: 702, UPSTREAM_BAD_RESPONSE]"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
