//! A real Kubernetes control plane for Replika's tests and local runs.
//!
//! [`ControlPlane`] runs etcd, kube-apiserver and kube-controller-manager as
//! local processes on 127.0.0.1, the way controller-runtime's envtest does, with
//! the binaries that `control-plane/build.sh` builds. There is no kubelet, so
//! pods never run; everything an operator talks to (RBAC, namespaces, garbage
//! collection, CRDs, ServiceAccounts, webhooks) is the real thing.
//!
//! Tests use [`ControlPlane::shared`], one plane per test binary, and give each
//! test its own [`TestNamespace`]. [`ControlPlane::user`] and
//! [`ControlPlane::service_account`] hand out [`Identity`]s that start with no
//! rights, so authorization is exercised as in a real cluster. Fault tests stop
//! and restart etcd or kube-apiserver of a plane they started with
//! [`ControlPlane::stop_component`] and [`ControlPlane::start_component`]. The
//! `testenv` binary starts a long-lived plane for local development (`make
//! control-plane`).
//!
//! [`Cluster`] adds a real worker node to a plane (`make cluster`): pods run,
//! Services work, and Replika runs from its image (`make deploy`).

mod binaries;
mod command;
mod components;
mod faults;
mod identity;
mod kubeconfig;
mod kubectl;
mod layout;
mod namespace;
mod node;
mod pki;
mod plane;
mod process;
mod runtime;
mod shared;
mod wait;
mod watchdog;

pub use command::{CommandOutput, run, run_with_stdin};
pub use faults::Component;
pub use identity::Identity;
pub use namespace::TestNamespace;
pub use node::{Cluster, Install};
pub use plane::ControlPlane;
pub use wait::wait_for;
pub use watchdog::stop_when_we_end;
