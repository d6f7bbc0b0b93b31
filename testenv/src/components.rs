//! The command lines of etcd, kube-apiserver and kube-controller-manager.

use std::{
    ffi::{OsStr, OsString},
    net::TcpListener,
};

use anyhow::{Context, Result};

use crate::{layout::Layout, pki};

pub(crate) const ETCD: &str = "etcd";
pub(crate) const APISERVER: &str = "kube-apiserver";
pub(crate) const CONTROLLER_MANAGER: &str = "kube-controller-manager";

/// The controllers that make a plane without nodes behave like a cluster:
/// namespaces are emptied and deleted, ownerReferences are honoured, every
/// namespace gets its `default` ServiceAccount and `kube-root-ca.crt`, token
/// Secrets are filled, and the aggregated ClusterRoles (`admin`, `edit`,
/// `view`) get their rules, so tests can bind users to them.
const CONTROLLERS: &str = "namespace-controller,garbage-collector-controller,serviceaccount-controller,\
     serviceaccount-token-controller,root-ca-certificate-publisher-controller,\
     clusterrole-aggregation-controller";

/// The Service CIDR; nothing routes to it, but the API server needs one.
const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";

/// Free ports on 127.0.0.1, one for each listener of the plane.
#[derive(Debug)]
pub(crate) struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
    controller_manager: u16,
}

impl Ports {
    /// Asks the kernel for distinct free ports. They are released before the
    /// processes bind them, so another process could take one in between; the
    /// start then fails with the log of the process that could not bind.
    pub(crate) fn pick() -> Result<Ports> {
        // Every listener stays open until all ports are picked, so they differ.
        let mut held = Vec::new();
        let mut free_port = || -> Result<u16> {
            let listener =
                TcpListener::bind("127.0.0.1:0").context("cannot find a free port on 127.0.0.1")?;
            let port = listener.local_addr()?.port();
            held.push(listener);
            Ok(port)
        };
        Ok(Ports {
            etcd_client: free_port()?,
            etcd_peer: free_port()?,
            apiserver: free_port()?,
            controller_manager: free_port()?,
        })
    }

    pub(crate) fn apiserver_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver)
    }

    /// Where etcd serves its clients (and its `/health`).
    pub(crate) fn etcd_client_address(&self) -> (&'static str, u16) {
        ("127.0.0.1", self.etcd_client)
    }

    fn etcd_client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_client)
    }

    fn etcd_peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_peer)
    }
}

pub(crate) fn etcd_args(layout: &Layout, ports: &Ports) -> Vec<OsString> {
    vec![
        flag("name", "replika-testenv"),
        flag("data-dir", layout.etcd_data()),
        flag("listen-client-urls", ports.etcd_client_url()),
        flag("advertise-client-urls", ports.etcd_client_url()),
        flag("listen-peer-urls", ports.etcd_peer_url()),
        flag("initial-advertise-peer-urls", ports.etcd_peer_url()),
        flag(
            "initial-cluster",
            format!("replika-testenv={}", ports.etcd_peer_url()),
        ),
        // The data is thrown away with the plane: durability only costs time.
        flag("unsafe-no-fsync", "true"),
    ]
}

pub(crate) fn apiserver_args(layout: &Layout, ports: &Ports) -> Vec<OsString> {
    vec![
        flag("etcd-servers", ports.etcd_client_url()),
        flag("bind-address", "127.0.0.1"),
        flag("advertise-address", "127.0.0.1"),
        flag("secure-port", ports.apiserver.to_string()),
        flag("tls-cert-file", layout.pki(pki::APISERVER_CERT)),
        flag("tls-private-key-file", layout.pki(pki::APISERVER_KEY)),
        flag("client-ca-file", layout.pki(pki::CA_CERT)),
        flag("authorization-mode", "RBAC"),
        flag("service-account-issuer", ports.apiserver_url()),
        flag(
            "service-account-key-file",
            layout.pki(pki::SERVICE_ACCOUNT_PUBLIC_KEY),
        ),
        flag(
            "service-account-signing-key-file",
            layout.pki(pki::SERVICE_ACCOUNT_KEY),
        ),
        flag("service-cluster-ip-range", SERVICE_CLUSTER_IP_RANGE),
        // The default reconciler publishes the advertise address as the
        // endpoints of the `kubernetes` Service, and loopback addresses are not
        // valid endpoints.
        flag("endpoint-reconciler-type", "none"),
    ]
}

pub(crate) fn controller_manager_args(layout: &Layout, ports: &Ports) -> Vec<OsString> {
    vec![
        flag("kubeconfig", layout.kubeconfig()),
        flag("bind-address", "127.0.0.1"),
        flag("secure-port", ports.controller_manager.to_string()),
        flag("controllers", CONTROLLERS),
        flag("leader-elect", "false"),
        // Run every controller as the admin instead of minting a
        // ServiceAccount token per controller.
        flag("use-service-account-credentials", "false"),
        flag(
            "service-account-private-key-file",
            layout.pki(pki::SERVICE_ACCOUNT_KEY),
        ),
        flag("root-ca-file", layout.pki(pki::CA_CERT)),
    ]
}

/// `--name=value`, keeping paths as they are (they need not be UTF-8).
fn flag(name: &str, value: impl AsRef<OsStr>) -> OsString {
    let mut flag = OsString::from(format!("--{name}="));
    flag.push(value);
    flag
}
