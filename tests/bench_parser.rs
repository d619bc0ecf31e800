//! The wrk report parser the bench scripts share (`scripts/wrkout.py`) passes its own
//! checks: each figure read from its own line, so a `+/- Stdev` column reading `99%` is
//! never taken for the 99th percentile.

mod support;

use std::process::Command;

#[test]
fn wrk_parser_self_test_passes() {
    if !support::require_tool("python3", "--version") {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/wrkout.py");
    let out = Command::new("python3")
        .arg(script)
        .output()
        .expect("run python3");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("wrkout: ok"),
        "{text}"
    );
}
