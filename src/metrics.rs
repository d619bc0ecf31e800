//! Counters for `/metrics` and `/status`: process-wide atomics in one static, bumped on
//! the request path with relaxed increments (no lock, no allocation), read by the admin
//! thread. Per-endpoint counters live on `upstream::Upstream`, so they follow the
//! endpoint across reloads.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Reply, ENDPOINT_FAILURES};

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

    fn export(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
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

pub static METRICS: Metrics = Metrics {
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
};

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
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

/// The queue's backend, and for a shared queue its depth on the engine, whether this
/// instance holds the replay lease, and the engine errors met.
fn push_queue_backend(out: &mut String, g: &Gauges) {
    let backend = format!("{{backend=\"{}\"}}", g.queue_backend);
    push(
        out,
        "serviceq_queue_backend",
        "gauge",
        "The queue's backend (always 1; the label names it).",
        &[(backend, 1.0)],
    );
    let Some(s) = &g.shared else { return };
    let one = |v: f64| vec![(String::new(), v)];
    push(
        out,
        "serviceq_queue_shared_depth",
        "gauge",
        "Requests in the shared queue, every instance's, as last seen on the engine.",
        &one(s.depth.unwrap_or(0) as f64),
    );
    push(
        out,
        "serviceq_queue_lease_held",
        "gauge",
        "1 while this instance holds the shared queue's replay lease.",
        &one(if s.holding { 1.0 } else { 0.0 }),
    );
    push(
        out,
        "serviceq_queue_engine_errors_total",
        "counter",
        "Shared-queue engine calls that failed (unreachable, timed out, refused).",
        &one(s.engine_errors as f64),
    );
}

/// One metric family: HELP and TYPE lines, then its samples (labels, value).
fn push(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// Renders the Prometheus text exposition format (version 0.0.4).
pub fn export(g: &Gauges, endpoints: &[EndpointFigures]) -> String {
    let m = &METRICS;
    let mut out = String::with_capacity(8192);
    let classes: Vec<(String, f64)> = m
        .responses
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("{{class=\"{}xx\"}}", i + 1), Metrics::get(c) as f64))
        .collect();
    push(
        &mut out,
        "serviceq_responses_total",
        "counter",
        "Responses sent to clients, by status class.",
        &classes,
    );
    let replies: Vec<(String, f64)> = REPLIES
        .iter()
        .zip(&m.replies)
        .map(|(r, c)| {
            let (status, _, msg) = r.parts();
            (
                format!("{{status=\"{status}\",sq_msg=\"{msg}\"}}"),
                Metrics::get(c) as f64,
            )
        })
        .collect();
    push(
        &mut out,
        "serviceq_generated_responses_total",
        "counter",
        "Responses ServiceQ made itself, by sq_msg.",
        &replies,
    );
    let plain = |v: f64| vec![(String::new(), v)];
    push(
        &mut out,
        "serviceq_flooded_total",
        "counter",
        "Clients answered 429 (CONCURRENCY_PEAK reached).",
        &plain(Metrics::get(&m.replies[0]) as f64),
    );
    push(
        &mut out,
        "serviceq_connections_total",
        "counter",
        "Client connections accepted by workers.",
        &plain(Metrics::get(&m.connections_total) as f64),
    );
    push(
        &mut out,
        "serviceq_connections_active",
        "gauge",
        "Client connections open on workers.",
        &plain(Metrics::get(&m.connections_active) as f64),
    );
    push(
        &mut out,
        "serviceq_workers",
        "gauge",
        "Worker threads (CONCURRENCY_PEAK).",
        &plain(g.workers as f64),
    );
    push(
        &mut out,
        "serviceq_workers_busy",
        "gauge",
        "Workers serving a connection.",
        &plain(g.busy_workers as f64),
    );
    push(
        &mut out,
        "serviceq_requests_held",
        "gauge",
        "Requests held against CONCURRENCY_PEAK (active and queued).",
        &plain(g.held_requests as f64),
    );
    push(
        &mut out,
        "serviceq_queue_depth",
        "gauge",
        "Requests waiting in the deferred/upfront queue.",
        &plain(g.queue_depth as f64),
    );
    push(
        &mut out,
        "serviceq_queued_total",
        "counter",
        "Requests put in the queue.",
        &plain(Metrics::get(&m.queued_total) as f64),
    );
    push(
        &mut out,
        "serviceq_replayed_total",
        "counter",
        "Queued requests delivered.",
        &plain(Metrics::get(&m.replayed_total) as f64),
    );
    push(
        &mut out,
        "serviceq_dead_lettered_total",
        "counter",
        "Queued requests moved to the dead-letter file.",
        &plain(Metrics::get(&m.dead_lettered_total) as f64),
    );
    push(
        &mut out,
        "serviceq_access_log_dropped_total",
        "counter",
        "Access log lines dropped because the writer fell behind.",
        &plain(Metrics::get(&m.access_log_dropped) as f64),
    );
    push_queue_backend(&mut out, g);
    push(
        &mut out,
        "serviceq_tunnels_total",
        "counter",
        "Upgraded connections (101 Switching Protocols) tunnelled.",
        &plain(Metrics::get(&m.tunnels_total) as f64),
    );
    push(
        &mut out,
        "serviceq_tunnels_active",
        "gauge",
        "Upgraded connections open now (each holds a worker).",
        &plain(Metrics::get(&m.tunnels_active) as f64),
    );
    let directions = ["client_to_upstream", "upstream_to_client"];
    let tunnel_bytes: Vec<(String, f64)> = directions
        .iter()
        .zip(&m.tunnel_bytes)
        .map(|(d, c)| (format!("{{direction=\"{d}\"}}"), Metrics::get(c) as f64))
        .collect();
    push(
        &mut out,
        "serviceq_tunnel_bytes_total",
        "counter",
        "Bytes copied through finished tunnels, by direction.",
        &tunnel_bytes,
    );
    push(
        &mut out,
        "serviceq_uptime_seconds",
        "gauge",
        "Seconds since start.",
        &plain(g.uptime.as_secs_f64()),
    );

    let label = |e: &EndpointFigures| format!("endpoint=\"{}\"", e.label);
    let attempts: Vec<(String, f64)> = endpoints
        .iter()
        .map(|e| (format!("{{{}}}", label(e)), e.attempts as f64))
        .collect();
    push(
        &mut out,
        "serviceq_upstream_attempts_total",
        "counter",
        "Attempts on each endpoint.",
        &attempts,
    );
    let failures: Vec<(String, f64)> = endpoints
        .iter()
        .flat_map(|e| {
            e.failures
                .iter()
                .map(move |(code, n)| (format!("{{{},code=\"{}\"}}", label(e), code), *n as f64))
        })
        .collect();
    push(
        &mut out,
        "serviceq_upstream_failures_total",
        "counter",
        "Failed attempts on each endpoint, by error-log code.",
        &failures,
    );
    let errors: Vec<(String, f64)> = endpoints
        .iter()
        .map(|e| (format!("{{{}}}", label(e)), f64::from(e.error_count)))
        .collect();
    push(
        &mut out,
        "serviceq_upstream_error_count",
        "gauge",
        "Current error count of each endpoint (reset by a success).",
        &errors,
    );
    let idle: Vec<(String, f64)> = endpoints
        .iter()
        .map(|e| (format!("{{{}}}", label(e)), e.idle_connections as f64))
        .collect();
    push(
        &mut out,
        "serviceq_upstream_pool_idle",
        "gauge",
        "Idle kept-alive connections to each endpoint.",
        &idle,
    );

    export_checks(&mut out, endpoints);

    m.upstream_latency.export(
        &mut out,
        "serviceq_upstream_duration_seconds",
        "From the first attempt to the end of the relayed response.",
    );
    m.total_latency.export(
        &mut out,
        "serviceq_request_duration_seconds",
        "From the request head to the end of the response.",
    );
    out
}

/// The health-check families: samples only for endpoints that are checked.
fn export_checks(out: &mut String, endpoints: &[EndpointFigures]) {
    let checked = || {
        endpoints.iter().filter_map(|e| {
            e.check
                .map(|c| (format!("{{endpoint=\"{}\"}}", e.label), c))
        })
    };
    /// Name, type, help, and the sample's value.
    type Family = (
        &'static str,
        &'static str,
        &'static str,
        fn(&CheckFigures) -> f64,
    );
    let families: [Family; 3] = [
        (
            "serviceq_upstream_check_up",
            "gauge",
            "1 while the health checks count the endpoint up, 0 once they marked it down.",
            |c| f64::from(u8::from(c.up)),
        ),
        (
            "serviceq_upstream_checks_total",
            "counter",
            "Health checks made on each endpoint.",
            |c| c.checks as f64,
        ),
        (
            "serviceq_upstream_check_failures_total",
            "counter",
            "Health checks that failed on each endpoint.",
            |c| c.failed as f64,
        ),
    ];
    for (name, kind, help, value) in families {
        let samples: Vec<(String, f64)> = checked().map(|(l, c)| (l, value(&c))).collect();
        push(out, name, kind, help, &samples);
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
        h.export(&mut out, "x", "help");
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
}
