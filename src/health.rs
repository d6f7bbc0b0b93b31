//! The operations endpoint (plain HTTP): `/metrics`, `/healthz`, `/readyz`.
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

/// One condition of readiness, flipped by the part it belongs to.
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

/// What `/readyz` is made of.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The webhook serves a certificate and has listed the Replikas (true when no webhook runs).
    pub webhook: Flag,
    /// The engine's caches are synced, or this process is not the leader (true when no engine runs).
    pub engine: Flag,
    /// The key that signs and verifies Replika authors is loaded.
    pub signing_key: Flag,
    pub shutting_down: Flag,
}

impl Readiness {
    /// What is missing, for the `/readyz` body.
    fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.webhook.get() {
            missing.push("webhook certificate or Replika cache not ready");
        }
        if !self.engine.get() {
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
