//! Finds how the API server serves a kind named by a Replika, and remembers it.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::Client;
use kube::api::ApiResource;
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};

use crate::locks;

/// A kind the API server serves.
#[derive(Clone, Debug)]
pub struct ServedKind {
    pub resource: ApiResource,
    pub namespaced: bool,
}

/// Why a kind could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum KindError {
    #[error("the API server does not serve {0}")]
    NotServed(String),
    #[error("discovery of {kind} failed: {source}")]
    Discovery {
        kind: String,
        #[source]
        source: kube::Error,
    },
}

/// Discovery results by group/version/kind. A kind that is not served is asked
/// about again on the next pass, so installing its CRD later is picked up.
pub struct KindCache {
    client: Client,
    served: Mutex<HashMap<GroupVersionKind, ServedKind>>,
}

impl KindCache {
    pub fn new(client: Client) -> Self {
        KindCache {
            client,
            served: Mutex::default(),
        }
    }

    pub async fn resolve(&self, gvk: &GroupVersionKind) -> Result<ServedKind, KindError> {
        if let Some(kind) = self.cached(gvk) {
            return Ok(kind);
        }
        let kind_name = display(gvk);
        let (resource, capabilities) =
            pinned_kind(&self.client, gvk)
                .await
                .map_err(|source| match source {
                    kube::Error::Api(status) if status.code == 404 => {
                        KindError::NotServed(kind_name.clone())
                    }
                    kube::Error::Discovery(_) => KindError::NotServed(kind_name.clone()),
                    source => KindError::Discovery {
                        kind: kind_name.clone(),
                        source,
                    },
                })?;
        let kind = ServedKind {
            resource,
            namespaced: capabilities.scope == Scope::Namespaced,
        };
        locks::lock(&self.served).insert(gvk.clone(), kind.clone());
        Ok(kind)
    }

    fn cached(&self, gvk: &GroupVersionKind) -> Option<ServedKind> {
        locks::lock(&self.served).get(gvk).cloned()
    }
}

/// `Kind.version.group`, or `Kind.version` for the core group, as kubectl prints kinds.
pub fn display(gvk: &GroupVersionKind) -> String {
    if gvk.group.is_empty() {
        format!("{}.{}", gvk.kind, gvk.version)
    } else {
        format!("{}.{}.{}", gvk.kind, gvk.version, gvk.group)
    }
}

/// Why a cluster-scoped kind (named as the reader knows it) cannot be replicated.
pub fn cluster_scoped(kind: &str) -> String {
    format!("{kind} is cluster-scoped; only namespaced kinds can be replicated")
}

/// The problem reported for a Replika whose source kind is cluster-scoped.
pub fn cluster_scoped_problem(gvk: &GroupVersionKind) -> String {
    format!("spec.source.kind: {}", cluster_scoped(&display(gvk)))
}
