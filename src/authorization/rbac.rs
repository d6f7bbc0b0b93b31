//! The RBAC follower: watches the metadata of Roles, ClusterRoles and their
//! bindings, so that the [`ReviewCache`] forgets its answers on any change and
//! remembers none while a watch is down.

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Client;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use tracing::warn;

use super::reviews::ReviewCache;

impl ReviewCache {
    /// Follows the four RBAC kinds until the process ends.
    pub(super) async fn follow_rbac(&self, client: Client) {
        tokio::join!(
            self.follow::<Role>(client.clone(), 0),
            self.follow::<ClusterRole>(client.clone(), 1),
            self.follow::<RoleBinding>(client.clone(), 2),
            self.follow::<ClusterRoleBinding>(client, 3),
        );
    }

    async fn follow<K>(&self, client: Client, index: usize)
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static,
    {
        let stream = watcher(
            Api::<PartialObjectMeta<K>>::all(client),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitDone) => self.rbac_followed(index, true),
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => self.forget(),
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(error) => {
                    self.rbac_followed(index, false);
                    warn!(%error, kind = K::kind(&()).as_ref(), "RBAC watch failed: access reviews are not remembered until it recovers");
                }
            }
        }
    }
}
