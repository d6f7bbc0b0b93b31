//! Taking the earlier Go operator's place: its Replikas (its finalizer, its
//! `SourceSynced` condition, no author), its copies (two labels, no owner
//! annotations) and Replikas stored before any webhook existed. Fixtures are
//! written as that operator left them; then our operator starts and an admin
//! runs the documented step, `replika attest`.

mod support;

use std::process::Command;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use replika::api::{
    ANNOTATION_OWNER_UID, CREATED_BY_VALUE, FINALIZER, LABEL_CREATED_BY, LABEL_PART_OF,
    LEGACY_FINALIZER, Replika,
};
use serde_json::json;
use support::*;
use testenv::{run, wait_for};

/// A ConfigMap as the Go operator left its copy: the source's data and its two labels.
async fn go_copy(
    client: &Client,
    namespace: &str,
    name: &str,
    part_of: &str,
    data: &[(&str, &str)],
) {
    let copy: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {LABEL_CREATED_BY: CREATED_BY_VALUE, LABEL_PART_OF: part_of}},
        "data": data.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    }))
    .expect("a ConfigMap");
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &copy)
        .await
        .expect("the Go operator's copy is created");
}

/// A Replika as the Go operator kept it: its finalizer, its condition, no author
/// and none of the defaults our webhook fills in. Stored past admission.
async fn go_replika(
    client: &Client,
    namespace: &str,
    name: &str,
    source: &str,
    targets: &[&str],
) -> Replika {
    let api = Api::<Replika>::namespaced(client.clone(), namespace);
    let replika: Replika = serde_json::from_value(json!({
        "apiVersion": "replika.prosimcorp.com/v1beta1",
        "kind": "Replika",
        "metadata": {"name": name, "finalizers": [LEGACY_FINALIZER]},
        "spec": {
            "synchronization": {"time": "20s"},
            "source": {"group": "", "version": "v1", "kind": "ConfigMap", "name": source, "namespace": namespace},
            "target": {"namespaces": {"matchAll": false, "replicateIn": targets}},
        },
    }))
    .expect("a Replika");
    api.create(&PostParams::default(), &replika)
        .await
        .expect("the Go operator's Replika is stored");
    let status = json!({"status": {"conditions": [{
        "type": "SourceSynced", "status": "True", "reason": "SourceSynced",
        "message": "Source was synchronized", "lastTransitionTime": "2026-01-01T00:00:00Z",
    }]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("the Go operator's condition is written")
}

/// From now on Replika's webhooks see every write in `namespace`.
async fn admit_from_now_on(client: &Client, namespace: &str) {
    let unlabel = json!({"metadata": {"labels": {NO_ADMISSION_LABEL: null}}});
    Api::<Namespace>::all(client.clone())
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&unlabel))
        .await
        .expect("unlabelling the namespace");
}

/// `replika attest` as the plane's admin; its output.
fn replika_attest(args: &[&str]) -> String {
    let plane = installed().plane;
    let output = run(Command::new(env!("CARGO_BIN_EXE_replika"))
        .arg("attest")
        .args(args)
        .env("KUBECONFIG", plane.kubeconfig_path()));
    assert!(
        output.status_ok,
        "replika attest failed: {}\n{}",
        output.stderr, output.stdout
    );
    output.stdout
}

async fn owner_uid(client: &Client, namespace: &str, name: &str) -> Option<String> {
    get_configmap(client, namespace, name)
        .await?
        .annotations()
        .get(ANNOTATION_OWNER_UID)
        .cloned()
}

#[tokio::test]
async fn the_go_operators_replikas_and_copies_are_taken_over_after_one_attest() {
    let h = installed();
    let client = h.plane.admin_client().await;
    let src = namespace_without_admission(&client, "legacy-src").await;
    let mut targets = Vec::new();
    for _ in 0..4 {
        targets.push(namespace(&client, "legacy-target").await);
    }
    let [t1, t2, t3, user_ns] = [0, 1, 2, 3].map(|i| targets[i].as_str());
    create_configmap(&client, &src, "settings", &[("k", "current")]).await;
    go_copy(&client, t1, "settings", "settings", &[("k", "current")]).await;
    go_copy(&client, t2, "settings", "settings", &[("k", "current")]).await;
    go_copy(&client, t3, "settings", "settings", &[("k", "stale")]).await;
    create_configmap(&client, user_ns, "settings", &[("mine", "yes")]).await;
    let replika = go_replika(
        &client,
        &src,
        "settings",
        "settings",
        &[t1, t2, t3, user_ns],
    )
    .await;
    admit_from_now_on(&client, &src).await;

    // Our operator starts in its place.
    let _operator = harness();
    let message = wait_until_blocked(&client, &src, "settings", "AuthorUnverified").await;
    assert!(message.contains("replika attest"), "{message}");
    wait_for(
        "the Go operator's finalizer to be replaced by ours",
        DEADLINE,
        || async {
            (get_replika(&client, &src, "settings").await.finalizers() == [FINALIZER]).then_some(())
        },
    )
    .await;
    assert_eq!(
        owner_uid(&client, t1, "settings").await,
        None,
        "nothing is adopted before the admin vouches"
    );

    // The documented step: an admin vouches for the Replikas in bulk (here the
    // namespace's: other tests of this binary store Replikas that must fail).
    let attested = replika_attest(&["-n", &src]);
    assert!(
        attested.contains(&src) && attested.contains("attested: author"),
        "{attested}"
    );
    let uid = replika.uid().expect("a UID");
    for target in [t1, t2, t3] {
        wait_for_copy(&client, target, "settings", &[("k", "current")]).await;
        wait_for("the copy to carry its new owner", DEADLINE, || async {
            (owner_uid(&client, target, "settings").await.as_deref() == Some(uid.as_str()))
                .then_some(())
        })
        .await;
    }
    let status = wait_for_condition(&client, &src, "settings", "Ready", "False", "Conflict")
        .await
        .status
        .expect("a status");
    let failures: Vec<(&str, &str)> = status
        .failures
        .iter()
        .map(|f| (f.namespace.as_str(), f.reason.as_str()))
        .collect();
    assert_eq!(failures, [(user_ns, "Conflict")], "{:?}", status.failures);
    let mine = get_configmap(&client, user_ns, "settings")
        .await
        .expect("the user's object");
    assert_eq!(data_of(&mine), [("mine".to_string(), "yes".to_string())]);
    assert!(
        mine.labels().is_empty() && mine.annotations().is_empty(),
        "the user's object is untouched"
    );

    // Kept in sync from now on.
    Api::<ConfigMap>::namespaced(client.clone(), &src)
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(&json!({"data": {"k": "next"}})),
        )
        .await
        .expect("updating the source");
    for target in [t1, t2, t3] {
        wait_for_copy(&client, target, "settings", &[("k", "next")]).await;
    }

    // Deleting the Replika removes exactly its copies and completes.
    delete_replika(&client, &src, "settings").await;
    for target in [t1, t2, t3] {
        wait_for_absence(&client, target, "settings").await;
    }
    let mine = get_configmap(&client, user_ns, "settings")
        .await
        .expect("the user's object stays");
    assert_eq!(data_of(&mine), [("mine".to_string(), "yes".to_string())]);
}

#[tokio::test]
async fn two_same_named_go_replikas_leave_the_copy_they_could_both_have_made_alone() {
    let h = installed();
    let client = h.plane.admin_client().await;
    let (east, west) = (
        namespace_without_admission(&client, "legacy-east").await,
        namespace_without_admission(&client, "legacy-west").await,
    );
    let (shared, east_only) = (
        namespace(&client, "legacy-shared").await,
        namespace(&client, "legacy-east-only").await,
    );
    for source_ns in [&east, &west] {
        create_configmap(&client, source_ns, "registry", &[("from", source_ns)]).await;
    }
    go_copy(&client, &shared, "registry", "registry", &[("from", &east)]).await;
    go_copy(
        &client,
        &east_only,
        "registry",
        "registry",
        &[("from", &east)],
    )
    .await;
    go_replika(
        &client,
        &east,
        "registry",
        "registry",
        &[&shared, &east_only],
    )
    .await;
    go_replika(&client, &west, "registry", "registry", &[&shared]).await;
    for namespace in [&east, &west] {
        admit_from_now_on(&client, namespace).await;
    }
    let _operator = harness();
    replika_attest(&["-n", &east, "registry"]);
    replika_attest(&["-n", &west]);

    // The labels cannot say which of the two made the shared copy: neither takes it.
    let east_uid = get_replika(&client, &east, "registry")
        .await
        .uid()
        .expect("a UID");
    wait_for(
        "east to adopt the copy only it targets",
        DEADLINE,
        || async {
            (owner_uid(&client, &east_only, "registry").await.as_deref() == Some(east_uid.as_str()))
                .then_some(())
        },
    )
    .await;
    for source_ns in [&east, &west] {
        let status =
            wait_for_condition(&client, source_ns, "registry", "Ready", "False", "Conflict")
                .await
                .status
                .expect("a status");
        let failure = status
            .failures
            .iter()
            .find(|f| f.namespace == shared)
            .expect("the shared namespace fails");
        assert_eq!(failure.reason, "Conflict");
        assert!(
            failure.message.contains("earlier Go operator"),
            "{}",
            failure.message
        );
    }
    assert_eq!(owner_uid(&client, &shared, "registry").await, None);
}

#[tokio::test]
async fn a_stored_replika_with_an_invalid_spec_is_reported_once_and_left_alone() {
    let h = harness();
    let client = h.admin().await;
    let src = namespace_without_admission(&client, "banana").await;
    let api = Api::<Replika>::namespaced(client.clone(), &src);
    let stored: Replika = serde_json::from_value(json!({
        "apiVersion": "replika.prosimcorp.com/v1beta1",
        "kind": "Replika",
        "metadata": {"name": "banana"},
        "spec": {
            "synchronization": {"time": "banana"},
            "source": {"group": "", "version": "v1", "kind": "ConfigMap", "name": "x"},
            "target": {"namespaces": {"matchAll": true}},
        },
    }))
    .expect("a Replika");
    api.create(&PostParams::default(), &stored)
        .await
        .expect("stored past admission");
    admit_from_now_on(&client, &src).await;
    let message = wait_until_blocked(&client, &src, "banana", "Invalid").await;
    assert!(message.contains("banana"), "{message}");
    let reported = get_replika(&client, &src, "banana").await;
    assert!(
        reported.finalizers().is_empty(),
        "no finalizer for a Replika that never copies"
    );

    // Passes go on (a new namespace makes every Replika pass again): once a
    // later Replika has replicated, the invalid one was looked at again and
    // nothing was written to it or refused.
    let (later_src, later_target) = (
        namespace(&client, "after-banana").await,
        namespace(&client, "after-banana-target").await,
    );
    create_configmap(&client, &later_src, "fine", &[("ok", "yes")]).await;
    let fine = json!({
        "apiVersion": "replika.prosimcorp.com/v1beta1",
        "kind": "Replika",
        "metadata": {"name": "fine", "namespace": later_src},
        "spec": {
            "synchronization": {"time": "20s"},
            "source": {"group": "", "version": "v1", "kind": "ConfigMap", "name": "fine"},
            "target": {"namespaces": {"matchAll": false, "replicateIn": [later_target]}},
        },
    });
    h.kubectl_apply(&serde_json::to_string(&fine).expect("JSON"));
    wait_for_copy(&client, &later_target, "fine", &[("ok", "yes")]).await;
    let after = get_replika(&client, &src, "banana").await;
    assert_eq!(
        after.resource_version(),
        reported.resource_version(),
        "nothing was written to it"
    );
    let refused: Vec<String> = h
        .operator_log()
        .lines()
        .filter(|line| {
            line.contains(&format!("banana.{src}"))
                && (line.contains("failed") || line.contains("denied"))
        })
        .map(String::from)
        .collect();
    assert!(
        refused.is_empty(),
        "no pass failed on it:\n{}",
        refused.join("\n")
    );
}
