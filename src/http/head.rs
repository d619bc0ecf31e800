//! Request and response heads: parse with httparse, then apply RFC 9112's framing rules.
//!
//! Both parsers are push parsers on a bounded buffer, like httparse itself: hand over
//! everything read so far; `Ok(None)` means "read more", `Ok(Some((head, n)))` means the
//! head is the first `n` bytes and what follows is body (or the next pipelined message).
//! Only the first `max_head_bytes` of the buffer are ever looked at.
//!
//! Decisions a reader should know about:
//! - Bare LF line endings are accepted throughout the head (RFC 9112 §2.2 lets a
//!   recipient recognise a single LF as a line terminator; httparse does). This is
//!   consistent for requests and responses, and cannot shift framing: the head still ends
//!   at the first empty line, and bodies are framed by Content-Length or by the chunked
//!   decoder, which does require CRLF. Leading empty lines before the request line are
//!   skipped (§2.2) and count towards the head length.
//! - Everything httparse rejects by default stays rejected: obs-fold (§5.2), whitespace
//!   between a field name and its colon (§5.1), control characters and NUL in names and
//!   values, a malformed request or status line.
//! - A request target must be visible ASCII without a fragment (RFC 9112 §3.2 has no
//!   `#`), so ServiceQ and the endpoint cannot disagree on where the path ends.
//! - `HTTP/` DIGIT [`.` DIGIT] other than 1.0 and 1.1 is "well-formed but unsupported"
//!   (505, RFC 9110 §15.6.6), which covers `HTTP/2.0`, `HTTP/3` and the HTTP/2
//!   connection preface; any other version text is a malformed request line (400).

use super::headers::{self, list_elements};
use super::{Header, Version};

/// Limits that bound a head before it is accepted.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Bytes in the whole head, request/status line through the blank line.
    pub max_head_bytes: usize,
    /// Number of header fields.
    pub max_headers: usize,
}

/// How a request's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// HEAD, 1xx, 204, 304.
    NoBody,
    Length(u64),
    Chunked,
    /// No Content-Length, no Transfer-Encoding: the body ends when the server closes.
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Origin-form target (`/path?query`), or `*` for `OPTIONS *`. An absolute-form
    /// target is turned into origin-form here and its authority kept in `authority`.
    pub target: String,
    /// The authority of an absolute-form target, if the request used one.
    pub authority: Option<String>,
    pub version: Version,
    pub headers: Vec<Header>,
    pub framing: BodyFraming,
    /// Whether the client's connection persists after this request (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent (HTTP/1.1 only).
    pub expect_continue: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub version: Version,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<Header>,
    pub framing: ResponseFraming,
    /// Whether the upstream connection may carry another request after this response.
    pub keep_alive: bool,
}

impl RequestHead {
    /// A head to parse into with [`parse_request_into`].
    pub fn empty() -> Self {
        RequestHead {
            method: String::new(),
            target: String::new(),
            authority: None,
            version: Version::Http11,
            headers: Vec::new(),
            framing: BodyFraming::None,
            keep_alive: true,
            expect_continue: false,
        }
    }
}

impl ResponseHead {
    /// A head to parse into with [`parse_response_into`].
    pub fn empty() -> Self {
        ResponseHead {
            version: Version::Http11,
            status: 0,
            reason: String::new(),
            headers: Vec::new(),
            framing: ResponseFraming::NoBody,
            keep_alive: false,
        }
    }
}

/// Why a head was refused. Each maps to one response in `crate::error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Head longer than `max_head_bytes` → 431.
    TooLarge,
    /// More than `max_headers` fields → 431.
    TooManyHeaders,
    /// Syntax or framing error → 400 (requests) / malformed response (responses).
    Malformed(&'static str),
    /// A well-formed request line with a version other than 1.0/1.1 → 505.
    UnsupportedVersion,
    /// A transfer coding ServiceQ does not implement → 501.
    UnsupportedCoding,
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: the head is not complete yet (read more). `Err(TooLarge)` once the head
/// is, or would have to be, longer than `limits.max_head_bytes`.
pub fn parse_request(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut head = RequestHead::empty();
    Ok(parse_request_into(buf, limits, &mut head)?.map(|len| (head, len)))
}

/// [`parse_request`] into a head kept from an earlier request: its strings and header
/// fields are overwritten in place, so a worker that parses every request into the same
/// head allocates nothing once their capacity suffices. On `Ok(Some(len))` the head is
/// the first `len` bytes of `buf`; otherwise `head` holds nothing meaningful.
pub fn parse_request_into(
    buf: &[u8],
    limits: &HeadLimits,
    head: &mut RequestHead,
) -> Result<Option<usize>, HeadError> {
    with_header_slots(head_window(buf, limits), limits, |window, slots| {
        request_with_slots(buf, window, limits, slots, head)
    })
}

fn request_with_slots<'w>(
    buf: &[u8],
    window: &'w [u8],
    limits: &HeadLimits,
    slots: &mut [httparse::Header<'w>],
    head: &mut RequestHead,
) -> Result<Option<usize>, HeadError> {
    let mut req = httparse::Request::new(slots);
    let len = match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return incomplete(buf, limits),
        Err(httparse::Error::Version) => {
            return match classify_bad_version(window) {
                Some(err) => Err(err),
                None => incomplete(buf, limits),
            }
        }
        Err(err) => return Err(syntax_error(err)),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    fill_headers(&mut head.headers, req.headers);
    build_request(method, target, version_of(minor)?, head)?;
    Ok(Some(len))
}

/// Parses a response head from the start of `buf`; `request_method` is the method of
/// the request it answers (a response to HEAD has no body). Same conventions as
/// [`parse_request`]; every refusal is `Malformed` (or a limit), as there is no 505 to
/// send upstream.
pub fn parse_response(
    buf: &[u8],
    limits: &HeadLimits,
    request_method: &str,
) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let mut head = ResponseHead::empty();
    Ok(parse_response_into(buf, limits, request_method, &mut head)?.map(|len| (head, len)))
}

/// [`parse_response`] into a reused head, as [`parse_request_into`].
pub fn parse_response_into(
    buf: &[u8],
    limits: &HeadLimits,
    request_method: &str,
    head: &mut ResponseHead,
) -> Result<Option<usize>, HeadError> {
    with_header_slots(head_window(buf, limits), limits, |window, slots| {
        response_with_slots(buf, window, limits, request_method, slots, head)
    })
}

fn response_with_slots<'w>(
    buf: &[u8],
    window: &'w [u8],
    limits: &HeadLimits,
    request_method: &str,
    slots: &mut [httparse::Header<'w>],
    head: &mut ResponseHead,
) -> Result<Option<usize>, HeadError> {
    let mut res = httparse::Response::new(slots);
    let len = match res.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return incomplete(buf, limits),
        Err(err) => return Err(syntax_error(err)),
    };
    let (Some(minor), Some(status), Some(reason)) = (res.version, res.code, res.reason) else {
        return Err(HeadError::Malformed("incomplete status line"));
    };
    // RFC 9110 §15: a status code is three digits, 100 to 999 (httparse takes 000).
    if !(100..=999).contains(&status) {
        return Err(HeadError::Malformed("status code out of range"));
    }
    let version = version_of(minor)?;
    fill_headers(&mut head.headers, res.headers);
    let framing = response_framing(version, status, request_method, &head.headers)?;
    head.keep_alive = framing != ResponseFraming::UntilClose && persistent(version, &head.headers);
    head.version = version;
    head.status = status;
    head.framing = framing;
    head.reason.clear();
    head.reason.push_str(reason);
    Ok(Some(len))
}

/// The part of `buf` a head may occupy: a head that does not end within it is too large.
fn head_window<'b>(buf: &'b [u8], limits: &HeadLimits) -> &'b [u8] {
    buf.get(..limits.max_head_bytes).unwrap_or(buf)
}

/// Header slots kept on the stack: enough for almost every real head, so parsing
/// allocates nothing for them (a heap array of `max_headers` slots, kilobytes, on every
/// request showed up in profiles as malloc consolidation).
const STACK_HEADER_SLOTS: usize = 32;

/// Runs a parse with header slots for httparse: first the stack array; only when that
/// is too small, a heap array as large as the limits allow. A field line takes at
/// least 3 bytes (`a:` LF), so a window cannot hold more than `len / 3` fields: sizing
/// by the window bounds the heap array without ever reporting `TooManyHeaders` below
/// `max_headers`.
fn with_header_slots<'w, T>(
    window: &'w [u8],
    limits: &HeadLimits,
    mut parse: impl FnMut(&'w [u8], &mut [httparse::Header<'w>]) -> Result<T, HeadError>,
) -> Result<T, HeadError> {
    let needed = limits.max_headers.min(window.len() / 3 + 1);
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADER_SLOTS];
    let first = parse(window, &mut stack[..needed.min(STACK_HEADER_SLOTS)]);
    match first {
        Err(HeadError::TooManyHeaders) if needed > STACK_HEADER_SLOTS => {
            let mut heap = vec![httparse::EMPTY_HEADER; needed];
            parse(window, &mut heap)
        }
        other => other,
    }
}

fn incomplete<T>(buf: &[u8], limits: &HeadLimits) -> Result<Option<T>, HeadError> {
    if buf.len() >= limits.max_head_bytes {
        Err(HeadError::TooLarge)
    } else {
        Ok(None)
    }
}

fn syntax_error(err: httparse::Error) -> HeadError {
    HeadError::Malformed(match err {
        httparse::Error::TooManyHeaders => return HeadError::TooManyHeaders,
        // Also obs-fold (a line starting with SP/HTAB) and whitespace before the colon.
        httparse::Error::HeaderName => "invalid header field name",
        httparse::Error::HeaderValue => "invalid header field value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid request line",
        httparse::Error::Version => "unsupported HTTP version",
    })
}

fn version_of(minor: u8) -> Result<Version, HeadError> {
    match minor {
        0 => Ok(Version::Http10),
        1 => Ok(Version::Http11),
        _ => Err(HeadError::Malformed("unsupported HTTP version")),
    }
}

/// Copies httparse's fields into `headers`, reusing the fields already there (and their
/// name and value buffers) for the first ones.
fn fill_headers(headers: &mut Vec<Header>, fields: &[httparse::Header<'_>]) {
    headers.truncate(fields.len());
    let reused = headers.len();
    for (h, f) in headers.iter_mut().zip(fields) {
        h.name.clear();
        h.name.push_str(f.name);
        h.value.clear();
        h.value.extend_from_slice(f.value);
    }
    headers.extend(fields[reused..].iter().map(|f| Header {
        name: f.name.to_string(),
        value: f.value.to_vec(),
    }));
}

/// How far a version text matches `HTTP/` DIGIT [`.` DIGIT].
#[derive(Debug, PartialEq, Eq)]
enum VersionShape {
    /// Could still become well-formed with more bytes.
    Prefix,
    /// Well-formed (and maybe the prefix of a longer well-formed text).
    WellFormed,
    Invalid,
}

fn version_shape(text: &[u8]) -> VersionShape {
    const NAME: &[u8] = b"HTTP/";
    let Some(number) = text.strip_prefix(NAME) else {
        return if NAME.starts_with(text) {
            VersionShape::Prefix
        } else {
            VersionShape::Invalid
        };
    };
    match number {
        [] => VersionShape::Prefix,
        [major] if major.is_ascii_digit() => VersionShape::WellFormed,
        [major, b'.'] if major.is_ascii_digit() => VersionShape::Prefix,
        [major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            VersionShape::WellFormed
        }
        _ => VersionShape::Invalid,
    }
}

/// httparse says `Error::Version` both for `HTTP/2.0` (well-formed: 505) and for
/// `HTXP/1.1` (malformed: 400), and as soon as the version cannot be 1.0 or 1.1, before
/// the line ends. This tells the two apart once the line ends; `None` means the line
/// is not complete yet and could still be a well-formed request line.
fn classify_bad_version(window: &[u8]) -> Option<HeadError> {
    let malformed = Some(HeadError::Malformed("invalid HTTP version"));
    // httparse got past the leading empty lines, the method and the target, each
    // followed by exactly one SP, so the version starts after the second SP.
    let start = window.iter().position(|&b| b != b'\r' && b != b'\n');
    let line = start.and_then(|start| window.get(start..));
    let Some(version) = line.and_then(|line| line.splitn(3, |&b| b == b' ').nth(2)) else {
        return malformed;
    };
    match version.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let text = version.get(..end).unwrap_or_default();
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            match version_shape(text) {
                VersionShape::WellFormed => Some(HeadError::UnsupportedVersion),
                _ => malformed,
            }
        }
        None => match version.strip_suffix(b"\r") {
            Some(text) if version_shape(text) == VersionShape::WellFormed => None,
            Some(_) => malformed,
            None if version_shape(version) == VersionShape::Invalid => malformed,
            None => None,
        },
    }
}

/// Checks a parsed request line and fields (already in `head.headers`) against RFC 9112
/// and fills in the rest of `head`.
fn build_request(
    method: &str,
    target: &str,
    version: Version,
    head: &mut RequestHead,
) -> Result<(), HeadError> {
    let (target, authority) = request_target(method, target)?;
    let headers = &head.headers;
    check_host(version, headers)?;
    let framing = body_framing(version, headers)?;
    let keep_alive = persistent(version, headers);
    // RFC 9110 §10.1.1: the only expectation defined; HTTP/1.0 clients cannot expect it.
    let expect_continue = version == Version::Http11
        && headers::named(headers, "expect").any(|h| h.value.eq_ignore_ascii_case(b"100-continue"));
    head.method.clear();
    head.method.push_str(method);
    head.target.clear();
    match target {
        Target::Whole(t) => head.target.push_str(t),
        Target::Rooted(t) => {
            head.target.push('/');
            head.target.push_str(t);
        }
    }
    head.authority = authority.map(str::to_string);
    head.version = version;
    head.framing = framing;
    head.keep_alive = keep_alive;
    head.expect_continue = expect_continue;
    Ok(())
}

/// An origin-form target as a slice of the received one: either all of it, or, for an
/// absolute-form target whose path starts with `?` or is empty, `/` followed by it.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Whole(&'a str),
    Rooted(&'a str),
}

/// The origin-form target and the authority of an absolute-form one (RFC 9112 §3.2).
fn request_target<'t>(
    method: &str,
    target: &'t str,
) -> Result<(Target<'t>, Option<&'t str>), HeadError> {
    // Authority-form (§3.2.3) exists only for CONNECT, and ServiceQ does not tunnel.
    if method == "CONNECT" {
        return Err(HeadError::Malformed("CONNECT is not supported"));
    }
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HeadError::Malformed("non-ASCII byte in request target"));
    }
    if target.contains('#') {
        return Err(HeadError::Malformed("fragment in request target"));
    }
    if target.starts_with('/') {
        return Ok((Target::Whole(target), None));
    }
    if target == "*" {
        // Asterisk-form (§3.2.4) is only for a server-wide OPTIONS.
        return match method {
            "OPTIONS" => Ok((Target::Whole(target), None)),
            _ => Err(HeadError::Malformed("asterisk-form target without OPTIONS")),
        };
    }
    absolute_form(method, target)
}

/// `http[s]://authority[/path][?query]` (§3.2.2) → (`/path?query`, authority).
fn absolute_form<'t>(
    method: &str,
    target: &'t str,
) -> Result<(Target<'t>, Option<&'t str>), HeadError> {
    let after_scheme = ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| target.get(scheme.len()..))
            .flatten()
    });
    let Some(rest) = after_scheme else {
        return Err(HeadError::Malformed("invalid request target"));
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    // RFC 9110 §4.2.1: an http URI with an empty host is invalid; §4.2.4: userinfo
    // (`@`) is an error in a request.
    if authority.is_empty() || !is_authority(authority.as_bytes()) {
        return Err(HeadError::Malformed("invalid authority in request target"));
    }
    let origin = match path {
        // §3.2.4: the last proxy sends `*` for an OPTIONS with an empty path and no query.
        "" if method == "OPTIONS" => Target::Whole("*"),
        "" => Target::Rooted(""),
        _ if path.starts_with('?') => Target::Rooted(path),
        _ => Target::Whole(path),
    };
    Ok((origin, Some(authority)))
}

/// uri-host [":" port] (RFC 3986 §3.2): unreserved, pct-encoded, sub-delims, `:`, and
/// the brackets of an IP literal. No `@`, `/`, whitespace or controls.
fn is_authority(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b))
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host; no request has two; the
/// value must be a valid authority (it may be empty).
fn check_host(version: Version, headers: &[Header]) -> Result<(), HeadError> {
    let mut hosts = headers::named(headers, "host");
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::Malformed("more than one Host field"));
    }
    match first {
        None if version == Version::Http11 => Err(HeadError::Malformed("missing Host field")),
        Some(host) if !is_authority(&host.value) => Err(HeadError::Malformed("invalid Host field")),
        _ => Ok(()),
    }
}

/// The message body length (RFC 9112 §6.1–§6.3), for requests and for responses that
/// may have a body. A transfer coding other than chunked is `UnsupportedCoding`.
fn body_framing(version: Version, headers: &[Header]) -> Result<BodyFraming, HeadError> {
    let has_te = headers::find(headers, "transfer-encoding").is_some();
    let has_cl = headers::find(headers, "content-length").is_some();
    // §6.3 item 3: both is a smuggling attempt, however it would be resolved.
    if has_te && has_cl {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if has_te {
        // §6.1: Transfer-Encoding in an HTTP/1.0 message means the framing is faulty.
        if version == Version::Http10 {
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 message",
            ));
        }
        check_codings(headers)?;
        return Ok(BodyFraming::Chunked);
    }
    Ok(match content_length(headers)? {
        Some(length) => BodyFraming::Length(length),
        None => BodyFraming::None,
    })
}

/// The Transfer-Encoding list, across all its fields, must end in exactly one `chunked`
/// (§6.1, §6.3 item 4: otherwise the length cannot be determined); any coding before it
/// is one ServiceQ does not implement (§6.1: 501).
fn check_codings(headers: &[Header]) -> Result<(), HeadError> {
    let codings: Vec<&[u8]> = headers::named(headers, "transfer-encoding")
        .flat_map(|h| list_elements(&h.value))
        .collect();
    let is_chunked = |coding: &&[u8]| coding.eq_ignore_ascii_case(b"chunked");
    if codings.iter().filter(|c| is_chunked(c)).count() > 1 {
        return Err(HeadError::Malformed("chunked applied more than once"));
    }
    if !codings.last().is_some_and(is_chunked) {
        return Err(HeadError::Malformed("final transfer coding is not chunked"));
    }
    if codings.len() > 1 {
        return Err(HeadError::UnsupportedCoding);
    }
    Ok(())
}

/// Content-Length (RFC 9110 §8.6): 1*DIGIT in every field, all fields equal. A list in
/// one field (`5, 5`) is refused rather than reduced, as is anything that is not a
/// plain decimal number fitting in 64 bits.
fn content_length(headers: &[Header]) -> Result<Option<u64>, HeadError> {
    let mut length = None;
    for field in headers::named(headers, "content-length") {
        let Some(value) = parse_decimal(&field.value) else {
            return Err(HeadError::Malformed(
                "Content-Length is not a plain decimal number",
            ));
        };
        if length.is_some_and(|seen| seen != value) {
            return Err(HeadError::Malformed("Content-Length values differ"));
        }
        length = Some(value);
    }
    Ok(length)
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        acc.checked_mul(10)?.checked_add(digit)
    })
}

/// RFC 9112 §9.3: HTTP/1.1 persists unless `close`; HTTP/1.0 only with `keep-alive`.
fn persistent(version: Version, headers: &[Header]) -> bool {
    let tokens = headers::connection_tokens(headers);
    let has = |token: &str| tokens.contains(token);
    match version {
        Version::Http11 => !has("close"),
        Version::Http10 => has("keep-alive") && !has("close"),
    }
}

/// RFC 9112 §6.3 for responses. ServiceQ re-frames what it relays, so it cannot pass
/// on a coding it does not decode: every Transfer-Encoding problem is `Malformed`.
fn response_framing(
    version: Version,
    status: u16,
    request_method: &str,
    headers: &[Header],
) -> Result<ResponseFraming, HeadError> {
    // §6.3 item 1: whatever the fields say, these responses end at the head.
    if request_method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(ResponseFraming::NoBody);
    }
    match body_framing(version, headers) {
        Ok(BodyFraming::None) => Ok(ResponseFraming::UntilClose),
        Ok(BodyFraming::Length(length)) => Ok(ResponseFraming::Length(length)),
        Ok(BodyFraming::Chunked) => Ok(ResponseFraming::Chunked),
        Err(HeadError::UnsupportedCoding) => {
            Err(HeadError::Malformed("transfer coding other than chunked"))
        }
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 1024,
        max_headers: 8,
    };
    const MALFORMED: HeadError = HeadError::Malformed("");
    const KEEP: bool = true;
    const CLOSE: bool = false;

    /// What a table row expects: the framing and persistence of an accepted head, or
    /// the kind of error (the message of `Malformed` is not compared).
    #[derive(Debug)]
    enum Want<F> {
        Ok(F, bool),
        Err(HeadError),
    }

    fn same_kind(a: &HeadError, b: &HeadError) -> bool {
        std::mem::discriminant(a) == std::mem::discriminant(b)
    }

    /// Runs one head through a parser whole, byte by byte, and pipelined:
    /// - whole: the expected result, with the head ending at the end of the input;
    /// - every proper prefix: `None` (or, for a bad head, the same error once found);
    /// - followed by another message: the same head, and `n` stops at its end.
    fn check<H, F: PartialEq + std::fmt::Debug + Copy>(
        input: &[u8],
        want: Want<F>,
        parse: impl Fn(&[u8]) -> Result<Option<(H, usize)>, HeadError>,
        summary: impl Fn(&H) -> (F, bool),
    ) {
        let shown = String::from_utf8_lossy(input);
        let mut seen_error = None;
        for cut in 0..input.len() {
            match (parse(&input[..cut]), &want) {
                (Ok(None), _) if seen_error.is_none() => {}
                (Err(e), Want::Err(w)) if same_kind(&e, w) => seen_error = Some(e),
                (other, _) => panic!(
                    "{shown:?} cut at {cut}: {:?}",
                    other.map(|o| o.map(|(_, n)| n))
                ),
            }
        }
        let pipelined = [input, b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"].concat();
        for buf in [input, &pipelined[..]] {
            match (parse(buf), &want) {
                (Ok(Some((head, n))), Want::Ok(framing, keep_alive)) => {
                    assert_eq!(n, input.len(), "{shown:?}");
                    assert_eq!(summary(&head), (*framing, *keep_alive), "{shown:?}");
                }
                (Err(e), Want::Err(w)) => assert!(same_kind(&e, w), "{shown:?}: {e:?}"),
                (got, _) => panic!(
                    "{shown:?}: {:?}, want {want:?}",
                    got.map(|o| o.map(|(_, n)| n))
                ),
            }
        }
    }

    fn check_request(input: &[u8], want: Want<BodyFraming>) {
        let parse = |buf: &[u8]| parse_request(buf, &LIMITS);
        check(input, want, parse, |h: &RequestHead| {
            (h.framing, h.keep_alive)
        });
    }

    fn check_response(method: &str, input: &[u8], want: Want<ResponseFraming>) {
        let parse = |buf: &[u8]| parse_response(buf, &LIMITS, method);
        check(input, want, parse, |h: &ResponseHead| {
            (h.framing, h.keep_alive)
        });
    }

    /// One `#[test]` per row, so a failure names its case (httparse's `req!` style).
    macro_rules! requests {
        ($($name:ident: $input:expr => $want:expr;)*) => {
            $(#[test] fn $name() { check_request($input, $want) })*
        };
    }

    macro_rules! responses {
        ($($name:ident: $method:literal $input:expr => $want:expr;)*) => {
            $(#[test] fn $name() { check_response($method, $input, $want) })*
        };
    }

    use BodyFraming as B;
    use HeadError::{TooManyHeaders, UnsupportedCoding, UnsupportedVersion};
    use ResponseFraming as R;

    requests! {
        // Accepted heads: framing and keep-alive.
        req_minimal: b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_http10_closes: b"GET / HTTP/1.0\r\n\r\n" => Want::Ok(B::None, CLOSE);
        req_http10_keep_alive: b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_http10_keep_alive_any_case: b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_http10_keep_alive_and_close: b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n" => Want::Ok(B::None, CLOSE);
        req_http10_close_in_other_field: b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n" => Want::Ok(B::None, CLOSE);
        req_http10_with_host: b"GET / HTTP/1.0\r\nHost: a\r\n\r\n" => Want::Ok(B::None, CLOSE);
        req_http11_close: b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" => Want::Ok(B::None, CLOSE);
        req_http11_close_in_list: b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-foo, CLOSE\r\n\r\n" => Want::Ok(B::None, CLOSE);
        req_http11_keep_alive_token: b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_content_length: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n" => Want::Ok(B::Length(5), KEEP);
        req_content_length_zero: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n" => Want::Ok(B::Length(0), KEEP);
        req_content_length_leading_zeros: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n" => Want::Ok(B::Length(7), KEEP);
        req_content_length_max: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n" => Want::Ok(B::Length(u64::MAX), KEEP);
        req_content_length_ows: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  \t5 \t\r\n\r\n" => Want::Ok(B::Length(5), KEEP);
        req_content_length_repeated_equal: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n" => Want::Ok(B::Length(5), KEEP);
        req_content_length_http10: b"POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\n" => Want::Ok(B::Length(5), CLOSE);
        req_chunked: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" => Want::Ok(B::Chunked, KEEP);
        req_chunked_any_case: b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: CHUNKED\r\n\r\n" => Want::Ok(B::Chunked, KEEP);
        req_chunked_empty_list_elements: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked,\r\n\r\n" => Want::Ok(B::Chunked, KEEP);
        req_chunked_after_empty_field: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\n\r\n" => Want::Ok(B::Chunked, KEEP);
        req_bare_lf: b"GET / HTTP/1.1\nHost: a\n\n" => Want::Ok(B::None, KEEP);
        req_mixed_line_endings: b"GET / HTTP/1.1\r\nHost: a\n\r\n" => Want::Ok(B::None, KEEP);
        req_leading_empty_lines: b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_leading_bare_lf: b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_empty_host: b"GET / HTTP/1.1\r\nHost:\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_host_port: b"GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_host_ipv6: b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_obs_text_value: b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xc3\xa9 \xff\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_tab_in_value: b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\tb\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_empty_value: b"GET / HTTP/1.1\r\nHost: a\r\nX-A:\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_extension_method: b"PROPFIND /x HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_options_asterisk: b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_absolute_form: b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Ok(B::None, KEEP);
        req_max_headers: b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\n\r\n" => Want::Ok(B::None, KEEP);

        // Request line.
        req_extra_token: b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_trailing_space: b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_double_space: b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_tab_delimiter: b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_no_version: b"GET /\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_no_target: b"GET HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_lowercase_version: b"GET / http/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_garbage_version: b"GET / HTTP/x.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_long_version: b"GET / HTTP/12.0\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_version_suffix: b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_bad_version_trailing_space: b"GET / HTTP/2.0 \r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_bad_version_lone_cr: b"GET / HTTP/2.0\rHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_method_not_token: b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_method_non_ascii: b"G\xc3\x89T / HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_lone_cr_before_request: b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_nul_in_target: b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_version_1_2: b"GET / HTTP/1.2\r\nHost: a\r\n\r\n" => Want::Err(UnsupportedVersion);
        req_version_2_0: b"GET / HTTP/2.0\r\nHost: a\r\n\r\n" => Want::Err(UnsupportedVersion);
        req_version_3: b"GET / HTTP/3\r\nHost: a\r\n\r\n" => Want::Err(UnsupportedVersion);
        req_version_major_only: b"GET / HTTP/1\r\nHost: a\r\n\r\n" => Want::Err(UnsupportedVersion);
        req_version_0_9: b"GET / HTTP/0.9\r\n\r\n" => Want::Err(UnsupportedVersion);
        req_version_bare_lf: b"GET / HTTP/2.0\n\n" => Want::Err(UnsupportedVersion);
        req_http2_preface: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" => Want::Err(UnsupportedVersion);

        // Field syntax.
        req_obs_fold: b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n" => Want::Err(MALFORMED);
        req_obs_fold_tab: b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n" => Want::Err(MALFORMED);
        req_space_before_first_field: b"GET / HTTP/1.1\r\n Host: a\r\n\r\n" => Want::Err(MALFORMED);
        req_space_before_colon: b"GET / HTTP/1.1\r\nHost : a\r\n\r\n" => Want::Err(MALFORMED);
        req_tab_before_colon: b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n" => Want::Err(MALFORMED);
        req_space_in_name: b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n" => Want::Err(MALFORMED);
        req_empty_name: b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n" => Want::Err(MALFORMED);
        req_no_colon: b"GET / HTTP/1.1\r\nHost: a\r\nX-A\r\n\r\n" => Want::Err(MALFORMED);
        req_nul_in_name: b"GET / HTTP/1.1\r\nHost: a\r\nX\x00A: b\r\n\r\n" => Want::Err(MALFORMED);
        req_non_ascii_name: b"GET / HTTP/1.1\r\nHost: a\r\nX-\xc3\xa9: b\r\n\r\n" => Want::Err(MALFORMED);
        req_nul_in_value: b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n" => Want::Err(MALFORMED);
        req_ctl_in_value: b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n" => Want::Err(MALFORMED);
        req_del_in_value: b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n" => Want::Err(MALFORMED);
        req_escape_in_value: b"GET / HTTP/1.1\r\nHost: a\r\nX-A: \x1b[31m\r\n\r\n" => Want::Err(MALFORMED);
        req_lone_cr_in_value: b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n" => Want::Err(MALFORMED);
        req_lone_cr_line_end: b"GET / HTTP/1.1\rHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_lone_cr_head_end: b"GET / HTTP/1.1\r\nHost: a\r\n\rX" => Want::Err(MALFORMED);

        // Content-Length.
        req_cl_plus: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n" => Want::Err(MALFORMED);
        req_cl_minus: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n" => Want::Err(MALFORMED);
        req_cl_hex: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n" => Want::Err(MALFORMED);
        req_cl_space_inside: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n" => Want::Err(MALFORMED);
        req_cl_decimal_point: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5.0\r\n\r\n" => Want::Err(MALFORMED);
        req_cl_empty: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n" => Want::Err(MALFORMED);
        req_cl_list_equal: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n" => Want::Err(MALFORMED);
        req_cl_list_differ: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,6\r\n\r\n" => Want::Err(MALFORMED);
        req_cl_fields_differ: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n" => Want::Err(MALFORMED);
        req_cl_second_invalid: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: x\r\n\r\n" => Want::Err(MALFORMED);
        req_cl_overflow: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n" => Want::Err(MALFORMED);
        req_cl_non_ascii_digit: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \xd9\xa5\r\n\r\n" => Want::Err(MALFORMED);

        // Transfer-Encoding.
        req_cl_and_te: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" => Want::Err(MALFORMED);
        req_te_and_cl: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n" => Want::Err(MALFORMED);
        req_te_and_bad_cl: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: x\r\n\r\n" => Want::Err(MALFORMED);
        req_te_http10: b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" => Want::Err(MALFORMED);
        req_te_http10_keep_alive: b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" => Want::Err(MALFORMED);
        req_te_not_last: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n" => Want::Err(MALFORMED);
        req_te_gzip_only: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n" => Want::Err(MALFORMED);
        req_te_empty: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n" => Want::Err(MALFORMED);
        req_te_identity: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n" => Want::Err(MALFORMED);
        req_te_chunked_twice: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n" => Want::Err(MALFORMED);
        req_te_chunked_twice_fields: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: Chunked\r\n\r\n" => Want::Err(MALFORMED);
        req_te_chunked_twice_with_gzip: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked, chunked\r\n\r\n" => Want::Err(MALFORMED);
        req_te_chunked_with_parameter: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n" => Want::Err(MALFORMED);
        req_te_chunked_lookalike: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n" => Want::Err(MALFORMED);
        req_te_chunked_then_gzip_fields: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n" => Want::Err(MALFORMED);
        req_te_gzip_chunked: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" => Want::Err(UnsupportedCoding);
        req_te_gzip_chunked_fields: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: GZIP\r\nTransfer-Encoding: chunked\r\n\r\n" => Want::Err(UnsupportedCoding);

        // Host.
        req_http11_no_host: b"GET / HTTP/1.1\r\n\r\n" => Want::Err(MALFORMED);
        req_http11_absolute_no_host: b"GET http://a/ HTTP/1.1\r\n\r\n" => Want::Err(MALFORMED);
        req_two_hosts: b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_http10_two_hosts: b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n" => Want::Err(MALFORMED);
        req_host_with_space: b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n" => Want::Err(MALFORMED);
        req_host_with_path: b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n" => Want::Err(MALFORMED);
        req_host_with_userinfo: b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n" => Want::Err(MALFORMED);

        // Request target.
        req_asterisk_without_options: b"GET * HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_connect: b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n" => Want::Err(MALFORMED);
        req_connect_origin_form: b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_authority_form_without_connect: b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_relative_target: b"GET x/y HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_other_scheme: b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_scheme_without_slashes: b"GET http:a/ HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_empty_authority: b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_userinfo: b"GET http://u:p@a/ HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_fragment: b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_non_ascii_target: b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);
        req_invalid_utf8_target: b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n" => Want::Err(MALFORMED);

        // Limits (LIMITS.max_headers is 8).
        req_too_many_headers: b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\nH: 8\r\n\r\n" => Want::Err(TooManyHeaders);
    }

    responses! {
        res_content_length: "GET" b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" => Want::Ok(R::Length(5), KEEP);
        res_content_length_zero: "GET" b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" => Want::Ok(R::Length(0), KEEP);
        res_content_length_repeated: "GET" b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n" => Want::Ok(R::Length(5), KEEP);
        res_chunked: "GET" b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" => Want::Ok(R::Chunked, KEEP);
        res_chunked_close: "POST" b"HTTP/1.1 201 Created\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n" => Want::Ok(R::Chunked, CLOSE);
        res_until_close: "GET" b"HTTP/1.1 200 OK\r\n\r\n" => Want::Ok(R::UntilClose, CLOSE);
        res_until_close_keep_alive: "GET" b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n" => Want::Ok(R::UntilClose, CLOSE);
        res_http10_length: "GET" b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n" => Want::Ok(R::Length(5), CLOSE);
        res_http10_keep_alive: "GET" b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: Keep-Alive\r\n\r\n" => Want::Ok(R::Length(5), KEEP);
        res_http10_until_close: "GET" b"HTTP/1.0 200 OK\r\n\r\n" => Want::Ok(R::UntilClose, CLOSE);
        res_close: "GET" b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n" => Want::Ok(R::Length(5), CLOSE);
        res_head: "HEAD" b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" => Want::Ok(R::NoBody, KEEP);
        res_head_chunked: "HEAD" b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" => Want::Ok(R::NoBody, KEEP);
        res_head_no_length: "HEAD" b"HTTP/1.1 200 OK\r\n\r\n" => Want::Ok(R::NoBody, KEEP);
        res_head_http10: "HEAD" b"HTTP/1.0 200 OK\r\n\r\n" => Want::Ok(R::NoBody, CLOSE);
        res_lowercase_head_is_not_head: "head" b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" => Want::Ok(R::Length(5), KEEP);
        res_100: "POST" b"HTTP/1.1 100 Continue\r\n\r\n" => Want::Ok(R::NoBody, KEEP);
        res_103: "GET" b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" => Want::Ok(R::NoBody, KEEP);
        res_199_with_length: "GET" b"HTTP/1.1 199 X\r\nContent-Length: 5\r\n\r\n" => Want::Ok(R::NoBody, KEEP);
        res_204: "DELETE" b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n" => Want::Ok(R::NoBody, KEEP);
        res_204_cl_and_te: "GET" b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" => Want::Ok(R::NoBody, KEEP);
        res_304: "GET" b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip\r\n\r\n" => Want::Ok(R::NoBody, KEEP);
        res_304_close: "GET" b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n" => Want::Ok(R::NoBody, CLOSE);
        res_205_has_length: "GET" b"HTTP/1.1 205 Reset Content\r\nContent-Length: 0\r\n\r\n" => Want::Ok(R::Length(0), KEEP);
        res_500: "GET" b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n" => Want::Ok(R::Length(2), KEEP);
        res_999: "GET" b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\n" => Want::Ok(R::Length(2), KEEP);
        res_empty_reason: "GET" b"HTTP/1.1 200\r\nContent-Length: 5\r\n\r\n" => Want::Ok(R::Length(5), KEEP);
        res_empty_reason_with_space: "GET" b"HTTP/1.1 200 \r\nContent-Length: 5\r\n\r\n" => Want::Ok(R::Length(5), KEEP);
        res_bare_lf: "GET" b"HTTP/1.1 200 OK\nContent-Length: 5\n\n" => Want::Ok(R::Length(5), KEEP);
        res_leading_empty_line: "GET" b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" => Want::Ok(R::Length(5), KEEP);

        res_version_2: "GET" b"HTTP/2 200 OK\r\n\r\n" => Want::Err(MALFORMED);
        res_version_1_2: "GET" b"HTTP/1.2 200 OK\r\n\r\n" => Want::Err(MALFORMED);
        res_version_lowercase: "GET" b"http/1.1 200 OK\r\n\r\n" => Want::Err(MALFORMED);
        res_status_099: "GET" b"HTTP/1.1 099 Low\r\n\r\n" => Want::Err(MALFORMED);
        res_status_000: "GET" b"HTTP/1.1 000 Zero\r\n\r\n" => Want::Err(MALFORMED);
        res_status_two_digits: "GET" b"HTTP/1.1 20 OK\r\n\r\n" => Want::Err(MALFORMED);
        res_status_four_digits: "GET" b"HTTP/1.1 2000 OK\r\n\r\n" => Want::Err(MALFORMED);
        res_status_letters: "GET" b"HTTP/1.1 2x0 OK\r\n\r\n" => Want::Err(MALFORMED);
        res_no_status: "GET" b"HTTP/1.1\r\n\r\n" => Want::Err(MALFORMED);
        res_ctl_in_reason: "GET" b"HTTP/1.1 200 O\x01K\r\n\r\n" => Want::Err(MALFORMED);
        res_cl_and_te: "GET" b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" => Want::Err(MALFORMED);
        res_te_gzip: "GET" b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" => Want::Err(MALFORMED);
        res_te_gzip_chunked: "GET" b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" => Want::Err(MALFORMED);
        res_te_chunked_gzip: "GET" b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n" => Want::Err(MALFORMED);
        res_te_chunked_twice: "GET" b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" => Want::Err(MALFORMED);
        res_te_http10: "GET" b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" => Want::Err(MALFORMED);
        res_cl_differ: "GET" b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n" => Want::Err(MALFORMED);
        res_cl_list: "GET" b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n" => Want::Err(MALFORMED);
        res_cl_sign: "GET" b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n" => Want::Err(MALFORMED);
        res_cl_overflow: "GET" b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n" => Want::Err(MALFORMED);
        res_obs_fold: "GET" b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n" => Want::Err(MALFORMED);
        res_space_before_colon: "GET" b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n" => Want::Err(MALFORMED);
        res_nul_in_value: "GET" b"HTTP/1.1 200 OK\r\nX-A: \x00\r\n\r\n" => Want::Err(MALFORMED);
        res_too_many_headers: "GET" b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\nH: 8\r\nI: 9\r\n\r\n" => Want::Err(TooManyHeaders);
    }

    #[test]
    fn request_targets() {
        // (method, target) → (origin-form target, authority)
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            ("GET", "/", "/", None),
            ("GET", "/a/b?c=d&e", "/a/b?c=d&e", None),
            ("GET", "//double", "//double", None),
            ("GET", "http://example.com/a?b", "/a?b", Some("example.com")),
            (
                "GET",
                "HTTP://Example.COM:8080/x",
                "/x",
                Some("Example.COM:8080"),
            ),
            ("GET", "https://a", "/", Some("a")),
            ("GET", "hTtPs://a/", "/", Some("a")),
            ("GET", "http://a?q=1", "/?q=1", Some("a")),
            ("GET", "http://a/?q=/x", "/?q=/x", Some("a")),
            ("GET", "http://[::1]:80/p", "/p", Some("[::1]:80")),
            ("GET", "http://a:/p", "/p", Some("a:")),
            ("OPTIONS", "*", "*", None),
            ("OPTIONS", "http://a", "*", Some("a")),
            ("OPTIONS", "http://a/", "/", Some("a")),
            ("OPTIONS", "http://a?x", "/?x", Some("a")),
        ];
        for (method, target, want_target, want_authority) in cases {
            let input = format!("{method} {target} HTTP/1.1\r\nHost: h\r\n\r\n");
            let (head, _) = parse_request(input.as_bytes(), &LIMITS).unwrap().unwrap();
            assert_eq!(head.method, *method);
            assert_eq!(head.target, *want_target, "{target}");
            assert_eq!(head.authority.as_deref(), *want_authority, "{target}");
        }
    }

    /// A head parsed into one reused after others, with more, fewer or other fields, is
    /// the head a fresh parse gives: nothing of an earlier request survives.
    #[test]
    fn reused_heads_equal_fresh_ones() {
        let requests: &[&[u8]] = &[
            b"GET http://a/x HTTP/1.1\r\nHost: a\r\nX-1: 1\r\nX-2: 2\r\nConnection: close\r\n\r\n",
            b"POST /p HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"PUT /q?x HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nA: a\r\nB: b\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: d\r\n\r\n",
        ];
        let mut reused = RequestHead::empty();
        for _ in 0..2 {
            for input in requests {
                let (fresh, len) = parse_request(input, &LIMITS).unwrap().unwrap();
                assert_eq!(
                    parse_request_into(input, &LIMITS, &mut reused),
                    Ok(Some(len))
                );
                assert_eq!(reused, fresh);
            }
        }
        let responses: &[(&[u8], &str)] = &[
            (
                b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nContent-Length: 5\r\n\r\n",
                "GET",
            ),
            (b"HTTP/1.0 404 Not Found\r\n\r\n", "GET"),
            (b"HTTP/1.1 204 \r\nConnection: close\r\n\r\n", "GET"),
            (
                b"HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\n\r\n",
                "HEAD",
            ),
        ];
        let mut reused = ResponseHead::empty();
        for _ in 0..2 {
            for (input, method) in responses {
                let (fresh, len) = parse_response(input, &LIMITS, method).unwrap().unwrap();
                let got = parse_response_into(input, &LIMITS, method, &mut reused);
                assert_eq!(got, Ok(Some(len)));
                assert_eq!(reused, fresh);
            }
        }
    }

    #[test]
    fn connect_has_its_own_message() {
        let got = parse_request(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", &LIMITS);
        assert_eq!(got, Err(HeadError::Malformed("CONNECT is not supported")));
    }

    #[test]
    fn expect_continue() {
        let cases: &[(&[u8], bool)] = &[
            (b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", true),
            (b"POST / HTTP/1.1\r\nHost: a\r\nexpect:  100-Continue \r\nContent-Length: 1\r\n\r\n", true),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n", false),
            (b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continuex\r\n\r\n", false),
            (b"POST / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n", false),
            (b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", false),
        ];
        for (input, want) in cases {
            let (head, _) = parse_request(input, &LIMITS).unwrap().unwrap();
            assert_eq!(
                head.expect_continue,
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn request_fields_are_kept_as_received() {
        let input =
            b"GET /p HTTP/1.1\r\nhOsT:   a  \r\nX-Empty:\r\nX-Tab:\tv\t\r\nX-Bin: \xff\r\n\r\nbody";
        let (head, n) = parse_request(input, &LIMITS).unwrap().unwrap();
        assert_eq!(n, input.len() - 4);
        assert_eq!(head.version, Version::Http11);
        let fields: Vec<(&str, &[u8])> = head
            .headers
            .iter()
            .map(|h| (&h.name[..], &h.value[..]))
            .collect();
        assert_eq!(
            fields,
            [
                ("hOsT", &b"a"[..]),
                ("X-Empty", b""),
                ("X-Tab", b"v"),
                ("X-Bin", b"\xff")
            ]
        );
    }

    #[test]
    fn response_fields_and_reason() {
        let input = b"HTTP/1.0 404 Not  Found\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nabc";
        let (head, n) = parse_response(input, &LIMITS, "GET").unwrap().unwrap();
        assert_eq!(n, input.len() - 3);
        assert_eq!(
            (head.version, head.status, &head.reason[..]),
            (Version::Http10, 404, "Not  Found")
        );
        assert_eq!(head.headers.len(), 2);
        assert_eq!(
            head.headers[0],
            Header {
                name: "X-A".into(),
                value: b"1".to_vec()
            }
        );
    }

    #[test]
    fn pipelined_requests_parse_one_after_another() {
        let input = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut rest = &input[..];
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let (head, n) = parse_request(rest, &LIMITS).unwrap().unwrap();
            let body = match head.framing {
                BodyFraming::Length(len) => len as usize,
                _ => 0,
            };
            seen.push(head.target);
            rest = &rest[n + body..];
        }
        assert_eq!(seen, ["/1", "/2", "/3"]);
    }

    /// A head of `len` bytes: a request line, Host, and one padding field.
    fn request_of_len(len: usize) -> Vec<u8> {
        let fixed = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: \r\n\r\n".len();
        let pad = "p".repeat(len - fixed);
        format!("GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {pad}\r\n\r\n").into_bytes()
    }

    #[test]
    fn too_large_at_the_limit() {
        let limits = HeadLimits {
            max_head_bytes: 100,
            max_headers: 8,
        };
        let exact = request_of_len(100);
        assert_eq!(
            parse_request(&exact, &limits).map(|o| o.map(|(_, n)| n)),
            Ok(Some(100))
        );
        // A body (or the next request) after a head of exactly the limit is fine.
        let with_body = [&exact[..], &[b'x'; 500]].concat();
        assert_eq!(
            parse_request(&with_body, &limits).map(|o| o.map(|(_, n)| n)),
            Ok(Some(100))
        );
        // One byte more: too large once 100 bytes have arrived, complete or not.
        let over = request_of_len(101);
        assert_eq!(parse_request(&over, &limits), Err(HeadError::TooLarge));
        assert_eq!(
            parse_request(&over[..100], &limits),
            Err(HeadError::TooLarge)
        );
        assert_eq!(parse_request(&over[..99], &limits), Ok(None));
        // The same for responses.
        let response = format!("HTTP/1.1 200 OK\r\nX-Pad: {}\r\n\r\n", "p".repeat(72));
        assert_eq!(response.len(), 100);
        let got = parse_response(response.as_bytes(), &limits, "GET")
            .map(|o| o.map(|(h, n)| (h.framing, n)));
        assert_eq!(got, Ok(Some((ResponseFraming::UntilClose, 100))));
        let longer = response.replace("X-Pad: ", "X-Pad: p");
        assert_eq!(
            parse_response(longer.as_bytes(), &limits, "GET"),
            Err(HeadError::TooLarge)
        );
        assert_eq!(
            parse_response(&longer.as_bytes()[..99], &limits, "GET"),
            Ok(None)
        );
    }

    #[test]
    fn header_count_limit() {
        let head = |fields: usize| {
            let extra: String = (0..fields).map(|i| format!("X-{i}: v\r\n")).collect();
            format!("GET / HTTP/1.1\r\nHost: a\r\n{extra}\r\n").into_bytes()
        };
        let limits = HeadLimits {
            max_head_bytes: 1 << 16,
            max_headers: 100,
        };
        assert!(parse_request(&head(99), &limits).unwrap().is_some());
        assert_eq!(
            parse_request(&head(100), &limits),
            Err(HeadError::TooManyHeaders)
        );
        // The slot count follows the window, never the configured maximum.
        let huge = HeadLimits {
            max_head_bytes: 64,
            max_headers: usize::MAX,
        };
        assert!(parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &huge)
            .unwrap()
            .is_some());
        // Fields packed as tightly as possible still fit their slots.
        let dense = [&b"GET / HTTP/1.1\nHost:\n"[..], &b"a:\n".repeat(30), b"\n"].concat();
        let limits = HeadLimits {
            max_head_bytes: dense.len(),
            max_headers: usize::MAX,
        };
        assert_eq!(
            parse_request(&dense, &limits)
                .unwrap()
                .unwrap()
                .0
                .headers
                .len(),
            31
        );
    }

    #[test]
    fn empty_and_tiny_buffers() {
        assert_eq!(parse_request(b"", &LIMITS), Ok(None));
        assert_eq!(parse_request(b"\r\n", &LIMITS), Ok(None));
        assert_eq!(parse_response(b"", &LIMITS, "GET"), Ok(None));
        let zero = HeadLimits {
            max_head_bytes: 0,
            max_headers: 0,
        };
        assert_eq!(parse_request(b"GET", &zero), Err(HeadError::TooLarge));
    }
}
