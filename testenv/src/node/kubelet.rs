//! The configuration and command lines of the kubelet and kube-proxy
//! (../shared/NODE.md lists why each setting is there).

use std::ffi::OsString;

use anyhow::Result;
use serde_json::json;

use super::{NodeLayout, network, write};
use crate::{components::flag, kubeconfig, layout::Layout, pki};

pub(crate) const KUBELET: &str = "kubelet";
pub(crate) const KUBE_PROXY: &str = "kube-proxy";

/// Where the kubelet serves (on the node's address) and its health (loopback).
const KUBELET_PORT: u16 = 10250;
const KUBELET_HEALTHZ_PORT: u16 = 10248;
/// kube-proxy's health endpoint, on 127.0.0.1.
pub(crate) const PROXY_HEALTHZ: &str = "127.0.0.1:10256";

/// Writes the kubelet's and kube-proxy's configuration files and kubeconfigs.
pub(crate) fn write_configs(layout: &Layout, node: &NodeLayout, server: &str) -> Result<()> {
    let kubelet = kubeconfig::with_certificate(
        layout,
        server,
        &format!("system:node:{}", network::NODE_NAME),
        pki::KUBELET_CERT,
        pki::KUBELET_KEY,
    );
    kubeconfig::write(&node.kubelet_kubeconfig(), &kubelet)?;
    let proxy = kubeconfig::with_certificate(
        layout,
        server,
        pki::PROXY_USER,
        pki::PROXY_CERT,
        pki::PROXY_KEY,
    );
    kubeconfig::write(&node.proxy_kubeconfig(), &proxy)?;

    // An empty resolv.conf and a cluster DNS address in the Service range:
    // otherwise pods get the host's nameservers, off this machine.
    write(&node.resolv_conf(), "")?;
    let kubelet_config = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": network::BRIDGE_IP,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": layout.pki(pki::CA_CERT)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": format!("unix://{}", node.containerd_socket().display()),
        "cgroupDriver": "cgroupfs",
        // This machine has cgroup v1 (hybrid); 1.34 still runs there.
        "failCgroupV1": false,
        "failSwapOn": false,
        "resolvConf": node.resolv_conf(),
        "clusterDNS": [network::CLUSTER_DNS],
        "clusterDomain": "cluster.local",
        // Secret volumes follow their Secret within seconds.
        "syncFrequency": "10s",
        "podLogsDir": node.root().join("pod-logs"),
        "volumePluginDir": node.root().join("volume-plugins"),
        // Imported images cannot be pulled again: never collect them, and
        // never evict pods for a host disk that is merely full-ish.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
    });
    write(
        &node.kubelet_config(),
        &serde_json::to_string_pretty(&kubelet_config)?,
    )?;

    let proxy_config = json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": node.proxy_kubeconfig()},
        "hostnameOverride": network::NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": network::POD_RANGE,
        "healthzBindAddress": PROXY_HEALTHZ,
        "metricsBindAddress": "127.0.0.1:10249",
        "nodePortAddresses": [format!("{}/32", network::BRIDGE_IP)],
        "iptables": {"localhostNodePorts": false},
        // Zeros leave the kernel's conntrack settings alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    });
    write(
        &node.proxy_config(),
        &serde_json::to_string_pretty(&proxy_config)?,
    )
}

pub(crate) fn kubelet_args(node: &NodeLayout) -> Vec<OsString> {
    vec![
        flag("config", node.kubelet_config()),
        flag("kubeconfig", node.kubelet_kubeconfig()),
        flag("root-dir", node.kubelet_root()),
        flag("hostname-override", network::NODE_NAME),
        flag("node-ip", network::BRIDGE_IP),
    ]
}

pub(crate) fn proxy_args(node: &NodeLayout) -> Vec<OsString> {
    vec![flag("config", node.proxy_config())]
}
