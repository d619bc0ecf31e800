//! External tools and prerequisites a test needs (openssl, curl, python3, IPv6, …):
//! a missing one fails the test when env `CI` is set and is a printed SKIP elsewhere.

use std::process::{Command, Stdio};

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
