//! `Proxy`: what every thread shares for the life of the process — the logs, the
//! lingering closer, the request-id source, the queue, the listener's TLS — and the
//! swap of its reloadable [`Settings`] snapshot on SIGHUP.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use native_tls::TlsConnector;

use crate::accesslog::AccessLog;
use crate::attempt::Settings;
use crate::config::Config;
use crate::linger::Lingerer;
use crate::logging::ErrorLog;
use crate::queue::journal::{Journal, Pending};
use crate::queue::{self, Queue, Replay, ReplayContext};
use crate::tls::ListenerTls;
use crate::wakeup::Wakeup;

/// Unique request ids: a random per-process prefix and a counter, so ids never repeat
/// within a run and practically never across restarts.
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        RequestIds {
            prefix: rand::random(),
            counter: AtomicU64::new(0),
        }
    }

    /// Appends a fresh id to `out`: 16 hex digits of the process prefix, then 8 of a
    /// counter (wrapping after 2^32 ids, as before).
    pub fn next_into(&self, out: &mut String) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 24];
        hex_into(&mut id[..16], self.prefix);
        hex_into(&mut id[16..], n);
        // Hex digits are ASCII, so this never fails.
        if let Ok(id) = std::str::from_utf8(&id) {
            out.push_str(id);
        }
    }
}

/// The low `out.len()` hex digits of `n`, zero-padded, lower case.
fn hex_into(out: &mut [u8], mut n: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// A worker's copy of the settings and the reload generation it was taken at: one
/// atomic load tells whether it is still current (`Proxy::refresh`).
pub struct CachedSettings {
    generation: u64,
    pub current: Arc<Settings>,
}

/// What every thread shares for the life of the process.
pub struct Proxy {
    settings: RwLock<Arc<Settings>>,
    /// Bumped by every reload, so workers refresh their snapshot with one atomic load.
    generation: AtomicU64,
    pub errlog: ErrorLog,
    /// ACCESS_LOG_FILE, when set.
    pub access_log: Option<AccessLog>,
    pub linger: Lingerer,
    /// `serviceq:PORT`: the "endpoint" of 601 log lines.
    pub listener_label: String,
    pub ids: RequestIds,
    /// `X-Forwarded-Proto` as seen by clients.
    pub forwarded_proto: &'static str,
    pub queue: Queue,
    /// The listener's TLS when SSL_ENABLE=true (its certificate swapped by SIGHUP/ACME).
    pub tls: Option<Arc<ListenerTls>>,
    /// CONCURRENCY_PEAK: fixed for the life of the process (it sizes the worker pool).
    peak: usize,
    /// Cuts the replay thread's pause short when a health check sees an endpoint back.
    pub replay_wakeup: Wakeup,
    /// Wakes the health checker when a reload may have changed its settings.
    pub health_wakeup: Wakeup,
    stopping: AtomicBool,
}

/// The durable queue, opened at start-up: the journal and what it still held.
#[derive(Default)]
pub struct Durable {
    pub journal: Option<Arc<Journal>>,
    /// The requests it still held, in order (their payloads stay on disk).
    pub recovered: Vec<Pending>,
    /// The shared queue, when DEFERRED_Q_BACKEND names a Redis URL.
    pub shared: Option<crate::queue::redis::RedisBackend>,
}

/// The log files, opened at start-up.
pub struct Logs {
    pub errors: ErrorLog,
    pub access: Option<AccessLog>,
}

/// TLS for both sides, checked at start-up by `tls.rs`.
pub struct TlsSetup {
    pub acceptor: Option<Arc<ListenerTls>>,
    pub connector: Option<TlsConnector>,
}

impl Proxy {
    /// The proxy, and the consumer end of its queue for the replay thread.
    pub fn new(
        cfg: Config,
        logs: Logs,
        port: u16,
        tls: TlsSetup,
        durable: Durable,
    ) -> io::Result<(Self, Replay)> {
        let (queue, replay) = queue::channel(
            durable.journal,
            durable.recovered,
            durable.shared,
            cfg.deferred_q_max_memory,
            cfg.deferred_q_max_age,
        );
        let proxy = Proxy {
            queue,
            tls: tls.acceptor,
            peak: cfg.concurrency_peak,
            stopping: AtomicBool::new(false),
            replay_wakeup: Wakeup::new(),
            health_wakeup: Wakeup::new(),
            generation: AtomicU64::new(0),
            errlog: logs.errors,
            access_log: logs.access,
            linger: Lingerer::start()?,
            listener_label: format!("serviceq:{port}"),
            ids: RequestIds::new(),
            forwarded_proto: if cfg.ssl_enable { "https" } else { "http" },
            settings: RwLock::new(Arc::new(Settings::new(cfg, tls.connector, None))),
        };
        Ok((proxy, replay))
    }

    /// The current settings snapshot.
    pub fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Refreshes `cached` if a reload happened since it was taken.
    pub fn refresh(&self, cached: &mut CachedSettings) {
        let now = self.generation.load(Ordering::Acquire);
        if cached.generation != now {
            *cached = CachedSettings {
                generation: now,
                current: self.settings(),
            };
        }
    }

    /// A snapshot with its generation, for `refresh`.
    pub fn snapshot(&self) -> CachedSettings {
        CachedSettings {
            generation: self.generation.load(Ordering::Acquire),
            current: self.settings(),
        }
    }

    /// SIGHUP: re-reads the configuration file. Endpoints, request formats, headers,
    /// timeouts and retries apply to requests that start afterwards; nothing in flight
    /// or queued is dropped. Returns notes to log; on error the running settings stay.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let current = self.settings();
        let (cfg, mut notes) =
            crate::config::load(&current.cfg.source).map_err(|e| e.to_string())?;
        let connector = crate::tls::upstream_connector(&cfg)
            .map_err(|e| format!("{}: {}: {}", cfg.source.display(), e.key, e.message))?;
        notes.extend(restart_needed(&current.cfg, &cfg));
        // Last, as the one step that swaps something in place: nothing after it fails.
        if let Some(tls) = &self.tls {
            tls.reload(&cfg)
                .map_err(|e| format!("{}: {}: {}", cfg.source.display(), e.key, e.message))?;
        }
        let fresh = Settings::new(cfg, connector, Some(&current));
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.health_wakeup.wake();
        Ok(notes)
    }

    /// Marks the start of a graceful stop; true the first time only.
    pub fn begin_stop(&self) -> bool {
        !self.stopping.swap(true, Ordering::AcqRel)
    }

    /// Set once a stop began: connections close after their current request.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub fn peak(&self) -> usize {
        self.peak
    }
}

impl ReplayContext for Proxy {
    fn settings(&self) -> Arc<Settings> {
        Proxy::settings(self)
    }
    fn errlog(&self) -> &ErrorLog {
        &self.errlog
    }
    fn stopping(&self) -> bool {
        Proxy::stopping(self)
    }
    fn wakeup(&self) -> &Wakeup {
        &self.replay_wakeup
    }
}

/// Notes for keys whose change a reload cannot apply: they size the worker pool, own
/// sockets or files that are open, or are read once at start.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let changed = [
        ("LISTENER_PORT", old.listener_port != new.listener_port),
        (
            "LISTENER_ADDRESS",
            old.listener_address != new.listener_address,
        ),
        (
            "CONCURRENCY_PEAK",
            old.concurrency_peak != new.concurrency_peak,
        ),
        ("SSL_ENABLE", old.ssl_enable != new.ssl_enable),
        (
            "SSL_AUTO_ENABLE",
            old.ssl_auto_enable != new.ssl_auto_enable,
        ),
        (
            "SSL_AUTO_DOMAINS",
            old.ssl_auto_domains != new.ssl_auto_domains,
        ),
        (
            "SSL_AUTO_DIRECTORY_URL",
            old.ssl_auto_directory_url != new.ssl_auto_directory_url,
        ),
        (
            "SSL_AUTO_CACHE_DIR",
            old.ssl_auto_cache_dir != new.ssl_auto_cache_dir,
        ),
        (
            "SSL_AUTO_HTTP_PORT",
            old.ssl_auto_http_port != new.ssl_auto_http_port,
        ),
        (
            "SSL_AUTO_CA_FILE",
            old.ssl_auto_ca_file != new.ssl_auto_ca_file,
        ),
        ("ERROR_LOG_FILE", old.error_log_file != new.error_log_file),
        ("DEFERRED_Q_DIR", old.deferred_q_dir != new.deferred_q_dir),
        (
            "DEFERRED_Q_MAX_MEMORY",
            old.deferred_q_max_memory != new.deferred_q_max_memory,
        ),
        (
            "DEFERRED_Q_FSYNC",
            old.deferred_q_fsync != new.deferred_q_fsync,
        ),
        (
            "DEFERRED_Q_BACKEND",
            old.deferred_q_backend != new.deferred_q_backend,
        ),
        (
            "DEFERRED_Q_NAME",
            old.deferred_q_name != new.deferred_q_name,
        ),
        (
            "DEFERRED_Q_REDIS_REPLICAS",
            old.deferred_q_redis_replicas != new.deferred_q_redis_replicas,
        ),
        (
            "DEFERRED_Q_REDIS_TIMEOUT",
            old.deferred_q_redis_timeout != new.deferred_q_redis_timeout,
        ),
        (
            "DEFERRED_Q_REDIS_LEASE",
            old.deferred_q_redis_lease != new.deferred_q_redis_lease,
        ),
        (
            "DEFERRED_Q_MAX_LEN",
            old.deferred_q_max_len != new.deferred_q_max_len,
        ),
        (
            "ACCESS_LOG_FILE",
            old.access_log_file != new.access_log_file,
        ),
        ("ADMIN_ADDRESS", old.admin_address != new.admin_address),
        ("ADMIN_PORT", old.admin_port != new.admin_port),
        (
            "ADMIN_TOKEN_FILE",
            old.admin_token_file != new.admin_token_file,
        ),
    ];
    changed
        .iter()
        .filter(|(_, c)| *c)
        .map(|(key, _)| format!("{key} changed: the new value applies after a restart"))
        .collect()
}
