//! Issue 7 against the real control plane: the operator killed in the middle of
//! a 500-namespace fan-out, of a prune and of a cleanup; kube-apiserver and
//! etcd stopped under it; a leader killed, stopped or paused under load; races
//! with users and between Replikas; hostile specs that no webhook checked and
//! oversized sources; and a soak of continuous churn (`REPLIKA_SOAK_SECONDS`,
//! 60 by default).
//!
//! Each test runs its own operator processes under the `deploy/` RBAC, next to
//! the webhook-only operator of [`admission`] that signs Replikas' authors. One
//! test runs at a time: their operators would all reconcile every Replika, and
//! one of them stops the API server of the plane the others use.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use replika::api::{ANNOTATION_OWNER_UID, Replika};
use serde_json::{Value, json};
use support::*;
use testenv::{Component, TestNamespace};

/// One test at a time: see the module documentation.
static ONE_TEST_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How many namespaces the fan-out scenarios copy into.
const FLEET_SIZE: usize = 500;
/// How long a fan-out to the fleet, or its prune, may take on a busy 2-core machine.
const FLEET_DEADLINE: Duration = Duration::from_secs(120);
/// How long a leader that stopped renewing keeps the Lease in these tests.
const LEASE: Duration = Duration::from_secs(4);
/// The name of the Lease: the deploy RBAC allows only this one.
const LEASE_NAME: &str = "replika-leader";
/// How often a converging state is looked at again.
const POLL: Duration = Duration::from_millis(300);
/// Marks the Replikas of this test binary, so a test can remove what an earlier one left.
const TEST_LABEL: &str = "replika.test/reliability";

// ---- The fleet of namespaces -------------------------------------------------

/// The namespaces `<prefix>-000` to `<prefix>-499`, made once per test binary.
struct Fleet {
    prefix: String,
    names: Vec<String>,
}

impl Fleet {
    /// The glob of the fleet's namespaces whose name ends with `suffix` (all of them for "").
    fn glob(&self, suffix: &str) -> String {
        format!("{}-*{suffix}", self.prefix)
    }

    /// The fleet's namespaces whose name ends with `suffix`.
    fn ending_with(&self, suffix: &str) -> BTreeSet<String> {
        self.names
            .iter()
            .filter(|name| name.ends_with(suffix))
            .cloned()
            .collect()
    }
}

/// Replicates the ConfigMap `source_ns/name` into the fleet, but for the
/// namespaces ending in 7; returns the targets and the Replika's UID.
async fn replicate_to_fleet(
    admin: &Client,
    fleet: &Fleet,
    source_ns: &str,
    name: &str,
) -> (BTreeSet<String>, String) {
    let (all, excluded) = (fleet.glob(""), fleet.glob("7"));
    let targets: BTreeSet<String> = fleet
        .names
        .iter()
        .filter(|ns| !ns.ends_with('7'))
        .cloned()
        .collect();
    let spec = spec(
        "ConfigMap",
        source_ns,
        name,
        "30s",
        namespaces(&[&all], &[&excluded]),
    );
    let replika = apply_replika(admin, source_ns, name, spec)
        .await
        .expect("the Replika is created");
    (targets, replika.uid().expect("a UID"))
}

static FLEET: tokio::sync::OnceCell<Fleet> = tokio::sync::OnceCell::const_new();

/// The fleet, created on first use, 16 namespaces at a time.
async fn fleet(client: &Client) -> &'static Fleet {
    FLEET
        .get_or_init(|| async {
            let prefix = format!("fleet{}", std::process::id());
            let names: Vec<String> = (0..FLEET_SIZE)
                .map(|i| format!("{prefix}-{i:03}"))
                .collect();
            let started = Instant::now();
            let namespaces = Api::<Namespace>::all(client.clone());
            stream::iter(&names)
                .for_each_concurrent(16, |name| {
                    let namespaces = namespaces.clone();
                    async move {
                        let namespace: Namespace =
                            serde_json::from_value(json!({"metadata": {"name": name}}))
                                .expect("a Namespace");
                        match namespaces.create(&PostParams::default(), &namespace).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
                            Err(error) => panic!("creating namespace {name}: {error}"),
                        }
                    }
                })
                .await;
            println!("created {FLEET_SIZE} namespaces in {:?}", started.elapsed());
            Fleet { prefix, names }
        })
        .await
}

// ---- Replikas ----------------------------------------------------------------

/// Creates or changes the Replika `namespace/name` as admin, by server-side
/// apply of `spec`. The one place this file writes Replikas.
async fn apply_replika(
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

/// A spec copying the `kind` object `source_ns/source` into `targets` (the
/// body of `spec.target.namespaces`), with a resync of `resync`.
fn spec(kind: &str, source_ns: &str, source: &str, resync: &str, targets: Value) -> Value {
    json!({
        "synchronization": {"time": resync},
        "source": {"group": "", "version": "v1", "kind": kind, "name": source, "namespace": source_ns},
        "target": {"namespaces": targets},
    })
}

/// `spec.target.namespaces` for the namespaces matching `replicate_in`, less `exclude_from`.
fn namespaces(replicate_in: &[&str], exclude_from: &[&str]) -> Value {
    json!({"matchAll": false, "replicateIn": replicate_in, "excludeFrom": exclude_from})
}

/// Holds the one-test-at-a-time lock, once the admission webhooks run and no
/// Replika of an earlier test (a failed one, say) is left for the operators
/// started now to reconcile, nor the Lease. No operator reconciles between
/// tests, so the finalizers can go with the Replikas.
async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
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
        .delete(LEASE_NAME, &DeleteParams::default())
        .await;
    guard
}

// ---- Operators ---------------------------------------------------------------

/// An operator process with its operations port.
struct Operator {
    port: u16,
    process: OperatorProcess,
}

/// Starts `replika run <args>` as the operator's ServiceAccount, serving
/// `/metrics` and `/readyz` on a port of its own.
fn start(name: &str, args: &[&str]) -> Operator {
    let port = free_port();
    let mut all: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    all.push(format!("--metrics-bind=127.0.0.1:{port}"));
    Operator {
        port,
        process: start_operator(&installed().operator_kubeconfig, name, &all),
    }
}

/// Leader election arguments for the process called `identity`, with a Lease of `lease`.
fn leader_election(identity: &str, lease: Duration) -> [String; 4] {
    [
        "--leader-election".to_string(),
        "--lease-namespace=replika".to_string(),
        format!("--lease-duration={}s", lease.as_secs()),
        format!("--identity={identity}"),
    ]
}

/// The value of `series` on the operator's `/metrics` (0 when not exported
/// yet), or `None` when the endpoint does not answer (yet).
async fn try_metric(operator: &Operator, series: &str) -> Option<f64> {
    let (status, body) = http_get(operator.port, "/metrics").await?;
    assert_eq!(status, 200, "GET /metrics: {body}");
    Some(
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |value| value.trim().parse().expect("a numeric sample")),
    )
}

/// The value of `series` on the operator's `/metrics` (0 when not exported yet).
async fn metric(operator: &Operator, series: &str) -> f64 {
    try_metric(operator, series)
        .await
        .expect("the operations endpoint answers")
}

/// Copies the operator wrote by `operation` (`create`, `update`, `replace`, `delete`).
async fn copy_writes(operator: &Operator, operation: &str) -> f64 {
    let series = format!("replika_copy_writes_total{{operation=\"{operation}\"}}");
    metric(operator, &series).await
}

/// The status code of `GET path`, or `None` when nothing answers.
async fn status_of(operator: &Operator, path: &str) -> Option<u16> {
    http_get(operator.port, path)
        .await
        .map(|(status, _)| status)
}

/// Waits until `operator`, called `identity`, holds the Lease and runs its engine.
async fn wait_for_leadership(
    client: &Client,
    operator: &Operator,
    identity: &str,
    deadline: Duration,
) {
    converge(
        &format!("{identity} to lead"),
        deadline,
        &[operator],
        || async {
            let holder = lease_holder(client, LEASE_NAME).await;
            let leading = try_metric(operator, "replika_leader").await;
            if holder.as_deref() == Some(identity) && leading == Some(1.0) {
                Ok(())
            } else {
                Err(format!(
                    "Lease held by {holder:?}, replika_leader={leading:?}"
                ))
            }
        },
    )
    .await;
}

// ---- Waiting and checking ----------------------------------------------------

/// Polls `check` until it is `Ok`; past `deadline`, fails with its last
/// complaint and the end of the operators' logs.
async fn converge<T, F, Fut>(
    what: &str,
    deadline: Duration,
    operators: &[&Operator],
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        let complaint = match check().await {
            Ok(value) => return value,
            Err(complaint) => complaint,
        };
        if started.elapsed() >= deadline {
            let logs: Vec<String> = operators.iter().map(|o| o.process.log_tail()).collect();
            panic!(
                "timed out after {deadline:?} waiting for {what}; last seen: {complaint}\n\n{}",
                logs.join("\n\n")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The ConfigMaps called `name` in every namespace, by namespace.
async fn configmaps_named(client: &Client, name: &str) -> BTreeMap<String, ConfigMap> {
    Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await
        .expect("listing ConfigMaps")
        .into_iter()
        .map(|configmap| (configmap.namespace().unwrap_or_default(), configmap))
        .collect()
}

fn owner_uid<K: ResourceExt>(object: &K) -> Option<&str> {
    object
        .annotations()
        .get(ANNOTATION_OWNER_UID)
        .map(String::as_str)
}

fn string_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// What a user sees of the copies of `name`, compared with what should be.
struct Expected<'a> {
    /// The Replika whose copies these are.
    owner_uid: &'a str,
    /// Every namespace that must hold a copy.
    targets: &'a BTreeSet<String>,
    /// The data each copy must hold.
    data: &'a BTreeMap<String, String>,
    /// Objects of the same name that are not Replika's, by namespace: they must stay as they are.
    untouchable: &'a BTreeMap<String, ConfigMap>,
    /// Whether a copy may hold keys the source lacks, set by someone else and
    /// so theirs (SPEC §3: fields owned by others survive); never Replika's.
    their_keys: bool,
}

/// No object of the copies' name that is not Replika's.
static NOTHING_THEIRS: BTreeMap<String, ConfigMap> = BTreeMap::new();

impl<'a> Expected<'a> {
    /// Copies of the Replika `owner_uid` holding `data` in exactly `targets`,
    /// and no object of the name that is not Replika's.
    fn only(
        owner_uid: &'a str,
        targets: &'a BTreeSet<String>,
        data: &'a BTreeMap<String, String>,
    ) -> Self {
        Expected {
            owner_uid,
            targets,
            data,
            untouchable: &NOTHING_THEIRS,
            their_keys: false,
        }
    }

    /// Why the data of `copy` is not the source's.
    fn data_problem(&self, copy: &ConfigMap) -> Option<String> {
        let held = copy.data.clone().unwrap_or_default();
        if held == *self.data {
            return None;
        }
        let source_keys_match = self
            .data
            .iter()
            .all(|(key, value)| held.get(key) == Some(value));
        let extra: Vec<&String> = held
            .keys()
            .filter(|key| !self.data.contains_key(*key))
            .collect();
        let replikas_extra: Vec<&&String> = extra
            .iter()
            .filter(|key| data_key_managers(copy, key).contains(&"replika".to_string()))
            .collect();
        if self.their_keys && source_keys_match && replikas_extra.is_empty() {
            return None;
        }
        Some(format!(
            "holds {held:?} (keys the source lacks, with their field managers: {:?})",
            extra
                .iter()
                .map(|key| (key, data_key_managers(copy, key)))
                .collect::<Vec<_>>()
        ))
    }

    /// Why `found` (every ConfigMap of the name, by namespace) is not as expected.
    fn problems(&self, found: &BTreeMap<String, ConfigMap>) -> Result<(), String> {
        let mut problems = Vec::new();
        for target in self.targets {
            match found.get(target) {
                None => problems.push(format!("no copy in {target}")),
                Some(copy) if owner_uid(copy) != Some(self.owner_uid) => {
                    problems.push(format!("the object in {target} is not the Replika's"))
                }
                Some(copy) => {
                    if let Some(problem) = self.data_problem(copy) {
                        problems.push(format!("the copy in {target} {problem}"));
                    }
                }
            }
        }
        for (namespace, theirs) in self.untouchable {
            match found.get(namespace) {
                None => problems.push(format!(
                    "the object not Replika's in {namespace} was deleted"
                )),
                Some(now)
                    if serde_json::to_value(now).ok() != serde_json::to_value(theirs).ok() =>
                {
                    problems.push(format!(
                        "the object not Replika's in {namespace} was modified: {now:?}"
                    ))
                }
                Some(_) => {}
            }
        }
        for (namespace, object) in found {
            if owner_uid(object) == Some(self.owner_uid) && !self.targets.contains(namespace) {
                problems.push(format!("a copy is left in {namespace}, not a target"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            let total = problems.len();
            problems.truncate(5);
            Err(format!(
                "{total} problem(s), first: {}",
                problems.join("; ")
            ))
        }
    }
}

/// The field managers that hold `data.<key>` of `object`.
fn data_key_managers(object: &ConfigMap, key: &str) -> Vec<String> {
    object
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| {
            entry
                .fields_v1
                .as_ref()
                .is_some_and(|fields| fields.0["f:data"].get(format!("f:{key}")).is_some())
        })
        .map(|entry| entry.manager.clone().unwrap_or_default())
        .collect()
}

/// Waits until the copies of the ConfigMap `name` are exactly as `expected`.
async fn converge_copies(
    client: &Client,
    name: &str,
    expected: &Expected<'_>,
    deadline: Duration,
    operators: &[&Operator],
) {
    let what = format!(
        "the copies of {name} in {} namespaces",
        expected.targets.len()
    );
    converge(&what, deadline, operators, || async {
        expected.problems(&configmaps_named(client, name).await)
    })
    .await;
}

/// The Replika's target counts as (desired, synced, conflicts, failed).
type Counts = (u32, u32, u32, u32);

/// Waits until the Replika's `Ready` condition is `ready` with `reason`, and its
/// target counts are `counts`; returns it.
async fn converge_status(
    client: &Client,
    namespace: &str,
    name: &str,
    (ready, reason): (&str, &str),
    counts: Option<Counts>,
    operators: &[&Operator],
) -> Replika {
    let what =
        format!("Replika {namespace}/{name} to be Ready={ready} ({reason}) with counts {counts:?}");
    converge(&what, FLEET_DEADLINE, operators, || async {
        let replika = Api::<Replika>::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .map_err(|error| error.to_string())?;
        let status = replika.status.clone().unwrap_or_default();
        let condition = ready_condition(&replika);
        let got_counts = status
            .targets
            .as_ref()
            .map(|t| (t.desired, t.synced, t.conflicts, t.failed));
        let matches = condition
            .as_ref()
            .is_some_and(|c| c.status == ready && c.reason == reason)
            && counts.is_none_or(|counts| got_counts == Some(counts));
        if matches {
            Ok(replika)
        } else {
            Err(serde_json::to_string(&status).unwrap_or_default())
        }
    })
    .await
}

fn ready_condition(replika: &Replika) -> Option<Condition> {
    replika
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .cloned()
}

/// Follows the ConfigMaps called `name` by watch, and returns how many are
/// owned by `owner` as soon as `reached` holds for that number: the moment is
/// caught within milliseconds, where polling would miss it.
async fn when_owned(
    client: &Client,
    name: &str,
    owner: &str,
    reached: impl Fn(usize) -> bool,
) -> usize {
    let api = Api::<PartialObjectMeta<ConfigMap>>::all(client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher::watcher(api, config).default_backoff();
    let follow = async {
        futures::pin_mut!(events);
        let (mut owned, mut listing) = (BTreeSet::new(), BTreeSet::new());
        // Counts mean something once the first list is complete.
        let mut listed = false;
        while let Some(event) = events.next().await {
            let Ok(event) = event else { continue };
            match event {
                Event::Init => listing.clear(),
                Event::InitApply(object) => {
                    if owner_uid(&object) == Some(owner) {
                        listing.insert(object.namespace().unwrap_or_default());
                    }
                }
                Event::InitDone => {
                    owned = std::mem::take(&mut listing);
                    listed = true;
                }
                Event::Apply(object) if owner_uid(&object) == Some(owner) => {
                    owned.insert(object.namespace().unwrap_or_default());
                }
                Event::Apply(object) | Event::Delete(object) => {
                    owned.remove(&object.namespace().unwrap_or_default());
                }
            }
            if listed && reached(owned.len()) {
                return owned.len();
            }
        }
        unreachable!("a watcher's stream does not end")
    };
    tokio::time::timeout(FLEET_DEADLINE, follow)
        .await
        .unwrap_or_else(|_| {
            panic!("timed out after {FLEET_DEADLINE:?} following the copies of {name}")
        })
}

/// How many ConfigMaps called `name` are owned by `owner` now.
async fn owned_now(client: &Client, name: &str, owner: &str) -> usize {
    configmaps_named(client, name)
        .await
        .values()
        .filter(|configmap| owner_uid(*configmap) == Some(owner))
        .count()
}

async fn set_data(client: &Client, namespace: &str, name: &str, data: &BTreeMap<String, String>) {
    let mut configmap = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .expect("reading a ConfigMap");
    configmap.data = Some(data.clone());
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .replace(name, &PostParams::default(), &configmap)
        .await
        .expect("replacing a ConfigMap");
}

/// A namespace labelled `key=value`, named by the API server after `prefix`.
async fn labelled_namespace(client: &Client, prefix: &str, key: &str, value: &str) -> String {
    let name = TestNamespace::new(client, prefix).await.name;
    let patch = json!({"metadata": {"labels": {key: value}}});
    Api::<Namespace>::all(client.clone())
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("labelling a namespace");
    name
}

// ---- 1. Crash safety ---------------------------------------------------------

#[tokio::test]
async fn a_killed_operator_finishes_the_fan_out_prune_or_cleanup_it_was_in() {
    let _alone = alone().await;
    let admin = installed().plane.admin_client().await;
    let fleet = fleet(&admin).await;
    let source_ns = namespace(&admin, "crash-src").await;
    let name = "crash-copy";
    let payload = "x".repeat(2048);
    let data = string_map(&[("key", "v1"), ("payload", &payload)]);
    create_configmap(
        &admin,
        &source_ns,
        name,
        &[("key", "v1"), ("payload", &payload)],
    )
    .await;

    // Objects with the copies' name that are not Replika's: two in excluded
    // namespaces, one in a target namespace (a conflict while it is a target).
    let conflicted = fleet.names[3].clone();
    let mut untouchable = BTreeMap::new();
    for namespace in [&fleet.names[7], &fleet.names[17], &conflicted] {
        let theirs = create_configmap(&admin, namespace, name, &[("owner", "someone-else")]).await;
        untouchable.insert(namespace.clone(), theirs);
    }
    let excluded = fleet.ending_with("7");
    let targets: BTreeSet<String> = fleet
        .names
        .iter()
        .filter(|ns| !excluded.contains(*ns))
        .cloned()
        .collect();
    let copies: BTreeSet<String> = targets
        .iter()
        .filter(|ns| **ns != conflicted)
        .cloned()
        .collect();

    // Fan-out: killed once a third of the copies exist.
    let mut first = start("crash-fan-out", &["--max-parallel-writes=8"]);
    let all = fleet.glob("");
    let excluded_glob = fleet.glob("7");
    let fan_out = namespaces(&[&all], &[&excluded_glob]);
    let replika = apply_replika(
        &admin,
        &source_ns,
        name,
        spec("ConfigMap", &source_ns, name, "30s", fan_out),
    )
    .await
    .expect("the Replika is created");
    let uid = replika.uid().expect("a UID");
    when_owned(&admin, name, &uid, |owned| owned >= copies.len() / 3).await;
    first.process.signal("KILL");
    first.process.wait_for_exit(DEADLINE).await;
    let at_kill = owned_now(&admin, name, &uid).await;
    println!(
        "fan-out: killed with {at_kill} of {} copies made",
        copies.len()
    );
    assert!(
        at_kill < copies.len(),
        "the fan-out was over before the kill, so nothing was tested"
    );

    let mut second = start("crash-resumed", &["--max-parallel-writes=8"]);
    let expected = Expected {
        owner_uid: &uid,
        targets: &copies,
        data: &data,
        untouchable: &untouchable,
        their_keys: false,
    };
    converge_copies(&admin, name, &expected, FLEET_DEADLINE, &[&second]).await;
    let desired = targets.len() as u32;
    let replika = converge_status(
        &admin,
        &source_ns,
        name,
        ("False", "Conflict"),
        Some((desired, desired - 1, 1, 0)),
        &[&second],
    )
    .await;
    let failures = replika.status.expect("a status").failures;
    assert_eq!(
        failures
            .iter()
            .map(|f| (f.namespace.as_str(), f.reason.as_str()))
            .collect::<Vec<_>>(),
        [(conflicted.as_str(), "Conflict")]
    );

    // Prune: the targets shrink to a tenth, killed once a third of the stale copies are gone.
    let remaining = fleet.ending_with("0");
    let kept_glob = fleet.glob("0");
    let shrunk = namespaces(&[&kept_glob], &[&excluded_glob]);
    apply_replika(
        &admin,
        &source_ns,
        name,
        spec("ConfigMap", &source_ns, name, "30s", shrunk),
    )
    .await
    .expect("the Replika is changed");
    let stale = copies.len() - remaining.len();
    when_owned(&admin, name, &uid, |owned| {
        owned <= copies.len() - stale / 3
    })
    .await;
    second.process.signal("KILL");
    second.process.wait_for_exit(DEADLINE).await;
    let at_kill = owned_now(&admin, name, &uid).await;
    println!(
        "prune: killed with {at_kill} copies left of {}, {} to keep",
        copies.len(),
        remaining.len()
    );
    assert!(
        remaining.len() < at_kill && at_kill < copies.len(),
        "the kill was not in the middle of the prune, so nothing was tested"
    );

    let mut third = start("crash-pruned", &["--max-parallel-writes=8"]);
    let pruned = Expected {
        targets: &remaining,
        ..expected
    };
    converge_copies(&admin, name, &pruned, FLEET_DEADLINE, &[&third]).await;
    let desired = remaining.len() as u32;
    converge_status(
        &admin,
        &source_ns,
        name,
        ("True", "AllTargetsSynced"),
        Some((desired, desired, 0, 0)),
        &[&third],
    )
    .await;

    // Cleanup: the targets widen again, then the Replika is deleted, and the
    // operator is killed once a third of the copies are gone.
    let widened = namespaces(&[&all], &[&excluded_glob]);
    apply_replika(
        &admin,
        &source_ns,
        name,
        spec("ConfigMap", &source_ns, name, "30s", widened),
    )
    .await
    .expect("the Replika is changed");
    converge_copies(&admin, name, &expected, FLEET_DEADLINE, &[&third]).await;
    Api::<Replika>::namespaced(admin.clone(), &source_ns)
        .delete(name, &DeleteParams::default())
        .await
        .expect("deleting the Replika");
    when_owned(&admin, name, &uid, |owned| owned <= copies.len() * 2 / 3).await;
    third.process.signal("KILL");
    third.process.wait_for_exit(DEADLINE).await;
    let at_kill = owned_now(&admin, name, &uid).await;
    println!(
        "cleanup: killed with {at_kill} copies left of {}",
        copies.len()
    );
    assert!(
        0 < at_kill && at_kill < copies.len(),
        "the kill was not in the middle of the cleanup, so nothing was tested"
    );

    let fourth = start("crash-cleaned", &[]);
    let none = BTreeSet::new();
    let cleaned = Expected {
        targets: &none,
        ..expected
    };
    converge_copies(&admin, name, &cleaned, FLEET_DEADLINE, &[&fourth]).await;
    let replikas = Api::<Replika>::namespaced(admin.clone(), &source_ns);
    converge("the Replika to be gone", DEADLINE, &[&fourth], || async {
        match replikas.get_opt(name).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

// ---- 2. API server and etcd outages ------------------------------------------

/// What `/readyz` and `/healthz` answered while a component was down.
#[derive(Debug, Default)]
struct Outage {
    readyz: BTreeMap<String, usize>,
    healthz_failures: usize,
}

impl Outage {
    fn saw_unready(&self) -> bool {
        self.readyz.keys().any(|status| status != "200")
    }
}

/// Keeps `component` down for `duration`, asking the operator's `/readyz` and `/healthz` meanwhile.
async fn outage(component: Component, duration: Duration, operator: &Operator) -> Outage {
    let plane = installed().plane;
    plane
        .stop_component(component)
        .expect("stopping a component");
    let mut seen = Outage::default();
    let until = Instant::now() + duration;
    while Instant::now() < until {
        let readyz = status_of(operator, "/readyz")
            .await
            .map_or("none".to_string(), |s| s.to_string());
        *seen.readyz.entry(readyz).or_default() += 1;
        if status_of(operator, "/healthz").await != Some(200) {
            seen.healthz_failures += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    plane
        .start_component(component)
        .await
        .expect("starting a component again");
    println!(
        "{component:?} down for {duration:?}, back in {:?}: {seen:?}",
        started.elapsed()
    );
    seen
}

#[tokio::test]
async fn watches_recover_from_api_server_and_etcd_outages() {
    let _alone = alone().await;
    let plane = installed().plane;
    if !plane.controls_processes() {
        println!("skipped: the plane from REPLIKA_TEST_KUBECONFIG cannot be stopped and started");
        return;
    }
    let admin = plane.admin_client().await;
    let label = ("replika.test/outage", format!("o{}", std::process::id()));
    let selected = json!({"matchAll": false, "selector": {"matchLabels": {label.0: label.1}}});
    let mut targets = BTreeSet::new();
    for _ in 0..10 {
        targets.insert(labelled_namespace(&admin, "outage", label.0, &label.1).await);
    }
    let source_ns = namespace(&admin, "outage-src").await;
    let name = "outage-copy";
    create_configmap(&admin, &source_ns, name, &[("version", "1")]).await;
    let operator = start("outage", &[]);
    converge("/readyz to answer 200", DEADLINE, &[&operator], || async {
        match status_of(&operator, "/readyz").await {
            Some(200) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // A resync of an hour: whatever converges after an outage was brought by a watch.
    let replika = apply_replika(
        &admin,
        &source_ns,
        name,
        spec("ConfigMap", &source_ns, name, "1h", selected),
    )
    .await
    .expect("the Replika is created");
    let uid = replika.uid().expect("a UID");
    let mut data = string_map(&[("version", "1")]);
    converge_copies(
        &admin,
        name,
        &Expected::only(&uid, &targets, &data),
        DEADLINE,
        &[&operator],
    )
    .await;

    let mut outages = Vec::new();
    for (round, (component, duration)) in [
        (Component::ApiServer, Duration::from_secs(5)),
        (Component::Etcd, Duration::from_secs(8)),
    ]
    .into_iter()
    .enumerate()
    {
        // The source changes just before the outage: replication is under way when it starts.
        data = string_map(&[("version", &format!("{round}-before"))]);
        set_data(&admin, &source_ns, name, &data).await;
        outages.push((component, outage(component, duration, &operator).await));

        // After it, every kind of watch must bring news again: a new target
        // namespace, a source change, a copy deleted by hand.
        targets.insert(labelled_namespace(&admin, "outage", label.0, &label.1).await);
        data = string_map(&[("version", &format!("{round}-after"))]);
        set_data(&admin, &source_ns, name, &data).await;
        let victim = targets.first().expect("a target").clone();
        converge_copies(
            &admin,
            name,
            &Expected::only(&uid, &targets, &data),
            DEADLINE,
            &[&operator],
        )
        .await;
        Api::<ConfigMap>::namespaced(admin.clone(), &victim)
            .delete(name, &DeleteParams::default())
            .await
            .expect("deleting a copy");
        converge_copies(
            &admin,
            name,
            &Expected::only(&uid, &targets, &data),
            DEADLINE,
            &[&operator],
        )
        .await;
        let desired = targets.len() as u32;
        converge_status(
            &admin,
            &source_ns,
            name,
            ("True", "AllTargetsSynced"),
            Some((desired, desired, 0, 0)),
            &[&operator],
        )
        .await;
    }

    for (component, seen) in &outages {
        assert_eq!(
            seen.healthz_failures, 0,
            "/healthz failed during the {component:?} outage: {seen:?}"
        );
    }
    // Ready again once the API server is (its own /readyz may trail etcd's return).
    converge(
        "/readyz to answer 200 after the outages",
        DEADLINE,
        &[&operator],
        || async {
            match status_of(&operator, "/readyz").await {
                Some(200) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // Issue 7: `/readyz` reflects the outage.
    let unnoticed: Vec<_> = outages
        .iter()
        .filter(|(_, seen)| !seen.saw_unready())
        .collect();
    assert!(
        unnoticed.is_empty(),
        "/readyz answered 200 throughout these outages: {unnoticed:?}\n{}",
        operator.process.log_tail()
    );
}

// ---- 3. Leader failover under load -------------------------------------------

#[tokio::test]
async fn a_follower_finishes_the_fan_out_of_a_killed_leader() {
    // SIGKILL leaves the Lease held: the follower waits for it to expire.
    failover_mid_fan_out("KILL", "killed", LEASE, LEASE * 3 + DEADLINE).await;
}

#[tokio::test]
async fn a_leader_stopped_with_sigterm_hands_its_fan_out_over_at_once() {
    // SIGTERM: the leader finishes the pass in flight, releases the Lease and
    // exits cleanly; the follower takes over without waiting for the Lease
    // (of 30 s here) to expire.
    failover_mid_fan_out(
        "TERM",
        "stopped",
        Duration::from_secs(30),
        Duration::from_secs(3),
    )
    .await;
}

/// Two leader-elected operators with a Lease of `lease`; the leader gets
/// `signal` once a third of a fan-out to the fleet is made, and the follower,
/// leading within `handover` of the leader's exit, makes what is missing, and
/// rewrites nothing.
async fn failover_mid_fan_out(signal: &str, how: &str, lease: Duration, handover: Duration) {
    let _alone = alone().await;
    let admin = installed().plane.admin_client().await;
    let fleet = fleet(&admin).await;
    let source_ns = namespace(&admin, &format!("{how}-src")).await;
    let name = format!("{how}-copy");
    let name = name.as_str();
    let data = string_map(&[("key", "value")]);
    create_configmap(&admin, &source_ns, name, &[("key", "value")]).await;

    let (a, b) = (format!("replika-{how}-a"), format!("replika-{how}-b"));
    let with_slow_writes = |identity: &str| {
        let mut args = leader_election(identity, lease).to_vec();
        args.push("--max-parallel-writes=8".to_string());
        args
    };
    let args = with_slow_writes(&a);
    let mut leader = start(&a, &args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for_leadership(&admin, &leader, &a, DEADLINE).await;
    let args = with_slow_writes(&b);
    let follower = start(&b, &args.iter().map(String::as_str).collect::<Vec<_>>());
    converge(
        "the follower to be ready",
        DEADLINE,
        &[&follower],
        || async {
            match status_of(&follower, "/readyz").await {
                Some(200) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    let (targets, uid) = replicate_to_fleet(&admin, fleet, &source_ns, name).await;
    when_owned(&admin, name, &uid, |owned| owned >= targets.len() / 3).await;
    let follower_writes_before = all_copy_writes(&follower).await;
    leader.process.signal(signal);
    let exit = leader.process.wait_for_exit(DEADLINE).await;
    let exited = Instant::now();
    let at_exit = owned_now(&admin, name, &uid).await;
    println!(
        "{how}: the leader exited ({exit:?}) with {at_exit} of {} copies made",
        targets.len()
    );
    assert!(
        follower_writes_before.values().all(|writes| *writes == 0.0),
        "the follower wrote while the leader led: {follower_writes_before:?}"
    );
    if signal == "TERM" {
        // Graceful: the pass in flight, the whole fan-out, is finished first.
        assert_eq!(
            exit,
            Some(0),
            "a clean exit on SIGTERM\n{}",
            leader.process.log_tail()
        );
        assert_eq!(
            at_exit,
            targets.len(),
            "copies made when the leader exited on SIGTERM"
        );
    } else {
        assert!(
            at_exit < targets.len(),
            "the fan-out was over before the kill, so nothing was tested"
        );
    }

    wait_for_leadership(&admin, &follower, &b, handover).await;
    println!(
        "{how}: the follower leads {:?} after the leader exited",
        exited.elapsed()
    );
    let expected = Expected::only(&uid, &targets, &data);
    converge_copies(&admin, name, &expected, FLEET_DEADLINE, &[&follower]).await;
    let desired = targets.len() as u32;
    let synced = ("True", "AllTargetsSynced");
    converge_status(
        &admin,
        &source_ns,
        name,
        synced,
        Some((desired, desired, 0, 0)),
        &[&follower],
    )
    .await;
    // Its first pass is over once it counts every copy as in sync.
    converge(
        "the new leader to finish its pass",
        DEADLINE,
        &[&follower],
        || async {
            match try_metric(&follower, "replika_copies_managed").await {
                Some(managed) if managed == f64::from(desired) => Ok(()),
                other => Err(format!("replika_copies_managed={other:?}")),
            }
        },
    )
    .await;
    // The new leader made only copies that were missing, and rewrote none:
    // those it did not write itself it read, and found right.
    let written = all_copy_writes(&follower).await;
    println!("{how}: the new leader wrote {written:?}");
    assert!(
        written["create"] as usize <= targets.len() - at_exit,
        "the new leader created {} copies, {at_exit} of {} existed",
        written["create"],
        targets.len()
    );
    for operation in ["update", "replace", "delete"] {
        assert_eq!(
            written[operation], 0.0,
            "copies the new leader had to {operation}"
        );
    }
}

/// The copies an operator wrote so far, by operation.
async fn all_copy_writes(operator: &Operator) -> BTreeMap<&'static str, f64> {
    let mut writes = BTreeMap::new();
    for operation in ["create", "update", "replace", "delete"] {
        writes.insert(operation, copy_writes(operator, operation).await);
    }
    writes
}

/// Notes the `Ready` condition of every state the Replika `namespace/name` is
/// written in, as `status reason (synced/desired)` followed by the failures
/// it lists, if any, into `seen`.
async fn note_readiness(
    client: Client,
    namespace: String,
    name: &'static str,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let api = Api::<Replika>::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let states = watcher::watcher(api, config)
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(states);
    while let Some(Ok(replika)) = states.next().await {
        let ready = ready_condition(&replika).map(|c| format!("{} {}", c.status, c.reason));
        let counts = replika
            .status
            .as_ref()
            .and_then(|s| s.targets.as_ref())
            .map(|t| format!("{}/{}", t.synced, t.desired));
        let failures: Vec<String> = replika
            .status
            .iter()
            .flat_map(|s| &s.failures)
            .map(|f| format!("{}: {} {}", f.namespace, f.reason, f.message))
            .collect();
        let state = format!(
            "{} ({}){}",
            ready.unwrap_or_default(),
            counts.unwrap_or_default(),
            if failures.is_empty() {
                String::new()
            } else {
                format!(" [{}]", failures.join("; "))
            }
        );
        let mut seen = seen.lock().expect("not poisoned");
        if seen.last() != Some(&state) {
            seen.push(state);
        }
    }
}

/// The paused leader's `--max-parallel-writes`: how many of its writes can be
/// in flight when it is paused.
const PAUSED_IN_FLIGHT: usize = 8;

#[tokio::test]
async fn a_leader_paused_mid_fan_out_writes_nothing_once_a_follower_took_over() {
    let _alone = alone().await;
    let admin = installed().plane.admin_client().await;
    let fleet = fleet(&admin).await;
    let source_ns = namespace(&admin, "paused-src").await;
    let name = "paused-copy";
    let data = string_map(&[("key", "value")]);
    create_configmap(&admin, &source_ns, name, &[("key", "value")]).await;
    let (a, b) = ("replika-paused-a", "replika-paused-b");
    let mut args = leader_election(a, LEASE).to_vec();
    args.push(format!("--max-parallel-writes={PAUSED_IN_FLIGHT}"));
    let leader = start(
        "paused-a",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    wait_for_leadership(&admin, &leader, a, DEADLINE).await;
    let follower = start(
        "paused-b",
        &leader_election(b, LEASE).each_ref().map(String::as_str),
    );
    let (targets, uid) = replicate_to_fleet(&admin, fleet, &source_ns, name).await;

    // The leader stops in the middle of its fan-out (a long pause, or a
    // partition), and the follower takes over and finishes.
    when_owned(&admin, name, &uid, |owned| owned >= targets.len() / 3).await;
    leader.process.signal("STOP");
    let at_pause = owned_now(&admin, name, &uid).await;
    println!(
        "paused: the leader paused with {at_pause} of {} copies made",
        targets.len()
    );
    wait_for_leadership(&admin, &follower, b, LEASE * 3 + DEADLINE).await;
    converge_copies(
        &admin,
        name,
        &Expected::only(&uid, &targets, &data),
        FLEET_DEADLINE,
        &[&follower],
    )
    .await;
    let desired = targets.len() as u32;
    let synced = ("True", "AllTargetsSynced");
    converge_status(
        &admin,
        &source_ns,
        name,
        synced,
        Some((desired, desired, 0, 0)),
        &[&follower],
    )
    .await;

    // The old leader wakes up: it must find out it lost the Lease before it
    // writes anything, copies or status. Meanwhile every state of the
    // Replika's readiness is noted.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let noting = tokio::spawn(note_readiness(
        admin.clone(),
        source_ns.clone(),
        name,
        seen.clone(),
    ));
    leader.process.signal("CONT");
    converge(
        "the old leader to step down",
        DEADLINE,
        &[&leader],
        || async {
            match try_metric(&leader, "replika_leader").await {
                Some(0.0) => Ok(()),
                other => Err(format!("replika_leader={other:?}")),
            }
        },
    )
    .await;
    let written = all_copy_writes(&leader).await;
    converge_status(
        &admin,
        &source_ns,
        name,
        synced,
        Some((desired, desired, 0, 0)),
        &[&follower],
    )
    .await;
    noting.abort();
    let seen = seen.lock().expect("not poisoned").clone();
    assert_eq!(
        seen,
        [format!("True AllTargetsSynced ({desired}/{desired})")],
        "the Replika's readiness as written after the old leader woke up\nold leader: {}\nfollower: {}",
        leader.process.log_tail(),
        follower.process.log_tail()
    );
    // Creates sent before the pause may land after the count was taken.
    assert!(
        written["create"] as usize <= at_pause + PAUSED_IN_FLIGHT
            && written["update"] + written["replace"] + written["delete"] == 0.0,
        "the old leader wrote copies after it woke up: {written:?}, {at_pause} copies made when it paused"
    );
    assert_eq!(lease_holder(&admin, LEASE_NAME).await.as_deref(), Some(b));
    converge_copies(
        &admin,
        name,
        &Expected::only(&uid, &targets, &data),
        DEADLINE,
        &[&follower],
    )
    .await;
}

// ---- 4. Races ----------------------------------------------------------------

#[tokio::test]
async fn an_object_a_user_creates_while_the_copy_is_applied_stays_theirs() {
    let _alone = alone().await;
    let admin = installed().plane.admin_client().await;
    let fleet = fleet(&admin).await;
    let source_ns = namespace(&admin, "race-src").await;
    let name = "race-copy";
    let data = string_map(&[("from", "source")]);
    create_configmap(&admin, &source_ns, name, &[("from", "source")]).await;
    let operator = start("race-user", &["--max-parallel-writes=1"]);
    let targets = fleet.ending_with("2");
    let replika = apply_replika(
        &admin,
        &source_ns,
        name,
        spec(
            "ConfigMap",
            &source_ns,
            name,
            "30s",
            namespaces(&[&fleet.glob("2")], &[]),
        ),
    )
    .await
    .expect("the Replika is created");
    let uid = replika.uid().expect("a UID");

    // Once the first copy lands, a user creates the same object in every
    // target, one at a time from the last: the operator, one write at a time
    // from the first, meets them where both create one object at one moment.
    when_owned(&admin, name, &uid, |owned| owned >= 1).await;
    let mut attempts = Vec::new();
    for namespace in targets.iter().rev() {
        let theirs: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}, "data": {"from": "user"}}))
                .expect("a ConfigMap");
        let created = Api::<ConfigMap>::namespaced(admin.clone(), namespace)
            .create(&PostParams::default(), &theirs)
            .await;
        attempts.push((namespace.clone(), created));
    }
    let mut theirs = BTreeMap::new();
    for (namespace, created) in attempts {
        match created {
            Ok(object) => {
                theirs.insert(namespace, object);
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(error) => panic!("the user's create in {namespace} failed: {error}"),
        }
    }
    println!(
        "race: the user won {} of {} namespaces",
        theirs.len(),
        targets.len()
    );

    let copies: BTreeSet<String> = targets
        .iter()
        .filter(|ns| !theirs.contains_key(*ns))
        .cloned()
        .collect();
    let expected = Expected {
        owner_uid: &uid,
        targets: &copies,
        data: &data,
        untouchable: &theirs,
        their_keys: false,
    };
    converge_copies(&admin, name, &expected, DEADLINE, &[&operator]).await;
    let (desired, conflicts) = (targets.len() as u32, theirs.len() as u32);
    let ready = if theirs.is_empty() {
        ("True", "AllTargetsSynced")
    } else {
        ("False", "Conflict")
    };
    let replika = converge_status(
        &admin,
        &source_ns,
        name,
        ready,
        Some((desired, desired - conflicts, conflicts, 0)),
        &[&operator],
    )
    .await;
    let failures = replika.status.expect("a status").failures;
    assert_eq!(failures.len(), theirs.len().min(10), "{failures:?}");
    for failure in &failures {
        assert!(
            failure.reason == "Conflict" && theirs.contains_key(&failure.namespace),
            "{failure:?}"
        );
    }
    // Still theirs after a pass the source starts.
    let changed = string_map(&[("from", "source, changed")]);
    set_data(&admin, &source_ns, name, &changed).await;
    let expected = Expected {
        data: &changed,
        ..expected
    };
    converge_copies(&admin, name, &expected, DEADLINE, &[&operator]).await;
}

#[tokio::test]
async fn a_namespace_deleted_during_the_fan_out_does_not_hold_up_the_others() {
    let _alone = alone().await;
    let admin = installed().plane.admin_client().await;
    let fleet = fleet(&admin).await;
    let source_ns = namespace(&admin, "doomed-src").await;
    let name = "doomed-copy";
    let data = string_map(&[("k", "v")]);
    create_configmap(&admin, &source_ns, name, &[("k", "v")]).await;
    let doomed_prefix = format!("doomed{}", std::process::id());
    let mut doomed = Vec::new();
    for _ in 0..20 {
        doomed.push(namespace(&admin, &doomed_prefix).await);
    }
    let operator = start("doomed", &["--max-parallel-writes=2"]);
    let targets = fleet.ending_with("4");
    let doomed_glob = format!("{doomed_prefix}-*");
    let replika = apply_replika(
        &admin,
        &source_ns,
        name,
        spec(
            "ConfigMap",
            &source_ns,
            name,
            "30s",
            namespaces(&[&fleet.glob("4"), &doomed_glob], &[]),
        ),
    )
    .await
    .expect("the Replika is created");
    let uid = replika.uid().expect("a UID");

    when_owned(&admin, name, &uid, |owned| owned >= 5).await;
    let namespaces_api = Api::<Namespace>::all(admin.clone());
    stream::iter(&doomed)
        .for_each_concurrent(None, |namespace| {
            let api = namespaces_api.clone();
            async move {
                api.delete(namespace, &DeleteParams::default())
                    .await
                    .expect("deleting a namespace");
            }
        })
        .await;
    let made = owned_now(&admin, name, &uid).await;
    println!(
        "doomed: namespaces deleted with {made} of {} copies made",
        targets.len() + doomed.len()
    );

    let expected = Expected::only(&uid, &targets, &data);
    let desired = targets.len() as u32;
    converge_status(
        &admin,
        &source_ns,
        name,
        ("True", "AllTargetsSynced"),
        Some((desired, desired, 0, 0)),
        &[&operator],
    )
    .await;
    converge_copies(&admin, name, &expected, FLEET_DEADLINE, &[&operator]).await;
}

#[tokio::test]
async fn a_source_deleted_and_created_again_at_once_reaches_every_copy() {
    let _alone = alone().await;
    let admin = installed().plane.admin_client().await;
    let fleet = fleet(&admin).await;
    let source_ns = namespace(&admin, "phoenix-src").await;
    let operator = start("phoenix", &[]);
    // Under both source policies: the copies kept meanwhile, and the copies removed meanwhile.
    let cases = [
        ("phoenix-retain", "Retain", "5"),
        ("phoenix-delete", "Delete", "6"),
    ];
    let mut uids = BTreeMap::new();
    for (name, policy, suffix) in cases {
        create_configmap(
            &admin,
            &source_ns,
            name,
            &[("generation", "0"), ("stale", "yes")],
        )
        .await;
        let mut spec = spec(
            "ConfigMap",
            &source_ns,
            name,
            "30s",
            namespaces(&[&fleet.glob(suffix)], &[]),
        );
        spec["policy"] = json!({"onSourceDeleted": policy});
        let replika = apply_replika(&admin, &source_ns, name, spec)
            .await
            .expect("the Replika is created");
        uids.insert(name, replika.uid().expect("a UID"));
    }
    let first = string_map(&[("generation", "0"), ("stale", "yes")]);
    for (name, _, suffix) in cases {
        let targets = fleet.ending_with(suffix);
        let expected = Expected::only(&uids[name], &targets, &first);
        converge_copies(&admin, name, &expected, DEADLINE, &[&operator]).await;
    }

    let sources = Api::<ConfigMap>::namespaced(admin.clone(), &source_ns);
    for generation in 1..=3 {
        for (name, _, _) in cases {
            sources
                .delete(name, &DeleteParams::default())
                .await
                .expect("deleting the source");
            let generation = generation.to_string();
            create_configmap(&admin, &source_ns, name, &[("generation", &generation)]).await;
        }
    }
    let last = string_map(&[("generation", "3")]);
    for (name, _, suffix) in cases {
        let targets = fleet.ending_with(suffix);
        let expected = Expected::only(&uids[name], &targets, &last);
        converge_copies(&admin, name, &expected, DEADLINE, &[&operator]).await;
        let desired = targets.len() as u32;
        converge_status(
            &admin,
            &source_ns,
            name,
            ("True", "AllTargetsSynced"),
            Some((desired, desired, 0, 0)),
            &[&operator],
        )
        .await;
    }
}

#[tokio::test]
async fn two_replikas_racing_for_one_object_settle_on_one_owner_each() {
    let _alone = alone().await;
    let admin = installed().plane.admin_client().await;
    let fleet = fleet(&admin).await;
    let name = "twin-copy";
    let sources = [
        namespace(&admin, "twin-a").await,
        namespace(&admin, "twin-b").await,
    ];
    for source_ns in &sources {
        create_configmap(&admin, source_ns, name, &[("from", source_ns)]).await;
    }
    let operator = start("twins", &[]);
    let targets = fleet.ending_with("8");
    let glob = fleet.glob("8");
    let (a, b) = futures::join!(
        apply_replika(
            &admin,
            &sources[0],
            "twin",
            spec(
                "ConfigMap",
                &sources[0],
                name,
                "30s",
                namespaces(&[&glob], &[])
            )
        ),
        apply_replika(
            &admin,
            &sources[1],
            "twin",
            spec(
                "ConfigMap",
                &sources[1],
                name,
                "30s",
                namespaces(&[&glob], &[])
            )
        ),
    );
    let uids = [
        a.expect("the first Replika").uid().expect("a UID"),
        b.expect("the second Replika").uid().expect("a UID"),
    ];

    // Every target ends with exactly one copy, of one of them, holding that one's source.
    let owners = |from: [String; 2]| {
        let (admin, targets, uids) = (&admin, &targets, &uids);
        async move {
            let found = configmaps_named(admin, name).await;
            let mut owners = BTreeMap::new();
            for target in targets {
                let copy = found.get(target).ok_or(format!("no copy in {target}"))?;
                let owner = uids
                    .iter()
                    .position(|uid| owner_uid(copy) == Some(uid.as_str()))
                    .ok_or(format!("the object in {target} is neither Replika's"))?;
                let wanted = string_map(&[("from", &from[owner])]);
                if copy.data.as_ref() != Some(&wanted) {
                    return Err(format!("the copy in {target} holds {:?}", copy.data));
                }
                owners.insert(target.clone(), owner);
            }
            Ok(owners)
        }
    };
    let settled = converge("one owner in every target", DEADLINE, &[&operator], || {
        owners(sources.clone())
    })
    .await;
    let won = |owner| settled.values().filter(|o| **o == owner).count() as u32;
    let desired = targets.len() as u32;
    println!("twins: {} and {} copies", won(0), won(1));
    for (owner, source_ns) in sources.iter().enumerate() {
        let (synced, conflicts) = (won(owner), desired - won(owner));
        let ready = if conflicts == 0 {
            ("True", "AllTargetsSynced")
        } else {
            ("False", "Conflict")
        };
        converge_status(
            &admin,
            source_ns,
            "twin",
            ready,
            Some((desired, synced, conflicts, 0)),
            &[&operator],
        )
        .await;
    }

    // Both sources change: each copy follows its own owner's, and none changes hands.
    for source_ns in &sources {
        set_data(
            &admin,
            source_ns,
            name,
            &string_map(&[("from", &format!("{source_ns}, changed"))]),
        )
        .await;
    }
    let changed = [
        format!("{}, changed", sources[0]),
        format!("{}, changed", sources[1]),
    ];
    let after = converge(
        "the copies to follow their owners' sources",
        DEADLINE,
        &[&operator],
        || owners(changed.clone()),
    )
    .await;
    assert_eq!(after, settled, "copies changed hands");
}

// ---- 5. Hostile specs that bypass admission ----------------------------------

#[tokio::test]
async fn hostile_specs_past_admission_get_a_clear_condition_and_block_nothing() {
    let _alone = alone().await;
    let admin = installed().plane.admin_client().await;
    // Replikas in `source_ns` are stored without the webhooks, as if admission had been bypassed.
    let source_ns = namespace_without_admission(&admin, "hostile-src").await;
    let admitted_ns = namespace(&admin, "hostile-admitted").await;
    let target = namespace(&admin, "hostile-target").await;
    create_configmap(&admin, &source_ns, "good", &[("ok", "yes")]).await;
    let operator = start("hostile", &[]);
    let valid = || {
        spec(
            "ConfigMap",
            &source_ns,
            "good",
            "30s",
            namespaces(&[&target], &[]),
        )
    };
    let with = |path: &[&str], value: Value| {
        let mut spec = valid();
        let (last, parents) = path.split_last().expect("a path");
        let mut at = &mut spec;
        for key in parents {
            at = &mut at[*key];
        }
        at[*last] = value;
        spec
    };

    // The CRD's schema refuses some outright: what kubectl would print.
    let refused = [
        (
            "namespace-kind",
            with(&["source", "kind"], json!("Namespace")),
            "a Namespace cannot be replicated",
        ),
        (
            "source-namespace-listed",
            with(&["target", "namespaces", "replicateIn"], json!([source_ns])),
            "must not name the source namespace",
        ),
    ];
    for (name, spec, message) in refused {
        match apply_replika(&admin, &source_ns, name, spec).await {
            Err(kube::Error::Api(status)) => assert!(
                status.code == 422 && status.message.contains(message),
                "{name}: {status:?}"
            ),
            other => panic!("{name}: the API server accepted it: {other:?}"),
        }
    }

    // The rest reach the operator, which must say what is wrong with each.
    let mut no_source = valid();
    no_source
        .as_object_mut()
        .expect("an object")
        .remove("source");
    let mut implicit_source_namespace =
        with(&["target", "namespaces", "replicateIn"], json!([source_ns]));
    implicit_source_namespace["source"]
        .as_object_mut()
        .expect("an object")
        .remove("namespace");
    let kind = |group: &str, version: &str, kind: &str, name: &str| {
        let source = json!({"group": group, "version": version, "kind": kind, "name": name, "namespace": source_ns});
        with(&["source"], source)
    };
    let selector =
        json!({"matchExpressions": [{"key": "tier", "operator": "Like", "values": ["gold"]}]});
    let reserved = json!({"labels": {ANNOTATION_OWNER_UID: "someone-else"}});
    let hostile = [
        (
            "replika-kind",
            kind("replika.prosimcorp.com", "v1beta1", "Replika", "good"),
            "Invalid",
            "a Replika cannot replicate Replikas",
        ),
        (
            "lease-kind",
            kind("coordination.k8s.io", "v1", "Lease", "good"),
            "Invalid",
            "copying a Lease would confuse leader election",
        ),
        (
            "cluster-scoped",
            kind("rbac.authorization.k8s.io", "v1", "ClusterRole", "admin"),
            "Invalid",
            "cluster-scoped",
        ),
        (
            "not-served",
            kind("widgets.replika.test", "v1", "Widget", "good"),
            "KindNotServed",
            "Widget",
        ),
        (
            "empty-version",
            kind("", "", "ConfigMap", "good"),
            "Invalid",
            "spec.source.version: must not be empty",
        ),
        (
            "no-source",
            no_source,
            "Invalid",
            "spec.source: is required",
        ),
        (
            "zero-resync",
            with(&["synchronization", "time"], json!("0s")),
            "Invalid",
            "below the minimum of 1s",
        ),
        (
            "garbage-resync",
            with(&["synchronization", "time"], json!("every now and then")),
            "Invalid",
            "is not a duration",
        ),
        (
            "source-namespace-target",
            implicit_source_namespace,
            "Invalid",
            "names the source namespace",
        ),
        (
            "bad-operator",
            with(&["target", "namespaces", "selector"], selector),
            "Invalid",
            "unknown operator \"Like\"",
        ),
        (
            "long-pattern",
            with(
                &["target", "namespaces", "excludeFrom"],
                json!(["a".repeat(64)]),
            ),
            "Invalid",
            "at most 63 characters",
        ),
        (
            "reserved-label",
            with(&["target", "metadata"], reserved),
            "Invalid",
            "reserved for Replika's own bookkeeping",
        ),
        // Sound, but nobody was admitted as its author: it must copy nothing.
        ("unsigned", valid(), "AuthorUnverified", ""),
    ];
    for (name, spec, _, _) in &hostile {
        apply_replika(&admin, &source_ns, name, spec.clone())
            .await
            .unwrap_or_else(|error| panic!("{name}: the API server refused it: {error}"));
    }
    // Admitted: a resync so long that adding it to a clock would overflow must simply work.
    create_configmap(&admin, &admitted_ns, "huge", &[("ok", "yes")]).await;
    let huge = spec(
        "ConfigMap",
        &admitted_ns,
        "huge",
        "5000000000000000h",
        namespaces(&[&target], &[]),
    );
    apply_replika(&admin, &admitted_ns, "huge-resync", huge)
        .await
        .expect("the webhook admits it");

    for (name, _, reason, message) in &hostile {
        let replika = converge_status(
            &admin,
            &source_ns,
            name,
            ("False", *reason),
            None,
            &[&operator],
        )
        .await;
        let condition = ready_condition(&replika).expect("a Ready condition");
        assert!(
            condition.message.contains(message),
            "{name}: {}",
            condition.message
        );
    }
    let one = Some((1, 1, 0, 0));
    let synced = ("True", "AllTargetsSynced");
    converge_status(
        &admin,
        &admitted_ns,
        "huge-resync",
        synced,
        one,
        &[&operator],
    )
    .await;

    // The queue is not stuck: a Replika made now works, and a changed one is looked at again.
    create_configmap(&admin, &admitted_ns, "after", &[("ok", "yes")]).await;
    let after = spec(
        "ConfigMap",
        &admitted_ns,
        "after",
        "30s",
        namespaces(&[&target], &[]),
    );
    apply_replika(&admin, &admitted_ns, "after-them", after)
        .await
        .expect("the Replika is created");
    converge_status(
        &admin,
        &admitted_ns,
        "after-them",
        synced,
        one,
        &[&operator],
    )
    .await;
    wait_for_copy(&admin, &target, "after", &[("ok", "yes")]).await;
    apply_replika(&admin, &source_ns, "garbage-resync", valid())
        .await
        .expect("the Replika is changed");
    converge_status(
        &admin,
        &source_ns,
        "garbage-resync",
        ("False", "AuthorUnverified"),
        None,
        &[&operator],
    )
    .await;
    assert!(
        get_configmap(&admin, &target, "good").await.is_none(),
        "a Replika that no webhook admitted made a copy"
    );

    assert_eq!(status_of(&operator, "/healthz").await, Some(200));
    let log = operator.process.log();
    assert!(
        !log.contains("panicked"),
        "the operator panicked:\n{}",
        operator.process.log_tail()
    );
}

#[tokio::test]
async fn oversized_sources_are_copied_whole() {
    let _alone = alone().await;
    let admin = installed().plane.admin_client().await;
    let source_ns = namespace(&admin, "oversized-src").await;
    let mut targets = BTreeSet::new();
    for _ in 0..3 {
        targets.insert(namespace(&admin, "oversized").await);
    }
    let listed: Vec<&str> = targets.iter().map(String::as_str).collect();
    let operator = start("oversized", &[]);

    // A Secret of 1 MiB, the most the API server accepts.
    let blob: Vec<u8> = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "big-secret"}, "data": {"blob": k8s_openapi::ByteString(blob)}}))
        .expect("a Secret");
    let secrets = Api::<Secret>::namespaced(admin.clone(), &source_ns);
    let secret = secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the Secret");
    // A ConfigMap of 10 000 keys.
    let mut many: BTreeMap<String, String> = (0..10_000)
        .map(|i| (format!("key-{i:05}"), format!("value-{i:05}")))
        .collect();
    let configmap: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "many-keys"}, "data": many}))
            .expect("a ConfigMap");
    Api::<ConfigMap>::namespaced(admin.clone(), &source_ns)
        .create(&PostParams::default(), &configmap)
        .await
        .expect("creating the ConfigMap");
    for (name, kind) in [("big-secret", "Secret"), ("many-keys", "ConfigMap")] {
        let spec = spec(kind, &source_ns, name, "30s", namespaces(&listed, &[]));
        apply_replika(&admin, &source_ns, name, spec)
            .await
            .expect("creating a Replika");
    }

    let uid_of = |name: &'static str| {
        let admin = admin.clone();
        let source_ns = source_ns.clone();
        async move {
            Api::<Replika>::namespaced(admin, &source_ns)
                .get(name)
                .await
                .expect("the Replika")
                .uid()
                .expect("a UID")
        }
    };
    let many_uid = uid_of("many-keys").await;
    converge_copies(
        &admin,
        "many-keys",
        &Expected::only(&many_uid, &targets, &many),
        DEADLINE,
        &[&operator],
    )
    .await;
    converge(
        "the 1 MiB Secret in every target",
        DEADLINE,
        &[&operator],
        || async {
            let copies = secrets_named(&admin, "big-secret").await;
            match targets
                .iter()
                .find(|ns| copies.get(*ns).map(|copy| &copy.data) != Some(&secret.data))
            {
                None => Ok(()),
                Some(namespace) => Err(format!("no full copy in {namespace}")),
            }
        },
    )
    .await;
    let desired = targets.len() as u32;
    for name in ["big-secret", "many-keys"] {
        converge_status(
            &admin,
            &source_ns,
            name,
            ("True", "AllTargetsSynced"),
            Some((desired, desired, 0, 0)),
            &[&operator],
        )
        .await;
    }

    // One key changed and one removed among 10 000 reach every copy.
    many.insert("key-00042".into(), "changed".into());
    many.remove("key-09999");
    set_data(&admin, &source_ns, "many-keys", &many).await;
    converge_copies(
        &admin,
        "many-keys",
        &Expected::only(&many_uid, &targets, &many),
        DEADLINE,
        &[&operator],
    )
    .await;
}

// ---- 6. Soak -----------------------------------------------------------------

/// A small deterministic random source (xorshift), so a failing soak can be replayed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % sides as u64) as usize
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> Option<&'a T> {
        (!from.is_empty()).then(|| &from[self.roll(from.len())])
    }
}

/// The soak's namespaces and the Replikas' target rules, as the churn left them.
struct SoakWorld {
    prefix: String,
    tier_key: &'static str,
    gold: String,
    /// Pool namespaces that exist (or are being created), with whether they are gold.
    pool: BTreeMap<String, bool>,
    next: usize,
    /// `excludeFrom` of the glob Replika.
    excluded: Vec<String>,
    /// `replicateIn` of the Secret Replika.
    listed: Vec<String>,
    /// The label the glob Replika puts on its copies.
    round: usize,
}

impl SoakWorld {
    fn glob_spec(&self, source_ns: &str) -> Value {
        let mut spec = spec(
            "ConfigMap",
            source_ns,
            "soak-glob",
            "30s",
            json!({"matchAll": false, "replicateIn": [format!("{}-*", self.prefix)], "excludeFrom": self.excluded}),
        );
        spec["target"]["metadata"] = json!({"labels": {"soak-round": self.round.to_string()}});
        spec
    }

    fn gold_spec(&self, source_ns: &str) -> Value {
        spec(
            "ConfigMap",
            source_ns,
            "soak-gold",
            "30s",
            json!({"matchAll": false, "selector": {"matchLabels": {self.tier_key: self.gold}}}),
        )
    }

    fn secret_spec(&self, source_ns: &str) -> Value {
        let listed = if self.listed.is_empty() {
            vec![format!("{}-none", self.prefix)]
        } else {
            self.listed.clone()
        };
        spec(
            "Secret",
            source_ns,
            "soak-secret",
            "30s",
            json!({"matchAll": false, "replicateIn": listed}),
        )
    }

    fn tier(&self, gold: bool) -> String {
        if gold {
            self.gold.clone()
        } else {
            format!("silver-{}", std::process::id())
        }
    }
}

#[tokio::test]
async fn a_soak_of_continuous_churn_ends_with_every_copy_right() {
    let seconds: u64 = std::env::var("REPLIKA_SOAK_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(60);
    let _alone = alone().await;
    let admin = installed().plane.admin_client().await;
    let source_ns = namespace(&admin, "soak-src").await;
    let operator = start("soak", &[]);
    let mut world = SoakWorld {
        prefix: format!("soak{}", std::process::id()),
        tier_key: "replika.test/soak-tier",
        gold: format!("gold-{}", std::process::id()),
        pool: BTreeMap::new(),
        next: 0,
        excluded: Vec::new(),
        listed: Vec::new(),
        round: 0,
    };
    let namespaces_api = Api::<Namespace>::all(admin.clone());
    let create_namespace = |name: String, tier: String| {
        let api = namespaces_api.clone();
        async move {
            let namespace: Namespace = serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"replika.test/soak-tier": tier}}}),
            )
            .expect("a Namespace");
            api.create(&PostParams::default(), &namespace)
                .await
                .expect("creating a namespace");
        }
    };
    for _ in 0..10 {
        let (name, gold) = (
            format!("{}-{}", world.prefix, world.next),
            world.next.is_multiple_of(2),
        );
        world.next += 1;
        create_namespace(name.clone(), world.tier(gold)).await;
        world.pool.insert(name, gold);
    }
    // Never deleted: objects of the copies' names that are not Replika's, in a
    // namespace both ConfigMap Replikas target (conflicts for as long as they last).
    let keep = format!("{}-keep", world.prefix);
    create_namespace(keep.clone(), world.gold.clone()).await;
    let mut untouchable: BTreeMap<&str, ConfigMap> = BTreeMap::new();
    for name in ["soak-glob", "soak-gold"] {
        untouchable.insert(
            name,
            create_configmap(&admin, &keep, name, &[("owner", "someone-else")]).await,
        );
    }

    create_configmap(&admin, &source_ns, "soak-glob", &[("k0", "0")]).await;
    create_configmap(&admin, &source_ns, "soak-gold", &[("k0", "0")]).await;
    let secrets = Api::<Secret>::namespaced(admin.clone(), &source_ns);
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "soak-secret"}, "stringData": {"k0": "0"}}),
    )
    .expect("a Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the Secret");
    world.listed = world.pool.keys().take(3).cloned().collect();
    let mut uids = BTreeMap::new();
    for (name, spec) in [
        ("glob", world.glob_spec(&source_ns)),
        ("gold", world.gold_spec(&source_ns)),
        ("secret", world.secret_spec(&source_ns)),
    ] {
        let replika = apply_replika(&admin, &source_ns, name, spec)
            .await
            .expect("creating a Replika");
        uids.insert(name, replika.uid().expect("a UID"));
    }

    let mut dice = Dice(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let mut done: BTreeMap<&str, usize> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    let configmaps = |namespace: &str| Api::<ConfigMap>::namespaced(admin.clone(), namespace);
    while Instant::now() < until {
        let action = match dice.roll(9) {
            0 | 1 => {
                let source = *dice.pick(&["soak-glob", "soak-gold"]).expect("a source");
                let key = format!("k{}", dice.roll(4));
                let value = (dice.roll(3) > 0).then(|| dice.roll(1000).to_string());
                let patch = json!({"data": {key: value}});
                configmaps(&source_ns)
                    .patch(source, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("editing a source");
                "source edited"
            }
            2 => {
                let key = format!("k{}", dice.roll(4));
                let patch = json!({"stringData": {key: dice.roll(1000).to_string()}});
                secrets
                    .patch(
                        "soak-secret",
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .expect("editing the Secret");
                "secret edited"
            }
            3 if world.pool.len() < 25 => {
                let (name, gold) = (
                    format!("{}-{}", world.prefix, world.next),
                    dice.roll(2) == 0,
                );
                world.next += 1;
                create_namespace(name.clone(), world.tier(gold)).await;
                world.pool.insert(name, gold);
                "namespace created"
            }
            4 if world.pool.len() > 5 => {
                let names: Vec<String> = world.pool.keys().cloned().collect();
                let name = dice.pick(&names).expect("a namespace").clone();
                namespaces_api
                    .delete(&name, &DeleteParams::default())
                    .await
                    .expect("deleting a namespace");
                world.pool.remove(&name);
                "namespace deleted"
            }
            5 => {
                let names: Vec<String> = world.pool.keys().cloned().collect();
                let Some(name) = dice.pick(&names) else {
                    continue;
                };
                let gold = !world.pool[name];
                let patch = json!({"metadata": {"labels": {world.tier_key: world.tier(gold)}}});
                namespaces_api
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("relabelling a namespace");
                world.pool.insert(name.clone(), gold);
                "namespace relabelled"
            }
            6 => {
                let names: Vec<String> = world.pool.keys().cloned().collect();
                if dice.roll(2) == 0 {
                    world.excluded = (0..dice.roll(3))
                        .filter_map(|_| dice.pick(&names).cloned())
                        .collect();
                    world.round += 1;
                    apply_replika(&admin, &source_ns, "glob", world.glob_spec(&source_ns))
                        .await
                        .expect("editing a Replika");
                } else {
                    let mut listed: Vec<String> = (0..3 + dice.roll(4))
                        .filter_map(|_| dice.pick(&names).cloned())
                        .collect();
                    listed.push(format!("{}-{}", world.prefix, world.next + dice.roll(3)));
                    listed.sort();
                    listed.dedup();
                    world.listed = listed;
                    apply_replika(&admin, &source_ns, "secret", world.secret_spec(&source_ns))
                        .await
                        .expect("editing a Replika");
                }
                "replika edited"
            }
            7 | 8 => {
                let names: Vec<String> = world.pool.keys().cloned().collect();
                let Some(namespace) = dice.pick(&names) else {
                    continue;
                };
                let copies = configmaps(namespace);
                let tampered = if dice.roll(2) == 0 {
                    copies
                        .delete("soak-glob", &DeleteParams::default())
                        .await
                        .map(|_| ())
                } else {
                    let patch = json!({"data": {"k0": "tampered", "extra": "x"}});
                    copies
                        .patch("soak-glob", &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ())
                };
                match tampered {
                    Ok(()) => "copy tampered with",
                    // Not there (yet, or any more), or its namespace is going.
                    Err(kube::Error::Api(status)) if status.code == 404 || status.code == 403 => {
                        "copy missed"
                    }
                    Err(error) => panic!("tampering with a copy: {error}"),
                }
            }
            _ => continue,
        };
        *done.entry(action).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("soak: {seconds}s of churn: {done:?}");

    // The invariants, once the churn stops.
    let settled = Instant::now();
    // (source name, owner UID) of each Replika.
    let soak = |replika: &str, source: &'static str| (source, uids[replika].as_str());
    let [glob_targets, gold_targets, secret_targets] = converge(
        "every soak copy to be right",
        FLEET_DEADLINE,
        &[&operator],
        || {
            let (admin, world, untouchable, source_ns, keep) =
                (&admin, &world, &untouchable, &source_ns, &keep);
            let (glob, gold, secret) = (
                soak("glob", "soak-glob"),
                soak("gold", "soak-gold"),
                soak("secret", "soak-secret"),
            );
            async move {
                let all = Api::<Namespace>::all(admin.clone())
                    .list(&ListParams::default())
                    .await
                    .map_err(|error| error.to_string())?;
                let active: BTreeMap<String, Namespace> = all
                    .into_iter()
                    .filter(|ns| ns.metadata.deletion_timestamp.is_none())
                    .map(|ns| (ns.name_any(), ns))
                    .collect();
                let glob_targets: BTreeSet<String> = active
                    .keys()
                    .filter(|ns| {
                        ns.starts_with(&format!("{}-", world.prefix))
                            && !world.excluded.contains(ns)
                    })
                    .cloned()
                    .collect();
                let gold_targets: BTreeSet<String> = active
                    .iter()
                    .filter(|(_, ns)| ns.labels().get(world.tier_key) == Some(&world.gold))
                    .map(|(name, _)| name.clone())
                    .collect();
                let secret_targets: BTreeSet<String> = world
                    .listed
                    .iter()
                    .filter(|ns| active.contains_key(*ns))
                    .cloned()
                    .collect();

                for ((name, uid), targets) in [(glob, &glob_targets), (gold, &gold_targets)] {
                    let source = configmaps_named(admin, name)
                        .await
                        .remove(source_ns.as_str())
                        .ok_or("no source")?;
                    let data = source.data.clone().unwrap_or_default();
                    let found: BTreeMap<String, ConfigMap> = configmaps_named(admin, name)
                        .await
                        .into_iter()
                        .filter(|(ns, _)| active.contains_key(ns))
                        .collect();
                    let copies: BTreeSet<String> =
                        targets.iter().filter(|ns| **ns != *keep).cloned().collect();
                    let theirs = BTreeMap::from([(keep.clone(), untouchable[name].clone())]);
                    let expected = Expected {
                        owner_uid: uid,
                        targets: &copies,
                        data: &data,
                        untouchable: &theirs,
                        their_keys: true,
                    };
                    expected
                        .problems(&found)
                        .map_err(|problems| format!("{name}: {problems}"))?;
                    if name == "soak-glob" {
                        let round = world.round.to_string();
                        if let Some((ns, _)) = found.iter().find(|(ns, copy)| {
                            copies.contains(*ns) && copy.labels().get("soak-round") != Some(&round)
                        }) {
                            return Err(format!("the copy in {ns} lacks soak-round={round}"));
                        }
                    }
                }
                let source = secrets_named(admin, "soak-secret")
                    .await
                    .remove(source_ns.as_str())
                    .ok_or("no Secret")?;
                for (namespace, copy) in secrets_named(admin, "soak-secret").await {
                    if namespace == *source_ns || !active.contains_key(&namespace) {
                        continue;
                    }
                    let owned = owner_uid(&copy) == Some(secret.1);
                    if owned && !secret_targets.contains(&namespace) {
                        return Err(format!("a Secret copy is left in {namespace}"));
                    }
                    if owned && copy.data != source.data {
                        return Err(format!("the Secret copy in {namespace} is stale"));
                    }
                }
                let held: BTreeSet<String> = secrets_named(admin, "soak-secret")
                    .await
                    .into_iter()
                    .filter(|(_, copy)| owner_uid(copy) == Some(secret.1))
                    .map(|(namespace, _)| namespace)
                    .collect();
                if let Some(missing) = secret_targets.difference(&held).next() {
                    return Err(format!("no Secret copy in {missing}"));
                }
                let count = |targets: &BTreeSet<String>| targets.len() as u32;
                Ok([
                    count(&glob_targets),
                    count(&gold_targets),
                    count(&secret_targets),
                ])
            }
        },
    )
    .await;
    println!(
        "soak: the copies were right {:?} after the churn stopped",
        settled.elapsed()
    );
    // The `keep` namespace is a conflict for both ConfigMap Replikas, and status says so.
    for (name, desired) in [("glob", glob_targets), ("gold", gold_targets)] {
        converge_status(
            &admin,
            &source_ns,
            name,
            ("False", "Conflict"),
            Some((desired, desired - 1, 1, 0)),
            &[&operator],
        )
        .await;
    }
    converge_status(
        &admin,
        &source_ns,
        "secret",
        ("True", "AllTargetsSynced"),
        Some((secret_targets, secret_targets, 0, 0)),
        &[&operator],
    )
    .await;
}

/// The Secrets called `name` in every namespace, by namespace.
async fn secrets_named(client: &Client, name: &str) -> BTreeMap<String, Secret> {
    Api::<Secret>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await
        .expect("listing Secrets")
        .into_iter()
        .map(|secret| (secret.namespace().unwrap_or_default(), secret))
        .collect()
}
