//! TLS (SPEC §8): HTTPS on the listener, https:// endpoints verified against
//! SSL_UPSTREAM_CA_FILE (or not, with SSL_UPSTREAM_VERIFY=false), certificate errors at
//! start-up, and a silent TLS client held at most CLIENT_HEADER_TIMEOUT.
//!
//! Certificates are made with the `openssl` CLI and the https endpoint is
//! `openssl s_server -www`; the tests skip themselves when openssl is missing.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

fn have_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A self-signed EC certificate for localhost / 127.0.0.1: (cert.pem, key.pem) in `dir`.
fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl req");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// `openssl s_server -www` on a free port: an https endpoint answering every GET with
/// a close-delimited HTTP/1.0 200 page. Killed on drop.
struct TlsEndpoint {
    child: Child,
    port: u16,
}

impl TlsEndpoint {
    fn start(cert: &Path, key: &Path) -> TlsEndpoint {
        let port = refusing_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(port.to_string())
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn openssl s_server");
        let ep = TlsEndpoint { child, port };
        assert!(
            wait_until(Duration::from_secs(5), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "s_server did not come up"
        );
        ep
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl_https(port: u16, ca: &Path, path: &str) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl")
}

#[test]
fn https_listener() {
    if !have_openssl() {
        return;
    }
    let certs = TempDir::new("tls");
    let (cert, key) = make_cert(certs.path(), "listener");
    let u = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[u.url()])
        .set("SSL_ENABLE", "true")
        .set("SSL_CERTIFICATE_FILE", &cert.display().to_string())
        .set("SSL_PRIVATE_KEY_FILE", &key.display().to_string())
        .start();
    let out = curl_https(sq.port(), &cert, "/secure");
    assert!(
        out.status.success(),
        "curl over TLS failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), u.name());
    let req = &u.requests()[0];
    assert_eq!(req.target, "/secure");
    assert_eq!(
        req.header("x-forwarded-proto"),
        Some("https"),
        "{:?}",
        req.headers
    );
}

#[test]
fn silent_tls_client_is_dropped_after_client_header_timeout() {
    if !have_openssl() {
        return;
    }
    let certs = TempDir::new("tls");
    let (cert, key) = make_cert(certs.path(), "listener");
    let u = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[u.url()])
        .set("SSL_ENABLE", "true")
        .set("SSL_CERTIFICATE_FILE", &cert.display().to_string())
        .set("SSL_PRIVATE_KEY_FILE", &key.display().to_string())
        .set("CLIENT_HEADER_TIMEOUT", "1")
        .set("CONCURRENCY_PEAK", "1")
        .start();
    let mut silent = Client::connect(sq.addr());
    assert!(
        silent.closed_within(Duration::from_secs(5)),
        "a silent TLS client held its worker past CLIENT_HEADER_TIMEOUT"
    );
    let out = curl_https(sq.port(), &cert, "/after");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn https_endpoint_verified_with_ca_file() {
    if !have_openssl() {
        return;
    }
    let certs = TempDir::new("tls");
    let (cert, key) = make_cert(certs.path(), "endpoint");
    let ep = TlsEndpoint::start(&cert, &key);
    let sq = Conf::new(&[ep.url()])
        .set("SSL_UPSTREAM_CA_FILE", &cert.display().to_string())
        .set("MAX_RETRIES", "1")
        .start();
    let r = get(sq.addr(), "/");
    assert_eq!(
        r.status,
        200,
        "{}{}\nerror log: {}",
        r.raw_head,
        r.body_str(),
        sq.error_log()
    );
    assert!(
        !r.body.is_empty(),
        "the close-delimited body of s_server -www was lost"
    );
}

#[test]
fn https_endpoint_with_unknown_ca_fails_as_701() {
    if !have_openssl() {
        return;
    }
    let certs = TempDir::new("tls");
    let (cert, key) = make_cert(certs.path(), "endpoint");
    let ep = TlsEndpoint::start(&cert, &key);
    let sq = Conf::new(&[ep.url()]).set("MAX_RETRIES", "1").start();
    let r = get(sq.addr(), "/");
    assert_eq!(r.status, 503, "{}{}", r.raw_head, r.body_str());
    assert!(sq.wait_for_error_log(Duration::from_secs(5), |l| !l.is_empty()));
    let lines = sq.error_log_lines();
    if let Err(e) = check_log_line(&lines[0], &ep.url(), 701, "UPSTREAM_DOWN") {
        panic!("{e}");
    }
}

#[test]
fn https_endpoint_without_verification() {
    if !have_openssl() {
        return;
    }
    let certs = TempDir::new("tls");
    let (cert, key) = make_cert(certs.path(), "endpoint");
    let ep = TlsEndpoint::start(&cert, &key);
    let sq = Conf::new(&[ep.url()])
        .set("SSL_UPSTREAM_VERIFY", "false")
        .set("MAX_RETRIES", "1")
        .start();
    assert!(
        sq.stderr().contains("SSL_UPSTREAM_VERIFY"),
        "no loud warning at start:\n{}",
        sq.stderr()
    );
    let r = get(sq.addr(), "/");
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.body_str());
}

/// A valid body for run_check plus these extra lines (line 7 onwards).
fn tls_body(extra: &str) -> String {
    format!(
        "# tls\nLISTENER_ADDRESS=127.0.0.1\nLISTENER_PORT=0\nERROR_LOG_FILE={{dir}}/error.log\n\
         ENDPOINTS=http://127.0.0.1:9\nCONCURRENCY_PEAK=4\n{extra}"
    )
}

fn expect_start_error(body: &str, needle_any: &[&str]) {
    for args in [&[][..], &["--check"][..]] {
        let ran = run_check(body, args);
        assert!(
            !ran.timed_out,
            "started with bad certificates; {}",
            ran.describe()
        );
        assert_eq!(ran.code(), Some(1), "{}", ran.describe());
        let last = ran.last_stderr_line();
        assert!(
            last.starts_with(&format!("serviceq: {}", ran.config.display())),
            "{last:?}"
        );
        assert!(
            needle_any.iter().any(|n| last.contains(n)),
            "{last:?} should mention one of {needle_any:?}"
        );
    }
}

#[test]
fn unreadable_certificate_is_a_start_error() {
    expect_start_error(
        &tls_body("SSL_ENABLE=true\nSSL_CERTIFICATE_FILE=/nonexistent/cert.pem\nSSL_PRIVATE_KEY_FILE=/nonexistent/key.pem\n"),
        &["SSL_CERTIFICATE_FILE", "SSL_PRIVATE_KEY_FILE", "/nonexistent/"],
    );
}

#[test]
fn ssl_enable_without_certificate_is_a_start_error() {
    expect_start_error(
        &tls_body("SSL_ENABLE=true\n"),
        &["SSL_CERTIFICATE_FILE", "SSL_PRIVATE_KEY_FILE"],
    );
}

#[test]
fn mismatched_key_is_a_start_error() {
    if !have_openssl() {
        return;
    }
    let certs = TempDir::new("tls");
    let (cert, _) = make_cert(certs.path(), "one");
    let (_, other_key) = make_cert(certs.path(), "two");
    expect_start_error(
        &tls_body(&format!(
            "SSL_ENABLE=true\nSSL_CERTIFICATE_FILE={}\nSSL_PRIVATE_KEY_FILE={}\n",
            cert.display(),
            other_key.display()
        )),
        &[
            "SSL_CERTIFICATE_FILE",
            "SSL_PRIVATE_KEY_FILE",
            "key",
            "certificate",
        ],
    );
}

#[test]
fn garbage_upstream_ca_file_is_a_start_error() {
    let certs = TempDir::new("tls");
    let bad = certs.join("bad-ca.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    expect_start_error(
        &tls_body(&format!("SSL_UPSTREAM_CA_FILE={}\n", bad.display())),
        &["SSL_UPSTREAM_CA_FILE"],
    );
}
