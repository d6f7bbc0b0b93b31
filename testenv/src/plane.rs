//! [`ControlPlane`]: starting a plane, finding a running one, stopping one, and
//! handing out clients and identities for it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;

use crate::{
    binaries,
    components::{self, Ports, Topology},
    kubeconfig,
    kubectl::{KUBECTL, Kubectl},
    layout::Layout,
    node, pki,
    process::{self, Processes},
    runtime, wait,
};

/// How long kube-apiserver may take to report `/readyz` ok.
const APISERVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long kube-controller-manager may then take to do its first work.
const CONTROLLER_MANAGER_TIMEOUT: Duration = Duration::from_secs(30);

/// A running control plane: etcd, kube-apiserver and kube-controller-manager.
#[derive(Debug)]
pub struct ControlPlane {
    kubeconfig: PathBuf,
    bin_dir: PathBuf,
    /// Holds the kubeconfigs (and tokens) of handed-out identities and
    /// kubectl's cache: the plane's own directory, or a private one for a
    /// plane from `REPLIKA_TEST_KUBECONFIG`.
    pub(crate) layout: Layout,
    pub(crate) kubectl: Kubectl,
    /// The processes of a plane that [`ControlPlane::start`] started in this
    /// process, which can be stopped and started again one by one; `None` for a
    /// plane this process only connected to.
    pub(crate) own: Option<Mutex<OwnProcesses>>,
}

/// The processes of a plane started by this process, and the ports they listen on.
#[derive(Debug)]
pub(crate) struct OwnProcesses {
    pub(crate) processes: Processes,
    pub(crate) ports: Ports,
}

impl ControlPlane {
    /// Starts a new plane that keeps its files in `dir` (`kubeconfig`,
    /// `logs/<process>.log`, `state/<process>.pid`, `pki/`, `etcd/`, ...),
    /// replacing a previous plane's files there, and returns once
    /// kube-apiserver is ready and kube-controller-manager is at work.
    ///
    /// The processes outlive the returned value and this process: stop them
    /// with [`ControlPlane::stop`]. If the start fails, they are killed.
    pub fn start(dir: &Path) -> Result<ControlPlane> {
        Self::start_as(dir, Topology::PlaneOnly)
    }

    /// [`ControlPlane::start`], with a worker node for [`crate::Cluster`].
    pub(crate) fn start_as(dir: &Path, topology: Topology) -> Result<ControlPlane> {
        let bin_dir = binaries::locate(topology)?;
        let layout = Layout::new(dir)?;
        layout.prepare()?;
        let mut processes = Processes::default();
        let started = start_processes(&mut processes, &layout, &bin_dir, topology);
        let ports = match started {
            Ok(ports) => ports,
            Err(error) => {
                let mut context = format!(
                    "cannot start a control plane (logs in {})",
                    layout.logs_dir().display()
                );
                // The node's containers go while containerd still runs.
                if let Err(left) = node::tear_down(&layout) {
                    context.push_str(&format!("; and {left:#}"));
                }
                processes.kill();
                return Err(error.context(context));
            }
        };
        Ok(ControlPlane {
            kubeconfig: layout.kubeconfig(),
            kubectl: Kubectl::new(&bin_dir, &layout),
            bin_dir,
            layout,
            own: Some(Mutex::new(OwnProcesses { processes, ports })),
        })
    }

    /// The plane that [`ControlPlane::start`] left running in `dir`, if there is
    /// one and it is ready.
    pub fn running_in(dir: &Path) -> Option<ControlPlane> {
        let layout = Layout::new(dir).ok()?;
        Self::connect(&layout.kubeconfig(), dir).ok()
    }

    /// Stops the plane that [`ControlPlane::start`] left in `dir` and removes
    /// its files, except its logs. Does nothing where there is no plane. The
    /// plane's processes are stopped even when part of the node could not be
    /// removed (a busy mount, say); the errors are reported together, and the
    /// files kept so that a second call can finish the work.
    pub fn stop(dir: &Path) -> Result<()> {
        let layout = Layout::new(dir)?;
        let node = node::tear_down(&layout);
        let processes = process::kill_recorded(&layout);
        match (node, processes) {
            (Ok(()), Ok(())) => layout.remove_disposable(),
            (Err(node), Ok(())) => Err(node),
            (Ok(()), Err(processes)) => Err(processes),
            (Err(node), Err(processes)) => Err(anyhow!("{node:#}\n{processes:#}")),
        }
    }

    /// A running plane reached through `kubeconfig`, which must be ready, with
    /// `dir` for the files of identities handed out and kubectl's cache.
    pub(crate) fn connect(kubeconfig: &Path, dir: &Path) -> Result<ControlPlane> {
        let ready =
            runtime::block_on(async { is_ready(&kubeconfig::client(kubeconfig).await?).await })??;
        if !ready {
            return Err(anyhow!(
                "the control plane of {} is not ready",
                kubeconfig.display()
            ));
        }
        let layout = Layout::new(dir)?;
        let identities = layout.identities();
        fs::create_dir_all(&identities)
            .with_context(|| format!("cannot create {}", identities.display()))?;
        let bin_dir = binaries::locate(Topology::PlaneOnly)?;
        Ok(ControlPlane {
            kubeconfig: kubeconfig.to_owned(),
            kubectl: Kubectl::new(&bin_dir, &layout),
            bin_dir,
            layout,
            own: None,
        })
    }

    /// The admin kubeconfig: a client certificate in the group `system:masters`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The directory with `kubectl`, `kube-apiserver`, `kube-controller-manager` and `etcd`.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// `kubectl --kubeconfig=<admin kubeconfig>`, ready for more arguments.
    pub fn kubectl(&self) -> Command {
        self.kubectl.command(&self.kubeconfig)
    }

    /// `kubectl wait <args>` as admin until it succeeds or `within` has
    /// passed, asking again every few seconds: kubectl fails at once, instead
    /// of waiting, on an object whose status has no conditions yet (a CRD or
    /// Certificate just created). `args` name the condition and the objects;
    /// the helper sets each attempt's `--timeout`. The error is kubectl's last
    /// answer.
    ///
    /// # Errors
    /// kubectl's last error output, once `within` has passed.
    pub fn kubectl_wait(&self, args: &[&str], within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let attempt = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_secs(1), Duration::from_secs(5));
            let waited = crate::run(
                self.kubectl()
                    .arg("wait")
                    .arg(format!("--timeout={}s", attempt.as_secs()))
                    .args(args),
            );
            if waited.status_ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{}{}", waited.stdout, waited.stderr)
                    .trim()
                    .to_string());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A new admin client. Each `#[tokio::test]` has its own runtime, and a
    /// client must not outlive the runtime it was made in, so there is no
    /// shared one.
    ///
    /// # Panics
    /// If the admin kubeconfig cannot be read.
    pub async fn admin_client(&self) -> kube::Client {
        kubeconfig::client(&self.kubeconfig)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cannot make a client from {}: {error:#}",
                    self.kubeconfig.display()
                )
            })
    }
}

/// Writes the plane's certificates and kubeconfig, starts its processes (and
/// the node's, with one), and waits until they work.
fn start_processes(
    processes: &mut Processes,
    layout: &Layout,
    bin_dir: &Path,
    topology: Topology,
) -> Result<Ports> {
    if topology == Topology::WithNode {
        node::prepare(layout)?;
    }
    pki::write(layout, topology)?;
    let ports = Ports::pick(topology)?;
    let admin = kubeconfig::admin_of_new_plane(layout, &ports.apiserver_url());
    kubeconfig::write(&layout.kubeconfig(), &admin)?;
    std::os::unix::fs::symlink(bin_dir.join(KUBECTL), layout.kubectl_link())
        .context("cannot link kubectl")?;
    launch(processes, layout, bin_dir, &ports)?;
    if topology == Topology::WithNode {
        node::launch(processes, layout, bin_dir, &ports)?;
    }
    runtime::block_on(async {
        wait_until_working(layout, processes).await?;
        if topology == Topology::WithNode {
            let client = kubeconfig::client(&layout.kubeconfig()).await?;
            node::wait_ready(client, layout, processes).await?;
        }
        anyhow::Ok(())
    })??;
    Ok(ports)
}

fn launch(processes: &mut Processes, layout: &Layout, bin_dir: &Path, ports: &Ports) -> Result<()> {
    // All three start at once: kube-apiserver retries etcd, and
    // kube-controller-manager waits for kube-apiserver, on their own.
    processes.spawn(
        layout,
        &bin_dir.join(components::ETCD),
        components::etcd_args(layout, ports),
    )?;
    processes.spawn(
        layout,
        &bin_dir.join(components::APISERVER),
        components::apiserver_args(layout, ports),
    )?;
    processes.spawn(
        layout,
        &bin_dir.join(components::CONTROLLER_MANAGER),
        components::controller_manager_args(layout, ports),
    )
}

async fn wait_until_working(layout: &Layout, processes: &Processes) -> Result<()> {
    let client = kubeconfig::client(&layout.kubeconfig()).await?;
    let ready = || async { is_ready(&client).await.unwrap_or(false) };
    wait_while_running(
        "kube-apiserver to report /readyz ok",
        APISERVER_TIMEOUT,
        layout,
        processes,
        ready,
    )
    .await?;

    // The ServiceAccount controller creates `default` in every namespace,
    // including the namespace `default`, once it has synced its caches.
    let accounts = Api::<ServiceAccount>::namespaced(client, "default");
    let has_default = || async { matches!(accounts.get_opt("default").await, Ok(Some(_))) };
    let what = "kube-controller-manager to create the ServiceAccount default/default";
    wait_while_running(
        what,
        CONTROLLER_MANAGER_TIMEOUT,
        layout,
        processes,
        has_default,
    )
    .await
}

/// Polls `done` until it is true, failing early if one of `processes` exits.
async fn wait_while_running<F, Fut>(
    what: &str,
    timeout: Duration,
    layout: &Layout,
    processes: &Processes,
    mut done: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let outcome = wait::poll(timeout, || {
        let done = done();
        async move {
            match processes.ensure_running(layout) {
                Ok(()) => done.await.then_some(Ok(())),
                Err(exited) => Some(Err(exited)),
            }
        }
    })
    .await;
    outcome.unwrap_or_else(|| Err(anyhow!("timed out after {timeout:?} waiting for {what}")))
}

pub(crate) async fn is_ready(client: &kube::Client) -> Result<bool> {
    let request = http::Request::get("/readyz").body(Vec::new())?;
    Ok(client
        .request_text(request)
        .await
        .is_ok_and(|body| body == "ok"))
}
