//! [`ClusterView`] backed by the API server: discovery, SubjectAccessReviews, and
//! a watch-fed cache of Replikas.

use std::sync::Arc;

use k8s_openapi::api::authentication::v1::UserInfo;
use kube::Client;
use kube::core::GroupVersionKind;
use kube::runtime::reflector::Store;

use super::admission::ClusterView;
use crate::api::Replika;
use crate::authorization::{Authorizer, author};
use crate::controller::kinds::{KindCache, KindError, ServedKind};
use crate::domain::access::Access;
use crate::domain::attestation::Signer;

/// The live cluster, as the webhook sees it.
pub struct LiveCluster {
    kinds: KindCache,
    replikas: Store<Replika>,
    authorizer: Arc<Authorizer>,
}

impl LiveCluster {
    pub fn new(client: Client, replikas: Store<Replika>, authorizer: Arc<Authorizer>) -> Self {
        LiveCluster {
            kinds: KindCache::new(client),
            replikas,
            authorizer,
        }
    }
}

impl ClusterView for LiveCluster {
    async fn kind(&self, gvk: &GroupVersionKind) -> Result<ServedKind, KindError> {
        self.kinds.resolve(gvk).await
    }

    async fn denied_to_user(
        &self,
        user: &UserInfo,
        checks: &[Access],
    ) -> Result<Vec<Access>, String> {
        self.authorizer.denied_to(&author(user), checks).await
    }

    async fn denied_to_operator(&self, checks: &[Access]) -> Result<Vec<Access>, String> {
        self.authorizer.denied_to_operator(checks).await
    }

    fn signer(&self) -> &Signer {
        self.authorizer.signer()
    }

    fn is_operator(&self, user: &UserInfo) -> bool {
        self.authorizer.is_operator(user)
    }

    fn replikas(&self) -> Vec<Replika> {
        self.replikas
            .state()
            .iter()
            .map(|r| (**r).clone())
            .collect()
    }
}
