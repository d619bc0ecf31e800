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

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::checks::StatusRanges;
use crate::formats::RequestFormats;

/// `http` or `https`, as written in ENDPOINTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// One upstream endpoint from ENDPOINTS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// Host name or IP literal, without brackets for IPv6.
    pub host: String,
    pub port: u16,
}

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
// Endpoints

impl Scheme {
    /// 80 for http, 443 for https.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Endpoint {
    /// The `Host` header for requests to this endpoint: `host`, or `host:port` when the
    /// port is not the scheme's default (RFC 9110 §7.2).
    pub fn host_header(&self) -> String {
        let host = self.bracketed_host();
        if self.is_default_port() {
            host.into_owned()
        } else {
            format!("{host}:{}", self.port)
        }
    }

    pub fn is_default_port(&self) -> bool {
        self.port == self.scheme.default_port()
    }

    /// The host as written in a URL: IPv6 literals in brackets (RFC 3986 §3.2.2).
    fn bracketed_host(&self) -> Cow<'_, str> {
        if self.host.contains(':') {
            Cow::Owned(format!("[{}]", self.host))
        } else {
            Cow::Borrowed(&self.host)
        }
    }
}

/// `scheme://host:port` with the port always explicit: the form of the error log (§7).
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{}",
            self.scheme,
            self.bracketed_host(),
            self.port
        )
    }
}

/// One ENDPOINTS entry: `scheme://host[:port]`, optionally with a single trailing `/`.
impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_endpoint(s).map_err(|why| format!("endpoint {}: {why}", quote(s)))
    }
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or("no scheme: expected scheme://host[:port], e.g. http://10.0.0.5:8001")?;
    let scheme = parse_scheme(scheme)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err("a path is not allowed: expected scheme://host[:port]".to_string());
    }
    if authority.contains('@') {
        return Err("user information (user@host) is not allowed".to_string());
    }
    let (host, port) = split_host_port(authority)?;
    Ok(Endpoint {
        scheme,
        host: host.to_string(),
        port: port.unwrap_or(scheme.default_port()),
    })
}

fn parse_scheme(scheme: &str) -> Result<Scheme, String> {
    if scheme.eq_ignore_ascii_case("http") {
        Ok(Scheme::Http)
    } else if scheme.eq_ignore_ascii_case("https") {
        Ok(Scheme::Https)
    } else {
        Err(format!("scheme {} must be http or https", quote(scheme)))
    }
}

/// Splits `host[:port]` or `[v6]:port`; the host comes back without brackets.
fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => split_ipv6_literal(bracketed)?,
        None if authority.matches(':').count() > 1 => {
            return Err("IPv6 addresses need brackets, e.g. http://[::1]:8080".to_string());
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            check_host_name(host)?;
            (host, port)
        }
    };
    let port = port.map(parse_endpoint_port).transpose()?;
    Ok((host, port))
}

/// `::1]:8080` (after the `[`) into the address and the optional port text.
fn split_ipv6_literal(bracketed: &str) -> Result<(&str, Option<&str>), String> {
    let (host, after) = bracketed
        .split_once(']')
        .ok_or("unclosed \"[\" in an IPv6 address")?;
    if host.parse::<Ipv6Addr>().is_err() {
        return Err(format!("{} is not an IPv6 address", quote(host)));
    }
    match after {
        "" => Ok((host, None)),
        _ => match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None => Err("expected :port after the IPv6 address".to_string()),
        },
    }
}

/// A DNS name or IPv4 literal. Checked here so that a typo fails at start rather than
/// as a stream of `UPSTREAM_DOWN` errors.
fn check_host_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is missing".to_string());
    }
    let name_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if !host.chars().all(name_chars) {
        return Err(format!("{} is not a valid host name", quote(host)));
    }
    // All digits and dots can only be an IPv4 address; `10.0.0.256` is a typo.
    let looks_numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if looks_numeric && host.parse::<Ipv4Addr>().is_err() {
        return Err(format!("{} is not an IPv4 address", quote(host)));
    }
    Ok(())
}

fn parse_endpoint_port(port: &str) -> Result<u16, String> {
    parse_uint(port)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n != 0)
        .ok_or_else(|| expected("a port from 1 to 65535", port))
}

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

// ---------------------------------------------------------------------------
// Pass 1: lines into entries

/// The value of one known key and the line it came from.
struct Entry {
    line: usize,
    value: String,
}

/// Every known key given in the file (the last occurrence of each).
struct Entries<'a> {
    file: &'a Path,
    map: HashMap<&'static str, Entry>,
}

impl<'a> Entries<'a> {
    fn read(bytes: &[u8], file: &'a Path, warnings: &mut Vec<String>) -> Result<Self, ConfigError> {
        // Editors on Windows may save a BOM; it is not part of the first key.
        let text = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
        let mut entries = Entries {
            file,
            map: HashMap::new(),
        };
        for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
            let line = index + 1;
            let parsed = std::str::from_utf8(raw)
                .map_err(|_| "not valid UTF-8".to_string())
                .and_then(split_line)
                .map_err(|message| ConfigError::new(file, Some(line), None, message))?;
            if let Some((key, value)) = parsed {
                entries.insert(key, value, line, warnings);
            }
        }
        Ok(entries)
    }

    fn insert(&mut self, key: &str, value: &str, line: usize, warnings: &mut Vec<String>) {
        let Some(known) = KEYS.iter().copied().find(|&k| k == key) else {
            warnings.push(warning(
                self.file,
                Some(line),
                key,
                unknown_key_message(key),
            ));
            return;
        };
        let entry = Entry {
            line,
            value: value.to_string(),
        };
        if let Some(previous) = self.map.insert(known, entry) {
            let message = format!(
                "given again (also on line {}); the last one, line {line}, wins",
                previous.line
            );
            warnings.push(warning(self.file, Some(line), key, message));
        }
    }
}

/// `Ok(None)` for blank and comment lines, else the trimmed key and value. Trimming the
/// whole line first also drops the `\r` of CRLF files.
fn split_line(raw: &str) -> Result<Option<(&str, &str)>, String> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (key, value) = line
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {}", quote(line)))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!(
            "expected KEY=VALUE, the key is missing in {}",
            quote(line)
        ));
    }
    Ok(Some((key, value.trim())))
}

fn unknown_key_message(key: &str) -> String {
    match KEYS.iter().find(|k| k.eq_ignore_ascii_case(key)) {
        Some(known) => {
            format!("unknown key (ignored; keys are case-sensitive: did you mean {known}?)")
        }
        None => "unknown key (ignored)".to_string(),
    }
}

// ---------------------------------------------------------------------------
// Pass 2: entries into a Config

impl Entries<'_> {
    /// Starts from the defaults and overwrites every key the file gives, stage by stage.
    fn build(&self, warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
        let endpoints = self.required("ENDPOINTS", parse_endpoints)?;
        let peak = self.required("CONCURRENCY_PEAK", parse_concurrency_peak)?;
        let mut config = Config::with_defaults(self.file.to_path_buf(), endpoints, peak);
        self.read_listener(&mut config)?;
        self.read_attempts(&mut config)?;
        self.read_queue(&mut config, warnings)?;
        self.read_headers(&mut config)?;
        self.read_client_limits(&mut config)?;
        self.read_tls(&mut config)?;
        self.read_logs_and_admin(&mut config)?;
        self.read_health_checks(&mut config)?;
        self.collect_warnings(&config, warnings);
        Ok(config)
    }

    fn read_listener(&self, c: &mut Config) -> Result<(), ConfigError> {
        self.set(&mut c.listener_port, "LISTENER_PORT", parse_port)?;
        self.set(&mut c.listener_address, "LISTENER_ADDRESS", parse_ip)?;
        self.check("PROTO", parse_proto)
    }

    fn read_attempts(&self, c: &mut Config) -> Result<(), ConfigError> {
        let timeout = &mut c.outgoing_request_timeout;
        self.set(timeout, "OUTGOING_REQUEST_TIMEOUT", parse_outgoing_timeout)?;
        self.set(&mut c.retry_gap, "RETRY_GAP", parse_seconds_or_zero)?;
        self.set(&mut c.max_retries, "MAX_RETRIES", parse_max_retries)
    }

    fn read_queue(&self, c: &mut Config, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
        self.set(&mut c.enable_deferred_q, "ENABLE_DEFERRED_Q", parse_bool)?;
        self.set(&mut c.enable_upfront_q, "ENABLE_UPFRONT_Q", parse_bool)?;
        let formats_key = self.formats_key(warnings);
        self.set(&mut c.request_formats, formats_key, RequestFormats::parse)?;
        self.set(&mut c.deferred_q_dir, "DEFERRED_Q_DIR", parse_optional_path)?;
        self.set(&mut c.deferred_q_fsync, "DEFERRED_Q_FSYNC", parse_fsync)?;
        self.set(
            &mut c.deferred_q_max_age,
            "DEFERRED_Q_MAX_AGE",
            parse_max_age,
        )?;
        let memory = &mut c.deferred_q_max_memory;
        self.set(memory, "DEFERRED_Q_MAX_MEMORY", parse_bytes)?;
        self.read_shared_queue(c)
    }

    /// DEFERRED_Q_BACKEND and the shared queue's keys. An explicit backend must agree
    /// with DEFERRED_Q_DIR: the journal needs it, and the others keep no journal.
    fn read_shared_queue(&self, c: &mut Config) -> Result<(), ConfigError> {
        c.deferred_q_backend = if c.deferred_q_dir.is_some() {
            QueueBackend::Journal
        } else {
            QueueBackend::Memory
        };
        self.set(
            &mut c.deferred_q_backend,
            "DEFERRED_Q_BACKEND",
            parse_backend,
        )?;
        match (&c.deferred_q_backend, &c.deferred_q_dir) {
            (QueueBackend::Journal, None) => {
                return Err(self.error(
                    "DEFERRED_Q_BACKEND",
                    "journal needs DEFERRED_Q_DIR (the journal's directory)",
                ))
            }
            (QueueBackend::Memory | QueueBackend::Redis(_), Some(_)) => {
                return Err(self.error(
                    "DEFERRED_Q_DIR",
                    "set, but DEFERRED_Q_BACKEND is not journal: remove one of them",
                ))
            }
            _ => {}
        }
        self.set(&mut c.deferred_q_name, "DEFERRED_Q_NAME", parse_queue_name)?;
        self.set(
            &mut c.deferred_q_redis_replicas,
            "DEFERRED_Q_REDIS_REPLICAS",
            |v| parse_usize_in(v, (0, 64)),
        )?;
        let timeout = &mut c.deferred_q_redis_timeout;
        self.set(timeout, "DEFERRED_Q_REDIS_TIMEOUT", parse_seconds_positive)?;
        let lease = &mut c.deferred_q_redis_lease;
        self.set(lease, "DEFERRED_Q_REDIS_LEASE", parse_lease)?;
        self.set(&mut c.deferred_q_max_len, "DEFERRED_Q_MAX_LEN", |v| {
            parse_usize_in(v, (1, 100_000_000))
        })
    }

    fn read_headers(&self, c: &mut Config) -> Result<(), ConfigError> {
        self.set(
            &mut c.custom_response_headers,
            "CUSTOM_RESPONSE_HEADERS",
            |v| parse_headers(v, HeaderSide::Response),
        )?;
        self.set(
            &mut c.custom_request_headers,
            "CUSTOM_REQUEST_HEADERS",
            |v| parse_headers(v, HeaderSide::Request),
        )
    }

    fn read_client_limits(&self, c: &mut Config) -> Result<(), ConfigError> {
        let keep_alive = &mut c.keep_alive_timeout;
        self.set(keep_alive, "KEEP_ALIVE_TIMEOUT", parse_keep_alive_timeout)?;
        self.set(&mut c.max_request_body, "MAX_REQUEST_BODY", parse_bytes)?;
        self.set(
            &mut c.client_body_buffer_size,
            "CLIENT_BODY_BUFFER_SIZE",
            |v| parse_usize_in(v, CLIENT_BODY_BUFFER_RANGE),
        )?;
        self.set(
            &mut c.client_body_temp_dir,
            "CLIENT_BODY_TEMP_DIR",
            parse_path,
        )?;
        self.set(&mut c.max_header_size, "MAX_HEADER_SIZE", |v| {
            parse_usize_in(v, MAX_HEADER_SIZE_BYTES_RANGE)
        })?;
        self.set(&mut c.max_headers, "MAX_HEADERS", |v| {
            parse_usize_in(v, MAX_HEADERS_RANGE)
        })?;
        let header_timeout = &mut c.client_header_timeout;
        self.set(
            header_timeout,
            "CLIENT_HEADER_TIMEOUT",
            parse_seconds_positive,
        )?;
        let body_timeout = &mut c.client_body_timeout;
        self.set(body_timeout, "CLIENT_BODY_TIMEOUT", parse_seconds_positive)
    }

    fn read_tls(&self, c: &mut Config) -> Result<(), ConfigError> {
        self.set(&mut c.ssl_enable, "SSL_ENABLE", parse_bool)?;
        self.read_ssl_auto(c)?;
        let certificate = &mut c.ssl_certificate_file;
        self.set(certificate, "SSL_CERTIFICATE_FILE", parse_optional_path)?;
        let private_key = &mut c.ssl_private_key_file;
        self.set(private_key, "SSL_PRIVATE_KEY_FILE", parse_optional_path)?;
        let ca = &mut c.ssl_upstream_ca_file;
        self.set(ca, "SSL_UPSTREAM_CA_FILE", parse_optional_path)?;
        self.set(
            &mut c.ssl_upstream_verify,
            "SSL_UPSTREAM_VERIFY",
            parse_bool,
        )?;
        self.check_tls_files(c)
    }

    fn read_logs_and_admin(&self, c: &mut Config) -> Result<(), ConfigError> {
        self.set(&mut c.error_log_file, "ERROR_LOG_FILE", parse_path)?;
        self.set(
            &mut c.access_log_file,
            "ACCESS_LOG_FILE",
            parse_optional_path,
        )?;
        self.set(
            &mut c.shutdown_grace,
            "SHUTDOWN_GRACE",
            parse_seconds_or_zero,
        )?;
        self.set(&mut c.admin_address, "ADMIN_ADDRESS", parse_ip)?;
        self.set(&mut c.admin_port, "ADMIN_PORT", parse_port)
    }

    fn read_health_checks(&self, c: &mut Config) -> Result<(), ConfigError> {
        let path = &mut c.health_check_path;
        self.set(path, "HEALTH_CHECK_PATH", parse_health_check_path)?;
        let interval = &mut c.health_check_interval;
        self.set(interval, "HEALTH_CHECK_INTERVAL", parse_seconds_positive)?;
        let timeout = &mut c.health_check_timeout;
        self.set(timeout, "HEALTH_CHECK_TIMEOUT", parse_seconds_positive)?;
        self.set(
            &mut c.health_check_rise,
            "HEALTH_CHECK_RISE",
            parse_check_count,
        )?;
        self.set(
            &mut c.health_check_fall,
            "HEALTH_CHECK_FALL",
            parse_check_count,
        )?;
        let status = &mut c.health_check_status;
        self.set(status, "HEALTH_CHECK_STATUS", StatusRanges::parse)?;
        let idle = &mut c.tunnel_idle_timeout;
        self.set(idle, "TUNNEL_IDLE_TIMEOUT", parse_seconds_positive)
    }

    /// Overwrites `field` with the parsed value when the file gives `key`; otherwise
    /// the default stays.
    fn set<T>(
        &self,
        field: &mut T,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<(), ConfigError> {
        if let Some(entry) = self.map.get(key) {
            *field = parse(&entry.value).map_err(|message| self.error(key, message))?;
        }
        Ok(())
    }

    /// Validates a key that has no field of its own.
    fn check(
        &self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<(), String>,
    ) -> Result<(), ConfigError> {
        self.set(&mut (), key, parse)
    }

    fn required<T>(
        &self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.map.get(key) {
            None => Err(self.error(key, "missing (required)")),
            Some(entry) => parse(&entry.value).map_err(|message| self.error(key, message)),
        }
    }

    /// An error about `key`, on its line when the file gives it.
    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let line = self.map.get(key).map(|entry| entry.line);
        ConfigError::new(self.file, line, Some(key), message)
    }

    fn warning(&self, key: &str, message: impl Into<String>) -> String {
        warning(
            self.file,
            self.map.get(key).map(|entry| entry.line),
            key,
            message,
        )
    }

    /// The key to read the request formats from: the alias only when the canonical
    /// key is absent, so that the documented name always wins.
    fn formats_key(&self, warnings: &mut Vec<String>) -> &'static str {
        match (self.map.get(FORMATS_KEY), self.map.get(FORMATS_ALIAS)) {
            (Some(canonical), Some(_)) => {
                let message = format!(
                    "ignored: {FORMATS_KEY} (line {}) is also given and wins",
                    canonical.line
                );
                warnings.push(self.warning(FORMATS_ALIAS, message));
                FORMATS_KEY
            }
            (None, Some(_)) => FORMATS_ALIAS,
            _ => FORMATS_KEY,
        }
    }

    fn read_ssl_auto(&self, c: &mut Config) -> Result<(), ConfigError> {
        self.set(&mut c.ssl_auto_enable, "SSL_AUTO_ENABLE", parse_bool)?;
        self.set(&mut c.ssl_auto_domains, "SSL_AUTO_DOMAINS", parse_domains)?;
        let url = &mut c.ssl_auto_directory_url;
        self.set(url, "SSL_AUTO_DIRECTORY_URL", parse_https_url)?;
        self.set(&mut c.ssl_auto_cache_dir, "SSL_AUTO_CACHE_DIR", parse_path)?;
        self.set(&mut c.ssl_auto_http_port, "SSL_AUTO_HTTP_PORT", parse_port)?;
        let ca = &mut c.ssl_auto_ca_file;
        self.set(ca, "SSL_AUTO_CA_FILE", parse_optional_path)?;
        if !c.ssl_auto_enable {
            return Ok(());
        }
        if !c.ssl_enable {
            let why = "needs SSL_ENABLE=true (the certificates are for the TLS listener)";
            return Err(self.error("SSL_AUTO_ENABLE", why));
        }
        if c.ssl_auto_domains.is_empty() {
            let why = "missing (required when SSL_AUTO_ENABLE=true)";
            return Err(self.error("SSL_AUTO_DOMAINS", why));
        }
        Ok(())
    }

    /// `SSL_ENABLE=true` needs both files (unless ACME provides them); whether they can
    /// be read is checked where they are loaded, so that SIGHUP and start-up report it
    /// the same way.
    fn check_tls_files(&self, config: &Config) -> Result<(), ConfigError> {
        if !config.ssl_enable || config.ssl_auto_enable {
            return Ok(());
        }
        let files = [
            ("SSL_CERTIFICATE_FILE", &config.ssl_certificate_file),
            ("SSL_PRIVATE_KEY_FILE", &config.ssl_private_key_file),
        ];
        match files.iter().find(|(_, path)| path.is_none()) {
            Some((key, _)) => Err(self.error(key, "missing (required when SSL_ENABLE=true)")),
            None => Ok(()),
        }
    }

    /// Settings that are valid but probably not what the operator meant.
    fn collect_warnings(&self, config: &Config, warnings: &mut Vec<String>) {
        if !config.ssl_upstream_verify {
            warnings.push(self.warning(
                "SSL_UPSTREAM_VERIFY",
                "INSECURE: certificates of https:// endpoints are NOT verified; \
                 anyone on the network path can impersonate them",
            ));
        }
        let unused_files = match (config.ssl_enable, config.ssl_auto_enable) {
            (false, _) => Some("ignored because SSL_ENABLE is false"),
            (true, true) => Some("not used: SSL_AUTO_ENABLE=true gets the certificate by ACME"),
            (true, false) => None,
        };
        if let Some(why) = unused_files {
            let given = [
                ("SSL_CERTIFICATE_FILE", &config.ssl_certificate_file),
                ("SSL_PRIVATE_KEY_FILE", &config.ssl_private_key_file),
            ];
            for (key, _) in given.iter().filter(|(_, path)| path.is_some()) {
                warnings.push(self.warning(key, why));
            }
        }
        for (index, endpoint) in config.endpoints.iter().enumerate() {
            if config.endpoints[..index].contains(endpoint) {
                let message = format!("{endpoint} is listed more than once");
                warnings.push(self.warning("ENDPOINTS", message));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Value parsers: each takes the trimmed value and returns a message on error.

fn expected(what: &str, value: &str) -> String {
    format!("expected {what}, got {}", quote(value))
}

/// A value quoted for a message, control characters escaped and length capped.
fn quote(value: &str) -> String {
    if value.chars().count() <= QUOTE_CHARS_MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(QUOTE_CHARS_MAX).collect();
        format!("{head:?}...")
    }
}

/// Plain ASCII digits only: `u64::from_str` would also take a leading `+`.
fn parse_uint(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(expected("true or false", value)),
    }
}

fn parse_port(value: &str) -> Result<u16, String> {
    parse_uint(value)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| expected("a port from 0 to 65535", value))
}

fn parse_ip(value: &str) -> Result<IpAddr, String> {
    value
        .parse()
        .map_err(|_| expected("an IP address such as 0.0.0.0, 127.0.0.1 or ::", value))
}

fn parse_proto(value: &str) -> Result<(), String> {
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
fn parse_domains(value: &str) -> Result<Vec<String>, String> {
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

fn parse_https_url(value: &str) -> Result<String, String> {
    let rest = value.strip_prefix("https://").unwrap_or("");
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(expected("an https:// URL", value));
    }
    Ok(value.to_string())
}

fn parse_concurrency_peak(value: &str) -> Result<usize, String> {
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

fn parse_max_retries(value: &str) -> Result<u32, String> {
    parse_uint(value)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n >= 1)
        .ok_or_else(|| expected("a positive integer", value))
}

fn parse_bytes(value: &str) -> Result<u64, String> {
    parse_uint(value).ok_or_else(|| expected("a number of bytes (0 or more)", value))
}

fn parse_usize_in(value: &str, (min, max): (u64, u64)) -> Result<usize, String> {
    parse_uint(value)
        .filter(|n| (min..=max).contains(n))
        // Fits: every range used is far below u32::MAX.
        .map(|n| n as usize)
        .ok_or_else(|| expected(&format!("an integer from {min} to {max}"), value))
}

fn parse_fsync(value: &str) -> Result<FsyncPolicy, String> {
    match value.to_ascii_lowercase().as_str() {
        "always" => Ok(FsyncPolicy::Always),
        "interval" => Ok(FsyncPolicy::Interval),
        "never" => Ok(FsyncPolicy::Never),
        _ => Err(expected("always, interval or never", value)),
    }
}

/// A path with a default: empty is an error, since "no error log" is not an option.
fn parse_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err(expected("a file path", value));
    }
    Ok(PathBuf::from(value))
}

/// An optional path: empty means unset. Relative paths stay relative, to be resolved
/// against the working directory where they are used (SPEC §1).
fn parse_optional_path(value: &str) -> Result<Option<PathBuf>, String> {
    Ok((!value.is_empty()).then(|| PathBuf::from(value)))
}

/// Seconds as `digits[.digits]`: no sign, no unit, no exponent. `what` describes the
/// accepted values for the error message.
fn parse_seconds(value: &str, what: &str) -> Result<Duration, String> {
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
fn fraction_nanos(fraction: &str) -> u32 {
    fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0, |nanos, digit| nanos * 10 + u32::from(digit - b'0'))
}

fn parse_seconds_positive(value: &str) -> Result<Duration, String> {
    const WHAT: &str = "seconds greater than 0, e.g. 10 or 0.5";
    let seconds = parse_seconds(value, WHAT)?;
    if seconds.is_zero() {
        return Err(expected(WHAT, value));
    }
    Ok(seconds)
}

fn parse_seconds_or_zero(value: &str) -> Result<Duration, String> {
    parse_seconds(value, "seconds (0 or more), e.g. 0, 10 or 0.5")
}

fn parse_outgoing_timeout(value: &str) -> Result<Option<Duration>, String> {
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

fn parse_keep_alive_timeout(value: &str) -> Result<Option<Duration>, String> {
    if value == "-1" {
        return Ok(None);
    }
    let what = "seconds (e.g. 120 or 0.5), 0 to disable keep-alive, or -1 for no limit";
    parse_seconds(value, what).map(Some)
}

fn parse_backend(value: &str) -> Result<QueueBackend, String> {
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

fn parse_queue_name(value: &str) -> Result<String, String> {
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

fn parse_lease(value: &str) -> Result<Duration, String> {
    const WHAT: &str = "seconds, at least 0.1, e.g. 5";
    let seconds = parse_seconds(value, WHAT)?;
    if seconds < Duration::from_millis(100) {
        return Err(expected(WHAT, value));
    }
    Ok(seconds)
}

fn parse_max_age(value: &str) -> Result<Option<Duration>, String> {
    let what = "seconds (e.g. 3600), or 0 to keep queued requests forever";
    let seconds = parse_seconds(value, what)?;
    Ok((!seconds.is_zero()).then_some(seconds))
}

/// An origin-form path (and query) for the check's request line; empty = checks off.
fn parse_health_check_path(value: &str) -> Result<Option<String>, String> {
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
fn parse_check_count(value: &str) -> Result<u32, String> {
    parse_usize_in(value, (1, 100)).map(|n| n as u32)
}

fn parse_endpoints(value: &str) -> Result<Vec<Endpoint>, String> {
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
enum HeaderSide {
    Request,
    Response,
}

/// `Name: value|Name: value`; an empty setting means no headers. A value cannot hold
/// `|`, the separator.
fn parse_headers(value: &str, side: HeaderSide) -> Result<Vec<(String, String)>, String> {
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

fn parse_header(entry: &str, side: HeaderSide) -> Result<(String, String), String> {
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
fn is_token(name: &str) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty() && name.bytes().all(tchar)
}

fn is_managed_header(name: &str, side: HeaderSide) -> bool {
    let host_on_request = side == HeaderSide::Request && name.eq_ignore_ascii_case("Host");
    host_on_request || MANAGED_HEADERS.iter().any(|m| m.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "t.properties";
    /// The two required keys; lines 1 and 2 of every test file.
    const BASE: &str = "ENDPOINTS=http://127.0.0.1:8001\nCONCURRENCY_PEAK=4\n";

    fn parse(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
        parse_reader(text.as_bytes(), Path::new(FILE))
    }

    fn parse_ok(text: &str) -> (Config, Vec<String>) {
        match parse(text) {
            Ok(parsed) => parsed,
            Err(e) => panic!("{text:?} should parse: {e}"),
        }
    }

    fn parse_err(text: &str) -> ConfigError {
        match parse(text) {
            Ok((config, _)) => panic!("{text:?} should fail, got {config:?}"),
            Err(e) => e,
        }
    }

    /// BASE plus `extra`, which must parse without warnings. A key of BASE that
    /// `extra` sets is left out of BASE.
    fn config_with(extra: &str) -> Config {
        let overridden = |base_line: &str| {
            let key = base_line.split('=').next().unwrap_or_default();
            extra.lines().any(|l| l.starts_with(&format!("{key}=")))
        };
        let base: String = BASE
            .lines()
            .filter(|l| !overridden(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let (config, warnings) = parse_ok(&format!("{base}{extra}\n"));
        assert!(warnings.is_empty(), "{extra:?}: {warnings:?}");
        config
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn endpoint(scheme: Scheme, host: &str, port: u16) -> Endpoint {
        Endpoint {
            scheme,
            host: host.to_string(),
            port,
        }
    }

    /// `KEY=input` on line 3 yields `field == want`, for each (input, want).
    macro_rules! assert_values {
        ($key:literal, $field:ident, [$(($input:expr, $want:expr)),* $(,)?]) => {
            $(
                assert_eq!(
                    config_with(&format!("{}={}", $key, $input)).$field,
                    $want,
                    "{}={}",
                    $key,
                    $input
                );
            )*
        };
    }

    #[test]
    fn every_default() {
        let c = config_with("");
        assert_eq!(c.source, PathBuf::from(FILE));
        assert_eq!(c.listener_port, 5252);
        assert_eq!(c.listener_address, "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(c.endpoints, vec![endpoint(Scheme::Http, "127.0.0.1", 8001)]);
        assert_eq!(c.concurrency_peak, 4);
        assert_eq!(c.outgoing_request_timeout, Some(secs(5.0)));
        assert_eq!(c.retry_gap, Duration::ZERO);
        assert_eq!(c.max_retries, 3);
        assert_eq!(c.keep_alive_timeout, Some(secs(120.0)));
        assert!(c.enable_deferred_q);
        assert!(!c.enable_upfront_q);
        assert_eq!(c.request_formats, RequestFormats::all());
        assert!(c.custom_response_headers.is_empty());
        assert!(c.custom_request_headers.is_empty());
        assert_eq!(
            c.error_log_file,
            PathBuf::from("/opt/serviceq/logs/serviceq_error.log")
        );
        assert!(!c.ssl_enable);
        assert_eq!(c.ssl_certificate_file, None);
        assert_eq!(c.ssl_private_key_file, None);
        assert_eq!(c.ssl_upstream_ca_file, None);
        assert!(c.ssl_upstream_verify);
        assert_eq!(c.deferred_q_dir, None);
        assert_eq!(c.deferred_q_fsync, FsyncPolicy::Always);
        assert_eq!(c.deferred_q_max_age, None);
        assert_eq!(c.max_request_body, 10_485_760);
        assert_eq!(c.max_header_size, 16_384);
        assert_eq!(c.max_headers, 100);
        assert_eq!(c.client_header_timeout, secs(10.0));
        assert_eq!(c.client_body_timeout, secs(60.0));
        assert_eq!(c.shutdown_grace, secs(10.0));
        assert_eq!(c.access_log_file, None);
        assert_eq!(c.admin_address, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.admin_port, 0);
        assert_eq!(c.health_check_path, None);
        assert_eq!(c.health_check_interval, secs(2.0));
        assert_eq!(c.health_check_timeout, secs(1.0));
        assert_eq!((c.health_check_rise, c.health_check_fall), (2, 3));
        assert_eq!(c.health_check_status, StatusRanges::default_healthy());
        assert_eq!(c.tunnel_idle_timeout, secs(300.0));
        assert_eq!(
            config_with("TUNNEL_IDLE_TIMEOUT=0.5").tunnel_idle_timeout,
            secs(0.5)
        );
    }

    #[test]
    fn health_check_settings() {
        let c = config_with(
            "HEALTH_CHECK_PATH=/healthz?deep=1\nHEALTH_CHECK_INTERVAL=0.2\nHEALTH_CHECK_TIMEOUT=0.5\n\
             HEALTH_CHECK_RISE=1\nHEALTH_CHECK_FALL=5\nHEALTH_CHECK_STATUS=200,204-205",
        );
        assert_eq!(c.health_check_path.as_deref(), Some("/healthz?deep=1"));
        assert_eq!(c.health_check_interval, secs(0.2));
        assert_eq!(c.health_check_timeout, secs(0.5));
        assert_eq!((c.health_check_rise, c.health_check_fall), (1, 5));
        assert!(c.health_check_status.contains(205) && !c.health_check_status.contains(201));
        assert_eq!(config_with("HEALTH_CHECK_PATH=").health_check_path, None);
        for bad in [
            "HEALTH_CHECK_PATH=healthz",
            "HEALTH_CHECK_PATH=/a b",
            "HEALTH_CHECK_INTERVAL=0",
            "HEALTH_CHECK_TIMEOUT=-1",
            "HEALTH_CHECK_RISE=0",
            "HEALTH_CHECK_FALL=101",
            "HEALTH_CHECK_STATUS=2xx",
        ] {
            let e = parse_err(&format!("{BASE}{bad}\n"));
            let key = bad.split('=').next().unwrap();
            assert_eq!(
                (e.line, e.key.as_deref()),
                (Some(3), Some(key)),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn max_retries_default_is_two_n_plus_one() {
        let three = "ENDPOINTS=http://a:1,http://b:2,http://c:3\nCONCURRENCY_PEAK=1\n";
        assert_eq!(parse_ok(three).0.max_retries, 7);
        // An explicit value wins whatever its position relative to ENDPOINTS.
        let explicit = "MAX_RETRIES=2\nENDPOINTS=http://a:1,http://b:2\nCONCURRENCY_PEAK=1\n";
        assert_eq!(parse_ok(explicit).0.max_retries, 2);
        let many = vec![endpoint(Scheme::Http, "a", 1); 5];
        assert_eq!(
            Config::with_defaults(PathBuf::new(), many, 1).max_retries,
            11
        );
    }

    #[test]
    fn valid_values_of_scalar_keys() {
        assert_values!(
            "LISTENER_PORT",
            listener_port,
            [("0", 0), ("80", 80), ("65535", 65535)]
        );
        assert_values!("ADMIN_PORT", admin_port, [("0", 0), ("9090", 9090)]);
        let v6: IpAddr = "::".parse().unwrap();
        assert_values!("LISTENER_ADDRESS", listener_address, [("::", v6)]);
        let local: IpAddr = "::1".parse().unwrap();
        assert_values!("ADMIN_ADDRESS", admin_address, [("::1", local)]);
        assert_values!(
            "CONCURRENCY_PEAK",
            concurrency_peak,
            [("1", 1), ("65536", 65536)]
        );
        assert_values!("MAX_RETRIES", max_retries, [("1", 1), ("10", 10)]);
        assert_values!(
            "MAX_REQUEST_BODY",
            max_request_body,
            [("0", 0), ("1024", 1024)]
        );
        assert_values!(
            "MAX_HEADER_SIZE",
            max_header_size,
            [("1024", 1024), ("1048576", 1_048_576)]
        );
        assert_values!("MAX_HEADERS", max_headers, [("1", 1), ("1000", 1000)]);
        assert_values!(
            "CLIENT_BODY_BUFFER_SIZE",
            client_body_buffer_size,
            [("1024", 1024), ("65536", 65536), ("67108864", 64 << 20)]
        );
        assert_values!(
            "DEFERRED_Q_MAX_MEMORY",
            deferred_q_max_memory,
            [("0", 0), ("1048576", 1 << 20)]
        );
        assert_values!(
            "DEFERRED_Q_FSYNC",
            deferred_q_fsync,
            [
                ("always", FsyncPolicy::Always),
                ("INTERVAL", FsyncPolicy::Interval),
                ("Never", FsyncPolicy::Never),
            ]
        );
    }

    #[test]
    fn valid_booleans() {
        for (input, want) in [("true", true), ("TRUE", true), ("True", true), ("1", true)] {
            assert_eq!(
                config_with(&format!("ENABLE_UPFRONT_Q={input}")).enable_upfront_q,
                want
            );
        }
        for (input, want) in [("false", false), ("FALSE", false), ("0", false)] {
            assert_eq!(
                config_with(&format!("ENABLE_DEFERRED_Q={input}")).enable_deferred_q,
                want
            );
        }
        let files = "SSL_CERTIFICATE_FILE=c.pem\nSSL_PRIVATE_KEY_FILE=k.pem\n";
        assert!(config_with(&format!("SSL_ENABLE=1\n{files}")).ssl_enable);
        assert!(!config_with("SSL_ENABLE=false").ssl_enable);
        assert!(config_with("SSL_UPSTREAM_VERIFY=true").ssl_upstream_verify);
        config_with("SSL_AUTO_ENABLE=false");
        config_with("SSL_AUTO_ENABLE=0");
        let auto =
            config_with("SSL_ENABLE=true\nSSL_AUTO_ENABLE=true\nSSL_AUTO_DOMAINS=A.test, b.test");
        assert!(auto.ssl_auto_enable && auto.ssl_certificate_file.is_none());
        assert_eq!(auto.ssl_auto_domains, ["a.test", "b.test"]);
        assert_eq!(auto.ssl_auto_directory_url, LETS_ENCRYPT_DIRECTORY);
        assert_eq!(auto.ssl_auto_http_port, 80);
        let body = format!("{BASE}SSL_ENABLE=true\nSSL_AUTO_ENABLE=true\nSSL_AUTO_DOMAINS=a.test\nSSL_CERTIFICATE_FILE=c.pem\n");
        let (_, warnings) = parse(&body).unwrap();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("SSL_CERTIFICATE_FILE: not used")),
            "{warnings:?}"
        );
        let e = parse_err(&format!("{BASE}SSL_ENABLE=true\nSSL_AUTO_ENABLE=true\n"));
        assert!(e.to_string().contains("SSL_AUTO_DOMAINS: missing"), "{e}");
    }

    #[test]
    fn valid_seconds() {
        assert_values!(
            "OUTGOING_REQUEST_TIMEOUT",
            outgoing_request_timeout,
            [
                ("-1", None),
                ("5", Some(secs(5.0))),
                ("0.25", Some(secs(0.25)))
            ]
        );
        assert_values!(
            "RETRY_GAP",
            retry_gap,
            [("0", Duration::ZERO), ("1.5", secs(1.5))]
        );
        assert_values!(
            "KEEP_ALIVE_TIMEOUT",
            keep_alive_timeout,
            [
                ("-1", None),
                ("0", Some(Duration::ZERO)),
                ("2.5", Some(secs(2.5)))
            ]
        );
        assert_values!(
            "DEFERRED_Q_MAX_AGE",
            deferred_q_max_age,
            [("0", None), ("0.0", None), ("3600", Some(secs(3600.0)))]
        );
        assert_values!(
            "CLIENT_HEADER_TIMEOUT",
            client_header_timeout,
            [("0.5", secs(0.5))]
        );
        assert_values!(
            "CLIENT_BODY_TIMEOUT",
            client_body_timeout,
            [("30", secs(30.0))]
        );
        assert_values!(
            "SHUTDOWN_GRACE",
            shutdown_grace,
            [("0", Duration::ZERO), ("2", secs(2.0))]
        );
        // Nanosecond precision without float rounding; finer digits are dropped.
        assert_values!(
            "RETRY_GAP",
            retry_gap,
            [
                ("0.000000001", Duration::from_nanos(1)),
                ("1.0000000019", Duration::new(1, 1)),
                ("0.1", Duration::from_millis(100)),
            ]
        );
    }

    #[test]
    fn paths_stay_as_written() {
        assert_values!(
            "ERROR_LOG_FILE",
            error_log_file,
            [
                ("logs/e.log", PathBuf::from("logs/e.log")),
                ("/var/log/e", PathBuf::from("/var/log/e"))
            ]
        );
        assert_values!(
            "ACCESS_LOG_FILE",
            access_log_file,
            [("a.log", Some(PathBuf::from("a.log"))), ("", None)]
        );
        assert_values!(
            "DEFERRED_Q_DIR",
            deferred_q_dir,
            [("q", Some(PathBuf::from("q"))), ("", None)]
        );
        assert_values!(
            "SSL_UPSTREAM_CA_FILE",
            ssl_upstream_ca_file,
            [("./ca.pem", Some(PathBuf::from("./ca.pem"))), ("", None)]
        );
        // Spaces inside a path are kept; only the ends are trimmed.
        assert_values!(
            "ACCESS_LOG_FILE",
            access_log_file,
            [("  my logs/a.log  ", Some(PathBuf::from("my logs/a.log")))]
        );
    }

    #[test]
    fn proto_accepts_http_in_any_case() {
        config_with("PROTO=http");
        config_with("PROTO=HTTP");
    }

    /// (line 3, substring of the Display); the error must sit on line 3 and name the key.
    const INVALID: &[(&str, &str)] = &[
        (
            "LISTENER_PORT=65536",
            "expected a port from 0 to 65535, got \"65536\"",
        ),
        ("LISTENER_PORT=-1", "got \"-1\""),
        ("LISTENER_PORT=+80", "got \"+80\""),
        ("LISTENER_PORT=", "got \"\""),
        ("LISTENER_PORT=80 80", "got \"80 80\""),
        ("ADMIN_PORT=99999", "expected a port"),
        (
            "CLIENT_BODY_BUFFER_SIZE=1023",
            "an integer from 1024 to 67108864",
        ),
        ("CLIENT_BODY_TEMP_DIR=", "expected a file path"),
        ("DEFERRED_Q_MAX_MEMORY=-1", "a number of bytes"),
        ("LISTENER_ADDRESS=localhost", "expected an IP address"),
        ("LISTENER_ADDRESS=[::]", "expected an IP address"),
        ("ADMIN_ADDRESS=1.2.3", "expected an IP address"),
        ("PROTO=https", "expected \"http\""),
        ("PROTO=tcp", "got \"tcp\""),
        (
            "CONCURRENCY_PEAK=lots",
            "expected a positive integer, got \"lots\"",
        ),
        (
            "CONCURRENCY_PEAK=0",
            "expected a positive integer, got \"0\"",
        ),
        ("CONCURRENCY_PEAK=65537", "at most 65536, got \"65537\""),
        (
            "CONCURRENCY_PEAK=99999999999999999999999",
            "expected a positive integer",
        ),
        ("CONCURRENCY_PEAK=1e3", "got \"1e3\""),
        ("CONCURRENCY_PEAK=", "got \"\""),
        ("OUTGOING_REQUEST_TIMEOUT=0", "greater than 0"),
        ("OUTGOING_REQUEST_TIMEOUT=5s", "got \"5s\""),
        (
            "OUTGOING_REQUEST_TIMEOUT=-2",
            "or -1 for no timeout, got \"-2\"",
        ),
        ("OUTGOING_REQUEST_TIMEOUT=-1.0", "got \"-1.0\""),
        ("OUTGOING_REQUEST_TIMEOUT=", "got \"\""),
        ("RETRY_GAP=-1", "got \"-1\""),
        ("RETRY_GAP=1e3", "got \"1e3\""),
        ("RETRY_GAP=.5", "got \".5\""),
        ("RETRY_GAP=5.", "got \"5.\""),
        ("RETRY_GAP=1.2.3", "got \"1.2.3\""),
        ("RETRY_GAP=1000000000", "less than 1000000000 seconds"),
        ("RETRY_GAP=lots", "got \"lots\""),
        ("MAX_RETRIES=0", "expected a positive integer, got \"0\""),
        ("MAX_RETRIES=-1", "expected a positive integer"),
        ("MAX_RETRIES=4294967296", "expected a positive integer"),
        ("MAX_RETRIES=2.5", "expected a positive integer"),
        ("KEEP_ALIVE_TIMEOUT=-5", "or -1 for no limit, got \"-5\""),
        ("KEEP_ALIVE_TIMEOUT=forever", "got \"forever\""),
        (
            "ENABLE_DEFERRED_Q=yes",
            "expected true or false, got \"yes\"",
        ),
        ("ENABLE_UPFRONT_Q=2", "expected true or false"),
        ("ENABLE_UPFRONT_Q=", "expected true or false, got \"\""),
        ("SSL_ENABLE=on", "expected true or false"),
        ("SSL_UPSTREAM_VERIFY=no", "expected true or false"),
        ("SSL_AUTO_ENABLE=maybe", "expected true or false"),
        (
            "SSL_AUTO_ENABLE=true",
            "needs SSL_ENABLE=true (the certificates are for the TLS listener)",
        ),
        ("SSL_AUTO_DOMAINS=*.example.com", "no wildcards"),
        (
            "SSL_AUTO_DIRECTORY_URL=http://acme.test/dir",
            "expected an https:// URL",
        ),
        ("DEFERRED_Q_REQUEST_FORMATS=post", "malformed rule \"post\""),
        ("DEFERRED_Q_REQUEST_FORMATS=POST,,PUT", "empty rule #2"),
        ("DEFERRED_Q_REQUEST_FORMATS=", "empty rule #1"),
        (
            "DEFERRED_Q_REQUEST_FORMATS=FOO BAR BAZ QUX",
            "malformed rule \"FOO BAR BAZ QUX\": expected METHOD [ROUTE] [!]",
        ),
        (
            "DEFERRED_Q_FSYNC=sometimes",
            "expected always, interval or never, got \"sometimes\"",
        ),
        ("DEFERRED_Q_MAX_AGE=-1", "got \"-1\""),
        ("DEFERRED_Q_MAX_AGE=1h", "got \"1h\""),
        (
            "MAX_REQUEST_BODY=10MB",
            "expected a number of bytes (0 or more), got \"10MB\"",
        ),
        ("MAX_REQUEST_BODY=-1", "got \"-1\""),
        (
            "MAX_HEADER_SIZE=1023",
            "expected an integer from 1024 to 1048576, got \"1023\"",
        ),
        ("MAX_HEADER_SIZE=1048577", "from 1024 to 1048576"),
        (
            "MAX_HEADERS=0",
            "expected an integer from 1 to 1000, got \"0\"",
        ),
        ("MAX_HEADERS=1001", "from 1 to 1000"),
        (
            "CLIENT_HEADER_TIMEOUT=0",
            "expected seconds greater than 0, e.g. 10 or 0.5, got \"0\"",
        ),
        ("CLIENT_HEADER_TIMEOUT=-1", "got \"-1\""),
        ("CLIENT_BODY_TIMEOUT=0.0", "greater than 0"),
        ("SHUTDOWN_GRACE=-1", "got \"-1\""),
        ("ERROR_LOG_FILE=", "expected a file path, got \"\""),
        (
            "ENDPOINTS=",
            "expected a comma-separated list of scheme://host[:port], got \"\"",
        ),
        (
            "CUSTOM_RESPONSE_HEADERS=X-A",
            "header \"X-A\": expected Name: value",
        ),
        (
            "CUSTOM_REQUEST_HEADERS=Server",
            "header \"Server\": expected Name: value",
        ),
    ];

    #[test]
    fn invalid_values_are_line_numbered_errors() {
        for &(line, want) in INVALID {
            let e = parse_err(&format!("{BASE}{line}\n"));
            let key = line.split('=').next().unwrap_or_default();
            assert_eq!(e.line, Some(3), "{line:?}: {e}");
            assert_eq!(e.key.as_deref(), Some(key), "{line:?}: {e}");
            let shown = e.to_string();
            assert!(shown.starts_with(&format!("{FILE}:3: {key}: ")), "{shown}");
            assert!(shown.contains(want), "{line:?}: {shown:?} lacks {want:?}");
        }
    }

    #[test]
    fn error_display_matches_spec_examples() {
        let text = "# ServiceQ\n\nLISTENER_PORT=5252\nPROTO=http\nENDPOINTS=http://a:1\n\nCONCURRENCY_PEAK=lots\n";
        let e = parse_reader(text.as_bytes(), Path::new("conf/sq.properties")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "conf/sq.properties:7: CONCURRENCY_PEAK: expected a positive integer, got \"lots\""
        );
        let e = parse_reader(
            &b"CONCURRENCY_PEAK=1\n"[..],
            Path::new("conf/sq.properties"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "conf/sq.properties: ENDPOINTS: missing (required)"
        );
        assert_eq!((e.line, e.key.as_deref()), (None, Some("ENDPOINTS")));
    }

    #[test]
    fn required_keys() {
        let e = parse_err("ENDPOINTS=http://a\n");
        assert_eq!(
            e.to_string(),
            "t.properties: CONCURRENCY_PEAK: missing (required)"
        );
        let e = parse_err("");
        assert_eq!(e.key.as_deref(), Some("ENDPOINTS"));
        // A commented-out key is not given.
        let e = parse_err("#ENDPOINTS=http://a\nCONCURRENCY_PEAK=1\n");
        assert_eq!(e.key.as_deref(), Some("ENDPOINTS"));
    }

    #[test]
    fn line_syntax_errors() {
        let e = parse_err(&format!("{BASE}\nLISTENER_PORT 5252\n"));
        assert_eq!(
            e.to_string(),
            "t.properties:4: expected KEY=VALUE, got \"LISTENER_PORT 5252\""
        );
        assert_eq!(e.key, None);
        let e = parse_err(&format!("{BASE}  = 5\n"));
        assert_eq!(
            e.to_string(),
            "t.properties:3: expected KEY=VALUE, the key is missing in \"= 5\""
        );
        let e = parse_reader(
            &b"ENDPOINTS=http://a\nCONCURRENCY_PEAK=\xff\n"[..],
            Path::new(FILE),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "t.properties:2: not valid UTF-8");
    }

    #[test]
    fn comments_blanks_and_whitespace() {
        let text = "\n   \n# comment\n   # indented comment = with equals\n\t\n  ENDPOINTS  =  http://a:1  \nCONCURRENCY_PEAK =7\n#CONCURRENCY_PEAK=9\n";
        let (config, warnings) = parse_ok(text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(config.concurrency_peak, 7);
        assert_eq!(config.endpoints, vec![endpoint(Scheme::Http, "a", 1)]);
    }

    #[test]
    fn equals_and_hash_inside_values() {
        let c = config_with("CUSTOM_REQUEST_HEADERS=X-A: b=c");
        assert_eq!(
            c.custom_request_headers,
            vec![("X-A".to_string(), "b=c".to_string())]
        );
        let c = config_with("CUSTOM_RESPONSE_HEADERS=X-Tag: #1 # not a comment");
        assert_eq!(
            c.custom_response_headers,
            vec![("X-Tag".to_string(), "#1 # not a comment".to_string())]
        );
        assert_eq!(
            config_with("ACCESS_LOG_FILE=a#b.log").access_log_file,
            Some(PathBuf::from("a#b.log"))
        );
        // "#" after a value is part of it, so this is an invalid port, not a comment.
        let e = parse_err(&format!("{BASE}LISTENER_PORT=80 # web\n"));
        assert!(e.to_string().contains("got \"80 # web\""), "{e}");
    }

    #[test]
    fn duplicate_key_warns_and_last_wins() {
        let (config, warnings) = parse_ok(&format!("{BASE}LISTENER_PORT=1\nLISTENER_PORT=2\n"));
        assert_eq!(config.listener_port, 2);
        assert_eq!(
            warnings,
            vec!["t.properties:4: LISTENER_PORT: given again (also on line 3); the last one, line 4, wins"]
        );
        // An invalid value that is overridden later is never validated.
        let (config, _) = parse_ok(&format!("{BASE}LISTENER_PORT=lots\nLISTENER_PORT=3\n"));
        assert_eq!(config.listener_port, 3);
        // ...but the error for the surviving value points at its own line.
        let e = parse_err(&format!("{BASE}LISTENER_PORT=3\nLISTENER_PORT=lots\n"));
        assert_eq!(e.line, Some(4));
    }

    #[test]
    fn unknown_keys_warn() {
        let (config, warnings) = parse_ok(&format!("{BASE}UNKNOWN_KEY=1\nlistener_port=80\n"));
        assert_eq!(config.listener_port, 5252);
        assert_eq!(
            warnings,
            vec![
                "t.properties:3: UNKNOWN_KEY: unknown key (ignored)",
                "t.properties:4: listener_port: unknown key (ignored; keys are case-sensitive: did you mean LISTENER_PORT?)",
            ]
        );
    }

    #[test]
    fn crlf_and_bom() {
        let text = "\u{feff}ENDPOINTS=http://a:1\r\n# c\r\n\r\nCONCURRENCY_PEAK=3\r\nACCESS_LOG_FILE=a.log\r\n";
        let (config, warnings) = parse_ok(text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(config.concurrency_peak, 3);
        assert_eq!(config.access_log_file, Some(PathBuf::from("a.log")));
        // The BOM must not become part of the first key (which would be unknown).
        let (_, warnings) = parse_ok("\u{feff}ENDPOINTS=http://a\nCONCURRENCY_PEAK=1");
        assert!(warnings.is_empty(), "{warnings:?}");
        // Errors on CRLF files still count lines right and do not quote the "\r".
        let e = parse_err("ENDPOINTS=http://a\r\nCONCURRENCY_PEAK=x\r\n");
        assert_eq!(
            e.to_string(),
            "t.properties:2: CONCURRENCY_PEAK: expected a positive integer, got \"x\""
        );
    }

    #[test]
    fn endpoints_parse() {
        let cases = [
            (
                "http://127.0.0.1:8001",
                endpoint(Scheme::Http, "127.0.0.1", 8001),
            ),
            (
                "http://example.com",
                endpoint(Scheme::Http, "example.com", 80),
            ),
            (
                "https://example.com",
                endpoint(Scheme::Https, "example.com", 443),
            ),
            (
                "HTTPS://api.server0.com:8000/",
                endpoint(Scheme::Https, "api.server0.com", 8000),
            ),
            ("http://[::1]:8080", endpoint(Scheme::Http, "::1", 8080)),
            (
                "https://[2001:db8::5]",
                endpoint(Scheme::Https, "2001:db8::5", 443),
            ),
            ("http://[::1]/", endpoint(Scheme::Http, "::1", 80)),
            (
                "http://my_host-1.local:65535",
                endpoint(Scheme::Http, "my_host-1.local", 65535),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Endpoint>(), Ok(want), "{input}");
        }
        let c = config_with("ENDPOINTS= http://a:1 ,  https://b ,http://[::1]:2");
        assert_eq!(
            c.endpoints,
            vec![
                endpoint(Scheme::Http, "a", 1),
                endpoint(Scheme::Https, "b", 443),
                endpoint(Scheme::Http, "::1", 2),
            ]
        );
        assert_eq!(c.max_retries, 7);
    }

    #[test]
    fn endpoint_errors() {
        let cases = [
            (
                "ENDPOINTS=127.0.0.1:8001",
                "endpoint \"127.0.0.1:8001\": no scheme",
            ),
            ("ENDPOINTS=ftp://a", "scheme \"ftp\" must be http or https"),
            (
                "ENDPOINTS=http://a,,http://b",
                "empty entry #2 in \"http://a,,http://b\"",
            ),
            ("ENDPOINTS=http://a,", "empty entry #2"),
            ("ENDPOINTS=,http://a", "empty entry #1"),
            ("ENDPOINTS=http://a/api", "a path is not allowed"),
            ("ENDPOINTS=http://a//", "a path is not allowed"),
            ("ENDPOINTS=http://a?x=1", "a path is not allowed"),
            ("ENDPOINTS=http://user:pw@a", "user information"),
            (
                "ENDPOINTS=http://a:0",
                "expected a port from 1 to 65535, got \"0\"",
            ),
            ("ENDPOINTS=http://a:65536", "got \"65536\""),
            ("ENDPOINTS=http://a:", "got \"\""),
            ("ENDPOINTS=http://a:x", "got \"x\""),
            ("ENDPOINTS=http://", "the host is missing"),
            ("ENDPOINTS=http://:80", "the host is missing"),
            ("ENDPOINTS=http://::1", "IPv6 addresses need brackets"),
            ("ENDPOINTS=http://::1:8080", "IPv6 addresses need brackets"),
            ("ENDPOINTS=http://[::1", "unclosed \"[\""),
            (
                "ENDPOINTS=http://[nope]:80",
                "\"nope\" is not an IPv6 address",
            ),
            (
                "ENDPOINTS=http://[::1]8080",
                "expected :port after the IPv6 address",
            ),
            (
                "ENDPOINTS=http://10.0.0.256",
                "\"10.0.0.256\" is not an IPv4 address",
            ),
            ("ENDPOINTS=http://a b", "\"a b\" is not a valid host name"),
            (
                "ENDPOINTS=http://a b:1,http://c",
                "is not a valid host name",
            ),
        ];
        for (line, want) in cases {
            let e = parse_err(&format!("CONCURRENCY_PEAK=1\n{line}\n"));
            assert_eq!(
                (e.line, e.key.as_deref()),
                (Some(2), Some("ENDPOINTS")),
                "{line}"
            );
            assert!(e.to_string().contains(want), "{line}: {e} lacks {want:?}");
        }
    }

    #[test]
    fn endpoint_display_and_host_header() {
        let cases = [
            (
                endpoint(Scheme::Http, "127.0.0.1", 80),
                "http://127.0.0.1:80",
                "127.0.0.1",
                true,
            ),
            (
                endpoint(Scheme::Http, "127.0.0.1", 8080),
                "http://127.0.0.1:8080",
                "127.0.0.1:8080",
                false,
            ),
            (
                endpoint(Scheme::Https, "::1", 443),
                "https://[::1]:443",
                "[::1]",
                true,
            ),
            (
                endpoint(Scheme::Http, "::1", 8080),
                "http://[::1]:8080",
                "[::1]:8080",
                false,
            ),
            (
                endpoint(Scheme::Https, "api.example.com", 80),
                "https://api.example.com:80",
                "api.example.com:80",
                false,
            ),
            (
                endpoint(Scheme::Http, "api.example.com", 443),
                "http://api.example.com:443",
                "api.example.com:443",
                false,
            ),
        ];
        for (ep, display, host, default_port) in cases {
            assert_eq!(ep.to_string(), display);
            assert_eq!(ep.host_header(), host);
            assert_eq!(ep.is_default_port(), default_port, "{ep}");
            // Display re-parses to the same endpoint.
            assert_eq!(display.parse::<Endpoint>(), Ok(ep));
        }
        assert_eq!(
            "HTTP://a".parse::<Endpoint>().map(|e| e.to_string()),
            Ok("http://a:80".to_string())
        );
    }

    #[test]
    fn duplicate_endpoint_warns() {
        let (config, warnings) = parse_ok("ENDPOINTS=http://a,http://a:80\nCONCURRENCY_PEAK=1\n");
        assert_eq!(config.endpoints.len(), 2);
        assert_eq!(
            warnings,
            vec!["t.properties:1: ENDPOINTS: http://a:80 is listed more than once"]
        );
    }

    #[test]
    fn custom_headers() {
        let c = config_with(
            "CUSTOM_RESPONSE_HEADERS=Strict-Transport-Security:max-age=31536000|Server:sq v1.0",
        );
        assert_eq!(
            c.custom_response_headers,
            vec![
                (
                    "Strict-Transport-Security".to_string(),
                    "max-age=31536000".to_string()
                ),
                ("Server".to_string(), "sq v1.0".to_string()),
            ]
        );
        let c = config_with("CUSTOM_RESPONSE_HEADERS= X-A : 1 | Server |X-Empty:| X-Tab: a\tb ");
        let version = format!("serviceq/{}", env!("CARGO_PKG_VERSION"));
        assert_eq!(
            c.custom_response_headers,
            vec![
                ("X-A".to_string(), "1".to_string()),
                ("Server".to_string(), version),
                ("X-Empty".to_string(), String::new()),
                ("X-Tab".to_string(), "a\tb".to_string()),
            ]
        );
        let c = config_with("CUSTOM_REQUEST_HEADERS=X-Env: prod|X-Env: eu|X-Url: http://x:1/a");
        assert_eq!(c.custom_request_headers.len(), 3);
        assert_eq!(c.custom_request_headers[2].1, "http://x:1/a");
        assert!(config_with("CUSTOM_REQUEST_HEADERS=")
            .custom_request_headers
            .is_empty());
    }

    #[test]
    fn custom_header_errors() {
        let cases = [
            (
                "CUSTOM_RESPONSE_HEADERS=X-A: 1|X-B",
                "header \"X-B\": expected Name: value",
            ),
            ("CUSTOM_RESPONSE_HEADERS=X-A: 1||X-B: 2", "empty entry #2"),
            ("CUSTOM_RESPONSE_HEADERS=X-A: 1|", "empty entry #2"),
            ("CUSTOM_RESPONSE_HEADERS=|X-A: 1", "empty entry #1"),
            (
                "CUSTOM_RESPONSE_HEADERS=X A: 1",
                "\"X A\" is not a valid header name",
            ),
            (
                "CUSTOM_RESPONSE_HEADERS=: 1",
                "\"\" is not a valid header name",
            ),
            (
                "CUSTOM_RESPONSE_HEADERS=X-(A): 1",
                "is not a valid header name",
            ),
            (
                "CUSTOM_RESPONSE_HEADERS=X-Ä: 1",
                "is not a valid header name",
            ),
            (
                "CUSTOM_REQUEST_HEADERS=X-A: a\u{7f}b",
                "the value contains a control character",
            ),
            ("CUSTOM_REQUEST_HEADERS=X-A: a\u{1}b", "control character"),
            ("CUSTOM_REQUEST_HEADERS=X-A: a\rb", "control character"),
            (
                "CUSTOM_RESPONSE_HEADERS=Content-Length: 5",
                "Content-Length is set by ServiceQ itself",
            ),
            (
                "CUSTOM_RESPONSE_HEADERS=transfer-encoding: chunked",
                "is set by ServiceQ itself",
            ),
            (
                "CUSTOM_REQUEST_HEADERS=Connection: close",
                "is set by ServiceQ itself",
            ),
            (
                "CUSTOM_REQUEST_HEADERS=Host: example.com",
                "Host is set by ServiceQ itself",
            ),
        ];
        for (line, want) in cases {
            let e = parse_err(&format!("{BASE}{line}\n"));
            assert_eq!(e.line, Some(3), "{line}");
            assert!(e.to_string().contains(want), "{line}: {e} lacks {want:?}");
        }
        // Host is only reserved on the request side.
        config_with("CUSTOM_RESPONSE_HEADERS=Host: fine");
    }

    #[test]
    fn request_formats_and_alias() {
        let c =
            config_with("DEFERRED_Q_REQUEST_FORMATS=POST /orders !,POST,PUT /orders,PATCH,DELETE");
        assert!(c.request_formats.is_eligible("POST", "/users"));
        assert!(!c.request_formats.is_eligible("POST", "/orders"));
        let c = config_with("Q_REQUEST_FORMATS=PUT");
        assert!(c.request_formats.is_eligible("PUT", "/"));
        assert!(!c.request_formats.is_eligible("POST", "/"));
        // An error in the alias names the alias.
        let e = parse_err(&format!("{BASE}Q_REQUEST_FORMATS=put\n"));
        assert!(
            e.to_string()
                .starts_with("t.properties:3: Q_REQUEST_FORMATS: malformed rule"),
            "{e}"
        );
        // Both given: the canonical key wins wherever it is, with a warning.
        let (c, warnings) = parse_ok(&format!(
            "{BASE}DEFERRED_Q_REQUEST_FORMATS=PATCH\nQ_REQUEST_FORMATS=PUT\n"
        ));
        assert!(c.request_formats.is_eligible("PATCH", "/"));
        assert!(!c.request_formats.is_eligible("PUT", "/"));
        assert_eq!(
            warnings,
            vec!["t.properties:4: Q_REQUEST_FORMATS: ignored: DEFERRED_Q_REQUEST_FORMATS (line 3) is also given and wins"]
        );
    }

    #[test]
    fn tls_settings() {
        let e = parse_err(&format!("{BASE}SSL_ENABLE=true\n"));
        assert_eq!(
            e.to_string(),
            "t.properties: SSL_CERTIFICATE_FILE: missing (required when SSL_ENABLE=true)"
        );
        let e = parse_err(&format!(
            "{BASE}SSL_ENABLE=true\nSSL_CERTIFICATE_FILE=c.pem\nSSL_PRIVATE_KEY_FILE=\n"
        ));
        assert_eq!(
            e.to_string(),
            "t.properties:5: SSL_PRIVATE_KEY_FILE: missing (required when SSL_ENABLE=true)"
        );
        let c = config_with(
            "SSL_ENABLE=TRUE\nSSL_CERTIFICATE_FILE=certs/c.pem\nSSL_PRIVATE_KEY_FILE=/k.pem",
        );
        assert_eq!(c.ssl_certificate_file, Some(PathBuf::from("certs/c.pem")));
        assert_eq!(c.ssl_private_key_file, Some(PathBuf::from("/k.pem")));
    }

    #[test]
    fn tls_warnings() {
        let (c, warnings) = parse_ok(&format!("{BASE}SSL_UPSTREAM_VERIFY=false\n"));
        assert!(!c.ssl_upstream_verify);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("t.properties:3: SSL_UPSTREAM_VERIFY: INSECURE: certificates of https:// endpoints are NOT verified"),
            "{warnings:?}"
        );
        let (_, warnings) = parse_ok(&format!("{BASE}SSL_CERTIFICATE_FILE=c.pem\n"));
        assert_eq!(
            warnings,
            vec!["t.properties:3: SSL_CERTIFICATE_FILE: ignored because SSL_ENABLE is false"]
        );
    }

    #[test]
    fn load_reports_unreadable_files() {
        let missing = Path::new("/nonexistent/sq.properties");
        let e = load(missing).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/nonexistent/sq.properties: cannot read: No such file or directory (os error 2)"
        );
        assert_eq!((e.line, e.key), (None, None));
        let e = load(Path::new("/")).unwrap_err();
        assert!(e.to_string().starts_with("/: cannot read: "), "{e}");
    }

    #[test]
    fn load_reads_a_file() {
        let path =
            std::env::temp_dir().join(format!("sq-config-test-{}.properties", std::process::id()));
        std::fs::write(&path, BASE).unwrap();
        let loaded = load(&path);
        std::fs::remove_file(&path).unwrap();
        let (config, warnings) = loaded.unwrap();
        assert_eq!(config.source, path);
        assert!(warnings.is_empty());
    }

    #[test]
    fn oversized_input_is_refused() {
        let huge = std::io::repeat(b'#').take(FILE_BYTES_MAX + 10);
        let e = parse_reader(huge, Path::new(FILE)).unwrap_err();
        assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
    }

    #[test]
    fn long_values_are_quoted_with_a_cap() {
        let long = "x".repeat(500);
        let e = parse_err(&format!("{BASE}LISTENER_PORT={long}\n"));
        assert!(e.to_string().len() < 200, "{e}");
        assert!(e.to_string().ends_with("..."), "{e}");
    }

    const EXAMPLE: &str = include_str!("../conf/sq.properties");

    #[test]
    fn example_file_parses_without_warnings() {
        let (config, warnings) =
            parse_reader(EXAMPLE.as_bytes(), Path::new("conf/sq.properties")).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(config.listener_port, 5252);
        assert_eq!(
            config.listener_address,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(config.concurrency_peak, 512);
        assert_eq!(config.endpoints.len(), 2);
        assert_eq!(config.max_retries, 5);
        assert_eq!(
            config.error_log_file,
            PathBuf::from("logs/serviceq_error.log")
        );
    }

    /// DEFERRED_Q_BACKEND defaults from DEFERRED_Q_DIR, takes the shared queue's URL,
    /// and must agree with DEFERRED_Q_DIR when both are given.
    #[test]
    fn queue_backend_and_shared_queue_keys() {
        assert_eq!(config_with("").deferred_q_backend, QueueBackend::Memory);
        let journal = config_with("DEFERRED_Q_DIR=q");
        assert_eq!(journal.deferred_q_backend, QueueBackend::Journal);
        let url = "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/sq";
        let shared = config_with(&format!(
            "DEFERRED_Q_BACKEND={url}\nDEFERRED_Q_NAME=orders\nDEFERRED_Q_REDIS_REPLICAS=1\n\
             DEFERRED_Q_REDIS_TIMEOUT=0.5\nDEFERRED_Q_REDIS_LEASE=3\nDEFERRED_Q_MAX_LEN=10"
        ));
        assert_eq!(shared.deferred_q_backend, QueueBackend::Redis(url.into()));
        assert_eq!(
            (
                shared.deferred_q_name.as_str(),
                shared.deferred_q_redis_replicas,
                shared.deferred_q_redis_timeout,
                shared.deferred_q_redis_lease,
                shared.deferred_q_max_len
            ),
            ("orders", 1, secs(0.5), secs(3.0), 10)
        );
        for (extra, key, says) in [
            (
                "DEFERRED_Q_BACKEND=journal",
                "DEFERRED_Q_BACKEND",
                "needs DEFERRED_Q_DIR",
            ),
            (
                "DEFERRED_Q_BACKEND=memory\nDEFERRED_Q_DIR=q",
                "DEFERRED_Q_DIR",
                "not journal",
            ),
            (
                "DEFERRED_Q_BACKEND=kafka",
                "DEFERRED_Q_BACKEND",
                "expected memory",
            ),
            (
                "DEFERRED_Q_BACKEND=redis://u:secret@h:port",
                "DEFERRED_Q_BACKEND",
                "u:***@h",
            ),
            ("DEFERRED_Q_NAME=a{b}", "DEFERRED_Q_NAME", "without spaces"),
            (
                "DEFERRED_Q_REDIS_LEASE=0.05",
                "DEFERRED_Q_REDIS_LEASE",
                "at least 0.1",
            ),
            (
                "DEFERRED_Q_REDIS_TIMEOUT=0",
                "DEFERRED_Q_REDIS_TIMEOUT",
                "greater than 0",
            ),
            ("DEFERRED_Q_MAX_LEN=0", "DEFERRED_Q_MAX_LEN", "from 1"),
        ] {
            let e = parse_err(&format!("{BASE}{extra}\n")).to_string();
            assert!(e.contains(key) && e.contains(says), "{extra}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    /// The example is the documentation: every key appears, set or commented out.
    #[test]
    fn example_file_documents_every_key() {
        for key in KEYS.iter().filter(|&&k| k != FORMATS_ALIAS) {
            let set = EXAMPLE.lines().any(|l| l.starts_with(&format!("{key}=")));
            let shown = EXAMPLE.lines().any(|l| l.starts_with(&format!("#{key}=")));
            assert!(set || shown, "conf/sq.properties does not show {key}");
        }
        assert!(EXAMPLE.contains(FORMATS_ALIAS));
    }

    /// Each commented-out default in the example, once uncommented, parses to the
    /// built-in default, so the documentation cannot drift from the code. Keys that are
    /// unset by default show an example value instead and are skipped.
    #[test]
    fn example_commented_defaults_match_the_code() {
        const UNSET_BY_DEFAULT: [&str; 7] = [
            "SSL_CERTIFICATE_FILE",
            "SSL_AUTO_DOMAINS",
            "SSL_AUTO_CA_FILE",
            "SSL_PRIVATE_KEY_FILE",
            "SSL_UPSTREAM_CA_FILE",
            "DEFERRED_Q_DIR",
            "ACCESS_LOG_FILE",
        ];
        let shows_default = |setting: &str| {
            let key = setting.split('=').next().unwrap_or_default();
            KEYS.contains(&key) && !UNSET_BY_DEFAULT.contains(&key)
        };
        let uncommented: String = EXAMPLE
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(setting) if shows_default(setting) => format!("{setting}\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        assert_ne!(uncommented, EXAMPLE);
        let (defaults, _) = parse_reader(EXAMPLE.as_bytes(), Path::new("x")).unwrap();
        let (c, warnings) = parse_reader(uncommented.as_bytes(), Path::new("x")).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(format!("{c:?}"), format!("{defaults:?}"));
    }

    /// No input panics: every prefix of the example, and every one with a byte flipped
    /// at the cut, parses or fails cleanly.
    #[test]
    fn truncated_or_corrupted_input_never_panics() {
        let bytes = EXAMPLE.as_bytes();
        for cut in 0..bytes.len() {
            let _ = parse_reader(&bytes[..cut], Path::new(FILE));
            let mut corrupted = bytes.to_vec();
            corrupted[cut] ^= 0x80;
            let _ = parse_reader(corrupted.as_slice(), Path::new(FILE));
        }
    }
}
