//! The overlap heuristic: warns at admission when another Replika writes the
//! same objects where both may target a namespace (the engine then keeps the
//! first owner's copy and reports a Conflict for the other).

use crate::api::Replika;
use crate::domain::targets::TargetRule;
use crate::domain::validation::{ReplikaPlan, validate};

/// Warnings for other Replikas that write objects of the same kind and name.
pub(super) fn overlaps(replika: &Replika, plan: &ReplikaPlan, others: &[Replika]) -> Vec<String> {
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
            (theirs.writes_same_objects(plan) && may_overlap(&theirs.targets, &plan.targets)).then(|| {
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
fn may_overlap(a: &TargetRule, b: &TargetRule) -> bool {
    match (a.named_namespaces(), b.named_namespaces()) {
        (Some(a), Some(b)) => !a.is_disjoint(&b),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::*;
    use super::super::validate_request;
    use super::*;

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
}
