//! Counters for `/metrics` and `/status`: process-wide atomics in one static, bumped on
//! the request path with relaxed increments (no lock, no allocation), read by the admin
//! thread. Per-endpoint counters live on `upstream::Upstream`, so they follow the
//! endpoint across reloads.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Reply, ENDPOINT_FAILURES};
use crate::shared_queue::RedisStatus;

/// Every generated reply, in the order of `REPLIES` (indexes of `replies`).
pub const REPLIES: [Reply; 12] = [
    Reply::Flooded,
    Reply::Buffered,
    Reply::Queued,
    Reply::Unavailable,
    Reply::GatewayTimeout,
    Reply::BadGateway,
    Reply::BadRequest,
    Reply::HeaderTooLarge,
    Reply::BodyTooLarge,
    Reply::RequestTimeout,
    Reply::VersionNotSupported,
    Reply::NotImplemented,
];

/// Upper bounds of the latency buckets, in seconds (Prometheus' defaults, extended
/// down to 0.5 ms because a loopback hop takes tens of microseconds).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram: cumulative buckets are computed when exported.
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1],
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The cumulative `_bucket` samples, then `_sum` and `_count`.
    fn write_samples(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// The process-wide counters.
pub struct Metrics {
    /// Responses to clients by status class: index 0 = 1xx … 4 = 5xx.
    pub responses: [AtomicU64; 5],
    /// Generated replies, by `REPLIES` index.
    pub replies: [AtomicU64; REPLIES.len()],
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    pub queued_total: AtomicU64,
    pub replayed_total: AtomicU64,
    pub dead_lettered_total: AtomicU64,
    pub access_log_dropped: AtomicU64,
    /// Upgraded connections (`tunnel.rs`): started, open now, and bytes copied
    /// [client → endpoint, endpoint → client].
    pub tunnels_total: AtomicU64,
    pub tunnels_active: AtomicU64,
    pub tunnel_bytes: [AtomicU64; 2],
    pub upstream_latency: Histogram,
    pub total_latency: Histogram,
}

pub static METRICS: Metrics = Metrics::new();

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    const fn new() -> Self {
        Metrics {
            responses: [const { AtomicU64::new(0) }; 5],
            replies: [const { AtomicU64::new(0) }; REPLIES.len()],
            connections_total: AtomicU64::new(0),
            connections_active: AtomicU64::new(0),
            queued_total: AtomicU64::new(0),
            replayed_total: AtomicU64::new(0),
            dead_lettered_total: AtomicU64::new(0),
            access_log_dropped: AtomicU64::new(0),
            tunnels_total: AtomicU64::new(0),
            tunnels_active: AtomicU64::new(0),
            tunnel_bytes: [const { AtomicU64::new(0) }; 2],
            upstream_latency: Histogram::new(),
            total_latency: Histogram::new(),
        }
    }

    /// A response of `status` went to a client.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        inc(&self.responses[class]);
    }

    /// ServiceQ generated `reply`.
    pub fn reply(&self, reply: Reply) {
        if let Some(i) = REPLIES.iter().position(|&r| r == reply) {
            inc(&self.replies[i]);
        }
        self.response(reply.parts().0);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Gauges that the admin thread reads from elsewhere when exporting.
pub struct Gauges {
    pub busy_workers: usize,
    pub workers: usize,
    pub held_requests: usize,
    pub queue_depth: usize,
    pub uptime: Duration,
    /// `memory`, `journal` or `redis`.
    pub queue_backend: &'static str,
    /// The shared queue's state, when the backend is shared.
    pub shared: Option<crate::shared_queue::RedisStatus>,
}

/// One endpoint's figures for export.
pub struct EndpointFigures {
    pub label: String,
    pub error_count: u32,
    pub attempts: u64,
    /// Failures by log-code name (`ENDPOINT_FAILURES`).
    pub failures: [(&'static str, u64); ENDPOINT_FAILURES.len()],
    pub idle_connections: usize,
    /// The active health checks' view, `None` while they are off.
    pub check: Option<CheckFigures>,
}

/// One endpoint's health-check state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckFigures {
    pub up: bool,
    pub checks: u64,
    pub failed: u64,
}

/// A family's Prometheus type.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Where a family's samples come from.
#[derive(Clone, Copy)]
enum Source {
    /// One unlabelled sample: a process-wide counter.
    Process(fn(&Metrics) -> &AtomicU64),
    /// One unlabelled sample: a gauge the admin thread read elsewhere.
    Gauge(fn(&Gauges) -> f64),
    /// Labelled samples of process-wide figures: (`{labels}`, value) for each.
    Labelled(fn(&Metrics, &Gauges) -> Vec<(String, f64)>),
    /// One unlabelled sample of the shared queue's state; the family is left out, HELP
    /// and TYPE too, when the queue is not shared.
    Shared(fn(&RedisStatus) -> f64),
    /// One sample per endpoint, labelled `endpoint`.
    Endpoint(fn(&EndpointFigures) -> f64),
    /// One sample per endpoint and log code, labelled `endpoint` and `code`.
    EndpointFailures,
    /// One sample per health-checked endpoint (none while the checks are off).
    Check(fn(&CheckFigures) -> f64),
    /// Cumulative buckets, `_sum` and `_count`.
    Histogram(fn(&Metrics) -> &Histogram),
}

/// One metric family: HELP and TYPE lines, then its samples.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    source: Source,
}

const fn family(name: &'static str, kind: Kind, help: &'static str, source: Source) -> Family {
    Family {
        name,
        kind,
        help,
        source,
    }
}

/// Every family of `/metrics`, in the order they are exported.
const FAMILIES: &[Family] = {
    use Kind::{Counter, Gauge};
    &[
        family(
            "serviceq_responses_total",
            Counter,
            "Responses sent to clients, by status class.",
            Source::Labelled(|m, _| {
                let classes = m.responses.iter().enumerate();
                classes
                    .map(|(i, c)| (format!("{{class=\"{}xx\"}}", i + 1), Metrics::get(c) as f64))
                    .collect()
            }),
        ),
        family(
            "serviceq_generated_responses_total",
            Counter,
            "Responses ServiceQ made itself, by sq_msg.",
            Source::Labelled(|m, _| {
                let replies = REPLIES.iter().zip(&m.replies);
                replies
                    .map(|(r, c)| {
                        let (status, _, msg) = r.parts();
                        let labels = format!("{{status=\"{status}\",sq_msg=\"{msg}\"}}");
                        (labels, Metrics::get(c) as f64)
                    })
                    .collect()
            }),
        ),
        family(
            "serviceq_flooded_total",
            Counter,
            "Clients answered 429 (CONCURRENCY_PEAK reached).",
            // REPLIES[0] is Reply::Flooded.
            Source::Process(|m| &m.replies[0]),
        ),
        family(
            "serviceq_connections_total",
            Counter,
            "Client connections accepted by workers.",
            Source::Process(|m| &m.connections_total),
        ),
        family(
            "serviceq_connections_active",
            Gauge,
            "Client connections open on workers.",
            Source::Process(|m| &m.connections_active),
        ),
        family(
            "serviceq_workers",
            Gauge,
            "Worker threads (CONCURRENCY_PEAK).",
            Source::Gauge(|g| g.workers as f64),
        ),
        family(
            "serviceq_workers_busy",
            Gauge,
            "Workers serving a connection.",
            Source::Gauge(|g| g.busy_workers as f64),
        ),
        family(
            "serviceq_requests_held",
            Gauge,
            "Requests held against CONCURRENCY_PEAK (active and queued).",
            Source::Gauge(|g| g.held_requests as f64),
        ),
        family(
            "serviceq_queue_depth",
            Gauge,
            "Requests waiting in the deferred/upfront queue.",
            Source::Gauge(|g| g.queue_depth as f64),
        ),
        family(
            "serviceq_queued_total",
            Counter,
            "Requests put in the queue.",
            Source::Process(|m| &m.queued_total),
        ),
        family(
            "serviceq_replayed_total",
            Counter,
            "Queued requests delivered.",
            Source::Process(|m| &m.replayed_total),
        ),
        family(
            "serviceq_dead_lettered_total",
            Counter,
            "Queued requests moved to the dead-letter file.",
            Source::Process(|m| &m.dead_lettered_total),
        ),
        family(
            "serviceq_access_log_dropped_total",
            Counter,
            "Access log lines dropped because the writer fell behind.",
            Source::Process(|m| &m.access_log_dropped),
        ),
        family(
            "serviceq_queue_backend",
            Gauge,
            "The queue's backend (always 1; the label names it).",
            Source::Labelled(|_, g| vec![(format!("{{backend=\"{}\"}}", g.queue_backend), 1.0)]),
        ),
        family(
            "serviceq_queue_shared_depth",
            Gauge,
            "Requests in the shared queue, every instance's, as last seen on the engine.",
            Source::Shared(|s| s.depth.unwrap_or(0) as f64),
        ),
        family(
            "serviceq_queue_lease_held",
            Gauge,
            "1 while this instance holds the shared queue's replay lease.",
            Source::Shared(|s| f64::from(u8::from(s.holding))),
        ),
        family(
            "serviceq_queue_engine_errors_total",
            Counter,
            "Shared-queue engine calls that failed (unreachable, timed out, refused).",
            Source::Shared(|s| s.engine_errors as f64),
        ),
        family(
            "serviceq_tunnels_total",
            Counter,
            "Upgraded connections (101 Switching Protocols) tunnelled.",
            Source::Process(|m| &m.tunnels_total),
        ),
        family(
            "serviceq_tunnels_active",
            Gauge,
            "Upgraded connections open now (each holds a worker).",
            Source::Process(|m| &m.tunnels_active),
        ),
        family(
            "serviceq_tunnel_bytes_total",
            Counter,
            "Bytes copied through finished tunnels, by direction.",
            Source::Labelled(|m, _| {
                let directions = ["client_to_upstream", "upstream_to_client"];
                let bytes = directions.iter().zip(&m.tunnel_bytes);
                bytes
                    .map(|(d, c)| (format!("{{direction=\"{d}\"}}"), Metrics::get(c) as f64))
                    .collect()
            }),
        ),
        family(
            "serviceq_uptime_seconds",
            Gauge,
            "Seconds since start.",
            Source::Gauge(|g| g.uptime.as_secs_f64()),
        ),
        family(
            "serviceq_upstream_attempts_total",
            Counter,
            "Attempts on each endpoint.",
            Source::Endpoint(|e| e.attempts as f64),
        ),
        family(
            "serviceq_upstream_failures_total",
            Counter,
            "Failed attempts on each endpoint, by error-log code.",
            Source::EndpointFailures,
        ),
        family(
            "serviceq_upstream_error_count",
            Gauge,
            "Current error count of each endpoint (reset by a success).",
            Source::Endpoint(|e| f64::from(e.error_count)),
        ),
        family(
            "serviceq_upstream_pool_idle",
            Gauge,
            "Idle kept-alive connections to each endpoint.",
            Source::Endpoint(|e| e.idle_connections as f64),
        ),
        family(
            "serviceq_upstream_check_up",
            Gauge,
            "1 while the health checks count the endpoint up, 0 once they marked it down.",
            Source::Check(|c| f64::from(u8::from(c.up))),
        ),
        family(
            "serviceq_upstream_checks_total",
            Counter,
            "Health checks made on each endpoint.",
            Source::Check(|c| c.checks as f64),
        ),
        family(
            "serviceq_upstream_check_failures_total",
            Counter,
            "Health checks that failed on each endpoint.",
            Source::Check(|c| c.failed as f64),
        ),
        family(
            "serviceq_upstream_duration_seconds",
            Kind::Histogram,
            "From the first attempt to the end of the relayed response.",
            Source::Histogram(|m| &m.upstream_latency),
        ),
        family(
            "serviceq_request_duration_seconds",
            Kind::Histogram,
            "From the request head to the end of the response.",
            Source::Histogram(|m| &m.total_latency),
        ),
    ]
};

/// Renders the Prometheus text exposition format (version 0.0.4).
pub fn export(g: &Gauges, endpoints: &[EndpointFigures]) -> String {
    render(&METRICS, g, endpoints)
}

fn render(m: &Metrics, g: &Gauges, endpoints: &[EndpointFigures]) -> String {
    let mut out = String::with_capacity(8192);
    for f in FAMILIES {
        if matches!(f.source, Source::Shared(_)) && g.shared.is_none() {
            continue;
        }
        let (name, kind) = (f.name, f.kind.as_str());
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", f.help);
        write_samples(&mut out, name, f.source, m, g, endpoints);
    }
    out
}

/// A family's sample lines, `name{labels} value`.
fn write_samples(
    out: &mut String,
    name: &str,
    source: Source,
    m: &Metrics,
    g: &Gauges,
    endpoints: &[EndpointFigures],
) {
    let mut sample = |labels: &str, v: f64| {
        let _ = writeln!(out, "{name}{labels} {v}");
    };
    let endpoint = |e: &EndpointFigures| format!("endpoint=\"{}\"", e.label);
    match source {
        Source::Process(counter) => sample("", Metrics::get(counter(m)) as f64),
        Source::Gauge(read) => sample("", read(g)),
        Source::Labelled(read) => {
            for (labels, v) in read(m, g) {
                sample(&labels, v);
            }
        }
        Source::Endpoint(read) => {
            for e in endpoints {
                sample(&format!("{{{}}}", endpoint(e)), read(e));
            }
        }
        Source::EndpointFailures => {
            for e in endpoints {
                for (code, n) in e.failures {
                    sample(&format!("{{{},code=\"{code}\"}}", endpoint(e)), n as f64);
                }
            }
        }
        Source::Check(read) => {
            for e in endpoints {
                if let Some(c) = &e.check {
                    sample(&format!("{{{}}}", endpoint(e)), read(c));
                }
            }
        }
        Source::Shared(read) => {
            if let Some(s) = &g.shared {
                sample("", read(s));
            }
        }
        Source::Histogram(histogram) => histogram(m).write_samples(out, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.write_samples(&mut out, "x");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn every_family_has_help_and_type() {
        let g = Gauges {
            busy_workers: 1,
            workers: 4,
            held_requests: 1,
            queue_depth: 0,
            uptime: Duration::from_secs(3),
            queue_backend: "memory",
            shared: None,
        };
        let e = EndpointFigures {
            label: "http://127.0.0.1:80".into(),
            error_count: 2,
            attempts: 5,
            failures: [
                ("UPSTREAM_DOWN", 1),
                ("UPSTREAM_TIMED_OUT", 0),
                ("UPSTREAM_NO_RESPONSE", 1),
                ("UPSTREAM_BAD_RESPONSE", 0),
                ("UPSTREAM_BROKE_OFF", 0),
            ],
            idle_connections: 1,
            check: Some(CheckFigures {
                up: false,
                checks: 7,
                failed: 3,
            }),
        };
        let text = export(&g, &[e]);
        for sample in [
            "serviceq_upstream_check_up{endpoint=\"http://127.0.0.1:80\"} 0\n",
            "serviceq_upstream_checks_total{endpoint=\"http://127.0.0.1:80\"} 7\n",
            "serviceq_upstream_check_failures_total{endpoint=\"http://127.0.0.1:80\"} 3\n",
        ] {
            assert!(text.contains(sample), "{sample}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {family} "))
                    || text.contains(&format!("# TYPE {name} ")),
                "no TYPE for {name}"
            );
        }
        assert!(
            text.contains("serviceq_upstream_error_count{endpoint=\"http://127.0.0.1:80\"} 2\n")
        );
    }

    /// Every counter, gauge and histogram of a fresh `Metrics` set to a different value,
    /// and two endpoints (one health-checked), so that a family reading the wrong value
    /// shows in the golden rendering.
    fn distinct_figures() -> (Metrics, Gauges, Vec<EndpointFigures>) {
        let m = Metrics::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        let counters = m.responses.iter().chain(&m.replies).chain(&m.tunnel_bytes);
        for c in counters.chain([
            &m.connections_total,
            &m.connections_active,
            &m.queued_total,
            &m.replayed_total,
            &m.dead_lettered_total,
            &m.access_log_dropped,
            &m.tunnels_total,
            &m.tunnels_active,
        ]) {
            c.store(next(), Ordering::Relaxed);
        }
        for ms in [0.3, 0.7, 4.0, 30.0, 700.0, 20_000.0] {
            m.upstream_latency
                .observe(Duration::from_secs_f64(ms / 1000.0));
        }
        m.total_latency.observe(Duration::from_millis(2));
        let g = Gauges {
            busy_workers: 3,
            workers: 16,
            held_requests: 5,
            queue_depth: 2,
            uptime: Duration::from_millis(12_500),
            queue_backend: "redis",
            shared: Some(crate::shared_queue::RedisStatus {
                target: "redis://127.0.0.1:6379".into(),
                primary: None,
                depth: Some(31),
                lease: None,
                holding: true,
                last_error: None,
                engine_errors: 32,
            }),
        };
        let endpoint = |label: &str, base: u64, check| EndpointFigures {
            label: label.into(),
            error_count: base as u32,
            attempts: base + 1,
            failures: [
                ("UPSTREAM_DOWN", base + 2),
                ("UPSTREAM_TIMED_OUT", base + 3),
                ("UPSTREAM_NO_RESPONSE", base + 4),
                ("UPSTREAM_BAD_RESPONSE", base + 5),
                ("UPSTREAM_BROKE_OFF", base + 7),
            ],
            idle_connections: base as usize + 6,
            check,
        };
        let endpoints = vec![
            endpoint(
                "http://127.0.0.1:8001",
                10,
                Some(CheckFigures {
                    up: true,
                    checks: 40,
                    failed: 41,
                }),
            ),
            endpoint("http://127.0.0.1:8002", 20, None),
        ];
        (m, g, endpoints)
    }

    const GOLDEN: &str = include_str!("metrics_golden.prom");

    /// The exposition byte for byte, as it was before `export` became table-driven.
    /// A new family changes it on purpose: write the new rendering with
    /// `SQ_WRITE_METRICS_GOLDEN=$PWD/src/metrics_golden.prom cargo test --lib metrics::`
    /// and read the diff.
    #[test]
    fn rendering_matches_the_golden_text() {
        let (m, g, endpoints) = distinct_figures();
        let text = render(&m, &g, &endpoints);
        if let Some(path) = std::env::var_os("SQ_WRITE_METRICS_GOLDEN") {
            std::fs::write(path, &text).expect("write the golden rendering");
        }
        assert_eq!(text, GOLDEN);
    }

    /// Without a shared queue, its families are left out, HELP and TYPE lines too.
    #[test]
    fn a_local_queue_leaves_the_shared_families_out() {
        let (m, mut g, endpoints) = distinct_figures();
        g.shared = None;
        let shared = [
            "serviceq_queue_shared_depth",
            "serviceq_queue_lease_held",
            "serviceq_queue_engine_errors_total",
        ];
        let names_one = |l: &str| l.split(' ').take(3).any(|w| shared.contains(&w));
        let expected: String = GOLDEN
            .lines()
            .filter(|l| !names_one(l))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(render(&m, &g, &endpoints), expected);
    }
}
