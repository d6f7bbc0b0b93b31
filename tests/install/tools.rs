//! What the tests of this binary share: the repository's files, the pinned
//! tools (kubectl's Kustomize, Helm, the CRDs of cert-manager and of the
//! Prometheus Operator), applying to the plane, and taking turns on it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde_json::Value;
use testenv::{ControlPlane, run, run_with_stdin};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The overlays of deploy/overlays, each rendered to one bundle.
pub const OVERLAYS: [&str; 2] = ["cert-manager", "self-managed"];

/// Tests that install cluster-wide objects take turns: the bundles register
/// webhook configurations that fail closed, which would refuse the Replikas of
/// another test while no operator serves them.
pub fn cluster_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes the webhook configurations named `replika` (and `replika-e2e`) when dropped, even when
/// the test failed.
pub struct RemoveWebhooksOnDrop<'a>(pub &'a ControlPlane);

impl Drop for RemoveWebhooksOnDrop<'_> {
    fn drop(&mut self) {
        remove_webhooks(self.0);
    }
}

pub fn remove_webhooks(plane: &ControlPlane) {
    let removed = run(plane.kubectl().args([
        "delete",
        "validatingwebhookconfiguration,mutatingwebhookconfiguration",
        "replika",
        "replika-e2e",
        "--ignore-not-found",
    ]));
    assert!(removed.status_ok || std::thread::panicking(), "{removed:?}");
}

pub fn repo(path: &str) -> String {
    format!("{REPO}/{path}")
}

pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path))
        .unwrap_or_else(|error| panic!("cannot read {path}: {error}"))
}

/// A fresh directory under cargo's scratch space for integration tests.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("install-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// Every YAML document of `text` that is not empty.
pub fn yaml_docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .expect("valid YAML")
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

pub fn kustomize(plane: &ControlPlane, dir: &str) -> String {
    let rendered = run(plane.kubectl().args(["kustomize", &repo(dir)]));
    assert!(
        rendered.status_ok,
        "kubectl kustomize {dir}: {}",
        rendered.stderr
    );
    rendered.stdout
}

/// The pinned Helm: `$REPLIKA_HELM`, or what tools/build-helm.sh prints.
pub fn helm() -> PathBuf {
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

/// cert-manager's CRDs from its Go module, installed and established (once).
pub fn install_cert_manager_crds(plane: &ControlPlane) {
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
pub fn install_prometheus_operator_crds(plane: &ControlPlane) {
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

pub fn wait_established(plane: &ControlPlane, crds: &[&str]) {
    let mut args = vec!["--for=condition=Established"];
    let crd_names: Vec<String> = crds.iter().map(|crd| format!("crd/{crd}")).collect();
    args.extend(crd_names.iter().map(String::as_str));
    if let Err(error) = plane.kubectl_wait(&args, Duration::from_secs(60)) {
        panic!("CRDs {crds:?} not established: {error}");
    }
}

pub fn apply_server_side(plane: &ControlPlane, source: &[&str]) {
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

pub fn apply_server_side_stdin(plane: &ControlPlane, text: &str, what: &str) {
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
