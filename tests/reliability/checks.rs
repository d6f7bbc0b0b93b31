//! Waiting until what a user sees is what should be: the copies of a name
//! in every namespace, a Replika's status, who leads; and following the
//! copies by watch, to act at a precise moment of a fan-out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use replika::api::{ANNOTATION_OWNER_UID, Replika};

use crate::harness::FLEET_DEADLINE;
use crate::support::{OperatorWithPort, leadership, status_of};

/// How often a converging state is looked at again.
const POLL: Duration = Duration::from_millis(300);

/// Polls `check` until it is `Ok`; past `deadline`, fails with its last
/// complaint and the end of the operators' logs.
pub async fn converge<T, F, Fut>(
    what: &str,
    deadline: Duration,
    operators: &[&OperatorWithPort],
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
pub async fn configmaps_named(client: &Client, name: &str) -> BTreeMap<String, ConfigMap> {
    Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await
        .expect("listing ConfigMaps")
        .into_iter()
        .map(|configmap| (configmap.namespace().unwrap_or_default(), configmap))
        .collect()
}

pub fn owner_uid<K: ResourceExt>(object: &K) -> Option<&str> {
    object
        .annotations()
        .get(ANNOTATION_OWNER_UID)
        .map(String::as_str)
}

/// What a user sees of the copies of `name`, compared with what should be.
pub struct Expected<'a> {
    /// The Replika whose copies these are.
    pub owner_uid: &'a str,
    /// Every namespace that must hold a copy.
    pub targets: &'a BTreeSet<String>,
    /// The data each copy must hold.
    pub data: &'a BTreeMap<String, String>,
    /// Objects of the same name that are not Replika's, by namespace: they must stay as they are.
    pub untouchable: &'a BTreeMap<String, ConfigMap>,
    /// Whether a copy may hold keys the source lacks, set by someone else and
    /// so theirs (fields others add to a copy survive, README "Safety"); never Replika's.
    pub their_keys: bool,
}

/// No object of the copies' name that is not Replika's.
static NOTHING_THEIRS: BTreeMap<String, ConfigMap> = BTreeMap::new();

impl<'a> Expected<'a> {
    /// Copies of the Replika `owner_uid` holding `data` in exactly `targets`,
    /// and no object of the name that is not Replika's.
    pub fn only(
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
    pub fn problems(&self, found: &BTreeMap<String, ConfigMap>) -> Result<(), String> {
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
pub async fn converge_copies(
    client: &Client,
    name: &str,
    expected: &Expected<'_>,
    deadline: Duration,
    operators: &[&OperatorWithPort],
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
pub type Counts = (u32, u32, u32, u32);

/// Waits until the Replika's `Ready` condition is `ready` with `reason`, and its
/// target counts are `counts`; returns it.
pub async fn converge_status(
    client: &Client,
    namespace: &str,
    name: &str,
    (ready, reason): (&str, &str),
    counts: Option<Counts>,
    operators: &[&OperatorWithPort],
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

/// Waits until the Replika is Ready with all its `desired` targets synced; returns it.
pub async fn converge_all_synced(
    client: &Client,
    namespace: &str,
    name: &str,
    desired: u32,
    operators: &[&OperatorWithPort],
) -> Replika {
    let synced = ("True", "AllTargetsSynced");
    let counts = Some((desired, desired, 0, 0));
    converge_status(client, namespace, name, synced, counts, operators).await
}

pub fn ready_condition(replika: &Replika) -> Option<Condition> {
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
pub async fn when_owned(
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
pub async fn owned_now(client: &Client, name: &str, owner: &str) -> usize {
    configmaps_named(client, name)
        .await
        .values()
        .filter(|configmap| owner_uid(*configmap) == Some(owner))
        .count()
}

/// The Secrets called `name` in every namespace, by namespace.
pub async fn secrets_named(client: &Client, name: &str) -> BTreeMap<String, Secret> {
    Api::<Secret>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await
        .expect("listing Secrets")
        .into_iter()
        .map(|secret| (secret.namespace().unwrap_or_default(), secret))
        .collect()
}

/// Waits until `operator`, called `identity`, holds the Lease and runs its engine.
pub async fn wait_for_leadership(
    client: &Client,
    operator: &OperatorWithPort,
    identity: &str,
    deadline: Duration,
) {
    converge(
        &format!("{identity} to lead"),
        deadline,
        &[operator],
        || leadership(client, identity, operator.port),
    )
    .await;
}

/// Waits until `operator` answers `/readyz` with 200; `what` names the moment.
pub async fn wait_until_ready(what: &str, operator: &OperatorWithPort, deadline: Duration) {
    converge(what, deadline, &[operator], || async {
        match status_of(operator.port, "/readyz").await {
            Some(200) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
