//! The cluster the benchmark runs on — a private control plane started by
//! testenv, or the running one a kubeconfig names — with `deploy/base`
//! installed and the identities of the operator and the floor client.
//!
//! Both identities are ServiceAccounts bound to the operator's ClusterRole, so
//! the operator and the floor go through the same authentication, RBAC and
//! priority level, and differ only in what they do.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use testenv::ControlPlane;

use crate::model::FIELD_MANAGER;

/// Namespace of the operator's ServiceAccount (from `deploy/base`).
pub const OPERATOR_NAMESPACE: &str = "replika";
/// The operator's ServiceAccount (from `deploy/base`).
pub const OPERATOR_ACCOUNT: &str = "replika-controller-manager";
/// The operator's ClusterRole (from `deploy/base`), also granted to the floor.
const OPERATOR_ROLE: &str = "replika-manager";
/// The floor client's ServiceAccount, in [`OPERATOR_NAMESPACE`].
const FLOOR_ACCOUNT: &str = "replika-bench-floor";
/// The Kustomize base with the CRD and the RBAC.
const DEPLOY_BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base");
/// testenv's variable naming a running plane to use instead of a new one.
const PLANE_KUBECONFIG_ENV: &str = "REPLIKA_TEST_KUBECONFIG";

/// The cluster, ready for the operator.
pub struct Cluster {
    pub plane: &'static ControlPlane,
    pub admin: Client,
    /// The bare client of the floor measurements.
    pub floor: Client,
    /// A kubeconfig authenticating as the operator's ServiceAccount.
    pub operator_kubeconfig: PathBuf,
    /// Whether the cluster outlives the benchmark, which then removes what it made.
    pub external: bool,
}

impl Cluster {
    /// Has the API server collect its garbage now: asked for its heap profile
    /// with `gc=1`, it runs a full collection first (the profile is dropped).
    pub async fn collect_api_server_garbage(&self) -> Result<()> {
        let request = http::Request::get("/debug/pprof/heap?gc=1")
            .body(kube::client::Body::from(Vec::new()))?;
        let response = self
            .admin
            .send(request)
            .await
            .context("cannot reach the API server's /debug/pprof/heap")?;
        let status = response.status();
        response.into_body().collect_bytes().await?;
        ensure!(
            status.is_success(),
            "the API server answered {status} for /debug/pprof/heap (is it run with --profiling=false?)"
        );
        Ok(())
    }
}

/// The plane to run on: the running one `kubeconfig` names, or a private one
/// that is torn down (by testenv's watchdog) when this process ends.
///
/// Must be called while the process has a single thread, before any runtime
/// starts: it sets or clears testenv's environment variable.
pub fn select_plane(kubeconfig: Option<&Path>) -> Result<&'static ControlPlane> {
    // SAFETY: the caller guarantees that no other thread exists yet, so no
    // one can read the environment concurrently.
    unsafe {
        match kubeconfig {
            Some(path) => std::env::set_var(PLANE_KUBECONFIG_ENV, std::path::absolute(path)?),
            None => std::env::remove_var(PLANE_KUBECONFIG_ENV),
        }
    }
    std::panic::catch_unwind(ControlPlane::shared)
        .map_err(|_| anyhow!("no control plane to run on (the reason is printed above)"))
}

/// Installs `deploy/base` and `extra_manifests`, and makes the identities.
pub async fn prepare(
    plane: &'static ControlPlane,
    extra_manifests: &[PathBuf],
    external: bool,
) -> Result<Cluster> {
    kubectl(plane, &["apply", "--server-side", "-k", DEPLOY_BASE]).await?;
    tokio::task::spawn_blocking(|| {
        plane.kubectl_wait(
            &[
                "--for=condition=Established",
                "crd/replikas.replika.prosimcorp.com",
            ],
            std::time::Duration::from_secs(60),
        )
    })
    .await?
    .map_err(|error| anyhow!("the Replika CRD was not established: {error}"))?;
    for manifest in extra_manifests {
        let manifest = manifest.to_str().context("a manifest path is not UTF-8")?;
        kubectl(plane, &["apply", "--server-side", "-f", manifest]).await?;
    }
    let admin = plane.admin_client().await;
    let operator = plane
        .service_account(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)
        .await;
    let floor = plane
        .service_account(OPERATOR_NAMESPACE, FLOOR_ACCOUNT)
        .await;
    bind_floor(&admin).await?;
    Ok(Cluster {
        plane,
        floor: floor.client().await,
        admin,
        operator_kubeconfig: operator.kubeconfig,
        external,
    })
}

/// Grants the floor's ServiceAccount the operator's ClusterRole.
async fn bind_floor(admin: &Client) -> Result<()> {
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": FLOOR_ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": FLOOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}],
    });
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch(
            FLOOR_ACCOUNT,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&binding),
        )
        .await
        .context("cannot bind the floor's ServiceAccount")?;
    Ok(())
}

/// Removes the floor's binding and ServiceAccount (for clusters the benchmark
/// does not own).
pub async fn remove_floor(admin: &Client) -> Result<()> {
    let bindings = Api::<ClusterRoleBinding>::all(admin.clone());
    ignore_not_found(
        bindings
            .delete(FLOOR_ACCOUNT, &DeleteParams::default())
            .await,
    )
    .context("cannot delete the floor's ClusterRoleBinding")?;
    let accounts = Api::<ServiceAccount>::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    ignore_not_found(
        accounts
            .delete(FLOOR_ACCOUNT, &DeleteParams::default())
            .await,
    )
    .context("cannot delete the floor's ServiceAccount")
}

fn ignore_not_found<T>(result: kube::Result<T>) -> kube::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(error),
    }
}

/// Runs the plane's kubectl as admin off the async threads; fails with its stderr.
pub async fn kubectl(plane: &'static ControlPlane, args: &[&str]) -> Result<String> {
    let mut command = plane.kubectl();
    command.args(args);
    let description = format!("kubectl {}", args.join(" "));
    let output = tokio::task::spawn_blocking(move || testenv::run(&mut command)).await?;
    ensure!(
        output.status_ok,
        "{description} failed: {}",
        output.stderr.trim()
    );
    Ok(output.stdout)
}
