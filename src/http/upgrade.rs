//! Switching protocols (RFC 9110 §7.8, RFC 6455 §4): which requests offer an upgrade
//! and which 101 responses may be relayed. Pure; `tunnel.rs` moves the bytes once the
//! switch is made.

use crate::http::headers::{self, connection_tokens, list_elements};
use crate::http::{RequestHead, ResponseHead, Version};

/// The `Upgrade` value to forward for `head`, if it asks to switch protocols: an
/// HTTP/1.1 request (RFC 9110 §7.8: an Upgrade in HTTP/1.0 is ignored) whose
/// `Connection` lists `upgrade`, with the protocols of its `Upgrade` fields less `h2c`.
/// `None`: forward it as an ordinary request, without either field.
pub fn offered_upgrade(head: &RequestHead) -> Option<Vec<u8>> {
    if head.version != Version::Http11 || !connection_tokens(&head.headers).contains("upgrade") {
        return None;
    }
    let mut value = Vec::new();
    let offered = headers::named(&head.headers, "upgrade").flat_map(|h| list_elements(&h.value));
    for protocol in offered.filter(|p| !is_h2c(p)) {
        if !value.is_empty() {
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(protocol);
    }
    (!value.is_empty()).then_some(value)
}

/// HTTP/2 over cleartext (RFC 7540 §3.2, removed by RFC 9113): refused, so the
/// connection stays HTTP/1.1.
fn is_h2c(protocol: &[u8]) -> bool {
    let name = protocol.split(|&b| b == b'/').next().unwrap_or_default();
    name.eq_ignore_ascii_case(b"h2c")
}

/// Whether a 101 from an endpoint may be relayed: the request offered an upgrade and
/// the 101 names the protocol switched to (RFC 9110 §15.2.2: it must).
pub fn accepts_switch(offered: bool, resp: &ResponseHead) -> bool {
    offered && headers::find(&resp.headers, "upgrade").is_some_and(|h| !h.value.is_empty())
}
