//! The engine's cache of copies: for one copied `(kind, name)`, a compact record
//! of every same-named object in the cluster, by namespace — our copies and the
//! objects we must not touch.
//!
//! A record keeps only what the engine reads (identity, resource version,
//! deletion, Replika's marks, where a create's field-ownership entry sits), so
//! tens of thousands of copies cost a few hundred bytes each rather than a whole
//! `ObjectMeta` with its maps in a reflector store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;

use super::MANAGER;
use crate::domain::copy::CopyMarks;
use crate::domain::plan::Found;
use crate::domain::sync_steps::CopyFacts;
use crate::locks;

/// An object that may be, or collide with, a copy, as the metadata watch delivers it.
pub type CopyMeta = PartialObjectMeta<DynamicObject>;

/// What the engine knows of one object named like the copies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyRecord {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub resource_version: String,
    pub marks: CopyMarks,
    /// Deletion has begun (finalizers may still hold it).
    pub deleting: bool,
    /// Position of our `Update` entry among the managed fields: present on a
    /// copy created by POST whose field ownership was not upgraded yet.
    pub create_entry: Option<usize>,
}

impl CopyRecord {
    pub fn from_metadata(metadata: &ObjectMeta) -> Self {
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        let empty = Default::default();
        CopyRecord {
            name: text(&metadata.name),
            namespace: text(&metadata.namespace),
            uid: text(&metadata.uid),
            resource_version: text(&metadata.resource_version),
            marks: CopyMarks::read(
                metadata.labels.as_ref().unwrap_or(&empty),
                metadata.annotations.as_ref().unwrap_or(&empty),
            ),
            deleting: metadata.deletion_timestamp.is_some(),
            create_entry: create_entry_index(metadata),
        }
    }

    /// What the domain's planner needs to know of it.
    pub fn found(&self) -> Found<'_> {
        Found {
            namespace: &self.namespace,
            marks: &self.marks,
            deleting: self.deleting,
        }
    }

    /// What the domain's sync steps need to know of it.
    pub fn facts(&self) -> CopyFacts<'_> {
        CopyFacts {
            found: self.found(),
            resource_version: &self.resource_version,
            needs_ownership_upgrade: self.create_entry.is_some(),
        }
    }
}

/// Position of our `Update` entry among an object's managed fields.
pub fn create_entry_index(metadata: &ObjectMeta) -> Option<usize> {
    metadata.managed_fields.iter().flatten().position(|entry| {
        entry.manager.as_deref() == Some(MANAGER) && entry.operation.as_deref() == Some("Update")
    })
}

type Records = HashMap<String, Arc<CopyRecord>>;

/// The records of one copied `(kind, name)`, by namespace; cheap to clone and share.
#[derive(Clone, Default)]
pub struct CopyIndex(Arc<RwLock<Records>>);

impl CopyIndex {
    /// Every record, by namespace, as of now.
    pub fn snapshot(&self) -> Records {
        locks::read(&self.0).clone()
    }

    /// Every record, as of now.
    pub fn all(&self) -> Vec<Arc<CopyRecord>> {
        locks::read(&self.0).values().cloned().collect()
    }
}

/// Applies a watch's events to a [`CopyIndex`]. A relist is gathered aside and
/// replaces the records only once complete, so readers never see half a list.
pub struct CopyIndexWriter {
    index: CopyIndex,
    relisting: Option<Records>,
}

impl CopyIndexWriter {
    pub fn new(index: CopyIndex) -> Self {
        CopyIndexWriter {
            index,
            relisting: None,
        }
    }

    pub fn apply(&mut self, event: &Event<CopyMeta>) {
        let record = |object: &CopyMeta| Arc::new(CopyRecord::from_metadata(&object.metadata));
        match event {
            Event::Init => self.relisting = Some(Records::new()),
            Event::InitApply(object) => {
                let record = record(object);
                self.relisting
                    .get_or_insert_default()
                    .insert(record.namespace.clone(), record);
            }
            Event::InitDone => {
                *locks::write(&self.index.0) = self.relisting.take().unwrap_or_default()
            }
            Event::Apply(object) => {
                let record = record(object);
                locks::write(&self.index.0).insert(record.namespace.clone(), record);
            }
            Event::Delete(object) => {
                let namespace = object.metadata.namespace.as_deref().unwrap_or_default();
                locks::write(&self.index.0).remove(namespace);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
    use k8s_openapi::jiff::Timestamp;
    use kube::core::PartialObjectMetaExt;

    use super::*;
    use crate::api::{ANNOTATION_OWNER_UID, CREATED_BY_VALUE, LABEL_CREATED_BY};

    fn object(namespace: &str, version: &str) -> CopyMeta {
        ObjectMeta {
            name: Some("app-config".into()),
            namespace: Some(namespace.into()),
            uid: Some(format!("uid-{namespace}")),
            resource_version: Some(version.into()),
            ..ObjectMeta::default()
        }
        .into_response_partial()
    }

    fn namespaces(index: &CopyIndex) -> Vec<(String, String)> {
        let mut all: Vec<_> = index
            .all()
            .iter()
            .map(|r| (r.namespace.clone(), r.resource_version.clone()))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn a_record_keeps_identity_marks_deletion_and_the_create_entry() {
        let entry = |manager: &str, operation: &str| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            ..ManagedFieldsEntry::default()
        };
        let metadata = ObjectMeta {
            labels: Some([(LABEL_CREATED_BY.to_string(), CREATED_BY_VALUE.to_string())].into()),
            annotations: Some([(ANNOTATION_OWNER_UID.to_string(), "owner-1".to_string())].into()),
            deletion_timestamp: Some(Time(Timestamp::UNIX_EPOCH)),
            managed_fields: Some(vec![
                entry("kubectl", "Update"),
                entry(MANAGER, "Apply"),
                entry(MANAGER, "Update"),
            ]),
            ..object("team-a", "7").metadata
        };
        let record = CopyRecord::from_metadata(&metadata);
        assert_eq!(
            (
                record.name.as_str(),
                record.namespace.as_str(),
                record.uid.as_str(),
                record.resource_version.as_str()
            ),
            ("app-config", "team-a", "uid-team-a", "7")
        );
        assert!(record.marks.created_by_replika);
        assert_eq!(record.marks.owner_uid.as_deref(), Some("owner-1"));
        assert!(record.deleting);
        assert_eq!(record.create_entry, Some(2));
    }

    #[test]
    fn changes_apply_at_once_and_a_relist_replaces_everything_when_complete() {
        let index = CopyIndex::default();
        let mut writer = CopyIndexWriter::new(index.clone());
        writer.apply(&Event::Apply(object("team-a", "1")));
        writer.apply(&Event::Apply(object("team-b", "2")));
        writer.apply(&Event::Apply(object("team-a", "3")));
        writer.apply(&Event::Delete(object("team-b", "2")));
        assert_eq!(namespaces(&index), [("team-a".into(), "3".into())]);

        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(object("team-c", "9")));
        assert_eq!(
            namespaces(&index),
            [("team-a".into(), "3".into())],
            "a relist in progress"
        );
        writer.apply(&Event::InitDone);
        assert_eq!(namespaces(&index), [("team-c".into(), "9".into())]);
        assert_eq!(index.snapshot().len(), 1);
    }
}
