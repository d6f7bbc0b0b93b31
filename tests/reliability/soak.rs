//! The soak: continuous churn of sources, namespaces, labels, Replikas and
//! tampered copies for `REPLIKA_SOAK_SECONDS` (60 by default; `make soak`
//! runs 15 minutes), then every copy must be right.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::checks::*;
use crate::harness::*;
use crate::support::*;

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
    converge_all_synced(&admin, &source_ns, "secret", secret_targets, &[&operator]).await;
}
