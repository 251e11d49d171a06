//! The accept loop: plain HTTP or TLS, a bound on how long request headers may take, and the
//! peer address handed to the app as `ConnectInfo` (the client-IP layer reads it).

use std::{future::Future, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use tower::ServiceExt;

/// A TLS acceptor from PEM files, or for a self-signed certificate made now.
pub(crate) fn tls_acceptor(
    cert_key: Option<(&Path, &Path)>,
) -> Result<TlsAcceptor, Box<dyn std::error::Error>> {
    let (certs, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) = match cert_key {
        Some((cert, key)) => (
            CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?,
            PrivateKeyDer::from_pem_file(key)?,
        ),
        None => {
            let names = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            let generated = rcgen::generate_simple_self_signed(names)?;
            let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())?;
            (vec![generated.cert.der().clone()], key)
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // HTTP/2 first: browsers then run the page's WebSocket as one more stream of the page's
    // connection (extended CONNECT, RFC 8441); HTTP/1.1 upgrades for the other clients.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` until `shutdown` resolves, then stops accepting: the listener is closed and
/// the connections already accepted go on (the drain closes the sockets). A client gets
/// `header_timeout` to complete TLS and send its request headers, or its connection is
/// closed (slow-handshake attacks).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service =
                tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    app.clone().oneshot(req)
                });
            let service = TowerToHyperService::new(service);
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            // WebSockets over HTTP/2 streams: the SETTINGS announce extended CONNECT.
            builder
                .http2()
                .timer(TokioTimer::new())
                .enable_connect_protocol();
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended with an error: {e}");
            }
        });
    }
}

/// The address the server is reached at, for banners and allowed origins.
/// The hosts the server answers to (the `Host` of a socket handshake must be one of them):
/// its listen address, and on loopback or a wildcard address also `127.0.0.1`, `localhost`
/// and `[::1]`, each with the listen port.
pub(crate) fn hosts_for(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut hosts = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")];
    if addr.ip().is_ipv6() {
        hosts.push(format!("[::1]:{port}"));
    }
    if !addr.ip().is_loopback() && !addr.ip().is_unspecified() {
        hosts.push(addr.to_string());
    }
    hosts
}

pub(crate) fn origins_for(addr: SocketAddr, tls: bool) -> Vec<String> {
    let scheme = if tls { "https" } else { "http" };
    let port = addr.port();
    let mut origins = vec![
        format!("{scheme}://127.0.0.1:{port}"),
        format!("{scheme}://localhost:{port}"),
    ];
    if addr.ip().is_ipv6() {
        origins.push(format!("{scheme}://[::1]:{port}"));
    } else if !addr.ip().is_loopback() && !addr.ip().is_unspecified() {
        origins.push(format!("{scheme}://{}:{port}", addr.ip()));
    }
    origins
}
