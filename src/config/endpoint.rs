//! ENDPOINTS entries: `scheme://host[:port]`, IPv6 literals in brackets.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::values::*;

/// `http` or `https`, as written in ENDPOINTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// One upstream endpoint from ENDPOINTS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// Host name or IP literal, without brackets for IPv6.
    pub host: String,
    pub port: u16,
}

// ---------------------------------------------------------------------------
// Endpoints

impl Scheme {
    /// 80 for http, 443 for https.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Endpoint {
    /// The `Host` header for requests to this endpoint: `host`, or `host:port` when the
    /// port is not the scheme's default (RFC 9110 §7.2).
    pub fn host_header(&self) -> String {
        let host = self.bracketed_host();
        if self.is_default_port() {
            host.into_owned()
        } else {
            format!("{host}:{}", self.port)
        }
    }

    pub fn is_default_port(&self) -> bool {
        self.port == self.scheme.default_port()
    }

    /// The host as written in a URL: IPv6 literals in brackets (RFC 3986 §3.2.2).
    pub(super) fn bracketed_host(&self) -> Cow<'_, str> {
        if self.host.contains(':') {
            Cow::Owned(format!("[{}]", self.host))
        } else {
            Cow::Borrowed(&self.host)
        }
    }
}

/// `scheme://host:port` with the port always explicit: the form of the error log (§7).
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{}",
            self.scheme,
            self.bracketed_host(),
            self.port
        )
    }
}

/// One ENDPOINTS entry: `scheme://host[:port]`, optionally with a single trailing `/`.
impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_endpoint(s).map_err(|why| format!("endpoint {}: {why}", quote(s)))
    }
}

pub(super) fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or("no scheme: expected scheme://host[:port], e.g. http://10.0.0.5:8001")?;
    let scheme = parse_scheme(scheme)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err("a path is not allowed: expected scheme://host[:port]".to_string());
    }
    if authority.contains('@') {
        return Err("user information (user@host) is not allowed".to_string());
    }
    let (host, port) = split_host_port(authority)?;
    Ok(Endpoint {
        scheme,
        host: host.to_string(),
        port: port.unwrap_or(scheme.default_port()),
    })
}

pub(super) fn parse_scheme(scheme: &str) -> Result<Scheme, String> {
    if scheme.eq_ignore_ascii_case("http") {
        Ok(Scheme::Http)
    } else if scheme.eq_ignore_ascii_case("https") {
        Ok(Scheme::Https)
    } else {
        Err(format!("scheme {} must be http or https", quote(scheme)))
    }
}

/// Splits `host[:port]` or `[v6]:port`; the host comes back without brackets.
pub(super) fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => split_ipv6_literal(bracketed)?,
        None if authority.matches(':').count() > 1 => {
            return Err("IPv6 addresses need brackets, e.g. http://[::1]:8080".to_string());
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            check_host_name(host)?;
            (host, port)
        }
    };
    let port = port.map(parse_endpoint_port).transpose()?;
    Ok((host, port))
}

/// `::1]:8080` (after the `[`) into the address and the optional port text.
pub(super) fn split_ipv6_literal(bracketed: &str) -> Result<(&str, Option<&str>), String> {
    let (host, after) = bracketed
        .split_once(']')
        .ok_or("unclosed \"[\" in an IPv6 address")?;
    if host.parse::<Ipv6Addr>().is_err() {
        return Err(format!("{} is not an IPv6 address", quote(host)));
    }
    match after {
        "" => Ok((host, None)),
        _ => match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None => Err("expected :port after the IPv6 address".to_string()),
        },
    }
}

/// A DNS name or IPv4 literal. Checked here so that a typo fails at start rather than
/// as a stream of `UPSTREAM_DOWN` errors.
pub(super) fn check_host_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is missing".to_string());
    }
    let name_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if !host.chars().all(name_chars) {
        return Err(format!("{} is not a valid host name", quote(host)));
    }
    // All digits and dots can only be an IPv4 address; `10.0.0.256` is a typo.
    let looks_numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if looks_numeric && host.parse::<Ipv4Addr>().is_err() {
        return Err(format!("{} is not an IPv4 address", quote(host)));
    }
    Ok(())
}

pub(super) fn parse_endpoint_port(port: &str) -> Result<u16, String> {
    parse_uint(port)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n != 0)
        .ok_or_else(|| expected("a port from 1 to 65535", port))
}
