//! The admission webhooks: reject unsafe Replikas at `kubectl apply`, fill defaults.
//!
//! - [`admission`]: the decisions, independent of HTTP and of the API server.
//! - [`cluster`]: the API-server-backed view those decisions consult.
//! - [`http`]: routes and the clear errors for requests that are not AdmissionReviews.
//! - [`server`]: the bounded HTTPS server.
//! - [`tls`]: certificates, their hot reload, and their generation.
//! - [`self_managed`]: certificates kept in a Secret and injected as `caBundle`.

pub mod admission;
pub mod cluster;
pub mod http;
pub mod self_managed;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tracing::warn;

use crate::api::Replika;
use crate::authorization::Authorizer;
use crate::metrics::Metrics;
use crate::operations::Readiness;

/// Where the serving certificate comes from.
pub enum Certificates {
    /// `tls.crt` and `tls.key` in a directory (a mounted Secret), reloaded on change.
    Files(PathBuf),
    /// Made by the operator and kept in a Secret.
    SelfManaged(self_managed::SelfManaged),
}

/// How to serve the webhooks.
pub struct Options {
    pub bind: SocketAddr,
    pub certificates: Certificates,
    pub limits: server::Limits,
    /// Signs the authors of admitted Replikas and reviews their access.
    pub authorizer: Arc<Authorizer>,
}

/// Why the webhook server could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("self-managed certificates: {0}")]
    SelfManaged(#[from] self_managed::SelfManagedError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Serves the webhooks until `shutdown` resolves; sets `readiness.webhook` once a
/// certificate is loaded and the Replika cache has its first list.
pub async fn run(
    client: Client,
    options: Options,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WebhookError> {
    // Kept alive while serving: dropping it stops the reload.
    let mut _file_watch = None;
    let resolver = match options.certificates {
        Certificates::Files(dir) => {
            let resolver = tls::CertResolver::new(tls::load_dir(&dir)?);
            _file_watch = Some(tls::watch_dir(&dir, resolver.clone())?);
            resolver
        }
        Certificates::SelfManaged(manager) => manager.start().await?,
    };
    let (replikas, writer) = reflector::store();
    let replika_watch = tokio::spawn(
        watcher(
            Api::<Replika>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .reflect(writer)
        .for_each(|event| async move {
            if let Err(error) = event {
                warn!(%error, "Replika watch for the webhook failed; retrying");
            }
        }),
    );
    let ready_when_listed = {
        let replikas = replikas.clone();
        tokio::spawn(async move {
            if replikas.wait_until_ready().await.is_ok() {
                readiness.webhook.set(true);
            }
        })
    };
    let cluster = cluster::LiveCluster::new(client, replikas, options.authorizer);
    let listener = tokio::net::TcpListener::bind(options.bind)
        .await
        .map_err(|source| WebhookError::Bind {
            address: options.bind,
            source,
        })?;
    server::serve(
        listener,
        tls::server_config(resolver)?,
        http::routes(cluster, metrics),
        options.limits,
        shutdown,
    )
    .await;
    replika_watch.abort();
    ready_when_listed.abort();
    Ok(())
}
