//! SPEC §4's attempt sequence, and the reloadable [`Settings`] it runs on: pick an
//! endpoint (error-feedback weighted random, `balancer.rs`), attempt the request on it
//! (`upstream.rs`), and on failure retry round-robin, `RETRY_GAP` apart, up to
//! `MAX_RETRIES`. It knows nothing of clients: a worker and the replay thread both call
//! [`Settings::try_endpoints`] with an [`OutgoingRequest`] and get back the endpoint that
//! answered and its response head, or the last failure.

use std::io;

use native_tls::TlsConnector;
use rand::rngs::SmallRng;

use crate::balancer;
use crate::buffer::IoBuf;
use crate::config::Config;
use crate::error::{AttemptError, Failure, Reply, Retry};
use crate::forward::CustomHeaders;
use crate::http::ResponseHead;
use crate::logging::ErrorLog;
use crate::upstream::{Exchange, Held, OutgoingRequest, Upstream, Upstreams};

/// Per-thread state for `try_endpoints`, kept to avoid an allocation per request.
pub struct Scratch {
    pub errors: Vec<u32>,
    /// The health checks' verdicts at the first attempt (`Upstreams::down_mask`).
    pub down: Vec<bool>,
    pub rng: SmallRng,
    /// Attempts the last `try_endpoints` made (for the access log).
    pub attempts: u32,
    /// The endpoint connections this thread keeps between requests.
    pub held: Held,
    /// Storage for response heads: an `Exchange` takes it, and the caller gives it
    /// back with [`Scratch::reuse_head`] once the response is relayed.
    pub resp: ResponseHead,
}

impl Scratch {
    pub fn new() -> Self {
        use rand::SeedableRng;
        Scratch {
            errors: Vec::new(),
            down: Vec::new(),
            rng: SmallRng::from_entropy(),
            attempts: 0,
            held: Held::default(),
            resp: ResponseHead::empty(),
        }
    }

    /// Gives back the head an `Exchange` took, so the next response reuses its buffers.
    pub fn reuse_head(&mut self, head: ResponseHead) {
        self.resp = head;
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether the client connection stays open after a generated reply: `Close` adds
/// `Connection: close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterReply {
    KeepAlive,
    Close,
}

/// Whether a generated reply carries its JSON body: not in answer to HEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyBody {
    Send,
    /// The head only, its Content-Length still the body's (RFC 9110 §9.3.2).
    Omit,
}

impl ReplyBody {
    pub fn for_method(method: &str) -> Self {
        if method == "HEAD" {
            ReplyBody::Omit
        } else {
            ReplyBody::Send
        }
    }
}

/// Records a failure against endpoint `up`, as its disposition says (the error log,
/// the endpoint's error count and failure counter), and returns its retry rule.
pub fn endpoint_failed(errlog: &ErrorLog, up: &Upstream, failure: Failure) -> Retry {
    let d = failure.disposition();
    if let Some(code) = d.log {
        if d.counts_against_endpoint {
            up.record_failure(code);
        }
        errlog.record(&up.label, code);
    }
    d.retry
}

/// Everything a SIGHUP may change (SPEC §10): the configuration and what is derived
/// from it. A request uses one snapshot from start to end; a reload swaps in a new one
/// for the requests that start after it.
pub struct Settings {
    pub cfg: Config,
    pub upstreams: Upstreams,
    pub response_headers: CustomHeaders,
    pub request_headers: CustomHeaders,
    /// Where request bodies beyond CLIENT_BODY_BUFFER_SIZE go.
    spill: crate::body::Spill,
}

impl Settings {
    /// Derives the run-time settings; endpoints also in `previous` keep their
    /// connection pool and error count.
    pub fn new(cfg: Config, connector: Option<TlsConnector>, previous: Option<&Settings>) -> Self {
        let upstreams = Upstreams::new(
            &cfg.endpoints,
            connector,
            cfg.outgoing_request_timeout,
            cfg.concurrency_peak,
            previous.map(|p| &p.upstreams),
        );
        Settings {
            upstreams,
            response_headers: CustomHeaders::new(&cfg.custom_response_headers),
            request_headers: CustomHeaders::new(&cfg.custom_request_headers),
            spill: crate::body::Spill {
                memory_bytes: cfg.client_body_buffer_size,
                dir: cfg.client_body_temp_dir.clone(),
            },
            cfg,
        }
    }

    /// SPEC §4: a weighted-random first attempt, then round-robin, up to MAX_RETRIES
    /// attempts `RETRY_GAP` apart. Each failure counts against its endpoint and goes to
    /// the error log; the first complete response head wins. On failure, the last
    /// attempt's error decides the response.
    pub fn try_endpoints(
        &self,
        errlog: &ErrorLog,
        req: &OutgoingRequest<'_>,
        buf: &mut IoBuf,
        scratch: &mut Scratch,
    ) -> Result<(usize, Exchange), AttemptError> {
        let ups = &self.upstreams;
        let mut last = None;
        let mut idx = 0;
        for attempt in 0..self.cfg.max_retries {
            scratch.attempts = attempt + 1;
            if attempt == 0 {
                ups.error_counts(&mut scratch.errors);
                ups.down_mask(&mut scratch.down);
                idx = balancer::first_choice(&scratch.errors, &scratch.down, &mut scratch.rng);
            } else {
                if !self.cfg.retry_gap.is_zero() {
                    std::thread::sleep(self.cfg.retry_gap);
                }
                idx = balancer::next_after(idx, ups.count(), &scratch.down);
            }
            let up = &ups.list[idx];
            match ups.attempt(idx, req, buf, &mut scratch.held, &mut scratch.resp) {
                Ok(exchange) => {
                    up.record_success();
                    return Ok((idx, exchange));
                }
                Err(e) => {
                    let retry = endpoint_failed(errlog, up, e.failure());
                    log::debug!(
                        "{} attempt on {}: {e}",
                        crate::logging::escaped(req.method),
                        up.label
                    );
                    last = Some(e);
                    // An upgrade is retried only if it never reached the endpoint.
                    if req.upgrade && retry == Retry::MaybeSent {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or(AttemptError::Connect(io::ErrorKind::NotFound.into())))
    }

    /// A SPEC §6 response: JSON body, Content-Length, the custom response headers, and
    /// `Connection: close` when the connection ends after it. Counted in /metrics here,
    /// the one place every generated response passes.
    pub fn render_reply(&self, reply: Reply, after: AfterReply, body: ReplyBody) -> Vec<u8> {
        crate::metrics::METRICS.reply(reply);
        let (status, reason, _) = reply.parts();
        let text = reply.body();
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            text.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.response_headers.rendered);
        if after == AfterReply::Close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if body == ReplyBody::Send {
            out.extend_from_slice(text.as_bytes());
        }
        out
    }

    /// Where request bodies beyond CLIENT_BODY_BUFFER_SIZE go.
    pub fn body_spill(&self) -> &crate::body::Spill {
        &self.spill
    }

    /// Whether a request may wait in the queue (SPEC §5).
    pub fn is_queueable(&self, method: &str, target: &str) -> bool {
        (self.cfg.enable_deferred_q || self.cfg.enable_upfront_q)
            && self.cfg.request_formats.is_eligible(method, target)
    }
}
