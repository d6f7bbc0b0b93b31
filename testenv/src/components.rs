//! The command lines of etcd, kube-apiserver, kube-controller-manager and,
//! in a cluster with a node, kube-scheduler.

use std::{
    ffi::{OsStr, OsString},
    net::TcpListener,
};

use anyhow::{Context, Result};

use crate::{layout::Layout, node::network, pki};

pub(crate) const ETCD: &str = "etcd";
pub(crate) const APISERVER: &str = "kube-apiserver";
pub(crate) const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub(crate) const SCHEDULER: &str = "kube-scheduler";

/// What a plane serves: tests and `make run` (no node; everything on
/// loopback), or a cluster with a worker node (`make cluster`, [`crate::Cluster`]),
/// whose pods reach the API server on the node's bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topology {
    PlaneOnly,
    WithNode,
}

/// The controllers that make a plane without nodes behave like a cluster:
/// namespaces are emptied and deleted, ownerReferences are honoured, every
/// namespace gets its `default` ServiceAccount and `kube-root-ca.crt`, token
/// Secrets are filled, and the aggregated ClusterRoles (`admin`, `edit`,
/// `view`) get their rules, so tests can bind users to them.
const CONTROLLERS: &str = "namespace-controller,garbage-collector-controller,serviceaccount-controller,\
     serviceaccount-token-controller,root-ca-certificate-publisher-controller,\
     clusterrole-aggregation-controller";

/// The Service CIDR of a plane without node; nothing routes to it, but the
/// API server needs one.
const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";

/// Free ports on 127.0.0.1, one for each listener of the plane, and the
/// topology, which decides where the API server listens.
#[derive(Debug)]
pub(crate) struct Ports {
    pub(crate) topology: Topology,
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
    controller_manager: u16,
    scheduler: u16,
}

impl Ports {
    /// Asks the kernel for distinct free ports. They are released before the
    /// processes bind them, so another process could take one in between; the
    /// start then fails with the log of the process that could not bind.
    /// The API server's port is picked on 127.0.0.1 too: on the bridge
    /// address it is free as well unless something binds the wildcard address.
    pub(crate) fn pick(topology: Topology) -> Result<Ports> {
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
            topology,
            etcd_client: free_port()?,
            etcd_peer: free_port()?,
            apiserver: free_port()?,
            controller_manager: free_port()?,
            scheduler: free_port()?,
        })
    }

    pub(crate) fn apiserver_url(&self) -> String {
        format!("https://{}:{}", self.apiserver_host(), self.apiserver)
    }

    /// Pods cannot reach 127.0.0.1 of the host, so a cluster's API server
    /// binds to and advertises the bridge address (../shared/NODE.md).
    fn apiserver_host(&self) -> &'static str {
        match self.topology {
            Topology::PlaneOnly => "127.0.0.1",
            Topology::WithNode => network::BRIDGE_IP,
        }
    }

    /// Where etcd serves its clients (and its `/health`).
    pub(crate) fn etcd_client_address(&self) -> String {
        format!("127.0.0.1:{}", self.etcd_client)
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
    let mut args = vec![
        flag("etcd-servers", ports.etcd_client_url()),
        flag("bind-address", ports.apiserver_host()),
        flag("advertise-address", ports.apiserver_host()),
        flag("secure-port", ports.apiserver.to_string()),
        flag("tls-cert-file", layout.pki(pki::APISERVER_CERT)),
        flag("tls-private-key-file", layout.pki(pki::APISERVER_KEY)),
        flag("client-ca-file", layout.pki(pki::CA_CERT)),
        flag("service-account-issuer", ports.apiserver_url()),
        flag(
            "service-account-key-file",
            layout.pki(pki::SERVICE_ACCOUNT_PUBLIC_KEY),
        ),
        flag(
            "service-account-signing-key-file",
            layout.pki(pki::SERVICE_ACCOUNT_KEY),
        ),
    ];
    match ports.topology {
        Topology::PlaneOnly => args.extend([
            flag("authorization-mode", "RBAC"),
            flag("service-cluster-ip-range", SERVICE_CLUSTER_IP_RANGE),
            // The default reconciler publishes the advertise address as the
            // endpoints of the `kubernetes` Service, and loopback addresses
            // are not valid endpoints.
            flag("endpoint-reconciler-type", "none"),
        ]),
        Topology::WithNode => args.extend([
            flag("authorization-mode", "Node,RBAC"),
            flag("enable-admission-plugins", "NodeRestriction"),
            flag("service-cluster-ip-range", network::SERVICE_RANGE),
            // `kubectl logs`, `exec` and `port-forward` go through the
            // kubelet, which authorizes the admin by webhook.
            flag("kubelet-client-certificate", layout.pki(pki::ADMIN_CERT)),
            flag("kubelet-client-key", layout.pki(pki::ADMIN_KEY)),
            flag("kubelet-preferred-address-types", "InternalIP"),
        ]),
    }
    args
}

pub(crate) fn controller_manager_args(layout: &Layout, ports: &Ports) -> Vec<OsString> {
    // With a node, all of them: Deployments, ReplicaSets, EndpointSlices, ...
    let controllers = match ports.topology {
        Topology::PlaneOnly => CONTROLLERS,
        Topology::WithNode => "*",
    };
    vec![
        flag("kubeconfig", layout.kubeconfig()),
        flag("bind-address", "127.0.0.1"),
        flag("secure-port", ports.controller_manager.to_string()),
        flag("controllers", controllers),
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

pub(crate) fn scheduler_args(layout: &Layout, ports: &Ports) -> Vec<OsString> {
    vec![
        flag("kubeconfig", layout.kubeconfig()),
        flag("bind-address", "127.0.0.1"),
        flag("secure-port", ports.scheduler.to_string()),
        flag("leader-elect", "false"),
    ]
}

/// `--name=value`, keeping paths as they are (they need not be UTF-8).
pub(crate) fn flag(name: &str, value: impl AsRef<OsStr>) -> OsString {
    let mut flag = OsString::from(format!("--{name}="));
    flag.push(value);
    flag
}
