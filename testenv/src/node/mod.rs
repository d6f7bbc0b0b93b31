//! [`Cluster`]: the control plane plus one real worker node on this machine —
//! kubelet, kube-proxy (iptables mode) and kube-scheduler from the pinned
//! Kubernetes module, Debian's containerd and runc, and the CNI bridge
//! plugin — where Replika runs from its image as users run it
//! (`make cluster`, `make deploy`, `tests/in_cluster.rs`).
//!
//! One cluster with a node can run on a machine at a time: it owns the bridge
//! `replika0`, its address ranges and its iptables rules. `/run/replika-node`
//! names the directory of the one running; starting another elsewhere fails
//! with that directory's name (stop it with `testenv down --dir DIR`), and
//! the leftovers of a dead one are removed first. Everything it creates,
//! inside its directory and outside (pods, network namespaces, veths, mounts,
//! cgroups, iptables rules, the bridge and its route, conntrack entries,
//! kernel settings), goes with [`crate::ControlPlane::stop`].
//!
//! ```text
//! <dir>/node/containerd/    containerd's config, root, state and socket
//! <dir>/node/kubelet/       the kubelet's root directory
//! <dir>/node/cni/           the CNI configuration; cni-ipam/: its address leases
//! <dir>/node/images/        the pause image, built here
//! <dir>/node/deploy/        what `make deploy` applied
//! <dir>/node/sysctls        kernel settings to restore
//! <dir>/node/host-paths     directories outside <dir> that the node created
//! ```

mod containerd;
mod deploy;
mod kubelet;
pub(crate) mod network;
mod teardown;

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Node;
use kube::Api;

pub use deploy::Install;

use crate::{
    components::{self, Ports, Topology},
    layout::Layout,
    plane::ControlPlane,
    process::{self, Processes},
    runtime, wait,
};

/// Names the directory of the cluster with a node that runs on this machine.
const OWNER_FILE: &str = "/run/replika-node";

/// How long the node may take to become Ready once its processes run.
const NODE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long containerd may take to answer on its socket.
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(30);

/// A running control plane with one worker node.
#[derive(Debug)]
pub struct Cluster {
    plane: ControlPlane,
    node: NodeLayout,
}

impl Cluster {
    /// Starts a cluster with a node in `dir` (replacing whatever plane or
    /// cluster was there), and returns once the node is Ready and kube-proxy
    /// has programmed the Services. Fails if another directory's cluster with a
    /// node is running. The processes outlive this value and this process:
    /// stop them with [`ControlPlane::stop`].
    pub fn start(dir: &Path) -> Result<Cluster> {
        ControlPlane::stop(dir)?;
        let plane = ControlPlane::start_as(dir, Topology::WithNode)?;
        let node = NodeLayout::of(&plane.layout);
        Ok(Cluster { plane, node })
    }

    /// The cluster with a node that [`Cluster::start`] left running in `dir`,
    /// if its plane is ready and its node's processes run.
    pub fn running_in(dir: &Path) -> Option<Cluster> {
        let plane = ControlPlane::running_in(dir)?;
        let node = NodeLayout::of(&plane.layout);
        let runs = |name| process::recorded_is_running(&plane.layout, name).unwrap_or(false);
        (runs(kubelet::KUBELET) && runs(containerd::CONTAINERD)).then_some(Cluster { plane, node })
    }

    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// Imports an image archive (OCI or Docker) into the node's containerd,
    /// where pods with `imagePullPolicy: IfNotPresent` or `Never` find it.
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        containerd::import(&self.node, archive)
    }
}

/// The node's files, under `<dir>/node`.
#[derive(Debug, Clone)]
pub(crate) struct NodeLayout {
    root: PathBuf,
}

impl NodeLayout {
    pub(crate) fn of(layout: &Layout) -> NodeLayout {
        NodeLayout {
            root: layout.node_dir(),
        }
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn containerd(&self) -> PathBuf {
        self.root.join("containerd")
    }

    fn containerd_socket(&self) -> PathBuf {
        self.containerd().join("containerd.sock")
    }

    fn containerd_config(&self) -> PathBuf {
        self.containerd().join("config.toml")
    }

    fn cni_conf_dir(&self) -> PathBuf {
        self.root.join("cni")
    }

    fn kubelet_root(&self) -> PathBuf {
        self.root.join("kubelet")
    }

    fn kubelet_config(&self) -> PathBuf {
        self.root.join("kubelet.json")
    }

    fn kubelet_kubeconfig(&self) -> PathBuf {
        self.root.join("kubelet.kubeconfig")
    }

    fn proxy_config(&self) -> PathBuf {
        self.root.join("kube-proxy.json")
    }

    fn proxy_kubeconfig(&self) -> PathBuf {
        self.root.join("kube-proxy.kubeconfig")
    }

    fn resolv_conf(&self) -> PathBuf {
        self.root.join("resolv.conf")
    }

    fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    fn deploy(&self) -> PathBuf {
        self.root.join("deploy")
    }

    fn sysctls(&self) -> PathBuf {
        self.root.join("sysctls")
    }

    fn host_paths(&self) -> PathBuf {
        self.root.join("host-paths")
    }
}

/// Before the plane starts: claims the machine's one node, checks the Debian
/// packages, and sets up the network (guard first) and the pause image.
pub(crate) fn prepare(layout: &Layout) -> Result<()> {
    containerd::check_installed()?;
    claim(layout)?;
    let node = NodeLayout::of(layout);
    for dir in [node.containerd(), node.kubelet_root(), node.images()] {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    teardown::record_host_paths(&node.host_paths())?;
    network::set_up(&node.sysctls())?;
    let pause = pause_image(&node)?;
    containerd::write_config(&node, &pause)
}

/// Starts containerd (and imports the pause image), the kubelet, kube-proxy
/// and kube-scheduler, after the plane's own processes.
pub(crate) fn launch(
    processes: &mut Processes,
    layout: &Layout,
    bin_dir: &Path,
    ports: &Ports,
) -> Result<()> {
    let node = NodeLayout::of(layout);
    kubelet::write_configs(layout, &node, &ports.apiserver_url())?;
    let containerd = which(containerd::CONTAINERD).context("containerd is not installed")?;
    let mut env = containerd::env();
    env.push(("PATH", search_path()));
    processes.spawn_with_env(
        layout,
        &containerd,
        vec![components::flag("config", node.containerd_config())],
        &env,
    )?;
    let answered = runtime::block_on(wait::poll(CONTAINERD_TIMEOUT, || async {
        containerd::answers(&node).then_some(())
    }))?;
    if answered.is_none() {
        processes.ensure_running(layout)?;
        bail!("containerd did not answer within {CONTAINERD_TIMEOUT:?}");
    }
    containerd::import(&node, &node.images().join("pause.tar"))?;
    let path = [("PATH", search_path())];
    processes.spawn_with_env(
        layout,
        &bin_dir.join(kubelet::KUBELET),
        kubelet::kubelet_args(&node),
        &path,
    )?;
    processes.spawn_with_env(
        layout,
        &bin_dir.join(kubelet::KUBE_PROXY),
        kubelet::proxy_args(&node),
        &path,
    )?;
    processes.spawn(
        layout,
        &bin_dir.join(components::SCHEDULER),
        components::scheduler_args(layout, ports),
    )
}

/// Waits until the node is Ready and kube-proxy is healthy (it has synced
/// the Services), failing early if a process exits.
pub(crate) async fn wait_ready(
    client: kube::Client,
    layout: &Layout,
    processes: &Processes,
) -> Result<()> {
    let nodes = Api::<Node>::all(client);
    let outcome = wait::poll(NODE_TIMEOUT, || {
        let nodes = &nodes;
        async move {
            if let Err(exited) = processes.ensure_running(layout) {
                return Some(Err(exited));
            }
            let ready = nodes
                .get_opt(network::NODE_NAME)
                .await
                .ok()
                .flatten()
                .is_some_and(|node| {
                    node.status
                        .and_then(|status| status.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
            let proxy = wait::http_get(kubelet::PROXY_HEALTHZ, "/healthz")
                .await
                .is_ok_and(|response| {
                    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
                });
            (ready && proxy).then_some(Ok(()))
        }
    })
    .await;
    outcome.unwrap_or_else(|| {
        Err(anyhow!(
            "the node was not Ready with kube-proxy healthy within {NODE_TIMEOUT:?}"
        ))
    })
}

/// Removes the node: its processes, containers, mounts, cgroups, network and
/// host paths, and restores the kernel settings. Every step runs even if an
/// earlier one fails; the errors are reported together.
pub(crate) fn tear_down(layout: &Layout) -> Result<()> {
    let node = NodeLayout::of(layout);
    if !node.root().exists() {
        return Ok(());
    }
    let mut errors = Vec::new();
    let mut step = |what: &str, outcome: Result<()>| {
        if let Err(error) = outcome {
            errors.push(format!("{what}: {error:#}"));
        }
    };
    // The kubelet first, so that it restarts nothing.
    for name in [kubelet::KUBELET, kubelet::KUBE_PROXY, components::SCHEDULER] {
        step(name, process::kill_recorded_named(layout, name));
    }
    if containerd::answers(&node) {
        step("containers", containerd::remove_all_containers(&node));
    }
    step(
        containerd::CONTAINERD,
        process::kill_recorded_named(layout, containerd::CONTAINERD),
    );
    let socket = node.containerd_socket().display().to_string();
    step("shims", teardown::kill_processes_mentioning(&socket));
    step("mounts", teardown::unmount_under(node.root()));
    step("cgroups", teardown::remove_pod_cgroups());
    if let Ok(kubectl) = fs::read_link(layout.kubectl_link()) {
        // Removes the iptables (and nftables) rules of every proxy mode.
        let proxy = kubectl.with_file_name(kubelet::KUBE_PROXY);
        let _ = Command::new(proxy).arg("--cleanup").output();
    }
    step("network", network::tear_down(&node.sysctls()));
    step(
        "host paths",
        teardown::remove_host_paths(&node.host_paths()),
    );
    step("owner", release(layout));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "cannot remove the node entirely:\n{}",
            errors.join("\n")
        ))
    }
}

/// Records `layout` as the owner of the machine's node, after stopping the
/// leftovers of a dead one; fails if another one is running.
fn claim(layout: &Layout) -> Result<()> {
    if let Ok(owner) = fs::read_to_string(OWNER_FILE) {
        let owner = PathBuf::from(owner.trim());
        if owner != layout.root() {
            if Cluster::running_in(&owner).is_some() {
                bail!(
                    "a cluster with a node is already running in {dir}, and one machine holds \
                     one (it owns the bridge {bridge} and its iptables rules); stop it with \
                     `testenv down --dir {dir}` (`make down` for .local)",
                    dir = owner.display(),
                    bridge = network::BRIDGE,
                );
            }
            ControlPlane::stop(&owner).with_context(|| {
                format!("cannot remove the dead cluster in {}", owner.display())
            })?;
        }
    }
    if Path::new("/sys/class/net").join(network::BRIDGE).exists() {
        bail!(
            "the bridge {} exists but no cluster of ours owns it ({OWNER_FILE} does not name one); \
             remove it with `ip link delete {}` if nothing else uses it",
            network::BRIDGE,
            network::BRIDGE
        );
    }
    fs::write(OWNER_FILE, layout.root().display().to_string())
        .with_context(|| format!("cannot write {OWNER_FILE}"))
}

fn release(layout: &Layout) -> Result<()> {
    match fs::read_to_string(OWNER_FILE) {
        Ok(owner) if Path::new(owner.trim()) == layout.root() => {
            fs::remove_file(OWNER_FILE).with_context(|| format!("cannot remove {OWNER_FILE}"))
        }
        _ => Ok(()),
    }
}

/// Builds the pause image into `<node>/images/pause.tar` and returns its
/// reference: node/pause.c, compiled statically, in an image of its own.
fn pause_image(node: &NodeLayout) -> Result<String> {
    let binary = node.images().join("pause");
    checked(
        Command::new("cc")
            .args(["-static", "-Os", "-o"])
            .arg(&binary)
            .arg(repo_path("node/pause.c")),
    )?;
    let built = checked(
        Command::new(repo_path("node/oci-image.sh"))
            .arg(node.images().join("pause.tar"))
            .arg("replika.local/pause")
            .arg(&binary)
            .args(["65535:65535", "/pause"]),
    )?;
    Ok(built.trim().to_owned())
}

/// A path in the repository, found from where this crate was compiled.
fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Runs a host tool (`ip`, `iptables`, `ctr`, ...) and returns what it
/// printed, or fails with its stderr.
fn host(program: &str, args: &[&str]) -> Result<String> {
    let path = which(program).with_context(|| format!("{program} is not installed"))?;
    checked(Command::new(path).args(args))
}

/// Runs `command` and returns its stdout, or fails with the command and its
/// stderr.
fn checked(command: &mut Command) -> Result<String> {
    let output: crate::CommandOutput = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?
        .into();
    if output.status_ok {
        Ok(output.stdout)
    } else {
        Err(anyhow!("{command:?} failed: {}", output.stderr.trim()))
    }
}

/// `$PATH` plus the sbin directories, where Debian puts `ip`, `iptables` and
/// `conntrack` (and where the kubelet and kube-proxy look for them).
fn search_path() -> OsString {
    let mut path = env::var_os("PATH").unwrap_or_default();
    path.push(":/usr/local/sbin:/usr/sbin:/sbin");
    path
}

fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&search_path())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}
