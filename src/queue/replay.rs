//! The replay thread: one loop, whatever the backend. It takes the head, tries it with
//! SPEC §4's attempt sequence, and only when an endpoint has answered (any status) does
//! it acknowledge the head and go on; while every endpoint is down it keeps the head and
//! tries again after [`REPLAY_PAUSE_MIN`], doubling to [`REPLAY_PAUSE_MAX`].

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::{Backend, Delivery};
use crate::attempt::{endpoint_failed, Scratch, Settings};
use crate::buffer::IoBuf;
use crate::error::{AttemptError, Failure};
use crate::logging::escaped;
use crate::logging::ErrorLog;
use crate::metrics::{inc, METRICS};
use crate::relay::ClientFraming;
use crate::relay::{relay_body, RelayEnd, Sink, RELAY_READ_BYTES};
use crate::slots::Pool;
use crate::upstream::OutgoingRequest;
use crate::wakeup::Wakeup;

/// First pause after a replay try found every endpoint down (SPEC §5) …
pub const REPLAY_PAUSE_MIN: Duration = Duration::from_millis(500);
/// … doubling up to this.
pub const REPLAY_PAUSE_MAX: Duration = Duration::from_secs(5);
/// How long the loop waits for a head before it looks at the stop flag again.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// What the replay loop needs from the process, and no more: the settings snapshot the
/// attempt sequence runs on, the error log, whether a stop began, and the wake-up a
/// health check rings when an endpoint comes back. `Proxy` provides it.
pub trait ReplayContext: Send + Sync + 'static {
    fn settings(&self) -> Arc<Settings>;
    fn errlog(&self) -> &ErrorLog;
    fn stopping(&self) -> bool;
    fn wakeup(&self) -> &Wakeup;
}

/// How a head left the replay loop's hands.
enum Done {
    /// Acknowledged or dead-lettered.
    Removed,
    /// A stop began; the head stays queued.
    Stopped,
    /// No longer ours (lease lost); the head stays queued for its new consumer.
    Lost,
}

/// The consumer side, handed to the replay thread.
pub struct Replay {
    backend: Arc<dyn Backend>,
    max_age: Option<Duration>,
}

impl Replay {
    pub fn new(backend: Arc<dyn Backend>, max_age: Option<Duration>) -> Self {
        Replay { backend, max_age }
    }

    /// Starts the replay thread.
    pub fn start<C: ReplayContext>(
        self,
        proxy: Arc<C>,
        pool: Arc<Pool>,
    ) -> io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name("replay".into())
            .spawn(move || self.run(&*proxy, &pool))
    }

    fn run(self, proxy: &dyn ReplayContext, pool: &Pool) {
        let mut buf = IoBuf::with_capacity(RELAY_READ_BYTES);
        let mut scratch = Scratch::new();
        while !proxy.stopping() {
            let Some(head) = self.backend.head(IDLE_WAIT) else {
                continue;
            };
            let done = if self.expired(&head) {
                self.dead_letter(&head);
                Done::Removed
            } else {
                self.deliver_head(proxy, &head, &mut buf, &mut scratch)
            };
            match done {
                Done::Stopped => return,
                Done::Lost => continue,
                // The request held its client's CONCURRENCY_PEAK slot until now.
                Done::Removed if self.backend.holds_slots() => pool.release_hold(),
                Done::Removed => {}
            }
        }
    }

    /// Tries the head until an endpoint answers, or a stop begins, or the head is no
    /// longer ours to deliver (the head stays queued in both cases).
    fn deliver_head(
        &self,
        proxy: &dyn ReplayContext,
        head: &Delivery,
        buf: &mut IoBuf,
        scratch: &mut Scratch,
    ) -> Done {
        let req = &head.req;
        let mut pause = REPLAY_PAUSE_MIN;
        loop {
            // Checked right before each try: a replayer paused past its lease (SIGSTOP)
            // must not send what another instance now delivers.
            if !self.backend.is_current(head) {
                log::warn!(
                    "replay of {} given up: the queue's lease was lost",
                    req.named()
                );
                return Done::Lost;
            }
            if !self.backend.attempt(head) {
                log::info!("{} dropped by an operator: not replayed", req.named());
                return Done::Removed;
            }
            match deliver(proxy, head, buf, scratch) {
                Ok((status, endpoint)) => {
                    inc(&METRICS.replayed_total);
                    self.backend.ack(head);
                    log::info!(
                        "replayed {}: {status} from {endpoint} after {:.1?} queued; {} left",
                        req.named(),
                        req.queued_at.elapsed(),
                        self.backend.depth()
                    );
                    return Done::Removed;
                }
                Err(e) => {
                    log::warn!(
                        "replay of {} {} failed ({e}); next try in {pause:?}",
                        escaped(&req.method),
                        escaped(&req.target)
                    );
                    if proxy.stopping() {
                        return Done::Stopped;
                    }
                    // A health check seeing an endpoint back ends the pause at once.
                    pause = match proxy.wakeup().sleep(pause) {
                        true => REPLAY_PAUSE_MIN,
                        false => (pause * 2).min(REPLAY_PAUSE_MAX),
                    };
                    if self.expired(head) {
                        self.dead_letter(head);
                        return Done::Removed;
                    }
                }
            }
        }
    }

    /// The head is over DEFERRED_Q_MAX_AGE: out of the queue, with why.
    fn dead_letter(&self, head: &Delivery) {
        inc(&METRICS.dead_lettered_total);
        let max = self.max_age.unwrap_or_default();
        let reason = super::ops::max_age_reason(max, head.req.queued_at.elapsed());
        self.backend.dead_letter_because(head, &reason);
    }

    fn expired(&self, head: &Delivery) -> bool {
        self.max_age
            .is_some_and(|max| head.req.queued_at.elapsed() > max)
    }
}

/// One SPEC §4 sequence for a queued request. The response body is read to the end and
/// discarded (nobody waits for it), so the connection can be reused.
fn deliver(
    proxy: &dyn ReplayContext,
    head: &Delivery,
    buf: &mut IoBuf,
    scratch: &mut Scratch,
) -> Result<(u16, String), AttemptError> {
    let req = &head.req;
    let out = OutgoingRequest {
        method: &req.method,
        request_line: &req.request_line,
        headers: &req.headers,
        body: &req.body,
        upgrade: false,
    };
    let settings = proxy.settings();
    let (idx, mut exchange) = settings.try_endpoints(proxy.errlog(), &out, buf, scratch)?;
    let endpoint = settings.upstreams.list[idx].label.clone();
    let mut discard = io::sink();
    let mut gathered = Vec::new();
    let mut sink = Sink {
        client: &mut discard,
        out: &mut gathered,
        framing: ClientFraming::AsIs,
        body_bytes: 0,
    };
    let resp = &exchange.head;
    let end = relay_body(
        &mut exchange.conn,
        buf,
        resp.framing,
        resp.keep_alive,
        &mut sink,
    );
    match &end {
        RelayEnd::Complete { reusable: true } => {
            settings
                .upstreams
                .release(idx, exchange.conn, &mut scratch.held);
        }
        // The endpoint answered (it has the request): delivered, but its failure is
        // logged and counted as a client's would be.
        RelayEnd::UpstreamBroke(why) => {
            log::warn!("{endpoint} broke off mid-response to a replay: {why}");
            let up = &settings.upstreams.list[idx];
            endpoint_failed(proxy.errlog(), up, Failure::UpstreamBrokeOff);
        }
        _ => {}
    }
    let status = exchange.head.status;
    scratch.reuse_head(exchange.head);
    Ok((status, endpoint))
}
