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

/// The lower-cased tokens of every `Connection` field (RFC 9110 §7.6.1), in order.
pub fn connection_tokens(headers: &[Header]) -> Vec<String> {
    named(headers, "connection")
        .flat_map(|h| list_elements(&h.value))
        .map(|token| String::from_utf8_lossy(token).to_ascii_lowercase())
        .collect()
}

/// Whether the field `name` must not be forwarded: it is hop-by-hop by definition, or the
/// `Connection` field named it. `connection_tokens` is the result of [`connection_tokens`].
pub fn is_hop_by_hop(name: &str, connection_tokens: &[String]) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
        || connection_tokens
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name))
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
    fn connection_tokens_are_lowercased_across_fields() {
        let headers = [
            h("Host", "a"),
            h("Connection", "Keep-Alive, X-Foo"),
            h("connection", " ,close ,,"),
        ];
        assert_eq!(
            connection_tokens(&headers),
            ["keep-alive", "x-foo", "close"]
        );
        assert!(connection_tokens(&[h("Host", "a")]).is_empty());
    }

    #[test]
    fn hop_by_hop_table() {
        let tokens = vec!["x-foo".to_string()];
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
