//! The node's container runtime: Debian's containerd (with runc), configured
//! and run from the node's directory, and the images it runs, all imported
//! from archives built on this machine.

use std::{ffi::OsString, fs, path::Path};

use anyhow::{Context, Result, bail};

use super::{NodeLayout, host, network, write};

/// The program, as found on the PATH and as its pid file is named.
pub(crate) const CONTAINERD: &str = "containerd";

/// The containerd namespace of the CRI plugin, where the kubelet's images and
/// containers live.
const CRI_NAMESPACE: &str = "k8s.io";

/// Nothing may be pulled: every image is imported. Should the kubelet ask for
/// an image that is missing, containerd's pull goes to this proxy, where
/// nothing listens, instead of resolving a registry's name off the machine.
const NO_PULLS_PROXY: &str = "http://127.0.0.1:9";

/// Writes containerd's configuration: root, state and socket under the node's
/// directory, runc with cgroupfs, the pause image built here, the project's
/// CNI configuration, and `restrict_oom_score_adj` (root on this machine may
/// not lower OOM scores; without it every sandbox fails).
pub(crate) fn write_config(node: &NodeLayout, pause_image: &str) -> Result<()> {
    let dir = node.containerd();
    let config = format!(
        r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = node.containerd_socket().display(),
        cni_bin = CNI_BIN_DIR,
        cni_conf = node.cni_conf_dir().display(),
    );
    write(&node.containerd_config(), &config)?;
    let cni = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "replika",
        "plugins": [{
            "type": "bridge",
            "bridge": network::BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": network::POD_RANGE, "gateway": network::BRIDGE_IP}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": node.root().join("cni-ipam"),
            },
        }],
    });
    fs::create_dir_all(node.cni_conf_dir())?;
    write(
        &node.cni_conf_dir().join("10-replika.conflist"),
        &serde_json::to_string_pretty(&cni)?,
    )
}

/// Where Debian's containernetworking-plugins are.
const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The environment containerd runs with (see [`NO_PULLS_PROXY`]).
pub(crate) fn env() -> Vec<(&'static str, OsString)> {
    let no_proxy = format!(
        "127.0.0.1,localhost,{},{}",
        network::POD_RANGE,
        network::SERVICE_RANGE
    );
    vec![
        ("HTTP_PROXY", NO_PULLS_PROXY.into()),
        ("HTTPS_PROXY", NO_PULLS_PROXY.into()),
        ("NO_PROXY", no_proxy.into()),
    ]
}

/// Whether containerd answers on its socket.
pub(crate) fn answers(node: &NodeLayout) -> bool {
    ctr(node, &["version"]).is_ok()
}

/// Imports the OCI or Docker archive at `archive` for the kubelet to run.
pub(crate) fn import(node: &NodeLayout, archive: &Path) -> Result<()> {
    let archive = archive
        .to_str()
        .context("the archive's path is not UTF-8")?;
    ctr(node, &["-n", CRI_NAMESPACE, "images", "import", archive])
        .with_context(|| format!("cannot import {archive}"))?;
    Ok(())
}

/// Kills and deletes every container (sandboxes included), so their shims
/// exit and their mounts can go.
pub(crate) fn remove_all_containers(node: &NodeLayout) -> Result<()> {
    let listed = ctr(
        node,
        &["-n", CRI_NAMESPACE, "containers", "list", "--quiet"],
    )?;
    for id in listed.lines().filter(|id| !id.is_empty()) {
        // A container without a running task has no task to delete.
        let _ = ctr(
            node,
            &["-n", CRI_NAMESPACE, "tasks", "delete", "--force", id],
        );
        ctr(node, &["-n", CRI_NAMESPACE, "containers", "delete", id])?;
    }
    Ok(())
}

fn ctr(node: &NodeLayout, args: &[&str]) -> Result<String> {
    let socket = node.containerd_socket();
    let socket = socket
        .to_str()
        .context("the containerd socket's path is not UTF-8")?;
    host("ctr", &[&["--address", socket], args].concat())
}

/// Fails unless the Debian packages the node needs are installed.
pub(crate) fn check_installed() -> Result<()> {
    let missing: Vec<&str> = [
        (CONTAINERD, "containerd"),
        ("runc", "runc"),
        ("ctr", "containerd"),
        ("iptables", "iptables"),
        ("conntrack", "conntrack"),
    ]
    .into_iter()
    .filter(|(program, _)| super::which(program).is_none())
    .map(|(_, package)| package)
    .chain(
        (!Path::new(CNI_BIN_DIR).join("bridge").exists()).then_some("containernetworking-plugins"),
    )
    .collect();
    if !missing.is_empty() {
        bail!(
            "a node needs the Debian packages {} (apt-get install containerd runc \
             containernetworking-plugins iptables conntrack)",
            missing.join(", ")
        );
    }
    Ok(())
}
