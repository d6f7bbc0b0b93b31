//! The operator's operations port (`/metrics`, `/readyz`, `/healthz`) and its
//! leader election, as the tests that run several operator processes read them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;

use super::{OperatorProcess, free_port, http_get, start_operator};

/// The leader-election Lease, in the `replika` namespace: the deploy RBAC
/// allows only this name.
pub const LEADER_LEASE: &str = "replika-leader";

/// The operations `replika_copy_writes_total` counts, by its `operation` label.
pub const COPY_WRITE_OPERATIONS: [&str; 4] = ["create", "update", "replace", "delete"];

/// An operator process serving `/metrics`, `/readyz` and `/healthz` on a port
/// of its own.
pub struct OperatorWithPort {
    pub port: u16,
    pub process: OperatorProcess,
}

/// Starts `replika run <args> --metrics-bind=127.0.0.1:<a free port>` as
/// `kubeconfig`'s identity (see [`start_operator`]).
pub fn start_operator_with_port(
    kubeconfig: &Path,
    name: &str,
    args: &[String],
) -> OperatorWithPort {
    let port = free_port();
    let mut all = args.to_vec();
    all.push(format!("--metrics-bind=127.0.0.1:{port}"));
    OperatorWithPort {
        port,
        process: start_operator(kubeconfig, name, &all),
    }
}

/// `replika run` arguments for leader election as `identity`, with a Lease
/// of `lease` in the `replika` namespace.
pub fn leader_election_args(identity: &str, lease: Duration) -> Vec<String> {
    vec![
        "--leader-election".to_string(),
        "--lease-namespace=replika".to_string(),
        format!("--lease-duration={}s", lease.as_secs()),
        format!("--identity={identity}"),
    ]
}

/// Who holds the leader-election Lease `lease` of the `replika` namespace, if anyone.
pub async fn lease_holder(client: &Client, lease: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "replika")
        .get_opt(lease)
        .await
        .expect("reading the Lease")?
        .spec?
        .holder_identity
        .filter(|holder| !holder.is_empty())
}

/// `Ok` once `identity`, whose operations port is `port`, holds
/// [`LEADER_LEASE`] and runs its engine (`replika_leader` is 1); otherwise
/// what was seen instead.
pub async fn leadership(client: &Client, identity: &str, port: u16) -> Result<(), String> {
    let holder = lease_holder(client, LEADER_LEASE).await;
    // The operations endpoint listens before the process campaigns.
    let leading = try_metric(port, "replika_leader").await;
    if holder.as_deref() == Some(identity) && leading == Some(1.0) {
        Ok(())
    } else {
        Err(format!(
            "Lease held by {holder:?}, replika_leader={leading:?}"
        ))
    }
}

/// The value of `series` (with its labels, as exported) on the `/metrics` of
/// the operator at `port`: 0 when the series is not exported yet, `None` when
/// the endpoint does not answer (yet).
pub async fn try_metric(port: u16, series: &str) -> Option<f64> {
    let (status, body) = http_get(port, "/metrics").await?;
    assert_eq!(status, 200, "GET /metrics: {body}");
    Some(
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |value| {
                value.trim().parse().expect("a numeric sample value")
            }),
    )
}

/// The value of `series` on the `/metrics` of the operator at `port` (0 when
/// not exported yet); the endpoint must answer.
pub async fn metric(port: u16, series: &str) -> f64 {
    try_metric(port, series)
        .await
        .expect("the operations endpoint answers")
}

/// The copies the operator at `port` wrote so far, by operation.
pub async fn copy_writes(port: u16) -> BTreeMap<&'static str, f64> {
    let mut writes = BTreeMap::new();
    for operation in COPY_WRITE_OPERATIONS {
        let series = format!("replika_copy_writes_total{{operation=\"{operation}\"}}");
        writes.insert(operation, metric(port, &series).await);
    }
    writes
}

/// The status code of `GET path` on `port`, or `None` when nothing answers.
pub async fn status_of(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).await.map(|(status, _)| status)
}
