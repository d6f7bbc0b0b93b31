//! The plane's certificates and keys, made with rcgen (ECDSA P-256).
//!
//! One CA signs the API server's serving certificate and the admin's client
//! certificate; kube-apiserver trusts that CA for client certificates and
//! kube-controller-manager publishes it as the cluster's root CA. The CA's key
//! only lives in memory: test users are made by impersonation, not by issuing
//! certificates (see [`crate::ControlPlane::user`]).

use std::{fs, io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::{components::Topology, layout::Layout, node::network};

pub(crate) const CA_CERT: &str = "ca.crt";
pub(crate) const APISERVER_CERT: &str = "apiserver.crt";
pub(crate) const APISERVER_KEY: &str = "apiserver.key";
pub(crate) const ADMIN_CERT: &str = "admin.crt";
pub(crate) const ADMIN_KEY: &str = "admin.key";
/// Signs ServiceAccount tokens (API server and controller-manager).
pub(crate) const SERVICE_ACCOUNT_KEY: &str = "service-account.key";
/// Verifies ServiceAccount tokens (API server).
pub(crate) const SERVICE_ACCOUNT_PUBLIC_KEY: &str = "service-account.pub";

pub(crate) const KUBELET_CERT: &str = "kubelet.crt";
pub(crate) const KUBELET_KEY: &str = "kubelet.key";
pub(crate) const PROXY_CERT: &str = "kube-proxy.crt";
pub(crate) const PROXY_KEY: &str = "kube-proxy.key";

/// The identity behind the admin kubeconfig; `system:masters` bypasses RBAC.
pub(crate) const ADMIN_USER: &str = "admin";
const ADMIN_GROUP: &str = "system:masters";
/// The Node authorizer and NodeRestriction know a kubelet by this group and
/// the user `system:node:<node name>`.
const NODES_GROUP: &str = "system:nodes";
/// Bound to the ClusterRole `system:node-proxier` by the default RBAC policy.
pub(crate) const PROXY_USER: &str = "system:kube-proxy";

/// Writes a fresh set of certificates and keys into the layout's `pki` directory.
pub(crate) fn write(layout: &Layout, topology: Topology) -> Result<()> {
    let ca = CertifiedIssuer::self_signed(ca_params(), KeyPair::generate()?)?;
    write_file(&layout.pki(CA_CERT), &ca.pem(), PUBLIC)?;
    issue(
        layout,
        &ca,
        &serving_params(topology)?,
        APISERVER_CERT,
        APISERVER_KEY,
    )?;
    issue(
        layout,
        &ca,
        &client_params(ADMIN_USER, Some(ADMIN_GROUP)),
        ADMIN_CERT,
        ADMIN_KEY,
    )?;
    if topology == Topology::WithNode {
        let user = format!("system:node:{}", network::NODE_NAME);
        let kubelet = client_params(&user, Some(NODES_GROUP));
        issue(layout, &ca, &kubelet, KUBELET_CERT, KUBELET_KEY)?;
        let proxy = client_params(PROXY_USER, None);
        issue(layout, &ca, &proxy, PROXY_CERT, PROXY_KEY)?;
    }

    let service_account = KeyPair::generate()?;
    write_file(
        &layout.pki(SERVICE_ACCOUNT_KEY),
        &service_account.serialize_pem(),
        PRIVATE,
    )?;
    write_file(
        &layout.pki(SERVICE_ACCOUNT_PUBLIC_KEY),
        &service_account.public_key_pem(),
        PUBLIC,
    )
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "replika-testenv-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The API server is reached as `https://127.0.0.1:<port>` (or `localhost`),
/// and in a cluster also on the bridge address and, from pods, through the
/// `kubernetes` Service.
fn serving_params(topology: Topology) -> Result<CertificateParams> {
    let mut names = vec!["127.0.0.1", "localhost"];
    if topology == Topology::WithNode {
        names.extend([
            network::BRIDGE_IP,
            network::KUBERNETES_SERVICE_IP,
            "kubernetes.default.svc",
        ]);
    }
    let mut params =
        CertificateParams::new(names.into_iter().map(str::to_owned).collect::<Vec<_>>())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

/// The API server takes the user name from CN and the groups from O.
fn client_params(user: &str, group: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, user);
    if let Some(group) = group {
        params
            .distinguished_name
            .push(DnType::OrganizationName, group);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn issue(
    layout: &Layout,
    ca: &CertifiedIssuer<'_, KeyPair>,
    params: &CertificateParams,
    cert_file: &str,
    key_file: &str,
) -> Result<()> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    write_file(&layout.pki(cert_file), &cert.pem(), PUBLIC)?;
    write_file(&layout.pki(key_file), &key.serialize_pem(), PRIVATE)
}

const PUBLIC: u32 = 0o644;
const PRIVATE: u32 = 0o600;

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}
