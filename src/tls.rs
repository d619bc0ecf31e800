//! TLS set-up (SPEC §8), all checked at start-up so that a bad file is a one-line error
//! rather than failing handshakes later: the listener's acceptor from PEM files (the
//! `openssl` crate: native-tls cannot offer ALPN or choose the cipher order), swapped
//! by a reload or an ACME renewal, and the client used for `https://` endpoints
//! (native-tls, with the system roots).

use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::RwLock;
use std::thread;
use std::time::{Duration, Instant};

use native_tls::{Certificate, Protocol, TlsConnector};
use openssl::error::ErrorStack;
use openssl::pkey::PKey;
use openssl::ssl::{
    self, AlpnError, HandshakeError, SslAcceptor, SslAcceptorBuilder, SslConnector, SslMethod,
    SslStream, SslVerifyMode,
};
use openssl::x509::X509;

use crate::config::{Config, Scheme};
use crate::stream::Deadlined;

/// A problem with a TLS key of the configuration: the key's name and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSetupError {
    pub key: &'static str,
    pub message: String,
}

fn fail(key: &'static str, message: impl Into<String>) -> TlsSetupError {
    TlsSetupError {
        key,
        message: message.into(),
    }
}

/// The listener's TLS: the acceptor new handshakes use, swapped whole by a reload or a
/// renewed certificate (connections already open keep the session they have).
pub struct ListenerTls {
    current: RwLock<Current>,
}

struct Current {
    acceptor: SslAcceptor,
    /// The PEM bytes the acceptor was built from, so that a reload of unchanged files
    /// keeps the acceptor and its session-ticket keys (resumption survives a SIGHUP).
    pem: Option<(Vec<u8>, Vec<u8>)>,
    /// What clients are served, or why handshakes fail, for `/status` and the log.
    status: String,
}

impl ListenerTls {
    /// The listener's TLS when SSL_ENABLE=true; with SSL_AUTO_ENABLE=true it starts
    /// without a certificate (see `pending`) until ACME provides one.
    pub fn from_config(cfg: &Config) -> Result<Option<ListenerTls>, TlsSetupError> {
        if !cfg.ssl_enable {
            return Ok(None);
        }
        if cfg.ssl_auto_enable {
            let why = "no certificate yet: waiting for the first ACME certificate";
            return ListenerTls::pending(why).map(Some);
        }
        let (chain, key) = read_pair(cfg)?;
        let (acceptor, status) = build_checked(&chain, &key, cfg)?;
        Ok(Some(ListenerTls::with(Current {
            acceptor,
            pem: Some((chain, key)),
            status,
        })))
    }

    /// A listener with no certificate: every handshake ends with a TLS alert
    /// (handshake_failure: no cipher can be used without a certificate), and
    /// `status` says `why`.
    pub fn pending(why: &str) -> Result<ListenerTls, TlsSetupError> {
        let acceptor = base_builder()
            .map_err(|e| fail("SSL_AUTO_ENABLE", format!("TLS set-up failed: {e}")))?
            .build();
        Ok(ListenerTls::with(Current {
            acceptor,
            pem: None,
            status: why.to_string(),
        }))
    }

    fn with(current: Current) -> ListenerTls {
        ListenerTls {
            current: RwLock::new(current),
        }
    }

    /// The handshake, as a deadline for the whole of it: `limit` from now.
    pub fn accept(&self, tcp: TcpStream, limit: Duration) -> Result<SslStream<Deadlined>, String> {
        let acceptor = self.read().acceptor.clone();
        let io = Deadlined {
            tcp,
            deadline: Some(Instant::now() + limit),
        };
        match acceptor.accept(io) {
            Ok(mut tls) => {
                tls.get_mut().deadline = None;
                Ok(tls)
            }
            Err(HandshakeError::WouldBlock(_)) => Err("handshake timed out".into()),
            Err(HandshakeError::Failure(mid)) => Err(mid.error().to_string()),
            Err(HandshakeError::SetupFailure(e)) => Err(e.to_string()),
        }
    }

    /// SIGHUP: re-reads SSL_CERTIFICATE_FILE and SSL_PRIVATE_KEY_FILE. A pair that does
    /// not load or does not match is an error and the running one stays. Unchanged
    /// files keep the running acceptor. Nothing to do with SSL_AUTO_ENABLE (ACME swaps its own).
    pub fn reload(&self, cfg: &Config) -> Result<(), TlsSetupError> {
        if !cfg.ssl_enable || cfg.ssl_auto_enable {
            return Ok(());
        }
        let (chain, key) = read_pair(cfg)?;
        if self.read().pem.as_ref() == Some(&(chain.clone(), key.clone())) {
            return Ok(());
        }
        let (acceptor, status) = build_checked(&chain, &key, cfg)?;
        log::info!("SIGHUP: listener certificate replaced for new connections: {status}");
        self.set(acceptor, Some((chain, key)), status);
        Ok(())
    }

    /// Installs a pair obtained at run time (ACME); on error the running one stays.
    pub fn install(&self, chain: &[u8], key: &[u8]) -> Result<String, String> {
        let acceptor = acceptor_from_pem(chain, key).map_err(|e| e.message)?;
        prove_key_matches(&acceptor)?;
        let status = describe_chain(chain);
        self.set(
            acceptor,
            Some((chain.to_vec(), key.to_vec())),
            status.clone(),
        );
        Ok(status)
    }

    /// Records why the listener still has no certificate (ACME), for `/status`.
    pub fn set_pending_reason(&self, why: &str) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.pem.is_none() {
            current.status = why.to_string();
        }
    }

    /// Whether a certificate is installed.
    pub fn has_certificate(&self) -> bool {
        self.read().pem.is_some()
    }

    /// What clients are served, or why handshakes fail.
    pub fn status(&self) -> String {
        self.read().status.clone()
    }

    fn set(&self, acceptor: SslAcceptor, pem: Option<(Vec<u8>, Vec<u8>)>, status: String) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Current {
            acceptor,
            pem,
            status,
        };
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The PEM chain and key the configuration names, read and sanity-checked.
fn read_pair(cfg: &Config) -> Result<(Vec<u8>, Vec<u8>), TlsSetupError> {
    let (Some(cert_path), Some(key_path)) = (&cfg.ssl_certificate_file, &cfg.ssl_private_key_file)
    else {
        return Err(fail(
            "SSL_CERTIFICATE_FILE",
            "missing (required when SSL_ENABLE=true)",
        ));
    };
    let chain = read_pem(
        cert_path,
        "SSL_CERTIFICATE_FILE",
        b"-----BEGIN CERTIFICATE-----",
    )?;
    let key = read_pem(key_path, "SSL_PRIVATE_KEY_FILE", b"-----BEGIN ")?;
    check_key_format(&key, key_path)?;
    Ok((chain, key))
}

/// The acceptor for the configured pair, proven to work (see `prove_key_matches`),
/// and its description for the log.
fn build_checked(
    chain: &[u8],
    key: &[u8],
    cfg: &Config,
) -> Result<(SslAcceptor, String), TlsSetupError> {
    let cert_path = cfg
        .ssl_certificate_file
        .as_deref()
        .unwrap_or(Path::new("?"));
    let key_path = cfg
        .ssl_private_key_file
        .as_deref()
        .unwrap_or(Path::new("?"));
    let acceptor = acceptor_from_pem(chain, key).map_err(|e| {
        let message = match e.key {
            "SSL_CERTIFICATE_FILE" => format!("{}: {}", cert_path.display(), e.message),
            _ if e.message == MISMATCH => format!(
                "{} does not belong to the certificate in {}",
                key_path.display(),
                cert_path.display()
            ),
            _ => format!("{}: {}", key_path.display(), e.message),
        };
        fail(e.key, message)
    })?;
    prove_key_matches(&acceptor).map_err(|e| {
        fail(
            "SSL_PRIVATE_KEY_FILE",
            format!(
                "{} does not belong to the certificate in {} ({e})",
                key_path.display(),
                cert_path.display()
            ),
        )
    })?;
    Ok((acceptor, describe_chain(chain)))
}

/// Mozilla's "intermediate" server configuration (v5): TLS 1.3 and 1.2, for 1.2 the
/// ECDHE AES-GCM suites first, then ChaCha20; ALPN answers `http/1.1` and ends the
/// handshake with a no_application_protocol alert for a client that offers only other
/// protocols (`h2`); session resumption by tickets and the server-side cache (both
/// OpenSSL defaults) stays on.
fn base_builder() -> Result<SslAcceptorBuilder, ErrorStack> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    b.set_alpn_select_callback(|_, offered| {
        ssl::select_next_proto(ALPN_HTTP11, offered).ok_or(AlpnError::ALERT_FATAL)
    });
    b.set_session_id_context(b"serviceq")?;
    // One read system call per incoming record instead of two (its 5-byte header,
    // then the rest), as nginx reads. What is read ahead stays in OpenSSL's buffer and
    // comes out of the next SSL_read; nothing else reads the client socket.
    b.set_read_ahead(true);
    Ok(b)
}

/// ALPN's wire form: a length-prefixed list.
const ALPN_HTTP11: &[u8] = b"\x08http/1.1";

/// An acceptor for a PEM chain (leaf first, then intermediates) and a PEM private key
/// (PKCS#8, PKCS#1 RSA or SEC1 EC), with OpenSSL's own check that they belong together.
/// Errors name the key of the file at fault.
pub fn acceptor_from_pem(chain: &[u8], key: &[u8]) -> Result<SslAcceptor, TlsSetupError> {
    const CERT: &str = "SSL_CERTIFICATE_FILE";
    const KEY: &str = "SSL_PRIVATE_KEY_FILE";
    let mut certs = X509::stack_from_pem(chain)
        .map_err(|e| fail(CERT, format!("not a PEM certificate chain ({e})")))?
        .into_iter();
    let leaf = certs
        .next()
        .ok_or_else(|| fail(CERT, "no certificate in the file"))?;
    // The callback refuses to ask for a passphrase (an encrypted key is an error, never
    // a prompt on the terminal).
    let key = PKey::private_key_from_pem_callback(key, |_| Ok(0))
        .map_err(|e| fail(KEY, format!("cannot read the private key ({e})")))?;
    let mut b = base_builder().map_err(|e| fail(CERT, e.to_string()))?;
    b.set_certificate(&leaf)
        .map_err(|e| fail(CERT, e.to_string()))?;
    for cert in certs {
        b.add_extra_chain_cert(cert)
            .map_err(|e| fail(CERT, e.to_string()))?;
    }
    b.set_private_key(&key)
        .map_err(|e| fail(KEY, e.to_string()))?;
    b.check_private_key().map_err(|_| fail(KEY, MISMATCH))?;
    Ok(b.build())
}

const MISMATCH: &str = "the private key does not belong to the certificate";

/// `subject CN=…, valid until …` of a chain's first certificate.
pub fn describe_chain(chain: &[u8]) -> String {
    let Ok(cert) = X509::from_pem(chain) else {
        return "unreadable certificate".into();
    };
    let subject: Vec<String> = cert
        .subject_name()
        .entries()
        .map(|e| {
            let name = e.object().nid().short_name().unwrap_or("?");
            format!("{name}={}", String::from_utf8_lossy(e.data().as_slice()))
        })
        .collect();
    format!(
        "certificate {} valid until {}",
        subject.join(","),
        cert.not_after()
    )
}

/// The TLS client for `https://` endpoints: system roots plus SSL_UPSTREAM_CA_FILE, TLS
/// 1.2 or later, SNI on; verification off only with SSL_UPSTREAM_VERIFY=false.
/// SSL_UPSTREAM_CA_FILE is checked whenever it is set, so a bad file is found at start
/// and not on the day an `https://` endpoint is added by a reload.
pub fn upstream_connector(cfg: &Config) -> Result<Option<TlsConnector>, TlsSetupError> {
    let mut roots = Vec::new();
    if let Some(path) = &cfg.ssl_upstream_ca_file {
        let pem = read_pem(path, "SSL_UPSTREAM_CA_FILE", b"-----BEGIN CERTIFICATE-----")?;
        for cert in split_pem_certificates(&pem) {
            roots.push(
                Certificate::from_pem(cert).map_err(|e| {
                    fail("SSL_UPSTREAM_CA_FILE", format!("{}: {e}", path.display()))
                })?,
            );
        }
    }
    if !cfg.endpoints.iter().any(|e| e.scheme == Scheme::Https) {
        return Ok(None);
    }
    let mut builder = TlsConnector::builder();
    builder.min_protocol_version(Some(Protocol::Tlsv12));
    for cert in roots {
        builder.add_root_certificate(cert);
    }
    if !cfg.ssl_upstream_verify {
        builder.danger_accept_invalid_certs(true);
        builder.danger_accept_invalid_hostnames(true);
    }
    builder.build().map(Some).map_err(|e| {
        fail(
            "SSL_UPSTREAM_CA_FILE",
            format!("TLS client set-up failed: {e}"),
        )
    })
}

fn read_pem(path: &Path, key: &'static str, marker: &[u8]) -> Result<Vec<u8>, TlsSetupError> {
    let bytes = std::fs::read(path)
        .map_err(|e| fail(key, format!("cannot read {}: {e}", path.display())))?;
    if !bytes.windows(marker.len()).any(|w| w == marker) {
        return Err(fail(key, format!("{} is not a PEM file", path.display())));
    }
    Ok(bytes)
}

/// Unencrypted PEM keys in PKCS#8, PKCS#1 (RSA) or SEC1 (EC) form are taken, as
/// nginx takes them; an encrypted key or a file without a key is refused with a hint.
fn check_key_format(key: &[u8], path: &Path) -> Result<(), TlsSetupError> {
    let kind = if contains(key, b"BEGIN ENCRYPTED PRIVATE KEY")
        || contains(key, b"Proc-Type: 4,ENCRYPTED")
    {
        "an encrypted key"
    } else if contains(key, b"PRIVATE KEY-----") {
        return Ok(());
    } else {
        "no private key"
    };
    Err(fail(
        "SSL_PRIVATE_KEY_FILE",
        format!(
            "{} holds {kind}; ServiceQ needs an unencrypted PEM key \
             (PKCS#8 \"BEGIN PRIVATE KEY\", PKCS#1 \"BEGIN RSA PRIVATE KEY\" or SEC1 \
             \"BEGIN EC PRIVATE KEY\"); decrypt it with: \
             openssl pkey -in {} -out key-plain.pem",
            path.display(),
            path.display()
        ),
    ))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Beyond OpenSSL's key check, one handshake with itself over a socket pair proves at
/// start (and on reload) that the pair can actually serve a client.
fn prove_key_matches(acceptor: &SslAcceptor) -> Result<(), String> {
    let (server_end, client_end) = UnixStream::pair().map_err(|e| e.to_string())?;
    for end in [&server_end, &client_end] {
        end.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
    }
    let acceptor = acceptor.clone();
    let server = thread::spawn(move || {
        acceptor
            .accept(server_end)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    let mut connector =
        SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    connector.set_verify(SslVerifyMode::NONE);
    let client = connector
        .build()
        .configure()
        .map(|c| c.verify_hostname(false))
        .map_err(|e| e.to_string())
        .and_then(|c| {
            c.connect("serviceq.invalid", client_end)
                .map(drop)
                .map_err(|e| e.to_string())
        });
    let server = server
        .join()
        .map_err(|_| "handshake thread panicked".to_string())?;
    server.and(client)
}

/// A CA bundle holds several certificates; native-tls takes one at a time.
fn split_pem_certificates(pem: &[u8]) -> Vec<&[u8]> {
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(pos) = rest.windows(END.len()).position(|w| w == END) {
        let (cert, tail) = rest.split_at(pos + END.len());
        out.push(cert);
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_split_into_certificates() {
        let pem = b"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n\
                    -----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n";
        assert_eq!(split_pem_certificates(pem).len(), 2);
        assert!(split_pem_certificates(b"nothing").is_empty());
    }

    #[test]
    fn unencrypted_keys_pass_and_encrypted_ones_get_a_hint() {
        let path = Path::new("k.pem");
        for ok in ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"] {
            let pem = format!("-----BEGIN {ok}-----\n");
            assert!(check_key_format(pem.as_bytes(), path).is_ok(), "{ok}");
        }
        let e = check_key_format(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n", path).unwrap_err();
        assert_eq!(e.key, "SSL_PRIVATE_KEY_FILE");
        assert!(e.message.contains("an encrypted key") && e.message.contains("openssl pkey"));
        let old = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n";
        assert!(check_key_format(old, path).is_err());
        let e = check_key_format(b"-----BEGIN CERTIFICATE-----\n", path).unwrap_err();
        assert!(e.message.contains("no private key"));
    }
}
