//! A one-minute run of `scripts/soak` against the binary under test: mixed keep-alive
//! and short connections, endpoints killed and restarted, slow and malformed clients;
//! no buffered request lost, flat memory and threads, only 701/702 in the error log.
//! The full soak (an hour) is `scripts/soak` on its own.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const SOAK_SECONDS: u64 = 60;
/// The run, the queue drain (at most 60 s), the checks and the stop, with room to spare.
const DEADLINE: Duration = Duration::from_secs(SOAK_SECONDS + 150);

#[test]
fn soak_for_a_minute() {
    if !support::require_tool("python3", "--version") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The script's own usage line: a SERVICEQ_BIN relative to the caller's directory
    // (the repository), which the script must resolve before it changes directory.
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_serviceq"));
    let bin = bin.strip_prefix(root).unwrap_or(bin);
    let mut child = Command::new("python3")
        .arg("scripts/soak")
        .current_dir(root)
        .env("SOAK_SECONDS", SOAK_SECONDS.to_string())
        .env("SERVICEQ_BIN", bin)
        .env_remove("SOAK_WORKDIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 scripts/soak");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for soak") {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            // SIGTERM lets the script stop the processes it started; then make sure.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            thread::sleep(Duration::from_secs(10));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    println!("{out}");
    assert!(
        status.is_some(),
        "soak did not finish within {DEADLINE:?}\n{out}\n{err}"
    );
    assert!(
        status.unwrap().success(),
        "soak failed ({status:?})\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    );
    assert!(out.contains("soak: PASS"), "{out}");
}
