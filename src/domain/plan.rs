//! What a pass does in each namespace, decided from what is known there: the
//! engine asks [`step`] for every target and [`is_stale`] for every copy, then
//! does it; `kubectl replika plan` and `status` show the same decisions through
//! [`plan_namespaces`] without writing anything.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use super::copy::{CopyMarks, Owner, Ownership};
use super::targets::NamespaceView;
use super::validation::{ReplikaPlan, validate};
use crate::api::{ConflictPolicy, Replika};

/// What is known of the object named like the copies in one namespace.
#[derive(Clone, Copy, Debug)]
pub struct Found<'a> {
    pub namespace: &'a str,
    pub marks: &'a CopyMarks,
    /// Its deletion has begun.
    pub deleting: bool,
}

/// What to do with the object found in a target namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Our copy: bring it in line with the source (it may already be).
    Sync,
    /// An object we take over (policy `Adopt`, the earlier Go operator's, a
    /// deleted predecessor's): apply the copy over it.
    Adopt,
    /// Leave it alone and report why.
    Conflict(String),
    /// Being deleted: made again once it is gone.
    Wait(String),
}

/// The namespaces a Replika targets now, and which copies made by others it
/// takes over:
/// - the earlier Go operator's: its labels name the Replika but not its
///   namespace, so a copy is inherited only in a namespace this Replika targets
///   and no other Replika of the same name, writing the same objects, targets
///   too; where one does, the copy is contested and left alone until an admin
///   settles it;
/// - a deleted predecessor's (same namespace and name, another UID), whose
///   cleanup could not remove them: adopted once that Replika is gone.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// The target namespaces (among those looked at).
    pub targets: BTreeSet<String>,
    /// The other Replikas (`namespace/name`) that could have made each contested copy.
    contested: BTreeMap<String, Vec<String>>,
    /// UIDs of the Replikas that exist (a predecessor among them is still cleaning up).
    live: BTreeSet<String>,
}

impl Scope {
    /// The scope of `replika` (validated as `plan`) among all `replikas` of
    /// the cluster, over the `namespaces` looked at: every namespace of the
    /// cluster, or those a narrow pass looks at.
    pub fn of<'r>(
        replika: &Replika,
        plan: &ReplikaPlan,
        replikas: impl IntoIterator<Item = &'r Replika>,
        namespaces: &[NamespaceView<'_>],
    ) -> Self {
        let select = |plan: &ReplikaPlan| {
            plan.targets
                .select(namespaces.iter().copied(), &plan.source.namespace)
        };
        let targets = select(plan);
        let mut contested: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut live = BTreeSet::new();
        for other in replikas {
            live.extend(other.uid());
            if other.name_any() != replika.name_any() || other.uid() == replika.uid() {
                continue;
            }
            let namespace = other.namespace().unwrap_or_default();
            let Ok(theirs) = validate(&other.spec, &namespace) else {
                continue;
            };
            if !theirs.writes_same_objects(plan) {
                continue;
            }
            for target in select(&theirs).intersection(&targets) {
                contested
                    .entry(target.clone())
                    .or_default()
                    .push(format!("{namespace}/{}", other.name_any()));
            }
        }
        Scope {
            targets,
            contested,
            live,
        }
    }

    /// Whether the object `found` is this Replika's to keep in sync and to remove.
    pub fn claims(&self, found: Found<'_>, owner: &Owner) -> bool {
        match found.marks.ownership(owner) {
            Ownership::Ours => true,
            Ownership::Inherited => {
                self.targets.contains(found.namespace)
                    && !self.contested.contains_key(found.namespace)
            }
            Ownership::Predecessor(uid) => !self.live.contains(&uid),
            Ownership::OtherReplika(_) | Ownership::Unowned => false,
        }
    }
}

/// What to do with `found`, an object named like the copies in a target namespace.
pub fn step(found: Found<'_>, owner: &Owner, conflict: ConflictPolicy, scope: &Scope) -> Step {
    if found.deleting {
        return Step::Wait(
            "the copy is being deleted; it will be created again once it is gone".into(),
        );
    }
    match found.marks.ownership(owner) {
        Ownership::Ours => Step::Sync,
        Ownership::OtherReplika(other) => {
            Step::Conflict(format!("the object is managed by Replika {other}"))
        }
        Ownership::Predecessor(_) if scope.claims(found, owner) => Step::Adopt,
        Ownership::Predecessor(uid) => Step::Conflict(format!(
            "the object belongs to the previous Replika of this name (UID {uid}), which is still being deleted"
        )),
        Ownership::Inherited => match scope.contested.get(found.namespace) {
            None => Step::Adopt,
            Some(rivals) => Step::Conflict(format!(
                "the earlier Go operator made this object for a Replika named {}, and Replikas {} of that name copy the same source here: delete the object and the first of them to sync makes it again as its own",
                owner.name,
                rivals.join(", ")
            )),
        },
        Ownership::Unowned if conflict == ConflictPolicy::Adopt => Step::Adopt,
        Ownership::Unowned => Step::Conflict(
            "an object with this name exists and is not managed by Replika (policy.conflict: Refuse)"
                .into(),
        ),
    }
}

/// Whether `found` is a copy of this Replika that must go: claimed, not
/// already going, and in a namespace outside `keep` (the targets, or none
/// when every copy goes).
pub fn is_stale(found: Found<'_>, owner: &Owner, scope: &Scope, keep: &BTreeSet<String>) -> bool {
    scope.claims(found, owner) && !found.deleting && !keep.contains(found.namespace)
}

/// What applying a Replika would do in one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Adopt,
    Unchanged,
    Conflict,
    Wait,
    Prune,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Adopt => "adopt",
            Action::Unchanged => "unchanged",
            Action::Conflict => "conflict",
            Action::Wait => "wait",
            Action::Prune => "prune",
        };
        f.write_str(name)
    }
}

/// One namespace of a plan.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Planned {
    pub namespace: String,
    pub action: Action,
    /// Why, for the actions that need it (conflicts, waits, prunes of a previous name).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// An object named like the copies, as the plan sees it.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub found: Found<'a>,
    /// It already holds exactly what the copy would (read in full and compared).
    pub holds_copy: bool,
}

/// What a pass would do in every namespace concerned: each target, and each
/// copy outside them that would be pruned. Sorted by namespace.
pub fn plan_namespaces(
    observed: &[Observed<'_>],
    owner: &Owner,
    conflict: ConflictPolicy,
    scope: &Scope,
) -> Vec<Planned> {
    let by_namespace: BTreeMap<&str, &Observed<'_>> = observed
        .iter()
        .map(|seen| (seen.found.namespace, seen))
        .collect();
    let planned = |namespace: &str, action, detail: String| Planned {
        namespace: namespace.to_string(),
        action,
        detail,
    };
    let mut plan: Vec<Planned> = scope
        .targets
        .iter()
        .map(|namespace| match by_namespace.get(namespace.as_str()) {
            None => planned(namespace, Action::Create, String::new()),
            Some(seen) => match step(seen.found, owner, conflict, scope) {
                Step::Sync if seen.holds_copy => {
                    planned(namespace, Action::Unchanged, String::new())
                }
                Step::Sync => planned(namespace, Action::Update, String::new()),
                Step::Adopt => planned(
                    namespace,
                    Action::Adopt,
                    "takes over the object found there".into(),
                ),
                Step::Conflict(why) => planned(namespace, Action::Conflict, why),
                Step::Wait(why) => planned(namespace, Action::Wait, why),
            },
        })
        .collect();
    plan.extend(
        observed
            .iter()
            .filter(|seen| is_stale(seen.found, owner, scope, &scope.targets))
            .map(|seen| {
                planned(
                    seen.found.namespace,
                    Action::Prune,
                    "no longer a target".into(),
                )
            }),
    );
    plan.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ANNOTATION_OWNER, ANNOTATION_OWNER_UID, CREATED_BY_VALUE, LABEL_CREATED_BY};
    use crate::api::{LABEL_PART_OF, ReplikaSpec};

    fn owner() -> Owner {
        Owner {
            namespace: "platform".into(),
            name: "creds".into(),
            uid: "uid-1".into(),
        }
    }

    /// The marks of an object written by the Replika `owner` (`namespace/name`) with `uid`.
    fn written_by(owner: &str, uid: &str) -> CopyMarks {
        let labels = [
            (LABEL_CREATED_BY.to_string(), CREATED_BY_VALUE.to_string()),
            (LABEL_PART_OF.to_string(), "creds".to_string()),
        ]
        .into();
        let annotations = [
            (ANNOTATION_OWNER.to_string(), owner.to_string()),
            (ANNOTATION_OWNER_UID.to_string(), uid.to_string()),
        ]
        .into();
        CopyMarks::read(&labels, &annotations)
    }

    fn go_operator_copy() -> CopyMarks {
        let labels = [
            (LABEL_CREATED_BY.to_string(), CREATED_BY_VALUE.to_string()),
            (LABEL_PART_OF.to_string(), "creds".to_string()),
        ]
        .into();
        CopyMarks::read(&labels, &BTreeMap::new())
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn scope(targets: &[&str], contested: &[(&str, &str)], live: &[&str]) -> Scope {
        let mut rivals: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (namespace, rival) in contested {
            rivals
                .entry(namespace.to_string())
                .or_default()
                .push(rival.to_string());
        }
        Scope {
            targets: set(targets),
            contested: rivals,
            live: set(live),
        }
    }

    #[test]
    fn every_kind_of_object_in_a_target_gets_its_step() {
        let scope = scope(
            &["a", "contested"],
            &[("contested", "other/creds")],
            &["uid-1", "uid-live"],
        );
        let ours = written_by("platform/creds", "uid-1");
        let other = written_by("elsewhere/db", "uid-9");
        let gone_predecessor = written_by("platform/creds", "uid-0");
        let live_predecessor = written_by("platform/creds", "uid-live");
        let go = go_operator_copy();
        let unowned = CopyMarks::default();
        let cases: [(&str, &CopyMarks, bool, ConflictPolicy, Step); 9] = [
            ("a", &ours, false, ConflictPolicy::Refuse, Step::Sync),
            ("a", &ours, true, ConflictPolicy::Refuse, Step::Wait("the copy is being deleted; it will be created again once it is gone".into())),
            ("a", &other, false, ConflictPolicy::Adopt, Step::Conflict("the object is managed by Replika elsewhere/db".into())),
            ("a", &gone_predecessor, false, ConflictPolicy::Refuse, Step::Adopt),
            ("a", &live_predecessor, false, ConflictPolicy::Refuse, Step::Conflict("the object belongs to the previous Replika of this name (UID uid-live), which is still being deleted".into())),
            ("a", &go, false, ConflictPolicy::Refuse, Step::Adopt),
            ("a", &unowned, false, ConflictPolicy::Adopt, Step::Adopt),
            ("a", &unowned, false, ConflictPolicy::Refuse, Step::Conflict("an object with this name exists and is not managed by Replika (policy.conflict: Refuse)".into())),
            ("contested", &go, false, ConflictPolicy::Refuse, Step::Conflict("the earlier Go operator made this object for a Replika named creds, and Replikas other/creds of that name copy the same source here: delete the object and the first of them to sync makes it again as its own".into())),
        ];
        for (namespace, marks, deleting, policy, expected) in cases {
            let found = Found {
                namespace,
                marks,
                deleting,
            };
            assert_eq!(
                step(found, &owner(), policy, &scope),
                expected,
                "{marks:?} in {namespace}"
            );
        }
    }

    #[test]
    fn only_claimed_live_copies_outside_the_targets_are_stale() {
        let scope = scope(&["a"], &[], &["uid-1"]);
        let ours = written_by("platform/creds", "uid-1");
        let other = written_by("elsewhere/db", "uid-9");
        let go = go_operator_copy();
        let stale = |namespace, marks, deleting| {
            let found = Found {
                namespace,
                marks,
                deleting,
            };
            is_stale(found, &owner(), &scope, &scope.targets)
        };
        assert!(stale("b", &ours, false), "ours, no longer targeted");
        assert!(!stale("a", &ours, false), "ours, targeted");
        assert!(!stale("b", &ours, true), "already going");
        assert!(!stale("b", &other, false), "another Replika's");
        assert!(
            !stale("b", &go, false),
            "the Go operator's outside our targets is not ours"
        );
        assert!(!stale("b", &CopyMarks::default(), false), "a user's");
    }

    #[test]
    fn a_plan_names_each_namespace_once_with_its_action() {
        let scope = scope(
            &["new", "current", "stale-content", "taken"],
            &[],
            &["uid-1"],
        );
        let ours = written_by("platform/creds", "uid-1");
        let users = CopyMarks::default();
        let seen = |namespace, marks, holds_copy| Observed {
            found: Found {
                namespace,
                marks,
                deleting: false,
            },
            holds_copy,
        };
        let observed = [
            seen("current", &ours, true),
            seen("stale-content", &ours, false),
            seen("taken", &users, false),
            seen("dropped", &ours, true),
        ];
        let plan = plan_namespaces(&observed, &owner(), ConflictPolicy::Refuse, &scope);
        let actions: Vec<(&str, Action)> = plan
            .iter()
            .map(|p| (p.namespace.as_str(), p.action))
            .collect();
        assert_eq!(
            actions,
            [
                ("current", Action::Unchanged),
                ("dropped", Action::Prune),
                ("new", Action::Create),
                ("stale-content", Action::Update),
                ("taken", Action::Conflict),
            ]
        );
    }

    #[test]
    fn an_inherited_copy_is_contested_where_a_same_named_replika_writing_the_same_objects_targets_too()
     {
        let replika = |namespace: &str, uid: &str, targets: &[&str], copy_name: Option<&str>| {
            let spec: ReplikaSpec = serde_json::from_value(serde_json::json!({
                "synchronization": {"time": "1m"},
                "source": {"group": "", "version": "v1", "kind": "Secret", "name": "creds"},
                "target": {"name": copy_name, "namespaces": {"matchAll": false, "replicateIn": targets}},
            }))
            .expect("a spec");
            let mut replika = Replika::new("creds", spec);
            replika.metadata.namespace = Some(namespace.into());
            replika.metadata.uid = Some(uid.into());
            replika
        };
        let me = replika("platform", "uid-1", &["a", "b"], None);
        let rival = replika("other", "uid-2", &["b"], None);
        let renamed_rival = replika("third", "uid-3", &["a"], Some("elsewhere"));
        let names = ["a", "b", "platform", "other", "third"];
        let metadata: Vec<_> = names
            .iter()
            .map(
                |name| k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some(name.to_string()),
                    ..Default::default()
                },
            )
            .collect();
        let views: Vec<NamespaceView<'_>> = metadata.iter().map(NamespaceView::of).collect();
        let plan = validate(&me.spec, "platform").expect("valid");
        let scope = Scope::of(&me, &plan, [&me, &rival, &renamed_rival], &views);
        assert_eq!(scope.targets, set(&["a", "b"]));
        assert_eq!(scope.contested.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(scope.contested["b"], ["other/creds"]);
        assert_eq!(scope.live, set(&["uid-1", "uid-2", "uid-3"]));

        // Over a few namespaces (a narrow pass): the same decisions there.
        let narrow = Scope::of(&me, &plan, [&me, &rival], &views[1..3]);
        assert_eq!(narrow.targets, set(&["b"]));
        assert_eq!(narrow.contested.keys().collect::<Vec<_>>(), ["b"]);
    }
}
