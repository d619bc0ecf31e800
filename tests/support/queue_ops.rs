//! What the `serviceq queue` tests share (tests/queue_ops.rs, tests/redis_queue_ops.rs):
//! a token file, a proxy with its admin listener, buffering tagged requests, running
//! `serviceq queue …` and reading its JSON listing.

use std::ffi::OsString;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::queue::*;
use super::*;

pub const HOST: &str = "ops.test";
pub const TOKEN: &str = "s3cret-token-42";

/// A token file readable by its owner only.
pub fn token_file(dir: &TempDir) -> PathBuf {
    let path = dir.join("admin.token");
    fs::write(&path, format!("{TOKEN}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Starts the proxy and waits for its admin listener.
pub fn start(body: &str) -> (ServiceQ, SocketAddr) {
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
    (sq, admin)
}

pub fn buffer(sq: &ServiceQ, tag: &str, n: usize) {
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

/// `serviceq queue ARGS… --config CONFIG`, run to completion.
pub fn queue_cmd(config: &Path, args: &[&str]) -> Ran {
    let mut all: Vec<OsString> = vec!["queue".into()];
    all.extend(args.iter().map(OsString::from));
    all.extend(["--config".into(), config.as_os_str().to_owned()]);
    let ran = run_binary(
        TempDir::new("ops-cli"),
        config.to_path_buf(),
        &all,
        &[],
        Duration::from_secs(20),
    );
    assert!(
        !ran.timed_out,
        "serviceq queue {args:?} hung: {}",
        ran.describe()
    );
    ran
}

/// The same, which must succeed; its stdout.
pub fn queue_ok(config: &Path, args: &[&str]) -> String {
    let ran = queue_cmd(config, args);
    assert_eq!(
        ran.code(),
        Some(0),
        "serviceq queue {args:?}: {}",
        ran.describe()
    );
    ran.stdout
}

/// `queue list --json` rows as (id, method, target, body bytes) — age and attempts
/// change from one listing to the next.
pub fn listing(config: &Path, dead: bool) -> Vec<(String, String, String, u64)> {
    let args: &[&str] = if dead {
        &["list", "--dead", "--json"]
    } else {
        &["list", "--json"]
    };
    let out = queue_ok(config, args);
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.as_array()
        .expect("an array")
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

pub fn row(tag: &str, i: usize) -> (String, String, String, u64) {
    let body = format!("body of {tag} {i}");
    (
        format!("{tag}-{i}"),
        "POST".into(),
        format!("/{tag}/{i}"),
        body.len() as u64,
    )
}

/// A raw admin API request with an optional bearer token.
pub fn admin_call(admin: SocketAddr, method: &str, target: &str, token: Option<&str>) -> Response {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let raw =
        format!("{method} {target} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\n\r\n");
    request(admin, raw.as_bytes())
}

/// A copy of the proxy's config that outlives it (its temp dir goes with it).
pub fn kept_config(sq: &ServiceQ, dir: &TempDir) -> PathBuf {
    let path = dir.join("sq.properties");
    fs::copy(sq.config_path(), &path).unwrap();
    path
}

pub fn stop(mut sq: ServiceQ) {
    sq.signal("TERM");
    assert!(
        sq.wait_exit(Duration::from_secs(20)).is_some(),
        "serviceq did not stop"
    );
}

/// Whether a `queue list --json` shows the head tried (the endpoint is down) and the
/// next entry not.
pub fn only_the_head_tried(config: &Path) -> bool {
    let v: serde_json::Value =
        serde_json::from_str(&queue_ok(config, &["list", "--json"])).unwrap();
    v[0]["attempts"].as_u64() >= Some(1) && v[1]["attempts"].as_u64() == Some(0)
}

/// The dead-letter scenario's start: the proxy on `conf` with DEFERRED_Q_MAX_AGE=1,
/// four requests `d-0`…`d-3` buffered, all four dead-lettered (the log line says
/// "moved to the dead-letter `place`") and listed as such. Returns the proxy, its
/// admin address and a config copy kept in `secrets`.
pub fn start_four_dead(
    conf: Conf,
    secrets: &TempDir,
    place: &str,
) -> (ServiceQ, SocketAddr, PathBuf) {
    let (sq, admin) = start(&conf.set("DEFERRED_Q_MAX_AGE", "1").body());
    let config = kept_config(&sq, secrets);
    buffer(&sq, "d", 4);
    let moved = format!("moved to the dead-letter {place}");
    assert!(
        wait_until(REPLAY_DEADLINE, || stderr_count(&sq, &moved) >= 4),
        "not dead-lettered; stderr:\n{}",
        sq.stderr()
    );
    assert_eq!(listing(&config, false), vec![]);
    assert_eq!(
        listing(&config, true),
        (0..4).map(|i| row("d", i)).collect::<Vec<_>>()
    );
    (sq, admin, config)
}

/// Then: `d-3` dropped, and once the endpoint is up `d-2` and `d-0` retried (named out
/// of order): both delivered in their original order, `d-1` still dead.
pub fn drop_one_retry_two(sq: &ServiceQ, u: &mut Upstream, config: &Path) {
    assert_eq!(
        queue_ok(config, &["drop", "d-3"]).trim(),
        "dropped 0 queued and 1 dead requests"
    );
    u.restart();
    assert_eq!(
        queue_ok(config, &["retry-dead", "d-2", "d-0"]).trim(),
        "2 dead letters back at the queue's tail"
    );
    assert!(
        u.wait_requests(2, REPLAY_DEADLINE),
        "stderr:\n{}",
        sq.stderr()
    );
    assert!(holds_for(Duration::from_millis(500), || u.request_count() == 2));
    let targets: Vec<String> = u.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, ["/d/0", "/d/2"], "retried in their original order");
    assert_eq!(listing(config, true), vec![row("d", 1)]);
}

/// Then: the last dead letter purged.
pub fn purge_the_rest(config: &Path) {
    assert_eq!(
        queue_ok(config, &["purge", "--dead"]).trim(),
        "purged 1 dead letters"
    );
    assert_eq!(listing(config, true), vec![]);
}
