//! The operations endpoint (plain HTTP): `/metrics`, `/healthz`, `/readyz`.
//!
//! Ready means: not shutting down, and every part this process runs has what
//! it needs — the webhook its certificate and Replika cache, the engine (on
//! the leader) its namespace and Replika caches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
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
    pub fn is_ready(&self) -> bool {
        self.webhook.get()
            && self.engine.get()
            && self.signing_key.get()
            && !self.shutting_down.get()
    }

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

#[derive(Clone)]
struct Ops {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// The routes of the operations endpoint.
pub fn routes(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(export_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Ops { metrics, readiness })
}

async fn export_metrics(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        ops.metrics.encode(),
    )
}

async fn ready(State(ops): State<Ops>) -> impl IntoResponse {
    if ops.readiness.is_ready() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", ops.readiness.missing().join(", ")),
        )
    }
}

/// Serves the operations endpoint on `bind` until `shutdown` resolves.
pub async fn serve(
    bind: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    info!(address = %listener.local_addr()?, "operations endpoint listening (/metrics, /healthz, /readyz)");
    axum::serve(listener, routes(metrics, readiness))
        .with_graceful_shutdown(shutdown)
        .await
}
