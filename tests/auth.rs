//! Loopback integration tests for `wsguard::auth`: a real axum server on 127.0.0.1:0 and a
//! tokio-tungstenite client, one test per credential source.

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
    let layer = HandshakeAuthLayer::new(TicketVerifier::new(key).one_time(100)?)
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
