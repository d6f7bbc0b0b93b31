//! kubectl command lines for a plane.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::layout::Layout;

/// The file name of kubectl in the bin directory.
pub(crate) const KUBECTL: &str = "kubectl";

/// Runs the plane's kubectl with a discovery cache of the plane's own.
///
/// kubectl caches API discovery under `~/.kube/cache`, keyed by server address.
/// Every plane listens on new random ports, so that cache would grow with each
/// test run, and a port used again could answer with another plane's resources.
#[derive(Debug, Clone)]
pub(crate) struct Kubectl {
    program: PathBuf,
    cache_dir: PathBuf,
}

impl Kubectl {
    pub(crate) fn new(bin_dir: &Path, layout: &Layout) -> Kubectl {
        Kubectl {
            program: bin_dir.join(KUBECTL),
            cache_dir: layout.kubectl_cache(),
        }
    }

    /// `kubectl --kubeconfig=<kubeconfig> --cache-dir=<the plane's cache>`.
    pub(crate) fn command(&self, kubeconfig: &Path) -> Command {
        let mut command = Command::new(&self.program);
        command.arg("--kubeconfig").arg(kubeconfig);
        command.arg("--cache-dir").arg(&self.cache_dir);
        command
    }
}
