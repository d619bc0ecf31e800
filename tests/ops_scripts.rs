//! The operations scripts, run against the binary under test: `make install` and the
//! SysV init script's whole cycle (plus `systemd-analyze verify` of the unit when it
//! exists), and the static binary's smoke test when `dist/serviceq` exists (`make
//! static`). The README's set-up commands run exactly as a user types them: `make
//! demo`, and `make run` with a request through it. Those two do a release build
//! (`make test` has built it already, so cargo finds it up to date). Each script cleans
//! up after itself, also when `timeout` stops it (SIGTERM runs its trap).

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

/// The longest `make` may spend on a release build that is not up to date yet.
const MAKE_BUILD_SECS: u64 = 900;

/// Runs `argv` in the repository under timeout(1), `limit_secs` at most; panics with
/// its output unless it succeeds. `serviceq_bin`: the SERVICEQ_BIN it gets, if any.
fn run_in_repo(argv: &[&str], limit_secs: u64, serviceq_bin: Option<&str>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "10", &limit_secs.to_string()])
        .args(argv)
        .current_dir(root)
        .env_remove("SERVICEQ_BIN");
    if let Some(bin) = serviceq_bin {
        cmd.env("SERVICEQ_BIN", bin);
    }
    let out = cmd.output().expect("run timeout(1)");
    assert!(
        out.status.success(),
        "{argv:?} failed ({:?}; 124 = timed out after {limit_secs} s)\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// A script against the binary under test: it then runs no cargo of its own.
fn run_script(script: &str, args: &[&str], limit_secs: u64) {
    let mut argv = vec![script];
    argv.extend_from_slice(args);
    run_in_repo(&argv, limit_secs, Some(env!("CARGO_BIN_EXE_serviceq")));
}

#[test]
fn install_and_init_script_cycle() {
    run_script("scripts/test-init", &[], 180);
}

/// README's first command, as typed in the repository: the Makefile passes a relative
/// `SERVICEQ_BIN`, which the tour must resolve before it changes directory.
#[test]
fn make_demo() {
    run_in_repo(&["make", "demo"], MAKE_BUILD_SECS + 60, None);
}

/// `make run` (README "Set-up") serves a configuration: `CONFIG=path` picks the file, as
/// the README documents. The test's file is `conf/sq.properties` itself with the ports
/// overridden by later keys (the last one wins), because the sample's fixed ports
/// (5252 in front of 8001 and 8002) may be taken on a shared machine; everything else
/// the sample sets is served as it is.
#[test]
fn make_run_serves_a_request() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (a, b) = (
        Upstream::start(Behaviour::Ok),
        Upstream::start(Behaviour::Ok),
    );
    let dir = TempDir::new("make-run");
    let sample = std::fs::read_to_string(root.join("conf/sq.properties")).unwrap();
    let config = dir.join("sq.properties");
    let overrides = format!(
        "\n# the test's ports and log\nLISTENER_PORT=0\nENDPOINTS={},{}\nERROR_LOG_FILE={}\n",
        a.url(),
        b.url(),
        dir.join("error.log").display()
    );
    std::fs::write(&config, sample + &overrides).unwrap();
    let mut make = Command::new("make");
    make.arg("run")
        .arg(format!("CONFIG={}", config.display()))
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = make.spawn().expect("run make");
    let group = KillGroup(child.id());
    let stderr = Arc::new(Mutex::new(Vec::new()));
    collect(child.stderr.take().unwrap(), Arc::clone(&stderr));
    let text = || String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
    let mut addr = None;
    let up = wait_until(Duration::from_secs(MAKE_BUILD_SECS), || {
        addr = parse_listening(&text());
        addr.is_some() || child.try_wait().ok().flatten().is_some()
    });
    let addr = addr.unwrap_or_else(|| panic!("make run did not serve (up: {up}):\n{}", text()));
    let r = get(addr, "/through-make-run");
    assert_eq!(r.status, 200, "{}", r.raw_head);
    let body = r.body_str();
    assert!(
        body == a.name() || body == b.name(),
        "not an upstream's answer: {body:?}"
    );
    drop(group);
    let _ = child.wait();
}

/// Stops a process group (make and the serviceq it runs) on drop.
struct KillGroup(u32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0)])
            .status();
    }
}

#[test]
fn static_binary_smoke() {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/serviceq");
    if !bin.exists() {
        eprintln!("skipped: no dist/serviceq (make static)");
        return;
    }
    run_script("scripts/smoke-static", &[bin.to_str().unwrap()], 60);
}
