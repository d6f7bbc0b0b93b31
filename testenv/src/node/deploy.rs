//! Installing Replika into a [`Cluster`] the way docs/install.md tells users
//! to, with an image imported from this machine (`make deploy`).

use std::{
    fmt, fs,
    path::Path,
    process::Command,
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use super::{Cluster, checked, repo_path};
use crate::process::{self, Processes};

/// The image the committed manifests name, replaced by the local one.
const PUBLISHED_IMAGE: &str = "ghcr.io/replika-operator/replika";
const NAMESPACE: &str = "replika";
const DEPLOYMENT: &str = "deployment/replika-controller-manager";
/// How long a rollout may take: two pods, probes included.
const ROLLOUT_TIMEOUT: &str = "180s";
/// How long the webhooks may take to answer through their Service once the
/// pods are ready.
const ADMISSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Applied as a dry run to see the webhooks answer.
const PROBE_REPLIKA: &str = r#"{
  "apiVersion": "replika.prosimcorp.com/v1beta1", "kind": "Replika",
  "metadata": {"name": "admission-probe", "namespace": "default"},
  "spec": {"synchronization": {"time": "1m"},
           "source": {"group": "", "version": "v1", "kind": "ConfigMap", "name": "admission-probe"},
           "target": {"namespaces": {"matchAll": false, "replicateIn": ["default-copy"]}}}}"#;
/// cert-manager's controller loops and CA injector (tools/build-cert-manager.sh),
/// run on the host against the cluster, as tests/install.rs runs them.
const CERT_MANAGER: [&str; 2] = ["controller", "cainjector"];

/// How Replika is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// The bundle of `deploy/overlays/self-managed` (the default).
    SelfManaged,
    /// The bundle of `deploy/overlays/cert-manager`, with cert-manager running.
    CertManager,
    /// The Helm chart, with its default (self-managed) certificates.
    Helm,
}

impl FromStr for Install {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Install> {
        match name {
            "self-managed" => Ok(Install::SelfManaged),
            "cert-manager" => Ok(Install::CertManager),
            "helm" => Ok(Install::Helm),
            _ => bail!("unknown install {name:?}: self-managed, cert-manager or helm"),
        }
    }
}

impl fmt::Display for Install {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Install::SelfManaged => "self-managed",
            Install::CertManager => "cert-manager",
            Install::Helm => "helm",
        })
    }
}

impl Cluster {
    /// Installs Replika with `image` (`NAME:TAG`, imported with
    /// [`Cluster::import_image`]) and waits until the Deployment is Available
    /// with all its pods ready. An installation of another kind is removed
    /// first; one of the same kind is updated.
    pub fn deploy(&self, install: Install, image: &str) -> Result<()> {
        let (name, tag) = image
            .rsplit_once(':')
            .filter(|(name, _)| !name.is_empty())
            .with_context(|| format!("the image {image:?} is not NAME:TAG"))?;
        let dir = self.node.deploy();
        let record = dir.join("installed");
        if let Ok(previous) = fs::read_to_string(&record)
            && previous.trim() != install.to_string()
        {
            self.undeploy()?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        match install {
            Install::SelfManaged | Install::CertManager => {
                if install == Install::CertManager {
                    self.start_cert_manager()?;
                }
                self.apply_bundle(install, name, tag)?;
            }
            Install::Helm => {
                self.helm(&[
                    "upgrade",
                    "--install",
                    "replika",
                    &repo_path("deploy/helm/replika").display().to_string(),
                    "--namespace",
                    NAMESPACE,
                    "--create-namespace",
                    "--set",
                    &format!("image.repository={name}"),
                    "--set",
                    &format!("image.tag={tag}"),
                ])?;
            }
        }
        fs::write(&record, install.to_string())
            .with_context(|| format!("cannot write {}", record.display()))?;
        self.wait_available()
    }

    /// Removes what [`Cluster::deploy`] installed, Replikas first (their
    /// finalizer needs the operator).
    pub fn undeploy(&self) -> Result<()> {
        let dir = self.node.deploy();
        let record = dir.join("installed");
        let Ok(installed) = fs::read_to_string(&record) else {
            return Ok(());
        };
        // Fails only when the CRD is gone, which leaves no Replika either.
        let _ = self.kubectl(&[
            "delete",
            "replikas",
            "--all",
            "--all-namespaces",
            "--timeout=60s",
        ]);
        if installed.trim().parse::<Install>()? == Install::Helm {
            self.helm(&["uninstall", "replika", "--namespace", NAMESPACE, "--wait"])?;
            self.kubectl(&["delete", "namespace", NAMESPACE, "--ignore-not-found"])?;
        } else {
            let kustomization = dir.join("kustomization").display().to_string();
            self.kubectl(&[
                "delete",
                "--ignore-not-found",
                "--kustomize",
                &kustomization,
            ])?;
        }
        fs::remove_file(&record).with_context(|| format!("cannot remove {}", record.display()))
    }

    /// Renders the bundles as `make bundle` does, and applies the one of
    /// `install` with the image set, as `kustomize edit set image` would.
    fn apply_bundle(&self, install: Install, name: &str, tag: &str) -> Result<()> {
        let dir = self.node.deploy();
        let bundles = dir.join("bundles");
        checked(
            Command::new(repo_path("tools/bundle.sh"))
                .arg(&bundles)
                .env("KUBECTL", self.plane.bin_dir().join("kubectl")),
        )?;
        let kustomization = dir.join("kustomization");
        fs::create_dir_all(&kustomization)?;
        let bundle = bundles.join(install.to_string()).join("bundle.yaml");
        fs::copy(&bundle, kustomization.join("bundle.yaml"))
            .with_context(|| format!("cannot copy {}", bundle.display()))?;
        let edit = format!(
            "# {install} bundle of `make bundle`, with the image of `make image`.\n\
             apiVersion: kustomize.config.k8s.io/v1beta1\n\
             kind: Kustomization\n\
             resources: [bundle.yaml]\n\
             images:\n\
             \x20 - name: {PUBLISHED_IMAGE}\n\
             \x20   newName: {name}\n\
             \x20   newTag: \"{tag}\"\n"
        );
        super::write(&kustomization.join("kustomization.yaml"), &edit)?;
        self.kubectl(&[
            "apply",
            "--server-side",
            "--kustomize",
            &kustomization.display().to_string(),
        ])?;
        Ok(())
    }

    /// Installs cert-manager's CRDs and starts its controllers, unless they run.
    fn start_cert_manager(&self) -> Result<()> {
        let crds = tool_output("tools/cert-manager-crds.sh")?;
        self.kubectl(&["apply", "--server-side", "--filename", &crds])?;
        self.plane
            .kubectl_wait(
                &[
                    "--for=condition=Established",
                    "crd/certificates.cert-manager.io",
                    "crd/issuers.cert-manager.io",
                ],
                Duration::from_secs(60),
            )
            .map_err(|error| anyhow!("cert-manager's CRDs were not established: {error}"))?;
        let bin = tool_output("tools/build-cert-manager.sh")?;
        let layout = &self.plane.layout;
        let kubeconfig = self.plane.kubeconfig_path().as_os_str().to_owned();
        for name in CERT_MANAGER {
            if !process::recorded_is_running(layout, name)? {
                // Recorded in the plane's state, so `testenv down` stops them.
                Processes::default().spawn(
                    layout,
                    &Path::new(&bin).join(name),
                    vec!["--kubeconfig".into(), kubeconfig.clone()],
                )?;
            }
        }
        Ok(())
    }

    fn wait_available(&self) -> Result<()> {
        let timeout = format!("--timeout={ROLLOUT_TIMEOUT}");
        let namespace = format!("--namespace={NAMESPACE}");
        self.kubectl(&["rollout", "status", &namespace, &timeout, DEPLOYMENT])?;
        self.kubectl(&[
            "wait",
            &namespace,
            &timeout,
            "--for=condition=Available",
            DEPLOYMENT,
        ])?;
        let counts = self.kubectl(&[
            "get",
            &namespace,
            DEPLOYMENT,
            "--output=jsonpath={.spec.replicas} {.status.readyReplicas}",
        ])?;
        match counts.split_whitespace().collect::<Vec<_>>().as_slice() {
            [wanted, ready] if wanted == ready => {}
            _ => bail!("the Deployment is Available but not all pods are ready: {counts}"),
        }
        self.wait_admitting()
    }

    /// Waits until the API server reaches the webhooks through their Service
    /// (a new Service's endpoints take a moment to reach kube-proxy): a
    /// Replika applied as a server-side dry run is admitted. Webhooks have no
    /// side effects, so a dry run is answered as the real thing would be.
    fn wait_admitting(&self) -> Result<()> {
        let deadline = Instant::now() + ADMISSION_TIMEOUT;
        loop {
            let probe = crate::run_with_stdin(
                self.plane
                    .kubectl()
                    .args(["apply", "--dry-run=server", "--filename=-"]),
                PROBE_REPLIKA,
            );
            if probe.status_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the webhooks did not admit a Replika within {ADMISSION_TIMEOUT:?}: {}",
                    probe.stderr.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// kubectl as admin; fails with what it printed.
    fn kubectl(&self, args: &[&str]) -> Result<String> {
        checked(self.plane.kubectl().args(args))
    }

    /// The pinned Helm (tools/build-helm.sh) as admin, with its caches in the
    /// node's directory.
    fn helm(&self, args: &[&str]) -> Result<String> {
        let helm = tool_output("tools/build-helm.sh")?;
        let home = self.node.deploy().join("helm");
        checked(
            Command::new(helm)
                .args(args)
                .arg("--kubeconfig")
                .arg(self.plane.kubeconfig_path())
                .env("HELM_CACHE_HOME", home.join("cache"))
                .env("HELM_CONFIG_HOME", home.join("config"))
                .env("HELM_DATA_HOME", home.join("data")),
        )
    }
}

/// The last line a build script of tools/ prints: what it built.
fn tool_output(script: &str) -> Result<String> {
    checked(&mut Command::new(repo_path(script)))?
        .lines()
        .last()
        .map(str::to_owned)
        .with_context(|| format!("{script} printed nothing"))
}
