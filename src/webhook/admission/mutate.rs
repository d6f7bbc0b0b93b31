//! The mutating webhook's patch: absent fields filled with their defaults, and
//! the author recorded (see [`super::author`]).

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::{Value, json};

use super::author::attest;
use super::parse_replika;
use crate::api::Replika;
use crate::domain::attestation::Signer;

/// Fills absent fields of a Replika (`spec.source.namespace`, the policy
/// defaults) and records its author: the requesting user, signed with `signer`.
///
/// Whoever creates the Replika or changes its spec becomes its author. An
/// update that leaves the spec alone keeps a valid attestation as it was and
/// never signs one as a side effect (a label added by a GitOps controller or
/// the operator's finalizer patch vouches for nothing): re-attestation is
/// explicit, an update that sets [`ANNOTATION_ATTEST`](crate::api::ANNOTATION_ATTEST) (`replika attest`),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::ClusterView;
    use super::super::fixtures::*;
    use super::*;

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
