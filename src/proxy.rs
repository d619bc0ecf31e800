//! `Proxy`: what every thread shares — the logs, the lingering closer, the request-id
//! source, the queue — and `Settings`, the reloadable part: the configuration, the
//! endpoints and the pre-rendered custom headers.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use native_tls::TlsConnector;

use rand::rngs::SmallRng;

use crate::accesslog::AccessLog;
use crate::balancer;
use crate::buffer::IoBuf;
use crate::config::Config;
use crate::error::{AttemptError, Reply};
use crate::http::ResponseHead;
use crate::journal::{Journal, Pending};
use crate::linger::Lingerer;
use crate::logging::ErrorLog;
use crate::queue::{self, Queue, Replay};
use crate::tls::ListenerTls;
use crate::upstream::{Exchange, Held, OutgoingRequest, Upstreams};
use crate::wakeup::Wakeup;

/// Header lines added to every message in one direction, pre-rendered once.
pub struct CustomHeaders {
    /// `Name: value\r\n` for each.
    pub rendered: Vec<u8>,
    /// Lower-cased names, to drop same-named headers they replace.
    pub names: Vec<String>,
}

impl CustomHeaders {
    pub fn new(pairs: &[(String, String)]) -> Self {
        let mut rendered = Vec::new();
        for (name, value) in pairs {
            rendered.extend_from_slice(name.as_bytes());
            rendered.extend_from_slice(b": ");
            rendered.extend_from_slice(value.as_bytes());
            rendered.extend_from_slice(b"\r\n");
        }
        CustomHeaders {
            rendered,
            names: pairs.iter().map(|(n, _)| n.to_ascii_lowercase()).collect(),
        }
    }

    pub fn replaces(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

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

/// Per-thread state for `try_endpoints`, kept to avoid an allocation per request.
pub struct Scratch {
    pub errors: Vec<u32>,
    /// The health checks' verdicts at the first attempt (`Upstreams::down_mask`).
    pub down: Vec<bool>,
    pub rng: SmallRng,
    /// Attempts the last `try_endpoints` made (for the access log).
    pub attempts: u32,
    /// The endpoint connections this thread keeps between requests.
    pub held: Held,
    /// Storage for response heads: an `Exchange` takes it, and the caller gives it
    /// back with [`Scratch::reuse_head`] once the response is relayed.
    pub resp: ResponseHead,
}

impl Scratch {
    pub fn new() -> Self {
        use rand::SeedableRng;
        Scratch {
            errors: Vec::new(),
            down: Vec::new(),
            rng: SmallRng::from_entropy(),
            attempts: 0,
            held: Held::default(),
            resp: ResponseHead::empty(),
        }
    }

    /// Gives back the head an `Exchange` took, so the next response reuses its buffers.
    pub fn reuse_head(&mut self, head: ResponseHead) {
        self.resp = head;
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything a SIGHUP may change (SPEC §10): the configuration and what is derived
/// from it. A request uses one snapshot from start to end; a reload swaps in a new one
/// for the requests that start after it.
pub struct Settings {
    pub cfg: Config,
    pub upstreams: Upstreams,
    pub response_headers: CustomHeaders,
    pub request_headers: CustomHeaders,
    /// Where request bodies beyond CLIENT_BODY_BUFFER_SIZE go.
    spill: crate::body::Spill,
}

impl Settings {
    /// Derives the run-time settings; endpoints also in `previous` keep their
    /// connection pool and error count.
    pub fn new(cfg: Config, connector: Option<TlsConnector>, previous: Option<&Settings>) -> Self {
        let upstreams = Upstreams::new(
            &cfg.endpoints,
            connector,
            cfg.outgoing_request_timeout,
            cfg.concurrency_peak,
            previous.map(|p| &p.upstreams),
        );
        Settings {
            upstreams,
            response_headers: CustomHeaders::new(&cfg.custom_response_headers),
            request_headers: CustomHeaders::new(&cfg.custom_request_headers),
            spill: crate::body::Spill {
                memory_bytes: cfg.client_body_buffer_size,
                dir: cfg.client_body_temp_dir.clone(),
            },
            cfg,
        }
    }

    /// SPEC §4: a weighted-random first attempt, then round-robin, up to MAX_RETRIES
    /// attempts `RETRY_GAP` apart. Each failure counts against its endpoint and goes to
    /// the error log; the first complete response head wins. On failure, the last
    /// attempt's error decides the response.
    pub fn try_endpoints(
        &self,
        errlog: &ErrorLog,
        req: &OutgoingRequest<'_>,
        buf: &mut IoBuf,
        scratch: &mut Scratch,
    ) -> Result<(usize, Exchange), AttemptError> {
        let ups = &self.upstreams;
        let mut last = None;
        let mut idx = 0;
        for attempt in 0..self.cfg.max_retries {
            scratch.attempts = attempt + 1;
            if attempt == 0 {
                ups.error_counts(&mut scratch.errors);
                ups.down_mask(&mut scratch.down);
                idx = balancer::first_choice(&scratch.errors, &scratch.down, &mut scratch.rng);
            } else {
                if !self.cfg.retry_gap.is_zero() {
                    std::thread::sleep(self.cfg.retry_gap);
                }
                idx = balancer::next_after(idx, ups.count(), &scratch.down);
            }
            let up = &ups.list[idx];
            match ups.attempt(idx, req, buf, &mut scratch.held, &mut scratch.resp) {
                Ok(exchange) => {
                    up.record_success();
                    return Ok((idx, exchange));
                }
                Err(e) => {
                    up.record_failure(e.log_code());
                    errlog.record(&up.label, e.log_code());
                    log::debug!(
                        "{} attempt on {}: {e}",
                        crate::logging::escaped(req.method),
                        up.label
                    );
                    // An upgrade is retried only if it never reached the endpoint.
                    let sent = !matches!(e, AttemptError::Connect(_));
                    last = Some(e);
                    if req.upgrade && sent {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or(AttemptError::Connect(io::ErrorKind::NotFound.into())))
    }

    /// A SPEC §6 response: JSON body, Content-Length, the custom response headers, and
    /// `Connection: close` when the connection ends after it. Counted in /metrics here,
    /// the one place every generated response passes.
    pub fn render_reply(&self, reply: Reply, close: bool, head_only: bool) -> Vec<u8> {
        crate::metrics::METRICS.reply(reply);
        let (status, reason, _) = reply.parts();
        let body = reply.body();
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.response_headers.rendered);
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(body.as_bytes());
        }
        out
    }

    /// Where request bodies beyond CLIENT_BODY_BUFFER_SIZE go.
    pub fn body_spill(&self) -> &crate::body::Spill {
        &self.spill
    }

    /// Whether a request may wait in the queue (SPEC §5).
    pub fn is_queueable(&self, method: &str, target: &str) -> bool {
        (self.cfg.enable_deferred_q || self.cfg.enable_upfront_q)
            && self.cfg.request_formats.is_eligible(method, target)
    }
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
    pub fn refresh(&self, cached: &mut (u64, Arc<Settings>)) {
        let now = self.generation.load(Ordering::Acquire);
        if cached.0 != now {
            *cached = (now, self.settings());
        }
    }

    /// A snapshot with its generation, for `refresh`.
    pub fn snapshot(&self) -> (u64, Arc<Settings>) {
        (self.generation.load(Ordering::Acquire), self.settings())
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
