//! `serviceq [-c|--config PATH] [--check] [--version] [--help]`, and
//! `serviceq queue …` (operating the queue: `serviceq::queue_cli`).
//!
//! Reads the configuration, opens the logs, binds the listener and hands over to
//! `server::run`. This is the only place where errors become exit codes: every start-up
//! failure is one line on stderr, `serviceq: FILE[:LINE]: [KEY: ]problem`, exit 1.
#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use log::LevelFilter;

use serviceq::accesslog::AccessLog;
use serviceq::acme;
use serviceq::config::QueueBackend;
use serviceq::config::{self, Config, ConfigError};
use serviceq::conn::Worker;
use serviceq::logging::{self, ErrorLog};
use serviceq::proxy::{Durable, Logs, Proxy, TlsSetup};
use serviceq::queue::journal::{Journal, JournalOptions};
use serviceq::queue::redis::{self, LeaseState, RedisBackend, RedisOptions, RedisQueue};
use serviceq::queue::Replay;
use serviceq::server::{self, RunError};
use serviceq::slots::Pool;
use serviceq::tls;
use serviceq::{health, signals};

const DEFAULT_CONFIG: &str = "/opt/serviceq/config/sq.properties";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const USAGE: &str = "\
usage: serviceq [-c|--config PATH] [--check] [--version] [--help]
       serviceq queue list|show|retry-dead|drop|purge … (serviceq queue --help)

  -c, --config PATH   configuration file (default: $SQ_CONFIG, else
                      /opt/serviceq/config/sq.properties)
      --check         validate the configuration, print a summary, exit
      --version       print the version and exit
      --help          print this help and exit

Environment: SQ_CONFIG (configuration path), SQ_LOG (error|warn|info|debug; default info).";

struct Args {
    config: PathBuf,
    check: bool,
}

enum Command {
    Run(Args),
    Print(String),
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            eprintln!("serviceq: {line}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<(), String> {
    if std::env::args().nth(1).as_deref() == Some("queue") {
        // `serviceq queue …` (src/queue_cli.rs): operating the queue, not serving.
        let out = serviceq::queue_cli::run(std::env::args().skip(2), DEFAULT_CONFIG)?;
        println!("{out}");
        return Ok(());
    }
    let args = match parse_args(std::env::args().skip(1))? {
        Command::Print(text) => {
            println!("{text}");
            return Ok(());
        }
        Command::Run(args) => args,
    };
    // Both must happen before any thread exists (see logging::local_offset).
    logging::init_stderr(log_level());
    let offset = logging::local_offset();

    let (cfg, warnings) = config::load(&args.config).map_err(|e| e.to_string())?;
    for w in &warnings {
        eprintln!("serviceq: warning: {w}");
    }
    check_body_fits_journal(&cfg)?;
    check_body_temp_dir(&cfg)?;
    let tls = TlsSetup {
        acceptor: tls::ListenerTls::from_config(&cfg)
            .map_err(|e| startup_error(&cfg, e.key, e.message))?
            .map(Arc::new),
        connector: tls::upstream_connector(&cfg)
            .map_err(|e| startup_error(&cfg, e.key, e.message))?,
    };
    // Before --check returns, so that it reports a bad SSL_AUTO_CA_FILE too.
    let acme = acme::Settings::from_config(&cfg)
        .map_err(|e| startup_error(&cfg, "SSL_AUTO_CA_FILE", e))?;
    if args.check {
        check_journal_dir(&cfg)?;
        let shared = check_shared(&cfg)?;
        println!("{}", summary(&cfg));
        if let Some(shared) = shared {
            println!("{shared}");
        }
        return Ok(());
    }
    let logs = Logs {
        errors: open_error_log(&cfg, offset)?,
        access: open_access_log(&cfg, offset)?,
    };
    let addr = SocketAddr::new(cfg.listener_address, cfg.listener_port);
    let listener = server::bind(addr).map_err(|e| {
        startup_error(
            &cfg,
            "LISTENER_PORT",
            format!("cannot listen on {addr}: {e}"),
        )
    })?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let mut durable = open_journal(&cfg)?;
    durable.shared = open_shared(&cfg, port)?;
    let admin = bind_admin(&cfg)?;
    start_acme(&cfg, acme, tls.acceptor.as_ref(), port)?;
    let (proxy, replay) = Proxy::new(cfg, logs, port, tls, durable).map_err(|e| e.to_string())?;
    let source = proxy.settings().cfg.source.clone();
    start_threads(listener, admin, Arc::new(proxy), replay).map_err(|e| {
        let key = matches!(e, RunError::Workers { .. }).then(|| "CONCURRENCY_PEAK".into());
        ConfigError {
            file: source,
            line: None,
            key,
            message: e.to_string(),
        }
        .to_string()
    })
}

/// Wires the threads: signals first (a signal that arrives before its handler is set
/// would take its default action: SIGHUP and SIGUSR1 terminate), then the replay
/// thread, the health checker and the admin listener, then the workers and the
/// acceptor, which runs on this thread until a stop.
fn start_threads(
    listener: TcpListener,
    admin: Option<TcpListener>,
    proxy: Arc<Proxy>,
    replay: Replay,
) -> Result<(), RunError> {
    let thread = |name: &'static str| move |source| RunError::Thread { name, source };
    let signal_listener = listener.try_clone().map_err(RunError::Listener)?;
    signals::spawn(Arc::clone(&proxy), signal_listener).map_err(thread("signals"))?;
    let pool = Arc::new(Pool::new(proxy.peak()));
    // Recovered requests of a local queue hold slots; a shared queue's never do.
    if proxy.queue.holds_slots() {
        pool.hold_queued(proxy.queue.depth());
    }
    replay
        .start(Arc::clone(&proxy), Arc::clone(&pool))
        .map_err(thread("replay"))?;
    health::start(Arc::clone(&proxy)).map_err(thread("health-check"))?;
    if let Some(admin) = admin {
        serviceq::admin::start(admin, Arc::clone(&proxy), Arc::clone(&pool))
            .map_err(thread("admin"))?;
    }
    let shared = Arc::clone(&proxy);
    server::run(listener, proxy, pool, move || {
        Worker::new(Arc::clone(&shared))
    })
}

/// SSL_AUTO_ENABLE: binds the HTTP-01 port and starts the certificate manager.
fn start_acme(
    cfg: &Config,
    settings: Option<acme::Settings>,
    tls: Option<&Arc<tls::ListenerTls>>,
    https_port: u16,
) -> Result<(), String> {
    let (Some(settings), Some(tls)) = (settings, tls) else {
        return Ok(());
    };
    let listener = acme::bind(cfg).map_err(|e| startup_error(cfg, "SSL_AUTO_HTTP_PORT", e))?;
    acme::start(settings, listener, Arc::clone(tls), https_port).map_err(|e| e.to_string())
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut config: Option<PathBuf> = None;
    let mut check = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Print(USAGE.to_string())),
            "-V" | "--version" => return Ok(Command::Print(format!("serviceq {VERSION}"))),
            "--check" => check = true,
            "-c" | "--config" => {
                let path = args
                    .next()
                    .ok_or_else(|| format!("{arg} needs a path\n{USAGE}"))?;
                config = Some(PathBuf::from(path));
            }
            other => match other.strip_prefix("--config=") {
                Some(path) => config = Some(PathBuf::from(path)),
                None => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            },
        }
    }
    let config = config
        .or_else(|| std::env::var_os("SQ_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    Ok(Command::Run(Args { config, check }))
}

fn log_level() -> LevelFilter {
    match std::env::var("SQ_LOG").as_deref() {
        Ok("error") => LevelFilter::Error,
        Ok("warn") => LevelFilter::Warn,
        Ok("debug") => LevelFilter::Debug,
        Ok("trace") => LevelFilter::Trace,
        _ => LevelFilter::Info,
    }
}

/// Opens ERROR_LOG_FILE, creating its directory if it is missing.
fn open_error_log(cfg: &Config, offset: time::UtcOffset) -> Result<ErrorLog, String> {
    let path = &cfg.error_log_file;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            startup_error(
                cfg,
                "ERROR_LOG_FILE",
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
    }
    ErrorLog::open(path, offset).map_err(|e| {
        startup_error(
            cfg,
            "ERROR_LOG_FILE",
            format!("cannot open {}: {e}", path.display()),
        )
    })
}

/// Opens the queue journal when DEFERRED_Q_DIR is set and reads back every request not
/// yet delivered, in order; they are queued again before the listener opens.
fn open_journal(cfg: &Config) -> Result<Durable, String> {
    let Some(dir) = &cfg.deferred_q_dir else {
        let memory = cfg.deferred_q_backend == QueueBackend::Memory;
        if memory && (cfg.enable_deferred_q || cfg.enable_upfront_q) {
            log::info!("queue held in memory only (DEFERRED_Q_DIR unset): a restart loses it");
        }
        return Ok(Durable::default());
    };
    let mut options = JournalOptions::new(dir);
    options.fsync = cfg.deferred_q_fsync;
    let (journal, records, warnings) =
        Journal::open(options).map_err(|e| startup_error(cfg, "DEFERRED_Q_DIR", e.to_string()))?;
    for w in warnings {
        log::warn!("queue journal: {w}");
    }
    // Only the order is read now; each payload is read back (and checked) when it is
    // delivered, so recovery takes no memory per byte queued.
    let recovered = records;
    log::info!(
        "queue journal {}: {} requests recovered",
        dir.display(),
        recovered.len()
    );
    Ok(Durable {
        journal: Some(std::sync::Arc::new(journal)),
        recovered,
        shared: None,
    })
}

/// The shared queue's options from the configuration, when DEFERRED_Q_BACKEND names
/// a Redis URL.
fn shared_options(cfg: &Config, port: u16) -> Option<RedisOptions> {
    let QueueBackend::Redis(url) = &cfg.deferred_q_backend else {
        return None;
    };
    Some(RedisOptions {
        url: url.clone(),
        name: cfg.deferred_q_name.clone(),
        replicas: cfg.deferred_q_redis_replicas,
        timeout: cfg.deferred_q_redis_timeout,
        max_len: cfg.deferred_q_max_len,
        lease_ttl: cfg.deferred_q_redis_lease,
        instance_id: redis::instance_id(port),
    })
}

/// Opens the shared queue (no engine I/O: a gateway starts, and serves live traffic,
/// while Redis is down) and starts its lease keeper.
fn open_shared(cfg: &Config, port: u16) -> Result<Option<RedisBackend>, String> {
    let Some(opts) = shared_options(cfg, port) else {
        return Ok(None);
    };
    let fail = |e: String| startup_error(cfg, "DEFERRED_Q_BACKEND", e);
    let queue = RedisQueue::open(opts).map_err(|e| fail(e.to_string()))?;
    log::info!(
        "queue shared on {} as {:?} (instance {})",
        queue.status().target,
        cfg.deferred_q_name,
        queue.options().instance_id
    );
    RedisBackend::new(queue)
        .map(Some)
        .map_err(|e| fail(format!("cannot start the lease keeper: {e}")))
}

/// `--check` with a Redis backend: reaches the engine and reports on it; an engine
/// that cannot be reached fails the check.
fn check_shared(cfg: &Config) -> Result<Option<String>, String> {
    let Some(opts) = shared_options(cfg, cfg.listener_port) else {
        return Ok(None);
    };
    let fail = |e: String| startup_error(cfg, "DEFERRED_Q_BACKEND", e);
    let queue = RedisQueue::open(opts).map_err(|e| fail(e.to_string()))?;
    let target = queue.status().target;
    let report = queue
        .check()
        .map_err(|e| fail(format!("cannot reach the shared queue: {e}")))?;
    let mut out = format!(
        "  shared queue  {target} (Redis {}, primary {}): {} waiting, lease {}",
        report.version,
        report.primary.as_deref().unwrap_or("?"),
        report.depth,
        queue
            .try_acquire_or_renew_lease()
            .map_or("unknown".into(), |l| match l {
                LeaseState::HeldBy { holder, .. } => format!("held by {holder}"),
                // --check took a free lease to look: give it straight back.
                LeaseState::Held { .. } => {
                    queue.release_lease();
                    "free".into()
                }
            })
    );
    for w in &report.warnings {
        out.push_str(&format!("\n  warning       {w}"));
    }
    Ok(Some(out))
}

/// A request is journaled whole, so with DEFERRED_Q_DIR its body must fit a journal
/// record: refuse a MAX_REQUEST_BODY that would let a request be accepted and then not
/// be bufferable.
fn check_body_fits_journal(cfg: &Config) -> Result<(), String> {
    // Room for the request line, headers and the record's own framing.
    const HEAD_ROOM: u64 = 1 << 20;
    let cap = serviceq::queue::journal::MAX_PAYLOAD as u64 - HEAD_ROOM;
    if cfg.deferred_q_dir.is_some() && cfg.max_request_body > cap {
        return Err(startup_error(
            cfg,
            "MAX_REQUEST_BODY",
            format!(
                "{} bytes is more than the durable queue can journal per request ({cap} bytes with DEFERRED_Q_DIR set)",
                cfg.max_request_body
            ),
        ));
    }
    Ok(())
}

/// Request bodies past CLIENT_BODY_BUFFER_SIZE spill into CLIENT_BODY_TEMP_DIR: a
/// directory that cannot take a file would fail every large upload, so it fails the
/// start instead.
fn check_body_temp_dir(cfg: &Config) -> Result<(), String> {
    let dir = &cfg.client_body_temp_dir;
    serviceq::body::check_temp_dir(dir).map_err(|e| {
        startup_error(
            cfg,
            "CLIENT_BODY_TEMP_DIR",
            format!("cannot create a temporary file in {}: {e}", dir.display()),
        )
    })
}

/// `--check` cannot open the journal (a running instance holds its lock), so it checks
/// that DEFERRED_Q_DIR is, or can be created as, a writable directory.
fn check_journal_dir(cfg: &Config) -> Result<(), String> {
    let Some(dir) = &cfg.deferred_q_dir else {
        return Ok(());
    };
    let bad =
        |why: String| startup_error(cfg, "DEFERRED_Q_DIR", format!("{}: {why}", dir.display()));
    let existing = dir
        .ancestors()
        .find(|a| !a.as_os_str().is_empty() && a.exists())
        .unwrap_or(Path::new("."));
    if !existing.is_dir() {
        return Err(bad(format!("{} is not a directory", existing.display())));
    }
    let probe = existing.join(format!(".serviceq-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| bad(format!("cannot write in {}: {e}", existing.display())))
}

/// Binds the admin listener when ADMIN_PORT is set.
fn bind_admin(cfg: &Config) -> Result<Option<TcpListener>, String> {
    if cfg.admin_port == 0 {
        return Ok(None);
    }
    if let Some(path) = &cfg.admin_token_file {
        serviceq::admin_queue::load_token(path)
            .map_err(|e| startup_error(cfg, "ADMIN_TOKEN_FILE", e))?;
    }
    let addr = SocketAddr::new(cfg.admin_address, cfg.admin_port);
    let listener = server::bind(addr)
        .map_err(|e| startup_error(cfg, "ADMIN_PORT", format!("cannot listen on {addr}: {e}")))?;
    log::info!("admin listener on {addr} (/metrics, /status, /healthz)");
    Ok(Some(listener))
}

/// Opens ACCESS_LOG_FILE when it is set, creating its directory if it is missing.
fn open_access_log(cfg: &Config, offset: time::UtcOffset) -> Result<Option<AccessLog>, String> {
    let Some(path) = &cfg.access_log_file else {
        return Ok(None);
    };
    create_parent(cfg, "ACCESS_LOG_FILE", path)?;
    AccessLog::open(path, offset).map(Some).map_err(|e| {
        startup_error(
            cfg,
            "ACCESS_LOG_FILE",
            format!("cannot open {}: {e}", path.display()),
        )
    })
}

fn create_parent(cfg: &Config, key: &str, path: &Path) -> Result<(), String> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir)
            .map_err(|e| startup_error(cfg, key, format!("cannot create {}: {e}", dir.display()))),
        None => Ok(()),
    }
}

fn startup_error(cfg: &Config, key: &str, message: String) -> String {
    ConfigError {
        file: cfg.source.clone(),
        line: None,
        key: Some(key.to_string()),
        message,
    }
    .to_string()
}

fn endpoint_list(cfg: &Config) -> String {
    let names: Vec<String> = cfg.endpoints.iter().map(|e| e.to_string()).collect();
    names.join(",")
}

fn summary(cfg: &Config) -> String {
    format!(
        "{}: OK\n  listener      {}:{}\n  endpoints     {}\n  peak          {}\n  retries       {} attempts, {:?} apart\n  timeout       {}\n  deferred q    {}\n  upfront q     {}\n  queue         {}\n  error log     {}",
        display(&cfg.source),
        cfg.listener_address,
        cfg.listener_port,
        endpoint_list(cfg),
        cfg.concurrency_peak,
        cfg.max_retries,
        cfg.retry_gap,
        cfg.outgoing_request_timeout
            .map_or("none".to_string(), |t| format!("{t:?}")),
        cfg.enable_deferred_q,
        cfg.enable_upfront_q,
        match &cfg.deferred_q_backend {
            QueueBackend::Memory => "memory".to_string(),
            QueueBackend::Journal => format!(
                "journal {}",
                cfg.deferred_q_dir.as_deref().map_or(String::new(), display)
            ),
            QueueBackend::Redis(url) => format!("redis {}", redis::redact(url)),
        },
        display(&cfg.error_log_file),
    )
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
