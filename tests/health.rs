//! Active health checks (HEALTH_CHECK_*) against the real binary: an endpoint killed is
//! marked down within FALL × INTERVAL (+ one interval) and gets no live request after
//! that, and is back within RISE × INTERVAL (+ one interval) of its restart; a check
//! path answering 500 marks a listening endpoint down; a rise wakes the replay thread
//! out of its pause; SIGHUP applies changed check settings; https endpoints are checked
//! over TLS. Short intervals (0.2 s) keep the suite quick.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::queue::*;
use support::tls::*;
use support::*;

const INTERVAL: f64 = 0.2;
const RISE: u32 = 2;
const FALL: u32 = 3;
/// Scheduling slack on a loaded machine, on top of the bounds under test.
const SLACK: Duration = Duration::from_millis(500);

/// Checks on `/health` every INTERVAL with RISE/FALL, and an admin listener.
fn checked(endpoints: &[String]) -> Conf {
    Conf::new(endpoints)
        .set("HEALTH_CHECK_PATH", "/health")
        .set("HEALTH_CHECK_INTERVAL", &INTERVAL.to_string())
        .set("HEALTH_CHECK_TIMEOUT", "0.5")
        .set("HEALTH_CHECK_RISE", &RISE.to_string())
        .set("HEALTH_CHECK_FALL", &FALL.to_string())
}

/// The value of `name{endpoint="URL"}` in /metrics.
fn metric(admin: SocketAddr, name: &str, url: &str) -> Option<f64> {
    metric_sample(admin, &format!("{name}{{endpoint=\"{url}\"}}"))
}

fn down_line(url: &str) -> String {
    format!("{url}: marked down by health checks")
}

fn up_line(url: &str) -> String {
    format!("{url}: marked up by health checks")
}

/// Waits (up to `limit` + SLACK) for `needle` to appear `times` times on stderr; how long
/// it took.
fn time_until_logged(sq: &ServiceQ, needle: &str, times: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    let seen = wait_until(limit + SLACK + Duration::from_secs(5), || {
        stderr_count(sq, needle) >= times
    });
    assert!(seen, "no {needle:?} on stderr:\n{}", sq.stderr());
    let took = start.elapsed();
    eprintln!("{needle:?} after {took:?} (bound {limit:?})");
    took
}

/// Requests that reached the mock other than the health checks.
fn live_requests(u: &Upstream) -> usize {
    u.requests()
        .iter()
        .filter(|r| r.target != "/health")
        .count()
}

/// The fall is in the error log as 701 UPSTREAM_DOWN.
fn assert_logged_down(sq: &ServiceQ, url: &str) {
    let lines = sq.error_log_lines();
    let logged = lines
        .iter()
        .any(|l| is_log_line(l, url, 701, "UPSTREAM_DOWN"));
    assert!(logged, "{lines:?}");
}

/// Whether requests through the proxy soon reach `u` again (some go elsewhere).
fn takes_live_requests(sq: &ServiceQ, u: &Upstream) -> bool {
    let before = live_requests(u);
    wait_until(Duration::from_secs(5), || {
        get(sq.addr(), "/again");
        live_requests(u) > before
    })
}

#[test]
fn killed_endpoint_is_marked_down_gets_no_live_request_and_comes_back() {
    let mut a = Upstream::start(Behaviour::Ok);
    let b = Upstream::start(Behaviour::Ok);
    let (sq, admin) = start_with_admin(checked(&[a.url(), b.url()]));
    assert!(
        wait_until(Duration::from_secs(5), || a.request_count() >= 2),
        "no health checks reached the endpoint"
    );
    let check = a.requests()[0].clone();
    assert_eq!(
        (check.method.as_str(), check.target.as_str()),
        ("GET", "/health")
    );
    assert_eq!(check.header("host"), Some(a.host().as_str()));
    assert_eq!(check.header("connection"), Some("close"));

    a.stop();
    let fall_bound = secs(INTERVAL * f64::from(FALL + 1));
    let took = time_until_logged(&sq, &down_line(&a.url()), 1, fall_bound);
    assert!(took <= fall_bound + SLACK, "marked down after {took:?}");
    assert_eq!(
        metric(admin, "serviceq_upstream_check_up", &a.url()),
        Some(0.0)
    );
    assert_eq!(
        metric(admin, "serviceq_upstream_check_up", &b.url()),
        Some(1.0)
    );
    assert_logged_down(&sq, &a.url());

    // Down: no attempt of a live request goes to it (each would be a 701 and an attempt).
    let attempts = metric(admin, "serviceq_upstream_attempts_total", &a.url());
    let log_lines = sq.error_log_lines().len();
    for i in 0..30 {
        let r = get(sq.addr(), &format!("/live/{i}"));
        assert_eq!((r.status, r.body_str()), (200, b.name().to_string()));
    }
    assert_eq!(
        metric(admin, "serviceq_upstream_attempts_total", &a.url()),
        attempts
    );
    assert_eq!(sq.error_log_lines().len(), log_lines, "{}", sq.error_log());

    a.restart();
    let rise_bound = secs(INTERVAL * f64::from(RISE + 1));
    let took = time_until_logged(&sq, &up_line(&a.url()), 1, rise_bound);
    assert!(took <= rise_bound + SLACK, "marked up after {took:?}");
    assert!(
        takes_live_requests(&sq, &a),
        "no live request reached the endpoint after it came back"
    );
}

#[test]
fn check_path_answering_500_marks_a_listening_endpoint_down() {
    let a = Upstream::start(Behaviour::Respond(Resp::new(
        500,
        "Internal Server Error",
        "sick",
    )));
    let b = Upstream::start(Behaviour::Ok);
    let (sq, admin) = start_with_admin(checked(&[a.url(), b.url()]));
    let bound = secs(INTERVAL * f64::from(FALL + 1));
    let took = time_until_logged(&sq, &down_line(&a.url()), 1, bound);
    assert!(took <= bound + SLACK, "marked down after {took:?}");
    assert!(
        sq.stderr().contains("unhealthy status 500"),
        "{}",
        sq.stderr()
    );
    assert_logged_down(&sq, &a.url());
    // It still accepts connections: the checks go on, each on a connection of its own.
    let (checks, conns) = (a.request_count(), a.connections());
    assert!(wait_until(Duration::from_secs(5), || a.request_count() >= checks + 2));
    assert!(a.connections() >= conns + 2, "checks reused a connection");

    let live = live_requests(&a);
    for i in 0..30 {
        let r = get(sq.addr(), &format!("/live/{i}"));
        assert_eq!(r.status, 200, "{}", r.raw_head);
    }
    assert_eq!(
        live_requests(&a),
        live,
        "a live request went to the endpoint marked down"
    );
    let failures = metric(admin, "serviceq_upstream_check_failures_total", &a.url());
    assert!(
        failures.is_some_and(|f| f >= f64::from(FALL)),
        "{failures:?}"
    );
    let page = get(admin, "/status").body_str();
    assert!(page.contains("marked down by health checks"), "{page}");
}

#[test]
fn queue_drains_as_soon_as_a_check_sees_the_endpoint_back() {
    let mut a = Upstream::start(Behaviour::Echo);
    let sq = queue_conf(&[a.url()], "POST")
        .set("HEALTH_CHECK_PATH", "/health")
        .set("HEALTH_CHECK_INTERVAL", &INTERVAL.to_string())
        .set("HEALTH_CHECK_RISE", "1")
        .set("HEALTH_CHECK_FALL", "1")
        .start();
    a.stop();
    for i in 0..3 {
        let r = request(
            sq.addr(),
            &raw_request("POST", "x", &format!("/q/{i}"), b"body", None),
        );
        assert_buffered(&r, "endpoint down");
    }
    // Let the replay thread back off to a long pause (0.5, 1, 2, then 4 s).
    assert!(
        sq.wait_for_stderr("next try in 4s", Duration::from_secs(15)),
        "{}",
        sq.stderr()
    );
    a.restart();
    let back = Instant::now();
    assert!(
        wait_drained(&sq, 1, Duration::from_secs(10)),
        "{}",
        sq.stderr()
    );
    let took = back.elapsed();
    eprintln!("queue drained {took:?} after the endpoint came back");
    // One interval to see it back, then the deliveries; without the wake-up this is
    // the rest of the 4 s pause.
    assert!(
        took < secs(INTERVAL) + SLACK,
        "queue drained {took:?} after the endpoint came back"
    );
    let targets: Vec<String> = a
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.target)
        .collect();
    assert_eq!(targets, ["/q/0", "/q/1", "/q/2"]);
}

#[test]
fn sighup_applies_changed_check_settings_and_keeps_the_verdicts() {
    let a = Upstream::start(Behaviour::Respond(Resp::new(503, "Unavailable", "no")));
    let b = Upstream::start(Behaviour::Ok);
    let (sq, admin) = start_with_admin(Conf::new(&[a.url(), b.url()]));
    assert_eq!(metric(admin, "serviceq_upstream_check_up", &a.url()), None);
    assert_eq!(a.request_count(), 0, "checks ran while off");

    let on = format!(
        "{}HEALTH_CHECK_PATH=/health\nHEALTH_CHECK_INTERVAL={INTERVAL}\nHEALTH_CHECK_FALL=2\n",
        sq.config_body()
    );
    sq.rewrite_config(&on);
    sq.signal("HUP");
    time_until_logged(&sq, &down_line(&a.url()), 1, Duration::from_secs(2));

    // A changed interval and timeout: the endpoint keeps its verdict (no second fall,
    // still down at once), and the checks go on at the new pace.
    let slower = on.replace(
        &format!("HEALTH_CHECK_INTERVAL={INTERVAL}"),
        "HEALTH_CHECK_INTERVAL=0.3\nOUTGOING_REQUEST_TIMEOUT=4",
    );
    sq.rewrite_config(&slower);
    sq.signal("HUP");
    time_until_logged(
        &sq,
        "SIGHUP: configuration reloaded",
        2,
        Duration::from_secs(2),
    );
    assert_eq!(
        metric(admin, "serviceq_upstream_check_up", &a.url()),
        Some(0.0)
    );
    let checks = a.request_count();
    assert!(wait_until(Duration::from_secs(5), || a.request_count() >= checks + 2));
    assert_eq!(
        stderr_count(&sq, &down_line(&a.url())),
        1,
        "{}",
        sq.stderr()
    );

    // Checks off again: every endpoint takes requests.
    sq.rewrite_config(sq.config_body());
    sq.signal("HUP");
    time_until_logged(
        &sq,
        "SIGHUP: configuration reloaded",
        3,
        Duration::from_secs(2),
    );
    assert!(wait_until(Duration::from_secs(5), || {
        metric(admin, "serviceq_upstream_check_up", &a.url()).is_none()
    }));
    assert!(
        takes_live_requests(&sq, &a),
        "the endpoint stayed out after checks were turned off"
    );
}

#[test]
fn https_endpoints_are_checked_over_tls() {
    if !have_openssl() {
        return;
    }
    let certs = TempDir::new("health-tls");
    let (cert, key) = make_cert(certs.path(), "endpoint");
    let ep = TlsEndpoint::start(&cert, &key);
    let (sq, admin) = start_with_admin(
        checked(&[ep.url()]).set("SSL_UPSTREAM_CA_FILE", &cert.display().to_string()),
    );
    let passed = wait_until(Duration::from_secs(5), || {
        metric(admin, "serviceq_upstream_checks_total", &ep.url()).is_some_and(|n| n >= 3.0)
    });
    assert!(passed, "{}", sq.stderr());
    assert_eq!(
        metric(admin, "serviceq_upstream_check_failures_total", &ep.url()),
        Some(0.0),
        "{}",
        sq.stderr()
    );
    drop(ep);
    time_until_logged(
        &sq,
        "marked down by health checks",
        1,
        Duration::from_secs(2),
    );
}
