//! The ways a Redis queue call can fail, and the error-log code each maps to.
//!
//! Every variant but [`RedisQueueError::Config`] means "the engine could not confirm":
//! the caller must not tell a client "Buffered", and answers as if the queue were off.

use std::fmt;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::{Failure, LogCode};

/// Why a call on the shared queue did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisQueueError {
    /// The backend URL or an option is unusable (found before any I/O).
    Config(String),
    /// No connection to the primary: refused, reset, no primary named by any sentinel.
    Unavailable(String),
    /// The call's deadline (the engine timeout) passed before the engine answered.
    TimedOut,
    /// The engine answered with an error: out of memory under `noeviction`
    /// (`OOM`), a demoted primary (`READONLY`), `NOREPLICAS` from
    /// `min-replicas-to-write`, a refused login or ACL (`NOPERM`), …
    Rejected(String),
    /// `WAIT` confirmed fewer replicas than `DEFERRED_Q_REDIS_REPLICAS` asks for.
    Unreplicated { confirmed: usize, wanted: usize },
    /// The shared cap: the stream already holds `cap` entries.
    Full { cap: usize },
    /// A reply of a shape our scripts never produce (another program wrote our keys,
    /// or a proxy in between mangled it).
    BadReply(&'static str),
}

impl RedisQueueError {
    /// Its kind in the request-path failure table (`crate::error`).
    pub fn failure(&self) -> Failure {
        match self {
            RedisQueueError::Config(_) => Failure::QueueEngineMisconfigured,
            RedisQueueError::Unavailable(_) => Failure::QueueEngineUnavailable,
            RedisQueueError::TimedOut => Failure::QueueEngineTimedOut,
            RedisQueueError::Rejected(_) => Failure::QueueEngineRejected,
            RedisQueueError::Unreplicated { .. } => Failure::QueueEngineUnreplicated,
            RedisQueueError::BadReply(_) => Failure::QueueEngineBadReply,
            RedisQueueError::Full { .. } => Failure::QueueFull,
        }
    }

    /// The error-log code the failure table gives it: 801 (one per cause, as 702 is
    /// for upstreams) when the engine could not confirm, 802 at the shared cap.
    pub fn log_code(&self) -> LogCode {
        // Every queue failure has one (the table's test checks it).
        let d = self.failure().disposition();
        d.log.unwrap_or(LogCode::QueueEngineUnavailable)
    }

    /// Whether the connection that met this error can be used again. A timed-out or
    /// broken connection may still deliver a late reply, which would be read as the
    /// answer to the next command, so it is dropped.
    pub(crate) fn connection_reusable(&self) -> bool {
        matches!(
            self,
            RedisQueueError::Rejected(_)
                | RedisQueueError::Unreplicated { .. }
                | RedisQueueError::Full { .. }
        )
    }
}

/// Sorts a client-library error into our variants. Pure: depends on the error only.
pub fn classify(e: &RedisError) -> RedisQueueError {
    if e.is_timeout() {
        return RedisQueueError::TimedOut;
    }
    match e.kind() {
        ErrorKind::Io => RedisQueueError::Unavailable(e.to_string()),
        ErrorKind::InvalidClientConfig => RedisQueueError::Config(e.to_string()),
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
            RedisQueueError::BadReply("reply of an unexpected type")
        }
        ErrorKind::MasterNameNotFoundBySentinel
        | ErrorKind::NoValidReplicasFoundBySentinel
        | ErrorKind::EmptySentinelList
        | ErrorKind::Server(ServerErrorKind::BusyLoading)
        | ErrorKind::Server(ServerErrorKind::MasterDown) => {
            RedisQueueError::Unavailable(e.to_string())
        }
        _ => RedisQueueError::Rejected(e.to_string()),
    }
}

/// Whether this error says the node we write to is no longer the primary (a failover
/// demoted it), so the primary must be looked up again.
pub fn demoted(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

impl fmt::Display for RedisQueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisQueueError::Config(why) => write!(f, "queue engine misconfigured: {why}"),
            RedisQueueError::Unavailable(why) => write!(f, "queue engine unavailable: {why}"),
            RedisQueueError::TimedOut => f.write_str("queue engine did not answer in time"),
            RedisQueueError::Rejected(why) => write!(f, "queue engine refused: {why}"),
            RedisQueueError::Unreplicated { confirmed, wanted } => {
                write!(f, "queue engine confirmed {confirmed} of {wanted} replicas")
            }
            RedisQueueError::Full { cap } => write!(f, "shared queue full ({cap} entries)"),
            RedisQueueError::BadReply(why) => write!(f, "queue engine reply not understood: {why}"),
        }
    }
}

impl std::error::Error for RedisQueueError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn client_errors_sort_into_variants() {
        let refused = RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(matches!(
            classify(&refused),
            RedisQueueError::Unavailable(_)
        ));
        let slow = RedisError::from(io::Error::from(io::ErrorKind::WouldBlock));
        assert_eq!(classify(&slow), RedisQueueError::TimedOut);
        let timed = RedisError::from(io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(classify(&timed), RedisQueueError::TimedOut);
        let ro = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert!(demoted(&ro));
        assert!(matches!(classify(&ro), RedisQueueError::Rejected(_)));
        let oom = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "OOM command not allowed",
        ));
        assert!(!demoted(&oom));
        assert!(matches!(classify(&oom), RedisQueueError::Rejected(_)));
        let loading = RedisError::from((
            ErrorKind::Server(ServerErrorKind::BusyLoading),
            "Redis is loading the dataset in memory",
        ));
        assert!(matches!(
            classify(&loading),
            RedisQueueError::Unavailable(_)
        ));
    }

    #[test]
    fn each_cause_has_a_code_name_of_its_own() {
        let all = [
            RedisQueueError::Config("x".into()),
            RedisQueueError::Unavailable("x".into()),
            RedisQueueError::TimedOut,
            RedisQueueError::Rejected("x".into()),
            RedisQueueError::Unreplicated {
                confirmed: 0,
                wanted: 1,
            },
            RedisQueueError::Full { cap: 1 },
            RedisQueueError::BadReply("x"),
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|e| e.log_code().name()).collect();
        assert_eq!(names.len(), all.len());
        assert!(all
            .iter()
            .all(|e| matches!(e.log_code().number(), 801 | 802)));
        assert!(!RedisQueueError::TimedOut.connection_reusable());
        assert!(RedisQueueError::Full { cap: 1 }.connection_reusable());
    }
}
