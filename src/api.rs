//! The `Replika` custom resource (`replika.prosimcorp.com/v1beta1`).
//!
//! Field names, requiredness and printer columns match the earlier Go
//! operator's CRD, so its manifests apply unchanged; every field added since
//! is optional. `replika crd` prints the CRD generated from these types.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The prefix of every label and annotation key Replika sets.
pub const REPLIKA_KEY_PREFIX: &str = "replika.prosimcorp.com/";
/// Label put on every copy; the earlier Go operator's value, kept for compatibility.
pub const LABEL_CREATED_BY: &str = "replika.prosimcorp.com/created-by";
/// Value of [`LABEL_CREATED_BY`].
pub const CREATED_BY_VALUE: &str = "replika-controller";
/// Label naming the owning Replika (name only, as the earlier Go operator did).
pub const LABEL_PART_OF: &str = "replika.prosimcorp.com/part-of";
/// Annotation naming the owning Replika as `namespace/name`.
pub const ANNOTATION_OWNER: &str = "replika.prosimcorp.com/owner";
/// Annotation holding the owning Replika's UID: names collide across time, UIDs do not.
pub const ANNOTATION_OWNER_UID: &str = "replika.prosimcorp.com/owner-uid";
/// Annotation holding a digest of the content written into the copy.
pub const ANNOTATION_CONTENT_HASH: &str = "replika.prosimcorp.com/content-hash";
/// Annotation on a Replika: the user who last admitted it, as JSON (set by the webhook).
pub const ANNOTATION_AUTHOR: &str = "replika.prosimcorp.com/author";
/// Annotation on a Replika: the operator's signature over its author and scope.
pub const ANNOTATION_AUTHOR_SIGNATURE: &str = "replika.prosimcorp.com/author-signature";
/// Finalizer that lets `policy.onReplikaDeleted` act before the Replika goes.
pub const FINALIZER: &str = "replika.prosimcorp.com/cleanup";
/// Finalizer of the earlier Go operator, taken over (replaced by [`FINALIZER`]).
pub const LEGACY_FINALIZER: &str = "replika.prosimcorp.com/finalizer";
/// Set by an update (`replika attest`) to ask the webhooks to sign the requesting
/// user as the Replika's author; the mutating webhook removes it again.
pub const ANNOTATION_ATTEST: &str = "replika.prosimcorp.com/attest";
/// Label on a namespace: [`REPLICATION_DISABLED`] refuses every copy, whatever
/// the Replika's rule (`matchAll`, selectors and names included).
pub const LABEL_REPLICATION: &str = "replika.prosimcorp.com/replication";
/// Value of [`LABEL_REPLICATION`] that refuses copies.
pub const REPLICATION_DISABLED: &str = "disabled";
/// Annotation on a namespace: the sources (`namespace/name`, globs allowed,
/// separated by commas or spaces) whose copies it accepts from Replikas that
/// set `target.namespaces.requireOptIn`.
pub const ANNOTATION_ACCEPT_FROM: &str = "replika.prosimcorp.com/accept-from";

/// Desired state of a Replika: one source object copied into a set of namespaces.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "replika.prosimcorp.com",
    version = "v1beta1",
    kind = "Replika",
    namespaced,
    status = "ReplikaStatus",
    category = "replikas",
    printcolumn = r#"{"name":"Ready", "type":"string", "jsonPath":".status.conditions[?(@.type==\"SourceSynced\")].status"}"#,
    printcolumn = r#"{"name":"Status", "type":"string", "jsonPath":".status.conditions[?(@.type==\"SourceSynced\")].reason"}"#,
    printcolumn = r#"{"name":"Desired", "type":"integer", "jsonPath":".status.targets.desired"}"#,
    printcolumn = r#"{"name":"Synced", "type":"integer", "jsonPath":".status.targets.synced"}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new(
    "!has(self.source) || !has(self.source.__namespace__) || !has(self.target.namespaces) || !has(self.target.namespaces.replicateIn) || !(self.source.__namespace__ in self.target.namespaces.replicateIn)"
).message("spec.target.namespaces.replicateIn must not name the source namespace"))]
#[serde(rename_all = "camelCase")]
pub struct ReplikaSpec {
    pub synchronization: SynchronizationSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,
    pub target: TargetSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
}

/// How often the copies are checked against the source, besides reacting to events.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SynchronizationSpec {
    /// Go-style duration such as `20s`, `1m30s` or `2h`: the periodic resync interval.
    pub time: String,
}

/// The object to copy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("self.kind != 'Namespace'").message("a Namespace cannot be replicated"))]
pub struct SourceSpec {
    /// API group of the source; empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub name: String,
    /// Namespace of the source; defaults to the Replika's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Where the copies go, under which name, and what they hold besides the source's content.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TargetSpec {
    /// Name of the copies; defaults to the source's name. Changing it removes
    /// the copies made under the previous name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<TargetNamespacesSpec>,
    /// Labels and annotations added to every copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TargetMetadataSpec>,
    /// Which keys of a Secret's or ConfigMap's data the copies hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<TargetDataSpec>,
}

/// The target namespace set; see the README for the exact rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetNamespacesSpec {
    /// Namespace names or glob patterns (`team-*`), used when `matchAll` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate_in: Option<Vec<String>>,
    /// Target every namespace, minus `excludeFrom`.
    pub match_all: bool,
    /// Namespace names or glob patterns never targeted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_from: Option<Vec<String>>,
    /// Only namespaces whose labels match this selector are targeted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Only namespaces that accept copies of this source, by naming it in their
    /// `replika.prosimcorp.com/accept-from` annotation, are targeted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_opt_in: Option<bool>,
}

/// Key filters for the data of a Secret or ConfigMap (`data`, `binaryData`, `stringData`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TargetDataSpec {
    /// Keys (or globs such as `tls.*`) copied; every key when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<String>>,
    /// Keys (or globs) never copied, even when included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<String>>,
}

/// Extra metadata put on every copy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TargetMetadataSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What Replika does in situations where users' expectations differ.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<ConflictPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_source_deleted: Option<SourceDeletedPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_replika_deleted: Option<ReplikaDeletedPolicy>,
}

/// What to do with a same-named object in a target namespace that Replika does not own.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// Leave it untouched and report a conflict.
    #[default]
    Refuse,
    /// Take it over and keep it in sync from now on.
    Adopt,
}

/// What happens to the copies when the source object is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceDeletedPolicy {
    /// Keep the last copies.
    #[default]
    Retain,
    /// Remove the copies.
    Delete,
}

/// What happens to the copies when the Replika is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplikaDeletedPolicy {
    /// Remove the copies (the earlier Go operator's behaviour).
    #[default]
    Delete,
    /// Leave the copies in place, no longer managed.
    Orphan,
}

impl ReplikaSpec {
    /// The policies in force, with defaults filled in.
    pub fn effective_policy(&self) -> EffectivePolicy {
        let policy = self.policy.clone().unwrap_or_default();
        EffectivePolicy {
            conflict: policy.conflict.unwrap_or_default(),
            on_source_deleted: policy.on_source_deleted.unwrap_or_default(),
            on_replika_deleted: policy.on_replika_deleted.unwrap_or_default(),
        }
    }
}

/// [`PolicySpec`] with every default applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectivePolicy {
    pub conflict: ConflictPolicy,
    pub on_source_deleted: SourceDeletedPolicy,
    pub on_replika_deleted: ReplikaDeletedPolicy,
}

/// Observed state of a Replika.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplikaStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `SourceSynced` (the earlier Go operator's condition) and `Ready`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<TargetCounts>,
    /// The first few namespaces that failed, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<TargetFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The kind and name the copies were last made as; when the spec changes
    /// either, the copies under this one are removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies: Option<CopiesIdentity>,
}

/// The kind and name of a Replika's copies.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CopiesIdentity {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

impl CopiesIdentity {
    /// The copies' kind.
    pub fn gvk(&self) -> kube::core::GroupVersionKind {
        let (group, version) = self
            .api_version
            .split_once('/')
            .unwrap_or(("", self.api_version.as_str()));
        kube::core::GroupVersionKind::gvk(group, version, &self.kind)
    }
}

/// How many target namespaces there are and how they fare.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetCounts {
    pub desired: u32,
    pub synced: u32,
    pub conflicts: u32,
    pub failed: u32,
}

/// One target namespace that is not in sync.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetFailure {
    pub namespace: String,
    pub reason: String,
    pub message: String,
}
