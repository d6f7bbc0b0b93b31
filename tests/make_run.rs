//! `make run` as a new user runs it, from a kubeconfig at a path of their own:
//! against a cluster that is not the project's local plane (development mode:
//! no webhooks, unsigned Replikas replicate as the kubeconfig's user), and
//! against the local plane reached through a copy of its kubeconfig (the
//! operator serves and registers the webhooks, which sign authors).

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::Api;
use kube::{Client, ResourceExt};
use replika::api::{ANNOTATION_AUTHOR, Replika};
use support::*;
use testenv::{ControlPlane, run, wait_for};

/// The earlier Go operator's example Replika (matchAll minus the system namespaces and the
/// source's own), copying the ConfigMap `name` of `namespace`.
fn earlier_operators_example(name: &str, namespace: &str) -> String {
    format!(
        r#"
apiVersion: replika.prosimcorp.com/v1beta1
kind: Replika
metadata:
  name: {name}
  namespace: {namespace}
spec:
  synchronization:
    time: "20s"
  source:
    group: ""
    version: v1
    kind: ConfigMap
    name: {name}
    namespace: {namespace}
  target:
    namespaces:
      replicateIn: []
      matchAll: true
      excludeFrom: [kube-system, kube-public, kube-node-lease, {namespace}]
"#
    )
}

/// `make run` in its own process group (as a terminal runs it), logging to a file.
struct MakeRun {
    process: Child,
    log: PathBuf,
    _watchdog: Child,
}

impl MakeRun {
    fn start(kubeconfig: &Path, local_dir: &Path, log_name: &str) -> MakeRun {
        let log = std::env::temp_dir().join(format!("{log_name}-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("the make run log");
        let process = Command::new("make")
            .args(["--no-print-directory", "run"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("KUBECONFIG", kubeconfig)
            .env("LOCAL_DIR", local_dir)
            .env("REPLIKA_WEBHOOK_PORT", free_port().to_string())
            .env("REPLIKA_BIN", env!("CARGO_BIN_EXE_replika"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("the make run log"))
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .expect("make run starts");
        let watchdog = testenv::stop_when_we_end(process.id()).expect("a watchdog");
        MakeRun {
            process,
            log,
            _watchdog: watchdog,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_for_log(&self, line: &str) {
        wait_for(
            &format!("`{line}` in {}", self.log.display()),
            DEADLINE,
            || async { self.log().contains(line).then_some(()) },
        )
        .await;
    }

    /// Ctrl-C, as a user stops it: the whole process group gets SIGINT.
    async fn interrupt(mut self) -> String {
        let sent = run(Command::new("kill")
            .args(["-s", "INT", "--"])
            .arg(format!("-{}", self.process.id())));
        assert!(sent.status_ok, "kill -INT failed: {}", sent.stderr);
        let process = &mut self.process;
        wait_for("make run to end after Ctrl-C", DEADLINE, || {
            let exited = process.try_wait().expect("polling make run");
            async move { exited }
        })
        .await;
        self.log()
    }
}

impl Drop for MakeRun {
    fn drop(&mut self) {
        // The operator is a child of the script: end the whole group.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--"])
            .arg(format!("-{}", self.process.id()))
            .stderr(Stdio::null())
            .status();
        let _ = self.process.wait();
    }
}

/// A copy of the plane's admin kubeconfig in a directory of its own.
fn kubeconfig_copy(plane: &ControlPlane, dir: &Path, file: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("a kubeconfig directory");
    let copy = dir.join(file);
    std::fs::copy(plane.kubeconfig_path(), &copy).expect("copying the kubeconfig");
    copy
}

async fn author_of(client: &Client, namespace: &str, name: &str) -> Option<String> {
    Api::<Replika>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .expect("reading the Replika")
        .annotations()
        .get(ANNOTATION_AUTHOR)
        .cloned()
}

#[tokio::test]
async fn make_run_replicates_the_earlier_operators_example_against_any_cluster() {
    let plane = ControlPlane::shared();
    let client = plane.admin_client().await;
    let work = std::env::temp_dir().join(format!("replika-make-run-{}", std::process::id()));
    let (src, team_a, team_b) = (
        namespace(&client, "run-src").await,
        namespace(&client, "run-team-a").await,
        namespace(&client, "run-team-b").await,
    );

    // 1. A cluster that is not this project's local plane (its LOCAL_DIR has none):
    //    development mode, the Replika replicates unsigned as the kubeconfig's user.
    let elsewhere = kubeconfig_copy(plane, &work.join("home/.kube"), "config");
    let make_run = MakeRun::start(&elsewhere, &work.join("no-local-plane"), "make-run-dev");
    make_run
        .wait_for_log("admission: DEVELOPMENT MODE (--authorize-unsigned-as-self)")
        .await;
    create_configmap(&client, &src, "sample-configmap", &[("greeting", "hello")]).await;
    let applied = kubectl_apply(plane, &earlier_operators_example("sample-configmap", &src));
    assert!(
        applied.status_ok,
        "kubectl apply failed: {}",
        applied.stderr
    );
    for target in [&team_a, &team_b] {
        wait_for_copy(
            &client,
            target,
            "sample-configmap",
            &[("greeting", "hello")],
        )
        .await;
    }
    wait_for_condition(
        &client,
        &src,
        "sample-configmap",
        "Ready",
        "True",
        "AllTargetsSynced",
    )
    .await;
    assert_eq!(author_of(&client, &src, "sample-configmap").await, None);
    let log = make_run.interrupt().await;
    assert!(log.contains("run.sh: admission: DEVELOPMENT MODE"), "{log}");

    // 2. The project's local plane, reached through a kubeconfig at another path:
    //    the operator serves the webhooks, which sign the author.
    let local_dir = work.join("local-plane");
    kubeconfig_copy(plane, &local_dir, "kubeconfig");
    let own_copy = kubeconfig_copy(plane, &work.join("elsewhere"), "local.kubeconfig");
    let make_run = MakeRun::start(&own_copy, &local_dir, "make-run-local");
    make_run
        .wait_for_log("admission: this process serves Replika's webhooks")
        .await;
    create_configmap(&client, &src, "signed-configmap", &[("greeting", "signed")]).await;
    // The API server takes a moment to call new webhook configurations.
    let unsafe_replika =
        earlier_operators_example("unsafe", &src).replace("time: \"20s\"", "time: banana");
    wait_for(
        "the webhooks to deny an unsafe Replika",
        DEADLINE,
        || async {
            let applied = kubectl_apply_with(plane, &unsafe_replika, &["--dry-run=server"]);
            (!applied.status_ok && applied.stderr.contains("Replika rejected")).then_some(())
        },
    )
    .await;
    let applied = kubectl_apply(plane, &earlier_operators_example("signed-configmap", &src));
    assert!(
        applied.status_ok,
        "kubectl apply failed: {}",
        applied.stderr
    );
    assert!(
        author_of(&client, &src, "signed-configmap").await.is_some(),
        "the webhook signed its author"
    );
    for target in [&team_a, &team_b] {
        wait_for_copy(
            &client,
            target,
            "signed-configmap",
            &[("greeting", "signed")],
        )
        .await;
    }
    let log = make_run.interrupt().await;
    assert!(
        log.contains("points at this project's local control plane"),
        "{log}"
    );
    // Ctrl-C unregisters the webhooks, so nothing is left failing closed.
    let webhooks = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    assert!(
        webhooks
            .get_opt("replika-local")
            .await
            .expect("reading")
            .is_none()
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// Applies YAML with the real kubectl as admin (`extra`: more flags).
fn kubectl_apply_with(plane: &ControlPlane, yaml: &str, extra: &[&str]) -> testenv::CommandOutput {
    let file = std::env::temp_dir().join(format!("replika-make-run-{}.yaml", std::process::id()));
    std::fs::write(&file, yaml).expect("writing a manifest");
    run(plane
        .kubectl()
        .arg("apply")
        .args(extra)
        .arg("-f")
        .arg(&file))
}

fn kubectl_apply(plane: &ControlPlane, yaml: &str) -> testenv::CommandOutput {
    kubectl_apply_with(plane, yaml, &[])
}

#[tokio::test]
async fn development_mode_is_refused_to_a_service_account() {
    let installed = installed();
    let output = run(Command::new(env!("CARGO_BIN_EXE_replika"))
        .args(["run", "--authorize-unsigned-as-self"])
        .env("KUBECONFIG", &installed.operator_kubeconfig));
    assert!(!output.status_ok, "{}", output.stdout);
    assert!(
        output.stderr.contains("never for a ServiceAccount"),
        "{}",
        output.stderr
    );
}
