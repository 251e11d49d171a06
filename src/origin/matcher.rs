//! Canonical origins, wildcard patterns and the allow list they form.

use std::{fmt, sync::Arc};

use http::request::Parts;
use url::Url;

use super::{OriginError, OriginPredicate};
use crate::ConfigError;

/// A canonical (RFC 6454) origin: lowercase scheme and host, IDN hosts in their ASCII
/// (punycode) form, the scheme's default port elided, no path.
///
/// `Display` writes its serialisation, e.g. `https://example.com` or `http://127.0.0.1:8000`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: Box<str>,
    host: Box<str>,
    port: Option<u16>,
}

impl Origin {
    /// The lowercase scheme, e.g. `https`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host in ASCII form: a lowercase domain (punycode for IDN), an IPv4 address, or an
    /// IPv6 address in brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, unless it is the scheme's default (then `None`).
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port, or the scheme's default port when it has one.
    pub fn port_or_default(&self) -> Option<u16> {
        self.port.or_else(|| default_port(&self.scheme))
    }

    /// Parses an `Origin` header value strictly: exactly `scheme://host[:port]` in visible
    /// ASCII, as browsers send it. Whitespace, userinfo, paths, percent-escapes and backslashes
    /// are malformed.
    pub(crate) fn from_header(value: &[u8]) -> Result<Self, OriginError> {
        if value == b"null" {
            return Err(OriginError::Null);
        }
        let text = std::str::from_utf8(value).map_err(|_| OriginError::Malformed)?;
        if !is_strict_serialisation(text) {
            return Err(OriginError::Malformed);
        }
        canonicalise(text).ok_or(OriginError::Malformed)
    }

    /// Parses a configured origin: like [`Origin::from_header`], but Unicode hosts are allowed
    /// (and converted to punycode) and one trailing `/` is ignored.
    pub(crate) fn from_config(value: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: &'static str| ConfigError::InvalidOrigin {
            value: value.to_owned(),
            reason,
        };
        if value.contains('*') {
            return Err(invalid(
                "wildcards are only allowed in allow_origin_pattern (e.g. https://*.example.com)",
            ));
        }
        if value.trim() != value || value.chars().any(char::is_whitespace) {
            return Err(invalid("contains whitespace"));
        }
        if value == "null" {
            return Err(invalid("the null origin can never be allowed"));
        }
        let Some((scheme, rest)) = value.split_once("://") else {
            return Err(invalid("expected scheme://host[:port]"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if !is_scheme(scheme) {
            return Err(invalid("invalid scheme"));
        }
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', '\\', '%']) {
            return Err(invalid(
                "an origin is scheme://host[:port], without path, query, userinfo or escapes",
            ));
        }
        if rest.ends_with(':') {
            return Err(invalid("empty port"));
        }
        canonicalise(&format!("{scheme}://{rest}")).ok_or_else(|| invalid("invalid host or port"))
    }

    /// Whether this is a domain name (not an IP literal).
    fn is_domain(&self) -> bool {
        !self.host.starts_with('[') && self.host.parse::<std::net::Ipv4Addr>().is_err()
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// `scheme "://" host [":" 1*DIGIT]` where host is a bracketed IPv6 literal or a run of
/// letters, digits, `-`, `.` and `_`.
fn is_strict_serialisation(text: &str) -> bool {
    let Some((scheme, authority)) = text.split_once("://") else {
        return false;
    };
    if !is_scheme(scheme) || authority.is_empty() {
        return false;
    }
    let (host, port) = if let Some(after_bracket) = authority.strip_prefix('[') {
        let Some((inside, after)) = after_bracket.split_once(']') else {
            return false;
        };
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match after {
            "" => (inside, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (inside, Some(port)),
                None => return false,
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && (authority.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// Normalises `scheme://authority` with the WHATWG URL parser (case, IDNA, IP literals,
/// default ports). The caller has already refused anything but an authority.
fn canonicalise(text: &str) -> Option<Origin> {
    let url = Url::parse(text).ok()?;
    if !url.username().is_empty() || url.password().is_some() {
        return None;
    }
    if url.query().is_some() || url.fragment().is_some() || !matches!(url.path(), "" | "/") {
        return None;
    }
    let host = url.host_str()?;
    if host.is_empty() {
        return None;
    }
    let scheme = url.scheme().to_ascii_lowercase();
    let port = url.port().filter(|p| Some(*p) != default_port(&scheme));
    Some(Origin {
        host: host.to_ascii_lowercase().into(),
        scheme: scheme.into(),
        port,
    })
}

/// A subdomain wildcard such as `https://*.example.com`: matches any host with one or more
/// whole labels in front of the base domain, with the same scheme and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern {
    scheme: Box<str>,
    /// `.example.com`, with the leading dot.
    dot_base: Box<str>,
    port: Option<u16>,
}

impl Pattern {
    pub(crate) fn parse(value: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: &'static str| ConfigError::InvalidPattern {
            value: value.to_owned(),
            reason,
        };
        if value.trim() == "*" {
            return Err(ConfigError::PatternTooBroad {
                value: value.to_owned(),
            });
        }
        let Some((scheme, rest)) = value.split_once("://") else {
            return Err(invalid("expected scheme://*.domain[:port]"));
        };
        let Some(base) = rest.strip_prefix("*.") else {
            return Err(invalid(
                "the wildcard must be the whole leftmost label: scheme://*.domain[:port]",
            ));
        };
        if base.contains('*') {
            return Err(invalid("only one wildcard, as the leftmost label"));
        }
        let origin = Origin::from_config(&format!("{scheme}://{base}")).map_err(|e| match e {
            ConfigError::InvalidOrigin { reason, .. } => invalid(reason),
            other => other,
        })?;
        if !origin.is_domain() {
            return Err(invalid(
                "the base of a wildcard must be a domain name, not an IP address",
            ));
        }
        if origin.host.ends_with('.') || origin.host.split('.').any(str::is_empty) {
            return Err(invalid("empty label in domain"));
        }
        // The base must be a registrable domain or below one: `*.com`, `*.co.uk` and
        // `*.github.io` would admit sites owned by anybody.
        if psl::domain_str(&origin.host).is_none() {
            return Err(ConfigError::PatternTooBroad {
                value: value.to_owned(),
            });
        }
        Ok(Self {
            scheme: origin.scheme,
            dot_base: format!(".{}", origin.host).into(),
            port: origin.port,
        })
    }

    fn matches(&self, origin: &Origin) -> bool {
        if origin.scheme != self.scheme || origin.port != self.port || !origin.is_domain() {
            return false;
        }
        match origin.host.strip_suffix(&*self.dot_base) {
            // Every label in front of the base must be non-empty: no `.example.com`,
            // no `a..example.com`.
            Some(prefix) => prefix.split('.').all(|label| !label.is_empty()),
            None => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://*{}", self.scheme, self.dot_base)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Everything that decides whether an origin is allowed; the entries are alternatives.
#[derive(Clone, Default)]
pub(crate) struct AllowList {
    pub(crate) exact: Vec<Origin>,
    pub(crate) patterns: Vec<Pattern>,
    pub(crate) same_origin: bool,
    pub(crate) any: bool,
    pub(crate) predicates: Vec<Arc<dyn OriginPredicate>>,
}

impl AllowList {
    pub(crate) fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.patterns.is_empty()
            && !self.same_origin
            && !self.any
            && self.predicates.is_empty()
    }

    /// Same-origin applies when asked for, and when nothing else was configured.
    /// `hosts_checked`: the request's `Host` is already known to be an allowed host.
    pub(crate) fn allows(
        &self,
        origin: &Origin,
        parts: &Parts,
        tls: bool,
        hosts_checked: bool,
    ) -> Result<(), OriginError> {
        if self.any
            || self.exact.iter().any(|o| o == origin)
            || self.patterns.iter().any(|p| p.matches(origin))
            || self.predicates.iter().any(|p| p.allow(origin, parts))
        {
            return Ok(());
        }
        if !(self.same_origin || self.is_empty()) {
            return Err(OriginError::NotAllowed);
        }
        // On plain HTTP/1.1 the server cannot know whether a TLS proxy sits in front: the
        // origin's own scheme is taken then (the port is compared either way).
        match own_origin(parts, tls, origin.scheme()) {
            Some(own)
                if own.host == origin.host
                    && own.scheme == origin.scheme
                    && own.port_or_default() == origin.port_or_default() =>
            {
                // Same origin, as far as `Host` says. Without allowed hosts `Host` is
                // trusted only where DNS cannot rebind it: a page on a rebound domain
                // would otherwise be same-origin with itself.
                if hosts_checked || !own.is_domain() || is_localhost(&own.host) {
                    Ok(())
                } else {
                    Err(OriginError::HostNotAllowed)
                }
            }
            _ => Err(OriginError::NotAllowed),
        }
    }
}

impl fmt::Debug for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllowList")
            .field(
                "exact",
                &self
                    .exact
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .field(
                "patterns",
                &self
                    .patterns
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .field("same_origin", &(self.same_origin || self.is_empty()))
            .field("any", &self.any)
            .field("predicates", &self.predicates.len())
            .finish()
    }
}

/// `localhost` and the names below it, which browsers resolve to loopback without DNS
/// (RFC 6761), so no rebinding can point them elsewhere.
fn is_localhost(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost")
}

/// The request's authority: from the URI (HTTP/2, absolute form) or the single `Host`
/// header; `None` when missing, repeated or not visible ASCII.
fn authority(parts: &Parts) -> Option<&str> {
    match parts.uri.authority() {
        Some(authority) => Some(authority.as_str()),
        None => {
            let mut hosts = parts.headers.get_all(http::header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(host), None) => host.to_str().ok(),
                _ => None,
            }
        }
    }
}

/// The request's own origin: its scheme (`https` when the handshake is known to arrive over
/// TLS, else the URI's scheme when it has one, else `fallback`) and the canonical authority.
/// Behind a proxy that rewrites `Host`, configure explicit origins instead.
fn own_origin(parts: &Parts, tls: bool, fallback: &str) -> Option<Origin> {
    let authority = authority(parts)?;
    let scheme = if tls {
        "https"
    } else {
        parts.uri.scheme_str().unwrap_or(fallback)
    };
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let text = format!("{scheme}://{authority}");
    if !is_strict_serialisation(&text) {
        return None;
    }
    canonicalise(&text)
}

/// One entry of the allowed hosts: a host, or a domain and its subdomains (`.example.com`),
/// with or without a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostRule {
    /// Canonical: lowercase, punycode, IPv6 in brackets.
    host: Box<str>,
    subdomains: bool,
    port: Option<u16>,
}

impl HostRule {
    pub(crate) fn parse(value: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: &'static str| ConfigError::InvalidHost {
            value: value.to_owned(),
            reason,
        };
        if value.is_empty() || value.chars().any(char::is_whitespace) {
            return Err(invalid("empty or contains whitespace"));
        }
        if value.contains("://") {
            return Err(invalid("a host is host[:port], without a scheme"));
        }
        if value.contains(['/', '?', '#', '@', '\\', '%', '*']) {
            return Err(invalid(
                "a host is host[:port] or .domain[:port], without path, userinfo or wildcards",
            ));
        }
        let (subdomains, rest) = match value.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let (host, port) = if rest.starts_with('[') {
            let Some(end) = rest.find(']') else {
                return Err(invalid("unclosed IPv6 bracket"));
            };
            match &rest[end + 1..] {
                "" => (&rest[..=end], None),
                after => match after.strip_prefix(':') {
                    Some(port) => (&rest[..=end], Some(port)),
                    None => return Err(invalid("junk after the IPv6 address")),
                },
            }
        } else {
            match rest.split_once(':') {
                Some((_, port)) if port.contains(':') => {
                    return Err(invalid("an IPv6 address must be in brackets"));
                }
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse::<u16>().map_err(|_| invalid("port out of range"))?)
            }
            Some(_) => return Err(invalid("invalid port")),
        };
        // The URL parser canonicalises (case, IDNA, IP literals); `wss` has no default
        // port that could hide one.
        let origin =
            Origin::from_config(&format!("http://{host}")).map_err(|_| invalid("invalid host"))?;
        if subdomains && !origin.is_domain() {
            return Err(invalid("only a domain name can have subdomains"));
        }
        Ok(Self {
            host: origin.host,
            subdomains,
            port,
        })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        let host_ok = *self.host == *host
            || (self.subdomains
                && host
                    .strip_suffix(&*self.host)
                    .and_then(|prefix| prefix.strip_suffix('.'))
                    .is_some_and(|prefix| prefix.split('.').all(|label| !label.is_empty())));
        host_ok && self.port.is_none_or(|p| Some(p) == port)
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subdomains {
            f.write_str(".")?;
        }
        f.write_str(&self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Whether the request's `Host` (or URI authority) is one of `rules`; the port compared is
/// the explicit one, else the scheme's default (`https` over TLS, else the URI's, else
/// `http`).
pub(crate) fn host_allowed(rules: &[HostRule], parts: &Parts, tls: bool) -> bool {
    own_origin(parts, tls, "http").is_some_and(|own| {
        let port = own.port_or_default();
        rules.iter().any(|rule| rule.matches(&own.host, port))
    })
}
