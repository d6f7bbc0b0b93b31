//! Hostile input: specs that no webhook checked get a clear condition and
//! never a panic or a stuck queue, and the largest sources the API server
//! accepts are copied whole.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use replika::api::{ANNOTATION_OWNER_UID, Replika};
use serde_json::{Value, json};

use crate::checks::*;
use crate::harness::*;
use crate::support::*;

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
    converge_all_synced(&admin, &admitted_ns, "huge-resync", 1, &[&operator]).await;

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
    converge_all_synced(&admin, &admitted_ns, "after-them", 1, &[&operator]).await;
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

    assert_eq!(status_of(operator.port, "/healthz").await, Some(200));
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
        converge_all_synced(&admin, &source_ns, name, desired, &[&operator]).await;
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
