//! What the lower layers (config, metrics, admin) may know of the shared queue, with
//! no dependency on the rest of the crate: where it lives (the backend URL, parsed with
//! no I/O), its defaults, and the state `queue::redis` reports (`RedisStatus`,
//! `LeaseState`). The queue itself is in `queue/redis/`.
//!
//! * `redis://[user:pass@]host:port[/db]` and `rediss://…` (TLS) — one primary, parsed
//!   by the `redis` crate itself;
//! * `redis+sentinel://[user:pass@]host:port[,host:port…]/master-name[/db]` (and
//!   `rediss+sentinel://…`, TLS to sentinels and nodes alike) — the primary is asked of
//!   the sentinels. The credentials and the db are the data nodes'; sentinels are
//!   reached without them. A host without a port gets the sentinel port, 26379.

use std::time::Duration;

use redis::{ConnectionInfo, IntoConnectionInfo};

/// Default `DEFERRED_Q_NAME`.
pub const DEFAULT_NAME: &str = "serviceq";
/// Default bound of one engine call (`DEFERRED_Q_REDIS_TIMEOUT`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default lease TTL (`DEFERRED_Q_REDIS_LEASE`): how long a dead replayer blocks replay.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
/// Default shared cap (`DEFERRED_Q_MAX_LEN`).
pub const DEFAULT_MAX_LEN: usize = 100_000;

/// What the last acquire-or-renew of the replay lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Ours, under fencing token `fence`; `acquired` = newly taken (not a renewal).
    Held { fence: u64, acquired: bool },
    /// Another instance's.
    HeldBy { holder: String, fence: u64 },
}

/// A snapshot for `/status`, `/metrics` and `--check`; taken without engine I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStatus {
    /// The backend URL, password redacted.
    pub target: String,
    /// The primary's address in use, if known.
    pub primary: Option<String>,
    /// The shared depth as last seen (any instance's pushes count).
    pub depth: Option<u64>,
    /// The lease as last seen.
    pub lease: Option<LeaseState>,
    /// Whether this instance may replay now.
    pub holding: bool,
    /// The last engine error, with its log code name.
    pub last_error: Option<String>,
    /// Engine errors so far (the cap being reached is not one).
    pub engine_errors: u64,
}

/// Checks a backend URL without any I/O (for the configuration); the error says what
/// is wrong, with any password hidden.
pub fn check_url(url: &str) -> Result<(), String> {
    Target::parse(url).map(|_| ())
}

/// Sentinel's default port.
pub const SENTINEL_PORT: u16 = 26379;

/// The parsed backend URL.
#[derive(Debug, Clone)]
pub enum Target {
    /// One primary at a fixed address.
    Direct(ConnectionInfo),
    /// A primary found through sentinels.
    Sentinel(SentinelTarget),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// (host, port) of every sentinel, in the order given.
    pub sentinels: Vec<(String, u16)>,
    /// The name the sentinels monitor the primary under.
    pub master: String,
    pub tls: bool,
    /// `user:pass@` as written in the URL (still percent-encoded), or empty.
    userinfo: String,
    db: i64,
}

impl Target {
    /// The error names the URL with its password hidden.
    pub fn parse(url: &str) -> Result<Target, String> {
        let bad = |why: &str| format!("{}: {why}", redact(url));
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            return parse_sentinel(rest, false)
                .map(Target::Sentinel)
                .map_err(bad);
        }
        if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            return parse_sentinel(rest, true)
                .map(Target::Sentinel)
                .map_err(bad);
        }
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(bad(
                "expected redis://, rediss://, redis+sentinel:// or rediss+sentinel://",
            ));
        }
        url.into_connection_info()
            .map(Target::Direct)
            .map_err(|e| bad(&e.to_string()))
    }
}

impl SentinelTarget {
    /// The URL of sentinel `i` (no credentials, no db: sentinels have neither).
    pub fn sentinel_url(&self, i: usize) -> String {
        let (host, port) = &self.sentinels[i];
        format!("{}://{}:{port}", self.scheme(), bracket(host))
    }

    /// Connection settings for the data node a sentinel named.
    pub fn node_info(&self, host: &str, port: u16) -> Result<ConnectionInfo, String> {
        let url = format!(
            "{}://{}{}:{port}/{}",
            self.scheme(),
            self.userinfo,
            bracket(host),
            self.db
        );
        url.as_str()
            .into_connection_info()
            .map_err(|e| format!("{host}:{port}: {e}"))
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "rediss"
        } else {
            "redis"
        }
    }
}

fn parse_sentinel(rest: &str, tls: bool) -> Result<SentinelTarget, &'static str> {
    let (authority, path) = rest.split_once('/').ok_or("no /master-name")?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    let sentinels = hosts
        .split(',')
        .map(parse_host_port)
        .collect::<Result<Vec<_>, _>>()?;
    let (master, db) = match path.split_once('/') {
        Some((m, db)) => (m, db.parse().map_err(|_| "db is not a number")?),
        None => (path, 0),
    };
    if master.is_empty() {
        return Err("empty master name");
    }
    Ok(SentinelTarget {
        sentinels,
        master: master.to_owned(),
        tls,
        userinfo,
        db,
    })
}

/// `host:port`, `[v6]:port`, or a bare host (sentinel port).
fn parse_host_port(s: &str) -> Result<(String, u16), &'static str> {
    let port_of = |p: &str| p.parse::<u16>().map_err(|_| "bad sentinel port");
    if let Some(v6) = s.strip_prefix('[') {
        let (host, tail) = v6.split_once(']').ok_or("unclosed [ in sentinel address")?;
        let port = match tail.strip_prefix(':') {
            Some(p) => port_of(p)?,
            None if tail.is_empty() => SENTINEL_PORT,
            None => return Err("junk after ] in sentinel address"),
        };
        return Ok((host.to_owned(), port));
    }
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, port_of(p)?),
        None => (s, SENTINEL_PORT),
    };
    if host.is_empty() {
        return Err("empty sentinel host");
    }
    Ok((host.to_owned(), port))
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The URL with any password replaced by `***`, fit for logs and `/status`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, _)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{shown}@{}", &rest[userinfo.len() + 1..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel(url: &str) -> SentinelTarget {
        match Target::parse(url) {
            Ok(Target::Sentinel(s)) => s,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn sentinel_urls_parse() {
        let s = sentinel("redis+sentinel://10.0.0.1:26380,sent-b,[::1]:5000/mymaster");
        assert_eq!(
            s.sentinels,
            vec![
                ("10.0.0.1".to_owned(), 26380),
                ("sent-b".to_owned(), SENTINEL_PORT),
                ("::1".to_owned(), 5000)
            ]
        );
        assert_eq!((s.master.as_str(), s.tls, s.db), ("mymaster", false, 0));
        assert_eq!(s.sentinel_url(2), "redis://[::1]:5000");
        let t = sentinel("rediss+sentinel://u:p%40ss@h:1/m/3");
        assert!(t.tls);
        assert_eq!(t.sentinel_url(0), "rediss://h:1");
        let node = t.node_info("127.0.0.1", 6390).unwrap();
        assert_eq!(node.redis_settings().db(), 3);
        assert_eq!(node.redis_settings().password(), Some("p@ss"));
        assert_eq!(node.redis_settings().username(), Some("u"));
        assert_eq!(node.addr().to_string(), "127.0.0.1:6390");
    }

    #[test]
    fn bad_urls_are_config_errors_without_the_password() {
        for url in [
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel://h:x/m",
            "redis+sentinel://:1/m",
            "redis+sentinel://[::1/m",
            "redis+sentinel://h:1/m/notadb",
            "memcached://h:1",
            "redis://u:secret@h:notaport",
        ] {
            match Target::parse(url) {
                Err(why) => assert!(!why.contains("secret"), "{why}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn direct_urls_parse() {
        let Ok(Target::Direct(info)) = Target::parse("redis://:pw@127.0.0.1:6399/2") else {
            panic!("direct url");
        };
        assert_eq!(info.addr().to_string(), "127.0.0.1:6399");
        assert_eq!(info.redis_settings().db(), 2);
        assert!(matches!(
            Target::parse("rediss://localhost:6380"),
            Ok(Target::Direct(_))
        ));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact("rediss://token@h:1"), "rediss://***@h:1");
        assert_eq!(
            redact("redis+sentinel://a:1,b:2/m"),
            "redis+sentinel://a:1,b:2/m"
        );
        assert_eq!(redact("redis://h:1/0?x=a@b"), "redis://h:1/0?x=a@b");
    }
}
