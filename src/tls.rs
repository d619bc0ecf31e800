//! TLS set-up (SPEC §8), all checked at start-up so that a bad file is a one-line error
//! rather than failing handshakes later: the listener's acceptor from PEM files, and the
//! client used for `https://` endpoints.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::Duration;

use native_tls::{Certificate, Identity, Protocol, TlsAcceptor, TlsConnector};

use crate::config::{Config, Scheme};

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

/// The listener's acceptor when SSL_ENABLE=true: TLS 1.2 or later, the PEM chain and
/// PEM private key of the configuration, proven to belong together.
pub fn listener_acceptor(cfg: &Config) -> Result<Option<TlsAcceptor>, TlsSetupError> {
    if !cfg.ssl_enable {
        return Ok(None);
    }
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
    let identity = Identity::from_pkcs8(&chain, &key).map_err(|e| {
        fail(
            "SSL_CERTIFICATE_FILE",
            format!("{} with {}: {e}", cert_path.display(), key_path.display()),
        )
    })?;
    let acceptor = TlsAcceptor::builder(identity)
        .min_protocol_version(Some(Protocol::Tlsv12))
        .build()
        .map_err(|e| {
            fail(
                "SSL_CERTIFICATE_FILE",
                format!("{}: {e}", cert_path.display()),
            )
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
    Ok(Some(acceptor))
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

/// native-tls takes unencrypted PKCS#8 keys only; say how to convert the others.
fn check_key_format(key: &[u8], path: &Path) -> Result<(), TlsSetupError> {
    let kind = if key.starts_with(b"-----BEGIN PRIVATE KEY-----") {
        return Ok(());
    } else if contains(key, b"BEGIN RSA PRIVATE KEY") {
        "an RSA (PKCS#1) key"
    } else if contains(key, b"BEGIN EC PRIVATE KEY") {
        "an EC (SEC1) key"
    } else if contains(key, b"BEGIN ENCRYPTED PRIVATE KEY") {
        "an encrypted key"
    } else if contains(key, b"BEGIN PRIVATE KEY") {
        "text before the key"
    } else {
        "no private key"
    };
    Err(fail(
        "SSL_PRIVATE_KEY_FILE",
        format!(
            "{} holds {kind}; ServiceQ needs an unencrypted PKCS#8 PEM key starting with \
             \"-----BEGIN PRIVATE KEY-----\"; convert it with: \
             openssl pkcs8 -topk8 -nocrypt -in {} -out key.pk8.pem",
            path.display(),
            path.display()
        ),
    ))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// OpenSSL accepts a certificate and a key that do not belong together and only fails
/// at handshake time, so start-up does one handshake with itself over a socket pair.
fn prove_key_matches(acceptor: &TlsAcceptor) -> Result<(), String> {
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
    let connector = TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .danger_accept_invalid_hostnames(true)
        .build()
        .map_err(|e| e.to_string())?;
    let client = connector
        .connect("serviceq.invalid", client_end)
        .map(drop)
        .map_err(|e| e.to_string());
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
    fn non_pkcs8_keys_get_a_conversion_hint() {
        let path = Path::new("k.pem");
        let e = check_key_format(b"-----BEGIN RSA PRIVATE KEY-----\n", path).unwrap_err();
        assert_eq!(e.key, "SSL_PRIVATE_KEY_FILE");
        assert!(e.message.contains("PKCS#1") && e.message.contains("openssl pkcs8 -topk8"));
        let e = check_key_format(b"-----BEGIN EC PRIVATE KEY-----\n", path).unwrap_err();
        assert!(e.message.contains("SEC1"));
        assert!(check_key_format(b"-----BEGIN PRIVATE KEY-----\n", path).is_ok());
    }
}
