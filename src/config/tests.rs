//! The configuration's unit tests: every key, default and error, from byte literals.

use super::*;

const FILE: &str = "t.properties";
/// The two required keys; lines 1 and 2 of every test file.
const BASE: &str = "ENDPOINTS=http://127.0.0.1:8001\nCONCURRENCY_PEAK=4\n";

fn parse(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
    parse_reader(text.as_bytes(), Path::new(FILE))
}

fn parse_ok(text: &str) -> (Config, Vec<String>) {
    match parse(text) {
        Ok(parsed) => parsed,
        Err(e) => panic!("{text:?} should parse: {e}"),
    }
}

fn parse_err(text: &str) -> ConfigError {
    match parse(text) {
        Ok((config, _)) => panic!("{text:?} should fail, got {config:?}"),
        Err(e) => e,
    }
}

/// BASE plus `extra`, which must parse without warnings. A key of BASE that
/// `extra` sets is left out of BASE.
fn config_with(extra: &str) -> Config {
    let overridden = |base_line: &str| {
        let key = base_line.split('=').next().unwrap_or_default();
        extra.lines().any(|l| l.starts_with(&format!("{key}=")))
    };
    let base: String = BASE
        .lines()
        .filter(|l| !overridden(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let (config, warnings) = parse_ok(&format!("{base}{extra}\n"));
    assert!(warnings.is_empty(), "{extra:?}: {warnings:?}");
    config
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn endpoint(scheme: Scheme, host: &str, port: u16) -> Endpoint {
    Endpoint {
        scheme,
        host: host.to_string(),
        port,
    }
}

/// `KEY=input` on line 3 yields `field == want`, for each (input, want).
macro_rules! assert_values {
    ($key:literal, $field:ident, [$(($input:expr, $want:expr)),* $(,)?]) => {
        $(
            assert_eq!(
                config_with(&format!("{}={}", $key, $input)).$field,
                $want,
                "{}={}",
                $key,
                $input
            );
        )*
    };
}

#[test]
fn every_default() {
    let c = config_with("");
    assert_eq!(c.source, PathBuf::from(FILE));
    assert_eq!(c.listener_port, 5252);
    assert_eq!(c.listener_address, "0.0.0.0".parse::<IpAddr>().unwrap());
    assert_eq!(c.endpoints, vec![endpoint(Scheme::Http, "127.0.0.1", 8001)]);
    assert_eq!(c.concurrency_peak, 4);
    assert_eq!(c.outgoing_request_timeout, Some(secs(5.0)));
    assert_eq!(c.retry_gap, Duration::ZERO);
    assert_eq!(c.max_retries, 3);
    assert_eq!(c.keep_alive_timeout, Some(secs(120.0)));
    assert!(c.enable_deferred_q);
    assert!(!c.enable_upfront_q);
    assert_eq!(c.request_formats, RequestFormats::all());
    assert!(c.custom_response_headers.is_empty());
    assert!(c.custom_request_headers.is_empty());
    assert_eq!(
        c.error_log_file,
        PathBuf::from("/opt/serviceq/logs/serviceq_error.log")
    );
    assert!(!c.ssl_enable);
    assert_eq!(c.ssl_certificate_file, None);
    assert_eq!(c.ssl_private_key_file, None);
    assert_eq!(c.ssl_upstream_ca_file, None);
    assert!(c.ssl_upstream_verify);
    assert_eq!(c.deferred_q_dir, None);
    assert_eq!(c.deferred_q_fsync, FsyncPolicy::Always);
    assert_eq!(c.deferred_q_max_age, None);
    assert_eq!(c.max_request_body, 10_485_760);
    assert_eq!(c.max_header_size, 16_384);
    assert_eq!(c.max_headers, 100);
    assert_eq!(c.client_header_timeout, secs(10.0));
    assert_eq!(c.client_body_timeout, secs(60.0));
    assert_eq!(c.shutdown_grace, secs(10.0));
    assert_eq!(c.access_log_file, None);
    assert_eq!(c.admin_address, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(c.admin_port, 0);
    assert_eq!(c.health_check_path, None);
    assert_eq!(c.health_check_interval, secs(2.0));
    assert_eq!(c.health_check_timeout, secs(1.0));
    assert_eq!((c.health_check_rise, c.health_check_fall), (2, 3));
    assert_eq!(c.health_check_status, StatusRanges::default_healthy());
    assert_eq!(c.tunnel_idle_timeout, secs(300.0));
    assert_eq!(
        config_with("TUNNEL_IDLE_TIMEOUT=0.5").tunnel_idle_timeout,
        secs(0.5)
    );
}

#[test]
fn health_check_settings() {
    let c = config_with(
        "HEALTH_CHECK_PATH=/healthz?deep=1\nHEALTH_CHECK_INTERVAL=0.2\nHEALTH_CHECK_TIMEOUT=0.5\n\
         HEALTH_CHECK_RISE=1\nHEALTH_CHECK_FALL=5\nHEALTH_CHECK_STATUS=200,204-205",
    );
    assert_eq!(c.health_check_path.as_deref(), Some("/healthz?deep=1"));
    assert_eq!(c.health_check_interval, secs(0.2));
    assert_eq!(c.health_check_timeout, secs(0.5));
    assert_eq!((c.health_check_rise, c.health_check_fall), (1, 5));
    assert!(c.health_check_status.contains(205) && !c.health_check_status.contains(201));
    assert_eq!(config_with("HEALTH_CHECK_PATH=").health_check_path, None);
    for bad in [
        "HEALTH_CHECK_PATH=healthz",
        "HEALTH_CHECK_PATH=/a b",
        "HEALTH_CHECK_INTERVAL=0",
        "HEALTH_CHECK_TIMEOUT=-1",
        "HEALTH_CHECK_RISE=0",
        "HEALTH_CHECK_FALL=101",
        "HEALTH_CHECK_STATUS=2xx",
    ] {
        let e = parse_err(&format!("{BASE}{bad}\n"));
        let key = bad.split('=').next().unwrap();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some(key)),
            "{bad}: {e}"
        );
    }
}

#[test]
fn max_retries_default_is_two_n_plus_one() {
    let three = "ENDPOINTS=http://a:1,http://b:2,http://c:3\nCONCURRENCY_PEAK=1\n";
    assert_eq!(parse_ok(three).0.max_retries, 7);
    // An explicit value wins whatever its position relative to ENDPOINTS.
    let explicit = "MAX_RETRIES=2\nENDPOINTS=http://a:1,http://b:2\nCONCURRENCY_PEAK=1\n";
    assert_eq!(parse_ok(explicit).0.max_retries, 2);
    let many = vec![endpoint(Scheme::Http, "a", 1); 5];
    assert_eq!(
        Config::with_defaults(PathBuf::new(), many, 1).max_retries,
        11
    );
}

#[test]
fn valid_values_of_scalar_keys() {
    assert_values!(
        "LISTENER_PORT",
        listener_port,
        [("0", 0), ("80", 80), ("65535", 65535)]
    );
    assert_values!("ADMIN_PORT", admin_port, [("0", 0), ("9090", 9090)]);
    let v6: IpAddr = "::".parse().unwrap();
    assert_values!("LISTENER_ADDRESS", listener_address, [("::", v6)]);
    let local: IpAddr = "::1".parse().unwrap();
    assert_values!("ADMIN_ADDRESS", admin_address, [("::1", local)]);
    assert_values!(
        "CONCURRENCY_PEAK",
        concurrency_peak,
        [("1", 1), ("65536", 65536)]
    );
    assert_values!("MAX_RETRIES", max_retries, [("1", 1), ("10", 10)]);
    assert_values!(
        "MAX_REQUEST_BODY",
        max_request_body,
        [("0", 0), ("1024", 1024)]
    );
    assert_values!(
        "MAX_HEADER_SIZE",
        max_header_size,
        [("1024", 1024), ("1048576", 1_048_576)]
    );
    assert_values!("MAX_HEADERS", max_headers, [("1", 1), ("1000", 1000)]);
    assert_values!(
        "CLIENT_BODY_BUFFER_SIZE",
        client_body_buffer_size,
        [("1024", 1024), ("65536", 65536), ("67108864", 64 << 20)]
    );
    assert_values!(
        "DEFERRED_Q_MAX_MEMORY",
        deferred_q_max_memory,
        [("0", 0), ("1048576", 1 << 20)]
    );
    assert_values!(
        "DEFERRED_Q_FSYNC",
        deferred_q_fsync,
        [
            ("always", FsyncPolicy::Always),
            ("INTERVAL", FsyncPolicy::Interval),
            ("Never", FsyncPolicy::Never),
        ]
    );
}

#[test]
fn valid_booleans() {
    for (input, want) in [("true", true), ("TRUE", true), ("True", true), ("1", true)] {
        assert_eq!(
            config_with(&format!("ENABLE_UPFRONT_Q={input}")).enable_upfront_q,
            want
        );
    }
    for (input, want) in [("false", false), ("FALSE", false), ("0", false)] {
        assert_eq!(
            config_with(&format!("ENABLE_DEFERRED_Q={input}")).enable_deferred_q,
            want
        );
    }
    let files = "SSL_CERTIFICATE_FILE=c.pem\nSSL_PRIVATE_KEY_FILE=k.pem\n";
    assert!(config_with(&format!("SSL_ENABLE=1\n{files}")).ssl_enable);
    assert!(!config_with("SSL_ENABLE=false").ssl_enable);
    assert!(config_with("SSL_UPSTREAM_VERIFY=true").ssl_upstream_verify);
    config_with("SSL_AUTO_ENABLE=false");
    config_with("SSL_AUTO_ENABLE=0");
    let auto =
        config_with("SSL_ENABLE=true\nSSL_AUTO_ENABLE=true\nSSL_AUTO_DOMAINS=A.test, b.test");
    assert!(auto.ssl_auto_enable && auto.ssl_certificate_file.is_none());
    assert_eq!(auto.ssl_auto_domains, ["a.test", "b.test"]);
    assert_eq!(auto.ssl_auto_directory_url, LETS_ENCRYPT_DIRECTORY);
    assert_eq!(auto.ssl_auto_http_port, 80);
    let body = format!("{BASE}SSL_ENABLE=true\nSSL_AUTO_ENABLE=true\nSSL_AUTO_DOMAINS=a.test\nSSL_CERTIFICATE_FILE=c.pem\n");
    let (_, warnings) = parse(&body).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("SSL_CERTIFICATE_FILE: not used")),
        "{warnings:?}"
    );
    let e = parse_err(&format!("{BASE}SSL_ENABLE=true\nSSL_AUTO_ENABLE=true\n"));
    assert!(e.to_string().contains("SSL_AUTO_DOMAINS: missing"), "{e}");
}

#[test]
fn valid_seconds() {
    assert_values!(
        "OUTGOING_REQUEST_TIMEOUT",
        outgoing_request_timeout,
        [
            ("-1", None),
            ("5", Some(secs(5.0))),
            ("0.25", Some(secs(0.25)))
        ]
    );
    assert_values!(
        "RETRY_GAP",
        retry_gap,
        [("0", Duration::ZERO), ("1.5", secs(1.5))]
    );
    assert_values!(
        "KEEP_ALIVE_TIMEOUT",
        keep_alive_timeout,
        [
            ("-1", None),
            ("0", Some(Duration::ZERO)),
            ("2.5", Some(secs(2.5)))
        ]
    );
    assert_values!(
        "DEFERRED_Q_MAX_AGE",
        deferred_q_max_age,
        [("0", None), ("0.0", None), ("3600", Some(secs(3600.0)))]
    );
    assert_values!(
        "CLIENT_HEADER_TIMEOUT",
        client_header_timeout,
        [("0.5", secs(0.5))]
    );
    assert_values!(
        "CLIENT_BODY_TIMEOUT",
        client_body_timeout,
        [("30", secs(30.0))]
    );
    assert_values!(
        "SHUTDOWN_GRACE",
        shutdown_grace,
        [("0", Duration::ZERO), ("2", secs(2.0))]
    );
    // Nanosecond precision without float rounding; finer digits are dropped.
    assert_values!(
        "RETRY_GAP",
        retry_gap,
        [
            ("0.000000001", Duration::from_nanos(1)),
            ("1.0000000019", Duration::new(1, 1)),
            ("0.1", Duration::from_millis(100)),
        ]
    );
}

#[test]
fn paths_stay_as_written() {
    assert_values!(
        "ERROR_LOG_FILE",
        error_log_file,
        [
            ("logs/e.log", PathBuf::from("logs/e.log")),
            ("/var/log/e", PathBuf::from("/var/log/e"))
        ]
    );
    assert_values!(
        "ACCESS_LOG_FILE",
        access_log_file,
        [("a.log", Some(PathBuf::from("a.log"))), ("", None)]
    );
    assert_values!(
        "DEFERRED_Q_DIR",
        deferred_q_dir,
        [("q", Some(PathBuf::from("q"))), ("", None)]
    );
    assert_values!(
        "SSL_UPSTREAM_CA_FILE",
        ssl_upstream_ca_file,
        [("./ca.pem", Some(PathBuf::from("./ca.pem"))), ("", None)]
    );
    // Spaces inside a path are kept; only the ends are trimmed.
    assert_values!(
        "ACCESS_LOG_FILE",
        access_log_file,
        [("  my logs/a.log  ", Some(PathBuf::from("my logs/a.log")))]
    );
}

#[test]
fn proto_accepts_http_in_any_case() {
    config_with("PROTO=http");
    config_with("PROTO=HTTP");
}

/// (line 3, substring of the Display); the error must sit on line 3 and name the key.
const INVALID: &[(&str, &str)] = &[
    (
        "LISTENER_PORT=65536",
        "expected a port from 0 to 65535, got \"65536\"",
    ),
    ("LISTENER_PORT=-1", "got \"-1\""),
    ("LISTENER_PORT=+80", "got \"+80\""),
    ("LISTENER_PORT=", "got \"\""),
    ("LISTENER_PORT=80 80", "got \"80 80\""),
    ("ADMIN_PORT=99999", "expected a port"),
    (
        "CLIENT_BODY_BUFFER_SIZE=1023",
        "an integer from 1024 to 67108864",
    ),
    ("CLIENT_BODY_TEMP_DIR=", "expected a file path"),
    ("DEFERRED_Q_MAX_MEMORY=-1", "a number of bytes"),
    ("LISTENER_ADDRESS=localhost", "expected an IP address"),
    ("LISTENER_ADDRESS=[::]", "expected an IP address"),
    ("ADMIN_ADDRESS=1.2.3", "expected an IP address"),
    ("PROTO=https", "expected \"http\""),
    ("PROTO=tcp", "got \"tcp\""),
    (
        "CONCURRENCY_PEAK=lots",
        "expected a positive integer, got \"lots\"",
    ),
    (
        "CONCURRENCY_PEAK=0",
        "expected a positive integer, got \"0\"",
    ),
    ("CONCURRENCY_PEAK=65537", "at most 65536, got \"65537\""),
    (
        "CONCURRENCY_PEAK=99999999999999999999999",
        "expected a positive integer",
    ),
    ("CONCURRENCY_PEAK=1e3", "got \"1e3\""),
    ("CONCURRENCY_PEAK=", "got \"\""),
    ("OUTGOING_REQUEST_TIMEOUT=0", "greater than 0"),
    ("OUTGOING_REQUEST_TIMEOUT=5s", "got \"5s\""),
    (
        "OUTGOING_REQUEST_TIMEOUT=-2",
        "or -1 for no timeout, got \"-2\"",
    ),
    ("OUTGOING_REQUEST_TIMEOUT=-1.0", "got \"-1.0\""),
    ("OUTGOING_REQUEST_TIMEOUT=", "got \"\""),
    ("RETRY_GAP=-1", "got \"-1\""),
    ("RETRY_GAP=1e3", "got \"1e3\""),
    ("RETRY_GAP=.5", "got \".5\""),
    ("RETRY_GAP=5.", "got \"5.\""),
    ("RETRY_GAP=1.2.3", "got \"1.2.3\""),
    ("RETRY_GAP=1000000000", "less than 1000000000 seconds"),
    ("RETRY_GAP=lots", "got \"lots\""),
    ("MAX_RETRIES=0", "expected a positive integer, got \"0\""),
    ("MAX_RETRIES=-1", "expected a positive integer"),
    ("MAX_RETRIES=4294967296", "expected a positive integer"),
    ("MAX_RETRIES=2.5", "expected a positive integer"),
    ("KEEP_ALIVE_TIMEOUT=-5", "or -1 for no limit, got \"-5\""),
    ("KEEP_ALIVE_TIMEOUT=forever", "got \"forever\""),
    (
        "ENABLE_DEFERRED_Q=yes",
        "expected true or false, got \"yes\"",
    ),
    ("ENABLE_UPFRONT_Q=2", "expected true or false"),
    ("ENABLE_UPFRONT_Q=", "expected true or false, got \"\""),
    ("SSL_ENABLE=on", "expected true or false"),
    ("SSL_UPSTREAM_VERIFY=no", "expected true or false"),
    ("SSL_AUTO_ENABLE=maybe", "expected true or false"),
    (
        "SSL_AUTO_ENABLE=true",
        "needs SSL_ENABLE=true (the certificates are for the TLS listener)",
    ),
    ("SSL_AUTO_DOMAINS=*.example.com", "no wildcards"),
    (
        "SSL_AUTO_DIRECTORY_URL=http://acme.test/dir",
        "expected an https:// URL",
    ),
    ("DEFERRED_Q_REQUEST_FORMATS=post", "malformed rule \"post\""),
    ("DEFERRED_Q_REQUEST_FORMATS=POST,,PUT", "empty rule #2"),
    ("DEFERRED_Q_REQUEST_FORMATS=", "empty rule #1"),
    (
        "DEFERRED_Q_REQUEST_FORMATS=FOO BAR BAZ QUX",
        "malformed rule \"FOO BAR BAZ QUX\": expected METHOD [ROUTE] [!]",
    ),
    (
        "DEFERRED_Q_FSYNC=sometimes",
        "expected always, interval or never, got \"sometimes\"",
    ),
    ("DEFERRED_Q_MAX_AGE=-1", "got \"-1\""),
    ("DEFERRED_Q_MAX_AGE=1h", "got \"1h\""),
    (
        "MAX_REQUEST_BODY=10MB",
        "expected a number of bytes (0 or more), got \"10MB\"",
    ),
    ("MAX_REQUEST_BODY=-1", "got \"-1\""),
    (
        "MAX_HEADER_SIZE=1023",
        "expected an integer from 1024 to 1048576, got \"1023\"",
    ),
    ("MAX_HEADER_SIZE=1048577", "from 1024 to 1048576"),
    (
        "MAX_HEADERS=0",
        "expected an integer from 1 to 1000, got \"0\"",
    ),
    ("MAX_HEADERS=1001", "from 1 to 1000"),
    (
        "CLIENT_HEADER_TIMEOUT=0",
        "expected seconds greater than 0, e.g. 10 or 0.5, got \"0\"",
    ),
    ("CLIENT_HEADER_TIMEOUT=-1", "got \"-1\""),
    ("CLIENT_BODY_TIMEOUT=0.0", "greater than 0"),
    ("SHUTDOWN_GRACE=-1", "got \"-1\""),
    ("ERROR_LOG_FILE=", "expected a file path, got \"\""),
    (
        "ENDPOINTS=",
        "expected a comma-separated list of scheme://host[:port], got \"\"",
    ),
    (
        "CUSTOM_RESPONSE_HEADERS=X-A",
        "header \"X-A\": expected Name: value",
    ),
    (
        "CUSTOM_REQUEST_HEADERS=Server",
        "header \"Server\": expected Name: value",
    ),
];

#[test]
fn invalid_values_are_line_numbered_errors() {
    for &(line, want) in INVALID {
        let e = parse_err(&format!("{BASE}{line}\n"));
        let key = line.split('=').next().unwrap_or_default();
        assert_eq!(e.line, Some(3), "{line:?}: {e}");
        assert_eq!(e.key.as_deref(), Some(key), "{line:?}: {e}");
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("{FILE}:3: {key}: ")), "{shown}");
        assert!(shown.contains(want), "{line:?}: {shown:?} lacks {want:?}");
    }
}

#[test]
fn error_display_matches_spec_examples() {
    let text = "# ServiceQ\n\nLISTENER_PORT=5252\nPROTO=http\nENDPOINTS=http://a:1\n\nCONCURRENCY_PEAK=lots\n";
    let e = parse_reader(text.as_bytes(), Path::new("conf/sq.properties")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "conf/sq.properties:7: CONCURRENCY_PEAK: expected a positive integer, got \"lots\""
    );
    let e = parse_reader(
        &b"CONCURRENCY_PEAK=1\n"[..],
        Path::new("conf/sq.properties"),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "conf/sq.properties: ENDPOINTS: missing (required)"
    );
    assert_eq!((e.line, e.key.as_deref()), (None, Some("ENDPOINTS")));
}

#[test]
fn required_keys() {
    let e = parse_err("ENDPOINTS=http://a\n");
    assert_eq!(
        e.to_string(),
        "t.properties: CONCURRENCY_PEAK: missing (required)"
    );
    let e = parse_err("");
    assert_eq!(e.key.as_deref(), Some("ENDPOINTS"));
    // A commented-out key is not given.
    let e = parse_err("#ENDPOINTS=http://a\nCONCURRENCY_PEAK=1\n");
    assert_eq!(e.key.as_deref(), Some("ENDPOINTS"));
}

#[test]
fn line_syntax_errors() {
    let e = parse_err(&format!("{BASE}\nLISTENER_PORT 5252\n"));
    assert_eq!(
        e.to_string(),
        "t.properties:4: expected KEY=VALUE, got \"LISTENER_PORT 5252\""
    );
    assert_eq!(e.key, None);
    let e = parse_err(&format!("{BASE}  = 5\n"));
    assert_eq!(
        e.to_string(),
        "t.properties:3: expected KEY=VALUE, the key is missing in \"= 5\""
    );
    let e = parse_reader(
        &b"ENDPOINTS=http://a\nCONCURRENCY_PEAK=\xff\n"[..],
        Path::new(FILE),
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "t.properties:2: not valid UTF-8");
}

#[test]
fn comments_blanks_and_whitespace() {
    let text = "\n   \n# comment\n   # indented comment = with equals\n\t\n  ENDPOINTS  =  http://a:1  \nCONCURRENCY_PEAK =7\n#CONCURRENCY_PEAK=9\n";
    let (config, warnings) = parse_ok(text);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.concurrency_peak, 7);
    assert_eq!(config.endpoints, vec![endpoint(Scheme::Http, "a", 1)]);
}

#[test]
fn equals_and_hash_inside_values() {
    let c = config_with("CUSTOM_REQUEST_HEADERS=X-A: b=c");
    assert_eq!(
        c.custom_request_headers,
        vec![("X-A".to_string(), "b=c".to_string())]
    );
    let c = config_with("CUSTOM_RESPONSE_HEADERS=X-Tag: #1 # not a comment");
    assert_eq!(
        c.custom_response_headers,
        vec![("X-Tag".to_string(), "#1 # not a comment".to_string())]
    );
    assert_eq!(
        config_with("ACCESS_LOG_FILE=a#b.log").access_log_file,
        Some(PathBuf::from("a#b.log"))
    );
    // "#" after a value is part of it, so this is an invalid port, not a comment.
    let e = parse_err(&format!("{BASE}LISTENER_PORT=80 # web\n"));
    assert!(e.to_string().contains("got \"80 # web\""), "{e}");
}

#[test]
fn duplicate_key_warns_and_last_wins() {
    let (config, warnings) = parse_ok(&format!("{BASE}LISTENER_PORT=1\nLISTENER_PORT=2\n"));
    assert_eq!(config.listener_port, 2);
    assert_eq!(
        warnings,
        vec!["t.properties:4: LISTENER_PORT: given again (also on line 3); the last one, line 4, wins"]
    );
    // An invalid value that is overridden later is never validated.
    let (config, _) = parse_ok(&format!("{BASE}LISTENER_PORT=lots\nLISTENER_PORT=3\n"));
    assert_eq!(config.listener_port, 3);
    // ...but the error for the surviving value points at its own line.
    let e = parse_err(&format!("{BASE}LISTENER_PORT=3\nLISTENER_PORT=lots\n"));
    assert_eq!(e.line, Some(4));
}

#[test]
fn unknown_keys_warn() {
    let (config, warnings) = parse_ok(&format!("{BASE}UNKNOWN_KEY=1\nlistener_port=80\n"));
    assert_eq!(config.listener_port, 5252);
    assert_eq!(
        warnings,
        vec![
            "t.properties:3: UNKNOWN_KEY: unknown key (ignored)",
            "t.properties:4: listener_port: unknown key (ignored; keys are case-sensitive: did you mean LISTENER_PORT?)",
        ]
    );
}

#[test]
fn crlf_and_bom() {
    let text = "\u{feff}ENDPOINTS=http://a:1\r\n# c\r\n\r\nCONCURRENCY_PEAK=3\r\nACCESS_LOG_FILE=a.log\r\n";
    let (config, warnings) = parse_ok(text);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.concurrency_peak, 3);
    assert_eq!(config.access_log_file, Some(PathBuf::from("a.log")));
    // The BOM must not become part of the first key (which would be unknown).
    let (_, warnings) = parse_ok("\u{feff}ENDPOINTS=http://a\nCONCURRENCY_PEAK=1");
    assert!(warnings.is_empty(), "{warnings:?}");
    // Errors on CRLF files still count lines right and do not quote the "\r".
    let e = parse_err("ENDPOINTS=http://a\r\nCONCURRENCY_PEAK=x\r\n");
    assert_eq!(
        e.to_string(),
        "t.properties:2: CONCURRENCY_PEAK: expected a positive integer, got \"x\""
    );
}

#[test]
fn endpoints_parse() {
    let cases = [
        (
            "http://127.0.0.1:8001",
            endpoint(Scheme::Http, "127.0.0.1", 8001),
        ),
        (
            "http://example.com",
            endpoint(Scheme::Http, "example.com", 80),
        ),
        (
            "https://example.com",
            endpoint(Scheme::Https, "example.com", 443),
        ),
        (
            "HTTPS://api.server0.com:8000/",
            endpoint(Scheme::Https, "api.server0.com", 8000),
        ),
        ("http://[::1]:8080", endpoint(Scheme::Http, "::1", 8080)),
        (
            "https://[2001:db8::5]",
            endpoint(Scheme::Https, "2001:db8::5", 443),
        ),
        ("http://[::1]/", endpoint(Scheme::Http, "::1", 80)),
        (
            "http://my_host-1.local:65535",
            endpoint(Scheme::Http, "my_host-1.local", 65535),
        ),
    ];
    for (input, want) in cases {
        assert_eq!(input.parse::<Endpoint>(), Ok(want), "{input}");
    }
    let c = config_with("ENDPOINTS= http://a:1 ,  https://b ,http://[::1]:2");
    assert_eq!(
        c.endpoints,
        vec![
            endpoint(Scheme::Http, "a", 1),
            endpoint(Scheme::Https, "b", 443),
            endpoint(Scheme::Http, "::1", 2),
        ]
    );
    assert_eq!(c.max_retries, 7);
}

#[test]
fn endpoint_errors() {
    let cases = [
        (
            "ENDPOINTS=127.0.0.1:8001",
            "endpoint \"127.0.0.1:8001\": no scheme",
        ),
        ("ENDPOINTS=ftp://a", "scheme \"ftp\" must be http or https"),
        (
            "ENDPOINTS=http://a,,http://b",
            "empty entry #2 in \"http://a,,http://b\"",
        ),
        ("ENDPOINTS=http://a,", "empty entry #2"),
        ("ENDPOINTS=,http://a", "empty entry #1"),
        ("ENDPOINTS=http://a/api", "a path is not allowed"),
        ("ENDPOINTS=http://a//", "a path is not allowed"),
        ("ENDPOINTS=http://a?x=1", "a path is not allowed"),
        ("ENDPOINTS=http://user:pw@a", "user information"),
        (
            "ENDPOINTS=http://a:0",
            "expected a port from 1 to 65535, got \"0\"",
        ),
        ("ENDPOINTS=http://a:65536", "got \"65536\""),
        ("ENDPOINTS=http://a:", "got \"\""),
        ("ENDPOINTS=http://a:x", "got \"x\""),
        ("ENDPOINTS=http://", "the host is missing"),
        ("ENDPOINTS=http://:80", "the host is missing"),
        ("ENDPOINTS=http://::1", "IPv6 addresses need brackets"),
        ("ENDPOINTS=http://::1:8080", "IPv6 addresses need brackets"),
        ("ENDPOINTS=http://[::1", "unclosed \"[\""),
        (
            "ENDPOINTS=http://[nope]:80",
            "\"nope\" is not an IPv6 address",
        ),
        (
            "ENDPOINTS=http://[::1]8080",
            "expected :port after the IPv6 address",
        ),
        (
            "ENDPOINTS=http://10.0.0.256",
            "\"10.0.0.256\" is not an IPv4 address",
        ),
        ("ENDPOINTS=http://a b", "\"a b\" is not a valid host name"),
        (
            "ENDPOINTS=http://a b:1,http://c",
            "is not a valid host name",
        ),
    ];
    for (line, want) in cases {
        let e = parse_err(&format!("CONCURRENCY_PEAK=1\n{line}\n"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("ENDPOINTS")),
            "{line}"
        );
        assert!(e.to_string().contains(want), "{line}: {e} lacks {want:?}");
    }
}

#[test]
fn endpoint_display_and_host_header() {
    let cases = [
        (
            endpoint(Scheme::Http, "127.0.0.1", 80),
            "http://127.0.0.1:80",
            "127.0.0.1",
            true,
        ),
        (
            endpoint(Scheme::Http, "127.0.0.1", 8080),
            "http://127.0.0.1:8080",
            "127.0.0.1:8080",
            false,
        ),
        (
            endpoint(Scheme::Https, "::1", 443),
            "https://[::1]:443",
            "[::1]",
            true,
        ),
        (
            endpoint(Scheme::Http, "::1", 8080),
            "http://[::1]:8080",
            "[::1]:8080",
            false,
        ),
        (
            endpoint(Scheme::Https, "api.example.com", 80),
            "https://api.example.com:80",
            "api.example.com:80",
            false,
        ),
        (
            endpoint(Scheme::Http, "api.example.com", 443),
            "http://api.example.com:443",
            "api.example.com:443",
            false,
        ),
    ];
    for (ep, display, host, default_port) in cases {
        assert_eq!(ep.to_string(), display);
        assert_eq!(ep.host_header(), host);
        assert_eq!(ep.is_default_port(), default_port, "{ep}");
        // Display re-parses to the same endpoint.
        assert_eq!(display.parse::<Endpoint>(), Ok(ep));
    }
    assert_eq!(
        "HTTP://a".parse::<Endpoint>().map(|e| e.to_string()),
        Ok("http://a:80".to_string())
    );
}

#[test]
fn duplicate_endpoint_warns() {
    let (config, warnings) = parse_ok("ENDPOINTS=http://a,http://a:80\nCONCURRENCY_PEAK=1\n");
    assert_eq!(config.endpoints.len(), 2);
    assert_eq!(
        warnings,
        vec!["t.properties:1: ENDPOINTS: http://a:80 is listed more than once"]
    );
}

#[test]
fn custom_headers() {
    let c = config_with(
        "CUSTOM_RESPONSE_HEADERS=Strict-Transport-Security:max-age=31536000|Server:sq v1.0",
    );
    assert_eq!(
        c.custom_response_headers,
        vec![
            (
                "Strict-Transport-Security".to_string(),
                "max-age=31536000".to_string()
            ),
            ("Server".to_string(), "sq v1.0".to_string()),
        ]
    );
    let c = config_with("CUSTOM_RESPONSE_HEADERS= X-A : 1 | Server |X-Empty:| X-Tab: a\tb ");
    let version = format!("serviceq/{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        c.custom_response_headers,
        vec![
            ("X-A".to_string(), "1".to_string()),
            ("Server".to_string(), version),
            ("X-Empty".to_string(), String::new()),
            ("X-Tab".to_string(), "a\tb".to_string()),
        ]
    );
    let c = config_with("CUSTOM_REQUEST_HEADERS=X-Env: prod|X-Env: eu|X-Url: http://x:1/a");
    assert_eq!(c.custom_request_headers.len(), 3);
    assert_eq!(c.custom_request_headers[2].1, "http://x:1/a");
    assert!(config_with("CUSTOM_REQUEST_HEADERS=")
        .custom_request_headers
        .is_empty());
}

#[test]
fn custom_header_errors() {
    let cases = [
        (
            "CUSTOM_RESPONSE_HEADERS=X-A: 1|X-B",
            "header \"X-B\": expected Name: value",
        ),
        ("CUSTOM_RESPONSE_HEADERS=X-A: 1||X-B: 2", "empty entry #2"),
        ("CUSTOM_RESPONSE_HEADERS=X-A: 1|", "empty entry #2"),
        ("CUSTOM_RESPONSE_HEADERS=|X-A: 1", "empty entry #1"),
        (
            "CUSTOM_RESPONSE_HEADERS=X A: 1",
            "\"X A\" is not a valid header name",
        ),
        (
            "CUSTOM_RESPONSE_HEADERS=: 1",
            "\"\" is not a valid header name",
        ),
        (
            "CUSTOM_RESPONSE_HEADERS=X-(A): 1",
            "is not a valid header name",
        ),
        (
            "CUSTOM_RESPONSE_HEADERS=X-Ä: 1",
            "is not a valid header name",
        ),
        (
            "CUSTOM_REQUEST_HEADERS=X-A: a\u{7f}b",
            "the value contains a control character",
        ),
        ("CUSTOM_REQUEST_HEADERS=X-A: a\u{1}b", "control character"),
        ("CUSTOM_REQUEST_HEADERS=X-A: a\rb", "control character"),
        (
            "CUSTOM_RESPONSE_HEADERS=Content-Length: 5",
            "Content-Length is set by ServiceQ itself",
        ),
        (
            "CUSTOM_RESPONSE_HEADERS=transfer-encoding: chunked",
            "is set by ServiceQ itself",
        ),
        (
            "CUSTOM_REQUEST_HEADERS=Connection: close",
            "is set by ServiceQ itself",
        ),
        (
            "CUSTOM_REQUEST_HEADERS=Host: example.com",
            "Host is set by ServiceQ itself",
        ),
    ];
    for (line, want) in cases {
        let e = parse_err(&format!("{BASE}{line}\n"));
        assert_eq!(e.line, Some(3), "{line}");
        assert!(e.to_string().contains(want), "{line}: {e} lacks {want:?}");
    }
    // Host is only reserved on the request side.
    config_with("CUSTOM_RESPONSE_HEADERS=Host: fine");
}

#[test]
fn request_formats_and_alias() {
    let c = config_with("DEFERRED_Q_REQUEST_FORMATS=POST /orders !,POST,PUT /orders,PATCH,DELETE");
    assert!(c.request_formats.is_eligible("POST", "/users"));
    assert!(!c.request_formats.is_eligible("POST", "/orders"));
    let c = config_with("Q_REQUEST_FORMATS=PUT");
    assert!(c.request_formats.is_eligible("PUT", "/"));
    assert!(!c.request_formats.is_eligible("POST", "/"));
    // An error in the alias names the alias.
    let e = parse_err(&format!("{BASE}Q_REQUEST_FORMATS=put\n"));
    assert!(
        e.to_string()
            .starts_with("t.properties:3: Q_REQUEST_FORMATS: malformed rule"),
        "{e}"
    );
    // Both given: the canonical key wins wherever it is, with a warning.
    let (c, warnings) = parse_ok(&format!(
        "{BASE}DEFERRED_Q_REQUEST_FORMATS=PATCH\nQ_REQUEST_FORMATS=PUT\n"
    ));
    assert!(c.request_formats.is_eligible("PATCH", "/"));
    assert!(!c.request_formats.is_eligible("PUT", "/"));
    assert_eq!(
        warnings,
        vec!["t.properties:4: Q_REQUEST_FORMATS: ignored: DEFERRED_Q_REQUEST_FORMATS (line 3) is also given and wins"]
    );
}

#[test]
fn tls_settings() {
    let e = parse_err(&format!("{BASE}SSL_ENABLE=true\n"));
    assert_eq!(
        e.to_string(),
        "t.properties: SSL_CERTIFICATE_FILE: missing (required when SSL_ENABLE=true)"
    );
    let e = parse_err(&format!(
        "{BASE}SSL_ENABLE=true\nSSL_CERTIFICATE_FILE=c.pem\nSSL_PRIVATE_KEY_FILE=\n"
    ));
    assert_eq!(
        e.to_string(),
        "t.properties:5: SSL_PRIVATE_KEY_FILE: missing (required when SSL_ENABLE=true)"
    );
    let c = config_with(
        "SSL_ENABLE=TRUE\nSSL_CERTIFICATE_FILE=certs/c.pem\nSSL_PRIVATE_KEY_FILE=/k.pem",
    );
    assert_eq!(c.ssl_certificate_file, Some(PathBuf::from("certs/c.pem")));
    assert_eq!(c.ssl_private_key_file, Some(PathBuf::from("/k.pem")));
}

#[test]
fn tls_warnings() {
    let (c, warnings) = parse_ok(&format!("{BASE}SSL_UPSTREAM_VERIFY=false\n"));
    assert!(!c.ssl_upstream_verify);
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].starts_with("t.properties:3: SSL_UPSTREAM_VERIFY: INSECURE: certificates of https:// endpoints are NOT verified"),
        "{warnings:?}"
    );
    let (_, warnings) = parse_ok(&format!("{BASE}SSL_CERTIFICATE_FILE=c.pem\n"));
    assert_eq!(
        warnings,
        vec!["t.properties:3: SSL_CERTIFICATE_FILE: ignored because SSL_ENABLE is false"]
    );
}

#[test]
fn load_reports_unreadable_files() {
    let missing = Path::new("/nonexistent/sq.properties");
    let e = load(missing).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/nonexistent/sq.properties: cannot read: No such file or directory (os error 2)"
    );
    assert_eq!((e.line, e.key), (None, None));
    let e = load(Path::new("/")).unwrap_err();
    assert!(e.to_string().starts_with("/: cannot read: "), "{e}");
}

#[test]
fn load_reads_a_file() {
    let path =
        std::env::temp_dir().join(format!("sq-config-test-{}.properties", std::process::id()));
    std::fs::write(&path, BASE).unwrap();
    let loaded = load(&path);
    std::fs::remove_file(&path).unwrap();
    let (config, warnings) = loaded.unwrap();
    assert_eq!(config.source, path);
    assert!(warnings.is_empty());
}

#[test]
fn oversized_input_is_refused() {
    let huge = std::io::repeat(b'#').take(FILE_BYTES_MAX + 10);
    let e = parse_reader(huge, Path::new(FILE)).unwrap_err();
    assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
}

#[test]
fn long_values_are_quoted_with_a_cap() {
    let long = "x".repeat(500);
    let e = parse_err(&format!("{BASE}LISTENER_PORT={long}\n"));
    assert!(e.to_string().len() < 200, "{e}");
    assert!(e.to_string().ends_with("..."), "{e}");
}

const EXAMPLE: &str = include_str!("../../conf/sq.properties");

#[test]
fn example_file_parses_without_warnings() {
    let (config, warnings) =
        parse_reader(EXAMPLE.as_bytes(), Path::new("conf/sq.properties")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.listener_port, 5252);
    assert_eq!(
        config.listener_address,
        "127.0.0.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(config.concurrency_peak, 512);
    assert_eq!(config.endpoints.len(), 2);
    assert_eq!(config.max_retries, 5);
    assert_eq!(
        config.error_log_file,
        PathBuf::from("logs/serviceq_error.log")
    );
}

/// DEFERRED_Q_BACKEND defaults from DEFERRED_Q_DIR, takes the shared queue's URL,
/// and must agree with DEFERRED_Q_DIR when both are given.
#[test]
fn queue_backend_and_shared_queue_keys() {
    assert_eq!(config_with("").deferred_q_backend, QueueBackend::Memory);
    let journal = config_with("DEFERRED_Q_DIR=q");
    assert_eq!(journal.deferred_q_backend, QueueBackend::Journal);
    let url = "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/sq";
    let shared = config_with(&format!(
        "DEFERRED_Q_BACKEND={url}\nDEFERRED_Q_NAME=orders\nDEFERRED_Q_REDIS_REPLICAS=1\n\
         DEFERRED_Q_REDIS_TIMEOUT=0.5\nDEFERRED_Q_REDIS_LEASE=3\nDEFERRED_Q_MAX_LEN=10"
    ));
    assert_eq!(shared.deferred_q_backend, QueueBackend::Redis(url.into()));
    assert_eq!(
        (
            shared.deferred_q_name.as_str(),
            shared.deferred_q_redis_replicas,
            shared.deferred_q_redis_timeout,
            shared.deferred_q_redis_lease,
            shared.deferred_q_max_len
        ),
        ("orders", 1, secs(0.5), secs(3.0), 10)
    );
    for (extra, key, says) in [
        (
            "DEFERRED_Q_BACKEND=journal",
            "DEFERRED_Q_BACKEND",
            "needs DEFERRED_Q_DIR",
        ),
        (
            "DEFERRED_Q_BACKEND=memory\nDEFERRED_Q_DIR=q",
            "DEFERRED_Q_DIR",
            "not journal",
        ),
        (
            "DEFERRED_Q_BACKEND=kafka",
            "DEFERRED_Q_BACKEND",
            "expected memory",
        ),
        (
            "DEFERRED_Q_BACKEND=redis://u:secret@h:port",
            "DEFERRED_Q_BACKEND",
            "u:***@h",
        ),
        ("DEFERRED_Q_NAME=a{b}", "DEFERRED_Q_NAME", "without spaces"),
        (
            "DEFERRED_Q_REDIS_LEASE=0.05",
            "DEFERRED_Q_REDIS_LEASE",
            "at least 0.1",
        ),
        (
            "DEFERRED_Q_REDIS_TIMEOUT=0",
            "DEFERRED_Q_REDIS_TIMEOUT",
            "greater than 0",
        ),
        ("DEFERRED_Q_MAX_LEN=0", "DEFERRED_Q_MAX_LEN", "from 1"),
    ] {
        let e = parse_err(&format!("{BASE}{extra}\n")).to_string();
        assert!(e.contains(key) && e.contains(says), "{extra}: {e}");
        assert!(!e.contains("secret"), "{e}");
    }
}

/// The example is the documentation: every key appears, set or commented out.
#[test]
fn example_file_documents_every_key() {
    for key in KEYS.iter().filter(|&&k| k != FORMATS_ALIAS) {
        let set = EXAMPLE.lines().any(|l| l.starts_with(&format!("{key}=")));
        let shown = EXAMPLE.lines().any(|l| l.starts_with(&format!("#{key}=")));
        assert!(set || shown, "conf/sq.properties does not show {key}");
    }
    assert!(EXAMPLE.contains(FORMATS_ALIAS));
}

/// Each commented-out default in the example, once uncommented, parses to the
/// built-in default, so the documentation cannot drift from the code. Keys that are
/// unset by default show an example value instead and are skipped.
#[test]
fn example_commented_defaults_match_the_code() {
    const UNSET_BY_DEFAULT: [&str; 8] = [
        "ADMIN_TOKEN_FILE",
        "SSL_CERTIFICATE_FILE",
        "SSL_AUTO_DOMAINS",
        "SSL_AUTO_CA_FILE",
        "SSL_PRIVATE_KEY_FILE",
        "SSL_UPSTREAM_CA_FILE",
        "DEFERRED_Q_DIR",
        "ACCESS_LOG_FILE",
    ];
    let shows_default = |setting: &str| {
        let key = setting.split('=').next().unwrap_or_default();
        KEYS.contains(&key) && !UNSET_BY_DEFAULT.contains(&key)
    };
    let uncommented: String = EXAMPLE
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(setting) if shows_default(setting) => format!("{setting}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    assert_ne!(uncommented, EXAMPLE);
    let (defaults, _) = parse_reader(EXAMPLE.as_bytes(), Path::new("x")).unwrap();
    let (c, warnings) = parse_reader(uncommented.as_bytes(), Path::new("x")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(format!("{c:?}"), format!("{defaults:?}"));
}

/// No input panics: every prefix of the example, and every one with a byte flipped
/// at the cut, parses or fails cleanly.
#[test]
fn truncated_or_corrupted_input_never_panics() {
    let bytes = EXAMPLE.as_bytes();
    for cut in 0..bytes.len() {
        let _ = parse_reader(&bytes[..cut], Path::new(FILE));
        let mut corrupted = bytes.to_vec();
        corrupted[cut] ^= 0x80;
        let _ = parse_reader(corrupted.as_slice(), Path::new(FILE));
    }
}
