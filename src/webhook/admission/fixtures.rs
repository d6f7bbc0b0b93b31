//! Test fixtures of the admission decisions: a cluster described by data, and
//! admission requests and their outcomes.

use std::collections::HashMap;

use k8s_openapi::api::authentication::v1::UserInfo;
use kube::ResourceExt;
use kube::api::ApiResource;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::{DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

use super::{ClusterView, mutate_request};
use crate::api::Replika;
use crate::authorization::attestation;
use crate::controller::kinds::{KindError, ServedKind};
use crate::domain::access::Access;
use crate::domain::attestation::Signer;
use crate::domain::validation::validate;

/// A cluster described by fixtures.
pub(super) struct Fixture {
    pub(super) kinds: HashMap<String, ServedKind>,
    pub(super) user_may_not: Vec<(&'static str, Option<&'static str>)>,
    pub(super) operator_may_not: Vec<&'static str>,
    pub(super) replikas: Vec<Replika>,
    pub(super) signer: Signer,
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
    pub(super) fn with_kind(
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

    pub(super) fn standard() -> Self {
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
        user.username.as_deref() == Some("system:serviceaccount:replika:replika-controller-manager")
    }
}

pub(super) fn replika_json(kind: &str, time: &str, namespaces: Value) -> Value {
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

pub(super) fn request(
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

pub(super) fn create(object: Value) -> AdmissionRequest<DynamicObject> {
    request("CREATE", object, None)
}

pub(super) fn patch_of(response: &AdmissionResponse) -> Value {
    serde_json::from_slice(response.patch.as_deref().unwrap_or(b"[]")).expect("a JSON patch")
}

/// The operations of a patch that touch the spec.
pub(super) fn spec_patch_of(response: &AdmissionResponse) -> Value {
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
pub(super) fn mutated(request: &AdmissionRequest<DynamicObject>, fixture: &Fixture) -> Replika {
    let from_operator = fixture.is_operator(&request.user_info);
    let response = mutate_request(request, fixture.signer(), from_operator);
    let mut object = serde_json::to_value(request.object.as_ref().expect("an object"))
        .expect("the object as JSON");
    let patch: json_patch::Patch =
        serde_json::from_value(patch_of(&response)).expect("a valid JSON patch");
    json_patch::patch(&mut object, &patch).expect("the patch applies");
    serde_json::from_value(object).expect("a Replika")
}

pub(super) fn author_of(replika: &Replika, fixture: &Fixture) -> Result<String, String> {
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

pub(super) fn as_user(
    mut request: AdmissionRequest<DynamicObject>,
    username: &str,
) -> AdmissionRequest<DynamicObject> {
    request.user_info.username = Some(username.into());
    request
}
