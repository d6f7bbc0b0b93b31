//! Acceptance tests of the local control plane (`testenv`) that Replika's other
//! tests run against: it is the pinned Kubernetes, its controllers work, and
//! identities are authenticated and authorized like in a real cluster.

use std::{collections::BTreeMap, fmt::Debug, time::Duration};

use k8s_openapi::{
    api::{
        authentication::v1::SelfSubjectReview,
        core::v1::{ConfigMap, Namespace, Secret, ServiceAccount},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::OwnerReference,
    serde::{Serialize, de::DeserializeOwned},
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ObjectMeta, PostParams},
};
use serde_json::json;
use testenv::{ControlPlane, TestNamespace, run, wait_for};

/// How long the controllers may take to act.
const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn api_server_is_ready_and_runs_the_pinned_kubernetes_version() {
    let plane = ControlPlane::shared();

    let readyz = run(plane.kubectl().args(["get", "--raw", "/readyz"]));
    assert!(readyz.status_ok && readyz.stdout == "ok", "{readyz:?}");

    let version = run(plane.kubectl().args(["version", "--output=json"]));
    assert!(version.status_ok, "{version:?}");
    let version: serde_json::Value =
        serde_json::from_str(&version.stdout).expect("kubectl prints JSON");
    let expected = format!("v{}", pinned_kubernetes_version());
    assert_eq!(version["serverVersion"]["gitVersion"], json!(expected));
}

#[tokio::test]
async fn deleted_namespace_is_emptied_and_removed() {
    let client = ControlPlane::shared().admin_client().await;
    let namespace = TestNamespace::new(&client, "namespace-deletion").await;
    // Something for the namespace controller to delete first.
    create(
        &Api::namespaced(client.clone(), &namespace.name),
        config_map("content"),
    )
    .await;

    let namespaces = Api::<Namespace>::all(client);
    namespaces
        .delete(&namespace.name, &DeleteParams::default())
        .await
        .expect("the namespace can be deleted");
    wait_for("the deleted namespace to disappear", DEADLINE, || async {
        matches!(namespaces.get_opt(&namespace.name).await, Ok(None)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn dependent_of_a_deleted_owner_is_garbage_collected() {
    let client = ControlPlane::shared().admin_client().await;
    let namespace = TestNamespace::new(&client, "garbage-collection").await;
    let config_maps = Api::<ConfigMap>::namespaced(client, &namespace.name);
    let owner = create(&config_maps, config_map("owner")).await;
    let mut dependent = config_map("dependent");
    dependent.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: owner.name_any(),
        uid: owner.uid().expect("created objects have a uid"),
        ..OwnerReference::default()
    }]);
    create(&config_maps, dependent).await;

    config_maps
        .delete("owner", &DeleteParams::background())
        .await
        .expect("the owner can be deleted");
    wait_for(
        "the dependent ConfigMap to be collected",
        DEADLINE,
        || async { matches!(config_maps.get_opt("dependent").await, Ok(None)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn new_namespace_gets_a_default_service_account() {
    let client = ControlPlane::shared().admin_client().await;
    let namespace = TestNamespace::new(&client, "default-service-account").await;
    let accounts = Api::<ServiceAccount>::namespaced(client, &namespace.name);
    wait_for("the default ServiceAccount", DEADLINE, || async {
        accounts.get_opt("default").await.ok().flatten()
    })
    .await;
}

#[tokio::test]
async fn installed_crd_becomes_established_and_serves_objects() {
    let plane = ControlPlane::shared();
    let client = plane.admin_client().await;
    let namespace = TestNamespace::new(&client, "crd").await;
    // CRDs are cluster-wide: a group of its own keeps reruns on a long-lived
    // plane apart.
    let widgets = ApiResource {
        group: format!("{}.testenv.example", namespace.name),
        version: "v1".into(),
        api_version: format!("{}.testenv.example/v1", namespace.name),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd = create(&crds, widget_crd(&widgets)).await;

    // Asked at once, while the CRD has no conditions yet: kubectl alone would fail.
    let established = format!("crd/{}", crd.name_any());
    tokio::task::spawn_blocking(move || {
        plane.kubectl_wait(&["--for=condition=Established", &established], DEADLINE)
    })
    .await
    .expect("the wait ran")
    .expect("the CRD becomes Established");

    let objects = Api::<DynamicObject>::namespaced_with(client, &namespace.name, &widgets);
    let widget = DynamicObject::new("sprocket", &widgets).data(json!({ "spec": { "size": 3 } }));
    create(&objects, widget).await;
    let fetched = objects
        .get("sprocket")
        .await
        .expect("the widget can be read back");
    assert_eq!(fetched.data["spec"]["size"], json!(3));

    crds.delete(&crd.name_any(), &DeleteParams::default())
        .await
        .expect("the CRD can be deleted");
}

#[tokio::test]
async fn ordinary_user_reads_secrets_only_once_granted() {
    let plane = ControlPlane::shared();
    let admin = plane.admin_client().await;
    let namespace = TestNamespace::new(&admin, "rbac").await;
    let secret = Secret {
        metadata: named("token"),
        string_data: Some(BTreeMap::from([("password".into(), "hunter2".into())])),
        ..Secret::default()
    };
    create(&Api::namespaced(admin.clone(), &namespace.name), secret).await;

    let alice = plane.user("alice", &["replika-testers"]).await;
    let get_secret = || {
        run(alice
            .kubectl()
            .args(["get", "secret", "token", "--namespace", &namespace.name]))
    };
    let alices_secrets = Api::<Secret>::namespaced(alice.client().await, &namespace.name);

    let denied = get_secret();
    assert!(
        !denied.status_ok && denied.stderr.contains("Forbidden"),
        "{denied:?}"
    );
    assert_eq!(api_error_code(alices_secrets.get("token").await), 403);

    grant_secret_reading(&admin, &namespace.name, &alice.username).await;
    wait_for(
        "alice to be allowed to read the Secret",
        DEADLINE,
        || async { alices_secrets.get("token").await.ok() },
    )
    .await;
    let allowed = get_secret();
    assert!(allowed.status_ok, "{allowed:?}");
}

#[tokio::test]
async fn service_account_identity_authenticates_as_the_service_account() {
    let plane = ControlPlane::shared();
    let namespace = TestNamespace::new(&plane.admin_client().await, "service-account").await;
    let robot = plane.service_account(&namespace.name, "robot").await;
    let expected = format!("system:serviceaccount:{}:robot", namespace.name);
    assert_eq!(robot.username, expected);

    let review = Api::<SelfSubjectReview>::all(robot.client().await)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("anyone authenticated may review themselves");
    let user_info = review
        .status
        .and_then(|status| status.user_info)
        .unwrap_or_default();
    assert_eq!(user_info.username.as_deref(), Some(expected.as_str()));

    let whoami = run(robot.kubectl().args([
        "auth",
        "whoami",
        "--output=jsonpath={.status.userInfo.username}",
    ]));
    assert_eq!(
        (whoami.status_ok, whoami.stdout.as_str()),
        (true, expected.as_str()),
        "{whoami:?}"
    );

    // It has no rights beyond what every authenticated identity has.
    let can_i = run(robot.kubectl().args([
        "auth",
        "can-i",
        "get",
        "secrets",
        "--namespace",
        &namespace.name,
    ]));
    assert_eq!(can_i.stdout.trim(), "no", "{can_i:?}");
}

#[tokio::test]
async fn kubectl_wait_gives_kubectls_reason_once_its_time_is_up() {
    let plane = ControlPlane::shared();
    let started = std::time::Instant::now();
    let waited = tokio::task::spawn_blocking(|| {
        plane.kubectl_wait(
            &[
                "--namespace=default",
                "--for=condition=Ready",
                "configmap/never-created",
            ],
            Duration::from_secs(3),
        )
    })
    .await
    .expect("the wait ran");
    let error = waited.expect_err("an object that never exists is never Ready");
    assert!(error.contains("never-created"), "{error}");
    // Bounded by its own time and one short attempt, not by kubectl's timeout on top.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

/// `KUBERNETES_VERSION` from `control-plane/versions.env`.
fn pinned_kubernetes_version() -> &'static str {
    include_str!("../../control-plane/versions.env")
        .lines()
        .find_map(|line| line.strip_prefix("KUBERNETES_VERSION="))
        .expect("versions.env pins KUBERNETES_VERSION")
}

async fn grant_secret_reading(admin: &kube::Client, namespace: &str, user: &str) {
    let role = Role {
        metadata: named("secret-reader"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: named("secret-reader"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "secret-reader".into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: user.into(),
            ..Subject::default()
        }]),
    };
    create(&Api::namespaced(admin.clone(), namespace), role).await;
    create(&Api::namespaced(admin.clone(), namespace), binding).await;
}

/// A namespaced CRD for `resource`, whose objects have a `spec.size`.
fn widget_crd(resource: &ApiResource) -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "metadata": { "name": format!("{}.{}", resource.plural, resource.group) },
        "spec": {
            "group": resource.group,
            "scope": "Namespaced",
            "names": { "kind": resource.kind, "plural": resource.plural, "singular": "widget" },
            "versions": [{
                "name": resource.version,
                "served": true,
                "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "properties": { "size": { "type": "integer" } }
                    } }
                } }
            }]
        }
    }))
    .expect("the CRD is well-formed")
}

async fn create<K>(api: &Api<K>, object: K) -> K
where
    K: kube::Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|error| panic!("cannot create {object:?}: {error}"))
}

fn api_error_code<T: Debug>(result: kube::Result<T>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        other => panic!("expected an error from the API server, got {other:?}"),
    }
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: named(name),
        ..ConfigMap::default()
    }
}

fn named(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}
