//! Real Redis processes for the shared-queue tests: `redis-server` on a free loopback
//! port with AOF on and `appendfsync always` in a temp dir, replicas of it, and
//! `redis-sentinel` watching one. Every process is SIGKILLed on drop.
//!
//! [`have_redis`] is the gate: without the binaries a test fails when `CI` is set (CI
//! installs them, see `.ci/run`) and skips with a reason otherwise.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{refusing_port, require_tool, send_signal, wait_until, TempDir};

/// How long a fresh redis-server gets to answer PING.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// Whether redis-server and redis-sentinel can run here; fails the test under `CI`
/// when not (see `require`).
pub fn have_redis() -> bool {
    require_tool("redis-server", "--version") && require_tool("redis-sentinel", "--version")
}

/// Opens a plain client connection (the test's own view of the engine).
pub fn client(port: u16) -> redis::Connection {
    let c = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("client");
    let conn = c
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect to redis");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    conn
}

/// Whether something on `port` answers PING with PONG.
pub fn pings(port: u16) -> bool {
    let Ok(c) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(mut conn) = c.get_connection_with_timeout(Duration::from_millis(300)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(300)));
    redis::cmd("PING")
        .query::<String>(&mut conn)
        .is_ok_and(|r| r == "PONG")
}

/// One redis-server (or redis-sentinel) process with its own directory.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    args: Vec<String>,
    sentinel: bool,
}

impl Redis {
    /// A primary: AOF on, fsync always, no RDB snapshots, loopback only.
    pub fn primary() -> Redis {
        Redis::server(&[])
    }

    /// A replica of the server on `primary_port`.
    pub fn replica_of(primary_port: u16) -> Redis {
        Redis::server(&["--replicaof", "127.0.0.1", &primary_port.to_string()])
    }

    /// A sentinel watching the primary on `primary_port` as `master`, quorum 1,
    /// declaring it down after `down_ms` without an answer.
    pub fn sentinel(master: &str, primary_port: u16, down_ms: u64) -> Redis {
        Redis::launch(true, TempDir::new("redis-sentinel"), |port, dir| {
            let conf = dir.join("sentinel.conf");
            let body = format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\nlogfile {}\n\
                 sentinel monitor {master} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {master} {down_ms}\n\
                 sentinel failover-timeout {master} 10000\n",
                dir.path().display(),
                dir.join("sentinel.log").display(),
            );
            fs::write(&conf, body).expect("write sentinel.conf");
            vec![conf.display().to_string()]
        })
    }

    fn server(extra: &[&str]) -> Redis {
        Redis::launch(false, TempDir::new("redis"), |port, dir| {
            let (port, path, log) = (
                port.to_string(),
                dir.path().display().to_string(),
                dir.join("redis.log").display().to_string(),
            );
            let mut args: Vec<String> = [
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--dir",
                &path,
                "--logfile",
                &log,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        })
    }

    /// Starts the process on a free port, trying again on another when it does not
    /// answer PING in time (another test may have taken the port meanwhile).
    fn launch(
        sentinel: bool,
        dir: TempDir,
        args_for: impl Fn(u16, &TempDir) -> Vec<String>,
    ) -> Redis {
        for _ in 0..5 {
            let port = refusing_port();
            let args = args_for(port, &dir);
            if let Some(child) = spawn(sentinel, &args, port) {
                return Redis {
                    child: Some(child),
                    port,
                    dir,
                    args,
                    sentinel,
                };
            }
            eprintln!("redis on {port} did not start; trying another port");
        }
        panic!("redis would not start on any of 5 ports");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The server's own log (for assertion messages).
    pub fn log(&self) -> String {
        let name = if self.sentinel {
            "sentinel.log"
        } else {
            "redis.log"
        };
        fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// SIGKILL and reap: no shutdown, no final fsync.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and directory (the AOF is replayed).
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.sentinel, &self.args, self.port);
        assert!(
            self.child.is_some(),
            "redis on {} did not restart: {}",
            self.port,
            self.log()
        );
    }

    /// Sends a signal by name (`STOP`, `CONT`) with the `kill` utility.
    pub fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // A stopped process still dies of SIGKILL.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts redis-server (or redis-sentinel) and waits for PING on `port`; None (the
/// process killed) when it does not answer in time.
fn spawn(sentinel: bool, args: &[String], port: u16) -> Option<Child> {
    let tool = if sentinel {
        "redis-sentinel"
    } else {
        "redis-server"
    };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {tool}: {e}"));
    if wait_until(READY_DEADLINE, || pings(port)) {
        return Some(child);
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Waits until the replica's link to its primary is up (initial sync done).
pub fn replica_in_sync(replica: &Redis) -> bool {
    let mut conn = client(replica.port);
    wait_until(Duration::from_secs(20), || {
        redis::cmd("INFO")
            .arg("replication")
            .query::<String>(&mut conn)
            .is_ok_and(|i| i.contains("master_link_status:up"))
    })
}

/// Waits until the sentinel knows `n` replicas of `master` (it learns them from the
/// primary's INFO, polled every 10 s; a failover needs one).
pub fn sentinel_sees_replicas(sentinel: &Redis, master: &str, n: usize) -> bool {
    let mut conn = client(sentinel.port);
    wait_until(Duration::from_secs(20), || {
        redis::cmd("SENTINEL")
            .arg("replicas")
            .arg(master)
            .query::<Vec<redis::Value>>(&mut conn)
            .is_ok_and(|r| r.len() >= n)
    })
}

/// A primary, one replica in sync with it, and a sentinel that knows both, watching
/// the primary as `sq-master` (down after 500 ms): ready for a failover.
pub struct Watched {
    pub primary: Redis,
    pub replica: Redis,
    pub sentinel: Redis,
    /// `redis+sentinel://…/sq-master`, for the queue.
    pub url: String,
}

impl Watched {
    pub fn start() -> Watched {
        let primary = Redis::primary();
        let replica = Redis::replica_of(primary.port);
        let sentinel = Redis::sentinel("sq-master", primary.port, 500);
        assert!(
            sentinel_sees_replicas(&sentinel, "sq-master", 1),
            "{}",
            sentinel.log()
        );
        assert!(replica_in_sync(&replica), "{}", replica.log());
        let url = format!("redis+sentinel://127.0.0.1:{}/sq-master", sentinel.port);
        Watched {
            primary,
            replica,
            sentinel,
            url,
        }
    }
}
