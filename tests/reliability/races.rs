//! Races: with a user creating the same object, with namespaces deleted and
//! sources re-created during a fan-out, and between two Replikas claiming one
//! object. Nothing that is not Replika's changes hands, and every copy ends
//! right.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use crate::checks::*;
use crate::fleet::*;
use crate::harness::*;
use crate::support::*;

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
    let uid = replicate_configmap(
        &admin,
        &source_ns,
        name,
        "30s",
        namespaces(&[&fleet.glob("2")], &[]),
    )
    .await;

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
    let uid = replicate_configmap(
        &admin,
        &source_ns,
        name,
        "30s",
        namespaces(&[&fleet.glob("4"), &doomed_glob], &[]),
    )
    .await;

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
    converge_all_synced(&admin, &source_ns, name, desired, &[&operator]).await;
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
        converge_all_synced(&admin, &source_ns, name, desired, &[&operator]).await;
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
