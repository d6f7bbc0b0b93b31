//! Counts the requests the operator sends, from the API server's own metrics.
//!
//! In Kubernetes 1.34 `apiserver_request_total` has no label naming the client
//! (its `component` label names the serving component, `apiserver`), and the
//! test plane keeps no audit log, so the operator's requests are told apart by
//! its identity rather than its user agent (which any client chooses, and
//! which another operator under `--operator-cmd` may not set at all). The key
//! is API Priority and Fairness: FlowSchemas that match only the operator's
//! ServiceAccount, one per kind of request, are put ahead of the built-in ones, and
//! `apiserver_flowcontrol_dispatched_requests_total{flow_schema=…}` counts the
//! requests each one classified. They send those requests to `workload-low`,
//! the priority level the built-in `service-accounts` FlowSchema gives every
//! ServiceAccount anyway, so the operator is served exactly as without them.
//! This works on any cluster, needs no audit log, and costs nothing per request.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use k8s_openapi::api::flowcontrol::v1::FlowSchema;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde::Serialize;
use serde_json::json;

use crate::model::FIELD_MANAGER;

/// Prefix of the FlowSchemas' names, and so of the metric's `flow_schema` label.
const SCHEMA_PREFIX: &str = "replika-bench-";
/// Priority level the built-in `service-accounts` FlowSchema uses.
const PRIORITY_LEVEL: &str = "workload-low";
/// Below every built-in FlowSchema that could match a ServiceAccount (the
/// lowest, `exempt`, is 1 and only matches `system:masters`).
const FIRST_PRECEDENCE: usize = 10;
/// The counter read from `/metrics`.
const METRIC: &str = "apiserver_flowcontrol_dispatched_requests_total";

/// Lease requests (leader election), excluded from the idle count.
pub const LEASE: &str = "lease";
/// Watch requests (watches opened or re-established), excluded from the idle count.
pub const WATCH: &str = "watch";
/// Everything not matched by a more specific class.
pub const OTHER: &str = "other";

/// One kind of request with its own FlowSchema, in matching order.
struct Class {
    name: &'static str,
    verbs: &'static [&'static str],
}

const CLASSES: &[Class] = &[
    Class {
        name: LEASE,
        verbs: &["*"],
    },
    Class {
        name: WATCH,
        verbs: &["watch"],
    },
    Class {
        name: "get",
        verbs: &["get"],
    },
    Class {
        name: "list",
        verbs: &["list"],
    },
    Class {
        name: "create",
        verbs: &["create"],
    },
    Class {
        name: "update",
        verbs: &["update"],
    },
    Class {
        name: "patch",
        verbs: &["patch"],
    },
    Class {
        name: "delete",
        verbs: &["delete", "deletecollection"],
    },
    Class {
        name: OTHER,
        verbs: &["*"],
    },
];

/// Installs the FlowSchemas that classify the requests of the ServiceAccount
/// `namespace/name`, replacing earlier ones.
pub async fn install(admin: &Client, namespace: &str, name: &str) -> Result<()> {
    let api = Api::<FlowSchema>::all(admin.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for (index, class) in CLASSES.iter().enumerate() {
        let schema = flow_schema(class, FIRST_PRECEDENCE + index, namespace, name);
        let schema_name = format!("{SCHEMA_PREFIX}{}", class.name);
        api.patch(&schema_name, &params, &Patch::Apply(&schema))
            .await
            .with_context(|| format!("cannot apply the FlowSchema {schema_name}"))?;
    }
    Ok(())
}

/// Removes the FlowSchemas again (for clusters the benchmark does not own).
pub async fn uninstall(admin: &Client) -> Result<()> {
    let api = Api::<FlowSchema>::all(admin.clone());
    for class in CLASSES {
        let name = format!("{SCHEMA_PREFIX}{}", class.name);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(error) => return Err(error).with_context(|| format!("cannot delete {name}")),
        }
    }
    Ok(())
}

fn flow_schema(class: &Class, precedence: usize, namespace: &str, name: &str) -> serde_json::Value {
    let (groups, resources) = if class.name == LEASE {
        (json!(["coordination.k8s.io"]), json!(["leases"]))
    } else {
        (json!(["*"]), json!(["*"]))
    };
    let mut rule = json!({
        "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"name": name, "namespace": namespace}}],
        "resourceRules": [{
            "verbs": class.verbs,
            "apiGroups": groups,
            "resources": resources,
            "clusterScope": true,
            "namespaces": ["*"],
        }],
    });
    if class.name == OTHER {
        rule["nonResourceRules"] = json!([{"verbs": ["*"], "nonResourceURLs": ["*"]}]);
    }
    json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": format!("{SCHEMA_PREFIX}{}", class.name)},
        "spec": {
            "matchingPrecedence": precedence,
            "priorityLevelConfiguration": {"name": PRIORITY_LEVEL},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [rule],
        },
    })
}

/// Requests counted per class.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts(pub BTreeMap<String, u64>);

impl RequestCounts {
    /// The counts so far, read from the API server's `/metrics` (as admin).
    pub async fn read(admin: &Client) -> Result<RequestCounts> {
        Ok(parse(&apiserver_metrics(admin).await?))
    }

    /// What was counted between `earlier` and `self`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts(
            CLASSES
                .iter()
                .map(|class| {
                    let count = |counts: &RequestCounts| {
                        counts.0.get(class.name).copied().unwrap_or_default()
                    };
                    (
                        class.name.to_owned(),
                        count(self).saturating_sub(count(earlier)),
                    )
                })
                .collect(),
        )
    }

    /// Every request counted.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Requests of one class.
    pub fn of(&self, class: &str) -> u64 {
        self.0.get(class).copied().unwrap_or_default()
    }

    /// Requests that read or change state: all but lease renewals and watches
    /// (re-)established, which the idle target leaves out (docs/benchmarks.md).
    pub fn state_requests(&self) -> u64 {
        self.total() - self.of(LEASE) - self.of(WATCH)
    }

    /// The non-zero classes, as `verb count` pairs, for reports.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(class, count)| format!("{class} {count}"))
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The API server's `/metrics`, in the Prometheus text format.
pub async fn apiserver_metrics(admin: &Client) -> Result<String> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    admin
        .request_text(request)
        .await
        .context("cannot read the API server's /metrics")
}

/// Sums the samples of `metric` in `text` by the value of their label `label`
/// (samples without it are left out).
pub fn sum_by_label(text: &str, metric: &str, label: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    let label = format!("{label}=\"");
    for line in text.lines() {
        let Some(rest) = line
            .strip_prefix(metric)
            .and_then(|rest| rest.strip_prefix('{'))
        else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let key = labels
            .split(',')
            .find_map(|pair| pair.strip_prefix(label.as_str()))
            .and_then(|value| value.strip_suffix('"'));
        if let (Some(key), Ok(value)) = (key, value.trim().parse::<f64>()) {
            *sums.entry(key.to_owned()).or_default() += value;
        }
    }
    sums
}

/// The requests counted per class, from the API server's metrics text.
fn parse(text: &str) -> RequestCounts {
    RequestCounts(
        sum_by_label(text, METRIC, "flow_schema")
            .into_iter()
            .filter_map(|(schema, count)| {
                let class = schema.strip_prefix(SCHEMA_PREFIX)?;
                Some((class.to_owned(), count as u64))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_our_flow_schemas() {
        let text = "\
# TYPE apiserver_flowcontrol_dispatched_requests_total counter
apiserver_flowcontrol_dispatched_requests_total{flow_schema=\"exempt\",priority_level=\"exempt\"} 544
apiserver_flowcontrol_dispatched_requests_total{flow_schema=\"replika-bench-patch\",priority_level=\"workload-low\"} 12
apiserver_flowcontrol_dispatched_requests_total{flow_schema=\"replika-bench-watch\",priority_level=\"workload-low\"} 3
apiserver_flowcontrol_dispatched_requests_total_other{flow_schema=\"replika-bench-get\"} 9
";
        let counts = parse(text);
        assert_eq!(counts.of("patch"), 12);
        assert_eq!(counts.of(WATCH), 3);
        assert_eq!(counts.of("get"), 0);
        assert_eq!(counts.total(), 15);
    }

    #[test]
    fn idle_requests_leave_out_leases_and_watches() {
        let before = RequestCounts(BTreeMap::from([("patch".into(), 5), (WATCH.into(), 2)]));
        let after = RequestCounts(BTreeMap::from([
            ("patch".into(), 7),
            (WATCH.into(), 6),
            (LEASE.into(), 30),
        ]));
        let window = after.since(&before);
        assert_eq!(window.of("patch"), 2);
        assert_eq!(window.of(WATCH), 4);
        assert_eq!(window.state_requests(), 2);
        assert_eq!(window.describe(), "lease 30, patch 2, watch 4");
    }

    #[test]
    fn schemas_match_the_service_account_only() {
        let schema = flow_schema(&CLASSES[0], 10, "replika", "replika-controller-manager");
        let rule = &schema["spec"]["rules"][0];
        assert_eq!(
            rule["subjects"][0]["serviceAccount"]["name"],
            "replika-controller-manager"
        );
        assert_eq!(rule["resourceRules"][0]["resources"][0], "leases");
        let other = flow_schema(CLASSES.last().expect("classes"), 18, "ns", "sa");
        assert_eq!(
            other["spec"]["rules"][0]["nonResourceRules"][0]["nonResourceURLs"][0],
            "*"
        );
    }
}
