//! Operating the operator: `/readyz`, `/metrics`, and leader election between
//! several processes, against the real control plane with the `deploy/` RBAC.
//! No operator runs in this binary except the ones each test starts.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use replika::api::Replika;
use serde_json::json;
use support::*;
use testenv::wait_for;

/// The tests of this binary each run their own operators, which would all
/// reconcile every Replika: one test at a time.
static ONE_TEST_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a leader that stopped renewing keeps the Lease in these tests.
const LEASE: Duration = Duration::from_secs(4);

/// A Replika copying the ConfigMap `source` to `targets`, as admin.
async fn create_replika(client: &Client, namespace: &str, source: &str, targets: &[&str]) {
    let replika: Replika = serde_json::from_value(json!({
        "apiVersion": "replika.prosimcorp.com/v1beta1",
        "kind": "Replika",
        "metadata": {"name": source, "namespace": namespace},
        "spec": {
            "synchronization": {"time": "30s"},
            "source": {"group": "", "version": "v1", "kind": "ConfigMap", "name": source, "namespace": namespace},
            "target": {"namespaces": {"matchAll": false, "replicateIn": targets}},
        },
    }))
    .expect("a Replika");
    Api::<Replika>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &replika)
        .await
        .expect("the Replika is created");
}

async fn set_source_data(client: &Client, namespace: &str, name: &str, value: &str) {
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"key": value}})),
        )
        .await
        .expect("the source is updated");
}

/// Waits until `GET path` answers with `status`, and returns the body.
async fn wait_for_status(port: u16, path: &str, status: u16) -> String {
    wait_for(
        &format!("GET {path} to answer {status}"),
        DEADLINE * 2,
        || async {
            let (got, body) = http_get(port, path).await?;
            (got == status).then_some(body)
        },
    )
    .await
}

#[tokio::test]
async fn readyz_waits_for_the_caches_and_metrics_follow_replication() {
    let _alone = ONE_TEST_AT_A_TIME.lock().await;
    admission();
    let installed = installed();
    let admin = installed.plane.admin_client().await;
    // An operator identity with no rights yet: its caches cannot fill.
    let account = "replika-late-rights";
    let identity = installed.plane.service_account("replika", account).await;
    let port = free_port();
    let args = ["--metrics-bind".to_string(), format!("127.0.0.1:{port}")];
    let operator = start_operator(&identity.kubeconfig, "late-rights", &args);

    wait_for_status(port, "/healthz", 200).await;
    let body = wait_for_status(port, "/readyz", 503).await;
    assert!(
        body.contains("signing key not loaded"),
        "/readyz names what is missing: {body}\n{}",
        operator.log_tail()
    );

    // The deploy ClusterRole and signing-key Role arrive: the watches recover and readiness follows.
    installed.kubectl_apply(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {account}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: replika-manager
subjects:
  - kind: ServiceAccount
    name: {account}
    namespace: replika
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {account}
  namespace: replika
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: replika-signing-key
subjects:
  - kind: ServiceAccount
    name: {account}
    namespace: replika
"#
    ));
    wait_for_status(port, "/readyz", 200).await;

    let source_ns = namespace(&admin, "metrics-src").await;
    let targets = [
        namespace(&admin, "metrics-a").await,
        namespace(&admin, "metrics-b").await,
    ];
    let created_before = metric(port, "replika_copy_writes_total{operation=\"create\"}").await;
    create_configmap(&admin, &source_ns, "settings", &[("key", "one")]).await;
    create_replika(&admin, &source_ns, "settings", &[&targets[0], &targets[1]]).await;
    for target in &targets {
        wait_for_copy(&admin, target, "settings", &[("key", "one")]).await;
    }
    let created = metric(port, "replika_copy_writes_total{operation=\"create\"}").await;
    assert!(
        created >= created_before + 2.0,
        "two creates counted: {created_before} → {created}"
    );
    wait_for(
        "replika_copies_managed to count both copies",
        DEADLINE,
        || async { (metric(port, "replika_copies_managed").await >= 2.0).then_some(()) },
    )
    .await;
    assert!(metric(port, "replika_reconciles_total{result=\"success\"}").await >= 1.0);

    let propagated_before = metric(port, "replika_propagation_seconds_count").await;
    set_source_data(&admin, &source_ns, "settings", "two").await;
    for target in &targets {
        wait_for_copy(&admin, target, "settings", &[("key", "two")]).await;
    }
    let propagated = metric(port, "replika_propagation_seconds_count").await;
    assert!(
        propagated >= propagated_before + 2.0,
        "both copies' propagation observed: {propagated_before} → {propagated}"
    );
    assert!(metric(port, "replika_copy_writes_total{operation=\"update\"}").await >= 2.0);
    assert!(metric(port, "replika_passes_total{scope=\"whole\"}").await >= 2.0);

    // A namespace created concerns each Replika in that namespace alone.
    namespace(&admin, "metrics-new").await;
    wait_for("a narrow pass to be counted", DEADLINE, || async {
        (metric(port, "replika_passes_total{scope=\"narrow\"}").await >= 1.0).then_some(())
    })
    .await;
}

/// One leader-elected operator process with its own operations port.
struct Replica {
    identity: String,
    port: u16,
    process: OperatorProcess,
}

fn start_replica(kubeconfig: &std::path::Path, identity: &str) -> Replica {
    start_replica_with_lease(kubeconfig, identity, LEASE)
}

fn start_replica_with_lease(
    kubeconfig: &std::path::Path,
    identity: &str,
    lease: Duration,
) -> Replica {
    let args = leader_election_args(identity, lease);
    let OperatorWithPort { port, process } = start_operator_with_port(kubeconfig, identity, &args);
    Replica {
        identity: identity.to_string(),
        port,
        process,
    }
}

async fn wait_for_leader(client: &Client, replica: &Replica, deadline: Duration) {
    wait_for(
        &format!("{} to hold the Lease and reconcile", replica.identity),
        deadline,
        || async {
            leadership(client, &replica.identity, replica.port)
                .await
                .ok()
        },
    )
    .await;
}

/// Every copy the operator at `port` wrote so far.
async fn all_copy_writes(port: u16) -> f64 {
    copy_writes(port).await.values().sum()
}

#[tokio::test]
async fn only_the_leader_writes_and_a_follower_takes_over() {
    let _alone = ONE_TEST_AT_A_TIME.lock().await;
    admission();
    let installed = installed();
    let admin = installed.plane.admin_client().await;
    let kubeconfig = &installed.operator_kubeconfig;

    let mut first = start_replica(kubeconfig, "replika-first");
    wait_for_leader(&admin, &first, DEADLINE).await;
    let mut second = start_replica(kubeconfig, "replika-second");
    // A follower is ready (it serves webhooks) but does not reconcile.
    wait_for_status(second.port, "/readyz", 200).await;
    assert_eq!(metric(second.port, "replika_leader").await, 0.0);

    let source_ns = namespace(&admin, "ha-src").await;
    let targets = [
        namespace(&admin, "ha-a").await,
        namespace(&admin, "ha-b").await,
    ];
    create_configmap(&admin, &source_ns, "shared", &[("key", "one")]).await;
    create_replika(&admin, &source_ns, "shared", &[&targets[0], &targets[1]]).await;
    for target in &targets {
        wait_for_copy(&admin, target, "shared", &[("key", "one")]).await;
    }
    assert!(
        all_copy_writes(first.port).await >= 2.0,
        "the leader wrote the copies"
    );
    assert_eq!(
        all_copy_writes(second.port).await,
        0.0,
        "the follower wrote nothing\n{}",
        second.process.log_tail()
    );

    // The leader dies without releasing the Lease: the follower takes over once it expires.
    first.process.signal("KILL");
    let killed = Instant::now();
    wait_for_leader(&admin, &second, LEASE * 3 + DEADLINE).await;
    let handover = killed.elapsed();
    println!("handover after SIGKILL took {handover:?} (lease {LEASE:?})");
    assert!(
        first.process.wait_for_exit(DEADLINE).await.is_none(),
        "SIGKILL ended the first replica"
    );

    set_source_data(&admin, &source_ns, "shared", "two").await;
    for target in &targets {
        wait_for_copy(&admin, target, "shared", &[("key", "two")]).await;
    }
    assert!(
        all_copy_writes(second.port).await >= 2.0,
        "the new leader updated the copies\n{}",
        second.process.log_tail()
    );

    // SIGTERM: the leader finishes, releases the Lease and exits cleanly.
    second.process.signal("TERM");
    assert_eq!(
        second.process.wait_for_exit(DEADLINE).await,
        Some(0),
        "a clean exit on SIGTERM\n{}",
        second.process.log_tail()
    );
    assert_eq!(
        lease_holder(&admin, LEADER_LEASE).await,
        None,
        "the Lease was released on SIGTERM"
    );
}

/// When the Lease `name` was last renewed and last acquired, as recorded.
async fn lease_times(client: &Client, name: &str) -> (Option<Timestamp>, Option<Timestamp>) {
    let spec = Api::<Lease>::namespaced(client.clone(), "replika")
        .get(name)
        .await
        .expect("reading the Lease")
        .spec
        .unwrap_or_default();
    (
        spec.renew_time.map(|time| time.0),
        spec.acquire_time.map(|time| time.0),
    )
}

#[tokio::test]
async fn a_follower_with_a_shorter_lease_waits_out_the_one_the_leader_recorded() {
    let _alone = ONE_TEST_AT_A_TIME.lock().await;
    admission();
    let installed = installed();
    let admin = installed.plane.admin_client().await;
    let kubeconfig = &installed.operator_kubeconfig;
    // A rolling update that shortens --lease-duration: the old leader recorded 12 s.
    let (long, short) = (Duration::from_secs(12), Duration::from_secs(2));
    let old = start_replica_with_lease(kubeconfig, "replika-long-lease", long);
    wait_for_leader(&admin, &old, DEADLINE).await;
    // Paused (not dead): it may write until its renew deadline, two thirds of 12 s.
    old.process.signal("STOP");
    let (last_renewal, _) = lease_times(&admin, LEADER_LEASE).await;
    let last_renewal = last_renewal.expect("a renewal time");
    let new = start_replica_with_lease(kubeconfig, "replika-short-lease", short);
    wait_for_leader(&admin, &new, long * 3 + DEADLINE).await;
    let (_, acquired) = lease_times(&admin, LEADER_LEASE).await;
    let waited = acquired
        .expect("an acquire time")
        .duration_since(last_renewal)
        .as_secs_f64();
    assert!(
        waited >= long.as_secs_f64() - 0.5,
        "the new replica took the Lease {waited:.1}s after the old leader's last renewal, before the 12 s it recorded\n{}",
        new.process.log_tail()
    );
    old.process.signal("KILL");
}

#[tokio::test]
async fn a_replica_whose_webhook_server_fails_exits_so_that_it_is_restarted() {
    let installed = installed();
    let missing = std::env::temp_dir().join(format!("replika-no-certs-{}", std::process::id()));
    let args = [
        "--reconcile=false".to_string(),
        format!("--webhook-bind=127.0.0.1:{}", free_port()),
        format!("--tls-dir={}", missing.display()),
    ];
    let mut replica = start_operator(&installed.operator_kubeconfig, "no-certs", &args);
    let code = replica.wait_for_exit(DEADLINE).await;
    assert!(
        code.is_some_and(|code| code != 0),
        "exit code {code:?}\n{}",
        replica.log_tail()
    );
    assert!(
        replica.log().contains("the webhook server failed"),
        "{}",
        replica.log_tail()
    );
}
