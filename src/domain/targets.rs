//! Which namespaces a Replika copies into.
//!
//! The rule, in one line (also in the README):
//! `(matchAll ? all namespaces : replicateIn matches, or "default" when replicateIn is
//! empty and there is no selector) ∩ selector − excludeFrom matches − the source
//! namespace − Terminating namespaces − namespaces that refuse copies
//! (− namespaces that do not accept this source, with requireOptIn)`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::names::{glob_matches, is_glob};
use super::selector::selector_matches;
use crate::api::{ANNOTATION_ACCEPT_FROM, LABEL_REPLICATION, REPLICATION_DISABLED};

/// The namespace a Replika targets when it names none and has no selector.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A validated `spec.target.namespaces`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetRule {
    pub match_all: bool,
    pub replicate_in: Vec<String>,
    pub exclude_from: Vec<String>,
    pub selector: Option<LabelSelector>,
    /// With `requireOptIn`: the source (`namespace/name`) a namespace must
    /// accept in its [`ANNOTATION_ACCEPT_FROM`] annotation to be a target.
    pub opt_in_for: Option<String>,
}

/// What the rule needs to know about one namespace.
#[derive(Clone, Copy, Debug)]
pub struct NamespaceView<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub terminating: bool,
}

impl<'a> NamespaceView<'a> {
    /// The view of a namespace from its metadata.
    pub fn of(metadata: &'a ObjectMeta) -> Self {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        NamespaceView {
            name: metadata.name.as_deref().unwrap_or_default(),
            labels: metadata.labels.as_ref().unwrap_or(&EMPTY),
            annotations: metadata.annotations.as_ref().unwrap_or(&EMPTY),
            terminating: metadata.deletion_timestamp.is_some(),
        }
    }

    /// Whether the namespace refuses every copy (its [`LABEL_REPLICATION`] label).
    pub fn refuses_copies(&self) -> bool {
        self.labels.get(LABEL_REPLICATION).map(String::as_str) == Some(REPLICATION_DISABLED)
    }

    /// Whether the namespace accepts copies of `source` (`namespace/name`):
    /// its [`ANNOTATION_ACCEPT_FROM`] annotation lists it, or a glob matching it.
    pub fn accepts(&self, source: &str) -> bool {
        self.annotations
            .get(ANNOTATION_ACCEPT_FROM)
            .into_iter()
            .flat_map(|accepted| accepted.split([',', ' ', '\n', '\t']))
            .any(|entry| !entry.is_empty() && glob_matches(entry, source))
    }
}

impl TargetRule {
    /// Whether the rule reaches namespaces it does not name (`matchAll`, a
    /// selector, or a glob in `replicateIn`): such a rule counts as
    /// cluster-wide, for the author's access and for overlaps alike.
    pub fn is_broad(&self) -> bool {
        self.match_all || self.selector.is_some() || self.replicate_in.iter().any(|p| is_glob(p))
    }

    /// The namespaces a rule that is not broad names (`"default"` when it
    /// names none); `None` for a broad rule.
    pub fn named_namespaces(&self) -> Option<BTreeSet<String>> {
        if self.is_broad() {
            None
        } else if self.replicate_in.is_empty() {
            Some(BTreeSet::from([DEFAULT_NAMESPACE.to_string()]))
        } else {
            Some(self.replicate_in.iter().cloned().collect())
        }
    }

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
            && !namespace.refuses_copies()
            && self
                .opt_in_for
                .as_ref()
                .is_none_or(|source| namespace.accepts(source))
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

    struct Cluster(Vec<ObjectMeta>);

    impl Cluster {
        fn new(names: &[&'static str]) -> Self {
            Cluster(
                names
                    .iter()
                    .map(|name| ObjectMeta {
                        name: Some(name.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            )
        }
        fn namespace(&mut self, name: &str) -> &mut ObjectMeta {
            self.0
                .iter_mut()
                .find(|ns| ns.name.as_deref() == Some(name))
                .expect("namespace in fixture")
        }
        fn label(mut self, name: &str, key: &str, value: &str) -> Self {
            let labels = self.namespace(name).labels.get_or_insert_default();
            labels.insert(key.into(), value.into());
            self
        }
        fn annotate(mut self, name: &str, key: &str, value: &str) -> Self {
            let annotations = self.namespace(name).annotations.get_or_insert_default();
            annotations.insert(key.into(), value.into());
            self
        }
        fn terminating(mut self, name: &str) -> Self {
            self.namespace(name).deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
            self
        }
        fn select(&self, rule: &TargetRule, source: &str) -> Vec<String> {
            let views = self.0.iter().map(NamespaceView::of);
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
    fn broad_rules_name_no_namespaces() {
        let named = |rule: TargetRule| rule.named_namespaces().map(Vec::from_iter);
        let listed = |names: &[&str]| TargetRule {
            replicate_in: strings(names),
            ..TargetRule::default()
        };
        assert_eq!(named(listed(&[])), Some(strings(&["default"])));
        assert_eq!(named(listed(&["b", "a"])), Some(strings(&["a", "b"])));
        assert_eq!(named(listed(&["a", "team-*"])), None);
        let all = TargetRule {
            match_all: true,
            ..TargetRule::default()
        };
        assert_eq!(named(all), None);
        let selected = TargetRule {
            selector: Some(LabelSelector::default()),
            ..TargetRule::default()
        };
        assert_eq!(named(selected), None);
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

    #[test]
    fn a_namespace_that_refuses_copies_gets_none_whatever_the_rule() {
        let cluster = Cluster::new(&["a", "b"])
            .label("b", LABEL_REPLICATION, REPLICATION_DISABLED)
            .label("b", "tier", "apps");
        let by_name = TargetRule {
            replicate_in: strings(&["a", "b"]),
            ..Default::default()
        };
        let all = TargetRule {
            match_all: true,
            ..Default::default()
        };
        let by_label = TargetRule {
            selector: Some(LabelSelector {
                match_labels: Some([("tier".to_string(), "apps".to_string())].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(cluster.select(&by_name, "src"), strings(&["a"]));
        assert_eq!(cluster.select(&all, "src"), strings(&["a"]));
        assert!(cluster.select(&by_label, "src").is_empty());
        // Any other value of the label refuses nothing.
        let enabled = Cluster::new(&["a"]).label("a", LABEL_REPLICATION, "enabled");
        assert_eq!(enabled.select(&all, "src"), strings(&["a"]));
    }

    #[test]
    fn with_opt_in_only_namespaces_accepting_the_source_are_targets() {
        let cluster = Cluster::new(&["a", "b", "c", "d", "e"])
            .annotate("a", ANNOTATION_ACCEPT_FROM, "platform/tls")
            .annotate("b", ANNOTATION_ACCEPT_FROM, "other/x, platform/*")
            .annotate("c", ANNOTATION_ACCEPT_FROM, "platform/tls-old")
            .annotate("d", "unrelated", "platform/tls");
        let rule = TargetRule {
            match_all: true,
            opt_in_for: Some("platform/tls".into()),
            ..Default::default()
        };
        assert_eq!(cluster.select(&rule, "platform"), strings(&["a", "b"]));
        let without = TargetRule {
            match_all: true,
            ..Default::default()
        };
        assert_eq!(cluster.select(&without, "platform").len(), 5);
    }
}
