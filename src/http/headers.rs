//! Header fields and the rules about which of them cross a proxy.

/// One header field as received: the name with its case preserved, the value with
/// surrounding whitespace trimmed (it may hold obs-text bytes, so it is not a `String`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// SPEC §3 (after RFC 9110 §7.6.1 and RFC 9112 §9.6): these never cross a proxy, nor do
/// the fields that `Connection` names.
pub const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The tokens of every `Connection` field (RFC 9110 §7.6.1), read in place rather than
/// collected, so a head costs no allocation for them. Heads have a handful of fields
/// and at most one `Connection`, which is found once here.
#[derive(Clone, Copy)]
pub struct ConnectionTokens<'a> {
    /// The value of the first `Connection` field.
    first: Option<&'a [u8]>,
    /// The fields from the second `Connection` on (empty when there is at most one).
    rest: &'a [Header],
    /// The only token, when there is one `Connection` field holding one (the usual
    /// `keep-alive` or `close`): then a lookup is one comparison.
    single: Option<&'a [u8]>,
}

impl<'a> ConnectionTokens<'a> {
    /// Every token, in order, as received (compare them case-insensitively).
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> {
        let rest = named(self.rest, "connection").flat_map(|h| list_elements(&h.value));
        self.first.into_iter().flat_map(list_elements).chain(rest)
    }

    /// Whether some `Connection` field lists `token`, case-insensitively.
    pub fn contains(&self, token: &str) -> bool {
        if let Some(single) = self.single {
            return single.eq_ignore_ascii_case(token.as_bytes());
        }
        let Some(first) = self.first else {
            return false;
        };
        let is = |t: &[u8]| t.eq_ignore_ascii_case(token.as_bytes());
        list_elements(first).any(is)
            || (!self.rest.is_empty()
                && named(self.rest, "connection").any(|h| list_elements(&h.value).any(is)))
    }
}

/// The tokens of the `Connection` fields among `headers`.
pub fn connection_tokens(headers: &[Header]) -> ConnectionTokens<'_> {
    let is_connection = |h: &Header| h.name.eq_ignore_ascii_case("connection");
    let Some(i) = headers.iter().position(is_connection) else {
        return ConnectionTokens {
            first: None,
            rest: &[],
            single: None,
        };
    };
    let after = &headers[i + 1..];
    let first = &headers[i].value;
    let rest = after
        .iter()
        .position(is_connection)
        .map_or(&[][..], |j| &after[j..]);
    let single = (rest.is_empty() && !first.contains(&b',')).then(|| trim_ows(first));
    ConnectionTokens {
        first: Some(first),
        rest,
        single,
    }
}

/// Whether the field `name` must not be forwarded: it is hop-by-hop by definition, or the
/// `Connection` field named it.
pub fn is_hop_by_hop(name: &str, connection_tokens: &ConnectionTokens<'_>) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name)) || connection_tokens.contains(name)
}

/// The first field called `name` (field names are case-insensitive, RFC 9110 §5.1).
pub fn find<'a>(headers: &'a [Header], name: &str) -> Option<&'a Header> {
    named(headers, name).next()
}

/// Whether any field called `name` holds `token` in its comma-separated list, compared
/// case-insensitively (RFC 9110 §5.6.1 lists; tokens such as `close` are case-insensitive).
pub fn has_token(headers: &[Header], name: &str, token: &str) -> bool {
    named(headers, name)
        .flat_map(|h| list_elements(&h.value))
        .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Every field called `name`, case-insensitively, in the order received.
pub fn named<'a, 'n>(headers: &'a [Header], name: &'n str) -> impl Iterator<Item = &'a Header> + 'n
where
    'a: 'n,
{
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
}

/// The non-empty elements of a comma-separated list value, each trimmed of OWS.
/// RFC 9110 §5.6.1.2: a recipient accepts and ignores empty list elements (`a, , b`).
/// Quoted strings are not special-cased: the lists ServiceQ reads (`Connection`,
/// `Transfer-Encoding`) hold tokens only.
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// `value` without leading and trailing spaces and tabs (OWS, RFC 9110 §5.6.3).
pub fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    value.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> Header {
        Header {
            name: name.to_string(),
            value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn connection_tokens_span_fields_and_ignore_case() {
        let headers = [
            h("Host", "a"),
            h("Connection", "Keep-Alive, X-Foo"),
            h("connection", " ,close ,,"),
        ];
        let tokens = connection_tokens(&headers);
        let got: Vec<&[u8]> = tokens.iter().collect();
        assert_eq!(got, [&b"Keep-Alive"[..], b"X-Foo", b"close"]);
        assert!(tokens.contains("keep-alive") && tokens.contains("CLOSE"));
        assert!(!tokens.contains("x-fo") && !tokens.contains("host"));
        assert_eq!(connection_tokens(&[h("Host", "a")]).iter().count(), 0);
    }

    #[test]
    fn hop_by_hop_table() {
        let with_x_foo = [h("Connection", "X-FOO")];
        let tokens = connection_tokens(&with_x_foo);
        let cases: &[(&str, bool)] = &[
            ("Connection", true),
            ("KEEP-ALIVE", true),
            ("Proxy-Connection", true),
            ("te", true),
            ("Trailer", true),
            ("Transfer-Encoding", true),
            ("Upgrade", true),
            ("Proxy-Authenticate", false),
            ("X-Foo", true),
            ("x-foo", true),
            ("Host", false),
            ("Content-Length", false),
            ("X-Bar", false),
            ("", false),
        ];
        for (name, want) in cases {
            assert_eq!(is_hop_by_hop(name, &tokens), *want, "{name}");
        }
    }

    #[test]
    fn find_is_case_insensitive_and_first() {
        let headers = [h("X-A", "1"), h("x-a", "2"), h("Host", "h")];
        assert_eq!(find(&headers, "X-a").map(|h| &h.value[..]), Some(&b"1"[..]));
        assert_eq!(
            find(&headers, "HOST").map(|h| &h.value[..]),
            Some(&b"h"[..])
        );
        assert_eq!(find(&headers, "Missing"), None);
    }

    #[test]
    fn has_token_table() {
        let headers = [
            h("Connection", "keep-alive"),
            h("Connection", "Upgrade,\tCLOSE"),
            h("X-List", "a-b, c"),
        ];
        let cases: &[(&str, &str, bool)] = &[
            ("connection", "close", true),
            ("Connection", "Keep-Alive", true),
            ("connection", "upgrade", true),
            ("connection", "clos", false),
            ("x-list", "a-b", true),
            ("x-list", "a", false),
            ("x-list", "c", true),
            ("missing", "close", false),
        ];
        for (name, token, want) in cases {
            assert_eq!(has_token(&headers, name, token), *want, "{name} {token}");
        }
    }

    #[test]
    fn list_elements_and_trim() {
        let got: Vec<&[u8]> = list_elements(b" a ,, b\t,c,").collect();
        assert_eq!(got, [&b"a"[..], b"b", b"c"]);
        assert_eq!(list_elements(b"  ,  ").count(), 0);
        assert_eq!(trim_ows(b" \t x y \t"), b"x y");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b""), b"");
    }
}
