//! Reading `sq.properties` in two passes: every line into an entry of a known key
//! (warnings for unknown and repeated keys), then each key's value into its typed
//! `Config` field, with the line it came from for the error.

use crate::checks::StatusRanges;
use crate::formats::RequestFormats;
use std::collections::HashMap;
use std::path::Path;

use super::values::*;
use super::*;

// ---------------------------------------------------------------------------
// Pass 1: lines into entries

/// The value of one known key and the line it came from.
pub(super) struct Entry {
    line: usize,
    value: String,
}

/// Every known key given in the file (the last occurrence of each).
pub(super) struct Entries<'a> {
    file: &'a Path,
    map: HashMap<&'static str, Entry>,
}

impl<'a> Entries<'a> {
    pub(super) fn read(
        bytes: &[u8],
        file: &'a Path,
        warnings: &mut Vec<String>,
    ) -> Result<Self, ConfigError> {
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

    pub(super) fn insert(
        &mut self,
        key: &str,
        value: &str,
        line: usize,
        warnings: &mut Vec<String>,
    ) {
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
pub(super) fn split_line(raw: &str) -> Result<Option<(&str, &str)>, String> {
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

pub(super) fn unknown_key_message(key: &str) -> String {
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
    pub(super) fn build(&self, warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
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

    pub(super) fn read_listener(&self, c: &mut Config) -> Result<(), ConfigError> {
        self.set(&mut c.listener_port, "LISTENER_PORT", parse_port)?;
        self.set(&mut c.listener_address, "LISTENER_ADDRESS", parse_ip)?;
        self.check("PROTO", parse_proto)
    }

    pub(super) fn read_attempts(&self, c: &mut Config) -> Result<(), ConfigError> {
        let timeout = &mut c.outgoing_request_timeout;
        self.set(timeout, "OUTGOING_REQUEST_TIMEOUT", parse_outgoing_timeout)?;
        self.set(&mut c.retry_gap, "RETRY_GAP", parse_seconds_or_zero)?;
        self.set(&mut c.max_retries, "MAX_RETRIES", parse_max_retries)
    }

    pub(super) fn read_queue(
        &self,
        c: &mut Config,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
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
    pub(super) fn read_shared_queue(&self, c: &mut Config) -> Result<(), ConfigError> {
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

    pub(super) fn read_headers(&self, c: &mut Config) -> Result<(), ConfigError> {
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

    pub(super) fn read_client_limits(&self, c: &mut Config) -> Result<(), ConfigError> {
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

    pub(super) fn read_tls(&self, c: &mut Config) -> Result<(), ConfigError> {
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

    pub(super) fn read_logs_and_admin(&self, c: &mut Config) -> Result<(), ConfigError> {
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
        let token = &mut c.admin_token_file;
        self.set(token, "ADMIN_TOKEN_FILE", parse_optional_path)?;
        self.set(&mut c.admin_port, "ADMIN_PORT", parse_port)
    }

    pub(super) fn read_health_checks(&self, c: &mut Config) -> Result<(), ConfigError> {
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
    pub(super) fn set<T>(
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
    pub(super) fn check(
        &self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<(), String>,
    ) -> Result<(), ConfigError> {
        self.set(&mut (), key, parse)
    }

    pub(super) fn required<T>(
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
    pub(super) fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let line = self.map.get(key).map(|entry| entry.line);
        ConfigError::new(self.file, line, Some(key), message)
    }

    pub(super) fn warning(&self, key: &str, message: impl Into<String>) -> String {
        warning(
            self.file,
            self.map.get(key).map(|entry| entry.line),
            key,
            message,
        )
    }

    /// The key to read the request formats from: the alias only when the canonical
    /// key is absent, so that the documented name always wins.
    pub(super) fn formats_key(&self, warnings: &mut Vec<String>) -> &'static str {
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

    pub(super) fn read_ssl_auto(&self, c: &mut Config) -> Result<(), ConfigError> {
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
    pub(super) fn check_tls_files(&self, config: &Config) -> Result<(), ConfigError> {
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
    pub(super) fn collect_warnings(&self, config: &Config, warnings: &mut Vec<String>) {
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
