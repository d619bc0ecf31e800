//! The operations scripts, run against the binary under test: `make install` and the
//! SysV init script's whole cycle (plus `systemd-analyze verify` of the unit when it
//! exists), the `make demo` tour, and the static binary's smoke test when
//! `dist/serviceq` exists (`make static`). Each script cleans up after itself, also
//! when `timeout` stops it (SIGTERM runs its trap).
use std::path::Path;
use std::process::Command;

fn run_script(script: &str, args: &[&str], limit_secs: u32) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("timeout")
        .arg("-k")
        .arg("10")
        .arg(limit_secs.to_string())
        .arg(root.join(script))
        .args(args)
        .current_dir(root)
        // The binary under test: the scripts then run no cargo of their own.
        .env("SERVICEQ_BIN", env!("CARGO_BIN_EXE_serviceq"))
        .output()
        .expect("run timeout(1)");
    assert!(
        out.status.success(),
        "{script} failed ({:?}; 124 = timed out after {limit_secs} s)\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

#[test]
fn install_and_init_script_cycle() {
    run_script("scripts/test-init", &[], 180);
}

#[test]
fn demo_tour() {
    run_script("scripts/demo", &[], 60);
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
