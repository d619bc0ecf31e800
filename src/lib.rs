//! ServiceQ: a fault-tolerant HTTP/1.1 gateway. It spreads requests across a cluster's
//! endpoints, steers away from failing ones, retries, and keeps replayable requests in
//! a FIFO queue while the whole cluster is down.
//!
//! The request path, file by file: `server` (accept, worker pool, 429) → `conn` (one
//! client connection) → `http` (parsing) → `balancer` (which endpoint) → `forward`
//! (the upstream request) → `upstream` (pool, dial, attempt) → `relay` (stream the
//! response back). `error` maps every failure to its response and log code.
#![forbid(unsafe_code)]

pub mod accesslog;
pub mod acme;
pub mod admin;
pub mod admin_queue;
pub mod balancer;
pub mod body;
pub mod buffer;
pub mod config;
pub mod conn;
pub mod error;
pub mod formats;
pub mod forward;
pub mod health;
pub mod http;
pub mod journal;
pub mod linger;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod queue;
pub mod queue_cli;
pub mod relay;
pub mod server;
pub mod signals;
pub mod stream;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod wakeup;
