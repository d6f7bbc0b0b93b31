//! The webhook's HTTP routes: each turns a request into an AdmissionReview answer,
//! or into a clear HTTP error when the request is not one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tracing::{debug, info};

use super::admission::{ClusterView, mutate_request, validate_request};
use crate::metrics::{Metrics, Webhook, WebhookResult};

/// Largest request body accepted: an AdmissionReview holds the object twice, and
/// objects are at most ~1.5 MiB in etcd.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// How long a client may take to send its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
struct Handlers<C> {
    cluster: C,
    metrics: Arc<Metrics>,
}

/// The routes `/validate` and `/mutate`.
pub fn routes<C: ClusterView + Send + Sync + 'static>(cluster: C, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/validate", post(validate::<C>))
        .route("/mutate", post(mutate::<C>))
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "admission reviews are sent with POST\n",
            )
        })
        .fallback(|uri: axum::http::Uri| async move {
            (
                StatusCode::NOT_FOUND,
                format!(
                    "no webhook at {:?}; POST AdmissionReviews to /validate or /mutate\n",
                    uri.path()
                ),
            )
        })
        .with_state(Arc::new(Handlers { cluster, metrics }))
}

async fn validate<C: ClusterView + Send + Sync + 'static>(
    State(handlers): State<Arc<Handlers<C>>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let answer = match read_review(request).await {
        Ok(review) => {
            let response = validate_request(&review, &handlers.cluster).await;
            if !response.allowed {
                info!(user = ?review.user_info.username, namespace = ?review.namespace, name = %review.name, reason = %response.result.message, "denied a Replika");
            }
            Ok(response)
        }
        Err(error) => Err(error),
    };
    respond(&handlers.metrics, Webhook::Validate, started, answer)
}

async fn mutate<C: ClusterView + Send + Sync + 'static>(
    State(handlers): State<Arc<Handlers<C>>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let answer = read_review(request).await.map(|review| {
        let from_operator = handlers.cluster.is_operator(&review.user_info);
        mutate_request(&review, handlers.cluster.signer(), from_operator)
    });
    respond(&handlers.metrics, Webhook::Mutate, started, answer)
}

/// Turns an answer into a response, counting it.
fn respond(
    metrics: &Metrics,
    webhook: Webhook,
    started: Instant,
    answer: Result<AdmissionResponse, BadRequest>,
) -> Response {
    let result = match &answer {
        Ok(response) if response.allowed => WebhookResult::Allowed,
        Ok(_) => WebhookResult::Denied,
        Err(_) => WebhookResult::BadRequest,
    };
    metrics.observe_webhook(webhook, result, started.elapsed());
    match answer {
        Ok(response) => axum::Json(response.into_review()).into_response(),
        Err(error) => error.into_response(),
    }
}

/// Why a request is not an AdmissionReview this webhook can answer.
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    #[error("the request body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("the request body did not arrive within {BODY_TIMEOUT:?}")]
    TooSlow,
    #[error("the request body could not be read: {0}")]
    Unreadable(String),
    #[error("the request body is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("the request body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    NotAReview(String),
    #[error("this webhook admits replika.prosimcorp.com Replikas only, not {0}")]
    WrongKind(String),
}

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        let status = match self {
            BadRequest::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BadRequest::TooSlow => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        };
        debug!(error = %self, "rejected a malformed webhook request");
        (status, format!("{self}\n")).into_response()
    }
}

async fn read_review(request: Request) -> Result<AdmissionRequest<DynamicObject>, BadRequest> {
    let body = read_body(request.into_body()).await?;
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(BadRequest::NotJson)?;
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(value).map_err(|e| BadRequest::NotAReview(e.to_string()))?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| BadRequest::NotAReview("it has no request".into()))?;
    if request.kind.group != "replika.prosimcorp.com" || request.kind.kind != "Replika" {
        return Err(BadRequest::WrongKind(format!(
            "{}/{}",
            request.kind.group, request.kind.kind
        )));
    }
    Ok(request)
}

async fn read_body(body: Body) -> Result<Bytes, BadRequest> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Err(_) => Err(BadRequest::TooSlow),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) if is_length_limit(&error) => Err(BadRequest::TooLarge),
        Ok(Err(error)) => Err(BadRequest::Unreadable(error.to_string())),
    }
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(current) = source {
        if current.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = current.source();
    }
    false
}
