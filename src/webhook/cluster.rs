//! [`ClusterView`] backed by the API server: discovery, SubjectAccessReviews, and
//! a watch-fed cache of Replikas.

use futures::future::join_all;
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::reflector::Store;

use super::admission::{Access, ClusterView};
use crate::api::Replika;
use crate::controller::kinds::{KindCache, KindError, ServedKind};

/// The live cluster, as the webhook sees it.
pub struct LiveCluster {
    client: Client,
    kinds: KindCache,
    replikas: Store<Replika>,
}

impl LiveCluster {
    pub fn new(client: Client, replikas: Store<Replika>) -> Self {
        LiveCluster {
            kinds: KindCache::new(client.clone()),
            client,
            replikas,
        }
    }
}

fn attributes(access: &Access) -> ResourceAttributes {
    ResourceAttributes {
        verb: Some(access.verb.to_string()),
        group: Some(access.group.clone()),
        resource: Some(access.resource.clone()),
        namespace: access.namespace.clone(),
        name: access.name.clone(),
        ..Default::default()
    }
}

/// Creates one review per check, all at once, and keeps the checks that were not allowed.
/// Fails if any review could not be made: an unanswered question is not a yes.
async fn not_allowed<K>(
    api: Api<K>,
    checks: &[Access],
    review: impl Fn(ResourceAttributes) -> K,
    allowed: fn(&K) -> bool,
) -> Result<Vec<Access>, String>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let answers = join_all(checks.iter().map(|access| {
        let (api, request) = (api.clone(), review(attributes(access)));
        async move { api.create(&PostParams::default(), &request).await }
    }))
    .await;
    let mut denied = Vec::new();
    for (access, answer) in checks.iter().zip(answers) {
        if !allowed(&answer.map_err(|error| error.to_string())?) {
            denied.push(access.clone());
        }
    }
    Ok(denied)
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
        let review = |attributes| SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups.clone(),
                uid: user.uid.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(attributes),
                ..Default::default()
            },
            ..Default::default()
        };
        let allowed =
            |answer: &SubjectAccessReview| answer.status.as_ref().is_some_and(|s| s.allowed);
        not_allowed(Api::all(self.client.clone()), checks, review, allowed).await
    }

    async fn denied_to_operator(&self, checks: &[Access]) -> Result<Vec<Access>, String> {
        let review = |attributes| SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(attributes),
                ..Default::default()
            },
            ..Default::default()
        };
        let allowed =
            |answer: &SelfSubjectAccessReview| answer.status.as_ref().is_some_and(|s| s.allowed);
        not_allowed(Api::all(self.client.clone()), checks, review, allowed).await
    }

    fn replikas(&self) -> Vec<Replika> {
        self.replikas
            .state()
            .iter()
            .map(|r| (**r).clone())
            .collect()
    }
}
