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
