//! Property-based tests of Replika's input handling: Go durations, namespace names
//! and globs, label selectors, whole-spec validation, and the admission endpoint's
//! request decoding.
//!
//! Each property states what the module under test claims, and checks it on
//! generated input, hostile input included (huge numbers, unicode, garbage bytes,
//! truncated JSON, oversized bodies). Expected values come from small reference
//! implementations written here, never from the code under test.
//!
//! Failures are not persisted to `proptest-regressions/`: proptest prints the
//! minimal failing input, which belongs in a unit test next to the fix.
//!
//! Run: `cargo test -p replika --test properties`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, Request, StatusCode};
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::ApiResource;
use kube::core::GroupVersionKind;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use replika::api::{
    ConflictPolicy, PolicySpec, Replika, ReplikaDeletedPolicy, ReplikaSpec, SourceDeletedPolicy,
    SourceSpec, SynchronizationSpec, TargetDataSpec, TargetMetadataSpec, TargetNamespacesSpec,
    TargetSpec,
};
use replika::controller::kinds::{KindError, ServedKind};
use replika::domain::access::Access;
use replika::domain::attestation::Signer;
use replika::domain::duration::{DurationError, parse_go_duration};
use replika::domain::names::{dns_label_problem, glob_matches, is_glob, namespace_pattern_problem};
use replika::domain::selector::{selector_matches, selector_problems};
use replika::domain::validation::{MIN_RESYNC, validate};
use replika::metrics::Metrics;
use replika::webhook::admission::ClusterView;
use replika::webhook::http::{MAX_BODY_BYTES, routes};
use serde_json::{Value, json};
use tower::ServiceExt;

/// `cases` generated inputs per property, failures reported but not written to disk.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Go durations
// ---------------------------------------------------------------------------

/// Every unit Go accepts (micro both as U+00B5 and U+03BC), with its length in nanoseconds.
const UNITS: [(&str, u128); 8] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ns", 1),
];

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// The value of a string of ASCII digits (`0` when empty).
fn digits_value(digits: &str) -> u128 {
    digits
        .bytes()
        .fold(0, |value, digit| value * 10 + u128::from(digit - b'0'))
}

/// `whole.fraction` units of `unit_nanos` each, truncated to whole nanoseconds, computed exactly.
fn exact_nanos(whole: &str, fraction: &str, unit_nanos: u128) -> u128 {
    let fraction_scale = 10u128.pow(u32::try_from(fraction.len()).expect("a short fraction"));
    digits_value(whole) * unit_nanos + digits_value(fraction) * unit_nanos / fraction_scale
}

fn duration_of_nanos(nanos: u128) -> Duration {
    let seconds = u64::try_from(nanos / NANOS_PER_SECOND).expect("seconds fit in u64");
    let subsec = u32::try_from(nanos % NANOS_PER_SECOND).expect("below 10^9");
    Duration::new(seconds, subsec)
}

/// One `<number><unit>` term (`1`, `1.5`, `.5`, `1.`, leading zeros, up to 18 fraction
/// digits), with the nanoseconds it stands for.
fn duration_term() -> impl Strategy<Value = (String, u128)> {
    (
        "[0-9]{0,7}",
        option::of("[0-9]{0,18}"),
        select(UNITS.to_vec()),
    )
        .prop_filter("a number needs a digit", |(whole, fraction, _)| {
            !whole.is_empty() || fraction.as_deref().is_some_and(|f| !f.is_empty())
        })
        .prop_map(|(whole, fraction, (unit, unit_nanos))| {
            let fraction = fraction.unwrap_or_default();
            let text = if fraction.is_empty() && whole.len() % 2 == 0 {
                // Sometimes with a bare trailing dot, as Go allows.
                format!("{whole}.{unit}")
            } else if fraction.is_empty() {
                format!("{whole}{unit}")
            } else {
                format!("{whole}.{fraction}{unit}")
            };
            (text, exact_nanos(&whole, &fraction, unit_nanos))
        })
}

/// A valid Go duration of one to five terms, with its value.
fn go_duration() -> impl Strategy<Value = (String, Duration)> {
    vec(duration_term(), 1..=5).prop_map(|terms| {
        let text = terms.iter().map(|(text, _)| text.as_str()).collect();
        let nanos = terms.iter().map(|(_, nanos)| nanos).sum();
        (text, duration_of_nanos(nanos))
    })
}

/// Text shaped like a duration body (digits, dots, known and unknown units), no sign
/// or whitespace; often invalid, sometimes empty.
fn duration_body() -> impl Strategy<Value = String> {
    "([0-9.]{0,6}(h|m|s|ms|us|µs|ns|d|))*"
}

/// Anything a user might type into `spec.synchronization.time`, hostile or not.
fn duration_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[-+ ]{0,2}([0-9.]{0,30}(h|m|s|ms|us|µs|μs|ns|d|é|H|))*[ ]?",
        go_duration().prop_map(|(text, _)| text),
    ]
}

/// Durations whose nanoseconds overflow `u128`, alone or summed.
fn overflowing_duration() -> impl Strategy<Value = String> {
    let near_max_term = (select(UNITS.to_vec()), 0u128..3, "[0-9]{1,12}")
        .prop_map(|((unit, nanos), below, f)| format!("{}.{f}{unit}", u128::MAX / nanos - below));
    prop_oneof![
        near_max_term.clone(),
        near_max_term.prop_map(|term| format!("{term}{term}")),
        ("[1-9][0-9]{39,60}", select(UNITS.to_vec()))
            .prop_map(|(number, (unit, _))| format!("{number}{unit}")),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn duration_parsing_never_panics(input in duration_like()) {
        let _ = parse_go_duration(&input);
    }

    #[test]
    fn valid_durations_parse_to_their_exact_value((text, expected) in go_duration()) {
        prop_assert_eq!(parse_go_duration(&text), Ok(expected), "{}", text);
    }

    /// Accepted with the same value, or refused (`+` alone included, as in Go).
    #[test]
    fn a_plus_sign_changes_nothing(body in duration_body()) {
        prop_assert_eq!(
            parse_go_duration(&format!("+{body}")).ok(),
            parse_go_duration(&body).ok(),
            "{:?}", body
        );
    }

    #[test]
    fn negative_durations_are_refused((text, _) in go_duration()) {
        prop_assert_eq!(parse_go_duration(&format!("-{text}")), Err(DurationError::Negative));
    }

    #[test]
    fn every_number_but_a_bare_zero_needs_a_unit(
        prefix in prop_oneof![Just(String::new()), go_duration().prop_map(|(text, _)| text)],
        number in "[0-9]{1,5}(\\.[0-9]{0,3})?",
    ) {
        let input = format!("{prefix}{number}");
        let expected = if input == "0" {
            Ok(Duration::ZERO)
        } else {
            Err(DurationError::MissingUnit(number))
        };
        prop_assert_eq!(parse_go_duration(&input), expected);
    }

    #[test]
    fn unknown_units_are_named(
        (prefix, _) in go_duration(),
        number in "[0-9]{1,4}",
        unit in "[a-zA-Zé]{1,4}",
    ) {
        prop_assume!(!UNITS.iter().any(|(known, _)| *known == unit));
        prop_assert_eq!(
            parse_go_duration(&format!("{prefix}{number}{unit}5s")),
            Err(DurationError::UnknownUnit(unit))
        );
    }

    #[test]
    fn numbers_without_digits_or_with_two_dots_are_refused(
        (prefix, _) in go_duration(),
        number in prop_oneof![Just(".".to_string()), "[0-9]{0,3}\\.[0-9]{0,3}\\.[0-9.]{0,3}"],
        unit in select(UNITS.map(|(unit, _)| unit).to_vec()),
    ) {
        let input = format!("{prefix}{number}{unit}");
        prop_assert!(
            matches!(parse_go_duration(&input), Err(DurationError::MissingNumber(_))),
            "{:?} gave {:?}", input, parse_go_duration(&input)
        );
    }

    #[test]
    fn durations_overflowing_the_arithmetic_are_refused(input in overflowing_duration()) {
        prop_assert_eq!(parse_go_duration(&input), Err(DurationError::Overflow), "{}", input);
    }

    #[test]
    fn the_largest_duration_is_accepted_and_one_second_more_is_not(
        past_max in -3i128..=3,
        fraction in "[0-9]{0,9}",
    ) {
        let seconds = i128::from(u64::MAX) + past_max;
        let input = format!("{seconds}.{fraction}s");
        let expected = match u64::try_from(seconds) {
            Ok(seconds) => {
                let nanos = exact_nanos("", &fraction, NANOS_PER_SECOND);
                Ok(Duration::new(seconds, u32::try_from(nanos).expect("below 10^9")))
            }
            Err(_) => Err(DurationError::Overflow),
        };
        prop_assert_eq!(parse_go_duration(&input), expected);
    }
}

#[test]
fn an_empty_duration_is_refused() {
    assert_eq!(parse_go_duration(""), Err(DurationError::Empty));
}

// ---------------------------------------------------------------------------
// Namespace names and globs
// ---------------------------------------------------------------------------

/// A valid DNS-1123 label: what a namespace may be called.
fn dns_label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
}

/// A string that is not a DNS-1123 label, for each way of not being one.
fn not_a_dns_label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9]{64,90}",
        "-[a-z0-9-]{0,20}",
        "[a-z0-9-]{0,20}-",
        "[a-z0-9-]{0,10}[^a-z0-9-][a-z0-9-]{0,10}",
    ]
}

/// Kubernetes' DNS-1123 label rule, written out.
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Shell-style glob matching by plain recursion: `*` any run, `?` one character.
fn reference_glob(pattern: &[char], name: &[char]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some(('*', rest)) => (0..=name.len()).any(|skip| reference_glob(rest, &name[skip..])),
        Some((&wanted, rest)) => match name.split_first() {
            Some((&c, name_rest)) => {
                (wanted == '?' || wanted == c) && reference_glob(rest, name_rest)
            }
            None => false,
        },
    }
}

/// A short pattern over a small alphabet, so that it often matches [`short_name`]s.
fn short_glob() -> impl Strategy<Value = String> {
    "[ab*?-]{0,10}"
}

fn short_name() -> impl Strategy<Value = String> {
    "[ab-]{0,10}"
}

/// Namespace patterns: mostly from the allowed characters (with and without globs), some arbitrary.
fn namespace_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9*?-]{0,70}",
        2 => dns_label(),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn name_functions_never_panic(pattern in any::<String>(), name in any::<String>()) {
        let _ = glob_matches(&pattern, &name);
        let _ = namespace_pattern_problem(&pattern);
        let _ = dns_label_problem(&name);
        prop_assert_eq!(is_glob(&pattern), pattern.contains('*') || pattern.contains('?'));
    }

    #[test]
    fn glob_matching_agrees_with_the_reference(pattern in short_glob(), name in short_name()) {
        let expected = reference_glob(
            &pattern.chars().collect::<Vec<_>>(),
            &name.chars().collect::<Vec<_>>(),
        );
        prop_assert_eq!(glob_matches(&pattern, &name), expected, "{:?} on {:?}", pattern, name);
    }

    #[test]
    fn a_pattern_without_wildcards_matches_exactly_itself(
        pattern in short_name(),
        name in short_name(),
    ) {
        prop_assert!(!is_glob(&pattern));
        prop_assert!(glob_matches(&pattern, &pattern));
        prop_assert_eq!(glob_matches(&pattern, &name), pattern == name);
    }

    #[test]
    fn a_star_matches_every_valid_name(name in dns_label()) {
        prop_assert!(glob_matches("*", &name));
    }

    #[test]
    fn valid_dns_labels_have_no_problem(name in dns_label()) {
        prop_assert_eq!(dns_label_problem(&name), None);
    }

    #[test]
    fn invalid_dns_labels_have_a_problem(name in not_a_dns_label()) {
        let problem = dns_label_problem(&name);
        prop_assert!(problem.as_deref().is_some_and(|p| !p.is_empty()), "{:?}", name);
    }

    #[test]
    fn namespace_patterns_are_labels_or_globs_of_label_characters(pattern in namespace_pattern()) {
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '*' | '?');
        let well_formed = (1..=63).contains(&pattern.len())
            && pattern.chars().all(allowed)
            && (is_glob(&pattern) || is_dns_label(&pattern));
        let problem = namespace_pattern_problem(&pattern);
        prop_assert_eq!(problem.is_none(), well_formed, "{:?}: {:?}", pattern, problem);
        prop_assert!(problem.is_none_or(|p| !p.is_empty()));
    }
}

// ---------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------

/// Kubernetes' `IsDNS1123Subdomain`: at most 253 characters of dot-separated parts, each
/// lowercase alphanumerics and '-', starting and ending alphanumeric. Kubernetes puts no
/// 63-character limit on the parts.
fn is_k8s_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// Kubernetes' name part of a qualified name (and of a non-empty label value).
fn is_k8s_name_part(name: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_alphanumeric();
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| alphanumeric(c) || matches!(c, '-' | '_' | '.'))
        && name.starts_with(alphanumeric)
        && name.ends_with(alphanumeric)
}

/// Kubernetes' `IsQualifiedName`, the rule for label keys: `[prefix/]name`.
fn is_k8s_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_k8s_subdomain(prefix) && is_k8s_name_part(name),
        None => is_k8s_name_part(key),
    }
}

/// Kubernetes' `IsValidLabelValue`.
fn is_k8s_label_value(value: &str) -> bool {
    value.is_empty() || is_k8s_name_part(value)
}

/// Kubernetes' `ValidateLabelSelector`.
fn is_k8s_selector(selector: &LabelSelector) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| is_k8s_label_key(key) && is_k8s_label_value(value));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|r| {
        let values = r.values.as_deref().unwrap_or_default();
        let operator_ok = match r.operator.as_str() {
            "In" | "NotIn" => !values.is_empty(),
            "Exists" | "DoesNotExist" => values.is_empty(),
            _ => false,
        };
        operator_ok && is_k8s_label_key(&r.key) && values.iter().all(|v| is_k8s_label_value(v))
    });
    labels_ok && expressions_ok
}

/// Dot-separated parts of up to 80 characters, so both Kubernetes' 253-character limit
/// and parts longer than a DNS label are exercised.
fn subdomain() -> impl Strategy<Value = String> {
    vec("[a-z0-9]([a-z0-9-]{0,78}[a-z0-9])?", 1..4).prop_map(|parts| parts.join("."))
}

/// A valid name part of a label key, or a valid non-empty label value.
fn name_part() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?"
}

/// Characters that are almost right: valid ones, '/', space, upper case, unicode,
/// and control characters (tab, newline, escape).
fn noisy_text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._/ é\\t\\n\\x1b-]{0,70}"
}

fn label_key() -> impl Strategy<Value = String> {
    prop_oneof![
        name_part(),
        (subdomain(), name_part()).prop_map(|(prefix, name)| format!("{prefix}/{name}")),
        noisy_text(),
        any::<String>(),
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), name_part(), noisy_text()]
}

fn operator() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec!["In", "NotIn", "Exists", "DoesNotExist"]).prop_map(String::from),
        1 => "[A-Za-z]{0,8}",
    ]
}

fn requirement() -> impl Strategy<Value = LabelSelectorRequirement> {
    (
        label_key(),
        operator(),
        option::of(vec(label_value(), 0..3)),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement {
            key,
            operator,
            values,
        })
}

fn label_selector() -> BoxedStrategy<LabelSelector> {
    (
        option::of(btree_map(label_key(), label_value(), 0..3)),
        option::of(vec(requirement(), 0..3)),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
        .boxed()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn selector_problems_are_exactly_the_kubernetes_rules(selector in label_selector()) {
        let problems = selector_problems(&selector);
        prop_assert_eq!(problems.is_empty(), is_k8s_selector(&selector), "{:?}", problems);
        prop_assert!(problems.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn selector_matching_never_panics(
        selector in label_selector(),
        labels in btree_map(label_key(), label_value(), 0..4),
    ) {
        let _ = selector_matches(&selector, &labels);
        prop_assert!(selector_matches(&LabelSelector::default(), &labels));
    }
}

// ---------------------------------------------------------------------------
// Whole-spec validation
// ---------------------------------------------------------------------------

fn source_spec() -> impl Strategy<Value = SourceSpec> {
    (
        prop_oneof![Just(String::new()), subdomain(), noisy_text()],
        prop_oneof![Just("v1".to_string()), Just(String::new()), noisy_text()],
        prop_oneof![
            3 => select(vec!["Secret", "ConfigMap", "Namespace", "Event", "Lease", "Pod"]).prop_map(String::from),
            1 => any::<String>(),
        ],
        prop_oneof![subdomain(), noisy_text()],
        option::of(prop_oneof![dns_label(), noisy_text()]),
    )
        .prop_map(|(group, version, kind, name, namespace)| SourceSpec {
            group,
            version,
            kind,
            name,
            namespace,
        })
}

fn target_namespaces() -> impl Strategy<Value = TargetNamespacesSpec> {
    (
        option::of(vec(namespace_pattern(), 0..4)),
        any::<bool>(),
        option::of(vec(namespace_pattern(), 0..3)),
        option::of(label_selector()),
        option::of(any::<bool>()),
    )
        .prop_map(
            |(replicate_in, match_all, exclude_from, selector, require_opt_in)| {
                TargetNamespacesSpec {
                    replicate_in,
                    match_all,
                    exclude_from,
                    selector,
                    require_opt_in,
                }
            },
        )
}

/// `spec.target.data`: key names, globs, and noise.
fn target_data() -> impl Strategy<Value = TargetDataSpec> {
    let pattern = || prop_oneof![3 => "[A-Za-z0-9._*?-]{1,12}", 1 => noisy_text()];
    (
        option::of(vec(pattern(), 0..3)),
        option::of(vec(pattern(), 0..3)),
    )
        .prop_map(|(include, exclude)| TargetDataSpec { include, exclude })
}

fn target_metadata() -> impl Strategy<Value = TargetMetadataSpec> {
    let key = prop_oneof![
        4 => label_key(),
        1 => name_part().prop_map(|name| format!("replika.prosimcorp.com/{name}")),
    ];
    (
        option::of(btree_map(key.clone(), label_value(), 0..3)),
        option::of(btree_map(key, any::<String>(), 0..3)),
    )
        .prop_map(|(labels, annotations)| TargetMetadataSpec {
            labels,
            annotations,
        })
}

fn policy() -> impl Strategy<Value = PolicySpec> {
    (
        option::of(select(vec![ConflictPolicy::Refuse, ConflictPolicy::Adopt])),
        option::of(select(vec![
            SourceDeletedPolicy::Retain,
            SourceDeletedPolicy::Delete,
        ])),
        option::of(select(vec![
            ReplikaDeletedPolicy::Delete,
            ReplikaDeletedPolicy::Orphan,
        ])),
    )
        .prop_map(
            |(conflict, on_source_deleted, on_replika_deleted)| PolicySpec {
                conflict,
                on_source_deleted,
                on_replika_deleted,
            },
        )
}

/// A Replika spec from generated parts, each sometimes valid and sometimes not.
fn replika_spec() -> BoxedStrategy<ReplikaSpec> {
    (
        duration_like(),
        option::of(source_spec()),
        option::of(target_namespaces()),
        option::of(target_metadata()),
        option::of(policy()),
        option::of(prop_oneof![subdomain(), noisy_text()]),
        option::of(target_data()),
    )
        .prop_map(
            |(time, source, namespaces, metadata, policy, name, data)| ReplikaSpec {
                synchronization: SynchronizationSpec { time },
                source,
                target: TargetSpec {
                    name,
                    namespaces,
                    metadata,
                    data,
                },
                policy,
            },
        )
        .boxed()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn validation_names_every_problem_readably(
        spec in replika_spec(),
        namespace in prop_oneof![dns_label(), noisy_text()],
    ) {
        match validate(&spec, &namespace) {
            Ok(plan) => prop_assert!(plan.resync >= MIN_RESYNC),
            Err(problems) => {
                prop_assert!(!problems.is_empty(), "Err without a problem");
                for problem in &problems {
                    // Each names the field at fault, says something about it, and quotes
                    // user input escaped, so a condition or denial reads on one line.
                    prop_assert!(problem.starts_with("spec."), "{:?}", problem);
                    prop_assert!(problem.trim_end().len() > "spec.".len(), "{:?}", problem);
                    prop_assert!(!problem.chars().any(char::is_control), "{:?}", problem);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The admission endpoint
// ---------------------------------------------------------------------------

/// A cluster with fixed facts: Secrets are namespaced and served, nothing else is,
/// everyone may do everything, there are no other Replikas, and no request comes
/// from the operator.
struct FixedCluster {
    signer: Signer,
}

impl ClusterView for FixedCluster {
    async fn kind(&self, gvk: &GroupVersionKind) -> Result<ServedKind, KindError> {
        if gvk.group.is_empty() && gvk.kind == "Secret" {
            Ok(ServedKind {
                resource: ApiResource::from_gvk_with_plural(gvk, "secrets"),
                namespaced: true,
            })
        } else {
            Err(KindError::NotServed(gvk.kind.clone()))
        }
    }

    async fn denied_to_user(
        &self,
        _user: &UserInfo,
        _checks: &[Access],
    ) -> Result<Vec<Access>, String> {
        Ok(Vec::new())
    }

    async fn denied_to_operator(&self, _checks: &[Access]) -> Result<Vec<Access>, String> {
        Ok(Vec::new())
    }

    fn replikas(&self) -> Vec<Replika> {
        Vec::new()
    }

    fn signer(&self) -> &Signer {
        &self.signer
    }

    fn is_operator(&self, _user: &UserInfo) -> bool {
        false
    }
}

/// Sends one request through the webhook's router; returns the status and the body.
fn send(
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let request = request.body(Body::from(body)).expect("a valid request");
        let cluster = FixedCluster {
            signer: Signer::new(b"a test key"),
        };
        let response = routes(cluster, Arc::new(Metrics::new()))
            .oneshot(request)
            .await
            .expect("the router never fails");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a readable response body");
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

const NOT_JSON: &str = "is not JSON";
const NOT_A_REVIEW: &str = "is not an admission.k8s.io/v1 AdmissionReview";
const WRONG_KIND: &str = "admits replika.prosimcorp.com Replikas only";

fn webhook_path() -> impl Strategy<Value = &'static str> {
    select(vec!["/validate", "/mutate"])
}

/// Absent, right, or any other syntactically valid content type: the handlers read JSON
/// whatever the header says.
fn content_type() -> impl Strategy<Value = Option<String>> {
    option::of(prop_oneof![
        Just("application/json".to_string()),
        "[a-z]{1,8}/[a-z0-9.+-]{1,12}(; charset=[a-z0-9-]{1,8})?",
    ])
}

/// An AdmissionReview for a Replika, as the API server sends it: the `uid`, and the review.
fn admission_review() -> BoxedStrategy<(String, Value)> {
    let object = (replika_spec(), dns_label(), dns_label()).prop_map(|(spec, name, namespace)| {
        json!({
            "apiVersion": "replika.prosimcorp.com/v1beta1",
            "kind": "Replika",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        })
    });
    (
        any::<String>(),
        select(vec!["CREATE", "UPDATE", "DELETE", "CONNECT"]),
        object,
        option::of(json_value()),
        any::<bool>(),
    )
        .prop_map(|(uid, operation, object, old_spec, dry_run)| {
            let name = object["metadata"]["name"].clone();
            let namespace = object["metadata"]["namespace"].clone();
            let old_object = old_spec.map(|spec| {
                let mut old = object.clone();
                old["spec"] = spec;
                old
            });
            let (object, old_object) = match operation {
                "DELETE" => (Value::Null, old_object.unwrap_or(object)),
                _ => (object, old_object.unwrap_or(Value::Null)),
            };
            let review = json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": uid,
                    "kind": {"group": "replika.prosimcorp.com", "version": "v1beta1", "kind": "Replika"},
                    "resource": {"group": "replika.prosimcorp.com", "version": "v1beta1", "resource": "replikas"},
                    "name": name,
                    "namespace": namespace,
                    "operation": operation,
                    "userInfo": {"username": "alice", "groups": ["devs"]},
                    "object": object,
                    "oldObject": old_object,
                    "dryRun": dry_run,
                }
            });
            (uid, review)
        })
    .boxed()
}

/// Any JSON value. Object keys have at most 8 characters, so never `apiVersion`.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// A request body, reported as (lossy) text when a property fails.
#[derive(Clone)]
struct RequestBody(Vec<u8>);

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// A body the webhook must refuse, with words its answer must contain.
fn malformed_body() -> BoxedStrategy<(RequestBody, &'static str)> {
    let garbage = vec(any::<u8>(), 0..512)
        .prop_filter("not JSON", |bytes| {
            serde_json::from_slice::<Value>(bytes).is_err()
        })
        .prop_map(|bytes| (bytes, NOT_JSON));
    let truncated =
        (admission_review(), any::<prop::sample::Index>()).prop_map(|((_, review), cut)| {
            let mut bytes = serde_json::to_vec(&review).expect("JSON");
            bytes.truncate(cut.index(bytes.len()));
            (bytes, NOT_JSON)
        });
    let other_json = json_value().prop_map(|value| (value.to_string().into_bytes(), NOT_A_REVIEW));
    let broken_review = (
        admission_review(),
        select(vec![
            "uid",
            "kind",
            "resource",
            "operation",
            "userInfo",
            "request",
        ]),
    )
        .prop_map(|((_, mut review), field)| {
            match field {
                "request" => review.as_object_mut().expect("an object").remove(field),
                _ => review["request"]
                    .as_object_mut()
                    .expect("an object")
                    .remove(field),
            };
            (review.to_string().into_bytes(), NOT_A_REVIEW)
        });
    let wrong_kind = (admission_review(), "[a-z.]{0,12}", "[A-Za-z]{1,12}")
        .prop_filter("not a Replika", |(_, group, kind)| {
            (group.as_str(), kind.as_str()) != ("replika.prosimcorp.com", "Replika")
        })
        .prop_map(|((_, mut review), group, kind)| {
            review["request"]["kind"] = json!({"group": group, "version": "v1", "kind": kind});
            (review.to_string().into_bytes(), WRONG_KIND)
        });
    prop_oneof![garbage, truncated, other_json, broken_review, wrong_kind]
        .prop_map(|(bytes, expected)| (RequestBody(bytes), expected))
        .boxed()
}

/// A path other than the two webhooks'.
fn other_path() -> impl Strategy<Value = String> {
    "(/[a-zA-Z0-9._~-]{0,12}){1,3}".prop_filter("not a webhook", |path| {
        path != "/validate" && path != "/mutate"
    })
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn malformed_requests_get_a_400_that_says_what_is_wrong(
        path in webhook_path(),
        content_type in content_type(),
        (body, expected) in malformed_body(),
    ) {
        let (status, message) = send(Method::POST, path, content_type.as_deref(), body.0);
        prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", message);
        prop_assert!(message.contains(expected), "{:?} lacks {:?}", message, expected);
    }

    #[test]
    fn a_well_formed_review_is_answered_with_its_uid(
        path in webhook_path(),
        content_type in content_type(),
        (uid, review) in admission_review(),
    ) {
        let body = serde_json::to_vec(&review).expect("JSON");
        let (status, answer) = send(Method::POST, path, content_type.as_deref(), body);
        prop_assert_eq!(status, StatusCode::OK, "{}", answer);
        let answer: Value = serde_json::from_str(&answer).expect("the answer is JSON");
        prop_assert_eq!(&answer["kind"], "AdmissionReview");
        prop_assert_eq!(&answer["response"]["uid"], &Value::from(uid));
    }

    #[test]
    fn unknown_routes_are_refused_with_a_message(
        (method, path) in prop_oneof![
            (select(vec![Method::GET, Method::POST, Method::PUT, Method::DELETE]), other_path()),
            (select(vec![Method::GET, Method::PUT, Method::DELETE, Method::PATCH]),
                webhook_path().prop_map(String::from)),
        ],
        (_, review) in admission_review(),
    ) {
        let body = serde_json::to_vec(&review).expect("JSON");
        let (status, message) = send(method, &path, Some("application/json"), body);
        prop_assert!(status.is_client_error(), "{}", status);
        prop_assert!(!message.trim().is_empty(), "{} with an empty body", status);
    }
}

proptest! {
    #![proptest_config(config(6))]

    #[test]
    fn bodies_over_the_limit_get_a_413_and_bodies_at_it_are_read(
        path in webhook_path(),
        (uid, review) in admission_review(),
        over in prop_oneof![Just(0usize), 1usize..4096],
    ) {
        // The review padded with trailing whitespace, which JSON ignores.
        let mut body = serde_json::to_vec(&review).expect("JSON");
        body.resize(MAX_BODY_BYTES + over, b' ');
        let (status, message) = send(Method::POST, path, Some("application/json"), body);
        if over == 0 {
            prop_assert_eq!(status, StatusCode::OK, "{}", message);
            let answer: Value = serde_json::from_str(&message).expect("the answer is JSON");
            prop_assert_eq!(&answer["response"]["uid"], &Value::from(uid));
        } else {
            prop_assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", message);
            prop_assert!(message.contains("is larger than"), "{}", message);
        }
    }
}

/// The reference matcher itself, on the module's own examples, so a reference bug
/// cannot hide one in `glob_matches`.
#[test]
fn the_reference_glob_matches_like_a_shell() {
    let matches = |pattern: &str, name: &str| {
        reference_glob(
            &pattern.chars().collect::<Vec<_>>(),
            &name.chars().collect::<Vec<_>>(),
        )
    };
    assert!(matches("team-*", "team-a"));
    assert!(!matches("team-*", "teams"));
    assert!(matches("a*b*c", "axxbyyc"));
    assert!(!matches("ns-?", "ns-10"));
    assert!(matches("*", ""));
}
