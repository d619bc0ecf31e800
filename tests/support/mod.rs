//! Shared helpers for the integration tests, by role:
//!
//! | file | what it holds |
//! |---|---|
//! | `launch.rs` | `Conf` bodies, the real `serviceq` binary started on an OS-chosen port (`Launch`, `ServiceQ`), runs expected to end by themselves (`run_check`, `run_binary`, `expect_start_failure`) |
//! | `clients.rs` | the raw HTTP/1.1 client (`Client`, `Response`, `get`, `request`) on `BufConn`; checks of SPEC §6 responses and SPEC §7 log lines |
//! | `mocks.rs` | the mock upstream (`Upstream`, `Behaviour`, `Resp`, `Recorded`), `raw_endpoint`, refusing ports |
//! | `waits.rs` | `wait_until`, `holds_for`, `wait_for_port`: polling with a deadline |
//! | `tools.rs` | `require`, `require_tool`: a missing tool fails under `CI`, skips elsewhere |
//! | `tempdir.rs` | `TempDir`, removed on drop |
//! | `queue.rs`, `redis_server.rs`, `tls.rs`, `prometheus.rs`, `browser.rs` | helpers for one area, imported by name (`use support::tls::*;`) |
//!
//! The first six are re-exported here, so a test says `use support::*;`.
//!
//! Every blocking read has a timeout and every wait polls a condition with a deadline,
//! so a misbehaving proxy fails a test instead of hanging the suite. Nothing here uses a
//! fixed port: tests run in parallel.
//!
//! ## Dead code
//! Each `tests/*.rs` file is a crate of its own that compiles this module anew and uses
//! only part of it, and rustc's dead-code lint sees one crate at a time: a helper that
//! file does not call would warn there, although others do. So every test file declares
//! the module as `#[allow(dead_code)] mod support;` (a new test file needs the same
//! line), and nothing inside this directory allows dead code. The allowance is on what
//! one file imports, not on the helpers: a helper that no test uses at all still shows,
//! as a dead-code warning in every test binary, with
//! `cargo clippy --tests -- --force-warn dead_code`.

mod clients;
mod launch;
mod mocks;
mod tempdir;
mod tools;
mod waits;

/// Headless Chromium for the status page.
pub mod browser;
/// The Prometheus text format: a strict parser, prometheus_client and promtool.
pub mod prometheus;
/// Deferred-queue helpers (raw requests with ids, drain and buffered checks).
pub mod queue;
// The `serviceq queue` command-line tests.
pub mod queue_ops;
/// Real redis-server / redis-sentinel processes for the shared-queue tests.
pub mod redis_server;
/// TLS helpers: openssl-made certificates, an `openssl s_server` endpoint, curl.
pub mod tls;

pub use clients::*;
pub use launch::*;
pub use mocks::*;
pub use tempdir::*;
pub use tools::*;
pub use waits::*;
