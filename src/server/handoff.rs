//! How connections reach workers.
//!
//! Up to `seats` free workers sit in `accept` on the listener themselves: a new
//! connection wakes one of them (the kernel wakes one blocked `accept` per connection)
//! and that worker serves it, with no other thread in between. The other free workers
//! park here, each on its own condition variable, the one that went idle last on top
//! (a stack, not a queue), so the workers in use are as few as the load needs and
//! their stacks and buffers stay warm; the rest are never touched and cost no memory.
//! A worker done with its connection takes a seat again if one is empty, else parks;
//! when the last seated worker leaves its seat, it wakes a parked one to take it.
//!
//! Only when no worker is free at all does the acceptor thread take connections: it
//! reclaims an idle keep-alive worker for a new client or answers 429 (SPEC §6), and
//! hands connections to workers through the `inbox`/`backlog` here. Once a worker is
//! parked again, the acceptor wakes it to a seat and steps back. At any instant either
//! seated workers or the acceptor call `accept`, never both (`acceptor_on` implies no
//! seat is taken), so a connection never lands on a thread that cannot serve it.

use std::collections::VecDeque;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::slots::Accepted;

/// Free workers that wait in `accept` themselves. More seats mean the seats run dry
/// (and a parked worker must be woken) less often under bursts; each seated worker is
/// one more stack and set of buffers kept warm. The kernel wakes blocked acceptors in
/// turn, so all of them stay in use.
pub const ACCEPT_SEATS: usize = 16;

pub(super) struct Handoff {
    state: Mutex<HandoffState>,
    /// One per worker: a parked worker sleeps on its own.
    wake: Vec<Condvar>,
    /// The acceptor thread sleeps here while workers hold the seats.
    acceptor: Condvar,
    seats: usize,
}

struct HandoffState {
    /// Parked workers, the one that went idle last on top.
    idle: Vec<usize>,
    /// `waiting[i]`: worker `i` is in `idle`.
    waiting: Vec<bool>,
    /// `inbox[i]`: the connection the acceptor handed to worker `i`.
    inbox: Vec<Option<Accepted>>,
    /// Connections the acceptor took while no worker was parked yet (a reserved
    /// worker is finishing its connection): the next worker to look takes them.
    backlog: VecDeque<Accepted>,
    /// Workers in (or on their way into) `accept`.
    seated: usize,
    /// The acceptor thread takes connections (no worker holds a seat).
    acceptor_on: bool,
    /// The listener is done (a stop, or it failed): nobody accepts again.
    listener_done: bool,
    /// Why the listener failed, for the acceptor to report.
    failure: Option<io::Error>,
    /// The acceptor has stopped: workers end once nothing is left for them.
    closed: bool,
}

impl HandoffState {
    fn may_seat(&self, seats: usize) -> bool {
        !self.acceptor_on && !self.listener_done && self.seated < seats
    }

    /// Takes worker `id` out of the parked stack (it woke without being popped).
    fn unpark(&mut self, id: usize) {
        if self.waiting[id] {
            self.waiting[id] = false;
            self.idle.retain(|&w| w != id);
        }
    }

    /// Pops the parked worker on top, if any.
    fn pop_parked(&mut self) -> Option<usize> {
        let id = self.idle.pop()?;
        self.waiting[id] = false;
        Some(id)
    }
}

/// What a worker does next.
pub(super) enum Turn {
    /// Serve this connection, handed over by the acceptor.
    Serve(Accepted),
    /// Take a seat: accept a connection from the listener, then call `left_seat`.
    Accept,
    /// The acceptor has stopped and nothing is left: end the thread.
    Stop,
}

impl Handoff {
    /// `seats`: how many workers may accept themselves (0: the acceptor does it all).
    pub(super) fn new(workers: usize, seats: usize) -> Self {
        Handoff {
            state: Mutex::new(HandoffState {
                idle: Vec::with_capacity(workers),
                waiting: vec![false; workers],
                inbox: (0..workers).map(|_| None).collect(),
                backlog: VecDeque::new(),
                seated: 0,
                acceptor_on: seats == 0,
                listener_done: false,
                failure: None,
                closed: false,
            }),
            wake: (0..workers).map(|_| Condvar::new()).collect(),
            acceptor: Condvar::new(),
            seats: seats.min(workers),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HandoffState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_worker(&self, state: MutexGuard<'_, HandoffState>, id: usize) {
        drop(state);
        self.wake[id].notify_one();
    }

    /// Worker `id`'s next turn: a connection handed to it, a seat, or the end. Parks
    /// until one of them is there.
    pub(super) fn recv(&self, id: usize) -> Turn {
        let mut state = self.lock();
        loop {
            if let Some(accepted) = state.inbox[id].take() {
                return Turn::Serve(accepted);
            }
            if let Some(accepted) = state.backlog.pop_front() {
                state.unpark(id);
                return Turn::Serve(accepted);
            }
            if state.closed {
                return Turn::Stop;
            }
            if state.may_seat(self.seats) {
                state.unpark(id);
                state.seated += 1;
                return Turn::Accept;
            }
            if !state.waiting[id] {
                state.waiting[id] = true;
                state.idle.push(id);
            }
            state = self.wake[id].wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A seated worker got its connection. The last one to leave wakes a parked worker
    /// to take a seat; when none is parked (every worker is busy), the acceptor takes
    /// over, to reclaim idle workers and answer 429s.
    pub(super) fn left_seat(&self) {
        let mut state = self.lock();
        state.seated -= 1;
        if state.seated > 0 || state.listener_done || state.closed {
            return;
        }
        match state.pop_parked() {
            Some(id) => self.wake_worker(state, id),
            None => {
                state.acceptor_on = true;
                drop(state);
                self.acceptor.notify_one();
            }
        }
    }

    /// A seated worker found the listener done: a stop (`None`) or a failure. No one
    /// takes a seat again, and the acceptor is told.
    pub(super) fn listener_ended(&self, failure: Option<io::Error>) {
        let mut state = self.lock();
        state.seated -= 1;
        state.listener_done = true;
        if state.failure.is_none() {
            state.failure = failure;
        }
        drop(state);
        self.acceptor.notify_one();
    }

    /// The acceptor waits for its turn: true when it is to accept, false once the
    /// listener is done (then `failure` says why, if it failed).
    pub(super) fn acceptor_turn(&self) -> bool {
        let mut state = self.lock();
        loop {
            if state.listener_done {
                return false;
            }
            if state.acceptor_on {
                return true;
            }
            state = self.acceptor.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Why a seated worker found the listener failed.
    pub(super) fn failure(&self) -> Option<io::Error> {
        self.lock().failure.take()
    }

    /// After the acceptor dealt with a connection: if a worker is parked, it is woken
    /// to a seat and the acceptor steps back.
    pub(super) fn acceptor_done_one(&self) {
        if self.seats == 0 {
            return;
        }
        let mut state = self.lock();
        if !state.backlog.is_empty() {
            return; // a worker on its way takes that first; keep accepting meanwhile
        }
        if let Some(id) = state.pop_parked() {
            state.acceptor_on = false;
            self.wake_worker(state, id);
        }
    }

    /// Hands `accepted` to the parked worker on top (the acceptor reserved a worker
    /// for it; if none is parked yet, the first to finish takes it).
    pub(super) fn send(&self, accepted: Accepted) {
        let mut state = self.lock();
        match state.pop_parked() {
            Some(id) => {
                state.inbox[id] = Some(accepted);
                self.wake_worker(state, id);
            }
            None => state.backlog.push_back(accepted),
        }
    }

    /// Lets every worker finish: `recv` gives `Stop` once nothing is left for it.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.listener_done = true;
        drop(state);
        for wake in &self.wake {
            wake.notify_one();
        }
        self.acceptor.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::{Handoff, Turn};
    use crate::slots::Accepted;

    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A real connected socket to hand over, tagged by its local port.
    fn accepted(listener: &TcpListener) -> (Accepted, u16) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let port = client.local_addr().unwrap().port();
        let (stream, peer) = listener.accept().unwrap();
        std::mem::forget(client); // keep the connection open for the test's length
        (Accepted { stream, peer }, port)
    }

    /// Waits (bounded) until `n` workers are parked.
    fn until_parked(h: &Handoff, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.lock().idle.len() != n {
            assert!(Instant::now() < deadline, "workers did not park");
            std::thread::yield_now();
        }
    }

    /// What a test worker thread reports.
    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Conn(u16),
        Stop,
    }

    /// A worker thread (of a handoff without seats) that reports every turn.
    fn spawn_worker(
        h: &Arc<Handoff>,
        id: usize,
        got: &mpsc::Sender<(usize, Got)>,
    ) -> std::thread::JoinHandle<()> {
        let (h, got) = (Arc::clone(h), got.clone());
        std::thread::spawn(move || loop {
            match h.recv(id) {
                Turn::Serve(a) => got.send((id, Got::Conn(a.peer.port()))).unwrap(),
                Turn::Accept => panic!("a handoff without seats gave a seat"),
                Turn::Stop => {
                    got.send((id, Got::Stop)).unwrap();
                    return;
                }
            }
        })
    }

    /// Without seats the acceptor does it all: the worker parked last is handed the
    /// next connection, a connection handed over while none is parked waits for the
    /// next worker that looks, and close ends every worker.
    #[test]
    fn last_parked_worker_first_then_backlog_then_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let h = Arc::new(Handoff::new(3, 0));
        assert!(h.acceptor_turn(), "no seats: the acceptor accepts");
        let (got_tx, got_rx) = mpsc::channel();
        let w0 = spawn_worker(&h, 0, &got_tx);
        until_parked(&h, 1);
        let w1 = spawn_worker(&h, 1, &got_tx);
        until_parked(&h, 2);
        let (a, port) = accepted(&listener);
        h.send(a);
        assert_eq!(
            got_rx.recv().unwrap(),
            (1, Got::Conn(port)),
            "last parked first"
        );
        until_parked(&h, 2); // worker 1 is back on top
        let (a, port) = accepted(&listener);
        h.send(a);
        assert_eq!(got_rx.recv().unwrap(), (1, Got::Conn(port)));
        until_parked(&h, 2);
        // No worker parked: the connection waits for the next one that looks.
        h.lock().idle.clear();
        h.lock().waiting.iter_mut().for_each(|w| *w = false);
        let (a, port) = accepted(&listener);
        h.send(a);
        assert_eq!(h.lock().backlog.len(), 1);
        let w2 = spawn_worker(&h, 2, &got_tx);
        assert_eq!(
            got_rx.recv().unwrap(),
            (2, Got::Conn(port)),
            "backlog taken"
        );
        h.close();
        for w in [w0, w1, w2] {
            w.join().unwrap();
        }
        let mut ended: Vec<usize> = got_rx
            .try_iter()
            .filter(|g| g.1 == Got::Stop)
            .map(|g| g.0)
            .collect();
        ended.sort_unstable();
        assert_eq!(ended, [0, 1, 2]);
    }

    /// Workers take the seats first and park beyond them; the last to leave its seat
    /// wakes the parked worker on top to it, and the acceptor stays out.
    #[test]
    fn seats_first_then_parking_and_the_last_to_leave_wakes_a_parked_worker() {
        let h = Handoff::new(3, 2);
        assert!(matches!(h.recv(0), Turn::Accept));
        assert!(matches!(h.recv(1), Turn::Accept));
        assert!(!h.lock().may_seat(h.seats), "both seats taken");
        // Worker 2 would park now (recv blocks); park it as recv does.
        h.lock().waiting[2] = true;
        h.lock().idle.push(2);
        h.left_seat();
        assert_eq!(h.lock().idle, [2], "a seat is still taken: nobody woken");
        h.left_seat();
        assert!(h.lock().idle.is_empty(), "the last to leave woke worker 2");
        assert!(!h.lock().acceptor_on);
        assert!(matches!(h.recv(2), Turn::Accept), "worker 2 takes the seat");
        assert_eq!(h.lock().seated, 1);
    }

    /// The acceptor turns on when the last seat empties with nobody parked, and off
    /// again once a worker parks and a connection has been dealt with.
    #[test]
    fn the_acceptor_covers_while_every_worker_is_busy() {
        let h = Handoff::new(2, 2);
        let t0 = h.recv(0);
        let t1 = h.recv(1);
        assert!(matches!((t0, t1), (Turn::Accept, Turn::Accept)));
        h.left_seat();
        assert!(!h.lock().acceptor_on, "one seat still taken");
        h.left_seat();
        assert!(
            h.lock().acceptor_on,
            "every worker busy: the acceptor accepts"
        );
        assert!(h.acceptor_turn());
        // A worker that finishes now parks instead of taking a seat.
        h.lock().waiting[0] = true;
        h.lock().idle.push(0);
        h.acceptor_done_one();
        assert!(
            !h.lock().acceptor_on,
            "a worker is parked: the acceptor steps back"
        );
        assert!(
            h.lock().idle.is_empty(),
            "the parked worker was woken to a seat"
        );
        assert!(matches!(h.recv(0), Turn::Accept));
        h.listener_ended(None);
        assert!(!h.acceptor_turn(), "the listener is done");
        assert!(h.failure().is_none());
    }
}
