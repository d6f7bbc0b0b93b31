//! The operator's admission webhooks: registered with the API server for the
//! whole run when the operator serves them (Replika signs the author of every
//! Replika it admits and replicates no other), and the admission scenario of
//! docs/benchmarks.md at the end of the run:
//!
//! - Added latency: [`CONCURRENCY`] clients apply Replikas through the API
//!   server (server-side apply with dry run, so admission runs in full but
//!   nothing is stored and the engine has nothing to do), first with the
//!   webhooks unregistered, then registered again. The end-to-end figure is
//!   the difference of the two p99s.
//! - The webhooks' share: the API server's own histogram
//!   `apiserver_admission_webhook_admission_duration_seconds`, scraped right
//!   before and right after the applies with the webhooks; the difference of
//!   the two scrapes' cumulative buckets holds the calls of those applies, and
//!   its p50 and p99 (interpolated within a bucket, [`crate::histogram`]) are
//!   each webhook's share of their admission latency. The same share is then
//!   taken over [`ONE_AT_A_TIME_APPLIES`] applies made one at a time, where
//!   the API server is not saturated.
//! - Direct throughput: [`CONCURRENCY`] clients POST AdmissionReviews of the
//!   same Replika straight to the webhook's `/validate`.
//!
//! The operator is asked to serve its webhook with certificates for 127.0.0.1
//! that [`write_certificates`] makes (see [`crate::operator::Endpoints`]); an
//! operator that does not serve one is run without, and reported as such.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::ByteString;
use kube::Client;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::accounting;
use crate::cluster::{Cluster, kubectl};
use crate::figures::{WebhookFigures, WebhookShare};
use crate::histogram::{Histogram, histograms_by};
use crate::model::{FIELD_MANAGER, SOURCE_NAMESPACE, replikas};
use crate::operator::Endpoints;
use crate::progress::Progress;
use crate::stats::Summary;
use crate::workload::Workload;

/// Requests in flight at once, through the API server and directly.
pub const CONCURRENCY: usize = 50;
/// Applies made one at a time for the webhooks' share on an API server that
/// is not saturated.
const ONE_AT_A_TIME_APPLIES: usize = 100;
/// Name of the webhook configurations the scenario registers.
const CONFIGURATION: &str = "replika-bench";
/// The webhooks in `webhook-config/local`, as the API server's metrics name
/// them, and their kind.
const WEBHOOKS: [(&str, &str); 2] = [
    ("mutate.replika.prosimcorp.com", "mutating"),
    ("validate.replika.prosimcorp.com", "validating"),
];
/// The API server's histogram of each webhook call's duration.
const DURATION_METRIC: &str = "apiserver_admission_webhook_admission_duration_seconds";
/// The project's url-based webhook configurations.
const TEMPLATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../webhook-config/local/webhooks.yaml.tmpl"
);
/// Counts the API server's calls to each webhook, by its label `name`.
const CALLS_METRIC: &str = "apiserver_admission_webhook_admission_duration_seconds_count";
/// How long the API server may take to start (or stop) calling the webhooks.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two checks of whether the configuration is in effect.
const REGISTRATION_POLL: Duration = Duration::from_millis(200);
/// How long a starting operator may take to listen on its webhook address.
const SERVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two tries to reach the webhook.
const SERVE_POLL: Duration = Duration::from_millis(100);
/// Validity of the webhook's certificates: far longer than any run.
const CERTIFICATE_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Writes a CA (`ca.crt`) and a serving certificate for 127.0.0.1
/// (`tls.crt`, `tls.key`) into `dir`.
pub fn write_certificates(dir: &Path) -> Result<()> {
    let certs = replika::webhook::tls::generate(&["127.0.0.1".into()], CERTIFICATE_VALIDITY)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, pem) in [
        ("ca.crt", &certs.ca_pem),
        ("tls.crt", &certs.cert_pem),
        ("tls.key", &certs.key_pem),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Whether the operator answers AdmissionReviews at its webhook address,
/// given [`SERVE_TIMEOUT`] to start listening; fails if it answers wrongly.
pub async fn served(endpoints: &Endpoints, workload: &Workload) -> Result<bool> {
    let client = direct_client(endpoints)?;
    let review = review(workload)?;
    let deadline = Instant::now() + SERVE_TIMEOUT;
    loop {
        match send_review(&client, &review).await {
            Ok(()) => return Ok(true),
            Err(Unanswered::Refused(_)) if Instant::now() < deadline => {
                tokio::time::sleep(SERVE_POLL).await;
            }
            Err(Unanswered::Refused(error)) => {
                eprintln!(
                    "  no admission webhook answers at https://{} ({error}): Replikas are \
                     created without admission, and the admission rows are not measured",
                    endpoints.webhook
                );
                return Ok(false);
            }
            Err(Unanswered::Wrong(error)) => return Err(error),
        }
    }
}

/// Registers `webhook-config/local` for the operator's webhook at
/// `endpoints`, and waits until the API server calls both webhooks.
pub async fn register(cluster: &Cluster, endpoints: &Endpoints, workload: &Workload) -> Result<()> {
    let ca = std::fs::read(endpoints.tls_dir.join("ca.crt")).context("cannot read ca.crt")?;
    let ca_base64 = serde_json::to_value(ByteString(ca))?;
    let template =
        std::fs::read_to_string(TEMPLATE).with_context(|| format!("cannot read {TEMPLATE}"))?;
    let manifest = template
        .replace("${WEBHOOK_NAME}", CONFIGURATION)
        .replace("${WEBHOOK_URL}", &format!("https://{}", endpoints.webhook))
        .replace("${CA_BUNDLE}", ca_base64.as_str().unwrap_or_default());
    let path = endpoints.tls_dir.join("webhooks.yaml");
    std::fs::write(&path, manifest).with_context(|| format!("cannot write {}", path.display()))?;
    let path = path
        .to_str()
        .context("the webhook manifest's path is not UTF-8")?;
    kubectl(cluster.plane, &["apply", "--server-side", "-f", path]).await?;
    wait_for_calls(&cluster.admin, workload, true).await
}

/// Removes the registration, and waits until the API server stops calling.
pub async fn unregister(cluster: &Cluster, workload: &Workload) -> Result<()> {
    kubectl(
        cluster.plane,
        &[
            "delete",
            "validatingwebhookconfiguration,mutatingwebhookconfiguration",
            CONFIGURATION,
            "--ignore-not-found",
        ],
    )
    .await?;
    wait_for_calls(&cluster.admin, workload, false).await
}

/// Runs one repetition of the scenario against the webhooks at `endpoints`,
/// registered, with `requests` applies on each side and `requests` direct
/// reviews. Leaves the webhooks registered, as they were.
pub async fn measure(
    cluster: &Cluster,
    endpoints: &Endpoints,
    workload: &Workload,
    requests: usize,
) -> Result<WebhookFigures> {
    let requests = requests.max(CONCURRENCY);
    unregister(cluster, workload).await?;
    let without_webhook = applies(
        "applies without the webhook",
        &cluster.admin,
        workload,
        (requests, CONCURRENCY),
        false,
    )
    .await;
    // Registered again whatever happened: the engine needs it.
    register(cluster, endpoints, workload).await?;
    let (without_webhook, _) = without_webhook?;
    let (with_webhook, share) = applies(
        "applies with the webhook",
        &cluster.admin,
        workload,
        (requests, CONCURRENCY),
        true,
    )
    .await?;
    let (_, share_one_at_a_time) = applies(
        "applies one at a time",
        &cluster.admin,
        workload,
        (ONE_AT_A_TIME_APPLIES, 1),
        true,
    )
    .await?;

    let direct = direct_client(endpoints)?;
    let review = review(workload)?;
    let mut progress = Progress::new("admission: direct reviews", requests);
    let started = Instant::now();
    let latencies = concurrently((requests, CONCURRENCY), &mut progress, |_| async {
        send_review(&direct, &review)
            .await
            .map_err(Unanswered::into_error)
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    progress.finish();
    Ok(WebhookFigures {
        // Unclamped: noise can make it negative when the webhook costs little.
        added_latency_p99_ms: ((with_webhook.p99_ms - without_webhook.p99_ms) * 10.0).round()
            / 10.0,
        without_webhook,
        with_webhook,
        share,
        share_one_at_a_time,
        direct: Summary::of(&latencies),
        direct_reviews_per_second: (requests as f64 / seconds).round(),
    })
}

/// `requests` dry-run applies through the API server, `parallel` at a time,
/// after as many unmeasured ones to open the connections; with `share`, the
/// webhooks' share of the measured ones from the API server's histogram.
async fn applies(
    label: &str,
    admin: &Client,
    workload: &Workload,
    (requests, parallel): (usize, usize),
    share: bool,
) -> Result<(Summary, Vec<WebhookShare>)> {
    let api = replikas(admin);
    let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
    let apply = |index: usize| {
        let name = format!("bench-admission-{:02}", index % CONCURRENCY);
        let object = workload.admission_replika(&name);
        let (api, params) = (&api, &params);
        async move {
            api.patch(&name, params, &Patch::Apply(&object))
                .await
                .with_context(|| format!("the dry-run apply of {name} failed"))?;
            Ok(())
        }
    };
    let mut progress = Progress::new(format!("admission: {label}"), 2 * requests);
    concurrently((requests, parallel), &mut progress, apply).await?;
    let before = match share {
        true => Some(accounting::apiserver_metrics(admin).await?),
        false => None,
    };
    let latencies = concurrently((requests, parallel), &mut progress, apply).await?;
    let shares = match before {
        Some(before) => shares(&before, &accounting::apiserver_metrics(admin).await?),
        None => Vec::new(),
    };
    progress.finish();
    Ok((Summary::of(&latencies), shares))
}

/// Each of our webhooks' calls between the scrapes `before` and `after`,
/// with their p50 and p99.
fn shares(before: &str, after: &str) -> Vec<WebhookShare> {
    let ours = |labels: &std::collections::BTreeMap<String, String>| {
        labels
            .get("name")
            .is_some_and(|name| WEBHOOKS.iter().any(|(webhook, _)| webhook == name))
    };
    let before = histograms_by(before, DURATION_METRIC, "name", ours);
    let after = histograms_by(after, DURATION_METRIC, "name", ours);
    let empty = Histogram::default();
    WEBHOOKS
        .iter()
        .map(|&(name, kind)| {
            let calls = after
                .get(name)
                .unwrap_or(&empty)
                .since(before.get(name).unwrap_or(&empty));
            let ms = |q: f64| {
                calls
                    .quantile(q)
                    .map(|seconds| (seconds * 10_000.0).round() / 10.0)
            };
            WebhookShare {
                webhook: name.to_owned(),
                kind: kind.to_owned(),
                calls: calls.count() as u64,
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
            }
        })
        .collect()
}

/// Runs `request(0..count)`, `parallel` at a time; returns each one's latency.
async fn concurrently<F, Fut>(
    (count, parallel): (usize, usize),
    progress: &mut Progress,
    request: F,
) -> Result<Vec<Duration>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    stream::iter(0..count)
        .map(|index| {
            let sent = request(index);
            async move {
                let started = Instant::now();
                sent.await?;
                Ok(started.elapsed())
            }
        })
        .buffer_unordered(parallel)
        .inspect(|_| progress.inc())
        .try_collect()
        .await
}

/// Applies one Replika at a time (with dry run) until the API server calls
/// both webhooks (`called`), or until an apply calls neither (`!called`).
async fn wait_for_calls(admin: &Client, workload: &Workload, called: bool) -> Result<()> {
    let calls = || async {
        let text = accounting::apiserver_metrics(admin).await?;
        let calls = accounting::sum_by_label(&text, CALLS_METRIC, "name");
        anyhow::Ok(WEBHOOKS.map(|(name, _)| calls.get(name).copied().unwrap_or_default()))
    };
    let api = replikas(admin);
    let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
    let probe = workload.admission_replika("bench-admission-probe");
    let deadline = Instant::now() + REGISTRATION_TIMEOUT;
    loop {
        let before = calls().await?;
        // Refused while only one of the two configurations is in effect
        // is fine: a later try goes through both.
        let _ = api
            .patch("bench-admission-probe", &params, &Patch::Apply(&probe))
            .await;
        let after = calls().await?;
        let each_called = after
            .iter()
            .zip(before)
            .map(|(after, before)| *after > before);
        let done = if called {
            each_called.clone().all(|was| was)
        } else {
            !each_called.clone().any(|was| was)
        };
        if done {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the API server's calls to the webhooks did not {} within {REGISTRATION_TIMEOUT:?}",
            if called { "start" } else { "stop" }
        );
        tokio::time::sleep(REGISTRATION_POLL).await;
    }
}

/// A client for the webhook itself, trusting the benchmark's CA.
fn direct_client(endpoints: &Endpoints) -> Result<Client> {
    let url = format!("https://{}", endpoints.webhook).parse()?;
    let mut config = kube::Config::new(url);
    config.root_cert_file = Some(endpoints.tls_dir.join("ca.crt"));
    Ok(Client::try_from(config)?)
}

/// An AdmissionReview of a dry-run create of a Replika by a cluster admin.
fn review(workload: &Workload) -> Result<Vec<u8>> {
    let name = "bench-admission-direct";
    let kind = json!({"group": "replika.prosimcorp.com", "version": "v1beta1", "kind": "Replika"});
    let resource =
        json!({"group": "replika.prosimcorp.com", "version": "v1beta1", "resource": "replikas"});
    Ok(serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-4000-8000-000000000001",
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "name": name,
            "namespace": SOURCE_NAMESPACE,
            "operation": "CREATE",
            "userInfo": {"username": "replika-bench", "groups": ["system:masters", "system:authenticated"]},
            "object": workload.admission_replika(name),
            "dryRun": true,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }))?)
}

/// Why a review got no usable answer.
enum Unanswered {
    /// No HTTP answer: nothing listens (yet), or the connection failed.
    Refused(kube::Error),
    /// An answer that is not an allowing AdmissionReview.
    Wrong(anyhow::Error),
}

impl Unanswered {
    fn into_error(self) -> anyhow::Error {
        match self {
            Unanswered::Refused(error) => error.into(),
            Unanswered::Wrong(error) => error,
        }
    }
}

/// Sends `review` to `/validate`; fails unless the webhook allows it.
async fn send_review(client: &Client, review: &[u8]) -> Result<(), Unanswered> {
    let request = http::Request::post("/validate")
        .header("content-type", "application/json")
        .body(review.to_vec())
        .map_err(|error| Unanswered::Wrong(error.into()))?;
    let text = match client.request_text(request).await {
        Ok(text) => text,
        // Transport errors: connection refused, TLS, timeouts.
        Err(error @ (kube::Error::HyperError(_) | kube::Error::Service(_))) => {
            return Err(Unanswered::Refused(error));
        }
        Err(error) => return Err(Unanswered::Wrong(error.into())),
    };
    let answer: Value = serde_json::from_str(&text)
        .with_context(|| format!("the webhook's answer is not JSON: {text}"))
        .map_err(Unanswered::Wrong)?;
    match answer["response"]["allowed"].as_bool() {
        Some(true) => Ok(()),
        Some(false) => Err(Unanswered::Wrong(anyhow!(
            "the webhook denied the benchmark's Replika: {}",
            answer["response"]["status"]["message"]
        ))),
        None => Err(Unanswered::Wrong(anyhow!(
            "the webhook's answer is not an AdmissionReview: {text}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(validate: [u64; 3]) -> String {
        let mut text = String::new();
        for (le, count) in ["0.005", "0.025", "+Inf"].iter().zip(validate) {
            text.push_str(&format!(
                "{DURATION_METRIC}_bucket{{name=\"validate.replika.prosimcorp.com\",operation=\"CREATE\",rejected=\"false\",type=\"validating\",le=\"{le}\"}} {count}\n"
            ));
        }
        text
    }

    #[test]
    fn shares_come_from_the_difference_of_two_scrapes() {
        let shares = shares(&scrape([5, 5, 5]), &scrape([105, 105, 105]));
        let validating = &shares[1];
        assert_eq!(validating.kind, "validating");
        assert_eq!(validating.calls, 100);
        assert_eq!(validating.p50_ms, Some(2.5));
        let p99 = validating.p99_ms.expect("called");
        assert!((p99 - 4.95).abs() <= 0.051, "{p99}");
        // The mutating webhook was never called.
        assert_eq!((shares[0].calls, shares[0].p99_ms), (0, None));
    }
}
