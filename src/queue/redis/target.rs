//! Where the shared queue lives: the backend URL, parsed with no I/O.
//!
//! * `redis://[user:pass@]host:port[/db]` and `rediss://…` (TLS) — one primary, parsed
//!   by the `redis` crate itself;
//! * `redis+sentinel://[user:pass@]host:port[,host:port…]/master-name[/db]` (and
//!   `rediss+sentinel://…`, TLS to sentinels and nodes alike) — the primary is asked of
//!   the sentinels. The credentials and the db are the data nodes'; sentinels are
//!   reached without them. A host without a port gets the sentinel port, 26379.

use redis::{ConnectionInfo, IntoConnectionInfo};

use super::error::RedisQueueError;

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
    pub fn parse(url: &str) -> Result<Target, RedisQueueError> {
        let bad = |why: &str| RedisQueueError::Config(format!("{}: {why}", redact(url)));
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
    pub fn node_info(&self, host: &str, port: u16) -> Result<ConnectionInfo, RedisQueueError> {
        let url = format!(
            "{}://{}{}:{port}/{}",
            self.scheme(),
            self.userinfo,
            bracket(host),
            self.db
        );
        url.as_str()
            .into_connection_info()
            .map_err(|e| RedisQueueError::Config(format!("{host}:{port}: {e}")))
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
                Err(RedisQueueError::Config(why)) => {
                    assert!(!why.contains("secret"), "{why}")
                }
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
