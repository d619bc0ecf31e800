//! One parser per kind of value: each takes the trimmed value and returns the typed
//! value or a message saying what was expected.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

// ---------------------------------------------------------------------------
// Value parsers: each takes the trimmed value and returns a message on error.

pub(super) fn expected(what: &str, value: &str) -> String {
    format!("expected {what}, got {}", quote(value))
}

/// A value quoted for a message, control characters escaped and length capped.
pub(super) fn quote(value: &str) -> String {
    if value.chars().count() <= QUOTE_CHARS_MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(QUOTE_CHARS_MAX).collect();
        format!("{head:?}...")
    }
}

/// Plain ASCII digits only: `u64::from_str` would also take a leading `+`.
pub(super) fn parse_uint(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

pub(super) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(expected("true or false", value)),
    }
}

pub(super) fn parse_port(value: &str) -> Result<u16, String> {
    parse_uint(value)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| expected("a port from 0 to 65535", value))
}

pub(super) fn parse_ip(value: &str) -> Result<IpAddr, String> {
    value
        .parse()
        .map_err(|_| expected("an IP address such as 0.0.0.0, 127.0.0.1 or ::", value))
}

pub(super) fn parse_proto(value: &str) -> Result<(), String> {
    if value.eq_ignore_ascii_case("http") {
        Ok(())
    } else {
        Err(expected(
            "\"http\" (it covers both http:// and https:// endpoints)",
            value,
        ))
    }
}

/// Let's Encrypt's production ACME directory: SSL_AUTO_DIRECTORY_URL's default.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Comma-separated DNS names (no wildcards: HTTP-01 cannot validate them).
pub(super) fn parse_domains(value: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let valid = name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            let what = "comma-separated DNS names such as example.com,www.example.com \
                        (no wildcards: the HTTP-01 challenge cannot prove them)";
            return Err(expected(what, name));
        }
        out.push(name.to_ascii_lowercase());
    }
    Ok(out)
}

pub(super) fn parse_https_url(value: &str) -> Result<String, String> {
    let rest = value.strip_prefix("https://").unwrap_or("");
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(expected("an https:// URL", value));
    }
    Ok(value.to_string())
}

pub(super) fn parse_concurrency_peak(value: &str) -> Result<usize, String> {
    match parse_uint(value) {
        // Fits: at most 65536.
        Some(n @ 1..=CONCURRENCY_PEAK_MAX) => Ok(n as usize),
        Some(n) if n > CONCURRENCY_PEAK_MAX => Err(expected(
            &format!("a positive integer of at most {CONCURRENCY_PEAK_MAX}"),
            value,
        )),
        _ => Err(expected("a positive integer", value)),
    }
}

pub(super) fn parse_max_retries(value: &str) -> Result<u32, String> {
    parse_uint(value)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n >= 1)
        .ok_or_else(|| expected("a positive integer", value))
}

pub(super) fn parse_bytes(value: &str) -> Result<u64, String> {
    parse_uint(value).ok_or_else(|| expected("a number of bytes (0 or more)", value))
}

pub(super) fn parse_usize_in(value: &str, (min, max): (u64, u64)) -> Result<usize, String> {
    parse_uint(value)
        .filter(|n| (min..=max).contains(n))
        // Fits: every range used is far below u32::MAX.
        .map(|n| n as usize)
        .ok_or_else(|| expected(&format!("an integer from {min} to {max}"), value))
}

pub(super) fn parse_fsync(value: &str) -> Result<FsyncPolicy, String> {
    match value.to_ascii_lowercase().as_str() {
        "always" => Ok(FsyncPolicy::Always),
        "interval" => Ok(FsyncPolicy::Interval),
        "never" => Ok(FsyncPolicy::Never),
        _ => Err(expected("always, interval or never", value)),
    }
}

/// A path with a default: empty is an error, since "no error log" is not an option.
pub(super) fn parse_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err(expected("a file path", value));
    }
    Ok(PathBuf::from(value))
}

/// An optional path: empty means unset. Relative paths stay relative, to be resolved
/// against the working directory where they are used (SPEC §1).
pub(super) fn parse_optional_path(value: &str) -> Result<Option<PathBuf>, String> {
    Ok((!value.is_empty()).then(|| PathBuf::from(value)))
}

/// Seconds as `digits[.digits]`: no sign, no unit, no exponent. `what` describes the
/// accepted values for the error message.
pub(super) fn parse_seconds(value: &str, what: &str) -> Result<Duration, String> {
    let (whole, fraction) = match value.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (value, None),
    };
    let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !is_digits(whole) || fraction.is_some_and(|f| !is_digits(f)) {
        return Err(expected(what, value));
    }
    let seconds = parse_uint(whole)
        .filter(|&s| s < SECONDS_MAX)
        .ok_or_else(|| expected(&format!("less than {SECONDS_MAX} seconds"), value))?;
    Ok(Duration::new(seconds, fraction.map_or(0, fraction_nanos)))
}

/// `"5"` → `500_000_000`. Digits beyond nanoseconds are dropped: no timer is that fine.
pub(super) fn fraction_nanos(fraction: &str) -> u32 {
    fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0, |nanos, digit| nanos * 10 + u32::from(digit - b'0'))
}

pub(super) fn parse_seconds_positive(value: &str) -> Result<Duration, String> {
    const WHAT: &str = "seconds greater than 0, e.g. 10 or 0.5";
    let seconds = parse_seconds(value, WHAT)?;
    if seconds.is_zero() {
        return Err(expected(WHAT, value));
    }
    Ok(seconds)
}

pub(super) fn parse_seconds_or_zero(value: &str) -> Result<Duration, String> {
    parse_seconds(value, "seconds (0 or more), e.g. 0, 10 or 0.5")
}

pub(super) fn parse_outgoing_timeout(value: &str) -> Result<Option<Duration>, String> {
    const WHAT: &str = "seconds greater than 0 (e.g. 5 or 0.5), or -1 for no timeout";
    if value == "-1" {
        return Ok(None);
    }
    let seconds = parse_seconds(value, WHAT)?;
    if seconds.is_zero() {
        return Err(expected(WHAT, value));
    }
    Ok(Some(seconds))
}

pub(super) fn parse_keep_alive_timeout(value: &str) -> Result<Option<Duration>, String> {
    if value == "-1" {
        return Ok(None);
    }
    let what = "seconds (e.g. 120 or 0.5), 0 to disable keep-alive, or -1 for no limit";
    parse_seconds(value, what).map(Some)
}

pub(super) fn parse_backend(value: &str) -> Result<QueueBackend, String> {
    match value {
        "memory" => Ok(QueueBackend::Memory),
        "journal" => Ok(QueueBackend::Journal),
        url if url.contains("://") => {
            crate::shared_queue::check_url(url).map(|()| QueueBackend::Redis(url.to_owned()))
        }
        _ => Err(expected(
            "memory, journal, redis://…, rediss://… or redis+sentinel://…",
            value,
        )),
    }
}

pub(super) fn parse_queue_name(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 200
        && !value.contains(|c: char| c == '{' || c == '}' || c.is_whitespace());
    if ok {
        Ok(value.to_owned())
    } else {
        Err(expected(
            "a name of 1 to 200 characters without spaces, { or }",
            value,
        ))
    }
}

pub(super) fn parse_lease(value: &str) -> Result<Duration, String> {
    const WHAT: &str = "seconds, at least 0.1, e.g. 5";
    let seconds = parse_seconds(value, WHAT)?;
    if seconds < Duration::from_millis(100) {
        return Err(expected(WHAT, value));
    }
    Ok(seconds)
}

pub(super) fn parse_max_age(value: &str) -> Result<Option<Duration>, String> {
    let what = "seconds (e.g. 3600), or 0 to keep queued requests forever";
    let seconds = parse_seconds(value, what)?;
    Ok((!seconds.is_zero()).then_some(seconds))
}

/// An origin-form path (and query) for the check's request line; empty = checks off.
pub(super) fn parse_health_check_path(value: &str) -> Result<Option<String>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let visible = value.bytes().all(|b| b.is_ascii_graphic());
    if !value.starts_with('/') || !visible {
        return Err(expected("a path such as /healthz (no spaces)", value));
    }
    Ok(Some(value.to_string()))
}

/// HEALTH_CHECK_RISE / HEALTH_CHECK_FALL: checks in a row, 1 to 100.
pub(super) fn parse_check_count(value: &str) -> Result<u32, String> {
    parse_usize_in(value, (1, 100)).map(|n| n as u32)
}

pub(super) fn parse_endpoints(value: &str) -> Result<Vec<Endpoint>, String> {
    if value.is_empty() {
        return Err(expected(
            "a comma-separated list of scheme://host[:port]",
            value,
        ));
    }
    value
        .split(',')
        .enumerate()
        .map(|(index, item)| match item.trim() {
            "" => Err(format!(
                "empty entry #{} in {}: remove the extra comma",
                index + 1,
                quote(value)
            )),
            item => item.parse(),
        })
        .collect()
}

/// Which way custom headers travel: a bare `Server` only makes sense in responses,
/// and `Host` is `ServiceQ`'s to set on requests (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeaderSide {
    Request,
    Response,
}

/// `Name: value|Name: value`; an empty setting means no headers. A value cannot hold
/// `|`, the separator.
pub(super) fn parse_headers(
    value: &str,
    side: HeaderSide,
) -> Result<Vec<(String, String)>, String> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    value
        .split('|')
        .enumerate()
        .map(|(index, entry)| match entry.trim() {
            "" => Err(format!(
                "empty entry #{} in {}: remove the extra \"|\"",
                index + 1,
                quote(value)
            )),
            entry => {
                parse_header(entry, side).map_err(|why| format!("header {}: {why}", quote(entry)))
            }
        })
        .collect()
}

pub(super) fn parse_header(entry: &str, side: HeaderSide) -> Result<(String, String), String> {
    if side == HeaderSide::Response && entry.eq_ignore_ascii_case("Server") {
        let version = concat!("serviceq/", env!("CARGO_PKG_VERSION"));
        return Ok(("Server".to_string(), version.to_string()));
    }
    let (name, value) = entry.split_once(':').ok_or("expected Name: value")?;
    let (name, value) = (name.trim(), value.trim());
    if !is_token(name) {
        return Err(format!("{} is not a valid header name", quote(name)));
    }
    // HTAB is allowed inside a field value (RFC 9110 §5.5); other controls would let a
    // value smuggle a line break into the message.
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err("the value contains a control character".to_string());
    }
    if is_managed_header(name, side) {
        return Err(format!(
            "{name} is set by ServiceQ itself and cannot be configured"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// RFC 9110 §5.6.2: `token = 1*tchar`.
pub(super) fn is_token(name: &str) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty() && name.bytes().all(tchar)
}

pub(super) fn is_managed_header(name: &str, side: HeaderSide) -> bool {
    let host_on_request = side == HeaderSide::Request && name.eq_ignore_ascii_case("Host");
    host_on_request || MANAGED_HEADERS.iter().any(|m| m.eq_ignore_ascii_case(name))
}
