//! The Prometheus text exposition format (0.0.4) as the tests read `/metrics`: a strict
//! parser of our own (`strict_check`, `Exposition`), prometheus_client run by python3
//! (`python_parse`), `promtool check metrics` when it is installed.
//! (`metric_sample` in `clients.rs` is enough for a test that needs one value.)

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use super::{get, Message};

/// One sample line of the exposition.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` body.
pub struct Exposition {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn fetch(admin: SocketAddr) -> Exposition {
        let r = get(admin, "/metrics");
        assert_eq!(r.status, 200, "{}{}", r.raw_head, r.body_str());
        let text = r.body_str();
        match strict_check(&text) {
            Ok(samples) => Exposition { text, samples },
            Err(e) => panic!("/metrics is not valid Prometheus text: {e}\n{text}"),
        }
    }

    /// The sample with exactly these labels.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{}", self.text))
    }

    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let v = self.get(name, labels);
        assert!(
            v >= 0.0 && v.fract() == 0.0,
            "{name}{labels:?} = {v} is not a count"
        );
        v as u64
    }

    /// Sum of a family's samples whose labels include these.
    pub fn sum_where(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
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
pub fn strict_check(text: &str) -> Result<Vec<Sample>, String> {
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

pub fn python_has_prometheus_client() -> bool {
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
pub fn python_parse(text: &str) -> (BTreeMap<String, String>, usize) {
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
pub fn promtool_check(text: &str) {
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
