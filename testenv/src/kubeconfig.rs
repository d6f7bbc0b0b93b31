//! Kubeconfig files: the admin's, and the ones derived from it for test identities.
//!
//! They are written as JSON, which both kubectl and kube-rs read as YAML, and
//! refer to certificate and token files by absolute path.

use std::path::Path;

use anyhow::{Context as _, Result};
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};

use crate::{layout::Layout, pki};

/// The name of the cluster and context entries in every kubeconfig written here.
const CLUSTER_NAME: &str = "replika-testenv";

/// The admin kubeconfig of a plane being started, serving at `server`.
pub(crate) fn admin_of_new_plane(layout: &Layout, server: &str) -> Kubeconfig {
    with_certificate(
        layout,
        server,
        pki::ADMIN_USER,
        pki::ADMIN_CERT,
        pki::ADMIN_KEY,
    )
}

/// A kubeconfig for `server` that authenticates as `user` with the client
/// certificate and key of the layout's `pki` directory named `cert` and `key`.
pub(crate) fn with_certificate(
    layout: &Layout,
    server: &str,
    user: &str,
    cert: &str,
    key: &str,
) -> Kubeconfig {
    let path = |file| Some(layout.pki(file).display().to_string());
    let cluster = Cluster {
        server: Some(server.to_owned()),
        certificate_authority: path(pki::CA_CERT),
        ..Cluster::default()
    };
    let auth = AuthInfo {
        client_certificate: path(cert),
        client_key: path(key),
        ..AuthInfo::default()
    };
    single(cluster, user, auth)
}

/// A running plane's admin access, read from its kubeconfig's current context.
pub(crate) struct Admin {
    cluster: Cluster,
    auth: AuthInfo,
}

impl Admin {
    pub(crate) fn load(path: &Path) -> Result<Admin> {
        let config = Kubeconfig::read_from(path)?;
        let context = config
            .contexts
            .iter()
            .find(|named| Some(&named.name) == config.current_context.as_ref())
            .and_then(|named| named.context.as_ref())
            .context("no current context")?;
        let cluster = config
            .clusters
            .iter()
            .find(|named| named.name == context.cluster)
            .and_then(|named| named.cluster.clone())
            .with_context(|| format!("no cluster {:?}", context.cluster))?;
        let auth = config
            .auth_infos
            .iter()
            .find(|named| Some(&named.name) == context.user.as_ref())
            .and_then(|named| named.auth_info.clone())
            .with_context(|| format!("no user {:?}", context.user))?;
        Ok(Admin { cluster, auth })
    }

    /// Authenticates as the admin and asks the API server to act as `user` in
    /// `groups` (kubectl's `--as`/`--as-group`). Authorization then applies to
    /// the impersonated user alone.
    pub(crate) fn impersonating(&self, user: &str, groups: &[&str]) -> Kubeconfig {
        let auth = AuthInfo {
            impersonate: Some(user.to_owned()),
            impersonate_groups: (!groups.is_empty())
                .then(|| groups.iter().map(|&g| g.to_owned()).collect()),
            ..self.auth.clone()
        };
        single(self.cluster.clone(), user, auth)
    }

    /// Authenticates with the bearer token in `token_file`.
    pub(crate) fn with_token_file(&self, user: &str, token_file: &Path) -> Kubeconfig {
        let auth = AuthInfo {
            token_file: Some(token_file.display().to_string()),
            ..AuthInfo::default()
        };
        single(self.cluster.clone(), user, auth)
    }
}

pub(crate) fn write(path: &Path, config: &Kubeconfig) -> Result<()> {
    let json = serde_json::to_vec_pretty(config)?;
    std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
}

/// A new client for the kubeconfig at `path`.
pub(crate) async fn client(path: &Path) -> Result<kube::Client> {
    let config = Kubeconfig::read_from(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// A kubeconfig with one cluster, one user and the context that joins them.
fn single(cluster: Cluster, user: &str, auth: AuthInfo) -> Kubeconfig {
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: CLUSTER_NAME.to_owned(),
            cluster: Some(cluster),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: user.to_owned(),
            auth_info: Some(auth),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: CLUSTER_NAME.to_owned(),
            context: Some(Context {
                cluster: CLUSTER_NAME.to_owned(),
                user: Some(user.to_owned()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(CLUSTER_NAME.to_owned()),
        ..Kubeconfig::default()
    }
}
