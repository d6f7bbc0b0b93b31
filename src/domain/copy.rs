//! What a copy looks like: the source minus server-set state, plus ownership marks.
//!
//! Works on the source as JSON so that any kind, custom resources included, is
//! handled the same way.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::names::glob_matches;

use crate::api::{
    ANNOTATION_CONTENT_HASH, ANNOTATION_OWNER, ANNOTATION_OWNER_UID, CREATED_BY_VALUE,
    LABEL_CREATED_BY, LABEL_PART_OF, REPLIKA_KEY_PREFIX,
};

/// Label and annotation keys (or prefixes ending in `/`) that belong to the
/// source's own tooling and would make copies look managed by it.
const TRACKING_KEYS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "argocd.argoproj.io/",
    "kustomize.toolkit.fluxcd.io/",
    "helm.toolkit.fluxcd.io/",
    "meta.helm.sh/",
    REPLIKA_KEY_PREFIX,
];

/// The identity of the Replika that writes a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Who owns an existing object in a target namespace, judged from its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Written by this Replika.
    Ours,
    /// Written by another Replika (`namespace/name`), or by an earlier Replika of the same name.
    OtherReplika(String),
    /// Written by the earlier Go operator for a Replika of this name: its
    /// labels name the Replika but not its namespace or UID.
    Inherited,
    /// Written by an earlier Replika of the same namespace and name (UID as
    /// given), deleted since or being deleted.
    Predecessor(String),
    /// Not written by Replika at all.
    Unowned,
}

/// Why a source object can never be copied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UncopyableSource {
    #[error("service-account-token Secrets are bound to one ServiceAccount and are never copied")]
    ServiceAccountToken,
    #[error("the source is not a JSON object")]
    NotAnObject,
}

/// The copy of one source for one owner, computed once and stamped per namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct CopyTemplate {
    body: Value,
    content_hash: String,
}

/// What a Replika's spec says about its copies besides the source's content
/// (`spec.target.name`, `.metadata` and `.data`), with defaults applied.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CopySettings {
    /// The copies' name.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub keys: KeyFilter,
}

/// Which keys of a Secret's or ConfigMap's data are copied (`spec.target.data`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyFilter {
    /// Patterns of the keys copied; every key when `None`.
    pub include: Option<Vec<String>>,
    /// Patterns of the keys never copied.
    pub exclude: Vec<String>,
}

/// The fields of a Secret or ConfigMap that hold its keyed data.
const DATA_FIELDS: [&str; 3] = ["data", "binaryData", "stringData"];

impl KeyFilter {
    /// Whether the copies hold `key`.
    pub fn keeps(&self, key: &str) -> bool {
        let matches = |patterns: &[String]| patterns.iter().any(|p| glob_matches(p, key));
        self.include.as_deref().is_none_or(matches) && !matches(&self.exclude)
    }

    /// Removes the keys the filter drops from the data fields of `body`.
    fn apply(&self, body: &mut Map<String, Value>) {
        for field in DATA_FIELDS {
            if let Some(Value::Object(entries)) = body.get_mut(field) {
                entries.retain(|key, _| self.keeps(key));
            }
        }
    }
}

impl CopyTemplate {
    /// Builds the copy of `source` written by `owner`, shaped by `settings`.
    pub fn new(
        source: &Value,
        owner: &Owner,
        settings: &CopySettings,
    ) -> Result<Self, UncopyableSource> {
        let mut body = copy_template(source, owner, settings)?;
        let content_hash = content_hash(&body);
        body["metadata"]["annotations"][ANNOTATION_CONTENT_HASH] =
            Value::String(content_hash.clone());
        Ok(CopyTemplate { body, content_hash })
    }

    /// The copies' name.
    pub fn name(&self) -> &str {
        self.body["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// Digest of the copied content; the same for every namespace.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    /// Whether `object`, as read from `namespace`, already holds everything this
    /// template sets (fields others added, such as server defaults, aside), so
    /// applying it would change no content.
    pub fn is_held_by(&self, object: &Value, namespace: &str) -> bool {
        holds(object, &self.for_namespace(namespace))
    }

    /// The full body of the copy for `namespace`.
    pub fn for_namespace(&self, namespace: &str) -> Value {
        let mut body = self.body.clone();
        body["metadata"]["namespace"] = Value::String(namespace.to_string());
        body
    }
}

fn copy_template(
    source: &Value,
    owner: &Owner,
    settings: &CopySettings,
) -> Result<Value, UncopyableSource> {
    let object = source.as_object().ok_or(UncopyableSource::NotAnObject)?;
    if object.get("kind").and_then(Value::as_str) == Some("Secret")
        && object.get("type").and_then(Value::as_str) == Some("kubernetes.io/service-account-token")
    {
        return Err(UncopyableSource::ServiceAccountToken);
    }
    let source_meta = object.get("metadata").cloned().unwrap_or_default();
    let mut labels = copied_entries(&source_meta, "labels");
    let mut annotations = copied_entries(&source_meta, "annotations");
    labels.extend(
        settings
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone()))),
    );
    annotations.extend(
        settings
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone()))),
    );
    for (key, value) in [
        (LABEL_CREATED_BY, CREATED_BY_VALUE),
        (LABEL_PART_OF, owner.name.as_str()),
    ] {
        labels.insert(key.into(), Value::String(value.into()));
    }
    annotations.insert(
        ANNOTATION_OWNER.into(),
        Value::String(format!("{}/{}", owner.namespace, owner.name)),
    );
    annotations.insert(
        ANNOTATION_OWNER_UID.into(),
        Value::String(owner.uid.clone()),
    );

    let mut metadata = Map::new();
    metadata.insert("name".into(), Value::String(settings.name.clone()));
    metadata.insert("labels".into(), Value::Object(labels));
    metadata.insert("annotations".into(), Value::Object(annotations));

    let mut body: Map<String, Value> = object
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "metadata" | "status"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    body.insert("metadata".into(), Value::Object(metadata));
    settings.keys.apply(&mut body);
    Ok(Value::Object(body))
}

/// Labels or annotations of the source worth copying: all but tooling-tracking keys
/// and Helm's `managed-by` label, which would make Helm think it owns the copy.
fn copied_entries(metadata: &Value, field: &str) -> Map<String, Value> {
    metadata
        .get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(key, value)| {
            let tracking = TRACKING_KEYS.iter().any(|t| {
                if t.ends_with('/') {
                    key.starts_with(t)
                } else {
                    key == t
                }
            });
            let helm_managed =
                key.as_str() == "app.kubernetes.io/managed-by" && value.as_str() == Some("Helm");
            !tracking && !helm_managed
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether `object` holds `wanted`: every key of a wanted map with a held
/// value, every other value equal.
fn holds(object: &Value, wanted: &Value) -> bool {
    match (object, wanted) {
        (Value::Object(object), Value::Object(wanted)) => wanted
            .iter()
            .all(|(key, value)| object.get(key).is_some_and(|held| holds(held, value))),
        _ => object == wanted,
    }
}

/// SHA-256 over the canonical JSON of a copy (object keys sorted by serde_json's map).
fn content_hash(body: &Value) -> String {
    let canonical =
        serde_json::to_vec(body).expect("a JSON value has string keys and always serializes");
    let digest = ring::digest::digest(&ring::digest::SHA256, &canonical);
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The marks Replika leaves on a copy, read from its labels and annotations:
/// all the engine needs to know about an object in a target namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CopyMarks {
    /// Labelled as created by Replika (by this operator or the earlier Go operator).
    pub created_by_replika: bool,
    /// Name of the Replika it was made for (the `part-of` label the earlier Go operator also set).
    pub part_of: Option<String>,
    /// `namespace/name` of the Replika that wrote it.
    pub owner: Option<String>,
    pub owner_uid: Option<String>,
    /// Hash of the content Replika last wrote into it.
    pub content_hash: Option<String>,
}

impl CopyMarks {
    pub fn read(labels: &BTreeMap<String, String>, annotations: &BTreeMap<String, String>) -> Self {
        CopyMarks {
            created_by_replika: labels.get(LABEL_CREATED_BY).map(String::as_str)
                == Some(CREATED_BY_VALUE),
            part_of: labels.get(LABEL_PART_OF).cloned(),
            owner: annotations.get(ANNOTATION_OWNER).cloned(),
            owner_uid: annotations.get(ANNOTATION_OWNER_UID).cloned(),
            content_hash: annotations.get(ANNOTATION_CONTENT_HASH).cloned(),
        }
    }

    /// Who owns the object, as far as `owner` is concerned.
    pub fn ownership(&self, owner: &Owner) -> Ownership {
        if !self.created_by_replika {
            return Ownership::Unowned;
        }
        match &self.owner_uid {
            Some(uid) if *uid == owner.uid => Ownership::Ours,
            // Names are unique: a different UID under our name is an earlier Replika.
            Some(uid)
                if self.owner.as_deref()
                    == Some(format!("{}/{}", owner.namespace, owner.name).as_str()) =>
            {
                Ownership::Predecessor(uid.clone())
            }
            Some(_) => Ownership::OtherReplika(
                self.owner
                    .clone()
                    .unwrap_or_else(|| "an unknown Replika".into()),
            ),
            // Labelled by Replika but without an owner UID: written by the earlier Go operator.
            None if self.part_of.as_deref() == Some(owner.name.as_str()) => Ownership::Inherited,
            None => Ownership::Unowned,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn owner() -> Owner {
        Owner {
            namespace: "platform".into(),
            name: "creds".into(),
            uid: "uid-1".into(),
        }
    }

    /// The settings of a Replika that only names its targets.
    fn settings() -> CopySettings {
        CopySettings {
            name: "registry-creds".into(),
            ..Default::default()
        }
    }

    fn source() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/dockerconfigjson",
            "metadata": {
                "name": "registry-creds",
                "namespace": "platform",
                "uid": "abc",
                "resourceVersion": "42",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "managedFields": [{"manager": "kubectl"}],
                "ownerReferences": [{"kind": "ExternalSecret", "name": "x"}],
                "finalizers": ["keep"],
                "labels": {"app": "web", "app.kubernetes.io/managed-by": "Helm", "argocd.argoproj.io/instance": "x"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    "meta.helm.sh/release-name": "r",
                    "team": "payments"
                }
            },
            "data": {".dockerconfigjson": "e30="},
            "status": {"phase": "x"}
        })
    }

    #[test]
    fn copies_content_and_drops_server_state_and_tracking_keys() {
        let extra = settings();
        let template = CopyTemplate::new(&source(), &owner(), &extra).expect("copyable");
        let expected = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/dockerconfigjson",
            "metadata": {
                "name": "registry-creds",
                "namespace": "team-a",
                "labels": {
                    "app": "web",
                    "replika.prosimcorp.com/created-by": "replika-controller",
                    "replika.prosimcorp.com/part-of": "creds"
                },
                "annotations": {
                    "team": "payments",
                    "replika.prosimcorp.com/owner": "platform/creds",
                    "replika.prosimcorp.com/owner-uid": "uid-1",
                    "replika.prosimcorp.com/content-hash": template.content_hash()
                }
            },
            "data": {".dockerconfigjson": "e30="}
        });
        assert_eq!(template.for_namespace("team-a"), expected);
    }

    #[test]
    fn hash_follows_content_not_namespace() {
        let extra = settings();
        let a = CopyTemplate::new(&source(), &owner(), &extra).expect("copyable");
        assert_eq!(
            a.for_namespace("a")["metadata"]["annotations"][ANNOTATION_CONTENT_HASH],
            a.for_namespace("b")["metadata"]["annotations"][ANNOTATION_CONTENT_HASH]
        );
        let mut changed = source();
        changed["data"]["k"] = json!("dg==");
        let c = CopyTemplate::new(&changed, &owner(), &extra).expect("copyable");
        assert_ne!(a.content_hash(), c.content_hash());
    }

    #[test]
    fn extra_metadata_is_added() {
        let labels = BTreeMap::from([("tier".to_string(), "apps".to_string())]);
        let annotations = BTreeMap::from([("note".to_string(), "copied".to_string())]);
        let extra = CopySettings {
            labels,
            annotations,
            ..settings()
        };
        let copy = CopyTemplate::new(&source(), &owner(), &extra)
            .expect("copyable")
            .for_namespace("a");
        assert_eq!(copy["metadata"]["labels"]["tier"], "apps");
        assert_eq!(copy["metadata"]["annotations"]["note"], "copied");
    }

    #[test]
    fn copies_take_the_target_name() {
        let renamed = CopySettings {
            name: "pull-secret".into(),
            ..settings()
        };
        let copy = CopyTemplate::new(&source(), &owner(), &renamed)
            .expect("copyable")
            .for_namespace("a");
        assert_eq!(copy["metadata"]["name"], "pull-secret");
    }

    #[test]
    fn key_filters_keep_exactly_the_included_keys_minus_the_excluded() {
        let mut source = source();
        source["data"] = json!({"tls.crt": "Yw==", "tls.key": "aw==", "ca.crt": "Yw=="});
        source["binaryData"] = json!({"tls.bin": "Yg=="});
        let filtered = |include: Option<&[&str]>, exclude: &[&str]| {
            let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
            let settings = CopySettings {
                keys: KeyFilter {
                    include: include.map(strings),
                    exclude: strings(exclude),
                },
                ..settings()
            };
            let copy = CopyTemplate::new(&source, &owner(), &settings)
                .expect("copyable")
                .for_namespace("a");
            DATA_FIELDS
                .iter()
                .filter_map(|field| copy.get(*field).and_then(Value::as_object))
                .flat_map(|entries| entries.keys().cloned())
                .collect::<Vec<String>>()
        };
        assert_eq!(
            filtered(None, &[]),
            ["ca.crt", "tls.crt", "tls.key", "tls.bin"]
        );
        assert_eq!(
            filtered(Some(&["tls.*"]), &[]),
            ["tls.crt", "tls.key", "tls.bin"]
        );
        assert_eq!(
            filtered(Some(&["tls.*"]), &["*.key"]),
            ["tls.crt", "tls.bin"]
        );
        assert_eq!(filtered(None, &["tls.*"]), ["ca.crt"]);
        assert_eq!(filtered(Some(&["absent"]), &[]), Vec::<String>::new());
    }

    #[test]
    fn the_content_hash_follows_the_key_filter() {
        let all = CopyTemplate::new(&source(), &owner(), &settings()).expect("copyable");
        let none = CopySettings {
            keys: KeyFilter {
                include: None,
                exclude: vec!["*".into()],
            },
            ..settings()
        };
        let filtered = CopyTemplate::new(&source(), &owner(), &none).expect("copyable");
        assert_ne!(all.content_hash(), filtered.content_hash());
    }

    #[test]
    fn service_account_tokens_are_never_copied() {
        let mut token = source();
        token["type"] = json!("kubernetes.io/service-account-token");
        let extra = settings();
        assert_eq!(
            CopyTemplate::new(&token, &owner(), &extra),
            Err(UncopyableSource::ServiceAccountToken)
        );
    }

    #[test]
    fn a_copy_holds_the_template_whatever_others_added_but_not_when_content_differs() {
        let extra = settings();
        let template = CopyTemplate::new(&source(), &owner(), &extra).expect("a template");
        let mut copy = template.for_namespace("team-a");
        copy["metadata"]["uid"] = json!("copy-uid");
        copy["metadata"]["labels"]["added-by"] = json!("someone");
        assert!(template.is_held_by(&copy, "team-a"));
        assert!(!template.is_held_by(&copy, "team-b"), "another namespace");

        let mut edited = copy.clone();
        edited["data"][".dockerconfigjson"] = json!("ZWRpdGVk");
        assert!(!template.is_held_by(&edited, "team-a"), "a value edited");
        let mut removed = copy.clone();
        removed["metadata"]["annotations"]
            .as_object_mut()
            .expect("annotations")
            .remove(ANNOTATION_OWNER_UID);
        assert!(!template.is_held_by(&removed, "team-a"), "a mark removed");
    }

    #[test]
    fn ownership_is_decided_by_uid() {
        let labels = BTreeMap::from([(LABEL_CREATED_BY.to_string(), CREATED_BY_VALUE.to_string())]);
        let ours = BTreeMap::from([(ANNOTATION_OWNER_UID.to_string(), "uid-1".to_string())]);
        let theirs = BTreeMap::from([
            (ANNOTATION_OWNER_UID.to_string(), "uid-2".to_string()),
            (ANNOTATION_OWNER.to_string(), "other/creds".to_string()),
        ]);
        let ownership = |labels: &BTreeMap<String, String>,
                         annotations: &BTreeMap<String, String>| {
            CopyMarks::read(labels, annotations).ownership(&owner())
        };
        let none = BTreeMap::new();
        assert_eq!(ownership(&labels, &ours), Ownership::Ours);
        assert_eq!(
            ownership(&labels, &theirs),
            Ownership::OtherReplika("other/creds".into())
        );
        assert_eq!(ownership(&none, &ours), Ownership::Unowned);
        assert_eq!(ownership(&labels, &none), Ownership::Unowned);
    }

    #[test]
    fn the_earlier_go_operators_copies_are_inherited_by_the_replika_they_name() {
        let go_operator_labels = |part_of: &str| {
            BTreeMap::from([
                (LABEL_CREATED_BY.to_string(), CREATED_BY_VALUE.to_string()),
                (LABEL_PART_OF.to_string(), part_of.to_string()),
            ])
        };
        let ownership = |labels: &BTreeMap<String, String>,
                         annotations: &BTreeMap<String, String>| {
            CopyMarks::read(labels, annotations).ownership(&owner())
        };
        let none = BTreeMap::new();
        assert_eq!(
            ownership(&go_operator_labels("creds"), &none),
            Ownership::Inherited
        );
        assert_eq!(
            ownership(&go_operator_labels("other"), &none),
            Ownership::Unowned
        );
        // Once adopted (or made by us) the UID decides, whatever the label says.
        let theirs = BTreeMap::from([(ANNOTATION_OWNER_UID.to_string(), "uid-2".to_string())]);
        assert_eq!(
            ownership(&go_operator_labels("creds"), &theirs),
            Ownership::OtherReplika("an unknown Replika".into())
        );
        let predecessor = BTreeMap::from([
            (ANNOTATION_OWNER_UID.to_string(), "uid-0".to_string()),
            (ANNOTATION_OWNER.to_string(), "platform/creds".to_string()),
        ]);
        assert_eq!(
            ownership(&go_operator_labels("creds"), &predecessor),
            Ownership::Predecessor("uid-0".into())
        );
        let part_of_only = BTreeMap::from([(LABEL_PART_OF.to_string(), "creds".to_string())]);
        assert_eq!(ownership(&part_of_only, &none), Ownership::Unowned);
    }

    #[test]
    fn marks_keep_the_content_hash_and_nothing_but_replikas_keys() {
        let annotations = BTreeMap::from([
            (ANNOTATION_CONTENT_HASH.to_string(), "abc".to_string()),
            ("team".to_string(), "payments".to_string()),
        ]);
        let marks = CopyMarks::read(&BTreeMap::new(), &annotations);
        assert_eq!(
            marks,
            CopyMarks {
                content_hash: Some("abc".into()),
                ..CopyMarks::default()
            }
        );
    }
}
