//! More TLS (SPEC §8, README "TLS"): keep-alive over one TLS connection, failover away
//! from an https endpoint whose certificate is not trusted, a plain-HTTP client on the
//! TLS port, X-Forwarded-Proto, private key formats (PKCS#8, PKCS#1 and SEC1 taken,
//! encrypted refused), and the TLS 1.2 minimum.
//!
//! Certificates come from the `openssl` CLI, TLS clients are `curl` and
//! `openssl s_client`, the untrusted endpoint is `openssl s_server`; each test skips
//! itself (saying so) when a tool is missing.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::tls::*;
use support::*;

// ---------------------------------------------------------------------------------------

#[test]
fn two_requests_share_one_tls_connection() {
    if !have_openssl_and_curl() {
        return;
    }
    let certs = TempDir::new("tls");
    let (cert, key) = make_cert(certs.path(), "listener");
    let u = Upstream::start(Behaviour::Echo);
    let admin_port = refusing_port();
    let sq = tls_conf(&u.url(), &cert, &key)
        .set("ADMIN_PORT", &admin_port.to_string())
        .start();
    let out = curl(
        &cert,
        &["-v"],
        &[https_url(&sq, "/a"), https_url(&sq, "/b")],
    );
    assert_curl_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/a/b");
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(
        trace.contains("Re-using existing connection"),
        "curl did not reuse the TLS connection:\n{trace}"
    );
    assert_eq!(
        trace.matches("SSL connection using").count(),
        1,
        "expected exactly one TLS handshake:\n{trace}"
    );
    // The proxy agrees: one client connection for the two requests.
    assert!(
        wait_for_port(admin_port, Duration::from_secs(5)),
        "admin listener not up"
    );
    let admin = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let metrics = get(admin, "/metrics").body_str();
    assert!(
        metrics.contains("\nserviceq_connections_total 1\n"),
        "one client connection expected:\n{metrics}"
    );
    assert_eq!(u.request_count(), 2);
}

#[test]
fn untrusted_https_endpoint_fails_over_to_a_healthy_one() {
    if !have_openssl() {
        return;
    }
    let certs = TempDir::new("tls");
    let (cert, key) = make_cert(certs.path(), "untrusted");
    let bad = TlsEndpoint::start(&cert, &key);
    let good = Upstream::start(Behaviour::Ok);
    // No SSL_UPSTREAM_CA_FILE: the self-signed certificate is not trusted.
    let sq = Conf::new(&[bad.url(), good.url()]).start();
    for i in 0..20 {
        let r = get(sq.addr(), &format!("/r{i}"));
        assert_eq!(
            r.status,
            200,
            "request {i}: {}{}\nerror log:\n{}",
            r.raw_head,
            r.body_str(),
            sq.error_log()
        );
        assert_eq!(r.body_str(), good.name());
    }
    assert_eq!(good.request_count(), 20);
    let lines = sq.error_log_lines();
    assert!(
        !lines.is_empty(),
        "in 20 requests the https endpoint was never tried (or its failure not logged)"
    );
    for line in &lines {
        if let Err(e) = check_log_line(line, &bad.url(), 701, "UPSTREAM_DOWN") {
            panic!("{e}\nerror log:\n{}", sq.error_log());
        }
    }
    let stderr = sq.stderr();
    assert!(
        stderr.contains(&format!("{}: TLS handshake failed", bad.url())),
        "the reason should be on stderr:\n{stderr}"
    );
}

#[test]
fn plain_http_on_the_tls_port_is_closed_without_harm() {
    if !have_openssl_and_curl() {
        return;
    }
    let certs = TempDir::new("tls");
    let (cert, key) = make_cert(certs.path(), "listener");
    let u = Upstream::start(Behaviour::Ok);
    let header_timeout = Duration::from_secs(3);
    let sq = tls_conf(&u.url(), &cert, &key)
        .set("CLIENT_HEADER_TIMEOUT", "3")
        .set("CONCURRENCY_PEAK", "2")
        .start();
    let mut plain = Client::connect(sq.addr());
    plain.send("GET /plain HTTP/1.1\r\nHost: x\r\n\r\n");
    // Meanwhile a TLS client is served.
    let ca = cert.clone();
    let during = https_url(&sq, "/tls-during");
    let tls = thread::spawn(move || curl(&ca, &[], &[during]));
    let start = Instant::now();
    assert!(
        plain.closed_within(header_timeout),
        "a plain-HTTP client on the TLS port was not closed within CLIENT_HEADER_TIMEOUT"
    );
    let closed_after = start.elapsed();
    let got = String::from_utf8_lossy(plain.conn.buffered()).into_owned();
    assert!(
        !got.contains(u.name()),
        "the plain request was served: {got:?}"
    );
    let out = tls.join().unwrap();
    assert_curl_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), u.name());
    // Nothing of the plain request reached the endpoint; the listener still serves.
    let out = curl(&cert, &[], &[https_url(&sq, "/tls-after")]);
    assert_curl_ok(&out);
    let targets: Vec<String> = u.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        targets,
        vec!["/tls-during", "/tls-after"],
        "closed after {closed_after:?}"
    );
}

#[test]
fn x_forwarded_proto_is_https_on_a_tls_listener() {
    if !have_openssl_and_curl() {
        return;
    }
    let certs = TempDir::new("tls");
    let (cert, key) = make_cert(certs.path(), "listener");
    let u = Upstream::start(Behaviour::Ok);
    let sq = tls_conf(&u.url(), &cert, &key).start();
    // Two requests on one connection, both with a client-supplied value that must not
    // survive.
    let out = curl(
        &cert,
        &["-H", "X-Forwarded-Proto: http"],
        &[https_url(&sq, "/one"), https_url(&sq, "/two")],
    );
    assert_curl_ok(&out);
    let reqs = u.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(
            r.headers_named("x-forwarded-proto"),
            vec!["https"],
            "{} {:?}",
            r.target,
            r.headers
        );
    }
}

// ---------------------------------------------------------------------------------------
// Private key formats
// ---------------------------------------------------------------------------------------

/// A self-signed certificate for an existing key file.
fn cert_for_key(dir: &Path, key: &Path, name: &str) -> PathBuf {
    let cert = dir.join(format!("{name}-cert.pem"));
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let mut args = vec!["req", "-x509", "-key", &k, "-days", "2", "-out", &c];
    args.extend(SUBJECT);
    openssl(&args, dir);
    cert
}

/// Writes a private key with `openssl ARGS` (which write `file` in `dir`), checks that it
/// is a `-----BEGIN {pem}-----` PEM file and makes a self-signed certificate for it:
/// (cert, key).
fn key_with_cert(dir: &TempDir, args: &[&str], file: &str, pem: &str) -> (PathBuf, PathBuf) {
    openssl(args, dir.path());
    let key = dir.join(file);
    assert!(
        fs::read_to_string(&key)
            .unwrap()
            .starts_with(&format!("-----BEGIN {pem}-----")),
        "{file} is not a {pem}"
    );
    let cert = cert_for_key(dir.path(), &key, file.trim_end_matches(".pem"));
    (cert, key)
}

/// ServiceQ serves HTTPS with this pair (checked with --check first).
fn key_works(cert: &Path, key: &Path, path: &str) {
    let ran = run_check(&tls_listener_body(cert, key), &["--check"]);
    assert_eq!(ran.code(), Some(0), "{}", ran.describe());
    let u = Upstream::start(Behaviour::Ok);
    let sq = tls_conf(&u.url(), cert, key).start();
    let out = curl(cert, &[], &[https_url(&sq, path)]);
    assert_curl_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), u.name());
}

#[test]
fn sec1_ec_key_works() {
    if !have_openssl_and_curl() {
        return;
    }
    let dir = TempDir::new("tls");
    let (cert, key) = key_with_cert(
        &dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.pem",
        ],
        "sec1.pem",
        "EC PRIVATE KEY",
    );
    key_works(&cert, &key, "/sec1");
}

#[test]
fn pkcs1_rsa_key_works() {
    if !have_openssl_and_curl() {
        return;
    }
    let dir = TempDir::new("tls");
    let (cert, key) = key_with_cert(
        &dir,
        &["genrsa", "-traditional", "-out", "rsa1.pem", "2048"],
        "rsa1.pem",
        "RSA PRIVATE KEY",
    );
    key_works(&cert, &key, "/rsa1");
}

#[test]
fn pkcs8_ec_key_works() {
    if !have_openssl_and_curl() {
        return;
    }
    let dir = TempDir::new("tls");
    let (cert, key) = key_with_cert(
        &dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec-pk8.pem",
        ],
        "ec-pk8.pem",
        "PRIVATE KEY",
    );
    key_works(&cert, &key, "/ec");
}

#[test]
fn encrypted_key_is_refused_with_the_decryption_command() {
    if !have_openssl() {
        return;
    }
    let dir = TempDir::new("tls");
    let (cert, plain) = make_cert(dir.path(), "plain");
    let key = dir.join("enc.pem");
    let (p, k) = (plain.display().to_string(), key.display().to_string());
    let args = [
        "pkey",
        "-in",
        &p,
        "-aes-128-cbc",
        "-passout",
        "pass:secret",
        "-out",
        &k,
    ];
    openssl(&args, dir.path());
    expect_start_failure(
        &tls_listener_body(&cert, &key),
        "an encrypted key",
        |last| {
            assert!(last.contains("SSL_PRIVATE_KEY_FILE"), "{last:?}");
            assert!(last.contains("holds an encrypted key"), "{last:?}");
            assert!(
                last.contains(&format!("openssl pkey -in {}", key.display())),
                "{last:?}"
            );
        },
    );
}

// ---------------------------------------------------------------------------------------
// Protocol versions
// ---------------------------------------------------------------------------------------

/// Lowest security level and no system openssl.cnf (Debian's sets MinProtocol =
/// TLSv1.2), so that the local client can offer TLS 1.1 at all.
const OLD_TLS_ENV: (&str, &str) = ("OPENSSL_CONF", "/dev/null");
const OLD_TLS_CIPHERS: &str = "DEFAULT:@SECLEVEL=0";

/// `openssl s_client` handshake with a protocol flag; true when it succeeded.
fn s_client(port: u16, flags: &[&str]) -> (bool, String) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-brief", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(flags)
        .env(OLD_TLS_ENV.0, OLD_TLS_ENV.1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = out.status.success() && text.contains("Protocol version:");
    (ok, text)
}

#[test]
fn tls_1_1_client_is_refused() {
    if !have_openssl() {
        return;
    }
    let certs = TempDir::new("tls");
    let (cert, key) = make_cert(certs.path(), "listener");
    // Can this openssl do TLS 1.1 at all? Try it against its own s_server.
    {
        let probe = TlsEndpoint::start_with(
            &cert,
            &key,
            &["-tls1_1", "-cipher", OLD_TLS_CIPHERS],
            &[OLD_TLS_ENV],
        );
        let (ok, text) = s_client(probe.port(), &["-tls1_1", "-cipher", OLD_TLS_CIPHERS]);
        if !ok {
            eprintln!("SKIP: the local openssl cannot do TLS 1.1:\n{text}");
            return;
        }
    }
    let u = Upstream::start(Behaviour::Ok);
    let sq = tls_conf(&u.url(), &cert, &key).start();
    let (ok, text) = s_client(sq.port(), &["-tls1_1", "-cipher", OLD_TLS_CIPHERS]);
    assert!(!ok, "a TLS 1.1 handshake succeeded:\n{text}");
    // Control: the same client with TLS 1.2 gets in.
    let (ok, text) = s_client(sq.port(), &["-tls1_2"]);
    assert!(ok, "TLS 1.2 handshake failed:\n{text}");
}

#[test]
fn flooded_tls_client_reads_its_429() {
    // SPEC §6: a client turned away at CONCURRENCY_PEAK reads a complete 429 response.
    // On a TLS listener that response has to come inside TLS, or the client only sees
    // a protocol error.
    if !have_openssl_and_curl() {
        return;
    }
    let certs = TempDir::new("tls");
    let (cert, key) = make_cert(certs.path(), "listener");
    let u = Upstream::start(Behaviour::Hang);
    let sq = tls_conf(&u.url(), &cert, &key)
        .set("CONCURRENCY_PEAK", "1")
        .set("OUTGOING_REQUEST_TIMEOUT", "30")
        .start();
    let mut busy = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&cert)
        .arg(https_url(&sq, "/hang"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run curl");
    let reached = u.wait_requests(1, Duration::from_secs(5));
    let out = curl(&cert, &["-i"], &[https_url(&sq, "/flooded")]);
    let _ = busy.kill();
    let _ = busy.wait();
    assert!(reached, "the first request never reached the endpoint");
    assert!(
        out.status.success(),
        "the flooded TLS client could not read a response ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/1.1 429") && text.ends_with("{\"sq_msg\":\"Request Discarded\"}"),
        "{text}"
    );
}
