//! Observability (SPEC §11, README "Observability"): `/metrics` checked with a real
//! Prometheus parser and against a scripted sequence of requests, the `/status` page
//! rendered by headless Chromium, the access log format field by field, and the admin
//! listener's 404s and independence from the client workers.
//!
//! External tools: `python3` with `prometheus_client`, `promtool` (used only when
//! present) and `chromium`; `.ci/run` installs them. A test whose tool is missing fails
//! when env `CI` is set, and otherwise says SKIP on stderr and passes (`require`).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::*;

// ---------------------------------------------------------------------------------------
// The admin listener
// ---------------------------------------------------------------------------------------

fn admin_get(admin: SocketAddr, path: &str) -> Response {
    get(admin, path)
}

// ---------------------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------------------

/// One sample line of the exposition.
#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` body.
struct Exposition {
    text: String,
    samples: Vec<Sample>,
}

impl Exposition {
    fn fetch(admin: SocketAddr) -> Exposition {
        let r = admin_get(admin, "/metrics");
        assert_eq!(r.status, 200, "{}{}", r.raw_head, r.body_str());
        let text = r.body_str();
        match strict_check(&text) {
            Ok(samples) => Exposition { text, samples },
            Err(e) => panic!("/metrics is not valid Prometheus text: {e}\n{text}"),
        }
    }

    /// The sample with exactly these labels.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{}", self.text))
    }

    fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let v = self.get(name, labels);
        assert!(
            v >= 0.0 && v.fract() == 0.0,
            "{name}{labels:?} = {v} is not a count"
        );
        v as u64
    }

    /// Sum of a family's samples whose labels include these.
    fn sum_where(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.starts_with("__")
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

/// `{a="x",b="y"}` (already without the braces) → labels; values unescaped.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or(format!("label without `=` in {s:?}"))?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or(format!("label value not quoted in {s:?}"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value in {s:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some((_, '\n')) => return Err(format!("raw newline in label value {s:?}")),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice in {s:?}"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.is_empty() {
            return Err(format!("junk after a label value in {s:?}"));
        }
    }
    Ok(labels)
}

/// The family a sample belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return Some(base);
            }
        }
    }
    None
}

/// The Prometheus text format 0.0.4, strictly: every line a comment or a sample, each
/// family's HELP/TYPE once and before its samples, every sample in a declared family,
/// no duplicate series, counters non-negative, histograms cumulative with a final
/// `+Inf` bucket equal to `_count`.
fn strict_check(text: &str) -> Result<Vec<Sample>, String> {
    if !text.ends_with('\n') {
        return Err("the body does not end with a newline".into());
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, ()> = BTreeMap::new();
    let mut seen_samples_of: BTreeMap<String, ()> = BTreeMap::new();
    let mut series: BTreeMap<String, ()> = BTreeMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(format!("{at}: empty line"));
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !valid_metric_name(name) || helps.insert(name.to_string(), ()).is_some() {
                return Err(format!("{at}: bad or repeated HELP"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if parts.next().is_some()
                || !valid_metric_name(name)
                || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
            {
                return Err(format!("{at}: bad TYPE line"));
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(format!("{at}: TYPE repeated"));
            }
            if seen_samples_of.contains_key(name) {
                return Err(format!("{at}: TYPE after the family's samples"));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name_labels, value) = line.rsplit_once(' ').ok_or(format!("{at}: no value"))?;
        let value = parse_value(value).ok_or(format!("{at}: bad value"))?;
        let (name, labels) = match name_labels.split_once('{') {
            Some((n, l)) => (
                n,
                parse_labels(
                    l.strip_suffix('}')
                        .ok_or(format!("{at}: labels not closed"))?,
                )
                .map_err(|e| format!("{at}: {e}"))?,
            ),
            None => (name_labels, BTreeMap::new()),
        };
        if !valid_metric_name(name) {
            return Err(format!("{at}: bad metric name"));
        }
        let family = family_of(name, &types).ok_or(format!("{at}: no TYPE for this sample"))?;
        seen_samples_of.insert(family.to_string(), ());
        if types[family] == "counter" && (value.is_nan() || value < 0.0) {
            return Err(format!("{at}: negative counter"));
        }
        if series.insert(format!("{name}{labels:?}"), ()).is_some() {
            return Err(format!("{at}: duplicate series"));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let buckets: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
            .collect();
        let les: Vec<f64> = buckets
            .iter()
            .map(|s| {
                s.labels
                    .get("le")
                    .and_then(|v| parse_value(v))
                    .unwrap_or(f64::NAN)
            })
            .collect();
        if buckets.is_empty() || les.iter().any(|l| l.is_nan()) {
            return Err(format!("{family}: no buckets or a bucket without `le`"));
        }
        if les.windows(2).any(|w| w[0] >= w[1]) || *les.last().unwrap() != f64::INFINITY {
            return Err(format!("{family}: `le` not increasing up to +Inf: {les:?}"));
        }
        if buckets.windows(2).any(|w| w[0].value > w[1].value) {
            return Err(format!("{family}: buckets not cumulative"));
        }
        let count = samples
            .iter()
            .find(|s| s.name == format!("{family}_count"))
            .ok_or(format!("{family}: no _count"))?;
        if !samples.iter().any(|s| s.name == format!("{family}_sum")) {
            return Err(format!("{family}: no _sum"));
        }
        if buckets.last().unwrap().value != count.value {
            return Err(format!("{family}: +Inf bucket != _count"));
        }
    }
    Ok(samples)
}

/// Parser run by python3: one `F name type` line per family and one
/// `S name value labels` line per sample.
const PY_PARSE: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
text = sys.stdin.read()
for fam in text_string_to_metric_families(text):
    print("F\t%s\t%s" % (fam.name, fam.type))
    for s in fam.samples:
        labels = ",".join("%s=%s" % (k, v) for k, v in sorted(s.labels.items()))
        print("S\t%s\t%r\t%s" % (s.name, s.value, labels))
"#;

fn python_has_prometheus_client() -> bool {
    Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs `cmd` with `input` on its stdin and collects its output.
fn pipe_through(mut cmd: Command, input: &str) -> std::io::Result<std::process::Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())?;
    child.wait_with_output()
}

/// Parses `text` with prometheus_client; returns (families with their type, number of
/// samples), or panics with the parser's error.
fn python_parse(text: &str) -> (BTreeMap<String, String>, usize) {
    let mut python = Command::new("python3");
    python.args(["-c", PY_PARSE]);
    let out = pipe_through(python, text).expect("run python3");
    assert!(
        out.status.success(),
        "prometheus_client rejected /metrics:\n{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut families = BTreeMap::new();
    let mut samples = 0;
    for line in stdout.lines() {
        let parts: Vec<&str> = line.split('\t').collect();
        match parts[0] {
            "F" => {
                families.insert(parts[1].to_string(), parts[2].to_string());
            }
            "S" => samples += 1,
            _ => panic!("unexpected parser output {line:?}"),
        }
    }
    (families, samples)
}

/// `promtool check metrics`, when promtool is installed; silent otherwise.
fn promtool_check(text: &str) {
    let mut promtool = Command::new("promtool");
    promtool.args(["check", "metrics"]);
    let out = match pipe_through(promtool, text) {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => panic!("run promtool: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks `text` with prometheus_client (and promtool): every family typed as the
/// TYPE line says, and as many samples as the strict parser found.
fn check_with_real_parsers(m: &Exposition) -> bool {
    promtool_check(&m.text);
    if !require(
        "python3 with prometheus_client",
        python_has_prometheus_client(),
    ) {
        return false;
    }
    let (families, samples) = python_parse(&m.text);
    assert_eq!(
        samples,
        m.samples.len(),
        "prometheus_client saw a different number of samples\n{}",
        m.text
    );
    for (name, kind) in &families {
        assert_ne!(kind, "unknown", "family {name} has no TYPE\n{}", m.text);
    }
    let expected = [
        ("serviceq_responses", "counter"),
        ("serviceq_generated_responses", "counter"),
        ("serviceq_flooded", "counter"),
        ("serviceq_connections", "counter"),
        ("serviceq_connections_active", "gauge"),
        ("serviceq_workers", "gauge"),
        ("serviceq_workers_busy", "gauge"),
        ("serviceq_requests_held", "gauge"),
        ("serviceq_queue_depth", "gauge"),
        ("serviceq_queued", "counter"),
        ("serviceq_replayed", "counter"),
        ("serviceq_dead_lettered", "counter"),
        ("serviceq_access_log_dropped", "counter"),
        ("serviceq_uptime_seconds", "gauge"),
        ("serviceq_upstream_attempts", "counter"),
        ("serviceq_upstream_failures", "counter"),
        ("serviceq_upstream_error_count", "gauge"),
        ("serviceq_upstream_pool_idle", "gauge"),
        ("serviceq_upstream_duration_seconds", "histogram"),
        ("serviceq_request_duration_seconds", "histogram"),
    ];
    for (name, kind) in expected {
        assert_eq!(
            families.get(name).map(String::as_str),
            Some(kind),
            "family {name} as prometheus_client reads it; families: {families:?}"
        );
    }
    true
}

#[test]
fn metrics_parse_as_prometheus_text_with_a_real_parser() {
    let u = Upstream::start(Behaviour::Ok);
    let down = refusing_url();
    let (sq, admin) = start_with_admin(Conf::new(&[u.url(), down.clone()]));
    for i in 0..6 {
        assert_eq!(get(sq.addr(), &format!("/p{i}")).status, 200);
    }
    // A generated response too (400), so that both kinds of counters move.
    let r = request(
        sq.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    let m = Exposition::fetch(admin);
    assert!(
        m.find(
            "serviceq_upstream_attempts_total",
            &[("endpoint", &u.url())]
        )
        .is_some()
            && m.find("serviceq_upstream_attempts_total", &[("endpoint", &down)])
                .is_some(),
        "both endpoints should have samples\n{}",
        m.text
    );
    check_with_real_parsers(&m);
}

// ---------------------------------------------------------------------------------------
// Counters after a scripted sequence
// ---------------------------------------------------------------------------------------

/// Error-log lines for this endpoint and code.
fn log_lines_for(sq: &ServiceQ, endpoint: &str, code: u32, name: &str) -> usize {
    sq.error_log_lines()
        .iter()
        .filter(|l| is_log_line(l, endpoint, code, name))
        .count()
}

const FAILURE_NAMES: [&str; 4] = [
    "UPSTREAM_DOWN",
    "UPSTREAM_TIMED_OUT",
    "UPSTREAM_NO_RESPONSE",
    "UPSTREAM_BAD_RESPONSE",
];

/// Each endpoint's failure counters agree with its error-log lines, and only
/// UPSTREAM_DOWN moved (the cluster's failures here are all refused connections).
fn check_failures_match_error_log(sq: &ServiceQ, admin: SocketAddr, endpoints: &[&str]) {
    let agree = wait_until(Duration::from_secs(5), || {
        let m = Exposition::fetch(admin);
        endpoints.iter().all(|ep| {
            m.count(
                "serviceq_upstream_failures_total",
                &[("endpoint", ep), ("code", "UPSTREAM_DOWN")],
            ) as usize
                == log_lines_for(sq, ep, 701, "UPSTREAM_DOWN")
        })
    });
    let m = Exposition::fetch(admin);
    assert!(
        agree,
        "serviceq_upstream_failures_total{{code=UPSTREAM_DOWN}} should equal the 701 lines \
         of the error log\n{}\n--- error log ---\n{}",
        m.text,
        sq.error_log()
    );
    for ep in endpoints {
        for code in &FAILURE_NAMES[1..] {
            assert_eq!(
                m.count(
                    "serviceq_upstream_failures_total",
                    &[("endpoint", ep), ("code", code)]
                ),
                0,
                "{ep} {code}: only refused connections happened\n{}",
                m.text
            );
        }
    }
}

#[test]
fn counters_follow_a_scripted_sequence() {
    let mut a = Upstream::start(Behaviour::Echo);
    let b = refusing_url();
    let (sq, admin) = start_with_admin(
        Conf::new(&[a.url(), b.clone()])
            .set("CONCURRENCY_PEAK", "2")
            .set("ENABLE_DEFERRED_Q", "true")
            .set("OUTGOING_REQUEST_TIMEOUT", "10"),
    );
    let a_url = a.url();
    let (a_l, b_l) = ([("endpoint", a_url.as_str())], [("endpoint", b.as_str())]);

    // Nothing yet.
    let m = Exposition::fetch(admin);
    for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
        assert_eq!(m.count("serviceq_responses_total", &[("class", class)]), 0);
    }
    assert_eq!(m.count("serviceq_workers", &[]), 2);
    assert_eq!(m.count("serviceq_request_duration_seconds_count", &[]), 0);

    // 1. N successful requests: each is 200 from A; B (refusing) may have been tried
    //    first and failed over.
    const N: u64 = 10;
    for i in 0..N {
        let r = get(sq.addr(), &format!("/ok-{i}"));
        assert_eq!(r.status, 200, "{}{}", r.raw_head, r.body_str());
    }
    let m = Exposition::fetch(admin);
    assert_eq!(m.count("serviceq_responses_total", &[("class", "2xx")]), N);
    assert_eq!(m.count("serviceq_upstream_attempts_total", &a_l), N);
    assert_eq!(m.count("serviceq_upstream_error_count", &a_l), 0);
    let b_attempts = m.count("serviceq_upstream_attempts_total", &b_l);
    assert_eq!(
        m.count(
            "serviceq_upstream_failures_total",
            &[("endpoint", &b), ("code", "UPSTREAM_DOWN")]
        ),
        b_attempts,
        "every attempt on the refusing endpoint is an UPSTREAM_DOWN failure\n{}",
        m.text
    );
    assert_eq!(
        m.count("serviceq_upstream_error_count", &b_l),
        b_attempts,
        "B never succeeds, so its error count is its failure total\n{}",
        m.text
    );
    assert_eq!(m.count("serviceq_request_duration_seconds_count", &[]), N);
    assert_eq!(m.count("serviceq_upstream_duration_seconds_count", &[]), N);
    assert_eq!(
        m.sum_where("serviceq_generated_responses_total", &[]),
        0.0,
        "{}",
        m.text
    );
    check_failures_match_error_log(&sq, admin, &[&a_url, &b]);

    // 2. A 429: both workers (CONCURRENCY_PEAK=2) busy on slow requests.
    a.script(vec![
        Behaviour::Slow(Duration::from_secs(3)),
        Behaviour::Slow(Duration::from_secs(3)),
    ]);
    let addr = sq.addr();
    let slow: Vec<_> = (0..2)
        .map(|i| thread::spawn(move || get(addr, &format!("/slow-{i}"))))
        .collect();
    assert!(
        a.wait_requests(N as usize + 2, Duration::from_secs(5)),
        "the slow requests did not reach A"
    );
    let m = Exposition::fetch(admin);
    assert_eq!(m.count("serviceq_workers_busy", &[]), 2, "{}", m.text);
    assert_eq!(m.count("serviceq_requests_held", &[]), 2, "{}", m.text);
    let r = get(sq.addr(), "/flood");
    assert_sq_response(&r, 429, "Request Discarded", &[]);
    for h in slow {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}{}", r.raw_head, r.body_str());
    }
    let m = Exposition::fetch(admin);
    assert_eq!(m.count("serviceq_flooded_total", &[]), 1, "{}", m.text);
    assert_eq!(
        m.count(
            "serviceq_generated_responses_total",
            &[("status", "429"), ("sq_msg", "Request Discarded")]
        ),
        1
    );
    assert_eq!(m.count("serviceq_responses_total", &[("class", "4xx")]), 1);
    assert_eq!(
        m.count("serviceq_responses_total", &[("class", "2xx")]),
        N + 2
    );
    let flood_label = format!("serviceq:{}", sq.port());
    assert!(
        sq.wait_for_error_log(Duration::from_secs(5), |l| l
            .iter()
            .filter(|l| is_log_line(l, &flood_label, 601, "SERVICEQ_FLOODED"))
            .count()
            == 1),
        "one 601 line expected:\n{}",
        sq.error_log()
    );

    // 3. The cluster goes down: a request is buffered in the deferred queue, then
    //    replayed when A comes back.
    a.stop();
    let r = request(
        sq.addr(),
        b"POST /buffered HTTP/1.1\r\nHost: x\r\nX-Request-Id: obs-buffered-1\r\nContent-Length: 7\r\n\r\npayload",
    );
    assert_sq_response(&r, 503, "Request Buffered", &[]);
    let m = Exposition::fetch(admin);
    assert_eq!(
        m.count(
            "serviceq_generated_responses_total",
            &[("status", "503"), ("sq_msg", "Request Buffered")]
        ),
        1,
        "{}",
        m.text
    );
    assert_eq!(m.count("serviceq_queued_total", &[]), 1, "{}", m.text);
    assert_eq!(m.count("serviceq_queue_depth", &[]), 1, "{}", m.text);
    assert_eq!(m.count("serviceq_replayed_total", &[]), 0, "{}", m.text);
    assert_eq!(
        m.count("serviceq_requests_held", &[]),
        1,
        "a queued request holds a slot\n{}",
        m.text
    );
    assert_eq!(m.count("serviceq_responses_total", &[("class", "5xx")]), 1);
    assert!(
        m.count("serviceq_upstream_error_count", &a_l) > 0,
        "A is down and was tried\n{}",
        m.text
    );
    a.restart();
    let drained = wait_until(Duration::from_secs(15), || {
        Exposition::fetch(admin).count("serviceq_queue_depth", &[]) == 0
    });
    let m = Exposition::fetch(admin);
    assert!(
        drained,
        "the queue did not drain after A came back\n{}",
        m.text
    );
    assert_eq!(m.count("serviceq_replayed_total", &[]), 1, "{}", m.text);
    assert_eq!(m.count("serviceq_queued_total", &[]), 1);
    assert_eq!(m.count("serviceq_dead_lettered_total", &[]), 0);
    assert_eq!(m.count("serviceq_requests_held", &[]), 0, "{}", m.text);
    let replayed: Vec<Recorded> = a
        .requests()
        .into_iter()
        .filter(|r| r.target == "/buffered")
        .collect();
    assert_eq!(replayed.len(), 1, "A should get the buffered request once");
    assert_eq!(replayed[0].body_str(), "payload");
    assert_eq!(replayed[0].header("x-request-id"), Some("obs-buffered-1"));

    // Totals over the whole sequence.
    let a_failures = m.sum_where("serviceq_upstream_failures_total", &a_l) as u64;
    let b_failures = m.sum_where("serviceq_upstream_failures_total", &b_l) as u64;
    assert_eq!(
        m.count("serviceq_upstream_attempts_total", &a_l),
        N + 2 + 1 + a_failures,
        "A's attempts: {N} + 2 slow + 1 replay successes, plus its failures\n{}",
        m.text
    );
    assert_eq!(
        m.count("serviceq_upstream_attempts_total", &b_l),
        b_failures
    );
    assert_eq!(
        m.count("serviceq_upstream_error_count", &a_l),
        0,
        "the replay's success resets A's error count\n{}",
        m.text
    );
    assert_eq!(m.count("serviceq_upstream_error_count", &b_l), b_failures);
    check_failures_match_error_log(&sq, admin, &[&a_url, &b]);

    // Responses by class: N + 2 relayed 200s, one 429, one 503.
    let classes: Vec<u64> = ["1xx", "2xx", "3xx", "4xx", "5xx"]
        .iter()
        .map(|c| m.count("serviceq_responses_total", &[("class", c)]))
        .collect();
    assert_eq!(classes, vec![0, N + 2, 0, 1, 1], "{}", m.text);
    assert_eq!(
        m.sum_where("serviceq_generated_responses_total", &[]) as u64,
        2,
        "exactly one 429 and one 503 were generated\n{}",
        m.text
    );

    // Histograms: the request histogram counts every request a worker read (the 429 was
    // answered by the acceptor before any request head was read), the upstream one every
    // relayed response. The two slow requests (3 s) sit above the 2.5 s bucket.
    let requests = N + 2 + 1;
    assert_eq!(
        m.count("serviceq_request_duration_seconds_count", &[]),
        requests,
        "{}",
        m.text
    );
    assert_eq!(
        m.count(
            "serviceq_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        requests
    );
    assert_eq!(
        m.count("serviceq_request_duration_seconds_bucket", &[("le", "2.5")]),
        requests - 2,
        "{}",
        m.text
    );
    assert_eq!(
        m.count("serviceq_upstream_duration_seconds_count", &[]),
        N + 2,
        "{}",
        m.text
    );
    assert_eq!(
        m.count(
            "serviceq_upstream_duration_seconds_bucket",
            &[("le", "2.5")]
        ),
        N,
        "{}",
        m.text
    );
    assert!(m.get("serviceq_request_duration_seconds_sum", &[]) >= 6.0);
    assert!(m.get("serviceq_upstream_duration_seconds_sum", &[]) >= 6.0);

    // Client connections that reached a worker: N + 2 + 1 (the 429 did not).
    assert_eq!(m.count("serviceq_connections_total", &[]), requests);
    assert!(
        wait_until(Duration::from_secs(5), || Exposition::fetch(admin)
            .count("serviceq_connections_active", &[])
            == 0),
        "connections_active should fall back to 0"
    );
    assert_eq!(m.count("serviceq_access_log_dropped_total", &[]), 0);
    assert_eq!(admin_get(admin, "/healthz").status, 200);
    check_with_real_parsers(&m);
}

// ---------------------------------------------------------------------------------------
// The status page in a real browser
// ---------------------------------------------------------------------------------------

fn chromium_path() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Runs headless Chromium with these extra arguments (a fresh profile), killing it
/// after a minute; returns its stdout.
fn chromium(bin: &Path, extra: &[String]) -> String {
    let profile = TempDir::new("chromium");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap();
    let err = err_reader.join().unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "chromium {extra:?} failed ({status:?}):\n{err}"
    );
    out
}

/// The `<tr>` element (as Chromium serialised it) whose first cell is `label`.
fn row_for<'a>(dom: &'a str, label: &str) -> Option<&'a str> {
    let cell = format!("<td>{label}</td>");
    let at = dom.find(&cell)?;
    let start = dom[..at].rfind("<tr")?;
    let end = at + dom[at..].find("</tr>")?;
    Some(&dom[start..end])
}

#[test]
fn status_page_renders_in_headless_chromium() {
    let bin = chromium_path();
    if !require("chromium", bin.is_some()) {
        return;
    }
    let Some(bin) = bin else { return };
    let up = Upstream::start(Behaviour::Ok);
    let down = refusing_url();
    let (sq, admin) =
        start_with_admin(Conf::new(&[up.url(), down.clone()]).set("CONCURRENCY_PEAK", "4"));
    // Make sure the refusing endpoint was tried (and failed) at least once.
    let tried = wait_until(Duration::from_secs(10), || {
        assert_eq!(get(sq.addr(), "/").status, 200);
        log_lines_for(&sq, &down, 701, "UPSTREAM_DOWN") > 0
    });
    assert!(tried, "the refusing endpoint was never tried");

    let url = format!("http://{admin}/status");
    let dom = chromium(&bin, &["--dump-dom".to_string(), url.clone()]);
    assert!(dom.contains("<title>ServiceQ status</title>"), "{dom}");
    assert!(
        dom.contains(&format!("version {VERSION}")),
        "the version should be on the page:\n{dom}"
    );
    let table_at = dom.find("id=\"endpoints\"").expect("endpoint table");
    let up_row = row_for(&dom[table_at..], &up.url())
        .unwrap_or_else(|| panic!("no row for {} in\n{dom}", up.url()));
    assert!(
        up_row.contains("class=\"up\"") && up_row.contains("healthy"),
        "{up_row}"
    );
    let down_row =
        row_for(&dom[table_at..], &down).unwrap_or_else(|| panic!("no row for {down} in\n{dom}"));
    assert!(
        down_row.contains("class=\"down\"") && down_row.contains("failing"),
        "{down_row}"
    );
    let svg_at = dom
        .find("<svg id=\"queue-chart\"")
        .unwrap_or_else(|| panic!("no queue chart svg in\n{dom}"));
    let svg = &dom[svg_at..svg_at + dom[svg_at..].find("</svg>").expect("</svg>")];
    let points_at = svg
        .find("<polyline")
        .and_then(|p| svg[p..].find("points=\"").map(|q| p + q + 8))
        .unwrap_or_else(|| panic!("no polyline with points in the chart: {svg}"));
    let points = &svg[points_at..points_at + svg[points_at..].find('"').unwrap()];
    assert!(
        !points.trim().is_empty()
            && points.split(' ').all(|p| p
                .split_once(',')
                .is_some_and(|(x, y)| x.parse::<f64>().is_ok() && y.parse::<f64>().is_ok())),
        "polyline points {points:?}"
    );

    // A screenshot of the page: a PNG of the requested size.
    let shots = TempDir::new("shot");
    let png = shots.join("status.png");
    chromium(
        &bin,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1200,900".to_string(),
            "--hide-scrollbars".to_string(),
            url,
        ],
    );
    let bytes = fs::read(&png).expect("chromium wrote no screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1200, 900));
}

// ---------------------------------------------------------------------------------------
// Access log
// ---------------------------------------------------------------------------------------

/// One access-log line, split into its documented fields.
#[derive(Debug)]
struct AccessLine {
    client: String,
    stamp: String,
    method: String,
    target: String,
    version: String,
    status: u16,
    bytes: u64,
    referer: String,
    user_agent: String,
    upstream: String,
    attempts: u32,
    upstream_time: String,
    request_time: String,
    queued: String,
    id: String,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Client text as the README says it is logged: printable ASCII, with `"`, `\`,
/// control and non-ASCII bytes as `\xHH`.
fn check_escaped(field: &str) -> Result<(), String> {
    let b = field.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => return Err(format!("raw quote in {field:?}")),
            b'\\' => {
                let esc = b.get(i + 1..i + 4).unwrap_or(b"");
                let ok = esc.len() == 3
                    && esc[0] == b'x'
                    && esc[1..]
                        .iter()
                        .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c));
                if !ok {
                    return Err(format!("bad escape in {field:?}"));
                }
                i += 4;
                continue;
            }
            0x20..=0x7e => {}
            other => return Err(format!("raw byte {other:#x} in {field:?}")),
        }
        i += 1;
    }
    Ok(())
}

fn is_seconds(s: &str) -> bool {
    match s.split_once('.') {
        Some((whole, frac)) => {
            !whole.is_empty()
                && whole.bytes().all(|c| c.is_ascii_digit())
                && frac.len() == 3
                && frac.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `dd/Mon/yyyy:hh:mm:ss +zzzz` → Unix seconds.
fn parse_clf_time(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    let shape = b"dd/MMM/dddd:dd:dd:dd Sdddd";
    if b.len() != shape.len() {
        return Err(format!("timestamp {s:?} has the wrong length"));
    }
    for (c, want) in b.iter().zip(shape) {
        let ok = match want {
            b'd' => c.is_ascii_digit(),
            b'M' => c.is_ascii_alphabetic(),
            b'S' => *c == b'+' || *c == b'-',
            w => c == w,
        };
        if !ok {
            return Err(format!("timestamp {s:?} is not dd/Mon/yyyy:hh:mm:ss +zzzz"));
        }
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let month = MONTHS
        .iter()
        .position(|m| *m == &s[3..6])
        .ok_or(format!("month in {s:?}"))? as i64
        + 1;
    let (day, year, hh, mm, ss) = (num(0..2), num(7..11), num(12..14), num(15..17), num(18..20));
    if !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return Err(format!("timestamp {s:?} out of range"));
    }
    let offset = (num(22..24) * 3600 + num(24..26) * 60) * if &s[21..22] == "-" { -1 } else { 1 };
    Ok(days_from_civil(year, month, day) * 86400 + hh * 3600 + mm * 60 + ss - offset)
}

/// Parses a line against
/// `CLIENT - - [dd/Mon/yyyy:hh:mm:ss +zzzz] "METHOD TARGET VERSION" STATUS BYTES "REFERER" "UA" upstream=U attempts=N upstream_time=T request_time=T queued=Q id=ID`.
fn parse_access_line(line: &str) -> Result<AccessLine, String> {
    let err = |what: &str| format!("{what} in access log line {line:?}");
    let (client, rest) = line.split_once(" - - [").ok_or(err("no ` - - [`"))?;
    client
        .parse::<std::net::IpAddr>()
        .map_err(|_| err("client is not an IP address"))?;
    let (stamp, rest) = rest.split_once("] \"").ok_or(err("no `] \"`"))?;
    let when = parse_clf_time(stamp).map_err(|e| err(&e))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if (now - when).abs() > 120 {
        return Err(err(&format!(
            "timestamp {stamp} is {}s away from now",
            now - when
        )));
    }
    let (request_line, rest) = rest.split_once("\" ").ok_or(err("request not closed"))?;
    check_escaped(request_line).map_err(|e| err(&e))?;
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(err("request is not `METHOD TARGET VERSION`"));
    };
    // `- - -`: a request refused before its head was understood.
    let refused = [method, target, version] == ["-", "-", "-"];
    if !refused && (method.is_empty() || !method.bytes().all(|c| c.is_ascii_uppercase())) {
        return Err(err("bad method"));
    }
    if !refused && version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(err("bad version"));
    }
    let (status, rest) = rest.split_once(' ').ok_or(err("no status"))?;
    if status.len() != 3 || !status.bytes().all(|c| c.is_ascii_digit()) {
        return Err(err("status is not 3 digits"));
    }
    let (bytes, rest) = rest.split_once(' ').ok_or(err("no bytes"))?;
    let bytes: u64 = bytes.parse().map_err(|_| err("bytes is not a number"))?;
    let quoted = |s: &str| -> Result<(String, String), String> {
        let s = s.strip_prefix('"').ok_or(err("field not quoted"))?;
        let end = s.find('"').ok_or(err("quoted field not closed"))?;
        check_escaped(&s[..end]).map_err(|e| err(&e))?;
        Ok((s[..end].to_string(), s[end + 1..].to_string()))
    };
    let (referer, rest) = quoted(rest)?;
    let rest = rest
        .strip_prefix(' ')
        .ok_or(err("no space after referer"))?;
    let (user_agent, rest) = quoted(rest)?;
    let rest = rest
        .strip_prefix(' ')
        .ok_or(err("no space after user agent"))?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let keys = [
        "upstream",
        "attempts",
        "upstream_time",
        "request_time",
        "queued",
        "id",
    ];
    if fields.len() != keys.len() {
        return Err(err("not exactly the six key=value fields"));
    }
    let mut values = Vec::new();
    for (f, k) in fields.iter().zip(keys) {
        let v = f
            .strip_prefix(k)
            .and_then(|v| v.strip_prefix('='))
            .ok_or(err(&format!("field {k}= expected, got {f:?}")))?;
        values.push(v.to_string());
    }
    let upstream = values[0].clone();
    if upstream != "-" && !upstream.starts_with("http://") && !upstream.starts_with("https://") {
        return Err(err("upstream is neither - nor a URL"));
    }
    let attempts: u32 = values[1].parse().map_err(|_| err("attempts"))?;
    if values[2] != "-" && !is_seconds(&values[2]) {
        return Err(err(
            "upstream_time is neither - nor seconds with 3 decimals",
        ));
    }
    if !is_seconds(&values[3]) {
        return Err(err("request_time is not seconds with 3 decimals"));
    }
    if !["-", "deferred", "upfront"].contains(&values[4].as_str()) {
        return Err(err("queued is not -, deferred or upfront"));
    }
    if values[5].is_empty() {
        return Err(err("empty id"));
    }
    check_escaped(&values[5]).map_err(|e| err(&e))?;
    Ok(AccessLine {
        client: client.to_string(),
        stamp: stamp.to_string(),
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        status: status.parse().unwrap(),
        bytes,
        referer,
        user_agent,
        upstream,
        attempts,
        upstream_time: values[2].clone(),
        request_time: values[3].clone(),
        queued: values[4].clone(),
        id: values[5].clone(),
    })
}

fn access_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits (up to `limit`) for a line containing `needle`; returns it parsed and how long
/// it took to appear.
fn wait_access_line(path: &Path, needle: &str, limit: Duration) -> (AccessLine, Duration) {
    let start = Instant::now();
    let mut found = None;
    wait_until(limit, || {
        found = access_lines(path).into_iter().find(|l| l.contains(needle));
        found.is_some()
    });
    let took = start.elapsed();
    let line = found.unwrap_or_else(|| {
        panic!(
            "no access log line with {needle:?} within {limit:?}:\n{}",
            fs::read_to_string(path).unwrap_or_default()
        )
    });
    match parse_access_line(&line) {
        Ok(l) => (l, took),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn access_log_lines_match_the_documented_format() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[u.url()])
        .set("ACCESS_LOG_FILE", "{dir}/access.log")
        .start();
    let path = sq.dir().join("access.log");

    // A plain request with every client field given.
    let r = request(
        sq.addr(),
        b"GET /fmt?b=1 HTTP/1.1\r\nHost: x\r\nReferer: http://ref.example/p\r\n\
          User-Agent: test-agent/1.0\r\nX-Request-Id: fmt-1\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let (l, took) = wait_access_line(&path, "/fmt?b=1", Duration::from_secs(5));
    assert!(
        took <= Duration::from_millis(1500),
        "the line took {took:?} to appear (flushed at least every second)"
    );
    assert_eq!(l.client, "127.0.0.1");
    assert_eq!(
        (l.method.as_str(), l.target.as_str(), l.version.as_str()),
        ("GET", "/fmt?b=1", "HTTP/1.1")
    );
    assert_eq!((l.status, l.bytes), (200, u.name().len() as u64));
    assert_eq!(l.referer, "http://ref.example/p");
    assert_eq!(l.user_agent, "test-agent/1.0");
    assert_eq!(l.upstream, u.url());
    assert_eq!(l.attempts, 1);
    assert!(is_seconds(&l.upstream_time), "{l:?}");
    assert!(
        l.request_time.parse::<f64>().unwrap() >= l.upstream_time.parse::<f64>().unwrap(),
        "request_time covers upstream_time: {l:?}"
    );
    assert_eq!(l.queued, "-");
    assert_eq!(l.id, "fmt-1");
    assert!(!l.stamp.is_empty());

    // Hostile client text: a quote, a tab (the one control byte a field value may
    // carry), a backslash and a non-ASCII byte are escaped; the line stays one line.
    let r = request(
        sq.addr(),
        b"GET /evil HTTP/1.1\r\nHost: x\r\nReferer: a\\b\r\nUser-Agent: ev\"il\tagent\xff\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let (l, _) = wait_access_line(&path, "/evil", Duration::from_secs(5));
    assert_eq!(l.user_agent, "ev\\x22il\\x09agent\\xFF");
    assert_eq!(l.referer, "a\\x5Cb");
    let generated_id = u
        .requests()
        .last()
        .and_then(|r| r.header("x-request-id").map(str::to_string))
        .expect("the upstream got an X-Request-Id");
    assert_eq!(l.id, generated_id, "id is the X-Request-Id sent upstream");

    // HTTP/1.0 without Referer or User-Agent: `"-" "-"`.
    let mut c = Client::connect(sq.addr());
    c.send("HEAD /old HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_head_response().status, 200);
    let (l, _) = wait_access_line(&path, "/old", Duration::from_secs(5));
    assert_eq!(
        (l.method.as_str(), l.version.as_str()),
        ("HEAD", "HTTP/1.0")
    );
    assert_eq!((l.referer.as_str(), l.user_agent.as_str()), ("-", "-"));
    assert_eq!(l.bytes, 0, "a HEAD response relays no body");

    // One line per request, each well-formed.
    let lines = access_lines(&path);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for line in &lines {
        if let Err(e) = parse_access_line(line) {
            panic!("{e}");
        }
    }
}

#[test]
fn access_log_records_queued_requests() {
    // Deferred: every attempt fails, the request is buffered.
    let sq = Conf::new(&[refusing_url()])
        .set("ENABLE_DEFERRED_Q", "true")
        .set("MAX_RETRIES", "2")
        .set("ACCESS_LOG_FILE", "{dir}/access.log")
        .start();
    let r = request(
        sq.addr(),
        b"POST /deferred HTTP/1.1\r\nHost: x\r\nX-Request-Id: q-deferred\r\nUser-Agent: ua\r\n\
          Content-Length: 2\r\n\r\nhi",
    );
    assert_sq_response(&r, 503, "Request Buffered", &[]);
    let (l, _) = wait_access_line(&sq.dir().join("access.log"), "/deferred", secs(5.0));
    assert_eq!((l.method.as_str(), l.status), ("POST", 503));
    assert_eq!(l.bytes, r.body.len() as u64, "bytes = the generated body");
    assert_eq!(l.upstream, "-", "{l:?}");
    assert_eq!(l.attempts, 2, "{l:?}");
    assert_eq!(l.upstream_time, "-", "{l:?}");
    assert_eq!(l.queued, "deferred", "{l:?}");
    assert_eq!(l.id, "q-deferred");

    // Upfront: queued at once, no attempt.
    let u = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[u.url()])
        .set("ENABLE_UPFRONT_Q", "true")
        .set("ACCESS_LOG_FILE", "{dir}/access.log")
        .start();
    let r = request(
        sq.addr(),
        b"PUT /upfront HTTP/1.1\r\nHost: x\r\nX-Request-Id: q-upfront\r\nContent-Length: 0\r\n\r\n",
    );
    assert_sq_response(&r, 202, "Request Queued", &[]);
    let (l, _) = wait_access_line(&sq.dir().join("access.log"), "/upfront", secs(5.0));
    assert_eq!((l.status, l.bytes), (202, r.body.len() as u64));
    assert_eq!(
        (l.upstream.as_str(), l.attempts, l.upstream_time.as_str()),
        ("-", 0, "-"),
        "{l:?}"
    );
    assert_eq!(l.queued, "upfront");
    assert_eq!(l.id, "q-upfront");
}

#[test]
fn access_log_is_complete_after_sigterm() {
    let u = Upstream::start(Behaviour::Ok);
    let mut sq = Conf::new(&[u.url()])
        .set("ACCESS_LOG_FILE", "{dir}/access.log")
        .set("SHUTDOWN_GRACE", "10")
        .start();
    assert_eq!(get(sq.addr(), "/before").status, 200);
    // A request in flight when SIGTERM arrives: its line must be written at shutdown.
    u.script(vec![Behaviour::Slow(Duration::from_millis(1500))]);
    let mut c = Client::connect(sq.addr());
    c.send("GET /in-flight HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(u.wait_requests(2, Duration::from_secs(5)));
    sq.signal("TERM");
    assert_eq!(c.read_response().status, 200);
    let st = sq
        .wait_exit(Duration::from_secs(10))
        .expect("no exit after SIGTERM");
    assert_eq!(st.code(), Some(0), "stderr:\n{}", sq.stderr());
    let lines = access_lines(&sq.dir().join("access.log"));
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for (line, target) in lines.iter().zip(["/before", "/in-flight"]) {
        match parse_access_line(line) {
            Ok(l) => assert_eq!((l.target.as_str(), l.status), (target, 200)),
            Err(e) => panic!("{e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Admin listener: 404s, and independence from the workers
// ---------------------------------------------------------------------------------------

/// Sends raw bytes to the admin listener and reads the response (or panics).
fn admin_raw(admin: SocketAddr, raw: &[u8]) -> Response {
    let mut c = Client::connect(admin);
    c.send(raw);
    c.try_read_response(raw.starts_with(b"HEAD "))
        .unwrap_or_else(|e| panic!("admin answer to {:?}: {e}", String::from_utf8_lossy(raw)))
}

#[test]
fn admin_answers_404_to_anything_else() {
    let u = Upstream::start(Behaviour::Ok);
    let (sq, admin) = start_with_admin(Conf::new(&[u.url()]));
    for path in [
        "/",
        "/nope",
        "/metrics/",
        "/metricsx",
        "/METRICS",
        "/status.html",
        "/healthz/x",
        "//metrics",
        "/../metrics",
    ] {
        let r = admin_get(admin, path);
        assert_eq!(r.status, 404, "GET {path}: {}{}", r.raw_head, r.body_str());
    }
    for (method, path) in [
        ("POST", "/metrics"),
        ("PUT", "/status"),
        ("DELETE", "/healthz"),
        ("OPTIONS", "/metrics"),
        ("PATCH", "/metrics"),
    ] {
        let r = admin_raw(
            admin,
            format!("{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 404, "{method} {path}: {}", r.raw_head);
    }
    // A POST with a body still gets its 404 (not a reset).
    let r = admin_raw(
        admin,
        b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello=world",
    );
    assert_eq!(r.status, 404, "{}", r.raw_head);
    // The query string is not part of the path.
    assert_eq!(admin_get(admin, "/metrics?x=1").status, 200);
    assert_eq!(admin_get(admin, "/healthz").status, 200);
    assert_eq!(
        u.request_count(),
        0,
        "admin requests never reach an endpoint"
    );
    drop(sq);
}

#[test]
fn admin_answers_while_every_worker_is_busy() {
    let u = Upstream::start(Behaviour::Hang);
    let (sq, admin) = start_with_admin(
        Conf::new(&[u.url()])
            .set("CONCURRENCY_PEAK", "2")
            .set("OUTGOING_REQUEST_TIMEOUT", "30"),
    );
    let mut hung = Vec::new();
    for i in 0..2 {
        let mut c = Client::connect(sq.addr());
        c.send(format!("GET /hang-{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
        hung.push(c);
    }
    assert!(u.wait_requests(2, Duration::from_secs(5)));
    // Every worker is taken: a client now gets 429 …
    assert_sq_response(&get(sq.addr(), "/more"), 429, "Request Discarded", &[]);
    // … and the admin listener still answers, promptly.
    for path in ["/healthz", "/metrics", "/status"] {
        let start = Instant::now();
        let r = admin_get(admin, path);
        assert_eq!(r.status, 200, "{path}: {}", r.raw_head);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{path} took {:?} while the workers were busy",
            start.elapsed()
        );
        if path == "/metrics" {
            let m = Exposition::fetch(admin);
            assert_eq!(m.count("serviceq_workers_busy", &[]), 2, "{}", m.text);
            assert_eq!(m.count("serviceq_requests_held", &[]), 2, "{}", m.text);
        }
        if path == "/status" {
            assert!(r.body_str().contains("2 / 2"), "{}", r.body_str());
        }
    }
    drop(hung);
}

#[test]
fn admin_is_not_held_up_by_a_silent_connection() {
    // A browser's speculative preconnect, a port scanner or a stuck scraper opens a
    // connection and sends nothing. Health checks (often with a 1 s timeout) must still
    // be answered at once.
    let u = Upstream::start(Behaviour::Ok);
    let (sq, admin) = start_with_admin(Conf::new(&[u.url()]));
    let silent = TcpStream::connect(admin).expect("connect to the admin listener");
    thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    let r = admin_get(admin, "/healthz");
    let took = start.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        took < Duration::from_secs(1),
        "/healthz took {took:?} while one silent connection was open on the admin port"
    );
    drop(silent);
    drop(sq);
}

/// A request refused before its head could be understood still gets an access log
/// line, with `-` for the request line and the status it was answered with.
#[test]
fn access_log_records_requests_refused_before_their_head() {
    let u = Upstream::start(Behaviour::Ok);
    let sq = Conf::new(&[u.url()])
        .set("ACCESS_LOG_FILE", "{dir}/access.log")
        .start();
    let path = sq.dir().join("access.log");
    let r = request(sq.addr(), b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    let r = request(sq.addr(), b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 400);
    let (l, _) = wait_access_line(&path, "\"- - -\"", Duration::from_secs(5));
    assert_eq!((l.method.as_str(), l.target.as_str()), ("-", "-"), "{l:?}");
    assert_eq!((l.status, l.bytes), (400, r.body.len() as u64), "{l:?}");
    assert_eq!((l.upstream.as_str(), l.attempts), ("-", 0), "{l:?}");
    assert_eq!(l.client, "127.0.0.1");
    assert!(is_seconds(&l.request_time), "{l:?}");
    assert_eq!(u.request_count(), 1, "the refused request went nowhere");
}

#[test]
fn admin_health_check_survives_connections_dribbling_their_heads() {
    // Twelve connections each send a request head one byte a second (a slowloris on the
    // admin port, more connections than it serves at once). /healthz must still be
    // answered promptly, again and again; and a dribbled head is cut off by a deadline
    // for the whole head (2 s), not kept alive by each byte.
    let u = Upstream::start(Behaviour::Ok);
    let (sq, admin) = start_with_admin(Conf::new(&[u.url()]));
    let dribblers: Vec<_> = (0..12)
        .map(|_| thread::spawn(move || dribble_admin_head(admin, Duration::from_secs(8))))
        .collect();
    thread::sleep(Duration::from_millis(1500));
    for round in 0..4 {
        let start = Instant::now();
        let mut c = Client::connect(admin);
        c.set_read_timeout(Duration::from_secs(2));
        c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = c.try_read_response(false);
        let took = start.elapsed();
        let r = r.unwrap_or_else(|e| panic!("round {round}: /healthz not answered: {e}"));
        assert_eq!(r.status, 200, "round {round}");
        assert!(
            took < Duration::from_secs(1),
            "round {round}: /healthz took {took:?}"
        );
        thread::sleep(Duration::from_millis(700));
    }
    for d in dribblers {
        let held = d.join().unwrap();
        assert!(
            held < Duration::from_secs(6),
            "a dribbled admin head was kept open {held:?}"
        );
    }
    drop(sq);
}

/// Sends an admin request head a byte a second for at most `limit`; returns how long
/// the connection stayed open (a write fails or the read side ends once it is closed).
fn dribble_admin_head(admin: SocketAddr, limit: Duration) -> Duration {
    let mut s = TcpStream::connect(admin).expect("connect to the admin listener");
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let head =
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    for b in head.iter() {
        if started.elapsed() >= limit || s.write_all(&[*b]).is_err() {
            break;
        }
        let mut probe = [0u8; 64];
        match s.read(&mut probe) {
            Ok(0) => break,
            Err(e)
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut =>
            {
                break
            }
            _ => {}
        }
        thread::sleep(Duration::from_secs(1));
    }
    started.elapsed()
}

/// logrotate's way: move the logs away, send SIGUSR1, and the lines of later requests
/// go to new files at the configured paths — the access log as well as the error log.
#[test]
fn sigusr1_reopens_the_access_log_and_the_error_log_after_rotation() {
    let sq = Conf::new(&[refusing_url()])
        .set("ACCESS_LOG_FILE", "{dir}/access.log")
        .set("MAX_RETRIES", "1")
        .start();
    let access = sq.dir().join("access.log");
    let errors = sq.error_log_path().to_path_buf();
    assert_eq!(get(sq.addr(), "/before").status, 503);
    wait_access_line(&access, "/before", Duration::from_secs(5));
    assert!(sq.wait_for_error_log(Duration::from_secs(5), |l| l.len() == 1));

    let (access_old, errors_old) = (sq.dir().join("access.log.1"), sq.dir().join("error.log.1"));
    fs::rename(&access, &access_old).unwrap();
    fs::rename(&errors, &errors_old).unwrap();
    sq.signal("USR1");
    for path in [&access, &errors] {
        let said = format!("SIGUSR1: reopened {}", path.display());
        assert!(
            sq.wait_for_stderr(&said, Duration::from_secs(5)),
            "no {said:?} on stderr:\n{}",
            sq.stderr()
        );
    }
    assert_eq!(get(sq.addr(), "/after").status, 503);
    wait_access_line(&access, "/after", Duration::from_secs(5));
    assert!(
        wait_until(Duration::from_secs(5), || fs::read_to_string(&errors)
            .is_ok_and(|t| t.lines().count() == 1)),
        "the error log was not reopened at {}",
        errors.display()
    );
    let rotated = fs::read_to_string(&access_old).unwrap();
    assert!(
        !rotated.contains("/after"),
        "written to the rotated file:\n{rotated}"
    );
    assert_eq!(fs::read_to_string(&errors_old).unwrap().lines().count(), 1);
}

/// The operational log on stderr shows a request's target when something goes wrong
/// with it; what the client sent is capped and escaped there as in the access log, so
/// a 10 KiB target can neither flood stderr nor forge a line. (Control and non-ASCII
/// bytes never get past the head parser, which answers 400; quotes and backslashes do,
/// and are escaped.)
#[test]
fn stderr_caps_and_escapes_client_text() {
    let u = Upstream::start(Behaviour::CloseMidBody);
    let sq = Conf::new(&[u.url()]).start();
    let mut target = b"/evil\"\\".to_vec();
    target.extend(std::iter::repeat_n(b'a', 10 * 1024));
    let mut raw = b"GET ".to_vec();
    raw.extend_from_slice(&target);
    raw.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut c = Client::connect(sq.addr());
    c.send(&raw);
    let _ = c.try_read_response(false);
    assert!(
        sq.wait_for_stderr("broke off mid-response", Duration::from_secs(5)),
        "no stderr line about the request:\n{}",
        sq.stderr()
    );
    let stderr = sq.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("broke off mid-response"))
        .unwrap();
    assert!(
        line.contains("GET /evil\\x22\\x5Caaa"),
        "target not escaped: {line:.200}"
    );
    assert!(line.len() < 1024, "target not capped: {} bytes", line.len());
}
