//! Which namespaces a Replika copies into.
//!
//! The rule, in one line (also in the README):
//! `(matchAll ? all namespaces : replicateIn matches, or "default" when replicateIn is
//! empty and there is no selector) ∩ selector − excludeFrom matches − the source
//! namespace − Terminating namespaces`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::names::glob_matches;
use super::selector::selector_matches;

/// The namespace a Replika targets when it names none and has no selector.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A validated `spec.target.namespaces`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetRule {
    pub match_all: bool,
    pub replicate_in: Vec<String>,
    pub exclude_from: Vec<String>,
    pub selector: Option<LabelSelector>,
}

/// What the rule needs to know about one namespace.
#[derive(Clone, Copy, Debug)]
pub struct NamespaceView<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub terminating: bool,
}

impl TargetRule {
    /// Whether `namespace` is a target of a Replika whose source lives in `source_namespace`.
    pub fn targets(&self, namespace: NamespaceView<'_>, source_namespace: &str) -> bool {
        let in_base = if self.match_all {
            true
        } else if !self.replicate_in.is_empty() {
            self.replicate_in
                .iter()
                .any(|p| glob_matches(p, namespace.name))
        } else {
            self.selector.is_some() || namespace.name == DEFAULT_NAMESPACE
        };
        in_base
            && self
                .selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, namespace.labels))
            && !self
                .exclude_from
                .iter()
                .any(|p| glob_matches(p, namespace.name))
            && namespace.name != source_namespace
            && !namespace.terminating
    }

    /// The target namespaces among `namespaces`, sorted.
    pub fn select<'a>(
        &self,
        namespaces: impl IntoIterator<Item = NamespaceView<'a>>,
        source_namespace: &str,
    ) -> BTreeSet<String> {
        namespaces
            .into_iter()
            .filter(|ns| self.targets(*ns, source_namespace))
            .map(|ns| ns.name.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Cluster(Vec<(&'static str, BTreeMap<String, String>, bool)>);

    impl Cluster {
        fn new(names: &[&'static str]) -> Self {
            Cluster(names.iter().map(|n| (*n, BTreeMap::new(), false)).collect())
        }
        fn label(mut self, name: &str, key: &str, value: &str) -> Self {
            let ns = self
                .0
                .iter_mut()
                .find(|ns| ns.0 == name)
                .expect("namespace in fixture");
            ns.1.insert(key.into(), value.into());
            self
        }
        fn terminating(mut self, name: &str) -> Self {
            let ns = self
                .0
                .iter_mut()
                .find(|ns| ns.0 == name)
                .expect("namespace in fixture");
            ns.2 = true;
            self
        }
        fn select(&self, rule: &TargetRule, source: &str) -> Vec<String> {
            let views = self
                .0
                .iter()
                .map(|(name, labels, terminating)| NamespaceView {
                    name,
                    labels,
                    terminating: *terminating,
                });
            rule.select(views, source).into_iter().collect()
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn match_all_minus_exclusions_and_source() {
        let cluster = Cluster::new(&["default", "kube-system", "team-a", "team-b", "platform"]);
        let rule = TargetRule {
            match_all: true,
            exclude_from: strings(&["kube-*"]),
            ..Default::default()
        };
        assert_eq!(
            cluster.select(&rule, "platform"),
            strings(&["default", "team-a", "team-b"])
        );
    }

    #[test]
    fn replicate_in_accepts_globs_and_ignores_missing_names() {
        let cluster = Cluster::new(&["default", "team-a", "team-b", "other"]);
        let rule = TargetRule {
            replicate_in: strings(&["team-*", "not-there"]),
            ..Default::default()
        };
        assert_eq!(
            cluster.select(&rule, "default"),
            strings(&["team-a", "team-b"])
        );
    }

    #[test]
    fn empty_rule_means_default_namespace() {
        let cluster = Cluster::new(&["default", "team-a"]);
        assert_eq!(
            cluster.select(&TargetRule::default(), "team-a"),
            strings(&["default"])
        );
        assert!(cluster.select(&TargetRule::default(), "default").is_empty());
    }

    #[test]
    fn selector_alone_ranges_over_all_namespaces() {
        let cluster = Cluster::new(&["default", "a", "b"]).label("a", "tier", "apps");
        let rule = TargetRule {
            selector: Some(LabelSelector {
                match_labels: Some([("tier".to_string(), "apps".to_string())].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(cluster.select(&rule, "default"), strings(&["a"]));
    }

    #[test]
    fn selector_narrows_match_all_and_replicate_in() {
        let cluster = Cluster::new(&["a", "b", "c"])
            .label("a", "tier", "apps")
            .label("b", "tier", "apps");
        let selector = Some(LabelSelector {
            match_labels: Some([("tier".to_string(), "apps".to_string())].into()),
            ..Default::default()
        });
        let rule = TargetRule {
            replicate_in: strings(&["b", "c"]),
            selector,
            ..Default::default()
        };
        assert_eq!(cluster.select(&rule, "x"), strings(&["b"]));
    }

    #[test]
    fn source_and_terminating_namespaces_are_never_targets() {
        let cluster = Cluster::new(&["src", "dying", "live"]).terminating("dying");
        let rule = TargetRule {
            replicate_in: strings(&["src", "dying", "live"]),
            ..Default::default()
        };
        assert_eq!(cluster.select(&rule, "src"), strings(&["live"]));
    }
}
