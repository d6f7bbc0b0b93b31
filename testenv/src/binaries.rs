//! Finding the etcd, kube-apiserver, kube-controller-manager and kubectl
//! binaries, and for a cluster with a node kubelet, kube-proxy and
//! kube-scheduler too.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, ensure};

use crate::components::Topology;

/// Names a directory holding the binaries, skipping `control-plane/build.sh`.
const BIN_DIR_ENV: &str = "REPLIKA_CONTROL_PLANE_BIN";

/// The build script, found from where this crate was compiled (`<repo>/testenv`).
const BUILD_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../control-plane/build.sh");

/// The directory with the control-plane binaries: `$REPLIKA_CONTROL_PLANE_BIN`,
/// or what `control-plane/build.sh` prints (it builds them first if they are
/// missing, which takes many minutes; its progress goes to our stderr).
pub(crate) fn locate(topology: Topology) -> Result<PathBuf> {
    if let Some(dir) = env::var_os(BIN_DIR_ENV) {
        return Ok(dir.into());
    }
    let mut build = Command::new(Path::new(BUILD_SCRIPT));
    if topology == Topology::WithNode {
        build.arg("node");
    }
    let output = build
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {BUILD_SCRIPT}"))?;
    ensure!(
        output.status.success(),
        "{BUILD_SCRIPT} failed: {}",
        output.status
    );
    let stdout = String::from_utf8(output.stdout).context("build.sh printed a non-UTF-8 path")?;
    let bin_dir = stdout.lines().last().unwrap_or_default().trim();
    ensure!(
        !bin_dir.is_empty(),
        "{BUILD_SCRIPT} printed no bin directory"
    );
    Ok(bin_dir.into())
}
