//! TLS (SPEC §8): HTTPS on the listener, https:// endpoints verified against
//! SSL_UPSTREAM_CA_FILE (or not, with SSL_UPSTREAM_VERIFY=false), certificate errors at
//! start-up, and a silent TLS client held at most CLIENT_HEADER_TIMEOUT.
//!
//! Certificates are made with the `openssl` CLI and the https endpoint is
//! `openssl s_server -www`; the tests skip themselves when openssl is missing.

// Each test file uses part of the shared helpers: see tests/support/mod.rs.
#[allow(dead_code)]
mod support;

use std::time::Duration;

use support::tls::*;
use support::*;

#[test]
fn https_listener() {
    if !have_openssl() {
        return;
    }
    let certs = TempDir::new("tls");
    let (cert, key) = make_cert(certs.path(), "listener");
    let u = Upstream::start(Behaviour::Ok);
    let sq = tls_conf(&u.url(), &cert, &key).start();
    let out = curl(&cert, &[], &[https_url(&sq, "/secure")]);
    assert_curl_ok(&out);
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
    let sq = tls_conf(&u.url(), &cert, &key)
        .set("CLIENT_HEADER_TIMEOUT", "1")
        .set("CONCURRENCY_PEAK", "1")
        .start();
    let mut silent = Client::connect(sq.addr());
    assert!(
        silent.closed_within(Duration::from_secs(5)),
        "a silent TLS client held its worker past CLIENT_HEADER_TIMEOUT"
    );
    let out = curl(&cert, &[], &[https_url(&sq, "/after")]);
    assert_curl_ok(&out);
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

/// Both a normal start and `--check` fail on `body` with an error line that mentions
/// one of `needle_any`.
fn expect_start_error(body: &str, needle_any: &[&str]) {
    expect_start_failure(body, "bad certificates", |last| {
        assert!(
            needle_any.iter().any(|n| last.contains(n)),
            "{last:?} should mention one of {needle_any:?}"
        );
    });
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
        &tls_listener_body(&cert, &other_key),
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
