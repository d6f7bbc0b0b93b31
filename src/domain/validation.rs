//! Checks a Replika spec and, when it is sound, turns it into the plan the reconciler follows.
//!
//! Every problem is collected, not only the first, so a denial or an `Invalid`
//! condition tells the user everything to fix in one go.

use std::time::Duration;

use kube::core::GroupVersionKind;

use super::copy::{CopySettings, KeyFilter};
use super::duration::parse_go_duration;
use super::names::{
    data_key_pattern_problem, dns_label_problem, dns_subdomain_problem, namespace_pattern_problem,
};
use super::selector::{label_key_problem, label_value_problem, selector_problems};
use super::targets::TargetRule;
use crate::api::{EffectivePolicy, REPLIKA_KEY_PREFIX, ReplikaSpec};

/// The shortest resync interval accepted.
pub const MIN_RESYNC: Duration = Duration::from_secs(1);

/// Kinds that are namespaced but whose copies are meaningless or dangerous, as (group, kind).
const REFUSED_KINDS: &[(&str, &str, &str)] = &[
    ("", "Namespace", "a Namespace cannot be replicated"),
    (
        "replika.prosimcorp.com",
        "Replika",
        "a Replika cannot replicate Replikas",
    ),
    (
        "",
        "Event",
        "Events describe one object and are meaningless as copies",
    ),
    (
        "events.k8s.io",
        "Event",
        "Events describe one object and are meaningless as copies",
    ),
    (
        "coordination.k8s.io",
        "Lease",
        "copying a Lease would confuse leader election",
    ),
    (
        "",
        "Endpoints",
        "Endpoints are managed by the cluster for each Service",
    ),
    (
        "discovery.k8s.io",
        "EndpointSlice",
        "EndpointSlices are managed by the cluster for each Service",
    ),
    (
        "",
        "Pod",
        "copies of a Pod would run the workload in every namespace",
    ),
    ("", "Binding", "Bindings are one-shot scheduling requests"),
    (
        "apps",
        "ControllerRevision",
        "ControllerRevisions belong to one workload",
    ),
    (
        "authorization.k8s.io",
        "LocalSubjectAccessReview",
        "reviews are requests, not objects",
    ),
    ("rbac.authorization.k8s.io", "Role", RBAC_REFUSED),
    ("rbac.authorization.k8s.io", "RoleBinding", RBAC_REFUSED),
];

/// Copying RBAC objects would have the operator grant rights: an author who
/// may create Roles or RoleBindings still may not hold, `bind` or `escalate`
/// what they grant, and the operator's own `bind`/`escalate` would stand in.
const RBAC_REFUSED: &str = "Roles and RoleBindings are never copied: the operator would grant rights its author may not hold (bind/escalate); manage them with a tool that checks those rights";

/// A Replika spec that passed every check, with its defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplikaPlan {
    pub resync: Duration,
    pub source: SourceRef,
    pub targets: TargetRule,
    pub copy: CopySettings,
    pub policy: EffectivePolicy,
}

impl ReplikaPlan {
    /// Whether the copies of both plans are the same objects where both target
    /// a namespace: same kind, same name.
    pub fn writes_same_objects(&self, other: &ReplikaPlan) -> bool {
        self.source.gvk == other.source.gvk && self.copy.name == other.copy.name
    }

    /// A warning when namespace labels alone decide where a Secret goes: whoever
    /// may label a namespace can then pull a copy into it (docs/consent.md).
    pub fn consent_warning(&self) -> Option<String> {
        let secret = self.source.gvk.group.is_empty() && self.source.gvk.kind == "Secret";
        (secret && self.targets.selector.is_some() && self.targets.opt_in_for.is_none()).then(|| {
            "spec.target.namespaces.selector: this Secret goes wherever a namespace gets matching labels, so whoever may label a namespace can pull a copy into it; set spec.target.namespaces.requireOptIn: true so that only namespaces accepting this source get it (docs/consent.md)".to_string()
        })
    }
}

/// The source object a Replika copies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceRef {
    pub gvk: GroupVersionKind,
    pub namespace: String,
    pub name: String,
}

/// Why a kind can never be a source; `None` when it may be one.
/// Cluster-scoped kinds are refused too, but that needs discovery and is checked by the caller.
pub fn refused_kind_reason(group: &str, kind: &str) -> Option<&'static str> {
    REFUSED_KINDS
        .iter()
        .find(|(g, k, _)| *g == group && *k == kind)
        .map(|(_, _, why)| *why)
}

/// Validates `spec` of a Replika living in `replika_namespace`.
/// Returns the plan, or every problem found, each naming the field at fault.
pub fn validate(spec: &ReplikaSpec, replika_namespace: &str) -> Result<ReplikaPlan, Vec<String>> {
    let mut problems = Vec::new();

    let resync = match parse_go_duration(&spec.synchronization.time) {
        Ok(d) if d < MIN_RESYNC => {
            problems.push(format!(
                "spec.synchronization.time: {:?} is below the minimum of 1s",
                spec.synchronization.time
            ));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(format!(
                "spec.synchronization.time: {:?} is not a duration: {e}",
                spec.synchronization.time
            ));
            None
        }
    };

    let source = match &spec.source {
        None => {
            problems.push("spec.source: is required".into());
            None
        }
        Some(src) => {
            let before = problems.len();
            for (field, value) in [("version", &src.version), ("kind", &src.kind)] {
                if value.is_empty() {
                    problems.push(format!("spec.source.{field}: must not be empty"));
                }
            }
            if let Some(why) = refused_kind_reason(&src.group, &src.kind) {
                problems.push(format!("spec.source.kind: {}: {why}", src.kind));
            }
            if let Some(p) = dns_subdomain_problem(&src.name) {
                problems.push(format!("spec.source.name: {:?} {p}", src.name));
            }
            if !src.group.is_empty()
                && let Some(p) = dns_subdomain_problem(&src.group)
            {
                problems.push(format!("spec.source.group: {:?} {p}", src.group));
            }
            let namespace = src
                .namespace
                .clone()
                .unwrap_or_else(|| replika_namespace.to_string());
            if let Some(p) = dns_label_problem(&namespace) {
                problems.push(format!("spec.source.namespace: {namespace:?} {p}"));
            }
            (problems.len() == before).then(|| SourceRef {
                gvk: GroupVersionKind::gvk(&src.group, &src.version, &src.kind),
                namespace,
                name: src.name.clone(),
            })
        }
    };

    let namespaces = spec.target.namespaces.clone().unwrap_or_default();
    let replicate_in = namespaces.replicate_in.unwrap_or_default();
    let exclude_from = namespaces.exclude_from.unwrap_or_default();
    for (field, patterns) in [
        ("replicateIn", &replicate_in),
        ("excludeFrom", &exclude_from),
    ] {
        for (i, pattern) in patterns.iter().enumerate() {
            if let Some(p) = namespace_pattern_problem(pattern) {
                problems.push(format!(
                    "spec.target.namespaces.{field}[{i}]: {pattern:?} {p}"
                ));
            }
        }
    }
    if let Some(source) = &source
        && replicate_in.contains(&source.namespace)
    {
        problems.push(format!(
            "spec.target.namespaces.replicateIn: names the source namespace {:?}; a copy there would overwrite the source",
            source.namespace
        ));
    }
    if let Some(selector) = &namespaces.selector {
        problems.extend(
            selector_problems(selector)
                .into_iter()
                .map(|p| format!("spec.target.namespaces.selector: {p}")),
        );
    }

    let metadata = spec.target.metadata.clone().unwrap_or_default();
    let extra_labels = metadata.labels.unwrap_or_default();
    let extra_annotations = metadata.annotations.unwrap_or_default();
    for (key, value) in &extra_labels {
        problems.extend(
            label_key_problem(key).map(|p| format!("spec.target.metadata.labels: key {key:?} {p}")),
        );
        problems.extend(
            label_value_problem(value)
                .map(|p| format!("spec.target.metadata.labels[{key:?}]: value {value:?} {p}")),
        );
    }
    for key in extra_annotations.keys() {
        problems.extend(
            label_key_problem(key)
                .map(|p| format!("spec.target.metadata.annotations: key {key:?} {p}")),
        );
    }
    for key in extra_labels.keys().chain(extra_annotations.keys()) {
        if key.starts_with(REPLIKA_KEY_PREFIX) {
            problems.push(format!(
                "spec.target.metadata: key {key:?} is reserved for Replika's own bookkeeping"
            ));
        }
    }
    if let Some(name) = &spec.target.name
        && let Some(p) = dns_subdomain_problem(name)
    {
        problems.push(format!("spec.target.name: {name:?} {p}"));
    }
    let keys = key_filter(spec, &mut problems);

    match (resync, source) {
        (Some(resync), Some(source)) if problems.is_empty() => Ok(ReplikaPlan {
            resync,
            targets: TargetRule {
                match_all: namespaces.match_all,
                replicate_in,
                exclude_from,
                selector: namespaces.selector,
                opt_in_for: (namespaces.require_opt_in == Some(true))
                    .then(|| format!("{}/{}", source.namespace, source.name)),
            },
            copy: CopySettings {
                name: spec
                    .target
                    .name
                    .clone()
                    .unwrap_or_else(|| source.name.clone()),
                labels: extra_labels,
                annotations: extra_annotations,
                keys,
            },
            source,
            policy: spec.effective_policy(),
        }),
        _ => Err(problems),
    }
}

/// The kinds whose data `spec.target.data` filters, as (group, kind).
const KEYED_KINDS: [(&str, &str); 2] = [("", "Secret"), ("", "ConfigMap")];

/// `spec.target.data` as a filter, with a problem for each malformed pattern
/// and for a filter on a kind without keyed data.
fn key_filter(spec: &ReplikaSpec, problems: &mut Vec<String>) -> KeyFilter {
    let Some(data) = &spec.target.data else {
        return KeyFilter::default();
    };
    if let Some(source) = &spec.source
        && !KEYED_KINDS.contains(&(source.group.as_str(), source.kind.as_str()))
    {
        problems.push(format!(
            "spec.target.data: key filters apply to Secrets and ConfigMaps only, not to {}",
            source.kind
        ));
    }
    if data.include.as_ref().is_some_and(Vec::is_empty) {
        problems.push(
            "spec.target.data.include: must name at least one key (omit it to copy every key)"
                .into(),
        );
    }
    let lists = [("include", &data.include), ("exclude", &data.exclude)];
    for (field, patterns) in lists {
        for (i, pattern) in patterns.iter().flatten().enumerate() {
            if let Some(p) = data_key_pattern_problem(pattern) {
                problems.push(format!("spec.target.data.{field}[{i}]: {pattern:?} {p}"));
            }
        }
    }
    KeyFilter {
        include: data.include.clone(),
        exclude: data.exclude.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        SourceSpec, SynchronizationSpec, TargetDataSpec, TargetNamespacesSpec, TargetSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn spec(time: &str, kind: &str, replicate_in: &[&str]) -> ReplikaSpec {
        ReplikaSpec {
            synchronization: SynchronizationSpec { time: time.into() },
            source: Some(SourceSpec {
                group: String::new(),
                version: "v1".into(),
                kind: kind.into(),
                name: "registry-creds".into(),
                namespace: None,
            }),
            target: TargetSpec {
                namespaces: Some(TargetNamespacesSpec {
                    replicate_in: Some(replicate_in.iter().map(|s| s.to_string()).collect()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            policy: None,
        }
    }

    #[test]
    fn a_sound_spec_becomes_a_plan_with_defaults() {
        let plan = validate(&spec("20s", "Secret", &["team-*"]), "platform").expect("valid");
        assert_eq!(plan.resync, Duration::from_secs(20));
        assert_eq!(plan.source.namespace, "platform");
        assert_eq!(plan.source.gvk, GroupVersionKind::gvk("", "v1", "Secret"));
        assert_eq!(plan.targets.replicate_in, vec!["team-*".to_string()]);
        assert_eq!(plan.policy, ReplikaSpec::default().effective_policy());
        assert_eq!(
            plan.copy.name, "registry-creds",
            "copies take the source's name"
        );
        assert_eq!(plan.targets.opt_in_for, None);
    }

    #[test]
    fn target_name_opt_in_and_key_filters_reach_the_plan() {
        let mut spec = spec("20s", "Secret", &["team-*"]);
        spec.target.name = Some("pull-secret".into());
        spec.target.data = Some(TargetDataSpec {
            include: Some(vec!["tls.*".into()]),
            exclude: None,
        });
        if let Some(namespaces) = spec.target.namespaces.as_mut() {
            namespaces.require_opt_in = Some(true);
        }
        let plan = validate(&spec, "platform").expect("valid");
        assert_eq!(plan.copy.name, "pull-secret");
        assert!(plan.copy.keys.keeps("tls.crt") && !plan.copy.keys.keeps("ca.crt"));
        assert_eq!(
            plan.targets.opt_in_for.as_deref(),
            Some("platform/registry-creds")
        );
    }

    #[test]
    fn a_secret_chosen_by_labels_without_opt_in_is_warned_about() {
        let mut by_label = spec("20s", "Secret", &[]);
        let selector = LabelSelector {
            match_labels: Some([("tier".to_string(), "apps".to_string())].into()),
            ..Default::default()
        };
        by_label.target.namespaces = Some(TargetNamespacesSpec {
            selector: Some(selector),
            ..Default::default()
        });
        let warned = |spec: &ReplikaSpec| {
            validate(spec, "platform")
                .expect("valid")
                .consent_warning()
                .is_some()
        };
        assert!(warned(&by_label));
        if let Some(namespaces) = by_label.target.namespaces.as_mut() {
            namespaces.require_opt_in = Some(true);
        }
        assert!(!warned(&by_label), "opt-in closes it");
        let mut config_map = by_label.clone();
        if let Some(namespaces) = config_map.target.namespaces.as_mut() {
            namespaces.require_opt_in = None;
        }
        if let Some(source) = config_map.source.as_mut() {
            source.kind = "ConfigMap".into();
        }
        assert!(!warned(&config_map), "only Secrets");
        assert!(
            !warned(&spec("20s", "Secret", &["team-a"])),
            "named namespaces"
        );
    }

    #[test]
    fn bad_target_names_and_key_filters_are_named() {
        let mut spec = spec("20s", "AlertmanagerConfig", &["team-*"]);
        spec.target.name = Some("Not_A_Name".into());
        spec.target.data = Some(TargetDataSpec {
            include: Some(vec![]),
            exclude: Some(vec!["ok".into(), "a/b".into()]),
        });
        let problems = validate(&spec, "platform").expect_err("invalid");
        let all = problems.join("\n");
        assert!(all.contains("spec.target.name: \"Not_A_Name\""), "{all}");
        assert!(
            all.contains(
                "key filters apply to Secrets and ConfigMaps only, not to AlertmanagerConfig"
            ),
            "{all}"
        );
        assert!(
            all.contains("spec.target.data.include: must name at least one key"),
            "{all}"
        );
        assert!(
            all.contains("spec.target.data.exclude[1]: \"a/b\""),
            "{all}"
        );
        assert_eq!(problems.len(), 4, "{all}");
    }

    #[test]
    fn every_problem_is_named() {
        let problems = validate(
            &spec("banana", "Namespace", &["platform", "Bad"]),
            "platform",
        )
        .expect_err("invalid");
        let all = problems.join("\n");
        assert!(
            all.contains("spec.synchronization.time: \"banana\" is not a duration"),
            "{all}"
        );
        assert!(all.contains("spec.source.kind: Namespace"), "{all}");
        assert!(all.contains("replicateIn[1]: \"Bad\""), "{all}");
        assert_eq!(problems.len(), 3, "{all}");
    }

    #[test]
    fn source_namespace_in_replicate_in_is_refused() {
        let problems =
            validate(&spec("20s", "Secret", &["platform"]), "platform").expect_err("invalid");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("names the source namespace \"platform\""));
    }

    #[test]
    fn resync_below_one_second_is_refused() {
        let problems = validate(&spec("300ms", "Secret", &[]), "platform").expect_err("invalid");
        assert!(problems[0].contains("below the minimum of 1s"));
    }

    #[test]
    fn missing_source_is_reported() {
        let mut spec = spec("20s", "Secret", &[]);
        spec.source = None;
        assert_eq!(
            validate(&spec, "ns"),
            Err(vec!["spec.source: is required".to_string()])
        );
    }

    #[test]
    fn refused_kinds_include_events_and_leases() {
        assert!(refused_kind_reason("", "Event").is_some());
        assert!(refused_kind_reason("coordination.k8s.io", "Lease").is_some());
        assert!(refused_kind_reason("rbac.authorization.k8s.io", "Role").is_some());
        assert!(refused_kind_reason("rbac.authorization.k8s.io", "RoleBinding").is_some());
        assert!(refused_kind_reason("", "Secret").is_none());
        assert!(refused_kind_reason("monitoring.coreos.com", "AlertmanagerConfig").is_none());
    }
}
