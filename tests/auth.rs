//! Loopback integration tests for `wsguard::auth`: a real axum server on 127.0.0.1:0 and a
//! tokio-tungstenite client, one test per credential source.

mod common;

use common::nz;
use std::{net::SocketAddr, time::Duration};

use axum::{
    Extension, Router,
    extract::ws::{Message, WebSocketUpgrade},
    http::{HeaderMap, Uri},
    response::Response,
    routing::get,
};
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{self, client::IntoClientRequest},
};
use wsguard::auth::{
    Authenticator, CredentialSource, HandshakeAuthLayer, Identity, Principal, StaticTokens, Ticket,
    TicketIssuer, TicketKey, TicketVerifier,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Tells the client who it is, which URI and subprotocol header the handler saw, and which
/// subprotocol was selected.
async fn whoami(
    Identity(who): Identity<String>,
    Extension(principal): Extension<Principal>,
    uri: Uri,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    upgrade
        .protocols(["chat.v1"])
        .on_upgrade(move |mut socket| async move {
            let selected = socket
                .protocol()
                .and_then(|p| p.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let line = format!(
                "{who} {} {uri} offered={offered} selected={selected}",
                principal.subject()
            );
            let _ = socket.send(Message::Text(line.into())).await;
        })
}

async fn whoami_ticket(Identity(ticket): Identity<Ticket>, upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .protocols(["chat.v1"])
        .on_upgrade(move |mut socket| async move {
            let _ = socket
                .send(Message::Text(ticket.subject().to_owned().into()))
                .await;
        })
}

async fn serve<A: Authenticator>(
    layer: HandshakeAuthLayer<A>,
    handler: axum::routing::MethodRouter,
) -> Result<SocketAddr, BoxError> {
    let app = Router::new().route("/ws", handler).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

fn tokens() -> StaticTokens<String> {
    StaticTokens::new().token("tok-alice", "alice", "Alice".to_owned())
}

async fn static_server() -> Result<SocketAddr, BoxError> {
    let layer = HandshakeAuthLayer::new(tokens()).sources([
        CredentialSource::authorization(),
        CredentialSource::subprotocol("bearer.")?,
        CredentialSource::query("access_token")?,
        CredentialSource::cookie("session")?,
    ]);
    serve(layer, get(whoami)).await
}

/// Connects with `path` and extra `headers`; returns the selected subprotocol and the first
/// message, or the HTTP status and `WWW-Authenticate` of a refused handshake.
async fn connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(header::HeaderName, &str)],
) -> Result<Result<(Option<String>, String), (StatusCode, String)>, BoxError> {
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    for (name, value) in headers {
        request
            .headers_mut()
            .append(name.clone(), HeaderValue::from_str(value)?);
    }
    let connecting = tokio::time::timeout(Duration::from_secs(10), connect_async(request)).await?;
    match connecting {
        Ok((mut stream, response)) => {
            assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
            let selected = response
                .headers()
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .map(|v| v.to_str().map(str::to_owned))
                .transpose()?;
            let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await?
                .ok_or("the server closed without a message")??;
            Ok(Ok((selected, message.into_text()?.to_string())))
        }
        Err(tungstenite::Error::Http(response)) => {
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.to_str().map(str::to_owned))
                .transpose()?
                .unwrap_or_default();
            Ok(Err((response.status(), challenge)))
        }
        Err(other) => Err(other.into()),
    }
}

#[tokio::test]
async fn authorization_header() -> Result<(), BoxError> {
    let addr = static_server().await?;
    let got = connect(addr, "/ws", &[(header::AUTHORIZATION, "Bearer tok-alice")]).await?;
    assert_eq!(
        got,
        Ok((None, "Alice alice /ws offered=- selected=-".to_owned()))
    );
    Ok(())
}

#[tokio::test]
async fn subprotocol_selects_only_the_app_protocol() -> Result<(), BoxError> {
    let addr = static_server().await?;
    let got = connect(
        addr,
        "/ws",
        &[(header::SEC_WEBSOCKET_PROTOCOL, "bearer.tok-alice, chat.v1")],
    )
    .await?;
    // The 101 selects the application protocol; the handler never saw the token entry.
    assert_eq!(
        got,
        Ok((
            Some("chat.v1".to_owned()),
            "Alice alice /ws offered=chat.v1 selected=chat.v1".to_owned()
        ))
    );

    // Token first or last, the selection is the same and never the token.
    let got = connect(
        addr,
        "/ws",
        &[(header::SEC_WEBSOCKET_PROTOCOL, "chat.v1, bearer.tok-alice")],
    )
    .await?;
    assert_eq!(
        got.map(|(selected, _)| selected),
        Ok(Some("chat.v1".to_owned()))
    );
    Ok(())
}

#[tokio::test]
async fn query_parameter_is_removed() -> Result<(), BoxError> {
    let addr = static_server().await?;
    let got = connect(addr, "/ws?room=7&access_token=tok-alice", &[]).await?;
    assert_eq!(
        got,
        Ok((
            None,
            "Alice alice /ws?room=7 offered=- selected=-".to_owned()
        ))
    );
    Ok(())
}

#[tokio::test]
async fn cookie() -> Result<(), BoxError> {
    let addr = static_server().await?;
    let got = connect(
        addr,
        "/ws",
        &[(header::COOKIE, "theme=dark; session=tok-alice")],
    )
    .await?;
    assert_eq!(
        got,
        Ok((None, "Alice alice /ws offered=- selected=-".to_owned()))
    );
    Ok(())
}

#[tokio::test]
async fn refused_handshakes() -> Result<(), BoxError> {
    let addr = static_server().await?;
    struct Case {
        name: &'static str,
        path: &'static str,
        headers: &'static [(header::HeaderName, &'static str)],
        status: StatusCode,
        challenge: &'static str,
    }
    const INVALID: &str =
        r#"Bearer error="invalid_token", error_description="the credential is not valid""#;
    let cases = [
        Case {
            name: "nothing",
            path: "/ws",
            headers: &[],
            status: StatusCode::UNAUTHORIZED,
            challenge: "Bearer",
        },
        Case {
            name: "wrong header token",
            path: "/ws",
            headers: &[(header::AUTHORIZATION, "Bearer tok-eve")],
            status: StatusCode::UNAUTHORIZED,
            challenge: INVALID,
        },
        Case {
            name: "wrong subprotocol token",
            path: "/ws",
            headers: &[(header::SEC_WEBSOCKET_PROTOCOL, "bearer.tok-eve, chat.v1")],
            status: StatusCode::UNAUTHORIZED,
            challenge: INVALID,
        },
        Case {
            name: "wrong query token",
            path: "/ws?access_token=tok-eve",
            headers: &[],
            status: StatusCode::UNAUTHORIZED,
            challenge: INVALID,
        },
        Case {
            name: "malformed cookie token",
            path: "/ws",
            headers: &[(header::COOKIE, "session=tok alice")],
            status: StatusCode::BAD_REQUEST,
            challenge: r#"Bearer error="invalid_request", error_description="the credential is malformed""#,
        },
    ];
    for case in cases {
        let got = connect(addr, case.path, case.headers).await?;
        assert_eq!(
            got,
            Err((case.status, case.challenge.to_owned())),
            "{}",
            case.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn one_time_ticket_in_the_subprotocol() -> Result<(), BoxError> {
    let key = TicketKey::generate("k1")?;
    let issuer = TicketIssuer::new(key.clone()).ttl(Duration::from_secs(30));
    let layer = HandshakeAuthLayer::new(TicketVerifier::new(key).one_time(nz(100)))
        .sources([CredentialSource::subprotocol("ticket.")?]);
    let addr = serve(layer, get(whoami_ticket)).await?;

    let ticket = issuer.issue("bob");
    let offer = format!("ticket.{ticket}, chat.v1");
    let got = connect(addr, "/ws", &[(header::SEC_WEBSOCKET_PROTOCOL, &offer)]).await?;
    assert_eq!(got, Ok((Some("chat.v1".to_owned()), "bob".to_owned())));

    // Used up.
    let again = connect(addr, "/ws", &[(header::SEC_WEBSOCKET_PROTOCOL, &offer)]).await?;
    assert_eq!(
        again.map_err(|(status, _)| status),
        Err(StatusCode::UNAUTHORIZED)
    );
    Ok(())
}

/// A subject that used up its share of the one-time replay cache is refused with `429` and
/// `Retry-After`; another subject still connects. (Before the per-subject bound, one account
/// filled the whole cache and every account got `401`.)
#[tokio::test]
async fn one_account_cannot_fill_the_replay_cache_for_others() -> Result<(), BoxError> {
    const CAPACITY: usize = 128;
    const PER_SUBJECT: usize = 64; // the default
    let key = TicketKey::generate("k1")?;
    let issuer = TicketIssuer::new(key.clone());
    let layer = HandshakeAuthLayer::new(TicketVerifier::new(key).one_time(nz(CAPACITY)))
        .sources([CredentialSource::subprotocol("ticket.")?]);
    let addr = serve(layer, get(whoami_ticket)).await?;
    let offer = |ticket: String| format!("ticket.{ticket}, chat.v1");

    // Alice mints fresh tickets (each used once, as a real client would) until refused;
    // bounded by the whole capacity.
    let mut accepted = 0;
    let refusal = loop {
        let got = refusal(addr, &offer(issuer.issue("alice"))).await?;
        match got {
            None => accepted += 1,
            Some(refusal) => break refusal,
        }
        assert!(accepted <= CAPACITY, "alice filled the whole cache");
    };
    assert_eq!(accepted, PER_SUBJECT, "alice's share");
    assert_eq!(refusal.0, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refusal.1.ok_or("no Retry-After")?.parse()?;
    assert!(
        (1..=60).contains(&retry_after),
        "until alice's oldest ticket expires: {retry_after}"
    );

    // Bob is not locked out.
    let got = connect(
        addr,
        "/ws",
        &[(header::SEC_WEBSOCKET_PROTOCOL, &offer(issuer.issue("bob")))],
    )
    .await?;
    assert_eq!(got, Ok((Some("chat.v1".to_owned()), "bob".to_owned())));
    Ok(())
}

/// Connects offering `protocols`; `None` when the socket opened, else the refusal's status
/// and `Retry-After`.
async fn refusal(
    addr: SocketAddr,
    protocols: &str,
) -> Result<Option<(StatusCode, Option<String>)>, BoxError> {
    let mut request = format!("ws://{addr}/ws").into_client_request()?;
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_str(protocols)?,
    );
    match tokio::time::timeout(Duration::from_secs(10), connect_async(request)).await? {
        Ok(_) => Ok(None),
        Err(tungstenite::Error::Http(response)) => Ok(Some((
            response.status(),
            response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().map(str::to_owned))
                .transpose()?,
        ))),
        Err(other) => Err(other.into()),
    }
}

/// A ticket TTL of `Duration::MAX` saturates (the tickets expire at the end of the year 9999)
/// instead of panicking when the ticket is verified.
#[test]
fn a_ticket_ttl_of_duration_max_saturates() -> Result<(), BoxError> {
    let key = TicketKey::generate("k1")?;
    let ticket = TicketIssuer::new(key.clone())
        .ttl(Duration::MAX)
        .issue("alice");
    let verified = TicketVerifier::new(key).one_time(nz(10)).verify(&ticket)?;
    assert_eq!(
        verified.expires_at(),
        std::time::UNIX_EPOCH + Duration::from_secs(253_402_300_799)
    );
    Ok(())
}

#[cfg(feature = "jwt")]
mod jwt {
    use std::time::{SystemTime, UNIX_EPOCH};

    use axum::routing::any;
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};
    use tungstenite::protocol::frame::coding::CloseCode;
    use wsguard::{
        auth::{Algorithm, DecodingKey, JwtAuthenticator},
        socket::{GuardedSocket, GuardedUpgrade, SocketPolicyLayer},
    };

    use super::*;

    const EC_PRIVATE: &[u8] = include_bytes!("keys/ec_private_pkcs8.der");
    const EC_PUBLIC: &[u8] = include_bytes!("keys/ec_public_sec1.bin");

    fn now_secs() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    fn es256_token(claims: &Value) -> Result<String, BoxError> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            claims,
            &EncodingKey::from_ec_der(EC_PRIVATE),
        )?)
    }

    /// The same token with the ECDSA signature `(r, s)` replaced by `(r, n - s)`, which
    /// verifies just as well.
    pub(super) fn flip_s(token: &str) -> Result<String, BoxError> {
        let (signed, signature) = token.rsplit_once('.').ok_or("not a JWT")?;
        let signature = p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature)?)?;
        let (r, s) = signature.split_scalars();
        let flipped = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-s).to_bytes())?;
        assert_ne!(flipped, signature);
        Ok(format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(flipped.to_bytes())
        ))
    }

    fn es256() -> JwtAuthenticator {
        JwtAuthenticator::es256(DecodingKey::from_ec_der(EC_PUBLIC)).audience(["ticker"])
    }

    /// Ends when the peer closes; the policy layer closes at expiry.
    async fn hold(up: GuardedUpgrade) -> Response {
        up.on_upgrade(|mut socket: GuardedSocket| async move {
            let _ = socket.send(Message::text("hello")).await;
            while socket.recv().await.is_some() {}
        })
    }

    /// A fractional `exp` (what `time.time() + 1.5` mints) is an expiry like any other: the
    /// socket closes with 1008 when it passes. (Before, the principal had no expiry at all.)
    #[tokio::test]
    async fn fractional_exp_closes_the_socket_at_expiry() -> Result<(), BoxError> {
        let auth = HandshakeAuthLayer::new(es256().leeway(Duration::ZERO));
        let app = Router::new()
            .route("/ws", any(hold))
            .layer(SocketPolicyLayer::new())
            .layer(auth);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });

        let exp = now_secs().floor() + 2.5;
        assert_ne!(exp.fract(), 0.0);
        let token = es256_token(&json!({"sub": "alice", "aud": "ticker", "exp": exp}))?;
        let mut request = format!("ws://{addr}/ws").into_client_request()?;
        request.headers_mut().insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        let (mut socket, _) = connect_async(request).await?;
        let mut close = None;
        while let Some(message) =
            tokio::time::timeout(Duration::from_secs(10), socket.next()).await?
        {
            if let tungstenite::Message::Close(frame) = message? {
                close = frame.map(|f| f.code);
                break;
            }
        }
        assert_eq!(close, Some(CloseCode::Policy));
        Ok(())
    }

    /// A huge `exp` and a huge leeway neither panic nor overflow: they saturate.
    #[test]
    fn huge_dates_and_leeways_saturate() -> Result<(), BoxError> {
        let far = std::time::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
        for exp in [json!(u64::MAX), json!(1e300), json!(i64::MAX)] {
            let token = es256_token(&json!({"sub": "alice", "aud": "ticker", "exp": exp}))?;
            let verified = es256().verify(&token)?;
            assert_eq!(verified.principal().expires_at(), Some(far), "{exp}");
        }
        let expired = es256_token(&json!({"sub": "alice", "aud": "ticker", "exp": 1_000}))?;
        assert!(es256().leeway(Duration::MAX).verify(&expired).is_ok());
        Ok(())
    }

    /// A token minted by the same issuer for another application is refused; so is one
    /// without `aud`.
    #[tokio::test]
    async fn a_token_for_another_audience_is_refused() -> Result<(), BoxError> {
        let addr = serve(HandshakeAuthLayer::new(es256()), get(whoami_claims)).await?;
        let exp = now_secs() + 300.0;
        for (name, claims, expect) in [
            (
                "for us",
                json!({"sub": "alice", "aud": "ticker", "exp": exp}),
                Ok(()),
            ),
            (
                "for billing",
                json!({"sub": "alice", "aud": "billing", "exp": exp}),
                Err(StatusCode::UNAUTHORIZED),
            ),
            (
                "no aud",
                json!({"sub": "alice", "exp": exp}),
                Err(StatusCode::UNAUTHORIZED),
            ),
        ] {
            let bearer = format!("Bearer {}", es256_token(&claims)?);
            let got = connect(addr, "/ws", &[(header::AUTHORIZATION, &bearer)]).await?;
            assert_eq!(got.map(|_| ()).map_err(|(s, _)| s), expect, "{name}");
        }
        Ok(())
    }

    async fn whoami_claims(
        Identity(claims): Identity<Value>,
        upgrade: WebSocketUpgrade,
    ) -> Response {
        let sub = claims["sub"].as_str().unwrap_or("-").to_owned();
        upgrade.on_upgrade(move |mut socket| async move {
            let _ = socket.send(Message::Text(sub.into())).await;
        })
    }

    /// A revoked ES256 token stays revoked with its signature's `s` flipped to `n - s`
    /// (both verify). Revocation through the fleet's Redis (`WSGUARD_TEST_REDIS_URL`, or a
    /// `redis-server` started for the test).
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_revoked_es256_token_stays_revoked_with_a_flipped_signature() -> Result<(), BoxError>
    {
        use wsguard::fleet::{Fleet, RevocationLayer};

        let redis = TestRedis::start()?;
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce)?;
        let prefix = format!("wsguard-auth-test-{}", URL_SAFE_NO_PAD.encode(nonce));
        let fleet = Fleet::builder(redis.url.clone())
            .prefix(prefix)
            .timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let app = Router::new()
            .route("/ws", get(whoami_claims))
            .layer(RevocationLayer::new(&fleet))
            .layer(HandshakeAuthLayer::new(es256()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });

        let token =
            es256_token(&json!({"sub": "alice", "aud": "ticker", "exp": now_secs() + 300.0}))?;
        let flipped = flip_s(&token)?;
        let bearer = |t: &str| format!("Bearer {t}");
        // Both encodings are accepted before the revocation.
        for t in [&token, &flipped] {
            let got = connect(addr, "/ws", &[(header::AUTHORIZATION, &bearer(t))]).await?;
            assert_eq!(got.map(|(_, who)| who), Ok("alice".to_owned()));
        }

        fleet.revoke_token(&token).await?;
        for (name, t) in [("as revoked", &token), ("with s flipped", &flipped)] {
            let got = connect(addr, "/ws", &[(header::AUTHORIZATION, &bearer(t))]).await?;
            assert_eq!(
                got.map_err(|(status, _)| status),
                Err(StatusCode::UNAUTHORIZED),
                "{name}"
            );
        }
        Ok(())
    }

    /// `WSGUARD_TEST_REDIS_URL`, or a `redis-server` on a free loopback port, killed on drop.
    #[cfg(feature = "redis")]
    struct TestRedis {
        child: Option<std::process::Child>,
        url: String,
    }

    #[cfg(feature = "redis")]
    impl TestRedis {
        fn start() -> Result<Self, BoxError> {
            if let Ok(url) = std::env::var("WSGUARD_TEST_REDIS_URL")
                && !url.is_empty()
            {
                return Ok(Self { child: None, url });
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start redis-server ({e}): the test needs Redis"))?;
            let redis = Self {
                child: Some(child),
                url: format!("redis://127.0.0.1:{port}"),
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if std::time::Instant::now() > deadline {
                    return Err("redis-server did not listen".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(redis)
        }
    }

    #[cfg(feature = "redis")]
    impl Drop for TestRedis {
        fn drop(&mut self) {
            if let Some(child) = &mut self.child {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
