//! The proxy under test: `sq.properties` bodies built key by key (`Conf`), the real
//! `serviceq` binary started on an OS-chosen port and killed on drop (`Launch`,
//! `ServiceQ`), and runs that are expected to end by themselves (`run_check`,
//! `run_binary`, `expect_start_failure`).

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{refusing_port, wait_until, TempDir};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_serviceq");
/// The crate version, as `--version` and a bare `Server` custom header must show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long the proxy gets to print its `listening on` line.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

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
        // The readers end with the process; nothing waits for them.
        let Spawned {
            child,
            stderr,
            stdout,
            ..
        } = spawn_collected(&mut cmd);

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

/// A spawned binary whose stderr and stdout threads copy into buffers.
struct Spawned {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    /// The copying threads (stderr's, stdout's): they end when the process exits.
    readers: [JoinHandle<()>; 2],
}

/// Spawns `cmd` with stdin closed and its stderr and stdout collected.
fn spawn_collected(cmd: &mut Command) -> Spawned {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn serviceq");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        collect(child.stderr.take().unwrap(), stderr.clone()),
        collect(child.stdout.take().unwrap(), stdout.clone()),
    ];
    Spawned {
        child,
        stderr,
        stdout,
        readers,
    }
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
    let Spawned {
        mut child,
        stderr: err_buf,
        stdout: out_buf,
        readers: [e, o],
    } = spawn_collected(&mut cmd);
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
