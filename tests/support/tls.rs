//! TLS helpers for the integration tests: self-signed certificates made with the
//! `openssl` CLI, `openssl s_server -www` as an https endpoint, and `curl` over TLS.
//! Tests that use them skip themselves when a tool is missing (`have_openssl`, …), and
//! fail instead when env `CI` is set (`require_tool`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{refusing_port, require_tool, wait_for_port, Conf, ServiceQ};

pub fn have_openssl() -> bool {
    require_tool("openssl", "version")
}

pub fn have_openssl_and_curl() -> bool {
    have_openssl() && require_tool("curl", "--version")
}

/// Runs `openssl ARGS` in `dir`; panics (with openssl's stderr) when it fails.
pub fn openssl(args: &[&str], dir: &Path) -> Output {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The subject of every test certificate: localhost / 127.0.0.1.
pub const SUBJECT: [&str; 4] = [
    "-subj",
    "/CN=localhost",
    "-addext",
    "subjectAltName=DNS:localhost,IP:127.0.0.1",
];

/// A self-signed certificate for localhost / 127.0.0.1 with an EC key in PKCS#8 PEM
/// (what `openssl req -newkey` writes): (NAME-cert.pem, NAME-key.pem) in `dir`.
pub fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        &k,
        "-out",
        &c,
    ];
    args.extend(SUBJECT);
    openssl(&args, dir);
    (cert, key)
}

/// A proxy config with an HTTPS listener using this certificate and key.
pub fn tls_conf(upstream: &str, cert: &Path, key: &Path) -> Conf {
    Conf::new(&[upstream])
        .set("SSL_ENABLE", "true")
        .set("SSL_CERTIFICATE_FILE", &cert.display().to_string())
        .set("SSL_PRIVATE_KEY_FILE", &key.display().to_string())
}

/// `https://127.0.0.1:PORT/PATH` on the proxy's listener.
pub fn https_url(sq: &ServiceQ, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", sq.port())
}

/// curl over TLS, trusting `ca`, with extra arguments before the URLs.
pub fn curl(ca: &Path, extra: &[&str], urls: &[String]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(extra)
        .args(urls)
        .output()
        .expect("run curl")
}

pub fn assert_curl_ok(out: &Output) {
    assert!(
        out.status.success(),
        "curl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl s_server -www` on a free port: an https endpoint answering every GET with
/// a close-delimited HTTP/1.0 200 page. Killed on drop.
pub struct TlsEndpoint {
    child: Child,
    port: u16,
}

impl TlsEndpoint {
    pub fn start(cert: &Path, key: &Path) -> TlsEndpoint {
        TlsEndpoint::start_with(cert, key, &[], &[])
    }

    /// Like `start`, with extra `s_server` arguments and environment variables.
    pub fn start_with(
        cert: &Path,
        key: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TlsEndpoint {
        let port = refusing_port();
        let mut cmd = Command::new("openssl");
        cmd.args(["s_server", "-quiet", "-www", "-accept"])
            .arg(port.to_string())
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn openssl s_server");
        let ep = TlsEndpoint { child, port };
        assert!(
            wait_for_port(port, Duration::from_secs(5)),
            "s_server did not come up"
        );
        ep
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A valid body for `run_check` (lines 1-6: a comment, a local listener, the error log
/// in the run's dir, ENDPOINTS and CONCURRENCY_PEAK) with `extra` from line 7 on.
pub fn tls_body(extra: &str) -> String {
    format!(
        "# tls\nLISTENER_ADDRESS=127.0.0.1\nLISTENER_PORT=0\nERROR_LOG_FILE={{dir}}/error.log\n\
         ENDPOINTS=http://127.0.0.1:9\nCONCURRENCY_PEAK=4\n{extra}"
    )
}

/// `tls_body` with TLS on the listener with this certificate and key.
pub fn tls_listener_body(cert: &Path, key: &Path) -> String {
    tls_body(&format!(
        "SSL_ENABLE=true\nSSL_CERTIFICATE_FILE={}\nSSL_PRIVATE_KEY_FILE={}\n",
        cert.display(),
        key.display()
    ))
}
