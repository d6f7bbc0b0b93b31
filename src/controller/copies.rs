//! Writes copies into target namespaces, and removes or releases them.
//!
//! A copy that does not exist yet is created with POST, which fails rather than
//! touch an object that appeared meanwhile; every later write is a forced
//! server-side apply carrying the copy's UID as a precondition, so it only ever
//! lands on the object Replika created. A create records our field ownership as
//! an `Update`, under which server-side apply would never remove a key; so the
//! next pass turns that entry into an `Apply` one (what kubectl does when it
//! upgrades client-side-applied objects), and from then on a key removed from
//! the source is removed from every copy.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::MANAGER;
use super::watches::CopyMeta;
use crate::api::{
    ANNOTATION_CONTENT_HASH, ANNOTATION_OWNER, ANNOTATION_OWNER_UID, CREATED_BY_VALUE,
    LABEL_CREATED_BY, LABEL_PART_OF,
};
use crate::domain::copy::CopyTemplate;
use crate::leader::Leadership;
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
}

impl Outcome {
    /// Whether the namespace holds an up-to-date copy after the pass.
    pub fn is_synced(&self) -> bool {
        matches!(
            self,
            Outcome::InSync | Outcome::Created | Outcome::Updated | Outcome::Replaced
        )
    }
}

/// Resource versions of copies as we last wrote them, by (Replika UID, namespace).
/// A copy whose resource version moved on was changed by someone else and is re-applied.
#[derive(Default)]
pub struct WrittenVersions(Mutex<HashMap<(String, String), String>>);

impl WrittenVersions {
    fn get(&self, owner_uid: &str, namespace: &str) -> Option<String> {
        self.lock()
            .get(&(owner_uid.to_string(), namespace.to_string()))
            .cloned()
    }

    fn set(&self, owner_uid: &str, namespace: &str, resource_version: Option<String>) {
        let key = (owner_uid.to_string(), namespace.to_string());
        match resource_version {
            Some(version) => self.lock().insert(key, version),
            None => self.lock().remove(&key),
        };
    }

    /// Whether `copy` is exactly as the engine last wrote it (by owner and namespace).
    pub fn is_own_write(&self, copy: &CopyMeta) -> bool {
        let (Some(owner_uid), Some(namespace), Some(version)) = (
            copy.annotations().get(ANNOTATION_OWNER_UID),
            copy.metadata.namespace.as_deref(),
            copy.metadata.resource_version.as_deref(),
        ) else {
            return false;
        };
        self.get(owner_uid, namespace).as_deref() == Some(version)
    }

    /// Drops everything remembered for one Replika.
    pub fn forget_owner(&self, owner_uid: &str) {
        self.lock().retain(|(uid, _), _| uid != owner_uid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

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

    /// Brings `existing`, a copy we own, in line with `template`, writing only what differs.
    pub async fn sync_owned(&self, existing: &CopyMeta, template: &CopyTemplate) -> Outcome {
        if !self.leadership.is_valid() {
            return Outcome::Failed(NotLeading.to_string());
        }
        let namespace = existing.namespace().unwrap_or_default();
        let mut upgraded = false;
        if let Some(index) = create_entry_index(existing) {
            match self.upgrade_ownership(existing, index).await {
                Ok(version) => {
                    self.written.set(self.owner_uid, &namespace, version);
                    upgraded = true;
                }
                Err(error) => return Outcome::Failed(describe(&error)),
            }
        }
        let hash_matches = existing
            .annotations()
            .get(ANNOTATION_CONTENT_HASH)
            .map(String::as_str)
            == Some(template.content_hash());
        let untouched =
            upgraded || self.written.get(self.owner_uid, &namespace) == existing.resource_version();
        if hash_matches && untouched {
            Outcome::InSync
        } else {
            self.update(existing, template).await
        }
    }

    /// Turns our `Update` field-ownership entry at `index` into an `Apply` one.
    /// The `test` operations make it fail rather than edit an entry that moved.
    async fn upgrade_ownership(
        &self,
        existing: &CopyMeta,
        index: usize,
    ) -> Result<Option<String>, kube::Error> {
        let entry = format!("/metadata/managedFields/{index}");
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/uid", "value": existing.uid()},
            {"op": "test", "path": format!("{entry}/manager"), "value": MANAGER},
            {"op": "test", "path": format!("{entry}/operation"), "value": "Update"},
            {"op": "replace", "path": format!("{entry}/operation"), "value": "Apply"},
        ]))
        .map_err(kube::Error::SerdeError)?;
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        let namespace = existing.namespace().unwrap_or_default();
        let patched = self
            .api(&namespace)
            .patch(&existing.name_any(), &params, &Patch::<()>::Json(patch))
            .await?;
        Ok(patched.resource_version())
    }

    /// Creates the copy in `namespace`; an object already there is reported as a conflict.
    pub async fn create(&self, namespace: &str, template: &CopyTemplate) -> Outcome {
        if !self.leadership.is_valid() {
            return Outcome::Failed(NotLeading.to_string());
        }
        let body = template.for_namespace(namespace);
        let object: DynamicObject = match serde_json::from_value(body) {
            Ok(object) => object,
            Err(error) => return Outcome::Failed(format!("cannot build the copy: {error}")),
        };
        let params = PostParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        match self.api(namespace).create(&params, &object).await {
            Ok(created) => {
                self.written
                    .set(self.owner_uid, namespace, created.resource_version());
                self.metrics.observe_write(CopyOperation::Create);
                Outcome::Created
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                self.sync_existing(namespace, &object.name_any(), template)
                    .await
            }
            Err(error) => Outcome::Failed(describe(&error)),
        }
    }

    /// The object a create found in the way: our own copy (the cache had not
    /// seen it yet) is brought in line; anyone else's is a conflict.
    async fn sync_existing(&self, namespace: &str, name: &str, template: &CopyTemplate) -> Outcome {
        let existing = match self.api(namespace).get_metadata_opt(name).await {
            Ok(Some(existing)) => existing,
            // Gone again already: the next pass creates it.
            Ok(None) => return Outcome::Failed("the copy was deleted while it was created".into()),
            Err(error) => return Outcome::Failed(describe(&error)),
        };
        let ours = existing.labels().get(LABEL_CREATED_BY).map(String::as_str)
            == Some(CREATED_BY_VALUE)
            && existing
                .annotations()
                .get(ANNOTATION_OWNER_UID)
                .map(String::as_str)
                == Some(self.owner_uid);
        if ours {
            // Boxed: syncing may replace the copy, which creates it again.
            Box::pin(self.sync_owned(&existing, template)).await
        } else {
            Outcome::Conflict("an object with this name was created by someone else".into())
        }
    }

    /// Applies `template` over `existing` (ours, or one being adopted), replacing it
    /// when it is immutable and its content changed.
    pub async fn update(&self, existing: &CopyMeta, template: &CopyTemplate) -> Outcome {
        if !self.leadership.is_valid() {
            return Outcome::Failed(NotLeading.to_string());
        }
        let namespace = existing.namespace().unwrap_or_default();
        let uid = existing.uid().unwrap_or_default();
        let mut body = template.for_namespace(&namespace);
        // The UID makes the apply fail instead of landing on a same-named newcomer.
        body["metadata"]["uid"] = Value::String(uid.clone());
        let params = PatchParams::apply(MANAGER).force();
        match self
            .api(&namespace)
            .patch(&existing.name_any(), &params, &Patch::Apply(&body))
            .await
        {
            Ok(applied) => {
                self.written
                    .set(self.owner_uid, &namespace, applied.resource_version());
                self.metrics.observe_write(CopyOperation::Update);
                Outcome::Updated
            }
            Err(kube::Error::Api(status))
                if status.is_invalid() && status.message.contains("immutable") =>
            {
                self.replace(existing, template).await
            }
            Err(error) => Outcome::Failed(describe(&error)),
        }
    }

    async fn replace(&self, existing: &CopyMeta, template: &CopyTemplate) -> Outcome {
        let namespace = existing.namespace().unwrap_or_default();
        match self.delete(existing).await {
            Ok(()) => match self.create(&namespace, template).await {
                Outcome::Created => {
                    self.metrics.observe_write(CopyOperation::Replace);
                    Outcome::Replaced
                }
                other => other,
            },
            Err(error) => Outcome::Failed(describe(&error)),
        }
    }

    /// Deletes `existing`, only if it is still the object we saw.
    pub async fn delete(&self, existing: &CopyMeta) -> Result<(), kube::Error> {
        self.may_write()?;
        let namespace = existing.namespace().unwrap_or_default();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: existing.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        self.written.set(self.owner_uid, &namespace, None);
        match self
            .api(&namespace)
            .delete(&existing.name_any(), &params)
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
    pub async fn release(&self, existing: &CopyMeta) -> Result<(), kube::Error> {
        self.may_write()?;
        let namespace = existing.namespace().unwrap_or_default();
        let patch = json!({
            "metadata": {
                "uid": existing.uid(),
                "labels": { LABEL_CREATED_BY: null, LABEL_PART_OF: null },
                "annotations": { ANNOTATION_OWNER: null, ANNOTATION_OWNER_UID: null, ANNOTATION_CONTENT_HASH: null },
            }
        });
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        self.written.set(self.owner_uid, &namespace, None);
        match self
            .api(&namespace)
            .patch(&existing.name_any(), &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// Position of our `Update` entry among the copy's managed fields: present on a
/// copy created by POST whose ownership was not upgraded yet.
fn create_entry_index(existing: &CopyMeta) -> Option<usize> {
    existing
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .position(|entry| {
            entry.manager.as_deref() == Some(MANAGER)
                && entry.operation.as_deref() == Some("Update")
        })
}

/// The API server's own message when there is one, else the client error.
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}
