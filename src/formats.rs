//! `DEFERRED_Q_REQUEST_FORMATS`: which requests may be queued (SPEC §5).
//!
//! The setting is a comma-separated list of rules `METHOD [ROUTE] [!]`. A request is
//! eligible when it matches at least one rule without `!` and no rule with `!`, so the
//! order of the rules does not matter. `ALL` matches every request; a rule without a
//! route matches every path; a route matches the path exactly, or as a prefix when it
//! ends with `*`. Parsing is strict: a typo here would silently queue (or not queue)
//! requests, so anything unexpected is an error at start.

use std::fmt;

/// The parsed rule list: pure data, checked against each request by `is_eligible`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFormats {
    rules: Vec<Rule>,
}

/// One `METHOD [ROUTE] [!]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    method: MethodMatch,
    route: RouteMatch,
    /// A trailing `!`: a request matching this rule is never eligible.
    exclude: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MethodMatch {
    /// `ALL`: every method (and, since `ALL` takes no route, every path).
    Any,
    /// Compared case-sensitively: methods are case-sensitive (RFC 9110 §9.1).
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RouteMatch {
    Any,
    Exact(String),
    /// The route without its trailing `*`.
    Prefix(String),
}

/// Shown in every message about the shape of a rule.
const RULE_SHAPE: &str = "expected METHOD [ROUTE] [!]";

impl RequestFormats {
    /// Parses a rule list such as `POST /orders !,POST,PUT /orders`.
    ///
    /// # Errors
    /// An empty rule list or entry, or a malformed rule; the message names the
    /// offending rule and what is wrong with it.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let rules = spec
            .split(',')
            .enumerate()
            .map(|(index, text)| parse_entry(text.trim(), index + 1, spec))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules })
    }

    /// `ALL`: every request is eligible (the SPEC §2 default).
    pub fn all() -> Self {
        Self {
            rules: vec![Rule {
                method: MethodMatch::Any,
                route: RouteMatch::Any,
                exclude: false,
            }],
        }
    }

    /// Whether a request may be queued. `target` is the request target as received; its
    /// query string is ignored.
    pub fn is_eligible(&self, method: &str, target: &str) -> bool {
        let path = request_path(target);
        let mut included = false;
        for rule in self.rules.iter().filter(|rule| rule.matches(method, path)) {
            if rule.exclude {
                return false;
            }
            included = true;
        }
        included
    }
}

/// The canonical spelling of the rules, e.g. for `serviceq --check`.
impl fmt::Display for RequestFormats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, rule) in self.rules.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{rule}")?;
        }
        Ok(())
    }
}

impl Rule {
    fn matches(&self, method: &str, path: &str) -> bool {
        let method_ok = match &self.method {
            MethodMatch::Any => true,
            MethodMatch::Exact(m) => m == method,
        };
        method_ok
            && match &self.route {
                RouteMatch::Any => true,
                RouteMatch::Exact(route) => route == path,
                RouteMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.method {
            MethodMatch::Any => f.write_str("ALL")?,
            MethodMatch::Exact(m) => f.write_str(m)?,
        }
        match &self.route {
            RouteMatch::Any => {}
            RouteMatch::Exact(route) => write!(f, " {route}")?,
            RouteMatch::Prefix(prefix) => write!(f, " {prefix}*")?,
        }
        if self.exclude {
            f.write_str(" !")?;
        }
        Ok(())
    }
}

/// One comma-separated entry; `position` (1-based) and `spec` only serve the message
/// for an empty entry, which has no text of its own to quote.
fn parse_entry(text: &str, position: usize, spec: &str) -> Result<Rule, String> {
    if text.is_empty() {
        return Err(format!(
            "empty rule #{position} in {spec:?}: remove the extra comma"
        ));
    }
    parse_rule(text).map_err(|why| format!("malformed rule {text:?}: {why}"))
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    let tokens: Vec<&str> = text.split_ascii_whitespace().collect();
    let (method, route, exclude) = match tokens.as_slice() {
        [method] => (*method, None, false),
        [method, "!"] => (*method, None, true),
        [method, route] => (*method, Some(*route), false),
        [method, route, "!"] => (*method, Some(*route), true),
        _ => return Err(RULE_SHAPE.to_string()),
    };
    if method == "ALL" {
        return parse_all(route, exclude);
    }
    Ok(Rule {
        method: parse_method(method)?,
        route: route.map_or(Ok(RouteMatch::Any), parse_route)?,
        exclude,
    })
}

/// `ALL` stands alone: `ALL /x` would read as "every method on /x", which the seed
/// never defined, and `ALL !` would make every other rule pointless.
fn parse_all(route: Option<&str>, exclude: bool) -> Result<Rule, String> {
    if route.is_some() {
        return Err("ALL takes no route (write one rule per method instead)".to_string());
    }
    if exclude {
        return Err(
            "ALL cannot be excluded with \"!\" (set ENABLE_DEFERRED_Q=false to queue nothing)"
                .to_string(),
        );
    }
    Ok(Rule {
        method: MethodMatch::Any,
        route: RouteMatch::Any,
        exclude: false,
    })
}

fn parse_method(method: &str) -> Result<MethodMatch, String> {
    if method.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(MethodMatch::Exact(method.to_string()))
    } else {
        Err(format!("method {method:?} must be upper-case letters A-Z"))
    }
}

fn parse_route(route: &str) -> Result<RouteMatch, String> {
    if !route.starts_with('/') {
        return Err(format!("route {route:?} must start with \"/\""));
    }
    if route.contains(['?', '#']) {
        // The query string is ignored when matching, so such a route could never match.
        return Err(format!(
            "route {route:?} must be a path, without \"?\" or \"#\""
        ));
    }
    if route.ends_with('!') {
        // Almost certainly an exclusion mark missing its space, not a path ending in "!".
        return Err(format!(
            "route {route:?} ends with \"!\": separate the exclusion mark with a space"
        ));
    }
    match route.find('*') {
        None => Ok(RouteMatch::Exact(route.to_string())),
        Some(at) if at == route.len() - 1 => Ok(RouteMatch::Prefix(route[..at].to_string())),
        Some(_) => Err(format!(
            "route {route:?}: \"*\" may only be the last character"
        )),
    }
}

/// The path of a request target: the query (and a stray fragment) cut off, and the
/// scheme and authority of an absolute-form target (RFC 9112 §3.2.2) dropped.
fn request_path(target: &str) -> &str {
    let path = strip_scheme_and_authority(target).unwrap_or(target);
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

fn strip_scheme_and_authority(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let path_start = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match &rest[path_start..] {
        // `http://host` and `http://host?q` name the root path.
        p if !p.starts_with('/') => Some("/"),
        p => Some(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formats(spec: &str) -> RequestFormats {
        match RequestFormats::parse(spec) {
            Ok(f) => f,
            Err(e) => panic!("{spec:?} should parse: {e}"),
        }
    }

    /// Checks every (method, target, eligible) case against one spec.
    fn check(spec: &str, cases: &[(&str, &str, bool)]) {
        let f = formats(spec);
        for &(method, target, expected) in cases {
            assert_eq!(
                f.is_eligible(method, target),
                expected,
                "{spec:?}: {method} {target}"
            );
        }
    }

    #[test]
    fn seed_example_all() {
        check(
            "ALL",
            &[
                ("GET", "/", true),
                ("POST", "/orders", true),
                ("DELETE", "/a/b?c=d", true),
                ("OPTIONS", "*", true),
            ],
        );
        assert_eq!(formats("ALL"), RequestFormats::all());
    }

    #[test]
    fn seed_example_methods() {
        check(
            "POST,PUT,PATCH,DELETE",
            &[
                ("POST", "/orders", true),
                ("PUT", "/anything/else", true),
                ("PATCH", "/", true),
                ("DELETE", "/x", true),
                ("GET", "/orders", false),
                ("HEAD", "/", false),
                ("post", "/orders", false),
            ],
        );
    }

    #[test]
    fn seed_example_exclusion() {
        check(
            "POST /orders !,POST,PUT /orders,PATCH,DELETE",
            &[
                ("POST", "/orders", false),
                ("POST", "/orders?id=3", false),
                ("POST", "/orders/3", true),
                ("POST", "/users", true),
                ("PUT", "/orders", true),
                ("PUT", "/users", false),
                ("PATCH", "/anything", true),
                ("DELETE", "/orders", true),
                ("GET", "/orders", false),
            ],
        );
    }

    #[test]
    fn seed_example_route_and_method() {
        check(
            "POST /orders,PATCH",
            &[
                ("POST", "/orders", true),
                ("POST", "/orders/1", false),
                ("POST", "/users", false),
                ("PATCH", "/users", true),
                ("PUT", "/orders", false),
            ],
        );
    }

    #[test]
    fn order_of_rules_does_not_matter() {
        let spec_a = "POST /orders !,POST";
        let spec_b = "POST,POST /orders !";
        for target in ["/orders", "/users"] {
            assert_eq!(
                formats(spec_a).is_eligible("POST", target),
                formats(spec_b).is_eligible("POST", target)
            );
        }
    }

    #[test]
    fn prefix_routes() {
        check(
            "POST /orders/*,PUT /v1*",
            &[
                ("POST", "/orders/", true),
                ("POST", "/orders/1", true),
                ("POST", "/orders/1/items?x=1", true),
                ("POST", "/orders", false),
                ("POST", "/ordersX", false),
                ("PUT", "/v1", true),
                ("PUT", "/v1/x", true),
                ("PUT", "/v10", true),
                ("PUT", "/v2", false),
            ],
        );
        check("GET /*", &[("GET", "/", true), ("GET", "/a/b", true)]);
    }

    #[test]
    fn prefix_exclusion_overrides_all() {
        check(
            "ALL,POST /internal/* !",
            &[
                ("POST", "/internal/x", false),
                ("GET", "/internal/x", true),
                ("POST", "/public", true),
            ],
        );
    }

    #[test]
    fn query_string_and_absolute_form_are_ignored() {
        check(
            "POST /orders",
            &[
                ("POST", "/orders?", true),
                ("POST", "/orders?a=1&b=/x", true),
                ("POST", "/orders#frag", true),
                ("POST", "http://example.com/orders?a=1", true),
                ("POST", "HTTPS://example.com:8443/orders", true),
                ("POST", "http://example.com", false),
                ("POST", "/orders/", false),
            ],
        );
        check(
            "GET /",
            &[
                ("GET", "http://example.com", true),
                ("GET", "http://h?q", true),
            ],
        );
    }

    #[test]
    fn whitespace_is_trimmed_and_collapsed() {
        let spaced = formats("  POST   /orders   ! ,\tPUT ,  PATCH\t/x  ");
        assert_eq!(spaced, formats("POST /orders !,PUT,PATCH /x"));
        assert_eq!(spaced.to_string(), "POST /orders !,PUT,PATCH /x");
    }

    #[test]
    fn method_only_exclusion() {
        check(
            "ALL,GET !",
            &[
                ("GET", "/", false),
                ("HEAD", "/", true),
                ("POST", "/x", true),
            ],
        );
    }

    #[test]
    fn display_is_canonical() {
        let spec = "ALL,POST /orders/* !,PUT /orders";
        assert_eq!(formats(spec).to_string(), spec);
    }

    #[test]
    fn errors_name_the_rule_and_the_problem() {
        let cases = [
            ("", "empty rule #1"),
            ("POST,,PUT", "empty rule #2 in \"POST,,PUT\""),
            ("POST,", "empty rule #2"),
            (",POST", "empty rule #1"),
            (
                "FOO BAR BAZ QUX",
                "malformed rule \"FOO BAR BAZ QUX\": expected METHOD [ROUTE] [!]",
            ),
            (
                "POST ! /orders",
                "malformed rule \"POST ! /orders\": expected METHOD",
            ),
            ("POST /a /b", "expected METHOD [ROUTE] [!]"),
            (
                "post",
                "malformed rule \"post\": method \"post\" must be upper-case",
            ),
            ("Post /x", "method \"Post\" must be upper-case"),
            ("M-SEARCH", "method \"M-SEARCH\" must be upper-case"),
            ("POST orders", "route \"orders\" must start with \"/\""),
            ("POST ! !", "route \"!\" must start with \"/\""),
            ("POST /a*b", "\"*\" may only be the last character"),
            ("POST /*/x", "\"*\" may only be the last character"),
            ("POST /a**", "\"*\" may only be the last character"),
            ("POST *", "must start with \"/\""),
            ("POST /orders?x=1", "without \"?\" or \"#\""),
            ("POST /orders!", "separate the exclusion mark with a space"),
            (
                "ALL /orders",
                "malformed rule \"ALL /orders\": ALL takes no route",
            ),
            ("ALL !", "malformed rule \"ALL !\": ALL cannot be excluded"),
            ("ALL /x !", "ALL takes no route"),
            ("POST,put /x", "malformed rule \"put /x\": method \"put\""),
        ];
        for (spec, want) in cases {
            match RequestFormats::parse(spec) {
                Ok(f) => panic!("{spec:?} should fail, parsed as {f:?}"),
                Err(e) => assert!(e.contains(want), "{spec:?}: {e:?} lacks {want:?}"),
            }
        }
    }

    #[test]
    fn malformed_rule_message_is_exact() {
        assert_eq!(
            RequestFormats::parse("FOO BAR BAZ QUX"),
            Err("malformed rule \"FOO BAR BAZ QUX\": expected METHOD [ROUTE] [!]".to_string())
        );
    }
}
