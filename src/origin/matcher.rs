//! Canonical origins, wildcard patterns and the allow list they form.

use std::{fmt, sync::Arc};

use http::request::Parts;
use url::Url;

use super::{ConfigError, OriginError, OriginPredicate};

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
    pub(crate) fn allows(&self, origin: &Origin, parts: &Parts) -> bool {
        self.any
            || self.exact.iter().any(|o| o == origin)
            || self.patterns.iter().any(|p| p.matches(origin))
            || ((self.same_origin || self.is_empty()) && is_same_origin(origin, parts))
            || self.predicates.iter().any(|p| p.allow(origin, parts))
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

/// The request's own origin is its scheme (when the request knows it: an absolute-form or
/// HTTP/2 URI) and the authority from the URI or the single `Host` header. Behind a proxy that
/// rewrites `Host`, configure explicit origins instead.
fn is_same_origin(origin: &Origin, parts: &Parts) -> bool {
    let authority = match parts.uri.authority() {
        Some(authority) => authority.as_str(),
        None => {
            let mut hosts = parts.headers.get_all(http::header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(host), None) => match host.to_str() {
                    Ok(host) => host,
                    Err(_) => return false,
                },
                _ => return false,
            }
        }
    };
    let scheme = parts.uri.scheme_str().unwrap_or(origin.scheme());
    if !matches!(scheme, "http" | "https") || scheme != origin.scheme() {
        return false;
    }
    if !is_strict_serialisation(&format!("{scheme}://{authority}")) {
        return false;
    }
    match canonicalise(&format!("{scheme}://{authority}")) {
        Some(own) => own.host == origin.host && own.port_or_default() == origin.port_or_default(),
        None => false,
    }
}
