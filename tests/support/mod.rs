//! Shared helpers for the integration tests: the real `serviceq` binary started on an
//! OS-chosen port with a temporary `sq.properties`, a std::net mock upstream that records
//! what it received and can refuse, hang, close or stop and restart on the same port,
//! and a raw HTTP/1.1 client that shows the exact bytes the proxy sent.
//!
//! Every blocking read has a timeout and every wait polls a condition with a deadline,
//! so a misbehaving proxy fails a test instead of hanging the suite. Nothing here uses a
//! fixed port: tests run in parallel.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Deferred-queue helpers (raw requests with ids, drain and buffered checks).
pub mod queue;
/// Real redis-server / redis-sentinel processes for the shared-queue tests.
pub mod redis_server;
/// TLS helpers: openssl-made certificates, an `openssl s_server` endpoint, curl.
pub mod tls;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_serviceq");
/// The crate version, as `--version` and a bare `Server` custom header must show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long the proxy gets to print its `listening on` line.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Default read/write timeout of the raw client.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Read-timeout slice of the mock upstream: how often an idle mock connection checks
/// whether its upstream was stopped.
const MOCK_POLL: Duration = Duration::from_millis(50);
/// Largest request head the mock accepts.
const MOCK_MAX_HEAD: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Holds for the whole `window` (polled every 10 ms); false as soon as it does not.
pub fn holds_for(window: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        if !cond() {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port` (true) or
/// `timeout` passes (false).
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || TcpStream::connect(("127.0.0.1", port)).is_ok())
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

// ---------------------------------------------------------------------------------------
// External tools
// ---------------------------------------------------------------------------------------

/// Whether a prerequisite a test needs — `what` names it: a tool, a Python module,
/// IPv6 loopback — is `available`. When it is not, and env `CI` is set, the test fails
/// here with a clear message: `.ci/run` installs every tool, so a missing one is a gap
/// in CI, never a silent pass. Elsewhere the test says SKIP on stderr and the caller
/// returns. Tests never install anything themselves.
pub fn require(what: &str, available: bool) -> bool {
    if !available {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} is required and missing (CI is set, so this test fails rather than \
             skips; .ci/run installs it)"
        );
        eprintln!("SKIP: {what} is not available");
    }
    available
}

/// [`require`] for a command: whether `tool arg` runs and succeeds.
pub fn require_tool(tool: &str, arg: &str) -> bool {
    let ok = Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require(&format!("`{tool}`"), ok)
}

// ---------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------

/// A directory under the system temp dir with a unique name, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path =
            std::env::temp_dir().join(format!("sq-test-{tag}-{}-{n}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------
// Configuration bodies
// ---------------------------------------------------------------------------------------

/// A `sq.properties` body built key by key, each key once (a key given twice is a
/// warning, which the tests do not want by accident).
///
/// `Conf::new` sets ENDPOINTS, `CONCURRENCY_PEAK=16` and `ENABLE_DEFERRED_Q=false` (so a
/// failed request gets its §6 error instead of being queued); `ServiceQ::start` adds
/// LISTENER_PORT=0, LISTENER_ADDRESS=127.0.0.1 and an ERROR_LOG_FILE in its temp dir.
#[derive(Clone, Debug)]
pub struct Conf {
    entries: Vec<(String, String)>,
}

impl Conf {
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Conf {
        let list: Vec<&str> = endpoints.iter().map(|s| s.as_ref()).collect();
        Conf {
            entries: Vec::new(),
        }
        .set("ENDPOINTS", &list.join(","))
        .set("CONCURRENCY_PEAK", "16")
        .set("ENABLE_DEFERRED_Q", "false")
    }

    pub fn set(mut self, key: &str, value: &str) -> Conf {
        if let Some(e) = self.entries.iter_mut().find(|(k, _)| k == key) {
            e.1 = value.to_string();
        } else {
            self.entries.push((key.to_string(), value.to_string()));
        }
        self
    }

    pub fn remove(mut self, key: &str) -> Conf {
        self.entries.retain(|(k, _)| k != key);
        self
    }

    pub fn body(&self) -> String {
        let mut s = String::from("# written by the integration tests\n");
        for (k, v) in &self.entries {
            s.push_str(&format!("{k}={v}\n"));
        }
        s
    }

    pub fn start(&self) -> ServiceQ {
        ServiceQ::start(&self.body())
    }
}

/// The keys set in a properties body, in order (comments and blank lines skipped).
fn keys_in(body: &str) -> Vec<(String, String)> {
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The proxy process
// ---------------------------------------------------------------------------------------

/// How the config path reaches the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigVia {
    LongFlag,
    ShortFlag,
    EnvVar,
}

/// Options for starting the proxy beyond the config body.
pub struct Launch {
    body: String,
    via: ConfigVia,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl Launch {
    pub fn new(body: &str) -> Launch {
        Launch {
            body: body.to_string(),
            via: ConfigVia::LongFlag,
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    pub fn via(mut self, via: ConfigVia) -> Launch {
        self.via = via;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn arg(mut self, arg: &str) -> Launch {
        self.args.push(arg.to_string());
        self
    }

    /// Writes the config into a fresh temp dir, spawns the proxy and waits for its
    /// `listening on` line. Panics (with the proxy's stderr) if it does not come.
    pub fn start(self) -> ServiceQ {
        let dir = TempDir::new("sq");
        let mut body = self
            .body
            .replace("{dir}", &dir.path().display().to_string());
        let keys = keys_in(&body);
        let has = |k: &str| keys.iter().any(|(key, _)| key == k);
        if !body.ends_with('\n') {
            body.push('\n');
        }
        if !has("LISTENER_PORT") {
            body.push_str("LISTENER_PORT=0\n");
        }
        if !has("LISTENER_ADDRESS") {
            body.push_str("LISTENER_ADDRESS=127.0.0.1\n");
        }
        let error_log = match keys.iter().rev().find(|(k, _)| k == "ERROR_LOG_FILE") {
            Some((_, v)) => dir.path().join(v), // join keeps an absolute v as is
            None => {
                let p = dir.join("error.log");
                body.push_str(&format!("ERROR_LOG_FILE={}\n", p.display()));
                p
            }
        };
        let config = dir.join("sq.properties");
        fs::write(&config, &body).expect("write sq.properties");

        let mut cmd = clean_command(dir.path());
        match self.via {
            ConfigVia::LongFlag => {
                cmd.arg("--config").arg(&config);
            }
            ConfigVia::ShortFlag => {
                cmd.arg("-c").arg(&config);
            }
            ConfigVia::EnvVar => {
                cmd.env("SQ_CONFIG", &config);
            }
        }
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn serviceq");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        collect(child.stderr.take().unwrap(), stderr.clone());
        collect(child.stdout.take().unwrap(), stdout.clone());

        let mut sq = ServiceQ {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            stderr,
            stdout,
            error_log,
            config,
            body,
            dir,
        };
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            // Only complete lines: stderr may arrive in pieces mid-line.
            let text = sq.stderr();
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            if let Some(addr) = parse_listening(complete) {
                sq.addr = addr;
                return sq;
            }
            if let Ok(Some(status)) = sq.child.try_wait() {
                thread::sleep(Duration::from_millis(50)); // let the reader drain
                panic!(
                    "serviceq exited ({status}) before listening\n--- config ---\n{}--- stderr ---\n{}",
                    sq.body,
                    sq.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "serviceq did not print `listening on` within {STARTUP_DEADLINE:?}\n--- config ---\n{}--- stderr ---\n{}",
                    sq.body,
                    sq.stderr()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A command for the binary with a clean environment (no SQ_CONFIG, no RUST_LOG from the
/// developer's shell) and `dir` as working directory.
fn clean_command(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("RUST_BACKTRACE", "1");
    cmd.current_dir(dir);
    cmd
}

/// Copies everything `r` yields into `buf` on a background thread.
pub fn collect(mut r: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut tmp = [0u8; 8192];
        loop {
            match r.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.lock().unwrap().extend_from_slice(&tmp[..n]),
            }
        }
    })
}

/// Finds `listening on ADDR` (followed by a space or end of line) in stderr.
pub fn parse_listening(stderr: &str) -> Option<SocketAddr> {
    for line in stderr.lines() {
        if let Some(i) = line.find("listening on ") {
            let rest = &line[i + "listening on ".len()..];
            let token = rest.split(' ').next().unwrap_or("");
            if let Ok(addr) = token.parse() {
                return Some(addr);
            }
        }
    }
    None
}

/// A running proxy; killed (SIGKILL) on drop.
pub struct ServiceQ {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<u8>>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    error_log: PathBuf,
    config: PathBuf,
    body: String,
    dir: TempDir,
}

impl ServiceQ {
    /// Starts the proxy with this config body (see `Launch::start`).
    pub fn start(body: &str) -> ServiceQ {
        Launch::new(body).start()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn error_log_path(&self) -> &Path {
        &self.error_log
    }

    /// The error log as it is now ("" when the file does not exist yet).
    pub fn error_log(&self) -> String {
        fs::read_to_string(&self.error_log).unwrap_or_default()
    }

    pub fn error_log_lines(&self) -> Vec<String> {
        self.error_log().lines().map(str::to_string).collect()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stderr().contains(needle))
    }

    /// Waits until `pred` holds for the error log's lines.
    pub fn wait_for_error_log(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[String]) -> bool,
    ) -> bool {
        wait_until(timeout, || pred(&self.error_log_lines()))
    }

    /// VmRSS of the proxy in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid()).expect("read VmRSS")
    }

    /// Sends a signal by name (`TERM`, `HUP`, …) with the `kill` utility.
    pub fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }

    /// Waits for the process to exit; None when it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Rewrites the config file (for SIGHUP tests); `{dir}` is replaced as at start.
    pub fn rewrite_config(&self, body: &str) {
        let body = body.replace("{dir}", &self.dir.path().display().to_string());
        fs::write(&self.config, body).expect("rewrite config");
    }

    pub fn config_body(&self) -> &str {
        &self.body
    }
}

impl Drop for ServiceQ {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- serviceq stderr ---\n{}\n--- serviceq error log ---\n{}\n--- config ---\n{}",
                self.stderr(),
                self.error_log(),
                self.body
            );
        }
    }
}

/// Sends signal `name` (`TERM`, `STOP`, …) to `pid` with the `kill` utility.
pub fn send_signal(pid: u32, name: &str) {
    let st = Command::new("kill")
        .arg("-s")
        .arg(name)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -s {name} {pid} failed");
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Running the binary to completion (exit status tests)
// ---------------------------------------------------------------------------------------

/// The result of a run that was expected to end by itself.
pub struct Ran {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// The run did not end within its timeout and was killed.
    pub timed_out: bool,
    pub config: PathBuf,
    pub dir: TempDir,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// The last non-empty line on stderr.
    pub fn last_stderr_line(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }

    pub fn describe(&self) -> String {
        format!(
            "status {:?} (timed out: {})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.timed_out, self.stdout, self.stderr
        )
    }

    pub fn output(&self) -> Output {
        Output {
            status: self.status.expect("process was killed"),
            stdout: self.stdout.clone().into_bytes(),
            stderr: self.stderr.clone().into_bytes(),
        }
    }
}

/// Writes `config_body` verbatim (after replacing `{dir}` with the temp dir) to
/// `sq.properties` and runs `serviceq --config PATH ARGS...`, killing it after 8 s.
pub fn run_check(config_body: &str, args: &[&str]) -> Ran {
    let dir = TempDir::new("run");
    let config = dir.join("sq.properties");
    let body = config_body.replace("{dir}", &dir.path().display().to_string());
    fs::write(&config, body).expect("write config");
    let mut all: Vec<OsString> = vec!["--config".into(), config.clone().into_os_string()];
    all.extend(args.iter().map(OsString::from));
    run_binary(dir, config, &all, &[], Duration::from_secs(8))
}

/// Runs `body` as a normal start and with `--check` (see `run_check`): each run must end
/// by itself with exit status 1 and a last stderr line that starts with
/// `serviceq: CONFIG`; `what` says what is wrong with the body, for the messages.
/// `check` gets that last line of each run for the test's own checks.
pub fn expect_start_failure(body: &str, what: &str, mut check: impl FnMut(&str)) {
    for args in [&[][..], &["--check"][..]] {
        let ran = run_check(body, args);
        assert!(!ran.timed_out, "started with {what}; {}", ran.describe());
        assert_eq!(ran.code(), Some(1), "{what}: {}", ran.describe());
        let last = ran.last_stderr_line();
        assert!(
            last.starts_with(&format!("serviceq: {}", ran.config.display())),
            "{what}: {last:?}"
        );
        check(last);
    }
}

/// Runs the binary with exactly these arguments and environment (on top of a clean one),
/// in `dir`, killing it after `timeout`.
pub fn run_binary(
    dir: TempDir,
    config: PathBuf,
    args: &[OsString],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Ran {
    let mut cmd = clean_command(dir.path());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn serviceq");
    let err_buf = Arc::new(Mutex::new(Vec::new()));
    let out_buf = Arc::new(Mutex::new(Vec::new()));
    let e = collect(child.stderr.take().unwrap(), err_buf.clone());
    let o = collect(child.stdout.take().unwrap(), out_buf.clone());
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = e.join();
    let _ = o.join();
    let stderr = String::from_utf8_lossy(&err_buf.lock().unwrap()).into_owned();
    let stdout = String::from_utf8_lossy(&out_buf.lock().unwrap()).into_owned();
    Ran {
        status,
        stdout,
        stderr,
        timed_out,
        config,
        dir,
    }
}

// ---------------------------------------------------------------------------------------
// Buffered socket reading, shared by the client and the mock
// ---------------------------------------------------------------------------------------

/// A TCP stream with a read buffer. With `stop` set, read timeouts are polling slices:
/// the read goes on until data arrives or the flag is raised.
pub struct BufConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    stop: Option<Arc<AtomicBool>>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn eof(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed {what}"),
    )
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl BufConn {
    pub fn new(stream: TcpStream, stop: Option<Arc<AtomicBool>>) -> BufConn {
        BufConn {
            stream,
            buf: Vec::new(),
            stop,
        }
    }

    /// Reads more bytes into the buffer; Ok(0) at end of stream.
    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 65536];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => match &self.stop {
                    Some(stop) if !stop.load(Ordering::SeqCst) => continue,
                    Some(_) => return Err(io::Error::other("mock stopped")),
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// Bytes already received but not consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Reads up to and including the blank line that ends a head; Ok(None) when the
    /// stream ends cleanly before any byte of a new head.
    pub fn read_head(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        let mut searched: usize = 0;
        loop {
            if let Some(pos) = find(&self.buf[searched.saturating_sub(3)..], b"\r\n\r\n") {
                let end = searched.saturating_sub(3) + pos + 4;
                return Ok(Some(self.buf.drain(..end).collect()));
            }
            searched = self.buf.len();
            if self.buf.len() > max {
                return Err(bad(format!("head longer than {max} bytes")));
            }
            if self.fill()? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(eof(&format!(
                    "inside a head; got {:?}",
                    String::from_utf8_lossy(&self.buf[..self.buf.len().min(300)])
                )));
            }
        }
    }

    /// One CRLF-terminated line, without the CRLF.
    pub fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let mut line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                line.truncate(pos);
                return Ok(line);
            }
            if self.buf.len() > 64 * 1024 {
                return Err(bad("line longer than 64 KiB".into()));
            }
            if self.fill()? == 0 {
                return Err(eof("inside a line"));
            }
        }
    }

    /// Passes exactly `n` bytes to `sink`.
    pub fn read_exact_to(&mut self, mut n: u64, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && self.fill()? == 0 {
                return Err(eof(&format!("with {n} body bytes still expected")));
            }
            let take = (self.buf.len() as u64).min(n) as usize;
            sink(&self.buf[..take]);
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(())
    }

    /// Passes everything until end of stream to `sink`.
    pub fn read_to_end_to(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        loop {
            if !self.buf.is_empty() {
                sink(&self.buf);
                self.buf.clear();
            }
            if self.fill()? == 0 {
                return Ok(());
            }
        }
    }

    /// Decodes a chunked body (RFC 9112 §7.1) into `sink`; returns the trailer lines.
    pub fn read_chunked_to(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<Vec<String>> {
        loop {
            let line = self.read_line()?;
            let line = String::from_utf8_lossy(&line).into_owned();
            let size_txt = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_txt, 16)
                .map_err(|_| bad(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                let mut trailers = Vec::new();
                loop {
                    let t = self.read_line()?;
                    if t.is_empty() {
                        return Ok(trailers);
                    }
                    trailers.push(String::from_utf8_lossy(&t).into_owned());
                }
            }
            self.read_exact_to(size, sink)?;
            let crlf = self.read_line()?;
            if !crlf.is_empty() {
                return Err(bad(format!(
                    "chunk data not followed by CRLF: {:?}",
                    String::from_utf8_lossy(&crlf)
                )));
            }
        }
    }
}

/// Splits a head into its first line and its header fields (name, value trimmed).
pub fn split_head(head: &[u8]) -> (String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((n, v)) => (n.to_string(), v.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect();
    (first, headers)
}

fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn headers_named_in<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub fn lists_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

// ---------------------------------------------------------------------------------------
// Raw client
// ---------------------------------------------------------------------------------------

/// How a response body was delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body by the rules (HEAD, 1xx, 204, 304).
    NoBody,
    Length(u64),
    Chunked,
    /// Read until the connection closed.
    Close,
}

/// A response as the client received it.
#[derive(Clone, Debug)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
    pub trailers: Vec<String>,
    pub raw_head: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        headers_named_in(&self.headers, name)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP client connection with timeouts.
pub struct Client {
    pub conn: BufConn,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to serviceq");
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            conn: BufConn::new(stream, None),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.conn.stream
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.conn.stream.set_read_timeout(Some(d)).unwrap();
    }

    /// Writes all of `bytes`; panics on error.
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.conn
            .stream
            .write_all(bytes.as_ref())
            .expect("write to serviceq");
        self.conn.stream.flush().unwrap();
    }

    /// Writes all of `bytes`, returning the error instead of panicking.
    pub fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> io::Result<()> {
        self.conn.stream.write_all(bytes.as_ref())
    }

    /// Reads one response (a 1xx counts as one). Panics on error.
    pub fn read_response(&mut self) -> Response {
        self.try_read_response(false)
            .expect("read response from serviceq")
    }

    /// Reads the response to a HEAD request (no body whatever the headers say).
    pub fn read_head_response(&mut self) -> Response {
        self.try_read_response(true)
            .expect("read response from serviceq")
    }

    pub fn try_read_response(&mut self, head_request: bool) -> io::Result<Response> {
        let mut body = Vec::new();
        let mut resp = self.read_response_with(head_request, &mut |b| body.extend_from_slice(b))?;
        resp.body = body;
        Ok(resp)
    }

    /// Reads one response, passing the body bytes to `sink` as they arrive (the returned
    /// Response has an empty body).
    pub fn read_response_with(
        &mut self,
        head_request: bool,
        sink: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Response> {
        let head = self
            .conn
            .read_head(1 << 20)?
            .ok_or_else(|| eof("before a response"))?;
        let raw_head = String::from_utf8_lossy(&head).into_owned();
        let (first, headers) = split_head(&head);
        let mut parts = first.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {first:?}")))?;
        let reason = parts.next().unwrap_or("").to_string();
        if !version.starts_with("HTTP/1.") {
            return Err(bad(format!("bad status line {first:?}")));
        }
        let mut resp = Response {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
            framing: Framing::NoBody,
            trailers: Vec::new(),
            raw_head,
        };
        let chunked = resp
            .header("transfer-encoding")
            .map(|v| lists_token(v, "chunked"))
            .unwrap_or(false);
        if head_request || status / 100 == 1 || status == 204 || status == 304 {
            return Ok(resp);
        }
        if chunked {
            resp.framing = Framing::Chunked;
            resp.trailers = self.conn.read_chunked_to(sink)?;
        } else if let Some(cl) = resp.header("content-length") {
            let n: u64 = cl
                .trim()
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {cl:?}")))?;
            resp.framing = Framing::Length(n);
            self.conn.read_exact_to(n, sink)?;
        } else {
            resp.framing = Framing::Close;
            self.conn.read_to_end_to(sink)?;
        }
        Ok(resp)
    }

    /// True when the peer closes (EOF or reset) within `timeout`; false if it is still
    /// open then. Data that arrives meanwhile is kept in the buffer.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.set_read_timeout(CLIENT_TIMEOUT);
                return false;
            }
            self.set_read_timeout(left.min(Duration::from_millis(50)));
            match self.conn.fill() {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if is_timeout(&e) => continue,
                Err(_) => return true,
            }
        }
    }

    /// Non-blocking-ish check: has the peer closed (EOF or reset) by now?
    pub fn is_closed_now(&mut self) -> bool {
        self.set_read_timeout(Duration::from_millis(5));
        let r = match self.conn.fill() {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if is_timeout(&e) => false,
            Err(_) => true,
        };
        self.set_read_timeout(CLIENT_TIMEOUT);
        r
    }
}

/// One GET on a fresh connection (HTTP/1.1, `Host: test.local`).
pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes(),
    )
}

/// Sends raw bytes on a fresh connection and reads one response.
pub fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut c = Client::connect(addr);
    c.send(raw);
    c.read_response()
}

/// Checks a response ServiceQ made itself (SPEC §6): status, JSON content type,
/// matching Content-Length, the exact `{"sq_msg":"…"}` body and the given extra headers.
pub fn assert_sq_response(resp: &Response, status: u16, msg: &str, extra: &[(&str, &str)]) {
    let ctx = format!("response was:\n{}{}", resp.raw_head, resp.body_str());
    assert_eq!(resp.status, status, "status; {ctx}");
    let ct = resp.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "Content-Type should be application/json; {ctx}"
    );
    let cl = resp.header("content-length");
    assert_eq!(
        cl.map(|v| v.trim().to_string()),
        Some(resp.body.len().to_string()),
        "Content-Length; {ctx}"
    );
    assert_eq!(
        resp.body_str(),
        format!("{{\"sq_msg\":\"{msg}\"}}"),
        "body; {ctx}"
    );
    for (name, value) in extra {
        assert_eq!(
            resp.headers_named(name),
            vec![*value],
            "header {name}; {ctx}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The admin listener
// ---------------------------------------------------------------------------------------

/// Starts the proxy with an admin listener on a free loopback port; waits until it
/// answers.
pub fn start_with_admin(conf: Conf) -> (ServiceQ, SocketAddr) {
    let port = refusing_port();
    let sq = conf
        .set("ADMIN_ADDRESS", "127.0.0.1")
        .set("ADMIN_PORT", &port.to_string())
        .start();
    let admin: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(admin).is_ok()),
        "admin listener not up; stderr:\n{}",
        sq.stderr()
    );
    (sq, admin)
}

/// The value of one sample of /metrics, `name` or `name{labels}` as exported.
pub fn metric_sample(admin: SocketAddr, sample: &str) -> Option<f64> {
    let prefix = format!("{sample} ");
    get(admin, "/metrics")
        .body_str()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
}

// ---------------------------------------------------------------------------------------
// Error log lines (SPEC §7)
// ---------------------------------------------------------------------------------------

/// Checks one error-log line against
/// `^ServiceQ: \d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} Error detected on ENDPOINT \[Code: CODE, NAME\]$`.
pub fn check_log_line(line: &str, endpoint: &str, code: u32, name: &str) -> Result<(), String> {
    let rest = line
        .strip_prefix("ServiceQ: ")
        .ok_or_else(|| format!("no `ServiceQ: ` prefix in {line:?}"))?;
    let stamp: Vec<u8> = rest.bytes().take(19).collect();
    let shape = b"dddd/dd/dd dd:dd:dd";
    let ok = stamp.len() == 19
        && stamp.iter().zip(shape.iter()).all(|(c, s)| {
            if *s == b'd' {
                c.is_ascii_digit()
            } else {
                c == s
            }
        });
    if !ok {
        return Err(format!("no `YYYY/MM/DD hh:mm:ss` timestamp in {line:?}"));
    }
    let tail = &rest[19..];
    let want = format!(" Error detected on {endpoint} [Code: {code}, {name}]");
    if tail != want {
        return Err(format!("expected {want:?} after the timestamp in {line:?}"));
    }
    Ok(())
}

/// Whether `line` is a well-formed error-log line for this endpoint, code and name.
pub fn is_log_line(line: &str, endpoint: &str, code: u32, name: &str) -> bool {
    check_log_line(line, endpoint, code, name).is_ok()
}

// ---------------------------------------------------------------------------------------
// Mock upstream
// ---------------------------------------------------------------------------------------

/// A response for `Behaviour::Respond`. Content-Length is added unless given (or the
/// status has no body).
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn new(status: u16, reason: &str, body: &str) -> Resp {
        Resp {
            status,
            reason: reason.to_string(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Resp {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// What the mock does with a connection or a request.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200, body = the upstream's name (`X-Upstream: NAME` header too).
    Ok,
    /// 200, body = the request target.
    Echo,
    /// This exact response.
    Respond(Resp),
    /// 200 with `Transfer-Encoding: chunked` and these chunks.
    Chunked(Vec<Vec<u8>>),
    /// Like `Chunked`, waiting `gap` before each chunk after the first.
    ChunkedSlow(Vec<Vec<u8>>, Duration),
    /// Accept, then close at once without reading.
    CloseOnAccept,
    /// Read the request, never answer (until the mock stops).
    Hang,
    /// Read the request, then close without answering.
    CloseAfterRequest,
    /// Send a head announcing 1000 bytes, 100 of them, then close.
    CloseMidBody,
    /// Read the request, answer with a garbage status line, close.
    Malformed,
    /// 200 with a Content-Length body of this many bytes, generated in 64 KiB writes.
    BigBody(u64),
    /// Wait this long, then behave like `Ok`.
    Slow(Duration),
    /// Answer 200 like `Ok` (keep-alive, no `Connection: close`), then close the
    /// connection: the next request on it finds a stale pooled connection.
    CloseAfterResponse,
}

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Which accepted connection (0-based, per upstream) it came on.
    pub conn: usize,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        headers_named_in(&self.headers, name)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct MockState {
    default: Behaviour,
    /// Behaviours used first, one per request (or per connection for CloseOnAccept).
    script: VecDeque<Behaviour>,
}

struct Shared {
    name: String,
    state: Mutex<MockState>,
    requests: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
    closed: AtomicUsize,
    answered: AtomicUsize,
    accept_times: Mutex<Vec<Instant>>,
}

impl Shared {
    /// The behaviour for the next request.
    fn next(&self) -> Behaviour {
        let mut st = self.state.lock().unwrap();
        st.script.pop_front().unwrap_or_else(|| st.default.clone())
    }

    /// Whether the connection just accepted is to be closed at once (consumes a
    /// scripted CloseOnAccept).
    fn close_on_accept(&self) -> bool {
        let mut st = self.state.lock().unwrap();
        match st.script.front() {
            Some(Behaviour::CloseOnAccept) => {
                st.script.pop_front();
                true
            }
            Some(_) => false,
            None => matches!(st.default, Behaviour::CloseOnAccept),
        }
    }
}

/// One listening period of a mock (between start and stop).
struct Run {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

/// A mock HTTP/1.1 upstream on 127.0.0.1, a thread per connection.
pub struct Upstream {
    shared: Arc<Shared>,
    port: u16,
    run: Option<Run>,
}

impl Upstream {
    pub fn start(b: Behaviour) -> Upstream {
        Upstream::start_on(0, b)
    }

    /// Starts on this port (0 = any).
    pub fn start_on(port: u16, b: Behaviour) -> Upstream {
        static COUNTER: AtomicUsize = AtomicUsize::new(1);
        let name = format!("upstream-{}", COUNTER.fetch_add(1, Ordering::SeqCst));
        let shared = Arc::new(Shared {
            name,
            state: Mutex::new(MockState {
                default: b,
                script: VecDeque::new(),
            }),
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            accept_times: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind mock upstream");
        let port = listener.local_addr().unwrap().port();
        let mut u = Upstream {
            shared,
            port,
            run: None,
        };
        u.run = Some(u.spawn(listener));
        u
    }

    fn spawn(&self, listener: TcpListener) -> Run {
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (shared, stop2, streams2) = (self.shared.clone(), stop.clone(), streams.clone());
        let accept = thread::spawn(move || accept_loop(listener, shared, stop2, streams2));
        Run {
            stop,
            accept: Some(accept),
            streams,
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, as written in ENDPOINTS and in error-log lines.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, the Host the proxy must send.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sets the default behaviour (used when the script is empty).
    pub fn set(&self, b: Behaviour) {
        self.shared.state.lock().unwrap().default = b;
    }

    /// Queues behaviours used before the default, one per request.
    pub fn script(&self, bs: Vec<Behaviour>) {
        self.shared.state.lock().unwrap().script.extend(bs);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// Connections accepted so far (all runs).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections whose handling thread has finished (closed by either side).
    pub fn closed_connections(&self) -> usize {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Requests that got a complete response from the mock.
    pub fn answered(&self) -> usize {
        self.shared.answered.load(Ordering::SeqCst)
    }

    pub fn accept_times(&self) -> Vec<Instant> {
        self.shared.accept_times.lock().unwrap().clone()
    }

    pub fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.request_count() >= n)
    }

    /// Stops listening and closes every open connection; the port becomes free.
    pub fn stop(&mut self) {
        if let Some(mut run) = self.run.take() {
            run.stop.store(true, Ordering::SeqCst);
            // Wake the blocking accept.
            let _ = TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], self.port)),
                Duration::from_secs(1),
            );
            if let Some(h) = run.accept.take() {
                let _ = h.join();
            }
            for s in run.streams.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Listens again on the same port, keeping the recorded requests and counters.
    pub fn restart(&mut self) {
        assert!(self.run.is_none(), "restart of a running upstream");
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("rebind mock upstream on port {}: {e}", self.port),
            }
        };
        self.run = Some(self.spawn(listener));
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(_) => continue,
        };
        let id = shared.connections.fetch_add(1, Ordering::SeqCst);
        shared.accept_times.lock().unwrap().push(Instant::now());
        if shared.close_on_accept() {
            drop(stream);
            shared.closed.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        if let Ok(clone) = stream.try_clone() {
            streams.lock().unwrap().push(clone);
        }
        let (shared, stop) = (shared.clone(), stop.clone());
        thread::spawn(move || {
            let own = stream.try_clone();
            let _ = serve(stream, id, &shared, &stop);
            // A clone kept for `stop` holds the socket open: close it explicitly so
            // the peer sees FIN now.
            if let Ok(s) = own {
                let _ = s.shutdown(Shutdown::Both);
            }
            shared.closed.fetch_add(1, Ordering::SeqCst);
        });
    }
}

/// Serves one mock connection until it closes, the mock stops or a behaviour ends it.
fn serve(stream: TcpStream, id: usize, shared: &Shared, stop: &Arc<AtomicBool>) -> io::Result<()> {
    stream.set_read_timeout(Some(MOCK_POLL))?;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    stream.set_nodelay(true)?;
    let mut conn = BufConn::new(stream, Some(stop.clone()));
    loop {
        let req = match read_request(&mut conn, id)? {
            Some(r) => r,
            None => return Ok(()),
        };
        let close_requested = req
            .header("connection")
            .map(|v| lists_token(v, "close"))
            .unwrap_or(false);
        let behaviour = shared.next();
        shared.requests.lock().unwrap().push(req.clone());
        let keep = respond(&mut conn, &req, &behaviour, shared, stop)?;
        if answers(&behaviour) {
            shared.answered.fetch_add(1, Ordering::SeqCst);
        }
        if !keep || close_requested {
            return Ok(());
        }
    }
}

fn read_request(conn: &mut BufConn, id: usize) -> io::Result<Option<Recorded>> {
    let head = match conn.read_head(MOCK_MAX_HEAD)? {
        Some(h) => h,
        None => return Ok(None),
    };
    let (first, headers) = split_head(&head);
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let version = parts.next().unwrap_or("").to_string();
    let chunked = header_in(&headers, "transfer-encoding")
        .map(|v| lists_token(v, "chunked"))
        .unwrap_or(false);
    let mut body = Vec::new();
    if chunked {
        conn.read_chunked_to(&mut |b| body.extend_from_slice(b))?;
    } else if let Some(cl) = header_in(&headers, "content-length") {
        let n: u64 = cl
            .trim()
            .parse()
            .map_err(|_| bad(format!("mock: bad Content-Length {cl:?}")))?;
        conn.read_exact_to(n, &mut |b| body.extend_from_slice(b))?;
    }
    Ok(Some(Recorded {
        method,
        target,
        version,
        headers,
        body,
        chunked,
        conn: id,
        at: Instant::now(),
    }))
}

/// Sleeps up to `d`, returning early (false) if the mock stops.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        thread::sleep(
            Duration::from_millis(10).min(deadline.saturating_duration_since(Instant::now())),
        );
    }
    true
}

fn write_simple(
    conn: &mut BufConn,
    req: &Recorded,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if req.method != "HEAD" {
        bytes.extend_from_slice(body);
    }
    conn.stream.write_all(&bytes)
}

fn ok_headers(shared: &Shared, body_len: usize) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "text/plain".into()),
        ("Content-Length".into(), body_len.to_string()),
        ("X-Upstream".into(), shared.name.clone()),
    ]
}

/// Whether the behaviour sends a complete response.
fn answers(b: &Behaviour) -> bool {
    !matches!(
        b,
        Behaviour::CloseOnAccept
            | Behaviour::Hang
            | Behaviour::CloseAfterRequest
            | Behaviour::CloseMidBody
            | Behaviour::Malformed
    )
}

/// Answers one request; Ok(false) when the connection must close afterwards.
fn respond(
    conn: &mut BufConn,
    req: &Recorded,
    b: &Behaviour,
    shared: &Shared,
    stop: &AtomicBool,
) -> io::Result<bool> {
    match b {
        Behaviour::Ok => {
            let body = shared.name.as_bytes();
            write_simple(conn, req, "200 OK", &ok_headers(shared, body.len()), body)?;
            Ok(true)
        }
        Behaviour::Echo => {
            let body = req.target.as_bytes();
            write_simple(conn, req, "200 OK", &ok_headers(shared, body.len()), body)?;
            Ok(true)
        }
        Behaviour::Slow(d) => {
            if !nap(*d, stop) {
                return Ok(false);
            }
            respond(conn, req, &Behaviour::Ok, shared, stop)
        }
        Behaviour::CloseAfterResponse => {
            respond(conn, req, &Behaviour::Ok, shared, stop)?;
            Ok(false)
        }
        Behaviour::Respond(r) => {
            let mut headers = r.headers.clone();
            let bodiless = r.status / 100 == 1 || r.status == 204 || r.status == 304;
            let framed = headers.iter().any(|(n, _)| {
                n.eq_ignore_ascii_case("content-length")
                    || n.eq_ignore_ascii_case("transfer-encoding")
            });
            if !bodiless && !framed {
                headers.push(("Content-Length".into(), r.body.len().to_string()));
            }
            let body: &[u8] = if bodiless { &[] } else { &r.body };
            write_simple(
                conn,
                req,
                &format!("{} {}", r.status, r.reason),
                &headers,
                body,
            )?;
            Ok(true)
        }
        Behaviour::Chunked(chunks) => {
            write_chunked(conn, req, chunks, Duration::ZERO, shared, stop)?;
            Ok(true)
        }
        Behaviour::ChunkedSlow(chunks, gap) => {
            write_chunked(conn, req, chunks, *gap, shared, stop)?;
            Ok(true)
        }
        Behaviour::CloseOnAccept | Behaviour::CloseAfterRequest => Ok(false),
        Behaviour::Hang => {
            // Never answer; end when the peer gives up or the mock stops.
            loop {
                match conn.fill() {
                    Ok(0) | Err(_) => return Ok(false),
                    Ok(_) => continue,
                }
            }
        }
        Behaviour::CloseMidBody => {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
            out.extend_from_slice(&[b'x'; 100]);
            conn.stream.write_all(&out)?;
            Ok(false)
        }
        Behaviour::Malformed => {
            conn.stream.write_all(b"HTTX/9 what is this\r\n\r\n")?;
            Ok(false)
        }
        Behaviour::BigBody(size) => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n");
            conn.stream.write_all(head.as_bytes())?;
            if req.method == "HEAD" {
                return Ok(true);
            }
            let block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
            let mut left = *size;
            while left > 0 {
                if stop.load(Ordering::SeqCst) {
                    return Ok(false);
                }
                let n = left.min(block.len() as u64) as usize;
                conn.stream.write_all(&block[..n])?;
                left -= n as u64;
            }
            Ok(true)
        }
    }
}

fn write_chunked(
    conn: &mut BufConn,
    req: &Recorded,
    chunks: &[Vec<u8>],
    gap: Duration,
    shared: &Shared,
    stop: &AtomicBool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nX-Upstream: {}\r\n\r\n",
        shared.name
    );
    conn.stream.write_all(head.as_bytes())?;
    if req.method == "HEAD" {
        return Ok(());
    }
    for (i, c) in chunks.iter().enumerate() {
        if i > 0 && !gap.is_zero() && !nap(gap, stop) {
            return Err(io::Error::other("mock stopped"));
        }
        if c.is_empty() {
            continue;
        }
        let mut out = format!("{:x}\r\n", c.len()).into_bytes();
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
        conn.stream.write_all(&out)?;
    }
    conn.stream.write_all(b"0\r\n\r\n")
}

/// A mock that is stopped: its port refuses until `restart`.
pub fn down_upstream(b: Behaviour) -> Upstream {
    let mut u = Upstream::start(b);
    u.stop();
    u
}

/// A port on 127.0.0.1 with nothing listening (bound to 0, then released).
pub fn refusing_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

/// `http://127.0.0.1:PORT` for a port with nothing listening.
pub fn refusing_url() -> String {
    format!("http://127.0.0.1:{}", refusing_port())
}

/// A raw endpoint for answers the mock cannot give: for each request head it reads
/// (bodies are left unread), `answer(n, stream)` writes what it likes, `n` counting heads
/// across connections from 0; it returns false to close the connection (unread bytes
/// then make the kernel reset it, as a real server's early close does). Connections are
/// served one at a time. Returns the port and a count of connections accepted.
pub fn raw_endpoint(
    answer: impl Fn(usize, &mut TcpStream) -> bool + Send + 'static,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw endpoint");
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    thread::spawn(move || {
        let mut n = 0;
        for conn in listener.incoming().take(64) {
            let Ok(mut s) = conn else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            'conn: loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    let keep = answer(n, &mut s);
                    n += 1;
                    if !keep {
                        break 'conn;
                    }
                }
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => buf.extend_from_slice(&tmp[..k]),
                }
            }
        }
    });
    (port, accepted)
}
