//! Shared by the engine's integration tests: the real control plane, the CRD and
//! RBAC of `deploy/` installed on it, and one `replika` operator process per test
//! binary, running as the `deploy/` ServiceAccount (never as admin).

#![allow(dead_code)] // Each test binary uses its own subset of these helpers.

mod operations;

#[allow(unused_imports)] // As above: not every test binary reads the operations port.
pub use operations::*;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use replika::api::Replika;
use serde_json::Value;
use testenv::{ControlPlane, TestNamespace, run, wait_for};

/// Deadline for anything the operator should do promptly.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The plane and the running operator of this test binary.
pub struct Harness {
    pub plane: &'static ControlPlane,
    /// Kubeconfig of the operator's ServiceAccount (deploy RBAC, token from TokenRequest).
    pub operator_kubeconfig: PathBuf,
    operator: OperatorProcess,
}

/// An operator process, and the watchdog that ends it with this test binary.
pub struct OperatorProcess {
    process: Child,
    log: PathBuf,
    _watchdog: Child,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

/// The plane of this test binary with `deploy/base` installed, and the
/// operator's ServiceAccount identity; no operator runs yet.
pub struct Installed {
    pub plane: &'static ControlPlane,
    /// Kubeconfig of the operator's ServiceAccount (deploy RBAC, token from TokenRequest).
    pub operator_kubeconfig: PathBuf,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// The plane with `deploy/base` installed, set up on first use.
pub fn installed() -> &'static Installed {
    INSTALLED.get_or_init(|| {
        let plane = ControlPlane::shared();
        install_deploy_base(plane);
        // The operator's identity comes from the TokenRequest API; testenv needs a runtime for it.
        let identity = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .expect("a tokio runtime")
                .block_on(plane.service_account("replika", "replika-controller-manager"))
        })
        .join()
        .expect("the ServiceAccount identity");
        Installed {
            plane,
            operator_kubeconfig: identity.kubeconfig,
        }
    })
}

impl Installed {
    /// Applies YAML with the real kubectl as admin.
    pub fn kubectl_apply(&self, yaml: &str) {
        static APPLIED: AtomicUsize = AtomicUsize::new(0);
        let file = std::env::temp_dir().join(format!(
            "replika-test-{}-{}.yaml",
            std::process::id(),
            APPLIED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, yaml).expect("writing a manifest");
        let output = run(self.plane.kubectl().arg("apply").arg("-f").arg(&file));
        assert!(
            output.status_ok,
            "kubectl apply failed: {}\n{yaml}",
            output.stderr
        );
    }
}

/// The harness: the admission webhooks served by their own operator process
/// (see [`admission`]) and one operator that only reconciles, set up on first use.
pub fn harness() -> &'static Harness {
    admission();
    harness_with(|_| Vec::new())
}

/// An operator process that only serves the admission webhooks (`--reconcile=false`),
/// registered with the API server, so that every Replika a test creates is
/// admitted and its author signed, as in a real cluster. Started once per binary.
pub struct Admission {
    pub port: u16,
    process: OperatorProcess,
}

static ADMISSION: OnceLock<Admission> = OnceLock::new();

/// The webhook-only operator of this test binary, set up on first use.
pub fn admission() -> &'static Admission {
    ADMISSION.get_or_init(|| {
        let installed = installed();
        let cert_dir =
            std::env::temp_dir().join(format!("replika-admission-certs-{}", std::process::id()));
        replika_certs(&cert_dir);
        let port = free_port();
        let args = [
            "--reconcile=false".to_string(),
            format!("--webhook-bind=127.0.0.1:{port}"),
            format!("--tls-dir={}", cert_dir.display()),
        ];
        let process = start_operator(&installed.operator_kubeconfig, "admission", &args);
        wait_until_listening(port, &process);
        let ca = std::fs::read(cert_dir.join("ca.crt")).expect("the CA certificate");
        register_webhooks(
            installed.plane,
            "replika-local",
            &format!("https://127.0.0.1:{port}"),
            ca,
            None,
        );
        Admission { port, process }
    })
}

impl Admission {
    /// The end of the webhook process's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// Blocks until something accepts connections on `port`, failing with the
/// operator's log when that takes too long.
fn wait_until_listening(port: u16, operator: &OperatorProcess) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on port {port} after {DEADLINE:?}\n{}",
            operator.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes a CA and a serving certificate for 127.0.0.1 into `out` with `replika certs`.
pub fn replika_certs(out: &std::path::Path) {
    let made = run(Command::new(env!("CARGO_BIN_EXE_replika"))
        .arg("certs")
        .arg("--out")
        .arg(out)
        .args(["--host", "127.0.0.1"]));
    assert!(made.status_ok, "replika certs failed: {}", made.stderr);
}

fn base64_of(bytes: Vec<u8>) -> String {
    serde_json::to_value(k8s_openapi::ByteString(bytes))
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .expect("base64")
}

/// Applies the url-based webhook configurations of `webhook-config/local`, limited
/// to namespace `only_in` when given.
pub fn register_webhooks(
    plane: &ControlPlane,
    name: &str,
    url: &str,
    ca_bundle_pem: Vec<u8>,
    only_in: Option<&str>,
) {
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/webhook-config/local/webhooks.yaml.tmpl"
    ))
    .expect("the local webhook template");
    let manifest = template
        .replace("${WEBHOOK_NAME}", name)
        .replace("${WEBHOOK_URL}", url)
        .replace("${CA_BUNDLE}", &base64_of(ca_bundle_pem));
    let manifest = match only_in {
        Some(namespace) => manifest.replace(
            "    failurePolicy: Fail\n",
            &format!("    failurePolicy: Fail\n    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {namespace}}}}}\n"),
        ),
        None => manifest.replace(
            "    failurePolicy: Fail\n",
            &format!("    failurePolicy: Fail\n    namespaceSelector: {{matchExpressions: [{{key: {NO_ADMISSION_LABEL}, operator: DoesNotExist}}]}}\n"),
        ),
    };
    let file = std::env::temp_dir().join(format!(
        "replika-webhooks-{name}-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&file, manifest).expect("writing the webhook configuration");
    let applied = run(plane
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(&file));
    assert!(
        applied.status_ok,
        "registering the webhooks failed: {}",
        applied.stderr
    );
}

/// The harness, set up on first use; `extra_args` prepares the plane and returns
/// more arguments for `replika run`. Only the first call's setup runs.
pub fn harness_with(extra_args: impl FnOnce(&ControlPlane) -> Vec<String>) -> &'static Harness {
    HARNESS.get_or_init(|| {
        let installed = installed();
        let args = extra_args(installed.plane);
        let operator = start_operator(&installed.operator_kubeconfig, "operator", &args);
        Harness {
            plane: installed.plane,
            operator_kubeconfig: installed.operator_kubeconfig.clone(),
            operator,
        }
    })
}

/// A free TCP port on 127.0.0.1 (free when asked; tests bind it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// `GET http://127.0.0.1:{port}{path}`: the status code and body, or `None`
/// when nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn install_deploy_base(plane: &ControlPlane) {
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/base");
    let applied = run(plane.kubectl().args(["apply", "--server-side", "-k", base]));
    assert!(
        applied.status_ok,
        "kubectl apply -k deploy/base failed: {}",
        applied.stderr
    );
    if let Err(error) = plane.kubectl_wait(
        &[
            "--for=condition=Established",
            "crd/replikas.replika.prosimcorp.com",
        ],
        Duration::from_secs(60),
    ) {
        panic!("the Replika CRD was not established: {error}");
    }
}

/// Starts the operator binary built by cargo with `replika run <args>`, and a
/// watchdog that kills it when this test process is gone (however it ended).
pub fn start_operator(
    kubeconfig: &std::path::Path,
    name: &str,
    args: &[String],
) -> OperatorProcess {
    let log = std::env::temp_dir().join(format!("replika-{name}-{}.log", std::process::id()));
    let log_file = std::fs::File::create(&log).expect("the operator log file");
    let process = Command::new(env!("CARGO_BIN_EXE_replika"))
        .arg("run")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("REPLIKA_LOG", "info,replika=debug")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("the operator log file"))
        .stderr(log_file)
        .spawn()
        .expect("the replika binary starts");
    let watchdog = testenv::stop_when_we_end(process.id()).expect("the operator watchdog starts");
    OperatorProcess {
        process,
        log,
        _watchdog: watchdog,
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        // Already gone is fine: the goal is that it no longer runs.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl OperatorProcess {
    /// Sends `signal` (e.g. `KILL`, `TERM`) to the operator.
    pub fn signal(&self, signal: &str) {
        let sent = run(Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.process.id().to_string()));
        assert!(sent.status_ok, "kill -{signal} failed: {}", sent.stderr);
    }

    /// Waits for the operator to exit, and returns its exit code (`None` when a signal ended it).
    pub async fn wait_for_exit(&mut self, deadline: Duration) -> Option<i32> {
        let process = &mut self.process;
        wait_for("the operator to exit", deadline, || {
            let exited = process.try_wait().expect("polling the operator process");
            async move { exited }
        })
        .await
        .code()
    }

    /// The operator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "operator pid {}, log {}:\n{}",
            self.process.id(),
            self.log.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }
}

impl Harness {
    pub async fn admin(&self) -> Client {
        self.plane.admin_client().await
    }

    /// The last lines of the main operator's log, for failure messages.
    pub fn operator_log_tail(&self) -> String {
        self.operator.log_tail()
    }

    /// The main operator's log so far.
    pub fn operator_log(&self) -> String {
        self.operator.log()
    }

    /// Applies YAML with the real kubectl as admin.
    pub fn kubectl_apply(&self, yaml: &str) {
        installed().kubectl_apply(yaml);
    }
}

/// A Replika manifest `namespace/name` copying the core-group object
/// `kind/source` of its own namespace; `target` is the body of `spec.target`
/// and `policy` of `spec.policy`, in YAML flow style (e.g. `{}`).
pub fn replika_manifest(
    name: &str,
    namespace: &str,
    kind: &str,
    source: &str,
    target: &str,
    policy: &str,
) -> String {
    format!(
        r#"
apiVersion: replika.prosimcorp.com/v1beta1
kind: Replika
metadata:
  name: {name}
  namespace: {namespace}
spec:
  synchronization:
    time: "30s"
  source:
    group: ""
    version: v1
    kind: {kind}
    name: {source}
  target: {target}
  policy: {policy}
"#
    )
}

/// Namespaces with this label are not matched by the webhooks of
/// [`register_webhooks`]: Replikas there are stored as if admission had been bypassed.
pub const NO_ADMISSION_LABEL: &str = "replika.test/no-admission";

/// A fresh namespace where Replikas bypass admission (see [`NO_ADMISSION_LABEL`]).
pub async fn namespace_without_admission(client: &Client, prefix: &str) -> String {
    labelled_namespace(client, prefix, NO_ADMISSION_LABEL, "true").await
}

/// A fresh namespace labelled `key=value`, named by the API server after `prefix`.
pub async fn labelled_namespace(client: &Client, prefix: &str, key: &str, value: &str) -> String {
    let name = namespace(client, prefix).await;
    let patch = serde_json::json!({"metadata": {"labels": {key: value}}});
    Api::<Namespace>::all(client.clone())
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("labelling a namespace");
    name
}

/// A fresh namespace.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    TestNamespace::new(client, prefix).await.name
}

/// Creates a ConfigMap with `data` in `namespace`.
pub async fn create_configmap(
    client: &Client,
    namespace: &str,
    name: &str,
    data: &[(&str, &str)],
) -> ConfigMap {
    let configmap: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "data": data.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect::<serde_json::Map<_, _>>(),
    }))
    .expect("a ConfigMap");
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &configmap)
        .await
        .expect("the ConfigMap is created")
}

/// The ConfigMap `name` in `namespace`, if any.
pub async fn get_configmap(client: &Client, namespace: &str, name: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .expect("reading a ConfigMap")
}

/// Data of a ConfigMap as (key, value) pairs.
pub fn data_of(configmap: &ConfigMap) -> Vec<(String, String)> {
    configmap
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Waits until `namespace/name` exists with exactly `expected` data.
pub async fn wait_for_copy(
    client: &Client,
    namespace: &str,
    name: &str,
    expected: &[(&str, &str)],
) {
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    wait_for(
        &format!("{namespace}/{name} to hold {expected:?}"),
        DEADLINE,
        || async {
            let copy = get_configmap(client, namespace, name).await?;
            (data_of(&copy) == expected).then_some(())
        },
    )
    .await;
}

/// Waits until `namespace/name` does not exist.
pub async fn wait_for_absence(client: &Client, namespace: &str, name: &str) {
    wait_for(
        &format!("{namespace}/{name} to be absent"),
        DEADLINE,
        || async {
            get_configmap(client, namespace, name)
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// The Replika `namespace/name`.
pub async fn get_replika(client: &Client, namespace: &str, name: &str) -> Replika {
    Api::<Replika>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .expect("reading the Replika")
}

/// Waits until condition `type_` of the Replika has `status` and `reason`, and returns the Replika.
/// On timeout the message shows the status last seen and the end of the operator's log.
pub async fn wait_for_condition(
    client: &Client,
    namespace: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> Replika {
    let last_seen = std::sync::Mutex::new(String::new());
    let wanted = format!("Replika {namespace}/{name} to have {type_}={status} ({reason})");
    let waiting = wait_for(&wanted, DEADLINE * 2, || async {
        let replika = get_replika(client, namespace, name).await;
        *last_seen.lock().expect("not poisoned") =
            serde_json::to_string_pretty(&replika.status).unwrap_or_default();
        let condition = replika
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)?
            .clone();
        (condition.status == status && condition.reason == reason).then_some(replika)
    });
    match tokio::time::timeout(DEADLINE, waiting).await {
        Ok(replika) => replika,
        Err(_) => panic!(
            "timed out after {DEADLINE:?} waiting for {wanted}; last status: {}\noperator log:\n{}",
            last_seen.lock().expect("not poisoned"),
            harness().operator_log_tail()
        ),
    }
}

/// Waits until the Replika is not Ready for `reason`, and returns the condition's message.
pub async fn wait_until_blocked(
    client: &Client,
    namespace: &str,
    name: &str,
    reason: &str,
) -> String {
    let replika = wait_for_condition(client, namespace, name, "Ready", "False", reason).await;
    replika
        .status
        .and_then(|status| status.conditions.into_iter().find(|c| c.type_ == "Ready"))
        .map(|condition| condition.message)
        .unwrap_or_default()
}

/// Deletes the Replika and waits until it is gone (its finalizer has run).
pub async fn delete_replika(client: &Client, namespace: &str, name: &str) {
    let api = Api::<Replika>::namespaced(client.clone(), namespace);
    api.delete(name, &DeleteParams::default())
        .await
        .expect("deleting the Replika");
    wait_until_gone(client, namespace, name).await;
}

/// Waits until the Replika is gone (its finalizer has run).
pub async fn wait_until_gone(client: &Client, namespace: &str, name: &str) {
    let api = Api::<Replika>::namespaced(client.clone(), namespace);
    wait_for(
        &format!("Replika {namespace}/{name} to be gone"),
        DEADLINE,
        || async { api.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

/// Names of every namespace that is not being deleted.
pub async fn active_namespaces(client: &Client) -> Vec<String> {
    Api::<Namespace>::all(client.clone())
        .list(&Default::default())
        .await
        .expect("listing namespaces")
        .into_iter()
        .filter(|ns| ns.metadata.deletion_timestamp.is_none())
        .map(|ns| ns.name_any())
        .collect()
}
