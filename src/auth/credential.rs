use std::{borrow::Cow, fmt, sync::Arc};

use http::{
    HeaderValue, Uri, header,
    request::Parts,
    uri::{self, PathAndQuery},
};

use super::AuthError;
use crate::ConfigError;

/// A credential found in a handshake, handed to the [`Authenticator`](super::Authenticator).
///
/// Its `Debug` output never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    token: Arc<str>,
    source: SourceKind,
}

impl Credential {
    /// A credential `token` found in `source` (for tests and custom layers).
    pub fn new(token: impl Into<Arc<str>>, source: SourceKind) -> Self {
        Self {
            token: token.into(),
            source,
        }
    }

    /// The token, without the `Bearer ` scheme or the subprotocol prefix. Never log it.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Where the token was found.
    pub fn source(&self) -> SourceKind {
        self.source
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("token", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// The identity of an accepted handshake's token, for revocation and replay: a SHA-256, never
/// the token itself. [`HandshakeAuthLayer`](super::HandshakeAuthLayer) puts it into the
/// request extensions next to the [`Principal`](super::Principal), so that later layers can
/// name the token (to revoke it, see `wsguard::fleet`) without holding it. Its `Debug` output
/// shows only the first 8 hex digits.
///
/// A token in the compact JWS shape, `header.payload.signature` (three non-empty base64url
/// segments: every JWT, and wsguard's own [tickets](super::TicketIssuer)), is named by its
/// signed part, `header.payload`, not by its signature: a signature can be re-encoded without
/// the key (an ES256 signature `(r, s)` verifies as `(r, n-s)` too), so a revoked token must
/// not come back under a new name with a flipped signature. Any other token is named by the
/// whole string. (An opaque token that happens to have this shape is named by its first two
/// segments as well; random opaque tokens have no dots.)
///
/// An [`Authenticator`](super::Authenticator) with its own notion of token identity can supply
/// the fingerprint with [`Verified::with_fingerprint`](super::Verified::with_fingerprint).
///
/// ```
/// use wsguard::auth::TokenFingerprint;
///
/// let a = TokenFingerprint::of("secret-token");
/// assert_eq!(a, TokenFingerprint::of("secret-token"));
/// assert_ne!(a, TokenFingerprint::of("other-token"));
/// assert_eq!(a.to_hex().len(), 64);
///
/// // Two encodings of one signed JWT are one token.
/// assert_eq!(
///     TokenFingerprint::of("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLTE"),
///     TokenFingerprint::of("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLTI"),
/// );
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenFingerprint([u8; 32]);

/// Domain separation: the fingerprint of a signed part never equals that of an opaque token
/// spelled like it.
const SIGNED_PART_DOMAIN: &[u8] = b"wsguard-signed-part-v1\n";

impl TokenFingerprint {
    /// The fingerprint of `token`: of its signed part when it has the compact JWS shape,
    /// of the whole string otherwise (see the [type docs](Self)).
    pub fn of(token: &str) -> Self {
        use sha2::Digest;
        match signed_part(token) {
            Some(signed) => {
                let mut hash = sha2::Sha256::new();
                hash.update(SIGNED_PART_DOMAIN);
                hash.update(signed.as_bytes());
                Self(hash.finalize().into())
            }
            None => Self(sha2::Sha256::digest(token.as_bytes()).into()),
        }
    }

    /// The 32 bytes of the hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        use fmt::Write;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

impl fmt::Debug for TokenFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        write!(f, "TokenFingerprint({}..)", &hex[..8])
    }
}

/// `header.payload` of a compact JWS `header.payload.signature` (three non-empty base64url
/// segments), or `None` for any other shape.
fn signed_part(token: &str) -> Option<&str> {
    let (signed, signature) = token.rsplit_once('.')?;
    let (header, payload) = signed.split_once('.')?;
    let base64url = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (base64url(header) && base64url(payload) && base64url(signature)).then_some(signed)
}

/// The kind of place a credential was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SourceKind {
    /// `Authorization: Bearer <token>`.
    Authorization,
    /// A prefixed `Sec-WebSocket-Protocol` entry.
    Subprotocol,
    /// A query parameter.
    Query,
    /// A cookie.
    Cookie,
}

impl SourceKind {
    /// A stable, lowercase name for logs and metrics, e.g. `subprotocol`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Authorization => "authorization",
            Self::Subprotocol => "subprotocol",
            Self::Query => "query",
            Self::Cookie => "cookie",
        }
    }
}

/// A place to look for the credential, configured with
/// [`HandshakeAuthLayer::sources`](super::HandshakeAuthLayer::sources). See the
/// [module docs](super) for the pitfalls of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialSource(Source);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    Authorization,
    Subprotocol(Arc<str>),
    Query(Arc<str>),
    Cookie(Arc<str>),
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_name(value: &str, what: &'static str) -> Result<Arc<str>, ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::InvalidSourceName {
            value: value.into(),
            reason: what,
        });
    }
    if !value.bytes().all(is_tchar) {
        return Err(ConfigError::InvalidSourceName {
            value: value.into(),
            reason: "use only HTTP token characters (letters, digits and !#$%&'*+-.^_`|~)",
        });
    }
    Ok(value.into())
}

impl CredentialSource {
    /// `Authorization: Bearer <token>` (the scheme is matched case-insensitively). A header
    /// with another scheme is ignored by this source.
    pub fn authorization() -> Self {
        Self(Source::Authorization)
    }

    /// A `Sec-WebSocket-Protocol` entry starting with `prefix`, e.g. `"bearer."` for
    /// `bearer.<token>`. The entry is removed from the header before the request goes on
    /// (whichever source decides). A malformed entry with spaces in it counts each of its
    /// words that starts with `prefix` as such an entry; a line that cannot be read (bytes
    /// other than visible ASCII, space and tab) is removed whole.
    ///
    /// Fails unless `prefix` is a non-empty HTTP token (subprotocol names are tokens).
    pub fn subprotocol(prefix: impl AsRef<str>) -> Result<Self, ConfigError> {
        check_name(prefix.as_ref(), "the prefix must not be empty")
            .map(|p| Self(Source::Subprotocol(p)))
    }

    /// The query parameter `name`, e.g. `"access_token"`. The parameter is removed from the
    /// URI before the request goes on. The value is form-decoded (`%XX` escapes, `+` as a
    /// space), so a token containing `+` must be sent percent-encoded (`%2B`); URL-safe
    /// tokens (tickets, JWTs) need no encoding. A repeated parameter is malformed.
    ///
    /// Fails unless `name` is a non-empty HTTP token.
    pub fn query(name: impl AsRef<str>) -> Result<Self, ConfigError> {
        check_name(name.as_ref(), "the parameter name must not be empty")
            .map(|n| Self(Source::Query(n)))
    }

    /// The cookie `name`. Cookies ride along on cross-site handshakes: use the origin check
    /// too.
    ///
    /// Fails unless `name` is a non-empty HTTP token (cookie names are tokens).
    pub fn cookie(name: impl AsRef<str>) -> Result<Self, ConfigError> {
        check_name(name.as_ref(), "the cookie name must not be empty")
            .map(|n| Self(Source::Cookie(n)))
    }

    /// The kind of this source.
    pub fn kind(&self) -> SourceKind {
        match self.0 {
            Source::Authorization => SourceKind::Authorization,
            Source::Subprotocol(_) => SourceKind::Subprotocol,
            Source::Query(_) => SourceKind::Query,
            Source::Cookie(_) => SourceKind::Cookie,
        }
    }
}

/// What one source found: nothing, a token, or something malformed.
type Found = Result<Option<String>, AuthError>;

/// Finds the credential in `parts`, trying `sources` in order, and strips the token entries
/// of every subprotocol and query source from `parts`, whichever source decided.
///
/// On failure returns the error and the kind of the source that produced it, if any.
pub(super) fn take_credential(
    parts: &mut Parts,
    sources: &[CredentialSource],
    max_len: usize,
) -> Result<Credential, (AuthError, Option<SourceKind>)> {
    let mut decided: Option<(Found, SourceKind)> = None;
    for source in sources {
        let found = match &source.0 {
            Source::Authorization => from_authorization(parts),
            Source::Subprotocol(prefix) => strip_subprotocol(parts, prefix),
            Source::Query(name) => strip_query(parts, name),
            Source::Cookie(name) => from_cookie(parts, name),
        };
        let found = found.and_then(|token| match token {
            Some(token) => check_token(&token, max_len).map(|()| Some(token)),
            None => Ok(None),
        });
        if decided.is_none() && !matches!(found, Ok(None)) {
            decided = Some((found, source.kind()));
        }
    }
    match decided {
        Some((Ok(Some(token)), kind)) => Ok(Credential::new(token, kind)),
        Some((Err(err), kind)) => Err((err, Some(kind))),
        Some((Ok(None), _)) | None => Err((AuthError::Missing, None)),
    }
}

/// Tokens are visible ASCII (what every token format uses: base64url, JWTs, hex, tickets).
fn check_token(token: &str, max_len: usize) -> Result<(), AuthError> {
    if token.is_empty() || token.len() > max_len || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::Malformed);
    }
    Ok(())
}

fn from_authorization(parts: &Parts) -> Found {
    let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    const SCHEME: &[u8] = b"bearer";
    let is_bearer = bytes.len() >= SCHEME.len()
        && bytes[..SCHEME.len()].eq_ignore_ascii_case(SCHEME)
        && bytes.get(SCHEME.len()).is_none_or(|b| *b == b' ');
    if !is_bearer {
        // Another scheme (Basic, Digest, ...) is not ours to judge.
        return Ok(None);
    }
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let token = std::str::from_utf8(&bytes[SCHEME.len()..]).map_err(|_| AuthError::Malformed)?;
    Ok(Some(token.trim_matches(' ').to_owned()))
}

fn strip_subprotocol(parts: &mut Parts, prefix: &str) -> Found {
    let headers = &mut parts.headers;
    if !headers.contains_key(header::SEC_WEBSOCKET_PROTOCOL) {
        return Ok(None);
    }
    if headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .any(|value| value.to_str().is_err())
    {
        // A header we cannot read cannot be stripped entry by entry: drop it whole, so that
        // no token in it goes on whichever source decides, and refuse if this one does.
        headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
        return Err(AuthError::Malformed);
    }
    let mut kept: Vec<&str> = Vec::new();
    let mut tokens: Vec<&str> = Vec::new();
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        for entry in value.split(',') {
            let entry = entry.trim_matches([' ', '\t']);
            let words = || entry.split([' ', '\t']).filter(|word| !word.is_empty());
            if let Some(token) = entry.strip_prefix(prefix) {
                tokens.push(token);
            } else if words().skip(1).any(|word| word.starts_with(prefix)) {
                // An entry with a space in it is no subprotocol name (those are tokens), but
                // a credential in one of its words is one all the same: it counts, and goes
                // no further. The entry's other words go on as entries.
                for word in words() {
                    match word.strip_prefix(prefix) {
                        Some(token) => tokens.push(token),
                        None => kept.push(word),
                    }
                }
            } else if !entry.is_empty() {
                kept.push(entry);
            }
        }
    }
    if tokens.is_empty() {
        return Ok(None);
    }
    let found = match tokens.as_slice() {
        [token] => Ok(Some((*token).to_owned())),
        _ => Err(AuthError::Malformed),
    };
    let rebuilt = if kept.is_empty() {
        None
    } else {
        // Joined from parts of valid header values, so this cannot fail; be safe anyway.
        HeaderValue::from_str(&kept.join(", ")).ok()
    };
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if let Some(value) = rebuilt {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    found
}

fn decode_component(raw: &str) -> Option<Cow<'_, str>> {
    let plus_free: Cow<'_, str> = if raw.contains('+') {
        Cow::Owned(raw.replace('+', " "))
    } else {
        Cow::Borrowed(raw)
    };
    let decoded = percent_decode(plus_free.as_bytes())?;
    match decoded {
        Cow::Borrowed(_) => Some(plus_free),
        Cow::Owned(bytes) => String::from_utf8(bytes).ok().map(Cow::Owned),
    }
}

/// Percent-decodes `input`; `None` for a truncated or non-hex escape.
fn percent_decode(input: &[u8]) -> Option<Cow<'_, [u8]>> {
    if !input.contains(&b'%') {
        return Some(Cow::Borrowed(input));
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let hex = input.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Some(Cow::Owned(out))
}

fn strip_query(parts: &mut Parts, name: &str) -> Found {
    let Some(query) = parts.uri.query() else {
        return Ok(None);
    };
    let mut kept: Vec<&str> = Vec::new();
    let mut values: Vec<Option<Cow<'_, str>>> = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if decode_component(key).as_deref() == Some(name) {
            values.push(decode_component(value));
        } else if !pair.is_empty() {
            kept.push(pair);
        }
    }
    if values.is_empty() {
        return Ok(None);
    }
    let found = match values.as_slice() {
        [Some(value)] => Ok(Some(value.clone().into_owned())),
        _ => Err(AuthError::Malformed),
    };
    let path = parts.uri.path();
    let rebuilt = if kept.is_empty() {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(format!("{path}?{}", kept.join("&")))
    };
    let path_and_query = PathAndQuery::try_from(rebuilt.as_ref());
    let mut uri_parts = uri::Parts::from(std::mem::take(&mut parts.uri));
    match path_and_query {
        Ok(pq) => {
            uri_parts.path_and_query = Some(pq);
            match Uri::from_parts(uri_parts) {
                Ok(uri) => parts.uri = uri,
                // Cannot happen for a URI that was valid with the parameter; never let the
                // token go on in the URI if it does.
                Err(_) => return Err(AuthError::Malformed),
            }
        }
        Err(_) => return Err(AuthError::Malformed),
    }
    found
}

fn from_cookie(parts: &Parts, name: &str) -> Found {
    let mut found: Option<&[u8]> = None;
    for header in parts.headers.get_all(header::COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() != name.as_bytes() {
                continue;
            }
            let mut value = pair[eq + 1..].trim_ascii();
            if value.len() >= 2 && value.starts_with(b"\"") && value.ends_with(b"\"") {
                value = &value[1..value.len() - 1];
            }
            match found {
                // The same cookie from two paths is fine; two different values is someone
                // planting a cookie (cookie tossing): refuse rather than guess.
                Some(previous) if previous != value => return Err(AuthError::Malformed),
                _ => found = Some(value),
            }
        }
    }
    match found {
        None => Ok(None),
        Some(value) => std::str::from_utf8(value)
            .map(|v| Some(v.to_owned()))
            .map_err(|_| AuthError::Malformed),
    }
}
