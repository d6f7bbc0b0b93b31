//! What the admission webhooks decide, independent of HTTP.
//!
//! Validation runs every rule and denies with all the problems it found;
//! checks that need the cluster (discovery, authorization, other Replikas) go
//! through [`ClusterView`], so the decisions are unit-tested with fixtures.
//! Mutation only adds fields that are absent, as an RFC 6902 patch; lists the
//! user wrote are never rewritten, so GitOps tools see no drift.

use std::collections::BTreeSet;

use k8s_openapi::api::authentication::v1::UserInfo;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::{Value, json};

use kube::ResourceExt;

use crate::api::{
    ANNOTATION_ATTEST, ANNOTATION_AUTHOR, ANNOTATION_AUTHOR_SIGNATURE, Replika, ReplikaSpec,
};
use crate::authorization::{attestation, author};
use crate::controller::kinds::{KindError, ServedKind, display};
use crate::domain::access::{Access, author_checks};
use crate::domain::attestation::{Signer, name_to_sign};
use crate::domain::names::is_glob;
use crate::domain::validation::{ReplikaPlan, validate};

/// What validation needs to know about the cluster.
pub trait ClusterView {
    /// How the API server serves a kind.
    fn kind(
        &self,
        gvk: &kube::core::GroupVersionKind,
    ) -> impl Future<Output = Result<ServedKind, KindError>> + Send;
    /// Which of `checks` the user may not do (SubjectAccessReview). An error means "could not tell".
    fn denied_to_user(
        &self,
        user: &UserInfo,
        checks: &[Access],
    ) -> impl Future<Output = Result<Vec<Access>, String>> + Send;
    /// Which of `checks` the operator itself may not do.
    fn denied_to_operator(
        &self,
        checks: &[Access],
    ) -> impl Future<Output = Result<Vec<Access>, String>> + Send;
    /// Every Replika the cluster has, as last seen.
    fn replikas(&self) -> Vec<Replika>;
    /// The key authors are signed with.
    fn signer(&self) -> &Signer;
    /// Whether `user` is the operator itself (never recorded as an author).
    fn is_operator(&self, user: &UserInfo) -> bool;
}

/// The verbs the operator needs on a replicated kind, matching `deploy/` RBAC.
pub const OPERATOR_VERBS: [&str; 6] = ["get", "list", "watch", "create", "patch", "delete"];

/// Decides a Replika CREATE or UPDATE.
pub async fn validate_request<C: ClusterView>(
    request: &AdmissionRequest<DynamicObject>,
    cluster: &C,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return response;
    }
    let replika = match parse_replika(request.object.as_ref()) {
        Ok(replika) => replika,
        Err(problem) => return response.deny(problem),
    };
    // An update that leaves the spec and its author alone (finalizers, labels,
    // the operator's own bookkeeping) changes nothing that was checked when the
    // spec was admitted. A new author (`replika attest`) is checked like a new spec.
    if let Some(Ok(old)) = request
        .old_object
        .as_ref()
        .map(|old| parse_replika(Some(old)))
        && old.spec == replika.spec
        && attestation(old.annotations()) == attestation(replika.annotations())
        && !replika.annotations().contains_key(ANNOTATION_ATTEST)
    {
        return response;
    }
    let namespace = request.namespace.clone().unwrap_or_default();
    let plan = match validate(&replika.spec, &namespace) {
        Ok(plan) => plan,
        Err(problems) => return response.deny(denial(&problems)),
    };
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    match cluster.kind(&plan.source.gvk).await {
        Ok(kind) if !kind.namespaced => problems.push(format!(
            "spec.source.kind: {} is cluster-scoped; only namespaced kinds can be replicated",
            display(&plan.source.gvk)
        )),
        Ok(kind) => {
            problems.extend(check_author(request, &plan, &kind, cluster).await);
            warnings.extend(check_operator(&plan, &kind, cluster).await);
        }
        Err(KindError::NotServed(_)) => warnings.push(format!(
            "{} is not served by this cluster yet; the Replika is admitted and starts replicating once it is (its author's rights are checked then)",
            display(&plan.source.gvk)
        )),
        Err(error) => problems.push(format!("could not look up spec.source.kind: {error}")),
    }
    warnings.extend(overlaps(&replika, &plan, &cluster.replikas()));
    warnings.extend(plan.consent_warning());
    if replika.annotations().contains_key(ANNOTATION_ATTEST) {
        // The mutating webhook answers every request it sees and removes this.
        problems.push(format!(
            "metadata.annotations: {ANNOTATION_ATTEST} was not answered: Replika's mutating webhook did not see this request"
        ));
    }
    if !problems.is_empty() {
        return response.deny(denial(&problems));
    }
    let mut response = response;
    response.warnings = (!warnings.is_empty()).then_some(warnings);
    response
}

/// Fills absent fields of a Replika (`spec.source.namespace`, the policy
/// defaults) and records its author: the requesting user, signed with `signer`.
///
/// Whoever creates the Replika or changes its spec becomes its author. An
/// update that leaves the spec alone keeps a valid attestation as it was and
/// never signs one as a side effect (a label added by a GitOps controller or
/// the operator's finalizer patch vouches for nothing): re-attestation is
/// explicit, an update that sets [`ANNOTATION_ATTEST`] (`replika attest`),
/// which signs the requesting user (the validating webhook reviews their
/// access first) and is itself never stored. An attestation the request
/// itself carries is never trusted.
pub fn mutate_request(
    request: &AdmissionRequest<DynamicObject>,
    signer: &Signer,
    from_operator: bool,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let Some(object) = &request.object else {
        return response;
    };
    let Ok(object) = serde_json::to_value(object) else {
        return response.deny("the object cannot be read as JSON");
    };
    // An update that keeps the spec (labels, finalizers, `replika attest`)
    // leaves it as stored, defaults or not: a Replika stored before the
    // webhooks existed must not have its spec changed, and re-validated, by a
    // metadata write.
    let replika = serde_json::from_value::<Replika>(object.clone()).ok();
    let unchanged = request
        .old_object
        .as_ref()
        .and_then(|old| parse_replika(Some(old)).ok())
        .filter(|old| replika.as_ref().is_some_and(|new| new.spec == old.spec));
    let mut operations = if unchanged.is_some() {
        Vec::new()
    } else {
        defaults(&object, request.namespace.as_deref())
    };
    if matches!(request.operation, Operation::Create | Operation::Update) {
        operations.extend(attest(
            request,
            &object,
            replika.as_ref(),
            unchanged.as_ref(),
            signer,
            from_operator,
        ));
    }
    if operations.is_empty() {
        return response;
    }
    match serde_json::from_value::<json_patch::Patch>(Value::Array(operations)) {
        Ok(patch) => response.clone().with_patch(patch).unwrap_or_else(|error| {
            response.deny(format!("could not encode the defaults: {error}"))
        }),
        Err(error) => response.deny(format!("could not build the defaults: {error}")),
    }
}

/// Patch operations adding the absent `spec.source.namespace` and policy fields.
fn defaults(object: &Value, namespace: Option<&str>) -> Vec<Value> {
    let spec = &object["spec"];
    let mut operations = Vec::new();
    if spec["source"].is_object()
        && spec["source"].get("namespace").is_none_or(Value::is_null)
        && let Some(namespace) = namespace
    {
        operations.push(json!({"op": "add", "path": "/spec/source/namespace", "value": namespace}));
    }
    let defaults = [
        ("conflict", "Refuse"),
        ("onSourceDeleted", "Retain"),
        ("onReplikaDeleted", "Delete"),
    ];
    if spec.is_object() && spec.get("policy").is_none_or(Value::is_null) {
        let policy: serde_json::Map<String, Value> = defaults
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        operations.push(json!({"op": "add", "path": "/spec/policy", "value": policy}));
    } else if spec["policy"].is_object() {
        for (field, default) in defaults {
            if spec["policy"].get(field).is_none_or(Value::is_null) {
                operations.push(
                    json!({"op": "add", "path": format!("/spec/policy/{field}"), "value": default}),
                );
            }
        }
    }
    operations
}

/// Patch operations setting the author annotations; none for a spec that does
/// not validate (the validating webhook denies it).
fn attest(
    request: &AdmissionRequest<DynamicObject>,
    object: &Value,
    replika: Option<&Replika>,
    unchanged: Option<&Replika>,
    signer: &Signer,
    from_operator: bool,
) -> Vec<Value> {
    let namespace = request.namespace.clone().unwrap_or_default();
    let Some(replika) = replika else {
        return Vec::new();
    };
    let Ok(plan) = validate(&replika.spec, &namespace) else {
        return Vec::new();
    };
    let requested = replika.annotations().contains_key(ANNOTATION_ATTEST);
    // The request for a re-attestation is answered here and never stored.
    let answered =
        requested.then(|| json!({"op": "remove", "path": annotation_path(ANNOTATION_ATTEST)}));
    let kept = unchanged.and_then(|old| {
        let attestation = attestation(old.annotations())?;
        signer
            .verify_stored(
                &namespace,
                &request.name,
                replika.metadata.generate_name.as_deref(),
                &plan,
                Some(&attestation),
            )
            .ok()
            .map(|_| attestation)
    });
    let stamp = match kept {
        Some(attestation) if !requested => attestation,
        // The operator's own writes never make it an author, and a write that
        // keeps the spec signs nobody unless it asks to.
        _ if unchanged.is_some() && (from_operator || !requested) => {
            return answered.into_iter().collect();
        }
        _ => signer.attest(
            &namespace,
            &name_to_sign(&request.name, replika.metadata.generate_name.as_deref()),
            &plan,
            &author(&request.user_info),
        ),
    };
    let values = [
        (ANNOTATION_AUTHOR, stamp.author),
        (ANNOTATION_AUTHOR_SIGNATURE, stamp.signature),
    ];
    if object["metadata"]["annotations"].is_object() {
        values
            .into_iter()
            .map(|(key, value)| json!({"op": "add", "path": annotation_path(key), "value": value}))
            .chain(answered)
            .collect()
    } else {
        let annotations: serde_json::Map<String, Value> = values
            .into_iter()
            .map(|(key, value)| (key.to_string(), json!(value)))
            .collect();
        vec![json!({"op": "add", "path": "/metadata/annotations", "value": annotations})]
    }
}

/// The JSON pointer (RFC 6901) of an annotation.
fn annotation_path(key: &str) -> String {
    format!(
        "/metadata/annotations/{}",
        key.replace('~', "~0").replace('/', "~1")
    )
}

fn parse_replika(object: Option<&DynamicObject>) -> Result<Replika, String> {
    let object = object.ok_or("the request carries no object")?;
    let value = serde_json::to_value(object)
        .map_err(|e| format!("the object cannot be read as JSON: {e}"))?;
    serde_json::from_value(value).map_err(|e| format!("the object is not a valid Replika: {e}"))
}

fn denial(problems: &[String]) -> String {
    let numbered: Vec<String> = problems
        .iter()
        .enumerate()
        .map(|(i, p)| format!("({}) {p}", i + 1))
        .collect();
    format!(
        "Replika rejected, {} problem(s): {}",
        problems.len(),
        numbered.join("; ")
    )
}

/// The author must be able to read the source and to write the kind wherever copies go;
/// otherwise a Replika would launder access they do not have.
async fn check_author<C: ClusterView>(
    request: &AdmissionRequest<DynamicObject>,
    plan: &ReplikaPlan,
    kind: &ServedKind,
    cluster: &C,
) -> Vec<String> {
    let checks = author_checks(plan, &kind.resource.group, &kind.resource.plural);
    let user = &request.user_info;
    let who = user
        .username
        .clone()
        .unwrap_or_else(|| "the requesting user".into());
    match cluster.denied_to_user(user, &checks).await {
        Ok(denied) => denied
            .iter()
            .map(|access| format!("{who} may not {access}"))
            .collect(),
        Err(error) => vec![format!("could not check the permissions of {who}: {error}")],
    }
}

async fn check_operator<C: ClusterView>(
    plan: &ReplikaPlan,
    kind: &ServedKind,
    cluster: &C,
) -> Vec<String> {
    let checks: Vec<Access> = OPERATOR_VERBS
        .into_iter()
        .map(|verb| Access {
            verb,
            group: kind.resource.group.clone(),
            resource: kind.resource.plural.clone(),
            namespace: None,
            name: None,
        })
        .collect();
    let kind_name = display(&plan.source.gvk);
    match cluster.denied_to_operator(&checks).await {
        Ok(denied) if denied.is_empty() => Vec::new(),
        Ok(denied) => {
            let verbs: Vec<&str> = denied.iter().map(|a| a.verb).collect();
            vec![format!(
                "the operator's RBAC does not allow {} on {kind_name}; the Replika will report Forbidden until an additive ClusterRole grants it (see the README)",
                verbs.join(", ")
            )]
        }
        Err(error) => vec![format!(
            "could not check the operator's own permissions on {kind_name}: {error}"
        )],
    }
}

/// Warnings for other Replikas that write objects of the same kind and name.
fn overlaps(replika: &Replika, plan: &ReplikaPlan, others: &[Replika]) -> Vec<String> {
    let me = (
        replika.metadata.namespace.as_deref(),
        replika.metadata.name.as_deref(),
    );
    others
        .iter()
        .filter(|other| (other.metadata.namespace.as_deref(), other.metadata.name.as_deref()) != me)
        .filter_map(|other| {
            let namespace = other.metadata.namespace.as_deref().unwrap_or_default();
            let theirs = validate(&other.spec, namespace).ok()?;
            (theirs.writes_same_objects(plan) && may_overlap(&other.spec, &replika.spec)).then(|| {
                format!(
                    "Replika {namespace}/{} also writes {} {:?}; where both target a namespace, the first owner keeps the copy and the other reports a Conflict",
                    other.metadata.name.as_deref().unwrap_or_default(),
                    plan.source.gvk.kind,
                    plan.copy.name
                )
            })
        })
        .collect()
}

/// Whether two target rules might share a namespace (conservatively true for broad rules).
fn may_overlap(a: &ReplikaSpec, b: &ReplikaSpec) -> bool {
    let listed = |spec: &ReplikaSpec| -> Option<BTreeSet<String>> {
        let namespaces = spec.target.namespaces.clone().unwrap_or_default();
        let list = namespaces.replicate_in.unwrap_or_default();
        let broad = namespaces.match_all
            || namespaces.selector.is_some()
            || list.iter().any(|p| is_glob(p));
        if broad {
            None
        } else if list.is_empty() {
            Some(BTreeSet::from([
                crate::domain::targets::DEFAULT_NAMESPACE.to_string()
            ]))
        } else {
            Some(list.into_iter().collect())
        }
    };
    match (listed(a), listed(b)) {
        (Some(a), Some(b)) => !a.is_disjoint(&b),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use kube::api::ApiResource;
    use kube::core::GroupVersionKind;
    use kube::core::admission::AdmissionReview;

    use super::*;

    /// A cluster described by fixtures.
    struct Fixture {
        kinds: HashMap<String, ServedKind>,
        user_may_not: Vec<(&'static str, Option<&'static str>)>,
        operator_may_not: Vec<&'static str>,
        replikas: Vec<Replika>,
        signer: Signer,
    }

    impl Default for Fixture {
        fn default() -> Self {
            Fixture {
                kinds: HashMap::new(),
                user_may_not: Vec::new(),
                operator_may_not: Vec::new(),
                replikas: Vec::new(),
                signer: Signer::new(b"the operator's key"),
            }
        }
    }

    impl Fixture {
        fn with_kind(
            mut self,
            group: &str,
            version: &str,
            kind: &str,
            plural: &str,
            namespaced: bool,
        ) -> Self {
            let gvk = GroupVersionKind::gvk(group, version, kind);
            let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
            self.kinds.insert(
                kind.to_string(),
                ServedKind {
                    resource,
                    namespaced,
                },
            );
            self
        }

        fn standard() -> Self {
            Fixture::default()
                .with_kind("", "v1", "Secret", "secrets", true)
                .with_kind("", "v1", "Node", "nodes", false)
        }
    }

    impl ClusterView for Fixture {
        async fn kind(&self, gvk: &GroupVersionKind) -> Result<ServedKind, KindError> {
            self.kinds
                .get(&gvk.kind)
                .cloned()
                .ok_or_else(|| KindError::NotServed(gvk.kind.clone()))
        }

        async fn denied_to_user(
            &self,
            _user: &UserInfo,
            checks: &[Access],
        ) -> Result<Vec<Access>, String> {
            Ok(checks
                .iter()
                .filter(|a| {
                    self.user_may_not
                        .contains(&(a.verb, a.namespace.as_deref()))
                })
                .cloned()
                .collect())
        }

        async fn denied_to_operator(&self, checks: &[Access]) -> Result<Vec<Access>, String> {
            Ok(checks
                .iter()
                .filter(|a| self.operator_may_not.contains(&a.verb))
                .cloned()
                .collect())
        }

        fn replikas(&self) -> Vec<Replika> {
            self.replikas.clone()
        }

        fn signer(&self) -> &Signer {
            &self.signer
        }

        fn is_operator(&self, user: &UserInfo) -> bool {
            user.username.as_deref()
                == Some("system:serviceaccount:replika:replika-controller-manager")
        }
    }

    fn replika_json(kind: &str, time: &str, namespaces: Value) -> Value {
        json!({
            "apiVersion": "replika.prosimcorp.com/v1beta1",
            "kind": "Replika",
            "metadata": {"name": "creds", "namespace": "platform"},
            "spec": {
                "synchronization": {"time": time},
                "source": {"group": "", "version": "v1", "kind": kind, "name": "registry"},
                "target": {"namespaces": namespaces}
            }
        })
    }

    fn request(
        operation: &str,
        object: Value,
        old: Option<Value>,
    ) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "42",
                "kind": {"group": "replika.prosimcorp.com", "version": "v1beta1", "kind": "Replika"},
                "resource": {"group": "replika.prosimcorp.com", "version": "v1beta1", "resource": "replikas"},
                "name": "creds", "namespace": "platform", "operation": operation,
                "userInfo": {"username": "alice", "groups": ["devs"]},
                "object": object, "oldObject": old
            }
        }))
        .expect("a valid AdmissionReview fixture");
        review.try_into().expect("the fixture has a request")
    }

    fn create(object: Value) -> AdmissionRequest<DynamicObject> {
        request("CREATE", object, None)
    }

    #[tokio::test]
    async fn a_sound_replika_is_admitted_without_warnings() {
        let req = create(replika_json(
            "Secret",
            "20s",
            json!({"matchAll": false, "replicateIn": ["team-a"]}),
        ));
        let response = validate_request(&req, &Fixture::standard()).await;
        assert!(response.allowed, "{}", response.result.message);
        assert_eq!(response.warnings, None);
    }

    #[tokio::test]
    async fn the_denial_names_every_problem_of_the_spec() {
        let req = create(replika_json(
            "Secret",
            "banana",
            json!({"matchAll": false, "replicateIn": ["platform", "Bad"]}),
        ));
        let response = validate_request(&req, &Fixture::standard()).await;
        assert!(!response.allowed);
        let message = &response.result.message;
        assert!(
            message.starts_with("Replika rejected, 3 problem(s)"),
            "{message}"
        );
        assert!(
            message.contains("\"banana\" is not a duration"),
            "{message}"
        );
        assert!(
            message.contains("names the source namespace \"platform\""),
            "{message}"
        );
        assert!(message.contains("replicateIn[1]: \"Bad\""), "{message}");
    }

    #[tokio::test]
    async fn cluster_scoped_and_refused_kinds_are_denied() {
        for kind in ["Node", "Event"] {
            let req = create(replika_json(kind, "20s", json!({"matchAll": true})));
            let response = validate_request(&req, &Fixture::standard()).await;
            assert!(!response.allowed, "{kind} was admitted");
        }
    }

    #[tokio::test]
    async fn missing_permissions_of_the_author_are_each_named() {
        let fixture = Fixture {
            user_may_not: vec![("get", Some("platform")), ("delete", Some("team-b"))],
            ..Fixture::standard()
        };
        let req = create(replika_json(
            "Secret",
            "20s",
            json!({"matchAll": false, "replicateIn": ["team-a", "team-b"]}),
        ));
        let response = validate_request(&req, &fixture).await;
        assert!(!response.allowed);
        let message = &response.result.message;
        assert!(
            message.contains("alice may not get secrets \"registry\" in namespace \"platform\""),
            "{message}"
        );
        assert!(
            message.contains("alice may not delete secrets in namespace \"team-b\""),
            "{message}"
        );
        assert!(
            message.starts_with("Replika rejected, 2 problem(s)"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn broad_targets_need_cluster_wide_rights() {
        let fixture = Fixture {
            user_may_not: vec![("create", None)],
            ..Fixture::standard()
        };
        for namespaces in [
            json!({"matchAll": true}),
            json!({"matchAll": false, "replicateIn": ["team-*"]}),
            json!({"matchAll": false, "selector": {"matchLabels": {"tier": "apps"}}}),
        ] {
            let response = validate_request(
                &create(replika_json("Secret", "20s", namespaces.clone())),
                &fixture,
            )
            .await;
            assert!(!response.allowed, "{namespaces} was admitted");
            assert!(
                response
                    .result
                    .message
                    .contains("create secrets in all namespaces"),
                "{}",
                response.result.message
            );
        }
    }

    #[tokio::test]
    async fn unserved_kinds_and_missing_operator_rights_only_warn() {
        let req = create(replika_json(
            "AlertmanagerConfig",
            "20s",
            json!({"matchAll": true}),
        ));
        let response = validate_request(&req, &Fixture::standard()).await;
        assert!(response.allowed);
        assert!(
            response.warnings.expect("a warning")[0].contains("not served by this cluster yet")
        );

        let fixture = Fixture {
            operator_may_not: vec!["create", "delete"],
            ..Fixture::standard()
        };
        let response = validate_request(
            &create(replika_json("Secret", "20s", json!({"matchAll": true}))),
            &fixture,
        )
        .await;
        assert!(response.allowed);
        let warnings = response.warnings.expect("a warning");
        assert!(
            warnings[0].contains("does not allow create, delete on Secret.v1"),
            "{warnings:?}"
        );
    }

    #[tokio::test]
    async fn another_replika_writing_the_same_objects_is_a_warning() {
        let mut other: Replika = serde_json::from_value(replika_json(
            "Secret",
            "20s",
            json!({"matchAll": false, "replicateIn": ["team-a"]}),
        ))
        .expect("a Replika");
        other.metadata.namespace = Some("elsewhere".into());
        let fixture = Fixture {
            replikas: vec![other],
            ..Fixture::standard()
        };
        let overlapping = create(replika_json(
            "Secret",
            "20s",
            json!({"matchAll": false, "replicateIn": ["team-a"]}),
        ));
        let warnings = validate_request(&overlapping, &fixture)
            .await
            .warnings
            .expect("a warning");
        assert!(
            warnings[0].contains("Replika elsewhere/creds also writes Secret \"registry\""),
            "{warnings:?}"
        );
        let apart = create(replika_json(
            "Secret",
            "20s",
            json!({"matchAll": false, "replicateIn": ["team-b"]}),
        ));
        assert_eq!(validate_request(&apart, &fixture).await.warnings, None);
    }

    #[tokio::test]
    async fn updates_that_keep_the_spec_are_not_rechecked() {
        let fixture = Fixture {
            user_may_not: vec![("get", Some("platform"))],
            ..Fixture::standard()
        };
        let old = replika_json("Secret", "20s", json!({"matchAll": true}));
        let mut new = old.clone();
        new["metadata"]["finalizers"] = json!(["replika.prosimcorp.com/cleanup"]);
        assert!(
            validate_request(&request("UPDATE", new.clone(), Some(old.clone())), &fixture)
                .await
                .allowed
        );
        new["spec"]["synchronization"]["time"] = json!("30s");
        assert!(
            !validate_request(&request("UPDATE", new, Some(old)), &fixture)
                .await
                .allowed
        );
    }

    fn patch_of(response: &AdmissionResponse) -> Value {
        serde_json::from_slice(response.patch.as_deref().unwrap_or(b"[]")).expect("a JSON patch")
    }

    /// The operations of a patch that touch the spec.
    fn spec_patch_of(response: &AdmissionResponse) -> Value {
        let operations = patch_of(response);
        let spec_operations = operations
            .as_array()
            .expect("a JSON patch is a list")
            .iter()
            .filter(|op| op["path"].as_str().is_some_and(|p| p.starts_with("/spec")))
            .cloned()
            .collect();
        Value::Array(spec_operations)
    }

    /// The object as the API server stores it after the mutating webhook's patch.
    fn mutated(request: &AdmissionRequest<DynamicObject>, fixture: &Fixture) -> Replika {
        let from_operator = fixture.is_operator(&request.user_info);
        let response = mutate_request(request, fixture.signer(), from_operator);
        let mut object = serde_json::to_value(request.object.as_ref().expect("an object"))
            .expect("the object as JSON");
        let patch: json_patch::Patch =
            serde_json::from_value(patch_of(&response)).expect("a valid JSON patch");
        json_patch::patch(&mut object, &patch).expect("the patch applies");
        serde_json::from_value(object).expect("a Replika")
    }

    fn author_of(replika: &Replika, fixture: &Fixture) -> Result<String, String> {
        let plan = validate(&replika.spec, "platform").expect("a valid spec");
        fixture
            .signer
            .verify(
                "platform",
                "creds",
                &plan,
                attestation(replika.annotations()).as_ref(),
            )
            .map(|author| author.username)
            .map_err(|problem| problem.to_string())
    }

    fn as_user(
        mut request: AdmissionRequest<DynamicObject>,
        username: &str,
    ) -> AdmissionRequest<DynamicObject> {
        request.user_info.username = Some(username.into());
        request
    }

    #[test]
    fn the_requesting_user_is_signed_as_author_and_forgeries_are_replaced() {
        let fixture = Fixture::standard();
        let mut object = replika_json("Secret", "20s", json!({"matchAll": true}));
        assert_eq!(
            author_of(&mutated(&create(object.clone()), &fixture), &fixture),
            Ok("alice".into())
        );
        // A request claiming another author, with or without other annotations, is re-signed.
        object["metadata"]["annotations"] = json!({
            "team": "payments",
            ANNOTATION_AUTHOR: "{\"username\":\"admin\"}",
            ANNOTATION_AUTHOR_SIGNATURE: "v1:00",
        });
        let stored = mutated(&create(object), &fixture);
        assert_eq!(author_of(&stored, &fixture), Ok("alice".into()));
        assert_eq!(stored.annotations()["team"], "payments");
    }

    #[test]
    fn the_author_changes_with_the_spec_and_the_operator_vouches_for_nothing() {
        let fixture = Fixture::standard();
        let old = mutated(
            &create(replika_json("Secret", "20s", json!({"matchAll": true}))),
            &fixture,
        );
        let old = serde_json::to_value(&old).expect("JSON");

        // Bob labels it: the spec is unchanged, alice stays the author, even if bob drops the annotations.
        let mut labelled = old.clone();
        labelled["metadata"]["labels"] = json!({"team": "payments"});
        labelled["metadata"]["annotations"] = json!({});
        let update = as_user(request("UPDATE", labelled, Some(old.clone())), "bob");
        assert_eq!(
            author_of(&mutated(&update, &fixture), &fixture),
            Ok("alice".into())
        );

        // Bob changes the targets: bob becomes the author (and is reviewed as such).
        let mut retargeted = old.clone();
        retargeted["spec"]["target"]["namespaces"] =
            json!({"matchAll": false, "replicateIn": ["team-b"]});
        let update = as_user(
            request("UPDATE", retargeted.clone(), Some(old.clone())),
            "bob",
        );
        assert_eq!(
            author_of(&mutated(&update, &fixture), &fixture),
            Ok("bob".into())
        );

        // The operator's finalizer patch on a Replika that bypassed admission vouches for nothing.
        let operator = "system:serviceaccount:replika:replika-controller-manager";
        let unsigned = replika_json("Secret", "20s", json!({"matchAll": true}));
        let mut finalized = unsigned.clone();
        finalized["metadata"]["finalizers"] = json!(["replika.prosimcorp.com/cleanup"]);
        let update = as_user(request("UPDATE", finalized, Some(unsigned)), operator);
        assert!(author_of(&mutated(&update, &fixture), &fixture).is_err());
    }

    #[tokio::test]
    async fn only_an_explicit_request_signs_the_author_of_an_unchanged_spec() {
        let fixture = Fixture::standard();
        // Stored past admission (e.g. by the earlier Go operator): no author, no defaults.
        let unsigned = replika_json("Secret", "20s", json!({"matchAll": true}));

        // A label added by anyone (a GitOps controller) signs nobody and fills no defaults.
        let mut labelled = unsigned.clone();
        labelled["metadata"]["labels"] = json!({"team": "payments"});
        let update = as_user(request("UPDATE", labelled, Some(unsigned.clone())), "bob");
        assert_eq!(
            patch_of(&mutate_request(&update, fixture.signer(), false)),
            json!([])
        );
        assert!(validate_request(&update, &fixture).await.allowed);

        // `replika attest`: the request is answered (and dropped), alice is signed.
        let mut asked = unsigned.clone();
        asked["metadata"]["annotations"] = json!({ANNOTATION_ATTEST: "now"});
        let update = request("UPDATE", asked, Some(unsigned.clone()));
        let stored = mutated(&update, &fixture);
        assert_eq!(author_of(&stored, &fixture), Ok("alice".into()));
        assert!(!stored.annotations().contains_key(ANNOTATION_ATTEST));
        assert_eq!(
            stored.spec.policy, None,
            "the stored spec is left as it was"
        );

        // The new author's access is reviewed like a new spec's.
        let stored = serde_json::to_value(&stored).expect("JSON");
        let denied = Fixture {
            user_may_not: vec![("get", Some("platform"))],
            ..Fixture::standard()
        };
        let update = request("UPDATE", stored.clone(), Some(unsigned.clone()));
        assert!(validate_request(&update, &fixture).await.allowed);
        assert!(!validate_request(&update, &denied).await.allowed);

        // A request no mutating webhook answered is refused rather than stored.
        let mut unanswered = unsigned.clone();
        unanswered["metadata"]["annotations"] = json!({ANNOTATION_ATTEST: "now"});
        let update = request("UPDATE", unanswered, Some(unsigned));
        let response = validate_request(&update, &fixture).await;
        assert!(!response.allowed);
        assert!(response.result.message.contains("was not answered"));
    }

    #[test]
    fn mutation_fills_absent_fields_only() {
        let mut object = replika_json(
            "Secret",
            "20s",
            json!({"matchAll": true, "excludeFrom": ["b", "a"]}),
        );
        let fixture = Fixture::standard();
        let mutate = |object: &Value| {
            let request = create(object.clone());
            mutate_request(&request, fixture.signer(), false)
        };
        let response = mutate(&object);
        assert_eq!(
            spec_patch_of(&response),
            json!([
                {"op": "add", "path": "/spec/source/namespace", "value": "platform"},
                {"op": "add", "path": "/spec/policy", "value": {"conflict": "Refuse", "onSourceDeleted": "Retain", "onReplikaDeleted": "Delete"}}
            ])
        );
        object["spec"]["source"]["namespace"] = json!("other");
        object["spec"]["policy"] = json!({"conflict": "Adopt"});
        let response = mutate(&object);
        assert_eq!(
            spec_patch_of(&response),
            json!([
                {"op": "add", "path": "/spec/policy/onSourceDeleted", "value": "Retain"},
                {"op": "add", "path": "/spec/policy/onReplikaDeleted", "value": "Delete"}
            ])
        );
        object["spec"]["policy"] =
            json!({"conflict": "Adopt", "onSourceDeleted": "Delete", "onReplikaDeleted": "Orphan"});
        assert_eq!(spec_patch_of(&mutate(&object)), json!([]));
    }
}
