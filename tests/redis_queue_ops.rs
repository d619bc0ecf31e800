//! Operating the shared queue (DEFERRED_Q_BACKEND=redis://…) with `serviceq queue …`
//! through the real binary and a real `redis-server`: list what is buffered, show one,
//! drop one (the head being replayed included: it is not delivered afterwards),
//! dead letters after DEFERRED_Q_MAX_AGE with their reason, retried in their original
//! order, and a purge.
//!
//! Without redis-server these fail under `CI` and skip otherwise.

// Each test file uses part of the shared helpers: see tests/support/mod.rs.
#[allow(dead_code)]
mod support;

use std::ffi::OsString;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::queue::*;
use support::redis_server::{have_redis, Redis};
use support::*;

const HOST: &str = "redisops.test";
const TOKEN: &str = "r3dis-token-7";

fn token_file(dir: &TempDir) -> PathBuf {
    let path = dir.join("admin.token");
    fs::write(&path, format!("{TOKEN}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The shared queue on `redis` for POST, an admin listener and a token.
fn ops_conf(u: &Upstream, redis: &Redis, token: &Path) -> Conf {
    queue_conf(&[u.url()], "POST")
        .set("DEFERRED_Q_BACKEND", &redis.url())
        .set("DEFERRED_Q_REDIS_LEASE", "1")
        .set("DEFERRED_Q_REDIS_TIMEOUT", "0.5")
        .set("ADMIN_ADDRESS", "127.0.0.1")
        .set("ADMIN_PORT", &refusing_port().to_string())
        .set("ADMIN_TOKEN_FILE", &token.display().to_string())
}

/// Starts the proxy and waits for its admin listener.
fn start(body: &str) -> ServiceQ {
    let sq = ServiceQ::start(body);
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("ADMIN_PORT="))
        .expect("ADMIN_PORT in the config");
    let admin: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(admin)
            .is_ok()),
        "admin listener not up; stderr:\n{}",
        sq.stderr()
    );
    sq
}

fn buffer(sq: &ServiceQ, tag: &str, n: usize) {
    for i in 0..n {
        let raw = raw_request(
            "POST",
            HOST,
            &format!("/{tag}/{i}"),
            format!("body of {tag} {i}").as_bytes(),
            Some(&format!("{tag}-{i}")),
        );
        assert_buffered(&request(sq.addr(), &raw), &format!("POST /{tag}/{i}"));
    }
}

/// `serviceq queue ARGS… --config CONFIG`, which must succeed; its stdout.
fn queue_ok(config: &Path, args: &[&str]) -> String {
    let mut all: Vec<OsString> = vec!["queue".into()];
    all.extend(args.iter().map(OsString::from));
    all.extend(["--config".into(), config.as_os_str().to_owned()]);
    let ran = run_binary(
        TempDir::new("redisops-cli"),
        config.to_path_buf(),
        &all,
        &[],
        Duration::from_secs(20),
    );
    assert!(!ran.timed_out, "serviceq queue {args:?} hung");
    assert_eq!(
        ran.code(),
        Some(0),
        "serviceq queue {args:?}: {}",
        ran.describe()
    );
    ran.stdout
}

/// `queue list [--dead] --json` as (id, method, target, body bytes).
fn listing(config: &Path, dead: bool) -> Vec<(String, String, String, u64)> {
    let args: &[&str] = if dead {
        &["list", "--dead", "--json"]
    } else {
        &["list", "--json"]
    };
    let out = queue_ok(config, args);
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.as_array()
        .unwrap_or_else(|| panic!("an array: {out}"))
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["method"].as_str().unwrap().to_string(),
                r["target"].as_str().unwrap().to_string(),
                r["body_bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn row(tag: &str, i: usize) -> (String, String, String, u64) {
    let body = format!("body of {tag} {i}");
    (
        format!("{tag}-{i}"),
        "POST".into(),
        format!("/{tag}/{i}"),
        body.len() as u64,
    )
}

fn kept_config(sq: &ServiceQ, dir: &TempDir) -> PathBuf {
    let path = dir.join("sq.properties");
    fs::copy(sq.config_path(), &path).unwrap();
    path
}

fn targets(u: &Upstream) -> Vec<String> {
    u.requests().iter().map(|r| r.target.clone()).collect()
}

#[test]
fn list_show_and_drop_the_head_being_replayed() {
    if !have_redis() {
        return;
    }
    let redis = Redis::primary();
    let secrets = TempDir::new("redisops-secret");
    let mut u = down_upstream(Behaviour::Echo);
    let sq = start(&ops_conf(&u, &redis, &token_file(&secrets)).body());
    let config = kept_config(&sq, &secrets);
    buffer(&sq, "q", 3);

    assert_eq!(
        listing(&config, false),
        (0..3).map(|i| row("q", i)).collect::<Vec<_>>()
    );
    let text = queue_ok(&config, &["list"]);
    assert!(
        text.lines()
            .nth(2)
            .unwrap()
            .starts_with("2\tq-1\tPOST\t/q/1\t11\t"),
        "{text}"
    );
    // The lease holder tries the head (the endpoint is down) and counts it.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let v: serde_json::Value =
                serde_json::from_str(&queue_ok(&config, &["list", "--json"])).unwrap();
            v[0]["attempts"].as_u64() >= Some(1) && v[1]["attempts"].as_u64() == Some(0)
        }),
        "stderr:\n{}",
        sq.stderr()
    );
    let shown = queue_ok(&config, &["show", "q-2"]);
    assert!(shown.starts_with("X-Request-Id q-2: queued #3"), "{shown}");
    assert!(shown.contains("POST /q/2 HTTP/1.1"), "{shown}");
    assert!(shown.contains("body of q 2"), "{shown}");

    // The head, being replayed, dropped: never delivered afterwards.
    assert_eq!(
        queue_ok(&config, &["drop", "q-0"]).trim(),
        "dropped 1 queued and 0 dead requests"
    );
    assert_eq!(listing(&config, false), vec![row("q", 1), row("q", 2)]);
    u.restart();
    assert!(
        u.wait_requests(2, REPLAY_DEADLINE),
        "stderr:\n{}",
        sq.stderr()
    );
    assert!(holds_for(Duration::from_millis(800), || u.request_count() == 2));
    assert_eq!(targets(&u), ["/q/1", "/q/2"]);
    assert_eq!(listing(&config, false), vec![]);
}

#[test]
fn dead_letters_keep_their_reason_retry_in_order_and_purge() {
    if !have_redis() {
        return;
    }
    let redis = Redis::primary();
    let secrets = TempDir::new("redisops-secret");
    let mut u = down_upstream(Behaviour::Echo);
    let body = ops_conf(&u, &redis, &token_file(&secrets))
        .set("DEFERRED_Q_MAX_AGE", "1")
        .body();
    let sq = start(&body);
    let config = kept_config(&sq, &secrets);
    buffer(&sq, "d", 4);
    assert!(
        wait_until(REPLAY_DEADLINE, || stderr_count(
            &sq,
            "moved to the dead-letter stream"
        ) >= 4),
        "not dead-lettered; stderr:\n{}",
        sq.stderr()
    );
    assert_eq!(listing(&config, false), vec![]);
    assert_eq!(
        listing(&config, true),
        (0..4).map(|i| row("d", i)).collect::<Vec<_>>()
    );
    let text = queue_ok(&config, &["list", "--dead"]);
    assert!(text.contains("over DEFERRED_Q_MAX_AGE (1s)"), "{text}");

    assert_eq!(
        queue_ok(&config, &["drop", "d-3"]).trim(),
        "dropped 0 queued and 1 dead requests"
    );
    u.restart();
    assert_eq!(
        queue_ok(&config, &["retry-dead", "d-2", "d-0"]).trim(),
        "2 dead letters back at the queue's tail"
    );
    assert!(
        u.wait_requests(2, REPLAY_DEADLINE),
        "stderr:\n{}",
        sq.stderr()
    );
    assert!(holds_for(Duration::from_millis(500), || u.request_count() == 2));
    assert_eq!(
        targets(&u),
        ["/d/0", "/d/2"],
        "retried in their original order"
    );
    assert_eq!(listing(&config, true), vec![row("d", 1)]);

    assert_eq!(
        queue_ok(&config, &["purge", "--dead"]).trim(),
        "purged 1 dead letters"
    );
    assert_eq!(listing(&config, true), vec![]);
}
