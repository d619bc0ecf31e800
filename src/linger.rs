//! Lingering close: after ServiceQ answers and closes a connection whose client may
//! still be sending (a 429, a 400, a 413), closing at once with unread bytes makes the
//! kernel send a reset, which can destroy the response before the client reads it
//! (RFC 9112 §9.6). One thread drains such sockets for a short while, then closes them,
//! so no worker and not the acceptor waits on a departing client.

use std::io::{self, Read};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// How long a closing socket is drained at most (nginx's lingering_time is 30 s;
/// a client that has read its response is usually gone in milliseconds).
pub const LINGER_FOR: Duration = Duration::from_secs(2);
/// Sockets lingering at once; beyond this they are closed at once.
const MAX_LINGERING: usize = 4096;
/// Pause between two sweeps over the lingering sockets.
const SWEEP_EVERY: Duration = Duration::from_millis(10);

pub struct Lingerer {
    tx: Sender<TcpStream>,
}

impl Lingerer {
    pub fn start() -> io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded(MAX_LINGERING);
        thread::Builder::new()
            .name("linger".into())
            .stack_size(64 * 1024)
            .spawn(move || run(&rx))?;
        Ok(Lingerer { tx })
    }

    /// Takes ownership of a socket whose sending side is already shut down.
    pub fn close(&self, stream: TcpStream) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        if let Err(TrySendError::Full(s) | TrySendError::Disconnected(s)) = self.tx.try_send(stream)
        {
            drop(s);
        }
    }
}

fn run(rx: &Receiver<TcpStream>) {
    let mut lingering: Vec<(TcpStream, Instant)> = Vec::new();
    let mut scratch = [0u8; 4096];
    loop {
        let next = if lingering.is_empty() {
            rx.recv().map_err(|_| ())
        } else {
            match rx.recv_timeout(SWEEP_EVERY) {
                Ok(s) => Ok(s),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(()),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
        };
        match next {
            Ok(s) => lingering.push((s, Instant::now() + LINGER_FOR)),
            Err(()) if lingering.is_empty() => return,
            Err(()) => {}
        }
        let now = Instant::now();
        lingering.retain_mut(|(s, deadline)| now < *deadline && drain(s, &mut scratch));
    }
}

/// Reads what is there; false once the peer has closed or the socket failed.
fn drain(s: &mut TcpStream, scratch: &mut [u8]) -> bool {
    loop {
        match s.read(scratch) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Half-closes `stream` (our side is done: FIN after the reply) and hands it to the
/// lingering closer, which drains what the client still sends before closing, so the
/// client reads the reply instead of a reset. Used by the acceptor and the workers.
pub fn linger_after_reply(linger: &Lingerer, stream: TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    linger.close(stream);
}
