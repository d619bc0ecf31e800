//! Automatic certificates (README "Automatic certificates"): ServiceQ against Debian's
//! `pebble` (Let's Encrypt's ACME test server) on loopback, `pebble-challtestsrv` as
//! the DNS server resolving the test names to 127.0.0.1, and pebble's HTTP-01
//! validation connecting to ServiceQ's SSL_AUTO_HTTP_PORT, so the validation is real.
//! Certificates live 15 s, so renewal (at a third of the lifetime left) is seen too.
//!
//! Without pebble the tests skip, saying so; with `CI` set they fail.

mod support;

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

use support::tls::*;
use support::*;

const DOMAINS: &str = "sq.test,www.sq.test";

fn have_pebble() -> bool {
    let ok = ["pebble", "pebble-challtestsrv"]
        .iter()
        .all(|t| Command::new(t).arg("-h").output().is_ok())
        && have_openssl_and_curl();
    if !ok && std::env::var_os("CI").is_some() {
        panic!("pebble, pebble-challtestsrv, openssl and curl are needed (CI is set)");
    }
    if !ok {
        eprintln!("SKIP: pebble or pebble-challtestsrv is not installed");
    }
    ok
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// pebble and its DNS server; `http_port` is where pebble validates HTTP-01.
struct Pebble {
    dir: TempDir,
    acme: Option<Proc>,
    _dns: Proc,
    port: u16,
    management: u16,
}

impl Pebble {
    fn start(http_port: u16) -> Pebble {
        let dir = TempDir::new("pebble");
        let (cert, key) = make_cert(dir.path(), "api");
        let (dns_port, dns_mgmt) = (refusing_port(), refusing_port());
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pebble-challtestsrv");
        let dns = Proc(dns);
        assert!(
            wait_for_port(dns_mgmt, Duration::from_secs(10)),
            "challtestsrv not up"
        );
        let (port, management) = (refusing_port(), refusing_port());
        let config = dir.join("pebble.json");
        fs::write(
            &config,
            format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:{port}",
                  "managementListenAddress": "127.0.0.1:{management}",
                  "certificate": "{}", "privateKey": "{}",
                  "httpPort": {http_port}, "tlsPort": {}, "ocspResponderURL": "",
                  "externalAccountBindingRequired": false,
                  "certificateValidityPeriod": 15}}}}"#,
                cert.display(),
                key.display(),
                refusing_port()
            ),
        )
        .unwrap();
        let acme = Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // No random 0-15 s sleep before each validation; nonces are still rejected
            // now and then (PEBBLE_WFE_NONCEREJECT's default), which the client retries.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pebble");
        let acme = Some(Proc(acme));
        assert!(
            wait_for_port(port, Duration::from_secs(10)),
            "pebble not up"
        );
        Pebble {
            dir,
            acme,
            _dns: dns,
            port,
            management,
        }
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The certificate pebble's API is served with (ServiceQ trusts it by SSL_AUTO_CA_FILE).
    fn api_ca(&self) -> PathBuf {
        self.dir.join("api-cert.pem")
    }

    /// pebble's issuing root, fetched from its management interface.
    fn root(&self) -> PathBuf {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(self.api_ca())
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.dir.join("root.pem");
        fs::write(&path, &out.stdout).unwrap();
        path
    }

    fn kill(&mut self) {
        self.acme.take();
    }
}

fn acme_conf(u: &Upstream, directory: &str, ca: &Path, http_port: u16) -> Conf {
    Conf::new(&[u.url()])
        .set("SSL_ENABLE", "true")
        .set("SSL_AUTO_ENABLE", "true")
        .set("SSL_AUTO_DOMAINS", DOMAINS)
        .set("SSL_AUTO_DIRECTORY_URL", directory)
        .set("SSL_AUTO_CACHE_DIR", "{dir}/acme")
        .set("SSL_AUTO_HTTP_PORT", &http_port.to_string())
        .set("SSL_AUTO_CA_FILE", &ca.display().to_string())
}

/// The DER of the leaf certificate ServiceQ serves now.
fn served(sq: &ServiceQ) -> Vec<u8> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let tcp = TcpStream::connect(sq.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tls = b
        .build()
        .configure()
        .unwrap()
        .verify_hostname(false)
        .connect("sq.test", tcp)
        .expect("TLS handshake");
    tls.ssl().peer_certificate().unwrap().to_der().unwrap()
}

/// `openssl s_client` verifying the served chain against `root` for `name`.
fn verify_with_s_client(sq: &ServiceQ, root: &Path, name: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-brief", "-connect"])
        .arg(format!("127.0.0.1:{}", sq.port()))
        .args([
            "-servername",
            name,
            "-verify_hostname",
            name,
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(root)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (
        out.status.success() && text.contains("Verification: OK"),
        text,
    )
}

#[test]
fn certificate_is_issued_served_renewed_and_kept_when_the_server_breaks() {
    if !have_pebble() {
        return;
    }
    let http_port = refusing_port();
    let mut pebble = Pebble::start(http_port);
    let u = Upstream::start(Behaviour::Ok);
    let sq = acme_conf(&u, &pebble.directory(), &pebble.api_ca(), http_port).start();
    assert!(
        sq.wait_for_stderr("ACME: now serving", Duration::from_secs(30)),
        "no certificate:\n{}",
        sq.stderr()
    );
    // Issued by pebble's CA for both names, and HTTPS works with it.
    let root = pebble.root();
    for name in ["sq.test", "www.sq.test"] {
        let (ok, text) = verify_with_s_client(&sq, &root, name);
        assert!(ok, "{name}: {text}");
    }
    let (ok, text) = verify_with_s_client(&sq, &root, "other.test");
    assert!(!ok, "the certificate should not name other.test:\n{text}");
    let resolve = format!("sq.test:{}:127.0.0.1", sq.port());
    let out = curl(
        &root,
        &["--resolve", &resolve],
        &[format!("https://sq.test:{}/x", sq.port())],
    );
    assert_curl_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), u.name());
    assert!(
        sq.dir().join("acme/cert.pem").exists() && sq.dir().join("acme/account-key.pem").exists()
    );

    // Renewed before expiry (15 s lifetime: at 5 s left) and swapped in.
    let first = served(&sq);
    assert!(
        wait_until(Duration::from_secs(30), || sq
            .stderr()
            .matches("ACME: now serving")
            .count()
            >= 2),
        "not renewed:\n{}",
        sq.stderr()
    );
    let second = served(&sq);
    assert_ne!(first, second, "the renewed certificate is not served");

    // The ACME server goes away: renewal fails, the running certificate stays.
    pebble.kill();
    assert!(
        wait_until(Duration::from_secs(30), || sq
            .stderr()
            .contains("renewal failed")),
        "{}",
        sq.stderr()
    );
    assert!(
        sq.stderr().contains("the running certificate stays"),
        "{}",
        sq.stderr()
    );
    assert_eq!(served(&sq), second);
}

#[test]
fn before_the_first_certificate_handshakes_fail_cleanly_and_status_says_why() {
    if !have_pebble() {
        return;
    }
    let http_port = refusing_port();
    let ca_dir = TempDir::new("acme-ca");
    let (ca, _) = make_cert(ca_dir.path(), "unused");
    let dead = format!("https://127.0.0.1:{}/dir", refusing_port());
    let admin_port = refusing_port();
    let u = Upstream::start(Behaviour::Ok);
    let sq = acme_conf(&u, &dead, &ca, http_port)
        .set("ADMIN_ADDRESS", "127.0.0.1")
        .set("ADMIN_PORT", &admin_port.to_string())
        .start();
    assert!(
        sq.wait_for_stderr("ACME: first certificate failed", Duration::from_secs(10)),
        "{}",
        sq.stderr()
    );
    // A TLS alert, not a hang: s_client ends at once with a handshake failure.
    let out = Command::new("openssl")
        .args(["s_client", "-brief", "-connect"])
        .arg(format!("127.0.0.1:{}", sq.port()))
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("alert handshake failure"),
        "{text}"
    );
    assert!(wait_for_port(admin_port, Duration::from_secs(5)));
    let admin = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let page = get(admin, "/status").body_str();
    assert!(
        page.contains("no certificate yet: the ACME order failed"),
        "{page}"
    );
    // The HTTP-01 port redirects everything else to https.
    let mut c = Client::connect(format!("127.0.0.1:{http_port}").parse().unwrap());
    c.send("GET /a?b HTTP/1.1\r\nHost: sq.test\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 301, "{}", r.raw_head);
    assert_eq!(
        r.header("location"),
        Some(format!("https://sq.test:{}/a?b", sq.port()).as_str())
    );
}

#[test]
fn unreadable_acme_ca_file_and_busy_http_port_are_start_errors() {
    let dir = TempDir::new("acme-conf");
    let missing = dir.join("missing-ca.pem");
    let body = tls_body(&format!(
        "SSL_ENABLE=true\nSSL_AUTO_ENABLE=true\nSSL_AUTO_DOMAINS=sq.test\n\
         SSL_AUTO_CACHE_DIR={{dir}}/acme\nSSL_AUTO_CA_FILE={}\n",
        missing.display()
    ));
    expect_start_failure(&body, "a missing SSL_AUTO_CA_FILE", |last| {
        assert!(last.contains("SSL_AUTO_CA_FILE: cannot read"), "{last:?}");
    });
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let body = tls_body(&format!(
        "SSL_ENABLE=true\nSSL_AUTO_ENABLE=true\nSSL_AUTO_DOMAINS=sq.test\n\
         SSL_AUTO_CACHE_DIR={{dir}}/acme\nSSL_AUTO_HTTP_PORT={port}\n"
    ));
    let ran = run_check(&body, &[]);
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    let last = ran.last_stderr_line();
    assert!(
        last.contains("SSL_AUTO_HTTP_PORT: cannot listen on"),
        "{last:?}"
    );
}
