//! The Helm chart: it renders the objects of the bundles (Helm's own labels
//! aside), ships the CRD of `deploy/base`, its options without a Kustomize
//! counterpart render what they say, and what it renders applies cleanly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use testenv::{ControlPlane, run, run_with_stdin};

use crate::tools::{
    RemoveWebhooksOnDrop, apply_server_side, apply_server_side_stdin, cluster_lock, helm,
    install_cert_manager_crds, install_prometheus_operator_crds, kustomize, read, repo, yaml_docs,
};

/// Labels Helm's conventions add (see the chart's `replika.labels`), dropped
/// before comparing the chart's objects with the bundles'.
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
];

/// `helm template` with default values renders the objects of the self-managed
/// bundle, and with `certificates.mode=cert-manager` those of the cert-manager
/// bundle: same kinds, namespaces, names and content once Helm's own labels
/// are dropped. Only the Namespace differs: Helm installs into a namespace it
/// is given (`--namespace replika --create-namespace`) and does not own it.
#[test]
fn helm_chart_renders_the_objects_of_the_bundles_and_applies_cleanly() {
    let plane = ControlPlane::shared();
    let helm = helm();
    let mut renders = Vec::new();
    for (overlay, values) in [
        ("self-managed", &[][..]),
        (
            "cert-manager",
            &["--set", "certificates.mode=cert-manager"][..],
        ),
    ] {
        let kustomized = kustomize(plane, &format!("deploy/overlays/{overlay}"));
        let chart_text = helm_template(&helm, values);
        let from_chart = by_identity(yaml_docs(&chart_text).into_iter().map(drop_helm_labels));
        let mut from_kustomize = by_identity(yaml_docs(&kustomized));
        from_kustomize.retain(|(_, kind, _, _), _| kind != "Namespace");

        let only_chart: Vec<_> = from_chart
            .keys()
            .filter(|k| !from_kustomize.contains_key(*k))
            .collect();
        let only_kustomize: Vec<_> = from_kustomize
            .keys()
            .filter(|k| !from_chart.contains_key(*k))
            .collect();
        assert!(
            only_chart.is_empty() && only_kustomize.is_empty(),
            "{overlay}: the chart and the bundle differ in objects:\n  only in the chart: \
             {only_chart:?}\n  only in the bundle: {only_kustomize:?}"
        );
        for (identity, expected) in &from_kustomize {
            if let Some(difference) = first_difference(&from_chart[identity], expected, "") {
                panic!(
                    "{overlay}: {identity:?} differs between the chart and the bundle: {difference}"
                );
            }
        }
        renders.push((overlay, chart_text));
    }

    let _cluster = cluster_lock();
    let _webhooks = RemoveWebhooksOnDrop(plane);
    install_cert_manager_crds(plane);
    apply_server_side(plane, &["-f", &repo("deploy/base/namespace.yaml")]);
    for (overlay, text) in renders {
        apply_server_side_stdin(plane, &text, &format!("helm template ({overlay})"));
    }
}

#[test]
fn helm_chart_crd_is_the_one_of_deploy_base() {
    assert!(
        read("deploy/helm/replika/crds/replikas.replika.prosimcorp.com.yaml")
            == read("deploy/base/crd.yaml"),
        "deploy/helm/replika/crds/ is stale: copy deploy/base/crd.yaml there (make crd)"
    );
}

/// The options that have no Kustomize counterpart.
#[test]
fn helm_chart_options_render_what_they_say() {
    let helm = helm();
    let objects = |values: &[&str]| yaml_docs(&helm_template(&helm, values));
    let find = |objects: &[Value], kind: &str, name: &str| -> Option<Value> {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .cloned()
    };

    let defaults = objects(&[]);
    assert!(
        find(&defaults, "ServiceMonitor", "replika").is_none(),
        "ServiceMonitor is off by default"
    );
    assert!(find(&defaults, "ClusterRole", "replika-extra-kinds").is_none());

    let custom_values = [
        "--set",
        "replicas=3",
        "--set",
        "image.repository=registry.example.com/replika,image.tag=1.2.3",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set-json",
        r#"rbac.extraRules=[{"apiGroups":["monitoring.coreos.com"],"resources":["alertmanagerconfigs"],"verbs":["list","watch","create","patch","delete"]}]"#,
        "--set",
        "resources.limits.memory=256Mi",
    ];
    let custom_text = helm_template(&helm, &custom_values);
    let custom = yaml_docs(&custom_text);
    let deployment =
        find(&custom, "Deployment", "replika-controller-manager").expect("a Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example.com/replika:1.2.3");
    assert_eq!(container["resources"]["limits"]["memory"], "256Mi");
    let monitor = find(&custom, "ServiceMonitor", "replika").expect("a ServiceMonitor");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "metrics"
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let extra =
        find(&custom, "ClusterRole", "replika-extra-kinds").expect("the additive ClusterRole");
    assert_eq!(extra["rules"][0]["resources"][0], "alertmanagerconfigs");
    let binding = find(&custom, "ClusterRoleBinding", "replika-extra-kinds").expect("its binding");
    assert_eq!(binding["subjects"][0]["name"], "replika-controller-manager");

    let single = objects(&["--set", "replicas=1"]);
    assert!(
        find(&single, "PodDisruptionBudget", "replika-controller-manager").is_none(),
        "one replica with minAvailable 1 would block every drain"
    );

    // The ServiceMonitor (against the Prometheus Operator's schema) and the
    // additive RBAC are accepted by the API server.
    let plane = ControlPlane::shared();
    install_prometheus_operator_crds(plane);
    apply_server_side(plane, &["-f", &repo("deploy/base/namespace.yaml")]);
    let accepted = run_with_stdin(
        plane
            .kubectl()
            .args(["apply", "--server-side", "--dry-run=server", "-f", "-"]),
        &custom_text,
    );
    assert!(accepted.status_ok, "{accepted:?}");

    for mode in ["self-managed", "cert-manager"] {
        let lint = run(Command::new(&helm)
            .args(["lint", "--strict", &repo("deploy/helm/replika")])
            .args(["--set", &format!("certificates.mode={mode}")]));
        assert!(lint.status_ok, "helm lint ({mode}): {lint:?}");
    }

    let wrong = Command::new(&helm)
        .args(["template", "replika", &repo("deploy/helm/replika")])
        .args([
            "--namespace",
            "replika",
            "--set",
            "certificates.mode=self-signed",
        ])
        .output()
        .expect("helm runs");
    assert!(
        !wrong.status.success(),
        "an unknown certificate mode is refused"
    );
}

/// Objects by (apiVersion, kind, namespace, name).
fn by_identity(
    objects: impl IntoIterator<Item = Value>,
) -> BTreeMap<(String, String, String, String), Value> {
    let field = |o: &Value, pointer: &str| {
        o.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut map = BTreeMap::new();
    for object in objects {
        let identity = (
            field(&object, "/apiVersion"),
            field(&object, "/kind"),
            field(&object, "/metadata/namespace"),
            field(&object, "/metadata/name"),
        );
        assert!(
            map.insert(identity.clone(), object).is_none(),
            "{identity:?} twice"
        );
    }
    map
}

/// Where `chart` and `bundle` first differ, if they do. Numbers compare by
/// value: Kustomize prints the CRD's `minimum: 0.0` as `0`.
fn first_difference(chart: &Value, bundle: &Value, path: &str) -> Option<String> {
    match (chart, bundle) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|key| {
                let path = format!("{path}/{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => first_difference(x, y, &path),
                    (x, y) => Some(format!("{path}: chart {x:?}, bundle {y:?}")),
                }
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}/{i}"))),
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path}: chart {a}, bundle {b}")),
    }
}

/// The object without the labels Helm's conventions add, on it and its pod template.
fn drop_helm_labels(mut object: Value) -> Value {
    for pointer in ["/metadata/labels", "/spec/template/metadata/labels"] {
        if let Some(Value::Object(labels)) = object.pointer_mut(pointer) {
            for label in HELM_LABELS {
                labels.remove(label);
            }
        }
    }
    object
}

fn helm_template(helm: &Path, values: &[&str]) -> String {
    let output = Command::new(helm)
        .args(["template", "replika", &repo("deploy/helm/replika")])
        .args(["--namespace", "replika", "--include-crds"])
        .args(values)
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "helm template {values:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}
