use std::{fmt, sync::Arc};

use axum::response::{IntoResponse, Response};
use http::{header, request::Parts};
use tower::Layer;

use super::{
    OriginError, OriginGuard, OriginPredicate,
    matcher::{AllowList, HostRule, Origin, Pattern, host_allowed},
};
use crate::{ConfigError, Rejection, rejection::OnRejection};

/// Builds [`OriginGuard`] services: checks the `Origin` of WebSocket handshakes.
///
/// With no configuration it allows same-origin handshakes and clients that send no `Origin`;
/// see the [module docs](crate::origin) for every rule.
#[derive(Clone)]
#[must_use]
pub struct OriginGuardLayer {
    pub(crate) config: Arc<Config>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) allow: AllowList,
    pub(crate) allowed_hosts: Vec<HostRule>,
    pub(crate) tls: bool,
    pub(crate) require_origin: bool,
    pub(crate) check_all_requests: bool,
    pub(crate) on_rejection: Option<OnRejection>,
}

impl Config {
    /// Decides one request; `Ok` lets it through.
    pub(crate) fn check(&self, parts: &Parts) -> Result<(), Rejected> {
        let mut values = parts.headers.get_all(header::ORIGIN).iter();
        let (first, second) = (values.next(), values.next());
        let is_handshake = crate::core::is_websocket_handshake(&parts.method, &parts.headers);
        if !is_handshake && (!self.check_all_requests || first.is_none()) {
            return Ok(());
        }
        let tls = self.tls || matches!(parts.uri.scheme_str(), Some("https" | "wss"));
        let hosts_checked = !self.allowed_hosts.is_empty();
        if hosts_checked && !host_allowed(&self.allowed_hosts, parts, tls) {
            return Err(Rejected::new(OriginError::HostNotAllowed, None));
        }
        let value = match (first, second) {
            (None, _) if self.require_origin && is_handshake => {
                return Err(Rejected::new(OriginError::Missing, None));
            }
            (None, _) => return Ok(()),
            (Some(_), Some(_)) => return Err(Rejected::new(OriginError::Multiple, None)),
            (Some(value), None) => value,
        };
        let origin = Origin::from_header(value.as_bytes())
            .map_err(|err| Rejected::new(err, Some(sanitise(value.as_bytes()))))?;
        if tls && origin.scheme() == "http" {
            // A page served over plain http can be rewritten by anybody on the path.
            return Err(Rejected::new(
                OriginError::InsecureOrigin,
                Some(origin.to_string()),
            ));
        }
        self.allow
            .allows(&origin, parts, tls, hosts_checked)
            .map_err(|error| Rejected::new(error, Some(origin.to_string())))
    }

    pub(crate) fn rejection(&self, error: OriginError) -> Response {
        crate::rejection::reject(self.on_rejection.as_ref(), error)
    }
}

pub(crate) struct Rejected {
    pub(crate) error: OriginError,
    /// The origin for the log line: canonical, or escaped and truncated when malformed.
    pub(crate) origin: Option<String>,
}

impl Rejected {
    fn new(error: OriginError, origin: Option<String>) -> Self {
        Self { error, origin }
    }
}

/// At most 64 bytes of the raw value, escaped, for a log line.
pub(crate) fn sanitise(raw: &[u8]) -> String {
    let mut out: String = raw
        .iter()
        .take(64)
        .flat_map(|b| b.escape_ascii())
        .map(char::from)
        .collect();
    if raw.len() > 64 {
        out.push('…');
    }
    out
}

impl OriginGuardLayer {
    /// A guard with nothing configured: same-origin handshakes and handshakes without
    /// `Origin` are allowed, WebSocket handshakes only are checked.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                allow: AllowList::default(),
                allowed_hosts: Vec::new(),
                tls: false,
                require_origin: false,
                check_all_requests: false,
                on_rejection: None,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Allows one exact origin such as `https://app.example.com` or `http://127.0.0.1:8000`.
    /// Repeated calls add origins. Unicode hosts are converted to punycode; a trailing `/` is
    /// ignored.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidOrigin`] when `origin` is not `scheme://host[:port]` (a path, a
    /// wildcard, whitespace, `null`, ...).
    pub fn allow_origin(self, origin: impl AsRef<str>) -> Result<Self, ConfigError> {
        let origin = Origin::from_config(origin.as_ref())?;
        Ok(self.with(|c| {
            if !c.allow.exact.contains(&origin) {
                c.allow.exact.push(origin);
            }
        }))
    }

    /// Allows every origin in `origins`; see [`allow_origin`](Self::allow_origin).
    ///
    /// # Errors
    ///
    /// The first invalid origin's [`ConfigError`].
    pub fn allow_origins<I>(self, origins: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        origins
            .into_iter()
            .try_fold(self, |layer, origin| layer.allow_origin(origin))
    }

    /// Allows the subdomains of a domain: `https://*.example.com` matches
    /// `https://a.example.com` and `https://a.b.example.com` (whole labels only), not
    /// `https://example.com` itself (allow it separately). Scheme and port must match exactly.
    /// Repeated calls add patterns.
    ///
    /// # Errors
    ///
    /// [`ConfigError::PatternTooBroad`] for `*` or a pattern whose base is a public suffix
    /// (`https://*.com`, `https://*.co.uk`, `https://*.github.io`);
    /// [`ConfigError::InvalidPattern`] when the wildcard is not the whole leftmost label or
    /// the base is not a domain.
    pub fn allow_origin_pattern(self, pattern: impl AsRef<str>) -> Result<Self, ConfigError> {
        let pattern = Pattern::parse(pattern.as_ref())?;
        Ok(self.with(|c| c.allow.patterns.push(pattern)))
    }

    /// Also allows same-origin handshakes. That is the default only while nothing else is
    /// configured; call this to keep it next to other rules. Same origin trusts the `Host`
    /// header, so a domain `Host` counts only once it is an allowed host
    /// ([`allow_host`](Self::allow_host)); see the [module docs](crate::origin#allowed-hosts).
    pub fn allow_same_origin(self) -> Self {
        self.with(|c| c.allow.same_origin = true)
    }

    /// Adds an allowed host, like Django's `ALLOWED_HOSTS`: `example.com` (any port),
    /// `example.com:8443` (that port only), `.example.com` (the domain and every subdomain),
    /// `127.0.0.1:8000`, `[::1]:8000`. Repeated calls add hosts. Default: none.
    ///
    /// Once any host is allowed, **every** checked handshake (with or without `Origin`,
    /// whatever rule decides its origin) must carry an allowed `Host` (or URI authority),
    /// else it is refused with `403` ([`OriginError::HostNotAllowed`]); and same-origin
    /// handshakes may then use domain names. This is the defence against DNS rebinding; see
    /// the [module docs](crate::origin#allowed-hosts). The port of a `Host` without one is
    /// the scheme's default (443 when the handshake is known to arrive over TLS, else 80).
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidHost`] when `host` is not `host[:port]` or `.domain[:port]`
    /// (a scheme, a path, a wildcard, whitespace, an unbracketed IPv6 address, ...).
    pub fn allow_host(self, host: impl AsRef<str>) -> Result<Self, ConfigError> {
        let rule = HostRule::parse(host.as_ref())?;
        Ok(self.with(|c| {
            if !c.allowed_hosts.contains(&rule) {
                c.allowed_hosts.push(rule);
            }
        }))
    }

    /// Adds every host in `hosts`; see [`allow_host`](Self::allow_host).
    ///
    /// # Errors
    ///
    /// The first invalid host's [`ConfigError`].
    pub fn allow_hosts<I>(self, hosts: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        hosts
            .into_iter()
            .try_fold(self, |layer, host| layer.allow_host(host))
    }

    /// Whether every handshake arrives over TLS (this server terminates it, or a TLS proxy
    /// in front of it does). Replaces; default `false`, and then a handshake is known to be
    /// TLS only when its request URI says `https` (HTTP/2, absolute form). A TLS handshake
    /// refuses `http://` origins, even allowed ones ([`OriginError::InsecureOrigin`]): a
    /// page served over plain http can be rewritten by anybody on the network path. Its
    /// same-origin scheme is `https`. `X-Forwarded-Proto` is not read: set this on the
    /// servers that are only reachable through TLS instead.
    pub fn tls(self, tls: bool) -> Self {
        self.with(|c| c.tls = tls)
    }

    /// Allows an origin when `predicate` returns `true` for it and the request. Repeated
    /// calls add predicates. The predicate sees only well-formed origins: `null`, malformed
    /// and duplicate headers are refused before it runs.
    pub fn allow_if(self, predicate: impl OriginPredicate) -> Self {
        let predicate: Arc<dyn OriginPredicate> = Arc::new(predicate);
        self.with(|c| c.allow.predicates.push(predicate))
    }

    /// Allows every well-formed origin, so any web page may open sockets with its visitors'
    /// cookies. Only for public, unauthenticated data or credentials that a browser never
    /// attaches by itself. `null`, malformed and duplicate origins are still refused.
    pub fn dangerously_allow_any_origin(self) -> Self {
        self.with(|c| c.allow.any = true)
    }

    /// Whether a WebSocket handshake without an `Origin` header is refused
    /// ([`OriginError::Missing`]). Default `false`: browsers always send `Origin`, so its
    /// absence means a non-browser client that no cross-site page controls. Replaces the
    /// previous setting.
    pub fn require_origin(self, require: bool) -> Self {
        self.with(|c| c.require_origin = require)
    }

    /// Whether every request that carries an `Origin` header is checked, not only WebSocket
    /// handshakes (for Socket.IO's long-polling and similar transports). Requests without
    /// `Origin` that are not handshakes still pass. Default `false`. Replaces the previous
    /// setting.
    pub fn check_all_requests(self, check: bool) -> Self {
        self.with(|c| c.check_all_requests = check)
    }

    /// Builds the rejection response from the [`Rejection`] (always
    /// [`Rejection::Origin`] here) instead of the default, which is
    /// [`Rejection::into_response`]: `403`, a plain-text reason. The [`OriginError`] and the
    /// [`Rejection`] are still put in the extensions of whatever `f` returns. Replaces the
    /// previous hook; default: none.
    pub fn on_rejection<F, R>(self, f: F) -> Self
    where
        F: Fn(&Rejection) -> R + Send + Sync + 'static,
        R: IntoResponse,
    {
        let f = OnRejection::new(f);
        self.with(|c| c.on_rejection = Some(f))
    }
}

impl Default for OriginGuardLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for OriginGuardLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OriginGuardLayer")
            .field("allow", &self.config.allow)
            .field(
                "allowed_hosts",
                &self
                    .config
                    .allowed_hosts
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .field("tls", &self.config.tls)
            .field("require_origin", &self.config.require_origin)
            .field("check_all_requests", &self.config.check_all_requests)
            .field("on_rejection", &self.config.on_rejection)
            .finish()
    }
}

impl<S> Layer<S> for OriginGuardLayer {
    type Service = OriginGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OriginGuard::new(inner, self.clone())
    }
}
