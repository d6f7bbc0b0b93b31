//! The admission webhooks through the real API server: kubectl applies, the
//! API server calls the operator over TLS, and the operator answers.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::core::ObjectMeta;
use serde_json::Value;
use support::*;
use testenv::{CommandOutput, run, wait_for};

/// The webhook served by this binary's operator.
struct Webhook {
    port: u16,
    /// A kubelet-style mounted Secret: `..data` points at the current version.
    cert_dir: PathBuf,
    /// CA files of the two certificate sets the tests serve, in order.
    ca_files: [PathBuf; 2],
}

static WEBHOOK: OnceLock<Webhook> = OnceLock::new();

/// Points `dir/..data` at `version`, the way the kubelet updates a mounted Secret.
fn switch_cert_version(dir: &Path, version: &str) {
    let staged = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(version, &staged).expect("staging the ..data link");
    std::fs::rename(&staged, dir.join("..data")).expect("swapping ..data");
}

/// The harness, with the operator serving the webhook from a kubelet-style cert directory.
fn webhook() -> (&'static Harness, &'static Webhook) {
    let harness = harness_with(|plane| {
        let cert_dir =
            std::env::temp_dir().join(format!("replika-webhook-certs-{}", std::process::id()));
        for version in ["..v1", "..v2"] {
            replika_certs(&cert_dir.join(version));
        }
        switch_cert_version(&cert_dir, "..v1");
        for file in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{file}"), cert_dir.join(file))
                .expect("file links");
        }
        let port = free_port();
        let ca_files = [cert_dir.join("..v1/ca.crt"), cert_dir.join("..v2/ca.crt")];
        // The bundle trusts both CAs, as during a cert-manager CA rollover.
        let bundle: Vec<u8> = ca_files
            .iter()
            .flat_map(|f| std::fs::read(f).expect("a CA file"))
            .collect();
        register_webhooks(
            plane,
            "replika-local",
            &format!("https://127.0.0.1:{port}"),
            bundle,
            None,
        );
        WEBHOOK
            .set(Webhook {
                port,
                cert_dir: cert_dir.clone(),
                ca_files,
            })
            .unwrap_or_else(|_| panic!("the webhook is set up once"));
        vec![
            "--webhook-bind".into(),
            format!("127.0.0.1:{port}"),
            "--tls-dir".into(),
            cert_dir.display().to_string(),
        ]
    });
    (harness, WEBHOOK.get().expect("set up with the harness"))
}

/// Applies `yaml` with kubectl as the identity behind `kubectl`, and returns what kubectl said.
fn apply_as(mut kubectl: Command, yaml: &str) -> CommandOutput {
    let file = std::env::temp_dir().join(format!(
        "replika-admission-{}-{}.yaml",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::write(&file, yaml).expect("writing a manifest");
    run(kubectl.args(["apply", "-f"]).arg(&file))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Waits until the API server calls our validating webhook (new configurations take a moment).
async fn wait_until_webhook_answers(h: &Harness, namespace: &str) {
    let probe = replika(
        "probe",
        namespace,
        "ConfigMap",
        "x",
        "banana",
        "{matchAll: true}",
    );
    wait_for("the API server to call the webhook", DEADLINE, || async {
        let output = run(h
            .plane
            .kubectl()
            .args(["apply", "--dry-run=server", "-f", "-"])
            .stdin(pipe_file(&probe)));
        output.stderr.contains("is not a duration").then_some(())
    })
    .await;
}

fn pipe_file(content: &str) -> std::process::Stdio {
    let file = std::env::temp_dir().join(format!(
        "replika-stdin-{}-{}.yaml",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::write(&file, content).expect("writing stdin");
    std::fs::File::open(file).expect("opening stdin").into()
}

fn replika(
    name: &str,
    namespace: &str,
    kind: &str,
    source: &str,
    time: &str,
    targets: &str,
) -> String {
    format!(
        r#"
apiVersion: replika.prosimcorp.com/v1beta1
kind: Replika
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  synchronization: {{time: "{time}"}}
  source: {{group: "", version: v1, kind: {kind}, name: {source}}}
  target:
    namespaces: {targets}
"#
    )
}

fn exists(h: &Harness, namespace: &str, name: &str) -> bool {
    run(h
        .plane
        .kubectl()
        .args(["get", "replika", name, "-n", namespace]))
    .status_ok
}

#[tokio::test]
async fn kubectl_apply_rejects_unsafe_replikas_naming_each_problem() {
    let (h, _) = webhook();
    let client = h.admin().await;
    let ns = namespace(&client, "deny").await;
    wait_until_webhook_answers(h, &ns).await;
    let cases = [
        (
            replika(
                "namespace-kind",
                &ns,
                "Namespace",
                "x",
                "20s",
                "{matchAll: true}",
            ),
            "Namespace cannot be replicated",
        ),
        (
            replika(
                "into-source",
                &ns,
                "ConfigMap",
                "x",
                "20s",
                &format!("{{matchAll: false, replicateIn: [{ns}]}}"),
            ),
            "source namespace",
        ),
        (
            replika(
                "banana",
                &ns,
                "ConfigMap",
                "x",
                "banana",
                "{matchAll: true}",
            ),
            "spec.synchronization.time: \"banana\" is not a duration",
        ),
    ];
    for (manifest, expected) in cases {
        let name = manifest
            .split("name: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .expect("a name")
            .to_string();
        let output = apply_as(h.plane.kubectl(), &manifest);
        assert!(!output.status_ok, "{name} was admitted");
        assert!(
            output.stderr.contains(expected),
            "{name}: expected {expected:?} in: {}",
            output.stderr
        );
        assert!(!exists(h, &ns, &name), "{name} was stored");
    }
    // Every problem is named in one denial.
    let output = apply_as(
        h.plane.kubectl(),
        &replika(
            "many",
            &ns,
            "ConfigMap",
            "x",
            "0.1s",
            "{matchAll: false, replicateIn: [Bad_Name], excludeFrom: [-x]}",
        ),
    );
    assert!(!output.status_ok);
    for expected in [
        "3 problem(s)",
        "below the minimum of 1s",
        "replicateIn[0]: \"Bad_Name\"",
        "excludeFrom[0]: \"-x\"",
    ] {
        assert!(
            output.stderr.contains(expected),
            "expected {expected:?} in: {}",
            output.stderr
        );
    }
}

#[tokio::test]
async fn only_users_who_can_read_the_source_may_replicate_it() {
    let (h, _) = webhook();
    let client = h.admin().await;
    let (src, target) = (
        namespace(&client, "authz-src").await,
        namespace(&client, "authz-target").await,
    );
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("db-password".into()),
            ..Default::default()
        },
        string_data: Some([("password".to_string(), "s3cret".to_string())].into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &src)
        .create(&PostParams::default(), &secret)
        .await
        .expect("the Secret");
    // Both users may create Replikas in the source namespace and write Secrets in the target.
    h.kubectl_apply(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: replika-author, namespace: {src}}}
rules: [{{apiGroups: [replika.prosimcorp.com], resources: [replikas], verbs: [get, list, create, update, patch]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: replika-authors, namespace: {src}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: replika-author}}
subjects: [{{kind: User, name: mallory}}, {{kind: User, name: alice}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: secret-writer, namespace: {target}}}
rules: [{{apiGroups: [""], resources: [secrets], verbs: [create, update, delete]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: secret-writers, namespace: {target}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: secret-writer}}
subjects: [{{kind: User, name: mallory}}, {{kind: User, name: alice}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: secret-reader, namespace: {src}}}
rules: [{{apiGroups: [""], resources: [secrets], verbs: [get]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: secret-readers, namespace: {src}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: secret-reader}}
subjects: [{{kind: User, name: alice}}]
"#
    ));
    wait_until_webhook_answers(h, &src).await;
    let manifest = replika(
        "copy-db",
        &src,
        "Secret",
        "db-password",
        "20s",
        &format!("{{matchAll: false, replicateIn: [{target}]}}"),
    );
    let mallory = h.plane.user("mallory", &[]).await;
    let denied = apply_as(mallory.kubectl(), &manifest);
    assert!(!denied.status_ok, "mallory's Replika was admitted");
    assert!(
        denied.stderr.contains(&format!(
            "mallory may not get secrets \"db-password\" in namespace \"{src}\""
        )),
        "{}",
        denied.stderr
    );
    assert!(!exists(h, &src, "copy-db"));

    let alice = h.plane.user("alice", &[]).await;
    let admitted = apply_as(alice.kubectl(), &manifest);
    assert!(
        admitted.status_ok,
        "alice's Replika was denied: {}",
        admitted.stderr
    );
    wait_for_condition(
        &client,
        &src,
        "copy-db",
        "Ready",
        "True",
        "AllTargetsSynced",
    )
    .await;
}

#[tokio::test]
async fn defaults_are_filled_and_user_lists_stored_as_written() {
    let (h, _) = webhook();
    let client = h.admin().await;
    let ns = namespace(&client, "defaults").await;
    wait_until_webhook_answers(h, &ns).await;
    let output = apply_as(
        h.plane.kubectl(),
        &replika(
            "filled",
            &ns,
            "ConfigMap",
            "x",
            "20s",
            "{matchAll: true, excludeFrom: [zeta, alpha, kube-system]}",
        ),
    );
    assert!(output.status_ok, "{}", output.stderr);
    let stored: Value = serde_json::from_str(
        &run(h
            .plane
            .kubectl()
            .args(["get", "replika", "filled", "-n", &ns, "-o", "json"]))
        .stdout,
    )
    .expect("the stored Replika as JSON");
    let spec = &stored["spec"];
    assert_eq!(spec["source"]["namespace"], ns.as_str());
    assert_eq!(
        spec["target"]["namespaces"]["excludeFrom"],
        serde_json::json!(["zeta", "alpha", "kube-system"])
    );
    assert_eq!(
        spec["policy"],
        serde_json::json!({"conflict": "Refuse", "onSourceDeleted": "Retain", "onReplikaDeleted": "Delete"})
    );
}

#[tokio::test]
async fn a_kind_not_served_yet_is_admitted_with_a_warning() {
    let (h, _) = webhook();
    let client = h.admin().await;
    let ns = namespace(&client, "warn").await;
    wait_until_webhook_answers(h, &ns).await;
    let manifest = format!(
        r#"
apiVersion: replika.prosimcorp.com/v1beta1
kind: Replika
metadata: {{name: early, namespace: {ns}}}
spec:
  synchronization: {{time: 20s}}
  source: {{group: monitoring.coreos.com, version: v1alpha1, kind: AlertmanagerConfig, name: slack}}
  target:
    namespaces: {{matchAll: true}}
"#
    );
    let output = apply_as(h.plane.kubectl(), &manifest);
    assert!(output.status_ok, "{}", output.stderr);
    assert!(
        output.stderr.contains("Warning:")
            && output.stderr.contains("not served by this cluster yet"),
        "{}",
        output.stderr
    );
    assert!(exists(h, &ns, "early"));
    wait_for_condition(&client, &ns, "early", "Ready", "False", "KindNotServed").await;
}

/// SHA-256 fingerprint of the certificate served on `port`.
fn served_fingerprint(port: u16, ca_file: &Path) -> Option<String> {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -CAfile {} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
        ca_file.display()
    );
    let output = run(Command::new("sh").args(["-c", &script]));
    (output.status_ok && output.stdout.contains("Fingerprint"))
        .then(|| output.stdout.trim().to_string())
}

fn file_fingerprint(cert: &Path) -> String {
    run(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert))
    .stdout
    .trim()
    .to_string()
}

#[tokio::test]
async fn rotated_certificate_files_are_served_without_a_restart() {
    let (h, webhook) = webhook();
    let client = h.admin().await;
    let ns = namespace(&client, "rotate").await;
    wait_until_webhook_answers(h, &ns).await;
    let first = file_fingerprint(&webhook.cert_dir.join("..v1/tls.crt"));
    let second = file_fingerprint(&webhook.cert_dir.join("..v2/tls.crt"));
    assert_eq!(
        served_fingerprint(webhook.port, &webhook.ca_files[0]).as_deref(),
        Some(first.as_str())
    );

    switch_cert_version(&webhook.cert_dir, "..v2");
    wait_for(
        "the operator to serve the new certificate",
        DEADLINE,
        || async {
            (served_fingerprint(webhook.port, &webhook.ca_files[1]).as_deref()
                == Some(second.as_str()))
            .then_some(())
        },
    )
    .await;
    // The API server still calls the webhook, now over the new certificate.
    let output = apply_as(
        h.plane.kubectl(),
        &replika(
            "after-rotation",
            &ns,
            "ConfigMap",
            "x",
            "banana",
            "{matchAll: true}",
        ),
    );
    assert!(
        output.stderr.contains("is not a duration"),
        "{}",
        output.stderr
    );
    switch_cert_version(&webhook.cert_dir, "..v1");
    wait_for(
        "the operator to serve the first certificate again",
        DEADLINE,
        || async {
            (served_fingerprint(webhook.port, &webhook.ca_files[0]).as_deref()
                == Some(first.as_str()))
            .then_some(())
        },
    )
    .await;
}

/// `curl` against the webhook; returns (HTTP status, body).
fn curl(webhook: &Webhook, scheme: &str, path: &str, body_file: Option<&Path>) -> (String, String) {
    let mut command = Command::new("curl");
    command
        .args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(&webhook.ca_files[0]);
    if let Some(file) = body_file {
        command
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", file.display()));
    }
    command.arg(format!("{scheme}://127.0.0.1:{}{path}", webhook.port));
    let output = run(&mut command);
    let (body, status) = output.stdout.rsplit_once('\n').unwrap_or(("", ""));
    (status.to_string(), body.to_string())
}

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_the_server_keeps_serving() {
    let (h, webhook) = webhook();
    let _ = h;
    let dir = std::env::temp_dir().join(format!("replika-bad-requests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let write = |name: &str, content: Vec<u8>| {
        let path = dir.join(name);
        std::fs::write(&path, content).expect("writing a request body");
        path
    };
    let review = |group: &str, kind: &str| {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "1", "kind": {"group": group, "version": "v1", "kind": kind},
                "resource": {"group": group, "version": "v1", "resource": "x"},
                "operation": "CREATE", "userInfo": {"username": "someone"},
                "namespace": "default", "object": {"apiVersion": "v1", "kind": kind, "metadata": {"name": "x"}}
            }
        })
        .to_string()
        .into_bytes()
    };
    let cases = [
        (
            "not-json",
            write("not-json", b"{ this is not json".to_vec()),
            "400",
            "not JSON",
        ),
        (
            "not-a-review",
            write("not-a-review", b"{\"hello\": 1}".to_vec()),
            "400",
            "not an admission.k8s.io/v1 AdmissionReview",
        ),
        (
            "wrong-kind",
            write("wrong-kind", review("", "Pod")),
            "400",
            "Replikas only",
        ),
        (
            "oversize",
            write("oversize", vec![b' '; 5 * 1024 * 1024]),
            "413",
            "larger than",
        ),
    ];
    for (name, file, status, message) in &cases {
        let (got_status, body) = curl(webhook, "https", "/validate", Some(file));
        assert_eq!(&got_status, status, "{name}: {body}");
        assert!(
            body.contains(message),
            "{name}: expected {message:?} in {body:?}"
        );
    }
    let (status, body) = curl(webhook, "http", "/validate", Some(&cases[0].1));
    assert_eq!(status, "400", "{body}");
    assert!(body.contains("HTTPS only"), "{body}");
    // Still serving: a real review is answered.
    let fine = write("fine", review("replika.prosimcorp.com", "Replika"));
    let (status, body) = curl(webhook, "https", "/validate", Some(&fine));
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("\"response\""), "{body}");
}

/// Applies `deploy/overlays/<overlay>` without its two webhook configurations:
/// they send every namespace's Replikas to a Service with no pods behind it,
/// and the tests running beside this one in the same plane would be denied
/// until the test narrows them. The tests register configurations of the same
/// name, limited to their own namespace, instead.
fn apply_overlay_but_its_webhook_configurations(h: &Harness, overlay: &str) {
    let built = run(h.plane.kubectl().arg("kustomize").arg(format!(
        "{}/deploy/overlays/{overlay}",
        env!("CARGO_MANIFEST_DIR")
    )));
    assert!(built.status_ok, "{}", built.stderr);
    let is_webhook_configuration = |document: &str| {
        document.lines().any(|line| {
            matches!(
                line,
                "kind: ValidatingWebhookConfiguration" | "kind: MutatingWebhookConfiguration"
            )
        })
    };
    let (dropped, kept): (Vec<&str>, Vec<&str>) = built
        .stdout
        .split("\n---\n")
        .partition(|document| is_webhook_configuration(document));
    assert_eq!(dropped.len(), 2, "the overlay's webhook configurations");
    let applied = run(h
        .plane
        .kubectl()
        .args(["apply", "--server-side", "-f", "-"])
        .stdin(pipe_file(&kept.join("\n---\n"))));
    assert!(applied.status_ok, "{}", applied.stderr);
}

#[tokio::test]
async fn self_managed_certificates_are_created_once_shared_and_rotated_without_a_failed_apply() {
    let (h, _) = webhook();
    let client = h.admin().await;
    apply_overlay_but_its_webhook_configurations(h, "self-managed");
    let ns = namespace(&client, "self-managed").await;
    // Configurations named `replika` with no caBundle yet, for this namespace only.
    let (port_a, port_b) = (free_port(), free_port());
    register_webhooks(
        h.plane,
        "replika",
        &format!("https://127.0.0.1:{port_a}"),
        Vec::new(),
        Some(&ns),
    );
    let run_args = |port: u16| -> Vec<String> {
        [
            "--reconcile=false",
            "--webhook-bind",
            &format!("127.0.0.1:{port}"),
            "--tls-secret",
            "replika/replika-webhook-tls",
            "--tls-hosts",
            "127.0.0.1",
            "--tls-check-interval",
            "1s",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    };
    let first = start_operator(&h.operator_kubeconfig, "self-managed-a", &run_args(port_a));
    let secrets = Api::<Secret>::namespaced(client.clone(), "replika");
    let secret = wait_for("the certificate Secret", DEADLINE, || async {
        secrets.get_opt("replika-webhook-tls").await.ok().flatten()
    })
    .await;
    let ca = secret
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .cloned()
        .expect("ca.crt in the Secret");
    let configs = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    wait_for("caBundle injected", DEADLINE, || async {
        let config = configs.get("replika").await.ok()?;
        let bundle = config.webhooks?.first()?.client_config.ca_bundle.clone()?;
        (bundle == ca).then_some(())
    })
    .await;
    // The API server calls the self-managed instance and trusts its certificate.
    let probe = replika(
        "self-managed-probe",
        &ns,
        "ConfigMap",
        "x",
        "banana",
        "{matchAll: true}",
    );
    let output = apply_as(h.plane.kubectl(), &probe);
    assert!(
        output.stderr.contains("is not a duration"),
        "{}",
        output.stderr
    );
    wait_for(
        "the self-managed instance to answer the API server",
        DEADLINE,
        || async { first.log().contains("denied a Replika").then_some(()) },
    )
    .await;

    // A second instance reuses the Secret: same certificate, Secret untouched.
    let second = start_operator(&h.operator_kubeconfig, "self-managed-b", &run_args(port_b));
    let ca_file = std::env::temp_dir().join(format!(
        "replika-self-managed-ca-{}.crt",
        std::process::id()
    ));
    std::fs::write(&ca_file, &ca.0).expect("writing the CA");
    let served_a = wait_for("instance A serving", DEADLINE, || async {
        served_fingerprint(port_a, &ca_file)
    })
    .await;
    let served_b = wait_for("instance B serving", DEADLINE, || async {
        served_fingerprint(port_b, &ca_file)
    })
    .await;
    assert_eq!(served_a, served_b, "{}", second.log_tail());
    let after = secrets
        .get("replika-webhook-tls")
        .await
        .expect("the Secret");
    assert_eq!(
        after.metadata.resource_version,
        secret.metadata.resource_version
    );

    // A forced rotation under continuous applies: the new CA is published
    // before the new certificate is served, so every apply reaches the webhook.
    let expired = serde_json::json!({"metadata": {"annotations": {"replika.prosimcorp.com/not-after": "2000-01-01T00:00:00Z"}}});
    secrets
        .patch(
            "replika-webhook-tls",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&expired),
        )
        .await
        .expect("expiring the certificate");
    let bundle_file = ca_file.with_extension("bundle.crt");
    let give_up = std::time::Instant::now() + DEADLINE * 2;
    let (mut applies, mut rotated_at) = (0, None);
    loop {
        let output = apply_as(h.plane.kubectl(), &probe);
        applies += 1;
        assert!(
            output.stderr.contains("is not a duration"),
            "apply {applies} during the rotation did not reach the webhook: {}\n{}",
            output.stderr,
            first.log_tail()
        );
        let bundle = secrets
            .get("replika-webhook-tls")
            .await
            .expect("the Secret")
            .data
            .and_then(|d| d.get("ca.crt").cloned())
            .expect("ca.crt in the Secret");
        std::fs::write(&bundle_file, &bundle.0).expect("writing the CA bundle");
        let served = served_fingerprint(port_a, &bundle_file);
        if rotated_at.is_none() && served.is_some_and(|f| f != served_a) {
            rotated_at = Some(applies);
        }
        match rotated_at {
            Some(at) if applies >= at + 5 => break,
            _ => assert!(
                std::time::Instant::now() < give_up,
                "the renewed certificate was not served in time\n{}",
                first.log_tail()
            ),
        }
    }
}
