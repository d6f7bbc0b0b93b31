//! `deploy/overlays/cert-manager` end to end, with cert-manager's own control
//! loops and CA injector (built from its Go module by
//! tools/build-cert-manager.sh) running against the plane: the Issuers and
//! the CA chain become Ready, the cainjector writes the CA into both webhook
//! configurations, and the operator, as its ServiceAccount, serves the issued
//! certificate from files (as the pod mounts them) to a client that trusts
//! only the injected CA.
//!
//! The API server cannot reach the Service `replika-webhook` on a plane without
//! pods (no kubelet, no kube-proxy, and Endpoints may not point at loopback).
//! So, for the API server to call the webhooks, a second certificate for
//! 127.0.0.1 is issued by the overlay's CA Issuer, swapped into the served
//! directory (the reload a renewal triggers), and registered URL webhooks
//! get their caBundle from the cainjector.
//!
//! One test, in steps: each step needs what the one before it set up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;
use testenv::{CommandOutput, ControlPlane, run, run_with_stdin};

use crate::support::{OperatorProcess, free_port, start_operator};
use crate::tools::{
    RemoveWebhooksOnDrop, apply_server_side_stdin, cluster_lock, install_cert_manager_crds,
    kustomize, read, remove_webhooks, repo, scratch_dir,
};

/// How long cert-manager, the cainjector and the operator may take to act.
const DEADLINE: Duration = Duration::from_secs(60);

/// The two kinds of webhook configuration the cainjector writes a caBundle into.
const WEBHOOK_CONFIGURATIONS: [&str; 2] = [
    "validatingwebhookconfiguration",
    "mutatingwebhookconfiguration",
];

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

#[test]
fn cert_manager_overlay_end_to_end() {
    let plane = ControlPlane::shared();
    let _cluster = cluster_lock();
    let _webhooks = RemoveWebhooksOnDrop(plane);
    let work = scratch_dir("cert-manager");

    let cert_manager = install_the_overlay_and_run_cert_manager(plane, &work);
    let issued = the_chain_is_issued_and_its_ca_injected(plane, &cert_manager);
    let operator = the_operator_serves_the_issued_certificate(plane, &work, &issued);
    the_api_server_calls_the_webhooks_through_the_same_chain(plane, &cert_manager, &operator);
    the_webhooks_deny_a_bad_replika_and_default_a_good_one(plane, &operator);
}

/// cert-manager's controller and cainjector, running against the plane.
struct CertManager {
    controller: Background,
    cainjector: Background,
}

impl CertManager {
    /// The end of both logs, for failure messages.
    fn logs(&self) -> String {
        format!(
            "\ncontroller: {}\ncainjector: {}",
            self.controller.tail(),
            self.cainjector.tail()
        )
    }
}

/// The operator serving only the webhooks (`--reconcile=false`), from the
/// certificate files in `tls_dir`, as the operator's ServiceAccount.
struct WebhookServer {
    process: OperatorProcess,
    port: u16,
    tls_dir: PathBuf,
    /// The CA the cainjector injected, for a client that trusts only it.
    ca_file: PathBuf,
}

/// Installs cert-manager's CRDs and the cert-manager bundle, and starts
/// cert-manager's controller and cainjector.
fn install_the_overlay_and_run_cert_manager(plane: &ControlPlane, work: &Path) -> CertManager {
    install_cert_manager_crds(plane);
    apply_server_side_stdin(
        plane,
        &kustomize(plane, "deploy/overlays/cert-manager"),
        "the cert-manager bundle",
    );
    let bin = build_cert_manager();
    let kubeconfig = plane.kubeconfig_path().display().to_string();
    CertManager {
        controller: Background::start(
            Command::new(bin.join("controller")).args(["--kubeconfig", &kubeconfig]),
            work.join("controller.log"),
        ),
        cainjector: Background::start(
            Command::new(bin.join("cainjector")).args(["--kubeconfig", &kubeconfig]),
            work.join("cainjector.log"),
        ),
    }
}

/// Self-signed Issuer -> CA Certificate -> CA Issuer -> serving Certificate
/// all become Ready, and the cainjector writes the serving certificate's CA
/// into both webhook configurations. Returns the serving certificate's Secret.
fn the_chain_is_issued_and_its_ca_injected(
    plane: &ControlPlane,
    cert_manager: &CertManager,
) -> BTreeMap<String, Vec<u8>> {
    let ready = plane.kubectl_wait(
        &[
            "--namespace=replika",
            "--for=condition=Ready",
            "issuer/replika-selfsigned",
            "certificate/replika-ca",
            "issuer/replika-ca",
            "certificate/replika-webhook",
        ],
        DEADLINE,
    );
    assert!(
        ready.is_ok(),
        "cert-manager did not issue: {ready:?}{}",
        cert_manager.logs()
    );
    let issued = secret_data(plane, "replika-webhook-tls");
    wait_for_injected_ca(plane, cert_manager, "replika", &issued["ca.crt"]);
    issued
}

/// The operator serves the `issued` certificate for the Service's name, to a
/// client that trusts only the injected CA.
fn the_operator_serves_the_issued_certificate(
    plane: &ControlPlane,
    work: &Path,
    issued: &BTreeMap<String, Vec<u8>>,
) -> WebhookServer {
    let tls_dir = work.join("tls");
    std::fs::create_dir_all(&tls_dir).expect("the TLS directory");
    write_tls(&tls_dir, issued);
    let ca_file = work.join("injected-ca.crt");
    std::fs::write(&ca_file, &issued["ca.crt"]).expect("the CA file");
    let identity = tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(plane.service_account("replika", "replika-controller-manager"));
    let port = free_port();
    let args = [
        "--reconcile=false".to_string(),
        format!("--webhook-bind=127.0.0.1:{port}"),
        format!("--tls-dir={}", tls_dir.display()),
    ];
    let process = start_operator(&identity.kubeconfig, "cert-manager-webhook", &args);
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
         injected CA\n{}",
        process.log_tail()
    );
    WebhookServer {
        process,
        port,
        tls_dir,
        ca_file,
    }
}

/// A certificate for 127.0.0.1 from the same chain is swapped into the served
/// directory, the operator reloads it, and URL webhooks pointing at the
/// operator get their caBundle from the cainjector.
fn the_api_server_calls_the_webhooks_through_the_same_chain(
    plane: &ControlPlane,
    cert_manager: &CertManager,
    operator: &WebhookServer,
) {
    remove_webhooks(plane);
    apply_server_side_stdin(plane, LOCAL_CERTIFICATE, "a certificate for 127.0.0.1");
    let ready = plane.kubectl_wait(
        &[
            "--namespace=replika",
            "--for=condition=Ready",
            "certificate/replika-webhook-e2e",
        ],
        DEADLINE,
    );
    assert!(ready.is_ok(), "{ready:?}{}", cert_manager.logs());
    let local = secret_data(plane, "replika-webhook-e2e-tls");
    write_tls(&operator.tls_dir, &local);
    let url = format!("https://127.0.0.1:{}", operator.port);
    let reloaded = poll(DEADLINE, || {
        tls_verifies(&operator.ca_file, &[], &format!("{url}/validate")).then_some(())
    });
    assert!(
        reloaded.is_some(),
        "the operator did not reload the swapped certificate\n{}",
        operator.process.log_tail()
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
    wait_for_injected_ca(plane, cert_manager, "replika-e2e", &local["ca.crt"]);
}

/// Through the API server, the validating webhook denies a bad duration and
/// the mutating one fills the defaults of a good Replika.
fn the_webhooks_deny_a_bad_replika_and_default_a_good_one(
    plane: &ControlPlane,
    operator: &WebhookServer,
) {
    let denied = apply_replika(plane, "e2e-denied", "banana");
    assert!(
        !denied.status_ok
            && denied.stderr.contains("validate.replika.prosimcorp.com")
            && denied.stderr.contains("banana"),
        "the validating webhook should deny a bad duration: {denied:?}\n{}",
        operator.process.log_tail()
    );
    let admitted = apply_replika(plane, "e2e-admitted", "1m");
    assert!(
        admitted.status_ok,
        "{admitted:?}\n{}",
        operator.process.log_tail()
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

/// Waits until both webhook configurations called `name` hold `ca` as their caBundle.
fn wait_for_injected_ca(plane: &ControlPlane, cert_manager: &CertManager, name: &str, ca: &[u8]) {
    for kind in WEBHOOK_CONFIGURATIONS {
        let injected = poll(DEADLINE, || injected_ca(plane, kind, name)).unwrap_or_else(|| {
            panic!(
                "no caBundle injected into {kind} {name}{}",
                cert_manager.logs()
            )
        });
        assert_eq!(injected, ca, "{kind} {name}: the CA of its Certificate");
    }
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

/// A process that runs while a test needs it: killed when dropped, and by
/// testenv's watchdog if this test binary dies first.
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
        let watchdog = testenv::stop_when_we_end(child.id()).expect("a watchdog");
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
