//! Installing Replika, against the real control plane: the Kustomize bundles
//! of `make bundle` and the Helm chart apply cleanly by server-side apply, the
//! chart renders what the bundles hold, the RBAC grants exactly what the code
//! uses, the Deployment's flags are ones the binary accepts, every example is
//! accepted by the API server, and the cert-manager overlay works end to end
//! with cert-manager's own controllers.
//!
//! The tools are pinned in `tools/versions.env` and built or fetched from Go
//! modules by the scripts in `tools/`, which print what they made and build
//! only what is missing: Helm (`$REPLIKA_HELM`, or `tools/build-helm.sh`),
//! cert-manager's CRDs and controllers (`tools/cert-manager-crds.sh`,
//! `tools/build-cert-manager.sh`) and the Prometheus Operator's CRDs
//! (`tools/prometheus-operator-crds.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;
use testenv::{CommandOutput, ControlPlane, run, run_with_stdin};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The operator's identity, as the RBAC subjects name it.
const OPERATOR: &str = "system:serviceaccount:replika:replika-controller-manager";
/// The overlays of deploy/overlays, each rendered to one bundle.
const OVERLAYS: [&str; 2] = ["cert-manager", "self-managed"];
/// Labels Helm's conventions add (see the chart's `replika.labels`), dropped
/// before comparing the chart's objects with the bundles'.
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
];

// ---------------------------------------------------------------------------
// RBAC: what the operator's code calls, and nothing more.
// ---------------------------------------------------------------------------

/// One permission the operator needs: `verbs` on `resource` of `group`,
/// limited to `names` when not empty.
struct Need {
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    names: &'static [&'static str],
}

const fn need(group: &'static str, resource: &'static str, verbs: &'static [&'static str]) -> Need {
    Need {
        group,
        resource,
        verbs,
        names: &[],
    }
}

/// The ClusterRole `replika-manager` (deploy/base/rbac.yaml), row by row.
const MANAGER_NEEDS: &[Need] = &[
    // src/controller/mod.rs `run`: the Controller over `Api::<Replika>::all`;
    // src/webhook/mod.rs `run`: the webhook's Replika cache (`watcher` + `reflector`).
    need("replika.prosimcorp.com", "replikas", &["list", "watch"]),
    // src/controller/reconcile.rs `reconcile`: kube's `finalizer` adds and
    // removes `replika.prosimcorp.com/cleanup` by JSON patch.
    need("replika.prosimcorp.com", "replikas", &["patch"]),
    // src/controller/status.rs `publish`: `patch_status` by server-side apply.
    need("replika.prosimcorp.com", "replikas/status", &["patch"]),
    // src/controller/mod.rs `watch_namespaces`: a metadata watch of all namespaces.
    need("", "namespaces", &["list", "watch"]),
    // src/controller/status.rs `publish`: kube's events `Recorder` creates
    // events.k8s.io Events and patches repeated ones into a series.
    need("events.k8s.io", "events", &["create", "patch"]),
    // src/authorization.rs `Authorizer::denied_to`: one SubjectAccessReview per
    // right a Replika's author must have, at admission and before every sync.
    need("authorization.k8s.io", "subjectaccessreviews", &["create"]),
    // src/authorization.rs `Authorizer::follow_rbac`: metadata watches that
    // tell when remembered access review answers must be forgotten.
    need("rbac.authorization.k8s.io", "roles", &["list", "watch"]),
    need(
        "rbac.authorization.k8s.io",
        "rolebindings",
        &["list", "watch"],
    ),
    need(
        "rbac.authorization.k8s.io",
        "clusterroles",
        &["list", "watch"],
    ),
    need(
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        &["list", "watch"],
    ),
    // src/controller/watches.rs `Watches::source` (the source, by name) and
    // `Watches::copies` (a metadata watch of same-named objects in all namespaces).
    need("", "secrets", &["list", "watch"]),
    need("", "configmaps", &["list", "watch"]),
    // src/controller/copies.rs `CopyWriter::read` and `verify`: a copy found
    // at a version this process did not write, or in the way of a create.
    need("", "secrets", &["get"]),
    need("", "configmaps", &["get"]),
    // src/controller/copies.rs `CopyWriter::create` (POST, never overwrites);
    // src/authorization.rs `Authorizer::load` creates the signing key Secret.
    need("", "secrets", &["create"]),
    need("", "configmaps", &["create"]),
    // src/controller/copies.rs `update` (server-side apply), `upgrade_ownership`
    // (JSON patch of managedFields) and `release` (merge patch).
    need("", "secrets", &["patch"]),
    need("", "configmaps", &["patch"]),
    // src/controller/copies.rs `delete`: pruning, and replacing immutable copies.
    need("", "secrets", &["delete"]),
    need("", "configmaps", &["delete"]),
];

/// The Role `replika-leader-election` (deploy/base/leader-election.yaml).
const LEADER_ELECTION_NEEDS: &[Need] = &[
    // src/leader.rs through kube-lease-manager: the Lease is created when
    // missing (a create cannot be limited to a name) ...
    need("coordination.k8s.io", "leases", &["create"]),
    // ... then read, and acquired, renewed and released by patch.
    Need {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "patch"],
        names: &["replika-leader"],
    },
];

/// The Role `replika-signing-key` (deploy/base/signing-key.yaml).
const SIGNING_KEY_NEEDS: &[Need] = &[
    // src/authorization.rs `Authorizer::load`: every replica reads the key
    // (`get_opt`, or `get` when another created it first); creating it is
    // granted by replika-manager.
    Need {
        group: "",
        resource: "secrets",
        verbs: &["get"],
        names: &["replika-signing-key"],
    },
];

/// The Role `replika-webhook-certificates` (deploy/overlays/self-managed/rbac.yaml).
const CERTIFICATE_SECRET_NEEDS: &[Need] = &[
    // src/webhook/self_managed.rs `ensure_secret`: the first replica creates the Secret ...
    need("", "secrets", &["create"]),
    // ... every replica reads it (`get_opt`, `get`), a renewal `replace`s it.
    Need {
        group: "",
        resource: "secrets",
        verbs: &["get", "update"],
        names: &["replika-webhook-tls"],
    },
];

/// The ClusterRole `replika-webhook-configurations` (deploy/overlays/self-managed/rbac.yaml).
const WEBHOOK_CONFIGURATION_NEEDS: &[Need] = &[
    // src/webhook/self_managed.rs `inject_ca_bundle`: `get_opt`, then `replace`.
    Need {
        group: "admissionregistration.k8s.io",
        resource: "validatingwebhookconfigurations",
        verbs: &["get", "update"],
        names: &["replika"],
    },
    Need {
        group: "admissionregistration.k8s.io",
        resource: "mutatingwebhookconfigurations",
        verbs: &["get", "update"],
        names: &["replika"],
    },
];

/// Every Role and ClusterRole the bundles install, with what it must grant,
/// and the namespace the live test asks about.
const ROLES: &[(&str, &str, &[Need], &str)] = &[
    ("ClusterRole", "replika-manager", MANAGER_NEEDS, "team-a"),
    (
        "Role",
        "replika-leader-election",
        LEADER_ELECTION_NEEDS,
        "replika",
    ),
    ("Role", "replika-signing-key", SIGNING_KEY_NEEDS, "replika"),
    // Self-managed certificates only.
    (
        "Role",
        "replika-webhook-certificates",
        CERTIFICATE_SECRET_NEEDS,
        "replika",
    ),
    (
        "ClusterRole",
        "replika-webhook-configurations",
        WEBHOOK_CONFIGURATION_NEEDS,
        "",
    ),
];

// Used but granted to every authenticated user by Kubernetes' own bootstrap
// roles, so in no Replika role (checked live below):
// - src/authorization.rs `Authorizer::denied_to_operator`: SelfSubjectAccessReviews
//   (does the operator's RBAC cover a kind?), by `system:basic-user`;
// - src/authorization.rs `Authorizer::load`: a SelfSubjectReview (the
//   operator's own user name), by `system:basic-user`;
// - discovery (src/controller/kinds.rs) and `/version` (src/main.rs), by
//   `system:discovery` and `system:public-info-viewer`.

/// `(group, resource, verb, name)`; name "" for rules without `resourceNames`.
type Grant = (String, String, String, String);

fn expand(needs: &[Need]) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for need in needs {
        let names: &[&str] = if need.names.is_empty() {
            &[""]
        } else {
            need.names
        };
        for verb in need.verbs {
            for name in names {
                grants.insert((
                    need.group.into(),
                    need.resource.into(),
                    (*verb).into(),
                    (*name).into(),
                ));
            }
        }
    }
    grants
}

/// What the rules of `role` grant.
fn granted(role: &Value) -> BTreeSet<Grant> {
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| item.as_str().expect("a string").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut grants = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let names = match strings(&rule["resourceNames"]) {
            names if names.is_empty() => vec![String::new()],
            names => names,
        };
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    for name in &names {
                        grants.insert((
                            group.clone(),
                            resource.clone(),
                            verb.clone(),
                            name.clone(),
                        ));
                    }
                }
            }
        }
    }
    grants
}

/// Every Role and ClusterRole of both bundles grants exactly what its row of
/// [`ROLES`] says the code uses, no role is missing from the table, and every
/// binding names the operator's ServiceAccount alone.
#[test]
fn rbac_grants_exactly_what_the_operator_uses() {
    let plane = ControlPlane::shared();
    let mut checked = BTreeSet::new();
    for overlay in OVERLAYS {
        for object in yaml_docs(&kustomize(plane, &format!("deploy/overlays/{overlay}"))) {
            let kind = object["kind"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            match kind {
                "Role" | "ClusterRole" => {
                    let (_, _, needs, _) = ROLES
                        .iter()
                        .find(|(k, n, _, _)| *k == kind && *n == name)
                        .unwrap_or_else(|| {
                            panic!(
                                "{overlay}: {kind} {name} is not in ROLES: add it, with a \
                                 comment per rule naming the code that uses it"
                            )
                        });
                    let granted = granted(&object);
                    let needed = expand(needs);
                    let unused: Vec<_> = granted.difference(&needed).collect();
                    let missing: Vec<_> = needed.difference(&granted).collect();
                    assert!(
                        unused.is_empty() && missing.is_empty(),
                        "{overlay}: {kind} {name} must grant exactly what the operator uses \
                         (group, resource, verb, resourceName):\n  granted but unused: \
                         {unused:?}\n  used but not granted: {missing:?}"
                    );
                    checked.insert((kind.to_string(), name.to_string()));
                }
                "RoleBinding" | "ClusterRoleBinding" => assert_eq!(
                    object["subjects"],
                    serde_json::json!([{
                        "kind": "ServiceAccount",
                        "name": "replika-controller-manager",
                        "namespace": "replika",
                    }]),
                    "{overlay}: {kind} {name}"
                ),
                _ => {}
            }
        }
    }
    let unchecked: Vec<String> = ROLES
        .iter()
        .filter(|(kind, name, _, _)| !checked.contains(&(kind.to_string(), name.to_string())))
        .map(|(kind, name, _, _)| format!("{kind} {name}"))
        .collect();
    assert!(
        unchecked.is_empty(),
        "in ROLES but in no bundle: {unchecked:?}"
    );
}

/// The API server's own answer to what the ServiceAccount may do, with the
/// RBAC of the self-managed bundle installed: each row of [`ROLES`] is
/// allowed, and the neighbouring rights a careless role would grant are not.
#[test]
fn rbac_as_installed_allows_the_needs_and_nothing_near_them() {
    let plane = ControlPlane::shared();
    let _cluster = cluster_lock();
    apply_server_side(plane, &["-k", &repo("deploy/base")]);
    apply_server_side(
        plane,
        &["-f", &repo("deploy/overlays/self-managed/rbac.yaml")],
    );

    for (_, _, needs, namespace) in ROLES {
        for (group, resource, verb, name) in expand(needs) {
            let target = resource_arg(&group, &resource, &name);
            assert!(
                can_i(plane, &verb, &target, namespace),
                "the operator may not {verb} {target} in {namespace:?}"
            );
        }
    }
    assert!(
        can_i(
            plane,
            "create",
            "selfsubjectaccessreviews.authorization.k8s.io",
            ""
        ),
        "system:basic-user should let the operator create SelfSubjectAccessReviews"
    );
    assert!(
        can_i(
            plane,
            "create",
            "selfsubjectreviews.authentication.k8s.io",
            ""
        ),
        "system:basic-user should let the operator create SelfSubjectReviews"
    );
    let denied = [
        ("update", "secrets", "team-a"),
        ("deletecollection", "secrets", "team-a"),
        ("update", "secrets/other-secret", "replika"),
        ("update", "configmaps", "team-a"),
        ("create", "pods", "team-a"),
        ("update", "replikas.replika.prosimcorp.com", "team-a"),
        ("delete", "replikas.replika.prosimcorp.com", "team-a"),
        ("create", "namespaces", ""),
        ("delete", "namespaces", ""),
        ("patch", "leases.coordination.k8s.io/other-lease", "replika"),
        ("create", "leases.coordination.k8s.io", "team-a"),
        (
            "update",
            "validatingwebhookconfigurations.admissionregistration.k8s.io/other",
            "",
        ),
        (
            "update",
            "customresourcedefinitions.apiextensions.k8s.io",
            "",
        ),
        (
            "create",
            "alertmanagerconfigs.monitoring.coreos.com",
            "team-a",
        ),
    ];
    for (verb, target, namespace) in denied {
        assert!(
            !can_i(plane, verb, target, namespace),
            "the operator may {verb} {target} in {namespace:?}, which it never does"
        );
    }
}

fn resource_arg(group: &str, resource: &str, name: &str) -> String {
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, sub)) => (resource, Some(sub)),
        None => (resource, None),
    };
    let mut target = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    if !name.is_empty() {
        target = format!("{target}/{name}");
    }
    if let Some(sub) = subresource {
        target = format!("{target} --subresource={sub}");
    }
    target
}

/// `kubectl auth can-i` as the operator's ServiceAccount.
fn can_i(plane: &ControlPlane, verb: &str, target: &str, namespace: &str) -> bool {
    let mut command = plane.kubectl();
    command.args(["auth", "can-i", verb]);
    command.args(target.split(' '));
    command.arg(format!("--as={OPERATOR}"));
    if namespace.is_empty() {
        command.arg("--all-namespaces=false");
    } else {
        command.args(["--namespace", namespace]);
    }
    let answer = run(&mut command);
    match answer.stdout.trim() {
        "yes" => true,
        "no" => false,
        _ => panic!("kubectl auth can-i {verb} {target}: {answer:?}"),
    }
}

// ---------------------------------------------------------------------------
// Bundles and the Helm chart.
// ---------------------------------------------------------------------------

#[test]
fn bundles_apply_cleanly_by_server_side_apply() {
    let plane = ControlPlane::shared();
    let _cluster = cluster_lock();
    let _webhooks = RemoveWebhooksOnDrop(plane);
    install_cert_manager_crds(plane);

    let out = scratch_dir("bundles");
    let rendered = run(Command::new(repo("tools/bundle.sh"))
        .arg(&out)
        .env("KUBECTL", plane.bin_dir().join("kubectl")));
    assert!(rendered.status_ok, "tools/bundle.sh failed: {rendered:?}");
    let mut listed: Vec<&str> = rendered.stdout.lines().collect();
    listed.sort();
    let expected: Vec<String> = OVERLAYS
        .iter()
        .map(|overlay| out.join(overlay).join("bundle.yaml").display().to_string())
        .collect();
    assert_eq!(listed, expected, "one bundle.yaml per overlay");

    for overlay in OVERLAYS {
        let bundle = out.join(overlay).join("bundle.yaml");
        let objects = yaml_docs(&std::fs::read_to_string(&bundle).expect("the bundle"));
        assert!(
            objects.iter().any(|o| o["kind"] == "Deployment"),
            "{overlay}: the bundle runs the operator"
        );
        apply_server_side(plane, &["-f", &bundle.display().to_string()]);
        let listed = run(plane
            .kubectl()
            .args(["get", "-o", "name", "-f"])
            .arg(&bundle));
        assert!(listed.status_ok, "{overlay}: {listed:?}");
        assert_eq!(
            listed.stdout.lines().count(),
            objects.len(),
            "{overlay}: {listed:?}"
        );
    }

    // The last bundle applied was self-managed, over cert-manager's: same objects,
    // new content (an upgrade that switches modes).
    let annotations = run(plane.kubectl().args([
        "get",
        "validatingwebhookconfiguration/replika",
        "-o",
        "jsonpath={.metadata.annotations}",
    ]));
    assert!(annotations.status_ok, "{annotations:?}");
    assert!(
        !annotations.stdout.contains("inject-ca-from"),
        "switching to self-managed removes the cainjector annotation: {annotations:?}"
    );
}

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

/// The flags in each bundle's Deployment are ones `replika run` accepts: it gets
/// past argument parsing and stops only for want of a cluster.
#[test]
fn deployment_flags_are_accepted_by_the_operator() {
    let plane = ControlPlane::shared();
    for overlay in OVERLAYS {
        let objects = yaml_docs(&kustomize(plane, &format!("deploy/overlays/{overlay}")));
        let deployment = objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("a Deployment");
        let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("string args"))
            .collect();
        let output = Command::new(env!("CARGO_BIN_EXE_replika"))
            .args(&args)
            .env_clear()
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env("HOME", "/nonexistent")
            .stdin(Stdio::null())
            .output()
            .expect("the replika binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.code() == Some(1) && stderr.contains("no usable kubeconfig"),
            "{overlay}: `replika {}` should fail only for want of a cluster: {:?} {stderr}",
            args.join(" "),
            output.status
        );
    }
}

// ---------------------------------------------------------------------------
// Examples.
// ---------------------------------------------------------------------------

/// Every example's objects are accepted by the API server (`--dry-run=server`,
/// with the CRD of deploy/base; the admission webhook is not registered, so
/// this is the schema and its CEL rules), and their Replikas pass the rules the
/// webhook applies on top.
#[test]
fn examples_are_accepted_by_the_api_server() {
    let plane = ControlPlane::shared();
    let _cluster = cluster_lock();
    remove_webhooks(plane);
    apply_server_side(plane, &["-k", &repo("deploy/base")]);
    wait_established(plane, &["replikas.replika.prosimcorp.com"]);
    // examples/alertmanagerconfig-replika.yaml's source.
    install_prometheus_operator_crds(plane);

    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("examples"))
        .expect("examples/")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            f.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for wanted in [
        "alertmanagerconfig-replika.yaml",
        "configmap-replika.yaml",
        "dockerconfigjson-secret-replika.yaml",
        "selector-replika.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "examples/{wanted} is missing"
        );
    }

    for file in &files {
        let docs = yaml_docs(&std::fs::read_to_string(file).expect("an example"));
        let replikas: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Replika").collect();
        assert!(!replikas.is_empty(), "{} has no Replika", file.display());
        for doc in &docs {
            let namespace = doc["metadata"]["namespace"].as_str().unwrap_or_default();
            if !namespace.is_empty() {
                // A dry run does not create the example's Namespace, so make it.
                let created = run(plane.kubectl().args(["create", "namespace", namespace]));
                assert!(
                    created.status_ok || created.stderr.contains("AlreadyExists"),
                    "{created:?}"
                );
            }
            let text = serde_json::to_string(doc).expect("JSON");
            let what = format!(
                "{} {} from {}",
                doc["kind"],
                doc["metadata"]["name"],
                file.display()
            );
            let applied = run_with_stdin(
                plane
                    .kubectl()
                    .args(["apply", "--server-side", "--dry-run=server", "-f", "-"]),
                &text,
            );
            assert!(
                applied.status_ok,
                "the API server refused {what}: {}",
                applied.stderr
            );
        }
        for replika in replikas {
            let parsed: replika::api::Replika =
                serde_json::from_value(replika.clone()).expect("a Replika");
            let namespace = replika["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default");
            if let Err(problems) = replika::domain::validation::validate(&parsed.spec, namespace) {
                panic!(
                    "{} would be denied by the webhook: {problems:?}",
                    file.display()
                );
            }
        }
    }

    // The dry runs do validate: the CRD's CEL rule refuses a Replika whose
    // targets name its source's namespace.
    let refused = run_with_stdin(
        plane
            .kubectl()
            .args(["apply", "--server-side", "--dry-run=server", "-f", "-"]),
        r#"{"apiVersion": "replika.prosimcorp.com/v1beta1", "kind": "Replika",
            "metadata": {"name": "loop", "namespace": "default"},
            "spec": {"synchronization": {"time": "1m"},
                     "source": {"group": "", "version": "v1", "kind": "ConfigMap", "name": "x", "namespace": "default"},
                     "target": {"namespaces": {"matchAll": false, "replicateIn": ["default"]}}}}"#,
    );
    assert!(
        !refused.status_ok
            && refused
                .stderr
                .contains("must not name the source namespace"),
        "{refused:?}"
    );
}

// ---------------------------------------------------------------------------
// The cert-manager overlay, end to end.
// ---------------------------------------------------------------------------

/// How long cert-manager, the cainjector and the operator may take to act.
const DEADLINE: Duration = Duration::from_secs(60);

/// `deploy/overlays/cert-manager` with cert-manager's own control loops and CA
/// injector (built from its Go module by tools/build-cert-manager.sh) running
/// against the plane: the Issuers and the CA chain become Ready, the cainjector
/// writes the CA into both webhook configurations, and the operator, as its
/// ServiceAccount, serves the issued certificate from files (as the pod mounts
/// them) to a client that trusts only the injected CA.
///
/// The API server cannot reach the Service `replika-webhook` on a plane without
/// pods (no kubelet, no kube-proxy, and Endpoints may not point at loopback).
/// So, for the API server to call the webhooks, a second certificate for
/// 127.0.0.1 is issued by the overlay's CA Issuer, swapped into the served
/// directory (the reload a renewal triggers), and registered URL webhooks
/// get their caBundle from the cainjector.
#[test]
fn cert_manager_overlay_end_to_end() {
    let plane = ControlPlane::shared();
    let _cluster = cluster_lock();
    let _webhooks = RemoveWebhooksOnDrop(plane);
    install_cert_manager_crds(plane);
    apply_server_side_stdin(
        plane,
        &kustomize(plane, "deploy/overlays/cert-manager"),
        "the cert-manager bundle",
    );

    let bin = build_cert_manager();
    let work = scratch_dir("cert-manager");
    let kubeconfig = plane.kubeconfig_path().display().to_string();
    let controller = Background::start(
        Command::new(bin.join("controller")).args(["--kubeconfig", &kubeconfig]),
        work.join("controller.log"),
    );
    let cainjector = Background::start(
        Command::new(bin.join("cainjector")).args(["--kubeconfig", &kubeconfig]),
        work.join("cainjector.log"),
    );
    let logs = || {
        format!(
            "\ncontroller: {}\ncainjector: {}",
            controller.tail(),
            cainjector.tail()
        )
    };

    // Self-signed Issuer -> CA Certificate -> CA Issuer -> serving Certificate.
    let ready = plane.kubectl_wait(&[
        "--namespace=replika",
        "--for=condition=Ready",
        "--timeout=60s",
        "issuer/replika-selfsigned",
        "certificate/replika-ca",
        "issuer/replika-ca",
        "certificate/replika-webhook",
    ]);
    assert!(
        ready.status_ok,
        "cert-manager did not issue: {ready:?}{}",
        logs()
    );
    let served = secret_data(plane, "replika-webhook-tls");
    for kind in [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ] {
        let injected = poll(DEADLINE, || injected_ca(plane, kind, "replika"))
            .unwrap_or_else(|| panic!("no caBundle injected into {kind} replika{}", logs()));
        assert_eq!(
            injected, served["ca.crt"],
            "{kind}: the CA of replika-webhook"
        );
    }

    // The operator serves the issued certificate for the Service's name.
    let tls_dir = work.join("tls");
    std::fs::create_dir_all(&tls_dir).expect("the TLS directory");
    write_tls(&tls_dir, &served);
    let ca_file = work.join("injected-ca.crt");
    std::fs::write(&ca_file, &served["ca.crt"]).expect("the CA file");
    let identity = tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(plane.service_account("replika", "replika-controller-manager"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let operator = Background::start(
        Command::new(env!("CARGO_BIN_EXE_replika"))
            .args(["run", "--reconcile=false"])
            .arg(format!("--webhook-bind=127.0.0.1:{port}"))
            .arg(format!("--tls-dir={}", tls_dir.display()))
            .env("KUBECONFIG", &identity.kubeconfig),
        work.join("operator.log"),
    );
    let service_name = format!("replika-webhook.replika.svc:{port}:127.0.0.1");
    let verified = poll(DEADLINE, || {
        tls_verifies(
            &ca_file,
            &["--resolve", &service_name],
            &format!("https://replika-webhook.replika.svc:{port}/validate"),
        )
        .then_some(())
    });
    assert!(
        verified.is_some(),
        "the operator's certificate for replika-webhook.replika.svc is not trusted by the \
         injected CA\noperator: {}",
        operator.tail()
    );

    // The API server calls the webhooks, through a certificate of the same chain.
    remove_webhooks(plane);
    apply_server_side_stdin(plane, LOCAL_CERTIFICATE, "a certificate for 127.0.0.1");
    let ready = plane.kubectl_wait(&[
        "--namespace=replika",
        "--for=condition=Ready",
        "--timeout=60s",
        "certificate/replika-webhook-e2e",
    ]);
    assert!(ready.status_ok, "{ready:?}{}", logs());
    let local = secret_data(plane, "replika-webhook-e2e-tls");
    write_tls(&tls_dir, &local);
    let url = format!("https://127.0.0.1:{port}");
    let reloaded = poll(DEADLINE, || {
        tls_verifies(&ca_file, &[], &format!("{url}/validate")).then_some(())
    });
    assert!(
        reloaded.is_some(),
        "the operator did not reload the swapped certificate\noperator: {}",
        operator.tail()
    );
    let template = read("webhook-config/local/webhooks.yaml.tmpl");
    let webhooks = template
        .replace(
            "  name: ${WEBHOOK_NAME}\n",
            "  name: replika-e2e\n  annotations:\n    \
             cert-manager.io/inject-ca-from: replika/replika-webhook-e2e\n",
        )
        .replace("      caBundle: ${CA_BUNDLE}\n", "")
        .replace("${WEBHOOK_URL}", &url);
    assert!(!webhooks.contains("${"), "unfilled template: {webhooks}");
    apply_server_side_stdin(plane, &webhooks, "URL webhooks");
    for kind in [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ] {
        let injected = poll(DEADLINE, || injected_ca(plane, kind, "replika-e2e"))
            .unwrap_or_else(|| panic!("no caBundle injected into {kind} replika-e2e{}", logs()));
        assert_eq!(injected, local["ca.crt"], "{kind}");
    }

    let denied = apply_replika(plane, "e2e-denied", "banana");
    assert!(
        !denied.status_ok
            && denied.stderr.contains("validate.replika.prosimcorp.com")
            && denied.stderr.contains("banana"),
        "the validating webhook should deny a bad duration: {denied:?}\noperator: {}",
        operator.tail()
    );
    let admitted = apply_replika(plane, "e2e-admitted", "1m");
    assert!(
        admitted.status_ok,
        "{admitted:?}\noperator: {}",
        operator.tail()
    );
    let defaulted = run(plane.kubectl().args([
        "get",
        "replika",
        "e2e-admitted",
        "--namespace=default",
        "-o",
        "jsonpath={.spec.source.namespace}/{.spec.policy.conflict}",
    ]));
    let _ = run(plane
        .kubectl()
        .args(["delete", "replika", "e2e-admitted", "-n", "default"]));
    assert_eq!(
        defaulted.stdout, "default/Refuse",
        "the mutating webhook fills source.namespace and the policy defaults"
    );
}

/// A serving certificate for 127.0.0.1 from the overlay's CA Issuer.
const LOCAL_CERTIFICATE: &str = r#"{
  "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
  "metadata": {"name": "replika-webhook-e2e", "namespace": "replika"},
  "spec": {
    "secretName": "replika-webhook-e2e-tls",
    "ipAddresses": ["127.0.0.1"],
    "privateKey": {"algorithm": "ECDSA", "size": 256},
    "usages": ["server auth", "digital signature"],
    "issuerRef": {"group": "cert-manager.io", "kind": "Issuer", "name": "replika-ca"}
  }
}"#;

fn apply_replika(plane: &ControlPlane, name: &str, resync: &str) -> CommandOutput {
    let replika = serde_json::json!({
        "apiVersion": "replika.prosimcorp.com/v1beta1",
        "kind": "Replika",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "synchronization": {"time": resync},
            "source": {"group": "", "version": "v1", "kind": "ConfigMap", "name": "e2e-source"},
            "target": {"namespaces": {"matchAll": false, "replicateIn": ["team-e2e"]}},
        },
    });
    run_with_stdin(
        plane.kubectl().args(["apply", "--server-side", "-f", "-"]),
        &replika.to_string(),
    )
}

/// The decoded data of a Secret in `replika`.
fn secret_data(plane: &ControlPlane, name: &str) -> BTreeMap<String, Vec<u8>> {
    let got = run(plane
        .kubectl()
        .args(["get", "secret", name, "-n", "replika", "-o", "json"]));
    assert!(got.status_ok, "{got:?}");
    let secret: Secret = serde_json::from_str(&got.stdout).expect("a Secret");
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| (key, value.0))
        .collect()
}

/// The caBundle of the first webhook of a configuration, once it has one.
fn injected_ca(plane: &ControlPlane, kind: &str, name: &str) -> Option<Vec<u8>> {
    let got = run(plane.kubectl().args(["get", kind, name, "-o", "json"]));
    let config: Value = serde_json::from_str(&got.stdout).ok()?;
    let bundles: Vec<ByteString> = config["webhooks"]
        .as_array()?
        .iter()
        .map(|webhook| serde_json::from_value(webhook["clientConfig"]["caBundle"].clone()).ok())
        .collect::<Option<_>>()?;
    let first = bundles.first()?.0.clone();
    (!first.is_empty() && bundles.iter().all(|b| b.0 == first)).then_some(first)
}

fn write_tls(dir: &Path, data: &BTreeMap<String, Vec<u8>>) {
    for file in ["tls.key", "tls.crt"] {
        std::fs::write(dir.join(file), &data[file]).expect("writing the certificate files");
    }
}

/// Whether an HTTPS request to `url` completes, trusting only `ca_file`.
fn tls_verifies(ca_file: &Path, extra: &[&str], url: &str) -> bool {
    Command::new("curl")
        .args([
            "--silent",
            "--output",
            "/dev/null",
            "--max-time",
            "5",
            "--cacert",
        ])
        .arg(ca_file)
        .args(extra)
        .arg(url)
        .status()
        .expect("curl runs")
        .success()
}

/// cert-manager's controller and cainjector from tools/build-cert-manager.sh.
fn build_cert_manager() -> PathBuf {
    let built = Command::new(repo("tools/build-cert-manager.sh"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("tools/build-cert-manager.sh runs");
    assert!(
        built.status.success(),
        "tools/build-cert-manager.sh failed ({}); it needs Go and the Go module proxy",
        built.status
    );
    PathBuf::from(String::from_utf8_lossy(&built.stdout).trim())
}

/// A process that runs while a test needs it: killed when dropped, and by a
/// watchdog shell if this test binary dies first.
struct Background {
    child: Child,
    log: PathBuf,
    _watchdog: Child,
}

impl Background {
    fn start(command: &mut Command, log: PathBuf) -> Background {
        let file = std::fs::File::create(&log).expect("a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("a log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg("while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; kill \"$2\" 2>/dev/null")
            .args([
                "watchdog",
                &std::process::id().to_string(),
                &child.id().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("a watchdog");
        Background {
            child,
            log,
            _watchdog: watchdog,
        }
    }

    /// The end of its log, for failure messages.
    fn tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `check` until it returns a value or `deadline` passes.
fn poll<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= give_up {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// Tests that install cluster-wide objects take turns: the bundles register
/// webhook configurations that fail closed, which would refuse the Replikas of
/// another test while no operator serves them.
fn cluster_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes the webhook configurations named `replika` (and `replika-e2e`) when dropped, even when
/// the test failed.
struct RemoveWebhooksOnDrop<'a>(&'a ControlPlane);

impl Drop for RemoveWebhooksOnDrop<'_> {
    fn drop(&mut self) {
        remove_webhooks(self.0);
    }
}

fn remove_webhooks(plane: &ControlPlane) {
    let removed = run(plane.kubectl().args([
        "delete",
        "validatingwebhookconfiguration,mutatingwebhookconfiguration",
        "replika",
        "replika-e2e",
        "--ignore-not-found",
    ]));
    assert!(removed.status_ok || std::thread::panicking(), "{removed:?}");
}

fn repo(path: &str) -> String {
    format!("{REPO}/{path}")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path))
        .unwrap_or_else(|error| panic!("cannot read {path}: {error}"))
}

/// A fresh directory under cargo's scratch space for integration tests.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("install-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// Every YAML document of `text` that is not empty.
fn yaml_docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .expect("valid YAML")
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
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

fn kustomize(plane: &ControlPlane, dir: &str) -> String {
    let rendered = run(plane.kubectl().args(["kustomize", &repo(dir)]));
    assert!(
        rendered.status_ok,
        "kubectl kustomize {dir}: {}",
        rendered.stderr
    );
    rendered.stdout
}

/// The pinned Helm: `$REPLIKA_HELM`, or what tools/build-helm.sh prints.
fn helm() -> PathBuf {
    if let Some(path) = std::env::var_os("REPLIKA_HELM") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "REPLIKA_HELM={} is not a file: build Helm with tools/build-helm.sh",
            path.display()
        );
        return path;
    }
    let built = Command::new(repo("tools/build-helm.sh"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("tools/build-helm.sh runs");
    let path = String::from_utf8_lossy(&built.stdout).trim().to_string();
    assert!(
        built.status.success() && Path::new(&path).is_file(),
        "no Helm binary: tools/build-helm.sh failed ({}); it needs Go and the Go module proxy",
        built.status
    );
    PathBuf::from(path)
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

/// cert-manager's CRDs from its Go module, installed and established (once).
fn install_cert_manager_crds(plane: &ControlPlane) {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let mut command = Command::new(repo("tools/cert-manager-crds.sh"));
        command.env("REPLIKA_HELM", helm()).stderr(Stdio::inherit());
        let printed = run(&mut command);
        assert!(
            printed.status_ok,
            "tools/cert-manager-crds.sh failed: {printed:?}"
        );
        apply_server_side(plane, &["-f", printed.stdout.trim()]);
        wait_established(
            plane,
            &["certificates.cert-manager.io", "issuers.cert-manager.io"],
        );
    });
}

/// The Prometheus Operator's AlertmanagerConfig and ServiceMonitor CRDs from
/// its Go module, installed and established (once).
fn install_prometheus_operator_crds(plane: &ControlPlane) {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let mut command = Command::new(repo("tools/prometheus-operator-crds.sh"));
        command.stderr(Stdio::inherit());
        let printed = run(&mut command);
        assert!(
            printed.status_ok,
            "tools/prometheus-operator-crds.sh failed: {printed:?}"
        );
        for crd in printed.stdout.lines() {
            apply_server_side(plane, &["-f", crd]);
        }
        wait_established(
            plane,
            &[
                "alertmanagerconfigs.monitoring.coreos.com",
                "servicemonitors.monitoring.coreos.com",
            ],
        );
    });
}

fn wait_established(plane: &ControlPlane, crds: &[&str]) {
    let mut args = vec!["--for=condition=Established", "--timeout=60s"];
    let crd_names: Vec<String> = crds.iter().map(|crd| format!("crd/{crd}")).collect();
    args.extend(crd_names.iter().map(String::as_str));
    let waited = plane.kubectl_wait(&args);
    assert!(
        waited.status_ok,
        "CRDs {crds:?} not established: {waited:?}"
    );
}

fn apply_server_side(plane: &ControlPlane, source: &[&str]) {
    let applied = run(plane
        .kubectl()
        .args(["apply", "--server-side"])
        .args(source));
    assert!(
        applied.status_ok,
        "kubectl apply --server-side {}: {}",
        source.join(" "),
        applied.stderr
    );
}

fn apply_server_side_stdin(plane: &ControlPlane, text: &str, what: &str) {
    let applied = run_with_stdin(
        plane.kubectl().args(["apply", "--server-side", "-f", "-"]),
        text,
    );
    assert!(
        applied.status_ok,
        "kubectl apply --server-side of {what}: {}",
        applied.stderr
    );
}
