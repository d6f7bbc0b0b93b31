//! The HTTPS server the API server calls: TLS by rustls, HTTP/2 or HTTP/1.1
//! (as the client chose by ALPN) by hyper, routes by axum.
//!
//! The API server speaks HTTP/2 when offered: its concurrent admissions then
//! share one connection instead of opening (and TLS-handshaking) one each,
//! beyond the 25 idle connections it keeps per webhook over HTTP/1.1.
//!
//! Every resource a client can hold is bounded: connections (a semaphore),
//! streams per HTTP/2 connection, the TLS handshake and the HTTP/1.1 request
//! head (timeouts), a silent HTTP/2 peer (pings), the body (size and time,
//! enforced by the handlers). A client speaking plain HTTP gets a plain-text
//! 400 instead of a TLS alert it cannot read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::tls::H2;

/// Limits of the server.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// How long a connection may wait for a request head, idle keep-alive
    /// time included (hyper counts both). Longer than the API server's 90 s
    /// idle-connection timeout: a server that closes a kept connection first
    /// races the API server reusing it, which then fails the admission with
    /// "broken pipe".
    pub header_read_timeout: Duration,
    /// Requests in flight at once on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
    /// How often an HTTP/2 connection is pinged; a peer that does not answer
    /// within the handshake timeout is disconnected.
    pub ping_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(120),
            max_streams_per_connection: 256,
            ping_interval: Duration::from_secs(30),
        }
    }
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

const PLAIN_HTTP_REPLY: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 48\r\n\r\nThis server speaks HTTPS only; use https:// URLs";

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    if let Ok(address) = listener.local_addr() {
        info!(%address, "webhook server listening");
    }
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "accepting a connection failed");
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%peer, "too many connections; closing a new one");
            continue;
        };
        let (acceptor, app, limits) = (acceptor.clone(), app.clone(), limits.clone());
        tokio::spawn(async move {
            serve_connection(stream, peer, acceptor, app, &limits).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: Router,
    limits: &Limits,
) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.handshake_timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => {
            let _ = stream.write_all(PLAIN_HTTP_REPLY).await;
            let _ = stream.shutdown().await;
            return;
        }
        _ => return,
    }
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let http2 = tls.get_ref().1.alpn_protocol() == Some(H2);
    let (io, service) = (TokioIo::new(tls), TowerToHyperService::new(app));
    let result = if http2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_streams_per_connection)
            .keep_alive_interval(limits.ping_interval)
            .keep_alive_timeout(limits.handshake_timeout)
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(io, service)
            .await
    };
    if let Err(error) = result {
        debug!(%peer, %error, "connection ended with an error");
    }
}
