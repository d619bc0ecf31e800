//! `Wakeup`: a sleep that another thread can cut short. The replay thread sleeps on one
//! between tries while every endpoint is down, and the health checker wakes it the
//! moment a check sees an endpoint come back; the checker sleeps on another between
//! rounds, which a reload wakes.
//!
//! A wake is never lost: it bumps a generation under the mutex, and a sleeper returns
//! at once if the generation moved since its last sleep — even when the wake came while
//! it was busy (a replay attempt in progress) rather than asleep. One sleeper per
//! `Wakeup`.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Wakeup {
    state: Mutex<Generations>,
    cv: Condvar,
}

#[derive(Default)]
struct Generations {
    /// Bumped by every `wake`.
    woken: u64,
    /// The generation the sleeper last saw.
    seen: u64,
}

impl Wakeup {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends the current (or the next) `sleep` early.
    pub fn wake(&self) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.woken = g.woken.wrapping_add(1);
        self.cv.notify_all();
    }

    /// Sleeps for `dur` or until woken; true when woken (also by a wake that came since
    /// the previous sleep ended).
    pub fn sleep(&self, dur: Duration) -> bool {
        let deadline = Instant::now() + dur;
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while g.woken == g.seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = match self.cv.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        g.seen = g.woken;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn sleeps_the_whole_time_when_nobody_wakes() {
        let w = Wakeup::new();
        let start = Instant::now();
        assert!(!w.sleep(Duration::from_millis(30)));
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn a_wake_cuts_the_sleep_short() {
        let w = Arc::new(Wakeup::new());
        let waker = Arc::clone(&w);
        let start = Instant::now();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            waker.wake();
        });
        assert!(w.sleep(Duration::from_secs(10)));
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
    }

    #[test]
    fn a_wake_before_the_sleep_is_not_lost_and_counts_once() {
        let w = Wakeup::new();
        w.wake();
        w.wake();
        let start = Instant::now();
        assert!(w.sleep(Duration::from_secs(10)));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(!w.sleep(Duration::from_millis(10)), "already consumed");
    }
}
