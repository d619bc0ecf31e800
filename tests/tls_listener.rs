//! The TLS listener as nginx's (README "TLS"): TLS 1.3 and 1.2 with `openssl s_client`
//! and curl, AES-GCM first for 1.2, ALPN `http/1.1`, an `h2`-only client refused with an
//! alert, session resumption, the handshake bounded by CLIENT_HEADER_TIMEOUT as a
//! deadline (a dribbled ClientHello), and SIGHUP swapping the certificate for new
//! handshakes while open connections keep theirs (a bad pair keeps the running one).
//!
//! Certificates come from the `openssl` CLI; the keep-alive client is the `openssl`
//! crate, so the test sees which certificate each handshake got.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};

use support::tls::*;
use support::*;

/// `openssl s_client` with `flags`, sending `input` (then EOF); its stdout and
/// stderr together, and whether it exited 0.
fn s_client(port: u16, flags: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    let mut stdin = child.stdin.take().expect("s_client stdin");
    let _ = stdin.write_all(input.as_bytes());
    // Closing stdin ends s_client once the response is in (or at once without input).
    let input_done = !input.is_empty();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stdin = Some(stdin);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        if input_done {
            thread::sleep(Duration::from_millis(300));
        }
        stdin.take();
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("s_client output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A TLS listener with a fresh certificate in front of an upstream that answers.
struct Setup {
    dir: TempDir,
    u: Upstream,
    sq: ServiceQ,
    cert: PathBuf,
}

/// None (the test skips, saying why) when openssl or curl is missing.
fn setup() -> Option<Setup> {
    if !have_openssl_and_curl() {
        return None;
    }
    let dir = TempDir::new("tls");
    let u = Upstream::start(Behaviour::Ok);
    let (cert, key) = make_cert(dir.path(), "listener");
    let sq = tls_conf(&u.url(), &cert, &key).start();
    Some(Setup { dir, u, sq, cert })
}

#[test]
fn tls_1_3_and_1_2_with_s_client_and_curl() {
    let Some(t) = setup() else { return };
    let (sq, u, cert) = (&t.sq, &t.u, &t.cert);
    let (ok, text) = s_client(sq.port(), &["-brief", "-tls1_3"], "");
    assert!(ok && text.contains("Protocol version: TLSv1.3"), "{text}");
    // TLS 1.2: an ECDHE AES-GCM suite for a client with OpenSSL's defaults; the
    // client's order counts (Mozilla intermediate), so one without AES hardware that
    // puts ChaCha20 first gets it.
    let (ok, text) = s_client(sq.port(), &["-brief", "-tls1_2"], "");
    assert!(ok && text.contains("Protocol version: TLSv1.2"), "{text}");
    assert!(
        text.contains("Ciphersuite: ECDHE-ECDSA-AES256-GCM-SHA384"),
        "{text}"
    );
    let chacha_first = "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256";
    let (ok, text) = s_client(
        sq.port(),
        &["-brief", "-tls1_2", "-cipher", chacha_first],
        "",
    );
    assert!(
        ok && text.contains("Ciphersuite: ECDHE-ECDSA-CHACHA20-POLY1305"),
        "{text}"
    );
    // A TLS 1.2 client offering only CBC suites (outside Mozilla intermediate) is refused.
    let (ok, text) = s_client(
        sq.port(),
        &["-brief", "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"],
        "",
    );
    assert!(!ok, "a CBC-only client got in:\n{text}");
    for (flags, want) in [
        (&["--tlsv1.3"][..], "SSL connection using TLSv1.3"),
        (
            &["--tlsv1.2", "--tls-max", "1.2"][..],
            "SSL connection using TLSv1.2 / ECDHE",
        ),
    ] {
        let mut args = vec!["-v"];
        args.extend(flags);
        let out = curl(cert, &args, &[https_url(sq, "/v")]);
        assert_curl_ok(&out);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(log.contains(want), "{flags:?}: {log}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), u.name());
    }
}

#[test]
fn alpn_answers_http_1_1_and_refuses_h2_only_clients() {
    let Some(t) = setup() else { return };
    let (sq, u, cert) = (&t.sq, &t.u, &t.cert);
    let (ok, text) = s_client(sq.port(), &["-alpn", "h2,http/1.1"], "");
    assert!(ok && text.contains("ALPN protocol: http/1.1"), "{text}");
    // curl offers h2 and http/1.1, and must settle on HTTP/1.1.
    let out = curl(cert, &["-v", "--http2"], &[https_url(sq, "/alpn")]);
    assert_curl_ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("ALPN: server accepted http/1.1"), "{log}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), u.name());
    // h2 only: a fatal no_application_protocol alert, not a hang or a reset.
    let (ok, text) = s_client(sq.port(), &["-alpn", "h2"], "");
    assert!(!ok, "an h2-only client got in:\n{text}");
    assert!(text.contains("no application protocol"), "{text}");
    // The listener still serves afterwards.
    let out = curl(cert, &[], &[https_url(sq, "/after")]);
    assert_curl_ok(&out);
}

#[test]
fn sessions_resume() {
    let Some(Setup { dir, u: _u, sq, .. }) = setup() else {
        return;
    };
    let sess = dir.join("session.pem");
    let sess = sess.display().to_string();
    for version in ["-tls1_3", "-tls1_2"] {
        let request = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        // -ign_eof: read until the server closes (Connection: close), so the session
        // (TLS 1.3 tickets come after the handshake) is in before s_client writes it.
        let flags = [version, "-ign_eof", "-sess_out", &sess];
        let (ok, text) = s_client(sq.port(), &flags, request);
        assert!(ok, "{version}: {text}");
        let (ok, text) = s_client(sq.port(), &[version, "-sess_in", &sess], "");
        assert!(ok && text.contains("Reused"), "{version}: {text}");
    }
}

/// SPEC §8, issue 13: the handshake is one deadline. A ClientHello record dribbled a
/// byte every 300 ms never lets a per-read timeout expire; the connection must still be
/// closed once CLIENT_HEADER_TIMEOUT (2 s) has passed since it was accepted.
#[test]
fn dribbled_client_hello_is_closed_at_client_header_timeout() {
    if !have_openssl() {
        return;
    }
    let dir = TempDir::new("tls");
    let (cert, key) = make_cert(dir.path(), "listener");
    let u = Upstream::start(Behaviour::Ok);
    let sq = tls_conf(&u.url(), &cert, &key)
        .set("CLIENT_HEADER_TIMEOUT", "2")
        .start();
    let mut tcp = TcpStream::connect(sq.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let started = Instant::now();
    // A handshake record header announcing 512 bytes, then the bytes one at a time.
    let mut bytes = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    bytes.resize(5 + 512, 0x2a);
    let mut closed_after = None;
    for b in bytes.iter().take(40) {
        if tcp.write_all(&[*b]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        match tcp.read(&mut buf) {
            Ok(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
    }
    let closed_after = closed_after.expect("still open after 12 s of a dribbled ClientHello");
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_millis(3500),
        "closed after {closed_after:?}, CLIENT_HEADER_TIMEOUT=2"
    );
}

// ---------------------------------------------------------------------------------------
// SIGHUP and the certificate
// ---------------------------------------------------------------------------------------

/// A TLS client that trusts nothing in particular and keeps its connection.
fn tls_connect(sq: &ServiceQ) -> SslStream<TcpStream> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    b.set_verify(SslVerifyMode::NONE);
    let tcp = TcpStream::connect(sq.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    b.build()
        .configure()
        .expect("configure")
        .verify_hostname(false)
        .connect("localhost", tcp)
        .expect("TLS handshake")
}

/// The DER of the certificate this connection was served.
fn served_cert(tls: &SslStream<TcpStream>) -> Vec<u8> {
    tls.ssl()
        .peer_certificate()
        .expect("a peer certificate")
        .to_der()
        .expect("DER")
}

fn der_of(pem: &Path) -> Vec<u8> {
    openssl::x509::X509::from_pem(&fs::read(pem).expect("read cert"))
        .expect("PEM")
        .to_der()
        .expect("DER")
}

/// One keep-alive request on `tls`; the body.
fn get_on(tls: &mut SslStream<TcpStream>, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls.write_all(req.as_bytes()).expect("write request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tls.read(&mut buf).expect("read response");
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .expect("Content-Length");
            if got.len() >= end + 4 + len {
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                return text[end + 4..].to_string();
            }
        }
    }
}

#[test]
fn sighup_swaps_the_certificate_and_keeps_open_connections() {
    if !have_openssl() {
        return;
    }
    let dir = TempDir::new("tls");
    let (cert, key) = make_cert(dir.path(), "old");
    let u = Upstream::start(Behaviour::Ok);
    let sq = tls_conf(&u.url(), &cert, &key).start();
    let mut kept = tls_connect(&sq);
    let old_der = der_of(&cert);
    assert_eq!(served_cert(&kept), old_der);
    assert_eq!(get_on(&mut kept, "/before"), u.name());

    // A new pair written over the same paths, then SIGHUP.
    let (new_cert, new_key) = make_cert(dir.path(), "new");
    fs::copy(&new_cert, &cert).unwrap();
    fs::copy(&new_key, &key).unwrap();
    sq.signal("HUP");
    assert!(
        sq.wait_for_stderr("listener certificate replaced", Duration::from_secs(5)),
        "{}",
        sq.stderr()
    );
    let fresh = tls_connect(&sq);
    assert_eq!(
        served_cert(&fresh),
        der_of(&new_cert),
        "new handshakes get the new pair"
    );
    assert_eq!(
        get_on(&mut kept, "/after"),
        u.name(),
        "the open connection goes on"
    );
    assert_eq!(served_cert(&kept), old_der);

    // A key of another pair: the reload fails, the running pair stays.
    let (_other_cert, other_key) = make_cert(dir.path(), "other");
    fs::copy(&other_key, &key).unwrap();
    sq.signal("HUP");
    assert!(
        sq.wait_for_stderr("reload failed", Duration::from_secs(5)),
        "{}",
        sq.stderr()
    );
    assert!(
        sq.stderr().contains("SSL_PRIVATE_KEY_FILE"),
        "{}",
        sq.stderr()
    );
    let after_bad = tls_connect(&sq);
    assert_eq!(served_cert(&after_bad), der_of(&new_cert));
    assert_eq!(get_on(&mut kept, "/still"), u.name());

    // A file that is not a certificate at all: the same.
    fs::write(&cert, "not a certificate\n").unwrap();
    sq.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || sq
            .stderr()
            .matches("reload failed")
            .count()
            == 2),
        "{}",
        sq.stderr()
    );
    assert_eq!(served_cert(&tls_connect(&sq)), der_of(&new_cert));
}

/// Two requests in one TLS write (one record): OpenSSL reads ahead, and the second
/// request must still be answered from what it buffered, not wait on the socket.
#[test]
fn pipelined_requests_in_one_record_are_both_answered() {
    let Some(Setup {
        dir: _dir, u, sq, ..
    }) = setup()
    else {
        return;
    };
    let mut tls = tls_connect(&sq);
    let two = "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n";
    tls.write_all(two.as_bytes()).expect("write");
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.matches("HTTP/1.1 200").count() < 2 && Instant::now() < deadline {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert_eq!(got.matches("HTTP/1.1 200").count(), 2, "{got}");
    let targets: Vec<String> = u.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, ["/1", "/2"]);
}
