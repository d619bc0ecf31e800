//! `sq.properties`: parsing, validation and every default, in one place.
//!
//! `parse_reader` takes any `impl Read` so unit tests feed it byte literals; errors
//! carry the file, line and key so that `main` can print the one-line error SPEC §1 asks
//! for.
//!
//! Reading happens in two passes: every line is first collected into a map of known
//! keys (warning about unknown and repeated ones), then each key is validated into its
//! typed field. The second pass needs the whole file because one default depends on
//! another key (`MAX_RETRIES` is `2n+1` for n `ENDPOINTS`), and it still knows each key's
//! line for the error message.
//!
//! Files: `mod.rs` (the typed `Config`, its defaults, limits and key table, the entry
//! points), `endpoint.rs` (ENDPOINTS entries), `read.rs` (the two passes: lines into
//! entries, entries into a `Config`), `values.rs` (one parser per kind of value).

use crate::checks::StatusRanges;
use crate::formats::RequestFormats;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod endpoint;
mod read;
#[cfg(test)]
mod tests;
mod values;

pub use endpoint::{Endpoint, Scheme};
use read::Entries;
pub use values::LETS_ENCRYPT_DIRECTORY;

/// `DEFERRED_Q_FSYNC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    Always,
    Interval,
    Never,
}

/// `DEFERRED_Q_BACKEND`: where queued requests wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueBackend {
    Memory,
    /// The journal in DEFERRED_Q_DIR.
    Journal,
    /// The shared queue at this URL (`redis://`, `rediss://`, `redis+sentinel://`, …).
    Redis(String),
}

/// The whole configuration, validated. Every field has its SPEC §2 default.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from (for messages and SIGHUP).
    pub source: PathBuf,
    pub listener_port: u16,
    pub listener_address: IpAddr,
    pub endpoints: Vec<Endpoint>,
    pub concurrency_peak: usize,
    /// `None` = no timeout (`-1`).
    pub outgoing_request_timeout: Option<Duration>,
    pub retry_gap: Duration,
    pub max_retries: u32,
    /// `None` = no limit (`-1`); `Some(ZERO)` = no keep-alive.
    pub keep_alive_timeout: Option<Duration>,
    pub enable_deferred_q: bool,
    pub enable_upfront_q: bool,
    pub request_formats: RequestFormats,
    pub custom_response_headers: Vec<(String, String)>,
    pub custom_request_headers: Vec<(String, String)>,
    pub error_log_file: PathBuf,
    pub ssl_enable: bool,
    pub ssl_certificate_file: Option<PathBuf>,
    pub ssl_private_key_file: Option<PathBuf>,
    pub ssl_upstream_ca_file: Option<PathBuf>,
    pub ssl_upstream_verify: bool,
    /// SSL_AUTO_*: certificates from an ACME server (see `acme/`).
    pub ssl_auto_enable: bool,
    pub ssl_auto_domains: Vec<String>,
    pub ssl_auto_directory_url: String,
    pub ssl_auto_cache_dir: PathBuf,
    pub ssl_auto_http_port: u16,
    pub ssl_auto_ca_file: Option<PathBuf>,
    pub deferred_q_dir: Option<PathBuf>,
    pub deferred_q_fsync: FsyncPolicy,
    /// `None` = forever (`0`).
    pub deferred_q_max_age: Option<Duration>,
    /// `DEFERRED_Q_BACKEND`; by default journal when DEFERRED_Q_DIR is set, else memory.
    pub deferred_q_backend: QueueBackend,
    /// `DEFERRED_Q_NAME`: instances with the same name share one Redis queue.
    pub deferred_q_name: String,
    /// `DEFERRED_Q_REDIS_REPLICAS`: replicas that must confirm a push (WAIT N).
    pub deferred_q_redis_replicas: usize,
    /// `DEFERRED_Q_REDIS_TIMEOUT`: bound of every Redis call.
    pub deferred_q_redis_timeout: Duration,
    /// `DEFERRED_Q_REDIS_LEASE`: the replay lease's TTL.
    pub deferred_q_redis_lease: Duration,
    /// `DEFERRED_Q_MAX_LEN`: the shared queue's cap, in requests.
    pub deferred_q_max_len: usize,
    pub max_request_body: u64,
    /// Bytes of a request body kept in memory; the rest goes to an unlinked temporary
    /// file in `client_body_temp_dir` (nginx's client_body_buffer_size).
    pub client_body_buffer_size: usize,
    pub client_body_temp_dir: PathBuf,
    /// Bytes of queued request bodies an in-memory queue (no journal) may hold.
    pub deferred_q_max_memory: u64,
    pub max_header_size: usize,
    pub max_headers: usize,
    pub client_header_timeout: Duration,
    pub client_body_timeout: Duration,
    pub shutdown_grace: Duration,
    pub access_log_file: Option<PathBuf>,
    pub admin_address: IpAddr,
    pub admin_port: u16,
    /// Bearer token for the admin API's queue changes (`serviceq queue`); `None` = off.
    pub admin_token_file: Option<PathBuf>,
    /// Active health checks (`health.rs`); `None` = off.
    pub health_check_path: Option<String>,
    pub health_check_interval: Duration,
    pub health_check_timeout: Duration,
    pub health_check_rise: u32,
    pub health_check_fall: u32,
    pub health_check_status: StatusRanges,
    /// How long an upgraded connection (`tunnel.rs`) may stay silent both ways.
    pub tunnel_idle_timeout: Duration,
}

/// A configuration problem: printed by `main` as
/// `serviceq: FILE[:LINE]: [KEY: ]MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------
// Defaults, limits and the key table

impl Config {
    /// Every SPEC §2 default, in one place, around the two keys that have none.
    pub fn with_defaults(
        source: PathBuf,
        endpoints: Vec<Endpoint>,
        concurrency_peak: usize,
    ) -> Self {
        Config {
            source,
            listener_port: 5252,
            listener_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            // The seed's 2n+1: one random first attempt, then two round-robin passes.
            max_retries: u32::try_from(endpoints.len())
                .unwrap_or(u32::MAX)
                .saturating_mul(2)
                .saturating_add(1),
            endpoints,
            concurrency_peak,
            outgoing_request_timeout: Some(Duration::from_secs(5)),
            retry_gap: Duration::ZERO,
            keep_alive_timeout: Some(Duration::from_secs(120)),
            enable_deferred_q: true,
            enable_upfront_q: false,
            request_formats: RequestFormats::all(),
            custom_response_headers: Vec::new(),
            custom_request_headers: Vec::new(),
            error_log_file: PathBuf::from("/opt/serviceq/logs/serviceq_error.log"),
            ssl_enable: false,
            ssl_certificate_file: None,
            ssl_private_key_file: None,
            ssl_upstream_ca_file: None,
            ssl_upstream_verify: true,
            ssl_auto_enable: false,
            ssl_auto_domains: Vec::new(),
            ssl_auto_directory_url: LETS_ENCRYPT_DIRECTORY.to_string(),
            ssl_auto_cache_dir: PathBuf::from("/opt/serviceq/acme"),
            ssl_auto_http_port: 80,
            ssl_auto_ca_file: None,
            deferred_q_dir: None,
            deferred_q_fsync: FsyncPolicy::Always,
            deferred_q_max_age: None,
            deferred_q_backend: QueueBackend::Memory,
            deferred_q_name: crate::shared_queue::DEFAULT_NAME.to_owned(),
            deferred_q_redis_replicas: 0,
            deferred_q_redis_timeout: crate::shared_queue::DEFAULT_TIMEOUT,
            deferred_q_redis_lease: crate::shared_queue::DEFAULT_LEASE_TTL,
            deferred_q_max_len: crate::shared_queue::DEFAULT_MAX_LEN,
            max_request_body: 10 * 1024 * 1024,
            client_body_buffer_size: 64 * 1024,
            client_body_temp_dir: std::env::temp_dir(),
            deferred_q_max_memory: 64 * 1024 * 1024,
            max_header_size: 16 * 1024,
            max_headers: 100,
            client_header_timeout: Duration::from_secs(10),
            client_body_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            access_log_file: None,
            admin_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            admin_port: 0,
            admin_token_file: None,
            health_check_path: None,
            health_check_interval: Duration::from_secs(2),
            health_check_timeout: Duration::from_secs(1),
            // HAProxy's defaults.
            health_check_rise: 2,
            health_check_fall: 3,
            health_check_status: StatusRanges::default_healthy(),
            // HAProxy's `timeout tunnel` is commonly set to an hour, nginx's
            // proxy_read_timeout for WebSocket to minutes: five is between.
            tunnel_idle_timeout: Duration::from_secs(300),
        }
    }
}

/// `CONCURRENCY_PEAK` is also the worker thread count, so it must stay a sane number.
const CONCURRENCY_PEAK_MAX: u64 = 65_536;
const MAX_HEADER_SIZE_BYTES_RANGE: (u64, u64) = (1024, 1_048_576);
const MAX_HEADERS_RANGE: (u64, u64) = (1, 1000);
/// 1 KiB to 64 MiB of a request body in memory.
const CLIENT_BODY_BUFFER_RANGE: (u64, u64) = (1024, 64 * 1024 * 1024);
/// About 31 years: beyond any sensible timeout, and small enough that adding it to an
/// `Instant` can never overflow (which would panic).
const SECONDS_MAX: u64 = 1_000_000_000;
/// A properties file is a few kB; stopping here makes `--config /dev/zero` fail fast.
const FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Longest value quoted back in a message; the rest is elided.
const QUOTE_CHARS_MAX: usize = 80;
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

const FORMATS_KEY: &str = "DEFERRED_Q_REQUEST_FORMATS";
/// The seed's older name for `DEFERRED_Q_REQUEST_FORMATS`.
const FORMATS_ALIAS: &str = "Q_REQUEST_FORMATS";

/// Every key the file may hold, in SPEC §2 order. Anything else is a warning.
const KEYS: &[&str] = &[
    "LISTENER_PORT",
    "LISTENER_ADDRESS",
    "PROTO",
    "ENDPOINTS",
    "CONCURRENCY_PEAK",
    "OUTGOING_REQUEST_TIMEOUT",
    "RETRY_GAP",
    "MAX_RETRIES",
    "KEEP_ALIVE_TIMEOUT",
    "ENABLE_DEFERRED_Q",
    "ENABLE_UPFRONT_Q",
    FORMATS_KEY,
    FORMATS_ALIAS,
    "CUSTOM_RESPONSE_HEADERS",
    "CUSTOM_REQUEST_HEADERS",
    "ERROR_LOG_FILE",
    "SSL_ENABLE",
    "SSL_CERTIFICATE_FILE",
    "SSL_PRIVATE_KEY_FILE",
    "SSL_AUTO_ENABLE",
    "SSL_AUTO_DOMAINS",
    "SSL_AUTO_DIRECTORY_URL",
    "SSL_AUTO_CACHE_DIR",
    "SSL_AUTO_HTTP_PORT",
    "SSL_AUTO_CA_FILE",
    "SSL_UPSTREAM_CA_FILE",
    "SSL_UPSTREAM_VERIFY",
    "DEFERRED_Q_DIR",
    "DEFERRED_Q_FSYNC",
    "DEFERRED_Q_MAX_AGE",
    "DEFERRED_Q_BACKEND",
    "DEFERRED_Q_NAME",
    "DEFERRED_Q_REDIS_REPLICAS",
    "DEFERRED_Q_REDIS_TIMEOUT",
    "DEFERRED_Q_REDIS_LEASE",
    "DEFERRED_Q_MAX_LEN",
    "MAX_REQUEST_BODY",
    "CLIENT_BODY_BUFFER_SIZE",
    "CLIENT_BODY_TEMP_DIR",
    "DEFERRED_Q_MAX_MEMORY",
    "MAX_HEADER_SIZE",
    "MAX_HEADERS",
    "CLIENT_HEADER_TIMEOUT",
    "CLIENT_BODY_TIMEOUT",
    "SHUTDOWN_GRACE",
    "ACCESS_LOG_FILE",
    "ADMIN_ADDRESS",
    "ADMIN_PORT",
    "ADMIN_TOKEN_FILE",
    "HEALTH_CHECK_PATH",
    "HEALTH_CHECK_INTERVAL",
    "HEALTH_CHECK_TIMEOUT",
    "HEALTH_CHECK_RISE",
    "HEALTH_CHECK_FALL",
    "HEALTH_CHECK_STATUS",
    "TUNNEL_IDLE_TIMEOUT",
];

/// Headers that `ServiceQ` sets or strips itself (RFC 9112 §6 framing, RFC 9110 §7.6.1
/// hop-by-hop): a configured copy would corrupt framing or be dropped anyway.
const MANAGED_HEADERS: &[&str] = &[
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Upgrade",
];

// ---------------------------------------------------------------------------
// Entry points

/// Reads and validates the file at `path`; see `parse_reader`.
///
/// # Errors
/// A file that cannot be opened or read (`line` and `key` are `None`, the message is
/// `cannot read: <OS error>`), or any error of `parse_reader`.
pub fn load(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
    let file = File::open(path)
        .map_err(|e| ConfigError::new(path, None, None, format!("cannot read: {e}")))?;
    parse_reader(file, path)
}

/// Parses a whole properties file. `file` names it in messages and becomes
/// `Config::source`. Returns the configuration and the warning lines to print (unknown
/// or repeated keys, disabled certificate checks, ...).
///
/// # Errors
/// The first problem found: a malformed line, an invalid value, a missing required
/// key, or a read failure. It carries the line and key whenever there is one.
pub fn parse_reader(r: impl Read, file: &Path) -> Result<(Config, Vec<String>), ConfigError> {
    let bytes = read_capped(r, file)?;
    let mut warnings = Vec::new();
    let entries = Entries::read(&bytes, file, &mut warnings)?;
    let config = entries.build(&mut warnings)?;
    Ok((config, warnings))
}

fn read_capped(r: impl Read, file: &Path) -> Result<Vec<u8>, ConfigError> {
    let mut bytes = Vec::new();
    r.take(FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ConfigError::new(file, None, None, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > FILE_BYTES_MAX {
        let message = format!("larger than {FILE_BYTES_MAX} bytes: not a properties file?");
        return Err(ConfigError::new(file, None, None, message));
    }
    Ok(bytes)
}

impl ConfigError {
    fn new(
        file: &Path,
        line: Option<usize>,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line,
            key: key.map(str::to_string),
            message: message.into(),
        }
    }
}

/// A warning line, in the same `FILE[:LINE]: [KEY: ]MESSAGE` shape as errors.
fn warning(file: &Path, line: Option<usize>, key: &str, message: impl Into<String>) -> String {
    ConfigError::new(file, line, Some(key), message).to_string()
}
