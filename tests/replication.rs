//! The replication engine against the real control plane, with the operator
//! running under the RBAC of `deploy/`. Each test works in namespaces of its own.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::pinned_kind;
use kube::{Client, ResourceExt};
use replika::api::{ANNOTATION_OWNER_UID, LABEL_CREATED_BY};
use serde_json::json;
use support::*;
use testenv::{run, wait_for};

/// A Replika manifest copying `kind/name` from `source_ns`, with `targets` as the
/// body of `spec.target.namespaces` and `policy` as the body of `spec.policy`.
fn replika_yaml(
    name: &str,
    source_ns: &str,
    kind: &str,
    source: &str,
    targets: &str,
    policy: &str,
) -> String {
    let target = format!("{{namespaces: {targets}}}");
    replika_manifest(name, source_ns, kind, source, &target, policy)
}

fn list_targets(namespaces: &[&str]) -> String {
    format!(
        "{{matchAll: false, replicateIn: [{}]}}",
        namespaces.join(", ")
    )
}

/// A source namespace and a target namespace (named after `prefix`), the
/// ConfigMap `name` with `data` in the source, and a Replika of that name
/// copying it into the target, applied with kubectl; waits for the copy.
async fn replicated_configmap(
    h: &Harness,
    client: &Client,
    prefix: &str,
    name: &str,
    data: &[(&str, &str)],
) -> (String, String) {
    let (src, target) = (
        namespace(client, &format!("{prefix}-src")).await,
        namespace(client, &format!("{prefix}-target")).await,
    );
    create_configmap(client, &src, name, data).await;
    h.kubectl_apply(&replika_yaml(
        name,
        &src,
        "ConfigMap",
        name,
        &list_targets(&[&target]),
        "{}",
    ));
    wait_for_copy(client, &target, name, data).await;
    (src, target)
}

/// Namespaces holding a ConfigMap called `name`.
async fn holders(client: &Client, name: &str) -> BTreeSet<String> {
    Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await
        .expect("listing ConfigMaps")
        .into_iter()
        .filter_map(|cm| cm.namespace())
        .collect()
}

#[tokio::test]
async fn the_earlier_operators_sample_copies_to_every_namespace_but_the_excluded_and_the_source() {
    let h = harness();
    let client = h.admin().await;
    let source_ns = namespace(&client, "sample-src").await;
    let excluded = namespace(&client, "sample-excluded").await;
    let name = format!("sample-{source_ns}");
    create_configmap(&client, &source_ns, &name, &[("example-key", "value")]).await;
    // The earlier Go operator's sample, field for field, with this test's names.
    h.kubectl_apply(&format!(
        r#"
apiVersion: replika.prosimcorp.com/v1beta1
kind: Replika
metadata:
  name: replika-sample
  namespace: {source_ns}
spec:
  synchronization:
    time: "20s"
  source:
    group: ""
    version: v1
    kind: ConfigMap
    name: {name}
    namespace: &sourceNamespace {source_ns}
  target:
    namespaces:
      replicateIn: []
      matchAll: true
      excludeFrom:
        - kube-system
        - kube-public
        - kube-node-lease
        - {excluded}
        - *sourceNamespace
"#
    ));
    let never: BTreeSet<String> = [
        "kube-system",
        "kube-public",
        "kube-node-lease",
        excluded.as_str(),
    ]
    .into_iter()
    .map(String::from)
    .collect();
    wait_for(
        "a copy in every namespace but the excluded ones",
        DEADLINE,
        || async {
            let expected: BTreeSet<String> = active_namespaces(&client)
                .await
                .into_iter()
                .filter(|ns| !never.contains(ns) && *ns != source_ns)
                .collect();
            let held = holders(&client, &name).await;
            let source_only_once = held.contains(&source_ns);
            (expected.is_subset(&held) && held.is_disjoint(&never) && source_only_once)
                .then_some(())
        },
    )
    .await;
    let copy = get_configmap(&client, "default", &name)
        .await
        .expect("a copy in default");
    assert_eq!(
        data_of(&copy),
        vec![("example-key".to_string(), "value".to_string())]
    );
    assert_eq!(
        copy.labels().get(LABEL_CREATED_BY).map(String::as_str),
        Some("replika-controller")
    );

    delete_replika(&client, &source_ns, "replika-sample").await;
    wait_for("every copy removed with the Replika", DEADLINE, || async {
        let held = holders(&client, &name).await;
        (held == BTreeSet::from([source_ns.clone()])).then_some(())
    })
    .await;
}

#[tokio::test]
async fn source_changes_propagate_and_edited_copies_are_restored() {
    let h = harness();
    let client = h.admin().await;
    let src = namespace(&client, "prop-src").await;
    let (t1, t2) = (
        namespace(&client, "prop-a").await,
        namespace(&client, "prop-b").await,
    );
    create_configmap(&client, &src, "app-config", &[("a", "1"), ("b", "2")]).await;
    h.kubectl_apply(&replika_yaml(
        "app",
        &src,
        "ConfigMap",
        "app-config",
        &list_targets(&[&t1, &t2]),
        "{}",
    ));
    for ns in [&t1, &t2] {
        wait_for_copy(&client, ns, "app-config", &[("a", "1"), ("b", "2")]).await;
    }
    let waited = h.plane.kubectl_wait(
        &["--for=condition=Ready", "-n", &src, "replika/app"],
        Duration::from_secs(30),
    );
    assert!(
        waited.is_ok(),
        "kubectl wait failed: {:?}\n{}",
        waited,
        h.operator_log_tail()
    );

    // A changed value and a removed key reach every copy.
    let sources = Api::<ConfigMap>::namespaced(client.clone(), &src);
    let mut source = sources.get("app-config").await.expect("the source");
    source.data = Some([("a".to_string(), "10".to_string())].into());
    sources
        .replace("app-config", &PostParams::default(), &source)
        .await
        .expect("updating the source");
    for ns in [&t1, &t2] {
        wait_for_copy(&client, ns, "app-config", &[("a", "10")]).await;
    }

    // A copy edited by hand is restored; one deleted by hand comes back.
    let edited = run(h.plane.kubectl().args([
        "patch",
        "configmap",
        "app-config",
        "-n",
        &t1,
        "--type=merge",
        "-p",
        r#"{"data":{"a":"hacked","extra":"x"}}"#,
    ]));
    assert!(edited.status_ok, "{}", edited.stderr);
    wait_for_copy(&client, &t1, "app-config", &[("a", "10"), ("extra", "x")]).await;
    Api::<ConfigMap>::namespaced(client.clone(), &t2)
        .delete("app-config", &DeleteParams::default())
        .await
        .expect("deleting a copy");
    wait_for_copy(&client, &t2, "app-config", &[("a", "10")]).await;

    let replika =
        wait_for_condition(&client, &src, "app", "Ready", "True", "AllTargetsSynced").await;
    let targets = replika
        .status
        .and_then(|s| s.targets)
        .expect("target counts");
    assert_eq!(
        (
            targets.desired,
            targets.synced,
            targets.conflicts,
            targets.failed
        ),
        (2, 2, 0, 0)
    );
}

/// Waits until the Replika `namespace/name` counts `(desired, synced, conflicts)` targets.
async fn wait_for_counts(client: &Client, namespace: &str, name: &str, counts: (u32, u32, u32)) {
    wait_for(
        &format!("{namespace}/{name} to count (desired, synced, conflicts) = {counts:?}"),
        DEADLINE,
        || async {
            let targets = get_replika(client, namespace, name).await.status?.targets?;
            ((targets.desired, targets.synced, targets.conflicts) == counts).then_some(())
        },
    )
    .await;
}

/// With an hour between resyncs, nothing but the change itself can make a
/// pass act: a namespace created, relabelled, an object in the way removed,
/// a copy deleted or edited — each is handled where it happened, at once, and
/// the status still counts every target.
#[tokio::test]
async fn a_change_in_one_namespace_is_handled_at_once_and_counted() {
    let h = harness();
    let client = h.admin().await;
    let src = namespace(&client, "narrow-src").await;
    create_configmap(&client, &src, "narrow", &[("k", "v")]).await;
    let (key, label) = ("replika.test/narrow", format!("narrow-{src}"));
    let first = labelled_namespace(&client, "narrow-a", key, &label).await;
    let targets = format!("{{matchAll: false, selector: {{matchLabels: {{{key}: {label}}}}}}}");
    let manifest = replika_yaml("narrow", &src, "ConfigMap", "narrow", &targets, "{}");
    h.kubectl_apply(&manifest.replace("time: \"30s\"", "time: \"1h\""));
    wait_for_copy(&client, &first, "narrow", &[("k", "v")]).await;
    wait_for_counts(&client, &src, "narrow", (1, 1, 0)).await;

    // A namespace created into the selector gets its copy.
    let second = labelled_namespace(&client, "narrow-b", key, &label).await;
    wait_for_copy(&client, &second, "narrow", &[("k", "v")]).await;
    wait_for_counts(&client, &src, "narrow", (2, 2, 0)).await;

    // One labelled into it with someone else's object in the way: a conflict, listed.
    let third = namespace(&client, "narrow-c").await;
    create_configmap(&client, &third, "narrow", &[("k", "theirs")]).await;
    let namespaces = Api::<Namespace>::all(client.clone());
    let set_label = |ns: String, value: Option<String>| {
        let namespaces = namespaces.clone();
        async move {
            let patch = json!({"metadata": {"labels": {key: value}}});
            namespaces
                .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("labelling a namespace");
        }
    };
    set_label(third.clone(), Some(label.clone())).await;
    wait_for_counts(&client, &src, "narrow", (3, 2, 1)).await;
    let failures = get_replika(&client, &src, "narrow")
        .await
        .status
        .expect("status")
        .failures;
    assert_eq!(
        failures
            .iter()
            .map(|f| (f.namespace.as_str(), f.reason.as_str()))
            .collect::<Vec<_>>(),
        [(third.as_str(), "Conflict")]
    );

    // Their object removed, the copy takes its place.
    let configmaps = |ns: &str| Api::<ConfigMap>::namespaced(client.clone(), ns);
    configmaps(&third)
        .delete("narrow", &DeleteParams::default())
        .await
        .expect("deleting their object");
    wait_for_copy(&client, &third, "narrow", &[("k", "v")]).await;
    wait_for_counts(&client, &src, "narrow", (3, 3, 0)).await;

    // A copy deleted by hand comes back; one edited by hand is restored.
    let deleted = get_configmap(&client, &first, "narrow")
        .await
        .expect("the copy");
    configmaps(&first)
        .delete("narrow", &DeleteParams::default())
        .await
        .expect("deleting a copy");
    wait_for("the deleted copy to be made again", DEADLINE, || async {
        let copy = get_configmap(&client, &first, "narrow").await?;
        (copy.uid() != deleted.uid()).then_some(())
    })
    .await;
    configmaps(&second)
        .patch(
            "narrow",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "edited"}})),
        )
        .await
        .expect("editing a copy");
    wait_for_copy(&client, &second, "narrow", &[("k", "v")]).await;

    // Labelled out: loses its copy, and the counts follow.
    set_label(first.clone(), None).await;
    wait_for_absence(&client, &first, "narrow").await;
    wait_for_counts(&client, &src, "narrow", (2, 2, 0)).await;
}

#[tokio::test]
async fn namespaces_entering_and_leaving_the_target_set() {
    let h = harness();
    let client = h.admin().await;
    let src = namespace(&client, "sel-src").await;
    create_configmap(&client, &src, "tiered", &[("k", "v")]).await;
    let label = format!("tier-{src}");
    let selector = |excluded: &str| {
        format!(
            "{{matchAll: false, excludeFrom: [{excluded}], selector: {{matchLabels: {{replika.test/tier: {label}}}}}}}"
        )
    };
    h.kubectl_apply(&replika_yaml(
        "tiered",
        &src,
        "ConfigMap",
        "tiered",
        &selector("kube-system"),
        "{}",
    ));
    let namespaces = Api::<Namespace>::all(client.clone());
    let set_label = |ns: String, value: Option<String>| {
        let namespaces = namespaces.clone();
        async move {
            let patch = json!({"metadata": {"labels": {"replika.test/tier": value}}});
            namespaces
                .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("labelling a namespace");
        }
    };

    // Created after the Replika, and labelled into the selector: gets a copy.
    let late = namespace(&client, "sel-late").await;
    set_label(late.clone(), Some(label.clone())).await;
    wait_for_copy(&client, &late, "tiered", &[("k", "v")]).await;

    // Labelled later: gets a copy. Unlabelled: none.
    let other = namespace(&client, "sel-other").await;
    let unlabelled = namespace(&client, "sel-none").await;
    set_label(other.clone(), Some(label.clone())).await;
    wait_for_copy(&client, &other, "tiered", &[("k", "v")]).await;
    wait_for(
        "both labelled namespaces counted as synced targets",
        DEADLINE,
        || async {
            let targets = get_replika(&client, &src, "tiered").await.status?.targets?;
            (targets.desired == 2 && targets.synced == 2).then_some(())
        },
    )
    .await;
    assert!(
        get_configmap(&client, &unlabelled, "tiered")
            .await
            .is_none()
    );

    // Relabelled out: loses its copy.
    set_label(late.clone(), None).await;
    wait_for_absence(&client, &late, "tiered").await;

    // Newly excluded: loses its copy.
    h.kubectl_apply(&replika_yaml(
        "tiered",
        &src,
        "ConfigMap",
        "tiered",
        &selector(&other),
        "{}",
    ));
    wait_for_absence(&client, &other, "tiered").await;
}

#[tokio::test]
async fn an_object_replika_does_not_own_is_left_untouched_and_reported() {
    let h = harness();
    let client = h.admin().await;
    let src = namespace(&client, "own-src").await;
    let (taken, free) = (
        namespace(&client, "own-taken").await,
        namespace(&client, "own-free").await,
    );
    create_configmap(&client, &src, "settings", &[("from", "source")]).await;
    let theirs = create_configmap(&client, &taken, "settings", &[("from", "someone-else")]).await;
    h.kubectl_apply(&replika_yaml(
        "settings",
        &src,
        "ConfigMap",
        "settings",
        &list_targets(&[&taken, &free]),
        "{}",
    ));

    wait_for_copy(&client, &free, "settings", &[("from", "source")]).await;
    let replika = wait_for_condition(&client, &src, "settings", "Ready", "False", "Conflict").await;
    let status = replika.status.expect("status");
    assert_eq!(
        status.targets.map(|t| (t.synced, t.conflicts)),
        Some((1, 1))
    );
    assert_eq!(status.failures.len(), 1);
    assert_eq!(
        (
            status.failures[0].namespace.as_str(),
            status.failures[0].reason.as_str()
        ),
        (taken.as_str(), "Conflict")
    );
    let after = get_configmap(&client, &taken, "settings")
        .await
        .expect("their object");
    assert_eq!(
        after.resource_version(),
        theirs.resource_version(),
        "the object was modified"
    );
    assert_eq!(
        serde_json::to_value(&after).ok(),
        serde_json::to_value(&theirs).ok()
    );

    // With policy.conflict: Adopt the object is taken over.
    h.kubectl_apply(&replika_yaml(
        "settings",
        &src,
        "ConfigMap",
        "settings",
        &list_targets(&[&taken, &free]),
        "{conflict: Adopt}",
    ));
    wait_for_copy(&client, &taken, "settings", &[("from", "source")]).await;
    wait_for_condition(
        &client,
        &src,
        "settings",
        "Ready",
        "True",
        "AllTargetsSynced",
    )
    .await;
}

#[tokio::test]
async fn same_named_replikas_in_two_namespaces_keep_to_their_own_copies() {
    let h = harness();
    let client = h.admin().await;
    let (s1, s2) = (
        namespace(&client, "twin-one").await,
        namespace(&client, "twin-two").await,
    );
    let (t1, t2, both) = (
        namespace(&client, "twin-t1").await,
        namespace(&client, "twin-t2").await,
        namespace(&client, "twin-both").await,
    );
    create_configmap(&client, &s1, "shared", &[("owner", "one")]).await;
    create_configmap(&client, &s2, "shared", &[("owner", "two")]).await;
    h.kubectl_apply(&replika_yaml(
        "same",
        &s1,
        "ConfigMap",
        "shared",
        &list_targets(&[&t1, &both]),
        "{}",
    ));
    wait_for_copy(&client, &both, "shared", &[("owner", "one")]).await;
    h.kubectl_apply(&replika_yaml(
        "same",
        &s2,
        "ConfigMap",
        "shared",
        &list_targets(&[&t2, &both]),
        "{}",
    ));
    wait_for_copy(&client, &t2, "shared", &[("owner", "two")]).await;

    // The first owner keeps the contested copy; the second reports the conflict.
    let second = wait_for_condition(&client, &s2, "same", "Ready", "False", "Conflict").await;
    let failure = &second.status.expect("status").failures[0];
    assert_eq!(failure.namespace, both);
    assert!(
        failure.message.contains(&format!("{s1}/same")),
        "{}",
        failure.message
    );
    wait_for_copy(&client, &both, "shared", &[("owner", "one")]).await;

    // Deleting the first removes exactly its copies; the second then takes the free namespace.
    delete_replika(&client, &s1, "same").await;
    wait_for_absence(&client, &t1, "shared").await;
    wait_for_copy(&client, &both, "shared", &[("owner", "two")]).await;
    let copy = get_configmap(&client, &t2, "shared")
        .await
        .expect("the second Replika's copy");
    assert_eq!(
        data_of(&copy),
        vec![("owner".to_string(), "two".to_string())]
    );
}

#[tokio::test]
async fn deletion_policies_for_the_replika_and_the_source() {
    let h = harness();
    let client = h.admin().await;
    let src = namespace(&client, "del-src").await;
    let target = namespace(&client, "del-target").await;
    for name in ["orphaned", "retained", "removed"] {
        create_configmap(&client, &src, name, &[("k", name)]).await;
    }
    let targets = list_targets(&[&target]);
    h.kubectl_apply(&replika_yaml(
        "orphaned",
        &src,
        "ConfigMap",
        "orphaned",
        &targets,
        "{onReplikaDeleted: Orphan}",
    ));
    h.kubectl_apply(&replika_yaml(
        "retained",
        &src,
        "ConfigMap",
        "retained",
        &targets,
        "{}",
    ));
    h.kubectl_apply(&replika_yaml(
        "removed",
        &src,
        "ConfigMap",
        "removed",
        &targets,
        "{onSourceDeleted: Delete}",
    ));
    for name in ["orphaned", "retained", "removed"] {
        wait_for_copy(&client, &target, name, &[("k", name)]).await;
    }

    // onReplikaDeleted: Orphan leaves the copy, no longer marked as Replika's.
    delete_replika(&client, &src, "orphaned").await;
    let orphan = get_configmap(&client, &target, "orphaned")
        .await
        .expect("the orphaned copy");
    assert!(!orphan.labels().contains_key(LABEL_CREATED_BY));
    assert!(!orphan.annotations().contains_key(ANNOTATION_OWNER_UID));

    // onSourceDeleted: Retain (the default) keeps the copy; Delete removes it.
    let sources = Api::<ConfigMap>::namespaced(client.clone(), &src);
    for name in ["retained", "removed"] {
        sources
            .delete(name, &DeleteParams::default())
            .await
            .expect("deleting a source");
    }
    wait_for_condition(
        &client,
        &src,
        "retained",
        "SourceSynced",
        "False",
        "SourceNotFound",
    )
    .await;
    wait_for_absence(&client, &target, "removed").await;
    assert!(get_configmap(&client, &target, "retained").await.is_some());
}

#[tokio::test]
async fn immutable_copies_are_replaced_when_the_source_changes() {
    let h = harness();
    let client = h.admin().await;
    let src = namespace(&client, "imm-src").await;
    let target = namespace(&client, "imm-target").await;
    let immutable = |value: &str| -> ConfigMap {
        serde_json::from_value(
            json!({"metadata": {"name": "frozen"}, "immutable": true, "data": {"v": value}}),
        )
        .expect("a ConfigMap")
    };
    let sources = Api::<ConfigMap>::namespaced(client.clone(), &src);
    sources
        .create(&PostParams::default(), &immutable("1"))
        .await
        .expect("creating the source");
    h.kubectl_apply(&replika_yaml(
        "frozen",
        &src,
        "ConfigMap",
        "frozen",
        &list_targets(&[&target]),
        "{}",
    ));
    wait_for_copy(&client, &target, "frozen", &[("v", "1")]).await;
    sources
        .delete("frozen", &DeleteParams::default())
        .await
        .expect("deleting the source");
    sources
        .create(&PostParams::default(), &immutable("2"))
        .await
        .expect("re-creating the source");
    wait_for_copy(&client, &target, "frozen", &[("v", "2")]).await;
    let copy = get_configmap(&client, &target, "frozen")
        .await
        .expect("the copy");
    assert_eq!(copy.immutable, Some(true));
}

#[tokio::test]
async fn secrets_are_copied_with_their_type_but_service_account_tokens_never() {
    let h = harness();
    let client = h.admin().await;
    let src = namespace(&client, "sec-src").await;
    let target = namespace(&client, "sec-target").await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &src);
    let registry: Secret = serde_json::from_value(json!({
        "metadata": {"name": "registry-creds", "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": "{\"auths\":{}}"}
    }))
    .expect("a Secret");
    secrets
        .create(&PostParams::default(), &registry)
        .await
        .expect("creating the Secret");
    h.kubectl_apply(&replika_yaml(
        "registry",
        &src,
        "Secret",
        "registry-creds",
        &list_targets(&[&target]),
        "{}",
    ));
    let copies = Api::<Secret>::namespaced(client.clone(), &target);
    let copy = wait_for("the Secret copy", DEADLINE, || async {
        copies.get_opt("registry-creds").await.ok().flatten()
    })
    .await;
    assert_eq!(
        copy.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    assert_eq!(
        copy.data,
        secrets
            .get("registry-creds")
            .await
            .expect("the source")
            .data
    );
    assert!(
        !copy
            .annotations()
            .contains_key("kubectl.kubernetes.io/last-applied-configuration")
    );

    let token: Secret = serde_json::from_value(json!({
        "metadata": {"name": "sa-token", "annotations": {"kubernetes.io/service-account.name": "default"}},
        "type": "kubernetes.io/service-account-token"
    }))
    .expect("a Secret");
    secrets
        .create(&PostParams::default(), &token)
        .await
        .expect("creating the token Secret");
    h.kubectl_apply(&replika_yaml(
        "token",
        &src,
        "Secret",
        "sa-token",
        &list_targets(&[&target]),
        "{}",
    ));
    let message = wait_until_blocked(&client, &src, "token", "SourceNotCopyable").await;
    assert!(message.contains("service-account-token"), "{message}");
    assert!(copies.get_opt("sa-token").await.expect("reading").is_none());
}

#[tokio::test]
async fn a_custom_kind_replicates_once_the_operator_is_granted_it() {
    let h = harness();
    let client = h.admin().await;
    h.kubectl_apply(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: alertconfigs.monitoring.replika.test
spec:
  group: monitoring.replika.test
  names: {kind: AlertConfig, plural: alertconfigs, singular: alertconfig}
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#,
    );
    if let Err(error) = h.plane.kubectl_wait(
        &[
            "--for=condition=Established",
            "crd/alertconfigs.monitoring.replika.test",
        ],
        Duration::from_secs(30),
    ) {
        panic!("the CRD was not established: {error}");
    }
    let src = namespace(&client, "crd-src").await;
    let target = namespace(&client, "crd-target").await;
    h.kubectl_apply(&format!(
        r##"
apiVersion: monitoring.replika.test/v1alpha1
kind: AlertConfig
metadata: {{name: slack, namespace: {src}}}
spec: {{receiver: slack, channel: "#alerts"}}
---
apiVersion: replika.prosimcorp.com/v1beta1
kind: Replika
metadata: {{name: alerts, namespace: {src}}}
spec:
  synchronization: {{time: 30s}}
  source: {{group: monitoring.replika.test, version: v1alpha1, kind: AlertConfig, name: slack}}
  target:
    namespaces: {{matchAll: false, replicateIn: [{target}]}}
"##
    ));
    let message = wait_until_blocked(&client, &src, "alerts", "Forbidden").await;
    assert!(message.contains("AlertConfig"), "{message}");

    // The additive ClusterRole the README documents, for this kind.
    h.kubectl_apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: replika-alertconfigs}
rules:
- apiGroups: [monitoring.replika.test]
  resources: [alertconfigs]
  verbs: [get, list, watch, create, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: replika-alertconfigs}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: replika-alertconfigs}
subjects:
- {kind: ServiceAccount, name: replika-controller-manager, namespace: replika}
"#,
    );
    wait_for_condition(&client, &src, "alerts", "Ready", "True", "AllTargetsSynced").await;
    let (resource, _) = pinned_kind(
        &client,
        &GroupVersionKind::gvk("monitoring.replika.test", "v1alpha1", "AlertConfig"),
    )
    .await
    .expect("the kind is served");
    let copy = Api::<DynamicObject>::namespaced_with(client.clone(), &target, &resource)
        .get("slack")
        .await
        .expect("the copy");
    assert_eq!(
        copy.data["spec"],
        json!({"receiver": "slack", "channel": "#alerts"})
    );
}

#[tokio::test]
async fn a_spec_that_slips_past_admission_gets_an_invalid_condition() {
    let h = harness();
    let client = h.admin().await;
    let src = namespace_without_admission(&client, "bad-src").await;
    h.kubectl_apply(&format!(
        r#"
apiVersion: replika.prosimcorp.com/v1beta1
kind: Replika
metadata: {{name: broken, namespace: {src}}}
spec:
  synchronization: {{time: banana}}
  source: {{group: "", version: v1, kind: ConfigMap, name: whatever}}
  target:
    namespaces: {{matchAll: false, replicateIn: [Not_A_Namespace]}}
"#
    ));
    let message = wait_until_blocked(&client, &src, "broken", "Invalid").await;
    assert!(
        message.contains("spec.synchronization.time: \"banana\""),
        "{message}"
    );
    assert!(
        message.contains("replicateIn[0]: \"Not_A_Namespace\""),
        "{message}"
    );

    // The operator is still healthy: a good Replika next to it works.
    replicated_configmap(h, &client, "good", "fine", &[("ok", "yes")]).await;
}

#[tokio::test]
async fn a_replika_that_bypassed_admission_copies_nothing() {
    let h = harness();
    let client = h.admin().await;
    let (src, target) = (
        namespace_without_admission(&client, "unsigned-src").await,
        namespace(&client, "unsigned-target").await,
    );
    create_configmap(&client, &src, "settings", &[("k", "v")]).await;
    // Stored without the webhook, so without a signed author; a forged one is no better.
    let forged = replika_yaml("settings", &src, "ConfigMap", "settings", &list_targets(&[&target]), "{}")
        .replace(
            &format!("  namespace: {src}\n"),
            &format!("  namespace: {src}\n  annotations:\n    replika.prosimcorp.com/author: '{{\"username\":\"system:admin\"}}'\n    replika.prosimcorp.com/author-signature: v1:00\n"),
        );
    h.kubectl_apply(&forged);
    let message = wait_until_blocked(&client, &src, "settings", "AuthorUnverified").await;
    assert!(
        message.contains("was changed without Replika's webhook"),
        "{message}"
    );
    assert!(get_configmap(&client, &target, "settings").await.is_none());
}

#[tokio::test]
async fn a_replika_stops_when_its_author_loses_the_rights() {
    let h = harness();
    let client = h.admin().await;
    let (src, target) = (
        namespace(&client, "revoked-src").await,
        namespace(&client, "revoked-target").await,
    );
    create_configmap(&client, &src, "settings", &[("k", "one")]).await;
    // Carol may read the source and write ConfigMaps in the target, and create Replikas.
    let grant = |namespace: &str, verbs: &str| {
        format!(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: carol, namespace: {namespace}}}
rules:
  - {{apiGroups: [""], resources: [configmaps], verbs: [{verbs}]}}
  - {{apiGroups: [replika.prosimcorp.com], resources: [replikas], verbs: [get, create, patch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: carol, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: carol}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: carol}}]
"#
        )
    };
    h.kubectl_apply(&grant(&src, "get"));
    h.kubectl_apply(&grant(&target, "create, update, delete"));
    let carol = h.plane.user("carol", &[]).await;
    let manifest = std::env::temp_dir().join(format!("replika-carol-{}.yaml", std::process::id()));
    std::fs::write(
        &manifest,
        replika_yaml(
            "settings",
            &src,
            "ConfigMap",
            "settings",
            &list_targets(&[&target]),
            "{}",
        ),
    )
    .expect("writing the manifest");
    let applied = run(carol.kubectl().args(["apply", "-f"]).arg(&manifest));
    assert!(
        applied.status_ok,
        "carol may create the Replika: {}",
        applied.stderr
    );
    wait_for_copy(&client, &target, "settings", &[("k", "one")]).await;

    // Carol may no longer read the source: the next sync copies nothing more.
    h.kubectl_apply(&grant(&src, "list"));
    Api::<ConfigMap>::namespaced(client.clone(), &src)
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "two"}})),
        )
        .await
        .expect("updating the source");
    let message = wait_until_blocked(&client, &src, "settings", "AuthorNotAuthorized").await;
    assert!(
        message.contains("carol may not get configmaps \"settings\""),
        "{message}"
    );
    let copy = get_configmap(&client, &target, "settings")
        .await
        .expect("the copy is kept");
    assert_eq!(data_of(&copy), [("k".to_string(), "one".to_string())]);
}

#[tokio::test]
async fn a_replika_created_with_generate_name_replicates() {
    let h = harness();
    let client = h.admin().await;
    let (src, target) = (
        namespace(&client, "generated-src").await,
        namespace(&client, "generated-target").await,
    );
    create_configmap(&client, &src, "settings", &[("k", "v")]).await;
    // `kubectl create` with metadata.generateName: the API server makes the
    // name up after the webhooks have seen the request.
    let manifest = replika_yaml(
        "settings",
        &src,
        "ConfigMap",
        "settings",
        &list_targets(&[&target]),
        "{}",
    )
    .replace(
        "  name: settings\n  namespace:",
        "  generateName: settings-\n  namespace:",
    );
    let file = std::env::temp_dir().join(format!("replika-generated-{}.yaml", std::process::id()));
    std::fs::write(&file, &manifest).expect("writing the manifest");
    let created = run(h
        .plane
        .kubectl()
        .args(["create", "-o", "name", "-f"])
        .arg(&file));
    assert!(
        created.status_ok,
        "kubectl create failed: {}",
        created.stderr
    );
    let name = created
        .stdout
        .trim()
        .rsplit('/')
        .next()
        .expect("a name")
        .to_string();
    assert!(
        name.starts_with("settings-") && name.len() > "settings-".len(),
        "{name}"
    );
    wait_for_copy(&client, &target, "settings", &[("k", "v")]).await;
    wait_for_condition(&client, &src, &name, "Ready", "True", "AllTargetsSynced").await;
}

#[tokio::test]
async fn a_deleted_replika_keeps_its_finalizer_until_it_can_see_its_copies() {
    let h = harness();
    let client = h.admin().await;
    let (src, target) =
        replicated_configmap(h, &client, "cleanup", "settings", &[("k", "v")]).await;

    // Its spec is broken past admission, then it is deleted: the engine cannot
    // tell which kind its copies are, so it must not let go of them.
    let labels = json!({"metadata": {"labels": {NO_ADMISSION_LABEL: "true"}}});
    Api::<Namespace>::all(client.clone())
        .patch(&src, &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .expect("labelling the namespace");
    let replikas = Api::<replika::api::Replika>::namespaced(client.clone(), &src);
    let set_time = |time: &'static str| json!({"spec": {"synchronization": {"time": time}}});
    replikas
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(&set_time("banana")),
        )
        .await
        .expect("breaking the spec");
    replikas
        .delete("settings", &DeleteParams::default())
        .await
        .expect("deleting");
    let message = wait_until_blocked(&client, &src, "settings", "Invalid").await;
    assert!(message.contains("banana"), "{message}");
    assert!(
        get_configmap(&client, &target, "settings").await.is_some(),
        "the copy is still known"
    );

    // Once its spec is readable again, the cleanup completes.
    replikas
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(&set_time("30s")),
        )
        .await
        .expect("repairing the spec");
    wait_for_absence(&client, &target, "settings").await;
    wait_until_gone(&client, &src, "settings").await;
}

#[tokio::test]
async fn a_replika_adopts_the_copies_a_deleted_one_of_the_same_name_left() {
    let h = harness();
    let client = h.admin().await;
    let (src, target) = (
        namespace(&client, "successor-src").await,
        namespace(&client, "successor-target").await,
    );
    create_configmap(&client, &src, "settings", &[("k", "new")]).await;
    // A copy its predecessor (same namespace and name, another UID) left behind.
    let orphan: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "settings",
            "labels": {LABEL_CREATED_BY: "replika-controller", "replika.prosimcorp.com/part-of": "settings"},
            "annotations": {"replika.prosimcorp.com/owner": format!("{src}/settings"), ANNOTATION_OWNER_UID: "0f0e0d0c-dead-4bee-8f00-000000000000"},
        },
        "data": {"k": "old"},
    }))
    .expect("a ConfigMap");
    Api::<ConfigMap>::namespaced(client.clone(), &target)
        .create(&PostParams::default(), &orphan)
        .await
        .expect("the orphan is created");
    h.kubectl_apply(&replika_yaml(
        "settings",
        &src,
        "ConfigMap",
        "settings",
        &list_targets(&[&target]),
        "{}",
    ));
    wait_for_copy(&client, &target, "settings", &[("k", "new")]).await;
    let uid = get_replika(&client, &src, "settings")
        .await
        .uid()
        .expect("a UID");
    let copy = get_configmap(&client, &target, "settings")
        .await
        .expect("the copy");
    assert_eq!(copy.annotations().get(ANNOTATION_OWNER_UID), Some(&uid));
}
