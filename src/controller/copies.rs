//! Writes copies into target namespaces, and removes or releases them.
//!
//! [`CopyWriter::sync`] brings one copy in line as a loop: the domain's
//! [`next_step`] names the next request from what is known of the copy, the
//! writer makes it and records what the answer taught, and asks again.
//! A copy that does not exist yet is created with POST, which fails rather than
//! touch an object that appeared meanwhile; every later write is a forced
//! server-side apply carrying the copy's UID as a precondition, so it only ever
//! lands on the object Replika created. A create records our field ownership as
//! an `Update`, under which server-side apply would never remove a key; so once
//! a pass has made all its copies it turns those entries into `Apply` ones (what
//! kubectl does when it upgrades client-side-applied objects), and from then on
//! a key removed from the source is removed from every copy. A copy whose
//! upgrade failed is upgraded by the next pass that looks at it.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::{StreamExt, stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tracing::debug;

use super::MANAGER;
use super::copy_index::CopyRecord;
use crate::api::ConflictPolicy;
use crate::api::{
    ANNOTATION_CONTENT_HASH, ANNOTATION_OWNER, ANNOTATION_OWNER_UID, LABEL_CREATED_BY,
    LABEL_PART_OF,
};
use crate::domain::copy::{CopyTemplate, Owner};
use crate::domain::plan::Scope;
use crate::domain::sync_steps::{Progress, SyncStep, Written, next_step};
use crate::leader::Leadership;
use crate::locks::lock;
use crate::metrics::{CopyOperation, Metrics};

/// What happened to one target namespace in a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    InSync,
    Created,
    Updated,
    /// An immutable copy whose content changed was deleted and created again.
    Replaced,
    Conflict(String),
    Failed(String),
    /// The write was refused because this replica no longer leads: says
    /// nothing about the copy.
    NotLeading,
}

impl Outcome {
    /// Whether the namespace holds an up-to-date copy after the pass.
    pub fn is_synced(&self) -> bool {
        matches!(
            self,
            Outcome::InSync | Outcome::Created | Outcome::Updated | Outcome::Replaced
        )
    }

    /// What a failed request means for the copy: a refusal for lack of
    /// leadership (made by our own client layer, see [`CopyWriter`]), or a failure.
    pub fn from_error(error: &kube::Error) -> Self {
        match error {
            kube::Error::Service(refusal) if refusal.is::<NotLeading>() => Outcome::NotLeading,
            other => Outcome::Failed(describe(other)),
        }
    }

    /// Whether the write was refused for lack of leadership, which says
    /// nothing about the copy.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Outcome::NotLeading)
    }
}

/// Whether the API server refused a write because it changes an immutable field.
pub fn is_immutable_rejection(status: &kube::core::Status) -> bool {
    status.is_invalid() && status.message.contains("immutable")
}

/// Resource versions of copies as we last wrote them, by (Replika UID, namespace).
/// A copy whose resource version moved on was changed by someone else and is re-applied.
#[derive(Default)]
pub struct WrittenVersions(Mutex<HashMap<(String, String), Written>>);

impl WrittenVersions {
    fn get(&self, owner_uid: &str, namespace: &str) -> Option<Written> {
        self.lock()
            .get(&(owner_uid.to_string(), namespace.to_string()))
            .cloned()
    }

    pub(super) fn set(&self, owner_uid: &str, namespace: &str, resource_version: Option<String>) {
        let key = (owner_uid.to_string(), namespace.to_string());
        match resource_version {
            Some(latest) => self.lock().insert(
                key,
                Written {
                    latest,
                    created: None,
                },
            ),
            None => self.lock().remove(&key),
        };
    }

    /// Records the ownership upgrade of a copy we created at `created`.
    fn upgraded(&self, owner_uid: &str, namespace: &str, created: &str, upgraded: Option<String>) {
        let key = (owner_uid.to_string(), namespace.to_string());
        let mut versions = self.lock();
        match (versions.get_mut(&key), upgraded) {
            (Some(written), Some(upgraded)) if written.latest == created => {
                written.created = Some(std::mem::replace(&mut written.latest, upgraded));
            }
            _ => {}
        }
    }

    /// Whether an object is exactly as the engine's own writes left it (by owner and namespace).
    pub fn is_own_write(&self, metadata: &ObjectMeta) -> bool {
        let (Some(owner_uid), Some(namespace), Some(version)) = (
            metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(ANNOTATION_OWNER_UID)),
            metadata.namespace.as_deref(),
            metadata.resource_version.as_deref(),
        ) else {
            return false;
        };
        self.get(owner_uid, namespace)
            .is_some_and(|written| written.is_ours(version))
    }

    /// Drops everything remembered for one Replika.
    pub fn forget_owner(&self, owner_uid: &str) {
        self.lock().retain(|(uid, _), _| uid != owner_uid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Written>> {
        lock(&self.0)
    }
}

/// The most requests one copy's sync makes (a replacement after a stale
/// cache and a verification takes six); beyond, the next pass tries again.
const MAX_STEPS: usize = 8;

/// Whose copies a pass writes and which objects it may take over.
pub struct SyncRules<'a> {
    pub owner: &'a Owner,
    pub conflict: ConflictPolicy,
    pub scope: &'a Scope,
}

/// Why a write found no copy: the next pass creates it.
const COPY_DELETED: &str = "the copy was deleted while it was written";

/// Why a write was refused: the leader Lease is no longer this process's.
#[derive(Debug, thiserror::Error)]
#[error("this replica no longer holds the leader Lease; the write is left to the new leader")]
pub struct NotLeading;

/// Writes for the copies of one Replika in one kind.
pub struct CopyWriter<'a> {
    /// Checked before every write.
    pub leadership: &'a Leadership,
    pub client: &'a Client,
    pub resource: &'a ApiResource,
    pub owner_uid: &'a str,
    pub written: &'a WrittenVersions,
    pub metrics: &'a Metrics,
    /// Copies created by this writer whose ownership is not upgraded yet.
    pub created: Mutex<Vec<CopyRecord>>,
}

impl CopyWriter<'_> {
    fn api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, self.resource)
    }

    /// Refuses every write once this process may no longer act as the leader.
    fn may_write(&self) -> Result<(), kube::Error> {
        if self.leadership.is_valid() {
            Ok(())
        } else {
            Err(kube::Error::Service(Box::new(NotLeading)))
        }
    }

    /// Brings the copy in `namespace` in line with `template`, starting from
    /// what the cache shows there (`cached`), writing only what differs.
    pub async fn sync(
        &self,
        namespace: &str,
        cached: Option<&CopyRecord>,
        template: &CopyTemplate,
        rules: &SyncRules<'_>,
    ) -> Outcome {
        let mut copy = cached.cloned();
        let mut progress = Progress::default();
        let mut replacing = false;
        for _ in 0..MAX_STEPS {
            if !self.leadership.is_valid() {
                return Outcome::NotLeading;
            }
            let written = self
                .written
                .get(self.owner_uid, namespace)
                .unwrap_or_default();
            let next = next_step(
                copy.as_ref().map(CopyRecord::facts),
                &written,
                template.content_hash(),
                rules.owner,
                rules.conflict,
                rules.scope,
                progress,
            );
            let learnt = match (next, copy.as_mut()) {
                (SyncStep::InSync, _) => return Outcome::InSync,
                (SyncStep::Conflict(why), _) => return Outcome::Conflict(why),
                (SyncStep::Wait(why), _) => return Outcome::Failed(why),
                (SyncStep::Create, _) => match self.create(namespace, template).await {
                    Ok(()) if replacing => {
                        self.metrics.observe_write(CopyOperation::Replace);
                        return Outcome::Replaced;
                    }
                    Ok(()) => return Outcome::Created,
                    Err(kube::Error::Api(status)) if status.is_already_exists() => {
                        progress.cache_stale = true;
                        Ok(())
                    }
                    Err(error) => Err(error),
                },
                (SyncStep::Reread | SyncStep::ReadFirst, _) => {
                    progress.read = true;
                    progress.cache_stale = false;
                    match self.read(namespace, template).await {
                        Ok(Some(now)) => {
                            copy = Some(now);
                            Ok(())
                        }
                        // Gone again already: the next pass creates it.
                        Ok(None) => return Outcome::Failed(COPY_DELETED.into()),
                        Err(error) => Err(error),
                    }
                }
                (SyncStep::UpgradeOwnership, Some(current)) => {
                    let index = current.create_entry.unwrap_or_default();
                    match self.upgrade_ownership(current, index).await {
                        Ok(upgraded) => {
                            if written.is_ours(&current.resource_version) {
                                self.written
                                    .set(self.owner_uid, namespace, upgraded.clone());
                            }
                            current.resource_version = upgraded.unwrap_or_default();
                            current.create_entry = None;
                            Ok(())
                        }
                        // Our cache may lag behind the copy: look at it as it is now.
                        Err(kube::Error::Api(_)) if !progress.read => {
                            progress.cache_stale = true;
                            Ok(())
                        }
                        Err(error) => Err(error),
                    }
                }
                (SyncStep::Apply, Some(current)) => match self.apply(current, template).await {
                    Ok(changed) if changed => {
                        self.metrics.observe_write(CopyOperation::Update);
                        return Outcome::Updated;
                    }
                    Ok(_) => return Outcome::InSync,
                    Err(kube::Error::Api(status)) if is_immutable_rejection(&status) => {
                        progress.refused_as_immutable = true;
                        Ok(())
                    }
                    Err(error) => Err(error),
                },
                (SyncStep::Replace, Some(current)) => match self.delete(current).await {
                    Ok(()) => {
                        copy = None;
                        replacing = true;
                        progress.refused_as_immutable = false;
                        Ok(())
                    }
                    Err(error) => Err(error),
                },
                (SyncStep::UpgradeOwnership | SyncStep::Apply | SyncStep::Replace, None) => {
                    return Outcome::Failed(
                        "internal error: a write was planned for a copy that is not there".into(),
                    );
                }
            };
            if let Err(error) = learnt {
                return Outcome::from_error(&error);
            }
        }
        Outcome::Failed(format!(
            "the copy did not settle within {MAX_STEPS} requests; the next pass tries again"
        ))
    }

    /// The copy in `namespace` as it is now, if there is one; recorded as our
    /// own write when it holds the template, so that it is not written.
    async fn read(
        &self,
        namespace: &str,
        template: &CopyTemplate,
    ) -> Result<Option<CopyRecord>, kube::Error> {
        let Some(object) = self.api(namespace).get_opt(template.name()).await? else {
            return Ok(None);
        };
        let now = CopyRecord::from_metadata(&object.metadata);
        let body = serde_json::to_value(&object).map_err(kube::Error::SerdeError)?;
        if template.is_held_by(&body, namespace) {
            self.written.set(
                self.owner_uid,
                namespace,
                Some(now.resource_version.clone()),
            );
        }
        Ok(Some(now))
    }

    /// Upgrades the ownership of every copy this writer created, `parallel`
    /// at a time, so later applies can remove keys and no later pass has to.
    /// A copy that fails keeps its `Update` entry for the next pass to upgrade.
    pub async fn upgrade_created(&self, parallel: usize) {
        let created = std::mem::take(&mut *lock(&self.created));
        stream::iter(created)
            .for_each_concurrent(parallel, |copy| async move {
                let Some(index) = copy.create_entry else {
                    return;
                };
                if !self.leadership.is_valid() {
                    return;
                }
                match self.upgrade_ownership(&copy, index).await {
                    Ok(upgraded) => self.written.upgraded(
                        self.owner_uid,
                        &copy.namespace,
                        &copy.resource_version,
                        upgraded,
                    ),
                    Err(error) => debug!(
                        namespace = %copy.namespace,
                        error = %describe(&error),
                        "could not upgrade a new copy's field ownership; the next pass does"
                    ),
                }
            })
            .await;
    }

    /// Turns our `Update` field-ownership entry of `copy`, at `index` among its
    /// managed fields, into an `Apply` one. The `test` operations make it fail
    /// rather than edit a copy that changed since `copy.resource_version` (so
    /// an edit made meanwhile is not taken for ours) or an entry that moved.
    async fn upgrade_ownership(
        &self,
        copy: &CopyRecord,
        index: usize,
    ) -> Result<Option<String>, kube::Error> {
        self.may_write()?;
        let entry = format!("/metadata/managedFields/{index}");
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/uid", "value": copy.uid},
            {"op": "test", "path": "/metadata/resourceVersion", "value": copy.resource_version},
            {"op": "test", "path": format!("{entry}/manager"), "value": MANAGER},
            {"op": "test", "path": format!("{entry}/operation"), "value": "Update"},
            {"op": "replace", "path": format!("{entry}/operation"), "value": "Apply"},
        ]))
        .map_err(kube::Error::SerdeError)?;
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        let patched = self
            .api(&copy.namespace)
            .patch(&copy.name, &params, &Patch::<()>::Json(patch))
            .await?;
        Ok(patched.resource_version())
    }

    /// Creates the copy in `namespace`, failing if an object is already there.
    async fn create(&self, namespace: &str, template: &CopyTemplate) -> Result<(), kube::Error> {
        self.may_write()?;
        let object: DynamicObject = serde_json::from_value(template.for_namespace(namespace))
            .map_err(kube::Error::SerdeError)?;
        let params = PostParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        let created = self.api(namespace).create(&params, &object).await?;
        let record = CopyRecord::from_metadata(&created.metadata);
        self.written.set(
            self.owner_uid,
            namespace,
            Some(record.resource_version.clone()),
        );
        if record.create_entry.is_some() {
            lock(&self.created).push(record);
        }
        self.metrics.observe_write(CopyOperation::Create);
        Ok(())
    }

    /// Applies `template` over `existing` (ours, or one being adopted); whether
    /// that changed the object (an apply that changed nothing is no write).
    async fn apply(
        &self,
        existing: &CopyRecord,
        template: &CopyTemplate,
    ) -> Result<bool, kube::Error> {
        self.may_write()?;
        let namespace = &existing.namespace;
        let mut body = template.for_namespace(namespace);
        // The UID makes the apply fail instead of landing on a same-named newcomer.
        body["metadata"]["uid"] = Value::String(existing.uid.clone());
        let params = PatchParams::apply(MANAGER).force();
        let applied = self
            .api(namespace)
            .patch(&existing.name, &params, &Patch::Apply(&body))
            .await?;
        let version = applied.resource_version();
        let changed = version.as_ref() != Some(&existing.resource_version);
        self.written.set(self.owner_uid, namespace, version);
        Ok(changed)
    }

    /// Deletes `existing`, only if it is still the object we saw.
    pub async fn delete(&self, existing: &CopyRecord) -> Result<(), kube::Error> {
        self.may_write()?;
        let namespace = &existing.namespace;
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(existing.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        self.written.set(self.owner_uid, namespace, None);
        match self.api(namespace).delete(&existing.name, &params).await {
            Ok(_) => {
                self.metrics.observe_write(CopyOperation::Delete);
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Leaves `existing` in place without Replika's marks, so nothing manages it any more.
    pub async fn release(&self, existing: &CopyRecord) -> Result<(), kube::Error> {
        self.may_write()?;
        let namespace = &existing.namespace;
        let patch = json!({
            "metadata": {
                "uid": existing.uid,
                "labels": { LABEL_CREATED_BY: null, LABEL_PART_OF: null },
                "annotations": { ANNOTATION_OWNER: null, ANNOTATION_OWNER_UID: null, ANNOTATION_CONTENT_HASH: null },
            }
        });
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        self.written.set(self.owner_uid, namespace, None);
        match self
            .api(namespace)
            .patch(&existing.name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// The API server's own message when there is one, else the client error.
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(owner_uid: &str, namespace: &str, version: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.into()),
            resource_version: Some(version.into()),
            annotations: Some([(ANNOTATION_OWNER_UID.to_string(), owner_uid.to_string())].into()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_write_refused_for_lost_leadership_is_a_refusal_whatever_its_message() {
        let refused = kube::Error::Service(Box::new(NotLeading));
        assert!(Outcome::from_error(&refused).is_refusal());
        assert!(Outcome::NotLeading.is_refusal());
        let other = kube::Error::Service("connection reset".into());
        assert!(!Outcome::from_error(&other).is_refusal());
        // A failure that merely says the same words is still a failure.
        assert!(!Outcome::Failed(NotLeading.to_string()).is_refusal());
    }

    #[test]
    fn only_an_invalid_status_about_immutability_is_an_immutable_rejection() {
        let status = |reason: &str, message: &str| {
            serde_json::from_value::<kube::core::Status>(serde_json::json!({
                "status": "Failure", "reason": reason, "message": message, "code": 422,
            }))
            .expect("a Status")
        };
        assert!(is_immutable_rejection(&status(
            "Invalid",
            "ConfigMap \"x\" is invalid: data: Forbidden: field is immutable when `immutable` is set"
        )));
        assert!(!is_immutable_rejection(&status(
            "Invalid",
            "data: Invalid value"
        )));
        assert!(!is_immutable_rejection(&status("Conflict", "immutable")));
    }

    #[test]
    fn a_copy_is_our_own_write_only_at_the_versions_we_wrote() {
        let written = WrittenVersions::default();
        written.set("uid-1", "team-a", Some("10".into()));
        assert!(written.is_own_write(&copy("uid-1", "team-a", "10")));
        assert!(!written.is_own_write(&copy("uid-1", "team-a", "11")));
        assert!(!written.is_own_write(&copy("uid-1", "team-b", "10")));
        assert!(!written.is_own_write(&copy("uid-2", "team-a", "10")));
    }

    #[test]
    fn the_echo_of_a_create_stays_ours_after_its_ownership_upgrade() {
        let written = WrittenVersions::default();
        written.set("uid-1", "team-a", Some("10".into()));
        written.upgraded("uid-1", "team-a", "10", Some("12".into()));
        assert!(written.is_own_write(&copy("uid-1", "team-a", "10")));
        assert!(written.is_own_write(&copy("uid-1", "team-a", "12")));
        // A later write of ours leaves only its own version ours.
        written.set("uid-1", "team-a", Some("15".into()));
        assert!(!written.is_own_write(&copy("uid-1", "team-a", "10")));
        assert!(written.is_own_write(&copy("uid-1", "team-a", "15")));
    }

    #[test]
    fn an_upgrade_of_a_version_we_no_longer_hold_is_not_recorded() {
        let written = WrittenVersions::default();
        written.set("uid-1", "team-a", Some("11".into()));
        written.upgraded("uid-1", "team-a", "10", Some("12".into()));
        assert!(!written.is_own_write(&copy("uid-1", "team-a", "12")));
        written.forget_owner("uid-1");
        assert!(!written.is_own_write(&copy("uid-1", "team-a", "11")));
    }
}
