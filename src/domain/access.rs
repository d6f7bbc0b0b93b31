//! Access questions: which permissions a Replika's author must hold for the
//! Replika to be allowed, asked by the admission webhook at apply time and by
//! the reconciler at every sync (both through SubjectAccessReviews).

use std::collections::BTreeSet;

use super::validation::ReplikaPlan;

/// The verbs a Replika's author needs in every target namespace.
pub const AUTHOR_TARGET_VERBS: [&str; 3] = ["create", "update", "delete"];

/// One access question: may `verb` be done on `resource` (optionally one `name`)
/// in `namespace` (`None`: cluster-wide)?
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    pub verb: &'static str,
    pub group: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resource = if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        write!(f, "{} {resource}", self.verb)?;
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        match &self.namespace {
            Some(namespace) => write!(f, " in namespace {namespace:?}"),
            None => write!(f, " in all namespaces"),
        }
    }
}

/// The permissions a Replika's author must hold, in a stable order.
pub fn author_checks(plan: &ReplikaPlan, group: &str, resource: &str) -> Vec<Access> {
    let access = |verb, namespace: Option<String>, name: Option<String>| Access {
        verb,
        group: group.to_string(),
        resource: resource.to_string(),
        namespace,
        name,
    };
    let mut checks = vec![access(
        "get",
        Some(plan.source.namespace.clone()),
        Some(plan.source.name.clone()),
    )];
    // A broad rule reaches namespaces that do not exist yet: cluster-wide rights.
    let namespaces: BTreeSet<Option<String>> = match plan.targets.named_namespaces() {
        None => BTreeSet::from([None]),
        Some(named) => named.into_iter().map(Some).collect(),
    };
    for namespace in namespaces {
        for verb in AUTHOR_TARGET_VERBS {
            checks.push(access(verb, namespace.clone(), None));
        }
    }
    checks
}
