//! Operating the queue (`serviceq queue …` and the admin API's `/queue` endpoints)
//! through the real binary: listing what is buffered (offline from the journal and
//! online over the admin API, the same content), showing one request, dropping one so
//! that a restart does not bring it back, dead letters after DEFERRED_Q_MAX_AGE with
//! their reason, retrying them (delivered in their original order), purging them, and
//! the ADMIN_TOKEN_FILE checks (off without the key; 401 and a 602 error-log line for a
//! missing or wrong token).

// Each test file uses part of the shared helpers: see tests/support/mod.rs.
#[allow(dead_code)]
mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use support::queue::*;
use support::queue_ops::*;
use support::*;

/// Deferred queue for POST with a journal in `journal`, an admin listener and a token.
fn ops_conf(u: &Upstream, journal: &Path, token: &Path) -> Conf {
    queue_conf(&[u.url()], "POST")
        .set("DEFERRED_Q_DIR", &journal.display().to_string())
        .set("ADMIN_ADDRESS", "127.0.0.1")
        .set("ADMIN_PORT", &refusing_port().to_string())
        .set("ADMIN_TOKEN_FILE", &token.display().to_string())
}

#[test]
fn list_show_and_drop_online_and_offline_and_a_drop_survives_a_restart() {
    let journal = TempDir::new("ops-journal");
    let secrets = TempDir::new("ops-secret");
    let mut u = down_upstream(Behaviour::Echo);
    let body = ops_conf(&u, journal.path(), &token_file(&secrets)).body();
    let (sq, admin) = start(&body);
    buffer(&sq, "q", 4);
    let config = kept_config(&sq, &secrets);

    // Online (the running process holds the journal's lock): the admin API answers.
    let online = listing(&config, false);
    assert_eq!(online, (0..4).map(|i| row("q", i)).collect::<Vec<_>>());
    let text = queue_ok(&config, &["list"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], "POS\tID\tMETHOD\tTARGET\tBYTES\tAGE\tATTEMPTS",
        "{text}"
    );
    assert!(lines[2].starts_with("2\tq-1\tPOST\t/q/1\t11\t"), "{text}");
    // The head has been tried (the endpoint is down); the others not.
    let tried = || only_the_head_tried(&config);
    assert!(wait_until(Duration::from_secs(10), tried));

    let status = get(admin, "/status").body_str();
    assert!(
        status.contains("<tr><td>q-1</td><td>POST</td><td>/q/1</td><td>"),
        "/status lists the oldest queued: {status}"
    );
    assert!(status.contains("Dead letters: <b>0</b>"), "{status}");

    let shown = queue_ok(&config, &["show", "q-2"]);
    assert!(
        shown.starts_with("X-Request-Id q-2: queued #3, 0 attempts"),
        "{shown}"
    );
    assert!(shown.contains("\nPOST /q/2 HTTP/1.1\n"), "{shown}");
    assert!(shown.contains("X-Request-Id: q-2\n"), "{shown}");
    assert!(shown.trim_end().ends_with("\nbody of q 2"), "{shown}");
    let missing = queue_cmd(&config, &["show", "nope"]);
    assert_eq!(missing.code(), Some(1));
    assert!(
        missing
            .stderr
            .contains("no queued or dead request has X-Request-Id nope"),
        "{}",
        missing.stderr
    );

    assert_eq!(
        queue_ok(&config, &["drop", "q-1"]).trim(),
        "dropped 1 queued and 0 dead requests"
    );
    let after_online_drop = listing(&config, false);
    assert_eq!(
        after_online_drop,
        vec![row("q", 0), row("q", 2), row("q", 3)]
    );

    // Offline: the same content, read from the journal itself.
    stop(sq);
    assert_eq!(listing(&config, false), after_online_drop);
    let offline = queue_ok(&config, &["show", "q-2"]);
    let (first, rest) = offline.split_once('\n').unwrap();
    assert!(
        first.starts_with("X-Request-Id q-2: queued #2, 0 attempts"),
        "{offline}"
    );
    assert_eq!(
        rest,
        shown.split_once('\n').unwrap().1,
        "show online and offline"
    );
    assert_eq!(
        queue_ok(&config, &["drop", "q-3"]).trim(),
        "dropped 1 queued and 0 dead requests"
    );

    // Restarted with the endpoint up: only what was not dropped is delivered.
    u.restart();
    let (sq, _admin) = start(&body);
    assert!(
        wait_drained(&sq, 1, DRAIN_DEADLINE),
        "stderr:\n{}",
        sq.stderr()
    );
    assert!(holds_for(Duration::from_millis(1000), || u.request_count() == 2));
    let targets: Vec<String> = u.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, ["/q/0", "/q/2"]);
}

#[test]
fn dead_letters_keep_their_reason_retry_in_order_and_purge() {
    let journal = TempDir::new("ops-dead");
    let secrets = TempDir::new("ops-secret");
    let mut u = down_upstream(Behaviour::Echo);
    let conf = ops_conf(&u, journal.path(), &token_file(&secrets));
    let (sq, admin, config) = start_four_dead(conf, &secrets, "file");
    let text = queue_ok(&config, &["list", "--dead"]);
    assert!(
        text.lines().nth(1).unwrap().contains("max age: queued 1."),
        "{text}"
    );
    assert!(text.contains("over DEFERRED_Q_MAX_AGE (1s)"), "{text}");
    let status = get(admin, "/status").body_str();
    assert!(
        status.contains("Dead letters: <b>4</b> — max age: 4"),
        "{status}"
    );

    // A dead letter dropped; two retried, named out of order, once the endpoint is up.
    drop_one_retry_two(&sq, &mut u, &config);
    // The retried requests held a slot each until delivered, like any queued one.
    let held = || metric_sample(admin, "serviceq_requests_held");
    assert!(
        wait_until(Duration::from_secs(5), || held() == Some(0.0)),
        "{:?}",
        held()
    );

    purge_the_rest(&config);
    stop(sq);
    assert_eq!(
        listing(&config, true),
        vec![],
        "offline, after a restart of the file"
    );
    assert_eq!(
        fs::metadata(journal.join("dead-letter.log")).unwrap().len(),
        0
    );
}

#[test]
fn queue_changes_need_the_token_and_the_memory_queue_works_online() {
    let secrets = TempDir::new("ops-secret");
    let u = down_upstream(Behaviour::Echo);
    let conf = queue_conf(&[u.url()], "POST").set(
        "ADMIN_TOKEN_FILE",
        &token_file(&secrets).display().to_string(),
    );
    let (sq, admin) = start_with_admin(conf);
    buffer(&sq, "m", 2);
    let config = sq.config_path().to_path_buf();
    assert_eq!(listing(&config, false), vec![row("m", 0), row("m", 1)]);

    // Read-only endpoints need no token; changes do.
    assert_eq!(admin_call(admin, "GET", "/queue", None).status, 200);
    for (token, what) in [(None, "no token"), (Some("wrong"), "a wrong token")] {
        let r = admin_call(admin, "DELETE", "/queue?id=m-0", token);
        assert_eq!(r.status, 401, "{what}: {}", r.body_str());
    }
    assert!(
        sq.wait_for_error_log(Duration::from_secs(5), |lines| lines
            .iter()
            .filter(|l| l.contains("[Code: 602, ADMIN_UNAUTHORIZED]"))
            .count()
            >= 2),
        "no 602 lines; error log:\n{}",
        sq.error_log()
    );
    assert_eq!(
        listing(&config, false).len(),
        2,
        "a refused drop removed something"
    );
    let r = admin_call(admin, "DELETE", "/queue?id=m-0", Some(TOKEN));
    assert_eq!(
        (r.status, r.body_str().trim()),
        (200, r#"{"dead":0,"queued":1}"#)
    );
    // The command line sends the token it reads from ADMIN_TOKEN_FILE.
    assert_eq!(
        queue_ok(&config, &["drop", "m-1"]).trim(),
        "dropped 1 queued and 0 dead requests"
    );
    assert_eq!(listing(&config, false), vec![]);
    assert_eq!(metric_sample(admin, "serviceq_queue_depth"), Some(0.0));
    // Each dropped request gave its CONCURRENCY_PEAK slot back, exactly once.
    let held = || metric_sample(admin, "serviceq_requests_held");
    assert!(
        wait_until(Duration::from_secs(5), || held() == Some(0.0)),
        "{:?}",
        held()
    );
    assert!(
        holds_for(Duration::from_millis(700), || held() == Some(0.0)),
        "{:?}",
        held()
    );
}

#[test]
fn without_a_token_file_changes_are_off_and_without_admin_port_the_cli_says_so() {
    let u = down_upstream(Behaviour::Echo);
    let (sq, admin) = start_with_admin(queue_conf(&[u.url()], "POST"));
    buffer(&sq, "n", 1);
    let r = admin_call(admin, "DELETE", "/queue?id=n-0", Some(TOKEN));
    assert_eq!(r.status, 403, "{}", r.body_str());
    let ran = queue_cmd(sq.config_path(), &["drop", "n-0"]);
    assert_eq!(ran.code(), Some(1));
    assert!(
        ran.stderr.contains("403") && ran.stderr.contains("ADMIN_TOKEN_FILE is not set"),
        "{}",
        ran.stderr
    );

    let journal = TempDir::new("ops-noadmin");
    let sq = queue_conf(&[u.url()], "POST")
        .set("DEFERRED_Q_DIR", &journal.path().display().to_string())
        .start();
    let ran = queue_cmd(sq.config_path(), &["list"]);
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    assert!(
        ran.stderr.contains("holds the journal's lock")
            && ran.stderr.contains("ADMIN_PORT is not set"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_token_file_others_can_read_fails_the_start() {
    let secrets = TempDir::new("ops-secret");
    let path = token_file(&secrets);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let body = Conf::new(&["http://127.0.0.1:1"])
        .set("ADMIN_PORT", &refusing_port().to_string())
        .set("ADMIN_TOKEN_FILE", &path.display().to_string())
        .set("ERROR_LOG_FILE", "{dir}/error.log")
        .set("LISTENER_PORT", "0")
        .body();
    let ran = run_check(&body, &[]);
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    let last = ran.last_stderr_line();
    assert!(
        last.contains("ADMIN_TOKEN_FILE") && last.contains("chmod 600"),
        "{last}"
    );
}
