//! The admin listener (ADMIN_ADDRESS:ADMIN_PORT): `/metrics` (Prometheus text format),
//! `/status` (an HTML page for people), `/healthz`, and `/queue…` (`admin_queue.rs`).
//! It runs on its own threads, so it never takes a client worker; it binds loopback by
//! default and must not be exposed (its read-only pages have no authentication; queue
//! changes need the ADMIN_TOKEN_FILE bearer token).
//!
//! Each request gets a short-lived thread, at most `MAX_ADMIN_REQUESTS` at once, and a
//! deadline for its whole head and another for its whole response. When every slot is
//! taken, a new connection evicts the oldest one still reading its head: connections
//! that dribble their heads can delay each other but never lock out a health check,
//! whose head arrives in one packet and is read at once.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::ENDPOINT_FAILURES;
use crate::metrics::{self, CheckFigures, EndpointFigures, Gauges};
use crate::proxy::Proxy;
use crate::shared_queue::{LeaseState, RedisStatus};
use crate::slots::Pool;

/// The longest an admin request's whole head may take to arrive (a deadline, not a
/// per-read timeout: a byte a second must not keep a connection alive).
const ADMIN_HEAD_DEADLINE: Duration = Duration::from_secs(2);
/// The longest writing a whole admin response may take.
const ADMIN_WRITE_DEADLINE: Duration = Duration::from_secs(5);
const MAX_ADMIN_HEAD_BYTES: usize = 8 * 1024;
/// The status page's history: one sample every 5 s for 10 minutes.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const SAMPLES_KEPT: usize = 120;
/// "Recent traffic" on the status page: the last minute.
const RECENT_SAMPLES: usize = 12;

/// One history sample: queue depth and each endpoint's attempt total at that time.
struct Sample {
    queue_depth: usize,
    attempts: Vec<(String, u64)>,
}

struct Admin {
    proxy: Arc<Proxy>,
    pool: Arc<Pool>,
    started: Instant,
    history: Mutex<VecDeque<Sample>>,
    slots: Slots,
    /// ADMIN_TOKEN_FILE's token; None = queue changes are off.
    token: Option<Vec<u8>>,
}

/// Starts the admin thread and its sampler.
pub fn start(listener: TcpListener, proxy: Arc<Proxy>, pool: Arc<Pool>) -> std::io::Result<()> {
    let token = match &proxy.settings().cfg.admin_token_file {
        Some(path) => Some(crate::admin_queue::load_token(path).map_err(std::io::Error::other)?),
        None => None,
    };
    let admin = Arc::new(Admin {
        token,
        proxy,
        pool,
        started: Instant::now(),
        history: Mutex::new(VecDeque::with_capacity(SAMPLES_KEPT)),
        slots: Slots::default(),
    });
    admin.sample();
    let sampler = Arc::clone(&admin);
    thread::Builder::new()
        .name("admin-sampler".into())
        .stack_size(128 * 1024)
        .spawn(move || loop {
            thread::sleep(SAMPLE_EVERY);
            sampler.sample();
        })?;
    thread::Builder::new().name("admin".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            serve_in_thread(&admin, stream);
        }
    })?;
    Ok(())
}

/// Admin requests served at once; beyond this a new connection evicts the oldest one
/// still reading its head, or is closed unanswered if every one is answering.
const MAX_ADMIN_REQUESTS: usize = 8;

/// One admin connection being served.
struct InFlight {
    id: u64,
    since: Instant,
    /// Still reading its head (evictable); false once it is being answered.
    reading: bool,
    /// A handle on its socket, to shut it down on eviction.
    socket: TcpStream,
}

/// The admin connections being served, shared by the accepting thread and each
/// request's thread.
#[derive(Default)]
struct Slots {
    next_id: std::sync::atomic::AtomicU64,
    live: Mutex<Vec<InFlight>>,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<InFlight>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room for `stream` (evicting if needed); its id, or None if there is none.
    fn admit(&self, stream: &TcpStream) -> Option<u64> {
        let socket = stream.try_clone().ok()?;
        let mut live = self.lock();
        if live.len() >= MAX_ADMIN_REQUESTS {
            let ages: Vec<(Instant, bool)> = live.iter().map(|f| (f.since, f.reading)).collect();
            let victim = eviction_victim(&ages)?;
            let evicted = live.swap_remove(victim);
            let _ = evicted.socket.shutdown(std::net::Shutdown::Both);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        live.push(InFlight {
            id,
            since: Instant::now(),
            reading: true,
            socket,
        });
        Some(id)
    }

    /// Connection `id` has its head: it is answered now, and no longer evictable.
    fn answering(&self, id: u64) -> bool {
        let mut live = self.lock();
        match live.iter_mut().find(|f| f.id == id) {
            Some(f) => {
                f.reading = false;
                true
            }
            None => false,
        }
    }

    fn done(&self, id: u64) {
        self.lock().retain(|f| f.id != id);
    }
}

/// Which connection to evict when every slot is taken: the one that has been reading
/// its head the longest (`(started, still reading)` per slot). None when every one is
/// already being answered (each within ADMIN_WRITE_DEADLINE).
fn eviction_victim(slots: &[(Instant, bool)]) -> Option<usize> {
    slots
        .iter()
        .enumerate()
        .filter(|(_, (_, reading))| *reading)
        .min_by_key(|(_, (since, _))| *since)
        .map(|(i, _)| i)
}

/// Each admin request gets a short-lived thread, so a silent connection (a browser's
/// preconnect, a port scanner) cannot hold up a health check behind it.
fn serve_in_thread(admin: &Arc<Admin>, stream: TcpStream) {
    let Some(id) = admin.slots.admit(&stream) else {
        return;
    };
    let worker = Arc::clone(admin);
    let spawned = thread::Builder::new()
        .name("admin-request".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            worker.serve(stream, id);
            worker.slots.done(id);
        });
    if spawned.is_err() {
        admin.slots.done(id);
    }
}

impl Admin {
    fn sample(&self) {
        let settings = self.proxy.settings();
        let attempts = settings
            .upstreams
            .list
            .iter()
            .map(|u| (u.label.clone(), metrics::Metrics::get(&u.attempts)))
            .collect();
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if h.len() == SAMPLES_KEPT {
            h.pop_front();
        }
        h.push_back(Sample {
            queue_depth: self.proxy.queue.depth(),
            attempts,
        });
    }

    fn serve(&self, mut stream: TcpStream, id: u64) {
        let deadline = Instant::now() + ADMIN_HEAD_DEADLINE;
        let Some(head) = read_request_line(&mut stream, deadline) else {
            return;
        };
        if !self.slots.answering(id) {
            return; // evicted just as its head completed
        }
        let (method, path) = (head.method.as_str(), head.path.as_str());
        let (status, ctype, body) = match path {
            p if p.starts_with("/queue") => match self.queue_request(&head, &stream) {
                Some((status, body)) => (status, "application/json", body),
                None => ("404 Not Found", "text/plain", "not found\n".into()),
            },
            "/metrics" => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::export(&self.gauges(), &self.endpoints()),
            ),
            "/status" => ("200 OK", "text/html; charset=utf-8", self.status_page()),
            "/healthz" if self.proxy.stopping() => {
                ("503 Service Unavailable", "text/plain", "stopping\n".into())
            }
            "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
            _ => ("404 Not Found", "text/plain", "not found\n".into()),
        };
        let (status, body) = if method == "GET" || method == "HEAD" || path.starts_with("/queue") {
            (status, body)
        } else {
            ("404 Not Found", "not found\n".to_string())
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if method != "HEAD" {
            response.push_str(&body);
        }
        let deadline = Instant::now() + ADMIN_WRITE_DEADLINE;
        let _ = write_all_by(&mut stream, response.as_bytes(), deadline);
    }

    /// A `/queue…` request: its (status, JSON body), None if no such endpoint.
    fn queue_request(
        &self,
        head: &AdminHead,
        stream: &TcpStream,
    ) -> Option<(&'static str, String)> {
        use crate::admin_queue as aq;
        let op = match aq::route(&head.method, &head.path, &head.query)? {
            Ok(op) => op,
            Err((status, why)) => return Some((status, aq::error_json(&why))),
        };
        if op.changes() {
            if let Err((status, why)) = aq::authorize(self.token.as_deref(), &head.raw) {
                if status.starts_with("401") {
                    let peer = stream
                        .peer_addr()
                        .map_or("admin API".to_string(), |a| a.to_string());
                    self.proxy
                        .errlog
                        .record(&peer, crate::error::LogCode::AdminUnauthorized);
                    log::warn!(
                        "admin API: {} {} from {peer} refused: missing or wrong token",
                        head.method,
                        head.path
                    );
                }
                return Some((status, aq::error_json(&why)));
            }
        }
        let answer = aq::run(self.proxy.queue.backend(), &self.pool, &op);
        if op.changes() && answer.0.starts_with("200") {
            log::info!(
                "admin API: {} {}?{}: {}",
                head.method,
                head.path,
                crate::logging::escaped(&head.query),
                answer.1.trim_end()
            );
        }
        Some(answer)
    }

    /// The status page's queue section: the oldest queued requests and the dead
    /// letters counted by reason.
    fn queue_section(&self) -> String {
        const SHOWN: usize = 10;
        let backend = self.proxy.queue.backend();
        let cell = |t: &str| html_escape(&crate::logging::escaped(t).to_string());
        let mut out = String::new();
        match backend.list(SHOWN) {
            Ok(rows) if rows.is_empty() => out.push_str("<p id=\"oldest\">Nothing queued.</p>"),
            Ok(rows) => {
                out.push_str("<table id=\"oldest\"><tr><th>X-Request-Id</th><th>method</th><th>target</th><th>age</th><th>attempts</th></tr>");
                for r in rows {
                    let _ = write!(
                        out,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        cell(&r.request_id),
                        cell(&r.method),
                        cell(&r.target),
                        crate::queue::ops::short_age(r.age),
                        r.attempts
                    );
                }
                out.push_str("</table>");
            }
            Err(e) => {
                let _ = write!(out, "<p id=\"oldest\">{}</p>", html_escape(&e.to_string()));
            }
        }
        if let Ok(dead) = backend.list_dead(usize::MAX) {
            let reasons = dead_reasons(&dead);
            let list: Vec<String> = reasons
                .iter()
                .map(|(r, n)| format!("{}: {n}", html_escape(r)))
                .collect();
            let _ = write!(
                out,
                "<p id=\"dead\">Dead letters: <b>{}</b>{}{}</p>",
                dead.len(),
                if list.is_empty() { "" } else { " — " },
                list.join(", ")
            );
        }
        out
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            busy_workers: self.pool.busy_workers(),
            workers: self.proxy.peak(),
            held_requests: self.pool.held(),
            queue_depth: self.proxy.queue.depth(),
            uptime: self.started.elapsed(),
            queue_backend: self.proxy.queue.kind(),
            shared: self.proxy.queue.shared_status(),
        }
    }

    fn endpoints(&self) -> Vec<EndpointFigures> {
        let settings = self.proxy.settings();
        settings
            .upstreams
            .list
            .iter()
            .map(|u| EndpointFigures {
                label: u.label.clone(),
                error_count: u.errors(),
                attempts: metrics::Metrics::get(&u.attempts),
                failures: std::array::from_fn(|i| {
                    (
                        ENDPOINT_FAILURES[i].name(),
                        metrics::Metrics::get(&u.failures[i]),
                    )
                }),
                idle_connections: u.idle_count(),
                check: settings
                    .cfg
                    .health_check_path
                    .as_ref()
                    .map(|_| CheckFigures {
                        up: !u.health.is_down(),
                        checks: metrics::Metrics::get(&u.health.probes),
                        failed: metrics::Metrics::get(&u.health.failed_probes),
                    }),
            })
            .collect()
    }

    /// Each endpoint's share of the attempts made in the last minute.
    fn recent_shares(&self, endpoints: &[EndpointFigures]) -> Vec<Option<f64>> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let base = h.iter().rev().nth(RECENT_SAMPLES).or_else(|| h.front());
        let delta = |e: &EndpointFigures| {
            let before = base
                .and_then(|s| s.attempts.iter().find(|(l, _)| *l == e.label))
                .map_or(0, |(_, n)| *n);
            e.attempts.saturating_sub(before)
        };
        let total: u64 = endpoints.iter().map(delta).sum();
        endpoints
            .iter()
            .map(|e| (total > 0).then(|| delta(e) as f64 / total as f64))
            .collect()
    }

    fn status_page(&self) -> String {
        let g = self.gauges();
        let endpoints = self.endpoints();
        let shares = self.recent_shares(&endpoints);
        let depths: Vec<usize> = {
            let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            h.iter()
                .map(|s| s.queue_depth)
                .chain([g.queue_depth])
                .collect()
        };
        let mut rows = String::new();
        for (e, share) in endpoints.iter().zip(&shares) {
            let checked = match e.check {
                None => "off",
                Some(c) if c.up => "up",
                Some(_) => "down",
            };
            let (class, health) = if checked == "down" {
                ("down", "marked down by health checks".to_string())
            } else if e.error_count == 0 {
                ("up", "healthy".to_string())
            } else {
                (
                    "down",
                    format!("failing ({} errors in a row)", e.error_count),
                )
            };
            let failed: u64 = e.failures.iter().map(|(_, n)| n).sum();
            let _ = write!(
                rows,
                "<tr class=\"{class}\"><td>{}</td><td>{health}</td><td class=\"check\">{checked}</td><td>{}</td><td>{}</td><td>{}</td><td>{failed}</td><td>{}</td></tr>",
                html_escape(&e.label),
                e.error_count,
                share.map_or("–".to_string(), |s| format!("{:.0}%", s * 100.0)),
                e.attempts,
                e.idle_connections,
            );
        }
        format!(
            include_str!("status.html"),
            version = env!("CARGO_PKG_VERSION"),
            uptime = human_duration(g.uptime),
            busy = g.busy_workers,
            workers = g.workers,
            held = g.held_requests,
            queue = g.queue_depth,
            rows = rows,
            queue_backend = queue_backend_line(g.queue_backend, g.shared.as_ref()),
            chart = queue_chart(&depths),
            tls = self.tls_line(),
            queued = self.queue_section(),
        )
    }

    /// The listener's certificate, or why handshakes fail (ACME not done yet).
    fn tls_line(&self) -> String {
        self.proxy.tls.as_ref().map_or(String::new(), |tls| {
            let class = if tls.has_certificate() {
                "meta"
            } else {
                "meta down"
            };
            format!(
                "<div class=\"{class}\" id=\"tls\">TLS: {}</div>",
                html_escape(&tls.status())
            )
        })
    }
}

/// Dead letters counted by reason (the text before its first `:` or `(`), most first.
fn dead_reasons(dead: &[crate::queue::ops::Listed]) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for d in dead {
        let reason = d
            .dead
            .as_ref()
            .and_then(|i| i.reason.as_deref())
            .unwrap_or("max age");
        let kind = reason
            .split([':', '('])
            .next()
            .unwrap_or(reason)
            .trim()
            .to_string();
        match counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind, 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts
}

/// An admin request's head.
struct AdminHead {
    method: String,
    path: String,
    query: String,
    /// The whole head (for `Authorization`).
    raw: Vec<u8>,
}

/// Reads the request line of an admin request, the whole head within `deadline`; None
/// if it is not one or does not arrive in time.
fn read_request_line(stream: &mut TcpStream, deadline: Instant) -> Option<AdminHead> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream.set_read_timeout(Some(left)).ok()?;
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 || buf.len() + n > MAX_ADMIN_HEAD_BYTES {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some(AdminHead {
        method,
        path: path.to_string(),
        query: query.to_string(),
        raw: buf,
    })
}

/// Writes all of `bytes` by `deadline` (each write bounded by what is left of it).
fn write_all_by(
    stream: &mut TcpStream,
    mut bytes: &[u8],
    deadline: Instant,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(std::io::ErrorKind::TimedOut)?;
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The queue's backend; for a shared one, its engine, depth, lease holder and last
/// engine error (HTML-escaped).
fn queue_backend_line(kind: &str, shared: Option<&RedisStatus>) -> String {
    let Some(s) = shared else {
        return format!("backend {kind}");
    };
    let lease = match (&s.lease, s.holding) {
        (_, true) => "held by this instance".to_string(),
        (Some(LeaseState::HeldBy { holder, .. }), false) => format!("held by {holder}"),
        _ => "holder unknown".to_string(),
    };
    let depth = s.depth.map_or("?".to_string(), |d| d.to_string());
    let error = s
        .last_error
        .as_deref()
        .map_or(String::new(), |e| format!(" · last engine error: {e}"));
    html_escape(&format!(
        "backend {kind} {} · {depth} waiting (all instances) · lease {lease} · {} engine errors{error}",
        s.target, s.engine_errors
    ))
}

/// The queue depth over the last minutes as an inline SVG polyline.
fn queue_chart(depths: &[usize]) -> String {
    const W: f64 = 600.0;
    const H: f64 = 120.0;
    let max = depths.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = if depths.len() > 1 {
        W / (depths.len() - 1) as f64
    } else {
        W
    };
    let points: Vec<String> = depths
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                H - d as f64 / max * (H - 10.0)
            )
        })
        .collect();
    format!(
        "<svg id=\"queue-chart\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" \
         aria-label=\"queue depth over the last {} minutes\"><rect width=\"{W}\" height=\"{H}\" class=\"bg\"/>\
         <polyline fill=\"none\" stroke-width=\"2\" points=\"{}\"/>\
         <text x=\"4\" y=\"14\">max {}</text></svg>",
        (depths.len() * SAMPLE_EVERY.as_secs() as usize).div_ceil(60).max(1),
        points.join(" "),
        max as usize
    )
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!(
        "{}d {:02}h {:02}m {:02}s",
        s / 86400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_line_names_backend_lease_and_errors() {
        assert_eq!(queue_backend_line("journal", None), "backend journal");
        let mut s = RedisStatus {
            target: "redis://h:1".into(),
            primary: Some("h:1".into()),
            depth: Some(7),
            lease: Some(LeaseState::HeldBy {
                holder: "b:5252 pid 9".into(),
                fence: 3,
            }),
            holding: false,
            last_error: Some("QUEUE_ENGINE_TIMED_OUT (<slow>)".into()),
            engine_errors: 2,
        };
        let line = queue_backend_line("redis", Some(&s));
        assert_eq!(
            line,
            "backend redis redis://h:1 · 7 waiting (all instances) · lease held by \
             b:5252 pid 9 · 2 engine errors · last engine error: \
             QUEUE_ENGINE_TIMED_OUT (&lt;slow&gt;)"
        );
        s.holding = true;
        assert!(queue_backend_line("redis", Some(&s)).contains("lease held by this instance"));
    }

    #[test]
    fn chart_scales_to_the_largest_depth() {
        let svg = queue_chart(&[0, 5, 10]);
        assert!(
            svg.contains("points=\"0.0,120.0 300.0,65.0 600.0,10.0\""),
            "{svg}"
        );
        assert!(svg.contains("max 10"));
        assert!(queue_chart(&[]).contains("<svg"));
    }

    #[test]
    fn eviction_takes_the_oldest_connection_still_reading() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        type Case<'a> = (&'a [(Instant, bool)], Option<usize>);
        let cases: &[Case] = &[
            (&[], None),
            (&[(at(0), false), (at(5), false)], None),
            (&[(at(3), true), (at(1), true), (at(2), true)], Some(1)),
            (&[(at(0), false), (at(9), true), (at(4), true)], Some(2)),
        ];
        for (slots, want) in cases {
            assert_eq!(eviction_victim(slots), *want, "{slots:?}");
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_secs(90061)), "1d 01h 01m 01s");
    }
}
