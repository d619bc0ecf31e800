//! ServiceQ: a fault-tolerant HTTP/1.1 gateway. It spreads requests across a cluster's
//! endpoints, steers away from failing ones, retries, and keeps replayable requests in
//! a FIFO queue while the whole cluster is down.
//!
//! The request path, file by file (docs/LIFECYCLE.md walks it): `server` (accept,
//! worker pool, 429; slot accounting in `slots`) → `conn` (one client connection) →
//! `http` (parsing) and `body` (the request body) → `attempt` (SPEC §4: pick with
//! `balancer`, attempt with `upstream`, retry) → `forward` (the upstream request and
//! the client's response head) → `relay` (stream the response back), or `queue` (the
//! deferred queue and its replay loop) or `tunnel` (after a 101). Every import points
//! down that path; `error` maps every failure to its response and log code.
// One `setsockopt` (`stream::set_defer_accept`) is the only unsafe code; it carries
// its proof. Everything else stays safe: `deny`, with that one `allow`.
#![deny(unsafe_code)]

pub mod accesslog;
pub mod acme;
pub mod admin;
pub mod admin_queue;
pub mod attempt;
pub mod balancer;
pub mod body;
pub mod buffer;
pub mod checks;
pub mod config;
pub mod conn;
pub mod error;
pub mod formats;
pub mod forward;
pub mod health;
pub mod http;
pub mod linger;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod queue;
pub mod queue_cli;
pub mod relay;
pub mod server;
pub mod shared_queue;
pub mod signals;
pub mod slots;
pub mod stream;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod wakeup;
