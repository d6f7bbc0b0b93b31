//! Label selectors on namespaces (`spec.target.namespaces.selector`) and label syntax.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::names::dns_subdomain_problem;

/// Every problem in `selector`, each prefixed by where it is.
pub fn selector_problems(selector: &LabelSelector) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        problems.extend(label_key_problem(key).map(|p| format!("matchLabels key {key:?} {p}")));
        problems
            .extend(label_value_problem(value).map(|p| format!("matchLabels value {value:?} {p}")));
    }
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("matchExpressions[{i}]");
        problems.extend(label_key_problem(&requirement.key).map(|p| format!("{at}.key {p}")));
        let values = requirement.values.as_deref().unwrap_or_default();
        match requirement.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                problems.push(format!(
                    "{at}: operator {} needs at least one value",
                    requirement.operator
                ));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                problems.push(format!(
                    "{at}: operator {} takes no values",
                    requirement.operator
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => problems.push(format!(
                "{at}: unknown operator {other:?} (use In, NotIn, Exists or DoesNotExist)"
            )),
        }
        for value in values {
            problems
                .extend(label_value_problem(value).map(|p| format!("{at} value {value:?} {p}")));
        }
    }
    problems
}

/// Whether `labels` satisfy `selector`. An empty selector matches everything.
/// Call only on selectors without [`selector_problems`]; an unknown operator matches nothing.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    labels_match
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|requirement| {
                let value = labels.get(&requirement.key);
                let listed = |v: &String| requirement.values.iter().flatten().any(|want| want == v);
                match requirement.operator.as_str() {
                    "In" => value.is_some_and(listed),
                    "NotIn" => !value.is_some_and(listed),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
}

/// Why `key` is not a valid label or annotation key (`[prefix/]name`); `None` when it is.
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(problem) = prefix.and_then(dns_subdomain_problem) {
        return Some(format!("has a prefix that {problem}"));
    }
    qualified_name_part_problem(name).map(|p| format!("has a name part that {p}"))
}

/// Why `value` is not a valid label value; `None` when it is.
pub fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        None
    } else {
        qualified_name_part_problem(value)
    }
}

fn qualified_name_part_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 63 {
        return Some("must be 1 to 63 characters".into());
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if !name
        .chars()
        .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
    {
        return Some("must consist of letters, digits, '-', '_' and '.'".into());
    }
    if !name.starts_with(alnum) || !name.ends_with(alnum) {
        return Some("must start and end with a letter or digit".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions_combine() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("tier", "apps")])),
            match_expressions: Some(vec![
                requirement("env", "In", &["prod", "staging"]),
                requirement("legacy", "DoesNotExist", &[]),
            ]),
        };
        assert!(selector_matches(
            &selector,
            &labels(&[("tier", "apps"), ("env", "prod")])
        ));
        assert!(!selector_matches(
            &selector,
            &labels(&[("tier", "apps"), ("env", "dev")])
        ));
        assert!(!selector_matches(
            &selector,
            &labels(&[("tier", "apps"), ("env", "prod"), ("legacy", "")])
        ));
        assert!(!selector_matches(&selector, &labels(&[("env", "prod")])));
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
    }

    #[test]
    fn not_in_matches_absent_keys() {
        let selector = LabelSelector {
            match_expressions: Some(vec![requirement("env", "NotIn", &["prod"])]),
            ..Default::default()
        };
        assert!(selector_matches(&selector, &labels(&[])));
        assert!(!selector_matches(&selector, &labels(&[("env", "prod")])));
    }

    #[test]
    fn every_problem_is_reported() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("bad key!", "ok"), ("ok", "-bad")])),
            match_expressions: Some(vec![
                requirement("env", "Like", &["x"]),
                requirement("env", "In", &[]),
                requirement("env", "Exists", &["x"]),
            ]),
        };
        let problems = selector_problems(&selector);
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("unknown operator \"Like\""))
        );
    }

    #[test]
    fn keys_may_have_a_dns_prefix() {
        assert_eq!(label_key_problem("replika.example/tier"), None);
        assert!(label_key_problem("Bad_Prefix/tier").is_some());
        assert!(label_key_problem("a/b/c").is_some());
    }
}
