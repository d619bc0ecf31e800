//! The shared queue (DEFERRED_Q_BACKEND=redis://…) through the real binary, against
//! real `redis-server` / `redis-sentinel` processes on free loopback ports (AOF on,
//! `appendfsync always`, temp dirs):
//!
//! * three instances, one FIFO: 300 numbered POSTs spread across them while the
//!   cluster is down are all Buffered; once the endpoint is back the lease holder is
//!   SIGKILLed after ~50 deliveries, and all 300 still arrive, first arrivals in the
//!   engine's order, at most the one in flight twice;
//! * Redis SIGKILLed and restarted while clients buffer: every Buffered request is
//!   delivered, none that was refused;
//! * Redis down: the no-queue answer with an 801 error-log line, live traffic flows,
//!   buffering resumes by itself when Redis is back; /metrics shows it all;
//! * the replayer SIGSTOPped past its lease: once resumed it neither delivers nor
//!   acknowledges what it held;
//! * a sentinel failover: the instance follows it and keeps buffering and delivering;
//! * `--check` reaches Redis, or fails saying it cannot.
//!
//! Without redis-server / redis-sentinel these fail under `CI` and skip otherwise.

// Each test file uses part of the shared helpers: see tests/support/mod.rs.
#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::queue::*;
use support::redis_server::{have_redis, Redis, Watched};
use support::*;

const HOST: &str = "shared.test";
/// Short lease and timeout, so takeovers and refusals are quick to see.
const LEASE: &str = "1";
const TIMEOUT: &str = "0.5";

/// The queue on `redis_url` for `endpoint`, one attempt per request, every request
/// eligible.
fn shared_conf(endpoint: &str, redis_url: &str) -> Conf {
    queue_conf(&[endpoint.to_string()], "ALL")
        .set("DEFERRED_Q_BACKEND", redis_url)
        .set("DEFERRED_Q_REDIS_LEASE", LEASE)
        .set("DEFERRED_Q_REDIS_TIMEOUT", TIMEOUT)
}

fn id(i: usize) -> String {
    format!("req-{i:03}")
}

fn post(sq: &ServiceQ, i: usize) -> Response {
    let body = format!("body of {}", id(i));
    request(
        sq.addr(),
        &raw_request("POST", HOST, "/orders", body.as_bytes(), Some(&id(i))),
    )
}

fn is_buffered(r: &Response) -> bool {
    r.status == 503 && r.body_str() == r#"{"sq_msg":"Request Buffered"}"#
}

/// The X-Request-Id of each request the endpoint got, in arrival order.
fn arrivals(u: &Upstream) -> Vec<String> {
    u.requests()
        .iter()
        .filter_map(|r| r.header("X-Request-Id").map(str::to_string))
        .collect()
}

/// Waits until the endpoint has seen every id in `ids`.
fn wait_all_arrived(u: &Upstream, ids: &[String], timeout: Duration) -> bool {
    wait_until(timeout, || {
        let got = arrivals(u);
        ids.iter().all(|i| got.contains(i))
    })
}

/// Ids that arrived more than once.
fn duplicates(got: &[String]) -> Vec<String> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for g in got {
        *count.entry(g).or_default() += 1;
    }
    let mut d: Vec<_> = count
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(g, _)| g.to_string())
        .collect();
    d.sort();
    d
}

/// The first arrival of each id, in arrival order.
fn first_arrivals(got: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    got.iter().filter(|g| seen.insert(*g)).cloned().collect()
}

fn holds_lease(sq: &ServiceQ) -> bool {
    sq.stderr().contains("replay lease taken")
}

#[test]
fn three_instances_share_one_fifo_and_survive_the_lease_holder_being_killed() {
    if !have_redis() {
        return;
    }
    let redis = Redis::primary();
    let mut up = down_upstream(Behaviour::Slow(Duration::from_millis(10)));
    let mut instances: Vec<ServiceQ> = (0..3)
        .map(|_| shared_conf(&up.url(), &redis.url()).start())
        .collect();
    let ids: Vec<String> = (0..300).map(id).collect();
    for i in 0..300 {
        let r = post(&instances[i % 3], i);
        assert!(is_buffered(&r), "{}: {} {}", id(i), r.status, r.body_str());
    }
    assert!(
        wait_until(Duration::from_secs(10), || instances
            .iter()
            .filter(|sq| holds_lease(sq))
            .count()
            == 1),
        "exactly one instance takes the lease"
    );
    let holder = instances
        .iter()
        .position(holds_lease)
        .expect("a lease holder");
    up.restart();
    assert!(
        up.wait_requests(50, Duration::from_secs(30)),
        "replay began"
    );
    instances[holder].signal("KILL");
    let _ = instances[holder].wait_exit(Duration::from_secs(5));
    assert!(
        wait_all_arrived(&up, &ids, Duration::from_secs(60)),
        "all 300 arrive after the holder died; {} did",
        first_arrivals(&arrivals(&up)).len()
    );
    let got = arrivals(&up);
    assert_eq!(
        first_arrivals(&got),
        ids,
        "first arrivals in the engine's order"
    );
    let twice = duplicates(&got);
    assert!(
        twice.len() <= 1,
        "at most the in-flight one twice: {twice:?}"
    );
    let survivors: Vec<_> = (0..3).filter(|&i| i != holder).collect();
    assert!(
        survivors.iter().any(|&i| holds_lease(&instances[i])),
        "a survivor took over"
    );
    instances.clear();
}

#[test]
fn redis_killed_and_restarted_while_clients_buffer_loses_no_buffered_request() {
    if !have_redis() {
        return;
    }
    let mut redis = Redis::primary();
    let mut up = down_upstream(Behaviour::Ok);
    let sq = shared_conf(&up.url(), &redis.url()).start();
    // (request number, Buffered?, when its client sent it)
    let answers: Arc<Mutex<Vec<(usize, bool, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = sq.addr();
    let clients: Vec<_> = (0..2)
        .map(|t| {
            let (answers, stop) = (Arc::clone(&answers), Arc::clone(&stop));
            thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::SeqCst) && i < 2000 {
                    let raw = raw_request("POST", HOST, "/o", b"x", Some(&id(i)));
                    let sent = Instant::now();
                    let r = request(addr, &raw);
                    answers.lock().unwrap().push((i, is_buffered(&r), sent));
                    i += 2;
                }
            })
        })
        .collect();
    let count = |buffered: bool| {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b, _)| *b == buffered)
            .count()
    };
    assert!(wait_until(Duration::from_secs(10), || count(true) >= 20));
    redis.kill();
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || count(false) >= 5),
        "refusals while Redis is dead"
    );
    redis.restart();
    let after = count(true);
    assert!(
        wait_until(Duration::from_secs(10), || count(true) >= after + 20),
        "buffering resumed by itself"
    );
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    up.restart();
    let answers = answers.lock().unwrap().clone();
    let buffered: Vec<String> = answers.iter().filter(|a| a.1).map(|a| id(a.0)).collect();
    // A push the engine wrote to its AOF just before the SIGKILL survives it even
    // though its client never heard back (the page cache outlives the process): those
    // in flight at the kill, at most one per client, may be delivered. Nothing sent
    // once the engine was dead, and refused, may.
    let (in_flight, refused): (Vec<&(usize, bool, Instant)>, Vec<_>) =
        answers.iter().filter(|a| !a.1).partition(|a| a.2 < killed);
    let refused: Vec<String> = refused.iter().map(|a| id(a.0)).collect();
    let in_flight: Vec<String> = in_flight.iter().map(|a| id(a.0)).collect();
    assert!(
        wait_all_arrived(&up, &buffered, Duration::from_secs(60)),
        "every Buffered request is delivered"
    );
    // Let the replay finish anything else it holds before looking for refused ones.
    assert!(wait_drained_shared(&sq, Duration::from_secs(20)));
    let got = arrivals(&up);
    let leaked: Vec<_> = refused.iter().filter(|r| got.contains(r)).collect();
    assert!(leaked.is_empty(), "refused but delivered: {leaked:?}");
    let survived: Vec<_> = in_flight.iter().filter(|r| got.contains(r)).collect();
    assert!(
        survived.len() <= 2,
        "one in flight per client at most: {survived:?}"
    );
}

/// Waits until the replay logged a delivery that emptied the shared queue.
fn wait_drained_shared(sq: &ServiceQ, timeout: Duration) -> bool {
    wait_until(timeout, || sq.stderr().contains("; 0 left"))
}

#[test]
fn with_redis_down_clients_get_the_no_queue_answer_and_live_traffic_flows() {
    if !have_redis() {
        return;
    }
    let mut redis = Redis::primary();
    let mut up = down_upstream(Behaviour::Ok);
    let (sq, admin) = start_with_admin(shared_conf(&up.url(), &redis.url()));
    let target = redis.url();
    assert!(is_buffered(&post(&sq, 0)));
    let metrics = get(admin, "/metrics").body_str();
    assert!(
        metrics.contains("serviceq_queue_backend{backend=\"redis\"} 1"),
        "{metrics}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || get(admin, "/metrics")
            .body_str()
            .contains("serviceq_queue_lease_held 1")),
        "the only instance holds the lease"
    );

    redis.kill();
    let started = Instant::now();
    let r = post(&sq, 1);
    assert_sq_response(&r, 503, "Service Unavailable", &[]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the timeout"
    );
    assert!(
        sq.wait_for_error_log(Duration::from_secs(5), |lines| lines
            .iter()
            .any(|l| is_log_line(l, &target, 801, "QUEUE_ENGINE_UNAVAILABLE"))),
        "801 line for {target}: {:?}",
        sq.error_log_lines()
    );
    let status = get(admin, "/status").body_str();
    assert!(status.contains("backend redis"), "{status}");
    assert!(status.contains("QUEUE_ENGINE_UNAVAILABLE"), "{status}");

    // Live traffic does not need the queue.
    up.restart();
    let live = request(sq.addr(), &raw_request("GET", HOST, "/live", b"", None));
    assert_eq!(live.status, 200, "{}", live.body_str());

    // Back: buffering resumes by itself, and what was buffered before is delivered.
    up.stop();
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(10), || is_buffered(&post(&sq, 2))),
        "buffering resumed"
    );
    up.restart();
    let want = [id(0), id(2)];
    assert!(wait_all_arrived(&up, &want, Duration::from_secs(30)));
    assert!(
        !arrivals(&up).contains(&id(1)),
        "the refused one never arrives"
    );
}

#[test]
fn a_replayer_stopped_past_its_lease_neither_delivers_nor_acks_after_resuming() {
    if !have_redis() {
        return;
    }
    let redis = Redis::primary();
    let mut up = down_upstream(Behaviour::Ok);
    let a = shared_conf(&up.url(), &redis.url()).start();
    assert!(wait_until(Duration::from_secs(5), || holds_lease(&a)));
    for i in 0..3 {
        assert!(is_buffered(&post(&a, i)));
    }
    // a holds head 0 and retries it (the endpoint is down) when it is stopped.
    assert!(a.wait_for_stderr("replay of POST /orders failed", Duration::from_secs(5)));
    let b = shared_conf(&up.url(), &redis.url()).start();
    a.signal("STOP");
    assert!(
        wait_until(Duration::from_secs(10), || holds_lease(&b)),
        "b takes over once a's lease expired"
    );
    up.restart();
    let ids: Vec<String> = (0..3).map(id).collect();
    assert!(wait_all_arrived(&up, &ids, Duration::from_secs(20)));
    assert!(wait_drained_shared(&b, Duration::from_secs(10)));
    a.signal("CONT");
    // a wakes inside its retry pause with head 0 in hand: it must drop it.
    assert!(
        a.wait_for_stderr("the queue's lease was lost", Duration::from_secs(10)),
        "{}",
        a.stderr()
    );
    assert!(holds_for(Duration::from_secs(2), || arrivals(&up).len() == 3));
    assert_eq!(
        arrivals(&up),
        ids,
        "each once, in order: {:?}",
        arrivals(&up)
    );
    assert!(!a.stderr().contains("replayed POST"), "a acked nothing");
}

#[test]
fn the_instances_follow_a_sentinel_failover() {
    if !have_redis() {
        return;
    }
    let Watched {
        mut primary,
        replica: _replica,
        sentinel,
        url,
    } = Watched::start();
    let mut up = down_upstream(Behaviour::Ok);
    // `confirmed` waits for the replica (WAIT 1); `plain` takes the primary's word.
    let confirmed = shared_conf(&up.url(), &url)
        .set("DEFERRED_Q_REDIS_REPLICAS", "1")
        .start();
    let plain = shared_conf(&up.url(), &url).start();
    for i in 0..5 {
        assert!(is_buffered(&post(&confirmed, i)), "{}", id(i));
    }
    assert!(is_buffered(&post(&plain, 5)));
    // Everything so far is on the replica before the primary dies.
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut support::redis_server::client(primary.port))
        .expect("WAIT");
    assert_eq!(acked, 1);
    primary.kill();
    // The same instance finds the promoted replica through the sentinel by itself.
    let mut next = 6;
    let moved = wait_until(Duration::from_secs(30), || {
        next += 1;
        is_buffered(&post(&plain, next))
    });
    assert!(moved, "no failover followed: {}", sentinel.log());
    // The new primary has no replica: WAIT 1 cannot confirm, so that instance answers
    // as if the queue were off, and says why in its error log.
    assert_sq_response(&post(&confirmed, 999), 503, "Service Unavailable", &[]);
    assert!(
        confirmed.wait_for_error_log(Duration::from_secs(5), |lines| lines
            .iter()
            .any(|l| l.contains("[Code: 801, QUEUE_ENGINE_UNREPLICATED]")))
    );
    up.restart();
    let mut want: Vec<String> = (0..6).map(id).collect();
    want.push(id(next));
    assert!(
        wait_all_arrived(&up, &want, Duration::from_secs(30)),
        "confirmed before the failover, and after it: {:?}",
        arrivals(&up)
    );
    assert!(!arrivals(&up).contains(&id(999)));
}

#[test]
fn check_reaches_redis_or_says_it_cannot() {
    if !have_redis() {
        return;
    }
    let mut redis = Redis::primary();
    let body = shared_conf(&refusing_url(), &redis.url()).body();
    let ok = run_check(&body, &["--check"]);
    assert_eq!(ok.code(), Some(0), "{}", ok.describe());
    assert!(
        ok.stdout.contains("queue         redis redis://127.0.0.1"),
        "{}",
        ok.describe()
    );
    assert!(ok.stdout.contains("shared queue"), "{}", ok.describe());
    assert!(ok.stdout.contains("lease free"), "{}", ok.describe());
    redis.kill();
    let down = run_check(&body, &["--check"]);
    assert_eq!(down.code(), Some(1), "{}", down.describe());
    assert!(
        down.last_stderr_line()
            .contains("cannot reach the shared queue"),
        "{}",
        down.describe()
    );
}

#[test]
fn a_stopping_instance_hands_the_lease_over_at_once() {
    if !have_redis() {
        return;
    }
    let redis = Redis::primary();
    let up = down_upstream(Behaviour::Ok);
    // A lease far longer than the test: only a release lets b take over in time.
    let conf = || shared_conf(&up.url(), &redis.url()).set("DEFERRED_Q_REDIS_LEASE", "60");
    let mut a = conf().start();
    assert!(wait_until(Duration::from_secs(5), || holds_lease(&a)));
    let b = conf().start();
    a.signal("TERM");
    assert!(a.wait_exit(Duration::from_secs(15)).is_some(), "a stops");
    assert!(
        wait_until(Duration::from_secs(10), || holds_lease(&b)),
        "b takes the lease well before its 60 s TTL"
    );
}
