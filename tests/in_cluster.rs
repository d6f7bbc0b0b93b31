//! Replika as its users run it: its image on a real node (testenv's
//! [`Cluster`]), installed from the rendered bundles and the Helm chart, its
//! pods behind their Services, their certificates mounted by the kubelet.
//!
//! One test, in steps, because one cluster with a node runs on a machine at a
//! time (it owns a bridge and iptables rules): this binary starts its own in
//! `target/in-cluster` and removes it at the end. It fails at once, naming
//! the directory, when another one runs (`make down` stops the one of `make
//! cluster`). It needs root and the Debian packages of `.ci/run`.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};
use testenv::{Cluster, CommandOutput, ControlPlane, Install, run, run_with_stdin, wait_for};

use support::{LEADER_LEASE, lease_holder, wait_for_copy};

const NAMESPACE: &str = "replika";
const DEPLOYMENT: &str = "deployment/replika-controller-manager";
/// The Deployment's `--lease-duration` default: a leader that stopped without
/// releasing the Lease would keep it this long.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long a renewed certificate may take to reach the pods: the kubelet's
/// sync of Secret volumes (10 s on this node) and cert-manager's reissue.
const RENEWAL_DEADLINE: Duration = Duration::from_secs(90);
/// The ConfigMap example of `examples/` and what it copies.
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/configmap-replika.yaml"
);
const EXAMPLE_SOURCE: &str = "sample-configmap";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replika_runs_from_its_image_as_installed_by_users() {
    let progress = Progress(Instant::now());
    let cluster = OwnCluster::start();
    let image = build_and_load_image(&cluster);
    progress.done("cluster and image");

    cluster
        .deploy(Install::SelfManaged, &image)
        .expect("the self-managed bundle is installed and available");
    progress.done("self-managed install");
    let client = cluster.plane().admin_client().await;
    let pods = ready_pods(&client).await;
    runs_under_the_shipped_security_context(&pods);
    all_replicas_serve_the_same_certificate(&cluster, &pods);
    the_example_replicates_and_is_observable(&cluster, &client, &pods).await;
    an_unsafe_replika_is_denied_through_the_service(&cluster);
    progress.done("replication, admission, observability");
    deleting_the_leader_hands_over_within_the_lease(&cluster, &client).await;
    progress.done("leader handover");
    a_rolling_restart_loses_no_update(&cluster, &client).await;
    progress.done("rolling restart");
    no_pod_was_restarted(&client).await;

    cluster
        .deploy(Install::CertManager, &image)
        .expect("the cert-manager bundle is installed and available");
    progress.done("cert-manager install");
    a_renewed_certificate_reaches_the_running_pods(&cluster, &client).await;
    progress.done("certificate renewal");
    no_pod_was_restarted(&client).await;

    cluster
        .deploy(Install::Helm, &image)
        .expect("the chart is installed and available");
    the_chart_replicates(&cluster, &client).await;
    progress.done("helm install");
    no_pod_was_restarted(&client).await;
    // Here rather than in the drop alone, whose error no passing test shows.
    if let Err(error) = ControlPlane::stop(&OwnCluster::dir()) {
        panic!("the test's cluster was not removed entirely: {error:#}");
    }
}

/// Prints when each stage ended, for reading a slow or failed run.
struct Progress(Instant);

impl Progress {
    fn done(&self, stage: &str) {
        eprintln!("in_cluster: {stage} done at {:.1?}", self.0.elapsed());
    }
}

/// The cluster of this test binary, removed when it is dropped (also when a
/// step panics; a second removal finds nothing left to do).
struct OwnCluster(Cluster);

impl OwnCluster {
    fn start() -> OwnCluster {
        let cluster =
            Cluster::start(&OwnCluster::dir()).unwrap_or_else(|error| panic!("{error:#}"));
        OwnCluster(cluster)
    }

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/in-cluster")
    }
}

impl std::ops::Deref for OwnCluster {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        if let Err(error) = ControlPlane::stop(&OwnCluster::dir()) {
            eprintln!("cannot remove the test's cluster: {error:#}");
        }
    }
}

/// `make image`: node/build-image.sh, then the archive into the node.
fn build_and_load_image(cluster: &Cluster) -> String {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/image");
    let mut build = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/node/build-image.sh"));
    // Without the variables cargo sets for this test (some build scripts,
    // ring's among them, rebuild when they change), the build reuses what
    // `make image` built, and `make image` then reuses this one.
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|name| name.starts_with("CARGO_") && name != "CARGO_HOME")
        {
            build.env_remove(name);
        }
    }
    let built = run(build.arg(&out));
    assert!(
        built.status_ok,
        "node/build-image.sh failed: {}",
        built.stderr
    );
    cluster
        .import_image(&out.join("replika.tar"))
        .expect("the image is imported");
    built.stdout.trim().to_owned()
}

/// The Deployment's pods, all Ready (as `deploy` waited for).
async fn ready_pods(client: &Client) -> Vec<Pod> {
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default().labels("app.kubernetes.io/name=replika"))
        .await
        .expect("listing the operator's pods")
        .items;
    let ready = pods.iter().filter(|pod| is_ready(pod)).count();
    assert_eq!(ready, 2, "two ready pods: {:?}", names(&pods));
    pods
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|status| status.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|pod| pod.metadata.name.clone().unwrap_or_default())
        .collect()
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|status| status.pod_ip.clone())
        .expect("a running pod has an IP")
}

/// The operator's processes, seen from the host: user 65532, no
/// capabilities, and a read-only root filesystem — everything it did so far
/// worked under the securityContext of the bundle.
fn runs_under_the_shipped_security_context(pods: &[Pod]) {
    let processes = operator_processes();
    assert_eq!(processes.len(), pods.len(), "one operator process per pod");
    for pid in processes {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(field("Uid:"), ["65532"; 4], "runs as 65532");
        assert_eq!(field("Gid:"), ["65532"; 4], "runs as group 65532");
        assert_eq!(field("CapEff:"), ["0000000000000000"], "no capabilities");
        assert_eq!(field("NoNewPrivs:"), ["1"], "no privilege escalation");
        assert_eq!(field("Seccomp:"), ["2"], "a seccomp filter");
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("its mounts");
        let root = mounts
            .lines()
            .find(|line| line.split(' ').nth(4) == Some("/"))
            .expect("a root mount");
        let options = root.split(' ').nth(5).unwrap_or_default();
        assert!(
            options.split(',').any(|o| o == "ro"),
            "read-only root: {root}"
        );
    }
}

/// The pids of the processes running `/replika` (the image's entrypoint).
fn operator_processes() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.starts_with(b"/replika\0run\0"))
        })
        .collect()
}

/// Self-managed: every replica serves the certificate of the shared Secret.
fn all_replicas_serve_the_same_certificate(cluster: &Cluster, pods: &[Pod]) {
    let stored = secret_certificate(cluster).expect("the Secret replika-webhook-tls");
    for pod in pods {
        assert_eq!(
            served_certificate(&pod_ip(pod)),
            Some(stored.clone()),
            "{:?} serves the certificate of replika-webhook-tls",
            pod.metadata.name
        );
    }
}

async fn the_example_replicates_and_is_observable(
    cluster: &Cluster,
    client: &Client,
    pods: &[Pod],
) {
    let namespaces = ["e2e-team-a", "e2e-team-b"];
    for namespace in namespaces {
        kubectl_ok(cluster, &["create", "namespace", namespace]);
    }
    kubectl_ok(cluster, &["apply", "--filename", EXAMPLE]);
    for namespace in namespaces {
        wait_for_copy(
            client,
            namespace,
            EXAMPLE_SOURCE,
            &[("example-key", "value")],
        )
        .await;
    }
    if let Err(error) = cluster.plane().kubectl_wait(
        &[
            "--namespace=default",
            "--for=condition=Ready",
            "replika/replika-sample",
        ],
        Duration::from_secs(60),
    ) {
        panic!("replika-sample not Ready: {error}");
    }
    let described = kubectl_ok(
        cluster,
        &["describe", "--namespace=default", "replika/replika-sample"],
    );
    assert!(
        described.contains("Synced"),
        "Events in kubectl describe: {described}"
    );

    let leader = lease_holder(client, LEADER_LEASE).await.expect("a leader");
    let logs = kubectl_ok(cluster, &["logs", "--namespace", NAMESPACE, &leader]);
    assert!(
        logs.lines().count() > 1
            && logs
                .lines()
                .all(|line| serde_json::from_str::<serde_json::Value>(line).is_ok()),
        "kubectl logs shows the JSON log: {logs}"
    );
    for pod in pods {
        let metrics = pod_metrics(pod);
        assert!(
            metrics.contains("replika_leader"),
            "metrics of {}: {metrics}",
            pod_ip(pod)
        );
    }
    let leader_pod = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(&leader))
        .expect("the leader is a pod");
    let leader_metrics = pod_metrics(leader_pod);
    assert!(
        leader_metrics.contains("replika_copy_writes_total"),
        "the leader counts its writes: {leader_metrics}"
    );
}

/// `GET /metrics` of the operator in `pod`, through its pod IP.
fn pod_metrics(pod: &Pod) -> String {
    let url = format!("http://{}:8080/metrics", pod_ip(pod));
    let metrics = run(Command::new("curl").args(["--silent", "--fail", "--max-time", "5", &url]));
    assert!(metrics.status_ok, "GET {url}: {}", metrics.stderr);
    metrics.stdout
}

/// The webhook is reached by the API server through the Service (the
/// bundle's webhook configurations name it, not a URL): a user who may write
/// Replikas but not read a Secret cannot have it copied.
fn an_unsafe_replika_is_denied_through_the_service(cluster: &Cluster) {
    let config = kubectl_ok(
        cluster,
        &[
            "get",
            "validatingwebhookconfiguration",
            "replika",
            "--output=jsonpath={.webhooks[0].clientConfig.service.name}",
        ],
    );
    assert_eq!(config, "replika-webhook");
    let default = "--namespace=default";
    let replikas = "--resource=replikas.replika.prosimcorp.com";
    kubectl_ok(
        cluster,
        &[
            "create",
            "secret",
            "generic",
            "db-password",
            default,
            "--from-literal=password=hunter2",
        ],
    );
    kubectl_ok(
        cluster,
        &[
            "create",
            "role",
            "replika-author",
            default,
            "--verb=get,create,patch",
            replikas,
        ],
    );
    kubectl_ok(
        cluster,
        &[
            "create",
            "rolebinding",
            "mallory",
            default,
            "--role=replika-author",
            "--user=mallory",
        ],
    );
    let unsafe_replika = r#"{
      "apiVersion": "replika.prosimcorp.com/v1beta1", "kind": "Replika",
      "metadata": {"name": "steal-db-password", "namespace": "default"},
      "spec": {"synchronization": {"time": "1m"},
               "source": {"group": "", "version": "v1", "kind": "Secret", "name": "db-password"},
               "target": {"namespaces": {"matchAll": false, "replicateIn": ["e2e-team-a"]}}}}"#;
    let applied = kubectl_stdin(
        cluster,
        &["apply", "--filename=-", "--as=mallory"],
        unsafe_replika,
    );
    assert!(
        !applied.status_ok,
        "an unsafe Replika was admitted: {}",
        applied.stdout
    );
    assert!(
        applied.stderr.contains("denied the request")
            && applied.stderr.contains("mallory may not get secrets"),
        "denied by the webhook: {}",
        applied.stderr
    );
}

/// Deleting the leader's pod: the kubelet's SIGTERM makes it release the
/// Lease, the other replica takes over well within the lease duration, and
/// copies keep following their source.
async fn deleting_the_leader_hands_over_within_the_lease(cluster: &Cluster, client: &Client) {
    let leader = lease_holder(client, LEADER_LEASE).await.expect("a leader");
    let deleted = Instant::now();
    kubectl_ok(
        cluster,
        &[
            "delete",
            "pod",
            "--namespace",
            NAMESPACE,
            "--wait=false",
            &leader,
        ],
    );
    let next = wait_for(
        "another replica to take the Lease",
        LEASE_DURATION,
        || async {
            lease_holder(client, LEADER_LEASE)
                .await
                .filter(|holder| *holder != leader)
        },
    )
    .await;
    let handover = deleted.elapsed();
    assert!(
        handover < LEASE_DURATION / 2,
        "{next} took over {handover:?} after {leader} was told to stop: the Lease was not released"
    );
    set_example_source(cluster, "after-handover");
    for namespace in ["e2e-team-a", "e2e-team-b"] {
        wait_for_copy(
            client,
            namespace,
            EXAMPLE_SOURCE,
            &[("example-key", "after-handover")],
        )
        .await;
    }
    kubectl_ok(
        cluster,
        &[
            "rollout",
            "status",
            "--namespace",
            NAMESPACE,
            "--timeout=120s",
            DEPLOYMENT,
        ],
    );
}

/// `kubectl rollout restart` replaces both pods one by one; updates made
/// while it runs all arrive.
async fn a_rolling_restart_loses_no_update(cluster: &Cluster, client: &Client) {
    kubectl_ok(
        cluster,
        &["rollout", "restart", "--namespace", NAMESPACE, DEPLOYMENT],
    );
    let mut round = 0;
    loop {
        round += 1;
        let value = format!("during-restart-{round}");
        set_example_source(cluster, &value);
        let status = run(cluster.plane().kubectl().args([
            "rollout",
            "status",
            "--namespace",
            NAMESPACE,
            "--timeout=1s",
            DEPLOYMENT,
        ]));
        if status.status_ok {
            for namespace in ["e2e-team-a", "e2e-team-b"] {
                wait_for_copy(
                    client,
                    namespace,
                    EXAMPLE_SOURCE,
                    &[("example-key", &value)],
                )
                .await;
            }
            break;
        }
        assert!(round < 120, "the rollout did not finish: {}", status.stderr);
    }
    ready_pods(client).await;
}

/// Probes: the liveness probe never restarted a container in this run.
async fn no_pod_was_restarted(client: &Client) {
    for pod in ready_pods(client).await {
        let restarts: i32 = pod
            .status
            .as_ref()
            .and_then(|status| status.container_statuses.as_ref())
            .map(|statuses| statuses.iter().map(|s| s.restart_count).sum())
            .unwrap_or_default();
        assert_eq!(restarts, 0, "{:?} was restarted", pod.metadata.name);
    }
}

/// cert-manager: a new certificate (its Secret deleted, so it is reissued)
/// reaches the running pods through the kubelet's volume update, with no
/// restart, and admission keeps working.
async fn a_renewed_certificate_reaches_the_running_pods(cluster: &Cluster, client: &Client) {
    let pods = ready_pods(client).await;
    let before = secret_certificate(cluster).expect("the Secret replika-webhook-tls");
    for pod in &pods {
        assert_eq!(
            served_certificate(&pod_ip(pod)),
            Some(before.clone()),
            "serves cert-manager's certificate"
        );
    }
    kubectl_ok(
        cluster,
        &[
            "delete",
            "secret",
            "--namespace",
            NAMESPACE,
            "replika-webhook-tls",
        ],
    );
    let renewed = wait_for(
        "cert-manager to issue a new certificate",
        RENEWAL_DEADLINE,
        || async { secret_certificate(cluster).filter(|now| *now != before) },
    )
    .await;
    for pod in &pods {
        let ip = pod_ip(pod);
        wait_for(
            &format!("{ip} to serve the renewed certificate"),
            RENEWAL_DEADLINE,
            || async { (served_certificate(&ip).as_ref() == Some(&renewed)).then_some(()) },
        )
        .await;
    }
    let after = ready_pods(client).await;
    assert_eq!(names(&after), names(&pods), "the same pods, not new ones");
    set_example_source(cluster, "after-renewal");
    kubectl_ok(cluster, &["apply", "--filename", EXAMPLE]);
    wait_for_copy(
        client,
        "e2e-team-a",
        EXAMPLE_SOURCE,
        &[("example-key", "value")],
    )
    .await;
}

/// The chart's operator, with its own certificates, admits and replicates
/// the example (the bundle's removal took the previous Replika with it).
async fn the_chart_replicates(cluster: &Cluster, client: &Client) {
    ready_pods(client).await;
    kubectl_ok(cluster, &["apply", "--filename", EXAMPLE]);
    for namespace in ["e2e-team-a", "e2e-team-b"] {
        wait_for_copy(
            client,
            namespace,
            EXAMPLE_SOURCE,
            &[("example-key", "value")],
        )
        .await;
    }
}

/// Sets the example's source ConfigMap's one key.
fn set_example_source(cluster: &Cluster, value: &str) {
    let patch = format!(r#"{{"data":{{"example-key":"{value}"}}}}"#);
    kubectl_ok(
        cluster,
        &[
            "patch",
            "configmap",
            "--namespace=default",
            EXAMPLE_SOURCE,
            "--type=merge",
            "--patch",
            &patch,
        ],
    );
}

/// The fingerprint of the certificate in the Secret `replika-webhook-tls`,
/// if the Secret exists.
fn secret_certificate(cluster: &Cluster) -> Option<String> {
    let read = run(cluster.plane().kubectl().args([
        "get",
        "secret",
        "--namespace",
        NAMESPACE,
        "replika-webhook-tls",
        "--output=jsonpath={.data.tls\\.crt}",
    ]));
    read.status_ok
        .then(|| fingerprint_of(&decode_base64(&read.stdout)))
        .flatten()
}

/// The fingerprint of the certificate served on `ip:9443`, if one is.
fn served_certificate(ip: &str) -> Option<String> {
    let served = run(Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("{ip}:9443"),
            "-servername",
            "replika-webhook.replika.svc",
        ])
        .stdin(std::process::Stdio::null()));
    fingerprint_of(&served.stdout)
}

/// The SHA-256 fingerprint of the first PEM certificate in `pem`, if any.
fn fingerprint_of(pem: &str) -> Option<String> {
    let mut openssl = Command::new("openssl");
    openssl.args(["x509", "-noout", "-fingerprint", "-sha256"]);
    let out = run_with_stdin(&mut openssl, pem);
    out.status_ok.then(|| out.stdout.trim().to_owned())
}

fn decode_base64(text: &str) -> String {
    run_with_stdin(Command::new("base64").arg("--decode"), text).stdout
}

fn kubectl_ok(cluster: &Cluster, args: &[&str]) -> String {
    let output = run(cluster.plane().kubectl().args(args));
    assert!(
        output.status_ok,
        "kubectl {args:?} failed: {}",
        output.stderr
    );
    output.stdout
}

fn kubectl_stdin(cluster: &Cluster, args: &[&str], input: &str) -> CommandOutput {
    run_with_stdin(cluster.plane().kubectl().args(args), input)
}
