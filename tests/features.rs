//! The optional `v1beta1` additions against the real control plane, with the
//! operator under the RBAC of `deploy/` and the webhooks registered: copies
//! under another name, namespace consent, key filters, and `kubectl replika`
//! run by the real kubectl as a plugin. Each test works in namespaces of its own.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use replika::api::{ANNOTATION_ACCEPT_FROM, LABEL_REPLICATION, REPLICATION_DISABLED};
use serde_json::{Value, json};
use support::*;
use testenv::{CommandOutput, wait_for};

/// A ConfigMap Replika `name` in `source_ns` copying the ConfigMap `source`;
/// `target` is the body of `spec.target`.
fn configmap_replika(name: &str, source_ns: &str, source: &str, target: &str) -> String {
    replika_manifest(name, source_ns, "ConfigMap", source, target, "{}")
}

/// Patches the metadata of namespace `name` (a JSON merge patch).
async fn patch_namespace(client: &Client, name: &str, metadata: Value) {
    Api::<Namespace>::all(client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "metadata": metadata })),
        )
        .await
        .expect("patching a namespace");
}

/// Waits until the Replika reports `synced` of `desired` targets in sync.
async fn wait_for_counts(client: &Client, namespace: &str, name: &str, desired: u32, synced: u32) {
    wait_for(
        &format!("Replika {namespace}/{name} to count {synced} of {desired} in sync"),
        DEADLINE,
        || async {
            let replika = get_replika(client, namespace, name).await;
            let counts = replika.status?.targets?;
            (counts.desired == desired && counts.synced == synced).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn copies_take_the_target_name_and_renaming_removes_the_old_ones() {
    let h = harness();
    let client = h.admin().await;
    let src = namespace(&client, "rename-src").await;
    let target = namespace(&client, "rename-target").await;
    create_configmap(&client, &src, "settings", &[("k", "v1")]).await;
    create_configmap(&client, &src, "settings-v2", &[("k", "v2")]).await;
    let targets = format!("{{matchAll: false, replicateIn: [{target}]}}");

    h.kubectl_apply(&configmap_replika(
        "settings",
        &src,
        "settings",
        &format!("{{name: app-settings, namespaces: {targets}}}"),
    ));
    wait_for_copy(&client, &target, "app-settings", &[("k", "v1")]).await;
    assert!(
        get_configmap(&client, &target, "settings").await.is_none(),
        "only the target name is used"
    );

    // Renaming the copies removes the ones under the old name, as the plan says.
    let renamed = configmap_replika(
        "settings",
        &src,
        "settings",
        &format!("{{name: shared-settings, namespaces: {targets}}}"),
    );
    let planned = kubectl_replika(h, &["plan", "-f", "-", "-o", "json"], &renamed);
    assert_eq!(
        rows(&planned, "action"),
        [
            (target.clone(), "create".to_string()),
            (target.clone(), "prune".to_string())
        ],
        "{}",
        planned.stdout
    );
    assert!(
        planned
            .stdout
            .contains("made as ConfigMap app-settings before"),
        "{}",
        planned.stdout
    );
    h.kubectl_apply(&renamed);
    wait_for_copy(&client, &target, "shared-settings", &[("k", "v1")]).await;
    wait_for_absence(&client, &target, "app-settings").await;

    // So does a renamed source, whose name the copies take by default.
    h.kubectl_apply(&configmap_replika(
        "settings",
        &src,
        "settings-v2",
        &format!("{{namespaces: {targets}}}"),
    ));
    wait_for_copy(&client, &target, "settings-v2", &[("k", "v2")]).await;
    wait_for_absence(&client, &target, "shared-settings").await;
    // The status written after the pass records the copies' new name.
    wait_for("status.copies to name settings-v2", DEADLINE, || async {
        let copies = get_replika(&client, &src, "settings")
            .await
            .status?
            .copies?;
        (copies.kind == "ConfigMap" && copies.name == "settings-v2").then_some(())
    })
    .await;

    // A name that is not an object name is denied up front.
    let denied = kubectl_apply_output(
        h,
        &configmap_replika(
            "settings",
            &src,
            "settings-v2",
            &format!("{{name: Not_A_Name, namespaces: {targets}}}"),
        ),
    );
    assert!(
        !denied.status_ok && denied.stderr.contains("spec.target.name: \"Not_A_Name\""),
        "{}",
        denied.stderr
    );
}

/// `kubectl apply` of `yaml` as admin, returning what kubectl said.
fn kubectl_apply_output(h: &Harness, yaml: &str) -> CommandOutput {
    testenv::run_with_stdin(h.plane.kubectl().args(["apply", "-f", "-"]), yaml)
}

#[tokio::test]
async fn a_namespace_that_refuses_copies_gets_none_and_loses_the_one_it_had() {
    let h = harness();
    let client = h.admin().await;
    let src = namespace(&client, "refuse-src").await;
    let open = namespace(&client, "refuse-open").await;
    let closed = namespace(&client, "refuse-closed").await;
    create_configmap(&client, &src, "shared", &[("k", "v")]).await;
    h.kubectl_apply(&configmap_replika(
        "shared",
        &src,
        "shared",
        &format!("{{namespaces: {{matchAll: false, replicateIn: [{open}, {closed}]}}}}"),
    ));
    wait_for_copy(&client, &closed, "shared", &[("k", "v")]).await;
    wait_for_copy(&client, &open, "shared", &[("k", "v")]).await;

    patch_namespace(
        &client,
        &closed,
        json!({"labels": {LABEL_REPLICATION: REPLICATION_DISABLED}}),
    )
    .await;
    wait_for_absence(&client, &closed, "shared").await;
    wait_for_counts(&client, &src, "shared", 1, 1).await;
    assert!(get_configmap(&client, &open, "shared").await.is_some());

    // Lifting the refusal brings the copy back.
    patch_namespace(
        &client,
        &closed,
        json!({"labels": {LABEL_REPLICATION: null}}),
    )
    .await;
    wait_for_copy(&client, &closed, "shared", &[("k", "v")]).await;
}

#[tokio::test]
async fn an_opt_in_replika_reaches_only_namespaces_that_accept_its_source() {
    let h = harness();
    let client = h.admin().await;
    let src = namespace(&client, "optin-src").await;
    let label = format!("optin-{src}");
    let accepting = labelled_namespace(&client, "optin-accepting", &label, "yes").await;
    let by_glob = labelled_namespace(&client, "optin-glob", &label, "yes").await;
    let silent = labelled_namespace(&client, "optin-silent", &label, "yes").await;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "tls"},
        "data": {"tls.crt": "Y3J0"},
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(client.clone(), &src)
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the source Secret");
    patch_namespace(
        &client,
        &accepting,
        json!({"annotations": {ANNOTATION_ACCEPT_FROM: format!("{src}/tls")}}),
    )
    .await;
    patch_namespace(
        &client,
        &by_glob,
        json!({"annotations": {ANNOTATION_ACCEPT_FROM: format!("other/x, {src}/*")}}),
    )
    .await;
    let manifest = |opt_in: bool| {
        let target = format!(
            "{{namespaces: {{matchAll: false, selector: {{matchLabels: {{{label}: \"yes\"}}}}, requireOptIn: {opt_in}}}}}"
        );
        replika_manifest("tls", &src, "Secret", "tls", &target, "{}")
    };

    // Without opt-in, admission warns that labels alone decide.
    let dry_run = testenv::run_with_stdin(
        h.plane
            .kubectl()
            .args(["apply", "--dry-run=server", "-f", "-"]),
        &manifest(false),
    );
    assert!(dry_run.status_ok, "{}", dry_run.stderr);
    assert!(
        dry_run.stderr.contains("Warning:") && dry_run.stderr.contains("requireOptIn"),
        "{}",
        dry_run.stderr
    );

    let applied = kubectl_apply_output(h, &manifest(true));
    assert!(applied.status_ok, "{}", applied.stderr);
    assert!(!applied.stderr.contains("Warning:"), "{}", applied.stderr);
    let holders = || async {
        let mut holders = BTreeSet::new();
        for namespace in [&accepting, &by_glob, &silent] {
            let found = Api::<Secret>::namespaced(client.clone(), namespace)
                .get_opt("tls")
                .await
                .expect("reading a Secret");
            if found.is_some() {
                holders.insert(namespace.clone());
            }
        }
        holders
    };
    let wait_for_holders = |wanted: BTreeSet<String>| {
        let holders = &holders;
        async move {
            wait_for(
                &format!("copies in exactly {wanted:?}"),
                DEADLINE,
                || async { (holders().await == wanted).then_some(()) },
            )
            .await
        }
    };
    wait_for_holders(BTreeSet::from([accepting.clone(), by_glob.clone()])).await;
    wait_for_counts(&client, &src, "tls", 2, 2).await;

    // Consent given later brings the copy; consent withdrawn removes it.
    patch_namespace(
        &client,
        &silent,
        json!({"annotations": {ANNOTATION_ACCEPT_FROM: format!("{src}/tls")}}),
    )
    .await;
    patch_namespace(
        &client,
        &accepting,
        json!({"annotations": {ANNOTATION_ACCEPT_FROM: null}}),
    )
    .await;
    wait_for_holders(BTreeSet::from([by_glob.clone(), silent.clone()])).await;
}

/// The data keys of the Secret `namespace/name`, if it exists.
async fn secret_keys(client: &Client, namespace: &str, name: &str) -> Option<Vec<String>> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .expect("reading a Secret")?;
    Some(secret.data.unwrap_or_default().into_keys().collect())
}

#[tokio::test]
async fn key_filters_shape_every_copy_and_a_key_dropped_from_include_vanishes() {
    let h = harness();
    let client = h.admin().await;
    let src = namespace(&client, "keys-src").await;
    let targets = [
        namespace(&client, "keys-a").await,
        namespace(&client, "keys-b").await,
    ];
    let data: std::collections::BTreeMap<String, ByteString> = ["tls.crt", "tls.key", "ca.crt"]
        .iter()
        .map(|key| (key.to_string(), ByteString(key.as_bytes().to_vec())))
        .collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("certs".into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &src)
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the source Secret");
    let manifest = |data: &str| {
        let target = format!(
            "{{namespaces: {{matchAll: false, replicateIn: [{}]}}, data: {data}}}",
            targets.join(", ")
        );
        replika_manifest("certs", &src, "Secret", "certs", &target, "{}")
    };
    let wait_for_keys = |wanted: &'static [&'static str]| {
        let (client, targets) = (&client, &targets);
        async move {
            for target in targets {
                wait_for(
                    &format!("{target}/certs to hold exactly {wanted:?}"),
                    DEADLINE,
                    || async {
                        let keys = secret_keys(client, target, "certs").await?;
                        (keys == wanted).then_some(())
                    },
                )
                .await;
            }
        }
    };

    h.kubectl_apply(&manifest(r#"{include: ["tls.*"], exclude: ["*.key"]}"#));
    wait_for_keys(&["tls.crt"]).await;
    h.kubectl_apply(&manifest(r#"{include: ["tls.*", "ca.crt"]}"#));
    wait_for_keys(&["ca.crt", "tls.crt", "tls.key"]).await;
    h.kubectl_apply(&manifest(r#"{include: ["ca.crt"]}"#));
    wait_for_keys(&["ca.crt"]).await;

    // An include that names nothing is denied, naming the field.
    let denied = kubectl_apply_output(h, &manifest(r#"{include: []}"#));
    assert!(
        !denied.status_ok
            && denied
                .stderr
                .contains("spec.target.data.include: must name at least one key"),
        "{}",
        denied.stderr
    );
}

/// A folder holding `kubectl-replika`, the test build of the operator's binary
/// under the name kubectl looks for, as a user installs it.
fn plugin_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("replika-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a plugin folder");
    let link = dir.join(replika::plugin::PLUGIN_BINARY);
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_replika"), &link).expect("the plugin link");
    }
    dir
}

/// `kubectl replika ARGS`, run by the real kubectl (which passes no flags to
/// plugins: the kubeconfig comes from `KUBECONFIG`), with `stdin` as input.
fn kubectl_replika(h: &Harness, args: &[&str], stdin: &str) -> CommandOutput {
    let path = format!(
        "{}:{}",
        plugin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut kubectl = Command::new(h.plane.bin_dir().join("kubectl"));
    kubectl
        .arg("replika")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", h.plane.kubeconfig_path());
    testenv::run_with_stdin(&mut kubectl, stdin)
}

/// The (namespace, action or state) pairs of a plugin's JSON answer.
fn rows(output: &CommandOutput, field: &str) -> Vec<(String, String)> {
    assert!(
        output.status_ok,
        "kubectl replika failed: {}",
        output.stderr
    );
    let answer: Value = serde_json::from_str(&output.stdout).expect("JSON output");
    answer["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .map(|row| {
            (
                row["namespace"].as_str().unwrap_or_default().to_string(),
                row[field].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn kubectl_replika_plan_predicts_what_the_engine_then_does() {
    let h = harness();
    let client = h.admin().await;
    let src = namespace(&client, "plan-src").await;
    let [pruned, updated, taken, added] = [
        namespace(&client, "plan-pruned").await,
        namespace(&client, "plan-updated").await,
        namespace(&client, "plan-taken").await,
        namespace(&client, "plan-added").await,
    ];
    create_configmap(&client, &src, "app", &[("k", "v")]).await;
    create_configmap(&client, &taken, "app", &[("mine", "yes")]).await;
    let manifest = |targets: &[&str], labels: &str| {
        configmap_replika(
            "app",
            &src,
            "app",
            &format!(
                "{{namespaces: {{matchAll: false, replicateIn: [{}]}}, metadata: {{labels: {labels}}}}}",
                targets.join(", ")
            ),
        )
    };
    let first = manifest(&[&pruned, &updated], "{}");
    let as_pairs = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(ns, action)| (ns.to_string(), action.to_string()))
            .collect()
    };

    // A Replika not created yet: every target is a create.
    let planned = kubectl_replika(h, &["plan", "-f", "-", "-o", "json"], &first);
    let mut expected = as_pairs(&[(&pruned, "create"), (&updated, "create")]);
    expected.sort();
    assert_eq!(rows(&planned, "action"), expected);
    assert!(
        get_configmap(&client, &updated, "app").await.is_none(),
        "a plan writes nothing"
    );
    h.kubectl_apply(&first);
    wait_for_counts(&client, &src, "app", 2, 2).await;

    // A change with a create, an update, a conflict and a prune.
    let second = manifest(&[&updated, &taken, &added], "{tier: shared}");
    let planned = kubectl_replika(h, &["plan", "-f", "-", "-o", "json"], &second);
    let mut expected = as_pairs(&[
        (&pruned, "prune"),
        (&updated, "update"),
        (&taken, "conflict"),
        (&added, "create"),
    ]);
    expected.sort();
    assert_eq!(rows(&planned, "action"), expected, "{}", planned.stdout);
    let table = kubectl_replika(h, &["plan", "-f", "-"], &second);
    assert!(table.status_ok, "{}", table.stderr);
    assert!(
        table.stdout.contains("NAMESPACE") && !table.stdout.contains('\x1b'),
        "a table without colour when not on a terminal:\n{}",
        table.stdout
    );

    // What the engine then does is what the plan said.
    h.kubectl_apply(&second);
    wait_for_counts(&client, &src, "app", 3, 2).await;
    wait_for_absence(&client, &pruned, "app").await;
    for namespace in [&updated, &added] {
        let copy = get_configmap(&client, namespace, "app")
            .await
            .expect("a copy");
        assert_eq!(
            copy.metadata
                .labels
                .unwrap_or_default()
                .get("tier")
                .map(String::as_str),
            Some("shared"),
            "{namespace}"
        );
    }
    let users = get_configmap(&client, &taken, "app")
        .await
        .expect("the user's object");
    assert_eq!(data_of(&users), [("mine".to_string(), "yes".to_string())]);

    // Status says where each namespace stands; a plan of the stored Replika changes nothing.
    let status = kubectl_replika(h, &["status", "app", "-n", &src, "-o", "json"], "");
    let mut expected = as_pairs(&[
        (&updated, "synced"),
        (&taken, "conflict"),
        (&added, "synced"),
    ]);
    expected.sort();
    assert_eq!(rows(&status, "state"), expected, "{}", status.stdout);
    let answer: Value = serde_json::from_str(&status.stdout).expect("JSON");
    let conflict = answer["namespaces"]
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["state"] == "conflict"))
        .expect("the conflict row");
    assert!(
        conflict["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("not managed by Replika")),
        "the conflict says whose object it is: {conflict}"
    );
    let replanned = kubectl_replika(h, &["plan", "app", "-n", &src, "-o", "yaml"], "");
    assert!(replanned.status_ok, "{}", replanned.stderr);
    assert!(
        replanned.stdout.contains("action: unchanged")
            && !replanned.stdout.contains("action: create")
            && !replanned.stdout.contains("action: update"),
        "{}",
        replanned.stdout
    );

    // Errors are named: a Replika that does not exist, an invalid manifest.
    let missing = kubectl_replika(h, &["status", "absent", "-n", &src], "");
    assert!(
        !missing.status_ok
            && missing
                .stderr
                .contains(&format!("no Replika {src}/absent exists")),
        "{}",
        missing.stderr
    );
    let invalid = kubectl_replika(
        h,
        &["plan", "-f", "-"],
        &configmap_replika(
            "bad",
            &src,
            "app",
            "{namespaces: {matchAll: false, replicateIn: [Bad]}}",
        ),
    );
    assert!(
        !invalid.status_ok && invalid.stderr.contains("replicateIn[0]: \"Bad\""),
        "{}",
        invalid.stderr
    );
}
