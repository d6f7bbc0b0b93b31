//! The engine's cache of copies: for one copied `(kind, name)`, a compact record
//! of every same-named object in the cluster, by namespace — our copies and the
//! objects we must not touch.
//!
//! A record keeps only what the engine reads (identity, resource version,
//! deletion, Replika's marks, where a create's field-ownership entry sits), so
//! tens of thousands of copies cost a few hundred bytes each rather than a whole
//! `ObjectMeta` with its maps in a reflector store. What repeats is shared: the
//! name by every record of an index, the marks by every record of an index that
//! carries the same ones (all in-sync copies of a Replika), the namespace by
//! every index and written version naming it ([`shared_namespace`]); a UUID is
//! kept as its 16 bytes and a resource version inline ([`Version`]).

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt::{self, Write};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex, RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;

use super::MANAGER;
use crate::domain::copy::CopyMarks;
use crate::domain::plan::Found;
use crate::domain::sync_steps::{CopyFacts, Version};
use crate::locks;

/// An object that may be, or collide with, a copy: the metadata of what the
/// copy watch delivers.
pub type CopyMeta = PartialObjectMeta<DynamicObject>;

/// What the engine knows of one object named like the copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyRecord {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub uid: Uid,
    pub resource_version: Version,
    pub marks: Arc<CopyMarks>,
    /// Deletion has begun (finalizers may still hold it).
    pub deleting: bool,
    /// Position of our `Update` entry among the managed fields: present on a
    /// copy created by POST whose field ownership was not upgraded yet.
    pub create_entry: Option<u32>,
}

impl CopyRecord {
    /// The record of `metadata`, sharing only its namespace.
    pub fn from_metadata(metadata: &ObjectMeta) -> Self {
        Self::read(metadata, |name| name.into(), Arc::new)
    }

    /// The record of `metadata`, its name and marks shared by `name` and `marks`.
    fn read(
        metadata: &ObjectMeta,
        name: impl FnOnce(&str) -> Arc<str>,
        marks: impl FnOnce(CopyMarks) -> Arc<CopyMarks>,
    ) -> Self {
        fn text(value: &Option<String>) -> &str {
            value.as_deref().unwrap_or_default()
        }
        let empty = Default::default();
        CopyRecord {
            name: name(text(&metadata.name)),
            namespace: shared_namespace(text(&metadata.namespace)),
            uid: Uid::from(text(&metadata.uid)),
            resource_version: Version::from(text(&metadata.resource_version)),
            marks: marks(CopyMarks::read(
                metadata.labels.as_ref().unwrap_or(&empty),
                metadata.annotations.as_ref().unwrap_or(&empty),
            )),
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

/// Position of our `Update` entry among an object's managed fields (an object
/// of at most 1.5 MiB holds far fewer than `u32::MAX` entries).
pub fn create_entry_index(metadata: &ObjectMeta) -> Option<u32> {
    metadata
        .managed_fields
        .iter()
        .flatten()
        .position(|entry| {
            entry.manager.as_deref() == Some(MANAGER)
                && entry.operation.as_deref() == Some("Update")
        })
        .and_then(|index| u32::try_from(index).ok())
}

/// An object's UID: a UUID in the API server's lowercase form kept as its 16
/// bytes, any other text as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uid {
    /// The bytes of a UUID written in lowercase with its four hyphens.
    Uuid([u8; 16]),
    /// Any other UID, as the API server gave it.
    Other(Box<str>),
}

/// Where the hyphens of a UUID's text sit.
const UUID_HYPHENS: [usize; 4] = [8, 13, 18, 23];

impl From<&str> for Uid {
    fn from(text: &str) -> Self {
        parse_uuid(text).map_or_else(|| Uid::Other(text.into()), Uid::Uuid)
    }
}

/// The bytes of `text` if it is a UUID written as `Uid`'s `Display` writes it back.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let chars = text.as_bytes();
    if chars.len() != 36 || UUID_HYPHENS.iter().any(|&at| chars[at] != b'-') {
        return None;
    }
    let mut digits = chars
        .iter()
        .enumerate()
        .filter(|(at, _)| !UUID_HYPHENS.contains(at))
        .map(|(_, &digit)| match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            _ => None,
        });
    let mut uuid = [0; 16];
    for byte in &mut uuid {
        *byte = (digits.next()?? << 4) | digits.next()??;
    }
    Some(uuid)
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uid::Uuid(bytes) => bytes.iter().enumerate().try_for_each(|(at, byte)| {
                if matches!(at, 4 | 6 | 8 | 10) {
                    f.write_char('-')?;
                }
                write!(f, "{byte:02x}")
            }),
            Uid::Other(text) => f.write_str(text),
        }
    }
}

/// Shares equal values: one allocation for each distinct value, however many
/// records hold it. Values nobody else holds any more are dropped whenever the
/// pool has doubled since it last looked, so it holds at most about twice the
/// values in use.
struct Interner<T: ?Sized> {
    values: HashSet<Arc<T>>,
    /// The size at which the pool next drops the values no longer in use.
    prune_at: usize,
}

/// The smallest size at which a pool looks for values no longer in use.
const MIN_PRUNE_AT: usize = 64;

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            values: HashSet::new(),
            prune_at: MIN_PRUNE_AT,
        }
    }
}

impl<T: ?Sized + Eq + Hash> Interner<T> {
    /// The shared value equal to `value`, made from it if there is none yet.
    fn intern<V: Borrow<T> + Into<Arc<T>>>(&mut self, value: V) -> Arc<T> {
        if let Some(shared) = self.values.get(value.borrow()) {
            return Arc::clone(shared);
        }
        if self.values.len() >= self.prune_at {
            // Held by the pool alone: no one can be handed it but by the pool.
            self.values.retain(|shared| Arc::strong_count(shared) > 1);
            self.prune_at = MIN_PRUNE_AT.max(2 * self.values.len());
            self.values.shrink_to(self.prune_at);
        }
        let shared = value.into();
        self.values.insert(Arc::clone(&shared));
        shared
    }
}

/// The namespaces of every index's records and of the written versions.
static NAMESPACES: LazyLock<Mutex<Interner<str>>> = LazyLock::new(Mutex::default);

/// The one shared copy of the namespace `name`, process-wide.
pub fn shared_namespace(name: &str) -> Arc<str> {
    locks::lock(&NAMESPACES).intern(name)
}

/// A record in its index, found by its namespace (so the namespace is not kept twice).
#[derive(Clone)]
struct ByNamespace(Arc<CopyRecord>);

impl Borrow<str> for ByNamespace {
    fn borrow(&self) -> &str {
        &self.0.namespace
    }
}

impl PartialEq for ByNamespace {
    fn eq(&self, other: &Self) -> bool {
        self.0.namespace == other.0.namespace
    }
}

impl Eq for ByNamespace {}

impl Hash for ByNamespace {
    /// As the namespace's `str`, which [`Borrow`] requires.
    fn hash<H: Hasher>(&self, state: &mut H) {
        (*self.0.namespace).hash(state);
    }
}

type Records = HashSet<ByNamespace>;

/// The records of one copied `(kind, name)`, by namespace; cheap to clone and share.
#[derive(Clone, Default)]
pub struct CopyIndex(Arc<RwLock<Records>>);

impl CopyIndex {
    /// The record of the object in `namespace`, as of now.
    pub fn get(&self, namespace: &str) -> Option<Arc<CopyRecord>> {
        locks::read(&self.0)
            .get(namespace)
            .map(|record| Arc::clone(&record.0))
    }

    /// Every record, as of now.
    pub fn all(&self) -> Vec<Arc<CopyRecord>> {
        locks::read(&self.0)
            .iter()
            .map(|record| Arc::clone(&record.0))
            .collect()
    }
}

/// Applies a watch's events to a [`CopyIndex`]. A relist is gathered aside and
/// replaces the records only once complete, so readers never see half a list.
pub struct CopyIndexWriter {
    index: CopyIndex,
    relisting: Option<Records>,
    /// The records' name (one for the whole index).
    names: Interner<str>,
    marks: Interner<CopyMarks>,
}

impl CopyIndexWriter {
    pub fn new(index: CopyIndex) -> Self {
        CopyIndexWriter {
            index,
            relisting: None,
            names: Interner::default(),
            marks: Interner::default(),
        }
    }

    pub fn apply(&mut self, event: &Event<CopyMeta>) {
        let (names, marks) = (&mut self.names, &mut self.marks);
        let mut record = |object: &CopyMeta| {
            ByNamespace(Arc::new(CopyRecord::read(
                &object.metadata,
                |name| names.intern(name),
                |read| marks.intern(read),
            )))
        };
        match event {
            Event::Init => self.relisting = Some(Records::new()),
            Event::InitApply(object) => {
                let record = record(object);
                self.relisting.get_or_insert_default().replace(record);
            }
            Event::InitDone => {
                *locks::write(&self.index.0) = self.relisting.take().unwrap_or_default()
            }
            Event::Apply(object) => {
                let record = record(object);
                locks::write(&self.index.0).replace(record);
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
    use crate::api::{
        ANNOTATION_CONTENT_HASH, ANNOTATION_OWNER_UID, CREATED_BY_VALUE, LABEL_CREATED_BY,
    };

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
            .map(|r| (r.namespace.to_string(), r.resource_version.to_string()))
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
                &*record.name,
                &*record.namespace,
                record.uid.to_string().as_str(),
                &*record.resource_version
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
        assert_eq!(
            index.get("team-c").map(|r| r.resource_version.to_string()),
            Some("9".into())
        );
        assert!(index.get("team-a").is_none());
    }

    #[test]
    fn records_of_one_index_share_their_name_marks_and_namespace() {
        let marked = |namespace: &str, hash: &str| {
            let mut object = object(namespace, "1");
            object.metadata.annotations =
                Some([(ANNOTATION_CONTENT_HASH.to_string(), hash.to_string())].into());
            object
        };
        let index = CopyIndex::default();
        let mut writer = CopyIndexWriter::new(index.clone());
        for (namespace, hash) in [("team-a", "h1"), ("team-b", "h1"), ("team-c", "h2")] {
            writer.apply(&Event::Apply(marked(namespace, hash)));
        }
        let [a, b, c] =
            ["team-a", "team-b", "team-c"].map(|namespace| index.get(namespace).expect("a record"));
        assert!(Arc::ptr_eq(&a.name, &c.name));
        assert!(Arc::ptr_eq(&a.marks, &b.marks));
        assert_eq!(c.marks.content_hash.as_deref(), Some("h2"));
        assert!(Arc::ptr_eq(&a.namespace, &shared_namespace("team-a")));
    }

    #[test]
    fn a_pool_shares_equal_values_and_drops_those_no_one_holds() {
        let mut pool = Interner::<str>::default();
        let kept = pool.intern("kept");
        assert!(Arc::ptr_eq(&kept, &pool.intern("kept")));
        drop(pool.intern("dropped"));
        let held: Vec<_> = (0..4 * MIN_PRUNE_AT)
            .map(|n| pool.intern(format!("ns-{n}").as_str()))
            .collect();
        assert!(!pool.values.contains("dropped"));
        assert!(pool.values.contains("kept"));
        assert!(held.iter().all(|value| pool.values.contains(&**value)));
        drop(held);
        for n in 0..4 * MIN_PRUNE_AT {
            pool.intern(format!("other-{n}").as_str());
        }
        assert!(!pool.values.contains("ns-0"), "values no longer held go");
        assert!(pool.values.len() <= MIN_PRUNE_AT, "and do not pile up");
    }

    #[test]
    fn a_uid_keeps_its_text_and_a_uuid_takes_16_bytes() {
        let uuid = "0f8e2c1a-9b3d-4e5f-a6b7-c8d9e0f1a2b3";
        assert!(matches!(Uid::from(uuid), Uid::Uuid(_)));
        for text in [
            uuid,
            "0F8E2C1A-9B3D-4E5F-A6B7-C8D9E0F1A2B3",
            "0f8e2c1a9b3d4e5fa6b7c8d9e0f1a2b3",
            "0f8e2c1a-9b3d-4e5f-a6b7-c8d9e0f1a2bg",
            "0f8e2c1a+9b3d-4e5f-a6b7-c8d9e0f1a2b3",
            "uid-team-a",
            "",
        ] {
            assert_eq!(Uid::from(text).to_string(), text);
        }
        assert_ne!(
            Uid::from(uuid),
            Uid::from("0f8e2c1a-9b3d-4e5f-a6b7-c8d9e0f1a2b4")
        );
    }
}
