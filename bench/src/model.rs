//! The benchmark's shared model: the kinds the Replikas copy, the key naming
//! one object, and the names and constants every module agrees on. Depends on
//! no other module of the crate.

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde::Serialize;

/// Holds the sources and the Replikas.
pub const SOURCE_NAMESPACE: &str = "bench-source";
/// The one target of the warm-up Replika, which shows the operator is at work.
pub const WARMUP_NAMESPACE: &str = "bench-warmup";
/// Name of the warm-up Replika and of its source.
pub const WARMUP_NAME: &str = "bench-warmup";
/// Prefix of the floor client's objects (one per repetition) in every target namespace.
pub const FLOOR_PREFIX: &str = "bench-floor-";
/// Prefix of the timed Replikas and of their sources (one per repetition).
pub const TIMED_PREFIX: &str = "bench-timed-";
/// Prefix of every namespace and object the benchmark creates.
pub const NAMESPACE_PREFIX: &str = "bench-";
/// The data key whose value tells one version of a source from the next.
pub const REVISION_KEY: &str = "revision";
/// Revision of the sources and floor objects as created; see [`update_revision`].
pub const FIRST_REVISION: &str = "1";
/// Field manager of what the benchmark itself applies (FlowSchemas, RBAC,
/// dry-run Replikas).
pub const FIELD_MANAGER: &str = "replika-bench";

/// The kinds of object the Replikas copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    /// The kind of source `index` and of its copies.
    pub fn of_source(index: usize) -> Kind {
        if index.is_multiple_of(2) {
            Kind::ConfigMap
        } else {
            Kind::Secret
        }
    }

    /// The kind's name in the API (`spec.source.kind`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }
}

/// One object, by kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// The revision the `repetition`th update (from 0) writes: a new value each time.
pub fn update_revision(repetition: usize) -> String {
    (repetition + 2).to_string()
}

/// The floor client's object of repetition `repetition`.
pub fn floor_name(repetition: usize) -> String {
    format!("{FLOOR_PREFIX}{repetition}")
}

/// The timed Replika of repetition `repetition`, its source, and its copies' name.
pub fn timed_name(repetition: usize) -> String {
    format!("{TIMED_PREFIX}{repetition}")
}

/// The `index`th target namespace.
pub fn target_namespace(index: usize) -> String {
    format!("{NAMESPACE_PREFIX}{index:04}")
}

/// The name of source `index` and of its copies.
pub fn source_name(index: usize) -> String {
    format!("{NAMESPACE_PREFIX}src-{index:02}")
}

/// The name of Replika `index`.
pub fn replika_name(index: usize) -> String {
    format!("{NAMESPACE_PREFIX}{index:02}")
}

/// The object of `kind` named `name` in each of `namespaces`.
pub fn keys(kind: Kind, name: &str, namespaces: &[String]) -> Vec<ObjectKey> {
    namespaces
        .iter()
        .map(|namespace| ObjectKey::new(kind, namespace, name))
        .collect()
}

/// The Replika kind, served by whichever operator's CRD is installed.
pub fn replika_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("replika.prosimcorp.com", "v1beta1", "Replika"),
        "replikas",
    )
}

/// The Replikas of [`SOURCE_NAMESPACE`], where every benchmark Replika lives.
pub fn replikas(admin: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(admin.clone(), SOURCE_NAMESPACE, &replika_resource())
}
