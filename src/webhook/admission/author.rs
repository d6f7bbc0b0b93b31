//! Author policy: who is signed as a Replika's author when it is admitted, and
//! the access that author must hold for the Replika to be allowed.

use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::core::admission::AdmissionRequest;
use serde_json::{Value, json};

use super::ClusterView;
use crate::api::{ANNOTATION_ATTEST, ANNOTATION_AUTHOR, ANNOTATION_AUTHOR_SIGNATURE, Replika};
use crate::authorization::{attestation, author};
use crate::controller::kinds::ServedKind;
use crate::domain::access::author_checks;
use crate::domain::attestation::{Signer, name_to_sign};
use crate::domain::validation::{ReplikaPlan, validate};

/// Patch operations setting the author annotations; none for a spec that does
/// not validate (the validating webhook denies it).
pub(super) fn attest(
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

/// The author must be able to read the source and to write the kind wherever copies go;
/// otherwise a Replika would launder access they do not have.
pub(super) async fn check_author<C: ClusterView>(
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::*;
    use super::super::{mutate_request, validate_request};
    use super::*;

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
}
