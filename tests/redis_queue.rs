//! The shared queue's Redis backend (`serviceq::queue::redis`) against real
//! `redis-server` processes on free loopback ports (AOF on, `appendfsync always`, in a
//! temp dir): FIFO order, the shared cap under concurrent pushes, lease exclusivity
//! and fencing, deadlines when the engine is dead or stalled, durability across a
//! SIGKILL, `WAIT` for replicas, and a sentinel failover.
//!
//! Without redis-server / redis-sentinel these tests fail under `CI` and skip
//! otherwise (see `support::redis_server::have_redis`).

// Each test file uses part of the shared helpers: see tests/support/mod.rs.
#[allow(dead_code)]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serviceq::queue::redis::{LeaseState, RedisOptions, RedisQueue, RedisQueueError};
use support::redis_server::{client, have_redis, replica_in_sync, Redis, Watched};
use support::wait_until;

/// The engine timeout used here: the product default, so WAIT gets time enough for a
/// replica on a loaded machine (a fresh-clone CI run saw 400 ms fall short).
const TIMEOUT: Duration = Duration::from_millis(2000);

fn opts(url: &str, instance: &str) -> RedisOptions {
    RedisOptions {
        timeout: TIMEOUT,
        ..RedisOptions::new(url, instance)
    }
}

fn queue(url: &str, instance: &str) -> RedisQueue {
    RedisQueue::connect(opts(url, instance)).expect("connect")
}

fn queue_with_lease(redis: &Redis, instance: &str, ttl: Duration) -> RedisQueue {
    RedisQueue::connect(RedisOptions {
        lease_ttl: ttl,
        ..opts(&redis.url(), instance)
    })
    .expect("connect")
}

/// Takes the lease (the test stands in for the keeper thread).
fn take_lease(q: &RedisQueue) -> u64 {
    match q.try_acquire_or_renew_lease() {
        Ok(LeaseState::Held { fence, .. }) => fence,
        other => panic!("lease not taken: {other:?}"),
    }
}

#[test]
fn entries_come_back_oldest_first_and_leave_when_acked() {
    if !have_redis() {
        return;
    }
    let redis = Redis::primary();
    let q = queue(&redis.url(), "a");
    let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i, 0, 255, b'\r', b'\n']).collect();
    let mut ids = Vec::new();
    for p in &payloads {
        ids.push(q.push(p).expect("push"));
    }
    assert_eq!(q.depth(), Ok(5));
    assert_eq!(q.head(), Ok(None), "no lease, no head");
    take_lease(&q);
    for (i, p) in payloads.iter().enumerate() {
        let e = q.head().expect("head").expect("an entry");
        assert_eq!((&e.id, &e.payload), (&ids[i], p), "entry {i}");
        assert!(
            e.age < Duration::from_secs(5),
            "engine-clock age {:?}",
            e.age
        );
        assert!(q.still_ours(&e));
        // Head is a peek: asking again gives the same entry.
        assert_eq!(q.head().expect("head").map(|h| h.id), Some(e.id.clone()));
        assert_eq!(q.ack(&e), Ok(true));
    }
    assert_eq!(q.head(), Ok(None));
    assert_eq!(q.depth(), Ok(0));
    let s = q.status();
    assert_eq!((s.depth, s.holding, s.engine_errors), (Some(0), true, 0));
}

#[test]
fn the_shared_cap_holds_under_concurrent_pushes_from_two_instances() {
    if !have_redis() {
        return;
    }
    let redis = Redis::primary();
    const CAP: usize = 50;
    let make = |who: &str| {
        Arc::new(
            RedisQueue::connect(RedisOptions {
                max_len: CAP,
                timeout: Duration::from_secs(5),
                ..RedisOptions::new(&redis.url(), who)
            })
            .expect("connect"),
        )
    };
    let (a, b) = (make("a"), make("b"));
    let (stored, full) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let q = Arc::clone(if t % 2 == 0 { &a } else { &b });
            let (stored, full) = (Arc::clone(&stored), Arc::clone(&full));
            thread::spawn(move || {
                for i in 0..20 {
                    match q.push(format!("{t}-{i}").as_bytes()) {
                        Ok(_) => stored.fetch_add(1, Ordering::SeqCst),
                        Err(RedisQueueError::Full { cap }) => {
                            assert_eq!(cap, CAP);
                            full.fetch_add(1, Ordering::SeqCst)
                        }
                        Err(e) => panic!("push: {e}"),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("pusher");
    }
    assert_eq!(stored.load(Ordering::SeqCst), CAP);
    assert_eq!(full.load(Ordering::SeqCst), 8 * 20 - CAP);
    assert_eq!(a.depth(), Ok(CAP as u64));
    let code = RedisQueueError::Full { cap: CAP }.log_code();
    assert_eq!((code.number(), code.name()), (802, "QUEUE_FULL"));
}

#[test]
fn only_one_instance_holds_the_lease_and_a_new_holder_gets_a_higher_fence() {
    if !have_redis() {
        return;
    }
    let redis = Redis::primary();
    let (a, b) = (queue(&redis.url(), "a:1"), queue(&redis.url(), "b:2"));
    a.push(b"x").expect("push");
    let fence_a = take_lease(&a);
    assert_eq!(
        b.try_acquire_or_renew_lease(),
        Ok(LeaseState::HeldBy {
            holder: "a:1".into(),
            fence: fence_a
        })
    );
    assert!(a.holds_lease() && !b.holds_lease());
    assert_eq!(b.head(), Ok(None), "the non-holder reads no head");
    assert!(a.head().expect("head").is_some());
    // Renewing keeps the same fence.
    assert_eq!(
        a.try_acquire_or_renew_lease(),
        Ok(LeaseState::Held {
            fence: fence_a,
            acquired: false
        })
    );
    a.release_lease();
    assert!(!a.holds_lease());
    let fence_b = take_lease(&b);
    assert!(fence_b > fence_a, "{fence_b} > {fence_a}");
    assert_eq!(
        b.status().lease,
        Some(LeaseState::Held {
            fence: fence_b,
            acquired: true
        })
    );
    assert_eq!(a.head(), Ok(None));
}

#[test]
fn a_holder_paused_past_its_lease_cannot_ack_or_dead_letter() {
    if !have_redis() {
        return;
    }
    let redis = Redis::primary();
    let ttl = Duration::from_millis(300);
    let (a, b) = (
        queue_with_lease(&redis, "a", ttl),
        queue_with_lease(&redis, "b", ttl),
    );
    a.push(b"first").expect("push");
    a.push(b"second").expect("push");
    take_lease(&a);
    let seen_by_a = a.head().expect("head").expect("entry");
    // "Paused": no renewal while the TTL runs out (as with SIGSTOP, the monotonic
    // clock keeps going), and another instance takes over meanwhile.
    assert!(wait_until(Duration::from_secs(5), || matches!(
        b.try_acquire_or_renew_lease(),
        Ok(LeaseState::Held { .. })
    )));
    assert!(!a.still_ours(&seen_by_a), "a must see at once that it lost");
    assert_eq!(a.ack(&seen_by_a), Ok(false));
    assert_eq!(a.dead_letter(&seen_by_a, "too old"), Ok(false));
    // Nothing was removed: the new holder gets the same head.
    let seen_by_b = b.head().expect("head").expect("entry");
    assert_eq!(
        (&seen_by_b.id, &seen_by_b.payload[..]),
        (&seen_by_a.id, &b"first"[..])
    );
    assert!(seen_by_b.fence > seen_by_a.fence);
    // Even with nobody else taking it, a lease that expired is not acked under.
    assert_eq!(b.ack(&seen_by_b), Ok(true));
    let next = b.head().expect("head").expect("entry");
    thread::sleep(ttl + Duration::from_millis(100));
    assert!(!b.still_ours(&next));
    assert_eq!(b.ack(&next), Ok(false));
    assert_eq!(b.depth(), Ok(1));
}

#[test]
fn the_keeper_renews_well_inside_the_ttl_and_release_hands_over_at_once() {
    if !have_redis() {
        return;
    }
    let redis = Redis::primary();
    let ttl = Duration::from_millis(600);
    let (a, b) = (
        queue_with_lease(&redis, "a", ttl),
        queue_with_lease(&redis, "b", ttl),
    );
    a.keep_lease().expect("keeper");
    assert!(wait_until(Duration::from_secs(5), || a.holds_lease()));
    // Three TTLs later a still holds it, with the fence it took.
    let fence = a.status().lease;
    let started = Instant::now();
    while started.elapsed() < ttl * 3 {
        assert!(a.holds_lease(), "lost after {:?}", started.elapsed());
        assert!(matches!(
            b.try_acquire_or_renew_lease(),
            Ok(LeaseState::HeldBy { .. })
        ));
        thread::sleep(Duration::from_millis(50));
    }
    assert!(matches!(
        (fence, a.status().lease),
        (Some(LeaseState::Held { fence: f1, .. }), Some(LeaseState::Held { fence: f2, .. })) if f1 == f2
    ));
    a.release_lease();
    assert!(matches!(
        b.try_acquire_or_renew_lease(),
        Ok(LeaseState::Held { acquired: true, .. })
    ));
}

#[test]
fn dead_letters_move_to_the_second_stream_with_their_reason() {
    if !have_redis() {
        return;
    }
    let redis = Redis::primary();
    let q = queue(&redis.url(), "a");
    q.push(b"stale").expect("push");
    q.push(b"fresh").expect("push");
    take_lease(&q);
    let e = q.head().expect("head").expect("entry");
    assert_eq!(q.dead_letter(&e, "DEFERRED_Q_MAX_AGE"), Ok(true));
    assert_eq!(
        q.head().expect("head").map(|e| e.payload),
        Some(b"fresh".to_vec())
    );
    let mut conn = client(redis.port);
    let dead: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("sq:{serviceq}:dead")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("xrange");
    assert_eq!(dead.ids.len(), 1);
    let field = |k: &str| -> Vec<u8> { dead.ids[0].get(k).expect(k) };
    assert_eq!(field("p"), b"stale");
    assert_eq!(field("reason"), b"DEFERRED_Q_MAX_AGE");
    assert_eq!(field("id"), e.id.0.as_bytes());
    assert_eq!(field("by"), b"a");
}

#[test]
fn a_dead_or_stalled_engine_fails_each_call_within_the_timeout() {
    if !have_redis() {
        return;
    }
    let mut redis = Redis::primary();
    let q = queue(&redis.url(), "a");
    q.push(b"before").expect("push");
    let bound = TIMEOUT + Duration::from_millis(300);

    // Stalled (SIGSTOP): TCP still accepts, nothing answers.
    redis.signal("STOP");
    let started = Instant::now();
    let r = q.push(b"while stopped");
    assert_eq!(r, Err(RedisQueueError::TimedOut));
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    let started = Instant::now();
    assert_eq!(q.depth(), Err(RedisQueueError::TimedOut));
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    redis.signal("CONT");
    assert!(wait_until(Duration::from_secs(5), || q
        .push(b"after cont")
        .is_ok()));

    // Killed: refused at once.
    redis.kill();
    let started = Instant::now();
    let r = q.push(b"while dead");
    assert!(matches!(r, Err(RedisQueueError::Unavailable(_))), "{r:?}");
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    let s = q.status();
    assert!(s.engine_errors >= 3, "{s:?}");
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("QUEUE_ENGINE_UNAVAILABLE")),
        "{s:?}"
    );
    assert_eq!(r.unwrap_err().log_code().number(), 801);

    // Back on the same port and directory: the handle reconnects by itself, and every
    // confirmed push survived the SIGKILL (AOF, fsync always).
    redis.restart();
    q.push(b"after restart").expect("push after restart");
    assert_eq!(q.depth(), Ok(3));
}

#[test]
fn an_unreachable_engine_is_an_error_at_connect_but_not_at_open() {
    if !have_redis() {
        return;
    }
    let mut redis = Redis::primary();
    let url = redis.url();
    redis.kill();
    assert!(matches!(
        RedisQueue::connect(opts(&url, "a")),
        Err(RedisQueueError::Unavailable(_))
    ));
    let q = RedisQueue::open(opts(&url, "a")).expect("open needs no engine");
    assert!(q.push(b"x").is_err());
    redis.restart();
    assert!(q.push(b"x").is_ok());
}

#[test]
fn a_push_not_confirmed_by_enough_replicas_fails_and_leaves_nothing() {
    if !have_redis() {
        return;
    }
    let primary = Redis::primary();
    let alone = RedisQueue::connect(RedisOptions {
        replicas: 1,
        ..opts(&primary.url(), "a")
    })
    .expect("connect");
    let started = Instant::now();
    assert_eq!(
        alone.push(b"x"),
        Err(RedisQueueError::Unreplicated {
            confirmed: 0,
            wanted: 1
        })
    );
    assert!(started.elapsed() < TIMEOUT + Duration::from_millis(300));
    assert_eq!(alone.depth(), Ok(0), "the unconfirmed entry was removed");

    let replica = Redis::replica_of(primary.port);
    assert!(replica_in_sync(&replica), "{}", replica.log());
    alone
        .push(b"y")
        .expect("a replica in sync: WAIT 1 confirms");
    assert_eq!(alone.depth(), Ok(1));
}

#[test]
fn a_sentinel_failover_is_followed_and_confirmed_entries_survive_it() {
    if !have_redis() {
        return;
    }
    let Watched {
        mut primary,
        replica,
        sentinel,
        url,
    } = Watched::start();
    let q = RedisQueue::connect(RedisOptions {
        replicas: 1,
        ..opts(&url, "a")
    })
    .expect("connect through the sentinel");
    for i in 0..10u8 {
        q.push(&[i]).expect("push before failover");
    }
    // A second handle that asks for no replica (the promoted one will have none, and
    // WAIT 1 would refuse every push), connected to the old primary before the kill.
    let q = RedisQueue::connect(opts(&url, "b")).expect("connect");
    let before = format!("127.0.0.1:{}", primary.port);
    assert_eq!(q.status().primary.as_deref(), Some(before.as_str()));

    primary.kill();
    // Pushes fail (never hang past the timeout) until the sentinel promotes the
    // replica; then the same handle finds it and writes there.
    let after = format!("127.0.0.1:{}", replica.port);
    let moved = wait_until(Duration::from_secs(30), || {
        let started = Instant::now();
        let ok = q.push(b"after").is_ok();
        assert!(started.elapsed() < TIMEOUT + Duration::from_millis(500));
        ok && q.status().primary.as_deref() == Some(after.as_str())
    });
    assert!(moved, "no failover: {:?}\n{}", q.status(), sentinel.log());
    // Every push confirmed by WAIT 1 before the kill is on the new primary, in order.
    take_lease(&q);
    for i in 0..10u8 {
        let e = q.head().expect("head").expect("entry");
        assert_eq!(e.payload, vec![i]);
        assert_eq!(q.ack(&e), Ok(true));
    }
}

#[test]
fn check_reports_the_engine_and_each_unsafe_setting() {
    if !have_redis() {
        return;
    }
    let redis = Redis::primary();
    let q = queue(&redis.url(), "a");
    q.push(b"x").expect("push");
    let report = q.check().expect("check");
    assert_eq!(report.depth, 1);
    assert!(
        report.version.starts_with(|c: char| c.is_ascii_digit()),
        "{report:?}"
    );
    assert!(
        report.skew_ms.abs() < 250,
        "same host, same clock: {report:?}"
    );
    assert_eq!(
        report.warnings,
        Vec::<String>::new(),
        "the test server is set up safely"
    );
    let mut conn = client(redis.port);
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg("everysec")
        .query::<()>(&mut conn)
        .expect("config set");
    let report = q.check().expect("check");
    assert_eq!(report.warnings.len(), 1, "{report:?}");
    assert!(report.warnings[0].starts_with("appendfsync"), "{report:?}");
}
