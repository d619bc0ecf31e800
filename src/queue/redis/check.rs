//! What `--check` says about the engine: the server settings that make the promise
//! "Buffered = on disk" hold, and the clock skew the push deadline depends on. The
//! judgement is pure ([`warnings`]); `RedisQueue::check` only gathers the inputs.

use std::collections::HashMap;
use std::time::Duration;

/// The settings asked for with `CONFIG GET` (a managed Redis may refuse CONFIG).
pub const SETTINGS: [&str; 4] = [
    "appendonly",
    "appendfsync",
    "maxmemory-policy",
    "min-replicas-to-write",
];

/// What the engine told `--check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineReport {
    /// `redis_version` from INFO.
    pub version: String,
    /// The primary's address.
    pub primary: Option<String>,
    pub depth: u64,
    /// Engine clock minus ours, in ms (positive: the engine is ahead).
    pub skew_ms: i64,
    /// Settings that break a guarantee, one sentence each.
    pub warnings: Vec<String>,
}

/// The guarantees the settings `got` (None = CONFIG refused) break, given the
/// `replicas` asked for, the clock skew and the engine timeout.
pub fn warnings(
    got: Option<&HashMap<String, String>>,
    replicas: usize,
    skew_ms: i64,
    timeout: Duration,
) -> Vec<String> {
    let mut out = Vec::new();
    if skew_ms.unsigned_abs() as u128 * 2 > timeout.as_millis() {
        out.push(format!(
            "the engine's clock is {skew_ms} ms off ours: over half the engine timeout, \
             pushes may be refused as late (keep clocks in sync with NTP)"
        ));
    }
    let Some(got) = got else {
        out.push(
            "CONFIG GET refused: cannot tell whether appendfsync, maxmemory-policy \
                  and min-replicas-to-write keep the queue's promise"
                .to_owned(),
        );
        return out;
    };
    let is = |k: &str, v: &str| got.get(k).is_some_and(|g| g.eq_ignore_ascii_case(v));
    if !is("appendonly", "yes") {
        out.push("appendonly is not yes: a Redis restart loses buffered requests".to_owned());
    } else if !is("appendfsync", "always") {
        out.push(
            "appendfsync is not always: \"Buffered\" is answered before the entry is on \
             disk, and a Redis crash can lose the last second of them"
                .to_owned(),
        );
    }
    if !is("maxmemory-policy", "noeviction") {
        out.push("maxmemory-policy is not noeviction: Redis may evict the queue itself".to_owned());
    }
    if replicas > 0 && is("min-replicas-to-write", "0") {
        out.push(
            "min-replicas-to-write is 0: a primary cut off from its replicas keeps taking \
             pushes (unconfirmed by WAIT, so refused to clients, but written) that a \
             failover then drops"
                .to_owned(),
        );
    }
    out
}

/// `CONFIG GET a b c` replies with a flat name, value list (RESP2) or a map (RESP3).
pub fn config_map(v: &redis::Value) -> HashMap<String, String> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let mut out = HashMap::new();
    match v {
        redis::Value::Array(items) => {
            for pair in items.chunks(2) {
                if let [k, v] = pair {
                    if let (Some(k), Some(v)) = (text(k), text(v)) {
                        out.insert(k, v);
                    }
                }
            }
        }
        redis::Value::Map(pairs) => {
            for (k, v) in pairs {
                if let (Some(k), Some(v)) = (text(k), text(v)) {
                    out.insert(k, v);
                }
            }
        }
        _ => {}
    }
    out
}

/// The `redis_version:` line of `INFO server`.
pub fn version(info: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(2);

    fn conf(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn safe_settings_give_no_warning() {
        let safe = conf(&[
            ("appendonly", "yes"),
            ("appendfsync", "always"),
            ("maxmemory-policy", "noeviction"),
            ("min-replicas-to-write", "1"),
        ]);
        assert_eq!(warnings(Some(&safe), 1, 10, T), Vec::<String>::new());
        assert_eq!(warnings(Some(&safe), 0, -999, T), Vec::<String>::new());
    }

    #[test]
    fn each_unsafe_setting_is_named() {
        type Case<'a> = (&'a [(&'a str, &'a str)], usize, &'a str);
        let cases: [Case; 4] = [
            (
                &[("appendonly", "no"), ("maxmemory-policy", "noeviction")],
                0,
                "appendonly",
            ),
            (
                &[
                    ("appendonly", "yes"),
                    ("appendfsync", "everysec"),
                    ("maxmemory-policy", "noeviction"),
                ],
                0,
                "appendfsync",
            ),
            (
                &[
                    ("appendonly", "yes"),
                    ("appendfsync", "always"),
                    ("maxmemory-policy", "allkeys-lru"),
                ],
                0,
                "maxmemory-policy",
            ),
            (
                &[
                    ("appendonly", "yes"),
                    ("appendfsync", "always"),
                    ("maxmemory-policy", "noeviction"),
                    ("min-replicas-to-write", "0"),
                ],
                1,
                "min-replicas-to-write",
            ),
        ];
        for (pairs, replicas, named) in cases {
            let w = warnings(Some(&conf(pairs)), replicas, 0, T);
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(w[0].starts_with(named), "{w:?}");
        }
        assert!(warnings(None, 0, 0, T)[0].starts_with("CONFIG GET refused"));
        assert!(warnings(None, 0, 1001, T)[0].contains("1001 ms off"));
    }

    #[test]
    fn replies_are_read() {
        let b = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        let flat = redis::Value::Array(vec![b("appendonly"), b("yes"), b("odd")]);
        assert_eq!(config_map(&flat), conf(&[("appendonly", "yes")]));
        let map = redis::Value::Map(vec![(b("appendfsync"), b("always"))]);
        assert_eq!(config_map(&map), conf(&[("appendfsync", "always")]));
        assert_eq!(
            version("# Server\r\nredis_version:7.0.15\r\nx:y\r\n"),
            "7.0.15"
        );
        assert_eq!(version(""), "unknown");
    }
}
