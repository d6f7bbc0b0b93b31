//! The operator's RBAC is exactly what its code uses (docs/install.md): every
//! rule of every Role and ClusterRole the bundles install has a row here naming
//! the code that needs it, and the API server, asked as the operator's
//! ServiceAccount, allows those needs and nothing near them.

use std::collections::BTreeSet;

use serde_json::Value;
use testenv::{ControlPlane, run};

use crate::tools::{OVERLAYS, apply_server_side, cluster_lock, kustomize, repo, yaml_docs};

/// The operator's identity, as the RBAC subjects name it.
const OPERATOR: &str = "system:serviceaccount:replika:replika-controller-manager";

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
