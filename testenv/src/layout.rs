//! Where a control plane keeps its files inside its directory.
//!
//! ```text
//! <dir>/kubeconfig          admin kubeconfig (client certificate in system:masters)
//! <dir>/pki/                CA, serving and client certificates, service-account key
//! <dir>/etcd/               etcd's data
//! <dir>/logs/<name>.log     each process's stdout and stderr
//! <dir>/state/<name>.pid    each process's pid, read by `testenv down` and the watchdog
//! <dir>/identities/         kubeconfigs and tokens handed out to tests
//! <dir>/kubectl-cache/      kubectl's discovery cache for this plane
//! <dir>/bin/kubectl         symlink to the kubectl that matches the plane
//! <dir>/node/               a cluster's worker node (see crate::node)
//! ```

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// Everything a plane creates in its directory, except `logs`, which is kept
/// after `testenv down` for post-mortems and truncated by the next start.
const DISPOSABLE: [&str; 8] = [
    "kubeconfig",
    "pki",
    "etcd",
    "state",
    "identities",
    "kubectl-cache",
    "bin",
    "node",
];

/// The paths of one control plane's files.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `dir`, made absolute because the paths end up in
    /// kubeconfigs and in other processes' command lines.
    pub(crate) fn new(dir: &Path) -> Result<Layout> {
        let root =
            std::path::absolute(dir).with_context(|| format!("bad directory {}", dir.display()))?;
        Ok(Layout { root })
    }

    /// Removes a previous plane's files and creates the directories a new one
    /// needs. etcd creates its own data directory: it wants mode 0700.
    pub(crate) fn prepare(&self) -> Result<()> {
        self.remove_disposable()?;
        [
            self.pki_dir(),
            self.logs_dir(),
            self.state_dir(),
            self.identities(),
            self.bin_dir(),
        ]
        .iter()
        .try_for_each(|dir| create_dir(dir))
    }

    /// Removes the plane's files, keeping its logs.
    pub(crate) fn remove_disposable(&self) -> Result<()> {
        DISPOSABLE
            .iter()
            .try_for_each(|entry| remove(&self.root.join(entry)))
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn node_dir(&self) -> PathBuf {
        self.root.join("node")
    }

    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }

    pub(crate) fn pki(&self, file: &str) -> PathBuf {
        self.pki_dir().join(file)
    }

    pub(crate) fn etcd_data(&self) -> PathBuf {
        self.root.join("etcd")
    }

    pub(crate) fn log(&self, process: &str) -> PathBuf {
        self.logs_dir().join(format!("{process}.log"))
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    pub(crate) fn pid_file(&self, process: &str) -> PathBuf {
        self.state_dir().join(format!("{process}.pid"))
    }

    pub(crate) fn identities(&self) -> PathBuf {
        self.root.join("identities")
    }

    pub(crate) fn kubectl_cache(&self) -> PathBuf {
        self.root.join("kubectl-cache")
    }

    pub(crate) fn kubectl_link(&self) -> PathBuf {
        self.bin_dir().join("kubectl")
    }

    fn pki_dir(&self) -> PathBuf {
        self.root.join("pki")
    }

    pub(crate) fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

fn remove(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    };
    removed.with_context(|| format!("cannot remove {}", path.display()))
}
