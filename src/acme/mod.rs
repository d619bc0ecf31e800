//! Automatic certificates (SSL_AUTO_ENABLE, RFC 8555): a background thread keeps the
//! listener's certificate for SSL_AUTO_DOMAINS from SSL_AUTO_DIRECTORY_URL, answering
//! HTTP-01 challenges on SSL_AUTO_HTTP_PORT, and swaps each new one in as a reload
//! does. The account key and the certificate live in SSL_AUTO_CACHE_DIR, so a restart
//! serves the cached certificate at once and orders nothing until renewal is due.
//!
//! `jws` signs, `http` is the HTTPS client, `client` the ACME conversation, `http01` the
//! challenge listener. No crate fits: the maintained ACME clients run on tokio, the
//! blocking ones (acme-lib, acme-micro) are unmaintained forks on old HTTP stacks.

pub mod client;
pub mod http;
pub mod http01;
pub mod jws;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use native_tls::{Certificate, TlsConnector};
use openssl::asn1::Asn1Time;
use openssl::x509::X509;

use crate::config::Config;
use crate::tls::ListenerTls;
use jws::AccountKey;

/// Renewal starts this long before expiry, or at a third of the lifetime left for
/// certificates shorter-lived than 90 days.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// After a failed order: the first wait, doubled each time up to the cap.
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(3600);
/// One HTTPS exchange with the ACME server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Published key authorizations, by token, for the HTTP-01 listener.
#[derive(Default)]
pub struct Challenges {
    tokens: Mutex<HashMap<String, String>>,
}

impl Challenges {
    pub fn publish(&self, token: &str, key_authorization: &str) {
        self.lock()
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub fn withdraw(&self, token: &str) {
        self.lock().remove(token);
    }

    pub fn lookup(&self, token: &str) -> Option<String> {
        self.lock().get(token).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long to wait before renewing a certificate valid for `lifetime` with `left` to
/// go: renew when `min(RENEW_BEFORE, lifetime / 3)` is left (zero: now).
pub fn renew_in(lifetime: Duration, left: Duration) -> Duration {
    left.saturating_sub(RENEW_BEFORE.min(lifetime / 3))
}

/// The wait after `failures` failed orders in a row (1 = the first failure).
pub fn retry_in(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << failures.saturating_sub(1).min(20))
        .min(RETRY_MAX)
}

/// Binds SSL_AUTO_HTTP_PORT (at start, so that a port in use is a start-up error).
pub fn bind(cfg: &Config) -> Result<TcpListener, String> {
    let addr = SocketAddr::new(cfg.listener_address, cfg.ssl_auto_http_port);
    crate::server::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// What the manager thread needs from the configuration (read once: SSL_AUTO_* need a
/// restart).
pub struct Settings {
    pub domains: Vec<String>,
    pub directory_url: String,
    pub cache_dir: PathBuf,
    pub agent: http::Agent,
}

impl Settings {
    /// None unless SSL_ENABLE and SSL_AUTO_ENABLE are both true.
    pub fn from_config(cfg: &Config) -> Result<Option<Settings>, String> {
        if !(cfg.ssl_enable && cfg.ssl_auto_enable) {
            return Ok(None);
        }
        let mut tls = TlsConnector::builder();
        tls.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
        if let Some(ca) = &cfg.ssl_auto_ca_file {
            let pem = fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            let certs = X509::stack_from_pem(&pem)
                .map_err(|e| format!("{}: not a PEM bundle ({e})", ca.display()))?;
            for cert in certs {
                let der = cert.to_der().map_err(|e| e.to_string())?;
                let cert = Certificate::from_der(&der).map_err(|e| e.to_string())?;
                tls.add_root_certificate(cert);
            }
        }
        let tls = tls
            .build()
            .map_err(|e| format!("TLS client set-up failed: {e}"))?;
        Ok(Some(Settings {
            domains: cfg.ssl_auto_domains.clone(),
            directory_url: cfg.ssl_auto_directory_url.clone(),
            cache_dir: cfg.ssl_auto_cache_dir.clone(),
            agent: http::Agent {
                tls,
                timeout: REQUEST_TIMEOUT,
            },
        }))
    }
}

/// Starts the HTTP-01 listener and the manager thread.
pub fn start(
    settings: Settings,
    listener: TcpListener,
    tls: Arc<ListenerTls>,
    https_port: u16,
) -> std::io::Result<()> {
    let challenges = Arc::new(Challenges::default());
    http01::spawn(listener, Arc::clone(&challenges), https_port)?;
    thread::Builder::new().name("acme".into()).spawn(move || {
        Manager {
            settings,
            tls,
            challenges,
        }
        .run()
    })?;
    Ok(())
}

struct Manager {
    settings: Settings,
    tls: Arc<ListenerTls>,
    challenges: Arc<Challenges>,
}

/// A certificate and its key, as cached.
struct Pair {
    chain: Vec<u8>,
    key: Vec<u8>,
}

impl Manager {
    /// Waits until the next order is due (renewal time, or the back-off after a
    /// failure), orders, installs; for ever.
    fn run(self) {
        let mut current = self.load_cached();
        let mut failures = 0;
        loop {
            let wait = match &current {
                _ if failures > 0 => retry_in(failures),
                Some(pair) => validity(&pair.chain)
                    .map_or(Duration::ZERO, |(life, left)| renew_in(life, left)),
                None => Duration::ZERO,
            };
            thread::sleep(wait);
            let what = if current.is_some() {
                "renewal"
            } else {
                "first certificate"
            };
            log::info!(
                "ACME: ordering a certificate for {} from {}",
                self.settings.domains.join(","),
                self.settings.directory_url
            );
            match self.order().and_then(|pair| self.store_and_install(pair)) {
                Ok(pair) => {
                    failures = 0;
                    current = Some(pair);
                }
                Err(e) => {
                    failures += 1;
                    let next = retry_in(failures);
                    let keep = if current.is_some() {
                        "; the running certificate stays"
                    } else {
                        ""
                    };
                    log::error!("ACME: {what} failed: {e}{keep}; next try in {next:?}");
                    if current.is_none() {
                        self.tls.set_pending_reason(&format!(
                            "no certificate yet: the ACME order failed ({e}); next try in {next:?}"
                        ));
                    }
                }
            }
        }
    }

    /// The cached pair when it covers the configured names and loads; installed.
    fn load_cached(&self) -> Option<Pair> {
        let dir = &self.settings.cache_dir;
        let chain = fs::read(dir.join("cert.pem")).ok()?;
        let key = fs::read(dir.join("cert-key.pem")).ok()?;
        if let Err(e) = covers(&chain, &self.settings.domains) {
            log::info!("ACME: cached certificate not used: {e}");
            return None;
        }
        match self.tls.install(&chain, &key) {
            Ok(status) => {
                log::info!("ACME: serving the cached {status}");
                Some(Pair { chain, key })
            }
            Err(e) => {
                log::warn!("ACME: cached certificate not used: {e}");
                None
            }
        }
    }

    /// One complete order with a fresh certificate key.
    fn order(&self) -> Result<Pair, String> {
        let account = self.account_key()?;
        let cert_key = AccountKey::generate()?;
        let mut session =
            client::Session::open(&self.settings.agent, &account, &self.settings.directory_url)?;
        let chain = session.certificate(&self.settings.domains, &cert_key, &self.challenges)?;
        covers(&chain, &self.settings.domains)?;
        Ok(Pair {
            chain,
            key: cert_key.to_pem()?,
        })
    }

    fn store_and_install(&self, pair: Pair) -> Result<Pair, String> {
        let status = self.tls.install(&pair.chain, &pair.key)?;
        let dir = &self.settings.cache_dir;
        // Key first: a crash between the two leaves a new key with an old certificate,
        // which `install` refuses, so the next start orders again.
        write_private(&dir.join("cert-key.pem"), &pair.key)?;
        write_private(&dir.join("cert.pem"), &pair.chain)?;
        log::info!("ACME: now serving {status}");
        Ok(pair)
    }

    /// The cached account key, or a new one written to the cache.
    fn account_key(&self) -> Result<AccountKey, String> {
        let dir = &self.settings.cache_dir;
        let path = dir.join("account-key.pem");
        match fs::read(&path) {
            Ok(pem) => AccountKey::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = AccountKey::generate()?;
                write_private(&path, &key.to_pem()?)?;
                Ok(key)
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// Writes `bytes` to `path` atomically, readable by the owner only, creating the
/// cache directory (0700) when missing.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// (lifetime, time left) of a PEM chain's first certificate.
fn validity(chain: &[u8]) -> Result<(Duration, Duration), String> {
    let cert = X509::from_pem(chain).map_err(|e| e.to_string())?;
    let now = Asn1Time::days_from_now(0).map_err(|e| e.to_string())?;
    let secs = |d: openssl::asn1::TimeDiff| i64::from(d.days) * 86_400 + i64::from(d.secs);
    let lifetime = cert
        .not_before()
        .diff(cert.not_after())
        .map_err(|e| e.to_string())?;
    let left = now.diff(cert.not_after()).map_err(|e| e.to_string())?;
    let dur = |s: i64| Duration::from_secs(s.max(0).unsigned_abs());
    Ok((dur(secs(lifetime)), dur(secs(left))))
}

/// Whether the chain's first certificate names every domain.
fn covers(chain: &[u8], domains: &[String]) -> Result<(), String> {
    let cert = X509::from_pem(chain).map_err(|e| format!("not a PEM certificate ({e})"))?;
    let names: Vec<String> = cert
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| n.dnsname().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default();
    match domains.iter().find(|d| !names.contains(d)) {
        Some(missing) => Err(format!("it does not name {missing}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn renewal_is_30_days_early_or_at_a_third_left_for_short_lives() {
        let d = |days: u64| Duration::from_secs(days * DAY);
        // Let's Encrypt's 90 days: renew with 30 left.
        assert_eq!(renew_in(d(90), d(90)), d(60));
        assert_eq!(renew_in(d(90), d(31)), d(1));
        assert_eq!(renew_in(d(90), d(10)), Duration::ZERO);
        // A year: still 30 days early.
        assert_eq!(renew_in(d(365), d(365)), d(335));
        // Six days: a third (2 days) before expiry.
        assert_eq!(renew_in(d(6), d(6)), d(4));
        assert_eq!(
            renew_in(Duration::from_secs(30), Duration::from_secs(30)),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        assert_eq!(retry_in(1), Duration::from_secs(30));
        assert_eq!(retry_in(2), Duration::from_secs(60));
        assert_eq!(retry_in(4), Duration::from_secs(240));
        assert_eq!(retry_in(30), RETRY_MAX);
    }

    #[test]
    fn challenges_are_published_and_withdrawn() {
        let c = Challenges::default();
        c.publish("t", "t.k");
        assert_eq!(c.lookup("t").as_deref(), Some("t.k"));
        c.withdraw("t");
        assert_eq!(c.lookup("t"), None);
    }

    #[test]
    fn cached_files_are_private_and_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("sq-acme-unit-{}", std::process::id()));
        let path = dir.join("sub").join("k.pem");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
