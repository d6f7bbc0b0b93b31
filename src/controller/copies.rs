//! Writes copies into target namespaces, and removes or releases them.
//!
//! [`CopyWriter::sync`] brings one copy in line as a loop: the domain's
//! [`next_step`] names the next request from what is known of the copy, the
//! writer makes it and records what the answer taught, and asks again.
//! A copy that does not exist yet is created with POST, which fails rather than
//! touch an object that appeared meanwhile; every later write is a forced
//! server-side apply carrying the copy's UID as a precondition, so it only ever
//! lands on the object Replika created. A create records our field ownership as
//! an `Update`, under which server-side apply would never remove a key; so the
//! first apply to a created copy is preceded by a patch that turns that entry
//! into an `Apply` one (what kubectl does when it upgrades client-side-applied
//! objects), and from then on a key removed from the source is removed from the
//! copy. A copy that never changes costs its create alone.

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
};
use kube::{Client, Resource};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::MANAGER;
use super::copy_index::{CopyMeta, CopyRecord};
use super::outcome::{NotLeading, Outcome, is_immutable_rejection};
use super::written::{WriteInFlight, WrittenVersions};
use crate::api::ConflictPolicy;
use crate::api::{
    ANNOTATION_CONTENT_HASH, ANNOTATION_OWNER, ANNOTATION_OWNER_UID, LABEL_CREATED_BY,
    LABEL_PART_OF,
};
use crate::domain::copy::{CopyTemplate, Owner};
use crate::domain::plan::Scope;
use crate::domain::sync_steps::{Progress, SyncStep, next_step};
use crate::leader::Leadership;
use crate::metrics::{CopyOperation, Metrics};

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

/// One write's turn: its slot among the writes in flight, and its copy
/// marked as being written (so that the write's echo is known as ours).
struct WriteTurn<'a> {
    _slot: Option<SemaphorePermit<'a>>,
    _copy: WriteInFlight<'a>,
}

/// Writes for the copies of one Replika in one kind.
pub struct CopyWriter<'a> {
    /// Checked before every write.
    pub leadership: &'a Leadership,
    pub client: &'a Client,
    pub resource: &'a ApiResource,
    pub owner_uid: &'a str,
    pub written: &'a WrittenVersions,
    pub metrics: &'a Metrics,
    /// One permit per request in flight, shared with every other writer.
    pub slots: &'a Semaphore,
}

impl CopyWriter<'_> {
    /// Whole objects, for reading a copy's content.
    fn api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, self.resource)
    }

    /// Writes whose answer is read for its metadata alone: a copy's content
    /// is never parsed back, which saves the operator the CPU and memory of
    /// building it once more per write.
    fn metadata_api(&self, namespace: &str) -> Api<CopyMeta> {
        Api::namespaced_with(self.client.clone(), namespace, self.resource)
    }

    /// Waits for a free slot among the writes in flight, then refuses the
    /// write if this process may no longer act as the leader. The slot is
    /// held, and the copy in `namespace` marked as being written, until the
    /// returned turn is dropped: after the write has recorded its answer.
    async fn may_write(&self, namespace: &str) -> Result<WriteTurn<'_>, kube::Error> {
        // The semaphore is never closed; without a permit the write goes ahead.
        let slot = self.slots.acquire().await.ok();
        if self.leadership.is_valid() {
            Ok(WriteTurn {
                _slot: slot,
                _copy: self.written.write_started(self.owner_uid, namespace),
            })
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
                            current.resource_version =
                                upgraded.as_deref().unwrap_or_default().into();
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
            self.written
                .set(self.owner_uid, namespace, Some(&now.resource_version));
        }
        Ok(Some(now))
    }

    /// Turns our `Update` field-ownership entry of `copy`, at `index` among its
    /// managed fields, into an `Apply` one. The `test` operations make it fail
    /// rather than edit a copy that changed since `copy.resource_version` (so
    /// an edit made meanwhile is not taken for ours) or an entry that moved.
    /// When `copy` was at our latest write, the upgrade's version is recorded
    /// as ours too. Returns the copy's new resource version.
    async fn upgrade_ownership(
        &self,
        copy: &CopyRecord,
        index: u32,
    ) -> Result<Option<String>, kube::Error> {
        let _turn = self.may_write(&copy.namespace).await?;
        let entry = format!("/metadata/managedFields/{index}");
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/uid", "value": copy.uid.to_string()},
            {"op": "test", "path": "/metadata/resourceVersion", "value": &*copy.resource_version},
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
            .metadata_api(&copy.namespace)
            .patch(&copy.name, &params, &Patch::<()>::Json(patch))
            .await?;
        let upgraded = patched.metadata.resource_version;
        self.written.upgraded(
            self.owner_uid,
            &copy.namespace,
            &copy.resource_version,
            upgraded.as_deref(),
        );
        Ok(upgraded)
    }

    /// Creates the copy in `namespace`, failing if an object is already there.
    async fn create(&self, namespace: &str, template: &CopyTemplate) -> Result<(), kube::Error> {
        let _turn = self.may_write(namespace).await?;
        let body = serde_json::to_vec(&template.for_namespace(namespace))
            .map_err(kube::Error::SerdeError)?;
        let params = PostParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        let url = DynamicObject::url_path(self.resource, Some(namespace));
        let request = kube::core::Request::new(url)
            .create(&params, body)
            .map_err(kube::Error::BuildRequest)?;
        let created: CopyMeta = self.client.request(request).await?;
        self.written.set(
            self.owner_uid,
            namespace,
            created.metadata.resource_version.as_deref(),
        );
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
        let namespace = &existing.namespace;
        let _turn = self.may_write(namespace).await?;
        let mut body = template.for_namespace(namespace);
        // The UID makes the apply fail instead of landing on a same-named newcomer.
        body["metadata"]["uid"] = Value::String(existing.uid.to_string());
        let params = PatchParams::apply(MANAGER).force();
        let applied = self
            .metadata_api(namespace)
            .patch(&existing.name, &params, &Patch::Apply(&body))
            .await?;
        let version = applied.metadata.resource_version;
        let changed = version.as_deref() != Some(&*existing.resource_version);
        self.written
            .set(self.owner_uid, namespace, version.as_deref());
        Ok(changed)
    }

    /// Deletes `existing`, only if it is still the object we saw.
    pub async fn delete(&self, existing: &CopyRecord) -> Result<(), kube::Error> {
        let namespace = &existing.namespace;
        let _turn = self.may_write(namespace).await?;
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(existing.uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        self.written.set(self.owner_uid, namespace, None);
        match self
            .metadata_api(namespace)
            .delete(&existing.name, &params)
            .await
        {
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
        let namespace = &existing.namespace;
        let _turn = self.may_write(namespace).await?;
        let patch = json!({
            "metadata": {
                "uid": existing.uid.to_string(),
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
            .metadata_api(namespace)
            .patch(&existing.name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }
}
