//! The request-path failures and the one mapping from them to SPEC §6 responses and
//! SPEC §7 error-log codes. No other file spells a status line or a log code.

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
    /// The response owed to the client, if it can still receive one.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            ClientError::Malformed(_) => Some(Reply::BadRequest),
            ClientError::HeadTooLarge => Some(Reply::HeaderTooLarge),
            ClientError::BodyTooLarge => Some(Reply::BodyTooLarge),
            ClientError::HeadTimeout | ClientError::BodyTimeout => Some(Reply::RequestTimeout),
            ClientError::UnsupportedVersion => Some(Reply::VersionNotSupported),
            ClientError::UnsupportedCoding => Some(Reply::NotImplemented),
            ClientError::Gone(_) => None,
            ClientError::BodyStore(_) => Some(Reply::Unavailable),
        }
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
/// endpoint and is safe to retry elsewhere: no response byte reached the client.
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
    /// The SPEC §7 log code for this failure.
    pub fn log_code(&self) -> LogCode {
        match self {
            AttemptError::Connect(_) => LogCode::UpstreamDown,
            AttemptError::Timeout => LogCode::UpstreamTimedOut,
            AttemptError::NoResponse(_) => LogCode::UpstreamNoResponse,
            AttemptError::BadResponse(_) => LogCode::UpstreamBadResponse,
        }
    }

    /// The response when this was the last attempt and the request is not queued.
    pub fn reply(&self) -> Reply {
        match self {
            AttemptError::Connect(_) | AttemptError::NoResponse(_) => Reply::Unavailable,
            AttemptError::Timeout => Reply::GatewayTimeout,
            AttemptError::BadResponse(_) => Reply::BadGateway,
        }
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

impl LogCode {
    pub fn number(self) -> u16 {
        match self {
            LogCode::Flooded => 601,
            LogCode::AdminUnauthorized => 602,
            LogCode::UpstreamDown => 701,
            LogCode::UpstreamTimedOut
            | LogCode::UpstreamNoResponse
            | LogCode::UpstreamBadResponse => 702,
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
