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

use std::path::Path;
use std::time::Duration;

use support::queue::*;
use support::queue_ops::*;
use support::redis_server::{have_redis, Redis};
use support::*;

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
    let (sq, _admin) = start(&ops_conf(&u, &redis, &token_file(&secrets)).body());
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
        wait_until(Duration::from_secs(10), || only_the_head_tried(&config)),
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
    let conf = ops_conf(&u, &redis, &token_file(&secrets));
    let (sq, _admin, config) = start_four_dead(conf, &secrets, "stream");
    let text = queue_ok(&config, &["list", "--dead"]);
    assert!(text.contains("over DEFERRED_Q_MAX_AGE (1s)"), "{text}");

    drop_one_retry_two(&sq, &mut u, &config);
    purge_the_rest(&config);
}
