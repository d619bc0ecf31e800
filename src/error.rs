//! The request-path failures and the one mapping from them to SPEC §6 responses, SPEC
//! §7 error-log codes and the /metrics counters. No other file spells a status line or
//! a log code.
//!
//! Layered, as pingora-error is: each stage keeps its own error with what it knows
//! (`ClientError` reading the request, `AttemptError` one attempt, `relay::RelayEnd`
//! the body) and names its [`Failure`] kind; [`Failure::disposition`] is the one table
//! that says, for every kind, which side failed, whether a retry is safe, the response
//! owed to the client, the error-log code and whether it counts against the endpoint.

use std::fmt;
use std::io;

use crate::http::HeadError;

/// A response ServiceQ writes itself (SPEC §6). Each has a status, a reason phrase and
/// the `sq_msg` of its JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `CONCURRENCY_PEAK` requests already held.
    Flooded,
    /// All attempts failed; the request went to the deferred queue.
    Buffered,
    /// Queued up front without an attempt.
    Queued,
    /// All attempts failed; the last could not connect or lost the connection.
    Unavailable,
    /// All attempts failed; the last timed out.
    GatewayTimeout,
    /// All attempts failed; the last got a malformed response.
    BadGateway,
    BadRequest,
    HeaderTooLarge,
    BodyTooLarge,
    RequestTimeout,
    VersionNotSupported,
    NotImplemented,
}

impl Reply {
    /// Status code, reason phrase and `sq_msg` — the SPEC §6 table, in one place.
    pub fn parts(self) -> (u16, &'static str, &'static str) {
        match self {
            Reply::Flooded => (429, "Too Many Requests", "Request Discarded"),
            Reply::Buffered => (503, "Service Unavailable", "Request Buffered"),
            Reply::Queued => (202, "Accepted", "Request Queued"),
            Reply::Unavailable => (503, "Service Unavailable", "Service Unavailable"),
            Reply::GatewayTimeout => (504, "Gateway Timeout", "Gateway Timeout"),
            Reply::BadGateway => (502, "Bad Gateway", "Bad Gateway"),
            Reply::BadRequest => (400, "Bad Request", "Bad Request"),
            Reply::HeaderTooLarge => (
                431,
                "Request Header Fields Too Large",
                "Request Header Fields Too Large",
            ),
            Reply::BodyTooLarge => (413, "Content Too Large", "Content Too Large"),
            Reply::RequestTimeout => (408, "Request Timeout", "Request Timeout"),
            Reply::VersionNotSupported => (
                505,
                "HTTP Version Not Supported",
                "HTTP Version Not Supported",
            ),
            Reply::NotImplemented => (501, "Not Implemented", "Not Implemented"),
        }
    }

    /// The JSON body: `{"sq_msg":"…"}`.
    pub fn body(self) -> String {
        format!("{{\"sq_msg\":\"{}\"}}", self.parts().2)
    }

    /// Replies to a broken request end the connection: after a framing error the
    /// stream cannot be re-synchronised (SPEC §3), and after 408/413 the rest of the
    /// request is unread.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Reply::BadRequest
                | Reply::HeaderTooLarge
                | Reply::BodyTooLarge
                | Reply::RequestTimeout
                | Reply::VersionNotSupported
                | Reply::NotImplemented
        )
    }
}

/// Why a client's request was refused before any upstream was tried.
#[derive(Debug)]
pub enum ClientError {
    /// The head or body broke HTTP/1.1 syntax or framing.
    Malformed(&'static str),
    HeadTooLarge,
    BodyTooLarge,
    HeadTimeout,
    /// The body did not arrive whole within CLIENT_BODY_TIMEOUT.
    BodyTimeout,
    UnsupportedVersion,
    UnsupportedCoding,
    /// The client went away or its socket failed: nothing can be answered.
    Gone(io::Error),
    /// The body could not be kept (its temporary file in CLIENT_BODY_TEMP_DIR failed):
    /// ServiceQ's side, answered 503 and logged on stderr.
    BodyStore(io::Error),
}

impl ClientError {
    pub fn failure(&self) -> Failure {
        match self {
            ClientError::Malformed(_) => Failure::Malformed,
            ClientError::HeadTooLarge => Failure::HeadTooLarge,
            ClientError::BodyTooLarge => Failure::BodyTooLarge,
            ClientError::HeadTimeout | ClientError::BodyTimeout => Failure::ClientTimeout,
            ClientError::UnsupportedVersion => Failure::UnsupportedVersion,
            ClientError::UnsupportedCoding => Failure::UnsupportedCoding,
            ClientError::Gone(_) => Failure::ClientGone,
            ClientError::BodyStore(_) => Failure::BodyStore,
        }
    }

    /// The response owed to the client, if it can still receive one.
    pub fn reply(&self) -> Option<Reply> {
        self.failure().disposition().reply
    }
}

impl From<HeadError> for ClientError {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::TooLarge | HeadError::TooManyHeaders => ClientError::HeadTooLarge,
            HeadError::Malformed(why) => ClientError::Malformed(why),
            HeadError::UnsupportedVersion => ClientError::UnsupportedVersion,
            HeadError::UnsupportedCoding => ClientError::UnsupportedCoding,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Malformed(why) => write!(f, "malformed request: {why}"),
            ClientError::HeadTooLarge => f.write_str("request head too large"),
            ClientError::BodyTooLarge => f.write_str("request body too large"),
            ClientError::HeadTimeout => f.write_str("request head not received in time"),
            ClientError::BodyTimeout => f.write_str("request body not received in time"),
            ClientError::UnsupportedVersion => f.write_str("unsupported HTTP version"),
            ClientError::UnsupportedCoding => f.write_str("unsupported transfer coding"),
            ClientError::Gone(e) => write!(f, "client connection lost: {e}"),
            ClientError::BodyStore(e) => write!(f, "cannot keep the request body: {e}"),
        }
    }
}

/// Why one attempt on an endpoint failed (SPEC §4). Every variant counts against the
/// endpoint and may be retried elsewhere: no response byte reached the client.
#[derive(Debug)]
pub enum AttemptError {
    /// Refused, unreachable, DNS failure, or a failed TLS handshake.
    Connect(io::Error),
    /// Connecting or a wait for response data took longer than the timeout.
    Timeout,
    /// The connection broke before a complete response head.
    NoResponse(io::Error),
    /// The response head was malformed or its framing ambiguous.
    BadResponse(&'static str),
}

impl AttemptError {
    pub fn failure(&self) -> Failure {
        match self {
            AttemptError::Connect(_) => Failure::UpstreamDown,
            AttemptError::Timeout => Failure::UpstreamTimedOut,
            AttemptError::NoResponse(_) => Failure::UpstreamNoResponse,
            AttemptError::BadResponse(_) => Failure::UpstreamBadResponse,
        }
    }

    /// The SPEC §7 log code for this failure.
    pub fn log_code(&self) -> LogCode {
        // Every endpoint failure has one (the table's test checks it).
        let d = self.failure().disposition();
        d.log.unwrap_or(LogCode::UpstreamNoResponse)
    }

    /// The response when this was the last attempt and the request is not queued.
    pub fn reply(&self) -> Reply {
        let d = self.failure().disposition();
        d.reply.unwrap_or(Reply::Unavailable)
    }

    /// Classify a socket error met while waiting for the response head.
    pub fn from_read(e: io::Error) -> Self {
        if is_timeout(&e) {
            AttemptError::Timeout
        } else {
            AttemptError::NoResponse(e)
        }
    }

    /// Classify a socket error met while connecting.
    pub fn from_connect(e: io::Error) -> Self {
        if is_timeout(&e) {
            AttemptError::Timeout
        } else {
            AttemptError::Connect(e)
        }
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Connect(e) => write!(f, "connect failed: {e}"),
            AttemptError::Timeout => f.write_str("timed out"),
            AttemptError::NoResponse(e) => write!(f, "no response: {e}"),
            AttemptError::BadResponse(why) => write!(f, "bad response: {why}"),
        }
    }
}

/// Which side of the gateway a failure is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: its request broke the rules, was too slow, or it went away.
    Client,
    /// An endpoint: it could not be reached, was too slow, or answered badly.
    Endpoint,
    /// ServiceQ itself: no capacity left, or its own storage failed.
    Internal,
}

/// Whether another endpoint may be tried after a failure (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not retried: no endpoint was involved, or the response is already under way to
    /// the client.
    Never,
    /// The request never reached the endpoint: any request may go to another.
    NotSent,
    /// The endpoint may have received the request, but nothing of a response reached
    /// the client: retried elsewhere, except an upgrade (its endpoint may have switched).
    MaybeSent,
}

/// Every kind of request-path failure. The concrete errors (`ClientError`,
/// `AttemptError`, `relay::RelayEnd::UpstreamBroke`) carry the details for the logs;
/// [`Failure::disposition`] maps each kind to what ServiceQ does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The request head or body broke HTTP/1.1 syntax or framing.
    Malformed,
    HeadTooLarge,
    BodyTooLarge,
    /// The head or the body did not arrive in time.
    ClientTimeout,
    UnsupportedVersion,
    UnsupportedCoding,
    /// The client went away (reading its request, or writing its response).
    ClientGone,
    /// `CONCURRENCY_PEAK` requests already held.
    Flooded,
    /// The request body's temporary file (CLIENT_BODY_TEMP_DIR) failed.
    BodyStore,
    /// Connecting failed: refused, unreachable, DNS, TLS handshake.
    UpstreamDown,
    /// Connecting or a wait for the response head exceeded the timeout.
    UpstreamTimedOut,
    /// The connection broke before a complete response head.
    UpstreamNoResponse,
    /// The response head was malformed or its framing ambiguous.
    UpstreamBadResponse,
    /// After the response head went to the client, the endpoint closed early, failed,
    /// timed out or framed the body badly: the client's response is truncated.
    UpstreamBrokeOff,
    /// The shared queue's engine could not confirm a push (or another call): no
    /// connection to the primary, no answer in time, an error reply, too few replicas
    /// confirmed, a reply not understood, an unusable URL or option
    /// (`queue::redis::RedisQueueError`).
    QueueEngineUnavailable,
    QueueEngineTimedOut,
    QueueEngineRejected,
    QueueEngineUnreplicated,
    QueueEngineBadReply,
    QueueEngineMisconfigured,
    /// The shared queue is at DEFERRED_Q_MAX_LEN.
    QueueFull,
}

/// What ServiceQ does about a [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disposition {
    pub side: Side,
    pub retry: Retry,
    /// The generated response owed to the client (its status and `sq_msg` are
    /// [`Reply::parts`]; `serviceq_replies_total` counts it when it is rendered). For an
    /// endpoint failure before the response, it is the answer once every attempt failed
    /// and the request is not queued. `None`: the client cannot receive one, or (the
    /// queue failed to take a request) the answer the caller owes stands: what the
    /// client would have got with the queue off.
    pub reply: Option<Reply>,
    /// The SPEC §7 error-log line, written against the endpoint (or the listener).
    pub log: Option<LogCode>,
    /// Bumps the endpoint's error count (`balancer.rs` steers away from it) and its
    /// `serviceq_upstream_failures_total{code=<log name>}`.
    pub counts_against_endpoint: bool,
}

impl Failure {
    /// The one mapping from a failure to its side, retry rule, response, log code and
    /// counters (SPEC §4, §6, §7).
    pub fn disposition(self) -> Disposition {
        use Failure as F;
        // ServiceQ's own storage could not take the request: logged (SPEC §7 additions
        // 801, 802) against the queue's URL, never retried, and the client's answer is
        // the one it would have had with the queue off.
        let queue = |code| (Side::Internal, Retry::Never, None, Some(code));
        let (side, retry, reply, log) = match self {
            F::Malformed => (Side::Client, Retry::Never, Some(Reply::BadRequest), None),
            F::HeadTooLarge => (
                Side::Client,
                Retry::Never,
                Some(Reply::HeaderTooLarge),
                None,
            ),
            F::BodyTooLarge => (Side::Client, Retry::Never, Some(Reply::BodyTooLarge), None),
            F::ClientTimeout => (
                Side::Client,
                Retry::Never,
                Some(Reply::RequestTimeout),
                None,
            ),
            F::UnsupportedVersion => (
                Side::Client,
                Retry::Never,
                Some(Reply::VersionNotSupported),
                None,
            ),
            F::UnsupportedCoding => (
                Side::Client,
                Retry::Never,
                Some(Reply::NotImplemented),
                None,
            ),
            F::ClientGone => (Side::Client, Retry::Never, None, None),
            F::Flooded => (
                Side::Internal,
                Retry::Never,
                Some(Reply::Flooded),
                Some(LogCode::Flooded),
            ),
            // Logged on stderr with the directory; the error log is for endpoints.
            F::BodyStore => (Side::Internal, Retry::Never, Some(Reply::Unavailable), None),
            F::UpstreamDown => (
                Side::Endpoint,
                Retry::NotSent,
                Some(Reply::Unavailable),
                Some(LogCode::UpstreamDown),
            ),
            F::UpstreamTimedOut => (
                Side::Endpoint,
                Retry::MaybeSent,
                Some(Reply::GatewayTimeout),
                Some(LogCode::UpstreamTimedOut),
            ),
            F::UpstreamNoResponse => (
                Side::Endpoint,
                Retry::MaybeSent,
                Some(Reply::Unavailable),
                Some(LogCode::UpstreamNoResponse),
            ),
            F::UpstreamBadResponse => (
                Side::Endpoint,
                Retry::MaybeSent,
                Some(Reply::BadGateway),
                Some(LogCode::UpstreamBadResponse),
            ),
            // The head and part of the body are the client's already: nothing can be
            // answered or retried; the connection is dropped.
            F::UpstreamBrokeOff => (
                Side::Endpoint,
                Retry::Never,
                None,
                Some(LogCode::UpstreamBrokeOff),
            ),
            F::QueueEngineUnavailable => queue(LogCode::QueueEngineUnavailable),
            F::QueueEngineTimedOut => queue(LogCode::QueueEngineTimedOut),
            F::QueueEngineRejected => queue(LogCode::QueueEngineRejected),
            F::QueueEngineUnreplicated => queue(LogCode::QueueEngineUnreplicated),
            F::QueueEngineBadReply => queue(LogCode::QueueEngineBadReply),
            F::QueueEngineMisconfigured => queue(LogCode::QueueEngineMisconfigured),
            F::QueueFull => queue(LogCode::QueueFull),
        };
        Disposition {
            side,
            retry,
            reply,
            log,
            counts_against_endpoint: side == Side::Endpoint,
        }
    }
}

/// The 429 for a client over CONCURRENCY_PEAK (SPEC §6), as the table has it for
/// [`Failure::Flooded`]: the reply to render and the error-log code to write against
/// the listener.
pub fn flood_rejection() -> (Reply, LogCode) {
    let d = Failure::Flooded.disposition();
    // Both are set (the table's test checks it).
    (
        d.reply.unwrap_or(Reply::Flooded),
        d.log.unwrap_or(LogCode::Flooded),
    )
}

/// Blocking sockets report an expired `SO_RCVTIMEO` as `WouldBlock` on Unix.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// The SPEC §7 error-log codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogCode {
    Flooded,
    /// An admin API request that changes the queue came without the right token.
    AdminUnauthorized,
    UpstreamDown,
    UpstreamTimedOut,
    UpstreamNoResponse,
    UpstreamBadResponse,
    UpstreamBrokeOff,
    /// The shared queue's engine could not confirm a push (SPEC §7 addition, 801).
    QueueEngineUnavailable,
    QueueEngineTimedOut,
    QueueEngineRejected,
    QueueEngineUnreplicated,
    QueueEngineBadReply,
    QueueEngineMisconfigured,
    /// The shared queue is at DEFERRED_Q_MAX_LEN (802).
    QueueFull,
}

/// The codes counted per endpoint (`upstream::Upstream::failures`, in this order) and
/// exported as `serviceq_upstream_failures_total{code}`.
pub const ENDPOINT_FAILURES: [LogCode; 5] = [
    LogCode::UpstreamDown,
    LogCode::UpstreamTimedOut,
    LogCode::UpstreamNoResponse,
    LogCode::UpstreamBadResponse,
    LogCode::UpstreamBrokeOff,
];

impl LogCode {
    pub fn number(self) -> u16 {
        match self {
            LogCode::Flooded => 601,
            LogCode::AdminUnauthorized => 602,
            LogCode::UpstreamDown => 701,
            LogCode::UpstreamTimedOut
            | LogCode::UpstreamNoResponse
            | LogCode::UpstreamBadResponse
            | LogCode::UpstreamBrokeOff => 702,
            LogCode::QueueEngineUnavailable
            | LogCode::QueueEngineTimedOut
            | LogCode::QueueEngineRejected
            | LogCode::QueueEngineUnreplicated
            | LogCode::QueueEngineBadReply
            | LogCode::QueueEngineMisconfigured => 801,
            LogCode::QueueFull => 802,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LogCode::Flooded => "SERVICEQ_FLOODED",
            LogCode::AdminUnauthorized => "ADMIN_UNAUTHORIZED",
            LogCode::UpstreamDown => "UPSTREAM_DOWN",
            LogCode::UpstreamTimedOut => "UPSTREAM_TIMED_OUT",
            LogCode::UpstreamNoResponse => "UPSTREAM_NO_RESPONSE",
            LogCode::UpstreamBadResponse => "UPSTREAM_BAD_RESPONSE",
            LogCode::UpstreamBrokeOff => "UPSTREAM_BROKE_OFF",
            LogCode::QueueEngineUnavailable => "QUEUE_ENGINE_UNAVAILABLE",
            LogCode::QueueEngineTimedOut => "QUEUE_ENGINE_TIMED_OUT",
            LogCode::QueueEngineRejected => "QUEUE_ENGINE_REJECTED",
            LogCode::QueueEngineUnreplicated => "QUEUE_ENGINE_UNREPLICATED",
            LogCode::QueueEngineBadReply => "QUEUE_ENGINE_BAD_REPLY",
            LogCode::QueueEngineMisconfigured => "QUEUE_ENGINE_MISCONFIGURED",
            LogCode::QueueFull => "QUEUE_FULL",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every failure but the shared queue's ([`QUEUE`]).
    const REQUEST: [Failure; 14] = [
        Failure::Malformed,
        Failure::HeadTooLarge,
        Failure::BodyTooLarge,
        Failure::ClientTimeout,
        Failure::UnsupportedVersion,
        Failure::UnsupportedCoding,
        Failure::ClientGone,
        Failure::Flooded,
        Failure::BodyStore,
        Failure::UpstreamDown,
        Failure::UpstreamTimedOut,
        Failure::UpstreamNoResponse,
        Failure::UpstreamBadResponse,
        Failure::UpstreamBrokeOff,
    ];

    const QUEUE: [Failure; 7] = [
        Failure::QueueEngineUnavailable,
        Failure::QueueEngineTimedOut,
        Failure::QueueEngineRejected,
        Failure::QueueEngineUnreplicated,
        Failure::QueueEngineBadReply,
        Failure::QueueEngineMisconfigured,
        Failure::QueueFull,
    ];

    /// The table's invariants: endpoint failures, and only they, are logged against
    /// and counted for an endpoint, with a code that has its own counter; only those
    /// before the response may be retried; a client that is gone gets no reply.
    #[test]
    fn every_failure_has_a_coherent_disposition() {
        for f in REQUEST.into_iter().chain(QUEUE) {
            let d = f.disposition();
            let endpoint = d.side == Side::Endpoint;
            assert_eq!(d.counts_against_endpoint, endpoint, "{f:?}");
            if endpoint {
                let code = d.log.unwrap_or_else(|| panic!("{f:?} has no log code"));
                assert!(
                    ENDPOINT_FAILURES.contains(&code),
                    "{f:?}: {code:?} not counted"
                );
            } else {
                assert_ne!(d.retry, Retry::MaybeSent, "{f:?}");
                assert_ne!(d.retry, Retry::NotSent, "{f:?}");
            }
            if d.reply.is_none() {
                assert_eq!(d.retry, Retry::Never, "{f:?}");
            }
        }
        let gone = Failure::ClientGone.disposition();
        assert_eq!(
            (gone.side, gone.reply, gone.log),
            (Side::Client, None, None)
        );
        let flood = Failure::Flooded.disposition();
        assert_eq!(
            (flood.side, flood.reply),
            (Side::Internal, Some(Reply::Flooded))
        );
        assert_eq!(flood.log.map(LogCode::number), Some(601));
    }

    /// A push the shared queue could not take: ServiceQ's side, never retried or
    /// counted against an endpoint, the caller's answer stands, and a log code of its
    /// own — 801 for each engine cause, 802 at the cap.
    #[test]
    fn queue_failures_are_internal_and_logged_801_or_802() {
        let mut names = std::collections::HashSet::new();
        for f in QUEUE {
            let d = f.disposition();
            assert_eq!(
                (d.side, d.retry, d.reply, d.counts_against_endpoint),
                (Side::Internal, Retry::Never, None, false),
                "{f:?}"
            );
            let code = d.log.unwrap_or_else(|| panic!("{f:?} has no log code"));
            let want = if f == Failure::QueueFull { 802 } else { 801 };
            assert_eq!(code.number(), want, "{f:?}");
            assert!(names.insert(code.name()), "{f:?}: {} twice", code.name());
        }
        let full = Failure::QueueFull.disposition().log.map(LogCode::name);
        assert_eq!(full, Some("QUEUE_FULL"));
    }

    /// The acceptor's 429: the reply and the 601 line the table gives Flooded.
    #[test]
    fn a_flooded_client_gets_the_429_and_a_601_line() {
        let (reply, code) = flood_rejection();
        assert_eq!(reply, Reply::Flooded);
        assert_eq!(reply.parts().0, 429);
        assert_eq!((code.number(), code.name()), (601, "SERVICEQ_FLOODED"));
    }

    /// An endpoint that dies mid-body: nothing can be answered or retried, but the
    /// failure is a 702 line and a count against the endpoint (README "Error log").
    #[test]
    fn a_body_cut_short_is_logged_and_counted_but_not_retried() {
        let d = Failure::UpstreamBrokeOff.disposition();
        assert_eq!(
            (d.side, d.retry, d.reply),
            (Side::Endpoint, Retry::Never, None)
        );
        let code = d.log.expect("a log code");
        assert_eq!((code.number(), code.name()), (702, "UPSTREAM_BROKE_OFF"));
        assert!(d.counts_against_endpoint);
    }

    #[test]
    fn only_a_refused_connection_never_reached_the_endpoint() {
        let refused = AttemptError::Connect(io::ErrorKind::ConnectionRefused.into());
        assert_eq!(refused.failure().disposition().retry, Retry::NotSent);
        for sent in [
            AttemptError::Timeout,
            AttemptError::NoResponse(io::ErrorKind::ConnectionReset.into()),
            AttemptError::BadResponse("x"),
        ] {
            assert_eq!(
                sent.failure().disposition().retry,
                Retry::MaybeSent,
                "{sent}"
            );
        }
    }

    #[test]
    fn every_client_error_maps_to_its_reply() {
        let table = [
            (ClientError::Malformed("x"), Some(Reply::BadRequest)),
            (ClientError::HeadTimeout, Some(Reply::RequestTimeout)),
            (ClientError::BodyTimeout, Some(Reply::RequestTimeout)),
            (ClientError::UnsupportedCoding, Some(Reply::NotImplemented)),
            (
                ClientError::BodyStore(io::ErrorKind::Other.into()),
                Some(Reply::Unavailable),
            ),
            (ClientError::Gone(io::ErrorKind::UnexpectedEof.into()), None),
        ];
        for (e, reply) in table {
            assert_eq!(e.reply(), reply, "{e}");
        }
    }

    #[test]
    fn every_reply_has_its_spec_status_and_message() {
        let table = [
            (Reply::Flooded, 429, "Request Discarded"),
            (Reply::Buffered, 503, "Request Buffered"),
            (Reply::Queued, 202, "Request Queued"),
            (Reply::Unavailable, 503, "Service Unavailable"),
            (Reply::GatewayTimeout, 504, "Gateway Timeout"),
            (Reply::BadGateway, 502, "Bad Gateway"),
            (Reply::BadRequest, 400, "Bad Request"),
            (
                Reply::HeaderTooLarge,
                431,
                "Request Header Fields Too Large",
            ),
            (Reply::BodyTooLarge, 413, "Content Too Large"),
            (Reply::RequestTimeout, 408, "Request Timeout"),
        ];
        for (reply, status, msg) in table {
            let (s, _, m) = reply.parts();
            assert_eq!((s, m), (status, msg), "{reply:?}");
        }
    }

    #[test]
    fn attempt_failures_map_to_codes_and_replies() {
        let refused = AttemptError::Connect(io::ErrorKind::ConnectionRefused.into());
        assert_eq!(refused.log_code().number(), 701);
        assert_eq!(refused.reply(), Reply::Unavailable);
        assert_eq!(
            AttemptError::Timeout.log_code().name(),
            "UPSTREAM_TIMED_OUT"
        );
        assert_eq!(AttemptError::Timeout.reply(), Reply::GatewayTimeout);
        let bad = AttemptError::BadResponse("x");
        assert_eq!(
            (bad.log_code().number(), bad.reply()),
            (702, Reply::BadGateway)
        );
        let lost = AttemptError::from_read(io::ErrorKind::ConnectionReset.into());
        assert_eq!(lost.log_code(), LogCode::UpstreamNoResponse);
        let slow = AttemptError::from_read(io::ErrorKind::WouldBlock.into());
        assert_eq!(slow.log_code(), LogCode::UpstreamTimedOut);
    }
}
