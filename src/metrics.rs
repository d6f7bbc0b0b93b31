//! Prometheus metrics of the engine and the webhooks. Labels are bounded sets
//! (results, operations, error kinds); object names never become labels.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a reconcile pass ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `success`, or the error kind of [`crate::controller::Error::label`].
    pub result: String,
}

/// How many targets a pass that replicated looked at.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum PassScope {
    /// Every target.
    Whole,
    /// Only the namespaces where something changed.
    Narrow,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    pub scope: PassScope,
}

/// A write to a copy.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum CopyOperation {
    Create,
    Update,
    Replace,
    Delete,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CopyWriteLabels {
    pub operation: CopyOperation,
}

/// Which webhook answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Webhook {
    Validate,
    Mutate,
}

/// How a webhook request ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum WebhookResult {
    Allowed,
    Denied,
    BadRequest,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub webhook: Webhook,
    pub result: WebhookResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLatencyLabels {
    pub webhook: Webhook,
}

/// Label values in snake_case, as Prometheus names are: `operation="create"`.
macro_rules! snake_case_label_values {
    ($($kind:ident { $($variant:ident => $value:literal),+ $(,)? })+) => {$(
        impl EncodeLabelValue for $kind {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                let value = match self {
                    $($kind::$variant => $value),+
                };
                EncodeLabelValue::encode(&value, encoder)
            }
        }
    )+};
}

snake_case_label_values! {
    CopyOperation { Create => "create", Update => "update", Replace => "replace", Delete => "delete" }
    PassScope { Whole => "whole", Narrow => "narrow" }
    Webhook { Validate => "validate", Mutate => "mutate" }
    WebhookResult { Allowed => "allowed", Denied => "denied", BadRequest => "bad_request" }
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub passes: Family<PassLabels, Counter>,
    pub copy_writes: Family<CopyWriteLabels, Counter>,
    pub copies_managed: Gauge<i64, AtomicI64>,
    pub propagation: Histogram,
    pub webhook_requests: Family<WebhookLabels, Counter>,
    pub webhook_latency: Family<WebhookLatencyLabels, Histogram>,
    pub leader: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("replika");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconcile passes, by result",
            reconciles.clone(),
        );
        let passes = Family::<PassLabels, Counter>::default();
        registry.register(
            "passes",
            "Passes that replicated, by the targets they looked at: every one (whole) or those in namespaces that changed (narrow)",
            passes.clone(),
        );
        let copy_writes = Family::<CopyWriteLabels, Counter>::default();
        registry.register(
            "copy_writes",
            "Writes to copies, by operation",
            copy_writes.clone(),
        );
        let copies_managed = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "copies_managed",
            "Copies in sync across all Replikas, as of each Replika's last pass",
            copies_managed.clone(),
        );
        let propagation = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "propagation_seconds",
            "Time from a source change reaching the operator to a copy written with it",
            propagation.clone(),
        );
        let webhook_requests = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_requests",
            "Admission requests, by webhook and result",
            webhook_requests.clone(),
        );
        let webhook_latency =
            Family::<WebhookLatencyLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 14))
            });
        registry.register(
            "webhook_duration_seconds",
            "Time to answer an admission request",
            webhook_latency.clone(),
        );
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "leader",
            "1 while this process holds the leader Lease and reconciles",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            passes,
            copy_writes,
            copies_managed,
            propagation,
            webhook_requests,
            webhook_latency,
            leader,
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Records one answered admission request.
    pub fn observe_webhook(&self, webhook: Webhook, result: WebhookResult, took: Duration) {
        self.webhook_requests
            .get_or_create(&WebhookLabels {
                webhook: webhook.clone(),
                result,
            })
            .inc();
        self.webhook_latency
            .get_or_create(&WebhookLatencyLabels { webhook })
            .observe(took.as_secs_f64());
    }

    /// Records one write to a copy.
    pub fn observe_write(&self, operation: CopyOperation) {
        self.copy_writes
            .get_or_create(&CopyWriteLabels { operation })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_exported_with_the_replika_prefix() {
        let metrics = Metrics::new();
        metrics.observe_write(CopyOperation::Create);
        metrics.observe_webhook(
            Webhook::Validate,
            WebhookResult::Denied,
            Duration::from_millis(2),
        );
        let text = metrics.encode();
        assert!(
            text.contains("replika_copy_writes_total{operation=\"create\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "replika_webhook_requests_total{webhook=\"validate\",result=\"denied\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("replika_webhook_duration_seconds_count{webhook=\"validate\"} 1"),
            "{text}"
        );
    }
}
