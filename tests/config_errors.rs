//! The command line and configuration (SPEC §1, §2): every configuration error exits 1
//! with one last stderr line `serviceq: FILE[:LINE]: [KEY: ]message`, in normal start and
//! with `--check`; `--check`, `--version`, `--help`; warnings for unknown and repeated
//! keys; SQ_CONFIG; value parsing rules.

// Each test file uses part of the shared helpers: see tests/support/mod.rs.
#[allow(dead_code)]
mod support;

use std::ffi::OsString;
use std::net::TcpListener;
use std::time::Duration;

use support::*;

/// Lines 1-4 of every body below: a comment, a local listener on port 0, and the error
/// log in the run's temp dir. Line 5 onwards is per test.
const PREAMBLE: &str = "# integration test\nLISTENER_ADDRESS=127.0.0.1\nLISTENER_PORT=0\nERROR_LOG_FILE={dir}/error.log\n";

/// A valid body: lines 5 and 6 are ENDPOINTS and CONCURRENCY_PEAK.
fn good() -> String {
    format!("{PREAMBLE}ENDPOINTS=http://127.0.0.1:9\nCONCURRENCY_PEAK=4\n")
}

/// The valid body with `line` appended as line 7.
fn good_plus(line: &str) -> String {
    format!("{}{line}\n", good())
}

/// Runs `body` both as a normal start and with `--check`; both must exit 1 with the
/// error line, naming `line` and `key` when given, and containing each of `needles`.
fn expect_error(body: &str, line: Option<usize>, key: Option<&str>, needles: &[&str]) {
    for args in [&[][..], &["--check"][..]] {
        let ran = run_check(body, args);
        let ctx = format!("args {args:?}, config:\n{body}\n{}", ran.describe());
        assert!(
            !ran.timed_out,
            "a bad configuration started the proxy; {ctx}"
        );
        assert_eq!(ran.code(), Some(1), "exit status; {ctx}");
        let last = ran.last_stderr_line();
        let path = ran.config.display().to_string();
        let mut prefix = format!("serviceq: {path}");
        if let Some(n) = line {
            prefix.push_str(&format!(":{n}"));
        }
        prefix.push_str(": ");
        if let Some(k) = key {
            prefix.push_str(&format!("{k}: "));
        }
        assert!(
            last.starts_with(&prefix),
            "last stderr line {last:?} should start with {prefix:?}; {ctx}"
        );
        assert!(
            last.len() > prefix.len(),
            "no message after {prefix:?}; {ctx}"
        );
        for n in needles {
            assert!(
                last.contains(n),
                "last stderr line {last:?} should mention {n:?}; {ctx}"
            );
        }
    }
}

#[test]
fn missing_file() {
    let dir = TempDir::new("missing");
    let path = dir.join("nope.properties");
    let ran = run_binary(
        dir,
        path.clone(),
        &[OsString::from("--config"), path.clone().into()],
        &[],
        Duration::from_secs(8),
    );
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    let last = ran.last_stderr_line();
    assert!(
        last.starts_with(&format!("serviceq: {}: ", path.display())),
        "{last:?}"
    );
}

#[test]
fn missing_endpoints() {
    expect_error(
        &format!("{PREAMBLE}CONCURRENCY_PEAK=4\n"),
        None,
        Some("ENDPOINTS"),
        &[],
    );
}

#[test]
fn missing_concurrency_peak() {
    expect_error(
        &format!("{PREAMBLE}ENDPOINTS=http://127.0.0.1:9\n"),
        None,
        Some("CONCURRENCY_PEAK"),
        &[],
    );
}

#[test]
fn empty_endpoints() {
    expect_error(
        &format!("{PREAMBLE}ENDPOINTS=\nCONCURRENCY_PEAK=4\n"),
        Some(5),
        Some("ENDPOINTS"),
        &[],
    );
}

#[test]
fn endpoint_errors() {
    for bad in [
        "127.0.0.1:8080",
        "localhost",
        "ftp://127.0.0.1:21",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:abc",
        "http://127.0.0.1:8080,",
        "http://127.0.0.1:8080,127.0.0.1:8081",
        "http://",
    ] {
        expect_error(
            &format!("{PREAMBLE}ENDPOINTS={bad}\nCONCURRENCY_PEAK=4\n"),
            Some(5),
            Some("ENDPOINTS"),
            &[],
        );
    }
}

#[test]
fn concurrency_peak_errors() {
    for bad in ["lots", "0", "-1", "1.5", ""] {
        expect_error(
            &format!("{PREAMBLE}ENDPOINTS=http://127.0.0.1:9\nCONCURRENCY_PEAK={bad}\n"),
            Some(6),
            Some("CONCURRENCY_PEAK"),
            &[],
        );
    }
    // The example from SPEC §1 quotes the bad value.
    expect_error(
        &format!("{PREAMBLE}ENDPOINTS=http://127.0.0.1:9\nCONCURRENCY_PEAK=lots\n"),
        Some(6),
        Some("CONCURRENCY_PEAK"),
        &["lots"],
    );
}

#[test]
fn timeout_and_number_errors() {
    for (key, bad) in [
        ("OUTGOING_REQUEST_TIMEOUT", "-5"),
        ("OUTGOING_REQUEST_TIMEOUT", "abc"),
        ("KEEP_ALIVE_TIMEOUT", "-2"),
        ("KEEP_ALIVE_TIMEOUT", "soon"),
        ("RETRY_GAP", "-1"),
        ("RETRY_GAP", "x"),
        ("CLIENT_HEADER_TIMEOUT", "abc"),
        ("MAX_RETRIES", "many"),
        ("MAX_RETRIES", "-3"),
        ("MAX_REQUEST_BODY", "big"),
        ("MAX_HEADER_SIZE", "-1"),
        ("LISTENER_PORT", "70000"),
        ("SHUTDOWN_GRACE", "later"),
    ] {
        expect_error(&good_plus(&format!("{key}={bad}")), Some(7), Some(key), &[]);
    }
}

#[test]
fn boolean_errors() {
    for (key, bad) in [
        ("ENABLE_DEFERRED_Q", "yes"),
        ("ENABLE_UPFRONT_Q", "maybe"),
        ("SSL_ENABLE", "on"),
        ("SSL_UPSTREAM_VERIFY", "2"),
    ] {
        expect_error(&good_plus(&format!("{key}={bad}")), Some(7), Some(key), &[]);
    }
}

#[test]
fn proto_other_than_http() {
    expect_error(&good_plus("PROTO=https"), Some(7), Some("PROTO"), &[]);
}

#[test]
fn header_without_colon() {
    expect_error(
        &good_plus("CUSTOM_RESPONSE_HEADERS=X-A: 1|X-Foo bar"),
        Some(7),
        Some("CUSTOM_RESPONSE_HEADERS"),
        &[],
    );
    expect_error(
        &good_plus("CUSTOM_REQUEST_HEADERS=X-Foo bar"),
        Some(7),
        Some("CUSTOM_REQUEST_HEADERS"),
        &[],
    );
}

#[test]
fn malformed_request_format_rule() {
    for bad in ["POST /orders ! extra", "POST /orders/*/items", "POST /x*y"] {
        expect_error(
            &good_plus(&format!("DEFERRED_Q_REQUEST_FORMATS={bad}")),
            Some(7),
            Some("DEFERRED_Q_REQUEST_FORMATS"),
            &[],
        );
    }
}

#[test]
fn ssl_auto_enable_is_an_error() {
    expect_error(
        &good_plus("SSL_AUTO_ENABLE=true"),
        Some(7),
        Some("SSL_AUTO_ENABLE"),
        &[],
    );
}

#[test]
fn fsync_policy_error() {
    expect_error(
        &good_plus("DEFERRED_Q_FSYNC=sometimes"),
        Some(7),
        Some("DEFERRED_Q_FSYNC"),
        &[],
    );
}

#[test]
fn port_already_in_use() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let body = format!(
        "# integration test\nLISTENER_ADDRESS=127.0.0.1\nLISTENER_PORT={port}\nERROR_LOG_FILE={{dir}}/error.log\n\
         ENDPOINTS=http://127.0.0.1:9\nCONCURRENCY_PEAK=4\n"
    );
    let ran = run_check(&body, &[]);
    let ctx = ran.describe();
    assert!(!ran.timed_out, "started although the port is taken; {ctx}");
    assert_eq!(ran.code(), Some(1), "{ctx}");
    let last = ran.last_stderr_line();
    assert!(last.starts_with("serviceq: "), "{last:?}; {ctx}");
    assert!(
        last.contains(&port.to_string()),
        "the error should name the port {port}: {last:?}"
    );
    assert!(
        last.to_ascii_lowercase().contains("in use"),
        "the error should say the address is in use: {last:?}"
    );
    drop(holder);
}

#[test]
fn unwritable_journal_directory() {
    // A regular file where the journal directory should be.
    expect_start_failure(
        &good_plus("DEFERRED_Q_DIR={dir}/sq.properties/sub"),
        "an unusable journal directory",
        |last| {
            assert!(
                last.contains("DEFERRED_Q_DIR") || last.contains("sq.properties/sub"),
                "should name the journal dir: {last:?}"
            );
        },
    );
}

#[test]
fn nothing_after_the_error_line() {
    // Warnings may precede the error; nothing follows it.
    let body =
        format!("{PREAMBLE}NO_SUCH_KEY=1\nENDPOINTS=http://127.0.0.1:9\nCONCURRENCY_PEAK=lots\n");
    let ran = run_check(&body, &[]);
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    let lines: Vec<&str> = ran
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let err_at = lines
        .iter()
        .position(|l| l.contains("CONCURRENCY_PEAK"))
        .expect("error line");
    assert_eq!(err_at, lines.len() - 1, "lines after the error: {lines:#?}");
    assert!(
        lines[err_at].starts_with(&format!(
            "serviceq: {}:7: CONCURRENCY_PEAK: ",
            ran.config.display()
        )),
        "{lines:#?}"
    );
}

#[test]
fn check_on_a_good_file_exits_0() {
    let ran = run_check(&good(), &["--check"]);
    assert!(
        !ran.timed_out,
        "--check must not start the proxy; {}",
        ran.describe()
    );
    assert_eq!(ran.code(), Some(0), "{}", ran.describe());
    assert!(
        !(ran.stdout.trim().is_empty() && ran.stderr.trim().is_empty()),
        "--check should print a summary"
    );
}

#[test]
fn check_accepts_every_documented_form() {
    let body = format!(
        "{PREAMBLE}\
         ENDPOINTS=http://127.0.0.1:9,https://example.com,http://[::1]:8080,http://localhost\n\
         CONCURRENCY_PEAK=4\n\
         \n\
         \t  # an indented comment\n\
         PROTO=http\n\
         OUTGOING_REQUEST_TIMEOUT=-1\n\
         KEEP_ALIVE_TIMEOUT=-1\n\
         RETRY_GAP=0.25\n\
         MAX_RETRIES=3\n\
         ENABLE_DEFERRED_Q=TRUE\n\
         ENABLE_UPFRONT_Q=0\n\
         Q_REQUEST_FORMATS=POST /orders !,POST,PUT /orders,PATCH,DELETE /items/*\n\
         CUSTOM_RESPONSE_HEADERS=Strict-Transport-Security: max-age=31536000|Server\n\
         CUSTOM_REQUEST_HEADERS=X-A: b=c|X-Hash: a#b\n\
         SSL_UPSTREAM_VERIFY=1\n\
         DEFERRED_Q_FSYNC=interval\n\
         DEFERRED_Q_MAX_AGE=0\n\
         MAX_REQUEST_BODY=1048576\n\
         MAX_HEADER_SIZE=8192\n\
         CLIENT_HEADER_TIMEOUT=5\n\
         SHUTDOWN_GRACE=3\n\
         ADMIN_PORT=0\n\
         SSL_AUTO_ENABLE=false\n"
    );
    let ran = run_check(&body, &["--check"]);
    assert_eq!(ran.code(), Some(0), "{}", ran.describe());
}

#[test]
fn version_and_help() {
    let dir = TempDir::new("version");
    let ran = run_binary(
        dir,
        "-".into(),
        &["--version".into()],
        &[],
        Duration::from_secs(5),
    );
    assert_eq!(ran.code(), Some(0), "{}", ran.describe());
    assert_eq!(
        ran.stdout.trim(),
        format!("serviceq {VERSION}"),
        "{}",
        ran.describe()
    );

    let dir = TempDir::new("help");
    let ran = run_binary(
        dir,
        "-".into(),
        &["--help".into()],
        &[],
        Duration::from_secs(5),
    );
    assert_eq!(ran.code(), Some(0), "{}", ran.describe());
    for word in ["--config", "--check", "--version"] {
        assert!(
            ran.stdout.contains(word),
            "--help should mention {word}: {}",
            ran.describe()
        );
    }
}

#[test]
fn unknown_command_line_argument_is_an_error() {
    let dir = TempDir::new("badarg");
    let ran = run_binary(
        dir,
        "-".into(),
        &["--frobnicate".into()],
        &[],
        Duration::from_secs(5),
    );
    assert!(!ran.timed_out);
    assert_ne!(ran.code(), Some(0), "{}", ran.describe());
}

#[test]
fn unknown_key_warns_but_starts() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[u.url()])
        .set("CONCURENCY_PEAK_TYPO", "3")
        .start();
    assert!(
        sq.stderr().contains("CONCURENCY_PEAK_TYPO"),
        "no warning naming the unknown key:\n{}",
        sq.stderr()
    );
    assert_eq!(get(sq.addr(), "/").status, 200);
}

#[test]
fn repeated_key_warns_and_last_wins() {
    let u = Upstream::start(Behaviour::Ok);
    let body = format!(
        "ENDPOINTS={}\nCONCURRENCY_PEAK=4\nCUSTOM_RESPONSE_HEADERS=X-V: first\nCUSTOM_RESPONSE_HEADERS=X-V: second\n",
        u.url()
    );
    let sq = ServiceQ::start(&body);
    assert!(
        sq.stderr().contains("CUSTOM_RESPONSE_HEADERS"),
        "no warning for the repeated key:\n{}",
        sq.stderr()
    );
    let r = get(sq.addr(), "/");
    assert_eq!(r.headers_named("X-V"), vec!["second"], "{}", r.raw_head);
}

#[test]
fn values_keep_hash_and_equals_signs() {
    let u = Upstream::start(Behaviour::Ok);
    let body = format!(
        "  # leading comment\nENDPOINTS = {}\n CONCURRENCY_PEAK = 4 \nCUSTOM_RESPONSE_HEADERS=X-Hash: a#b|X-Eq: b=c\n",
        u.url()
    );
    let sq = ServiceQ::start(&body);
    let r = get(sq.addr(), "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.headers_named("X-Hash"), vec!["a#b"], "{}", r.raw_head);
    assert_eq!(r.headers_named("X-Eq"), vec!["b=c"], "{}", r.raw_head);
}

#[test]
fn sq_config_env_var_is_honoured() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = Launch::new(&Conf::new(&[u.url()]).body())
        .via(ConfigVia::EnvVar)
        .start();
    assert_eq!(get(sq.addr(), "/").status, 200);
}

#[test]
fn config_flag_wins_over_env_var_and_short_flag_works() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = Launch::new(&Conf::new(&[u.url()]).body())
        .env("SQ_CONFIG", "/nonexistent/sq.properties")
        .via(ConfigVia::ShortFlag)
        .start();
    assert_eq!(get(sq.addr(), "/").status, 200);
}

#[test]
fn env_var_pointing_nowhere_is_a_config_error() {
    let dir = TempDir::new("envmissing");
    let path = dir.join("absent.properties");
    let ran = run_binary(
        dir,
        path.clone(),
        &[],
        &[("SQ_CONFIG", path.to_str().unwrap())],
        Duration::from_secs(8),
    );
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    assert!(
        ran.last_stderr_line()
            .starts_with(&format!("serviceq: {}: ", path.display())),
        "{}",
        ran.describe()
    );
}
