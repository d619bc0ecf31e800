//! Connections to the primary: a small pool, reconnection, sentinel discovery, and
//! the deadline every call runs under.
//!
//! A call gets one deadline (the engine timeout) for everything it does: taking or
//! opening a connection, asking the sentinels, each round trip. Before every round
//! trip the socket's read and write timeouts are set to what is left of it, so no
//! wait outlives the deadline. A connection that met a timeout or an I/O error is
//! dropped, never pooled: a late reply would be read as the answer to the next
//! command.
//!
//! The primary is in doubt after a refused connection, a broken one (in sentinel
//! mode), or a `READONLY` reply (the node was demoted by a failover). Then the
//! address is looked up again and the pool's *epoch* moves on, so connections opened
//! to the old primary are dropped as they come back instead of being reused.
//!
//! Sentinel discovery follows the Redis sentinel-client guidelines: ask each sentinel
//! in turn for `SENTINEL get-master-addr-by-name`, connect to the address named, and
//! use it only if `ROLE` says `master`. It is done here rather than with the crate's
//! `Sentinel` type because that one opens its connections without a timeout, and a
//! stalled sentinel would hold a caller past its deadline.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::{Client, Connection, ConnectionInfo, RedisError, RedisResult, Value};

use super::error::{classify, demoted, RedisQueueError};
use crate::shared_queue::{SentinelTarget, Target};

/// Idle connections kept for reuse; more than the worker threads that push at once
/// buys nothing.
pub const POOL_IDLE_MAX: usize = 64;

/// The end of one call's time.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(d: Duration) -> Deadline {
        Deadline(Instant::now() + d)
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Sets the socket timeouts of `conn` to what is left, before a round trip; an
    /// already passed deadline is a timeout without touching the socket.
    pub fn arm(&self, conn: &Connection) -> RedisResult<()> {
        let left = self.remaining();
        if left.is_zero() {
            return Err(io::Error::from(io::ErrorKind::TimedOut).into());
        }
        conn.set_read_timeout(Some(left))?;
        conn.set_write_timeout(Some(left))
    }
}

struct Idle {
    conn: Connection,
    epoch: u64,
}

/// A connection lent to one call.
pub struct Lent {
    conn: Connection,
    epoch: u64,
    /// Taken from the pool (it may have died while idle), not freshly opened.
    reused: bool,
}

pub struct Engine {
    target: Target,
    /// Sentinel mode: the primary found last, until it is in doubt.
    primary: Mutex<Option<ConnectionInfo>>,
    idle: Mutex<Vec<Idle>>,
    epoch: AtomicU64,
}

impl Engine {
    pub fn new(target: Target) -> Engine {
        Engine {
            target,
            primary: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
        }
    }

    /// Runs `op` on a connection to the primary within `deadline`. A pooled connection
    /// found dead on its first use (the engine restarted while it sat idle) is replaced
    /// once by a fresh one; that can repeat a command the engine ran and then died
    /// before answering — within at-least-once, never a loss.
    pub fn run<T>(
        &self,
        deadline: Deadline,
        mut op: impl FnMut(&mut Connection, &Deadline) -> RedisResult<T>,
    ) -> Result<T, RedisQueueError> {
        let mut retried = false;
        loop {
            let mut lent = self.checkout(&deadline)?;
            match op(&mut lent.conn, &deadline) {
                Ok(v) => {
                    self.checkin(lent);
                    return Ok(v);
                }
                Err(e) => {
                    let stale = lent.reused && e.is_connection_dropped();
                    let err = self.failed(lent, &e);
                    if stale && !retried && !deadline.remaining().is_zero() {
                        retried = true;
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// The primary's address as last used (sentinel mode: as last discovered).
    pub fn primary_addr(&self) -> Option<String> {
        match &self.target {
            Target::Direct(info) => Some(info.addr().to_string()),
            Target::Sentinel(_) => lock(&self.primary).as_ref().map(|i| i.addr().to_string()),
        }
    }

    fn checkout(&self, deadline: &Deadline) -> Result<Lent, RedisQueueError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        while let Some(idle) = lock(&self.idle).pop() {
            if idle.epoch == epoch {
                return Ok(Lent {
                    conn: idle.conn,
                    epoch,
                    reused: true,
                });
            }
        }
        let conn = self.open(deadline).inspect_err(|_| self.doubt(epoch))?;
        Ok(Lent {
            conn,
            epoch,
            reused: false,
        })
    }

    fn checkin(&self, lent: Lent) {
        if lent.epoch != self.epoch.load(Ordering::Acquire) {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < POOL_IDLE_MAX {
            idle.push(Idle {
                conn: lent.conn,
                epoch: lent.epoch,
            });
        }
    }

    /// Sorts the error, pools the connection again if it is still in step, and puts
    /// the primary in doubt when the error says it may have moved.
    fn failed(&self, lent: Lent, e: &RedisError) -> RedisQueueError {
        let err = classify(e);
        let moved = demoted(e)
            || (matches!(self.target, Target::Sentinel(_))
                && matches!(err, RedisQueueError::Unavailable(_)));
        if moved {
            self.doubt(lent.epoch);
        } else if err.connection_reusable() {
            self.checkin(lent);
        }
        err
    }

    /// Forgets the primary (sentinel mode) and retires every connection opened in
    /// `epoch`, unless another caller already did.
    fn doubt(&self, epoch: u64) {
        if self
            .epoch
            .compare_exchange(epoch, epoch + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            lock(&self.idle).clear();
            *lock(&self.primary) = None;
        }
    }

    fn open(&self, deadline: &Deadline) -> Result<Connection, RedisQueueError> {
        match &self.target {
            Target::Direct(info) => dial(info, deadline).map_err(|e| classify(&e)),
            Target::Sentinel(s) => {
                let known = lock(&self.primary).clone();
                let info = match known {
                    Some(info) => info,
                    None => discover(s, deadline)?,
                };
                let conn = dial_primary(&info, deadline)?;
                *lock(&self.primary) = Some(info);
                Ok(conn)
            }
        }
    }
}

/// Opens a connection within the deadline (TCP, TLS, AUTH, SELECT all inside it).
fn dial(info: &ConnectionInfo, deadline: &Deadline) -> RedisResult<Connection> {
    let left = deadline.remaining();
    if left.is_zero() {
        return Err(io::Error::from(io::ErrorKind::TimedOut).into());
    }
    // No CLIENT SETINFO in the handshake: the crate ignores its errors, so each of its
    // replies may wait a full socket timeout and the connect would outlive `left`.
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    let info = info.clone().set_redis_settings(settings);
    Client::open(info)?.get_connection_with_timeout(left)
}

/// Opens a connection to a node a sentinel named and checks it is the primary.
fn dial_primary(info: &ConnectionInfo, deadline: &Deadline) -> Result<Connection, RedisQueueError> {
    let mut conn = dial(info, deadline).map_err(|e| classify(&e))?;
    deadline.arm(&conn).map_err(|e| classify(&e))?;
    let role: Value = redis::cmd("ROLE")
        .query(&mut conn)
        .map_err(|e| classify(&e))?;
    if role_is_master(&role) {
        Ok(conn)
    } else {
        Err(RedisQueueError::Unavailable(format!(
            "{} is not a primary (failover under way?)",
            info.addr()
        )))
    }
}

/// Asks each sentinel in turn for the primary's address; each gets an equal share of
/// what is left of the deadline, so one stalled sentinel cannot use it all.
fn discover(s: &SentinelTarget, deadline: &Deadline) -> Result<ConnectionInfo, RedisQueueError> {
    let mut last = RedisQueueError::Unavailable("no sentinel answered".into());
    for i in 0..s.sentinels.len() {
        let left = s.sentinels.len() - i;
        let share = Deadline::after(deadline.remaining() / left as u32);
        match ask_sentinel(s, i, &share) {
            Ok(Some((host, port))) => {
                return s.node_info(&host, port).map_err(RedisQueueError::Config)
            }
            Ok(None) => {
                last = RedisQueueError::Unavailable(format!(
                    "sentinel {} knows no primary named {:?}",
                    s.sentinel_url(i),
                    s.master
                ))
            }
            Err(e) => {
                last = RedisQueueError::Unavailable(format!(
                    "sentinel {}: {}",
                    s.sentinel_url(i),
                    classify(&e)
                ))
            }
        }
    }
    Err(last)
}

fn ask_sentinel(
    s: &SentinelTarget,
    i: usize,
    deadline: &Deadline,
) -> RedisResult<Option<(String, u16)>> {
    let url = s.sentinel_url(i);
    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())?;
    let mut conn = dial(&info, deadline)?;
    deadline.arm(&conn)?;
    redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(&s.master)
        .query(&mut conn)
}

/// `ROLE`'s first element is `master` on a primary (`slave`, `sentinel` otherwise).
pub fn role_is_master(role: &Value) -> bool {
    match role {
        Value::Array(items) => {
            matches!(
                items.first(),
                Some(Value::BulkString(b)) if b == b"master"
            ) || matches!(items.first(), Some(Value::SimpleString(s)) if s == "master")
        }
        _ => false,
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data
/// (a pool of connections, an address) is still consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert!(role_is_master(&Value::Array(vec![
            b("master"),
            Value::Int(0),
            Value::Array(vec![])
        ])));
        assert!(!role_is_master(&Value::Array(vec![b("slave")])));
        assert!(!role_is_master(&Value::Array(vec![b("sentinel")])));
        assert!(!role_is_master(&Value::Nil));
    }

    #[test]
    fn a_passed_deadline_has_nothing_left() {
        let d = Deadline::after(Duration::ZERO);
        assert!(d.remaining().is_zero());
        assert!(Deadline::after(Duration::from_secs(5)).remaining() > Duration::from_secs(4));
    }

    #[test]
    fn a_refused_primary_fails_fast_and_typed() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let target = Target::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
        let engine = Engine::new(target);
        let started = Instant::now();
        let r = engine.run(Deadline::after(Duration::from_secs(2)), |c, d| {
            d.arm(c)?;
            redis::cmd("PING").query::<String>(c)
        });
        assert!(matches!(r, Err(RedisQueueError::Unavailable(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
