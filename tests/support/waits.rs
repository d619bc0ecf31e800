//! Waiting on a condition with a deadline: every wait in the tests polls, none is a
//! bare sleep, so a slow machine makes a test slower, not flaky.

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Holds for the whole `window` (polled every 10 ms); false as soon as it does not.
pub fn holds_for(window: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        if !cond() {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port` (true) or
/// `timeout` passes (false).
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || TcpStream::connect(("127.0.0.1", port)).is_ok())
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}
