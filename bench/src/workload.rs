//! The objects of the scenarios — namespaces, unrelated Secrets, sources,
//! Replikas and the floor client's objects — by name and content, and a
//! bounded-parallel way to create many of them.
//!
//! Replikas alternate between the two kinds an operator of this field copies
//! most: even-numbered ones copy a ConfigMap, odd-numbered ones a Secret, so the
//! operator has to watch Secrets (its copies) among the 50 000 unrelated ones.
//! The timed Replikas (one per repetition of "Replika created", apart from
//! the numbered ones and removed after their repetition) copy a ConfigMap
//! each, as the floor client writes.
//!
//! Replikas are built as plain JSON with only the fields of the earlier Go
//! operator's API (`matchAll` plus exact `excludeFrom` names, no globs or
//! selectors), so any operator serving `replika.prosimcorp.com/v1beta1` can be
//! driven by the same scenarios.

use std::collections::BTreeMap;

use anyhow::Result;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{DynamicObject, ObjectMeta};
use serde_json::{Value, json};

use crate::model::{
    Kind, NAMESPACE_PREFIX, ObjectKey, REVISION_KEY, SOURCE_NAMESPACE, WARMUP_NAME,
    WARMUP_NAMESPACE, keys, replika_name, replika_resource, source_name, target_namespace,
    timed_name,
};
use crate::progress::Progress;

/// Data keys of a source besides its revision, and the length of each value:
/// about 1 KiB of configuration, a typical shared ConfigMap or Secret.
const PAYLOAD_KEYS: usize = 8;
const PAYLOAD_VALUE_LEN: usize = 128;
/// Bytes of data in each unrelated Secret.
const SECRET_BYTES: usize = 64;

/// The shape of the scenarios.
#[derive(Clone, Debug)]
pub struct Workload {
    pub scale: usize,
    pub replikas: usize,
    pub unrelated_secrets: usize,
    /// Namespaces created one at a time in each repetition of the namespace scenario.
    pub new_namespaces: usize,
    /// Repetitions of each timed scenario.
    pub repeats: usize,
    pub sync_time: String,
    /// Namespaces that existed before the benchmark: no Replika targets them.
    pub preexisting: Vec<String>,
}

impl Workload {
    /// The namespaces every Replika targets.
    pub fn target_namespaces(&self) -> Vec<String> {
        (0..self.scale).map(target_namespace).collect()
    }

    /// The namespaces created one at a time in repetition `repetition` of
    /// the namespace scenario.
    pub fn new_namespaces(&self, repetition: usize) -> Vec<String> {
        (0..self.new_namespaces)
            .map(|index| format!("{NAMESPACE_PREFIX}new-{repetition}-{index:03}"))
            .collect()
    }

    /// Copies the numbered Replikas manage once every scenario has run: one
    /// per target and new namespace, and the warm-up's.
    pub fn copies_managed(&self) -> u64 {
        let namespaces = self.scale + self.repeats * self.new_namespaces;
        (self.replikas * namespaces + 1) as u64
    }

    /// The copy of every source that `namespace` should hold.
    pub fn copies_in(&self, namespace: &str) -> Vec<ObjectKey> {
        (0..self.replikas)
            .map(|index| ObjectKey::new(Kind::of_source(index), namespace, &source_name(index)))
            .collect()
    }

    /// The copies of source `index` in every target namespace.
    pub fn copies_of(&self, index: usize) -> Vec<ObjectKey> {
        keys(
            Kind::of_source(index),
            &source_name(index),
            &self.target_namespaces(),
        )
    }

    /// The copies of the timed Replika of `repetition` in every target namespace.
    pub fn timed_copies(&self, repetition: usize) -> Vec<ObjectKey> {
        keys(
            Kind::ConfigMap,
            &timed_name(repetition),
            &self.target_namespaces(),
        )
    }

    /// A Replika copying source `index` into every benchmark namespace.
    pub fn replika(&self, index: usize) -> DynamicObject {
        self.everywhere(
            &replika_name(index),
            Kind::of_source(index),
            &source_name(index),
        )
    }

    /// The timed Replika of `repetition`: its own ConfigMap source, copied
    /// into every benchmark namespace.
    pub fn timed_replika(&self, repetition: usize) -> DynamicObject {
        let name = timed_name(repetition);
        self.everywhere(&name, Kind::ConfigMap, &name)
    }

    fn everywhere(&self, name: &str, kind: Kind, source: &str) -> DynamicObject {
        let mut excluded = self.preexisting.clone();
        excluded.extend([SOURCE_NAMESPACE.to_owned(), WARMUP_NAMESPACE.to_owned()]);
        replika_object(
            name,
            kind,
            source,
            json!({"replicateIn": [], "matchAll": true, "excludeFrom": excluded}),
            &self.sync_time,
        )
    }

    /// The Replika whose only target is [`WARMUP_NAMESPACE`].
    pub fn warmup_replika(&self) -> DynamicObject {
        replika_object(
            WARMUP_NAME,
            Kind::ConfigMap,
            WARMUP_NAME,
            json!({"replicateIn": [WARMUP_NAMESPACE], "matchAll": false}),
            &self.sync_time,
        )
    }

    /// A Replika for the admission scenario: never stored (it is applied with
    /// dry run), copying source 0 into the warm-up namespace.
    pub fn admission_replika(&self, name: &str) -> DynamicObject {
        replika_object(
            name,
            Kind::ConfigMap,
            &source_name(0),
            json!({"replicateIn": [WARMUP_NAMESPACE], "matchAll": false}),
            &self.sync_time,
        )
    }
}

fn replika_object(
    name: &str,
    kind: Kind,
    source: &str,
    namespaces: Value,
    sync_time: &str,
) -> DynamicObject {
    let mut replika = DynamicObject::new(name, &replika_resource()).within(SOURCE_NAMESPACE);
    replika.data = json!({
        "spec": {
            "synchronization": {"time": sync_time},
            "source": {
                "group": "",
                "version": "v1",
                "kind": kind.name(),
                "name": source,
                "namespace": SOURCE_NAMESPACE,
            },
            "target": {"namespaces": namespaces},
        }
    });
    replika
}

/// A plain namespace.
pub fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: named(name, None),
        ..Namespace::default()
    }
}

/// The data of a source (and of the floor's objects) at `revision`.
pub fn payload(revision: &str) -> BTreeMap<String, String> {
    let mut data: BTreeMap<String, String> = (0..PAYLOAD_KEYS)
        .map(|key| {
            let filler = char::from(b'a' + (key % 26) as u8);
            (
                format!("setting-{key}"),
                filler.to_string().repeat(PAYLOAD_VALUE_LEN),
            )
        })
        .collect();
    data.insert(REVISION_KEY.into(), revision.into());
    data
}

/// The source ConfigMap `name` at `revision`.
pub fn config_map_source(name: &str, revision: &str) -> ConfigMap {
    ConfigMap {
        metadata: named(name, Some(SOURCE_NAMESPACE)),
        data: Some(payload(revision)),
        ..ConfigMap::default()
    }
}

/// The source Secret `name` at `revision`: the same data as a ConfigMap source.
pub fn secret_source(name: &str, revision: &str) -> Secret {
    Secret {
        metadata: named(name, Some(SOURCE_NAMESPACE)),
        string_data: Some(payload(revision)),
        ..Secret::default()
    }
}

/// The floor client's object `name` in `namespace`: the source's data, with
/// labels and annotations the size of the ownership marks an operator adds
/// to a copy.
pub fn floor_object(name: &str, namespace: &str, revision: &str) -> ConfigMap {
    let mut metadata = named(name, Some(namespace));
    metadata.labels = Some(BTreeMap::from([
        (
            "replika-bench/created-by".into(),
            "replika-bench-floor".into(),
        ),
        ("replika-bench/part-of".into(), name.into()),
    ]));
    metadata.annotations = Some(BTreeMap::from([
        (
            "replika-bench/owner".into(),
            format!("{SOURCE_NAMESPACE}/{name}"),
        ),
        (
            "replika-bench/owner-uid".into(),
            "00000000-0000-4000-8000-000000000000".into(),
        ),
        ("replika-bench/content-hash".into(), "0".repeat(64)),
    ]));
    ConfigMap {
        metadata,
        data: Some(payload(revision)),
        ..ConfigMap::default()
    }
}

/// Unrelated Secret `index`, in `namespace`: no Replika references it.
pub fn unrelated_secret(index: usize, namespace: &str) -> Secret {
    let bytes = (0..SECRET_BYTES).map(|byte| (byte + index) as u8).collect();
    Secret {
        metadata: named(&format!("unrelated-{index:06}"), Some(namespace)),
        data: Some(BTreeMap::from([("token".into(), ByteString(bytes))])),
        ..Secret::default()
    }
}

fn named(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        ..ObjectMeta::default()
    }
}

/// Runs `task` on every item, `parallelism` at a time, counting on a
/// progress line; stops at the first error.
pub async fn run_parallel<T, F, Fut>(
    label: &str,
    items: Vec<T>,
    parallelism: usize,
    task: F,
) -> Result<()>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut progress = Progress::new(label, items.len());
    stream::iter(items)
        .map(task)
        .buffer_unordered(parallelism.max(1))
        .try_for_each(|()| {
            progress.inc();
            futures::future::ready(Ok(()))
        })
        .await?;
    progress.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload {
            scale: 3,
            replikas: 2,
            unrelated_secrets: 10,
            new_namespaces: 2,
            repeats: 2,
            sync_time: "20s".into(),
            preexisting: vec!["default".into(), "kube-system".into()],
        }
    }

    #[test]
    fn names_are_stable() {
        let workload = workload();
        assert_eq!(
            workload.target_namespaces(),
            ["bench-0000", "bench-0001", "bench-0002"]
        );
        assert_eq!(
            workload.new_namespaces(1),
            ["bench-new-1-000", "bench-new-1-001"]
        );
        assert_eq!(workload.copies_managed(), 2 * (3 + 2 * 2) + 1);
        assert_eq!(
            workload.timed_copies(1)[2],
            ObjectKey::new(Kind::ConfigMap, "bench-0002", "bench-timed-1")
        );
        let timed = workload.timed_replika(1);
        assert_eq!(timed.data["spec"]["source"]["name"], "bench-timed-1");
        assert_eq!(timed.data["spec"]["target"]["namespaces"]["matchAll"], true);
        assert_eq!(
            workload.copies_in("bench-new-000"),
            [
                ObjectKey::new(Kind::ConfigMap, "bench-new-000", "bench-src-00"),
                ObjectKey::new(Kind::Secret, "bench-new-000", "bench-src-01"),
            ]
        );
    }

    #[test]
    fn replikas_use_only_the_earlier_operators_api_and_alternate_kinds() {
        let workload = workload();
        let replika = workload.replika(1);
        assert_eq!(replika.metadata.name.as_deref(), Some("bench-01"));
        let spec = &replika.data["spec"];
        assert_eq!(spec["source"]["name"], "bench-src-01");
        assert_eq!(spec["source"]["kind"], "Secret");
        assert_eq!(
            workload.replika(0).data["spec"]["source"]["kind"],
            "ConfigMap"
        );
        assert_eq!(spec["target"]["namespaces"]["matchAll"], true);
        assert_eq!(
            spec["target"]["namespaces"]["excludeFrom"],
            json!(["default", "kube-system", SOURCE_NAMESPACE, WARMUP_NAMESPACE])
        );
    }

    #[test]
    fn floor_objects_carry_the_source_data() {
        let floor = floor_object("bench-floor-0", "bench-0001", "2");
        assert_eq!(floor.data, config_map_source("bench-src-00", "2").data);
        assert_eq!(floor.data.as_ref().expect("data")[REVISION_KEY], "2");
    }
}
