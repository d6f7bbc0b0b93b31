//! The validating webhook's decision: the spec's own rules, then the kind, the
//! author's and the operator's access and other Replikas, as one answer that
//! names every problem.

use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use super::author::check_author;
use super::overlap::overlaps;
use super::{ClusterView, OPERATOR_VERBS, parse_replika};
use crate::api::ANNOTATION_ATTEST;
use crate::authorization::attestation;
use crate::controller::kinds::{KindError, ServedKind, cluster_scoped_problem, display};
use crate::domain::access::Access;
use crate::domain::validation::{ReplikaPlan, validate};

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
        Ok(kind) if !kind.namespaced => problems.push(cluster_scoped_problem(&plan.source.gvk)),
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

/// Warnings when the operator's own RBAC does not cover the kind.
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::*;
    use super::*;

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
}
