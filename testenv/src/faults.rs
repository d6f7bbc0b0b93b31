//! Outages of a running plane, for fault tests: [`ControlPlane::stop_component`]
//! takes etcd or kube-apiserver down the way a crash does, and
//! [`ControlPlane::start_component`] brings it back on the same ports with the
//! same data, so clients reconnect to the cluster they knew.

use std::{sync::MutexGuard, time::Duration};

use anyhow::{Context, Result, anyhow};

use crate::{
    components, kubeconfig,
    plane::{self, ControlPlane, OwnProcesses},
    wait,
};

/// How long a restarted component may take to be healthy again.
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// A process of the plane that a test can stop and start again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The cluster's storage: while it is down, kube-apiserver answers
    /// requests that need storage with errors, and open watches stall.
    Etcd,
    /// The API server: while it is down, nothing answers on the cluster's
    /// address and every connection to it is refused.
    ApiServer,
}

impl Component {
    fn program(self) -> &'static str {
        match self {
            Component::Etcd => components::ETCD,
            Component::ApiServer => components::APISERVER,
        }
    }
}

impl ControlPlane {
    /// Whether this process started the plane, so that its components can be
    /// stopped and started again.
    pub fn controls_processes(&self) -> bool {
        self.own.is_some()
    }

    /// Stops `component` at once (SIGKILL, as a crash or a lost machine would),
    /// keeping its data and its port, and returns once the process is gone.
    ///
    /// Only for a plane that this process started (not one from
    /// `REPLIKA_TEST_KUBECONFIG`), and only for a running component.
    pub fn stop_component(&self, component: Component) -> Result<()> {
        let mut own = self.own_processes()?;
        own.processes.stop(&self.layout, component.program())
    }

    /// Starts `component` again after [`ControlPlane::stop_component`], with
    /// the command line it had (same ports, same data directory; its log goes
    /// on in the same file), and returns once it is healthy: etcd once its
    /// `/health` says so, kube-apiserver once its `/readyz` is ok, which
    /// needs etcd to run.
    pub async fn start_component(&self, component: Component) -> Result<()> {
        let etcd = {
            let mut own = self.own_processes()?;
            let OwnProcesses { processes, ports } = &mut *own;
            let args = match component {
                Component::Etcd => components::etcd_args(&self.layout, ports),
                Component::ApiServer => components::apiserver_args(&self.layout, ports),
            };
            let program = self.bin_dir().join(component.program());
            processes.respawn(&self.layout, &program, args)?;
            ports.etcd_client_address()
        };
        let client = kubeconfig::client(&self.layout.kubeconfig()).await?;
        let healthy = wait::poll(RESTART_TIMEOUT, || {
            let running = self
                .own_processes()
                .and_then(|own| own.processes.ensure_running(&self.layout));
            let client = &client;
            let etcd = &etcd;
            async move {
                if let Err(exited) = running {
                    return Some(Err(exited));
                }
                let healthy = match component {
                    Component::Etcd => etcd_is_healthy(etcd).await,
                    Component::ApiServer => plane::is_ready(client).await.unwrap_or(false),
                };
                healthy.then_some(Ok(()))
            }
        })
        .await;
        healthy.unwrap_or_else(|| {
            Err(anyhow!(
                "{} was not healthy {RESTART_TIMEOUT:?} after it was started again (logs in {})",
                component.program(),
                self.layout.logs_dir().display()
            ))
        })
    }

    fn own_processes(&self) -> Result<MutexGuard<'_, OwnProcesses>> {
        let own = self.own.as_ref().context(
            "only a plane started by this process can stop and start its components, \
             not one reached through REPLIKA_TEST_KUBECONFIG",
        )?;
        // Every critical section leaves the processes consistent.
        Ok(own.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// Whether etcd answers `GET /health` with `"health":"true"`.
async fn etcd_is_healthy(address: &str) -> bool {
    wait::http_get(address, "/health")
        .await
        .is_ok_and(|response| response.contains(r#""health":"true""#))
}
