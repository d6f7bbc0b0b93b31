//! The operations endpoint (plain HTTP): `/metrics`, `/healthz`, `/readyz`,
//! and the readiness it reports. Named for what the logs and
//! `tests/operations.rs` call it: it serves Prometheus metrics as well as the
//! probes, so neither `health` nor `probes` says all it does.
//!
//! Ready means: not shutting down, the signing key loaded, every part this
//! process runs has what it needs — the webhook its certificate and Replika
//! cache, the engine (on the leader) live Replika and namespace watches — and
//! the API server itself reports ready.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use kube::Client;
use tracing::info;

use crate::metrics::Metrics;

/// One condition of readiness, flipped by the one part it belongs to.
#[derive(Debug, Default)]
pub struct Flag(AtomicBool);

impl Flag {
    pub fn set(&self, value: bool) {
        self.0.store(value, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Which parts this process runs: fixed at start, so that a part it does not
/// run is never what keeps it unready.
#[derive(Clone, Copy, Debug, Default)]
pub struct Parts {
    /// The admission webhooks are served.
    pub webhook: bool,
    /// The replication engine runs.
    pub engine: bool,
    /// The engine runs only while this process holds the Lease.
    pub elected: bool,
}

/// What `/readyz` is made of. Each flag has exactly one writer, named on it.
#[derive(Debug, Default)]
pub struct Readiness {
    parts: Parts,
    /// The webhook serves a certificate and has listed the Replikas.
    /// Written by [`crate::webhook::run`].
    pub webhook: Flag,
    /// The engine's Replika and namespace caches hold a full, live list.
    /// Written by [`crate::controller::run`], which clears it when it starts.
    pub engine: Flag,
    /// This process holds the Lease (a follower has no caches to wait for).
    /// Written by the leader election's `on_leadership` callback.
    pub leading: Flag,
    /// The key that signs and verifies Replika authors is loaded.
    /// Written once it is loaded.
    pub signing_key: Flag,
    /// The process is stopping. Written when the shutdown starts.
    pub shutting_down: Flag,
}

impl Readiness {
    /// Nothing ready yet, for a process that runs `parts`.
    pub fn new(parts: Parts) -> Self {
        Readiness {
            parts,
            ..Readiness::default()
        }
    }

    /// What is missing, for the `/readyz` body.
    fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.parts.webhook && !self.webhook.get() {
            missing.push("webhook certificate or Replika cache not ready");
        }
        let engine_runs = self.parts.engine && (!self.parts.elected || self.leading.get());
        if engine_runs && !self.engine.get() {
            missing.push("engine caches not synced");
        }
        if !self.signing_key.get() {
            missing.push("signing key not loaded");
        }
        if self.shutting_down.get() {
            missing.push("shutting down");
        }
        missing
    }
}

/// Asks the API server whether it is ready, when `/readyz` is asked (at most
/// once a second): with etcd down the API server keeps watches open from its
/// cache, so the operator's own watches do not notice such an outage.
pub struct ApiServerProbe {
    client: Client,
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl ApiServerProbe {
    pub fn new(client: Client) -> Self {
        ApiServerProbe {
            client,
            last: tokio::sync::Mutex::default(),
        }
    }

    async fn check(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((asked, answer)) = last.as_ref()
            && asked.elapsed() < PROBE_REUSE
        {
            return answer.clone();
        }
        let answer = self.ask().await;
        *last = Some((Instant::now(), answer.clone()));
        answer
    }

    async fn ask(&self) -> Result<(), String> {
        let request = axum::http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|error| error.to_string())?;
        match tokio::time::timeout(PROBE_TIMEOUT, self.client.request_text(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("API server not ready: {error}")),
            Err(_) => Err(format!(
                "API server did not answer /readyz within {PROBE_TIMEOUT:?}"
            )),
        }
    }
}

/// How long an API server answer serves later `/readyz` requests.
const PROBE_REUSE: Duration = Duration::from_secs(1);
/// How long the API server may take to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Ops {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    api_server: Arc<ApiServerProbe>,
}

/// The routes of the operations endpoint.
pub fn routes(
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    api_server: Arc<ApiServerProbe>,
) -> Router {
    Router::new()
        .route("/metrics", get(export_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Ops {
            metrics,
            readiness,
            api_server,
        })
}

async fn export_metrics(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        ops.metrics.encode(),
    )
}

async fn ready(State(ops): State<Ops>) -> impl IntoResponse {
    let mut missing: Vec<String> = ops
        .readiness
        .missing()
        .into_iter()
        .map(String::from)
        .collect();
    if missing.is_empty()
        && let Err(problem) = ops.api_server.check().await
    {
        missing.push(problem);
    }
    if missing.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", missing.join(", ")),
        )
    }
}

/// Serves the operations endpoint on `bind` until `shutdown` resolves.
pub async fn serve(
    bind: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    api_server: Arc<ApiServerProbe>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    info!(address = %listener.local_addr()?, "operations endpoint listening (/metrics, /healthz, /readyz)");
    axum::serve(listener, routes(metrics, readiness, api_server))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_parts_this_process_runs_keep_it_unready() {
        let webhook_only = Readiness::new(Parts {
            webhook: true,
            ..Parts::default()
        });
        webhook_only.signing_key.set(true);
        assert_eq!(
            webhook_only.missing(),
            ["webhook certificate or Replika cache not ready"]
        );
        webhook_only.webhook.set(true);
        assert!(webhook_only.missing().is_empty());

        let elected = Readiness::new(Parts {
            engine: true,
            elected: true,
            ..Parts::default()
        });
        elected.signing_key.set(true);
        assert!(elected.missing().is_empty(), "a follower is ready");
        elected.leading.set(true);
        assert_eq!(elected.missing(), ["engine caches not synced"]);
        elected.engine.set(true);
        assert!(elected.missing().is_empty());
        elected.shutting_down.set(true);
        assert_eq!(elected.missing(), ["shutting down"]);
    }
}
