//! What every test of this binary starts from: the one-test-at-a-time lock,
//! operator processes with their operations port, and the one way Replikas
//! and sources are written.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use replika::api::Replika;
use serde_json::{Value, json};

use crate::support::{
    LEADER_LEASE, OperatorWithPort, admission, installed, leader_election_args,
    start_operator_with_port,
};

/// One test at a time: see the crate documentation.
static ONE_TEST_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a fan-out to the fleet, or its prune, may take on a busy 2-core machine.
pub const FLEET_DEADLINE: Duration = Duration::from_secs(120);
/// How long a leader that stopped renewing keeps the Lease in these tests.
pub const LEASE: Duration = Duration::from_secs(4);
/// Marks the Replikas of this test binary, so a test can remove what an earlier one left.
const TEST_LABEL: &str = "replika.test/reliability";

/// Holds the one-test-at-a-time lock, once the admission webhooks run and no
/// Replika of an earlier test (a failed one, say) is left for the operators
/// started now to reconcile, nor the Lease. No operator reconciles between
/// tests, so the finalizers can go with the Replikas.
pub async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    let guard = ONE_TEST_AT_A_TIME.lock().await;
    // Replikas are admitted, and their authors signed, as in a real cluster.
    admission();
    let admin = installed().plane.admin_client().await;
    let left = Api::<Replika>::all(admin.clone())
        .list(&ListParams::default().labels(TEST_LABEL))
        .await
        .expect("listing Replikas");
    for replika in left {
        let api =
            Api::<Replika>::namespaced(admin.clone(), &replika.namespace().unwrap_or_default());
        let unfinalized = json!({"metadata": {"finalizers": null}});
        let _ = api
            .patch(
                &replika.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&unfinalized),
            )
            .await;
        let _ = api
            .delete(&replika.name_any(), &DeleteParams::default())
            .await;
    }
    // Nor a Lease a killed leader of an earlier test still holds.
    let _ = Api::<Lease>::namespaced(admin, "replika")
        .delete(LEADER_LEASE, &DeleteParams::default())
        .await;
    guard
}

// ---- Operators ---------------------------------------------------------------

/// Starts `replika run <args>` as the operator's ServiceAccount, serving
/// `/metrics` and `/readyz` on a port of its own.
pub fn start(name: &str, args: &[&str]) -> OperatorWithPort {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    start_operator_with_port(&installed().operator_kubeconfig, name, &args)
}

/// Starts an operator called `name` that campaigns for the Lease as
/// `identity` with a lease of `lease`, with `extra` arguments.
pub fn start_leader_elected(
    name: &str,
    identity: &str,
    lease: Duration,
    extra: &[&str],
) -> OperatorWithPort {
    let mut args = leader_election_args(identity, lease);
    args.extend(extra.iter().map(|arg| arg.to_string()));
    start_operator_with_port(&installed().operator_kubeconfig, name, &args)
}

// ---- Replikas and sources ----------------------------------------------------

/// Creates or changes the Replika `namespace/name` as admin, by server-side
/// apply of `spec`. The one place this binary writes Replikas.
pub async fn apply_replika(
    client: &Client,
    namespace: &str,
    name: &str,
    spec: Value,
) -> Result<Replika, kube::Error> {
    let replika = json!({
        "apiVersion": "replika.prosimcorp.com/v1beta1",
        "kind": "Replika",
        "metadata": {"name": name, "namespace": namespace, "labels": {TEST_LABEL: "true"}},
        "spec": spec,
    });
    Api::<Replika>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply("reliability-test").force(),
            &Patch::Apply(&replika),
        )
        .await
}

/// Creates or changes the Replika `source_ns/name` that copies the ConfigMap
/// `source_ns/name` into `targets` (the body of `spec.target.namespaces`),
/// with a resync of `resync`; returns its UID.
pub async fn replicate_configmap(
    client: &Client,
    source_ns: &str,
    name: &str,
    resync: &str,
    targets: Value,
) -> String {
    let spec = spec("ConfigMap", source_ns, name, resync, targets);
    apply_replika(client, source_ns, name, spec)
        .await
        .expect("the Replika is applied")
        .uid()
        .expect("a UID")
}

/// A spec copying the `kind` object `source_ns/source` into `targets` (the
/// body of `spec.target.namespaces`), with a resync of `resync`.
pub fn spec(kind: &str, source_ns: &str, source: &str, resync: &str, targets: Value) -> Value {
    json!({
        "synchronization": {"time": resync},
        "source": {"group": "", "version": "v1", "kind": kind, "name": source, "namespace": source_ns},
        "target": {"namespaces": targets},
    })
}

/// `spec.target.namespaces` for the namespaces matching `replicate_in`, less `exclude_from`.
pub fn namespaces(replicate_in: &[&str], exclude_from: &[&str]) -> Value {
    json!({"matchAll": false, "replicateIn": replicate_in, "excludeFrom": exclude_from})
}

/// `pairs` as the data of a ConfigMap.
pub fn string_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// Replaces the data of the ConfigMap `namespace/name` with `data`.
pub async fn set_data(
    client: &Client,
    namespace: &str,
    name: &str,
    data: &BTreeMap<String, String>,
) {
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let mut configmap = configmaps.get(name).await.expect("reading a ConfigMap");
    configmap.data = Some(data.clone());
    configmaps
        .replace(name, &PostParams::default(), &configmap)
        .await
        .expect("replacing a ConfigMap");
}
